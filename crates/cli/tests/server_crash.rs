//! Crash test of the real server: `driftless serve` is SIGKILLed at a random moment while three
//! producer threads and a consumer-group member load it over HTTP, 20 times over one data
//! directory.
//!
//! What it proves, after every restart and through the HTTP API only:
//! - every produce answered 200 is readable, exactly once, at the partition and offset that
//!   answer gave, and no id is stored twice (producers re-send batches whose answer was lost, so
//!   this also covers deduplication across a crash);
//! - the main group's committed offsets never move backwards (and never pass the log's end);
//! - every event delivered to the main group and never acknowledged sits at or after its
//!   partition's committed offset, and a final drain of the group really delivers each again.
//!
//! The consumer acknowledges about 80% of the events it sees for the first time and every event
//! delivered again, so unacknowledged deliveries exist at every kill and committed offsets keep
//! moving. Only answers count: a produce or an acknowledgement whose request failed (the server died
//! under it) is "not acknowledged", never a test failure. An acknowledgement sent but not
//! answered is in doubt: it may have been applied, so its event is not required to come back.
//!
//! Invariants of the harness: every loop and wait is bounded; the server is killed on drop (also
//! on a failing assertion); only loopback addresses are used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use support::{agent, delete, get, must, post};

const CYCLES: usize = 20;
const PARTITIONS: u32 = 4;
const TOPIC: &str = "t";
const GROUP: &str = "main";
const PRODUCERS: usize = 3;
const BATCH_EVENTS: usize = 4;
const BATCH_CT: &str = "application/cloudevents-batch+json";

// ---- the server ---------------------------------------------------------------------------------

type Server = support::ServeProcess;

// ---- load ---------------------------------------------------------------------------------------

/// What the load threads learned, in the order they learned it.
enum Op {
    /// A produce answered 200: the id is stored at (partition, offset); whether the answer said
    /// it was a duplicate.
    Produced(String, u32, u64, bool),
    /// The group handed out the event with this id at (partition, offset).
    Delivered(String, u32, u64),
    /// An acknowledgement of these ids was answered 200 and none was reported unknown.
    Acked(Vec<String>),
    /// An acknowledgement of these ids was sent but not answered.
    AckInDoubt(Vec<String>),
    /// An answer the live server should never give.
    Unexpected(String),
}

/// Progress of the current cycle, for deciding when the kill may come.
#[derive(Default)]
struct Progress {
    produced: AtomicU64,
    acked: AtomicU64,
}

fn make_batch(cycle: usize, worker: usize, seq: u64) -> Vec<Value> {
    (0..BATCH_EVENTS)
        .map(|i| {
            json!({
                "specversion": "1.0",
                "id": format!("c{cycle}-w{worker}-{seq}-{i}"),
                "source": "/crash",
                "type": "crash.v1",
                "data": {"seq": seq, "i": i},
            })
        })
        .collect()
}

