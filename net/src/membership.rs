//! Membership as it travels in gossip: who is in the cluster, in what
//! status, the ring and the pending ring, with the merge rule that makes
//! every node's copy converge.
//!
//! # Records and the merge rule
//!
//! Every node is described by one [`MemberRecord`]: its [`Member`] (id,
//! address, weight, zone), its [`MemberStatus`], a `version` and `ready`
//! (which ring change it has pulled its data for: see below). The version
//! is bumped by whoever changes the record: the node itself when it starts
//! or restarts, or an operator command issued on its behalf at any node.
//! Two records of the same id are ordered by [`MemberRecord::precedence`]:
//!
//! 1. a `Left` record beats every record that is not `Left`, whatever the
//!    versions (`Left` is final: see below);
//! 2. then the higher `version` wins;
//! 3. at equal versions, the later status wins (`Left > Leaving > Up >
//!    Joining`), so an operator's "leave" issued concurrently with the
//!    node's own restart is not lost;
//! 4. then the record whose member fields and `ready` hash higher
//!    ([`MemberRecord::check`], xxh3 with the default seed) wins, and,
//!    should two different records ever hash the same, the fields compared
//!    in order (member fields, then `ready`) decide.
//!
//! That is a total order on the records of one id, and merging keeps the
//! maximum, so merge is commutative, associative and idempotent: nodes may
//! receive records in any order, any number of times, and still agree. The
//! same holds for rings ([`ring_precedence`]): the higher
//! [`RingState::version`] wins, then the higher [`ring_check`], then the
//! fields. A [`GossipState`] merges record by record, and its two rings
//! each by that rule ([`GossipState::merge`]).
//!
//! `Left` is a tombstone, kept forever so that a removed node does not come
//! back through stale gossip, nor through a removed node that restarts
//! (bumping its version) before it hears that it was removed: rule 1 makes
//! `Left` absorbing. An id that has left never rejoins; a replacement node
//! takes a new id. Tombstones count towards [`MEMBERS_MAX`].
//!
//! # The ring and the next ring
//!
//! A state holds two rings: `ring`, the one requests are routed by, and
//! `next`, a pending ring that has been proposed but is not routed by yet
//! (or the empty ring). `next` is pending only while its version is above
//! `ring`'s; once it is installed (`ring` set to it) the two are equal and
//! nothing is pending. The two merge independently, by the same rule, so
//! this module knows nothing of when a ring is proposed or installed: the
//! engine's `cluster::gossip` decides that, from the state alone.
//!
//! A node that gains partitions in the pending ring pulls them, then
//! re-issues its record with `ready` set to [`ready_token`] of the current
//! and the pending ring's keys: a hash naming the change it is ready for,
//! not just a version. Two nodes that saw different records can propose
//! different rings of the same version at once, and only one of them wins;
//! a node that pulled for the loser must not be counted ready for the
//! winner, and its token tells them apart (short of a 2^-64 collision).
//!
//! # Why versions, not timestamps
//!
//! A version says "derived from the previous record": only a change made
//! after seeing version `v` is issued as `v + 1`. A timestamp would let a
//! node with a fast clock overrule changes made after its own, and a slow
//! one lose its changes; versions order changes by what their issuers had
//! seen, and need no synchronized clocks.
//!
//! # Wire types
//!
//! Plain rkyv 0.8 structs like [`RingState`]: integers, strings and vectors,
//! statuses as `u8`, booleans; no maps, no `Option`, no shared pointers
//! (rkyv's validator has had bugs in those, see [`crate::message`]). Every
//! type is read only through its `decode` (or `from_frame`), which runs
//! rkyv's validating access over the whole archive and then the type's
//! `validate`, and never panics on bad input. The push-pull exchange that
//! carries them is described in the engine's `cluster::gossip`:
//!
//! | message          | from      | body                                                          |
//! |------------------|-----------|---------------------------------------------------------------|
//! | [`GossipDigest`] | initiator | its own record, `(id, stamp)` per record, both ring keys      |
//! | [`GossipReply`]  | receiver  | the records and rings it holds newer, what it wants           |
//! | [`GossipPush`]   | initiator | the records (and rings) the receiver wanted                   |
//!
//! They travel as node-to-node frames (`net/PROTOCOL.md`): a digest is a
//! `GOSSIP_DIGEST` request answered by `GOSSIP_REPLY`, a push is a
//! `GOSSIP_PUSH` request answered by an empty `GOSSIP_PUSH_REPLY`;
//! [`GossipDigest::to_frame`] and friends take the kind as an argument.
//!
//! ```
//! use holdfast_net::membership::{GossipState, MemberRecord, MemberStatus};
//! use holdfast_net::ring::{Member, Ring};
//!
//! let member = Member { id: 7, addr: "10.0.0.7:7070".into(), weight: 1, zone: String::new() };
//! let mut here = GossipState::default();
//! here.merge_record(&MemberRecord::new(member.clone(), MemberStatus::Up, 3));
//! let mut there = GossipState::default();
//! there.merge_record(&MemberRecord::new(member.clone(), MemberStatus::Left, 2));
//!
//! // Left is final, even at a lower version, in whichever order states meet.
//! let mut merged = here.clone();
//! merged.merge(&there);
//! there.merge(&here);
//! assert_eq!(merged, there);
//! assert_eq!(merged.record(7).and_then(|r| r.status()), Some(MemberStatus::Left));
//!
//! // A pending ring travels beside the current one and merges by the same rule.
//! let ring = Ring::new(64, vec![member], 1)?;
//! here.merge_ring(&ring.state());
//! here.merge_next(&ring.rebalance(ring.members().to_vec())?.state());
//! assert!(here.next_key() > here.ring_key());
//! merged.merge(&here);
//! assert_eq!((merged.ring_key(), merged.next_key()), (here.ring_key(), here.next_key()));
//!
//! let bytes = merged.encode();
//! assert_eq!(GossipState::decode(&bytes)?, merged);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Ordering;

