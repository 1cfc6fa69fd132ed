//! The algebraic laws of clocks and sibling sets, checked with proptest.
//!
//! Version vector laws hold for arbitrary vectors. Sibling set laws do not:
//! dominance is transitive only for clocks the write process can produce
//! (a context is always read from some replica's state), so those laws are
//! checked on states reached by simulating that process. A small cluster of
//! replicas of one key takes random steps: clients read (possibly stale)
//! contexts, coordinators write with one of them, replicas ship their whole
//! state to each other, and a node may lose its disk and rejoin as a new
//! incarnation.

use holdfast_net::siblings::{FORMAT_VERSION, VERSIONS_MAX};
use holdfast_net::{Actor, Causality, DecodeLimits, Dot, SiblingSet, Version, VersionVector};
use proptest::prelude::*;
use proptest::sample::Index;

/// Few actors and small counters, so that vectors often overlap and the
/// interesting cases (equal, nested) come up, not only concurrent ones.
fn actor() -> impl Strategy<Value = Actor> {
    (0..4u64, 0..2u32).prop_map(|(node, incarnation)| Actor::new(node, incarnation))
}

fn dot() -> impl Strategy<Value = Dot> {
    (actor(), 1..5u64).prop_map(|(actor, counter)| Dot::new(actor, counter))
}

fn vector() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec(dot(), 0..6).prop_map(VersionVector::from_iter)
}

fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..8))
}

/// An arbitrary version: not causally well formed, only not self-dominating.
fn version() -> impl Strategy<Value = Version> {
    (dot(), vector(), value())
        .prop_filter("a version never contains its own dot", |(dot, clock, _)| {
            !clock.contains(*dot)
        })
        .prop_map(|(dot, clock, value)| Version { dot, clock, value })
}

/// A canonical set built from arbitrary versions (`add` keeps any set
/// canonical, even where it could not keep it order-independent).
fn arbitrary_set() -> impl Strategy<Value = SiblingSet> {
    prop::collection::vec(version(), 0..8).prop_map(|versions| {
        let mut set = SiblingSet::new();
        for version in versions {
            set.add(version);
        }
        set
    })
}

const NODES: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// A client reads the merged state of two replicas (R = 2, or R = 1
    /// when both are the same) and keeps the context for a later write.
    Read { first: usize, second: usize },
    /// A client writes through `coordinator` with a context it read at some
    /// earlier time (possibly long ago), or none at all.
    Write { coordinator: usize, context: Index, value: Option<u8> },
    /// One replica ships its whole state to another: replication, read
    /// repair, hinted handoff and anti-entropy all look like this.
    Sync { from: usize, to: usize },
    /// A node loses its disk and rejoins empty, under a new incarnation.
    Lose { node: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..NODES, 0..NODES).prop_map(|(first, second)| Step::Read { first, second }),
        4 => (0..NODES, any::<Index>(), any::<Option<u8>>())
            .prop_map(|(coordinator, context, value)| Step::Write { coordinator, context, value }),
        4 => (0..NODES, 0..NODES).prop_map(|(from, to)| Step::Sync { from, to }),
        1 => (0..NODES).prop_map(|node| Step::Lose { node }),
    ]
}

/// Everything one simulated history produced.
#[derive(Debug)]
struct History {
    /// The final state of each replica.
    replicas: Vec<SiblingSet>,
    /// Every state any replica passed through.
    states: Vec<SiblingSet>,
    /// Every version any write created.
    versions: Vec<Version>,
}

