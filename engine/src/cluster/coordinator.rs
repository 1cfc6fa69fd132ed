//! The coordinator: a client's request, turned into quorum reads and writes
//! over a key's preference list.
//!
//! A pure state machine in the style of quinn-proto: [`Coordinator::handle`]
//! takes one [`Input`] (a client request, this node's own replica
//! answering, a peer answering, a timer) at a time `now` the driver gives
//! it, and appends [`Action`]s (reply to a client, apply an operation to
//! the local replica, send a peer a request, wake me at `at`). It reads no
//! clock, opens no socket, touches no file and iterates no hash map, so a
//! seeded simulator replays it exactly.
//!
//! # Writes (put and delete)
//!
//! A key's coordinator is a node in its preference list (the first N
//! distinct nodes walking the ring from its partition). A node outside the
//! list forwards the client's request to the first node in it (then the
//! next, if that one cannot be reached); the receiver coordinates or
//! refuses, never forwards again. The coordinator makes the new version on
//! its own replica first: read the key's set, issue a dot from its own
//! actor that supersedes exactly what the client's context covers, persist
//! (`LocalOp::Write`). Only then does it send the whole resulting set to
//! the other N-1 replicas, which merge it, durably, before acknowledging.
//! The client hears success after W acknowledgements, its own included;
//! never before, so nothing is half-acknowledged as success. When W can no
//! longer be reached (too many replicas failed) or the request timeout
//! passes first, the client gets an error that says how many acknowledged:
//! the write may still be present on those, which is what "unknown" means.
//!
//! # Reads
//!
//! The coordinator asks all N replicas (itself included) and answers once R
//! have answered, with the merge of their sets: dominated versions drop
//! out, concurrent ones remain siblings, and the context covers all of
//! them. It then waits a short, bounded time (`read_repair_wait`) for the
//! other replicas, and sends the merge of everything it heard to every
//! replica whose answer was not already that set (read repair).
//!
//! # What this does not guarantee
//!
//! - R + W > N makes a read that starts after a write was acknowledged
//!   return it (or a successor) only while the preference list is stable
//!   and no acknowledging replica lost the write; this issue's ring is
//!   static and replicas sync before acknowledging, and the simulator checks
//!   the property in fault-free runs.
//! - A node that is down is not yet skipped in favour of a fallback (that
//!   is sloppy quorum and hinted handoff, the next issue): a write fails
//!   when fewer than W of the key's own replicas take it.
//! - A cluster with fewer members than N keeps one replica per member; the
//!   default R and W shrink with it, but a request that asks for more than
//!   there are replicas is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use holdfast_net::message::ErrorCode;
use holdfast_net::ring::{NodeId, Ring};
use holdfast_net::{Dot, SiblingSet, VersionVector};

use super::ClusterOptions;

/// Names one coordinated operation; the driver hands it back with the
/// answers to the operation's actions. Never reused by one coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// Names whoever is waiting for a reply; chosen by the driver, echoed in
/// [`Action::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRef(pub u64);

/// What a client asked a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Read `key`; `r` replicas must answer (0: the cluster's default).
    Get { key: Vec<u8>, r: u8 },
    /// Write `value` (or a tombstone, for `None`) superseding what
    /// `context` covers; `w` replicas must acknowledge (0: the default).
    Put { key: Vec<u8>, value: Option<Vec<u8>>, context: VersionVector, w: u8 },
}

impl ClientRequest {
    /// The key the request is about.
    pub fn key(&self) -> &[u8] {
        match self {
            ClientRequest::Get { key, .. } | ClientRequest::Put { key, .. } => key,
        }
    }
}

/// The answer to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReply {
    /// A read: the live values of the merge of what R or more replicas
    /// hold, and the context that covers every version merged.
    Get { values: Vec<Vec<u8>>, context: VersionVector },
    /// A put or delete: the key's context after the write (on the
    /// coordinator), and the dot of the version it created.
    Put { context: VersionVector, dot: Dot },
    /// The request failed: why, and how far it got.
    Error { code: ErrorCode, message: String },
}

