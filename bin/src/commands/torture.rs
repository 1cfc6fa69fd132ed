//! `holdfast store torture`: the child process of the SIGKILL crash test
//! (`tests/crash_sigkill.rs`). Hidden from `--help`: it is a test's tool,
//! not an operator's.
//!
//! One run:
//! 1. opens the store in `--dir` with `fsync always` (and small segments, so
//!    that sealing, index files and compaction all happen within seconds);
//! 2. if `--expect FILE` is given, verifies every key slot against it and
//!    prints what it found, exiting 3 on any contradiction;
//! 3. with `--verify-only`, closes the store and exits 0; otherwise
//! 4. writes forever from [`WRITERS`] concurrent tasks, while a background
//!    task runs the store's maintenance (index files and compaction) every
//!    [`MAINTAIN_EVERY`], so that a kill can land in any of them.
//!
//! Write number `n` (from `--start` upward) goes to key slot `n % SLOTS`, so
//! keys are overwritten and compaction has dead records to reclaim; its
//! value is derived from `n` and `--seed` alone ([`value_of`]), 1 to 4000
//! bytes long, so any other write's value, or garbage, is told apart. Every
//! child of one crash test must be given the same seed.
//!
//! # The protocol with the parent (standard output, one line each, flushed)
//!
//! ```text
//! verified <slot> <n>      slot held the value of write n (during step 2)
//! verified <slot> none     slot held no value
//! verify ok                every slot agreed with the expectations
//! issued <n>               write n is about to be submitted
//! acked <n>                write n was acknowledged: it is durable
//! ```
//!
//! The store assigns sequence numbers when a write is submitted, and no
//! task yields between taking its write number and submitting it, so write
//! numbers are in sequence order: the newest write of a slot that reached
//! the disk is the one with the highest number.
//!
//! # The expectations file
//!
//! One line per slot that was ever written: the slot, then the values it
//! may hold, as write numbers, or `none` if it may hold no value. A slot
//! not listed must hold no value. `#` starts a comment line.
//!
//! ```text
//! 17 none 517 1017     slot 17: no value, or write 517's, or write 1017's
//! 18 18 518            slot 18: write 18's value or write 518's
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use glommio::{Latency, Shares};
use holdfast_engine::disk::dma::DmaDisk;
use holdfast_engine::store::{StoreOptions, SyncPolicy};

use super::{GlommioResultExt, Outcome, on_executor};

type Store = holdfast_engine::store::Store<DmaDisk>;

/// Key slots; write `n` goes to slot `n % SLOTS`.
pub const SLOTS: u64 = 500;
/// Concurrent writing tasks, so that group commit batches several writes.
const WRITERS: usize = 8;
/// How often the background task runs the store's maintenance.
const MAINTAIN_EVERY: Duration = Duration::from_millis(50);
/// The largest value a write carries.
const VALUE_BYTES_MAX: usize = 4000;
/// Small segments, so that a run of a few hundred milliseconds seals some
/// and compacts some.
const SEGMENT_BYTES: u64 = 1 << 20;
/// A mismatch report lists this many problems, then counts the rest.
const MISMATCHES_SHOWN: usize = 20;
/// Slots are spread over a few partitions, as a shard's keys would be.
const PARTITIONS: u64 = 16;

#[derive(Debug, clap::Args)]
pub struct TortureArgs {
    /// The store's directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// The seed values are derived from; the same for every child of one test.
    #[arg(long)]
    pub seed: u64,
    /// The first write number: above every number an earlier child issued.
    #[arg(long)]
    pub start: u64,
    /// What each slot may hold, as the parent knows it (see the module doc).
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Exit 0 after verifying, without writing.
    #[arg(long)]
    pub verify_only: bool,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.none, self.writes.as_slice()) {
            (true, []) => f.write_str("no value (no write to it was issued)"),
            (true, writes) => write!(f, "no value, or the value of one of writes {writes:?}"),
            (false, writes) => write!(f, "the value of one of writes {writes:?}"),
        }
    }
}

