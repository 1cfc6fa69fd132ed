//! `holdfast up` as a user runs it: a local cluster of real `holdfast
//! serve` processes that answers on every node, stops on SIGINT, refuses a
//! taken port before starting anything, and takes its nodes down with it
//! even when it is killed.
//!
//! Also the `serve` side of the harness (`support`): nodes started one by
//! one with seeds, killed and restarted.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use support::{
    Cluster, free_ports, holdfast, nobody_listens, port_is_free, process_is_gone, stderr, stdout,
    wait_for_all,
};

/// Every node takes a write and reads it back (each coordinates or forwards
/// its own requests).
fn put_then_get_on_each_node(cluster: &Cluster) {
    for i in 0..cluster.addrs().len() {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        cluster.cli(i, &["put", &key, &value]);
        let read = stdout(&cluster.cli(i, &["get", &key]));
        assert!(read.contains(&format!("value {value}\n")), "node {i}: {read}");
    }
    // The nodes replicate: a write through node 0 is read through the last.
    let last = cluster.addrs().len() - 1;
    cluster.cli(0, &["put", "shared", "from-node-0"]);
    let read = stdout(&cluster.cli(last, &["get", "shared"]));
    assert!(read.contains("value from-node-0\n"), "node {last}: {read}");
}

#[test]
fn up_starts_nodes_that_each_take_writes_and_stop_gracefully() {
    let mut cluster = Cluster::up(3, &[]);
    let out = cluster.up_stdout();
    for i in 0..3 {
        let line = format!("node {i}: {}  data ./holdfast-data/node-{i}  pid ", cluster.addr(i));
        assert!(out.contains(&line), "no line {line:?} in:\n{out}");
    }
    put_then_get_on_each_node(&cluster);
    for i in 0..3 {
        assert!(cluster.data_dir(i).join("node.id").exists(), "node {i} has no identity");
    }
    // SIGTERM to up, which exits 0 once every node stopped.
    cluster.stop();
    let out = cluster.up_stdout();
    assert_eq!(out.matches(": stopped\n").count(), 3, "{out}");
}

#[test]
fn up_with_one_node_needs_no_quorum_flags() {
    let mut cluster = Cluster::up(1, &["--fsync", "never"]);
    put_then_get_on_each_node(&cluster);
    cluster.stop();
}

#[test]
fn sigint_stops_every_node_and_up_exits_0() {
    let mut cluster = Cluster::up(3, &[]);
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i)).collect();
    cluster.signal_up(libc::SIGINT);
    let status = cluster.wait_up(Duration::from_secs(20));
    assert!(status.success(), "up exited with {status}:\n{}", cluster.logs());
    // up waited for its nodes, so they are gone, and nothing listens on
    // their ports (at once, or after the kernel's asynchronous io_uring
    // teardown).
    for (i, pid) in pids.iter().enumerate() {
        assert!(process_is_gone(*pid), "node {i} (pid {pid}) still runs");
    }
    assert!(
        wait_for_all(cluster.addrs(), nobody_listens, Duration::from_secs(5)),
        "a port is still listened on:\n{}",
        cluster.logs()
    );
}

#[test]
fn up_refuses_a_taken_port_and_starts_nothing() {
    let base = free_ports(3);
    let squatter = TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let output =
        holdfast(&["up", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir", data_dir]);
    let complaint = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{complaint}");
    assert!(
        complaint.contains(&format!("127.0.0.1:{} (node 1's port) is taken", base + 1)),
        "{complaint}"
    );
    assert!(complaint.contains("no node was started"), "{complaint}");
    assert_eq!(stdout(&output), "", "no node line");
    for i in 0..3 {
        assert!(!dir.path().join(format!("node-{i}")).exists(), "node {i} was started");
    }
    for port in [base, base + 2] {
        assert!(port_is_free(SocketAddr::from(([127, 0, 0, 1], port))), "port {port} was taken");
    }
    drop(squatter);
}

#[test]
fn sigkill_of_up_takes_its_nodes_down() {
    let mut cluster = Cluster::up(3, &[]);
    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i)).collect();
    cluster.signal_up(libc::SIGKILL);
    let status = cluster.wait_up(Duration::from_secs(5));
    assert_eq!(status.code(), None, "up was killed: {status}");
    // Each node got SIGTERM from the kernel when up died, and stops.
    assert!(
        wait_for_all(cluster.addrs(), nobody_listens, Duration::from_secs(10)),
        "a node outlived up:\n{}",
        cluster.logs()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|pid| process_is_gone(*pid)) {
        assert!(std::time::Instant::now() < deadline, "a node process outlived up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_that_dies_is_reported_and_the_others_keep_running() {
    let mut cluster = Cluster::up(3, &[]);
    cluster.kill(1);
    let out = cluster.up_stdout();
    assert!(out.contains("node 1: exited (signal: 9 (SIGKILL)); 2 of 3 node(s) running"), "{out}");
    for i in [0, 2] {
        assert!(support::answers(cluster.addr(i)), "node {i} stopped answering");
    }
    // The earlier death does not make the shutdown unclean.
    cluster.stop();
    assert_eq!(cluster.up_stdout().matches(": stopped\n").count(), 2);
}

#[test]
fn serve_nodes_with_seeds_keep_serving_when_one_is_killed() {
    let mut cluster = Cluster::serve(3, &["--shards", "1"]);
    put_then_get_on_each_node(&cluster);
    cluster.kill(1);
    assert!(support::answers(cluster.addr(0)) && support::answers(cluster.addr(2)));
    cluster.stop();
}

#[test]
fn a_node_restarted_after_sigkill_keeps_what_it_acknowledged() {
    let mut cluster = Cluster::serve(1, &[]);
    put_then_get_on_each_node(&cluster);
    cluster.kill(0);
    cluster.restart(0);
    // Written with the default fsync policy (always): acknowledged is durable.
    let read = stdout(&cluster.cli(0, &["get", "key-0"]));
    assert!(read.contains("value value-0\n"), "{read}");
    // A graceful restart too.
    cluster.restart(0);
    cluster.stop();
}

/// A node of a cluster restarts on its own port at once, although the
/// connections it accepted from its peers linger in TIME_WAIT there (they
/// made the node's "is the address taken?" bind fail for a minute, until
/// the check learned to confirm with a connect).
#[test]
fn a_cluster_node_restarts_on_its_port_at_once() {
    let mut cluster = Cluster::serve(3, &[]);
    put_then_get_on_each_node(&cluster);
    cluster.kill(1);
    cluster.restart(1);
    let read = stdout(&cluster.cli(1, &["get", "key-1"]));
    assert!(read.contains("value value-1\n"), "{read}");
    cluster.restart(2);
    cluster.stop();
}
