//! `holdfast up`: a local cluster of `holdfast serve` child processes, for
//! trying holdfast on one machine and for tests.
//!
//! Node `i` (0-based) listens on `127.0.0.1:(base_port + i)`, keeps its data
//! in `DATA_DIR/node-i`, and is given every other node's address as its
//! seeds and the same N, R and W. The nodes do not pin their shards to CPUs:
//! they share the machine, and pinning would put every node's shard 0 on
//! CPU 0.
//!
//! # Lifecycle
//!
//! - Before anything starts, every port of the cluster is checked to be free
//!   (a plain bind, then released); a taken one stops `up` with nothing
//!   started. A node's own start-up checks its port again.
//! - Standard output carries `up`'s own lines only, one per node as it
//!   starts (`node 0: 127.0.0.1:7070  data ./holdfast-data/node-0  pid 1234`)
//!   and one per node as it ends, so a script can read it; the nodes'
//!   standard output is discarded and their standard error (their logs) is
//!   `up`'s.
//! - A node that exits on its own is reported with its exit status and the
//!   others keep running: a cluster survives a node's death. `up` exits (with
//!   an error) once every node has.
//! - SIGINT or SIGTERM: every node gets SIGTERM (a graceful stop) and
//!   [`STOP_TIMEOUT`] to exit, then SIGKILL. `up` exits 0 when every node
//!   still running stopped cleanly, with an error otherwise.
//! - The nodes die with `up` even when it is SIGKILLed: each asks the kernel
//!   for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`). The kernel means
//!   the parent *thread*, so the nodes are spawned from the main thread,
//!   which lives as long as `up` does.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Args;
use holdfast_engine::cluster::ClusterOptions;
use holdfast_engine::server::someone_listens_on;
use holdfast_engine::store::SyncPolicy;

use super::Outcome;
use super::serve::QuorumArgs;

/// The most nodes one `up` runs: a local cluster is for trying things, and
/// every node is a process with its own io_uring and buffers.
pub const NODES_MAX: u16 = 64;

/// How long the nodes have to stop after SIGTERM before they are killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often `up` looks for a signal or a node that exited. It sleeps in
/// between: it has nothing else to do, and must not take a core from the
/// nodes.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many nodes to run.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(NODES_MAX)))]
    pub nodes: u16,
    /// Where the nodes keep their data: node i in DATA_DIR/node-i.
    #[arg(long, default_value = "./holdfast-data")]
    pub data_dir: PathBuf,
    /// Node i listens on 127.0.0.1:(BASE_PORT + i).
    #[arg(long, default_value_t = 7070, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,
    /// Executors per node.
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    /// When writes are acknowledged: always, never or interval:<ms> (the
    /// nodes' default when not given).
    #[arg(long)]
    pub fsync: Option<SyncPolicy>,
    #[command(flatten)]
    pub quorums: QuorumArgs,
}

/// One node of the cluster, as it will be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The arguments of its `holdfast serve`.
    pub args: Vec<OsString>,
}

/// N, R and W for a cluster of `nodes`: what was given, and defaults that
/// fit the cluster for the rest (N at most the node count, R and W at most
/// N). Refuses quorums that cannot be met, and an N the cluster cannot
/// place on distinct nodes.
fn quorums(args: &UpArgs) -> Result<(u8, u8, u8)> {
    let nodes = u8::try_from(args.nodes).unwrap_or(u8::MAX);
    let QuorumArgs { n, r, w } = args.quorums;
    let cluster = ClusterOptions::fitted(nodes, n, r, w);
    cluster.validate().map_err(|error| anyhow!("invalid cluster settings: {error}"))?;
    if u16::from(cluster.n) > args.nodes {
        bail!(
            "n is {} but the cluster has {} node(s): a key's replicas must be on distinct nodes",
            cluster.n,
            args.nodes
        );
    }
    Ok((cluster.n, cluster.r, cluster.w))
}