use rkyv::api::high::{HighDeserializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use crate::frame::{BODY_ALIGNMENT, Frame, Kind, PROTOCOL_VERSION, encode_frame};
use crate::message::MessageError;
use crate::ring::{Member, NodeId, PARTITIONS_MAX, Ring, RingError, RingState};

/// The most member records (tombstones included) a state, digest or want
/// list may hold: a ring has at most [`PARTITIONS_MAX`] members, and a
/// cluster that removed that many nodes should start over.
pub const MEMBERS_MAX: usize = PARTITIONS_MAX as usize;

/// Where a node is in its life in the cluster. On the wire it is a `u8`
/// ([`MemberStatus::as_u8`]); the order of the variants is the order the
/// merge rule uses at equal versions (`Left` is the latest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum MemberStatus {
    /// Known to the cluster, not yet serving (not yet in the ring, or being
    /// handed its partitions).
    Joining = 0,
    /// Serving.
    Up = 1,
    /// Asked to leave: handing its partitions away.
    Leaving = 2,
    /// Removed. Final: the record stays as a tombstone and beats any other
    /// record of its id.
    Left = 3,
}

impl MemberStatus {
    /// Every status, in merge order.
    pub const ALL: [MemberStatus; 4] =
        [MemberStatus::Joining, MemberStatus::Up, MemberStatus::Leaving, MemberStatus::Left];

    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The status with this wire value, if there is one.
    pub const fn from_u8(byte: u8) -> Option<MemberStatus> {
        match byte {
            0 => Some(MemberStatus::Joining),
            1 => Some(MemberStatus::Up),
            2 => Some(MemberStatus::Leaving),
            3 => Some(MemberStatus::Left),
            _ => None,
        }
    }
}

/// One node as gossip knows it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MemberRecord {
    /// Who the node is and where it is reached.
    pub member: Member,
    /// A [`MemberStatus`] wire value.
    pub status: u8,
    /// Bumped by whoever changes the record; see the module docs.
    pub version: u64,
    /// The ring change this node has pulled every partition it gains in:
    /// the [`ready_token`] of the current and the pending ring as it saw
    /// them, or 0 for none. Only the node itself sets it; others compare it
    /// with the token of the change they hold.
    pub ready: u64,
}

/// What decides between two records of one id, short of comparing their
/// fields: ordered as the merge rule orders records (the field order here
/// is the rule's order). A digest carries it instead of the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The record's status is `Left`.
    pub left: bool,
    /// The record's version.
    pub version: u64,
    /// The record's status byte.
    pub status: u8,
    /// [`MemberRecord::check`].
    pub check: u64,
}

impl MemberRecord {
    /// A record of `member` in `status` at `version`, ready for nothing.
    pub fn new(member: Member, status: MemberStatus, version: u64) -> MemberRecord {
        MemberRecord { member, status: status.as_u8(), version, ready: 0 }
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.member.id
    }

    /// The status, or `None` for a byte no status has (refused by
    /// [`validate`](Self::validate)).
    pub fn status(&self) -> Option<MemberStatus> {
        MemberStatus::from_u8(self.status)
    }

    /// Whether the record is a tombstone.
    pub fn is_left(&self) -> bool {
        self.status == MemberStatus::Left.as_u8()
    }

    /// The xxh3 (default seed) of the member's fields, then `ready`, in a
    /// fixed encoding: the same in every process, so digests can compare
    /// records by it.
    pub fn check(&self) -> u64 {
        let mut hasher = Xxh3Default::new();
        hash_member(&mut hasher, &self.member);
        hasher.update(&self.ready.to_le_bytes());
        hasher.digest()
    }

    /// What the merge rule looks at first.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            left: self.is_left(),
            version: self.version,
            status: self.status,
            check: self.check(),
        }
    }

    /// The merge rule's order between two records of the same id (see the
    /// module docs): `Greater` if `self` wins over `other`. Total: `Equal`
    /// only for equal records.
    pub fn precedence(&self, other: &MemberRecord) -> Ordering {
        (self.is_left(), self.version, self.status)
            .cmp(&(other.is_left(), other.version, other.status))
            .then_with(|| {
                if self.member == other.member && self.ready == other.ready {
                    Ordering::Equal
                } else {
                    self.check()
                        .cmp(&other.check())
                        .then_with(|| compare_members(&self.member, &other.member))
                        .then_with(|| self.ready.cmp(&other.ready))
                }
            })
    }

    /// Checks the status byte and the member's fields (weight at least 1,
    /// address and zone within their limits).
    pub fn validate(&self) -> Result<(), MembershipError> {
        let id = self.id();
        if self.status().is_none() {
            return Err(MembershipError::UnknownStatus { id, status: self.status });
        }
        self.member.validate()?;
        Ok(())
    }
}

/// What decides between two rings, short of comparing their fields:
/// ordered as [`ring_precedence`] orders rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RingKey {
    /// [`RingState::version`]; 0 only for the empty ring (no ring yet).
    pub version: u64,
    /// [`ring_check`].
    pub check: u64,
}

