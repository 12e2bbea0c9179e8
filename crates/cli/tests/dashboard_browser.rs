#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! The dashboard in a real browser: the real `driftless serve` with `max_attempts = 1`, a topic
//! with events, a group that dead-lettered one of them, and Debian's Chromium driven through
//! ChromeDriver's W3C WebDriver HTTP API. The page shows the topic, its live produce rate and the
//! group; inspecting the dead letter shows its event and error history; its retry button
//! delivers the event to the group again, and the audit panel shows that retry (who, what,
//! outcome) as the newest administrative action; acknowledging it empties the queue on the page;
//! a stopped server raises the error banner. With authentication on, a second test signs in: the
//! page shows the sign-in form, the token typed into it opens a session whose cookie the page's
//! script cannot read, the figures appear for the signed-in principal, and signing out brings the
//! form back. A screenshot goes to `target/artifacts/dashboard.png`.
//!
//! Invariants of the harness: every wait polls with a deadline and fails naming what it waited
//! for; ChromeDriver runs in its own process group, which is killed with Chromium in it on drop,
//! also when an assertion fails; the browser's profile and config live in a fresh temporary
//! directory.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{agent, free_port, ServeProcess};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long any one condition may take to hold (a browser on a busy 2-core machine is slow).
const WAIT: Duration = Duration::from_secs(45);

/// Polls `f` every 100 ms until it returns `Some`, for at most [`WAIT`]; panics naming `what`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- the JSON API ------------------------------------------------------------------------------

/// A client of the server's JSON API.
struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        Self { agent: agent(Duration::from_secs(30)), base: base.to_string() }
    }

    fn call(&self, method: &str, path: &str, body: Option<(&str, String)>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, Some((content_type, body))) => {
                self.agent.post(&url).header("content-type", content_type).send(body)
            }
            (_, None) => self.agent.post(&url).send_empty(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = r.body_mut().read_to_string().unwrap();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() };
        (r.status().as_u16(), value)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, Some(("application/json", body.to_string())))
    }

    fn produce(&self, topic: &str, events: &[Value]) -> (u16, Value) {
        let body = Value::Array(events.to_vec()).to_string();
        let path = format!("/v1/topics/{topic}/events");
        self.call("POST", &path, Some(("application/cloudevents-batch+json", body)))
    }

    fn fetch(&self, group: &str, member: &str) -> Vec<Value> {
        let (status, body) =
            self.get(&format!("/v1/groups/{group}/members/{member}/events?max=100&wait_ms=500"));
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    fn ack(&self, group: &str, delivery_ids: &[&str]) {
        let (status, body) =
            self.post(&format!("/v1/groups/{group}/ack"), &json!({"delivery_ids": delivery_ids}));
        assert_eq!(status, 200, "{body}");
    }
}

fn event(id: &str, subject: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.placed.v1",
           "subject": subject, "data": {"order": id, "customer": subject}})
}

