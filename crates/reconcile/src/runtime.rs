//! Runs the configured reconciliations: on their schedule and on demand (API, CLI), one run at a
//! time each, keeping a bounded history of runs for the API and `/metrics`.
//!
//! Invariants: a reconciliation's plan is derived from its sink's configuration once at start
//! (a missing sink or a bad column list stops the server's start); two runs of one
//! reconciliation never overlap (an on-demand request during a run is refused as busy); the
//! history holds at most [`RUNS_KEPT`] runs and survives restarts: after each run it is stored
//! in the log's connector state (`reconcile:<name>`), with at most
//! [`PERSISTED_KEYS_PER_KIND`] keys per kind, corrections and remaining keys per run, and at
//! most [`HISTORY_BYTES_MAX`] bytes. Other sinks reading the reconciled sink's topics are listed
//! in the plan, so that a repair is dry-run through their mappings too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use driftless_broker::Broker;
use driftless_sink::SinkConfig;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{OtherSink, Plan, Policy, ReconcileConfig, REPAIR_WAIT_MS_MAX};
use crate::db::Conn;
use crate::error::{ReconcileError, Result};
use crate::run::{run, RunReport};

/// Runs kept per reconciliation.
pub const RUNS_KEPT: usize = 20;
/// Drifted keys per kind and run kept in the stored history (the live report has more).
pub const PERSISTED_KEYS_PER_KIND: usize = 20;
/// Largest stored history, in bytes (older runs are dropped to fit).
pub const HISTORY_BYTES_MAX: usize = 256 << 10;

/// A stored run: (report, error, start in Unix ms).
type StoredRun = (Option<RunReport>, Option<String>, i64);

fn state_name(name: &str) -> String {
    format!("reconcile:{name}")
}

/// The stored history of `name`, newest first (empty when none or unreadable).
fn load_history(broker: &Broker, name: &str) -> VecDeque<RunRecord> {
    let Some(bytes) = broker.connector_state(&state_name(name)) else {
        return VecDeque::new();
    };
    match serde_json::from_slice::<Vec<StoredRun>>(&bytes) {
        Ok(runs) => runs
            .into_iter()
            .take(RUNS_KEPT)
            .map(|(report, error, at_ms)| RunRecord { report, error, at_ms })
            .collect(),
        Err(e) => {
            tracing::warn!(reconcile = name, error = %e, "stored history unreadable; starting empty");
            VecDeque::new()
        }
    }
}

/// Stores `runs` (trimmed to the limits) for `name`.
async fn store_history(broker: &Arc<Broker>, name: &str, runs: &VecDeque<RunRecord>) {
    let mut stored: Vec<StoredRun> = runs
        .iter()
        .map(|r| {
            let report = r.report.clone().map(|mut rep| {
                for keys in rep.keys.values_mut() {
                    keys.truncate(PERSISTED_KEYS_PER_KIND);
                }
                let kept = rep.keys.get(&crate::run::DriftKind::Stale).cloned().unwrap_or_default();
                rep.stale_columns.retain(|k, _| kept.contains(k));
                rep.corrections.truncate(PERSISTED_KEYS_PER_KIND);
                rep.keys_remaining.truncate(PERSISTED_KEYS_PER_KIND);
                rep
            });
            (report, r.error.clone(), r.at_ms)
        })
        .collect();
    let bytes = loop {
        let bytes = serde_json::to_vec(&stored).unwrap_or_default();
        if bytes.len() <= HISTORY_BYTES_MAX || stored.len() <= 1 {
            break bytes;
        }
        stored.pop();
    };
    let (b, key) = (Arc::clone(broker), state_name(name));
    let put = tokio::task::spawn_blocking(move || b.put_connector_state(&key, &bytes)).await;
    if !matches!(put, Ok(Ok(()))) {
        tracing::warn!(reconcile = name, "could not store the history of runs");
    }
}

/// A finished run, or why it failed.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The report (absent when the run failed).
    #[serde(flatten)]
    pub report: Option<RunReport>,
    /// Why it failed.
    pub error: Option<String>,
    /// Start, Unix ms.
    pub at_ms: i64,
}

/// A reconciliation's state for the API.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    /// Name.
    pub name: String,
    /// The sink it checks.
    pub sink: String,
    /// `idle` or `running`.
    pub state: &'static str,
    /// `report` or `repair`.
    pub policy: Policy,
    /// The schedule (0 = on demand only).
    pub interval_ms: u64,
    /// Runs since start.
    pub runs_total: u64,
    /// The latest run.
    pub last_run: Option<RunRecord>,
    /// Earlier runs, newest first (only in `describe`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
}

/// One reconciliation's live state.
#[derive(Debug)]
pub struct ReconcileStatus {
    /// Its configuration.
    pub config: ReconcileConfig,
    plan: Mutex<Plan>,
    row_mapping: bool,
    runs: Mutex<VecDeque<RunRecord>>,
    running: tokio::sync::Mutex<()>,
    /// Runs since start.
    pub runs_total: AtomicU64,
}

