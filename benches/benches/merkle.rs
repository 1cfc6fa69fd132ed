//! What the anti-entropy Merkle tree costs: one incremental update on the
//! write path, and a whole-replica comparison of 1M keys in 1024
//! partitions with d = 0, 10 and 1000 keys differing.
//!
//! Run with `cargo bench -p holdfast-benches --bench merkle`.
//!
//! Updates are timed in batches of `BATCH` (so the clock's own cost stays
//! out); each recorded value is a batch's mean per update, so the tail
//! percentiles are those of 64-update batches, not of single updates.
//!
//! The comparison runs `diff_leaves` on every partition pair and adds up
//! the exchange it models. Bytes assume this framing (the exchange protocol
//! is a later piece, so this is an estimate): each partition's root goes
//! as a partition id (u32) and the hash; each expanded node costs a request
//! naming it (partition u32, level u8, index u16, padded to 8 bytes) and a
//! reply with the same 8-byte header and `FANOUT` hashes.

#![allow(clippy::print_stdout)] // A benchmark's output is its report.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;
use holdfast_engine::cluster::merkle::{
    DiffCost, FANOUT, LEAVES, MerkleTree, diff_leaves, entry_hash, leaf_of,
};
use holdfast_net::ring::partition_of;

const BATCH: u32 = 64;
const UPDATES: u32 = 1 << 20;
const KEYS: u64 = 1_000_000;
const PARTITIONS: u32 = 1024;

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:010}").into_bytes()
}

/// A stand-in for a canonical sibling-set encoding: one version, 64 bytes.
fn set_bytes(i: u64, version: u64) -> [u8; 64] {
    let mut bytes = [0u8; 64];
    bytes[..8].copy_from_slice(&version.to_le_bytes());
    bytes[8..16].copy_from_slice(&i.to_le_bytes());
    bytes
}

fn update_cost() {
    // One partition's worth of keys (1M keys / 1024 partitions).
    let keys: Vec<Vec<u8>> = (0..1_000).map(key).collect();
    let mut entries: Vec<u64> =
        keys.iter().enumerate().map(|(i, k)| entry_hash(k, &set_bytes(i as u64, 1))).collect();
    let mut tree = MerkleTree::build(keys.iter().zip(&entries).map(|(k, &e)| (k, e)));

    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut step = 0u64;
    let started = Instant::now();
    for _ in 0..UPDATES / BATCH {
        let batch = Instant::now();
        for _ in 0..BATCH {
            let i = (step % 1_000) as usize;
            let old = entries[i];
            // A cheap stand-in for the next entry hash, so only the tree is timed.
            let new = old.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(step) | 1;
            tree.update(black_box(&keys[i]), Some(old), Some(new));
            entries[i] = new;
            step += 1;
        }
        let per_op_ns = batch.elapsed().as_nanos() as u64 / u64::from(BATCH);
        histogram.record(per_op_ns.max(1)).expect("in range");
    }
    let seconds = started.elapsed().as_secs_f64();
    black_box(tree.root());
    println!(
        "{:<28} p50 {:>5} ns  p99 {:>5} ns  p99.9 {:>5} ns  max {:>6} ns  mean {:>6.1} ns  {:>6.2} M updates/s  ({} updates)",
        "update (1000-key partition)",
        histogram.value_at_quantile(0.50),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        seconds * 1e9 / f64::from(UPDATES),
        f64::from(UPDATES) / seconds / 1e6,
        UPDATES,
    );

    let set = set_bytes(7, 3);
    let started = Instant::now();
    for k in keys.iter().cycle().take(UPDATES as usize) {
        black_box(entry_hash(black_box(k), black_box(&set)));
    }
    println!(
        "{:<28} mean {:>6.1} ns (16-byte key, 64-byte set; computed by the caller per write)",
        "entry_hash",
        started.elapsed().as_secs_f64() * 1e9 / f64::from(UPDATES),
    );
}

fn comparison() {
    let partitions = PARTITIONS as usize;
    let started = Instant::now();
    let mut trees = vec![MerkleTree::new(); partitions];
    // Keys per leaf per partition, to count the keys a differing leaf
    // would make the later key exchange list.
    let mut leaf_keys = vec![vec![0u16; LEAVES]; partitions];
    for i in 0..KEYS {
        let k = key(i);
        let p = partition_of(&k, PARTITIONS) as usize;
        trees[p].update(&k, None, Some(entry_hash(&k, &set_bytes(i, 1))));
        leaf_keys[p][leaf_of(&k)] += 1;
    }
    let build_seconds = started.elapsed().as_secs_f64();
    let per_partition: Vec<u64> = trees.iter().map(MerkleTree::key_count).collect();
    println!(
        "built {} trees from {KEYS} keys by incremental update in {:.2} s (keys per partition min {} max {}; FANOUT {FANOUT}, {LEAVES} leaves)",
        partitions,
        build_seconds,
        per_partition.iter().min().expect("partitions"),
        per_partition.iter().max().expect("partitions"),
    );

    for d in [0u64, 10, 1000] {
        let mut other = trees.clone();
        // Distinct keys (7919 is prime to 1M); even ones hold a newer
        // version on the other replica, odd ones are missing there.
        for j in 0..d {
            let i = (j * 7919 + 13) % KEYS;
            let k = key(i);
            let p = partition_of(&k, PARTITIONS) as usize;
            let old = Some(entry_hash(&k, &set_bytes(i, 1)));
            let new = (j % 2 == 0).then(|| entry_hash(&k, &set_bytes(i, 2)));
            other[p].update(&k, old, new);
        }

        let repeats = 20;
        let mut cost = DiffCost::default();
        let mut leaves_differing = 0usize;
        let mut partitions_differing = 0usize;
        let mut keys_in_leaves = 0u64;
        let started = Instant::now();
        for repeat in 0..repeats {
            for p in 0..partitions {
                let (leaves, partition_cost) = diff_leaves(&trees[p], &other[p]);
                if repeat == 0 {
                    cost.absorb(partition_cost);
                    leaves_differing += leaves.len();
                    partitions_differing += usize::from(!leaves.is_empty());
                    keys_in_leaves +=
                        leaves.iter().map(|&l| u64::from(leaf_keys[p][l])).sum::<u64>();
                }
                black_box(leaves);
            }
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(repeats);
        let bytes = cost.hashes * 8 + u64::from(PARTITIONS) * 4 + cost.nodes_expanded * 16;
        println!(
            "d = {d:>4}: {:>6} hashes compared/sent  {:>8} bytes ({:>6.1} KiB, {:>5.2}% of sending all {KEYS} entry hashes)  {:>5} nodes expanded  {} rounds  {:>4} partitions and {:>4} leaves differ ({} keys in them)  {:>8.1} us",
            cost.hashes,
            bytes,
            bytes as f64 / 1024.0,
            bytes as f64 * 100.0 / (KEYS * 8) as f64,
            cost.nodes_expanded,
            cost.rounds,
            partitions_differing,
            leaves_differing,
            keys_in_leaves,
            micros,
        );
    }
}

fn main() {
    update_cost();
    comparison();
}
