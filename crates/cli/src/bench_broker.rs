//! Glue for `driftless bench broker`: flags → `driftless_bench::broker_bench`. The benchmark
//! needs async-nats for its JetStream reference, so it is compiled only with the `bench-broker`
//! cargo feature; without it the command explains how to get it.

use std::path::PathBuf;

use clap::Args;

/// Flags of `driftless bench broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Events in total, per side.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    events: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    event_bytes: usize,
    /// Producers.
    #[arg(long, default_value_t = 4, value_name = "N")]
    producers: usize,
    /// Events per produce request (Driftless) and publishes in flight per producer (JetStream).
    #[arg(long, default_value_t = 100, value_name = "N")]
    batch: usize,
    /// Partitions of the Driftless topic.
    #[arg(long, default_value_t = 4, value_name = "N")]
    partitions: u32,
    /// Consumer group members (Driftless) and pull-consumer tasks (JetStream).
    #[arg(long, default_value_t = 2, value_name = "N")]
    consumers: usize,
    /// Distinct subjects (entity keys) the events are spread over. Driftless keeps one event per
    /// key in flight (per-key order under failure), so few keys cap its consumers.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    keys: u64,
    /// Parent of the temporary data directories.
    #[arg(long, default_value = "target/bench-tmp", value_name = "DIR")]
    dir: PathBuf,
}

/// Runs the benchmark and prints its report.
#[cfg(feature = "bench-broker")]
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    use driftless_bench::broker_bench::{run_broker_bench, BrokerBenchParams};
    let params = BrokerBenchParams {
        events: args.events,
        event_bytes: args.event_bytes,
        producers: args.producers,
        batch: args.batch,
        partitions: args.partitions,
        consumers: args.consumers,
        keys: args.keys,
        dir: args.dir,
        ..BrokerBenchParams::default()
    };
    let report = run_broker_bench(&params)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Without the feature: says how to build the benchmark.
#[cfg(not(feature = "bench-broker"))]
pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!(
        "this driftless was built without the broker benchmark (it needs async-nats for the \
         JetStream reference); run: cargo run --release --features bench-broker -- bench broker"
    )
}
