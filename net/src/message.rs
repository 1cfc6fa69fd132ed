//! Messages: what a frame's body holds, and the one place archived bytes are
//! read.
//!
//! Every body is an rkyv 0.8 archive of one of the plain structs below. The
//! wire types hold only integers, byte vectors, vectors of byte vectors and
//! strings: no maps, no shared pointers, no `Option` (whose niche encoding is
//! where rkyv's validator has had its soundness and panic bugs; rkyv issues
//! 665, 670, 685, 694, 699). "Absent" is written as empty (an empty context
//! means none) and "default" as zero (`r = 0` means the cluster's R).
//!
//! # Validation
//!
//! A body is read only through [`access`] (or [`Frame::access`], which also
//! checks the protocol version and the kind first), which runs rkyv's
//! validating access (bytecheck) over the whole archive before any field is
//! read. There is no unchecked access anywhere in holdfast: validation costs
//! nanoseconds for these shapes, and a frame has already cost a syscall.
//! Failures here leave the connection usable; the peer answers the request
//! with an [`ErrorReply`] and carries on.
//!
//! Requests are further checked against the node's size limits and their
//! contexts decoded by [`Request::parse`], which is what a node calls on
//! every frame a client sends.

use std::fmt;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Deserialize, Portable, Serialize};

use crate::clock::{ClockDecodeError, Dot, VersionVector};
use crate::frame::{BODY_ALIGNMENT, Frame, HEADER_BYTES, Kind, PROTOCOL_VERSION, finish_frame};
use crate::limits::{
    ERROR_MESSAGE_BYTES_MAX, FETCH_KEYS_MAX, FETCH_PAGE_BYTES_MAX, KEY_BYTES_MAX, LEAF_ENTRIES_MAX,
    LEAF_LEAVES_MAX, OFFER_KEYS_MAX, REPAIR_ENTRIES_MAX, SCAN_KEYS_MAX, SCAN_PAGE_BYTES_MAX,
    TREE_FANOUT, TREE_INDICES_MAX, TREE_LEAVES, TREE_LEVEL_MAX, VALUE_BYTES_MAX,
};
use crate::membership::{GossipDigest, GossipPush, MembershipError};
use crate::ring::{Member, RingState};

/// Read a key. Answered by [`GetReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GetRequest {
    /// The key.
    pub key: Vec<u8>,
    /// How many replicas must answer; 0 means the cluster's default R.
    pub r: u8,
}

/// Write a value. Answered by [`PutReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The causal context from an earlier read or write of this key (an
    /// encoded [`VersionVector`]), empty for none: the write supersedes
    /// exactly the versions the context covers.
    pub context: Vec<u8>,
    /// How many replicas must acknowledge; 0 means the cluster's default W.
    pub w: u8,
}

/// Delete a key: write a tombstone that supersedes what the context covers.
/// Answered by [`DeleteReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The causal context from an earlier read or write, empty for none (a
    /// delete with no context supersedes nothing, so it is rarely useful).
    pub context: Vec<u8>,
    /// How many replicas must acknowledge; 0 means the cluster's default W.
    pub w: u8,
}

/// Ask the node to answer. Answered by [`Pong`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Ping {}

/// The siblings of a key and their context.
///
/// A key that was never written, or whose every version is a tombstone,
/// has no values; that is not an error.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GetReply {
    /// The live siblings in the node's canonical (dot) order; tombstones are
    /// left out.
    pub values: Vec<Vec<u8>>,
    /// The encoded context covering every version read, tombstones included:
    /// a write that carries it supersedes all of them.
    pub context: Vec<u8>,
}

/// A write was acknowledged.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PutReply {
    /// The context of the key after the write (covering the new version and
    /// any sibling concurrent with it), so a client can overwrite its own
    /// write without reading first.
    pub context: Vec<u8>,
    /// The dot of the version this write created (see [`encode_dot`]): what
    /// a later write must cover to supersede it.
    pub dot: Vec<u8>,
}

/// A delete was acknowledged.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteReply {
    /// The context of the key after the delete.
    pub context: Vec<u8>,
    /// The dot of the tombstone this delete created (see [`encode_dot`]).
    pub dot: Vec<u8>,
}

/// The answer to a [`Ping`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Pong {}

/// Ask a node for its ring. Answered by [`RingReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RingRequest {}

/// A node's ring and the cluster's replication settings: enough for a
/// client to send each request straight to a coordinator of its key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RingReply {
    /// The id of the node that answered.
    pub node: u64,
    /// The ring; version 0 with no members while the node has not formed
    /// one yet (it is still waiting for its seeds).
    pub ring: RingState,
    /// Replicas per key.
    pub n: u8,
    /// The default read quorum.
    pub r: u8,
    /// The default write quorum.
    pub w: u8,
}

/// Read this node's own replica of a key, without coordination. Answered
/// by [`InspectReply`]. For operators and tests.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct InspectRequest {
    /// The key.
    pub key: Vec<u8>,
}

/// One node's replica of a key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct InspectReply {
    /// The id of the node that answered.
    pub node: u64,
    /// The key's partition.
    pub partition: u32,
    /// Whether this node is in the key's preference list.
    pub replica: bool,
    /// The canonical encoding of the node's sibling set of the key
    /// ([`SiblingSet::encode`](crate::SiblingSet::encode)), tombstones and
    /// clocks included; empty if the node holds nothing for it.
    pub set: Vec<u8>,
}

/// Ask a node how it is doing: its hints and which peers it believes
/// down. Answered by [`StatsReply`]. For operators (`holdfast status`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StatsRequest {}

/// A node's counters, summed over its shards (as of their last tick).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StatsReply {
    /// The id of the node that answered.
    pub node: u64,
    /// Keys this node holds hints for (writes it took for a down owner).
    pub hinted_keys: u64,
    /// Hints its last delivery passes could not deliver (owner down).
    pub hints_waiting: u64,
    /// Hints delivered since it started.
    pub hints_delivered: u64,
    /// Writes it sent to a fallback in place of an owner since it started.
    pub hinted_writes: u64,
    /// The peers it believes down, ascending.
    pub down: Vec<u64>,
    /// Its own [`MemberStatus`](crate::membership::MemberStatus) as its
    /// gossip holds it (a wire value); [`STATUS_UNKNOWN`] while it runs no
    /// gossip yet (it is still forming its first ring).
    pub status: u8,
    /// The version of the ring it routes by; 0 for none yet.
    pub ring_version: u64,
    /// The version of the pending ring (a membership change under way); 0
    /// for none.
    pub next_version: u64,
    /// Partitions it gains in the pending ring and has not pulled yet.
    pub transfers_waiting: u64,
    /// Partitions it pulled (since it started).
    pub partitions_pulled: u64,
    /// Keys and bytes (encoded sets) it pulled from other nodes.
    pub keys_pulled: u64,
    /// See `keys_pulled`.
    pub bytes_pulled: u64,
    /// Keys of partitions it no longer replicates that it sent to their
    /// owners, and their bytes.
    pub keys_handed_off: u64,
    /// See `keys_handed_off`.
    pub bytes_handed_off: u64,
    /// Keys it removed once every owner held them.
    pub keys_removed: u64,
    /// Partitions its last sweep found held here for others and could not
    /// hand off yet (an owner down or refusing).
    pub partitions_waiting: u64,
    /// Partitions it holds data of (its own replicas and anything not yet
    /// handed off).
    pub data_partitions: u64,
    /// Every member its gossip knows, tombstones included, ascending by id.
    pub members: Vec<MemberSummary>,
    /// Anti-entropy exchanges completed since it started (one partition
    /// compared with one other replica).
    pub anti_entropy_exchanges: u64,
    /// Exchanges skipped (a peer down, a tree not comparable yet, a
    /// request failed).
    pub anti_entropy_skipped: u64,
    /// Keys anti-entropy found differing and repaired.
    pub anti_entropy_keys_repaired: u64,
    /// Bytes of sets anti-entropy fetched from peers.
    pub anti_entropy_bytes_received: u64,
    /// Bytes of sets anti-entropy sent to peers.
    pub anti_entropy_bytes_sent: u64,
    /// Full anti-entropy rounds completed (every partition it replicates
    /// compared with every other replica; its slowest shard's count).
    pub anti_entropy_rounds: u64,
    /// Milliseconds since the last full round ended;
    /// [`NEVER`] if none has.
    pub anti_entropy_last_round_ms: u64,
    /// Partitions whose Merkle trees are still being built (not comparable
    /// yet), after a restart or a failed write.
    pub trees_building: u64,
    /// Tombstones reaped, by the partitions whose first replica this node
    /// is (on every replica), since it started.
    pub tombstones_reaped: u64,
}

