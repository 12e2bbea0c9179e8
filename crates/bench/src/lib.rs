//! Benchmarks behind `driftless bench` (DESIGN.md §9).
//!
//! Each benchmark measures one Driftless figure and, in the same run and on the same hardware, the
//! reference it should be judged against, so that its report carries ratios that still mean
//! something on a noisy machine: [`log_bench`] (raw disk as reference), [`e2e_bench`] (Postgres
//! CDC → log → sink → Postgres projection, with plain batched upserts as reference),
//! [`reconcile_bench`] (drift detection, with reading both tables whole as reference) and, with the
//! `broker` feature, `broker_bench` (NATS JetStream as reference, which pulls in async-nats).
//!
//! Invariants:
//! - a benchmark is a library function returning a serializable report; the CLI only parses
//!   arguments and prints. Benchmarks are commands, never timed tests;
//! - a benchmark writes only inside a fresh temporary directory it creates, and removes it at the
//!   end unless asked to keep it;
//! - memory does not grow with the number of events measured: latencies go into fixed-size
//!   [`histogram::Histogram`]s, payloads are generated once before timing starts (one bounded
//!   exception: `e2e`'s latency phase keeps an 8-byte commit time per row, at most
//!   [`e2e_bench::LATENCY_ROWS_MAX`] rows).

#[cfg(feature = "broker")]
pub mod broker_bench;
pub mod cpu;
pub mod disk;
pub mod e2e_bench;
mod error;
pub mod histogram;
pub mod log_bench;
pub mod reconcile_bench;

pub use error::BenchError;
pub use histogram::Histogram;
pub use log_bench::{run_log_bench, BenchDurability, LogBenchParams, LogBenchReport};
