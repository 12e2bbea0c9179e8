//! The `driftless` command-line tool: argument parsing and glue only.
//!
//! Invariants: every subcommand parses its flags here (client commands in `commands`) and calls a
//! library crate, or the server's HTTP API through `client`, to do the work;
//! nothing but a command's result goes to stdout, while diagnostics and logs go to stderr; client
//! commands print for people (`--output table`, the default on a terminal) or as JSON lines
//! (`--output json`, the default otherwise: pipes and scripts), see `output`; a failure exits
//! non-zero with the error and its chain of causes.

/// See the `mimalloc` feature in Cargo.toml for why.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_broker;
mod bench_e2e;
mod bench_reconcile;
mod client;
mod commands;
mod demo;
mod output;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use driftless_bench::log_bench::{self, BenchDurability, LogBenchParams};
use tracing_subscriber::EnvFilter;

/// Driftless: a real-time data sync engine.
#[derive(Debug, Parser)]
#[command(name = "driftless", version, about, propagate_version = true)]
struct Cli {
    /// Which logs to write to stderr, as a tracing filter (`warn`, `info`,
    /// `driftless_log=debug,info`, ...). Defaults to `info` (`error` for `demo`).
    #[arg(long, global = true, env = "RUST_LOG", value_name = "FILTER")]
    log_level: Option<String>,

    /// Base URL of the Driftless server that client commands (produce, consume, topic, group,
    /// dlq, source, sink, reconcile) talk to.
    #[arg(long, global = true, env = "DRIFTLESS_SERVER", value_name = "URL",
          default_value = client::DEFAULT_SERVER)]
    server: String,

    /// API token for client commands, sent as `Authorization: Bearer` (from
    /// `driftless token create`). Prefer DRIFTLESS_TOKEN: other users can read a flag in `ps`.
    #[arg(
        long,
        global = true,
        env = "DRIFTLESS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// PEM file of the certificate authorities an https:// server's certificate must chain to
    /// (default: the public web roots).
    #[arg(long, global = true, env = "DRIFTLESS_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,

    /// How client commands print results: `table` for people, `json` (JSON lines) for scripts.
    /// Default: `table` when stdout is a terminal, else `json`.
    #[arg(long, global = true, env = "DRIFTLESS_OUTPUT", value_name = "FORMAT")]
    output: Option<output::Output>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure Driftless against a reference measured in the same run.
    Bench(BenchCommand),
    /// Publish CloudEvents read as JSON lines from stdin; prints where each landed.
    Produce(commands::produce::ProduceArgs),
    /// Consume a topic in a consumer group; prints events as JSON lines and acknowledges them.
    Consume(commands::consume::ConsumeArgs),
    /// Create, list, describe and delete topics.
    Topic(commands::topic::TopicArgs),
    /// List, describe and seek consumer groups.
    Group(commands::group::GroupArgs),
    /// A consumer group's dead-letter queue: list, inspect, retry, discard.
    Dlq(commands::dlq::DlqArgs),
    /// The server's sources (CDC, outbox relays): list, describe, pause, resume.
    Source(commands::source::SourceArgs),
    /// The server's sinks (projections, webhooks): list, describe, pause, resume, rebuild.
    Sink(commands::sink::SinkArgs),
    /// Compare a projection with its source of truth now; report (and with --repair, fix) drift.
    Reconcile(commands::reconcile::ReconcileArgs),
    /// API tokens in the tokens file: create (prints it once), list, revoke.
    Token(commands::token::TokenArgs),
    /// Create a service's outbox table in Postgres or SQLite.
    Outbox(commands::outbox::OutboxArgs),
    /// Run the Driftless server (HTTP API over the broker) until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout, e.g.
    /// `driftless completions bash > ~/.local/share/bash-completion/completions/driftless`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// The whole idea in one command: four services kept in sync from one, with a poison event,
    /// an outage and a hand edit along the way; exits 0 only if every projection matches.
    Demo(demo::DemoArgs),
}

/// Flags of `driftless serve`; each overrides the same setting of the config file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file with `[server]` and `[broker]` tables; without one, defaults apply.
    #[arg(long, env = "DRIFTLESS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on (`[server] listen`, default 127.0.0.1:7070).
    #[arg(long, env = "DRIFTLESS_LISTEN", value_name = "ADDR")]
    listen: Option<String>,

    /// Data directory (`[server] data_dir`, default ./driftless-data).
    #[arg(long, env = "DRIFTLESS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Most user topics (`[broker] topics_max`, default 10000).
    #[arg(long, env = "DRIFTLESS_TOPICS_MAX", value_name = "N")]
    topics_max: Option<usize>,

    /// Most partitions of all topics together (`[broker] partitions_total_max`, default 100000).
    #[arg(long, env = "DRIFTLESS_PARTITIONS_TOTAL_MAX", value_name = "N")]
    partitions_total_max: Option<usize>,

    /// Serve https only, with this certificate chain (PEM; `[server.tls] cert_file`, reloaded
    /// when it changes). Needs --tls-key.
    #[arg(long, env = "DRIFTLESS_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM; `[server.tls] key_file`). Needs --tls-cert.
    #[arg(long, env = "DRIFTLESS_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Start even when listening beyond loopback with authentication off (`[server]
    /// insecure_allow_unauthenticated_remote`): anyone who reaches the port can then do
    /// anything. Only behind a firewall or an authenticating proxy.
    #[arg(long)]
    insecure_allow_unauthenticated_remote: bool,
}

