//! [`DmaDisk`]: the real disk. Files are glommio DMA files (`O_DIRECT`), so
//! reads, writes and `fdatasync` go through the shard's own io_uring and
//! bypass the page cache.
//!
//! Every call must run on a glommio executor (the shard's), and a handle
//! must stay on the executor that opened it. Before the first executor
//! starts, call [`raise_memlock_limit`].
//!
//! Errors keep their `errno` ([`io::Error::raw_os_error`]), so that the
//! store can tell a full disk (`ENOSPC`) from a failing one (`EIO`); the
//! price is that glommio's context (operation, path) is dropped, and the
//! caller, who knows which file it was working on, adds its own.
//!
//! A few rare metadata operations use ordinary blocking I/O on the shard's
//! thread: writing a new file's header (see [`Disk::create`] for why),
//! listing the directory, and creating it in [`DmaDisk::open`].

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;

use glommio::GlommioError;
use glommio::io::{Directory, DmaFile, OpenOptions};

use super::{Disk, DiskFile};

/// The alignment of every write. 4 KiB covers both 512-byte and 4 KiB
/// native sectors, so files stay portable between devices.
const ALIGNMENT: usize = 4096;

/// The least `RLIMIT_MEMLOCK` glommio starts an executor with.
const MEMLOCK_NEEDED_BYTES: u64 = 512 * 1024;

/// A directory of DMA files. Clones refer to the same directory.
#[derive(Debug, Clone)]
pub struct DmaDisk {
    dir: Rc<PathBuf>,
}

/// One open DMA file. Clones share one file descriptor.
#[derive(Debug, Clone)]
pub struct DmaDiskFile {
    file: Rc<DmaFile>,
}

/// Keeps the `errno` of an I/O error, which glommio's own conversion to
/// `io::Error` drops for errors it annotated with a path.
fn os_error(error: GlommioError<()>) -> io::Error {
    match error {
        GlommioError::IoError(source) | GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

impl DmaDisk {
    /// The disk rooted at `dir`, which is created (with its parents) if
    /// missing. Creating it is not made durable here: a brand-new directory
    /// holds nothing yet that a crash could lose.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<DmaDisk> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(DmaDisk { dir: Rc::new(dir) })
    }

    fn path(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']),
            "{name:?} is not a flat file name"
        );
        self.dir.join(name)
    }

    async fn dma_open(&self, path: &PathBuf) -> io::Result<DmaDiskFile> {
        // `DmaFile::open` opens read-only; writes through it fail with EBADF.
        let file = OpenOptions::new().read(true).write(true).dma_open(path).await;
        let file = file.map_err(os_error)?;
        if !(ALIGNMENT as u64).is_multiple_of(file.alignment()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} needs {}-byte direct I/O, which does not divide the store's {ALIGNMENT}",
                    path.display(),
                    file.alignment()
                ),
            ));
        }
        Ok(DmaDiskFile { file: Rc::new(file) })
    }
}

impl Disk for DmaDisk {
    type File = DmaDiskFile;

    fn alignment(&self) -> usize {
        ALIGNMENT
    }

    async fn create(&self, name: &str, header: &[u8]) -> io::Result<DmaDiskFile> {
        assert!(
            !header.is_empty() && header.len().is_multiple_of(ALIGNMENT),
            "a header of {} bytes is not a non-empty multiple of {ALIGNMENT}",
            header.len()
        );
        let path = self.path(name);
        // The header goes through ordinary I/O so that the file is never
        // empty when glommio opens it (the probe trap in the contract).
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        if let Err(error) = file.write_all(header) {
            // Leave no half-made file behind: a full disk changes nothing.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(error);
        }
        drop(file);
        let opened = self.dma_open(&path).await;
        if opened.is_err() {
            let _ = fs::remove_file(&path);
        }
        opened
    }