/// Produces batches until `stop`, starting with `retry` (a batch whose answer was lost in the
/// previous cycle). Returns what was acknowledged and the batch left unanswered, if any.
fn producer(
    base: String,
    cycle: usize,
    worker: usize,
    mut retry: Option<Vec<Value>>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> (Vec<Op>, Option<Vec<Value>>) {
    let agent = agent(Duration::from_secs(5));
    let url = format!("{base}/v1/topics/{TOPIC}/events");
    let mut ops = Vec::new();
    let mut seq = 0u64;
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let batch = retry.take().unwrap_or_else(|| {
            seq += 1;
            make_batch(cycle, worker, seq)
        });
        match post(&agent, &url, BATCH_CT, &Value::Array(batch.clone())) {
            Some((200, body)) => {
                let results = body["results"].as_array().cloned().unwrap_or_default();
                if results.len() != batch.len() {
                    ops.push(Op::Unexpected(format!("produce: {} results: {body}", batch.len())));
                }
                for (sent, r) in batch.iter().zip(&results) {
                    let at =
                        (r["partition"].as_u64(), r["offset"].as_u64(), r["duplicate"].as_bool());
                    match (r["id"].as_str(), at) {
                        (Some(id), (Some(p), Some(o), Some(dup))) if id == sent["id"] => {
                            ops.push(Op::Produced(id.to_string(), p as u32, o, dup));
                        }
                        _ => ops.push(Op::Unexpected(format!("produce result {r} for {sent}"))),
                    }
                }
                progress.produced.fetch_add(results.len() as u64, Ordering::SeqCst);
            }
            Some((status, body)) => {
                ops.push(Op::Unexpected(format!("produce answered {status}: {body}")));
                std::thread::sleep(Duration::from_millis(5));
            }
            None => {
                // The server died under the request: it may or may not have stored the batch.
                // Keep it to re-send (same ids) once the server is back.
                retry = Some(batch);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    (ops, retry)
}

/// Joins the main group and consumes until `stop`, acknowledging about 80% of the events it sees
/// for the first time and every event delivered before (in `seen`), so the committed offsets
/// keep moving from cycle to cycle.
fn consumer(
    base: String,
    seen: Arc<HashSet<String>>,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Vec<Op> {
    let agent = agent(Duration::from_secs(5));
    let mut rng = rand::rng();
    let mut ops = Vec::new();
    let mut member: Option<String> = None;
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(m) = member.clone() else {
            let url = format!("{base}/v1/groups/{GROUP}/members");
            match post(&agent, &url, "application/json", &json!({"topics": [TOPIC]})) {
                Some((201, body)) => member = body["member_id"].as_str().map(str::to_string),
                Some((status, body)) => {
                    ops.push(Op::Unexpected(format!("join answered {status}: {body}")));
                }
                None => {}
            }
            if member.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        };
        let url = format!("{base}/v1/groups/{GROUP}/members/{m}/events?max=50&wait_ms=200");
        let deliveries = match get(&agent, &url) {
            Some((200, body)) => body["deliveries"].as_array().cloned().unwrap_or_default(),
            Some((status, body)) => {
                ops.push(Op::Unexpected(format!("fetch answered {status}: {body}")));
                member = None;
                continue;
            }
            None => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let mut ack_ids = Vec::new();
        let mut ack_events = Vec::new();
        for d in &deliveries {
            let (Some(id), Some(p), Some(o), Some(did)) = (
                d["event"]["id"].as_str(),
                d["partition"].as_u64(),
                d["offset"].as_u64(),
                d["delivery_id"].as_str(),
            ) else {
                ops.push(Op::Unexpected(format!("delivery {d}")));
                continue;
            };
            ops.push(Op::Delivered(id.to_string(), p as u32, o));
            // Leave some unacknowledged: they must come back after the crash.
            if seen.contains(id) || rng.random_bool(0.8) {
                ack_ids.push(did.to_string());
                ack_events.push(id.to_string());
            }
        }
        if ack_ids.is_empty() {
            continue;
        }
        let url = format!("{base}/v1/groups/{GROUP}/ack");
        match post(&agent, &url, "application/json", &json!({"delivery_ids": ack_ids})) {
            Some((200, body)) => {
                let unknown = body["unknown"].as_array().map_or(usize::MAX, Vec::len);
                if unknown == 0 {
                    progress.acked.fetch_add(ack_events.len() as u64, Ordering::SeqCst);
                    ops.push(Op::Acked(ack_events));
                } else {
                    // A delivery of this very session was not pending: the broker lost it.
                    ops.push(Op::Unexpected(format!("ack of {ack_ids:?} answered {body}")));
                    ops.push(Op::AckInDoubt(ack_events));
                }
            }
            Some((status, body)) => {
                ops.push(Op::Unexpected(format!("ack answered {status}: {body}")));
                ops.push(Op::AckInDoubt(ack_events));
            }
            None => ops.push(Op::AckInDoubt(ack_events)),
        }
    }
    ops
}

/// Sets the load threads' stop flag when dropped, so a failing assertion does not leave them
/// hammering a dead server.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- what the test knows ------------------------------------------------------------------------

/// The fate of an event delivered to the main group, as far as the test can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Delivered at (partition, offset); no acknowledgement was ever sent for that delivery.
    Unacked(u32, u64),
    /// An acknowledgement was sent but not answered: it may have been applied.
    InDoubt,
    /// An acknowledgement was answered 200.
    Acked,
}

#[derive(Default)]
struct History {
    /// Acknowledged produces: id → (partition, offset).
    produced: BTreeMap<String, (u32, u64)>,
    /// Every event delivered to the main group, by id.
    delivered: BTreeMap<String, Fate>,
    /// Committed offsets of the main group seen after the last restart.
    committed: BTreeMap<u32, u64>,
    unexpected: Vec<String>,
    /// Produce results answered `duplicate` (re-sent ids that the crashed server had stored).
    duplicates: u64,
    deliveries: u64,
    acks: u64,
}

impl History {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Produced(id, p, o, duplicate) => {
                self.duplicates += u64::from(duplicate);
                if let Some(before) = self.produced.insert(id.clone(), (p, o)) {
                    // A re-sent id must be answered with its original place.
                    assert_eq!(before, (p, o), "{id} acknowledged at two places");
                }
            }
            Op::Delivered(id, p, o) => {
                self.deliveries += 1;
                let fate = self.delivered.entry(id).or_insert(Fate::Unacked(p, o));
                if *fate != Fate::Acked {
                    // Delivered again (after a crash): this delivery is now the one to ack.
                    *fate = Fate::Unacked(p, o);
                }
            }
            Op::Acked(ids) => {
                self.acks += ids.len() as u64;
                for id in ids {
                    self.delivered.insert(id, Fate::Acked);
                }
            }
            Op::AckInDoubt(ids) => {
                for id in ids {
                    let fate = self.delivered.get_mut(&id).expect("an ack of an undelivered id");
                    if *fate != Fate::Acked {
                        *fate = Fate::InDoubt;
                    }
                }
            }
            Op::Unexpected(what) => self.unexpected.push(what),
        }
    }

    fn unacked(&self) -> impl Iterator<Item = (&String, u32, u64)> {
        self.delivered.iter().filter_map(|(id, f)| match f {
            Fate::Unacked(p, o) => Some((id, *p, *o)),
            _ => None,
        })
    }
}

// ---- checks after a restart ---------------------------------------------------------------------

/// Drains a member of `group` from wherever it stands: (event id, partition, offset) of every
/// delivery, acknowledging them all.
fn drain(agent: &ureq::Agent, base: &str, group: &str, member: &str) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "draining {group} took over 30 s");
        let url = format!("{base}/v1/groups/{group}/members/{member}/events?max=1000&wait_ms=0");
        let fetched = must(&format!("fetch {group}"), get(agent, &url), 200);
        let deliveries = fetched["deliveries"].as_array().unwrap();
        if deliveries.is_empty() {
            return out;
        }
        let mut ids = Vec::new();
        for d in deliveries {
            let id = d["event"]["id"].as_str().unwrap().to_string();
            let p = d["partition"].as_u64().unwrap() as u32;
            out.push((id, p, d["offset"].as_u64().unwrap()));
            ids.push(d["delivery_id"].clone());
        }
        let url = format!("{base}/v1/groups/{group}/ack");
        let acked =
            must("ack", post(agent, &url, "application/json", &json!({"delivery_ids": ids})), 200);
        assert_eq!(acked["unknown"], json!([]), "{group}: fresh deliveries not pending");
    }
}

