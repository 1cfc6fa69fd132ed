//! Anti-entropy, simulated: replicas that diverged (lost messages, crashes,
//! partitions, a wiped disk, a corrupt record) converge to identical trees
//! and identical sibling sets once the network heals, through anti-entropy
//! alone (no client reads, so no read repair), and deleted keys stay
//! deleted.
//!
//! `HOLDFAST_SEED=<n>` replays one seed, `HOLDFAST_SEEDS=<n>` changes how
//! many run.

mod support;

use support::{for_seeds, put};

use std::time::Duration;

use holdfast_engine::cluster::coordinator::ClientRequest;
use holdfast_engine::cluster::history::Outcome;
use holdfast_engine::cluster::sim::{NetworkFaults, Sim, SimOptions};

/// The period the tests run anti-entropy with: every pair compared once
/// a second.
const PERIOD: Duration = Duration::from_secs(1);

fn options(seed: u64) -> SimOptions {
    let mut options = SimOptions { partitions: 32, ..SimOptions::new(seed) };
    options.cluster.anti_entropy_period = PERIOD;
    options
}

/// Writes `count` keys through the nodes in turn, each acknowledged.
fn load(sim: &mut Sim, count: usize, nodes: usize, seed: u64) -> Vec<Vec<u8>> {
    let keys: Vec<Vec<u8>> = (0..count).map(|i| format!("key-{i}").into_bytes()).collect();
    for (index, key) in keys.iter().enumerate() {
        let outcome = sim.call(0, index % nodes, put(key, &format!("value-{index}")));
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
    }
    keys
}

