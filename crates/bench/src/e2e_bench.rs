//! `driftless bench e2e`: a Postgres table captured by CDC, through the embedded log, into a
//! projection in a second Postgres database kept by a sink — judged against plain batched
//! upserts straight into the target database, measured in the same run.
//!
//! Everything runs in this process: one throwaway PostgreSQL cluster (`driftless_testkit`) with
//! databases `app` (the source table `public.items`) and `proj` (the projection `items_proj`),
//! a broker in a fresh temporary directory under [`E2eBenchParams::dir`], a `postgres_cdc`
//! source and a `postgres` sink configured from TOML exactly as `driftless serve` would. The
//! projection has `visible_at timestamptz DEFAULT clock_timestamp()`, so each row records when
//! the sink wrote it, on the same machine clock as the writers.
//!
//! One run, in order:
//! 1. warm-up: once the replication slot is active, a few single-row transactions must become
//!    visible in the projection (the whole pipeline is up);
//! 2. latency: `rate × seconds` single-row transactions, open loop (row `i` is due at
//!    `start + i / rate`) over `latency_writers` connections; the wall-clock time right after
//!    each COMMIT returns is kept per row, and commit → visible is `visible_at` minus it
//!    (clamped at 0);
//! 3. sustained: `rows` rows bulk-inserted by `writers` connections in transactions of
//!    `txn_rows` rows; the rate is `rows` over the time from the first insert to the newest
//!    `visible_at`. The time the source had them all durable in the log is polled alongside;
//! 4. the source and sink stop; then the reference: the same number of rows upserted with
//!    `INSERT … ON CONFLICT DO UPDATE`, `batch_events` rows per statement, one connection (as the
//!    sink has), into a table shaped like the projection; and, as a diagnostic, the sink's own
//!    map + apply code (`driftless_sink::postgres::PgSink`) over the same rows without the
//!    source or the broker.
//!
//! Per phase the report also carries the log's fsyncs per topic (data, `__offsets`,
//! `__connectors`), the source's commit → durable figures and the sink's batch sizes, so a
//! missed target says where the time went. The sustained phase and both upsert measurements
//! also carry the CPU seconds this process and PostgreSQL spent ([`CpuFigures`]): the pipeline
//! and the database share the machine's cores, so its CPU per row, not only its wall time,
//! says what rate this machine allows at best (`rows_per_sec_all_cores_busy`).
//!
//! Caveats, stated in the report: the test cluster runs with `fsync=off` (the broker's log does
//! fsync: `durability = always`); `visible_at` is taken when the sink's statement writes the row,
//! just before its transaction commits, so commit → visible leaves out the sink's COMMIT round
//! trip (well under a millisecond here).
//!
//! Invariants: parameters are validated before anything starts, every error names the flag at
//! fault; rows that never become visible within `timeout_s` fail the run rather than skew its
//! figures; memory is one commit time per latency-phase row (8 bytes, at most
//! [`LATENCY_ROWS_MAX`]) plus fixed-size histograms; the temporary directory, the cluster and
//! every task are gone when the function returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_connect::runtime::{SourceStatus, LATENCY_BUCKETS_MS};
use driftless_connect::{SourceConfig, Sources};
use driftless_sink::batch::Item;
use driftless_sink::mapping::Mapper;
use driftless_sink::postgres::PgSink;
use driftless_sink::{SinkConfig, SinkStatus, Sinks};
use driftless_testkit::PgServer;
use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use crate::{BenchError, Histogram};

/// The source's name (and so its replication slot `driftless_app`).
const SOURCE: &str = "app";
/// The slot the source creates.
const SLOT: &str = "driftless_app";
/// The topic the source writes: its template `{database}.{schema}.{table}`.
pub const TOPIC: &str = "app.public.items";
/// The sink's name.
const SINK: &str = "items";
/// Target: commit → visible p99 at the offered rate, in milliseconds.
pub const LATENCY_P99_MS_MAX: f64 = 25.0;
/// Target: sustained end-to-end rows per second.
pub const ROWS_PER_SEC_MIN: f64 = 30_000.0;
/// Target: sustained rate over the raw batched-upsert rate.
pub const VS_RAW_UPSERT_MIN: f64 = 0.6;
/// Most rows of the latency phase (`rate × seconds`): one commit time (8 bytes) is kept per row.
pub const LATENCY_ROWS_MAX: u64 = 10_000_000;
/// Most rows of the sustained phase.
pub const ROWS_MAX: u64 = 100_000_000;
/// Single-row transactions of the warm-up.
const WARMUP_ROWS: i64 = 20;
/// An insert starting this much after its due time counts as late.
const LATE_AFTER: Duration = Duration::from_millis(5);
/// How often progress is polled while waiting for rows to become visible.
const POLL: Duration = Duration::from_millis(5);

const APP_DDL: &str = "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL)";
const PROJ_DDL: &str = "CREATE TABLE items_proj (id bigint PRIMARY KEY, payload text, \
                        driftless_version text, \
                        visible_at timestamptz NOT NULL DEFAULT clock_timestamp()); \
                        CREATE TABLE items_ref (LIKE items_proj INCLUDING ALL); \
                        CREATE TABLE items_direct (LIKE items_proj INCLUDING ALL)";

