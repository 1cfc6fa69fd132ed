//! `holdfast serve`: runs one node until SIGTERM or SIGINT.
//!
//! Settings come from `--config FILE` (TOML) and then the command line,
//! which wins. A sample file with every setting is `bin/deploy/holdfast.toml`
//! (with a systemd unit beside it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::Args;
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
    compaction_bytes_per_second: Option<u64>,
}

/// The options a node runs with, from the file and then the flags.
pub fn options(args: &ServeArgs) -> Result<ServerOptions> {
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
    options.pin = file.pin.unwrap_or(options.pin);
    options.compaction_bytes_per_second =
        file.compaction_bytes_per_second.unwrap_or(options.compaction_bytes_per_second);
    if options.compaction_bytes_per_second == 0 {
        bail!("compaction_bytes_per_second must be above 0");
    }
    Ok(options)
}

pub fn run(args: ServeArgs) -> Result<Outcome> {
    let options = options(&args)?;
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

    #[test]
    fn the_sample_config_parses_and_flags_override_it() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/holdfast.toml");
        let args = ServeArgs {
            config: Some(sample.into()),
            data_dir: None,
            listen: None,
            shards: Some(3),
            fsync: None,
        };
        let options = options(&args).unwrap();
        assert_eq!(options.data_dir, PathBuf::from("/var/lib/holdfast"));
        assert_eq!(options.shards, 3, "the flag wins");
        assert_eq!(options.store.sync, SyncPolicy::Always);
        assert_eq!(options.partitions, 1024);
    }

    #[test]
    fn a_misspelled_setting_is_refused() {
        assert!(toml::from_str::<ConfigFile>("shard = 2").is_err());
    }
}
