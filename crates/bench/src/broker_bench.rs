//! `driftless bench broker`: produce → consume through the HTTP API with several producers and a
//! consumer group, against the same load on a NATS JetStream stream (file storage) through
//! async-nats, measured in the same run.
//!
//! Both sides carry the same events: a JSON payload of `event_bytes` bytes holding its send time.
//! End-to-end latency is consume time minus send time, on one monotonic clock. Throughput is
//! events over the time from the first send to the last consume. The report says whether each
//! side fsyncs before acknowledging a produce: Driftless does (`durability = "always"`); JetStream
//! file storage acknowledges before its periodic sync (2 minutes by default), so its figures are
//! for a weaker promise.
//!
//! Driftless runs twice in one invocation, on the same workload: plaintext without
//! authentication first, then over TLS (a throwaway test CA, the client verifying the server's
//! certificate) with authentication on (`tls_auth`: a bearer token on every request); `tls_auth_vs_plaintext_ratio` is the second
//! run's throughput over the first's (the target is at least [`TLS_AUTH_RATIO_TARGET`]).
//!
//! Invariants: each side runs against a fresh server in a fresh temporary directory, on loopback;
//! memory is bounded by the fixed-size histograms and the in-flight batch; the run stops by itself
//! after all events are consumed or `timeout_s` passes (then it fails rather than report).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftless_broker::{Broker, BrokerConfig};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::{BenchError, Histogram};

/// Parameters of `driftless bench broker`.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerBenchParams {
    /// Events in total.
    pub events: u64,
    /// Payload bytes per event (approximate: the JSON padding is sized to it).
    pub event_bytes: usize,
    /// Producer threads (Driftless) or tasks (JetStream).
    pub producers: usize,
    /// Events per produce request (Driftless) / publishes in flight per producer (JetStream).
    pub batch: usize,
    /// Partitions of the Driftless topic.
    pub partitions: u32,
    /// Consumer group members (Driftless) / pull-consumer tasks (JetStream).
    pub consumers: usize,
    /// Distinct subjects (entity keys). Driftless keeps at most one event per key in flight, to
    /// keep per-key order under failure, so few keys cap its consumer concurrency.
    pub keys: u64,
    /// Give up after this many seconds per side.
    pub timeout_s: u64,
    /// Parent of the temporary data directories.
    pub dir: std::path::PathBuf,
}

impl Default for BrokerBenchParams {
    fn default() -> Self {
        Self {
            events: 200_000,
            event_bytes: 256,
            producers: 4,
            batch: 100,
            partitions: 4,
            consumers: 2,
            keys: 100_000,
            timeout_s: 120,
            dir: std::path::PathBuf::from(crate::log_bench::DEFAULT_DIR),
        }
    }
}

/// The least `tls_auth_vs_plaintext_ratio` the security work promises (issue 21).
pub const TLS_AUTH_RATIO_TARGET: f64 = 0.85;

/// One side's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// `driftless`, `driftless-tls-auth` or `nats-jetstream`.
    pub system: &'static str,
    /// Whether a produce is acknowledged only after its bytes were fsynced.
    pub fsync_before_ack: bool,
    /// Events consumed per second, first send to last consume.
    pub events_per_sec: f64,
    /// End-to-end latency percentiles, produce call to consumer receipt.
    pub e2e_p50_us: u64,
    /// See `e2e_p50_us`.
    pub e2e_p99_us: u64,
    /// Latency of one produce request (batch) until acknowledged.
    pub produce_p50_us: u64,
    /// See `produce_p50_us`.
    pub produce_p99_us: u64,
    /// Wall time of the side's run.
    pub elapsed_s: f64,
}

