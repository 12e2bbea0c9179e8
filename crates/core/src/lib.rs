//! Pure types shared by every Driftless crate: the event envelope, names, partitioning and the
//! clock.
//!
//! `driftless-core` does no IO and knows nothing about storage, HTTP or databases. Everything here is
//! deterministic given its inputs, except [`SystemClock`], which is the one door through which wall
//! time enters (tests replace it with [`ManualClock`]), and [`Secret`]'s `{ env }` / `{ file }`
//! forms, read once when a configuration is loaded. [`redact`] is the one function every crate
//! uses to keep credentials out of the texts it shows.
//!
//! ```
//! use driftless_core::{partition_for_key, TopicName};
//! let topic = TopicName::new("customers.v1").unwrap();
//! assert_eq!(topic.as_str(), "customers.v1");
//! // Placement is a pure function of the key and the partition count.
//! assert_eq!(partition_for_key(b"customer-42", 8), partition_for_key(b"customer-42", 8));
//! ```

mod clock;
mod event;
mod partitioning;
mod raw_event;
pub mod secret;
pub mod sql;
mod topic;

pub use clock::{civil_from_days, Clock, ManualClock, SystemClock};
pub use event::{
    check_base64, is_rfc3339, json_kind, pg_sequence, Event, InvalidEvent,
    EXTENSION_NAME_BYTES_MAX, NAMED_ATTRIBUTES, SPEC_VERSION,
};
pub use partitioning::{murmur2, partition_for_key};
pub use raw_event::RawEvent;
pub use secret::{redact, Secret, SecretError, REDACTED};
pub use topic::{InvalidTopicName, TopicName, TOPIC_NAME_BYTES_MAX};
