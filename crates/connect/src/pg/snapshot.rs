//! The initial snapshot of Postgres CDC: every captured table's existing rows, read in key-range
//! chunks while streaming continues, merged into the stream with the watermark algorithm of
//! Netflix DBLog (Andreakis & Papapanagiotou, 2019).
//!
//! Plan. When the source creates its replication slot (first start, or `on_slot_lost =
//! "resnapshot"`) and `snapshot = "initial"`, it lists the publication's tables and stores the
//! plan ([`SnapshotProgress`]) in its state *before* creating the slot, so a crash between the
//! two cannot lose the snapshot. The plan holds the tables still to read, the current table, the
//! last key read (text form, with the key columns it belongs to) and the row counts. A table
//! added to a source that already has its slot is planned the same way at the next start
//! ([`extend_plan`], stored before streaming starts), and read by the same chunks.
//!
//! One chunk `k` of table `T` (read by [`reader`] on its own connection, driven by the stream
//! loop, one chunk at a time):
//! 1. the stream loop opens the *window* of chunk `k` and sends the request; from then on it
//!    records the key of every change to `T` in each transaction it receives (a truncate of `T`
//!    marks every key);
//! 2. the reader writes the low watermark, a non-transactional logical message
//!    `driftless.snapshot` / `low:<run>:<k>`;
//! 3. it reads `SELECT <every column> FROM T WHERE (key) > (last key) ORDER BY key LIMIT
//!    snapshot_chunk_rows` in a `REPEATABLE READ` transaction (text output, `DateStyle = ISO,
//!    MDY`, `TimeZone = UTC`, `IntervalStyle = postgres`, as the walsender renders values), and
//!    hands the rows to the stream loop (a channel of capacity 1);
//! 4. it writes the high watermark `high:<run>:<k>`;
//! 5. when the stream loop receives the high watermark it closes the window, drops every row
//!    whose key was changed in it, and appends the rest as `read` events, in the batch, at the
//!    watermark's position: `sequence` = high LSN and the row's ordinal among the kept rows, id
//!    `<source>:snap:<high LSN>:<ordinal>`;
//! 6. once those events are durable, the plan's last key advances (stored with the state), and
//!    only then is chunk `k + 1` requested.
//!
//! Why a kept row is right: its key was not changed by any transaction the stream received
//! between the request and the high watermark. Transactions received before the request were
//! decoded, so their commit records were flushed before the chunk's snapshot was taken, and the
//! reader takes a snapshot only once they are visible in it (see the race below); transactions received after the high watermark commit
//! after it in WAL, so their events carry a larger `sequence` and come later in the key's
//! partition. So a kept row is the key's state at the high watermark, and ordering it there
//! neither hides a newer change nor resurrects a deleted row. A dropped row loses nothing: the
//! change that caused the drop is in the stream, carrying the key's newer state (or its delete).
//! Opening the window at the request rather than at the low watermark only widens it, which can
//! only drop more rows, never keep a wrong one.
//!
//! The visibility race: a transaction whose commit record is already flushed, so the stream may
//! already have received it, can still be invisible to new snapshots for a moment (between its
//! WAL flush and its removal from the proc array; longer while it waits for a synchronous
//! standby). Received before the request, it is not in the window, and a chunk that missed it
//! would read its keys' old values and place them after it. So each request carries the xids of
//! the last [`RECEIVED_XIDS_MAX`] transactions the stream received, and the reader refuses a
//! snapshot that counts any of them as running — in its `xip`, or at or past its `xmax`, which
//! is one past the latest *completed* xid, so a transaction between its WAL flush and its
//! completion is usually there, not in `xip` — or in which a running transaction is already
//! committed in `pg_xact`, and takes a new one. (Found under load by
//! `concurrent_writes_during_the_snapshot_fold_to_the_final_table`: the previous check looked
//! at `pg_xact` and `xip` only. Test
//! `a_chunk_waits_for_a_received_transaction_its_snapshot_still_counts_as_running`.) What is
//! left: a transaction received more than [`RECEIVED_XIDS_MAX`] transactions before the request
//! and still not completed.
//!
//! Crash and restart: the stream restarts at the slot's position as usual; watermarks of an
//! earlier run (another `<run>`) are ignored; the snapshot resumes after the stored last key of
//! the current table. A chunk whose events were appended but whose progress was not yet stored
//! is read again, with new ids (its high LSN differs), so its rows may appear twice. That is
//! harmless: each `read` is the key's full state at its own position, and a re-read is placed
//! after everything it reflects, so folding a key's events in `sequence` order still ends in the
//! right state. At most one chunk is re-read per crash.
//!
//! Limits and invariants: at most one chunk (`snapshot_chunk_rows` rows) is in memory; the key
//! columns (`key_columns`, else the replica identity index, else every column for `REPLICA
//! IDENTITY FULL`) must be non-NULL and orderable; a value left out of a streamed update
//! (unchanged TOAST) is not filled in from a dropped snapshot row.
//!
//! An outbox table's rows become outbox events, whose id is the row's, so a read of a row the
//! stream relays would be the same event twice, not a harmless second state. Only inserts relay
//! an event, and the keys of the rows the stream inserted are kept for the whole run, not only
//! for the window of the chunk in flight: no chunk of the run emits them (a row inserted after
//! the slot was created, decoded before the chunk holding its key was requested, was relayed
//! twice). A kept key is dropped when a chunk reads its row, and all of them when the snapshot
//! ends, so they are at most the keys of the rows inserted while the outbox is being read. A run
//! does not know what an earlier run relayed: after a crash
//! during an outbox's snapshot, a row relayed and acknowledged before the crash and read after it
//! appears twice, unless the broker's id deduplication (on by default) drops the second copy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{pg_error, quote_ident, quote_literal, PgTarget};
use crate::config::PgCdcConfig;
use crate::error::{ConnectError, Result};

