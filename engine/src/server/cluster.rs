//! A shard's side of the cluster: the glommio driver of the pure
//! [`Coordinator`].
//!
//! The coordinator decides; this file carries its actions out on real
//! things: a client's reply goes to the task awaiting it, a local
//! operation runs on the shard's [`Replica`] (answered inline when it
//! completes without waiting, as a cached read does), a peer request
//! travels over this shard's TCP link to that node, and a timer lands in a
//! sorted set that a ticker looks at every few milliseconds. Every answer
//! goes back into the coordinator as an input, one at a time, on the
//! shard's own thread: the coordinator is never borrowed across an await.
//!
//! Links: each shard keeps one connection per peer node, made on first use
//! and made again after it breaks. Requests on it are pipelined and
//! answered by request id; when a link breaks, every request waiting on it
//! is answered "failed" at once, so the coordinator never waits for a
//! timeout to learn what the kernel already told us. The peer's accepting
//! shard routes each request to the shard that owns its key (or, for the
//! transfer requests `SCAN` and `OFFER` and anti-entropy's `TREE`, `LEAF`,
//! `FETCH` and `REPAIR_WRITE`, its partition), as it does a client's.
//!
//! Anti-entropy: the coordinator's replica operations for it (tree hashes,
//! leaf listings, fetches, repair merges) run in the shard's low-share
//! task queue, behind clients' requests, as does serving a peer's; an
//! operator's repair (`Input::Repair`) is answered through a ticket
//! (`Action::Repaired`).
//!
//! Rings: each tick the shard adopts the node's current and pending rings
//! from the [`View`] shard 0's gossip publishes (`set_ring`,
//! `set_next_ring`), and every [`STATS_EVERY`] it publishes, with its
//! counters, the rings it holds and whether it has pulled everything it
//! gains (`ready_for`), which is how shard 0 learns that the node is ready
//! for a pending ring.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ahash::AHashMap;
use futures::channel::{mpsc, oneshot};
use futures::future::{Either, select};
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use glommio::net::TcpStream;
use holdfast_net::frame::{Frame, FrameDecoder, Kind};
use holdfast_net::limits::{KEY_BYTES_MAX, REPLY_FRAME_BYTES_MAX_DEFAULT};
use holdfast_net::message::{
    Coordinate, DeleteRequest, ErrorCode, ErrorReply, FetchReply, FetchRequest, GetRequest,
    HintedWrite, LeafReply, LeafRequest, OfferEntry, OfferReply, OfferRequest, Ping, Pong,
    PutRequest, ReapReply, ReapRequest, RepairWrite, RepairWriteReply, ReplicaRead,
    ReplicaReadReply, ReplicaWrite, Reply, ScanEntry, ScanReply, ScanRequest, TreeReply,
    TreeRequest, decode_dot, encode_message,
};
use holdfast_net::ring::{NodeId, Ring};
use holdfast_net::siblings::DecodeLimits;
use holdfast_net::{SiblingSet, VersionVector};

use super::connection::gather;
use super::membership::{View, ViewCell};
use super::shard::Shard;
use crate::cluster::coordinator::{
    Action, ClientRef, ClientReply, ClientRequest, Coordinator, CoordinatorStats, Input, LocalOp,
    LocalResult, OpId, PeerReply, PeerRequest, RepairReport,
};

/// How often a shard looks for expired coordinator timers. Request
/// timeouts are seconds and read repair waits tens of milliseconds, so a
/// few milliseconds of lateness is noise.
const TIMER_TICK: Duration = Duration::from_millis(5);
/// How long connecting to a peer may take before the link gives up (and
/// fails what waits on it).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Each shard's counters for `holdfast status`, indexed by shard: written
/// by each shard about once a second, read by whichever shard answers a
/// `Stats` request. Never touched on the data path.
pub(crate) type StatsCell = Arc<Mutex<Vec<ShardStats>>>;

/// How often a shard publishes its counters. Shard 0 reads them to learn
/// when the node is ready for a pending ring, so this is part of how long
/// a membership change takes.
const STATS_EVERY: Duration = Duration::from_millis(200);

