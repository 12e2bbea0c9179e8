//! The broker: topics with idempotent produce, consumer groups with at-least-once delivery,
//! per-key retries, a dead-letter queue and replay — on top of the embedded log.
//!
//! ```
//! use driftless_broker::{Broker, BrokerConfig, TopicSpec};
//! use driftless_core::Event;
//! let dir = tempfile::tempdir().unwrap();
//! let broker = Broker::open(dir.path(), BrokerConfig::default()).unwrap();
//! broker.create_topic("orders", TopicSpec::default()).unwrap();
//! let mut e = Event::new("order-1-created", "/svc/orders", "order.created.v1");
//! e.subject = Some("order-1".into());
//! let first = broker.produce("orders", vec![e.clone()]).unwrap();
//! let again = broker.produce("orders", vec![e]).unwrap(); // a retry after a lost response
//! assert!(again[0].duplicate && again[0].offset == first[0].offset);
//! let member = broker.join("billing", &["orders".to_string()], None).unwrap();
//! let batch = broker.fetch("billing", &member.member_id, 10).unwrap();
//! broker.ack("billing", &[batch.deliveries[0].delivery_id.clone()]).unwrap();
//! ```
//!
//! The broker's API is synchronous: appends block until durable. Async callers run it on a
//! blocking pool and wait for new work with [`Broker::listen`], which fires on every produce,
//! acknowledgement, rejection and membership change. It knows nothing about HTTP.
//!
//! Guarantees (DESIGN.md §3): a produce is acknowledged only when durable; a re-sent id inside
//! the topic's dedup window returns the original position and appends nothing; every event is
//! delivered at least once to each group; a failing event parks only its key and goes to the
//! group's dead-letter queue after `max_attempts`; groups can seek to earliest, latest, an offset
//! or a time.

mod error;
mod group_name;
mod groups;
pub mod keys;
mod state;
mod topics;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use driftless_core::{Clock, Event, RawEvent, SystemClock, TopicName};
use driftless_log::{Log, LogOptions, PartitionStats};
use event_listener::Event as Notify;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use error::{BrokerError, Result};
/// What [`Broker::listen`] returns: a future that completes at the next notification.
pub use event_listener::EventListener;
pub use group_name::{GroupName, InvalidGroupName, GROUP_NAME_BYTES_MAX};
pub use groups::{DeadLetter, DeadLetterState, Delivery, ERRORS_KEPT_MAX, ERROR_BYTES_MAX};
pub use topics::{
    DurableEvent, NotDurableEvent, PartialProduce, Produced, TopicSpec, DEDUP_WINDOW_MS_MAX,
};

use groups::{
    backoff_ms, bound_errors, parse_delivery_id, push_error, Cursor, Group, Member, Pending,
    PendingState,
};
use state::KvTopic;
pub use state::{
    AUDIT as AUDIT_TOPIC, AUDIT_RECORD_BYTES_MAX, AUDIT_RETENTION_BYTES, AUDIT_RETENTION_MS,
    AUDIT_SEGMENT_BYTES_MAX,
};
use topics::TopicState;

/// Limits and delivery settings. Every limit has its unit in its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Events in one produce request.
    pub produce_events_max: usize,
    /// Event ids remembered per topic for deduplication.
    pub dedup_ids_max: usize,
    /// Consumer groups.
    pub groups_max: usize,
    /// Members per group.
    pub members_max: usize,
    /// Unacknowledged deliveries per member.
    pub inflight_per_member_max: usize,
    /// Events read ahead and not yet done, per group and partition.
    pub pending_per_partition_max: usize,
    /// Deliveries of one event before it goes to the dead-letter queue.
    pub max_attempts: u32,
    /// First retry delay after a rejection; doubles per attempt.
    pub backoff_initial_ms: u64,
    /// Longest retry delay.
    pub backoff_max_ms: u64,
    /// A delivery not acknowledged within this is delivered again.
    pub visibility_timeout_ms: u64,
    /// A member that neither fetches nor heartbeats for this long is removed.
    pub session_timeout_ms: u64,
    /// User topics, server-wide.
    pub topics_max: usize,
    /// Partitions of all user topics together, server-wide.
    pub partitions_total_max: usize,
}

/// Default `topics_max`. A topic costs a directory, a `topic.json`, a `__topics` record, its dedup
/// window (bounded by `dedup_ids_max`) and its partitions; 10,000 topics is far more than one
/// node's use cases need while keeping `topic list` and metrics answers a few MB at most.
pub const TOPICS_MAX_DEFAULT: usize = 10_000;
/// Default `partitions_total_max`. A partition's steady cost is a few KiB of memory plus its
/// active segment's files; the log keeps only a bounded number of files open, so the open-file
/// limit does not bound partitions, and the acceptance target is 20,000+ partitions on one
/// node. 100,000 leaves five times that headroom, while still stopping a runaway script before
/// the directory count and start-up recovery (which visits every partition) get unreasonable.
pub const PARTITIONS_TOTAL_MAX_DEFAULT: usize = 100_000;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            produce_events_max: 10_000,
            dedup_ids_max: 1_000_000,
            groups_max: 1_000,
            members_max: 100,
            inflight_per_member_max: 1_000,
            pending_per_partition_max: 10_000,
            max_attempts: 5,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            visibility_timeout_ms: 30_000,
            session_timeout_ms: 30_000,
            topics_max: TOPICS_MAX_DEFAULT,
            partitions_total_max: PARTITIONS_TOTAL_MAX_DEFAULT,
        }
    }
}

// ---- consumer-group settings: ranges and limits ----------------------------------------------

/// Longest duration setting of a group (session and visibility timeouts, retry backoff), whether
/// from the configuration or a client: one day. Longer is a mistake, and the bound keeps deadline
/// arithmetic (`now + timeout`) far from overflow.
pub const GROUP_DURATION_MS_MAX: u64 = 24 * 3600 * 1000;
/// Largest `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;

impl BrokerConfig {
    /// Checks the consumer-group settings' ranges (`groups_max`, `members_max`, the in-flight and
    /// pending limits, attempts, backoff and timeouts).
    pub fn check_group_settings(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| -> Result<()> {
            Err(BrokerError::InvalidSetting { field, reason })
        };
        let at_least_one = [
            ("groups_max", self.groups_max),
            ("members_max", self.members_max),
            ("inflight_per_member_max", self.inflight_per_member_max),
            ("pending_per_partition_max", self.pending_per_partition_max),
        ];
        for (field, value) in at_least_one {
            if value == 0 {
                return bad(field, "must be at least 1, got 0".into());
            }
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            return bad(
                "max_attempts",
                format!("must be 1 to {MAX_ATTEMPTS_LIMIT}, got {}", self.max_attempts),
            );
        }
        let durations = [
            ("backoff_max_ms", self.backoff_max_ms),
            ("visibility_timeout_ms", self.visibility_timeout_ms),
            ("session_timeout_ms", self.session_timeout_ms),
        ];
        for (field, value) in durations {
            check_duration_ms(field, value)?;
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            return bad(
                "backoff_initial_ms",
                format!(
                    "must be 1 to backoff_max_ms ({}), got {}",
                    self.backoff_max_ms, self.backoff_initial_ms
                ),
            );
        }
        Ok(())
    }
}

/// Checks a group duration (from the configuration or a client) is 1 to
/// [`GROUP_DURATION_MS_MAX`] ms; returns it as an `i64` for deadline arithmetic.
fn check_duration_ms(field: &'static str, value: u64) -> Result<i64> {
    match i64::try_from(value) {
        Ok(v) if (1..=GROUP_DURATION_MS_MAX).contains(&value) => Ok(v),
        _ => Err(BrokerError::InvalidSetting {
            field,
            reason: format!("must be 1 to {GROUP_DURATION_MS_MAX} ms (one day), got {value}"),
        }),
    }
}

/// A partition that refuses writes until a restart (see [`Broker::poisoned_partitions`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoisonedPartition {
    /// Topic (internal ones, such as `__offsets`, included).
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The first failure.
    pub cause: String,
}

// ---- end of consumer-group settings -----------------------------------------------------------

