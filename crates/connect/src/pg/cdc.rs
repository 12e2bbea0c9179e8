//! Postgres change data capture: logical replication with `pgoutput` (protocol v1) into the log.
//!
//! The source owns a publication and a logical replication slot (created on first start). Each
//! committed transaction becomes one event per row change, routed to a topic per table, keyed
//! by the table's replica-identity columns (its primary key by default) so per-row order is
//! per-key order in the log.
//!
//! Durability protocol (one cycle per batch of transactions):
//! 1. before appending, the source stores its state — the last durable position and the end
//!    offsets of every partition the batch may touch (the *marks*) — in `__connectors`;
//! 2. the batch is appended; the append returns once it is durable;
//! 3. only then is the end LSN of the batch's last complete transaction reported to Postgres as
//!    flushed, so the slot's `confirmed_flush_lsn` never passes what the log holds.
//!
//! (Tests simulate a crash between 2 and 3 with the failpoint
//! [`crate::failpoint::AFTER_APPEND_BEFORE_ACK`].)
//!
//! The append of one batch runs while the next is decoded (decoding and appending cost about
//! the same CPU, so doing them in turn left a core idle). At most one append is in flight, and
//! it is settled — awaited, its position acknowledged — before the next batch's marks are
//! stored or its append starts, before any position is acknowledged, and before the stream loop
//! returns on any path: the cycle above is unchanged, only shifted. Memory is at most two
//! batches (`batch_events_max` events, `buffer_bytes_max` bytes each).
//!
//! After a crash, streaming restarts at the slot's confirmed position (never later than the log)
//! and Postgres re-sends the transactions after it. Event ids are `<source>:<commit LSN>:<n>`
//! (n = the change's position in its transaction), so a re-sent change has the id it had; the
//! ids stored since the marks are read back once at start, and re-sent changes already in the
//! log are dropped — nothing appends twice, however long the process was down. Transactions
//! that end before the stored durable position are skipped outright.
//!
//! Other invariants: a TOASTed value Postgres did not send is listed in `unchanged` (Debezium's
//! placeholder in the Debezium payload), never written as NULL; a relation's columns are
//! whatever its latest `Relation` message said, so added and dropped columns need no restart;
//! a missing slot is never silently recreated when the source had a position in it
//! (`on_slot_lost`); an idle source writes a heartbeat (a non-transactional logical message)
//! every `heartbeat_interval_ms`, and acknowledges it once everything before it is durable, so an
//! idle database's slot keeps advancing and holds no WAL.
//!
//! The initial snapshot (`snapshot = "initial"`) runs inside this loop while streaming goes on;
//! its algorithm and guarantees are described in [`super::snapshot`].
//!
//! Tables added and removed: the state records every captured table and how its earlier rows
//! were taken ([`Capture`]). At each start the publication's tables are compared with it
//! (`reconcile_tables`): a table added to `tables` (or, under `FOR ALL TABLES`, one the source
//! did not know) gets the same incremental snapshot, planned and stored before streaming starts
//! (appended to a snapshot still running); with `snapshot = "never"` a warning names it instead.
//! A removed table leaves the plan, its changes still in the slot are dropped, and the log says
//! so. Under `FOR ALL TABLES`, a table created while the source streams is recorded as such when
//! its first change arrives (the stream has all its rows); one created while the source was
//! stopped is also snapshotted, so its rows may arrive both as inserts and as `read`s — each
//! the row's full state at its own position, in order, so folding them ends right.
//!
//! Outbox tables (`postgres_outbox`, `mode = "cdc"`): relayed rows are deleted once their events
//! are durable and before their position is acknowledged (see [`crate::outbox`]), and the rows
//! waiting are counted every second for `outbox_backlog_rows`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_core::{Event, InvalidEvent, RawEvent};
use pg_walstream::{ColumnData, LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::snapshot::{
    self, Chunk, ChunkRequest, SnapshotProgress, Watermark, Window, SNAPSHOT_PREFIX,
};
use super::types::{is_json, text_to_json, TypeCatalog};
use super::{format_lsn, pg_error, quote_ident, quote_literal, quote_table, PgTarget};
use crate::config::{OnSlotLost, Payload, PgCdcConfig, SnapshotMode};
use crate::error::{ConnectError, Result};
use crate::outbox::{row_to_event, OutboxRow};
use crate::runtime::{SourceContext, SourceState};

/// Prefix of the heartbeat logical messages this source writes.
pub const HEARTBEAT_PREFIX: &str = "driftless.heartbeat";
/// How often slot lag is measured and the heartbeat considered.
const LAG_POLL_MS: u64 = 1_000;
/// How often an idle source refreshes its stored position.
const STATE_REFRESH_MS: u64 = 5_000;
/// Longest replication slot or publication name Postgres accepts, in bytes.
const PG_NAME_BYTES_MAX: usize = 63;
/// Most outbox row ids deleted by one statement.
const OUTBOX_DELETE_IDS_MAX: usize = 1_000;
/// Debezium's marker for a TOASTed value that was not sent.
pub const DEBEZIUM_UNAVAILABLE: &str = "__debezium_unavailable_value";
/// Microseconds between the Unix epoch and Postgres's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// What the source stores in `__connectors` (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CdcState {
    /// The slot this position belongs to.
    pub slot: String,
    /// End LSN of a transaction known durable in the log, and everything before it (a lower
    /// bound: the slot may be further ahead).
    pub confirmed_lsn: u64,
    /// Partition end offsets recorded before an append that may not have completed.
    #[serde(default)]
    pub pending: Option<BTreeMap<String, Vec<u64>>>,
    /// The snapshot still to finish (`None`: none planned, or done): the initial one, or that
    /// of tables added since.
    #[serde(default)]
    pub snapshot: Option<SnapshotProgress>,
    /// Every table the source captures (`schema.table`), as of its last start, and how its rows
    /// from before its capture were taken; compared at each start with the publication's tables
    /// to find the added and removed ones. `None`: written by a version that did not record them.
    #[serde(default)]
    pub tables: Option<BTreeMap<String, Capture>>,
}

/// How a captured table's rows from before its capture reach the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capture {
    /// Read by a snapshot (planned, running or done).
    Snapshot,
    /// None to read: the table was created while captured (`FOR ALL TABLES`), so the stream
    /// carries every row it ever had.
    Created,
    /// Skipped: `snapshot = "never"` when the table was taken on; only its changes since flow.
    ChangesOnly,
}

/// The deterministic event id of change `ordinal` of the transaction committed at `commit_lsn`.
pub fn event_id(source: &str, commit_lsn: u64, ordinal: u32) -> String {
    format!("{source}:{commit_lsn:016X}:{ordinal}")
}

/// The default slot (and publication) name of a source.
pub fn default_slot_name(source: &str) -> String {
    format!("driftless_{}", source.to_ascii_lowercase().replace('-', "_"))
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    type_oid: u32,
}

#[derive(Debug, Clone)]
struct Relation {
    schema: String,
    table: String,
    columns: Vec<Column>,
    /// Indexes of the key columns.
    key: Vec<usize>,
    topic: String,
    is_outbox: bool,
    /// Not captured any more (removed from `tables`): its changes still in the slot are dropped.
    ignored: bool,
    /// `schema.table`, and the event type of each `Op` (`schema.table.op`): formatted once per
    /// relation instead of once per change.
    qualified: String,
    event_types: [String; 5],
}

impl Relation {
    fn qualified(&self) -> String {
        self.qualified.clone()
    }

