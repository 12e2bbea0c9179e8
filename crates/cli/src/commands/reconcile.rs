//! `driftless reconcile NAME [--repair] [--json] [--history]`: runs a reconciliation now and
//! reports the drift it found; `driftless reconcile --list` lists the configured ones.
//!
//! Invariants: without `--json` (or `--output json`) the report is a short human account on
//! stdout (counts, time, rows shipped, then the drifted keys per kind, at most
//! [`KEYS_PRINTED_MAX`] each, the first stale rows' differing values, and with `--repair` each
//! correction's fate); with `--json` it is the server's report as one JSON line. Without
//! `--repair` the command exits 0 whether or not drift was found (drift is a finding, not a
//! failure; `--fail-on-drift` makes drift exit 1).
//! With `--repair` it exits 0 only when the re-check after the sinks applied the corrections
//! found no drift: a refused repair, a pending, dead-lettered or ineffective correction, or drift
//! left exits 1 — a repair never claims success it did not check.

use std::io::{self, Write};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::client::{segment, Client};
use crate::commands::{print_line, print_lines, print_pretty};

/// Drifted keys printed per kind in the human report.
pub const KEYS_PRINTED_MAX: usize = 20;

/// `driftless reconcile ...`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The reconciliation's name (its `name` in the server's `[[reconcile]]` table).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Repair what is found: correction events go through the log to every projection.
    #[arg(long, conflicts_with = "report_only")]
    repair: bool,
    /// Only report, even when the configured policy is `repair`.
    #[arg(long)]
    report_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print the reconciliation's history of runs instead of running it.
    #[arg(long)]
    history: bool,
    /// List the configured reconciliations.
    #[arg(long)]
    list: bool,
    /// Exit with status 1 when drift is found.
    #[arg(long)]
    fail_on_drift: bool,
    /// With --repair: how long to wait for the sinks to apply the corrections before the
    /// re-check, in ms (default: the reconciliation's `repair_wait_ms`; at most 60000).
    #[arg(long, requires = "repair", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    wait_ms: Option<u64>,
}

/// Runs `driftless reconcile ...`; `Ok(false)` when `--fail-on-drift` and drift was found, or a
/// repair left drift. The report is for people unless `--json` or `--output json` asks for JSON
/// (a run's report is read by people first, so a pipe alone does not switch it).
pub fn run(server: &str, args: ReconcileArgs, output_json: bool) -> anyhow::Result<bool> {
    let client = Client::new(server)?;
    let mut out = io::stdout().lock();
    if args.list {
        let all: Vec<Value> = client.get("/v1/reconciliations")?;
        print_lines(&mut out, &all)?;
        return Ok(true);
    }
    let name = args.name.unwrap_or_default();
    let path = format!("/v1/reconciliations/{}", segment(&name));
    if args.history {
        let r: Value = client.get(&path)?;
        print_pretty(&mut out, &r)?;
        return Ok(true);
    }
    let mut body = match (args.repair, args.report_only) {
        (true, _) => json!({"repair": true}),
        (_, true) => json!({"repair": false}),
        _ => json!({}),
    };
    if let Some(ms) = args.wait_ms {
        body["wait_ms"] = json!(ms);
    }
    let report: Value = client.post_json(&format!("{path}/run"), &body)?;
    if args.json || output_json {
        print_line(&mut out, &report)?;
    } else {
        write!(out, "{}", human(&report)).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    let drift =
        ["missing", "extra", "stale"].iter().map(|k| report[*k].as_u64().unwrap_or(0)).sum::<u64>();
    if report["repair"].as_bool() == Some(true) {
        // A repair succeeded only if its re-check found the drift gone.
        return Ok(report["clean"].as_bool() == Some(true));
    }
    Ok(!(args.fail_on_drift && drift > 0))
}

/// A value as shown: JSON-quoted text, or NULL.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

/// The report as a short account for a terminal.
pub fn human(r: &Value) -> String {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let mut s = format!(
        "{}: {} missing, {} extra, {} stale — {} source rows vs {} projection rows, {} of {} buckets differed, {} rows shipped, {} ms\n",
        r["name"].as_str().unwrap_or("?"),
        n("missing"),
        n("extra"),
        n("stale"),
        n("rows_source"),
        n("rows_projection"),
        n("buckets_differing"),
        n("buckets"),
        n("rows_shipped"),
        n("duration_ms"),
    );
    if n("settled_in_flight") > 0 {
        s.push_str(&format!(
            "  {} differences were changes in flight and settled\n",
            n("settled_in_flight")
        ));
    }
    for kind in ["missing", "extra", "stale"] {
        let keys: Vec<&str> = r["keys"][kind]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            continue;
        }
        // A stale key says which columns differ: `c (city, zip)`.
        let shown: Vec<String> = keys
            .iter()
            .take(KEYS_PRINTED_MAX)
            .map(|k| match r["stale_columns"][*k].as_array().filter(|_| kind == "stale") {
                Some(cols) => {
                    let cols: Vec<&str> = cols.iter().filter_map(Value::as_str).collect();
                    format!("{k} ({})", cols.join(", "))
                }
                None => k.to_string(),
            })
            .collect();
        let more = if n(kind) as usize > shown.len() {
            format!(" … and {} more", n(kind) as usize - shown.len())
        } else {
            String::new()
        };
        s.push_str(&format!("  {kind}: {}{more}\n", shown.join(", ")));
    }
    for d in r["differences"].as_array().into_iter().flatten() {
        for c in d["columns"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "  {} {}: source {}, projection {}\n",
                d["key"].as_str().unwrap_or("?"),
                c["column"].as_str().unwrap_or("?"),
                shown(&c["source"]),
                shown(&c["projection"]),
            ));
        }
    }
    if r["repair"].as_bool() == Some(true) {
        s.push_str(&repair_account(r));
    }
    if let Some(cols) = r["not_compared"].as_array().filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.iter().filter_map(Value::as_str).collect();
        s.push_str(&format!("  not compared (computed by the mapping): {}\n", cols.join(", ")));
    }
    s
}

