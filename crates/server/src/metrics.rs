//! The Prometheus endpoint: metric names (all in this module) and the text exposition format,
//! written by hand.
//!
//! Invariants: every name follows `driftless_<what>_<unit>[_total]`; every sample is computed
//! from the broker's current state when scraped (no background collection, no unbounded label
//! sets beyond topics, partitions and groups that exist); per-partition series are capped by
//! `server.metrics_partition_series_max` (per family): beyond it group figures are per group
//! and end offsets per topic, so a scrape's size and work are linear in topics and groups
//! (1,000 groups on a wide topic were 77 MB and 40 s); label values are escaped per the
//! text format (`\\`, `\"`, `\n`).
//!
//! fsync latency: the log counts `fdatasync` calls per partition in fixed latency buckets
//! (`driftless_log::SYNC_BUCKET_BOUNDS_US`), so `driftless_log_fsync_seconds` is a Prometheus
//! histogram over every partition including internal topics; the longest sync since start is the
//! gauge `driftless_log_fsync_max_seconds`.

use std::fmt::Write as _;

use crate::routes::now_ms;
use driftless_broker::Broker;
use driftless_connect::runtime::LATENCY_BUCKETS_MS;
use driftless_connect::Sources;
use driftless_reconcile::Reconcilers;
use driftless_sink::Sinks;

/// Events appended per topic since the server started (counter).
pub const PRODUCED_EVENTS_TOTAL: &str = "driftless_produced_events_total";
/// Record bytes appended per topic since the server started (counter).
pub const PRODUCED_BYTES_TOTAL: &str = "driftless_produced_bytes_total";
/// Events not yet done by a group, per partition (gauge).
pub const CONSUMER_LAG_EVENTS: &str = "driftless_consumer_lag_events";
/// Age of the oldest event not yet done by a group, per partition (gauge).
pub const CONSUMER_LAG_SECONDS: &str = "driftless_consumer_lag_seconds";
/// Dead letters in a group's queue (gauge).
pub const DLQ_DEPTH: &str = "driftless_dlq_depth";
/// Keys waiting for a retry of their first event, per group and partition (gauge).
pub const PARKED_KEYS: &str = "driftless_parked_keys";
/// Deliveries awaiting acknowledgement, per group and partition (gauge).
pub const INFLIGHT_DELIVERIES: &str = "driftless_inflight_deliveries";
/// `fdatasync` calls of the log and their total duration (summary: `_count`, `_sum`).
pub const LOG_FSYNC_SECONDS: &str = "driftless_log_fsync_seconds";
/// Longest single `fdatasync` of any partition since start (gauge).
pub const LOG_FSYNC_MAX_SECONDS: &str = "driftless_log_fsync_max_seconds";
/// One past the newest offset of each partition (gauge).
pub const PARTITION_END_OFFSET: &str = "driftless_partition_end_offset";

/// Events a source appended since the server started (counter).
pub const SOURCE_EVENTS_TOTAL: &str = "driftless_source_events_total";
/// Upstream rows or changes a source read since the server started (counter).
pub const SOURCE_ROWS_TOTAL: &str = "driftless_source_rows_total";
/// Restarts of a source after failures since the server started (counter).
pub const SOURCE_RESTARTS_TOTAL: &str = "driftless_source_restarts_total";
/// 1 for a source's current state, per state (gauge).
pub const SOURCE_STATE: &str = "driftless_source_state";
/// Age of the newest event a source appended (gauge; absent before the first).
pub const SOURCE_FRESHNESS_SECONDS: &str = "driftless_source_freshness_seconds";
/// WAL bytes between the server's position and the slot's confirmed position (gauge).
pub const SLOT_LAG_BYTES: &str = "driftless_slot_lag_bytes";
/// Outbox rows waiting to be relayed (gauge).
pub const OUTBOX_BACKLOG_ROWS: &str = "driftless_outbox_backlog_rows";
/// Snapshot rows read and estimated (gauge, `kind` = `done` | `total`).
pub const SNAPSHOT_ROWS: &str = "driftless_snapshot_rows";
/// Upstream commit to durable in the log (histogram).
pub const SOURCE_COMMIT_TO_DURABLE_SECONDS: &str = "driftless_source_commit_to_durable_seconds";

