//! The cluster, simulated: three to five real coordinators over real
//! replicas and stores, on a seeded network and disk (`cluster::sim`).
//!
//! Every test prints the seed it failed on; `HOLDFAST_SEED=<n>` replays one
//! seed, and `HOLDFAST_SEEDS=<n>` changes how many run.

mod support;

use support::for_seeds;

use std::time::Duration;

use holdfast_engine::cluster::coordinator::ClientRequest;
use holdfast_engine::cluster::history::Outcome;
use holdfast_engine::cluster::sim::{NetworkFaults, Sim, SimOptions};
use holdfast_net::VersionVector;

#[test]
fn a_clean_cluster_keeps_every_acknowledged_write_and_reads_see_them() {
    for_seeds(200, |seed| {
        let mut sim = Sim::new(SimOptions::new(seed));
        let report = sim.run_workload();
        report.assert_ok(&format!("seed {seed}"));
        let stats = report.stats;
        assert!(stats.acknowledged_writes > 20, "seed {seed}: too few writes: {stats:?}");
        assert_eq!(stats.unknown, 0, "seed {seed}: a clean network times nothing out: {stats:?}");
    });
}

#[test]
fn a_faulty_network_and_crashing_nodes_lose_no_acknowledged_write() {
    for_seeds(1000, |seed| {
        let options = SimOptions {
            nodes: 3 + (seed % 3) as usize,
            network: NetworkFaults::lossy(),
            crashes: true,
            partitions_during_run: true,
            ..SimOptions::new(seed)
        };
        let mut sim = Sim::new(options);
        let report = sim.run_workload();
        report.assert_ok(&format!("seed {seed}"));
    });
}

fn put(key: &str, value: &str, context: &VersionVector, w: u8) -> ClientRequest {
    ClientRequest::Put {
        key: key.as_bytes().to_vec(),
        value: Some(value.as_bytes().to_vec()),
        context: context.clone(),
        w,
    }
}

fn get(key: &str, r: u8) -> ClientRequest {
    ClientRequest::Get { key: key.as_bytes().to_vec(), r }
}

fn values(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Read { values, .. } => {
            values.iter().map(|value| String::from_utf8_lossy(value).into_owned()).collect()
        }
        other => panic!("expected a read, got {other:?}"),
    }
}

#[test]
fn writes_on_both_sides_of_a_partition_become_siblings_that_a_context_resolves() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(SimOptions::new(seed));
        let empty = VersionVector::new();
        sim.partition(vec![0, 1, 1]);
        // W=1: each side acknowledges on its own (a sloppier W is the
        // application's choice, per request).
        let left = sim.call(0, 0, put("cart", "apples", &empty, 1));
        let right = sim.call(1, 1, put("cart", "pears", &empty, 1));
        assert!(matches!(left, Outcome::Written { .. }), "seed {seed}: {left:?}");
        assert!(matches!(right, Outcome::Written { .. }), "seed {seed}: {right:?}");
        sim.run_until(sim.now() + Duration::from_secs(2));
        sim.heal();

        let read = sim.call(2, 2, get("cart", 3));
        let mut seen = values(&read);
        seen.sort();
        assert_eq!(seen, ["apples", "pears"], "seed {seed}: both writes are siblings");
        let Outcome::Read { context, .. } = read else { unreachable!() };
        let resolved = sim.call(2, 2, put("cart", "apples,pears", &context, 2));
        assert!(matches!(resolved, Outcome::Written { .. }), "seed {seed}: {resolved:?}");
        assert_eq!(values(&sim.call(3, 0, get("cart", 3))), ["apples,pears"], "seed {seed}");
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn a_read_repairs_a_replica_that_missed_a_write() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(SimOptions::new(seed));
        let replicas = sim.replicas_of(b"k");
        let (coordinator, stale) = (replicas[0], replicas[2]);
        let mut sides = vec![0; 3];
        sides[stale] = 1;
        sim.partition(sides);
        let written = sim.call(0, coordinator, put("k", "v", &VersionVector::new(), 2));
        assert!(matches!(written, Outcome::Written { .. }), "seed {seed}: {written:?}");
        sim.run_to_quiescence();
        sim.heal();
        assert!(sim.inspect(stale, b"k").unwrap().is_empty(), "seed {seed}: the write was cut");

        assert_eq!(values(&sim.call(1, coordinator, get("k", 2))), ["v"], "seed {seed}");
        sim.run_to_quiescence();
        let repaired = sim.inspect(stale, b"k").unwrap();
        assert_eq!(repaired.values().collect::<Vec<_>>(), [b"v"], "seed {seed}: not repaired");
        assert_eq!(Some(repaired), sim.inspect(coordinator, b"k"), "seed {seed}: replicas differ");
    });
}

#[test]
fn a_node_outside_the_preference_list_forwards_to_a_replica() {
    for_seeds(30, |seed| {
        let mut sim = Sim::new(SimOptions { nodes: 5, ..SimOptions::new(seed) });
        let replicas = sim.replicas_of(b"k");
        let outsider = (0..5).find(|node| !replicas.contains(node)).expect("5 nodes, N=3");
        let written = sim.call(0, outsider, put("k", "v", &VersionVector::new(), 3));
        assert!(matches!(written, Outcome::Written { .. }), "seed {seed}: {written:?}");
        for &replica in &replicas {
            let set = sim.inspect(replica, b"k").unwrap();
            assert_eq!(set.values().collect::<Vec<_>>(), [b"v"], "seed {seed}: W=3");
        }
        assert!(sim.inspect(outsider, b"k").unwrap().is_empty(), "seed {seed}: not a replica");
        assert_eq!(values(&sim.call(1, outsider, get("k", 3))), ["v"], "seed {seed}");
    });
}

#[test]
fn a_write_that_cannot_meet_w_says_how_many_acknowledged() {
    let mut sim = Sim::new(SimOptions::new(1));
    let replicas = sim.replicas_of(b"k");
    sim.crash(replicas[2]);
    // The dead node refuses the connection: W=3 is known unreachable at once.
    let outcome = sim.call(0, replicas[0], put("k", "v", &VersionVector::new(), 3));
    assert_eq!(outcome, Outcome::Unknown, "the write is on two replicas, not acknowledged");
    let (code, message) = sim.last_error().expect("an error reply").clone();
    assert_eq!(code, holdfast_net::message::ErrorCode::Unavailable);
    assert!(
        message.contains("and 1 failed, and no other node could take the write, so W=3"),
        "{message}"
    );

    // Cut off (silence rather than a refusal), the coordinator times out.
    sim.restart(replicas[2]);
    let mut sides = vec![1; 3];
    sides[replicas[0]] = 0;
    sim.partition(sides);
    let outcome = sim.call(1, replicas[0], put("k", "w", &VersionVector::new(), 2));
    assert_eq!(outcome, Outcome::Unknown);
    let (code, message) = sim.last_error().expect("an error reply").clone();
    assert_eq!(code, holdfast_net::message::ErrorCode::Timeout);
    assert!(message.contains("1 of 3 nodes asked acknowledged in time"), "{message}");
    // Asking for more replicas than a key has is refused outright.
    sim.heal();
    let outcome = sim.call(2, replicas[0], get("k", 4));
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
}
