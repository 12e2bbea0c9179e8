//! Consumer groups under bad input and failing disks (issue 20): dead-lettering never forgets an
//! event before its dead letter is durable, group names cannot split the internal keys, numbers
//! from clients are range-checked, `groups_max` counts every group, and poisoned partitions are
//! reported. One regression test per bug, named after it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig, BrokerError, SeekTarget, TopicSpec};
use driftless_core::{Event, ManualClock};
use driftless_log::fs::{FaultFs, FaultOp};
use driftless_log::{LogOptions, NewRecord};
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;
/// The size of the event in the reproduction: just under the 1 MiB record limit.
const NEAR_LIMIT_EVENT_BYTES: usize = 1_048_300;
/// The largest event a topic accepts: key plus value at the record limit.
const LARGEST_EVENT_BYTES: usize = 1 << 20;

fn config(max_attempts: u32) -> BrokerConfig {
    BrokerConfig {
        max_attempts,
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        visibility_timeout_ms: 5_000,
        session_timeout_ms: 600_000,
        ..BrokerConfig::default()
    }
}

fn options(dir: &Path) -> LogOptions {
    LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) }
}

fn open(dir: &Path, clock: &Arc<ManualClock>, config: BrokerConfig) -> Broker {
    Broker::open_with(options(dir), Arc::clone(clock) as _, config).unwrap()
}

fn open_faulty(
    dir: &Path,
    clock: &Arc<ManualClock>,
    config: BrokerConfig,
    fs: &Arc<FaultFs>,
) -> Broker {
    let options = LogOptions { fs: Arc::new(Arc::clone(fs)), ..options(dir) };
    Broker::open_with(options, Arc::clone(clock) as _, config).unwrap()
}

fn event(id: &str, subject: &str) -> Event {
    let mut e = Event::new(id, "/test", "thing.happened.v1");
    e.subject = Some(subject.to_string());
    e.data = Some(serde_json::json!({ "id": id }));
    e
}

/// An event whose stored record is `bytes` long (key plus JSON value).
fn event_of_bytes(id: &str, subject: &str, bytes: usize) -> Event {
    let mut e = event(id, subject);
    e.data = Some(serde_json::json!({ "pad": "" }));
    let base = serde_json::to_vec(&e).unwrap().len() + subject.len();
    e.data = Some(serde_json::json!({ "pad": "x".repeat(bytes - base) }));
    e
}

fn committed(b: &Broker, group: &str, topic: &str) -> Vec<u64> {
    let d = b.describe_group(group).unwrap();
    d.partitions.iter().filter(|p| p.topic == topic).map(|p| p.committed).collect()
}

// ---- hole 2: dead-lettering can drop the event ---------------------------------------------

#[test]
fn nacking_a_near_1_mib_event_with_a_1000_character_error_dead_letters_it_instead_of_dropping_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(1));
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event_of_bytes("big", "k", NEAR_LIMIT_EVENT_BYTES)]).unwrap();
    let m = b.join("dlg", &["t".to_string()], None).unwrap().member_id;
    let f = b.fetch("dlg", &m, 10).unwrap();
    assert_eq!(f.deliveries[0].delivery_id, "t:0:0:1");
    // Control characters are the worst case: each is escaped as six bytes in the record.
    let error: String = "\u{1}".repeat(500) + &"e".repeat(500);
    b.nack("dlg", "t:0:0:1", &error).unwrap();
    let dead = b.dead_letters("dlg").unwrap();
    assert_eq!(dead.len(), 1, "the event reached the dead-letter queue");
    assert_eq!(dead[0].event["id"], "big");
    assert_eq!(committed(&b, "dlg", "t"), [1]);
    drop(b);
    let b = open(dir.path(), &clock, config(1));
    let dead = b.dead_letters("dlg").unwrap();
    assert!(dead[0].event["data"]["pad"].as_str().unwrap().len() > 1_000_000);
}

