//! Causality: actors, dots and version vectors.
//!
//! A [`Dot`] names one write event: the actor that coordinated it and that
//! actor's counter for the key. A [`VersionVector`] summarises a set of events
//! by keeping, per actor, the highest counter seen; it *contains* a dot when
//! its entry for the dot's actor is at least the dot's counter. Sibling sets
//! (see [`crate::siblings`]) pair each stored value with the dot that created
//! it and the vector its writer had read, which is the dotted version vector
//! of Preguiça, Baquero, Almeida et al. (as used by Riak 2.0 and Garage).
//!
//! # Invariants
//!
//! - A vector's entries are sorted by strictly ascending [`Actor`], and every
//!   counter is at least 1 (an absent actor means 0; a stored 0 would give two
//!   encodings of the same vector).
//! - A dot's counter is at least 1.
//!
//! Both are checked by assertions on every local construction and by the
//! decoder on everything that arrives from outside.
//!
//! # Encoding
//!
//! A version vector travels on its own as the causal context a client carries
//! from a read to its next write ([`VersionVector::encode`]). Clients treat
//! the bytes as opaque, but the node decodes whatever a client sends back, so
//! the decoder is as strict as the sibling set's: the encoding is canonical
//! (equal vectors give equal bytes), and only bytes the encoder could have
//! produced are accepted. Integers are little-endian and fixed-width.
//!
//! ```text
//! clock   := format:u8 (= 1)  count:u32 (<= CLOCK_ENTRIES_MAX)  entry × count
//!            entries strictly ascending by actor
//! entry   := node:u64  incarnation:u32  counter:u64 (>= 1)             (20 bytes)
//!
//!  0        1          5                      25                 5 + 20 × count
//!  +--------+----------+----------------------+-------+----------+
//!  | format | count    | entry 0              |  ...  | entry n-1|
//!  +--------+----------+----------------------+-------+----------+
//! ```
//!
//! The format byte lets a later build change the layout (say, to carry a
//! session token with the clock) and still recognise contexts that clients
//! saved under this one.
//!
//! # Why the size is bounded without pruning
//!
//! The actors in a key's clock are the nodes that coordinated writes for it:
//! its N preference-list replicas, plus one new entry each time one of them
//! bumps its incarnation or is replaced. That is small and changes only with
//! membership, so holdfast never prunes entries. Riak's wall-clock pruning
//! dropped entries that were still needed, which made descendants look
//! concurrent with their ancestors: false siblings and read repair that never
//! settled.
//!
//! [`CLOCK_ENTRIES_MAX`] is a wire limit, enforced only by the decoder so that
//! a peer cannot make us allocate an unbounded clock. It has a cost: a key
//! whose clock would grow past it could no longer be replicated, so the
//! coordinator must refuse such a write up front
//! ([`crate::siblings::WriteError::ClockTooLarge`] does this for the writer's
//! context; bounding the joined context a read returns is left to the
//! coordinator issue).

use std::cmp::Ordering;
use std::fmt;

/// The most entries a version vector may have on the wire.
///
/// 64 is far above N plus a lifetime of replacements for one key (N is
/// typically 3 or 5), yet bounds a decoded clock to 64 × 20 = 1280 bytes.
pub const CLOCK_ENTRIES_MAX: usize = 64;

/// The leading byte of every encoded version vector. Bumped on any layout
/// change.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of an encoded clock entry: node, incarnation, counter.
const ENTRY_BYTES: usize = 8 + 4 + 8;
/// Bytes before the first entry: the format byte and the entry count.
const HEADER_BYTES: usize = 1 + 4;

/// The length of an encoded version vector of `entries` entries.
pub const fn encoded_len(entries: usize) -> usize {
    HEADER_BYTES + ENTRY_BYTES * entries
}

/// The longest encoded version vector the decoder accepts: the most a causal
/// context can take in a request or a reply.
pub const CLOCK_BYTES_MAX: usize = encoded_len(CLOCK_ENTRIES_MAX);

const _: () = assert!(CLOCK_BYTES_MAX == 1285);
const _: () = assert!(CLOCK_ENTRIES_MAX <= u16::MAX as usize);

