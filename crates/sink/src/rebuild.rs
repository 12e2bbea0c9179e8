//! Rebuilding a table sink's projection from the log without downtime.
//!
//! Steps: create an empty shadow of every mapped table (`<table>__rebuild`); replay the sink's
//! topics from the earliest event into the shadows with a separate consumer group
//! (`<group>-rebuild`), on the normal apply path; once caught up, pause the live sink between
//! batches, let the replay catch up with what arrived meanwhile, swap every shadow in for its
//! table in one transaction, move the live group to the replay group's positions, and resume.
//!
//! Invariants:
//! - readers see the old tables, untouched, until the swap commits, then the rebuilt ones — never
//!   a half-built table;
//! - the live group moves to exactly the replay group's committed offsets while the live sink is
//!   paused, so no event is skipped or applied twice across the swap (and an event seen twice
//!   would be refused by the version guard anyway);
//! - a rebuild that fails leaves the live tables and the live sink as they were (resumed, unless
//!   an operator had paused it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use driftless_broker::{Broker, SeekTarget};
use driftless_control::Control;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{SinkConfig, TargetConfig};
use crate::error::{Result, SinkError};
use crate::mapping::Mapper;
use crate::postgres::PgSink;
use crate::runtime::{run_sink, SinkContext, SinkState, SinkStatus};
use crate::sqlite::SqliteSink;

/// Appended to a table's name for its shadow.
pub const SHADOW_SUFFIX: &str = "__rebuild";
/// Longest wait for the live sink to finish its batch and pause.
pub const PAUSE_WAIT_MS_MAX: u64 = 60_000;

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RebuildPhase {
    /// Replaying the topics into the shadow tables; readers see the old tables.
    Replaying,
    /// The live sink is paused and the shadows are being swapped in.
    Swapping,
    /// Swapped in; the live sink resumed.
    Done,
    /// Stopped with an error; the live tables are untouched.
    Failed,
}

/// A rebuild's progress, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// Phase.
    pub phase: RebuildPhase,
    /// Events applied to the shadows so far.
    pub events_replayed: u64,
    /// When it started (Unix ms).
    pub started_ms: i64,
    /// When it finished (Unix ms; 0 while running).
    pub finished_ms: i64,
    /// Why it failed.
    pub error: Option<String>,
}

/// The configuration of the replay: the same sink writing to the shadow tables, under its own
/// name (for positions) and group.
pub(crate) fn shadow_config(config: &SinkConfig) -> SinkConfig {
    let mut shadow = config.clone();
    shadow.name = format!("{}{SHADOW_SUFFIX}", config.name);
    shadow.group = Some(format!("{}-rebuild", config.group()));
    shadow.paused = false;
    for m in &mut shadow.mappings {
        m.table = m.table.as_ref().map(|t| format!("{t}{SHADOW_SUFFIX}"));
    }
    shadow
}

/// Wall time in Unix ms, from the project's one clock.
fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

/// The tables a sink writes.
fn tables(config: &SinkConfig) -> Vec<String> {
    let mut t: Vec<String> = config.mappings.iter().filter_map(|m| m.table.clone()).collect();
    t.sort();
    t.dedup();
    t
}

fn unavailable(sink: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable { sink: sink.to_string(), reason: e.to_string() }
}

