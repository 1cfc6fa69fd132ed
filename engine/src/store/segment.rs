//! Segments: the files the log is cut into, and how one is read back.
//!
//! ```text
//! segment file (named {id:016x}.seg)
//! +--------------------------+----------+----------+-----+----------------+
//! | header block (4096)      | record 0 | record 1 | ... | zeros          |
//! +--------------------------+----------+----------+-----+----------------+
//! header block:
//!   0   8  magic           b"hfseg001"
//!   8   4  checksum        crc32c of bytes 12..32
//!  12   4  format version  1
//!  16   8  segment id      u64 LE, equal to the id in the file name
//!  24   8  reserved        zero
//!  32   …  zero to the end of the block
//! ```
//!
//! A segment is created with its header, preallocated with zeros to the
//! segment size, and appended to in aligned writes until full; then it is
//! sealed: truncated to its last record, synced, and described by an index
//! file (see `index_file`). Segments are never appended to after a restart:
//! each open starts a new one, so a recovered file is only ever read,
//! truncated, or removed.
//!
//! # Reading one back: the recovery cases
//!
//! [`scan`] walks the records from the first block on:
//! - a verified record is taken and the walk moves past it;
//! - an all-zero header, with only zeros after it, is the clean end;
//! - anything else is a bad region: the walk probes every
//!   [`RECORD_ALIGN`]-th byte after it for a record that verifies. If it
//!   finds one, the region is **corruption**: it is skipped, counted and
//!   the segment is reported damaged (a replica repairs it later); the walk
//!   resumes at the record found. If it finds none, the region is a **torn
//!   tail** (the write in flight at a crash): the segment ends where the
//!   region starts and recovery truncates it there.
//!
//! This relies on the assumption about the media stated in `disk`: writes
//! not yet synced persist in order, so a crash leaves damage only at the
//! tail of a segment. A device that reorders unsynced writes can leave a
//! hole; it is then reported as corruption, never served.

use super::record::{self, Decoded, RECORD_ALIGN, RecordKind};

/// The size of the header block, and where the first record starts.
pub const HEADER_BLOCK_BYTES: usize = 4096;
const MAGIC: [u8; 8] = *b"hfseg001";
const FORMAT_VERSION: u32 = 1;

/// The file name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// The segment id a file name stands for, if it names a segment.
pub fn parse_file_name(name: &str) -> Option<u64> {
    parse_hex_name(name, ".seg")
}

pub(crate) fn parse_hex_name(name: &str, suffix: &str) -> Option<u64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != 16 || !stem.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// The header block of segment `id`.
pub fn header_block(id: u64) -> Vec<u8> {
    let mut block = vec![0; HEADER_BLOCK_BYTES];
    block[0..8].copy_from_slice(&MAGIC);
    block[12..16].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    block[16..24].copy_from_slice(&id.to_le_bytes());
    let checksum = crc32c::crc32c(&block[12..32]);
    block[8..12].copy_from_slice(&checksum.to_le_bytes());
    block
}

/// Whether `bytes` start with a valid header block for segment `id`.
pub fn header_is_valid(bytes: &[u8], id: u64) -> bool {
    let Some(block) = bytes.get(..32) else { return false };
    block[0..8] == MAGIC
        && record::u32_at(block, 8) == crc32c::crc32c(&block[12..32])
        && record::u32_at(block, 12) == FORMAT_VERSION
        && record::u64_at(block, 16) == id
}

/// Where one verified record is and what it holds, as a scan finds it and
/// an index file lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// The record's byte offset in the segment file.
    pub offset: u64,
    pub partition: u32,
    pub seq: u64,
    pub kind: RecordKind,
    pub value_len: u32,
    pub key: Box<[u8]>,
}

impl ScannedRecord {
    /// The record's size on disk, padding included.
    pub fn len_on_disk(&self) -> u64 {
        record::record_len(self.key.len(), self.value_len as usize) as u64
    }
}

/// Everything a scan learned about one segment.
#[derive(Debug, Default)]
pub struct Scan {
    /// The verified records, in file order.
    pub records: Vec<ScannedRecord>,
    /// Bad regions followed by valid records: `(offset, length)` each.
    pub corrupt_regions: Vec<(u64, u64)>,
    /// Where the last valid record ends (or the first record would start).
    pub data_end: u64,
    /// The length of a torn tail after `data_end`, zero if the segment
    /// ended cleanly (in zeros or at the end of the file).
    pub torn_tail_bytes: u64,
    /// Whether the header block was valid.
    pub header_valid: bool,
}

impl Scan {
    /// The smallest sequence number in the segment.
    pub fn min_seq(&self) -> Option<u64> {
        self.records.iter().map(|record| record.seq).min()
    }
}

/// Reads back the whole of segment `id`, whose bytes are `bytes`,
/// following the recovery cases in the module documentation.
pub fn scan(id: u64, bytes: &[u8]) -> Scan {
    let mut scanner = Scanner::new(id, bytes);
    while !scanner.advance(usize::MAX) {}
    scanner.finish()
}

