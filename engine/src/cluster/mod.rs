//! The cluster core: the pure, deterministic protocol logic of a node.
//!
//! Everything here is sans-IO: state machines that take events (a client
//! request, a peer's reply, a timer, a local store completion) and return
//! actions (send this, store that, reply, set a timer). Nothing here reads
//! a clock, opens a socket or touches a file; time and randomness are
//! inputs. The glommio runtime (`server`) drives it over TCP and the
//! io_uring store; the simulator (`sim`) drives the very same code over a
//! seeded, faulty network and disk.

use std::time::Duration;

pub use detector::{Detector, DetectorOptions};

pub mod coordinator;
pub mod detector;
pub mod gossip;
pub mod history;
pub mod merkle;
pub mod sim;

/// How many replicas a key has and how many must answer, cluster-wide.
/// Requests may override R and W (never above N).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterOptions {
    /// Replicas per key (N).
    pub n: u8,
    /// Replicas that must answer a read (R).
    pub r: u8,
    /// Replicas that must acknowledge a write, durably (W).
    pub w: u8,
    /// How long a coordinator waits for R or W answers before it answers
    /// the client with a timeout.
    pub request_timeout: Duration,
    /// After a read has its R answers, how long the coordinator waits for
    /// the rest before repairing the stale replicas it heard from.
    pub read_repair_wait: Duration,
    /// How long a coordinator waits for a replica before it also sends the
    /// request to a fallback node (sloppy quorum): a replica that is slow
    /// or silent is stood in for without waiting for the detector.
    pub hint_after: Duration,
    /// How peers are judged down (heartbeats and phi-accrual).
    pub detector: DetectorOptions,
    /// How often a node looks for hints to deliver.
    pub handoff_interval: Duration,
    /// Hint deliveries in flight at once, per shard.
    pub handoff_in_flight: usize,
    /// Hints delivered per second at most, per shard.
    pub handoff_keys_per_second: u32,
    /// Keys pulled (for partitions gained in a membership change) and
    /// handed off (for partitions lost) per second at most, per shard.
    pub transfer_keys_per_second: u32,
    /// Anti-entropy: every (partition, replica peer) pair of a node is
    /// compared once per period (the exchanges are spread evenly over it);
    /// zero switches anti-entropy off.
    pub anti_entropy_period: Duration,
    /// Anti-entropy's budget per shard: keys listed, fetched and sent per
    /// second at most...
    pub anti_entropy_keys_per_second: u32,
    /// ...and bytes of sets fetched and sent per second at most.
    pub anti_entropy_bytes_per_second: u64,
    /// How long a partition's first replica holds a tombstone unchanged
    /// before it reaps it (once every replica holds it): longer than a
    /// fallback holding an old value may stay down.
    pub tombstone_grace: Duration,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            n: 3,
            r: 2,
            w: 2,
            request_timeout: Duration::from_secs(2),
            read_repair_wait: Duration::from_millis(50),
            hint_after: Duration::from_millis(500),
            detector: DetectorOptions::default(),
            handoff_interval: Duration::from_secs(1),
            handoff_in_flight: 8,
            handoff_keys_per_second: 2_000,
            transfer_keys_per_second: 20_000,
            anti_entropy_period: Duration::from_secs(10),
            anti_entropy_keys_per_second: 20_000,
            anti_entropy_bytes_per_second: 16 << 20,
            tombstone_grace: Duration::from_secs(3600),
        }
    }
}

impl ClusterOptions {
    /// The options for a cluster of `nodes` nodes: N, R and W as given, and
    /// for those not given the defaults lowered to fit (N at most the node
    /// count, R and W at most N), so a one-node cluster runs with N = R =
    /// W = 1 unasked. Given values are kept as they are, for `validate`.
    pub fn fitted(nodes: u8, n: Option<u8>, r: Option<u8>, w: Option<u8>) -> ClusterOptions {
        let defaults = ClusterOptions::default();
        let n = n.unwrap_or(defaults.n.min(nodes.max(1)));
        ClusterOptions {
            n,
            r: r.unwrap_or(defaults.r.min(n)),
            w: w.unwrap_or(defaults.w.min(n)),
            ..defaults
        }
    }

    /// Checks `1 <= R, W <= N`.
    pub fn validate(&self) -> Result<(), String> {
        if self.n == 0 {
            return Err("n (replicas per key) must be at least 1".into());
        }
        for (name, value) in [("r", self.r), ("w", self.w)] {
            if value == 0 || value > self.n {
                return Err(format!("{name} must be in 1..={}, not {value}", self.n));
            }
        }
        if self.handoff_in_flight == 0 || self.handoff_keys_per_second == 0 {
            return Err("hint delivery needs at least one key in flight and per second".into());
        }
        if self.transfer_keys_per_second == 0 {
            return Err("transfers need at least one key per second".into());
        }
        if self.anti_entropy_keys_per_second == 0 || self.anti_entropy_bytes_per_second == 0 {
            return Err("anti-entropy needs a budget of at least one key and byte per second \
                        (switch it off with a zero period instead)"
                .into());
        }
        Ok(())
    }
}