/// [`StatsReply::anti_entropy_last_round_ms`] of a node that has not
/// completed a round yet.
pub const NEVER: u64 = u64::MAX;

/// [`StatsReply::status`] of a node that runs no gossip yet.
pub const STATUS_UNKNOWN: u8 = u8::MAX;

/// One member as a node's gossip knows it (for `holdfast status`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct MemberSummary {
    /// The member's id.
    pub id: u64,
    /// Where it is reached.
    pub addr: String,
    /// Its [`MemberStatus`](crate::membership::MemberStatus) wire value.
    pub status: u8,
    /// Its record's version.
    pub version: u64,
}

/// What an [`AdminRequest`] asks for: [`AdminRequest::op`]'s values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AdminOp {
    /// The node leaves: it is marked `Leaving`, a ring without it is
    /// proposed, its partitions move to their new owners, and once it holds
    /// nothing it marks itself `Left`.
    Leave = 1,
    /// The node (dead, or never coming back) is marked `Left` at once: its
    /// partitions are re-replicated from the surviving replicas.
    Remove = 2,
}

impl AdminOp {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The op with this wire value, if any.
    pub const fn from_u8(byte: u8) -> Option<AdminOp> {
        match byte {
            1 => Some(AdminOp::Leave),
            2 => Some(AdminOp::Remove),
            _ => None,
        }
    }
}

/// An operator's membership change, made at the receiving node on the
/// target's behalf and spread by gossip. Answered by [`AdminReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AdminRequest {
    /// An [`AdminOp`] wire value.
    pub op: u8,
    /// The node to change; 0 for the receiving node itself.
    pub node: u64,
}

/// What an [`AdminRequest`] did.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AdminReply {
    /// The node changed.
    pub node: u64,
    /// Its [`MemberStatus`](crate::membership::MemberStatus) wire value now.
    pub status: u8,
    /// What happens next, for the operator.
    pub message: String,
}

/// Node to node: a page of the receiver's keys of `partition` (sorted by
/// key), with their sibling sets: what a node pulls a partition it gains
/// with. Answered by [`ScanReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ScanRequest {
    /// The partition.
    pub partition: u32,
    /// Whether the page starts after `after` (else from the first key).
    pub resume: bool,
    /// The last key of the previous page (empty unless `resume`).
    pub after: Vec<u8>,
    /// The most keys wanted (the receiver caps it at
    /// [`SCAN_KEYS_MAX`](crate::limits::SCAN_KEYS_MAX)).
    pub keys: u32,
    /// The page may end once its sets reach this many bytes.
    pub bytes: u32,
}

/// One key of a [`ScanReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ScanEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its canonical sibling set (never empty).
    pub set: Vec<u8>,
}

/// A page of a partition's keys.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ScanReply {
    /// The keys, ascending, each after the request's `after`.
    pub entries: Vec<ScanEntry>,
    /// Whether keys follow the last one (ask again after it).
    pub more: bool,
}

/// One key of an [`OfferRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OfferEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The offered set's token (an xxh3 of its canonical bytes).
    pub token: u64,
}

/// Node to node: which of these keys of `partition` the receiver holds with
/// exactly the set of the token. A node that no longer replicates a
/// partition offers its keys to the owners before it hands them off and
/// removes them. The receiver refuses (`NotReplica`) unless it replicates
/// the partition in its current or pending ring. Answered by
/// [`OfferReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OfferRequest {
    /// The partition.
    pub partition: u32,
    /// The keys, at most [`OFFER_KEYS_MAX`](crate::limits::OFFER_KEYS_MAX).
    pub keys: Vec<OfferEntry>,
}

/// Per key offered, in order: whether the receiver holds exactly that set.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct OfferReply {
    /// One per offered key.
    pub have: Vec<bool>,
}

/// An operator's "repair now" (`holdfast admin repair`): the receiving
/// node runs anti-entropy at once for one partition (routed to the shard
/// that owns it) or for every partition it replicates (every shard), and
/// answers when the exchanges are done. Answered by [`RepairReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RepairRequest {
    /// Every partition the node replicates (then `partition` is 0).
    pub all: bool,
    /// The partition, unless `all`.
    pub partition: u32,
}

/// What an operator's repair compared and repaired (the engine's
/// `RepairReport`, summed over the shards that took part).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RepairReply {
    /// The id of the node that ran it.
    pub node: u64,
    /// Exchanges completed (one partition with one other replica).
    pub exchanges: u64,
    /// Exchanges skipped: the peer down, a tree not comparable yet (being
    /// built after a restart), or a request that failed.
    pub skipped: u64,
    /// Completed exchanges whose roots differed.
    pub partitions_differing: u64,
    /// Leaves that differed.
    pub leaves_differing: u64,
    /// Tree hashes the peers sent.
    pub hashes: u64,
    /// Leaf entries (key and entry hash) the peers sent.
    pub entries: u64,
    /// Keys found differing, and repaired.
    pub keys_repaired: u64,
    /// Sets fetched from peers.
    pub keys_received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Sets sent to peers.
    pub keys_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// How long the repair took, in milliseconds.
    pub elapsed_ms: u64,
}

/// Node to node (anti-entropy): the hashes of nodes `indices` at `level`
/// of the receiver's Merkle tree of `partition` (level 0 is the root,
/// [`TREE_LEVEL_MAX`](crate::limits::TREE_LEVEL_MAX) the leaves). The
/// receiver refuses (`NotReplica`) unless it replicates the partition.
/// Answered by [`TreeReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TreeRequest {
    /// The partition.
    pub partition: u32,
    /// The level, at most [`TREE_LEVEL_MAX`](crate::limits::TREE_LEVEL_MAX).
    pub level: u8,
    /// The nodes of that level, each below `TREE_FANOUT ^ level`; at most
    /// [`TREE_INDICES_MAX`](crate::limits::TREE_INDICES_MAX).
    pub indices: Vec<u16>,
}

/// The hashes a [`TreeRequest`] asked for.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TreeReply {
    /// Whether the receiver's tree is comparable (false while it is being
    /// built after a restart; then `hashes` is empty).
    pub comparable: bool,
    /// One hash per index asked, in order.
    pub hashes: Vec<u64>,
}

impl TreeReply {
    /// The reply for a replica's answer (`None`: not comparable yet).
    pub fn new(hashes: Option<Vec<u64>>) -> TreeReply {
        match hashes {
            Some(hashes) => TreeReply { comparable: true, hashes },
            None => TreeReply { comparable: false, hashes: Vec::new() },
        }
    }

    /// The replica's answer back (`None`: not comparable yet); an error
    /// for a reply that says "not comparable" and still carries hashes.
    pub fn into_hashes(self) -> Result<Option<Vec<u64>>, MessageError> {
        match (self.comparable, self.hashes.is_empty()) {
            (true, _) => Ok(Some(self.hashes)),
            (false, true) => Ok(None),
            (false, false) => Err(MessageError::Invalid {
                kind: Kind::TREE_REPLY,
                reason: "hashes from a tree that is not comparable".into(),
            }),
        }
    }
}

