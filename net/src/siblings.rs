//! Sibling sets: every version of one key that no other version supersedes,
//! and their canonical byte encoding.
//!
//! A [`Version`] is a value (or a tombstone) with the [`Dot`] of the write
//! that created it and the clock (causal context) its writer had read. Its
//! history is that clock plus the dot. Version `v` *dominates* `w` when
//! `v.clock` contains `w.dot`: the writer of `v` had seen `w` and meant to
//! replace it. A [`SiblingSet`] keeps exactly the versions nothing in the set
//! dominates; two versions with the same dot are the same version.
//!
//! Every path that moves state between replicas (replication, read repair,
//! hinted handoff, anti-entropy) ships a whole sibling set and combines it
//! with [`SiblingSet::merge`], which is commutative, associative and
//! idempotent on the states the write process can reach, so replicas that
//! have seen the same writes hold the same set whatever the delivery order.
//!
//! # Invariants
//!
//! - Versions are sorted by strictly ascending dot (no duplicates).
//! - No version dominates another, and none dominates itself (its clock does
//!   not contain its own dot).
//! - Every clock is a valid [`VersionVector`].
//!
//! # Encoding
//!
//! The store keeps sibling sets as opaque bytes and replicas hash those bytes
//! into their Merkle trees, so the encoding is canonical: equal sets always
//! give equal bytes, and the decoder accepts only bytes the encoder could
//! have produced. All integers are little-endian and fixed-width.
//!
//! ```text
//! sibling set   := format:u8 (= 1)  count:u32 (<= VERSIONS_MAX)  version × count
//!                  versions strictly ascending by dot
//!
//! version       := dot  entries:u32 (<= CLOCK_ENTRIES_MAX)  entry × entries  value
//!                  entries strictly ascending by actor
//!
//! dot, entry    := node:u64  incarnation:u32  counter:u64 (>= 1)            (20 bytes)
//!
//! value         := 0x00                                    tombstone
//!                | 0x01  len:u32 (<= value_bytes_max)  len × u8
//!
//! one version, by byte offset:
//!
//!  0          8      12         20        24            24 + 20m  25 + 20m    29 + 20m
//!  +----------+------+----------+---------+-------------+---------+-----------+------------+
//!  | dot.node | .inc | .counter | m: u32  | m × entry   | tag: u8 | len: u32  | len bytes  |
//!  +----------+------+----------+---------+-------------+---------+-----------+------------+
//!                                                                   (tag 1 only)
//! ```
//!
//! The decoder is strict (see [`DecodeError`] for every refusal), never
//! panics, and checks each count against both its limit and the bytes left
//! before allocating for it, so a hostile peer cannot make it allocate more
//! than a small multiple of the input's length.

use crate::clock::{Actor, CLOCK_ENTRIES_MAX, ClockError, Dot, VersionVector};

/// The leading byte of every encoded sibling set. Bumped on any layout change.
pub const FORMAT_VERSION: u8 = 1;

/// The most versions a sibling set may have on the wire.
///
/// Siblings accumulate only from concurrent writes (clients writing without
/// the context of a read, or racing); an application that leaves 64 of them
/// unresolved has a bug, and Riak's experience is that reads slow to a crawl
/// long before that. The decoder refuses more. The coordinator must refuse a
/// write that would exceed it (the coordinator issue), because a set past the
/// limit encodes fine but no replica would accept it.
pub const VERSIONS_MAX: usize = 64;

/// The store's default cap on one value: 1 MiB.
pub const VALUE_BYTES_MAX_DEFAULT: u32 = 1 << 20;

/// Bytes of an encoded dot or clock entry: node, incarnation, counter.
const DOT_BYTES: usize = 8 + 4 + 8;
/// Bytes of the smallest encoded version: a dot, an empty clock, a tombstone.
const VERSION_BYTES_MIN: usize = DOT_BYTES + 4 + 1;
/// Bytes of the set header: format version and version count.
const HEADER_BYTES: usize = 1 + 4;

// Counts travel as u32; the limits must fit, with room to multiply by an
// entry size without overflow on any target.
const _: () = assert!(VERSIONS_MAX <= u16::MAX as usize);
const _: () = assert!(CLOCK_ENTRIES_MAX <= u16::MAX as usize);
const _: () = assert!(VERSION_BYTES_MIN == 25);

/// Limits the decoder applies on top of the protocol constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The largest value accepted, in bytes.
    pub value_bytes_max: u32,
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits { value_bytes_max: VALUE_BYTES_MAX_DEFAULT }
    }
}

