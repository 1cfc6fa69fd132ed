//! Which record an operation touches: uniform, zipfian and latest, as YCSB
//! draws them.
//!
//! The zipfian generator is the one in Gray et al., "Quickly Generating
//! Billion-Record Synthetic Databases" (SIGMOD 1994), as YCSB implements it
//! in `ZipfianGenerator`; [`ScrambledZipfian`] is YCSB's
//! `ScrambledZipfianGenerator` (popular items spread over the key space by a
//! hash) and [`SkewedLatest`] its `SkewedLatestGenerator` (popular items are
//! the most recently inserted). Randomness comes in as an argument, so a
//! seeded generator replays exactly.
//!
//! Invariant: every generator returns a record number in `0..records`.

use rand::Rng;

use crate::keys::fnv_hash64;

/// YCSB's `ZIPFIAN_CONSTANT`: the skew (theta) of every zipfian here.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The item count of the zipfian underneath [`ScrambledZipfian`], as YCSB's
/// `ScrambledZipfianGenerator.ITEM_COUNT`: ten billion, so the skew does
/// not depend on how many records there are.
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;

/// zeta(10^10 + 1, 0.99), precomputed as YCSB does (`ZETAN`): summing ten
/// billion terms at start-up would take a minute.
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// The distribution named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DistributionKind {
    /// Every record equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot records, spread
    /// over the key space.
    Zipfian,
    /// Skewed toward the most recently inserted records (the highest
    /// record numbers).
    Latest,
}

impl DistributionKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Zipfian => "zipfian",
            Self::Latest => "latest",
        }
    }
}

/// A record chooser over `0..records`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform over `0..records`.
    Uniform {
        /// How many records there are.
        records: u64,
    },
    /// See [`ScrambledZipfian`].
    Zipfian(ScrambledZipfian),
    /// See [`SkewedLatest`].
    Latest(SkewedLatest),
}

impl KeyChooser {
    /// Builds the chooser; `records` must be at least 1. Building
    /// [`DistributionKind::Latest`] sums `records` terms (zeta), about a
    /// second per hundred million records; do it once and clone it.
    pub fn new(kind: DistributionKind, records: u64) -> Self {
        assert!(records >= 1, "a chooser needs at least one record");
        match kind {
            DistributionKind::Uniform => Self::Uniform { records },
            DistributionKind::Zipfian => Self::Zipfian(ScrambledZipfian::new(records)),
            DistributionKind::Latest => Self::Latest(SkewedLatest::new(records)),
        }
    }

    /// Draws one record number in `0..records`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Self::Uniform { records } => rng.random_range(0..*records),
            Self::Zipfian(zipfian) => zipfian.next(rng),
            Self::Latest(latest) => latest.next(rng),
        }
    }
}

/// Gray et al.'s zipfian over `0..items`: item 0 is the most popular, item
/// `i` is drawn with probability proportional to `1 / (i + 1)^theta`.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    /// `1 + 0.5^theta`: below it (times zetan) the draw is item 1.
    second_threshold: f64,
}

impl Zipfian {
    /// A zipfian over `0..items` with skew `theta`; computes zeta(items),
    /// which takes time linear in `items`.
    pub fn new(items: u64, theta: f64) -> Self {
        Self::with_zetan(items, theta, zeta(items, theta))
    }

    /// As [`Zipfian::new`] with zeta(items, theta) supplied.
    pub fn with_zetan(items: u64, theta: f64, zetan: f64) -> Self {
        assert!(items >= 1, "a zipfian needs at least one item");
        assert!(theta > 0.0 && theta < 1.0, "Gray's generator needs 0 < theta < 1");
        let zeta2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            second_threshold: 1.0 + 0.5_f64.powf(theta),
        }
    }

    /// How many items it draws from.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Draws one item in `0..items`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 || self.items == 1 {
            return 0;
        }
        if uz < self.second_threshold {
            return 1;
        }
        let item = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // The formula stays below `items` for u < 1; the clamp guards the
        // rounding of the float at the very top of the range.
        item.min(self.items - 1)
    }

    /// The skew it was built with.
    pub fn theta(&self) -> f64 {
        self.theta
    }
}

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta.
pub fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// YCSB's scrambled zipfian over `0..records`: draws from a zipfian over
/// ten billion items and hashes the draw into `0..records`, so the hot
/// records are scattered rather than the first few, and the skew is the
/// same whatever the record count (the hottest record gets about
/// 1/26.5 = 3.8% of the draws).
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    records: u64,
    zipfian: Zipfian,
}

impl ScrambledZipfian {
    /// A scrambled zipfian over `0..records` (cheap: zeta is precomputed).
    pub fn new(records: u64) -> Self {
        assert!(records >= 1, "a chooser needs at least one record");
        // YCSB builds ZipfianGenerator(0, ITEM_COUNT): ITEM_COUNT + 1 items.
        let zipfian = Zipfian::with_zetan(SCRAMBLED_ITEMS + 1, ZIPFIAN_THETA, SCRAMBLED_ZETAN);
        Self { records, zipfian }
    }

    /// Draws one record number in `0..records`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        fnv_hash64(self.zipfian.next(rng)) % self.records
    }
}

/// YCSB's skewed-latest: `last - zipfian(last)` where `last` is the highest
/// record number, so the newest records are the hottest. Without inserts
/// during the run (workloads A, B, C, F) "newest" is the end of the load.
#[derive(Debug, Clone)]
pub struct SkewedLatest {
    last: u64,
    zipfian: Option<Zipfian>,
}

