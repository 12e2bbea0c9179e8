//! Postgres plumbing shared by CDC and the polling outbox: connection settings from a URL, the
//! control-plane client, identifier quoting and LSN formatting.
//!
//! Invariant: passwords never appear in errors or logs — errors name the host, port and
//! database, never the URL.

pub mod cdc;
pub mod snapshot;
pub mod types;

use crate::error::{ConnectError, Result};

/// Where a source connects, parsed from its `url` (with libpq's `sslmode` and `sslrootcert`,
/// see `driftless_pgtls`). Its `Debug` shows neither the URL nor the password.
#[derive(Clone)]
pub struct PgTarget {
    /// The connection with its TLS policy (the replication stream uses it too).
    pub pg: driftless_pgtls::PgConnect,
    /// The driver's configuration (control-plane connections).
    pub config: tokio_postgres::Config,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (empty when none).
    pub password: String,
    /// Database.
    pub database: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("target", &self.describe())
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Parses `postgres://user:password@host:port/database` (or a key-value connection string).
    pub fn parse(source_name: &str, url: &str) -> Result<Self> {
        let bad = |reason: String| ConnectError::Config {
            source_name: source_name.to_string(),
            field: "url".into(),
            reason,
        };
        let pg = driftless_pgtls::PgConnect::parse(url).map_err(|e| {
            bad(format!("{e}; expected postgres://user@host:port/db[?sslmode=verify-full&sslrootcert=ca.pem]"))
        })?;
        Ok(Self {
            config: pg.config.clone(),
            host: pg.host.clone(),
            port: pg.port,
            user: pg.user.clone(),
            password: pg.password.clone(),
            database: pg.database.clone(),
            pg,
        })
    }

    /// `host:port/database`, for messages (no credentials).
    pub fn describe(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// Opens a control-plane connection; its driver task ends when the client is dropped.
    pub async fn connect(&self, source_name: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) =
            self.config.connect(self.pg.tls.clone()).await.map_err(|error| {
                ConnectError::Connect {
                    source_name: source_name.to_string(),
                    reason: self.pg.connect_failure(&error),
                    error,
                }
            })?;
        let name = source_name.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(source = %name, error = %e, "control connection ended");
            }
        });
        Ok(client)
    }
}

/// Wraps a driver error with the source and what was being done.
pub(crate) fn pg_error(
    source_name: &str,
    what: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> ConnectError + '_ {
    let what = what.into();
    move |error| ConnectError::Postgres { source_name: source_name.to_string(), what, error }
}

pub use driftless_core::sql::{quote_ident, quote_literal, quote_table};

/// Formats an LSN the way Postgres does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN written the way Postgres does.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
        return None;
    }
    Some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        for lsn in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/2/3"), None);
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quote_table("public.we\"ird"), "\"public\".\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn url_without_password_parses() {
        let t = PgTarget::parse("s", "postgres://postgres@127.0.0.1:5433/app").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.user.as_str()), ("127.0.0.1", 5433, "postgres"));
        assert_eq!((t.password.as_str(), t.database.as_str()), ("", "app"));
        assert!(PgTarget::parse("s", "mysql://x").is_err());
    }
}
