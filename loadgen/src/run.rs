//! The driver: one glommio executor, every connection a task on it, each
//! task moving bytes between its socket and its [`ConnectionCore`].
//!
//! Architecture invariant: this is the only module (with [`crate::ping`])
//! that touches sockets, clocks or the executor; everything it decides
//! comes from the sans-IO core. A connection task never spins: each turn it
//! reads until the socket would block, lets the core issue what is due,
//! writes until the socket would block or nothing is left, arms a timer for
//! the core's next deadline, and sleeps until one of the three fires.
//! Replies are timestamped when the bytes holding them are read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

#[cfg(doc)]
use crate::connection::ContextCache;
use crate::connection::{ConnectionCore, ConnectionOptions, SharedContexts, Status};
use crate::distribution::{DistributionKind, KeyChooser};
use crate::keys::KeyOrder;
use crate::pacer::{Pace, PacerLimits};
use crate::ping::{self, PingStats};
use crate::protocol::holdfast::Holdfast;
use crate::protocol::resp::Resp;
use crate::protocol::{Protocol, TargetKind};
use crate::stats::{PhaseStats, SharedStats};
use crate::workload::{OpSource, Workload};

/// Memory each executor registers with io_uring. The load generator does
/// no file I/O and its sockets do not use glommio's buffers, so the
/// minimum will do.
pub(crate) const IO_MEMORY_BYTES: usize = 64 * 1024;

/// Loop turns one connection task takes per wake-up before yielding to
/// the others (each turn reads, issues and writes a batch).
const TURNS_PER_POLL: usize = 16;

/// How long to wait for a connection to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a run needs (the command line, checked).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the target listens (`host:port`).
    pub addr: String,
    /// Which protocol it speaks.
    pub target: TargetKind,
    /// The operation mix of the run.
    pub workload: Workload,
    /// Records loaded, and the key space of the run.
    pub records: u64,
    /// Bytes per value written.
    pub value_bytes: usize,
    /// Which records the run touches.
    pub distribution: DistributionKind,
    /// How record numbers become keys.
    pub key_order: KeyOrder,
    /// How long the run sends (the load phase takes what it takes).
    pub duration: Duration,
    /// How long to run the workload unmeasured first, on the same
    /// connections (zero for none).
    pub warmup: Duration,
    /// Open loop at this many operations per second over all connections;
    /// `None` is a closed loop.
    pub rate: Option<u64>,
    /// TCP connections, all on the one executor.
    pub connections: u32,
    /// Operations in flight per connection.
    pub pipeline: u32,
    /// Pin the executor to this CPU.
    pub cpu: Option<usize>,
    /// Skip the load phase (the records are already there).
    pub skip_load: bool,
    /// Operations in flight with no reply for this long time out.
    pub reply_timeout: Duration,
    /// Seeds the run's randomness (connection `i` uses `seed + i`).
    pub seed: u64,
    /// Send inserts and updates without a causal context (Dynamo's blind
    /// write, which adds a sibling); by default they carry the latest
    /// context seen for the record (see [`ContextCache`]).
    pub blind_updates: bool,
    /// Measure a loopback ping-pong for this long before the load, as the
    /// noise floor of the same run.
    pub ping: Option<Duration>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was run.
    pub config: Config,
    /// The loopback noise floor, if asked for.
    pub ping: Option<PingStats>,
    /// The load phase, unless skipped.
    pub load: Option<PhaseStats>,
    /// The run.
    pub run: PhaseStats,
}

/// Why a run could not be carried out (failures of single operations are
/// measurements, not errors: they are in the report).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    /// glommio cannot start without enough locked memory.
    #[error("cannot raise the locked-memory limit glommio needs: {0}")]
    Memlock(io::Error),
    /// The executor would not start (a bad CPU number, io_uring missing).
    #[error("cannot start the executor: {0}")]
    Executor(String),
    /// A connection could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The ping-pong's echo server or client failed.
    #[error("ping-pong: {0}")]
    Ping(io::Error),
}

/// A monotonic clock in nanoseconds since the run began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self { origin: Instant::now() }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Starts the executor on this thread (pinned if asked), then measures:
/// the ping-pong if asked, the load phase unless skipped, and the run.
/// Blocks until done.
pub fn run(config: &Config) -> Result<Report, RunError> {
    crate::memlock::raise_memlock_limit().map_err(RunError::Memlock)?;
    let executor = executor_builder(config.cpu, "loadgen")
        .make()
        .map_err(|error| RunError::Executor(error.to_string()))?;
    let config = config.clone();
    executor.run(async move {
        let clock = Clock::new();
        let ping = match config.ping {
            Some(duration) => Some(ping::measure(duration, config.cpu).await?),
            None => None,
        };
        let depth = config.pipeline;
        let (load, run) = match config.target {
            TargetKind::Redis => phases(&config, clock, Resp::new).await?,
            TargetKind::Holdfast => phases(&config, clock, || Holdfast::new(depth)).await?,
        };
        Ok(Report { config, ping, load, run })
    })
}