/// Prefix of the watermark logical messages.
pub const SNAPSHOT_PREFIX: &str = "driftless.snapshot";
/// Tables up to this size are counted exactly for progress; larger ones use `reltuples`.
const EXACT_COUNT_BYTES_MAX: i64 = 64 << 20;
/// Pause before taking a new chunk snapshot when the previous one raced a commit.
const SNAPSHOT_RETRY_MS: u64 = 5;
/// How many of the transactions the stream received last a chunk request names (by xid), for
/// the reader to refuse a snapshot that still counts one of them as running.
pub const RECEIVED_XIDS_MAX: usize = 8192;

/// A table to read, as the catalog names it (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTable {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
}

impl SnapshotTable {
    /// `schema.table`, as relations and configuration name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
    fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// The snapshot plan and how far it got, stored in the source's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The table being read.
    pub table: Option<SnapshotTable>,
    /// Tables to read after it, in order.
    pub tables: Vec<SnapshotTable>,
    /// Text form of the key columns of the last row whose chunk is durable (`None`: start of
    /// the table).
    pub last_key: Option<Vec<String>>,
    /// The key columns `last_key` belongs to; another key restarts the table.
    #[serde(default)]
    pub last_key_columns: Vec<String>,
    /// Rows read in durable chunks.
    pub rows_done: u64,
    /// Rows estimated in every planned table.
    pub rows_total: u64,
}

impl SnapshotProgress {
    /// Moves to the next table; `false` when none is left.
    pub fn next_table(&mut self) -> bool {
        self.last_key = None;
        self.last_key_columns.clear();
        if self.tables.is_empty() {
            self.table = None;
            return false;
        }
        self.table = Some(self.tables.remove(0));
        true
    }
}

/// The publication's tables with their size figures, as the catalog names them.
#[derive(Debug, Clone)]
pub struct PublishedTable {
    /// The table.
    pub table: SnapshotTable,
    /// `pg_class.reltuples` (-1 before the first ANALYZE).
    reltuples: i64,
    /// `pg_relation_size`, in bytes.
    size_bytes: i64,
}

/// Lists the tables of `publication`, in name order.
pub async fn published_tables(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<Vec<PublishedTable>> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, c.reltuples::int8, \
                    pg_relation_size(c.oid) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(pg_error(name, "listing the publication's tables"))?;
    Ok(rows
        .iter()
        .map(|row| PublishedTable {
            table: SnapshotTable { schema: row.get(0), table: row.get(1) },
            reltuples: row.get(2),
            size_bytes: row.get(3),
        })
        .collect())
}