/// Every node's address, data directory and `serve` arguments.
pub fn plan(args: &UpArgs) -> Result<Vec<NodePlan>> {
    let last_port = u32::from(args.base_port) + u32::from(args.nodes) - 1;
    if last_port > u32::from(u16::MAX) {
        bail!(
            "{} nodes from port {} would need port {last_port}, past 65535: choose a lower --base-port",
            args.nodes,
            args.base_port
        );
    }
    let (n, r, w) = quorums(args)?;
    let addrs: Vec<SocketAddr> =
        (0..args.nodes).map(|i| SocketAddr::from(([127, 0, 0, 1], args.base_port + i))).collect();
    let plans = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let data_dir = args.data_dir.join(format!("node-{i}"));
            let mut serve: Vec<OsString> = vec!["serve".into(), "--data-dir".into()];
            serve.push(data_dir.clone().into());
            for (flag, value) in [
                ("--listen", addr.to_string()),
                ("--shards", args.shards.to_string()),
                ("--pin", "false".to_owned()),
                ("--n", n.to_string()),
                ("--r", r.to_string()),
                ("--w", w.to_string()),
            ] {
                serve.extend([flag.into(), value.into()]);
            }
            if let Some(fsync) = args.fsync {
                serve.extend(["--fsync".into(), fsync.to_string().into()]);
            }
            let seeds: Vec<String> =
                addrs.iter().filter(|seed| *seed != addr).map(ToString::to_string).collect();
            if !seeds.is_empty() {
                serve.extend(["--seeds".into(), seeds.join(",").into()]);
            }
            NodePlan { addr: *addr, data_dir, args: serve }
        })
        .collect();
    Ok(plans)
}

/// Fails, naming the first taken port, unless nothing listens on any
/// node's address (the nodes' own start-up check, run early so that no
/// node starts when one cannot).
fn check_ports_free(plans: &[NodePlan]) -> Result<()> {
    for (i, plan) in plans.iter().enumerate() {
        let taken = someone_listens_on(plan.addr).with_context(|| {
            format!("cannot bind {} to check it is free; no node was started", plan.addr)
        })?;
        if taken {
            bail!(
                "{} (node {i}'s port) is taken by another process: stop it or choose another \
                 --base-port; no node was started",
                plan.addr
            );
        }
    }
    Ok(())
}