/// The xxh3 (default seed) of a ring's partition count, members and owners
/// in a fixed encoding (the version is not included: it is compared first).
pub fn ring_check(ring: &RingState) -> u64 {
    let mut hasher = Xxh3Default::new();
    hasher.update(&ring.partitions.to_le_bytes());
    hasher.update(&(ring.members.len() as u64).to_le_bytes());
    for member in &ring.members {
        hash_member(&mut hasher, member);
    }
    hasher.update(&(ring.owners.len() as u64).to_le_bytes());
    // Owners in blocks: one update per owner is slow where it is not
    // inlined (debug builds), and a ring has up to 65536 of them.
    let mut block = [0u8; 256];
    for owners in ring.owners.chunks(block.len() / 4) {
        for (bytes, owner) in block.chunks_exact_mut(4).zip(owners) {
            bytes.copy_from_slice(&owner.to_le_bytes());
        }
        hasher.update(&block[..owners.len() * 4]);
    }
    hasher.digest()
}

/// The ring's [`RingKey`].
pub fn ring_key(ring: &RingState) -> RingKey {
    RingKey { version: ring.version, check: ring_check(ring) }
}

/// What a node sets [`MemberRecord::ready`] to once it has pulled every
/// partition it gains going from the ring with key `ring` to the one with
/// key `next`: the xxh3 (default seed) of both keys, never 0 (0 is "ready
/// for nothing").
///
/// Both keys, not a version: rings proposed at once from different views
/// share a version, and what a node gains differs between them, and
/// between current rings too (a node pulls against its own current ring).
/// A token names the exact change, so readiness for one change is never
/// taken for readiness for another.
pub fn ready_token(ring: RingKey, next: RingKey) -> u64 {
    let mut hasher = Xxh3Default::new();
    for word in [ring.version, ring.check, next.version, next.check] {
        hasher.update(&word.to_le_bytes());
    }
    hasher.digest().max(1)
}

/// The merge rule's order between two rings: `Greater` if `a` wins. The
/// higher version, then the higher [`ring_check`], then the fields in order
/// (partition count, members, owners). Total: `Equal` only for equal rings.
pub fn ring_precedence(a: &RingState, b: &RingState) -> Ordering {
    a.version.cmp(&b.version).then_with(|| {
        if a == b {
            return Ordering::Equal;
        }
        ring_check(a).cmp(&ring_check(b)).then_with(|| {
            a.partitions
                .cmp(&b.partitions)
                .then_with(|| {
                    a.members
                        .iter()
                        .zip(&b.members)
                        .map(|(x, y)| compare_members(x, y))
                        .find(|ordering| ordering.is_ne())
                        .unwrap_or_else(|| a.members.len().cmp(&b.members.len()))
                })
                .then_with(|| a.owners.cmp(&b.owners))
        })
    })
}

/// Everything one node knows about the cluster: a record per node (sorted
/// by id, ids unique, at most [`MEMBERS_MAX`]), the newest ring it has
/// seen and the newest pending ring (see the module docs). The empty ring
/// ([`RingState::default`], version 0) means no ring yet; any other ring
/// has a version of at least 1 and passes [`Ring::from_state`]. Nothing
/// relates the two rings here: `next` at or below `ring`'s version is
/// simply not pending.
///
/// A node persists this, and a part of it (some records, maybe a ring)
/// travels as the delta of a [`GossipReply`] or [`GossipPush`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GossipState {
    /// One record per node, sorted by id.
    pub members: Vec<MemberRecord>,
    /// The ring, or the empty ring.
    pub ring: RingState,
    /// The pending ring, or the empty ring. Pending only while its version
    /// is above `ring`'s.
    pub next: RingState,
}

/// What a [`GossipState::merge`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// The ids whose record changed (new ones included), ascending.
    pub members: Vec<NodeId>,
    /// Whether the ring changed.
    pub ring: bool,
    /// Records of new ids left out because the state was at [`MEMBERS_MAX`].
    pub dropped: usize,
    /// Whether the pending ring changed.
    pub next: bool,
}

impl Merged {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.ring || self.next || !self.members.is_empty()
    }
}

impl GossipState {
    /// A checked state with nothing pending: `members` (in any order)
    /// sorted by id, then [`validate`](Self::validate)d. (A pending ring is
    /// proposed by the engine's gossip, or added with
    /// [`merge_next`](Self::merge_next).)
    pub fn new(
        mut members: Vec<MemberRecord>,
        ring: RingState,
    ) -> Result<GossipState, MembershipError> {
        members.sort_by_key(MemberRecord::id);
        let state = GossipState { members, ring, next: RingState::default() };
        state.validate()?;
        Ok(state)
    }

    /// Checks every record ([`MemberRecord::validate`]), that ids are sorted
    /// and unique and at most [`MEMBERS_MAX`], and both rings: each the
    /// empty ring at version 0, else a ring [`Ring::from_state`] accepts.
    pub fn validate(&self) -> Result<(), MembershipError> {
        check_count("members", self.members.len())?;
        check_sorted("members", self.members.iter().map(MemberRecord::id))?;
        for record in &self.members {
            record.validate()?;
        }
        check_ring(&self.ring)?;
        check_ring(&self.next)
    }

    /// The record of `id`.
    pub fn record(&self, id: NodeId) -> Option<&MemberRecord> {
        self.index_of(id).ok().map(|index| &self.members[index])
    }

    /// The ring's [`RingKey`].
    pub fn ring_key(&self) -> RingKey {
        ring_key(&self.ring)
    }

    /// The pending ring's [`RingKey`] (whether or not it is pending).
    pub fn next_key(&self) -> RingKey {
        ring_key(&self.next)
    }

    /// Merges one record: keeps whichever of it and the record of its id
    /// wins ([`MemberRecord::precedence`]). Returns whether the state
    /// changed. A new id is refused (returning `false`) when the state
    /// already holds [`MEMBERS_MAX`] records.
    pub fn merge_record(&mut self, record: &MemberRecord) -> bool {
        match self.index_of(record.id()) {
            Ok(index) => {
                if record.precedence(&self.members[index]).is_gt() {
                    self.members[index] = record.clone();
                    true
                } else {
                    false
                }
            }
            Err(index) => {
                if self.members.len() >= MEMBERS_MAX {
                    return false;
                }
                self.members.insert(index, record.clone());
                true
            }
        }
    }

