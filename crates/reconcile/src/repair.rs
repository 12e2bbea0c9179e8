//! What makes a repair honest: corrections are dry-run through the sinks' own mappings before
//! they are appended, and followed after it until the sinks applied them, dead-lettered them, or
//! the wait ran out.
//!
//! Invariants:
//! - a correction is appended only if the sink's mapping turns it into the projection row the
//!   source holds: every compared column that is a source column maps to the source's value,
//!   and the key to the source's key. A correction that would fail the mapping (a dead letter)
//!   or write another value (a correct row made wrong) refuses the whole repair, with a
//!   sentence naming the key, the column and the setting to change. Every other sink reading
//!   the topic must map it without an error too (else it would be dead-lettered there);
//! - a correction counts as applied only when every sink group reading its topic committed
//!   past its offset, it is in no group's dead-letter queue, and the re-check found its key no
//!   longer drifted; the wait is bounded by `repair_wait_ms` (at most
//!   [`crate::config::REPAIR_WAIT_MS_MAX`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::Broker;
use driftless_core::Event;
use driftless_sink::config::OpKind;
use driftless_sink::mapping::Mapper;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{CorrectionData, CorrectionShape, Plan};
use crate::run::DriftKind;

/// Where a correction stands after the repair's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionState {
    /// Every sink group consumed it, none dead-lettered it, and its key no longer drifts.
    Applied,
    /// The sink had not consumed it when the wait ended.
    Pending,
    /// A sink group dead-lettered it (`error` says why).
    DeadLettered,
    /// Consumed without a dead letter, yet the key still drifts (the version guard kept a
    /// newer row, or the key changed again meanwhile).
    Ineffective,
}

/// One correction appended by a repair, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionOutcome {
    /// The drifted key.
    pub key: String,
    /// Its drift.
    pub kind: DriftKind,
    /// The correction event's id.
    pub id: String,
    /// Where it was appended.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Applied, pending, dead-lettered or ineffective.
    pub state: CorrectionState,
    /// The group that dead-lettered it and its last error, or why it was ineffective.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A correction about to be appended.
pub struct Planned {
    /// The drifted key (its text).
    pub key: String,
    /// Its drift.
    pub kind: DriftKind,
    /// The event.
    pub event: Event,
    /// The source row it carries (none for a delete).
    pub row: Option<Value>,
}

/// A scalar's text, for comparing a mapped value with the source's (a subject is text where the
/// source has a number); objects and arrays compare as their JSON text.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Values are cut to this many bytes in refusals.
const VALUE_SHOWN_BYTES_MAX: usize = 200;

fn shown(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(v) => crate::run::cut(&v.to_string(), VALUE_SHOWN_BYTES_MAX),
    }
}

/// What to change when a correction does not fit the sink's mapping.
fn hint(plan: &Plan, shape: CorrectionShape) -> String {
    let other = match shape.data {
        CorrectionData::Row => "cdc",
        CorrectionData::Cdc => "row",
    };
    format!(
        "corrections were shaped as data = \"{}\"; the sink `{}` maps events of its source's \
         kind: set [reconcile.correction] data = \"{other}\" if its events are {}, or make \
         upsert_type/delete_type types its mapping takes as the source's own events",
        match shape.data {
            CorrectionData::Row => "row",
            CorrectionData::Cdc => "cdc",
        },
        plan.group.strip_prefix("sink-").unwrap_or(&plan.group),
        if other == "cdc" { "CDC changes (.data.after)" } else { "plain rows" },
    )
}