impl SideReport {
    fn new(
        system: &'static str,
        fsync_before_ack: bool,
        events: u64,
        elapsed: Duration,
        e2e: &Histogram,
        produce: &Histogram,
    ) -> Self {
        Self {
            system,
            fsync_before_ack,
            events_per_sec: events as f64 / elapsed.as_secs_f64(),
            e2e_p50_us: e2e.value_at_quantile(0.50),
            e2e_p99_us: e2e.value_at_quantile(0.99),
            produce_p50_us: produce.value_at_quantile(0.50),
            produce_p99_us: produce.value_at_quantile(0.99),
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

/// The report of `driftless bench broker`.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerBenchReport {
    /// Always `broker`.
    pub bench: &'static str,
    /// The parameters.
    pub params: BrokerBenchParams,
    /// Driftless over plaintext HTTP without authentication.
    pub driftless: SideReport,
    /// Driftless on the same workload over https with authentication on.
    pub tls_auth: SideReport,
    /// `tls_auth` throughput over `driftless` throughput (target: at least 0.85).
    pub tls_auth_vs_plaintext_ratio: f64,
    /// NATS JetStream over its client protocol.
    pub jetstream: SideReport,
    /// Driftless throughput over JetStream's (target: at least 2).
    pub throughput_ratio: f64,
    /// Driftless end-to-end p99 over JetStream's (target: at most 1).
    pub e2e_p99_ratio: f64,
}

impl BrokerBenchParams {
    /// Checks the parameters, naming the flag at fault.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad =
            |flag: &str, reason: &str| Err(BenchError::InvalidParams(format!("{flag} {reason}")));
        if self.events == 0 {
            return bad("--events", "must be at least 1");
        }
        if self.producers == 0 || self.producers > 256 {
            return bad("--producers", "must be 1 to 256");
        }
        if self.consumers == 0 || self.consumers > 64 {
            return bad("--consumers", "must be 1 to 64");
        }
        if self.batch == 0 || self.batch > 10_000 {
            return bad("--batch", "must be 1 to 10000 (the broker's produce_events_max)");
        }
        if self.event_bytes > 512 << 10 {
            return bad("--event-bytes", "must be at most 524288");
        }
        if self.keys == 0 {
            return bad("--keys", "must be at least 1");
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("--partitions", "must be 1 to 1024");
        }
        Ok(())
    }
}

/// The payload both sides carry. The clients encode and decode typed structs, not
/// `serde_json::Value` trees, so the client's own JSON work stays small next to the servers'.
#[derive(Serialize)]
struct Payload<'a> {
    sent_us: u64,
    /// Already JSON text: escaping the same padding for every event was a few percent of the
    /// clients' CPU, on both sides.
    pad: &'a RawValue,
}

fn payload(epoch: Instant, pad: &RawValue) -> Payload<'_> {
    Payload { sent_us: epoch.elapsed().as_micros() as u64, pad }
}

/// The padding string of a payload of about `event_bytes`, as JSON text.
fn padding(event_bytes: usize) -> Result<Box<RawValue>, BenchError> {
    let pad = "x".repeat(event_bytes.saturating_sub(40));
    serde_json::value::to_raw_value(&pad).map_err(|e| http_error("encode padding", e))
}

/// What a consumer reads of a payload; the padding is skipped unread.
#[derive(Deserialize)]
struct SentAt {
    sent_us: u64,
}

fn latency_us(epoch: Instant, sent: Option<&SentAt>) -> Option<u64> {
    Some((epoch.elapsed().as_micros() as u64).saturating_sub(sent?.sent_us))
}

/// One CloudEvent of a produce request.
#[derive(Serialize)]
struct OutEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'static str,
    #[serde(rename = "type")]
    ty: &'static str,
    subject: String,
    data: Payload<'a>,
}

/// What a consumer reads of a fetch answer.
#[derive(Deserialize)]
struct FetchAnswer<'a> {
    #[serde(borrow)]
    deliveries: Vec<InDelivery<'a>>,
}

#[derive(Deserialize)]
struct InDelivery<'a> {
    #[serde(borrow)]
    delivery_id: std::borrow::Cow<'a, str>,
    event: InEvent,
}

#[derive(Deserialize)]
struct InEvent {
    #[serde(default)]
    data: Option<SentAt>,
}