/// Adds `tables` to the end of `progress` (a new plan when `None`) with their estimated rows,
/// and makes the first planned table current if none is.
pub async fn extend_plan(
    name: &str,
    client: &tokio_postgres::Client,
    progress: Option<SnapshotProgress>,
    tables: &[PublishedTable],
) -> Result<SnapshotProgress> {
    let mut progress = progress.unwrap_or_default();
    for published in tables {
        let table = &published.table;
        if progress.table.as_ref() == Some(table) || progress.tables.contains(table) {
            continue;
        }
        // `reltuples` is -1 before the first ANALYZE and stale after bulk loads: count small
        // tables exactly, estimate big ones (counting them would read them twice).
        let estimate = if published.size_bytes <= EXACT_COUNT_BYTES_MAX || published.reltuples < 0 {
            let count = client
                .query_one(&format!("SELECT count(*) FROM {}", table.sql()), &[])
                .await
                .map_err(pg_error(name, format!("counting the rows of {}", table.qualified())))?;
            count.get::<_, i64>(0)
        } else {
            published.reltuples
        };
        progress.rows_total += estimate.max(0) as u64;
        progress.tables.push(table.clone());
    }
    if progress.table.is_none() {
        progress.next_table();
    }
    Ok(progress)
}

/// Removes the table `qualified` (`schema.table`) from the plan; when it is the current one,
/// the plan moves to the next.
pub fn drop_from_plan(progress: &mut SnapshotProgress, qualified: &str) {
    progress.tables.retain(|t| t.qualified() != qualified);
    if progress.table.as_ref().is_some_and(|t| t.qualified() == qualified) {
        progress.next_table();
    }
}

/// Lists the publication's tables and estimates their rows: the plan of a new slot's snapshot.
pub async fn plan(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
) -> Result<SnapshotProgress> {
    let tables = published_tables(name, client, publication).await?;
    extend_plan(name, client, None, &tables).await
}

/// What the stream loop asks the reader for.
#[derive(Debug, Clone)]
pub struct ChunkRequest {
    /// Chunk number within this run.
    pub k: u64,
    /// The table.
    pub table: SnapshotTable,
    /// Read rows after this key (text form), if its columns are still the key.
    pub after: Option<(Vec<String>, Vec<String>)>,
    /// `key_columns` configured for the table.
    pub key_columns: Option<Vec<String>>,
    /// Most rows to read.
    pub limit_rows: u32,
    /// The xids of the last transactions the stream received before the request (at most
    /// [`RECEIVED_XIDS_MAX`]): committed and decoded, so they must be visible to the chunk.
    pub received_xids: Vec<u32>,
}

/// A column of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkColumn {
    /// Name.
    pub name: String,
    /// Type oid (`atttypid`), as `pgoutput` describes it.
    pub type_oid: u32,
    /// Part of the replica identity (what `pgoutput` flags as key).
    pub identity: bool,
}

/// Rows of one chunk, in text form.
#[derive(Debug)]
pub struct Chunk {
    /// Chunk number within this run.
    pub k: u64,
    /// The table's columns, in `attnum` order (what the stream's relation lists).
    pub columns: Vec<ChunkColumn>,
    /// Values per row, in `columns` order; `None` = NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The ordering key columns and the last row's values of them (`None`: no rows).
    pub last_key: Option<(Vec<String>, Vec<String>)>,
    /// Whether the table has no rows after this chunk.
    pub table_done: bool,
}

/// A watermark of this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watermark {
    /// Chunk `k` is about to be read.
    Low(u64),
    /// Chunk `k` was read and handed over.
    High(u64),
}

/// Parses a watermark's content; `None` for malformed ones and those of another run.
pub fn parse_watermark(run: u64, content: &[u8]) -> Option<Watermark> {
    let text = std::str::from_utf8(content).ok()?;
    let (kind, rest) = text.split_once(':')?;
    let (r, k) = rest.split_once(':')?;
    if r.parse::<u64>().ok()? != run {
        return None;
    }
    let k = k.parse().ok()?;
    match kind {
        "low" => Some(Watermark::Low(k)),
        "high" => Some(Watermark::High(k)),
        _ => None,
    }
}

/// Keys of the table being read that streamed transactions changed since its chunk was
/// requested.
#[derive(Debug, Default)]
pub struct Window {
    /// Chunk number.
    pub k: u64,
    /// The table, `schema.table`.
    pub table: String,
    /// JSON text of each changed key's values (in key column order).
    pub keys: HashSet<String>,
    /// A truncate: every row read may be gone.
    pub all: bool,
    /// The low watermark was seen.
    pub low_seen: bool,
}