/// A member's place in its group after joining or a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The member's id, to pass on every call.
    pub member_id: String,
    /// Increases on every rebalance.
    pub generation: u64,
    /// Partitions this member consumes, as (topic, partition).
    pub assignments: Vec<(String, u32)>,
}

/// The result of a fetch; `E` is the events' form (see [`Delivery`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fetched<E = serde_json::Value> {
    /// Deliveries, in per-partition offset order.
    pub deliveries: Vec<Delivery<E>>,
    /// The group's generation; a change means the assignment changed.
    pub generation: u64,
    /// When a backed-off or in-flight event of this member becomes deliverable, if sooner than
    /// new data: long-polling callers wait at most until then.
    pub next_due_ms: Option<i64>,
}

/// Where to move a group's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeekTarget {
    /// The oldest stored event.
    Earliest,
    /// After the newest event.
    Latest,
    /// A given offset.
    Offset(u64),
    /// The first event appended at or after this time (ms since the epoch).
    TimeMs(i64),
}

/// One partition as a group sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Member consuming it, if any.
    pub member: Option<String>,
    /// Every offset below this is done.
    pub committed: u64,
    /// One past the newest event.
    pub end_offset: u64,
    /// `end_offset - committed`.
    pub lag_events: u64,
    /// Age of the oldest event not done, in ms (0 when caught up).
    pub lag_ms: u64,
    /// Deliveries awaiting acknowledgement.
    pub inflight: usize,
    /// Keys waiting for a retry of their first event.
    pub parked_keys: usize,
}

/// A group's state, for `driftless group describe` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// Current generation.
    pub generation: u64,
    /// Members and their assignments.
    pub members: Vec<Membership>,
    /// Partitions of the subscribed topics.
    pub partitions: Vec<GroupPartition>,
    /// Dead letters in the group's queue.
    pub dead_letters: usize,
}

/// A topic's settings and partition figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Its settings.
    pub spec: TopicSpec,
    /// Per-partition figures, in partition order.
    pub partitions: Vec<PartitionStats>,
}

/// The broker. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Broker {
    log: Log,
    clock: Arc<dyn Clock>,
    config: BrokerConfig,
    topics: RwLock<BTreeMap<String, Arc<TopicState>>>,
    topics_kv: KvTopic,
    offsets_kv: KvTopic,
    dlq_kv: KvTopic,
    connectors_kv: KvTopic,
    /// Connector positions, loaded at open and kept current by [`Broker::put_connector_state`].
    connectors: Mutex<BTreeMap<String, Bytes>>,
    /// Committed offsets loaded at open, for groups not yet seen since.
    persisted_offsets: Mutex<BTreeMap<(String, String, u32), u64>>,
    /// Dead letters loaded at open, by group.
    persisted_dead: Mutex<BTreeMap<String, BTreeMap<String, DeadLetter>>>,
    groups: Mutex<BTreeMap<String, Arc<GroupHandle>>>,
    activity: Notify,
    /// Dead letters that could not be written (their events stayed pending), since open.
    dead_letter_failures: AtomicU64,
    /// The audit trail, `__audit` (see [`Broker::append_audit`]).
    audit: Arc<driftless_log::Partition>,
    /// Audit records that could not be written, since open.
    audit_failures: AtomicU64,
}

