#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The dashboard as the server serves it: `/` is the page with every panel, its files load from
//! `/ui/` with their content types and `cache-control: no-cache`, nothing comes from another
//! origin, the script never parses API data as HTML, and the `/v1` API is unchanged by it.

mod support;

use driftless_broker::BrokerConfig;
use support::{config, start, Server};

/// GET `path`: (status, headers as lowercase `name: value` lines, body).
fn fetch(s: &Server, path: &str) -> (u16, Vec<String>, String) {
    let mut r = s.agent.get(s.url(path)).call().unwrap();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| format!("{}: {}", k.as_str(), v.to_str().unwrap_or("?")))
        .collect();
    (r.status().as_u16(), headers, r.body_mut().read_to_string().unwrap())
}

fn has(headers: &[String], line: &str) -> bool {
    headers.iter().any(|h| h == line)
}

#[test]
fn the_page_at_root_has_every_panel_and_its_files_load() {
    let s = start(config(BrokerConfig::default()));
    let (status, headers, html) = fetch(&s, "/");
    assert_eq!(status, 200, "{html}");
    assert!(has(&headers, "content-type: text/html; charset=utf-8"), "{headers:?}");
    assert!(has(&headers, "cache-control: no-cache"), "{headers:?}");
    assert!(headers.iter().any(|h| h.starts_with("content-security-policy: default-src 'self'")));
    assert!(html.starts_with("<!doctype html>"), "{html}");
    for testid in [
        "panel-projections",
        "projections-empty",
        "panel-flow",
        "flow-sources",
        "panel-throughput",
        "panel-lag",
        "panel-sources",
        "panel-topics",
        "panel-groups",
        "panel-dlq",
        "panel-reconciliations",
        "chart-throughput",
        "chart-lag",
        "updated",
        "error-banner",
        "dlq-detail",
        "reconciliations-empty",
        "panel-audit",
        "audit-empty",
        "login-form",
        "login-token",
        "login-submit",
        "logout",
    ] {
        assert!(html.contains(&format!("data-testid=\"{testid}\"")), "no {testid} in the page");
    }

    let assets = [("/ui/dashboard.css", "text/css"), ("/ui/dashboard.js", "text/javascript")];
    for (path, kind) in assets {
        assert!(html.contains(&format!("\"{path}\"")), "the page does not load {path}");
        let (status, headers, body) = fetch(&s, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(has(&headers, &format!("content-type: {kind}; charset=utf-8")), "{headers:?}");
        assert!(has(&headers, "cache-control: no-cache"), "{path}: {headers:?}");
        assert!(body.len() > 1_000, "{path} is suspiciously small");
    }
    let (_, _, js) = fetch(&s, "/ui/dashboard.js");
    for route in ["/v1/topics", "/v1/groups", "/v1/sources", "/v1/sinks", "/v1/reconciliations"] {
        // (`/v1/history` is asked with its window: `/v1/history?seconds=`.)
        assert!(js.contains(&format!("\"{route}\"")), "the script does not poll {route}");
    }
    assert!(js.contains("`/v1/audit?limit="), "the script does not read the audit trail");
    assert!(js.contains("`/v1/history?seconds="), "the script does not read the server's history");
    assert!(js.contains("/retry`"), "the script cannot retry a dead letter");
    for parses_html in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!js.contains(parses_html), "the script must not insert HTML ({parses_html})");
    }

    // The token field is a password field the browser does not fill or remember, and the form
    // is never submitted natively (that could put the token in a URL).
    let field = html.split("data-testid=\"login-token\"").nth(1).unwrap_or("");
    let field = &field[..field.find('>').unwrap_or(0)];
    assert!(html.contains("type=\"password\" id=\"login-token\""), "{html}");
    assert!(field.contains("autocomplete=\"off\""), "{field}");
    assert!(js.contains("event.preventDefault()"), "the sign-in form must not submit natively");

    let (status, _, body) = fetch(&s, "/ui/nope.js");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no-such-asset"), "{body}");
    s.get("/ui/../Cargo.toml").problem(404);
}

/// The sign-in token goes only to `POST /v1/session` as JSON, and is never stored where a script
/// or a URL keeps it.
#[test]
fn the_sign_in_token_is_posted_as_json_and_never_stored() {
    let s = start(config(BrokerConfig::default()));
    let (_, _, js) = fetch(&s, "/ui/dashboard.js");
    assert!(js.contains("api(\"POST\", \"/v1/session\", { token })"), "sign-in request");
    assert!(js.contains("headers[\"content-type\"] = \"application/json\""));
    assert!(js.contains("api(\"DELETE\", \"/v1/session\")"), "sign-out request");
    for keeps in [
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "location.hash",
        "location.search",
        "history.pushState",
        "history.replaceState",
    ] {
        assert!(!js.contains(keeps), "the script must not use {keeps}");
    }
    // The field is cleared as soon as it is read.
    let read = js.find("const token = field.value").expect("the token is read from the field");
    let cleared = js.find("field.value = \"\"").expect("the field is cleared");
    assert!(cleared > read && cleared - read < 80, "cleared right after it is read");
}