/// Node to node (anti-entropy): the keys in `leaves` of the receiver's
/// tree of `partition`, with their entry hashes. Refused (`NotReplica`)
/// unless the receiver replicates the partition. Answered by
/// [`LeafReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeafRequest {
    /// The partition.
    pub partition: u32,
    /// The leaves, each below [`TREE_LEAVES`](crate::limits::TREE_LEAVES);
    /// at most [`LEAF_LEAVES_MAX`](crate::limits::LEAF_LEAVES_MAX).
    pub leaves: Vec<u16>,
}

/// One key of a [`LeafReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeafEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its entry hash (of the key and its set's canonical bytes).
    pub hash: u64,
}

/// A leaf listing as a replica gives it: `(key, entry hash)`, ascending.
pub type LeafEntries = Vec<(Vec<u8>, u64)>;

/// The keys a [`LeafRequest`] asked for.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeafReply {
    /// Whether the receiver's tree is comparable (false while it is being
    /// built; then `entries` is empty).
    pub comparable: bool,
    /// The keys, ascending, at most
    /// [`LEAF_ENTRIES_MAX`](crate::limits::LEAF_ENTRIES_MAX).
    pub entries: Vec<LeafEntry>,
}

impl LeafReply {
    /// The reply for a replica's answer (`None`: not comparable yet).
    pub fn new(entries: Option<LeafEntries>) -> LeafReply {
        match entries {
            Some(entries) => LeafReply {
                comparable: true,
                entries: entries.into_iter().map(|(key, hash)| LeafEntry { key, hash }).collect(),
            },
            None => LeafReply { comparable: false, entries: Vec::new() },
        }
    }

    /// The replica's answer back (`None`: not comparable yet); an error
    /// for a reply that says "not comparable" and still carries entries,
    /// or that carries more than [`LEAF_ENTRIES_MAX`] or a key over `key_bytes_max`.
    pub fn into_entries(self, key_bytes_max: usize) -> Result<Option<LeafEntries>, MessageError> {
        let invalid = |reason: String| MessageError::Invalid { kind: Kind::LEAF_REPLY, reason };
        if !self.comparable {
            if !self.entries.is_empty() {
                return Err(invalid("entries from a tree that is not comparable".into()));
            }
            return Ok(None);
        }
        if self.entries.len() > LEAF_ENTRIES_MAX {
            let count = self.entries.len();
            return Err(invalid(format!("{count} entries, over the limit of {LEAF_ENTRIES_MAX}")));
        }
        if let Some(entry) = self.entries.iter().find(|entry| entry.key.len() > key_bytes_max) {
            let len = entry.key.len();
            return Err(invalid(format!(
                "a key of {len} bytes, over the limit of {key_bytes_max}"
            )));
        }
        Ok(Some(self.entries.into_iter().map(|entry| (entry.key, entry.hash)).collect()))
    }
}

/// Node to node (anti-entropy): the receiver's sets of these keys of
/// `partition` (those it holds). Refused (`NotReplica`) unless the
/// receiver replicates the partition. Answered by [`FetchReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchRequest {
    /// The partition.
    pub partition: u32,
    /// The keys, at most [`FETCH_KEYS_MAX`](crate::limits::FETCH_KEYS_MAX),
    /// each within the key limit.
    pub keys: Vec<Vec<u8>>,
    /// The reply may end once its sets reach this many bytes (the receiver
    /// caps it at [`FETCH_PAGE_BYTES_MAX`](crate::limits::FETCH_PAGE_BYTES_MAX)).
    pub bytes: u32,
}

/// The sets a [`FetchRequest`] asked for: the keys the receiver holds, in
/// the order asked, each with its canonical set (never empty). Keys left
/// out are absent there (or past the byte limit).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FetchReply {
    /// The keys and their sets.
    pub entries: Vec<ScanEntry>,
}

/// Node to node (anti-entropy): merge each set into the receiver's set of
/// its key of `partition`, durably, before answering [`RepairWriteReply`].
/// Refused (`NotReplica`) unless the receiver replicates the partition.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RepairWrite {
    /// The partition.
    pub partition: u32,
    /// The keys and their canonical sets (never empty), at most
    /// [`REPAIR_ENTRIES_MAX`](crate::limits::REPAIR_ENTRIES_MAX); the
    /// whole request is held to the request frame limit.
    pub entries: Vec<ScanEntry>,
}

/// The merges of a [`RepairWrite`] are durable (empty).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RepairWriteReply {}

/// Node to node (anti-entropy): remove these keys of `partition`, each
/// only if the receiver's set of it still has the token and holds only
/// tombstones (every replica was found holding exactly that set). Refused
/// (`NotReplica`) unless the receiver replicates the partition. Answered
/// by [`ReapReply`] once the removals are durable.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReapRequest {
    /// The partition.
    pub partition: u32,
    /// The keys and their set tokens, at most
    /// [`OFFER_KEYS_MAX`](crate::limits::OFFER_KEYS_MAX).
    pub keys: Vec<OfferEntry>,
}

/// The reaps of a [`ReapRequest`] are done and durable (empty).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReapReply {}

/// The acknowledgement of a gossip push (empty).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GossipPushReply {}

/// Node to node: read the replica's sibling set of a key. Answered by
/// [`ReplicaReadReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaRead {
    /// The key's partition, as the coordinator's ring places it.
    pub partition: u32,
    /// The key.
    pub key: Vec<u8>,
}

/// A replica's sibling set of a key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaReadReply {
    /// The canonical encoding of the set; empty if the replica holds
    /// nothing for the key.
    pub set: Vec<u8>,
}

/// Node to node: merge a sibling set into the replica's set of a key and
/// make the result durable before answering [`ReplicaWriteReply`].
/// Replication, read repair (and later hinted handoff and anti-entropy)
/// all ship whole sets this way.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaWrite {
    /// The key's partition, as the coordinator's ring places it.
    pub partition: u32,
    /// The key.
    pub key: Vec<u8>,
    /// The canonical encoding of the set to merge (never empty).
    pub set: Vec<u8>,
}

/// Node to node: a [`ReplicaWrite`] to a fallback node, which holds the set
/// for `owner` (a node of the key's preference list that is down or slow)
/// and hands it over when the owner can be reached: sloppy quorum and
/// hinted handoff. The fallback merges the set and records the hint, both
/// durably, before it answers [`ReplicaWriteReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HintedWrite {
    /// The key's partition, as the coordinator's ring places it.
    pub partition: u32,
    /// The key.
    pub key: Vec<u8>,
    /// The canonical encoding of the set to merge (never empty).
    pub set: Vec<u8>,
    /// The owner the fallback holds the set for.
    pub owner: u64,
}

/// The merge was applied and is durable under the replica's sync policy.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaWriteReply {}

/// Node to node: coordinate a client request (the whole frame the client
/// sent, header included) that reached a node outside its key's
/// preference list. Answered with the client request's own reply (or an
/// [`ErrorReply`]) under this frame's request id. The receiver coordinates
/// or refuses; it never forwards again, so a disagreement about the ring
/// cannot loop.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Coordinate {
    /// The client's request frame.
    pub frame: Vec<u8>,
}

/// Node to node, at start and whenever a node learns of another: here is
/// who I am and the ring I have. Answered by [`HelloReply`] with the same
/// from the receiver.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The sender.
    pub member: Member,
    /// The sender's ring (version 0 and empty if it has none yet).
    pub ring: RingState,
}

