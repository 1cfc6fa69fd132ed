//! The store: one per shard, the durable home of every key the shard owns.
//!
//! It maps `(partition, key)` to a value, where the value is whatever the
//! layer above hands it: for holdfast, the canonical encoding of a key's
//! sibling set. **The store knows nothing about clocks, rings or
//! replicas**; it keeps bytes, durably, and finds them again.
//!
//! # Shape
//!
//! A log-structured store in the manner of Bitcask:
//! - an append-only log cut into segment files (`segment`), made of
//!   self-describing, checksummed records (`record`);
//! - an in-memory index (`index`) from key to its newest record;
//! - index files (`index_file`) that describe sealed segments so that a
//!   restart need not read them;
//! - compaction, which rewrites sealed segments without their dead records
//!   and gives the space back to the file system.
//!
//! All I/O goes through the [`Disk`] seam, so the very same code runs on
//! io_uring in production and on the seeded, fault-injecting simulated disk
//! in tests.
//!
//! # Writes and group commit
//!
//! A write gets the next sequence number (unique per store, never reused)
//! and joins a queue. If no flush is running, the writer becomes the
//! leader: it takes the whole queue, encodes it into one aligned buffer,
//! writes it with one `write_at`, syncs it with one `fdatasync` (under
//! `SyncPolicy::Always`), applies it to the index, and acknowledges every
//! write in it. Whatever queued meanwhile forms the next batch, led by its
//! oldest writer: the lead passes on after every batch, so no writer waits
//! for more than the batch in flight and its own, however steady the load.
//! Writes that arrive together thus share one `fdatasync`.
//!
//! The index changes only after a write is durable (under the policy), so a
//! read never returns a value that a crash could still take away.
//!
//! Writes are aligned for `O_DIRECT`: a batch starts at the aligned block
//! holding the end of the log and rewrites that block's existing bytes
//! unchanged before the new ones. A write torn across sectors therefore
//! leaves the earlier records intact whichever sectors made it.
//!
//! # Failures
//!
//! - A write that fails (an I/O error or a full disk) fails its batch; the
//!   segment it was written to is abandoned and the next batch starts a new
//!   one, so whatever the failed write left behind is never overwritten in
//!   place and stays at a segment's tail.
//! - A failed `fdatasync` is never retried: after it the kernel may have
//!   dropped the dirty data while a retry would report success. The batch
//!   fails and the store is poisoned: it refuses writes until it is reopened
//!   and has recovered from what is really on disk. Reads go on.
//! - A full disk is found when a segment is created (it is preallocated
//!   whole), so it costs the writer an error and nothing else.
//!
//! # Recovery
//!
//! [`Store::open`] reads every segment's index file, or scans the segment
//! when the index file is missing or does not verify (`segment` documents
//! the cases: a torn tail is truncated, a damaged region is skipped,
//! counted and its segment reported damaged, never served). The newest
//! record of each key (by sequence number) wins, whatever file it is in.
//! Each open then starts a fresh segment: recovered files are never
//! appended to.
//!
//! # Compaction and removals
//!
//! Compaction copies a sealed segment's live records, byte for byte and
//! keeping their sequence numbers, to a new segment, syncs it, repoints the
//! index (only where it still points at the old copy, so a write that raced
//! the compaction wins), and then removes the old segment. A removal is a
//! record too, and compaction may drop it only when no segment other than
//! the ones being compacted holds a record older than it (tracked per
//! segment as its smallest sequence number), so a removed key never comes
//! back from an older record. Segments found damaged are never compacted:
//! they wait for repair.
//!
//! # Concurrency
//!
//! A store belongs to one shard (one thread); it is `!Send` and uses
//! `RefCell` inside, never holding a borrow across an `.await`. Futures of
//! writes must be polled to completion: dropping a write's future while it
//! leads a flush fails its batch with [`WriteError::Interrupted`].

mod check;
mod error;
mod index;
pub mod index_file;
mod options;
pub mod record;
pub mod segment;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use futures::future::Either;

pub use self::check::{CheckReport, check};
pub use self::error::{CompactError, OpenError, ReadError, WriteError};
pub use self::index::Location;
pub use self::options::{StoreOptions, SyncPolicy};
pub use self::record::RecordKind;

use self::index::Index;
use self::record::Decoded;
use self::segment::{HEADER_BLOCK_BYTES, ScannedRecord};
use crate::disk::{Disk, DiskFile};

/// How much of a segment compaction and recovery read per `read_at`, and
/// how much of an index file is written per `write_at`.
const READ_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(segment::HEADER_BLOCK_BYTES));
/// Compaction yields to foreground work after scanning this many records.
const COMPACTION_RECORDS_PER_YIELD: usize = 256;
/// Index entries encoded, or checked for liveness, between yields.
const INDEX_ENTRIES_PER_YIELD: usize = 4096;
/// Compaction writes (and syncs) its copies in chunks of about this size.
const COMPACTION_CHUNK_BYTES: u64 = 1 << 20;

/// What recovery found when the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the store after recovery.
    pub segments: u64,
    /// Segments whose index file was used.
    pub index_files_used: u64,
    /// Segments read and verified record by record.
    pub segments_scanned: u64,
    /// Verified records found (live or not).
    pub records: u64,
    /// Keys holding a value.
    pub live_keys: u64,
    /// Segments whose torn tail was truncated, and how many bytes went.
    pub torn_tails_truncated: u64,
    pub torn_bytes: u64,
    /// Damaged regions skipped; each held at least one record.
    pub corrupt_records_skipped: u64,
    /// Segments with damage, awaiting repair.
    pub damaged_segments: Vec<u64>,
    /// Segments created but never written, removed.
    pub empty_segments_removed: u64,
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments rewritten and removed.
    pub segments_compacted: u64,
    /// Live records copied.
    pub records_copied: u64,
    /// Removal records dropped for good.
    pub removals_dropped: u64,
    /// Bytes given back to the file system.
    pub bytes_reclaimed: u64,
}

/// Counters of what the store did since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub puts: u64,
    pub removes: u64,
    pub gets: u64,
    /// Group commits (one write, and under `Always` one `fdatasync`, each).
    pub batches: u64,
    pub syncs: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    pub compactions: u64,
    pub corrupt_reads: u64,
    /// Reads answered from the value cache.
    pub cache_hits: u64,
}

/// A summary of the store's space, for operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceReport {
    pub segments: u64,
    pub live_keys: u64,
    /// Bytes of records that are the newest for their key.
    pub bytes_live: u64,
    /// Bytes of all records.
    pub bytes_total: u64,
    pub damaged_segments: u64,
}

impl SpaceReport {
    /// Bytes compaction could give back.
    pub fn bytes_reclaimable(&self) -> u64 {
        self.bytes_total - self.bytes_live
    }
}

/// The per-shard store, generic over the disk it runs on.
#[derive(Debug)]
pub struct Store<D: Disk> {
    disk: D,
    options: StoreOptions,
    alignment: usize,
    inner: RefCell<Inner<D::File>>,
    /// Compaction's input buffer, kept between compactions.
    compaction_buffer: RefCell<Vec<u8>>,
}

