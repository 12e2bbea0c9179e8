//! The testkit's servers, started for real: PostgreSQL with logical replication, NATS with
//! JetStream, several at once, and nothing left behind (process, port or directory) after drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;

use driftless_testkit::{free_port, NatsServer, PgServer};

/// Whether anything accepts TCP connections on `127.0.0.1:port`.
fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`, or `None` if it no longer exists.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The postmaster of `pg` and all its children (checkpointer, walwriter, backends, ...).
fn postgres_processes(pg: &PgServer) -> BTreeSet<u32> {
    let postmaster = pg.pid().expect("a running server has a postmaster pid");
    let mut pids: BTreeSet<u32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(postmaster))
        .collect();
    pids.insert(postmaster);
    pids
}

#[test]
fn free_port_returns_a_bindable_port() {
    let port = free_port().unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn postgres_starts_with_logical_replication_and_accepts_queries() {
    let a = PgServer::start().unwrap();
    let b = PgServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());

    for pg in [&a, &b] {
        assert_eq!(pg.host(), "127.0.0.1");
        assert_eq!(pg.url("app"), format!("postgres://postgres@127.0.0.1:{}/app", pg.port()));
        assert_eq!(pg.psql("SHOW wal_level").unwrap(), "logical");
        assert_eq!(pg.psql("SELECT 1+1").unwrap(), "2");
    }

    // Logical decoding works, not just the setting.
    a.psql("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    a.psql("CREATE PUBLICATION p FOR TABLE t").unwrap();
    a.psql("SELECT 1 FROM pg_create_logical_replication_slot('s', 'pgoutput')").unwrap();
    a.psql("INSERT INTO t VALUES (2, 'y')").unwrap();
    let decoded = a
        .psql("SELECT count(*) FROM pg_logical_slot_get_binary_changes('s', NULL, NULL, 'proto_version', '1', 'publication_names', 'p')")
        .unwrap();
    assert!(decoded.parse::<u32>().unwrap() >= 3, "begin, insert, commit; got {decoded}");

    a.create_database("app").unwrap();
    assert_eq!(a.psql("SELECT count(*) FROM pg_database WHERE datname = 'app'").unwrap(), "1");
    let err = a.psql("SELECT * FROM missing_table").unwrap_err().to_string();
    assert!(err.contains("missing_table"), "{err}");

    let (port, dir, pids) = (a.port(), a.data_dir().to_owned(), postgres_processes(&a));
    assert!(pids.len() > 1, "postmaster and its children: {pids:?}");
    drop(a);
    assert!(!accepts(port), "port {port} still accepts connections after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    let left: Vec<u32> = pids.into_iter().filter(|&pid| parent_of(pid).is_some()).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");

    // The other server is unaffected.
    assert_eq!(b.psql("SELECT 1+1").unwrap(), "2");
}

#[test]
fn nats_starts_with_jetstream_enabled() {
    let nats = NatsServer::start().unwrap();
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));

    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut info = String::new();
    BufReader::new(stream).read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO {"), "{info}");
    assert!(info.contains("\"jetstream\":true"), "{info}");

    let log = nats.log_path().to_owned();
    drop(nats);
    assert!(!accepts(port), "port {port} still accepts connections after drop");
    assert!(!log.exists(), "{} still exists after drop", log.display());
}