/// The answer to a [`Hello`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HelloReply {
    /// The receiver.
    pub member: Member,
    /// The receiver's ring (version 0 and empty if it has none yet).
    pub ring: RingState,
}

/// The encoding of a dot in [`PutReply::dot`] and [`DeleteReply::dot`]: the
/// encoded version vector that holds just that dot.
pub fn encode_dot(dot: Dot) -> Vec<u8> {
    std::iter::once(dot).collect::<VersionVector>().encode()
}

/// The dot [`encode_dot`] encoded, or `None` for anything else.
pub fn decode_dot(bytes: &[u8]) -> Option<Dot> {
    let vector = VersionVector::decode(bytes).ok()?;
    let mut entries = vector.iter();
    let (actor, counter) = entries.next()?;
    if entries.next().is_some() {
        return None;
    }
    Some(Dot::new(actor, counter))
}

/// A request failed; sent under the request's id in place of its reply.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorReply {
    /// What went wrong, as an [`ErrorCode`]'s wire value (see
    /// [`ErrorReply::error_code`]).
    pub code: u16,
    /// A human-readable explanation, at most
    /// [`ERROR_MESSAGE_BYTES_MAX`] bytes.
    pub message: String,
}

impl ErrorReply {
    /// An error reply, its message cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes
    /// at a character boundary.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_BYTES_MAX {
            let mut end = ERROR_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        assert!(message.len() <= ERROR_MESSAGE_BYTES_MAX);
        ErrorReply { code: code.to_u16(), message }
    }

    /// The code, decoded.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::from_u16(self.code)
    }
}

/// What went wrong with a request.
///
/// Codes are grouped by what a client should do about them:
///
/// | codes     | meaning                                                     |
/// |-----------|-------------------------------------------------------------|
/// | 1..=99    | the request is at fault; sending it again unchanged fails   |
/// | 100..=199 | the node cannot serve it now; a retry later may succeed     |
/// | 200..=299 | the node is at fault                                        |
///
/// A code this build does not know decodes as [`Unrecognized`](Self::Unrecognized),
/// whose group still tells what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body is not a valid message of its kind, or a field is invalid.
    BadRequest,
    /// The key is longer than the node accepts.
    KeyTooLarge,
    /// The value is longer than the node accepts.
    ValueTooLarge,
    /// The frame is longer than the node accepts; the node closes the
    /// connection after sending this.
    FrameTooLarge,
    /// The context is not an encoded version vector.
    BadContext,
    /// The node does not know the frame's kind.
    UnknownKind,
    /// The node does not speak the frame's protocol version.
    UnsupportedVersion,
    /// The write would leave the key more concurrent versions than a node
    /// keeps: read the key and write with the context the read returned.
    TooManySiblings,
    /// Too few replicas are reachable to meet R or W.
    Unavailable,
    /// R or W replicas did not answer in time; a write may still have been
    /// applied on some of them.
    Timeout,
    /// The node is shedding load; retry after a pause.
    Overloaded,
    /// The node's disk is full.
    DiskFull,
    /// The node is shutting down and takes no new requests.
    ShuttingDown,
    /// The node does not replicate the partition (by its current and
    /// pending rings), so it will not take it over: the nodes' rings
    /// differ, and agree again once gossip has spread the newest.
    NotReplica,
    /// A bug or an I/O failure in the node.
    Internal,
    /// A code this build does not know.
    Unrecognized(u16),
}

impl ErrorCode {
    /// The wire value.
    pub const fn to_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::KeyTooLarge => 2,
            ErrorCode::ValueTooLarge => 3,
            ErrorCode::FrameTooLarge => 4,
            ErrorCode::BadContext => 5,
            ErrorCode::UnknownKind => 6,
            ErrorCode::UnsupportedVersion => 7,
            ErrorCode::TooManySiblings => 8,
            ErrorCode::Unavailable => 100,
            ErrorCode::Timeout => 101,
            ErrorCode::Overloaded => 102,
            ErrorCode::DiskFull => 103,
            ErrorCode::ShuttingDown => 104,
            ErrorCode::NotReplica => 105,
            ErrorCode::Internal => 200,
            ErrorCode::Unrecognized(code) => code,
        }
    }

    /// The code with this wire value; `from_u16(c).to_u16() == c` for all `c`.
    pub const fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::KeyTooLarge,
            3 => ErrorCode::ValueTooLarge,
            4 => ErrorCode::FrameTooLarge,
            5 => ErrorCode::BadContext,
            6 => ErrorCode::UnknownKind,
            7 => ErrorCode::UnsupportedVersion,
            8 => ErrorCode::TooManySiblings,
            100 => ErrorCode::Unavailable,
            101 => ErrorCode::Timeout,
            102 => ErrorCode::Overloaded,
            103 => ErrorCode::DiskFull,
            104 => ErrorCode::ShuttingDown,
            105 => ErrorCode::NotReplica,
            200 => ErrorCode::Internal,
            code => ErrorCode::Unrecognized(code),
        }
    }

    /// Whether sending the same request again later may succeed (codes
    /// 100..=199).
    pub const fn is_transient(self) -> bool {
        matches!(self.to_u16(), 100..=199)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Unrecognized(code) => write!(f, "error {code}"),
            known => write!(f, "{known:?} ({})", known.to_u16()),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A wire message: one of the structs in this module, each with its kind.
///
/// Sealed: the set of messages is the protocol, and grows only here.
pub trait Message: Archive + Sized + fmt::Debug + sealed::Sealed {
    /// The kind of frame that carries this message.
    const KIND: Kind;

    #[doc(hidden)]
    fn serialize_body(&self, out: &mut Vec<u8>);

    #[doc(hidden)]
    fn access_body(body: &[u8]) -> Result<&Self::Archived, rancor::Error>;

    #[doc(hidden)]
    fn deserialize_archived(archived: &Self::Archived) -> Result<Self, rancor::Error>;
}

macro_rules! message {
    ($($ty:ident => $kind:expr),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl Message for $ty {
            const KIND: Kind = $kind;

            fn serialize_body(&self, out: &mut Vec<u8>) {
                serialize_body(self, out);
            }

            fn access_body(body: &[u8]) -> Result<&Self::Archived, rancor::Error> {
                access_archived::<Self::Archived>(body)
            }

            fn deserialize_archived(archived: &Self::Archived) -> Result<Self, rancor::Error> {
                rkyv::deserialize::<Self, rancor::Error>(archived)
            }
        }
    )*};
}

message! {
    GetRequest => Kind::GET,
    PutRequest => Kind::PUT,
    DeleteRequest => Kind::DELETE,
    Ping => Kind::PING,
    GetReply => Kind::GET_REPLY,
    PutReply => Kind::PUT_REPLY,
    DeleteReply => Kind::DELETE_REPLY,
    Pong => Kind::PONG,
    ErrorReply => Kind::ERROR,
    RingRequest => Kind::RING,
    RingReply => Kind::RING_REPLY,
    InspectRequest => Kind::INSPECT,
    InspectReply => Kind::INSPECT_REPLY,
    StatsRequest => Kind::STATS,
    StatsReply => Kind::STATS_REPLY,
    ReplicaRead => Kind::REPLICA_READ,
    ReplicaReadReply => Kind::REPLICA_READ_REPLY,
    ReplicaWrite => Kind::REPLICA_WRITE,
    ReplicaWriteReply => Kind::REPLICA_WRITE_REPLY,
    HintedWrite => Kind::HINTED_WRITE,
    Coordinate => Kind::COORDINATE,
    Hello => Kind::HELLO,
    HelloReply => Kind::HELLO_REPLY,
    AdminRequest => Kind::ADMIN,
    AdminReply => Kind::ADMIN_REPLY,
    ScanRequest => Kind::SCAN,
    ScanReply => Kind::SCAN_REPLY,
    OfferRequest => Kind::OFFER,
    OfferReply => Kind::OFFER_REPLY,
    GossipPushReply => Kind::GOSSIP_PUSH_REPLY,
    RepairRequest => Kind::REPAIR,
    RepairReply => Kind::REPAIR_REPLY,
    TreeRequest => Kind::TREE,
    TreeReply => Kind::TREE_REPLY,
    LeafRequest => Kind::LEAF,
    LeafReply => Kind::LEAF_REPLY,
    FetchRequest => Kind::FETCH,
    FetchReply => Kind::FETCH_REPLY,
    RepairWrite => Kind::REPAIR_WRITE,
    RepairWriteReply => Kind::REPAIR_WRITE_REPLY,
    ReapRequest => Kind::REAP,
    ReapReply => Kind::REAP_REPLY,
}