/// Only the ping-pong (`--ping`): the noise floor on its own.
pub fn run_ping(duration: Duration, cpu: Option<usize>) -> Result<PingStats, RunError> {
    crate::memlock::raise_memlock_limit().map_err(RunError::Memlock)?;
    let executor = executor_builder(cpu, "loadgen")
        .make()
        .map_err(|error| RunError::Executor(error.to_string()))?;
    executor.run(ping::measure(duration, cpu))
}

impl Report {
    /// The whole report as one JSON object (latencies in microseconds).
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "target": c.target.name(),
            "addr": c.addr,
            "workload": c.workload.name(),
            "distribution": c.distribution.name(),
            "records": c.records,
            "value_size": c.value_bytes,
            "connections": c.connections,
            "pipeline": c.pipeline,
            "mode": if c.rate.is_some() { "open" } else { "closed" },
            "rate": c.rate,
            "duration_s": c.duration.as_secs_f64(),
            "warmup_s": c.warmup.as_secs_f64(),
            "cpu": c.cpu,
            "blind_updates": c.blind_updates,
            "ping": self.ping.as_ref().map(PingStats::to_json),
            "load": self.load.as_ref().map(PhaseStats::to_json),
            "run": self.run.to_json(),
        })
    }

    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mode = match c.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_owned(),
        };
        let mut out = format!(
            "{} at {}: workload {}, {}, {} records of {} B, {} connections x {} in flight, \
             {mode}, {:.1} s\n",
            c.target.name(),
            c.addr,
            c.workload.name(),
            c.distribution.name(),
            c.records,
            c.value_bytes,
            c.connections,
            c.pipeline,
            c.duration.as_secs_f64(),
        );
        out.push_str(&crate::stats::table_header());
        if let Some(ping) = &self.ping {
            ping.write_rows(&mut out);
        }
        if let Some(load) = &self.load {
            load.write_rows("load", &mut out);
        }
        self.run.write_rows("run", &mut out);
        out
    }
}

/// An executor builder for the load generator's needs.
pub(crate) fn executor_builder(cpu: Option<usize>, name: &str) -> LocalExecutorBuilder {
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    LocalExecutorBuilder::new(placement)
        .name(name)
        .io_memory(IO_MEMORY_BYTES)
        // There is one task queue, so preemption buys nothing, and glommio
        // arms an io_uring timeout for it on every loop turn; a long
        // preempt timer keeps that off the measurement path as far as
        // glommio allows.
        .preempt_timer(Duration::from_secs(1))
}

/// The phases of a run, in order, all on the same connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Insert every record, closed loop.
    Load,
    /// The workload, unmeasured, so that the measurement starts warm.
    Warmup,
    /// The workload for the configured duration.
    Run,
}

/// The load (unless skipped), the warm-up (if any) and the measured run,
/// on one set of connections; a connection that ended a phase broken is
/// replaced before the next.
async fn phases<P: Protocol + 'static>(
    config: &Config,
    clock: Clock,
    new_protocol: impl Fn() -> P,
) -> Result<(Option<PhaseStats>, PhaseStats), RunError> {
    let contexts = (!config.blind_updates).then(SharedContexts::default);
    let mut streams = Vec::new();
    let mut load = None;
    if !config.skip_load {
        let (stats, kept) =
            phase(config, clock, Phase::Load, streams, &new_protocol, contexts.as_ref()).await?;
        (load, streams) = (Some(stats), kept);
    }
    if !config.warmup.is_zero() {
        (_, streams) =
            phase(config, clock, Phase::Warmup, streams, &new_protocol, contexts.as_ref()).await?;
    }
    let (run, _) =
        phase(config, clock, Phase::Run, streams, &new_protocol, contexts.as_ref()).await?;
    Ok((load, run))
}

