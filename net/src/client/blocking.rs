//! The blocking client: [`ClientCore`]s driven over `std::net` sockets.
//!
//! A [`Client`] keeps a small pool of idle connections per node address.
//! Each call takes one (or opens one), runs its requests on it, and puts it
//! back if it is still healthy; a connection that failed is dropped, so the
//! next call reconnects. Calls may come from many threads at once; each
//! uses its own connection.
//!
//! # Routing
//!
//! The addresses given to [`Client::connect`] are seeds; what the client
//! does with a ring is described in the client module's docs (`# Routing`
//! in `client/mod.rs`), and which node a key goes to by [`Router`]. Here
//! the mechanics: the ring lives in [`Routing`] behind a mutex, fetched by
//! whichever call finds it due (others route by the old one meanwhile);
//! idle connections are pooled per address ([`Pools`]), pruned to the
//! seeds and the ring's members when a new ring arrives; a node that
//! refused a connection, let a request time out or lost a connection is
//! tried last for [`NODE_DOWN_FOR`].
//!
//! Time: the driver reads `Instant::now()` and hands it to the core, and
//! sets the socket's read timeout to the core's next deadline, so a request
//! times out within about a tenth of its timeout of when it should.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    AdminOutcome, ClientCore, ClientError, Context, CoreOptions, GetResult, Inspected, ReadOptions,
    RequestId, Response, RingInfo, Router, WriteOptions, Written,
};
use crate::limits::{IN_FLIGHT_MAX_DEFAULT, REPLY_FRAME_BYTES_MAX_DEFAULT};
use crate::message::{AdminOp, RepairReply, StatsReply};
use crate::ring::NodeId;

/// Configuration of a [`Client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// How long a request may wait for its reply.
    pub timeout: Duration,
    /// How long opening a connection may take, per address.
    pub connect_timeout: Duration,
    /// The most idle connections kept for reuse, per node address. Calls
    /// running at the same time each hold their own connection; beyond
    /// this many, connections are closed when their call ends.
    pub pool_size: usize,
    /// The most requests a [`Batch`] keeps in flight on each connection.
    pub in_flight_max: usize,
    /// The largest reply frame accepted, header included.
    pub reply_frame_bytes_max: u32,
    /// How long a pooled connection may sit idle before it is checked, on
    /// reuse, for a close by the node (say, a restart). Checking costs three
    /// system calls, too many for every request of a busy client; a write on
    /// a connection that died within this window fails with
    /// [`ClientError::ConnectionLost`] rather than being retried.
    pub idle_check_after: Duration,
    /// Whether to send each read, write and delete straight to a replica of
    /// its key, by the ring fetched from a seed (see the
    /// [client docs](crate::client#routing)). Off, every request goes to
    /// the seeds, which forward what they do not hold.
    pub route_by_ring: bool,
    /// How long a fetched ring is used before it is fetched again (on the
    /// next request after that).
    pub ring_refresh_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pool_size: 4,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            reply_frame_bytes_max: REPLY_FRAME_BYTES_MAX_DEFAULT,
            idle_check_after: Duration::from_secs(1),
            route_by_ring: true,
            ring_refresh_interval: Duration::from_secs(30),
        }
    }
}

/// After a ring fetch failed, or the seed had not formed its ring, how long
/// the client waits before fetching again. A fetch from an unreachable seed
/// can cost a connect timeout, paid by the request that triggers it.
const RING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The least time between a ring fetch and one triggered by a sign that
/// the ring changed (an unreachable replica, "not a replica"): bounds the
/// fetches a dead node can cause while the ring still names it.
const RING_SUSPECT_GAP: Duration = Duration::from_millis(100);

/// How long a node that refused a connection or let a request time out is
/// tried last among a key's replicas.
const NODE_DOWN_FOR: Duration = Duration::from_secs(2);

/// What a node says, in an [`ErrorReply`](crate::message::ErrorReply)'s
/// message, when a request reached it under a ring on which it is not a
/// replica of the key (the code is `Unavailable`, which says nothing about
/// the ring, so the message is what tells).
const NOT_A_REPLICA: &str = "not a replica";

/// The most threads a [`Batch`] spread over several nodes runs on at once,
/// the caller's included.
const BATCH_THREADS_MAX: usize = 8;