/// The identity that issues dots: one incarnation of one node.
///
/// The incarnation is persisted by the node and bumped (and made durable)
/// before first use whenever the node may have lost data: a wiped disk, a
/// restore from backup, a torn recovery. Counters are derived from the
/// node's own stored state, so a node that rejoined empty would otherwise
/// issue `(node, 1)` again, a dot that peers already hold for a different
/// value; they would take the new write for the old one and silently drop it
/// (Riak issue kv679). A fresh incarnation is a fresh actor, so its dots can
/// never collide with, or look older than, any dot issued before.
///
/// Ordered lexicographically by `node`, then `incarnation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Actor {
    /// The node's permanent identifier in the cluster.
    pub node: u64,
    /// How many times this node has restarted from possibly lost state.
    pub incarnation: u32,
}

impl Actor {
    /// The actor for `incarnation` of `node`.
    pub const fn new(node: u64, incarnation: u32) -> Actor {
        Actor { node, incarnation }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}.{}", self.node, self.incarnation)
    }
}

/// One write event: the `counter`-th write that `actor` coordinated for a key.
///
/// Ordered by actor, then counter; that is the order versions take in a
/// sibling set and on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    actor: Actor,
    counter: u64,
}

impl Dot {
    /// The dot `(actor, counter)`.
    ///
    /// # Panics
    ///
    /// If `counter` is 0: counters start at 1, and 0 means "nothing seen".
    pub fn new(actor: Actor, counter: u64) -> Dot {
        assert!(counter >= 1, "dot counter must be at least 1 (actor {actor})");
        Dot { actor, counter }
    }

    /// The actor that coordinated the write.
    pub const fn actor(self) -> Actor {
        self.actor
    }

    /// The actor's counter for this write (at least 1).
    pub const fn counter(self) -> u64 {
        self.counter
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor, self.counter)
    }
}

/// How two version vectors relate causally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Causality {
    /// Both contain exactly the same events.
    Equal,
    /// `self` is strictly older: `other` contains every event of `self` and more.
    Before,
    /// `self` is strictly newer: it contains every event of `other` and more.
    After,
    /// Each contains an event the other does not.
    Concurrent,
}

/// Why a list of entries is not a valid version vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockError {
    /// An entry has counter 0, which has no meaning and no single encoding.
    #[error("clock entry {index} has counter 0")]
    CounterZero {
        /// Position of the entry.
        index: usize,
    },
    /// An entry's actor is not strictly greater than the previous entry's
    /// (unsorted, or the same actor twice).
    #[error("clock entry {index} is not in strictly ascending actor order")]
    ActorsNotAscending {
        /// Position of the entry that is out of order.
        index: usize,
    },
}

/// Why bytes are not a canonical encoded version vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClockDecodeError {
    /// The input is shorter than its header, or than its count of entries
    /// says it must be.
    #[error("truncated clock: need {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the encoding needs (the header, or the header and every entry).
        needed: usize,
        /// Bytes given.
        available: usize,
    },
    /// Bytes remain after the last entry.
    #[error("{count} trailing bytes after the clock")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The leading byte is not a format this build reads.
    #[error("unknown clock format {format} (this build reads {FORMAT_VERSION})")]
    UnknownFormat {
        /// The byte found.
        format: u8,
    },
    /// The entry count exceeds [`CLOCK_ENTRIES_MAX`].
    #[error("clock of {count} entries, more than the limit of {max}")]
    TooManyEntries {
        /// The count found.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// The entries are well formed but not canonical.
    #[error(transparent)]
    Invalid(#[from] ClockError),
}

/// A set of events summarised as the highest counter per actor.
///
/// Stored as a sorted `Vec` rather than a map: lookups are binary searches
/// over a handful of entries, iteration order is canonical, and the type maps
/// directly onto a flat wire layout (rkyv's map validation has had soundness
/// bugs; a validated slice is simple).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(Actor, u64)>,
}

impl VersionVector {
    /// The empty vector: no events seen.
    pub const fn new() -> VersionVector {
        VersionVector { entries: Vec::new() }
    }

    /// A vector from entries that must already be in canonical form: actors
    /// strictly ascending, every counter at least 1.
    ///
    /// This is the validating path for entries that came from outside; it
    /// does not apply [`CLOCK_ENTRIES_MAX`], which is the decoder's business.
    pub fn from_entries(entries: Vec<(Actor, u64)>) -> Result<VersionVector, ClockError> {
        validate(&entries)?;
        Ok(VersionVector { entries })
    }