    /// Merges a ring: keeps whichever wins ([`ring_precedence`]). Returns
    /// whether the ring changed.
    pub fn merge_ring(&mut self, ring: &RingState) -> bool {
        if ring_precedence(ring, &self.ring).is_gt() {
            self.ring = ring.clone();
            true
        } else {
            false
        }
    }

    /// Merges a pending ring, by the same rule as
    /// [`merge_ring`](Self::merge_ring). Returns whether `next` changed.
    pub fn merge_next(&mut self, next: &RingState) -> bool {
        if ring_precedence(next, &self.next).is_gt() {
            self.next = next.clone();
            true
        } else {
            false
        }
    }

    /// Merges `other` into `self`, record by record and ring by ring: the join
    /// of the two states, commutative, associative and idempotent (as long
    /// as the union of ids stays within [`MEMBERS_MAX`]; beyond it, new ids
    /// that do not fit are left out and counted in [`Merged::dropped`]).
    /// `other` is assumed valid; [`decode`](Self::decode) makes sure of it.
    /// Linear in the size of both.
    pub fn merge(&mut self, other: &GossipState) -> Merged {
        let mut merged = Merged {
            ring: self.merge_ring(&other.ring),
            next: self.merge_next(&other.next),
            ..Merged::default()
        };
        if other.members.is_empty() {
            return merged;
        }
        let ours = std::mem::take(&mut self.members);
        let mut members = Vec::with_capacity(ours.len().max(other.members.len()));
        let mut ours = ours.into_iter().peekable();
        let mut theirs = other.members.iter().peekable();
        loop {
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(mine), Some(their)) => mine.id().cmp(&their.id()),
            };
            match order {
                Ordering::Less => members.extend(ours.next()),
                Ordering::Greater => {
                    let Some(their) = theirs.next() else { break };
                    // Own records are never dropped, so count them all.
                    if members.len() + ours.len() < MEMBERS_MAX {
                        merged.members.push(their.id());
                        members.push(their.clone());
                    } else {
                        merged.dropped += 1;
                    }
                }
                Ordering::Equal => {
                    let (Some(mine), Some(their)) = (ours.next(), theirs.next()) else { break };
                    if their.precedence(&mine).is_gt() {
                        merged.members.push(their.id());
                        members.push(their.clone());
                    } else {
                        members.push(mine);
                    }
                }
            }
        }
        self.members = members;
        merged
    }

    /// A digest of this state for a push-pull exchange started by `from`
    /// (the sender's own record, so a receiver that never heard of it can
    /// answer).
    pub fn digest(&self, from: MemberRecord) -> GossipDigest {
        let RingKey { version: ring_version, check: ring_check } = self.ring_key();
        let RingKey { version: next_version, check: next_check } = self.next_key();
        GossipDigest {
            from,
            members: self.members.iter().map(DigestEntry::of).collect(),
            ring_version,
            ring_check,
            next_version,
            next_check,
        }
    }

    /// A stable 64-bit hash of the whole state (xxh3 with the default
    /// seed over every record's id and stamp and both rings' keys): equal
    /// states have equal fingerprints in every process, so a test or an
    /// operator can check that nodes agree.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Xxh3Default::new();
        hasher.update(&(self.members.len() as u64).to_le_bytes());
        for record in &self.members {
            hasher.update(&record.id().to_le_bytes());
            hasher.update(&record.version.to_le_bytes());
            hasher.update(&[record.status]);
            hasher.update(&record.check().to_le_bytes());
        }
        for RingKey { version, check } in [self.ring_key(), self.next_key()] {
            hasher.update(&version.to_le_bytes());
            hasher.update(&check.to_le_bytes());
        }
        hasher.digest()
    }

    fn index_of(&self, id: NodeId) -> Result<usize, usize> {
        self.members.binary_search_by_key(&id, MemberRecord::id)
    }
}

/// One record in a [`GossipDigest`]: its id and [`Stamp`] (`left` is implied
/// by the status).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DigestEntry {
    /// The node's id.
    pub id: u64,
    /// Its record's version.
    pub version: u64,
    /// Its record's status byte.
    pub status: u8,
    /// Its record's [`MemberRecord::check`].
    pub check: u64,
}

impl DigestEntry {
    /// The entry that stands for `record`.
    pub fn of(record: &MemberRecord) -> DigestEntry {
        let Stamp { version, status, check, .. } = record.stamp();
        DigestEntry { id: record.id(), version, status, check }
    }

    /// The stamp of the record this entry stands for.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            left: self.status == MemberStatus::Left.as_u8(),
            version: self.version,
            status: self.status,
            check: self.check,
        }
    }
}

/// The first step of a push-pull exchange: what the initiator holds, as
/// stamps (about 32 bytes a record) and ring keys, not records and rings.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GossipDigest {
    /// The initiator's own record: who to answer, and how to reach it.
    pub from: MemberRecord,
    /// One entry per record the initiator holds, sorted by id, ids unique.
    pub members: Vec<DigestEntry>,
    /// The initiator's [`RingKey::version`].
    pub ring_version: u64,
    /// The initiator's [`RingKey::check`].
    pub ring_check: u64,
    /// The [`RingKey::version`] of the initiator's pending ring.
    pub next_version: u64,
    /// The [`RingKey::check`] of the initiator's pending ring.
    pub next_check: u64,
}

impl GossipDigest {
    /// The initiator's ring key.
    pub fn ring_key(&self) -> RingKey {
        RingKey { version: self.ring_version, check: self.ring_check }
    }