/// One request of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read a key.
    Get {
        /// The key.
        key: Vec<u8>,
        /// Per-request options.
        options: ReadOptions,
    },
    /// Write a value.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
        /// The versions the write supersedes.
        context: Option<Context>,
        /// Per-request options.
        options: WriteOptions,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The versions the delete supersedes.
        context: Context,
        /// Per-request options.
        options: WriteOptions,
    },
    /// Ping the node.
    Ping,
    /// Ask the node for its ring.
    Ring,
    /// Ask the node for its hints and the peers it believes down.
    Stats,
    /// An operator's membership change of `node` (0: the node asked),
    /// made at the node asked (never routed).
    Admin {
        /// What to do.
        op: AdminOp,
        /// The node to change.
        node: NodeId,
    },
    /// An operator's anti-entropy repair at the node asked (never routed):
    /// of one partition, or of every partition it replicates (`None`).
    Repair {
        /// The partition; `None` for all.
        partition: Option<u32>,
    },
    /// Read the node's own replica of a key (never routed: it goes to a
    /// seed, whose replica it reads).
    Inspect {
        /// The key.
        key: Vec<u8>,
    },
}

impl Operation {
    /// Whether sending the operation twice has the same effect as once, so
    /// that it may be retried when its connection broke.
    fn is_idempotent(&self) -> bool {
        match self {
            Operation::Get { .. } | Operation::Ping | Operation::Ring => true,
            Operation::Inspect { .. } | Operation::Stats => true,
            // Repairing twice does the work twice, but harmlessly (merges
            // are idempotent); not retried all the same, since it is slow.
            Operation::Repair { .. } => false,
            // Setting a status twice sets it once more at a new version:
            // harmless, but not what was asked; never retried.
            Operation::Put { .. } | Operation::Delete { .. } | Operation::Admin { .. } => false,
        }
    }

    /// The key the operation is routed by, if it is routed.
    fn routing_key(&self) -> Option<&[u8]> {
        match self {
            Operation::Get { key, .. } | Operation::Put { key, .. } => Some(key),
            Operation::Delete { key, .. } => Some(key),
            Operation::Ping | Operation::Ring | Operation::Inspect { .. } => None,
            Operation::Stats | Operation::Admin { .. } | Operation::Repair { .. } => None,
        }
    }
}

/// Requests to pipeline: all are sent (up to
/// [`ClientOptions::in_flight_max`] at a time per connection) before their
/// replies are waited for. Built up, then run by [`Client::execute`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    operations: Vec<Operation>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a read of `key`.
    pub fn get(&mut self, key: &[u8]) -> &mut Batch {
        self.push(Operation::Get { key: key.to_vec(), options: ReadOptions::default() })
    }

    /// Adds a write of `value` to `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8], context: Option<&Context>) -> &mut Batch {
        self.push(Operation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.cloned(),
            options: WriteOptions::default(),
        })
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: &[u8], context: &Context) -> &mut Batch {
        self.push(Operation::Delete {
            key: key.to_vec(),
            context: context.clone(),
            options: WriteOptions::default(),
        })
    }

    /// Adds any operation.
    pub fn push(&mut self, operation: Operation) -> &mut Batch {
        self.operations.push(operation);
        self
    }

    /// The operations, in order.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// A blocking client for one holdfast cluster. `Send` and `Sync`: share one
/// per process.
#[derive(Debug)]
pub struct Client {
    /// The addresses given, resolved.
    seeds: Vec<SocketAddr>,
    options: ClientOptions,
    pools: Mutex<Pools>,
    /// Where the next new connection to the seeds starts trying addresses,
    /// so new connections spread over them.
    next_seed: AtomicUsize,
    routing: Mutex<Routing>,
}

/// Where a connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// Any seed: the first that accepts, starting from a different one
    /// each time.
    Seeds,
    /// That node.
    Node(SocketAddr),
}

/// Idle connections and what the client learned about reaching nodes.
#[derive(Debug)]
struct Pools {
    /// The seeds and the usable addresses of the current ring's members:
    /// the only addresses connections are pooled for.
    known: BTreeSet<SocketAddr>,
    /// At most [`ClientOptions::pool_size`] per address of `known`; the
    /// others are dropped when a new ring arrives.
    idle: BTreeMap<SocketAddr, Vec<Connection>>,
    /// Nodes that refused a connection, and until when they are tried last.
    /// Expired entries go on the next look, so this holds at most the
    /// ring's addresses.
    down_until: BTreeMap<SocketAddr, Instant>,
}

/// The ring the client routes by, and when to fetch it again.
#[derive(Debug)]
struct Routing {
    router: Arc<Router>,
    /// When the ring is next fetched (the next request at or after this
    /// does it); `None`: never (an interval too long to represent).
    refresh_at: Option<Instant>,
    /// When the last fetch was attempted, and whether it gave a ring.
    last_fetch: Option<(Instant, bool)>,
    /// A fetch is under way: other calls route by what there is meanwhile.
    fetching: bool,
}