#[derive(Debug)]
struct Inner<F> {
    index: Index,
    segments: BTreeMap<u64, Segment<F>>,
    /// The segment being appended to, if any.
    writer: Option<Writer<F>>,
    /// Full segments not yet sealed (truncated and synced): sealing waits
    /// for background upkeep, so that no write waits for it.
    unsealed: Vec<Writer<F>>,
    /// An empty segment made ahead of time by background upkeep, so that
    /// moving to a new segment costs a write nothing.
    spare: Option<(u64, F)>,
    queue: Vec<Pending>,
    flushing: bool,
    compacting: bool,
    /// Set for good by a failed `fdatasync`.
    poisoned: bool,
    /// Set by `close`.
    closed: bool,
    /// Written but not yet synced (under `Interval` and `Never`).
    unsynced: bool,
    /// Abandoned segments written but not yet synced, for the next `sync`.
    unsynced_files: Vec<F>,
    next_seq: u64,
    next_segment_id: u64,
    stats: StoreStats,
    cache: Cache,
}

#[derive(Debug)]
struct Segment<F> {
    file: F,
    /// Where its last record ends.
    data_end: u64,
    bytes_total: u64,
    bytes_live: u64,
    /// The smallest sequence number in the segment (`u64::MAX` if empty).
    min_seq: u64,
    sealed: bool,
    damaged: bool,
    index_file: IndexFileState,
}

/// Whether a segment has an index file.
#[derive(Debug)]
enum IndexFileState {
    /// It has one, which lists every record.
    Written,
    /// It will get one once sealed: here are its records meanwhile.
    Pending(Vec<ScannedRecord>),
    /// It never gets one, and every restart scans it: it is damaged, or a
    /// failed write may have left records past what the store knows of.
    Never,
}

#[derive(Debug)]
struct Writer<F> {
    segment: u64,
    file: F,
    /// The log's end in this segment.
    end: u64,
    /// The bytes between the aligned block start and `end`, which the next
    /// write rewrites unchanged.
    tail: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    partition: u32,
    key: Box<[u8]>,
    value: Vec<u8>,
    kind: RecordKind,
    seq: u64,
    value_len: u32,
    done: oneshot::Sender<Result<u64, WriteError>>,
    /// Fired to make this write's task lead the next batch.
    lead: Option<oneshot::Sender<()>>,
}

impl<D: Disk> Store<D> {
    /// Opens the store in `disk`'s directory, recovering whatever is there
    /// (an empty directory is an empty store).
    pub async fn open(
        disk: D,
        options: StoreOptions,
    ) -> Result<(Store<D>, RecoveryReport), OpenError> {
        let alignment = disk.alignment();
        options.validate(alignment).map_err(OpenError::Options)?;
        let store = Store {
            disk,
            options,
            alignment,
            inner: RefCell::new(placeholder_inner()),
            compaction_buffer: RefCell::new(Vec::new()),
        };
        store.inner.borrow_mut().cache.bytes_max = store.options.cache_bytes_max;
        let report = store.recover().await?;
        Ok((store, report))
    }

    async fn recover(&self) -> Result<RecoveryReport, OpenError> {
        let io = |operation, file: &str| {
            let file = file.to_owned();
            move |source| OpenError::Io { operation, file, source }
        };
        let names = self.disk.list().await.map_err(io("list", "data directory"))?;
        let mut report = RecoveryReport::default();
        let mut directory_changed = false;
        let mut segment_ids = Vec::new();
        let mut index_ids = Vec::new();
        let mut highest_id = 0;
        for name in &names {
            if let Some(id) = segment::parse_file_name(name) {
                segment_ids.push(id);
                highest_id = highest_id.max(id);
            } else if let Some(id) = index_file::parse_file_name(name) {
                index_ids.push(id);
                highest_id = highest_id.max(id);
            } else if name.ends_with(".tmp") {
                // A temporary index file a crash left behind.
                self.disk.remove(name).await.map_err(io("remove", name))?;
                directory_changed = true;
            }
        }
        let mut max_seq = 0;
        let mut inner = Inner {
            next_segment_id: highest_id + 1,
            ..std::mem::replace(&mut *self.inner.borrow_mut(), placeholder_inner())
        };
        inner.cache.bytes_max = self.options.cache_bytes_max;
        for &id in &segment_ids {
            let name = segment::file_name(id);
            let file = self.disk.open(&name).await.map_err(io("open", &name))?;
            let loaded = match index_ids.binary_search(&id) {
                Ok(_) => self.load_index_file(id, &file).await,
                Err(_) => None,
            };
            let (records, data_end, damaged, indexed) = match loaded {
                Some(loaded) => {
                    report.index_files_used += 1;
                    (loaded.records, loaded.data_end, false, true)
                }
                None => {
                    report.segments_scanned += 1;
                    let bytes = read_whole(&file).await.map_err(io("read", &name))?;
                    let scan = segment::scan(id, &bytes);
                    if scan.records.is_empty() && scan.corrupt_regions.is_empty() {
                        // Created but never written (or its first write torn).
                        self.disk.remove(&name).await.map_err(io("remove", &name))?;
                        let index_name = index_file::file_name(id);
                        if index_ids.binary_search(&id).is_ok() {
                            self.disk
                                .remove(&index_name)
                                .await
                                .map_err(io("remove", &index_name))?;
                        }
                        report.empty_segments_removed += 1;
                        directory_changed = true;
                        continue;
                    }
                    if scan.torn_tail_bytes > 0 {
                        file.truncate(scan.data_end).await.map_err(io("truncate", &name))?;
                        file.sync_data().await.map_err(io("sync", &name))?;
                        report.torn_tails_truncated += 1;
                        report.torn_bytes += scan.torn_tail_bytes;
                    }
                    let damaged = !scan.corrupt_regions.is_empty() || !scan.header_valid;
                    report.corrupt_records_skipped += scan.corrupt_regions.len() as u64;
                    (scan.records, scan.data_end, damaged, false)
                }
            };
            if damaged {
                report.damaged_segments.push(id);
            }
            report.records += records.len() as u64;
            let mut min_seq = u64::MAX;
            let mut bytes_total = 0;
            for record in &records {
                min_seq = min_seq.min(record.seq);
                max_seq = max_seq.max(record.seq);
                bytes_total += record.len_on_disk();
                inner.index.insert_if_newer(record.partition, &record.key, location(id, record));
            }
            inner.segments.insert(
                id,
                Segment {
                    file,
                    data_end,
                    bytes_total,
                    bytes_live: 0,
                    min_seq,
                    sealed: true,
                    damaged,
                    // A damaged segment gets no index file: every restart scans
                    // it again and reports it again until it is repaired.
                    index_file: match (indexed, damaged) {
                        (true, _) => IndexFileState::Written,
                        (false, true) => IndexFileState::Never,
                        (false, false) => IndexFileState::Pending(records),
                    },
                },
            );
        }
        // An index file whose segment is gone (removed by a compaction that
        // crashed before removing the index file) describes nothing.
        for id in index_ids {
            if !inner.segments.contains_key(&id) && segment_ids.binary_search(&id).is_err() {
                let name = index_file::file_name(id);
                self.disk.remove(&name).await.map_err(io("remove", &name))?;
                directory_changed = true;
            }
        }
        if directory_changed {
            self.disk.sync_dir().await.map_err(io("sync", "data directory"))?;
        }
        let live: Vec<(u64, u64)> =
            inner.index.entries().map(|(_, _, at)| (at.segment, u64::from(at.len))).collect();
        for (segment, len) in live {
            if let Some(segment) = inner.segments.get_mut(&segment) {
                segment.bytes_live += len;
            }
        }
        inner.next_seq = max_seq + 1;
        report.segments = inner.segments.len() as u64;
        report.live_keys = inner.index.live_keys();
        *self.inner.borrow_mut() = inner;
        Ok(report)
    }

