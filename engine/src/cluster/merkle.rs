//! The per-partition Merkle tree that anti-entropy compares between replicas.
//!
//! Each replica keeps one [`MerkleTree`] per partition it holds
//! ([`crate::replica`] updates it on every write and builds it after open).
//! The tree summarises the partition's keys so that two replicas can find
//! the keys on which they disagree by exchanging a few hashes instead of
//! every key. This module is the tree and a model of the comparison
//! ([`diff_leaves`]); the exchange between replicas is the coordinator's
//! (`coordinator::antientropy`).
//!
//! # Structure
//!
//! A complete tree of fixed shape: [`FANOUT`] children per interior node,
//! [`DEPTH`] levels of interior nodes (level 0 is the root), and
//! [`LEAVES`] = `FANOUT^DEPTH` leaf buckets at level `DEPTH`. A key lives in
//! leaf [`leaf_of`]`(key)`. The entry of a key is
//! [`entry_hash`]`(key, canonical sibling-set encoding)`, and
//!
//! ```text
//! leaf      = sum (mod 2^64) of the entry hashes of the leaf's keys  (0 when empty)
//! interior  = xxh3_64(child_0 ‖ child_1 ‖ … ‖ child_15), each as u64 little-endian
//! ```
//!
//! # Why a sum at the leaves
//!
//! A leaf is a multiset hash of its entries: adding or removing one entry
//! is one `wrapping_add` or `wrapping_sub`, so a write costs O(1) at the
//! leaf plus one hash per interior level on the path to the root
//! (`DEPTH` hashes of `FANOUT` words), never a rebuild and never a read of
//! the leaf's other keys. The sum is also independent of the order in
//! which keys were written, so two replicas that reached the same state by
//! different histories have the same tree.
//!
//! XOR would do the same, with one weakness: two equal entries cancel, so a
//! leaf holding an entry twice would look like a leaf holding it not at
//! all. That cannot happen through correct use, since a key appears at most
//! once in a partition and its entry hash covers the key, so two keys never
//! share an entry; the tree is told the old entry on every write
//! ([`MerkleTree::update`]) and removes it before adding the new one. The
//! sum is chosen anyway because it costs the same and fails louder: should
//! a caller ever add an entry twice, the leaf differs from its replica's and
//! the exchange repairs it, where XOR would silently hide both copies.
//! Neither is collision resistant against an adversary choosing keys; the
//! tree detects accidental divergence, and keys come from clients that
//! gain nothing by hiding their own writes from repair.
//!
//! # Why this shape
//!
//! Keys are spread over Q partitions (Q = 1024 by default), so a partition
//! of a store with n keys holds about n / Q of them: about 977 for 1M keys.
//! Comparing two replicas of a partition goes level by level: they compare
//! roots (one hash), and for every interior node that differs one side sends
//! its `FANOUT` children. A key that differs therefore costs about
//! `FANOUT · DEPTH` hashes (fewer when two differing keys share a path), and
//! the exchange takes `DEPTH + 1` rounds, batched over all partitions of a
//! node pair. At a differing leaf the later key exchange must list the
//! leaf's keys, so leaves should hold about one key each.
//!
//! | shape (F×D) | leaves | keys per leaf at 1M keys | hashes per differing key | rounds | tree bytes |
//! |-------------|--------|--------------------------|--------------------------|--------|------------|
//! | 16×2        | 256    | 3.8                      | 32                       | 3      | 2.2 KiB    |
//! | **16×3**    | 4096   | 0.24                     | 48                       | 4      | 34 KiB     |
//! | 8×4         | 4096   | 0.24                     | 32                       | 5      | 37 KiB     |
//! | 4×6         | 4096   | 0.24                     | 24                       | 7      | 43 KiB     |
//!
//! 16×2 makes every differing leaf cost about four key listings (each a key
//! plus a hash, larger than the 16 hashes it saves) and runs out of room
//! quickly: at 10M keys it is 38 keys per leaf. Narrower trees of 4096
//! leaves send fewer hashes per key but need more rounds, each a network
//! round trip for the whole exchange. 16×3 keeps a differing leaf at about
//! one key up to 1M keys and a few keys at 10M, costs 4 rounds, and
//! updates with 3 hashes of 128 bytes. The price is 34 KiB per partition
//! held whether it is full or empty (35 MiB for 1024 partitions).
//!
//! For 1M keys in 1024 partitions, comparing two whole replicas costs:
//!
//! | differing keys d | hashes sent (about)                       | bytes at 8 per hash | rounds |
//! |------------------|-------------------------------------------|---------------------|--------|
//! | 0                | 1024 (one root per partition)             | 8 KiB               | 1      |
//! | 10               | 1024 + 10 · 48 = 1504                     | 12 KiB              | 4      |
//! | 1000             | 1024 + 16 · (638 + 985 + 998) ≈ 43 000    | 336 KiB             | 4      |
//!
//! For d = 1000, about 638 partitions hold a differing key (Poisson with
//! mean 0.98), and keys in one partition rarely share a level-1 or level-2
//! node, so the count is close to `d · FANOUT · DEPTH` plus the roots: about
//! 2 · d · log2(n) hashes, against n = 1M entry hashes (8 MB) for sending
//! everything. The `merkle` benchmark measures 1024, 1504 and 42 672
//! hashes for these three cases (378 KiB with framing for d = 1000, 4.8% of
//! sending everything), and about 31 ns per [`MerkleTree::update`]. The
//! real exchange (`anti_entropy` benchmark: two replicas, the
//! coordinator's protocol, every key's sets) sends 1024, 1504 and 42 912
//! hashes; with the leaf listings and the sets repaired both ways, about
//! 40 KiB, 47 KiB and 637 KiB, in 1.5 ms, 2 ms and 73 ms of CPU.
//!
//! # Invariants
//!
//! - Every interior node is the hash of its children, after every call.
//! - Nothing here depends on the process: no seeded hasher, no clock, no
//!   `HashMap` order. The same entries give the same tree on every node,
//!   every version, every architecture.
//! - A snapshot ([`MerkleTree::encode`]) holds only the leaves; decoding
//!   recomputes the interior nodes, so a decoded tree cannot be internally
//!   inconsistent.