/// The most request bytes queued on a connection before its replies are
/// read. Keeps a batch from writing so much ahead that the node, blocked on
/// sending replies nobody reads, stops reading too.
const BATCH_TRANSMIT_BYTES_MAX: usize = 256 * 1024;

/// Bytes read from the socket at a time.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A batch's operations bound for one connection.
#[derive(Debug)]
struct Lane {
    /// Whether some of them went to the node as a replica of their key (not
    /// only as a seed).
    routed: bool,
    connection: Connection,
    /// Indices into the batch, in batch order.
    indices: Vec<usize>,
}

/// A lane run to the end: whether it was routed, its connection (to check
/// in) and its outcomes.
type LaneDone = (bool, Connection, Vec<(usize, Result<Response, ClientError>)>);

impl Client {
    /// Resolves `addrs` (the seeds) and opens one connection, to check that
    /// the cluster is reachable. The ring is fetched later, by the first
    /// request that needs it.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if no address resolves or none accepts a
    /// connection.
    ///
    /// # Panics
    ///
    /// If `options.in_flight_max` is 0.
    pub fn connect<A: ToSocketAddrs>(
        addrs: &[A],
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        assert!(options.in_flight_max >= 1, "in_flight_max must be at least 1");
        let mut resolved = Vec::new();
        let mut last_error = None;
        for addr in addrs {
            match addr.to_socket_addrs() {
                Ok(found) => resolved.extend(found),
                Err(error) => last_error = Some(error),
            }
        }
        if resolved.is_empty() {
            let source = last_error
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address given"));
            return Err(ClientError::Connect { addrs: resolved, source });
        }
        let routing = Routing {
            router: Arc::new(Router::new(resolved.clone())),
            refresh_at: Some(Instant::now()),
            last_fetch: None,
            fetching: false,
        };
        let known = resolved.iter().copied().collect();
        let client = Client {
            seeds: resolved,
            options,
            pools: Mutex::new(Pools { known, idle: BTreeMap::new(), down_until: BTreeMap::new() }),
            next_seed: AtomicUsize::new(0),
            routing: Mutex::new(routing),
        };
        let connection = client.open(Target::Seeds)?;
        client.check_in(connection);
        Ok(client)
    }

