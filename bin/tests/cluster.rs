//! A cluster of real `holdfast` processes behaves as one store: a write
//! through one node is read through another, concurrent blind writes
//! become siblings that a write with their context resolves, a replica
//! that missed a write converges after a read, `holdfast status` and
//! `holdfast inspect` show the ring and each node's replica, and a few
//! seconds of concurrent puts, gets and deletes through every node pass
//! the history checker.
//!
//! Every test starts its own cluster through the harness (`support`),
//! which kills the nodes however the test ends.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use holdfast_engine::cluster::history::{
    Call, CheckOptions, FinalState, History, OpId, Outcome, Presence,
};
use holdfast_net::client::{
    Client, ClientError, ClientOptions, Context, ReadOptions, WriteOptions,
};
use holdfast_net::message::ErrorCode;
use holdfast_net::{SiblingSet, VersionVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use support::{Cluster, Node, explain, free_ports, holdfast, stdout};

/// How long a cluster may take to converge once nothing is being written.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of node `i` that does not route by the ring: "through node
/// `i`" then means node `i` coordinates the request (or forwards it), as
/// opposed to [`Cluster::client`], which sends each request to the key's
/// first replica once it has the ring.
fn direct(cluster: &Cluster, i: usize) -> Client {
    let options = ClientOptions { route_by_ring: false, ..ClientOptions::default() };
    Client::connect(&[cluster.addr(i)], options).unwrap()
}

/// `holdfast ARGS --addr (node i) --json`, parsed.
fn cli_json(cluster: &Cluster, i: usize, args: &[&str]) -> Value {
    let output = cluster.cli(i, &[args, &["--json"]].concat());
    serde_json::from_str(&stdout(&output)).unwrap_or_else(|error| {
        panic!("holdfast {args:?} --json printed no JSON ({error}): {}", explain(&output))
    })
}

/// The siblings `holdfast get KEY --json` prints through node `i`.
fn siblings(cluster: &Cluster, i: usize, key: &str) -> Vec<String> {
    let json = cli_json(cluster, i, &["get", key]);
    let siblings = json["siblings"].as_array().unwrap_or_else(|| panic!("no siblings: {json}"));
    let mut siblings: Vec<String> =
        siblings.iter().map(|value| value.as_str().unwrap().to_owned()).collect();
    siblings.sort();
    siblings
}

/// The versions `holdfast inspect KEY --json` prints for node `i`'s own
/// replica.
fn inspected_versions(cluster: &Cluster, i: usize, key: &str) -> Value {
    let json = cli_json(cluster, i, &["inspect", key]);
    assert_eq!(json["key"], key, "{json}");
    assert_eq!(json["replica"], true, "with N = 3 of 3 nodes, node {i} is a replica: {json}");
    json["versions"].clone()
}

/// Node `i`'s own replica of every key, through the client library.
fn replica_sets(cluster: &Cluster, i: usize, keys: &[String]) -> Vec<SiblingSet> {
    let client = direct(cluster, i);
    keys.iter().map(|key| client.inspect(key.as_bytes()).unwrap().set).collect()
}

/// Waits until every node's replica of every key is the same set, and
/// returns each node's sets; panics with them after [`CONVERGE_TIMEOUT`].
fn converged_sets(cluster: &Cluster, keys: &[String]) -> Vec<Vec<SiblingSet>> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let sets: Vec<Vec<SiblingSet>> =
            (0..cluster.addrs().len()).map(|i| replica_sets(cluster, i, keys)).collect();
        if sets.iter().all(|node| *node == sets[0]) {
            return sets;
        }
        assert!(Instant::now() < deadline, "the replicas did not converge: {sets:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_write_through_one_node_is_read_through_another() {
    let cluster = Cluster::up(3, &[]);

    direct(&cluster, 0).put(b"library", b"from node 0", None).unwrap();
    let read = direct(&cluster, 2).get(b"library").unwrap();
    assert_eq!(read.values, vec![b"from node 0".to_vec()]);

    cluster.cli(0, &["put", "command-line", "also from node 0"]);
    assert_eq!(siblings(&cluster, 2, "command-line"), ["also from node 0"]);
    let json = cli_json(&cluster, 1, &["get", "command-line"]);
    assert!(json["context"].as_str().is_some_and(|context| !context.is_empty()), "{json}");
}

#[test]
fn concurrent_blind_writes_become_siblings_until_a_write_with_their_context() {
    let cluster = Cluster::up(3, &[]);
    let key = b"cart";

    // Two writers, on two nodes, neither having read: neither write can
    // supersede the other.
    let start = Arc::new(Barrier::new(2));
    std::thread::scope(|scope| {
        for (node, value) in [(0, "apples"), (2, "pears")] {
            let client = direct(&cluster, node);
            let start = start.clone();
            scope.spawn(move || {
                start.wait();
                client.put(key, value.as_bytes(), None).unwrap();
            });
        }
    });
    let read = direct(&cluster, 1).get(key).unwrap();
    let mut values = read.values.clone();
    values.sort();
    assert_eq!(values, [b"apples".to_vec(), b"pears".to_vec()], "two siblings");
    assert_eq!(siblings(&cluster, 0, "cart"), ["apples", "pears"]);

    // A write that carries the read's context replaces both.
    direct(&cluster, 1).put(key, b"apples+pears", Some(&read.context)).unwrap();
    for node in 0..3 {
        assert_eq!(direct(&cluster, node).get(key).unwrap().values, [b"apples+pears".to_vec()]);
    }
    assert_eq!(siblings(&cluster, 2, "cart"), ["apples+pears"]);
}

#[test]
fn a_replica_that_missed_a_write_converges_after_a_read() {
    let mut cluster = Cluster::serve(3, &[]);
    let key = "missed";

    cluster.kill(2);
    let written = direct(&cluster, 0)
        .put_with(key.as_bytes(), b"while node 2 was down", None, WriteOptions { w: 2 })
        .unwrap();
    let on_node_0 = inspected_versions(&cluster, 0, key);
    assert_eq!(on_node_0.as_array().unwrap().len(), 1, "{on_node_0}");
    assert_eq!(on_node_0[0]["value"], "while node 2 was down");
    assert_eq!(inspected_versions(&cluster, 1, key), on_node_0, "W = 2: node 1 has it too");

    cluster.restart(2);
    assert_eq!(inspected_versions(&cluster, 2, key), serde_json::json!([]));
    let text = stdout(&cluster.cli(2, &["inspect", key]));
    assert!(text.ends_with("replica yes\n(nothing)\n"), "{text}");

    // A read of all three replicas finds node 2 stale and repairs it.
    let read = direct(&cluster, 0).get_with(key.as_bytes(), ReadOptions { r: 3 }).unwrap();
    assert_eq!(read.values, [b"while node 2 was down".to_vec()]);
    assert!(read.context.version_vector().contains(written.dot));
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    while inspected_versions(&cluster, 2, key) != on_node_0 {
        assert!(Instant::now() < deadline, "node 2 was not repaired:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = stdout(&cluster.cli(2, &["inspect", key]));
    assert!(text.ends_with("  value while node 2 was down\n"), "{text}");
    cluster.stop();
}

/// The `member` lines of `holdfast status`: address to the whole line.
fn member_lines(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter(|line| line.starts_with("member "))
        .map(|line| (line.split_whitespace().nth(2).unwrap().to_owned(), line.to_owned()))
        .collect()
}

#[test]
fn status_shows_the_ring_its_members_and_which_of_them_answer() {
    let mut cluster = Cluster::up(3, &[]);

    let status = stdout(&cluster.cli(0, &["status"]));
    assert!(status.contains("ring version 1  partitions 1024  n 3  r 2  w 2\n"), "{status}");
    let members = member_lines(&status);
    assert_eq!(members.len(), 3, "{status}");
    for (i, addr) in cluster.addrs().iter().enumerate() {
        let line = &members[&addr.to_string()];
        // 1024 = 342 + 341 + 341.
        assert!(
            line.contains("partitions 342 (33.4%)") || line.contains("partitions 341 (33.3%)"),
            "{line}"
        );
        assert!(line.contains("  up"), "{line}");
        assert_eq!(line.contains("(this node)"), i == 0, "{line}");
    }

    // Every node sees the same ring, and names itself.
    for i in 0..3 {
        let json = cli_json(&cluster, i, &["status"]);
        assert_eq!(json["formed"], true);
        let members = json["ring"]["members"].as_array().unwrap();
        let owned: u64 = members.iter().map(|m| m["partitions"].as_u64().unwrap()).sum();
        assert_eq!(owned, 1024, "{json}");
        let me = members.iter().find(|m| m["addr"] == cluster.addr(i).to_string()).unwrap();
        assert_eq!(me["id"], json["node"], "{json}");
        assert!(members.iter().all(|m| m["state"] == "up"), "{json}");
    }

    let placed = stdout(&cluster.cli(1, &["status", "--key", "cart:alice"]));
    let replicas: Vec<&str> = placed.lines().filter(|line| line.starts_with("replica ")).collect();
    assert_eq!(replicas.len(), 3, "{placed}");
    let ids: BTreeSet<&str> =
        replicas.iter().map(|line| line.split_whitespace().nth(2).unwrap()).collect();
    assert_eq!(ids.len(), 3, "three distinct nodes: {placed}");
    assert!(placed.contains("key cart:alice  partition "), "{placed}");

    cluster.kill(2);
    let status = stdout(&cluster.cli(1, &["status"]));
    let members = member_lines(&status);
    assert!(members[&cluster.addr(2).to_string()].ends_with("  down"), "{status}");
    assert!(members[&cluster.addr(0).to_string()].ends_with("  up"), "{status}");
}

#[test]
fn status_of_a_node_still_waiting_for_its_seeds_says_so_and_exits_1() {
    // The node's seed is a port nobody listens on: it answers, but forms
    // no ring.
    let base = free_ports(2);
    let (addr, seed) = (format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 1));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node").to_str().unwrap().to_owned();
    let _node = Node::spawn_quiet(&[
        "serve",
        "--data-dir",
        &data_dir,
        "--listen",
        &addr,
        "--seeds",
        &seed,
        "--pin",
        "false",
    ]);
    let deadline = Instant::now() + support::READY_TIMEOUT;
    while !support::answers(addr.parse().unwrap()) {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let output = holdfast(&["status", "--addr", &addr]);
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    assert!(stdout(&output).contains("has not formed its ring"), "{}", explain(&output));
    let output = holdfast(&["status", "--addr", &addr, "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["formed"], false, "{json}");

    // Nothing listens at all: an error (2), not "no ring".
    let output = holdfast(&["status", "--addr", &seed]);
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
}

/// The history of a run, shared by its client threads, with times since
/// the run began.
struct Log {
    history: Mutex<History>,
    began: Instant,
}

impl Log {
    fn start(&self, client: u64, call: Call) -> OpId {
        let mut history = self.history.lock().unwrap();
        history.start(client, call, self.began.elapsed())
    }

    fn finish(&self, op: OpId, outcome: Outcome) {
        let mut history = self.history.lock().unwrap();
        history.finish(op, outcome, self.began.elapsed());
    }

    /// Logs a get of `key` through `client`, runs it, logs its outcome, and
    /// returns the context it read.
    fn get(&self, id: u64, client: &Client, key: &str, options: ReadOptions) -> Option<Context> {
        let op = self.start(id, Call::Get { key: key.as_bytes().to_vec() });
        match client.get_with(key.as_bytes(), options) {
            Ok(read) => {
                let context = read.context.version_vector();
                self.finish(op, Outcome::Read { values: read.values, context });
                Some(read.context)
            }
            Err(error) => {
                self.finish(op, failure(&error));
                None
            }
        }
    }
}

/// How a failed request ends in the history: refusals that mean the node
/// applied nothing are failures, anything else may have been applied.
fn failure(error: &ClientError) -> Outcome {
    match error {
        ClientError::Server {
            code:
                code @ (ErrorCode::BadRequest | ErrorCode::BadContext | ErrorCode::TooManySiblings),
            message,
        } => Outcome::Failed { reason: format!("{code}: {message}") },
        _ => Outcome::Unknown,
    }
}

/// One client's workload: puts (mostly with the last context it saw of the
/// key, sometimes blind), gets and deletes on `keys` through one node until
/// `until`.
fn workload(log: &Log, id: u64, client: &Client, keys: &[String], until: Instant) {
    let mut rng = ChaCha8Rng::seed_from_u64(id);
    let mut contexts: BTreeMap<&str, Context> = BTreeMap::new();
    let mut puts = 0u64;
    while Instant::now() < until {
        let key = keys[rng.random_range(0..keys.len())].as_str();
        let choice = rng.random_range(0..100);
        let known = contexts.get(key).cloned();
        if choice < 40 || (choice >= 85 && known.is_none()) {
            if let Some(context) = log.get(id, client, key, ReadOptions::default()) {
                contexts.insert(key, context);
            }
        } else if choice < 85 {
            puts += 1;
            let value = format!("c{id}-w{puts}");
            let context = if rng.random_range(0..10) < 8 { known } else { None };
            let vector = context.as_ref().map_or_else(VersionVector::new, Context::version_vector);
            let call = Call::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                context: vector,
            };
            let op = log.start(id, call);
            match client.put(key.as_bytes(), value.as_bytes(), context.as_ref()) {
                Ok(written) => {
                    let context = written.context.version_vector();
                    log.finish(op, Outcome::Written { dot: written.dot, context });
                    contexts.insert(key, written.context);
                }
                Err(error) => log.finish(op, failure(&error)),
            }
        } else {
            let context = known.expect("a delete follows a read or a write of its key");
            let call =
                Call::Delete { key: key.as_bytes().to_vec(), context: context.version_vector() };
            let op = log.start(id, call);
            match client.delete(key.as_bytes(), &context) {
                Ok(written) => {
                    let context = written.context.version_vector();
                    log.finish(op, Outcome::Written { dot: written.dot, context });
                    contexts.insert(key, written.context);
                }
                Err(error) => log.finish(op, failure(&error)),
            }
        }
    }
}

#[test]
fn concurrent_puts_gets_and_deletes_through_every_node_pass_the_history_check() {
    const CLIENTS: u64 = 4;
    const RUN: Duration = Duration::from_secs(3);
    let cluster = Cluster::up(3, &[]);
    let keys: Vec<String> = (0..4).map(|k| format!("history-{k}")).collect();
    let log = Log { history: Mutex::new(History::new()), began: Instant::now() };

    let until = Instant::now() + RUN;
    std::thread::scope(|scope| {
        for id in 0..CLIENTS {
            // Clients 0, 1 and 2 go through nodes 0, 1 and 2; client 3
            // routes each request to its key's first replica by the ring.
            let client = match id {
                0..3 => direct(&cluster, usize::try_from(id).unwrap()),
                _ => cluster.client(0),
            };
            let (log, keys) = (&log, &keys);
            scope.spawn(move || workload(log, id, &client, keys, until));
        }
    });

    // Every key read through every node from all three replicas: each
    // read repairs whichever replica was stale.
    for i in 0..3 {
        let client = direct(&cluster, i);
        for key in &keys {
            let read = log.get(CLIENTS + i as u64, &client, key, ReadOptions { r: 3 });
            assert!(read.is_some(), "the final read of {key} through node {i} failed");
        }
    }
    let sets = converged_sets(&cluster, &keys);
    let mut finals = FinalState::new();
    for node in &sets {
        for (key, set) in keys.iter().zip(node) {
            finals.add(key.as_bytes().to_vec(), set.clone());
        }
    }

    let history = log.history.into_inner().unwrap();
    let options = CheckOptions {
        presence: Presence::Every,
        reads_see_acknowledged_writes: true,
        tombstones_reaped: false,
    };
    let report = history.check(&finals, &options);
    report.assert_ok("real three-node cluster");
    let stats = report.stats;
    eprintln!("{stats}");
    assert!(stats.acknowledged_writes >= 20, "too little was written to mean much: {stats}");
    assert!(stats.reads >= 20, "too little was read to mean much: {stats}");
}
