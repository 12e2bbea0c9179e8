//! The server's memory of its own figures: a sampler task reads, once a second, each topic's
//! produce rate, each group's lag and dead letters, and each sink's applied rate, and keeps the
//! last [`HISTORY_SECONDS_MAX`] samples in rings, served at `GET /v1/history?seconds=N`. The
//! dashboard draws its plots from it, so a page opened after a burst shows the burst.
//!
//! Invariants:
//! - memory is bounded whatever the number of topics, groups or sinks: at most
//!   [`HISTORY_SECONDS_MAX`] samples, and per kind at most [`HISTORY_SERIES_MAX`] named series
//!   plus one, [`OTHER`], which sums every name that found no room (the answer says how many
//!   names were merged into it, so the merge is never silent);
//! - every series has exactly one value per sample time (`null` where it has none: the name did
//!   not exist yet, or no rate could be computed), so the arrays line up with `times_ms`;
//! - a rate is the change of a counter between two samples divided by the time between them,
//!   so the area under a rate series is the number of events; a topic first seen after the
//!   sampler started counts all its events as new (it was created since the previous sample),
//!   while topics present at the first sample only set the baseline (their events are older:
//!   the first sample has lags and dead letters but no rates);
//!   a counter that went down (a topic deleted and created again, a restarted sink) counts
//!   from zero;
//! - time comes from the [`Clock`]; the sampler ticks on tokio's timer and stops at shutdown;
//! - the history is in memory only: after a restart it starts again (the answer's
//!   `started_ms` says when), and [`crate::router`] without [`crate::serve`] runs no sampler.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use driftless_broker::Broker;
use driftless_core::Clock;
use driftless_sink::Sinks;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::extract::ApiQuery;
use crate::problem::Problem;
use crate::AppState;

/// Samples kept: an hour at one a second.
pub const HISTORY_SECONDS_MAX: usize = 3_600;
/// Named series kept per kind (topics, groups, sinks); further names are summed into [`OTHER`].
pub const HISTORY_SERIES_MAX: usize = 32;
/// Time between two samples.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;
/// Seconds `GET /v1/history` returns without `seconds`.
pub const HISTORY_SECONDS_DEFAULT: usize = 300;
/// The series that sums every name beyond [`HISTORY_SERIES_MAX`]; parentheses are in no valid
/// topic, group or sink name, so it cannot collide with one.
pub const OTHER: &str = "(other)";

/// What a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Events appended per second, per topic.
    ProduceRate,
    /// Events not yet finished, per group.
    LagEvents,
    /// Dead letters in the queue, per group.
    DeadLetters,
    /// Events applied per second, per sink.
    AppliedRate,
}

impl Kind {
    const ALL: [Kind; 4] =
        [Kind::ProduceRate, Kind::LagEvents, Kind::DeadLetters, Kind::AppliedRate];

    /// The field of the answer.
    fn field(self) -> &'static str {
        match self {
            Kind::ProduceRate => "produce_rate",
            Kind::LagEvents => "lag_events",
            Kind::DeadLetters => "dead_letters",
            Kind::AppliedRate => "applied_rate",
        }
    }
}

/// One series: a value per sample time (NaN = none), and the sample number it last had one.
#[derive(Debug)]
struct Series {
    values: VecDeque<f64>,
    last_sample: u64,
}

/// The series of one kind.
#[derive(Debug, Default)]
struct Family {
    series: BTreeMap<String, Series>,
    /// Names merged into [`OTHER`] at the latest sample.
    merged: usize,
}

/// The rings. Every series has as many values as `times_ms`.
#[derive(Debug)]
pub(crate) struct History {
    started_ms: i64,
    times_ms: VecDeque<i64>,
    /// Samples taken since start.
    samples: u64,
    families: [Family; 4],
    seconds_max: usize,
    series_max: usize,
}

/// One sample: per kind, the value of each name.
pub(crate) type Sample = [Vec<(String, f64)>; 4];

impl History {
    /// Empty, with the crate's bounds.
    pub fn new(started_ms: i64) -> Self {
        Self::with_bounds(started_ms, HISTORY_SECONDS_MAX, HISTORY_SERIES_MAX)
    }

    fn with_bounds(started_ms: i64, seconds_max: usize, series_max: usize) -> Self {
        Self {
            started_ms,
            times_ms: VecDeque::with_capacity(seconds_max),
            samples: 0,
            families: Default::default(),
            seconds_max: seconds_max.max(1),
            series_max,
        }
    }