#[test]
fn the_dashboard_loads_nothing_from_another_origin() {
    let s = start(config(BrokerConfig::default()));
    for path in ["/", "/ui/dashboard.css", "/ui/dashboard.js"] {
        let (_, _, body) = fetch(&s, path);
        // The SVG namespace is a name, not something fetched.
        let stripped = body.replace("\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http://", "https://", "//cdn", "@import", "url("] {
            assert!(!stripped.contains(needle), "{path} refers to {needle}");
        }
    }
}

#[test]
fn the_api_is_unchanged_beside_the_dashboard() {
    let s = start(config(BrokerConfig::default()));
    s.get("/v1").problem(404);
    s.get("/ui").problem(404);
    let r = s.post("/", &serde_json::json!({}));
    r.problem(405);
    let doc = s.get("/v1/openapi.json").json();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| p != "/" && !p.starts_with("/ui")), "{:?}", paths.keys());
}

/// `GET /v1/history?seconds=60`, once the sampler has taken a sample after `done` holds.
fn history_when(
    s: &Server,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let h = s.get("/v1/history?seconds=60");
        assert_eq!(h.status, 200, "{}", h.text);
        let h = h.json();
        if done(&h) {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "waited 30 s for {what}: {h}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The events a rate series stands for: each value times the time since the sample before.
fn area(h: &serde_json::Value, family: &str, name: &str) -> f64 {
    let times: Vec<i64> =
        h["times_ms"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    let Some(values) = h[family]["series"][name].as_array() else { return 0.0 };
    assert_eq!(values.len(), times.len(), "a series lines up with the sample times: {h}");
    let interval = h["interval_ms"].as_i64().unwrap();
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let dt = if i == 0 { interval } else { times[i] - times[i - 1] };
            v.as_f64().map(|v| v * dt as f64 / 1000.0)
        })
        .sum()
}

#[test]
fn the_server_keeps_a_burst_in_its_history_before_anyone_asks() {
    let s = start(config(BrokerConfig::default()));
    // The sampler's first sample sets the baseline (events older than it are not counted).
    history_when(&s, "the first sample", |h| !h["times_ms"].as_array().unwrap().is_empty());
    s.create_topic("burst", 2);
    s.join("readers", &["burst"]);
    let events: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            serde_json::json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/t",
            "type": "t.v1", "subject": format!("k{i}")})
        })
        .collect();
    s.produce("burst", &events);

    // Nobody asked while it happened; the server sampled it anyway.
    let h = history_when(&s, "the burst in the produce rate", |h| {
        area(h, "produce_rate", "burst") >= 299.0 && h["lag_events"]["series"]["readers"].is_array()
    });
    let total = area(&h, "produce_rate", "burst");
    assert!((total - 300.0).abs() < 3.0, "the rate integrates to the 300 events: {total} ({h})");
    let peak = h["produce_rate"]["series"]["burst"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .fold(0.0, f64::max);
    assert!(peak >= 100.0, "a burst of 300 within a second or two peaks high: {peak}");
    let lags = h["lag_events"]["series"]["readers"].as_array().unwrap();
    assert_eq!(lags.last().unwrap(), &serde_json::json!(300.0), "{h}");
    assert_eq!(h["dead_letters"]["series"]["readers"].as_array().unwrap().last().unwrap(), 0.0);
    assert_eq!(h["seconds_max"], 3600);
    assert!(h["started_ms"].as_i64().unwrap() > 0);

    // The window asked for is the window answered.
    let short = s.get("/v1/history?seconds=1").json();
    assert_eq!(short["times_ms"].as_array().unwrap().len(), 1, "{short}");
    for bad in ["0", "3601", "-1", "many"] {
        let p = s.get(&format!("/v1/history?seconds={bad}")).problem(400);
        assert!(p["detail"].as_str().unwrap().contains("seconds"), "{p}");
    }
}

#[test]
fn history_is_bounded_whatever_the_topic_count_and_says_what_it_merged() {
    let s = start(config(BrokerConfig::default()));
    let topics = 40;
    for i in 0..topics {
        s.create_topic(&format!("t{i:02}"), 1);
    }
    let h = history_when(&s, "a sample of every topic", |h| {
        h["produce_rate"]["merged_into_other"].as_u64().unwrap_or(0) > 0
    });
    let series = h["produce_rate"]["series"].as_object().unwrap();
    let max = h["series_max"].as_u64().unwrap() as usize;
    assert_eq!(series.len(), max + 1, "{max} named series and (other): {:?}", series.keys());
    assert!(series.contains_key("(other)"), "{:?}", series.keys());
    assert_eq!(h["produce_rate"]["merged_into_other"], topics - max, "{h}");
}
