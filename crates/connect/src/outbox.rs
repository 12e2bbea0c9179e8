//! The transactional outbox: a service writes its state change and an outbox row in one local
//! transaction; Driftless relays the rows to topics and deletes them only after the append is
//! durable. Rows follow the Debezium outbox-router column convention.
//!
//! # Writing to the outbox (the service's side)
//!
//! The table is created by `driftless outbox init` ([`init_sql_postgres`],
//! [`init_sql_sqlite`](crate::sqlite_outbox::init_sql_sqlite)).
//! The state change and the outbox row commit together or not at all:
//!
//! ```sql
//! BEGIN;
//! UPDATE customers SET address = '1 Main St' WHERE id = 'c-42';
//! INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, headers)
//! VALUES ('6f1c…',                          -- event id: unique, e.g. a UUID
//!         'customers',                      -- topic = topic_prefix + aggregatetype
//!         'c-42',                           -- subject and partition key
//!         'customer.address_changed.v1',    -- CloudEvents type
//!         '{"address": "1 Main St"}',       -- data (JSON)
//!         '{"traceparent": "00-…-01"}');    -- optional CloudEvents extensions
//! COMMIT;
//! ```
//!
//! (SQLite: `BEGIN IMMEDIATE` instead of `BEGIN`, same statements.) A rolled-back transaction
//! leaves no row, so nothing is relayed.
//!
//! # Mapping ([`row_to_event`])
//!
//! topic = `topic_prefix + aggregatetype`; `id` = row id; `subject` = `aggregateid` (so one
//! aggregate's events share a partition and keep their order); `type` = `type`; `source` =
//! `event_source` or `/outbox/<source name>`; `data` = `payload` (`application/json`); `time` =
//! `created_at`; string, number and boolean members of `headers` whose names are valid extension
//! names become CloudEvents extensions, others are skipped with a warning. A row that cannot be
//! mapped stops the source with [`ConnectError::OutboxRow`] naming it; it stays in the outbox
//! until an operator fixes or deletes it. Rows before it in the same batch are still relayed.
//!
//! # Exactly once (the relay's side, polling: Postgres `mode = "poll"` and SQLite alike)
//!
//! Per batch:
//! 1. read up to `batch_rows_max` rows in `seq` order (Postgres: `BEGIN; SELECT … ORDER BY seq
//!    LIMIT n FOR UPDATE SKIP LOCKED`; SQLite: a plain `SELECT … ORDER BY seq LIMIT n`);
//! 2. store the source's position durably: `{"pending": {topic: end offsets}}`, the end offsets
//!    of every topic of the batch *before* appending;
//! 3. append the events; durable when [`Emitter::emit`] returns;
//! 4. delete the relayed rows by id (Postgres: in the batch's transaction, then `COMMIT`;
//!    SQLite: one `DELETE` transaction).
//!
//! On start, if the stored position has `pending` marks, the ids appended to those topics since
//! the marks are read back from the log ([`Emitter::ids_since`]); rows still in the outbox whose
//! id is among those found in *their own* topic are deleted without being appended again. So a
//! crash between 3 and 4 leaves no duplicate, even long after the broker's dedup window; a crash
//! before 3 completes re-appends only what did not reach the log; a crash after 4 finds nothing
//! left to delete. When the outbox is found empty after relaying, the marks are cleared, so a
//! restart after a long idle period does not scan events other producers appended since.
//!
//! # Exactly once through CDC (`mode = "cdc"`, Postgres)
//!
//! The outbox table is read through logical replication ([`crate::pg::cdc`]): an inserted row
//! becomes its event, with the row's id. Once a batch's events are durable, the relayed rows are
//! deleted by id (`DELETE … WHERE id = ANY(…)`), and only then is the batch's position confirmed
//! to Postgres. A crash in between: Postgres sends the rows again, the ids found in the log since
//! the stored marks drop their events, and the rows are deleted then. Deletes of the outbox are no
//! events, so the service may also delete rows itself (the Debezium pattern).
//!
//! # The backlog figure
//!
//! `outbox_backlog_rows` is `SELECT count(*)` of the outbox table, refreshed at most every
//! [`BACKLOG_REFRESH_MS`] while the source is connected, in every mode, paused or not (the
//! rows written while a relay is paused are what an operator looks for); 0 as soon as a poll
//! finds the outbox empty. -1 only before the first count.
//!
//! Assumptions, stated because exactly-once rests on them:
//! - one relay per outbox table. Postgres' `SKIP LOCKED` keeps two relays from appending the same
//!   row concurrently, but after a crash another relay could take over the crashed one's rows
//!   before its recovery runs, and two relays would interleave one aggregate's events; SQLite
//!   takes no row locks at all;
//! - row ids are unique (the `UNIQUE` constraint) and not reused for a different fact;
//! - order is `seq` order among committed rows: for one aggregate that is commit order when the
//!   service's transactions on it are serialized (they update the same aggregate row).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use driftless_core::sql::{quote_ident, quote_table};
use driftless_core::{is_rfc3339, Event, TopicName, EXTENSION_NAME_BYTES_MAX};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::Statement;

