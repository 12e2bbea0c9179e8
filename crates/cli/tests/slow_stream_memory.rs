//! A slow streaming consumer with a backlog of 1,000,000 events keeps the server's memory
//! bounded: the real `driftless serve` binary, started on a data directory that already holds a
//! million ~200-byte events (≈ 240 MB of log), streams them over SSE to a client that grants 100
//! credit at a time, acknowledges, and dawdles; the server's resident set size (`VmRSS` and the
//! peak `VmHWM` from `/proc/<pid>/status`) stays far below what holding the backlog would take.
//! On the way it checks that the stream never sends more than the credit granted and delivers
//! each partition in offset order with nothing skipped or repeated.
//!
//! Invariants: the server is a child process on a loopback port picked by binding `127.0.0.1:0`,
//! killed on drop (also on panic); every loop and wait is bounded; nothing asserts on timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig, TopicSpec};
use driftless_core::Event;
use serde_json::{json, Value};

const TOPIC: &str = "backlog";
const PARTITIONS: u32 = 4;
const BACKLOG_EVENTS: usize = 1_000_000;
/// The broker's `produce_events_max`: the largest batch one produce call takes.
const BATCH_EVENTS: usize = 10_000;
/// Credit granted per round, and so deliveries per round.
const CREDIT: usize = 100;
/// Rounds of read, acknowledge, pause and grant.
const ROUNDS: usize = 40;
const PAUSE: Duration = Duration::from_millis(100);

/// Peak resident set allowed to the server (`VmHWM`, so spikes between samples count too).
/// Holding the backlog's payload alone would take about 200 MB (plus per-event overhead), so a
/// server that buffered it could not stay below; a debug build that does not peaks near 32 MB.
const RSS_PEAK_KB_MAX: u64 = 128 * 1024;
/// Rounds before the baseline sample: the read-ahead window (`pending_per_partition_max` =
/// 10,000 events per partition, ~12-16 MB here) fills by at most 1 MiB per partition per fetch,
/// one fetch per round, so it is full after about three rounds. Measuring from the very first
/// round counted the window itself as growth and failed at random under load.
const WINDOW_FILL_ROUNDS: usize = 4;
/// Growth allowed while the slow consumer reads, from the sample after round
/// [`WINDOW_FILL_ROUNDS`] (the read-ahead window full) to the peak of the later ones. A server
/// that keeps only that window grows by well under 1 MB over the rounds; one
/// that keeps what it has read for 100 deliveries for longer grows by about as much per round
/// as it read (1 MiB per round if it pins each 1 MiB read chunk), so the 36 rounds after the
/// baseline exceed this.
const RSS_GROWTH_KB_MAX: u64 = 16 * 1024;

/// Writes the backlog straight through the broker library (no HTTP), then closes it so the
/// server can take the data directory's lock.
fn populate(dir: &Path) {
    let broker = Broker::open(dir, BrokerConfig::default()).unwrap();
    // A short deduplication window: the backlog is older than the window by the time the server
    // opens, so the server does not rebuild a million-id dedup index at start (≈ 170 MB; its
    // own limit, `dedup_ids_max`, is a separate concern). What is measured is the streaming path.
    let spec = TopicSpec { partitions: PARTITIONS, dedup_window_ms: 1_000, ..TopicSpec::default() };
    broker.create_topic(TOPIC, spec).unwrap();
    let pad = "x".repeat(96);
    let mut batch = Vec::with_capacity(BATCH_EVENTS);
    for i in 0..BACKLOG_EVENTS {
        let mut e = Event::new(format!("ev-{i:07}"), "/backlog/producer", "backlog.filled.v1");
        e.data = Some(json!({"n": i, "pad": pad}));
        batch.push(e);
        if batch.len() == BATCH_EVENTS {
            let produced = broker.produce(TOPIC, std::mem::take(&mut batch)).unwrap();
            assert!(produced.iter().all(|p| !p.duplicate));
        }
    }
    assert!(batch.is_empty());
    let total: u64 = broker
        .describe_topic(TOPIC)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.end_offset - p.start_offset)
        .sum();
    assert_eq!(total, BACKLOG_EVENTS as u64);
}

