//! `holdfast store bench`: the store's throughput and latency, next to the
//! disk's physical floor measured in the same run.
//!
//! A store number means little alone: the same code gives ten times the
//! throughput on a disk whose `fdatasync` takes 50 µs as on one where it
//! takes 500. So the bench first measures the floor in the very directory
//! it then writes the store to, through glommio's DMA files (the same
//! `O_DIRECT` path on the same io_uring the store uses):
//!
//! 1. sequential write bandwidth: 1 MiB writes, one at a time (the store
//!    too has at most one write in flight), then one `fdatasync`;
//! 2. 4 KiB appends, each followed by `fdatasync` (the cost of one durable
//!    group commit that extends a file), and the write alone;
//! 3. 4 KiB writes + `fdatasync` into preallocated space, which is how the
//!    store writes its segments.
//!
//! Then it opens a store in `DIR/store`, puts `count` keys from
//! `concurrency` tasks (many writers in flight is what lets group commit
//! share one `fdatasync` among them), reads them all back in a random order
//! verifying every value, closes the store and measures the restart.
//!
//! Latency is measured per operation, from the call to its completion, in
//! microseconds. This is a closed loop (each task issues its next operation
//! when the last one completes), so it measures what the store sustains,
//! not how it behaves at a fixed offered load; the load generator does that.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;
use holdfast_engine::disk::dma::DmaDisk;
use holdfast_engine::store::{RecoveryReport, StoreOptions, StoreStats, SyncPolicy};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{
    GlommioResultExt, Outcome, human_bytes, latency_histogram, ms, on_executor, record_latency,
};

type Store = holdfast_engine::store::Store<DmaDisk>;

/// The floor's scratch file, in the bench directory beside `store/`.
const FLOOR_FILE: &str = "holdfast-bench-floor.tmp";
/// The size of one sequential write of the floor.
const FLOOR_WRITE_BYTES: usize = 1 << 20;
/// The size of one synced write of the floor: one aligned block.
const FLOOR_BLOCK_BYTES: usize = 4096;
/// Keys are spread over this many partitions, as a shard's would be.
const PARTITIONS: u64 = 1024;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The directory to measure in: the floor's scratch file goes here and
    /// the store into DIR/store. Created if missing.
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Keys to put, then get.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// When writes are acknowledged: always (fdatasync, shared by a group
    /// commit), never, or interval:MS (a task syncs every MS milliseconds).
    #[arg(long, default_value = "always")]
    pub fsync: SyncPolicy,
    /// Concurrent tasks issuing operations, each one at a time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: u32,
    /// Bytes per key (at least 8: a key holds its number).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    pub key_size: u32,
    /// Write into a store directory that already holds data.
    #[arg(long)]
    pub reuse: bool,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// MiB the floor's sequential write measurement writes (0 skips it).
    #[arg(long, default_value_t = 256)]
    pub floor_mib: u64,
    /// Synced 4 KiB writes the floor's latency measurements make, per kind
    /// (0 skips them).
    #[arg(long, default_value_t = 2000)]
    pub floor_syncs: u64,
    /// The seed of the read order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: BenchArgs) -> Result<Outcome> {
    let options = StoreOptions { sync: args.fsync, ..StoreOptions::default() };
    ensure!(
        args.value_size <= options.value_bytes_max,
        "--value-size {} is over the store's limit of {} bytes",
        args.value_size,
        options.value_bytes_max
    );
    fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let store_dir = args.dir.join("store");
    if !args.reuse && holds_files(&store_dir)? {
        bail!(
            "{} already holds files; pass --reuse to write into that store, or point --dir at \
             an empty directory",
            store_dir.display()
        );
    }
    let json = args.json;
    let report = on_executor("holdfast-bench", move || async move {
        let floor = measure_floor(&args).await?;
        let store = bench_store(&args, store_dir, options).await?;
        Ok(Report { args, floor, store })
    })?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(Outcome::Done)
}