    /// Reads and verifies the index file of segment `id`; `None` if it is
    /// unreadable or does not verify (the segment is then scanned).
    async fn load_index_file(&self, id: u64, segment_file: &D::File) -> Option<index_file::Loaded> {
        let name = index_file::file_name(id);
        let file = self.disk.open(&name).await.ok()?;
        let bytes = read_whole(&file).await.ok()?;
        match index_file::decode(id, &bytes) {
            Ok(loaded) if loaded.data_end <= segment_file.len().await.ok()? => Some(loaded),
            Ok(_) => {
                tracing::warn!(segment = id, "index file describes more than its segment holds");
                None
            }
            Err(error) => {
                tracing::warn!(segment = id, %error, "index file ignored; scanning its segment");
                None
            }
        }
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Writes `value` under `(partition, key)`. Returns the write's sequence
    /// number once it is durable under the sync policy.
    pub async fn put(&self, partition: u32, key: &[u8], value: &[u8]) -> Result<u64, WriteError> {
        self.enqueue_put(partition, key, value)?.wait().await
    }

    /// Removes `(partition, key)` from the store. Removing a missing key is
    /// not an error (it writes a removal all the same).
    pub async fn remove(&self, partition: u32, key: &[u8]) -> Result<u64, WriteError> {
        self.enqueue_remove(partition, key)?.wait().await
    }

    /// Queues a put and returns at once; the returned [`Commit`] completes
    /// when it is durable. Writes are applied in the order they are queued,
    /// so a caller that must order its writes (read-modify-write of one key)
    /// need only hold its latch until this returns, not until the write is
    /// durable.
    pub fn enqueue_put(
        &self,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Commit<'_, D>, WriteError> {
        self.check_key(key)?;
        if value.len() > self.options.value_bytes_max {
            return Err(WriteError::ValueTooLarge {
                len: value.len(),
                max: self.options.value_bytes_max,
            });
        }
        self.enqueue(partition, key, RecordKind::Put, value)
    }

    /// Queues a removal; see [`Store::enqueue_put`].
    pub fn enqueue_remove(&self, partition: u32, key: &[u8]) -> Result<Commit<'_, D>, WriteError> {
        self.check_key(key)?;
        self.enqueue(partition, key, RecordKind::Remove, &[])
    }

    fn check_key(&self, key: &[u8]) -> Result<(), WriteError> {
        if key.len() > self.options.key_bytes_max {
            return Err(WriteError::KeyTooLarge {
                len: key.len(),
                max: self.options.key_bytes_max,
            });
        }
        Ok(())
    }

    fn enqueue(
        &self,
        partition: u32,
        key: &[u8],
        kind: RecordKind,
        value: &[u8],
    ) -> Result<Commit<'_, D>, WriteError> {
        let (done, outcome) = oneshot::channel();
        let (lead, chosen) = oneshot::channel();
        let mut inner = self.inner.borrow_mut();
        if inner.poisoned {
            return Err(WriteError::Poisoned);
        }
        if inner.closed {
            return Err(WriteError::Closed);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        match kind {
            RecordKind::Put => inner.stats.puts += 1,
            RecordKind::Remove => inner.stats.removes += 1,
        }
        inner.queue.push(Pending {
            partition,
            key: key.into(),
            value: value.to_vec(),
            kind,
            seq,
            value_len: value.len() as u32,
            done,
            lead: Some(lead),
        });
        let lead_now = !std::mem::replace(&mut inner.flushing, true);
        Ok(Commit { store: self, outcome: Some(outcome), chosen: Some(chosen), lead_now })
    }

    /// Flushes the queue as one batch (it holds the leader's own write),
    /// then hands the lead to the oldest writer still queued, so that no
    /// writer flushes for others longer than one batch.
    async fn lead_one_batch(&self) {
        let guard = FlushGuard { inner: &self.inner, finished: false };
        let batch = std::mem::take(&mut self.inner.borrow_mut().queue);
        if !batch.is_empty() {
            self.flush(batch).await;
        }
        guard.finish();
        hand_off_lead(&mut self.inner.borrow_mut());
    }