/// Runs a whole rebuild of `config`'s tables. `paused` pauses the live sink; `shutdown` stops the
/// replay early (the live tables stay as they were).
pub(crate) async fn run(
    config: SinkConfig,
    broker: Arc<Broker>,
    status: Arc<SinkStatus>,
    paused: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let name = config.name.clone();
    let shadow = shadow_config(&config);
    let tables = tables(&config);
    // Shadows, empty, and the replay group at the start of every topic.
    match &config.target {
        TargetConfig::Postgres { url, version_column } => {
            let mut pg = PgSink::new(&name, url.expose(), version_column);
            pg.check(&Mapper::compile(&name, &config.mappings)?).await?;
            pg.create_shadows(&tables, SHADOW_SUFFIX, &shadow.name)
                .await
                .map_err(|e| unavailable(&name, e))?;
        }
        TargetConfig::Sqlite { path, version_column } => {
            let lite = SqliteSink::new(&name, path.clone(), version_column);
            lite.check(&Mapper::compile(&name, &config.mappings)?).await?;
            lite.create_shadows(&tables, SHADOW_SUFFIX, &shadow.name)
                .await
                .map_err(|e| unavailable(&name, e))?;
        }
        TargetConfig::Webhook(_) => {
            return Err(SinkError::Config {
                sink: name,
                field: "target".into(),
                reason: "a webhook has no tables to rebuild".into(),
            })
        }
    }
    let shadow_group = shadow.group();
    for topic in &config.topics {
        let (b, g, t) = (Arc::clone(&broker), shadow_group.clone(), topic.clone());
        tokio::task::spawn_blocking(move || b.seek(&g, &t, None, SeekTarget::Earliest))
            .await
            .map_err(|e| unavailable(&name, e))?
            .map_err(|error| SinkError::Broker { sink: name.clone(), error })?;
    }
    let mapper = Arc::new(Mapper::compile(&shadow.name, &shadow.mappings)?);
    let replay_status = Arc::new(SinkStatus::new(&shadow));
    let (_never_paused, paused_rx) = watch::channel(false);
    let mut ctx = SinkContext {
        broker: Arc::clone(&broker),
        status: Arc::clone(&replay_status),
        control: Control::new(paused_rx, shutdown),
    };
    let progress = |phase| {
        status.set_rebuild(phase, replay_status.events_applied_total.load(Ordering::Relaxed), None)
    };

    // Replay while the live sink keeps applying.
    run_sink(&shadow, &mapper, &mut ctx, true).await?;
    if ctx.is_shutting_down() {
        return Err(unavailable(&name, "the server is shutting down"));
    }
    progress(RebuildPhase::Swapping);

    // Pause the live sink between batches, catch up, swap, move the live group, resume.
    let was_paused = *paused.borrow();
    paused.send_replace(true);
    let result = async {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(PAUSE_WAIT_MS_MAX);
        // A live sink that stops for shutdown never reports paused: the wait ends on shutdown
        // too (it was the one wait here that did not, and SIGTERM then waited for it).
        while !status.all_paused() {
            if tokio::time::Instant::now() > deadline {
                return Err(unavailable(&name, "the live sink did not pause within 60 s"));
            }
            if !ctx.control.sleep(Duration::from_millis(10)).await {
                return Err(unavailable(&name, "the server is shutting down"));
            }
        }
        run_sink(&shadow, &mapper, &mut ctx, true).await?;
        match &config.target {
            TargetConfig::Postgres { url, version_column } => {
                PgSink::new(&name, url.expose(), version_column)
                    .swap(&tables, SHADOW_SUFFIX, &name, &shadow.name)
                    .await
            }
            TargetConfig::Sqlite { path, version_column } => {
                SqliteSink::new(&name, path.clone(), version_column)
                    .swap(&tables, SHADOW_SUFFIX, &name, &shadow.name)
                    .await
            }
            TargetConfig::Webhook(_) => Ok(()),
        }
        .map_err(|e| unavailable(&name, e))?;
        let (b, live, sg) = (Arc::clone(&broker), config.group(), shadow_group.clone());
        tokio::task::spawn_blocking(move || {
            let replay = b.describe_group(&sg)?;
            for p in replay.partitions {
                b.seek(&live, &p.topic, Some(p.partition), SeekTarget::Offset(p.committed))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| unavailable(&name, e))?
        .map_err(|error| SinkError::Broker { sink: name.clone(), error })
    }
    .await;
    paused.send_replace(was_paused);
    if !was_paused && status.state().0 == SinkState::Paused {
        status.set_state(SinkState::Running, None);
    }
    result?;
    // The replay's group has done its work: remove it, so its lag does not haunt the metrics.
    let (b, sg) = (Arc::clone(&broker), shadow_group.clone());
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.delete_group(&sg)).await {
        tracing::warn!(sink = %name, error = %e, "could not delete the rebuild's group");
    }
    status.set_rebuild(
        RebuildPhase::Done,
        replay_status.events_applied_total.load(Ordering::Relaxed),
        None,
    );
    Ok(())
}

/// Starts time of a rebuild report.
pub(crate) fn started() -> RebuildReport {
    RebuildReport {
        phase: RebuildPhase::Replaying,
        events_replayed: 0,
        started_ms: now_ms(),
        finished_ms: 0,
        error: None,
    }
}

/// Stamps the end of a report.
pub(crate) fn finish(report: &mut RebuildReport) {
    report.finished_ms = now_ms();
}