/// Most audit records one [`Broker::audit_newest`] call returns.
pub const AUDIT_READ_RECORDS_MAX: usize = 1_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    /// Opens the broker on a data directory with the system clock.
    pub fn open(dir: &Path, config: BrokerConfig) -> Result<Self> {
        Self::open_with(LogOptions::new(dir), Arc::new(SystemClock), config)
    }

    /// Opens the broker with explicit log options and clock (tests control time this way).
    pub fn open_with(
        options: LogOptions,
        clock: Arc<dyn Clock>,
        config: BrokerConfig,
    ) -> Result<Self> {
        config.check_group_settings()?;
        let log = Log::open(LogOptions { clock: Arc::clone(&clock), ..options })?;
        let topics_kv = KvTopic::open(&log, state::TOPICS, state::EVENT_RECORD_BYTES_MAX)?;
        let offsets_kv = KvTopic::open(&log, state::OFFSETS, state::EVENT_RECORD_BYTES_MAX)?;
        let dlq_kv = KvTopic::open(&log, state::DLQ, state::DLQ_RECORD_BYTES_MAX)?;
        let connectors_kv = KvTopic::open(&log, state::CONNECTORS, state::EVENT_RECORD_BYTES_MAX)?;
        let audit = state::open_audit(&log)?;
        let mut connectors = BTreeMap::new();
        for (key, (_, value)) in connectors_kv.load()? {
            if let Some(v) = value {
                connectors.insert(String::from_utf8_lossy(&key).into_owned(), v);
            }
        }
        let mut specs = BTreeMap::new();
        for (key, (offset, value)) in topics_kv.load()? {
            if let Some(v) = value {
                let spec: TopicSpec = state::decode(state::TOPICS, offset, &v)?;
                specs.insert(String::from_utf8_lossy(&key).into_owned(), spec);
            }
        }
        let now = clock.now_ms();
        let mut topics = BTreeMap::new();
        for topic in log.topics() {
            let name = topic.name().to_string();
            if topic.name().is_internal() {
                continue;
            }
            let mut spec = specs.remove(&name).unwrap_or_else(|| TopicSpec {
                partitions: topic.config().partitions,
                ..TopicSpec::default()
            });
            // Both are written at creation; the log's copy covers a `__topics` record lost or
            // written by a version without owners.
            if spec.owner.is_none() {
                spec.owner.clone_from(&topic.config().owner);
            }
            topics
                .insert(name, Arc::new(TopicState::open(topic, spec, now, config.dedup_ids_max)?));
        }
        let persisted_offsets = load_offsets(&offsets_kv)?;
        let persisted_dead = load_dead_letters(&dlq_kv)?;
        Ok(Self {
            log,
            clock,
            config,
            topics: RwLock::new(topics),
            topics_kv,
            offsets_kv,
            dlq_kv,
            connectors_kv,
            connectors: Mutex::new(connectors),
            persisted_offsets: Mutex::new(persisted_offsets),
            persisted_dead: Mutex::new(persisted_dead),
            groups: Mutex::new(BTreeMap::new()),
            activity: Notify::new(),
            dead_letter_failures: AtomicU64::new(0),
            audit,
            audit_failures: AtomicU64::new(0),
        })
    }

    /// Appends one audit record (opaque bytes, at most [`AUDIT_RECORD_BYTES_MAX`]) to
    /// `__audit`, durably: it is fsynced before this returns. A failure is counted (see
    /// [`Broker::audit_failures`]) and returned; the caller logs it. Nothing else writes to
    /// `__audit`: clients cannot produce to internal topics.
    pub fn append_audit(&self, record: &[u8]) -> Result<()> {
        match self.audit.append(&[driftless_log::NewRecord::unkeyed(record)]) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.audit_failures.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    driftless_log::LogError::Poisoned { cause, .. } => {
                        BrokerError::InternalTopicPoisoned {
                            topic: state::AUDIT,
                            consequence: "administrative actions are not recorded in the audit \
                                          trail",
                            cause: cause.to_string(),
                        }
                    }
                    other => other.into(),
                })
            }
        }
    }

    /// Audit records that could not be written since open (each was logged by the caller).
    pub fn audit_failures(&self) -> u64 {
        self.audit_failures.load(Ordering::Relaxed)
    }

    /// The newest `limit` audit records (at most [`AUDIT_READ_RECORDS_MAX`]), newest first.
    pub fn audit_newest(&self, limit: usize) -> Result<Vec<Bytes>> {
        let limit = limit.min(AUDIT_READ_RECORDS_MAX);
        let end = self.audit.end_offset();
        let from = end.saturating_sub(limit as u64).max(self.audit.start_offset());
        let mut out = Vec::with_capacity(limit);
        let mut next = from;
        while next < end && out.len() < limit {
            let room = limit - out.len();
            let batch = self.audit.read(next, room, room.saturating_mul(AUDIT_RECORD_BYTES_MAX))?;
            out.extend(batch.records.into_iter().filter_map(|r| r.value));
            if batch.next_offset <= next {
                break;
            }
            next = batch.next_offset;
        }
        out.reverse();
        Ok(out)
    }

    /// Every partition (internal topics included) that refuses writes after a failed write or
    /// fsync, with the first failure. Only a restart recovers one (recovery verifies the files);
    /// while any is listed the server is not ready: a poisoned `__offsets` fails every group's
    /// acknowledgements, a poisoned `__dlq` every dead-lettering.
    pub fn poisoned_partitions(&self) -> Vec<PoisonedPartition> {
        let mut out = Vec::new();
        for topic in self.log.topics() {
            for p in topic.partitions() {
                if let Some(cause) = p.poisoned() {
                    out.push(PoisonedPartition {
                        topic: topic.name().to_string(),
                        partition: p.id(),
                        cause: cause.to_string(),
                    });
                }
            }
        }
        out
    }

    /// Dead letters that could not be written since open (their events stayed pending and are
    /// delivered again after a backoff; each failure is logged).
    pub fn dead_letter_failures(&self) -> u64 {
        self.dead_letter_failures.load(Ordering::Relaxed)
    }

    /// The underlying log (for metrics and maintenance).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// A listener that fires on the next event that may let `group` fetch something new: a
    /// produce to a topic it consumes, an acknowledgement, rejection, seek or dead-letter retry
    /// in it, a membership change in it, or a topic deletion. Activity in other groups and
    /// produces to other topics do not wake it. For a group that does not exist (yet), it fires
    /// when any group is created or deleted. Create it, re-check, then await it (or
    /// `wait_timeout` it).
    pub fn listen(&self, group: &str) -> EventListener {
        match lock(&self.groups).get(group) {
            Some(gh) => gh.activity.listen(),
            None => self.activity.listen(),
        }
    }

    /// Wakes listeners of no particular group (groups being created or deleted).
    fn notify(&self) {
        self.activity.notify(usize::MAX);
    }

    /// Wakes the listeners of every group that has consumed `topic`.
    fn notify_topic(&self, topic: &str) {
        for gh in lock(&self.groups).values() {
            if lock(&gh.topics).contains(topic) {
                gh.notify();
            }
        }
    }

    /// Wakes every listener.
    fn notify_all(&self) {
        for gh in lock(&self.groups).values() {
            gh.notify();
        }
        self.notify();
    }

    fn topic_state(&self, name: &str) -> Result<Arc<TopicState>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, spec: TopicSpec) -> Result<TopicDescription> {
        let topic_name = TopicName::new(name)?;
        if topic_name.is_internal() {
            return Err(BrokerError::ReservedTopic(name.to_string()));
        }
        let config = topics::log_config(&spec)?;
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        self.check_capacity(&topics, config.partitions)?;
        // Settings first: a crash between the two leaves a spec without a topic, which is
        // ignored, rather than a topic with default settings.
        self.topics_kv.put(name.as_bytes(), &state::encode(&spec))?;
        let topic = self.log.create_topic(&topic_name, config).map_err(|e| match e {
            driftless_log::LogError::TopicExists(n) => BrokerError::TopicExists(n),
            other => other.into(),
        })?;
        let state = Arc::new(TopicState::open(
            topic,
            spec,
            self.clock.now_ms(),
            self.config.dedup_ids_max,
        )?);
        topics.insert(name.to_string(), Arc::clone(&state));
        Ok(describe_topic(name, &state))
    }

    /// Refuses a new topic of `partitions` partitions beyond `topics_max` or
    /// `partitions_total_max` (checked under the topics lock, so concurrent creations cannot
    /// both slip under a limit).
    fn check_capacity(
        &self,
        topics: &BTreeMap<String, Arc<TopicState>>,
        partitions: u32,
    ) -> Result<()> {
        let c = &self.config;
        if topics.len() >= c.topics_max {
            return Err(BrokerError::CapacityLimit {
                limit: "topics_max",
                max: c.topics_max,
                in_use: topics.len(),
                requested: 1,
            });
        }
        let in_use: usize = topics.values().map(|t| t.topic.partitions().len()).sum();
        let requested = usize::try_from(partitions).unwrap_or(usize::MAX);
        if in_use.saturating_add(requested) > c.partitions_total_max {
            return Err(BrokerError::CapacityLimit {
                limit: "partitions_total_max",
                max: c.partitions_total_max,
                in_use,
                requested,
            });
        }
        Ok(())
    }

    /// Every user topic.
    pub fn list_topics(&self) -> Vec<TopicDescription> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.iter().map(|(n, s)| describe_topic(n, s)).collect()
    }

    /// The principal owning `name`, if it has one (see [`TopicSpec::owner`]); reads no
    /// partition figures, so it is cheap enough for every produce.
    pub fn topic_owner(&self, name: &str) -> Result<Option<String>> {
        Ok(self.topic_state(name)?.spec.owner.clone())
    }

    /// One topic's settings and figures.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        Ok(describe_topic(name, &*self.topic_state(name)?))
    }

    /// Deletes a topic and its events. Groups stop receiving from it.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let topic_name = TopicName::new(name)?;
        if topic_name.is_internal() {
            return Err(BrokerError::ReservedTopic(name.to_string()));
        }
        let removed = self.topics.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        if removed.is_none() {
            return Err(BrokerError::UnknownTopic(name.to_string()));
        }
        self.log.delete_topic(&topic_name)?;
        self.topics_kv.delete(name.as_bytes())?;
        for group in lock(&self.groups).values() {
            let mut g = lock(&group.state);
            g.cursors.retain(|(t, _), _| t != name);
            for m in g.members.values_mut() {
                m.topics.remove(name);
            }
            g.rebalance();
        }
        self.notify_all();
        Ok(())
    }

    /// Validates and appends `events` to `topic`, deduplicating by id. Returns one result per
    /// event, in order. Nothing is appended if any event is invalid or breaks a limit
    /// ([`BrokerError::EventTooLarge`], [`BrokerError::BatchTooLarge`]) or a target partition is
    /// poisoned; a failure after some partitions were written is
    /// [`BrokerError::PartiallyDurable`], listing which events are durable.
    pub fn produce(&self, topic: &str, events: Vec<Event>) -> Result<Vec<Produced>> {
        self.check_event_count(events.len())?;
        let raw = events
            .iter()
            .enumerate()
            .map(|(index, e)| {
                RawEvent::from_event(e)
                    .map_err(|source| BrokerError::InvalidEvent { index, source })
            })
            .collect::<Result<Vec<_>>>()?;
        self.produce_raw(topic, raw)
    }

    /// Like [`produce`](Self::produce), for events already validated as JSON text (the HTTP
    /// path): they are stored as that text, with no parse into a tree and no re-serialisation.
    pub fn produce_raw(&self, topic: &str, events: Vec<RawEvent>) -> Result<Vec<Produced>> {
        self.check_event_count(events.len())?;
        let state = self.topic_state(topic)?;
        let produced = state.produce(&events, &*self.clock, self.config.dedup_ids_max)?;
        self.notify_topic(topic);
        Ok(produced)
    }

    fn check_event_count(&self, events: usize) -> Result<()> {
        let max = self.config.produce_events_max;
        if events > max {
            return Err(BrokerError::TooManyEvents { events, max });
        }
        Ok(())
    }

    /// The durable position of the connector (source or sink) called `name`, as it last stored
    /// it with [`Broker::put_connector_state`]; `None` if it never did.
    pub fn connector_state(&self, name: &str) -> Option<Bytes> {
        lock(&self.connectors).get(name).cloned()
    }

    /// Stores a connector's position durably (fsynced before this returns), replacing the
    /// previous one. The bytes are the connector's own format.
    pub fn put_connector_state(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut connectors = lock(&self.connectors);
        self.connectors_kv.put(name.as_bytes(), value)?;
        connectors.insert(name.to_string(), Bytes::copy_from_slice(value));
        Ok(())
    }

    /// The next offset of every partition of `topic`, in partition order: where the next
    /// append to each will land. Connectors record these before an append whose outcome a
    /// crash could leave unknown, and later read from them with [`Broker::event_ids_since`].
    pub fn end_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        let state = self.topic_state(topic)?;
        Ok(state.topic.partitions().iter().map(|p| p.end_offset()).collect())
    }

    /// The ids of the events stored in `topic` at or after `from[p]` in each partition `p`
    /// (offsets from [`Broker::end_offsets`]), at most `ids_max` of them; an error if there
    /// are more, so a caller never works from a silently truncated set.
    pub fn event_ids_since(
        &self,
        topic: &str,
        from: &[u64],
        ids_max: usize,
    ) -> Result<std::collections::HashSet<String>> {
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: String,
        }
        let state = self.topic_state(topic)?;
        let mut ids = std::collections::HashSet::new();
        for (p, partition) in state.topic.partitions().iter().enumerate() {
            let mut next = from.get(p).copied().unwrap_or(0).max(partition.start_offset());
            while next < partition.end_offset() {
                let batch = partition.read(next, 10_000, 8 << 20)?;
                for r in &batch.records {
                    let Some(value) = &r.value else { continue };
                    if let Ok(e) = serde_json::from_slice::<IdOnly>(value) {
                        ids.insert(e.id);
                    }
                }
                if ids.len() > ids_max {
                    return Err(BrokerError::LimitReached(format!(
                        "more than {ids_max} events were appended to `{topic}` since the \
                         recorded offsets"
                    )));
                }
                if batch.next_offset <= next {
                    break;
                }
                next = batch.next_offset;
            }
        }
        Ok(ids)
    }

    /// The group called `name`. Groups with persisted state (committed offsets or dead letters)
    /// exist after a restart even before a member joins, with cursors at their committed offsets.
    ///
    /// Every group entry point comes through here, so this is where names are checked: a name
    /// that is not a [`GroupName`] is refused before it reaches any state or key.
    fn group(&self, name: &str, create: bool) -> Result<Arc<GroupHandle>> {
        if let Some(reason) = GroupName::check(name) {
            return Err(InvalidGroupName { name: name.to_string(), reason }.into());
        }
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get(name) {
            return Ok(Arc::clone(g));
        }
        let persisted_topics: BTreeSet<String> = lock(&self.persisted_offsets)
            .keys()
            .filter(|(g, _, _)| g == name)
            .map(|(_, t, _)| t.clone())
            .collect();
        let has_dead = lock(&self.persisted_dead).contains_key(name);
        if !create && persisted_topics.is_empty() && !has_dead {
            return Err(BrokerError::UnknownGroup(name.to_string()));
        }
        // `groups_max` counts every group that exists: loaded ones and those with persisted
        // state not loaded since the restart. Loading a persisted group is never refused (a
        // lowered limit must not hide existing offsets); creating a new one is.
        if persisted_topics.is_empty() && !has_dead {
            let known = self.known_groups(&groups);
            if known >= self.config.groups_max {
                return Err(BrokerError::LimitReached(format!(
                    "{known} consumer groups exist and groups_max = {}: delete unused groups \
                     (driftless group delete <group>) or raise [broker] groups_max",
                    self.config.groups_max
                )));
            }
        }
        let dead = lock(&self.persisted_dead).remove(name).unwrap_or_default();
        let mut group = Group { dead, ..Group::default() };
        for topic in persisted_topics {
            // A topic deleted since simply has no cursors.
            if self.topic_state(&topic).is_ok() {
                self.ensure_cursors(name, &mut group, &topic)?;
            }
        }
        let topics = group.cursors.keys().map(|(t, _)| t.clone()).collect();
        let g = Arc::new(GroupHandle {
            state: Mutex::new(group),
            commits: Mutex::new(()),
            activity: Notify::new(),
            topics: Mutex::new(topics),
        });
        groups.insert(name.to_string(), Arc::clone(&g));
        drop(groups);
        // Listeners of a group that did not exist wait on the broker-wide event.
        self.notify();
        Ok(g)
    }

    /// How many groups exist: loaded, or with persisted offsets or dead letters.
    fn known_groups(&self, loaded: &BTreeMap<String, Arc<GroupHandle>>) -> usize {
        let mut names: BTreeSet<&str> = loaded.keys().map(String::as_str).collect();
        let dead = lock(&self.persisted_dead);
        names.extend(dead.keys().map(String::as_str));
        let offsets = lock(&self.persisted_offsets);
        names.extend(offsets.keys().map(|(g, _, _)| g.as_str()));
        names.len()
    }

    /// Adds cursors for every partition of `topic` the group does not have yet, starting at the
    /// persisted committed offset or the oldest stored event; re-queues dead letters that were
    /// being retried.
    fn ensure_cursors(&self, group: &str, g: &mut Group, topic: &str) -> Result<()> {
        let state = self.topic_state(topic)?;
        let persisted = lock(&self.persisted_offsets);
        for p in state.topic.partitions() {
            let tp = (topic.to_string(), p.id());
            if g.cursors.contains_key(&tp) {
                continue;
            }
            let start = persisted
                .get(&(group.to_string(), topic.to_string(), p.id()))
                .copied()
                .unwrap_or_else(|| p.start_offset())
                .max(p.start_offset());
            g.cursors.insert(tp, Cursor::new(start));
        }
        drop(persisted);
        let retrying: Vec<DeadLetter> = g
            .dead
            .values()
            .filter(|d| d.topic == topic && d.state == DeadLetterState::Retrying)
            .cloned()
            .collect();
        for d in retrying {
            requeue(g, &d);
        }
        Ok(())
    }

    fn membership(g: &Group, member: &str) -> Membership {
        Membership {
            member_id: member.to_string(),
            generation: g.generation,
            assignments: g.assigned_to(member),
        }
    }

    /// Removes members that missed their session timeout; returns whether any did.
    fn expire_members(&self, g: &mut Group) -> bool {
        let now = self.clock.now_ms();
        let before = g.members.len();
        // Timeouts are checked to be at most a day on the way in; the saturating arithmetic
        // keeps a clock jump from wrapping.
        g.members.retain(|_, m| {
            now.saturating_sub(m.last_seen_ms)
                <= i64::try_from(m.session_timeout_ms).unwrap_or(i64::MAX)
        });
        if g.members.len() != before {
            g.rebalance();
            return true;
        }
        false
    }

    /// Joins `group` as a new member consuming `topics`; the group rebalances.
    pub fn join(
        &self,
        group: &str,
        topics: &[String],
        session_timeout_ms: Option<u64>,
    ) -> Result<Membership> {
        if topics.is_empty() {
            return Err(BrokerError::InvalidSetting {
                field: "topics",
                reason: "name at least one topic".into(),
            });
        }
        let session_timeout_ms = session_timeout_ms.unwrap_or(self.config.session_timeout_ms);
        check_duration_ms("session_timeout_ms", session_timeout_ms)?;
        for t in topics {
            self.topic_state(t)?;
        }
        let gh = self.group(group, true)?;
        let mut g = lock(&gh.state);
        self.expire_members(&mut g);
        if g.members.len() >= self.config.members_max {
            return Err(BrokerError::LimitReached(format!(
                "group {group} has members_max = {} members",
                self.config.members_max
            )));
        }
        for t in topics {
            self.ensure_cursors(group, &mut g, t)?;
        }
        lock(&gh.topics).extend(topics.iter().cloned());
        let member_id = format!("m-{:016x}", rand::rng().random::<u64>());
        let member = Member {
            topics: topics.iter().cloned().collect::<BTreeSet<_>>(),
            last_seen_ms: self.clock.now_ms(),
            session_timeout_ms,
        };
        g.members.insert(member_id.clone(), member);
        g.rebalance();
        let m = Self::membership(&g, &member_id);
        drop(g);
        gh.notify();
        Ok(m)
    }

    /// Leaves the group; the member's unacknowledged deliveries go to the remaining members.
    pub fn leave(&self, group: &str, member: &str) -> Result<()> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        if g.members.remove(member).is_none() {
            return Err(BrokerError::UnknownMember { group: group.into(), member: member.into() });
        }
        g.rebalance();
        drop(g);
        gh.notify();
        Ok(())
    }

    /// Keeps a member alive and tells it its current assignment.
    pub fn heartbeat(&self, group: &str, member: &str) -> Result<Membership> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        if self.expire_members(&mut g) {
            gh.notify();
        }
        let now = self.clock.now_ms();
        let Some(m) = g.members.get_mut(member) else {
            return Err(BrokerError::UnknownMember { group: group.into(), member: member.into() });
        };
        m.last_seen_ms = now;
        Ok(Self::membership(&g, member))
    }

    /// Hands up to `max` deliverable events of the member's partitions to it, parsed.
    pub fn fetch(&self, group: &str, member: &str, max: usize) -> Result<Fetched> {
        let raw = self.fetch_raw(group, member, max)?;
        // Parsing is most of a fetch's work; `fetch_raw` has released the group's lock, so other
        // members and acknowledgements of this group are not held up by it.
        let deliveries = raw.deliveries.into_iter().map(Delivery::parsed).collect();
        Ok(Fetched { deliveries, generation: raw.generation, next_due_ms: raw.next_due_ms })
    }

    /// Like [`fetch`](Self::fetch), but each event is the JSON text it was stored as, shared with
    /// the pending window (no copy, no parse): for callers that only pass events on, like the
    /// HTTP API, which writes the text into its answers as is. Every write path stores an event
    /// as checked or serialised JSON ([`Broker::produce_raw`] and [`Broker::produce`]) and the
    /// log's CRC guards it since, so it is not checked again here.
    pub fn fetch_raw(&self, group: &str, member: &str, max: usize) -> Result<Fetched<Bytes>> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        if self.expire_members(&mut g) {
            gh.notify();
        }
        let now = self.clock.now_ms();
        match g.members.get_mut(member) {
            Some(m) => m.last_seen_ms = now,
            None => {
                return Err(BrokerError::UnknownMember {
                    group: group.into(),
                    member: member.into(),
                })
            }
        }
        // `new_room`: new deliveries the in-flight limit allows. A delivery whose visibility timeout
        // expired is still counted in flight, and delivering it again takes no room: at the
        // limit, a member whose deliveries all expired gets them back (it used to get nothing,
        // ever, while it kept heartbeating).
        let limit = self.config.inflight_per_member_max;
        let mut new_room = limit.saturating_sub(g.inflight_of(member));
        let mut budget = max.min(if new_room > 0 { new_room } else { limit });
        // Sized up front: growing it by doubling copied and page-faulted a few percent of a
        // busy fetch's CPU. `budget` is bounded by `max` and the in-flight limit.
        let mut out: Fetched<Bytes> = Fetched {
            deliveries: Vec::with_capacity(budget),
            generation: g.generation,
            next_due_ms: None,
        };
        let mut dead_now = Vec::new();
        // Fairness: start at a different partition each fetch, and give every partition an equal
        // share first; a second pass lets busy partitions use what idle ones left.
        let assigned = g.assigned_to(member);
        let n = assigned.len().max(1);
        let first = g.fetch_rotation % n;
        g.fetch_rotation = g.fetch_rotation.wrapping_add(1);
        let order: Vec<(String, u32)> = assigned[first.min(assigned.len())..]
            .iter()
            .chain(&assigned[..first.min(assigned.len())])
            .cloned()
            .collect();
        let fair_share = budget.div_ceil(n);
        // Checked to be at most a day at open: no overflow in `now + visibility`.
        let visibility_ms = i64::try_from(self.config.visibility_timeout_ms).unwrap_or(i64::MAX);
        // A partition that cannot be read is skipped (logged), not the whole fetch: deliveries
        // already put in flight by this fetch must reach the member, or they would count as a
        // failed attempt (and at the last attempt go to the dead-letter queue) undelivered.
        let mut read_error = None;
        for pass in 0..2 {
            for tp in &order {
                if budget == 0 {
                    break;
                }
                let mut share = if pass == 0 { fair_share } else { budget };
                let state = match self.topic_state(&tp.0) {
                    Ok(s) => s,
                    Err(e) => {
                        read_error.get_or_insert(e);
                        continue;
                    }
                };
                let partition = match state.topic.partition(tp.1) {
                    Ok(p) => p,
                    Err(e) => {
                        read_error.get_or_insert(e.into());
                        continue;
                    }
                };
                let Some(cursor) = g.cursors.get_mut(tp) else { continue };
                // Read ahead into the bounded pending window.
                let room =
                    self.config.pending_per_partition_max.saturating_sub(cursor.pending.len());
                if pass == 0 && room > 0 && cursor.next_read < partition.end_offset() {
                    if cursor.next_read < partition.start_offset() {
                        // Retention removed events this group never consumed: skip to what exists.
                        cursor.next_read = partition.start_offset();
                        cursor.committed = cursor.committed.max(cursor.next_read);
                    }
                    let batch = match partition.read(cursor.next_read, room, 1 << 20) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(group, topic = %tp.0, partition = tp.1, error = %e,
                                "fetch could not read ahead; the partition is skipped");
                            read_error.get_or_insert(e.into());
                            continue;
                        }
                    };
                    for r in batch.records {
                        // The log's records own their bytes (no slice of a read buffer is
                        // pinned by an event that stays pending for long).
                        let value = r.value.unwrap_or_default();
                        let key = r.key.unwrap_or_default();
                        cursor.insert(
                            r.offset,
                            Pending {
                                key,
                                value,
                                state: PendingState::Ready,
                                attempts: 0,
                                errors: Vec::new(),
                                dead_letter_id: None,
                            },
                        );
                    }
                    cursor.next_read = batch.next_offset;
                }
                // Keys with an earlier event not yet done; hashed, as the set is rebuilt on every
                // fetch over the partition's whole pending window.
                let mut seen: std::collections::HashSet<Bytes, foldhash::fast::RandomState> =
                    std::collections::HashSet::default();
                // Changes of in-flight state, applied to the cursor's count after the loop.
                let (mut started, mut ended) = (0usize, 0usize);
                let (inflight_here, mut inflight_seen) = (cursor.inflight_count, 0usize);
                for (&offset, p) in cursor.pending.iter_mut() {
                    if budget == 0 || share == 0 {
                        break;
                    }
                    if new_room == 0 && inflight_seen >= inflight_here {
                        break; // no room for new deliveries, and no expired one further on
                    }
                    let was_inflight = p.state.is_inflight();
                    inflight_seen += usize::from(was_inflight);
                    if !seen.insert(p.key.clone()) {
                        continue; // an earlier event of this key is not done: keep key order
                    }
                    if new_room == 0 && !was_inflight {
                        continue;
                    }
                    match &p.state {
                        PendingState::Ready => {}
                        PendingState::Inflight { deadline_ms, .. } if *deadline_ms <= now => {
                            push_error(
                                &mut p.errors,
                                format!("attempt {}: visibility timeout", p.attempts),
                            );
                            if p.attempts >= self.config.max_attempts {
                                // Parked until the dead-lettering below removes it.
                                p.state = PendingState::Backoff { until_ms: i64::MAX };
                                ended += 1;
                                dead_now.push((tp.clone(), offset));
                                continue;
                            }
                        }
                        PendingState::Inflight { deadline_ms, .. } => {
                            out.next_due_ms =
                                Some(out.next_due_ms.map_or(*deadline_ms, |d| d.min(*deadline_ms)));
                            continue;
                        }
                        PendingState::Backoff { until_ms } if *until_ms <= now => {}
                        PendingState::Backoff { until_ms } => {
                            if *until_ms != i64::MAX {
                                out.next_due_ms =
                                    Some(out.next_due_ms.map_or(*until_ms, |d| d.min(*until_ms)));
                            }
                            continue;
                        }
                    }
                    p.attempts = p.attempts.saturating_add(1);
                    let deadline_ms = now.saturating_add(visibility_ms);
                    if !was_inflight {
                        started += 1; // (an expired delivery delivered again stays in flight)
                        new_room -= 1;
                    }
                    p.state = PendingState::Inflight { member: member.to_string(), deadline_ms };
                    out.next_due_ms =
                        Some(out.next_due_ms.map_or(deadline_ms, |d| d.min(deadline_ms)));
                    out.deliveries.push(Delivery {
                        delivery_id: format!("{}:{}:{}:{}", tp.0, tp.1, offset, p.attempts),
                        topic: tp.0.clone(),
                        partition: tp.1,
                        offset,
                        attempt: p.attempts,
                        event: p.value.clone(), // shares the pending window's bytes
                        dead_letter_id: p.dead_letter_id.clone(),
                    });
                    budget -= 1;
                    share -= 1;
                }
                for _ in 0..started {
                    cursor.track(false, true);
                }
                for _ in 0..ended {
                    cursor.track(true, false);
                }
            }
        }
        // After the deliveries are chosen, and never failing the fetch: a dead letter that
        // cannot be written leaves its event pending (logged and counted by `dead_letter`),
        // and the deliveries above must still reach the member.
        for (tp, offset) in dead_now {
            match self.dead_letter(group, &mut g, &gh.commits, &tp, offset) {
                Ok(()) | Err(BrokerError::DeadLetterNotWritten { .. }) => {} // logged there
                Err(e) => tracing::warn!(group, topic = %tp.0, partition = tp.1, offset,
                    error = %e, "dead letter written, but the committed offset was not \
                    persisted; the event may be delivered again after a restart"),
            }
        }
        drop(g);
        match read_error {
            Some(e) if out.deliveries.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Moves a pending event to the group's dead-letter queue.
    ///
    /// Order (the invariant that no event is lost here): the dead letter is written durably to
    /// `__dlq` first; only then is the event forgotten — removed from pending, added to the
    /// group's queue, the committed offset moved past it. If the write fails, nothing is
    /// forgotten: the event stays pending, backing off for `backoff_max_ms` (then delivered
    /// again, it reaches this point again at its next failure), the failure is logged and
    /// counted ([`Broker::dead_letter_failures`]), and the error is returned.
    fn dead_letter(
        &self,
        group: &str,
        g: &mut Group,
        commits: &Mutex<()>,
        tp: &(String, u32),
        offset: u64,
    ) -> Result<()> {
        let Group { cursors, dead: queue, .. } = g;
        let Some(cursor) = cursors.get_mut(tp) else { return Ok(()) };
        let Some(p) = cursor.pending.get_mut(&offset) else { return Ok(()) };
        let id = p.dead_letter_id.clone().unwrap_or_else(|| format!("{}:{}:{offset}", tp.0, tp.1));
        let mut errors = queue.get(&id).map(|d| d.errors.clone()).unwrap_or_default();
        errors.extend(p.errors.iter().cloned());
        bound_errors(&mut errors);
        let dead = DeadLetter {
            id: id.clone(),
            group: group.to_string(),
            topic: tp.0.clone(),
            partition: tp.1,
            offset,
            event: decode_stored(&p.value, || serde_json::Value::Null),
            attempts: p.attempts,
            errors,
            dead_at_ms: self.clock.now_ms(),
            state: DeadLetterState::Dead,
        };
        if let Err(e) = self.dlq_kv.put(&state::dlq_key(group, &id), &state::encode(&dead)) {
            self.dead_letter_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(group, topic = %tp.0, partition = tp.1, offset, error = %e,
                "could not write the dead letter; the event stays pending and is delivered \
                 again after a backoff");
            let was_inflight = p.state.is_inflight();
            let retry_ms = i64::try_from(self.config.backoff_max_ms).unwrap_or(i64::MAX);
            p.state =
                PendingState::Backoff { until_ms: self.clock.now_ms().saturating_add(retry_ms) };
            cursor.track(was_inflight, false);
            return Err(BrokerError::DeadLetterNotWritten {
                group: group.to_string(),
                id,
                source: Box::new(e),
            });
        }
        cursor.remove(offset);
        tracing::warn!(group, topic = %tp.0, partition = tp.1, offset, attempts = dead.attempts,
            "event moved to the dead-letter queue");
        queue.insert(id, dead);
        self.commit(group, g, commits, std::slice::from_ref(tp))
    }

    /// Recomputes and durably persists the committed offsets of `tps` that moved. Called with
    /// the group's state locked; takes `commits` so offset writes land in the order computed.
    fn commit(
        &self,
        group: &str,
        g: &mut Group,
        commits: &Mutex<()>,
        tps: &[(String, u32)],
    ) -> Result<()> {
        let writes = Self::committed_writes(group, g, tps);
        let _order = lock(commits);
        self.offsets_kv.put_many(&writes)
    }

    /// The `__offsets` records for the committed offsets of `tps` that moved.
    fn committed_writes(
        group: &str,
        g: &mut Group,
        tps: &[(String, u32)],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut writes = Vec::new();
        for tp in tps {
            if let Some(c) = g.cursors.get_mut(tp) {
                let before = c.committed;
                if c.recompute_committed() != before {
                    writes
                        .push((state::offset_key(group, &tp.0, tp.1), state::encode(&c.committed)));
                }
            }
        }
        writes
    }

    /// Acknowledges deliveries: they are done for this group. Returns the ids that were not
    /// pending (already acknowledged or unknown); the others are committed durably before this
    /// returns.
    pub fn ack(&self, group: &str, delivery_ids: &[String]) -> Result<Vec<String>> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        let mut unknown = Vec::new();
        let mut touched = Vec::new();
        let mut finished_dead = Vec::new();
        for id in delivery_ids {
            let Some(d) = parse_delivery_id(id) else {
                unknown.push(id.clone());
                continue;
            };
            let tp = (d.topic, d.partition);
            // Any attempt that really happened may acknowledge: the event was processed. An
            // attempt number never handed out is not a delivery.
            let cursor = g.cursors.get_mut(&tp);
            let delivered = cursor
                .as_ref()
                .and_then(|c| c.pending.get(&d.offset))
                .is_some_and(|p| d.attempt <= p.attempts);
            match cursor.filter(|_| delivered).and_then(|c| c.remove(d.offset)) {
                Some(p) => {
                    if let Some(dead) = p.dead_letter_id {
                        finished_dead.push(dead);
                    }
                    touched.push(tp);
                }
                None => unknown.push(id.clone()),
            }
        }
        // Durably first, then from memory: a failed delete leaves the queue as the log has it.
        let dead_keys: Vec<_> = finished_dead.iter().map(|d| state::dlq_key(group, d)).collect();
        self.dlq_kv.delete_many(&dead_keys)?;
        for dead in finished_dead {
            g.dead.remove(&dead);
        }
        // Persist outside the state lock, so other members keep fetching during the fsync; the
        // ordering lock, taken before the state is released, keeps writes in computed order.
        let writes = Self::committed_writes(group, &mut g, &touched);
        let order = lock(&gh.commits);
        drop(g);
        self.offsets_kv.put_many(&writes)?;
        drop(order);
        gh.notify();
        Ok(unknown)
    }

    /// Rejects a delivery: it is retried after a backoff with jitter (its key waits meanwhile), or goes to the
    /// dead-letter queue once it has been delivered `max_attempts` times.
    pub fn nack(&self, group: &str, delivery_id: &str, error: &str) -> Result<()> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        let d = parse_delivery_id(delivery_id)
            .ok_or_else(|| BrokerError::UnknownDelivery(delivery_id.into()))?;
        let (tp, offset) = ((d.topic.clone(), d.partition), d.offset);
        let now = self.clock.now_ms();
        let to_dlq = {
            // Only the current attempt may be rejected: a late rejection from a member whose
            // visibility timeout expired must not back off another member's delivery.
            let p = g
                .inflight_mut(&d)
                .ok_or_else(|| BrokerError::UnknownDelivery(delivery_id.into()))?;
            push_error(&mut p.errors, format!("attempt {}: {error}", p.attempts));
            if p.attempts >= self.config.max_attempts {
                true
            } else {
                let delay = backoff_ms(
                    p.attempts,
                    self.config.backoff_initial_ms,
                    self.config.backoff_max_ms,
                );
                // Jitter (the delay's upper half, at random) keeps the retries of many keys
                // that failed together from hitting a recovering target together.
                let delay = delay - rand::rng().random_range(0..=delay / 2);
                // `delay` is at most `backoff_max_ms`, checked to be at most a day at open.
                let delay = i64::try_from(delay).unwrap_or(i64::MAX);
                p.state = PendingState::Backoff { until_ms: now.saturating_add(delay) };
                false
            }
        };
        if !to_dlq {
            if let Some(c) = g.cursors.get_mut(&tp) {
                c.track(true, false); // `inflight_mut` found it in flight
            }
        }
        if to_dlq {
            self.dead_letter(group, &mut g, &gh.commits, &tp, offset)?;
        }
        drop(g);
        gh.notify();
        Ok(())
    }

    /// Hands deliveries back without counting an attempt: they become deliverable again at
    /// once. For a consumer whose *target* is unavailable — the events are not at fault, so they
    /// must not drift towards the dead-letter queue while it is down. Returns the ids that were
    /// not in flight under that attempt (already acknowledged, expired or unknown).
    pub fn release(&self, group: &str, delivery_ids: &[String]) -> Result<Vec<String>> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        let mut unknown = Vec::new();
        for id in delivery_ids {
            let Some(d) = parse_delivery_id(id) else {
                unknown.push(id.clone());
                continue;
            };
            match g.inflight_mut(&d) {
                Some(p) => {
                    p.state = PendingState::Ready;
                    p.attempts = p.attempts.saturating_sub(1);
                }
                None => {
                    unknown.push(id.clone());
                    continue;
                }
            }
            if let Some(c) = g.cursors.get_mut(&(d.topic, d.partition)) {
                c.track(true, false);
            }
        }
        drop(g);
        gh.notify();
        Ok(unknown)
    }

    /// Rejects a delivery for good: it goes to the dead-letter queue now, whatever attempts are
    /// left (for an error retrying cannot cure, such as a webhook's 4xx answer).
    pub fn dead_letter_now(&self, group: &str, delivery_id: &str, error: &str) -> Result<()> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        let d = parse_delivery_id(delivery_id)
            .ok_or_else(|| BrokerError::UnknownDelivery(delivery_id.into()))?;
        let (tp, offset) = ((d.topic.clone(), d.partition), d.offset);
        {
            let p = g
                .inflight_mut(&d)
                .ok_or_else(|| BrokerError::UnknownDelivery(delivery_id.into()))?;
            push_error(&mut p.errors, format!("attempt {}: {error} (not retried)", p.attempts));
        }
        self.dead_letter(group, &mut g, &gh.commits, &tp, offset)?;
        drop(g);
        gh.notify();
        Ok(())
    }

    /// Moves the group's position on `topic` (one partition, or all) to `target`. Pending
    /// deliveries of those partitions are dropped; the new position is persisted.
    pub fn seek(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        target: SeekTarget,
    ) -> Result<Vec<(u32, u64)>> {
        let state = self.topic_state(topic)?;
        let partitions: Vec<_> = match partition {
            Some(p) => vec![state.topic.partition(p).map_err(BrokerError::from)?],
            None => state.topic.partitions().iter().collect(),
        };
        if let Some(reason) = GroupName::check(group) {
            return Err(InvalidGroupName { name: group.to_string(), reason }.into());
        }
        // Resolve every target before changing anything: a bad one leaves the group untouched
        // (and an unknown group uncreated).
        let mut targets = Vec::new();
        for p in partitions {
            let (start, end) = (p.start_offset(), p.end_offset());
            let offset = match target {
                SeekTarget::Earliest => start,
                SeekTarget::Latest => end,
                SeekTarget::Offset(o) if o < start || o > end => {
                    return Err(BrokerError::InvalidSeek {
                        topic: topic.into(),
                        partition: p.id(),
                        offset: o,
                        start,
                        end,
                    });
                }
                SeekTarget::Offset(o) => o,
                SeekTarget::TimeMs(t) => p.offset_for_time(t)?.unwrap_or(end),
            };
            targets.push((p.id(), offset));
        }
        let gh = self.group(group, true)?;
        let mut g = lock(&gh.state);
        self.ensure_cursors(group, &mut g, topic)?;
        lock(&gh.topics).insert(topic.to_string());
        let writes: Vec<_> = targets
            .iter()
            .map(|(p, offset)| (state::offset_key(group, topic, *p), state::encode(offset)))
            .collect();
        let order = lock(&gh.commits);
        self.offsets_kv.put_many(&writes)?;
        drop(order);
        for (p, offset) in &targets {
            g.cursors.insert((topic.to_string(), *p), Cursor::new(*offset));
        }
        drop(g);
        gh.notify();
        Ok(targets)
    }

    /// The group's members, partitions, lag and dead-letter count.
    pub fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.describe_group_with(group, true)
    }

    /// [`Broker::describe_group`] without reading the log: every partition's `lag_ms` is 0.
    /// For callers that describe many groups at once (`/metrics`), where reading one record per
    /// lagging partition of every group was most of the time.
    pub fn describe_group_counts(&self, group: &str) -> Result<GroupDescription> {
        self.describe_group_with(group, false)
    }

    fn describe_group_with(&self, group: &str, ages: bool) -> Result<GroupDescription> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        self.expire_members(&mut g);
        let now = self.clock.now_ms();
        let mut partitions = Vec::new();
        for ((topic, partition), c) in &g.cursors {
            let Ok(state) = self.topic_state(topic) else { continue };
            let p = state.topic.partition(*partition)?;
            let end = p.end_offset();
            let lag_ms = if ages && c.committed < end {
                p.read(c.committed.max(p.start_offset()), 1, 1)?
                    .records
                    .first()
                    .map_or(0, |r| now.saturating_sub(r.timestamp_ms).max(0) as u64)
            } else {
                0
            };
            partitions.push(GroupPartition {
                topic: topic.clone(),
                partition: *partition,
                member: g.assignment.get(&(topic.clone(), *partition)).cloned(),
                committed: c.committed,
                end_offset: end,
                lag_events: end.saturating_sub(c.committed),
                lag_ms,
                inflight: c.inflight(),
                parked_keys: c.parked_keys(),
            });
        }
        Ok(GroupDescription {
            group: group.to_string(),
            generation: g.generation,
            members: g.members.keys().map(|m| Self::membership(&g, m)).collect(),
            partitions,
            dead_letters: g.dead.len(),
        })
    }

    /// Names of known groups.
    pub fn list_groups(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = lock(&self.groups).keys().cloned().collect();
        names.extend(lock(&self.persisted_dead).keys().cloned());
        names.extend(lock(&self.persisted_offsets).keys().map(|(g, _, _)| g.clone()));
        names.into_iter().collect()
    }

    /// Deletes a group with no members: its committed offsets and dead letters are removed
    /// (durably) and it no longer shows in lists or metrics. A group with members is refused.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        let mut groups = lock(&self.groups);
        let handle = match groups.get(group) {
            Some(h) => Arc::clone(h),
            None => {
                drop(groups);
                let gh = self.group(group, false)?; // loads a persisted group, or UnknownGroup
                drop(gh);
                groups = lock(&self.groups);
                groups
                    .get(group)
                    .cloned()
                    .ok_or_else(|| BrokerError::UnknownGroup(group.to_string()))?
            }
        };
        let mut g = lock(&handle.state);
        self.expire_members(&mut g);
        if !g.members.is_empty() {
            return Err(BrokerError::GroupInUse { group: group.into(), members: g.members.len() });
        }
        let mut offsets: BTreeSet<Vec<u8>> =
            g.cursors.keys().map(|(t, p)| state::offset_key(group, t, *p)).collect();
        offsets.extend(
            lock(&self.persisted_offsets)
                .keys()
                .filter(|(g, _, _)| g == group)
                .map(|(g, t, p)| state::offset_key(g, t, *p)),
        );
        let dead: Vec<Vec<u8>> = g.dead.keys().map(|id| state::dlq_key(group, id)).collect();
        let _order = lock(&handle.commits);
        self.offsets_kv.delete_many(&offsets.into_iter().collect::<Vec<_>>())?;
        self.dlq_kv.delete_many(&dead)?;
        g.cursors.clear();
        g.dead.clear();
        groups.remove(group);
        lock(&self.persisted_offsets).retain(|(g, _, _), _| g != group);
        lock(&self.persisted_dead).remove(group);
        drop(g);
        drop(groups);
        handle.notify();
        self.notify();
        Ok(())
    }

    /// The group's dead letters.
    pub fn dead_letters(&self, group: &str) -> Result<Vec<DeadLetter>> {
        let gh = self.group(group, false)?;
        let g = lock(&gh.state);
        Ok(g.dead.values().cloned().collect())
    }

    /// One dead letter.
    pub fn dead_letter_entry(&self, group: &str, id: &str) -> Result<DeadLetter> {
        let gh = self.group(group, false)?;
        let g = lock(&gh.state);
        g.dead.get(id).cloned().ok_or_else(|| BrokerError::UnknownDeadLetter(id.into()))
    }

    /// Delivers a dead letter to the group again (with a fresh attempt budget).
    pub fn retry_dead_letter(&self, group: &str, id: &str) -> Result<DeadLetter> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        let mut dead =
            g.dead.get(id).cloned().ok_or_else(|| BrokerError::UnknownDeadLetter(id.into()))?;
        dead.state = DeadLetterState::Retrying;
        self.dlq_kv.put(&state::dlq_key(group, id), &state::encode(&dead))?;
        g.dead.insert(id.to_string(), dead.clone());
        if g.cursors.contains_key(&(dead.topic.clone(), dead.partition)) {
            requeue(&mut g, &dead);
        }
        drop(g);
        gh.notify();
        Ok(dead)
    }

    /// Removes a dead letter for good.
    pub fn discard_dead_letter(&self, group: &str, id: &str) -> Result<()> {
        let gh = self.group(group, false)?;
        let mut g = lock(&gh.state);
        if !g.dead.contains_key(id) {
            return Err(BrokerError::UnknownDeadLetter(id.into()));
        }
        // Durably first: a failed delete leaves the dead letter where it was.
        self.dlq_kv.delete(&state::dlq_key(group, id))?;
        g.dead.remove(id);
        for c in g.cursors.values_mut() {
            c.retain(|p| p.dead_letter_id.as_deref() != Some(id));
        }
        Ok(())
    }
}