use crate::config::{OutboxColumns, OutboxMode, PgOutboxConfig};
use crate::emit::Emitter;
use crate::error::{ConnectError, Result};
use crate::runtime::{SourceContext, SourceState};

/// Least time between two `count(*)` queries for the backlog figure, in milliseconds.
pub const BACKLOG_REFRESH_MS: u64 = 1_000;
/// Most ids looked up per query when recovering after a crash.
pub const RECOVERY_LOOKUP_IDS_MAX: usize = 500;
/// How long connecting to Postgres may take when the URL sets no `connect_timeout`, in seconds.
pub const PG_CONNECT_TIMEOUT_S: u64 = 10;

/// One outbox row as read from the database, before mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// `id`: the event id.
    pub id: String,
    /// `aggregatetype`: the topic, after `topic_prefix`.
    pub aggregatetype: String,
    /// `aggregateid`: the subject and partition key.
    pub aggregateid: String,
    /// `type`: the CloudEvents type.
    pub ty: String,
    /// `payload`: the event's data.
    pub payload: Option<Value>,
    /// `headers`: a JSON object of extension attributes.
    pub headers: Option<Value>,
    /// `created_at`, as RFC 3339 when the database could render it so.
    pub created_at: Option<String>,
}

/// Maps an outbox row to its topic and event (see the module docs). The event passes
/// [`Event::validate`]; otherwise the error names the row and what to fix.
pub fn row_to_event(
    source_name: &str,
    columns: &OutboxColumns,
    row: OutboxRow,
) -> Result<(String, Event)> {
    let OutboxRow { id, aggregatetype, aggregateid, ty, payload, headers, created_at } = row;
    let bad = |reason: String| ConnectError::OutboxRow {
        source_name: source_name.to_string(),
        row: id.clone(),
        reason,
    };
    let topic = format!("{}{aggregatetype}", columns.topic_prefix);
    match TopicName::new(topic.clone()) {
        Err(e) => {
            return Err(bad(format!(
                "topic `{topic}` (topic_prefix + aggregatetype) is not a valid topic name: {}; \
                 set aggregatetype to ASCII letters, digits, '.', '_' or '-'",
                e.reason
            )))
        }
        Ok(name) if name.is_internal() => {
            return Err(bad(format!(
                "topic `{topic}` starts with `__`, which is reserved for Driftless's internal \
                 topics; change aggregatetype or topic_prefix"
            )))
        }
        Ok(_) => {}
    }
    if aggregateid.is_empty() {
        return Err(
            bad("aggregateid is empty; it is the event's subject and partition key".into()),
        );
    }
    let source = columns.event_source.clone().unwrap_or_else(|| format!("/outbox/{source_name}"));
    let mut event = Event::new(id.clone(), source, ty);
    event.subject = Some(aggregateid);
    if let Some(time) = created_at {
        if is_rfc3339(&time) {
            event.time = Some(time);
        } else {
            // Not worth stopping for: the log records its own append time anyway.
            tracing::debug!(source = source_name, row = %id, created_at = %time,
                "created_at is not RFC 3339; the event gets no time attribute");
        }
    }
    match payload {
        None | Some(Value::Null) => {}
        Some(data) => {
            event.data = Some(data);
            event.datacontenttype = Some("application/json".into());
        }
    }
    match headers {
        None | Some(Value::Null) => {}
        Some(Value::Object(members)) => {
            for (name, value) in members {
                let name_ok = !name.is_empty()
                    && name.len() <= EXTENSION_NAME_BYTES_MAX
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    // Context attributes never come from `headers`, whose members are extensions.
                    && !driftless_core::NAMED_ATTRIBUTES.contains(&name.as_str());
                let value_ok = value.is_string() || value.is_number() || value.is_boolean();
                if name_ok && value_ok {
                    event.extensions.insert(name, value);
                } else {
                    tracing::warn!(source = source_name, row = %id, header = %name,
                        "outbox header skipped: extensions need a name of 1 to 20 lowercase \
                         letters or digits (not a CloudEvents attribute) and a string, number \
                         or boolean value");
                }
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "headers must be a JSON object of extension attributes, got {}",
                driftless_core::json_kind(&other)
            )))
        }
    }
    event.validate().map_err(|e| bad(format!("the event would be invalid: {e}")))?;
    Ok((topic, event))
}

