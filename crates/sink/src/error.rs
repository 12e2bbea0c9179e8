//! The sinks' error types. Every variant names the sink and what an operator can do.
//!
//! Two levels: [`SinkError`] stops or restarts a whole sink (bad config, target unreachable,
//! schema mismatch); [`ApplyError`] is what one attempt to apply a batch met, and decides what
//! happens to the deliveries: retried as they are (the target is unavailable, not the events'
//! fault), isolated event by event (one row was refused), or the sink stops (the target's schema
//! does not fit the mapping).

use driftless_broker::BrokerError;

/// Result with [`SinkError`].
pub type Result<T, E = SinkError> = std::result::Result<T, E>;

/// Why a sink could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration is invalid; nothing was started.
    #[error("sink `{sink}`: invalid setting `{field}`: {reason}")]
    Config {
        /// The sink's name.
        sink: String,
        /// The setting at fault.
        field: String,
        /// What was expected.
        reason: String,
    },
    /// The target table does not fit the mapping.
    #[error("sink `{sink}`: table `{table}`: {reason}")]
    Schema {
        /// The sink's name.
        sink: String,
        /// The target table.
        table: String,
        /// What is missing or wrong, and the fix.
        reason: String,
    },
    /// The target cannot be reached (connection refused or lost, database restarting).
    #[error("sink `{sink}`: target unavailable: {reason}")]
    Unavailable {
        /// The sink's name.
        sink: String,
        /// What happened.
        reason: String,
    },
    /// The broker refused an operation.
    #[error("sink `{sink}`: broker: {error}")]
    Broker {
        /// The sink's name.
        sink: String,
        /// The broker's error.
        #[source]
        error: BrokerError,
    },
}

impl SinkError {
    /// Whether retrying later may succeed without an operator (the supervisor restarts the sink
    /// with backoff). A schema mismatch is retried too: fixing the table is the operator's cure,
    /// and the sink resumes by itself once it fits.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Config { .. } => false,
            SinkError::Schema { .. } | SinkError::Unavailable { .. } => true,
            SinkError::Broker { error, .. } => {
                matches!(error, BrokerError::UnknownTopic(_) | BrokerError::UnknownMember { .. })
            }
        }
    }
}

/// What applying a batch to a target met.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The target is unavailable; the batch is retried unchanged once it is back. The events
    /// are not at fault, so no delivery attempt is counted.
    #[error("{0}")]
    Unavailable(String),
    /// The target refused the batch's content (a constraint, a value of the wrong type). The
    /// sink applies the batch event by event to find the events at fault.
    #[error("{0}")]
    Rejected(String),
    /// The target's schema does not fit the mapping: the sink stops and says what to fix.
    #[error("table `{table}`: {reason}")]
    Schema {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
}