/// Parameters of `driftless bench e2e`.
#[derive(Debug, Clone, Serialize)]
pub struct E2eBenchParams {
    /// Rows bulk-inserted in the sustained phase (and upserted by the reference).
    pub rows: u64,
    /// Offered rate of the latency phase, rows (single-row transactions) per second.
    pub rate: u64,
    /// Length of the latency phase, seconds.
    pub seconds: u64,
    /// The sink's `batch_events_max`, and the reference's rows per upsert statement.
    pub batch_events: usize,
    /// Writer connections of the sustained phase.
    pub writers: usize,
    /// Rows per transaction in the sustained phase.
    pub txn_rows: usize,
    /// Writer connections sharing the latency phase's schedule.
    pub latency_writers: usize,
    /// Bytes of each row's `payload` text.
    pub payload_bytes: usize,
    /// Partitions of the topic (the source's `partitions`).
    pub partitions: u32,
    /// The sink's `workers` (members applying in parallel, one connection each).
    pub sink_workers: usize,
    /// Longest wait for rows to become visible, per phase, seconds.
    pub timeout_s: u64,
    /// Parent of the broker's temporary data directory (the disk whose fsyncs are measured).
    pub dir: PathBuf,
}

impl Default for E2eBenchParams {
    fn default() -> Self {
        Self {
            rows: 200_000,
            rate: 2_000,
            seconds: 10,
            batch_events: 500,
            writers: 4,
            txn_rows: 1_000,
            latency_writers: 4,
            payload_bytes: 100,
            partitions: 4,
            sink_workers: 1,
            timeout_s: 300,
            dir: PathBuf::from(crate::log_bench::DEFAULT_DIR),
        }
    }
}

impl E2eBenchParams {
    /// Checks the parameters, naming the flag at fault.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad =
            |flag: &str, reason: &str| Err(BenchError::InvalidParams(format!("{flag} {reason}")));
        if self.rows == 0 || self.rows > ROWS_MAX {
            return bad("--rows", &format!("must be 1 to {ROWS_MAX}"));
        }
        if self.rate == 0 {
            return bad("--rate", "must be at least 1 row/s");
        }
        if self.seconds == 0 {
            return bad("--seconds", "must be at least 1");
        }
        if self.rate.saturating_mul(self.seconds) > LATENCY_ROWS_MAX {
            return bad("--rate", &format!("× --seconds must be at most {LATENCY_ROWS_MAX} rows"));
        }
        if self.batch_events == 0
            || self.batch_events > driftless_sink::config::BATCH_EVENTS_MAX_LIMIT
        {
            return bad(
                "--batch-events",
                &format!("must be 1 to {}", driftless_sink::config::BATCH_EVENTS_MAX_LIMIT),
            );
        }
        if self.writers == 0 || self.writers > 64 {
            return bad("--writers", "must be 1 to 64");
        }
        if self.latency_writers == 0 || self.latency_writers > 64 {
            return bad("--latency-writers", "must be 1 to 64");
        }
        if self.txn_rows == 0 || self.txn_rows > 100_000 {
            return bad("--txn-rows", "must be 1 to 100000");
        }
        if self.payload_bytes > 1 << 20 {
            return bad("--payload-bytes", "must be at most 1048576");
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("--partitions", "must be 1 to 1024");
        }
        if self.timeout_s == 0 {
            return bad("--timeout-s", "must be at least 1");
        }
        Ok(())
    }

    fn latency_rows(&self) -> u64 {
        self.rate * self.seconds
    }
}

/// The log's fsyncs of one topic during a phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SyncFigures {
    /// Append calls.
    pub appends: u64,
    /// Records appended.
    pub records: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Time spent in them, summed over partitions, milliseconds.
    pub sync_ms_total: f64,
}

/// The latency phase.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Single-row transactions committed.
    pub rows: u64,
    /// The offered rate, rows per second.
    pub offered_rows_per_sec: u64,
    /// The rate the writers achieved, first due time to last commit.
    pub inserted_rows_per_sec: f64,
    /// Inserts that started more than 5 ms after their due time.
    pub late_rows: u64,
    /// Commit (client side, after COMMIT returned) → visible in the projection, median.
    pub commit_to_visible_p50_ms: f64,
    /// See `commit_to_visible_p50_ms`.
    pub commit_to_visible_p90_ms: f64,
    /// See `commit_to_visible_p50_ms`.
    pub commit_to_visible_p99_ms: f64,
    /// See `commit_to_visible_p50_ms`.
    pub commit_to_visible_p999_ms: f64,
    /// See `commit_to_visible_p50_ms`.
    pub commit_to_visible_max_ms: f64,
    /// See `commit_to_visible_p50_ms`.
    pub commit_to_visible_mean_ms: f64,
    /// Rows whose `visible_at` preceded their client-side commit time (clamped to 0).
    pub clamped_rows: u64,
    /// Time of one single-row INSERT (autocommit) as the writer saw it, median.
    pub insert_p50_ms: f64,
    /// See `insert_p50_ms`.
    pub insert_p99_ms: f64,
    /// The source's own figure: Postgres commit timestamp → durable in the log, mean.
    pub source_commit_to_durable_mean_ms: f64,
    /// The source's histogram bucket holding its p99: below this many milliseconds (`null`:
    /// above the last bucket).
    pub source_commit_to_durable_p99_ms_below: Option<u64>,
    /// Batches the sink applied.
    pub sink_batches: u64,
    /// Events per sink batch, mean.
    pub sink_events_per_batch: f64,
    /// The log's appends and fsyncs per topic.
    pub log: BTreeMap<String, SyncFigures>,
}