/// What became of a repair: refused, or each correction's state and whether drift is left.
fn repair_account(r: &Value) -> String {
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    if let Some(why) = r["repair_refused"].as_str() {
        return format!("  {why}\n");
    }
    if n("repaired") == 0 && r["clean"].as_bool() == Some(true) {
        return "  repair: nothing to repair\n".into();
    }
    let mut s = format!(
        "  repair: {} corrections appended — {} applied, {} pending, {} dead-lettered, {} ineffective\n",
        n("repaired"),
        n("applied"),
        n("pending"),
        n("dead_lettered"),
        n("ineffective"),
    );
    let failed =
        r["corrections"].as_array().into_iter().flatten().filter(|c| c["state"] != "applied");
    for c in failed.take(KEYS_PRINTED_MAX) {
        let state = c["state"].as_str().unwrap_or("?").replace('_', "-");
        let why = c["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
        s.push_str(&format!("    {} {state}{why}\n", c["key"].as_str().unwrap_or("?")));
    }
    if r["clean"].as_bool() == Some(true) {
        s.push_str("  re-checked: the drift is gone\n");
    } else {
        let keys: Vec<&str> = r["keys_remaining"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).take(KEYS_PRINTED_MAX).collect())
            .unwrap_or_default();
        s.push_str(&format!(
            "  re-checked: {} keys still drifted{}{}\n",
            n("drift_remaining"),
            if keys.is_empty() { "" } else { ": " },
            keys.join(", ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_human_report_gives_counts_keys_and_repairs() {
        let r = json!({"name": "contacts", "missing": 2, "extra": 0, "stale": 1, "rows_source": 10,
            "rows_projection": 9, "buckets": 16, "buckets_differing": 3, "rows_shipped": 12,
            "duration_ms": 40, "settled_in_flight": 1, "repair": true, "repaired": 3,
            "applied": 3, "clean": true,
            "keys": {"missing": ["a", "b"], "stale": ["c"]}, "not_compared": ["line"],
            "stale_columns": {"c": ["city", "zip"]}});
        let text = human(&r);
        assert!(text.starts_with("contacts: 2 missing, 0 extra, 1 stale"), "{text}");
        assert!(
            text.contains("  missing: a, b\n") && text.contains("  stale: c (city, zip)\n"),
            "{text}"
        );
        assert!(text.contains("3 corrections appended — 3 applied"), "{text}");
        assert!(
            text.contains("the drift is gone") && text.contains("settled") && text.contains("line")
        );
    }
}
