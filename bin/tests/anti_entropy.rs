//! Anti-entropy with real processes: replicas that lost data get it back
//! from the others in the background, with no client reading anything.
//!
//! - A node whose data directory is wiped comes back with `serve
//!   --node-id` (its old id) and the same address and seeds: it rejoins
//!   the ring as the member it was, at a fresh incarnation, and
//!   anti-entropy refills every key it replicates. Three nodes, N=3, R=2,
//!   W=2, `HOLDFAST_AE_KEYS` keys (default 20 000) of 100-byte values.
//! - A node whose segment files had a few values flipped on disk reports
//!   those keys corrupt, and anti-entropy rewrites them (a merge into a
//!   corrupt record takes it as lost).
//!
//! Progress is watched with `inspect` (a node's own replica, never a read:
//! no read repair), so only anti-entropy can have put the keys back. The
//! tests print how long the repair took and what the nodes' anti-entropy
//! counters say they moved; run with `--nocapture` to see them.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use holdfast_net::client::{Batch, Client, ClientOptions, Operation, Response};
use holdfast_net::membership::MemberStatus;
use holdfast_net::ring::NodeId;
use rand::seq::IndexedRandom as _;
use support::{Cluster, explain, holdfast, stderr, stdout};

/// How long anti-entropy may take to repair a node.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(300);
/// Keys inspected per poll while waiting.
const SAMPLE: usize = 500;
/// Operations per batch sent at once.
const BATCH: usize = 5000;
const VALUE_BYTES: usize = 100;

/// How many keys the wiped-node test writes (`HOLDFAST_AE_KEYS`).
fn key_count() -> usize {
    match std::env::var("HOLDFAST_AE_KEYS") {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("HOLDFAST_AE_KEYS={text:?}")),
        Err(_) => 20_000,
    }
}

/// `prefix-i-` padded to 100 bytes: unique bytes in front, so a value can
/// be found in a segment file.
fn value(prefix: &str, i: usize) -> Vec<u8> {
    let mut value = format!("{prefix}-{i:08}-").into_bytes();
    value.resize(VALUE_BYTES, b'v');
    value
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    format!("{prefix}-key-{i:08}").into_bytes()
}

fn probe_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(1),
        route_by_ring: false,
        ..ClientOptions::default()
    }
}

/// A client of the one node at `addr`: requests are not routed.
fn direct(addr: SocketAddr) -> Client {
    Client::connect(&[addr], probe_options()).unwrap()
}

/// Writes keys `0..count` (with [`value`]) through the whole cluster, in
/// pipelined batches; every write must be acknowledged.
fn write_keys(cluster: &Cluster, prefix: &str, count: usize) {
    let client = cluster.cluster_client();
    for start in (0..count).step_by(BATCH) {
        let end = (start + BATCH).min(count);
        let mut batch = Batch::new();
        for i in start..end {
            batch.put(&key(prefix, i), &value(prefix, i), None);
        }
        for (i, result) in (start..end).zip(client.execute(&batch).unwrap()) {
            assert!(matches!(result, Ok(Response::Put(_))), "put {i}: {result:?}");
        }
    }
}

/// What node `addr`'s own replica holds of each key `i` in `which`: `Ok`
/// if exactly its value, else what was found instead.
fn inspect_all(addr: SocketAddr, prefix: &str, which: &[usize]) -> Vec<Result<(), String>> {
    let client = direct(addr);
    let mut found = Vec::with_capacity(which.len());
    for chunk in which.chunks(BATCH) {
        let mut batch = Batch::new();
        for &i in chunk {
            batch.push(Operation::Inspect { key: key(prefix, i) });
        }
        let results = match client.execute(&batch) {
            Ok(results) => results,
            Err(error) => {
                found.extend(chunk.iter().map(|_| Err(format!("batch: {error}"))));
                continue;
            }
        };
        for (&i, result) in chunk.iter().zip(results) {
            found.push(match result {
                Ok(Response::Inspect(inspected)) => {
                    let values: Vec<&[u8]> = inspected.set.values().collect();
                    if values == [value(prefix, i).as_slice()] {
                        Ok(())
                    } else if values.is_empty() {
                        Err("missing".into())
                    } else {
                        let shown: Vec<String> =
                            values.iter().map(|v| String::from_utf8_lossy(v).into()).collect();
                        Err(format!("wrong: {shown:?}"))
                    }
                }
                Ok(other) => Err(format!("answered {other:?}")),
                Err(error) => Err(format!("error: {error}")),
            });
        }
    }
    found
}

