//! The record: the unit the log is made of.
//!
//! ```text
//! offset  size  field
//!      0     4  magic            b"hfr1"
//!      4     4  header_checksum  crc32c of bytes 8..40
//!      8     4  body_checksum    crc32c of the body (key then value)
//!     12     4  partition        u32 LE
//!     16     8  seq              u64 LE, unique per store, never reused
//!     24     4  key_len          u32 LE
//!     28     4  value_len        u32 LE
//!     32     1  kind             1 = put, 2 = remove
//!     33     7  reserved         zero
//!     40     …  key, value, then zero padding to a multiple of 8
//! ```
//!
//! Framing rules:
//! - The header checksum covers the lengths, so a length is trusted only
//!   after the header verified; the body checksum sits inside the header,
//!   so one verified header binds the whole record.
//! - Records start at multiples of [`RECORD_ALIGN`], which is what lets
//!   recovery resynchronise after a damaged region by probing every eighth
//!   byte for a header that verifies.
//! - A header of all zeros is not a record: it is the unwritten (zeroed,
//!   preallocated) space after the last record of a segment.
//! - The lengths are bounded by [`KEY_BYTES_LIMIT`] and
//!   [`VALUE_BYTES_LIMIT`], the format's own limits, which every configured
//!   limit must stay within.

/// The size of a record header in bytes.
pub const HEADER_BYTES: usize = 40;
/// Every record starts at a multiple of this.
pub const RECORD_ALIGN: usize = 8;
/// The format's hard limit on key length; configured limits stay below it.
pub const KEY_BYTES_LIMIT: usize = 1 << 20;
/// The format's hard limit on value length; configured limits stay below it.
pub const VALUE_BYTES_LIMIT: usize = 64 << 20;

const MAGIC: [u8; 4] = *b"hfr1";

const _: () = assert!(HEADER_BYTES.is_multiple_of(RECORD_ALIGN));

/// What a record says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The key holds the record's value.
    Put = 1,
    /// The key was removed from the store. Kept as a record until
    /// compaction proves that no older record of the key is left anywhere.
    Remove = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::Remove),
            _ => None,
        }
    }
}

/// A record's header fields, after the header verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub partition: u32,
    pub seq: u64,
    pub key_len: u32,
    pub value_len: u32,
    pub kind: RecordKind,
    body_checksum: u32,
}

impl RecordHeader {
    /// The record's total size on disk, padding included.
    pub fn record_len(&self) -> usize {
        record_len(self.key_len as usize, self.value_len as usize)
    }
}

/// The size on disk of a record with these lengths, padding included.
pub fn record_len(key_len: usize, value_len: usize) -> usize {
    (HEADER_BYTES + key_len + value_len).next_multiple_of(RECORD_ALIGN)
}

/// Appends one record to `out`, which must end at a record boundary.
pub fn encode(
    out: &mut Vec<u8>,
    partition: u32,
    seq: u64,
    kind: RecordKind,
    key: &[u8],
    value: &[u8],
) {
    assert!(key.len() <= KEY_BYTES_LIMIT, "key over the format limit");
    assert!(value.len() <= VALUE_BYTES_LIMIT, "value over the format limit");
    assert!(kind == RecordKind::Put || value.is_empty(), "a remove carries no value");
    assert_eq!(out.len() % RECORD_ALIGN, 0);
    let start = out.len();
    let mut body_checksum = crc32c::crc32c(key);
    body_checksum = crc32c::crc32c_append(body_checksum, value);

    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]); // The header checksum, filled in below.
    out.extend_from_slice(&body_checksum.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&[0; 7]);
    let header_checksum = crc32c::crc32c(&out[start + 8..start + HEADER_BYTES]);
    out[start + 4..start + 8].copy_from_slice(&header_checksum.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.resize(start + record_len(key.len(), value.len()), 0);
    debug_assert!(matches!(decode(&out[start..]), Decoded::Record { .. }));
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, verified record.
    Record { header: RecordHeader, key: &'a [u8], value: &'a [u8] },
    /// An all-zero header: unwritten space, the end of the log.
    Zeros,
    /// Not a valid record here: too short, a bad magic or checksum, or
    /// lengths that do not fit.
    Invalid(Invalid),
}

