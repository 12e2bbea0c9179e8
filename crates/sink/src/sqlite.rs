//! The SQLite table target: version-guarded upserts and deletes in one transaction per batch,
//! with the applied positions written in the same transaction.
//!
//! SQLite is in-process, so rows are written by cached prepared statements one at a time inside
//! the transaction (no round trips to save). The connection runs on the blocking pool.
//!
//! Invariants (as for Postgres): a row is written only if its stored version is older
//! (bytewise) and no tombstone of an equal or newer version exists; a delete leaves a tombstone;
//! `driftless_sink_positions` moves in the same transaction as the rows.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use driftless_core::sql::quote_ident;
use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection, ErrorCode};
use serde_json::Value;

use crate::batch::{collapse, positions, Group, Item, UpsertParts};
use crate::config::OpKind;
use crate::error::{ApplyError, Result, SinkError};
use crate::mapping::Mapper;
use crate::values::sqlite_value;

/// How long a writer waits for another connection's lock before the batch counts as
/// unavailable and is retried.
pub const BUSY_TIMEOUT_MS: u64 = 2_000;

const META_DDL: &str = "
CREATE TABLE IF NOT EXISTS driftless_sink_positions (
    sink TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    applied_offset INTEGER NOT NULL, event_time_ms INTEGER NOT NULL, applied_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sink, topic, partition));
CREATE TABLE IF NOT EXISTS driftless_sink_tombstones (
    tbl TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, deleted_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tbl, key));
";

fn classify(e: &rusqlite::Error) -> ApplyError {
    match e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let msg = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory => ApplyError::Unavailable(msg),
                _ if msg.contains("no such table")
                    || msg.contains("no such column")
                    || msg.contains("has no column") =>
                {
                    ApplyError::Schema { table: "?".into(), reason: msg }
                }
                _ => ApplyError::Rejected(msg),
            }
        }
        other => ApplyError::Rejected(other.to_string()),
    }
}

/// `v` for column `column` of `table` (see `values::sqlite_value`: exact numbers, base64 into
/// `BLOB` columns); a value the column cannot take rejects the event.
fn to_sql(v: &Value, blobs: &Blobs, table: &str, column: &str) -> Result<Sql, ApplyError> {
    let blob = blobs.get(table).and_then(|b| b.get(column)).copied().unwrap_or(false);
    sqlite_value(v, blob).map_err(|e| ApplyError::Rejected(format!("{table}.{column}: {e}")))
}

/// Table → its columns, each with whether its declared type has `BLOB` in it.
type Blobs = HashMap<String, HashMap<String, bool>>;

/// One statement of a batch: its SQL, the parameters of each row, and the tombstones
/// (key text, version) its deletes leave.
struct Statement {
    sql: String,
    table: String,
    params: Vec<Vec<Sql>>,
    tombstones: Vec<(String, String)>,
    /// For upserts with unsent values (`Group::unchanged`) the table has: a query finding the
    /// row under the new key (its key values are each row's first parameters, `key_at`), and
    /// the unsent columns. A row that does not exist yet is refused: SQLite gets no carry-over
    /// from an old key, and a NULL in their place would be a silent lie.
    must_exist: Option<(String, Vec<usize>, Vec<String>)>,
}

/// A SQLite target.
#[derive(Debug, Clone)]
pub struct SqliteSink {
    sink: String,
    path: PathBuf,
    version_column: String,
    conn: Arc<Mutex<Option<Connection>>>,
    /// The `BLOB` columns of every checked table, read by [`SqliteSink::check`].
    blobs: Arc<Mutex<Blobs>>,
}

