//! Issue 20's topic and produce holes through real HTTP: an out-of-range topic setting is a 400
//! naming the field, a batch with one oversized event appends nothing (413 naming that event),
//! and the server-wide topic limit is a 409 naming the limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use driftless_broker::BrokerConfig;
use driftless_core::partition_for_key;
use serde_json::{json, Value};
use support::{config, start};

/// A CloudEvent placed on `partition` of a `partitions`-partition topic.
fn event_on(id: &str, partition: u32, partitions: u32, data_bytes: usize) -> Value {
    let subject = (0..)
        .map(|n| format!("{id}-k{n}"))
        .find(|s| partition_for_key(s.as_bytes(), partitions) == partition)
        .unwrap();
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t.v1", "subject": subject,
           "data": {"pad": "x".repeat(data_bytes)}})
}

#[test]
fn retention_ms_of_2_pow_63_is_answered_400_naming_the_field_and_range() {
    let s = start(config(BrokerConfig::default()));
    // The issue's command: curl -XPOST :7070/v1/topics -d '{"name":"keep","retention_ms":9223372036854775808}'
    let p = s
        .post_raw(
            "/v1/topics",
            &[("content-type", "application/json")],
            br#"{"name":"keep","retention_ms":9223372036854775808}"#,
        )
        .problem(400);
    assert!(p["type"].as_str().unwrap().ends_with("invalid-setting"), "{p}");
    assert_eq!(p["field"], "retention_ms");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("9223372036854775808") && detail.contains("3153600000000"), "{p}");
    s.get("/v1/topics/keep").problem(404);
}

#[test]
fn a_batch_with_an_oversized_event_for_another_partition_is_413_and_appends_nothing() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("pt", 2);
    let small = event_on("small", 0, 2, 10);
    let batch = json!([small.clone(), event_on("big", 1, 2, 1_100_000)]);
    let p = s
        .post_raw(
            "/v1/topics/pt/events",
            &[("content-type", "application/cloudevents-batch+json")],
            batch.to_string().as_bytes(),
        )
        .problem(413);
    assert!(p["type"].as_str().unwrap().ends_with("event-too-large"), "{p}");
    assert_eq!(p["event_index"], 1, "the oversized event, not the valid one: {p}");
    assert_eq!(s.end_offsets("pt"), [0, 0], "nothing of the request is durable");
    let retry = s.produce_results("pt", &[small]);
    assert_eq!(retry[0]["duplicate"], false, "a retry is not a duplicate: {retry:?}");
}

#[test]
fn a_topic_past_topics_max_is_409_naming_the_limit() {
    let s = start(config(BrokerConfig { topics_max: 1, ..BrokerConfig::default() }));
    s.create_topic("a", 1);
    let p = s.post("/v1/topics", &json!({"name": "b"})).problem(409);
    assert!(p["type"].as_str().unwrap().ends_with("server-limit-reached"), "{p}");
    assert_eq!(p["limit"], "topics_max");
    assert!(p["detail"].as_str().unwrap().contains("raise topics_max"), "{p}");
}
