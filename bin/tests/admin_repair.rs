//! Anti-entropy between real `holdfast` processes: a node that was down
//! while keys were written gets them back from `holdfast admin repair`
//! (Merkle trees compared over the wire, the differing keys fetched and
//! merged), the command prints what it compared and repaired, and
//! `holdfast status` shows each node's anti-entropy line.
//!
//! Periodic anti-entropy is turned off (`anti_entropy_period_ms = 0`) so
//! that what is repaired is repaired by the command under test.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use holdfast_net::client::{Client, ClientOptions};
use support::{Cluster, explain, holdfast, stdout};

/// How long trees may take to become comparable after a restart.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// `admin repair`'s `name value` lines, as numbers.
fn counters(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn direct(cluster: &Cluster, i: usize) -> Client {
    let options = ClientOptions { route_by_ring: false, ..ClientOptions::default() };
    Client::connect(&[cluster.addr(i)], options).unwrap()
}

/// Runs `holdfast admin repair ARGS --node (node i)` until a run skips no
/// exchange (a restarted node's trees are built in the background first),
/// and returns every run's counters.
fn repair_until_nothing_skipped(
    cluster: &Cluster,
    i: usize,
    args: &[&str],
) -> Vec<BTreeMap<String, u64>> {
    let addr = cluster.addr(i).to_string();
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    let mut runs = Vec::new();
    loop {
        let output = holdfast(&[&["admin", "repair"], args, &["--node", &addr]].concat());
        assert!(output.status.success(), "admin repair: {}", explain(&output));
        let text = stdout(&output);
        assert!(text.starts_with("node "), "{text}");
        let run = counters(&text);
        for name in [
            "exchanges",
            "skipped",
            "partitions_differing",
            "leaves_differing",
            "hashes_received",
            "entries_received",
            "keys_repaired",
            "keys_received",
            "bytes_received",
            "keys_sent",
            "bytes_sent",
            "elapsed_ms",
        ] {
            assert!(run.contains_key(name), "no {name} in:\n{text}");
        }
        let done = run["skipped"] == 0 && run["exchanges"] > 0;
        runs.push(run);
        if done {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "admin repair still skips exchanges after {REPAIR_TIMEOUT:?}: {runs:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn admin_repair_brings_back_what_a_node_missed_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(&config, "anti_entropy_period_ms = 0\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let mut cluster = Cluster::serve(3, &["--shards", "2", "--config", &config]);

    // Keys every node holds, then keys node 2 misses while it is down
    // (with three nodes and N = 3 there is no fallback to hold them).
    let keys: Vec<String> = (0..40).map(|i| format!("ae-{i}")).collect();
    let client = direct(&cluster, 0);
    for key in &keys[..20] {
        client.put(key.as_bytes(), b"before", None).unwrap();
    }
    cluster.stop_node(2);
    for key in &keys[20..] {
        client.put(key.as_bytes(), b"while-down", None).unwrap();
    }
    cluster.start_node(2, &[]);

    let missing = {
        let node2 = direct(&cluster, 2);
        keys[20..]
            .iter()
            .filter(|key| node2.inspect(key.as_bytes()).unwrap().set.is_empty())
            .count()
    };
    assert!(missing > 0, "node 2 should have missed the writes made while it was down");

    // Every partition node 2 replicates, compared with both other nodes.
    let runs = repair_until_nothing_skipped(&cluster, 2, &[]);
    let repaired: u64 = runs.iter().map(|run| run["keys_repaired"]).sum();
    let received: u64 = runs.iter().map(|run| run["keys_received"]).sum();
    assert!(repaired >= missing as u64, "{missing} keys missing, {repaired} repaired: {runs:?}");
    assert!(received > 0, "{runs:?}");
    let node2 = direct(&cluster, 2);
    for key in &keys {
        let set = node2.inspect(key.as_bytes()).unwrap().set;
        assert!(!set.is_empty(), "node 2 still lacks {key} after the repair: {runs:?}");
    }

    // Compared again, nothing differs any more.
    let again = repair_until_nothing_skipped(&cluster, 2, &[]);
    let last = again.last().unwrap();
    assert_eq!(last["keys_repaired"], 0, "{again:?}");
    assert_eq!(last["partitions_differing"], 0, "{again:?}");

    // One partition: every node replicates every partition here.
    let one = repair_until_nothing_skipped(&cluster, 0, &["--partition", "0"]);
    let last = one.last().unwrap();
    assert_eq!(last["exchanges"], 2, "partition 0 with each of the two other nodes: {one:?}");

    // A partition beyond the node's count is refused.
    let addr = cluster.addr(0).to_string();
    let refused = holdfast(&["admin", "repair", "--partition", "4000000", "--node", &addr]);
    assert!(!refused.status.success(), "{}", explain(&refused));

    // `status` prints each node's anti-entropy line.
    let status = cluster.cli(0, &["status"]);
    let text = stdout(&status);
    let lines: Vec<&str> =
        text.lines().filter(|line| line.trim_start().starts_with("anti-entropy:")).collect();
    assert_eq!(lines.len(), 3, "one anti-entropy line per node:\n{text}");
    for line in &lines {
        assert!(line.contains("last full round "), "{line}");
        assert!(line.contains(" trees building"), "{line}");
        assert!(line.contains(" keys repaired"), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|line| !line.contains(" 0 keys repaired") && !line.contains("; 0 exchanges")),
        "some node counted the repair:\n{text}"
    );
}