/// One shard's counters, as last published.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardStats {
    pub hinted_keys: u64,
    pub coordinator: CoordinatorStats,
    pub down: Vec<NodeId>,
    /// The rings the shard routes by and pulls for, when it published.
    pub ring: Option<Arc<Ring>>,
    pub next: Option<Arc<Ring>>,
    /// The pending ring version this shard has pulled everything for.
    pub ready_for: Option<u64>,
    /// Data partitions the shard's replica holds keys of.
    pub data_partitions: u64,
    /// Partitions whose Merkle trees are not comparable yet (being built).
    pub trees_building: u64,
    /// Full anti-entropy rounds completed (for a node: its slowest
    /// shard's).
    pub anti_entropy_rounds: u64,
    /// When the last full round ended (for a node: the oldest of its
    /// shards'; `None` if any shard has completed none). An `Instant`,
    /// since each shard's coordinator clock starts at its own moment.
    pub anti_entropy_last_round: Option<Instant>,
}

/// A shard's coordinator and the state that drives it.
pub(crate) struct ClusterDriver {
    started: Instant,
    coordinator: RefCell<Coordinator>,
    /// Clients awaiting a reply, by the ref given to the coordinator.
    clients: RefCell<AHashMap<u64, oneshot::Sender<ClientReply>>>,
    next_client: Cell<u64>,
    /// Coordinator timers by the tick they fall due in. Nearly every
    /// operation sets one (reads and writes at their deadline, seconds
    /// away) and nearly all finish long before it, so setting one must be
    /// cheap: a push onto the due tick's list. (A set ordered by deadline
    /// held throughput x timeout entries, hundreds of thousands under load,
    /// and its inserts and expiry were a tenth of a shard's time.) Timers of
    /// operations already finished are dropped when they fall due.
    timers: RefCell<BTreeMap<u64, Vec<OpId>>>,
    links: RefCell<BTreeMap<NodeId, Rc<Link>>>,
    view: ViewCell,
    stats: StatsCell,
    /// Operators' repairs awaiting their report, by ticket.
    repairs: RefCell<AHashMap<u64, oneshot::Sender<RepairReport>>>,
    next_ticket: Cell<u64>,
}

impl ClusterDriver {
    pub fn new(coordinator: Coordinator, view: ViewCell, stats: StatsCell) -> ClusterDriver {
        ClusterDriver {
            started: Instant::now(),
            coordinator: RefCell::new(coordinator),
            clients: RefCell::new(AHashMap::new()),
            next_client: Cell::new(1),
            timers: RefCell::new(BTreeMap::new()),
            links: RefCell::new(BTreeMap::new()),
            view,
            stats,
            repairs: RefCell::new(AHashMap::new()),
            next_ticket: Cell::new(1),
        }
    }

    /// The ring this shard routes by, if it has one.
    pub fn ring(&self) -> Option<Arc<Ring>> {
        self.coordinator.borrow().ring().cloned()
    }

    pub fn replicas(&self, partition: u32) -> Vec<NodeId> {
        self.coordinator.borrow().replicas(partition)
    }

    /// Whether this node replicates `partition` in its current or pending
    /// ring (what an offer must find true here).
    pub fn replicates(&self, partition: u32) -> bool {
        self.adopt_ring();
        self.coordinator.borrow().replicates(partition)
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// The node's membership as shard 0 last published it.
    pub fn view(&self) -> View {
        self.view.lock().map(|view| view.clone()).unwrap_or_default()
    }

    /// Routes by the node's ring, and pulls for its pending ring, if they
    /// are not the ones the coordinator has.
    fn adopt_ring(&self) {
        let (current, next) = match self.view.lock() {
            Ok(view) => (view.ring.clone(), view.next.clone()),
            Err(_) => return,
        };
        let Some(ring) = current else { return };
        let mut coordinator = self.coordinator.borrow_mut();
        if coordinator.ring().is_none_or(|routed| !Arc::ptr_eq(routed, &ring)) {
            coordinator.set_ring(ring);
        }
        let pending = coordinator.next_ring().cloned();
        let same = match (&pending, &next) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            coordinator.set_next_ring(next);
        }
    }

    /// Every shard's counters, as last published, by shard.
    pub fn shard_stats(&self) -> Vec<ShardStats> {
        self.stats.lock().map(|stats| stats.clone()).unwrap_or_default()
    }