    fn event_type(&self, op: Op) -> String {
        self.event_types[op as usize].clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// A row read by the snapshot.
    Read,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
    fn debezium(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Insert => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }
}

/// A transaction being received.
struct Txn {
    commit_lsn: u64,
    xid: u32,
    commit_time_us: i64,
    /// Every change's `pglsn` and `time`, formatted once per transaction.
    lsn_text: Value,
    time_text: String,
    /// Already durable (ends before the stored position): read past it.
    skip: bool,
    ordinal: u32,
    events: Vec<(String, Built)>,
    bytes: usize,
    /// Events of this transaction already appended in an earlier (memory-bounded) batch.
    flushed_early: bool,
    /// The snapshot window open when this transaction's changes were decoded, and the keys of
    /// the window's table they changed (`None` = a truncate).
    snapshot_window: Option<u64>,
    snapshot_keys: Vec<Option<String>>,
    /// Keys of the outbox rows it relays while a snapshot runs.
    relayed_keys: Vec<String>,
    /// Ids of the outbox rows it relays (or found already relayed), deleted once durable.
    outbox_ids: Vec<String>,
}

impl Txn {
    fn new(commit_lsn: u64, xid: u32, commit_time_us: i64, skip: bool) -> Self {
        Self {
            commit_lsn,
            xid,
            commit_time_us,
            lsn_text: Value::String(format_lsn(commit_lsn)),
            time_text: rfc3339_from_unix_us(commit_time_us),
            skip,
            ordinal: 0,
            events: Vec::new(),
            bytes: 0,
            flushed_early: false,
            snapshot_window: None,
            snapshot_keys: Vec::new(),
            relayed_keys: Vec::new(),
            outbox_ids: Vec::new(),
        }
    }
}

/// Events waiting to be appended, and the position they complete.
#[derive(Default)]
struct Batch {
    events: Vec<(String, Built)>,
    bytes: usize,
    /// Highest position that is durable once `events` are.
    ack_lsn: Option<u64>,
    /// Commit times (Unix µs) of the transactions in `events`, for the latency histogram.
    commit_times_us: Vec<i64>,
    /// Snapshot progress reached once `events` are durable.
    snapshot_progress: Option<SnapshotProgress>,
    /// Outbox rows to delete once `events` are durable.
    outbox_ids: Vec<String>,
}

/// A batch being appended while the next one is decoded.
struct InFlight {
    task: tokio::task::JoinHandle<Result<()>>,
    count: u64,
    /// What `Batch::ack_lsn` and `Batch::commit_times_us` were for these events.
    ack_lsn: Option<u64>,
    commit_times_us: Vec<i64>,
    outbox_ids: Vec<String>,
}

/// Waits for the append in flight, if any; never completes when there is none (a `select!`
/// branch).
async fn append_done(
    inflight: &mut Option<InFlight>,
) -> std::result::Result<Result<()>, tokio::task::JoinError> {
    match inflight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// The snapshot as this run executes it.
struct SnapshotRun {
    /// Distinguishes this run's watermarks from those of earlier runs still in the slot.
    run: u64,
    /// The last chunk requested.
    k: u64,
    requests: mpsc::Sender<ChunkRequest>,
    chunks: mpsc::Receiver<Result<Chunk>>,
    /// The window of the chunk in flight.
    window: Option<Window>,
    /// Its rows, once handed over (before its high watermark arrives).
    rows: Option<Chunk>,
    /// Keys of the outbox rows the stream relayed during this run that no chunk read yet.
    relayed: HashSet<String>,
    _reader: AbortOnDrop,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Cdc<'a> {
    name: &'a str,
    config: &'a PgCdcConfig,
    database: String,
    /// Every event's `source`: `/pg/<database>`.
    event_source: String,
    client: Arc<tokio_postgres::Client>,
    catalog: TypeCatalog,
    relations: HashMap<u32, Relation>,
    state: CdcState,
    /// Marks stored for the current unacknowledged stretch of appends.
    marks: Option<BTreeMap<String, Vec<u64>>>,
    /// Ids found in the log since the stored marks at start, and the server's WAL position at
    /// start (every transaction appended before the restart committed before it); dropped once
    /// the acknowledged position passes it.
    recovered: Option<(HashSet<String>, u64)>,
    last_activity_ms: Arc<AtomicI64>,
    last_state_write: Instant,
    snapshot: Option<SnapshotRun>,
    /// The append started by the last flush, until it is settled.
    inflight: Option<InFlight>,
    /// The xids of the last [`snapshot::RECEIVED_XIDS_MAX`] transactions the stream received,
    /// oldest first: a chunk request carries them, so the reader can refuse a snapshot that
    /// still counts one of them as running (see `super::snapshot`).
    received_xids: VecDeque<u32>,
    /// The tables the source captures when `tables` lists them (`schema.table`); changes of
    /// other tables (removed ones still in the slot) are dropped. `None`: every table.
    captured: Option<HashSet<String>>,
    /// `DELETE FROM <outbox> WHERE id = ANY($1)` when reading an outbox.
    outbox_delete: Option<String>,
}

/// Runs the CDC source until shutdown or a failure.
pub async fn run(name: &str, config: &PgCdcConfig, ctx: &mut SourceContext) -> Result<()> {
    let target = PgTarget::parse(name, config.url.expose())?;
    let slot = config.slot.clone().unwrap_or_else(|| default_slot_name(name));
    let publication = config.publication.clone().unwrap_or_else(|| slot.clone());
    for (field, value) in [("slot", &slot), ("publication", &publication)] {
        if value.is_empty()
            || value.len() > PG_NAME_BYTES_MAX
            || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConnectError::Config {
                source_name: name.into(),
                field: field.into(),
                reason: format!(
                    "`{value}`: use 1 to {PG_NAME_BYTES_MAX} characters from [a-z0-9_]"
                ),
            });
        }
    }
    let client = Arc::new(target.connect(name).await?);
    let catalog = TypeCatalog::load(&client).await.map_err(pg_error(name, "reading pg_type"))?;
    setup_publication(name, &client, &publication, config).await?;
    // A REPLICA IDENTITY FULL table marks every column as its identity: its primary key, when
    // it has one, keys its events (else each update would key a row anew: another partition,
    // no per-row order).
    let full_keys = check_tables(name, &client, &publication, config).await?;
    let mut config = config.clone();
    for (table, key) in full_keys {
        config.key_columns.entry(table).or_insert(key);
    }
    let config = &config;

    let mut state = match ctx.emitter.state() {
        Some(bytes) => serde_json::from_slice::<CdcState>(&bytes)
            .map_err(|e| ConnectError::State { source_name: name.into(), reason: e.to_string() })?,
        None => CdcState::default(),
    };
    if state.slot != slot {
        if !state.slot.is_empty() {
            tracing::warn!(source = name, old = %state.slot, new = %slot,
                "the configured slot changed; starting from the new slot's position");
        }
        state = CdcState { slot: slot.clone(), ..CdcState::default() };
    }
    prepare_slot(name, &client, &slot, &publication, config, &mut state, ctx).await?;
    let captured = reconcile_tables(name, &client, &publication, config, &mut state).await?;
    if state.snapshot.is_some() && config.snapshot == SnapshotMode::Never {
        tracing::warn!(source = name, "snapshot = \"never\": abandoning the unfinished snapshot");
        state.snapshot = None;
    }
    ctx.emitter.put_state(encode_state(&state)).await?;

    let recovered = match &state.pending {
        Some(marks) => {
            // Every id since the marks (outbox rows keep their own ids, so no filter by
            // format). A transaction that was appended before this start committed before
            // the server's current WAL position, so the set is needed only until the
            // acknowledged position passes that.
            let ours = ctx.emitter.ids_since(marks.clone()).await?;
            let max = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(pg_error(name, "reading the current WAL position"))
                .map(|row| super::parse_lsn(&row.get::<_, String>(0)).unwrap_or(u64::MAX))?;
            tracing::info!(
                source = name,
                ids = ours.len(),
                "recovered ids appended before a restart"
            );
            Some((ours, max))
        }
        None => None,
    };

    // TLS for the replication stream: through the relay of driftless_pgtls unless the mode
    // (or a `prefer` server without TLS) says plain; it must outlive the client.
    let endpoint = driftless_pgtls::ReplicationEndpoint::start(&target.pg).await.map_err(|e| {
        ConnectError::Replication { source_name: name.into(), reason: e.to_string() }
    })?;
    let mut repl_config = ReplicationConfig::new(
        endpoint.host().to_string(),
        target.user.clone(),
        target.password.clone(),
        target.database.clone(),
        slot.clone(),
        publication.clone(),
    )
    .with_port(endpoint.port())
    .with_start_lsn(Lsn(state.confirmed_lsn))
    .with_ack_lsn(Lsn(state.confirmed_lsn))
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(1))
    // Values arrive in text form rendered with the walsender's settings: pin the ones that
    // change how dates and times print.
    .with_options(
        "-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3",
    );
    repl_config.application_name = Some(format!("driftless-{name}"));
    let mut repl = ReplicationClient::connect(repl_config).await.map_err(|e| {
        match repl_error(name, e) {
            // Name the server (without the password) as every connection error does.
            ConnectError::Replication { source_name, reason } => ConnectError::Replication {
                source_name,
                reason: format!(
                    "cannot open the replication connection to {}: {reason}",
                    target.pg.redacted_url()
                ),
            },
            other => other,
        }
    })?;

    let last_activity_ms = Arc::new(AtomicI64::new(now_ms()));
    let outbox_table = config.outbox.as_ref().map(|o| quote_table(&o.table));
    let _background = AbortOnDrop(tokio::spawn(heartbeat_and_lag(
        name.to_string(),
        Arc::clone(&client),
        slot.clone(),
        config.heartbeat_interval_ms,
        Arc::clone(&last_activity_ms),
        Arc::clone(&ctx.status),
        outbox_table.clone(),
    )));
    let snapshot = match &state.snapshot {
        Some(progress) => {
            ctx.status.snapshot_rows_total.store(progress.rows_total, Ordering::Relaxed);
            ctx.status.snapshot_rows_done.store(progress.rows_done, Ordering::Relaxed);
            ctx.status.set_state(SourceState::Snapshotting, None);
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            // Capacity 1: the reader never runs ahead of the stream loop by more than a chunk.
            let (requests, requests_rx) = mpsc::channel(1);
            let (chunks_tx, chunks) = mpsc::channel(1);
            let reader = tokio::spawn(snapshot::reader(
                name.to_string(),
                target.clone(),
                run,
                requests_rx,
                chunks_tx,
            ));
            Some(SnapshotRun {
                run,
                k: 0,
                requests,
                chunks,
                window: None,
                rows: None,
                relayed: HashSet::new(),
                _reader: AbortOnDrop(reader),
            })
        }
        None => {
            ctx.status.set_state(SourceState::Running, None);
            None
        }
    };
    let mut cdc = Cdc {
        name,
        config,
        database: target.database.clone(),
        event_source: format!("/pg/{}", target.database),
        client,
        catalog,
        relations: HashMap::new(),
        // While ids recovered at start are in use, the marks they came from stay stored: a
        // second crash before Postgres's position passes them must find them again.
        marks: state.pending.clone(),
        state,
        recovered,
        last_activity_ms,
        last_state_write: Instant::now(),
        snapshot,
        inflight: None,
        received_xids: VecDeque::new(),
        captured,
        outbox_delete: outbox_table
            .map(|table| format!("DELETE FROM {table} WHERE id::text = ANY($1)")),
    };
    let mut result = match cdc.request_chunk(ctx).await {
        Ok(()) => cdc.stream(&mut repl, ctx).await,
        Err(e) => Err(e),
    };
    // No append may outlive this run (a restart must not race it): settle it on a clean stop,
    // and still wait for it after a failure, without acknowledging anything.
    if result.is_ok() {
        result = cdc.settle(&repl, ctx).await;
    } else if let Some(f) = cdc.inflight.take() {
        let _ = f.task.await;
    }
    repl.stop();
    if result.is_ok() {
        // A clean stop stores the acknowledged position, so the next start skips what the
        // slot may replay (its feedback can lag by a status interval) without a scan.
        cdc.state.pending = cdc.marks.clone();
        ctx.emitter.put_state(encode_state(&cdc.state)).await?;
    }
    result
}

