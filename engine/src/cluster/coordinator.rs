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
//! next, if that one cannot be reached); the receiver coordinates, never
//! forwards again (if its own ring, during a membership change, says it is
//! not a replica, it stands in for one, as a fallback would). The
//! coordinator makes the new version on
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
//! # Sloppy quorum and hinted handoff
//!
//! Down is judged locally: heartbeats ([`PeerRequest::Ping`], every
//! `heartbeat_interval` to every member) feed a phi-accrual
//! [`Detector`], and a refused or broken connection marks a peer down at
//! once. A request is planned over the ring walk from the key's partition:
//! each owner believed down is replaced by the next node along the ring
//! believed up (a fallback), which is sent the write with a hint naming
//! the owner ([`PeerRequest::Write`] with `hint`). During the request, an
//! asked node that fails, or has not answered after `hint_after`, is
//! stood in for by the next spare node, even once W is met, so the key
//! keeps N copies and the owner its hint. An acknowledgement from a
//! fallback counts toward W once it is durable: a write fails only when
//! fewer than W nodes in the whole cluster could take it, and the error
//! says so. A node that is asked to coordinate but cannot reach any owner
//! (every forward failed) coordinates itself, standing in for an owner.
//!
//! The fallback keeps the set in its own store (so it can serve reads and
//! never reissue a dot) and a durable hint per owner
//! ([`Replica`](crate::replica::Replica)'s hint space). On every tick the
//! coordinator runs hint delivery: a pass lists the hints a page at a time
//! (resuming where it stopped), sends each key's current set to its owner
//! if the owner is believed up, and drops the hint once the owner has made
//! it durable, unless a newer hinted write changed it meanwhile. At most
//! `handoff_in_flight` deliveries run at once and `handoff_keys_per_second`
//! start per second; hints for owners that are down or gone wait for a
//! later pass and are counted.
//!
//! # Membership changes
//!
//! Requests route by the current ring. While a pending ring is gossiped,
//! each shard pulls the partitions its node gains in it, and every shard
//! sweeps the partitions it holds but no longer replicates to their owners
//! ([`transfer`] explains both); ownership switches when gossip installs
//! the pending ring, after every gaining node pulled.
//!
//! # What this does not guarantee
//!
//! - R + W > N makes a read that starts after a write was acknowledged
//!   return it (or a successor) only while the preference list is stable,
//!   every owner is up, and no acknowledging replica lost the write: a
//!   write taken by fallbacks is read from the owners only after its hints
//!   arrive (read repair and anti-entropy close the rest). The simulator
//!   checks the property in fault-free runs.
//! - A fallback's copy of a key outlives its hint until the next sweep
//!   ([`transfer`]) finds every owner holding it; a hint whose owner left
//!   the cluster is dropped, and the key reaches its current owners through
//!   that sweep (or, if the fallback now owns it, through read repair).
//! - A cluster with fewer members than N keeps one replica per member; the
//!   default R and W shrink with it, but a request that asks for more than
//!   there are replicas is refused.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use holdfast_net::message::ErrorCode;
use holdfast_net::ring::{NodeId, Ring};
use holdfast_net::{Dot, SiblingSet, VersionVector};

use super::ClusterOptions;
use super::detector::Detector;

mod antientropy;
mod transfer;

pub use antientropy::RepairReport;

/// Names one coordinated operation; the driver hands it back with the
/// answers to the operation's actions. Never reused by one coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl OpId {
    /// The op of every heartbeat: its answers feed the failure detector.
    pub const HEARTBEAT: OpId = OpId(0);
}

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

/// A write a fallback node holds for a key's owner, to hand over when the
/// owner can be reached. `token` names the state of the key the hint was
/// last recorded for: a hint is dropped after delivery only if no newer
/// hinted write changed it meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hint {
    pub partition: u32,
    pub key: Vec<u8>,
    pub owner: NodeId,
    pub token: u64,
}

/// An operation on this node's own replica of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalOp {
    /// Read the replica's set.
    Read { partition: u32, key: Vec<u8> },
    /// Coordinate a write: a new version at this node's actor that
    /// supersedes what `context` covers, persisted before the result. With
    /// a `hint`, this node stands in for that owner and records a hint.
    Write {
        partition: u32,
        key: Vec<u8>,
        context: VersionVector,
        value: Option<Vec<u8>>,
        hint: Option<NodeId>,
    },
    /// Merge `set` into the replica's set, persisted before the result;
    /// with a `hint`, also record a hint for that owner, durably.
    Merge { partition: u32, key: Vec<u8>, set: SiblingSet, hint: Option<NodeId> },
    /// List up to `limit` hints, in a stable order, after `after` (a
    /// partition and key), to resume a pass where it stopped.
    Hints { after: Option<(u32, Vec<u8>)>, limit: usize },
    /// Drop a delivered hint, unless its token changed since.
    DropHint(Hint),
    /// Up to `keys` keys of `partition` after `after`, with their sets
    /// (stopping early past `bytes` of sets): a page of a pull or a sweep.
    Scan { partition: u32, after: Option<Vec<u8>>, keys: usize, bytes: usize },
    /// Merge a pulled page, then record the pull's progress, durably.
    Pulled { partition: u32, entries: Vec<(Vec<u8>, SiblingSet)>, progress: Progress },
    /// Which of these keys the replica holds with exactly the set of the
    /// token (see [`set_token`]).
    Compare { partition: u32, keys: Vec<(Vec<u8>, u64)> },
    /// Remove these keys, each only if its set's token is unchanged (after
    /// moving the partition's actor epoch on if they mention its actor, so
    /// that later writes there are made by a fresh actor).
    Remove { partition: u32, keys: Vec<(Vec<u8>, u64)> },
    /// The pull progress records.
    Progress,
    /// The partitions the replica holds keys of (not hints), ascending.
    Partitions,
    /// The hashes of nodes `indices` at `level` of the partition's Merkle
    /// tree (0 is the root, [`DEPTH`](crate::cluster::merkle::DEPTH) the leaves): anti-entropy.
    TreeHashes { partition: u32, level: u8, indices: Vec<u16> },
    /// The keys in these leaves of the partition's tree, with their entry
    /// hashes ([`entry_hash`](crate::cluster::merkle::entry_hash)), ascending by key.
    LeafEntries { partition: u32, leaves: Vec<u16> },
    /// The sets of these keys (those present), stopping past `bytes`.
    Fetch { partition: u32, keys: Vec<Vec<u8>>, bytes: usize },
    /// Merge each set into its key's, durably: anti-entropy's repair.
    MergeAll { partition: u32, entries: Vec<(Vec<u8>, SiblingSet)> },
    /// Up to `limit` keys of the partition whose sets are only tombstones,
    /// with their tokens ([`set_token`]), ascending by key.
    Tombstones { partition: u32, limit: usize },
    /// Reap these tombstones: remove each key whose set still has its
    /// token and is only tombstones (after raising the partition's counter
    /// floor above the counters this node issued for it).
    Reap { partition: u32, keys: Vec<(Vec<u8>, u64)> },
}