    /// Writes one batch, in as many segments as it takes, and completes
    /// every write in it.
    async fn flush(&self, batch: Vec<Pending>) {
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            // Writes queued before a failed sync are failed with it: after
            // the failure nothing more is acknowledged until a reopen.
            if self.inner.borrow().poisoned {
                fail_all(batch, &WriteError::Poisoned);
                return;
            }
            if let Err(error) = self.ensure_writer().await {
                fail_all(batch, &error);
                return;
            }
            let (segment_id, file, start, mut buffer) = {
                let inner = self.inner.borrow();
                let writer = inner.writer.as_ref().expect("ensure_writer made one");
                (writer.segment, writer.file.clone(), writer.end, writer.tail.clone())
            };
            let block_start = start - buffer.len() as u64;
            let room = self.options.segment_bytes_max - start;
            let mut chunk = Vec::new();
            while let Some(pending) = batch.peek() {
                let len = record::record_len(pending.key.len(), pending.value.len());
                let used = (block_start + buffer.len() as u64) - start;
                if used + len as u64 > room {
                    break;
                }
                let pending = batch.next().expect("peeked");
                let offset = block_start + buffer.len() as u64;
                record::encode(
                    &mut buffer,
                    pending.partition,
                    pending.seq,
                    pending.kind,
                    &pending.key,
                    &pending.value,
                );
                chunk.push((offset, pending));
            }
            if chunk.is_empty() {
                // The segment is full: go on in a new one, and leave sealing
                // this one to background upkeep.
                let mut inner = self.inner.borrow_mut();
                let full = inner.writer.take().expect("the writer was just used");
                inner.unsealed.push(full);
                continue;
            }
            let end = block_start + buffer.len() as u64;
            let new_tail =
                buffer[(align_down(end, self.alignment) - block_start) as usize..].to_vec();
            buffer.resize(buffer.len().next_multiple_of(self.alignment), 0);
            let mut outcome = self.write_and_sync(&file, block_start, &buffer).await;
            if outcome.is_ok() && self.inner.borrow().poisoned {
                // A sync failed elsewhere while this batch was in flight.
                self.abandon_writer();
                outcome = Err(WriteError::Poisoned);
            }
            let mut inner = self.inner.borrow_mut();
            inner.stats.batches += 1;
            if let Err(error) = outcome {
                drop(inner);
                for (_, pending) in chunk {
                    let _ = pending.done.send(Err(error.clone()));
                }
                fail_all(batch, &error);
                return;
            }
            inner.stats.bytes_written += buffer.len() as u64;
            let writer = inner.writer.as_mut().expect("only the flush leader replaces the writer");
            assert_eq!((writer.segment, writer.end), (segment_id, start));
            writer.end = end;
            writer.tail = new_tail;
            for (offset, pending) in chunk {
                match pending.kind {
                    RecordKind::Put => inner.cache.insert(
                        pending.partition,
                        &pending.key,
                        pending.seq,
                        pending.value.into(),
                    ),
                    RecordKind::Remove => inner.cache.remove(pending.partition, &pending.key),
                }
                let scanned = ScannedRecord {
                    offset,
                    partition: pending.partition,
                    seq: pending.seq,
                    kind: pending.kind,
                    value_len: pending.value_len,
                    key: pending.key,
                };
                inner.add_record(segment_id, scanned);
                let _ = pending.done.send(Ok(pending.seq));
            }
            let segment = inner.segments.get_mut(&segment_id).expect("the writer's segment exists");
            segment.data_end = end;
        }
    }

    /// Writes `buffer` at `offset` and syncs it if the policy says so. A
    /// failure abandons the segment; a failed sync also poisons the store.
    async fn write_and_sync(
        &self,
        file: &D::File,
        offset: u64,
        buffer: &[u8],
    ) -> Result<(), WriteError> {
        if let Err(error) = file.write_at(offset, buffer).await {
            self.abandon_writer();
            return Err(WriteError::from_io(error));
        }
        if self.options.sync != SyncPolicy::Always {
            self.inner.borrow_mut().unsynced = true;
            return Ok(());
        }
        self.inner.borrow_mut().stats.syncs += 1;
        file.sync_data().await.map_err(|error| {
            self.abandon_writer();
            self.poison(error)
        })
    }

    /// Stops appending to the current segment after a failed write: what
    /// the failure left past the log's end must never be overwritten in
    /// place, or recovery could mistake its remains for corruption.
    fn abandon_writer(&self) {
        let mut inner = self.inner.borrow_mut();
        if let Some(writer) = inner.writer.take() {
            inner.abandon(writer.segment);
            if self.options.sync != SyncPolicy::Always {
                inner.unsynced_files.push(writer.file);
            }
        }
    }

    /// Poisons the store after a failed `fdatasync`. Whatever write is in
    /// flight then is failed by its leader when it completes (see `flush`):
    /// the failed sync may have been of the same file, and a later sync of
    /// it can report success for data the kernel already dropped.
    fn poison(&self, error: std::io::Error) -> WriteError {
        tracing::error!(%error, "fdatasync failed; refusing writes until the store is reopened");
        self.inner.borrow_mut().poisoned = true;
        WriteError::SyncFailed(Arc::new(error))
    }

    /// Makes sure there is a segment to append to, creating one if needed.
    async fn ensure_writer(&self) -> Result<(), WriteError> {
        if self.inner.borrow().writer.is_some() {
            return Ok(());
        }
        let spare = self.inner.borrow_mut().spare.take();
        let (segment, file) = match spare {
            Some(spare) => spare,
            None => self.create_segment().await?,
        };
        let mut inner = self.inner.borrow_mut();
        inner.writer =
            Some(Writer { segment, file, end: HEADER_BLOCK_BYTES as u64, tail: Vec::new() });
        Ok(())
    }

    /// Creates, preallocates and registers a new, empty segment.
    async fn create_segment(&self) -> Result<(u64, D::File), WriteError> {
        let id = {
            let mut inner = self.inner.borrow_mut();
            if inner.poisoned {
                return Err(WriteError::Poisoned);
            }
            inner.next_segment_id += 1;
            inner.next_segment_id - 1
        };
        let name = segment::file_name(id);
        let file = self
            .disk
            .create(&name, &segment::header_block(id))
            .await
            .map_err(WriteError::from_io)?;
        if let Err(error) = file.allocate(self.options.segment_bytes_max).await {
            // Most likely a full disk. The file never held a record; if it
            // cannot be removed now, recovery removes it.
            let _ = self.disk.remove(&name).await;
            return Err(WriteError::from_io(error));
        }
        file.sync_data().await.map_err(|error| self.poison(error))?;
        self.disk.sync_dir().await.map_err(|error| self.poison(error))?;
        let mut inner = self.inner.borrow_mut();
        inner.stats.segments_created += 1;
        inner.segments.insert(
            id,
            Segment {
                file: file.clone(),
                data_end: HEADER_BLOCK_BYTES as u64,
                bytes_total: 0,
                bytes_live: 0,
                min_seq: u64::MAX,
                sealed: false,
                damaged: false,
                index_file: IndexFileState::Pending(Vec::new()),
            },
        );
        Ok((id, file))
    }

    /// Seals the segment being appended to: synced, truncated to its last
    /// record, never written again.
    async fn seal_writer(&self) -> Result<(), WriteError> {
        let Some(writer) = self.inner.borrow_mut().writer.take() else { return Ok(()) };
        self.seal(writer.segment, &writer.file, writer.end).await?;
        self.seal_full_segments().await
    }

    /// Seals the segments that filled up since the last call.
    async fn seal_full_segments(&self) -> Result<(), WriteError> {
        loop {
            let Some(full) = self.inner.borrow_mut().unsealed.pop() else { return Ok(()) };
            self.seal(full.segment, &full.file, full.end).await?;
        }
    }

    /// Makes the next segment ahead of time, if there is none waiting.
    async fn prepare_spare(&self) -> Result<(), WriteError> {
        if self.inner.borrow().spare.is_some() {
            return Ok(());
        }
        let spare = self.create_segment().await?;
        let mut inner = self.inner.borrow_mut();
        if inner.spare.is_none() && !inner.closed {
            inner.spare = Some(spare);
        }
        // Otherwise a writer took the lead and made one meanwhile; this one
        // stays empty, and the next open removes it.
        Ok(())
    }

    async fn seal(&self, id: u64, file: &D::File, end: u64) -> Result<(), WriteError> {
        let result = async {
            file.truncate(end).await.map_err(WriteError::from_io)?;
            self.inner.borrow_mut().stats.syncs += 1;
            file.sync_data().await.map_err(|error| self.poison(error))
        }
        .await;
        // Sealed either way: a segment whose seal failed is never appended to.
        if let Some(segment) = self.inner.borrow_mut().segments.get_mut(&id) {
            segment.sealed = true;
        }
        result
    }

    /// Syncs whatever was written and not yet synced. Under
    /// `SyncPolicy::Interval` the shard calls this every interval.
    pub async fn sync(&self) -> Result<(), WriteError> {
        let files = {
            let mut inner = self.inner.borrow_mut();
            if inner.poisoned {
                return Err(WriteError::Poisoned);
            }
            if !std::mem::replace(&mut inner.unsynced, false) {
                return Ok(());
            }
            let mut files = std::mem::take(&mut inner.unsynced_files);
            files.extend(inner.writer.as_ref().map(|writer| writer.file.clone()));
            files.extend(inner.unsealed.iter().map(|full| full.file.clone()));
            inner.stats.syncs += files.len() as u64;
            files
        };
        for file in files {
            file.sync_data().await.map_err(|error| self.poison(error))?;
        }
        Ok(())
    }

    /// Reads the value of `(partition, key)`, verifying its record.
    pub async fn get(&self, partition: u32, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        // A compaction may move the record (and empty its old file) while
        // the read is in flight; the index then points at the new copy, and
        // one more look finds it. A record that fails twice where the index
        // still points is corrupt.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.get_once(partition, key).await {
                Err(ReadError::Corrupt { segment, .. })
                    if attempts < 3 && !self.inner.borrow().segments.contains_key(&segment) =>
                {
                    continue;
                }
                outcome => return outcome,
            }
        }
    }

    async fn get_once(&self, partition: u32, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let (at, file) = {
            let mut inner = self.inner.borrow_mut();
            inner.stats.gets += 1;
            match inner.index.get(partition, key) {
                Some(&at) if at.kind == RecordKind::Put => {
                    if let Some(value) = inner.cache.get(partition, key, at.seq).map(<[u8]>::to_vec)
                    {
                        inner.stats.cache_hits += 1;
                        return Ok(Some(value));
                    }
                    let segment = inner.segments.get(&at.segment).expect("indexed segment exists");
                    (at, segment.file.clone())
                }
                _ => return Ok(None),
            }
        };
        let bytes = file.read_at(u64::from(at.offset), at.len as usize).await?;
        let detail = match record::decode(&bytes) {
            Decoded::Record { header, key: found, value }
                if header.seq == at.seq && header.partition == partition && found == key =>
            {
                let value = value.to_vec();
                self.inner.borrow_mut().cache.insert(
                    partition,
                    key,
                    at.seq,
                    value.as_slice().into(),
                );
                return Ok(Some(value));
            }
            Decoded::Record { header, .. } => {
                format!("found seq {} of partition {} instead", header.seq, header.partition)
            }
            other => format!("{other:?}"),
        };
        let mut inner = self.inner.borrow_mut();
        if let Some(segment) = inner.segments.get_mut(&at.segment) {
            segment.damaged = true;
            inner.stats.corrupt_reads += 1;
            tracing::error!(segment = at.segment, offset = at.offset, %detail, "corrupt record not served");
        }
        Err(ReadError::Corrupt { segment: at.segment, offset: at.offset, detail })
    }

    /// Drops every cached value, so that the next reads go to the disk (for
    /// tests that damage the disk under a running store).
    pub fn clear_cache(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.cache = Cache { bytes_max: inner.cache.bytes_max, ..Cache::default() };
    }

    /// Up to `limit` keys of `partition`, ascending, starting after `after`.
    /// The order is stable, so a caller can resume from the last key seen.
    pub fn keys(&self, partition: u32, after: Option<&[u8]>, limit: usize) -> Vec<Box<[u8]>> {
        self.inner.borrow().index.keys(partition, after, limit)
    }

    /// The keys of `partition` holding a value for which `wanted` is true,
    /// in no particular order: a filtered listing that copies only what it
    /// returns.
    pub fn keys_where(&self, partition: u32, wanted: impl Fn(&[u8]) -> bool) -> Vec<Box<[u8]>> {
        self.inner.borrow().index.keys_where(partition, wanted)
    }

    /// How many keys of `partition` hold a value.
    pub fn key_count(&self, partition: u32) -> usize {
        self.inner.borrow().index.live_keys_in(partition)
    }

    /// The partitions holding any keys, ascending.
    pub fn partitions(&self) -> Vec<u32> {
        self.inner.borrow().index.partitions()
    }

    /// The partitions holding at least one value, ascending.
    pub fn live_partitions(&self) -> Vec<u32> {
        self.inner.borrow().index.live_partitions()
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        self.inner.borrow().stats.clone()
    }

    /// The store's space, for operators.
    pub fn space(&self) -> SpaceReport {
        let inner = self.inner.borrow();
        let mut report = SpaceReport {
            segments: inner.segments.len() as u64,
            live_keys: inner.index.live_keys(),
            ..SpaceReport::default()
        };
        for segment in inner.segments.values() {
            report.bytes_live += segment.bytes_live;
            report.bytes_total += segment.bytes_total;
            report.damaged_segments += u64::from(segment.damaged);
        }
        report
    }

    /// Whether a failed `fdatasync` poisoned the store.
    pub fn is_poisoned(&self) -> bool {
        self.inner.borrow().poisoned
    }

    /// Background upkeep, for a low-priority task, to be called often (every
    /// 100 ms or so): seals segments that filled up, makes the next segment
    /// ahead of time, writes the index files of sealed segments, and
    /// compacts segments that are mostly dead. Each of these is work that a
    /// write would otherwise wait for.
    pub async fn maintain(&self) -> Result<CompactionReport, CompactError> {
        self.maintain_paced(&mut Unpaced).await
    }

    /// [`Store::maintain`], with compaction moving its bytes at the pace
    /// `pace` sets, so that it never takes the disk from foreground writes.
    pub async fn maintain_paced(
        &self,
        pace: &mut impl Pace,
    ) -> Result<CompactionReport, CompactError> {
        if self.inner.borrow().poisoned || self.inner.borrow().closed {
            return Ok(CompactionReport::default());
        }
        self.seal_full_segments().await?;
        self.prepare_spare().await?;
        self.write_index_files_paced(pace).await?;
        self.compact_paced(false, pace).await
    }

    /// Writes the index file of every sealed segment that lacks one.
    pub async fn write_index_files(&self) -> Result<(), WriteError> {
        self.write_index_files_paced(&mut Unpaced).await
    }

    /// [`Store::write_index_files`] at the pace `pace` sets. Only the first
    /// block goes through `create`; the rest is written in chunks through
    /// the disk's own path, so a large index file is never one long
    /// synchronous copy on the shard's thread nor one burst on the disk.
    /// The header of segment `id`'s index file, with room reserved for
    /// its entries; `None` if it needs none.
    fn index_file_start(&self, id: u64) -> Option<Vec<u8>> {
        let inner = self.inner.borrow();
        let segment = inner.segments.get(&id)?;
        let IndexFileState::Pending(records) = &segment.index_file else { return None };
        let mut contents = index_file::encode_start(id, segment.data_end, records.len());
        let bytes: usize =
            records.iter().map(|record| record.key.len() + index_file::ENTRY_FIXED_BYTES).sum();
        contents.reserve(bytes + self.alignment);
        Some(contents)
    }

    pub async fn write_index_files_paced(&self, pace: &mut impl Pace) -> Result<(), WriteError> {
        let todo: Vec<u64> = {
            let inner = self.inner.borrow();
            inner
                .segments
                .iter()
                .filter(|(_, segment)| {
                    segment.sealed && matches!(segment.index_file, IndexFileState::Pending(_))
                })
                .map(|(&id, _)| id)
                .collect()
        };
        for id in todo {
            // Encoded a slice at a time: a full segment's index is a few
            // hundred thousand entries, tens of milliseconds in one go.
            let Some(mut contents) = self.index_file_start(id) else { continue };
            let mut done = 0;
            loop {
                {
                    let inner = self.inner.borrow();
                    let Some(segment) = inner.segments.get(&id) else { break };
                    let IndexFileState::Pending(records) = &segment.index_file else { break };
                    let end = (done + INDEX_ENTRIES_PER_YIELD).min(records.len());
                    index_file::encode_entries(&mut contents, &records[done..end]);
                    done = end;
                    if done == records.len() {
                        break;
                    }
                }
                yield_now().await;
            }
            let complete = self.inner.borrow().segments.get(&id).is_some_and(|segment| {
                matches!(&segment.index_file, IndexFileState::Pending(records) if records.len() == done)
            });
            if !complete {
                continue;
            }
            index_file::encode_finish(&mut contents, self.alignment);
            let temporary = index_file::temporary_name(id);
            let (head, rest) = contents.split_at(self.alignment);
            let file = self.disk.create(&temporary, head).await.map_err(WriteError::from_io)?;
            let mut offset = self.alignment as u64;
            for chunk in rest.chunks(READ_CHUNK_BYTES) {
                file.write_at(offset, chunk).await.map_err(WriteError::from_io)?;
                offset += chunk.len() as u64;
                pace.after(chunk.len() as u64).await;
            }
            file.sync_data().await.map_err(|error| self.poison(error))?;
            self.disk
                .rename(&temporary, &index_file::file_name(id))
                .await
                .map_err(WriteError::from_io)?;
            self.disk.sync_dir().await.map_err(|error| self.poison(error))?;
            if let Some(segment) = self.inner.borrow_mut().segments.get_mut(&id) {
                segment.index_file = IndexFileState::Written;
            }
        }
        Ok(())
    }

    /// Compacts sealed segments: those whose dead fraction reached
    /// `compaction_dead_ratio`, or every sealed segment if `everything`
    /// (which also seals the current segment first, when no write is in
    /// flight). Runs alongside reads and writes and yields to them often.
    pub async fn compact(&self, everything: bool) -> Result<CompactionReport, CompactError> {
        self.compact_paced(everything, &mut Unpaced).await
    }

    /// [`Store::compact`], moving its bytes at the pace `pace` sets.
    pub async fn compact_paced(
        &self,
        everything: bool,
        pace: &mut impl Pace,
    ) -> Result<CompactionReport, CompactError> {
        let mut report = CompactionReport::default();
        {
            let mut inner = self.inner.borrow_mut();
            if inner.compacting || inner.poisoned {
                return Ok(report);
            }
            inner.compacting = true;
        }
        let _guard = CompactionGuard { inner: &self.inner };
        if everything && !self.inner.borrow().flushing {
            self.seal_writer().await?;
        }
        let candidates: Vec<u64> = {
            let inner = self.inner.borrow();
            let ratio = self.options.compaction_dead_ratio;
            inner
                .segments
                .iter()
                .filter(|(_, segment)| segment.sealed && !segment.damaged)
                .filter(|(_, segment)| {
                    let dead = segment.bytes_total - segment.bytes_live;
                    everything || dead as f64 >= ratio * segment.bytes_total.max(1) as f64
                })
                .map(|(&id, _)| id)
                .collect()
        };
        let mut output: Option<Writer<D::File>> = None;
        let mut outputs = Vec::new();
        for id in candidates {
            self.compact_segment(id, &mut output, &mut outputs, &mut report, pace).await?;
        }
        if let Some(writer) = output.take() {
            self.seal(writer.segment, &writer.file, writer.end).await?;
        }
        self.inner.borrow_mut().stats.compactions += u64::from(report.segments_compacted > 0);
        Ok(report)
    }

    async fn compact_segment(
        &self,
        id: u64,
        output: &mut Option<Writer<D::File>>,
        outputs: &mut Vec<u64>,
        report: &mut CompactionReport,
        pace: &mut impl Pace,
    ) -> Result<(), CompactError> {
        let Some(file) = self.inner.borrow().segments.get(&id).map(|s| s.file.clone()) else {
            return Ok(());
        };
        let len = file.len().await?;
        // The input buffer is kept between compactions: a fresh one of a
        // segment's size would be faulted in (and zeroed) by the kernel on
        // the shard's thread every time, a stall of tens of milliseconds.
        let mut bytes = self.compaction_buffer.take();
        bytes.clear();
        bytes.reserve(usize::try_from(len).unwrap_or(0));
        let result =
            self.compact_bytes(id, &file, len, &mut bytes, output, outputs, report, pace).await;
        self.compaction_buffer.replace(bytes);
        result
    }

    #[allow(clippy::too_many_arguments)] // One compaction's state, passed down once.
    async fn compact_bytes(
        &self,
        id: u64,
        file: &D::File,
        len: u64,
        bytes: &mut Vec<u8>,
        output: &mut Option<Writer<D::File>>,
        outputs: &mut Vec<u64>,
        report: &mut CompactionReport,
        pace: &mut impl Pace,
    ) -> Result<(), CompactError> {
        while (bytes.len() as u64) < len {
            let want = READ_CHUNK_BYTES.min((len - bytes.len() as u64) as usize);
            let chunk = file.read_at(bytes.len() as u64, want).await?;
            if chunk.is_empty() {
                break;
            }
            bytes.extend_from_slice(&chunk);
            pace.after(chunk.len() as u64).await;
        }
        let bytes = &bytes[..];
        let mut scanner = segment::Scanner::new(id, bytes);
        while !scanner.advance(COMPACTION_RECORDS_PER_YIELD) {
            yield_now().await;
        }
        let scan = scanner.finish();
        if !scan.corrupt_regions.is_empty() || !scan.header_valid {
            // Damage found: keep the segment for repair.
            if let Some(segment) = self.inner.borrow_mut().segments.get_mut(&id) {
                segment.damaged = true;
            }
            return Ok(());
        }
        // Decide what survives. A removal survives unless no other segment
        // (other than this compaction's own outputs, which hold only
        // records that were live) can hold an older record of its key.
        // A slice of records at a time, yielding between slices (a segment
        // holds a few hundred thousand). A record found live may be
        // overwritten meanwhile; copying it anyway is harmless (the newer
        // record wins by sequence number, and the next compaction drops
        // it). Segments made meanwhile hold only newer records, so they do
        // not lower `oldest_elsewhere`.
        let mut survivors = Vec::new();
        let mut dropped = Vec::new();
        let oldest_elsewhere = self
            .inner
            .borrow()
            .segments
            .iter()
            .filter(|(other, _)| **other != id && !outputs.contains(other))
            .map(|(_, segment)| segment.min_seq)
            .min()
            .unwrap_or(u64::MAX);
        let mut records = scan.records.into_iter().peekable();
        while records.peek().is_some() {
            {
                let inner = self.inner.borrow();
                for record in records.by_ref().take(INDEX_ENTRIES_PER_YIELD) {
                    let at = location(id, &record);
                    if inner.index.get(record.partition, &record.key) != Some(&at) {
                        continue;
                    }
                    match record.kind {
                        RecordKind::Remove if record.seq < oldest_elsewhere => {
                            dropped.push(record);
                        }
                        _ => survivors.push(record),
                    }
                }
            }
            yield_now().await;
        }
        // Copy in chunks of about a megabyte, each written and synced at
        // once, yielding to foreground work in between.
        let mut survivors = survivors.as_slice();
        while !survivors.is_empty() {
            let mut take = 0;
            let mut chunk_bytes = 0;
            while take < survivors.len() && take < 1024 && chunk_bytes < COMPACTION_CHUNK_BYTES {
                chunk_bytes += survivors[take].len_on_disk();
                take += 1;
            }
            let (chunk, rest) = survivors.split_at(take);
            self.copy_records(bytes, id, chunk, output, outputs).await?;
            report.records_copied += chunk.len() as u64;
            survivors = rest;
            pace.after(chunk_bytes).await;
            yield_now().await;
        }
        let segment = {
            let mut inner = self.inner.borrow_mut();
            for record in &dropped {
                let at = location(id, record);
                let forgotten = inner.index.forget(record.partition, &record.key, at);
                report.removals_dropped += u64::from(forgotten);
            }
            inner.segments.remove(&id).expect("only compaction removes segments")
        };
        report.segments_compacted += 1;
        report.bytes_reclaimed += segment.data_end;
        // The index file goes first: a crash in between leaves a segment
        // without one (scanned at restart), never an index file describing
        // a segment that is gone.
        let index_name = index_file::file_name(id);
        if matches!(segment.index_file, IndexFileState::Written) {
            self.disk.remove(&index_name).await.map_err(WriteError::from_io)?;
        }
        self.disk.remove(&segment::file_name(id)).await.map_err(WriteError::from_io)?;
        self.disk.sync_dir().await.map_err(|error| self.poison(error))?;
        // Freeing the file's blocks happens when its last handle closes,
        // in whichever thread that is, and can block it for tens of
        // milliseconds (ext4 frees extents and discards). Truncating first
        // does that work through the disk's own asynchronous path; a read
        // still in flight on the old file then retries (see `get`).
        let _ = segment.file.truncate(0).await;
        Ok(())
    }

    /// Copies verified records of segment `from` (whose bytes are `bytes`)
    /// to the compaction output, syncs them, and repoints the index.
    async fn copy_records(
        &self,
        bytes: &[u8],
        from: u64,
        records: &[ScannedRecord],
        output: &mut Option<Writer<D::File>>,
        outputs: &mut Vec<u64>,
    ) -> Result<(), WriteError> {
        let mut records = records.iter().peekable();
        while records.peek().is_some() {
            if output.is_none() {
                let (segment, file) = self.create_segment().await?;
                outputs.push(segment);
                *output = Some(Writer {
                    segment,
                    file,
                    end: HEADER_BLOCK_BYTES as u64,
                    tail: Vec::new(),
                });
            }
            let writer = output.as_mut().expect("created above");
            let block_start = writer.end - writer.tail.len() as u64;
            let mut buffer = writer.tail.clone();
            let mut moved = Vec::new();
            while let Some(record) = records.peek() {
                let len = record.len_on_disk();
                if block_start + buffer.len() as u64 + len > self.options.segment_bytes_max {
                    break;
                }
                let record = records.next().expect("peeked");
                let offset = block_start + buffer.len() as u64;
                let start = record.offset as usize;
                buffer.extend_from_slice(&bytes[start..start + len as usize]);
                moved.push((offset, record));
            }
            if moved.is_empty() {
                let writer = output.take().expect("exists");
                self.seal(writer.segment, &writer.file, writer.end).await?;
                continue;
            }
            let end = block_start + buffer.len() as u64;
            let new_tail =
                buffer[(align_down(end, self.alignment) - block_start) as usize..].to_vec();
            buffer.resize(buffer.len().next_multiple_of(self.alignment), 0);
            let written = async {
                writer.file.write_at(block_start, &buffer).await.map_err(WriteError::from_io)?;
                writer.file.sync_data().await.map_err(|error| self.poison(error))
            }
            .await;
            if let Err(error) = written {
                // Abandon the output; what it holds is harmless copies.
                let writer = output.take().expect("exists");
                self.inner.borrow_mut().abandon(writer.segment);
                return Err(error);
            }
            writer.end = end;
            writer.tail = new_tail;
            let to = writer.segment;
            let mut inner = self.inner.borrow_mut();
            inner.stats.bytes_written += buffer.len() as u64;
            for (offset, record) in moved {
                let old = location(from, record);
                let moved_record = ScannedRecord { offset, ..record.clone() };
                let new = location(to, &moved_record);
                let live = inner.index.relocate(record.partition, &record.key, old, new);
                inner.account_copy(to, moved_record, live, old);
            }
            inner.segments.get_mut(&to).expect("output exists").data_end = end;
        }
        Ok(())
    }

    /// Seals the current segment (synced) and writes every missing index
    /// file, so that the next open reads no segment whole. Writes after
    /// this are refused with [`WriteError::Closed`]; reads go on. Call it
    /// when no write is in flight.
    pub async fn close(&self) -> Result<(), WriteError> {
        {
            let mut inner = self.inner.borrow_mut();
            assert!(!inner.flushing, "close while a write is in flight");
            if inner.poisoned {
                return Err(WriteError::Poisoned);
            }
            inner.closed = true;
        }
        self.seal_writer().await?;
        self.write_index_files().await?;
        // The spare segment holds nothing: it goes.
        let spare = self.inner.borrow_mut().spare.take();
        if let Some((id, _)) = spare {
            self.inner.borrow_mut().segments.remove(&id);
            self.disk.remove(&segment::file_name(id)).await.map_err(WriteError::from_io)?;
        }
        self.disk.sync_dir().await.map_err(|error| self.poison(error))
    }
}