/// Why bytes are not a canonical encoded sibling set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before a field (or, when a count is checked before
    /// allocation, before the smallest encoding of that many items).
    #[error("truncated at byte {offset}: need {needed} bytes, {available} available")]
    Truncated {
        /// Byte offset of the field that does not fit.
        offset: usize,
        /// Bytes the field needs (a lower bound for counted items).
        needed: usize,
        /// Bytes left from `offset`.
        available: usize,
    },
    /// Bytes remain after the last version.
    #[error("{count} trailing bytes after the sibling set")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The leading byte is not a format this build reads.
    #[error("unknown sibling set format {format} (this build reads {FORMAT_VERSION})")]
    UnknownFormat {
        /// The byte found.
        format: u8,
    },
    /// The version count exceeds [`VERSIONS_MAX`].
    #[error("{count} versions, more than the limit of {max}")]
    TooManyVersions {
        /// The count found.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// A clock's entry count exceeds [`CLOCK_ENTRIES_MAX`].
    #[error("version {version}: clock of {count} entries, more than the limit of {max}")]
    TooManyClockEntries {
        /// Index of the version.
        version: usize,
        /// The count found.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`DecodeLimits::value_bytes_max`].
    #[error("version {version}: value of {len} bytes, more than the limit of {max}")]
    ValueTooLarge {
        /// Index of the version.
        version: usize,
        /// The length found.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A value tag is neither 0 (tombstone) nor 1 (value).
    #[error("version {version}: value tag {tag} is neither 0 (tombstone) nor 1 (value)")]
    InvalidValueTag {
        /// Index of the version.
        version: usize,
        /// The tag found.
        tag: u8,
    },
    /// A version's dot has counter 0.
    #[error("version {version}: dot counter is 0")]
    DotCounterZero {
        /// Index of the version.
        version: usize,
    },
    /// A version's clock is not canonical.
    #[error("version {version}: {source}")]
    InvalidClock {
        /// Index of the version.
        version: usize,
        /// What is wrong with it.
        source: ClockError,
    },
    /// A version's clock contains its own dot, so it would dominate itself.
    #[error("version {version}: clock contains the version's own dot")]
    DotInOwnClock {
        /// Index of the version.
        version: usize,
    },
    /// A version's dot is not greater than the previous one's: the versions
    /// are unsorted or one appears twice.
    #[error("version {version}: dot not greater than the previous version's")]
    VersionsNotAscending {
        /// Index of the version.
        version: usize,
    },
    /// A version is dominated by another; a canonical set would not hold it.
    #[error("version {version} is dominated by version {by}")]
    DominatedVersion {
        /// Index of the dominated version.
        version: usize,
        /// Index of the version that dominates it.
        by: usize,
    },
}

/// Why a coordinator cannot perform a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The actor's counter for this key is at `u64::MAX`. Unreachable by
    /// honest use; a forged context can claim it, and the actor must then
    /// write under a new incarnation.
    #[error("actor {actor} has no counter left for this key")]
    CounterExhausted {
        /// The coordinating actor.
        actor: Actor,
    },
    /// The write would leave more than [`VERSIONS_MAX`] concurrent versions:
    /// writes that carry no (or a stale) context each add one. The client
    /// must read the key and write with the context it returned.
    #[error(
        "the key would have {siblings} siblings, more than {max}: read it and write with its context"
    )]
    TooManySiblings {
        /// Versions the set would hold.
        siblings: usize,
        /// The limit.
        max: usize,
    },
    /// The context has more entries than [`CLOCK_ENTRIES_MAX`], so the new
    /// version could not be replicated: every peer's decoder would refuse it.
    #[error("context of {entries} entries, more than the wire limit of {max}")]
    ClockTooLarge {
        /// Entries in the context.
        entries: usize,
        /// The limit.
        max: usize,
    },
}

/// One version of a key: what one write produced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// The write event that created this version.
    pub dot: Dot,
    /// The causal context the writer had read: every version it replaces.
    /// Never contains `dot` itself.
    pub clock: VersionVector,
    /// The value, or `None` for a delete (a tombstone, which must persist so
    /// that the delete supersedes what it deleted on every replica).
    pub value: Option<Vec<u8>>,
}

impl Version {
    /// Whether `self`'s writer had seen `other`, so `self` supersedes it.
    pub fn dominates(&self, other: &Version) -> bool {
        self.clock.contains(other.dot)
    }

    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Every event this version has seen, including its own: `clock ∪ {dot}`.
    pub fn history(&self) -> VersionVector {
        let mut history = self.clock.clone();
        history.add(self.dot);
        history
    }
}

/// The versions of one key that no other version there dominates.
///
/// Equality is set equality, because the versions are kept in canonical
/// (dot) order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiblingSet {
    versions: Vec<Version>,
}