/// A group's state and the lock that orders its writes to `__offsets`.
///
/// Lock order: `state` before `commits`. Every committed-offset write takes `commits` while the
/// state is still locked, so writes reach the log in the order their values were computed (an
/// older, lower committed offset can never land after a newer one); acknowledgements then release
/// the state before the fsync so other members are not blocked by it.
#[derive(Debug)]
struct GroupHandle {
    state: Mutex<Group>,
    commits: Mutex<()>,
    /// Fires on anything that may make this group's fetches return something new.
    activity: Notify,
    /// Topics this group has had cursors for since it was loaded: produces to them wake it.
    /// Only grows (a stale entry costs a spurious wake-up, a missing one a missed wake-up).
    topics: Mutex<BTreeSet<String>>,
}

impl GroupHandle {
    fn notify(&self) {
        self.activity.notify(usize::MAX);
    }
}

impl Delivery<Bytes> {
    /// The delivery with its event parsed (`null`, logged, if the stored text is not JSON,
    /// which the log's CRC makes all but impossible).
    pub fn parsed(self) -> Delivery {
        Delivery {
            event: decode_stored(&self.event, || serde_json::Value::Null),
            delivery_id: self.delivery_id,
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            attempt: self.attempt,
            dead_letter_id: self.dead_letter_id,
        }
    }
}

