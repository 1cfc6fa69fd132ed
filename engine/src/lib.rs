//! holdfast-engine: what runs inside a holdfast node.
//!
//! - [`cluster`]: the sans-IO cluster core (the coordinator of quorum reads
//!   and writes, the history checker) and the simulator that runs a whole
//!   cluster from one seed. Membership, handoff and anti-entropy join it.
//! - [`server`]: the glommio runtime that drives the same core on a real
//!   node: one executor per core, TCP to clients and peers.
//! - [`replica`]: a key's sibling set in a shard's store: coordinated
//!   writes and merges of replicated sets.
//!
//! - [`disk`]: the one interface through which storage is touched, with two
//!   implementations: io_uring (`O_DIRECT` glommio DMA files) and a seeded,
//!   fault-injecting simulated disk.
//! - [`store`]: a log-structured store (append-only checksummed segments, an
//!   in-memory index, group commit, crash recovery, index files for fast
//!   restarts, background compaction). One per shard; it keeps opaque bytes
//!   under `(partition, key)` and knows nothing of clocks or rings.
//!
//! What it is not: a general embedded database. There are no transactions,
//! no range scans across partitions, and nothing is `Send`: a store belongs
//! to the shard (thread) that opened it, which is how it needs no locks.
//!
//! Limits: keys up to 64 KiB and values up to 1 MiB by default (at most
//! 1 MiB and 64 MiB by the on-disk format), segments below 4 GiB.
//!
//! ```
//! use futures::executor::block_on;
//! use holdfast_engine::disk::sim::{SimDisk, SimDiskOptions};
//! use holdfast_engine::store::{Store, StoreOptions};
//!
//! block_on(async {
//!     // The simulated disk stands in for `DmaDisk::open(dir)?` here.
//!     let disk = SimDisk::new(SimDiskOptions::new(7));
//!     let (store, _recovery) = Store::open(disk.clone(), StoreOptions::default()).await?;
//!     store.put(3, b"cart:alice", b"apples").await?;
//!     assert_eq!(store.get(3, b"cart:alice").await?, Some(b"apples".to_vec()));
//!
//!     // The power fails; what was acknowledged is still there.
//!     disk.crash();
//!     drop(store);
//!     let (store, _recovery) = Store::open(disk, StoreOptions::default()).await?;
//!     assert_eq!(store.keys(3, None, 10), vec![b"cart:alice".to_vec().into_boxed_slice()]);
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })
//! .unwrap();
//! ```

pub mod cluster;
pub mod disk;
pub mod identity;
pub mod partition;
pub mod replica;
pub mod server;
pub mod store;
