//! [`SimDisk`]: a deterministic in-memory disk that fails the way real media
//! fail, from a seed.
//!
//! Every random choice (which fault to inject, how much of the unsynced data
//! a crash keeps, which bits flip) comes from one `ChaCha8Rng` seeded from
//! [`SimDiskOptions::seed`], and nothing else (no clock, no `HashMap` order)
//! influences behaviour, so one seed and one sequence of calls replay bit for
//! bit. The disk is single-threaded (`Rc<RefCell<_>>`), like the shard that
//! owns a real one.
//!
//! # Assumptions about the media
//!
//! This is the model the store is tested against. Anything a real device
//! does that is not listed here is outside what the store promises to
//! survive.
//!
//! - A file (an inode) has a durable image, a current image and the list of
//!   changes (writes, truncates, allocations) made since its last successful
//!   `sync_data`. Reads see the current image.
//! - At a crash ([`SimDisk::crash`]) each file becomes its durable image plus
//!   a prefix, chosen at random (possibly empty, possibly all), of its
//!   unsynced changes applied in order. The first change left out may be
//!   torn: a prefix of its sectors ([`SimDiskOptions::sector_bytes`]) lands.
//!   Unsynced writes persisting *in order* is an assumption: a device that
//!   reorders them can leave a hole before data that did land, and the store
//!   reports such a hole as corruption rather than silently losing it.
//! - Creating, renaming and removing names is durable only after
//!   `sync_dir`. A crash keeps a random prefix of the unsynced directory
//!   operations; a file whose name did not survive is gone. A removed name
//!   keeps its inode alive, readable, for the handles already open, until
//!   they are dropped or the process crashes.
//! - A failed `sync_data` (probability [`SimFaults::sync_eio`]) returns
//!   `EIO` and, as Linux does after a failed `fsync`, makes a random subset
//!   of that file's unsynced changes durable and forgets the rest: they are
//!   lost at the next crash even if a later `sync_data` succeeds. Reads keep
//!   seeing them until then.
//! - A failed `write_at` (probability [`SimFaults::write_eio`]) returns `EIO`
//!   after a random prefix of its sectors (possibly none) reached the
//!   current image, unsynced.
//! - A misdirected `write_at` (probability [`SimFaults::misdirect`]) reports
//!   success but lands at another aligned offset of the same file (within
//!   its length or just past it, never overlapping the intended range),
//!   leaving the intended range unchanged.
//! - Latent corruption ([`SimDisk::flip_bits`]) flips bits in both images,
//!   as a decayed sector would.
//! - Space: the lengths of all live files (named, or open) add up to at most
//!   [`SimDiskOptions::capacity_bytes`]. A write, truncate, allocate or
//!   create that would pass it fails with `ENOSPC` and changes nothing.
//! - After a crash, every handle opened before it fails: the process that
//!   held it is gone. The disk itself stays usable, as the restarted
//!   process's disk.
//! - With probability [`SimFaults::yield_probability`] an operation first
//!   returns `Poll::Pending` once, so that tasks sharing a single-threaded
//!   executor interleave around disk calls as they do on io_uring.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Disk, DiskFile, EIO, ENOSPC};

/// How to build a [`SimDisk`].
#[derive(Debug, Clone)]
pub struct SimDiskOptions {
    /// The seed of every random choice the disk makes.
    pub seed: u64,
    /// The alignment of every write, as [`Disk::alignment`] reports it.
    pub alignment: usize,
    /// The unit in which a write tears; divides `alignment`.
    pub sector_bytes: usize,
    /// The most bytes all live files may hold together.
    pub capacity_bytes: u64,
    /// The faults to inject from the start.
    pub faults: SimFaults,
}

impl SimDiskOptions {
    /// A fault-free 1 GiB disk with 4 KiB writes and 512-byte sectors.
    pub fn new(seed: u64) -> SimDiskOptions {
        SimDiskOptions {
            seed,
            alignment: 4096,
            sector_bytes: 512,
            capacity_bytes: 1 << 30,
            faults: SimFaults::default(),
        }
    }
}

/// Per-operation probabilities of each injected fault (0.0 to 1.0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimFaults {
    /// A `write_at` fails with `EIO` after a prefix of its sectors landed.
    pub write_eio: f64,
    /// A `sync_data` fails with `EIO`, losing some of the unsynced changes.
    pub sync_eio: f64,
    /// A `write_at` succeeds but lands at the wrong offset.
    pub misdirect: f64,
    /// An operation returns `Poll::Pending` once before it runs.
    pub yield_probability: f64,
}

impl SimFaults {
    fn assert_valid(&self) {
        for p in [self.write_eio, self.sync_eio, self.misdirect, self.yield_probability] {
            assert!((0.0..=1.0).contains(&p), "a fault probability must be in [0, 1], not {p}");
        }
    }
}