/// A slot held what no acknowledged history allows. Exit code 3.
#[derive(Debug)]
pub struct Mismatch {
    pub problems: Vec<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verification failed in {} place(s):", self.problems.len())?;
        for problem in self.problems.iter().take(MISMATCHES_SHOWN) {
            write!(f, "\n  {problem}")?;
        }
        if self.problems.len() > MISMATCHES_SHOWN {
            write!(f, "\n  and {} more", self.problems.len() - MISMATCHES_SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Mismatch {}

/// What one slot may hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Allowed {
    /// Whether it may hold no value.
    none: bool,
    /// The writes whose value it may hold.
    writes: Vec<u64>,
}

pub fn run(args: TortureArgs) -> Result<Outcome> {
    let expectations = match &args.expect {
        Some(path) => Some(read_expectations(path)?),
        None => None,
    };
    on_executor("holdfast-torture", move || async move {
        let options = StoreOptions {
            sync: SyncPolicy::Always,
            segment_bytes_max: SEGMENT_BYTES,
            key_bytes_max: 64,
            value_bytes_max: VALUE_BYTES_MAX,
            ..StoreOptions::default()
        };
        let disk = DmaDisk::open(&args.dir)
            .with_context(|| format!("cannot open {}", args.dir.display()))?;
        let (store, recovery) = Store::open(disk, options)
            .await
            .with_context(|| format!("cannot open the store in {}", args.dir.display()))?;
        tracing::debug!(?recovery, "store opened");
        let mut problems = Vec::new();
        if recovery.corrupt_records_skipped > 0 || !recovery.damaged_segments.is_empty() {
            // A SIGKILL stops a process, not its disk: it can tear no
            // write that was submitted, so there is nothing to excuse this.
            problems.push(format!(
                "recovery skipped {} corrupt records in segments {:x?}",
                recovery.corrupt_records_skipped, recovery.damaged_segments
            ));
        }
        if let Some(expectations) = &expectations {
            verify(&store, args.seed, expectations, &mut problems).await?;
        }
        if !problems.is_empty() {
            return Err(Mismatch { problems }.into());
        }
        if expectations.is_some() {
            say(format_args!("verify ok"))?;
        }
        if args.verify_only {
            store.close().await.context("closing the store")?;
            return Ok(Outcome::Done);
        }
        write_forever(Rc::new(store), args.seed, args.start).await?;
        Ok(Outcome::Done)
    })
}

/// Checks every slot against `expectations`, printing what it found.
async fn verify(
    store: &Store,
    seed: u64,
    expectations: &BTreeMap<u64, Allowed>,
    problems: &mut Vec<String>,
) -> Result<()> {
    let none_allowed = Allowed { none: true, writes: Vec::new() };
    for slot in 0..SLOTS {
        let allowed = expectations.get(&slot).unwrap_or(&none_allowed);
        let value = store
            .get(partition_of(slot), &key_of(slot))
            .await
            .with_context(|| format!("reading slot {slot}"))?;
        match value {
            None if allowed.none => say(format_args!("verified {slot} none"))?,
            None => problems.push(format!("slot {slot} holds no value; it may hold {allowed}")),
            Some(value) => match allowed.writes.iter().find(|&&n| value_of(seed, n) == value) {
                Some(n) => say(format_args!("verified {slot} {n}"))?,
                None => problems.push(format!(
                    "slot {slot} holds {}; it may hold {allowed}",
                    describe(seed, slot, &value)
                )),
            },
        }
    }
    Ok(())
}

/// Says what a wrong value is, as far as it can be told: values of 8 bytes
/// or more begin with their write number.
fn describe(seed: u64, slot: u64, value: &[u8]) -> String {
    let claimed = value.get(..8).and_then(|head| head.try_into().ok()).map(u64::from_le_bytes);
    match claimed {
        Some(n) if value_of(seed, n) == value && n % SLOTS == slot => {
            format!("the value of write {n}")
        }
        Some(n) if value_of(seed, n) == value => {
            format!("the value of write {n}, which belongs to slot {}", n % SLOTS)
        }
        _ => format!("{} bytes that are no write's value", value.len()),
    }
}

/// Writes from [`WRITERS`] tasks until something fails; never returns `Ok`.
async fn write_forever(store: Rc<Store>, seed: u64, start: u64) -> Result<()> {
    let next = Rc::new(std::cell::Cell::new(start));
    let mut tasks: Vec<glommio::Task<Result<()>>> = Vec::new();
    for _ in 0..WRITERS {
        let (store, next) = (store.clone(), next.clone());
        tasks.push(glommio::spawn_local(async move {
            loop {
                // No `.await` between taking the number and submitting the
                // write: that keeps write numbers in sequence order.
                let n = next.get();
                next.set(n + 1);
                say(format_args!("issued {n}"))?;
                let slot = n % SLOTS;
                store
                    .put(partition_of(slot), &key_of(slot), &value_of(seed, n))
                    .await
                    .with_context(|| format!("write {n}"))?;
                say(format_args!("acked {n}"))?;
            }
        }));
    }
    // Maintenance is background work: it gets its own task queue with fewer
    // shares, as it would in a shard, so that it yields to the writers.
    let background = glommio::executor().create_task_queue(
        Shares::Static(100),
        Latency::NotImportant,
        "maintenance",
    );
    let maintenance = glommio::spawn_local_into(
        async move {
            loop {
                glommio::timer::sleep(MAINTAIN_EVERY).await;
                store.maintain().await.context("maintenance")?;
            }
        },
        background,
    )
    .into_io()
    .context("spawning the maintenance task")?;
    tasks.push(maintenance);
    // The first task to fail ends the run; the others are dropped, which
    // cancels them, and the process exits with the error.
    futures::future::try_join_all(tasks).await?;
    bail!("the writers stopped without an error")
}

/// Prints one protocol line and flushes it, so that the parent has seen
/// every line the process printed before it was killed. If the parent is
/// gone the write fails and the child ends rather than writing on.
fn say(line: fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to standard output")?;
    out.flush().context("flushing standard output")
}

fn key_of(slot: u64) -> Vec<u8> {
    format!("slot-{slot:03}").into_bytes()
}

fn partition_of(slot: u64) -> u32 {
    (slot % PARTITIONS) as u32
}

/// The value of write `n`: 1 to [`VALUE_BYTES_MAX`] bytes, starting with
/// `n` little-endian (as much of it as fits), then bytes drawn from a
/// generator seeded by `seed` and `n`.
pub fn value_of(seed: u64, n: u64) -> Vec<u8> {
    let mut state = seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let len = 1 + (splitmix64(&mut state) % VALUE_BYTES_MAX as u64) as usize;
    let mut value = Vec::with_capacity(len + 8);
    value.extend_from_slice(&n.to_le_bytes());
    while value.len() < len {
        value.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    value.truncate(len);
    value
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn read_expectations(path: &Path) -> Result<BTreeMap<u64, Allowed>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_expectations(&text).with_context(|| format!("in {}", path.display()))
}

fn parse_expectations(text: &str) -> Result<BTreeMap<u64, Allowed>> {
    let mut expectations = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let slot: u64 = match words.next().map(str::parse) {
            Some(Ok(slot)) if slot < SLOTS => slot,
            _ => bail!("line {}: expected a slot below {SLOTS}: {line:?}", number + 1),
        };
        let mut allowed = Allowed::default();
        for word in words {
            match word {
                "none" => allowed.none = true,
                _ => match word.parse::<u64>() {
                    Ok(n) if n % SLOTS == slot => allowed.writes.push(n),
                    Ok(n) => bail!("line {}: write {n} is not of slot {slot}", number + 1),
                    Err(_) => bail!("line {}: {word:?} is not a write number", number + 1),
                },
            }
        }
        if !allowed.none && allowed.writes.is_empty() {
            bail!("line {}: slot {slot} is allowed nothing", number + 1);
        }
        if expectations.insert(slot, allowed).is_some() {
            bail!("line {}: slot {slot} is listed twice", number + 1);
        }
    }
    Ok(expectations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_sized_and_carry_their_number() {
        let mut lengths = std::collections::BTreeSet::new();
        for n in 0..2000 {
            let value = value_of(7, n);
            assert_eq!(value, value_of(7, n));
            assert_ne!(value, value_of(8, n));
            assert!((1..=VALUE_BYTES_MAX).contains(&value.len()));
            if value.len() >= 8 {
                assert_eq!(value[..8], n.to_le_bytes());
            }
            lengths.insert(value.len());
        }
        assert!(lengths.len() > 1000, "sizes vary");
    }

    #[test]
    fn expectations_parse_and_refuse_nonsense() {
        let parsed = parse_expectations("# comment\n17 none 517 1017\n18 18\n").unwrap();
        assert_eq!(parsed[&17], Allowed { none: true, writes: vec![517, 1017] });
        assert_eq!(parsed[&18], Allowed { none: false, writes: vec![18] });
        assert!(parse_expectations("17 18").is_err(), "write 18 is slot 18's");
        assert!(parse_expectations("17").is_err(), "allowed nothing");
        assert!(parse_expectations("500 none").is_err(), "no such slot");
        assert!(parse_expectations("1 none\n1 none").is_err(), "listed twice");
    }

    #[test]
    fn a_wrong_value_is_described_by_the_write_it_came_from() {
        let value = value_of(3, 1234);
        assert!(value.len() >= 8, "this write's value is long enough to carry its number");
        assert_eq!(describe(3, 234, &value), "the value of write 1234");
        assert_eq!(describe(3, 1, &value), "the value of write 1234, which belongs to slot 234");
        assert_eq!(describe(3, 1, b"xyz"), "3 bytes that are no write's value");
    }
}
