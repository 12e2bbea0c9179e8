//! Connection limits over real TCP (issue 20, hole 6: with 1,100 idle sockets `/healthz` hung;
//! no connection had a header, body or idle timeout). Each test starts the server in-process
//! with short limits and talks raw HTTP/1.1 so it controls every byte and pause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod support;

use driftless_broker::BrokerConfig;
use driftless_server::ServerConfig;
use serde_json::json;
use support::{config, start};

fn with(f: impl FnOnce(&mut driftless_server::ServerSettings)) -> ServerConfig {
    let mut c = config(BrokerConfig::default());
    f(&mut c.server);
    c
}

/// Reads until the peer closes (`Some(elapsed)`) or `window` passes (`None`); what was read is
/// appended to `buf`.
fn closed_within(stream: &mut TcpStream, buf: &mut Vec<u8>, window: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut chunk = [0u8; 4096];
    while start.elapsed() < window {
        match stream.read(&mut chunk) {
            Ok(0) => return Some(start.elapsed()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()), // reset
        }
    }
    None
}

/// One `GET /healthz` on a fresh connection; returns how long the whole answer took.
fn healthz(addr: std::net::SocketAddr) -> Duration {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
    start.elapsed()
}

#[test]
fn a_slowloris_sending_its_head_a_byte_at_a_time_is_closed_after_header_read_timeout_ms() {
    let s = start(with(|s| s.header_read_timeout_ms = 500));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut buf = Vec::new();
    let closed = loop {
        // One header byte every 100 ms: each arrives well within any per-read timeout.
        if c.write_all(b"X").is_err() {
            break start.elapsed();
        }
        if closed_within(&mut c, &mut buf, Duration::from_millis(100)).is_some() {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "a slowloris was held for 5 s");
    };
    assert!(closed >= Duration::from_millis(450), "closed too early: {closed:?}");
    assert!(!String::from_utf8_lossy(&buf).contains(" 200 "), "answered a partial head");
    // The server still answers others.
    assert!(healthz(s.addr) < Duration::from_secs(1));
}

#[test]
fn a_request_body_sent_too_slowly_is_answered_408_after_body_read_timeout_ms() {
    let s = start(with(|s| s.body_read_timeout_ms = 500));
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        b"POST /v1/topics HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"name\":",
    )
    .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let closed = closed_within(&mut c, &mut buf, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_read_timeout_ms"), "{text}");
    let closed = closed.expect("the connection stays open after a body timeout");
    assert!(closed >= Duration::from_millis(450) && start.elapsed() < Duration::from_secs(3));
    assert_eq!(s.get("/v1/topics").json(), json!([]));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_keep_alive_idle_ms() {
    let s = start(with(|s| s.keep_alive_idle_ms = 300));
    // Used once, then idle.
    let mut used = TcpStream::connect(s.addr).unwrap();
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let closed = closed_within(&mut used, &mut buf, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&buf).ends_with("ok"), "{}", String::from_utf8_lossy(&buf));
    let closed = closed.expect("an idle keep-alive connection stayed open for 5 s");
    assert!(closed >= Duration::from_millis(250), "closed too early: {closed:?}");
    // Never used at all.
    let mut unused = TcpStream::connect(s.addr).unwrap();
    let closed = closed_within(&mut unused, &mut Vec::new(), Duration::from_secs(5));
    assert!(closed.is_some_and(|t| t >= Duration::from_millis(250)), "{closed:?}");
}

#[test]
fn an_sse_stream_is_not_cut_by_the_idle_timeout() {
    let s = start(with(|s| s.keep_alive_idle_ms = 200));
    s.create_topic("s", 1);
    let m = s.join("g", &["s"]);
    let mut sse = TcpStream::connect(s.addr).unwrap();
    write!(sse, "GET /v1/groups/g/members/{m}/stream?credit=5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // Five idle timeouts with nothing to send: the stream is a request in flight, not idle.
    assert_eq!(closed_within(&mut sse, &mut buf, Duration::from_millis(1_000)), None);
    s.produce(
        "s",
        &[json!({"specversion": "1.0", "id": "e-1", "source": "/t", "type": "t", "data": 1})],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&buf).contains("event: delivery") {
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&buf));
        assert_eq!(closed_within(&mut sse, &mut buf, Duration::from_millis(50)), None);
    }
}

#[test]
fn at_connections_max_idle_connections_make_room_and_streams_are_kept() {
    let s = start(with(|s| {
        s.connections_max = 4;
        s.keep_alive_idle_ms = 60_000;
    }));
    s.create_topic("s", 1);
    let m = s.join("g", &["s"]);
    // One slot holds a stream (a request in progress), three hold idle connections.
    let mut sse = TcpStream::connect(s.addr).unwrap();
    write!(sse, "GET /v1/groups/g/members/{m}/stream?credit=5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(400)); // older than the reclaim minimum
                                                    // A fifth client is served at once: the idle connections made room.
    let took = healthz(s.addr);
    assert!(took < Duration::from_millis(100), "/healthz at the bound took {took:?}");
    let mut closed = 0;
    for c in &mut idle {
        if closed_within(c, &mut Vec::new(), Duration::from_millis(200)).is_some() {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed at the bound");
    // The stream was not: it still delivers.
    s.produce(
        "s",
        &[json!({"specversion": "1.0", "id": "e-1", "source": "/t", "type": "t", "data": 1})],
    );
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&buf).contains("event: delivery") {
        assert!(Instant::now() < deadline, "{}", String::from_utf8_lossy(&buf));
        assert_eq!(closed_within(&mut sse, &mut buf, Duration::from_millis(50)), None);
    }
}

#[test]
fn two_thousand_idle_connections_do_not_stop_healthz_from_answering_within_100_ms() {
    // Client and server sockets share this process: 4,000 descriptors and more.
    let limit = driftless_server::open_files::raise_open_files_limit();
    assert!(limit.soft >= 4_500, "this test needs an open-file limit of 4,500: {limit:?}");
    let s = start(config(BrokerConfig::default()));
    let idle: Vec<TcpStream> = (0..2_000).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300)); // let the server accept them all
    for _ in 0..5 {
        let took = healthz(s.addr);
        assert!(took < Duration::from_millis(100), "/healthz took {took:?}");
    }
    assert_eq!(idle.len(), 2_000);
}

#[test]
fn a_client_that_stops_reading_its_answer_is_closed_after_response_write_timeout_ms() {
    let s = start(with(|s| s.response_write_timeout_ms = 500));
    s.create_topic("big", 1);
    let data = "x".repeat(100_000);
    for b in 0..10 {
        let events: Vec<_> = (0..10)
            .map(|i| {
                json!({"specversion": "1.0", "id": format!("e-{b}-{i}"), "source": "/t",
                       "type": "t", "subject": format!("k-{b}-{i}"), "data": data})
            })
            .collect();
        s.produce("big", &events);
    }
    let m = s.join("g", &["big"]);
    // Asks for 10 MB (a stream with credit for all 100 events) and reads none of it: the
    // server's writes stall once the socket buffers are full.
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(c, "GET /v1/groups/g/members/{m}/stream?credit=100 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    let mut buf = Vec::new();
    let closed = closed_within(&mut c, &mut buf, Duration::from_secs(10));
    assert!(closed.is_some(), "the connection stayed open; {} bytes read", buf.len());
    assert!(buf.len() < 10_000_000, "the whole answer arrived: {} bytes", buf.len());
    // Others are still served.
    assert!(healthz(s.addr) < Duration::from_secs(1));
}