impl SiblingSet {
    /// The empty set: the key has never been written (or was reaped).
    pub const fn new() -> SiblingSet {
        SiblingSet { versions: Vec::new() }
    }

    /// Adds `version` unless a version here has its dot or dominates it;
    /// if added, drops every version it dominates.
    ///
    /// # Panics
    ///
    /// If `version.clock` contains `version.dot`: no write can have read its
    /// own result, so such a version is a bug in the caller.
    pub fn add(&mut self, version: Version) {
        assert!(
            !version.clock.contains(version.dot),
            "version {} has its own dot in its clock",
            version.dot
        );
        if !self.admits(&version) {
            return;
        }
        self.versions.retain(|existing| !version.dominates(existing));
        let index = self.versions.partition_point(|existing| existing.dot < version.dot);
        self.versions.insert(index, version);
        self.debug_check_invariants();
    }

    /// Adds every version of `other`: the join used by replication, read
    /// repair, hinted handoff and anti-entropy alike.
    ///
    /// Never refuses: concurrent writes admitted by different coordinators
    /// can merge into more than [`VERSIONS_MAX`] versions, which keeping the
    /// sibling count under the limit (the coordinator issue) must prevent.
    pub fn merge(&mut self, other: &SiblingSet) {
        for version in &other.versions {
            // Checking before cloning keeps re-delivery of known state cheap.
            if self.admits(version) {
                self.add(version.clone());
            }
        }
    }

    /// Drops every version whose dot `context` contains.
    pub fn discard(&mut self, context: &VersionVector) {
        self.versions.retain(|version| !context.contains(version.dot));
    }

    /// The join of every version's history: what a read hands the client, so
    /// that its next write supersedes exactly the versions it saw.
    pub fn context(&self) -> VersionVector {
        let mut context = VersionVector::new();
        for version in &self.versions {
            context.merge(&version.clock);
            context.add(version.dot);
        }
        context
    }

    /// Coordinates a write at `actor` that supersedes every version
    /// `context` contains, and returns its dot.
    ///
    /// The dot's counter is one more than the highest counter for `actor`
    /// that the context or this set (its dots and its clocks) mentions. That
    /// makes the dot fresh, never issued before for this key, because of two
    /// rules the rest of the system keeps:
    ///
    /// - Only `actor` issues dots for `actor`, always from its own local
    ///   state of the key, into which it durably wrote every earlier dot it
    ///   issued. A node that may have lost that state comes back as a new
    ///   incarnation, which is a new actor. Nothing here forgets a counter: a
    ///   version leaves a set only for one whose clock carries the counter on.
    ///   (Reaping a key's last tombstone does forget; the reaping issue must
    ///   keep a counter floor or make the next write use a fresh actor:
    ///   see [`write_above`](Self::write_above).)
    /// - Replication always sends the coordinator's whole sibling set for the
    ///   key and receivers [`merge`](Self::merge) it. So any state that holds
    ///   dot `(x, n)` also holds every `(x, m < n)` or a version dominating
    ///   it, and a context that covers `(x, n)` was read from a state that
    ///   showed the client all of `x`'s earlier versions or their successors.
    ///   That is why a per-actor maximum may stand for "the client saw it".
    ///
    /// The coordinator must persist the result before acknowledging and then
    /// replicate the whole set.
    ///
    /// # Errors
    ///
    /// [`WriteError`] when the new version could not be issued or replicated;
    /// the set is then unchanged.
    pub fn write(
        &mut self,
        actor: Actor,
        context: &VersionVector,
        value: Option<Vec<u8>>,
    ) -> Result<Dot, WriteError> {
        self.write_above(actor, context, value, 0)
    }