/// An operation on this node's own replica of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalOp {
    /// Read the replica's set.
    Read { partition: u32, key: Vec<u8> },
    /// Coordinate a write: a new version at this node's actor that
    /// supersedes what `context` covers, persisted before the result.
    Write { partition: u32, key: Vec<u8>, context: VersionVector, value: Option<Vec<u8>> },
    /// Merge `set` into the replica's set, persisted before the result.
    Merge { partition: u32, key: Vec<u8>, set: SiblingSet },
}

/// How a [`LocalOp`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalResult {
    /// `Read`: the set (empty if the key was never written).
    Read(SiblingSet),
    /// `Write`: the set after the write and the new version's dot.
    Written { set: SiblingSet, dot: Dot },
    /// `Merge`: done and durable.
    Merged,
    /// Any of them failed.
    Failed { code: ErrorCode, message: String },
}

/// A request to a peer node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    /// Read the peer's replica of a key.
    Read { partition: u32, key: Vec<u8> },
    /// Merge `set` into the peer's replica of a key, durably.
    Write { partition: u32, key: Vec<u8>, set: SiblingSet },
    /// Coordinate this client request (the peer is in its preference list).
    Coordinate(ClientRequest),
}

/// A peer's answer, or the driver's news that none will come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerReply {
    /// To `Read`.
    Read(SiblingSet),
    /// To `Write`.
    Written,
    /// To `Coordinate`: the reply for the client.
    Coordinated(ClientReply),
    /// The peer refused, or could not be reached, or the connection broke.
    Failed { code: ErrorCode, message: String },
}

/// What happens next, for the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A client's request. `forwarded` when another node sent it here to be
    /// coordinated: such a request is never forwarded again.
    Client { client: ClientRef, request: ClientRequest, forwarded: bool },
    /// This node's replica finished a [`LocalOp`].
    Local { op: OpId, result: LocalResult },
    /// A peer answered a [`PeerRequest`] (or the driver gave up on it).
    Peer { op: OpId, from: NodeId, reply: PeerReply },
    /// A timer set by [`Action::Timer`] fired.
    Timer { op: OpId },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer a client.
    Reply { client: ClientRef, reply: ClientReply },
    /// Run an operation on this node's replica, then hand back
    /// [`Input::Local`] with the same `op`.
    Local { op: OpId, local: LocalOp },
    /// Send `request` to node `to`, then hand back [`Input::Peer`] with the
    /// same `op` (a [`PeerReply::Failed`] if it cannot be delivered or the
    /// peer refuses). For read repair the answer is not needed; handing it
    /// back is harmless.
    Send { op: OpId, to: NodeId, request: PeerRequest },
    /// Hand back [`Input::Timer`] for `op` once `now >= at`.
    Timer { op: OpId, at: Duration },
}

/// Counters an operator (and `holdfast status`) can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub reads: u64,
    pub writes: u64,
    pub forwarded: u64,
    pub timeouts: u64,
    pub unavailable: u64,
    /// Replicas sent a repaired set after a read.
    pub read_repairs: u64,
}

/// One node's (one shard's) coordinator.
#[derive(Debug)]
pub struct Coordinator {
    node: NodeId,
    options: ClusterOptions,
    ring: Option<Arc<Ring>>,
    operations: BTreeMap<OpId, Operation>,
    next_op: u64,
    stats: CoordinatorStats,
}

#[derive(Debug)]
enum Operation {
    Read(ReadOp),
    Write(WriteOp),
    Forward(ForwardOp),
    /// Read repair sent; answers are ignored.
    Repair,
}

