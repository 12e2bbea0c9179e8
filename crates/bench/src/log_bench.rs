//! `driftless bench log`: append throughput, append latency and reopen time of the embedded log,
//! judged against raw sequential write + `fdatasync` on the same disk.
//!
//! One run, in order, inside a fresh temporary directory under [`LogBenchParams::dir`]:
//! 1. generate payloads (random bytes, shared by every producer);
//! 2. the disk reference ([`crate::disk`]): as many bytes as the log will write (records plus
//!    headers), at most [`DISK_REFERENCE_BYTES_MAX`], in [`DISK_CHUNK_BYTES`] chunks with an
//!    `fdatasync` after each; run first so the log does not start with the reference's dirty
//!    pages in the page cache, and its file is deleted before the log starts;
//! 3. the disk latency probe: one batch's bytes (at most one chunk) written and `fdatasync`ed at a
//!    time, up to [`DISK_PROBE_SYNCS_MAX`] times, [`DISK_PROBE_BYTES_MAX`] bytes or
//!    [`DISK_PROBE_TIME_MAX`], whichever comes first: the floor under
//!    the latency of a durable append;
//! 4. the log run, one topic with one partition:
//!    - closed loop (`rate == 0`): `producers` threads append batches of `batch` records as fast as
//!      they are acknowledged until `events` are appended; latency is the time `append` took;
//!    - open loop (`rate > 0`): send `s` (of `batch` events) is due at `start + s × batch / rate`,
//!      and producer `s mod producers` sends it. A producer that is behind sends at once, and
//!      latency is measured from the *intended* send time (coordinated-omission corrected); the
//!      time `append` itself took is reported separately as the service time;
//! 5. the log is dropped (flushing), then `Log::open` plus the lookup of partition 0 are timed, and
//!    the partition must end exactly at `events`.
//!
//! Invariants: parameters are validated before anything touches the disk, and every error names
//! the command-line flag at fault and its limit; memory is bounded by the payload pool plus fixed
//! size histograms, whatever `events` is; the temporary directory is removed unless `keep`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use driftless_core::TopicName;
use driftless_log::{
    Durability, Log, LogOptions, NewRecord, Partition, TopicConfig, RECORD_HEADER_BYTES,
};
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use crate::disk::{measure_sequential_write, measure_sync_latency, DiskReference, SyncLatency};
use crate::{BenchError, Histogram};

/// Default parent of the temporary data directory, relative to the working directory: the disk
/// users care about is the one they run from, and `/tmp` may be a different (or in-memory) one.
pub const DEFAULT_DIR: &str = "target/bench-tmp";
/// Chunk size of the disk reference: the default `batch_bytes_max`, the most one append writes.
/// Under load the log's group commit syncs a few MB at a time; a reference that synced every
/// 1 MiB would pay more fixed flush cost per byte than the log does and flatter the ratio.
pub const DISK_CHUNK_BYTES: usize = 8 << 20;
/// Most bytes the disk reference writes.
pub const DISK_REFERENCE_BYTES_MAX: u64 = 1 << 30;
/// Most `fdatasync`s of the disk latency probe.
pub const DISK_PROBE_SYNCS_MAX: u64 = 20_000;
/// Most bytes the disk latency probe writes.
pub const DISK_PROBE_BYTES_MAX: u64 = 256 << 20;
/// Longest the disk latency probe runs: long enough to catch the occasional multi-millisecond
/// `fdatasync` stall that dominates tail latency on virtual disks.
pub const DISK_PROBE_TIME_MAX: Duration = Duration::from_secs(1);
/// Most bytes one append (batch) may take on disk. Up to the log's default `batch_bytes_max`
/// (8 MiB) the default topic configuration is used; above it, the benchmark's topic raises
/// `batch_bytes_max` (and `unsynced_bytes_max` with it) up to this limit.
pub const BATCH_BYTES_LIMIT: usize = 64 << 20;
/// Most producer threads.
pub const PRODUCERS_MAX: usize = 1024;
/// Most events per run (keeps offsets and counters far from overflow).
pub const EVENTS_MAX: u64 = 1 << 40;
/// Slack after the producers are released before the open-loop schedule starts, so thread
/// wake-ups are not counted as latency.
const OPEN_LOOP_START_DELAY: Duration = Duration::from_millis(5);
/// Extra random bytes in the payload pool: records are windows into it at varying offsets.
const POOL_SLACK_BYTES: usize = 64 << 10;
/// The benchmark's topic.
const TOPIC: &str = "bench";

