//! The HTTP API over real HTTP on loopback: each test starts the server in-process on
//! `127.0.0.1:0` with a fresh data directory and talks to it with a blocking client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use driftless_broker::BrokerConfig;
use serde_json::{json, Value};
use support::{config, read, start};

fn event(id: &str, subject: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/test", "type": "t.v1", "subject": subject,
           "data": {"n": id}})
}

fn id_of(d: &Value) -> &str {
    d["delivery_id"].as_str().unwrap()
}

fn event_id(d: &Value) -> &str {
    d["event"]["id"].as_str().unwrap()
}

#[test]
fn health_and_readiness() {
    let s = start(config(BrokerConfig::default()));
    let r = s.get("/healthz");
    assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    assert_eq!(s.get("/readyz").status, 200);
    s.get("/nope").problem(404);
    let r = read(s.agent.put(s.url("/v1/topics")).send("").unwrap());
    r.problem(405);
}

#[test]
fn produce_structured_batch_and_binary_with_idempotent_retry() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("orders", 2);
    let path = "/v1/topics/orders/events";
    let ce = [("content-type", "application/cloudevents+json")];
    let one = event("o-1", "order-1").to_string();
    let first = s.post_raw(path, &ce, one.as_bytes());
    assert_eq!(first.status, 200, "{}", first.text);
    let first = first.json()["results"][0].clone();
    assert_eq!(first["duplicate"], false);
    let again = s.post_raw(path, &ce, one.as_bytes()).json()["results"][0].clone();
    assert_eq!(again["duplicate"], true);
    assert_eq!((&again["partition"], &again["offset"]), (&first["partition"], &first["offset"]));

    let batch = s.produce(
        "orders",
        &[event("o-2", "order-2"), event("o-3", "order-3"), event("o-1", "order-1")],
    );
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["duplicate"], true);
    assert_eq!(results[2]["offset"], first["offset"]);

    let binary = s.post_raw(
        path,
        &[
            ("content-type", "application/octet-stream"),
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-1"),
            ("ce-source", "/test"),
            ("ce-type", "blob.v1"),
            ("ce-subject", "order-9"),
            ("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ],
        b"\x00\xffhi",
    );
    assert_eq!(binary.status, 200, "{}", binary.text);
    assert_eq!(binary.json()["results"][0]["duplicate"], false);
    assert_eq!(s.end_offsets("orders").iter().sum::<u64>(), 4);

    let m = s.join("reader", &["orders"]);
    let deliveries = s.fetch("reader", &m, 100, 0);
    assert_eq!(deliveries.len(), 4);
    let bin = deliveries.iter().find(|d| event_id(d) == "bin-1").unwrap();
    assert_eq!(bin["event"]["data_base64"], "AP9oaQ==");
    assert_eq!(bin["event"]["datacontenttype"], "application/octet-stream");
    assert_eq!(bin["event"]["subject"], "order-9");
    assert!(bin["event"]["traceparent"].as_str().unwrap().starts_with("00-0af7"));
}

#[test]
fn bad_input_is_answered_with_problems_and_appends_nothing() {
    let mut c = config(BrokerConfig::default());
    c.server.request_body_bytes_max = 4096;
    let s = start(c);
    s.create_topic("t", 1);
    let path = "/v1/topics/t/events";
    let ce = [("content-type", "application/cloudevents+json")];
    let batch = [("content-type", "application/cloudevents-batch+json")];

    let p = s.post_raw(path, &ce, b"{\"specversion\": \"1.0\",").problem(400);
    assert!(p["type"].as_str().unwrap().ends_with("malformed-json"), "{p}");
    assert!(p["line"].is_u64() && p["column"].is_u64(), "{p}");

    let p =
        s.post_raw(path, &ce, br#"{"specversion":"1.0","source":"/s","type":"t"}"#).problem(400);
    assert_eq!((p["field"].as_str(), p["event_index"].as_u64()), (Some("id"), Some(0)));

    let mut bad = event("b-3", "k");
    bad["time"] = json!("yesterday");
    let events = json!([event("b-1", "k"), event("b-2", "k"), bad, event("b-4", "k")]);
    let p = s.post_raw(path, &batch, events.to_string().as_bytes()).problem(400);
    assert_eq!((p["field"].as_str(), p["event_index"].as_u64()), (Some("time"), Some(2)), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("no event of the request was appended"));
    assert_eq!(s.end_offsets("t"), [0], "nothing of the rejected batch was appended");

    let big =
        json!({"specversion":"1.0","id":"x","source":"/s","type":"t","data":"a".repeat(8192)});
    s.post_raw(path, &ce, big.to_string().as_bytes()).problem(413);

    let p = s
        .post_raw("/v1/topics/missing/events", &ce, event("u-1", "k").to_string().as_bytes())
        .problem(404);
    assert_eq!(p["topic"], "missing");

    s.post_raw(path, &[("content-type", "text/plain")], b"hello").problem(415);

    let m = s.join("g", &["t"]);
    assert!(m.starts_with("m-"));
    let p = s.post("/v1/groups/g/seek", &json!({"topic": "t", "to": {"offset": 99}})).problem(400);
    assert!(p["type"].as_str().unwrap().ends_with("invalid-seek"), "{p}");
    assert_eq!(p["field"], "to");
    let p = s.post("/v1/groups/g/seek", &json!({"topic": "t", "to": "sideways"})).problem(400);
    assert_eq!(p["field"], "to");
    let p = s
        .post("/v1/groups/g/seek", &json!({"topic": "t", "to": "earliest", "partitions": 1}))
        .problem(400);
    assert_eq!(p["field"], "partitions");

    let p = s.post("/v1/topics", &json!({"name": "u", "partitons": 3})).problem(400);
    assert_eq!(p["field"], "partitons");
    s.post("/v1/topics", &json!({"name": "t"})).problem(409);
    let p = s.post("/v1/topics", &json!({"name": "__offsets"})).problem(400);
    assert_eq!(p["field"], "name");
    s.get("/v1/groups/nobody").problem(404);
    s.get("/v1/groups/g/members/m-nobody/events").problem(404);
    s.get("/v1/groups/g/members/x/events?max=abc").problem(400);
    s.post("/v1/groups/g/nack", &json!({"delivery_id": "t:0:5:1"})).problem(404);
    s.get("/v1/groups/g/dlq/t:0:5").problem(404);
}

/// Structured events are checked as text and stored as sent (no parse into a tree and
/// re-serialisation); the checks must still catch what the tree path caught, and a member that
/// occurs twice, which readers deserialising stored text into structs would trip on.
#[test]
fn raw_produced_events_are_stored_as_sent_and_repeated_attributes_are_refused() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("raw", 2);
    let path = "/v1/topics/raw/events";
    let batch = [("content-type", "application/cloudevents-batch+json")];
    let sent = r#"[
        {"specversion": "1.0", "id": "r-1", "source": "/s", "type": "t",
         "subject": "caf\u00e9", "sequence": 7, "data": {"n": [1, 2.5, null], "s": "a\"b"}},
        {"id":"r-2","specversion":"1.0","type":"t","source":"/s","partitionkey":"k","data":null}
    ]"#;
    let r = s.post_raw(path, &batch, sent.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text);
    let m = s.join("g", &["raw"]);
    let deliveries = s.fetch("g", &m, 10, 0);
    assert_eq!(deliveries.len(), 2);
    let expected: Vec<Value> = serde_json::from_str(sent).unwrap();
    for want in &expected {
        let got = deliveries.iter().find(|d| d["event"]["id"] == want["id"]).unwrap();
        assert_eq!(&got["event"], want);
    }
    assert_eq!(
        deliveries.iter().find(|d| event_id(d) == "r-1").unwrap()["event"]["subject"],
        "café"
    );

    let p = s.post_raw(path, &batch, br#"{"not": "an array"}"#).problem(400);
    assert!(p["detail"].as_str().unwrap().contains("must be a JSON array"), "{p}");
    let twice = format!(
        "[{},{}]",
        event("r-3", "k"),
        r#"{"specversion":"1.0","id":"r-4","id":"r-5","source":"/s","type":"t"}"#
    );
    let p = s.post_raw(path, &batch, twice.as_bytes()).problem(400);
    assert_eq!((p["field"].as_str(), p["event_index"].as_u64()), (Some("id"), Some(1)), "{p}");
    assert_eq!(s.end_offsets("raw").iter().sum::<u64>(), 2, "nothing of the refused batch");
}

/// Regression (flaky `a_configured_sink_projects_reports_pauses_and_resumes`: "peer
/// disconnected"): endpoints that take no body answered before reading one, and hyper then closed
/// the keep-alive connection, so the client's next request on it failed.
#[test]
fn a_post_whose_body_the_endpoint_ignores_keeps_the_connection_usable() {
    let s = start(config(BrokerConfig::default()));
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for round in 0..3 {
        // Headers first, the body a moment later, as a busy client's writes can arrive.
        let head = "POST /v1/sinks/nope/pause HTTP/1.1\r\nhost: localhost\r\n\
                    content-type: application/json\r\ncontent-length: 4\r\n\r\n";
        stream.write_all(head.as_bytes()).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(b"null").unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "round {round}: the server closed the connection");
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 404"), "round {round}: {text}");
        assert!(!text.to_ascii_lowercase().contains("connection: close"), "{text}");
    }
}

