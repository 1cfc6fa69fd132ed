//! The replica's Merkle trees, one per data partition, kept in step with
//! every write (see [`crate::cluster::merkle`] for the tree itself).
//!
//! A write tells the trees the key's entry before and after
//! ([`Trees::written`]), at the moment it is queued in the store, under the
//! key's latch: so the tree of a partition always describes the newest
//! queued state of its keys, which is what a read-modify-write builds on.
//! A queued write that then fails leaves the tree describing a state the
//! store never reached, so its partition's tree is thrown away and built
//! again ([`Trees::invalidate`]).
//!
//! # Building
//!
//! Trees are not persisted: at open every partition holding keys is marked
//! *building* (not comparable: anti-entropy skips it), and
//! [`Replica::build_trees`](super::Replica::build_trees) reads its keys in
//! the background, a page at a time, each under its latch. Writes during a
//! build are not applied to a tree; their newest entry is kept in the
//! build's overlay, which wins over what the build read. The tree is made
//! in one synchronous step at the end (the entries read for keys not
//! written meanwhile, plus the overlay), so it matches the store exactly as
//! of that step, and later writes update it incrementally.
//!
//! Persisting snapshots was the alternative: it saves the build's reads at
//! a restart, but it needs a log of the writes since the snapshot, and a
//! snapshot that does not match the store (a crash between the two) would
//! be believed until the next full comparison. A build reads each key once
//! at low priority, and costs nothing on the write path.

use std::collections::BTreeMap;

use ahash::AHashMap;

use crate::cluster::merkle::MerkleTree;

#[derive(Debug, Default)]
pub(super) struct Trees {
    /// Comparable trees. A partition in neither map holds no keys: its
    /// tree is the empty tree, made on its first write.
    ready: AHashMap<u32, MerkleTree>,
    /// Partitions whose tree is being built, ascending.
    building: BTreeMap<u32, Build>,
}

#[derive(Debug, Default)]
pub(super) struct Build {
    /// The entries read so far, for keys up to `cursor`.
    read: Vec<(Box<[u8]>, u64)>,
    /// The last key read, to list the next page after.
    pub(super) cursor: Option<Box<[u8]>>,
    /// The newest entry of every key written since the build began (`None`:
    /// the key is gone).
    overlay: AHashMap<Box<[u8]>, Option<u64>>,
}

impl Trees {
    /// Trees for a store holding keys of `partitions`: each to be built.
    pub(super) fn new(partitions: impl IntoIterator<Item = u32>) -> Trees {
        let building = partitions.into_iter().map(|p| (p, Build::default())).collect();
        Trees { ready: AHashMap::new(), building }
    }

    /// A write of `key` in `partition` was queued: its entry was `old` and
    /// is `new` (`None`: absent).
    pub(super) fn written(
        &mut self,
        partition: u32,
        key: &[u8],
        old: Option<u64>,
        new: Option<u64>,
    ) {
        if let Some(build) = self.building.get_mut(&partition) {
            build.overlay.insert(key.into(), new);
            return;
        }
        if old == new {
            return;
        }
        self.ready.entry(partition).or_default().update(key, old, new);
    }

    /// The tree of `partition` may not match the store (a write failed
    /// after it was applied): build it again.
    pub(super) fn invalidate(&mut self, partition: u32) {
        self.ready.remove(&partition);
        // A build under way restarts: what it read may be stale too.
        self.building.insert(partition, Build::default());
    }

    /// The comparable tree of `partition`, or `None` while it is built.
    pub(super) fn tree(&self, partition: u32) -> Option<&MerkleTree> {
        if self.building.contains_key(&partition) {
            return None;
        }
        static EMPTY: std::sync::OnceLock<MerkleTree> = std::sync::OnceLock::new();
        Some(self.ready.get(&partition).unwrap_or_else(|| EMPTY.get_or_init(MerkleTree::new)))
    }

    /// The first partition still to be built, and the key its next page
    /// starts after.
    pub(super) fn next_build(&self) -> Option<(u32, Option<Box<[u8]>>)> {
        self.building.iter().next().map(|(&p, build)| (p, build.cursor.clone()))
    }

    /// Whether any partition is still being built.
    pub(super) fn building(&self) -> usize {
        self.building.len()
    }

    /// The build of `partition` read `key`'s entry (`None`: the key is gone
    /// or unreadable). Ignored if the build restarted meanwhile (its cursor
    /// is no longer `after`).
    pub(super) fn build_read(
        &mut self,
        partition: u32,
        after: &Option<Box<[u8]>>,
        key: &[u8],
        entry: Option<u64>,
    ) -> bool {
        let Some(build) = self.building.get_mut(&partition) else { return false };
        if build.cursor != *after {
            return false;
        }
        if let Some(entry) = entry {
            build.read.push((key.into(), entry));
        }
        build.cursor = Some(key.into());
        true
    }

    /// The build of `partition` listed its last key (after `after`): its
    /// tree is made from what it read and the writes since, and becomes
    /// comparable.
    pub(super) fn build_done(&mut self, partition: u32, after: &Option<Box<[u8]>>) {
        match self.building.get(&partition) {
            Some(build) if build.cursor == *after => {}
            _ => return,
        }
        let Some(build) = self.building.remove(&partition) else { return };
        let Build { read, overlay, .. } = build;
        let unwritten = read.into_iter().filter(|(key, _)| !overlay.contains_key(key));
        let written = overlay.iter().filter_map(|(key, entry)| Some((key.clone(), (*entry)?)));
        let tree = MerkleTree::build(unwritten.chain(written));
        if tree.key_count() == 0 {
            self.ready.remove(&partition);
        } else {
            self.ready.insert(partition, tree);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_during_a_build_win_over_what_it_read() {
        let mut trees = Trees::new([3]);
        assert!(trees.tree(3).is_none(), "not comparable while built");
        assert!(trees.tree(4).is_some(), "a partition without keys is comparable (empty)");
        // The build reads a and b; b is rewritten and c added meanwhile, and
        // a write of a lands after the build read it.
        assert!(trees.build_read(3, &None, b"a", Some(1)));
        trees.written(3, b"b", Some(2), Some(20));
        assert!(trees.build_read(3, &Some(b"a".as_slice().into()), b"b", Some(2)));
        trees.written(3, b"c", None, Some(30));
        trees.written(3, b"a", Some(1), None);
        trees.build_done(3, &Some(b"b".as_slice().into()));
        let expected = MerkleTree::build([(b"b".as_slice(), 20), (b"c".as_slice(), 30)]);
        assert_eq!(trees.tree(3), Some(&expected));
        // From now on writes update the tree in place.
        trees.written(3, b"d", None, Some(40));
        let expected = MerkleTree::build([(b"b".as_slice(), 20), (b"c", 30), (b"d", 40)]);
        assert_eq!(trees.tree(3), Some(&expected));
    }

    #[test]
    fn an_invalidated_build_starts_again_and_ignores_reads_in_flight() {
        let mut trees = Trees::new([1]);
        assert!(trees.build_read(1, &None, b"a", Some(1)));
        trees.invalidate(1);
        // A read that began before the restart is stale.
        assert!(!trees.build_read(1, &Some(b"a".as_slice().into()), b"b", Some(2)));
        assert_eq!(trees.next_build(), Some((1, None)));
        trees.build_done(1, &None);
        assert_eq!(trees.tree(1), Some(&MerkleTree::new()));
    }
}