/// Starts one node: a `holdfast serve` child that gets SIGTERM if `up` dies.
fn spawn(exe: &Path, plan: &NodePlan) -> std::io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id())
        .map_err(|_| std::io::Error::other("this process's id does not fit a pid_t"))?;
    let mut command = Command::new(exe);
    command.args(&plan.args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before `exec`, where only
    // async-signal-safe calls are allowed: it calls `prctl` and `getppid`,
    // and builds an `io::Error` from an errno, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between the fork and the `prctl`, in
            // which case no signal will come: give up instead of running on
            // as an orphan.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// A node that was started, until it is reaped.
#[derive(Debug)]
struct Running {
    index: usize,
    child: Option<Child>,
}

impl Running {
    /// The node's exit status if it exited since the last look (and then
    /// forgets the child: its pid may be reused from now on).
    fn reap(&mut self) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else { return Ok(None) };
        let status =
            child.try_wait().with_context(|| format!("waiting for node {}", self.index))?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Sends `signal` to the node, unless it was already reaped. An exited
    /// but unreaped node is a zombie that still holds its pid, so the signal
    /// cannot reach another process.
    fn signal(&self, signal: libc::c_int) {
        let Some(child) = &self.child else { return };
        let Ok(pid) = libc::pid_t::try_from(child.id()) else { return };
        // SAFETY: `kill` with a pid of our own unreaped child has no memory
        // effects; a failure (the node already exited) needs no handling.
        unsafe { libc::kill(pid, signal) };
    }
}

fn running_count(nodes: &[Running]) -> usize {
    nodes.iter().filter(|node| node.child.is_some()).count()
}

/// SIGTERM to every node still running, [`STOP_TIMEOUT`] for them to exit,
/// then SIGKILL. Fails if any node had to be killed or exited with an error.
fn stop(nodes: &mut [Running]) -> Result<()> {
    for node in nodes.iter() {
        node.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut unclean = 0;
    loop {
        for node in nodes.iter_mut() {
            match node.reap() {
                Ok(Some(status)) if status.success() => println!("node {}: stopped", node.index),
                Ok(Some(status)) => {
                    unclean += 1;
                    println!("node {}: stopped ({status})", node.index);
                }
                Ok(None) => {}
                Err(error) => {
                    unclean += 1;
                    eprintln!("holdfast up: {error:#}");
                    node.child = None;
                }
            }
        }
        if running_count(nodes) == 0 {
            break;
        }
        if Instant::now() >= deadline {
            for node in nodes.iter_mut() {
                if let Some(mut child) = node.child.take() {
                    unclean += 1;
                    // Errors here mean the node is already gone.
                    let _ = child.kill();
                    let _ = child.wait();
                    println!(
                        "node {}: did not stop within {} s of SIGTERM; killed",
                        node.index,
                        STOP_TIMEOUT.as_secs()
                    );
                }
            }
            break;
        }
        // Nodes stop within tens of milliseconds; look often while they do.
        std::thread::sleep(Duration::from_millis(20));
    }
    if unclean > 0 {
        bail!("{unclean} of {} node(s) did not stop cleanly", nodes.len());
    }
    Ok(())
}

pub fn run(args: UpArgs) -> Result<Outcome> {
    let plans = plan(&args)?;
    check_ports_free(&plans)?;
    let exe = std::env::current_exe().context("finding the holdfast binary to run nodes with")?;
    // Installed before any node starts, so that a signal during start-up
    // still stops the nodes already running.
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .context("installing the signal handlers")?;
    }

    let mut nodes = Vec::with_capacity(plans.len());
    for (index, plan) in plans.iter().enumerate() {
        match spawn(&exe, plan) {
            Ok(child) => {
                println!(
                    "node {index}: {}  data {}  pid {}",
                    plan.addr,
                    plan.data_dir.display(),
                    child.id()
                );
                nodes.push(Running { index, child: Some(child) });
            }
            Err(error) => {
                let error = anyhow!(error).context(format!(
                    "starting node {index} ({} {})",
                    exe.display(),
                    plan.args.join(" ".as_ref()).to_string_lossy()
                ));
                if let Err(stopping) = stop(&mut nodes) {
                    eprintln!("holdfast up: {stopping:#}");
                }
                return Err(error);
            }
        }
    }
    tracing::info!(nodes = nodes.len(), "cluster started; SIGINT (Ctrl-C) or SIGTERM stops it");

    loop {
        if shutdown.load(Ordering::Relaxed) {
            tracing::info!(running = running_count(&nodes), "stopping the nodes");
            stop(&mut nodes)?;
            return Ok(Outcome::Done);
        }
        for i in 0..nodes.len() {
            let reaped = nodes[i].reap();
            match reaped {
                Ok(Some(status)) => println!(
                    "node {i}: exited ({status}); {} of {} node(s) running",
                    running_count(&nodes),
                    nodes.len()
                ),
                Ok(None) => {}
                Err(error) => {
                    if let Err(stopping) = stop(&mut nodes) {
                        eprintln!("holdfast up: {stopping:#}");
                    }
                    return Err(error);
                }
            }
        }
        if running_count(&nodes) == 0 {
            bail!("every node has exited");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: UpArgs,
    }

    fn args(line: &[&str]) -> UpArgs {
        Cli::try_parse_from(std::iter::once("up").chain(line.iter().copied())).unwrap().args
    }

    fn serve_line(plan: &NodePlan) -> String {
        plan.args.join(" ".as_ref()).to_string_lossy().into_owned()
    }

    #[test]
    fn no_flags_gives_three_nodes_on_consecutive_ports_each_seeded_with_the_others() {
        let plans = plan(&args(&[])).unwrap();
        assert_eq!(plans.len(), 3);
        assert_eq!(plans[1].addr, SocketAddr::from(([127, 0, 0, 1], 7071)));
        assert_eq!(plans[2].data_dir, PathBuf::from("./holdfast-data/node-2"));
        assert_eq!(
            serve_line(&plans[1]),
            "serve --data-dir ./holdfast-data/node-1 --listen 127.0.0.1:7071 --shards 1 \
             --pin false --n 3 --r 2 --w 2 --seeds 127.0.0.1:7070,127.0.0.1:7072"
        );
    }

    #[test]
    fn one_node_is_its_own_quorum_and_has_no_seeds() {
        let plans = plan(&args(&["--nodes", "1", "--fsync", "interval:5"])).unwrap();
        assert_eq!(
            serve_line(&plans[0]),
            "serve --data-dir ./holdfast-data/node-0 --listen 127.0.0.1:7070 --shards 1 \
             --pin false --n 1 --r 1 --w 1 --fsync interval:5"
        );
    }

    #[test]
    fn quorums_follow_n_and_are_checked() {
        assert_eq!(quorums(&args(&["--nodes", "2"])).unwrap(), (2, 2, 2));
        assert_eq!(quorums(&args(&["--nodes", "5"])).unwrap(), (3, 2, 2));
        assert_eq!(quorums(&args(&["--nodes", "5", "--n", "5", "--w", "4"])).unwrap(), (5, 2, 4));
        let error = |line: &[&str]| format!("{:#}", quorums(&args(line)).unwrap_err());
        assert!(error(&["--r", "4"]).contains("r must be in 1..=3, not 4"));
        assert!(error(&["--nodes", "2", "--n", "3"]).contains("the cluster has 2 node(s)"));
    }

    #[test]
    fn ports_past_65535_and_zero_nodes_are_refused() {
        let error = plan(&args(&["--nodes", "3", "--base-port", "65534"])).unwrap_err();
        assert!(format!("{error:#}").contains("port 65536"), "{error:#}");
        assert!(Cli::try_parse_from(["up", "--nodes", "0"]).is_err());
        assert!(Cli::try_parse_from(["up", "--nodes", "65"]).is_err());
        assert!(Cli::try_parse_from(["up", "--base-port", "0"]).is_err());
    }
}