/// The keys of `which` node `addr` does not hold right.
fn wrong_on(addr: SocketAddr, prefix: &str, which: &[usize]) -> Vec<(usize, String)> {
    which
        .iter()
        .zip(inspect_all(addr, prefix, which))
        .filter_map(|(&i, found)| found.err().map(|why| (i, why)))
        .collect()
}

fn node_id(addr: SocketAddr) -> NodeId {
    direct(addr).stats().unwrap().node
}

/// Anti-entropy counters summed over the nodes (each asked for its
/// stats, as `holdfast status` does).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    exchanges: u64,
    skipped: u64,
    keys_repaired: u64,
    bytes_received: u64,
    bytes_sent: u64,
    rounds: u64,
    trees_building: u64,
}

fn anti_entropy_totals(cluster: &Cluster) -> Result<Totals, String> {
    let mut totals = Totals::default();
    for &addr in cluster.addrs() {
        let client =
            Client::connect(&[addr], probe_options()).map_err(|e| format!("{addr}: {e}"))?;
        let stats = client.stats().map_err(|error| format!("{addr}: {error}"))?;
        totals.exchanges += stats.anti_entropy_exchanges;
        totals.skipped += stats.anti_entropy_skipped;
        totals.keys_repaired += stats.anti_entropy_keys_repaired;
        totals.bytes_received += stats.anti_entropy_bytes_received;
        totals.bytes_sent += stats.anti_entropy_bytes_sent;
        totals.rounds += stats.anti_entropy_rounds;
        totals.trees_building += stats.trees_building;
    }
    Ok(totals)
}

fn show(totals: &Result<Totals, String>) -> String {
    match totals {
        Ok(t) => format!(
            "{} exchanges ({} skipped), {} keys repaired, {} bytes fetched + {} bytes sent, {} \
             full rounds, {} trees building",
            t.exchanges,
            t.skipped,
            t.keys_repaired,
            t.bytes_received,
            t.bytes_sent,
            t.rounds,
            t.trees_building
        ),
        Err(why) => format!("(unavailable: {why})"),
    }
}

