//! The ring: which nodes hold which keys.
//!
//! # Partitions
//!
//! Dynamo's third strategy: the key space (the 64-bit xxh3 hash of a key) is
//! cut into `Q` equal, fixed partitions, `Q` a power of two chosen when the
//! cluster is created ([`PARTITIONS_DEFAULT`]), and a key's partition is the
//! top `log2 Q` bits of its hash ([`partition_of`]). Nodes own whole
//! partitions. Because partition boundaries never move, the partition is the
//! unit of everything else: a shard owns partitions, the store iterates one
//! partition for handoff, anti-entropy keeps one Merkle tree per partition,
//! and a membership change hands over whole partitions without re-hashing or
//! splitting a key range. The price is that `Q` bounds the cluster: at most
//! `Q` members, and balance no finer than one partition, so `Q` should be a
//! few hundred times the expected node count.
//!
//! # Assignment
//!
//! - Quotas: each member's share of `Q` is proportional to its weight,
//!   rounded by the largest-remainder method (ties to the lower id), so a
//!   member owns the floor or the ceiling of `Q * weight / total_weight`. A
//!   member whose share rounds to zero still gets one partition, from the
//!   largest quota: a member that owns nothing would only confuse operators.
//! - Interleaving: one walk over the partitions deals each partition that
//!   needs an owner to a member under quota, on a schedule: a member due
//!   `deficit` partitions gets its `k`th at `(k + phase) / deficit` of the
//!   way through the deal, the phase staggering members of equal rates. So
//!   equal weights deal round robin and unequal weights a smooth weighted
//!   sequence. Within [`SPREAD_WINDOW`] partitions of the schedule the walk
//!   prefers a member that owns none of the neighbouring partitions (the
//!   `SPREAD_WINDOW - 1` on either side, fewer for a member owning so much
//!   it cannot avoid them); beyond that, the schedule wins, so nobody is
//!   starved early and crowded at the end. A bounded repair pass then swaps
//!   owners to remove collisions left (typically at the wrap). The goal,
//!   Riak's claim goal, is that any [`SPREAD_WINDOW`] consecutive partitions
//!   have distinct owners, so that a preference list of three is the next
//!   three partitions. Equal weights from four members on meet it; it cannot
//!   always be met: three members never divide a power of two, so a window
//!   at the wrap repeats one; a member owning over a third of the ring must
//!   neighbour itself; and a rebalance that moves as little as possible
//!   leaves the rest of the ring as it was. The preference walk skips
//!   repeats, so a miss costs a step, never a replica.
//! - Rebalancing ([`Ring::rebalance`]) keeps every partition whose owner
//!   stays and is within its new quota. In the same walk, partitions of
//!   departed members are dealt out, and each member over quota releases its
//!   surplus evenly among its partitions (deferring a release to its next
//!   partition while nobody could take this one without a collision). The
//!   repair pass then makes only swaps that move no more partitions. So
//!   exactly the partitions that must move do: those of departed members,
//!   and each member's surplus over its new quota.
//!
//! # Preference lists
//!
//! The replicas of partition `p` are found by walking `p, p+1, ...`
//! (wrapping) and taking each owner not yet chosen ([`Ring::preference_list`]).
//! When members have zones, a first walk also skips a member whose zone is
//! already in the list while some zone is missing; a second walk fills what
//! is left with anyone not yet chosen. A member with an empty zone is a zone
//! of its own.
//!
//! # Determinism
//!
//! Clients compute preference lists too, so the ring is a pure value that
//! every process derives identically: no randomness, clocks, floating point
//! or hash-map iteration. Members are kept sorted by id, every tie is broken
//! by id, and the result does not depend on the order members were given in.
//! A ring travels as a [`RingState`] and is re-validated by
//! [`Ring::from_state`], which refuses anything malformed without panicking.
//!
//! ```
//! use holdfast_net::ring::{Member, Ring};
//!
//! let member = |id: u64, zone: &str| Member {
//!     id,
//!     addr: format!("10.0.0.{id}:7070"),
//!     weight: 1,
//!     zone: zone.to_string(),
//! };
//! let ring = Ring::new(1024, vec![member(1, "a"), member(2, "b"), member(3, "c")], 1)?;
//! let partition = ring.partition_of(b"cart:alice");
//! let replicas = ring.preference_list(partition, 3);
//! assert_eq!(replicas.len(), 3);
//! assert_eq!(replicas[0], ring.owner(partition));
//!
//! // A fourth node takes about a quarter of the partitions, from everyone.
//! let bigger = ring.rebalance(vec![member(1, "a"), member(2, "b"), member(3, "c"), member(4, "a")])?;
//! assert_eq!(bigger.partitions_of(4).len(), 256);
//! assert_eq!(Ring::from_state(bigger.state())?, bigger);
//! # Ok::<(), holdfast_net::ring::RingError>(())
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rkyv::{Archive, Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// A node's identity in the cluster.
pub type NodeId = u64;

/// The default number of partitions.
pub const PARTITIONS_DEFAULT: u32 = 1024;
/// The most partitions a ring may have (and so the most members).
pub const PARTITIONS_MAX: u32 = 1 << 16;
/// The longest [`Member::addr`], in bytes.
pub const ADDR_BYTES_MAX: usize = 256;
/// The longest [`Member::zone`], in bytes.
pub const ZONE_BYTES_MAX: usize = 64;
/// How many consecutive partitions assignment tries to give distinct owners:
/// the usual replica count.
pub const SPREAD_WINDOW: usize = 3;

/// Swaps the repair pass may consider, per partition: it bounds the work
/// where the spread goal cannot be met.
const REPAIR_BUDGET_PER_PARTITION: usize = 64;
/// A partition without an owner, during assignment. Never a member index:
/// there are at most [`PARTITIONS_MAX`] members.
const UNASSIGNED: u32 = u32::MAX;

/// One node as the ring knows it. (The default, weight 0, is no valid
/// member; it exists for messages that default their fields.)
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Member {
    /// The node's id.
    pub id: NodeId,
    /// Where peers and clients reach it (`host:port`), at most
    /// [`ADDR_BYTES_MAX`] bytes.
    pub addr: String,
    /// Its capacity relative to the other members; partitions are assigned
    /// in proportion. At least 1.
    pub weight: u32,
    /// Its failure domain (rack, availability zone), at most
    /// [`ZONE_BYTES_MAX`] bytes; empty means a zone of its own.
    pub zone: String,
}

impl Member {
    /// Checks the fields every holder of a member relies on: weight at
    /// least 1, address and zone within their limits.
    pub fn validate(&self) -> Result<(), RingError> {
        let id = self.id;
        if self.weight == 0 {
            return Err(RingError::ZeroWeight { id });
        }
        for (field, bytes, bytes_max) in
            [("addr", self.addr.len(), ADDR_BYTES_MAX), ("zone", self.zone.len(), ZONE_BYTES_MAX)]
        {
            if bytes > bytes_max {
                return Err(RingError::FieldTooLong { id, field, bytes, bytes_max });
            }
        }
        Ok(())
    }
}

/// The ring as it travels: a plain rkyv wire type (integers, strings and
/// vectors), turned back into a [`Ring`] only through [`Ring::from_state`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct RingState {
    /// Incremented by every rebalance; the newer ring wins in gossip.
    pub version: u64,
    /// `Q`: a power of two in `1..=PARTITIONS_MAX`.
    pub partitions: u32,
    /// The members, sorted by id, ids unique.
    pub members: Vec<Member>,
    /// For each partition, its owner as an index into `members`.
    pub owners: Vec<u32>,
}