/// The log's durability mode as spelled on the command line: `always`, `never` or
/// `interval:MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BenchDurability(pub Durability);

/// Why a `--durability` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `always`, `never` or `interval:MS` with MS >= 1, got {0:?}")]
pub struct ParseDurabilityError(String);

impl FromStr for BenchDurability {
    type Err = ParseDurabilityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseDurabilityError(s.to_string());
        match s {
            "always" => Ok(Self(Durability::Always)),
            "never" => Ok(Self(Durability::Never)),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(bad)?;
                match ms.parse::<u64>() {
                    Ok(ms) if ms >= 1 => Ok(Self(Durability::IntervalMs(ms))),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl fmt::Display for BenchDurability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Durability::Always => f.write_str("always"),
            Durability::Never => f.write_str("never"),
            Durability::IntervalMs(ms) => write!(f, "interval:{ms}"),
        }
    }
}

/// Parameters of one log benchmark run. Field names match the command-line flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBenchParams {
    /// Total events to append, 1 to [`EVENTS_MAX`].
    pub events: u64,
    /// Payload bytes per event, up to the log's `record_bytes_max` (1 MiB).
    pub event_bytes: usize,
    /// Producer threads, 1 to [`PRODUCERS_MAX`].
    pub producers: usize,
    /// Events per append; the batch must fit [`BATCH_BYTES_LIMIT`] on disk.
    pub batch: usize,
    /// Offered load in events per second over all producers; 0 runs a closed loop.
    pub rate: u64,
    /// The topic's durability.
    pub durability: BenchDurability,
    /// Parent of the temporary data directory (created if missing).
    pub dir: PathBuf,
    /// Keep the data directory instead of removing it.
    pub keep: bool,
}

impl Default for LogBenchParams {
    fn default() -> Self {
        Self {
            events: 1_000_000,
            event_bytes: 100,
            producers: 8,
            batch: 1000,
            rate: 0,
            durability: BenchDurability::default(),
            dir: PathBuf::from(DEFAULT_DIR),
            keep: false,
        }
    }
}

impl LogBenchParams {
    /// Bytes one event takes on disk: payload plus record header.
    pub fn record_bytes(&self) -> u64 {
        (self.event_bytes + RECORD_HEADER_BYTES) as u64
    }

    /// Bytes the log will write: every record with its header.
    pub fn log_bytes(&self) -> u64 {
        self.events.saturating_mul(self.record_bytes())
    }

    /// Checks every parameter and returns the topic configuration the run will use.
    pub fn validate(&self) -> Result<TopicConfig, BenchError> {
        let bad = |msg: String| Err(BenchError::InvalidParams(msg));
        let defaults = TopicConfig::default();
        if self.events == 0 || self.events > EVENTS_MAX {
            return bad(format!("--events must be 1 to {EVENTS_MAX}, got {}", self.events));
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1, got 0".into());
        }
        if self.producers == 0 || self.producers > PRODUCERS_MAX {
            return bad(format!(
                "--producers must be 1 to {PRODUCERS_MAX}, got {}",
                self.producers
            ));
        }
        if self.event_bytes > defaults.record_bytes_max {
            return bad(format!(
                "--event-bytes {} exceeds the log's record_bytes_max of {} bytes",
                self.event_bytes, defaults.record_bytes_max
            ));
        }
        // A batch larger than the run is never sent: the one append holds every event.
        let batch = (self.batch as u64).min(self.events);
        let batch_bytes = batch.saturating_mul(self.record_bytes());
        if batch_bytes > BATCH_BYTES_LIMIT as u64 {
            return bad(format!(
                "--batch {} × (--event-bytes {} + {RECORD_HEADER_BYTES} header bytes) = {batch_bytes} \
                 bytes per append exceeds the benchmark's limit of {BATCH_BYTES_LIMIT} bytes (64 MiB); \
                 lower --batch or --event-bytes",
                self.batch, self.event_bytes
            ));
        }
        // `batch_bytes` <= 64 MiB here, so it fits a usize.
        let batch_bytes = batch_bytes as usize;
        let config = TopicConfig {
            durability: self.durability.0,
            batch_bytes_max: defaults.batch_bytes_max.max(batch_bytes),
            unsynced_bytes_max: defaults.unsynced_bytes_max.max(batch_bytes as u64),
            ..defaults
        };
        config.validate().map_err(BenchError::log("check the benchmark topic's configuration"))?;
        Ok(config)
    }
}