/// One request on a fresh connection; the response head, lowercased.
fn response_head(s: &support::Server, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (and close) before it reads the body: a refused write is fine.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_string()
}

/// Regression (flaky `every_operation_needs_its_scope_generated_from_the_route_table`: "peer
/// disconnected"): a refusal answered before the request's body was read (the guard, a body
/// over the limit) left hyper closing the keep-alive connection without saying so, and a
/// client that pooled it failed its next request. Every such answer now says
/// `Connection: close`; one whose body was read keeps the connection (the test above).
#[test]
fn a_request_refused_before_its_body_is_read_says_connection_close() {
    let mut c = config(BrokerConfig::default());
    c.server.request_body_bytes_max = 1024;
    let s = start(c);
    let post = |host: &str, len: usize| {
        format!(
            "POST /v1/topics HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n\
             content-length: {len}\r\n\r\n"
        )
    };
    let small = br#"{"name":"x"}"#;
    // Refused by the guard (a foreign Host), before any body is read.
    let head = response_head(&s, &post("attacker.example", small.len()), small);
    assert!(head.starts_with("http/1.1 421"), "{head}");
    assert!(head.contains("connection: close"), "guard refusal: {head}");
    // Refused for its size after part of the body: half of what the head announces is sent,
    // already over the limit.
    let part = vec![b' '; 2048];
    let head = response_head(&s, &post("localhost", 4096), &part);
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "body too large: {head}");
    // Read whole and refused by the handler: the connection stays usable.
    let head = response_head(&s, &post("localhost", 2), b"{}");
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(!head.contains("connection: close"), "a read body keeps the connection: {head}");
}

