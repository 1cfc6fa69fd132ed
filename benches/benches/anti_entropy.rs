//! What anti-entropy costs end to end: one whole exchange (an operator's
//! repair of every partition) between two replicas holding 1M keys in
//! 1024 partitions, with d = 0, 10 and 1000 keys differing; and what the
//! Merkle tree adds to a replica write.
//!
//! Run with `cargo bench -p holdfast-benches --bench anti_entropy`.
//!
//! Two `Replica<SimDisk>` (in memory, no faults but that every disk call
//! yields once, as on io_uring, so a batch's merges share group commits)
//! are loaded with the same 1M keys (`user:{i:010}`, one 64-byte value
//! each, written as a sibling set by one actor and merged into both
//! replicas a partition batch at a time). Node 1's `Coordinator` (N = 2,
//! both nodes replicate every partition, unlimited anti-entropy budget) is
//! handed `Input::Repair` for all partitions, and its actions are pumped
//! in order until `Action::Repaired`: `Action::Local` runs on replica A,
//! `Action::Send` runs on replica B (through `PeerRequest::into_local` and
//! `PeerReply::from_local`, as the node and the simulator do), timers are
//! ignored. Nothing crosses a network or a real disk, so the wall time is
//! the coordinator's and the replicas' CPU cost (and the simulated disk's).
//! The stores run with `SyncPolicy::Never`: the simulated disk compares its
//! whole file image at every sync, a test check that would otherwise
//! dominate every write timed here.
//!
//! Before each case with d > 0, d keys are made to differ: a quarter
//! rewritten (a newer version, `Replica::write`) on A only, a quarter on B
//! only, a quarter written as new keys on A only (missing on B) and a
//! quarter as new keys on B only (missing on A). The cases run in turn on
//! the same pair, each starting from the previous one's converged state.
//!
//! One table row per case: exchanges completed, partitions and leaves
//! that differed, the tree hashes and leaf entries the peer sent, keys
//! repaired, sets (keys and bytes) fetched from and sent to the peer
//! (`RepairReport`), the peer requests sent (`Action::Send`s, by kind:
//! tree hashes / leaf entries / fetch / repair), an estimate of the bytes
//! on the wire and the exchange's wall time. The estimate is hashes x 8 +
//! the leaf entries' (key + 8) + the sets' bytes both ways + a 32-byte
//! frame header per request; it leaves out the requests' own payloads
//! (node indices, leaf numbers, fetched keys) and the replies' frame
//! headers. After each exchange every partition's root is compared on
//! both replicas (asserted equal). Under each row, where the exchange's
//! time went: replica A's local ops and replica B's serving of the
//! requests, each by kind, and the coordinator's own handling.
//!
//! Then the write path: `Replica::merge` of a newer set of an existing key
//! on the loaded replica A, one call at a time, each timed (so these are
//! per-call latencies, simulated-disk group commit included), next to the
//! cost of what the tree adds to each such write, from micro-loops on a
//! real partition's keys: one `MerkleTree::update`, and two `entry_hash`es
//! (the replica hashes the old stored set and the new one).

#![allow(clippy::print_stdout)] // A benchmark's output is its report.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use hdrhistogram::Histogram;
use holdfast_engine::cluster::ClusterOptions;
use holdfast_engine::cluster::coordinator::{
    Action, Coordinator, Input, LocalOp, PeerReply, PeerRequest, RepairReport,
};
use holdfast_engine::cluster::merkle::{LEAVES, MerkleTree, entry_hash};
use holdfast_engine::disk::sim::{SimDisk, SimDiskOptions, SimFaults};
use holdfast_engine::replica::Replica;
use holdfast_engine::store::{Store, StoreOptions, SyncPolicy};
use holdfast_net::ring::{Member, Ring, partition_of};
use holdfast_net::{Actor, SiblingSet, VersionVector};

const KEYS: u64 = 1_000_000;
const PARTITIONS: u32 = 1024;
/// Keys per `merge_all` call while loading.
const LOAD_BATCH: usize = 1_000;
const VALUE_BYTES: usize = 64;
/// Timed `Replica::merge` calls.
const MERGES: u64 = 100_000;
const TREE_UPDATES: u32 = 1 << 21;
const FRAME_HEADER: u64 = 32;

