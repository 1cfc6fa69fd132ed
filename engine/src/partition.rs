//! Partitions: how a key finds its place.
//!
//! The key space is the 64-bit xxh3 hash of the key, cut into `Q` equal,
//! fixed partitions (Dynamo's third strategy), `Q` a power of two chosen
//! when the cluster is created: a key's partition is the top `log2 Q` bits
//! of its hash. Within a node, partition `p` belongs to shard
//! `p % shards`, so a shard owns a fixed subset of partitions and nothing
//! else touches them.
//!
//! The hash must agree across nodes, processes and restarts, so it is xxh3
//! with its fixed default seed, never a per-process seeded hasher (ahash).
//! It is computed by [`holdfast_net::ring::partition_of`], the one
//! definition clients and nodes share.

/// The default number of partitions.
pub const PARTITIONS_DEFAULT: u32 = holdfast_net::ring::PARTITIONS_DEFAULT;
/// The most partitions a cluster may have.
pub const PARTITIONS_MAX: u32 = holdfast_net::ring::PARTITIONS_MAX;

/// Maps keys to partitions and partitions to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioner {
    partitions: u32,
    shards: u32,
}

impl Partitioner {
    /// `partitions` must be a power of two in `1..=PARTITIONS_MAX`, and
    /// `shards` in `1..=partitions`.
    pub fn new(partitions: u32, shards: u32) -> Result<Partitioner, String> {
        if !partitions.is_power_of_two() || partitions > PARTITIONS_MAX {
            return Err(format!(
                "partitions must be a power of two up to {PARTITIONS_MAX}, not {partitions}"
            ));
        }
        if shards == 0 || shards > partitions {
            return Err(format!("shards must be in 1..={partitions}, not {shards}"));
        }
        Ok(Partitioner { partitions, shards })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        holdfast_net::ring::partition_of(key, self.partitions)
    }

    /// The shard that owns `partition`.
    pub fn shard_of(&self, partition: u32) -> u32 {
        assert!(partition < self.partitions);
        partition % self.shards
    }

    /// The partitions shard `shard` owns, ascending.
    pub fn partitions_of(&self, shard: u32) -> impl Iterator<Item = u32> + use<> {
        (shard..self.partitions).step_by(self.shards as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_CART_ALICE: u32 = 329;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        let partitioner = Partitioner::new(1024, 3).unwrap();
        // Pinned: if this changes, every key of every existing cluster moves.
        assert_eq!(partitioner.partition_of(b"cart:alice"), PINNED_CART_ALICE);
        let counts = (0..102_400u32).fold(vec![0u32; 1024], |mut counts, n| {
            counts[partitioner.partition_of(&n.to_le_bytes()) as usize] += 1;
            counts
        });
        assert!(counts.iter().all(|&count| (50..=160).contains(&count)), "uneven partitions");
    }

    #[test]
    fn every_partition_has_exactly_one_shard() {
        let partitioner = Partitioner::new(64, 3).unwrap();
        let mut owned: Vec<u32> =
            (0..3).flat_map(|shard| partitioner.partitions_of(shard)).collect();
        owned.sort_unstable();
        assert_eq!(owned, (0..64).collect::<Vec<_>>());
        for shard in 0..3 {
            assert!(partitioner.partitions_of(shard).all(|p| partitioner.shard_of(p) == shard));
        }
        assert!(Partitioner::new(1000, 1).is_err());
        assert!(Partitioner::new(8, 9).is_err());
    }
}
