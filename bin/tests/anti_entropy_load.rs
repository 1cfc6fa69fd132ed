//! What anti-entropy costs the clients: a three-node cluster (N=3, R=2,
//! W=2) under a steady write load, once with anti-entropy off and once at
//! its default period and budget. Every write must succeed both times; the
//! latency percentiles are printed (run with `--release -- --nocapture`),
//! not asserted: these machines are shared.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use holdfast_net::client::{Client, ClientOptions};
use support::Cluster;
use support::load::{Phase, assert_every_write_succeeded, finish, print_phases, write_load};

/// Warm-up, then the measured stretch.
const WARM_UP: Duration = Duration::from_secs(2);
const MEASURED: Duration = Duration::from_secs(8);

/// Anti-entropy exchanges the cluster's nodes ran, summed.
fn exchanges(cluster: &Cluster) -> u64 {
    let options = ClientOptions { timeout: Duration::from_secs(5), ..ClientOptions::default() };
    let mut total = 0;
    for &addr in cluster.addrs() {
        let client = Client::connect(&[addr], options).unwrap();
        total += client.stats().unwrap().anti_entropy_exchanges;
    }
    total
}

/// Runs the load on a fresh cluster with `config`; the measured phase and
/// the exchanges run meanwhile.
fn measure(name: &'static str, config: &str) -> (Phase, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holdfast.toml");
    std::fs::write(&path, config).unwrap();
    let cluster = Cluster::serve(3, &["--config", path.to_str().unwrap()]);
    let before = exchanges(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers = write_load(&cluster, stop.clone());
    std::thread::sleep(WARM_UP + MEASURED);
    stop.store(true, Ordering::Relaxed);
    let writes = finish(writers);
    let from = started + WARM_UP;
    let phase = Phase::of(name, &writes, from, from + MEASURED);
    print_phases(name, std::slice::from_ref(&phase), &writes);
    (phase, exchanges(&cluster) - before)
}

#[test]
#[allow(clippy::print_stdout)] // The measurement is the test's report.
fn steady_writes_with_anti_entropy_on_and_off() {
    let (off, off_exchanges) = measure("ae off", "anti_entropy_period_ms = 0\n");
    let (on, on_exchanges) = measure("ae on", "");
    println!("{}\n{}", off.report(), on.report());
    println!("exchanges during the run: off {off_exchanges}, on (default period) {on_exchanges}");
    assert_eq!(off_exchanges, 0, "anti-entropy ran while switched off");
    assert!(on_exchanges > 0, "anti-entropy did not run at its default period");
    assert_every_write_succeeded(&[off, on]);
}
