//! Starts the configured sinks, runs each as a consumer-group member of the in-process broker,
//! supervises them and exposes their status.
//!
//! The apply loop of a table sink: fetch a batch (at most one event per key per partition, in
//! key order — the broker guarantees it), map it, apply it to the target in one transaction,
//! then acknowledge. What can go wrong decides what happens to the deliveries:
//! - a mapping error is the event's fault: it is rejected (`nack`), retried with backoff and
//!   goes to the dead-letter queue after `max_attempts`, while other keys keep flowing;
//! - the target refusing the batch's content: the batch is applied event by event, and only the
//!   events the target refuses are rejected;
//! - the target being unavailable is nobody's fault: the deliveries are released without
//!   counting an attempt, and the sink waits with capped backoff and jitter before trying again;
//! - the target's schema not fitting the mapping stops the sink (state `retrying`, with the
//!   table and column named) until it fits.
//!
//! Invariant (effectively once): a delivery is acknowledged only after the transaction that
//! applied it committed. A crash between the commit and the acknowledgement redelivers events
//! whose rows the version guard then leaves unchanged.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use driftless_broker::{Broker, BrokerError, Delivery, EventListener, Fetched};
use driftless_control::{Backoff, Control, Tasks};
use rand::Rng;
use serde::Serialize;
use tokio::sync::watch;

use crate::batch::{rfc3339_ms, Item};
use crate::config::{SinkConfig, TargetConfig, WebhookConfig};
use crate::error::{ApplyError, Result, SinkError};
use crate::mapping::{Mapped, Mapper};
use crate::postgres::PgSink;
use crate::rebuild::{RebuildPhase, RebuildReport};
use crate::sqlite::SqliteSink;
use crate::webhook::{Breaker, Outcome, Webhook};

/// Longest wait between attempts while a target is unavailable or a sink restarts.
pub const RETRY_BACKOFF_MS_MAX: u64 = 30_000;
/// First wait after a failure.
pub const RETRY_BACKOFF_MS_MIN: u64 = 250;
/// Longest idle wait before a fetch, which also keeps the group membership alive.
pub const IDLE_WAIT_MS_MAX: u64 = 1_000;
/// Upper bounds of the batch-size histogram buckets, in events.
pub const BATCH_BUCKETS: [u64; 8] = [1, 10, 50, 100, 250, 500, 1000, 10_000];

/// What a sink is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Connecting and checking the target.
    Starting,
    /// Applying.
    Running,
    /// Paused by an operator.
    Paused,
    /// Waiting for the target (unavailable, or its schema does not fit).
    Retrying,
    /// Stopped by an error an operator must fix in the configuration.
    Failed,
    /// Stopped because the server is shutting down.
    Stopped,
}

/// Live figures of one sink, shared between its task and readers.
#[derive(Debug)]
pub struct SinkStatus {
    /// Name.
    pub name: String,
    /// `postgres`, `sqlite` or `webhook`.
    pub kind: &'static str,
    /// Its consumer group.
    pub group: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    /// When this process started it (Unix ms): the counters below count from then.
    pub started_ms: i64,
    state: Mutex<(SinkState, Option<String>)>,
    /// Events applied (or delivered) and acknowledged.
    pub events_applied_total: AtomicU64,
    /// Events no mapping took (acknowledged without a write).
    pub events_skipped_total: AtomicU64,
    /// Events rejected (mapping error, refused by the target); retried or dead-lettered.
    pub events_rejected_total: AtomicU64,
    /// Row operations written (upserts and deletes, before the version guard).
    pub rows_total: AtomicU64,
    /// Batches committed.
    pub batches_total: AtomicU64,
    /// Batch sizes (events), per [`BATCH_BUCKETS`] bucket; the last is above every bound.
    pub batch_sizes: [AtomicU64; BATCH_BUCKETS.len() + 1],
    /// Time of the newest applied event (its `time`, Unix ms; 0 = none yet).
    pub newest_event_ms: AtomicI64,
    /// When the last batch was applied (Unix ms; 0 = never).
    pub last_applied_ms: AtomicI64,
    /// Restarts and target outages since start.
    pub restarts_total: AtomicU64,
    /// Members applying in parallel (the config's `workers`).
    pub workers: usize,
    /// Workers waiting in pause right now.
    paused_workers: std::sync::atomic::AtomicUsize,
    /// The latest rebuild, if any.
    rebuild: Mutex<Option<RebuildReport>>,
}

/// A serializable copy of a [`SinkStatus`], for the API.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: &'static str,
    /// Consumer group.
    pub group: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    /// When this process started the sink (Unix ms); the `*_total` figures and
    /// `newest_event_ms` count from then, not over the sink's life (its committed position,
    /// in its group, is durable).
    pub started_ms: i64,
    /// State.
    pub state: SinkState,
    /// The last error, if failing or retrying.
    pub error: Option<String>,
    /// Events applied since start.
    pub events_applied_total: u64,
    /// Events skipped since start.
    pub events_skipped_total: u64,
    /// Events rejected since start.
    pub events_rejected_total: u64,
    /// Batches committed since start.
    pub batches_total: u64,
    /// Unix ms of the newest applied event's `time` (0 = none).
    pub newest_event_ms: i64,
    /// Unix ms of the last applied batch (0 = never).
    pub last_applied_ms: i64,
    /// The latest rebuild (`driftless sink rebuild`), if any.
    pub rebuild: Option<RebuildReport>,
}