use xxhash_rust::xxh3::{Xxh3, xxh3_64, xxh3_64_with_seed};

/// Children of each interior node.
pub const FANOUT: usize = 16;
/// Levels of interior nodes; the root is level 0 and the leaves level `DEPTH`.
pub const DEPTH: usize = 3;
/// Leaf buckets per partition: `FANOUT^DEPTH`.
pub const LEAVES: usize = FANOUT.pow(DEPTH as u32);
/// Nodes of all levels, leaves included.
const NODES: usize = level_offset(DEPTH) + LEAVES;
/// Bits of the leaf-choosing hash that pick the leaf.
const LEAF_BITS: u32 = LEAVES.trailing_zeros();
/// The seed of the hash that picks a key's leaf. It must differ from the
/// unseeded xxh3 whose top bits pick the key's partition
/// (`holdfast_net::ring::partition_of`): with the same bits, all keys of a
/// partition would share the first levels of the tree and crowd into
/// `LEAVES / Q` leaves. Fixed forever: changing it moves every key.
const LEAF_SEED: u64 = 0x6d65_726b_6c65_5f31; // "merkle_1"

const _: () = assert!(FANOUT.is_power_of_two() && FANOUT >= 2);
const _: () = assert!(DEPTH >= 1);
// The snapshot stores leaf indices as u16.
const _: () = assert!(LEAVES <= 1 << 16);

/// Index of the first node of `level` in the level-major node array.
const fn level_offset(level: usize) -> usize {
    (FANOUT.pow(level as u32) - 1) / (FANOUT - 1)
}

/// Nodes at `level`.
const fn level_width(level: usize) -> usize {
    FANOUT.pow(level as u32)
}

/// The hash of one key's entry: xxh3 (unseeded) over the key's length as a
/// u64 little-endian, the key, and the canonical encoding of its sibling
/// set. The length keeps `("ab", "c")` and `("a", "bc")` apart.
///
/// An absent key has no entry and contributes nothing to its leaf; see
/// [`MerkleTree::update`].
pub fn entry_hash(key: &[u8], set_bytes: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    hasher.update(set_bytes);
    hasher.digest()
}