impl ReconcileStatus {
    /// The API's view; with `history`, every kept run.
    pub fn report(&self, history: bool) -> ReconcileReport {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        ReconcileReport {
            name: self.config.name.clone(),
            sink: self.config.sink.clone(),
            state: if self.running.try_lock().is_ok() { "idle" } else { "running" },
            policy: self.config.policy,
            interval_ms: self.config.interval_ms,
            runs_total: self.runs_total.load(Ordering::Relaxed),
            last_run: runs.front().cloned(),
            history: if history { runs.iter().skip(1).cloned().collect() } else { Vec::new() },
        }
    }

    /// The latest successful run's report.
    pub fn last_report(&self) -> Option<RunReport> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).front().and_then(|r| r.report.clone())
    }
}

/// The configured reconciliations.
#[derive(Debug)]
pub struct Reconcilers {
    entries: Vec<Arc<ReconcileStatus>>,
    broker: Option<Arc<Broker>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// No reconciliation has that name.
#[derive(Debug, thiserror::Error)]
#[error("no reconciliation is called `{0}`; GET /v1/reconciliations lists the configured ones")]
pub struct UnknownReconcile(pub String);

impl Reconcilers {
    /// Derives every plan from its sink and starts the schedules on the current runtime.
    pub fn start(
        configs: Vec<ReconcileConfig>,
        sinks: &[SinkConfig],
        broker: Arc<Broker>,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for c in configs {
            if !names.insert(c.name.clone()) {
                return Err(ReconcileError::Config {
                    name: c.name.clone(),
                    field: "name".into(),
                    reason: "two [[reconcile]] entries have this name".into(),
                });
            }
            let mut plan = validate(&c, sinks)?;
            plan.others = sinks
                .iter()
                .filter(|s| s.name != c.sink)
                .filter(|s| s.topics.iter().any(|t| plan.topics.contains(t)))
                .map(|s| OtherSink {
                    name: s.name.clone(),
                    group: s.group(),
                    topics: s.topics.clone(),
                    mappings: s.mappings.clone(),
                })
                .collect();
            let sink = sinks.iter().find(|s| s.name == c.sink);
            let row_mapping = sink.is_some_and(|s| s.mappings.iter().any(|m| m.row.is_some()));
            let history = load_history(&broker, &c.name);
            entries.push(Arc::new(ReconcileStatus {
                config: c,
                plan: Mutex::new(plan),
                row_mapping,
                runs: Mutex::new(history),
                running: tokio::sync::Mutex::new(()),
                runs_total: AtomicU64::new(0),
            }));
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for e in entries.iter().filter(|e| e.config.interval_ms > 0) {
            let (e, b, mut stop) = (Arc::clone(e), Arc::clone(&broker), shutdown.subscribe());
            tasks.push(tokio::spawn(async move {
                let every = Duration::from_millis(e.config.interval_ms);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.changed() => return,
                    }
                    let repair = e.config.policy == Policy::Repair;
                    if let Err(err) = run_entry(&e, &b, repair, None).await {
                        tracing::warn!(reconcile = %e.config.name, error = %driftless_core::redact(&err.to_string()), "reconciliation failed");
                    }
                }
            }));
        }
        Ok(Self { entries, broker: Some(broker), shutdown, tasks: Mutex::new(tasks) })
    }