#[test]
fn a_visibility_timeout_at_the_last_attempt_dead_letters_a_1_mib_event_instead_of_dropping_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(1));
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event_of_bytes("big", "k", LARGEST_EVENT_BYTES)]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(b.fetch("g", &m, 10).unwrap().deliveries.len(), 1);
    clock.advance_ms(5_001);
    b.fetch("g", &m, 10).unwrap();
    let dead = b.dead_letters("g").unwrap();
    assert_eq!(dead.len(), 1, "the event reached the dead-letter queue");
    assert!(
        dead[0].errors.iter().any(|e| e.contains("visibility timeout")),
        "{:?}",
        dead[0].errors
    );
    assert_eq!(committed(&b, "g", "t"), [1]);
}

#[test]
fn a_fetch_whose_dead_lettering_fails_still_delivers_the_other_event_it_put_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let b = open_faulty(dir.path(), &clock, config(1), &fs);
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event("a", "ka")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(b.fetch("g", &m, 10).unwrap().deliveries.len(), 1); // `a`, its last attempt
    b.produce("t", vec![event("b", "kb")]).unwrap();
    clock.advance_ms(5_001);
    fs.fail(FaultOp::Write, "__dlq", 0, true); // the disk refuses the dead letter of `a`
    let f = b.fetch("g", &m, 10).unwrap();
    let ids: Vec<_> = f.deliveries.iter().map(|d| d.event["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b"], "the fetch hands out what it put in flight");
    assert_eq!(b.dead_letter_failures(), 1);
    assert!(b.dead_letters("g").unwrap().is_empty());
    // `a` is still owned: acknowledging `b` does not move the committed offset past it.
    b.ack("g", &[f.deliveries[0].delivery_id.clone()]).unwrap();
    assert_eq!(committed(&b, "g", "t"), [0]);
    drop(b);
    let b = open(dir.path(), &clock, config(1));
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let f = b.fetch("g", &m, 10).unwrap();
    let ids: Vec<_> = f.deliveries.iter().map(|d| d.event["id"].as_str().unwrap()).collect();
    // `b` too: its acknowledgement could not move the committed offset (at least once).
    assert_eq!(ids, ["a", "b"], "after a restart the event is delivered again");
}

#[test]
fn a_nack_whose_dead_letter_cannot_be_written_keeps_the_event_pending_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let b = open_faulty(dir.path(), &clock, config(1), &fs);
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event("a", "ka"), event("b", "kb")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let f = b.fetch("g", &m, 10).unwrap();
    fs.fail(FaultOp::Write, "__dlq", 0, true);
    let err = b.nack("g", "t:0:0:1", "boom").unwrap_err();
    assert!(matches!(err, BrokerError::DeadLetterNotWritten { .. }), "{err}");
    assert!(err.to_string().contains("stays pending"), "{err}");
    let err = b.dead_letter_now("g", "t:0:1:1", "bad").unwrap_err();
    assert!(matches!(err, BrokerError::DeadLetterNotWritten { .. }), "{err}");
    assert_eq!(b.dead_letter_failures(), 2);
    assert_eq!(committed(&b, "g", "t"), [0]);
    // Both come back after the backoff, still owned by the group.
    clock.advance_ms(1_001);
    let again = b.fetch("g", &m, 10).unwrap();
    assert_eq!(again.deliveries.len(), 2, "{:?}", f.deliveries);
    drop(b);
    let b = open(dir.path(), &clock, config(1));
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    assert_eq!(b.fetch("g", &m, 10).unwrap().deliveries.len(), 2, "both delivered again");
}

#[test]
fn a_retried_dead_letter_that_fails_again_keeps_a_bounded_error_history() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(1));
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event_of_bytes("big", "k", NEAR_LIMIT_EVENT_BYTES)]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let long = "é".repeat(5_000);
    for round in 0..15 {
        let f = b.fetch("g", &m, 10).unwrap();
        assert_eq!(f.deliveries.len(), 1, "round {round}");
        b.nack("g", &f.deliveries[0].delivery_id, &long).unwrap();
        let dead = b.dead_letters("g").unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].errors.len() <= driftless_broker::ERRORS_KEPT_MAX);
        assert!(dead[0].errors.iter().all(|e| e.len() <= driftless_broker::ERROR_BYTES_MAX));
        b.retry_dead_letter("g", &dead[0].id).unwrap();
    }
}

// ---- hole 3: a NUL in a group name ---------------------------------------------------------

