//! The one path by which sources write to the log: topic creation, batched durable appends and
//! the source's stored position.
//!
//! Invariants: [`Emitter::emit`] returns only after every event it was given is durable (or was a
//! duplicate of a durable one); events of one topic are appended in the order given, so per-key
//! order upstream is per-key order in the log; broker calls (which block on fsync) run on
//! tokio's blocking pool.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use driftless_broker::{Broker, BrokerError, TopicSpec};
use driftless_core::{Event, InvalidEvent, RawEvent};

use crate::error::{ConnectError, Result};

/// Most ids [`Emitter::ids_since`] collects before refusing (the events appended to a topic
/// between a recorded mark and a crash).
pub const RECOVERY_IDS_MAX: usize = 5_000_000;

/// Appends a source's events and stores its position.
#[derive(Clone)]
pub struct Emitter {
    broker: Arc<Broker>,
    source: String,
    partitions: u32,
    /// Topics known to exist, so a batch does not ask the broker again (a topic deleted since
    /// is forgotten when an append to it fails).
    known_topics: Arc<Mutex<HashSet<String>>>,
}

impl Emitter {
    /// An emitter for the source `source`, creating missing topics with `partitions`.
    pub fn new(broker: Arc<Broker>, source: impl Into<String>, partitions: u32) -> Self {
        Self {
            broker,
            source: source.into(),
            partitions,
            known_topics: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The broker (for tests and status).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    fn broker_error(&self, error: BrokerError) -> ConnectError {
        if let BrokerError::UnknownTopic(topic) = &error {
            // Deleted since it was created or seen: the next attempt recreates it.
            self.known().remove(topic);
        }
        ConnectError::Broker { source_name: self.source.clone(), error }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T> {
        let broker = Arc::clone(&self.broker);
        match tokio::task::spawn_blocking(move || f(&broker)).await {
            Ok(r) => r.map_err(|e| self.broker_error(e)),
            Err(join) => Err(ConnectError::State {
                source_name: self.source.clone(),
                reason: format!("a log append task ended abnormally: {join}"),
            }),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `topic` unless it exists.
    pub async fn ensure_topic(&self, topic: &str) -> Result<()> {
        if self.known().contains(topic) {
            return Ok(());
        }
        let topic = topic.to_string();
        let partitions = self.partitions;
        let name = topic.clone();
        self.blocking(move |b| {
            if b.describe_topic(&topic).is_ok() {
                return Ok(());
            }
            match b.create_topic(&topic, TopicSpec { partitions, ..TopicSpec::default() }) {
                Ok(_) | Err(BrokerError::TopicExists(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await?;
        self.known().insert(name);
        Ok(())
    }

    /// Appends `events` (each with its topic) durably: topics are created as needed, each
    /// topic's events keep their order, topics are appended in parallel.
    pub async fn emit(&self, events: Vec<(String, Event)>) -> Result<()> {
        let events = self.encode(events)?;
        self.emit_raw(events).await
    }

    /// Checks and serialises events for [`Emitter::emit_raw`], on the caller's thread: the
    /// events' `Value` trees are freed by the thread that built them (mimalloc frees from
    /// another thread take a slower path; dropping them on the append thread was about a fifth
    /// of a CDC source's append CPU).
    pub fn encode(&self, events: Vec<(String, Event)>) -> Result<Vec<(String, RawEvent)>> {
        events
            .into_iter()
            .enumerate()
            .map(|(index, (topic, event))| match RawEvent::from_event(&event) {
                Ok(raw) => Ok((topic, raw)),
                Err(source) => Err(self.invalid_event(index, source)),
            })
            .collect()
    }

    /// The error for event `index` of a batch that is not a valid event, as the broker names it.
    pub fn invalid_event(&self, index: usize, source: InvalidEvent) -> ConnectError {
        self.broker_error(BrokerError::InvalidEvent { index, source })
    }

    /// [`Emitter::emit`] for events already encoded.
    pub async fn emit_raw(&self, events: Vec<(String, RawEvent)>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut by_topic: BTreeMap<String, Vec<RawEvent>> = BTreeMap::new();
        for (topic, event) in events {
            by_topic.entry(topic).or_default().push(event);
        }
        for topic in by_topic.keys() {
            self.ensure_topic(topic).await?;
        }
        self.blocking(move |b| {
            let chunk = b.config().produce_events_max.max(1);
            let produce_topic = |topic: &str, events: Vec<RawEvent>| -> Result<(), BrokerError> {
                let mut events = events;
                while !events.is_empty() {
                    let rest = events.split_off(chunk.min(events.len()));
                    b.produce_raw(topic, events)?;
                    events = rest;
                }
                Ok(())
            };
            if by_topic.len() == 1 {
                let (topic, events) = by_topic.into_iter().next().unwrap_or_default();
                return produce_topic(&topic, events);
            }
            std::thread::scope(|s| {
                let handles: Vec<_> = by_topic
                    .into_iter()
                    .map(|(topic, events)| {
                        let produce_topic = &produce_topic;
                        s.spawn(move || produce_topic(&topic, events))
                    })
                    .collect();
                let mut first = Ok(());
                for h in handles {
                    let r = h.join().unwrap_or_else(|_| unreachable!("produce does not panic"));
                    if first.is_ok() {
                        first = r;
                    }
                }
                first
            })
        })
        .await
    }

    /// The source's stored position, if it stored one.
    pub fn state(&self) -> Option<Bytes> {
        self.broker.connector_state(&self.source)
    }

    /// Stores the source's position durably.
    pub async fn put_state(&self, value: Vec<u8>) -> Result<()> {
        let name = self.source.clone();
        self.blocking(move |b| b.put_connector_state(&name, &value)).await
    }

    /// Each topic's partition end offsets (missing topics are created first).
    pub async fn end_offsets(&self, topics: Vec<String>) -> Result<BTreeMap<String, Vec<u64>>> {
        for t in &topics {
            self.ensure_topic(t).await?;
        }
        self.blocking(move |b| {
            topics.into_iter().map(|t| b.end_offsets(&t).map(|o| (t, o))).collect()
        })
        .await
    }

    /// The ids of events appended to each topic since the given offsets.
    pub async fn ids_since(&self, marks: BTreeMap<String, Vec<u64>>) -> Result<HashSet<String>> {
        self.blocking(move |b| {
            let mut ids = HashSet::new();
            for (topic, from) in marks {
                match b.event_ids_since(&topic, &from, RECOVERY_IDS_MAX) {
                    Ok(found) => ids.extend(found),
                    // Deleted since: nothing of ours can be in it.
                    Err(BrokerError::UnknownTopic(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ids)
        })
        .await
    }
}
