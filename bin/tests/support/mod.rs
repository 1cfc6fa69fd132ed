//! A harness for tests that run several real holdfast nodes: a [`Cluster`]
//! started through `holdfast up` or as separate `holdfast serve` processes,
//! on ports that are free, with data in a temporary directory, and torn
//! down however the test ends.
//!
//! Include it with `mod support;`.
//!
//! # No node outlives its test
//!
//! A node left running would keep its port, and the nodes bind with
//! `SO_REUSEPORT`: a later node on that port would refuse to start at best.
//! So every process is killed when its [`Cluster`] is dropped (a panicking
//! test included): `holdfast up` runs in a process group of its own and the
//! whole group gets SIGKILL; `serve` nodes get SIGKILL each. Every process
//! the harness starts also gets SIGKILL from the kernel if the thread that
//! started it ends (`PR_SET_PDEATHSIG`), which covers a test binary killed
//! before its destructors ran; so a cluster must be started on a thread
//! that lives as long as it does (the test's own).
//!
//! # Ports
//!
//! Ports are taken at random from [`PORTS`], below Linux's ephemeral range
//! (32768 and up, where the kernel picks client ports), checked to bind, and
//! never handed out twice in one test binary, whose tests run in parallel.
//! If a node still finds its port taken at start-up (another program took
//! it in between), the cluster is started again on other ports.
//!
//! # Restarts
//!
//! A node restarts on its own port as soon as nothing listens there, even
//! while connections it accepted from its peers linger in TIME_WAIT (its
//! start-up check confirms a refused bind with a connect).
//!
//! # Logs
//!
//! The processes' output goes to files in the cluster's directory
//! (`logs/`); a failed assertion about a process prints them.

#![allow(dead_code)]
// Test code: unwrapping what the test itself made stops the test where it
// failed, which is what it should do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use holdfast_net::client::{Client, ClientOptions};

pub mod load;

pub const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

/// Where the harness takes ports from.
pub const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// How long a cluster may take to answer on every node.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take: `holdfast up` gives its nodes 10 s
/// before it kills them, and this leaves it time to report.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Cluster::restart`] waits for nothing to listen on a node's port.
pub const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a cluster is started on fresh ports when a node finds its
/// port taken.
const START_ATTEMPTS: usize = 3;

