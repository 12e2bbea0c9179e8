//! The log's record decoder on arbitrary bytes (a segment file's contents are input from disk):
//! no panic, a decoded record lies within the bytes and re-encodes to exactly them; and any
//! record encodes and decodes back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = driftless_log::fuzzing::check_record_decode(data) {
        panic!("record decoder: {e}");
    }
    // The same bytes as a record to encode: flags, offset and time, then key and value.
    if data.len() < 17 {
        return;
    }
    let (head, rest) = data.split_at(17);
    let flags = head[0];
    let mut word = [0; 8];
    word.copy_from_slice(&head[1..9]);
    let offset = u64::from_le_bytes(word);
    word.copy_from_slice(&head[9..17]);
    let timestamp_ms = i64::from_le_bytes(word);
    let cut = usize::from(flags >> 3).min(rest.len());
    let (key, value) = rest.split_at(cut);
    let key = (flags & 1 != 0).then_some(key);
    let value = (flags & 2 == 0).then_some(value);
    if let Err(e) = driftless_log::fuzzing::check_record_roundtrip(
        key,
        value,
        offset,
        timestamp_ms,
        flags & 4 != 0,
    ) {
        panic!("record round trip: {e}");
    }
});
