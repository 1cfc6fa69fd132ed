//! Index files: a sealed segment's records, listed so that a restart need
//! not read the segment itself.
//!
//! ```text
//! index file (named {id:016x}.idx), padded with zeros to the disk alignment
//!   0   8  magic         b"hfidx001"
//!   8   4  checksum      crc32c of bytes 12..(48 + entries_bytes)
//!  12   4  reserved      zero
//!  16   8  segment id    u64 LE
//!  24   8  data_end      u64 LE, where the segment's last record ends
//!  32   8  entry count   u64 LE
//!  40   8  entries_bytes u64 LE
//!  48   …  entries, each:
//!            0  4  partition   u32 LE
//!            4  8  seq         u64 LE
//!           12  4  offset      u32 LE (in the segment)
//!           16  4  key_len     u32 LE
//!           20  4  value_len   u32 LE
//!           24  1  kind        1 = put, 2 = remove
//!           25  …  key
//! ```
//!
//! An index file lists every record of its segment, live or not, exactly
//! as a scan would find them, so a restart that trusts it builds the same
//! index as one that scans. It is written only after its segment was
//! sealed and synced, through a temporary name that is renamed into place,
//! and it is checked whole on load: a bad, truncated or mismatched index
//! file is ignored and its segment scanned instead. Records are still
//! verified one by one when they are read.

use super::record::{self, RecordKind};
use super::segment::{ScannedRecord, parse_hex_name};

const MAGIC: [u8; 8] = *b"hfidx001";
const FIXED_BYTES: usize = 48;
pub(crate) const ENTRY_FIXED_BYTES: usize = 25;

/// The file name of the index file of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:016x}.idx")
}

/// The segment id an index file name stands for.
pub fn parse_file_name(name: &str) -> Option<u64> {
    parse_hex_name(name, ".idx")
}

/// The temporary name an index file is written under before the rename.
pub fn temporary_name(id: u64) -> String {
    format!("{id:016x}.idx.tmp")
}

/// Encodes the index file of segment `id`, padded to `alignment`.
pub fn encode(id: u64, data_end: u64, records: &[ScannedRecord], alignment: usize) -> Vec<u8> {
    let mut out = encode_start(id, data_end, records.len());
    encode_entries(&mut out, records);
    encode_finish(&mut out, alignment);
    out
}

/// The first step of [`encode`] in pieces (so a large segment's index file
/// is made between other work): the fixed header, for `count` entries.
pub fn encode_start(id: u64, data_end: u64, count: usize) -> Vec<u8> {
    let mut out = vec![0; FIXED_BYTES];
    out[0..8].copy_from_slice(&MAGIC);
    out[16..24].copy_from_slice(&id.to_le_bytes());
    out[24..32].copy_from_slice(&data_end.to_le_bytes());
    out[32..40].copy_from_slice(&(count as u64).to_le_bytes());
    out
}

/// Appends `records`' entries, in order, after [`encode_start`].
pub fn encode_entries(out: &mut Vec<u8>, records: &[ScannedRecord]) {
    for entry in records {
        let offset = u32::try_from(entry.offset).expect("segments are smaller than 4 GiB");
        out.extend_from_slice(&entry.partition.to_le_bytes());
        out.extend_from_slice(&entry.seq.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(entry.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry.value_len.to_le_bytes());
        out.push(entry.kind as u8);
        out.extend_from_slice(&entry.key);
    }
}

/// Seals what [`encode_start`] and [`encode_entries`] made: the entries'
/// length, the checksum, and padding to `alignment`.
pub fn encode_finish(out: &mut Vec<u8>, alignment: usize) {
    let entries_bytes = (out.len() - FIXED_BYTES) as u64;
    out[40..48].copy_from_slice(&entries_bytes.to_le_bytes());
    let checksum = crc32c::crc32c(&out[12..]);
    out[8..12].copy_from_slice(&checksum.to_le_bytes());
    out.resize(out.len().next_multiple_of(alignment), 0);
}

/// Why an index file was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexFileError {
    #[error("index file is shorter than its header or its entries")]
    Truncated,
    #[error("index file has a bad magic")]
    Magic,
    #[error("index file checksum mismatch: expected {expected:#x}, got {actual:#x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("index file is for segment {found}, expected {expected}")]
    WrongSegment { expected: u64, found: u64 },
    #[error("index file entry {entry} is malformed")]
    Entry { entry: u64 },
}