/// The only function in holdfast that reads archived bytes: rkyv's checked
/// access, which validates the whole archive (bounds, alignment, UTF-8,
/// every relative pointer) before handing out a reference. Fuzzed by
/// `net/fuzz/fuzz_targets/decode_frame.rs`.
pub(crate) fn access_archived<T>(body: &[u8]) -> Result<&T, rancor::Error>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    // rkyv would refuse a misaligned archive too, but with a confusing
    // error; a misaligned body is a bug in the caller, never in the peer.
    // (An empty body has nothing to misread, and an empty buffer's pointer
    // is not necessarily aligned.)
    assert!(
        body.is_empty() || body.as_ptr().addr().is_multiple_of(BODY_ALIGNMENT),
        "message bodies must be {BODY_ALIGNMENT}-byte aligned (use a Frame or an AlignedVec)"
    );
    rkyv::access::<T, rancor::Error>(body)
}

/// An rkyv writer that appends to a buffer holding other frames and reports
/// positions relative to the start of this body, so that the archive's
/// alignment padding is computed for the body's own (aligned) start whatever
/// precedes it in the buffer.
struct BodyWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.start
    }
}

impl<E> Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

fn serialize_body<'b, T>(value: &T, out: &'b mut Vec<u8>)
where
    T: for<'a> Serialize<HighSerializer<BodyWriter<'b>, ArenaHandle<'a>, rancor::Error>>,
{
    let start = out.len();
    let writer = BodyWriter { out, start };
    // Serializing plain structs fails only if an archive outgrows rkyv's
    // 32-bit offsets, which the size limits rule out long before.
    let writer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, writer)
        .expect("a message within the size limits serializes");
    debug_assert!(writer.out.len() >= start);
}

/// Validates `body` as an archived `M` and returns a reference into it.
/// No version or kind check: that is [`Frame::access`]'s.
///
/// # Panics
///
/// If `body` does not start at a 16-byte-aligned address ([`Frame::body`]
/// always does; otherwise copy into an [`rkyv::util::AlignedVec`]).
pub fn access<M: Message>(body: &[u8]) -> Result<&M::Archived, MessageError> {
    M::access_body(body)
        .map_err(|error| MessageError::Invalid { kind: M::KIND, reason: error.to_string() })
}

/// Validates `body` as an archived `M` and copies it out.
///
/// # Panics
///
/// As [`access`].
pub fn decode<M: Message>(body: &[u8]) -> Result<M, MessageError> {
    let archived = access::<M>(body)?;
    M::deserialize_archived(archived)
        .map_err(|error| MessageError::Invalid { kind: M::KIND, reason: error.to_string() })
}

/// A whole frame carrying `message` under `request_id`.
pub fn encode_message<M: Message>(request_id: u64, message: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message_into(&mut out, request_id, message);
    out
}

/// Appends a whole frame carrying `message` to `out`, which may already hold
/// other frames: many requests or replies coalesce into one buffer and go
/// out in one write.
///
/// # Panics
///
/// If the message is larger than the protocol allows (see
/// [`crate::limits`]); callers check sizes before building messages.
pub fn encode_message_into<M: Message>(out: &mut Vec<u8>, request_id: u64, message: &M) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    message.serialize_body(out);
    finish_frame(out, start, M::KIND, request_id);
}

/// Why a frame's body is not the message it should be. The connection stays
/// usable: the receiver answers with [`MessageError::code`] and carries on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The frame is of a protocol version this build does not speak.
    #[error("protocol version {version} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The frame's version.
        version: u8,
    },
    /// The frame's kind is not one this receiver handles.
    #[error("unknown or unexpected message kind {kind}")]
    UnknownKind {
        /// The frame's kind.
        kind: Kind,
    },
    /// The frame is of another kind than the one asked for.
    #[error("expected a {expected} frame, got {found}")]
    KindMismatch {
        /// The kind asked for.
        expected: Kind,
        /// The frame's kind.
        found: Kind,
    },
    /// The body failed rkyv's validation (or its deserialization).
    #[error("invalid {kind} body: {reason}")]
    Invalid {
        /// The kind the body was validated as.
        kind: Kind,
        /// rkyv's explanation.
        reason: String,
    },
}

impl MessageError {
    /// The error code that answers a request refused for this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            MessageError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            MessageError::UnknownKind { .. } => ErrorCode::UnknownKind,
            MessageError::KindMismatch { .. } | MessageError::Invalid { .. } => {
                ErrorCode::BadRequest
            }
        }
    }
}

impl Frame {
    /// Checks the protocol version and the kind, then validates the body as
    /// an archived `M`: the only way to read a field of a received message.
    pub fn access<M: Message>(&self) -> Result<&M::Archived, MessageError> {
        if self.version() != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion { version: self.version() });
        }
        if self.kind() != M::KIND {
            return Err(MessageError::KindMismatch { expected: M::KIND, found: self.kind() });
        }
        access::<M>(self.body())
    }

    /// As [`access`](Self::access), then copies the message out.
    pub fn decode<M: Message>(&self) -> Result<M, MessageError> {
        let archived = self.access::<M>()?;
        M::deserialize_archived(archived)
            .map_err(|error| MessageError::Invalid { kind: M::KIND, reason: error.to_string() })
    }
}

/// The size limits a node applies to client requests, at most the
/// protocol's (the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// The longest key accepted.
    pub key_bytes_max: usize,
    /// The longest value accepted.
    pub value_bytes_max: usize,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits { key_bytes_max: KEY_BYTES_MAX, value_bytes_max: VALUE_BYTES_MAX }
    }
}