    /// Adds one sample taken at `t_ms`; drops the oldest beyond the bound.
    pub fn push(&mut self, t_ms: i64, sample: Sample) {
        self.samples += 1;
        if self.times_ms.len() >= self.seconds_max {
            self.times_ms.pop_front();
        }
        self.times_ms.push_back(t_ms);
        let len = self.times_ms.len();
        let (samples, window, series_max) =
            (self.samples, self.seconds_max as u64, self.series_max);
        for (family, values) in self.families.iter_mut().zip(sample) {
            // Names with a slot keep it; new names take a free one; the rest go to OTHER.
            let mut now: HashMap<String, f64> = HashMap::new();
            family.merged = 0;
            for (name, v) in values {
                let named = family.series.len() - usize::from(family.series.contains_key(OTHER));
                let known = family.series.contains_key(&name) || now.contains_key(&name);
                let name = if known || named < series_max {
                    if !family.series.contains_key(&name) {
                        // Created now: no values before this sample.
                        let mut pad = VecDeque::with_capacity(len);
                        pad.resize(len - 1, f64::NAN);
                        family.series.insert(name.clone(), Series { values: pad, last_sample: 0 });
                    }
                    name
                } else {
                    family.merged += 1;
                    OTHER.to_string()
                };
                if name == OTHER && !family.series.contains_key(OTHER) {
                    let mut pad = VecDeque::with_capacity(len);
                    pad.resize(len - 1, f64::NAN);
                    family.series.insert(OTHER.to_string(), Series { values: pad, last_sample: 0 });
                }
                *now.entry(name).or_insert(0.0) += v;
            }
            family.series.retain(|name, s| {
                match now.get(name) {
                    Some(&v) => {
                        s.values.push_back(v);
                        s.last_sample = samples;
                    }
                    None => s.values.push_back(f64::NAN),
                }
                while s.values.len() > len {
                    s.values.pop_front();
                }
                // A name gone for the whole window has nothing left to show: its slot is free.
                samples - s.last_sample < window
            });
        }
    }

    /// The last `seconds` samples as JSON.
    pub fn answer(&self, seconds: usize) -> Value {
        let skip = self.times_ms.len().saturating_sub(seconds);
        let mut body = Map::new();
        body.insert("started_ms".into(), self.started_ms.into());
        body.insert("interval_ms".into(), SAMPLE_INTERVAL_MS.into());
        body.insert("seconds_max".into(), self.seconds_max.into());
        body.insert("series_max".into(), self.series_max.into());
        let times: Vec<i64> = self.times_ms.iter().skip(skip).copied().collect();
        body.insert("times_ms".into(), times.into());
        for (kind, family) in Kind::ALL.iter().zip(&self.families) {
            let mut series = Map::new();
            for (name, s) in &family.series {
                let values: Vec<Value> = s
                    .values
                    .iter()
                    .skip(skip)
                    .map(|v| if v.is_finite() { round(*v).into() } else { Value::Null })
                    .collect();
                // Nothing in the asked window: not worth sending.
                if values.iter().any(|v| !v.is_null()) {
                    series.insert(name.clone(), Value::Array(values));
                }
            }
            let mut f = Map::new();
            f.insert("series".into(), Value::Object(series));
            f.insert("merged_into_other".into(), family.merged.into());
            body.insert(kind.field().into(), Value::Object(f));
        }
        Value::Object(body)
    }

    /// Values held, over every series (for the bound's test).
    #[cfg(test)]
    fn values_held(&self) -> usize {
        self.families.iter().flat_map(|f| f.series.values()).map(|s| s.values.len()).sum()
    }
}

/// Three decimals are plenty for a plot, and keep the answer short.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The counters the rates are computed from, as of the previous sample.
#[derive(Debug, Default)]
struct Counters {
    at_ms: Option<i64>,
    /// Topic → summed end offsets.
    topic_ends: HashMap<String, u64>,
    /// Sink → events applied since it started.
    sink_applied: HashMap<String, u64>,
}

/// Change of a counter per second; a counter that went down counts from zero.
fn rate(before: Option<u64>, now: u64, elapsed_ms: i64) -> f64 {
    let delta = match before {
        Some(b) if now >= b => now - b,
        _ => now,
    };
    delta as f64 * 1000.0 / elapsed_ms as f64
}

/// Reads the broker and the sinks once (blocking: it runs on the blocking pool).
fn take(broker: &Broker, sinks: &Sinks, counters: &mut Counters, t_ms: i64) -> Option<Sample> {
    let elapsed_ms = counters.at_ms.map(|at| t_ms - at).filter(|&d| d > 0);
    let mut sample: Sample = Default::default();
    let mut ends = HashMap::new();
    for topic in broker.list_topics() {
        let end: u64 = topic.partitions.iter().map(|p| p.end_offset).sum();
        if let Some(elapsed) = elapsed_ms {
            let before = counters.topic_ends.get(&topic.name).copied();
            sample[0].push((topic.name.clone(), rate(before, end, elapsed)));
        }
        ends.insert(topic.name, end);
    }
    for group in broker.list_groups() {
        // Counts only: reads no record (the lag's age is not plotted).
        if let Ok(d) = broker.describe_group_counts(&group) {
            let lag: u64 = d.partitions.iter().map(|p| p.lag_events).sum();
            sample[1].push((group.clone(), lag as f64));
            sample[2].push((group, d.dead_letters as f64));
        }
    }
    let mut applied = HashMap::new();
    for s in sinks.statuses() {
        let total = s.events_applied_total.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(elapsed) = elapsed_ms {
            // A sink exists from the start with its counter at 0: no baseline needed.
            let before = counters.sink_applied.get(&s.name).copied().or(Some(0));
            sample[3].push((s.name.clone(), rate(before, total, elapsed)));
        }
        applied.insert(s.name.clone(), total);
    }
    if counters.at_ms.is_some() && elapsed_ms.is_none() {
        // The clock went backwards: keep the old baseline, skip this sample.
        return None;
    }
    counters.at_ms = Some(t_ms);
    counters.sink_applied = applied;
    // Topics first seen after the first sample were created since the previous one: their
    // baseline is 0, which `rate` already used (no entry before). The first sample has lags but
    // no rates: it only sets the baseline.
    counters.topic_ends = ends;
    Some(sample)
}

