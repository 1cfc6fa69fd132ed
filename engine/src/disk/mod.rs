//! The disk seam: the one narrow interface through which the store touches
//! storage, with exactly two implementations.
//!
//! - [`dma::DmaDisk`]: the real one. Files opened with `O_DIRECT` through
//!   glommio's DMA files, so every read, write and `fdatasync` goes through
//!   io_uring on the shard's own executor.
//! - [`sim::SimDisk`]: an in-memory disk for tests that models what real
//!   media do when things go wrong, from a seed: a crash loses what was not
//!   yet synced (a prefix of the unsynced writes survives, the last one maybe
//!   torn at a sector boundary), directory changes not yet synced are lost,
//!   bits flip, writes land at the wrong offset, `fdatasync` fails with `EIO`
//!   (and, like Linux, the data of that failed sync may be gone even though
//!   a later sync succeeds), and the disk runs out of space (`ENOSPC`).
//!
//! # Contract
//!
//! - A directory holds flat files named by the store (no subdirectories).
//! - Writes are positioned and must be aligned: `offset` and `data.len()`
//!   are multiples of [`Disk::alignment`]. Reads may be unaligned and are
//!   short at the end of the file.
//! - A write is durable only after [`DiskFile::sync_data`] returned `Ok`.
//!   A file's existence (create, rename, remove) is durable only after
//!   [`Disk::sync_dir`] returned `Ok`.
//! - After `sync_data` returned an error, nothing written to that file
//!   since its last successful sync may be assumed durable, even if a later
//!   `sync_data` succeeds. The store never retries a failed sync.
//! - A file handle stays readable after its name was removed (as on Linux),
//!   so a read racing a compaction that removed the segment still succeeds.
//! - [`Disk::create`] writes the file's first bytes (`header`) before it
//!   returns. This is not a convenience: glommio probes io_uring support with
//!   a read at offset 0 the first time it opens a DMA file on a device, and
//!   an empty file makes it pick the wrong ring (later reads then fail with
//!   `EOPNOTSUPP`). Creating every file non-empty removes that trap by
//!   construction.

// `async fn` in these traits is deliberate: every implementation and every
// caller lives on one thread (a shard), so the futures need not be `Send`.
#![allow(async_fn_in_trait)]

pub mod dma;
pub mod sim;

use std::io;

/// A directory of files, as the store sees it.
pub trait Disk {
    /// A handle to one open file. Cheap to clone (reference counted); every
    /// clone refers to the same open file.
    type File: DiskFile + Clone + std::fmt::Debug;

    /// The alignment, in bytes, of every write's offset and length.
    fn alignment(&self) -> usize;

    /// Creates the file `name`, which must not exist, holding exactly
    /// `header` (whose length is a non-zero multiple of the alignment), and
    /// opens it for reading and writing. The header is written but not
    /// synced; the name is durable after the next [`Disk::sync_dir`].
    async fn create(&self, name: &str, header: &[u8]) -> io::Result<Self::File>;

    /// Opens the existing file `name` for reading and writing.
    async fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Removes the name `name`. Open handles stay readable.
    async fn remove(&self, name: &str) -> io::Result<()>;

    /// Renames `from` to `to`, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Makes every create, rename and remove so far durable.
    async fn sync_dir(&self) -> io::Result<()>;

    /// The names of all files in the directory, sorted.
    async fn list(&self) -> io::Result<Vec<String>>;
}

/// One open file.
// `is_empty` would mean nothing here: every file starts with its header.
#[allow(clippy::len_without_is_empty)]
pub trait DiskFile {
    /// Reads up to `len` bytes at `offset`; fewer only at the end of the file.
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;

    /// Writes all of `data` at `offset`. Both must be aligned.
    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes every write to this file so far durable (`fdatasync`).
    async fn sync_data(&self) -> io::Result<()>;

    /// The file's length in bytes.
    async fn len(&self) -> io::Result<u64>;

    /// Sets the file's length, dropping everything past `len`. Durable after
    /// the next `sync_data`.
    async fn truncate(&self, len: u64) -> io::Result<()>;

    /// Extends the file with zeros to at least `len` bytes and reserves the
    /// space, so that a full disk shows up here rather than in a later
    /// write. Durable after the next `sync_data`.
    async fn allocate(&self, len: u64) -> io::Result<()>;
}

/// The error a full disk gives, as `io::Error::raw_os_error` reports it.
pub const ENOSPC: i32 = libc::ENOSPC;
/// The error a failed write or sync gives.
pub const EIO: i32 = libc::EIO;

/// Whether `error` means the disk is full.
pub fn is_disk_full(error: &io::Error) -> bool {
    error.raw_os_error() == Some(ENOSPC) || error.kind() == io::ErrorKind::StorageFull
}
