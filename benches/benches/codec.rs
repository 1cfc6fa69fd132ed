//! What encoding and verifying cost on the write and recovery paths: the
//! canonical sibling-set codec and merge (every replica write), and the
//! record encoder and segment scan (every store write, every recovery).
//!
//! Run with `cargo bench -p holdfast-benches --bench codec`. Each line
//! gives per-operation latency percentiles (timed in batches of
//! `BATCH` operations, so the clock's own cost stays out) and throughput.

#![allow(clippy::print_stdout)] // A benchmark's output is its report.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use holdfast_engine::store::{record, segment};
use holdfast_net::{Actor, DecodeLimits, SiblingSet, VersionVector};

const BATCH: u32 = 64;
const ROUNDS: u32 = 4000;

/// Times `operation` over `ROUNDS` batches and prints its percentiles.
fn measure(name: &str, bytes_per_op: usize, mut operation: impl FnMut()) {
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let batch = Instant::now();
        for _ in 0..BATCH {
            operation();
        }
        let per_op_ns = batch.elapsed().as_nanos() as u64 / u64::from(BATCH);
        histogram.record(per_op_ns.max(1)).expect("in range");
    }
    let seconds = started.elapsed().as_secs_f64();
    let ops = f64::from(ROUNDS * BATCH);
    println!(
        "{name:<28} p50 {:>7} ns  p99 {:>7} ns  p99.9 {:>7} ns  max {:>8} ns  {:>6.2} Mops/s  {:>8.1} MB/s",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        ops / seconds / 1e6,
        ops * bytes_per_op as f64 / seconds / 1e6,
    );
}

fn main() {
    // A key written by three coordinators, the second write concurrent
    // with the first: two siblings, 256-byte values.
    let (a, b, c) = (Actor::new(1, 0), Actor::new(2, 0), Actor::new(3, 0));
    let mut set = SiblingSet::new();
    set.write(a, &VersionVector::new(), Some(vec![7; 256])).expect("write");
    let context = set.context();
    set.write(b, &context, Some(vec![8; 256])).expect("write");
    let mut other = SiblingSet::new();
    other.write(c, &context, Some(vec![9; 256])).expect("write");
    let encoded = set.encode();

    measure("siblings encode", encoded.len(), || {
        black_box(black_box(&set).encode());
    });
    measure("siblings decode", encoded.len(), || {
        black_box(SiblingSet::decode(black_box(&encoded), DecodeLimits::default()).ok());
    });
    measure("siblings merge", encoded.len(), || {
        let mut merged = black_box(&set).clone();
        merged.merge(black_box(&other));
        black_box(merged);
    });

    let mut buffer = Vec::with_capacity(1 << 20);
    measure("record encode 1 KiB", 1024 + 56, || {
        buffer.clear();
        record::encode(&mut buffer, 5, 42, record::RecordKind::Put, b"user:0000012345", &[3; 1024]);
        black_box(&buffer);
    });

    // A 4 MiB segment of 1 KiB records, scanned as recovery does.
    let mut segment_bytes = segment::header_block(1);
    let mut seq = 0;
    while segment_bytes.len() < 4 << 20 {
        seq += 1;
        let key = format!("user:{seq:010}");
        record::encode(
            &mut segment_bytes,
            1,
            seq,
            record::RecordKind::Put,
            key.as_bytes(),
            &[1; 1024],
        );
    }
    let started = Instant::now();
    let scans = 50;
    for _ in 0..scans {
        black_box(segment::scan(1, black_box(&segment_bytes)));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{:<28} {:>8.1} MB/s  {:>6.2} M records/s",
        "segment scan (recovery)",
        (scans * segment_bytes.len()) as f64 / seconds / 1e6,
        (scans as u64 * seq) as f64 / seconds / 1e6,
    );
}