/// A stored event as `T`; `null()` (logged) if it is not valid JSON, which the log's CRC makes
/// all but impossible.
fn decode_stored<T: serde::de::DeserializeOwned>(bytes: &[u8], null: impl FnOnce() -> T) -> T {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored event is not valid JSON; delivered as null");
        null()
    })
}

/// Writes at most this many records per append when migrating keys on open.
const MIGRATION_BATCH_RECORDS_MAX: usize = 1_000;

/// Reads `__offsets`. Version-1 keys are taken as they are. An old-format key
/// (`group \0 topic \0 partition`) that reads one way only is moved to its version-1 key (put,
/// then tombstone: after a crash between the two, both exist and the version-1 one wins); one that
/// does not — written for a group name holding a NUL, before names were checked, so no valid group
/// can own it — is ignored, logged and left in place, never read as another group's offset.
fn load_offsets(kv: &KvTopic) -> Result<BTreeMap<(String, String, u32), u64>> {
    let mut current = BTreeMap::new();
    let mut legacy = Vec::new();
    for (key, (offset, value)) in kv.load()? {
        let Some(v) = value else { continue };
        let committed: u64 = state::decode(state::OFFSETS, offset, &v)?;
        match keys::decode_offset_key(&key) {
            Ok(k) => {
                current.insert((k.group.to_string(), k.topic.to_string(), k.partition), committed);
            }
            Err(keys::KeyError::UnknownFormat) => match keys::decode_legacy_offset_key(&key) {
                Ok(k) => legacy.push((key, k, committed)),
                Err(e) => {
                    tracing::warn!(offset, key = %String::from_utf8_lossy(&key).escape_debug(),
                    error = %e, "ignoring an __offsets record that names no valid group, topic and \
                    partition (written for a group name holding a NUL, before names were checked)")
                }
            },
            Err(e) => tracing::warn!(offset, error = %e,
                "ignoring an unreadable __offsets key; its group restarts from its oldest event"),
        }
    }
    let (mut moves, mut old_keys) = (Vec::new(), Vec::new());
    for (old, k, committed) in legacy {
        let id = (k.group.to_string(), k.topic.to_string(), k.partition);
        if let std::collections::btree_map::Entry::Vacant(slot) = current.entry(id) {
            moves.push((keys::encode_offset_key(&k), state::encode(&committed)));
            slot.insert(committed);
        }
        old_keys.push(old);
    }
    for chunk in moves.chunks(MIGRATION_BATCH_RECORDS_MAX) {
        kv.put_many(chunk)?;
    }
    for chunk in old_keys.chunks(MIGRATION_BATCH_RECORDS_MAX) {
        kv.delete_many(chunk)?;
    }
    Ok(current)
}

