//! Consumer groups over HTTP under bad input and a failing disk (issue 20): group names that
//! could split internal keys are refused, numbers out of range answer 400 naming the setting, and
//! `/readyz` is not ready while a partition (internal topics included) is poisoned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig};
use driftless_core::SystemClock;
use driftless_log::fs::{FaultFs, FaultOp};
use driftless_log::LogOptions;
use driftless_server::ServerConfig;
use serde_json::json;
use support::*;

#[test]
fn readyz_says_not_ready_while_enospc_has_poisoned_offsets_and_acks_fail() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let options = LogOptions { fs: Arc::new(Arc::clone(&fs)), ..LogOptions::new(dir.path()) };
    let broker = Arc::new(
        Broker::open_with(options, Arc::new(SystemClock), BrokerConfig::default()).unwrap(),
    );
    let s = start_with(config(BrokerConfig::default()), broker, dir);
    s.create_topic("t", 1);
    s.produce("t", &[json!({"specversion":"1.0","id":"a","source":"/s","type":"x.y"})]);
    let member = s.join("g", &["t"]);
    let deliveries = s.fetch("g", &member, 10, 0);
    assert_eq!(s.get("/readyz").status, 200);
    fs.fail(FaultOp::Write, "__offsets", 0, true); // the disk fills under `__offsets`
    let id = deliveries[0]["delivery_id"].as_str().unwrap();
    let ack = s.post("/v1/groups/g/ack", &json!({ "delivery_ids": [id] })).problem(503);
    assert!(ack["detail"].as_str().unwrap().contains("restart"), "{ack}");
    let ready = s.get("/readyz").problem(503);
    let detail = ready["detail"].as_str().unwrap();
    assert!(detail.contains("__offsets/0") && detail.contains("restart"), "{ready}");
    assert_eq!(ready["topic"], "__offsets");
    let metrics = s.get("/metrics").text;
    assert!(metrics.contains("driftless_partitions_poisoned 1"), "{metrics}");
}

#[test]
fn a_group_name_holding_a_nul_is_refused_on_every_group_path_with_a_400() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("x", 1);
    let evil = "billing%00orders%000";
    let seek = s.post(&format!("/v1/groups/{evil}/seek"), &json!({"topic": "x", "to": "latest"}));
    let p = seek.problem(400);
    assert_eq!(p["type"], "urn:driftless:problem:invalid-group-name", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("only ASCII letters"), "{p}");
    s.post(&format!("/v1/groups/{evil}/members"), &json!({"topics": ["x"]})).problem(400);
    s.post(&format!("/v1/groups/{evil}/ack"), &json!({"delivery_ids": []})).problem(400);
    s.get(&format!("/v1/groups/{evil}")).problem(400);
    s.get(&format!("/v1/groups/{evil}/dlq")).problem(400);
    s.get(&format!("/v1/groups/{evil}/members/m/events")).problem(400);
    assert_eq!(s.get("/v1/groups").json(), json!([]));
}

#[test]
fn a_join_with_a_session_timeout_of_u64_max_answers_400_naming_the_setting() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("t", 1);
    let body = json!({"topics": ["t"], "session_timeout_ms": u64::MAX});
    let p = s.post("/v1/groups/g/members", &body).problem(400);
    assert_eq!(p["field"], "session_timeout_ms", "{p}");
}

#[test]
fn group_settings_and_sink_group_names_out_of_range_are_refused_at_start() {
    let cases = [
        ("[broker]\nsession_timeout_ms = 18446744073709551615\n", "session_timeout_ms"),
        ("[broker]\ngroups_max = 0\n", "groups_max"),
        ("[broker]\nmax_attempts = 0\n", "max_attempts"),
        ("[server]\nfetch_wait_ms_max = 18446744073709551615\n", "fetch_wait_ms_max"),
        (
            "[[sink]]\nname = \"s\"\ntopics = [\"t\"]\ngroup = \"a\\u0000b\"\n\
             target = { kind = \"sqlite\", path = \"x.db\" }\n[[sink.mapping]]\n\
             types = [\"x.*\"]\ntable = \"x\"\nkey = [\"id\"]\n\
             [sink.mapping.columns]\nid = \".subject\"\n",
            "invalid consumer group name",
        ),
    ];
    for (text, named) in cases {
        let err = ServerConfig::from_toml(text, std::path::Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains(named), "{named}: {err}");
    }
}

#[test]
fn extreme_numbers_on_group_paths_answer_without_overflow() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("t", 1);
    s.produce("t", &[json!({"specversion":"1.0","id":"a","source":"/s","type":"x.y"})]);
    let member = s.join("g", &["t"]);
    // Out of range: refused naming the parameter, before any arithmetic.
    let r = s.get(&format!("/v1/groups/g/members/{member}/events?max={0}&wait_ms=0", u64::MAX));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["field"], "max", "{}", r.text);
    let r = s.get(&format!("/v1/groups/g/members/{member}/events?max=1&wait_ms={}", u64::MAX));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["field"], "wait_ms", "{}", r.text);
    // The largest accepted values work.
    let r = s.get(&format!(
        "/v1/groups/g/members/{member}/events?max={}&wait_ms={}",
        100_000,    // routes::FETCH_EVENTS_MAX
        86_400_000  // config::SERVER_MS_MAX (one day)
    ));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["deliveries"].as_array().unwrap().len(), 1);
    let ids = [
        format!("t:{}:0:1", u32::MAX),
        format!("t:0:{}:{}", u64::MAX, u32::MAX),
        "t:4294967296:0:1".to_string(),
        "t:0:18446744073709551616:1".to_string(),
        "t:+0:0:1".to_string(),
    ];
    let r = s.post("/v1/groups/g/ack", &json!({ "delivery_ids": ids }));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["unknown"].as_array().unwrap().len(), ids.len());
    for id in &ids {
        s.post("/v1/groups/g/nack", &json!({ "delivery_id": id, "error": "e" })).problem(404);
    }
    let seek = json!({"topic": "t", "to": {"time_ms": i64::MIN}});
    assert_eq!(s.post("/v1/groups/g/seek", &seek).status, 200);
    let seek = json!({"topic": "t", "to": {"offset": u64::MAX}});
    s.post("/v1/groups/g/seek", &seek).problem(400);
}
