//! One side's database: the queries a reconciliation run needs, for Postgres and SQLite.
//!
//! Every query computes digests inside the database; only [`Conn::rows_in`] and
//! [`Conn::rows_for_keys`] (rows as key and hash), [`Conn::column_hashes`] (a stale row's column
//! hashes) and [`Conn::rows_json`] (authoritative rows to repair) return rows, and callers count
//! them as shipped.
//!
//! A value's text is what its database prints for it: Postgres's output function, under the
//! session settings the sources read values with (`PG_SESSION`, pinned on every connection, so
//! that neither database's defaults make two different values print alike or two equal ones
//! differ); SQLite's `CAST(… AS TEXT)`, except that a BLOB prints as a `bytea` does (`\x…`) and
//! an integral REAL as the integer it equals (`20.0` and `20` are one number, stored either way
//! by the column's affinity).
//!
//! Invariants: expressions from the config are the operator's own SQL over their own tables and
//! are used as given; table and generated names are quoted; SQLite gets the digest functions
//! (`drift_bucket`, `drift_h1`, `drift_h2`) registered on every connection it opens.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use driftless_core::sql::quote_table;
use rusqlite::functions::FunctionFlags;
use serde_json::Value;
use tokio_postgres::Client;

use crate::config::{Db, Side};
use crate::digest::{bucket, halves, pg_bucket_sql, pg_half_sql, BucketDigest};

/// A key's text and its row's two hash halves.
pub type RowHashes = BTreeMap<String, (i64, i64)>;

/// Most keys per `IN (…)` list sent to SQLite.
const KEYS_PER_QUERY_MAX: usize = 500;

/// A connection to one side.
pub enum Conn {
    /// Postgres.
    Pg(Client),
    /// SQLite, on the blocking pool.
    Lite(Arc<Mutex<rusqlite::Connection>>),
    /// A topic, folded through the sink's mapping (see [`crate::topic`]).
    Folded(Arc<crate::topic::Folded>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Pg(_) => "Conn::Pg",
            Conn::Lite(_) => "Conn::Lite",
            Conn::Folded(_) => "Conn::Folded",
        })
    }
}

// Postgres: every hashing subquery ends in `OFFSET 0`, which keeps the planner from pulling it
// up into its parent — pulled up, each `get_byte(sha256(…))` would hash the row again (eleven
// hashes per row instead of two; five times slower on a million rows).

/// What a Postgres connection renders values with, pinned on every connection: the settings the
/// sources read values with (see `ARCHITECTURE.md`), so both sides' text is a function of the
/// value alone. A database's own defaults could otherwise hide drift (`extra_float_digits = 0`
/// prints both neighbours of a double as the same 15 digits) or invent it (`bytea_output =
/// 'escape'` on one side only, another `TimeZone` for `timestamptz`).
const PG_SESSION: &str = "SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'";

/// The text of expression `e`, as SQL: Postgres's output function; in SQLite `CAST(… AS TEXT)`,
/// except for a `BLOB`, which is `\x` and its lowercase hex as a Postgres `bytea` prints (its
/// bytes are no text, and not always UTF-8), and a `REAL`, see [`sqlite_real_text_sql`].
fn text_sql(e: &str, pg: bool) -> String {
    if pg {
        format!("({e})::text")
    } else {
        format!(
            "CASE typeof({e}) WHEN 'blob' THEN '\\x' || lower(hex({e})) WHEN 'real' THEN {real} \
             ELSE CAST(({e}) AS TEXT) END",
            real = sqlite_real_text_sql(e)
        )
    }
}

/// The text of SQLite `REAL` expression `e`: an integral value (below 2^53, where a double holds
/// every integer) prints as the integer it equals, anything else as `CAST(… AS TEXT)`.
///
/// Why: SQLite stores one number as `INTEGER` or `REAL` by the column's affinity (a `NUMERIC`
/// column turns `20.0` into `20`, a `REAL` column `20` into `20.0`), and `CAST` prints them
/// `20` and `20.0`. Without this, a source and a projection holding the same number in columns
/// of different affinity showed the integral rows as stale on every run, and no correction
/// could change it (the sink writes the same number, the column stores it its own way).
pub fn sqlite_real_text_sql(e: &str) -> String {
    format!(
        "CASE WHEN abs({e}) < 9007199254740992.0 AND ({e}) = CAST(({e}) AS INTEGER) \
         THEN CAST(CAST(({e}) AS INTEGER) AS TEXT) ELSE CAST(({e}) AS TEXT) END"
    )
}