fn repl_error(name: &str, e: pgwire_replication::PgWireError) -> ConnectError {
    let text = driftless_core::redact(&e.to_string());
    if text.contains("can no longer get changes") || text.contains("does not exist") {
        return ConnectError::SlotLost {
            source_name: name.into(),
            slot: String::new(),
            reason: text,
        };
    }
    ConnectError::Replication { source_name: name.into(), reason: text }
}

fn encode_state(state: &CdcState) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

/// Wall time in Unix ms, from the project's one clock.
fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

/// Creates the publication, or brings its table list in line with the configuration.
async fn setup_publication(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
    config: &PgCdcConfig,
) -> Result<()> {
    let exists = client
        .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(pg_error(name, "reading pg_publication"))?;
    let tables: Vec<String> = config.tables.iter().map(|t| quote_table(t)).collect();
    let sql = match (exists, tables.is_empty()) {
        (None, true) => format!("CREATE PUBLICATION {} FOR ALL TABLES", quote_ident(publication)),
        (None, false) => {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                tables.join(", ")
            )
        }
        (Some(row), false) if !row.get::<_, bool>(0) => {
            format!(
                "ALTER PUBLICATION {} SET TABLE {}",
                quote_ident(publication),
                tables.join(", ")
            )
        }
        (Some(row), true) if !row.get::<_, bool>(0) => {
            return Err(ConnectError::Config {
                source_name: name.into(),
                field: "tables".into(),
                reason: format!(
                    "publication `{publication}` exists for a list of tables; list them in \
                     `tables`, or drop the publication to capture every table"
                ),
            })
        }
        (Some(_), _) => return Ok(()),
    };
    client.batch_execute(&sql).await.map_err(|error| match error.as_db_error() {
        Some(db) if db.code().code() == "42P01" => ConnectError::Table {
            source_name: name.into(),
            table: config.tables.join(", "),
            reason: format!("{}; create it or remove it from `tables`", db.message()),
        },
        _ => ConnectError::Postgres {
            source_name: name.into(),
            what: format!("setting up publication `{publication}`"),
            error,
        },
    })
}

/// Refuses tables whose changes could not be keyed; returns the primary key columns of the
/// `REPLICA IDENTITY FULL` tables that have one.
async fn check_tables(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
    config: &PgCdcConfig,
) -> Result<Vec<(String, Vec<String>)>> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                    (SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i \
                       CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(att, n) \
                       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.att \
                     WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg_error(name, "reading the publication's tables"))?;
    let mut full_keys = Vec::new();
    for row in rows {
        let (schema, table, identity, has_pk): (String, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let qualified = format!("{schema}.{table}");
        if let (true, Some(pk)) = (identity == "f", row.get::<_, Option<Vec<String>>>(4)) {
            full_keys.push((qualified.clone(), pk));
        }
        let keyed = match identity.as_str() {
            "d" => has_pk,
            "i" | "f" => true,
            _ => false,
        };
        if !keyed {
            return Err(ConnectError::Table {
                source_name: name.into(),
                table: qualified.clone(),
                reason: format!(
                    "it has no primary key and replica identity {}, so its updates and deletes \
                     cannot be keyed; add a primary key, or run ALTER TABLE {} REPLICA IDENTITY \
                     FULL (and set key_columns.\"{qualified}\" to choose the event key)",
                    match identity.as_str() {
                        "n" => "NOTHING",
                        _ => "DEFAULT",
                    },
                    quote_table(&qualified)
                ),
            });
        }
        if let Some(cols) = config.key_columns.get(&qualified) {
            if cols.is_empty() {
                return Err(ConnectError::Config {
                    source_name: name.into(),
                    field: format!("key_columns.\"{qualified}\""),
                    reason: "list at least one column".into(),
                });
            }
        }
    }
    Ok(full_keys)
}

/// Compares the publication's tables with those the source captured at its last start
/// (`CdcState::tables`). An added table gets a snapshot (`snapshot = "initial"`), incremental
/// and merged into the stream like the initial one, appended to the plan of a snapshot still
/// running; with `snapshot = "never"` a warning names it. A removed table leaves the plan, and
/// the log says so. The result is stored with the state before streaming starts, so a crash
/// cannot lose an added table's snapshot. Returns the tables the stream keeps changes of
/// (`None`: every table, `FOR ALL TABLES`).
async fn reconcile_tables(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
    config: &PgCdcConfig,
    state: &mut CdcState,
) -> Result<Option<HashSet<String>>> {
    let mut published = snapshot::published_tables(name, client, publication).await?;
    let captured: Option<HashSet<String>> =
        (!config.tables.is_empty()).then(|| config.tables.iter().cloned().collect());
    if let Some(captured) = &captured {
        // A publication for all tables that `tables` narrows (one the source did not create).
        published.retain(|p| captured.contains(&p.table.qualified()));
    }
    let taken = match config.snapshot {
        SnapshotMode::Initial => Capture::Snapshot,
        SnapshotMode::Never => Capture::ChangesOnly,
    };
    let Some(mut known) = state.tables.take() else {
        // A new slot (whose plan, if any, lists these very tables), or a position stored before
        // the tables were recorded: every table published now counts as taken on.
        state.tables = Some(published.iter().map(|p| (p.table.qualified(), taken)).collect());
        return Ok(captured);
    };
    let names: BTreeSet<String> = published.iter().map(|p| p.table.qualified()).collect();
    let removed: Vec<String> = known.keys().filter(|t| !names.contains(*t)).cloned().collect();
    for table in removed {
        known.remove(&table);
        if let Some(plan) = state.snapshot.as_mut() {
            snapshot::drop_from_plan(plan, &table);
        }
        tracing::info!(source = name, table = %table,
            "the table is no longer captured: its changes are not emitted any more");
    }
    let added: Vec<snapshot::PublishedTable> =
        published.into_iter().filter(|p| !known.contains_key(&p.table.qualified())).collect();
    let added_names: Vec<String> = added.iter().map(|p| p.table.qualified()).collect();
    if !added.is_empty() {
        match config.snapshot {
            SnapshotMode::Initial => {
                let plan =
                    snapshot::extend_plan(name, client, state.snapshot.take(), &added).await?;
                tracing::info!(source = name, tables = %added_names.join(", "),
                    rows = plan.rows_total, "tables added: snapshotting their existing rows while streaming");
                state.snapshot = Some(plan);
            }
            SnapshotMode::Never => {
                tracing::warn!(source = name, tables = %added_names.join(", "),
                    "tables added with snapshot = \"never\": their existing rows are not read, \
                     only their changes from now on; to read them, stop the source, remove the \
                     tables, start it, then add them back with snapshot = \"initial\"");
            }
        }
    }
    for table in added_names {
        known.insert(table, taken);
    }
    if state.snapshot.as_ref().is_some_and(|p| p.table.is_none()) {
        // Every table it still had to read was removed.
        state.snapshot = None;
    }
    state.tables = Some(known);
    Ok(captured)
}

