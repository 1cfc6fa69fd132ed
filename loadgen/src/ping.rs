//! The machine's noise floor: a loopback TCP ping-pong between this
//! executor and an echo server on another executor (pinned to the next CPU
//! when the load generator is pinned), one 64-byte message at a time.
//!
//! On a VM its p99.9 is often well above its p50 (scheduler and hypervisor
//! hiccups); any latency a target shows at or below it is the machine's,
//! not the target's. Quote it from the same run as the measurement.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};

use crate::run::{Clock, RunError, executor_builder};
use crate::stats::{format_ns, latency_histogram};

/// Bytes in each ping.
pub const MESSAGE_BYTES: usize = 64;
/// Round trips before measuring (connection warm-up).
const WARM_UP_ROUND_TRIPS: usize = 100;
/// How long to wait for the echo server to listen.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Round-trip times of the ping-pong.
#[derive(Debug, Clone)]
pub struct PingStats {
    /// Round trips in nanoseconds.
    pub rtt_ns: Histogram<u64>,
    /// Where the echo server ran.
    pub server_cpu: Option<usize>,
}

impl PingStats {
    /// As JSON, in microseconds.
    pub fn to_json(&self) -> Json {
        let h = &self.rtt_ns;
        let us = |ns: u64| ns as f64 / 1e3;
        json!({
            "count": h.len(),
            "message_bytes": MESSAGE_BYTES,
            "server_cpu": self.server_cpu,
            "p50_us": us(h.value_at_quantile(0.5)),
            "p90_us": us(h.value_at_quantile(0.9)),
            "p99_us": us(h.value_at_quantile(0.99)),
            "p999_us": us(h.value_at_quantile(0.999)),
            "max_us": us(h.max()),
        })
    }

    /// Appends a row to a table (see [`crate::stats::table_header`]).
    pub fn write_rows(&self, out: &mut String) {
        let h = &self.rtt_ns;
        let _ = writeln!(
            out,
            "{:<6} {:<7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ping",
            "rtt",
            h.len(),
            0,
            "-",
            format_ns(h.value_at_quantile(0.5)),
            format_ns(h.value_at_quantile(0.9)),
            format_ns(h.value_at_quantile(0.99)),
            format_ns(h.value_at_quantile(0.999)),
            format_ns(h.max()),
        );
    }
}

/// The CPU the echo server uses when the client is pinned to `cpu`.
fn other_cpu(cpu: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpu + 1) % cpus
}

/// Starts the echo server, ping-pongs for `duration`, and stops it. Must
/// run on a glommio executor (the client is a task on it).
pub async fn measure(duration: Duration, client_cpu: Option<usize>) -> Result<PingStats, RunError> {
    let server_cpu = client_cpu.map(other_cpu);
    let (addr_tx, addr_rx) = mpsc::channel();
    // The server thread exits by itself when the client hangs up; nothing
    // needs to wait for it.
    let _server = executor_builder(server_cpu, "loadgen-echo")
        .spawn(move || async move {
            let listener =
                match TcpListener::bind("127.0.0.1:0").and_then(|l| Ok((l.local_addr()?, l))) {
                    Ok((addr, listener)) => {
                        let _ = addr_tx.send(Ok(addr));
                        listener
                    }
                    Err(error) => {
                        let _ = addr_tx.send(Err(std::io::Error::from(error)));
                        return;
                    }
                };
            if let Ok(stream) = listener.accept().await {
                let _ = echo(stream).await;
            }
        })
        .map_err(|error| RunError::Ping(error.into()))?;
    let addr = wait_for_addr(&addr_rx).await?;
    ping_pong(addr, duration)
        .await
        .map(|rtt_ns| PingStats { rtt_ns, server_cpu })
        .map_err(RunError::Ping)
}

/// Polls for the server's address without blocking the executor.
async fn wait_for_addr(
    addr_rx: &mpsc::Receiver<std::io::Result<SocketAddr>>,
) -> Result<SocketAddr, RunError> {
    let clock = Clock::new();
    loop {
        match addr_rx.try_recv() {
            Ok(result) => return result.map_err(RunError::Ping),
            Err(mpsc::TryRecvError::Empty)
                if clock.now_ns() < SERVER_START_TIMEOUT.as_nanos() as u64 =>
            {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                let error = std::io::Error::other("the echo server did not start");
                return Err(RunError::Ping(error));
            }
        }
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..n]).await?;
    }
}

async fn ping_pong(addr: SocketAddr, duration: Duration) -> std::io::Result<Histogram<u64>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let message = [0x5a_u8; MESSAGE_BYTES];
    let mut reply = [0u8; MESSAGE_BYTES];
    let mut rtt_ns = latency_histogram();
    let clock = Clock::new();
    let end_ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let mut round_trips = 0usize;
    loop {
        let sent_ns = clock.now_ns();
        if sent_ns >= end_ns && round_trips > WARM_UP_ROUND_TRIPS {
            break;
        }
        stream.write_all(&message).await?;
        stream.read_exact(&mut reply).await?;
        if round_trips >= WARM_UP_ROUND_TRIPS {
            rtt_ns.saturating_record(clock.now_ns() - sent_ns);
        }
        round_trips += 1;
    }
    stream.close().await?;
    Ok(rtt_ns)
}
