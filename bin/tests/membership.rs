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
//! It prints what it measured (time to converge, keys and bytes pulled,
//! handed off, removed); run with `--nocapture` to see it.

#![allow(clippy::unwrap_used)]

mod support;

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdfast_net::client::{Batch, Client, ClientOptions, Operation, Response};
use holdfast_net::membership::MemberStatus;
use holdfast_net::message::StatsReply;
use holdfast_net::ring::{NodeId, Ring};
use serde_json::Value;
use support::{Cluster, HOLDFAST, explain, free_ports, holdfast, stdout};

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

/// A `holdfast serve` process started by the test itself, killed when
/// dropped, and by the kernel if the test's thread ends first.
struct Node(Child);

impl Node {
    fn spawn(args: &[String], log: std::fs::File) -> Node {
        let mut command = Command::new(HOLDFAST);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // SAFETY: runs in the forked child before `exec`; `prctl` is
        // async-signal-safe and nothing here allocates.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Node(command.spawn().unwrap())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

#[test]
fn a_node_joins_and_another_leaves_and_every_key_stays_readable() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("membership.toml");
    std::fs::write(&config, "gossip_interval_ms = 200\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let cluster = Cluster::serve(
        3,
        &["--n", "2", "--r", "1", "--w", "2", "--shards", "2", "--config", &config],
    );
    let writer = Client::connect(cluster.addrs(), ClientOptions::default()).unwrap();
    let mut batch = Batch::new();
    for i in 0..KEYS {
        batch.put(key(i).as_bytes(), value(i).as_bytes(), None);
    }
    for (i, result) in writer.execute(&batch).unwrap().into_iter().enumerate() {
        assert!(matches!(result, Ok(Response::Put(_))), "put {}: {result:?}", key(i));
    }
    let before = wait("the first ring", || cluster.logs(), || settled(cluster.addrs(), &[]));

    // A fourth node joins through node 0.
    let joiner: SocketAddr = ([127, 0, 0, 1], free_ports(1)).into();
    let joiner_log = cluster.dir().join("logs").join("joiner.log");
    let args: Vec<String> = [
        "serve",
        "--data-dir",
        cluster.dir().join("holdfast-data/joiner").to_str().unwrap(),
        "--listen",
        &joiner.to_string(),
        "--seeds",
        &cluster.addr(0).to_string(),
        "--join",
        "--pin",
        "false",
        "--shards",
        "2",
        "--config",
        &config,
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let started = Instant::now();
    let _joiner = Node::spawn(&args, std::fs::File::create(&joiner_log).unwrap());
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