/// Why a ring could not be built or accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The partition count is not a power of two in `1..=PARTITIONS_MAX`.
    #[error("partitions must be a power of two in 1..={PARTITIONS_MAX}, not {partitions}")]
    BadPartitions {
        /// The partition count given.
        partitions: u32,
    },
    /// A ring needs a member.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// Every member needs a partition of its own.
    #[error("{members} members for {partitions} partitions: every member needs a partition")]
    TooManyMembers {
        /// How many members were given.
        members: usize,
        /// The partition count.
        partitions: u32,
    },
    /// Two members have the same id.
    #[error("member {id} appears more than once")]
    DuplicateMember {
        /// The repeated id.
        id: NodeId,
    },
    /// A ring state's members are not sorted by id.
    #[error("members must be sorted by id, but {id} follows {previous}")]
    MembersUnsorted {
        /// The id before.
        previous: NodeId,
        /// The smaller id after it.
        id: NodeId,
    },
    /// A member has weight 0 (remove it instead).
    #[error("member {id} has weight 0")]
    ZeroWeight {
        /// The member.
        id: NodeId,
    },
    /// A member's address or zone is too long.
    #[error("member {id}'s {field} is {bytes} bytes, over the limit of {bytes_max}")]
    FieldTooLong {
        /// The member.
        id: NodeId,
        /// `"addr"` or `"zone"`.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// A ring state does not have one owner per partition.
    #[error("{owners} owners for {partitions} partitions")]
    OwnersLength {
        /// How many owners it has.
        owners: usize,
        /// The partition count.
        partitions: u32,
    },
    /// A partition's owner is not a member.
    #[error(
        "partition {partition} is owned by member index {index}, but there are {members} members"
    )]
    OwnerOutOfRange {
        /// The partition.
        partition: u32,
        /// The owner index it names.
        index: u32,
        /// How many members there are.
        members: usize,
    },
    /// The ring's version cannot be incremented.
    #[error("ring version {version} is the last")]
    VersionExhausted {
        /// The current version.
        version: u64,
    },
}