/// CPU spent during a phase, by this process and by PostgreSQL, against what the machine had.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuFigures {
    /// CPU seconds of this process: source, log, broker and sink, plus the benchmark's own
    /// writer and poller connections.
    pub driftless_s: f64,
    /// CPU seconds of every PostgreSQL process: the writers' backends, the walsender, the sink's
    /// backend, background work.
    pub postgres_s: f64,
    /// `(driftless_s + postgres_s) / cpus`: the shortest the phase could have been with every
    /// core busy all along — a floor on its wall time that no overlap of work can beat.
    pub all_cores_busy_s: f64,
    /// The share of the machine's CPU the phase used: `(driftless_s + postgres_s) / (cpus ×
    /// wall seconds)`.
    pub utilisation: f64,
}

/// Reads CPU time of this process and of the PostgreSQL cluster (see [`crate::cpu`]).
#[derive(Debug, Clone, Copy)]
struct CpuMeter {
    postmaster: Option<u32>,
    cpus: usize,
}

/// CPU seconds at one moment: this process, PostgreSQL.
#[derive(Debug, Clone, Copy)]
struct CpuMark(f64, f64);

impl CpuMeter {
    fn new(pg: &PgServer) -> Self {
        Self { postmaster: pg.pid(), cpus: cpus() }
    }

    fn mark(&self) -> CpuMark {
        CpuMark(crate::cpu::own_cpu_s(), self.postmaster.map_or(0.0, crate::cpu::tree_cpu_s))
    }

    /// The CPU used since `start`, over `wall_s` seconds of wall time.
    fn since(&self, start: CpuMark, wall_s: f64) -> CpuFigures {
        let now = self.mark();
        let round = |x: f64| (x * 100.0).round() / 100.0;
        let (driftless_s, postgres_s) = (now.0 - start.0, now.1 - start.1);
        let total = driftless_s + postgres_s;
        CpuFigures {
            driftless_s: round(driftless_s),
            postgres_s: round(postgres_s),
            all_cores_busy_s: round(total / self.cpus as f64),
            utilisation: round(total / (self.cpus as f64 * wall_s.max(1e-9))),
        }
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The sustained phase.
#[derive(Debug, Clone, Serialize)]
pub struct SustainedReport {
    /// Rows inserted.
    pub rows: u64,
    /// Rows found in the projection afterwards (must equal `rows`).
    pub rows_visible: u64,
    /// Seconds from the first insert to the last commit.
    pub insert_s: f64,
    /// Rows per second the writers inserted.
    pub insert_rows_per_sec: f64,
    /// Seconds from the first insert until the source had every row durable in the log
    /// (polled every 5 ms).
    pub source_durable_s: f64,
    /// Seconds from the first insert until the last row was visible (newest `visible_at`).
    pub visible_s: f64,
    /// End-to-end rate: `rows / visible_s`.
    pub rows_per_sec: f64,
    /// The source's append rate: `rows / source_durable_s`.
    pub source_rows_per_sec: f64,
    /// CPU used from the first insert until the last row was visible.
    pub cpu: CpuFigures,
    /// `rows / cpu.all_cores_busy_s`: the rate this phase's CPU cost per row allows on this
    /// machine with every core busy all along — what perfect overlap would reach.
    pub rows_per_sec_all_cores_busy: f64,
    /// Batches the sink applied.
    pub sink_batches: u64,
    /// Events per sink batch, mean.
    pub sink_events_per_batch: f64,
    /// The log's appends and fsyncs per topic.
    pub log: BTreeMap<String, SyncFigures>,
}

/// A rate of rows written to the target database without the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct UpsertReport {
    /// What wrote them.
    pub method: &'static str,
    /// Rows written.
    pub rows: u64,
    /// Rows per statement (batch).
    pub batch_rows: usize,
    /// Seconds.
    pub elapsed_s: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
    /// CPU used meanwhile.
    pub cpu: CpuFigures,
}

/// The targets the figures are judged against.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Commit → visible p99 at the offered rate, at most.
    pub commit_to_visible_p99_ms_max: f64,
    /// Sustained rows per second, at least.
    pub rows_per_sec_min: f64,
    /// Sustained over raw upsert rate, at least.
    pub vs_raw_upsert_min: f64,
}

/// Whether each target was met.
#[derive(Debug, Clone, Serialize)]
pub struct TargetsMet {
    /// `latency.commit_to_visible_p99_ms <= commit_to_visible_p99_ms_max`.
    pub latency_p99: bool,
    /// `sustained.rows_per_sec >= rows_per_sec_min`.
    pub sustained_rows_per_sec: bool,
    /// `sustained_vs_raw_upsert >= vs_raw_upsert_min`.
    pub sustained_vs_raw_upsert: bool,
    /// All of them.
    pub all: bool,
}