#[derive(Serialize)]
struct AckBody<'a> {
    delivery_ids: Vec<&'a str>,
}

/// Runs both sides and reports them side by side.
pub fn run_broker_bench(params: &BrokerBenchParams) -> Result<BrokerBenchReport, BenchError> {
    params.validate()?;
    std::fs::create_dir_all(&params.dir)
        .map_err(|e| BenchError::io("create bench directory", &params.dir, e))?;
    let driftless = run_driftless(params, Transport::Plaintext)?;
    let tls_auth = run_driftless(params, Transport::TlsAuth)?;
    let jetstream = run_jetstream(params)?;
    Ok(BrokerBenchReport {
        bench: "broker",
        params: params.clone(),
        tls_auth_vs_plaintext_ratio: tls_auth.events_per_sec / driftless.events_per_sec.max(1e-9),
        tls_auth,
        throughput_ratio: driftless.events_per_sec / jetstream.events_per_sec.max(1e-9),
        e2e_p99_ratio: driftless.e2e_p99_us as f64 / (jetstream.e2e_p99_us.max(1)) as f64,
        driftless,
        jetstream,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("tokio runtime: {e}")))
}

fn http_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

/// How the benchmark's clients reach the Driftless server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// http://, authentication off: the baseline.
    Plaintext,
    /// https:// with a certificate from a throwaway CA that the client verifies, and
    /// authentication on.
    TlsAuth,
}

/// The ureq agent of the benchmark's clients: per-phase timeouts, the test CA as the only root
/// under TLS, and `Authorization: Bearer` on every request when a token is given.
fn agent(tls_ca: Option<&str>, bearer: Option<String>) -> Result<ureq::Agent, BenchError> {
    // Per-phase timeouts, not `timeout_global`: with a global timeout ureq resolves every
    // request's address on a new thread (so the lookup can be abandoned), which cost the client
    // ~5% of the CPU this benchmark measures. The address is a loopback literal: nothing to
    // wait on.
    let timeout = Some(Duration::from_secs(60));
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(timeout)
        .timeout_send_request(timeout)
        .timeout_send_body(timeout)
        .timeout_recv_response(timeout)
        .timeout_recv_body(timeout);
    if let Some(ca_pem) = tls_ca {
        let ca = ureq::tls::Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| http_error("read the test CA", e))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
            .build();
        config = config.tls_config(tls);
    }
    if let Some(token) = bearer {
        let value = ureq::http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|e| http_error("bearer token", e))?;
        config = config.middleware(
            move |mut req: ureq::http::Request<ureq::SendBody<'_>>,
                  next: ureq::middleware::MiddlewareNext<'_>| {
                req.headers_mut().insert(ureq::http::header::AUTHORIZATION, value.clone());
                next.handle(req)
            },
        );
    }
    Ok(config.build().into())
}