/// The partition of `key`: the top `log2 partitions` bits of its xxh3 hash
/// (default seed, so every process agrees).
///
/// # Panics
///
/// If `partitions` is not a power of two in `1..=PARTITIONS_MAX` (callers
/// take it from a validated [`Ring`] or configuration).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    assert!(
        partitions.is_power_of_two() && partitions <= PARTITIONS_MAX,
        "partitions must be a power of two up to {PARTITIONS_MAX}, not {partitions}"
    );
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    // At most 16 bits remain, so the cast is exact.
    (xxh3_64(key) >> (64 - bits)) as u32
}

/// A validated assignment of partitions to members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    version: u64,
    partitions: u32,
    /// Sorted by id, ids unique.
    members: Vec<Member>,
    /// For each partition, an index into `members`.
    owners: Vec<u32>,
    /// For each member, its zone class: the index of the first member in its
    /// zone, or its own index if its zone is empty.
    zones: Vec<u32>,
    /// How many distinct zone classes own partitions.
    zones_owning: usize,
    /// How many members own partitions.
    members_owning: usize,
}

impl Ring {
    /// A fresh assignment of `partitions` partitions over `members` (in any
    /// order) at `version`.
    pub fn new(partitions: u32, mut members: Vec<Member>, version: u64) -> Result<Ring, RingError> {
        check_partitions(partitions)?;
        members.sort_by_key(|member| member.id);
        check_members(partitions, &members)?;
        let quotas = quotas(partitions, &members);
        let old = vec![UNASSIGNED; partitions as usize];
        let mut owners = old.clone();
        let windows = windows(partitions, &quotas);
        deal(&mut owners, &quotas, &windows);
        repair(&mut owners, &old, &windows);
        Ok(Ring::build(version, partitions, members, owners, Some(&quotas)))
    }

    /// The ring for a new member set (nodes joined, left, or changed weight
    /// or address), at the next version, moving as few partitions as
    /// possible: a partition changes owner only if its owner left or is over
    /// its new quota, and those go to the members furthest under theirs.
    pub fn rebalance(&self, mut members: Vec<Member>) -> Result<Ring, RingError> {
        let version = self
            .version
            .checked_add(1)
            .ok_or(RingError::VersionExhausted { version: self.version })?;
        members.sort_by_key(|member| member.id);
        check_members(self.partitions, &members)?;
        let quotas = quotas(self.partitions, &members);
        // Old member indices renumbered into the new member list.
        let renumbered: Vec<u32> = self
            .members
            .iter()
            .map(|old| {
                members.binary_search_by_key(&old.id, |new| new.id).map_or(UNASSIGNED, index_u32)
            })
            .collect();
        let old: Vec<u32> = self.owners.iter().map(|&index| renumbered[index as usize]).collect();
        let mut owners = old.clone();
        let windows = windows(self.partitions, &quotas);
        deal(&mut owners, &quotas, &windows);
        repair(&mut owners, &old, &windows);
        Ok(Ring::build(version, self.partitions, members, owners, Some(&quotas)))
    }

