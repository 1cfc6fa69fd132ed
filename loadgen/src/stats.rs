//! What was measured: per operation kind, a latency histogram (nanoseconds)
//! and counts, per connection and merged per phase; and the report built
//! from them, as a table or one JSON object.
//!
//! Invariant: every operation issued ends in exactly one of: a latency
//! sample (success), an error, or a timeout (given up on when the phase's
//! drain time ran out; also counted as an error). Operations an open loop
//! intended but never sent are counted separately as `behind`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};

use crate::workload::OpKind;

/// The largest latency recorded exactly; longer ones saturate to it.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// Significant decimal digits the histograms keep (0.1% resolution).
const SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram in nanoseconds with loadgen's bounds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|error| panic!("constant histogram bounds are valid: {error}"))
}

/// Measurements of one operation kind.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latencies of the successful operations, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Operations that failed (error replies, timeouts, broken
    /// connections).
    pub errors: u64,
    /// Successful reads (or the read of a read-modify-write) that found no
    /// value.
    pub not_found: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        Self { latency_ns: latency_histogram(), errors: 0, not_found: 0 }
    }
}

impl OpStats {
    /// Operations that finished, successfully or not.
    pub fn count(&self) -> u64 {
        self.latency_ns.len() + self.errors
    }
}

/// A phase's stats shared by the connections on one executor thread.
pub type SharedStats = std::rc::Rc<std::cell::RefCell<PhaseStats>>;

/// Measurements of one phase (load or run), of one connection or merged.
#[derive(Debug, Clone)]
pub struct PhaseStats {
    /// Indexed by [`OpKind::index`].
    pub ops: [OpStats; 4],
    /// Open loop: operations intended but never sent.
    pub behind: u64,
    /// Operations given up on at the stop time (included in `errors`).
    pub timeouts: u64,
    /// Connections that broke (I/O error, closed, unreadable reply).
    pub connection_errors: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// Open loop: how late each request was sent after its intended time
    /// (waiting for a free slot, or for the load generator itself). Small
    /// next to the latencies means the generator kept its schedule.
    pub send_lag_ns: Histogram<u64>,
    /// When the phase started (on the run's clock).
    pub start_ns: u64,
    /// When the last operation finished (on the run's clock).
    pub last_completion_ns: u64,
}

