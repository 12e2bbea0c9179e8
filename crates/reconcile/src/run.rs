//! One reconciliation run: compare bucket digests, descend into differing buckets, re-check
//! candidates after the lag window, report, and optionally repair through the log.
//!
//! Steps:
//! 1. count both tables (the bucket count follows the larger: about 64 rows per bucket);
//! 2. both sides compute every bucket's digest (rows, sums of two hash halves), concurrently;
//! 3. only the differing buckets' rows are fetched, as (key, row hash): missing (source only),
//!    extra (projection only) and stale (both, different) keys are the candidates;
//! 4. candidates may be changes in flight (committed in the source, not yet in the projection):
//!    after `lag_window_ms`, and after the sink's group consumed everything the log held then,
//!    the candidate keys' rows are compared again and only keys that still differ are reported;
//!    each reported stale key's compared columns are hashed one by one on both sides, and the
//!    report names the columns that differ (`stale_columns`: why the key is stale);
//! 5. with repair, each drifted key's authoritative state becomes a correction event (flagged
//!    `correction = true`; extra keys get delete events) shaped as the sink's mapping reads its
//!    source's events; every correction is dry-run through the sinks' mappings
//!    ([`crate::repair::check`]) and the repair is refused, with nothing appended, if one would
//!    be dead-lettered or write a value the source does not hold; otherwise they are appended to
//!    the sink's topic — the projection is never written directly;
//! 6. the run waits (bounded) until every group reading the topic consumed or dead-lettered each
//!    correction, re-checks the corrected keys, and reports each correction's state; `clean`
//!    says whether any drift is left.
//!
//! Invariant: the rows a run ships out of the databases are the differing buckets' (about 16 per
//! bucket and side), the candidates' again for the re-check, the reported stale keys' column
//! hashes, and the rows it repairs; `rows_shipped` counts them all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::Broker;
use driftless_core::{pg_sequence, Event};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{
    CorrectionConfig, CorrectionData, CorrectionSequence, CorrectionShape, Db, Plan,
};
use crate::db::{Conn, RowHashes};
use crate::digest::{bucket_count, UNIT_SEPARATOR};
use crate::error::{ReconcileError, Result};
use crate::repair::{await_corrections, CorrectionOutcome, CorrectionState, Planned};

/// Longest wait for the sink to consume what the log held, before the re-check.
pub const CATCH_UP_WAIT_MS_MAX: u64 = 60_000;
/// Differing buckets descended into per query: bounds the rows one query returns (about 16 per
/// bucket and side).
pub const BUCKETS_PER_QUERY: usize = 4_096;

/// What kind of drift a key shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// In the source, not in the projection.
    Missing,
    /// In the projection, not in the source.
    Extra,
    /// In both, with different compared columns.
    Stale,
}