/// Produces small batches to a topic until dropped, so the page has a live rate to show.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    fn start(base: &str, topic: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, api) = (Arc::clone(&stop), Api::new(base));
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let batch: Vec<Value> =
                    (0..25).map(|i| event(&format!("c-{n}-{i}"), &format!("s-{i}"))).collect();
                if api.produce(topic, &batch).0 != 200 {
                    return;
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the browser -------------------------------------------------------------------------------

/// ChromeDriver in its own process group; on drop the whole group (Chromium included) is killed.
struct Driver {
    child: Child,
    base: String,
    /// Reaped already: its pid no longer names our group, so it must not be signalled.
    exited: bool,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.exited {
            // The group's id is the leader's pid (`process_group(0)`), not reaped yet; Chromium
            // and its helpers stay in the group.
            let group = format!("-{}", self.child.id());
            let _ =
                Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One headless Chromium session.
struct Browser {
    agent: ureq::Agent,
    session: String,
    // Dropped after the session is deleted, in this order: the driver, then the profile.
    driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for path in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install chromium and chromium-driver \
                 (scripts/install-test-deps.sh)"
            );
        }
        let profile = tempfile::tempdir().unwrap();
        let agent = agent(Duration::from_secs(90));
        let driver = Self::start_driver(&agent, profile.path());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().join("user-data").display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let mut r = agent.post(format!("{}/session", driver.base)).send_json(&caps).unwrap();
        let body: Value = r.body_mut().read_json().unwrap();
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("ChromeDriver did not create a session: {body}"))
            .to_string();
        Self { agent, session, driver, _profile: profile }
    }

    /// Starts ChromeDriver on a free loopback port (another port if it dies at start) and waits
    /// until it is ready.
    fn start_driver(agent: &ureq::Agent, profile: &Path) -> Driver {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                // Chromium keeps its crash reports and caches under these, not in $HOME.
                .env("XDG_CONFIG_HOME", profile.join("config"))
                .env("XDG_CACHE_HOME", profile.join("cache"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let base = format!("http://127.0.0.1:{port}");
            let mut driver = Driver { child, base, exited: false };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if driver.child.try_wait().unwrap().is_some() {
                    driver.exited = true;
                    break; // the port was taken meanwhile: try another
                }
                let ready = agent
                    .get(format!("{}/status", driver.base))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                    .is_some_and(|v| v["value"]["ready"] == true);
                if ready {
                    return driver;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("ChromeDriver did not become ready on any of 5 ports");
    }

    /// A WebDriver command; `Err((error, message))` when the driver reports an error.
    fn command(&self, method: &str, path: &str, body: Value) -> Result<Value, (String, String)> {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(&body),
        };
        let mut r = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let v: Value = r.body_mut().read_json().unwrap();
        match v["value"].get("error").and_then(Value::as_str) {
            Some(error) => Err((error.to_string(), v["value"]["message"].to_string())),
            None => Ok(v["value"].clone()),
        }
    }

    fn must(&self, method: &str, path: &str, body: Value) -> Value {
        self.command(method, path, body).unwrap_or_else(|e| panic!("WebDriver {path}: {e:?}"))
    }

    fn goto(&self, url: &str) {
        self.must("POST", "/url", json!({"url": url}));
    }

    /// The element with this `data-testid`, if the page has it now.
    fn find(&self, testid: &str) -> Option<String> {
        let css =
            format!("[data-testid=\"{}\"]", testid.replace('\\', "\\\\").replace('"', "\\\""));
        match self.command("POST", "/element", json!({"using": "css selector", "value": css})) {
            Ok(v) => Some(v[ELEMENT_KEY].as_str().unwrap().to_string()),
            Err((error, _)) if error == "no such element" => None,
            Err(e) => panic!("finding {testid}: {e:?}"),
        }
    }

    /// The rendered text of the element with this `data-testid` ("" when hidden), if present.
    fn text(&self, testid: &str) -> Option<String> {
        let element = self.find(testid)?;
        match self.command("GET", &format!("/element/{element}/text"), Value::Null) {
            Ok(v) => Some(v.as_str().unwrap().to_string()),
            // Re-rendered between the two calls: ask again on the next poll.
            Err((error, _)) if error == "stale element reference" => None,
            Err(e) => panic!("reading {testid}: {e:?}"),
        }
    }

    /// Waits until the element's text satisfies `ok`; returns that text.
    fn wait_text(&self, testid: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(testid);
            if let Some(t) = text.as_deref().filter(|t| ok(t)) {
                return t.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {testid} to show {what}; it shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the element with this `data-testid`.
    fn type_into(&self, testid: &str, text: &str) {
        let element = wait_for(&format!("{testid} to exist"), || self.find(testid));
        self.must("POST", &format!("/element/{element}/value"), json!({"text": text}));
    }

    /// Whether the element with this `data-testid` is displayed now.
    fn displayed(&self, testid: &str) -> bool {
        let Some(element) = self.find(testid) else { return false };
        self.command("GET", &format!("/element/{element}/displayed"), Value::Null)
            .is_ok_and(|v| v == json!(true))
    }

    /// Runs `script` in the page and returns its value.
    fn script(&self, script: &str) -> Value {
        self.must("POST", "/execute/sync", json!({"script": script, "args": []}))
    }

    fn click(&self, testid: &str) {
        let element = wait_for(&format!("{testid} to exist"), || self.find(testid));
        self.must("POST", &format!("/element/{element}/click"), json!({}));
    }

    fn screenshot_png(&self) -> Vec<u8> {
        let v = self.must("GET", "/screenshot", Value::Null);
        base64_decode(v.as_str().expect("a base64 string"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: closes Chromium cleanly; the driver's drop kills whatever is left.
        let url = format!("{}/session/{}", self.driver.base, self.session);
        let _ = agent(Duration::from_secs(10)).delete(&url).call();
    }
}

/// Standard base64 (RFC 4648 with padding), as WebDriver encodes screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let sextet = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let bits =
            data.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (sextet(c) << (18 - 6 * i)));
        out.extend_from_slice(&bits.to_be_bytes()[1..data.len()]);
    }
    out
}

fn artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts")
}

// ---- the test ----------------------------------------------------------------------------------

#[test]
fn the_dashboard_shows_topics_and_groups_and_its_retry_button_redelivers_a_dead_letter() {
    // Given: a server that dead-letters an event at its first rejection.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[broker]\nmax_attempts = 1\n").unwrap();
    let server = ServeProcess::start_with_args(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let api = Api::new(&server.base);

    // A topic with six orders; group `billing` acknowledges five and rejects order o-3.
    for (name, partitions) in [("orders", 2), ("clicks", 4)] {
        let (status, body) =
            api.post("/v1/topics", &json!({"name": name, "partitions": partitions}));
        assert_eq!(status, 201, "{body}");
    }
    let owned = json!({"name": "crm.customers", "owner": "team-crm"});
    assert_eq!(api.post("/v1/topics", &owned).0, 201);
    let orders: Vec<Value> =
        (1..=6).map(|n| event(&format!("o-{n}"), &format!("customer-{n}"))).collect();
    assert_eq!(api.produce("orders", &orders).0, 200);
    let (status, joined) = api.post(
        "/v1/groups/billing/members",
        &json!({"topics": ["orders"], "session_timeout_ms": 600_000}),
    );
    assert_eq!(status, 201, "{joined}");
    let member = joined["member_id"].as_str().unwrap().to_string();
    let mut deliveries = Vec::new();
    wait_for("six deliveries to billing", || {
        deliveries.extend(api.fetch("billing", &member));
        (deliveries.len() >= 6).then_some(())
    });
    let (rejected, accepted): (Vec<&Value>, Vec<&Value>) =
        deliveries.iter().partition(|d| d["event"]["id"] == "o-3");
    let rejected = rejected[0];
    let error = "customer-3 has no billing address";
    let nack = json!({"delivery_id": rejected["delivery_id"], "error": error});
    let (status, body) = api.post("/v1/groups/billing/nack", &nack);
    assert_eq!(status, 204, "{body}");
    let ids: Vec<&str> = accepted.iter().map(|d| d["delivery_id"].as_str().unwrap()).collect();
    api.ack("billing", &ids);
    let dead_id = format!("orders:{}:{}", rejected["partition"], rejected["offset"]);
    let (status, dead) = api.get(&format!("/v1/groups/billing/dlq/{dead_id}"));
    assert_eq!((status, &dead["state"]), (200, &json!("dead")), "{dead}");

    // A second topic written continuously, and a group that lags behind it.
    let producer = Producer::start(&server.base, "clicks");
    let (status, body) = api.post(
        "/v1/groups/analytics/members",
        &json!({"topics": ["clicks"], "session_timeout_ms": 600_000}),
    );
    assert_eq!(status, 201, "{body}");

    // When: the dashboard is opened.
    let browser = Browser::start();
    browser.goto(&format!("{}/", server.base));

    // Then: it shows the topics, the live produce rate, the groups and the dead letter.
    browser.wait_text("topic-row-orders", "the topic", |t| t.contains("orders"));
    browser.wait_text("topic-events-orders", "six events", |t| t == "6");
    browser.wait_text("topic-owner-crm.customers", "its owner", |t| t == "owned by team-crm");
    assert!(browser.find("topic-owner-orders").is_none(), "an unowned topic names no owner");
    browser.wait_text("topic-rate-clicks", "a produce rate above 0", |t| {
        t.replace(',', "").parse::<f64>().is_ok_and(|r| r > 0.0)
    });
    browser.wait_text("group-row-billing", "the group", |t| t.contains("billing"));
    browser.wait_text("group-dead-billing", "one dead letter", |t| t == "1");
    browser.wait_text("group-row-analytics", "the lagging group", |t| t.contains("analytics"));
    browser.wait_text("updated", "the time of the last refresh", |t| {
        let clock = t.strip_prefix("updated ").unwrap_or("");
        clock.len() == 8 && clock.bytes().enumerate().all(|(i, c)| (i % 3 == 2) == (c == b':'))
    });
    browser.wait_text("reconciliations-empty", "no reconciliations", |t| {
        t.to_lowercase().contains("no reconciliations configured")
    });
    let key = format!("billing/{dead_id}");
    browser.wait_text(&format!("dlq-row-{key}"), "the dead letter", |t| t.contains(&dead_id));

    // Inspecting it shows the event and its error history.
    browser.click(&format!("dlq-inspect-{key}"));
    browser.wait_text("dlq-detail-errors", "the error history", |t| t.contains(error));
    browser.wait_text("dlq-detail-event", "the event", |t| t.contains("\"o-3\""));
    browser.click("dlq-detail-close");
    browser.wait_text("dlq-detail-errors", "nothing (the dialog closed)", str::is_empty);

    // When: its retry button is clicked.
    browser.click(&format!("dlq-retry-{key}"));

    // Then: the broker delivers the event to the group again, and the page says so.
    wait_for("the dead letter to be retrying", || {
        let (status, d) = api.get(&format!("/v1/groups/billing/dlq/{dead_id}"));
        (status == 200 && d["state"] == "retrying").then_some(())
    });
    let again = wait_for("o-3 to be delivered again", || {
        api.fetch("billing", &member).into_iter().find(|d| d["event"]["id"] == "o-3")
    });
    assert_eq!(again["dead_letter_id"], json!(dead_id), "{again}");
    browser.wait_text(&format!("dlq-state-{key}"), "retrying", |t| t == "retrying");
    browser.wait_text("action-status", "the retry", |t| t.contains("being delivered again"));

    // The audit panel shows the retry as the newest administrative action: who, what, outcome;
    // and, further down, the creation of both topics.
    let resource = format!("group/billing/dlq/{dead_id}");
    browser.wait_text("audit-action-0", "the retry, newest", |t| t == "dead_letter.retry");
    browser.wait_text("audit-resource-0", "the dead letter retried", |t| t == resource);
    browser.wait_text("audit-principal-0", "who retried it", |t| t == "anonymous");
    browser.wait_text("audit-outcome-0", "its outcome", |t| t == "ok (200)");
    browser.wait_text("panel-audit", "the topics' creation", |t| {
        t.contains("topic.create") && t.contains("topic/orders") && t.contains("topic/clicks")
    });
    assert_eq!(browser.text("audit-empty").as_deref(), Some(""), "the empty note is hidden");
    // Nobody asked for a token: the sign-in form stays hidden without authentication.
    assert_eq!(browser.text("login-form").as_deref(), Some(""), "no sign-in without auth");

    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {:?}", &png[..png.len().min(16)]);
    assert!(png.len() > 10_000, "a suspiciously small screenshot: {} bytes", png.len());
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("dashboard.png"), &png).unwrap();

    // Acknowledging the redelivery empties the queue, on the page too.
    api.ack("billing", &[again["delivery_id"].as_str().unwrap()]);
    browser.wait_text("dlq-empty", "an empty queue", |t| t.contains("empty"));
    assert!(browser.find(&format!("dlq-row-{key}")).is_none(), "the dead letter is still listed");

    // A server that went away raises the error banner.
    drop(producer);
    server.kill();
    browser.wait_text("error-banner", "the server unreachable", |t| t.contains("unreachable"));
    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::write(artifacts.join("dashboard-unreachable.png"), &png).unwrap();
}

#[test]
fn with_authentication_on_the_dashboard_signs_in_with_a_token_and_out_again() {
    // Given: a server with authentication on and a token made by the CLI.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["token", "create", "--name", "ops", "--scope", "admin:*:*", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8(created.stdout).unwrap().trim().to_string();
    let config = dir.path().join("driftless.toml");
    std::fs::write(&config, "[auth]\nenabled = true\n").unwrap();
    let server = ServeProcess::start_with_args(&data, &["--config", config.to_str().unwrap()]);
    let (status, _) = Api::new(&server.base).get("/v1/topics");
    assert_eq!(status, 401, "authentication is on");

    // The page asks for a token instead of showing figures.
    let browser = Browser::start();
    browser.goto(&format!("{}/", server.base));
    wait_for("the sign-in form", || browser.displayed("login-form").then_some(()));
    assert!(!browser.displayed("logout"), "no sign-out before signing in");

    // A wrong token is refused and the form stays.
    browser.type_into("login-token", "dlt_0000000000000000_not-a-real-token");
    browser.click("login-submit");
    browser.wait_text("login-error", "the refusal", |t| !t.is_empty());
    assert!(browser.displayed("login-form"));

    // The right one opens a session: figures and the principal show, the form goes.
    browser.type_into("login-token", &token);
    browser.click("login-submit");
    browser.wait_text("principal", "who is signed in", |t| t.contains("ops"));
    wait_for("the form to go", || (!browser.displayed("login-form")).then_some(()));
    browser.wait_text("sources-empty", "the figures (no sources)", |t| t.contains("No sources"));
    // The session cookie is HttpOnly: the page's script cannot read it, and nothing the page
    // stores holds the token.
    let cookies = browser.script("return document.cookie");
    assert!(!cookies.as_str().unwrap().contains("driftless_session"), "{cookies}");
    let stored = browser.script(
        "return JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])",
    );
    assert!(!stored.to_string().contains(&token[4..]), "the token was stored: {stored}");
    let jar = browser.must("GET", "/cookie/driftless_session", Value::Null);
    assert_eq!(jar["httpOnly"], true, "{jar}");
    assert_eq!(jar["sameSite"], "Strict", "{jar}");
    let field = browser.find("login-token").unwrap();
    let value = browser.must("GET", &format!("/element/{field}/property/value"), Value::Null);
    assert_eq!(value, json!(""), "the token field is cleared after sign-in");

    // Signing out ends the session: the form is back.
    browser.click("logout");
    wait_for("the sign-in form again", || browser.displayed("login-form").then_some(()));
}

/// Wall time in Unix ms (the server's clock domain; both run on this machine).
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// The line of series `name` in the plot `chart` as (peak, time of the peak), once drawn.
fn plotted_peak(browser: &Browser, chart: &str, name: &str) -> Option<(f64, i64)> {
    let script = format!(
        "const l = document.querySelector('[data-testid=\"{chart}\"] polyline[data-series=\"{name}\"]');\
         return l ? [Number(l.dataset.peak), Number(l.dataset.peakMs)] : null;"
    );
    let v = browser.script(&script);
    let pair = v.as_array()?;
    Some((pair[0].as_f64()?, pair[1].as_f64()? as i64))
}

#[test]
fn a_dashboard_opened_after_a_burst_of_traffic_shows_the_burst_in_its_plots() {
    // Given: a server that saw a burst of 400 events and then nothing, with nobody watching.
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(&dir.path().join("data"));
    let api = Api::new(&server.base);
    assert_eq!(api.post("/v1/topics", &json!({"name": "burst", "partitions": 2})).0, 201);
    // A quiet second first, so the burst does not land in the server's baseline sample.
    std::thread::sleep(Duration::from_millis(1_500));
    let burst_started_ms = now_ms();
    for batch in 0..4 {
        let events: Vec<Value> =
            (0..100).map(|i| event(&format!("b-{batch}-{i}"), &format!("k-{i}"))).collect();
        assert_eq!(api.produce("burst", &events).0, 200);
    }
    let burst_ended_ms = now_ms();
    std::thread::sleep(Duration::from_secs(4));

    // When: the dashboard is opened only now.
    let browser = Browser::start();
    let opened_ms = now_ms();
    browser.goto(&format!("{}/", server.base));

    // Then: its throughput plot has the burst, at the time it happened, before the page existed.
    let (peak, at_ms) = wait_for("the burst's line in the throughput plot", || {
        plotted_peak(&browser, "chart-throughput", "burst")
    });
    assert!(peak >= 100.0, "400 events in a second or two peak high, not {peak} events/s");
    assert!(
        at_ms >= burst_started_ms && at_ms <= burst_ended_ms + 2_500 && at_ms < opened_ms,
        "the peak is at {at_ms}: the burst was {burst_started_ms}..{burst_ended_ms}, \
         the page opened at {opened_ms}"
    );
    browser.wait_text("chart-throughput", "the peak in the legend", |t| t.contains("peak"));
    // The topic's current rate is the server's latest sample: the burst is over.
    browser.wait_text("topic-rate-burst", "no traffic now", |t| t == "0");
}

fn sqlite(db: &Path, sql: &str) {
    rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn sqlite_count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn after_a_restart_a_caught_up_sink_never_says_nothing_applied_yet_and_its_verdict_stays() {
    // Given: a service's SQLite database whose outbox a source relays to topic `customers`, a
    // sink projecting that topic into another SQLite database, and a reconciliation checking
    // the projection against the service's table.
    let dir = tempfile::tempdir().unwrap();
    let (data, source, proj) =
        (dir.path().join("data"), dir.path().join("customers.db"), dir.path().join("crm.db"));
    sqlite(&source, "CREATE TABLE customers (id TEXT PRIMARY KEY, city TEXT)");
    sqlite(
        &source,
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, \
         aggregatetype TEXT NOT NULL, aggregateid TEXT NOT NULL, type TEXT NOT NULL, \
         payload TEXT, headers TEXT, created_at TEXT NOT NULL \
         DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
    );
    sqlite(&proj, "CREATE TABLE contacts (id TEXT PRIMARY KEY, city TEXT, driftless_version TEXT)");
    let config = dir.path().join("driftless.toml");
    let text = format!(
        r#"
        [[source]]
        name = "appdb"
        kind = "sqlite_outbox"
        path = "{source}"
        poll_interval_ms = 50
        partitions = 1

        [[sink]]
        name = "crm"
        topics = ["customers"]
        target = {{ kind = "sqlite", path = "{proj}" }}
        [[sink.mapping]]
        types = ["customer.changed"]
        table = "contacts"
        key = ["id"]
        columns = {{ id = ".subject", city = ".data.city" }}
        [[sink.mapping]]
        types = ["customer.removed"]
        table = "contacts"
        key = ["id"]
        op = "delete"

        [[reconcile]]
        name = "crm-contacts"
        sink = "crm"
        source = {{ kind = "sqlite", path = "{source}", table = "customers" }}
        lag_window_ms = 100
        [reconcile.correction]
        upsert_type = "customer.changed"
        delete_type = "customer.removed"
        "#,
        proj = proj.display(),
        source = source.display()
    );
    std::fs::write(&config, text).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let server = ServeProcess::start_with_args(&data, &args);
    let api = Api::new(&server.base);
    // The service writes each change and its event in one transaction.
    for i in 0..5 {
        let id = format!("c{i}");
        sqlite(
            &source,
            &format!(
                "BEGIN; INSERT INTO customers VALUES ('{id}', 'city-{i}'); \
                 INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) \
                 VALUES ('e{i}', 'customers', '{id}', 'customer.changed', '{{\"city\": \"city-{i}\"}}'); \
                 COMMIT;"
            ),
        );
    }
    wait_for("the projection", || {
        (sqlite_count(&proj, "SELECT count(*) FROM contacts") == 5).then_some(())
    });
    // A row lost from the projection: found and repaired by one correction through the log.
    sqlite(&proj, "DELETE FROM contacts WHERE id = 'c3'");
    let (status, run) = api.post("/v1/reconciliations/crm-contacts/run", &json!({"repair": true}));
    assert_eq!(status, 200, "{run}");
    assert_eq!((&run["missing"], &run["repaired"]), (&json!(1), &json!(1)), "{run}");
    wait_for("the repair applied", || {
        (sqlite_count(&proj, "SELECT count(*) FROM contacts") == 5).then_some(())
    });
    let (status, clean) = api.post("/v1/reconciliations/crm-contacts/run", &json!({}));
    assert_eq!(status, 200, "{clean}");
    assert_eq!(clean["missing"], 0, "{clean}");
    let took_ms = clean["duration_ms"].as_u64().unwrap();

    // When: the dashboard is opened.
    let browser = Browser::start();
    browser.goto(&format!("{}/", server.base));

    // Then: the projections panel answers the question first: in sync, checked moments ago.
    browser.wait_text("projection-verdict-crm", "in sync", |t| t.starts_with("in sync"));
    browser.wait_text("projection-verdict-crm", "who checked, when", |t| {
        t.contains("checked by crm-contacts") && t.contains("ago")
    });
    browser.wait_text("projection-dead-crm", "no dead letters", |t| t == "0");
    browser.wait_text("projection-lag-crm", "no lag", |t| t.starts_with("0 events"));
    browser.wait_text("projection-fresh-crm", "freshness", |t| t.contains("newest applied event"));
    // The topic's six events are explained: five from the source, one correction.
    browser.wait_text("topic-explain-customers", "the correction", |t| {
        t == "6 = 5 from source appdb and producers + 1 correction appended by reconciliation \
              crm-contacts"
    });
    // The flow: the source writes the topic, the sink reads it, the reconciliation checks it.
    browser.wait_text("flow-topic-customers", "who writes and reads the topic", |t| {
        t.contains("appdb →")
            && t.contains("customers")
            && t.contains("crm (checked by crm-contacts)")
    });
    // The sink's applied rate is plotted from the server's history too.
    wait_for("the sink's line in the applied plot", || {
        plotted_peak(&browser, "chart-applied", "crm").filter(|(peak, _)| *peak > 0.0)
    });
    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::create_dir_all(artifacts_dir()).unwrap();
    std::fs::write(artifacts_dir().join("dashboard-projections.png"), &png).unwrap();
    // A run's duration is said in the unit that fits, never "took 0 s".
    let run = browser
        .wait_text("reconciliation-row-crm-contacts", "the last run", |t| t.contains("took "));
    assert!(!run.contains("took 0 s"), "{run}");
    if took_ms < 1_000 {
        assert!(run.contains(&format!("took {took_ms} ms")), "{took_ms} ms shows as: {run}");
    }

    // When: the server restarts (the sink's counters start again at 0).
    assert!(server.terminate(Duration::from_secs(30)).is_some(), "the server did not stop");
    let server = ServeProcess::start_with_args(&data, &args);
    browser.goto(&format!("{}/", server.base));

    // Then: the sink, caught up, says so from its durable position, labels its counters, and
    // the verdict (kept across restarts) is still there.
    let fresh = browser.wait_text("projection-fresh-crm", "caught up", |t| {
        t.starts_with("caught up: all 6 events applied")
    });
    assert!(fresh.contains("since restart at"), "{fresh}");
    let sink = browser.wait_text("group-sink-sink-crm", "the group's sink", |t| t.contains("crm"));
    assert!(!sink.contains("nothing applied yet"), "{sink}");
    browser.wait_text("projection-row-crm", "counters since the restart", |t| {
        t.contains("applied since")
    });
    browser.wait_text("projection-verdict-crm", "in sync", |t| t.starts_with("in sync"));
}