/// Runs one phase on `config.connections` connections (`streams`, topped
/// up with new ones), recording into one set of stats; returns the stats and
/// the connections that ended the phase cleanly.
async fn phase<P: Protocol + 'static>(
    config: &Config,
    clock: Clock,
    phase: Phase,
    mut streams: Vec<TcpStream>,
    new_protocol: &impl Fn() -> P,
    contexts: Option<&SharedContexts>,
) -> Result<(PhaseStats, Vec<TcpStream>), RunError> {
    let missing = (config.connections as usize).saturating_sub(streams.len());
    // A cluster's nodes, comma-separated: connections are spread over
    // them round-robin (each node coordinates what it is a replica of and
    // forwards the rest).
    let addrs: Vec<&str> = config.addr.split(',').map(str::trim).collect();
    let first = streams.len();
    let connects = (0..missing).map(|index| connect(addrs[(first + index) % addrs.len()]));
    streams.extend(futures::future::try_join_all(connects).await?);
    // Built once: the latest distribution sums `records` terms.
    let chooser = KeyChooser::new(config.distribution, config.records);
    let connections = u64::from(config.connections);
    let start_ns = clock.now_ns();
    let reply_timeout_ns = u64::try_from(config.reply_timeout.as_nanos()).unwrap_or(u64::MAX);
    let (end_ns, stop_ns) = match phase {
        // The load has no time limit: it ends when every record is in, or
        // when the target stops answering.
        Phase::Load => (u64::MAX, u64::MAX),
        Phase::Warmup | Phase::Run => {
            let duration = if phase == Phase::Run { config.duration } else { config.warmup };
            let end_ns = start_ns + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            (end_ns, end_ns.saturating_add(reply_timeout_ns))
        }
    };
    let limits =
        PacerLimits { start_ns, end_ns, stop_ns, ops_max: u64::MAX, depth: config.pipeline };
    let stats = SharedStats::new(PhaseStats::new(start_ns).into());
    let mut tasks = Vec::with_capacity(streams.len());
    for (index, stream) in (0..connections).zip(streams) {
        let seed = config.seed.wrapping_add(index);
        let (source, pace) = match phase {
            Phase::Load => (OpSource::load(config.records, index, connections), Pace::Closed),
            Phase::Warmup | Phase::Run => {
                // The warm-up draws from other seeds than the run.
                let seed = if phase == Phase::Run { seed } else { !seed };
                let source = OpSource::run(config.workload, chooser.clone(), seed);
                let pace = match config.rate {
                    Some(rate) => Pace::Open { rate, connections, index },
                    None => Pace::Closed,
                };
                (source, pace)
            }
        };
        let options = ConnectionOptions {
            key_order: config.key_order,
            value_bytes: config.value_bytes,
            seed,
            reply_timeout_ns,
        };
        let mut core = ConnectionCore::new(new_protocol(), source, pace, limits, options)
            .with_shared_stats(stats.clone());
        if let Some(contexts) = contexts {
            core = core.with_contexts(contexts.clone());
        }
        tasks.push(glommio::spawn_local(drive(stream, core, clock)));
    }
    let kept = futures::future::join_all(tasks).await.into_iter().flatten().collect();
    let stats = stats.borrow().clone();
    Ok((stats, kept))
}

async fn connect(addr: &str) -> Result<TcpStream, RunError> {
    let connect_error = |source: io::Error| RunError::Connect { addr: addr.to_owned(), source };
    let stream = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
        .await
        .map_err(|error| connect_error(error.into()))?;
    // Requests go out as soon as they are written; batching is ours to do.
    stream.set_nodelay(true).map_err(|error| connect_error(error.into()))?;
    Ok(stream)
}

/// Runs one connection to the end of its phase (it records into the
/// phase's shared stats); returns the connection if it can serve the next
/// phase (every reply received, none pending or garbled).
async fn drive<P: Protocol>(
    mut stream: TcpStream,
    mut core: ConnectionCore<P>,
    clock: Clock,
) -> Option<TcpStream> {
    let mut timer = None;
    futures::future::poll_fn(|cx| poll_connection(cx, &mut stream, &mut core, clock, &mut timer))
        .await;
    core.ended_cleanly().then_some(stream)
}

/// One wake-up of a connection task; see the module doc. `timer` is the
/// armed timer and its deadline.
fn poll_connection<P: Protocol>(
    cx: &mut Context<'_>,
    stream: &mut TcpStream,
    core: &mut ConnectionCore<P>,
    clock: Clock,
    timer: &mut Option<(u64, Timer)>,
) -> Poll<()> {
    for _ in 0..TURNS_PER_POLL {
        // Replies: read until the socket would block (which registers the
        // wake-up for the next ones).
        loop {
            let buffer = core.recv_buffer();
            match Pin::new(&mut *stream).poll_read(cx, buffer) {
                Poll::Ready(Ok(0)) => {
                    core.fail(clock.now_ns(), "closed by the target");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => {
                    if core.on_received(clock.now_ns(), n).is_err() {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Err(error)) => {
                    core.fail(clock.now_ns(), &error.to_string());
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        // Requests: whatever is due now, written in one batch.
        let now_ns = clock.now_ns();
        let status = core.poll(now_ns);
        while !core.tx().is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, core.tx()) {
                Poll::Ready(Ok(0)) => {
                    core.fail(clock.now_ns(), "the socket accepts no more bytes");
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => core.on_sent(n),
                Poll::Ready(Err(error)) => {
                    core.fail(clock.now_ns(), &error.to_string());
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }
        let Status::Active { wake_at } = status else {
            return Poll::Ready(());
        };
        if wake_at <= now_ns {
            continue;
        }
        // The next deadline: reuse the armed timer if it is the same one.
        if timer.as_ref().is_none_or(|(at, _)| *at != wake_at) {
            *timer = Some((wake_at, Timer::new(Duration::from_nanos(wake_at - now_ns))));
        }
        let Some((_, armed)) = timer.as_mut() else {
            unreachable!("armed just above");
        };
        if Pin::new(armed).poll(cx).is_pending() {
            // Socket reads, writes (if any are left) and the timer are all
            // registered: sleep until one of them wakes this task.
            return Poll::Pending;
        }
        *timer = None;
    }
    // Many turns in a row had work: let the other connections run.
    cx.waker().wake_by_ref();
    Poll::Pending
}