    /// [`write`](Self::write), with a dot counter above `floor` too.
    ///
    /// A replica that reaped keys' last tombstones forgot the counters
    /// `actor` issued for them; `floor` is at least the highest of those,
    /// so no dot is issued twice. The new version's clock is still exactly
    /// `context`; only its dot is higher. A later context covering the dot
    /// claims the key's versions with lower counters of `actor` were seen:
    /// for a reaped key those were dominated by the tombstone every replica
    /// held, so the claim is true, and for other keys `actor` issued none
    /// it does not hold.
    pub fn write_above(
        &mut self,
        actor: Actor,
        context: &VersionVector,
        value: Option<Vec<u8>>,
        floor: u64,
    ) -> Result<Dot, WriteError> {
        if context.len() > CLOCK_ENTRIES_MAX {
            return Err(WriteError::ClockTooLarge {
                entries: context.len(),
                max: CLOCK_ENTRIES_MAX,
            });
        }
        let seen = self.highest_counter(actor).max(context.get(actor)).max(floor);
        let counter = seen.checked_add(1).ok_or(WriteError::CounterExhausted { actor })?;
        let dot = Dot::new(actor, counter);
        // A set over the limit could be stored but never decoded again: the
        // key would become unreadable. Refuse the write instead; the client
        // reads the siblings and writes with their context, which folds them.
        let kept = self.versions.iter().filter(|version| !context.contains(version.dot)).count();
        if kept + 1 > VERSIONS_MAX {
            return Err(WriteError::TooManySiblings { siblings: kept + 1, max: VERSIONS_MAX });
        }

        self.discard(context);
        let version = Version { dot, clock: context.clone(), value };
        // Nothing left can dominate the new version (no clock here reaches
        // `counter`) or be dominated by it (`discard` removed exactly those).
        assert!(self.admits(&version));
        debug_assert!(self.versions.iter().all(|existing| !version.dominates(existing)));
        let len_before = self.versions.len();
        self.add(version);
        assert_eq!(self.versions.len(), len_before + 1);
        Ok(dot)
    }

    /// The highest counter of `actor` this set mentions, in its dots or its
    /// clocks (0 if none).
    pub fn highest_counter(&self, actor: Actor) -> u64 {
        self.versions
            .iter()
            .map(|version| {
                let own = if version.dot.actor() == actor { version.dot.counter() } else { 0 };
                own.max(version.clock.get(actor))
            })
            .max()
            .unwrap_or(0)
    }

    /// The live values, in dot order; tombstones are skipped.
    pub fn values(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.versions.iter().filter_map(|version| version.value.as_deref())
    }

    /// Whether the set holds no version at all.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The number of versions, tombstones included.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// The versions in dot order.
    pub fn iter(&self) -> std::slice::Iter<'_, Version> {
        self.versions.iter()
    }

    /// Whether the set is non-empty and every version in it is a tombstone:
    /// the key reads as deleted. (An empty set reads as never written.)
    pub fn is_tombstone_only(&self) -> bool {
        !self.is_empty() && self.versions.iter().all(Version::is_tombstone)
    }

    /// Asserts every invariant in the module doc. Quadratic in the number of
    /// versions, which [`VERSIONS_MAX`] keeps small on the wire.
    pub fn check_invariants(&self) {
        for (index, version) in self.versions.iter().enumerate() {
            version.clock.check_invariants();
            assert!(!version.clock.contains(version.dot), "version {index} dominates itself");
            if index > 0 {
                assert!(self.versions[index - 1].dot < version.dot, "version {index} out of order");
            }
            for (other_index, other) in self.versions.iter().enumerate() {
                assert!(
                    index == other_index || !version.dominates(other),
                    "version {index} dominates version {other_index}"
                );
            }
        }
    }

    /// The exact length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + self
                .versions
                .iter()
                .map(|version| {
                    let value_bytes = version.value.as_ref().map_or(0, |value| 4 + value.len());
                    VERSION_BYTES_MIN + DOT_BYTES * version.clock.len() + value_bytes
                })
                .sum::<usize>()
    }

    /// The canonical encoding (layout in the module doc).
    ///
    /// Does not apply the decoder's limits: a set merged past
    /// [`VERSIONS_MAX`] still encodes, and peers will refuse it.
    ///
    /// # Panics
    ///
    /// If a count or a value length does not fit in a `u32` (a value of
    /// 4 GiB or more, which no decoder or client path admits).
    pub fn encode(&self) -> Vec<u8> {
        self.debug_check_invariants();
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(FORMAT_VERSION);
        put_u32(&mut out, self.versions.len());
        for version in &self.versions {
            put_dot(&mut out, version.dot.actor(), version.dot.counter());
            put_u32(&mut out, version.clock.len());
            for (actor, counter) in version.clock.iter() {
                put_dot(&mut out, actor, counter);
            }
            match &version.value {
                None => out.push(0),
                Some(value) => {
                    out.push(1);
                    put_u32(&mut out, value.len());
                    out.extend_from_slice(value);
                }
            }
        }
        assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Decodes bytes produced by [`encode`](Self::encode), refusing anything
    /// else: every check is listed in [`DecodeError`].
    pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<SiblingSet, DecodeError> {
        let mut reader = Reader { bytes, offset: 0 };
        let format = reader.u8()?;
        if format != FORMAT_VERSION {
            return Err(DecodeError::UnknownFormat { format });
        }
        let count = reader.u32()?;
        let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
        if count_usize > VERSIONS_MAX {
            return Err(DecodeError::TooManyVersions { count, max: VERSIONS_MAX });
        }
        reader.ensure(count_usize * VERSION_BYTES_MIN)?;

        let mut versions: Vec<Version> = Vec::with_capacity(count_usize);
        for index in 0..count_usize {
            let (actor, counter) = reader.dot()?;
            if counter == 0 {
                return Err(DecodeError::DotCounterZero { version: index });
            }
            let dot = Dot::new(actor, counter);
            if let Some(previous) = versions.last()
                && previous.dot >= dot
            {
                return Err(DecodeError::VersionsNotAscending { version: index });
            }

            let entries_count = reader.u32()?;
            let entries_usize = usize::try_from(entries_count).unwrap_or(usize::MAX);
            if entries_usize > CLOCK_ENTRIES_MAX {
                return Err(DecodeError::TooManyClockEntries {
                    version: index,
                    count: entries_count,
                    max: CLOCK_ENTRIES_MAX,
                });
            }
            reader.ensure(entries_usize * DOT_BYTES)?;
            let mut entries = Vec::with_capacity(entries_usize);
            for _ in 0..entries_usize {
                entries.push(reader.dot()?);
            }
            let clock = VersionVector::from_entries(entries)
                .map_err(|source| DecodeError::InvalidClock { version: index, source })?;
            if clock.contains(dot) {
                return Err(DecodeError::DotInOwnClock { version: index });
            }

            let value = match reader.u8()? {
                0 => None,
                1 => {
                    let len = reader.u32()?;
                    if len > limits.value_bytes_max {
                        return Err(DecodeError::ValueTooLarge {
                            version: index,
                            len,
                            max: limits.value_bytes_max,
                        });
                    }
                    Some(reader.take(usize::try_from(len).unwrap_or(usize::MAX))?.to_vec())
                }
                tag => return Err(DecodeError::InvalidValueTag { version: index, tag }),
            };
            versions.push(Version { dot, clock, value });
        }
        if reader.remaining() > 0 {
            return Err(DecodeError::TrailingBytes { count: reader.remaining() });
        }

        for (by, version) in versions.iter().enumerate() {
            for (index, other) in versions.iter().enumerate() {
                if index != by && version.dominates(other) {
                    return Err(DecodeError::DominatedVersion { version: index, by });
                }
            }
        }
        let set = SiblingSet { versions };
        set.debug_check_invariants();
        Ok(set)
    }

    /// Whether [`add`](Self::add) would keep `version`: no version here has
    /// its dot or dominates it.
    fn admits(&self, version: &Version) -> bool {
        self.versions
            .iter()
            .all(|existing| existing.dot != version.dot && !existing.dominates(version))
    }

    fn debug_check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }
}

