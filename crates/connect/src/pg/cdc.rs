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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use driftless_core::Event;
use pg_walstream::{ColumnData, LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::types::{text_to_json, TypeCatalog};
use super::{format_lsn, pg_error, quote_ident, quote_literal, quote_table, PgTarget};
use crate::config::{OnSlotLost, Payload, PgCdcConfig};
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
}

/// The deterministic event id of change `ordinal` of the transaction committed at `commit_lsn`.
pub fn event_id(source: &str, commit_lsn: u64, ordinal: u32) -> String {
    format!("{source}:{commit_lsn:016X}:{ordinal}")
}

/// The commit LSN encoded in an id made by [`event_id`] for `source`.
fn id_commit_lsn(source: &str, id: &str) -> Option<u64> {
    let rest = id.strip_prefix(source)?.strip_prefix(':')?;
    let (lsn, _) = rest.split_once(':')?;
    u64::from_str_radix(lsn, 16).ok()
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
}

impl Relation {
    fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
    fn debezium(self) -> &'static str {
        match self {
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
    /// Already durable (ends before the stored position): read past it.
    skip: bool,
    ordinal: u32,
    events: Vec<(String, Event)>,
    bytes: usize,
    /// Events of this transaction already appended in an earlier (memory-bounded) batch.
    flushed_early: bool,
}

/// Events waiting to be appended, and the position they complete.
#[derive(Default)]
struct Batch {
    events: Vec<(String, Event)>,
    bytes: usize,
    /// Highest position that is durable once `events` are.
    ack_lsn: Option<u64>,
    /// Commit times (Unix µs) of the transactions in `events`, for the latency histogram.
    commit_times_us: Vec<i64>,
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
    client: Arc<tokio_postgres::Client>,
    catalog: TypeCatalog,
    relations: HashMap<u32, Relation>,
    state: CdcState,
    /// Marks stored for the current unacknowledged stretch of appends.
    marks: Option<BTreeMap<String, Vec<u64>>>,
    /// Ids found in the log since the stored marks at start, and the highest commit LSN among
    /// them; dropped once the acknowledged position passes it.
    recovered: Option<(HashSet<String>, u64)>,
    last_activity_ms: Arc<AtomicI64>,
    last_state_write: Instant,
}

/// Runs the CDC source until shutdown or a failure.
pub async fn run(name: &str, config: &PgCdcConfig, ctx: &mut SourceContext) -> Result<()> {
    let target = PgTarget::parse(name, &config.url)?;
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
    check_tables(name, &client, &publication, config).await?;

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
    prepare_slot(name, &client, &slot, config.on_slot_lost, &mut state).await?;
    ctx.emitter.put_state(encode_state(&state)).await?;

    let recovered = match &state.pending {
        Some(marks) => {
            let ids = ctx.emitter.ids_since(marks.clone()).await?;
            let ours: HashSet<String> =
                ids.into_iter().filter(|id| id_commit_lsn(name, id).is_some()).collect();
            let max = ours.iter().filter_map(|id| id_commit_lsn(name, id)).max().unwrap_or(0);
            tracing::info!(
                source = name,
                ids = ours.len(),
                "recovered ids appended before a restart"
            );
            Some((ours, max))
        }
        None => None,
    };

    let mut repl_config = ReplicationConfig::new(
        target.host.clone(),
        target.user.clone(),
        target.password.clone(),
        target.database.clone(),
        slot.clone(),
        publication.clone(),
    )
    .with_port(target.port)
    .with_start_lsn(Lsn(state.confirmed_lsn))
    .with_ack_lsn(Lsn(state.confirmed_lsn))
    .with_status_interval(Duration::from_secs(1))
    .with_wakeup_interval(Duration::from_secs(1))
    // Values arrive in text form rendered with the walsender's settings: pin the ones that
    // change how dates and times print.
    .with_options("-c DateStyle=ISO,MDY -c IntervalStyle=postgres -c TimeZone=UTC");
    repl_config.application_name = Some(format!("driftless-{name}"));
    let mut repl =
        ReplicationClient::connect(repl_config).await.map_err(|e| repl_error(name, e))?;

    let last_activity_ms = Arc::new(AtomicI64::new(now_ms()));
    let _background = AbortOnDrop(tokio::spawn(heartbeat_and_lag(
        name.to_string(),
        Arc::clone(&client),
        slot.clone(),
        config.heartbeat_interval_ms,
        Arc::clone(&last_activity_ms),
        Arc::clone(&ctx.status),
    )));
    ctx.status.set_state(SourceState::Running, None);
    let mut cdc = Cdc {
        name,
        config,
        database: target.database.clone(),
        client,
        catalog,
        relations: HashMap::new(),
        marks: None,
        state,
        recovered,
        last_activity_ms,
        last_state_write: Instant::now(),
    };
    let result = cdc.stream(&mut repl, ctx).await;
    repl.stop();
    result
}

fn repl_error(name: &str, e: pgwire_replication::PgWireError) -> ConnectError {
    let text = e.to_string();
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// Refuses tables whose changes could not be keyed.
async fn check_tables(
    name: &str,
    client: &tokio_postgres::Client,
    publication: &str,
    config: &PgCdcConfig,
) -> Result<()> {
    let rows = client
        .query(
            "SELECT pt.schemaname::text, pt.tablename::text, c.relreplident::text, \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             WHERE pt.pubname = $1",
            &[&publication],
        )
        .await
        .map_err(pg_error(name, "reading the publication's tables"))?;
    for row in rows {
        let (schema, table, identity, has_pk): (String, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let qualified = format!("{schema}.{table}");
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
    Ok(())
}

/// Creates the slot on first start; applies `on_slot_lost` when a slot this source had a
/// position in is gone or invalidated.
async fn prepare_slot(
    name: &str,
    client: &tokio_postgres::Client,
    slot: &str,
    policy: OnSlotLost,
    state: &mut CdcState,
) -> Result<()> {
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

/// Measures slot lag every second and writes a heartbeat when the source was idle for
/// `heartbeat_interval_ms`.
async fn heartbeat_and_lag(
    name: String,
    client: Arc<tokio_postgres::Client>,
    slot: String,
    heartbeat_interval_ms: u64,
    last_activity_ms: Arc<AtomicI64>,
    status: Arc<crate::runtime::SourceStatus>,
) {
    let mut last_heartbeat_ms = now_ms();
    loop {
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
            let event = if batch.events.is_empty() && batch.ack_lsn.is_none() {
                if !ctx.wait_while_paused().await {
                    return Ok(());
                }
                tokio::select! {
                    r = repl.recv() => r,
                    () = ctx.shutdown_signal() => return Ok(()),
                }
            } else {
                tokio::select! {
                    biased;
                    r = repl.recv() => r,
                    () = std::future::ready(()) => {
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
                    txn = Some(Txn {
                        commit_lsn: final_lsn.0,
                        xid,
                        commit_time_us: commit_time_micros + PG_EPOCH_OFFSET_US,
                        skip: final_lsn.0 < self.state.confirmed_lsn,
                        ordinal: 0,
                        events: Vec::new(),
                        bytes: 0,
                        flushed_early: false,
                    });
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
                            self.flush(&mut batch, repl, ctx).await?;
                        }
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    let Some(mut t) = txn.take() else { continue };
                    if !t.skip {
                        let size = t.ordinal;
                        if !t.flushed_early {
                            for (_, e) in &mut t.events {
                                e.extensions.insert("pgtxsize".into(), json!(size));
                            }
                        }
                        batch.bytes += t.bytes;
                        batch.events.append(&mut t.events);
                        batch.commit_times_us.push(t.commit_time_us);
                        if size > 0 {
                            self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
                        }
                    }
                    batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(end_lsn.0));
                }
                ReplicationEvent::Message { transactional: false, lsn, prefix, .. } => {
                    if prefix == HEARTBEAT_PREFIX && txn.is_none() {
                        batch.ack_lsn = Some(batch.ack_lsn.unwrap_or(0).max(lsn.0));
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

    /// Appends the batch durably (after storing the marks), then acknowledges its position.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        repl: &ReplicationClient,
        ctx: &mut SourceContext,
    ) -> Result<()> {
        let events = std::mem::take(&mut batch.events);
        let count = events.len() as u64;
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
            ctx.emitter.emit(events).await?;
            let now = now_ms();
            ctx.status.appended(count, now);
            ctx.status.rows_total.fetch_add(count, Ordering::Relaxed);
            for t in batch.commit_times_us.drain(..) {
                let waited_us = (now * 1000 - t).max(0) as u64;
                ctx.status.commit_to_durable.observe(Duration::from_micros(waited_us));
            }
        }
        batch.bytes = 0;
        if let Some(lsn) = batch.ack_lsn.take() {
            if lsn > self.state.confirmed_lsn {
                repl.update_applied_lsn(Lsn(lsn));
                self.state.confirmed_lsn = lsn;
                self.marks = None;
                if self.recovered.as_ref().is_some_and(|(_, max)| lsn > *max) {
                    self.recovered = None;
                }
                if count == 0
                    && self.last_state_write.elapsed().as_millis() as u64 >= STATE_REFRESH_MS
                {
                    self.state.pending = None;
                    ctx.emitter.put_state(encode_state(&self.state)).await?;
                    self.last_state_write = Instant::now();
                }
            }
        }
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
            LogicalReplicationMessage::Update { relation_id, old_tuple, new_tuple, .. } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    self.change(t, relation_id, Op::Update, old_tuple.as_ref(), Some(&new_tuple))?;
                }
            }
            LogicalReplicationMessage::Delete { relation_id, old_tuple, .. } => {
                if let Some(t) = txn.filter(|t| !t.skip) {
                    self.change(t, relation_id, Op::Delete, Some(&old_tuple), None)?;
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
        let qualified = format!("{schema}.{table}");
        let cols: Vec<Column> = columns
            .iter()
            .map(|c| Column { name: c.name.to_string(), type_oid: c.type_id })
            .collect();
        let is_outbox =
            self.config.outbox.as_ref().is_some_and(|o| o.table == qualified || o.table == table);
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
            None => {
                columns.iter().enumerate().filter(|(_, c)| c.is_key()).map(|(i, _)| i).collect()
            }
        };
        if key.is_empty() && !is_outbox {
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
        if let Err(e) = driftless_core::TopicName::new(topic.clone()) {
            return Err(ConnectError::Table {
                source_name: self.name.into(),
                table: qualified,
                reason: format!("its topic is invalid ({e}); set routes.\"{schema}.{table}\""),
            });
        }
        Ok(Relation {
            schema: schema.into(),
            table: table.into(),
            columns: cols,
            key,
            topic,
            is_outbox,
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
        if data.is_unchanged() {
            return Ok(None);
        }
        if data.is_null() {
            return Ok(Some(Value::Null));
        }
        let text = data.as_str().ok_or_else(|| ConnectError::Value {
            source_name: self.name.into(),
            table: rel.qualified(),
            column: col.name.clone(),
            reason: "the value is not valid UTF-8 text".into(),
        })?;
        text_to_json(&self.catalog, col.type_oid, &text).map(Some).map_err(|reason| {
            ConnectError::Value {
                source_name: self.name.into(),
                table: rel.qualified(),
                column: col.name.clone(),
                reason,
            }
        })
    }

    fn change(
        &self,
        t: &mut Txn,
        relation_id: u32,
        op: Op,
        old: Option<&TupleData>,
        new: Option<&TupleData>,
    ) -> Result<()> {
        let rel = self.relations.get(&relation_id).ok_or_else(|| ConnectError::Replication {
            source_name: self.name.into(),
            reason: format!("a change for relation {relation_id} arrived before its description"),
        })?;
        if rel.is_outbox {
            // Outbox rows are events already; only their insertion matters.
            if let (Op::Insert, Some(tuple)) = (op, new) {
                let (row, _) = self.row(rel, tuple)?;
                let event = self.outbox_event(rel, row)?;
                self.push(t, event);
            }
            return Ok(());
        }
        let before = match old {
            Some(o) => Some(self.row(rel, o)?),
            None => None,
        };
        let after = match new {
            Some(n) => Some(self.row(rel, n)?),
            None => None,
        };
        // Key columns in the table's key order (a JSON object would sort them by name).
        let key_of = |row: &Map<String, Value>| -> Vec<(String, Value)> {
            rel.key
                .iter()
                .filter_map(|&i| {
                    let name = &rel.columns[i].name;
                    row.get(name).map(|v| (name.clone(), v.clone()))
                })
                .collect()
        };
        // A key change is a delete of the old key and an insert of the new one (as Debezium
        // does), so each key's history stays on its own partition, in order.
        if let (Op::Update, Some((b, _)), Some((a, _))) = (op, &before, &after) {
            let (old_key, new_key) = (key_of(b), key_of(a));
            if !old_key.is_empty() && old_key != new_key {
                let delete = self.change_event(t, rel, Op::Delete, old_key, before.clone(), None);
                self.push(t, delete);
                let insert = self.change_event(t, rel, Op::Insert, new_key, None, after);
                self.push(t, insert);
                return Ok(());
            }
        }
        let key = match (&after, &before) {
            (Some((a, _)), _) if op != Op::Delete => key_of(a),
            (_, Some((b, _))) => key_of(b),
            _ => Vec::new(),
        };
        let event = self.change_event(t, rel, op, key, before, after);
        self.push(t, event);
        Ok(())
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
        event.extensions.insert("pglsn".into(), json!(format_lsn(t.commit_lsn)));
        event.extensions.insert("pgxid".into(), json!(t.xid));
        event.extensions.insert("pgtxorder".into(), json!(ordinal));
        event
            .extensions
            .entry("sequence".to_string())
            .or_insert_with(|| json!(format!("{:016X}{ordinal:08X}", t.commit_lsn)));
        if event.time.is_none() {
            event.time = Some(rfc3339_from_unix_us(t.commit_time_us));
        }
        t.bytes += event_bytes(&event);
        t.events.push((topic, event));
    }

    fn change_event(
        &self,
        t: &Txn,
        rel: &Relation,
        op: Op,
        key: Vec<(String, Value)>,
        before: Option<(Map<String, Value>, Vec<String>)>,
        after: Option<(Map<String, Value>, Vec<String>)>,
    ) -> (String, Event) {
        let subject = match key.len() {
            0 => None,
            1 => key.first().map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => Some(Value::Array(key.iter().map(|(_, v)| v.clone()).collect()).to_string()),
        };
        let key: Map<String, Value> = key.into_iter().collect();
        let mut event = Event::new(
            String::new(),
            format!("/pg/{}", self.database),
            format!("{}.{}.{}", rel.schema, rel.table, op.name()),
        );
        event.subject = subject.clone();
        if subject.is_none() {
            // Truncates concern the whole table: keep them in order on one partition.
            event.extensions.insert("partitionkey".into(), json!(rel.qualified()));
        }
        event.datacontenttype = Some("application/json".into());
        let data = match self.config.payload {
            Payload::Cloudevents => {
                let mut unchanged: Vec<String> = Vec::new();
                let mut obj = Map::new();
                obj.insert("op".into(), json!(op.name()));
                obj.insert("table".into(), json!(rel.qualified()));
                obj.insert("key".into(), Value::Object(key));
                for (field, row) in [("before", before), ("after", after)] {
                    match row {
                        Some((r, u)) => {
                            if field == "after" {
                                unchanged = u;
                            }
                            obj.insert(field.into(), Value::Object(r));
                        }
                        None => {
                            obj.insert(field.into(), Value::Null);
                        }
                    }
                }
                if !unchanged.is_empty() {
                    obj.insert("unchanged".into(), json!(unchanged));
                }
                Value::Object(obj)
            }
            Payload::Debezium => {
                let with_placeholder = |row: Option<(Map<String, Value>, Vec<String>)>| match row {
                    Some((mut r, unchanged)) => {
                        for c in unchanged {
                            r.insert(c, json!(DEBEZIUM_UNAVAILABLE));
                        }
                        Value::Object(r)
                    }
                    None => Value::Null,
                };
                json!({
                    "before": with_placeholder(before),
                    "after": with_placeholder(after),
                    "source": {
                        "version": env!("CARGO_PKG_VERSION"),
                        "connector": "postgresql",
                        "name": self.name,
                        "ts_ms": t.commit_time_us / 1000,
                        "snapshot": "false",
                        "db": self.database,
                        "schema": rel.schema,
                        "table": rel.table,
                        "txId": t.xid,
                        "lsn": t.commit_lsn,
                    },
                    "op": op.debezium(),
                    "ts_ms": now_ms(),
                })
            }
        };
        event.data = Some(data);
        (rel.topic.clone(), event)
    }

    fn outbox_event(&self, rel: &Relation, mut row: Map<String, Value>) -> Result<(String, Event)> {
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

/// Approximate in-memory size of an event, for the buffer limit.
fn event_bytes(e: &Event) -> usize {
    e.id.len()
        + e.ty.len()
        + e.subject.as_ref().map_or(0, String::len)
        + e.data.as_ref().map_or(0, |d| d.to_string().len())
        + 256
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` from Unix microseconds (civil-from-days, no time zone data).
pub fn rfc3339_from_unix_us(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

/// Bytes of `b` (for tests of the state encoding).
#[doc(hidden)]
pub fn decode_state(b: &Bytes) -> Option<CdcState> {
    serde_json::from_slice(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_commit_lsn() {
        let id = event_id("app", 0x16_B374_D848, 7);
        assert_eq!(id, "app:00000016B374D848:7");
        assert_eq!(id_commit_lsn("app", &id), Some(0x16_B374_D848));
        assert_eq!(id_commit_lsn("other", &id), None);
        assert_eq!(id_commit_lsn("app", "app-2:00:1"), None);
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
