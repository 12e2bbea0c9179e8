//! Nemesis test of the real server: `driftless serve`, with its data directory on a small tmpfs
//! the test mounts itself, is loaded by producers and a consumer group over HTTP while 20 cycles
//! alternate three faults, each at least 6 times, in an order drawn from a seed:
//!
//! - **kill**: SIGKILL, then a restart on the same port over the same data;
//! - **stop**: SIGSTOP for 1.5 to 2.5 s, then SIGCONT; clients time out (after 1 s) and retry;
//! - **full disk**: a filler file takes the tmpfs to ENOSPC while the load goes on (events carry
//!   4 KiB of padding meanwhile, so the room the partitions preallocated runs out and writes
//!   really fail); then the filler is deleted and, if the server reports a poisoned partition
//!   (`/readyz` not ready, or a write answered `partition-poisoned`), it is restarted as an
//!   operator would (SIGTERM, then start). A poisoned answer seen later, before any restart,
//!   gets the same treatment.
//!
//! The load: 3 producers own 16 keys each and send batches of 4 events of 4 different keys (so
//! over the topic's 4 partitions); an event carries its key and a per-key sequence number, and a
//! producer sends a key's event n+1 only once the batch with its event n was answered 200. A
//! batch that fails is sent again as it was (same ids: the broker deduplicates) until answered
//! 200. 2 consumers, members of one group, fetch and acknowledge 95% of what they get (the rest
//! comes back after the 2 s visibility timeout). Every request is stamped with a global clock of
//! ticks, taken before it is sent and after its answer. Consumers' requests also record the
//! server process ("incarnation") that answered them, exactly: the harness lets no consumer
//! request run across a restart (a gate it closes, waiting for requests in flight to end, before
//! it starts the next process).
//!
//! Checked once the producers finished and the group was drained:
//! 1. **No acknowledged event lost**: every event whose produce was answered 200 is stored where
//!    that answer said, and was delivered to the group at least once, there. No id is stored
//!    twice, and each key's stored events are its sequence 0, 1, 2, … in offset order.
//! 2. **Per-key order**, for at-least-once delivery (an event comes again after a restart, a
//!    visibility timeout or a rebalance). A key's deliveries form *redelivery runs*: a run starts
//!    where the sequence goes back, and within a run it only moves forward, one event at a time.
//!    Precisely, with "incarnation" for one server process:
//!    - no skipping: a key's event n+1 is handed out only after an acknowledgement of its event
//!      n was sent (the ack's sent tick is below the tick the fetch was answered);
//!    - no going back within an incarnation: once a fetch was answered with a key's event n, a
//!      fetch sent later to the same incarnation never returns an earlier event of that key (the
//!      same event again is allowed: a redelivery); and once an acknowledgement of event n was
//!      answered as done, a later fetch of that incarnation never returns event n or earlier.
//!
//!    So a run can only start across a restart, from an event whose acknowledgement was not yet
//!    committed (see 3.), or repeat the event in flight.
//! 3. **Committed offsets never go backwards**: the offsets a restarted server reports (read
//!    through `GET /v1/groups/main` before any consumer reaches it) are at least every durable
//!    value seen before: the previous restarts' and the samples taken, before each fault, while
//!    no consumer request was in flight and every acknowledgement to that process had been
//!    answered 200. (A sample after a failed acknowledgement may show an offset whose write
//!    failed; ARCHITECTURE.md says `describe` may show an offset whose fsync is in flight.) Within
//!    one process samples never decrease, and no process delivers an event below the offsets it
//!    started from.
//! 4. **The server answers**: outside a full disk only 2xx (and 404 for a member or a group a
//!    restart forgot, 503 `shutting-down` during a SIGTERM); on a full disk 5xx, and a 200 only
//!    for what it stored (1.); `partition-poisoned` only after a full disk; after each fault
//!    producing and acknowledging resume within 30 s; the group's dead-letter queue stays empty;
//!    the server never exits by itself, and SIGTERM ends it within 10 s. Each fault must bite:
//!    every SIGSTOP times out a client request, every full disk refuses a write. `/readyz` is
//!    not ready once a write was answered `partition-poisoned` (until the restart).
//!
//! A failure names the seed (`DRIFTLESS_SEED=<n>` replays the fault plan and the clients' random
//! choices; thread timing still varies) and, for each violation, the key's history around it.
//!
//! Invariants of the harness: every loop and wait is bounded; the server is killed and the tmpfs
//! unmounted on drop (also on a failing assertion), and the load threads stop when the harness
//! does; only loopback addresses are used. It needs root to mount the tmpfs and fails, never
//! skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use driftless_testkit::Tmpfs;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::{agent, free_port, must, request, NoAnswer, ServeProcess};

const CYCLES: usize = 20;
/// Each fault kind comes at least this many times in the plan.
const FAULT_RUNS_MIN: usize = 6;
const TOPIC: &str = "nemesis";
const GROUP: &str = "main";
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 3;
const KEYS_PER_PRODUCER: usize = 16;
const BATCH_EVENTS: usize = 4;
const CONSUMERS: usize = 2;
const FETCH_EVENTS_MAX: usize = 50;
const FETCH_WAIT_MS: u64 = 100;
/// Share of deliveries a consumer acknowledges in the load (the drain acknowledges all).
const ACK_PROBABILITY: f64 = 0.95;
/// A producer rests this long after each acknowledged batch, and while the events acknowledged
/// to producers are more than `LAG_EVENTS_MAX` ahead of the deliveries acknowledged: consumers
/// get one event per key at a time, and a backlog they cannot drain would only make the final
/// drain long.
const PRODUCE_REST_MS: u64 = 30;
const LAG_EVENTS_MAX: u64 = 2_000;
/// Every client request ends within this (a fetch within this plus its wait).
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// How long a SIGSTOP lasts, in ms: longer than `CLIENT_TIMEOUT`, so clients time out.
const STOP_MS: std::ops::Range<u64> = 1_500..2_500;
/// How long the load runs between faults, in ms (and at least until it made progress).
const LOAD_MS: std::ops::Range<u64> = 300..1_200;
const TMPFS_BYTES: u64 = 128 << 20;
/// Padding of events produced while the disk is full: the partitions' preallocated 1 MiB runs
/// out after about 250 of them, so appends really meet ENOSPC.
const DISK_FULL_PAD_BYTES: usize = 4096;
/// How long the disk stays full at most while waiting for the first refused write.
const DISK_FULL_WITHIN: Duration = Duration::from_secs(15);
/// How long the operator watches `/readyz` and the answers after the room is back.
const OPERATOR_WATCH: Duration = Duration::from_secs(1);
/// After each fault, producing and acknowledging resume within this.
const PROGRESS_WITHIN: Duration = Duration::from_secs(30);
/// A SIGTERM ends the server within this (its grace is 2 s, see `CONFIG`).
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(10);
const DRAIN_WITHIN: Duration = Duration::from_secs(90);
const BATCH_CT: &str = "application/cloudevents-batch+json";
const JSON_CT: &str = "application/json";

/// A visibility timeout short enough that deliveries lost in a timed-out fetch come back soon; no
/// dead letters however often an event is redelivered; a short shutdown grace.
const CONFIG: &str = "
[server]
shutdown_grace_ms = 2000

[broker]
visibility_timeout_ms = 2000
session_timeout_ms = 10000
max_attempts = 1000
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    DiskFull,
}

// ---- what the load threads record ---------------------------------------------------------------

/// A request's place on the global clock: the tick taken before it was sent and after its answer
/// (or its failure).
#[derive(Debug, Clone, Copy)]
struct Stamp {
    sent: u64,
    answered: u64,
}