#[derive(Debug, Args)]
struct BenchCommand {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Embedded log: append throughput and latency, reopen time, against raw sequential
    /// write + fdatasync of the same disk.
    Log(LogArgs),
    /// Broker: produce → consume through the HTTP API, against NATS JetStream (file storage)
    /// under the same load. Needs the `bench-broker` cargo feature.
    Broker(bench_broker::BrokerArgs),
    /// End to end: Postgres CDC → log → sink → a projection in a second Postgres database
    /// (commit → visible latency, sustained rate), against plain batched upserts.
    E2e(bench_e2e::E2eArgs),
    /// Reconciliation: time to find a few drifted rows in a large projection and rows shipped,
    /// against reading both tables whole.
    Reconcile(bench_reconcile::ReconcileBenchArgs),
}

/// Flags of `driftless bench log`; see `driftless_bench::log_bench` for what is measured.
#[derive(Debug, Args)]
struct LogArgs {
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,

    /// Payload bytes per event (each record also takes 29 header bytes on disk), up to 1048576.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    event_bytes: usize,

    /// Events to append in total.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    events: u64,

    /// Producer threads appending concurrently.
    #[arg(long, default_value_t = 8, value_name = "N")]
    producers: usize,

    /// Events per append. Up to 8 MiB per batch on disk uses the log's default limits; larger
    /// batches raise the benchmark topic's batch_bytes_max, up to 64 MiB.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    batch: usize,

    /// Offered load in events/s over all producers (open loop, latency measured from each
    /// send's intended time); 0 appends as fast as possible (closed loop).
    #[arg(long, default_value_t = 0, value_name = "EVENTS_PER_SEC")]
    rate: u64,

    /// The topic's durability: `always` (acknowledged = fdatasynced), `never`, or
    /// `interval:MS`.
    #[arg(long, default_value = "always", value_name = "MODE")]
    durability: BenchDurability,

    /// Where to create the temporary data directory. The default is relative to the working
    /// directory, so the disk measured is the one you run from (not /tmp).
    #[arg(long, default_value = log_bench::DEFAULT_DIR, env = "DRIFTLESS_BENCH_DIR", value_name = "PATH")]
    dir: PathBuf,

    /// Keep the data directory after the run instead of removing it.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo tells its own story on stdout; the components' warnings (the poison event's
    // retries, the outage) are part of it and would only interleave.
    let default = if matches!(cli.command, Command::Demo(_)) { "error" } else { "info" };
    init_logging(cli.log_level.as_deref().or(Some(default)))?;
    client::configure(client::ClientOptions { token: cli.token, ca_file: cli.ca_file });
    let out = cli.output.unwrap_or_else(|| output::Output::default_for(io::stdout().is_terminal()));
    match cli.command {
        Command::Bench(BenchCommand { bench: Bench::Log(args) }) => bench_log(args),
        Command::Bench(BenchCommand { bench: Bench::Broker(args) }) => bench_broker::run(args),
        Command::Bench(BenchCommand { bench: Bench::E2e(args) }) => bench_e2e::run(args),
        Command::Bench(BenchCommand { bench: Bench::Reconcile(args) }) => {
            bench_reconcile::run(args)
        }
        Command::Produce(args) => commands::produce::run(&cli.server, args),
        Command::Consume(args) => commands::consume::run(&cli.server, args),
        Command::Topic(args) => commands::topic::run(&cli.server, out, args),
        Command::Group(args) => commands::group::run(&cli.server, out, args),
        Command::Dlq(args) => commands::dlq::run(&cli.server, out, args),
        Command::Source(args) => commands::source::run(&cli.server, out, args),
        Command::Sink(args) => commands::sink::run(&cli.server, out, args),
        Command::Demo(args) => {
            if !demo::run(args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Reconcile(args) => {
            if !commands::reconcile::run(
                &cli.server,
                args,
                cli.output == Some(output::Output::Json),
            )? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Outbox(args) => commands::outbox::run(args),
        Command::Token(args) => commands::token::run(out, args),
        Command::Completions { shell } => {
            // Into memory first: `generate` panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "driftless", &mut script);
            let mut stdout = io::stdout().lock();
            stdout.write_all(&script).context("writing the completion script to stdout")?;
            stdout.flush().context("writing the completion script to stdout")
        }
        Command::Serve(a) => {
            Ok(driftless_server::run_with_overrides(&driftless_server::Overrides {
                config: a.config,
                listen: a.listen,
                data_dir: a.data_dir,
                topics_max: a.topics_max,
                partitions_total_max: a.partitions_total_max,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                insecure_allow_unauthenticated_remote: a.insecure_allow_unauthenticated_remote,
            })?)
        }
    }
}

fn init_logging(filter: Option<&str>) -> anyhow::Result<()> {
    let filter = filter.unwrap_or("info");
    let filter = EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log-level / RUST_LOG filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn bench_log(args: LogArgs) -> anyhow::Result<()> {
    let params = LogBenchParams {
        events: args.events,
        event_bytes: args.event_bytes,
        producers: args.producers,
        batch: args.batch,
        rate: args.rate,
        durability: args.durability,
        dir: args.dir,
        keep: args.keep,
    };
    let report = driftless_bench::run_log_bench(&params).context("log benchmark failed")?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
