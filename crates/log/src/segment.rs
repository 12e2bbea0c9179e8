//! Segments: one record file plus its sparse offset-and-time index, and a scanner over records.
//!
//! Files of a segment whose first offset is B:
//! - `{B:020}.log` — records back to back, as laid out in [`crate::record`];
//! - `{B:020}.idx` — 20-byte entries `(offset - B: u32, position: u32, timestamp_ms: i64,
//!   crc32c of the previous 16 bytes: u32)`, one at the start of the first batch after every
//!   `index_interval_bytes` of records, plus a final "seal" entry at the last record when the
//!   segment is sealed.
//!
//! Invariants: index entries point at the first record of a batch (or at the last record, for the
//! seal entry), so recovery may start scanning at any of them; offsets and timestamps grow strictly
//! and weakly along the index; the index is a cache — it is validated on open and rebuilt from the
//! records whenever it disagrees with them, so a torn or stale index never causes a wrong read.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::file_cache::CachedFile;
use crate::fs::{read_into, FsFile};
use crate::record::{decode, Decoded, Header};

/// Bytes of one index entry.
pub(crate) const INDEX_ENTRY_BYTES: usize = 20;
/// Bytes a scanner reads at a time, unless one record needs more.
pub(crate) const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// One entry of the sparse index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: i64,
}

impl IndexEntry {
    pub fn encode(&self, base_offset: u64, out: &mut Vec<u8>) {
        let start = out.len();
        // Segments are below 1 GiB and hold fewer than 2^32 records: both fit in u32.
        out.extend_from_slice(&((self.offset - base_offset) as u32).to_le_bytes());
        out.extend_from_slice(&(self.position as u32).to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the entries of an index file, stopping at the first entry that is torn, fails its
    /// checksum, or does not grow.
    pub fn decode_all(base_offset: u64, bytes: &[u8]) -> Vec<IndexEntry> {
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_BYTES);
        for raw in bytes.chunks_exact(INDEX_ENTRY_BYTES) {
            let crc = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
            if crc32c::crc32c(&raw[..16]) != crc {
                break;
            }
            let rel = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let position = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let mut ts = [0; 8];
            ts.copy_from_slice(&raw[8..16]);
            // A base offset near u64::MAX (a damaged file name) cannot wrap: the entry and
            // everything after it are dropped, and the index is rebuilt from the records.
            let Some(offset) = base_offset.checked_add(u64::from(rel)) else {
                break;
            };
            let entry = IndexEntry {
                offset,
                position: u64::from(position),
                timestamp_ms: i64::from_le_bytes(ts),
            };
            if let Some(prev) = entries.last() {
                if entry.offset <= prev.offset
                    || entry.position <= prev.position
                    || entry.timestamp_ms < prev.timestamp_ms
                {
                    break;
                }
            }
            entries.push(entry);
        }
        entries
    }
}

/// A segment in memory: its file, how much of it holds complete records, and its index.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    pub idx_path: PathBuf,
    /// The record file, opened on demand (see [`crate::file_cache`]).
    pub file: CachedFile,
    /// Bytes of complete records. Readers never look past it; only the writer raises it, after
    /// the bytes are written.
    pub len: AtomicU64,
    /// Bytes known to be durable.
    pub synced_len: AtomicU64,
    /// One past the offset of the last record (the base offset if empty).
    pub end_offset: AtomicU64,
    /// Timestamp of the first record (`i64::MAX` if empty).
    pub first_timestamp_ms: AtomicI64,
    /// Timestamp of the last record (`i64::MIN` if empty).
    pub last_timestamp_ms: AtomicI64,
    pub index: RwLock<Vec<IndexEntry>>,
}

impl Segment {
    pub fn paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
        (dir.join(format!("{base_offset:020}.log")), dir.join(format!("{base_offset:020}.idx")))
    }

    pub fn new(
        dir: &Path,
        base_offset: u64,
        file: CachedFile,
        len: u64,
        summary: Summary,
        index: Vec<IndexEntry>,
    ) -> Self {
        let (log_path, idx_path) = Self::paths(dir, base_offset);
        Self {
            base_offset,
            log_path,
            idx_path,
            file,
            len: AtomicU64::new(len),
            synced_len: AtomicU64::new(len),
            end_offset: AtomicU64::new(summary.end_offset.max(base_offset)),
            first_timestamp_ms: AtomicI64::new(summary.first_timestamp_ms),
            last_timestamp_ms: AtomicI64::new(summary.last_timestamp_ms),
            index: RwLock::new(index),
        }
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    pub fn last_timestamp_ms(&self) -> i64 {
        self.last_timestamp_ms.load(Ordering::Acquire)
    }

    fn entries(&self) -> std::sync::RwLockReadGuard<'_, Vec<IndexEntry>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Position of a batch start at or before the record with `offset`.
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        let entries = self.entries();
        let i = entries.partition_point(|e| e.offset <= offset);
        // A seal entry points at the last record, not a batch start; it is still a record start,
        // which is all a reader needs.
        if i == 0 {
            0
        } else {
            entries[i - 1].position
        }
    }

    /// Position of a record start before the first record with a timestamp of at least `ts`.
    pub fn position_for_time(&self, timestamp_ms: i64) -> u64 {
        let entries = self.entries();
        let i = entries.partition_point(|e| e.timestamp_ms < timestamp_ms);
        if i == 0 {
            0
        } else {
            entries[i - 1].position
        }
    }

    /// The record file, for a scan: the caller holds it open for the scan's duration.
    pub fn open_file(&self) -> std::io::Result<Arc<dyn FsFile>> {
        self.file.get()
    }
}

