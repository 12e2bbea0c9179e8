//! `driftless outbox init`: creates a service's outbox table (Postgres or SQLite) with the
//! columns the relay reads (`id, aggregatetype, aggregateid, type, payload, headers`), or prints
//! the SQL with `--print`.
//!
//! Invariant: `init` is idempotent (`CREATE TABLE IF NOT EXISTS`), so it is safe to run on
//! every deploy.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use driftless_connect::{outbox, sqlite_outbox};

/// `driftless outbox ...`.
#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Create the outbox table (exactly one of --url and --sqlite).
    Init {
        /// Postgres connection URL, `postgres://user:password@host:port/database`.
        #[arg(long, conflicts_with = "sqlite", required_unless_present = "sqlite")]
        url: Option<String>,
        /// SQLite database file.
        #[arg(long)]
        sqlite: Option<PathBuf>,
        /// Table name (`schema.table` for Postgres).
        #[arg(long, default_value = "outbox")]
        table: String,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
}

/// Runs `driftless outbox ...`.
pub fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let OutboxCommand::Init { url, sqlite, table, print } = args.command;
    match (url, sqlite) {
        (Some(url), None) => {
            if print {
                println!("{}", outbox::init_sql_postgres(&table));
                return Ok(());
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(outbox::init_postgres(&url, &table))?;
            eprintln!("outbox table `{table}` is ready");
        }
        (None, Some(path)) => {
            if print {
                println!("{}", sqlite_outbox::init_sql_sqlite(&table));
                return Ok(());
            }
            sqlite_outbox::init_sqlite(&path, &table)?;
            eprintln!("outbox table `{table}` is ready in {}", path.display());
        }
        _ => anyhow::bail!("give exactly one of --url (Postgres) and --sqlite (a file)"),
    }
    Ok(())
}