/// What one run measured. Serializes to the `--json` object; see the field docs for units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogBenchReport {
    /// Always `"log"`.
    pub bench: &'static str,
    /// Events appended.
    pub events: u64,
    /// Payload bytes per event.
    pub event_bytes: usize,
    /// Producer threads.
    pub producers: usize,
    /// Events per append.
    pub batch: usize,
    /// Offered load in events/s; 0 for the closed loop.
    pub rate: u64,
    /// Same as `rate`, under its explicit name.
    pub offered_events_per_sec: u64,
    /// `always`, `never` or `interval:MS`.
    pub durability: String,
    /// Whether an acknowledged append was durable (only `always`).
    pub durable: bool,
    /// Achieved events per second: events / `elapsed_s`.
    pub events_per_sec: f64,
    /// Record bytes (payload + header) written per second, in MB (10^6 bytes).
    pub mb_per_sec: f64,
    /// Median append latency in µs (open loop: from the intended send time).
    pub append_p50_us: u64,
    /// 99th percentile append latency in µs.
    pub append_p99_us: u64,
    /// 99.9th percentile append latency in µs.
    pub append_p999_us: u64,
    /// Largest append latency in µs.
    pub append_max_us: u64,
    /// Median time inside `append` in µs (equals `append_p50_us` in the closed loop).
    pub service_p50_us: u64,
    /// 99th percentile time inside `append` in µs.
    pub service_p99_us: u64,
    /// 99.9th percentile time inside `append` in µs.
    pub service_p999_us: u64,
    /// Largest time inside `append` in µs.
    pub service_max_us: u64,
    /// Appends that started more than 1 ms after their intended time (open loop only).
    pub late_sends: u64,
    /// Raw sequential write + fdatasync throughput of the same disk, in MB/s.
    pub disk_mb_per_sec: f64,
    /// Bytes per write + fdatasync of the disk reference.
    pub disk_chunk_bytes: usize,
    /// Bytes the disk reference wrote.
    pub disk_bytes: u64,
    /// `mb_per_sec / disk_mb_per_sec`.
    pub mb_per_sec_vs_disk: f64,
    /// Bytes per write of the disk latency probe (one batch, at most one chunk).
    pub disk_sync_bytes: usize,
    /// Write + fdatasync calls made by the disk latency probe.
    pub disk_syncs: u64,
    /// Median write + fdatasync time of the probe, in µs.
    pub disk_sync_p50_us: u64,
    /// 99th percentile write + fdatasync time of the probe, in µs.
    pub disk_sync_p99_us: u64,
    /// 99.9th percentile write + fdatasync time of the probe, in µs.
    pub disk_sync_p999_us: u64,
    /// Longest write + fdatasync of the probe, in µs.
    pub disk_sync_max_us: u64,
    /// Append calls.
    pub appends: u64,
    /// fdatasync calls on segment data during the run (partition stats).
    pub fsyncs: u64,
    /// Events per fdatasync; `null` when nothing was synced.
    pub events_per_fsync: Option<f64>,
    /// Record bytes per fdatasync (compare with `disk_chunk_bytes`: bigger groups amortize the
    /// fixed cost of a sync); `null` when nothing was synced.
    pub bytes_per_fsync: Option<f64>,
    /// Mean fdatasync time in µs; `null` when nothing was synced.
    pub fsync_avg_us: Option<f64>,
    /// Longest fdatasync in µs.
    pub fsync_max_us: u64,
    /// Share of the run's wall time spent inside fdatasync (at most one at a time).
    pub fsync_busy: f64,
    /// Time to reopen the log and look up the partition, in ms (page cache warm from the run).
    pub reopen_ms: f64,
    /// Size of the partition's segments after the run, in bytes.
    pub partition_bytes: u64,
    /// Segments in the partition after the run.
    pub segments: usize,
    /// Wall time of the log run (first send to last acknowledgement), in seconds.
    pub elapsed_s: f64,
    /// CPUs available to the process.
    pub cpus: usize,
    /// The data directory if it was kept, else `null`.
    pub kept_dir: Option<PathBuf>,
}

