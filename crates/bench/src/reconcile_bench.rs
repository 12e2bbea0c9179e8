//! `driftless bench reconcile`: how fast reconciliation finds a few drifted rows in a large
//! projection, and how few rows it ships out of the databases to do it.
//!
//! Setup: one throwaway PostgreSQL with a source table and a projection of `rows` rows each
//! (equal content), then `drifted` rows tampered in the projection (a third missing, a third
//! extra, the rest stale). Measured: one reconciliation run (`lag_window_ms = 0`): its detection
//! time (counts, bucket digests, differing buckets' rows) and the rows it shipped. Reference, in
//! the same run: the naive comparison — read both tables whole and compare them in the client.
//!
//! Invariant: the run must find exactly the tampered keys, or the benchmark fails instead of
//! reporting a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use driftless_reconcile::config::{Plan, ReconcileConfig};
use driftless_sink::SinkConfig;
use driftless_testkit::PgServer;
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::error::BenchError;

/// Parameters of `driftless bench reconcile`.
#[derive(Debug, Clone)]
pub struct ReconcileBenchParams {
    /// Rows in each table.
    pub rows: u64,
    /// Rows tampered in the projection.
    pub drifted: u64,
    /// Parent of the broker's scratch directory.
    pub dir: std::path::PathBuf,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileBenchReport {
    /// `reconcile`.
    pub bench: &'static str,
    /// Rows per table.
    pub rows: u64,
    /// Rows tampered.
    pub drifted: u64,
    /// CPUs of this machine.
    pub cpus: usize,
    /// Detection time (counts, digests, differing buckets' rows), ms.
    pub detect_ms: u64,
    /// The whole run, with the re-check of candidates, ms.
    pub run_ms: u64,
    /// Buckets compared.
    pub buckets: i64,
    /// Buckets that differed.
    pub buckets_differing: usize,
    /// Rows read out of both databases.
    pub rows_shipped: usize,
    /// `rows_shipped / rows`.
    pub shipped_fraction: f64,
    /// Missing, extra, stale keys found.
    pub found: [usize; 3],
    /// The naive comparison: both tables read whole.
    pub reference: NaiveReport,
    /// `reference.ms / detect_ms`.
    pub speedup_vs_naive: f64,
    /// Targets of the issue.
    pub targets: Targets,
    /// Whether they were met.
    pub targets_met: TargetsMet,
}

/// The naive comparison's figures.
#[derive(Debug, Clone, Serialize)]
pub struct NaiveReport {
    /// How.
    pub method: &'static str,
    /// Time, ms.
    pub ms: u64,
    /// Rows read out of both databases.
    pub rows_shipped: usize,
    /// Differences it found (must equal `drifted`).
    pub differences: usize,
}

/// Targets.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    /// Longest detection, ms.
    pub detect_ms_max: u64,
    /// Largest fraction of the table shipped.
    pub shipped_fraction_max: f64,
}

/// Which targets were met.
#[derive(Debug, Clone, Serialize)]
pub struct TargetsMet {
    /// Detection time.
    pub detect: bool,
    /// Rows shipped.
    pub shipped: bool,
    /// Both.
    pub all: bool,
}

fn err(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError::E2e(format!("reconcile bench: {what}: {e}"))
}