/// The text of each compared column (NULL as the marker), as SQL.
fn column_texts(side: &Side, pg: bool) -> Vec<String> {
    let null = if pg { "chr(30)" } else { "char(30)" };
    side.columns.iter().map(|c| format!("coalesce({}, {null})", text_sql(c, pg))).collect()
}

/// The text of a row's key (`key`) and of the whole row (`row`), as SQL.
fn texts(side: &Side, pg: bool) -> (String, String) {
    let sep = if pg { " || chr(31) || " } else { " || char(31) || " };
    let key = side.key.iter().map(|k| text_sql(k, pg)).collect::<Vec<_>>().join(sep);
    let mut row = key.clone();
    for c in column_texts(side, pg) {
        row.push_str(sep);
        row.push_str(&c);
    }
    (key, row)
}

/// The last row text hashed and its halves.
type LastDigest = Option<(String, (i64, i64))>;

fn register_digests(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("drift_bucket", 2, flags, |ctx| {
        let key: String = ctx.get(0)?;
        let n: i64 = ctx.get(1)?;
        Ok(bucket(&key, n))
    })?;
    // A BLOB in a correction's JSON: base64, as events carry bytes (SQLite's JSON has no BLOB).
    conn.create_scalar_function("drift_base64", 1, flags, |ctx| {
        let bytes: Vec<u8> = ctx.get(0)?;
        Ok(base64(&bytes))
    })?;
    // drift_h2 follows drift_h1 on the same row: remember the last digest to hash once.
    let last: Arc<Mutex<LastDigest>> = Arc::new(Mutex::new(None));
    for (name, second) in [("drift_h1", false), ("drift_h2", true)] {
        let last = Arc::clone(&last);
        conn.create_scalar_function(name, 1, flags, move |ctx| {
            let row: String = ctx.get(0)?;
            let mut cache = last.lock().unwrap_or_else(|e| e.into_inner());
            let h = match cache.as_ref() {
                Some((r, h)) if *r == row => *h,
                _ => {
                    let h = halves(&row);
                    *cache = Some((row, h));
                    h
                }
            };
            Ok(if second { h.1 } else { h.0 })
        })?;
    }
    Ok(())
}