/// The leaf bucket of `key`: the top bits of xxh3 with a fixed seed, so
/// independent of the bits that pick its partition.
pub fn leaf_of(key: &[u8]) -> usize {
    // LEAF_BITS <= 16, so the cast is exact.
    (xxh3_64_with_seed(key, LEAF_SEED) >> (64 - LEAF_BITS)) as usize
}

/// The hash of an interior node from its children, in order.
fn hash_children(children: &[u64]) -> u64 {
    assert_eq!(children.len(), FANOUT);
    let mut bytes = [0u8; FANOUT * 8];
    for (chunk, child) in bytes.chunks_exact_mut(8).zip(children) {
        chunk.copy_from_slice(&child.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// The Merkle tree of one partition's keys. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// All nodes, level by level from the root; `NODES` long.
    nodes: Box<[u64]>,
    /// Entries in the tree: keys present in the partition.
    key_count: u64,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("root", &format_args!("{:016x}", self.root()))
            .field("key_count", &self.key_count)
            .finish_non_exhaustive()
    }
}

impl Default for MerkleTree {
    fn default() -> MerkleTree {
        MerkleTree::new()
    }
}

impl MerkleTree {
    /// The tree of an empty partition.
    pub fn new() -> MerkleTree {
        let mut tree = MerkleTree { nodes: vec![0; NODES].into_boxed_slice(), key_count: 0 };
        tree.rebuild_interior();
        tree
    }

    /// The tree of a partition holding exactly `entries`: `(key, entry
    /// hash)` pairs, each key at most once, in any order. This is the
    /// from-scratch build; the write path uses [`MerkleTree::update`].
    pub fn build<K: AsRef<[u8]>>(entries: impl IntoIterator<Item = (K, u64)>) -> MerkleTree {
        let mut tree = MerkleTree { nodes: vec![0; NODES].into_boxed_slice(), key_count: 0 };
        let leaves = level_offset(DEPTH);
        for (key, entry) in entries {
            let slot = &mut tree.nodes[leaves + leaf_of(key.as_ref())];
            *slot = slot.wrapping_add(entry);
            tree.key_count += 1;
        }
        tree.rebuild_interior();
        tree
    }

    /// Records a write of `key`: its entry hash was `old` (`None`: the key
    /// was absent) and is now `new` (`None`: the key is gone, e.g. a
    /// tombstone collected). Removes the old entry from the key's leaf,
    /// adds the new one and rehashes the `DEPTH` interior nodes above it:
    /// O(`FANOUT · DEPTH`), whatever the partition's size.
    ///
    /// `old` must be the entry this tree last saw for `key`; the tree
    /// cannot check it, and a wrong `old` leaves the leaf differing from
    /// its replicas' until anti-entropy repairs it (or the tree is rebuilt).
    ///
    /// # Panics
    ///
    /// If `old` is `Some` while the tree holds no entries: the caller's
    /// bookkeeping is broken.
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        let leaf = leaf_of(key);
        let slot = &mut self.nodes[level_offset(DEPTH) + leaf];
        if let Some(old) = old {
            *slot = slot.wrapping_sub(old);
            assert!(self.key_count > 0, "removing an entry from an empty Merkle tree");
            self.key_count -= 1;
        }
        if let Some(new) = new {
            *slot = slot.wrapping_add(new);
            self.key_count += 1;
        }
        let mut index = leaf;
        for level in (0..DEPTH).rev() {
            index /= FANOUT;
            self.rehash(level, index);
        }
    }

    /// The root hash: equal roots mean (up to a 2^-64 chance) equal keys
    /// and sibling sets.
    pub fn root(&self) -> u64 {
        self.nodes[0]
    }

    /// The hash of node `index` of `level` (0 is the root, `DEPTH` the
    /// leaves).
    ///
    /// # Panics
    ///
    /// If `level > DEPTH` or `index` is not below `FANOUT^level`.
    pub fn node(&self, level: usize, index: usize) -> u64 {
        assert!(level <= DEPTH && index < level_width(level), "no node {index} at level {level}");
        self.nodes[level_offset(level) + index]
    }

    /// The `FANOUT` hashes below interior node `index` of `level`, in
    /// order: what one side sends when that node differs.
    ///
    /// # Panics
    ///
    /// If `level >= DEPTH` (leaves have no children) or `index` is not
    /// below `FANOUT^level`.
    pub fn children(&self, level: usize, index: usize) -> &[u64] {
        assert!(level < DEPTH && index < level_width(level), "no interior node {index} at {level}");
        let first = level_offset(level + 1) + index * FANOUT;
        &self.nodes[first..first + FANOUT]
    }

    /// The hash of leaf `index`: the sum of its entries, 0 when empty.
    ///
    /// # Panics
    ///
    /// If `index >= LEAVES`.
    pub fn leaf(&self, index: usize) -> u64 {
        self.node(DEPTH, index)
    }

    /// Entries in the tree.
    pub fn key_count(&self) -> u64 {
        self.key_count
    }

    /// Recomputes interior node `index` of `level` from its children.
    fn rehash(&mut self, level: usize, index: usize) {
        let hash = hash_children(self.children(level, index));
        self.nodes[level_offset(level) + index] = hash;
    }

    /// Recomputes every interior node from the leaves up.
    fn rebuild_interior(&mut self) {
        for level in (0..DEPTH).rev() {
            for index in 0..level_width(level) {
                self.rehash(level, index);
            }
        }
    }
}

