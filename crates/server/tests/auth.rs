//! Authentication and authorization against a real server over real HTTP, with `[auth]
//! enabled = true` and a real tokens file.
//!
//! The acceptance test is generated from the route table: it walks every operation of the
//! OpenAPI document (each carries the scope the policy table gives it), checks that the
//! document and the policy table list the same routes, and sends each operation without a
//! token (401), with a token whose scopes do not cover it (403), and with exactly the needed
//! scope (neither; 2xx where the test sets the resource up). A new endpoint without a policy
//! row fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftless_auth::{OsRandom, TokenStore, DAY_MS};
use driftless_broker::BrokerConfig;
use serde_json::{json, Value};
use support::{config, read, start, Resp, Server};

struct Authed {
    server: Server,
    store: TokenStore,
    _tokens_dir: tempfile::TempDir,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn token(store: &TokenStore, name: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    store.create(name, &scopes, None, now_ms(), &mut OsRandom).unwrap().token.text
}

fn start_authed(broker: BrokerConfig) -> Authed {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("tokens.json");
    let store = TokenStore::new(&path);
    let mut c = config(broker);
    c.auth.enabled = true;
    c.auth.tokens_file = Some(path);
    Authed { server: start(c), store, _tokens_dir: dir }
}

/// One request with optional bearer token and cookie.
fn send(
    s: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    cookie: Option<&str>,
    body: Option<&Value>,
) -> (Resp, Vec<String>, Option<String>) {
    let url = s.url(path);
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    if let Some(c) = cookie {
        headers.push(("cookie".into(), format!("driftless_session={c}")));
    }
    let response = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" { s.agent.get(&url) } else { s.agent.delete(&url) };
            for (k, v) in &headers {
                r = r.header(k, v);
            }
            r.call().unwrap()
        }
        _ => {
            let mut r = s.agent.post(&url).header("content-type", "application/json");
            for (k, v) in &headers {
                r = r.header(k, v);
            }
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            r.send(bytes.as_bytes()).unwrap()
        }
    };
    let set_cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let challenge =
        response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let streaming = path.ends_with("/stream") && response.status() == 200;
    if streaming {
        // An SSE stream stays open: its status is all this test needs.
        let status = response.status().as_u16();
        let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        drop(response);
        let resp = Resp { status, content_type: ct.unwrap_or_default(), text: String::new() };
        return (resp, set_cookies, challenge);
    }
    (read(response), set_cookies, challenge)
}

/// The operations of the OpenAPI document: (METHOD, route, scope or `None` when public).
fn documented_operations() -> Vec<(String, String, Option<String>)> {
    let doc = driftless_server::openapi();
    let mut ops = Vec::new();
    for (route, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let public = op.get("security") == Some(&json!([]));
            let scope = op.get("x-driftless-scope").and_then(Value::as_str).map(str::to_string);
            assert!(
                public ^ scope.is_some(),
                "{method} {route}: every operation is either public or names its scope"
            );
            ops.push((method.to_uppercase(), route.clone(), scope));
        }
    }
    ops
}