/// Standard base64 with padding (RFC 4648), as the sinks read a BLOB column's value.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn lite_err(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Conn {
    /// Connects to `db`.
    pub async fn open(db: &Db) -> Result<Conn, String> {
        match db {
            Db::Postgres(url) => {
                // sslmode/sslrootcert as libpq (driftless_pgtls); errors carry the URL without
                // its password.
                let pg =
                    driftless_pgtls::PgConnect::parse(url.expose()).map_err(|e| e.to_string())?;
                let (client, conn) = pg.connect().await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "reconcile connection ended");
                    }
                });
                client.batch_execute(PG_SESSION).await.map_err(pg_err)?;
                Ok(Conn::Pg(client))
            }
            Db::Sqlite(path) => {
                let path = path.clone();
                let conn = tokio::task::spawn_blocking(move || open_sqlite(&path))
                    .await
                    .map_err(|e| e.to_string())??;
                Ok(Conn::Lite(Arc::new(Mutex::new(conn))))
            }
            Db::Topic(t) => Err(format!("topic `{t}` is folded by the run, not opened")),
        }
    }

    async fn lite<T: Send + 'static>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&c).map_err(lite_err)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Rows in the side's table.
    pub async fn count(&self, side: &Side) -> Result<i64, String> {
        let sql = format!("SELECT count(*) FROM {}", quote_table(&side.table));
        match self {
            Conn::Pg(c) => c.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0)).map_err(pg_err),
            Conn::Lite(c) => Self::lite(c, move |c| c.query_row(&sql, [], |r| r.get(0))).await,
            Conn::Folded(f) => Ok(f.len() as i64),
        }
    }

    /// Every bucket's digest.
    pub async fn buckets(
        &self,
        side: &Side,
        n: i64,
    ) -> Result<BTreeMap<i64, BucketDigest>, String> {
        match self {
            Conn::Folded(f) => Ok(f.buckets(n)),
            Conn::Pg(c) => {
                let (key, row) = texts(side, true);
                let sql = format!(
                    "SELECT b, count(*)::bigint, sum(h1)::bigint, sum(h2)::bigint FROM (\
                       SELECT {b} AS b, {h1} AS h1, {h2} AS h2 FROM (\
                         SELECT sha256(convert_to(k, 'UTF8')) AS kh, sha256(convert_to(r, 'UTF8')) AS rh \
                         FROM (SELECT {key} AS k, {row} AS r FROM {t}) s OFFSET 0) s2) s3 GROUP BY b",
                    b = pg_bucket_sql("kh", &n.to_string()),
                    h1 = pg_half_sql("rh", 0),
                    h2 = pg_half_sql("rh", 4),
                    t = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[]).await.map_err(pg_err)?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let b: i32 = r.get(0);
                        (i64::from(b), BucketDigest { rows: r.get(1), h1: r.get(2), h2: r.get(3) })
                    })
                    .collect())
            }
            Conn::Lite(c) => {
                let (key, row) = texts(side, false);
                let sql = format!(
                    "SELECT drift_bucket(k, {n}) AS b, count(*), sum(drift_h1(r)), sum(drift_h2(r)) \
                     FROM (SELECT {key} AS k, {row} AS r FROM {t}) GROUP BY b",
                    t = quote_table(&side.table),
                );
                Self::lite(c, move |c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt.query_map([], |r| {
                        Ok((
                            r.get(0)?,
                            BucketDigest { rows: r.get(1)?, h1: r.get(2)?, h2: r.get(3)? },
                        ))
                    })?;
                    rows.collect()
                })
                .await
            }
        }
    }

    /// The keys and row hashes of the rows in `buckets` (these rows are shipped).
    pub async fn rows_in(&self, side: &Side, n: i64, buckets: &[i64]) -> Result<RowHashes, String> {
        if buckets.is_empty() {
            return Ok(RowHashes::new());
        }
        match self {
            Conn::Folded(f) => Ok(f.rows_in(n, buckets)),
            Conn::Pg(c) => {
                let (key, row) = texts(side, true);
                let sql = format!(
                    "SELECT k, {h1}, {h2} FROM (\
                       SELECT k, sha256(convert_to(k, 'UTF8')) AS kh, sha256(convert_to(r, 'UTF8')) AS rh \
                       FROM (SELECT {key} AS k, {row} AS r FROM {t}) s OFFSET 0) s2 WHERE {b} = ANY($1::int[])",
                    b = pg_bucket_sql("kh", &n.to_string()),
                    h1 = pg_half_sql("rh", 0),
                    h2 = pg_half_sql("rh", 4),
                    t = quote_table(&side.table),
                );
                let ids: Vec<i32> = buckets.iter().map(|b| *b as i32).collect();
                let rows = c.query(&sql, &[&ids]).await.map_err(pg_err)?;
                Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
            }
            Conn::Lite(c) => {
                let (key, row) = texts(side, false);
                let list = buckets.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                let sql = format!(
                    "SELECT k, drift_h1(r), drift_h2(r) FROM (SELECT {key} AS k, {row} AS r FROM {t}) \
                     WHERE drift_bucket(k, {n}) IN ({list})",
                    t = quote_table(&side.table),
                );
                Self::lite(c, move |c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
                    rows.collect()
                })
                .await
            }
        }
    }

    /// The keys and row hashes of the rows with these keys (these rows are shipped).
    pub async fn rows_for_keys(&self, side: &Side, keys: &[String]) -> Result<RowHashes, String> {
        if keys.is_empty() {
            return Ok(RowHashes::new());
        }
        match self {
            Conn::Folded(f) => Ok(f.rows_for_keys(keys)),
            Conn::Pg(c) => {
                let (key, row) = texts(side, true);
                let sql = format!(
                    "SELECT k, {h1}, {h2} FROM (SELECT k, sha256(convert_to(r, 'UTF8')) AS rh \
                       FROM (SELECT {key} AS k, {row} AS r FROM {t}) s WHERE k = ANY($1::text[]) OFFSET 0) s2",
                    h1 = pg_half_sql("rh", 0),
                    h2 = pg_half_sql("rh", 4),
                    t = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[&keys]).await.map_err(pg_err)?;
                Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
            }
            Conn::Lite(c) => {
                let (key, row) = texts(side, false);
                let table = quote_table(&side.table);
                let select = format!(
                    "SELECT k, drift_h1(r), drift_h2(r) FROM (SELECT {key} AS k, {row} AS r FROM {table})"
                );
                Self::lite_by_keys(c, keys, select, |r| Ok((r.get(1)?, r.get(2)?))).await
            }
        }
    }

    /// Runs `select` (whose first column is the key text `k`) for `keys`, a bounded `IN` list
    /// at a time, and maps each row's other columns with `value`.
    async fn lite_by_keys<T: Send + 'static>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        keys: &[String],
        select: String,
        value: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<BTreeMap<String, T>, String> {
        let keys = keys.to_vec();
        Self::lite(conn, move |c| {
            let mut out = BTreeMap::new();
            for chunk in keys.chunks(KEYS_PER_QUERY_MAX) {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut stmt = c.prepare(&format!("{select} WHERE k IN ({marks})"))?;
                let rows = stmt.query_map(rusqlite::params_from_iter(chunk.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, value(r)?))
                })?;
                for row in rows {
                    let (k, v) = row?;
                    out.insert(k, v);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Each compared column's hash (the first half of the SHA-256 of its text, as in a row's
    /// digest) in the rows with these keys: which columns of a stale key differ, without
    /// shipping their values (these rows are shipped, as hashes).
    pub async fn column_hashes(
        &self,
        side: &Side,
        keys: &[String],
    ) -> Result<BTreeMap<String, Vec<i64>>, String> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        match self {
            Conn::Folded(f) => Ok(f.column_hashes(keys)),
            Conn::Pg(c) => {
                let (key, _) = texts(side, true);
                let cols = column_texts(side, true);
                let named: String =
                    cols.iter().enumerate().map(|(i, c)| format!(", {c} AS c{i}")).collect();
                let sums: String = (0..cols.len())
                    .map(|i| format!(", sha256(convert_to(c{i}, 'UTF8')) AS h{i}"))
                    .collect();
                let hashes: Vec<String> =
                    (0..cols.len()).map(|i| pg_half_sql(&format!("h{i}"), 0)).collect();
                // `OFFSET 0`: each column is hashed once (see `texts`' note).
                let sql = format!(
                    "SELECT k, ARRAY[{hashes}]::bigint[] FROM (SELECT k{sums} FROM \
                       (SELECT {key} AS k{named} FROM {t}) s WHERE k = ANY($1::text[]) OFFSET 0) s2",
                    hashes = hashes.join(", "),
                    t = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[&keys]).await.map_err(pg_err)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            Conn::Lite(c) => {
                let (key, _) = texts(side, false);
                let cols = column_texts(side, false);
                let n = cols.len();
                let named: String =
                    cols.iter().enumerate().map(|(i, c)| format!(", {c} AS c{i}")).collect();
                let hashes: String = (0..n).map(|i| format!(", drift_h1(c{i})")).collect();
                let table = quote_table(&side.table);
                let select =
                    format!("SELECT k{hashes} FROM (SELECT {key} AS k{named} FROM {table})");
                Self::lite_by_keys(c, keys, select, move |r| (1..=n).map(|i| r.get(i)).collect())
                    .await
            }
        }
    }

    /// Each compared column's text (`None`: NULL) in the rows with these keys: the values a
    /// report shows for its first stale keys (these rows are shipped).
    pub async fn value_texts(
        &self,
        side: &Side,
        keys: &[String],
    ) -> Result<BTreeMap<String, Vec<Option<String>>>, String> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        match self {
            Conn::Folded(_) => Ok(BTreeMap::new()),
            Conn::Pg(c) => {
                let (key, _) = texts(side, true);
                let cols: Vec<String> = side.columns.iter().map(|c| text_sql(c, true)).collect();
                let sql = format!(
                    "SELECT k, ARRAY[{cols}]::text[] FROM (SELECT {key} AS k, * FROM {t}) s \
                     WHERE k = ANY($1::text[])",
                    cols = if cols.is_empty() { "NULL".into() } else { cols.join(", ") },
                    t = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[&keys]).await.map_err(pg_err)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            Conn::Lite(c) => {
                let (key, _) = texts(side, false);
                let n = side.columns.len();
                let cols: String =
                    side.columns.iter().map(|c| format!(", {}", text_sql(c, false))).collect();
                let table = quote_table(&side.table);
                let select = format!("SELECT k{cols} FROM (SELECT {key} AS k, * FROM {table})");
                Self::lite_by_keys(c, keys, select, move |r| (1..=n).map(|i| r.get(i)).collect())
                    .await
            }
        }
    }

    /// The source rows of `keys`, each as a JSON object of all its columns (to repair them).
    pub async fn rows_json(
        &self,
        side: &Side,
        keys: &[String],
    ) -> Result<BTreeMap<String, Value>, String> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        match self {
            Conn::Folded(_) => Err("a topic source re-emits its events, not rows".into()),
            Conn::Pg(c) => {
                let (key, _) = texts(side, true);
                // The row's alias is no column name (`to_jsonb(t)` of a table with a column
                // `t` is that column's value, not the row).
                let sql = format!(
                    "SELECT k, j::text FROM (SELECT {key} AS k, to_jsonb(driftless_row) AS j \
                     FROM {tbl} driftless_row) s WHERE k = ANY($1::text[])",
                    tbl = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[&keys]).await.map_err(pg_err)?;
                rows.iter()
                    .map(|r| {
                        let j: String = r.get(1);
                        Ok((r.get(0), serde_json::from_str(&j).map_err(|e| e.to_string())?))
                    })
                    .collect()
            }
            Conn::Lite(c) => {
                let (key, _) = texts(side, false);
                let table = side.table.clone();
                let keys = keys.to_vec();
                Self::lite(c, move |c| {
                    let cols: Vec<String> = {
                        let mut stmt = c.prepare(&format!("PRAGMA table_info({})", quote_table(&table)))?;
                        let rows = stmt.query_map([], |r| r.get(1))?;
                        rows.collect::<rusqlite::Result<_>>()?
                    };
                    let obj = cols
                        .iter()
                        .map(|c| {
                            let q = quote_table(c);
                            format!(
                                "'{}', CASE typeof({q}) WHEN 'blob' THEN drift_base64({q}) ELSE {q} END",
                                c.replace('\'', "''")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let mut out = BTreeMap::new();
                    for chunk in keys.chunks(KEYS_PER_QUERY_MAX) {
                        let marks = vec!["?"; chunk.len()].join(",");
                        let sql = format!(
                            "SELECT k, j FROM (SELECT {key} AS k, json_object({obj}) AS j FROM {t}) \
                             WHERE k IN ({marks})",
                            t = quote_table(&table),
                        );
                        let mut stmt = c.prepare(&sql)?;
                        let rows = stmt.query_map(rusqlite::params_from_iter(chunk.iter()), |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                        })?;
                        for row in rows {
                            let (k, j) = row?;
                            let v = serde_json::from_str(&j).unwrap_or(Value::String(j));
                            out.insert(k, v);
                        }
                    }
                    Ok(out)
                })
                .await
            }
        }
    }

    /// How the projection `table` holds its columns, for rendering a topic's values as it
    /// renders them (the sink's choice: Postgres column kinds, SQLite `BLOB` columns).
    pub async fn target(&self, table: &str) -> Result<crate::topic::Target, String> {
        match self {
            Conn::Folded(_) => Err(format!("`{table}` is a topic: it has no columns")),
            Conn::Pg(c) => driftless_sink::postgres::column_kinds(c, table)
                .await
                .map(crate::topic::Target::Postgres)
                .map_err(pg_err),
            Conn::Lite(c) => {
                let sql = format!("PRAGMA table_info({})", quote_table(table));
                Self::lite(c, move |c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
                    let mut blobs = std::collections::BTreeSet::new();
                    for row in rows {
                        let (name, declared) = row?;
                        if driftless_sink::values::sqlite_blob(&declared) {
                            blobs.insert(name);
                        }
                    }
                    Ok(crate::topic::Target::Sqlite(blobs))
                })
                .await
            }
        }
    }

    /// The table's column names.
    pub async fn columns(&self, table: &str) -> Result<Vec<String>, String> {
        match self {
            Conn::Folded(_) => Err(format!("`{table}` is a topic: it has no columns")),
            Conn::Pg(c) => {
                let rows = c
                    .query(
                        "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) \
                         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        &[&quote_table(table)],
                    )
                    .await
                    .map_err(pg_err)?;
                Ok(rows.iter().map(|r| r.get(0)).collect())
            }
            Conn::Lite(c) => {
                let sql = format!("PRAGMA table_info({})", quote_table(table));
                Self::lite(c, move |c| {
                    let mut stmt = c.prepare(&sql)?;
                    let rows = stmt.query_map([], |r| r.get(1))?;
                    rows.collect()
                })
                .await
            }
        }
    }

    /// The version column of the rows with these keys (a projection's): what each row's last
    /// applied event was, so a correction can rank just above it.
    pub async fn versions(
        &self,
        side: &Side,
        version_column: &str,
        keys: &[String],
    ) -> Result<BTreeMap<String, String>, String> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let vc = format!("\"{}\"", version_column.replace('"', "\"\""));
        match self {
            Conn::Folded(_) => Ok(BTreeMap::new()),
            Conn::Pg(c) => {
                let (key, _) = texts(side, true);
                let sql = format!(
                    "SELECT k, v FROM (SELECT {key} AS k, {vc}::text AS v FROM {t}) s \
                     WHERE k = ANY($1::text[]) AND v IS NOT NULL",
                    t = quote_table(&side.table),
                );
                let rows = c.query(&sql, &[&keys]).await.map_err(pg_err)?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            }
            Conn::Lite(c) => {
                let (key, _) = texts(side, false);
                let table = quote_table(&side.table);
                let select = format!(
                    "SELECT k, v FROM (SELECT {key} AS k, CAST({vc} AS TEXT) AS v FROM {table} \
                     WHERE {vc} IS NOT NULL)"
                );
                Self::lite_by_keys(c, keys, select, |r| r.get::<_, String>(1)).await
            }
        }
    }

    /// Postgres's current WAL position (for corrections ranked with CDC events).
    pub async fn wal_lsn(&self) -> Result<u64, String> {
        match self {
            Conn::Pg(c) => {
                let text: String = c
                    .query_one("SELECT pg_current_wal_lsn()::text", &[])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                let (hi, lo) = text.split_once('/').ok_or_else(|| format!("bad LSN {text}"))?;
                let hi = u64::from_str_radix(hi, 16).map_err(|e| e.to_string())?;
                let lo = u64::from_str_radix(lo, 16).map_err(|e| e.to_string())?;
                Ok(hi << 32 | lo)
            }
            Conn::Lite(_) | Conn::Folded(_) => {
                Err("only a Postgres source has a WAL position; use sequence = \"none\"".into())
            }
        }
    }
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, String> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| driftless_core::sql::sqlite_open_failure(path, &e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(lite_err)?;
    register_digests(&conn).map_err(lite_err)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0, 255, 254, 1]), "AP/+AQ==");
    }
}