/// (a) Every acknowledged produce is stored exactly once where it was acknowledged, and no id is
/// stored twice: a fresh group, sought to earliest, reads the whole topic.
fn check_log(agent: &ureq::Agent, base: &str, cycle: usize, h: &History) {
    let group = format!("verify-{cycle}");
    let url = format!("{base}/v1/groups/{group}/members");
    let joined = must(
        "join verify",
        post(agent, &url, "application/json", &json!({"topics": [TOPIC]})),
        201,
    );
    let member = joined["member_id"].as_str().unwrap().to_string();
    let url = format!("{base}/v1/groups/{group}/seek");
    must(
        "seek verify",
        post(agent, &url, "application/json", &json!({"topic": TOPIC, "to": "earliest"})),
        200,
    );
    let mut stored: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    let mut per_partition = [0u64; PARTITIONS as usize];
    for (id, p, o) in drain(agent, base, &group, &member) {
        per_partition[p as usize] += 1;
        if let Some(before) = stored.insert(id.clone(), (p, o)) {
            panic!("cycle {cycle}: {id} is stored twice: at {before:?} and at {:?}", (p, o));
        }
    }
    let topic = must("describe topic", get(agent, &format!("{base}/v1/topics/{TOPIC}")), 200);
    let parts = topic["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), PARTITIONS as usize, "cycle {cycle}: {topic}");
    for (p, stats) in parts.iter().enumerate() {
        let span = stats["end_offset"].as_u64().unwrap() - stats["start_offset"].as_u64().unwrap();
        assert_eq!(per_partition[p], span, "cycle {cycle}: partition {p} was not read whole");
    }
    for (id, at) in &h.produced {
        assert_eq!(
            stored.get(id),
            Some(at),
            "cycle {cycle}: acknowledged produce {id} lost or moved"
        );
    }
    let url = format!("{base}/v1/groups/{group}/members/{member}");
    must("leave verify", delete(agent, &url), 204);
}

/// (b) The main group's committed offsets never move backwards; (c) every delivered but
/// unacknowledged event sits at or after its partition's committed offset.
fn check_committed(agent: &ureq::Agent, base: &str, cycle: usize, h: &mut History) {
    let described = get(agent, &format!("{base}/v1/groups/{GROUP}"));
    let now: BTreeMap<u32, (u64, u64)> = match described {
        // Nothing committed yet: the group has no persisted state.
        Some((404, _)) => BTreeMap::new(),
        got => must("describe group", got, 200)["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["topic"] == TOPIC)
            .map(|p| {
                let committed = p["committed"].as_u64().unwrap();
                let end = p["end_offset"].as_u64().unwrap();
                (p["partition"].as_u64().unwrap() as u32, (committed, end))
            })
            .collect(),
    };
    for p in 0..PARTITIONS {
        let before = h.committed.get(&p).copied().unwrap_or(0);
        let (committed, end) = now.get(&p).copied().unwrap_or((0, u64::MAX));
        assert!(
            committed >= before,
            "cycle {cycle}: committed offset of partition {p} went back from {before} to \
             {committed}"
        );
        assert!(committed <= end, "cycle {cycle}: partition {p} committed {committed} > end {end}");
        h.committed.insert(p, committed);
    }
    for (id, p, offset) in h.unacked() {
        let committed = h.committed[&p];
        assert!(
            offset >= committed,
            "cycle {cycle}: unacknowledged {id} at {p}/{offset} is below committed {committed}, \
             so it will never be delivered again"
        );
    }
}

// ---- the test -----------------------------------------------------------------------------------

#[test]
fn server_crash_sigkill_during_produce_and_consume_loses_no_acknowledged_event() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let verifier = agent(Duration::from_secs(10));
    let mut rng = rand::rng();
    let mut h = History::default();
    let mut retries: Vec<Option<Vec<Value>>> = vec![None; PRODUCERS];
    let mut in_doubt_batches = 0;
    let (mut min_produced, mut min_acked) = (u64::MAX, u64::MAX);
    for cycle in 0..CYCLES {
        let server = Server::start(dir.path());
        let base = server.base.clone();
        if cycle == 0 {
            let url = format!("{base}/v1/topics");
            let spec = json!({"name": TOPIC, "partitions": PARTITIONS});
            must("create topic", post(&verifier, &url, "application/json", &spec), 201);
        } else {
            check_log(&verifier, &base, cycle, &h);
            check_committed(&verifier, &base, cycle, &mut h);
        }

        let stop = Arc::new(AtomicBool::new(false));
        let _stop_guard = StopOnDrop(Arc::clone(&stop));
        let progress = Arc::new(Progress::default());
        let producers: Vec<JoinHandle<_>> = (0..PRODUCERS)
            .map(|w| {
                let (base, stop, progress) =
                    (base.clone(), Arc::clone(&stop), Arc::clone(&progress));
                let retry = retries[w].take();
                std::thread::spawn(move || producer(base, cycle, w, retry, stop, progress))
            })
            .collect();
        let consumer = {
            let (base, stop, progress) = (base.clone(), Arc::clone(&stop), Arc::clone(&progress));
            let seen = Arc::new(h.delivered.keys().cloned().collect::<HashSet<_>>());
            std::thread::spawn(move || consumer(base, seen, stop, progress))
        };
        // Kill at a random moment, but only once this cycle has acknowledged something of each
        // kind, so every cycle crashes a server with real work done.
        let run_for = Duration::from_millis(rng.random_range(100..600));
        let load_started = Instant::now();
        loop {
            let busy = progress.produced.load(Ordering::SeqCst) > 0
                && progress.acked.load(Ordering::SeqCst) > 0;
            if busy && load_started.elapsed() >= run_for {
                break;
            }
            assert!(
                load_started.elapsed() < Duration::from_secs(15),
                "cycle {cycle}: no produce and ack acknowledged within 15 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        server.kill();
        stop.store(true, Ordering::SeqCst);
        min_produced = min_produced.min(progress.produced.load(Ordering::SeqCst));
        min_acked = min_acked.min(progress.acked.load(Ordering::SeqCst));
        for (w, p) in producers.into_iter().enumerate() {
            let (ops, retry) = p.join().unwrap();
            ops.into_iter().for_each(|op| h.apply(op));
            in_doubt_batches += usize::from(retry.is_some());
            retries[w] = retry;
        }
        consumer.join().unwrap().into_iter().for_each(|op| h.apply(op));
        assert!(h.unexpected.is_empty(), "cycle {cycle}: unexpected answers: {:#?}", h.unexpected);
    }

    // After the last crash: the same checks, then the group delivers every unacknowledged
    // event again.
    let server = Server::start(dir.path());
    let base = server.base.clone();
    check_log(&verifier, &base, CYCLES, &h);
    check_committed(&verifier, &base, CYCLES, &mut h);
    let url = format!("{base}/v1/groups/{GROUP}/members");
    let joined = must(
        "join main",
        post(&verifier, &url, "application/json", &json!({"topics": [TOPIC]})),
        201,
    );
    let member = joined["member_id"].as_str().unwrap();
    let again: BTreeMap<String, (u32, u64)> =
        drain(&verifier, &base, GROUP, member).into_iter().map(|(id, p, o)| (id, (p, o))).collect();
    let unacked: Vec<(&String, u32, u64)> = h.unacked().collect();
    for (id, p, o) in &unacked {
        assert_eq!(
            again.get(*id),
            Some(&(*p, *o)),
            "unacknowledged {id} (delivered at {p}/{o}) was not delivered again"
        );
    }
    drop(server);

    let in_doubt = h.delivered.values().filter(|f| **f == Fate::InDoubt).count();
    eprintln!(
        "{CYCLES} cycles in {:.1} s: {} produces acknowledged ({in_doubt_batches} batches \
         unanswered at a kill and re-sent, {} ids answered duplicate), {} deliveries, {} \
         acknowledged, {} unacknowledged delivered again, {in_doubt} acks in doubt, final drain \
         {} events, committed {:?}; per cycle at least {min_produced} produces and {min_acked} \
         deliveries acknowledged",
        started.elapsed().as_secs_f64(),
        h.produced.len(),
        h.duplicates,
        h.deliveries,
        h.acks,
        unacked.len(),
        again.len(),
        h.committed,
    );
    assert!(h.produced.len() >= 20 * CYCLES, "too few produces: {}", h.produced.len());
    assert!(h.acks >= 10 * CYCLES as u64, "too few acknowledged deliveries: {}", h.acks);
    assert!(!unacked.is_empty(), "no delivery was left unacknowledged: nothing was tested");
}