/// The outcome of one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunReport {
    /// The reconciliation.
    pub name: String,
    /// Whether this run repaired.
    pub repair: bool,
    /// Start, Unix ms.
    pub started_ms: i64,
    /// Duration of the whole run, ms.
    pub duration_ms: u64,
    /// Duration of detection (steps 1–3, before the lag window), ms.
    pub detect_ms: u64,
    /// Rows in the source table.
    pub rows_source: i64,
    /// Rows in the projection.
    pub rows_projection: i64,
    /// Buckets compared.
    pub buckets: i64,
    /// Buckets whose digests differed.
    pub buckets_differing: usize,
    /// Rows fetched out of both databases.
    pub rows_shipped: usize,
    /// Candidates that matched on the re-check (changes that were in flight).
    pub settled_in_flight: usize,
    /// Missing keys (count).
    pub missing: usize,
    /// Extra keys (count).
    pub extra: usize,
    /// Stale keys (count).
    pub stale: usize,
    /// Up to `keys_reported_max` keys per kind.
    pub keys: BTreeMap<DriftKind, Vec<String>>,
    /// Each reported stale key's compared columns whose values differ, found by comparing each
    /// column's hash (32 bits of its text's SHA-256) on both sides, so values stay in the
    /// databases. A key that changed again since the re-check may name none.
    pub stale_columns: BTreeMap<String, Vec<String>>,
    /// For the first [`DIFFERENCES_SHOWN_MAX`] stale keys, each differing column with the
    /// source's and the projection's values (text as each database prints it, cut to
    /// [`VALUE_SHOWN_BYTES_MAX`] bytes). A topic source shows none.
    pub differences: Vec<RowDifference>,
    /// Corrections appended.
    pub repaired: usize,
    /// Why the repair appended nothing (a correction would not have written the source's row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_refused: Option<String>,
    /// The repair's corrections and their states (the first `keys_reported_max`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub corrections: Vec<CorrectionOutcome>,
    /// Corrections applied (consumed by every group reading the topic, and the key matches).
    pub applied: usize,
    /// Corrections the sink had not consumed when the wait ended.
    pub pending: usize,
    /// Corrections a sink group dead-lettered.
    pub dead_lettered: usize,
    /// Corrections consumed whose key still drifts.
    pub ineffective: usize,
    /// Keys still drifted after the repair's re-check (with repair; else the drift found).
    pub drift_remaining: usize,
    /// Up to `keys_reported_max` of those keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys_remaining: Vec<String>,
    /// No drift is left: none was found, or the repair's re-check found none (and the run was
    /// not truncated).
    pub clean: bool,
    /// More keys drifted than `drifted_keys_max`: the counts are lower bounds, and only that
    /// many were re-checked (and repaired); the next run goes on.
    pub truncated: bool,
    /// Projection columns the mapping computes and the run did not compare.
    pub not_compared: Vec<String>,
}

/// Stale keys whose differing values a report shows.
pub const DIFFERENCES_SHOWN_MAX: usize = 10;
/// Bytes of a value a report shows.
pub const VALUE_SHOWN_BYTES_MAX: usize = 200;

/// One stale row's differing columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDifference {
    /// The key.
    pub key: String,
    /// Each differing column.
    pub columns: Vec<ColumnDifference>,
}

/// A column's value on both sides (`None`: NULL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDifference {
    /// The projection's column.
    pub column: String,
    /// The source's value.
    pub source: Option<String>,
    /// The projection's value.
    pub projection: Option<String>,
}

/// `text` cut to at most `max` bytes on a character boundary, `…` marking a cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Wall time in Unix ms, from the project's one clock.
fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

fn classify(source: &RowHashes, projection: &RowHashes) -> BTreeMap<String, DriftKind> {
    let mut out = BTreeMap::new();
    for (k, h) in source {
        match projection.get(k) {
            None => {
                out.insert(k.clone(), DriftKind::Missing);
            }
            Some(p) if p != h => {
                out.insert(k.clone(), DriftKind::Stale);
            }
            Some(_) => {}
        }
    }
    for k in projection.keys() {
        if !source.contains_key(k) {
            out.insert(k.clone(), DriftKind::Extra);
        }
    }
    out
}

struct Sides {
    source: Conn,
    projection: Conn,
}

impl Sides {
    fn db_err<'p>(plan: &'p Plan, side: &'static str) -> impl Fn(String) -> ReconcileError + 'p {
        move |reason| ReconcileError::Database { name: plan.name.clone(), side, reason }
    }

    async fn rows_in(
        &self,
        plan: &Plan,
        n: i64,
        buckets: &[i64],
    ) -> Result<(RowHashes, RowHashes)> {
        let (s, p) = tokio::join!(
            self.source.rows_in(&plan.source, n, buckets),
            self.projection.rows_in(&plan.projection, n, buckets)
        );
        Ok((s.map_err(Self::db_err(plan, "source"))?, p.map_err(Self::db_err(plan, "projection"))?))
    }
}

/// Waits until `group` has consumed every event its topics held when called (bounded).
async fn wait_for_sink(broker: &Arc<Broker>, plan: &Plan) {
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_WAIT_MS_MAX);
    let mut targets = BTreeMap::new();
    for t in &plan.topics {
        if let Ok(ends) = broker.end_offsets(t) {
            for (p, end) in ends.into_iter().enumerate() {
                targets.insert((t.clone(), p as u32), end);
            }
        }
    }
    while Instant::now() < deadline {
        let done = match broker.describe_group(&plan.group) {
            // No such group (the sink never ran here): nothing is in flight through it.
            Err(_) => true,
            Ok(g) => g.partitions.iter().all(|p| {
                targets.get(&(p.topic.clone(), p.partition)).is_none_or(|end| p.committed >= *end)
            }),
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(reconcile = %plan.name, "the sink did not catch up within the wait; re-checking anyway");
}

/// A run's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Keys listed per kind in the report.
    pub keys_reported_max: usize,
    /// Drifted keys held (re-checked, repaired) per run.
    pub drifted_keys_max: usize,
}