    /// Accepts a ring that came from elsewhere, checking everything: the
    /// partition count, the members (sorted, unique, weighted, bounded) and
    /// one in-range owner per partition. Balance is not checked (a ring made
    /// by another rule is still a ring; [`Ring::rebalance`] restores it).
    pub fn from_state(state: RingState) -> Result<Ring, RingError> {
        let RingState { version, partitions, members, owners } = state;
        check_partitions(partitions)?;
        check_members(partitions, &members)?;
        if owners.len() != partitions as usize {
            return Err(RingError::OwnersLength { owners: owners.len(), partitions });
        }
        if let Some((partition, &index)) =
            owners.iter().enumerate().find(|&(_, &index)| index as usize >= members.len())
        {
            return Err(RingError::OwnerOutOfRange {
                partition: index_u32(partition),
                index,
                members: members.len(),
            });
        }
        Ok(Ring::build(version, partitions, members, owners, None))
    }

    /// [`Ring::from_state`] straight from a validated archive.
    pub fn from_archived(archived: &ArchivedRingState) -> Result<Ring, RingError> {
        let members = archived
            .members
            .iter()
            .map(|member| Member {
                id: member.id.to_native(),
                addr: member.addr.as_str().to_owned(),
                weight: member.weight.to_native(),
                zone: member.zone.as_str().to_owned(),
            })
            .collect();
        Ring::from_state(RingState {
            version: archived.version.to_native(),
            partitions: archived.partitions.to_native(),
            members,
            owners: archived.owners.iter().map(|owner| owner.to_native()).collect(),
        })
    }

    /// The ring as it travels.
    pub fn state(&self) -> RingState {
        RingState {
            version: self.version,
            partitions: self.partitions,
            members: self.members.clone(),
            owners: self.owners.clone(),
        }
    }

    /// Incremented by every rebalance.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `Q`, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with id `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.index_of(id).map(|index| &self.members[index])
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.index_of(id).is_some()
    }

    /// The partition of `key` in this ring.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of(key, self.partitions)
    }

    /// The member that owns `partition`.
    ///
    /// # Panics
    ///
    /// If `partition` is out of range.
    pub fn owner(&self, partition: u32) -> NodeId {
        assert!(partition < self.partitions, "partition {partition} of {}", self.partitions);
        self.members[self.owners[partition as usize] as usize].id
    }

    /// The preference list of `partition`: up to `n` distinct nodes, its
    /// owner first, then the owners met walking the ring from it, zone-aware
    /// (see the module docs). Shorter than `n` only if fewer members own
    /// partitions.
    ///
    /// # Panics
    ///
    /// If `partition` is out of range.
    pub fn preference_list(&self, partition: u32, n: usize) -> Vec<NodeId> {
        assert!(partition < self.partitions, "partition {partition} of {}", self.partitions);
        let want = n.min(self.members_owning);
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        let mut zones: Vec<u32> = Vec::with_capacity(want);
        for zone_aware in [true, false] {
            for step in 0..self.owners.len() {
                if chosen.len() == want {
                    break;
                }
                let member = self.owners[(partition as usize + step) % self.owners.len()];
                let zone = self.zones[member as usize];
                let zone_seen = zones.contains(&zone);
                if chosen.contains(&member)
                    || (zone_aware && zone_seen && zones.len() < self.zones_owning)
                {
                    continue;
                }
                chosen.push(member);
                if !zone_seen {
                    zones.push(zone);
                }
            }
        }
        assert_eq!(chosen.len(), want);
        chosen.iter().map(|&member| self.members[member as usize].id).collect()
    }

    /// The partitions `node` owns, ascending (none if it is not a member).
    pub fn partitions_of(&self, node: NodeId) -> Vec<u32> {
        let Some(index) = self.index_of(node) else { return Vec::new() };
        (0..self.partitions).filter(|&p| self.owners[p as usize] as usize == index).collect()
    }

    /// The partitions `node` gains going from this ring to `next`, with `n`
    /// replicas per key: ascending, those whose preference list of `n` in
    /// `next` holds `node` and in this ring does not. These are what a node
    /// must pull before `next` may route to it (a partition it already
    /// replicates, it already holds). Between rings of different partition
    /// counts no partition corresponds, so every partition of `next` whose
    /// list holds `node` counts.
    pub fn gained_by(&self, next: &Ring, node: NodeId, n: usize) -> Vec<u32> {
        if !next.contains(node) {
            return Vec::new();
        }
        let comparable = self.partitions == next.partitions;
        (0..next.partitions)
            .filter(|&partition| {
                next.preference_list(partition, n).contains(&node)
                    && !(comparable && self.preference_list(partition, n).contains(&node))
            })
            .collect()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.members.binary_search_by_key(&id, |member| member.id).ok()
    }

    /// The ring over checked parts; `quotas`, when the ring was just
    /// assigned, are asserted to have been met exactly.
    fn build(
        version: u64,
        partitions: u32,
        members: Vec<Member>,
        owners: Vec<u32>,
        quotas: Option<&[u32]>,
    ) -> Ring {
        assert_eq!(owners.len(), partitions as usize);
        let mut counts = vec![0u32; members.len()];
        for &owner in &owners {
            counts[owner as usize] += 1;
        }
        if let Some(quotas) = quotas {
            assert_eq!(counts, quotas, "every member owns exactly its quota");
        }
        let mut first_in_zone: BTreeMap<&str, u32> = BTreeMap::new();
        let zones: Vec<u32> = (0..members.len())
            .map(|index| match members[index].zone.as_str() {
                "" => index_u32(index),
                zone => *first_in_zone.entry(zone).or_insert(index_u32(index)),
            })
            .collect();
        let mut zone_owns = vec![false; members.len()];
        for (index, _) in counts.iter().enumerate().filter(|&(_, &count)| count > 0) {
            zone_owns[zones[index] as usize] = true;
        }
        Ring {
            version,
            partitions,
            zones_owning: zone_owns.iter().filter(|&&owns| owns).count(),
            members_owning: counts.iter().filter(|&&count| count > 0).count(),
            members,
            owners,
            zones,
        }
    }
}

