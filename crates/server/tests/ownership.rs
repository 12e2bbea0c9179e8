#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! Topic ownership over HTTP: `POST /v1/topics` takes an optional `owner` (a principal name,
//! checked like a topic name), describe and list show it, and it survives a restart. With
//! authentication off there are no principals (everyone is `anonymous`), so ownership is
//! recorded but not enforced; with it on, only the owner produces (403 `not-topic-owner` for every
//! produce mode, whatever the other principal's scopes), tested with real tokens in `with_auth`.

mod support;

use std::sync::Arc;

use driftless_broker::{Broker, BrokerConfig};
use serde_json::{json, Value};

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/crm", "type": "customer.created.v1"})
}

#[test]
fn an_owner_is_stored_shown_by_describe_and_list_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    {
        let broker = Arc::new(Broker::open(data.path(), BrokerConfig::default()).unwrap());
        let s = support::start_with(
            support::config(BrokerConfig::default()),
            broker,
            tempfile::tempdir().unwrap(),
        );
        let r = s.post("/v1/topics", &json!({"name": "crm.customers", "owner": "team-crm"}));
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json()["spec"]["owner"], "team-crm");
        s.create_topic("scratch", 1);
        assert_eq!(s.get("/v1/topics/crm.customers").json()["spec"]["owner"], "team-crm");
        let list = s.get("/v1/topics").json();
        let owners: Vec<(&str, &Value)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap(), &t["spec"]["owner"]))
            .collect();
        assert_eq!(owners, [("crm.customers", &json!("team-crm")), ("scratch", &Value::Null)]);
    } // the server stops and drops the broker
    let broker = Arc::new(Broker::open(data.path(), BrokerConfig::default()).unwrap());
    assert_eq!(broker.topic_owner("crm.customers").unwrap().as_deref(), Some("team-crm"));
    assert_eq!(broker.topic_owner("scratch").unwrap(), None);
    let s = support::start_with(
        support::config(BrokerConfig::default()),
        broker,
        tempfile::tempdir().unwrap(),
    );
    assert_eq!(s.get("/v1/topics/crm.customers").json()["spec"]["owner"], "team-crm");
}

#[test]
fn an_owner_that_is_not_a_valid_principal_name_is_refused_naming_the_field() {
    let s = support::start(support::config(BrokerConfig::default()));
    for owner in [json!(""), json!("team crm"), json!("a/b"), json!(".."), json!("x".repeat(250))] {
        let p = s.post("/v1/topics", &json!({"name": "t", "owner": owner})).problem(400);
        assert_eq!(p["field"], "owner", "{owner}: {p}");
    }
    let p = s.post("/v1/topics", &json!({"name": "t", "owner": 7})).problem(400);
    assert_eq!(p["type"], "urn:driftless:problem:invalid-body", "{p}");
    s.get("/v1/topics/t").problem(404);
}

#[test]
fn with_authentication_off_ownership_is_recorded_but_anyone_may_produce() {
    let s = support::start(support::config(BrokerConfig::default()));
    let r = s.post("/v1/topics", &json!({"name": "owned", "owner": "team-crm"}));
    assert_eq!(r.status, 201, "{}", r.text);
    // Without authentication there are no principals to tell apart: documented, not enforced.
    let produced = s.produce("owned", &[event("e-1")]);
    assert_eq!(produced["results"][0]["duplicate"], false);
    assert_eq!(s.end_offsets("owned"), [1]);
}

/// Enforcement with real tokens: every principal may do everything, so only ownership refuses.
mod with_auth {
    use std::collections::HashMap;
    use std::sync::Arc;

    use driftless_auth::{OsRandom, TokenStore};
    use driftless_broker::{Broker, BrokerConfig};
    use serde_json::{json, Value};

    use driftless_server::ServerConfig;

    /// The principals the tests act as; each gets a token that may do everything, so only
    /// ownership can refuse it.
    const PRINCIPALS: [&str; 5] = ["ops", "team-crm", "intruder", "ops-alice", "ops-bob"];

    struct Api {
        base: String,
        agent: ureq::Agent,
        /// Bearer token by principal (empty with authentication off).
        tokens: HashMap<&'static str, String>,
        _rt: tokio::runtime::Runtime,
        _dir: tempfile::TempDir,
    }

    impl Api {
        fn start(auth_enabled: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
            let mut config = ServerConfig::default();
            config.auth.enabled = auth_enabled;
            let mut tokens = HashMap::new();
            if auth_enabled {
                let path = dir.path().join("tokens.json");
                let store = TokenStore::new(&path);
                for name in PRINCIPALS {
                    let all = ["admin:*:*".to_string()];
                    let created = store.create(name, &all, None, 0, &mut OsRandom).unwrap();
                    tokens.insert(name, created.token.text);
                }
                config.auth.tokens_file = Some(path);
            }
            let app = driftless_server::router(broker, &config);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            rt.spawn(async move { axum::serve(listener, app).await });
            let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            Self { base, agent, tokens, _rt: rt, _dir: dir }
        }

        fn bearer(&self, principal: &str) -> Option<String> {
            self.tokens.get(principal).map(|t| format!("Bearer {t}"))
        }