/// Runs the benchmark.
pub fn run_reconcile_bench(
    params: &ReconcileBenchParams,
) -> Result<ReconcileBenchReport, BenchError> {
    if params.rows < 1_000 || params.drifted == 0 || params.drifted * 10 > params.rows {
        return Err(BenchError::InvalidParams(
            "--rows must be at least 1000 and --drifted between 1 and a tenth of --rows".into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| err("tokio")(e.to_string()))?;
    runtime.block_on(run_async(params))
}

async fn run_async(params: &ReconcileBenchParams) -> Result<ReconcileBenchReport, BenchError> {
    let pg = PgServer::start().map_err(|e| err("PostgreSQL")(e.to_string()))?;
    for db in ["app", "proj"] {
        pg.create_database(db).map_err(|e| err("create database")(e.to_string()))?;
    }
    let connect = |db: &str| {
        let url = pg.url(db);
        async move {
            let (c, conn) = tokio_postgres::connect(&url, NoTls)
                .await
                .map_err(|e| err("connect")(e.to_string()))?;
            tokio::spawn(conn);
            Ok::<_, BenchError>(c)
        }
    };
    let (app, proj) = (connect("app").await?, connect("proj").await?);
    let last = params.rows - 1;
    app.batch_execute(&format!(
        "CREATE TABLE customers (id text PRIMARY KEY, city text, n bigint); \
         INSERT INTO customers SELECT 'c' || lpad(i::text, 8, '0'), 'city-' || i, i \
         FROM generate_series(0, {last}) i; ANALYZE customers"
    ))
    .await
    .map_err(|e| err("fill the source")(e.to_string()))?;
    proj.batch_execute(&format!(
        "CREATE TABLE contacts (id text PRIMARY KEY, city text, n bigint, driftless_version text); \
         INSERT INTO contacts SELECT 'c' || lpad(i::text, 8, '0'), 'city-' || i, i, '0' \
         FROM generate_series(0, {last}) i; ANALYZE contacts"
    ))
    .await
    .map_err(|e| err("fill the projection")(e.to_string()))?;
    // Tamper: spread over the table.
    let step = params.rows / params.drifted;
    for j in 0..params.drifted {
        let id = format!("c{:08}", j * step + step / 2);
        let sql = match j % 3 {
            0 => format!("DELETE FROM contacts WHERE id = '{id}'"),
            1 => format!("INSERT INTO contacts VALUES ('x{j:08}', 'ghost', 0, '0')"),
            _ => format!("UPDATE contacts SET city = 'tampered' WHERE id = '{id}'"),
        };
        proj.batch_execute(&sql).await.map_err(|e| err("tamper")(e.to_string()))?;
    }

    let sink: SinkConfig = toml::from_str(&format!(
        "name = \"contacts\"\ntopics = [\"customers\"]\n\
         target = {{ kind = \"postgres\", url = \"{}\" }}\n\
         [[mapping]]\ntable = \"contacts\"\nkey = [\"id\"]\n\
         columns = {{ id = \".subject\", city = \".data.city\", n = \".data.n\" }}\n",
        pg.url("proj")
    ))
    .map_err(|e| err("sink config")(e.to_string()))?;
    let config: ReconcileConfig = toml::from_str(&format!(
        "name = \"bench\"\nsink = \"contacts\"\nlag_window_ms = 0\n\
         source = {{ kind = \"postgres\", url = \"{}\", table = \"customers\" }}\n",
        pg.url("app")
    ))
    .map_err(|e| err("reconcile config")(e.to_string()))?;
    let plan = Plan::derive(&config, &sink, None).map_err(|e| err("plan")(e.to_string()))?;
    std::fs::create_dir_all(&params.dir).map_err(|e| err("scratch dir")(e.to_string()))?;
    let scratch =
        tempfile::tempdir_in(&params.dir).map_err(|e| err("scratch dir")(e.to_string()))?;
    let broker = Arc::new(
        Broker::open(scratch.path(), BrokerConfig::default())
            .map_err(|e| err("broker")(e.to_string()))?,
    );

    let started = Instant::now();
    let limits =
        driftless_reconcile::run::Limits { keys_reported_max: 1_000, drifted_keys_max: 100_000 };
    let report = driftless_reconcile::run::run(&plan, &broker, Duration::ZERO, limits, None)
        .await
        .map_err(|e| err("run")(e.to_string()))?;
    let run_ms = started.elapsed().as_millis() as u64;
    let found = [report.missing, report.extra, report.stale];
    if found.iter().sum::<usize>() as u64 != params.drifted {
        return Err(err("check")(format!(
            "found {found:?} drifted rows, tampered {}",
            params.drifted
        )));
    }

    // The reference: read both tables whole and compare.
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        app.query("SELECT id, city, n FROM customers", &[]),
        proj.query("SELECT id, city, n FROM contacts", &[])
    );
    let (a, b) =
        (a.map_err(|e| err("naive")(e.to_string()))?, b.map_err(|e| err("naive")(e.to_string()))?);
    let rows = |rs: &[tokio_postgres::Row]| -> BTreeMap<String, (String, i64)> {
        rs.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect()
    };
    let (ma, mb) = (rows(&a), rows(&b));
    let mut differences = ma.iter().filter(|(k, v)| mb.get(*k) != Some(v)).count();
    differences += mb.keys().filter(|k| !ma.contains_key(*k)).count();
    let naive_ms = t0.elapsed().as_millis() as u64;
    let shipped_fraction = report.rows_shipped as f64 / params.rows as f64;
    let targets = Targets { detect_ms_max: 10_000, shipped_fraction_max: 0.01 };
    let detect = report.detect_ms <= targets.detect_ms_max;
    let shipped = shipped_fraction <= targets.shipped_fraction_max;
    Ok(ReconcileBenchReport {
        bench: "reconcile",
        rows: params.rows,
        drifted: params.drifted,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        detect_ms: report.detect_ms,
        run_ms,
        buckets: report.buckets,
        buckets_differing: report.buckets_differing,
        rows_shipped: report.rows_shipped,
        shipped_fraction,
        found,
        reference: NaiveReport {
            method: "SELECT both tables whole, compare in the client",
            ms: naive_ms,
            rows_shipped: a.len() + b.len(),
            differences,
        },
        speedup_vs_naive: naive_ms as f64 / report.detect_ms.max(1) as f64,
        targets,
        targets_met: TargetsMet { detect, shipped, all: detect && shipped },
    })
}
