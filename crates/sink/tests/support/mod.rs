//! Shared by the sink tests: a broker in a directory with quick retries, events, sinks started
//! from TOML, and waiting for a condition.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use driftless_sink::{SinkConfig, Sinks};
use serde_json::Value;

/// Retries fast, so poison events reach the dead-letter queue within a test.
pub fn quick_retries() -> BrokerConfig {
    BrokerConfig {
        max_attempts: 3,
        backoff_initial_ms: 20,
        backoff_max_ms: 100,
        visibility_timeout_ms: 10_000,
        ..BrokerConfig::default()
    }
}

/// A broker over `dir` with topic `topic` of `partitions` partitions.
pub fn broker(dir: &Path, config: BrokerConfig, topic: &str, partitions: u32) -> Arc<Broker> {
    let b = Arc::new(Broker::open(dir, config).unwrap());
    b.create_topic(topic, TopicSpec { partitions, ..TopicSpec::default() }).unwrap();
    b
}

/// An event of `ty` about `subject` with `data` and, if given, a `sequence`.
pub fn event(id: &str, subject: &str, ty: &str, data: Value, sequence: Option<&str>) -> Event {
    let mut e = Event::new(id, "/test", ty);
    e.subject = Some(subject.to_string());
    e.data = Some(data);
    e.time = Some("2026-11-25T12:00:00Z".into());
    if let Some(s) = sequence {
        e.extensions.insert("sequence".into(), Value::String(s.into()));
    }
    e
}

/// Starts sinks parsed from `[[sink]]` TOML.
pub fn start(toml_text: &str, broker: &Arc<Broker>) -> Sinks {
    #[derive(serde::Deserialize)]
    struct File {
        sink: Vec<SinkConfig>,
    }
    let f: File = toml::from_str(toml_text).unwrap();
    Sinks::start(f.sink, Arc::clone(broker)).unwrap()
}

/// Polls `check` every 20 ms until it returns true; panics after `timeout` with `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `group` has consumed everything of its topics.
pub fn caught_up(broker: &Broker, group: &str) -> bool {
    broker
        .describe_group(group)
        .map(|g| !g.partitions.is_empty() && g.partitions.iter().all(|p| p.lag_events == 0))
        .unwrap_or(false)
}