/// Wall time in Unix ms, from the project's one clock.
fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

impl SinkStatus {
    /// A fresh status in state `starting`.
    pub fn new(config: &SinkConfig) -> Self {
        Self {
            name: config.name.clone(),
            kind: config.kind_name(),
            group: config.group(),
            topics: config.topics.clone(),
            started_ms: now_ms(),
            state: Mutex::new((SinkState::Starting, None)),
            events_applied_total: AtomicU64::new(0),
            events_skipped_total: AtomicU64::new(0),
            events_rejected_total: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            batches_total: AtomicU64::new(0),
            batch_sizes: Default::default(),
            newest_event_ms: AtomicI64::new(0),
            last_applied_ms: AtomicI64::new(0),
            restarts_total: AtomicU64::new(0),
            workers: config.workers.max(1),
            paused_workers: std::sync::atomic::AtomicUsize::new(0),
            rebuild: Mutex::new(None),
        }
    }

    /// Records a rebuild's progress (a new one starts in `replaying`).
    pub(crate) fn set_rebuild(&self, phase: RebuildPhase, events: u64, error: Option<String>) {
        let mut r = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let report = r.get_or_insert_with(crate::rebuild::started);
        if phase == RebuildPhase::Replaying && report.phase != RebuildPhase::Replaying {
            *report = crate::rebuild::started();
        }
        report.phase = phase;
        report.events_replayed = events;
        report.error = error;
        if matches!(phase, RebuildPhase::Done | RebuildPhase::Failed) {
            crate::rebuild::finish(report);
        }
    }

    /// Whether every worker is paused (between batches, nothing outstanding).
    pub fn all_paused(&self) -> bool {
        self.paused_workers.load(Ordering::SeqCst) >= self.workers
    }

    /// The latest rebuild's report.
    pub fn rebuild(&self) -> Option<RebuildReport> {
        self.rebuild.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets the state and the error shown with it.
    pub fn set_state(&self, state: SinkState, error: Option<String>) {
        // The API and /metrics show this text: credentials never reach it.
        let error = error.map(|e| driftless_core::redact(&e));
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state, error);
    }

    /// The current state and error.
    pub fn state(&self) -> (SinkState, Option<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn batch(&self, events: usize, rows: usize, newest_event_ms: i64) {
        self.batches_total.fetch_add(1, Ordering::Relaxed);
        self.events_applied_total.fetch_add(events as u64, Ordering::Relaxed);
        self.rows_total.fetch_add(rows as u64, Ordering::Relaxed);
        let i =
            BATCH_BUCKETS.iter().position(|&b| events as u64 <= b).unwrap_or(BATCH_BUCKETS.len());
        self.batch_sizes[i].fetch_add(1, Ordering::Relaxed);
        self.newest_event_ms.fetch_max(newest_event_ms, Ordering::Relaxed);
        self.last_applied_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A copy for the API.
    pub fn report(&self) -> SinkReport {
        let (state, error) = self.state();
        SinkReport {
            name: self.name.clone(),
            kind: self.kind,
            group: self.group.clone(),
            topics: self.topics.clone(),
            started_ms: self.started_ms,
            state,
            error,
            events_applied_total: self.events_applied_total.load(Ordering::Relaxed),
            events_skipped_total: self.events_skipped_total.load(Ordering::Relaxed),
            events_rejected_total: self.events_rejected_total.load(Ordering::Relaxed),
            batches_total: self.batches_total.load(Ordering::Relaxed),
            newest_event_ms: self.newest_event_ms.load(Ordering::Relaxed),
            last_applied_ms: self.last_applied_ms.load(Ordering::Relaxed),
            rebuild: self.rebuild(),
        }
    }
}

/// What a running sink gets: the broker, where to report, and its controls.
#[derive(Debug)]
pub(crate) struct SinkContext {
    pub broker: Arc<Broker>,
    pub status: Arc<SinkStatus>,
    pub control: Control,
}

impl SinkContext {
    pub fn is_shutting_down(&self) -> bool {
        self.control.is_shutting_down()
    }

    /// Waits while paused, counted in `paused_workers` and shown as `paused`; `false` on
    /// shutdown.
    async fn wait_while_paused(&mut self) -> bool {
        if !self.control.is_paused() {
            return !self.is_shutting_down();
        }
        let before = match self.status.state().0 {
            SinkState::Paused => SinkState::Running,
            other => other,
        };
        self.status.set_state(SinkState::Paused, None);
        self.status.paused_workers.fetch_add(1, Ordering::SeqCst);
        let resumed = self.control.wait_resumed().await;
        if resumed {
            self.status.set_state(before, None);
        }
        self.status.paused_workers.fetch_sub(1, Ordering::SeqCst);
        resumed
    }

    /// Sleeps up to `d`; `false` (early) on shutdown.
    async fn sleep(&mut self, d: Duration) -> bool {
        self.control.sleep(d).await
    }
}

/// Runs a blocking broker call on the blocking pool.
async fn blocking<T: Send + 'static>(
    sink: &str,
    f: impl FnOnce() -> std::result::Result<T, BrokerError> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|error| SinkError::Broker { sink: sink.to_string(), error }),
        Err(e) => Err(SinkError::Unavailable {
            sink: sink.to_string(),
            reason: format!("broker call failed: {e}"),
        }),
    }
}

