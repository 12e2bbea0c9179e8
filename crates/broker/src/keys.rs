//! The keys of the broker's internal `__offsets` and `__dlq` records, and their decoders.
//!
//! Format (version 1), chosen so that no name can split a key: the prefix `00 01`, then each
//! field as a 16-bit big-endian length and its bytes, then (offsets only) the partition as a
//! 32-bit big-endian number:
//!
//! - `__offsets`: `00 01 | len group | len topic | partition`;
//! - `__dlq`:     `00 01 | len group | len dead-letter id`.
//!
//! Invariants: decoding consumes the whole key and checks every field (a valid group name, a valid
//! topic name, a dead-letter id of printable ASCII), so `decode(encode(k)) == k` and every other
//! byte string is an error — never a panic (the decoders face bytes read from disk, and a fuzz
//! target feeds them arbitrary ones). The prefix cannot begin a key of the old format
//! (`group \0 topic \0 partition`) written from valid names, whose first byte is a name
//! character; [`decode_legacy_offset_key`] reads those, strictly (exactly three fields, each
//! valid), for the migration on open.

use driftless_core::{InvalidTopicName, TopicName};

use crate::group_name::{GroupName, InvalidGroupName};

/// The first bytes of every version-1 key.
pub const KEY_V1_PREFIX: [u8; 2] = [0x00, 0x01];

/// Longest dead-letter id (`topic:partition:offset`): a topic name, a `u32`, a `u64` and two
/// separators fit.
pub const DEAD_LETTER_ID_BYTES_MAX: usize = driftless_core::TOPIC_NAME_BYTES_MAX + 1 + 10 + 1 + 20;

/// What an `__offsets` key names: one group's committed offset in one partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffsetKey {
    /// The consumer group.
    pub group: GroupName,
    /// The topic.
    pub topic: TopicName,
    /// The partition.
    pub partition: u32,
}

/// What a `__dlq` key names: one dead letter of one group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DlqKey {
    /// The consumer group.
    pub group: GroupName,
    /// The dead letter's id, `topic:partition:offset`.
    pub id: String,
}

/// Why bytes are not a valid key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key does not start with [`KEY_V1_PREFIX`].
    #[error("the key does not start with the version-1 prefix 00 01")]
    UnknownFormat,
    /// The key ends inside a field.
    #[error("the key ends inside its {0} field")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("{0} unexpected byte(s) after the key's last field")]
    Trailing(usize),
    /// The group field is not a valid group name.
    #[error(transparent)]
    Group(#[from] InvalidGroupName),
    /// The topic field is not a valid topic name.
    #[error(transparent)]
    Topic(#[from] InvalidTopicName),
    /// The dead-letter id field is malformed.
    #[error("invalid dead-letter id: {0}")]
    DeadLetterId(&'static str),
    /// A field of an old-format key is malformed or the key does not have three fields.
    #[error("old-format offsets key: {0}")]
    Legacy(&'static str),
}

/// Encodes an `__offsets` key.
pub fn encode_offset_key(key: &OffsetKey) -> Vec<u8> {
    offset_key(key.group.as_str(), key.topic.as_str(), key.partition)
}

/// Decodes a version-1 `__offsets` key; an error for any other bytes.
pub fn decode_offset_key(key: &[u8]) -> Result<OffsetKey, KeyError> {
    let mut r = Reader::new(key)?;
    let group = r.text("group")?;
    let topic = r.text("topic")?;
    let partition = r.u32("partition")?;
    r.end()?;
    Ok(OffsetKey { group: GroupName::new(group)?, topic: TopicName::new(topic)?, partition })
}

/// Encodes a `__dlq` key.
pub fn encode_dlq_key(key: &DlqKey) -> Vec<u8> {
    dlq_key(key.group.as_str(), &key.id)
}

/// Decodes a version-1 `__dlq` key; an error for any other bytes.
pub fn decode_dlq_key(key: &[u8]) -> Result<DlqKey, KeyError> {
    let mut r = Reader::new(key)?;
    let group = r.text("group")?;
    let id = r.text("dead-letter id")?;
    r.end()?;
    check_dead_letter_id(&id)?;
    Ok(DlqKey { group: GroupName::new(group)?, id })
}

/// Decodes an `__offsets` key of the old format, `group \0 topic \0 partition`, only when that
/// reading is the only one: exactly three fields, a valid group name, a valid topic name and a
/// partition in canonical decimal. Keys written for group names that held a NUL (accepted before
/// names were checked) are refused.
pub fn decode_legacy_offset_key(key: &[u8]) -> Result<OffsetKey, KeyError> {
    let text = std::str::from_utf8(key).map_err(|_| KeyError::Legacy("not UTF-8"))?;
    let fields: Vec<&str> = text.split('\0').collect();
    let [group, topic, partition] = fields[..] else {
        return Err(KeyError::Legacy("not exactly three NUL-separated fields"));
    };
    let canonical = !partition.is_empty()
        && partition.bytes().all(|b| b.is_ascii_digit())
        && (partition == "0" || !partition.starts_with('0'));
    let partition: u32 = match partition.parse() {
        Ok(p) if canonical => p,
        _ => return Err(KeyError::Legacy("the partition is not a decimal number below 2^32")),
    };
    Ok(OffsetKey { group: GroupName::new(group)?, topic: TopicName::new(topic)?, partition })
}

/// The `__offsets` key of names the broker has already validated.
pub(crate) fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 + group.len() + 2 + topic.len() + 4);
    out.extend_from_slice(&KEY_V1_PREFIX);
    push_field(&mut out, group.as_bytes());
    push_field(&mut out, topic.as_bytes());
    out.extend_from_slice(&partition.to_be_bytes());
    out
}

/// The `__dlq` key of a validated group's dead letter. Dead-letter ids are unique only within a
/// group: two groups refusing the same event must not share a record.
pub(crate) fn dlq_key(group: &str, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 2 + group.len() + 2 + id.len());
    out.extend_from_slice(&KEY_V1_PREFIX);
    push_field(&mut out, group.as_bytes());
    push_field(&mut out, id.as_bytes());
    out
}