    /// The seeds: the addresses given to [`connect`](Self::connect),
    /// resolved, in the order given.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.seeds
    }

    /// Reads `key`: its siblings and context.
    pub fn get(&self, key: &[u8]) -> Result<GetResult, ClientError> {
        self.get_with(key, ReadOptions::default())
    }

    /// Reads `key` with per-request options.
    pub fn get_with(&self, key: &[u8], options: ReadOptions) -> Result<GetResult, ClientError> {
        match self.call(&Operation::Get { key: key.to_vec(), options })? {
            Response::Get(result) => Ok(result),
            other => unreachable!("a get completed as {other:?}"),
        }
    }

    /// Writes `value` to `key`, superseding what `context` covers, and
    /// returns the key's context after the write and the new version's dot.
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
    ) -> Result<Written, ClientError> {
        self.put_with(key, value, context, WriteOptions::default())
    }

    /// Writes with per-request options.
    pub fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        context: Option<&Context>,
        options: WriteOptions,
    ) -> Result<Written, ClientError> {
        let operation = Operation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            context: context.cloned(),
            options,
        };
        match self.call(&operation)? {
            Response::Put(written) => Ok(written),
            other => unreachable!("a put completed as {other:?}"),
        }
    }

    /// Deletes `key`, superseding what `context` covers, and returns the
    /// key's context after the delete and the tombstone's dot.
    pub fn delete(&self, key: &[u8], context: &Context) -> Result<Written, ClientError> {
        self.delete_with(key, context, WriteOptions::default())
    }

    /// Deletes with per-request options.
    pub fn delete_with(
        &self,
        key: &[u8],
        context: &Context,
        options: WriteOptions,
    ) -> Result<Written, ClientError> {
        let operation = Operation::Delete { key: key.to_vec(), context: context.clone(), options };
        match self.call(&operation)? {
            Response::Delete(written) => Ok(written),
            other => unreachable!("a delete completed as {other:?}"),
        }
    }

    /// Asks a seed to answer, and returns the round trip time.
    pub fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.call(&Operation::Ping)? {
            Response::Pong => Ok(started.elapsed()),
            other => unreachable!("a ping completed as {other:?}"),
        }
    }

    /// Asks a seed for its ring and the cluster's replication settings.
    /// (What the client routes by is fetched on its own; this is for
    /// callers who want to see the ring.)
    pub fn ring(&self) -> Result<RingInfo, ClientError> {
        match self.call(&Operation::Ring)? {
            Response::Ring(info) => Ok(info),
            other => unreachable!("a ring request completed as {other:?}"),
        }
    }

    /// A seed's hints and the peers it believes down. Never routed: to
    /// ask one node, connect a client to just its address.
    pub fn stats(&self) -> Result<StatsReply, ClientError> {
        match self.call(&Operation::Stats)? {
            Response::Stats(stats) => Ok(stats),
            other => unreachable!("a stats request completed as {other:?}"),
        }
    }

    /// Asks a seed to mark `node` (0: the seed itself) `Leaving`: a ring
    /// without it is proposed, its partitions move to their new owners,
    /// and once it holds nothing it marks itself `Left`. Never routed: to
    /// ask one node, connect a client to just its address. Never retried.
    pub fn admin_leave(&self, node: NodeId) -> Result<AdminOutcome, ClientError> {
        self.admin(AdminOp::Leave, node)
    }

    /// Asks a seed to mark `node` `Left` at once (a node that is dead or
    /// never coming back): its partitions are re-replicated from the
    /// surviving replicas. A node cannot remove itself (it leaves). Never
    /// routed, never retried.
    pub fn admin_remove(&self, node: NodeId) -> Result<AdminOutcome, ClientError> {
        self.admin(AdminOp::Remove, node)
    }

    fn admin(&self, op: AdminOp, node: NodeId) -> Result<AdminOutcome, ClientError> {
        match self.call(&Operation::Admin { op, node })? {
            Response::Admin(outcome) => Ok(outcome),
            other => unreachable!("an admin request completed as {other:?}"),
        }
    }

    /// Asks a seed to run anti-entropy now, of `partition` or of every
    /// partition it replicates (`None`), and waits for what it compared
    /// and repaired. The node answers when its exchanges end, which can
    /// take a while: connect with a generous [`ClientOptions::timeout`].
    /// Never routed: to ask one node, connect a client to just its
    /// address. Never retried.
    pub fn repair(&self, partition: Option<u32>) -> Result<RepairReply, ClientError> {
        match self.call(&Operation::Repair { partition })? {
            Response::Repair(reply) => Ok(reply),
            other => unreachable!("a repair request completed as {other:?}"),
        }
    }

    /// Reads a seed's own replica of `key`, without coordination: the
    /// sibling set that node holds (empty if none), and whether it is a
    /// replica of the key. Never routed: to look at one node, connect a
    /// client to just its address.
    pub fn inspect(&self, key: &[u8]) -> Result<Inspected, ClientError> {
        match self.call(&Operation::Inspect { key: key.to_vec() })? {
            Response::Inspect(inspected) => Ok(inspected),
            other => unreachable!("an inspect completed as {other:?}"),
        }
    }

    /// Runs every operation of `batch` pipelined and returns their outcomes
    /// in the batch's order.
    ///
    /// Without a ring (see [routing](crate::client#routing)), the batch runs
    /// on one connection to a seed. With one, its operations are grouped by
    /// the node each would go to alone (the first reachable node of its
    /// key's preference list, else the seeds), each group is pipelined on
    /// its own connection, and the groups run at the same time, on up to 8
    /// threads (the caller's included). Replies are matched by request id
    /// within each connection. Nothing is sent twice: an operation whose
    /// connection failed reports it, and the caller decides.
    ///
    /// If a connection breaks, the operations in flight on it fail with
    /// [`ClientError::ConnectionLost`] and those not yet sent with
    /// [`ClientError::Closed`] (safe to send again).
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] if some operation could get no connection
    /// (not even to a seed); nothing was sent then.
    pub fn execute(
        &self,
        batch: &Batch,
    ) -> Result<Vec<Result<Response, ClientError>>, ClientError> {
        let operations = batch.operations();
        if operations.is_empty() {
            return Ok(Vec::new());
        }
        let routed = operations.iter().any(|operation| operation.routing_key().is_some());
        let router = if routed { self.router() } else { None };
        let lanes = self.open_lanes(operations, router.as_deref())?;
        let done = if lanes.len() == 1 {
            lanes.into_iter().map(|lane| self.run_lane(lane, operations)).collect()
        } else {
            self.run_lanes(lanes, operations)
        };
        let mut results: Vec<Option<Result<Response, ClientError>>> =
            operations.iter().map(|_| None).collect();
        for (routed, connection, outcomes) in done {
            for (index, result) in outcomes {
                if suggests_ring_changed(&result, routed) {
                    self.ring_suspect();
                }
                assert!(results[index].is_none(), "operation {index} completed twice");
                results[index] = Some(result);
            }
            self.check_in(connection);
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every operation of a batch completes"))
            .collect())
    }

    /// Gives each operation a connection: to the first target of its key
    /// that accepts one, else to the seeds. One connection per address: an
    /// operation for the seeds shares a lane with one routed to a seed.
    fn open_lanes(
        &self,
        operations: &[Operation],
        router: Option<&Router>,
    ) -> Result<Vec<Lane>, ClientError> {
        let down = self.down_now();
        let mut lanes: BTreeMap<SocketAddr, Lane> = BTreeMap::new();
        let mut unreachable: BTreeSet<SocketAddr> = BTreeSet::new();
        for (index, operation) in operations.iter().enumerate() {
            let targets = match (router, operation.routing_key()) {
                (Some(router), Some(key)) => order_by_health(router.targets(key), &down),
                _ => Vec::new(),
            };
            // The seeds end the list, and either take the operation or fail
            // the batch.
            let candidates = targets.into_iter().map(Target::Node).chain([Target::Seeds]);
            let mut placed = false;
            for target in candidates {
                if matches!(target, Target::Node(addr) if unreachable.contains(&addr)) {
                    continue;
                }
                let routed = matches!(target, Target::Node(_));
                let open = match target {
                    Target::Node(addr) => lanes.get_mut(&addr),
                    Target::Seeds => {
                        let seed = self.seeds.iter().find(|addr| lanes.contains_key(addr));
                        seed.copied().and_then(|addr| lanes.get_mut(&addr))
                    }
                };
                if let Some(lane) = open {
                    lane.indices.push(index);
                    lane.routed |= routed;
                    placed = true;
                    break;
                }
                match self.check_out(target) {
                    Ok(connection) => {
                        let addr = connection.addr;
                        let lane = Lane { routed, connection, indices: vec![index] };
                        let previous = lanes.insert(addr, lane);
                        assert!(previous.is_none(), "one lane per address");
                        placed = true;
                        break;
                    }
                    Err(error) => {
                        if let Target::Node(addr) = target {
                            unreachable.insert(addr);
                            self.ring_suspect();
                            continue;
                        }
                        for (_, lane) in lanes {
                            self.check_in(lane.connection);
                        }
                        return Err(error);
                    }
                }
            }
            assert!(placed, "operation {index} has a connection");
        }
        Ok(lanes.into_values().collect())
    }

    /// Runs lanes at the same time, on up to [`BATCH_THREADS_MAX`] threads
    /// (this one included), each taking the next lane when it is done.
    /// Lanes share nothing but the queue: each has its own connection.
    fn run_lanes(&self, lanes: Vec<Lane>, operations: &[Operation]) -> Vec<LaneDone> {
        let threads = lanes.len().min(BATCH_THREADS_MAX);
        let queue = Mutex::new(lanes);
        let work = || {
            let mut done = Vec::new();
            loop {
                let lane = lock(&queue).pop();
                let Some(lane) = lane else { return done };
                done.push(self.run_lane(lane, operations));
            }
        };
        thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
            let mut done = work();
            for helper in helpers {
                match helper.join() {
                    Ok(more) => done.extend(more),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            done
        })
    }

    /// Pipelines a lane's operations on its connection.
    fn run_lane(&self, lane: Lane, operations: &[Operation]) -> LaneDone {
        let Lane { routed, mut connection, indices } = lane;
        let mut outcomes = Vec::with_capacity(indices.len());
        let mut index_of: BTreeMap<RequestId, usize> = BTreeMap::new();
        let mut next = 0;
        while outcomes.len() < indices.len() {
            let now = Instant::now();
            while next < indices.len()
                && connection.core.in_flight() < self.options.in_flight_max
                && connection.core.pending_transmit().len() < BATCH_TRANSMIT_BYTES_MAX
            {
                let index = indices[next];
                match connection.start(now, &operations[index]) {
                    Ok(id) => {
                        index_of.insert(id, index);
                    }
                    Err(error) => outcomes.push((index, Err(error))),
                }
                next += 1;
            }
            connection.flush();
            connection.wait();
            while let Some(completion) = connection.core.poll_completion() {
                let index = index_of.remove(&completion.id).expect("a batch request completed");
                outcomes.push((index, completion.result));
            }
        }
        assert!(index_of.is_empty());
        assert_eq!(outcomes.len(), indices.len());
        (routed, connection, outcomes)
    }

    /// Runs one operation: a routed one on the first target of its key
    /// that takes it, anything else (or when no target does) on a seed.
    fn call(&self, operation: &Operation) -> Result<Response, ClientError> {
        let routed = operation.routing_key().and_then(|key| Some((key, self.router()?)));
        let Some((key, router)) = routed else {
            return self.call_on(Target::Seeds, operation);
        };
        for addr in order_by_health(router.targets(key), &self.down_now()) {
            let result = self.call_on(Target::Node(addr), operation);
            if suggests_ring_changed(&result, true) {
                self.ring_suspect();
            }
            if matches!(result, Err(ClientError::Timeout { .. } | ClientError::ConnectionLost)) {
                // Silent (stopped, overloaded, cut off) or its connection
                // broke (killed): the key's other replicas go first for a
                // while, so a retry does not meet the same fate.
                self.mark_down(addr);
            }
            match result {
                // Not sent: the next replica may take it.
                Err(ClientError::Connect { .. } | ClientError::Closed) => {}
                // Sent, and perhaps applied: only a read goes again.
                Err(ClientError::ConnectionLost) if operation.is_idempotent() => {}
                result => return result,
            }
        }
        self.call_on(Target::Seeds, operation)
    }

    /// Runs one operation on a connection to `target`, retrying an
    /// idempotent one once on a fresh connection when a pooled connection
    /// turns out to be dead.
    fn call_on(&self, target: Target, operation: &Operation) -> Result<Response, ClientError> {
        let mut connection = self.check_out(target)?;
        let result = connection.run(operation);
        let result = match result {
            Err(ClientError::ConnectionLost | ClientError::Closed)
                if connection.reused && operation.is_idempotent() =>
            {
                connection = self.open(target)?;
                connection.run(operation)
            }
            result => result,
        };
        self.check_in(connection);
        result
    }

    /// The router to route keyed requests by, if routing is on and a ring
    /// was fetched; fetches the ring first if that is due (unless another
    /// call is fetching it).
    fn router(&self) -> Option<Arc<Router>> {
        if !self.options.route_by_ring {
            return None;
        }
        let now = Instant::now();
        let fetch = {
            let mut routing = lock(&self.routing);
            let due = !routing.fetching && routing.refresh_at.is_some_and(|at| now >= at);
            routing.fetching |= due;
            due
        };
        if fetch {
            let fetching = Fetching(&self.routing);
            let fetched = match self.call_on(Target::Seeds, &Operation::Ring) {
                Ok(Response::Ring(info)) => Some(info).filter(|info| info.ring.is_some()),
                Ok(other) => unreachable!("a ring request completed as {other:?}"),
                Err(_) => None,
            };
            self.fetched(fetched);
            drop(fetching);
        }
        let routing = lock(&self.routing);
        routing.router.is_routing().then(|| routing.router.clone())
    }

    /// Takes in the outcome of a ring fetch: a formed ring replaces the one
    /// routed by; without one (the fetch failed, or the seed has not formed
    /// its ring), the client keeps what it had and tries again soon.
    fn fetched(&self, info: Option<RingInfo>) {
        let now = Instant::now();
        let mut routing = lock(&self.routing);
        let Some(info) = info else {
            let retry = RING_RETRY_AFTER.min(self.options.ring_refresh_interval);
            routing.refresh_at = now.checked_add(retry);
            routing.last_fetch = Some((now, false));
            return;
        };
        let router = Router::with_ring(self.seeds.clone(), info);
        let keep: BTreeSet<SocketAddr> = router.addrs().into_iter().collect();
        routing.router = Arc::new(router);
        routing.refresh_at = now.checked_add(self.options.ring_refresh_interval);
        routing.last_fetch = Some((now, true));
        drop(routing);
        // Connections to nodes that left the ring would never be used again.
        let mut pools = lock(&self.pools);
        pools.idle.retain(|addr, _| keep.contains(addr));
        pools.down_until.retain(|addr, _| keep.contains(addr));
        pools.known = keep;
    }

    /// Something suggests the ring changed: fetch it on the next request,
    /// but not sooner than [`RING_SUSPECT_GAP`] after the last fetch (and
    /// not sooner than planned if the last fetch failed).
    fn ring_suspect(&self) {
        if !self.options.route_by_ring {
            return;
        }
        let mut routing = lock(&self.routing);
        let Some((at, true)) = routing.last_fetch else { return };
        let Some(soon) = at.checked_add(RING_SUSPECT_GAP) else { return };
        routing.refresh_at = Some(routing.refresh_at.map_or(soon, |planned| planned.min(soon)));
    }

    /// Routes around `addr` for [`NODE_DOWN_FOR`].
    fn mark_down(&self, addr: SocketAddr) {
        if let Some(until) = Instant::now().checked_add(NODE_DOWN_FOR) {
            lock(&self.pools).down_until.insert(addr, until);
        }
    }

    /// The nodes that refused a connection or timed out within
    /// [`NODE_DOWN_FOR`].
    fn down_now(&self) -> BTreeSet<SocketAddr> {
        let now = Instant::now();
        let mut pools = lock(&self.pools);
        pools.down_until.retain(|_, until| *until > now);
        pools.down_until.keys().copied().collect()
    }

    /// An idle pooled connection to `target` that still looks alive, or a
    /// new one.
    fn check_out(&self, target: Target) -> Result<Connection, ClientError> {
        loop {
            let idle = {
                let mut pools = lock(&self.pools);
                match target {
                    Target::Node(addr) => pools.idle.get_mut(&addr).and_then(Vec::pop),
                    Target::Seeds => {
                        self.seeds.iter().find_map(|addr| pools.idle.get_mut(addr)?.pop())
                    }
                }
            };
            let Some(mut connection) = idle else {
                return self.open(target);
            };
            let idle_for = connection.last_used.elapsed();
            if idle_for < self.options.idle_check_after || connection.is_alive() {
                connection.reused = true;
                return Ok(connection);
            }
        }
    }

    /// Returns a connection to its address's pool if it is healthy, idle,
    /// the address still belongs to the cluster, and the pool has room;
    /// otherwise closes it.
    fn check_in(&self, mut connection: Connection) {
        if connection.core.is_closed() || connection.core.in_flight() > 0 {
            return;
        }
        connection.last_used = Instant::now();
        let mut pools = lock(&self.pools);
        if !pools.known.contains(&connection.addr) {
            return;
        }
        let idle = pools.idle.entry(connection.addr).or_default();
        if idle.len() < self.options.pool_size {
            idle.push(connection);
        }
    }

    /// Opens a connection to `target`: to a node, noting it down for
    /// [`NODE_DOWN_FOR`] if it refuses; to the seeds, trying each once,
    /// starting from a different one each time.
    fn open(&self, target: Target) -> Result<Connection, ClientError> {
        let addr = match target {
            Target::Node(addr) => addr,
            Target::Seeds => return self.open_seed(),
        };
        let opened = Connection::open(addr, &self.options);
        let mut pools = lock(&self.pools);
        match opened {
            Ok(connection) => {
                pools.down_until.remove(&addr);
                Ok(connection)
            }
            Err(source) => {
                if let Some(until) = Instant::now().checked_add(NODE_DOWN_FOR) {
                    pools.down_until.insert(addr, until);
                }
                Err(ClientError::Connect { addrs: vec![addr], source })
            }
        }
    }

    fn open_seed(&self) -> Result<Connection, ClientError> {
        let first = self.next_seed.fetch_add(1, Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..self.seeds.len() {
            let addr = self.seeds[(first + offset) % self.seeds.len()];
            match Connection::open(addr, &self.options) {
                Ok(connection) => return Ok(connection),
                Err(error) => last_error = Some(error),
            }
        }
        let source = last_error.expect("a client has at least one seed");
        Err(ClientError::Connect { addrs: self.seeds.clone(), source })
    }
}