#[test]
fn long_poll_wakes_on_produce_then_ack_clears_lag() {
    let s = Arc::new(start(config(BrokerConfig::default())));
    s.create_topic("live", 1);
    let m = s.join("billing", &["live"]);
    let poller = {
        let (s, m) = (Arc::clone(&s), m.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let d = s.fetch("billing", &m, 10, 10_000);
            (d, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    s.produce("live", &[event("l-1", "k1")]);
    let (deliveries, waited) = poller.join().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    assert_eq!(id_of(&deliveries[0]), "live:0:0:1");

    let group = s.get("/v1/groups/billing").json();
    assert_eq!(group["partitions"][0]["lag_events"], 1);
    assert_eq!(group["partitions"][0]["inflight"], 1);
    let acked = s.ack("billing", &["live:0:0:1", "live:0:7:1"]);
    assert_eq!(acked["unknown"], json!(["live:0:7:1"]));
    let group = s.get("/v1/groups/billing").json();
    assert_eq!(group["partitions"][0]["lag_events"], 0);
    assert_eq!(group["partitions"][0]["committed"], 1);
    assert_eq!(s.get("/v1/groups").json(), json!(["billing"]));

    // A fetch with nothing to deliver waits for wait_ms, then answers empty.
    let started = Instant::now();
    assert!(s.fetch("billing", &m, 10, 300).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));

    assert_eq!(
        s.post(&format!("/v1/groups/billing/members/{m}/heartbeat"), &json!({})).status,
        200
    );
    assert_eq!(s.delete(&format!("/v1/groups/billing/members/{m}")).status, 204);
    s.delete(&format!("/v1/groups/billing/members/{m}")).problem(404);
}

#[test]
fn nack_retries_with_backoff_then_dead_letters_while_other_keys_flow() {
    let broker = BrokerConfig {
        max_attempts: 3,
        backoff_initial_ms: 50,
        backoff_max_ms: 100,
        ..BrokerConfig::default()
    };
    let s = start(config(broker));
    s.create_topic("pay", 1);
    s.produce("pay", &[event("a-1", "A"), event("b-1", "B")]);
    let m = s.join("g", &["pay"]);
    let first = s.fetch("g", &m, 10, 0);
    assert_eq!(first.iter().map(event_id).collect::<Vec<_>>(), ["a-1", "b-1"]);
    s.nack("g", id_of(&first[0]), "boom 1");
    s.ack("g", &[id_of(&first[1])]);
    let parked = s.get("/v1/groups/g").json();
    assert_eq!(parked["partitions"][0]["parked_keys"], 1);

    // Key B keeps flowing while key A backs off; A comes back after its backoff.
    let mut b_seen = 1;
    let mut a_attempts = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_attempts < 3 {
        assert!(Instant::now() < deadline, "retries did not arrive");
        b_seen += 1;
        s.produce("pay", &[event(&format!("b-{b_seen}"), "B")]);
        let mut got_b = false;
        for d in s.fetch("g", &m, 10, 2_000) {
            match event_id(&d) {
                "a-1" => {
                    a_attempts += 1;
                    assert_eq!(d["attempt"], a_attempts);
                    s.nack("g", id_of(&d), &format!("boom {a_attempts}"));
                }
                _ => {
                    got_b = true;
                    s.ack("g", &[id_of(&d)]);
                }
            }
        }
        if !got_b {
            for d in s.fetch("g", &m, 10, 2_000) {
                assert_ne!(event_id(&d), "a-1");
                s.ack("g", &[id_of(&d)]);
            }
        }
    }
    let dlq = s.get("/v1/groups/g/dlq").json();
    let dlq = dlq.as_array().unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["id"], "pay:0:0");
    assert_eq!(dlq[0]["attempts"], 3);
    assert_eq!(dlq[0]["errors"].as_array().unwrap().len(), 3);
    assert_eq!(s.get("/v1/groups/g/dlq/pay:0:0").json()["event"]["id"], "a-1");
    assert_eq!(s.get("/v1/groups/g").json()["dead_letters"], 1);

    // Key A flows again once its failing event is dead-lettered.
    s.produce("pay", &[event("a-2", "A")]);
    let d = s.fetch("g", &m, 10, 2_000);
    assert!(d.iter().any(|d| event_id(d) == "a-2"), "{d:?}");
    let ids: Vec<&str> = d.iter().map(id_of).collect();
    s.ack("g", &ids);

    // Retrying the dead letter delivers it again; acknowledging it empties the queue.
    let r = s.post("/v1/groups/g/dlq/pay:0:0/retry", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["state"], "retrying");
    let d = s.fetch("g", &m, 10, 2_000);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(event_id(&d[0]), "a-1");
    assert_eq!(d[0]["dead_letter_id"], "pay:0:0");
    s.ack("g", &[id_of(&d[0])]);
    assert_eq!(s.get("/v1/groups/g/dlq").json(), json!([]));
}

#[test]
fn discard_removes_a_dead_letter() {
    let broker = BrokerConfig { max_attempts: 1, ..BrokerConfig::default() };
    let s = start(config(broker));
    s.create_topic("d", 1);
    s.produce("d", &[event("x-1", "X")]);
    let m = s.join("g", &["d"]);
    let d = s.fetch("g", &m, 10, 0);
    s.nack("g", id_of(&d[0]), "fatal");
    assert_eq!(s.get("/v1/groups/g/dlq").json().as_array().unwrap().len(), 1);
    assert_eq!(s.delete("/v1/groups/g/dlq/d:0:0").status, 204);
    assert_eq!(s.get("/v1/groups/g/dlq").json(), json!([]));
    s.delete("/v1/groups/g/dlq/d:0:0").problem(404);
}

#[test]
fn seek_replays_from_earliest_and_by_time() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("r", 1);
    s.produce("r", &[event("r-1", "a"), event("r-2", "b")]);
    let m = s.join("g", &["r"]);
    let d = s.fetch("g", &m, 10, 0);
    let ids: Vec<&str> = d.iter().map(id_of).collect();
    s.ack("g", &ids);
    let r = s.post("/v1/groups/g/seek", &json!({"topic": "r", "to": "earliest"}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["moved"], json!([[0, 0]]));
    assert_eq!(s.fetch("g", &m, 10, 1_000).len(), 2);
    let r = s.post(
        "/v1/groups/g/seek",
        &json!({"topic": "r", "partition": 0, "to": {"time_ms": 4_000_000_000_000i64}}),
    );
    assert_eq!(r.json()["moved"], json!([[0, 2]]));
    s.post("/v1/groups/g/seek", &json!({"topic": "r", "partition": 7, "to": "latest"}))
        .problem(400);
}

/// Reads from a raw SSE connection until `window` has passed or `buf` holds `want` deliveries.
fn read_for(stream: &mut TcpStream, buf: &mut String, window: Duration, want: usize) {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let end = Instant::now() + window;
    let mut chunk = [0u8; 8192];
    while Instant::now() < end && buf.matches("event: delivery").count() < want {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.push_str(&String::from_utf8_lossy(&chunk[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits for `want` deliveries in all (up to 10 s).
fn expect_deliveries(stream: &mut TcpStream, buf: &mut String, want: usize) {
    read_for(stream, buf, Duration::from_secs(10), want);
    assert_eq!(buf.matches("event: delivery").count(), want, "{buf}");
}

/// Reads for `window` and checks no delivery beyond `want` arrived.
fn expect_no_more(stream: &mut TcpStream, buf: &mut String, want: usize, window: Duration) {
    read_for(stream, buf, window, want + 1);
    assert_eq!(buf.matches("event: delivery").count(), want, "{buf}");
}

#[test]
fn sse_stream_never_sends_more_than_the_credit() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("s", 1);
    let events: Vec<Value> = (0..5).map(|i| event(&format!("s-{i}"), &format!("k{i}"))).collect();
    s.produce("s", &events);
    let m = s.join("g", &["s"]);

    s.post(&format!("/v1/groups/g/members/{m}/credit"), &json!({"credit": 1})).problem(404);
    let mut sse = TcpStream::connect(s.addr).unwrap();
    write!(sse, "GET /v1/groups/g/members/{m}/stream?credit=2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    expect_deliveries(&mut sse, &mut text, 2);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
    expect_no_more(&mut sse, &mut text, 2, Duration::from_millis(700));

    let second = s.get(&format!("/v1/groups/g/members/{m}/stream?credit=1"));
    second.problem(409);

    // Acknowledging frees in-flight slots but grants no credit: still 2.
    s.ack("g", &["s:0:0:1", "s:0:1:1"]);
    expect_no_more(&mut sse, &mut text, 2, Duration::from_millis(500));

    let r = s.post(&format!("/v1/groups/g/members/{m}/credit"), &json!({"credit": 2}));
    assert_eq!(r.status, 200, "{}", r.text);
    expect_deliveries(&mut sse, &mut text, 4);
    expect_no_more(&mut sse, &mut text, 4, Duration::from_millis(500));

    s.post(&format!("/v1/groups/g/members/{m}/credit"), &json!({"credit": 100}));
    expect_deliveries(&mut sse, &mut text, 5);
    for i in 0..5 {
        assert!(text.contains(&format!("\"delivery_id\":\"s:0:{i}:1\"")), "{text}");
    }

    // Credit is capped at stream_credit_max; a new event arrives on the open stream.
    let r = s.post(&format!("/v1/groups/g/members/{m}/credit"), &json!({"credit": u64::MAX}));
    assert_eq!(r.json()["credit"], 10_000);
    s.produce("s", &[event("s-5", "k5")]);
    expect_deliveries(&mut sse, &mut text, 6);

    // After the client goes away, the member can open a new stream.
    drop(sse);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(s.addr).unwrap();
        write!(again, "GET /v1/groups/g/members/{m}/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut t = String::new();
        read_for(&mut again, &mut t, Duration::from_millis(200), 1);
        if t.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "stream stayed registered: {t}");
    }
}

#[test]
fn metrics_and_openapi_describe_the_server() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("m", 2);
    s.produce("m", &[event("m-1", "a")]);
    let member = s.join("g", &["m"]);
    s.fetch("g", &member, 10, 0);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.content_type.starts_with("text/plain"), "{}", r.content_type);
    for name in driftless_server::metrics::ALL {
        assert!(r.text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{}", r.text);
    }
    assert!(r.text.contains("driftless_produced_events_total{topic=\"m\"} 1"), "{}", r.text);
    assert!(
        r.text.contains("driftless_consumer_lag_events{group=\"g\",topic=\"m\",partition=\""),
        "{}",
        r.text
    );
    assert!(r.text.contains("driftless_inflight_deliveries{group=\"g\""), "{}", r.text);
    assert!(r.text.contains("driftless_log_fsync_seconds_count "), "{}", r.text);
    assert!(r.text.contains("driftless_log_fsync_seconds_bucket{le=\"+Inf\"}"), "{}", r.text);
    assert!(r.text.contains("# TYPE driftless_log_fsync_seconds histogram"), "{}", r.text);
    assert!(
        r.text.contains("driftless_partition_end_offset{topic=\"m\",partition=\"1\"}"),
        "{}",
        r.text
    );

    let doc = s.get("/v1/openapi.json").json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/session", "get"),
        ("/v1/session", "post"),
        ("/v1/session", "delete"),
        ("/v1/topics", "get"),
        ("/v1/topics", "post"),
        ("/v1/topics/{topic}", "get"),
        ("/v1/topics/{topic}", "delete"),
        ("/v1/topics/{topic}/events", "post"),
        ("/v1/groups", "get"),
        ("/v1/groups/{group}", "get"),
        ("/v1/groups/{group}", "delete"),
        ("/v1/groups/{group}/members", "post"),
        ("/v1/groups/{group}/members/{member}", "delete"),
        ("/v1/groups/{group}/members/{member}/heartbeat", "post"),
        ("/v1/groups/{group}/members/{member}/events", "get"),
        ("/v1/groups/{group}/members/{member}/stream", "get"),
        ("/v1/groups/{group}/members/{member}/credit", "post"),
        ("/v1/groups/{group}/ack", "post"),
        ("/v1/groups/{group}/nack", "post"),
        ("/v1/groups/{group}/seek", "post"),
        ("/v1/groups/{group}/dlq", "get"),
        ("/v1/groups/{group}/dlq/{id}", "get"),
        ("/v1/groups/{group}/dlq/{id}", "delete"),
        ("/v1/groups/{group}/dlq/{id}/retry", "post"),
        ("/v1/sources", "get"),
        ("/v1/sources/{source}", "get"),
        ("/v1/sources/{source}/pause", "post"),
        ("/v1/sources/{source}/resume", "post"),
        ("/v1/sinks", "get"),
        ("/v1/sinks/{sink}", "get"),
        ("/v1/sinks/{sink}/pause", "post"),
        ("/v1/sinks/{sink}/resume", "post"),
        ("/v1/sinks/{sink}/rebuild", "post"),
        ("/v1/reconciliations", "get"),
        ("/v1/reconciliations/{name}", "get"),
        ("/v1/reconciliations/{name}/run", "post"),
        ("/v1/audit", "get"),
        ("/v1/history", "get"),
    ];
    for (path, method) in expected {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path}");
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().unwrap().keys().filter(|k| *k != "parameters").count())
        .sum();
    assert_eq!(documented, expected.len(), "the document lists routes the server lacks");

    // Every documented route answers something other than "no such route".
    for (path, method) in expected {
        let concrete = path
            .replace("{topic}", "m")
            .replace("{group}", "g")
            .replace("{member}", &member)
            .replace("{id}", "m:0:0")
            .replace("{source}", "s")
            .replace("{sink}", "s")
            .replace("{name}", "r");
        if concrete.ends_with("/stream") {
            continue; // would stay open
        }
        let r = match method {
            "get" => s.get(&concrete),
            "post" => s.post(&concrete, &json!({})),
            _ => continue, // deletes would change the state other checks use
        };
        if r.status == 404 {
            let p = r.json();
            assert_ne!(p["type"], "urn:driftless:problem:no-such-route", "{method} {path}");
        }
    }
}

#[test]
fn shutdown_ends_long_polls_and_stops_serving() {
    let mut s = start(config(BrokerConfig::default()));
    s.create_topic("q", 1);
    let m = s.join("g", &["q"]);
    let base = s.base.clone();
    let poller = std::thread::spawn(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let started = Instant::now();
        let r = read(
            agent
                .get(format!("{base}/v1/groups/g/members/{m}/events?wait_ms=20000"))
                .call()
                .unwrap(),
        );
        (r.status, r.text, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.stop.take().unwrap().send(());
    let (status, text, waited) = poller.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(waited < Duration::from_secs(5), "the long-poll outlived shutdown: {waited:?}");
    let result =
        s.done.take().unwrap().into_inner().unwrap().recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(TcpStream::connect(s.addr).is_err(), "still accepting after shutdown");
}
