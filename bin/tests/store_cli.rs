//! `holdfast store bench` and `holdfast store check` as an operator runs
//! them: real processes on real directories, judged by their output and
//! exit codes.

// The helpers below are test code too: they unwrap what the test itself
// made, and a failure there should stop the test where it happened.
#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HOLDFAST: &str = env!("CARGO_BIN_EXE_holdfast");

fn holdfast(args: &[&str]) -> Output {
    Command::new(HOLDFAST).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn explain(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a small bench in `dir` (quick floor, `count` keys), which leaves a
/// closed store of `count` keys in `dir/store`.
fn bench(dir: &Path, count: u64, extra: &[&str]) -> Output {
    let count = count.to_string();
    let mut args = vec!["store", "bench", "--dir", dir.to_str().unwrap(), "--count", &count];
    args.extend(["--value-size", "512", "--concurrency", "16"]);
    args.extend(["--floor-mib", "4", "--floor-syncs", "20"]);
    args.extend(extra);
    holdfast(&args)
}

/// The value of `label: value` in `store check`'s output.
fn field(text: &str, label: &str) -> String {
    let prefix = format!("{label}:");
    let line = text.lines().find(|line| line.starts_with(&prefix));
    let line = line.unwrap_or_else(|| panic!("no {label:?} in:\n{text}"));
    line[prefix.len()..].trim().to_owned()
}

fn only_segment(store: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = fs::read_dir(store)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

/// This is also the regression test of glommio's poll-probe trap: the
/// first DMA file a process opens on a device is probed with a read at
/// offset 0, and an empty file makes glommio pick the wrong io_uring ring
/// (later reads fail with EOPNOTSUPP). The bench opens its floor file
/// first, in a directory that did not exist, in a fresh process: were it
/// opened empty, the store's reads after it would fail here.
#[test]
fn bench_on_a_fresh_directory_prints_percentiles() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("fresh");
    let output = bench(&dir, 2000, &["--fsync", "always"]);
    assert!(output.status.success(), "{}", explain(&output));
    let text = stdout(&output);
    for expected in [
        "sequential write:",
        "4 KiB append + fdatasync",
        "4 KiB preallocated + fdatasync",
        "p50",
        "p99.9",
        "max",
        "group commit: 2000 puts in",
        "2000 live keys",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let puts = text.lines().find(|line| line.trim_start().starts_with("put ")).unwrap();
    let gets = text.lines().find(|line| line.trim_start().starts_with("get ")).unwrap();
    // Phase, ops, seconds, ops/s, MB/s, then four percentiles and the max.
    assert_eq!(puts.split_whitespace().count(), 10, "{puts}");
    assert_eq!(gets.split_whitespace().nth(1), Some("2000"), "{gets}");
    assert!(!dir.join("holdfast-bench-floor.tmp").exists(), "the floor's file is removed");
}

#[test]
fn bench_json_under_interval_sync_reports_every_phase() {
    let temp = tempfile::tempdir().unwrap();
    let output = bench(temp.path(), 1000, &["--fsync", "interval:5", "--json"]);
    assert!(output.status.success(), "{}", explain(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let store = &report["store"];
    assert_eq!(store["fsync"], "interval:5");
    assert_eq!(store["put"]["ops"], 1000);
    assert_eq!(store["get"]["latency_us"]["count"], 1000);
    assert!(store["put"]["latency_us"]["p99.9"].as_u64().unwrap() >= 1);
    assert_eq!(store["restart"]["live_keys"], 1000);
    assert!(report["floor"]["append_fdatasync_latency_us"]["p50"].as_u64().unwrap() >= 1);
}

#[test]
fn bench_refuses_a_store_that_holds_data_unless_told_to_reuse_it() {
    let temp = tempfile::tempdir().unwrap();
    assert!(bench(temp.path(), 100, &["--fsync", "never"]).status.success());
    let refused = bench(temp.path(), 100, &["--fsync", "never"]);
    assert_eq!(refused.status.code(), Some(2), "{}", explain(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--reuse"), "{}", explain(&refused));
    let reused = bench(temp.path(), 100, &["--fsync", "never", "--reuse"]);
    assert!(reused.status.success(), "{}", explain(&reused));
    assert!(stdout(&reused).contains("reused: opened with 100 records"), "{}", explain(&reused));
}

#[test]
fn check_on_a_clean_store_exits_0_and_prints_the_counts() {
    let temp = tempfile::tempdir().unwrap();
    assert!(bench(temp.path(), 2000, &["--fsync", "never"]).status.success());
    let store = temp.path().join("store");
    let output = holdfast(&["store", "check", store.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", explain(&output));
    let text = stdout(&output);
    assert_eq!(field(&text, "segments"), "1");
    assert_eq!(field(&text, "records"), "2000");
    assert_eq!(field(&text, "live keys"), "2000");
    assert_eq!(field(&text, "corrupt records skipped"), "0");
    assert_eq!(field(&text, "damaged segments"), "0");
    assert_eq!(field(&text, "torn tails"), "0");
    assert_eq!(field(&text, "index files bad"), "0");
    assert_eq!(field(&text, "index files missing"), "0");
    assert!(field(&text, "bytes reclaimable").starts_with("0 "), "{text}");
    assert_eq!(field(&text, "result"), "clean");
}

#[test]
fn check_finds_damage_in_the_middle_of_a_segment_and_exits_1() {
    let temp = tempfile::tempdir().unwrap();
    assert!(bench(temp.path(), 2000, &["--fsync", "never"]).status.success());
    let store = temp.path().join("store");
    let segment = only_segment(&store);
    // The first record starts right after the 4096-byte header block, its
    // key right after the record's 40-byte header. Damage there breaks the
    // first record's checksum with 1999 valid records after it: corruption
    // in the middle of a sealed segment, not a torn tail.
    let mut file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.seek(SeekFrom::Start(4096 + 40)).unwrap();
    file.write_all(&[0xff; 8]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let output = holdfast(&["store", "check", store.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let text = stdout(&output);
    let id = segment.file_stem().unwrap().to_str().unwrap();
    assert_eq!(field(&text, "corrupt records skipped"), "1");
    assert_eq!(field(&text, "records"), "1999");
    assert_eq!(field(&text, "damaged segments"), format!("1 ({id})"));
    // The segment's index file still lists the damaged record.
    assert_eq!(field(&text, "index files bad"), format!("1 ({id})"));
    assert!(field(&text, "result").starts_with("CORRUPT"), "{text}");
}

#[test]
fn check_on_a_missing_directory_exits_2() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("no-such-store");
    let output = holdfast(&["store", "check", missing.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-store") && stderr.contains("No such file"), "{stderr}");
    assert!(!missing.exists(), "checking must not create the directory");
}
