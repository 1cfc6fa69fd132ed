//! Always writable: sloppy quorum and hinted handoff, simulated.
//!
//! A write goes to the key's preference list; an owner that is down (its
//! connection refused, or silent past `hint_after`) is stood in for by the
//! next node along the ring, which holds the write with a hint and hands it
//! over once the owner answers again. These tests take owners down and
//! check that writes keep succeeding, that the owners end up with every
//! acknowledged write, and that a write fails only when fewer than W nodes
//! in the whole cluster can take it.
//!
//! `HOLDFAST_SEED=<n>` replays one seed; `HOLDFAST_SEEDS=<n>` changes how
//! many run.

mod support;

use std::time::Duration;

use holdfast_engine::cluster::coordinator::ClientRequest;
use holdfast_engine::cluster::history::Outcome;
use holdfast_engine::cluster::sim::{Sim, SimOptions};
use holdfast_net::message::ErrorCode;
use rand::{Rng, SeedableRng};
use support::{for_seeds, put};

/// Five nodes, N=3 R=2 W=2, and no background workload: the tests call.
fn five_nodes(seed: u64) -> Sim {
    Sim::new(SimOptions { nodes: 5, operations_per_client: 0, ..SimOptions::new(seed) })
}

fn holds(sim: &Sim, node: usize, key: &[u8], value: &str) -> bool {
    sim.inspect(node, key).is_some_and(|set| set.values().any(|held| held == value.as_bytes()))
}

#[test]
fn a_write_succeeds_with_two_of_its_three_owners_down_and_reaches_them_when_they_return() {
    for_seeds(100, |seed| {
        let mut sim = five_nodes(seed);
        let owners = sim.replicas_of(b"cart");
        sim.crash(owners[1]);
        sim.crash(owners[2]);
        let outcome = sim.call(0, owners[0], put(b"cart", "book"));
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        assert!(sim.hinted_keys() > 0, "seed {seed}: a fallback holds a hint");
        let fallbacks: Vec<usize> = (0..5).filter(|node| !owners.contains(node)).collect();
        assert!(
            fallbacks.iter().any(|&node| holds(&sim, node, b"cart", "book")),
            "seed {seed}: a fallback holds the write"
        );

        sim.restart(owners[1]);
        sim.restart(owners[2]);
        assert!(sim.deliver_hints(Duration::from_secs(30)), "seed {seed}: hints delivered");
        for &owner in &owners {
            assert!(holds(&sim, owner, b"cart", "book"), "seed {seed}: owner {owner} has it");
        }
        assert!(sim.coordinator_stats().hints_delivered >= 1, "seed {seed}");
    });
}

#[test]
fn with_every_owner_down_other_nodes_take_the_write() {
    for_seeds(100, |seed| {
        let mut sim = five_nodes(seed);
        let owners = sim.replicas_of(b"cart");
        let outsiders: Vec<usize> = (0..5).filter(|node| !owners.contains(node)).collect();
        for &owner in &owners {
            sim.crash(owner);
        }
        let outcome = sim.call(0, outsiders[0], put(b"cart", "pen"));
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        // Read back while the owners are still down: the fallbacks answer.
        let read = sim.call(1, outsiders[1], ClientRequest::Get { key: b"cart".to_vec(), r: 0 });
        let Outcome::Read { values, .. } = read else { panic!("seed {seed}: {read:?}") };
        assert_eq!(values, [b"pen".to_vec()], "seed {seed}");

        for &owner in &owners {
            sim.restart(owner);
        }
        assert!(sim.deliver_hints(Duration::from_secs(30)), "seed {seed}: hints delivered");
        // Two nodes were up, so two copies were made, one for each of two
        // owners; a read of all three repairs the third.
        let holding = owners.iter().filter(|&&owner| holds(&sim, owner, b"cart", "pen")).count();
        assert!(holding >= 2, "seed {seed}: {holding} owners hold it");
        let read = sim.call(2, outsiders[0], ClientRequest::Get { key: b"cart".to_vec(), r: 3 });
        assert!(matches!(read, Outcome::Read { .. }), "seed {seed}: {read:?}");
        sim.run_to_quiescence();
        for &owner in &owners {
            assert!(holds(&sim, owner, b"cart", "pen"), "seed {seed}: owner {owner} has it");
        }
    });
}

#[test]
fn a_write_fails_only_when_fewer_than_w_nodes_in_the_cluster_can_take_it() {
    let mut sim = five_nodes(7);
    let owners = sim.replicas_of(b"cart");
    let survivor = owners[0];
    for node in (0..5).filter(|&node| node != survivor) {
        sim.crash(node);
    }
    let outcome = sim.call(0, survivor, put(b"cart", "lamp"));
    assert_eq!(outcome, Outcome::Unknown, "on one node only, W=2 is not met");
    let (code, message) = sim.last_error().expect("an error reply").clone();
    assert_eq!(code, ErrorCode::Unavailable);
    assert!(message.contains("no other node could take the write, so W=2"), "{message}");

    // One more node, any node, and W=2 is met again.
    let any_other = (0..5).find(|&node| node != survivor).expect("five nodes");
    sim.restart(any_other);
    let outcome = sim.call(1, survivor, put(b"cart", "lamp, again"));
    assert!(matches!(outcome, Outcome::Written { .. }), "{outcome:?}");
}

#[test]
fn a_silent_owner_is_stood_in_for_after_hint_after() {
    for_seeds(50, |seed| {
        let mut sim = five_nodes(seed);
        let owners = sim.replicas_of(b"cart");
        // Two owners cut off: silence, not refusal. The coordinator waits
        // `hint_after`, then asks the next nodes along the ring.
        let mut sides = vec![0; 5];
        sides[owners[1]] = 1;
        sides[owners[2]] = 1;
        sim.partition(sides);
        let started = sim.now();
        let outcome = sim.call(0, owners[0], put(b"cart", "mug"));
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        let took = sim.now() - started;
        assert!(took < Duration::from_millis(400), "seed {seed}: took {took:?}");
        sim.heal();
        assert!(sim.deliver_hints(Duration::from_secs(30)), "seed {seed}: hints delivered");
        for &owner in &owners {
            assert!(holds(&sim, owner, b"cart", "mug"), "seed {seed}: owner {owner} has it");
        }
    });
}

/// The Dynamo promise over many seeds: through a node that stays up, every
/// write succeeds while the other nodes crash and restart at random (at
/// least W of the five always up), and after they all return, every owner
/// holds every acknowledged write.
#[test]
fn writes_through_a_live_node_always_succeed_while_others_crash_and_restart() {
    for_seeds(200, |seed| {
        let mut sim = five_nodes(seed);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut written = 0;
        for i in 0..40 {
            // Node 0 takes every write; of nodes 1..5, any may be down, but
            // at least one stays up so that W=2 can be met.
            let node = rng.random_range(1..5);
            if sim.is_running(node) {
                let up = (1..5).filter(|&other| sim.is_running(other)).count();
                if up > 1 {
                    sim.crash(node);
                }
            } else {
                sim.restart(node);
            }
            let key = format!("key-{}", rng.random_range(0..8));
            let outcome = sim.call(0, 0, put(key.as_bytes(), &format!("v{i}")));
            assert!(
                matches!(outcome, Outcome::Written { .. }),
                "seed {seed}: write {i} to {key}: {outcome:?} ({:?})",
                sim.last_error()
            );
            written += 1;
            sim.run_until(sim.now() + Duration::from_millis(rng.random_range(0..30)));
        }
        assert_eq!(written, 40);
        let report = sim.settle_and_check();
        report.assert_ok(&format!("seed {seed}"));
    });
}
