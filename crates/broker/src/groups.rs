//! Consumer groups: membership and partition assignment, deliveries with visibility timeouts,
//! acknowledgements, retries with backoff that park only the failing key, and the dead-letter
//! queue.
//!
//! Per (group, topic, partition) a [`Cursor`] holds `committed` (every offset below it is done),
//! `next_read` (the next offset to read from the log) and `pending`: events read but not done,
//! each `Ready`, `Inflight` (delivered to a member until a deadline) or `Backoff` (failed, retried
//! after a delay). Invariants:
//! - per-key order: only the first pending event of a key may be delivered, so a failing event
//!   parks its key while other keys of the partition keep flowing;
//! - `committed` never moves backwards except by an explicit seek, and is persisted (durably)
//!   before an acknowledgement is answered;
//! - an event leaves `pending` only by acknowledgement or by going to the dead-letter queue after
//!   `max_attempts` deliveries (each expired visibility timeout counts as a failed attempt);
//! - an event leaves `pending` for the dead-letter queue only after its dead letter is durable in
//!   `__dlq` (see `Broker::dead_letter`): a failed write leaves it pending, backing off;
//! - error histories are bounded: the last [`ERRORS_KEPT_MAX`] errors, each at most
//!   [`ERROR_BYTES_MAX`] bytes, so a dead letter of the largest event always fits in a `__dlq`
//!   record (`state::DLQ_RECORD_BYTES_MAX`);
//! - memory is bounded: at most `pending_per_partition_max` events per cursor and
//!   `inflight_per_member_max` deliveries per member;
//! - a cursor's `inflight_count` is the number of its pending events in flight, kept by every
//!   change (insert, remove, change of state: see [`Cursor::track`]), so a fetch need not scan
//!   every pending window to enforce the in-flight limit (it did, and with full windows that was
//!   a third of a fetch's CPU); debug builds check it against a scan at every fetch.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a pending event stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingState {
    Ready,
    Inflight { member: String, deadline_ms: i64 },
    Backoff { until_ms: i64 },
}

impl PendingState {
    pub fn is_inflight(&self) -> bool {
        matches!(self, PendingState::Inflight { .. })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub key: Bytes,
    pub value: Bytes,
    pub state: PendingState,
    pub attempts: u32,
    pub errors: Vec<String>,
    /// Set when this is a dead letter being retried.
    pub dead_letter_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Cursor {
    pub committed: u64,
    pub next_read: u64,
    pub pending: BTreeMap<u64, Pending>,
    /// How many of `pending` are in flight (see the module's invariants).
    pub inflight_count: usize,
}

impl Cursor {
    pub fn new(offset: u64) -> Self {
        Self { committed: offset, next_read: offset, pending: BTreeMap::new(), inflight_count: 0 }
    }

    /// Keeps `inflight_count` true across one pending event's change: whether it was in flight
    /// before (`false` for an event just added) and is after (`false` for one removed).
    pub fn track(&mut self, was_inflight: bool, is_inflight: bool) {
        match (was_inflight, is_inflight) {
            (false, true) => self.inflight_count += 1,
            (true, false) => {
                // A miscount must not take the broker down: debug builds (every test) stop on
                // it; a release build at worst lets a member exceed its in-flight limit.
                debug_assert!(self.inflight_count > 0, "in-flight count below zero");
                self.inflight_count = self.inflight_count.saturating_sub(1);
            }
            _ => {}
        }
    }

    /// Adds (or replaces) a pending event.
    pub fn insert(&mut self, offset: u64, p: Pending) {
        let is = p.state.is_inflight();
        if let Some(old) = self.pending.insert(offset, p) {
            self.track(old.state.is_inflight(), false);
        }
        self.track(false, is);
    }

    /// Removes a pending event.
    pub fn remove(&mut self, offset: u64) -> Option<Pending> {
        let p = self.pending.remove(&offset)?;
        self.track(p.state.is_inflight(), false);
        Some(p)
    }

    /// Keeps the pending events `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Pending) -> bool) {
        let mut dropped_inflight = 0;
        self.pending.retain(|_, p| {
            let kept = keep(p);
            if !kept && p.state.is_inflight() {
                dropped_inflight += 1;
            }
            kept
        });
        for _ in 0..dropped_inflight {
            self.track(true, false);
        }
    }

    /// The committed offset implied by what is pending; never below the current one.
    pub fn recompute_committed(&mut self) -> u64 {
        let lowest =
            self.pending.range(self.committed..).next().map_or(self.next_read, |(o, _)| *o);
        self.committed = self.committed.max(lowest);
        self.committed
    }

    /// Keys whose first pending event is backing off.
    pub fn parked_keys(&self) -> usize {
        let mut seen = HashSet::new();
        let mut parked = 0;
        for p in self.pending.values() {
            if seen.insert(&p.key) && matches!(p.state, PendingState::Backoff { .. }) {
                parked += 1;
            }
        }
        parked
    }

    pub fn inflight(&self) -> usize {
        self.pending.values().filter(|p| matches!(p.state, PendingState::Inflight { .. })).count()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub topics: BTreeSet<String>,
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
}

/// A group's in-memory state. Membership is not persisted: after a restart members join again;
/// committed offsets and dead letters are persisted.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub generation: u64,
    pub members: BTreeMap<String, Member>,
    /// (topic, partition) → member id.
    pub assignment: BTreeMap<(String, u32), String>,
    pub cursors: BTreeMap<(String, u32), Cursor>,
    pub dead: BTreeMap<String, DeadLetter>,
    /// Rotates the partition a fetch starts at, so no partition starves.
    pub fetch_rotation: usize,
}

impl Group {
    /// Recomputes the assignment: each topic's partitions go round-robin to the members that
    /// subscribed to it, in member-id order. Deliveries of partitions that changed owner become
    /// ready again without counting an attempt.
    pub fn rebalance(&mut self) {
        self.generation += 1;
        let mut topics: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
        for (id, m) in &self.members {
            for t in &m.topics {
                topics.entry(t).or_default().push(id);
            }
        }
        let mut assignment = BTreeMap::new();
        for (topic, members) in topics {
            let partitions = self
                .cursors
                .keys()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| *p)
                .collect::<Vec<_>>();
            for p in partitions {
                assignment.insert((topic.clone(), p), members[p as usize % members.len()].clone());
            }
        }
        for (tp, cursor) in self.cursors.iter_mut() {
            let owner = assignment.get(tp);
            let mut returned = 0;
            for pending in cursor.pending.values_mut() {
                if let PendingState::Inflight { member, .. } = &pending.state {
                    if owner != Some(member) {
                        pending.state = PendingState::Ready;
                        pending.attempts = pending.attempts.saturating_sub(1);
                        returned += 1;
                    }
                }
            }
            for _ in 0..returned {
                cursor.track(true, false);
            }
        }
        self.assignment = assignment;
    }