/// Why the bytes at a position are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than a header.
    ShortHeader,
    /// The magic is wrong.
    Magic,
    /// The header checksum does not match.
    HeaderChecksum { expected: u32, actual: u32 },
    /// The header verified but claims lengths over the format limits, an
    /// unknown kind, or non-zero reserved bytes.
    HeaderFields,
    /// The header verified but the body runs past the end of the bytes.
    ShortBody { needed: usize, available: usize },
    /// The body checksum does not match.
    BodyChecksum { expected: u32, actual: u32 },
}

/// Decodes the record at the start of `bytes`, verifying both checksums.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let header = match decode_header(bytes) {
        Ok(header) => header,
        Err(decoded) => return decoded,
    };
    let key_end = HEADER_BYTES + header.key_len as usize;
    let value_end = key_end + header.value_len as usize;
    // A record is whole only with its padding, so that where it ends (and
    // where a segment's data ends) is always a record boundary on disk.
    let needed = header.record_len();
    if bytes.len() < needed {
        return Decoded::Invalid(Invalid::ShortBody { needed, available: bytes.len() });
    }
    let actual = crc32c::crc32c(&bytes[HEADER_BYTES..value_end]);
    if actual != header.body_checksum {
        return Decoded::Invalid(Invalid::BodyChecksum { expected: header.body_checksum, actual });
    }
    Decoded::Record {
        header,
        key: &bytes[HEADER_BYTES..key_end],
        value: &bytes[key_end..value_end],
    }
}

/// Decodes and verifies only the header at the start of `bytes`.
pub fn decode_header(bytes: &[u8]) -> Result<RecordHeader, Decoded<'_>> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err(Decoded::Invalid(Invalid::ShortHeader));
    };
    if header.iter().all(|&byte| byte == 0) {
        return Err(Decoded::Zeros);
    }
    if header[0..4] != MAGIC {
        return Err(Decoded::Invalid(Invalid::Magic));
    }
    let expected = u32_at(header, 4);
    let actual = crc32c::crc32c(&header[8..HEADER_BYTES]);
    if actual != expected {
        return Err(Decoded::Invalid(Invalid::HeaderChecksum { expected, actual }));
    }
    let key_len = u32_at(header, 24);
    let value_len = u32_at(header, 28);
    let kind = RecordKind::from_byte(header[32]);
    let fields_ok = key_len as usize <= KEY_BYTES_LIMIT
        && value_len as usize <= VALUE_BYTES_LIMIT
        && header[33..40].iter().all(|&byte| byte == 0)
        && !(kind == Some(RecordKind::Remove) && value_len != 0);
    let Some(kind) = kind.filter(|_| fields_ok) else {
        return Err(Decoded::Invalid(Invalid::HeaderFields));
    };
    Ok(RecordHeader {
        partition: u32_at(header, 12),
        seq: u64_at(header, 16),
        key_len,
        value_len,
        kind,
        body_checksum: u32_at(header, 8),
    })
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(partition: u32, seq: u64, kind: RecordKind, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, partition, seq, kind, key, value);
        out
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let bytes = one(7, 42, RecordKind::Put, b"key", b"value!");
        assert_eq!(bytes.len(), record_len(3, 6));
        assert_eq!(bytes.len() % RECORD_ALIGN, 0);
        let Decoded::Record { header, key, value } = decode(&bytes) else { panic!("not a record") };
        assert_eq!((header.partition, header.seq, header.kind), (7, 42, RecordKind::Put));
        assert_eq!((key, value), (&b"key"[..], &b"value!"[..]));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = one(1, 2, RecordKind::Put, b"k", b"some value");
        let used = HEADER_BYTES + 1 + 10;
        for bit in 0..used * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(decode(&damaged), Decoded::Invalid(_)),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_invalid_or_zeros_never_a_record() {
        let bytes = one(1, 2, RecordKind::Remove, b"gone", b"");
        for len in 0..bytes.len() {
            assert!(!matches!(decode(&bytes[..len]), Decoded::Record { .. }), "len {len}");
        }
    }

    #[test]
    fn zeroed_header_means_end_of_log() {
        assert_eq!(decode(&[0; 64]), Decoded::Zeros);
    }
}