impl<F> Inner<F> {
    /// Accounts a freshly written record of the current segment.
    fn add_record(&mut self, segment_id: u64, record: ScannedRecord) {
        let at = location(segment_id, &record);
        let replaced = self.index.insert_if_newer(record.partition, &record.key, at);
        assert_ne!(replaced, Some(at), "a new write is always the newest");
        if let Some(segment) = replaced.and_then(|old| self.segments.get_mut(&old.segment)) {
            segment.bytes_live -= u64::from(replaced.map_or(0, |old| old.len));
        }
        let segment = self.segments.get_mut(&segment_id).expect("the writer's segment exists");
        segment.bytes_total += record.len_on_disk();
        segment.bytes_live += record.len_on_disk();
        segment.min_seq = segment.min_seq.min(record.seq);
        if let IndexFileState::Pending(records) = &mut segment.index_file {
            records.push(record);
        }
    }

    /// Marks a segment that a failed write may have left records in past
    /// its known end: never appended to, never indexed, always scanned.
    fn abandon(&mut self, id: u64) {
        if let Some(segment) = self.segments.get_mut(&id) {
            segment.sealed = true;
            segment.index_file = IndexFileState::Never;
        }
    }

    /// Accounts a record compaction copied into segment `to`; `live` says
    /// whether the index now points at the copy (it does not if a write
    /// raced the compaction).
    fn account_copy(&mut self, to: u64, record: ScannedRecord, live: bool, old: Location) {
        if let Some(segment) = self.segments.get_mut(&old.segment).filter(|_| live) {
            segment.bytes_live -= u64::from(old.len);
        }
        let segment = self.segments.get_mut(&to).expect("output exists");
        segment.bytes_total += record.len_on_disk();
        segment.bytes_live += if live { record.len_on_disk() } else { 0 };
        segment.min_seq = segment.min_seq.min(record.seq);
        if let IndexFileState::Pending(records) = &mut segment.index_file {
            records.push(record);
        }
    }
}