impl<'a> IntoIterator for &'a SiblingSet {
    type Item = &'a Version;
    type IntoIter = std::slice::Iter<'a, Version>;

    fn into_iter(self) -> Self::IntoIter {
        self.versions.iter()
    }
}

fn put_u32(out: &mut Vec<u8>, value: usize) {
    let value = u32::try_from(value).expect("count or length does not fit the u32 wire field");
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_dot(out: &mut Vec<u8>, actor: Actor, counter: u64) {
    out.extend_from_slice(&actor.node.to_le_bytes());
    out.extend_from_slice(&actor.incarnation.to_le_bytes());
    out.extend_from_slice(&counter.to_le_bytes());
}

/// A cursor over untrusted bytes whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    fn ensure(&self, needed: usize) -> Result<(), DecodeError> {
        let available = self.remaining();
        if needed > available {
            return Err(DecodeError::Truncated { offset: self.offset, needed, available });
        }
        Ok(())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        self.ensure(len)?;
        let taken = &self.bytes[self.offset..self.offset + len];
        self.offset += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A dot or clock entry; the counter is not yet checked.
    fn dot(&mut self) -> Result<(Actor, u64), DecodeError> {
        let node = self.u64()?;
        let incarnation = self.u32()?;
        let counter = self.u64()?;
        Ok((Actor::new(node, incarnation), counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Actor = Actor::new(1, 0);
    const B: Actor = Actor::new(2, 0);

    fn version(actor: Actor, counter: u64, clock: &[Dot], value: Option<&[u8]>) -> Version {
        Version {
            dot: Dot::new(actor, counter),
            clock: clock.iter().copied().collect(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn dots(set: &SiblingSet) -> Vec<Dot> {
        set.iter().map(|version| version.dot).collect()
    }

    fn decode(bytes: &[u8]) -> Result<SiblingSet, DecodeError> {
        SiblingSet::decode(bytes, DecodeLimits::default())
    }

    /// A two-version set (one with a two-entry clock, one tombstone) whose
    /// encoding the byte-surgery tests below corrupt one field at a time.
    fn sample() -> SiblingSet {
        let mut set = SiblingSet::new();
        set.add(version(A, 2, &[Dot::new(A, 1), Dot::new(B, 1)], Some(b"xy")));
        set.add(version(B, 2, &[], None));
        set
    }

    // Offsets into `sample().encode()`.
    const FIRST_VERSION: usize = HEADER_BYTES;
    const FIRST_CLOCK_COUNT: usize = FIRST_VERSION + DOT_BYTES;
    const FIRST_ENTRY: usize = FIRST_CLOCK_COUNT + 4;
    const FIRST_TAG: usize = FIRST_ENTRY + 2 * DOT_BYTES;
    const FIRST_LEN: usize = FIRST_TAG + 1;
    const SECOND_VERSION: usize = FIRST_LEN + 4 + 2;

    fn corrupt(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut encoded = sample().encode();
        encoded[offset..offset + bytes.len()].copy_from_slice(bytes);
        encoded
    }

    #[test]
    fn add_ignores_a_dominated_version() {
        let mut set = SiblingSet::new();
        set.add(version(A, 2, &[Dot::new(B, 1)], Some(b"new")));
        set.add(version(B, 1, &[], Some(b"old")));
        assert_eq!(dots(&set), [Dot::new(A, 2)]);
    }

    #[test]
    fn add_drops_every_version_the_new_one_dominates() {
        let mut set = SiblingSet::new();
        set.add(version(A, 1, &[], Some(b"a")));
        set.add(version(B, 1, &[], Some(b"b")));
        assert_eq!(set.len(), 2);
        set.add(version(A, 2, &[Dot::new(A, 1), Dot::new(B, 1)], Some(b"ab")));
        assert_eq!(dots(&set), [Dot::new(A, 2)]);
    }

    #[test]
    fn add_of_a_known_dot_is_a_no_op() {
        let mut set = sample();
        set.add(version(B, 2, &[], None));
        assert_eq!(set, sample());
    }

    #[test]
    #[should_panic(expected = "own dot")]
    fn add_of_a_self_dominating_version_is_a_bug() {
        SiblingSet::new().add(version(A, 1, &[Dot::new(A, 1)], None));
    }

    #[test]
    fn discard_drops_only_versions_the_context_covers() {
        let mut set = sample();
        set.discard(&[Dot::new(B, 2)].into_iter().collect());
        assert_eq!(dots(&set), [Dot::new(A, 2)]);
    }

    #[test]
    fn context_joins_every_history() {
        let expected: VersionVector = [Dot::new(A, 2), Dot::new(B, 2)].into_iter().collect();
        assert_eq!(sample().context(), expected);
    }

    #[test]
    fn write_with_the_context_of_a_two_sibling_read_leaves_one_version() {
        let mut set = SiblingSet::new();
        set.write(A, &VersionVector::new(), Some(b"1".to_vec())).unwrap();
        set.write(B, &VersionVector::new(), Some(b"2".to_vec())).unwrap();
        assert_eq!(set.len(), 2);
        let dot = set.write(A, &set.context(), Some(b"3".to_vec())).unwrap();
        assert_eq!(dots(&set), [dot]);
        assert_eq!(set.values().collect::<Vec<_>>(), [b"3"]);
    }

    #[test]
    fn two_writes_with_the_same_stale_context_become_siblings() {
        let mut set = SiblingSet::new();
        set.write(A, &VersionVector::new(), Some(b"0".to_vec())).unwrap();
        let stale = set.context();
        let first = set.write(A, &stale, Some(b"1".to_vec())).unwrap();
        let second = set.write(A, &stale, Some(b"2".to_vec())).unwrap();
        assert_eq!(dots(&set), [first, second]);
        assert_eq!(set.values().collect::<Vec<_>>(), [b"1", b"2"]);
    }

    #[test]
    fn write_counter_exceeds_every_counter_seen_for_the_actor() {
        let mut set = SiblingSet::new();
        // B's version records that it had seen A's fifth write.
        set.add(version(B, 1, &[Dot::new(A, 5)], Some(b"b")));
        let from_set = set.write(A, &VersionVector::new(), None).unwrap();
        assert_eq!(from_set, Dot::new(A, 6));
        let context: VersionVector = [Dot::new(A, 9)].into_iter().collect();
        assert_eq!(set.write(A, &context, None).unwrap(), Dot::new(A, 10));
    }

    #[test]
    fn write_refuses_an_exhausted_counter_instead_of_wrapping() {
        let mut set = SiblingSet::new();
        let forged: VersionVector = [Dot::new(A, u64::MAX)].into_iter().collect();
        assert_eq!(set.write(A, &forged, None), Err(WriteError::CounterExhausted { actor: A }));
        assert!(set.is_empty());
    }

    #[test]
    fn write_refuses_a_context_too_large_to_replicate() {
        let context: VersionVector =
            (0..=CLOCK_ENTRIES_MAX as u64).map(|node| Dot::new(Actor::new(node, 0), 1)).collect();
        assert_eq!(
            SiblingSet::new().write(A, &context, None),
            Err(WriteError::ClockTooLarge { entries: 65, max: CLOCK_ENTRIES_MAX })
        );
    }

    #[test]
    fn node_that_lost_its_disk_must_rejoin_under_a_new_incarnation() {
        let mut peer = SiblingSet::new();
        let mut lost = SiblingSet::new();
        lost.write(A, &VersionVector::new(), Some(b"before".to_vec())).unwrap();
        peer.merge(&lost);

        // Rejoining empty as the same actor reissues dot (A, 1), which the
        // peer takes for the version it already has: the write vanishes.
        let mut same_actor = SiblingSet::new();
        same_actor.write(A, &VersionVector::new(), Some(b"after".to_vec())).unwrap();
        let mut fooled = peer.clone();
        fooled.merge(&same_actor);
        assert_eq!(fooled.values().collect::<Vec<_>>(), [b"before"]);

        // A new incarnation is a new actor, so both writes survive.
        let mut new_incarnation = SiblingSet::new();
        new_incarnation
            .write(Actor::new(A.node, 1), &VersionVector::new(), Some(b"after".to_vec()))
            .unwrap();
        peer.merge(&new_incarnation);
        assert_eq!(peer.values().collect::<Vec<_>>(), [b"before".as_slice(), b"after"]);
    }

    #[test]
    fn delete_leaves_a_tombstone_only_set() {
        let mut set = SiblingSet::new();
        assert!(!set.is_tombstone_only());
        set.write(A, &VersionVector::new(), Some(b"v".to_vec())).unwrap();
        assert!(!set.is_tombstone_only());
        set.write(A, &set.context(), None).unwrap();
        assert!(set.is_tombstone_only());
        assert_eq!(set.values().count(), 0);
    }

    #[test]
    fn encoding_matches_the_documented_layout() {
        let encoded = sample().encode();
        assert_eq!(encoded.len(), sample().encoded_len());
        assert_eq!(encoded[0], FORMAT_VERSION);
        assert_eq!(encoded[1..5], 2u32.to_le_bytes());
        assert_eq!(encoded[FIRST_VERSION..FIRST_VERSION + 8], 1u64.to_le_bytes());
        assert_eq!(encoded[FIRST_VERSION + 12..FIRST_CLOCK_COUNT], 2u64.to_le_bytes());
        assert_eq!(encoded[FIRST_CLOCK_COUNT..FIRST_ENTRY], 2u32.to_le_bytes());
        assert_eq!(encoded[FIRST_TAG], 1);
        assert_eq!(encoded[FIRST_LEN..FIRST_LEN + 4], 2u32.to_le_bytes());
        assert_eq!(&encoded[FIRST_LEN + 4..SECOND_VERSION], b"xy");
        // The second version is a tombstone with an empty clock: the minimum.
        assert_eq!(encoded.len(), SECOND_VERSION + VERSION_BYTES_MIN);
        assert_eq!(encoded[encoded.len() - 1], 0);
        assert_eq!(decode(&encoded), Ok(sample()));
    }

    #[test]
    fn empty_set_round_trips() {
        let encoded = SiblingSet::new().encode();
        assert_eq!(encoded, [FORMAT_VERSION, 0, 0, 0, 0]);
        assert_eq!(decode(&encoded), Ok(SiblingSet::new()));
    }

    #[test]
    fn decode_refuses_every_strict_prefix_as_truncated() {
        let encoded = sample().encode();
        for len in 0..encoded.len() {
            assert!(
                matches!(decode(&encoded[..len]), Err(DecodeError::Truncated { .. })),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut encoded = sample().encode();
        encoded.push(0);
        assert_eq!(decode(&encoded), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn decode_refuses_an_unknown_format() {
        assert_eq!(decode(&corrupt(0, &[2])), Err(DecodeError::UnknownFormat { format: 2 }));
    }

    #[test]
    fn decode_refuses_counts_over_the_limits_before_allocating() {
        assert_eq!(
            decode(&corrupt(1, &u32::MAX.to_le_bytes())),
            Err(DecodeError::TooManyVersions { count: u32::MAX, max: VERSIONS_MAX })
        );
        assert_eq!(
            decode(&corrupt(FIRST_CLOCK_COUNT, &65u32.to_le_bytes())),
            Err(DecodeError::TooManyClockEntries { version: 0, count: 65, max: 64 })
        );
        // Within the limit but more than the input holds: refused up front.
        assert_eq!(
            decode(&corrupt(1, &64u32.to_le_bytes())),
            Err(DecodeError::Truncated {
                offset: HEADER_BYTES,
                needed: 64 * VERSION_BYTES_MIN,
                available: sample().encoded_len() - HEADER_BYTES,
            })
        );
    }

    #[test]
    fn decode_applies_the_value_cap() {
        let limits = DecodeLimits { value_bytes_max: 1 };
        assert_eq!(
            SiblingSet::decode(&sample().encode(), limits),
            Err(DecodeError::ValueTooLarge { version: 0, len: 2, max: 1 })
        );
    }

    #[test]
    fn decode_refuses_an_unknown_value_tag() {
        assert_eq!(
            decode(&corrupt(FIRST_TAG, &[2])),
            Err(DecodeError::InvalidValueTag { version: 0, tag: 2 })
        );
    }

    #[test]
    fn decode_refuses_zero_counters() {
        assert_eq!(
            decode(&corrupt(FIRST_VERSION + 12, &0u64.to_le_bytes())),
            Err(DecodeError::DotCounterZero { version: 0 })
        );
        assert_eq!(
            decode(&corrupt(FIRST_ENTRY + 12, &0u64.to_le_bytes())),
            Err(DecodeError::InvalidClock {
                version: 0,
                source: ClockError::CounterZero { index: 0 }
            })
        );
    }

    #[test]
    fn decode_refuses_an_unsorted_clock() {
        // Make the second entry's actor equal the first's.
        assert_eq!(
            decode(&corrupt(FIRST_ENTRY + DOT_BYTES, &1u64.to_le_bytes())),
            Err(DecodeError::InvalidClock {
                version: 0,
                source: ClockError::ActorsNotAscending { index: 1 }
            })
        );
    }

    #[test]
    fn decode_refuses_a_clock_holding_its_own_dot() {
        // The first entry becomes (A, 2), the version's own dot.
        assert_eq!(
            decode(&corrupt(FIRST_ENTRY + 12, &2u64.to_le_bytes())),
            Err(DecodeError::DotInOwnClock { version: 0 })
        );
    }

    #[test]
    fn decode_refuses_unsorted_or_duplicate_versions() {
        // The second version's dot (B, 2) becomes (A, 2), then (A, 1).
        for counter in [2u64, 1] {
            let mut encoded = corrupt(SECOND_VERSION, &1u64.to_le_bytes());
            encoded[SECOND_VERSION + 12..SECOND_VERSION + 20]
                .copy_from_slice(&counter.to_le_bytes());
            assert_eq!(decode(&encoded), Err(DecodeError::VersionsNotAscending { version: 1 }));
        }
    }

    #[test]
    fn decode_refuses_a_dominated_version() {
        // The second version's dot (B, 2) becomes (B, 1), which the first
        // version's clock contains.
        assert_eq!(
            decode(&corrupt(SECOND_VERSION + 12, &1u64.to_le_bytes())),
            Err(DecodeError::DominatedVersion { version: 1, by: 0 })
        );
    }
}

#[cfg(test)]
mod sibling_limit_tests {
    use super::*;

    /// Regression: blind writes to a hot key used to pile up past
    /// `VERSIONS_MAX`; the set was stored but never decoded again, so every
    /// later request for the key failed.
    #[test]
    fn blind_writes_past_the_sibling_limit_are_refused_and_the_key_stays_readable() {
        let actor = Actor::new(1, 0);
        let mut set = SiblingSet::new();
        for n in 0..VERSIONS_MAX {
            set.write(actor, &VersionVector::new(), Some(vec![n as u8])).unwrap();
        }
        let refused = set.write(actor, &VersionVector::new(), Some(b"one too many".to_vec()));
        assert!(matches!(refused, Err(WriteError::TooManySiblings { siblings: 65, max: 64 })));
        let decoded = SiblingSet::decode(&set.encode(), DecodeLimits::default()).unwrap();
        assert_eq!(decoded.len(), VERSIONS_MAX);
        // A write with the read's context folds every sibling into one.
        let mut folded = decoded.clone();
        folded.write(actor, &decoded.context(), Some(b"merged".to_vec())).unwrap();
        assert_eq!(folded.len(), 1);
    }
}