/// Runs `steps`, asserting after every write that it replaced exactly the
/// versions its context covered.
fn simulate(steps: &[Step]) -> History {
    let mut actors: Vec<Actor> = (0..NODES as u64).map(|node| Actor::new(node, 0)).collect();
    let mut replicas = vec![SiblingSet::new(); NODES];
    let mut contexts = vec![VersionVector::new()];
    let mut states = vec![SiblingSet::new()];
    let mut versions = Vec::new();
    for step in steps {
        match *step {
            Step::Read { first, second } => {
                let mut read = replicas[first].clone();
                read.merge(&replicas[second]);
                contexts.push(read.context());
            }
            Step::Write { coordinator, ref context, value } => {
                let context = context.get(&contexts).clone();
                let before = replicas[coordinator].clone();
                let dot = replicas[coordinator]
                    .write(actors[coordinator], &context, value.map(|byte| vec![byte]))
                    .expect("honest writes never exhaust counters or clocks");
                let after = &replicas[coordinator];
                for version in &before {
                    let kept = after.iter().any(|kept| kept == version);
                    assert_eq!(kept, !context.contains(version.dot), "write replaced {version:?}");
                }
                assert_eq!(
                    after.len(),
                    before.iter().filter(|v| !context.contains(v.dot)).count() + 1
                );
                let new = after.iter().find(|version| version.dot == dot).expect("write kept");
                assert_eq!(new.clock, context);
                versions.push(new.clone());
                states.push(after.clone());
            }
            Step::Sync { from, to } => {
                let shipped = replicas[from].clone();
                replicas[to].merge(&shipped);
                states.push(replicas[to].clone());
            }
            Step::Lose { node } => {
                replicas[node] = SiblingSet::new();
                actors[node].incarnation += 1;
            }
        }
    }
    History { replicas, states, versions }
}

fn history() -> impl Strategy<Value = History> {
    prop::collection::vec(step(), 0..40).prop_map(|steps| simulate(&steps))
}

fn merged(a: &SiblingSet, b: &SiblingSet) -> SiblingSet {
    let mut result = a.clone();
    result.merge(b);
    result
}