/// Regression (this file's route-table test failed now and then with "peer disconnected"): a
/// POST refused 401 before its body was read left the connection unusable, and the client's
/// pool reused it for the next request. A pooled client alternating refused and accepted
/// POSTs never fails now.
#[test]
fn a_pooled_client_survives_requests_refused_before_their_body_is_read() {
    let a = start_authed(BrokerConfig::default());
    let admin = token(&a.store, "root", &["admin:*:*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    for round in 0..30 {
        let (r, _, _) =
            send(&a.server, "POST", "/v1/topics", None, None, Some(&json!({"name": "x"})));
        assert_eq!(r.status, 401, "round {round}");
        let r = a
            .server
            .agent
            .post(&a.server.url("/v1/topics"))
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {admin}"))
            .send(json!({"name": format!("t{round}")}).to_string().as_bytes());
        let r = r.unwrap_or_else(|e| panic!("round {round}: the pooled connection failed: {e}"));
        assert!(r.status().is_success(), "round {round}: {}", r.status());
    }
}

#[test]
fn the_policy_table_and_the_openapi_document_list_the_same_operations() {
    let documented: BTreeSet<(String, String)> =
        documented_operations().into_iter().map(|(m, r, _)| (m, r)).collect();
    let policy: BTreeSet<(String, String)> = driftless_server::authorization_policy_routes()
        .into_iter()
        .map(|(m, r)| (m.to_string(), r.to_string()))
        .collect();
    // The dashboard's shell and assets are not API operations; everything else must agree.
    let not_api: BTreeSet<(String, String)> =
        [("GET", "/"), ("GET", "/ui/{asset}")].map(|(m, r)| (m.into(), r.into())).into();
    let policy_api: BTreeSet<_> = policy.difference(&not_api).cloned().collect();
    assert_eq!(documented, policy_api, "operations documented vs. given a policy");
    assert!(documented.len() >= 39, "{} operations", documented.len());
}

/// A scope that does not cover `scope`: another operation that `admin` does not stand for.
fn lacking(scope: &str) -> String {
    let (op, rest) = scope.split_once(':').unwrap();
    let other = if op == "read" { "produce" } else { "read" };
    format!("{other}:{rest}")
}

#[test]
fn every_operation_needs_its_scope_generated_from_the_route_table() {
    let a = start_authed(BrokerConfig { max_attempts: 1, ..BrokerConfig::default() });
    let s = &a.server;
    let admin = token(&a.store, "root", &["admin:*:*"]);
    let mut operations = documented_operations();
    // Deletions last, so the resources the other operations use still exist.
    operations.sort_by_key(|(method, _, _)| method == "DELETE");
    // Tokens for every operation, made before the server looks (one reload covers them).
    let concrete_scope = |method: &str, scope: &str| {
        scope
            .replace("{topic}", if method == "DELETE" { "t-del" } else { "t" })
            .replace("{group}", "g")
            .replace("{source}", "src")
            .replace("{sink}", "snk")
            .replace("{name}", "rec")
            .replace("<name>", "t2")
    };
    let mut tokens = Vec::new();
    for (method, route, scope) in &operations {
        let Some(scope) = scope else {
            tokens.push(None);
            continue;
        };
        let exact = concrete_scope(method, scope);
        let mut scopes = vec![exact.clone()];
        if route == "/v1/groups/{group}/members" {
            scopes.push("consume:topic:t".into()); // joining also consumes the topics joined
        }
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let exact_token = token(&a.store, "exact", &scopes);
        let lacking_token = token(&a.store, "lacking", &[&lacking(&exact)]);
        // Right operation, another name (only for scopes that name one).
        let other_name = (!exact.ends_with(":*")).then(|| {
            let (prefix, _) = exact.rsplit_once(':').unwrap();
            token(&a.store, "elsewhere", &[&format!("{prefix}:zzz")])
        });
        tokens.push(Some((exact, exact_token, lacking_token, other_name)));
    }
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));

    // Resources the operations act on, made by the administrator.
    let setup = |method: &str, path: &str, body: Value| {
        let (r, _, _) = send(s, method, path, Some(&admin), None, Some(&body));
        assert!((200..300).contains(&r.status), "{method} {path}: {} {}", r.status, r.text);
        r
    };
    setup("POST", "/v1/topics", json!({"name": "t"}));
    setup("POST", "/v1/topics", json!({"name": "t-del"}));
    let event = json!({"specversion": "1.0", "id": "e1", "source": "s", "type": "x", "data": 1});
    let produce = s.post_raw(
        "/v1/topics/t/events",
        &[
            ("content-type", "application/cloudevents+json"),
            ("authorization", &format!("Bearer {admin}")),
        ],
        event.to_string().as_bytes(),
    );
    assert_eq!(produce.status, 200, "{}", produce.text);
    let member = setup("POST", "/v1/groups/g/members", json!({"topics": ["t"]})).json()
        ["member_id"]
        .as_str()
        .unwrap()
        .to_string();
    let leaver = setup("POST", "/v1/groups/g/members", json!({"topics": ["t"]})).json()
        ["member_id"]
        .as_str()
        .unwrap()
        .to_string();
    // One dead letter (max_attempts = 1): fetch the event, reject it.
    let fetched = setup("GET", &format!("/v1/groups/g/members/{member}/events?max=10"), json!({}));
    let deliveries = fetched.json()["deliveries"].as_array().unwrap().clone();
    let delivery = deliveries
        .first()
        .map(|d| d["delivery_id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| {
            let fetched =
                setup("GET", &format!("/v1/groups/g/members/{leaver}/events?max=10"), json!({}));
            fetched.json()["deliveries"][0]["delivery_id"].as_str().unwrap().to_string()
        });
    setup("POST", "/v1/groups/g/nack", json!({"delivery_id": delivery, "error": "no"}));
    let dlq_id =
        setup("GET", "/v1/groups/g/dlq", json!({})).json()[0]["id"].as_str().unwrap().to_string();

    // Operations expected to succeed with exactly their scope (the others may answer a
    // domain error, such as 404 for a sink that is not configured, but never 401 or 403).
    let must_succeed: BTreeSet<(&str, &str)> = [
        ("GET", "/metrics"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/topics"),
        ("POST", "/v1/topics"),
        ("GET", "/v1/topics/{topic}"),
        ("DELETE", "/v1/topics/{topic}"),
        ("POST", "/v1/topics/{topic}/events"),
        ("GET", "/v1/groups"),
        ("GET", "/v1/groups/{group}"),
        ("POST", "/v1/groups/{group}/members"),
        ("DELETE", "/v1/groups/{group}/members/{member}"),
        ("POST", "/v1/groups/{group}/members/{member}/heartbeat"),
        ("GET", "/v1/groups/{group}/members/{member}/events"),
        ("GET", "/v1/groups/{group}/members/{member}/stream"),
        ("POST", "/v1/groups/{group}/ack"),
        ("POST", "/v1/groups/{group}/seek"),
        ("GET", "/v1/groups/{group}/dlq"),
        ("GET", "/v1/groups/{group}/dlq/{id}"),
        ("GET", "/v1/sources"),
        ("GET", "/v1/sinks"),
        ("GET", "/v1/reconciliations"),
    ]
    .into();

    let mut checked = 0;
    for ((method, route, template), tokens) in operations.iter().zip(&tokens) {
        let template = template.clone().unwrap_or_default();
        let path = route
            .replace("{topic}", if method == "DELETE" { "t-del" } else { "t" })
            .replace("{group}", "g")
            .replace("{member}", if method == "DELETE" { &leaver } else { &member })
            .replace("{id}", &dlq_id)
            .replace("{source}", "src")
            .replace("{sink}", "snk")
            .replace("{name}", "rec");
        let body = match (method.as_str(), route.as_str()) {
            ("POST", "/v1/topics") => json!({"name": "t2"}),
            ("POST", "/v1/topics/{topic}/events") => {
                json!([{"specversion": "1.0", "id": "e2", "source": "s", "type": "x"}])
            }
            ("POST", "/v1/groups/{group}/members") => json!({"topics": ["t"]}),
            ("POST", "/v1/groups/{group}/ack") => json!({"delivery_ids": []}),
            ("POST", "/v1/groups/{group}/nack") => json!({"delivery_id": "t:0:9:1"}),
            ("POST", "/v1/groups/{group}/seek") => json!({"topic": "t", "to": "earliest"}),
            ("POST", "/v1/groups/{group}/members/{member}/credit") => json!({"credit": 1}),
            ("POST", "/v1/session") => json!({"token": admin}),
            _ => json!({}),
        };
        let produce_batch = route == "/v1/topics/{topic}/events";
        let call = |token: Option<&str>| {
            if produce_batch {
                let mut headers = vec![("content-type", "application/cloudevents-batch+json")];
                let auth = token.map(|t| format!("Bearer {t}"));
                if let Some(a) = &auth {
                    headers.push(("authorization", a));
                }
                let r = s.post_raw(&path, &headers, body.to_string().as_bytes());
                (r, Vec::new(), None)
            } else {
                send(s, method, &path, token, None, Some(&body))
            }
        };
        let Some((exact, exact_token, lacking_token, other_name)) = tokens else {
            let (r, _, _) = call(None);
            assert!(r.status != 401 && r.status != 403, "public {method} {route}: {}", r.status);
            continue;
        };
        let (r, _, challenge) = call(None);
        assert_eq!(r.status, 401, "{method} {route} without a token: {}", r.text);
        if !produce_batch {
            assert!(
                challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")),
                "{method} {route}"
            );
        }
        r.problem(401);
        let (r, _, _) = call(Some(lacking_token));
        assert_eq!(r.status, 403, "{method} {route} with `{}`: {}", lacking(exact), r.text);
        let p = r.problem(403);
        // The missing scope is named: with the resource's name, or (for a name in the body,
        // refused before the body is read) as the documented template.
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(exact.as_str()) || detail.contains(template.as_str()),
            "{method} {route}: {p}"
        );
        if let Some(other) = other_name {
            let (r, _, _) = call(Some(other));
            assert_eq!(r.status, 403, "{method} {route} with a grant on another name: {}", r.text);
        }
        let (r, _, _) = call(Some(exact_token));
        assert!(
            r.status != 401 && r.status != 403,
            "{method} {route} with `{exact}`: {} {}",
            r.status,
            r.text
        );
        if must_succeed.contains(&(method.as_str(), route.as_str())) {
            assert!(
                (200..300).contains(&r.status),
                "{method} {route} with `{exact}`: {} {}",
                r.status,
                r.text
            );
        }
        checked += 1;
    }
    assert!(checked >= 35, "{checked} operations checked");
}