/// Reads `__dlq`, by group. A dead letter under an older key (its id alone, or `group \0 id`) is
/// moved to its version-1 key (put, then tombstone); one whose group name is not valid — stored
/// before names were checked, so no request can name its group — is ignored, logged and left.
fn load_dead_letters(kv: &KvTopic) -> Result<BTreeMap<String, BTreeMap<String, DeadLetter>>> {
    let all = kv.load()?;
    let mut out: BTreeMap<String, BTreeMap<String, DeadLetter>> = BTreeMap::new();
    let (mut moves, mut old_keys) = (Vec::new(), Vec::new());
    for (key, (offset, value)) in &all {
        let Some(v) = value else { continue };
        let dead: DeadLetter = state::decode(state::DLQ, *offset, v)?;
        if let Some(reason) = GroupName::check(&dead.group) {
            tracing::warn!(offset, group = %dead.group.escape_debug(), reason,
                "ignoring a dead letter of a group whose name is not valid (stored before names \
                 were checked)");
            continue;
        }
        let want = state::dlq_key(&dead.group, &dead.id);
        if *key != want {
            old_keys.push(key.clone());
            if all.get(&want).is_some_and(|(_, v)| v.is_some()) {
                continue; // already moved; the version-1 record is the current one
            }
            moves.push((want, state::encode(&dead)));
        }
        out.entry(dead.group.clone()).or_default().insert(dead.id.clone(), dead);
    }
    // One append per dead letter: each may be near the record limit, a batch of them past the
    // batch limit.
    for (key, value) in &moves {
        kv.put(key, value)?;
    }
    for chunk in old_keys.chunks(MIGRATION_BATCH_RECORDS_MAX) {
        kv.delete_many(chunk)?;
    }
    Ok(out)
}

/// Puts a dead letter being retried back into its cursor's pending window.
fn requeue(g: &mut Group, dead: &DeadLetter) {
    let Some(cursor) = g.cursors.get_mut(&(dead.topic.clone(), dead.partition)) else { return };
    let key = dead
        .event
        .get("partitionkey")
        .or_else(|| dead.event.get("subject"))
        .or_else(|| dead.event.get("id"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    cursor.insert(
        dead.offset,
        Pending {
            key: Bytes::from(key),
            value: Bytes::from(serde_json::to_vec(&dead.event).unwrap_or_default()),
            state: PendingState::Ready,
            attempts: 0,
            errors: Vec::new(),
            dead_letter_id: Some(dead.id.clone()),
        },
    );
}

fn describe_topic(name: &str, state: &TopicState) -> TopicDescription {
    TopicDescription {
        name: name.to_string(),
        spec: state.spec.clone(),
        partitions: state.topic.partitions().iter().map(|p| p.stats()).collect(),
    }
}
