#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The audit trail over HTTP: every administrative action on topics, groups, dead letters,
//! sources, sinks and reconciliations appends exactly one record to `__audit` — who
//! (`anonymous` with authentication off), what, on which resource, when, with its outcome and
//! status; a failing action is recorded `failed`; a record that cannot be written is counted and
//! the action stands; `GET /v1/audit` reads the newest first within its `limit`; and clients can
//! neither produce to nor delete `__audit`.

mod support;

use driftless_broker::BrokerConfig;
use driftless_connect::config::{OutboxColumns, SqliteOutboxConfig};
use driftless_connect::{SourceConfig, SourceKind};
use driftless_sink::SinkConfig;
use serde_json::{json, Value};
use support::Server;

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t.v1", "subject": id})
}

/// Every record of the trail, newest first.
fn trail(s: &Server) -> Vec<Value> {
    let r = s.get("/v1/audit?limit=1000");
    assert_eq!(r.status, 200, "{}", r.text);
    r.json().as_array().unwrap().clone()
}

/// Runs `act` and asserts it appended exactly one record, with this action, resource, outcome
/// and status, by `anonymous`, dated now.
fn one_record(s: &Server, action: &str, resource: &str, status: u16, act: impl FnOnce()) {
    let before = trail(s).len();
    let started = now_ms();
    act();
    let after = trail(s);
    assert_eq!(after.len(), before + 1, "{action} on {resource}: {after:#?}");
    let r = &after[0];
    assert_eq!(r["action"], action, "{r}");
    assert_eq!(r["resource"], resource, "{r}");
    assert_eq!(r["principal"], "anonymous", "{r}");
    assert_eq!(r["status"], status, "{r}");
    let outcome = if (200..300).contains(&status) { "ok" } else { "failed" };
    assert_eq!(r["outcome"], outcome, "{r}");
    let at = r["at"].as_str().unwrap();
    assert!(driftless_core::is_rfc3339(at) && at.ends_with('Z'), "{at}");
    let fields: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["action", "at", "outcome", "principal", "resource", "status"], "{r}");
    // The record's date is the action's: within the request's own time span (to the second).
    assert!(&at[..19] >= rfc3339_seconds(started - 1_000).as_str(), "{at}");
}

fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS` in UTC, computed independently of the server, so a record's
/// `at` can be compared with the time of its action (such strings sort by time).
fn rfc3339_seconds(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days, written independently of the server's.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[test]
fn every_topic_and_group_action_appends_exactly_one_record_naming_who_what_and_which() {
    let broker = BrokerConfig { max_attempts: 1, ..BrokerConfig::default() };
    let s = support::start(support::config(broker));
    assert!(trail(&s).is_empty(), "a new server has an empty trail");

    one_record(&s, "topic.create", "topic/orders", 201, || s.create_topic("orders", 1));
    // Reads, produces, joins, fetches, acks and nacks are not administrative: no record.
    let quiet = trail(&s).len();
    s.produce("orders", &[event("e-1"), event("e-2")]);
    let member = s.join("billing", &["orders"]);
    let got = s.fetch("billing", &member, 10, 1_000);
    assert_eq!(got.len(), 2);
    s.nack("billing", got[0]["delivery_id"].as_str().unwrap(), "refused");
    s.nack("billing", got[1]["delivery_id"].as_str().unwrap(), "refused");
    s.get("/v1/topics");
    s.get("/v1/groups/billing");
    assert_eq!(trail(&s).len(), quiet, "only administrative actions are recorded");

    let dead = s.get("/v1/groups/billing/dlq").json();
    let (first, second) = (dead[0]["id"].as_str().unwrap(), dead[1]["id"].as_str().unwrap());
    let retry = format!("/v1/groups/billing/dlq/{first}/retry");
    one_record(&s, "dead_letter.retry", &format!("group/billing/dlq/{first}"), 200, || {
        assert_eq!(s.post(&retry, &json!({})).status, 200);
    });
    let discard = format!("/v1/groups/billing/dlq/{second}");
    one_record(&s, "dead_letter.discard", &format!("group/billing/dlq/{second}"), 204, || {
        assert_eq!(s.delete(&discard).status, 204);
    });
    one_record(&s, "group.seek", "group/billing/topic/orders", 200, || {
        let r = s.post("/v1/groups/billing/seek", &json!({"topic": "orders", "to": "earliest"}));
        assert_eq!(r.status, 200, "{}", r.text);
    });
    assert_eq!(s.delete(&format!("/v1/groups/billing/members/{member}")).status, 204);
    one_record(&s, "group.delete", "group/billing", 204, || {
        assert_eq!(s.delete("/v1/groups/billing").status, 204);
    });
    one_record(&s, "topic.delete", "topic/orders", 204, || {
        assert_eq!(s.delete("/v1/topics/orders").status, 204);
    });
}

#[test]
fn a_failing_action_is_recorded_failed_with_its_status() {
    let s = support::start(support::config(BrokerConfig::default()));
    one_record(&s, "topic.delete", "topic/nope", 404, || {
        s.delete("/v1/topics/nope").problem(404);
    });
    one_record(&s, "topic.create", "topic/a b", 400, || {
        s.post("/v1/topics", &json!({"name": "a b"})).problem(400);
    });
    s.create_topic("t", 1);
    one_record(&s, "topic.create", "topic/t", 409, || {
        s.post("/v1/topics", &json!({"name": "t"})).problem(409);
    });
    one_record(&s, "group.delete", "group/ghost", 404, || {
        s.delete("/v1/groups/ghost").problem(404);
    });
    one_record(&s, "group.seek", "group/g/topic/nope", 404, || {
        s.post("/v1/groups/g/seek", &json!({"topic": "nope", "to": "latest"})).problem(404);
    });
    one_record(&s, "dead_letter.retry", "group/g/dlq/t:0:0", 404, || {
        s.post("/v1/groups/g/dlq/t:0:0/retry", &json!({})).problem(404);
    });
    one_record(&s, "dead_letter.discard", "group/g/dlq/t:0:0", 404, || {
        s.delete("/v1/groups/g/dlq/t:0:0").problem(404);
    });
    for (path, action, resource) in [
        ("/v1/sources/nope/pause", "source.pause", "source/nope"),
        ("/v1/sources/nope/resume", "source.resume", "source/nope"),
        ("/v1/sinks/nope/pause", "sink.pause", "sink/nope"),
        ("/v1/sinks/nope/resume", "sink.resume", "sink/nope"),
        ("/v1/sinks/nope/rebuild", "sink.rebuild", "sink/nope"),
        ("/v1/reconciliations/nope/run", "reconciliation.run", "reconciliation/nope"),
    ] {
        one_record(&s, action, resource, 404, || {
            s.post(path, &json!({})).problem(404);
        });
    }
    // A request refused before it names anything is not an action: no record.
    let before = trail(&s).len();
    s.post_raw("/v1/topics", &[("content-type", "application/json")], b"{").problem(400);
    s.post("/v1/topics", &json!({"partitions": 1})).problem(400);
    assert_eq!(trail(&s).len(), before);
}

#[test]
fn pausing_resuming_and_rebuilding_configured_sources_and_sinks_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("customers.db");
    driftless_connect::sqlite_outbox::init_sqlite(&outbox, "outbox").unwrap();
    let projection = dir.path().join("billing.db");
    rusqlite::Connection::open(&projection)
        .unwrap()
        .execute_batch("CREATE TABLE contacts (id TEXT PRIMARY KEY, driftless_version TEXT)")
        .unwrap();
    let mut config = support::config(BrokerConfig::default());
    config.sources.push(SourceConfig {
        name: "customers".into(),
        kind: SourceKind::SqliteOutbox(SqliteOutboxConfig {
            path: outbox,
            outbox: OutboxColumns::default(),
            poll_interval_ms: 10,
            batch_rows_max: 100,
        }),
        partitions: 1,
        paused: false,
    });
    let sink: SinkConfig = toml::from_str(&format!(
        r#"
        name = "billing"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{}" }}
        [[mapping]]
        types = ["customer.*"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject" }}
        "#,
        projection.display()
    ))
    .unwrap();
    config.sinks.push(sink);
    let s = support::start(config);
    // The outbox creates its topic with its first row; the sink's rebuild wants it now.
    s.create_topic("customers", 1);
    let before = trail(&s).len();
    for (path, action, resource, status) in [
        ("/v1/sources/customers/pause", "source.pause", "source/customers", 200),
        ("/v1/sources/customers/resume", "source.resume", "source/customers", 200),
        ("/v1/sinks/billing/pause", "sink.pause", "sink/billing", 200),
        ("/v1/sinks/billing/resume", "sink.resume", "sink/billing", 200),
        ("/v1/sinks/billing/rebuild", "sink.rebuild", "sink/billing", 202),
    ] {
        one_record(&s, action, resource, status, || {
            let r = s.post(path, &json!({}));
            assert_eq!(r.status, status, "{path}: {}", r.text);
        });
    }
    assert_eq!(trail(&s).len(), before + 5);
}

#[test]
fn the_trail_is_read_newest_first_within_a_checked_limit() {
    let s = support::start(support::config(BrokerConfig::default()));
    for i in 0..5 {
        s.create_topic(&format!("t{i}"), 1);
    }
    let newest = s.get("/v1/audit?limit=2").json();
    let names: Vec<&str> =
        newest.as_array().unwrap().iter().map(|r| r["resource"].as_str().unwrap()).collect();
    assert_eq!(names, ["topic/t4", "topic/t3"]);
    assert_eq!(s.get("/v1/audit").json().as_array().unwrap().len(), 5, "default limit 100");
    for bad in ["0", "1001", "-1", "x"] {
        let p = s.get(&format!("/v1/audit?limit={bad}")).problem(400);
        assert!(p["detail"].as_str().unwrap().contains("limit"), "{p}");
    }
    s.get("/v1/audit?limit=1000").json();
    s.get("/v1/audit?since=1").problem(400);
}

#[test]
fn clients_can_neither_produce_to_nor_delete_nor_create_the_audit_topic() {
    let s = support::start(support::config(BrokerConfig::default()));
    s.create_topic("t", 1);
    let kept = trail(&s);
    assert_eq!(kept.len(), 1);
    let forged = json!({"specversion": "1.0", "id": "x", "source": "/evil", "type": "t",
        "data": {"at": "2000-01-01T00:00:00.000Z", "principal": "admin", "action": "topic.delete",
                 "resource": "topic/t", "outcome": "ok", "status": 204}});
    let r = s.post_raw(
        "/v1/topics/__audit/events",
        &[("content-type", "application/cloudevents+json")],
        forged.to_string().as_bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    s.delete("/v1/topics/__audit").problem(400);
    s.post("/v1/topics", &json!({"name": "__audit"})).problem(400);
    let topics = s.get("/v1/topics").json();
    assert!(topics.as_array().unwrap().iter().all(|t| t["name"] != "__audit"), "{topics}");
    // The refused delete and create are themselves recorded (failed); nothing else changed.
    let now = trail(&s);
    assert_eq!(now.len(), 3, "{now:#?}");
    assert_eq!(now[2], kept[0]);
    assert!(now[..2].iter().all(|r| r["outcome"] == "failed" && r["resource"] == "topic/__audit"));
    assert!(now.iter().all(|r| r["source"].is_null() && r["principal"] == "anonymous"));
}

#[test]
fn the_metrics_count_audit_records_that_could_not_be_written() {
    let s = support::start(support::config(BrokerConfig::default()));
    let text = s.get("/metrics").text;
    assert!(
        text.lines().any(|l| l == "driftless_audit_write_failures_total 0"),
        "{}",
        text.lines().filter(|l| l.contains("audit")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_audit_record_that_cannot_be_written_is_counted_and_does_not_undo_the_action() {
    use driftless_log::fs::{FaultFs, FaultOp};
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let options = driftless_log::LogOptions {
        fs: std::sync::Arc::new(std::sync::Arc::clone(&fs)),
        ..driftless_log::LogOptions::new(dir.path())
    };
    let broker = driftless_broker::Broker::open_with(
        options,
        std::sync::Arc::new(driftless_core::SystemClock),
        BrokerConfig::default(),
    )
    .unwrap();
    let s = support::start_with(support::config(BrokerConfig::default()), broker.into(), dir);
    fs.fail(FaultOp::Write, "__audit", 0, true); // the disk refuses the audit trail only
    s.create_topic("t", 1); // 201: the action stands
    assert_eq!(s.get("/v1/topics/t").status, 200);
    assert_eq!(s.delete("/v1/topics/t").status, 204);
    s.get("/v1/topics/t").problem(404);
    let metrics = s.get("/metrics").text;
    assert!(
        metrics.lines().any(|l| l == "driftless_audit_write_failures_total 2"),
        "{}",
        metrics.lines().filter(|l| l.contains("audit")).collect::<Vec<_>>().join("\n")
    );
    assert!(trail(&s).is_empty());
}

#[test]
fn running_a_configured_reconciliation_is_recorded_with_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (source, projection) = (dir.path().join("customers.db"), dir.path().join("crm.db"));
    let exec = |db: &std::path::Path, sql: &str| {
        rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
    };
    exec(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    exec(
        &projection,
        "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)",
    );
    let text = format!(
        r#"
        [[sink]]
        name = "crm"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{projection}" }}
        [[sink.mapping]]
        types = ["customer.changed"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city" }}

        [[reconcile]]
        name = "crm-contacts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers" }}
        lag_window_ms = 100
        "#,
        projection = projection.display(),
        source = source.display()
    );
    let mut config =
        driftless_server::ServerConfig::from_toml(&text, std::path::Path::new("a.toml")).unwrap();
    config.server.shutdown_grace_ms = 5_000;
    let s = support::start(config);
    s.create_topic("customers", 1);
    one_record(&s, "reconciliation.run", "reconciliation/crm-contacts", 200, || {
        let r = s.post("/v1/reconciliations/crm-contacts/run", &json!({}));
        assert_eq!(r.status, 200, "{}", r.text);
    });
    // A body the run refuses before running is not an action: no record.
    let before = trail(&s).len();
    let json = [("content-type", "application/json")];
    s.post_raw("/v1/reconciliations/crm-contacts/run", &json, b"{").problem(400);
    assert_eq!(trail(&s).len(), before);
}
