//! The reconciliation error type. Every variant names the reconciliation and what an operator
//! can do.

use driftless_broker::BrokerError;

/// Result with [`ReconcileError`].
pub type Result<T, E = ReconcileError> = std::result::Result<T, E>;

/// Why a reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The configuration is invalid; nothing was started.
    #[error("reconcile `{name}`: invalid setting `{field}`: {reason}")]
    Config {
        /// The reconciliation's name.
        name: String,
        /// The setting at fault.
        field: String,
        /// What was expected.
        reason: String,
    },
    /// A database query failed (connection, missing table or column, a bad expression).
    #[error("reconcile `{name}`: {side} database: {reason}")]
    Database {
        /// The reconciliation's name.
        name: String,
        /// `source` or `projection`.
        side: &'static str,
        /// What happened.
        reason: String,
    },
    /// The broker refused an operation (reading the sink's lag, appending corrections).
    #[error("reconcile `{name}`: broker: {error}")]
    Broker {
        /// The reconciliation's name.
        name: String,
        /// The broker's error.
        #[source]
        error: BrokerError,
    },
    /// A run is already in progress.
    #[error("reconcile `{0}` is already running; wait for it to finish")]
    Busy(String),
}