/// What comparing two trees by exchange costs, as [`diff_leaves`] counts
/// it: one side sends the root, then, for each interior node whose hashes
/// differ, its `FANOUT` children, one level per round. Every hash sent is
/// compared once by the receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffCost {
    /// Hashes sent (and compared): 1 for the root plus `FANOUT` per
    /// expanded node.
    pub hashes: u64,
    /// Interior nodes that differed and whose children were sent: one
    /// request and one reply each, for framing estimates.
    pub nodes_expanded: u64,
    /// Round trips: 1 when the roots agree, `DEPTH + 1` otherwise.
    pub rounds: u32,
}

impl DiffCost {
    /// Adds the cost of another partition's exchange run side by side with
    /// this one: hashes and nodes add up, rounds overlap (the maximum).
    pub fn absorb(&mut self, other: DiffCost) {
        self.hashes += other.hashes;
        self.nodes_expanded += other.nodes_expanded;
        self.rounds = self.rounds.max(other.rounds);
    }
}

/// The leaves on which `a` and `b` differ, ascending, found by descending
/// only into interior nodes whose hashes differ, and what that descent
/// would cost over a network.
///
/// A leaf that differs holds at least one key whose entry differs (missing
/// on one side, or another sibling set); a leaf that agrees holds none,
/// except with probability about 2^-64 per leaf.
pub fn diff_leaves(a: &MerkleTree, b: &MerkleTree) -> (Vec<usize>, DiffCost) {
    let mut cost = DiffCost { hashes: 1, nodes_expanded: 0, rounds: 1 };
    if a.root() == b.root() {
        return (Vec::new(), cost);
    }
    let mut frontier = vec![0usize];
    for level in 0..DEPTH {
        cost.rounds += 1;
        let mut next = Vec::new();
        for &index in &frontier {
            cost.nodes_expanded += 1;
            cost.hashes += FANOUT as u64;
            let before = next.len();
            let pairs = a.children(level, index).iter().zip(b.children(level, index));
            for (child, (x, y)) in pairs.enumerate() {
                if x != y {
                    next.push(index * FANOUT + child);
                }
            }
            // A node is the hash of its children: if they all agreed, so
            // would it.
            assert!(next.len() > before, "interior node differs but its children agree");
        }
        frontier = next;
    }
    (frontier, cost)
}

