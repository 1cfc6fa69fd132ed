//! What an operator can set, and the limits they must respect.

use std::fmt;
use std::str::FromStr;

use super::record::{self, KEY_BYTES_LIMIT, VALUE_BYTES_LIMIT};
use super::segment::HEADER_BLOCK_BYTES;

/// When a write is acknowledged, and so what a crash can take away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write is acknowledged after an `fdatasync` that covers it.
    /// Writes that arrive together share one `fdatasync` (group commit).
    /// Loses nothing acknowledged, whatever the crash.
    Always,
    /// Writes are acknowledged once written (with `O_DIRECT`, so they are
    /// on the device, not in the page cache); whoever drives the store calls
    /// [`super::Store::sync`] every `interval_ms`. A process crash loses
    /// nothing acknowledged; a power loss or kernel crash can lose the
    /// writes of the last `interval_ms` (more if the device cache is large
    /// and the sync is late).
    Interval { interval_ms: u64 },
    /// Writes are acknowledged once written and synced only when a segment
    /// is sealed and at close. A process crash loses nothing; a power loss
    /// can lose everything written since the last sealed segment. For
    /// benchmarks and caches only.
    Never,
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<SyncPolicy, String> {
        match text {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(interval_ms)) if interval_ms > 0 => {
                    Ok(SyncPolicy::Interval { interval_ms })
                }
                _ => Err(format!(
                    "unknown sync policy {text:?}: expected always, never or interval:<ms> (ms > 0)"
                )),
            },
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Interval { interval_ms } => write!(f, "interval:{interval_ms}"),
            SyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// How a store is configured. Every size is in bytes.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The largest key a write may carry (default 64 KiB).
    pub key_bytes_max: usize,
    /// The largest value a write may carry (default 1 MiB).
    pub value_bytes_max: usize,
    /// The size segments are preallocated to and sealed at (default 64 MiB).
    pub segment_bytes_max: u64,
    /// When writes are acknowledged.
    pub sync: SyncPolicy,
    /// Compaction rewrites a sealed segment once at least this fraction of
    /// its record bytes is dead (default 0.5).
    pub compaction_dead_ratio: f64,
    /// Memory for recently written and read values (default 64 MiB; 0
    /// turns the cache off).
    pub cache_bytes_max: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            key_bytes_max: 64 << 10,
            value_bytes_max: 1 << 20,
            segment_bytes_max: 64 << 20,
            sync: SyncPolicy::Always,
            compaction_dead_ratio: 0.5,
            cache_bytes_max: 64 << 20,
        }
    }
}

impl StoreOptions {
    /// Checks the options against the format's limits and the disk's
    /// alignment.
    pub fn validate(&self, alignment: usize) -> Result<(), String> {
        if self.key_bytes_max == 0 || self.key_bytes_max > KEY_BYTES_LIMIT {
            return Err(format!("key_bytes_max must be in 1..={KEY_BYTES_LIMIT}"));
        }
        if self.value_bytes_max > VALUE_BYTES_LIMIT {
            return Err(format!("value_bytes_max must be at most {VALUE_BYTES_LIMIT}"));
        }
        if self.segment_bytes_max > u64::from(u32::MAX) {
            return Err("segment_bytes_max must be below 4 GiB (offsets are u32)".into());
        }
        if !self.segment_bytes_max.is_multiple_of(alignment as u64) {
            return Err(format!("segment_bytes_max must be a multiple of {alignment}"));
        }
        if !HEADER_BLOCK_BYTES.is_multiple_of(alignment) {
            return Err(format!("the disk's alignment {alignment} must divide 4096"));
        }
        let largest = record::record_len(self.key_bytes_max, self.value_bytes_max) as u64;
        if largest + HEADER_BLOCK_BYTES as u64 > self.segment_bytes_max {
            return Err(format!(
                "segment_bytes_max {} cannot hold the largest record ({largest} bytes)",
                self.segment_bytes_max
            ));
        }
        if !(self.compaction_dead_ratio > 0.0 && self.compaction_dead_ratio <= 1.0) {
            return Err("compaction_dead_ratio must be in (0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies_parse_and_print_back() {
        for text in ["always", "never", "interval:5"] {
            assert_eq!(text.parse::<SyncPolicy>().unwrap().to_string(), text);
        }
        assert!("interval:0".parse::<SyncPolicy>().is_err());
        assert!("sometimes".parse::<SyncPolicy>().is_err());
    }

    #[test]
    fn defaults_are_valid_and_small_segments_are_refused() {
        assert_eq!(StoreOptions::default().validate(4096), Ok(()));
        let tiny = StoreOptions { segment_bytes_max: 8192, ..StoreOptions::default() };
        assert!(tiny.validate(4096).is_err());
    }
}