fn check_partitions(partitions: u32) -> Result<(), RingError> {
    if partitions.is_power_of_two() && partitions <= PARTITIONS_MAX {
        Ok(())
    } else {
        Err(RingError::BadPartitions { partitions })
    }
}

/// Checks members already sorted by id (an unsorted list is refused).
fn check_members(partitions: u32, members: &[Member]) -> Result<(), RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    if members.len() > partitions as usize {
        return Err(RingError::TooManyMembers { members: members.len(), partitions });
    }
    for member in members {
        member.validate()?;
    }
    for pair in members.windows(2) {
        let (previous, id) = (pair[0].id, pair[1].id);
        match previous.cmp(&id) {
            Ordering::Less => {}
            Ordering::Equal => return Err(RingError::DuplicateMember { id }),
            Ordering::Greater => return Err(RingError::MembersUnsorted { previous, id }),
        }
    }
    Ok(())
}

/// Each member's number of partitions: proportional to weight, by largest
/// remainder (ties to the lower id), at least one each.
fn quotas(partitions: u32, members: &[Member]) -> Vec<u32> {
    // At most 2^16 members of weight below 2^32, and 2^16 partitions: every
    // product and sum here fits a u64.
    let total: u64 = members.iter().map(|member| u64::from(member.weight)).sum();
    let shares = members.iter().map(|member| u64::from(partitions) * u64::from(member.weight));
    let mut quotas: Vec<u32> = shares.clone().map(|share| (share / total) as u32).collect();
    let mut by_remainder: Vec<(Reverse<u64>, usize)> =
        shares.enumerate().map(|(index, share)| (Reverse(share % total), index)).collect();
    by_remainder.sort_unstable();
    let short = partitions - quotas.iter().sum::<u32>();
    for &(_, index) in by_remainder.iter().take(short as usize) {
        quotas[index] += 1;
    }
    // Members rounded down to nothing take one partition each from the
    // largest quotas (ties to the lower id). Some quota is at least 2 while
    // any is 0, since they sum to `partitions >= members.len()`.
    let mut donors: BinaryHeap<(u32, Reverse<usize>)> =
        quotas.iter().enumerate().map(|(index, &quota)| (quota, Reverse(index))).collect();
    for index in 0..quotas.len() {
        if quotas[index] == 0 {
            let (quota, Reverse(donor)) = donors.pop().expect("a member with a spare partition");
            assert!(quota >= 2 && quota == quotas[donor]);
            quotas[donor] -= 1;
            quotas[index] = 1;
            donors.push((quota - 1, Reverse(donor)));
        }
    }
    assert_eq!(quotas.iter().sum::<u32>(), partitions);
    quotas
}

