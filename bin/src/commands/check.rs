//! `holdfast store check DIR`: verifies a store directory, changing nothing.
//!
//! The engine does the work ([`holdfast_engine::store::check`]: every
//! segment read whole, every record verified, every index file compared
//! with its segment); this prints the report one fact per line, in the
//! `label: value` form that people read and scripts split on the first
//! colon, and turns it into the exit code: 0 clean, 1 corruption, 2 could
//! not check.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use holdfast_engine::disk::dma::DmaDisk;
use holdfast_engine::store::{CheckReport, check};

use super::{Outcome, human_bytes, on_executor};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The store's data directory (one shard's).
    pub dir: PathBuf,
}

pub fn run(args: CheckArgs) -> Result<Outcome> {
    let dir = args.dir;
    // `DmaDisk::open` creates a missing directory, which is right for a
    // store about to be written and wrong here: checking a mistyped path
    // must fail, not report an empty store as clean.
    let metadata = fs::metadata(&dir).with_context(|| format!("cannot check {}", dir.display()))?;
    ensure!(metadata.is_dir(), "cannot check {}: not a directory", dir.display());
    let shown = dir.display().to_string();
    let report = on_executor("holdfast-check", move || async move {
        let disk = DmaDisk::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
        check(&disk).await.with_context(|| format!("cannot check {}", dir.display()))
    })?;
    print!("{}", render(&shown, &report));
    Ok(if report.is_clean() { Outcome::Done } else { Outcome::CorruptionFound })
}

/// The report as text, one fact per line.
fn render(dir: &str, report: &CheckReport) -> String {
    let mut text = String::new();
    let mut line = |label: &str, value: String| {
        let label = format!("{label}:");
        // Writing to a `String` cannot fail.
        let _ = writeln!(text, "{label:<25}{value}");
    };
    line("directory", dir.to_owned());
    line("segments", report.segments.to_string());
    line("records", report.records.to_string());
    line("live keys", report.live_keys.to_string());
    line("corrupt records skipped", report.corrupt_records_skipped.to_string());
    line("damaged segments", segment_list(&report.damaged_segments));
    line("torn tails", report.torn_tails.to_string());
    line("torn bytes", report.torn_bytes.to_string());
    line("bytes live", with_human(report.bytes_live));
    line("bytes total", with_human(report.bytes_total));
    line("bytes reclaimable", with_human(report.bytes_reclaimable()));
    line("index files bad", segment_list(&report.index_files_bad));
    line("index files missing", report.index_files_missing.to_string());
    let verdict = if report.is_clean() {
        // A torn tail is the write that was in flight at a crash, and a
        // missing index file is the segment that was being written then:
        // neither is corruption, and the next open repairs both.
        "clean"
    } else {
        "CORRUPT: damaged records are never served; repair from a replica"
    };
    line("result", verdict.to_owned());
    text
}

/// A count of segments and their ids, in hex as in their file names.
fn segment_list(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "0".to_owned();
    }
    let names: Vec<String> = ids.iter().map(|id| format!("{id:016x}")).collect();
    format!("{} ({})", ids.len(), names.join(", "))
}

fn with_human(bytes: u64) -> String {
    format!("{bytes} ({})", human_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_report_names_its_segments_in_hex() {
        let report = CheckReport {
            segments: 2,
            records: 10,
            corrupt_records_skipped: 1,
            damaged_segments: vec![0x1f],
            index_files_bad: vec![0x1f],
            bytes_total: 2048,
            bytes_live: 1024,
            ..CheckReport::default()
        };
        let text = render("/data", &report);
        assert!(text.contains("corrupt records skipped: 1\n"), "{text}");
        assert!(text.contains("damaged segments:        1 (000000000000001f)\n"), "{text}");
        assert!(text.contains("bytes reclaimable:       1024 (1.0 KiB)\n"), "{text}");
        assert!(text.contains("result:                  CORRUPT"), "{text}");
    }
}