    /// None.
    pub fn none() -> Self {
        Self {
            entries: Vec::new(),
            broker: None,
            shutdown: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Every reconciliation's status.
    pub fn statuses(&self) -> Vec<Arc<ReconcileStatus>> {
        self.entries.clone()
    }

    /// The reconciliation called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ReconcileStatus>> {
        self.entries.iter().find(|e| e.config.name == name).cloned()
    }

    /// Runs `name` now; `repair` overrides its policy.
    pub async fn run_now(
        &self,
        name: &str,
        repair: Option<bool>,
    ) -> Result<RunReport, RunNowError> {
        self.run_now_with(name, repair, None).await
    }

    /// [`Reconcilers::run_now`]; `wait_ms` overrides its `repair_wait_ms` (at most
    /// [`REPAIR_WAIT_MS_MAX`]).
    pub async fn run_now_with(
        &self,
        name: &str,
        repair: Option<bool>,
        wait_ms: Option<u64>,
    ) -> Result<RunReport, RunNowError> {
        let e =
            self.get(name).ok_or_else(|| RunNowError::Unknown(UnknownReconcile(name.into())))?;
        let broker = self
            .broker
            .clone()
            .ok_or_else(|| RunNowError::Unknown(UnknownReconcile(name.into())))?;
        let repair = repair.unwrap_or(e.config.policy == Policy::Repair);
        if let Some(ms) = wait_ms.filter(|ms| *ms > REPAIR_WAIT_MS_MAX) {
            return Err(RunNowError::Failed(ReconcileError::Config {
                name: name.into(),
                field: "wait_ms".into(),
                reason: format!("{ms} is above the limit of {REPAIR_WAIT_MS_MAX}"),
            }));
        }
        run_entry(&e, &broker, repair, wait_ms).await.map_err(RunNowError::Failed)
    }

    /// Stops the schedules (a run in progress finishes or is dropped with the runtime).
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Why an on-demand run did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    /// No such reconciliation.
    #[error(transparent)]
    Unknown(#[from] UnknownReconcile),
    /// It failed (or another run is in progress: [`ReconcileError::Busy`]).
    #[error(transparent)]
    Failed(ReconcileError),
}

/// Checks that the sink exists and the plan derives (without a database for row mappings).
pub fn validate(c: &ReconcileConfig, sinks: &[SinkConfig]) -> Result<Plan> {
    let sink = sinks.iter().find(|s| s.name == c.sink).ok_or_else(|| ReconcileError::Config {
        name: c.name.clone(),
        field: "sink".into(),
        reason: format!("no [[sink]] is called `{}`", c.sink),
    })?;
    let row_mapping = sink.mappings.iter().any(|m| m.row.is_some());
    // A `row` mapping's columns come from the projection table at the first run.
    let placeholder: Vec<String> = Vec::new();
    Plan::derive(c, sink, row_mapping.then_some(placeholder.as_slice()))
}

async fn run_entry(
    e: &Arc<ReconcileStatus>,
    broker: &Arc<Broker>,
    repair: bool,
    wait_ms: Option<u64>,
) -> Result<RunReport> {
    let _guard = e.running.try_lock().map_err(|_| ReconcileError::Busy(e.config.name.clone()))?;
    let at_ms = driftless_core::Clock::now_ms(&driftless_core::SystemClock);
    let outcome = async {
        let mut plan = e.plan.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if e.row_mapping && plan.compared.is_empty() {
            // Resolve a `row` mapping's columns from the projection table.
            let conn = Conn::open(&plan.projection.db).await.map_err(|reason| {
                ReconcileError::Database { name: plan.name.clone(), side: "projection", reason }
            })?;
            let cols = conn.columns(&plan.projection.table).await.map_err(|reason| {
                ReconcileError::Database { name: plan.name.clone(), side: "projection", reason }
            })?;
            let sink_stub = plan.clone();
            plan = resolve_row_columns(&e.config, sink_stub, &cols);
            *e.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan.clone();
        }
        let correction = if repair {
            let mut c = e.config.correction.clone().ok_or_else(|| ReconcileError::Config {
                name: e.config.name.clone(),
                field: "correction".into(),
                reason: "repairing needs [reconcile.correction] (upsert_type, delete_type)".into(),
            })?;
            c.repair_wait_ms = wait_ms.unwrap_or(c.repair_wait_ms);
            Some(c)
        } else {
            None
        };
        run(
            &plan,
            broker,
            Duration::from_millis(e.config.lag_window_ms),
            crate::run::Limits {
                keys_reported_max: e.config.keys_reported_max,
                drifted_keys_max: e.config.drifted_keys_max,
            },
            correction.as_ref(),
        )
        .await
    }
    .await;
    e.runs_total.fetch_add(1, Ordering::Relaxed);
    let record = match &outcome {
        Ok(r) => RunRecord { report: Some(r.clone()), error: None, at_ms },
        // Stored and shown by the API: credentials never reach it.
        Err(err) => {
            RunRecord { report: None, error: Some(driftless_core::redact(&err.to_string())), at_ms }
        }
    };
    let snapshot = {
        let mut runs = e.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.push_front(record);
        runs.truncate(RUNS_KEPT);
        runs.clone()
    };
    store_history(broker, &e.config.name, &snapshot).await;
    outcome
}

/// Fills a `row` mapping's compared columns from the projection table's columns: every column
/// but the key and the version column, compared with the source column of the same name unless
/// the config says otherwise.
fn resolve_row_columns(config: &ReconcileConfig, mut plan: Plan, columns: &[String]) -> Plan {
    let mut compared: std::collections::BTreeMap<String, String> =
        plan.compared.iter().cloned().zip(plan.source.columns.iter().cloned()).collect();
    for c in columns {
        if plan.key_names.contains(c) || *c == plan.version_column || plan.not_compared.contains(c)
        {
            continue;
        }
        compared
            .entry(c.clone())
            .or_insert_with(|| config.columns.get(c).cloned().unwrap_or(c.clone()));
    }
    plan.compared = compared.keys().cloned().collect();
    plan.source.columns = compared.values().cloned().collect();
    plan.projection.columns = plan.compared.iter().map(|c| format!("\"{c}\"")).collect();
    plan
}