/// First and last facts about a run of records, gathered while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub end_offset: u64,
    pub first_timestamp_ms: i64,
    pub last_timestamp_ms: i64,
}

impl Summary {
    pub const EMPTY: Summary =
        Summary { end_offset: 0, first_timestamp_ms: i64::MAX, last_timestamp_ms: i64::MIN };
}

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Step {
    /// A valid record starting at `position`, `len` bytes long; [`Scanner::record`] gives its
    /// bytes until the next step.
    Record { position: u64, header: Header, len: usize },
    /// The scan reached its end exactly at a record boundary.
    End,
    /// The bytes at `position` are not a valid record.
    Invalid { position: u64, reason: &'static str },
    /// A record starts at `position` but the range ends before it does.
    Incomplete { position: u64 },
}

thread_local! {
    /// The read buffer a scanner on this thread last dropped, for the next one: a fresh buffer
    /// is zeroed before the read overwrites it, and the zeroing cost as much as the read's copy.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Largest read buffer kept for the thread's next scan; a larger one (a record over a chunk) is
/// freed with its scanner. Bounds the memory idle scratch buffers hold to this per thread.
const SCRATCH_KEPT_BYTES_MAX: usize = SCAN_CHUNK_BYTES;

/// Reads records sequentially from `[from, to)` of a file, in chunks, into a buffer reused from
/// chunk to chunk and, through a per-thread scratch buffer, from scan to scan. Records' bytes are
/// borrowed from it ([`Scanner::record`]); a caller keeping them copies them.
pub(crate) struct Scanner<'a> {
    file: &'a dyn FsFile,
    pos: u64,
    to: u64,
    body_bytes_max: usize,
    chunk_bytes: usize,
    /// Each refill doubles `chunk_bytes` up to this (equal to it: fixed-size chunks).
    chunk_bytes_max: usize,
    /// `buf[..filled]` holds the file's bytes from `chunk_pos`; the rest is stale.
    buf: Vec<u8>,
    filled: usize,
    chunk_pos: u64,
}

impl Drop for Scanner<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() <= SCRATCH_KEPT_BYTES_MAX {
            let buf = std::mem::take(&mut self.buf);
            SCRATCH.with(|s| {
                // Keep the larger of the two: the next scan then grows (and zeroes) less.
                let other = s.take();
                s.set(if other.len() > buf.len() { other } else { buf });
            });
        }
    }
}

impl<'a> Scanner<'a> {
    pub fn new(file: &'a dyn FsFile, from: u64, to: u64, body_bytes_max: usize) -> Self {
        Self {
            file,
            pos: from,
            to,
            body_bytes_max,
            chunk_bytes: SCAN_CHUNK_BYTES,
            chunk_bytes_max: SCAN_CHUNK_BYTES,
            buf: SCRATCH.with(Cell::take),
            filled: 0,
            chunk_pos: from,
        }
    }

    /// The bytes of the record the last step returned, which started `len` bytes before the
    /// scan's position.
    pub fn record(&self, len: usize) -> &[u8] {
        let at = (self.pos - self.chunk_pos) as usize - len;
        &self.buf[at..at + len]
    }

    /// Reads `chunk_bytes` at a time instead of [`SCAN_CHUNK_BYTES`] (short reads of a tail).
    pub fn with_chunk_bytes(mut self, chunk_bytes: usize) -> Self {
        self.chunk_bytes = chunk_bytes.clamp(4096, SCAN_CHUNK_BYTES);
        self.chunk_bytes_max = self.chunk_bytes;
        self
    }