/// A sink's target.
enum Target {
    Postgres(PgSink),
    Sqlite(SqliteSink),
    Webhook(Webhook, Breaker),
}

impl Target {
    fn open(config: &SinkConfig) -> Result<Self> {
        Ok(match &config.target {
            TargetConfig::Postgres { url, version_column } => {
                Target::Postgres(PgSink::new(&config.name, url.expose(), version_column))
            }
            TargetConfig::Sqlite { path, version_column } => {
                Target::Sqlite(SqliteSink::new(&config.name, path.clone(), version_column))
            }
            TargetConfig::Webhook(w @ WebhookConfig { .. }) => Target::Webhook(
                Webhook::new(w).map_err(|reason| SinkError::Config {
                    sink: config.name.clone(),
                    field: "target.ca_file".into(),
                    reason,
                })?,
                Breaker::new(w.breaker_failures_max, w.breaker_open_ms),
            ),
        })
    }

    async fn check(&mut self, mapper: &Mapper) -> Result<()> {
        match self {
            Target::Postgres(t) => t.check(mapper).await,
            Target::Sqlite(t) => t.check(mapper).await,
            Target::Webhook(..) => Ok(()),
        }
    }

    async fn apply(&mut self, items: &[&Item]) -> std::result::Result<(), ApplyError> {
        match self {
            Target::Postgres(t) => t.apply(items).await,
            Target::Sqlite(t) => t.apply(items).await,
            Target::Webhook(..) => Ok(()),
        }
    }
}

/// One member's session in the sink's group.
struct Session<'a> {
    config: &'a SinkConfig,
    group: String,
    member: String,
}

impl Session<'_> {
    async fn join<'c>(config: &'c SinkConfig, broker: &Arc<Broker>) -> Result<Session<'c>> {
        let group = config.group();
        let (b, g, topics) = (Arc::clone(broker), group.clone(), config.topics.clone());
        let m = blocking(&config.name, move || b.join(&g, &topics, None)).await?;
        Ok(Session { config, group, member: m.member_id })
    }

    /// Fetches deliveries as the stored JSON text: table sinks map it without parsing whole
    /// events (`Mapper::map_json`), webhooks parse it.
    async fn fetch(&mut self, broker: &Arc<Broker>, max: usize) -> Result<Fetched<Bytes>> {
        let (b, g, m) = (Arc::clone(broker), self.group.clone(), self.member.clone());
        match blocking(&self.config.name, move || b.fetch_raw(&g, &m, max)).await {
            Err(SinkError::Broker { error: BrokerError::UnknownMember { .. }, .. }) => {
                // The session expired (a long outage): join again; the group rebalanced.
                let again = Session::join(self.config, broker).await?;
                self.member = again.member;
                let (b, g, m) = (Arc::clone(broker), self.group.clone(), self.member.clone());
                blocking(&self.config.name, move || b.fetch_raw(&g, &m, max)).await
            }
            other => other,
        }
    }

    async fn ack(&self, broker: &Arc<Broker>, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (b, g) = (Arc::clone(broker), self.group.clone());
        blocking(&self.config.name, move || b.ack(&g, &ids)).await.map(|_| ())
    }

    async fn release(&self, broker: &Arc<Broker>, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (b, g) = (Arc::clone(broker), self.group.clone());
        blocking(&self.config.name, move || b.release(&g, &ids)).await.map(|_| ())
    }

    async fn reject(
        &self,
        broker: &Arc<Broker>,
        id: String,
        error: String,
        now: bool,
    ) -> Result<()> {
        let (b, g) = (Arc::clone(broker), self.group.clone());
        let r = blocking(&self.config.name, move || {
            if now {
                b.dead_letter_now(&g, &id, &error)
            } else {
                b.nack(&g, &id, &error)
            }
        })
        .await;
        match r {
            // The delivery expired meanwhile: it will be redelivered anyway.
            Err(SinkError::Broker { error: BrokerError::UnknownDelivery(_), .. }) => Ok(()),
            other => other,
        }
    }

    async fn leave(&self, broker: &Arc<Broker>) {
        let (b, g, m) = (Arc::clone(broker), self.group.clone(), self.member.clone());
        let _ = blocking(&self.config.name, move || b.leave(&g, &m)).await;
    }
}

