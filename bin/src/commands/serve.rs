//! `holdfast serve`: runs one node until SIGTERM or SIGINT.
//!
//! Settings come from `--config FILE` (TOML) and then the command line,
//! which wins. A sample file with every setting is `bin/deploy/holdfast.toml`
//! (with a systemd unit beside it).
//!
//! # Cluster settings
//!
//! `seeds` are the other nodes' addresses (the node's own address among
//! them is harmless: the engine skips it). N, R and W default to 3, 2 and 2,
//! each lowered to fit a cluster smaller than that: N to the node count
//! (this node plus its distinct seeds), R and W to N. So a node without
//! seeds runs as a one-node cluster with N = R = W = 1 and no flags. Every
//! node of a cluster must be given the same N, R and W; whatever was set
//! explicitly is checked (`1 <= R, W <= N`), never adjusted.
//!
//! # Joining a running cluster
//!
//! `--join` (or `join = true`) starts a node that joins a running cluster
//! through its `seeds` (any of its nodes) instead of forming a first ring
//! with them: it gossips with the seeds, is added to a pending ring, pulls
//! the partitions it gains, and serves once the new ring is installed
//! (requests before that are refused: no ring yet). N, R and W not given
//! are learned from the first seed that answers (every node of a cluster
//! must agree on them). A node that already has a `membership` file in its
//! data directory rejoins as what it was, whatever `--join` says. Nodes
//! leave with `holdfast admin leave` and are removed with `holdfast admin
//! remove` (see `commands/admin.rs`).
//!
//! # Replacing a node's disk
//!
//! `--node-id HEX` (or `node_id`) starts a node that lost its data
//! directory as the node it was: the id (as `holdfast status` prints it)
//! is taken only when the directory has no `node.id` yet, and a `node.id`
//! naming another node is refused. Given its old seeds, the node finds
//! itself in their ring and rejoins as that member; anti-entropy then
//! refills it from the other replicas. Its clocks start at an incarnation
//! drawn far from its earlier life's (see the engine's `identity`), so it
//! never reissues a dot it issued before.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use holdfast_engine::cluster::{ClusterOptions, DetectorOptions};
use holdfast_engine::server::{self, ServerOptions};
use holdfast_engine::store::SyncPolicy;
use serde::Deserialize;

use super::Outcome;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file with the node's settings; flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the node keeps its data (one subdirectory per shard).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The address to serve clients on.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Executors (one per core), each owning a share of the partitions.
    #[arg(long)]
    pub shards: Option<u32>,
    /// When writes are acknowledged: always, never or interval:<ms>.
    #[arg(long)]
    pub fsync: Option<SyncPolicy>,
    /// Pin shard i to CPU i (true or false; default true). Nodes sharing a
    /// machine should not all pin: they would crowd the same CPUs.
    #[arg(long)]
    pub pin: Option<bool>,
    /// What drives the client sockets: uring (the shard's own io_uring
    /// ring; the default, falling back to glommio before Linux 6.1) or
    /// glommio (glommio's sockets).
    #[arg(long)]
    pub transport: Option<holdfast_engine::server::Transport>,
    /// The other nodes of the cluster, by address, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "ADDR[,ADDR...]")]
    pub seeds: Option<Vec<SocketAddr>>,
    #[command(flatten)]
    pub quorums: QuorumArgs,
    /// This node's share of the partitions relative to the others' (default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// The failure zone (rack, availability zone) this node is in; replicas
    /// are spread over zones. Default: none.
    #[arg(long)]
    pub zone: Option<String>,
    /// Join a running cluster through --seeds (any of its nodes) instead of
    /// forming a first ring with them.
    #[arg(long)]
    pub join: bool,
    /// The node's id (16 hex digits, as `holdfast status` prints them), for
    /// a node that lost its data directory: used only when the directory
    /// has no identity yet, and refused if it has another one.
    #[arg(long, value_parser = parse_node_id, value_name = "HEX")]
    pub node_id: Option<u64>,
}

/// A node id as `holdfast status` prints it: hex, with or without `0x`.
fn parse_node_id(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    match u64::from_str_radix(digits, 16) {
        Ok(0) => Err("node 0 is not a node id".into()),
        Ok(id) => Ok(id),
        Err(error) => Err(format!("{text:?} is not a node id (16 hex digits): {error}")),
    }
}