#[derive(Debug)]
struct ReadOp {
    client: ClientRef,
    partition: u32,
    key: Vec<u8>,
    r: usize,
    replicas: Vec<NodeId>,
    /// Per replica in `replicas` order: its set once it answered.
    answers: Vec<Option<SiblingSet>>,
    failed: usize,
    replied: bool,
    deadline: Duration,
}

#[derive(Debug)]
struct WriteOp {
    client: ClientRef,
    partition: u32,
    key: Vec<u8>,
    w: usize,
    replicas: Vec<NodeId>,
    /// The coordinator's set after its local write, once made.
    written: Option<(SiblingSet, Dot)>,
    acks: usize,
    failed: usize,
    replied: bool,
    deadline: Duration,
}

#[derive(Debug)]
struct ForwardOp {
    client: ClientRef,
    request: ClientRequest,
    /// The replicas not yet tried, in preference order.
    untried: Vec<NodeId>,
    deadline: Duration,
}

impl Coordinator {
    /// A coordinator for node `node`; it refuses requests until it has a
    /// ring ([`set_ring`](Self::set_ring)).
    pub fn new(node: NodeId, options: ClusterOptions) -> Coordinator {
        assert!(options.validate().is_ok(), "invalid cluster options: {options:?}");
        Coordinator {
            node,
            options,
            ring: None,
            operations: BTreeMap::new(),
            next_op: 1,
            stats: CoordinatorStats::default(),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    pub fn ring(&self) -> Option<&Arc<Ring>> {
        self.ring.as_ref()
    }

    /// Routes requests by `ring` from now on. Operations in flight keep the
    /// replicas they started with.
    pub fn set_ring(&mut self, ring: Arc<Ring>) {
        self.ring = Some(ring);
    }

    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// Operations in flight (including read repairs awaiting answers).
    pub fn in_flight(&self) -> usize {
        self.operations.len()
    }

    /// The replicas of `partition` under the current ring: its preference
    /// list of N nodes (fewer if the ring has fewer members).
    pub fn replicas(&self, partition: u32) -> Vec<NodeId> {
        match &self.ring {
            Some(ring) => ring.preference_list(partition, usize::from(self.options.n)),
            None => Vec::new(),
        }
    }

    /// Takes one input at time `now` and appends what to do to `out`.
    pub fn handle(&mut self, now: Duration, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Client { client, request, forwarded } => {
                self.on_client(now, client, request, forwarded, out);
            }
            Input::Local { op, result } => self.on_local(now, op, result, out),
            Input::Peer { op, from, reply } => self.on_peer(now, op, from, reply, out),
            Input::Timer { op } => self.on_timer(now, op, out),
        }
    }

    fn next_op(&mut self) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        op
    }

    fn on_client(
        &mut self,
        now: Duration,
        client: ClientRef,
        request: ClientRequest,
        forwarded: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(ring) = self.ring.clone() else {
            let message = "this node has not formed its ring yet (it is waiting for its seeds)";
            return refuse(out, client, ErrorCode::Unavailable, message);
        };
        let partition = ring.partition_of(request.key());
        let replicas = ring.preference_list(partition, usize::from(self.options.n));
        assert!(!replicas.is_empty(), "a ring has members");
        if !replicas.contains(&self.node) {
            if forwarded {
                let message = format!(
                    "node {:016x} is not a replica of this key under ring version {}",
                    self.node,
                    ring.version()
                );
                return refuse(out, client, ErrorCode::Unavailable, &message);
            }
            return self.forward(now, client, request, replicas, out);
        }
        match request {
            ClientRequest::Get { key, r } => {
                let Some(r) = quorum(out, client, "r", r, self.options.r, replicas.len()) else {
                    return;
                };
                self.stats.reads += 1;
                let op = self.next_op();
                let deadline = now + self.options.request_timeout;
                for &replica in &replicas {
                    if replica == self.node {
                        let local = LocalOp::Read { partition, key: key.clone() };
                        out.push(Action::Local { op, local });
                    } else {
                        let request = PeerRequest::Read { partition, key: key.clone() };
                        out.push(Action::Send { op, to: replica, request });
                    }
                }
                out.push(Action::Timer { op, at: deadline });
                let answers = vec![None; replicas.len()];
                let read = ReadOp {
                    client,
                    partition,
                    key,
                    r,
                    replicas,
                    answers,
                    failed: 0,
                    replied: false,
                    deadline,
                };
                self.operations.insert(op, Operation::Read(read));
            }
            ClientRequest::Put { key, value, context, w } => {
                let Some(w) = quorum(out, client, "w", w, self.options.w, replicas.len()) else {
                    return;
                };
                self.stats.writes += 1;
                let op = self.next_op();
                let deadline = now + self.options.request_timeout;
                let local = LocalOp::Write { partition, key: key.clone(), context, value };
                out.push(Action::Local { op, local });
                out.push(Action::Timer { op, at: deadline });
                let write = WriteOp {
                    client,
                    partition,
                    key,
                    w,
                    replicas,
                    written: None,
                    acks: 0,
                    failed: 0,
                    replied: false,
                    deadline,
                };
                self.operations.insert(op, Operation::Write(write));
            }
        }
    }