/// A client request, validated and checked against the node's limits, its
/// key and value borrowed from the frame (no copy) and its context decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// [`GetRequest`].
    Get {
        /// The key.
        key: &'a [u8],
        /// Replicas that must answer; 0 for the cluster's default.
        r: u8,
    },
    /// [`PutRequest`].
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// The versions the write supersedes (empty for none).
        context: VersionVector,
        /// Replicas that must acknowledge; 0 for the cluster's default.
        w: u8,
    },
    /// [`DeleteRequest`].
    Delete {
        /// The key.
        key: &'a [u8],
        /// The versions the delete supersedes (empty for none).
        context: VersionVector,
        /// Replicas that must acknowledge; 0 for the cluster's default.
        w: u8,
    },
    /// [`Ping`].
    Ping,
    /// [`RingRequest`].
    Ring,
    /// [`StatsRequest`].
    Stats,
    /// [`InspectRequest`].
    Inspect {
        /// The key.
        key: &'a [u8],
    },
    /// [`ReplicaRead`] (node to node).
    ReplicaRead {
        /// The partition the sender's ring places the key in.
        partition: u32,
        /// The key.
        key: &'a [u8],
    },
    /// [`ReplicaWrite`] (node to node).
    ReplicaWrite {
        /// The partition the sender's ring places the key in.
        partition: u32,
        /// The key.
        key: &'a [u8],
        /// The encoded sibling set to merge (decoded by the replica, which
        /// knows its limits).
        set: &'a [u8],
        /// [`HintedWrite`]: the owner the receiver holds the set for.
        hint: Option<u64>,
    },
    /// [`Coordinate`] (node to node): the wrapped client frame, unchecked.
    Coordinate {
        /// The client's whole request frame.
        frame: &'a [u8],
    },
    /// [`Hello`] (node to node).
    Hello(Hello),
    /// [`AdminRequest`].
    Admin {
        /// What to do.
        op: AdminOp,
        /// The node to change; 0 for the receiving node.
        node: u64,
    },
    /// [`ScanRequest`] (node to node).
    Scan {
        /// The partition.
        partition: u32,
        /// The key the page starts after, if any (within the key limit).
        after: Option<&'a [u8]>,
        /// Keys wanted, capped at [`SCAN_KEYS_MAX`] (at least 1).
        keys: usize,
        /// The page may end once its sets reach this many bytes, capped at
        /// [`SCAN_PAGE_BYTES_MAX`].
        bytes: usize,
    },
    /// [`OfferRequest`] (node to node), copied out.
    Offer {
        /// The partition.
        partition: u32,
        /// The keys (each within the key limit) and their set tokens.
        keys: Vec<(Vec<u8>, u64)>,
    },
    /// A [`GossipDigest`] (node to node), validated.
    GossipDigest(GossipDigest),
    /// A [`GossipPush`] (node to node), validated.
    GossipPush(GossipPush),
    /// [`RepairRequest`]: an operator's "repair now".
    Repair {
        /// The partition; `None` for every partition the node replicates.
        partition: Option<u32>,
    },
    /// [`TreeRequest`] (node to node), copied out and checked.
    TreeHashes {
        /// The partition.
        partition: u32,
        /// The level, at most [`TREE_LEVEL_MAX`].
        level: u8,
        /// The nodes of that level (each below its width), at most
        /// [`TREE_INDICES_MAX`].
        indices: Vec<u16>,
    },
    /// [`LeafRequest`] (node to node), copied out and checked.
    LeafEntries {
        /// The partition.
        partition: u32,
        /// The leaves (each below [`TREE_LEAVES`]), at most
        /// [`LEAF_LEAVES_MAX`].
        leaves: Vec<u16>,
    },
    /// [`FetchRequest`] (node to node), copied out and checked.
    Fetch {
        /// The partition.
        partition: u32,
        /// The keys (each within the key limit), at most
        /// [`FETCH_KEYS_MAX`].
        keys: Vec<Vec<u8>>,
        /// The reply may end once its sets reach this many bytes, capped
        /// at [`FETCH_PAGE_BYTES_MAX`].
        bytes: usize,
    },
    /// [`RepairWrite`] (node to node): keys (each within the key limit)
    /// and their encoded sets, borrowed (decoded by the replica, which
    /// knows its limits), at most [`REPAIR_ENTRIES_MAX`].
    RepairWrite {
        /// The partition.
        partition: u32,
        /// The keys and their encoded sets.
        entries: Vec<(&'a [u8], &'a [u8])>,
    },
    /// [`ReapRequest`] (node to node), copied out.
    Reap {
        /// The partition.
        partition: u32,
        /// The keys (each within the key limit) and their set tokens, at
        /// most [`OFFER_KEYS_MAX`].
        keys: Vec<(Vec<u8>, u64)>,
    },
}

/// Why a node refuses a client's frame. Every variant is answered with an
/// [`ErrorReply`] ([`RequestError::to_reply`]) under the frame's request id,
/// and the connection stays open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The frame's version, kind or body is wrong.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The key is longer than the node's limit.
    #[error("key of {len} bytes, more than the limit of {max}")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the node's limit.
    #[error("value of {len} bytes, more than the limit of {max}")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The context does not decode.
    #[error("bad context: {0}")]
    BadContext(#[from] ClockDecodeError),
    /// A gossip body failed its checks.
    #[error("bad gossip message: {0}")]
    Membership(#[from] MembershipError),
    /// A field is out of its range (an unknown admin op, too many keys).
    #[error("{0}")]
    BadField(String),
}

impl RequestError {
    /// The code that answers this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Message(error) => error.code(),
            RequestError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
            RequestError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            RequestError::BadContext(_) => ErrorCode::BadContext,
            RequestError::Membership(MembershipError::Frame(error)) => error.code(),
            RequestError::Membership(_) | RequestError::BadField(_) => ErrorCode::BadRequest,
        }
    }

    /// The reply that tells the client.
    pub fn to_reply(&self) -> ErrorReply {
        ErrorReply::new(self.code(), self.to_string())
    }
}