/// Creates the slot on first start; applies `on_slot_lost` when a slot this source had a
/// position in is gone or invalidated. A new slot gets a snapshot plan (`snapshot =
/// "initial"`), stored before the slot is created so a crash in between cannot lose it.
async fn prepare_slot(
    name: &str,
    client: &tokio_postgres::Client,
    slot: &str,
    publication: &str,
    config: &PgCdcConfig,
    state: &mut CdcState,
    ctx: &SourceContext,
) -> Result<()> {
    let policy = config.on_slot_lost;
    let row = client
        .query_opt(
            "SELECT plugin::text, coalesce(wal_status, ''), database::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg_error(name, "reading pg_replication_slots"))?;
    let lost_reason = match &row {
        None if state.confirmed_lsn > 0 => Some("the slot does not exist any more".to_string()),
        Some(r) if r.get::<_, String>(1) == "lost" => {
            Some("Postgres invalidated it (max_slot_wal_keep_size exceeded)".to_string())
        }
        Some(r) if r.get::<_, String>(0) != "pgoutput" => {
            return Err(ConnectError::Config {
                source_name: name.into(),
                field: "slot".into(),
                reason: format!(
                    "slot `{slot}` exists with plugin `{}`, not pgoutput; choose another name",
                    r.get::<_, String>(0)
                ),
            })
        }
        _ => None,
    };
    if let Some(reason) = lost_reason {
        match policy {
            OnSlotLost::Fail => {
                return Err(ConnectError::SlotLost {
                    source_name: name.into(),
                    slot: slot.into(),
                    reason,
                })
            }
            OnSlotLost::Resnapshot => {
                tracing::warn!(source = name, slot, %reason, "slot lost; creating a new one");
                if row.is_some() {
                    client
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await
                        .map_err(pg_error(name, "dropping the lost slot"))?;
                }
                *state = CdcState { slot: slot.into(), ..CdcState::default() };
            }
        }
    } else if row.is_some() {
        return Ok(());
    }
    if config.snapshot == SnapshotMode::Initial {
        let plan = snapshot::plan(name, client, publication).await?;
        tracing::info!(
            source = name,
            tables = plan.tables.len() + usize::from(plan.table.is_some()),
            rows = plan.rows_total,
            "planned the initial snapshot"
        );
        state.snapshot = Some(plan);
        ctx.emitter.put_state(encode_state(state)).await?;
    }
    let created = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(pg_error(name, format!("creating replication slot `{slot}`")))?;
    let lsn: String = created.get(0);
    state.confirmed_lsn = super::parse_lsn(&lsn).unwrap_or(0);
    state.pending = None;
    tracing::info!(source = name, slot, lsn = %lsn, "created replication slot");
    Ok(())
}

/// Measures slot lag every second, counts the outbox rows waiting (`outbox_table`, quoted; at
/// most every [`crate::outbox::BACKLOG_REFRESH_MS`], paused or not), and writes a heartbeat when
/// the source was idle for `heartbeat_interval_ms`.
async fn heartbeat_and_lag(
    name: String,
    client: Arc<tokio_postgres::Client>,
    slot: String,
    heartbeat_interval_ms: u64,
    last_activity_ms: Arc<AtomicI64>,
    status: Arc<crate::runtime::SourceStatus>,
    outbox_table: Option<String>,
) {
    let mut last_heartbeat_ms = now_ms();
    let count_sql = outbox_table.map(|table| format!("SELECT count(*) FROM {table}"));
    let mut counted: Option<Instant> = None;
    loop {
        if let Some(sql) = &count_sql {
            let due = counted.is_none_or(|at| {
                at.elapsed() >= Duration::from_millis(crate::outbox::BACKLOG_REFRESH_MS)
            });
            if due {
                counted = Some(Instant::now());
                match client.query_one(sql.as_str(), &[]).await {
                    Ok(row) => status.outbox_backlog_rows.store(row.get(0), Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!(source = %name, error = %e, "counting outbox rows failed")
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(LAG_POLL_MS.min(heartbeat_interval_ms))).await;
        let lag = client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match lag {
            Ok(Some(row)) => {
                let bytes: Option<i64> = row.get(0);
                status.slot_lag_bytes.store(bytes.unwrap_or(-1), Ordering::Relaxed);
            }
            Ok(None) => status.slot_lag_bytes.store(-1, Ordering::Relaxed),
            Err(e) => tracing::debug!(source = %name, error = %e, "measuring slot lag failed"),
        }
        let now = now_ms();
        let idle_since = last_activity_ms.load(Ordering::Relaxed).max(last_heartbeat_ms);
        if now - idle_since >= heartbeat_interval_ms as i64 {
            last_heartbeat_ms = now;
            let sql = format!(
                "SELECT pg_logical_emit_message(false, {}, {})",
                quote_literal(HEARTBEAT_PREFIX),
                quote_literal(&name)
            );
            if let Err(e) = client.batch_execute(&sql).await {
                tracing::warn!(source = %name, error = %e, "heartbeat failed");
            }
        }
    }
}

impl Cdc<'_> {
    async fn stream(
        &mut self,
        repl: &mut ReplicationClient,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        let mut parser = LogicalReplicationParser::with_protocol_version(1);
        let mut txn: Option<Txn> = None;
        let mut batch = Batch::default();
        loop {
            if batch.events.len() >= self.config.batch_events_max
                || batch.bytes >= self.config.buffer_bytes_max
            {
                self.flush(&mut batch, repl, ctx).await?;
                continue;
            }
            // Otherwise flush when nothing more is immediately available: batches grow while
            // an append is in flight and shrink to one transaction when traffic is light.
            // An append in flight is settled as soon as it completes, so its position is
            // acknowledged without waiting for more traffic.
            let event = if batch.events.is_empty() && batch.ack_lsn.is_none() {
                if self.inflight.is_none() && !ctx.wait_while_paused().await {
                    return Ok(());
                }
                tokio::select! {
                    r = repl.recv() => r,
                    chunk = next_chunk(&mut self.snapshot) => {
                        self.on_chunk(chunk)?;
                        continue;
                    }
                    done = append_done(&mut self.inflight) => {
                        self.finish(done, repl, ctx).await?;
                        continue;
                    }
                    () = ctx.shutdown_signal() => return Ok(()),
                }
            } else {
                let idle = self.inflight.is_none();
                tokio::select! {
                    biased;
                    r = repl.recv() => r,
                    () = std::future::ready(()), if idle => {
                        self.flush(&mut batch, repl, ctx).await?;
                        continue;
                    }
                    done = append_done(&mut self.inflight) => {
                        self.finish(done, repl, ctx).await?;
                        self.flush(&mut batch, repl, ctx).await?;
                        continue;
                    }
                }
            };
            let Some(event) = event.map_err(|e| repl_error(self.name, e))? else {
                return Err(ConnectError::Replication {
                    source_name: self.name.into(),
                    reason: "the server ended the replication stream".into(),
                });
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                    txn = Some(Txn::new(
                        final_lsn.0,
                        xid,
                        commit_time_micros + PG_EPOCH_OFFSET_US,
                        final_lsn.0 < self.state.confirmed_lsn,
                    ));
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let message = parser
                        .parse_wal_message_bytes(data)
                        .map_err(|e| ConnectError::Replication {
                            source_name: self.name.into(),
                            reason: format!("undecodable pgoutput message: {e}"),
                        })?
                        .message;
                    self.on_message(message, txn.as_mut(), ctx).await?;
                    if let Some(t) = txn.as_mut() {
                        if t.bytes + batch.bytes >= self.config.buffer_bytes_max {
                            // One transaction larger than the buffer: append what is decoded
                            // so far (without acknowledging) to bound memory.
                            t.flushed_early = true;
                            batch.bytes += std::mem::take(&mut t.bytes);
                            batch.events.append(&mut t.events);
                            batch.outbox_ids.append(&mut t.outbox_ids);
                            self.flush(&mut batch, repl, ctx).await?;
                        }
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(mut t) = txn.take() else { continue };
                    if self.received_xids.len() >= snapshot::RECEIVED_XIDS_MAX {
                        self.received_xids.pop_front();
                    }
                    self.received_xids.push_back(t.xid);
                    self.close_txn_keys(&mut t);
                    if !t.skip {
                        let size = t.ordinal;
                        if !t.flushed_early {
                            for (_, e) in &mut t.events {
                                e.set_txsize(size);
                            }
                        }
                        batch.bytes += t.bytes;
                        batch.events.append(&mut t.events);
                        batch.outbox_ids.append(&mut t.outbox_ids);
                        batch.commit_times_us.push(t.commit_time_us);
                        if size > 0 {
                            self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
                        }
                    }
                    batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(end_lsn.0));
                }
                ReplicationEvent::Message { transactional: false, lsn, prefix, content } => {
                    if prefix == HEARTBEAT_PREFIX && txn.is_none() {
                        batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(lsn.0));
                    } else if prefix == SNAPSHOT_PREFIX {
                        self.on_watermark(lsn.0, &content, txn.is_none(), &mut batch)?;
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    // Everything before the server's sent position has reached us.
                    if txn.is_none() && wal_end.0 > self.state.confirmed_lsn {
                        batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(wal_end.0));
                    }
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    /// Settles the append in flight, then starts appending the batch (after storing the
    /// marks); its position is acknowledged when it is settled. A batch without events, or
    /// one that completes a snapshot chunk, is settled before this returns.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        repl: &ReplicationClient,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        self.settle(repl, ctx).await?;
        let events = std::mem::take(&mut batch.events);
        let count = events.len() as u64;
        batch.bytes = 0;
        if !events.is_empty() {
            let topics: BTreeSet<String> = events.iter().map(|(t, _)| t.clone()).collect();
            let marks = self.marks.get_or_insert_with(BTreeMap::new);
            let missing: Vec<String> =
                topics.into_iter().filter(|t| !marks.contains_key(t)).collect();
            if !missing.is_empty() {
                let new_marks = ctx.emitter.end_offsets(missing).await?;
                marks.extend(new_marks);
                self.state.pending = Some(marks.clone());
                ctx.emitter.put_state(encode_state(&self.state)).await?;
                self.last_state_write = Instant::now();
            }
            // Encoded here, where the events were built (see `Emitter::encode`).
            let events = events
                .into_iter()
                .enumerate()
                .map(|(index, (topic, e))| {
                    e.encode()
                        .map(|raw| (topic, raw))
                        .map_err(|source| ctx.emitter.invalid_event(index, source))
                })
                .collect::<Result<Vec<_>>>()?;
            let emitter = ctx.emitter.clone();
            self.inflight = Some(InFlight {
                task: tokio::spawn(async move { emitter.emit_raw(events).await }),
                count,
                ack_lsn: batch.ack_lsn.take(),
                commit_times_us: std::mem::take(&mut batch.commit_times_us),
                outbox_ids: std::mem::take(&mut batch.outbox_ids),
            });
            if batch.snapshot_progress.is_none() {
                return Ok(());
            }
            self.settle(repl, ctx).await?;
        }
        // Rows whose every event was found relayed before a restart: durable already.
        self.delete_outbox_rows(std::mem::take(&mut batch.outbox_ids)).await?;
        self.acknowledge(batch.ack_lsn.take(), count, batch.snapshot_progress.is_some(), repl, ctx)
            .await?;
        if let Some(progress) = batch.snapshot_progress.take() {
            // The chunk's events are durable (and its high watermark acknowledged): only now may
            // the stored plan move past it.
            ctx.status.snapshot_rows_done.store(progress.rows_done, Ordering::Relaxed);
            self.state.snapshot = Some(progress);
            if self.marks.is_none() {
                self.state.pending = None;
            }
            ctx.emitter.put_state(encode_state(&self.state)).await?;
            self.last_state_write = Instant::now();
            self.request_chunk(ctx).await?;
        }
        Ok(())
    }

    /// Waits for the append in flight, if any, and acknowledges its position.
    async fn settle(&mut self, repl: &ReplicationClient, ctx: &mut SourceContext) -> Result<()> {
        if self.inflight.is_none() {
            return Ok(());
        }
        let done = append_done(&mut self.inflight).await;
        self.finish(done, repl, ctx).await
    }

    /// Completes the append in flight, whose task has ended with `done`: on success its events
    /// are counted and its position acknowledged.
    async fn finish(
        &mut self,
        done: std::result::Result<Result<()>, tokio::task::JoinError>,
        repl: &ReplicationClient,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        let Some(f) = self.inflight.take() else { return Ok(()) };
        done.map_err(|join| ConnectError::State {
            source_name: self.name.into(),
            reason: format!("a log append task ended abnormally: {join}"),
        })??;
        ctx.failpoints.after_append_before_ack(self.name)?;
        self.delete_outbox_rows(f.outbox_ids).await?;
        let now = now_ms();
        ctx.status.appended(f.count, now);
        ctx.status.rows_total.fetch_add(f.count, Ordering::Relaxed);
        for t in f.commit_times_us {
            let waited_us = (now * 1000 - t).max(0) as u64;
            ctx.status.commit_to_durable.observe(Duration::from_micros(waited_us));
        }
        self.acknowledge(f.ack_lsn, f.count, false, repl, ctx).await
    }

    /// Deletes relayed outbox rows, whose events are durable, before their position is
    /// acknowledged: after a crash in between, Postgres sends them again, the ids recovered at
    /// start drop their events, and they are deleted then. Nothing to do when not an outbox.
    async fn delete_outbox_rows(&self, ids: Vec<String>) -> Result<()> {
        let Some(sql) = &self.outbox_delete else { return Ok(()) };
        for chunk in ids.chunks(OUTBOX_DELETE_IDS_MAX) {
            self.client
                .execute(sql.as_str(), &[&chunk])
                .await
                .map_err(pg_error(self.name, "deleting relayed outbox rows"))?;
        }
        Ok(())
    }

    /// Reports `lsn` (durable in the log) to Postgres as flushed; an idle source also refreshes
    /// its stored position now and then.
    async fn acknowledge(
        &mut self,
        lsn: Option<u64>,
        count: u64,
        snapshot_progress: bool,
        repl: &ReplicationClient,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        if let Some(lsn) = lsn {
            if lsn > self.state.confirmed_lsn {
                repl.update_applied_lsn(Lsn(lsn));
                self.state.confirmed_lsn = lsn;
                if self.recovered.as_ref().is_some_and(|(_, max)| lsn > *max) {
                    self.recovered = None;
                }
                if self.recovered.is_none() {
                    self.marks = None;
                }
                if count == 0
                    && !snapshot_progress
                    && self.last_state_write.elapsed().as_millis() as u64 >= STATE_REFRESH_MS
                {
                    self.state.pending = self.marks.clone();
                    ctx.emitter.put_state(encode_state(&self.state)).await?;
                    self.last_state_write = Instant::now();
                }
            }
        }
        Ok(())
    }

    /// Requests the next chunk of the plan and opens its window, or ends the snapshot when the
    /// plan is done.
    async fn request_chunk(&mut self, ctx: &mut SourceContext) -> Result<()> {
        let Some(run) = self.snapshot.as_mut() else { return Ok(()) };
        let next = self.state.snapshot.as_ref().and_then(|p| p.table.clone().map(|t| (p, t)));
        let Some((progress, table)) = next else {
            self.snapshot = None;
            self.state.snapshot = None;
            ctx.emitter.put_state(encode_state(&self.state)).await?;
            self.last_state_write = Instant::now();
            let done = ctx.status.snapshot_rows_done.load(Ordering::Relaxed);
            // The estimate is replaced by the count (rows deleted meanwhile, a removed table).
            if done > 0 {
                ctx.status.snapshot_rows_total.store(done, Ordering::Relaxed);
            }
            if ctx.status.state().0 == SourceState::Snapshotting {
                ctx.status.set_state(SourceState::Running, None);
            }
            tracing::info!(source = self.name, rows = done, "snapshot done");
            return Ok(());
        };
        run.k += 1;
        let request = ChunkRequest {
            k: run.k,
            after: progress.last_key.clone().map(|v| (progress.last_key_columns.clone(), v)),
            key_columns: snapshot::configured_key(self.config, &table),
            limit_rows: self.config.snapshot_chunk_rows,
            table: table.clone(),
            received_xids: self.received_xids.iter().copied().collect(),
        };
        // The window opens before the request leaves: every transaction the stream receives
        // from now on may postdate the chunk's snapshot.
        run.window = Some(Window { k: run.k, table: table.qualified(), ..Window::default() });
        run.rows = None;
        run.requests.try_send(request).map_err(|e| ConnectError::Replication {
            source_name: self.name.into(),
            reason: format!("the snapshot reader is gone ({e})"),
        })
    }

    /// Keeps a chunk's rows until its high watermark arrives; a reader failure ends the source.
    fn on_chunk(&mut self, chunk: Result<Chunk>) -> Result<()> {
        let chunk = chunk?;
        if let Some(run) = self.snapshot.as_mut() {
            run.rows = Some(chunk);
        }
        Ok(())
    }

    /// Adds the keys a committed transaction changed in the window's table to the window, and
    /// the outbox rows it relayed to the run's.
    fn close_txn_keys(&mut self, t: &mut Txn) {
        if let Some(run) = self.snapshot.as_mut() {
            run.relayed.extend(t.relayed_keys.drain(..));
        }
        let Some(window) = self.snapshot.as_mut().and_then(|r| r.window.as_mut()) else { return };
        if t.snapshot_window != Some(window.k) {
            // Decoded before the window opened: committed and flushed before the chunk's
            // snapshot, so visible in it.
            return;
        }
        for key in t.snapshot_keys.drain(..) {
            match key {
                Some(k) => {
                    window.keys.insert(k);
                }
                None => window.all = true,
            }
        }
    }

    /// Records that a change to `key` (`None`: every key) of `rel` was decoded into `t`.
    fn record_key(&self, t: &mut Txn, rel: &Relation, key: Option<&[(String, Value)]>) {
        if rel.is_outbox {
            // A relayed outbox row and a read of it are the same event (the row's id): no chunk
            // of this run may read it, whichever window (if any) was open when it was decoded.
            if let (Some(_), Some(key)) = (&self.snapshot, key) {
                t.relayed_keys.push(key_text(key));
            }
            return;
        }
        let Some(window) = self.snapshot.as_ref().and_then(|r| r.window.as_ref()) else { return };
        if window.table != rel.qualified() {
            return;
        }
        t.snapshot_window = Some(window.k);
        t.snapshot_keys.push(key.map(key_text));
    }

    fn on_watermark(
        &mut self,
        lsn: u64,
        content: &[u8],
        between_txns: bool,
        batch: &mut Batch,
    ) -> Result<()> {
        let Some(run) = self.snapshot.as_mut() else { return Ok(()) };
        match snapshot::parse_watermark(run.run, content) {
            Some(Watermark::Low(k)) => {
                if let Some(w) = run.window.as_mut().filter(|w| w.k == k) {
                    w.low_seen = true;
                }
                Ok(())
            }
            Some(Watermark::High(k)) if run.window.as_ref().is_some_and(|w| w.k == k) => {
                let window = run.window.take().unwrap_or_default();
                let chunk = match run.rows.take() {
                    Some(c) => c,
                    // Handed over before the high watermark was written, so already queued.
                    None => match run.chunks.try_recv() {
                        Ok(c) => c?,
                        Err(e) => {
                            return Err(ConnectError::Replication {
                                source_name: self.name.into(),
                                reason: format!("snapshot chunk {k} is missing at its high                                                  watermark ({e})"),
                            })
                        }
                    },
                };
                if chunk.k != k || !window.low_seen || !between_txns {
                    return Err(ConnectError::Replication {
                        source_name: self.name.into(),
                        reason: format!(
                            "snapshot chunk {} arrived out of order with its watermarks                              (window {k}, low seen {}, inside a transaction {})",
                            chunk.k, window.low_seen, !between_txns
                        ),
                    });
                }
                self.emit_chunk(lsn, chunk, &window, batch)?;
                batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(lsn));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Turns a chunk's rows whose keys the window did not see change into `read` events at the
    /// high watermark's position, and records the progress they complete.
    fn emit_chunk(
        &mut self,
        high_lsn: u64,
        chunk: Chunk,
        window: &Window,
        batch: &mut Batch,
    ) -> Result<()> {
        let mut progress = self.state.snapshot.clone().unwrap_or_default();
        let Some(table) = progress.table.clone() else { return Ok(()) };
        let columns: Vec<Column> = chunk
            .columns
            .iter()
            .map(|c| Column { name: c.name.clone(), type_oid: c.type_oid })
            .collect();
        let identity: Vec<usize> =
            chunk.columns.iter().enumerate().filter(|(_, c)| c.identity).map(|(i, _)| i).collect();
        let rel = self.relation_from(&table.schema, &table.table, columns, identity)?;
        let mut relayed =
            self.snapshot.as_mut().map(|r| std::mem::take(&mut r.relayed)).unwrap_or_default();
        let mut t = Txn::new(high_lsn, 0, now_ms() * 1000, false);
        let read_rows = chunk.rows.len() as u64;
        for values in chunk.rows {
            let mut row = Map::new();
            for (col, value) in rel.columns.iter().zip(values) {
                let v = match value {
                    None => Value::Null,
                    Some(text) => self.text_value(&rel, col, &text)?,
                };
                row.insert(col.name.clone(), v);
            }
            let key = rel_key(&rel, &row);
            let key_json = key_text(&key);
            if window.all || window.keys.contains(&key_json) {
                // Changed since the chunk was requested: the stream carries its newer state.
                continue;
            }
            if relayed.remove(&key_json) {
                // An outbox row the stream relayed (no later chunk can hold its key again).
                continue;
            }
            if rel.is_outbox {
                let event = self.outbox_event(&rel, row)?;
                t.outbox_ids.push(event.1.id.clone());
                self.push(&mut t, event);
            } else {
                let id = format!("{}:snap:{high_lsn:016X}:{}", self.name, t.ordinal);
                let after = Some((row, Vec::new()));
                self.push_change(&mut t, &rel, Op::Read, key, None, after, Some(id), None)?;
            }
        }
        if let Some(run) = self.snapshot.as_mut() {
            run.relayed = relayed;
        }
        batch.bytes += t.bytes;
        batch.events.append(&mut t.events);
        batch.outbox_ids.append(&mut t.outbox_ids);
        progress.rows_done += read_rows;
        if chunk.table_done {
            progress.next_table();
        } else if let Some((columns, values)) = chunk.last_key {
            progress.last_key_columns = columns;
            progress.last_key = Some(values);
        }
        batch.snapshot_progress = Some(progress);
        Ok(())
    }

    async fn on_message(
        &mut self,
        message: LogicalReplicationMessage,
        txn: Option<&mut Txn>,
        _ctx: &mut SourceContext,
    ) -> Result<()> {
        match message {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let relation = self.relation(&namespace, &relation_name, &columns)?;
                if let (None, Some(known)) = (&self.captured, self.state.tables.as_mut()) {
                    // FOR ALL TABLES: a table unknown at start was created since, so the stream
                    // has every row it ever held (stored with the next position).
                    known.entry(relation.qualified()).or_insert(Capture::Created);
                }
                for c in &relation.columns {
                    if !self.catalog.contains(c.type_oid) {
                        // A type created after start (an enum, a domain): reload the catalog.
                        self.catalog = TypeCatalog::load(&self.client)
                            .await
                            .map_err(pg_error(self.name, "reading pg_type"))?;
                        break;
                    }
                }
                self.relations.insert(relation_id, relation);
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    self.change(t, relation_id, Op::Insert, None, Some(&tuple))?;
                }
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
                ..
            } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    // `O`: the whole old row (REPLICA IDENTITY FULL), TOASTed values included;
                    // `K`: only its key columns (the others arrive as NULL).
                    let old = old_tuple.as_ref().map(|o| (o, key_type == Some('O')));
                    self.change(t, relation_id, Op::Update, old, Some(&new_tuple))?;
                }
            }
            LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    self.change(t, relation_id, Op::Delete, Some((&old_tuple, false)), None)?;
                }
            }
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    for relation_id in relation_ids {
                        self.change(t, relation_id, Op::Truncate, None, None)?;
                    }
                }
            }
            LogicalReplicationMessage::Type { type_id, .. } if !self.catalog.contains(type_id) => {
                self.catalog = TypeCatalog::load(&self.client)
                    .await
                    .map_err(pg_error(self.name, "reading pg_type"))?;
            }
            LogicalReplicationMessage::StreamStart { .. }
            | LogicalReplicationMessage::StreamStop
            | LogicalReplicationMessage::StreamCommit { .. }
            | LogicalReplicationMessage::StreamAbort { .. } => {
                return Err(ConnectError::Replication {
                    source_name: self.name.into(),
                    reason: "the server streamed an in-progress transaction, which protocol \
                             version 1 never does"
                        .into(),
                })
            }
            _ => {}
        }
        Ok(())
    }

    fn relation(
        &self,
        schema: &str,
        table: &str,
        columns: &[pg_walstream::ColumnInfo],
    ) -> Result<Relation> {
        let cols: Vec<Column> = columns
            .iter()
            .map(|c| Column { name: c.name.to_string(), type_oid: c.type_id })
            .collect();
        let identity: Vec<usize> =
            columns.iter().enumerate().filter(|(_, c)| c.is_key()).map(|(i, _)| i).collect();
        self.relation_from(schema, table, cols, identity)
    }

    /// A relation from its columns and the indexes of its replica identity columns (the key
    /// unless `key_columns` names one); shared by the stream and the snapshot so both key a
    /// row alike.
    fn relation_from(
        &self,
        schema: &str,
        table: &str,
        cols: Vec<Column>,
        identity: Vec<usize>,
    ) -> Result<Relation> {
        let qualified = format!("{schema}.{table}");
        let is_outbox =
            self.config.outbox.as_ref().is_some_and(|o| o.table == qualified || o.table == table);
        // A removed table's changes are dropped: its key and topic no longer matter.
        let ignored = self.captured.as_ref().is_some_and(|c| !c.contains(&qualified));
        let key: Vec<usize> = match self.config.key_columns.get(&qualified) {
            Some(names) => names
                .iter()
                .map(|n| {
                    cols.iter().position(|c| &c.name == n).ok_or_else(|| ConnectError::Table {
                        source_name: self.name.into(),
                        table: qualified.clone(),
                        reason: format!("key column `{n}` (from key_columns) does not exist"),
                    })
                })
                .collect::<Result<_>>()?,
            None => identity,
        };
        if key.is_empty() && !is_outbox && !ignored {
            return Err(ConnectError::Table {
                source_name: self.name.into(),
                table: qualified,
                reason: "no key columns: add a primary key or set key_columns".into(),
            });
        }
        let topic = match self.config.routes.get(&qualified) {
            Some(t) => t.clone(),
            None => self
                .config
                .topic
                .replace("{database}", &self.database)
                .replace("{schema}", schema)
                .replace("{table}", table),
        };
        if let (Err(e), false) = (driftless_core::TopicName::new(topic.clone()), ignored) {
            return Err(ConnectError::Table {
                source_name: self.name.into(),
                table: qualified,
                reason: format!("its topic is invalid ({e}); set routes.\"{schema}.{table}\""),
            });
        }
        let event_types = [Op::Read, Op::Insert, Op::Update, Op::Delete, Op::Truncate]
            .map(|op| format!("{schema}.{table}.{}", op.name()));
        Ok(Relation {
            schema: schema.into(),
            table: table.into(),
            columns: cols,
            key,
            topic,
            is_outbox,
            ignored,
            qualified,
            event_types,
        })
    }

    /// Turns a tuple into a JSON object and the list of unchanged (unsent TOAST) columns.
    fn row(&self, rel: &Relation, tuple: &TupleData) -> Result<(Map<String, Value>, Vec<String>)> {
        let mut row = Map::new();
        let mut unchanged = Vec::new();
        for (i, col) in rel.columns.iter().enumerate() {
            let Some(data) = tuple.get_column(i) else { continue };
            let value = self.value(rel, col, data)?;
            match value {
                Some(v) => {
                    row.insert(col.name.clone(), v);
                }
                None => unchanged.push(col.name.clone()),
            }
        }
        Ok((row, unchanged))
    }

    /// One column's value; `None` when it is an unchanged TOASTed value Postgres did not send.
    fn value(&self, rel: &Relation, col: &Column, data: &ColumnData) -> Result<Option<Value>> {
        column_value(&self.catalog, col.type_oid, data).map_err(|reason| ConnectError::Value {
            source_name: self.name.into(),
            table: rel.qualified(),
            column: col.name.clone(),
            reason,
        })
    }

    /// A value in its type's text output form, as JSON.
    fn text_value(&self, rel: &Relation, col: &Column, text: &str) -> Result<Value> {
        text_to_json(&self.catalog, col.type_oid, text).map_err(|reason| ConnectError::Value {
            source_name: self.name.into(),
            table: rel.qualified(),
            column: col.name.clone(),
            reason,
        })
    }

    /// One change. `old`: the old tuple, and whether it is the whole row (whose values then
    /// fill the new row's unsent TOAST values) rather than its key.
    fn change(
        &self,
        t: &mut Txn,
        relation_id: u32,
        op: Op,
        old: Option<(&TupleData, bool)>,
        new: Option<&TupleData>,
    ) -> Result<()> {
        let rel = self.relations.get(&relation_id).ok_or_else(|| ConnectError::Replication {
            source_name: self.name.into(),
            reason: format!("a change for relation {relation_id} arrived before its description"),
        })?;
        if rel.ignored {
            // Removed from `tables` (see `reconcile_tables`): older changes left in the slot.
            return Ok(());
        }
        if rel.is_outbox {
            // Outbox rows are events already; only their insertion matters.
            if let (Op::Insert, Some(tuple)) = (op, new) {
                let (row, _) = self.row(rel, tuple)?;
                self.record_key(t, rel, Some(&rel_key(rel, &row)));
                let event = self.outbox_event(rel, row)?;
                // Deleted once durable, also when `push` finds it relayed before a crash.
                t.outbox_ids.push(event.1.id.clone());
                self.push(t, event);
            }
            return Ok(());
        }
        let before = match old {
            Some((o, _)) => Some(self.row(rel, o)?),
            None => None,
        };
        let old_is_whole = old.is_some_and(|(_, whole)| whole);
        let mut after = match new {
            Some(n) => Some(self.row(rel, n)?),
            None => None,
        };
        if let (Some((row, unchanged)), true, Some((old_row, _))) =
            (&mut after, old_is_whole, &before)
        {
            // An unchanged TOASTed value is the old row's, which a whole old row carries.
            unchanged.retain(|c| match old_row.get(c) {
                Some(v) => {
                    row.insert(c.clone(), v.clone());
                    false
                }
                None => true,
            });
        }
        let key_of = |row: &Map<String, Value>| rel_key(rel, row);
        if op == Op::Truncate {
            self.record_key(t, rel, None);
        }
        // A key change is a delete of the old key and an insert of the new one (as Debezium
        // does), so each key's history stays on its own partition, in order.
        if let (Op::Update, Some((b, _)), Some((a, _))) = (op, &before, &after) {
            let (old_key, new_key) = (key_of(b), key_of(a));
            if !old_key.is_empty() && old_key != new_key {
                self.record_key(t, rel, Some(&old_key));
                self.record_key(t, rel, Some(&new_key));
                // When the new tuple lacks unsent TOAST values (listed in `unchanged`), the
                // delete names the key the row moves to (`data.moved_to`) and the insert the key
                // it moved from (`data.moved_from`): the values are the row's under the old key,
                // where a projection can carry them from, whichever half it applies first
                // (`sink` keeps a moved row's values in its tombstone).
                let lacks = !after.as_ref().is_some_and(|(_, u)| u.is_empty());
                let map = |key: &[(String, Value)]| key.iter().cloned().collect::<Map<_, _>>();
                let to = lacks.then(|| ("moved_to", map(&new_key)));
                let from = lacks.then(|| ("moved_from", map(&old_key)));
                let deleted = before.clone();
                self.push_change(t, rel, Op::Delete, old_key, deleted, None, None, to)?;
                return self.push_change(t, rel, Op::Insert, new_key, None, after, None, from);
            }
        }
        let key = match (&after, &before) {
            (Some((a, _)), _) if op != Op::Delete => key_of(a),
            (_, Some((b, _))) => key_of(b),
            _ => Vec::new(),
        };
        if op != Op::Truncate {
            self.record_key(t, rel, Some(&key));
        }
        self.push_change(t, rel, op, key, before, after, None, None)
    }

    fn push(&self, t: &mut Txn, (topic, mut event): (String, Event)) {
        let ordinal = t.ordinal;
        t.ordinal += 1;
        if event.id.is_empty() {
            event.id = event_id(self.name, t.commit_lsn, ordinal);
        }
        if self.recovered.as_ref().is_some_and(|(ids, _)| ids.contains(&event.id)) {
            return;
        }
        event.extensions.insert("pglsn".into(), t.lsn_text.clone());
        event.extensions.insert("pgxid".into(), json!(t.xid));
        event.extensions.insert("pgtxorder".into(), json!(ordinal));
        event
            .extensions
            .entry("sequence".to_string())
            .or_insert_with(|| json!(driftless_core::pg_sequence(t.commit_lsn, ordinal)));
        if event.time.is_none() {
            event.time = Some(t.time_text.clone());
        }
        t.bytes += event_bytes(&event);
        t.events.push((topic, Built::Event(Box::new(event))));
    }

    /// One change (or snapshot read): in the CloudEvents payload written as JSON text straight
    /// from its rows ([`Built::Text`]), in the Debezium payload built as an [`Event`]. `id`
    /// replaces the change's `<source>:<commit LSN>:<n>` (snapshot reads have their own).
    /// `moved`: for a key change whose new row lacks unsent TOAST values, `("moved_to", new
    /// key)` on its delete or `("moved_from", old key)` on its insert, written into `data`.
    #[allow(clippy::too_many_arguments)]
    fn push_change(
        &self,
        t: &mut Txn,
        rel: &Relation,
        op: Op,
        key: Vec<(String, Value)>,
        before: Option<(Map<String, Value>, Vec<String>)>,
        after: Option<(Map<String, Value>, Vec<String>)>,
        id: Option<String>,
        moved: Option<(&str, Map<String, Value>)>,
    ) -> Result<()> {
        if self.config.payload == Payload::Debezium {
            let (topic, mut event) = self.debezium_event(t, rel, op, &key, before, after);
            event.id = id.unwrap_or_default(); // empty: `push` gives it the change's id
            self.push(t, (topic, event));
            return Ok(());
        }
        let ordinal = t.ordinal;
        t.ordinal += 1;
        let id = id.unwrap_or_else(|| event_id(self.name, t.commit_lsn, ordinal));
        if self.recovered.as_ref().is_some_and(|(ids, _)| ids.contains(&id)) {
            return Ok(());
        }
        let subject = subject_of(&key);
        let key: Map<String, Value> = key.into_iter().collect();
        let (after, unchanged) = match after {
            Some((row, unchanged)) => (Some(row), unchanged),
            None => (None, Vec::new()),
        };
        let before = before.map(|(row, _)| row);
        // The fields `push` gives an `Event`, in the order `Event` serialises them, but the
        // closing brace: `Built::encode` adds `pgtxsize` (known at commit) and closes it.
        let written = (|| -> serde_json::Result<Vec<u8>> {
            let mut w = JsonText(Vec::with_capacity(512));
            w.raw(r#"{"specversion":"1.0","id":"#);
            w.put(&id)?;
            w.raw(r#","source":"#);
            w.put(&self.event_source)?;
            w.raw(r#","type":"#);
            w.put(&rel.event_types[op as usize])?;
            if let Some(subject) = &subject {
                w.raw(r#","subject":"#);
                w.put(subject)?;
            }
            w.raw(r#","time":"#);
            w.put(&t.time_text)?;
            w.raw(r#","datacontenttype":"application/json","data":{"after":"#);
            w.put(&after)?;
            w.raw(r#","before":"#);
            w.put(&before)?;
            w.raw(r#","key":"#);
            w.put(&key)?;
            if let Some((name, key)) = &moved {
                // Members in name order, as everywhere in this payload: `moved_*` after `key`.
                w.raw(",");
                w.put(name)?;
                w.raw(":");
                w.put(key)?;
            }
            w.raw(r#","op":"#);
            w.put(op.name())?;
            w.raw(r#","table":"#);
            w.put(&rel.qualified)?;
            if !unchanged.is_empty() {
                w.raw(r#","unchanged":"#);
                w.put(&unchanged)?;
            }
            w.raw("}");
            if subject.is_none() {
                // Truncates concern the whole table: keep them in order on one partition.
                w.raw(r#","partitionkey":"#);
                w.put(&rel.qualified)?;
            }
            w.raw(r#","pglsn":"#);
            w.put(&t.lsn_text)?;
            w.raw(r#","pgtxorder":"#);
            w.put(&ordinal)?;
            w.raw(r#","pgxid":"#);
            w.put(&t.xid)?;
            w.raw(r#","sequence":"#);
            w.put(&driftless_core::pg_sequence(t.commit_lsn, ordinal))?;
            Ok(w.0)
        })();
        let text = written.map_err(|e| ConnectError::State {
            source_name: self.name.into(),
            reason: format!("a change of {} did not serialise as JSON: {e}", rel.qualified),
        })?;
        t.bytes += text.len();
        t.events.push((rel.topic.clone(), Built::Text { text, txsize: None }));
        Ok(())
    }

    /// A change in the Debezium payload: `before`, `after` (unsent TOAST values as Debezium's
    /// placeholder), `source`, `op`, `ts_ms`.
    fn debezium_event(
        &self,
        t: &Txn,
        rel: &Relation,
        op: Op,
        key: &[(String, Value)],
        before: Option<(Map<String, Value>, Vec<String>)>,
        after: Option<(Map<String, Value>, Vec<String>)>,
    ) -> (String, Event) {
        let subject = subject_of(key);
        let mut event = Event::new(String::new(), self.event_source.clone(), rel.event_type(op));
        event.subject = subject.clone();
        if subject.is_none() {
            // Truncates concern the whole table: keep them in order on one partition.
            event.extensions.insert("partitionkey".into(), json!(rel.qualified()));
        }
        event.datacontenttype = Some("application/json".into());
        let with_placeholder = |row: Option<(Map<String, Value>, Vec<String>)>| match row {
            Some((mut r, unchanged)) => {
                for c in unchanged {
                    r.insert(c, json!(DEBEZIUM_UNAVAILABLE));
                }
                Value::Object(r)
            }
            None => Value::Null,
        };
        let data = json!({
            "before": with_placeholder(before),
            "after": with_placeholder(after),
            "source": {
                "version": env!("CARGO_PKG_VERSION"),
                "connector": "postgresql",
                "name": self.name,
                "ts_ms": t.commit_time_us / 1000,
                "snapshot": if op == Op::Read { "true" } else { "false" },
                "db": self.database,
                "schema": rel.schema,
                "table": rel.table,
                "txId": t.xid,
                "lsn": t.commit_lsn,
            },
            "op": op.debezium(),
            "ts_ms": now_ms(),
        });
        event.data = Some(data);
        (rel.topic.clone(), event)
    }

    fn outbox_event(&self, rel: &Relation, mut row: Map<String, Value>) -> Result<(String, Event)> {
        // An outbox row's json/jsonb columns (payload, headers) are the event's JSON, not values
        // to carry as text: parse the text a change would carry as a string.
        for col in &rel.columns {
            if is_json(&self.catalog, col.type_oid) {
                if let Some(Value::String(text)) = row.get(&col.name) {
                    let parsed = serde_json::from_str(text).map_err(|e| ConnectError::Value {
                        source_name: self.name.into(),
                        table: rel.qualified(),
                        column: col.name.clone(),
                        reason: format!("not JSON: {e}"),
                    })?;
                    row.insert(col.name.clone(), parsed);
                }
            }
        }
        let columns = self.config.outbox.clone().unwrap_or_default();
        let text = |row: &mut Map<String, Value>, name: &str| -> Option<String> {
            match row.remove(name)? {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        };
        let id = text(&mut row, "id").ok_or_else(|| ConnectError::Table {
            source_name: self.name.into(),
            table: rel.qualified(),
            reason: "an outbox row has no `id`".into(),
        })?;
        let missing = |field: &str| ConnectError::OutboxRow {
            source_name: self.name.into(),
            row: id.clone(),
            reason: format!("`{field}` is missing or NULL"),
        };
        let outbox_row = OutboxRow {
            aggregatetype: text(&mut row, "aggregatetype")
                .ok_or_else(|| missing("aggregatetype"))?,
            aggregateid: text(&mut row, "aggregateid").ok_or_else(|| missing("aggregateid"))?,
            ty: text(&mut row, "type").ok_or_else(|| missing("type"))?,
            payload: row.remove("payload").filter(|v| !v.is_null()),
            headers: row.remove("headers").filter(|v| !v.is_null()),
            created_at: text(&mut row, "created_at"),
            id: id.clone(),
        };
        row_to_event(self.name, &columns, outbox_row)
    }
}

/// One column's value of a pgoutput tuple as JSON; `None` when it is an unchanged TOASTed value
/// Postgres did not send. Errors are the reason only (the caller names the table and column).
fn column_value(
    catalog: &TypeCatalog,
    type_oid: u32,
    data: &ColumnData,
) -> std::result::Result<Option<Value>, String> {
    if data.is_unchanged() {
        return Ok(None);
    }
    if data.is_null() {
        return Ok(Some(Value::Null));
    }
    let text = data.as_str().ok_or_else(|| "the value is not valid UTF-8 text".to_string())?;
    text_to_json(catalog, type_oid, &text).map(Some)
}

/// What [`fuzz_decode_pgoutput`] made of one frame: the decode error, or each column value's
/// conversion (`Ok(None)`: an unchanged TOASTed value).
#[doc(hidden)]
pub type FuzzFrame = std::result::Result<Vec<std::result::Result<Option<Value>, String>>, String>;

/// Entry point for the fuzz target `pgoutput` in `fuzz/` (not an API: hidden from the docs, may
/// change at any time).
///
/// Decodes `frames` (the payloads of `XLogData` messages, in order) as the stream does, with
/// protocol version 1, keeps each `Relation` message's column types as the stream does, and
/// converts every column of every row change with [`column_value`] and the built-in type
/// catalog. Returns, per frame, the decode error or the converted values (a conversion error
/// as `Err`); a change for an unknown relation converts nothing, as the stream refuses it.
#[doc(hidden)]
pub fn fuzz_decode_pgoutput(frames: &[&[u8]]) -> Vec<FuzzFrame> {
    let catalog = TypeCatalog::builtin();
    let mut parser = LogicalReplicationParser::with_protocol_version(1);
    let mut relations: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut out = Vec::with_capacity(frames.len());
    for frame in frames {
        let message = match parser.parse_wal_message_bytes(bytes::Bytes::copy_from_slice(frame)) {
            Ok(m) => m.message,
            Err(e) => {
                out.push(Err(e.to_string()));
                continue;
            }
        };
        let mut tuples: Vec<(u32, &TupleData)> = Vec::new();
        match &message {
            LogicalReplicationMessage::Relation { relation_id, columns, .. } => {
                relations.insert(*relation_id, columns.iter().map(|c| c.type_id).collect());
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                tuples.push((*relation_id, tuple));
            }
            LogicalReplicationMessage::Update { relation_id, old_tuple, new_tuple, .. } => {
                if let Some(old) = old_tuple {
                    tuples.push((*relation_id, old));
                }
                tuples.push((*relation_id, new_tuple));
            }
            LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
                tuples.push((*relation_id, old_tuple));
            }
            _ => {}
        }
        let mut values = Vec::new();
        for (relation_id, tuple) in tuples {
            let Some(types) = relations.get(&relation_id) else { continue };
            for (i, &type_oid) in types.iter().enumerate() {
                if let Some(data) = tuple.get_column(i) {
                    values.push(column_value(&catalog, type_oid, data));
                }
            }
        }
        out.push(Ok(values));
    }
    out
}

/// Key columns in the table's key order (a JSON object would sort them by name).
/// An event's `subject`: its one key value as text, or its key values as a JSON array.
fn subject_of(key: &[(String, Value)]) -> Option<String> {
    match key {
        [] => None,
        [(_, Value::String(s))] => Some(s.clone()),
        [(_, other)] => Some(other.to_string()),
        _ => Some(Value::Array(key.iter().map(|(_, v)| v.clone()).collect()).to_string()),
    }
}

/// An event as the stream builds it, until it is encoded for the append.
enum Built {
    /// A change in the CloudEvents payload, written as JSON text straight from its rows (no
    /// `Value` tree for the event, no serialising one): everything but `pgtxsize`, known when
    /// the transaction commits, and the closing brace.
    Text { text: Vec<u8>, txsize: Option<u32> },
    /// Any other event (Debezium payload, outbox rows, snapshot reads).
    Event(Box<Event>),
}

impl Built {
    fn set_txsize(&mut self, size: u32) {
        match self {
            Built::Text { txsize, .. } => *txsize = Some(size),
            Built::Event(e) => {
                e.extensions.insert("pgtxsize".into(), json!(size));
            }
        }
    }

    /// The checked JSON text to append.
    fn encode(self) -> std::result::Result<RawEvent, InvalidEvent> {
        match self {
            Built::Event(e) => RawEvent::from_event(&e),
            Built::Text { mut text, txsize } => {
                if let Some(size) = txsize {
                    text.extend_from_slice(format!(r#","pgtxsize":{size}"#).as_bytes());
                }
                text.push(b'}');
                let text = String::from_utf8(text).map_err(|e| InvalidEvent {
                    attribute: "json".into(),
                    reason: format!("not UTF-8: {e}"),
                })?;
                RawEvent::from_string(text)
            }
        }
    }
}

/// JSON text being written.
struct JsonText(Vec<u8>);

impl JsonText {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn put(&mut self, v: &(impl Serialize + ?Sized)) -> serde_json::Result<()> {
        serde_json::to_writer(&mut self.0, v)
    }
}

fn rel_key(rel: &Relation, row: &Map<String, Value>) -> Vec<(String, Value)> {
    rel.key
        .iter()
        .filter_map(|&i| {
            let name = &rel.columns[i].name;
            row.get(name).map(|v| (name.clone(), v.clone()))
        })
        .collect()
}

/// A key's identity for the snapshot window: its values, in key order, as JSON text.
fn key_text(key: &[(String, Value)]) -> String {
    Value::Array(key.iter().map(|(_, v)| v.clone()).collect()).to_string()
}

/// The next message of the snapshot reader; never resolves when there is none.
async fn next_chunk(run: &mut Option<SnapshotRun>) -> Result<Chunk> {
    match run.as_mut() {
        Some(r) => match r.chunks.recv().await {
            Some(chunk) => chunk,
            // The reader ended after reporting its error (or was stopped): nothing more comes.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Approximate in-memory size of an event, for the buffer limit.
fn event_bytes(e: &Event) -> usize {
    e.id.len()
        + e.ty.len()
        + e.subject.as_ref().map_or(0, String::len)
        + e.data.as_ref().map_or(0, approx_json_bytes)
        + 256
}

/// Roughly the serialized size of `v`, without serializing it (the broker does that once, at
/// append; this only bounds the decode buffer).
fn approx_json_bytes(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|x| approx_json_bytes(x) + 1).sum::<usize>(),
        Value::Object(o) => {
            2 + o.iter().map(|(k, x)| k.len() + 4 + approx_json_bytes(x)).sum::<usize>()
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` from Unix microseconds (civil-from-days, no time zone data).
pub fn rfc3339_from_unix_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = driftless_core::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_commit_lsn() {
        assert_eq!(event_id("app", 0x16_B374_D848, 7), "app:00000016B374D848:7");
    }

    #[test]
    fn rfc3339_from_unix_us_matches_known_instants() {
        assert_eq!(rfc3339_from_unix_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_from_unix_us(1_764_071_782_123_456), "2025-11-25T11:56:22.123456Z");
        assert_eq!(rfc3339_from_unix_us(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_from_unix_us(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn default_slot_names_are_valid_postgres_names() {
        assert_eq!(default_slot_name("App-DB"), "driftless_app_db");
    }
}