/// The environment variable naming crash-test failpoints: `name=probability[,name=probability]`
/// (e.g. `sink.after_apply=0.05`). At a named point the process aborts with that probability,
/// like a power cut. Crash tests set it on a child `driftless serve`; nobody else should.
pub const FAILPOINTS_ENV: &str = "DRIFTLESS_FAILPOINTS";

/// Aborts the process at failpoint `name` with its configured probability. Unset (always,
/// outside crash tests), a check is one read of a parsed-once empty list.
fn failpoint(name: &str) {
    static POINTS: std::sync::OnceLock<Vec<(String, f64)>> = std::sync::OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var(FAILPOINTS_ENV)
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.split_once('='))
            .filter_map(|(n, v)| Some((n.trim().to_string(), v.trim().parse().ok()?)))
            .collect()
    });
    if let Some((_, p)) = points.iter().find(|(n, _)| n == name) {
        if rand::rng().random_bool(p.clamp(0.0, 1.0)) {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

/// Whether `group` has consumed everything of its topics.
pub(crate) fn group_caught_up(broker: &Broker, group: &str) -> bool {
    broker
        .describe_group(group)
        .map(|g| g.partitions.iter().all(|p| p.lag_events == 0 && p.inflight == 0))
        .unwrap_or(false)
}

fn item_of(d: &Delivery<Bytes>, mapped: Mapped) -> Item {
    let event_time_ms = mapped.time.as_deref().and_then(rfc3339_ms).unwrap_or(0);
    let (topic, partition, offset) = (d.topic.clone(), d.partition, d.offset);
    Item { topic, partition, offset, event_time_ms, ops: mapped.ops }
}

/// Maps one delivered event from its stored text.
fn map_delivery(mapper: &Mapper, d: &Delivery<Bytes>) -> std::result::Result<Mapped, String> {
    std::str::from_utf8(&d.event)
        .map_err(|e| format!("the stored event is not UTF-8 text: {e}"))
        .and_then(|text| mapper.map_json(text, d.offset))
}

/// Each delivery's mapping, in delivery order (an error goes the retry/dead-letter way).
type Mappings = Vec<std::result::Result<Mapped, String>>;

/// A fetched batch with its mappings, made on the blocking pool ahead of its turn.
type Prefetched = (Fetched<Bytes>, Mappings);

/// A table sink's overlap of work: while a batch is applied, the previous batch's
/// acknowledgement (its commit is done) and the next batch's fetch and mapping run on the
/// blocking pool — mapping is a pure function of the event, so doing it early changes nothing but
/// when the CPU is spent (it used to wait for the previous batch's round trip). The next batch
/// cannot hold a key of the current one: the broker hands out one event per key until it is
/// acknowledged. At most one acknowledgement and one prefetch are outstanding.
///
/// A prefetch carries the group's listener, registered before its fetch began: an event produced
/// after that fetch (while the previous batch was applied) wakes the sink. Listening only once
/// the prefetch was taken missed such an event until the idle wait ran out (1 s).
#[derive(Default)]
struct Pipeline {
    ack: Option<tokio::task::JoinHandle<std::result::Result<Vec<String>, BrokerError>>>,
    prefetch: Option<(
        EventListener,
        tokio::task::JoinHandle<std::result::Result<Prefetched, BrokerError>>,
    )>,
}

impl Pipeline {
    /// Waits for the outstanding acknowledgement.
    async fn settle_ack(&mut self, sink: &str) -> Result<()> {
        if let Some(h) = self.ack.take() {
            match h.await {
                Ok(r) => {
                    r.map(|_| ()).map_err(|error| SinkError::Broker { sink: sink.into(), error })?
                }
                Err(e) => {
                    return Err(SinkError::Unavailable {
                        sink: sink.into(),
                        reason: format!("acknowledgement failed: {e}"),
                    })
                }
            }
        }
        Ok(())
    }

    fn start_ack(&mut self, broker: &Arc<Broker>, group: &str, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let (b, g) = (Arc::clone(broker), group.to_string());
        self.ack = Some(tokio::task::spawn_blocking(move || b.ack(&g, &ids)));
    }

    fn start_prefetch(
        &mut self,
        broker: &Arc<Broker>,
        session: &Session<'_>,
        max: usize,
        mapper: &Arc<Mapper>,
    ) {
        let (b, g, m) = (Arc::clone(broker), session.group.clone(), session.member.clone());
        let mapper = Arc::clone(mapper);
        let listener = broker.listen(&session.group);
        let fetch = tokio::task::spawn_blocking(move || {
            let fetched = b.fetch_raw(&g, &m, max)?;
            let mapped = fetched.deliveries.iter().map(|d| map_delivery(&mapper, d)).collect();
            Ok((fetched, mapped))
        });
        self.prefetch = Some((listener, fetch));
    }

    /// The prefetched batch and its mappings, with the listener registered before its fetch; or
    /// `None` if there was none (a failed prefetch is simply fetched again).
    async fn take_prefetch(&mut self) -> Option<(EventListener, Prefetched)> {
        let (listener, fetch) = self.prefetch.take()?;
        match fetch.await {
            Ok(Ok(f)) => Some((listener, f)),
            _ => None,
        }
    }

    /// Settles the acknowledgement and hands a prefetched batch back to the group.
    async fn drain(&mut self, broker: &Arc<Broker>, session: &Session<'_>) -> Result<()> {
        self.settle_ack(&session.config.name).await?;
        if let Some((_, (f, _))) = self.take_prefetch().await {
            let ids = f.deliveries.into_iter().map(|d| d.delivery_id).collect();
            session.release(broker, ids).await?;
        }
        Ok(())
    }
}

/// Runs a sink's apply loop until shutdown or, with `until_caught_up`, until its group has
/// consumed everything of its topics (a rebuild's replay).
pub(crate) async fn run_sink(
    config: &SinkConfig,
    mapper: &Arc<Mapper>,
    ctx: &mut SinkContext,
    until_caught_up: bool,
) -> Result<()> {
    let broker = Arc::clone(&ctx.broker);
    let mut target = Target::open(config)?;
    target.check(mapper).await?;
    let mut session = Session::join(config, &broker).await?;
    ctx.status.set_state(SinkState::Running, None);
    let mut backoff = Backoff::new(RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX);
    let mut pipeline = Pipeline::default();
    let result = loop {
        if ctx.control.is_paused() || ctx.is_shutting_down() {
            // Nothing outstanding while paused or stopping.
            if let Err(e) = pipeline.drain(&broker, &session).await {
                break Err(e);
            }
        }
        if !ctx.wait_while_paused().await {
            break Ok(());
        }
        let mut max = config.batch_events_max;
        if let Target::Webhook(_, breaker) = &target {
            match breaker.allowance(Instant::now()) {
                Some(0) => {
                    let wait = breaker
                        .reopens_at()
                        .map(|t| t.saturating_duration_since(Instant::now()))
                        .unwrap_or_default()
                        .min(Duration::from_millis(IDLE_WAIT_MS_MAX));
                    if !ctx.sleep(wait).await {
                        break Ok(());
                    }
                    continue;
                }
                Some(n) => max = n,
                None => {}
            }
        }
        // Listen before fetching, so a produce between the fetch and the wait is not missed (a
        // prefetch listened before its fetch).
        let (listener, fetched, mapped) = match pipeline.take_prefetch().await {
            Some((listener, (f, mapped))) => (listener, f, Some(mapped)),
            None => {
                let listener = broker.listen(&session.group);
                match session.fetch(&broker, max).await {
                    Ok(f) => (listener, f, None),
                    Err(e) => break Err(e),
                }
            }
        };
        if fetched.deliveries.is_empty() {
            if let Err(e) = pipeline.settle_ack(&config.name).await {
                break Err(e);
            }
            if until_caught_up && group_caught_up(&broker, &session.group) {
                break Ok(());
            }
            let mut wait = Duration::from_millis(IDLE_WAIT_MS_MAX);
            if let Some(due) = fetched.next_due_ms {
                wait = wait.min(Duration::from_millis((due - now_ms()).max(1) as u64));
            }
            tokio::select! {
                _ = listener => {}
                _ = tokio::time::sleep(wait) => {}
                () = ctx.control.shutdown_signal() => {}
            }
            continue;
        }
        let outcome = match &mut target {
            Target::Webhook(hook, breaker) => {
                deliver_webhook(config, mapper, ctx, &session, hook, breaker, fetched.deliveries)
                    .await
            }
            _ => {
                pipeline.start_prefetch(&broker, &session, max, mapper);
                let batch = (fetched.deliveries, mapped);
                match apply_tables(config, mapper, ctx, &session, &mut target, batch).await {
                    Ok(Some(acks)) => match pipeline.settle_ack(&config.name).await {
                        Ok(()) => {
                            pipeline.start_ack(&broker, &session.group, acks);
                            Ok(true)
                        }
                        Err(e) => Err(e),
                    },
                    Ok(None) => pipeline.drain(&broker, &session).await.map(|()| false),
                    Err(e) => {
                        let _ = pipeline.drain(&broker, &session).await;
                        Err(e)
                    }
                }
            }
        };
        match outcome {
            Ok(true) => {
                backoff.reset();
                if ctx.status.state().0 == SinkState::Retrying {
                    ctx.status.set_state(SinkState::Running, None);
                }
            }
            Ok(false) => {
                // The target is unavailable: wait, then try again (the deliveries were released).
                ctx.status.restarts_total.fetch_add(1, Ordering::Relaxed);
                if !ctx.sleep(backoff.next_delay()).await {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    let drained = pipeline.drain(&broker, &session).await;
    session.leave(&broker).await;
    result.and(drained)
}

/// Applies a batch to a table target: its deliveries, and their mappings if the prefetch made
/// them (else they are mapped here). `Ok(Some(ids))`: applied and committed — `ids` are to be
/// acknowledged (every other delivery was acknowledged or rejected here); `Ok(None)`: the target
/// is unavailable and the deliveries were released.
async fn apply_tables(
    config: &SinkConfig,
    mapper: &Mapper,
    ctx: &SinkContext,
    session: &Session<'_>,
    target: &mut Target,
    (deliveries, mapped): (Vec<Delivery<Bytes>>, Option<Mappings>),
) -> Result<Option<Vec<String>>> {
    let broker = &ctx.broker;
    let mapped = match mapped {
        Some(m) => m,
        None => deliveries.iter().map(|d| map_delivery(mapper, d)).collect(),
    };
    debug_assert_eq!(mapped.len(), deliveries.len());
    let mut items: Vec<(String, Item)> = Vec::new();
    for (d, mapped) in deliveries.iter().zip(mapped) {
        match mapped {
            Ok(mapped) => items.push((d.delivery_id.clone(), item_of(d, mapped))),
            Err(e) => {
                ctx.status.events_rejected_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %config.name, delivery = %d.delivery_id, error = %driftless_core::redact(&e.to_string()),
                    "mapping failed; the event is retried, then dead-lettered");
                session.reject(broker, d.delivery_id.clone(), e, false).await?;
            }
        }
    }
    let skipped = items.iter().filter(|(_, it)| it.ops.is_empty()).count();
    let refs: Vec<&Item> = items.iter().map(|(_, it)| it).collect();
    let all_ids = || items.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    match target.apply(&refs).await {
        Ok(()) => {
            // Applied and committed, not yet acknowledged: the window the version guard covers.
            failpoint("sink.after_apply");
            let newest = refs.iter().map(|it| it.event_time_ms).max().unwrap_or(0);
            let rows = refs.iter().map(|it| it.ops.len()).sum();
            ctx.status.events_skipped_total.fetch_add(skipped as u64, Ordering::Relaxed);
            ctx.status.batch(items.len() - skipped, rows, newest);
            Ok(Some(all_ids()))
        }
        Err(ApplyError::Unavailable(reason)) => {
            tracing::warn!(sink = %config.name, reason = %driftless_core::redact(&reason), "target unavailable; retrying");
            ctx.status
                .set_state(SinkState::Retrying, Some(format!("target unavailable: {reason}")));
            session.release(broker, all_ids()).await?;
            Ok(None)
        }
        Err(ApplyError::Schema { table, reason }) => {
            session.release(broker, all_ids()).await?;
            Err(SinkError::Schema { sink: config.name.clone(), table, reason })
        }
        Err(ApplyError::Rejected(reason)) => {
            tracing::warn!(sink = %config.name, reason = %driftless_core::redact(&reason), "batch refused; applying event by event");
            let mut done = Vec::new();
            for (i, (id, it)) in items.iter().enumerate() {
                match target.apply(&[it]).await {
                    Ok(()) => {
                        done.push(id.clone());
                        ctx.status.batch(1, it.ops.len(), it.event_time_ms);
                    }
                    Err(ApplyError::Rejected(e)) => {
                        ctx.status.events_rejected_total.fetch_add(1, Ordering::Relaxed);
                        session.reject(broker, id.clone(), e, false).await?;
                    }
                    Err(ApplyError::Unavailable(_)) => {
                        session.ack(broker, done).await?;
                        let rest = items[i..].iter().map(|(id, _)| id.clone()).collect();
                        session.release(broker, rest).await?;
                        return Ok(None);
                    }
                    Err(ApplyError::Schema { table, reason }) => {
                        session.ack(broker, done).await?;
                        let rest = items[i..].iter().map(|(id, _)| id.clone()).collect();
                        session.release(broker, rest).await?;
                        return Err(SinkError::Schema { sink: config.name.clone(), table, reason });
                    }
                }
            }
            Ok(Some(done))
        }
    }
}

/// Sends a batch to a webhook, concurrently (one request per key at most: the broker hands out
/// one event per key). `Ok(false)` when the target was unreachable for all of them.
async fn deliver_webhook(
    config: &SinkConfig,
    mapper: &Mapper,
    ctx: &SinkContext,
    session: &Session<'_>,
    hook: &Webhook,
    breaker: &mut Breaker,
    deliveries: Vec<Delivery<Bytes>>,
) -> Result<bool> {
    let broker = &ctx.broker;
    // A webhook sends whole events: parse them, as `Broker::fetch` does.
    let deliveries = deliveries.into_iter().map(Delivery::parsed);
    let mut skipped = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for d in deliveries {
        match mapper.selects(&d.event) {
            Ok(false) => skipped.push(d.delivery_id),
            Ok(true) => {
                let hook = hook.clone();
                tasks.spawn_blocking(move || {
                    let outcome = hook.send(&d.event);
                    let time = d.event.get("time").and_then(|t| t.as_str()).and_then(rfc3339_ms);
                    (d.delivery_id, outcome, time.unwrap_or(0))
                });
            }
            Err(e) => {
                ctx.status.events_rejected_total.fetch_add(1, Ordering::Relaxed);
                session.reject(broker, d.delivery_id, e, false).await?;
            }
        }
    }
    ctx.status.events_skipped_total.fetch_add(skipped.len() as u64, Ordering::Relaxed);
    let mut acks = skipped;
    let mut released = Vec::new();
    let (mut delivered, mut newest) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let Ok((id, outcome, time)) = joined else {
            continue; // a panicked send: the delivery times out and is redelivered
        };
        match outcome {
            Outcome::Delivered => {
                breaker.success();
                delivered += 1;
                newest = newest.max(time);
                acks.push(id);
            }
            Outcome::Refused(e) => {
                breaker.success(); // the target is up; the event is wrong
                ctx.status.events_rejected_total.fetch_add(1, Ordering::Relaxed);
                session.reject(broker, id, e, true).await?;
            }
            Outcome::Failed(e) => {
                if breaker.failure(Instant::now()) {
                    tracing::warn!(sink = %config.name, error = %driftless_core::redact(&e.to_string()), "webhook circuit open");
                }
                ctx.status.events_rejected_total.fetch_add(1, Ordering::Relaxed);
                ctx.status.set_state(SinkState::Retrying, Some(e.clone()));
                session.reject(broker, id, e, false).await?;
            }
            Outcome::Unreachable(e) => {
                breaker.failure(Instant::now());
                ctx.status.set_state(SinkState::Retrying, Some(format!("target unavailable: {e}")));
                released.push(id);
            }
        }
    }
    session.ack(broker, acks).await?;
    if delivered > 0 {
        ctx.status.batch(delivered, delivered, newest);
    }
    let all_unreachable = delivered == 0 && !released.is_empty();
    session.release(broker, released).await?;
    Ok(!all_unreachable)
}

#[derive(Debug)]
struct Entry {
    config: SinkConfig,
    status: Arc<SinkStatus>,
    paused: watch::Sender<bool>,
}

/// The running sinks.
#[derive(Debug)]
pub struct Sinks {
    entries: Vec<Entry>,
    broker: Option<Arc<Broker>>,
    tasks: Tasks,
}

/// Why a rebuild cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildRefused {
    /// No such sink.
    #[error(transparent)]
    UnknownSink(#[from] UnknownSink),
    /// A webhook has no tables.
    #[error("sink `{0}` is a webhook: there are no tables to rebuild (seek its group instead)")]
    NotATable(String),
    /// One is running.
    #[error("sink `{0}` is already rebuilding; see its status for progress")]
    Running(String),
}

/// No sink has that name.
#[derive(Debug, thiserror::Error)]
#[error("no sink is called `{0}`; `driftless sink list` shows the configured ones")]
pub struct UnknownSink(pub String);

impl Sinks {
    /// Validates every config and compiles its mappings, then starts each sink on the current
    /// tokio runtime.
    pub fn start(configs: Vec<SinkConfig>, broker: Arc<Broker>) -> Result<Self> {
        let mut names = std::collections::BTreeSet::new();
        let mut mappers = Vec::new();
        for c in &configs {
            c.validate()?;
            if !names.insert(c.name.clone()) {
                return Err(SinkError::Config {
                    sink: c.name.clone(),
                    field: "name".into(),
                    reason: "two sinks have this name; names must be unique".into(),
                });
            }
            mappers.push(Mapper::compile(&c.name, &c.mappings)?);
        }
        let tasks = Tasks::default();
        let mut entries = Vec::new();
        for (config, mapper) in configs.into_iter().zip(mappers) {
            let status = Arc::new(SinkStatus::new(&config));
            let (paused, paused_rx) = watch::channel(config.paused);
            let mapper = Arc::new(mapper);
            for _ in 0..config.workers.max(1) {
                let ctx = SinkContext {
                    broker: Arc::clone(&broker),
                    status: Arc::clone(&status),
                    control: Control::new(paused_rx.clone(), tasks.shutdown_receiver()),
                };
                tasks.spawn(supervise(config.clone(), Arc::clone(&mapper), ctx));
            }
            entries.push(Entry { config, status, paused });
        }
        Ok(Self { entries, broker: Some(broker), tasks })
    }

    /// No sinks.
    pub fn none() -> Self {
        Self { entries: Vec::new(), broker: None, tasks: Tasks::default() }
    }

    /// Every sink's status.
    pub fn statuses(&self) -> Vec<Arc<SinkStatus>> {
        self.entries.iter().map(|e| Arc::clone(&e.status)).collect()
    }

    /// The configuration of the sink called `name`.
    pub fn config(&self, name: &str) -> Option<&SinkConfig> {
        self.entries.iter().find(|e| e.config.name == name).map(|e| &e.config)
    }

    /// Pauses (`true`) or resumes (`false`) a sink.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<Arc<SinkStatus>, UnknownSink> {
        let e = self
            .entries
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| UnknownSink(name.to_string()))?;
        e.paused.send_replace(paused);
        // The sink's task shows `paused` once its current batch is done.
        if !paused && e.status.state().0 == SinkState::Paused {
            e.status.set_state(SinkState::Running, None);
        }
        Ok(Arc::clone(&e.status))
    }

    /// Starts rebuilding sink `name`'s tables from the earliest events (see [`crate::rebuild`]);
    /// progress shows in its status. Refused for a webhook, or while a rebuild runs.
    pub fn rebuild(&self, name: &str) -> Result<Arc<SinkStatus>, RebuildRefused> {
        let e = self
            .entries
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| RebuildRefused::UnknownSink(UnknownSink(name.to_string())))?;
        if matches!(e.config.target, TargetConfig::Webhook(_)) {
            return Err(RebuildRefused::NotATable(name.to_string()));
        }
        if e.status
            .rebuild()
            .is_some_and(|r| matches!(r.phase, RebuildPhase::Replaying | RebuildPhase::Swapping))
        {
            return Err(RebuildRefused::Running(name.to_string()));
        }
        let Some(broker) = self.broker.clone() else {
            return Err(RebuildRefused::UnknownSink(UnknownSink(name.to_string())));
        };
        e.status.set_rebuild(RebuildPhase::Replaying, 0, None);
        let (config, status, paused) = (e.config.clone(), Arc::clone(&e.status), e.paused.clone());
        let shutdown = self.tasks.shutdown_receiver();
        self.tasks.spawn(async move {
            tracing::info!(sink = %config.name, "rebuild started");
            let r =
                crate::rebuild::run(config.clone(), broker, Arc::clone(&status), paused, shutdown)
                    .await;
            if let Err(e) = r {
                tracing::warn!(sink = %config.name, error = %driftless_core::redact(&e.to_string()), "rebuild failed");
                let events = status.rebuild().map_or(0, |r| r.events_replayed);
                status.set_rebuild(RebuildPhase::Failed, events, Some(e.to_string()));
            } else {
                tracing::info!(sink = %config.name, "rebuild swapped in");
            }
        });
        Ok(Arc::clone(&e.status))
    }

    /// Asks every sink to stop after its current batch and waits for them.
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
    }
}