    /// Asserts the representation invariants (sorted, no zero counters).
    ///
    /// Cheap enough to call after every decode and before every encode.
    pub fn check_invariants(&self) {
        if let Err(error) = validate(&self.entries) {
            panic!("version vector invariant broken: {error}: {self:?}");
        }
    }

    /// The highest counter seen for `actor`, 0 if none.
    pub fn get(&self, actor: Actor) -> u64 {
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(index) => self.entries[index].1,
            Err(_) => 0,
        }
    }

    /// Whether the event `dot` is among those this vector summarises.
    pub fn contains(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// Records the event `dot` (and, by the vector's nature, every earlier
    /// event of the same actor). A no-op if already contained.
    pub fn add(&mut self, dot: Dot) {
        debug_assert!(dot.counter >= 1);
        match self.entries.binary_search_by_key(&dot.actor, |&(a, _)| a) {
            Ok(index) => {
                let counter = &mut self.entries[index].1;
                *counter = (*counter).max(dot.counter);
            }
            Err(index) => self.entries.insert(index, (dot.actor, dot.counter)),
        }
        debug_assert!(self.contains(dot));
        debug_assert!(validate(&self.entries).is_ok());
    }

    /// Joins `other` into `self`: the pointwise maximum, i.e. the union of
    /// the two event sets.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.is_covered_by(self) {
            return; // The common case on replica sync: nothing new.
        }
        let entries: Vec<(Actor, u64)> =
            join(&self.entries, &other.entries).map(|(a, x, y)| (a, x.max(y))).collect();
        self.entries = entries;
        debug_assert!(validate(&self.entries).is_ok());
        debug_assert!(self.descends(other));
    }

    /// Whether `self` contains every event of `other` (pointwise `>=`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.is_covered_by(self)
    }

    /// How `self` relates to `other`; consistent with [`descends`](Self::descends).
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut self_ahead = false;
        let mut other_ahead = false;
        for (_, x, y) in join(&self.entries, &other.entries) {
            self_ahead |= x > y;
            other_ahead |= y > x;
        }
        match (self_ahead, other_ahead) {
            (false, false) => Causality::Equal,
            (false, true) => Causality::Before,
            (true, false) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// The number of actors with a nonzero counter.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event has been seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in ascending actor order, each counter at least 1.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Actor, u64)> + '_ {
        self.entries.iter().copied()
    }

    /// The canonical encoding (layout in the module doc).
    ///
    /// Does not apply [`CLOCK_ENTRIES_MAX`]: a vector joined past it still
    /// encodes, and every decoder will refuse it, so whoever hands out a
    /// context must keep it within the limit.
    ///
    /// # Panics
    ///
    /// If the vector has more than `u32::MAX` entries, which nothing can
    /// build from decoded input.
    pub fn encode(&self) -> Vec<u8> {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        let count = u32::try_from(self.entries.len()).expect("clock entry count fits a u32");
        let mut out = Vec::with_capacity(encoded_len(self.entries.len()));
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&count.to_le_bytes());
        for &(actor, counter) in &self.entries {
            out.extend_from_slice(&actor.node.to_le_bytes());
            out.extend_from_slice(&actor.incarnation.to_le_bytes());
            out.extend_from_slice(&counter.to_le_bytes());
        }
        assert_eq!(out.len(), encoded_len(self.entries.len()));
        out
    }

    /// Decodes bytes produced by [`encode`](Self::encode), refusing anything
    /// else (every refusal is a [`ClockDecodeError`]). Never panics, and
    /// allocates only after the length has been checked against the count.
    pub fn decode(bytes: &[u8]) -> Result<VersionVector, ClockDecodeError> {
        let Some((&format, rest)) = bytes.split_first() else {
            return Err(ClockDecodeError::Truncated { needed: HEADER_BYTES, available: 0 });
        };
        if format != FORMAT_VERSION {
            return Err(ClockDecodeError::UnknownFormat { format });
        }
        let Some((count_bytes, body)) = rest.split_first_chunk::<4>() else {
            return Err(ClockDecodeError::Truncated {
                needed: HEADER_BYTES,
                available: bytes.len(),
            });
        };
        let count = u32::from_le_bytes(*count_bytes);
        let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
        if count_usize > CLOCK_ENTRIES_MAX {
            return Err(ClockDecodeError::TooManyEntries { count, max: CLOCK_ENTRIES_MAX });
        }
        let needed = encoded_len(count_usize);
        if bytes.len() < needed {
            return Err(ClockDecodeError::Truncated { needed, available: bytes.len() });
        }
        if bytes.len() > needed {
            return Err(ClockDecodeError::TrailingBytes { count: bytes.len() - needed });
        }
        let (chunks, remainder) = body.as_chunks::<ENTRY_BYTES>();
        assert!(remainder.is_empty() && chunks.len() == count_usize);
        let entries: Vec<(Actor, u64)> = chunks.iter().map(decode_entry).collect();
        let vector = VersionVector::from_entries(entries)?;
        Ok(vector)
    }

    /// Whether `other` contains every event of `self`.
    fn is_covered_by(&self, other: &VersionVector) -> bool {
        self.entries.iter().all(|&(actor, counter)| other.get(actor) >= counter)
    }
}

