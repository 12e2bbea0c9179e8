//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs, may change at
//! any time).
//!
//! Each function runs one decoder of bytes that come from disk — the record decoder, the segment
//! scanner, the index decoder — on arbitrary input and checks what it can say about the answer
//! against a model, returning the first invariant that does not hold. The fuzz targets panic on
//! that error; a panic inside a decoder is a finding too.
//!
//! Invariants checked: a decoded record lies within the bytes given and re-encodes to exactly
//! those bytes; an incomplete record asks for more bytes than it was given and no more than the
//! size limit allows; a scanner over a file, whatever its chunk size and however short the file's
//! reads, returns exactly the steps of a plain decode loop over the same bytes; an encoded run of
//! records scans back as itself; decoded index entries grow strictly.

use std::io;
use std::sync::Mutex;

use crate::fs::FsFile;
use crate::record::{
    body_bytes_max, decode, encode, materialize, Decoded, NewRecord, RECORD_HEADER_BYTES,
};
use crate::segment::{IndexEntry, Scanner, Step};

/// The payload limit the fuzz targets decode with, in bytes: small, so that lengths near it are
/// reachable from short inputs.
pub const RECORD_BYTES_MAX: usize = 1 << 16;

/// Decodes `bytes` as one record and checks the answer (see the module's invariants).
pub fn check_record_decode(bytes: &[u8]) -> Result<(), String> {
    let body_max = body_bytes_max(RECORD_BYTES_MAX);
    match decode(bytes, body_max) {
        Decoded::Record { header, len } => {
            if len > bytes.len() {
                return Err(format!("a record of {len} bytes decoded from {} bytes", bytes.len()));
            }
            let record = materialize(&bytes[..len], &header);
            let new = NewRecord { key: record.key.as_deref(), value: record.value.as_deref() };
            let mut again = Vec::with_capacity(len);
            encode(&mut again, &new, record.offset, record.timestamp_ms, header.is_batch_end());
            if again != bytes[..len] {
                return Err(format!("record {record:?} re-encodes to other bytes"));
            }
        }
        Decoded::Incomplete { need } => {
            if need <= bytes.len() || need > 8 + body_max {
                return Err(format!("incomplete with {} bytes, asks for {need}", bytes.len()));
            }
        }
        Decoded::Invalid { .. } => {}
    }
    Ok(())
}

/// Encodes a record and checks that it decodes back as itself.
pub fn check_record_roundtrip(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    offset: u64,
    timestamp_ms: i64,
    batch_end: bool,
) -> Result<(), String> {
    let new = NewRecord { key, value };
    let mut bytes = Vec::new();
    encode(&mut bytes, &new, offset, timestamp_ms, batch_end);
    if bytes.len() != new.encoded_len() {
        return Err(format!(
            "encoded {} bytes, encoded_len says {}",
            bytes.len(),
            new.encoded_len()
        ));
    }
    let body_max = body_bytes_max(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
    match decode(&bytes, body_max) {
        Decoded::Record { header, len } if len == bytes.len() => {
            let r = materialize(&bytes, &header);
            let same = r.offset == offset
                && r.timestamp_ms == timestamp_ms
                && r.key.as_deref() == key
                && r.value.as_deref() == value
                && header.is_batch_end() == batch_end;
            if !same {
                return Err(format!("{new:?} at {offset} decoded as {r:?}"));
            }
            Ok(())
        }
        other => Err(format!("{new:?} decoded as {other:?}")),
    }
}

/// A file held in memory whose reads return at most `read_bytes_max` bytes each, as a real
/// file's short reads may.
#[derive(Debug)]
struct MemFile {
    bytes: Mutex<Vec<u8>>,
    read_bytes_max: usize,
}

impl MemFile {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl FsFile for MemFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let bytes = self.bytes();
        let Ok(pos) = usize::try_from(pos) else { return Ok(0) };
        let Some(rest) = bytes.get(pos..) else { return Ok(0) };
        let n = rest.len().min(buf.len()).min(self.read_bytes_max.max(1));
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("the fuzzing file is read-only"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other("the fuzzing file is read-only"))
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }
}

/// How a scan is set up: where it starts, where its range ends past the file's end (a file that
/// lost its tail), its chunk sizes, and the most bytes one read returns.
#[derive(Debug, Clone, Copy)]
pub struct ScanSetup {
    /// Position the scan starts at (clamped to the file).
    pub from: u64,
    /// Bytes the range claims beyond the end of the file.
    pub past_end_bytes: u64,
    /// First chunk size; `None` reads fixed full chunks.
    pub first_chunk_bytes: Option<usize>,
    /// Largest chunk size of a growing scan.
    pub chunk_bytes_max: usize,
    /// Most bytes one read of the file returns.
    pub read_bytes_max: usize,
}

/// What one step of a scan found, in a form both the scanner and the model give.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Record { position: u64, bytes: Vec<u8> },
    End,
    Invalid { position: u64, reason: &'static str },
    Incomplete { position: u64 },
}

