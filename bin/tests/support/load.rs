//! A steady write load for real-process tests: writer threads putting
//! unique keys through a client that routes by the ring, each write's
//! fate recorded, and per-phase availability and latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use holdfast_net::client::{Client, ClientError, ClientOptions};

use super::Cluster;

/// Writer threads, each with its own client.
pub const WRITERS: usize = 4;

/// A client that routes by the ring, and gives up on a silent node after a
/// second (so a stopped node costs a second, not the default five).
pub fn writer_client(cluster: &Cluster) -> Client {
    let options = ClientOptions { timeout: Duration::from_secs(1), ..ClientOptions::default() };
    Client::connect(cluster.addrs(), options).unwrap()
}

/// One write's fate.
pub struct Write {
    pub key: String,
    pub value: String,
    pub started: Instant,
    pub latency: Duration,
    /// Attempts it took (an application retries a write whose outcome is
    /// unknown once, at the next replica; a retry can only add a sibling
    /// of the same value).
    pub attempts: u32,
    pub ok: bool,
    /// The last error, if it failed.
    pub error: Option<String>,
}

/// Writes unique keys from [`WRITERS`] threads until `stop` is set.
pub fn write_load(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Write>>> {
    let next = Arc::new(AtomicUsize::new(0));
    (0..WRITERS)
        .map(|_| {
            let client = writer_client(cluster);
            let (stop, next) = (stop.clone(), next.clone());
            std::thread::spawn(move || {
                let mut writes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let (key, value) = (format!("cart-{n:06}"), format!("item-{n}"));
                    let started = Instant::now();
                    let mut attempts = 0;
                    let mut error = None;
                    let ok = loop {
                        attempts += 1;
                        match client.put(key.as_bytes(), value.as_bytes(), None) {
                            Ok(_) => break true,
                            Err(
                                failed @ (ClientError::Timeout { .. }
                                | ClientError::ConnectionLost
                                | ClientError::Server { .. }),
                            ) if attempts < 2 => error = Some(failed.to_string()),
                            Err(failed) => {
                                error = Some(failed.to_string());
                                break false;
                            }
                        }
                    };
                    let latency = started.elapsed();
                    writes.push(Write { key, value, started, latency, attempts, ok, error });
                }
                writes
            })
        })
        .collect()
}

/// Availability and latency of the writes that started in `[from, to)`.
pub struct Phase {
    pub name: &'static str,
    pub writes: usize,
    pub succeeded: usize,
    pub first_try: usize,
    pub histogram: Histogram<u64>,
}

impl Phase {
    pub fn of(name: &'static str, writes: &[Write], from: Instant, to: Instant) -> Phase {
        let histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut phase = Phase { name, writes: 0, succeeded: 0, first_try: 0, histogram };
        for write in writes.iter().filter(|w| w.started >= from && w.started < to) {
            phase.writes += 1;
            phase.succeeded += usize::from(write.ok);
            phase.first_try += usize::from(write.ok && write.attempts == 1);
            let micros = u64::try_from(write.latency.as_micros()).unwrap_or(u64::MAX);
            phase.histogram.saturating_record(micros.max(1));
        }
        phase
    }

    pub fn report(&self) -> String {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "{:<8} writes {:>6}  succeeded {:>6} ({:.3}%)  first try {:.3}%  \
             p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            self.name,
            self.writes,
            self.succeeded,
            100.0 * self.succeeded as f64 / self.writes.max(1) as f64,
            100.0 * self.first_try as f64 / self.writes.max(1) as f64,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.histogram.max() as f64 / 1000.0,
        )
    }
}

pub fn finish(writers: Vec<std::thread::JoinHandle<Vec<Write>>>) -> Vec<Write> {
    writers.into_iter().flat_map(|writer| writer.join().unwrap()).collect()
}

/// Every acknowledged write is readable through the cluster.
pub fn assert_all_readable(cluster: &Cluster, writes: &[Write]) {
    let client = cluster.cluster_client();
    let mut lost = Vec::new();
    for write in writes.iter().filter(|w| w.ok) {
        let read = client.get(write.key.as_bytes()).unwrap();
        if !read.values.iter().any(|value| value == write.value.as_bytes()) {
            lost.push(write.key.clone());
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes not read back: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Prints each phase's availability and latency, and the errors that were
/// retried or failed, each line led by `test` (what a test measured is
/// its output).
#[allow(clippy::print_stdout)]
pub fn print_phases(test: &str, phases: &[Phase], writes: &[Write]) {
    for phase in phases {
        println!("{test} {}", phase.report());
    }
    let errors: Vec<&str> = writes.iter().filter_map(|w| w.error.as_deref()).collect();
    println!("{test} errors retried or failed: {errors:?}");
}

/// Every phase saw writes, and every write succeeded (within its one
/// retry).
pub fn assert_every_write_succeeded(phases: &[Phase]) {
    for phase in phases {
        assert!(phase.writes > 0, "{}: no writes", phase.name);
        assert_eq!(phase.succeeded, phase.writes, "{}: a write failed twice", phase.name);
    }
}
