//! The load generator against a real `redis-server` (persistence off) on a
//! free loopback port: the load puts every record in, the workloads run
//! without errors, the open loop sends exactly its schedule, and the binary
//! prints one JSON object. Skipped, with a notice, where
//! /usr/bin/redis-server is not installed (`apt-get install redis-server`).
//! Every test is bounded in time.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use holdfast_loadgen::distribution::DistributionKind;
use holdfast_loadgen::keys::KeyOrder;
use holdfast_loadgen::protocol::TargetKind;
use holdfast_loadgen::workload::{OpKind, Workload};
use holdfast_loadgen::{Config, Report};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// No test may take longer than this.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A redis-server child process, killed when dropped.
struct Redis {
    child: Child,
    addr: String,
}

impl Redis {
    /// Starts one, or returns `None` (after saying so) if not installed.
    fn start() -> Option<Redis> {
        if !Path::new(REDIS_SERVER).exists() {
            eprintln!(
                "NOTICE: {REDIS_SERVER} is not installed; skipping the Redis end-to-end test"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Redis { child, addr: format!("127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.command("PING").as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start on {}", redis.addr);
            thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// Sends one inline command and returns the first line of the reply.
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("a bound listener has an address").port()
}

fn config(addr: &str, workload: Workload) -> Config {
    Config {
        addr: addr.to_owned(),
        target: TargetKind::Redis,
        workload,
        records: 2000,
        value_bytes: 100,
        distribution: DistributionKind::Zipfian,
        key_order: KeyOrder::Hashed,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        rate: None,
        connections: 4,
        pipeline: 4,
        cpu: None,
        skip_load: false,
        reply_timeout: Duration::from_secs(5),
        seed: 1,
        blind_updates: false,
        ping: None,
    }
}

/// Runs the load generator on its own thread, failing the test if it takes
/// longer than [`TEST_TIMEOUT`].
fn run_bounded(config: Config) -> Report {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(holdfast_loadgen::run(&config).map_err(|e| e.to_string()));
    });
    let result = done_rx.recv_timeout(TEST_TIMEOUT).expect("the load generator finishes in time");
    result.expect("the run is carried out")
}

#[test]
fn load_then_workload_a_pipelined_against_redis() {
    let Some(redis) = Redis::start() else { return };
    let report = run_bounded(config(&redis.addr, Workload::A));

    let load = report.load.as_ref().unwrap();
    assert_eq!(load.op(OpKind::Insert).count(), 2000);
    assert_eq!(load.total_errors(), 0, "{:?}", load.first_error);
    // Every record is in Redis under its own key.
    assert_eq!(redis.command("DBSIZE").as_deref(), Some(":2000"));

    let run = &report.run;
    assert_eq!(run.total_errors(), 0, "{:?}", run.first_error);
    assert!(run.op(OpKind::Read).count() > 100, "{}", report.to_table());
    assert!(run.op(OpKind::Update).count() > 100, "{}", report.to_table());
    assert_eq!(run.op(OpKind::Read).not_found, 0, "reads of loaded records all hit");
    assert!(run.elapsed_s() >= 1.0 && run.elapsed_s() < 6.0);
}

#[test]
fn open_loop_workload_f_sends_exactly_its_schedule() {
    let Some(redis) = Redis::start() else { return };
    let config = Config {
        rate: Some(2000),
        pipeline: 2,
        distribution: DistributionKind::Latest,
        ..config(&redis.addr, Workload::F)
    };
    let report = run_bounded(config);
    let run = &report.run;
    assert_eq!(run.total_errors(), 0, "{:?}", run.first_error);
    // 2000/s for 1 s: every intended operation was sent and answered.
    assert_eq!((run.total_count(), run.behind), (2000, 0), "{}", report.to_table());
    let (reads, rmws) = (run.op(OpKind::Read).count(), run.op(OpKind::ReadModifyWrite).count());
    assert!(reads > 800 && rmws > 800, "{reads} reads, {rmws} read-modify-writes");
    assert_eq!(run.send_lag_ns.len(), 2000);
}

#[test]
fn the_binary_prints_one_json_object() {
    let Some(redis) = Redis::start() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_holdfast-loadgen"))
        .args(["--target", "redis", "--addr", &redis.addr, "--workload", "c"])
        .args(["--records", "500", "--duration", "500ms", "--connections", "2"])
        .args(["--with-ping", "200ms", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TEST_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("holdfast-loadgen did not finish in time");
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["target"], "redis");
    assert_eq!(json["load"]["ops"]["insert"]["count"], 500);
    assert_eq!(json["run"]["errors"], 0);
    assert!(json["run"]["ops"]["read"]["p999_us"].as_f64().unwrap() > 0.0);
    assert!(json["ping"]["count"].as_u64().unwrap() > 0);
}

#[test]
fn a_closed_port_is_a_connect_error() {
    let config = config(&format!("127.0.0.1:{}", free_port()), Workload::C);
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = done_tx.send(holdfast_loadgen::run(&config).map(|_| ()).map_err(|e| e.to_string()));
    });
    let error = done_rx.recv_timeout(TEST_TIMEOUT).unwrap().unwrap_err();
    assert!(error.contains("cannot connect"), "{error}");
}