/// What the disk did, for tests to assert on and to print with a seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// `read_at` calls that reached the disk.
    pub reads: u64,
    /// `write_at` calls that reached the disk (failed ones included).
    pub writes: u64,
    /// `sync_data` calls that reached the disk (failed ones included).
    pub syncs: u64,
    /// `sync_dir` calls.
    pub dir_syncs: u64,
    /// Crashes simulated.
    pub crashes: u64,
    /// Writes failed with `EIO`.
    pub write_eio: u64,
    /// Syncs failed with `EIO`.
    pub sync_eio: u64,
    /// Writes that landed at the wrong offset.
    pub misdirects: u64,
    /// Operations refused with `ENOSPC`.
    pub enospc: u64,
    /// Writes torn by a crash.
    pub torn_writes: u64,
    /// Bits flipped by [`SimDisk::flip_bits`].
    pub bits_flipped: u64,
    /// Operations that yielded to the executor before running.
    pub yields: u64,
}

/// A deterministic in-memory [`Disk`] with seeded faults. Clones share one
/// disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

/// A handle to one file of a [`SimDisk`]. Clones share one open file.
#[derive(Clone)]
pub struct SimFile {
    state: Rc<RefCell<State>>,
    handle: Rc<Handle>,
}

type InodeId = u64;

/// One open file. Inodes hold `Weak` references to these, so an inode knows
/// whether a handle still keeps it alive without a `Drop` hook.
#[derive(Debug)]
struct Handle {
    inode: InodeId,
    /// The crash generation the handle was opened in; it is dead after.
    generation: u64,
    /// The name at open, for error messages.
    name: String,
}

#[derive(Debug)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug)]
enum DirOp {
    Create { name: String, inode: InodeId },
    Rename { from: String, to: String },
    Remove { name: String },
}

#[derive(Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Changes since the last successful `sync_data`, oldest first.
    pending: Vec<Change>,
    /// Whether `durable` with `pending` applied equals `current`. A failed
    /// sync and the corruption helpers break that link until the next crash.
    pending_explains_current: bool,
    handles: Vec<Weak<Handle>>,
}

impl Inode {
    fn has_open_handles(&mut self) -> bool {
        self.handles.retain(|handle| handle.strong_count() > 0);
        !self.handles.is_empty()
    }

    fn record(&mut self, change: Change) {
        apply(&mut self.current, &change);
        self.pending.push(change);
    }
}

struct State {
    rng: ChaCha8Rng,
    alignment: usize,
    sector_bytes: usize,
    capacity_bytes: u64,
    faults: SimFaults,
    /// Incremented by every crash; handles from an older one are dead.
    generation: u64,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    /// The directory as the running process sees it.
    names: BTreeMap<String, InodeId>,
    names_durable: BTreeMap<String, InodeId>,
    /// Directory operations since the last `sync_dir`, oldest first.
    names_pending: Vec<DirOp>,
    stats: SimStats,
}

impl State {
    fn roll(&mut self, probability: f64) -> bool {
        // Not drawing at all when a fault is off keeps fault-free runs on
        // the same random stream whatever the other probabilities are.
        probability > 0.0 && self.rng.random_bool(probability)
    }

    /// How many of `n` queued changes a crash keeps. Biased towards the
    /// edges (none, all), where off-by-one bugs live.
    fn prefix_len(&mut self, n: usize) -> usize {
        match self.rng.random_range(0..4) {
            0 => 0,
            1 => n,
            _ => self.rng.random_range(0..=n),
        }
    }

    fn live_inode(&mut self, handle: &Handle) -> io::Result<&mut Inode> {
        if handle.generation != self.generation {
            return Err(io::Error::other(format!(
                "simulated disk: the handle to {:?} was opened before a crash and is dead",
                handle.name
            )));
        }
        let inode = self.inodes.get_mut(&handle.inode);
        Ok(inode.expect("an inode with a live handle is never collected"))
    }

    fn used_bytes(&mut self) -> u64 {
        let named: BTreeSet<InodeId> = self.names.values().copied().collect();
        let mut used = 0;
        for (id, inode) in &mut self.inodes {
            if named.contains(id) || inode.has_open_handles() {
                used += inode.current.len() as u64;
            }
        }
        used
    }

