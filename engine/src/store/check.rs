//! `check`: verifies a data directory without changing it.
//!
//! Unlike [`super::Store::open`], which trusts index files and repairs torn
//! tails, a check reads every segment whole, verifies every record, compares
//! every index file with what the scan found, and writes nothing. It is what
//! `holdfast store check` runs, and what an operator runs before trusting a
//! disk that misbehaved.

use super::error::OpenError;
use super::index::Index;
use super::{index_file, location, read_whole, segment};
use crate::disk::Disk;

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub segments: u64,
    /// Verified records, live or not.
    pub records: u64,
    /// Keys holding a value.
    pub live_keys: u64,
    /// Damaged regions followed by valid records; each held at least one
    /// record. Corruption.
    pub corrupt_records_skipped: u64,
    /// Segments with corruption (a damaged region, or a bad header in front
    /// of valid records).
    pub damaged_segments: Vec<u64>,
    /// Segments ending in a torn write, and its bytes. Not corruption: the
    /// write in flight at a crash; the next open truncates it.
    pub torn_tails: u64,
    pub torn_bytes: u64,
    /// Bytes of records that are the newest for their key.
    pub bytes_live: u64,
    /// Bytes of all verified records.
    pub bytes_total: u64,
    /// Index files that do not verify or disagree with their segment.
    pub index_files_bad: Vec<u64>,
    /// Segments without an index file (normal for the segment last written
    /// to before a crash, and for damaged ones).
    pub index_files_missing: u64,
}

impl CheckReport {
    /// Whether the directory holds no corruption.
    pub fn is_clean(&self) -> bool {
        self.corrupt_records_skipped == 0
            && self.damaged_segments.is_empty()
            && self.index_files_bad.is_empty()
    }

    /// Bytes compaction could give back.
    pub fn bytes_reclaimable(&self) -> u64 {
        self.bytes_total - self.bytes_live
    }
}

/// Verifies every record and index file in `disk`'s directory.
pub async fn check<D: Disk>(disk: &D) -> Result<CheckReport, OpenError> {
    let io = |operation, file: &str| {
        let file = file.to_owned();
        move |source| OpenError::Io { operation, file, source }
    };
    let names = disk.list().await.map_err(io("list", "data directory"))?;
    let mut report = CheckReport::default();
    let mut index = Index::default();
    for name in &names {
        let Some(id) = segment::parse_file_name(name) else { continue };
        report.segments += 1;
        let file = disk.open(name).await.map_err(io("open", name))?;
        let bytes = read_whole(&file).await.map_err(io("read", name))?;
        let scan = segment::scan(id, &bytes);
        report.records += scan.records.len() as u64;
        report.corrupt_records_skipped += scan.corrupt_regions.len() as u64;
        let bad_header = !scan.header_valid && !scan.records.is_empty();
        if !scan.corrupt_regions.is_empty() || bad_header {
            report.damaged_segments.push(id);
        }
        if scan.torn_tail_bytes > 0 {
            report.torn_tails += 1;
            report.torn_bytes += scan.torn_tail_bytes;
        }
        for record in &scan.records {
            report.bytes_total += record.len_on_disk();
            index.insert_if_newer(record.partition, &record.key, location(id, record));
        }
        let index_name = index_file::file_name(id);
        if !names.contains(&index_name) {
            report.index_files_missing += 1;
            continue;
        }
        let index_bytes = match disk.open(&index_name).await {
            Ok(index_file) => read_whole(&index_file).await.map_err(io("read", &index_name))?,
            Err(error) => return Err(io("open", &index_name)(error)),
        };
        let agrees = index_file::decode(id, &index_bytes)
            .is_ok_and(|loaded| loaded.records == scan.records && loaded.data_end == scan.data_end);
        if !agrees {
            report.index_files_bad.push(id);
        }
    }
    report.live_keys = index.live_keys();
    report.bytes_live = index.entries().map(|(_, _, at)| u64::from(at.len)).sum();
    Ok(report)
}