/// A row as a store read it, with `created_at` in Unix milliseconds for the latency figure.
#[doc(hidden)]
#[derive(Debug)]
pub struct RawRow {
    /// The row.
    pub row: OutboxRow,
    /// `created_at` in Unix ms, when known.
    pub created_ms: Option<i64>,
}

/// What one read returned: rows in `seq` order up to the first unreadable one.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RawBatch {
    /// Readable rows, in `seq` order.
    pub rows: Vec<RawRow>,
    /// Why the row after `rows` could not be read, if one could not.
    pub error: Option<ConnectError>,
    /// Rows the query returned (readable or not).
    pub rows_read: usize,
}

/// A batch mapped to events, ready to relay.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct Batch {
    /// Events with their topics, in `seq` order.
    pub events: Vec<(String, Event)>,
    /// `created_at` in Unix ms per event.
    created_ms: Vec<Option<i64>>,
    /// The malformed row that ended the batch early; returned once the rows before it are
    /// relayed.
    pub error: Option<ConnectError>,
    /// Rows the query returned.
    pub rows_read: usize,
}

impl Batch {
    /// Maps `raw`, stopping at the first row that cannot be mapped.
    pub fn build(source_name: &str, columns: &OutboxColumns, raw: RawBatch) -> Self {
        let mut batch = Batch { rows_read: raw.rows_read, ..Batch::default() };
        for RawRow { row, created_ms } in raw.rows {
            match row_to_event(source_name, columns, row) {
                Ok(e) => {
                    batch.events.push(e);
                    batch.created_ms.push(created_ms);
                }
                Err(e) => {
                    batch.error = Some(e);
                    return batch;
                }
            }
        }
        batch.error = raw.error;
        batch
    }

    /// The ids of the batch's rows.
    pub fn ids(&self) -> Vec<String> {
        self.events.iter().map(|(_, e)| e.id.clone()).collect()
    }

    fn topics(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.events.iter().map(|(t, _)| t).collect();
        set.into_iter().cloned().collect()
    }
}

/// Where an outbox is read from: Postgres or SQLite. One batch at a time: [`read`] opens it,
/// [`delete`] or [`release`] ends it.
///
/// [`read`]: OutboxStore::read
/// [`delete`]: OutboxStore::delete
/// [`release`]: OutboxStore::release
#[doc(hidden)]
// Implemented only in this crate and called on concrete types, whose futures are known Send.
#[allow(async_fn_in_trait)]
pub trait OutboxStore {
    /// Reads up to `rows_max` rows in `seq` order (Postgres: locked, in an open transaction).
    async fn read(&mut self, rows_max: u32) -> Result<RawBatch>;
    /// Deletes the rows with these ids and ends the batch (Postgres: commits).
    async fn delete(&mut self, ids: Vec<String>) -> Result<()>;
    /// Ends the batch without deleting anything (Postgres: rolls back).
    async fn release(&mut self) -> Result<()>;
    /// `(id, aggregatetype)` of the rows whose id is in `ids`.
    async fn find(&mut self, ids: Vec<String>) -> Result<Vec<(String, String)>>;
    /// Rows in the outbox.
    async fn backlog_rows(&mut self) -> Result<i64>;
}

/// The relay's stored position.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RelayState {
    /// End offsets per topic recorded before the last append whose rows may not be deleted yet.
    #[serde(default)]
    pending: BTreeMap<String, Vec<u64>>,
}

fn load_state(emitter: &Emitter) -> Result<RelayState> {
    match emitter.state() {
        None => Ok(RelayState::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| ConnectError::State {
            source_name: emitter.source().to_string(),
            reason: format!(
                "expected an outbox relay position {{\"pending\": {{topic: [offsets]}}}}: {e}; \
                 if the source was renamed from another kind, give it a new name"
            ),
        }),
    }
}