/// Why a snapshot could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Fewer bytes than the fixed header and checksum.
    #[error("Merkle snapshot is {got} bytes, shorter than the {needed}-byte minimum")]
    Truncated { needed: usize, got: usize },
    /// The magic bytes are not `HFMK`.
    #[error("not a Merkle snapshot (magic {got:02x?})")]
    BadMagic { got: [u8; 4] },
    /// A snapshot format this code does not read.
    #[error("Merkle snapshot format {got} is not supported (expected {expected})")]
    UnsupportedFormat { got: u8, expected: u8 },
    /// A tree of another shape, or a nonzero reserved byte.
    #[error(
        "Merkle snapshot of shape {fanout}x{depth} (reserved {reserved}), expected {FANOUT}x{DEPTH}"
    )]
    ShapeMismatch { fanout: u8, depth: u8, reserved: u8 },
    /// The length does not match the leaf count in the header.
    #[error("Merkle snapshot is {got} bytes, its header says {expected}")]
    LengthMismatch { expected: usize, got: usize },
    /// The bytes were damaged.
    #[error("Merkle snapshot checksum is {got:08x}, expected {expected:08x}")]
    ChecksumMismatch { got: u32, expected: u32 },
    /// A leaf index not above the previous one, or not below `LEAVES`.
    #[error("Merkle snapshot leaf index {index} is out of order or range (previous {previous:?})")]
    LeafOutOfOrder { index: u16, previous: Option<u16> },
    /// Leaves with entries in a tree that claims no keys.
    #[error("Merkle snapshot has no keys but leaf {index} is not empty")]
    EntriesWithoutKeys { index: u16 },
}

const SNAPSHOT_MAGIC: [u8; 4] = *b"HFMK";
const SNAPSHOT_FORMAT: u8 = 1;
const SNAPSHOT_HEADER_BYTES: usize = 20;
const SNAPSHOT_LEAF_BYTES: usize = 10;
const SNAPSHOT_CHECKSUM_BYTES: usize = 4;

impl MerkleTree {
    /// A compact snapshot of the tree: its nonempty leaves only, since the
    /// interior follows from them. All integers little-endian:
    ///
    /// ```text
    /// offset  bytes   field
    ///      0      4   magic "HFMK"
    ///      4      1   format, 1
    ///      5      1   FANOUT (16)
    ///      6      1   DEPTH (3)
    ///      7      1   reserved, 0
    ///      8      8   key_count: u64
    ///     16      4   m: u32, leaves that follow (at most LEAVES)
    ///     20   10·m   m × (leaf index: u16, leaf hash: u64), indices ascending
    /// 20+10m      4   crc32c of every byte before it
    /// ```
    ///
    /// 1M keys in 1024 partitions leave about 22% of a partition's leaves
    /// nonempty: about 9 KiB per partition.
    pub fn encode(&self) -> Vec<u8> {
        let leaves = &self.nodes[level_offset(DEPTH)..];
        let nonempty = leaves.iter().filter(|&&hash| hash != 0).count();
        let mut bytes = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES + nonempty * SNAPSHOT_LEAF_BYTES + SNAPSHOT_CHECKSUM_BYTES,
        );
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&[SNAPSHOT_FORMAT, FANOUT as u8, DEPTH as u8, 0]);
        bytes.extend_from_slice(&self.key_count.to_le_bytes());
        bytes.extend_from_slice(&(nonempty as u32).to_le_bytes());
        for (index, &hash) in leaves.iter().enumerate().filter(|(_, hash)| **hash != 0) {
            // LEAVES <= 2^16 (asserted above), so the cast is exact.
            bytes.extend_from_slice(&(index as u16).to_le_bytes());
            bytes.extend_from_slice(&hash.to_le_bytes());
        }
        let checksum = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Reads a snapshot written by [`MerkleTree::encode`], validating
    /// everything; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<MerkleTree, SnapshotError> {
        let needed = SNAPSHOT_HEADER_BYTES + SNAPSHOT_CHECKSUM_BYTES;
        if bytes.len() < needed {
            return Err(SnapshotError::Truncated { needed, got: bytes.len() });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic { got: magic });
        }
        if bytes[4] != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnsupportedFormat {
                got: bytes[4],
                expected: SNAPSHOT_FORMAT,
            });
        }
        let (fanout, depth, reserved) = (bytes[5], bytes[6], bytes[7]);
        if usize::from(fanout) != FANOUT || usize::from(depth) != DEPTH || reserved != 0 {
            return Err(SnapshotError::ShapeMismatch { fanout, depth, reserved });
        }
        let key_count = u64::from_le_bytes(array(&bytes[8..16]));
        let nonempty = u32::from_le_bytes(array(&bytes[16..20])) as usize;
        // Bounded before the multiplication so it cannot overflow.
        let expected = SNAPSHOT_HEADER_BYTES
            + nonempty.min(LEAVES + 1) * SNAPSHOT_LEAF_BYTES
            + SNAPSHOT_CHECKSUM_BYTES;
        if nonempty > LEAVES || bytes.len() != expected {
            return Err(SnapshotError::LengthMismatch { expected, got: bytes.len() });
        }
        let (body, stored) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_BYTES);
        let (got, expected) = (crc32c::crc32c(body), u32::from_le_bytes(array(stored)));
        if got != expected {
            return Err(SnapshotError::ChecksumMismatch { got, expected });
        }
        let mut tree = MerkleTree { nodes: vec![0; NODES].into_boxed_slice(), key_count };
        let leaves = level_offset(DEPTH);
        let mut previous: Option<u16> = None;
        for leaf in body[SNAPSHOT_HEADER_BYTES..].chunks_exact(SNAPSHOT_LEAF_BYTES) {
            let index = u16::from_le_bytes(array(&leaf[..2]));
            let hash = u64::from_le_bytes(array(&leaf[2..]));
            if usize::from(index) >= LEAVES || previous.is_some_and(|p| index <= p) {
                return Err(SnapshotError::LeafOutOfOrder { index, previous });
            }
            if key_count == 0 && hash != 0 {
                return Err(SnapshotError::EntriesWithoutKeys { index });
            }
            previous = Some(index);
            tree.nodes[leaves + usize::from(index)] = hash;
        }
        tree.rebuild_interior();
        Ok(tree)
    }
}

