//! Starts the configured sources, supervises them and exposes their status.
//!
//! Each source runs as one tokio task under a supervisor: a transient failure (connection lost,
//! database restarting) is retried with capped exponential backoff and jitter; any other failure
//! stops the source in state `failed` with the error, for an operator to read in the API and
//! `/metrics`. Pausing takes effect between batches: a paused source holds no upstream position
//! it has not made durable.
//!
//! Invariant: the status is written only by the source's own task and the supervisor; readers
//! (the API, `/metrics`) see a consistent snapshot per field, never a torn batch.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftless_broker::Broker;
use driftless_control::{Backoff, Control, Tasks};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{SourceConfig, SourceKind};
use crate::emit::Emitter;
use crate::error::{ConnectError, Result};
use crate::failpoint::Failpoints;

/// Longest wait between restarts of a failing source.
pub const RESTART_BACKOFF_MS_MAX: u64 = 30_000;
/// First wait before restarting a failed source.
pub const RESTART_BACKOFF_MS_MIN: u64 = 250;

/// Upper bounds of the commit → durable latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000, 30000];

/// What a source is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Connecting and checking its setup.
    Starting,
    /// Reading and appending.
    Running,
    /// Reading a table's existing rows (while streaming).
    Snapshotting,
    /// Paused by an operator.
    Paused,
    /// Waiting to retry after a transient failure.
    Retrying,
    /// Stopped by an error an operator must fix.
    Failed,
    /// Stopped because the server is shutting down.
    Stopped,
}

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS_MS`]).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let ms = d.as_millis() as u64;
        let i = LATENCY_BUCKETS_MS.iter().position(|&b| ms < b).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is above every bound) and the sum in µs.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.sum_us.load(Ordering::Relaxed),
        )
    }
}

/// Live figures of one source, shared between its task and readers.
#[derive(Debug)]
pub struct SourceStatus {
    /// The source's name.
    pub name: String,
    /// Its kind (`postgres_cdc`, ...).
    pub kind: &'static str,
    state: Mutex<(SourceState, Option<String>)>,
    /// Events appended (durable) since start.
    pub events_total: AtomicU64,
    /// Upstream rows or changes read since start.
    pub rows_total: AtomicU64,
    /// Restarts after failures since start.
    pub restarts_total: AtomicU64,
    /// Append time of the newest durable event, Unix ms (0 = none yet).
    pub last_event_ms: AtomicI64,
    /// Bytes of WAL between the server's current position and the slot's confirmed position
    /// (-1 = unknown or not a CDC source).
    pub slot_lag_bytes: AtomicI64,
    /// Outbox rows waiting, counted at least every second while the source is connected,
    /// paused or not (-1 = not an outbox source, or not counted yet).
    pub outbox_backlog_rows: AtomicI64,
    /// Snapshot rows read so far.
    pub snapshot_rows_done: AtomicU64,
    /// Snapshot rows estimated in total (0 = no snapshot running or done).
    pub snapshot_rows_total: AtomicU64,
    /// Upstream commit → durable in the log.
    pub commit_to_durable: LatencyHistogram,
}

/// A serializable copy of a [`SourceStatus`], for the API.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: &'static str,
    /// State.
    pub state: SourceState,
    /// The last error, if it failed or is retrying.
    pub error: Option<String>,
    /// Events appended since start.
    pub events_total: u64,
    /// Rows read since start.
    pub rows_total: u64,
    /// Restarts since start.
    pub restarts_total: u64,
    /// Unix ms of the newest durable event (0 = none).
    pub last_event_ms: i64,
    /// WAL bytes behind (-1 unknown).
    pub slot_lag_bytes: i64,
    /// Outbox rows waiting (-1 unknown).
    pub outbox_backlog_rows: i64,
    /// Snapshot progress: rows read.
    pub snapshot_rows_done: u64,
    /// Snapshot progress: rows estimated.
    pub snapshot_rows_total: u64,
}

impl SourceStatus {
    /// A fresh status in state `starting`.
    pub fn new(name: impl Into<String>, kind: &'static str) -> Self {
        Self {
            name: name.into(),
            kind,
            state: Mutex::new((SourceState::Starting, None)),
            events_total: AtomicU64::new(0),
            rows_total: AtomicU64::new(0),
            restarts_total: AtomicU64::new(0),
            last_event_ms: AtomicI64::new(0),
            slot_lag_bytes: AtomicI64::new(-1),
            outbox_backlog_rows: AtomicI64::new(-1),
            snapshot_rows_done: AtomicU64::new(0),
            snapshot_rows_total: AtomicU64::new(0),
            commit_to_durable: LatencyHistogram::default(),
        }
    }

    /// Sets the state (and the error shown with it).
    pub fn set_state(&self, state: SourceState, error: Option<String>) {
        // The API and /metrics show this text: credentials never reach it.
        let error = error.map(|e| driftless_core::redact(&e));
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state, error);
    }

    /// The current state and error.
    pub fn state(&self) -> (SourceState, Option<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records `events` made durable now.
    pub fn appended(&self, events: u64, now_ms: i64) {
        self.events_total.fetch_add(events, Ordering::Relaxed);
        self.last_event_ms.store(now_ms, Ordering::Relaxed);
    }

    /// A copy for the API.
    pub fn report(&self) -> SourceReport {
        let (state, error) = self.state();
        SourceReport {
            name: self.name.clone(),
            kind: self.kind,
            state,
            error,
            events_total: self.events_total.load(Ordering::Relaxed),
            rows_total: self.rows_total.load(Ordering::Relaxed),
            restarts_total: self.restarts_total.load(Ordering::Relaxed),
            last_event_ms: self.last_event_ms.load(Ordering::Relaxed),
            slot_lag_bytes: self.slot_lag_bytes.load(Ordering::Relaxed),
            outbox_backlog_rows: self.outbox_backlog_rows.load(Ordering::Relaxed),
            snapshot_rows_done: self.snapshot_rows_done.load(Ordering::Relaxed),
            snapshot_rows_total: self.snapshot_rows_total.load(Ordering::Relaxed),
        }
    }
}

/// What a running source gets: where to write, where to report, and its controls.
pub struct SourceContext {
    /// Appends and positions.
    pub emitter: Emitter,
    /// Live figures.
    pub status: Arc<SourceStatus>,
    /// Where tests make the source fail on purpose (unarmed unless a test arms them).
    pub failpoints: Failpoints,
    control: Control,
}

impl SourceContext {
    /// A context outside the supervisor (tests, `driftless outbox relay --once`).
    pub fn new(
        emitter: Emitter,
        status: Arc<SourceStatus>,
        paused: watch::Receiver<bool>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            emitter,
            status,
            failpoints: Failpoints::default(),
            control: Control::new(paused, shutdown),
        }
    }

    /// Whether the server is shutting down (the source should return `Ok(())` promptly).
    pub fn is_shutting_down(&self) -> bool {
        self.control.is_shutting_down()
    }

    /// Waits while the source is paused, showing `paused` meanwhile. Returns `false` if the
    /// server is shutting down.
    pub async fn wait_while_paused(&mut self) -> bool {
        if !self.control.is_paused() {
            return !self.is_shutting_down();
        }
        let (before, _) = self.status.state();
        self.status.set_state(SourceState::Paused, None);
        let resumed = self.control.wait_resumed().await;
        if resumed {
            self.status.set_state(before, None);
        }
        resumed
    }

    /// Whether an operator paused the source.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Waits up to `d` for the source to be resumed, without touching its state: `Some(true)`
    /// once it is not paused, `Some(false)` if the server is shutting down, `None` if it is
    /// still paused after `d`. (For a source that does something while paused, such as counting
    /// its backlog; [`SourceContext::wait_while_paused`] otherwise.)
    pub async fn wait_resumed_within(&mut self, d: Duration) -> Option<bool> {
        tokio::select! {
            resumed = self.control.wait_resumed() => Some(resumed),
            () = tokio::time::sleep(d) => None,
        }
    }

    /// Sleeps up to `d`, returning early (with `false`) on shutdown.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        self.control.sleep(d).await
    }

    /// Resolves when the server starts shutting down.
    pub async fn shutdown_signal(&mut self) {
        self.control.shutdown_signal().await;
    }
}

#[derive(Debug)]
struct Entry {
    config: SourceConfig,
    status: Arc<SourceStatus>,
    paused: watch::Sender<bool>,
}

/// The running sources.
#[derive(Debug)]
pub struct Sources {
    entries: Vec<Entry>,
    tasks: Tasks,
}

/// No source has that name.
#[derive(Debug, thiserror::Error)]
#[error("no source is called `{0}`; `driftless source list` shows the configured ones")]
pub struct UnknownSource(pub String);

impl Sources {
    /// Validates every config, then starts each source on the current tokio runtime.
    pub fn start(configs: Vec<SourceConfig>, broker: Arc<Broker>) -> Result<Self> {
        let mut names = std::collections::BTreeSet::new();
        for c in &configs {
            c.validate()?;
            if !names.insert(c.name.clone()) {
                return Err(ConnectError::Config {
                    source_name: c.name.clone(),
                    field: "name".into(),
                    reason: "two sources have this name; names must be unique".into(),
                });
            }
        }
        let tasks = Tasks::default();
        let mut entries = Vec::new();
        for config in configs {
            let status = Arc::new(SourceStatus::new(config.name.clone(), config.kind_name()));
            let (paused, paused_rx) = watch::channel(config.paused);
            let emitter = Emitter::new(Arc::clone(&broker), config.name.clone(), config.partitions);
            let ctx = SourceContext::new(
                emitter,
                Arc::clone(&status),
                paused_rx,
                tasks.shutdown_receiver(),
            );
            tasks.spawn(supervise(config.clone(), ctx));
            entries.push(Entry { config, status, paused });
        }
        Ok(Self { entries, tasks })
    }

    /// No sources.
    pub fn none() -> Self {
        Self { entries: Vec::new(), tasks: Tasks::default() }
    }

    /// Every source's status.
    pub fn statuses(&self) -> Vec<Arc<SourceStatus>> {
        self.entries.iter().map(|e| Arc::clone(&e.status)).collect()
    }

    /// The configuration of the source called `name`.
    pub fn config(&self, name: &str) -> Option<&SourceConfig> {
        self.entries.iter().find(|e| e.config.name == name).map(|e| &e.config)
    }

    /// Pauses (`true`) or resumes (`false`) a source.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<Arc<SourceStatus>, UnknownSource> {
        let e = self
            .entries
            .iter()
            .find(|e| e.config.name == name)
            .ok_or_else(|| UnknownSource(name.to_string()))?;
        e.paused.send_replace(paused);
        if !paused && e.status.state().0 == SourceState::Paused {
            e.status.set_state(SourceState::Running, None);
        }
        Ok(Arc::clone(&e.status))
    }

    /// Asks every source to stop and waits for them (each finishes or abandons its batch; what
    /// was not made durable is simply read again after restart).
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
    }
}

async fn run_source(config: &SourceConfig, ctx: &mut SourceContext) -> Result<()> {
    match &config.kind {
        SourceKind::PostgresCdc(c) => crate::pg::cdc::run(&config.name, c, ctx).await,
        SourceKind::PostgresOutbox(c) => crate::outbox::run_postgres(&config.name, c, ctx).await,
        SourceKind::SqliteOutbox(c) => crate::sqlite_outbox::run(&config.name, c, ctx).await,
    }
}

async fn supervise(config: SourceConfig, mut ctx: SourceContext) {
    let mut backoff = Backoff::new(RESTART_BACKOFF_MS_MIN, RESTART_BACKOFF_MS_MAX);
    // An outbox source waits out a pause itself, once connected, to keep counting its backlog
    // (rows written meanwhile are what an operator looks for while it is paused).
    let waits_itself =
        matches!(config.kind, SourceKind::PostgresOutbox(_) | SourceKind::SqliteOutbox(_));
    loop {
        if !waits_itself && !ctx.wait_while_paused().await {
            break;
        }
        if ctx.is_shutting_down() {
            break;
        }
        ctx.status.set_state(SourceState::Starting, None);
        let started = std::time::Instant::now();
        match run_source(&config, &mut ctx).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                tracing::warn!(source = %config.name, error = %driftless_core::redact(&e.to_string()), "source failed; retrying");
                ctx.status.set_state(SourceState::Retrying, Some(e.to_string()));
                ctx.status.restarts_total.fetch_add(1, Ordering::Relaxed);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                if !ctx.sleep(backoff.next_delay()).await {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(source = %config.name, error = %driftless_core::redact(&e.to_string()), "source stopped");
                ctx.status.set_state(SourceState::Failed, Some(e.to_string()));
                return;
            }
        }
    }
    ctx.status.set_state(SourceState::Stopped, None);
}