/// The incarnation node `i`'s log says it started with, last.
fn logged_incarnation(cluster: &Cluster, i: usize) -> Option<u64> {
    let log = std::fs::read_to_string(cluster.dir().join(format!("logs/node-{i}.log"))).ok()?;
    let line = log.lines().rev().find(|line| line.contains("node ready"))?;
    let after = line.split_once("incarnation=")?.1;
    after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Waits (up to [`REPAIR_TIMEOUT`] from `from`) until node `addr` holds
/// every key of `all` right: polls a random sample, and checks every key
/// once the sample is complete. Returns when it was first seen complete.
fn wait_until_repaired(
    cluster: &Cluster,
    addr: SocketAddr,
    prefix: &str,
    all: &[usize],
    from: Instant,
) -> Instant {
    let mut rng = rand::rng();
    let mut last_report = Instant::now();
    loop {
        let sample: Vec<usize> =
            all.choose_multiple(&mut rng, SAMPLE.min(all.len())).copied().collect();
        let sample_wrong = wrong_on(addr, prefix, &sample);
        if sample_wrong.is_empty() {
            let wrong = wrong_on(addr, prefix, all);
            if wrong.is_empty() {
                return Instant::now();
            }
            if Instant::now() - from >= REPAIR_TIMEOUT {
                panic!(
                    "{} of {} keys still wrong on {addr} {REPAIR_TIMEOUT:?} after the restart \
                     (first: {:?}); anti-entropy: {}\n{}",
                    wrong.len(),
                    all.len(),
                    &wrong[..wrong.len().min(5)],
                    show(&anti_entropy_totals(cluster)),
                    cluster.logs()
                );
            }
        } else if Instant::now() - from >= REPAIR_TIMEOUT {
            panic!(
                "{} of a sample of {} keys still wrong on {addr} {REPAIR_TIMEOUT:?} after the \
                 restart (first: {:?}); anti-entropy: {}\n{}",
                sample_wrong.len(),
                sample.len(),
                &sample_wrong[..sample_wrong.len().min(5)],
                show(&anti_entropy_totals(cluster)),
                cluster.logs()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "{:>6.1} s: {} of a sample of {} wrong on {addr}; anti-entropy: {}",
                from.elapsed().as_secs_f64(),
                sample_wrong.len(),
                sample.len(),
                show(&anti_entropy_totals(cluster))
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (a little) until every node holds every key of `all`: W = 2
/// acknowledges a write before the third replica has it.
fn wait_until_everywhere(cluster: &Cluster, prefix: &str, all: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &addr in cluster.addrs() {
        loop {
            let wrong = wrong_on(addr, prefix, all);
            if wrong.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} keys not on {addr} after writing (first: {:?})",
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `holdfast serve` as node `i` (which must be stopped) with
/// `--node-id ID` until it exits by itself (killed after a minute).
fn serve_once(cluster: &Cluster, i: usize, id: &str) -> Output {
    struct Killed(Option<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let data = cluster.data_dir(i);
    let listen = cluster.addr(i).to_string();
    let mut child = Killed(Some(
        Command::new(support::HOLDFAST)
            .args(["serve", "--data-dir", data.to_str().unwrap(), "--listen", &listen])
            .args(["--pin", "false", "--node-id", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.0.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve --node-id {id} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        support::wait_for_all(&[cluster.addr(i)], support::nobody_listens, Duration::from_secs(10)),
        "the refused node's port is still listened on"
    );
    output
}

#[test]
#[allow(clippy::print_stdout)]
fn a_wiped_node_restarted_with_its_id_gets_every_key_back() {
    const PREFIX: &str = "wiped";
    let keys = key_count();
    let mut cluster = Cluster::serve(3, &["--n", "3", "--r", "2", "--w", "2"]);
    let written = Instant::now();
    write_keys(&cluster, PREFIX, keys);
    let write_time = written.elapsed();
    let all: Vec<usize> = (0..keys).collect();
    let target = cluster.addr(2);
    wait_until_everywhere(&cluster, PREFIX, &all);
    let id = node_id(target);
    let ring_before = direct(cluster.addr(0)).ring().unwrap().ring.unwrap();
    assert!(ring_before.contains(id));

    cluster.stop_node(2);
    // With its directory intact, another id is refused.
    let refused = serve_once(&cluster, 2, "0000000000000001");
    assert!(
        !refused.status.success() && stderr(&refused).contains("refusing to start as another node"),
        "{}",
        explain(&refused)
    );
    std::fs::remove_dir_all(cluster.data_dir(2)).unwrap();
    let restarted = Instant::now();
    let hex = format!("{id:016x}");
    cluster.start_node(2, &["--node-id", &hex]);
    let serving = restarted.elapsed();

    // The same member, at an incarnation its earlier life cannot have used.
    assert_eq!(node_id(target), id, "the node came back under its old id");
    let ring_after = direct(target).ring().unwrap().ring.unwrap();
    assert_eq!(ring_after.version(), ring_before.version(), "no membership change");
    assert!(ring_after.contains(id));
    // Its gossip (started once the ring is formed) has it `Up`, under the
    // same ring, nothing pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = direct(target).stats().unwrap();
        let settled = (stats.status, stats.ring_version, stats.next_version)
            == (MemberStatus::Up.as_u8(), ring_before.version(), 0);
        if settled {
            break;
        }
        assert!(Instant::now() < deadline, "not settled after the restore: {stats:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let incarnation = logged_incarnation(&cluster, 2);
    assert!(
        incarnation.is_some_and(|incarnation| (1 << 30..1 << 31).contains(&incarnation)),
        "incarnation {incarnation:?} after the restore\n{}",
        cluster.logs()
    );
    let missing_at_start = wrong_on(target, PREFIX, &all[..SAMPLE.min(keys)]).len();

    let repaired = wait_until_repaired(&cluster, target, PREFIX, &all, restarted);
    let took = repaired - restarted;
    // The others still hold every key too (a repair sends both ways).
    for i in 0..2 {
        assert!(wrong_on(cluster.addr(i), PREFIX, &all).is_empty(), "node {i} lost keys");
    }
    let totals = anti_entropy_totals(&cluster);
    // What an operator sees.
    let status = stdout(&cluster.cli(0, &["status"]));
    let lines: Vec<&str> = status
        .lines()
        .filter(|line| line.contains("anti-entropy") || line.contains("tree"))
        .collect();
    println!(
        "wiped node: {keys} keys of {VALUE_BYTES} bytes written in {:.1} s; node {hex} restored \
         at incarnation {} and serving {:.1} s after its restart, {missing_at_start} of the \
         first {} keys missing; every key back {:.1} s after the restart; anti-entropy totals \
         over the nodes: {}\n`holdfast status` anti-entropy lines:\n{}",
        write_time.as_secs_f64(),
        incarnation.unwrap_or_default(),
        serving.as_secs_f64(),
        SAMPLE.min(keys),
        took.as_secs_f64(),
        show(&totals),
        lines.join("\n")
    );
    cluster.stop();
}

/// Every offset in `haystack` where `needle` starts.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// The segment files under `dir`, recursively.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "seg") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Flips one byte of every copy of each value of `which` in the segment
/// files under `dir`; returns how many copies it damaged per key.
fn corrupt_values(dir: &Path, prefix: &str, which: &[usize]) -> Vec<usize> {
    let mut copies = vec![0; which.len()];
    for path in segment_files(dir) {
        let mut bytes = std::fs::read(&path).unwrap();
        let mut changed = false;
        for (slot, &i) in which.iter().enumerate() {
            // The value's unique front: `prefix-i-`.
            let unique = format!("{prefix}-{i:08}-");
            for offset in find_all(&bytes, unique.as_bytes()) {
                // A digit of the key number: still valid UTF-8, and the
                // checksum no longer matches.
                bytes[offset + unique.len() - 2] ^= 0x01;
                copies[slot] += 1;
                changed = true;
            }
        }
        if changed {
            std::fs::write(&path, &bytes).unwrap();
        }
    }
    copies
}

#[test]
#[allow(clippy::print_stdout)]
fn values_corrupted_on_disk_are_reported_and_repaired() {
    const PREFIX: &str = "flipped";
    const KEYS: usize = 300;
    let mut cluster = Cluster::serve(3, &[]);
    write_keys(&cluster, PREFIX, KEYS);
    let all: Vec<usize> = (0..KEYS).collect();
    let target = cluster.addr(1);
    wait_until_everywhere(&cluster, PREFIX, &all);

    cluster.stop_node(1);
    let damaged: Vec<usize> = (0..KEYS).step_by(KEYS / 8).collect();
    let copies = corrupt_values(&cluster.data_dir(1), PREFIX, &damaged);
    assert!(
        copies.iter().all(|&copies| copies >= 1),
        "some value was not found in node 1's segment files: {copies:?} for keys {damaged:?}"
    );
    let restarted = Instant::now();
    cluster.start_node(1, &[]);

    // Anti-entropy may already have repaired a key or two, but not most.
    let first_look = inspect_all(target, PREFIX, &damaged);
    let seen_bad: Vec<String> = damaged
        .iter()
        .zip(&first_look)
        .filter_map(|(i, found)| found.as_ref().err().map(|why| format!("{i}: {why}")))
        .collect();
    assert!(
        !seen_bad.is_empty(),
        "no corrupted key was reported wrong {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    let first_look_after = restarted.elapsed();
    // `holdfast inspect` says so too.
    let (i, _) = damaged.iter().zip(&first_look).find(|(_, found)| found.is_err()).unwrap();
    let key_text = String::from_utf8(key(PREFIX, *i)).unwrap();
    let output = holdfast(&["inspect", &key_text, "--node", &target.to_string()]);
    let cli = format!("{}{}", stdout(&output), support::stderr(&output));

    let repaired = wait_until_repaired(&cluster, target, PREFIX, &all, restarted);
    let others: Vec<usize> = (0..KEYS).filter(|i| !damaged.contains(i)).collect();
    assert!(wrong_on(target, PREFIX, &others).is_empty());
    println!(
        "corrupt values: {} keys damaged on disk ({copies:?} copies each); {} of them seen wrong \
         {:.2} s after the restart: {seen_bad:?}; `holdfast inspect {key_text}` said: {:?} ({}); \
         all repaired {:.1} s after the restart; anti-entropy totals over the nodes: {}",
        damaged.len(),
        seen_bad.len(),
        first_look_after.as_secs_f64(),
        cli.trim(),
        output.status,
        (repaired - restarted).as_secs_f64(),
        show(&anti_entropy_totals(&cluster))
    );
    cluster.stop();
}

/// Deleted keys' tombstones are reaped on every replica once all hold them
/// (with a zero grace and a one-second period), the kept keys stay, and a
/// reaped key can be written again.
#[test]
fn tombstones_every_replica_holds_are_reaped_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("holdfast.toml");
    std::fs::write(&config, "anti_entropy_period_ms = 1000\ntombstone_grace_ms = 0\n").unwrap();
    let cluster = Cluster::serve(3, &["--shards", "2", "--config", config.to_str().unwrap()]);
    let prefix = "reap";
    let count = 200;
    write_keys(&cluster, prefix, count);
    let client = cluster.cluster_client();
    let deleted: Vec<usize> = (0..count).step_by(2).collect();
    for &i in &deleted {
        let read = client.get(&key(prefix, i)).unwrap();
        client.delete(&key(prefix, i), &read.context).unwrap();
    }
    // Reaped everywhere: no node holds anything of a deleted key, not even
    // its tombstone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = |addr: SocketAddr| -> usize {
        let node = direct(addr);
        deleted.iter().filter(|&&i| !node.inspect(&key(prefix, i)).unwrap().set.is_empty()).count()
    };
    loop {
        let left: Vec<usize> = cluster.addrs().iter().map(|&addr| held(addr)).collect();
        if left.iter().all(|&n| n == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "tombstones still held per node: {left:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let kept: Vec<usize> = (1..count).step_by(2).collect();
    for &addr in cluster.addrs() {
        let wrong: Vec<Result<(), String>> =
            inspect_all(addr, prefix, &kept).into_iter().filter(Result::is_err).collect();
        assert!(wrong.is_empty(), "{addr}: {wrong:?}");
    }
    // Shards publish their counters every 200 ms: the last reaps show a
    // moment later.
    let reaped = || -> u64 {
        cluster.addrs().iter().map(|&addr| direct(addr).stats().unwrap().tombstones_reaped).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while reaped() < deleted.len() as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reaped() >= deleted.len() as u64, "stats say {} reaped", reaped());
    let status = cluster.cli(0, &["status"]);
    assert!(stdout(&status).contains("tombstones reaped"), "{}", explain(&status));
    // A reaped key is written again, blind, and reads back alone.
    client.put(&key(prefix, 0), b"again", None).unwrap();
    assert_eq!(client.get(&key(prefix, 0)).unwrap().values, vec![b"again".to_vec()]);
}
