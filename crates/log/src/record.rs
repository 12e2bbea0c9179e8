//! The on-disk record format: encoding, decoding and checksum verification.
//!
//! ```text
//! byte  size  field
//! 0     4     crc32c (Castagnoli), little endian, over bytes [4, 8 + body_len)
//! 4     4     body_len, little endian: the bytes after this 8-byte prefix
//! 8     8     offset, little endian
//! 16    8     timestamp_ms (append time, milliseconds since the Unix epoch), little endian
//! 24    1     flags: bit 0 tombstone (no value), bit 1 has key, bit 2 last record of its batch
//! 25    4     key_len, little endian
//! 29    ..    key (key_len bytes), then value (the rest of the body)
//! ```
//!
//! Invariants: the checksum covers the length, so a flipped length bit is caught like any other;
//! an all-zero region never decodes (its `body_len` is below the minimum); a decoder never
//! allocates more than the caller's `record_bytes_max` allows, whatever the length field claims.

use bytes::Bytes;

/// Bytes of the fixed record header (crc, length, offset, timestamp, flags, key length).
pub const RECORD_HEADER_BYTES: usize = 29;
/// Bytes of the part of the header that the body length does not count (crc and length).
const PREFIX_BYTES: usize = 8;
/// Smallest legal body: a record with an empty key and an empty value.
const BODY_BYTES_MIN: usize = RECORD_HEADER_BYTES - PREFIX_BYTES;

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_HAS_KEY: u8 = 1 << 1;
const FLAG_BATCH_END: u8 = 1 << 2;
const FLAGS_KNOWN: u8 = FLAG_TOMBSTONE | FLAG_HAS_KEY | FLAG_BATCH_END;

/// A record to append: an optional key and a value, or no value for a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord<'a> {
    /// The compaction key. Records without a key are never removed by compaction.
    pub key: Option<&'a [u8]>,
    /// The payload; `None` makes the record a tombstone, which deletes its key on compaction.
    pub value: Option<&'a [u8]>,
}

impl<'a> NewRecord<'a> {
    /// A record with a key and a value.
    pub fn keyed(key: &'a [u8], value: &'a [u8]) -> Self {
        Self { key: Some(key), value: Some(value) }
    }

    /// A record with a value and no key.
    pub fn unkeyed(value: &'a [u8]) -> Self {
        Self { key: None, value: Some(value) }
    }

    /// A tombstone for `key`.
    pub fn tombstone(key: &'a [u8]) -> Self {
        Self { key: Some(key), value: None }
    }

    /// Bytes this record occupies on disk.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len)
    }
}

/// A record read back from the log. Its checksum has been verified; its key and value are its
/// own copies, so keeping it holds nothing else in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the partition; dense unless compaction removed records.
    pub offset: u64,
    /// Append time in milliseconds since the Unix epoch; never decreases within a partition.
    pub timestamp_ms: i64,
    /// The compaction key, if any.
    pub key: Option<Bytes>,
    /// The payload, or `None` for a tombstone.
    pub value: Option<Bytes>,
}

impl Record {
    /// Whether this record deletes its key.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// Appends the encoding of `record` to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    record: &NewRecord<'_>,
    offset: u64,
    timestamp_ms: i64,
    batch_end: bool,
) {
    let key = record.key.unwrap_or(&[]);
    let value = record.value.unwrap_or(&[]);
    let start = out.len();
    let body_len = BODY_BYTES_MIN + key.len() + value.len();
    let mut flags = 0;
    if record.value.is_none() {
        flags |= FLAG_TOMBSTONE;
    }
    if record.key.is_some() {
        flags |= FLAG_HAS_KEY;
    }
    if batch_end {
        flags |= FLAG_BATCH_END;
    }
    // Callers bound record sizes far below u32::MAX (record_bytes_max <= 64 MiB).
    debug_assert!(body_len <= u32::MAX as usize);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at a position hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A valid record of `len` bytes.
    Record { header: Header, len: usize },
    /// Too few bytes to tell; `need` bytes from the start of the record would settle it.
    Incomplete { need: usize },
    /// Not a valid record: bad length, bad flags or checksum mismatch.
    Invalid { reason: &'static str },
}

/// The fixed fields of a decoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub flags: u8,
    pub key_len: usize,
}

