//! Glue for `driftless bench e2e`: flags → `driftless_bench::e2e_bench`. Needs PostgreSQL 15's
//! programs (as the tests do: `/usr/lib/postgresql/15/bin` or `DRIFTLESS_PG_BIN`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use driftless_bench::e2e_bench::{run_e2e_bench, E2eBenchParams};

/// Flags of `driftless bench e2e`.
#[derive(Debug, Args)]
pub struct E2eArgs {
    /// Print one JSON object on stdout (on one line) instead of indented JSON.
    #[arg(long)]
    json: bool,
    /// Rows bulk-inserted in the sustained-rate phase (and upserted by the reference).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    rows: u64,
    /// Offered rate of the latency phase, single-row transactions per second.
    #[arg(long, default_value_t = 2_000, value_name = "ROWS_PER_SEC")]
    rate: u64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 10, value_name = "S")]
    seconds: u64,
    /// The sink's batch_events_max, and the reference's rows per upsert statement.
    #[arg(long, default_value_t = 500, value_name = "B")]
    batch_events: usize,
    /// Writer connections of the sustained-rate phase.
    #[arg(long, default_value_t = 4, value_name = "N")]
    writers: usize,
    /// Rows per transaction in the sustained-rate phase.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    txn_rows: usize,
    /// Writer connections sharing the latency phase's schedule.
    #[arg(long, default_value_t = 4, value_name = "N")]
    latency_writers: usize,
    /// Bytes of each row's payload text.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    payload_bytes: usize,
    /// The sink's `workers`: group members applying in parallel, one connection each.
    #[arg(long, default_value_t = 1, value_name = "N")]
    sink_workers: usize,
    /// Partitions of the topic the source writes.
    #[arg(long, default_value_t = 4, value_name = "N")]
    partitions: u32,
    /// Longest wait, per phase, for the rows to become visible in the projection.
    #[arg(long, default_value_t = 300, value_name = "S")]
    timeout_s: u64,
    /// Parent of the broker's temporary data directory (the disk whose fsyncs count).
    #[arg(long, default_value = driftless_bench::log_bench::DEFAULT_DIR,
          env = "DRIFTLESS_BENCH_DIR", value_name = "DIR")]
    dir: PathBuf,
}

/// Runs the benchmark and prints its report.
pub fn run(args: E2eArgs) -> anyhow::Result<()> {
    let params = E2eBenchParams {
        rows: args.rows,
        rate: args.rate,
        seconds: args.seconds,
        batch_events: args.batch_events,
        writers: args.writers,
        txn_rows: args.txn_rows,
        latency_writers: args.latency_writers,
        payload_bytes: args.payload_bytes,
        partitions: args.partitions,
        sink_workers: args.sink_workers,
        timeout_s: args.timeout_s,
        dir: args.dir,
    };
    let report = run_e2e_bench(&params).context("end-to-end benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