/// Whether `dir` exists and holds anything.
fn holds_files(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Everything one run measured.
#[derive(Debug)]
struct Report {
    args: BenchArgs,
    floor: Floor,
    store: StoreResults,
}

#[derive(Debug)]
struct Floor {
    /// Bytes written sequentially and how long that took, final sync included.
    sequential_bytes: u64,
    sequential: Duration,
    /// 4 KiB appends: the write alone, and the write with its `fdatasync`.
    append_write: Histogram<u64>,
    append_synced: Histogram<u64>,
    /// 4 KiB writes + `fdatasync` into preallocated space.
    preallocated_synced: Histogram<u64>,
}

#[derive(Debug)]
struct StoreResults {
    /// What opening the store found (empty unless `--reuse`).
    opened: RecoveryReport,
    put: Phase,
    get: Phase,
    stats: StoreStats,
    bytes_on_disk: u64,
    /// The restart after a clean close.
    reopen: Duration,
    recovery: RecoveryReport,
}

/// One measured phase: `ops` operations moving `bytes` of keys and values.
#[derive(Debug)]
struct Phase {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

// ---------------------------------------------------------------------------
// The floor.

async fn measure_floor(args: &BenchArgs) -> Result<Floor> {
    let path = args.dir.join(FLOOR_FILE);
    // The name is this tool's own; one left by an interrupted run is stale.
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", path.display())),
    }
    // glommio probes io_uring's support for a device with a read at offset
    // 0 of the first DMA file it opens on it; an empty file makes the probe
    // pick the wrong ring and later reads fail with EOPNOTSUPP. So the file
    // is made non-empty with ordinary I/O before the DMA open (as the
    // store's `DmaDisk::create` does for every file it makes).
    fs::write(&path, [0xa5; FLOOR_BLOCK_BYTES])
        .with_context(|| format!("creating {}", path.display()))?;
    let measured = async {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .into_io()
            .with_context(|| format!("opening {} for direct I/O", path.display()))?;
        let floor = measure_floor_in(&file, args).await;
        file.close().await.into_io().context("closing the floor's file")?;
        floor
    }
    .await;
    let removed = fs::remove_file(&path).with_context(|| format!("removing {}", path.display()));
    let floor = measured?;
    removed?;
    Ok(floor)
}

async fn measure_floor_in(file: &DmaFile, args: &BenchArgs) -> Result<Floor> {
    // Sequential bandwidth.
    let writes = args.floor_mib * (1 << 20) / FLOOR_WRITE_BYTES as u64;
    let began = Instant::now();
    for i in 0..writes {
        write_block(file, i * FLOOR_WRITE_BYTES as u64, FLOOR_WRITE_BYTES, i).await?;
    }
    file.fdatasync().await.into_io().context("fdatasync of the floor's file")?;
    let sequential = began.elapsed();
    let sequential_bytes = writes * FLOOR_WRITE_BYTES as u64;

    // 4 KiB appends, each made durable before the next. The file grows
    // with every one, so each `fdatasync` also commits the new size.
    let mut end = sequential_bytes.max(FLOOR_BLOCK_BYTES as u64);
    let mut append_write = latency_histogram();
    let mut append_synced = latency_histogram();
    for i in 0..args.floor_syncs {
        let began = Instant::now();
        write_block(file, end, FLOOR_BLOCK_BYTES, i).await?;
        record_latency(&mut append_write, began.elapsed());
        file.fdatasync().await.into_io().context("fdatasync of the floor's file")?;
        record_latency(&mut append_synced, began.elapsed());
        end += FLOOR_BLOCK_BYTES as u64;
    }

    // The same into space reserved beforehand, as the store's preallocated
    // segments are written.
    let mut preallocated_synced = latency_histogram();
    if args.floor_syncs > 0 {
        let reserved = args.floor_syncs * FLOOR_BLOCK_BYTES as u64;
        file.pre_allocate(end + reserved, false)
            .await
            .into_io()
            .context("preallocating the floor's file")?;
        file.fdatasync().await.into_io().context("fdatasync of the floor's file")?;
        for i in 0..args.floor_syncs {
            let began = Instant::now();
            write_block(file, end, FLOOR_BLOCK_BYTES, i).await?;
            file.fdatasync().await.into_io().context("fdatasync of the floor's file")?;
            record_latency(&mut preallocated_synced, began.elapsed());
            end += FLOOR_BLOCK_BYTES as u64;
        }
    }
    Ok(Floor { sequential_bytes, sequential, append_write, append_synced, preallocated_synced })
}

/// Writes `len` bytes of a pattern that changes with `i` at `offset`.
async fn write_block(file: &DmaFile, offset: u64, len: usize, i: u64) -> Result<()> {
    let mut buffer = file.alloc_dma_buffer(len);
    // Not zeros: some devices and layers treat zeroed blocks specially.
    buffer.as_bytes_mut().fill(i as u8 | 1);
    let written =
        file.write_at(buffer, offset).await.into_io().context("write to the floor's file")?;
    ensure!(written == len, "short write to the floor's file: {written} of {len} bytes");
    Ok(())
}

// ---------------------------------------------------------------------------
// The store.

/// How keys and values are made: both are derived from a key's number, so
/// that a read can be verified without keeping what was written.
#[derive(Debug, Clone, Copy)]
struct Workload {
    count: u64,
    key_size: usize,
    value_size: usize,
}

impl Workload {
    fn partition(i: u64) -> u32 {
        (i % PARTITIONS) as u32
    }

    /// The key of number `i`: `i` big-endian, then filler.
    fn key(&self, i: u64, key: &mut Vec<u8>) {
        key.clear();
        key.extend_from_slice(&i.to_be_bytes());
        key.resize(self.key_size, b'-');
    }

    /// The value of number `i`: a pseudo-random stream seeded by `i`.
    fn value(&self, i: u64, value: &mut Vec<u8>) {
        value.clear();
        let mut state = i;
        while value.len() < self.value_size {
            let word = splitmix64(&mut state).to_le_bytes();
            let take = word.len().min(self.value_size - value.len());
            value.extend_from_slice(&word[..take]);
        }
    }

    /// Bytes of key and value one operation moves.
    fn bytes_per_op(&self) -> u64 {
        (self.key_size + self.value_size) as u64
    }
}

/// One step of SplitMix64: fast, and good enough to fill values.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn bench_store(
    args: &BenchArgs,
    dir: PathBuf,
    options: StoreOptions,
) -> Result<StoreResults> {
    let workload = Workload {
        count: args.count,
        key_size: args.key_size as usize,
        value_size: args.value_size,
    };
    let disk = DmaDisk::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let (store, opened) = Store::open(disk, options.clone())
        .await
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let store = Rc::new(store);

    let put = run_phase(&store, workload, args.concurrency, None, PhaseKind::Put).await?;
    let stats = store.stats();

    let mut order: Vec<u64> = (0..workload.count).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(args.seed));
    let get = run_phase(&store, workload, args.concurrency, Some(order), PhaseKind::Get).await?;

    let bytes_on_disk = store.space().bytes_total;
    let store =
        Rc::try_unwrap(store).map_err(|_| anyhow!("a finished task still holds the store"))?;
    store.close().await.context("closing the store")?;

    let began = Instant::now();
    let disk = DmaDisk::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let (store, recovery) =
        Store::open(disk, options).await.context("reopening the store after closing it")?;
    let reopen = began.elapsed();
    ensure!(
        args.reuse || recovery.live_keys == workload.count,
        "the reopened store holds {} keys instead of {}",
        recovery.live_keys,
        workload.count
    );
    store.close().await.context("closing the reopened store")?;
    Ok(StoreResults { opened, put, get, stats, bytes_on_disk, reopen, recovery })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhaseKind {
    Put,
    Get,
}

