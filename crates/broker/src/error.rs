//! Errors of the broker. Each names what is at fault (topic, event index, group, member,
//! delivery) so the HTTP layer can answer with a problem document that points at it.

use driftless_core::{InvalidEvent, InvalidTopicName};
use driftless_log::LogError;

use crate::group_name::InvalidGroupName;
use crate::topics::PartialProduce;

/// Everything the broker can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The topic does not exist.
    #[error("topic {0} does not exist; create it first (driftless topic create {0})")]
    UnknownTopic(String),
    /// The topic already exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// Names starting with `__` belong to Driftless's internal topics.
    #[error("topic names starting with \"__\" are reserved for internal topics: {0}")]
    ReservedTopic(String),
    /// The topic name is malformed.
    #[error(transparent)]
    InvalidTopicName(#[from] InvalidTopicName),
    /// An event in a produce request is not a valid CloudEvent.
    #[error("event {index} of the request: {source}; no event of the request was appended")]
    InvalidEvent {
        /// Position of the event in the request, from 0.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: InvalidEvent,
    },
    /// A request carries more events than allowed.
    #[error("a produce request holds at most {max} events; this one has {events}")]
    TooManyEvents {
        /// Events in the request.
        events: usize,
        /// The limit `produce_events_max`.
        max: usize,
    },
    /// An event is larger than the topic's `record_bytes_max` once stored (its placement key
    /// plus its JSON text). Checked for every event before anything is written.
    #[error(
        "event {index} of the request is {bytes} bytes as stored (placement key plus JSON text); \
         the topic's record_bytes_max is {max}; no event of the request was appended"
    )]
    EventTooLarge {
        /// Position of the event in the request, from 0.
        index: usize,
        /// Its stored size (key plus value).
        bytes: usize,
        /// The topic's `record_bytes_max`.
        max: usize,
    },
    /// The events of a request that go to one partition are larger together than the topic's
    /// `batch_bytes_max` (they are appended as one batch, which is what makes them atomic).
    #[error(
        "the request's {events} events for partition {partition} take {bytes} bytes on disk, over \
         the topic's batch_bytes_max = {max}; no event of the request was appended: send them \
         in smaller requests"
    )]
    BatchTooLarge {
        /// The partition.
        partition: u32,
        /// Events of the request placed on it.
        events: usize,
        /// Their encoded size.
        bytes: usize,
        /// The topic's `batch_bytes_max`.
        max: usize,
    },
    /// A produce failed after some of its events were already durable (an IO error, a full
    /// disk or a poisoned partition on one partition after others were written). The error
    /// lists exactly which events are durable and which are not.
    #[error("{0}")]
    PartiallyDurable(Box<PartialProduce>),
    /// A server-wide limit (`topics_max`, `partitions_total_max`) would be exceeded.
    #[error(
        "limit reached: {limit} = {max}, {in_use} in use, this request needs {requested} more; \
         delete unused topics or raise {limit} in the [broker] table of the server's configuration"
    )]
    CapacityLimit {
        /// The limit's setting name.
        limit: &'static str,
        /// Its value.
        max: usize,
        /// How much of it is used now.
        in_use: usize,
        /// How much the refused request needed.
        requested: usize,
    },
    /// A setting is out of range.
    #[error("invalid setting {field}: {reason}")]
    InvalidSetting {
        /// The setting's name.
        field: &'static str,
        /// What is allowed.
        reason: String,
    },
    /// The consumer group name is malformed.
    #[error(transparent)]
    InvalidGroupName(#[from] InvalidGroupName),
    /// A dead letter could not be written to `__dlq`: the event stays pending in its group.
    #[error(
        "could not write dead letter {id} of consumer group {group} to the dead-letter queue: \
         {source}; the event stays pending and is delivered again after a backoff (nothing was \
         lost)"
    )]
    DeadLetterNotWritten {
        /// Group name.
        group: String,
        /// The dead letter's id (`topic:partition:offset`).
        id: String,
        /// Why the write failed.
        #[source]
        source: Box<BrokerError>,
    },
    /// No such consumer group.
    #[error("consumer group {0} does not exist")]
    UnknownGroup(String),
    /// The group still has members, so it cannot be deleted.
    #[error(
        "consumer group {group} has {members} member(s); stop its consumers (or the sink) first"
    )]
    GroupInUse {
        /// Group name.
        group: String,
        /// Members in it.
        members: usize,
    },
    /// No such member (it left, or timed out and was removed).
    #[error("member {member} is not in group {group}: it left or missed its session timeout; join again")]
    UnknownMember {
        /// Group name.
        group: String,
        /// Member id.
        member: String,
    },
    /// The delivery is not pending for this group (already acknowledged, or malformed id).
    #[error("delivery {0} is not pending in this group: already acknowledged, dead-lettered, or never delivered")]
    UnknownDelivery(String),
    /// A limit on groups or members was reached.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// A seek target outside the partition.
    #[error("cannot seek {topic}/{partition} to offset {offset}: the partition holds offsets {start} to {end}")]
    InvalidSeek {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Requested offset.
        offset: u64,
        /// First stored offset.
        start: u64,
        /// One past the last offset.
        end: u64,
    },
    /// No such dead-letter entry.
    #[error("dead-letter entry {0} does not exist in this group; list the group's dead letters (`driftless dlq list GROUP`) for their ids")]
    UnknownDeadLetter(String),
    /// An internal topic (`__offsets`, `__dlq`, …) refuses writes after a failed write or fsync.
    #[error(
        "internal topic {topic} refuses writes after a failed write or fsync ({cause}); until \
         Driftless restarts, {consequence} and /readyz reports not ready. Check the disk \
         (space, errors), then restart Driftless: recovery verifies the log and writes resume"
    )]
    InternalTopicPoisoned {
        /// The internal topic.
        topic: &'static str,
        /// What fails meanwhile, for the operator.
        consequence: &'static str,
        /// The first failure.
        cause: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Internal state could not be encoded or decoded.
    #[error("internal topic {topic} holds an unreadable record at offset {offset}: {reason}")]
    CorruptState {
        /// The internal topic.
        topic: &'static str,
        /// The record's offset.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

/// Shorthand for broker results.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