type Sim = Replica<SimDisk>;

fn key(i: u64) -> Vec<u8> {
    format!("user:{i:010}").into_bytes()
}

fn value(i: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![b'v'; VALUE_BYTES];
    bytes[..8].copy_from_slice(&i.to_le_bytes());
    bytes[8..16].copy_from_slice(&version.to_le_bytes());
    bytes
}

fn replica(seed: u64, node: u64) -> Sim {
    let disk = SimDisk::new(SimDiskOptions {
        capacity_bytes: 64 << 30,
        // Every disk call yields once, as on io_uring: so the merges of a
        // batch interleave and share group commits.
        faults: SimFaults { yield_probability: 1.0, ..SimFaults::default() },
        ..SimDiskOptions::new(seed)
    });
    let options = StoreOptions {
        segment_bytes_max: 64 << 20,
        value_bytes_max: 64 << 10,
        // SimDisk checks its whole file image at every sync (a memcmp the
        // size of the segment): under `Always` that would be most of what
        // is timed here.
        sync: SyncPolicy::Never,
        ..StoreOptions::default()
    };
    let (store, _) = block_on(Store::open(disk, options)).expect("the store opens");
    Replica::new(store, Actor::new(node, 0))
}

/// Loads the same `KEYS` keys into both replicas; returns the seconds taken.
fn load(a: &Sim, b: &Sim) -> f64 {
    let started = Instant::now();
    let mut by_partition = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..KEYS {
        by_partition[partition_of(&key(i), PARTITIONS) as usize].push(i);
    }
    // The writes' coordinator: some node replicating to both.
    let writer = Actor::new(7, 0);
    for (partition, indices) in by_partition.iter().enumerate() {
        for chunk in indices.chunks(LOAD_BATCH) {
            let entries: Vec<(Vec<u8>, SiblingSet)> = chunk
                .iter()
                .map(|&i| {
                    let mut set = SiblingSet::new();
                    set.write(writer, &VersionVector::new(), Some(value(i, 1))).expect("a write");
                    (key(i), set)
                })
                .collect();
            for replica in [a, b] {
                block_on(replica.merge_all(partition as u32, &entries)).expect("loaded");
            }
        }
    }
    started.elapsed().as_secs_f64()
}

/// Builds what trees are still to be built; returns the calls it took.
fn build_trees(replica: &Sim) -> u32 {
    let mut calls = 0;
    while block_on(replica.build_trees(usize::MAX)) {
        calls += 1;
    }
    assert_eq!(replica.trees_building(), 0);
    calls
}

/// Makes `d` keys differ between the replicas (see the module docs).
fn diverge(a: &Sim, b: &Sim, case: u64, d: u64) {
    for j in 0..d {
        let (replica, fresh) = match j % 4 {
            0 => (a, false),
            1 => (b, false),
            2 => (a, true),
            _ => (b, true),
        };
        let (key, i) = if fresh {
            (format!("user:new{case}-{j:06}").into_bytes(), KEYS + j)
        } else {
            // Distinct keys (7919 is prime to 1M), different in each case.
            let i = (j * 7919 + 13 + case * 104_729) % KEYS;
            (key(i), i)
        };
        let partition = partition_of(&key, PARTITIONS);
        let set = block_on(replica.read(partition, &key)).expect("a read");
        assert_eq!(set.is_empty(), fresh);
        block_on(replica.write(partition, &key, &set.context(), Some(value(i, 2 + case))))
            .expect("a write");
    }
}

#[derive(Debug, Default)]
struct Pumped {
    report: RepairReport,
    sends: u64,
    /// Sends by kind: tree hashes, leaf entries, fetch, repair.
    kinds: [u64; 4],
    /// Bytes of the keys in the leaf entries the peer sent.
    entry_key_bytes: u64,
    hashes_seen: u64,
    entries_seen: u64,
    seconds: f64,
    /// Seconds in replica A's local ops, in replica B's (serving the
    /// requests), each by kind (tree hashes, leaf entries, fetch, merge),
    /// and in the coordinator.
    local: [f64; 4],
    remote: [f64; 4],
    coordinating: f64,
}

