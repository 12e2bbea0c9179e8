//! The log's segment scanner and index decoder on arbitrary files: the scanner, whatever its
//! chunk sizes and however short the file's reads, steps exactly as a plain decode loop over
//! the same bytes does; records encoded back to back scan back as themselves, and once damaged
//! (bytes changed, the file cut) still step as the model does; index entries decoded from any
//! bytes grow strictly and re-encode to the bytes they came from.
//!
//! Input (little endian): 18 bytes of setup — `from: u16`, `past_end_bytes: u16`,
//! `first_chunk_bytes: u16` (0: fixed chunks), `chunk_bytes_extra: u16` (added to the 4 KiB
//! smallest chunk), `read_bytes_max: u16`, `base_offset: u64` — then a mode byte. An even mode:
//! the rest is the file (and an index file). An odd mode: the rest is records, each
//! `flags: u8` (bit 0 keyed, bit 1 tombstone, bit 2 end of batch, bit 7 no more records),
//! `key_len: u8`, `value_len: u16`, `repeat: u8` (the value repeated that many times more, for
//! records larger than a chunk), the key, the value; after them `cut: u32` (`u32::MAX`: none)
//! and damage as `(at: u16, xor: u8)` triples.
#![no_main]

use driftless_log::fuzzing::{self, RecordSpec, ScanSetup};
use libfuzzer_sys::fuzz_target;

const SETUP_BYTES: usize = 18;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Takes `n` bytes (fewer at the end of the input).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

fuzz_target!(|data: &[u8]| {
    if data.len() <= SETUP_BYTES {
        return;
    }
    let (head, rest) = data.split_at(SETUP_BYTES);
    let mut base = [0; 8];
    base.copy_from_slice(&head[10..18]);
    let base_offset = u64::from_le_bytes(base);
    let first_chunk = usize::from(u16_at(head, 4));
    let setup = ScanSetup {
        from: u64::from(u16_at(head, 0)),
        past_end_bytes: u64::from(u16_at(head, 2)),
        first_chunk_bytes: (first_chunk != 0).then_some(first_chunk),
        chunk_bytes_max: 4096 + usize::from(u16_at(head, 6)),
        read_bytes_max: usize::from(u16_at(head, 8)).max(1),
    };
    let (&mode, mut rest) = rest.split_first().unwrap_or((&0, &[]));
    if mode % 2 == 0 {
        if let Err(e) = fuzzing::check_segment_scan(rest, setup) {
            panic!("segment scanner: {e}");
        }
        if let Err(e) = fuzzing::check_index_decode(base_offset, rest) {
            panic!("index decoder: {e}");
        }
        return;
    }
    let mut parts = Vec::new();
    while rest.len() >= 5 {
        let h = take(&mut rest, 5);
        let flags = h[0];
        if flags & 0x80 != 0 {
            break;
        }
        let key = take(&mut rest, usize::from(h[1]));
        let value = take(&mut rest, usize::from(u16_at(h, 2)));
        let value = value.repeat(usize::from(h[4] % 64) + 1);
        parts.push((flags, key, value));
    }
    let specs: Vec<RecordSpec<'_>> = parts
        .iter()
        .map(|(flags, key, value)| {
            let key = (flags & 1 != 0).then_some(*key);
            let value = (flags & 2 == 0).then_some(value.as_slice());
            (key, value, flags & 4 != 0)
        })
        .collect();
    if let Err(e) = fuzzing::check_segment_roundtrip(base_offset, &specs, setup) {
        panic!("segment round trip: {e}");
    }
    let (mut file, _) = fuzzing::encode_records(base_offset, &specs);
    if file.is_empty() || rest.len() < 4 {
        return;
    }
    let len = file.len();
    let cut = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    for damage in rest[4..].chunks_exact(3) {
        file[usize::from(u16_at(damage, 0)) % len] ^= damage[2];
    }
    if cut != u32::MAX {
        file.truncate(cut as usize % (len + 1));
    }
    if let Err(e) = fuzzing::check_segment_scan(&file, setup) {
        panic!("segment scanner on a damaged file: {e}");
    }
});
