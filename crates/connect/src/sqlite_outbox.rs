//! The SQLite outbox relay: polls an outbox table in a service's SQLite database file and relays
//! its rows exactly once (the protocol and the mapping are in [`crate::outbox`]).
//!
//! Invariants and assumptions:
//! - one relay per database file: SQLite has no row locks, so the read takes the first rows by
//!   `seq` and nothing else may relay or delete them meanwhile;
//! - rows are deleted only after their events are durable in the log, in one `BEGIN IMMEDIATE`
//!   transaction, so a crash leaves either every row of a batch or none;
//! - the relay never changes the database's settings: the journal mode (WAL is recommended, so
//!   the relay's reads never block the service's writes) is the service's choice; the relay waits
//!   up to [`SQLITE_BUSY_TIMEOUT_MS`] for a lock and otherwise retries later;
//! - every rusqlite call runs on tokio's blocking pool.
//!
//! The table (from `driftless outbox init`, [`init_sql_sqlite`]):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "outbox" (
//!     seq INTEGER PRIMARY KEY AUTOINCREMENT,
//!     id TEXT NOT NULL UNIQUE,
//!     aggregatetype TEXT NOT NULL,
//!     aggregateid TEXT NOT NULL,
//!     type TEXT NOT NULL,
//!     payload TEXT,   -- JSON
//!     headers TEXT,   -- JSON object
//!     created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
//! );
//! ```
//!
//! `AUTOINCREMENT` matters: without it SQLite may reuse the `seq` of deleted rows, and `seq`
//! order is the relay order. `created_at` may be in any format SQLite's date functions read (it
//! is rendered as RFC 3339 UTC).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use serde_json::Value;

use crate::config::SqliteOutboxConfig;
use crate::error::{ConnectError, Result};
use crate::outbox::{parse_json_column, OutboxRow, OutboxStore, RawBatch, RawRow};
use crate::runtime::SourceContext;

/// How long a statement waits for the service's write lock before failing (as busy, which the
/// supervisor retries), in milliseconds.
pub const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Most ids bound in one statement (old SQLite builds allow 999 parameters).
pub const SQLITE_IDS_PER_STATEMENT_MAX: usize = 500;

/// Quotes a SQLite table name as one identifier (a `.` is part of the name).
pub fn quote_sqlite_table(table: &str) -> String {
    format!("\"{}\"", table.replace('"', "\"\""))
}

/// The SQL that creates the SQLite outbox table `table`.
pub fn init_sql_sqlite(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n    id TEXT \
         NOT NULL UNIQUE,\n    aggregatetype TEXT NOT NULL,\n    aggregateid TEXT NOT NULL,\n    \
         type TEXT NOT NULL,\n    payload TEXT,\n    headers TEXT,\n    created_at TEXT NOT NULL \
         DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))\n);\n",
        quote_sqlite_table(table)
    )
}

/// Creates the SQLite outbox table unless it exists (and the database file unless it exists).
pub fn init_sqlite(path: &Path, table: &str) -> Result<()> {
    let err = |what: String| {
        move |error| ConnectError::Sqlite { source_name: "outbox-init".into(), what, error }
    };
    let conn = Connection::open(path).map_err(err(format!("opening `{}`", path.display())))?;
    conn.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))
        .map_err(err("setting the busy timeout".into()))?;
    conn.execute_batch(&init_sql_sqlite(table))
        .map_err(err(format!("creating the outbox table `{table}`")))
}

/// A SQLite outbox.
#[doc(hidden)]
pub struct SqliteStore {
    source_name: String,
    conn: Arc<Mutex<Connection>>,
    /// The quoted table name.
    table: String,
}