impl SqliteSink {
    /// A target for sink `sink`; opens the file on first use.
    pub fn new(sink: &str, path: PathBuf, version_column: &str) -> Self {
        Self {
            sink: sink.to_string(),
            path,
            version_column: version_column.to_string(),
            conn: Arc::new(Mutex::new(None)),
            blobs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &SqliteSink) -> Result<T, ApplyError> + Send + 'static,
    ) -> Result<T, ApplyError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = this.conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                let conn = Connection::open(&this.path).map_err(|e| {
                    ApplyError::Unavailable(driftless_core::sql::sqlite_open_failure(
                        &this.path, &e,
                    ))
                })?;
                conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
                    .map_err(|e| classify(&e))?;
                conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
                    .map_err(|e| classify(&e))?;
                *guard = Some(conn);
            }
            match guard.as_mut() {
                Some(conn) => f(conn, &this),
                None => Err(ApplyError::Unavailable("not open".into())),
            }
        })
        .await
        .map_err(|e| ApplyError::Unavailable(format!("target task failed: {e}")))?
    }

    /// Opens the file, creates the metadata tables and checks every mapped table (exists, has the
    /// mapped columns and the version column, and a unique index over exactly the key).
    pub async fn check(&self, mapper: &Mapper) -> Result<()> {
        let tables = mapper.tables();
        let sink = self.sink.clone();
        let outcome = self
            .with(move |conn, this| {
                conn.execute_batch(META_DDL).map_err(|e| classify(&e))?;
                let mut blobs = Blobs::new();
                for (table, (key, columns)) in tables {
                    let schema = |reason: String| ApplyError::Schema { table: table.clone(), reason };
                    let mut have = BTreeSet::new();
                    let mut pk = Vec::new();
                    {
                        let mut stmt = conn
                            .prepare(&format!("PRAGMA table_info({})", quote_ident(&table)))
                            .map_err(|e| classify(&e))?;
                        let mut rows = stmt.query([]).map_err(|e| classify(&e))?;
                        while let Some(r) = rows.next().map_err(|e| classify(&e))? {
                            let name: String = r.get(1).map_err(|e| classify(&e))?;
                            let declared: String = r.get(2).map_err(|e| classify(&e))?;
                            let blob = crate::values::sqlite_blob(&declared);
                            blobs.entry(table.clone()).or_default().insert(name.clone(), blob);
                            let pk_pos: i64 = r.get(5).map_err(|e| classify(&e))?;
                            if pk_pos > 0 {
                                pk.push(name.clone());
                            }
                            have.insert(name);
                        }
                    }
                    if have.is_empty() {
                        return Err(schema(format!(
                            "does not exist in {}; create it with the mapped columns, a TEXT \
                             column `{}` and a primary key on ({})",
                            this.path.display(),
                            this.version_column,
                            key.join(", ")
                        )));
                    }
                    for c in key.iter().chain(&columns) {
                        if !have.contains(c) {
                            return Err(schema(format!("has no column `{c}`, which the mapping writes")));
                        }
                    }
                    if !have.contains(&this.version_column) {
                        return Err(schema(format!(
                            "has no version column `{vc}`; add it with: ALTER TABLE {table} ADD \
                             COLUMN {vc} TEXT",
                            vc = this.version_column
                        )));
                    }
                    let sorted = |mut v: Vec<String>| {
                        v.sort();
                        v
                    };
                    let mut unique = sorted(pk) == sorted(key.clone());
                    if !unique {
                        let mut stmt = conn
                            .prepare(&format!("PRAGMA index_list({})", quote_ident(&table)))
                            .map_err(|e| classify(&e))?;
                        let indexes: Vec<(String, i64)> = stmt
                            .query_map([], |r| Ok((r.get(1)?, r.get(2)?)))
                            .and_then(|rows| rows.collect())
                            .map_err(|e| classify(&e))?;
                        for (name, is_unique) in indexes.into_iter().filter(|(_, u)| *u == 1) {
                            let mut stmt = conn
                                .prepare(&format!("PRAGMA index_info({})", quote_ident(&name)))
                                .map_err(|e| classify(&e))?;
                            let cols: Vec<String> = stmt
                                .query_map([], |r| r.get(2))
                                .and_then(|rows| rows.collect())
                                .map_err(|e| classify(&e))?;
                            unique |= is_unique == 1 && sorted(cols) == sorted(key.clone());
                        }
                    }
                    if !unique {
                        return Err(schema(format!(
                            "needs a primary key or unique index on exactly ({}), the mapping's key",
                            key.join(", ")
                        )));
                    }
                }
                *this.blobs.lock().unwrap_or_else(|e| e.into_inner()) = blobs;
                Ok(())
            })
            .await;
        outcome.map_err(|e| match e {
            ApplyError::Schema { table, reason } => SinkError::Schema { sink, table, reason },
            other => SinkError::Unavailable { sink, reason: other.to_string() },
        })
    }

    fn group_sql(&self, g: &Group<'_>) -> String {
        let t = quote_ident(g.table);
        let vc = quote_ident(&self.version_column);
        match g.op {
            OpKind::Upsert => {
                let UpsertParts { columns: cols, key: keys, sets } =
                    g.upsert_parts(&self.version_column);
                let n = g.columns.len();
                let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
                // ?(n+1) version, ?(n+2) table, ?(n+3) key text.
                format!(
                    "INSERT INTO {t} ({cols}, {vc}) SELECT {params}, ?{v} WHERE NOT EXISTS \
                     (SELECT 1 FROM driftless_sink_tombstones WHERE tbl = ?{tb} AND key = ?{k} \
                      AND version >= ?{v}) \
                     ON CONFLICT ({keys}) DO UPDATE SET {sets} \
                     WHERE {t}.{vc} IS NULL OR {t}.{vc} < excluded.{vc}",
                    params = params.join(", "),
                    v = n + 1,
                    tb = n + 2,
                    k = n + 3,
                )
            }
            OpKind::Delete => format!(
                "DELETE FROM {t} WHERE {on} AND ({vc} IS NULL OR {vc} < ?{v})",
                on = key_where(g),
                v = g.key.len() + 1
            ),
        }
    }

    /// Applies the items in one transaction.
    pub async fn apply(&self, items: &[&Item]) -> Result<(), ApplyError> {
        let mut work: Vec<Statement> = Vec::new();
        let blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for g in collapse(items) {
            let sql = self.group_sql(&g);
            let mut params = Vec::new();
            let mut tombstones = Vec::new();
            for op in &g.ops {
                let mut p: Vec<Sql> = match g.op {
                    OpKind::Upsert => g
                        .columns
                        .iter()
                        .map(|c| to_sql(&op.columns[*c], &blobs, g.table, c))
                        .collect::<Result<_, _>>()?,
                    OpKind::Delete => op
                        .key
                        .iter()
                        .map(|(c, v)| to_sql(v, &blobs, g.table, c))
                        .collect::<Result<_, _>>()?,
                };
                p.push(Sql::Text(op.version.clone()));
                if g.op == OpKind::Upsert {
                    p.push(Sql::Text(g.table.to_string()));
                    p.push(Sql::Text(op.key_text.clone()));
                } else {
                    tombstones.push((op.key_text.clone(), op.version.clone()));
                }
                params.push(p);
            }
            let unsent: Vec<String> = g
                .unchanged
                .iter()
                .filter(|c| blobs.get(g.table).is_some_and(|t| t.contains_key(**c)))
                .map(|c| c.to_string())
                .collect();
            let must_exist = (g.op == OpKind::Upsert && !unsent.is_empty()).then(|| {
                // Key columns are written columns of an upsert.
                let at = (g.key.iter())
                    .map(|k| g.columns.iter().position(|c| c == k).unwrap_or(0))
                    .collect();
                let sql = format!("SELECT 1 FROM {} WHERE {}", quote_ident(g.table), key_where(&g));
                (sql, at, unsent)
            });
            work.push(Statement {
                sql,
                table: g.table.to_string(),
                params,
                tombstones,
                must_exist,
            });
        }
        let pos = positions(items);
        let sink = self.sink.clone();
        self.with(move |conn, _| {
            let now_ms = driftless_core::Clock::now_ms(&driftless_core::SystemClock);
            let tx = conn.transaction().map_err(|e| classify(&e))?;
            for Statement { sql, table, params, tombstones, must_exist } in &work {
                let mut stmt = tx.prepare_cached(sql).map_err(|e| classify(&e))?;
                for p in params {
                    if let Some((exists_sql, at, unsent)) = must_exist {
                        let mut q = tx.prepare_cached(exists_sql).map_err(|e| classify(&e))?;
                        let key = at.iter().map(|&i| &p[i]);
                        if !q.exists(params_from_iter(key)).map_err(|e| classify(&e))? {
                            return Err(ApplyError::Rejected(format!(
                                "{table}: a new row lacks {}: the event did not carry them \
                                 (unchanged TOASTed values of a key change) and SQLite \
                                 projections do not carry them from the old key; set REPLICA \
                                 IDENTITY FULL on the source table so that key changes carry \
                                 every value",
                                unsent.join(", ")
                            )));
                        }
                    }
                    stmt.execute(params_from_iter(p.iter())).map_err(|e| classify(&e))?;
                }
                let mut tomb = tx
                    .prepare_cached(
                        "INSERT INTO driftless_sink_tombstones (tbl, key, version, deleted_at_ms) \
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tbl, key) DO UPDATE SET \
                         version = excluded.version, deleted_at_ms = excluded.deleted_at_ms \
                         WHERE version < excluded.version",
                    )
                    .map_err(|e| classify(&e))?;
                for (key, version) in tombstones {
                    tomb.execute(rusqlite::params![table, key, version, now_ms])
                        .map_err(|e| classify(&e))?;
                }
            }
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO driftless_sink_positions AS p (sink, topic, partition, \
                         applied_offset, event_time_ms, applied_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                         ON CONFLICT (sink, topic, partition) DO UPDATE SET \
                         applied_offset = max(p.applied_offset, excluded.applied_offset), \
                         event_time_ms = max(p.event_time_ms, excluded.event_time_ms), \
                         applied_at_ms = excluded.applied_at_ms",
                    )
                    .map_err(|e| classify(&e))?;
                for ((topic, partition), (offset, time)) in &pos {
                    stmt.execute(rusqlite::params![sink, topic, partition, *offset as i64, time, now_ms])
                        .map_err(|e| classify(&e))?;
                }
            }
            tx.commit().map_err(|e| classify(&e))
        })
        .await
    }
}