    /// Refuses with `ENOSPC` an operation that would grow the live files by
    /// `growth` bytes past the capacity.
    fn reserve(&mut self, growth: u64) -> io::Result<()> {
        if growth > 0 && self.used_bytes() + growth > self.capacity_bytes {
            self.stats.enospc += 1;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }

    /// Drops the inodes nothing can reach any more: no current or durable
    /// name, no pending create, no open handle.
    fn collect_garbage(&mut self) {
        let mut reachable: BTreeSet<InodeId> = self.names.values().copied().collect();
        reachable.extend(self.names_durable.values().copied());
        for op in &self.names_pending {
            if let DirOp::Create { inode, .. } = op {
                reachable.insert(*inode);
            }
        }
        self.inodes.retain(|id, inode| reachable.contains(id) || inode.has_open_handles());
    }

    fn open_handle(&mut self, name: &str) -> io::Result<Rc<Handle>> {
        let Some(&inode) = self.names.get(name) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("simulated disk: no file named {name:?}"),
            ));
        };
        let handle = Rc::new(Handle { inode, generation: self.generation, name: name.into() });
        let entry = self.inodes.get_mut(&inode).expect("a named inode exists");
        entry.handles.push(Rc::downgrade(&handle));
        Ok(handle)
    }

    fn assert_aligned(&self, what: &str, offset: u64, len: usize) {
        let alignment = self.alignment as u64;
        assert!(
            offset.is_multiple_of(alignment) && (len as u64).is_multiple_of(alignment),
            "{what} at offset {offset} of {len} bytes is not aligned to {alignment}"
        );
    }
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => write_into(image, *offset, data),
        Change::SetLen(len) => image.resize(to_usize(*len), 0),
    }
}

/// Writes `data` at `offset`, filling any gap past the end with zeros.
fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = to_usize(offset);
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).expect("a simulated file fits in memory")
}

fn apply_dir_op(names: &mut BTreeMap<String, InodeId>, op: &DirOp) {
    match op {
        DirOp::Create { name, inode } => {
            assert!(names.insert(name.clone(), *inode).is_none(), "create of existing {name:?}");
        }
        DirOp::Rename { from, to } => {
            let inode = names.remove(from).expect("a rename's source exists when replayed");
            names.insert(to.clone(), inode);
        }
        DirOp::Remove { name } => {
            assert!(names.remove(name).is_some(), "remove of missing {name:?}");
        }
    }
}

fn assert_valid_name(name: &str) {
    assert!(
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']),
        "{name:?} is not a flat file name"
    );
}