impl PhaseStats {
    /// Empty stats of a phase that starts at `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self {
            ops: Default::default(),
            behind: 0,
            timeouts: 0,
            connection_errors: 0,
            first_error: None,
            send_lag_ns: latency_histogram(),
            start_ns,
            last_completion_ns: start_ns,
        }
    }

    /// Open loop: a request intended at `intended_ns` went out at `now_ns`.
    pub fn record_send_lag(&mut self, intended_ns: u64, now_ns: u64) {
        self.send_lag_ns.saturating_record(now_ns.saturating_sub(intended_ns).max(1));
    }

    /// The stats of one kind.
    pub fn op(&self, kind: OpKind) -> &OpStats {
        &self.ops[kind.index()]
    }

    /// Records a success that took `latency_ns`.
    pub fn record(&mut self, kind: OpKind, latency_ns: u64, now_ns: u64) {
        self.ops[kind.index()].latency_ns.saturating_record(latency_ns.max(1));
        self.last_completion_ns = self.last_completion_ns.max(now_ns);
    }

    /// Records a failure.
    pub fn record_error(&mut self, kind: OpKind, message: impl FnOnce() -> String, now_ns: u64) {
        self.ops[kind.index()].errors += 1;
        self.last_completion_ns = self.last_completion_ns.max(now_ns);
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    /// Adds another connection's stats of the same phase.
    pub fn merge(&mut self, other: &PhaseStats) {
        for (mine, theirs) in self.ops.iter_mut().zip(&other.ops) {
            // Same bounds on both sides, so adding cannot fail.
            mine.latency_ns
                .add(&theirs.latency_ns)
                .unwrap_or_else(|error| panic!("histograms with equal bounds add: {error}"));
            mine.errors += theirs.errors;
            mine.not_found += theirs.not_found;
        }
        self.send_lag_ns
            .add(&other.send_lag_ns)
            .unwrap_or_else(|error| panic!("histograms with equal bounds add: {error}"));
        self.behind += other.behind;
        self.timeouts += other.timeouts;
        self.connection_errors += other.connection_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.start_ns = self.start_ns.min(other.start_ns);
        self.last_completion_ns = self.last_completion_ns.max(other.last_completion_ns);
    }

    /// Seconds from the start to the last completion.
    pub fn elapsed_s(&self) -> f64 {
        (self.last_completion_ns.saturating_sub(self.start_ns)) as f64 / 1e9
    }

    /// Operations of every kind that finished.
    pub fn total_count(&self) -> u64 {
        self.ops.iter().map(OpStats::count).sum()
    }

    /// Errors of every kind.
    pub fn total_errors(&self) -> u64 {
        self.ops.iter().map(|op| op.errors).sum()
    }

    /// The phase as JSON: elapsed time, counters, and one object per kind
    /// that saw any operation (latencies in microseconds).
    pub fn to_json(&self) -> Json {
        let elapsed_s = self.elapsed_s();
        let mut ops = serde_json::Map::new();
        for kind in OpKind::ALL {
            let op = self.op(kind);
            if op.count() == 0 {
                continue;
            }
            let h = &op.latency_ns;
            let us = |ns: u64| ns as f64 / 1e3;
            let q =
                |quantile: f64| if h.is_empty() { 0.0 } else { us(h.value_at_quantile(quantile)) };
            ops.insert(
                kind.name().to_owned(),
                json!({
                    "count": op.count(),
                    "errors": op.errors,
                    "not_found": op.not_found,
                    "throughput_ops": throughput(h.len(), elapsed_s),
                    "mean_us": if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
                    "p50_us": q(0.50),
                    "p90_us": q(0.90),
                    "p99_us": q(0.99),
                    "p999_us": q(0.999),
                    "max_us": us(h.max()),
                }),
            );
        }
        let lag = &self.send_lag_ns;
        let send_lag = (!lag.is_empty()).then(|| {
            let us = |ns: u64| ns as f64 / 1e3;
            json!({
                "p50_us": us(lag.value_at_quantile(0.5)),
                "p99_us": us(lag.value_at_quantile(0.99)),
                "p999_us": us(lag.value_at_quantile(0.999)),
                "max_us": us(lag.max()),
            })
        });
        json!({
            "elapsed_s": elapsed_s,
            "send_lag": send_lag,
            "count": self.total_count(),
            "errors": self.total_errors(),
            "throughput_ops": throughput(self.total_count() - self.total_errors(), elapsed_s),
            "behind": self.behind,
            "timeouts": self.timeouts,
            "connection_errors": self.connection_errors,
            "first_error": self.first_error,
            "ops": ops,
        })
    }

    /// Appends the phase's rows to a table (see [`table_header`]).
    pub fn write_rows(&self, phase: &str, out: &mut String) {
        let elapsed_s = self.elapsed_s();
        for kind in OpKind::ALL {
            let op = self.op(kind);
            if op.count() == 0 {
                continue;
            }
            let h = &op.latency_ns;
            let q = |quantile: f64| if h.is_empty() { 0 } else { h.value_at_quantile(quantile) };
            let _ = writeln!(
                out,
                "{phase:<6} {:<7} {:>10} {:>7} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
                kind.name(),
                op.count(),
                op.errors,
                throughput(h.len(), elapsed_s),
                format_ns(q(0.50)),
                format_ns(q(0.90)),
                format_ns(q(0.99)),
                format_ns(q(0.999)),
                format_ns(h.max()),
            );
        }
        let lag = &self.send_lag_ns;
        if !lag.is_empty() {
            let _ = writeln!(
                out,
                "{phase:<6} {:<7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "sendlag",
                lag.len(),
                "-",
                "-",
                format_ns(lag.value_at_quantile(0.50)),
                format_ns(lag.value_at_quantile(0.90)),
                format_ns(lag.value_at_quantile(0.99)),
                format_ns(lag.value_at_quantile(0.999)),
                format_ns(lag.max()),
            );
        }
        let mut notes = Vec::new();
        let not_found: u64 = self.ops.iter().map(|op| op.not_found).sum();
        for (count, what) in [
            (not_found, "not found"),
            (self.behind, "behind schedule (intended, never sent)"),
            (self.timeouts, "timed out"),
            (self.connection_errors, "connections broken"),
        ] {
            if count > 0 {
                notes.push(format!("{count} {what}"));
            }
        }
        if let Some(error) = &self.first_error {
            notes.push(format!("first error: {error}"));
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "{phase:<6} note: {}", notes.join("; "));
        }
    }
}

/// The table's header line (latencies in the units [`format_ns`] picks).
pub fn table_header() -> String {
    format!(
        "{:<6} {:<7} {:>10} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "phase", "op", "count", "errors", "ops/s", "p50", "p90", "p99", "p99.9", "max"
    )
}

/// A latency for people: `812ns`, `55.3us`, `1.27ms`, `2.50s`.
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn throughput(count: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 { count as f64 / elapsed_s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = PhaseStats::new(100);
        a.record(OpKind::Read, 1_000, 500);
        a.record_error(OpKind::Update, || "first".into(), 600);
        let mut b = PhaseStats::new(50);
        b.record(OpKind::Read, 2_000, 900);
        b.record_error(OpKind::Update, || "second".into(), 700);
        b.behind = 3;
        a.merge(&b);
        assert_eq!(a.op(OpKind::Read).count(), 2);
        assert_eq!(a.op(OpKind::Update).errors, 2);
        assert_eq!(a.behind, 3);
        assert_eq!(a.first_error.as_deref(), Some("first"));
        assert_eq!((a.start_ns, a.last_completion_ns), (50, 900));
        let json = a.to_json();
        assert_eq!(json["ops"]["read"]["count"], 2);
        assert!(json["ops"].get("insert").is_none());
    }

    #[test]
    fn latencies_print_in_readable_units() {
        assert_eq!(format_ns(812), "812ns");
        assert_eq!(format_ns(55_300), "55.3us");
        assert_eq!(format_ns(1_270_000), "1.27ms");
        assert_eq!(format_ns(2_500_000_000), "2.50s");
    }
}