impl SqliteStore {
    /// Opens the database (which must exist) and checks the outbox table.
    pub async fn open(source_name: &str, path: &Path, table: &str) -> Result<Self> {
        let name = source_name.to_string();
        let path = path.to_path_buf();
        let table_raw = table.to_string();
        let conn = blocking(source_name, move || {
            let err = |what: String| {
                let name = name.clone();
                move |error| ConnectError::Sqlite { source_name: name, what, error }
            };
            // No CREATE flag: a mistyped path must fail, not relay from a new empty file.
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|error| ConnectError::Config {
                source_name: name.clone(),
                field: "path".into(),
                reason: driftless_core::sql::sqlite_open_failure(&path, &error),
            })?;
            conn.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))
                .map_err(err("setting the busy timeout".into()))?;
            let tables: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1 \
                     COLLATE NOCASE",
                    [&table_raw],
                    |r| r.get(0),
                )
                .map_err(err("looking up the outbox table".into()))?;
            let bad_table = |reason: String| ConnectError::Table {
                source_name: name.clone(),
                table: table_raw.clone(),
                reason,
            };
            if tables == 0 {
                return Err(bad_table(format!(
                    "the outbox table does not exist in `{}`; create it with `driftless outbox \
                     init` (or run the SQL it prints in the service's database)",
                    path.display()
                )));
            }
            conn.prepare(&read_sql(&quote_sqlite_table(&table_raw))).map_err(|e| {
                bad_table(format!(
                    "the outbox table does not have the expected columns ({e}); compare it with \
                     the SQL `driftless outbox init` prints"
                ))
            })?;
            Ok(conn)
        })
        .await?;
        Ok(Self {
            source_name: source_name.into(),
            conn: Arc::new(Mutex::new(conn)),
            table: quote_sqlite_table(table),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Connection, &str) -> Result<T, SqlOrRow> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        let name = self.source_name.clone();
        blocking(&self.source_name, move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut conn, &name).map_err(|e| match e {
                SqlOrRow::Sql(error) => {
                    ConnectError::Sqlite { source_name: name.clone(), what: what.into(), error }
                }
                SqlOrRow::Row(e) => e,
            })
        })
        .await
    }
}

/// A rusqlite failure (named by the caller) or an already-named row problem.
enum SqlOrRow {
    Sql(rusqlite::Error),
    Row(ConnectError),
}

impl From<rusqlite::Error> for SqlOrRow {
    fn from(e: rusqlite::Error) -> Self {
        SqlOrRow::Sql(e)
    }
}

async fn blocking<T: Send + 'static>(
    source_name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| {
        Err(ConnectError::State {
            source_name: source_name.into(),
            reason: format!("an SQLite task ended abnormally: {join}"),
        })
    })
}

fn read_sql(table: &str) -> String {
    format!(
        "SELECT seq, id, aggregatetype, aggregateid, type, payload, headers, \
         coalesce(strftime('%Y-%m-%dT%H:%M:%fZ', created_at), created_at), \
         CAST((julianday(created_at) - 2440587.5) * 86400000.0 AS INTEGER) \
         FROM {table} ORDER BY seq LIMIT ?1"
    )
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn row_error(source_name: &str, row: &str, reason: String) -> SqlOrRow {
    SqlOrRow::Row(ConnectError::OutboxRow {
        source_name: source_name.into(),
        row: row.into(),
        reason,
    })
}

/// A TEXT column; numbers are accepted as their text (SQLite's type affinity would store them so).
fn text(
    r: &rusqlite::Row<'_>,
    i: usize,
    column: &str,
    source_name: &str,
    row: &str,
) -> Result<String, SqlOrRow> {
    match r.get_ref(i)? {
        ValueRef::Text(b) => String::from_utf8(b.to_vec())
            .map_err(|_| row_error(source_name, row, format!("{column} is not valid UTF-8 text"))),
        ValueRef::Integer(n) => Ok(n.to_string()),
        ValueRef::Real(f) => Ok(f.to_string()),
        ValueRef::Null => Err(row_error(source_name, row, format!("{column} is NULL"))),
        ValueRef::Blob(_) => {
            Err(row_error(source_name, row, format!("{column} is a BLOB; store text")))
        }
    }
}

/// A JSON column stored as TEXT.
fn json(
    r: &rusqlite::Row<'_>,
    i: usize,
    column: &str,
    source_name: &str,
    row: &str,
) -> Result<Option<Value>, SqlOrRow> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(n) => Ok(Some(Value::from(n))),
        ValueRef::Real(f) => Ok(serde_json::Number::from_f64(f).map(Value::Number)),
        ValueRef::Text(b) => {
            let text = std::str::from_utf8(b).map_err(|_| {
                row_error(source_name, row, format!("{column} is not valid UTF-8 text"))
            })?;
            parse_json_column(source_name, row, column, Some(text)).map_err(SqlOrRow::Row)
        }
        ValueRef::Blob(_) => {
            Err(row_error(source_name, row, format!("{column} is a BLOB; store JSON text")))
        }
    }
}

