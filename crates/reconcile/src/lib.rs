//! Driftless reconciliation: finds drift between a source of truth (a Postgres or SQLite table)
//! and a sink's projection, cheaply, and repairs it through the log.
//!
//! - [`config`]: `[[reconcile]]` entries and the [`config::Plan`] derived from the sink's mapping
//!   (one definition drives apply and comparison);
//! - [`digest`]: the bucket and row hashes both databases compute in SQL;
//! - [`db`]: the queries per database;
//! - [`run`]: one run — bucket digests, descent into differing buckets, a re-check of candidates
//!   after the lag window, the report, corrections;
//! - [`repair`]: corrections dry-run through the sinks' mappings before they are appended, and
//!   followed until applied, dead-lettered or still pending;
//! - [`runtime`]: schedules, on-demand runs and the history of runs.
//!
//! Invariants (DESIGN.md §7): digests are computed inside the databases and only the rows of
//! differing buckets leave them; a difference that is still in flight (newer than what the sink
//! applied) is re-checked, not reported; repairs are correction events appended to the sink's
//! topic, applied by every projection on its normal idempotent path — the projection is never
//! written directly; a repair appends nothing its sink's mapping would not turn into the source's
//! row, and reports success only when the re-check after the sinks applied it finds no drift.

pub mod config;
pub mod db;
pub mod digest;
mod error;
pub mod repair;
pub mod run;
pub mod runtime;
pub mod topic;

pub use config::{Plan, ReconcileConfig};
pub use error::{ReconcileError, Result};
pub use run::{DriftKind, RunReport};
pub use runtime::{ReconcileStatus, Reconcilers};