/// Reads the chunks the stream loop asks for, until the request channel closes. An error is
/// sent as the reply and ends the task.
pub async fn reader(
    name: String,
    target: PgTarget,
    run: u64,
    mut requests: mpsc::Receiver<ChunkRequest>,
    chunks: mpsc::Sender<Result<Chunk>>,
) {
    let client = match connect(&name, &target).await {
        Ok(c) => c,
        Err(e) => {
            let _ = chunks.send(Err(e)).await;
            return;
        }
    };
    while let Some(request) = requests.recv().await {
        let result = read_chunk(&name, &client, run, &request, &chunks).await;
        if let Err(e) = result {
            let _ = chunks.send(Err(e)).await;
            return;
        }
    }
}

async fn connect(name: &str, target: &PgTarget) -> Result<Arc<tokio_postgres::Client>> {
    let client = target.connect(name).await?;
    // Render values exactly as the walsender does for the stream (see `cdc::run`).
    client
        .batch_execute(
            "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'; \
             SET standard_conforming_strings = on; SET extra_float_digits = 3",
        )
        .await
        .map_err(pg_error(name, "configuring the snapshot connection"))?;
    Ok(Arc::new(client))
}

async fn emit(name: &str, client: &tokio_postgres::Client, content: &str) -> Result<()> {
    let sql = format!(
        "SELECT pg_logical_emit_message(false, {}, {})",
        quote_literal(SNAPSHOT_PREFIX),
        quote_literal(content)
    );
    client.batch_execute(&sql).await.map_err(pg_error(name, "writing a snapshot watermark"))
}

async fn read_chunk(
    name: &str,
    client: &tokio_postgres::Client,
    run: u64,
    request: &ChunkRequest,
    chunks: &mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let k = request.k;
    emit(name, client, &format!("low:{run}:{k}")).await?;
    let chunk = loop {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(pg_error(name, "starting a snapshot chunk"))?;
        // The first query fixes the transaction's snapshot. A committed transaction it does
        // not see may have its commit record in WAL before the low watermark (visibility
        // follows the commit's removal from the proc array, a moment after its WAL flush): take
        // another snapshot once it is visible. Such a transaction is one the stream already
        // received, or one pg_xact already records as committed. Running transactions are the
        // snapshot's `xip` and everything from its `xmax` on (`xmax` is one past the latest
        // *completed* xid, so a transaction between its WAL flush and its completion is not
        // in `xip`).
        let row = client
            .query_one(
                "SELECT pg_snapshot_xmax(s)::text, \
                        ARRAY(SELECT x::text FROM pg_snapshot_xip(s) x), \
                        EXISTS(SELECT 1 FROM pg_snapshot_xip(s) x \
                               WHERE pg_xact_status(x) = 'committed') \
                 FROM pg_current_snapshot() s",
                &[],
            )
            .await
            .map_err(pg_error(name, "checking the chunk's snapshot"))?;
        let full = |text: &str| text.parse::<u64>().unwrap_or(0);
        let snapshot = SnapshotXids {
            xmax: full(&row.get::<_, String>(0)),
            running: row.get::<_, Vec<String>>(1).iter().map(|x| full(x)).collect(),
            running_committed: row.get(2),
        };
        if snapshot.misses_any(&request.received_xids) {
            client.batch_execute("ROLLBACK").await.map_err(pg_error(name, "retrying a chunk"))?;
            tokio::time::sleep(Duration::from_millis(SNAPSHOT_RETRY_MS)).await;
            continue;
        }
        let chunk = select_chunk(name, client, request).await?;
        client.batch_execute("COMMIT").await.map_err(pg_error(name, "ending a snapshot chunk"))?;
        break chunk;
    };
    // The high watermark must follow the hand-over: when the stream loop sees it, the rows are
    // already waiting in the channel.
    if chunks.send(Ok(chunk)).await.is_err() {
        return Ok(());
    }
    emit(name, client, &format!("high:{run}:{k}")).await
}

/// The transactions a chunk's snapshot counts as running, by full (64-bit) xid.
#[derive(Debug, Default)]
struct SnapshotXids {
    /// Every xid from this one on is running (not yet completed).
    xmax: u64,
    /// Running xids below `xmax`.
    running: HashSet<u64>,
    /// Some of `running` is already committed in pg_xact.
    running_committed: bool,
}

impl SnapshotXids {
    /// Whether the snapshot misses a committed transaction: one pg_xact records as committed,
    /// or one of `received` (committed transactions the stream received, by the 32-bit xid
    /// pgoutput sends) that it counts as running.
    fn misses_any(&self, received: &[u32]) -> bool {
        self.running_committed
            || received.iter().any(|&xid| {
                let full = full_xid(xid, self.xmax);
                full >= self.xmax || self.running.contains(&full)
            })
    }
}