async fn store_state(emitter: &Emitter, state: &RelayState) -> Result<()> {
    let bytes = serde_json::to_vec(state).map_err(|e| ConnectError::State {
        source_name: emitter.source().to_string(),
        reason: format!("cannot encode the position: {e}"),
    })?;
    emitter.put_state(bytes).await
}

/// Step 2: records the end offsets of the batch's topics durably, before appending.
#[doc(hidden)]
pub async fn mark_pending(emitter: &Emitter, batch: &Batch) -> Result<()> {
    let pending = emitter.end_offsets(batch.topics()).await?;
    store_state(emitter, &RelayState { pending }).await
}

/// Step 3: appends the batch durably and updates the status.
#[doc(hidden)]
pub async fn append(ctx: &SourceContext, batch: &Batch) -> Result<()> {
    ctx.emitter.emit(batch.events.clone()).await?;
    let now = now_ms();
    let n = batch.events.len() as u64;
    ctx.status.appended(n, now);
    ctx.status.rows_total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    for created in batch.created_ms.iter().flatten() {
        // A clock ahead of ours (a remote database) would give a negative age: count it as 0.
        let age_ms = u64::try_from(now.saturating_sub(*created)).unwrap_or(0);
        ctx.status.commit_to_durable.observe(Duration::from_millis(age_ms));
    }
    Ok(())
}

/// Step 1: reads and maps one batch.
#[doc(hidden)]
pub async fn read_batch<S: OutboxStore>(
    store: &mut S,
    source_name: &str,
    columns: &OutboxColumns,
    rows_max: u32,
) -> Result<Batch> {
    let raw = store.read(rows_max).await?;
    Ok(Batch::build(source_name, columns, raw))
}

/// Steps 1 to 4 for one batch. Returns the rows the query returned (0: the outbox was empty).
#[doc(hidden)]
pub async fn relay_batch<S: OutboxStore>(
    store: &mut S,
    source_name: &str,
    columns: &OutboxColumns,
    ctx: &SourceContext,
    rows_max: u32,
) -> Result<usize> {
    let batch = read_batch(store, source_name, columns, rows_max).await?;
    if batch.events.is_empty() {
        store.release().await?;
    } else {
        mark_pending(&ctx.emitter, &batch).await?;
        append(ctx, &batch).await?;
        store.delete(batch.ids()).await?;
    }
    match batch.error {
        Some(e) => Err(e),
        None => Ok(batch.rows_read),
    }
}

/// Step 5: after a crash, deletes the rows of the last batch that reached the log. Returns the
/// rows deleted.
#[doc(hidden)]
pub async fn recover<S: OutboxStore>(
    store: &mut S,
    emitter: &Emitter,
    columns: &OutboxColumns,
) -> Result<usize> {
    let state = load_state(emitter)?;
    if state.pending.is_empty() {
        return Ok(0);
    }
    // Per topic, so a row only counts as relayed if its id was found in its own topic.
    let mut found: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (topic, marks) in state.pending {
        let ids = emitter.ids_since(BTreeMap::from([(topic.clone(), marks)])).await?;
        for id in ids {
            found.entry(id).or_default().insert(topic.clone());
        }
    }
    let candidates: Vec<String> = found.keys().cloned().collect();
    let mut relayed = Vec::new();
    for chunk in candidates.chunks(RECOVERY_LOOKUP_IDS_MAX) {
        for (id, aggregatetype) in store.find(chunk.to_vec()).await? {
            let topic = format!("{}{aggregatetype}", columns.topic_prefix);
            if found.get(&id).is_some_and(|topics| topics.contains(&topic)) {
                relayed.push(id);
            }
        }
    }
    let deleted = relayed.len();
    if deleted > 0 {
        tracing::info!(source = emitter.source(), rows = deleted,
            "deleting outbox rows that reached the log before a crash, without appending them again");
        store.delete(relayed).await?;
    }
    store_state(emitter, &RelayState::default()).await?;
    Ok(deleted)
}