    /// The initiator's pending ring's key.
    pub fn next_key(&self) -> RingKey {
        RingKey { version: self.next_version, check: self.next_check }
    }

    /// Checks the sender's record, and that entries are sorted by id,
    /// unique, at most [`MEMBERS_MAX`], with known statuses.
    pub fn validate(&self) -> Result<(), MembershipError> {
        self.from.validate()?;
        check_count("digest entries", self.members.len())?;
        check_sorted("digest entries", self.members.iter().map(|entry| entry.id))?;
        match self.members.iter().find(|entry| MemberStatus::from_u8(entry.status).is_none()) {
            Some(entry) => {
                Err(MembershipError::UnknownStatus { id: entry.id, status: entry.status })
            }
            None => Ok(()),
        }
    }
}

/// The second step: the receiver's answer to a [`GossipDigest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GossipReply {
    /// The receiver's id.
    pub from: u64,
    /// The receiver's records that win over the digest's (or that the
    /// digest lacks), and each of its rings that wins over the digest's
    /// (else the empty ring in its place).
    pub delta: GossipState,
    /// The ids whose record in the digest wins over the receiver's (or that
    /// it lacks), sorted, unique: the initiator pushes these.
    pub wants: Vec<u64>,
    /// Whether the digest's ring wins over the receiver's.
    pub wants_ring: bool,
    /// Whether the digest's pending ring wins over the receiver's.
    pub wants_next: bool,
}

impl GossipReply {
    /// Checks the delta ([`GossipState::validate`]) and that `wants` is
    /// sorted, unique and at most [`MEMBERS_MAX`].
    pub fn validate(&self) -> Result<(), MembershipError> {
        self.delta.validate()?;
        check_count("wants", self.wants.len())?;
        check_sorted("wants", self.wants.iter().copied())
    }
}

/// The third step: the records (and rings) a [`GossipReply`] asked for.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GossipPush {
    /// The initiator's id.
    pub from: u64,
    /// The records asked for, and each ring if asked for (else the empty
    /// ring in its place).
    pub delta: GossipState,
}

impl GossipPush {
    /// Checks the delta ([`GossipState::validate`]).
    pub fn validate(&self) -> Result<(), MembershipError> {
        self.delta.validate()
    }
}