/// Runs the log benchmark. See the module documentation for what it does.
pub fn run_log_bench(params: &LogBenchParams) -> Result<LogBenchReport, BenchError> {
    let config = params.validate()?;
    std::fs::create_dir_all(&params.dir)
        .map_err(|e| BenchError::io("create benchmark directory", &params.dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("driftless-bench-log-")
        .tempdir_in(&params.dir)
        .map_err(|e| BenchError::io("create temporary directory in", &params.dir, e))?;
    tracing::info!(dir = %tmp.path().display(), "log benchmark data directory");

    let payload = Payload::generate(params);
    let records = payload.batches();

    let reference_bytes = params.log_bytes().min(DISK_REFERENCE_BYTES_MAX);
    tracing::info!(
        bytes = reference_bytes,
        chunk_bytes = DISK_CHUNK_BYTES,
        "measuring the disk reference: sequential write + fdatasync"
    );
    let disk = measure_sequential_write(tmp.path(), reference_bytes, DISK_CHUNK_BYTES)?;
    tracing::info!(mb_per_sec = format_args!("{:.1}", disk.mb_per_sec()), "disk reference done");
    let batch_bytes = (payload.batch as u64 * params.record_bytes()).min(DISK_CHUNK_BYTES as u64);
    let probe = measure_sync_latency(
        tmp.path(),
        batch_bytes as usize,
        DISK_PROBE_SYNCS_MAX,
        DISK_PROBE_BYTES_MAX,
        DISK_PROBE_TIME_MAX,
    )?;
    tracing::info!(
        write_bytes = probe.write_bytes,
        syncs = probe.latency.count(),
        p99_us = probe.latency.value_at_quantile(0.99),
        "disk latency probe done"
    );

    let data_dir = tmp.path().join("log");
    let topic_name = TopicName::new(TOPIC)?;
    let log = Log::open(options(&data_dir)).map_err(BenchError::log("open the log"))?;
    let topic = log
        .create_topic(&topic_name, config)
        .map_err(BenchError::log("create the benchmark topic"))?;
    let partition = topic.partition(0).map_err(BenchError::log("look up partition 0"))?;

    tracing::info!(events = params.events, producers = params.producers, batch = params.batch,
        rate = params.rate, durability = %params.durability, "running the log");
    let run = run_producers(params, partition, &records)?;
    let stats = partition.stats();
    tracing::info!(elapsed_s = format_args!("{:.3}", run.elapsed.as_secs_f64()), "log run done");

    drop(topic);
    drop(log);
    let started = Instant::now();
    let reopened = Log::open(options(&data_dir)).map_err(BenchError::log("reopen the log"))?;
    let topic = reopened.topic(&topic_name).ok_or_else(|| BenchError::Log {
        op: "reopen the benchmark topic",
        source: driftless_log::LogError::UnknownTopic(TOPIC.into()),
    })?;
    let end = topic.partition(0).map_err(BenchError::log("look up partition 0"))?.end_offset();
    let reopen = started.elapsed();
    drop(topic);
    drop(reopened);
    if end != params.events {
        return Err(BenchError::LostEvents { expected: params.events, found: end });
    }

    let kept_dir = if params.keep {
        Some(tmp.keep())
    } else {
        let path = tmp.path().to_path_buf();
        tmp.close().map_err(|e| BenchError::io("remove temporary directory", path, e))?;
        None
    };
    Ok(report(params, &disk, &probe, &run, &stats, reopen, kept_dir))
}

fn options(dir: &std::path::Path) -> LogOptions {
    // No retention or compaction passes in the middle of a measurement.
    LogOptions { maintenance_interval_ms: None, ..LogOptions::new(dir) }
}

fn report(
    params: &LogBenchParams,
    disk: &DiskReference,
    probe: &SyncLatency,
    run: &RunResult,
    stats: &driftless_log::PartitionStats,
    reopen: Duration,
    kept_dir: Option<PathBuf>,
) -> LogBenchReport {
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    let mb_per_sec = stats.bytes_appended as f64 / 1e6 / secs;
    let disk_mb_per_sec = disk.mb_per_sec();
    let q = |h: &Histogram| {
        [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max()]
    };
    let [append_p50_us, append_p99_us, append_p999_us, append_max_us] = q(&run.latency);
    let [service_p50_us, service_p99_us, service_p999_us, service_max_us] = q(&run.service);
    let [disk_sync_p50_us, disk_sync_p99_us, disk_sync_p999_us, disk_sync_max_us] =
        q(&probe.latency);
    let synced = |v: f64| (stats.syncs > 0).then_some(v);
    LogBenchReport {
        bench: "log",
        events: run.events,
        event_bytes: params.event_bytes,
        producers: params.producers,
        batch: params.batch,
        rate: params.rate,
        offered_events_per_sec: params.rate,
        durability: params.durability.to_string(),
        durable: params.durability.0 == Durability::Always,
        events_per_sec: run.events as f64 / secs,
        mb_per_sec,
        append_p50_us,
        append_p99_us,
        append_p999_us,
        append_max_us,
        service_p50_us,
        service_p99_us,
        service_p999_us,
        service_max_us,
        late_sends: run.late_sends,
        disk_mb_per_sec,
        disk_chunk_bytes: disk.chunk_bytes,
        disk_bytes: disk.bytes,
        mb_per_sec_vs_disk: mb_per_sec / disk_mb_per_sec.max(1e-9),
        disk_sync_bytes: probe.write_bytes,
        disk_syncs: probe.latency.count(),
        disk_sync_p50_us,
        disk_sync_p99_us,
        disk_sync_p999_us,
        disk_sync_max_us,
        appends: stats.appends,
        fsyncs: stats.syncs,
        events_per_fsync: synced(run.events as f64 / stats.syncs.max(1) as f64),
        bytes_per_fsync: synced(stats.bytes_appended as f64 / stats.syncs.max(1) as f64),
        fsync_avg_us: synced(stats.sync_micros_total as f64 / stats.syncs.max(1) as f64),
        fsync_max_us: stats.sync_micros_max,
        fsync_busy: stats.sync_micros_total as f64 / 1e6 / secs,
        reopen_ms: reopen.as_secs_f64() * 1e3,
        partition_bytes: stats.size_bytes,
        segments: stats.segments,
        elapsed_s: run.elapsed.as_secs_f64(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        kept_dir,
    }
}

/// Random payload bytes; each record is a window into them at its own offset.
struct Payload {
    pool: Vec<u8>,
    event_bytes: usize,
    batch: usize,
}

impl Payload {
    fn generate(params: &LogBenchParams) -> Self {
        let mut pool = vec![0u8; params.event_bytes + POOL_SLACK_BYTES];
        rand::rngs::SmallRng::seed_from_u64(0x5eed_1095).fill_bytes(&mut pool);
        let batch = usize::try_from(params.events).map_or(params.batch, |e| params.batch.min(e));
        Self { pool, event_bytes: params.event_bytes, batch }
    }

    /// A few distinct full batches (fewer when batches are huge, to bound memory); producers
    /// rotate through them, and a short last send uses a prefix.
    fn batches(&self) -> Vec<Vec<NewRecord<'_>>> {
        let variants = (1_000_000 / self.batch).clamp(1, 8);
        (0..variants)
            .map(|v| {
                (0..self.batch)
                    .map(|i| {
                        let at = (i * 4099 + v * 977) % POOL_SLACK_BYTES;
                        NewRecord::unkeyed(&self.pool[at..at + self.event_bytes])
                    })
                    .collect()
            })
            .collect()
    }
}

/// What the producers measured.
struct RunResult {
    events: u64,
    elapsed: Duration,
    latency: Histogram,
    service: Histogram,
    late_sends: u64,
}

/// What one producer measured.
struct ProducerResult {
    events: u64,
    last_done: Option<Instant>,
    latency: Histogram,
    service: Histogram,
    late_sends: u64,
}

impl ProducerResult {
    fn new() -> Self {
        Self {
            events: 0,
            last_done: None,
            latency: Histogram::new(),
            // Open loop only: in the closed loop the latency is the service time.
            service: Histogram::new(),
            late_sends: 0,
        }
    }
}

/// Lines the producers up so none starts before all are ready, then gives them a common start.
#[derive(Default)]
struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    ready: usize,
    /// `Some(Some(start))` to go, `Some(None)` to abort.
    start: Option<Option<Instant>>,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Producer side: reports ready and waits for the start, or `None` if the run was aborted.
    fn arrive(&self) -> Option<Instant> {
        let mut state = self.lock();
        state.ready += 1;
        self.changed.notify_all();
        loop {
            if let Some(start) = state.start {
                return start;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Coordinator side: waits for `producers` to be ready.
    fn wait_ready(&self, producers: usize) {
        let mut state = self.lock();
        while state.ready < producers {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Coordinator side: releases every producer with `start` (`None` aborts).
    fn release(&self, start: Option<Instant>) {
        self.lock().start = Some(start);
        self.changed.notify_all();
    }

    fn start(&self) -> Option<Instant> {
        self.lock().start.flatten()
    }
}

/// Shared by the producers of one run.
struct Shared<'a> {
    params: &'a LogBenchParams,
    partition: &'a Partition,
    batches: &'a [Vec<NewRecord<'a>>],
    /// Closed loop: events claimed so far.
    claimed: AtomicU64,
    /// Set when a producer fails, so the others stop early.
    stop: AtomicBool,
    gate: StartGate,
}

fn run_producers(
    params: &LogBenchParams,
    partition: &Partition,
    batches: &[Vec<NewRecord<'_>>],
) -> Result<RunResult, BenchError> {
    let shared = Shared {
        params,
        partition,
        batches,
        claimed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        gate: StartGate::default(),
    };
    let results: Vec<Result<ProducerResult, BenchError>> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(params.producers);
        let mut spawn_error = None;
        for id in 0..params.producers {
            let shared = &shared;
            let spawned = std::thread::Builder::new()
                .name(format!("bench-producer-{id}"))
                .spawn_scoped(scope, move || shared.produce(id));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    spawn_error = Some(BenchError::io("spawn producer thread", "", e));
                    break;
                }
            }
        }
        if spawn_error.is_some() {
            shared.gate.release(None);
        } else {
            // Everyone ready (threads scheduled, first batch chosen) → fix the start → release.
            shared.gate.wait_ready(handles.len());
            let delay = if params.rate > 0 { OPEN_LOOP_START_DELAY } else { Duration::ZERO };
            shared.gate.release(Some(Instant::now() + delay));
        }
        let mut results: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(id, h)| h.join().unwrap_or(Err(BenchError::ProducerPanicked(id))))
            .collect();
        if let Some(e) = spawn_error {
            results.push(Err(e));
        }
        results
    });
    let start = shared.gate.start();
    let mut run = RunResult {
        events: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(),
        service: Histogram::new(),
        late_sends: 0,
    };
    let mut last_done = None;
    for result in results {
        let r = result?;
        run.events += r.events;
        run.latency.merge(&r.latency);
        run.service.merge(if params.rate > 0 { &r.service } else { &r.latency });
        run.late_sends += r.late_sends;
        last_done = last_done.max(r.last_done);
    }
    if let (Some(start), Some(done)) = (start, last_done) {
        run.elapsed = done.saturating_duration_since(start);
    }
    Ok(run)
}

