//! `driftless token create|list|revoke`: API tokens in the tokens file, with or without a
//! running server (the server reloads the file within a second of a change).
//!
//! Invariants: `create` prints the token on stdout, once, and nothing else there (so
//! `TOKEN=$(driftless token create ...)` captures exactly it); its confirmation goes to stderr;
//! `list` prints a table, or one JSON object per token, on stdout, never a secret or its hash; `revoke`
//! confirms on stderr. The file is changed only through `driftless_auth::TokenStore` (locked,
//! atomic, mode 0600).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use driftless_auth::{OsRandom, TokenStore};
use serde::Serialize;

use crate::output::{time_ms, Output, Table};

/// Flags of `driftless token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The tokens file (the server's `[auth] tokens_file`). Without it: the one the --config
    /// file names, else `<data-dir>/tokens.json`.
    #[arg(long, global = true, env = "DRIFTLESS_TOKENS_FILE", value_name = "FILE")]
    tokens_file: Option<PathBuf>,

    /// The server's config file, whose `[auth] tokens_file` (or `[server] data_dir`) locates
    /// the tokens file.
    #[arg(long, global = true, env = "DRIFTLESS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// The server's data directory (default ./driftless-data), whose `tokens.json` is used
    /// unless --tokens-file or the config's `[auth] tokens_file` says otherwise.
    #[arg(long, global = true, env = "DRIFTLESS_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once) on stdout.
    Create {
        /// The principal the token acts as (topic ownership and the audit trail name it):
        /// 1 to 128 characters from [A-Za-z0-9._@-].
        #[arg(long, value_name = "NAME")]
        name: String,
        /// A grant, `<operation>:<kind>:<pattern>` (e.g. `produce:topic:crm.*`,
        /// `consume:group:sink-*`, `admin:*:*`); repeat for more.
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Days until the token stops working (1 to 3650); it never expires without it.
        #[arg(long, value_name = "DAYS")]
        expires_in_days: Option<u64>,
    },
    /// List the tokens (ids, names, scopes, dates; never secrets): a table, or one JSON object
    /// per line.
    List,
    /// Revoke the token with this id, or every token with this name.
    Revoke {
        /// A token id (as `list` shows) or a name.
        id_or_name: String,
    },
}

/// One line of `token list`.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    id: &'a str,
    name: &'a str,
    scopes: &'a [String],
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    expired: bool,
}

fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

/// The tokens file: `--tokens-file`, else the config's (with `--data-dir` overriding its data
/// directory, as for `serve`), else `<data-dir>/tokens.json`.
fn tokens_path(args: &TokenArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.tokens_file {
        return Ok(path.clone());
    }
    let mut config = match &args.config {
        Some(path) => driftless_server::ServerConfig::load(path)?,
        None => driftless_server::ServerConfig::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.server.data_dir.clone_from(dir);
    }
    Ok(config.auth.tokens_path(&config.server.data_dir))
}

/// Runs `driftless token ...`.
pub fn run(output: Output, args: TokenArgs) -> anyhow::Result<()> {
    let path = tokens_path(&args)?;
    let store = TokenStore::new(&path);
    match args.command {
        TokenCommand::Create { name, scopes, expires_in_days } => {
            let created = store.create(&name, &scopes, expires_in_days, now_ms(), &mut OsRandom)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", created.token.text).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
            let expiry = match created.record.expires_at_ms {
                Some(_) => format!("expires in {} days", expires_in_days.unwrap_or_default()),
                None => "never expires".to_string(),
            };
            eprintln!(
                "created token {} for `{name}` ({}; scopes: {}) in {}. This is the only time \
                 it is shown: store it now (the file keeps only its hash).",
                created.record.id,
                expiry,
                scopes.join(", "),
                path.display()
            );
        }
        TokenCommand::List if !output.is_json() => {
            let mut out = std::io::stdout().lock();
            let now = now_ms();
            let tokens = store.list()?;
            if tokens.is_empty() {
                writeln!(out, "no tokens in {}", path.display()).context("writing to stdout")?;
            } else {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "SCOPES",
                    "CREATED (UTC)",
                    "EXPIRES (UTC)",
                    "STATUS",
                ]);
                for t in &tokens {
                    table.row(vec![
                        t.id.clone(),
                        t.name.clone(),
                        t.scopes.join(" "),
                        time_ms(t.created_at_ms),
                        t.expires_at_ms.map_or_else(|| "never".to_string(), time_ms),
                        if t.expired(now) { "expired" } else { "valid" }.to_string(),
                    ]);
                }
                table.write(&mut out)?;
            }
            out.flush().context("writing to stdout")?;
        }
        TokenCommand::List => {
            let mut out = std::io::stdout().lock();
            let now = now_ms();
            for t in store.list()? {
                let line = Listed {
                    id: &t.id,
                    name: &t.name,
                    scopes: &t.scopes,
                    created_at_ms: t.created_at_ms,
                    expires_at_ms: t.expires_at_ms,
                    expired: t.expired(now),
                };
                super::print_line(&mut out, &line)?;
            }
            out.flush().context("writing to stdout")?;
        }
        TokenCommand::Revoke { id_or_name } => {
            for t in store.revoke(&id_or_name)? {
                eprintln!("revoked token {} (`{}`)", t.id, t.name);
            }
        }
    }
    Ok(())
}