    async fn open(&self, name: &str) -> io::Result<DmaDiskFile> {
        self.dma_open(&self.path(name)).await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.path(name)).await.map_err(os_error)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.path(from), self.path(to)).await.map_err(os_error)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = Directory::open(self.dir.as_path()).await.map_err(os_error)?;
        dir.sync().await.map_err(os_error)?;
        dir.close().await.map_err(os_error)
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // The directory is the store's alone, so a name it could not
            // have made is worth stopping for rather than skipping.
            let name = entry.file_name().into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name:?} in {} is not a name the store made", self.dir.display()),
                )
            })?;
            names.push(name);
        }
        names.sort_unstable();
        Ok(names)
    }
}

impl DiskFile for DmaDiskFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        // Not glommio's unaligned `read_at`: near the end of the file it
        // counts the bytes read from the aligned start as if they began at
        // the unaligned offset, and returns bytes from past the end. So the
        // read is widened to aligned bounds here and cut to what exists.
        let alignment = ALIGNMENT as u64;
        let start = offset / alignment * alignment;
        let skip = usize::try_from(offset - start).expect("below the alignment");
        let end = (offset.saturating_add(len as u64)).div_ceil(alignment) * alignment;
        let span = usize::try_from(end - start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read too large"))?;
        let read = self.file.read_at_aligned(start, span).await.map_err(os_error)?;
        let got = read.len().min(skip + len);
        Ok(read.get(skip..got).unwrap_or_default().to_vec())
    }

    async fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            offset.is_multiple_of(ALIGNMENT as u64) && data.len().is_multiple_of(ALIGNMENT),
            "write at offset {offset} of {} bytes is not aligned to {ALIGNMENT}",
            data.len()
        );
        if data.is_empty() {
            return Ok(());
        }
        let mut buffer = self.file.alloc_dma_buffer(data.len());
        buffer.as_bytes_mut().copy_from_slice(data);
        let written = self.file.write_at(buffer, offset).await.map_err(os_error)?;
        if written != data.len() {
            // The kernel splits an O_DIRECT write of whole blocks only when
            // it runs out of something. Nothing is retried here: the caller
            // decides what a partly written file is worth.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes at offset {offset}", data.len()),
            ));
        }
        Ok(())
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(os_error)
    }

    async fn len(&self) -> io::Result<u64> {
        // Not glommio's `file_size`: it runs `statx` on the path the file
        // was opened under, which after a rename or remove names another
        // file or none. `fstat` asks the open file itself, and costs no I/O
        // (the inode is in memory while the file is open).
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: the descriptor stays open while `self.file` lives, and
        // `fstat` fills the whole `stat` when it returns 0.
        let stat = unsafe {
            if libc::fstat(self.file.as_raw_fd(), stat.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            stat.assume_init()
        };
        u64::try_from(stat.st_size).map_err(|_| io::Error::other("negative file size"))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(os_error)
    }

    async fn allocate(&self, len: u64) -> io::Result<()> {
        if len <= self.len().await? {
            return Ok(());
        }
        // `keep_size: false` moves the end of the file to `len` (zeros until
        // written), as the contract asks, besides reserving the blocks.
        self.file.pre_allocate(len, false).await.map_err(os_error)
    }
}

