//! The store on the real disk (glommio, io_uring, `O_DIRECT`).

use holdfast_engine::disk::dma::{DmaDisk, raise_memlock_limit};
use holdfast_engine::store::{Store, StoreOptions, SyncPolicy};

fn on_executor<T: Send + 'static>(work: impl AsyncFnOnce() -> T + Send + 'static) -> T {
    raise_memlock_limit().expect("RLIMIT_MEMLOCK");
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { work().await })
        .expect("executor")
        .join()
        .expect("executor thread")
}

/// A brand-new, empty data directory must work on first use. glommio picks
/// its io_uring ring from a probe read of the first DMA file it opens on a
/// device; an empty file there made later reads fail with `EOPNOTSUPP`.
#[test]
fn a_fresh_empty_data_directory_writes_reads_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    on_executor(async move || {
        let options = StoreOptions {
            segment_bytes_max: 1 << 20,
            value_bytes_max: 64 << 10,
            ..StoreOptions::default()
        };
        let (store, report) =
            Store::open(DmaDisk::open(&path).expect("disk"), options.clone()).await.expect("open");
        assert_eq!(report.segments, 0);
        for n in 0..500u32 {
            let value = vec![n as u8; 100 + n as usize * 7];
            store.put(n % 8, format!("key{n}").as_bytes(), &value).await.expect("put");
        }
        store.remove(3, b"key3").await.expect("remove");
        for n in 0..500u32 {
            let found = store.get(n % 8, format!("key{n}").as_bytes()).await.expect("get");
            let expected = (n != 3).then(|| vec![n as u8; 100 + n as usize * 7]);
            assert_eq!(found, expected, "key{n}");
        }
        let compacted = store.compact(true).await.expect("compact");
        assert!(compacted.segments_compacted > 0);
        store.close().await.expect("close");

        let options = StoreOptions { sync: SyncPolicy::Never, ..options };
        let (store, report) =
            Store::open(DmaDisk::open(&path).expect("disk"), options).await.expect("reopen");
        assert_eq!(report.segments_scanned, 0, "close left index files: {report:?}");
        assert_eq!(report.live_keys, 499);
        for n in (0..500u32).step_by(37) {
            let found = store.get(n % 8, format!("key{n}").as_bytes()).await.expect("get");
            assert_eq!(found.is_some(), n != 3);
        }
        let check = holdfast_engine::store::check(&DmaDisk::open(&path).expect("disk"))
            .await
            .expect("check");
        assert!(check.is_clean(), "{check:?}");
    });
}