    pub fn assigned_to(&self, member: &str) -> Vec<(String, u32)> {
        self.assignment
            .iter()
            .filter(|(_, m)| m.as_str() == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// The pending event `d` names, if it is in flight under that very attempt: a late answer
    /// for an expired or superseded attempt must not touch the current delivery.
    pub fn inflight_mut(&mut self, d: &DeliveryId) -> Option<&mut Pending> {
        self.cursors
            .get_mut(&(d.topic.clone(), d.partition))
            .and_then(|c| c.pending.get_mut(&d.offset))
            .filter(|p| matches!(p.state, PendingState::Inflight { .. }) && p.attempts == d.attempt)
    }

    /// Deliveries in flight to `member`: the in-flight events of the cursors assigned to it
    /// (a rebalance returns every delivery of a partition that changes owner, so no other
    /// cursor holds one of its deliveries).
    pub fn inflight_of(&self, member: &str) -> usize {
        let counted = self
            .assignment
            .iter()
            .filter(|(_, m)| m.as_str() == member)
            .filter_map(|(tp, _)| self.cursors.get(tp))
            .map(|c| c.inflight_count)
            .sum();
        debug_assert_eq!(
            counted,
            self.cursors
                .values()
                .flat_map(|c| c.pending.values())
                .filter(
                    |p| matches!(&p.state, PendingState::Inflight { member: m, .. } if m == member)
                )
                .count(),
            "in-flight count of {member}"
        );
        debug_assert!(
            self.cursors.values().all(|c| c.inflight_count == c.inflight()),
            "every cursor's in-flight count matches its pending window"
        );
        counted
    }
}

/// An event handed to a consumer, to be acknowledged or rejected by its `delivery_id`.
///
/// `E` is the event's form: a parsed `serde_json::Value` for in-process consumers, the stored
/// JSON text (`Bytes`, from [`Broker::fetch_raw`](crate::Broker::fetch_raw)) for the HTTP API,
/// which writes it into its answers as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery<E = serde_json::Value> {
    /// `topic:partition:offset:attempt` (safe in a URL path segment).
    pub delivery_id: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// 1 for the first delivery, then 2, 3, …
    pub attempt: u32,
    /// The CloudEvent.
    pub event: E,
    /// Set when this delivery retries a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_id: Option<String>,
}

/// Errors kept per event (pending or dead-lettered): the most recent ones.
pub const ERRORS_KEPT_MAX: usize = 10;
/// Longest kept error entry, in bytes (`attempt N: ` and the consumer's text, cut at a
/// character boundary).
pub const ERROR_BYTES_MAX: usize = 1024;

/// Adds `entry` to an error history, cut to [`ERROR_BYTES_MAX`], dropping the oldest entries
/// beyond [`ERRORS_KEPT_MAX`].
pub(crate) fn push_error(errors: &mut Vec<String>, entry: String) {
    // The last line of defence: sinks redact what they report, and whatever slipped through
    // (a configured secret echoed by a target) is removed before it is stored and shown.
    errors.push(truncate_error(driftless_core::redact(&entry)));
    bound_errors(errors);
}

/// Keeps the last [`ERRORS_KEPT_MAX`] entries of `errors`, each cut to [`ERROR_BYTES_MAX`] (dead
/// letters stored before the bound existed are cut the same way when written again).
pub(crate) fn bound_errors(errors: &mut Vec<String>) {
    let excess = errors.len().saturating_sub(ERRORS_KEPT_MAX);
    errors.drain(..excess);
    for e in errors.iter_mut() {
        if e.len() > ERROR_BYTES_MAX {
            *e = truncate_error(std::mem::take(e));
        }
    }
}

fn truncate_error(mut entry: String) -> String {
    const MARK: &str = "…";
    if entry.len() > ERROR_BYTES_MAX {
        let mut end = ERROR_BYTES_MAX - MARK.len();
        while !entry.is_char_boundary(end) {
            end -= 1;
        }
        entry.truncate(end);
        entry.push_str(MARK);
    }
    entry
}

/// A parsed delivery id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryId {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
}

