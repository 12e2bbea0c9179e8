//! Driftless connectors: the sources that bring facts into the log from services' own databases.
//!
//! - [`pg::cdc`]: Postgres change data capture over logical replication (`pgoutput` v1);
//! - [`outbox`]: the transactional outbox, read from Postgres (through CDC or by polling) or from
//!   SQLite (by polling);
//! - [`runtime`]: starts the configured sources, restarts them after transient failures, pauses
//!   and resumes them, and exposes their status for the API and `/metrics`;
//! - [`failpoint`]: where tests make a source fail on purpose, to reproduce crashes in-process.
//!
//! Invariants every source keeps:
//! - a position is confirmed upstream (slot flush LSN, outbox row deleted or marked) only after
//!   the events it covers are durable in the log;
//! - event ids are deterministic functions of the upstream position, so a replay after a crash
//!   appends nothing twice (the broker's idempotent produce, plus each source's own check);
//! - nothing here knows about HTTP; the server reads [`runtime::SourceStatus`] and calls
//!   [`runtime::Sources`].

pub mod config;
pub mod emit;
mod error;
pub mod failpoint;
pub mod outbox;
pub mod pg;
pub mod runtime;
pub mod sqlite_outbox;

pub use config::{SourceConfig, SourceKind};
pub use error::{ConnectError, Result};
pub use runtime::{SourceState, SourceStatus, Sources};