/// Counts the rows in the outbox into the source's status.
async fn count_backlog<S: OutboxStore>(store: &mut S, ctx: &SourceContext) -> Result<()> {
    let n = store.backlog_rows().await?;
    ctx.status.outbox_backlog_rows.store(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Waits while the source is paused, counting the outbox's rows every [`BACKLOG_REFRESH_MS`]
/// meanwhile (the rows written while it is paused are the figure an operator looks for).
/// Returns `false` if the server is shutting down.
pub(crate) async fn wait_while_paused_counting<S: OutboxStore>(
    store: &mut S,
    ctx: &mut SourceContext,
) -> Result<bool> {
    if !ctx.is_paused() {
        return Ok(!ctx.is_shutting_down());
    }
    let (before, _) = ctx.status.state();
    ctx.status.set_state(SourceState::Paused, None);
    loop {
        count_backlog(store, ctx).await?;
        match ctx.wait_resumed_within(Duration::from_millis(BACKLOG_REFRESH_MS)).await {
            Some(true) => {
                ctx.status.set_state(before, None);
                return Ok(true);
            }
            Some(false) => return Ok(false),
            None => {}
        }
    }
}

/// The poll loop shared by both stores: recover, then relay batches until shutdown.
pub(crate) async fn relay_loop<S: OutboxStore>(
    store: &mut S,
    source_name: &str,
    columns: &OutboxColumns,
    ctx: &mut SourceContext,
    poll_interval_ms: u64,
    rows_max: u32,
) -> Result<()> {
    if !wait_while_paused_counting(store, ctx).await? {
        return Ok(());
    }
    recover(store, &ctx.emitter, columns).await?;
    count_backlog(store, ctx).await?;
    ctx.status.set_state(SourceState::Running, None);
    let mut backlog_at = Some(Instant::now());
    // Whether the stored position may hold marks of a batch since relayed (see module docs).
    let mut marks_stored = false;
    loop {
        if !wait_while_paused_counting(store, ctx).await? {
            return Ok(());
        }
        let rows = relay_batch(store, source_name, columns, ctx, rows_max).await?;
        if rows > 0 {
            marks_stored = true;
        }
        let backlog_due =
            backlog_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(BACKLOG_REFRESH_MS));
        if rows == 0 {
            ctx.status.outbox_backlog_rows.store(0, std::sync::atomic::Ordering::Relaxed);
        } else if backlog_due {
            let n = store.backlog_rows().await?;
            ctx.status.outbox_backlog_rows.store(n, std::sync::atomic::Ordering::Relaxed);
            backlog_at = Some(Instant::now());
        }
        if rows == 0 && marks_stored {
            store_state(&ctx.emitter, &RelayState::default()).await?;
            marks_stored = false;
        }
        if rows >= rows_max as usize {
            continue;
        }
        if !ctx.sleep(Duration::from_millis(poll_interval_ms)).await {
            return Ok(());
        }
    }
}

/// Wall time in Unix ms, from the project's one clock.
fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

// ---------------------------------------------------------------------------------------------
// Postgres

/// The SQL that creates the Postgres outbox table `table` (`table` or `schema.table`).
pub fn init_sql_postgres(table: &str) -> String {
    let schema = match table.split_once('.') {
        Some((schema, _)) => format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(schema)),
        None => String::new(),
    };
    format!(
        "{schema}CREATE TABLE IF NOT EXISTS {} (\n    seq bigserial PRIMARY KEY,\n    id text NOT \
         NULL UNIQUE,\n    aggregatetype text NOT NULL,\n    aggregateid text NOT NULL,\n    type \
         text NOT NULL,\n    payload jsonb,\n    headers jsonb,\n    created_at timestamptz NOT \
         NULL DEFAULT now()\n);\n",
        quote_table(table)
    )
}

/// Creates the Postgres outbox table unless it exists.
pub async fn init_postgres(url: &str, table: &str) -> Result<()> {
    let store_name = "outbox-init";
    let client = pg_connect(store_name, url).await?;
    client.batch_execute(&init_sql_postgres(table)).await.map_err(|error| ConnectError::Postgres {
        source_name: store_name.into(),
        what: format!("creating the outbox table `{table}`"),
        error,
    })
}

fn check_pg_table(source_name: &str, table: &str) -> Result<()> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(ConnectError::Config {
            source_name: source_name.into(),
            field: "table".into(),
            reason: format!("`{table}` must be written table or schema.table"),
        });
    }
    Ok(())
}

