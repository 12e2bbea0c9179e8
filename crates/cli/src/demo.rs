//! Glue for `driftless demo`: flags → `driftless_demo::run`, exit status from its verdict.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Flags of `driftless demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the server and the dashboard running after the verdict (until Ctrl-C).
    #[arg(long)]
    keep_running: bool,
    /// Keep the demo's data (SQLite databases, the log, its config) in this directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Address of the API and dashboard (default: a free port; 127.0.0.1:7070 with --keep-running).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Customers the Customers service creates.
    #[arg(long, default_value_t = 500, value_name = "N")]
    customers: usize,
    /// Changes it writes after that.
    #[arg(long, default_value_t = 1_500, value_name = "N")]
    changes: usize,
}

/// Runs the demo; `Ok(false)` when the verdict is FAIL.
pub fn run(args: DemoArgs) -> anyhow::Result<bool> {
    if args.customers < 100 {
        anyhow::bail!("--customers must be at least 100 (the scenario picks customers by index)");
    }
    let listen = args.listen.unwrap_or_else(|| {
        if args.keep_running {
            "127.0.0.1:7070".into()
        } else {
            "127.0.0.1:0".into()
        }
    });
    let options = driftless_demo::DemoOptions {
        dir: args.dir,
        listen,
        keep_running: args.keep_running,
        customers: args.customers,
        changes: args.changes,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = std::io::stdout();
    runtime.block_on(driftless_demo::run(&options, &mut out)).map_err(|e| match e {
        // The usual cause is a second `--keep-running` demo (or another server) on 7070: say
        // how to get past it rather than only that the address is taken.
        driftless_demo::DemoError::Step("listen", _) => anyhow::anyhow!(
            "the demo could not run: {e}; stop what listens there, or give the demo another \
             address with --listen 127.0.0.1:PORT"
        ),
        e => anyhow::Error::new(e).context("the demo could not run"),
    })
}