/// Runs one reconciliation of `plan`.
pub async fn run(
    plan: &Plan,
    broker: &Arc<Broker>,
    lag_window: Duration,
    limits: Limits,
    repair: Option<&CorrectionConfig>,
) -> Result<RunReport> {
    let started = Instant::now();
    let mut report = RunReport {
        name: plan.name.clone(),
        repair: repair.is_some(),
        started_ms: now_ms(),
        not_compared: plan.not_compared.clone(),
        ..RunReport::default()
    };
    let projection =
        Conn::open(&plan.projection.db).await.map_err(Sides::db_err(plan, "projection"))?;
    let source = match &plan.source.db {
        Db::Topic(topic) => {
            // A topic's values are rendered as the projection holds its columns.
            let target = projection
                .target(&plan.projection.table)
                .await
                .map_err(Sides::db_err(plan, "projection"))?;
            fold_topic(plan, broker, topic, target).await
        }
        db => Conn::open(db).await,
    };
    let sides = Sides { source: source.map_err(Sides::db_err(plan, "source"))?, projection };
    let (rs, rp) =
        tokio::join!(sides.source.count(&plan.source), sides.projection.count(&plan.projection));
    report.rows_source = rs.map_err(Sides::db_err(plan, "source"))?;
    report.rows_projection = rp.map_err(Sides::db_err(plan, "projection"))?;
    let n = bucket_count(report.rows_source.max(report.rows_projection));
    report.buckets = n;
    let (ds, dp) = tokio::join!(
        sides.source.buckets(&plan.source, n),
        sides.projection.buckets(&plan.projection, n)
    );
    let ds = ds.map_err(Sides::db_err(plan, "source"))?;
    let dp = dp.map_err(Sides::db_err(plan, "projection"))?;
    let differing: Vec<i64> = ds
        .keys()
        .chain(dp.keys())
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|b| ds.get(b) != dp.get(b))
        .collect();
    report.buckets_differing = differing.len();
    let mut candidates = BTreeMap::new();
    for chunk in differing.chunks(BUCKETS_PER_QUERY) {
        let (s, p) = sides.rows_in(plan, n, chunk).await?;
        report.rows_shipped += s.len() + p.len();
        candidates.extend(classify(&s, &p));
        if candidates.len() >= limits.drifted_keys_max {
            // A projection wildly off (empty, or another table's): keep memory bounded.
            report.truncated = true;
            while candidates.len() > limits.drifted_keys_max {
                candidates.pop_last();
            }
            break;
        }
    }
    report.detect_ms = started.elapsed().as_millis() as u64;

    if !candidates.is_empty() {
        // In flight? Let the source's relay and the sink move, then look again.
        tokio::time::sleep(lag_window).await;
        wait_for_sink(broker, plan).await;
        let keys: Vec<String> = candidates.keys().cloned().collect();
        let (s, p) = tokio::join!(
            sides.source.rows_for_keys(&plan.source, &keys),
            sides.projection.rows_for_keys(&plan.projection, &keys)
        );
        let s = s.map_err(Sides::db_err(plan, "source"))?;
        let p = p.map_err(Sides::db_err(plan, "projection"))?;
        report.rows_shipped += s.len() + p.len();
        let now = classify(&s, &p);
        let before = candidates.len();
        candidates.retain(|k, kind| match now.get(k) {
            Some(k2) => {
                *kind = *k2;
                true
            }
            None => false,
        });
        report.settled_in_flight = before - candidates.len();
    }
    for (k, kind) in &candidates {
        match kind {
            DriftKind::Missing => report.missing += 1,
            DriftKind::Extra => report.extra += 1,
            DriftKind::Stale => report.stale += 1,
        }
        let list = report.keys.entry(*kind).or_default();
        if list.len() < limits.keys_reported_max {
            list.push(k.clone());
        }
    }
    if let Some(stale) = report.keys.get(&DriftKind::Stale).filter(|k| !k.is_empty()) {
        // Why each is stale: the columns whose hashes differ.
        let (s, p) = tokio::join!(
            sides.source.column_hashes(&plan.source, stale),
            sides.projection.column_hashes(&plan.projection, stale)
        );
        let s = s.map_err(Sides::db_err(plan, "source"))?;
        let p = p.map_err(Sides::db_err(plan, "projection"))?;
        report.rows_shipped += s.len() + p.len();
        report.stale_columns = differing_columns(&plan.compared, &s, &p);
        report.differences = differences(plan, &sides, stale, &report.stale_columns).await?;
    }
    report.drift_remaining = candidates.len();
    if let Some(correction) = repair.filter(|_| !candidates.is_empty()) {
        repair_keys(plan, broker, &sides, correction, &candidates, &mut report, lag_window, limits)
            .await?;
    }
    report.clean = report.drift_remaining == 0 && !report.truncated;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The values of the first stale keys' differing columns, on both sides.
