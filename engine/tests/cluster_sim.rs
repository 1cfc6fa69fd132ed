//! The cluster, simulated: three to five real coordinators over real
//! replicas and stores, on a seeded network and disk (`cluster::sim`).
//!
//! Every test prints the seed it failed on; `HOLDFAST_SEED=<n>` replays one
//! seed, and `HOLDFAST_SEEDS=<n>` changes how many run.

use std::time::Duration;

use holdfast_engine::cluster::coordinator::ClientRequest;
use holdfast_engine::cluster::history::Outcome;
use holdfast_engine::cluster::sim::{NetworkFaults, Sim, SimOptions};
use holdfast_net::VersionVector;

/// Runs `test` for every seed, naming the seed that failed.
fn for_seeds(default_count: u64, test: impl Fn(u64)) {
    if let Ok(seed) = std::env::var("HOLDFAST_SEED") {
        test(seed.parse().expect("HOLDFAST_SEED is a number"));
        return;
    }
    let count = std::env::var("HOLDFAST_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(default_count);
    for seed in 0..count {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
        if let Err(panic) = outcome {
            eprintln!("failed on seed {seed}; replay with HOLDFAST_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

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
    for_seeds(200, |seed| {
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
