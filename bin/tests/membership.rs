//! Membership changes with real processes: a node joins a running cluster
//! and pulls its share, then an original node leaves and hands its share
//! away, and every key written before stays readable, held by every
//! replica of the final ring.
//!
//! Three nodes (N=2, R=1, W=2, two shards each, so transfer and gossip
//! frames cross the shard mesh too) take 2000 keys; a fourth starts with
//! `serve --join --seeds (node 0)` and learns N, R and W from it. The test
//! waits (bounded) until every node routes by the same ring, with nothing
//! pending and the joiner in it, then reads every key back and inspects
//! every replica. Then `holdfast admin leave` makes node 1 leave; the test
//! waits until node 1 is `Left`, holds nothing and is out of the ring, and
//! checks every key again on the three that remain.
//!
//! Two more: a five-node cluster (N=3, W=2) under a steady write load
//! takes a sixth node and then loses one to `admin leave`, with every
//! write succeeding and every acknowledged one read back; and a node
//! SIGKILLed for good is taken out with `admin remove`, its keys copied
//! again from the survivors.
//!
//! It prints what it measured (time to converge, keys and bytes pulled,
//! handed off, removed); run with `--nocapture` to see it.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use holdfast_net::client::{Batch, Client, ClientOptions, Operation, Response};
use holdfast_net::membership::MemberStatus;
use holdfast_net::message::StatsReply;
use holdfast_net::ring::{NodeId, Ring};
use serde_json::Value;
use support::load::{
    Phase, assert_all_readable, assert_every_write_succeeded, finish, print_phases, write_load,
};
use support::{Cluster, Node, explain, free_ports, holdfast, stdout};

const KEYS: usize = 2000;
const N: usize = 2;
/// How long a membership change may take to settle.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn key(i: usize) -> String {
    format!("member-key-{i:05}")
}

fn value(i: usize) -> String {
    format!("value-{i:05}-{}", "x".repeat(100))
}

/// A client of the one node at `addr` (which may not listen yet).
fn direct(addr: SocketAddr) -> Result<Client, String> {
    let options = ClientOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        route_by_ring: false,
        ..ClientOptions::default()
    };
    Client::connect(&[addr], options).map_err(|error| format!("{addr}: {error}"))
}

fn stats(addr: SocketAddr) -> Result<StatsReply, String> {
    direct(addr)?.stats().map_err(|error| format!("{addr}: {error}"))
}

fn ring(addr: SocketAddr) -> Result<Ring, String> {
    let info = direct(addr)?.ring().map_err(|error| format!("{addr}: {error}"))?;
    info.ring.ok_or_else(|| format!("{addr}: no ring"))
}

/// Whether every node in `addrs` routes by one ring, with nothing
/// pending, every one of them `Up` and in it, and none of `gone` in it.
fn settled(addrs: &[SocketAddr], gone: &[NodeId]) -> Result<Ring, String> {
    let mut version = None;
    let mut ids = Vec::new();
    for &addr in addrs {
        let stats = stats(addr)?;
        if stats.next_version != 0 {
            return Err(format!("{addr}: ring {} pending", stats.next_version));
        }
        if stats.status != MemberStatus::Up.as_u8() {
            return Err(format!("{addr}: status {}", stats.status));
        }
        if *version.get_or_insert(stats.ring_version) != stats.ring_version {
            return Err(format!("{addr}: ring {} vs {version:?}", stats.ring_version));
        }
        ids.push(stats.node);
    }
    let ring = ring(addrs[0])?;
    if Some(ring.version()) != version {
        return Err(format!("ring {} vs {version:?}", ring.version()));
    }
    if let Some(missing) = ids.iter().find(|id| !ring.contains(**id)) {
        return Err(format!("{missing:016x} is not in ring {}", ring.version()));
    }
    if let Some(stale) = gone.iter().find(|id| ring.contains(**id)) {
        return Err(format!("{stale:016x} is still in ring {}", ring.version()));
    }
    Ok(ring)
}

