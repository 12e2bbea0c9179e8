//! Postgres plumbing shared by CDC and the polling outbox: connection settings from a URL, and
//! the control-plane client.
//!
//! Invariant: passwords never appear in errors or logs.

pub mod cdc;
pub mod types;