/// Sets the pace of background I/O (compaction): told the bytes just
/// moved, it returns when the next may move. The store reads no clock, so
/// the runtime that drives it supplies the pace (a token bucket on its
/// timers); the simulator and tools run unpaced.
pub trait Pace {
    fn after(&mut self, bytes: u64) -> impl Future<Output = ()>;
}

/// No pacing: background I/O runs as fast as the disk takes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpaced;

impl Pace for Unpaced {
    fn after(&mut self, _bytes: u64) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// Recently written and read values, so that a hot key is read from memory.
///
/// An entry is keyed by the record's sequence number too, and used only if
/// the index still points at that record, so it can never serve a value
/// that was overwritten, removed, or replaced by recovery. Eviction picks
/// whichever entries the map yields first: close to random, which needs no
/// bookkeeping on the read path and keeps no key hot by accident.
#[derive(Debug, Default)]
struct Cache {
    partitions: ahash::AHashMap<u32, CachedKeys>,
    bytes: usize,
    bytes_max: usize,
}

/// One partition's cached values: key to (record seq, value).
type CachedKeys = ahash::AHashMap<Box<[u8]>, (u64, Box<[u8]>)>;

/// What an entry costs beyond its key and value bytes.
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 64;

impl Cache {
    /// The value of the record `seq` of the key, if cached.
    fn get(&self, partition: u32, key: &[u8], seq: u64) -> Option<&[u8]> {
        match self.partitions.get(&partition)?.get(key)? {
            (cached, value) if *cached == seq => Some(value),
            _ => None,
        }
    }