    /// Reads `first_bytes` first, then twice as much at each refill up to `max_bytes`: a read
    /// that wants a few records of a long segment reads little more than them, and a long scan
    /// still reads in large chunks (at most twice what it used, plus one chunk).
    pub fn with_growing_chunks(mut self, first_bytes: usize, max_bytes: usize) -> Self {
        self.chunk_bytes_max = max_bytes.clamp(4096, SCAN_CHUNK_BYTES);
        self.chunk_bytes = first_bytes.clamp(4096, self.chunk_bytes_max);
        self
    }

    pub fn next_step(&mut self) -> std::io::Result<Step> {
        if self.pos >= self.to {
            return Ok(Step::End);
        }
        if self.to - self.pos < crate::record::RECORD_HEADER_BYTES as u64 {
            // A tail shorter than the smallest record is a tear, whatever its bytes say: decoding
            // them only when an earlier read happened to bring them in would call the same tail
            // invalid from one start position and torn from another.
            return Ok(Step::Incomplete { position: self.pos });
        }
        loop {
            let at = (self.pos - self.chunk_pos) as usize;
            let decoded = if self.pos >= self.chunk_pos && at < self.filled {
                decode(&self.buf[at..self.filled], self.body_bytes_max)
            } else {
                Decoded::Incomplete { need: crate::record::RECORD_HEADER_BYTES }
            };
            match decoded {
                Decoded::Record { header, len } => {
                    let position = self.pos;
                    self.pos += len as u64;
                    return Ok(Step::Record { position, header, len });
                }
                Decoded::Invalid { reason } => {
                    return Ok(Step::Invalid { position: self.pos, reason });
                }
                Decoded::Incomplete { need } => {
                    let remaining = self.to - self.pos;
                    if need as u64 > remaining {
                        return Ok(Step::Incomplete { position: self.pos });
                    }
                    let want = (need.max(self.chunk_bytes) as u64).min(remaining) as usize;
                    if self.buf.len() < want {
                        // Exactly: amortised doubling would take a 700 KiB buffer grown to a
                        // 1 MiB chunk past what the thread keeps for its next scan.
                        self.buf.reserve_exact(want - self.buf.len());
                        self.buf.resize(want, 0);
                    }
                    // Nothing of the old chunk is valid past this point, even on error.
                    self.filled = 0;
                    self.chunk_pos = self.pos;
                    self.filled = read_into(self.file, self.pos, &mut self.buf[..want])?;
                    self.chunk_bytes = (self.chunk_bytes * 2).min(self.chunk_bytes_max);
                    let short = self.filled < need;
                    if short {
                        // The file ends before the range does: the range ends in a tear, unless
                        // what the file still holds is no record at all (a length no record can
                        // have), which a scan that had those bytes buffered calls invalid.
                        let held = decode(&self.buf[..self.filled], self.body_bytes_max);
                        return Ok(match held {
                            Decoded::Invalid { reason } => {
                                Step::Invalid { position: self.pos, reason }
                            }
                            _ => Step::Incomplete { position: self.pos },
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fs::{Fs, OpenMode, StdFs};
    use crate::record::{encode, NewRecord};

    /// `base_offset + rel` overflowed (a panic in debug builds, a wrapped offset in release) for
    /// an index whose segment's base offset is near `u64::MAX`; such entries are dropped.
    #[test]
    fn an_index_entry_past_u64_max_is_dropped_not_wrapped() {
        let base = u64::MAX - 1;
        let mut bytes = Vec::new();
        IndexEntry { offset: base, position: 0, timestamp_ms: 1 }.encode(base, &mut bytes);
        // rel = 5 from the same base: base + 5 does not fit in u64.
        let mut far = Vec::new();
        IndexEntry { offset: 5, position: 40, timestamp_ms: 2 }.encode(0, &mut far);
        bytes.extend_from_slice(&far);
        let entries = IndexEntry::decode_all(base, &bytes);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].offset, base);
    }

    /// The scratch buffer comes back holding the previous scan's bytes: a scan of a shorter
    /// file must stop at what it read, not decode those stale bytes as records.
    #[test]
    fn a_scanner_never_reads_the_stale_bytes_a_previous_scan_left_in_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mut long = Vec::new();
        let mut ends = Vec::new();
        for i in 0..100u64 {
            encode(&mut long, &NewRecord::keyed(b"k", &[i as u8; 40]), i, 1, true);
            ends.push(long.len());
        }
        // The short file is the long one's first three records and half of the fourth: the
        // rest of the fourth is exactly what the buffer still holds from the long scan.
        let short = &long[..ends[2] + (ends[3] - ends[2]) / 2];
        let paths = [dir.path().join("long"), dir.path().join("short")];
        std::fs::write(&paths[0], &long).unwrap();
        std::fs::write(&paths[1], short).unwrap();
        let count = |path: &Path, to: u64| {
            let file = StdFs.open(path, OpenMode::Read).unwrap();
            let mut scan = Scanner::new(&*file, 0, to, 1 << 10);
            let mut offsets = Vec::new();
            loop {
                match scan.next_step().unwrap() {
                    Step::Record { header, len, .. } => {
                        assert_eq!(scan.record(len).len(), len);
                        offsets.push(header.offset);
                    }
                    other => return (offsets, format!("{other:?}")),
                }
            }
        };
        let (offsets, end) = count(&paths[0], long.len() as u64);
        assert_eq!((offsets.len(), end.as_str()), (100, "End"));
        // The range claims the long file's length, as a segment whose file lost its tail would.
        let (offsets, end) = count(&paths[1], long.len() as u64);
        assert_eq!(offsets, vec![0, 1, 2], "only the records the short file holds");
        assert!(end.starts_with("Incomplete"), "{end}");
    }

    /// Found by the `segment` fuzz target: 16 bytes of garbage after a record were "invalid"
    /// when the scan had read them with the record and "torn" when it started at them.
    #[test]
    fn a_range_tail_shorter_than_a_record_is_torn_whatever_the_scan_read_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode(&mut bytes, &NewRecord::keyed(b"k", b"value"), 0, 1, true);
        let record_len = bytes.len() as u64;
        // A length field below the minimum: invalid if decoded.
        bytes.extend_from_slice(&[0, 0, 0, 0, 5, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]);
        let path = dir.path().join("log");
        std::fs::write(&path, &bytes).unwrap();
        let file = StdFs.open(&path, OpenMode::Read).unwrap();
        let last_step = |from: u64| {
            let mut scan = Scanner::new(&*file, from, bytes.len() as u64, 1 << 10);
            loop {
                match scan.next_step().unwrap() {
                    Step::Record { .. } => continue,
                    other => return format!("{other:?}"),
                }
            }
        };
        let torn = format!("Incomplete {{ position: {record_len} }}");
        assert_eq!(last_step(record_len), torn, "scanning from the tail");
        assert_eq!(last_step(0), torn, "scanning from the record before it");
    }

    /// Found by the `segment` fuzz target: a file that ends before its range, holding 16 bytes
    /// whose length no record can have, was "invalid" when the scan had read them with the
    /// record before them and "torn" when it started at them.
    #[test]
    fn an_invalid_tail_of_a_file_shorter_than_its_range_is_invalid_whatever_the_scan_read_before_it(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode(&mut bytes, &NewRecord::keyed(b"k", b"value"), 0, 1, true);
        let record_len = bytes.len() as u64;
        bytes.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255, 9, 9, 9, 9, 9, 9, 9, 9]);
        let path = dir.path().join("log");
        std::fs::write(&path, &bytes).unwrap();
        let file = StdFs.open(&path, OpenMode::Read).unwrap();
        let last_step = |from: u64| {
            let mut scan = Scanner::new(&*file, from, bytes.len() as u64 + 1000, 1 << 10);
            loop {
                match scan.next_step().unwrap() {
                    Step::Record { .. } => continue,
                    other => return format!("{other:?}"),
                }
            }
        };
        let invalid = format!(
            "Invalid {{ position: {record_len}, reason: \"length above record_bytes_max\" }}"
        );
        assert_eq!(last_step(0), invalid, "scanning from the record before it");
        assert_eq!(last_step(record_len), invalid, "scanning from the tail");
    }

    /// A scan whose chunks grew from an odd size up to a full chunk leaves its buffer for the
    /// thread's next scan (amortised growth had taken it past the size kept, so every such scan
    /// zeroed a fresh buffer again).
    #[test]
    fn a_scan_grown_to_a_full_chunk_leaves_its_buffer_for_the_next_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        let mut offset = 0;
        while bytes.len() < 2 * SCAN_CHUNK_BYTES {
            encode(&mut bytes, &NewRecord::unkeyed(&[7; 1000]), offset, 1, true);
            offset += 1;
        }
        let path = dir.path().join("log");
        std::fs::write(&path, &bytes).unwrap();
        let file = StdFs.open(&path, OpenMode::Read).unwrap();
        let mut scan = Scanner::new(&*file, 0, bytes.len() as u64, 1 << 12)
            .with_growing_chunks(700 << 10, SCAN_CHUNK_BYTES);
        while let Step::Record { .. } = scan.next_step().unwrap() {}
        drop(scan);
        let kept = SCRATCH.with(|s| {
            let buf = s.take();
            let len = buf.len();
            s.set(buf);
            len
        });
        assert_eq!(kept, SCAN_CHUNK_BYTES);
    }
}
