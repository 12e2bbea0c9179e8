//! Whole classes of bad input from outside, over real HTTP (issue 20): a JSON member given twice
//! in any request body, invalid `data_base64` in every CloudEvents mode, and out-of-range numbers
//! in query strings, headers and path segments. Each is a clear 400 problem and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use driftless_broker::BrokerConfig;
use serde_json::{json, Value};
use support::{config, start};

/// `{"name":"c13","name":"c14"}` created `c14`: every JSON body now refuses a repeated member.
#[test]
fn a_json_member_given_twice_is_refused_by_every_json_endpoint() {
    let s = start(config(BrokerConfig::default()));
    let r = s.post_raw(
        "/v1/topics",
        &[("content-type", "application/json")],
        br#"{"name":"c13","name":"c14"}"#,
    );
    let p = r.problem(400);
    assert_eq!(p["field"], "name", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("more than once"), "{p}");
    assert_eq!(s.get("/v1/topics/c14").status, 404);
    assert_eq!(s.get("/v1/topics/c13").status, 404);

    // Every operation whose OpenAPI document takes a JSON body, and the optional body of a
    // reconciliation run (not in the document's schemas): a repeat at the top and one nested.
    let doc = s.get("/v1/openapi.json").json();
    let mut endpoints = vec!["/v1/reconciliations/r/run".to_string()];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let json_body = op["requestBody"]["content"].get("application/json").is_some();
            if json_body {
                assert_eq!(method, "post", "{path}");
                let concrete: Vec<String> = path
                    .split('/')
                    .map(|seg| if seg.starts_with('{') { "x".into() } else { seg.to_string() })
                    .collect();
                endpoints.push(concrete.join("/"));
            }
        }
    }
    assert!(endpoints.len() >= 7, "{endpoints:?}");
    for path in &endpoints {
        for body in [r#"{"zz":1,"zz":2}"#, r#"{"q":{"zz":[1],"zz":{}}}"#] {
            let r = s.post_raw(path, &[("content-type", "application/json")], body.as_bytes());
            let p = r.problem(400);
            assert_eq!(p["field"], "zz", "{path}: {p}");
        }
    }
    // Distinct members in different objects are not a repeat.
    let ok = s.post("/v1/topics", &json!({"name": "ok", "partitions": 1}));
    assert_eq!(ok.status, 201, "{}", ok.text);
}

fn event(id: &str, b64: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t", "data_base64": b64})
}

/// `data_base64: "!!!"` was stored: every produce mode refuses it, naming the attribute and the
/// event's index, and appends nothing.
#[test]
fn data_base64_that_is_not_base64_is_refused_in_every_mode() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("b", 2);
    let path = "/v1/topics/b/events";
    let structured = [("content-type", "application/cloudevents+json")];
    let p = s.post_raw(path, &structured, event("e-0", "!!!").to_string().as_bytes()).problem(400);
    assert_eq!((p["field"].as_str(), p["event_index"].as_u64()), (Some("data_base64"), Some(0)));
    let batch = [("content-type", "application/cloudevents-batch+json")];
    let body = json!([event("e-1", "AA=="), event("e-2", "AA="), event("e-3", "AA==")]);
    let p = s.post_raw(path, &batch, body.to_string().as_bytes()).problem(400);
    assert_eq!((p["field"].as_str(), p["event_index"].as_u64()), (Some("data_base64"), Some(1)));
    assert!(p["detail"].as_str().unwrap().contains("base64"), "{p}");
    // Binary mode: the body is encoded by the server, and a `ce-data_base64` header is not an
    // attribute (the body carries the data), so any bytes go in and come back.
    let binary = [
        ("content-type", "application/octet-stream"),
        ("ce-specversion", "1.0"),
        ("ce-id", "e-4"),
        ("ce-source", "/t"),
        ("ce-type", "t"),
        ("ce-data_base64", "!!!"),
    ];
    let r = s.post_raw(path, &binary, b"\xff\x00!");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.end_offsets("b").iter().sum::<u64>(), 1, "only the binary event is stored");
}

/// Numbers in query strings are range-checked before any arithmetic: a clear 400 naming the
/// parameter, never a panic, a clamp to nonsense or a silent zero.
#[test]
fn out_of_range_numbers_in_query_strings_are_refused_naming_them() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("n", 1);
    let m = s.join("g", &["n"]);
    let base = format!("/v1/groups/g/members/{m}/events");
    for (query, field) in [
        ("max=0", Some("max")),
        ("max=100001", Some("max")),
        ("max=18446744073709551616", None),
        ("max=-1", None),
        ("wait_ms=86400001", Some("wait_ms")),
        ("wait_ms=18446744073709551615", Some("wait_ms")),
        ("wait_ms=1e3", None),
    ] {
        let p = s.get(&format!("{base}?{query}")).problem(400);
        if let Some(field) = field {
            assert_eq!(p["field"], field, "{query}: {p}");
        }
    }
    let ok = s.get(&format!("{base}?max=100000&wait_ms=0"));
    assert_eq!(ok.status, 200, "{}", ok.text);
    // Stream credit beyond what a u64 holds is refused; within it, capped (documented).
    let p = s.get(&format!("/v1/groups/g/members/{m}/stream?credit=18446744073709551616"));
    p.problem(400);
}