async fn pg_connect(source_name: &str, url: &str) -> Result<tokio_postgres::Client> {
    let pg_err = |what: &str, error| ConnectError::Postgres {
        source_name: source_name.into(),
        what: what.into(),
        error,
    };
    let pg = driftless_pgtls::PgConnect::parse(url).map_err(|e| ConnectError::Config {
        source_name: source_name.into(),
        field: "url".into(),
        reason: e.to_string(),
    })?;
    let mut config = pg.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(PG_CONNECT_TIMEOUT_S));
    }
    if config.get_application_name().is_none() {
        config.application_name(format!("driftless-{source_name}"));
    }
    let (client, connection) =
        config.connect(pg.tls.clone()).await.map_err(|error| ConnectError::Connect {
            source_name: source_name.into(),
            reason: pg.connect_failure(&error),
            error,
        })?;
    let name = source_name.to_string();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // The next query on the client fails too and the source restarts; this is detail.
            tracing::debug!(source = %name, %error, "Postgres connection ended");
        }
    });
    // created_at is rendered in UTC whatever the server's default time zone.
    client.batch_execute("SET TIME ZONE 'UTC'").await.map_err(|e| pg_err("setting up", e))?;
    Ok(client)
}

/// A Postgres outbox read by polling.
#[doc(hidden)]
pub struct PgStore {
    source_name: String,
    client: tokio_postgres::Client,
    read: Statement,
    delete: Statement,
    find: Statement,
    count: Statement,
    in_batch: bool,
}

impl PgStore {
    /// Connects and checks that the table exists with the expected columns.
    pub async fn open(source_name: &str, url: &str, table: &str) -> Result<Self> {
        check_pg_table(source_name, table)?;
        let client = pg_connect(source_name, url).await?;
        let quoted = quote_table(table);
        let missing = |reason: String| ConnectError::Table {
            source_name: source_name.into(),
            table: table.into(),
            reason,
        };
        let exists: Option<String> = client
            .query_one("SELECT to_regclass($1)::text", &[&quoted])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|error| ConnectError::Postgres {
                source_name: source_name.into(),
                what: "looking up the outbox table".into(),
                error,
            })?;
        if exists.is_none() {
            return Err(missing(
                "the outbox table does not exist; create it with `driftless outbox init` (or run \
                 the SQL it prints in the service's database)"
                    .into(),
            ));
        }
        let prepare = |sql: String| {
            let client = &client;
            async move {
                client.prepare(&sql).await.map_err(|e| {
                    missing(format!(
                        "the outbox table does not have the expected columns ({e}); compare it \
                         with the SQL `driftless outbox init` prints"
                    ))
                })
            }
        };
        let read = prepare(format!(
            "SELECT seq, id::text, aggregatetype::text, aggregateid::text, type::text, \
             payload::text, headers::text, \
             to_char(created_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             (extract(epoch FROM created_at) * 1000)::float8 \
             FROM {quoted} ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .await?;
        let delete = prepare(format!("DELETE FROM {quoted} WHERE id::text = ANY($1)")).await?;
        let find = prepare(format!(
            "SELECT id::text, aggregatetype::text FROM {quoted} WHERE id::text = ANY($1)"
        ))
        .await?;
        let count = prepare(format!("SELECT count(*) FROM {quoted}")).await?;
        Ok(Self {
            source_name: source_name.into(),
            client,
            read,
            delete,
            find,
            count,
            in_batch: false,
        })
    }

    fn error(&self, what: &str, error: tokio_postgres::Error) -> ConnectError {
        ConnectError::Postgres { source_name: self.source_name.clone(), what: what.into(), error }
    }
}

impl OutboxStore for PgStore {
    async fn read(&mut self, rows_max: u32) -> Result<RawBatch> {
        self.client.batch_execute("BEGIN").await.map_err(|e| self.error("BEGIN", e))?;
        self.in_batch = true;
        let rows = self
            .client
            .query(&self.read, &[&i64::from(rows_max)])
            .await
            .map_err(|e| self.error("reading the outbox", e))?;
        let mut batch = RawBatch { rows_read: rows.len(), ..RawBatch::default() };
        for r in rows {
            let decoded = (|| -> std::result::Result<_, tokio_postgres::Error> {
                let id: String = r.try_get(1)?;
                let payload: Option<String> = r.try_get(5)?;
                let headers: Option<String> = r.try_get(6)?;
                let row = OutboxRow {
                    id,
                    aggregatetype: r.try_get(2)?,
                    aggregateid: r.try_get(3)?,
                    ty: r.try_get(4)?,
                    payload: None,
                    headers: None,
                    created_at: r.try_get(7)?,
                };
                let created_ms: Option<f64> = r.try_get(8)?;
                Ok((row, payload, headers, created_ms))
            })();
            let (mut row, payload, headers, created_ms) =
                decoded.map_err(|e| self.error("decoding an outbox row", e))?;
            // jsonb renders as valid JSON; a text column holding something else is the row's
            // problem, named as such.
            match parse_json_column(&self.source_name, &row.id, "payload", payload.as_deref())
                .and_then(|p| {
                    let h = parse_json_column(
                        &self.source_name,
                        &row.id,
                        "headers",
                        headers.as_deref(),
                    )?;
                    Ok((p, h))
                }) {
                Ok((p, h)) => {
                    row.payload = p;
                    row.headers = h;
                }
                Err(e) => {
                    batch.error = Some(e);
                    break;
                }
            }
            batch.rows.push(RawRow { row, created_ms: created_ms.map(|ms| ms as i64) });
        }
        Ok(batch)
    }