/// Samples every [`SAMPLE_INTERVAL_MS`] until shutdown.
pub(crate) async fn run(
    broker: Arc<Broker>,
    sinks: Arc<Sinks>,
    history: Arc<Mutex<History>>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    let counters = Arc::new(Mutex::new(Counters::default()));
    let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let (b, s, c, h, clk) = (
            Arc::clone(&broker),
            Arc::clone(&sinks),
            Arc::clone(&counters),
            Arc::clone(&history),
            Arc::clone(&clock),
        );
        let done = tokio::task::spawn_blocking(move || {
            let t_ms = clk.now_ms();
            let mut counters = c.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(sample) = take(&b, &s, &mut counters, t_ms) {
                h.lock().unwrap_or_else(|e| e.into_inner()).push(t_ms, sample);
            }
        })
        .await;
        if let Err(e) = done {
            tracing::warn!("the history sampler's read of the broker did not complete: {e}");
        }
    }
}

/// Query of `GET /v1/history`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The last this many seconds (default 300, at most 3600).
    #[serde(default = "default_seconds")]
    pub seconds: usize,
}

fn default_seconds() -> usize {
    HISTORY_SECONDS_DEFAULT
}

/// `GET /v1/history?seconds=N`: the last `N` one-second samples of every series.
pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, Problem> {
    if q.seconds == 0 || q.seconds > HISTORY_SECONDS_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query string",
            format!(
                "seconds is {}; it must be between 1 and {HISTORY_SECONDS_MAX} (the server keeps \
                 one hour of samples)",
                q.seconds
            ),
        )
        .with_field("seconds"));
    }
    let answer = state.history.lock().unwrap_or_else(|e| e.into_inner()).answer(q.seconds);
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(topics: usize, v: f64) -> Sample {
        let names = (0..topics).map(|i| (format!("topic-{i:05}"), v)).collect();
        [names, Vec::new(), Vec::new(), Vec::new()]
    }

    #[test]
    fn memory_stays_bounded_whatever_the_number_of_topics() {
        let mut h = History::new(0);
        for t in 0..(HISTORY_SECONDS_MAX as i64 + 500) {
            h.push(t * 1000, sample(1_000, 1.0));
        }
        let bound = HISTORY_SECONDS_MAX * (HISTORY_SERIES_MAX + 1);
        assert_eq!(h.times_ms.len(), HISTORY_SECONDS_MAX);
        assert!(h.values_held() <= bound, "{} values held", h.values_held());
        let answer = h.answer(HISTORY_SECONDS_MAX);
        let series = answer["produce_rate"]["series"].as_object().unwrap();
        assert_eq!(series.len(), HISTORY_SERIES_MAX + 1);
        // Nothing is lost: the merged names are summed, and counted.
        let other = series[OTHER].as_array().unwrap();
        assert_eq!(other.last().unwrap(), &Value::from(1_000.0 - HISTORY_SERIES_MAX as f64));
        assert_eq!(answer["produce_rate"]["merged_into_other"], 1_000 - HISTORY_SERIES_MAX);
    }

    #[test]
    fn a_name_gone_for_the_whole_window_frees_its_slot() {
        let mut h = History::with_bounds(0, 3, 1);
        h.push(0, sample(1, 5.0));
        // `b` waits in OTHER while the old name holds the only slot, then takes it.
        for t in 1..5 {
            h.push(t, [vec![("b".into(), 2.0)], vec![], vec![], vec![]]);
        }
        let answer = h.answer(3);
        let series = answer["produce_rate"]["series"].as_object().unwrap();
        assert!(series.contains_key("b"), "{answer}");
        assert!(!series.contains_key("topic-00000"), "{answer}");
    }

    #[test]
    fn series_line_up_with_the_sample_times() {
        let mut h = History::with_bounds(0, 4, 8);
        h.push(1_000, sample(1, 1.0));
        h.push(2_000, sample(2, 2.0));
        let a = h.answer(4);
        assert_eq!(a["times_ms"], serde_json::json!([1_000, 2_000]));
        assert_eq!(a["produce_rate"]["series"]["topic-00001"], serde_json::json!([null, 2.0]));
        assert_eq!(a["produce_rate"]["series"]["topic-00000"], serde_json::json!([1.0, 2.0]));
    }

    #[test]
    fn a_rate_integrates_to_the_events_and_a_reset_counts_from_zero() {
        assert_eq!(rate(Some(10), 30, 2_000), 10.0);
        assert_eq!(rate(Some(30), 5, 1_000), 5.0);
        assert_eq!(rate(None, 7, 500), 14.0);
    }
}