/// Why gossip bytes or a gossip value were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipError {
    /// The bytes are not an archive of the expected type (rkyv's
    /// validation or deserialization failed).
    #[error("invalid {what} archive: {reason}")]
    Archive {
        /// The type expected.
        what: &'static str,
        /// rkyv's explanation.
        reason: String,
    },
    /// The frame is of another protocol version or kind than expected.
    #[error(transparent)]
    Frame(#[from] MessageError),
    /// A list is longer than [`MEMBERS_MAX`].
    #[error("{count} {what}, over the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A list is not sorted by id.
    #[error("{what} must be sorted by id, but {id} follows {previous}")]
    Unsorted {
        /// Which list.
        what: &'static str,
        /// The id before.
        previous: NodeId,
        /// The smaller id after it.
        id: NodeId,
    },
    /// An id appears twice in a list.
    #[error("{what}: {id} appears more than once")]
    Duplicate {
        /// Which list.
        what: &'static str,
        /// The repeated id.
        id: NodeId,
    },
    /// A status byte names no [`MemberStatus`].
    #[error("member {id} has unknown status {status}")]
    UnknownStatus {
        /// The member.
        id: NodeId,
        /// The byte.
        status: u8,
    },
    /// A ring at version 0 that is not the empty ring (version 0 means "no
    /// ring yet").
    #[error("a ring at version 0 must be empty")]
    RingVersionZero,
    /// The ring is refused by [`Ring::from_state`], or a member by
    /// [`Member::validate`] (weight 0, address or zone too long).
    #[error("bad ring or member: {0}")]
    Ring(#[from] RingError),
}

fn check_count(what: &'static str, count: usize) -> Result<(), MembershipError> {
    if count > MEMBERS_MAX {
        return Err(MembershipError::TooMany { what, count, max: MEMBERS_MAX });
    }
    Ok(())
}

fn check_sorted(
    what: &'static str,
    mut ids: impl Iterator<Item = NodeId>,
) -> Result<(), MembershipError> {
    let Some(mut previous) = ids.next() else { return Ok(()) };
    for id in ids {
        match previous.cmp(&id) {
            Ordering::Less => {}
            Ordering::Equal => return Err(MembershipError::Duplicate { what, id }),
            Ordering::Greater => return Err(MembershipError::Unsorted { what, previous, id }),
        }
        previous = id;
    }
    Ok(())
}

fn check_ring(ring: &RingState) -> Result<(), MembershipError> {
    if ring.version == 0 {
        return if *ring == RingState::default() {
            Ok(())
        } else {
            Err(MembershipError::RingVersionZero)
        };
    }
    Ring::from_state(ring.clone())?;
    Ok(())
}

/// A member's fields in a fixed encoding: id, then each string as its
/// length and bytes, weight between.
fn hash_member(hasher: &mut Xxh3Default, member: &Member) {
    hasher.update(&member.id.to_le_bytes());
    hasher.update(&(member.addr.len() as u64).to_le_bytes());
    hasher.update(member.addr.as_bytes());
    hasher.update(&member.weight.to_le_bytes());
    hasher.update(&(member.zone.len() as u64).to_le_bytes());
    hasher.update(member.zone.as_bytes());
}

fn compare_members(a: &Member, b: &Member) -> Ordering {
    a.id.cmp(&b.id)
        .then_with(|| a.addr.as_bytes().cmp(b.addr.as_bytes()))
        .then_with(|| a.weight.cmp(&b.weight))
        .then_with(|| a.zone.as_bytes().cmp(b.zone.as_bytes()))
}

/// rkyv's checked access (`message::access_archived`, the one function
/// that reads archived bytes: bytecheck over the whole archive before any
/// field is read), then a copy out, for the gossip types.
///
/// Deserializing allocates in proportion to the body: rkyv's validator
/// lets no two objects claim the same bytes, so a small body cannot
/// describe a large value.
fn decode_archive<T>(what: &'static str, body: &[u8]) -> Result<T, MembershipError>
where
    T: Archive,
    T::Archived: Portable
        + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let invalid =
        |error: rancor::Error| MembershipError::Archive { what, reason: error.to_string() };
    // rkyv reads fields in place, so the archive must be aligned; a body at
    // another address (a slice of a larger buffer) is copied first.
    let copy;
    let body = if body.as_ptr().addr().is_multiple_of(BODY_ALIGNMENT) {
        body
    } else {
        let mut aligned = AlignedVec::<BODY_ALIGNMENT>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        copy = aligned;
        &copy[..]
    };
    let archived = crate::message::access_archived::<T::Archived>(body).map_err(invalid)?;
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(invalid)
}

fn check_frame(frame: &Frame, kind: Kind) -> Result<(), MembershipError> {
    if frame.version() != PROTOCOL_VERSION {
        return Err(MessageError::UnsupportedVersion { version: frame.version() }.into());
    }
    if frame.kind() != kind {
        return Err(MessageError::KindMismatch { expected: kind, found: frame.kind() }.into());
    }
    Ok(())
}

macro_rules! codec {
    ($($ty:ident),* $(,)?) => {$(
        impl $ty {
            /// The rkyv archive of this value: a frame body, or what a node
            /// persists. Archived as `message.rs` archives message bodies.
            ///
            /// # Panics
            ///
            /// Only if the archive outgrows rkyv's 32-bit offsets, which
            /// [`MEMBERS_MAX`] and the field limits rule out for valid values.
            pub fn encode(&self) -> AlignedVec {
                rkyv::to_bytes::<rancor::Error>(self).expect("a gossip value serializes")
            }

            /// Validates `body` (rkyv's checked access, then
            /// [`validate`](Self::validate)) and copies the value out.
            /// Never panics; `body` may sit at any address.
            pub fn decode(body: &[u8]) -> Result<$ty, MembershipError> {
                let value: $ty = decode_archive(stringify!($ty), body)?;
                value.validate()?;
                Ok(value)
            }

            /// A whole frame of `kind` carrying this value under `request_id`.
            pub fn to_frame(&self, kind: Kind, request_id: u64) -> Vec<u8> {
                encode_frame(kind, request_id, &self.encode())
            }

            /// Checks the frame's protocol version and that it is of `kind`,
            /// then [`decode`](Self::decode)s its body.
            pub fn from_frame(frame: &Frame, kind: Kind) -> Result<$ty, MembershipError> {
                check_frame(frame, kind)?;
                $ty::decode(frame.body())
            }
        }
    )*};
}

codec!(MemberRecord, GossipState, GossipDigest, GossipReply, GossipPush);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_BYTES_MAX_DEFAULT;
    use crate::ring::ZONE_BYTES_MAX;

    fn member(id: u64) -> Member {
        Member { id, addr: format!("10.0.0.{id}:7070"), weight: 1, zone: format!("z{}", id % 3) }
    }

    fn record(id: u64, status: MemberStatus, version: u64) -> MemberRecord {
        MemberRecord::new(member(id), status, version)
    }

    fn ring(ids: &[u64], version: u64) -> RingState {
        Ring::new(64, ids.iter().map(|&id| member(id)).collect(), version)
            .expect("a valid ring")
            .state()
    }

    /// Three records, a ring and a pending ring.
    fn state() -> GossipState {
        let mut state = GossipState::new(
            vec![
                record(3, MemberStatus::Up, 2),
                record(1, MemberStatus::Joining, 1),
                record(9, MemberStatus::Left, 7),
            ],
            ring(&[1, 3], 4),
        )
        .expect("a valid state");
        assert!(state.merge_next(&ring(&[1, 3, 5], 5)));
        state
    }

    #[test]
    fn every_type_round_trips_through_bytes_and_frames() {
        let state = state();
        assert_eq!(GossipState::decode(&state.encode()), Ok(state.clone()));
        let digest = state.digest(record(1, MemberStatus::Joining, 1));
        assert_eq!(GossipDigest::decode(&digest.encode()), Ok(digest.clone()));
        let reply = GossipReply {
            from: 3,
            delta: state.clone(),
            wants: vec![1, 2],
            wants_ring: true,
            wants_next: false,
        };
        assert_eq!(GossipReply::decode(&reply.encode()), Ok(reply.clone()));
        let push = GossipPush { from: 1, delta: state.clone() };
        assert_eq!(GossipPush::decode(&push.encode()), Ok(push.clone()));
        let one = record(5, MemberStatus::Leaving, 9);
        assert_eq!(MemberRecord::decode(&one.encode()), Ok(one));
        assert_eq!(
            GossipState::decode(&GossipState::default().encode()),
            Ok(GossipState::default())
        );

        let kind = Kind::new(0x85);
        let bytes = digest.to_frame(kind, 42);
        let frame = Frame::from_bytes(&bytes, FRAME_BYTES_MAX_DEFAULT).expect("a whole frame");
        assert_eq!(frame.request_id(), 42);
        assert_eq!(GossipDigest::from_frame(&frame, kind), Ok(digest));
        assert_eq!(
            GossipDigest::from_frame(&frame, Kind::new(0x86)),
            Err(MembershipError::Frame(MessageError::KindMismatch {
                expected: Kind::new(0x86),
                found: kind
            }))
        );
    }

    #[test]
    fn decoding_accepts_a_misaligned_body() {
        let bytes = state().encode();
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert_eq!(GossipState::decode(&shifted[1..]), Ok(state()));
    }

    #[test]
    fn malformed_bytes_are_refused_without_panicking() {
        let bytes = state().encode();
        // Every truncation, and every single bit flipped, is refused or
        // decodes to a value that passed validation.
        for len in 0..bytes.len() {
            if let Ok(decoded) = GossipState::decode(&bytes[..len]) {
                assert_eq!(decoded.validate(), Ok(()));
            }
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            if let Ok(decoded) = GossipState::decode(&flipped) {
                assert_eq!(decoded.validate(), Ok(()));
            }
            let _ = GossipDigest::decode(&flipped);
            let _ = GossipReply::decode(&flipped);
        }
        assert!(matches!(GossipState::decode(&[]), Err(MembershipError::Archive { .. })));
        assert!(matches!(GossipDigest::decode(&[0xff; 7]), Err(MembershipError::Archive { .. })));
    }

    #[test]
    fn invalid_values_are_refused_after_archive_checks() {
        let cases: Vec<(GossipState, MembershipError)> = vec![
            (
                GossipState {
                    members: vec![record(2, MemberStatus::Up, 1), record(1, MemberStatus::Up, 1)],
                    ..GossipState::default()
                },
                MembershipError::Unsorted { what: "members", previous: 2, id: 1 },
            ),
            (
                GossipState {
                    members: vec![record(2, MemberStatus::Up, 1), record(2, MemberStatus::Up, 2)],
                    ..GossipState::default()
                },
                MembershipError::Duplicate { what: "members", id: 2 },
            ),
            (
                GossipState {
                    members: vec![MemberRecord { status: 4, ..record(1, MemberStatus::Up, 1) }],
                    ..GossipState::default()
                },
                MembershipError::UnknownStatus { id: 1, status: 4 },
            ),
            (
                GossipState {
                    members: vec![MemberRecord {
                        member: Member { weight: 0, ..member(1) },
                        ..record(1, MemberStatus::Up, 1)
                    }],
                    ..GossipState::default()
                },
                MembershipError::Ring(RingError::ZeroWeight { id: 1 }),
            ),
            (
                GossipState {
                    members: vec![MemberRecord {
                        member: Member { zone: "z".repeat(ZONE_BYTES_MAX + 1), ..member(1) },
                        ..record(1, MemberStatus::Up, 1)
                    }],
                    ..GossipState::default()
                },
                MembershipError::Ring(RingError::FieldTooLong {
                    id: 1,
                    field: "zone",
                    bytes: ZONE_BYTES_MAX + 1,
                    bytes_max: ZONE_BYTES_MAX,
                }),
            ),
            (
                GossipState {
                    ring: RingState { version: 0, ..ring(&[1], 1) },
                    ..GossipState::default()
                },
                MembershipError::RingVersionZero,
            ),
            (
                GossipState {
                    ring: RingState { owners: vec![0; 63], ..ring(&[1], 1) },
                    ..GossipState::default()
                },
                MembershipError::Ring(RingError::OwnersLength { owners: 63, partitions: 64 }),
            ),
            (
                GossipState {
                    next: RingState { version: 0, ..ring(&[1], 1) },
                    ..GossipState::default()
                },
                MembershipError::RingVersionZero,
            ),
            (
                GossipState { next: RingState { owners: vec![3; 64], ..ring(&[1], 2) }, ..state() },
                MembershipError::Ring(RingError::OwnerOutOfRange {
                    partition: 0,
                    index: 3,
                    members: 1,
                }),
            ),
        ];
        for (state, error) in cases {
            assert_eq!(state.validate(), Err(error.clone()));
            // The archive itself is fine; the value is what is refused.
            assert_eq!(GossipState::decode(&state.encode()), Err(error));
        }

        let digest = GossipDigest {
            members: vec![DigestEntry { id: 1, ..DigestEntry::default() }; 2],
            ..GossipDigest::default()
        };
        assert_eq!(
            GossipDigest::decode(
                &GossipDigest { from: record(1, MemberStatus::Up, 1), ..digest }.encode()
            ),
            Err(MembershipError::Duplicate { what: "digest entries", id: 1 })
        );
        let reply = GossipReply { wants: vec![0; MEMBERS_MAX + 1], ..GossipReply::default() };
        assert_eq!(
            GossipReply::decode(&reply.encode()),
            Err(MembershipError::TooMany {
                what: "wants",
                count: MEMBERS_MAX + 1,
                max: MEMBERS_MAX
            })
        );
    }

    #[test]
    fn merge_follows_the_rule() {
        let up = |version| record(1, MemberStatus::Up, version);
        // The higher version wins.
        assert!(up(3).precedence(&up(2)).is_gt());
        // At equal versions, the later status.
        assert!(record(1, MemberStatus::Leaving, 2).precedence(&up(2)).is_gt());
        assert!(up(2).precedence(&record(1, MemberStatus::Joining, 2)).is_gt());
        // Left beats any version.
        assert!(record(1, MemberStatus::Left, 1).precedence(&up(1000)).is_gt());
        assert!(
            record(1, MemberStatus::Left, 2).precedence(&record(1, MemberStatus::Left, 1)).is_gt()
        );
        // Same stamp but other fields: decided by the check, either way round.
        let moved =
            MemberRecord { member: Member { addr: "elsewhere:1".into(), ..member(1) }, ..up(2) };
        assert_eq!(moved.precedence(&up(2)), up(2).precedence(&moved).reverse());
        assert!(moved.precedence(&up(2)).is_ne());
        assert_eq!(up(2).precedence(&up(2)), Ordering::Equal);

        let mut a = state();
        let b = GossipState::new(
            vec![
                record(1, MemberStatus::Up, 2),
                record(3, MemberStatus::Up, 1),
                record(4, MemberStatus::Up, 1),
            ],
            ring(&[1, 3, 4], 5),
        )
        .expect("valid");
        let merged = a.merge(&b);
        assert_eq!(merged, Merged { members: vec![1, 4], ring: true, dropped: 0, next: false });
        assert_eq!(a.record(1), Some(&record(1, MemberStatus::Up, 2)));
        assert_eq!(a.record(3), Some(&record(3, MemberStatus::Up, 2)));
        assert_eq!(a.ring.version, 5);
        assert_eq!(a.validate(), Ok(()));
        assert!(!a.clone().merge(&b).changed(), "merge is idempotent");
    }

    #[test]
    fn rings_order_by_version_then_deterministically() {
        let (a, b) = (ring(&[1, 2], 3), ring(&[1, 3], 3));
        assert!(ring_precedence(&ring(&[1], 4), &a).is_gt());
        assert_eq!(ring_precedence(&a, &b), ring_precedence(&b, &a).reverse());
        assert!(ring_precedence(&a, &b).is_ne());
        assert!(ring_precedence(&a, &RingState::default()).is_gt());
        assert_eq!(ring_precedence(&a, &a.clone()), Ordering::Equal);
    }

    #[test]
    fn ready_is_part_of_a_record() {
        let plain = record(1, MemberStatus::Up, 2);
        let ready = MemberRecord { ready: 5, ..plain.clone() };
        assert_eq!(plain.ready, 0, "a new record is ready for nothing");
        assert_ne!(ready.check(), plain.check(), "digests tell them apart");
        // At equal stamps but for the check, the order is total and
        // antisymmetric; equal only when ready is equal too.
        assert!(ready.precedence(&plain).is_ne());
        assert_eq!(ready.precedence(&plain), plain.precedence(&ready).reverse());
        assert_eq!(ready.precedence(&ready.clone()), Ordering::Equal);
        // The version still comes first.
        assert!(record(1, MemberStatus::Up, 3).precedence(&ready).is_gt());
        let mut state = GossipState::new(vec![plain.clone()], RingState::default()).expect("valid");
        let winner = if ready.precedence(&plain).is_gt() { &ready } else { &plain };
        state.merge_record(&ready);
        assert_eq!(state.record(1), Some(winner));
        assert_eq!(MemberRecord::decode(&ready.encode()), Ok(ready));
    }

    #[test]
    fn the_pending_ring_merges_by_the_ring_rule() {
        let mut a = GossipState::new(vec![], ring(&[1, 3], 4)).expect("valid");
        assert_eq!(a.next, RingState::default(), "nothing pending in a new state");
        let b = state();
        let merged = a.merge(&b);
        assert_eq!(merged, Merged { members: vec![1, 3, 9], ring: false, dropped: 0, next: true });
        assert_eq!(a.next_key(), b.next_key());
        // A ring of the same version: the rule decides, the same either way.
        let rival = ring(&[1, 3, 7], 5);
        let mut c = a.clone();
        let rival_wins = c.merge_next(&rival);
        assert_eq!(rival_wins, ring_precedence(&rival, &b.next).is_gt());
        let mut d = GossipState { next: rival.clone(), ..GossipState::default() };
        d.merge_next(&b.next);
        assert_eq!(d.next, c.next);
        // A newer pending ring wins; an older one does not.
        assert!(a.merge_next(&ring(&[1], 6)));
        assert!(!a.merge_next(&ring(&[1, 3, 5], 5)));
        assert_eq!(a.next.version, 6);
        // The digest carries both keys.
        let digest = a.digest(record(1, MemberStatus::Up, 1));
        assert_eq!((digest.ring_key(), digest.next_key()), (a.ring_key(), a.next_key()));
        // Ready tokens name the change: both keys matter, and none is 0.
        let (r4, r5) = (ring_key(&ring(&[1, 3], 4)), ring_key(&ring(&[1, 3, 5], 5)));
        let other = ring_key(&ring(&[1, 3, 7], 5));
        assert_ne!(ready_token(r4, r5), ready_token(r4, other));
        assert_ne!(ready_token(r4, r5), ready_token(other, r5));
        assert_ne!(ready_token(r4, r5), 0);
        assert_eq!(ready_token(r4, r5), ready_token(r4, r5));
    }

    #[test]
    fn fingerprints_and_checks_are_pinned() {
        // Pinned: nodes compare these across processes and builds, so a
        // change to the hashed encoding must be deliberate (and makes mixed
        // clusters exchange records they already agree on until upgraded).
        assert_eq!(GossipState::default().fingerprint(), 13187080914691385202);
        assert_eq!(record(1, MemberStatus::Up, 1).check(), 15937066596610807097);
        assert_eq!(ring_check(&ring(&[1, 3], 4)), 14214613038445125198);
        assert_eq!(state().fingerprint(), 16129408737463714284);

        let mut other = state();
        other.merge_record(&record(3, MemberStatus::Leaving, 2));
        assert_ne!(other.fingerprint(), state().fingerprint());
        let mut other = state();
        other.merge_ring(&ring(&[1, 3], 5));
        assert_ne!(other.fingerprint(), state().fingerprint());
        let mut other = state();
        other.merge_next(&ring(&[1, 3], 6));
        assert_ne!(other.fingerprint(), state().fingerprint());
        let mut other = state();
        other.merge_record(&MemberRecord { ready: 1, ..record(3, MemberStatus::Up, 3) });
        let mut unready = state();
        unready.merge_record(&record(3, MemberStatus::Up, 3));
        assert_ne!(other.fingerprint(), unready.fingerprint());
    }
}