/// The spread window each member can be held to: [`SPREAD_WINDOW`] (at most
/// the member count), or less for a member owning so much of the ring that
/// it must own partitions closer together.
fn windows(partitions: u32, quotas: &[u32]) -> Vec<usize> {
    let window = quotas.len().min(SPREAD_WINDOW);
    quotas.iter().map(|&quota| (partitions / quota).clamp(1, window as u32) as usize).collect()
}

/// Walks the ring once, in order, bringing every member to its quota:
/// partitions without an owner are dealt out, and members over quota
/// release their surplus. A member releases evenly among its partitions
/// (its `i`th release falls due at its `(i + 1/2) * owned / surplus`th
/// partition), but only when some member under quota can take the
/// partition without a collision, else at its next partition; its last
/// partitions are released whatever happens if it has no others left.
/// A partition goes to the member under quota that is furthest behind its
/// schedule ([`Due`]) among those that would not collide and are not more
/// than [`SPREAD_WINDOW`] partitions ahead of it, unless the furthest behind
/// is more than that late: then to it, so that a member that cannot avoid
/// collisions is not starved early and crowded at the end.
fn deal(owners: &mut [u32], quotas: &[u32], windows: &[usize]) {
    let members = quotas.len();
    let mut owned = vec![0u32; members];
    for &owner in owners.iter().filter(|&&owner| owner != UNASSIGNED) {
        owned[owner as usize] += 1;
    }
    let surplus: Vec<u32> = owned.iter().zip(quotas).map(|(&o, &q)| o.saturating_sub(q)).collect();
    let mut released = vec![0u32; members];
    let mut ahead = owned.clone();
    let under: Vec<usize> = (0..members).filter(|&index| owned[index] < quotas[index]).collect();
    let phases = 2 * index_u32(under.len());
    let mut behind: BTreeSet<Due> = (0..)
        .zip(&under)
        .map(|(rank, &index)| Due {
            gained: 0,
            deficit: quotas[index] - owned[index],
            phase: 2 * rank + 1,
            phases,
            member: index_u32(index),
        })
        .collect();
    // Partitions to deal in all, and dealt so far: the clock of the schedule.
    let total: u32 = behind.iter().map(|due| due.deficit).sum();
    let mut dealt = 0u32;
    for partition in 0..owners.len() {
        let owner = owners[partition];
        let mut must = true;
        if owner != UNASSIGNED {
            let m = owner as usize;
            ahead[m] -= 1;
            let left = surplus[m] - released[m];
            if left == 0 {
                continue;
            }
            let seen = u64::from(owned[m] - ahead[m] - 1);
            let due_at = (2 * u64::from(released[m]) + 1) * u64::from(owned[m])
                / (2 * u64::from(surplus[m]));
            must = left > ahead[m];
            if seen < due_at && !must {
                continue;
            }
        }
        // Quotas sum to the partitions, so while a partition is unowned or
        // a member over quota, someone is under quota. Everyone stays within
        // SPREAD_WINDOW partitions of its schedule: the most overdue member
        // is served, colliding or not, if it is further behind than that,
        // and a member further ahead is not served early only because it
        // would not collide.
        let first = *behind.first().expect("a member under quota");
        let slack = SPREAD_WINDOW as u64;
        let mut best = (collisions(owners, partition, first.member, windows), first);
        if first.due_at(total) + slack > u64::from(dealt) {
            // At most 2 * (SPREAD_WINDOW - 1) members collide, so this
            // looks at a handful of candidates.
            for &due in behind.iter().skip(1) {
                if best.0 == 0 || due.due_at(total) > u64::from(dealt) + slack {
                    break;
                }
                let collisions = collisions(owners, partition, due.member, windows);
                if collisions < best.0 {
                    best = (collisions, due);
                }
            }
        }
        let (collisions, due) = best;
        if collisions > 0 && !must {
            continue;
        }
        if owner != UNASSIGNED {
            released[owner as usize] += 1;
        }
        behind.remove(&due);
        owners[partition] = due.member;
        dealt += 1;
        if due.gained + 1 < due.deficit {
            behind.insert(Due { gained: due.gained + 1, ..due });
        }
    }
    assert!(behind.is_empty(), "every quota is filled");
    assert_eq!(released, surplus, "every surplus is released");
    assert_eq!(dealt, total);
}