/// N, R and W on the command line (`serve` and `up`).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct QuorumArgs {
    /// Replicas per key (default 3, or the node count if smaller).
    #[arg(long, value_name = "N")]
    pub n: Option<u8>,
    /// Replicas that must answer a read (default 2, or N if smaller).
    #[arg(long, value_name = "R")]
    pub r: Option<u8>,
    /// Replicas that must acknowledge a write (default 2, or N if smaller).
    #[arg(long, value_name = "W")]
    pub w: Option<u8>,
}

/// The config file's settings. Every field is optional; unknown fields are
/// refused so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    shards: Option<u32>,
    partitions: Option<u32>,
    fsync: Option<String>,
    key_bytes_max: Option<usize>,
    value_bytes_max: Option<usize>,
    segment_bytes_max: Option<u64>,
    frame_bytes_max: Option<u32>,
    connection_in_flight_max: Option<usize>,
    pin: Option<bool>,
    transport: Option<String>,
    compaction_bytes_per_second: Option<u64>,
    seeds: Option<Vec<SocketAddr>>,
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    weight: Option<u32>,
    zone: Option<String>,
    request_timeout_ms: Option<u64>,
    read_repair_wait_ms: Option<u64>,
    hint_after_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    acceptable_pause_ms: Option<u64>,
    phi_threshold: Option<f64>,
    handoff_keys_per_second: Option<u32>,
    transfer_keys_per_second: Option<u32>,
    anti_entropy_period_ms: Option<u64>,
    anti_entropy_keys_per_second: Option<u32>,
    anti_entropy_bytes_per_second: Option<u64>,
    tombstone_grace_ms: Option<u64>,
    gossip_interval_ms: Option<u64>,
    join: Option<bool>,
    node_id: Option<String>,
}

/// The options a node runs with, from the file and then the flags.
#[cfg(test)]
fn options(args: &ServeArgs) -> Result<ServerOptions> {
    options_and_given(args).map(|(options, _)| options)
}

/// Which of N, R and W were set (in the file or by a flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Given {
    n: bool,
    r: bool,
    w: bool,
}

