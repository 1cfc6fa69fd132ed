//! The in-memory index: where the newest record of every key is.
//!
//! Keys are grouped by partition, so the keys of one partition can be
//! listed (in a stable, sorted order) without touching any other partition;
//! that is what partition handoff and the Merkle trees need. The hash maps
//! use ahash: the index lives and dies with the process, so a per-process
//! seed is harmless here, and nothing derived from the maps' order ever
//! leaves this module unsorted.

use ahash::AHashMap;

use super::record::RecordKind;

/// Where a record is on disk, and the facts about it the index needs
/// without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u32,
    /// The record's size on disk, padding included.
    pub len: u32,
    pub seq: u64,
    pub kind: RecordKind,
}

/// The newest location of every key, by partition.
#[derive(Debug, Default)]
pub struct Index {
    partitions: AHashMap<u32, AHashMap<Box<[u8]>, Location>>,
    /// Keys whose newest record is a put (what a user calls the keys).
    live_keys: u64,
}

impl Index {
    pub fn get(&self, partition: u32, key: &[u8]) -> Option<&Location> {
        self.partitions.get(&partition)?.get(key)
    }

    /// Records `location` for the key if it is newer than what the index
    /// holds. Returns the location it replaced, or `location` itself when
    /// the index already held something newer (the record is then dead on
    /// arrival), or `None` when the key was new.
    pub fn insert_if_newer(
        &mut self,
        partition: u32,
        key: &[u8],
        location: Location,
    ) -> Option<Location> {
        let keys = self.partitions.entry(partition).or_default();
        match keys.get_mut(key) {
            Some(existing) if existing.seq > location.seq => Some(location),
            Some(existing) if existing.seq == location.seq => {
                // The same record seen twice: a compaction copy beside its
                // original after a crash. Either copy will do; keep the one
                // already indexed and count the other as dead.
                Some(location)
            }
            Some(existing) => {
                let replaced = *existing;
                *existing = location;
                self.live_keys -= u64::from(replaced.kind == RecordKind::Put);
                self.live_keys += u64::from(location.kind == RecordKind::Put);
                Some(replaced)
            }
            None => {
                keys.insert(key.into(), location);
                self.live_keys += u64::from(location.kind == RecordKind::Put);
                None
            }
        }
    }

    /// Points the key at `to` if it still points at `from` (compaction moved
    /// the record). Returns whether it did.
    pub fn relocate(&mut self, partition: u32, key: &[u8], from: Location, to: Location) -> bool {
        assert_eq!((from.seq, from.kind), (to.seq, to.kind), "a move keeps the record");
        match self.partitions.get_mut(&partition).and_then(|keys| keys.get_mut(key)) {
            Some(location) if *location == from => {
                *location = to;
                true
            }
            _ => false,
        }
    }

    /// Forgets the key if it still points at `at` (a removal whose record
    /// compaction dropped). Returns whether it did.
    pub fn forget(&mut self, partition: u32, key: &[u8], at: Location) -> bool {
        let Some(keys) = self.partitions.get_mut(&partition) else { return false };
        if keys.get(key) != Some(&at) {
            return false;
        }
        keys.remove(key);
        self.live_keys -= u64::from(at.kind == RecordKind::Put);
        if keys.is_empty() {
            self.partitions.remove(&partition);
        }
        true
    }

    /// Up to `limit` keys of `partition` holding a value, in ascending byte
    /// order, starting after `after`.
    pub fn keys(&self, partition: u32, after: Option<&[u8]>, limit: usize) -> Vec<Box<[u8]>> {
        let Some(keys) = self.partitions.get(&partition) else { return Vec::new() };
        let mut found: Vec<&Box<[u8]>> = keys
            .iter()
            .filter(|(key, location)| {
                location.kind == RecordKind::Put && after.is_none_or(|after| &***key > after)
            })
            .map(|(key, _)| key)
            .collect();
        // Only the first `limit` matter: select them before sorting them.
        if found.len() > limit {
            found.select_nth_unstable(limit);
            found.truncate(limit);
        }
        found.sort_unstable();
        found.into_iter().cloned().collect()
    }

    /// The keys of `partition` holding a value for which `wanted` is true,
    /// in no particular order (only those are copied).
    pub fn keys_where(&self, partition: u32, wanted: impl Fn(&[u8]) -> bool) -> Vec<Box<[u8]>> {
        let Some(keys) = self.partitions.get(&partition) else { return Vec::new() };
        keys.iter()
            .filter(|(key, location)| location.kind == RecordKind::Put && wanted(key))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The partitions holding at least one key (a value or a removal), sorted.
    pub fn partitions(&self) -> Vec<u32> {
        let mut partitions: Vec<u32> = self.partitions.keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// The partitions holding at least one value (not only removals),
    /// sorted.
    pub fn live_partitions(&self) -> Vec<u32> {
        let live = |keys: &&AHashMap<Box<[u8]>, Location>| {
            keys.values().any(|location| location.kind == RecordKind::Put)
        };
        let mut partitions: Vec<u32> =
            self.partitions.iter().filter(|(_, keys)| live(keys)).map(|(&p, _)| p).collect();
        partitions.sort_unstable();
        partitions
    }

    /// Keys of `partition` holding a value, counted without copying them.
    pub fn live_keys_in(&self, partition: u32) -> usize {
        let Some(keys) = self.partitions.get(&partition) else { return 0 };
        keys.values().filter(|location| location.kind == RecordKind::Put).count()
    }

    /// Keys holding a value.
    pub fn live_keys(&self) -> u64 {
        self.live_keys
    }

    /// Every entry pointing into `segment`, for compaction's liveness test.
    pub fn entries(&self) -> impl Iterator<Item = (u32, &[u8], &Location)> {
        self.partitions.iter().flat_map(|(&partition, keys)| {
            keys.iter().map(move |(key, location)| (partition, &**key, location))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, seq: u64, kind: RecordKind) -> Location {
        Location { segment, offset: 4096, len: 48, seq, kind }
    }

    #[test]
    fn newest_record_wins_whatever_the_order_seen() {
        let mut index = Index::default();
        assert_eq!(index.insert_if_newer(1, b"k", at(2, 9, RecordKind::Put)), None);
        let stale = at(1, 3, RecordKind::Put);
        assert_eq!(index.insert_if_newer(1, b"k", stale), Some(stale));
        assert_eq!(index.get(1, b"k").map(|l| l.seq), Some(9));
        assert_eq!(index.live_keys(), 1);
        let removal = at(3, 12, RecordKind::Remove);
        assert_eq!(index.insert_if_newer(1, b"k", removal).map(|l| l.seq), Some(9));
        assert_eq!(index.live_keys(), 0);
        assert!(index.keys(1, None, 10).is_empty());
    }

    #[test]
    fn partition_keys_come_sorted_and_paged() {
        let mut index = Index::default();
        for (seq, key) in [b"d", b"b", b"a", b"c", b"e"].iter().enumerate() {
            index.insert_if_newer(7, *key, at(1, seq as u64 + 1, RecordKind::Put));
        }
        index.insert_if_newer(8, b"zz", at(1, 100, RecordKind::Put));
        let first: Vec<_> = index.keys(7, None, 2);
        assert_eq!(first, [b"a".as_slice().into(), b"b".as_slice().into()]);
        let rest = index.keys(7, Some(b"b"), 10);
        assert_eq!(rest.len(), 3);
        assert_eq!(&*rest[0], b"c");
    }
}