/// Runs `workload.count` operations from `concurrency` tasks: the numbers
/// in `order`, or ascending if there is none.
async fn run_phase(
    store: &Rc<Store>,
    workload: Workload,
    concurrency: u32,
    order: Option<Vec<u64>>,
    kind: PhaseKind,
) -> Result<Phase> {
    let shared = Rc::new(PhaseState {
        store: store.clone(),
        workload,
        order,
        next: Cell::new(0),
        latency: RefCell::new(latency_histogram()),
        finished: Cell::new(false),
    });
    // Under `Interval` whoever drives the store syncs it; here that is one
    // more task, which stops once the phase is over.
    let syncer = match (kind, store.options().sync) {
        (PhaseKind::Put, SyncPolicy::Interval { interval_ms }) => {
            Some(glommio::spawn_local(sync_every(shared.clone(), interval_ms)))
        }
        _ => None,
    };
    let began = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| glommio::spawn_local(run_operations(shared.clone(), kind)))
        .collect();
    // Every task runs to its end, even after one failed: a dropped task
    // could be leading a group commit, whose writers it would then fail.
    let mut failure = None;
    for task in tasks {
        if let Err(error) = task.await {
            failure.get_or_insert(error);
        }
    }
    let elapsed = began.elapsed();
    shared.finished.set(true);
    if let Some(syncer) = syncer {
        syncer.await?;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let shared =
        Rc::try_unwrap(shared).map_err(|_| anyhow!("a finished task still holds state"))?;
    Ok(Phase {
        ops: workload.count,
        bytes: workload.count * workload.bytes_per_op(),
        elapsed,
        latency: shared.latency.into_inner(),
    })
}