impl LocalOp {
    /// Whether this is anti-entropy's (background work a driver may run
    /// behind everything else).
    pub fn is_anti_entropy(&self) -> bool {
        matches!(
            self,
            LocalOp::TreeHashes { .. }
                | LocalOp::LeafEntries { .. }
                | LocalOp::Fetch { .. }
                | LocalOp::MergeAll { .. }
                | LocalOp::Tombstones { .. }
                | LocalOp::Reap { .. }
        )
    }
}

/// How far this node got pulling a partition it gains in a pending ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub partition: u32,
    /// The version of the current ring the pull started under: progress
    /// made under another ring is stale.
    pub base: u64,
    /// The last key merged, to resume after.
    pub cursor: Option<Vec<u8>>,
    /// Every key the source held when the pull reached it is merged.
    pub done: bool,
}

/// A set's token: a stable hash of its canonical bytes, so two replicas
/// hold the same set exactly when their tokens agree (up to 2^-64).
pub fn set_token(set: &SiblingSet) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&set.encode())
}

/// How a [`LocalOp`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalResult {
    /// `Read`: the set (empty if the key was never written).
    Read(SiblingSet),
    /// `Write`: the set after the write and the new version's dot.
    Written { set: SiblingSet, dot: Dot },
    /// `Merge`, `DropHint`, `Pulled` or `Remove`: done and durable.
    Merged,
    /// `Hints`: the hints listed.
    Hints(Vec<Hint>),
    /// `Scan`: the page, whether keys follow it, and the bytes of its sets
    /// as stored. Also `Fetch` (the keys found) and `MergeAll` (each key's
    /// set after the merge).
    Scanned { entries: Vec<(Vec<u8>, SiblingSet)>, more: bool, bytes: u64 },
    /// `Compare`: per key asked, whether the replica holds that very set.
    Have(Vec<bool>),
    /// `Progress`: the records.
    Progress(Vec<Progress>),
    /// `Partitions`: the partitions.
    Partitions(Vec<u32>),
    /// `TreeHashes`: one hash per index asked, or `None` while the tree is
    /// not comparable yet (being built after a restart).
    Hashes(Option<Vec<u64>>),
    /// `LeafEntries`: `(key, entry hash)`, ascending by key; `None` while
    /// the tree is not comparable yet. Also `Tombstones`: `(key, token)`.
    Entries(Option<Vec<(Vec<u8>, u64)>>),
    /// Any of them failed.
    Failed { code: ErrorCode, message: String },
}

/// A request to a peer node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    /// Read the peer's replica of a key.
    Read { partition: u32, key: Vec<u8> },
    /// Merge `set` into the peer's replica of a key, durably; with a
    /// `hint`, the peer is a fallback holding it for that owner.
    Write { partition: u32, key: Vec<u8>, set: SiblingSet, hint: Option<NodeId> },
    /// Coordinate this client request (the peer is in its preference list).
    Coordinate(ClientRequest),
    /// A heartbeat, for the failure detector.
    Ping,
    /// A page of the peer's keys of a partition, with their sets (a pull).
    Scan { partition: u32, after: Option<Vec<u8>>, keys: usize, bytes: usize },
    /// Which of these keys the peer holds with exactly these tokens' sets
    /// (a sweep offering a partition this node no longer replicates). The
    /// peer refuses unless it replicates the partition, now or in the
    /// pending ring.
    Offer { partition: u32, keys: Vec<(Vec<u8>, u64)> },
    /// Anti-entropy: hashes of the peer's tree of a partition.
    TreeHashes { partition: u32, level: u8, indices: Vec<u16> },
    /// Anti-entropy: the keys and entry hashes in leaves of its tree.
    LeafEntries { partition: u32, leaves: Vec<u16> },
    /// Anti-entropy: the peer's sets of these keys.
    Fetch { partition: u32, keys: Vec<Vec<u8>>, bytes: usize },
    /// Anti-entropy: merge these sets, durably (repair).
    Repair { partition: u32, entries: Vec<(Vec<u8>, SiblingSet)> },
    /// Anti-entropy: reap these tombstones, each only if its set still has
    /// the token (every replica was just found holding it).
    Reap { partition: u32, keys: Vec<(Vec<u8>, u64)> },
}

impl PeerRequest {
    /// Whether this is anti-entropy's (background work).
    pub fn is_anti_entropy(&self) -> bool {
        matches!(
            self,
            PeerRequest::TreeHashes { .. }
                | PeerRequest::LeafEntries { .. }
                | PeerRequest::Fetch { .. }
                | PeerRequest::Repair { .. }
                | PeerRequest::Reap { .. }
        )
    }

    /// Whether the peer must replicate the request's partition (by its own
    /// current or pending ring) to answer it: transfers and anti-entropy.
    /// Two nodes whose rings differ must never hand a key to each other
    /// and both drop it, nor compare trees of a partition one does not
    /// keep.
    pub fn partition_checked(&self) -> Option<u32> {
        match self {
            PeerRequest::Offer { partition, .. }
            | PeerRequest::TreeHashes { partition, .. }
            | PeerRequest::LeafEntries { partition, .. }
            | PeerRequest::Fetch { partition, .. }
            | PeerRequest::Repair { partition, .. }
            | PeerRequest::Reap { partition, .. } => Some(*partition),
            _ => None,
        }
    }