fn decode(r: &rusqlite::Row<'_>, source_name: &str) -> Result<RawRow, SqlOrRow> {
    let seq: i64 = r.get(0)?;
    let id = text(r, 1, "id", source_name, &format!("seq {seq}"))?;
    let row = OutboxRow {
        aggregatetype: text(r, 2, "aggregatetype", source_name, &id)?,
        aggregateid: text(r, 3, "aggregateid", source_name, &id)?,
        ty: text(r, 4, "type", source_name, &id)?,
        payload: json(r, 5, "payload", source_name, &id)?,
        headers: json(r, 6, "headers", source_name, &id)?,
        created_at: match r.get_ref(7)? {
            ValueRef::Text(b) => std::str::from_utf8(b).ok().map(str::to_string),
            _ => None,
        },
        id,
    };
    let created_ms = match r.get_ref(8)? {
        ValueRef::Integer(ms) => Some(ms),
        _ => None,
    };
    Ok(RawRow { row, created_ms })
}

impl OutboxStore for SqliteStore {
    async fn read(&mut self, rows_max: u32) -> Result<RawBatch> {
        let sql = read_sql(&self.table);
        self.with_conn("reading the outbox", move |conn, name| {
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([rows_max])?;
            let mut batch = RawBatch::default();
            while let Some(r) = rows.next()? {
                batch.rows_read += 1;
                match decode(r, name) {
                    Ok(row) => batch.rows.push(row),
                    Err(SqlOrRow::Row(e)) => {
                        batch.error = Some(e);
                        break;
                    }
                    Err(SqlOrRow::Sql(e)) => return Err(SqlOrRow::Sql(e)),
                }
            }
            Ok(batch)
        })
        .await
    }

    async fn delete(&mut self, ids: Vec<String>) -> Result<()> {
        let table = self.table.clone();
        self.with_conn("deleting relayed outbox rows", move |conn, _| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for chunk in ids.chunks(SQLITE_IDS_PER_STATEMENT_MAX) {
                let sql =
                    format!("DELETE FROM {table} WHERE id IN ({})", placeholders(chunk.len()));
                tx.execute(&sql, rusqlite::params_from_iter(chunk))?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn release(&mut self) -> Result<()> {
        // Reads run outside any transaction: nothing to end.
        Ok(())
    }

    async fn find(&mut self, ids: Vec<String>) -> Result<Vec<(String, String)>> {
        let table = self.table.clone();
        self.with_conn("looking up outbox rows", move |conn, name| {
            let mut found = Vec::new();
            for chunk in ids.chunks(SQLITE_IDS_PER_STATEMENT_MAX) {
                let sql = format!(
                    "SELECT id, aggregatetype FROM {table} WHERE id IN ({})",
                    placeholders(chunk.len())
                );
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(chunk))?;
                while let Some(r) = rows.next()? {
                    let id = text(r, 0, "id", name, "?")?;
                    let aggregatetype = text(r, 1, "aggregatetype", name, &id)?;
                    found.push((id, aggregatetype));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn backlog_rows(&mut self) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}", self.table);
        self.with_conn("counting outbox rows", move |conn, _| {
            Ok(conn.prepare(&sql)?.query_row([], |r| r.get(0))?)
        })
        .await
    }
}

/// Runs a SQLite outbox source until shutdown or a failure.
pub async fn run(name: &str, config: &SqliteOutboxConfig, ctx: &mut SourceContext) -> Result<()> {
    let mut store = SqliteStore::open(name, &config.path, &config.outbox.table).await?;
    crate::outbox::relay_loop(
        &mut store,
        name,
        &config.outbox,
        ctx,
        config.poll_interval_ms,
        config.batch_rows_max,
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn init_sql_creates_a_usable_table_and_quotes_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.db");
        init_sqlite(&path, "my \"outbox\"").unwrap();
        init_sqlite(&path, "my \"outbox\"").unwrap(); // idempotent
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO \"my \"\"outbox\"\"\" (id, aggregatetype, aggregateid, type) \
             VALUES ('a', 't', 'k', 'x')",
            [],
        )
        .unwrap();
        let created: String = conn
            .query_row("SELECT created_at FROM \"my \"\"outbox\"\"\"", [], |r| r.get(0))
            .unwrap();
        assert!(driftless_core::is_rfc3339(&created), "{created}");
        assert!(conn.prepare(&read_sql(&quote_sqlite_table("my \"outbox\""))).is_ok());
    }
}
