//! Cross-site and rebinding safety over real HTTP (issue 21): no web page in an operator's
//! browser can drive the API, with or without authentication. A foreign `Host` is refused (DNS
//! rebinding), so is a foreign `Origin` or a cross-site `Sec-Fetch-Site` on every endpoint —
//! the list comes from the OpenAPI document, so a new endpoint is covered without editing this
//! file — and a body not declared JSON is refused 415. Requests from curl and the CLI (no
//! `Origin`, no `Sec-Fetch-Site`) and from the server's own pages still work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use driftless_broker::BrokerConfig;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::{config, start, Server};

/// Sends one raw HTTP/1.1 request (any `Host`, any header) and returns the status and body.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn problem_type(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|p| p["type"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn own_host(s: &Server) -> String {
    s.addr.to_string()
}

/// The committed position of each of a group's partitions.
fn positions(s: &Server, group: &str) -> Vec<u64> {
    let r = s.get(&format!("/v1/groups/{group}"));
    assert_eq!(r.status, 200, "{}", r.text);
    let partitions = r.json()["partitions"].as_array().unwrap().clone();
    partitions.iter().map(|p| p["committed"].as_u64().unwrap()).collect()
}

/// The first request of the issue moved a sink's group to `latest`, skipping its events.
#[test]
fn a_cross_origin_text_plain_seek_is_refused_and_the_group_does_not_move() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("t", 1);
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/s", "type": "t"}))
        .collect();
    s.produce("t", &events);
    let _member = s.join("sink-crm", &["t"]);
    let before = positions(&s, "sink-crm");
    assert_eq!(before, [0]);
    let seek = br#"{"topic":"t","to":"latest"}"#;
    let host = own_host(&s);
    let (status, body) = raw(
        s.addr,
        "POST",
        "/v1/groups/sink-crm/seek",
        &[("Host", &host), ("Content-Type", "text/plain"), ("Origin", "http://evil.example")],
        seek,
    );
    assert_eq!(status, 403, "{body}");
    assert!(problem_type(&body).ends_with("cross-origin-refused"), "{body}");
    assert_eq!(positions(&s, "sink-crm"), before);
    // Without the Origin, the text/plain body alone is refused too.
    let (status, body) = raw(
        s.addr,
        "POST",
        "/v1/groups/sink-crm/seek",
        &[("Host", &host), ("Content-Type", "text/plain")],
        seek,
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(positions(&s, "sink-crm"), before);
    // The same seek, declared JSON, from the server's own origin: it moves (the check can fail).
    let own = format!("http://{host}");
    let (status, body) = raw(
        s.addr,
        "POST",
        "/v1/groups/sink-crm/seek",
        &[("Host", &host), ("Content-Type", "application/json"), ("Origin", &own)],
        seek,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(positions(&s, "sink-crm"), [3]);
}

/// The second request of the issue: DNS rebinding reached the API under a foreign name.
#[test]
fn a_foreign_host_is_refused_and_the_loopback_names_are_not() {
    let s = start(config(BrokerConfig::default()));
    let (status, body) =
        raw(s.addr, "GET", "/v1/topics", &[("Host", "attacker.example:7070")], b"");
    assert_eq!(status, 421, "{body}");
    assert!(problem_type(&body).ends_with("host-not-allowed"), "{body}");
    assert!(body.contains("allowed_hosts"), "the refusal says what to configure: {body}");
    let (status, body) = raw(s.addr, "GET", "/v1/topics", &[], b"");
    assert_eq!(status, 400, "no Host: {body}");
    for host in ["localhost:7070", "127.0.0.1", "[::1]:1", &own_host(&s)] {
        let (status, body) = raw(s.addr, "GET", "/v1/topics", &[("Host", host)], b"");
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[test]
fn configured_hosts_and_origins_are_accepted() {
    let mut c = config(BrokerConfig::default());
    c.server.allowed_hosts = vec!["driftless.internal".into()];
    c.server.allowed_origins = vec!["https://console.example".into()];
    let s = start(c);
    let (status, body) =
        raw(s.addr, "GET", "/v1/topics", &[("Host", "Driftless.Internal:7070")], b"");
    assert_eq!(status, 200, "{body}");
    let create = br#"{"name":"from-console"}"#;
    let headers = [
        ("Host", "driftless.internal"),
        ("Origin", "https://console.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Content-Type", "application/json"),
    ];
    let (status, body) = raw(s.addr, "POST", "/v1/topics", &headers, create);
    assert_eq!(status, 201, "{body}");
    let mut other = headers;
    other[1] = ("Origin", "https://other.example");
    let (status, body) = raw(s.addr, "POST", "/v1/topics", &other, br#"{"name":"from-other"}"#);
    assert_eq!(status, 403, "{body}");
    assert_eq!(s.get("/v1/topics/from-other").status, 404);
}

/// Every operation of the OpenAPI document, with its path parameters filled in.
fn operations(s: &Server) -> Vec<(String, String)> {
    let doc = s.get("/v1/openapi.json").json();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: Vec<String> = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x".into() } else { seg.to_string() })
            .collect();
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push((method.to_ascii_uppercase(), concrete.join("/")));
            }
        }
    }
    ops
}

/// A cross-origin `text/plain` request — what any web page can send without a CORS preflight —
/// is refused by every endpoint, before it does anything; and a cross-site one without `Origin`
/// (`<img>`, no-cors) too. Without those headers the same request is not refused by the guard,
/// and a `text/plain` body is refused 415 by every endpoint that takes `POST`.
#[test]
fn a_cross_origin_text_plain_request_to_every_endpoint_is_refused() {
    let s = start(config(BrokerConfig::default()));
    s.create_topic("x", 1);
    let ops = operations(&s);
    let posts = ops.iter().filter(|(m, _)| m == "POST").count();
    let deletes = ops.iter().filter(|(m, _)| m == "DELETE").count();
    assert!(posts >= 10 && deletes >= 3, "{ops:?}");
    let host = own_host(&s);
    let body = br#"{"name":"y","topics":["x"],"topic":"x","to":"latest"}"#;
    for (method, path) in &ops {
        for foreign in [
            ("Origin", "http://evil.example"),
            ("Origin", "null"),
            ("Sec-Fetch-Site", "cross-site"),
        ] {
            let headers = [("Host", host.as_str()), ("Content-Type", "text/plain"), foreign];
            let (status, answer) = raw(s.addr, method, path, &headers, body);
            assert_eq!(status, 403, "{method} {path} {foreign:?}: {answer}");
            assert!(problem_type(&answer).ends_with("cross-origin-refused"), "{answer}");
        }
        if method == "GET" {
            continue; // long-polls and streams would wait: the refusal above is the point
        }
        let (status, answer) = if method == "POST" {
            raw(s.addr, method, path, &[("Host", &host), ("Content-Type", "text/plain")], body)
        } else {
            raw(s.addr, method, path, &[("Host", &host)], b"")
        };
        let refused_by_guard = problem_type(&answer).ends_with("cross-origin-refused");
        assert!(!refused_by_guard, "{method} {path}: {answer}");
        if method == "POST" {
            assert_eq!(status, 415, "{method} {path}: {answer}");
        }
    }
    // No POST created anything.
    assert_eq!(s.get("/v1/topics/y").status, 404);
    assert_eq!(s.get("/v1/groups").json(), json!([]));
}

/// The server's own pages, curl and the CLI keep working: same-origin requests, requests with
/// no `Origin`, `application/*+json` bodies, and body-less POSTs without a content type.
#[test]
fn same_origin_and_headerless_requests_still_work() {
    let s = start(config(BrokerConfig::default()));
    let host = own_host(&s);
    let own = format!("http://{host}");
    let same =
        [("Host", host.as_str()), ("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")];
    let (status, body) = raw(s.addr, "GET", "/v1/topics", &same, b"");
    assert_eq!(status, 200, "{body}");
    let mut create = same.to_vec();
    create.push(("Content-Type", "application/merge-patch+json; charset=utf-8"));
    let (status, body) = raw(s.addr, "POST", "/v1/topics", &create, br#"{"name":"a"}"#);
    assert_eq!(status, 201, "{body}");
    // A top-level navigation to the dashboard from a link on another site shows the page.
    let nav =
        [("Host", host.as_str()), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate")];
    let (status, body) = raw(s.addr, "GET", "/", &nav, b"");
    assert_eq!(status, 200, "{body}");
    // A body-less POST with no content type (the CLI's `group`/`sink` verbs) is not a 415.
    let member = s.join("g", &["a"]);
    let path = format!("/v1/groups/g/members/{member}/heartbeat");
    let (status, body) = raw(s.addr, "POST", &path, &[("Host", &host)], b"");
    assert_eq!(status, 200, "{body}");
    // Binary-mode CloudEvents keep any content type.
    let binary = [
        ("Host", host.as_str()),
        ("Content-Type", "text/plain"),
        ("ce-specversion", "1.0"),
        ("ce-id", "b1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let (status, body) = raw(s.addr, "POST", "/v1/topics/a/events", &binary, b"hello");
    assert_eq!(status, 200, "{body}");
}

/// The canonical name of a `Host` value as a simple model sees it, or `None` if malformed.
fn model_host(value: &str) -> Option<String> {
    use std::net::Ipv6Addr;
    let v = value.to_ascii_lowercase();
    if let Ok(ip) = v.parse::<Ipv6Addr>() {
        return Some(format!("[{ip}]"));
    }
    let (name, port) = if let Some(rest) = v.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = inside.parse().ok()?;
        let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
        (format!("[{ip}]"), port)
    } else {
        match v.rsplit_once(':') {
            Some((n, p)) => (n.to_string(), Some(p)),
            None => (v.clone(), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u16>().ok()?;
    }
    Some(name)
}

fn host_strategy() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "localhost",
        "LocalHost",
        "127.0.0.1",
        "[::1]",
        "::1",
        "attacker.example",
        "127.0.0.1.nip.io",
        "localhost.",
        "evil",
        "[::2]",
        "10.0.0.1",
        "127.0.0.2",
        "0.0.0.0",
        "[0:0:0:0:0:0:0:1]",
    ]);
    let ports = prop::sample::select(vec!["", ":7070", ":1", ":65535", ":65536", ":x", ":"]);
    prop_oneof![(names, ports).prop_map(|(n, p)| format!("{n}{p}")), "[a-zA-Z0-9.:\\[\\]_-]{0,24}",]
}

fn origin_strategy(port: u16) -> impl Strategy<Value = String> {
    let own = format!("http://127.0.0.1:{port}");
    prop_oneof![
        Just(own.clone()),
        Just(own.to_ascii_uppercase()),
        Just("null".to_string()),
        Just(format!("https://127.0.0.1:{port}")),
        Just(format!("http://localhost:{port}")),
        Just("http://127.0.0.1".to_string()),
        "(http|https|ftp)://[a-z0-9.:]{0,20}",
        "[ -~]{0,30}",
    ]
}

/// Over real HTTP, for arbitrary `Host` and `Origin` values: a request is served exactly when
/// its `Host` names loopback (any case, any valid port) and its `Origin`, if any, is the
/// server's own; everything else is refused with a problem, never served.
#[test]
fn arbitrary_host_and_origin_values_are_served_only_when_they_are_ours() {
    let s = start(config(BrokerConfig::default()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(96));
    runner
        .run(&host_strategy(), |host| {
            let expected = model_host(&host)
                .is_some_and(|n| ["localhost", "127.0.0.1", "[::1]"].contains(&n.as_str()));
            let (status, body) = raw(s.addr, "GET", "/v1/topics", &[("Host", &host)], b"");
            if expected {
                prop_assert_eq!(status, 200, "{:?}: {}", host, body);
            } else {
                prop_assert!(status == 421 || status == 400, "{:?}: {} {}", host, status, body);
            }
            Ok(())
        })
        .unwrap();
    let port = s.addr.port();
    let own = format!("http://127.0.0.1:{port}");
    let host = own_host(&s);
    runner
        .run(&origin_strategy(port), |origin| {
            let origin = origin.trim().to_string();
            let (status, body) =
                raw(s.addr, "GET", "/v1/topics", &[("Host", &host), ("Origin", &origin)], b"");
            if origin.to_ascii_lowercase() == own {
                prop_assert_eq!(status, 200, "{:?}: {}", origin, body);
            } else {
                prop_assert_eq!(status, 403, "{:?}: {}", origin, body);
            }
            Ok(())
        })
        .unwrap();
}