impl FromIterator<Dot> for VersionVector {
    fn from_iter<I: IntoIterator<Item = Dot>>(dots: I) -> VersionVector {
        let mut vector = VersionVector::new();
        for dot in dots {
            vector.add(dot);
        }
        vector
    }
}

/// One entry of the encoding; its counter is not yet checked.
fn decode_entry(entry: &[u8; ENTRY_BYTES]) -> (Actor, u64) {
    let mut node = [0; 8];
    let mut incarnation = [0; 4];
    let mut counter = [0; 8];
    node.copy_from_slice(&entry[0..8]);
    incarnation.copy_from_slice(&entry[8..12]);
    counter.copy_from_slice(&entry[12..20]);
    let actor = Actor::new(u64::from_le_bytes(node), u32::from_le_bytes(incarnation));
    (actor, u64::from_le_bytes(counter))
}

/// Checks the canonical form: actors strictly ascending, counters nonzero.
fn validate(entries: &[(Actor, u64)]) -> Result<(), ClockError> {
    for (index, &(actor, counter)) in entries.iter().enumerate() {
        if counter == 0 {
            return Err(ClockError::CounterZero { index });
        }
        if index > 0 && entries[index - 1].0.cmp(&actor) != Ordering::Less {
            return Err(ClockError::ActorsNotAscending { index });
        }
    }
    Ok(())
}