/// Whether an outcome of a request suggests the ring the client routes by
/// is out of date: a node of a preference list (`routed`) could not be
/// reached or lost the connection, or any node said it is not a replica.
fn suggests_ring_changed(result: &Result<Response, ClientError>, routed: bool) -> bool {
    match result {
        Err(ClientError::Connect { .. } | ClientError::Closed | ClientError::ConnectionLost) => {
            routed
        }
        Err(ClientError::Server { message, .. }) => message.contains(NOT_A_REPLICA),
        _ => false,
    }
}

/// `targets` with the nodes in `down` moved last, the order otherwise kept.
fn order_by_health(targets: Vec<SocketAddr>, down: &BTreeSet<SocketAddr>) -> Vec<SocketAddr> {
    let (mut up, down): (Vec<SocketAddr>, Vec<SocketAddr>) =
        targets.into_iter().partition(|addr| !down.contains(addr));
    up.extend(down);
    up
}

/// Locks `mutex`, taking the state over from a thread that panicked while
/// holding it: every critical section here leaves its state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a ring fetch under way; clears the mark when dropped, even if the
/// fetch panicked, so that fetching is never blocked for good.
struct Fetching<'a>(&'a Mutex<Routing>);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        lock(self.0).fetching = false;
    }
}

/// One socket and the protocol state riding on it.
#[derive(Debug)]
struct Connection {
    /// The node's address: the pool the connection goes back to.
    addr: SocketAddr,
    stream: TcpStream,
    core: ClientCore,
    read_buffer: Vec<u8>,
    /// The read timeout currently set on the socket, to skip the system call
    /// when it would barely change.
    read_timeout: Option<Duration>,
    last_used: Instant,
    /// Whether the connection came from the pool (so it may have died while
    /// idle) rather than being opened for this call.
    reused: bool,
}