/// What the tasks of one phase share. They run on one thread, and no
/// borrow is held across an `.await`.
#[derive(Debug)]
struct PhaseState {
    store: Rc<Store>,
    workload: Workload,
    order: Option<Vec<u64>>,
    /// The position of the next operation to issue.
    next: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    finished: Cell<bool>,
}

impl PhaseState {
    /// The number of the next key to work on, if any is left.
    fn take(&self) -> Option<u64> {
        let position = self.next.get();
        if position >= self.workload.count {
            return None;
        }
        self.next.set(position + 1);
        Some(match &self.order {
            Some(order) => order[position as usize],
            None => position,
        })
    }
}

async fn run_operations(shared: Rc<PhaseState>, kind: PhaseKind) -> Result<()> {
    let workload = shared.workload;
    let mut key = Vec::with_capacity(workload.key_size);
    let mut value = Vec::with_capacity(workload.value_size);
    while let Some(i) = shared.take() {
        workload.key(i, &mut key);
        workload.value(i, &mut value);
        let partition = Workload::partition(i);
        let began = Instant::now();
        match kind {
            PhaseKind::Put => {
                shared
                    .store
                    .put(partition, &key, &value)
                    .await
                    .with_context(|| format!("put of key {i}"))?;
            }
            PhaseKind::Get => {
                let found = shared
                    .store
                    .get(partition, &key)
                    .await
                    .with_context(|| format!("get of key {i}"))?;
                match found {
                    Some(found) if found == value => {}
                    Some(found) => bail!(
                        "key {i} read back {} bytes that differ from the {} written",
                        found.len(),
                        value.len()
                    ),
                    None => bail!("key {i} was written but reads back as missing"),
                }
            }
        }
        record_latency(&mut shared.latency.borrow_mut(), began.elapsed());
    }
    Ok(())
}

