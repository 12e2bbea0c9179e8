//! The Postgres table target: batched, version-guarded upserts and deletes, with the applied
//! positions written in the same transaction.
//!
//! One batch is one transaction. Rows travel as one text array per column (`unnest`), each value
//! the text its column type's input function reads (`values::pg_text`, chosen by the column's
//! type with domains resolved) and cast in SQL, so every column type works without a per-type
//! binding, no value passes through a lossy conversion, and a batch of any size is one statement
//! per table and column set, all sent in one round trip.
//!
//! Invariants:
//! - a row is written only if its stored version is older (`COLLATE "C"`, bytewise) and no
//!   tombstone of an equal or newer version exists: a duplicate or stale event changes nothing;
//! - a delete leaves a tombstone (`driftless_sink_tombstones`), so an older upsert redelivered
//!   later cannot resurrect the row;
//! - `driftless_sink_positions` moves in the same transaction as the rows it describes;
//! - errors are classified: connection and server-availability errors are `Unavailable` (retry
//!   the batch as is), a missing table or column is `Schema`, anything else is `Rejected`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;

use futures_util::future::maybe_done;

use driftless_core::sql::{quote_ident, quote_literal, quote_table};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::batch::{collapse, positions, Group, Item, UpsertParts};
use crate::config::OpKind;
use crate::error::{ApplyError, Result, SinkError};
use crate::mapping::{Mapper, RowOp};
use crate::values::{pg_text, PgKind};

/// The metadata tables, created when missing.
const META_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS driftless_sink_positions (
    sink text NOT NULL,
    topic text NOT NULL,
    partition int NOT NULL,
    applied_offset bigint NOT NULL,
    event_time_ms bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, topic, partition)
);
CREATE TABLE IF NOT EXISTS driftless_sink_tombstones (
    tbl text NOT NULL,
    key text NOT NULL,
    version text COLLATE "C" NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tbl, key)
);
ALTER TABLE driftless_sink_tombstones ADD COLUMN IF NOT EXISTS kept_row json;
"#;

/// What a new row's unsent value (an unchanged TOASTed value of a key change) is written as when
/// no row under the old key holds it: an error naming table, column and key, never a NULL.
/// Created once; concurrent creators may collide (a unique violation), which is harmless.
const MISSING_FN_DDL: &str = r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'driftless_sink_missing') THEN
    CREATE FUNCTION driftless_sink_missing(tbl text, col text, key text, kind anyelement)
    RETURNS anyelement LANGUAGE plpgsql AS $f$ BEGIN
      RAISE EXCEPTION 'driftless: %.% of key % has no value to write: the event did not carry it (an unchanged TOASTed value) and the projection holds no deleted row of the old key to carry it from (retried until the delete of the old key is applied); set REPLICA IDENTITY FULL on the source table so that every change carries every value', tbl, col, key;
    END $f$;
  END IF;
END $$;
"#;

/// A connected Postgres target.
pub struct PgSink {
    sink: String,
    url: String,
    version_column: String,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// Column → type of every checked table.
    types: HashMap<String, BTreeMap<String, ColumnType>>,
}

/// A target column's type: the SQL its text is cast to, and how values are written.
#[derive(Debug, Clone)]
struct ColumnType {
    /// `format_type` (`character varying(10)`, `integer[]`, `"MyEnum"`).
    cast: String,
    /// How a JSON value becomes its text.
    kind: PgKind,
}

/// One row of `pg_type`, as far as choosing a [`PgKind`] needs it.
struct PgType {
    name: String,
    typtype: i8,
    base: u32,
    element: u32,
    delimiter: i8,
    category: i8,
    len: i16,
}

/// Deepest chain of domains and array elements followed (guards against a cyclic catalog).
const TYPE_DEPTH_MAX: usize = 32;

/// The kind of type `oid`, domains resolved to their base type.
fn kind_of(types: &HashMap<u32, PgType>, oid: u32, depth: usize) -> PgKind {
    let Some(t) = types.get(&oid).filter(|_| depth < TYPE_DEPTH_MAX) else {
        return PgKind::Text;
    };
    match (t.name.as_str(), t.typtype as u8) {
        (_, b'd') => kind_of(types, t.base, depth + 1),
        ("json" | "jsonb", _) if oid < 10_000 => PgKind::Json,
        ("bytea", _) if oid < 10_000 => PgKind::Bytea,
        ("int2vector" | "oidvector", _) if oid < 10_000 => PgKind::Vector,
        _ if t.category as u8 == b'A' && t.element != 0 && t.len == -1 => PgKind::Array {
            element: Box::new(kind_of(types, t.element, depth + 1)),
            // Array I/O separates elements with the *element* type's delimiter.
            delimiter: types.get(&t.element).map_or(',', |e| char::from(e.delimiter as u8)),
        },
        _ => PgKind::Text,
    }
}