    fn forward(
        &mut self,
        now: Duration,
        client: ClientRef,
        request: ClientRequest,
        replicas: Vec<NodeId>,
        out: &mut Vec<Action>,
    ) {
        self.stats.forwarded += 1;
        let op = self.next_op();
        let mut untried = replicas;
        // Tried in preference order: the list's head is the key's usual
        // coordinator.
        untried.reverse();
        let deadline = now + self.options.request_timeout;
        let Some(to) = untried.pop() else { unreachable!("a ring has members") };
        out.push(Action::Send { op, to, request: PeerRequest::Coordinate(request.clone()) });
        out.push(Action::Timer { op, at: deadline });
        let forward = ForwardOp { client, request, untried, deadline };
        self.operations.insert(op, Operation::Forward(forward));
    }

    fn on_local(&mut self, now: Duration, op: OpId, result: LocalResult, out: &mut Vec<Action>) {
        let node = self.node;
        match self.operations.get_mut(&op) {
            Some(Operation::Read(read)) => {
                let index = read.index_of(node);
                match result {
                    LocalResult::Read(set) => read.answers[index] = Some(set),
                    LocalResult::Failed { .. } => read.failed += 1,
                    other => unreachable!("a read's local op answered {other:?}"),
                }
                self.progress_read(now, op, out);
            }
            Some(Operation::Write(write)) => {
                assert!(write.written.is_none(), "one local write per write op");
                match result {
                    LocalResult::Written { set, dot } => {
                        write.acks += 1;
                        for &replica in &write.replicas {
                            if replica != node {
                                let request = PeerRequest::Write {
                                    partition: write.partition,
                                    key: write.key.clone(),
                                    set: set.clone(),
                                };
                                out.push(Action::Send { op, to: replica, request });
                            }
                        }
                        write.written = Some((set, dot));
                        self.progress_write(op, out);
                    }
                    LocalResult::Failed { code, message } => {
                        // Nothing was issued: the client's write did not
                        // happen anywhere.
                        let client = write.client;
                        self.operations.remove(&op);
                        refuse(out, client, code, &message);
                    }
                    other => unreachable!("a write's local op answered {other:?}"),
                }
            }
            // A read repair of this node's own replica, or an operation
            // that already ended.
            Some(Operation::Repair) | Some(Operation::Forward(_)) | None => {}
        }
    }