    /// The operation a peer's replica runs to answer this request; `None`
    /// for the requests a driver answers itself (`Coordinate`, `Ping`).
    pub fn into_local(self) -> Option<LocalOp> {
        Some(match self {
            PeerRequest::Read { partition, key } => LocalOp::Read { partition, key },
            PeerRequest::Write { partition, key, set, hint } => {
                LocalOp::Merge { partition, key, set, hint }
            }
            PeerRequest::Scan { partition, after, keys, bytes } => {
                LocalOp::Scan { partition, after, keys, bytes }
            }
            PeerRequest::Offer { partition, keys } => LocalOp::Compare { partition, keys },
            PeerRequest::TreeHashes { partition, level, indices } => {
                LocalOp::TreeHashes { partition, level, indices }
            }
            PeerRequest::LeafEntries { partition, leaves } => {
                LocalOp::LeafEntries { partition, leaves }
            }
            PeerRequest::Fetch { partition, keys, bytes } => {
                LocalOp::Fetch { partition, keys, bytes }
            }
            PeerRequest::Repair { partition, entries } => LocalOp::MergeAll { partition, entries },
            PeerRequest::Reap { partition, keys } => LocalOp::Reap { partition, keys },
            PeerRequest::Coordinate(_) | PeerRequest::Ping => return None,
        })
    }
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
    /// To `Ping`.
    Pong,
    /// To `Scan` (`bytes`: of the sets, encoded).
    Scanned { entries: Vec<(Vec<u8>, SiblingSet)>, more: bool, bytes: u64 },
    /// To `Offer`.
    Have(Vec<bool>),
    /// To `TreeHashes` (`None`: the peer's tree is not comparable yet).
    Hashes(Option<Vec<u64>>),
    /// To `LeafEntries` (`None`: not comparable yet).
    Entries(Option<Vec<(Vec<u8>, u64)>>),
    /// The peer refused, or could not be reached, or the connection broke
    /// (`Unavailable` is reserved for the last two: the peer is suspected).
    Failed { code: ErrorCode, message: String },
}

impl PeerReply {
    /// The reply for the peer that sent a request, from how its
    /// [`PeerRequest::into_local`] ended.
    pub fn from_local(result: LocalResult) -> PeerReply {
        match result {
            LocalResult::Read(set) => PeerReply::Read(set),
            LocalResult::Merged => PeerReply::Written,
            LocalResult::Scanned { entries, more, bytes } => {
                PeerReply::Scanned { entries, more, bytes }
            }
            LocalResult::Have(have) => PeerReply::Have(have),
            LocalResult::Hashes(hashes) => PeerReply::Hashes(hashes),
            LocalResult::Entries(entries) => PeerReply::Entries(entries),
            LocalResult::Failed { code, message } => PeerReply::Failed { code, message },
            other => PeerReply::Failed {
                code: ErrorCode::Internal,
                message: format!("no peer request ends as {other:?}"),
            },
        }
    }
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
    /// Time passed: send heartbeats and deliver hints when due. Drivers
    /// tick every few milliseconds (and at least every tenth of the
    /// heartbeat interval).
    Tick,
    /// An operator asks for anti-entropy now (`holdfast admin repair`):
    /// exchange `partitions` (every partition of this shard this node
    /// replicates, for `None`) with each of their other replicas, then
    /// answer with [`Action::Repaired`] and the same `ticket`.
    Repair { ticket: u64, partitions: Option<Vec<u32>> },
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
    /// The repair asked for by [`Input::Repair`] with `ticket` is done.
    Repaired { ticket: u64, report: RepairReport },
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
    /// Writes sent to a fallback node in place of an owner.
    pub hinted_writes: u64,
    /// Hints handed to their owner and dropped.
    pub hints_delivered: u64,
    /// Hints the last full pass found and could not deliver (the owner
    /// down or gone from the ring).
    pub hints_waiting: u64,
    /// Partitions this shard gains in the pending ring and has not pulled
    /// yet (a gauge).
    pub transfers_waiting: u64,
    /// Partitions pulled.
    pub partitions_pulled: u64,
    /// Keys and bytes (encoded sets) pulled from other nodes.
    pub keys_pulled: u64,
    pub bytes_pulled: u64,
    /// Keys of partitions this node no longer replicates sent to their
    /// owners (after an offer showed they lacked them), and bytes sent.
    pub keys_handed_off: u64,
    pub bytes_handed_off: u64,
    /// Keys removed after every owner held them.
    pub keys_removed: u64,
    /// Partitions the last sweep pass found held here for others and could
    /// not hand off (an owner down or refusing): a gauge.
    pub partitions_waiting: u64,
    /// Anti-entropy: what its exchanges compared and repaired, in total.
    pub anti_entropy: RepairReport,
    /// Anti-entropy rounds completed: every (partition, peer) pair of this
    /// shard compared once, each successfully.
    pub anti_entropy_rounds: u64,
    /// When the last such round ended (the driver's clock).
    pub anti_entropy_last_round: Option<Duration>,
    /// Tombstones reaped (here and on the other replicas) once every
    /// replica held them.
    pub tombstones_reaped: u64,
}

impl std::ops::AddAssign for CoordinatorStats {
    fn add_assign(&mut self, other: CoordinatorStats) {
        let CoordinatorStats {
            reads,
            writes,
            forwarded,
            timeouts,
            unavailable,
            read_repairs,
            hinted_writes,
            hints_delivered,
            hints_waiting,
            transfers_waiting,
            partitions_pulled,
            keys_pulled,
            bytes_pulled,
            keys_handed_off,
            bytes_handed_off,
            keys_removed,
            partitions_waiting,
            anti_entropy,
            anti_entropy_rounds,
            anti_entropy_last_round,
            tombstones_reaped,
        } = other;
        self.reads += reads;
        self.writes += writes;
        self.forwarded += forwarded;
        self.timeouts += timeouts;
        self.unavailable += unavailable;
        self.read_repairs += read_repairs;
        self.hinted_writes += hinted_writes;
        self.hints_delivered += hints_delivered;
        self.hints_waiting += hints_waiting;
        self.transfers_waiting += transfers_waiting;
        self.partitions_pulled += partitions_pulled;
        self.keys_pulled += keys_pulled;
        self.bytes_pulled += bytes_pulled;
        self.keys_handed_off += keys_handed_off;
        self.bytes_handed_off += bytes_handed_off;
        self.keys_removed += keys_removed;
        self.partitions_waiting += partitions_waiting;
        self.anti_entropy += anti_entropy;
        self.tombstones_reaped += tombstones_reaped;
        // Not sums: a node's rounds are its slowest shard's (the driver
        // takes the minimum over its shards).
        let _ = (anti_entropy_rounds, anti_entropy_last_round);
    }
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
    detector: Detector,
    next_heartbeat: Duration,
    handoff: Handoff,
    /// This coordinator's shard and the node's shard count: it pulls and
    /// sweeps only its own shard's partitions.
    shard: u32,
    shards: u32,
    transfers: transfer::Transfers,
    anti_entropy: antientropy::AntiEntropy,
}

