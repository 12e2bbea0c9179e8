//! The key decoders of the broker's internal topics, `__offsets` (committed offsets) and
//! `__dlq` (dead-letter index), on arbitrary keys: whatever a key holds (a group name with any
//! bytes, a torn or foreign record), decoding answers without panicking; a key that decodes is
//! the one encoding of what it decoded to (no two keys name the same offset or dead letter), and
//! an old-format key that decodes names a valid group, topic and partition whose new key decodes
//! back to it.
#![no_main]

use driftless_broker::keys::{
    decode_dlq_key, decode_legacy_offset_key, decode_offset_key, encode_dlq_key, encode_offset_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = decode_offset_key(data) {
        assert_eq!(encode_offset_key(&key), data, "{key:?} has another encoding");
    }
    if let Ok(key) = decode_dlq_key(data) {
        assert_eq!(encode_dlq_key(&key), data, "{key:?} has another encoding");
    }
    if let Ok(key) = decode_legacy_offset_key(data) {
        let migrated = encode_offset_key(&key);
        assert_eq!(decode_offset_key(&migrated).as_ref(), Ok(&key), "migrating {key:?}");
    }
});