    /// The node's counters: every shard's, summed, and the peers any shard
    /// believes down.
    pub fn node_stats(&self) -> ShardStats {
        let shards = self.shard_stats();
        let mut total = ShardStats::default();
        // A node completed a round when every shard did.
        let rounds = shards.iter().map(|shard| shard.anti_entropy_rounds).min();
        total.anti_entropy_rounds = rounds.unwrap_or(0);
        let never = shards.is_empty() || shards.iter().any(|s| s.anti_entropy_last_round.is_none());
        total.anti_entropy_last_round = if never {
            None
        } else {
            shards.iter().filter_map(|shard| shard.anti_entropy_last_round).min()
        };
        for shard in shards {
            total.hinted_keys += shard.hinted_keys;
            total.coordinator += shard.coordinator;
            total.down.extend(shard.down);
            total.data_partitions += shard.data_partitions;
            total.trees_building += shard.trees_building;
        }
        total.down.sort_unstable();
        total.down.dedup();
        total
    }
}

/// One shard's connection to one peer node.
struct Link {
    node: NodeId,
    addr: SocketAddr,
    /// Frames to send, in order.
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    /// Requests sent and not yet answered: request id to the coordinator's
    /// op and the kind sent.
    waiting: RefCell<BTreeMap<u64, (OpId, Kind)>>,
    next_id: Cell<u64>,
}

impl Shard {
    /// Coordinates a client's request and returns the reply for it.
    pub(crate) async fn coordinate(
        self: &Rc<Self>,
        request: ClientRequest,
        forwarded: bool,
    ) -> ClientReply {
        if self.cluster.coordinator.borrow().ring().is_none() {
            // The node may have its ring before this shard's first tick
            // (a request right after start): adopt it now rather than
            // refuse.
            self.cluster.adopt_ring();
        }
        let (done, reply) = oneshot::channel();
        let id = self.cluster.next_client.get();
        self.cluster.next_client.set(id + 1);
        self.cluster.clients.borrow_mut().insert(id, done);
        self.drive(Input::Client { client: ClientRef(id), request, forwarded });
        reply.await.unwrap_or_else(|_| ClientReply::Error {
            code: ErrorCode::Internal,
            message: "the coordinator dropped the request".into(),
        })
    }

    /// Feeds `input` to the coordinator and carries out what it asks,
    /// feeding back whatever completes at once, until nothing is left.
    pub(crate) fn drive(self: &Rc<Self>, input: Input) {
        let mut inputs = VecDeque::from([input]);
        let mut actions = Vec::new();
        while let Some(input) = inputs.pop_front() {
            let now = self.cluster.now();
            self.cluster.coordinator.borrow_mut().handle(now, input, &mut actions);
            for action in actions.drain(..) {
                match action {
                    Action::Reply { client, reply } => {
                        if let Some(done) = self.cluster.clients.borrow_mut().remove(&client.0) {
                            let _ = done.send(reply);
                        }
                    }
                    Action::Local { op, local } if local.is_anti_entropy() => {
                        // Anti-entropy's replica work waits behind clients'.
                        let shard = self.clone();
                        self.spawn_background(async move {
                            let result = shard.replica.apply(local).await;
                            shard.drive(Input::Local { op, result });
                        });
                    }
                    Action::Local { op, local } => {
                        let mut running = Box::pin(self.clone().run_local(local));
                        // Most reads complete without waiting (the value is
                        // cached): no task for those.
                        let mut context = Context::from_waker(futures::task::noop_waker_ref());
                        match running.poll_unpin(&mut context) {
                            Poll::Ready(result) => inputs.push_back(Input::Local { op, result }),
                            Poll::Pending => {
                                let shard = self.clone();
                                glommio::spawn_local(async move {
                                    let result = running.await;
                                    shard.drive(Input::Local { op, result });
                                })
                                .detach();
                            }
                        }
                    }
                    Action::Send { op, to, request } => {
                        if let Err(reply) = self.send_peer(op, to, request) {
                            inputs.push_back(Input::Peer { op, from: to, reply });
                        }
                    }
                    Action::Timer { op, at } => {
                        // Rounded up: a timer never fires early.
                        let tick = at.as_nanos().div_ceil(TIMER_TICK.as_nanos()) as u64;
                        self.cluster.timers.borrow_mut().entry(tick).or_default().push(op);
                    }
                    Action::Repaired { ticket, report } => {
                        if let Some(done) = self.cluster.repairs.borrow_mut().remove(&ticket) {
                            let _ = done.send(report);
                        }
                    }
                }
            }
        }
    }