/// Events a sink handled, by outcome (`applied`, `skipped`, `rejected`).
pub const SINK_EVENTS_TOTAL: &str = "driftless_sink_events_total";
/// Row operations a sink wrote.
pub const SINK_ROWS_TOTAL: &str = "driftless_sink_rows_total";
/// Events per committed batch (histogram).
pub const SINK_BATCH_EVENTS: &str = "driftless_sink_batch_events";
/// Restarts and target outages of a sink.
pub const SINK_RESTARTS_TOTAL: &str = "driftless_sink_restarts_total";
/// 1 for the sink's current state.
pub const SINK_STATE: &str = "driftless_sink_state";
/// Age of the newest event a sink applied (its `time`).
pub const PROJECTION_FRESHNESS_SECONDS: &str = "driftless_projection_freshness_seconds";

/// Drifted rows found by a reconciliation's latest run, by kind (`missing`, `extra`, `stale`).
pub const DRIFT_ROWS: &str = "driftless_drift_rows";
/// Duration of a reconciliation's latest run.
pub const RECONCILE_DURATION_SECONDS: &str = "driftless_reconcile_duration_seconds";
/// Rows a reconciliation's latest run shipped out of the databases.
pub const RECONCILE_ROWS_SHIPPED: &str = "driftless_reconcile_rows_shipped";
/// Corrections a reconciliation's latest run appended.
pub const DRIFT_REPAIRED_ROWS: &str = "driftless_drift_repaired_rows";
/// Runs of a reconciliation since the server started.
pub const RECONCILE_RUNS_TOTAL: &str = "driftless_reconcile_runs_total";

/// Partitions (internal topics included) that refuse writes until a restart (gauge; `/readyz`
/// is not ready while it is above 0).
pub const PARTITIONS_POISONED: &str = "driftless_partitions_poisoned";
/// Dead letters that could not be written since start; their events stayed pending (counter).
pub const DEAD_LETTER_FAILURES_TOTAL: &str = "driftless_dead_letter_failures_total";

/// Audit records (administrative actions) that could not be written to `__audit` since start;
/// the actions themselves stood (counter).
pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "driftless_audit_write_failures_total";

/// Requests refused by authentication or authorization since start, by `reason` (`missing`,
/// `malformed`, `unknown`, `expired`, `unavailable`, `session`, `forbidden`, `no_policy`).
pub const AUTH_DENIED_TOTAL: &str = "driftless_auth_denied_total";

/// Every metric name this endpoint exposes.
pub const ALL: [&str; 34] = [
    AUTH_DENIED_TOTAL,
    PARTITIONS_POISONED,
    DEAD_LETTER_FAILURES_TOTAL,
    AUDIT_WRITE_FAILURES_TOTAL,
    DRIFT_ROWS,
    RECONCILE_DURATION_SECONDS,
    RECONCILE_ROWS_SHIPPED,
    DRIFT_REPAIRED_ROWS,
    RECONCILE_RUNS_TOTAL,
    SINK_EVENTS_TOTAL,
    SINK_ROWS_TOTAL,
    SINK_BATCH_EVENTS,
    SINK_RESTARTS_TOTAL,
    SINK_STATE,
    PROJECTION_FRESHNESS_SECONDS,
    SOURCE_EVENTS_TOTAL,
    SOURCE_ROWS_TOTAL,
    SOURCE_RESTARTS_TOTAL,
    SOURCE_STATE,
    SOURCE_FRESHNESS_SECONDS,
    SLOT_LAG_BYTES,
    OUTBOX_BACKLOG_ROWS,
    SNAPSHOT_ROWS,
    SOURCE_COMMIT_TO_DURABLE_SECONDS,
    PRODUCED_EVENTS_TOTAL,
    PRODUCED_BYTES_TOTAL,
    CONSUMER_LAG_EVENTS,
    CONSUMER_LAG_SECONDS,
    DLQ_DEPTH,
    PARKED_KEYS,
    INFLIGHT_DELIVERIES,
    LOG_FSYNC_SECONDS,
    LOG_FSYNC_MAX_SECONDS,
    PARTITION_END_OFFSET,
];