/// Raises this process's `RLIMIT_MEMLOCK` so that glommio can start: each
/// executor locks memory for its io_uring rings and refuses to start below
/// 512 KiB, more than the 64 KiB many distributions default to. The soft
/// limit is raised to the hard limit; if the hard limit is
/// itself too low, both are raised, which only a privileged process
/// (`CAP_SYS_RESOURCE`, e.g. root) may do, and otherwise this returns the
/// `EPERM` with a message saying which setting to change. Call it once,
/// before the first executor starts.
pub fn raise_memlock_limit() -> io::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` into the one we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = MEMLOCK_NEEDED_BYTES as libc::rlim_t;
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let wanted = if limit.rlim_max >= needed {
        libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max }
    } else {
        libc::rlimit { rlim_cur: needed, rlim_max: needed }
    };
    // SAFETY: `setrlimit` only reads the `rlimit` we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!(
                "cannot raise RLIMIT_MEMLOCK from {} (hard {}) to {}: {error}; raise \
                 `memlock` in /etc/security/limits.conf or LimitMEMLOCK= in the unit",
                limit.rlim_cur, limit.rlim_max, wanted.rlim_cur
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{BuilderErrorKind, LocalExecutorBuilder};
    use std::future::Future;

    const BLOCK: usize = ALIGNMENT;

    /// Runs `test` on a fresh glommio executor, as a shard would.
    fn on_executor<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        raise_memlock_limit().unwrap();
        LocalExecutorBuilder::default().spawn(test).unwrap().join().unwrap();
    }

    #[test]
    fn every_operation_round_trips() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("shard-0");
        on_executor(move || async move {
            let disk = DmaDisk::open(&dir).unwrap();
            assert!(disk.list().await.unwrap().is_empty());
            let file = disk.create("seg-1", &[7; BLOCK]).await.unwrap();
            assert_eq!(file.len().await.unwrap(), BLOCK as u64);
            let exists = disk.create("seg-1", &[7; BLOCK]).await.unwrap_err();
            assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(disk.open("nope").await.unwrap_err().kind(), io::ErrorKind::NotFound);

            let data: Vec<u8> = (0..2 * BLOCK).map(|i| i as u8).collect();
            file.write_at(BLOCK as u64, &data).await.unwrap();
            file.sync_data().await.unwrap();
            assert_eq!(file.len().await.unwrap(), 3 * BLOCK as u64);
            assert_eq!(file.read_at(0, 3).await.unwrap(), [7, 7, 7]);
            // Unaligned reads, one straddling the end of the file.
            assert_eq!(file.read_at(BLOCK as u64 + 5, 3).await.unwrap(), data[5..8]);
            let tail = file.read_at(3 * BLOCK as u64 - 10, 100).await.unwrap();
            assert_eq!(tail, data[2 * BLOCK - 10..]);
            assert!(file.read_at(10 * BLOCK as u64, 100).await.unwrap().is_empty());
            assert!(file.read_at(0, 0).await.unwrap().is_empty());

            file.allocate(5 * BLOCK as u64).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 5 * BLOCK as u64);
            assert_eq!(file.read_at(4 * BLOCK as u64, 4).await.unwrap(), [0; 4]);
            file.allocate(BLOCK as u64).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 5 * BLOCK as u64, "allocate never shrinks");
            file.truncate(2 * BLOCK as u64).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 2 * BLOCK as u64);

            disk.create("seg-0", &[1; BLOCK]).await.unwrap();
            disk.rename("seg-1", "seg-2").await.unwrap();
            disk.sync_dir().await.unwrap();
            // A handle follows its file, not the name it was opened under.
            disk.create("seg-1", &[9; BLOCK]).await.unwrap();
            assert_eq!(file.len().await.unwrap(), 2 * BLOCK as u64);
            disk.remove("seg-1").await.unwrap();
            fs::create_dir(dir.join("not-a-file")).unwrap();
            assert_eq!(disk.list().await.unwrap(), ["seg-0", "seg-2"]);
            let reopened = disk.open("seg-2").await.unwrap();
            assert_eq!(reopened.read_at(BLOCK as u64, 8).await.unwrap(), data[..8]);

            // A removed file stays readable through the handles open on it.
            disk.remove("seg-2").await.unwrap();
            disk.sync_dir().await.unwrap();
            assert_eq!(disk.list().await.unwrap(), ["seg-0"]);
            assert_eq!(file.read_at(BLOCK as u64, 8).await.unwrap(), data[..8]);
            assert_eq!(reopened.clone().len().await.unwrap(), 2 * BLOCK as u64);
            let gone = disk.remove("seg-2").await.unwrap_err();
            assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        });
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn unaligned_write_is_a_programming_error() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        // The executor's thread panics; `join` hands over the payload, which
        // is re-raised here for `should_panic` to match.
        let result = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let disk = DmaDisk::open(dir).unwrap();
                let file = disk.create("seg", &[0; BLOCK]).await.unwrap();
                let _ = file.write_at(BLOCK as u64, &[1; 100]).await;
            })
            .unwrap()
            .join();
        match result {
            Err(GlommioError::BuilderError(BuilderErrorKind::ThreadPanic(panic))) => {
                std::panic::resume_unwind(panic)
            }
            other => panic!("the write should have panicked: {other:?}"),
        }
    }
}