/// A scan in steps, so that a background task can yield between them.
#[derive(Debug)]
pub struct Scanner<'a> {
    bytes: &'a [u8],
    position: usize,
    done: bool,
    scan: Scan,
}

impl<'a> Scanner<'a> {
    pub fn new(id: u64, bytes: &'a [u8]) -> Scanner<'a> {
        let scan = Scan {
            header_valid: header_is_valid(bytes, id),
            data_end: HEADER_BLOCK_BYTES as u64,
            ..Scan::default()
        };
        Scanner { bytes, position: HEADER_BLOCK_BYTES, done: false, scan }
    }

    /// Reads up to `records_max` more records (a damaged region counts as
    /// one). Returns whether the scan is complete.
    pub fn advance(&mut self, records_max: usize) -> bool {
        let (bytes, scan) = (self.bytes, &mut self.scan);
        for _ in 0..records_max {
            if self.done || self.position >= bytes.len() {
                self.done = true;
                break;
            }
            let position = self.position;
            match record::decode(&bytes[position..]) {
                Decoded::Record { header, key, .. } => {
                    scan.records.push(ScannedRecord {
                        offset: position as u64,
                        partition: header.partition,
                        seq: header.seq,
                        kind: header.kind,
                        value_len: header.value_len,
                        key: key.into(),
                    });
                    self.position += header.record_len();
                    scan.data_end = self.position as u64;
                }
                Decoded::Zeros if bytes[position..].iter().all(|&byte| byte == 0) => {
                    self.done = true;
                }
                Decoded::Zeros | Decoded::Invalid(_) => match resynchronise(bytes, position) {
                    Some(next) => {
                        scan.corrupt_regions.push((position as u64, (next - position) as u64));
                        self.position = next;
                    }
                    None => {
                        let tail = &bytes[position..];
                        let nonzero = tail.iter().rposition(|&byte| byte != 0).map_or(0, |i| i + 1);
                        scan.torn_tail_bytes = nonzero as u64;
                        self.done = true;
                    }
                },
            }
        }
        self.done
    }

    /// What the scan found; call once `advance` returned true.
    pub fn finish(self) -> Scan {
        assert!(self.done, "finish before the scan completed");
        assert!(self.scan.data_end as usize <= self.bytes.len().max(HEADER_BLOCK_BYTES));
        self.scan
    }
}

/// The offset of the first verified record after the bad one at `bad`.
fn resynchronise(bytes: &[u8], bad: usize) -> Option<usize> {
    let mut probe = bad + RECORD_ALIGN;
    while probe + record::HEADER_BYTES <= bytes.len() {
        if matches!(record::decode(&bytes[probe..]), Decoded::Record { .. }) {
            return Some(probe);
        }
        probe += RECORD_ALIGN;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(&[u8], &[u8])]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = header_block(3);
        let mut offsets = Vec::new();
        for (seq, (key, value)) in records.iter().enumerate() {
            offsets.push(bytes.len());
            record::encode(&mut bytes, 0, seq as u64 + 1, RecordKind::Put, key, value);
        }
        bytes.resize(bytes.len() + 4096, 0);
        (bytes, offsets)
    }

    #[test]
    fn clean_segment_scans_to_its_last_record() {
        let (bytes, offsets) = segment(&[(b"a", b"1"), (b"b", b"22")]);
        let scan = scan(3, &bytes);
        assert!(scan.header_valid);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.records[1].offset, offsets[1] as u64);
        assert_eq!(scan.torn_tail_bytes, 0);
        assert!(scan.corrupt_regions.is_empty());
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption_not_a_tail() {
        let (mut bytes, offsets) = segment(&[(b"a", b"1"), (b"b", b"22"), (b"c", b"333")]);
        bytes[offsets[1] + 41] ^= 0xff;
        let scan = scan(3, &bytes);
        assert_eq!(scan.records.iter().map(|r| &*r.key).collect::<Vec<_>>(), [b"a", b"c"]);
        assert_eq!(scan.corrupt_regions, [(offsets[1] as u64, (offsets[2] - offsets[1]) as u64)]);
        assert_eq!(scan.torn_tail_bytes, 0);
    }

    #[test]
    fn damage_at_the_end_is_a_torn_tail() {
        let (mut bytes, offsets) = segment(&[(b"a", b"1"), (b"b", b"22")]);
        bytes[offsets[1] + 41] ^= 0x01;
        let scan = scan(3, &bytes);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.data_end, offsets[1] as u64);
        assert!(scan.torn_tail_bytes > 0);
        assert!(scan.corrupt_regions.is_empty());
    }

    #[test]
    fn names_round_trip_and_reject_strangers() {
        assert_eq!(parse_file_name(&file_name(0xabc)), Some(0xabc));
        assert_eq!(parse_file_name("0000000000000abc.idx"), None);
        assert_eq!(parse_file_name("xyz.seg"), None);
    }
}