/// `"k1" = ?1 AND "k2" = ?2`: `g`'s key columns matched to the first parameters.
fn key_where(g: &Group<'_>) -> String {
    let on: Vec<String> =
        g.key.iter().enumerate().map(|(i, c)| format!("{} = ?{}", quote_ident(c), i + 1)).collect();
    on.join(" AND ")
}

/// Replaces the table name right after `CREATE TABLE` / `ON` in a schema statement from
/// `sqlite_master`, whether it was written quoted or not.
fn rename_in_ddl(sql: &str, from: &str, to: &str) -> String {
    for candidate in
        [format!("\"{from}\""), format!("`{from}`"), format!("[{from}]"), from.to_string()]
    {
        if let Some(i) = sql.find(&candidate) {
            return format!("{}{}{}", &sql[..i], quote_ident(to), &sql[i + candidate.len()..]);
        }
    }
    sql.to_string()
}

impl SqliteSink {
    /// Creates an empty shadow of each table (`<table><suffix>`, from the table's own DDL and
    /// its indexes), dropping a leftover one, and clears the shadow sink's tombstones and
    /// positions.
    pub async fn create_shadows(
        &self,
        tables: &[String],
        suffix: &str,
        shadow_sink: &str,
    ) -> Result<(), ApplyError> {
        let (tables, suffix, shadow_sink) =
            (tables.to_vec(), suffix.to_string(), shadow_sink.to_string());
        self.with(move |conn, _| {
            let tx = conn.transaction().map_err(|e| classify(&e))?;
            for t in &tables {
                let shadow = format!("{t}{suffix}");
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(&shadow)))
                    .map_err(|e| classify(&e))?;
                let ddl: Vec<(String, String, String)> = {
                    let mut stmt = tx
                        .prepare(
                            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ?1 \
                             AND sql IS NOT NULL ORDER BY type DESC",
                        )
                        .map_err(|e| classify(&e))?;
                    let rows = stmt
                        .query_map([t], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .and_then(|rows| rows.collect())
                        .map_err(|e| classify(&e))?;
                    rows
                };
                for (kind, name, sql) in ddl {
                    let sql = if kind == "index" {
                        let renamed = rename_in_ddl(&sql, &name, &format!("{name}{suffix}"));
                        // The table name follows `ON`; rename that occurrence only.
                        match renamed.find(" ON ") {
                            Some(i) => format!(
                                "{} ON {}",
                                &renamed[..i],
                                rename_in_ddl(&renamed[i + 4..], t, &shadow)
                            ),
                            None => continue,
                        }
                    } else {
                        rename_in_ddl(&sql, t, &shadow)
                    };
                    tx.execute_batch(&sql).map_err(|e| classify(&e))?;
                }
                tx.execute("DELETE FROM driftless_sink_tombstones WHERE tbl = ?1", [&shadow])
                    .map_err(|e| classify(&e))?;
            }
            tx.execute("DELETE FROM driftless_sink_positions WHERE sink = ?1", [&shadow_sink])
                .map_err(|e| classify(&e))?;
            tx.commit().map_err(|e| classify(&e))
        })
        .await
    }

    /// Swaps the shadows in, in one transaction (readers see the old tables until it commits).
    pub async fn swap(
        &self,
        tables: &[String],
        suffix: &str,
        live_sink: &str,
        shadow_sink: &str,
    ) -> Result<(), ApplyError> {
        let (tables, suffix) = (tables.to_vec(), suffix.to_string());
        let (live_sink, shadow_sink) = (live_sink.to_string(), shadow_sink.to_string());
        self.with(move |conn, _| {
            let tx = conn.transaction().map_err(|e| classify(&e))?;
            for t in &tables {
                let shadow = format!("{t}{suffix}");
                let old = format!("{t}__old");
                tx.execute_batch(&format!(
                    "ALTER TABLE {live} RENAME TO {old}; ALTER TABLE {sh} RENAME TO {live}; \
                     DROP TABLE {old};",
                    live = quote_ident(t),
                    old = quote_ident(&old),
                    sh = quote_ident(&shadow),
                ))
                .map_err(|e| classify(&e))?;
                tx.execute("DELETE FROM driftless_sink_tombstones WHERE tbl = ?1", [t])
                    .map_err(|e| classify(&e))?;
                tx.execute(
                    "UPDATE driftless_sink_tombstones SET tbl = ?1 WHERE tbl = ?2",
                    [t, &shadow],
                )
                .map_err(|e| classify(&e))?;
            }
            tx.execute("DELETE FROM driftless_sink_positions WHERE sink = ?1", [&live_sink])
                .map_err(|e| classify(&e))?;
            tx.execute(
                "UPDATE driftless_sink_positions SET sink = ?1 WHERE sink = ?2",
                [&live_sink, &shadow_sink],
            )
            .map_err(|e| classify(&e))?;
            tx.commit().map_err(|e| classify(&e))
        })
        .await
    }
}