/// The full xid whose low 32 bits are `xid`, nearest to `near` (as Postgres compares 32-bit
/// xids: within 2^31 of each other).
fn full_xid(xid: u32, near: u64) -> u64 {
    let delta = i64::from(xid.wrapping_sub(near as u32) as i32);
    near.saturating_add_signed(delta)
}

/// Reads the table's columns and one chunk of rows (inside the chunk's transaction).
async fn select_chunk(
    name: &str,
    client: &tokio_postgres::Client,
    request: &ChunkRequest,
) -> Result<Chunk> {
    let table = &request.table;
    let qualified = table.qualified();
    let table_error = |reason: String| ConnectError::Table {
        source_name: name.into(),
        table: qualified.clone(),
        reason,
    };
    // Columns as pgoutput lists them (no dropped or generated ones), with their place in the
    // replica identity index (in index order).
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, NULL), \
                    c.relreplident::text, \
                    array_position(ri.indkey::int2[], a.attnum)::int8 \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             LEFT JOIN LATERAL ( \
                 SELECT i.indkey FROM pg_index i WHERE i.indrelid = c.oid AND \
                   CASE c.relreplident WHEN 'd' THEN i.indisprimary \
                                       WHEN 'i' THEN i.indisreplident ELSE false END \
                 LIMIT 1) ri ON true \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table.sql()],
        )
        .await
        .map_err(pg_error(name, format!("reading the columns of {qualified}")))?;
    let mut columns = Vec::new();
    let mut types = Vec::new();
    let mut index_order: Vec<(i64, usize)> = Vec::new();
    let mut full = false;
    for (i, row) in rows.iter().enumerate() {
        let identity: String = row.get(3);
        full = identity == "f";
        let position: Option<i64> = row.get(4);
        if let Some(p) = position {
            index_order.push((p, i));
        }
        let oid: i64 = row.get(1);
        columns.push(ChunkColumn {
            name: row.get(0),
            type_oid: u32::try_from(oid).unwrap_or(0),
            identity: full || position.is_some(),
        });
        types.push(row.get::<_, String>(2));
    }
    // Rows are read in the order of the key the stream keys events by, so chunk boundaries are
    // key ranges; the identity index's own column order lets Postgres walk the index.
    index_order.sort_unstable();
    let order: Vec<usize> = match &request.key_columns {
        Some(names) => names
            .iter()
            .map(|n| {
                columns.iter().position(|c| &c.name == n).ok_or_else(|| {
                    table_error(format!("key column `{n}` (from key_columns) does not exist"))
                })
            })
            .collect::<Result<_>>()?,
        None if full => (0..columns.len()).collect(),
        None => index_order.into_iter().map(|(_, i)| i).collect(),
    };
    if order.is_empty() {
        return Err(table_error("no key columns to read it in chunks by; set key_columns".into()));
    }
    let order_names: Vec<String> = order.iter().map(|&i| columns[i].name.clone()).collect();
    let key_list = order_names.iter().map(|n| quote_ident(n)).collect::<Vec<_>>().join(", ");
    let select_list = columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ");
    let filter = match &request.after {
        Some((cols, values)) if *cols == order_names && values.len() == order.len() => {
            let values: Vec<String> = order
                .iter()
                .zip(values)
                .map(|(&i, v)| format!("{}::{}", quote_literal(v), types[i]))
                .collect();
            format!("WHERE ({key_list}) > ({})", values.join(", "))
        }
        // No key yet, or the key changed since it was stored: (re)start the table.
        _ => String::new(),
    };
    // The simple-query protocol returns each value in its type's text output, exactly as
    // pgoutput sends it (a `::text` cast would not: bool, inet and char(n) print differently).
    let sql = format!(
        "SELECT {select_list} FROM {} {filter} ORDER BY {key_list} LIMIT {}",
        table.sql(),
        request.limit_rows
    );
    let messages = client
        .simple_query(&sql)
        .await
        .map_err(pg_error(name, format!("reading a snapshot chunk of {qualified}")))?;
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            rows.push((0..columns.len()).map(|i| row.get(i).map(str::to_string)).collect());
        }
    }
    let last_key = match rows.last() {
        Some(last) => {
            let values = order
                .iter()
                .map(|&i| last.get(i).cloned().flatten())
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| {
                    table_error(format!(
                        "a key column ({}) is NULL in some row; the snapshot reads by key and \
                         needs non-NULL key columns",
                        order_names.join(", ")
                    ))
                })?;
            Some((order_names, values))
        }
        None => None,
    };
    Ok(Chunk {
        k: request.k,
        table_done: rows.len() < request.limit_rows as usize,
        columns,
        rows,
        last_key,
    })
}