impl Header {
    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the record at the start of `buf`, verifying its checksum.
///
/// `body_bytes_max` bounds the length field so that garbage cannot make a caller allocate or read
/// gigabytes.
pub(crate) fn decode(buf: &[u8], body_bytes_max: usize) -> Decoded {
    if buf.len() < PREFIX_BYTES {
        return Decoded::Incomplete { need: RECORD_HEADER_BYTES };
    }
    let body_len = u32_at(buf, 4) as usize;
    if body_len < BODY_BYTES_MIN {
        return Decoded::Invalid { reason: "length below the minimum record size" };
    }
    if body_len > body_bytes_max {
        return Decoded::Invalid { reason: "length above record_bytes_max" };
    }
    let len = PREFIX_BYTES + body_len;
    if buf.len() < len {
        return Decoded::Incomplete { need: len };
    }
    let crc = u32_at(buf, 0);
    if crc32c::crc32c(&buf[4..len]) != crc {
        return Decoded::Invalid { reason: "checksum mismatch" };
    }
    let flags = buf[24];
    let key_len = u32_at(buf, 25) as usize;
    if flags & !FLAGS_KNOWN != 0 {
        return Decoded::Invalid { reason: "unknown flag bits" };
    }
    if key_len > body_len - BODY_BYTES_MIN {
        return Decoded::Invalid { reason: "key length beyond the record" };
    }
    if flags & FLAG_HAS_KEY == 0 && key_len != 0 {
        return Decoded::Invalid { reason: "key bytes on a record without a key" };
    }
    if flags & FLAG_TOMBSTONE != 0 && body_len != BODY_BYTES_MIN + key_len {
        return Decoded::Invalid { reason: "value bytes on a tombstone" };
    }
    let header =
        Header { offset: u64_at(buf, 8), timestamp_ms: u64_at(buf, 16) as i64, flags, key_len };
    Decoded::Record { header, len }
}

/// Builds a [`Record`] from the valid encoding `bytes` (as [`decode`] checked it), copying its
/// key and value: a record kept for long (a consumer's pending window, a compaction's key map)
/// then holds its own bytes, not the read buffer they came in.
pub(crate) fn materialize(bytes: &[u8], header: &Header) -> Record {
    let value_start = RECORD_HEADER_BYTES + header.key_len;
    let key = (header.flags & FLAG_HAS_KEY != 0)
        .then(|| Bytes::copy_from_slice(&bytes[RECORD_HEADER_BYTES..value_start]));
    let value =
        (header.flags & FLAG_TOMBSTONE == 0).then(|| Bytes::copy_from_slice(&bytes[value_start..]));
    Record { offset: header.offset, timestamp_ms: header.timestamp_ms, key, value }
}

/// The largest body a record of at most `record_bytes_max` payload bytes can have.
pub(crate) fn body_bytes_max(record_bytes_max: usize) -> usize {
    BODY_BYTES_MIN + record_bytes_max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(record: NewRecord<'_>) -> Record {
        let mut buf = Vec::new();
        encode(&mut buf, &record, 42, 1_700_000_000_000, true);
        assert_eq!(buf.len(), record.encoded_len());
        match decode(&buf, 1 << 20) {
            Decoded::Record { header, len } => {
                assert_eq!(len, buf.len());
                assert!(header.is_batch_end());
                materialize(&buf, &header)
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn keyed_unkeyed_and_tombstone_records_roundtrip() {
        let r = roundtrip(NewRecord::keyed(b"k", b"value"));
        assert_eq!((r.offset, r.timestamp_ms), (42, 1_700_000_000_000));
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"value"[..]));
        let r = roundtrip(NewRecord::unkeyed(b""));
        assert_eq!((r.key, r.value.as_deref()), (None, Some(&b""[..])));
        let r = roundtrip(NewRecord::tombstone(b""));
        assert_eq!(r.key.as_deref(), Some(&b""[..]));
        assert!(r.is_tombstone());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, &NewRecord::keyed(b"key", b"some value"), 7, 99, false);
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode(&flipped, 1 << 20), Decoded::Record { .. }),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroes_and_huge_lengths_are_invalid_not_allocations() {
        assert!(matches!(decode(&[0; 64], 1 << 20), Decoded::Invalid { .. }));
        let mut buf = vec![0; 64];
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf, 1 << 20), Decoded::Invalid { .. }));
    }

    #[test]
    fn a_short_buffer_asks_for_the_whole_record() {
        let mut buf = Vec::new();
        encode(&mut buf, &NewRecord::keyed(b"key", b"value"), 1, 1, false);
        assert_eq!(decode(&buf[..3], 1 << 20), Decoded::Incomplete { need: RECORD_HEADER_BYTES });
        assert_eq!(decode(&buf[..20], 1 << 20), Decoded::Incomplete { need: buf.len() });
    }

    proptest::proptest! {
        /// RELIABILITY.md test 13: the decoder of external bytes never panics and never claims a
        /// record longer than the bytes it was given.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            match decode(&bytes, 1 << 10) {
                Decoded::Record { len, .. } => proptest::prop_assert!(len <= bytes.len()),
                Decoded::Incomplete { need } => proptest::prop_assert!(need > bytes.len() && need <= 8 + body_bytes_max(1 << 10)),
                Decoded::Invalid { .. } => {}
            }
        }
    }
}