/// An event whose produce was answered 200.
struct Produced {
    id: String,
    key: usize,
    seq: u64,
    partition: u32,
    offset: u64,
    duplicate: bool,
    producer: usize,
    at: Stamp,
    cycle: usize,
}

/// One delivery handed to a consumer.
struct Delivered {
    id: String,
    key: usize,
    seq: u64,
    partition: u32,
    offset: u64,
    delivery_id: String,
    consumer: usize,
    incarnation: u64,
    at: Stamp,
    cycle: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AckOutcome {
    /// Answered 200; these delivery ids were not pending.
    Answered {
        unknown: BTreeSet<String>,
    },
    /// Answered with this status.
    Refused(u16),
    NoAnswer,
}

/// One acknowledgement request.
struct Acked {
    consumer: usize,
    /// (key, seq, delivery id) of each delivery acknowledged.
    events: Vec<(usize, u64, String)>,
    incarnation: u64,
    at: Stamp,
    outcome: AckOutcome,
}

impl Acked {
    /// Whether the answer says this delivery is done.
    fn done(&self, delivery_id: &str) -> bool {
        matches!(&self.outcome, AckOutcome::Answered { unknown } if !unknown.contains(delivery_id))
    }
}

/// An answer other than the expected 2xx.
struct Refusal {
    who: String,
    what: &'static str,
    status: u16,
    /// The problem type's slug (`partition-poisoned`, …), empty if none.
    kind: String,
    detail: String,
    at: Stamp,
    cycle: usize,
}

#[derive(Default)]
struct History {
    produced: Vec<Produced>,
    delivered: Vec<Delivered>,
    acks: Vec<Acked>,
    refusals: Vec<Refusal>,
    /// Answers the test could not read as the API documents them.
    malformed: Vec<String>,
}

/// State shared by the harness and the load threads.
struct Shared {
    base: String,
    clock: AtomicU64,
    /// The server process consumers talk to; changed only while the gate is closed.
    incarnation: AtomicU64,
    cycle: AtomicUsize,
    /// Producers start no new batch once false (they finish the one they have).
    producing: AtomicBool,
    /// Consumers leave the group and end once false.
    consuming: AtomicBool,
    /// Consumers acknowledge every delivery (the drain).
    ack_all: AtomicBool,
    pad_bytes: AtomicUsize,
    gate_closed: AtomicBool,
    /// Consumer requests past the gate and not yet answered.
    in_requests: AtomicUsize,
    /// Events answered 200 to producers.
    produced: AtomicU64,
    /// Deliveries acknowledged as done.
    acked: AtomicU64,
    /// Requests that timed out.
    timeouts: AtomicU64,
    /// Produces and acknowledgements answered 5xx.
    write_refusals: AtomicU64,
    /// The highest sent tick of a request answered `partition-poisoned`.
    poisoned_sent: AtomicU64,
    history: Mutex<History>,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst) + 1
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_refusal(&self, who: String, what: &'static str, status: u16, body: &Value, at: Stamp) {
        // `urn:driftless:problem:<slug>`
        let kind =
            body["type"].as_str().and_then(|t| t.rsplit([':', '/']).next()).unwrap_or_default();
        if poison(status, kind) {
            self.poisoned_sent.fetch_max(at.sent, SeqCst);
        }
        if status >= 500 && matches!(what, "produce" | "ack") {
            self.write_refusals.fetch_add(1, SeqCst);
        }
        let detail = body["detail"].as_str().map_or_else(|| body.to_string(), str::to_string);
        let cycle = self.cycle.load(SeqCst);
        let refusal = Refusal { who, what, status, kind: kind.to_string(), detail, at, cycle };
        self.history().refusals.push(refusal);
    }

    fn note_no_answer(&self, why: NoAnswer) {
        if why == NoAnswer::TimedOut {
            self.timeouts.fetch_add(1, SeqCst);
        }
    }

    /// Runs a consumer request once the gate is open, counting it as in flight meanwhile; the
    /// incarnation it reads is the one that answers, as the harness closes the gate and waits
    /// for requests in flight before it changes the server. `None` when consuming stopped (or
    /// the gate stayed closed for two minutes) first.
    fn gated<T>(&self, f: impl FnOnce() -> T) -> Option<(u64, Stamp, T)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.in_requests.fetch_add(1, SeqCst);
            if !self.gate_closed.load(SeqCst) {
                break;
            }
            self.in_requests.fetch_sub(1, SeqCst);
            if !self.consuming.load(SeqCst) || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let incarnation = self.incarnation.load(SeqCst);
        let sent = self.tick();
        let out = f();
        let answered = self.tick();
        self.in_requests.fetch_sub(1, SeqCst);
        Some((incarnation, Stamp { sent, answered }, out))
    }
}

/// Whether an answer says a partition is poisoned: `partition-poisoned`, or a batch that failed
/// on a poisoned partition after other partitions stored their part (`partially-durable` with
/// the poisoned partition's 503).
fn poison(status: u16, kind: &str) -> bool {
    kind == "partition-poisoned" || (status, kind) == (503, "partially-durable")
}

/// Stops the load threads when dropped, so a failing assertion does not leave them running.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.producing.store(false, SeqCst);
        self.0.consuming.store(false, SeqCst);
        self.0.gate_closed.store(false, SeqCst);
    }
}

// ---- the load -----------------------------------------------------------------------------------

fn event_id(key: usize, seq: u64) -> String {
    format!("k{key:02}-s{seq:05}")
}

fn event(key: usize, seq: u64, pad_bytes: usize) -> Value {
    let mut data = json!({"key": key, "seq": seq});
    if pad_bytes > 0 {
        data["pad"] = Value::String("p".repeat(pad_bytes));
    }
    json!({
        "specversion": "1.0",
        "id": event_id(key, seq),
        "source": "/nemesis",
        "type": "nemesis.v1",
        "subject": format!("key-{key:02}"),
        "data": data,
    })
}

