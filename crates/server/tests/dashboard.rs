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
        assert!(js.contains(&format!("\"{route}\"")), "the script does not poll {route}");
    }
    assert!(js.contains("`/v1/audit?limit="), "the script does not read the audit trail");
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