/// The first `N` bytes of `bytes`, which the caller has sized.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("user:{i:010}").into_bytes()
    }

    fn entry(i: u64, version: u64) -> u64 {
        entry_hash(&key(i), &version.to_le_bytes())
    }

    fn model_tree(model: &BTreeMap<Vec<u8>, u64>) -> MerkleTree {
        MerkleTree::build(model.iter().map(|(k, &e)| (k.as_slice(), e)))
    }

    #[test]
    fn shape_constants_agree() {
        assert_eq!(LEAVES, 4096);
        assert_eq!(NODES, 1 + 16 + 256 + 4096);
        assert_eq!(level_offset(DEPTH), 273);
        assert_eq!(1usize << LEAF_BITS, LEAVES);
    }

    #[test]
    fn entry_hash_is_pinned_and_separates_key_from_value() {
        // Pinned: entry hashes travel between nodes and versions, so this
        // value must never change.
        assert_eq!(entry_hash(b"cart:alice", b"\x01siblings"), PINNED_ENTRY_HASH);
        let spelled_out = [&10u64.to_le_bytes()[..], b"cart:alice", b"\x01siblings"].concat();
        assert_eq!(PINNED_ENTRY_HASH, xxh3_64(&spelled_out));
        assert_ne!(entry_hash(b"ab", b"c"), entry_hash(b"a", b"bc"));
        assert_ne!(entry_hash(b"", b"x"), entry_hash(b"x", b""));
    }

    const PINNED_ENTRY_HASH: u64 = 0x20cdfa807c9d501a;

    #[test]
    fn leaf_choice_is_independent_of_partition_choice() {
        // Keys of one partition must still spread over the whole tree.
        let leaves: BTreeSet<usize> = (0..160_000u64)
            .map(key)
            .filter(|k| holdfast_net::ring::partition_of(k, 16) == 0)
            .map(|k| leaf_of(&k))
            .collect();
        assert!(leaves.len() > 3_500, "only {} leaves used", leaves.len());
    }

    #[test]
    fn incremental_updates_equal_a_rebuild_from_scratch() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut tree = MerkleTree::new();
        let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for step in 0..20_000u64 {
            let k = key(rng.random_range(0..2_000));
            let old = model.get(&k).copied();
            let new =
                if rng.random_bool(0.2) { None } else { Some(entry_hash(&k, &step.to_le_bytes())) };
            tree.update(&k, old, new);
            match new {
                Some(e) => model.insert(k, e),
                None => model.remove(&k),
            };
            if step % 997 == 0 {
                assert_eq!(tree, model_tree(&model), "step {step}");
            }
        }
        assert_eq!(tree, model_tree(&model));
        assert_eq!(tree.key_count(), model.len() as u64);
    }

    #[test]
    fn removing_every_key_gives_the_empty_root() {
        let empty = MerkleTree::new();
        let mut tree = MerkleTree::new();
        for i in 0..3_000 {
            tree.update(&key(i), None, Some(entry(i, 1)));
        }
        assert_ne!(tree.root(), empty.root());
        for i in (0..3_000).rev() {
            tree.update(&key(i), Some(entry(i, 1)), None);
        }
        assert_eq!(tree, empty);
        assert_eq!(tree.key_count(), 0);
    }

    #[test]
    fn absent_to_absent_and_unchanged_writes_change_nothing() {
        let mut tree = MerkleTree::build([(key(1), entry(1, 1))]);
        let before = tree.clone();
        tree.update(&key(2), None, None);
        tree.update(&key(1), Some(entry(1, 1)), Some(entry(1, 1)));
        assert_eq!(tree, before);
    }

    #[test]
    fn identical_trees_cost_one_hash_and_one_round() {
        let tree = MerkleTree::build((0..1_000).map(|i| (key(i), entry(i, 1))));
        let (leaves, cost) = diff_leaves(&tree, &tree.clone());
        assert!(leaves.is_empty());
        assert_eq!(cost, DiffCost { hashes: 1, nodes_expanded: 0, rounds: 1 });
    }

    #[test]
    fn one_differing_key_costs_one_path() {
        let a = MerkleTree::build((0..1_000).map(|i| (key(i), entry(i, 1))));
        let mut b = a.clone();
        b.update(&key(7), Some(entry(7, 1)), Some(entry(7, 2)));
        let (leaves, cost) = diff_leaves(&a, &b);
        assert_eq!(leaves, vec![leaf_of(&key(7))]);
        let expected = 1 + (FANOUT * DEPTH) as u64;
        assert_eq!(cost, DiffCost { hashes: expected, nodes_expanded: DEPTH as u64, rounds: 4 });
    }

    #[test]
    fn decode_rejects_every_truncation_and_bit_flip() {
        let tree = MerkleTree::build((0..200).map(|i| (key(i), entry(i, 1))));
        let bytes = tree.encode();
        assert_eq!(MerkleTree::decode(&bytes), Ok(tree));
        for len in 0..bytes.len() {
            assert!(MerkleTree::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(MerkleTree::decode(&flipped).is_err(), "bit {bit} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(MerkleTree::decode(&longer), Err(SnapshotError::LengthMismatch { .. })));
    }

    #[test]
    fn decode_rejects_well_checksummed_nonsense() {
        fn sealed(mut body: Vec<u8>) -> Vec<u8> {
            let checksum = crc32c::crc32c(&body);
            body.extend_from_slice(&checksum.to_le_bytes());
            body
        }
        let header = |keys: u64, m: u32| {
            let mut body = b"HFMK\x01\x10\x03\x00".to_vec();
            body.extend_from_slice(&keys.to_le_bytes());
            body.extend_from_slice(&m.to_le_bytes());
            body
        };
        let leaf = |index: u16, hash: u64| [&index.to_le_bytes()[..], &hash.to_le_bytes()].concat();

        let empty = sealed(header(0, 0));
        assert_eq!(MerkleTree::decode(&empty), Ok(MerkleTree::new()));

        let out_of_order = sealed([header(2, 2), leaf(5, 1), leaf(5, 2)].concat());
        assert!(matches!(
            MerkleTree::decode(&out_of_order),
            Err(SnapshotError::LeafOutOfOrder { index: 5, previous: Some(5) })
        ));
        let out_of_range = sealed([header(1, 1), leaf(4096, 1)].concat());
        assert!(matches!(
            MerkleTree::decode(&out_of_range),
            Err(SnapshotError::LeafOutOfOrder { index: 4096, .. })
        ));
        let no_keys = sealed([header(0, 1), leaf(3, 9)].concat());
        assert_eq!(
            MerkleTree::decode(&no_keys),
            Err(SnapshotError::EntriesWithoutKeys { index: 3 })
        );
        let huge = sealed(header(1, u32::MAX));
        assert!(matches!(MerkleTree::decode(&huge), Err(SnapshotError::LengthMismatch { .. })));
        let mut other_shape = header(0, 0);
        other_shape[5] = 8;
        assert!(matches!(
            MerkleTree::decode(&sealed(other_shape)),
            Err(SnapshotError::ShapeMismatch { fanout: 8, depth: 3, reserved: 0 })
        ));
    }

    /// Distinct keys with entry hashes, from proptest's indices.
    fn entries(indices: &BTreeSet<u64>, version: u64) -> Vec<(Vec<u8>, u64)> {
        indices.iter().map(|&i| (key(i), entry(i, version))).collect()
    }

    proptest! {
        #[test]
        fn insertion_order_does_not_change_the_tree(
            indices in prop::collection::btree_set(0u64..100_000, 0..400),
            seed in any::<u64>(),
        ) {
            let mut shuffled = entries(&indices, 1);
            let built = MerkleTree::build(shuffled.iter().map(|(k, e)| (k, *e)));
            shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            let mut tree = MerkleTree::new();
            for (k, e) in &shuffled {
                tree.update(k, None, Some(*e));
            }
            prop_assert_eq!(&tree, &built);
            prop_assert_eq!(tree.key_count(), indices.len() as u64);
        }

        #[test]
        fn diff_finds_exactly_the_leaves_of_changed_keys(
            indices in prop::collection::btree_set(0u64..100_000, 1..400),
            changes in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..20),
        ) {
            let base = entries(&indices, 1);
            let a = MerkleTree::build(base.iter().map(|(k, e)| (k, *e)));
            let mut b = a.clone();
            let mut changed_leaves = BTreeSet::new();
            let mut touched = BTreeSet::new();
            for (pick, kind) in changes {
                let (k, old) = &base[pick.index(base.len())];
                if !touched.insert(k.clone()) {
                    continue;
                }
                // Modified, removed, or a key only `b` has.
                match kind {
                    0 => b.update(k, Some(*old), Some(entry_hash(k, b"newer"))),
                    1 => b.update(k, Some(*old), None),
                    _ => {
                        let extra = [k.as_slice(), b"+"].concat();
                        b.update(&extra, None, Some(entry_hash(&extra, b"v")));
                        changed_leaves.insert(leaf_of(&extra));
                        continue;
                    }
                }
                changed_leaves.insert(leaf_of(k));
            }
            let (leaves, cost) = diff_leaves(&a, &b);
            prop_assert_eq!(leaves.iter().copied().collect::<BTreeSet<_>>(), changed_leaves.clone());
            prop_assert!(leaves.windows(2).all(|w| w[0] < w[1]));
            let (back, back_cost) = diff_leaves(&b, &a);
            prop_assert_eq!(back, leaves);
            prop_assert_eq!(back_cost, cost);
            let paths_max = 1 + (changed_leaves.len() * FANOUT * DEPTH) as u64;
            prop_assert!(cost.hashes <= paths_max);
        }

        #[test]
        fn snapshots_round_trip(indices in prop::collection::btree_set(0u64..100_000, 0..2_000)) {
            let tree = MerkleTree::build(entries(&indices, 3));
            prop_assert_eq!(MerkleTree::decode(&tree.encode()), Ok(tree));
        }

        #[test]
        fn decode_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(MerkleTree::decode(&bytes).is_err());
        }

        #[test]
        fn decode_never_panics_on_damaged_snapshots(
            indices in prop::collection::btree_set(0u64..100_000, 0..100),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let tree = MerkleTree::build(entries(&indices, 1));
            let mut bytes = tree.encode();
            for (at, value) in damage {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            // Either the damage was undone by chance or it is caught.
            if let Ok(decoded) = MerkleTree::decode(&bytes) {
                prop_assert_eq!(decoded, tree);
            }
        }
    }
}