/// Parses a delivery id `topic:partition:offset:attempt`. Each number is plain decimal digits
/// within its type's range (`+1`, `-1` or 2^64 are not ids), so arithmetic on them needs no
/// further check.
pub(crate) fn parse_delivery_id(id: &str) -> Option<DeliveryId> {
    fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    let mut parts = id.split(':');
    let topic = parts.next()?.to_string();
    let partition = digits(parts.next()?)?;
    let offset = digits(parts.next()?)?;
    let attempt: u32 = digits(parts.next()?)?;
    if parts.next().is_some() || topic.is_empty() || attempt == 0 {
        return None;
    }
    Some(DeliveryId { topic, partition, offset, attempt })
}

/// An event that failed `max_attempts` times, with its error history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `topic:partition:offset`, unique within its group.
    pub id: String,
    /// The consumer group it failed in.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The CloudEvent.
    pub event: serde_json::Value,
    /// Deliveries made.
    pub attempts: u32,
    /// One entry per failed attempt: the consumer's error or "visibility timeout".
    pub errors: Vec<String>,
    /// When it was dead-lettered (ms since the epoch).
    pub dead_at_ms: i64,
    /// `dead`, or `retrying` after an operator asked for a retry.
    pub state: DeadLetterState,
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterState {
    /// Parked in the queue.
    Dead,
    /// Being delivered again after an operator's retry.
    Retrying,
}

/// Exponential backoff before attempt `attempts + 1`: `initial × 2^(attempts−1)`, capped.
pub(crate) fn backoff_ms(attempts: u32, initial_ms: u64, max_ms: u64) -> u64 {
    let shift = attempts.saturating_sub(1).min(20);
    initial_ms.saturating_mul(1 << shift).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b: Vec<u64> = (1..=6).map(|a| backoff_ms(a, 100, 1000)).collect();
        assert_eq!(b, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn delivery_ids_parse_and_reject_garbage() {
        let id = parse_delivery_id("orders:3:42:1").unwrap();
        assert_eq!((id.topic.as_str(), id.partition, id.offset, id.attempt), ("orders", 3, 42, 1));
        for bad in [
            "",
            "orders",
            "orders:x:1:1",
            "orders:1:2",
            "orders:1:2:3:4",
            ":1:2:3",
            "t:1:2:0",
            "t:+1:2:3",
            "t:1:-2:3",
            "t:4294967296:2:3",
            "t:1:18446744073709551616:3",
            "t:1:2:4294967296",
        ] {
            assert_eq!(parse_delivery_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_histories_keep_the_last_entries_each_cut_to_the_limit() {
        let mut errors = Vec::new();
        for i in 0..25 {
            push_error(&mut errors, format!("attempt {i}: {}", "é".repeat(2000)));
        }
        assert_eq!(errors.len(), ERRORS_KEPT_MAX);
        assert!(errors[0].starts_with("attempt 15: "));
        assert!(errors.iter().all(|e| e.len() <= ERROR_BYTES_MAX && e.ends_with('…')));
    }

    #[test]
    fn stored_errors_are_redacted_whatever_a_sink_reported() {
        let mut errors = Vec::new();
        push_error(
            &mut errors,
            "attempt 1: http://h/hook?token=s3cr3t-token answered 500; postgres://u:pw-9x@db/app"
                .into(),
        );
        assert!(!errors[0].contains("s3cr3t-token") && !errors[0].contains("pw-9x"), "{errors:?}");
        assert!(errors[0].contains("token=***") && errors[0].contains("u:***@db"), "{errors:?}");
    }

    #[test]
    fn committed_follows_the_lowest_pending_and_never_goes_back() {
        let mut c = Cursor::new(10);
        c.next_read = 20;
        let p = Pending {
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
            state: PendingState::Ready,
            attempts: 0,
            errors: vec![],
            dead_letter_id: None,
        };
        c.pending.insert(15, p.clone());
        assert_eq!(c.recompute_committed(), 15);
        c.pending.insert(5, p); // a retried dead letter below the committed offset
        assert_eq!(c.recompute_committed(), 15);
        c.pending.remove(&15);
        assert_eq!(c.recompute_committed(), 20);
    }
}