/// Waits for `check` to succeed, up to [`CONVERGE_TIMEOUT`]; panics with
/// the last failure and the logs otherwise.
fn wait<T>(what: &str, logs: impl Fn() -> String, check: impl Fn() -> Result<T, String>) -> T {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        match check() {
            Ok(done) => return done,
            Err(why) if Instant::now() >= deadline => {
                panic!("{what}: not within {CONVERGE_TIMEOUT:?}: {why}\n{}", logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Reads every key through `addrs` (routed by their ring), and inspects
/// each key on every replica `ring` gives it: each must hold the value.
/// Returns the bytes of one copy of every key's set.
fn check_every_key(addrs: &[SocketAddr], ring: &Ring) -> u64 {
    let client = Client::connect(addrs, ClientOptions::default()).unwrap();
    let mut batch = Batch::new();
    for i in 0..KEYS {
        batch.get(key(i).as_bytes());
    }
    for (i, result) in client.execute(&batch).unwrap().into_iter().enumerate() {
        let Ok(Response::Get(read)) = result else { panic!("get {}: {result:?}", key(i)) };
        assert_eq!(read.values, vec![value(i).into_bytes()], "key {}", key(i));
    }
    let mut per_node: Vec<(NodeId, Vec<usize>)> =
        ring.members().iter().map(|member| (member.id, Vec::new())).collect();
    for i in 0..KEYS {
        let partition = ring.partition_of(key(i).as_bytes());
        for replica in ring.preference_list(partition, N) {
            let slot = per_node.iter_mut().find(|(id, _)| *id == replica).unwrap();
            slot.1.push(i);
        }
    }
    let mut set_bytes = 0;
    for (id, keys) in per_node {
        let addr: SocketAddr = ring.member(id).unwrap().addr.parse().unwrap();
        let mut batch = Batch::new();
        for &i in &keys {
            batch.push(Operation::Inspect { key: key(i).into_bytes() });
        }
        for (&i, result) in keys.iter().zip(direct(addr).unwrap().execute(&batch).unwrap()) {
            let Ok(Response::Inspect(inspected)) = result else {
                panic!("inspect {} on {id:016x}: {result:?}", key(i))
            };
            assert!(inspected.replica, "{id:016x} is a replica of {} by its ring", key(i));
            let values: Vec<&[u8]> =
                inspected.set.iter().filter_map(|version| version.value.as_deref()).collect();
            assert_eq!(values, vec![value(i).as_bytes()], "{} on {id:016x}", key(i));
            set_bytes += inspected.set.encode().len() as u64;
        }
    }
    set_bytes / N as u64
}

/// Writes the [`KEYS`] keys through `addrs`, each acknowledged.
fn write_keys(addrs: &[SocketAddr]) {
    let writer = Client::connect(addrs, ClientOptions::default()).unwrap();
    let mut batch = Batch::new();
    for i in 0..KEYS {
        batch.put(key(i).as_bytes(), value(i).as_bytes(), None);
    }
    for (i, result) in writer.execute(&batch).unwrap().into_iter().enumerate() {
        assert!(matches!(result, Ok(Response::Put(_))), "put {}: {result:?}", key(i));
    }
}

/// Starts a node with `--join --seeds (node 0)` and `shards` shards; its
/// process, address and log file.
fn join(cluster: &Cluster, config: &str, shards: &str) -> (Node, SocketAddr, PathBuf) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_ports(1)).into();
    let log = cluster.dir().join("logs").join("joiner.log");
    let data = cluster.dir().join("holdfast-data/joiner");
    let seed = cluster.addr(0).to_string();
    let listen = addr.to_string();
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--seeds",
        &seed,
        "--join",
        "--pin",
        "false",
        "--shards",
        shards,
        "--config",
        config,
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let node = Node::spawn(&args, std::fs::File::create(&log).unwrap());
    (node, addr, log)
}

/// A config file setting a fast gossip interval, in `dir`.
fn gossip_config(dir: &Path) -> String {
    let config = dir.join("membership.toml");
    std::fs::write(&config, "gossip_interval_ms = 200\n").unwrap();
    config.to_str().unwrap().to_owned()
}

#[test]
fn a_node_joins_and_another_leaves_and_every_key_stays_readable() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = gossip_config(config_dir.path());
    let cluster = Cluster::serve(
        3,
        &["--n", "2", "--r", "1", "--w", "2", "--shards", "2", "--config", &config],
    );
    write_keys(cluster.addrs());
    let before = wait("the first ring", || cluster.logs(), || settled(cluster.addrs(), &[]));

    // A fourth node joins through node 0.
    let started = Instant::now();
    let (_joiner, joiner, joiner_log) = join(&cluster, &config, "2");
    let mut four = cluster.addrs().to_vec();
    four.push(joiner);
    let logs = || {
        let joiner = std::fs::read_to_string(&joiner_log).unwrap_or_default();
        format!("{}--- joiner.log\n{joiner}", cluster.logs())
    };
    let joined = wait("the join", logs, || settled(&four, &[]));
    let converged = started.elapsed();
    assert_eq!(joined.members().len(), 4);
    assert!(joined.version() > before.version());
    let pulled = stats(joiner).unwrap();
    assert!(pulled.keys_pulled > 0, "the joiner pulled nothing: {pulled:?}");
    let set_bytes = check_every_key(&four, &joined);
    println!(
        "join: converged in {converged:.2?} (ring {} -> {}); the joiner pulled {} partitions, \
         {} keys of {KEYS} ({} bytes of {set_bytes} bytes of sets, one copy each), holds {} \
         data partitions",
        before.version(),
        joined.version(),
        pulled.partitions_pulled,
        pulled.keys_pulled,
        pulled.bytes_pulled,
        pulled.data_partitions,
    );
    for &addr in cluster.addrs() {
        let stats = stats(addr).unwrap();
        println!(
            "join: {addr} handed off {} keys ({} bytes), removed {} keys",
            stats.keys_handed_off, stats.bytes_handed_off, stats.keys_removed
        );
    }

    // Node 1 leaves.
    let leaver = stats(cluster.addr(1)).unwrap().node;
    let started = Instant::now();
    let output = holdfast(&["admin", "leave", "--addr", &cluster.addr(1).to_string()]);
    assert!(output.status.success(), "{}", explain(&output));
    assert!(stdout(&output).contains("status Leaving"), "{}", explain(&output));
    let three: Vec<SocketAddr> = four.iter().copied().filter(|a| *a != cluster.addr(1)).collect();
    let left = wait("the leave", logs, || {
        let ring = settled(&three, &[leaver])?;
        let gone = stats(cluster.addr(1))?;
        if gone.status != MemberStatus::Left.as_u8() || gone.data_partitions != 0 {
            return Err(format!(
                "the leaver is {} with {} data partitions",
                gone.status, gone.data_partitions
            ));
        }
        Ok((ring, gone))
    });
    let (after, gone) = left;
    println!(
        "leave: converged in {:.2?} (ring {} -> {}); the leaver removed {} keys and handed off {} \
         ({} bytes)",
        started.elapsed(),
        joined.version(),
        after.version(),
        gone.keys_removed,
        gone.keys_handed_off,
        gone.bytes_handed_off,
    );
    assert_eq!(after.members().len(), 3);
    assert!(gone.keys_removed > 0, "the leaver removed nothing: {gone:?}");
    check_every_key(&three, &after);

    // `status` shows the node that left outside the ring, once gossip has
    // told the node asked.
    let leaver_hex = format!("{leaver:016x}");
    let json = wait("status to show the leaver", logs, || {
        let output = holdfast(&["status", "--json", "--addr", &cluster.addr(0).to_string()]);
        if !output.status.success() {
            return Err(explain(&output));
        }
        let json: Value = serde_json::from_str(&stdout(&output)).map_err(|e| e.to_string())?;
        let outside = json["ring"]["outside"].as_array().cloned().unwrap_or_default();
        let shown = outside.iter().any(|member| {
            member["id"] == leaver_hex.as_str()
                && member["status"] == "Left"
                && member["membership"]["data_partitions"] == 0
        });
        if shown { Ok(json) } else { Err(json.to_string()) }
    });
    assert_eq!(json["ring"]["members"].as_array().map(Vec::len), Some(3), "{json}");
}

/// The issue's scenario: a five-node cluster (N=3, R=2, W=2) under a
/// steady write load takes a sixth node, then one of the five leaves;
/// writes keep succeeding throughout, and every acknowledged write is read
/// back at the end. Prints availability and latency per phase, and what
/// the join moved against the ideal (the new node's 3/6 share of the
/// keys).
#[test]
fn a_sixth_node_joins_and_one_leaves_under_write_load_and_no_acknowledged_write_is_lost() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = gossip_config(config_dir.path());
    let cluster = Cluster::serve(5, &["--config", &config]);
    wait("the first ring", || cluster.logs(), || settled(cluster.addrs(), &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers = write_load(&cluster, stop.clone());
    std::thread::sleep(Duration::from_secs(3));

    let joining = Instant::now();
    let (_joiner, joiner, joiner_log) = join(&cluster, &config, "1");
    let logs = || {
        let joiner = std::fs::read_to_string(&joiner_log).unwrap_or_default();
        format!("{}--- joiner.log\n{joiner}", cluster.logs())
    };
    let mut six = cluster.addrs().to_vec();
    six.push(joiner);
    let joined_ring = wait("the join", logs, || settled(&six, &[]));
    let joined = Instant::now();
    assert_eq!(joined_ring.members().len(), 6);
    std::thread::sleep(Duration::from_secs(2));

    let leaving = Instant::now();
    let leaver = stats(cluster.addr(1)).unwrap().node;
    let output = holdfast(&["admin", "leave", "--addr", &cluster.addr(1).to_string()]);
    assert!(output.status.success(), "{}", explain(&output));
    let five: Vec<SocketAddr> = six.iter().copied().filter(|a| *a != cluster.addr(1)).collect();
    wait("the leave", logs, || {
        settled(&five, &[leaver])?;
        let gone = stats(cluster.addr(1))?;
        if gone.status != MemberStatus::Left.as_u8() || gone.data_partitions != 0 {
            return Err(format!(
                "the leaver is {} with {} partitions",
                gone.status, gone.data_partitions
            ));
        }
        Ok(())
    });
    let left = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let writes = finish(writers);
    let ended = Instant::now();

    let phases = [
        Phase::of("before", &writes, started, joining),
        Phase::of("joining", &writes, joining, joined),
        Phase::of("joined", &writes, joined, leaving),
        Phase::of("leaving", &writes, leaving, left),
        Phase::of("after", &writes, left, ended),
    ];
    print_phases("membership", &phases, &writes);
    let pulled = stats(joiner).unwrap();
    let before_join = writes.iter().filter(|w| w.ok && w.started < joined).count();
    let ideal = before_join as f64 * 3.0 / 6.0;
    println!(
        "membership join: {:.2?} from start to the new ring; the new node pulled {} keys \
         ({} bytes) in {} partitions; ideal about {ideal:.0} keys (3/6 of the {before_join} \
         acknowledged by then): {:.2}x; it holds {} data partitions",
        joined - joining,
        pulled.keys_pulled,
        pulled.bytes_pulled,
        pulled.partitions_pulled,
        pulled.keys_pulled as f64 / ideal.max(1.0),
        pulled.data_partitions,
    );
    println!("membership leave: {:.2?} from `admin leave` to Left", left - leaving);
    assert_every_write_succeeded(&phases);
    assert!(pulled.keys_pulled > 0, "the new node pulled nothing: {pulled:?}");
    assert_all_readable(&cluster, &writes);
}

/// A node that died for good is removed with `holdfast admin remove`: the
/// survivors pull its partitions from the other replicas, the ring leaves
/// it out, and every key written before still has N copies.
#[test]
fn a_dead_node_removed_has_its_keys_copied_again_from_the_survivors() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = gossip_config(config_dir.path());
    let mut cluster = Cluster::serve(4, &["--n", "2", "--r", "1", "--w", "2", "--config", &config]);
    write_keys(cluster.addrs());
    wait("the first ring", || cluster.logs(), || settled(cluster.addrs(), &[]));
    let dead = stats(cluster.addr(3)).unwrap().node;
    cluster.kill(3);
    let started = Instant::now();
    let output = holdfast(&[
        "admin",
        "remove",
        &format!("{dead:016x}"),
        "--addr",
        &cluster.addr(0).to_string(),
    ]);
    assert!(output.status.success(), "{}", explain(&output));
    let three = &cluster.addrs()[..3];
    let after = wait("the removal", || cluster.logs(), || settled(three, &[dead]));
    let copied: u64 = three.iter().map(|&addr| stats(addr).unwrap().keys_pulled).sum();
    println!(
        "remove: {:.2?} from `admin remove` to the new ring; the survivors pulled {copied} keys",
        started.elapsed()
    );
    assert_eq!(after.members().len(), 3);
    assert!(copied > 0, "nothing was copied again");
    check_every_key(three, &after);
}