/// Ports handed out in this test binary, never handed out again.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Runs `holdfast ARGS` to completion (logs at `warn` and above).
pub fn holdfast(args: &[&str]) -> Output {
    Command::new(HOLDFAST).args(args).env("RUST_LOG", "warn").output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A finished command, for an assertion message.
pub fn explain(output: &Output) -> String {
    format!("{}\n--- stdout\n{}--- stderr\n{}", output.status, stdout(output), stderr(output))
}

/// The first of `count` consecutive ports on 127.0.0.1 that are all free
/// now and were not handed out before in this test binary.
pub fn free_ports(count: u16) -> u16 {
    assert!(count > 0 && count < PORTS.len() as u16 / 4, "{count} ports");
    for _ in 0..500 {
        let base = rand::random_range(PORTS.start..PORTS.end - count);
        let range = base..base + count;
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if range.clone().any(|port| handed_out.contains(&port)) {
            continue;
        }
        // All held at once, so that the check is of the whole range.
        let held: Result<Vec<TcpListener>, _> =
            range.clone().map(|port| TcpListener::bind(("127.0.0.1", port))).collect();
        if held.is_ok() {
            handed_out.extend(range);
            return base;
        }
    }
    panic!("found no {count} consecutive free ports in {PORTS:?}");
}

/// Whether `addr` can be bound now by a plain bind (no `SO_REUSEPORT`), as
/// a starting node's own check does: nothing listens on it, and no
/// connection a node accepted there lingers in TIME_WAIT (which, since the
/// nodes listen without `SO_REUSEADDR`, blocks the port for a minute after
/// a node closed such a connection).
pub fn port_is_free(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

/// Whether no process listens on `addr`: a connection is refused. This is
/// what "the node is gone" means for its port; it may still not be
/// [`port_is_free`] (TIME_WAIT).
pub fn nobody_listens(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused
    )
}

/// Waits until `check` holds for every address; false if it still fails
/// for one after `timeout`.
pub fn wait_for_all(
    addrs: &[SocketAddr],
    check: fn(SocketAddr) -> bool,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if addrs.iter().all(|addr| check(*addr)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client of `addr` that gives up quickly: for probing.
fn probe_client(addr: SocketAddr) -> Result<Client, String> {
    let options = ClientOptions {
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_millis(500),
        // This node, not the key's replicas.
        route_by_ring: false,
        ..ClientOptions::default()
    };
    Client::connect(&[addr], options).map_err(|error| format!("connect: {error}"))
}

/// Whether a node answers a ping at `addr` within a short timeout.
pub fn answers(addr: SocketAddr) -> bool {
    probe_client(addr).is_ok_and(|client| client.ping().is_ok())
}

/// Whether the node at `addr` serves requests: it answers a ping, and a
/// read through it (of a key nobody writes) succeeds. A node answers pings
/// as soon as it listens, but refuses reads and writes (`Unavailable`)
/// until it has formed its ring with its seeds.
pub fn serves(addr: SocketAddr) -> Result<(), String> {
    let client = probe_client(addr)?;
    client.ping().map_err(|error| format!("ping: {error}"))?;
    client.get(b"holdfast-harness-probe").map_err(|error| format!("get: {error}"))?;
    Ok(())
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet, which
/// holds no sockets and runs no code).
pub fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
        Err(_) => true,
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: `kill` has no memory effects.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// A command whose process gets SIGKILL when the thread that spawned it
/// ends, so that a test binary killed mid-test leaves nothing behind.
fn command_dying_with_this_thread(program: &str) -> Command {
    let mut command = Command::new(program);
    command.stdin(Stdio::null());
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
    command
}

/// Waits for `child` to exit, up to `timeout`; None if it is still running.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug)]
enum Processes {
    /// One `holdfast up`, leader of its own process group (whose id is its
    /// pid), and the nodes it started in that group.
    Up { child: Option<Child>, pgid: u32 },
    /// One `holdfast serve` per node; None while a node is down.
    Serve { children: Vec<Option<Child>> },
}

/// Why a start attempt failed.
enum StartFailure {
    /// A node found its port taken: try other ports.
    PortTaken(String),
    Other(String),
}

/// A running cluster of real nodes on 127.0.0.1.
#[derive(Debug)]
pub struct Cluster {
    addrs: Vec<SocketAddr>,
    extra_args: Vec<String>,
    processes: Processes,
    // Removed after `drop` killed the processes that use it.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `holdfast up --nodes NODES --base-port (free) EXTRA_ARGS`, run in
    /// the cluster's temporary directory so that the nodes keep their data
    /// in `up`'s default `./holdfast-data`; returns once every node
    /// [`serves`] requests. EXTRA_ARGS must not move the data or the ports.
    pub fn up(nodes: u16, extra_args: &[&str]) -> Cluster {
        Cluster::start(nodes, extra_args, true)
    }

    /// `NODES` processes of `holdfast serve --data-dir (temporary)
    /// /holdfast-data/node-i --listen 127.0.0.1:(free) --seeds (the others)
    /// --pin false EXTRA_ARGS`; returns once every node [`serves`] requests.
    pub fn serve(nodes: u16, extra_args: &[&str]) -> Cluster {
        Cluster::start(nodes, extra_args, false)
    }

    fn start(nodes: u16, extra_args: &[&str], up: bool) -> Cluster {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let base = free_ports(nodes);
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("logs")).unwrap();
            let addrs = (0..nodes).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i))).collect();
            let extra_args = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
            let processes = if up {
                Processes::Up { child: None, pgid: 0 }
            } else {
                Processes::Serve { children: (0..nodes).map(|_| None).collect() }
            };
            let mut cluster = Cluster { addrs, extra_args, processes, dir };
            if up {
                cluster.spawn_up();
            } else {
                for i in 0..usize::from(nodes) {
                    cluster.spawn_node(i);
                }
            }
            match cluster.wait_ready() {
                Ok(()) => return cluster,
                // Dropping the cluster kills what it started.
                Err(StartFailure::PortTaken(log)) => failures.push(log),
                Err(StartFailure::Other(log)) => panic!("the cluster did not start:\n{log}"),
            }
        }
        panic!("a node found its port taken {START_ATTEMPTS} times:\n{}", failures.join("\n"));
    }

    fn log_file(&self, name: &str) -> File {
        let path = self.dir.path().join("logs").join(name);
        File::options().create(true).append(true).open(path).unwrap()
    }

    fn spawn_up(&mut self) {
        let nodes = self.addrs.len().to_string();
        let base = self.addrs[0].port().to_string();
        let mut command = command_dying_with_this_thread(HOLDFAST);
        command
            .args(["up", "--nodes", &nodes, "--base-port", &base])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdout(self.log_file("up.out"))
            .stderr(self.log_file("up.err"))
            .process_group(0);
        let child = command.spawn().unwrap();
        self.processes = Processes::Up { pgid: child.id(), child: Some(child) };
    }

    fn spawn_node(&mut self, i: usize) {
        let seeds: Vec<String> = self
            .addrs
            .iter()
            .filter(|addr| **addr != self.addrs[i])
            .map(ToString::to_string)
            .collect();
        let mut command = command_dying_with_this_thread(HOLDFAST);
        command
            .args(["serve", "--data-dir"])
            .arg(self.data_dir(i))
            .args(["--listen", &self.addrs[i].to_string(), "--pin", "false"])
            .args(if seeds.is_empty() {
                vec![]
            } else {
                vec!["--seeds".to_owned(), seeds.join(",")]
            })
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(self.log_file(&format!("node-{i}.log")));
        let child = command.spawn().unwrap();
        let Processes::Serve { children } = &mut self.processes else { unreachable!() };
        children[i] = Some(child);
    }

    /// Waits until every node in `which` [`serves`] requests, watching for
    /// a process that exits instead.
    fn wait_until_serving(&mut self, which: &[usize]) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut waiting: Vec<usize> = which.to_vec();
        let mut last_errors = Vec::new();
        loop {
            if let Some(exited) = self.an_exited_process() {
                let log = format!("{exited}\n{}", self.logs());
                return Err(if log.contains("is taken by another process") {
                    StartFailure::PortTaken(log)
                } else {
                    StartFailure::Other(log)
                });
            }
            last_errors.clear();
            waiting.retain(|i| match serves(self.addrs[*i]) {
                Ok(()) => false,
                Err(error) => {
                    last_errors.push(format!("node {i}: {error}"));
                    true
                }
            });
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(format!(
                    "not serving within {READY_TIMEOUT:?}: {last_errors:?}\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let all: Vec<usize> = (0..self.addrs.len()).collect();
        self.wait_until_serving(&all)
    }

    /// Which started process exited, if one did (and reaps it).
    fn an_exited_process(&mut self) -> Option<String> {
        match &mut self.processes {
            Processes::Up { child, .. } => {
                let status = child.as_mut()?.try_wait().unwrap()?;
                *child = None;
                Some(format!("holdfast up exited: {status}"))
            }
            Processes::Serve { children } => {
                children.iter_mut().enumerate().find_map(|(i, slot)| {
                    let status = slot.as_mut()?.try_wait().unwrap()?;
                    *slot = None;
                    Some(format!("node {i} exited: {status}"))
                })
            }
        }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Node `i`'s data directory (the same for `up` and `serve`).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("holdfast-data").join(format!("node-{i}"))
    }

    /// The cluster's temporary directory: the nodes' data and `logs/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client of node `i` alone (requests go to node `i`, which
    /// coordinates or forwards them, rather than straight to a replica).
    pub fn client(&self, i: usize) -> Client {
        let options = ClientOptions { route_by_ring: false, ..ClientOptions::default() };
        Client::connect(&[self.addrs[i]], options).unwrap()
    }

    /// A client of the whole cluster, routing each request to a replica of
    /// its key by the ring it fetches.
    pub fn cluster_client(&self) -> Client {
        Client::connect(&self.addrs, ClientOptions::default()).unwrap()
    }

    /// `holdfast ARGS --addr (node i)`, which must succeed.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let addr = self.addrs[i].to_string();
        let output = holdfast(&[args, &["--addr", &addr]].concat());
        assert!(output.status.success(), "holdfast {args:?} --addr {addr}: {}", explain(&output));
        output
    }

    /// Every process's output so far, for an assertion message.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("logs"))
            .map(|entries| {
                entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("--- {}\n{text}", path.file_name().unwrap_or_default().to_string_lossy())
            })
            .collect()
    }

    /// What `holdfast up` printed on its standard output so far.
    pub fn up_stdout(&self) -> String {
        self.up_pid();
        std::fs::read_to_string(self.dir.path().join("logs/up.out")).unwrap()
    }

    /// The pid of `holdfast up` (panics for a `serve` cluster).
    pub fn up_pid(&self) -> u32 {
        match &self.processes {
            Processes::Up { pgid, .. } => *pgid,
            Processes::Serve { .. } => panic!("this cluster was started with serve, not up"),
        }
    }

    /// Node `i`'s pid: as `up` printed it, or of the `serve` process.
    pub fn pid(&self, i: usize) -> u32 {
        match &self.processes {
            Processes::Up { .. } => {
                let prefix = format!("node {i}: {}  ", self.addrs[i]);
                let out = self.up_stdout();
                let line = out.lines().find(|line| line.starts_with(&prefix));
                let pid = line.and_then(|line| line.rsplit_once("  pid ")).map(|(_, pid)| pid);
                pid.and_then(|pid| pid.parse().ok())
                    .unwrap_or_else(|| panic!("up printed no pid for node {i}:\n{out}"))
            }
            Processes::Serve { children } => {
                children[i].as_ref().unwrap_or_else(|| panic!("node {i} is down")).id()
            }
        }
    }

    /// Sends `signal` to `holdfast up` alone (not to its nodes).
    pub fn signal_up(&self, signal: libc::c_int) {
        self::signal(self.up_pid(), signal);
    }

    /// Waits for `holdfast up` to exit (and reaps it); panics after
    /// `timeout`.
    pub fn wait_up(&mut self, timeout: Duration) -> ExitStatus {
        let Processes::Up { child, pgid } = &mut self.processes else {
            panic!("this cluster was started with serve, not up")
        };
        let mut running = child.take().expect("holdfast up was already waited for");
        let status = wait_timeout(&mut running, timeout);
        let Some(status) = status else {
            *child = Some(running);
            panic!("holdfast up did not exit within {timeout:?}:\n{}", self.logs());
        };
        // An `up` that exited (rather than being killed) reaped every node
        // it started first: the group is empty, and its id may be reused by
        // an unrelated process, which the drop must then not kill.
        if status.code().is_some() {
            *pgid = 0;
        }
        status
    }

    /// Waits until nothing listens on node `i`'s port. The kernel tears a
    /// process's io_uring down after the process is reaped, and with it the
    /// sockets the ring still held, so the listener can outlive the process
    /// for a moment.
    fn wait_nobody_listens(&self, i: usize) {
        assert!(
            wait_for_all(&self.addrs[i..=i], nobody_listens, Duration::from_secs(10)),
            "node {i}'s port is still listened on after it exited:\n{}",
            self.logs()
        );
    }

    /// SIGKILL to node `i`, and waits until it is gone: reaped (`serve`) or
    /// reported by `up` as exited, and nothing listening on its port.
    pub fn kill(&mut self, i: usize) {
        match &mut self.processes {
            Processes::Serve { children } => {
                let mut child = children[i].take().unwrap_or_else(|| panic!("node {i} is down"));
                child.kill().unwrap();
                child.wait().unwrap();
            }
            Processes::Up { .. } => {
                signal(self.pid(i), libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(10);
                let reported = format!("node {i}: exited");
                while !self.up_stdout().contains(&reported) {
                    assert!(Instant::now() < deadline, "up did not report node {i}'s death");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.wait_nobody_listens(i);
    }

    /// Starts node `i` again on its address and data (stopping it
    /// gracefully first if it runs), and waits until it serves. Only for a
    /// `serve` cluster: `up` does not restart nodes.
    pub fn restart(&mut self, i: usize) {
        let Processes::Serve { children } = &self.processes else {
            panic!("restart needs a cluster started with serve: up does not restart nodes")
        };
        if children[i].is_some() {
            self.stop_node(i);
        } else {
            // The node's own start-up refuses a port something listens on.
            self.wait_until_port_free(i);
        }
        self.start_node(i, &[]);
    }

    /// Stops every node gracefully (SIGTERM to `up`, or to each `serve`
    /// node), asserts that each process exited 0 and that nothing listens
    /// on the cluster's ports any more.
    pub fn stop(&mut self) {
        match &mut self.processes {
            Processes::Up { child, .. } => {
                if child.is_some() {
                    self.signal_up(libc::SIGTERM);
                    let status = self.wait_up(STOP_TIMEOUT);
                    assert!(status.success(), "holdfast up exited with {status}:\n{}", self.logs());
                }
            }
            Processes::Serve { children } => {
                for child in children.iter().flatten() {
                    signal(child.id(), libc::SIGTERM);
                }
                let mut failures = Vec::new();
                for (i, slot) in children.iter_mut().enumerate() {
                    let Some(mut child) = slot.take() else { continue };
                    match wait_timeout(&mut child, STOP_TIMEOUT) {
                        Some(status) if status.success() => {}
                        Some(status) => failures.push(format!("node {i} exited with {status}")),
                        None => {
                            let _ = child.kill();
                            let _ = child.wait();
                            failures.push(format!("node {i} did not stop on SIGTERM"));
                        }
                    }
                }
                assert!(failures.is_empty(), "{failures:?}:\n{}", self.logs());
            }
        }
        assert!(
            wait_for_all(&self.addrs, nobody_listens, Duration::from_secs(5)),
            "a port is still listened on after the cluster stopped:\n{}",
            self.logs()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match &mut self.processes {
            Processes::Up { child, pgid } => {
                // The whole group, even if `up` itself already exited: its
                // nodes may not have.
                if *pgid != 0 {
                    // SAFETY: `kill` has no memory effects.
                    unsafe { libc::kill(-(*pgid as libc::pid_t), libc::SIGKILL) };
                }
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Processes::Serve { children } => {
                for mut child in children.iter_mut().filter_map(Option::take) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// A `holdfast serve` process started by the test itself, killed when
/// dropped, and by the kernel if the test's thread ends first.
pub struct Node(Child);

impl Node {
    /// Starts `holdfast ARGS` with its log (stderr) in `log`.
    pub fn spawn(args: &[String], log: impl Into<Stdio>) -> Node {
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

impl Node {
    /// Starts `holdfast ARGS` with its log thrown away.
    pub fn spawn_quiet(args: &[&str]) -> Node {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        Node::spawn(&args, Stdio::null())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Cluster {
    /// Stops node `i` gracefully (SIGTERM) and waits until it exited 0 and
    /// nothing listens on its port any more. Only for a `serve` cluster.
    pub fn stop_node(&mut self, i: usize) {
        let Processes::Serve { children } = &mut self.processes else {
            panic!("stop_node needs a cluster started with serve")
        };
        let mut child = children[i].take().unwrap_or_else(|| panic!("node {i} is down"));
        signal(child.id(), libc::SIGTERM);
        let status = wait_timeout(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            status.is_some_and(|status| status.success()),
            "node {i} stopped with {status:?}:\n{}",
            self.logs()
        );
        self.wait_until_port_free(i);
    }

    /// Waits until nothing listens on node `i`'s port.
    fn wait_until_port_free(&self, i: usize) {
        assert!(
            wait_for_all(&self.addrs[i..=i], nobody_listens, RESTART_PORT_TIMEOUT),
            "something still listens on node {i}'s port {} {RESTART_PORT_TIMEOUT:?} after the \
             node exited\n{}",
            self.addrs[i],
            self.logs()
        );
    }

    /// Starts node `i` (stopped with [`Cluster::stop_node`]) again on its
    /// address, data directory and seeds, with `more_args` after the
    /// cluster's own, and waits until it serves.
    pub fn start_node(&mut self, i: usize, more_args: &[&str]) {
        let Processes::Serve { children } = &self.processes else {
            panic!("start_node needs a cluster started with serve")
        };
        assert!(children[i].is_none(), "node {i} is running");
        let kept = self.extra_args.len();
        self.extra_args.extend(more_args.iter().map(|arg| (*arg).to_owned()));
        self.spawn_node(i);
        self.extra_args.truncate(kept);
        if let Err(StartFailure::PortTaken(log) | StartFailure::Other(log)) =
            self.wait_until_serving(&[i])
        {
            panic!("node {i} did not start:\n{log}");
        }
    }
}