/// Dry-runs every correction through the sink's mapping (and the other sinks' reading
/// `topic`); `Err` is the sentence refusing the repair.
pub fn check(
    plan: &Plan,
    shape: CorrectionShape,
    topic: &str,
    planned: &[Planned],
) -> Result<(), String> {
    let sink = plan.group.strip_prefix("sink-").unwrap_or(&plan.group).to_string();
    let mapper = Mapper::compile(&sink, &plan.mappings).map_err(|e| e.to_string())?;
    let others: Vec<(String, Mapper)> = plan
        .others
        .iter()
        .filter(|o| o.topics.iter().any(|t| t == topic))
        .map(|o| Ok((o.name.clone(), Mapper::compile(&o.name, &o.mappings)?)))
        .collect::<Result<_, driftless_sink::SinkError>>()
        .map_err(|e| e.to_string())?;
    let table = &plan.projection.table;
    for p in planned {
        let event = serde_json::to_value(&p.event).map_err(|e| e.to_string())?;
        let ty = p.event.ty.clone();
        let ops = mapper.map(&event, 0).map_err(|e| {
            format!(
                "repair refused, nothing appended: the correction of key `{}` (type `{ty}`) \
                 would be dead-lettered by sink `{sink}`: {e}; {}",
                p.key,
                hint(plan, shape)
            )
        })?;
        let want = if p.row.is_some() { OpKind::Upsert } else { OpKind::Delete };
        let Some(op) = ops.iter().find(|o| &o.table == table && o.op == want) else {
            let setting = if want == OpKind::Upsert { "upsert_type" } else { "delete_type" };
            return Err(format!(
                "repair refused, nothing appended: no mapping of sink `{sink}` takes a `{ty}` \
                 correction as {} of table `{table}`; set [reconcile.correction] {setting} to a \
                 type that mapping takes",
                if want == OpKind::Upsert { "an upsert" } else { "a delete" },
            ));
        };
        // The key: the mapped key's text is the drifted key's.
        let key_text: Vec<String> =
            op.key.iter().map(|(_, v)| scalar_text(v).unwrap_or_default()).collect();
        let key_text = key_text.join(&crate::digest::UNIT_SEPARATOR.to_string());
        if key_text != p.key {
            return Err(format!(
                "repair refused, nothing appended: the correction of key `{}` would be written \
                 under key `{}` by sink `{sink}`'s mapping; {}",
                p.key,
                key_text.replace(crate::digest::UNIT_SEPARATOR, ", "),
                hint(plan, shape)
            ));
        }
        let Some(row) = &p.row else { continue };
        for (name, src) in plan.compared.iter().zip(&plan.source.columns) {
            // Only plain source columns: a computed column's SQL is not the mapping's jq.
            let Some(source_value) = row.get(src) else { continue };
            let mapped = op.columns.get(name);
            let same = mapped.is_some_and(|m| scalar_text(m) == scalar_text(source_value));
            if !same {
                return Err(format!(
                    "repair refused, nothing appended: the correction of key `{}` would write \
                     {} into column `{name}`, where the source holds {}: a repair never writes \
                     a value the source does not hold; {}",
                    p.key,
                    shown(mapped),
                    shown(Some(source_value)),
                    hint(plan, shape)
                ));
            }
        }
    }
    for p in planned {
        let event = serde_json::to_value(&p.event).map_err(|e| e.to_string())?;
        for (name, m) in &others {
            if let Err(e) = m.map(&event, 0) {
                return Err(format!(
                    "repair refused, nothing appended: the correction of key `{}` (type `{}`) \
                     would be dead-lettered by sink `{name}`, which reads topic `{topic}` too: \
                     {e}; give that sink's mapping a filter or types that leave corrections of \
                     this type out, or change upsert_type/delete_type",
                    p.key, p.event.ty
                ));
            }
        }
    }
    Ok(())
}

/// Where each appended correction is: (consumed by every group, dead letter error).
pub type Progress = Vec<(bool, Option<String>)>;

/// Waits until every group in `groups` consumed each appended correction (or dead-lettered it),
/// at most `wait`.
pub async fn await_corrections(
    broker: &Arc<Broker>,
    groups: &[String],
    appended: &[CorrectionOutcome],
    wait: Duration,
) -> Progress {
    let deadline = Instant::now() + wait;
    loop {
        let progress = progress(broker, groups, appended);
        if progress.iter().all(|(done, _)| *done) || Instant::now() >= deadline {
            return progress;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn progress(broker: &Broker, groups: &[String], appended: &[CorrectionOutcome]) -> Progress {
    let mut out: Progress = vec![(true, None); appended.len()];
    for group in groups {
        let committed: BTreeMap<(String, u32), u64> = match broker.describe_group(group) {
            Ok(g) => {
                g.partitions.into_iter().map(|p| ((p.topic, p.partition), p.committed)).collect()
            }
            // No such group: not consumed by it (yet).
            Err(_) => BTreeMap::new(),
        };
        let dead: BTreeMap<(String, u32, u64), String> = broker
            .dead_letters(group)
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                let why = d.errors.last().cloned().unwrap_or_else(|| "dead-lettered".into());
                ((d.topic, d.partition, d.offset), why)
            })
            .collect();
        for (c, slot) in appended.iter().zip(out.iter_mut()) {
            let at = (c.topic.clone(), c.partition, c.offset);
            if let Some(why) = dead.get(&at) {
                if slot.1.is_none() {
                    slot.1 = Some(format!("group `{group}`: {}", driftless_core::redact(why)));
                }
                continue;
            }
            if committed.get(&(c.topic.clone(), c.partition)).is_none_or(|&n| n <= c.offset) {
                slot.0 = false;
            }
        }
    }
    out
}
