//! The commands, one module each, and what they share: running on a glommio
//! executor, and printing sizes and latencies the same way everywhere.

pub mod admin;
pub mod bench;
pub mod check;
pub mod client;
pub mod cluster;
pub mod serve;
pub mod torture;
pub mod up;

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use glommio::{BuilderErrorKind, GlommioError, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use holdfast_engine::disk::dma::raise_memlock_limit;

/// How a command that did not fail ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// `check` found corruption: the command worked, the data did not.
    CorruptionFound,
    /// `status` reached a node that has not formed its ring yet: the
    /// command worked, the cluster is not ready.
    NoRing,
}

/// Turns glommio's results into `io::Result`s, which `anyhow` can give
/// context to: a `GlommioError` may carry a panic payload, which is not
/// `Sync`, so `anyhow` cannot wrap it. The conversion keeps the message and,
/// for I/O errors, the `errno`.
pub trait GlommioResultExt<T> {
    fn into_io(self) -> std::io::Result<T>;
}

impl<T> GlommioResultExt<T> for Result<T, GlommioError<()>> {
    fn into_io(self) -> std::io::Result<T> {
        self.map_err(std::io::Error::from)
    }
}

/// Runs `body` on a fresh glommio executor, as a shard would, and returns
/// what it returned.
///
/// The executor is not pinned (`Placement::Unbound`) and never spins before
/// parking: a tool runs beside whatever else the machine is doing, and on
/// two cores a spinning executor would take one of them from the disk's
/// completion handling and from the other processes.
pub fn on_executor<T, F, Fut>(name: &str, body: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>> + 'static,
    T: Send + 'static,
{
    raise_memlock_limit().context("cannot give glommio the locked memory its io_uring needs")?;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .spawn(body)
        // A `GlommioError` can hold a panic payload, which is not `Sync`, so
        // it is turned into text rather than wrapped.
        .map_err(|error| anyhow!("cannot start the glommio executor: {error}"))?;
    match handle.join() {
        Ok(result) => result,
        // A panic is a broken invariant: it goes on as a panic, with the
        // message the executor's thread already printed.
        Err(GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(panic))) => {
            std::panic::resume_unwind(panic)
        }
        Err(error) => Err(anyhow!("the glommio executor failed: {error}")),
    }
}

/// A histogram of latencies in microseconds, from 1 µs to an hour, to three
/// significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("the bounds are valid constants")
}

/// Records `elapsed` in a histogram made by [`latency_histogram`], clamping
/// it into the histogram's range (a sub-microsecond operation counts as one
/// microsecond, a stall of over an hour as an hour).
pub fn record_latency(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Microseconds as milliseconds with three decimals: `1234` is `1.234`.
pub fn ms(micros: u64) -> String {
    format!("{}.{:03}", micros / 1000, micros % 1000)
}

/// Bytes for people: `1536` is `1.5 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_three_decimals() {
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(1234), "1.234");
        assert_eq!(ms(140), "0.140");
    }

    #[test]
    fn bytes_pick_the_largest_unit_below_1024() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[test]
    fn latencies_outside_the_range_are_clamped_not_lost() {
        let mut histogram = latency_histogram();
        record_latency(&mut histogram, Duration::from_nanos(10));
        record_latency(&mut histogram, Duration::from_secs(10_000));
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.min(), 1);
    }
}