impl SkewedLatest {
    /// Skewed toward record `records - 1`; computes zeta(records - 1).
    pub fn new(records: u64) -> Self {
        assert!(records >= 1, "a chooser needs at least one record");
        let last = records - 1;
        // YCSB's ZipfianGenerator(last) draws from 0..last, so the result
        // lies in 1..=last; with a single record there is nothing to draw.
        let zipfian = (last >= 1).then(|| Zipfian::new(last, ZIPFIAN_THETA));
        Self { last, zipfian }
    }

    /// Draws one record number in `0..records`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.zipfian {
            Some(zipfian) => self.last - zipfian.next(rng),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    const DRAWS: usize = 200_000;

    fn draw_counts(chooser: &KeyChooser, records: u64, seed: u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0u64; records as usize];
        for _ in 0..DRAWS {
            let record = chooser.next(&mut rng);
            assert!(record < records, "{record} out of 0..{records}");
            counts[record as usize] += 1;
        }
        counts
    }

    /// Share of the draws that went to the `top` most frequent records.
    fn share_of_hottest(counts: &[u64], top: usize) -> f64 {
        let mut sorted = counts.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted[..top].iter().sum::<u64>() as f64 / DRAWS as f64
    }

    #[test]
    fn zeta_of_small_n_by_hand() {
        assert!((zeta(1, 0.99) - 1.0).abs() < 1e-12);
        assert!((zeta(2, 0.99) - (1.0 + 0.5_f64.powf(0.99))).abs() < 1e-12);
    }

    #[test]
    fn scrambled_zetan_constant_is_consistent_with_its_tail() {
        // zeta(n) grows like n^(1-theta)/(1-theta) + zeta(theta): check the
        // precomputed ten-billion-item constant against that asymptote from
        // an exact sum over the first million terms.
        let head = zeta(1_000_000, ZIPFIAN_THETA);
        let tail = |n: f64| n.powf(1.0 - ZIPFIAN_THETA) / (1.0 - ZIPFIAN_THETA);
        let estimate = head + tail(1e10) - tail(1e6);
        assert!((estimate - SCRAMBLED_ZETAN).abs() < 0.01, "{estimate} vs {SCRAMBLED_ZETAN}");
    }

    /// Gray's generator is exact for the two most popular items and
    /// approximates the rest through the continuous CDF; shares of the
    /// top items stay close to the exact zipfian.
    #[test]
    fn plain_zipfian_matches_its_probabilities() {
        let items = 1000;
        let zipfian = Zipfian::new(items, ZIPFIAN_THETA);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; items as usize];
        for _ in 0..DRAWS {
            counts[zipfian.next(&mut rng) as usize] += 1;
        }
        let zetan = zeta(items, ZIPFIAN_THETA);
        for rank in [0usize, 1] {
            let expected = DRAWS as f64 / ((rank + 1) as f64).powf(ZIPFIAN_THETA) / zetan;
            let got = counts[rank] as f64;
            assert!((got - expected).abs() < 0.05 * expected, "rank {rank}: {got} vs {expected}");
        }
        for top in [10usize, 100, 500] {
            let expected = zeta(top as u64, ZIPFIAN_THETA) / zetan;
            let got = counts[..top].iter().sum::<u64>() as f64 / DRAWS as f64;
            assert!((got - expected).abs() < 0.1 * expected, "top {top}: {got} vs {expected}");
        }
    }

    #[test]
    fn uniform_is_flat() {
        let records = 100;
        let counts = draw_counts(&KeyChooser::new(DistributionKind::Uniform, records), records, 3);
        let expected = DRAWS as f64 / records as f64;
        for (record, &count) in counts.iter().enumerate() {
            assert!((count as f64 - expected).abs() < 0.2 * expected, "record {record}: {count}");
        }
    }

    #[test]
    fn latest_prefers_the_newest_records() {
        let records = 10_000;
        let counts = draw_counts(&KeyChooser::new(DistributionKind::Latest, records), records, 5);
        let newest: u64 = counts[(records as usize - 10)..].iter().sum();
        let oldest: u64 = counts[..(records as usize / 2)].iter().sum();
        assert!(newest as f64 > 0.25 * DRAWS as f64, "newest ten got {newest}");
        assert!((oldest as f64) < 0.15 * DRAWS as f64, "oldest half got {oldest}");
    }

    #[test]
    fn one_record_is_always_record_zero() {
        let mut rng = SmallRng::seed_from_u64(1);
        for kind in [DistributionKind::Uniform, DistributionKind::Zipfian, DistributionKind::Latest]
        {
            let chooser = KeyChooser::new(kind, 1);
            assert!((0..100).all(|_| chooser.next(&mut rng) == 0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// The scrambled zipfian's skew does not depend on the record count
        /// or the seed: the hottest record gets about 1/zetan (3.8%) of the
        /// draws, and the hottest 1% of records many times their share.
        #[test]
        fn scrambled_zipfian_is_skewed(records in 1_000u64..20_000, seed in any::<u64>()) {
            let chooser = KeyChooser::new(DistributionKind::Zipfian, records);
            let counts = draw_counts(&chooser, records, seed);
            let hottest = share_of_hottest(&counts, 1);
            // Up to 6.5%: items 0 and 1 (3.8% and 1.9%) may hash to one record.
            prop_assert!((0.030..0.065).contains(&hottest), "hottest record: {}", hottest);
            let top_percent = share_of_hottest(&counts, records as usize / 100);
            // At least zeta(records / 100) / zetan, 11% for 1000 records
            // (the long tail lands uniformly); a uniform chooser gives 1%.
            prop_assert!(top_percent > 0.09, "hottest 1%: {}", top_percent);
            let uniform = draw_counts(&KeyChooser::new(DistributionKind::Uniform, records), records, seed);
            prop_assert!(share_of_hottest(&uniform, records as usize / 100) < 0.03);
        }
    }
}