/// Every type of the database's `pg_type`, as far as choosing a [`PgKind`] needs it.
async fn read_catalog(client: &Client) -> Result<HashMap<u32, PgType>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT oid, typname::text, typtype, typbasetype, typelem, typdelim, typcategory, \
             typlen FROM pg_catalog.pg_type",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, u32>(0),
                PgType {
                    name: r.get(1),
                    typtype: r.get(2),
                    base: r.get(3),
                    element: r.get(4),
                    delimiter: r.get(5),
                    category: r.get(6),
                    len: r.get(7),
                },
            )
        })
        .collect())
}

/// Each column of `table` (`schema.table` or `table`) and how the sink writes values to it,
/// chosen as [`PgSink::check`] chooses it: what [`pg_text`] needs to render a value as the
/// column holds it (reconciliation renders a topic's values with it). Empty when the table
/// does not exist.
pub async fn column_kinds(
    client: &Client,
    table: &str,
) -> Result<BTreeMap<String, PgKind>, tokio_postgres::Error> {
    let catalog = read_catalog(client).await?;
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&quote_table(table)],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), kind_of(&catalog, r.get(1), 0))).collect())
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink").field("sink", &self.sink).finish_non_exhaustive()
    }
}

/// Classifies a driver error.
pub(crate) fn classify(e: &tokio_postgres::Error) -> ApplyError {
    let Some(db) = e.as_db_error() else {
        return ApplyError::Unavailable(e.to_string());
    };
    let code = db.code().code();
    let msg = match (db.detail(), db.hint()) {
        (Some(d), _) => format!("{}: {d}", db.message()),
        (None, Some(h)) => format!("{} (hint: {h})", db.message()),
        _ => db.message().to_string(),
    };
    if code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || *db.code() == SqlState::T_R_SERIALIZATION_FAILURE
        || *db.code() == SqlState::T_R_DEADLOCK_DETECTED
    {
        ApplyError::Unavailable(msg)
    } else if *db.code() == SqlState::UNDEFINED_TABLE
        || *db.code() == SqlState::UNDEFINED_COLUMN
        || *db.code() == SqlState::INVALID_COLUMN_REFERENCE
    {
        ApplyError::Schema { table: db.table().unwrap_or("?").to_string(), reason: msg }
    } else {
        ApplyError::Rejected(msg)
    }
}

impl PgSink {
    /// A target for sink `sink`; connects on first use.
    pub fn new(sink: &str, url: &str, version_column: &str) -> Self {
        Self {
            sink: sink.to_string(),
            url: url.to_string(),
            version_column: version_column.to_string(),
            client: None,
            statements: HashMap::new(),
            types: HashMap::new(),
        }
    }

    async fn client(&mut self) -> Result<&Client, ApplyError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            // sslmode/sslrootcert as libpq (driftless_pgtls); errors name the URL without its
            // password, and the cause.
            let pg = driftless_pgtls::PgConnect::parse(&self.url)
                .map_err(|e| ApplyError::Unavailable(e.to_string()))?;
            let (client, conn) =
                pg.connect().await.map_err(|e| ApplyError::Unavailable(e.to_string()))?;
            let sink = self.sink.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(sink, error = %e, "target connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client.as_ref().ok_or_else(|| ApplyError::Unavailable("not connected".into()))
    }

