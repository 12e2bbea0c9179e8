#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
//! Topic ownership over HTTP: `POST /v1/topics` takes an optional `owner` (a principal name,
//! checked like a topic name), describe and list show it, and it survives a restart. With
//! authentication off there are no principals (everyone is `anonymous`), so ownership is
//! recorded but not enforced; the enforcement itself (403 `not-topic-owner` for every produce
//! mode) is tested inside the crate (`routes::ownership_tests`), where a request can act as a
//! named principal before the authentication layer exists.

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