    fn insert(&mut self, partition: u32, key: &[u8], seq: u64, value: Box<[u8]>) {
        let cost = key.len() + value.len() + CACHE_ENTRY_OVERHEAD_BYTES;
        if cost > self.bytes_max / 8 {
            // One value may not crowd out much of the cache.
            self.remove(partition, key);
            return;
        }
        while self.bytes + cost > self.bytes_max {
            if !self.evict_one() {
                break;
            }
        }
        let keys = self.partitions.entry(partition).or_default();
        if let Some((_, old)) = keys.insert(key.into(), (seq, value)) {
            self.bytes -= key.len() + old.len() + CACHE_ENTRY_OVERHEAD_BYTES;
        }
        self.bytes += cost;
    }

    fn remove(&mut self, partition: u32, key: &[u8]) {
        let Some(keys) = self.partitions.get_mut(&partition) else { return };
        if let Some((_, old)) = keys.remove(key) {
            self.bytes -= key.len() + old.len() + CACHE_ENTRY_OVERHEAD_BYTES;
        }
        if keys.is_empty() {
            self.partitions.remove(&partition);
        }
    }

    fn evict_one(&mut self) -> bool {
        let Some((&partition, keys)) = self.partitions.iter_mut().next() else { return false };
        let Some(key) = keys.keys().next().cloned() else { return false };
        self.remove(partition, &key);
        true
    }
}

fn location(segment: u64, record: &ScannedRecord) -> Location {
    Location {
        segment,
        offset: u32::try_from(record.offset).expect("segments are smaller than 4 GiB"),
        len: record.len_on_disk() as u32,
        seq: record.seq,
        kind: record.kind,
    }
}

/// An empty store's state.
fn placeholder_inner<F>() -> Inner<F> {
    Inner {
        index: Index::default(),
        segments: BTreeMap::new(),
        writer: None,
        unsealed: Vec::new(),
        spare: None,
        queue: Vec::new(),
        flushing: false,
        compacting: false,
        poisoned: false,
        closed: false,
        unsynced: false,
        unsynced_files: Vec::new(),
        next_seq: 1,
        next_segment_id: 1,
        stats: StoreStats::default(),
        cache: Cache::default(),
    }
}

fn fail_all(batch: impl Iterator<Item = Pending>, error: &WriteError) {
    for pending in batch {
        let _ = pending.done.send(Err(error.clone()));
    }
}

fn align_down(value: u64, alignment: usize) -> u64 {
    value - value % alignment as u64
}

/// Reads a whole file, in chunks.
async fn read_whole<F: DiskFile>(file: &F) -> std::io::Result<Vec<u8>> {
    let len = file.len().await?;
    let len = usize::try_from(len)
        .map_err(|_| std::io::Error::other(format!("file of {len} bytes is too large")))?;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let want = READ_CHUNK_BYTES.min(len - bytes.len());
        let chunk = file.read_at(bytes.len() as u64, want).await?;
        if chunk.is_empty() {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Fails the queue if the flush leader's future is dropped mid-flush, so
/// that no writer waits forever.
struct FlushGuard<'a, F> {
    inner: &'a RefCell<Inner<F>>,
    finished: bool,
}

impl<F> FlushGuard<'_, F> {
    fn finish(mut self) {
        self.finished = true;
    }
}

/// Makes the oldest queued writer that can still lead the next leader, or
/// ends the flushing if nobody is queued. Leadership passes with
/// `flushing` still set, so no new writer starts a second flush meanwhile.
fn hand_off_lead<F>(inner: &mut Inner<F>) {
    for pending in &mut inner.queue {
        // A writer whose future was dropped cannot lead: try the next one.
        if pending.lead.take().is_some_and(|lead| lead.send(()).is_ok()) {
            return;
        }
    }
    inner.flushing = false;
    // Every queued writer is gone: nobody waits for these writes.
    inner.queue.clear();
}

/// A queued write, completed by [`Commit::wait`] once it is durable.
///
/// Waiting is also how group commit makes progress: the writer that found
/// no flush running, or that the previous leader chose, leads the next
/// batch from inside `wait`. Dropping a commit without waiting passes that
/// lead on, so no other writer is left waiting; the write itself may still
/// become durable.
#[must_use = "a write is durable only once its commit completes"]
#[derive(Debug)]
pub struct Commit<'a, D: Disk> {
    store: &'a Store<D>,
    outcome: Option<oneshot::Receiver<Result<u64, WriteError>>>,
    /// Fires if this writer is chosen to lead the next batch.
    chosen: Option<oneshot::Receiver<()>>,
    /// This writer found no flush running: it leads the next batch.
    lead_now: bool,
}

