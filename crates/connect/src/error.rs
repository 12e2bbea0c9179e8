//! The connectors' error type. Every variant names the source and what an operator can do.

use driftless_broker::BrokerError;

/// Result with [`ConnectError`].
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// Why a source could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is invalid; nothing was started.
    #[error("source `{source_name}`: invalid setting `{field}`: {reason}")]
    Config {
        /// The source's name.
        source_name: String,
        /// The setting at fault.
        field: String,
        /// What was expected.
        reason: String,
    },
    /// A Postgres query or connection failed.
    #[error(
        "source `{source_name}`: Postgres {what} failed: {}",
        driftless_pgtls::error_text(error)
    )]
    Postgres {
        /// The source's name.
        source_name: String,
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        error: tokio_postgres::Error,
    },
    /// Connecting to Postgres failed: `reason` names the redacted URL and the cause (refused,
    /// timed out, authentication, unknown database, TLS), from
    /// [`driftless_pgtls::PgConnect::connect_failure`].
    #[error("source `{source_name}`: {reason}")]
    Connect {
        /// The source's name.
        source_name: String,
        /// The whole sentence.
        reason: String,
        /// The driver's error (whether retrying may help is read from it).
        #[source]
        error: tokio_postgres::Error,
    },
    /// The replication stream failed (connection lost, protocol error, server error).
    #[error("source `{source_name}`: replication stream failed: {reason}")]
    Replication {
        /// The source's name.
        source_name: String,
        /// What happened.
        reason: String,
    },
    /// The replication slot this source owned is gone and the policy says to stop.
    #[error(
        "source `{source_name}`: replication slot `{slot}` was lost ({reason}); changes made \
         while it was missing cannot be recovered from WAL. Set on_slot_lost = \"resnapshot\" to \
         re-read the tables, or recreate the source under a new name"
    )]
    SlotLost {
        /// The source's name.
        source_name: String,
        /// The slot.
        slot: String,
        /// How it was noticed.
        reason: String,
    },
    /// A table cannot be captured as configured.
    #[error("source `{source_name}`: table `{table}`: {reason}")]
    Table {
        /// The source's name.
        source_name: String,
        /// `schema.table`.
        table: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A value could not be converted to JSON.
    #[error("source `{source_name}`: column `{column}` of `{table}`: {reason}")]
    Value {
        /// The source's name.
        source_name: String,
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// An outbox row is malformed (it stays in the outbox; fix or delete it).
    #[error("source `{source_name}`: outbox row `{row}`: {reason}")]
    OutboxRow {
        /// The source's name.
        source_name: String,
        /// The row's id.
        row: String,
        /// What is wrong.
        reason: String,
    },
    /// A SQLite operation failed.
    #[error("source `{source_name}`: SQLite {what} failed: {error}")]
    Sqlite {
        /// The source's name.
        source_name: String,
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        error: rusqlite::Error,
    },
    /// Appending to the log failed.
    #[error("source `{source_name}`: appending to the log failed: {error}")]
    Broker {
        /// The source's name.
        source_name: String,
        /// The broker's error.
        #[source]
        error: BrokerError,
    },
    /// The source's stored position is unreadable.
    #[error("source `{source_name}`: stored position is unreadable: {reason}")]
    State {
        /// The source's name.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// A failpoint a test armed fired (a simulated crash; see [`crate::failpoint`]).
    #[error("source `{source_name}`: failpoint `{failpoint}` fired (armed by a test)")]
    Failpoint {
        /// The source's name.
        source_name: String,
        /// Which one.
        failpoint: &'static str,
    },
}

impl ConnectError {
    /// Whether retrying after a pause may succeed (connection loss, server restart), as opposed
    /// to a configuration or data problem an operator must fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Postgres { error, .. } | ConnectError::Connect { error, .. } => {
                error.is_closed()
                    || error.as_db_error().is_none_or(|db| {
                        // Connection-level trouble (class 08), admin shutdown (57P01..57P03)
                        // and serialization failures are worth retrying.
                        let code = db.code().code();
                        code.starts_with("08") || code.starts_with("57P") || code == "40001"
                    })
            }
            // A simulated crash: restart as after a real one.
            ConnectError::Replication { .. } | ConnectError::Failpoint { .. } => true,
            ConnectError::Sqlite { error, .. } => matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            // A topic deleted under a running source is recreated by the retry.
            ConnectError::Broker { error: BrokerError::UnknownTopic(_), .. } => true,
            // A poisoned partition or a full disk needs an operator, not a retry loop.
            ConnectError::Broker { .. }
            | ConnectError::Config { .. }
            | ConnectError::SlotLost { .. }
            | ConnectError::Table { .. }
            | ConnectError::Value { .. }
            | ConnectError::OutboxRow { .. }
            | ConnectError::State { .. } => false,
        }
    }
}
