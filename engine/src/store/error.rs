//! The store's errors, one enum per operation family.
//!
//! I/O errors are held in an `Arc` because one failed group commit fails
//! every write of its batch with the same cause.

use std::io;
use std::sync::Arc;

/// Why a store could not be opened. Corruption is not among them: a store
/// with damaged records opens and reports them (see `RecoveryReport`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("invalid store options: {0}")]
    Options(String),
    #[error("{operation} {file}: {source}")]
    Io {
        operation: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },
}

/// Why a write (put or remove) was not acknowledged. A write that failed
/// may still be found after a restart (its outcome is unknown, as in every
/// database); one that succeeded is never lost under `SyncPolicy::Always`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("key is {len} bytes, over the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, over the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("disk full: the write was refused and nothing acknowledged was lost")]
    DiskFull,
    #[error("write failed: {0}")]
    Io(Arc<io::Error>),
    #[error("fdatasync failed, so the store accepts no writes until it is reopened: {0}")]
    SyncFailed(Arc<io::Error>),
    #[error("the store accepts no writes until it is reopened: an earlier fdatasync failed")]
    Poisoned,
    #[error("the write was interrupted before its outcome was known")]
    Interrupted,
    #[error("the store is closed")]
    Closed,
}

impl WriteError {
    pub(crate) fn from_io(error: io::Error) -> WriteError {
        if crate::disk::is_disk_full(&error) {
            WriteError::DiskFull
        } else {
            WriteError::Io(Arc::new(error))
        }
    }
}

/// Why a read failed. A missing key is not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The record the index points at does not verify. It is never served;
    /// the segment is marked damaged for repair from a replica.
    #[error("record at segment {segment:016x} offset {offset} is corrupt: {detail}")]
    Corrupt { segment: u64, offset: u32, detail: String },
}

/// Why a compaction stopped. What it finished before stopping stays done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("compaction read failed: {0}")]
    Read(#[from] io::Error),
}