impl Shared<'_> {
    fn produce(&self, id: usize) -> Result<ProducerResult, BenchError> {
        let open_loop = self.params.rate > 0;
        let mut result = ProducerResult::new();
        let Some(start) = self.gate.arrive() else { return Ok(result) };
        let outcome = if open_loop {
            self.open_loop(id, start, &mut result)
        } else {
            self.closed_loop(id, &mut result)
        };
        if outcome.is_err() {
            self.stop.store(true, Ordering::Release);
        }
        outcome.map(|()| result)
    }

    fn records(&self, id: usize, k: usize, n: usize) -> &[NewRecord<'_>] {
        let batch = &self.batches[(id + k) % self.batches.len()];
        &batch[..n.min(batch.len())]
    }

    fn append(&self, records: &[NewRecord<'_>]) -> Result<(), BenchError> {
        self.partition.append(records).map(|_| ()).map_err(BenchError::log("append"))
    }

    fn closed_loop(&self, id: usize, result: &mut ProducerResult) -> Result<(), BenchError> {
        let (events, batch) = (self.params.events, self.params.batch as u64);
        for k in 0.. {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let claimed = self.claimed.fetch_add(batch, Ordering::Relaxed);
            if claimed >= events {
                break;
            }
            let n = batch.min(events - claimed) as usize;
            let records = self.records(id, k, n);
            let sent = Instant::now();
            self.append(records)?;
            let done = Instant::now();
            result.latency.record_duration(done - sent);
            result.events += n as u64;
            result.last_done = Some(done);
        }
        Ok(())
    }

    fn open_loop(
        &self,
        id: usize,
        start: Instant,
        result: &mut ProducerResult,
    ) -> Result<(), BenchError> {
        let p = self.params;
        let (batch, rate) = (p.batch as u64, u128::from(p.rate));
        let sends = p.events.div_ceil(batch);
        let mut send = id as u64;
        let mut k = 0;
        while send < sends {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let due_ns = u128::from(send) * u128::from(batch) * 1_000_000_000 / rate;
            let due = start + Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX));
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            let n = batch.min(p.events - send * batch) as usize;
            let records = self.records(id, k, n);
            let sent = Instant::now();
            if sent.saturating_duration_since(due) > Duration::from_millis(1) {
                result.late_sends += 1;
            }
            self.append(records)?;
            let done = Instant::now();
            result.latency.record_duration(done.saturating_duration_since(due));
            result.service.record_duration(done - sent);
            result.events += n as u64;
            result.last_done = Some(done);
            send += p.producers as u64;
            k += 1;
        }
        Ok(())
    }
}