    /// Runs anti-entropy now on this shard's coordinator, for `partitions`
    /// (`None`: every partition of this shard the node replicates), and
    /// returns what it compared and repaired; `None` if the coordinator
    /// dropped the request.
    pub(crate) async fn repair(
        self: &Rc<Self>,
        partitions: Option<Vec<u32>>,
    ) -> Option<RepairReport> {
        if self.cluster.coordinator.borrow().ring().is_none() {
            self.cluster.adopt_ring();
        }
        let (done, report) = oneshot::channel();
        let ticket = self.cluster.next_ticket.get();
        self.cluster.next_ticket.set(ticket + 1);
        self.cluster.repairs.borrow_mut().insert(ticket, done);
        self.drive(Input::Repair { ticket, partitions });
        report.await.ok()
    }

    async fn run_local(self: Rc<Self>, local: LocalOp) -> LocalResult {
        self.replica.apply(local).await
    }

    /// Queues `request` on the link to `to`; `Err` with the failure if it
    /// cannot even be queued.
    fn send_peer(
        self: &Rc<Self>,
        op: OpId,
        to: NodeId,
        request: PeerRequest,
    ) -> Result<(), PeerReply> {
        let link = self.link(to)?;
        let id = link.next_id.get();
        link.next_id.set(id + 1);
        let (kind, frame) = match request {
            PeerRequest::Read { partition, key } => {
                (Kind::REPLICA_READ, encode_message(id, &ReplicaRead { partition, key }))
            }
            PeerRequest::Write { partition, key, set, hint: None } => {
                let write = ReplicaWrite { partition, key, set: set.encode() };
                (Kind::REPLICA_WRITE, encode_message(id, &write))
            }
            PeerRequest::Write { partition, key, set, hint: Some(owner) } => {
                let write = HintedWrite { partition, key, set: set.encode(), owner };
                (Kind::HINTED_WRITE, encode_message(id, &write))
            }
            PeerRequest::Ping => (Kind::PING, encode_message(id, &Ping {})),
            PeerRequest::Coordinate(request) => {
                let frame = client_frame(&request);
                (Kind::COORDINATE, encode_message(id, &Coordinate { frame }))
            }
            PeerRequest::Scan { partition, after, keys, bytes } => {
                let scan = ScanRequest {
                    partition,
                    resume: after.is_some(),
                    after: after.unwrap_or_default(),
                    keys: u32::try_from(keys).unwrap_or(u32::MAX),
                    bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
                };
                (Kind::SCAN, encode_message(id, &scan))
            }
            PeerRequest::Offer { partition, keys } => {
                let keys = keys.into_iter().map(|(key, token)| OfferEntry { key, token }).collect();
                (Kind::OFFER, encode_message(id, &OfferRequest { partition, keys }))
            }
            PeerRequest::TreeHashes { partition, level, indices } => {
                (Kind::TREE, encode_message(id, &TreeRequest { partition, level, indices }))
            }
            PeerRequest::LeafEntries { partition, leaves } => {
                (Kind::LEAF, encode_message(id, &LeafRequest { partition, leaves }))
            }
            PeerRequest::Fetch { partition, keys, bytes } => {
                let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                (Kind::FETCH, encode_message(id, &FetchRequest { partition, keys, bytes }))
            }
            PeerRequest::Repair { partition, entries } => {
                let entries = entries
                    .into_iter()
                    .map(|(key, set)| ScanEntry { key, set: set.encode() })
                    .collect();
                (Kind::REPAIR_WRITE, encode_message(id, &RepairWrite { partition, entries }))
            }
            PeerRequest::Reap { partition, keys } => {
                let keys = keys.into_iter().map(|(key, token)| OfferEntry { key, token }).collect();
                (Kind::REAP, encode_message(id, &ReapRequest { partition, keys }))
            }
        };
        // A repair batch over the peer's request frame limit (taken to be
        // this node's) would make the peer close the link, failing every
        // request on it: refuse it here instead (the exchange is skipped).
        if kind == Kind::REPAIR_WRITE && frame.len() > self.options.frame_bytes_max as usize {
            let message = format!(
                "a repair of {} bytes is over the request frame limit of {}",
                frame.len(),
                self.options.frame_bytes_max
            );
            return Err(PeerReply::Failed { code: ErrorCode::FrameTooLarge, message });
        }
        link.waiting.borrow_mut().insert(id, (op, kind));
        if link.outgoing.unbounded_send(frame).is_err() {
            link.waiting.borrow_mut().remove(&id);
            return Err(failed("the link to the peer is gone"));
        }
        Ok(())
    }