/// The model: a plain decode loop over the bytes of the range that the file holds.
fn model_scan(file: &[u8], from: u64, to: u64, body_max: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let held = file.len().min(usize::try_from(to).unwrap_or(usize::MAX));
    let mut pos = usize::try_from(from).unwrap_or(usize::MAX);
    loop {
        if pos as u64 >= to {
            seen.push(Seen::End);
            return seen;
        }
        if to - (pos as u64) < RECORD_HEADER_BYTES as u64 {
            // Too short for any record: a tear, whatever the bytes.
            seen.push(Seen::Incomplete { position: pos as u64 });
            return seen;
        }
        let rest = file.get(pos..held).unwrap_or_default();
        match decode(rest, body_max) {
            Decoded::Record { len, .. } => {
                seen.push(Seen::Record { position: pos as u64, bytes: rest[..len].to_vec() });
                pos += len;
            }
            Decoded::Invalid { reason } => {
                seen.push(Seen::Invalid { position: pos as u64, reason });
                return seen;
            }
            Decoded::Incomplete { .. } => {
                seen.push(Seen::Incomplete { position: pos as u64 });
                return seen;
            }
        }
    }
}

/// Scans `file` with the real [`Scanner`] and compares every step with the model.
pub fn check_segment_scan(file: &[u8], setup: ScanSetup) -> Result<(), String> {
    let body_max = body_bytes_max(RECORD_BYTES_MAX);
    let len = file.len() as u64;
    let from = setup.from.min(len);
    let to = len + setup.past_end_bytes.min(1 << 20);
    let mem = MemFile { bytes: Mutex::new(file.to_vec()), read_bytes_max: setup.read_bytes_max };
    let mut scan = Scanner::new(&mem, from, to, body_max);
    scan = match setup.first_chunk_bytes {
        Some(first) => scan.with_growing_chunks(first, setup.chunk_bytes_max),
        None => scan.with_chunk_bytes(setup.chunk_bytes_max),
    };
    let want = model_scan(file, from, to, body_max);
    let mut got = Vec::new();
    // The model's answer is finite and the scanner must give the same: one step more than the
    // model took bounds the loop even if the scanner goes wrong.
    while got.len() <= want.len() {
        let step = scan.next_step().map_err(|e| format!("reading the in-memory file: {e}"))?;
        let (seen, last) = match step {
            Step::Record { position, len, header } => {
                let bytes = scan.record(len).to_vec();
                match decode(&bytes, body_max) {
                    Decoded::Record { header: again, len: l } if again == header && l == len => {}
                    other => {
                        return Err(format!("the scanner's record at {position} is {other:?}"))
                    }
                }
                (Seen::Record { position, bytes }, false)
            }
            Step::End => (Seen::End, true),
            Step::Invalid { position, reason } => (Seen::Invalid { position, reason }, true),
            Step::Incomplete { position } => (Seen::Incomplete { position }, true),
        };
        got.push(seen);
        if last {
            break;
        }
    }
    if got != want {
        return Err(format!(
            "scan of {len} bytes from {from} to {to} ({setup:?}) differs from the model:\n\
             scanner: {got:?}\nmodel:   {want:?}"
        ));
    }
    Ok(())
}

/// One record to encode into a segment: key, value (`None`: a tombstone), end of batch.
pub type RecordSpec<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, bool);

/// Encodes `records` back to back as a segment's file, offsets from `base` (the last record ends
/// its batch); returns the bytes and the offset after the last record encoded (fewer records
/// are encoded when the offsets would pass `u64::MAX`).
pub fn encode_records(base: u64, records: &[RecordSpec<'_>]) -> (Vec<u8>, u64) {
    let mut file = Vec::new();
    let mut offset = base;
    for (i, &(key, value, batch_end)) in records.iter().enumerate() {
        let last = i + 1 == records.len();
        let Some(next) = offset.checked_add(1) else { break };
        encode(&mut file, &NewRecord { key, value }, offset, i as i64, batch_end || last);
        offset = next;
    }
    (file, offset)
}

/// Encodes `records` back to back (offsets from `base`) and checks that a scan returns each of
/// them and then ends, whatever the scan's setup.
pub fn check_segment_roundtrip(
    base: u64,
    records: &[RecordSpec<'_>],
    setup: ScanSetup,
) -> Result<(), String> {
    let (file, offset) = encode_records(base, records);
    let setup = ScanSetup { from: 0, past_end_bytes: 0, ..setup };
    check_segment_scan(&file, setup)?;
    let steps = model_scan(&file, 0, file.len() as u64, body_bytes_max(RECORD_BYTES_MAX));
    let records_seen = steps.iter().filter(|s| matches!(s, Seen::Record { .. })).count();
    let encoded = (offset - base) as usize;
    // A record over the limit is refused by design (the scan stops there, as checked above).
    let fit = records
        .iter()
        .all(|(k, v, _)| k.map_or(0, <[u8]>::len) + v.map_or(0, <[u8]>::len) <= RECORD_BYTES_MAX);
    if fit && (records_seen != encoded || steps.last() != Some(&Seen::End)) {
        return Err(format!("{encoded} records encoded, the scan saw {steps:?}"));
    }
    Ok(())
}

/// Decodes `bytes` as an index file and checks that the entries it keeps grow as recovery and
/// lookups assume: offsets and positions strictly, timestamps weakly.
pub fn check_index_decode(base_offset: u64, bytes: &[u8]) -> Result<(), String> {
    let entries = IndexEntry::decode_all(base_offset, bytes);
    if entries.len() > bytes.len() / crate::segment::INDEX_ENTRY_BYTES {
        return Err(format!("{} entries from {} bytes", entries.len(), bytes.len()));
    }
    for pair in entries.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset <= a.offset || b.position <= a.position || b.timestamp_ms < a.timestamp_ms {
            return Err(format!("index entries do not grow: {a:?} then {b:?}"));
        }
    }
    let mut again = Vec::new();
    for e in &entries {
        e.encode(base_offset, &mut again);
    }
    if again != bytes[..again.len()] {
        return Err("decoded index entries re-encode to other bytes".into());
    }
    Ok(())
}