impl fmt::Display for LogBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.rate > 0 {
            format!("open loop at {} events/s offered", self.rate)
        } else {
            "closed loop".to_string()
        };
        writeln!(
            f,
            "log benchmark: {} events x {} B, {} producers, batch {}, {mode}, durability {}{}",
            self.events,
            self.event_bytes,
            self.producers,
            self.batch,
            self.durability,
            if self.durable { "" } else { " (NOT durable when acknowledged)" },
        )?;
        writeln!(
            f,
            "  throughput      {:>12.0} events/s  {:>8.1} MB/s",
            self.events_per_sec, self.mb_per_sec
        )?;
        writeln!(
            f,
            "  disk reference  {:>12.1} MB/s ({} B chunks + fdatasync); log/disk = {:.2}",
            self.disk_mb_per_sec, self.disk_chunk_bytes, self.mb_per_sec_vs_disk
        )?;
        let latency = if self.rate > 0 { "latency (CO-corrected)" } else { "append latency" };
        writeln!(
            f,
            "  {latency:<22} p50 {} us  p99 {} us  p99.9 {} us  max {} us",
            self.append_p50_us, self.append_p99_us, self.append_p999_us, self.append_max_us
        )?;
        if self.rate > 0 {
            writeln!(
                f,
                "  {:<22} p50 {} us  p99 {} us  p99.9 {} us  max {} us; {} late sends",
                "time inside append",
                self.service_p50_us,
                self.service_p99_us,
                self.service_p999_us,
                self.service_max_us,
                self.late_sends
            )?;
        }
        writeln!(
            f,
            "  {:<22} p50 {} us  p99 {} us  p99.9 {} us  max {} us ({} B writes + fdatasync)",
            "disk sync latency",
            self.disk_sync_p50_us,
            self.disk_sync_p99_us,
            self.disk_sync_p999_us,
            self.disk_sync_max_us,
            self.disk_sync_bytes
        )?;
        let per = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        writeln!(
            f,
            "  fdatasync       {} calls, {} events / {} B each, avg {} us, max {} us, busy {:.0}%",
            self.fsyncs,
            per(self.events_per_fsync),
            per(self.bytes_per_fsync),
            per(self.fsync_avg_us),
            self.fsync_max_us,
            self.fsync_busy * 100.0
        )?;
        writeln!(
            f,
            "  reopen          {:.1} ms for {} bytes in {} segments",
            self.reopen_ms, self.partition_bytes, self.segments
        )?;
        write!(f, "  elapsed         {:.3} s on {} CPUs", self.elapsed_s, self.cpus)?;
        if let Some(dir) = &self.kept_dir {
            write!(f, "\n  data kept in    {}", dir.display())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(dir: &std::path::Path) -> LogBenchParams {
        LogBenchParams {
            events: 500,
            event_bytes: 32,
            producers: 3,
            batch: 7,
            dir: dir.to_path_buf(),
            ..LogBenchParams::default()
        }
    }

    #[test]
    fn durability_round_trips_through_its_command_line_spelling() {
        for s in ["always", "never", "interval:25"] {
            assert_eq!(s.parse::<BenchDurability>().unwrap().to_string(), s);
        }
        for s in ["", "sometimes", "interval:", "interval:0", "interval:x"] {
            assert!(s.parse::<BenchDurability>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn invalid_parameters_name_their_flag() {
        let base = LogBenchParams::default();
        let cases = [
            (LogBenchParams { events: 0, ..base.clone() }, "--events"),
            (LogBenchParams { batch: 0, ..base.clone() }, "--batch"),
            (LogBenchParams { producers: 0, ..base.clone() }, "--producers"),
            (LogBenchParams { event_bytes: (1 << 20) + 1, ..base.clone() }, "--event-bytes"),
            (LogBenchParams { event_bytes: 1 << 20, batch: 100, ..base.clone() }, "--batch"),
        ];
        for (p, flag) in cases {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err} should name {flag}");
        }
    }

    #[test]
    fn large_batches_raise_the_topic_batch_limit() {
        let p = LogBenchParams { event_bytes: 1 << 20, batch: 20, ..LogBenchParams::default() };
        let config = p.validate().unwrap();
        assert_eq!(config.batch_bytes_max, 20 * ((1 << 20) + RECORD_HEADER_BYTES));
        assert!(config.unsynced_bytes_max >= config.batch_bytes_max as u64);
        let small = LogBenchParams::default().validate().unwrap();
        assert_eq!(small, TopicConfig::default());
    }

    #[test]
    fn closed_loop_appends_every_event_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_log_bench(&params(dir.path())).unwrap();
        assert_eq!(report.events, 500);
        assert_eq!(report.appends, 500u64.div_ceil(7));
        assert_eq!(report.partition_bytes, 500 * (32 + RECORD_HEADER_BYTES as u64));
        assert!(report.durable && report.fsyncs > 0);
        assert_eq!(report.kept_dir, None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn open_loop_appends_every_event_and_keeps_the_directory_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = LogBenchParams {
            rate: 100_000,
            keep: true,
            durability: "never".parse().unwrap(),
            ..params(dir.path())
        };
        let report = run_log_bench(&p).unwrap();
        assert_eq!(report.events, 500);
        assert!(!report.durable);
        let kept = report.kept_dir.unwrap();
        assert!(kept.starts_with(dir.path()) && kept.join("log").is_dir());
    }
}