/// The contents of a verified index file.
#[derive(Debug)]
pub struct Loaded {
    pub data_end: u64,
    pub records: Vec<ScannedRecord>,
}

/// Decodes and verifies the index file of segment `id`.
pub fn decode(id: u64, bytes: &[u8]) -> Result<Loaded, IndexFileError> {
    if bytes.len() < FIXED_BYTES {
        return Err(IndexFileError::Truncated);
    }
    if bytes[0..8] != MAGIC {
        return Err(IndexFileError::Magic);
    }
    let entries_bytes = record::u64_at(bytes, 40);
    let end = usize::try_from(entries_bytes)
        .ok()
        .and_then(|entries| entries.checked_add(FIXED_BYTES))
        .filter(|&end| end <= bytes.len())
        .ok_or(IndexFileError::Truncated)?;
    let expected = record::u32_at(bytes, 8);
    let actual = crc32c::crc32c(&bytes[12..end]);
    if actual != expected {
        return Err(IndexFileError::Checksum { expected, actual });
    }
    let found = record::u64_at(bytes, 16);
    if found != id {
        return Err(IndexFileError::WrongSegment { expected: id, found });
    }
    let data_end = record::u64_at(bytes, 24);
    let count = record::u64_at(bytes, 32);
    let mut records = Vec::new();
    let mut at = FIXED_BYTES;
    for entry in 0..count {
        let malformed = IndexFileError::Entry { entry };
        if end - at < ENTRY_FIXED_BYTES {
            return Err(malformed);
        }
        let key_len = record::u32_at(bytes, at + 16);
        let value_len = record::u32_at(bytes, at + 20);
        let kind = match bytes[at + 24] {
            1 => RecordKind::Put,
            2 => RecordKind::Remove,
            _ => return Err(malformed),
        };
        let key_start = at + ENTRY_FIXED_BYTES;
        let Some(key) = bytes.get(key_start..key_start + key_len as usize).filter(|_| {
            key_start + key_len as usize <= end && key_len as usize <= record::KEY_BYTES_LIMIT
        }) else {
            return Err(malformed);
        };
        if value_len as usize > record::VALUE_BYTES_LIMIT {
            return Err(malformed);
        }
        let scanned = ScannedRecord {
            offset: u64::from(record::u32_at(bytes, at + 12)),
            partition: record::u32_at(bytes, at),
            seq: record::u64_at(bytes, at + 4),
            kind,
            value_len,
            key: key.into(),
        };
        if scanned.offset + scanned.len_on_disk() > data_end {
            return Err(malformed);
        }
        records.push(scanned);
        at = key_start + key_len as usize;
    }
    if at != end {
        return Err(IndexFileError::Truncated);
    }
    Ok(Loaded { data_end, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segment;

    fn sample() -> (Vec<u8>, u64) {
        let mut bytes = segment::header_block(9);
        record::encode(&mut bytes, 4, 10, RecordKind::Put, b"alpha", b"one");
        record::encode(&mut bytes, 5, 11, RecordKind::Remove, b"beta", b"");
        (bytes.clone(), bytes.len() as u64)
    }

    #[test]
    fn index_file_lists_what_a_scan_finds() {
        let (bytes, end) = sample();
        let scan = segment::scan(9, &bytes);
        let file = encode(9, end, &scan.records, 4096);
        assert_eq!(file.len() % 4096, 0);
        let loaded = decode(9, &file).unwrap();
        assert_eq!(loaded.records, scan.records);
        assert_eq!(loaded.data_end, end);
    }

    #[test]
    fn any_damage_to_an_index_file_is_refused() {
        let (bytes, end) = sample();
        let file = encode(9, end, &segment::scan(9, &bytes).records, 4096);
        let used = FIXED_BYTES + 2 * ENTRY_FIXED_BYTES + 9;
        for bit in (0..used * 8).step_by(3) {
            let mut damaged = file.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(9, &damaged).is_err(), "bit {bit}");
        }
        assert_eq!(
            decode(8, &file).unwrap_err(),
            IndexFileError::WrongSegment { expected: 8, found: 9 }
        );
        for len in 0..used {
            assert!(decode(9, &file[..len]).is_err());
        }
    }
}