/// The report of `driftless bench e2e`.
#[derive(Debug, Clone, Serialize)]
pub struct E2eBenchReport {
    /// Always `e2e`.
    pub bench: &'static str,
    /// The parameters.
    pub params: E2eBenchParams,
    /// CPUs available to this process (Postgres runs on the same ones).
    pub cpus: usize,
    /// `SELECT version()` of the cluster.
    pub postgres_version: String,
    /// Whether the cluster fsyncs (the test cluster does not; see the module docs).
    pub postgres_fsync: bool,
    /// The topic's durability: a produce returns once fsynced.
    pub log_durability: &'static str,
    /// Commit → visible at the offered rate.
    pub latency: LatencyReport,
    /// Highest sustained end-to-end rate.
    pub sustained: SustainedReport,
    /// The reference: plain batched `INSERT … ON CONFLICT DO UPDATE` into the target database.
    pub reference: UpsertReport,
    /// Diagnostic: the sink's map + apply code alone (no source, no broker), same batches.
    pub sink_apply_only: UpsertReport,
    /// `sustained.rows_per_sec / reference.rows_per_sec`.
    pub sustained_vs_raw_upsert: f64,
    /// The targets.
    pub targets: Targets,
    /// Which targets were met.
    pub targets_met: TargetsMet,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
}

fn fail(what: impl Into<String>) -> BenchError {
    BenchError::E2e(what.into())
}

/// A driver error with the server's message when there is one.
fn pg_error(what: &str) -> impl FnOnce(tokio_postgres::Error) -> BenchError + '_ {
    move |e| {
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        fail(format!("{what}: {detail}"))
    }
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

async fn connect(url: &str) -> Result<Client, BenchError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(pg_error("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "benchmark connection ended");
        }
    });
    Ok(client)
}

/// Runs the benchmark; see the module documentation for what is measured.
pub fn run_e2e_bench(params: &E2eBenchParams) -> Result<E2eBenchReport, BenchError> {
    params.validate()?;
    let started = Instant::now();
    std::fs::create_dir_all(&params.dir)
        .map_err(|e| BenchError::io("create bench directory", &params.dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("driftless-bench-e2e-")
        .tempdir_in(&params.dir)
        .map_err(|e| BenchError::io("create temporary directory", &params.dir, e))?;
    let pg = PgServer::start().map_err(|e| fail(format!("start PostgreSQL: {e}")))?;
    for db in ["app", "proj"] {
        pg.create_database(db).map_err(|e| fail(format!("create database {db}: {e}")))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("tokio runtime: {e}")))?;
    let broker = Arc::new(
        Broker::open(tmp.path(), BrokerConfig::default())
            .map_err(|e| fail(format!("open broker: {e}")))?,
    );
    let result = runtime.block_on(run(params, &pg, Arc::clone(&broker)));
    drop(runtime);
    drop(broker);
    drop(pg);
    let mut report = result?;
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The figures the source, the sink and the log keep, at one moment.
#[derive(Debug, Clone)]
struct Counters {
    source_events: u64,
    source_hist: (Vec<u64>, u64),
    sink_events: u64,
    sink_batches: u64,
    log: BTreeMap<String, SyncFigures>,
}

impl Counters {
    fn read(source: &SourceStatus, sink: &SinkStatus, broker: &Broker) -> Self {
        let mut log = BTreeMap::new();
        for topic in broker.log().topics() {
            let mut f = SyncFigures::default();
            for p in topic.partitions() {
                let s = p.stats();
                f.appends += s.appends;
                f.records += s.records_appended;
                f.syncs += s.syncs;
                f.sync_ms_total += ms(s.sync_micros_total);
            }
            log.insert(topic.name().to_string(), f);
        }
        Self {
            source_events: source.events_total.load(Ordering::Relaxed),
            source_hist: source.commit_to_durable.snapshot(),
            sink_events: sink.events_applied_total.load(Ordering::Relaxed),
            sink_batches: sink.batches_total.load(Ordering::Relaxed),
            log,
        }
    }

    /// The log figures accumulated since `before`, for topics that saw appends.
    fn log_since(&self, before: &Counters) -> BTreeMap<String, SyncFigures> {
        self.log
            .iter()
            .map(|(name, now)| {
                let then = before.log.get(name).cloned().unwrap_or_default();
                let f = SyncFigures {
                    appends: now.appends - then.appends,
                    records: now.records - then.records,
                    syncs: now.syncs - then.syncs,
                    sync_ms_total: ((now.sync_ms_total - then.sync_ms_total) * 1000.0).round()
                        / 1000.0,
                };
                (name.clone(), f)
            })
            .filter(|(_, f)| f.appends > 0 || f.syncs > 0)
            .collect()
    }

    /// The source's commit → durable figures since `before`: mean (ms) and the p99 bucket.
    fn source_latency_since(&self, before: &Counters) -> (f64, Option<u64>) {
        let counts: Vec<u64> =
            self.source_hist.0.iter().zip(&before.source_hist.0).map(|(a, b)| a - b).collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return (0.0, None);
        }
        let mean = ms((self.source_hist.1 - before.source_hist.1) / n);
        let rank = (n * 99).div_ceil(100);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (mean, LATENCY_BUCKETS_MS.get(i).copied());
            }
        }
        (mean, None)
    }

    fn sink_batches_since(&self, before: &Counters) -> (u64, f64) {
        let batches = self.sink_batches - before.sink_batches;
        let events = self.sink_events - before.sink_events;
        (batches, if batches == 0 { 0.0 } else { events as f64 / batches as f64 })
    }
}

/// The running pipeline.
struct Pipeline {
    broker: Arc<Broker>,
    sources: Sources,
    sinks: Sinks,
    proj: Client,
    timeout: Duration,
    cpu: CpuMeter,
}