        /// POSTs `body` as `principal`: (status, parsed answer).
        fn post(
            &self,
            principal: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &str,
        ) -> (u16, Value) {
            let mut req = self.agent.post(format!("{}{path}", self.base));
            if let Some(bearer) = self.bearer(principal) {
                req = req.header("authorization", bearer);
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if headers.is_empty() && !body.is_empty() {
                req = req.header("content-type", "application/json");
            }
            let mut r = req.send(body).unwrap();
            let text = r.body_mut().read_to_string().unwrap();
            (r.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::Null))
        }

        fn get(&self, path: &str) -> Value {
            let mut req = self.agent.get(format!("{}{path}", self.base));
            if let Some(bearer) = self.bearer("ops") {
                req = req.header("authorization", bearer);
            }
            let mut r = req.call().unwrap();
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
        }

        fn events(&self, topic: &str) -> u64 {
            let t = self.get(&format!("/v1/topics/{topic}"));
            t["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["end_offset"].as_u64().unwrap())
                .sum()
        }

        /// Produces one event to `topic` as `principal` in each mode: the three statuses and
        /// the last answer.
        fn produce_every_mode(&self, principal: &str, topic: &str, id: &str) -> Vec<(u16, Value)> {
            let path = format!("/v1/topics/{topic}/events");
            let e = json!({"specversion": "1.0", "id": format!("{id}-s"), "source": "/crm", "type": "c.v1"});
            let b = json!([{"specversion": "1.0", "id": format!("{id}-b"), "source": "/crm", "type": "c.v1"}]);
            let binary_id = format!("{id}-x");
            vec![
                self.post(
                    principal,
                    &path,
                    &[("content-type", "application/cloudevents+json")],
                    &e.to_string(),
                ),
                self.post(
                    principal,
                    &path,
                    &[("content-type", "application/cloudevents-batch+json")],
                    &b.to_string(),
                ),
                self.post(
                    principal,
                    &path,
                    &[
                        ("content-type", "application/json"),
                        ("ce-specversion", "1.0"),
                        ("ce-id", &binary_id),
                        ("ce-source", "/crm"),
                        ("ce-type", "c.v1"),
                    ],
                    "{\"name\":\"Ada\"}",
                ),
            ]
        }
    }

    #[test]
    fn with_auth_on_only_the_owner_produces_to_an_owned_topic_in_every_mode() {
        let api = Api::start(true);
        let create = json!({"name": "crm.customers", "owner": "team-crm"}).to_string();
        let (status, created) = api.post("ops", "/v1/topics", &[], &create);
        assert_eq!(status, 201, "{created}");
        for (status, answer) in api.produce_every_mode("team-crm", "crm.customers", "own") {
            assert_eq!(status, 200, "{answer}");
        }
        assert_eq!(api.events("crm.customers"), 3);
        for (status, p) in api.produce_every_mode("intruder", "crm.customers", "evil") {
            assert_eq!(status, 403, "{p}");
            assert_eq!(p["type"], "urn:driftless:problem:not-topic-owner", "{p}");
            assert_eq!(p["topic"], "crm.customers", "{p}");
            let detail = p["detail"].as_str().unwrap();
            assert!(detail.contains("team-crm") && detail.contains("intruder"), "{detail}");
        }
        // A request without credentials is not even asked about ownership.
        let anonymous = api.produce_every_mode("nobody", "crm.customers", "anon");
        assert!(anonymous.iter().all(|(status, _)| *status == 401), "{anonymous:?}");
        assert_eq!(api.events("crm.customers"), 3, "nothing of a refused produce is stored");

        // An unowned topic takes events from anyone; an unknown one is still a 404.
        let (status, _) =
            api.post("ops", "/v1/topics", &[], &json!({"name": "scratch"}).to_string());
        assert_eq!(status, 201);
        assert!(api.produce_every_mode("intruder", "scratch", "s").iter().all(|(s, _)| *s == 200));
        let unknown = api.produce_every_mode("intruder", "nope", "n");
        assert!(unknown.iter().all(|(s, _)| *s == 404), "{unknown:?}");
    }

    #[test]
    fn with_auth_off_ownership_is_not_enforced_even_for_a_named_principal() {
        let api = Api::start(false);
        let create = json!({"name": "owned", "owner": "team-crm"}).to_string();
        assert_eq!(api.post("ops", "/v1/topics", &[], &create).0, 201);
        let answers = api.produce_every_mode("intruder", "owned", "x");
        assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    }

    #[test]
    fn audit_records_name_the_principal_that_acted() {
        let api = Api::start(true);
        let create = json!({"name": "t", "owner": "team-crm"}).to_string();
        assert_eq!(api.post("ops-alice", "/v1/topics", &[], &create).0, 201);
        assert_eq!(api.post("ops-bob", "/v1/sinks/nope/pause", &[], "").0, 404);
        let trail = api.get("/v1/audit");
        let who: Vec<(&str, &str, &str)> = trail
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap();
                (s("principal"), s("action"), s("outcome"))
            })
            .collect();
        assert_eq!(who, [("ops-bob", "sink.pause", "failed"), ("ops-alice", "topic.create", "ok")]);
    }
}
