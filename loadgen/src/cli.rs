//! The command line: parsing, defaults and limits, turned into a
//! [`Config`].

use std::time::Duration;

use clap::Parser;

use crate::distribution::DistributionKind;
use crate::keys::KeyOrder;
use crate::protocol::TargetKind;
use crate::run::Config;
use crate::workload::Workload;

/// The most connections one executor drives.
pub const CONNECTIONS_MAX: u32 = 10_000;
/// The most operations in flight per connection.
pub const PIPELINE_MAX: u32 = 4096;
/// The largest value written.
pub const VALUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// holdfast-loadgen: YCSB-style load against holdfast or Redis, open or
/// closed loop, with per-operation latency percentiles.
#[derive(Debug, Parser)]
#[command(name = "holdfast-loadgen", version, about, long_about = None)]
pub struct Cli {
    /// The target's address, host:port; for a cluster, several separated by
    /// commas, over which the connections are spread round-robin.
    #[arg(long, required_unless_present = "ping")]
    pub addr: Option<String>,
    /// The target's protocol.
    #[arg(long, value_enum, default_value_t = TargetKind::Holdfast)]
    pub target: TargetKind,
    /// YCSB workload: a (50% read, 50% update), b (95/5), c (read only),
    /// f (50% read, 50% read-modify-write).
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Records loaded before the run, and the run's key space.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,
    /// Bytes per value.
    #[arg(long = "value-size", default_value_t = 256)]
    pub value_size: usize,
    /// Which records the run touches.
    #[arg(long, value_enum, default_value_t = DistributionKind::Zipfian)]
    pub distribution: DistributionKind,
    /// Key names: hashed (YCSB's default) or ordered.
    #[arg(long, value_enum, default_value_t = KeyOrder::Hashed)]
    pub key_order: KeyOrder,
    /// How long the run lasts: 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Run the workload unmeasured for this long first (new connections,
    /// a cold server and a cold load generator are not what is measured).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop at this many operations per second (over all
    /// connections), latency counted from each intended send time; without
    /// it, closed loop at full speed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// TCP connections.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: u32,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the load phase (the records are already there).
    #[arg(long)]
    pub skip_load: bool,
    /// Give up on requests with no reply for this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Seed of the workload's randomness.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// holdfast: send updates without a causal context (Dynamo's blind
    /// write: each adds a sibling unless the node resolves conflicts). By
    /// default an update carries the latest context any connection saw
    /// for the key, so it replaces the value as Redis's SET does.
    #[arg(long)]
    pub blind_updates: bool,
    /// Only measure a loopback TCP ping-pong (the noise floor) for
    /// --duration, against a built-in echo server on the next CPU.
    #[arg(long)]
    pub ping: bool,
    /// Measure the ping-pong for this long before the load and report it
    /// with the run.
    #[arg(long, value_parser = parse_duration)]
    pub with_ping: Option<Duration>,
}

impl Cli {
    /// Checks the limits and builds the run's configuration (not used by
    /// `--ping`).
    pub fn config(&self) -> Result<Config, String> {
        let addr = self.addr.clone().ok_or("--addr is required")?;
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(format!("--connections must be 1..={CONNECTIONS_MAX}"));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return Err(format!("--pipeline must be 1..={PIPELINE_MAX}"));
        }
        if self.value_size > VALUE_BYTES_MAX {
            return Err(format!("--value-size must be at most {VALUE_BYTES_MAX}"));
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return Err("--duration and --timeout must be positive".to_owned());
        }
        Ok(Config {
            addr,
            target: self.target,
            workload: self.workload,
            records: self.records,
            value_bytes: self.value_size,
            distribution: self.distribution,
            key_order: self.key_order,
            duration: self.duration,
            warmup: self.warmup,
            rate: self.rate,
            connections: self.connections,
            pipeline: self.pipeline,
            cpu: self.cpu,
            skip_load: self.skip_load,
            reply_timeout: self.timeout,
            seed: self.seed,
            blind_updates: self.blind_updates,
            ping: self.with_ping,
        })
    }
}

/// Parses `10s`, `500ms`, `250us`, `2m`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?}"))?;
    let seconds_per_unit = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (use ns, us, ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_issue_command_line_parses() {
        let cli = Cli::try_parse_from([
            "holdfast-loadgen",
            "--addr",
            "127.0.0.1:6379",
            "--target",
            "redis",
            "--workload",
            "c",
            "--records",
            "100000",
            "--value-size",
            "256",
            "--connections",
            "50",
            "--duration",
            "10s",
            "--rate",
            "50000",
            "--pipeline",
            "4",
            "--cpu",
            "1",
            "--json",
        ])
        .unwrap();
        let config = cli.config().unwrap();
        assert_eq!(
            (config.target, config.workload, config.rate),
            (TargetKind::Redis, Workload::C, Some(50_000))
        );
        assert_eq!((config.connections, config.pipeline, config.cpu), (50, 4, Some(1)));
        assert!(Cli::try_parse_from(["holdfast-loadgen", "--ping"]).is_ok());
        assert!(Cli::try_parse_from(["holdfast-loadgen"]).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let cli =
            Cli::try_parse_from(["holdfast-loadgen", "--addr", "x:1", "--pipeline", "0"]).unwrap();
        assert!(cli.config().is_err());
    }
}