type Server = support::ServeProcess;

fn agent() -> ureq::Agent {
    support::agent(Duration::from_secs(30))
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The client end of an SSE stream over HTTP/1.1 with a chunked body, decoded by hand so the
/// test reads exactly as slowly as it wants.
struct SseClient {
    stream: TcpStream,
    /// Bytes received and not yet decoded.
    raw: Vec<u8>,
    headers_done: bool,
    /// Decoded body not yet split into messages.
    body: Vec<u8>,
    ended: bool,
}

impl SseClient {
    fn open(addr: &str, path: &str) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        Self { stream, raw: Vec::new(), headers_done: false, body: Vec::new(), ended: false }
    }

    /// Reads for at most `window` or until `want` messages are complete; returns the complete
    /// messages as (event, data).
    fn read(&mut self, window: Duration, want: usize) -> Vec<(String, String)> {
        let end = Instant::now() + window;
        let mut messages = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.decode();
            messages.extend(self.split_messages());
            if messages.len() >= want || self.ended || Instant::now() >= end {
                return messages;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => self.ended = true,
                Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// Moves what it can from `raw` (headers, then chunks) into `body`.
    fn decode(&mut self) {
        if !self.headers_done {
            let Some(at) = find(&self.raw, b"\r\n\r\n") else { return };
            let head = String::from_utf8_lossy(&self.raw[..at]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("content-type: text/event-stream"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            self.raw.drain(..at + 4);
            self.headers_done = true;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size_hex = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .unwrap_or_else(|e| panic!("bad chunk size line {line:?}: {e}"));
            if size == 0 {
                self.ended = true;
                return;
            }
            let data_start = line_end + 2;
            if self.raw.len() < data_start + size + 2 {
                return; // the rest of this chunk has not arrived yet
            }
            assert_eq!(&self.raw[data_start + size..data_start + size + 2], b"\r\n");
            self.body.extend_from_slice(&self.raw[data_start..data_start + size]);
            self.raw.drain(..data_start + size + 2);
        }
    }

    /// Complete SSE messages (ended by a blank line) from `body`; comments are skipped.
    fn split_messages(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(at) = find(&self.body, b"\n\n") {
            let text = String::from_utf8(self.body[..at].to_vec()).unwrap();
            self.body.drain(..at + 2);
            let (mut event, mut data) = (String::new(), String::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if !event.is_empty() || !data.is_empty() {
                out.push((event, data));
            }
        }
        out
    }
}

/// Deliveries granted and received so far, and the offsets received per partition.
#[derive(Debug, Default)]
struct Tally {
    granted: usize,
    received: usize,
    offsets: BTreeMap<u32, Vec<u64>>,
}

impl Tally {
    /// Reads what arrives within `window` (at most what is still owed), checks it never
    /// exceeds the credit granted, and returns the delivery ids.
    fn take(&mut self, sse: &mut SseClient, window: Duration) -> Vec<String> {
        let owed = self.granted.saturating_sub(self.received).max(1);
        let mut ids = Vec::new();
        for (event, data) in sse.read(window, owed) {
            assert_eq!(event, "delivery", "unexpected message: {event}: {data}");
            let d: Value = serde_json::from_str(&data).unwrap();
            self.received += 1;
            assert!(
                self.received <= self.granted,
                "{} deliveries for {} credit: {d}",
                self.received,
                self.granted
            );
            assert_eq!(d["attempt"], 1, "{d}");
            let p = d["partition"].as_u64().unwrap() as u32;
            self.offsets.entry(p).or_default().push(d["offset"].as_u64().unwrap());
            ids.push(d["delivery_id"].as_str().unwrap().to_string());
        }
        ids
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_slow_streaming_consumer_with_a_million_event_backlog_keeps_server_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    populate(dir.path());
    eprintln!("backlog of {BACKLOG_EVENTS} events written in {:?}", started.elapsed());

    let started = Instant::now();
    let server = Server::start(dir.path());
    eprintln!("server ready in {:?}", started.elapsed());
    let (rss_at_start, _) = server.rss_kb();
    let agent = agent();
    let (status, joined) = post(
        &agent,
        &format!("{}/v1/groups/slow/members", server.base),
        &json!({"topics": [TOPIC]}),
    );
    assert_eq!(status, 201, "{joined}");
    let member = joined["member_id"].as_str().unwrap().to_string();
    let ack_url = format!("{}/v1/groups/slow/ack", server.base);
    let credit_url = format!("{}/v1/groups/slow/members/{member}/credit", server.base);

    let mut sse = SseClient::open(
        &server.addr,
        &format!("/v1/groups/slow/members/{member}/stream?credit={CREDIT}"),
    );
    let mut tally = Tally { granted: CREDIT, ..Tally::default() };
    let mut samples: Vec<u64> = Vec::new();
    let streaming = Instant::now();
    for round in 0..ROUNDS {
        // Wait (bounded) for this round's deliveries; the server must not send beyond the credit.
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while tally.received < tally.granted {
            assert!(Instant::now() < deadline, "round {round}: {tally:?}");
            ids.extend(tally.take(&mut sse, Duration::from_millis(500)));
            assert!(!sse.ended, "the stream ended: {tally:?}");
        }
        samples.push(server.rss_kb().0);

        let (status, acked) = post(&agent, &ack_url, &json!({"delivery_ids": ids}));
        assert_eq!(status, 200, "{acked}");
        assert_eq!(acked["unknown"], json!([]), "{acked}");
        std::thread::sleep(PAUSE); // the slow part: a consumer busy with what it got
        let (status, credit) = post(&agent, &credit_url, &json!({"credit": CREDIT}));
        assert_eq!(status, 200, "{credit}");
        tally.granted += CREDIT;
    }
    // Take what the last grant allows, then check nothing beyond the credit follows.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tally.received < tally.granted && Instant::now() < deadline {
        tally.take(&mut sse, Duration::from_millis(500));
    }
    assert_eq!(tally.received, tally.granted, "the last grant was not honoured");
    tally.take(&mut sse, Duration::from_millis(500));
    let (received, offsets) = (tally.received, &tally.offsets);
    let (rss_end, hwm) = server.rss_kb();
    samples.push(rss_end);
    eprintln!(
        "streamed {received} deliveries in {:?}; RSS kB at start {rss_at_start}, after each \
         round {samples:?}, peak (VmHWM) {hwm}; deliveries per partition {:?}",
        streaming.elapsed(),
        offsets.iter().map(|(p, o)| (*p, o.len())).collect::<Vec<_>>()
    );

    // Each partition in offset order, nothing skipped or repeated (distinct keys, and every
    // delivery was acknowledged before more credit was granted).
    for (p, got) in offsets {
        let expected: Vec<u64> = (0..got.len() as u64).collect();
        assert_eq!(got, &expected, "partition {p}: not in offset order from 0");
    }
    assert_eq!(offsets.values().map(Vec::len).sum::<usize>(), received);

    let first = samples[WINDOW_FILL_ROUNDS];
    let peak_sampled = samples[WINDOW_FILL_ROUNDS..].iter().copied().max().unwrap();
    assert!(
        hwm < RSS_PEAK_KB_MAX,
        "server peak RSS {hwm} kB ≥ {RSS_PEAK_KB_MAX} kB with a slow consumer: {samples:?}"
    );
    assert!(
        peak_sampled.saturating_sub(first) < RSS_GROWTH_KB_MAX,
        "server RSS grew from {first} kB to {peak_sampled} kB over {ROUNDS} rounds of {CREDIT} \
         deliveries while a slow consumer read (samples per round: {samples:?}); memory held per \
         delivery should not outlive its acknowledgement"
    );
    drop(sse);
    drop(server);
}
