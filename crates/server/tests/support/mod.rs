//! Shared by the server's HTTP tests: the server started in-process on `127.0.0.1:0` over a fresh
//! data directory, a blocking client, and helpers for the common requests. The server stops when
//! the handle is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use driftless_broker::{Broker, BrokerConfig};
use driftless_server::ServerConfig;
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub type ServeResult = Result<(), driftless_server::ServerError>;

pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub agent: ureq::Agent,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: Option<std::sync::Mutex<std::sync::mpsc::Receiver<ServeResult>>>,
    pub rt: Option<tokio::runtime::Runtime>,
    pub _dir: tempfile::TempDir,
}

pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// Asserts a problem document with this status and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type, "application/problem+json", "{}", self.text);
        let p = self.json();
        for key in ["type", "title", "status", "detail"] {
            assert!(p.get(key).is_some(), "problem without {key}: {p}");
        }
        assert_eq!(p["status"], status);
        p
    }
}

pub fn config(broker: BrokerConfig) -> ServerConfig {
    let mut c = ServerConfig { broker, ..ServerConfig::default() };
    c.server.shutdown_grace_ms = 5_000;
    c
}

pub fn start(config: ServerConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), config.broker.clone()).unwrap());
    start_with(config, broker, dir)
}

/// Serves `broker`, opened by the caller over `dir` (with a `FaultFs`, say).
pub fn start_with(config: ServerConfig, broker: Arc<Broker>, dir: tempfile::TempDir) -> Server {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let r = driftless_server::serve(listener, broker, &config, async move {
            let _ = stopped.await;
        })
        .await;
        let _ = done_tx.send(r);
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    Server {
        addr,
        base: format!("http://{addr}"),
        agent,
        stop: Some(stop),
        done: Some(std::sync::Mutex::new(done)),
        rt: Some(rt),
        _dir: dir,
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

pub fn read(mut r: ureq::http::Response<ureq::Body>) -> Resp {
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    Resp { status, content_type, text }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Resp {
        read(self.agent.get(self.url(path)).call().unwrap())
    }

    pub fn delete(&self, path: &str) -> Resp {
        read(self.agent.delete(self.url(path)).call().unwrap())
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.post_raw(path, &[("content-type", "application/json")], body.to_string().as_bytes())
    }

    pub fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut req = self.agent.post(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send(body).unwrap())
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let r = self.post("/v1/topics", &json!({"name": name, "partitions": partitions}));
        assert_eq!(r.status, 201, "{}", r.text);
    }

    pub fn produce(&self, topic: &str, events: &[Value]) -> Value {
        let r = self.post_raw(
            &format!("/v1/topics/{topic}/events"),
            &[("content-type", "application/cloudevents-batch+json")],
            Value::Array(events.to_vec()).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    pub fn join(&self, group: &str, topics: &[&str]) -> String {
        let r = self.post(&format!("/v1/groups/{group}/members"), &json!({"topics": topics}));
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()["member_id"].as_str().unwrap().to_string()
    }

    pub fn fetch(&self, group: &str, member: &str, max: usize, wait_ms: u64) -> Vec<Value> {
        let r = self.get(&format!(
            "/v1/groups/{group}/members/{member}/events?max={max}&wait_ms={wait_ms}"
        ));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["deliveries"].as_array().unwrap().clone()
    }

    pub fn ack(&self, group: &str, ids: &[&str]) -> Value {
        let r = self.post(&format!("/v1/groups/{group}/ack"), &json!({"delivery_ids": ids}));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    pub fn nack(&self, group: &str, id: &str, error: &str) {
        let r = self
            .post(&format!("/v1/groups/{group}/nack"), &json!({"delivery_id": id, "error": error}));
        assert_eq!(r.status, 204, "{}", r.text);
    }

    pub fn end_offsets(&self, topic: &str) -> Vec<u64> {
        let r = self.get(&format!("/v1/topics/{topic}"));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["end_offset"].as_u64().unwrap())
            .collect()
    }

    /// Produces a batch; returns one result (`id`, `partition`, `offset`, `duplicate`) per event.
    pub fn produce_results(&self, topic: &str, events: &[Value]) -> Vec<Value> {
        self.produce(topic, events)["results"].as_array().unwrap().clone()
    }

    /// Joins and returns the whole membership (`member_id`, `generation`, `assignments`).
    pub fn membership(&self, group: &str, topics: &[&str]) -> Value {
        let r = self.post(&format!("/v1/groups/{group}/members"), &json!({"topics": topics}));
        assert_eq!(r.status, 201, "{}", r.text);
        r.json()
    }

    pub fn heartbeat(&self, group: &str, member: &str) -> Value {
        let r = self.post(&format!("/v1/groups/{group}/members/{member}/heartbeat"), &json!({}));
        assert_eq!(r.status, 200, "{}", r.text);
        r.json()
    }

    /// Acknowledges and asserts every id was pending.
    pub fn ack_all(&self, group: &str, deliveries: &[Value]) {
        let ids: Vec<&str> =
            deliveries.iter().map(|d| d["delivery_id"].as_str().unwrap()).collect();
        let r = self.post(&format!("/v1/groups/{group}/ack"), &json!({"delivery_ids": ids}));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["unknown"], json!([]), "acknowledged deliveries were not pending");
    }
}