impl Pipeline {
    fn source(&self) -> Arc<SourceStatus> {
        self.sources.statuses().remove(0)
    }

    fn sink(&self) -> Arc<SinkStatus> {
        self.sinks.statuses().remove(0)
    }

    fn counters(&self) -> Counters {
        Counters::read(&self.source(), &self.sink(), &self.broker)
    }

    /// What the source and the sink are doing, for an error message.
    fn states(&self) -> String {
        let source = self.source().report();
        let sink = self.sink().report();
        format!(
            "source {:?} ({} events appended{}), sink {:?} ({} events applied{})",
            source.state,
            source.events_total,
            source.error.map(|e| format!(", error: {e}")).unwrap_or_default(),
            sink.state,
            sink.events_applied_total,
            sink.error.map(|e| format!(", error: {e}")).unwrap_or_default(),
        )
    }

    async fn visible(&self, lo: i64, hi: i64) -> Result<u64, BenchError> {
        let row = self
            .proj
            .query_one("SELECT count(*) FROM items_proj WHERE id BETWEEN $1 AND $2", &[&lo, &hi])
            .await
            .map_err(pg_error("count projection rows"))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Waits until every row with an id in `lo..=hi` is in the projection. The sink's applied
    /// counter (cheap) says when to count (not cheap); `on_poll` runs at every poll.
    async fn wait_visible(
        &self,
        lo: i64,
        hi: i64,
        sink_events_target: u64,
        mut on_poll: impl FnMut(),
    ) -> Result<u64, BenchError> {
        let expected = (hi - lo + 1) as u64;
        let deadline = Instant::now() + self.timeout;
        let sink = self.sink();
        let mut next_count = Instant::now();
        loop {
            on_poll();
            let applied = sink.events_applied_total.load(Ordering::Relaxed);
            if applied >= sink_events_target && Instant::now() >= next_count {
                let found = self.visible(lo, hi).await?;
                if found >= expected {
                    return Ok(found);
                }
                next_count = Instant::now() + Duration::from_millis(100);
            }
            if Instant::now() > deadline {
                let found = self.visible(lo, hi).await?;
                return Err(fail(format!(
                    "after {} s only {found} of {expected} rows (ids {lo}..={hi}) are visible in \
                     the projection; {}",
                    self.timeout.as_secs(),
                    self.states()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn run(
    params: &E2eBenchParams,
    pg: &PgServer,
    broker: Arc<Broker>,
) -> Result<E2eBenchReport, BenchError> {
    let (app_url, proj_url) = (pg.url("app"), pg.url("proj"));
    let app = connect(&app_url).await?;
    let proj = connect(&proj_url).await?;
    app.batch_execute(APP_DDL).await.map_err(pg_error("create the source table"))?;
    proj.batch_execute(PROJ_DDL).await.map_err(pg_error("create the projection tables"))?;
    let postgres_version: String = app
        .query_one("SELECT version()", &[])
        .await
        .map_err(pg_error("read the server version"))?
        .get(0);
    let fsync: String =
        app.query_one("SHOW fsync", &[]).await.map_err(pg_error("read fsync"))?.get(0);

    // The topic, as the source would create it, so that the sink can join before any change.
    broker
        .create_topic(TOPIC, TopicSpec { partitions: params.partitions, ..TopicSpec::default() })
        .map_err(|e| fail(format!("create topic {TOPIC}: {e}")))?;
    let sink_config: SinkConfig = toml::from_str(&sink_toml(params, &proj_url, "items_proj"))
        .map_err(|e| fail(format!("sink config: {e}")))?;
    let source_config: SourceConfig = toml::from_str(&format!(
        "name = \"{SOURCE}\"\nkind = \"postgres_cdc\"\nurl = \"{app_url}\"\n\
         tables = [\"public.items\"]\nsnapshot = \"never\"\npartitions = {}\n",
        params.partitions
    ))
    .map_err(|e| fail(format!("source config: {e}")))?;
    let sinks = Sinks::start(vec![sink_config.clone()], Arc::clone(&broker))
        .map_err(|e| fail(format!("start the sink: {e}")))?;
    let sources = Sources::start(vec![source_config], Arc::clone(&broker))
        .map_err(|e| fail(format!("start the source: {e}")))?;
    let pipeline = Pipeline {
        broker: Arc::clone(&broker),
        sources,
        sinks,
        proj,
        timeout: Duration::from_secs(params.timeout_s),
        cpu: CpuMeter::new(pg),
    };
    let measured = measure(params, &pipeline, &app, &app_url).await;
    pipeline.sinks.shutdown().await;
    pipeline.sources.shutdown().await;
    let (latency, sustained) = measured?;

    let payload = payload(params.payload_bytes);
    let reference = raw_upserts(params, &pipeline.proj, &payload, pipeline.cpu).await?;
    let sink_apply_only = sink_apply(params, &proj_url, &payload, pipeline.cpu).await?;
    let sustained_vs_raw_upsert = sustained.rows_per_sec / reference.rows_per_sec.max(1e-9);
    let targets = Targets {
        commit_to_visible_p99_ms_max: LATENCY_P99_MS_MAX,
        rows_per_sec_min: ROWS_PER_SEC_MIN,
        vs_raw_upsert_min: VS_RAW_UPSERT_MIN,
    };
    let latency_p99 = latency.commit_to_visible_p99_ms <= targets.commit_to_visible_p99_ms_max;
    let sustained_rows_per_sec = sustained.rows_per_sec >= targets.rows_per_sec_min;
    let vs_raw = sustained_vs_raw_upsert >= targets.vs_raw_upsert_min;
    Ok(E2eBenchReport {
        bench: "e2e",
        params: params.clone(),
        cpus: cpus(),
        postgres_version,
        postgres_fsync: fsync != "off",
        log_durability: "always",
        latency,
        sustained,
        reference,
        sink_apply_only,
        sustained_vs_raw_upsert,
        targets,
        targets_met: TargetsMet {
            latency_p99,
            sustained_rows_per_sec,
            sustained_vs_raw_upsert: vs_raw,
            all: latency_p99 && sustained_rows_per_sec && vs_raw,
        },
        elapsed_s: 0.0,
    })
}

fn sink_toml(params: &E2eBenchParams, url: &str, table: &str) -> String {
    format!(
        "name = \"{SINK}\"\ntopics = [\"{TOPIC}\"]\nbatch_events_max = {}\nworkers = {}\n\
         target = {{ kind = \"postgres\", url = \"{url}\" }}\n\
         [[mapping]]\ntypes = [\"public.items.insert\", \"public.items.update\"]\n\
         table = \"{table}\"\nkey = [\"id\"]\nrow = \".data.after\"\n",
        params.batch_events, params.sink_workers
    )
}

fn payload(bytes: usize) -> String {
    (0..bytes).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// Warm-up, latency phase, sustained phase.
async fn measure(
    params: &E2eBenchParams,
    pipeline: &Pipeline,
    app: &Client,
    app_url: &str,
) -> Result<(LatencyReport, SustainedReport), BenchError> {
    let payload = payload(params.payload_bytes);
    // The slot must exist before the first change, or the change is not captured.
    let deadline = Instant::now() + pipeline.timeout;
    loop {
        let active = app
            .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&SLOT])
            .await
            .map_err(pg_error("read the replication slot"))?
            .is_some_and(|r| r.get::<_, bool>(0));
        if active {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "the source's replication slot {SLOT} is not active after {} s; {}",
                pipeline.timeout.as_secs(),
                pipeline.states()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let insert = app
        .prepare("INSERT INTO items (id, payload) VALUES ($1, $2)")
        .await
        .map_err(pg_error("prepare the insert"))?;
    for id in 1..=WARMUP_ROWS {
        app.execute(&insert, &[&-id, &payload]).await.map_err(pg_error("warm-up insert"))?;
    }
    pipeline.wait_visible(-WARMUP_ROWS, -1, 0, || {}).await?;

    let latency = latency_phase(params, pipeline, app_url, &payload).await?;
    let sustained = sustained_phase(params, pipeline, app_url, &payload).await?;
    Ok((latency, sustained))
}

async fn latency_phase(
    params: &E2eBenchParams,
    pipeline: &Pipeline,
    app_url: &str,
    payload: &str,
) -> Result<LatencyReport, BenchError> {
    let n = params.latency_rows();
    let before = pipeline.counters();
    let interval_ns = 1e9 / params.rate as f64;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..params.latency_writers {
        let client = connect(app_url).await?;
        let (payload, writers) = (payload.to_string(), params.latency_writers as u64);
        tasks.spawn(async move {
            let insert = client
                .prepare("INSERT INTO items (id, payload) VALUES ($1, $2)")
                .await
                .map_err(pg_error("prepare the insert"))?;
            let mut commits = Vec::with_capacity((n / writers + 1) as usize);
            let (mut late, mut service) = (0u64, Histogram::new());
            let mut i = w as u64;
            while i < n {
                let due = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                tokio::time::sleep_until(due).await;
                let t = tokio::time::Instant::now();
                if t > due + LATE_AFTER {
                    late += 1;
                }
                let id = i as i64 + 1;
                client.execute(&insert, &[&id, &payload]).await.map_err(pg_error("insert"))?;
                commits.push((id, now_us()));
                service.record_duration(t.elapsed());
                i += writers;
            }
            Ok::<_, BenchError>((commits, late, service))
        });
    }
    let mut commit_us = vec![0i64; n as usize + 1];
    let (mut late, mut service) = (0, Histogram::new());
    while let Some(joined) = tasks.join_next().await {
        let (commits, l, s) = joined.map_err(|e| fail(format!("writer task: {e}")))??;
        for (id, us) in commits {
            commit_us[id as usize] = us;
        }
        late += l;
        service.merge(&s);
    }
    let inserted_s = start.elapsed().as_secs_f64();
    let target = before.sink_events + n;
    pipeline.wait_visible(1, n as i64, target, || {}).await?;
    let after = pipeline.counters();

    let rows = pipeline
        .proj
        .query(
            "SELECT id, (extract(epoch FROM visible_at) * 1000000)::bigint FROM items_proj \
             WHERE id BETWEEN 1 AND $1",
            &[&(n as i64)],
        )
        .await
        .map_err(pg_error("read visible_at"))?;
    let (mut h, mut clamped) = (Histogram::new(), 0);
    for r in rows {
        let (id, visible): (i64, i64) = (r.get(0), r.get(1));
        let d = visible - commit_us[id as usize];
        if d < 0 {
            clamped += 1;
        }
        h.record(d.max(0) as u64);
    }
    let (source_mean, source_p99) = after.source_latency_since(&before);
    let (sink_batches, per_batch) = after.sink_batches_since(&before);
    Ok(LatencyReport {
        rows: n,
        offered_rows_per_sec: params.rate,
        inserted_rows_per_sec: n as f64 / inserted_s,
        late_rows: late,
        commit_to_visible_p50_ms: ms(h.value_at_quantile(0.50)),
        commit_to_visible_p90_ms: ms(h.value_at_quantile(0.90)),
        commit_to_visible_p99_ms: ms(h.value_at_quantile(0.99)),
        commit_to_visible_p999_ms: ms(h.value_at_quantile(0.999)),
        commit_to_visible_max_ms: ms(h.max()),
        commit_to_visible_mean_ms: h.mean().round() / 1000.0,
        clamped_rows: clamped,
        insert_p50_ms: ms(service.value_at_quantile(0.50)),
        insert_p99_ms: ms(service.value_at_quantile(0.99)),
        source_commit_to_durable_mean_ms: source_mean,
        source_commit_to_durable_p99_ms_below: source_p99,
        sink_batches,
        sink_events_per_batch: (per_batch * 10.0).round() / 10.0,
        log: after.log_since(&before),
    })
}

async fn sustained_phase(
    params: &E2eBenchParams,
    pipeline: &Pipeline,
    app_url: &str,
    payload: &str,
) -> Result<SustainedReport, BenchError> {
    let base = params.latency_rows() as i64; // ids base+1 ..= base+rows
    let rows = params.rows as i64;
    let txn = params.txn_rows as i64;
    let chunks = (rows + txn - 1) / txn;
    let before = pipeline.counters();
    let mut clients = Vec::new();
    for _ in 0..params.writers {
        clients.push(connect(app_url).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let cpu_start = pipeline.cpu.mark();
    let start_us = now_us();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (next, payload) = (Arc::clone(&next), payload.to_string());
        tasks.spawn(async move {
            let insert = client
                .prepare(
                    "INSERT INTO items (id, payload) \
                     SELECT g, $3 FROM generate_series($1::bigint, $2::bigint) g",
                )
                .await
                .map_err(pg_error("prepare the bulk insert"))?;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as i64;
                if k >= chunks {
                    return Ok::<_, BenchError>(());
                }
                let lo = base + k * txn + 1;
                let hi = (lo + txn - 1).min(base + rows);
                client
                    .execute(&insert, &[&lo, &hi, &payload])
                    .await
                    .map_err(pg_error("bulk insert"))?;
            }
        });
    }
    // Poll the source while the writers run, then wait for the projection.
    let source = pipeline.source();
    let source_target = before.source_events + params.rows;
    let mut source_done: Option<Duration> = None;
    let mut check_source = || {
        if source_done.is_none() && source.events_total.load(Ordering::Relaxed) >= source_target {
            source_done = Some(start.elapsed());
        }
    };
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(r) => r.map_err(|e| fail(format!("writer task: {e}")))??,
                None => break,
            },
            () = tokio::time::sleep(POLL) => check_source(),
        }
    }
    let insert_s = start.elapsed().as_secs_f64();
    let target = before.sink_events + params.rows;
    let rows_visible =
        pipeline.wait_visible(base + 1, base + rows, target, &mut check_source).await?;
    check_source();
    let after = pipeline.counters();
    let newest: i64 = pipeline
        .proj
        .query_one(
            "SELECT (extract(epoch FROM max(visible_at)) * 1000000)::bigint FROM items_proj \
             WHERE id BETWEEN $1 AND $2",
            &[&(base + 1), &(base + rows)],
        )
        .await
        .map_err(pg_error("read the newest visible_at"))?
        .get(0);
    let visible_s = (newest - start_us).max(1) as f64 / 1e6;
    // Up to now: the polls after the last row became visible cost next to nothing.
    let cpu = pipeline.cpu.since(cpu_start, visible_s);
    let source_durable_s = source_done.unwrap_or_else(|| start.elapsed()).as_secs_f64();
    let (sink_batches, per_batch) = after.sink_batches_since(&before);
    Ok(SustainedReport {
        rows: params.rows,
        rows_visible,
        insert_s,
        insert_rows_per_sec: params.rows as f64 / insert_s,
        source_durable_s,
        visible_s,
        rows_per_sec: params.rows as f64 / visible_s,
        source_rows_per_sec: params.rows as f64 / source_durable_s,
        rows_per_sec_all_cores_busy: params.rows as f64 / cpu.all_cores_busy_s.max(0.01),
        cpu,
        sink_batches,
        sink_events_per_batch: (per_batch * 10.0).round() / 10.0,
        log: after.log_since(&before),
    })
}

/// The reference: `rows` rows upserted into `items_ref`, `batch_events` per statement.
async fn raw_upserts(
    params: &E2eBenchParams,
    proj: &Client,
    payload: &str,
    cpu: CpuMeter,
) -> Result<UpsertReport, BenchError> {
    let upsert = proj
        .prepare(
            "INSERT INTO items_ref (id, payload, driftless_version) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) \
             ON CONFLICT (id) DO UPDATE SET payload = EXCLUDED.payload, \
             driftless_version = EXCLUDED.driftless_version",
        )
        .await
        .map_err(pg_error("prepare the reference upsert"))?;
    let cpu_start = cpu.mark();
    let start = Instant::now();
    let mut id = 0i64;
    while (id as u64) < params.rows {
        let n = (params.rows - id as u64).min(params.batch_events as u64) as i64;
        let ids: Vec<i64> = (id + 1..=id + n).collect();
        let payloads = vec![payload; n as usize];
        let versions: Vec<String> = ids.iter().map(|i| format!("{i:016X}{:08X}", 0)).collect();
        proj.execute(&upsert, &[&ids, &payloads, &versions])
            .await
            .map_err(pg_error("reference upsert"))?;
        id += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(UpsertReport {
        method: "INSERT ... ON CONFLICT DO UPDATE, unnest arrays, one connection",
        rows: params.rows,
        batch_rows: params.batch_events,
        elapsed_s: elapsed,
        rows_per_sec: params.rows as f64 / elapsed,
        cpu: cpu.since(cpu_start, elapsed),
    })
}

/// The sink's map + apply code alone: CDC-shaped events, mapped and applied to `items_direct`
/// in batches of `batch_events`, one transaction each (with the applied positions), as the sink
/// does after a fetch.
async fn sink_apply(
    params: &E2eBenchParams,
    proj_url: &str,
    payload: &str,
    cpu: CpuMeter,
) -> Result<UpsertReport, BenchError> {
    let config: SinkConfig = toml::from_str(&sink_toml(params, proj_url, "items_direct"))
        .map_err(|e| fail(format!("sink config: {e}")))?;
    let mapper = Mapper::compile("direct", &config.mappings)
        .map_err(|e| fail(format!("compile the mapping: {e}")))?;
    let mut target = PgSink::new("direct", proj_url, "driftless_version");
    target.check(&mapper).await.map_err(|e| fail(format!("check items_direct: {e}")))?;
    let payload = serde_json::to_string(payload).map_err(|e| fail(format!("payload: {e}")))?;
    let cpu_start = cpu.mark();
    let start = Instant::now();
    let mut id = 0u64;
    while id < params.rows {
        let n = (params.rows - id).min(params.batch_events as u64);
        let mut items = Vec::with_capacity(n as usize);
        for i in id + 1..=id + n {
            // As the sink does: the event's stored text, mapped without parsing all of it.
            let event = cdc_event(i, &payload);
            let ops =
                mapper.map_json(&event, i).map_err(|e| fail(format!("map event {i}: {e}")))?.ops;
            let partition = (i % u64::from(params.partitions)) as u32;
            items.push(Item { topic: TOPIC.into(), partition, offset: i, event_time_ms: 0, ops });
        }
        let refs: Vec<&Item> = items.iter().collect();
        target.apply(&refs).await.map_err(|e| fail(format!("sink apply: {e}")))?;
        id += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(UpsertReport {
        method: "driftless_sink PgSink::apply (mapping included), one connection",
        rows: params.rows,
        batch_rows: params.batch_events,
        elapsed_s: elapsed,
        rows_per_sec: params.rows as f64 / elapsed,
        cpu: cpu.since(cpu_start, elapsed),
    })
}

/// An insert event's JSON text as the CDC source writes it (CloudEvents payload);
/// `payload_json` is the payload as a JSON string.
fn cdc_event(id: u64, payload_json: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{SOURCE}:{id:016X}:0","source":"/pg/app","type":"public.items.insert","subject":"{id}","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","sequence":"{id:016X}{:08X}","data":{{"op":"insert","table":"public.items","key":{{"id":{id}}},"before":null,"after":{{"id":{id},"payload":{payload_json}}}}}}}"#,
        0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn defaults_are_valid_and_each_bad_flag_is_named() {
        assert!(E2eBenchParams::default().validate().is_ok());
        let cases: [(&str, E2eBenchParams); 5] = [
            ("--rows", E2eBenchParams { rows: 0, ..Default::default() }),
            ("--rate", E2eBenchParams { rate: 0, ..Default::default() }),
            ("--seconds", E2eBenchParams { seconds: 0, ..Default::default() }),
            ("--batch-events", E2eBenchParams { batch_events: 10_001, ..Default::default() }),
            ("--rate", E2eBenchParams { rate: LATENCY_ROWS_MAX, seconds: 2, ..Default::default() }),
        ];
        for (flag, params) in cases {
            let e = params.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    #[test]
    fn the_sink_config_parses_and_validates() {
        let c: SinkConfig = toml::from_str(&sink_toml(
            &E2eBenchParams::default(),
            "postgres://x@h/p",
            "items_proj",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.validate().is_ok());
        assert_eq!(c.batch_events_max, 500);
        assert_eq!(c.topics, vec![TOPIC.to_string()]);
    }

    #[test]
    fn a_cdc_shaped_event_maps_to_one_row_with_its_sequence_as_version() {
        let c: SinkConfig =
            toml::from_str(&sink_toml(&E2eBenchParams::default(), "postgres://x@h/p", "t"))
                .unwrap_or_else(|e| panic!("{e}"));
        let mapper = Mapper::compile("t", &c.mappings).unwrap_or_else(|e| panic!("{e}"));
        let event = cdc_event(7, r#""abc""#);
        let parsed: Value = serde_json::from_str(&event).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed["data"]["after"]["payload"], json!("abc"));
        let ops = mapper.map_json(&event, 7).unwrap_or_else(|e| panic!("{e}")).ops;
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].version, format!("{:016X}{:08X}", 7, 0));
        assert_eq!(ops[0].columns.get("payload"), Some(&json!("abc")));
    }
}