async fn sync_every(shared: Rc<PhaseState>, interval_ms: u64) -> Result<()> {
    while !shared.finished.get() {
        glommio::timer::sleep(Duration::from_millis(interval_ms)).await;
        shared.store.sync().await.context("periodic sync")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

const PERCENTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

impl Report {
    fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing to a `Vec` cannot fail.
        let _ = self.write_text(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn write_text(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let args = &self.args;
        let floor = &self.floor;
        writeln!(out, "disk floor in {} (O_DIRECT through glommio):", args.dir.display())?;
        if floor.sequential_bytes > 0 {
            writeln!(
                out,
                "  sequential write: {} in 1 MiB writes, one in flight, then fdatasync: \
                 {:.3} s, {:.1} MiB/s",
                human_bytes(floor.sequential_bytes),
                floor.sequential.as_secs_f64(),
                mib_per_s(floor.sequential_bytes, floor.sequential)
            )?;
        }
        if args.floor_syncs > 0 {
            writeln!(out, "  {:<36}{}", "latency (ms)", latency_header())?;
            for (name, histogram) in [
                ("4 KiB append, write only", &floor.append_write),
                ("4 KiB append + fdatasync", &floor.append_synced),
                ("4 KiB preallocated + fdatasync", &floor.preallocated_synced),
            ] {
                writeln!(out, "  {name:<36}{}", latency_row(histogram))?;
            }
        }
        writeln!(out)?;
        writeln!(
            out,
            "store in {} (fsync {}, {} tasks, {} B keys, {} B values):",
            args.dir.join("store").display(),
            args.fsync,
            args.concurrency,
            args.key_size,
            args.value_size
        )?;
        let store = &self.store;
        if store.opened.records > 0 {
            writeln!(
                out,
                "  reused: opened with {} records, {} live keys",
                store.opened.records, store.opened.live_keys
            )?;
        }
        writeln!(
            out,
            "  {:<6}{:>10}{:>10}{:>12}{:>9}  {}",
            "phase",
            "ops",
            "seconds",
            "ops/s",
            "MB/s",
            latency_header()
        )?;
        for (name, phase) in [("put", &store.put), ("get", &store.get)] {
            let seconds = phase.elapsed.as_secs_f64();
            writeln!(
                out,
                "  {name:<6}{:>10}{:>10.3}{:>12.0}{:>9.1}  {}",
                phase.ops,
                seconds,
                per_second(phase.ops, phase.elapsed),
                per_second(phase.bytes, phase.elapsed) / 1e6,
                latency_row(&phase.latency)
            )?;
        }
        let stats = &store.stats;
        writeln!(
            out,
            "  group commit: {} puts in {} batches ({:.1} writes per batch), {} fdatasyncs, \
             {} written in {} segments",
            stats.puts,
            stats.batches,
            stats.puts as f64 / stats.batches.max(1) as f64,
            stats.syncs,
            human_bytes(stats.bytes_written),
            stats.segments_created
        )?;
        writeln!(out, "  records on disk: {}", human_bytes(store.bytes_on_disk))?;
        let recovery = &store.recovery;
        writeln!(
            out,
            "  restart after close: {:.3} ms; {} segments ({} from index files, {} scanned), \
             {} records, {} live keys, {} torn tails, {} corrupt records skipped",
            store.reopen.as_secs_f64() * 1e3,
            recovery.segments,
            recovery.index_files_used,
            recovery.segments_scanned,
            recovery.records,
            recovery.live_keys,
            recovery.torn_tails_truncated,
            recovery.corrupt_records_skipped
        )?;
        Ok(())
    }

    fn to_json(&self) -> Value {
        let args = &self.args;
        let floor = &self.floor;
        let store = &self.store;
        let phase = |phase: &Phase| {
            json!({
                "ops": phase.ops,
                "seconds": phase.elapsed.as_secs_f64(),
                "ops_per_s": per_second(phase.ops, phase.elapsed),
                "mb_per_s": per_second(phase.bytes, phase.elapsed) / 1e6,
                "latency_us": latency_json(&phase.latency),
            })
        };
        json!({
            "dir": args.dir.display().to_string(),
            "floor": {
                "sequential_bytes": floor.sequential_bytes,
                "sequential_seconds": floor.sequential.as_secs_f64(),
                "sequential_mib_per_s": mib_per_s(floor.sequential_bytes, floor.sequential),
                "append_write_latency_us": latency_json(&floor.append_write),
                "append_fdatasync_latency_us": latency_json(&floor.append_synced),
                "preallocated_fdatasync_latency_us": latency_json(&floor.preallocated_synced),
            },
            "store": {
                "fsync": args.fsync.to_string(),
                "concurrency": args.concurrency,
                "key_size": args.key_size,
                "value_size": args.value_size,
                "put": phase(&store.put),
                "get": phase(&store.get),
                "stats": {
                    "puts": store.stats.puts,
                    "batches": store.stats.batches,
                    "syncs": store.stats.syncs,
                    "bytes_written": store.stats.bytes_written,
                    "segments_created": store.stats.segments_created,
                },
                "bytes_on_disk": store.bytes_on_disk,
                "restart": {
                    "seconds": store.reopen.as_secs_f64(),
                    "segments": store.recovery.segments,
                    "index_files_used": store.recovery.index_files_used,
                    "segments_scanned": store.recovery.segments_scanned,
                    "records": store.recovery.records,
                    "live_keys": store.recovery.live_keys,
                    "torn_tails_truncated": store.recovery.torn_tails_truncated,
                    "corrupt_records_skipped": store.recovery.corrupt_records_skipped,
                },
            },
        })
    }
}

fn latency_header() -> String {
    let mut header: String = PERCENTILES.iter().map(|(name, _)| format!("{name:>9}")).collect();
    header.push_str(&format!("{:>9}", "max"));
    header
}

/// Percentiles and the maximum, in milliseconds.
fn latency_row(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "(none)".to_owned();
    }
    let mut row: String = PERCENTILES
        .iter()
        .map(|&(_, quantile)| format!("{:>9}", ms(histogram.value_at_quantile(quantile))))
        .collect();
    row.push_str(&format!("{:>9}", ms(histogram.max())));
    row
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("count".into(), histogram.len().into());
    for (name, quantile) in PERCENTILES {
        object.insert(name.into(), histogram.value_at_quantile(quantile).into());
    }
    object.insert("max".into(), histogram.max().into());
    Value::Object(object)
}

fn per_second(amount: u64, elapsed: Duration) -> f64 {
    amount as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    per_second(bytes, elapsed) / f64::from(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_values_reproducible() {
        let workload = Workload { count: 10, key_size: 12, value_size: 13 };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        workload.key(1, &mut a);
        workload.key(2, &mut b);
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
        workload.value(5, &mut a);
        workload.value(5, &mut b);
        assert_eq!((a.len(), &a), (13, &b));
        workload.value(6, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn an_empty_histogram_prints_no_percentiles() {
        assert_eq!(latency_row(&latency_histogram()), "(none)");
    }
}