#[test]
fn a_nul_in_a_group_name_cannot_corrupt_another_groups_offsets_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(3));
    b.create_topic("orders", TopicSpec::default()).unwrap();
    b.create_topic("x", TopicSpec::default()).unwrap();
    let ten: Vec<_> = (0..10).map(|i| event(&format!("e{i}"), "k")).collect();
    b.produce("orders", ten.clone()).unwrap();
    b.produce("x", ten.iter().map(|e| Event { id: format!("x{}", e.id), ..e.clone() }).collect())
        .unwrap();
    b.seek("billing", "orders", None, SeekTarget::Offset(3)).unwrap();
    let evil = "billing\0orders\x000";
    let err = b.seek(evil, "x", None, SeekTarget::Latest).unwrap_err();
    assert!(matches!(err, BrokerError::InvalidGroupName(_)), "{err}");
    assert!(err.to_string().contains("only ASCII letters, digits"), "{err}");
    drop(b);
    let b = open(dir.path(), &clock, config(3));
    assert_eq!(committed(&b, "billing", "orders"), [3]);
    assert_eq!(b.list_groups(), ["billing"]);
}

#[test]
fn every_group_entry_point_refuses_an_invalid_group_name() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(3));
    b.create_topic("t", TopicSpec::default()).unwrap();
    let topics = ["t".to_string()];
    for bad in ["", "a\0b", "a/b", "..", "ü", &"g".repeat(250)] {
        let is_invalid = |r: Result<(), BrokerError>| {
            assert!(matches!(r, Err(BrokerError::InvalidGroupName(_))), "{bad:?}: {r:?}")
        };
        is_invalid(b.join(bad, &topics, None).map(drop));
        is_invalid(b.heartbeat(bad, "m").map(drop));
        is_invalid(b.fetch(bad, "m", 1).map(drop));
        is_invalid(b.ack(bad, &["t:0:0:1".into()]).map(drop));
        is_invalid(b.nack(bad, "t:0:0:1", "e"));
        is_invalid(b.release(bad, &["t:0:0:1".into()]).map(drop));
        is_invalid(b.dead_letter_now(bad, "t:0:0:1", "e"));
        is_invalid(b.seek(bad, "t", None, SeekTarget::Earliest).map(drop));
        is_invalid(b.describe_group(bad).map(drop));
        is_invalid(b.delete_group(bad));
        is_invalid(b.dead_letters(bad).map(drop));
        is_invalid(b.retry_dead_letter(bad, "t:0:0").map(drop));
        is_invalid(b.discard_dead_letter(bad, "t:0:0"));
        is_invalid(b.leave(bad, "m"));
    }
}

#[test]
fn offsets_stored_under_the_old_key_format_are_read_after_an_upgrade_and_nul_keys_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(3));
    b.create_topic("orders", TopicSpec::default()).unwrap();
    b.produce("orders", (0..10).map(|i| event(&format!("e{i}"), "k")).collect()).unwrap();
    drop(b);
    {
        // What an older version wrote: `group \0 topic \0 partition`, including the key of the
        // group `billing\0orders\00` seeking `x` to 10, which it read back as billing's.
        let log = driftless_log::Log::open(options(dir.path())).unwrap();
        let offsets = log.topic(&"__offsets".parse_topic()).unwrap();
        offsets
            .partition(0)
            .unwrap()
            .append(&[
                NewRecord::keyed(b"billing\0orders\x000", b"3"),
                NewRecord::keyed(b"billing\0orders\x000\0x\x000", b"10"),
            ])
            .unwrap();
    }
    for _ in 0..2 {
        // The first open migrates the key; the second reads the migrated one.
        let b = open(dir.path(), &clock, config(3));
        assert_eq!(committed(&b, "billing", "orders"), [3]);
        assert_eq!(b.list_groups(), ["billing"]);
    }
}