/// The `key_columns` configured for `table`, if any.
pub fn configured_key(config: &PgCdcConfig, table: &SnapshotTable) -> Option<Vec<String>> {
    config.key_columns.get(&table.qualified()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_of_other_runs_are_ignored() {
        assert_eq!(parse_watermark(7, b"low:7:3"), Some(Watermark::Low(3)));
        assert_eq!(parse_watermark(7, b"high:7:0"), Some(Watermark::High(0)));
        assert_eq!(parse_watermark(8, b"high:7:0"), None);
        assert_eq!(parse_watermark(7, b"mid:7:0"), None);
        assert_eq!(parse_watermark(7, b"\xff"), None);
    }

    #[test]
    fn next_table_walks_the_plan_and_resets_the_key() {
        let t = |n: &str| SnapshotTable { schema: "public".into(), table: n.into() };
        let mut p = SnapshotProgress { tables: vec![t("a"), t("b")], ..Default::default() };
        assert!(p.next_table());
        p.last_key = Some(vec!["1".into()]);
        assert!(p.next_table());
        assert_eq!((p.table.clone(), p.last_key.clone()), (Some(t("b")), None));
        assert!(!p.next_table());
        assert_eq!(p.table, None);
    }

    #[test]
    fn a_snapshot_misses_a_received_transaction_it_counts_as_running() {
        let snap = |xmax, running: &[u64], committed| SnapshotXids {
            xmax,
            running: running.iter().copied().collect(),
            running_committed: committed,
        };
        assert!(!snap(10, &[], false).misses_any(&[]));
        assert!(!snap(10, &[8], false).misses_any(&[7, 9]), "received and completed: visible");
        assert!(snap(10, &[8], false).misses_any(&[8]), "received, in xip");
        assert!(snap(10, &[], false).misses_any(&[10]), "received, at or past xmax");
        assert!(snap(10, &[8], true).misses_any(&[]), "running but committed in pg_xact");
        // Full xids of a later epoch: the 32-bit xid the stream saw, nearest to xmax.
        let epoch = 3u64 << 32;
        assert!(snap(epoch + 5, &[], false).misses_any(&[6]));
        assert!(!snap(epoch + 5, &[], false).misses_any(&[u32::MAX]), "just before the epoch");
        assert_eq!(full_xid(u32::MAX, epoch + 5), epoch - 1);
        assert_eq!(full_xid(4, 0), 4);
    }

    /// Regression: a transaction the stream had received could still be running in a chunk's
    /// snapshot (its commit record flushed, pg_xact not yet updated), so the chunk read the old
    /// value of a key it changed and placed it after the change: the fold ended on a stale row
    /// (`concurrent_writes_during_the_snapshot_fold_to_the_final_table`, under load). An open
    /// transaction named as received stands in for it: the reader must wait until it is
    /// visible.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used)]
    async fn a_chunk_waits_for_a_received_transaction_its_snapshot_still_counts_as_running() {
        use tokio_postgres::NoTls;
        let pg = driftless_testkit::PgServer::start().unwrap();
        pg.create_database("app").unwrap();
        let url = pg.url("app");
        let connect = || async {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        };
        let db = connect().await;
        db.batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'old')",
        )
        .await
        .unwrap();
        let open = connect().await;
        open.batch_execute("BEGIN; UPDATE t SET v = 'new' WHERE id = 1").await.unwrap();
        let xid: i64 = open.query_one("SELECT txid_current()", &[]).await.unwrap().get(0);

        let (requests, requests_rx) = mpsc::channel(1);
        let (chunks_tx, mut chunks) = mpsc::channel(1);
        let target = PgTarget::parse("app", &url).unwrap();
        tokio::spawn(reader("app".into(), target, 1, requests_rx, chunks_tx));
        let request = ChunkRequest {
            k: 1,
            table: SnapshotTable { schema: "public".into(), table: "t".into() },
            after: None,
            key_columns: None,
            limit_rows: 100,
            received_xids: vec![xid as u32],
        };
        requests.send(request).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), chunks.recv()).await;
        assert!(early.is_err(), "read while a received transaction was invisible: {early:?}");
        open.batch_execute("COMMIT").await.unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(30), chunks.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(chunk.rows, vec![vec![Some("1".to_string()), Some("new".to_string())]]);
    }
}