fn check_dead_letter_id(id: &str) -> Result<(), KeyError> {
    if id.is_empty() {
        return Err(KeyError::DeadLetterId("it is empty"));
    }
    if id.len() > DEAD_LETTER_ID_BYTES_MAX {
        return Err(KeyError::DeadLetterId("it is longer than DEAD_LETTER_ID_BYTES_MAX"));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::DeadLetterId("only printable ASCII is allowed"));
    }
    Ok(())
}

/// Appends one length-prefixed field. Callers pass validated names and ids, all far below
/// 64 KiB; a longer field would be a bug, caught in debug builds, and saturates (an
/// undecodable key) rather than wrapping (a key that reads as another) in release builds.
fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(bytes.len() <= usize::from(u16::MAX), "key field of {} bytes", bytes.len());
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over a key's bytes; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(key: &'a [u8]) -> Result<Self, KeyError> {
        match key.strip_prefix(&KEY_V1_PREFIX[..]) {
            Some(rest) => Ok(Self { rest }),
            None => Err(KeyError::UnknownFormat),
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], KeyError> {
        if self.rest.len() < n {
            return Err(KeyError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn text(&mut self, field: &'static str) -> Result<String, KeyError> {
        let len = self.take(2, field)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let bytes = self.take(len, field)?;
        // Invalid UTF-8 is lossily converted; the name checks then refuse it by its charset.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, KeyError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn end(&self) -> Result<(), KeyError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(KeyError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,249}".prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn offset_keys_round_trip(g in name(), t in name(), p in any::<u32>()) {
            let key = OffsetKey {
                group: GroupName::new(g).unwrap(),
                topic: TopicName::new(t).unwrap(),
                partition: p,
            };
            prop_assert_eq!(decode_offset_key(&encode_offset_key(&key)), Ok(key));
        }

        #[test]
        fn dlq_keys_round_trip(g in name(), t in name(), p in any::<u32>(), o in any::<u64>()) {
            let key = DlqKey { group: GroupName::new(g).unwrap(), id: format!("{t}:{p}:{o}") };
            prop_assert_eq!(decode_dlq_key(&encode_dlq_key(&key)), Ok(key));
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_offset_key(&bytes);
            let _ = decode_dlq_key(&bytes);
            let _ = decode_legacy_offset_key(&bytes);
            let mut prefixed = KEY_V1_PREFIX.to_vec();
            prefixed.extend_from_slice(&bytes);
            let _ = decode_offset_key(&prefixed);
            let _ = decode_dlq_key(&prefixed);
        }

        #[test]
        fn no_old_format_key_of_valid_names_reads_as_a_new_one(g in name(), t in name(), p in any::<u32>()) {
            let old = format!("{g}\0{t}\0{p}").into_bytes();
            prop_assert!(decode_offset_key(&old).is_err());
            prop_assert!(decode_legacy_offset_key(&old).is_ok());
        }
    }

    #[test]
    fn a_key_written_for_a_group_name_with_a_nul_is_not_read_as_another_groups() {
        // `billing\0orders\00` seeking `x`: the old encoding read it as billing/orders/0.
        let old = b"billing\0orders\x000\0x\x000";
        assert!(decode_legacy_offset_key(old).is_err());
        assert!(decode_offset_key(old).is_err());
        let new = offset_key("billing", "orders", 0);
        assert_eq!(decode_offset_key(&new).unwrap().group.as_str(), "billing");
        for bad in [&b"g\0t\0"[..], b"g\0t\x0001", b"g\0t\0-1", b"g\0t\x004294967296", b"\0t\x000"]
        {
            assert!(decode_legacy_offset_key(bad).is_err(), "{bad:?}");
        }
    }
}