impl<'a> Request<'a> {
    /// Validates a frame a client sent: protocol version, kind, the body
    /// (rkyv's checked access), key and value lengths against `limits`, and
    /// the context's encoding.
    pub fn parse(frame: &'a Frame, limits: &RequestLimits) -> Result<Request<'a>, RequestError> {
        if frame.version() != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion { version: frame.version() }.into());
        }
        let request = match frame.kind() {
            Kind::GET => {
                let get = frame.access::<GetRequest>()?;
                Request::Get { key: check_key(&get.key, limits)?, r: get.r }
            }
            Kind::PUT => {
                let put = frame.access::<PutRequest>()?;
                let key = check_key(&put.key, limits)?;
                let value = put.value.as_slice();
                if value.len() > limits.value_bytes_max {
                    return Err(RequestError::ValueTooLarge {
                        len: value.len(),
                        max: limits.value_bytes_max,
                    });
                }
                Request::Put { key, value, context: decode_context(&put.context)?, w: put.w }
            }
            Kind::DELETE => {
                let delete = frame.access::<DeleteRequest>()?;
                let key = check_key(&delete.key, limits)?;
                Request::Delete { key, context: decode_context(&delete.context)?, w: delete.w }
            }
            Kind::PING => {
                frame.access::<Ping>()?;
                Request::Ping
            }
            Kind::RING => {
                frame.access::<RingRequest>()?;
                Request::Ring
            }
            Kind::INSPECT => {
                let inspect = frame.access::<InspectRequest>()?;
                Request::Inspect { key: check_key(&inspect.key, limits)? }
            }
            Kind::STATS => {
                frame.access::<StatsRequest>()?;
                Request::Stats
            }
            Kind::REPLICA_READ => {
                let read = frame.access::<ReplicaRead>()?;
                let key = check_key(&read.key, limits)?;
                Request::ReplicaRead { partition: read.partition.to_native(), key }
            }
            Kind::REPLICA_WRITE => {
                let write = frame.access::<ReplicaWrite>()?;
                let key = check_key(&write.key, limits)?;
                Request::ReplicaWrite {
                    partition: write.partition.to_native(),
                    key,
                    set: write.set.as_slice(),
                    hint: None,
                }
            }
            Kind::HINTED_WRITE => {
                let write = frame.access::<HintedWrite>()?;
                let key = check_key(&write.key, limits)?;
                Request::ReplicaWrite {
                    partition: write.partition.to_native(),
                    key,
                    set: write.set.as_slice(),
                    hint: Some(write.owner.to_native()),
                }
            }
            Kind::COORDINATE => {
                let coordinate = frame.access::<Coordinate>()?;
                Request::Coordinate { frame: coordinate.frame.as_slice() }
            }
            Kind::HELLO => Request::Hello(frame.decode::<Hello>()?),
            Kind::ADMIN => {
                let admin = frame.access::<AdminRequest>()?;
                let Some(op) = AdminOp::from_u8(admin.op) else {
                    return Err(RequestError::BadField(format!("unknown admin op {}", admin.op)));
                };
                Request::Admin { op, node: admin.node.to_native() }
            }
            Kind::SCAN => {
                let scan = frame.access::<ScanRequest>()?;
                let after = if scan.resume {
                    Some(check_key(&scan.after, limits)?)
                } else if scan.after.is_empty() {
                    None
                } else {
                    return Err(RequestError::BadField("a scan's cursor without resume".into()));
                };
                Request::Scan {
                    partition: scan.partition.to_native(),
                    after,
                    keys: (scan.keys.to_native() as usize).clamp(1, SCAN_KEYS_MAX),
                    bytes: (scan.bytes.to_native() as usize).min(SCAN_PAGE_BYTES_MAX),
                }
            }
            Kind::OFFER => {
                let offer = frame.access::<OfferRequest>()?;
                if offer.keys.len() > OFFER_KEYS_MAX {
                    let count = offer.keys.len();
                    let message =
                        format!("{count} keys offered, over the limit of {OFFER_KEYS_MAX}");
                    return Err(RequestError::BadField(message));
                }
                let mut keys = Vec::with_capacity(offer.keys.len());
                for entry in offer.keys.iter() {
                    keys.push((check_key(&entry.key, limits)?.to_vec(), entry.token.to_native()));
                }
                Request::Offer { partition: offer.partition.to_native(), keys }
            }
            Kind::GOSSIP_DIGEST => {
                Request::GossipDigest(GossipDigest::from_frame(frame, Kind::GOSSIP_DIGEST)?)
            }
            Kind::GOSSIP_PUSH => {
                Request::GossipPush(GossipPush::from_frame(frame, Kind::GOSSIP_PUSH)?)
            }
            Kind::REPAIR => {
                let repair = frame.access::<RepairRequest>()?;
                let partition = repair.partition.to_native();
                if repair.all && partition != 0 {
                    let message = "a repair of every partition names no partition";
                    return Err(RequestError::BadField(message.into()));
                }
                Request::Repair { partition: (!repair.all).then_some(partition) }
            }
            Kind::TREE => {
                let tree = frame.access::<TreeRequest>()?;
                let level = tree.level;
                if level > TREE_LEVEL_MAX {
                    let message =
                        format!("tree level {level} is below the leaves ({TREE_LEVEL_MAX})");
                    return Err(RequestError::BadField(message));
                }
                let width = TREE_FANOUT.pow(u32::from(level));
                let indices = check_indices(&tree.indices, TREE_INDICES_MAX, width, "tree nodes")?;
                Request::TreeHashes { partition: tree.partition.to_native(), level, indices }
            }
            Kind::LEAF => {
                let leaf = frame.access::<LeafRequest>()?;
                let leaves = check_indices(&leaf.leaves, LEAF_LEAVES_MAX, TREE_LEAVES, "leaves")?;
                Request::LeafEntries { partition: leaf.partition.to_native(), leaves }
            }
            Kind::FETCH => {
                let fetch = frame.access::<FetchRequest>()?;
                if fetch.keys.len() > FETCH_KEYS_MAX {
                    let count = fetch.keys.len();
                    let message =
                        format!("{count} keys fetched, over the limit of {FETCH_KEYS_MAX}");
                    return Err(RequestError::BadField(message));
                }
                let mut keys = Vec::with_capacity(fetch.keys.len());
                for key in fetch.keys.iter() {
                    keys.push(check_key(key, limits)?.to_vec());
                }
                Request::Fetch {
                    partition: fetch.partition.to_native(),
                    keys,
                    bytes: (fetch.bytes.to_native() as usize).min(FETCH_PAGE_BYTES_MAX),
                }
            }
            Kind::REAP => {
                let reap = frame.access::<ReapRequest>()?;
                if reap.keys.len() > OFFER_KEYS_MAX {
                    let count = reap.keys.len();
                    let message =
                        format!("{count} keys to reap, over the limit of {OFFER_KEYS_MAX}");
                    return Err(RequestError::BadField(message));
                }
                let mut keys = Vec::with_capacity(reap.keys.len());
                for entry in reap.keys.iter() {
                    keys.push((check_key(&entry.key, limits)?.to_vec(), entry.token.to_native()));
                }
                Request::Reap { partition: reap.partition.to_native(), keys }
            }
            Kind::REPAIR_WRITE => {
                let repair = frame.access::<RepairWrite>()?;
                if repair.entries.len() > REPAIR_ENTRIES_MAX {
                    let count = repair.entries.len();
                    let message =
                        format!("{count} sets to repair, over the limit of {REPAIR_ENTRIES_MAX}");
                    return Err(RequestError::BadField(message));
                }
                let mut entries = Vec::with_capacity(repair.entries.len());
                for entry in repair.entries.iter() {
                    let key = check_key(&entry.key, limits)?;
                    if entry.set.is_empty() {
                        return Err(RequestError::BadField("an empty set to repair".into()));
                    }
                    entries.push((key, entry.set.as_slice()));
                }
                Request::RepairWrite { partition: repair.partition.to_native(), entries }
            }
            kind => return Err(MessageError::UnknownKind { kind }.into()),
        };
        Ok(request)
    }

    /// The kind of frame this request came in.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Get { .. } => Kind::GET,
            Request::Put { .. } => Kind::PUT,
            Request::Delete { .. } => Kind::DELETE,
            Request::Ping => Kind::PING,
            Request::Ring => Kind::RING,
            Request::Inspect { .. } => Kind::INSPECT,
            Request::Stats => Kind::STATS,
            Request::ReplicaRead { .. } => Kind::REPLICA_READ,
            Request::ReplicaWrite { hint: None, .. } => Kind::REPLICA_WRITE,
            Request::ReplicaWrite { hint: Some(_), .. } => Kind::HINTED_WRITE,
            Request::Coordinate { .. } => Kind::COORDINATE,
            Request::Hello(_) => Kind::HELLO,
            Request::Admin { .. } => Kind::ADMIN,
            Request::Scan { .. } => Kind::SCAN,
            Request::Offer { .. } => Kind::OFFER,
            Request::GossipDigest(_) => Kind::GOSSIP_DIGEST,
            Request::GossipPush(_) => Kind::GOSSIP_PUSH,
            Request::Repair { .. } => Kind::REPAIR,
            Request::TreeHashes { .. } => Kind::TREE,
            Request::LeafEntries { .. } => Kind::LEAF,
            Request::Fetch { .. } => Kind::FETCH,
            Request::RepairWrite { .. } => Kind::REPAIR_WRITE,
            Request::Reap { .. } => Kind::REAP,
        }
    }
}

/// Tree node indices (or leaves) as a request names them: at most `count`,
/// each below `width`.
fn check_indices(
    indices: &[rkyv::rend::u16_le],
    count: usize,
    width: usize,
    what: &str,
) -> Result<Vec<u16>, RequestError> {
    if indices.len() > count {
        let len = indices.len();
        return Err(RequestError::BadField(format!("{len} {what}, over the limit of {count}")));
    }
    let mut checked = Vec::with_capacity(indices.len());
    for index in indices {
        let index = index.to_native();
        if usize::from(index) >= width {
            return Err(RequestError::BadField(format!("{what}: {index} is not below {width}")));
        }
        checked.push(index);
    }
    Ok(checked)
}

fn check_key<'a>(key: &'a [u8], limits: &RequestLimits) -> Result<&'a [u8], RequestError> {
    if key.len() > limits.key_bytes_max {
        return Err(RequestError::KeyTooLarge { len: key.len(), max: limits.key_bytes_max });
    }
    Ok(key)
}

/// An empty context means "none": the empty version vector.
fn decode_context(bytes: &[u8]) -> Result<VersionVector, ClockDecodeError> {
    if bytes.is_empty() { Ok(VersionVector::new()) } else { VersionVector::decode(bytes) }
}