async fn differences(
    plan: &Plan,
    sides: &Sides,
    stale: &[String],
    columns: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<RowDifference>> {
    if matches!(sides.source, Conn::Folded(_)) {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = stale.iter().take(DIFFERENCES_SHOWN_MAX).cloned().collect();
    let (s, p) = tokio::join!(
        sides.source.value_texts(&plan.source, &keys),
        sides.projection.value_texts(&plan.projection, &keys)
    );
    let s = s.map_err(Sides::db_err(plan, "source"))?;
    let p = p.map_err(Sides::db_err(plan, "projection"))?;
    let shown = |v: &Option<String>| v.as_deref().map(|t| cut(t, VALUE_SHOWN_BYTES_MAX));
    Ok(keys
        .iter()
        .filter_map(|k| {
            let (sv, pv, names) = (s.get(k)?, p.get(k)?, columns.get(k)?);
            let columns = plan
                .compared
                .iter()
                .enumerate()
                .filter(|(_, c)| names.contains(c))
                .map(|(i, c)| ColumnDifference {
                    column: c.clone(),
                    source: sv.get(i).and_then(shown),
                    projection: pv.get(i).and_then(shown),
                })
                .collect();
            Some(RowDifference { key: k.clone(), columns })
        })
        .collect())
}

/// Each key's columns (of `names`) whose hashes differ between the sides; a key on one side
/// only is left out.
fn differing_columns(
    names: &[String],
    source: &BTreeMap<String, Vec<i64>>,
    projection: &BTreeMap<String, Vec<i64>>,
) -> BTreeMap<String, Vec<String>> {
    source
        .iter()
        .filter_map(|(key, s)| {
            let p = projection.get(key)?;
            let differ = names.iter().zip(s.iter().zip(p)).filter(|(_, (a, b))| a != b);
            Some((key.clone(), differ.map(|(name, _)| name.clone()).collect()))
        })
        .collect()
}

/// A key's text as the sink's events name it in `subject`: the value for a one-column key, a JSON
/// array of the values for a composite one.
fn subject_of(key_text: &str, parts: usize) -> String {
    if parts <= 1 {
        return key_text.to_string();
    }
    let values: Vec<Value> =
        key_text.split(UNIT_SEPARATOR).map(|v| Value::String(v.to_string())).collect();
    Value::Array(values).to_string()
}

/// Folds `topic` through the sink's mapping into the projection table's expected rows, its
/// values rendered as `target` holds them.
async fn fold_topic(
    plan: &Plan,
    broker: &Arc<Broker>,
    topic: &str,
    target: crate::topic::Target,
) -> Result<Conn, String> {
    let mapper = driftless_sink::mapping::Mapper::compile(&plan.name, &plan.mappings)
        .map_err(|e| e.to_string())?;
    let (b, topic, table) = (Arc::clone(broker), topic.to_string(), plan.projection.table.clone());
    let compared = plan.compared.clone();
    let folded = tokio::task::spawn_blocking(move || {
        crate::topic::fold(&b, &topic, &mapper, &table, &compared, &target, crate::topic::KEYS_MAX)
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(Conn::Folded(Arc::new(folded)))
}

/// Corrections for a topic source: each drifted key's latest event again, flagged, ranked just
/// after the original (`sequence` = its version + `~`: above it, below any later change of the
/// key); extra keys get delete events.
fn topic_corrections(
    plan: &Plan,
    folded: &crate::topic::Folded,
    correction: &CorrectionConfig,
    drifted: &BTreeMap<String, DriftKind>,
    started_ms: i64,
) -> Vec<Event> {
    let parts = plan.key_names.len();
    drifted
        .iter()
        .map(|(key, kind)| {
            let id = format!("reconcile:{}:{started_ms}:{key}", plan.name);
            match folded.latest(key).filter(|_| *kind != DriftKind::Extra) {
                Some((event, version)) => {
                    let mut v = event;
                    v["id"] = json!(id);
                    v["correction"] = json!(true);
                    v["sequence"] = json!(format!("{version}~"));
                    Event::from_value(v).unwrap_or_else(|_| {
                        Event::new(id, &correction.source, &correction.upsert_type)
                    })
                }
                None => {
                    let mut e =
                        Event::new(id, correction.source.clone(), correction.delete_type.clone());
                    e.subject = Some(subject_of(key, parts));
                    e.data = Some(json!({}));
                    e.extensions.insert("correction".into(), Value::Bool(true));
                    e
                }
            }
        })
        .collect()
}

/// Builds the corrections, dry-runs them through the mappings, appends them, waits (bounded)
/// until the sinks applied or dead-lettered them, re-checks the keys, and fills the report's
/// repair fields.
#[allow(clippy::too_many_arguments)]
async fn repair_keys(
    plan: &Plan,
    broker: &Arc<Broker>,
    sides: &Sides,
    correction: &CorrectionConfig,
    drifted: &BTreeMap<String, DriftKind>,
    report: &mut RunReport,
    lag_window: Duration,
    limits: Limits,
) -> Result<()> {
    let topic =
        correction.topic.clone().or_else(|| plan.topics.first().cloned()).unwrap_or_default();
    let planned = if let Conn::Folded(folded) = &sides.source {
        // A topic source re-emits its own events: they are the sink's language already.
        topic_corrections(plan, folded, correction, drifted, report.started_ms)
            .into_iter()
            .zip(drifted)
            .map(|(event, (key, kind))| Planned { key: key.clone(), kind: *kind, event, row: None })
            .collect()
    } else {
        let shape = plan.shape(correction);
        let planned = source_corrections(plan, sides, correction, shape, drifted, report).await?;
        if let Err(why) = crate::repair::check(plan, shape, &topic, &planned) {
            report.repair_refused = Some(why);
            report.keys_remaining =
                drifted.keys().take(limits.keys_reported_max).cloned().collect();
            return Ok(());
        }
        planned
    };
    let produced =
        append(plan, broker, &topic, planned.iter().map(|p| p.event.clone()).collect()).await?;
    report.repaired = produced.len();
    let mut outcomes: Vec<CorrectionOutcome> = planned
        .iter()
        .zip(&produced)
        .map(|(p, (partition, offset))| CorrectionOutcome {
            key: p.key.clone(),
            kind: p.kind,
            id: p.event.id.clone(),
            topic: topic.clone(),
            partition: *partition,
            offset: *offset,
            state: CorrectionState::Pending,
            error: None,
        })
        .collect();
    let mut groups = vec![plan.group.clone()];
    groups
        .extend(plan.others.iter().filter(|o| o.topics.contains(&topic)).map(|o| o.group.clone()));
    let wait = Duration::from_millis(correction.repair_wait_ms);
    let progress = await_corrections(broker, &groups, &outcomes, wait).await;

    // The re-check: the corrected keys, compared again; a key still differing is looked at once
    // more after the lag window (a change of it may have been in flight).
    let keys: Vec<String> = drifted.keys().cloned().collect();
    let mut remaining = recheck(plan, sides, &keys, report).await?;
    if !remaining.is_empty() {
        tokio::time::sleep(lag_window).await;
        wait_for_sink(broker, plan).await;
        let again: Vec<String> = remaining.iter().cloned().collect();
        remaining = recheck(plan, sides, &again, report).await?;
    }
    for (o, (consumed, dead)) in outcomes.iter_mut().zip(progress) {
        (o.state, o.error) = match (dead, consumed) {
            (Some(why), _) => (CorrectionState::DeadLettered, Some(why)),
            (None, false) => (CorrectionState::Pending, None),
            (None, true) if remaining.contains(&o.key) => (
                CorrectionState::Ineffective,
                Some("consumed, yet the projection still differs from the source".into()),
            ),
            (None, true) => (CorrectionState::Applied, None),
        };
        match o.state {
            CorrectionState::Applied => report.applied += 1,
            CorrectionState::Pending => report.pending += 1,
            CorrectionState::DeadLettered => report.dead_lettered += 1,
            CorrectionState::Ineffective => report.ineffective += 1,
        }
    }
    outcomes.truncate(limits.keys_reported_max);
    report.corrections = outcomes;
    report.drift_remaining = remaining.len();
    report.keys_remaining = remaining.into_iter().take(limits.keys_reported_max).collect();
    Ok(())
}

/// The keys among `keys` whose rows still differ between the sides.
async fn recheck(
    plan: &Plan,
    sides: &Sides,
    keys: &[String],
    report: &mut RunReport,
) -> Result<BTreeSet<String>> {
    let (s, p) = tokio::join!(
        sides.source.rows_for_keys(&plan.source, keys),
        sides.projection.rows_for_keys(&plan.projection, keys)
    );
    let s = s.map_err(Sides::db_err(plan, "source"))?;
    let p = p.map_err(Sides::db_err(plan, "projection"))?;
    report.rows_shipped += s.len() + p.len();
    Ok(classify(&s, &p).into_keys().collect())
}

/// Corrections from a database source: each drifted key's authoritative row (or a delete), in
/// the shape the sink's mapping reads.
async fn source_corrections(
    plan: &Plan,
    sides: &Sides,
    correction: &CorrectionConfig,
    shape: CorrectionShape,
    drifted: &BTreeMap<String, DriftKind>,
    report: &mut RunReport,
) -> Result<Vec<Planned>> {
    // The WAL position before the rows are read: every change the read may miss commits after
    // it, so its CDC sequence ranks above the correction's.
    let lsn = match shape.sequence {
        CorrectionSequence::PgLsn => {
            Some(sides.source.wal_lsn().await.map_err(Sides::db_err(plan, "source"))?)
        }
        CorrectionSequence::None => None,
    };
    let upserts: Vec<String> =
        drifted.iter().filter(|(_, k)| **k != DriftKind::Extra).map(|(k, _)| k.clone()).collect();
    let rows = sides
        .source
        .rows_json(&plan.source, &upserts)
        .await
        .map_err(Sides::db_err(plan, "source"))?;
    report.rows_shipped += rows.len();
    // A delete's key, typed as the projection holds it (a CDC delete's `data.key` is typed, and
    // the sink's tombstone must match the upserts' typed keys).
    let deletes: Vec<String> = drifted.keys().filter(|k| !rows.contains_key(*k)).cloned().collect();
    let projected = sides
        .projection
        .rows_json(&plan.projection, &deletes)
        .await
        .map_err(Sides::db_err(plan, "projection"))?;
    report.rows_shipped += projected.len();
    // Without a source position, rank each correction just above the projection's row (its
    // version + `~`): above the stale state it replaces, below any later change of the key
    // still in flight. Keys without a row fall back to the correction's own offset.
    let projection_versions = if lsn.is_none() {
        let keys: Vec<String> = drifted.keys().cloned().collect();
        sides
            .projection
            .versions(&plan.projection, &plan.version_column, &keys)
            .await
            .map_err(Sides::db_err(plan, "projection"))?
    } else {
        BTreeMap::new()
    };
    let parts = plan.key_names.len();
    let mut out = Vec::new();
    for (i, (key, kind)) in drifted.iter().enumerate() {
        let row = rows.get(key);
        // A key that vanished from the source since the check is repaired as extra.
        let delete = *kind == DriftKind::Extra || row.is_none();
        let ty = if delete { &correction.delete_type } else { &correction.upsert_type };
        let mut e = Event::new(
            format!("reconcile:{}:{}:{key}", plan.name, report.started_ms),
            correction.source.clone(),
            ty.clone(),
        );
        // Typed key values: from the source row, else the projection's row, else the text.
        let texts: Vec<&str> = key.split(UNIT_SEPARATOR).collect();
        let typed: Vec<Value> = (0..parts)
            .map(|j| {
                let from_source = row.and_then(|r| r.get(&plan.source.key[j]));
                let from_projection = projected.get(key).and_then(|r| r.get(&plan.key_names[j]));
                from_source
                    .or(from_projection)
                    .cloned()
                    .unwrap_or_else(|| json!(texts.get(j).copied().unwrap_or_default()))
            })
            .collect();
        // The subject places the correction in its key's partition: the key's text for one
        // column, the typed values for a composite key (a CDC subject keeps numbers as numbers).
        e.subject = Some(if parts > 1 {
            Value::Array(typed.clone()).to_string()
        } else {
            subject_of(key, parts)
        });
        let key_obj: serde_json::Map<String, Value> =
            plan.key_names.iter().cloned().zip(typed).collect();
        e.data = Some(match (shape.data, delete) {
            (CorrectionData::Row, true) => Value::Object(key_obj),
            (CorrectionData::Row, false) => row.cloned().unwrap_or(Value::Null),
            (CorrectionData::Cdc, true) => json!({"op": "delete", "table": plan.source.table,
                "key": key_obj, "before": null, "after": null}),
            (CorrectionData::Cdc, false) => json!({"op": "update", "table": plan.source.table,
                "key": key_obj, "before": null, "after": row}),
        });
        e.datacontenttype = Some("application/json".into());
        e.extensions.insert("correction".into(), Value::Bool(true));
        if let Some(lsn) = lsn {
            e.extensions.insert("sequence".into(), json!(pg_sequence(lsn, i as u32)));
        } else if let Some(v) = projection_versions.get(key).filter(|v| !v.is_empty()) {
            e.extensions.insert("sequence".into(), json!(format!("{v}~")));
        }
        out.push(Planned {
            key: key.clone(),
            kind: if delete { DriftKind::Extra } else { *kind },
            event: e,
            row: if delete { None } else { row.cloned() },
        });
    }
    Ok(out)
}

/// Appends corrections to `topic`; returns each one's (partition, offset).
async fn append(
    plan: &Plan,
    broker: &Arc<Broker>,
    topic: &str,
    events: Vec<Event>,
) -> Result<Vec<(u32, u64)>> {
    let mut out = Vec::with_capacity(events.len());
    let max = broker.config().produce_events_max.max(1);
    for chunk in events.chunks(max) {
        let (b, t, chunk) = (Arc::clone(broker), topic.to_string(), chunk.to_vec());
        let produced = tokio::task::spawn_blocking(move || b.produce(&t, chunk))
            .await
            .map_err(|e| ReconcileError::Database {
                name: plan.name.clone(),
                side: "log",
                reason: e.to_string(),
            })?
            .map_err(|error| ReconcileError::Broker { name: plan.name.clone(), error })?;
        out.extend(produced.into_iter().map(|p| (p.partition, p.offset)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_names_missing_extra_and_stale() {
        let s: RowHashes =
            [("a".into(), (1, 1)), ("b".into(), (2, 2)), ("c".into(), (3, 3))].into();
        let p: RowHashes =
            [("b".into(), (2, 9)), ("c".into(), (3, 3)), ("d".into(), (4, 4))].into();
        let c = classify(&s, &p);
        assert_eq!(c["a"], DriftKind::Missing);
        assert_eq!(c["b"], DriftKind::Stale);
        assert_eq!(c["d"], DriftKind::Extra);
        assert!(!c.contains_key("c"));
    }

    #[test]
    fn composite_subjects_are_json_arrays() {
        assert_eq!(subject_of("c-1", 1), "c-1");
        assert_eq!(subject_of("t1\u{1f}42", 2), r#"["t1","42"]"#);
    }
}