/// Sends batches until told to stop, each until it is answered 200; a key's next event goes
/// out only after the batch with its previous one was acknowledged.
fn producer(sh: Arc<Shared>, worker: usize, seed: u64) {
    let agent = agent(CLIENT_TIMEOUT);
    let url = format!("{}/v1/topics/{TOPIC}/events", sh.base);
    let who = format!("producer {worker}");
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1 + worker as u64));
    let mut next_seq = [0u64; KEYS_PER_PRODUCER];
    // (key, seq) of each event, and the request body.
    let mut batch: Option<(Vec<(usize, u64)>, Value)> = None;
    let mut stopping_since: Option<Instant> = None;
    loop {
        if !sh.producing.load(SeqCst) {
            let Some((events, _)) = &batch else { return };
            if stopping_since.get_or_insert_with(Instant::now).elapsed() > PROGRESS_WITHIN {
                let msg = format!("{who}: its last batch {events:?} was not acknowledged in 30 s");
                sh.history().malformed.push(msg);
                return;
            }
        }
        let (events, body) = batch.get_or_insert_with(|| {
            let mut keys: Vec<usize> = (0..KEYS_PER_PRODUCER).collect();
            keys.shuffle(&mut rng);
            let pad_bytes = sh.pad_bytes.load(SeqCst);
            let mut events = Vec::new();
            let mut body = Vec::new();
            for k in keys.into_iter().take(BATCH_EVENTS) {
                let (key, seq) = (worker * KEYS_PER_PRODUCER + k, next_seq[k]);
                next_seq[k] += 1;
                events.push((key, seq));
                body.push(event(key, seq, pad_bytes));
            }
            (events, Value::Array(body))
        });
        let sent = sh.tick();
        let result = request(&agent, "POST", &url, Some((BATCH_CT, &*body)));
        let at = Stamp { sent, answered: sh.tick() };
        match result {
            Ok((200, answer)) => {
                let results = answer["results"].as_array().cloned().unwrap_or_default();
                let cycle = sh.cycle.load(SeqCst);
                let mut h = sh.history();
                if results.len() != events.len() {
                    h.malformed.push(format!("{who}: {} events answered {answer}", events.len()));
                }
                for (&(key, seq), r) in events.iter().zip(&results) {
                    let id = event_id(key, seq);
                    let place = (r["partition"].as_u64(), r["offset"].as_u64());
                    match (r["id"].as_str() == Some(id.as_str()), place) {
                        (true, (Some(partition), Some(offset))) => h.produced.push(Produced {
                            id,
                            key,
                            seq,
                            partition: partition as u32,
                            offset,
                            duplicate: r["duplicate"].as_bool() == Some(true),
                            producer: worker,
                            at,
                            cycle,
                        }),
                        _ => h.malformed.push(format!("{who}: result {r} for {id}")),
                    }
                }
                drop(h);
                sh.produced.fetch_add(events.len() as u64, SeqCst);
                batch = None;
                std::thread::sleep(Duration::from_millis(PRODUCE_REST_MS));
                // On a full disk (padding on) keep writing whatever the lag: the fault must
                // meet appends.
                while sh.producing.load(SeqCst)
                    && sh.pad_bytes.load(SeqCst) == 0
                    && sh.produced.load(SeqCst) > sh.acked.load(SeqCst) + LAG_EVENTS_MAX
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Ok((status, answer)) => {
                sh.note_refusal(who.clone(), "produce", status, &answer, at);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(why) => {
                sh.note_no_answer(why);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Consumes as a member of the group until told to stop, acknowledging `ACK_PROBABILITY` of the
/// deliveries (all of them in the drain), then leaves.
fn consumer(sh: Arc<Shared>, c: usize, seed: u64) {
    let agent = agent(CLIENT_TIMEOUT + Duration::from_millis(FETCH_WAIT_MS));
    let who = format!("consumer {c}");
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(100 + c as u64));
    let members = format!("{}/v1/groups/{GROUP}/members", sh.base);
    let ack_url = format!("{}/v1/groups/{GROUP}/ack", sh.base);
    let join = json!({"topics": [TOPIC]});
    let mut member: Option<String> = None;
    while sh.consuming.load(SeqCst) {
        let Some(m) = member.clone() else {
            let Some((_, at, result)) =
                sh.gated(|| request(&agent, "POST", &members, Some((JSON_CT, &join))))
            else {
                break;
            };
            match result {
                Ok((201, body)) => member = body["member_id"].as_str().map(str::to_string),
                Ok((status, body)) => sh.note_refusal(who.clone(), "join", status, &body, at),
                Err(why) => sh.note_no_answer(why),
            }
            if member.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let url = format!("{members}/{m}/events?max={FETCH_EVENTS_MAX}&wait_ms={FETCH_WAIT_MS}");
        let Some((incarnation, at, result)) = sh.gated(|| request(&agent, "GET", &url, None))
        else {
            break;
        };
        let body = match result {
            Ok((200, body)) => body,
            Ok((404, _)) => {
                // A restart forgot the member, or its session expired: join again.
                member = None;
                continue;
            }
            Ok((status, body)) => {
                sh.note_refusal(who.clone(), "fetch", status, &body, at);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(why) => {
                sh.note_no_answer(why);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let cycle = sh.cycle.load(SeqCst);
        let ack_all = sh.ack_all.load(SeqCst);
        let mut to_ack = Vec::new();
        {
            let mut h = sh.history();
            for d in body["deliveries"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let fields = (
                    d["event"]["id"].as_str(),
                    d["event"]["data"]["key"].as_u64(),
                    d["event"]["data"]["seq"].as_u64(),
                    d["partition"].as_u64(),
                    d["offset"].as_u64(),
                    d["delivery_id"].as_str(),
                );
                let (Some(id), Some(key), Some(seq), Some(partition), Some(offset), Some(did)) =
                    fields
                else {
                    h.malformed.push(format!("{who}: delivery {d}"));
                    continue;
                };
                let key = key as usize;
                if ack_all || rng.random_bool(ACK_PROBABILITY) {
                    to_ack.push((key, seq, did.to_string()));
                }
                h.delivered.push(Delivered {
                    id: id.to_string(),
                    key,
                    seq,
                    partition: partition as u32,
                    offset,
                    delivery_id: did.to_string(),
                    consumer: c,
                    incarnation,
                    at,
                    cycle,
                });
            }
        }
        if to_ack.is_empty() {
            continue;
        }
        let ids: Vec<&str> = to_ack.iter().map(|(_, _, d)| d.as_str()).collect();
        let ack = json!({"delivery_ids": ids});
        let Some((incarnation, at, result)) =
            sh.gated(|| request(&agent, "POST", &ack_url, Some((JSON_CT, &ack))))
        else {
            break;
        };
        let outcome = match result {
            Ok((200, body)) => {
                let unknown: Option<BTreeSet<String>> = body["unknown"]
                    .as_array()
                    .map(|u| u.iter().filter_map(|d| d.as_str().map(str::to_string)).collect());
                let Some(unknown) = unknown else {
                    sh.history().malformed.push(format!("{who}: ack answered {body}"));
                    continue;
                };
                let done = to_ack.iter().filter(|(_, _, d)| !unknown.contains(d)).count();
                sh.acked.fetch_add(done as u64, SeqCst);
                AckOutcome::Answered { unknown }
            }
            Ok((status, body)) => {
                sh.note_refusal(who.clone(), "ack", status, &body, at);
                AckOutcome::Refused(status)
            }
            Err(why) => {
                sh.note_no_answer(why);
                AckOutcome::NoAnswer
            }
        };
        sh.history().acks.push(Acked { consumer: c, events: to_ack, incarnation, at, outcome });
    }
    if let Some(m) = member {
        // Leave, so the members that stay get its partitions at once.
        let _ = request(&agent, "DELETE", &format!("{members}/{m}"), None);
    }
}

// ---- the harness --------------------------------------------------------------------------------

/// A full-disk fault, on the clock.
struct FullDisk {
    /// The filler started.
    start: u64,
    /// The watch after the filler was deleted ended: any 5xx is accepted until here.
    settled: u64,
    /// The server process that lived through it ended: `partition-poisoned` is accepted until
    /// here.
    server_end: u64,
}

#[derive(Default)]
struct Stats {
    faults: BTreeMap<&'static str, usize>,
    stop_timeouts: Vec<u64>,
    filler_bytes: Vec<u64>,
    /// Writes refused per full disk.
    full_refusals: Vec<u64>,
    operator_restarts: usize,
    /// Server processes whose `/readyz` said ready while a write was answered poisoned.
    ready_while_poisoned: usize,
    /// Restarts that recovered a committed offset below a sample taken after a failed ack.
    non_durable_taken_back: usize,
}

struct Nemesis {
    seed: u64,
    rng: StdRng,
    sh: Arc<Shared>,
    server: Option<ServeProcess>,
    addr: String,
    data: PathBuf,
    config: PathBuf,
    tmpfs: Tmpfs,
    verifier: ureq::Agent,
    cycle: usize,
    /// Clock tick at which the current server process became healthy.
    started: u64,
    /// Whether the disk was full since the current server process started.
    full_since_start: bool,
    /// When the current server process said it was ready while poisoned (reported once each).
    ready_while_poisoned_at: Option<u64>,
    full_disks: Vec<FullDisk>,
    /// (SIGTERM sent, process gone) on the clock: `shutting-down` answers are accepted inside.
    shutdowns: Vec<(u64, u64)>,
    /// Committed offsets each incarnation started from.
    starts: BTreeMap<u64, BTreeMap<u32, u64>>,
    /// The highest durable committed offsets seen, and where they were seen.
    durable: BTreeMap<u32, (u64, String)>,
    /// The last sample, of this incarnation or the one before (a restart may recover less than
    /// a sample taken after a failed acknowledgement; counted, not failed).
    last_sample: BTreeMap<u32, (u64, String)>,
    /// What the harness did, on the clock, for the accounts of violations.
    timeline: Vec<(u64, String)>,
    violations: Vec<String>,
    stats: Stats,
}

impl Nemesis {
    /// Fails the test, naming the seed.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "DRIFTLESS_SEED={} (cycle {}): {msg}\nharness timeline (last 20):\n{}",
            self.seed,
            self.cycle,
            self.timeline.iter().rev().take(20).rev().fold(String::new(), |mut s, (t, e)| {
                let _ = writeln!(s, "  t{t} {e}");
                s
            })
        );
    }

    fn note(&mut self, what: String) {
        let t = self.sh.tick();
        self.timeline.push((t, format!("cycle {}: {what}", self.cycle)));
    }

    fn server(&mut self) -> &mut ServeProcess {
        self.server.as_mut().expect("a server is running")
    }

    fn incarnation(&self) -> u64 {
        self.sh.incarnation.load(SeqCst)
    }

    /// Closes the consumers' gate and waits until no consumer request is in flight.
    fn close_gate(&self) {
        self.sh.gate_closed.store(true, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.sh.in_requests.load(SeqCst) > 0 {
            if Instant::now() > deadline {
                self.fail("consumer requests still in flight 30 s after the gate closed");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn open_gate(&self) {
        self.sh.gate_closed.store(false, SeqCst);
    }

    /// The group's committed offsets per partition, as `GET /v1/groups/main` reports them
    /// (none before anything was committed).
    fn committed(&self) -> BTreeMap<u32, (u64, u64, u64)> {
        let url = format!("{}/v1/groups/{GROUP}", self.sh.base);
        match request(&self.verifier, "GET", &url, None) {
            Ok((404, _)) => BTreeMap::new(),
            Ok((200, body)) => body["partitions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|p| p["topic"] == TOPIC)
                .filter_map(|p| {
                    Some((
                        p["partition"].as_u64()? as u32,
                        (
                            p["committed"].as_u64()?,
                            p["end_offset"].as_u64()?,
                            p["inflight"].as_u64()?,
                        ),
                    ))
                })
                .collect(),
            other => self.fail(&format!("describing the group answered {other:?}")),
        }
    }

    /// Checks a committed-offset reading against the durable values and the incarnation's last
    /// sample; `durable` says whether the reading itself is durable.
    fn record_committed(&mut self, what: &str, durable: bool, restart: bool) {
        let now = self.committed();
        let inc = self.incarnation();
        let label = format!("{what} (cycle {}, incarnation {inc})", self.cycle);
        for p in 0..PARTITIONS {
            let committed = now.get(&p).map_or(0, |c| c.0);
            let (floor, floor_at) = self.durable.get(&p).cloned().unwrap_or((0, "start".into()));
            if committed < floor {
                self.violations.push(format!(
                    "committed offset went backwards: partition {p} is at {committed} {label}, \
                     below {floor}, durable since {floor_at}"
                ));
            }
            if let Some((before, before_at)) = self.last_sample.get(&p).cloned() {
                if restart && committed < before {
                    // Only a sample taken after a failed acknowledgement can be above the
                    // durable floor (checked above); a restart may take that back.
                    self.stats.non_durable_taken_back += 1;
                } else if committed < before {
                    self.violations.push(format!(
                        "committed offset went backwards within one server process: partition \
                         {p} is at {committed} {label}, was {before} {before_at}"
                    ));
                }
            }
            if durable && committed >= floor {
                self.durable.insert(p, (committed, label.clone()));
            }
            self.last_sample.insert(p, (committed, label.clone()));
        }
        if restart {
            self.starts.insert(inc, now.iter().map(|(p, c)| (*p, c.0)).collect());
        }
        self.note(format!("committed {what}: {:?}", now.values().map(|c| c.0).collect::<Vec<_>>()));
    }

    /// A committed-offset sample with no consumer request in flight; durable when every
    /// acknowledgement this process got was answered 200.
    fn sample_committed(&mut self, what: &str) {
        self.close_gate();
        let inc = self.incarnation();
        let durable = !self
            .sh
            .history()
            .acks
            .iter()
            .any(|a| a.incarnation == inc && !matches!(a.outcome, AckOutcome::Answered { .. }));
        self.record_committed(what, durable, false);
        self.open_gate();
    }

    /// Starts the next server process on the same address and data, with the consumers' gate
    /// closed until its committed offsets are read.
    fn start_server(&mut self, why: &str) {
        assert!(self.server.is_none());
        self.close_gate();
        let inc = self.sh.incarnation.fetch_add(1, SeqCst) + 1;
        let config = self.config.to_str().unwrap().to_string();
        // Every refused write would log a warning: keep the errors (a poisoned partition).
        let env = [("RUST_LOG", "warn,driftless_server::problem=error")];
        let args = ["--config", config.as_str()];
        self.server = Some(ServeProcess::start_at(&self.addr, &self.data, &args, &env));
        self.started = self.sh.tick();
        self.full_since_start = false;
        self.ready_while_poisoned_at = None;
        self.note(format!("incarnation {inc} started ({why})"));
        self.record_committed(&format!("recovered {why}"), true, true);
        self.open_gate();
    }

    /// Ends the server process: SIGKILL, or SIGTERM as an operator (which must end it within
    /// `SHUTDOWN_WITHIN`).
    fn end_server(&mut self, kill: bool, why: &str) {
        let server = self.server.take().expect("a server is running");
        let sent = self.sh.tick();
        if kill {
            self.note(format!("SIGKILL ({why})"));
            server.kill();
        } else {
            self.note(format!("SIGTERM ({why})"));
            if server.terminate(SHUTDOWN_WITHIN).is_none() {
                self.fail(&format!(
                    "SIGTERM ({why}): the server was still running {SHUTDOWN_WITHIN:?} later \
                     (shutdown_grace_ms = 2000)"
                ));
            }
        }
        let gone = self.sh.tick();
        if !kill {
            self.shutdowns.push((sent, gone));
        }
        for f in self.full_disks.iter_mut().filter(|f| f.server_end == u64::MAX) {
            f.server_end = gone;
        }
    }

    fn operator_restart(&mut self, why: &str) {
        self.stats.operator_restarts += 1;
        self.end_server(false, why);
        self.start_server(why);
    }

    /// Fails if the server exited by itself; restarts it, as an operator, if a write was
    /// answered `partition-poisoned` since it started.
    fn watch(&mut self) {
        if let Some(status) = self.server().exited() {
            self.fail(&format!("the server exited by itself ({status})"));
        }
        if self.sh.poisoned_sent.load(SeqCst) > self.started {
            if !self.full_since_start {
                self.violations.push(format!(
                    "cycle {}: a write was answered partition-poisoned though the disk was not \
                     full since the server process started",
                    self.cycle
                ));
            }
            self.ready(self.started);
            self.operator_restart("a write was answered partition-poisoned");
        }
    }

    /// Whether `/readyz` answers 200; a violation if it does after a write was answered
    /// `partition-poisoned` (sent after the tick `since`): a poisoned partition refuses writes
    /// until a restart, so the server is not ready. The poison is read before asking, so it was
    /// in force when `/readyz` answered.
    fn ready(&mut self, since: u64) -> bool {
        let poisoned = self.sh.poisoned_sent.load(SeqCst);
        let url = format!("{}/readyz", self.sh.base);
        let asked = self.sh.tick();
        let ready = matches!(request(&self.verifier, "GET", &url, None), Ok((200, _)));
        if ready && poisoned > since && self.ready_while_poisoned_at.is_none() {
            self.ready_while_poisoned_at = Some(asked);
            self.stats.ready_while_poisoned += 1;
            let h = self.sh.history();
            let refusal = h.refusals.iter().rev().find(|r| poison(r.status, &r.kind));
            let what = refusal.map_or(String::new(), |r| {
                format!(": {} {} sent t{}: {}", r.who, r.what, r.at.sent, r.detail)
            });
            drop(h);
            self.violations.push(format!(
                "READYZ: GET /readyz answered 200 (asked at t{asked}, cycle {}) after a write was \
                 answered partition-poisoned{what}",
                self.cycle
            ));
        }
        ready
    }

    /// Lets the load run for a while, and at least until producing and acknowledging both made
    /// progress.
    fn run_load(&mut self, after: &str) {
        let (produced, acked) = (self.sh.produced.load(SeqCst), self.sh.acked.load(SeqCst));
        let run_for = Duration::from_millis(self.rng.random_range(LOAD_MS));
        let start = Instant::now();
        loop {
            self.watch();
            let moved =
                self.sh.produced.load(SeqCst) > produced && self.sh.acked.load(SeqCst) > acked;
            if moved && start.elapsed() >= run_for {
                return;
            }
            if start.elapsed() > PROGRESS_WITHIN {
                let h = self.sh.history();
                let recent: Vec<String> = h
                    .refusals
                    .iter()
                    .rev()
                    .take(5)
                    .map(|r| format!("{} {} {} {}: {}", r.who, r.what, r.status, r.kind, r.detail))
                    .collect();
                drop(h);
                self.fail(&format!(
                    "after {after}, {PROGRESS_WITHIN:?} without progress: {} events acknowledged \
                     to producers (was {produced}), {} deliveries acknowledged (was {acked}); \
                     last refusals: {recent:#?}",
                    self.sh.produced.load(SeqCst),
                    self.sh.acked.load(SeqCst),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        self.end_server(true, "fault");
        std::thread::sleep(Duration::from_millis(self.rng.random_range(0..300)));
        self.start_server("after SIGKILL");
    }

    fn stop(&mut self) {
        let pause = Duration::from_millis(self.rng.random_range(STOP_MS));
        let timeouts = self.sh.timeouts.load(SeqCst);
        self.note(format!("SIGSTOP for {pause:?}"));
        self.server().signal("STOP");
        std::thread::sleep(pause);
        self.server().signal("CONT");
        self.note("SIGCONT".into());
        let timed_out = self.sh.timeouts.load(SeqCst) - timeouts;
        self.stats.stop_timeouts.push(timed_out);
        if timed_out == 0 {
            self.fail(&format!("no client request timed out during a SIGSTOP of {pause:?}"));
        }
    }

    fn disk_full(&mut self) {
        let used = self.tmpfs.used_bytes().unwrap();
        if used > TMPFS_BYTES / 2 {
            self.fail(&format!(
                "the data directory takes {used} of the tmpfs's {TMPFS_BYTES} bytes before a \
                 full disk; make TMPFS_BYTES larger"
            ));
        }
        let start = self.sh.tick();
        self.full_since_start = true;
        self.full_disks.push(FullDisk { start, settled: u64::MAX, server_end: u64::MAX });
        self.sh.pad_bytes.store(DISK_FULL_PAD_BYTES, SeqCst);
        let refusals = self.sh.write_refusals.load(SeqCst);
        let filler = self.tmpfs.fill("filler").unwrap_or_else(|e| self.fail(&e.to_string()));
        self.note(format!("disk full: a filler of {filler} bytes"));
        self.stats.filler_bytes.push(filler);
        let deadline = Instant::now() + DISK_FULL_WITHIN;
        while self.sh.write_refusals.load(SeqCst) == refusals && Instant::now() < deadline {
            if let Some(status) = self.server().exited() {
                self.fail(&format!("the server exited by itself on a full disk ({status})"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Keep producing and acknowledging a moment on the full disk.
        std::thread::sleep(Duration::from_millis(self.rng.random_range(200..800)));
        std::fs::remove_file(self.tmpfs.path().join("filler")).unwrap();
        self.sh.pad_bytes.store(0, SeqCst);
        self.stats.full_refusals.push(self.sh.write_refusals.load(SeqCst) - refusals);
        self.note("room back: filler deleted".into());
        // The operator watches readiness and the answers for a moment.
        let watch_end = Instant::now() + OPERATOR_WATCH;
        let mut not_ready = false;
        while Instant::now() < watch_end {
            std::thread::sleep(Duration::from_millis(100));
            not_ready |= !self.ready(start);
        }
        let settled = self.sh.tick();
        self.full_disks.last_mut().unwrap().settled = settled;
        let poisoned = self.sh.poisoned_sent.load(SeqCst) > start;
        if poisoned || not_ready {
            let why = if not_ready { "/readyz not ready" } else { "writes answered poisoned" };
            self.operator_restart(&format!("after a full disk: {why}"));
        }
    }

    /// Lets the producers finish, drains the group (acknowledging everything) and stops the
    /// consumers.
    fn finish(&mut self, producers: Vec<JoinHandle<()>>, consumers: Vec<JoinHandle<()>>) {
        self.cycle = CYCLES;
        self.sh.cycle.store(CYCLES, SeqCst);
        self.run_load("the last fault");
        self.sh.producing.store(false, SeqCst);
        self.note("producers finish".into());
        self.join_watching(producers);
        self.sh.ack_all.store(true, SeqCst);
        self.note("drain: consumers acknowledge everything".into());
        let deadline = Instant::now() + DRAIN_WITHIN;
        loop {
            self.watch();
            let c = self.committed();
            let drained = c.len() == PARTITIONS as usize
                && c.values().all(|&(committed, end, inflight)| committed == end && inflight == 0);
            if drained {
                break;
            }
            if Instant::now() > deadline {
                // Name the event each stuck partition waits on, with its key's history.
                let h = self.sh.history();
                let mut stuck = String::new();
                for (p, &(committed, end, _)) in c.iter().filter(|(_, c)| c.0 < c.1) {
                    let waiting =
                        h.produced.iter().find(|e| (e.partition, e.offset) == (*p, committed));
                    let _ = match waiting {
                        Some(e) => writeln!(
                            stuck,
                            "partition {p} waits at offset {committed} (end {end}) on {} (key {} \
                             seq {}):\n{}",
                            e.id,
                            e.key,
                            e.seq,
                            key_story(&h, &self.timeline, e.key, u64::MAX)
                        ),
                        None => writeln!(stuck, "partition {p} waits at offset {committed}"),
                    };
                }
                drop(h);
                self.fail(&format!(
                    "the group was not drained within {DRAIN_WITHIN:?}: (committed, end, \
                     inflight) per partition {c:?}\n{stuck}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.sh.consuming.store(false, SeqCst);
        self.join_watching(consumers);
        self.sample_committed("after the drain");
    }

    fn join_watching(&mut self, threads: Vec<JoinHandle<()>>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !threads.iter().all(JoinHandle::is_finished) {
            self.watch();
            if Instant::now() > deadline {
                self.fail("load threads did not end within 60 s of being told to");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Reads the whole topic with a fresh group: id → (partition, offset, key, seq).
    fn read_topic(&self) -> BTreeMap<String, Vec<(u32, u64, usize, u64)>> {
        let (a, base) = (&self.verifier, &self.sh.base);
        let joined = must(
            "join verify",
            request(
                a,
                "POST",
                &format!("{base}/v1/groups/verify/members"),
                Some((JSON_CT, &json!({"topics": [TOPIC]}))),
            )
            .ok(),
            201,
        );
        let member = joined["member_id"].as_str().unwrap().to_string();
        let mut stored: BTreeMap<String, Vec<(u32, u64, usize, u64)>> = BTreeMap::new();
        let mut read = [0u64; PARTITIONS as usize];
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "reading the topic took over 60 s");
            let url = format!("{base}/v1/groups/verify/members/{member}/events?max=1000&wait_ms=0");
            let fetched = must("fetch verify", request(a, "GET", &url, None).ok(), 200);
            let deliveries = fetched["deliveries"].as_array().unwrap();
            if deliveries.is_empty() {
                break;
            }
            let mut ids = Vec::new();
            for d in deliveries {
                let e = &d["event"];
                let at = (d["partition"].as_u64().unwrap() as u32, d["offset"].as_u64().unwrap());
                let (key, seq) = (
                    e["data"]["key"].as_u64().unwrap() as usize,
                    e["data"]["seq"].as_u64().unwrap(),
                );
                read[at.0 as usize] += 1;
                stored
                    .entry(e["id"].as_str().unwrap().to_string())
                    .or_default()
                    .push((at.0, at.1, key, seq));
                ids.push(d["delivery_id"].clone());
            }
            let acked = must(
                "ack verify",
                request(
                    a,
                    "POST",
                    &format!("{base}/v1/groups/verify/ack"),
                    Some((JSON_CT, &json!({"delivery_ids": ids}))),
                )
                .ok(),
                200,
            );
            assert_eq!(acked["unknown"], json!([]), "verify: fresh deliveries not pending");
        }
        let topic = must(
            "describe topic",
            request(a, "GET", &format!("{base}/v1/topics/{TOPIC}"), None).ok(),
            200,
        );
        for (p, stats) in topic["partitions"].as_array().unwrap().iter().enumerate() {
            let span =
                stats["end_offset"].as_u64().unwrap() - stats["start_offset"].as_u64().unwrap();
            assert_eq!(read[p], span, "partition {p} was not read whole: {topic}");
        }
        stored
    }
}

// ---- the checks ---------------------------------------------------------------------------------

/// One key's history around `tick`, on the clock, for an account of a violation.
fn key_story(h: &History, timeline: &[(u64, String)], key: usize, tick: u64) -> String {
    let mut lines: Vec<(u64, String)> = Vec::new();
    for p in h.produced.iter().filter(|p| p.key == key) {
        lines.push((
            p.at.answered,
            format!(
                "produce of seq {} answered 200 by producer {}: {}/{}{} (sent t{}, cycle {})",
                p.seq,
                p.producer,
                p.partition,
                p.offset,
                if p.duplicate { ", duplicate" } else { "" },
                p.at.sent,
                p.cycle
            ),
        ));
    }
    for d in h.delivered.iter().filter(|d| d.key == key) {
        lines.push((
            d.at.answered,
            format!(
                "seq {} delivered to consumer {} as {} (fetch sent t{}, incarnation {}, cycle {})",
                d.seq, d.consumer, d.delivery_id, d.at.sent, d.incarnation, d.cycle
            ),
        ));
    }
    for a in &h.acks {
        for (_, seq, did) in a.events.iter().filter(|(k, _, _)| *k == key) {
            let outcome = match &a.outcome {
                AckOutcome::Answered { unknown } if unknown.contains(did) => {
                    "answered: not pending".to_string()
                }
                AckOutcome::Answered { .. } => "answered: done".to_string(),
                AckOutcome::Refused(s) => format!("refused {s}"),
                AckOutcome::NoAnswer => "no answer".to_string(),
            };
            lines.push((
                a.at.answered,
                format!(
                    "ack of seq {seq} ({did}) by consumer {} sent t{}, incarnation {}: {outcome}",
                    a.consumer, a.at.sent, a.incarnation
                ),
            ));
        }
    }
    lines.extend(timeline.iter().filter(|(_, e)| !e.contains("committed")).cloned());
    lines.sort_by_key(|(t, _)| *t);
    let at = lines.partition_point(|(t, _)| *t <= tick);
    let (from, to) = (at.saturating_sub(12), (at + 10).min(lines.len()));
    let mut text = format!("  key {key}'s history around t{tick}:\n");
    for (t, line) in &lines[from..to] {
        let _ = writeln!(text, "    t{t} {line}");
    }
    text
}

/// Every check of the history; returns the violations, each with its account.
fn check_history(
    h: &History,
    stored: &BTreeMap<String, Vec<(u32, u64, usize, u64)>>,
    starts: &BTreeMap<u64, BTreeMap<u32, u64>>,
    timeline: &[(u64, String)],
) -> Vec<String> {
    let mut v = Vec::new();
    let story = |key, tick| key_story(h, timeline, key, tick);

    // 1. Stored once, where acknowledged; delivered at least once, there.
    for (id, places) in stored.iter().filter(|(_, p)| p.len() > 1) {
        v.push(format!("event {id} is stored {} times: {places:?}", places.len()));
    }
    let mut acknowledged: HashMap<&str, &Produced> = HashMap::new();
    for p in &h.produced {
        if let Some(before) = acknowledged.insert(&p.id, p) {
            v.push(format!(
                "event {} acknowledged twice: at {}/{} and at {}/{}",
                p.id, before.partition, before.offset, p.partition, p.offset
            ));
        }
    }
    let mut delivered_ids: HashMap<&str, Vec<&Delivered>> = HashMap::new();
    for d in &h.delivered {
        delivered_ids.entry(d.id.as_str()).or_default().push(d);
    }
    for p in &h.produced {
        match stored.get(&p.id).and_then(|s| s.first()) {
            Some(&(sp, so, _, _)) if (sp, so) == (p.partition, p.offset) => {}
            found => v.push(format!(
                "LOST: event {} (key {} seq {}) was acknowledged at {}/{} (cycle {}) but is {}\n{}",
                p.id,
                p.key,
                p.seq,
                p.partition,
                p.offset,
                p.cycle,
                found.map_or("not stored".to_string(), |s| format!("stored at {}/{}", s.0, s.1)),
                story(p.key, p.at.answered)
            )),
        }
        if !delivered_ids.contains_key(p.id.as_str()) {
            v.push(format!(
                "LOST: event {} (key {} seq {}), acknowledged at {}/{} (cycle {}), was never \
                 delivered to the group\n{}",
                p.id,
                p.key,
                p.seq,
                p.partition,
                p.offset,
                p.cycle,
                story(p.key, p.at.answered)
            ));
        }
    }
    for d in &h.delivered {
        match stored.get(&d.id).and_then(|s| s.first()) {
            Some(&(sp, so, _, _)) if (sp, so) == (d.partition, d.offset) => {}
            found => v.push(format!(
                "event {} was delivered as {}/{} but is stored at {found:?}",
                d.id, d.partition, d.offset
            )),
        }
    }
    let mut per_key: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    for places in stored.values() {
        let (_, offset, key, seq) = places[0];
        per_key.entry(key).or_default().push((offset, seq));
    }
    for (key, events) in &mut per_key {
        events.sort_unstable();
        let seqs: Vec<u64> = events.iter().map(|e| e.1).collect();
        if seqs.iter().enumerate().any(|(i, s)| *s != i as u64) {
            v.push(format!("key {key} is stored out of sequence: (offset, seq) {events:?}"));
        }
    }

    // 2a. No skipping: seq n+1 only after an acknowledgement of seq n was sent.
    let mut first_ack_sent: HashMap<(usize, u64), u64> = HashMap::new();
    for a in &h.acks {
        for (key, seq, _) in &a.events {
            let t = first_ack_sent.entry((*key, *seq)).or_insert(u64::MAX);
            *t = (*t).min(a.at.sent);
        }
    }
    let mut skips = BTreeSet::new();
    for d in h.delivered.iter().filter(|d| d.seq > 0) {
        let acked = first_ack_sent.get(&(d.key, d.seq - 1)).copied().unwrap_or(u64::MAX);
        // One account per event skipped to.
        if acked >= d.at.answered && skips.insert((d.key, d.seq)) {
            v.push(format!(
                "ORDER (skip): key {} seq {} was delivered (fetch answered t{}) before any \
                 acknowledgement of seq {} was sent{}\n{}",
                d.key,
                d.seq,
                d.at.answered,
                d.seq - 1,
                if acked == u64::MAX { String::new() } else { format!(" (first at t{acked})") },
                story(d.key, d.at.answered)
            ));
        }
    }

    // 2b. No going back within an incarnation.
    let mut by_key_inc: BTreeMap<(usize, u64), Vec<&Delivered>> = BTreeMap::new();
    for d in &h.delivered {
        by_key_inc.entry((d.key, d.incarnation)).or_default().push(d);
    }
    for ds in by_key_inc.values_mut() {
        ds.sort_by_key(|d| d.at.answered);
        for later in ds.iter() {
            // The highest seq answered before this fetch was sent.
            let earlier =
                ds.iter().take_while(|d| d.at.answered < later.at.sent).max_by_key(|d| d.seq);
            if let Some(e) = earlier.filter(|e| e.seq > later.seq) {
                v.push(format!(
                    "ORDER (back): key {} seq {} was delivered (fetch sent t{}) after seq {} had \
                     been (answered t{}), by the same server process (incarnation {})\n{}",
                    later.key,
                    later.seq,
                    later.at.sent,
                    e.seq,
                    e.at.answered,
                    later.incarnation,
                    story(later.key, later.at.answered)
                ));
                break; // one account per key and incarnation
            }
        }
    }
    for a in &h.acks {
        for (key, seq, did) in a.events.iter().filter(|(_, _, did)| a.done(did)) {
            let again = by_key_inc
                .get(&(*key, a.incarnation))
                .and_then(|ds| ds.iter().find(|d| d.at.sent > a.at.answered && d.seq <= *seq));
            if let Some(d) = again {
                v.push(format!(
                    "ORDER (acked again): key {key} seq {} was delivered (fetch sent t{}) after \
                     the acknowledgement of seq {seq} ({did}) was answered done at t{}, by the \
                     same server process (incarnation {})\n{}",
                    d.seq,
                    d.at.sent,
                    a.at.answered,
                    a.incarnation,
                    story(*key, d.at.answered)
                ));
            }
        }
    }

    // 3. No delivery below the committed offsets the process started from.
    for d in &h.delivered {
        let floor = starts.get(&d.incarnation).and_then(|s| s.get(&d.partition)).copied();
        if let Some(floor) = floor.filter(|f| d.offset < *f) {
            v.push(format!(
                "COMMITTED: key {} seq {} at {}/{} was delivered by incarnation {}, which started \
                 with partition {} committed at {floor}\n{}",
                d.key,
                d.seq,
                d.partition,
                d.offset,
                d.incarnation,
                d.partition,
                story(d.key, d.at.answered)
            ));
        }
    }
    v
}

// ---- the test -----------------------------------------------------------------------------------

#[test]
fn nemesis_kill_stop_and_full_disk_lose_no_acknowledged_event_and_keep_key_order() {
    let started = Instant::now();
    let seed: u64 = std::env::var("DRIFTLESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("DRIFTLESS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan: Vec<Fault> = [Fault::Kill, Fault::Stop, Fault::DiskFull]
        .iter()
        .flat_map(|f| std::iter::repeat_n(*f, FAULT_RUNS_MIN))
        .collect();
    while plan.len() < CYCLES {
        plan.push([Fault::Kill, Fault::Stop, Fault::DiskFull][rng.random_range(0..3)]);
    }
    plan.shuffle(&mut rng);
    println!("fault plan: {plan:?}");

    let tmpfs = Tmpfs::mount(TMPFS_BYTES).unwrap_or_else(|e| {
        panic!("the nemesis test fills a disk of its own and cannot run without it: {e}")
    });
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("nemesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = tmpfs.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let sh = Arc::new(Shared {
        base: format!("http://{addr}"),
        clock: AtomicU64::new(0),
        incarnation: AtomicU64::new(0),
        cycle: AtomicUsize::new(0),
        producing: AtomicBool::new(true),
        consuming: AtomicBool::new(true),
        ack_all: AtomicBool::new(false),
        pad_bytes: AtomicUsize::new(0),
        gate_closed: AtomicBool::new(false),
        in_requests: AtomicUsize::new(0),
        produced: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        timeouts: AtomicU64::new(0),
        write_refusals: AtomicU64::new(0),
        poisoned_sent: AtomicU64::new(0),
        history: Mutex::new(History::default()),
    });
    let _stop_guard = StopOnDrop(Arc::clone(&sh));
    let mut n = Nemesis {
        seed,
        rng,
        sh: Arc::clone(&sh),
        server: None,
        addr,
        data,
        config,
        tmpfs,
        verifier: agent(Duration::from_secs(10)),
        cycle: 0,
        started: 0,
        full_since_start: false,
        ready_while_poisoned_at: None,
        full_disks: Vec::new(),
        shutdowns: Vec::new(),
        starts: BTreeMap::new(),
        durable: BTreeMap::new(),
        last_sample: BTreeMap::new(),
        timeline: Vec::new(),
        violations: Vec::new(),
        stats: Stats::default(),
    };
    n.start_server("first start");
    let spec = json!({"name": TOPIC, "partitions": PARTITIONS});
    let url = format!("{}/v1/topics", sh.base);
    must("create topic", request(&n.verifier, "POST", &url, Some((JSON_CT, &spec))).ok(), 201);

    let producers: Vec<JoinHandle<()>> = (0..PRODUCERS)
        .map(|w| {
            let sh = Arc::clone(&sh);
            std::thread::spawn(move || producer(sh, w, seed))
        })
        .collect();
    let consumers: Vec<JoinHandle<()>> = (0..CONSUMERS)
        .map(|c| {
            let sh = Arc::clone(&sh);
            std::thread::spawn(move || consumer(sh, c, seed))
        })
        .collect();

    let mut after = "the start".to_string();
    for (cycle, fault) in plan.iter().enumerate() {
        n.cycle = cycle;
        sh.cycle.store(cycle, SeqCst);
        n.run_load(&after);
        n.sample_committed("before the fault");
        let name = match fault {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::DiskFull => "full disk",
        };
        *n.stats.faults.entry(name).or_default() += 1;
        match fault {
            Fault::Kill => n.kill(),
            Fault::Stop => n.stop(),
            Fault::DiskFull => n.disk_full(),
        }
        after = format!("the {name} of cycle {cycle}");
    }
    n.finish(producers, consumers);
    let stored = n.read_topic();
    let dlq = must(
        "dead letters",
        request(&n.verifier, "GET", &format!("{}/v1/groups/{GROUP}/dlq", sh.base), None).ok(),
        200,
    );
    let server = n.server.take();
    drop(server);

    let h = sh.history();
    let mut violations = std::mem::take(&mut n.violations);
    violations.extend(check_history(&h, &stored, &n.starts, &n.timeline));
    if dlq != json!([]) {
        violations.push(format!("the group's dead-letter queue is not empty: {dlq}"));
    }
    for m in &h.malformed {
        violations.push(format!("malformed answer: {m}"));
    }
    // 4. Only the answers a fault explains.
    let overlaps = |at: &Stamp, from: u64, to: u64| at.sent <= to && at.answered >= from;
    for r in &h.refusals {
        let explained = match (r.status, r.kind.as_str()) {
            (404, "unknown-member" | "unknown-group") => matches!(r.what, "fetch" | "ack"),
            (503, "shutting-down") => n.shutdowns.iter().any(|&(a, b)| overlaps(&r.at, a, b)),
            (status, kind) if poison(status, kind) => {
                n.full_disks.iter().any(|f| overlaps(&r.at, f.start, f.server_end))
            }
            (500..=599, _) => n.full_disks.iter().any(|f| overlaps(&r.at, f.start, f.settled)),
            _ => false,
        };
        if !explained {
            violations.push(format!(
                "unexpected answer: {} {} answered {} {} (sent t{}, answered t{}, cycle {}): {}",
                r.who, r.what, r.status, r.kind, r.at.sent, r.at.answered, r.cycle, r.detail
            ));
        }
    }

    let distinct: BTreeSet<&str> = h.delivered.iter().map(|d| d.id.as_str()).collect();
    let in_doubt = h.acks.iter().filter(|a| a.outcome == AckOutcome::NoAnswer).count();
    let refused_acks =
        h.acks.iter().filter(|a| matches!(a.outcome, AckOutcome::Refused(_))).count();
    eprintln!(
        "nemesis (DRIFTLESS_SEED={seed}): {CYCLES} cycles in {:.1} s, faults {:?}; {} events \
         acknowledged to producers ({} answered duplicate), {} stored; {} deliveries of {} \
         events ({} redeliveries), {} acknowledgements ({} refused, {} unanswered); {} requests \
         timed out; client timeouts per SIGSTOP {:?}; per full disk: filler bytes {:?}, writes \
         refused {:?}; {} operator restarts, {} processes with /readyz ready after a write was answered \
         poisoned; {} restarts took back an offset shown after a failed ack; {} answers not 2xx",
        started.elapsed().as_secs_f64(),
        n.stats.faults,
        h.produced.len(),
        h.produced.iter().filter(|p| p.duplicate).count(),
        stored.len(),
        h.delivered.len(),
        distinct.len(),
        h.delivered.len() - distinct.len(),
        h.acks.len(),
        refused_acks,
        in_doubt,
        sh.timeouts.load(SeqCst),
        n.stats.stop_timeouts,
        n.stats.filler_bytes,
        n.stats.full_refusals,
        n.stats.operator_restarts,
        n.stats.ready_while_poisoned,
        n.stats.non_durable_taken_back,
        h.refusals.len(),
    );
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(30).collect();
        panic!(
            "DRIFTLESS_SEED={seed}: the nemesis found {} violations (first {}):\n\n{}",
            violations.len(),
            shown.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n\n")
        );
    }
    assert!(h.produced.len() >= 100 * CYCLES, "too few produces: {}", h.produced.len());
    assert!(
        n.stats.full_refusals.iter().all(|r| *r > 0),
        "a full disk refused no write: {:?}",
        n.stats.full_refusals
    );
}

// ---- the checks, on histories written by hand ---------------------------------------------------
// The nemesis passes when nothing is wrong; these make sure each check can fail.

fn produced(key: usize, seq: u64, offset: u64, tick: u64) -> Produced {
    let at = Stamp { sent: tick - 1, answered: tick };
    let id = event_id(key, seq);
    Produced { id, key, seq, partition: 0, offset, duplicate: false, producer: 0, at, cycle: 0 }
}

fn delivered(
    key: usize,
    seq: u64,
    offset: u64,
    incarnation: u64,
    sent: u64,
    answered: u64,
) -> Delivered {
    Delivered {
        id: event_id(key, seq),
        key,
        seq,
        partition: 0,
        offset,
        delivery_id: format!("{TOPIC}:0:{offset}:1"),
        consumer: 0,
        incarnation,
        at: Stamp { sent, answered },
        cycle: 0,
    }
}

fn acked(key: usize, seq: u64, offset: u64, incarnation: u64, sent: u64, answered: u64) -> Acked {
    Acked {
        consumer: 0,
        events: vec![(key, seq, format!("{TOPIC}:0:{offset}:1"))],
        incarnation,
        at: Stamp { sent, answered },
        outcome: AckOutcome::Answered { unknown: BTreeSet::new() },
    }
}

/// Runs the checks over `h`, with the log holding what `h` produced and every incarnation
/// starting at offset 0.
fn violations_of(h: &History) -> Vec<String> {
    let stored = h
        .produced
        .iter()
        .map(|p| (p.id.clone(), vec![(p.partition, p.offset, p.key, p.seq)]))
        .collect();
    check_history(h, &stored, &BTreeMap::new(), &[])
}

/// Two events of key 1, each delivered and acknowledged, with a restart that redelivers both.
fn clean_history() -> History {
    History {
        produced: vec![produced(1, 0, 0, 2), produced(1, 1, 1, 4)],
        delivered: vec![
            delivered(1, 0, 0, 1, 3, 5),
            delivered(1, 1, 1, 1, 7, 8),
            // Incarnation 2 starts from committed offset 0: both again, in order.
            delivered(1, 0, 0, 2, 20, 21),
            delivered(1, 1, 1, 2, 24, 25),
        ],
        acks: vec![
            acked(1, 0, 0, 1, 6, 7),
            acked(1, 1, 1, 1, 9, 10),
            acked(1, 0, 0, 2, 22, 23),
            acked(1, 1, 1, 2, 26, 27),
        ],
        ..History::default()
    }
}

#[test]
fn a_history_with_redelivery_across_a_restart_keeps_key_order() {
    assert_eq!(violations_of(&clean_history()), Vec::<String>::new());
}

#[test]
fn an_acknowledged_event_never_delivered_is_lost() {
    let mut h = clean_history();
    h.produced.push(produced(1, 2, 2, 30));
    let v = violations_of(&h);
    assert!(v.len() == 1 && v[0].starts_with("LOST: event k01-s00002"), "{v:#?}");
}

#[test]
fn a_key_event_delivered_before_its_predecessor_was_acknowledged_is_a_skip() {
    let mut h = clean_history();
    // Seq 1 answered at t6, before the first ack of seq 0 was sent (t6 is not below t6).
    h.delivered[1] = delivered(1, 1, 1, 1, 5, 6);
    let v = violations_of(&h);
    assert!(v.len() == 1 && v[0].starts_with("ORDER (skip): key 1 seq 1"), "{v:#?}");
}

#[test]
fn an_earlier_key_event_delivered_again_by_the_same_process_goes_back() {
    let mut h = clean_history();
    // Seq 0 again from incarnation 1, fetched after seq 1 was answered there, and after the
    // acknowledgements of seq 0 and of seq 1 were answered done: every check of going back fires.
    h.delivered.push(delivered(1, 0, 0, 1, 11, 12));
    let v = violations_of(&h);
    assert_eq!(v.len(), 3, "{v:#?}");
    assert!(v[0].starts_with("ORDER (back): key 1 seq 0"), "{v:#?}");
    assert!(v[1].contains("after the acknowledgement of seq 0 ("), "{v:#?}");
    assert!(v[2].contains("after the acknowledgement of seq 1 ("), "{v:#?}");
}

#[test]
fn a_delivery_below_the_offsets_a_process_started_from_breaks_the_committed_offset() {
    let h = clean_history();
    let stored = h
        .produced
        .iter()
        .map(|p| (p.id.clone(), vec![(p.partition, p.offset, p.key, p.seq)]))
        .collect();
    let starts = BTreeMap::from([(2, BTreeMap::from([(0, 1)]))]);
    let v = check_history(&h, &stored, &starts, &[]);
    assert!(v.len() == 1 && v[0].starts_with("COMMITTED: key 1 seq 0 at 0/0"), "{v:#?}");
}
