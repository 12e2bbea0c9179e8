//! Shared by the connector tests: a broker in a directory, a source context outside the
//! supervisor, a spawned source task that can be stopped, reading a topic back, and dropping a
//! slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)] // each test file uses a different subset

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use driftless_broker::{Broker, BrokerConfig};
use driftless_connect::emit::Emitter;
use driftless_connect::runtime::SourceContext;
use driftless_connect::SourceStatus;
use driftless_core::{Event, TopicName};
use tokio::sync::watch;

/// A broker over `dir`; with `dedup` off it remembers no ids, so only a source's own recovery
/// can prevent duplicates.
pub fn open_broker(dir: &Path, dedup: bool) -> Arc<Broker> {
    let config = if dedup {
        BrokerConfig::default()
    } else {
        BrokerConfig { dedup_ids_max: 0, ..BrokerConfig::default() }
    };
    Arc::new(Broker::open(dir, config).unwrap())
}

/// A context for source `name` of `kind` (4 partitions per created topic), with its pause and
/// shutdown senders.
pub fn context(
    broker: &Arc<Broker>,
    name: &str,
    kind: &'static str,
) -> (SourceContext, watch::Sender<bool>, watch::Sender<bool>) {
    let (paused, paused_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let emitter = Emitter::new(Arc::clone(broker), name, 4);
    let status = Arc::new(SourceStatus::new(name, kind));
    (SourceContext::new(emitter, status, paused_rx, shutdown_rx), paused, shutdown)
}

/// A source running as a task.
pub struct Relay {
    shutdown: watch::Sender<bool>,
    _paused: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<driftless_connect::Result<()>>,
    pub status: Arc<SourceStatus>,
}

impl Relay {
    /// Spawns `run` with a fresh context for source `name` of `kind`.
    pub fn spawn<F, Fut>(broker: &Arc<Broker>, name: &str, kind: &'static str, run: F) -> Self
    where
        F: FnOnce(SourceContext) -> Fut,
        Fut: Future<Output = driftless_connect::Result<()>> + Send + 'static,
    {
        let (ctx, paused, shutdown) = context(broker, name, kind);
        let status = Arc::clone(&ctx.status);
        let task = tokio::spawn(run(ctx));
        Self { shutdown, _paused: paused, task, status }
    }

    /// Asks the source to stop and returns how it ended (within 20 s).
    pub async fn stop(self) -> driftless_connect::Result<()> {
        self.shutdown.send_replace(true);
        tokio::time::timeout(Duration::from_secs(20), self.task).await.unwrap().unwrap()
    }
}

/// Every event of `topic` as `(partition, event)`, in offset order per partition.
pub fn topic_events(broker: &Broker, topic: &str) -> Vec<(usize, Event)> {
    let Some(t) = broker.log().topic(&TopicName::new(topic).unwrap()) else { return vec![] };
    let mut out = Vec::new();
    for (p, partition) in t.partitions().iter().enumerate() {
        let mut next = partition.start_offset();
        while next < partition.end_offset() {
            let batch = partition.read(next, 10_000, 64 << 20).unwrap();
            for r in &batch.records {
                out.push((p, Event::from_json(r.value.as_ref().unwrap()).unwrap()));
            }
            next = batch.next_offset;
        }
    }
    out
}

/// Every event of `topic`, in partition then offset order.
pub fn events(broker: &Broker, topic: &str) -> Vec<Event> {
    topic_events(broker, topic).into_iter().map(|(_, e)| e).collect()
}

/// Drops replication slot `slot`, as an operator would while the source is stopped. Postgres
/// marks a slot inactive only once the walsender of the closed connection has exited, which can
/// trail the source's shutdown: until then the drop fails with "is active", and is tried again
/// (up to 10 s).
pub async fn drop_slot(db: &tokio_postgres::Client, slot: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match db.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await {
            Ok(_) => return,
            Err(e)
                if std::time::Instant::now() < deadline && format!("{e:?}").contains("active") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("drop slot {slot}: {e:?}"),
        }
    }
}