/// The anti-entropy kind of a local op: tree hashes, leaf entries, fetch,
/// merge (others: `None`).
fn kind(local: &LocalOp) -> Option<usize> {
    match local {
        LocalOp::TreeHashes { .. } => Some(0),
        LocalOp::LeafEntries { .. } => Some(1),
        LocalOp::Fetch { .. } => Some(2),
        LocalOp::MergeAll { .. } => Some(3),
        _ => None,
    }
}

/// One whole exchange: an operator's repair of every partition, driven
/// to its `Action::Repaired`.
fn exchange(coordinator: &mut Coordinator, a: &Sim, b: &Sim, ticket: u64) -> Pumped {
    let mut pumped = Pumped::default();
    // The anti-entropy budget refills on ticks (it starts empty).
    pump(coordinator, a, b, Input::Tick, &mut pumped);
    pumped = Pumped::default();
    let started = Instant::now();
    let report = pump(coordinator, a, b, Input::Repair { ticket, partitions: None }, &mut pumped);
    // (The first handle, which plans the repair, is in `seconds` only.)
    pumped.seconds = started.elapsed().as_secs_f64();
    let (done, report) = report.expect("the repair ended");
    assert_eq!(done, ticket);
    pumped.report = report;
    pumped
}

/// Hands `input` to the coordinator and carries out what follows, in
/// order, until nothing is left; returns the `Action::Repaired` seen.
fn pump(
    coordinator: &mut Coordinator,
    a: &Sim,
    b: &Sim,
    input: Input,
    pumped: &mut Pumped,
) -> Option<(u64, RepairReport)> {
    // One instant for the whole run: no timeout fires and the peer never
    // looks down.
    let now = Duration::from_secs(1);
    let mut out = Vec::new();
    let mut repaired = None;
    coordinator.handle(now, input, &mut out);
    let mut queue: VecDeque<Action> = out.drain(..).collect();
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Local { op, local } => {
                let kind = kind(&local);
                let started = Instant::now();
                let result = block_on(a.apply(local));
                if let Some(kind) = kind {
                    pumped.local[kind] += started.elapsed().as_secs_f64();
                }
                let started = Instant::now();
                coordinator.handle(now, Input::Local { op, result }, &mut out);
                pumped.coordinating += started.elapsed().as_secs_f64();
            }
            Action::Send { op, to, request } => {
                assert_eq!(to, 2, "the only peer");
                let kind = match &request {
                    PeerRequest::TreeHashes { .. } => Some(0),
                    PeerRequest::LeafEntries { .. } => Some(1),
                    PeerRequest::Fetch { .. } => Some(2),
                    PeerRequest::Repair { .. } => Some(3),
                    _ => None,
                };
                if let Some(kind) = kind {
                    pumped.sends += 1;
                    pumped.kinds[kind] += 1;
                }
                let reply = match request.into_local() {
                    Some(local) => {
                        let kind = self::kind(&local);
                        let started = Instant::now();
                        let result = block_on(b.apply(local));
                        if let Some(kind) = kind {
                            pumped.remote[kind] += started.elapsed().as_secs_f64();
                        }
                        PeerReply::from_local(result)
                    }
                    // Heartbeats.
                    None => PeerReply::Pong,
                };
                match &reply {
                    PeerReply::Hashes(Some(hashes)) => pumped.hashes_seen += hashes.len() as u64,
                    PeerReply::Entries(Some(entries)) => {
                        pumped.entries_seen += entries.len() as u64;
                        pumped.entry_key_bytes +=
                            entries.iter().map(|(key, _)| key.len() as u64).sum::<u64>();
                    }
                    PeerReply::Failed { code, message } => {
                        panic!("peer failed: {code:?} {message}")
                    }
                    _ => {}
                }
                let started = Instant::now();
                coordinator.handle(now, Input::Peer { op, from: to, reply }, &mut out);
                pumped.coordinating += started.elapsed().as_secs_f64();
            }
            // No timeout fires: every answer comes at once.
            Action::Timer { .. } => {}
            Action::Repaired { ticket, report } => {
                assert!(repaired.is_none(), "one answer per repair");
                repaired = Some((ticket, report));
            }
            Action::Reply { .. } => panic!("no client asked"),
        }
        queue.extend(out.drain(..));
    }
    repaired
}