#[test]
fn dead_letters_stored_under_old_keys_are_moved_once_and_read_after_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(1));
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event("a", "k")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    b.fetch("g", &m, 1).unwrap();
    b.nack("g", "t:0:0:1", "boom").unwrap();
    let dead = b.dead_letters("g").unwrap();
    drop(b);
    {
        // An older version's keys: the id alone, and `group \0 id`; plus one of a group whose
        // name held a NUL, which no request can name any more.
        let log = driftless_log::Log::open(options(dir.path())).unwrap();
        let dlq = log.topic(&"__dlq".parse_topic()).unwrap();
        let value = serde_json::to_vec(&dead[0]).unwrap();
        let evil = serde_json::to_vec(&driftless_broker::DeadLetter {
            group: "g\0x".into(),
            ..dead[0].clone()
        })
        .unwrap();
        let of_h = serde_json::to_vec(&driftless_broker::DeadLetter {
            group: "h".into(),
            ..dead[0].clone()
        })
        .unwrap();
        dlq.partition(0)
            .unwrap()
            .append(&[
                NewRecord::keyed(b"h\0t:0:0", &of_h), // only under the old key: moved
                NewRecord::keyed(b"t:0:0", &value),
                NewRecord::keyed(b"g\0t:0:0", &value),
                NewRecord::keyed(b"g\0x\0t:0:0", &evil),
            ])
            .unwrap();
    }
    for _ in 0..2 {
        let b = open(dir.path(), &clock, config(1));
        assert_eq!(b.dead_letters("g").unwrap(), dead);
        assert_eq!(b.dead_letters("h").unwrap()[0].group, "h");
        assert_eq!(b.list_groups(), ["g", "h"]);
    }
}

trait ParseTopic {
    fn parse_topic(&self) -> driftless_core::TopicName;
}

impl ParseTopic for str {
    fn parse_topic(&self) -> driftless_core::TopicName {
        driftless_core::TopicName::new(self).unwrap()
    }
}

// ---- numbers from outside ------------------------------------------------------------------

