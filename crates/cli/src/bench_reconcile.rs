//! Glue for `driftless bench reconcile`: flags → `driftless_bench::reconcile_bench`. Needs
//! PostgreSQL 15's programs (as the tests do: `/usr/lib/postgresql/15/bin` or
//! `DRIFTLESS_PG_BIN`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use driftless_bench::reconcile_bench::{run_reconcile_bench, ReconcileBenchParams};

/// Flags of `driftless bench reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileBenchArgs {
    /// Print one JSON object on one line instead of indented JSON.
    #[arg(long)]
    json: bool,
    /// Rows in the source table and in the projection.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    rows: u64,
    /// Rows tampered in the projection.
    #[arg(long, default_value_t = 10, value_name = "N")]
    drifted: u64,
    /// Parent of the scratch directory.
    #[arg(long, default_value = driftless_bench::log_bench::DEFAULT_DIR,
          env = "DRIFTLESS_BENCH_DIR", value_name = "DIR")]
    dir: PathBuf,
}

/// Runs the benchmark and prints its report.
pub fn run(args: ReconcileBenchArgs) -> anyhow::Result<()> {
    let params = ReconcileBenchParams { rows: args.rows, drifted: args.drifted, dir: args.dir };
    let report = run_reconcile_bench(&params).context("reconcile benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