/// Swaps owners to remove collisions, keeping every member's count, and
/// only where the swap moves no more partitions away from their owner in
/// `old` than before. Bounded by [`REPAIR_BUDGET_PER_PARTITION`].
fn repair(owners: &mut [u32], old: &[u32], windows: &[usize]) {
    let partitions = owners.len();
    let mut budget = REPAIR_BUDGET_PER_PARTITION * partitions;
    let mut improved = true;
    while improved {
        improved = false;
        for partition in 0..partitions {
            budget = budget.saturating_sub(1);
            if collisions(owners, partition, owners[partition], windows) == 0 {
                continue;
            }
            for step in 1..partitions {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                if try_swap(owners, old, partition, (partition + step) % partitions, windows) {
                    improved = true;
                    break;
                }
            }
        }
    }
}

/// Swaps the owners of `a` and `b` if that leaves fewer collisions and no
/// more moved partitions.
fn try_swap(owners: &mut [u32], old: &[u32], a: usize, b: usize, windows: &[usize]) -> bool {
    let (x, y) = (owners[a], owners[b]);
    if x == y {
        return false;
    }
    let moved = |partition: usize, owner: u32| usize::from(owner != old[partition]);
    if moved(a, y) + moved(b, x) > moved(a, x) + moved(b, y) {
        return false;
    }
    // Only pairs involving a or b change, and a and b never collide with
    // each other (their owners differ before and after).
    let before = collisions(owners, a, x, windows) + collisions(owners, b, y, windows);
    owners.swap(a, b);
    let after = collisions(owners, a, y, windows) + collisions(owners, b, x, windows);
    if after < before {
        return true;
    }
    owners.swap(a, b);
    false
}

/// How many of the partitions within `member`'s window on either side of
/// `partition` (wrapping) `member` owns.
fn collisions(owners: &[u32], partition: usize, member: u32, windows: &[usize]) -> usize {
    let partitions = owners.len();
    let window = windows[member as usize];
    debug_assert!(window <= partitions);
    (1..window)
        .map(|distance| {
            usize::from(owners[(partition + distance) % partitions] == member)
                + usize::from(owners[(partition + partitions - distance) % partitions] == member)
        })
        .sum()
}

/// A member under quota, ordered by when its next partition is due: its
/// `k`th of `deficit` at `(k + phase / phases) / deficit` of the way through
/// the deal (compared without division), then by index. The phase, `(rank +
/// 1/2) / count` among the members dealt to, staggers members of equal
/// rates so they interleave instead of coming due together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    /// Partitions it gained so far in this deal.
    gained: u32,
    /// Partitions it is to gain in all.
    deficit: u32,
    /// `2 * rank + 1`.
    phase: u32,
    /// `2 * count`, the same for every member of a deal.
    phases: u32,
    member: u32,
}

impl Due {
    /// `(gained + phase / phases) * phases`: the numerator of its position
    /// in the deal, over `deficit * phases`. At most 2^17 * 2^17.
    fn numerator(&self) -> u64 {
        u64::from(self.gained) * u64::from(self.phases) + u64::from(self.phase)
    }