#[derive(Debug)]
enum Operation {
    Read(ReadOp),
    Write(WriteOp),
    Forward(ForwardOp),
    /// Read repair sent; answers are ignored.
    Repair,
    /// A page of hints being listed.
    ListHints,
    /// One hint being delivered.
    Deliver(DeliverOp),
    /// Ownership transfer: see [`transfer`].
    Transfer(transfer::TransferOp),
    /// An anti-entropy exchange: see [`antientropy`].
    AntiEntropy(antientropy::Exchange),
    /// A check for tombstones every replica holds: see [`antientropy`].
    Reap(antientropy::Reaping),
}

/// Where a request goes: the key's owners, each replaced by a fallback if
/// it is believed down, and the nodes that may stand in later.
#[derive(Debug)]
struct Replicas {
    /// The key's preference list.
    owners: Vec<NodeId>,
    /// Who was asked, in order.
    asked: Vec<Asked>,
    /// Nodes not yet asked that could stand in, best first: the rest of the
    /// ring walk, those believed up before those believed down.
    spare: VecDeque<NodeId>,
}

#[derive(Debug)]
struct Asked {
    node: NodeId,
    /// The owner this node stands in for; `None` if it is an owner.
    hint: Option<NodeId>,
    state: AskState,
    /// Another node was asked in its place (after it failed or was slow).
    replaced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskState {
    /// Not yet asked: the coordinator's own write comes first.
    Later,
    Waiting,
    Done,
    Failed,
}

#[derive(Debug)]
struct ReadOp {
    client: ClientRef,
    partition: u32,
    key: Vec<u8>,
    r: usize,
    replicas: Replicas,
    /// Per node in `replicas.asked` order: its set once it answered.
    answers: Vec<Option<SiblingSet>>,
    replied: bool,
    deadline: Duration,
}

#[derive(Debug)]
struct WriteOp {
    client: ClientRef,
    partition: u32,
    key: Vec<u8>,
    w: usize,
    replicas: Replicas,
    /// The coordinator's set after its local write, once made.
    written: Option<(SiblingSet, Dot)>,
    replied: bool,
    deadline: Duration,
}

#[derive(Debug)]
struct ForwardOp {
    client: ClientRef,
    request: ClientRequest,
    /// The replicas not yet tried, in the order they will be.
    untried: VecDeque<NodeId>,
    deadline: Duration,
}

#[derive(Debug)]
struct DeliverOp {
    hint: Hint,
    /// The set was read and sent; waiting for the owner's ack.
    sent: bool,
}

/// Hint delivery: passes over the hints this node holds, resumable,
/// throttled by a token bucket and a bound on deliveries in flight.
#[derive(Debug, Default)]
struct Handoff {
    next_pass: Duration,
    /// Where the pass in progress resumes listing.
    cursor: Option<(u32, Vec<u8>)>,
    passing: bool,
    /// The pass has listed its last page.
    exhausted: bool,
    listing: bool,
    queue: VecDeque<Hint>,
    in_flight: usize,
    /// Deliveries that may start now (refilled with time).
    tokens: f64,
    refilled: Duration,
    /// Hints of this pass that could not be delivered.
    waiting: u64,
}

/// A page of hints listed at once.
const HINT_PAGE: usize = 64;

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
            detector: Detector::new(options.detector),
            next_heartbeat: Duration::ZERO,
            handoff: Handoff::default(),
            shard: 0,
            shards: 1,
            transfers: transfer::Transfers::default(),
            anti_entropy: antientropy::AntiEntropy::default(),
        }
    }

    /// Makes this the coordinator of shard `shard` of `shards`: it pulls
    /// and sweeps only partitions `p` with `p % shards == shard` (the
    /// node's [`Partitioner`](crate::partition::Partitioner) rule).
    pub fn set_shard(&mut self, shard: u32, shards: u32) {
        assert!(shard < shards, "shard {shard} of {shards}");
        self.shard = shard;
        self.shards = shards;
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
        // Readiness is for a (current, pending) pair: the next tick says.
        self.transfers.ready = None;
    }

    /// The pending ring, if a membership change is under way.
    pub fn next_ring(&self) -> Option<&Arc<Ring>> {
        self.transfers.next.as_ref()
    }

    /// Starts (or, with `None`, ends) pulling what this node gains in a
    /// pending ring; see [`transfer`].
    pub fn set_next_ring(&mut self, next: Option<Arc<Ring>>) {
        self.transfers.next = next;
        self.transfers.ready = None;
    }

    /// Whether `op` has not finished yet (a timer of a finished operation
    /// need not be handed back).
    pub fn is_running(&self, op: OpId) -> bool {
        self.operations.contains_key(&op)
    }

    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    /// This node's failure detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The ring's members this node believes down at `now`.
    pub fn down(&self, now: Duration) -> Vec<NodeId> {
        let Some(ring) = &self.ring else { return Vec::new() };
        ring.members()
            .iter()
            .map(|member| member.id)
            .filter(|&id| id != self.node && self.detector.is_down(id, now))
            .collect()
    }

    /// Operations in flight (including read repairs awaiting answers and
    /// hint deliveries).
    pub fn in_flight(&self) -> usize {
        self.operations.len()
    }

    /// Whether an operation other than a finished read's repair (kept only
    /// to ignore its answers) or anti-entropy (which never ends: it is
    /// background upkeep, like heartbeats) is under way.
    pub fn busy(&self) -> bool {
        self.operations.values().any(|operation| {
            !matches!(operation, Operation::Repair | Operation::AntiEntropy(_) | Operation::Reap(_))
        })
    }

    /// Whether a hint delivery pass is under way.
    pub fn delivering(&self) -> bool {
        self.handoff.passing
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
            Input::Tick => self.on_tick(now, out),
            Input::Repair { ticket, partitions } => {
                self.request_repair(now, ticket, partitions, out);
            }
        }
    }

    fn next_op(&mut self) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        op
    }

    fn is_up(&self, node: NodeId, now: Duration) -> bool {
        node == self.node || !self.detector.is_down(node, now)
    }

    /// Who a request for `partition` goes to (see [`Replicas`]).
    fn plan(&self, ring: &Ring, partition: u32, now: Duration) -> Replicas {
        let walk = ring.preference_list(partition, ring.members().len());
        let n = usize::from(self.options.n).min(walk.len());
        let (owners, rest) = walk.split_at(n);
        let mut healthy: VecDeque<NodeId> =
            rest.iter().copied().filter(|&node| self.is_up(node, now)).collect();
        let mut asked = Vec::with_capacity(n);
        for &owner in owners {
            let stand_in = if self.is_up(owner, now) { None } else { healthy.pop_front() };
            asked.push(match stand_in {
                Some(node) => Asked::new(node, Some(owner)),
                // Up, or nobody better: try the owner.
                None => Asked::new(owner, None),
            });
        }
        // Believed down may be wrong (a node just restarted): those are
        // asked last, owners stood in for included.
        let mut spare = healthy;
        spare.extend(rest.iter().copied().filter(|&node| !self.is_up(node, now)));
        let replaced = asked.iter().filter_map(|asked: &Asked| asked.hint);
        spare.extend(replaced.collect::<Vec<_>>());
        Replicas { owners: owners.to_vec(), asked, spare }
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
        let replicas = self.plan(&ring, partition, now);
        assert!(!replicas.owners.is_empty(), "a ring has members");
        if !replicas.asked.iter().any(|asked| asked.node == self.node) {
            if forwarded {
                // The sender's ring says this node is a replica and this
                // node's ring does not: the rings differ while a change
                // spreads. Forwarding again could bounce; this node stands
                // in for an owner instead (its hint and its sweep hand the
                // write on), so the write succeeds during the change.
                return self.coordinate_as_fallback(now, client, request, out);
            }
            let mut untried: VecDeque<NodeId> = replicas
                .asked
                .iter()
                .filter(|asked| asked.hint.is_none())
                .map(|a| a.node)
                .collect();
            // Owners believed down come last: they may be back.
            let down: Vec<NodeId> =
                replicas.owners.iter().copied().filter(|owner| !untried.contains(owner)).collect();
            untried.extend(down);
            return self.forward(now, client, request, untried, out);
        }
        self.coordinate(now, client, request, partition, replicas, out);
    }

    /// Coordinates `request` on `replicas`, which include this node.
    fn coordinate(
        &mut self,
        now: Duration,
        client: ClientRef,
        request: ClientRequest,
        partition: u32,
        mut replicas: Replicas,
        out: &mut Vec<Action>,
    ) {
        let me = replicas.asked.iter().position(|asked| asked.node == self.node);
        let me = me.expect("the coordinator is among the nodes asked");
        let op = self.next_op();
        let deadline = now + self.options.request_timeout;
        match request {
            ClientRequest::Get { key, r } => {
                let Some(r) = quorum(out, client, "r", r, self.options.r, replicas.owners.len())
                else {
                    return;
                };
                self.stats.reads += 1;
                for asked in &mut replicas.asked {
                    asked.state = AskState::Waiting;
                    let local = LocalOp::Read { partition, key: key.clone() };
                    send(out, op, self.node, asked.node, local);
                }
                out.push(Action::Timer { op, at: deadline });
                out.push(Action::Timer { op, at: now + self.options.hint_after });
                let answers = vec![None; replicas.asked.len()];
                let read = ReadOp {
                    client,
                    partition,
                    key,
                    r,
                    replicas,
                    answers,
                    replied: false,
                    deadline,
                };
                self.operations.insert(op, Operation::Read(read));
            }
            ClientRequest::Put { key, value, context, w } => {
                let Some(w) = quorum(out, client, "w", w, self.options.w, replicas.owners.len())
                else {
                    return;
                };
                self.stats.writes += 1;
                replicas.asked[me].state = AskState::Waiting;
                let hint = replicas.asked[me].hint;
                let local = LocalOp::Write { partition, key: key.clone(), context, value, hint };
                out.push(Action::Local { op, local });
                out.push(Action::Timer { op, at: deadline });
                let write = WriteOp {
                    client,
                    partition,
                    key,
                    w,
                    replicas,
                    written: None,
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
        mut untried: VecDeque<NodeId>,
        out: &mut Vec<Action>,
    ) {
        self.stats.forwarded += 1;
        let op = self.next_op();
        let deadline = now + self.options.request_timeout;
        let Some(to) = untried.pop_front() else { unreachable!("a ring has members") };
        out.push(Action::Send { op, to, request: PeerRequest::Coordinate(request.clone()) });
        out.push(Action::Timer { op, at: deadline });
        let forward = ForwardOp { client, request, untried, deadline };
        self.operations.insert(op, Operation::Forward(forward));
    }

    fn on_local(&mut self, now: Duration, op: OpId, result: LocalResult, out: &mut Vec<Action>) {
        let node = self.node;
        match self.operations.get_mut(&op) {
            Some(Operation::Read(read)) => {
                let index = read.replicas.index_of(node).expect("the coordinator was asked");
                match result {
                    LocalResult::Read(set) => {
                        read.replicas.asked[index].state = AskState::Done;
                        read.answers[index] = Some(set);
                    }
                    LocalResult::Failed { .. } => {
                        read.replicas.asked[index].state = AskState::Failed
                    }
                    other => unreachable!("a read's local op answered {other:?}"),
                }
                self.progress_read(now, op, out);
            }
            Some(Operation::Write(write)) => {
                assert!(write.written.is_none(), "one local write per write op");
                match result {
                    LocalResult::Written { set, dot } => {
                        let index = write.replicas.index_of(node).expect("the coordinator");
                        write.replicas.asked[index].state = AskState::Done;
                        for asked in &mut write.replicas.asked {
                            if asked.state == AskState::Later {
                                asked.state = AskState::Waiting;
                                let request = PeerRequest::Write {
                                    partition: write.partition,
                                    key: write.key.clone(),
                                    set: set.clone(),
                                    hint: asked.hint,
                                };
                                out.push(Action::Send { op, to: asked.node, request });
                            }
                        }
                        self.stats.hinted_writes +=
                            write.replicas.asked.iter().filter(|a| a.hint.is_some()).count() as u64;
                        write.written = Some((set, dot));
                        out.push(Action::Timer { op, at: now + self.options.hint_after });
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
            Some(Operation::ListHints) => {
                self.operations.remove(&op);
                self.on_hints_listed(now, result, out);
            }
            Some(Operation::Transfer(_)) => self.on_transfer_local(now, op, result, out),
            Some(Operation::AntiEntropy(_)) => self.on_anti_entropy_local(now, op, result, out),
            Some(Operation::Reap(_)) => self.on_reap_local(now, op, result, out),
            Some(Operation::Deliver(deliver)) => match result {
                LocalResult::Read(set) if !deliver.sent => {
                    deliver.sent = true;
                    let hint = &deliver.hint;
                    if set.is_empty() {
                        // Nothing to hand over (the hinted write was lost
                        // in a crash before it was acknowledged).
                        out.push(Action::Local { op, local: LocalOp::DropHint(hint.clone()) });
                        return;
                    }
                    let request = PeerRequest::Write {
                        partition: hint.partition,
                        key: hint.key.clone(),
                        set,
                        hint: None,
                    };
                    out.push(Action::Send { op, to: hint.owner, request });
                    out.push(Action::Timer { op, at: now + self.options.request_timeout });
                }
                LocalResult::Merged => {
                    self.operations.remove(&op);
                    self.stats.hints_delivered += 1;
                    self.delivery_ended(now, out);
                }
                _ => {
                    self.operations.remove(&op);
                    self.handoff.waiting += 1;
                    self.delivery_ended(now, out);
                }
            },
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
        match &reply {
            PeerReply::Pong => self.detector.heartbeat(from, now),
            PeerReply::Failed { code: ErrorCode::Unavailable, .. } => {
                self.detector.unreachable(from);
            }
            _ => self.detector.answered(from),
        }
        match self.operations.get_mut(&op) {
            Some(Operation::Read(read)) => {
                let Some(index) = read.replicas.waiting_index(from) else { return };
                match reply {
                    PeerReply::Read(set) => {
                        read.replicas.asked[index].state = AskState::Done;
                        read.answers[index] = Some(set);
                    }
                    _ => {
                        read.replicas.asked[index].state = AskState::Failed;
                        if !read.replied {
                            let (partition, key) = (read.partition, read.key.clone());
                            if let Some(node) = read.replicas.stand_in(index) {
                                read.answers.push(None);
                                let local = LocalOp::Read { partition, key };
                                send(out, op, self.node, node, local);
                            }
                        }
                    }
                }
                self.progress_read(now, op, out);
            }
            Some(Operation::Write(write)) => {
                let Some(index) = write.replicas.waiting_index(from) else { return };
                if from == self.node {
                    return;
                }
                match reply {
                    PeerReply::Written => write.replicas.asked[index].state = AskState::Done,
                    _ => {
                        // Stood in for even once W is met: the key should
                        // have N copies, and the owner its hint.
                        write.replicas.asked[index].state = AskState::Failed;
                        write.stand_in(index, out, op, &mut self.stats);
                    }
                }
                self.progress_write(op, out);
            }
            Some(Operation::Forward(forward)) => match reply {
                PeerReply::Coordinated(reply) => {
                    let client = forward.client;
                    self.operations.remove(&op);
                    out.push(Action::Reply { client, reply });
                }
                _ => match forward.untried.pop_front() {
                    Some(to) => {
                        let request = PeerRequest::Coordinate(forward.request.clone());
                        out.push(Action::Send { op, to, request });
                    }
                    None => {
                        // No owner could be reached: this node takes the
                        // request itself, standing in for an owner.
                        let Some(Operation::Forward(forward)) = self.operations.remove(&op) else {
                            unreachable!("just matched")
                        };
                        self.coordinate_as_fallback(now, forward.client, forward.request, out);
                    }
                },
            },
            Some(Operation::Deliver(deliver)) => {
                if !deliver.sent || from != deliver.hint.owner {
                    return;
                }
                match reply {
                    PeerReply::Written => {
                        let local = LocalOp::DropHint(deliver.hint.clone());
                        out.push(Action::Local { op, local });
                    }
                    _ => {
                        self.operations.remove(&op);
                        self.handoff.waiting += 1;
                        self.delivery_ended(now, out);
                    }
                }
            }
            Some(Operation::Transfer(_)) => self.on_transfer_peer(now, op, from, reply, out),
            Some(Operation::AntiEntropy(_)) => {
                self.on_anti_entropy_peer(now, op, from, reply, out);
            }
            Some(Operation::Reap(_)) => self.on_reap_peer(now, op, from, reply, out),
            Some(Operation::Repair) | Some(Operation::ListHints) | None => {}
        }
    }

    /// Coordinates a request no owner could be reached for: this node
    /// stands in for the first owner not already stood in for.
    fn coordinate_as_fallback(
        &mut self,
        now: Duration,
        client: ClientRef,
        request: ClientRequest,
        out: &mut Vec<Action>,
    ) {
        let Some(ring) = self.ring.clone() else {
            return refuse(out, client, ErrorCode::Unavailable, "the ring is gone");
        };
        if !ring.contains(self.node) {
            // A node that left never issues dots again.
            let message = "no replica of the key could be reached, and this node has left the ring";
            return refuse(out, client, ErrorCode::Unavailable, message);
        }
        let partition = ring.partition_of(request.key());
        let mut replicas = self.plan(&ring, partition, now);
        if replicas.index_of(self.node).is_none() {
            replicas.spare.retain(|&node| node != self.node);
            let slot = replicas.asked.iter().position(|asked| asked.hint.is_some()).unwrap_or(0);
            let asked = &mut replicas.asked[slot];
            let owner = asked.hint.unwrap_or(asked.node);
            if asked.hint.is_some() {
                // The fallback displaced goes back to the spares.
                replicas.spare.push_front(asked.node);
            }
            *asked = Asked::new(self.node, Some(owner));
        }
        self.coordinate(now, client, request, partition, replicas, out);
    }

    fn on_timer(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(operation) = self.operations.get_mut(&op) else { return };
        match operation {
            Operation::Read(read) => {
                if now < read.deadline {
                    // The hedge: stand in for whoever has not answered.
                    if !read.replied {
                        let (partition, key) = (read.partition, read.key.clone());
                        for index in read.replicas.slow() {
                            if let Some(node) = read.replicas.stand_in(index) {
                                read.answers.push(None);
                                let local = LocalOp::Read { partition, key: key.clone() };
                                send(out, op, self.node, node, local);
                            }
                        }
                    }
                    return;
                }
                if !read.replied {
                    let (answered, r, asked) = (read.answered(), read.r, read.replicas.asked.len());
                    let client = read.client;
                    self.stats.timeouts += 1;
                    let message = format!(
                        "{answered} of {asked} nodes asked answered in time, and R={r} are needed"
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
                    if write.written.is_some() {
                        for index in write.replicas.slow() {
                            write.stand_in(index, out, op, &mut self.stats);
                        }
                    }
                    return;
                }
                if !write.replied {
                    let (acks, w, asked) = (write.acks(), write.w, write.replicas.asked.len());
                    let client = write.client;
                    self.stats.timeouts += 1;
                    let message = format!(
                        "{acks} of {asked} nodes asked acknowledged in time, and W={w} are \
                         needed; the write may be present on those that did"
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
            Operation::Deliver(_) => {
                // The owner did not acknowledge in time: kept for later.
                self.operations.remove(&op);
                self.handoff.waiting += 1;
                self.delivery_ended(now, out);
            }
            Operation::ListHints => {}
            Operation::Transfer(_) => self.on_transfer_timer(now, op, out),
            Operation::AntiEntropy(_) => self.on_anti_entropy_timer(now, op, out),
            Operation::Reap(_) => self.on_reap_timer(now, op, out),
        }
    }

    fn progress_read(&mut self, now: Duration, op: OpId, out: &mut Vec<Action>) {
        let Some(Operation::Read(read)) = self.operations.get_mut(&op) else {
            unreachable!("progress of a read that is not one")
        };
        let answered = read.answered();
        let all_in = read.replicas.waiting() == 0;
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
            } else if answered + read.replicas.waiting() + read.replicas.spare.len() < read.r {
                // Even if every node still out answers, R is out of reach.
                let (r, failed, client) = (read.r, read.replicas.failed(), read.client);
                let asked = read.replicas.asked.len();
                read.replied = true;
                self.stats.unavailable += 1;
                let message = format!(
                    "{answered} of {asked} nodes asked answered and {failed} failed, and no \
                     other node could be asked, so R={r} cannot be met"
                );
                refuse(out, client, ErrorCode::Unavailable, &message);
            }
        }
        if all_in {
            self.finish_read(op, out);
        }
    }

    /// Ends a read that has replied: sends the merge of every answer to
    /// each owner that answered something else. (Fallbacks are not
    /// repaired: what they hold, they hold for an owner.)
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
        for (asked, answer) in read.replicas.asked.iter().zip(&read.answers) {
            let Some(set) = answer else { continue };
            if *set == merged || asked.hint.is_some() || !read.replicas.owners.contains(&asked.node)
            {
                continue;
            }
            repaired = true;
            self.stats.read_repairs += 1;
            let (partition, key) = (read.partition, read.key.clone());
            if asked.node == self.node {
                let local = LocalOp::Merge { partition, key, set: merged.clone(), hint: None };
                out.push(Action::Local { op: repair, local });
            } else {
                let request =
                    PeerRequest::Write { partition, key, set: merged.clone(), hint: None };
                out.push(Action::Send { op: repair, to: asked.node, request });
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
        let Some((set, dot)) = &write.written else { return };
        let acks = write.acks();
        if !write.replied {
            if acks >= write.w {
                write.replied = true;
                let reply = ClientReply::Put { context: set.context(), dot: *dot };
                out.push(Action::Reply { client: write.client, reply });
            } else if acks + write.replicas.waiting() < write.w {
                // Even if every node still out acknowledges, and no node is
                // left to stand in, W is out of reach.
                let (failed, w, client) = (write.replicas.failed(), write.w, write.client);
                let asked = write.replicas.asked.len();
                write.replied = true;
                self.stats.unavailable += 1;
                let message = format!(
                    "{acks} of {asked} nodes asked acknowledged and {failed} failed, and no \
                     other node could take the write, so W={w} cannot be met; the write may \
                     be present on those that acknowledged"
                );
                refuse(out, client, ErrorCode::Unavailable, &message);
            }
        }
        if write.replicas.waiting() == 0 {
            self.operations.remove(&op);
        }
    }

    fn on_tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        let Some(ring) = self.ring.clone() else { return };
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.options.detector.heartbeat_interval;
            for member in ring.members() {
                if member.id != self.node {
                    out.push(Action::Send {
                        op: OpId::HEARTBEAT,
                        to: member.id,
                        request: PeerRequest::Ping,
                    });
                }
            }
        }
        // Refill the delivery budget: at most a second's worth saved up.
        let rate = f64::from(self.options.handoff_keys_per_second);
        let elapsed = now.saturating_sub(self.handoff.refilled).as_secs_f64();
        self.handoff.tokens = (self.handoff.tokens + elapsed * rate).min(rate);
        self.handoff.refilled = now;
        if !self.handoff.passing && now >= self.handoff.next_pass {
            self.handoff.passing = true;
            self.handoff.exhausted = false;
            self.handoff.cursor = None;
            self.handoff.waiting = 0;
        }
        self.deliver_more(out);
        self.transfer_tick(now, out);
        self.anti_entropy_tick(now, out);
    }

    /// Starts deliveries while the budget and the bound allow, listing the
    /// next page of hints when the queue runs dry.
    fn deliver_more(&mut self, out: &mut Vec<Action>) {
        if !self.handoff.passing {
            return;
        }
        while self.handoff.in_flight < self.options.handoff_in_flight && self.handoff.tokens >= 1.0
        {
            let Some(hint) = self.handoff.queue.pop_front() else { break };
            self.handoff.tokens -= 1.0;
            self.handoff.in_flight += 1;
            let op = self.next_op();
            let local = LocalOp::Read { partition: hint.partition, key: hint.key.clone() };
            out.push(Action::Local { op, local });
            self.operations.insert(op, Operation::Deliver(DeliverOp { hint, sent: false }));
        }
        if self.handoff.queue.is_empty() && !self.handoff.listing && !self.handoff.exhausted {
            self.handoff.listing = true;
            let op = self.next_op();
            let local = LocalOp::Hints { after: self.handoff.cursor.clone(), limit: HINT_PAGE };
            out.push(Action::Local { op, local });
            self.operations.insert(op, Operation::ListHints);
        }
    }

    fn on_hints_listed(&mut self, now: Duration, result: LocalResult, out: &mut Vec<Action>) {
        self.handoff.listing = false;
        let hints = match result {
            LocalResult::Hints(hints) => hints,
            _ => Vec::new(), // Try again next pass.
        };
        let last_page = hints.len() < HINT_PAGE;
        self.handoff.cursor = hints.last().map(|hint| (hint.partition, hint.key.clone()));
        let ring = self.ring.clone();
        let next = self.pending();
        let in_next = |owner: NodeId| next.as_ref().is_some_and(|next| next.contains(owner));
        for hint in hints {
            let in_ring = ring.as_ref().is_some_and(|ring| ring.contains(hint.owner));
            if hint.owner == self.node {
                // This node owns the key now: the data is already here.
                self.handoff.in_flight += 1;
                let op = self.next_op();
                out.push(Action::Local { op, local: LocalOp::DropHint(hint.clone()) });
                self.operations.insert(op, Operation::Deliver(DeliverOp { hint, sent: true }));
            } else if in_ring && !self.detector.is_down(hint.owner, now) {
                self.handoff.queue.push_back(hint);
            } else if !in_ring && !in_next(hint.owner) {
                // The owner left the cluster: the key's current owners get
                // the data instead, from this node's sweep if it does not
                // replicate the key, or from read repair if it does.
                self.handoff.in_flight += 1;
                let op = self.next_op();
                out.push(Action::Local { op, local: LocalOp::DropHint(hint.clone()) });
                self.operations.insert(op, Operation::Deliver(DeliverOp { hint, sent: true }));
            } else {
                self.handoff.waiting += 1;
            }
        }
        self.handoff.exhausted = last_page;
        self.end_pass_if_done(now);
        self.deliver_more(out);
    }

    fn delivery_ended(&mut self, now: Duration, out: &mut Vec<Action>) {
        self.handoff.in_flight -= 1;
        self.end_pass_if_done(now);
        self.deliver_more(out);
    }

    fn end_pass_if_done(&mut self, now: Duration) {
        let handoff = &mut self.handoff;
        if handoff.passing
            && handoff.exhausted
            && handoff.queue.is_empty()
            && handoff.in_flight == 0
            && !handoff.listing
        {
            handoff.passing = false;
            handoff.next_pass = now + self.options.handoff_interval;
            self.stats.hints_waiting = handoff.waiting;
        }
    }
}

impl Asked {
    fn new(node: NodeId, hint: Option<NodeId>) -> Asked {
        Asked { node, hint, state: AskState::Later, replaced: false }
    }
}

impl Replicas {
    fn index_of(&self, node: NodeId) -> Option<usize> {
        self.asked.iter().position(|asked| asked.node == node)
    }

    /// The index of `node` if it was asked and has not answered.
    fn waiting_index(&self, node: NodeId) -> Option<usize> {
        self.asked.iter().position(|asked| asked.node == node && asked.state == AskState::Waiting)
    }

    fn waiting(&self) -> usize {
        self.asked.iter().filter(|asked| asked.state == AskState::Waiting).count()
    }

    fn failed(&self) -> usize {
        self.asked.iter().filter(|asked| asked.state == AskState::Failed).count()
    }

    /// Nodes asked that have neither answered nor been stood in for.
    fn slow(&self) -> Vec<usize> {
        (0..self.asked.len())
            .filter(|&i| self.asked[i].state == AskState::Waiting && !self.asked[i].replaced)
            .collect()
    }

    /// Asks the next spare node in place of `asked[index]`: returns it,
    /// now waiting, standing in for the same owner.
    fn stand_in(&mut self, index: usize) -> Option<NodeId> {
        if self.asked[index].replaced {
            return None;
        }
        let node = self.spare.pop_front()?;
        self.asked[index].replaced = true;
        let owner = self.asked[index].hint.unwrap_or(self.asked[index].node);
        let mut stand_in = Asked::new(node, Some(owner));
        stand_in.state = AskState::Waiting;
        self.asked.push(stand_in);
        Some(node)
    }
}

impl ReadOp {
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

impl WriteOp {
    fn acks(&self) -> usize {
        self.replicas.asked.iter().filter(|asked| asked.state == AskState::Done).count()
    }

    /// Sends the write to a spare node in place of `asked[index]`.
    fn stand_in(
        &mut self,
        index: usize,
        out: &mut Vec<Action>,
        op: OpId,
        stats: &mut CoordinatorStats,
    ) {
        let Some((set, _)) = &self.written else { return };
        let Some(node) = self.replicas.stand_in(index) else { return };
        let hint = self.replicas.asked.last().and_then(|asked| asked.hint);
        stats.hinted_writes += 1;
        let request = PeerRequest::Write {
            partition: self.partition,
            key: self.key.clone(),
            set: set.clone(),
            hint,
        };
        out.push(Action::Send { op, to: node, request });
    }
}

/// Sends a read to `to`, or runs it locally if `to` is this node.
fn send(out: &mut Vec<Action>, op: OpId, me: NodeId, to: NodeId, local: LocalOp) {
    if to == me {
        out.push(Action::Local { op, local });
        return;
    }
    let LocalOp::Read { partition, key } = local else { unreachable!("only reads are sent so") };
    out.push(Action::Send { op, to, request: PeerRequest::Read { partition, key } });
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