#[test]
fn unknown_routes_need_authentication_before_they_answer_404() {
    let a = start_authed(BrokerConfig::default());
    let t = token(&a.store, "reader", &["read:topic:x"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let (r, _, _) = send(&a.server, "GET", "/v1/nothing-here", None, None, None);
    assert_eq!(r.status, 401, "{}", r.text);
    let (r, _, _) = send(&a.server, "GET", "/v1/nothing-here", Some(&t), None, None);
    assert_eq!(r.status, 404, "{}", r.text);
}

#[test]
fn joining_a_group_needs_consume_on_every_topic_joined() {
    let a = start_authed(BrokerConfig::default());
    let admin = token(&a.store, "root", &["admin:*:*"]);
    let only_group = token(&a.store, "c1", &["consume:group:g", "consume:topic:a"]);
    let both = token(&a.store, "c2", &["consume:group:g", "consume:topic:*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    for t in ["a", "b"] {
        let (r, _, _) =
            send(&a.server, "POST", "/v1/topics", Some(&admin), None, Some(&json!({"name": t})));
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let join = json!({"topics": ["a", "b"]});
    let (r, _, _) =
        send(&a.server, "POST", "/v1/groups/g/members", Some(&only_group), None, Some(&join));
    let p = r.problem(403);
    assert!(p["detail"].as_str().unwrap().contains("consume:topic:b"), "{p}");
    let (r, _, _) = send(&a.server, "POST", "/v1/groups/g/members", Some(&both), None, Some(&join));
    assert_eq!(r.status, 201, "{}", r.text);
}

#[test]
fn a_prefix_admin_creates_topics_inside_its_prefix_only() {
    let a = start_authed(BrokerConfig::default());
    let crm = token(&a.store, "crm-admin", &["admin:topic:crm.*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let (r, _, _) = send(
        &a.server,
        "POST",
        "/v1/topics",
        Some(&crm),
        None,
        Some(&json!({"name": "crm.orders"})),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let (r, _, _) =
        send(&a.server, "POST", "/v1/topics", Some(&crm), None, Some(&json!({"name": "billing"})));
    let p = r.problem(403);
    assert!(p["detail"].as_str().unwrap().contains("admin:topic:billing"), "{p}");
    // Listing needs read on every topic; a prefix grant does not give it.
    let (r, _, _) = send(&a.server, "GET", "/v1/topics", Some(&crm), None, None);
    r.problem(403);
}

#[test]
fn an_expired_token_is_refused() {
    let a = start_authed(BrokerConfig::default());
    // Created "a day ago" with a one-day expiry: it expires 1.5 s from now.
    let scopes = vec!["read:topic:*".to_string()];
    let created = a
        .store
        .create("short", &scopes, Some(1), now_ms() - DAY_MS + 1_500, &mut OsRandom)
        .unwrap();
    let t = created.token.text;
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let (r, _, _) = send(&a.server, "GET", "/v1/topics", Some(&t), None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    std::thread::sleep(Duration::from_millis(1_500));
    let (r, _, _) = send(&a.server, "GET", "/v1/topics", Some(&t), None, None);
    let p = r.problem(401);
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
}

#[test]
fn a_revoked_token_is_refused_within_a_second() {
    let a = start_authed(BrokerConfig::default());
    let t = token(&a.store, "soon-gone", &["read:topic:*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let (r, _, _) = send(&a.server, "GET", "/v1/topics", Some(&t), None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    TokenStore::new(a.store.path()).revoke("soon-gone").unwrap();
    let start = Instant::now();
    loop {
        let (r, _, _) = send(&a.server, "GET", "/v1/topics", Some(&t), None, None);
        if r.status == 401 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_secs(1), "still accepted after 1 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("revocation took effect after {:?}", start.elapsed());
}

fn cookie_of(set_cookies: &[String]) -> String {
    let c = set_cookies.iter().find(|c| c.starts_with("driftless_session=")).unwrap();
    c["driftless_session=".len()..].split(';').next().unwrap().to_string()
}

#[test]
fn a_session_cookie_is_http_only_strict_and_dies_with_its_token() {
    let a = start_authed(BrokerConfig::default());
    let t = token(&a.store, "operator", &["read:topic:*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let s = &a.server;
    let (r, set, _) = send(s, "POST", "/v1/session", None, None, Some(&json!({"token": t})));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["principal"], "operator");
    assert!(!r.text.contains(&t), "the token was echoed");
    assert_eq!(set.len(), 1, "{set:?}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set[0].contains(attr), "{attr} missing: {}", set[0]);
    }
    assert!(!set[0].contains("Secure"), "plaintext HTTP cannot carry a Secure cookie: {}", set[0]);
    let cookie = cookie_of(&set);
    assert_eq!(cookie.len(), 64, "256 random bits in hex");
    assert!(!t.contains(&cookie));
    let (r, _, _) = send(s, "GET", "/v1/topics", None, Some(&cookie), None);
    assert_eq!(r.status, 200, "{}", r.text);
    // The session has the token's grants, no more.
    let (r, _, _) = send(s, "POST", "/v1/topics", None, Some(&cookie), Some(&json!({"name": "x"})));
    r.problem(403);
    // Signing out ends it.
    let (r, set, _) = send(s, "DELETE", "/v1/session", None, Some(&cookie), None);
    assert_eq!(r.status, 204);
    assert!(set[0].contains("Max-Age=0"), "{set:?}");
    let (r, _, _) = send(s, "GET", "/v1/topics", None, Some(&cookie), None);
    r.problem(401);
    // A new session dies when its token is revoked.
    let (_, set, _) = send(s, "POST", "/v1/session", None, None, Some(&json!({"token": t})));
    let cookie = cookie_of(&set);
    let (r, _, _) = send(s, "GET", "/v1/topics", None, Some(&cookie), None);
    assert_eq!(r.status, 200);
    TokenStore::new(a.store.path()).revoke("operator").unwrap();
    let start = Instant::now();
    loop {
        let (r, _, _) = send(s, "GET", "/v1/topics", None, Some(&cookie), None);
        if r.status == 401 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1), "the session outlived its token");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A wrong token does not sign in, and is not echoed.
    let wrong = format!("dlt_{}_{}", "0".repeat(16), "1".repeat(64));
    let (r, set, _) = send(s, "POST", "/v1/session", None, None, Some(&json!({"token": wrong})));
    r.problem(401);
    assert!(set.is_empty() && !r.text.contains(&wrong), "{set:?} {}", r.text);
}

#[test]
fn refusals_are_counted_by_reason_and_no_token_reaches_the_metrics() {
    let a = start_authed(BrokerConfig::default());
    let root = token(&a.store, "root", &["admin:*:*"]);
    let reader = token(&a.store, "reader", &["read:group:*"]);
    std::thread::sleep(Duration::from_millis(driftless_auth::RELOAD_CHECK_MS + 100));
    let unknown = format!("dlt_{}_{}", "a".repeat(16), "b".repeat(64));
    send(&a.server, "GET", "/v1/topics", Some(&unknown), None, None);
    send(&a.server, "GET", "/v1/topics", None, None, None);
    send(&a.server, "GET", "/v1/topics", Some(&reader), None, None);
    let (r, _, _) = send(&a.server, "GET", "/metrics", Some(&root), None, None);
    assert_eq!(r.status, 200, "{}", r.text);
    for line in [
        "driftless_auth_denied_total{reason=\"unknown\"} 1",
        "driftless_auth_denied_total{reason=\"missing\"} 1",
        "driftless_auth_denied_total{reason=\"forbidden\"} 1",
    ] {
        assert!(r.text.contains(line), "{line} missing:\n{}", r.text);
    }
    for secret in [&unknown, &root, &reader] {
        assert!(!r.text.contains(secret.as_str()));
        assert!(!r.text.contains(&secret[4..20]), "a token id in the metrics");
    }
}

#[test]
fn without_auth_every_request_is_allowed_as_before() {
    let s = start(config(BrokerConfig::default()));
    assert_eq!(s.get("/v1/topics").status, 200);
    s.create_topic("free", 1);
    let r = s.post("/v1/session", &json!({"token": "x"}));
    r.problem(409);
}

#[test]
fn a_server_refuses_to_start_on_an_invalid_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    std::fs::write(&path, "{\"version\": 2, \"tokens\": []}").unwrap();
    let mut c = config(BrokerConfig::default());
    c.auth.enabled = true;
    c.auth.tokens_file = Some(path.clone());
    let s = start(c);
    let result = s.done.as_ref().unwrap().lock().unwrap().recv_timeout(Duration::from_secs(20));
    let err = result.unwrap().unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("version 2"), "{err}");
    let _ = Path::new("");
}
