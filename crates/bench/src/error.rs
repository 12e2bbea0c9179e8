//! Errors of the benchmarks.
//!
//! Invariant: each error says what the benchmark was doing; the underlying cause is kept as the
//! error's `source` (not repeated in its message), so a caller printing the chain sees each fact
//! once.

use std::io;
use std::path::PathBuf;

/// Everything that can make a benchmark fail.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A parameter is out of range; the message names the command-line flag and its limit.
    #[error("invalid benchmark parameter: {0}")]
    InvalidParams(String),

    /// Setting up or driving a server under test failed (bind, HTTP, NATS).
    #[error("broker benchmark: {0}")]
    Setup(String),

    /// The end-to-end benchmark's pipeline (PostgreSQL, source, broker, sink) could not be set
    /// up, or did not deliver every row.
    #[error("end-to-end benchmark: {0}")]
    E2e(String),

    /// A filesystem operation of the benchmark itself failed.
    #[error("{op} {path}")]
    Io {
        /// What the benchmark was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The log under test returned an error.
    #[error("{op}")]
    Log {
        /// What the benchmark asked the log to do.
        op: &'static str,
        /// The log's error.
        #[source]
        source: driftless_log::LogError,
    },

    /// The benchmark's topic name was rejected (a bug: it is a constant).
    #[error("benchmark topic name")]
    TopicName(#[from] driftless_core::InvalidTopicName),

    /// A producer thread panicked.
    #[error("producer thread {0} panicked")]
    ProducerPanicked(usize),

    /// The log did not hold what was appended after reopening: a correctness failure, not a
    /// performance one.
    #[error("after reopening, the partition ends at offset {found}, but {expected} events were appended")]
    LostEvents {
        /// Events appended and acknowledged.
        expected: u64,
        /// One past the last offset found after reopening.
        found: u64,
    },
}

impl BenchError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { op, path: path.into(), source }
    }

    pub(crate) fn log(op: &'static str) -> impl FnOnce(driftless_log::LogError) -> Self {
        move |source| Self::Log { op, source }
    }
}
