//! The key decoders of the broker's internal topics, `__offsets` (committed offsets) and
//! `__dlq` (dead-letter index), on arbitrary keys: whatever a key holds (a group name with any
//! bytes, a torn or foreign record), decoding answers without panicking.
//!
//! Builds against `driftless_broker::keys::{decode_offset_key, decode_dlq_key}`.
#![no_main]

use driftless_broker::keys::{decode_dlq_key, decode_offset_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_offset_key(data);
    let _ = decode_dlq_key(data);
});