async fn supervise(config: SinkConfig, mapper: Arc<Mapper>, mut ctx: SinkContext) {
    let mut backoff = Backoff::new(RETRY_BACKOFF_MS_MIN, RETRY_BACKOFF_MS_MAX);
    loop {
        if !ctx.wait_while_paused().await {
            break;
        }
        ctx.status.set_state(SinkState::Starting, None);
        let started = Instant::now();
        match run_sink(&config, &mapper, &mut ctx, false).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                tracing::warn!(sink = %config.name, error = %driftless_core::redact(&e.to_string()), "sink failed; retrying");
                ctx.status.set_state(SinkState::Retrying, Some(e.to_string()));
                ctx.status.restarts_total.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                if !ctx.sleep(backoff.next_delay()).await {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(sink = %config.name, error = %driftless_core::redact(&e.to_string()), "sink stopped");
                ctx.status.set_state(SinkState::Failed, Some(e.to_string()));
                return;
            }
        }
    }
    ctx.status.set_state(SinkState::Stopped, None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use driftless_broker::{BrokerConfig, TopicSpec};
    use driftless_core::Event;

    /// Regression: the apply loop listened for produces only after taking its prefetch, so an
    /// event produced while the previous batch was applied (after the prefetch's fetch) waited
    /// for the idle wait to run out, 1 s, unless another event came.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_produced_after_an_empty_prefetch_wakes_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::default()).unwrap());
        broker.create_topic("t", TopicSpec { partitions: 1, ..TopicSpec::default() }).unwrap();
        let config: SinkConfig = toml::from_str(
            r#"
            name = "s"
            topics = ["t"]
            target = { kind = "sqlite", path = "unused.db" }
            [[mapping]]
            types = ["x"]
            table = "x"
            key = ["id"]
            columns = { id = ".subject" }
            "#,
        )
        .unwrap();
        let mapper = Arc::new(Mapper::compile(&config.name, &config.mappings).unwrap());
        let session = Session::join(&config, &broker).await.unwrap();
        let mut pipeline = Pipeline::default();
        pipeline.start_prefetch(&broker, &session, 10, &mapper);
        // The event arrives after the prefetch's fetch is done and before the loop takes it.
        while !pipeline.prefetch.as_ref().unwrap().1.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut e = Event::new("e1", "/test", "x");
        e.subject = Some("k".into());
        broker.produce("t", vec![e]).unwrap();
        let (listener, (fetched, mapped)) = pipeline.take_prefetch().await.unwrap();
        assert!(fetched.deliveries.is_empty() && mapped.is_empty(), "fetched before the event");
        tokio::time::timeout(Duration::from_secs(10), listener)
            .await
            .expect("the produce after the prefetch's fetch wakes the listener it came with");

        // And the prefetch maps what it fetches.
        pipeline.start_prefetch(&broker, &session, 10, &mapper);
        let (_, (fetched, mapped)) = pipeline.take_prefetch().await.unwrap();
        assert_eq!(fetched.deliveries.len(), 1);
        let ops = &mapped[0].as_ref().unwrap().ops;
        assert_eq!(ops[0].key, vec![("id".to_string(), serde_json::json!("k"))]);
    }
}