/// Media type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Family {
    out: String,
}

impl Family {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Appends `driftless_auth_denied_total`, one sample per reason (zeros included), to `out`.
pub(crate) fn render_auth_denied(out: &mut String, counts: &[(&'static str, u64)]) {
    let mut f = Family { out: std::mem::take(out) };
    f.header(
        AUTH_DENIED_TOTAL,
        "counter",
        "Requests refused by authentication or authorization since the server started.",
    );
    for (reason, n) in counts {
        f.sample(AUTH_DENIED_TOTAL, &[("reason", reason)], n);
    }
    *out = f.out;
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric. Reads partition figures and group state, so call it off the async
/// executor (it may read one record per lagging partition to date its oldest event, but only
/// while the per-partition series are within `partition_series_max`).
pub fn render(
    broker: &Broker,
    sources: &Sources,
    sinks: &Sinks,
    reconcilers: &Reconcilers,
    partition_series_max: usize,
) -> String {
    let mut f = Family { out: String::with_capacity(4096) };
    render_sources(&mut f, sources);
    render_sinks(&mut f, sinks);
    render_reconcilers(&mut f, reconcilers);
    render_broker_health(&mut f, broker);
    let topics = broker.list_topics();

    f.header(
        PRODUCED_EVENTS_TOTAL,
        "counter",
        "Events appended to the topic since the server started.",
    );
    for t in &topics {
        let n: u64 = t.partitions.iter().map(|p| p.records_appended).sum();
        f.sample(PRODUCED_EVENTS_TOTAL, &[("topic", &t.name)], n);
    }
    f.header(
        PRODUCED_BYTES_TOTAL,
        "counter",
        "Record bytes appended to the topic since the server started.",
    );
    for t in &topics {
        let n: u64 = t.partitions.iter().map(|p| p.bytes_appended).sum();
        f.sample(PRODUCED_BYTES_TOTAL, &[("topic", &t.name)], n);
    }
    let partitions_total: usize = topics.iter().map(|t| t.partitions.len()).sum();
    if partitions_total <= partition_series_max {
        f.header(PARTITION_END_OFFSET, "gauge", "One past the newest offset of the partition.");
        for t in &topics {
            for (i, p) in t.partitions.iter().enumerate() {
                f.sample(
                    PARTITION_END_OFFSET,
                    &[("topic", &t.name), ("partition", &i.to_string())],
                    p.end_offset,
                );
            }
        }
    } else {
        f.header(
            PARTITION_END_OFFSET,
            "gauge",
            "Sum over the topic's partitions of one past the newest offset (per topic: the \
             partitions exceed server.metrics_partition_series_max).",
        );
        for t in &topics {
            let n: u64 = t.partitions.iter().map(|p| p.end_offset).sum();
            f.sample(PARTITION_END_OFFSET, &[("topic", &t.name)], n);
        }
    }
    render_groups(&mut f, broker, partition_series_max);

    let (mut syncs, mut micros, mut max_micros) = (0u64, 0u64, 0u64);
    let mut buckets = [0u64; driftless_log::SYNC_BUCKET_BOUNDS_US.len() + 1];
    for topic in broker.log().topics() {
        for p in topic.partitions() {
            let s = p.stats();
            syncs += s.syncs;
            micros += s.sync_micros_total;
            max_micros = max_micros.max(s.sync_micros_max);
            for (total, n) in buckets.iter_mut().zip(s.sync_buckets) {
                *total += n;
            }
        }
    }
    f.header(
        LOG_FSYNC_SECONDS,
        "histogram",
        "Latency of the log's fdatasync calls, every partition.",
    );
    let mut cumulative = 0u64;
    for (bound, n) in driftless_log::SYNC_BUCKET_BOUNDS_US.iter().zip(buckets) {
        cumulative += n;
        let le = format!("{}", *bound as f64 / 1e6);
        f.sample(&format!("{LOG_FSYNC_SECONDS}_bucket"), &[("le", &le)], cumulative);
    }
    f.sample(&format!("{LOG_FSYNC_SECONDS}_bucket"), &[("le", "+Inf")], syncs);
    f.sample(&format!("{LOG_FSYNC_SECONDS}_sum"), &[], micros as f64 / 1e6);
    f.sample(&format!("{LOG_FSYNC_SECONDS}_count"), &[], syncs);
    f.header(
        LOG_FSYNC_MAX_SECONDS,
        "gauge",
        "Longest single fdatasync of any partition since the server started.",
    );
    f.sample(LOG_FSYNC_MAX_SECONDS, &[], max_micros as f64 / 1e6);
    f.out
}

fn render_broker_health(f: &mut Family, broker: &Broker) {
    f.header(
        PARTITIONS_POISONED,
        "gauge",
        "Partitions refusing writes after a failed write or fsync; a restart recovers them.",
    );
    f.sample(PARTITIONS_POISONED, &[], broker.poisoned_partitions().len());
    f.header(
        DEAD_LETTER_FAILURES_TOTAL,
        "counter",
        "Dead letters that could not be written; their events stayed pending.",
    );
    f.sample(DEAD_LETTER_FAILURES_TOTAL, &[], broker.dead_letter_failures());
    f.header(
        AUDIT_WRITE_FAILURES_TOTAL,
        "counter",
        "Audit records that could not be written to __audit; the actions themselves stood.",
    );
    f.sample(AUDIT_WRITE_FAILURES_TOTAL, &[], broker.audit_failures());
}

/// The consumer-group families. While every group's partitions together are at most
/// `partition_series_max`, one series per (group, topic, partition); beyond it, one per group
/// (sums of events, in-flight deliveries and parked keys, no lag age), so the output is
/// bounded by the number of groups (itself bounded by `groups_max`) and no record is read.
fn render_groups(f: &mut Family, broker: &Broker, partition_series_max: usize) {
    // A first pass that reads nothing: how many series per-partition figures would take.
    let names = broker.list_groups();
    let mut counted = Vec::with_capacity(names.len());
    let mut pairs = 0usize;
    for g in &names {
        if let Ok(d) = broker.describe_group_counts(g) {
            pairs = pairs.saturating_add(d.partitions.len());
            counted.push(d);
        }
    }
    if pairs > partition_series_max {
        render_group_totals(f, &counted, pairs, partition_series_max);
    } else {
        // Within the cap: describe again with the oldest event's age (one read per lagging
        // partition, at most `partition_series_max` reads).
        let groups: Vec<_> = names.iter().filter_map(|g| broker.describe_group(g).ok()).collect();
        render_group_partitions(f, &groups);
    }
    f.header(DLQ_DEPTH, "gauge", "Dead letters in the group's queue.");
    for g in &counted {
        f.sample(DLQ_DEPTH, &[("group", &g.group)], g.dead_letters);
    }
}

fn render_group_totals(
    f: &mut Family,
    groups: &[driftless_broker::GroupDescription],
    pairs: usize,
    max: usize,
) {
    let why = format!(
        "summed over the group's partitions: {pairs} group partitions exceed \
         server.metrics_partition_series_max = {max}"
    );
    type Figure = fn(&driftless_broker::GroupPartition) -> u64;
    let families: [(&str, &str, Figure); 3] = [
        (CONSUMER_LAG_EVENTS, "Events the group has not finished", |p| p.lag_events),
        (PARKED_KEYS, "Keys whose first pending event waits for a retry", |p| {
            u64::try_from(p.parked_keys).unwrap_or(u64::MAX)
        }),
        (INFLIGHT_DELIVERIES, "Deliveries awaiting acknowledgement", |p| {
            u64::try_from(p.inflight).unwrap_or(u64::MAX)
        }),
    ];
    for (name, help, figure) in families {
        f.header(name, "gauge", &format!("{help}, {why}."));
        for g in groups {
            let total = g.partitions.iter().map(figure).fold(0u64, u64::saturating_add);
            f.sample(name, &[("group", &g.group)], total);
        }
    }
}

fn render_group_partitions(f: &mut Family, groups: &[driftless_broker::GroupDescription]) {
    f.header(CONSUMER_LAG_EVENTS, "gauge", "Events of the partition the group has not finished.");
    for g in groups {
        for p in &g.partitions {
            let part = p.partition.to_string();
            f.sample(
                CONSUMER_LAG_EVENTS,
                &[("group", &g.group), ("topic", &p.topic), ("partition", &part)],
                p.lag_events,
            );
        }
    }
    f.header(
        CONSUMER_LAG_SECONDS,
        "gauge",
        "Age of the oldest event of the partition the group has not finished.",
    );
    for g in groups {
        for p in &g.partitions {
            let part = p.partition.to_string();
            f.sample(
                CONSUMER_LAG_SECONDS,
                &[("group", &g.group), ("topic", &p.topic), ("partition", &part)],
                p.lag_ms as f64 / 1000.0,
            );
        }
    }
    f.header(PARKED_KEYS, "gauge", "Keys whose first pending event waits for a retry.");
    for g in groups {
        for p in &g.partitions {
            let part = p.partition.to_string();
            f.sample(
                PARKED_KEYS,
                &[("group", &g.group), ("topic", &p.topic), ("partition", &part)],
                p.parked_keys,
            );
        }
    }
    f.header(INFLIGHT_DELIVERIES, "gauge", "Deliveries awaiting acknowledgement.");
    for g in groups {
        for p in &g.partitions {
            let part = p.partition.to_string();
            f.sample(
                INFLIGHT_DELIVERIES,
                &[("group", &g.group), ("topic", &p.topic), ("partition", &part)],
                p.inflight,
            );
        }
    }
}

fn render_sources(f: &mut Family, sources: &Sources) {
    use driftless_connect::SourceState;
    let statuses = sources.statuses();
    let reports: Vec<_> = statuses.iter().map(|s| s.report()).collect();
    f.header(
        SOURCE_EVENTS_TOTAL,
        "counter",
        "Events the source appended since the server started.",
    );
    for r in &reports {
        f.sample(SOURCE_EVENTS_TOTAL, &[("source", &r.name)], r.events_total);
    }
    f.header(SOURCE_ROWS_TOTAL, "counter", "Upstream rows or changes the source read.");
    for r in &reports {
        f.sample(SOURCE_ROWS_TOTAL, &[("source", &r.name)], r.rows_total);
    }
    f.header(SOURCE_RESTARTS_TOTAL, "counter", "Restarts of the source after failures.");
    for r in &reports {
        f.sample(SOURCE_RESTARTS_TOTAL, &[("source", &r.name)], r.restarts_total);
    }
    f.header(SOURCE_STATE, "gauge", "1 for the source's current state.");
    for r in &reports {
        for (state, name) in [
            (SourceState::Starting, "starting"),
            (SourceState::Running, "running"),
            (SourceState::Snapshotting, "snapshotting"),
            (SourceState::Paused, "paused"),
            (SourceState::Retrying, "retrying"),
            (SourceState::Failed, "failed"),
            (SourceState::Stopped, "stopped"),
        ] {
            let v = u8::from(r.state == state);
            f.sample(SOURCE_STATE, &[("source", &r.name), ("state", name)], v);
        }
    }
    f.header(SOURCE_FRESHNESS_SECONDS, "gauge", "Age of the newest event the source appended.");
    let now = now_ms();
    for r in reports.iter().filter(|r| r.last_event_ms > 0) {
        let age = now.saturating_sub(r.last_event_ms).max(0) as f64 / 1000.0;
        f.sample(SOURCE_FRESHNESS_SECONDS, &[("source", &r.name)], age);
    }
    f.header(SLOT_LAG_BYTES, "gauge", "WAL bytes the replication slot holds behind the server.");
    for r in reports.iter().filter(|r| r.slot_lag_bytes >= 0) {
        f.sample(SLOT_LAG_BYTES, &[("source", &r.name)], r.slot_lag_bytes);
    }
    f.header(OUTBOX_BACKLOG_ROWS, "gauge", "Outbox rows waiting to be relayed.");
    for r in reports.iter().filter(|r| r.outbox_backlog_rows >= 0) {
        f.sample(OUTBOX_BACKLOG_ROWS, &[("source", &r.name)], r.outbox_backlog_rows);
    }
    f.header(SNAPSHOT_ROWS, "gauge", "Initial snapshot rows read (done) and estimated (total).");
    for r in reports.iter().filter(|r| r.snapshot_rows_total > 0) {
        f.sample(SNAPSHOT_ROWS, &[("source", &r.name), ("kind", "done")], r.snapshot_rows_done);
        f.sample(SNAPSHOT_ROWS, &[("source", &r.name), ("kind", "total")], r.snapshot_rows_total);
    }
    f.header(
        SOURCE_COMMIT_TO_DURABLE_SECONDS,
        "histogram",
        "Time from the upstream commit to the event being durable in the log.",
    );
    for s in &statuses {
        let (counts, sum_us) = s.commit_to_durable.snapshot();
        let mut cumulative = 0u64;
        for (bound, n) in LATENCY_BUCKETS_MS.iter().zip(&counts) {
            cumulative += n;
            let le = format!("{}", *bound as f64 / 1e3);
            let name = format!("{SOURCE_COMMIT_TO_DURABLE_SECONDS}_bucket");
            f.sample(&name, &[("source", &s.name), ("le", &le)], cumulative);
        }
        let total: u64 = counts.iter().sum();
        let name = format!("{SOURCE_COMMIT_TO_DURABLE_SECONDS}_bucket");
        f.sample(&name, &[("source", &s.name), ("le", "+Inf")], total);
        let sum = format!("{SOURCE_COMMIT_TO_DURABLE_SECONDS}_sum");
        f.sample(&sum, &[("source", &s.name)], sum_us as f64 / 1e6);
        let count = format!("{SOURCE_COMMIT_TO_DURABLE_SECONDS}_count");
        f.sample(&count, &[("source", &s.name)], total);
    }
}

fn render_reconcilers(f: &mut Family, reconcilers: &Reconcilers) {
    use std::sync::atomic::Ordering;
    let statuses = reconcilers.statuses();
    let last: Vec<_> = statuses.iter().map(|s| (s.config.name.clone(), s.last_report())).collect();
    f.header(DRIFT_ROWS, "gauge", "Drifted rows the latest run found (after the re-check).");
    for (name, r) in last.iter().filter_map(|(n, r)| r.as_ref().map(|r| (n, r))) {
        for (kind, n) in [("missing", r.missing), ("extra", r.extra), ("stale", r.stale)] {
            f.sample(DRIFT_ROWS, &[("reconcile", name), ("kind", kind)], n);
        }
    }
    f.header(RECONCILE_DURATION_SECONDS, "gauge", "Duration of the latest run.");
    for (name, r) in last.iter().filter_map(|(n, r)| r.as_ref().map(|r| (n, r))) {
        let secs = r.duration_ms as f64 / 1000.0;
        f.sample(RECONCILE_DURATION_SECONDS, &[("reconcile", name)], secs);
    }
    f.header(RECONCILE_ROWS_SHIPPED, "gauge", "Rows the latest run read out of both databases.");
    for (name, r) in last.iter().filter_map(|(n, r)| r.as_ref().map(|r| (n, r))) {
        f.sample(RECONCILE_ROWS_SHIPPED, &[("reconcile", name)], r.rows_shipped);
    }
    f.header(DRIFT_REPAIRED_ROWS, "gauge", "Corrections the latest run appended.");
    for (name, r) in last.iter().filter_map(|(n, r)| r.as_ref().map(|r| (n, r))) {
        f.sample(DRIFT_REPAIRED_ROWS, &[("reconcile", name)], r.repaired);
    }
    f.header(
        RECONCILE_RUNS_TOTAL,
        "counter",
        "Runs (failed ones included) since the server started.",
    );
    for s in &statuses {
        let n = s.runs_total.load(Ordering::Relaxed);
        f.sample(RECONCILE_RUNS_TOTAL, &[("reconcile", &s.config.name)], n);
    }
}

fn render_sinks(f: &mut Family, sinks: &Sinks) {
    use driftless_sink::runtime::BATCH_BUCKETS;
    use driftless_sink::SinkState;
    use std::sync::atomic::Ordering;
    let statuses = sinks.statuses();
    let reports: Vec<_> = statuses.iter().map(|s| s.report()).collect();
    f.header(SINK_EVENTS_TOTAL, "counter", "Events the sink handled since the server started.");
    for r in &reports {
        for (outcome, n) in [
            ("applied", r.events_applied_total),
            ("skipped", r.events_skipped_total),
            ("rejected", r.events_rejected_total),
        ] {
            f.sample(SINK_EVENTS_TOTAL, &[("sink", &r.name), ("outcome", outcome)], n);
        }
    }
    f.header(
        SINK_ROWS_TOTAL,
        "counter",
        "Row operations the sink wrote (before the version guard).",
    );
    for s in &statuses {
        f.sample(SINK_ROWS_TOTAL, &[("sink", &s.name)], s.rows_total.load(Ordering::Relaxed));
    }
    f.header(SINK_RESTARTS_TOTAL, "counter", "Restarts and target outages of the sink.");
    for r in &statuses {
        f.sample(
            SINK_RESTARTS_TOTAL,
            &[("sink", &r.name)],
            r.restarts_total.load(Ordering::Relaxed),
        );
    }
    f.header(SINK_STATE, "gauge", "1 for the sink's current state.");
    for r in &reports {
        for (state, name) in [
            (SinkState::Starting, "starting"),
            (SinkState::Running, "running"),
            (SinkState::Paused, "paused"),
            (SinkState::Retrying, "retrying"),
            (SinkState::Failed, "failed"),
            (SinkState::Stopped, "stopped"),
        ] {
            let v = u8::from(r.state == state);
            f.sample(SINK_STATE, &[("sink", &r.name), ("state", name)], v);
        }
    }
    f.header(
        PROJECTION_FRESHNESS_SECONDS,
        "gauge",
        "Age of the newest event the sink applied (from its time attribute). Lag and dead-letter \
         depth are the sink's group's driftless_consumer_lag_* and driftless_dlq_depth.",
    );
    let now = now_ms();
    for r in reports.iter().filter(|r| r.newest_event_ms > 0) {
        let age = now.saturating_sub(r.newest_event_ms).max(0) as f64 / 1000.0;
        f.sample(PROJECTION_FRESHNESS_SECONDS, &[("sink", &r.name), ("group", &r.group)], age);
    }
    f.header(SINK_BATCH_EVENTS, "histogram", "Events per batch the sink committed.");
    for s in &statuses {
        let counts: Vec<u64> = s.batch_sizes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut cumulative = 0u64;
        let name = format!("{SINK_BATCH_EVENTS}_bucket");
        for (bound, n) in BATCH_BUCKETS.iter().zip(&counts) {
            cumulative += n;
            f.sample(&name, &[("sink", &s.name), ("le", &bound.to_string())], cumulative);
        }
        let total: u64 = counts.iter().sum();
        f.sample(&name, &[("sink", &s.name), ("le", "+Inf")], total);
        let applied = s.events_applied_total.load(Ordering::Relaxed);
        f.sample(&format!("{SINK_BATCH_EVENTS}_sum"), &[("sink", &s.name)], applied);
        f.sample(&format!("{SINK_BATCH_EVENTS}_count"), &[("sink", &s.name)], total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn names_follow_the_convention() {
        for name in ALL {
            assert!(name.starts_with("driftless_"), "{name}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        }
    }
}
