//! Driftless sinks: consumer-group members of the in-process broker that keep projections in
//! sync — tables in Postgres or SQLite, or an HTTP webhook.
//!
//! - [`config`]: `[[sink]]` entries (target, mappings, limits);
//! - [`mapping`]: the anti-corruption layer — jq expressions (run by jaq) that turn a
//!   publisher's events into the consumer's rows;
//! - [`postgres`], [`sqlite`]: batched, version-guarded upserts and deletes with the applied
//!   position in the same transaction;
//! - [`webhook`]: signed CloudEvents over HTTP, with retries and a circuit breaker;
//! - [`runtime`]: starts, supervises, pauses and resumes sinks, and exposes their status.
//!
//! Invariants every sink keeps (DESIGN.md §3, §6):
//! - a delivery is acknowledged only after its effect is committed in the target, so a crash
//!   redelivers rather than loses;
//! - a redelivered or stale event never overwrites newer state: each row carries the version of
//!   the event that wrote it, and deletes leave tombstones;
//! - an event that keeps failing parks only its key (the broker's per-key order) and goes to
//!   the group's dead-letter queue; an unavailable target counts against no event;
//! - nothing here knows about HTTP servers; the server reads [`runtime::SinkStatus`] and calls
//!   [`runtime::Sinks`].

pub mod batch;
pub mod config;
mod error;
pub mod mapping;
pub mod postgres;
pub mod rebuild;
pub mod runtime;
pub mod sqlite;
pub mod values;
pub mod webhook;

pub use config::{MappingConfig, SinkConfig, TargetConfig};
pub use error::{ApplyError, Result, SinkError};
pub use runtime::{SinkState, SinkStatus, Sinks};
