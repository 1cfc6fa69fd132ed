//! The glommio probe trap, guarded: glommio decides whether a device's DMA
//! files may use its polled io_uring by probing with a read at offset 0 the
//! first time it opens a DMA file there. If that first file is empty, the
//! probe misleads it, and every later read on the device fails with
//! `EOPNOTSUPP`. `DmaDisk::create` writes each file's header before glommio
//! opens it, so the very first file of a fresh directory must work.
//!
//! This is its own test binary (its own process) so that no other test has
//! opened a DMA file first and hidden the trap.

use holdfast_engine::disk::dma::{DmaDisk, raise_memlock_limit};
use holdfast_engine::disk::{Disk, DiskFile};

#[test]
fn first_file_in_a_fresh_directory_reads_back_what_was_written() {
    raise_memlock_limit().unwrap();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("fresh");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = DmaDisk::open(&dir).unwrap();
            assert!(disk.list().await.unwrap().is_empty());
            let file = disk.create("first", &[0x11; 4096]).await.unwrap();
            let data: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
            file.write_at(4096, &data).await.unwrap();
            file.sync_data().await.unwrap();
            assert_eq!(file.read_at(4096, 4096).await.unwrap(), data);
            assert_eq!(file.read_at(0, 4).await.unwrap(), [0x11; 4]);
        })
        .unwrap()
        .join()
        .unwrap();
}