/// A future that returns `Poll::Pending` once, waking itself at once, so
/// the executor runs the other ready tasks before this one goes on.
#[derive(Debug, Default)]
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Yields once with probability `yield_probability`. The borrow ends before
/// the await, so other tasks can use the disk meanwhile.
async fn maybe_yield(state: &RefCell<State>) {
    let yield_now = {
        let mut state = state.borrow_mut();
        let probability = state.faults.yield_probability;
        let yield_now = state.roll(probability);
        state.stats.yields += u64::from(yield_now);
        yield_now
    };
    if yield_now {
        YieldOnce::default().await;
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new(options: SimDiskOptions) -> SimDisk {
        assert!(options.sector_bytes > 0 && options.alignment > 0);
        assert!(
            options.alignment.is_multiple_of(options.sector_bytes),
            "sector size {} does not divide alignment {}",
            options.sector_bytes,
            options.alignment
        );
        options.faults.assert_valid();
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            alignment: options.alignment,
            sector_bytes: options.sector_bytes,
            capacity_bytes: options.capacity_bytes,
            faults: options.faults,
            generation: 0,
            inodes: BTreeMap::new(),
            next_inode: 0,
            names: BTreeMap::new(),
            names_durable: BTreeMap::new(),
            names_pending: Vec::new(),
            stats: SimStats::default(),
        };
        SimDisk { state: Rc::new(RefCell::new(state)) }
    }

    /// Cuts the power: every file and the directory keep what was durable
    /// plus a random in-order prefix of what was not (see the module doc),
    /// and every handle opened before fails from now on.
    pub fn crash(&self) {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.generation += 1;
        state.stats.crashes += 1;

        let ops = std::mem::take(&mut state.names_pending);
        let kept = state.prefix_len(ops.len());
        for op in &ops[..kept] {
            apply_dir_op(&mut state.names_durable, op);
        }
        state.names = state.names_durable.clone();
        let named: BTreeSet<InodeId> = state.names.values().copied().collect();
        state.inodes.retain(|id, _| named.contains(id));

        let ids: Vec<InodeId> = state.inodes.keys().copied().collect();
        for id in ids {
            let changes = std::mem::take(&mut state.inodes.get_mut(&id).expect("listed").pending);
            let kept = state.prefix_len(changes.len());
            let mut torn = None;
            if let Some(Change::Write { offset, data }) = changes.get(kept) {
                let sectors = data.len() / state.sector_bytes;
                if sectors > 1 && state.rng.random_bool(0.5) {
                    let landed = state.rng.random_range(1..sectors) * state.sector_bytes;
                    torn = Some((*offset, &data[..landed]));
                    state.stats.torn_writes += 1;
                }
            }
            let inode = state.inodes.get_mut(&id).expect("listed");
            for change in &changes[..kept] {
                apply(&mut inode.durable, change);
            }
            if let Some((offset, data)) = torn {
                write_into(&mut inode.durable, offset, data);
            }
            inode.current.clone_from(&inode.durable);
            inode.pending_explains_current = true;
            inode.handles.clear();
        }
    }

    /// Replaces the fault probabilities.
    pub fn set_faults(&self, faults: SimFaults) {
        faults.assert_valid();
        self.state.borrow_mut().faults = faults;
    }

    /// Replaces the capacity. Lowering it below what is used only refuses
    /// further growth.
    pub fn set_capacity(&self, bytes: u64) {
        self.state.borrow_mut().capacity_bytes = bytes;
    }

    /// Flips one bit in each of `count` distinct bytes (fewer if the disk
    /// holds fewer) chosen uniformly over the named files' contents, in both
    /// the current and the durable image. Returns the file and byte offset
    /// of each flip.
    pub fn flip_bits(&self, count: usize) -> Vec<(String, u64)> {
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        let files: Vec<(String, InodeId, u64)> = state
            .names
            .iter()
            .map(|(name, id)| (name.clone(), *id, state.inodes[id].current.len() as u64))
            .filter(|(_, _, len)| *len > 0)
            .collect();
        let total: u64 = files.iter().map(|(_, _, len)| len).sum();
        let count = count.min(to_usize(total));
        let mut chosen = BTreeSet::new();
        let mut flipped = Vec::with_capacity(count);
        while flipped.len() < count {
            let mut position = state.rng.random_range(0..total);
            let mut files_left = files.iter();
            let (name, id, _) = loop {
                let file = files_left.next().expect("a position below the total lies in a file");
                if position < file.2 {
                    break file;
                }
                position -= file.2;
            };
            if !chosen.insert((*id, position)) {
                continue;
            }
            let mask = 1u8 << state.rng.random_range(0..8);
            let inode = state.inodes.get_mut(id).expect("named");
            let byte = to_usize(position);
            inode.current[byte] ^= mask;
            if let Some(durable) = inode.durable.get_mut(byte) {
                *durable ^= mask;
            }
            inode.pending_explains_current &= inode.pending.is_empty();
            state.stats.bits_flipped += 1;
            flipped.push((name.clone(), position));
        }
        flipped
    }

    /// Test helper: writes `bytes` at `offset` of `name` into both images,
    /// as if the media held them, bypassing alignment, faults and capacity.
    pub fn overwrite(&self, name: &str, offset: u64, bytes: &[u8]) {
        self.with_named(name, |inode| {
            write_into(&mut inode.current, offset, bytes);
            write_into(&mut inode.durable, offset, bytes);
        });
    }

    /// Test helper: flips a bit in the middle of every occurrence of
    /// `pattern` in every named file, in both images (bit rot under a
    /// running node). Whether any was found.
    pub fn corrupt_bytes(&self, pattern: &[u8]) -> bool {
        if pattern.is_empty() {
            return false;
        }
        let names: Vec<String> = self.state.borrow().names.keys().cloned().collect();
        let mut found = false;
        for name in names {
            self.with_named(&name, |inode| {
                for image in [&mut inode.current, &mut inode.durable] {
                    let hits: Vec<usize> = image
                        .windows(pattern.len())
                        .enumerate()
                        .filter(|(_, window)| *window == pattern)
                        .map(|(at, _)| at)
                        .collect();
                    for at in hits {
                        image[at + pattern.len() / 2] ^= 0x10;
                        found = true;
                    }
                }
            });
        }
        found
    }

    /// Test helper: cuts or extends `name` to `len` bytes in both images, as
    /// a torn tail would leave it.
    pub fn truncate_durably(&self, name: &str, len: u64) {
        self.with_named(name, |inode| {
            inode.current.resize(to_usize(len), 0);
            inode.durable.resize(to_usize(len), 0);
        });
    }

    fn with_named(&self, name: &str, change: impl FnOnce(&mut Inode)) {
        let mut state = self.state.borrow_mut();
        let id = *state.names.get(name).unwrap_or_else(|| panic!("no file named {name:?}"));
        let inode = state.inodes.get_mut(&id).expect("named");
        change(inode);
        // Unsynced changes replayed at a crash would now undo part of this,
        // so the images no longer follow from each other.
        inode.pending_explains_current &= inode.pending.is_empty();
    }

    /// The current contents of `name`, as a read would see them.
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        state.names.get(name).map(|id| state.inodes[id].current.clone())
    }

    /// The bytes held by live files (named, or open), as counted against
    /// the capacity.
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow_mut().used_bytes()
    }

    /// What the disk did so far.
    pub fn stats(&self) -> SimStats {
        self.state.borrow().stats
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("SimDisk");
        if let Ok(state) = self.state.try_borrow() {
            out.field("generation", &state.generation)
                .field("names", &state.names)
                .field("faults", &state.faults)
                .field("stats", &state.stats);
        }
        out.finish_non_exhaustive()
    }
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn alignment(&self) -> usize {
        self.state.borrow().alignment
    }

    async fn create(&self, name: &str, header: &[u8]) -> io::Result<SimFile> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        assert_valid_name(name);
        assert!(!header.is_empty(), "a file starts with a non-empty header");
        state.assert_aligned("header", 0, header.len());
        if state.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("simulated disk: {name:?} already exists"),
            ));
        }
        state.reserve(header.len() as u64)?;
        let id = state.next_inode;
        state.next_inode += 1;
        let mut inode = Inode { pending_explains_current: true, ..Inode::default() };
        inode.record(Change::Write { offset: 0, data: header.to_vec() });
        state.inodes.insert(id, inode);
        state.names.insert(name.into(), id);
        state.names_pending.push(DirOp::Create { name: name.into(), inode: id });
        let handle = state.open_handle(name)?;
        Ok(SimFile { state: self.state.clone(), handle })
    }

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        maybe_yield(&self.state).await;
        let handle = self.state.borrow_mut().open_handle(name)?;
        Ok(SimFile { state: self.state.clone(), handle })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        if state.names.remove(name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("simulated disk: cannot remove {name:?}, no such file"),
            ));
        }
        state.names_pending.push(DirOp::Remove { name: name.into() });
        state.collect_garbage();
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        assert_valid_name(to);
        let Some(id) = state.names.remove(from) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("simulated disk: cannot rename {from:?}, no such file"),
            ));
        };
        state.names.insert(to.into(), id);
        // Renaming a name to itself changes nothing, as rename(2) says.
        if from != to {
            state.names_pending.push(DirOp::Rename { from: from.into(), to: to.into() });
            state.collect_garbage();
        }
        Ok(())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.dir_syncs += 1;
        for op in state.names_pending.drain(..) {
            apply_dir_op(&mut state.names_durable, &op);
        }
        assert_eq!(state.names_durable, state.names, "the directory log replays to the directory");
        state.collect_garbage();
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        maybe_yield(&self.state).await;
        Ok(self.state.borrow().names.keys().cloned().collect())
    }
}