/// Any reply a client can receive, copied out of its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// [`GetReply`].
    Get(GetReply),
    /// [`PutReply`].
    Put(PutReply),
    /// [`DeleteReply`].
    Delete(DeleteReply),
    /// [`Pong`].
    Pong(Pong),
    /// [`RingReply`].
    Ring(RingReply),
    /// [`InspectReply`].
    Inspect(InspectReply),
    /// [`StatsReply`].
    Stats(StatsReply),
    /// [`AdminReply`].
    Admin(AdminReply),
    /// [`RepairReply`].
    Repair(RepairReply),
    /// [`ErrorReply`].
    Error(ErrorReply),
}

impl Reply {
    /// Validates and copies out a reply frame of any known reply kind.
    pub fn decode(frame: &Frame) -> Result<Reply, MessageError> {
        if frame.version() != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion { version: frame.version() });
        }
        Ok(match frame.kind() {
            Kind::GET_REPLY => Reply::Get(frame.decode()?),
            Kind::PUT_REPLY => Reply::Put(frame.decode()?),
            Kind::DELETE_REPLY => Reply::Delete(frame.decode()?),
            Kind::PONG => Reply::Pong(frame.decode()?),
            Kind::RING_REPLY => Reply::Ring(frame.decode()?),
            Kind::INSPECT_REPLY => Reply::Inspect(frame.decode()?),
            Kind::STATS_REPLY => Reply::Stats(frame.decode()?),
            Kind::ADMIN_REPLY => Reply::Admin(frame.decode()?),
            Kind::REPAIR_REPLY => Reply::Repair(frame.decode()?),
            Kind::ERROR => Reply::Error(frame.decode()?),
            kind => return Err(MessageError::UnknownKind { kind }),
        })
    }

    /// The kind of frame this reply came in.
    pub fn kind(&self) -> Kind {
        match self {
            Reply::Get(_) => Kind::GET_REPLY,
            Reply::Put(_) => Kind::PUT_REPLY,
            Reply::Delete(_) => Kind::DELETE_REPLY,
            Reply::Pong(_) => Kind::PONG,
            Reply::Ring(_) => Kind::RING_REPLY,
            Reply::Inspect(_) => Kind::INSPECT_REPLY,
            Reply::Stats(_) => Kind::STATS_REPLY,
            Reply::Admin(_) => Kind::ADMIN_REPLY,
            Reply::Repair(_) => Kind::REPAIR_REPLY,
            Reply::Error(_) => Kind::ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_BYTES_MAX_DEFAULT;

    fn frame(bytes: &[u8]) -> Frame {
        Frame::from_bytes(bytes, FRAME_BYTES_MAX_DEFAULT).expect("an encoded frame decodes")
    }

    #[test]
    fn empty_messages_round_trip() {
        let ping = frame(&encode_message(9, &Ping {}));
        assert_eq!(ping.kind(), Kind::PING);
        assert_eq!(ping.decode::<Ping>(), Ok(Ping {}));
        assert_eq!(frame(&encode_message(9, &Pong {})).decode::<Pong>(), Ok(Pong {}));
    }

    #[test]
    fn error_codes_round_trip_through_their_wire_values() {
        for code in 0..=u16::MAX {
            assert_eq!(ErrorCode::from_u16(code).to_u16(), code);
        }
        assert!(ErrorCode::Overloaded.is_transient());
        assert!(!ErrorCode::BadRequest.is_transient());
        assert!(ErrorCode::Unrecognized(150).is_transient());
    }

    #[test]
    fn error_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(ERROR_MESSAGE_BYTES_MAX);
        let reply = ErrorReply::new(ErrorCode::Internal, long);
        assert_eq!(reply.message.len(), ERROR_MESSAGE_BYTES_MAX);
        assert_eq!(reply.error_code(), ErrorCode::Internal);
    }

    #[test]
    fn frames_coalesced_in_one_buffer_keep_aligned_bodies() {
        // A one-byte key makes the first frame's length odd, so the second
        // body starts misaligned within `out`; its archive must not care.
        let mut out = Vec::new();
        encode_message_into(&mut out, 1, &GetRequest { key: vec![1], r: 0 });
        encode_message_into(&mut out, 2, &GetReply { values: vec![vec![7; 3]], context: vec![] });
        let mut decoder = crate::frame::FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        let first = decoder.decode(&out).expect("valid");
        let second = decoder.decode(&out[first.consumed..]).expect("valid");
        assert_eq!(
            first.frame.expect("whole").decode::<GetRequest>(),
            Ok(GetRequest { key: vec![1], r: 0 })
        );
        assert_eq!(
            second.frame.expect("whole").decode::<GetReply>(),
            Ok(GetReply { values: vec![vec![7; 3]], context: vec![] })
        );
    }

    #[test]
    fn access_checks_version_and_kind_before_the_body() {
        let get = frame(&encode_message(3, &GetRequest { key: b"k".to_vec(), r: 2 }));
        assert_eq!(
            get.access::<PutRequest>().map(|_| ()),
            Err(MessageError::KindMismatch { expected: Kind::PUT, found: Kind::GET })
        );
        let archived = get.access::<GetRequest>().expect("valid");
        assert_eq!(archived.key.as_slice(), b"k");
        assert_eq!(archived.r, 2);
    }

    #[test]
    fn transfer_and_admin_requests_parse_with_their_limits() {
        let limits = RequestLimits::default();
        let scan = ScanRequest {
            partition: 7,
            resume: true,
            after: b"k".to_vec(),
            keys: 0,
            bytes: u32::MAX,
        };
        let scan = frame(&encode_message(1, &scan));
        assert_eq!(
            Request::parse(&scan, &limits),
            Ok(Request::Scan {
                partition: 7,
                after: Some(&b"k"[..]),
                keys: 1,
                bytes: SCAN_PAGE_BYTES_MAX
            })
        );
        let cursorless = ScanRequest { after: b"k".to_vec(), ..ScanRequest::default() };
        let cursorless = frame(&encode_message(1, &cursorless));
        assert!(matches!(Request::parse(&cursorless, &limits), Err(RequestError::BadField(_))));
        let offer =
            OfferRequest { partition: 3, keys: vec![OfferEntry { key: b"a".to_vec(), token: 9 }] };
        let offer = frame(&encode_message(1, &offer));
        assert_eq!(
            Request::parse(&offer, &limits),
            Ok(Request::Offer { partition: 3, keys: vec![(b"a".to_vec(), 9)] })
        );
        let too_many =
            OfferRequest { partition: 3, keys: vec![OfferEntry::default(); OFFER_KEYS_MAX + 1] };
        let too_many = frame(&encode_message(1, &too_many));
        assert_eq!(
            Request::parse(&too_many, &limits).map_err(|error| error.code()),
            Err(ErrorCode::BadRequest)
        );
        let leave =
            frame(&encode_message(1, &AdminRequest { op: AdminOp::Leave.as_u8(), node: 0 }));
        assert_eq!(
            Request::parse(&leave, &limits),
            Ok(Request::Admin { op: AdminOp::Leave, node: 0 })
        );
        let unknown = frame(&encode_message(1, &AdminRequest { op: 9, node: 0 }));
        assert!(matches!(Request::parse(&unknown, &limits), Err(RequestError::BadField(_))));
        let reply = AdminReply { node: 5, status: 2, message: "leaving".into() };
        assert_eq!(Reply::decode(&frame(&encode_message(1, &reply))), Ok(Reply::Admin(reply)));
        assert_eq!(ErrorCode::from_u16(105), ErrorCode::NotReplica);
        assert!(ErrorCode::NotReplica.is_transient());
    }

    #[test]
    #[should_panic(expected = "aligned")]
    fn a_misaligned_body_is_a_caller_bug() {
        let mut bytes = rkyv::util::AlignedVec::<16>::new();
        bytes.extend_from_slice(&[0; 17]);
        let _ = access::<Ping>(&bytes[1..]);
    }
}
