//! Test support for Driftless: throwaway PostgreSQL 15 and NATS (JetStream) servers, started
//! on free loopback ports from any crate's tests or benchmarks, and torn down on drop; and the
//! crash harness ([`CrashChild`]) that re-runs a test as a child process to be SIGKILLed; signals
//! for any process ([`send_signal`]); a small tmpfs ([`Tmpfs`]) a test can fill to ENOSPC; and a
//! throwaway certificate authority ([`TestCa`]) for TLS tests.
//!
//! ```no_run
//! use driftless_testkit::{NatsServer, PgServer};
//!
//! let pg = PgServer::start()?;
//! assert_eq!(pg.psql("SHOW wal_level")?, "logical");
//! pg.create_database("app")?;
//! let url = pg.url("app"); // postgres://postgres@127.0.0.1:<port>/app
//!
//! let nats = NatsServer::start()?;
//! let nats_url = nats.url(); // nats://127.0.0.1:<port>
//! # let _ = (url, nats_url);
//! # Ok::<(), driftless_testkit::TestkitError>(())
//! ```
//!
//! # Why real servers
//!
//! Driftless is a sync engine: its correctness lives in how it talks to PostgreSQL's logical
//! replication and to NATS JetStream. Mocks would encode our assumptions about those protocols,
//! and tests against them would pass exactly when the assumptions are wrong. So tests talk to
//! real servers, never mocks; this crate makes that cheap (a PostgreSQL starts in about a
//! second) and safe to run in parallel.
//!
//! # Invariants
//!
//! - Each server gets its own scratch directory and a port reserved by binding `127.0.0.1:0`;
//!   a start that loses its port to another process retries on a new one (up to 3 times).
//! - `start` returns only once *this* server is ready, and fails with the server's log tail if
//!   it exits or is not ready within 30 s.
//! - Dropping a server stops it (SIGKILL after a 5 s grace period), reaps it and removes its
//!   directory: no process or file is left behind.
//! - As root, PostgreSQL runs as user `postgres` (initdb refuses root).
//! - Required programs: `/usr/lib/postgresql/15/bin` (or `DRIFTLESS_PG_BIN`) and `nats-server`
//!   (or `DRIFTLESS_NATS_BIN`); errors say how to install what is missing.

mod crash;
mod error;
mod nats;
mod postgres;
mod process;
pub mod tls;
mod tmpfs;

use std::net::{Ipv4Addr, TcpListener};

pub use crash::CrashChild;
pub use error::{Result, TestkitError};
pub use nats::NatsServer;
pub use postgres::{PgOptions, PgServer};
pub use process::send_signal;
pub use tls::TestCa;
pub use tmpfs::Tmpfs;

/// A TCP port on `127.0.0.1` that was free a moment ago: binds port 0, reads the port the
/// kernel chose, and releases it. Another process may take it before the caller binds it, so
/// callers that can should retry on failure (the servers here do).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| TestkitError::FreePort { source })?;
    let port = listener.local_addr().map_err(|source| TestkitError::FreePort { source })?.port();
    Ok(port)
}