impl DiskFile for SimFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        state.stats.reads += 1;
        let current = &state.live_inode(&self.handle)?.current;
        let start = to_usize(offset).min(current.len());
        let end = start.saturating_add(len).min(current.len());
        Ok(current[start..end].to_vec())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.writes += 1;
        let len_before = state.live_inode(&self.handle)?.current.len() as u64;
        state.assert_aligned("write", offset, data.len());
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        state.reserve(end.saturating_sub(len_before))?;

        let mut target = offset;
        let mut landed = data.len();
        let failed = state.roll(state.faults.write_eio);
        if failed {
            let sectors = data.len() / state.sector_bytes;
            landed = state.rng.random_range(0..=sectors) * state.sector_bytes;
        } else if state.roll(state.faults.misdirect) {
            // Aim at an aligned offset up to just past the end; give up on
            // the fault (not the write) if the pick overlaps the intended
            // range or would need space the disk lacks.
            let alignment = state.alignment as u64;
            let last = len_before.div_ceil(alignment);
            let pick = state.rng.random_range(0..=last) * alignment;
            let disjoint = pick + data.len() as u64 <= offset || pick >= end;
            let growth = (pick + data.len() as u64).saturating_sub(len_before);
            if disjoint && state.used_bytes() + growth <= state.capacity_bytes {
                target = pick;
                state.stats.misdirects += 1;
            }
        }
        let inode = state.live_inode(&self.handle)?;
        if landed > 0 {
            inode.record(Change::Write { offset: target, data: data[..landed].to_vec() });
        }
        if failed {
            state.stats.write_eio += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        Ok(())
    }

    async fn sync_data(&self) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut guard = self.state.borrow_mut();
        let state = &mut *guard;
        state.stats.syncs += 1;
        let pending = std::mem::take(&mut state.live_inode(&self.handle)?.pending);
        let failed = state.roll(state.faults.sync_eio);
        // After a failed sync the kernel has written back some of the dirty
        // data and dropped the rest; which part is up to the seed.
        let kept: Vec<bool> =
            pending.iter().map(|_| !failed || state.rng.random_bool(0.5)).collect();
        let inode = state.live_inode(&self.handle)?;
        for (change, _) in pending.iter().zip(kept).filter(|(_, kept)| *kept) {
            apply(&mut inode.durable, change);
        }
        if failed {
            inode.pending_explains_current = false;
            state.stats.sync_eio += 1;
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if inode.pending_explains_current {
            assert!(inode.durable == inode.current, "a sync makes the current image durable");
        }
        Ok(())
    }

    async fn len(&self) -> io::Result<u64> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        Ok(state.live_inode(&self.handle)?.current.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        let len_before = state.live_inode(&self.handle)?.current.len() as u64;
        state.reserve(len.saturating_sub(len_before))?;
        state.live_inode(&self.handle)?.record(Change::SetLen(len));
        Ok(())
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        maybe_yield(&self.state).await;
        let mut state = self.state.borrow_mut();
        let len_before = state.live_inode(&self.handle)?.current.len() as u64;
        if len <= len_before {
            return Ok(());
        }
        state.reserve(len - len_before)?;
        state.live_inode(&self.handle)?.record(Change::SetLen(len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::is_disk_full;
    use futures::executor::block_on;

    const BLOCK: usize = 4096;
    const SECTOR: usize = 512;

    fn disk(seed: u64) -> SimDisk {
        SimDisk::new(SimDiskOptions::new(seed))
    }

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; BLOCK]
    }

    /// A file named `name` holding `blocks` (one block each), synced and
    /// with its name synced.
    async fn durable_file(disk: &SimDisk, name: &str, blocks: &[u8]) -> SimFile {
        let file = disk.create(name, &block(0xAA)).await.unwrap();
        for (i, fill) in blocks.iter().enumerate() {
            file.write_at(((i + 1) * BLOCK) as u64, &block(*fill)).await.unwrap();
        }
        file.sync_data().await.unwrap();
        disk.sync_dir().await.unwrap();
        file
    }

    /// A random workload with every fault on; returns what a replay must
    /// reproduce.
    fn workload(seed: u64) -> (SimStats, Vec<(String, Vec<u8>)>) {
        let disk = disk(seed);
        disk.set_faults(SimFaults {
            write_eio: 0.05,
            sync_eio: 0.05,
            misdirect: 0.05,
            yield_probability: 0.1,
        });
        let mut ops = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
        block_on(async {
            // Errors are part of the workload: the replay must match them too.
            let mut files: Vec<SimFile> = Vec::new();
            for step in 0..300 {
                let name = format!("f{}", ops.random_range(0..6));
                let file = (!files.is_empty()).then(|| files[step % files.len()].clone());
                match (ops.random_range(0..10), file) {
                    (0, _) => files.extend(disk.create(&name, &block(1)).await.ok()),
                    (1, _) => files.extend(disk.open(&name).await.ok()),
                    (2, _) => _ = disk.rename(&name, "f0").await,
                    (3, _) => _ = disk.remove(&name).await,
                    (4, _) => _ = disk.sync_dir().await,
                    (5, _) if ops.random_bool(0.1) => {
                        disk.crash();
                        files.clear();
                    }
                    (6, Some(file)) => _ = file.sync_data().await,
                    (7, Some(file)) if ops.random_bool(0.5) => _ = file.allocate(5 * 4096).await,
                    (7, Some(file)) => _ = file.truncate(ops.random_range(0..4) * 4096).await,
                    (_, Some(file)) => {
                        let offset = ops.random_range(0..8) * BLOCK as u64;
                        _ = file.write_at(offset, &block(step as u8)).await;
                    }
                    _ => {}
                }
            }
        });
        let names = block_on(disk.list()).unwrap();
        let contents = names.into_iter().map(|n| (n.clone(), disk.contents(&n).unwrap())).collect();
        (disk.stats(), contents)
    }

    #[test]
    fn same_seed_replays_bit_for_bit() {
        let mut total = SimStats::default();
        for seed in 0..20 {
            let first = workload(seed);
            assert_eq!(first, workload(seed), "seed {seed}");
            total.crashes += first.0.crashes;
            total.torn_writes += first.0.torn_writes;
            total.write_eio += first.0.write_eio;
            total.sync_eio += first.0.sync_eio;
            total.misdirects += first.0.misdirects;
            total.yields += first.0.yields;
        }
        assert!(total.crashes > 0 && total.torn_writes > 0 && total.yields > 0, "{total:?}");
        assert!(total.write_eio > 0 && total.sync_eio > 0 && total.misdirects > 0, "{total:?}");
        assert_ne!(workload(1), workload(2));
    }

    #[test]
    fn synced_data_survives_every_crash() {
        for seed in 0..200 {
            let disk = disk(seed);
            block_on(async {
                let file = durable_file(&disk, "seg", &[1, 2, 3]).await;
                let synced = disk.contents("seg").unwrap();
                file.write_at(4 * BLOCK as u64, &block(4)).await.unwrap();
                file.truncate(BLOCK as u64 * 2).await.unwrap();
                disk.crash();
                let after = disk.contents("seg").unwrap();
                assert!(after.len() >= 2 * BLOCK, "seed {seed}");
                assert_eq!(after[..2 * BLOCK], synced[..2 * BLOCK], "seed {seed}");
            });
        }
    }

    #[test]
    fn unsynced_appends_survive_as_an_in_order_prefix_with_a_torn_last_write() {
        let (mut none, mut all, mut torn) = (false, false, false);
        for seed in 0..300 {
            let disk = disk(seed);
            block_on(async {
                let file = durable_file(&disk, "seg", &[]).await;
                for fill in 1..=4u8 {
                    file.write_at(u64::from(fill) * BLOCK as u64, &block(fill)).await.unwrap();
                }
            });
            disk.crash();
            let after = disk.contents("seg").unwrap();
            assert_eq!(after[..BLOCK], block(0xAA), "seed {seed}");
            let tail = &after[BLOCK..];
            assert_eq!(tail.len() % SECTOR, 0, "seed {seed}: tears at sector boundaries");
            for (i, chunk) in tail.chunks(BLOCK).enumerate() {
                assert!(chunk.iter().all(|b| usize::from(*b) == i + 1), "seed {seed}");
            }
            none |= tail.is_empty();
            all |= tail.len() == 4 * BLOCK;
            torn |= !tail.len().is_multiple_of(BLOCK);
        }
        assert!(none && all && torn, "every crash outcome shows up: {none} {all} {torn}");
    }

    #[test]
    fn unsynced_directory_changes_are_lost_unless_synced() {
        let mut lost = 0;
        for seed in 0..100 {
            let disk = disk(seed);
            block_on(async {
                durable_file(&disk, "synced", &[1]).await;
                let file = disk.create("unsynced", &block(0xBB)).await.unwrap();
                file.sync_data().await.unwrap();
                disk.rename("synced", "renamed").await.unwrap();
            });
            disk.crash();
            assert!(disk.contents("synced").is_some() != disk.contents("renamed").is_some());
            let survivor = disk.contents("synced").or(disk.contents("renamed")).unwrap();
            assert_eq!(survivor, [block(0xAA), block(1)].concat(), "seed {seed}");
            lost += usize::from(disk.contents("unsynced").is_none());
        }
        assert!(lost > 0 && lost < 100, "an unsynced create survives sometimes: {lost}");
    }

    #[test]
    fn failed_sync_loses_data_even_after_a_later_sync_succeeds() {
        let mut lost = 0;
        for seed in 0..50 {
            let disk = disk(seed);
            block_on(async {
                let file = durable_file(&disk, "seg", &[]).await;
                for fill in 1..=8u8 {
                    file.write_at(u64::from(fill) * BLOCK as u64, &block(fill)).await.unwrap();
                }
                let written = disk.contents("seg").unwrap();
                disk.set_faults(SimFaults { sync_eio: 1.0, ..SimFaults::default() });
                assert_eq!(file.sync_data().await.unwrap_err().raw_os_error(), Some(EIO));
                assert_eq!(file.read_at(0, usize::MAX).await.unwrap(), written);
                disk.set_faults(SimFaults::default());
                file.sync_data().await.unwrap();
                disk.crash();
                lost += usize::from(disk.contents("seg").unwrap() != written);
            });
        }
        assert!(lost > 0, "some seed loses data written before a failed sync");
    }

    #[test]
    fn write_eio_lands_at_most_a_sector_prefix() {
        for seed in 0..50 {
            let disk = disk(seed);
            block_on(async {
                let file = durable_file(&disk, "seg", &[1]).await;
                disk.set_faults(SimFaults { write_eio: 1.0, ..SimFaults::default() });
                let error = file.write_at(BLOCK as u64, &block(9)).await.unwrap_err();
                assert_eq!(error.raw_os_error(), Some(EIO));
                let range = disk.contents("seg").unwrap()[BLOCK..].to_vec();
                let landed = range.iter().take_while(|b| **b == 9).count();
                assert_eq!(landed % SECTOR, 0);
                assert!(range[landed..].iter().all(|b| *b == 1), "seed {seed}");
            });
        }
    }

    #[test]
    fn full_disk_changes_nothing() {
        let disk = SimDisk::new(SimDiskOptions {
            capacity_bytes: 2 * BLOCK as u64,
            ..SimDiskOptions::new(7)
        });
        block_on(async {
            let file = durable_file(&disk, "seg", &[1]).await;
            let before = disk.contents("seg").unwrap();
            let full = file.write_at(2 * BLOCK as u64, &block(2)).await.unwrap_err();
            assert!(is_disk_full(&full));
            assert!(is_disk_full(&file.allocate(3 * BLOCK as u64).await.unwrap_err()));
            assert!(is_disk_full(&file.truncate(3 * BLOCK as u64).await.unwrap_err()));
            assert!(is_disk_full(&disk.create("other", &block(3)).await.unwrap_err()));
            assert_eq!(disk.contents("seg").unwrap(), before);
            assert_eq!(disk.list().await.unwrap(), ["seg"]);
            assert_eq!(disk.stats().enospc, 4);
            // Overwriting in place needs no space.
            file.write_at(BLOCK as u64, &block(5)).await.unwrap();
            // A removed file holds its space until its last handle goes.
            disk.remove("seg").await.unwrap();
            assert_eq!(disk.used_bytes(), 2 * BLOCK as u64);
            assert!(disk.create("other", &block(3)).await.is_err());
            drop(file);
            assert_eq!(disk.used_bytes(), 0);
            disk.create("other", &block(3)).await.unwrap();
        });
    }

    #[test]
    fn misdirected_write_leaves_the_intended_range_untouched() {
        let mut misdirected = 0;
        for seed in 0..50 {
            let disk = disk(seed);
            block_on(async {
                let file = durable_file(&disk, "seg", &[1, 2, 3]).await;
                disk.set_faults(SimFaults { misdirect: 1.0, ..SimFaults::default() });
                file.write_at(2 * BLOCK as u64, &block(0xEE)).await.unwrap();
                let after = disk.contents("seg").unwrap();
                let landed: Vec<usize> = (0..after.len() / BLOCK)
                    .filter(|i| after[i * BLOCK..(i + 1) * BLOCK] == block(0xEE))
                    .collect();
                if disk.stats().misdirects == 1 {
                    assert_eq!(after[2 * BLOCK..3 * BLOCK], block(2), "seed {seed}");
                    assert!(landed.len() == 1 && landed[0] != 2, "seed {seed}");
                    misdirected += 1;
                } else {
                    // The pick overlapped the intended range, so the fault
                    // was skipped and the write landed where it should.
                    assert_eq!(landed, [2], "seed {seed}");
                }
            });
        }
        assert!(misdirected > 25, "most picks miss the intended range: {misdirected}");
    }

    #[test]
    fn handles_from_before_a_crash_fail_afterwards() {
        let disk = disk(3);
        block_on(async {
            let file = durable_file(&disk, "seg", &[1]).await;
            disk.crash();
            assert!(file.read_at(0, 10).await.unwrap_err().to_string().contains("crash"));
            assert!(file.write_at(0, &block(1)).await.is_err());
            assert!(file.sync_data().await.is_err());
            assert!(file.len().await.is_err());
            assert!(file.truncate(0).await.is_err());
            assert!(file.allocate(1 << 20).await.is_err());
            let reopened = disk.open("seg").await.unwrap();
            assert_eq!(reopened.len().await.unwrap(), 2 * BLOCK as u64);
        });
    }

    #[test]
    fn flip_bits_changes_exactly_the_reported_bits() {
        let disk = disk(11);
        block_on(async {
            durable_file(&disk, "a", &[1, 2]).await;
            durable_file(&disk, "b", &[3]).await;
        });
        let before = ["a", "b"].map(|n| disk.contents(n).unwrap());
        let flips = disk.flip_bits(40);
        assert_eq!(flips.len(), 40);
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            let after = disk.contents(name).unwrap();
            let mut reported: Vec<u64> =
                flips.iter().filter(|(n, _)| n == name).map(|(_, o)| *o).collect();
            reported.sort_unstable();
            let changed: Vec<u64> = (0..after.len())
                .filter(|&j| after[j] != before[i][j])
                .inspect(|&j| assert_eq!((after[j] ^ before[i][j]).count_ones(), 1))
                .map(|j| j as u64)
                .collect();
            assert_eq!(changed, reported);
        }
        // The flips are on the media, so they outlive a crash.
        let current = disk.contents("a");
        disk.crash();
        assert_eq!(disk.contents("a"), current);
    }

    #[test]
    fn names_behave_like_a_posix_directory() {
        let disk = disk(5);
        block_on(async {
            let file = durable_file(&disk, "seg", &[1]).await;
            let exists = disk.create("seg", &block(0)).await.unwrap_err();
            assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(disk.open("nope").await.unwrap_err().kind(), io::ErrorKind::NotFound);
            disk.create("other", &block(7)).await.unwrap();
            disk.rename("other", "seg").await.unwrap();
            assert_eq!(disk.list().await.unwrap(), ["seg"]);
            // The replaced and then removed inode stays readable.
            disk.remove("seg").await.unwrap();
            assert_eq!(file.read_at(BLOCK as u64, 3).await.unwrap(), [1, 1, 1]);
            assert_eq!(file.read_at(100 * BLOCK as u64, 3).await.unwrap(), []);
            assert!(disk.list().await.unwrap().is_empty());
        });
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn unaligned_write_is_a_programming_error() {
        let disk = disk(0);
        block_on(async {
            let file = durable_file(&disk, "seg", &[]).await;
            let _ = file.write_at(100, &block(1)).await;
        });
    }

    #[test]
    fn yields_interleave_concurrent_tasks() {
        use futures::executor::LocalPool;
        use futures::task::LocalSpawnExt;

        let interleaved = |yield_probability: f64| {
            let disk = disk(9);
            disk.set_faults(SimFaults { yield_probability, ..SimFaults::default() });
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut pool = LocalPool::new();
            for task in 0..2u8 {
                let (disk, log) = (disk.clone(), log.clone());
                let spawned = pool.spawner().spawn_local(async move {
                    let file = disk.create(&format!("f{task}"), &block(task)).await.unwrap();
                    for i in 1..20u64 {
                        file.write_at(i * BLOCK as u64, &block(task)).await.unwrap();
                        log.borrow_mut().push(task);
                    }
                });
                spawned.unwrap();
            }
            pool.run();
            let log = log.borrow();
            log.windows(2).filter(|w| w[0] != w[1]).count() > 1
        };
        assert!(!interleaved(0.0));
        assert!(interleaved(0.5));
    }
}