fn run_driftless(
    params: &BrokerBenchParams,
    transport: Transport,
) -> Result<SideReport, BenchError> {
    let tmp = tempfile::Builder::new()
        .prefix("driftless-bench-broker-")
        .tempdir_in(&params.dir)
        .map_err(|e| BenchError::io("create temporary directory", &params.dir, e))?;
    let broker_config = BrokerConfig {
        inflight_per_member_max: 10_000,
        pending_per_partition_max: 20_000,
        ..BrokerConfig::default()
    };
    let broker = Arc::new(
        Broker::open(tmp.path(), broker_config.clone())
            .map_err(|e| http_error("open broker", e))?,
    );
    let mut config = driftless_server::ServerConfig { broker: broker_config, ..Default::default() };
    // The CA lives (its files with it) until the run ends.
    let ca = match transport {
        Transport::Plaintext => None,
        Transport::TlsAuth => {
            let ca = driftless_testkit::TestCa::new("driftless-bench")
                .map_err(|e| http_error("create the test CA", e))?;
            config.server.tls = Some(driftless_server::TlsSettings {
                cert_file: ca.server().cert_path.clone(),
                key_file: ca.server().key_path.clone(),
                client_ca_file: None,
                client_cert_required: false,
            });
            Some(ca)
        }
    };
    // Under TLS, authentication is on too: every request carries a bearer token, checked
    // (hash, constant-time compare, scope match) like any client's.
    let bearer = match transport {
        Transport::Plaintext => None,
        Transport::TlsAuth => {
            let path = tmp.path().join("tokens.json");
            let scopes = ["admin:topic:bench".to_string(), "consume:group:bench".to_string()];
            let now_ms = driftless_core::Clock::now_ms(&driftless_core::SystemClock);
            let created = driftless_auth::TokenStore::new(&path)
                .create("bench", &scopes, None, now_ms, &mut driftless_auth::OsRandom)
                .map_err(|e| http_error("create the bench token", e))?;
            config.auth.enabled = true;
            config.auth.tokens_file = Some(path);
            Some(created.token.text)
        }
    };
    let rt = runtime()?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| http_error("bind", e))?;
    let addr = listener.local_addr().map_err(|e| http_error("bind", e))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = {
        let broker = Arc::clone(&broker);
        rt.spawn(async move {
            let _ = driftless_server::serve(listener, broker, &config, async move {
                let _ = stopped.await;
            })
            .await;
        })
    };
    // The server certificate names 127.0.0.1: the client verifies it without a DNS lookup.
    let scheme = if ca.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{addr}");
    let authenticated = bearer.is_some();
    let agent = agent(ca.as_ref().map(|ca| ca.ca_pem()), bearer)?;
    if authenticated {
        // The figure is only worth its name if authentication really is on: a request without
        // the token must be refused.
        let bare = self::agent(ca.as_ref().map(|ca| ca.ca_pem()), None)?;
        let refused = bare.get(&format!("{base}/v1/topics")).call();
        let status = refused.map(|r| r.status().as_u16()).map_err(|e| http_error("probe", e))?;
        if status != 401 {
            return Err(http_error("authentication is not on for the tls_auth run", status));
        }
    }
    let created = agent
        .post(&format!("{base}/v1/topics"))
        .send_json(json!({ "name": "bench", "partitions": params.partitions }))
        .map_err(|e| http_error("create topic", e))?;
    if created.status() != 201 {
        return Err(http_error("create topic", created.status()));
    }
    let epoch = Instant::now();
    let consumed = Arc::new(AtomicU64::new(0));
    let e2e = Arc::new(Mutex::new(Histogram::new()));
    let produce = Arc::new(Mutex::new(Histogram::new()));
    let deadline = epoch + Duration::from_secs(params.timeout_s);
    let pad = padding(params.event_bytes)?;
    // Members join before any event is produced, so no rebalance happens mid-run.
    let mut members = Vec::new();
    for _ in 0..params.consumers {
        let mut r = agent
            .post(&format!("{base}/v1/groups/bench/members"))
            .send_json(json!({ "topics": ["bench"] }))
            .map_err(|e| http_error("join", e))?;
        let v: Value = r.body_mut().read_json().map_err(|e| http_error("join", e))?;
        let id = v["member_id"].as_str().ok_or_else(|| http_error("join", v.to_string()))?;
        members.push(id.to_string());
    }
    let started = Instant::now();
    let result = std::thread::scope(|s| -> Result<(), BenchError> {
        let mut handles = Vec::new();
        for member in &members {
            let (agent, base, consumed, e2e) = (agent.clone(), &base, &consumed, &e2e);
            handles.push(s.spawn(move || -> Result<(), BenchError> {
                let url =
                    format!("{base}/v1/groups/bench/members/{member}/events?max=1000&wait_ms=100");
                let mut body = Vec::with_capacity(1 << 20);
                while consumed.load(Ordering::Relaxed) < params.events {
                    if Instant::now() > deadline {
                        return Err(http_error("consume", "timed out"));
                    }
                    let mut r = agent.get(&url).call().map_err(|e| http_error("fetch", e))?;
                    // One buffer per consumer, reused: a fresh one per answer grew and
                    // page-faulted its way up to ~100 KB every fetch.
                    body.clear();
                    r.body_mut()
                        .with_config()
                        .limit(256 << 20)
                        .reader()
                        .read_to_end(&mut body)
                        .map_err(|e| http_error("fetch", e))?;
                    let answer: FetchAnswer<'_> = serde_json::from_slice(&body).map_err(|e| {
                        http_error("fetch", format!("{e}: {}", String::from_utf8_lossy(&body)))
                    })?;
                    let deliveries = answer.deliveries;
                    if deliveries.is_empty() {
                        continue;
                    }
                    let mut ids = Vec::with_capacity(deliveries.len());
                    let mut h = Histogram::new();
                    for d in &deliveries {
                        if let Some(us) = latency_us(epoch, d.event.data.as_ref()) {
                            h.record(us);
                        }
                        ids.push(d.delivery_id.as_ref());
                    }
                    lock(e2e).merge(&h);
                    let mut r = agent
                        .post(&format!("{base}/v1/groups/bench/ack"))
                        .send_json(AckBody { delivery_ids: ids })
                        .map_err(|e| http_error("ack", e))?;
                    // Read the answer to the end so the agent keeps the connection for reuse.
                    r.body_mut().read_to_vec().map_err(|e| http_error("ack", e))?;
                    consumed.fetch_add(deliveries.len() as u64, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        for w in 0..params.producers {
            let (agent, base, produce, pad) = (agent.clone(), &base, &produce, &*pad);
            handles.push(s.spawn(move || -> Result<(), BenchError> {
                let mine = params.events / params.producers as u64
                    + u64::from((w as u64) < params.events % params.producers as u64);
                let url = format!("{base}/v1/topics/bench/events");
                let mut sent = 0u64;
                while sent < mine {
                    let n = (mine - sent).min(params.batch as u64);
                    let batch: Vec<OutEvent<'_>> = (0..n)
                        .map(|i| OutEvent {
                            specversion: "1.0",
                            id: format!("w{w}-{}", sent + i),
                            source: "/bench",
                            ty: "bench.v1",
                            subject: format!("key-{}", (w as u64 * mine + sent + i) % params.keys),
                            data: payload(epoch, pad),
                        })
                        .collect();
                    // Sized once: growing from empty re-copied each request's body ~9 times.
                    let mut body = Vec::with_capacity(batch.len() * (params.event_bytes + 160));
                    serde_json::to_writer(&mut body, &batch)
                        .map_err(|e| http_error("encode", e))?;
                    let t = Instant::now();
                    let mut r = agent
                        .post(&url)
                        .header("content-type", "application/cloudevents-batch+json")
                        .send(&body[..])
                        .map_err(|e| http_error("produce", e))?;
                    if r.status() != 200 {
                        return Err(http_error("produce", r.status()));
                    }
                    // Read the answer to the end so the agent keeps the connection for reuse.
                    r.body_mut()
                        .with_config()
                        .limit(64 << 20)
                        .read_to_vec()
                        .map_err(|e| http_error("produce", e))?;
                    lock(produce).record(t.elapsed().as_micros() as u64);
                    sent += n;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| http_error("bench thread", "panicked"))??;
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let _ = rt.block_on(server);
    drop(rt);
    drop(ca);
    result?;
    let (e2e, produce) = (lock(&e2e), lock(&produce));
    let system = match transport {
        Transport::Plaintext => "driftless",
        Transport::TlsAuth => "driftless-tls-auth",
    };
    Ok(SideReport::new(system, true, params.events, elapsed, &e2e, &produce))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_jetstream(params: &BrokerBenchParams) -> Result<SideReport, BenchError> {
    use async_nats::jetstream::{self, consumer, stream};
    use futures::StreamExt;

    let nats =
        driftless_testkit::NatsServer::start().map_err(|e| http_error("start nats-server", e))?;
    let rt = runtime()?;
    let epoch = Instant::now();
    let pad: Arc<RawValue> = padding(params.event_bytes)?.into();
    let consumed = Arc::new(AtomicU64::new(0));
    let e2e = Arc::new(Mutex::new(Histogram::new()));
    let produce = Arc::new(Mutex::new(Histogram::new()));
    let events = params.events;
    let elapsed = rt.block_on(async {
        let client = async_nats::connect(nats.url()).await.map_err(|e| http_error("connect", e))?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: "BENCH".into(),
                subjects: vec!["bench.>".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| http_error("create stream", e))?;
        let pull = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .map_err(|e| http_error("create consumer", e))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(params.timeout_s);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..params.consumers {
            let (pull, consumed, e2e) = (pull.clone(), Arc::clone(&consumed), Arc::clone(&e2e));
            tasks.spawn(async move {
                let mut messages = pull.messages().await.map_err(|e| http_error("consume", e))?;
                let mut h = Histogram::new();
                while consumed.load(Ordering::Relaxed) < events {
                    let next =
                        tokio::time::timeout(Duration::from_millis(100), messages.next()).await;
                    let Ok(Some(msg)) = next else {
                        if Instant::now() > deadline {
                            return Err(http_error("consume", "timed out"));
                        }
                        continue;
                    };
                    let msg = msg.map_err(|e| http_error("consume", e))?;
                    let sent = serde_json::from_slice::<SentAt>(&msg.payload).ok();
                    if let Some(us) = latency_us(epoch, sent.as_ref()) {
                        h.record(us);
                    }
                    msg.ack().await.map_err(|e| http_error("ack", e))?;
                    consumed.fetch_add(1, Ordering::Relaxed);
                }
                lock(&e2e).merge(&h);
                Ok::<(), BenchError>(())
            });
        }
        for w in 0..params.producers {
            let (js, produce, pad) = (js.clone(), Arc::clone(&produce), Arc::clone(&pad));
            let mine = events / params.producers as u64
                + u64::from((w as u64) < events % params.producers as u64);
            let batch = params.batch as u64;
            tasks.spawn(async move {
                let mut sent = 0u64;
                while sent < mine {
                    let n = (mine - sent).min(batch);
                    let t = Instant::now();
                    let mut acks = Vec::with_capacity(n as usize);
                    for i in 0..n {
                        let body = serde_json::to_vec(&payload(epoch, &pad))
                            .map_err(|e| http_error("encode", e))?;
                        let subject = format!("bench.{}", (sent + i) % 1024);
                        acks.push(
                            js.publish(subject, body.into())
                                .await
                                .map_err(|e| http_error("publish", e))?,
                        );
                    }
                    for ack in acks {
                        ack.await.map_err(|e| http_error("publish ack", e))?;
                    }
                    lock(&produce).record(t.elapsed().as_micros() as u64);
                    sent += n;
                }
                Ok::<(), BenchError>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| http_error("bench task", e))??;
        }
        Ok::<Duration, BenchError>(started.elapsed())
    })?;
    drop(rt);
    drop(nats);
    // File storage acknowledges before fsync (sync_interval, 2 minutes by default).
    let fsync_before_ack = false;
    let (e2e, produce) = (lock(&e2e), lock(&produce));
    Ok(SideReport::new("nats-jetstream", fsync_before_ack, params.events, elapsed, &e2e, &produce))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The TLS run carries the whole workload over https with a verified certificate (a client
    /// that did not trust the test CA would fail the first request, and the run with it).
    #[test]
    fn the_tls_run_serves_the_same_workload_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let params = BrokerBenchParams {
            events: 600,
            producers: 2,
            consumers: 1,
            timeout_s: 60,
            dir: dir.path().to_path_buf(),
            ..BrokerBenchParams::default()
        };
        let report = run_driftless(&params, Transport::TlsAuth).unwrap();
        assert_eq!(report.system, "driftless-tls-auth");
        assert!(report.events_per_sec > 0.0 && report.e2e_p99_us > 0, "{report:?}");
        // The run's data directory is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