fn joined(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut result = a.clone();
    result.merge(b);
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn vector_merge_is_commutative_associative_idempotent(
        a in vector(), b in vector(), c in vector()
    ) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        prop_assert_eq!(joined(&a, &a), a.clone());
    }

    #[test]
    fn vector_merge_is_the_least_upper_bound(a in vector(), b in vector(), c in vector()) {
        let ab = joined(&a, &b);
        prop_assert!(ab.descends(&a) && ab.descends(&b));
        if c.descends(&a) && c.descends(&b) {
            prop_assert!(c.descends(&ab));
        }
        ab.check_invariants();
    }

    #[test]
    fn vector_descends_is_a_partial_order(a in vector(), b in vector(), c in vector()) {
        prop_assert!(a.descends(&a));
        if a.descends(&b) && b.descends(&a) {
            prop_assert_eq!(&a, &b);
        }
        if a.descends(&b) && b.descends(&c) {
            prop_assert!(a.descends(&c));
        }
    }

    #[test]
    fn vector_compare_agrees_with_descends(a in vector(), b in vector()) {
        let expected = match (a.descends(&b), b.descends(&a)) {
            (true, true) => Causality::Equal,
            (false, true) => Causality::Before,
            (true, false) => Causality::After,
            (false, false) => Causality::Concurrent,
        };
        prop_assert_eq!(a.compare(&b), expected);
        prop_assert_eq!(expected == Causality::Equal, a == b);
    }

    #[test]
    fn vector_contains_exactly_the_dots_added(dots in prop::collection::vec(dot(), 0..8), probe in dot()) {
        let vector: VersionVector = dots.iter().copied().collect();
        let covered = dots.iter().any(|d| d.actor() == probe.actor() && d.counter() >= probe.counter());
        prop_assert_eq!(vector.contains(probe), covered);
    }

    #[test]
    fn reachable_versions_have_unique_dots_and_transitive_dominance(history in history()) {
        let versions = &history.versions;
        for (i, v) in versions.iter().enumerate() {
            for (j, w) in versions.iter().enumerate() {
                prop_assert!(i == j || v.dot != w.dot, "dot {} issued twice", v.dot);
                if !v.dominates(w) {
                    continue;
                }
                for u in versions {
                    if w.dominates(u) {
                        prop_assert!(v.dominates(u), "{} > {} > {} but not {} > {}",
                            v.dot, w.dot, u.dot, v.dot, u.dot);
                    }
                }
            }
        }
    }

    #[test]
    fn sibling_merge_is_commutative_associative_idempotent(
        history in history(), a in any::<Index>(), b in any::<Index>(), c in any::<Index>()
    ) {
        let (a, b, c) = (a.get(&history.states), b.get(&history.states), c.get(&history.states));
        prop_assert_eq!(merged(a, b), merged(b, a));
        prop_assert_eq!(merged(&merged(a, b), c), merged(a, &merged(b, c)));
        prop_assert_eq!(merged(a, a), a.clone());
    }

    #[test]
    fn adding_reachable_versions_in_any_order_keeps_exactly_the_undominated(
        history in history(),
        keep in prop::collection::vec(any::<bool>(), 64),
        swaps in prop::collection::vec((any::<Index>(), any::<Index>()), 0..64),
    ) {
        let mut chosen: Vec<&Version> = history.versions.iter()
            .zip(keep.iter().cycle())
            .filter_map(|(version, &keep)| keep.then_some(version))
            .collect();
        let expected: Vec<&Version> = chosen.iter().copied()
            .filter(|v| !chosen.iter().any(|w| w.dominates(v)))
            .collect();
        let in_order = build(&chosen);
        if !chosen.is_empty() {
            for (i, j) in &swaps {
                let (i, j) = (i.index(chosen.len()), j.index(chosen.len()));
                chosen.swap(i, j);
            }
        }
        let shuffled = build(&chosen);
        prop_assert_eq!(&in_order, &shuffled);
        prop_assert_eq!(in_order.encode(), shuffled.encode());
        let mut expected_dots: Vec<Dot> = expected.iter().map(|v| v.dot).collect();
        expected_dots.sort();
        prop_assert_eq!(in_order.iter().map(|v| v.dot).collect::<Vec<_>>(), expected_dots);
    }

    #[test]
    fn replicas_converge_whatever_order_they_exchange_state(history in history()) {
        let forward = history.replicas.iter().fold(SiblingSet::new(), |acc, r| merged(&acc, r));
        let backward = history.replicas.iter().rev().fold(SiblingSet::new(), |acc, r| merged(&acc, r));
        prop_assert_eq!(&forward, &backward);
        for replica in &history.replicas {
            prop_assert_eq!(&merged(replica, &forward), &forward);
        }
    }

    #[test]
    fn reachable_states_round_trip_through_bytes(history in history()) {
        for state in &history.states {
            state.check_invariants();
            let bytes = state.encode();
            prop_assert_eq!(&SiblingSet::decode(&bytes, DecodeLimits::default()), &Ok(state.clone()));
        }
    }

    #[test]
    fn arbitrary_sets_round_trip_through_bytes(set in arbitrary_set()) {
        set.check_invariants();
        let bytes = set.encode();
        prop_assert_eq!(bytes.len(), set.encoded_len());
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        let decoded = SiblingSet::decode(&bytes, DecodeLimits::default());
        prop_assert_eq!(decoded.as_ref(), Ok(&set));
        prop_assert_eq!(decoded.map(|d| d.encode()), Ok(bytes));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_accepts_only_canonical_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        assert_only_canonical(&bytes)?;
    }

    #[test]
    fn decoding_corrupted_encodings_never_panics_and_accepts_only_canonical_bytes(
        set in arbitrary_set(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = set.encode();
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        assert_only_canonical(&bytes)?;
    }
}

fn build(versions: &[&Version]) -> SiblingSet {
    let mut set = SiblingSet::new();
    for version in versions {
        set.add((*version).clone());
    }
    set
}

/// Decoding must not panic, and what it accepts must re-encode to the very
/// same bytes (the canonical-form guarantee Merkle hashing depends on).
fn assert_only_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    match SiblingSet::decode(bytes, DecodeLimits { value_bytes_max: 16 }) {
        Ok(set) => {
            set.check_invariants();
            prop_assert!(set.len() <= VERSIONS_MAX);
            prop_assert_eq!(set.encode(), bytes);
        }
        // Every refusal explains itself.
        Err(error) => prop_assert!(!error.to_string().is_empty()),
    }
    Ok(())
}