/// Asserts every replica of every key holds the same set.
fn assert_replicas_identical(sim: &Sim, keys: &[Vec<u8>], seed: u64) {
    for key in keys {
        let replicas = sim.replicas_of(key);
        let first = sim.inspect(replicas[0], key).expect("replicas run");
        for &replica in &replicas[1..] {
            let set = sim.inspect(replica, key).expect("replicas run");
            assert_eq!(
                set,
                first,
                "seed {seed}: replicas {} and {replica} of {:?} differ",
                replicas[0],
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// Runs until the trees converge, within `rounds` periods; how long it took.
fn converge(sim: &mut Sim, rounds: u32, seed: u64) -> Duration {
    let limit = PERIOD * rounds;
    match sim.converge_trees(limit) {
        Some(took) => took,
        None => panic!(
            "seed {seed}: partitions {:?} still differ {limit:?} after healing: {sim:?}",
            sim.trees_differing()
        ),
    }
}

#[test]
fn replicas_diverged_by_faults_converge_without_reads() {
    for_seeds(500, |seed| {
        let options = SimOptions {
            network: NetworkFaults::lossy(),
            crashes: true,
            partitions_during_run: true,
            keys: 12,
            operations_per_client: 30,
            // Deletes are reaped as soon as every replica holds them (after
            // a short grace), faults and all.
            ..reaping(seed)
        };
        let mut sim = Sim::new(options);
        sim.run_clients();
        sim.heal_network();
        sim.run_to_quiescence();
        // A restarted node builds its trees first, then one full round (a
        // period) compares every pair; three periods leave room for
        // exchanges that began before the heal and failed.
        converge(&mut sim, 3, seed);
        sim.run_to_quiescence();
        assert_replicas_identical(&sim, &sim.keys(), seed);
        // And nothing acknowledged was lost on the way.
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn a_wiped_replica_is_restored_by_anti_entropy_alone() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(options(seed));
        let keys = load(&mut sim, 300, 3, seed);
        sim.run_to_quiescence();
        let wiped = seed as usize % 3;
        sim.wipe(wiped);
        assert!(!sim.trees_differing().is_empty(), "seed {seed}: the wipe changed nothing");
        let took = converge(&mut sim, 3, seed);
        sim.run_to_quiescence();
        assert_replicas_identical(&sim, &keys, seed);
        for key in &keys {
            let set = sim.inspect(wiped, key).expect("running");
            assert_eq!(set.values().count(), 1, "seed {seed}: {key:?} not restored");
        }
        assert!(took <= PERIOD * 2, "seed {seed}: took {took:?}");
        let stats = sim.coordinator_stats();
        assert!(stats.anti_entropy.keys_repaired >= 300, "seed {seed}: {stats:?}");
        // The restored node writes as a fresh actor: no dot repeats.
        let outcome = sim.call(0, wiped, put(&keys[0], "after"));
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn deletes_a_partitioned_replica_missed_stay_deleted() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(options(seed));
        let keys = load(&mut sim, 120, 3, seed);
        sim.run_to_quiescence();
        // Node 2 is cut off while half the keys are deleted (W=2 is met by
        // nodes 0 and 1, and with three nodes there is no fallback).
        let mut sides = vec![0, 0, 1];
        sides.rotate_right(seed as usize % 3);
        let away = sides.iter().position(|&side| side == 1).expect("one node away");
        let near = (away + 1) % 3;
        sim.partition(sides);
        let (deleted, kept) = keys.split_at(60);
        for key in deleted {
            let context = match sim.call(1, near, ClientRequest::Get { key: key.clone(), r: 2 }) {
                Outcome::Read { context, .. } => context,
                other => panic!("seed {seed}: {other:?}"),
            };
            let delete = ClientRequest::Put { key: key.clone(), value: None, context, w: 2 };
            let outcome = sim.call(1, near, delete);
            assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        }
        sim.run_to_quiescence();
        for key in deleted {
            let stale = sim.inspect(away, key).expect("running");
            assert_eq!(stale.values().count(), 1, "seed {seed}: the cut-off node saw the delete");
        }
        sim.heal_network();
        converge(&mut sim, 3, seed);
        sim.run_to_quiescence();
        assert_replicas_identical(&sim, &keys, seed);
        for key in deleted {
            for replica in sim.replicas_of(key) {
                let set = sim.inspect(replica, key).expect("running");
                assert!(set.is_tombstone_only(), "seed {seed}: {key:?} came back on {replica}");
            }
        }
        for key in kept {
            let set = sim.inspect(away, key).expect("running");
            assert_eq!(set.values().count(), 1, "seed {seed}: {key:?} lost");
        }
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn a_corrupt_record_found_at_restart_is_repaired() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(options(seed));
        let keys = load(&mut sim, 60, 3, seed);
        sim.run_to_quiescence();
        let node = seed as usize % 3;
        let rotten: Vec<&Vec<u8>> = keys.iter().step_by(10).collect();
        for key in &rotten {
            assert!(sim.corrupt(node, key), "seed {seed}: {key:?} not found on disk");
        }
        // Bit rot under a running node is found when its record is read: a
        // restart rebuilds the trees from the records.
        sim.crash(node);
        sim.restart(node);
        sim.run_to_quiescence();
        converge(&mut sim, 3, seed);
        sim.run_to_quiescence();
        for key in &rotten {
            let set = sim.try_inspect(node, key).expect("running");
            let set = set.unwrap_or_else(|error| panic!("seed {seed}: {key:?}: {error}"));
            assert_eq!(set.values().count(), 1, "seed {seed}: {key:?} not repaired");
        }
        assert_replicas_identical(&sim, &keys, seed);
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn an_operator_repair_runs_at_once_and_reports() {
    for_seeds(30, |seed| {
        let mut options = options(seed);
        // Only the operator's repair runs.
        options.cluster.anti_entropy_period = Duration::ZERO;
        let mut sim = Sim::new(options);
        let keys = load(&mut sim, 200, 3, seed);
        sim.run_to_quiescence();
        sim.wipe(1);
        // Until the wiped node's trees are built, its partitions are skipped.
        sim.run_until(sim.now() + Duration::from_secs(2));
        let report = sim.repair(0, None).expect("the repair reports");
        assert!(report.exchanges > 0 && report.skipped == 0, "seed {seed}: {report:?}");
        assert!(report.keys_sent >= 1, "seed {seed}: {report:?}");
        sim.run_to_quiescence();
        // Node 0 shares every partition with node 1 (N=3 of 3 nodes).
        assert_eq!(sim.trees_differing(), Vec::<u32>::new(), "seed {seed}: {report:?}");
        assert_replicas_identical(&sim, &keys, seed);
        // A repair of one partition compares it with its two other replicas.
        let report = sim.repair(2, Some(vec![5])).expect("the repair reports");
        assert_eq!((report.exchanges, report.keys_repaired), (2, 0), "seed {seed}: {report:?}");
    });
}

#[test]
fn the_budget_paces_a_big_repair() {
    for_seeds(10, |seed| {
        let mut options = options(seed);
        // 400 keys to send plus about as many leaf entries to list, at 100
        // keys a second per node (a second's worth to start with): a few
        // seconds, not one tick.
        options.cluster.anti_entropy_keys_per_second = 100;
        let mut sim = Sim::new(options);
        let keys = load(&mut sim, 400, 3, seed);
        sim.run_to_quiescence();
        sim.wipe(0);
        let took = sim
            .converge_trees(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("seed {seed}: {:?} still differ", sim.trees_differing()));
        assert!(
            took >= Duration::from_millis(1500),
            "seed {seed}: the budget did not hold: {took:?}"
        );
        sim.run_to_quiescence();
        assert_replicas_identical(&sim, &keys, seed);
    });
}

/// [`options`] with tombstones reaped half a second after every replica
/// holds them.
fn reaping(seed: u64) -> SimOptions {
    let mut options = options(seed);
    options.cluster.tombstone_grace = Duration::from_millis(500);
    options
}

/// Deletes `keys` through `node`, each with the context of a read first;
/// each acknowledged.
fn delete(sim: &mut Sim, node: usize, keys: &[Vec<u8>], seed: u64) {
    for key in keys {
        let context = match sim.call(1, node, ClientRequest::Get { key: key.clone(), r: 2 }) {
            Outcome::Read { context, .. } => context,
            other => panic!("seed {seed}: {other:?}"),
        };
        let delete = ClientRequest::Put { key: key.clone(), value: None, context, w: 2 };
        let outcome = sim.call(1, node, delete);
        assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
    }
}

#[test]
fn tombstones_every_replica_holds_are_reaped_and_their_keys_written_again() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(reaping(seed));
        let keys = load(&mut sim, 120, 3, seed);
        sim.run_to_quiescence();
        let (deleted, kept) = keys.split_at(60);
        delete(&mut sim, seed as usize % 3, deleted, seed);
        // The grace, then a round to find them everywhere and reap them.
        sim.run_until(sim.now() + PERIOD * 4);
        sim.run_to_quiescence();
        for key in deleted {
            for replica in sim.replicas_of(key) {
                let set = sim.inspect(replica, key).expect("running");
                assert!(set.is_empty(), "seed {seed}: {key:?} still on {replica}: {set:?}");
            }
        }
        for key in kept {
            for replica in sim.replicas_of(key) {
                let set = sim.inspect(replica, key).expect("running");
                assert_eq!(set.values().count(), 1, "seed {seed}: {key:?} lost on {replica}");
            }
        }
        assert!(sim.coordinator_stats().tombstones_reaped >= 60, "seed {seed}");
        assert!(sim.trees_differing().is_empty(), "seed {seed}");
        // A reaped key is written afresh: no dot is issued twice (the
        // history check's rule 4) and no old version comes back.
        for (index, key) in deleted.iter().enumerate().take(20) {
            let outcome = sim.call(0, index % 3, put(key, &format!("again-{index}")));
            assert!(matches!(outcome, Outcome::Written { .. }), "seed {seed}: {outcome:?}");
        }
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}

#[test]
fn a_tombstone_is_not_reaped_while_a_replica_lacks_it() {
    for_seeds(50, |seed| {
        let mut sim = Sim::new(reaping(seed));
        let keys = load(&mut sim, 60, 3, seed);
        sim.run_to_quiescence();
        let away = seed as usize % 3;
        let near = (away + 1) % 3;
        let mut sides = vec![0; 3];
        sides[away] = 1;
        sim.partition(sides);
        let deleted = &keys[..30];
        delete(&mut sim, near, deleted, seed);
        // Well past the grace: the replica that missed the deletes holds
        // the old values, so nobody reaps.
        sim.run_until(sim.now() + PERIOD * 4);
        for key in deleted {
            let set = sim.inspect(near, key).expect("running");
            assert!(set.is_tombstone_only(), "seed {seed}: {key:?} reaped on {near}: {set:?}");
        }
        sim.heal_network();
        sim.run_until(sim.now() + PERIOD * 6);
        sim.run_to_quiescence();
        for key in deleted {
            for replica in sim.replicas_of(key) {
                let set = sim.inspect(replica, key).expect("running");
                assert!(set.is_empty(), "seed {seed}: {key:?} on {replica}: {set:?}");
            }
        }
        sim.settle_and_check().assert_ok(&format!("seed {seed}"));
    });
}