    fn on_peer(
        &mut self,
        now: Duration,
        op: OpId,
        from: NodeId,
        reply: PeerReply,
        out: &mut Vec<Action>,
    ) {
        match self.operations.get_mut(&op) {
            Some(Operation::Read(read)) => {
                let Some(index) = read.replicas.iter().position(|&replica| replica == from) else {
                    return;
                };
                if read.answers[index].is_some() {
                    return; // A duplicate.
                }
                match reply {
                    PeerReply::Read(set) => read.answers[index] = Some(set),
                    _ => read.failed += 1,
                }
                self.progress_read(now, op, out);
            }
            Some(Operation::Write(write)) => {
                if !write.replicas.contains(&from) || from == self.node {
                    return;
                }
                match reply {
                    PeerReply::Written => write.acks += 1,
                    _ => write.failed += 1,
                }
                self.progress_write(op, out);
            }
            Some(Operation::Forward(forward)) => match reply {
                PeerReply::Coordinated(reply) => {
                    let client = forward.client;
                    self.operations.remove(&op);
                    out.push(Action::Reply { client, reply });
                }
                _ => match forward.untried.pop() {
                    Some(to) => {
                        let request = PeerRequest::Coordinate(forward.request.clone());
                        out.push(Action::Send { op, to, request });
                    }
                    None => {
                        let client = forward.client;
                        self.operations.remove(&op);
                        self.stats.unavailable += 1;
                        let message = "no replica of the key could be reached to coordinate it";
                        refuse(out, client, ErrorCode::Unavailable, message);
                    }
                },
            },
            Some(Operation::Repair) | None => {}
        }
    }

    fn on_timer(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(operation) = self.operations.get_mut(&op) else { return };
        match operation {
            Operation::Read(read) => {
                if now < read.deadline {
                    return; // An earlier timer of this op.
                }
                if !read.replied {
                    let (answered, r, n) = (read.answered(), read.r, read.replicas.len());
                    let client = read.client;
                    self.stats.timeouts += 1;
                    let message = format!(
                        "{answered} of {n} replicas answered in time, and R={r} are needed"
                    );
                    refuse(out, client, ErrorCode::Timeout, &message);
                    if let Some(Operation::Read(read)) = self.operations.get_mut(&op) {
                        read.replied = true;
                    }
                }
                self.finish_read(op, out);
            }
            Operation::Write(write) => {
                if now < write.deadline {
                    return;
                }
                if !write.replied {
                    let (acks, w, n) = (write.acks, write.w, write.replicas.len());
                    let client = write.client;
                    self.stats.timeouts += 1;
                    let message = format!(
                        "{acks} of {n} replicas acknowledged in time, and W={w} are needed; \
                         the write may be present on those that did"
                    );
                    refuse(out, client, ErrorCode::Timeout, &message);
                }
                self.operations.remove(&op);
            }
            Operation::Forward(forward) => {
                if now < forward.deadline {
                    return;
                }
                let client = forward.client;
                self.operations.remove(&op);
                self.stats.timeouts += 1;
                let message = "the key's coordinator did not answer in time; \
                               a write may or may not have been applied";
                refuse(out, client, ErrorCode::Timeout, message);
            }
            Operation::Repair => {
                self.operations.remove(&op);
            }
        }
    }