impl<D: Disk> Commit<'_, D> {
    /// Waits until the write is durable (or failed); returns its sequence
    /// number.
    pub async fn wait(mut self) -> Result<u64, WriteError> {
        let mut outcome = self.outcome.take().expect("waited once");
        if !std::mem::take(&mut self.lead_now) {
            // Wait for the outcome, or to be chosen to lead the next batch
            // (which then holds this write).
            let chosen = self.chosen.as_mut().expect("set until chosen");
            match futures::future::select(&mut outcome, chosen).await {
                Either::Left((result, _)) => return result.unwrap_or(Err(WriteError::Interrupted)),
                Either::Right((Ok(()), _)) => self.chosen = None,
                // Taken into a batch that someone else leads.
                Either::Right((Err(_), _)) => {
                    self.chosen = None;
                    return outcome.await.unwrap_or(Err(WriteError::Interrupted));
                }
            }
        }
        self.chosen = None;
        self.store.lead_one_batch().await;
        outcome.await.unwrap_or(Err(WriteError::Interrupted))
    }
}

impl<D: Disk> Drop for Commit<'_, D> {
    fn drop(&mut self) {
        let chosen = self.chosen.as_mut().map(oneshot::Receiver::try_recv);
        if self.lead_now || matches!(chosen, Some(Ok(Some(())))) {
            // This writer was to lead and never will: the next one does.
            self.chosen = None;
            hand_off_lead(&mut self.store.inner.borrow_mut());
        }
    }
}

impl<F> Drop for FlushGuard<'_, F> {
    fn drop(&mut self) {
        let mut inner = self.inner.borrow_mut();
        if !self.finished {
            inner.flushing = false;
            // The outcome of the write in flight is unknown: never append
            // after it. Queued writes fail (their senders drop).
            if let Some(writer) = inner.writer.take() {
                inner.abandon(writer.segment);
                inner.unsynced_files.push(writer.file);
                inner.unsynced = true;
            }
            inner.queue.clear();
        }
    }
}

struct CompactionGuard<'a, F> {
    inner: &'a RefCell<Inner<F>>,
}

impl<F> Drop for CompactionGuard<'_, F> {
    fn drop(&mut self) {
        self.inner.borrow_mut().compacting = false;
    }
}

/// Lets other tasks on the same executor run, whatever the executor.
fn yield_now() -> impl Future<Output = ()> {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            context.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false)
}