    /// When, counted in partitions dealt out of `total`, its next gain is due.
    fn due_at(&self, total: u32) -> u64 {
        self.numerator() * u64::from(total) / (u64::from(self.deficit) * u64::from(self.phases))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> Ordering {
        debug_assert_eq!(self.phases, other.phases);
        let mine = u128::from(self.numerator()) * u128::from(other.deficit);
        let theirs = u128::from(other.numerator()) * u128::from(self.deficit);
        mine.cmp(&theirs)
            .then(self.member.cmp(&other.member))
            .then(self.gained.cmp(&other.gained))
            .then(self.deficit.cmp(&other.deficit))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Member and partition indices are below `PARTITIONS_MAX`.
fn index_u32(index: usize) -> u32 {
    u32::try_from(index).expect("indices are below PARTITIONS_MAX")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(weights: &[u32]) -> Vec<Member> {
        (0..weights.len())
            .map(|i| Member {
                id: i as u64,
                addr: String::new(),
                weight: weights[i],
                zone: String::new(),
            })
            .collect()
    }

    #[test]
    fn quotas_follow_the_largest_remainder() {
        // 10 * (1, 1, 1) / 3: remainders tie, so the lowest id gets the extra.
        assert_eq!(quotas(10, &weighted(&[1, 1, 1])), [4, 3, 3]);
        // 8 * (1, 2, 2) / 5 = 1.6, 3.2, 3.2: the largest remainder wins.
        assert_eq!(quotas(8, &weighted(&[1, 2, 2])), [2, 3, 3]);
        // 4 * (1, 1000, 1000, 1) / 2002: the light members still get one.
        assert_eq!(quotas(4, &weighted(&[1, 1000, 1000, 1])), [1, 1, 1, 1]);
        assert_eq!(quotas(8, &weighted(&[1, 1000, 1])), [1, 6, 1]);
    }

    #[test]
    fn gained_by_lists_the_partitions_a_node_newly_replicates() {
        let members = weighted(&[1, 1, 1, 1]);
        let ring = Ring::new(64, members[..3].to_vec(), 1).expect("valid");
        let bigger = ring.rebalance(members.clone()).expect("valid");
        // The newcomer gains every partition it replicates.
        let replicated = |ring: &Ring, node| {
            (0..ring.partitions())
                .filter(|&p| ring.preference_list(p, 3).contains(&node))
                .collect::<Vec<u32>>()
        };
        assert_eq!(ring.gained_by(&bigger, 3, 3), replicated(&bigger, 3));
        // An old member gains exactly where it is new to the list.
        for node in 0..3 {
            let expected: Vec<u32> = replicated(&bigger, node)
                .into_iter()
                .filter(|&p| !ring.preference_list(p, 3).contains(&node))
                .collect();
            assert_eq!(ring.gained_by(&bigger, node, 3), expected, "node {node}");
        }
        // Nothing is gained without a change, nor by a node not in `next`.
        assert!((0..4).all(|node| bigger.gained_by(&bigger, node, 3).is_empty()));
        assert!(bigger.gained_by(&ring, 3, 3).is_empty());
        // With one replica, the gains are the partitions that changed owner.
        let moved: Vec<u32> = (0..64).filter(|&p| bigger.owner(p) == 3).collect();
        assert_eq!(ring.gained_by(&bigger, 3, 1), moved);
        // Other partition counts: everything the node replicates in `next`.
        let other = Ring::new(32, members, 1).expect("valid");
        assert_eq!(ring.gained_by(&other, 0, 3), replicated(&other, 0));
    }

    #[test]
    fn due_puts_the_furthest_behind_first() {
        let due = |gained, deficit, rank: u32, member| Due {
            gained,
            deficit,
            phase: 2 * rank + 1,
            phases: 2 * 4,
            member,
        };
        // A member with much to gain comes before one nearly done.
        assert!(due(0, 256, 3, 9) < due(30, 40, 0, 0));
        // Same progress: the larger deficit is due sooner.
        assert!(due(10, 100, 1, 1) < due(10, 50, 1, 0));
        // Equal rates: the phases interleave them, in rank order.
        assert!(due(0, 5, 0, 7) < due(0, 5, 1, 2));
        assert!(due(1, 5, 0, 7) > due(0, 5, 3, 2));
        // A deal of 20 with a deficit of 5: due at 0.125 * 4, then 1.125 * 4.
        assert_eq!(due(0, 5, 0, 0).due_at(20), 0);
        assert_eq!(due(1, 5, 0, 0).due_at(20), 4);
        assert_eq!(due(1, 5, 3, 0).due_at(20), 7);
    }
}
