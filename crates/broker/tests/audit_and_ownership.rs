//! The broker's part of issue 21: a topic's owner is stored with its settings and survives a
//! restart (and topics created before owners existed load unowned); the audit trail `__audit`
//! takes opaque records durably, reads them newest first within a bound, keeps itself bounded by
//! retention, counts failed writes, and cannot be produced to, deleted or created by clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig, BrokerError, TopicSpec, AUDIT_TOPIC};
use driftless_core::{Event, ManualClock, TopicName};
use driftless_log::fs::{FaultFs, FaultOp};
use driftless_log::LogOptions;

const T0: i64 = 1_700_000_000_000;

fn open(dir: &Path, clock: &Arc<ManualClock>) -> Broker {
    let options = LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) };
    Broker::open_with(options, Arc::clone(clock) as _, BrokerConfig::default()).unwrap()
}

fn owned(owner: &str) -> TopicSpec {
    TopicSpec { owner: Some(owner.to_string()), ..TopicSpec::default() }
}

#[test]
fn a_topic_owner_is_stored_with_its_settings_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    let created = b.create_topic("crm.customers", owned("team-crm")).unwrap();
    assert_eq!(created.spec.owner.as_deref(), Some("team-crm"));
    b.create_topic("scratch", TopicSpec::default()).unwrap();
    assert_eq!(b.topic_owner("crm.customers").unwrap().as_deref(), Some("team-crm"));
    assert!(matches!(b.topic_owner("nope"), Err(BrokerError::UnknownTopic(_))));
    drop(b);
    let b = open(dir.path(), &clock);
    assert_eq!(b.topic_owner("crm.customers").unwrap().as_deref(), Some("team-crm"));
    assert_eq!(b.topic_owner("scratch").unwrap(), None);
    let log_config = b.log().topic(&TopicName::new("crm.customers").unwrap()).unwrap();
    assert_eq!(log_config.config().owner.as_deref(), Some("team-crm"), "topic.json has it too");
    let listed: Vec<_> = b.list_topics().into_iter().map(|t| (t.name, t.spec.owner)).collect();
    assert_eq!(
        listed,
        [("crm.customers".to_string(), Some("team-crm".to_string())), ("scratch".into(), None)]
    );
}

#[test]
fn an_owner_that_is_not_a_valid_principal_name_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), &Arc::new(ManualClock::new(T0)));
    for bad in ["", "team crm", "a/b", "..", &"x".repeat(250)] {
        let err = b.create_topic("t", owned(bad)).unwrap_err();
        assert!(
            matches!(err, BrokerError::InvalidSetting { field: "owner", .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(b.list_topics().is_empty());
}

#[test]
fn unowned_settings_serialise_as_before_owners_existed() {
    // `__topics` records and `topic.json` files of older versions have no `owner`: they load,
    // and an unowned topic's settings are written without one, so older versions read them.
    let json = serde_json::to_value(TopicSpec::default()).unwrap();
    assert!(json.get("owner").is_none(), "{json}");
    let old: TopicSpec = serde_json::from_str(r#"{"partitions":2,"compact":false}"#).unwrap();
    assert_eq!((old.partitions, old.owner), (2, None));
}

#[test]
fn audit_records_are_durable_and_read_newest_first_within_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let b = open(dir.path(), &clock);
    assert!(b.audit_newest(10).unwrap().is_empty());
    for i in 0..5 {
        b.append_audit(format!("record-{i}").as_bytes()).unwrap();
    }
    let newest: Vec<_> = b.audit_newest(3).unwrap();
    assert_eq!(newest, ["record-4", "record-3", "record-2"]);
    drop(b);
    let b = open(dir.path(), &clock);
    assert_eq!(b.audit_newest(100).unwrap().len(), 5, "the trail survives a restart");
    assert_eq!(b.audit_newest(0).unwrap().len(), 0);
    for i in 5..1_100 {
        b.append_audit(format!("record-{i}").as_bytes()).unwrap();
    }
    let capped = b.audit_newest(usize::MAX).unwrap();
    assert_eq!(capped.len(), driftless_broker::AUDIT_READ_RECORDS_MAX);
    assert_eq!(capped[0], "record-1099");
    assert_eq!(b.audit_failures(), 0);
}

#[test]
fn the_audit_topic_is_bounded_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), &Arc::new(ManualClock::new(T0)));
    let topic = b.log().topic(&TopicName::new(AUDIT_TOPIC).unwrap()).unwrap();
    let c = topic.config();
    assert_eq!(c.retention_ms, Some(driftless_broker::AUDIT_RETENTION_MS));
    assert_eq!(c.retention_bytes, Some(driftless_broker::AUDIT_RETENTION_BYTES));
    assert_eq!(c.cleanup, driftless_log::Cleanup::Delete);
    assert_eq!(c.partitions, 1);
    assert!(c.segment_bytes_max <= driftless_broker::AUDIT_SEGMENT_BYTES_MAX);
    let too_big = vec![b'x'; driftless_broker::AUDIT_RECORD_BYTES_MAX + 1];
    assert!(b.append_audit(&too_big).is_err(), "a record over the limit is refused");
    assert_eq!(b.audit_failures(), 1);
}

#[test]
fn clients_can_neither_create_delete_nor_produce_to_the_audit_topic() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path(), &Arc::new(ManualClock::new(T0)));
    b.append_audit(b"kept").unwrap();
    let e = Event::new("forged", "/evil", "audit.v1");
    assert!(matches!(b.produce(AUDIT_TOPIC, vec![e]), Err(BrokerError::UnknownTopic(_))));
    assert!(matches!(b.delete_topic(AUDIT_TOPIC), Err(BrokerError::ReservedTopic(_))));
    let created = b.create_topic(AUDIT_TOPIC, TopicSpec::default());
    assert!(matches!(created, Err(BrokerError::ReservedTopic(_))));
    assert!(b.list_topics().iter().all(|t| t.name != AUDIT_TOPIC));
    assert_eq!(b.audit_newest(10).unwrap(), ["kept"]);
}

#[test]
fn a_failed_audit_write_is_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let options = LogOptions {
        fs: Arc::new(Arc::clone(&fs)),
        maintenance_interval_ms: None,
        ..LogOptions::new(dir.path())
    };
    let clock = Arc::new(ManualClock::new(T0));
    let b = Broker::open_with(options, clock as _, BrokerConfig::default()).unwrap();
    fs.fail(FaultOp::Write, "__audit", 0, true);
    let err = b.append_audit(b"lost").unwrap_err().to_string();
    assert!(err.contains("__audit") || err.contains("audit"), "{err}");
    assert_eq!(b.audit_failures(), 1);
    // Topics are unaffected.
    b.create_topic("t", TopicSpec::default()).unwrap();
}