    async fn delete(&mut self, ids: Vec<String>) -> Result<()> {
        self.client
            .execute(&self.delete, &[&ids])
            .await
            .map_err(|e| self.error("deleting relayed outbox rows", e))?;
        if self.in_batch {
            self.client.batch_execute("COMMIT").await.map_err(|e| self.error("COMMIT", e))?;
            self.in_batch = false;
        }
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        if self.in_batch {
            self.client.batch_execute("ROLLBACK").await.map_err(|e| self.error("ROLLBACK", e))?;
            self.in_batch = false;
        }
        Ok(())
    }

    async fn find(&mut self, ids: Vec<String>) -> Result<Vec<(String, String)>> {
        let rows = self
            .client
            .query(&self.find, &[&ids])
            .await
            .map_err(|e| self.error("looking up outbox rows", e))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(|e| self.error("decoding an outbox row", e))
    }

    async fn backlog_rows(&mut self) -> Result<i64> {
        self.client
            .query_one(&self.count, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.error("counting outbox rows", e))
    }
}

/// Parses a JSON column's text; the error names the row and the column.
pub(crate) fn parse_json_column(
    source_name: &str,
    id: &str,
    column: &str,
    text: Option<&str>,
) -> Result<Option<Value>> {
    let Some(text) = text else { return Ok(None) };
    serde_json::from_str(text).map(Some).map_err(|e| ConnectError::OutboxRow {
        source_name: source_name.into(),
        row: id.into(),
        reason: format!("{column} is not valid JSON ({e}); store JSON text in it"),
    })
}

/// Runs a Postgres outbox source until shutdown or a failure.
pub async fn run_postgres(
    name: &str,
    config: &PgOutboxConfig,
    ctx: &mut SourceContext,
) -> Result<()> {
    // Checks the table (for cdc mode too: the same clear error), and counts its rows while the
    // source is paused before it starts.
    let mut store = PgStore::open(name, config.url.expose(), &config.outbox.table).await?;
    if !wait_while_paused_counting(&mut store, ctx).await? {
        return Ok(());
    }
    if config.mode == OutboxMode::Cdc {
        drop(store);
        let table = if config.outbox.table.contains('.') {
            config.outbox.table.clone()
        } else {
            format!("public.{}", config.outbox.table)
        };
        let mut cdc = crate::config::PgCdcConfig::new(config.url.clone());
        cdc.slot = config.slot.clone();
        cdc.tables = vec![table.clone()];
        cdc.heartbeat_interval_ms = config.heartbeat_interval_ms;
        cdc.outbox = Some(OutboxColumns { table, ..config.outbox.clone() });
        return crate::pg::cdc::run(name, &cdc, ctx).await;
    }
    relay_loop(
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

    use serde_json::json;

    use super::*;

    fn row() -> OutboxRow {
        OutboxRow {
            id: "r-1".into(),
            aggregatetype: "customers".into(),
            aggregateid: "c-42".into(),
            ty: "customer.created.v1".into(),
            payload: Some(json!({"name": "Ada"})),
            headers: None,
            created_at: Some("2024-05-01T12:30:00.123Z".into()),
        }
    }

    fn reason(e: ConnectError) -> (String, String) {
        match e {
            ConnectError::OutboxRow { row, reason, .. } => (row, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_row_maps_to_its_topic_and_event() {
        let columns = OutboxColumns { topic_prefix: "svc.".into(), ..OutboxColumns::default() };
        let (topic, e) = row_to_event("orders", &columns, row()).unwrap();
        assert_eq!(topic, "svc.customers");
        assert_eq!(e.id, "r-1");
        assert_eq!(e.source, "/outbox/orders");
        assert_eq!(e.ty, "customer.created.v1");
        assert_eq!(e.subject.as_deref(), Some("c-42"));
        assert_eq!(e.time.as_deref(), Some("2024-05-01T12:30:00.123Z"));
        assert_eq!(e.data, Some(json!({"name": "Ada"})));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        assert!(e.extensions.is_empty());
        e.validate().unwrap();

        let columns =
            OutboxColumns { event_source: Some("/svc/customers".into()), ..Default::default() };
        assert_eq!(row_to_event("orders", &columns, row()).unwrap().1.source, "/svc/customers");
    }

    #[test]
    fn headers_become_extensions_when_they_can() {
        let mut r = row();
        r.headers = Some(json!({
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "a=b", "retries": 3, "replay": true,
            "Bad-Name": "x", "nested": {"a": 1}, "id": "spoof", "nothing": null,
            "waytoolongextensionname": "x"
        }));
        let (_, e) = row_to_event("s", &OutboxColumns::default(), r).unwrap();
        let names: Vec<&str> = e.extensions.keys().map(String::as_str).collect();
        assert_eq!(names, ["replay", "retries", "traceparent", "tracestate"]);
        assert_eq!(e.id, "r-1");
        e.validate().unwrap();
    }

    #[test]
    fn missing_payload_and_time_are_left_out() {
        let mut r = row();
        r.payload = Some(Value::Null);
        r.created_at = Some("2024-05-01 12:30:00".into());
        let (_, e) = row_to_event("s", &OutboxColumns::default(), r).unwrap();
        assert_eq!((e.data, e.datacontenttype, e.time), (None, None, None));
    }

    #[test]
    fn malformed_rows_are_named_with_what_to_fix() {
        let cols = OutboxColumns::default();
        let cases: Vec<(OutboxRow, &str)> = vec![
            (OutboxRow { aggregatetype: "bad topic!".into(), ..row() }, "aggregatetype"),
            (OutboxRow { aggregatetype: "".into(), ..row() }, "aggregatetype"),
            (OutboxRow { aggregatetype: "__offsets".into(), ..row() }, "reserved"),
            (OutboxRow { aggregateid: "".into(), ..row() }, "aggregateid"),
            (OutboxRow { ty: "".into(), ..row() }, "type"),
            (OutboxRow { headers: Some(json!([1])), ..row() }, "headers"),
            (OutboxRow { headers: Some(json!({"partitionkey": 5})), ..row() }, "partitionkey"),
        ];
        for (r, needle) in cases {
            let (id, why) = reason(row_to_event("s", &cols, r).unwrap_err());
            assert_eq!(id, "r-1");
            assert!(why.contains(needle), "{why}");
        }
    }

    #[test]
    fn a_batch_keeps_the_rows_before_a_malformed_one() {
        let raw = RawBatch {
            rows: vec![
                RawRow { row: row(), created_ms: None },
                RawRow {
                    row: OutboxRow { id: "r-2".into(), aggregatetype: "b d".into(), ..row() },
                    created_ms: None,
                },
                RawRow { row: OutboxRow { id: "r-3".into(), ..row() }, created_ms: None },
            ],
            error: None,
            rows_read: 3,
        };
        let b = Batch::build("s", &OutboxColumns::default(), raw);
        assert_eq!(b.ids(), ["r-1"]);
        assert_eq!(reason(b.error.unwrap()).0, "r-2");
    }

    #[test]
    fn identifiers_are_quoted() {
        let sql = init_sql_postgres("app.outbox");
        assert!(sql.starts_with("CREATE SCHEMA IF NOT EXISTS \"app\";"), "{sql}");
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"app\".\"outbox\""), "{sql}");
        assert!(check_pg_table("s", "a.b.c").is_err());
        assert!(check_pg_table("s", "a.").is_err());
        assert!(check_pg_table("s", "public.outbox").is_ok());
    }

    #[test]
    fn json_columns_name_the_row() {
        assert_eq!(parse_json_column("s", "r", "payload", None).unwrap(), None);
        let (id, why) = reason(parse_json_column("s", "r-9", "payload", Some("{x")).unwrap_err());
        assert_eq!(id, "r-9");
        assert!(why.contains("payload is not valid JSON"), "{why}");
    }
}
