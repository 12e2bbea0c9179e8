//! The pgoutput decoding path of the CDC source on arbitrary replication frames: each frame is
//! decoded as the stream decodes an `XLogData` payload (protocol version 1), `Relation` messages
//! set the column types, and every column value of every row change is converted to JSON as a
//! change's row is built (`driftless_connect::pg::cdc::fuzz_decode_pgoutput`).
//!
//! Input: frames, each a big-endian u16 length and that many bytes.
//!
//! Checks: no panic; every converted value is JSON that serialises and parses back equal (a
//! value that did not would make an event readers cannot parse).
#![no_main]

use driftless_connect::pg::cdc::fuzz_decode_pgoutput;
use libfuzzer_sys::fuzz_target;

/// Frames per input: a stream decodes one at a time; a few suffice to relate changes to
/// relations.
const FRAMES_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && frames.len() < FRAMES_MAX {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        frames.push(&rest[2..end]);
        rest = &rest[end..];
    }
    for frame in fuzz_decode_pgoutput(&frames) {
        let Ok(values) = frame else { continue };
        for value in values.into_iter().flatten().flatten() {
            let text = serde_json::to_string(&value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
            let back: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("a converted value is not JSON: {e}\n{text}"));
            assert_eq!(back, value, "{text}");
        }
    }
});