/// Walks two canonical entry lists in actor order, yielding every actor in
/// either with its counter on each side (0 where absent).
fn join<'a>(
    left: &'a [(Actor, u64)],
    right: &'a [(Actor, u64)],
) -> impl Iterator<Item = (Actor, u64, u64)> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let (step_left, step_right) = match (left.get(i), right.get(j)) {
            (None, None) => return None,
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, true),
            (Some((a, _)), Some((b, _))) => (a <= b, b <= a),
        };
        let (actor, x) = if step_left { left[i] } else { (right[j].0, 0) };
        let y = if step_right { right[j].1 } else { 0 };
        i += usize::from(step_left);
        j += usize::from(step_right);
        Some((actor, x, y))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Actor = Actor::new(1, 0);
    const B: Actor = Actor::new(2, 0);
    const A1: Actor = Actor::new(1, 1);

    fn vv(entries: &[(Actor, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.to_vec()).unwrap()
    }

    #[test]
    fn actors_order_by_node_then_incarnation() {
        assert!(A < A1);
        assert!(A1 < B);
        assert!(Actor::new(1, u32::MAX) < Actor::new(2, 0));
    }

    #[test]
    fn absent_actor_reads_as_zero_and_contains_nothing() {
        let v = vv(&[(A, 3)]);
        assert_eq!(v.get(B), 0);
        assert!(v.contains(Dot::new(A, 3)));
        assert!(v.contains(Dot::new(A, 1)));
        assert!(!v.contains(Dot::new(A, 4)));
        assert!(!v.contains(Dot::new(A1, 1)));
    }

    #[test]
    fn add_keeps_the_highest_counter_and_sorts_new_actors() {
        let mut v = VersionVector::new();
        v.add(Dot::new(B, 2));
        v.add(Dot::new(A, 5));
        v.add(Dot::new(A, 3));
        assert_eq!(v.iter().collect::<Vec<_>>(), [(A, 5), (B, 2)]);
        v.check_invariants();
    }

    #[test]
    fn merge_is_pointwise_max() {
        let mut v = vv(&[(A, 3), (B, 1)]);
        v.merge(&vv(&[(A, 1), (A1, 2), (B, 4)]));
        assert_eq!(v, vv(&[(A, 3), (A1, 2), (B, 4)]));
    }

    #[test]
    fn compare_distinguishes_all_four_relations() {
        let old = vv(&[(A, 1)]);
        let new = vv(&[(A, 2)]);
        let side = vv(&[(B, 1)]);
        assert_eq!(old.compare(&old), Causality::Equal);
        assert_eq!(old.compare(&new), Causality::Before);
        assert_eq!(new.compare(&old), Causality::After);
        assert_eq!(new.compare(&side), Causality::Concurrent);
        assert_eq!(VersionVector::new().compare(&side), Causality::Before);
    }

    #[test]
    fn from_entries_rejects_non_canonical_lists() {
        assert_eq!(
            VersionVector::from_entries(vec![(A, 1), (B, 0)]),
            Err(ClockError::CounterZero { index: 1 })
        );
        assert_eq!(
            VersionVector::from_entries(vec![(B, 1), (A, 1)]),
            Err(ClockError::ActorsNotAscending { index: 1 })
        );
        assert_eq!(
            VersionVector::from_entries(vec![(A, 1), (A, 2)]),
            Err(ClockError::ActorsNotAscending { index: 1 })
        );
    }

    #[test]
    fn encoding_has_the_documented_layout() {
        let bytes = vv(&[(A, 3), (B, 1)]).encode();
        assert_eq!(bytes.len(), encoded_len(2));
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(bytes[1..5], 2u32.to_le_bytes());
        assert_eq!(bytes[5..13], 1u64.to_le_bytes());
        assert_eq!(bytes[13..17], 0u32.to_le_bytes());
        assert_eq!(bytes[17..25], 3u64.to_le_bytes());
        assert_eq!(VersionVector::decode(&bytes), Ok(vv(&[(A, 3), (B, 1)])));
        assert_eq!(VersionVector::new().encode(), [FORMAT_VERSION, 0, 0, 0, 0]);
    }

    #[test]
    fn decode_refuses_every_non_canonical_encoding() {
        let good = vv(&[(A, 3), (B, 1)]).encode();
        let decode = VersionVector::decode;
        assert_eq!(decode(&[]), Err(ClockDecodeError::Truncated { needed: 5, available: 0 }));
        assert_eq!(
            decode(&good[..3]),
            Err(ClockDecodeError::Truncated { needed: 5, available: 3 })
        );
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(ClockDecodeError::Truncated { needed: 45, available: 44 })
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(ClockDecodeError::TrailingBytes { count: 1 }));
        let mut format = good.clone();
        format[0] = 2;
        assert_eq!(decode(&format), Err(ClockDecodeError::UnknownFormat { format: 2 }));
        let mut count = good.clone();
        count[1..5].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(decode(&count), Err(ClockDecodeError::TooManyEntries { count: 65, max: 64 }));
        count[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&count), Err(ClockDecodeError::TooManyEntries { .. })));
        let mut zero = good.clone();
        zero[17..25].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&zero), Err(ClockError::CounterZero { index: 0 }.into()));
        let swapped = [&good[..5], &good[25..45], &good[5..25]].concat();
        assert_eq!(decode(&swapped), Err(ClockError::ActorsNotAscending { index: 1 }.into()));
    }

    #[test]
    fn the_largest_clock_round_trips_at_the_byte_limit() {
        let full: VersionVector =
            (0..CLOCK_ENTRIES_MAX as u64).map(|node| Dot::new(Actor::new(node, 0), 1)).collect();
        let bytes = full.encode();
        assert_eq!(bytes.len(), CLOCK_BYTES_MAX);
        assert_eq!(VersionVector::decode(&bytes), Ok(full));
    }

    #[test]
    #[should_panic(expected = "at least 1")]
    fn dot_with_counter_zero_is_a_bug() {
        let _ = Dot::new(A, 0);
    }
}