    /// Connects, creates the metadata tables and checks every mapped table: it exists, has the
    /// mapped columns and the version column, and a unique index over exactly the key columns.
    pub async fn check(&mut self, mapper: &Mapper) -> Result<()> {
        let sink = self.sink.clone();
        let vc = self.version_column.clone();
        let unavailable =
            |e: ApplyError| SinkError::Unavailable { sink: sink.clone(), reason: e.to_string() };
        let client = self.client().await.map_err(unavailable)?;
        for ddl in [META_DDL, MISSING_FN_DDL] {
            if let Err(e) = client.batch_execute(ddl).await {
                // Two sinks creating the tables at once: one wins, the other sees a duplicate.
                if e.code() != Some(&SqlState::UNIQUE_VIOLATION) {
                    return Err(unavailable(classify(&e)));
                }
            }
        }
        let catalog = read_catalog(client).await.map_err(|e| unavailable(classify(&e)))?;
        let mut types = HashMap::new();
        for (table, (key, columns)) in mapper.tables() {
            let schema_err = |reason: String| SinkError::Schema {
                sink: sink.clone(),
                table: table.clone(),
                reason,
            };
            let rows = client
                .query(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid \
                     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) \
                     AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&quote_table(&table)],
                )
                .await
                .map_err(|e| unavailable(classify(&e)))?;
            if rows.is_empty() {
                return Err(schema_err(format!(
                    "does not exist in the target database; create it with the mapped columns, \
                     a text column `{vc}` and a primary key on ({})",
                    key.join(", ")
                )));
            }
            let have: BTreeMap<String, String> =
                rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect();
            let typed = rows
                .iter()
                .map(|r| {
                    let cast = r.get::<_, String>(1);
                    (
                        r.get::<_, String>(0),
                        ColumnType { cast, kind: kind_of(&catalog, r.get(2), 0) },
                    )
                })
                .collect();
            types.insert(table.clone(), typed);
            for c in key.iter().chain(&columns) {
                if !have.contains_key(c) {
                    return Err(schema_err(format!(
                        "has no column `{c}`, which the mapping writes (columns: {})",
                        have.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            match have.get(&vc) {
                None => {
                    return Err(schema_err(format!(
                        "has no version column `{vc}`; add it with: ALTER TABLE {table} ADD \
                         COLUMN {vc} text"
                    )))
                }
                Some(t) if t != "text" && !t.starts_with("character varying") => {
                    return Err(schema_err(format!(
                        "version column `{vc}` is {t}; it must be text"
                    )))
                }
                Some(_) => {}
            }
            let unique = client
                .query(
                    "SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) \
                     AND i.indisunique AND i.indpred IS NULL AND \
                     (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a \
                      WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = \
                     (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k)",
                    &[&quote_table(&table), &key],
                )
                .await
                .map_err(|e| unavailable(classify(&e)))?;
            if unique.is_empty() {
                return Err(schema_err(format!(
                    "needs a primary key or unique index on exactly ({}), the mapping's key",
                    key.join(", ")
                )));
            }
        }
        self.types = types;
        Ok(())
    }

    async fn statement(&mut self, sql: String) -> Result<Statement, ApplyError> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let client = self.client().await?;
        let s = client.prepare(&sql).await.map_err(|e| classify(&e))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// The types of `g`'s columns (the check at start read them; a table it did not read is a
    /// schema error, never a guess), and its unsent columns that the table has, with theirs.
    #[allow(clippy::type_complexity)]
    fn column_types(
        &self,
        g: &Group<'_>,
    ) -> Result<(Vec<ColumnType>, Vec<(String, ColumnType)>), ApplyError> {
        let types = self.types.get(g.table).ok_or_else(|| ApplyError::Schema {
            table: g.table.to_string(),
            reason: "its column types were not read when the sink started".into(),
        })?;
        let carried = g
            .unchanged
            .iter()
            .filter_map(|c| types.get(*c).map(|t| (c.to_string(), t.clone())))
            .collect();
        let columns = g
            .columns
            .iter()
            .map(|c| {
                types.get(*c).cloned().ok_or_else(|| ApplyError::Schema {
                    table: g.table.to_string(),
                    reason: format!("has no column `{c}`, which the mapping writes"),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok((columns, carried))
    }

    /// The guarded upsert of group `g`: rows from `from` (aliased `x`, with the key text `x.k`
    /// and version `x.v`), column values `vals` for `g.columns` and then for `extra` (columns
    /// written only when the row is new: they are not in the `SET` list). A row is skipped when
    /// a tombstone at least as new exists, and an existing row is replaced only by a newer
    /// version.
    fn upsert_sql(&self, g: &Group<'_>, vals: &[String], extra: &[&str], from: &str) -> String {
        let t = quote_table(g.table);
        let vc = quote_ident(&self.version_column);
        let UpsertParts { columns: cols, key: keys, sets } = g.upsert_parts(&self.version_column);
        let extra: String = extra.iter().map(|c| format!("{}, ", quote_ident(c))).collect();
        format!(
            "INSERT INTO {t} ({cols}, {extra}{vc}) SELECT {vals}, x.v FROM {from} \
             WHERE NOT EXISTS (SELECT 1 FROM driftless_sink_tombstones tb \
               WHERE tb.tbl = $1 AND tb.key = x.k AND tb.version >= x.v COLLATE \"C\") \
             ON CONFLICT ({keys}) DO UPDATE SET {sets} \
             WHERE {t}.{vc} IS NULL OR {t}.{vc} COLLATE \"C\" < EXCLUDED.{vc} COLLATE \"C\"",
            vals = vals.join(", "),
        )
    }

    /// The statement of group `g`, whose rows arrive as text arrays `$2` (keys), `$3`
    /// (versions) and one per column, each value cast to its column's type.
    ///
    /// `carried`: unsent columns (a key change's unchanged TOASTed values). Their rows bring one
    /// more text array, the old key's text (`x.mk`); a new row takes each such value from the
    /// row the old key's delete kept in its tombstone, or fails with `driftless_sink_missing`
    /// (the attempt fails and is retried: the delete may not be applied yet); an existing row
    /// keeps its own (they are not in the `SET` list). Only the applied delete's row is known
    /// to be the old key's final state: the row still under the old key may lack an update of
    /// it on another partition.
    fn group_sql(
        &self,
        g: &Group<'_>,
        types: &[ColumnType],
        carried: &[(String, ColumnType)],
    ) -> String {
        let t = quote_table(g.table);
        // With carried columns: the old key's text `mk`.
        let moved = usize::from(!carried.is_empty());
        let arrays: Vec<String> =
            (0..g.columns.len() + 2 + moved).map(|i| format!("${}::text[]", i + 2)).collect();
        let names: Vec<String> = (0..g.columns.len())
            .map(|i| format!("c{i}"))
            .chain((moved > 0).then(|| "mk".to_string()))
            .collect();
        let from = format!("unnest({}) AS x(k, v, {})", arrays.join(", "), names.join(", "));
        let val = |i: usize| format!("x.c{i}::{}", types[i].cast);
        match g.op {
            OpKind::Upsert => {
                let mut vals: Vec<String> = (0..g.columns.len()).map(val).collect();
                // The new row `o`, when it exists already.
                let exists: Vec<String> = (g.key.iter())
                    .filter_map(|k| Some((k, g.columns.iter().position(|c| c == k)?)))
                    .map(|(k, i)| format!("o.{} = x.c{i}::{}", quote_ident(k), types[i].cast))
                    .collect();
                for (c, ty) in carried {
                    vals.push(format!(
                        "CASE WHEN EXISTS (SELECT 1 FROM {t} o WHERE {exists}) THEN NULL::{cast} \
                         ELSE COALESCE((SELECT (json_populate_record(NULL::{t}, tb.kept_row)).{col} \
                            FROM driftless_sink_tombstones tb WHERE tb.tbl = $1 AND tb.key = x.mk), \
                           driftless_sink_missing($1, {lit}, x.k, NULL::{cast})) END",
                        exists = exists.join(" AND "),
                        cast = ty.cast,
                        col = quote_ident(c),
                        lit = quote_literal(c),
                    ));
                }
                let extra: Vec<&str> = carried.iter().map(|(c, _)| c.as_str()).collect();
                self.upsert_sql(g, &vals, &extra, &from)
            }
            OpKind::Delete => {
                let vc = quote_ident(&self.version_column);
                let on: Vec<String> = (g.columns.iter().enumerate())
                    .map(|(i, c)| format!("o.{} = {}", quote_ident(c), val(i)))
                    .collect();
                // A key change's delete keeps the row's values in its tombstone
                // (`row_to_json` keeps every value's text: `-0`, big numbers) for the insert
                // that may come later and carry its unsent values from them.
                let kept = if g.keep_rows { "row_to_json(o.*)" } else { "NULL::json" };
                format!(
                    "WITH x AS (SELECT * FROM {from}), d AS (DELETE FROM {t} AS o USING x \
                       WHERE {on} AND (o.{vc} IS NULL OR o.{vc} COLLATE \"C\" < x.v COLLATE \"C\") \
                       RETURNING x.k AS k, {kept} AS r) \
                     INSERT INTO driftless_sink_tombstones (tbl, key, version, kept_row) \
                     SELECT $1, x.k, x.v, d.r FROM x LEFT JOIN d ON d.k = x.k \
                     ON CONFLICT (tbl, key) DO UPDATE \
                     SET version = EXCLUDED.version, deleted_at = now(), kept_row = EXCLUDED.kept_row \
                     WHERE driftless_sink_tombstones.version < EXCLUDED.version",
                    on = on.join(" AND "),
                )
            }
        }
    }

    /// Applies the items in one transaction.
    pub async fn apply(&mut self, items: &[&Item]) -> Result<(), ApplyError> {
        let groups = collapse(items);
        let mut work = Vec::new();
        for g in &groups {
            let (types, carried) = self.column_types(g)?;
            let stmt = self.statement(self.group_sql(g, &types, &carried)).await?;
            let mut arrays: Vec<Vec<Option<String>>> = vec![
                g.ops.iter().map(|op| Some(op.key_text.clone())).collect(),
                g.ops.iter().map(|op| Some(op.version.clone())).collect(),
            ];
            for (c, ty) in g.columns.iter().zip(&types) {
                let mut column = Vec::with_capacity(g.ops.len());
                for op in &g.ops {
                    let text = match op.columns.get(*c) {
                        Some(v) => pg_text(v, &ty.kind)
                            .map_err(|e| ApplyError::Rejected(format!("{}.{c}: {e}", g.table)))?,
                        None => None,
                    };
                    column.push(text);
                }
                arrays.push(column);
            }
            if !carried.is_empty() {
                // The old key as tombstones store it (`RowOp::key_text` of its delete).
                let key_text =
                    |op: &&RowOp| op.moved_from.clone().map(|m| Value::Array(m).to_string());
                arrays.push(g.ops.iter().map(key_text).collect());
            }
            work.push((stmt, arrays, g.table.to_string()));
        }
        let pos: Vec<Value> = positions(items)
            .into_iter()
            .map(|((topic, partition), (offset, time))| {
                json!({"topic": topic, "partition": partition, "offset": offset, "time": time})
            })
            .collect();
        let pos_stmt = self
            .statement(
                "INSERT INTO driftless_sink_positions AS p \
                   (sink, topic, partition, applied_offset, event_time_ms) \
                 SELECT $1, x.topic, x.partition, x.\"offset\", x.time \
                 FROM jsonb_to_recordset($2::text::jsonb) \
                   AS x(topic text, partition int, \"offset\" bigint, time bigint) \
                 ON CONFLICT (sink, topic, partition) DO UPDATE SET \
                   applied_offset = GREATEST(p.applied_offset, EXCLUDED.applied_offset), \
                   event_time_ms = GREATEST(p.event_time_ms, EXCLUDED.event_time_ms), \
                   applied_at = now()"
                    .to_string(),
            )
            .await?;
        let sink = self.sink.clone();
        let pos = Value::Array(pos).to_string();
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let mut params: Vec<Vec<Param<'_>>> = work
            .iter()
            .map(|(_, arrays, table)| {
                let mut p: Vec<Param<'_>> = vec![table];
                p.extend(arrays.iter().map(|a| a as Param<'_>));
                p
            })
            .collect();
        params.push(vec![&sink, &pos]);
        let client = self.client().await?;
        // The whole transaction in one round trip: tokio-postgres sends the requests of futures
        // polled together without waiting for each answer (one `BEGIN`, the statements, the
        // positions, `COMMIT`), and Postgres runs them in order. If a statement fails, the ones
        // after it fail too ("current transaction is aborted") and `COMMIT` rolls back, so
        // nothing is half-applied; the first error in order is the cause. (By statements, since
        // `Client::transaction` needs `&mut Client` and the statements borrow the cache; the
        // connection is ours alone.)
        let mut requests: Vec<Request<'_>> = vec![Box::pin(client.batch_execute("BEGIN"))];
        for (stmt, p) in work.iter().map(|(stmt, _, _)| stmt).chain([&pos_stmt]).zip(&params) {
            requests.push(Box::pin(async move { client.execute(stmt, p).await.map(|_| ()) }));
        }
        requests.push(Box::pin(client.batch_execute("COMMIT")));
        let result = in_order(requests).await;
        if let Err(e) = result {
            let err = classify(&e);
            if !client.is_closed() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            return Err(err);
        }
        Ok(())
    }
}

/// One request of a pipelined transaction.
type Request<'r> = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'r>>;

/// Runs `requests` concurrently and returns the first error in their order. Each is first
/// polled in order, which is when tokio-postgres sends it: so they go out in order, pipelined.
/// (`join_all` does not promise its polling order for larger counts.)
async fn in_order(requests: Vec<Request<'_>>) -> Result<(), tokio_postgres::Error> {
    let mut pending: Vec<_> = requests.into_iter().map(maybe_done).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for r in pending.iter_mut() {
            // `Pin::new` is enough: a `MaybeDone` of a boxed future is `Unpin`.
            done &= Pin::new(r).poll(cx).is_ready();
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in &mut pending {
        if let Some(Err(e)) = Pin::new(r).take_output() {
            return Err(e);
        }
    }
    Ok(())
}

/// The last part of `schema.table` (what `ALTER TABLE … RENAME TO` takes).
fn bare(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl PgSink {
    /// Creates an empty shadow of each table (`<table><suffix>`, same columns, defaults,
    /// constraints and indexes), dropping a leftover one, and clears the shadow sink's
    /// tombstones and positions.
    pub async fn create_shadows(
        &mut self,
        tables: &[String],
        suffix: &str,
        shadow_sink: &str,
    ) -> Result<(), ApplyError> {
        let mut sql = String::from("BEGIN;");
        for t in tables {
            let shadow = format!("{t}{suffix}");
            sql.push_str(&format!(
                "DROP TABLE IF EXISTS {s}; CREATE TABLE {s} (LIKE {t} INCLUDING ALL); \
                 DELETE FROM driftless_sink_tombstones WHERE tbl = '{lit}';",
                s = quote_table(&shadow),
                t = quote_table(t),
                lit = shadow.replace('\'', "''"),
            ));
        }
        sql.push_str(&format!(
            "DELETE FROM driftless_sink_positions WHERE sink = '{}'; COMMIT;",
            shadow_sink.replace('\'', "''")
        ));
        let client = self.client().await?;
        client.batch_execute(&sql).await.map_err(|e| classify(&e))
    }

    /// Swaps the shadows in, in one transaction: readers see the old tables until it commits,
    /// then the rebuilt ones. The shadows' tombstones and positions become the live sink's.
    pub async fn swap(
        &mut self,
        tables: &[String],
        suffix: &str,
        live_sink: &str,
        shadow_sink: &str,
    ) -> Result<(), ApplyError> {
        let lit = |s: &str| s.replace('\'', "''");
        let mut sql = String::from("BEGIN;");
        for t in tables {
            let shadow = format!("{t}{suffix}");
            sql.push_str(&format!(
                "LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE; \
                 ALTER TABLE {live} RENAME TO {old}; \
                 ALTER TABLE {sh} RENAME TO {name}; \
                 DROP TABLE {old_path}; \
                 DO $$ DECLARE r record; BEGIN \
                   FOR r IN SELECT n.nspname, c.relname FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indexrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE i.indrelid = '{live_lit}'::regclass \
                       AND position('{sh_bare}' in c.relname) = 1 LOOP \
                     EXECUTE format('ALTER INDEX %I.%I RENAME TO %I', r.nspname, r.relname, \
                       '{bare_lit}' || substr(r.relname, length('{sh_bare}') + 1)); \
                   END LOOP; END $$; \
                 DELETE FROM driftless_sink_tombstones WHERE tbl = '{t_lit}'; \
                 UPDATE driftless_sink_tombstones SET tbl = '{t_lit}' WHERE tbl = '{sh_lit}';",
                live = quote_table(t),
                old = quote_ident(&format!("{}__old", bare(t))),
                old_path = quote_table(&format!("{t}__old")),
                sh = quote_table(&shadow),
                name = quote_ident(bare(t)),
                t_lit = lit(t),
                sh_lit = lit(&shadow),
                live_lit = lit(&quote_table(t)),
                // The shadow's indexes were named after it; they take the table's names back.
                sh_bare = lit(&format!("{}{suffix}", bare(t))),
                bare_lit = lit(bare(t)),
            ));
        }
        sql.push_str(&format!(
            "DELETE FROM driftless_sink_positions WHERE sink = '{live}'; \
             UPDATE driftless_sink_positions SET sink = '{live}' WHERE sink = '{shadow}'; COMMIT;",
            live = lit(live_sink),
            shadow = lit(shadow_sink),
        ));
        self.statements.clear(); // prepared plans name the old tables
        let client = self.client().await?;
        let r = client.batch_execute(&sql).await;
        if let Err(e) = r {
            if !client.is_closed() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            return Err(classify(&e));
        }
        Ok(())
    }
}