impl Connection {
    fn open(addr: SocketAddr, options: &ClientOptions) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, options.connect_timeout)?;
        // Requests are small and latency matters more than packet count;
        // coalescing is done by the core, which writes batches in one call.
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(options.timeout))?;
        let core = ClientCore::new(CoreOptions {
            timeout: options.timeout,
            in_flight_max: options.in_flight_max,
            reply_frame_bytes_max: options.reply_frame_bytes_max,
        });
        Ok(Connection {
            addr,
            stream,
            core,
            read_buffer: vec![0; READ_BUFFER_BYTES],
            read_timeout: None,
            last_used: Instant::now(),
            reused: false,
        })
    }

    fn start(&mut self, now: Instant, operation: &Operation) -> Result<RequestId, ClientError> {
        match operation {
            Operation::Get { key, options } => self.core.start_get(now, key, *options),
            Operation::Put { key, value, context, options } => {
                self.core.start_put(now, key, value, context.as_ref(), *options)
            }
            Operation::Delete { key, context, options } => {
                self.core.start_delete(now, key, context, *options)
            }
            Operation::Ping => self.core.start_ping(now),
            Operation::Ring => self.core.start_ring(now),
            Operation::Inspect { key } => self.core.start_inspect(now, key),
            Operation::Stats => self.core.start_stats(now),
            Operation::Admin { op, node } => self.core.start_admin(now, *op, *node),
            Operation::Repair { partition } => self.core.start_repair(now, *partition),
        }
    }

    /// Sends one operation and waits for its outcome.
    fn run(&mut self, operation: &Operation) -> Result<Response, ClientError> {
        assert_eq!(self.core.in_flight(), 0, "a pooled connection has nothing in flight");
        let id = self.start(Instant::now(), operation)?;
        self.flush();
        loop {
            self.wait();
            if let Some(completion) = self.core.poll_completion() {
                assert_eq!(completion.id, id, "the only request in flight completed");
                return completion.result;
            }
        }
    }

    /// Writes every queued request. A failed write closes the core, which
    /// completes everything in flight as lost.
    fn flush(&mut self) {
        let transmit = self.core.pending_transmit();
        if transmit.is_empty() {
            return;
        }
        match self.stream.write_all(transmit) {
            Ok(()) => {
                let written = transmit.len();
                self.core.advance_transmit(written);
            }
            Err(_) => self.core.close(),
        }
    }

    /// Blocks until some request completes (by reply, timeout or the
    /// connection's loss), or returns at once if none is awaited.
    fn wait(&mut self) {
        loop {
            let now = Instant::now();
            self.core.handle_timeout(now);
            if self.core.in_flight() > self.core.awaiting_reply() {
                return; // Something completed.
            }
            let Some(deadline) = self.core.poll_timeout() else {
                return; // Nothing awaited (or the core is closed).
            };
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(1));
            if self.set_read_timeout(wait).is_err() {
                self.core.close();
                return;
            }
            match self.stream.read(&mut self.read_buffer) {
                // The node closed the connection.
                Ok(0) => self.core.close(),
                Ok(len) => {
                    // A framing error closes the core itself; the requests
                    // in flight complete as lost and the socket is dropped
                    // with the connection.
                    let _ = self.core.handle_input(&self.read_buffer[..len]);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => self.core.close(),
            }
        }
    }

    /// Sets the socket's read timeout to about `wait`: at once if that is
    /// sooner than the current one by more than a tenth, or much later (a
    /// timeout that is only a little late costs nothing; one that is early
    /// costs a spurious wake-up and another call).
    fn set_read_timeout(&mut self, wait: Duration) -> io::Result<()> {
        let current = self.read_timeout;
        let needed = current.is_none_or(|current| wait < current * 9 / 10 || wait > current * 2);
        if needed {
            self.stream.set_read_timeout(Some(wait))?;
            self.read_timeout = Some(wait);
        }
        Ok(())
    }

    /// Whether the node has not closed the connection while it sat idle. A
    /// peek that would block means alive; end of stream or an error, dead.
    /// Bytes waiting (late replies to timed-out requests) mean alive.
    fn is_alive(&mut self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let alive = match self.stream.peek(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(error) => error.kind() == io::ErrorKind::WouldBlock,
        };
        self.stream.set_nonblocking(false).is_ok() && alive
    }
}