#[test]
fn a_session_timeout_of_u64_max_is_refused_instead_of_creating_an_expired_member() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock, config(3));
    b.create_topic("t", TopicSpec::default()).unwrap();
    let err = b.join("g", &["t".to_string()], Some(u64::MAX)).unwrap_err();
    assert!(
        matches!(err, BrokerError::InvalidSetting { field: "session_timeout_ms", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("86400000"), "{err}");
}

#[test]
fn broker_settings_out_of_range_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    type Case = (&'static str, fn(&mut BrokerConfig));
    let cases: [Case; 7] = [
        ("session_timeout_ms", |c| c.session_timeout_ms = u64::MAX),
        ("visibility_timeout_ms", |c| c.visibility_timeout_ms = 1 << 63),
        ("backoff_max_ms", |c| c.backoff_max_ms = u64::MAX),
        ("backoff_initial_ms", |c| c.backoff_initial_ms = 0),
        ("max_attempts", |c| c.max_attempts = 0),
        ("max_attempts", |c| c.max_attempts = u32::MAX),
        ("groups_max", |c| c.groups_max = 0),
    ];
    for (field, set) in cases {
        let mut c = config(3);
        set(&mut c);
        let err = Broker::open_with(options(dir.path()), Arc::clone(&clock) as _, c).unwrap_err();
        assert!(
            matches!(err, BrokerError::InvalidSetting { field: f, .. } if f == field),
            "{field}: {err}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any session timeout, backoff, visibility timeout, delivery-id numbers and seek target:
    /// refused with a named setting, or working without overflow (a member that joined is alive
    /// right after, a nack backs off into the future).
    #[test]
    fn extreme_numbers_on_group_paths_are_refused_or_work(
        session in prop_oneof![Just(0u64), Just(1), Just(86_400_000), Just(86_400_001),
            Just(i64::MAX as u64), Just(u64::MAX), any::<u64>()],
        visibility in prop_oneof![Just(1u64), Just(86_400_000), Just(u64::MAX), any::<u64>()],
        backoff in prop_oneof![Just(1u64), Just(86_400_000), Just(u64::MAX), any::<u64>()],
        partition in any::<u32>(),
        offset in any::<u64>(),
        attempt in any::<u32>(),
        time in any::<i64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let c = BrokerConfig {
            visibility_timeout_ms: visibility,
            backoff_initial_ms: 1,
            backoff_max_ms: backoff,
            ..config(3)
        };
        let b = match Broker::open_with(options(dir.path()), Arc::clone(&clock) as _, c) {
            Ok(b) => b,
            Err(BrokerError::InvalidSetting { .. }) => {
                prop_assert!(visibility > 86_400_000 || backoff > 86_400_000);
                return Ok(());
            }
            Err(e) => panic!("{e}"),
        };
        b.create_topic("t", TopicSpec::default()).unwrap();
        b.produce("t", vec![event("a", "k")]).unwrap();
        let m = match b.join("g", &["t".to_string()], Some(session)) {
            Ok(m) => m.member_id,
            Err(BrokerError::InvalidSetting { field, .. }) => {
                prop_assert_eq!(field, "session_timeout_ms");
                prop_assert!(session == 0 || session > 86_400_000);
                return Ok(());
            }
            Err(e) => panic!("{e}"),
        };
        prop_assert!(b.heartbeat("g", &m).is_ok(), "a member that just joined is alive");
        let f = b.fetch("g", &m, usize::MAX).unwrap();
        prop_assert_eq!(f.deliveries.len(), 1);
        let id = format!("t:{partition}:{offset}:{attempt}");
        prop_assert!(b.ack("g", std::slice::from_ref(&id)).is_ok());
        prop_assert!(b.nack("g", &id, "e").is_err() || id == "t:0:0:1");
        prop_assert!(b.release("g", &[id]).is_ok());
        b.nack("g", &f.deliveries[0].delivery_id, "e").unwrap();
        prop_assert!(b.fetch("g", &m, 10).unwrap().next_due_ms.unwrap() > T0);
        let _ = b.seek("g", "t", Some(partition), SeekTarget::Offset(offset));
        b.seek("g", "t", None, SeekTarget::TimeMs(time)).unwrap();
    }
}

// ---- groups_max ----------------------------------------------------------------------------

#[test]
fn groups_max_counts_the_groups_with_persisted_state_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let c = BrokerConfig { groups_max: 2, ..config(3) };
    let b = open(dir.path(), &clock, c.clone());
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.seek("g1", "t", None, SeekTarget::Earliest).unwrap();
    b.seek("g2", "t", None, SeekTarget::Earliest).unwrap();
    let err = b.seek("g3", "t", None, SeekTarget::Earliest).unwrap_err();
    assert!(err.to_string().contains("groups_max = 2"), "{err}");
    drop(b);
    let b = open(dir.path(), &clock, c);
    let err = b.join("g3", &["t".to_string()], None).unwrap_err();
    assert!(matches!(err, BrokerError::LimitReached(_)), "{err}");
    assert!(err.to_string().contains("groups_max = 2"), "{err}");
    b.join("g1", &["t".to_string()], None).unwrap(); // existing groups still load
    assert_eq!(b.list_groups(), ["g1", "g2"]);
}

// ---- poisoned partitions -------------------------------------------------------------------

#[test]
fn after_a_failed_write_poisons_offsets_the_broker_names_it_and_acks_say_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let fs = FaultFs::new();
    let b = open_faulty(dir.path(), &clock, config(3), &fs);
    b.create_topic("t", TopicSpec::default()).unwrap();
    b.produce("t", vec![event("a", "k")]).unwrap();
    let m = b.join("g", &["t".to_string()], None).unwrap().member_id;
    let f = b.fetch("g", &m, 10).unwrap();
    assert!(b.poisoned_partitions().is_empty());
    fs.fail(FaultOp::Write, "__offsets", 0, true);
    let err = b.ack("g", &[f.deliveries[0].delivery_id.clone()]).unwrap_err();
    assert!(matches!(err, BrokerError::InternalTopicPoisoned { topic: "__offsets", .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("acknowledgements") && text.contains("/readyz"), "{text}");
    assert!(text.contains("restart Driftless"), "{text}");
    let poisoned = b.poisoned_partitions();
    assert_eq!(poisoned.len(), 1, "{poisoned:?}");
    assert_eq!((poisoned[0].topic.as_str(), poisoned[0].partition), ("__offsets", 0));
    drop(b);
    let b = open(dir.path(), &clock, config(3));
    assert!(b.poisoned_partitions().is_empty(), "a restart recovers");
}
