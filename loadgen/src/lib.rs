//! holdfast-loadgen: the load generator holdfast is measured with, and the
//! same measurement against Redis for a side-by-side comparison.
//!
//! It loads `--records` records, then runs a YCSB core workload (A, B, C
//! or F) for `--duration` with keys drawn uniformly, from YCSB's scrambled
//! zipfian (theta 0.99) or skewed to the latest records. Without `--rate`
//! it is a closed loop: each connection keeps `--pipeline` requests in
//! flight as fast as replies come back, which finds the peak throughput.
//! With `--rate` it is an open loop: requests are sent on a fixed schedule
//! whatever the latency, and each latency is counted from the request's
//! *intended* send time, so a stall's queueing shows in the percentiles
//! instead of being omitted ("coordinated omission"). It reports, per
//! operation kind (insert, read, update, rmw), the count, errors,
//! throughput and p50/p90/p99/p99.9/max from an hdrhistogram, as a table
//! or as one JSON object.
//!
//! Targets: `--target holdfast` speaks holdfast's binary protocol through
//! holdfast-net's own sans-IO client core (so it frames, validates and
//! matches replies exactly as applications do); a read-modify-write is a
//! get, then a put carrying the context the get returned, and an update
//! carries the latest context any connection saw for its key
//! ([`connection::ContextCache`]) so that it replaces the value, as Redis's
//! SET does, instead of adding a sibling (`--blind-updates` sends none).
//! `--target redis` speaks RESP2 (GET, SET) with the same workload and the
//! same measurement, for a side-by-side comparison on one machine.
//!
//! Open-loop runs add a `sendlag` row: how late requests left against
//! their schedule (waiting for a free slot, or for the load generator's own
//! timer). `--with-ping` measures a loopback ping-pong first, the noise
//! floor to quote with the run; `--ping` measures only that.
//!
//! ```text
//! # peak throughput, then latency at half of it, Redis pinned to CPU 0:
//! taskset -c 0 redis-server --port 6379 --save '' --appendonly no &
//! holdfast-loadgen --target redis --addr 127.0.0.1:6379 --workload c \
//!     --records 100000 --value-size 256 --connections 50 --duration 10s --cpu 1
//! holdfast-loadgen --target redis --addr 127.0.0.1:6379 --workload c \
//!     --records 100000 --value-size 256 --connections 50 --duration 10s --cpu 1 \
//!     --skip-load --rate 50000 --with-ping 3s --json
//! # the machine's noise floor alone: loopback TCP ping-pong
//! holdfast-loadgen --ping --duration 5s --cpu 1
//! ```
//!
//! What it is not: a correctness checker (it counts error replies and
//! missing records but does not verify values), or a multi-process driver
//! (one executor on one core; run several for more load).
//!
//! Shape: everything that decides is sans-IO and tested in virtual time:
//! [`workload`] and [`distribution`] pick operations, [`pacer`] says when
//! to send them, [`protocol`] turns them into bytes and bytes into
//! replies, and [`connection`] ties those together per connection and
//! records [`stats`]. [`mod@run`] is the only driver: one glommio executor
//! (pinned with `--cpu`), every connection a task on it, woken by its
//! socket or its next deadline and never spinning. [`ping`] measures the
//! loopback noise floor.
//!
//! Limits: [`cli::CONNECTIONS_MAX`] connections, [`cli::PIPELINE_MAX`]
//! requests in flight per connection, [`cli::VALUE_BYTES_MAX`] per value;
//! latencies above [`stats::LATENCY_NS_MAX`] are recorded as that.

pub mod cli;
pub mod connection;
pub mod distribution;
pub mod keys;
mod memlock;
pub mod pacer;
pub mod ping;
pub mod protocol;
pub mod run;
pub mod stats;
pub mod workload;

pub use run::{Config, Report, RunError, run, run_ping};