/// Asserts that every partition's root is the same on both replicas;
/// returns the partitions compared.
fn assert_converged(a: &Sim, b: &Sim) -> u32 {
    for partition in 0..PARTITIONS {
        let root = |replica: &Sim| {
            replica.tree_hashes(partition, 0, &[0]).expect("level 0").expect("a built tree")
        };
        assert_eq!(root(a), root(b), "partition {partition}'s roots differ after the exchange");
    }
    PARTITIONS
}

fn exchanges(coordinator: &mut Coordinator, a: &Sim, b: &Sim) {
    println!(
        "{:>5} | {:>9} {:>8} {:>7} | {:>6} {:>7} | {:>8} | {:>7} {:>8} | {:>7} {:>8} | {:>5} {:>19} | {:>10} | {:>9} | roots",
        "d",
        "exchanges",
        "parts≠",
        "leaves≠",
        "hashes",
        "entries",
        "repaired",
        "keys in",
        "bytes in",
        "keys out",
        "bytes out",
        "sends",
        "(hash/leaf/fet/rep)",
        "wire est.",
        "time",
    );
    for (case, d) in [0u64, 10, 1000].into_iter().enumerate() {
        let case = case as u64;
        diverge(a, b, case, d);
        let pumped = exchange(coordinator, a, b, case + 1);
        let report = pumped.report;
        assert_eq!(report.hashes, pumped.hashes_seen);
        assert_eq!(report.entries, pumped.entries_seen);
        assert_eq!(report.skipped, 0, "{report:?}");
        assert_eq!(report.keys_repaired, d, "{report:?}");
        let wire = report.hashes * 8
            + pumped.entry_key_bytes
            + report.entries * 8
            + report.bytes_received
            + report.bytes_sent
            + pumped.sends * FRAME_HEADER;
        let compared = assert_converged(a, b);
        let [hashes, leaves, fetches, repairs] = pumped.kinds;
        println!(
            "{:>5} | {:>9} {:>8} {:>7} | {:>6} {:>7} | {:>8} | {:>7} {:>8} | {:>7} {:>8} | {:>5} {:>19} | {:>10} | {:>7.1} ms | {compared} equal",
            d,
            report.exchanges,
            report.partitions_differing,
            report.leaves_differing,
            report.hashes,
            report.entries,
            report.keys_repaired,
            report.keys_received,
            report.bytes_received,
            report.keys_sent,
            report.bytes_sent,
            pumped.sends,
            format!("{hashes}/{leaves}/{fetches}/{repairs}"),
            format!("{:.1} KiB", wire as f64 / 1024.0),
            pumped.seconds * 1e3,
        );
        let ms = |seconds: [f64; 4]| seconds.map(|s| format!("{:.1}", s * 1e3)).join("/");
        println!(
            "{:>5}   time split (ms, hashes/leaf entries/fetch/merge): initiator {}, peer {}, coordinator {:.1}",
            "",
            ms(pumped.local),
            ms(pumped.remote),
            pumped.coordinating * 1e3,
        );
    }
}

/// Per-call latency of `Replica::merge` of a newer set of an existing key.
fn merge_latency(a: &Sim) -> (Histogram<u64>, f64) {
    let coordinator = Actor::new(9, 0);
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut total = 0.0;
    for j in 0..MERGES {
        let i = (j * 7919 * 31 + 7) % KEYS;
        let key = key(i);
        let partition = partition_of(&key, PARTITIONS);
        let mut set = block_on(a.read(partition, &key)).expect("a read");
        set.write(coordinator, &set.context(), Some(value(i, 100 + j))).expect("a write");
        let started = Instant::now();
        let merged = block_on(a.merge(partition, &key, &set)).expect("a merge");
        let elapsed = started.elapsed();
        black_box(merged);
        total += elapsed.as_secs_f64();
        histogram.record((elapsed.as_nanos() as u64).max(1)).expect("in range");
    }
    (histogram, total)
}