    fn progress_read(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Read(read)) = self.operations.get_mut(&op) else {
            unreachable!("progress of a read that is not one")
        };
        let (answered, n) = (read.answered(), read.replicas.len());
        let all_in = answered + read.failed == n;
        if !read.replied {
            if answered >= read.r {
                read.replied = true;
                let merged = read.merged();
                let values = merged.values().map(<[u8]>::to_vec).collect();
                let reply = ClientReply::Get { values, context: merged.context() };
                out.push(Action::Reply { client: read.client, reply });
                if !all_in {
                    // Wait a little for the rest, to repair them too.
                    read.deadline = now + self.options.read_repair_wait;
                    out.push(Action::Timer { op, at: read.deadline });
                }
            } else if n - read.failed < read.r {
                // Even if every replica still out answers, R is out of reach.
                let (r, failed, client) = (read.r, read.failed, read.client);
                read.replied = true;
                self.stats.unavailable += 1;
                let message = format!(
                    "{answered} of {n} replicas answered and {failed} failed, \
                     so R={r} cannot be met"
                );
                refuse(out, client, ErrorCode::Unavailable, &message);
            }
        }
        if all_in {
            self.finish_read(op, out);
        }
    }

    /// Ends a read that has replied: sends the merge of every answer to
    /// each replica that answered something else.
    fn finish_read(&mut self, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Read(read)) = self.operations.remove(&op) else {
            unreachable!("finishing a read that is not one")
        };
        assert!(read.replied, "a read ends only after its client was answered");
        let merged = read.merged();
        if merged.is_empty() {
            return;
        }
        let repair = self.next_op();
        let mut repaired = false;
        for (replica, answer) in read.replicas.iter().zip(&read.answers) {
            let Some(set) = answer else { continue };
            if *set == merged {
                continue;
            }
            repaired = true;
            self.stats.read_repairs += 1;
            let (partition, key) = (read.partition, read.key.clone());
            if *replica == self.node {
                let local = LocalOp::Merge { partition, key, set: merged.clone() };
                out.push(Action::Local { op: repair, local });
            } else {
                let request = PeerRequest::Write { partition, key, set: merged.clone() };
                out.push(Action::Send { op: repair, to: *replica, request });
            }
        }
        if repaired {
            // Kept until its timer so that its answers find it and are
            // ignored; a bounded number are ever in flight.
            let at = read.deadline + self.options.request_timeout;
            out.push(Action::Timer { op: repair, at });
            self.operations.insert(repair, Operation::Repair);
        }
    }

    fn progress_write(&mut self, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Write(write)) = self.operations.get_mut(&op) else {
            unreachable!("progress of a write that is not one")
        };
        let n = write.replicas.len();
        let Some((set, dot)) = &write.written else { return };
        if !write.replied {
            if write.acks >= write.w {
                write.replied = true;
                let reply = ClientReply::Put { context: set.context(), dot: *dot };
                out.push(Action::Reply { client: write.client, reply });
            } else if n - write.failed < write.w {
                // Even if every replica still out acknowledges, W is out of reach.
                let (acks, failed, w, client) = (write.acks, write.failed, write.w, write.client);
                write.replied = true;
                self.stats.unavailable += 1;
                let message = format!(
                    "{acks} of {n} replicas acknowledged and {failed} failed, so W={w} \
                     cannot be met; the write may be present on those that acknowledged"
                );
                refuse(out, client, ErrorCode::Unavailable, &message);
            }
        }
        if write.acks + write.failed == n {
            self.operations.remove(&op);
        }
    }
}

impl ReadOp {
    fn index_of(&self, node: NodeId) -> usize {
        self.replicas.iter().position(|&replica| replica == node).expect("the node is a replica")
    }

    fn answered(&self) -> usize {
        self.answers.iter().filter(|answer| answer.is_some()).count()
    }

    fn merged(&self) -> SiblingSet {
        let mut merged = SiblingSet::new();
        for set in self.answers.iter().flatten() {
            merged.merge(set);
        }
        merged
    }
}

/// The quorum a request needs: its own (if it asked) or the default, both
/// at most the number of replicas. `None` after refusing the client.
fn quorum(
    out: &mut Vec<Action>,
    client: ClientRef,
    name: &str,
    asked: u8,
    default: u8,
    replicas: usize,
) -> Option<usize> {
    if asked == 0 {
        // The default shrinks with a cluster smaller than N.
        return Some(usize::from(default).min(replicas));
    }
    if usize::from(asked) > replicas {
        let message =
            format!("{name}={asked} asked, but the key has {replicas} replicas in this cluster");
        refuse(out, client, ErrorCode::BadRequest, &message);
        return None;
    }
    Some(usize::from(asked))
}

fn refuse(out: &mut Vec<Action>, client: ClientRef, code: ErrorCode, message: &str) {
    out.push(Action::Reply { client, reply: ClientReply::Error { code, message: message.into() } });
}