/// [`options`], and which quorums were given rather than defaulted.
fn options_and_given(args: &ServeArgs) -> Result<(ServerOptions, Given)> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<ConfigFile>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let Some(data_dir) = args.data_dir.clone().or(file.data_dir) else {
        bail!("no data directory: pass --data-dir or set data_dir in the config file");
    };
    // Relative to the working directory, made absolute once here: the store
    // syncs its directories through glommio, which fails on a relative path
    // (EBADF from the first directory sync, and the store refuses writes).
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("resolving the data directory {}", data_dir.display()))?;
    let listen = args.listen.or(file.listen).unwrap_or_else(|| ([127, 0, 0, 1], 7070).into());
    let mut options = ServerOptions::new(data_dir, listen);
    options.shards = args.shards.or(file.shards).unwrap_or(1);
    options.partitions = file.partitions.unwrap_or(options.partitions);
    let fsync = match (&args.fsync, &file.fsync) {
        (Some(policy), _) => Some(*policy),
        (None, Some(text)) => Some(text.parse::<SyncPolicy>().map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    options.store.sync = fsync.unwrap_or(options.store.sync);
    options.store.key_bytes_max = file.key_bytes_max.unwrap_or(options.store.key_bytes_max);
    options.store.value_bytes_max = file.value_bytes_max.unwrap_or(options.store.value_bytes_max);
    options.store.segment_bytes_max =
        file.segment_bytes_max.unwrap_or(options.store.segment_bytes_max);
    options.frame_bytes_max = file.frame_bytes_max.unwrap_or(options.frame_bytes_max);
    options.connection_in_flight_max =
        file.connection_in_flight_max.unwrap_or(options.connection_in_flight_max);
    options.pin = args.pin.or(file.pin).unwrap_or(options.pin);
    options.transport = match (args.transport, &file.transport) {
        (Some(transport), _) => transport,
        (None, Some(text)) => text.parse().map_err(|error: String| anyhow::anyhow!(error))?,
        (None, None) => options.transport,
    };
    options.compaction_bytes_per_second =
        file.compaction_bytes_per_second.unwrap_or(options.compaction_bytes_per_second);
    if options.compaction_bytes_per_second == 0 {
        bail!("compaction_bytes_per_second must be above 0");
    }

    let mut seeds = args.seeds.clone().or(file.seeds).unwrap_or_default();
    // A seed listed twice is one node; the order of the rest is kept.
    let mut seen = std::collections::BTreeSet::new();
    seeds.retain(|seed| seen.insert(*seed));
    options.seeds = seeds;
    options.weight = args.weight.or(file.weight).unwrap_or(options.weight);
    if options.weight == 0 {
        bail!("weight must be at least 1 (a node's share of the partitions)");
    }
    options.zone = args.zone.clone().or(file.zone).unwrap_or_default();

    options.join = args.join || file.join.unwrap_or(false);
    options.node_id = match (args.node_id, &file.node_id) {
        (Some(id), _) => Some(id),
        (None, Some(text)) => {
            Some(parse_node_id(text).map_err(|error| anyhow!("node_id: {error}"))?)
        }
        (None, None) => None,
    };
    if options.join && options.seeds.iter().all(|seed| *seed == options.listen) {
        bail!("--join needs --seeds: the address of at least one node of the running cluster");
    }
    options.gossip_interval =
        file.gossip_interval_ms.map_or(options.gossip_interval, Duration::from_millis);
    if options.gossip_interval.is_zero() {
        bail!("gossip_interval_ms must be above 0");
    }

    let others = options.seeds.iter().filter(|seed| **seed != options.listen).count();
    let nodes = u8::try_from(others.saturating_add(1)).unwrap_or(u8::MAX);
    let defaults = ClusterOptions::default();
    let quorums = args.quorums;
    options.cluster = ClusterOptions {
        request_timeout: file
            .request_timeout_ms
            .map_or(defaults.request_timeout, Duration::from_millis),
        read_repair_wait: file
            .read_repair_wait_ms
            .map_or(defaults.read_repair_wait, Duration::from_millis),
        hint_after: file.hint_after_ms.map_or(defaults.hint_after, Duration::from_millis),
        detector: DetectorOptions {
            heartbeat_interval: file
                .heartbeat_interval_ms
                .map_or(defaults.detector.heartbeat_interval, Duration::from_millis),
            acceptable_pause: file
                .acceptable_pause_ms
                .map_or(defaults.detector.acceptable_pause, Duration::from_millis),
            threshold: file.phi_threshold.unwrap_or(defaults.detector.threshold),
            ..defaults.detector
        },
        handoff_keys_per_second: file
            .handoff_keys_per_second
            .unwrap_or(defaults.handoff_keys_per_second),
        transfer_keys_per_second: file
            .transfer_keys_per_second
            .unwrap_or(defaults.transfer_keys_per_second),
        anti_entropy_period: file
            .anti_entropy_period_ms
            .map_or(defaults.anti_entropy_period, Duration::from_millis),
        anti_entropy_keys_per_second: file
            .anti_entropy_keys_per_second
            .unwrap_or(defaults.anti_entropy_keys_per_second),
        anti_entropy_bytes_per_second: file
            .anti_entropy_bytes_per_second
            .unwrap_or(defaults.anti_entropy_bytes_per_second),
        tombstone_grace: file
            .tombstone_grace_ms
            .map_or(defaults.tombstone_grace, Duration::from_millis),
        ..ClusterOptions::fitted(
            nodes,
            quorums.n.or(file.n),
            quorums.r.or(file.r),
            quorums.w.or(file.w),
        )
    };
    options.cluster.validate().map_err(|error| anyhow!("invalid cluster settings: {error}"))?;
    if options.cluster.request_timeout.is_zero() {
        bail!("request_timeout_ms must be above 0");
    }
    if options.cluster.detector.heartbeat_interval.is_zero() {
        bail!("heartbeat_interval_ms must be above 0");
    }
    if options.cluster.detector.threshold.is_nan() || options.cluster.detector.threshold <= 0.0 {
        bail!("phi_threshold must be above 0");
    }
    let given = Given {
        n: quorums.n.or(file.n).is_some(),
        r: quorums.r.or(file.r).is_some(),
        w: quorums.w.or(file.w).is_some(),
    };
    Ok((options, given))
}

/// How long a joining node tries its seeds for the cluster's N, R and W.
const LEARN_QUORUMS_FOR: Duration = Duration::from_secs(30);

/// A joining node's N, R and W, where not given: the cluster's, from the
/// first seed that has a ring. (A node's own seed count says nothing about
/// the size of the cluster it joins.)
fn learn_quorums(options: &mut ServerOptions, given: Given) -> Result<()> {
    use holdfast_net::client::{Client, ClientOptions};
    let seeds: Vec<SocketAddr> =
        options.seeds.iter().copied().filter(|seed| *seed != options.listen).collect();
    let client_options = ClientOptions {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        pool_size: 1,
        route_by_ring: false,
        ..ClientOptions::default()
    };
    let deadline = std::time::Instant::now() + LEARN_QUORUMS_FOR;
    loop {
        for seed in &seeds {
            let info = Client::connect(&[*seed], client_options).and_then(|client| client.ring());
            match info {
                Ok(info) if info.ring.is_some() => {
                    let cluster = &mut options.cluster;
                    if !given.n {
                        cluster.n = info.n;
                    }
                    if !given.r {
                        cluster.r = info.r.min(cluster.n);
                    }
                    if !given.w {
                        cluster.w = info.w.min(cluster.n);
                    }
                    cluster
                        .validate()
                        .map_err(|error| anyhow!("invalid cluster settings: {error}"))?;
                    tracing::info!(
                        %seed,
                        n = cluster.n,
                        r = cluster.r,
                        w = cluster.w,
                        "learned the cluster's replication settings from a seed"
                    );
                    return Ok(());
                }
                Ok(_) => tracing::info!(%seed, "the seed has no ring yet"),
                Err(error) => tracing::info!(%seed, %error, "the seed does not answer yet"),
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "no seed answered with a ring within {LEARN_QUORUMS_FOR:?}: give n, r and w \
                 explicitly, or start a seed first"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn run(args: ServeArgs) -> Result<Outcome> {
    let (mut options, given) = options_and_given(&args)?;
    let restarting = options.data_dir.join("membership").exists();
    if options.join && !restarting && !(given.n && given.r && given.w) {
        learn_quorums(&mut options, given)?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .context("installing the signal handlers")?;
    }
    let report = server::run(options, shutdown).context("serving")?;
    tracing::info!(requests = report.requests, "node stopped");
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ServeArgs` as the command line gives them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn args(line: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(line.iter().copied())).unwrap().args
    }

    fn error(line: &[&str]) -> String {
        format!("{:#}", options(&args(line)).unwrap_err())
    }

    #[test]
    fn the_sample_config_parses_and_flags_override_it() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/holdfast.toml");
        let options = options(&args(&[
            "--config",
            sample,
            "--shards",
            "3",
            "--seeds",
            "10.0.0.7:7070,10.0.0.8:7070",
            "--r",
            "1",
            "--zone",
            "rack-9",
        ]))
        .unwrap();
        assert_eq!(options.data_dir, PathBuf::from("/var/lib/holdfast"));
        assert_eq!(options.shards, 3, "the flag wins");
        assert_eq!(options.store.sync, SyncPolicy::Always);
        assert_eq!(options.partitions, 1024);
        let seeds: Vec<SocketAddr> =
            vec!["10.0.0.7:7070".parse().unwrap(), "10.0.0.8:7070".parse().unwrap()];
        assert_eq!(options.seeds, seeds, "the flag wins");
        assert_eq!(options.zone, "rack-9", "the flag wins");
        assert_eq!(options.weight, 1);
        assert_eq!(
            options.cluster,
            ClusterOptions {
                n: 3,
                r: 1,
                w: 2,
                request_timeout: Duration::from_millis(2000),
                read_repair_wait: Duration::from_millis(50),
                ..ClusterOptions::default()
            }
        );
    }

    #[test]
    fn the_sample_config_alone_gives_its_own_settings() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/holdfast.toml");
        let options = options(&args(&["--config", sample])).unwrap();
        // A working one-node configuration as it stands.
        assert!(options.seeds.is_empty());
        assert_eq!(options.zone, "");
        assert_eq!((options.cluster.n, options.cluster.r, options.cluster.w), (1, 1, 1));
        assert!(options.pin);
        assert!(!options.join);
        assert_eq!(options.gossip_interval, Duration::from_secs(1));
        assert_eq!(options.cluster.transfer_keys_per_second, 20_000);
    }

    #[test]
    fn a_node_without_seeds_is_a_one_node_cluster() {
        let options = options(&args(&["--data-dir", "/tmp/x"])).unwrap();
        assert!(options.seeds.is_empty());
        assert_eq!((options.cluster.n, options.cluster.r, options.cluster.w), (1, 1, 1));
        assert_eq!(options.listen, SocketAddr::from(([127, 0, 0, 1], 7070)));
    }

    #[test]
    fn a_relative_data_directory_is_made_absolute() {
        let options = options(&args(&["--data-dir", "data/node-0"])).unwrap();
        assert_eq!(options.data_dir, std::env::current_dir().unwrap().join("data/node-0"));
    }

    #[test]
    fn defaults_fit_the_cluster_and_the_own_address_is_not_a_node() {
        // Two distinct others plus this node: N = 3. Its own address and a
        // repeated seed do not count.
        let line = [
            "--data-dir",
            "/tmp/x",
            "--listen",
            "127.0.0.1:7070",
            "--seeds",
            "127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7071",
        ];
        let three = options(&args(&line)).unwrap();
        assert_eq!(three.seeds.len(), 3, "the repeated seed is dropped");
        assert_eq!((three.cluster.n, three.cluster.r, three.cluster.w), (3, 2, 2));

        let line = ["--data-dir", "/tmp/x", "--listen", "127.0.0.1:7070"];
        let two = options(&args(&[&line[..], &["--seeds", "127.0.0.1:7071"]].concat())).unwrap();
        assert_eq!((two.cluster.n, two.cluster.r, two.cluster.w), (2, 2, 2));
        // An explicit N is kept, and R and W follow it down.
        let one = options(&args(&[&line[..], &["--seeds", "127.0.0.1:7071", "--n", "1"]].concat()))
            .unwrap();
        assert_eq!((one.cluster.n, one.cluster.r, one.cluster.w), (1, 1, 1));
    }

    #[test]
    fn impossible_quorums_and_a_zero_weight_are_refused() {
        let base = ["--data-dir", "/tmp/x"];
        let with = |extra: &[&str]| error(&[&base[..], extra].concat());
        assert!(with(&["--n", "0"]).contains("n (replicas per key) must be at least 1"));
        assert!(with(&["--n", "3", "--r", "4"]).contains("r must be in 1..=3, not 4"));
        // Without seeds N is 1, so W = 2 cannot be met.
        assert!(with(&["--w", "2"]).contains("w must be in 1..=1, not 2"));
        assert!(with(&["--n", "3", "--w", "0"]).contains("w must be in 1..=3, not 0"));
        assert!(with(&["--weight", "0"]).contains("weight must be at least 1"));
    }

    #[test]
    fn cluster_settings_come_from_the_file_and_zero_timeouts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let path_text = path.to_str().unwrap();
        std::fs::write(
            &path,
            concat!(
                "data_dir = \"/tmp/x\"\n",
                "seeds = [\"127.0.0.1:7071\", \"127.0.0.1:7072\"]\n",
                "n = 3\nr = 3\nw = 1\nweight = 4\nzone = \"eu-1a\"\n",
                "request_timeout_ms = 750\nread_repair_wait_ms = 0\n",
                "hint_after_ms = 300\nheartbeat_interval_ms = 250\n",
            ),
        )
        .unwrap();
        let from_file = options(&args(&["--config", path_text])).unwrap();
        assert_eq!(from_file.seeds.len(), 2);
        assert_eq!((from_file.weight, from_file.zone.as_str()), (4, "eu-1a"));
        assert_eq!(
            from_file.cluster,
            ClusterOptions {
                n: 3,
                r: 3,
                w: 1,
                request_timeout: Duration::from_millis(750),
                read_repair_wait: Duration::ZERO,
                hint_after: Duration::from_millis(300),
                detector: DetectorOptions {
                    heartbeat_interval: Duration::from_millis(250),
                    ..DetectorOptions::default()
                },
                ..ClusterOptions::default()
            }
        );
        // The flags win over the file.
        let overridden =
            options(&args(&["--config", path_text, "--weight", "2", "--w", "3"])).unwrap();
        assert_eq!((overridden.weight, overridden.cluster.w), (2, 3));

        std::fs::write(&path, "data_dir = \"/tmp/x\"\nrequest_timeout_ms = 0\n").unwrap();
        assert!(error(&["--config", path_text]).contains("request_timeout_ms must be above 0"));
    }

    #[test]
    fn join_and_membership_settings_come_from_the_file_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let path_text = path.to_str().unwrap();
        std::fs::write(
            &path,
            concat!(
                "data_dir = \"/tmp/x\"\nseeds = [\"127.0.0.1:7071\"]\n",
                "gossip_interval_ms = 250\ntransfer_keys_per_second = 500\n",
            ),
        )
        .unwrap();
        let from_file = options(&args(&["--config", path_text])).unwrap();
        assert!(!from_file.join);
        assert_eq!(from_file.gossip_interval, Duration::from_millis(250));
        assert_eq!(from_file.cluster.transfer_keys_per_second, 500);
        let (joining, given) =
            options_and_given(&args(&["--config", path_text, "--join"])).unwrap();
        assert!(joining.join);
        assert_eq!(given, Given::default(), "nothing given: learned from a seed at start");
        let (_, given) =
            options_and_given(&args(&["--config", path_text, "--join", "--n", "3"])).unwrap();
        assert_eq!(given, Given { n: true, r: false, w: false });
        assert!(error(&["--data-dir", "/tmp/x", "--join"]).contains("--join needs --seeds"));
        std::fs::write(&path, "data_dir = \"/tmp/x\"\ngossip_interval_ms = 0\n").unwrap();
        assert!(error(&["--config", path_text]).contains("gossip_interval_ms must be above 0"));
    }

    #[test]
    fn anti_entropy_settings_come_from_the_file() {
        let defaults = options(&args(&["--data-dir", "/tmp/x"])).unwrap().cluster;
        assert_eq!(defaults.anti_entropy_period, ClusterOptions::default().anti_entropy_period);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let path_text = path.to_str().unwrap();
        std::fs::write(
            &path,
            concat!(
                "data_dir = \"/tmp/x\"\nanti_entropy_period_ms = 0\n",
                "anti_entropy_keys_per_second = 100\nanti_entropy_bytes_per_second = 4096\n",
            ),
        )
        .unwrap();
        let cluster = options(&args(&["--config", path_text])).unwrap().cluster;
        assert_eq!(cluster.anti_entropy_period, Duration::ZERO, "zero: off");
        assert_eq!(cluster.anti_entropy_keys_per_second, 100);
        assert_eq!(cluster.anti_entropy_bytes_per_second, 4096);
        std::fs::write(&path, "data_dir = \"/tmp/x\"\nanti_entropy_keys_per_second = 0\n").unwrap();
        assert!(options(&args(&["--config", path_text])).is_err());
    }

    #[test]
    fn a_misspelled_setting_is_refused() {
        assert!(toml::from_str::<ConfigFile>("shard = 2").is_err());
        assert!(toml::from_str::<ConfigFile>("seed = [\"127.0.0.1:7071\"]").is_err());
    }

    #[test]
    fn a_node_id_comes_from_the_flag_or_the_file_in_status_hex() {
        let base = ["--data-dir", "/tmp/x"];
        assert_eq!(options(&args(&base)).unwrap().node_id, None);
        let given = options(&args(&[&base[..], &["--node-id", "00000000000000ab"]].concat()));
        assert_eq!(given.unwrap().node_id, Some(0xab));
        let given = options(&args(&[&base[..], &["--node-id", "0xffffffffffffffff"]].concat()));
        assert_eq!(given.unwrap().node_id, Some(u64::MAX));
        for bad in ["0", "xyz", "1ffffffffffffffff"] {
            let line = [&base[..], &["--node-id", bad]].concat();
            let parsed = Cli::try_parse_from(std::iter::once("serve").chain(line.iter().copied()));
            assert!(parsed.is_err(), "{bad}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let path_text = path.to_str().unwrap();
        std::fs::write(&path, "data_dir = \"/tmp/x\"\nnode_id = \"00000000000000cd\"\n").unwrap();
        assert_eq!(options(&args(&["--config", path_text])).unwrap().node_id, Some(0xcd));
        let overridden = options(&args(&["--config", path_text, "--node-id", "ef"])).unwrap();
        assert_eq!(overridden.node_id, Some(0xef), "the flag wins");
        std::fs::write(&path, "data_dir = \"/tmp/x\"\nnode_id = \"nope\"\n").unwrap();
        assert!(error(&["--config", path_text]).contains("node_id"));
    }
}