    /// The link to `node`, made on first use.
    fn link(self: &Rc<Self>, node: NodeId) -> Result<Rc<Link>, PeerReply> {
        if let Some(link) = self.cluster.links.borrow().get(&node) {
            return Ok(link.clone());
        }
        let (ring, next) = {
            let coordinator = self.cluster.coordinator.borrow();
            (coordinator.ring().cloned(), coordinator.next_ring().cloned())
        };
        let ring = ring.ok_or_else(|| failed("no ring"))?;
        // A node of the pending ring only (a joiner) is reached too.
        let member = ring
            .member(node)
            .or_else(|| next.as_deref().and_then(|next| next.member(node)))
            .ok_or_else(|| failed("the node is not in the ring"))?;
        let addr: SocketAddr = member
            .addr
            .parse()
            .map_err(|_| failed(&format!("the node's address {:?} is not valid", member.addr)))?;
        let (outgoing, queued) = mpsc::unbounded();
        let link = Rc::new(Link {
            node,
            addr,
            outgoing,
            waiting: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(1),
        });
        self.cluster.links.borrow_mut().insert(node, link.clone());
        glommio::spawn_local(self.clone().run_link(link.clone(), queued)).detach();
        Ok(link)
    }

    /// Sends what is queued for a peer, (re)connecting when there is
    /// something to send, until the shard stops.
    async fn run_link(
        self: Rc<Self>,
        link: Rc<Link>,
        mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let mut batch = Vec::new();
        while let Some(first) = queued.next().await {
            gather(&mut batch, &first, &mut queued);
            let connecting = std::pin::pin!(TcpStream::connect(link.addr));
            let timeout = std::pin::pin!(glommio::timer::sleep(CONNECT_TIMEOUT));
            let stream = match select(connecting, timeout).await {
                Either::Left((Ok(stream), _)) => stream,
                Either::Left((Err(error), _)) => {
                    tracing::debug!(peer = %link.addr, %error, "connecting to a peer failed");
                    self.fail_link(&link, &mut queued, "cannot connect to the node");
                    continue;
                }
                Either::Right(_) => {
                    self.fail_link(&link, &mut queued, "connecting to the node timed out");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (reader, mut writer) = stream.split();
            let closed = Rc::new(super::shard::Watch::default());
            let reading =
                glommio::spawn_local(self.clone().read_link(link.clone(), reader, closed.clone()));
            loop {
                if writer.write_all(&batch).await.is_err() {
                    break;
                }
                let next = std::pin::pin!(queued.next());
                let broken = std::pin::pin!(closed.wait());
                match select(next, broken).await {
                    Either::Left((Some(frame), _)) => gather(&mut batch, &frame, &mut queued),
                    Either::Left((None, _)) => return,
                    Either::Right(_) => break,
                }
            }
            let _ = writer.close().await;
            drop(reading);
            self.fail_link(&link, &mut queued, "the connection to the node broke");
        }
    }

    /// Reads a peer's replies until the connection ends.
    async fn read_link(
        self: Rc<Self>,
        link: Rc<Link>,
        mut reader: futures::io::ReadHalf<TcpStream>,
        closed: Rc<super::shard::Watch>,
    ) {
        let mut decoder = FrameDecoder::new(REPLY_FRAME_BYTES_MAX_DEFAULT);
        let mut buffer = vec![0; 64 << 10];
        'reading: loop {
            let count = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            let mut input = &buffer[..count];
            while !input.is_empty() {
                let decoded = match decoder.decode(input) {
                    Ok(decoded) => decoded,
                    Err(error) => {
                        tracing::warn!(peer = %link.addr, %error, "a peer broke the framing");
                        break 'reading;
                    }
                };
                input = &input[decoded.consumed..];
                let Some(frame) = decoded.frame else { continue };
                let Some((op, kind)) = link.waiting.borrow_mut().remove(&frame.request_id()) else {
                    continue; // An answer to a request already failed.
                };
                let reply = peer_reply(kind, &frame, self.replica.limits());
                self.drive(Input::Peer { op, from: link.node, reply });
            }
        }
        closed.set();
    }

    /// Fails every request waiting on `link`, and drops what was queued
    /// for it (those requests are among the failed).
    fn fail_link(
        self: &Rc<Self>,
        link: &Link,
        queued: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        why: &str,
    ) {
        while queued.try_recv().is_ok() {}
        let waiting = std::mem::take(&mut *link.waiting.borrow_mut());
        for (_, (op, _)) in waiting {
            self.drive(Input::Peer { op, from: link.node, reply: failed(why) });
        }
    }

    /// Fires expired coordinator timers, and adopts a new ring when the
    /// node has one, until the shard stops.
    pub(crate) async fn tick(self: Rc<Self>) {
        let mut published = Duration::ZERO;
        while !self.stopping.is_set() {
            glommio::timer::sleep(TIMER_TICK).await;
            self.cluster.adopt_ring();
            let now = self.cluster.now();
            let due = {
                let mut timers = self.cluster.timers.borrow_mut();
                let tick = (now.as_nanos() / TIMER_TICK.as_nanos()) as u64;
                let later = timers.split_off(&(tick + 1));
                std::mem::replace(&mut *timers, later)
            };
            for op in due.into_values().flatten() {
                if self.cluster.coordinator.borrow().is_running(op) {
                    self.drive(Input::Timer { op });
                }
            }
            self.drive(Input::Tick);
            if now >= published + STATS_EVERY {
                published = now;
                self.publish_stats(now);
            }
        }
    }
}

impl Shard {
    fn publish_stats(&self, now: Duration) {
        let coordinator = self.cluster.coordinator.borrow();
        let counters = coordinator.stats();
        let stats = ShardStats {
            trees_building: self.replica.trees_building() as u64,
            anti_entropy_rounds: counters.anti_entropy_rounds,
            anti_entropy_last_round: counters
                .anti_entropy_last_round
                .map(|at| self.cluster.started + at),
            hinted_keys: self.replica.hinted_keys() as u64,
            coordinator: counters,
            down: coordinator.down(now),
            ring: coordinator.ring().cloned(),
            next: coordinator.next_ring().cloned(),
            ready_for: coordinator.ready_for(),
            data_partitions: self.replica.data_partitions().len() as u64,
        };
        if let Ok(mut shards) = self.cluster.stats.lock() {
            let index = self.id as usize;
            if shards.len() <= index {
                shards.resize(index + 1, ShardStats::default());
            }
            shards[index] = stats;
        }
    }
}

/// The frame a client would have sent for `request` (what a `Coordinate`
/// wraps).
fn client_frame(request: &ClientRequest) -> Vec<u8> {
    match request {
        ClientRequest::Get { key, r } => encode_message(0, &GetRequest { key: key.clone(), r: *r }),
        ClientRequest::Put { key, value: Some(value), context, w } => encode_message(
            0,
            &PutRequest {
                key: key.clone(),
                value: value.clone(),
                context: context.encode(),
                w: *w,
            },
        ),
        ClientRequest::Put { key, value: None, context, w } => {
            encode_message(0, &DeleteRequest { key: key.clone(), context: context.encode(), w: *w })
        }
    }
}

/// A peer's reply frame to a request of `kind`, for the coordinator.
fn peer_reply(kind: Kind, frame: &Frame, limits: DecodeLimits) -> PeerReply {
    if frame.kind() == Kind::ERROR && kind != Kind::COORDINATE {
        return match frame.decode::<ErrorReply>() {
            Ok(error) => PeerReply::Failed { code: error.error_code(), message: error.message },
            Err(error) => failed(&error.to_string()),
        };
    }
    let decoded = match kind {
        Kind::REPLICA_READ => frame
            .decode::<ReplicaReadReply>()
            .map_err(|error| error.to_string())
            .and_then(|reply| decode_set(&reply.set, limits))
            .map(PeerReply::Read),
        Kind::PING => frame.access::<Pong>().map(|_| PeerReply::Pong).map_err(|e| e.to_string()),
        Kind::REPLICA_WRITE | Kind::HINTED_WRITE => frame
            .access::<holdfast_net::message::ReplicaWriteReply>()
            .map(|_| PeerReply::Written)
            .map_err(|error| error.to_string()),
        Kind::COORDINATE => {
            Reply::decode(frame).map_err(|error| error.to_string()).and_then(coordinated)
        }
        Kind::SCAN => frame
            .decode::<ScanReply>()
            .map_err(|error| error.to_string())
            .and_then(|reply| scanned(reply, limits)),
        Kind::OFFER => frame
            .decode::<OfferReply>()
            .map(|reply| PeerReply::Have(reply.have))
            .map_err(|error| error.to_string()),
        Kind::TREE => frame
            .decode::<TreeReply>()
            .and_then(TreeReply::into_hashes)
            .map(PeerReply::Hashes)
            .map_err(|error| error.to_string()),
        Kind::LEAF => frame
            .decode::<LeafReply>()
            .and_then(|reply| reply.into_entries(KEY_BYTES_MAX))
            .map(PeerReply::Entries)
            .map_err(|error| error.to_string()),
        Kind::FETCH => frame
            .decode::<FetchReply>()
            .map_err(|error| error.to_string())
            .and_then(|reply| scanned(ScanReply { entries: reply.entries, more: false }, limits)),
        Kind::REPAIR_WRITE => frame
            .access::<RepairWriteReply>()
            .map(|_| PeerReply::Written)
            .map_err(|error| error.to_string()),
        Kind::REAP => frame
            .access::<ReapReply>()
            .map(|_| PeerReply::Written)
            .map_err(|error| error.to_string()),
        other => Err(format!("no reply expected for {other}")),
    };
    decoded.unwrap_or_else(|why| PeerReply::Failed {
        code: ErrorCode::Internal,
        message: format!("a peer's reply: {why}"),
    })
}

/// A page a peer scanned, its sets decoded (each must be non-empty).
fn scanned(reply: ScanReply, limits: DecodeLimits) -> Result<PeerReply, String> {
    let mut entries = Vec::with_capacity(reply.entries.len());
    let mut bytes = 0;
    for entry in reply.entries {
        bytes += entry.set.len() as u64;
        let set = decode_set(&entry.set, limits)?;
        if set.is_empty() {
            return Err("a scanned key without a set".into());
        }
        entries.push((entry.key, set));
    }
    Ok(PeerReply::Scanned { entries, more: reply.more, bytes })
}

/// The client reply a coordinating peer sent.
fn coordinated(reply: Reply) -> Result<PeerReply, String> {
    let context = |bytes: &[u8]| -> Result<VersionVector, String> {
        if bytes.is_empty() {
            return Ok(VersionVector::new());
        }
        VersionVector::decode(bytes).map_err(|error| error.to_string())
    };
    let reply = match reply {
        Reply::Get(get) => ClientReply::Get { values: get.values, context: context(&get.context)? },
        Reply::Put(put) => ClientReply::Put {
            context: context(&put.context)?,
            dot: decode_dot(&put.dot).ok_or("a put reply without a dot")?,
        },
        Reply::Delete(delete) => ClientReply::Put {
            context: context(&delete.context)?,
            dot: decode_dot(&delete.dot).ok_or("a delete reply without a dot")?,
        },
        Reply::Error(error) => {
            ClientReply::Error { code: error.error_code(), message: error.message }
        }
        other => return Err(format!("unexpected {}", other.kind())),
    };
    Ok(PeerReply::Coordinated(reply))
}

/// A set as a replica sent it: empty bytes for none.
pub(crate) fn decode_set(bytes: &[u8], limits: DecodeLimits) -> Result<SiblingSet, String> {
    if bytes.is_empty() {
        return Ok(SiblingSet::new());
    }
    SiblingSet::decode(bytes, limits).map_err(|error| error.to_string())
}

fn failed(why: &str) -> PeerReply {
    PeerReply::Failed { code: ErrorCode::Unavailable, message: why.into() }
}