/// What the tree adds to each write, on partition 0's real keys and sets:
/// ns per `MerkleTree::update`, and per `entry_hash` of a stored set.
fn tree_cost(a: &Sim) -> (f64, f64, usize, usize) {
    let all: Vec<u16> = (0..LEAVES as u16).collect();
    let entries = block_on(a.leaf_entries(0, &all)).expect("leaves").expect("a built tree");
    let keys: Vec<Vec<u8>> = entries.iter().map(|(key, _)| key.clone()).collect();
    let mut hashes: Vec<u64> = entries.iter().map(|&(_, entry)| entry).collect();
    let mut tree = MerkleTree::build(entries);
    let n = keys.len();

    let started = Instant::now();
    for step in 0..TREE_UPDATES {
        let i = step as usize % n;
        let old = hashes[i];
        let new = old.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(u64::from(step)) | 1;
        tree.update(black_box(&keys[i]), Some(old), Some(new));
        hashes[i] = new;
    }
    let update_ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(TREE_UPDATES);
    black_box(tree.root());

    let set = block_on(a.read(0, &keys[0])).expect("a read").encode();
    let started = Instant::now();
    for k in keys.iter().cycle().take(TREE_UPDATES as usize) {
        black_box(entry_hash(black_box(k), black_box(&set)));
    }
    let hash_ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(TREE_UPDATES);
    (update_ns, hash_ns, n, set.len())
}

fn main() {
    let a = replica(1, 1);
    let b = replica(2, 2);
    let load_seconds = load(&a, &b);
    let built = (build_trees(&a), build_trees(&b));
    println!(
        "loaded {KEYS} keys ({VALUE_BYTES}-byte values) into 2 replicas, {PARTITIONS} partitions, in {load_seconds:.1} s; \
         tree build calls after load: {} and {} (a fresh store's trees are updated by the writes)",
        built.0, built.1,
    );

    let member = |id| Member { id, addr: format!("node-{id}"), weight: 1, zone: String::new() };
    let ring = Ring::new(PARTITIONS, vec![member(1), member(2)], 1).expect("a valid ring");
    let mut coordinator = Coordinator::new(
        1,
        ClusterOptions {
            n: 2,
            r: 1,
            w: 1,
            anti_entropy_period: Duration::ZERO,
            anti_entropy_keys_per_second: u32::MAX,
            anti_entropy_bytes_per_second: u64::MAX,
            ..ClusterOptions::default()
        },
    );
    coordinator.set_ring(Arc::new(ring));
    exchanges(&mut coordinator, &a, &b);

    let (update_ns, hash_ns, partition_keys, set_bytes) = tree_cost(&a);
    let (histogram, merge_seconds) = merge_latency(&a);
    let mean_us = merge_seconds * 1e6 / MERGES as f64;
    println!(
        "Replica::merge (newer set, existing key, {MERGES} calls): p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.2} us  mean {:.2} us",
        histogram.value_at_quantile(0.50) as f64 / 1e3,
        histogram.value_at_quantile(0.99) as f64 / 1e3,
        histogram.value_at_quantile(0.999) as f64 / 1e3,
        histogram.max() as f64 / 1e3,
        mean_us,
    );
    let tree_ns = update_ns + 2.0 * hash_ns;
    println!(
        "MerkleTree::update {update_ns:.1} ns ({partition_keys}-key partition 0 tree); entry_hash {hash_ns:.1} ns ({set_bytes}-byte set)"
    );
    println!(
        "=> the tree costs about {tree_ns:.0} ns (one update + two entry hashes) of a {:.2} us (p50) write: {:.1}%",
        histogram.value_at_quantile(0.50) as f64 / 1e3,
        tree_ns * 100.0 / histogram.value_at_quantile(0.50) as f64,
    );
}
