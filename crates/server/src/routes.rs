//! Request handlers of the JSON API (all but streaming, which is in `stream.rs`).
//!
//! Invariants: every broker call goes through [`blocking`], which runs it on the blocking pool
//! and turns its error into a problem; every handler reads the request body to its end, even
//! one it ignores (`_ignored: Body`): hyper closes a keep-alive connection whose request body
//! was left unread when the answer went out, and a client reusing it sees "peer disconnected";
//! a long-poll creates its broker listener before each fetch, so activity between the fetch and
//! the wait is never missed, and it waits at most `min(wait_ms, fetch_wait_ms_max)` in total;
//! every number from a query string is range-checked (400 naming it) before any arithmetic;
//! every administrative handler (see `audit.rs`) records its outcome in the audit trail after
//! acting, through `audit::after`, and answers exactly as it would without it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use driftless_broker::{
    Broker, DeadLetter, GroupDescription, Membership, Produced, SeekTarget, TopicDescription,
    TopicSpec,
};
use driftless_connect::runtime::{SourceReport, UnknownSource};
use driftless_reconcile::runtime::{ReconcileReport, RunNowError};
use driftless_reconcile::{ReconcileError, RunReport};
use driftless_sink::runtime::{RebuildRefused, SinkReport, UnknownSink};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::audit::{self, Action};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Body};
use crate::peer::Principal;
use crate::problem::Problem;
use crate::AppState;

type Shared = State<Arc<AppState>>;
/// The principal a request acts as (see `peer.rs`).
type Actor = Extension<Principal>;
type ApiResult<T> = Result<T, Problem>;

/// Runs a broker call on the blocking pool.
pub(crate) async fn blocking<T, F>(state: &AppState, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Broker) -> driftless_broker::Result<T> + Send + 'static,
{
    let broker = Arc::clone(&state.broker);
    match tokio::task::spawn_blocking(move || f(&broker)).await {
        Ok(result) => result.map_err(Problem::from),
        Err(e) => Err(Problem::internal(format!("the broker call did not complete: {e}"))),
    }
}

/// Milliseconds since the Unix epoch, the broker's clock domain (the project's one clock).
pub(crate) fn now_ms() -> i64 {
    driftless_core::Clock::now_ms(&driftless_core::SystemClock)
}

/// The instant at which the broker's epoch-ms deadline `due_ms` has passed (plus 1 ms so a
/// wake-up never lands just before it).
/// A deadline further than [`WAKE_MS_MAX`] away is treated as that far: waits are re-checked,
/// and an instant that far out could overflow the clock.
pub(crate) fn instant_for(due_ms: i64) -> Instant {
    let delta = u64::try_from(due_ms.saturating_sub(now_ms())).unwrap_or(0);
    after(Duration::from_millis(delta.min(WAKE_MS_MAX).saturating_add(1)))
}

/// `Instant::now() + d`, saturating at a day from now instead of overflowing.
pub(crate) fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or(now + Duration::from_secs(86_400))
}

/// The furthest a computed wake-up may lie ahead (an hour); the waiter re-checks then.
pub(crate) const WAKE_MS_MAX: u64 = 3_600_000;
/// Most deliveries one fetch may ask for (the broker also caps it by the member's in-flight
/// room).
pub const FETCH_EVENTS_MAX: usize = 100_000;

// ---- operations ----------------------------------------------------------------------------

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: the broker is open, no partition refuses writes, and the server is not
/// shutting down. A poisoned partition (a failed write or fsync; internal topics included) makes
/// it not ready until a restart: a poisoned `__offsets` fails every group's acknowledgements.
pub async fn readyz(State(state): Shared) -> Response {
    if state.shutting_down() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "Shutting down",
            "the server is shutting down and accepts no new work",
        )
        .into_response();
    }
    // Reads one flag per partition: cheap enough to run on the async thread.
    let poisoned = state.broker.poisoned_partitions();
    if poisoned.is_empty() {
        return "ready".into_response();
    }
    let names: Vec<String> = poisoned
        .iter()
        .take(POISONED_NAMED_MAX)
        .map(|p| format!("{}/{} ({})", p.topic, p.partition, p.cause))
        .collect();
    let more = poisoned.len().saturating_sub(POISONED_NAMED_MAX);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let mut problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "partition-poisoned",
        "Partition refuses writes",
        format!(
            "{} partition(s) refuse writes after a failed write or fsync: {}{more}. Check the \
             disk (space, errors), then restart Driftless: recovery verifies the log and the \
             partitions accept writes again",
            poisoned.len(),
            names.join("; ")
        ),
    );
    if let [only] = &poisoned[..] {
        problem = problem.with_topic(&only.topic);
    }
    problem.into_response()
}

/// Poisoned partitions named in a `/readyz` answer (the count covers the rest).
const POISONED_NAMED_MAX: usize = 20;

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): Shared) -> ApiResult<Response> {
    let (sources, sinks) = (Arc::clone(&state.sources), Arc::clone(&state.sinks));
    let reconcilers = Arc::clone(&state.reconcilers);
    let series_max = state.metrics_partition_series_max;
    let mut text = blocking(&state, move |b| {
        Ok(crate::metrics::render(b, &sources, &sinks, &reconcilers, series_max))
    })
    .await?;
    crate::metrics::render_auth_denied(&mut text, &state.auth.denied().snapshot());
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// `GET /v1/openapi.json`.
pub async fn openapi_doc() -> Json<Value> {
    Json(crate::openapi::openapi())
}

/// Any unknown route.
pub async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(
        "no-such-route",
        "No such route",
        format!("no route for {}; see /v1/openapi.json", uri.path()),
    )
}

/// A known route with the wrong method.
pub async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} does not support this method; see /v1/openapi.json", uri.path()),
    )
}

// ---- topics --------------------------------------------------------------------------------

/// `POST /v1/topics` with `{"name": "...", ...TopicSpec}` (`owner` among the settings: the
/// principal that alone may produce to it once authentication is on). Audited as
/// `topic.create` once the body names the topic.
pub async fn create_topic(
    State(state): Shared,
    Extension(principal): Actor,
    access: crate::auth::Access,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let Value::Object(mut fields) = body else {
        return Err(Problem::bad_request("the body must be a JSON object with a \"name\""));
    };
    let name = match fields.remove("name") {
        Some(Value::String(n)) => n,
        Some(_) => return Err(Problem::bad_request("\"name\" must be a string").with_field("name")),
        None => return Err(Problem::bad_request("\"name\" is required").with_field("name")),
    };
    // The policy layer cannot see the name (it is in the body): checked here.
    access.require(driftless_auth::Operation::Admin, driftless_auth::Kind::Topic, &name)?;
    let resource = format!("topic/{name}");
    let result = async {
        let spec: TopicSpec = serde_json::from_value(Value::Object(fields))
            .map_err(|e| Problem::invalid_body("topic settings", &e))?;
        let location = format!("/v1/topics/{name}");
        let created = blocking(&state, move |b| b.create_topic(&name, spec)).await?;
        Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
    }
    .await;
    audit::after(&state, &principal, Action::TopicCreate, &resource, StatusCode::CREATED, result)
        .await
}

/// `GET /v1/topics`.
pub async fn list_topics(State(state): Shared) -> ApiResult<Json<Vec<TopicDescription>>> {
    blocking(&state, |b| Ok(b.list_topics())).await.map(Json)
}

/// `GET /v1/topics/{topic}`.
pub async fn describe_topic(
    State(state): Shared,
    ApiPath(topic): ApiPath<String>,
) -> ApiResult<Json<TopicDescription>> {
    blocking(&state, move |b| b.describe_topic(&topic)).await.map(Json)
}

/// Query of `DELETE /v1/topics/{topic}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTopicQuery {
    /// Delete even when configured sources, sinks or reconciliations use the topic.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /v1/topics/{topic}[?force=true]` (audited as `topic.delete`, refusals included). A
/// topic that configured sources, sinks or reconciliations use is refused with 409
/// `topic-in-use` naming them, unless `force=true`: a sink would go on reading nothing and a
/// source would recreate the topic, empty, at its next event.
pub async fn delete_topic(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(topic): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteTopicQuery>,
) -> ApiResult<StatusCode> {
    let resource = format!("topic/{topic}");
    let users = state.topic_users.of(&topic);
    let result = if users.is_empty() || query.force {
        blocking(&state, move |b| b.delete_topic(&topic)).await
    } else {
        Err(topic_in_use(&topic, &users))
    };
    let result = result.map(|()| StatusCode::NO_CONTENT);
    audit::after(&state, &principal, Action::TopicDelete, &resource, StatusCode::NO_CONTENT, result)
        .await
}

/// The refusal to delete `topic`, which `users` (`(kind/name, verb)`) use.
fn topic_in_use(topic: &str, users: &[(&str, &str)]) -> Problem {
    let named: Vec<String> = users.iter().map(|(who, verb)| format!("{who} {verb} it")).collect();
    let mut problem = Problem::new(
        StatusCode::CONFLICT,
        "topic-in-use",
        "Topic in use",
        format!(
            "topic `{topic}` is in use by the server's configuration: {}. Deleting it loses its \
             events: a sink reading it waits for events that never come, a source writing it \
             creates it again, empty. Remove them from the configuration first, or delete anyway \
             with ?force=true (`driftless topic delete --force`)",
            named.join(", ")
        ),
    )
    .with_topic(topic);
    problem.at.used_by = Some(users.iter().map(|(who, _)| (*who).to_string()).collect());
    problem
}

/// The answer to a produce request.
#[derive(Debug, Serialize)]
pub struct ProduceResponse {
    /// One result per event, in request order.
    pub results: Vec<Produced>,
}

/// `POST /v1/topics/{topic}/events`: CloudEvents in structured, batch or binary mode. With
/// authentication on, an owned topic takes events only from its owner: anyone else gets 403
/// `not-topic-owner`, whatever the mode, and nothing is appended. The owner is checked in the
/// same blocking call as the append (no extra thread hop on the produce path).
pub async fn produce(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(topic): ApiPath<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<Json<ProduceResponse>> {
    let events_max = state.broker.config().produce_events_max;
    let events = crate::cloudevents::parse_request(&headers, &body, events_max)?;
    drop(body);
    // With authentication off every request is `anonymous`: ownership cannot be enforced.
    let actor = state.auth_enabled.then(|| Arc::clone(&principal.name));
    let name = topic.clone();
    let produced = blocking(&state, move |b| {
        if let Some(actor) = actor {
            if let Some(owner) = b.topic_owner(&name)?.filter(|o| **o != *actor) {
                return Ok(Err((owner, actor)));
            }
        }
        b.produce_raw(&name, events).map(Ok)
    })
    .await?;
    match produced {
        Ok(results) => Ok(Json(ProduceResponse { results })),
        Err((owner, actor)) => Err(not_topic_owner(&topic, &owner, &actor)),
    }
}

/// The refusal of a produce to `topic`, owned by `owner`, by another principal, `actor`.
fn not_topic_owner(topic: &str, owner: &str, actor: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "not-topic-owner",
        "Not the topic's owner",
        format!(
            "topic `{topic}` is owned by `{owner}`, and only its owner may produce to it; \
             `{actor}` may read it but not write it (copy data freely, copy authority never)"
        ),
    )
    .with_topic(topic)
}

// ---- groups --------------------------------------------------------------------------------

/// Body of `POST /v1/groups/{group}/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Overrides the broker's `session_timeout_ms` for this member.
    #[serde(default)]
    pub session_timeout_ms: Option<u64>,
}

/// `GET /v1/groups`.
pub async fn list_groups(State(state): Shared) -> ApiResult<Json<Vec<String>>> {
    blocking(&state, |b| Ok(b.list_groups())).await.map(Json)
}

/// `GET /v1/groups/{group}`.
pub async fn describe_group(
    State(state): Shared,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<Json<GroupDescription>> {
    blocking(&state, move |b| b.describe_group(&group)).await.map(Json)
}

/// `DELETE /v1/groups/{group}`: a group without members, with its offsets and dead letters
/// (audited as `group.delete`).
pub async fn delete_group(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let resource = format!("group/{group}");
    let result = blocking(&state, move |b| b.delete_group(&group)).await;
    let result = result.map(|()| StatusCode::NO_CONTENT);
    audit::after(&state, &principal, Action::GroupDelete, &resource, StatusCode::NO_CONTENT, result)
        .await
}

/// `POST /v1/groups/{group}/members`.
pub async fn join(
    State(state): Shared,
    access: crate::auth::Access,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> ApiResult<(StatusCode, Json<Membership>)> {
    // Joining consumes every topic named in the body: each needs `consume` (the policy layer
    // checked the group).
    for topic in &body.topics {
        access.require(driftless_auth::Operation::Consume, driftless_auth::Kind::Topic, topic)?;
    }
    let m =
        blocking(&state, move |b| b.join(&group, &body.topics, body.session_timeout_ms)).await?;
    Ok((StatusCode::CREATED, Json(m)))
}

/// `DELETE /v1/groups/{group}/members/{member}`.
pub async fn leave(
    State(state): Shared,
    ApiPath((group, member)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(&state, move |b| b.leave(&group, &member)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/groups/{group}/members/{member}/heartbeat`.
pub async fn heartbeat(
    State(state): Shared,
    ApiPath((group, member)): ApiPath<(String, String)>,
    _ignored: Body,
) -> ApiResult<Json<Membership>> {
    blocking(&state, move |b| b.heartbeat(&group, &member)).await.map(Json)
}

/// Query of `GET …/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchQuery {
    /// Most deliveries to return (default 100).
    #[serde(default = "default_max")]
    pub max: usize,
    /// How long to wait for a delivery when none is ready (default 0: answer at once).
    #[serde(default)]
    pub wait_ms: u64,
}

fn default_max() -> usize {
    100
}

/// `GET /v1/groups/{group}/members/{member}/events?max=&wait_ms=`: long-poll fetch.
pub async fn fetch(
    State(state): Shared,
    ApiPath((group, member)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<FetchQuery>,
) -> ApiResult<Response> {
    if q.max == 0 || q.max > FETCH_EVENTS_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query string",
            format!("max is {}; it must be between 1 and {FETCH_EVENTS_MAX}", q.max),
        )
        .with_field("max"));
    }
    if q.wait_ms > crate::config::SERVER_MS_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query string",
            format!(
                "wait_ms is {}; at most {} (one day) is accepted, and the server waits at most \
                 fetch_wait_ms_max = {} anyway",
                q.wait_ms,
                crate::config::SERVER_MS_MAX,
                state.fetch_wait_ms_max
            ),
        )
        .with_field("wait_ms"));
    }
    let wait = Duration::from_millis(q.wait_ms.min(state.fetch_wait_ms_max));
    let deadline = after(wait);
    let mut stopping = state.shutdown.subscribe();
    loop {
        // Listen before fetching: activity after the fetch's snapshot still wakes us.
        let listener = state.broker.listen(&group);
        let (g, m) = (group.clone(), member.clone());
        let fetched = blocking(&state, move |b| b.fetch_raw(&g, &m, q.max)).await?;
        let now = Instant::now();
        if !fetched.deliveries.is_empty() || now >= deadline || state.shutting_down() {
            let body = crate::wire::fetched(&fetched);
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        let mut wake = deadline.min(now + state.keepalive());
        if let Some(due) = fetched.next_due_ms {
            wake = wake.min(instant_for(due));
        }
        tokio::select! {
            () = listener => {}
            () = tokio::time::sleep_until(wake) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Body of `POST /v1/groups/{group}/ack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Delivery ids (`topic:partition:offset:attempt`).
    pub delivery_ids: Vec<String>,
}

/// Answer of an acknowledgement.
#[derive(Debug, Serialize)]
pub struct AckResponse {
    /// Ids that were not pending (already acknowledged, dead-lettered or unknown).
    pub unknown: Vec<String>,
}

/// `POST /v1/groups/{group}/ack`.
pub async fn ack(
    State(state): Shared,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<AckBody>,
) -> ApiResult<Json<AckResponse>> {
    let unknown = blocking(&state, move |b| b.ack(&group, &body.delivery_ids)).await?;
    Ok(Json(AckResponse { unknown }))
}

/// Body of `POST /v1/groups/{group}/nack`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    /// The rejected delivery.
    pub delivery_id: String,
    /// Why it failed; kept in the dead letter's error history.
    #[serde(default)]
    pub error: String,
}

/// `POST /v1/groups/{group}/nack`.
pub async fn nack(
    State(state): Shared,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<NackBody>,
) -> ApiResult<StatusCode> {
    blocking(&state, move |b| b.nack(&group, &body.delivery_id, &body.error)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/groups/{group}/seek`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeekBody {
    /// Topic to reposition.
    pub topic: String,
    /// One partition; all when absent.
    #[serde(default)]
    pub partition: Option<u32>,
    /// `"earliest"`, `"latest"`, `{"offset": N}` or `{"time_ms": T}`.
    pub to: Value,
}

/// Answer of a seek.
#[derive(Debug, Serialize)]
pub struct SeekResponse {
    /// `[partition, offset]` pairs: where each partition now stands.
    pub moved: Vec<(u32, u64)>,
}

/// `POST /v1/groups/{group}/seek` (audited as `group.seek` on `group/<group>/topic/<topic>`).
pub async fn seek(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(group): ApiPath<String>,
    ApiJson(body): ApiJson<SeekBody>,
) -> ApiResult<Json<SeekResponse>> {
    let resource = format!("group/{group}/topic/{}", body.topic);
    let result = seek_to(&state, group, body).await;
    audit::after(&state, &principal, Action::GroupSeek, &resource, StatusCode::OK, result).await
}

async fn seek_to(state: &AppState, group: String, body: SeekBody) -> ApiResult<Json<SeekResponse>> {
    let target: SeekTarget = serde_json::from_value(body.to).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-seek",
            "Invalid seek",
            format!(
                "\"to\" must be \"earliest\", \"latest\", {{\"offset\": N}} or \
                 {{\"time_ms\": T}}: {e}"
            ),
        )
        .with_field("to")
    })?;
    let moved =
        blocking(state, move |b| b.seek(&group, &body.topic, body.partition, target)).await?;
    Ok(Json(SeekResponse { moved }))
}

// ---- dead letters --------------------------------------------------------------------------

/// `GET /v1/groups/{group}/dlq`.
pub async fn list_dead_letters(
    State(state): Shared,
    ApiPath(group): ApiPath<String>,
) -> ApiResult<Json<Vec<DeadLetter>>> {
    blocking(&state, move |b| b.dead_letters(&group)).await.map(Json)
}

/// `GET /v1/groups/{group}/dlq/{id}`.
pub async fn dead_letter(
    State(state): Shared,
    ApiPath((group, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<DeadLetter>> {
    blocking(&state, move |b| b.dead_letter_entry(&group, &id)).await.map(Json)
}

/// `POST /v1/groups/{group}/dlq/{id}/retry` (audited as `dead_letter.retry`).
pub async fn retry_dead_letter(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath((group, id)): ApiPath<(String, String)>,
    _ignored: Body,
) -> ApiResult<Json<DeadLetter>> {
    let resource = format!("group/{group}/dlq/{id}");
    let result = blocking(&state, move |b| b.retry_dead_letter(&group, &id)).await.map(Json);
    audit::after(&state, &principal, Action::DeadLetterRetry, &resource, StatusCode::OK, result)
        .await
}

/// `DELETE /v1/groups/{group}/dlq/{id}` (audited as `dead_letter.discard`).
pub async fn discard_dead_letter(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath((group, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let resource = format!("group/{group}/dlq/{id}");
    let result = blocking(&state, move |b| b.discard_dead_letter(&group, &id)).await;
    let result = result.map(|()| StatusCode::NO_CONTENT);
    let ok = StatusCode::NO_CONTENT;
    audit::after(&state, &principal, Action::DeadLetterDiscard, &resource, ok, result).await
}

/// `GET /v1/sinks`: every configured sink's state and figures.
pub async fn list_sinks(State(state): Shared) -> Json<Vec<SinkReport>> {
    Json(state.sinks.statuses().iter().map(|s| s.report()).collect())
}

fn unknown_sink(e: UnknownSink) -> Problem {
    Problem::not_found("unknown-sink", "Unknown sink", e.to_string())
}

/// `GET /v1/sinks/{sink}`.
pub async fn describe_sink(
    State(state): Shared,
    ApiPath(sink): ApiPath<String>,
) -> Result<Json<SinkReport>, Problem> {
    state
        .sinks
        .statuses()
        .iter()
        .find(|s| s.name == sink)
        .map(|s| Json(s.report()))
        .ok_or_else(|| unknown_sink(UnknownSink(sink)))
}

/// `POST /v1/sinks/{sink}/pause`: the sink stops applying after its current batch (audited as
/// `sink.pause`).
pub async fn pause_sink(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(sink): ApiPath<String>,
    _ignored: Body,
) -> Result<Json<SinkReport>, Problem> {
    let result =
        state.sinks.set_paused(&sink, true).map(|s| Json(s.report())).map_err(unknown_sink);
    let resource = format!("sink/{sink}");
    audit::after(&state, &principal, Action::SinkPause, &resource, StatusCode::OK, result).await
}

/// `POST /v1/sinks/{sink}/resume` (audited as `sink.resume`).
pub async fn resume_sink(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(sink): ApiPath<String>,
    _ignored: Body,
) -> Result<Json<SinkReport>, Problem> {
    let result =
        state.sinks.set_paused(&sink, false).map(|s| Json(s.report())).map_err(unknown_sink);
    let resource = format!("sink/{sink}");
    audit::after(&state, &principal, Action::SinkResume, &resource, StatusCode::OK, result).await
}

/// `POST /v1/sinks/{sink}/rebuild`: replays the sink's topics into shadow tables and swaps them
/// in; answers 202 at once, with the sink's status (its `rebuild` field shows the progress).
/// Audited as `sink.rebuild`: the record says the rebuild started (202), not how it ended.
pub async fn rebuild_sink(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(sink): ApiPath<String>,
    _ignored: Body,
) -> Result<(StatusCode, Json<SinkReport>), Problem> {
    let result = start_rebuild(&state, &sink);
    let resource = format!("sink/{sink}");
    audit::after(&state, &principal, Action::SinkRebuild, &resource, StatusCode::ACCEPTED, result)
        .await
}

fn start_rebuild(state: &AppState, sink: &str) -> Result<(StatusCode, Json<SinkReport>), Problem> {
    match state.sinks.rebuild(sink) {
        Ok(s) => Ok((StatusCode::ACCEPTED, Json(s.report()))),
        Err(RebuildRefused::UnknownSink(e)) => Err(unknown_sink(e)),
        Err(e) => Err(Problem::new(
            StatusCode::CONFLICT,
            "rebuild-refused",
            "Rebuild refused",
            e.to_string(),
        )),
    }
}

/// `GET /v1/reconciliations`: every reconciliation with its latest run.
pub async fn list_reconciliations(State(state): Shared) -> Json<Vec<ReconcileReport>> {
    Json(state.reconcilers.statuses().iter().map(|r| r.report(false)).collect())
}

fn unknown_reconciliation(name: &str) -> Problem {
    Problem::not_found(
        "unknown-reconciliation",
        "Unknown reconciliation",
        format!("no reconciliation is called `{name}`; GET /v1/reconciliations lists them"),
    )
}

/// `GET /v1/reconciliations/{name}`: one reconciliation with its history of runs.
pub async fn describe_reconciliation(
    State(state): Shared,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ReconcileReport>, Problem> {
    state
        .reconcilers
        .get(&name)
        .map(|r| Json(r.report(true)))
        .ok_or_else(|| unknown_reconciliation(&name))
}

/// Body of `POST /v1/reconciliations/{name}/run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Repair what is found (default: the reconciliation's policy).
    #[serde(default)]
    repair: Option<bool>,
    /// How long a repair waits for the sinks to apply its corrections, ms (default: the
    /// reconciliation's `repair_wait_ms`).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `POST /v1/reconciliations/{name}/run`: runs it now and answers with the run's report
/// (audited as `reconciliation.run` once the run ends, with its outcome).
pub async fn run_reconciliation(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(name): ApiPath<String>,
    Body(body): Body,
) -> Result<Json<RunReport>, Problem> {
    // The body is optional: empty or `null` means "as configured".
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        crate::extract::parse_json::<Option<RunRequest>>(&body)?
    };
    let request = request.unwrap_or_default();
    let result = run_now(&state, &name, request.repair, request.wait_ms).await;
    let resource = format!("reconciliation/{name}");
    audit::after(&state, &principal, Action::ReconciliationRun, &resource, StatusCode::OK, result)
        .await
}

async fn run_now(
    state: &AppState,
    name: &str,
    repair: Option<bool>,
    wait_ms: Option<u64>,
) -> Result<Json<RunReport>, Problem> {
    match state.reconcilers.run_now_with(name, repair, wait_ms).await {
        Ok(report) => Ok(Json(report)),
        Err(RunNowError::Unknown(_)) => Err(unknown_reconciliation(name)),
        Err(RunNowError::Failed(e @ ReconcileError::Busy(_))) => Err(Problem::new(
            StatusCode::CONFLICT,
            "reconciliation-busy",
            "Reconciliation busy",
            e.to_string(),
        )),
        Err(RunNowError::Failed(e @ ReconcileError::Config { .. })) => {
            Err(Problem::bad_request(e.to_string()))
        }
        Err(RunNowError::Failed(e)) => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "reconciliation-failed",
            "Reconciliation failed",
            e.to_string(),
        )),
    }
}

/// `GET /v1/sources`: every configured source's state and figures, with the topics it writes.
pub async fn list_sources(State(state): Shared) -> Json<Vec<SourceView>> {
    Json(state.sources.statuses().iter().map(|s| source_view(&state, s.report())).collect())
}

/// A source's state and figures with the topics it writes (what the dashboard's flow draws).
#[derive(Debug, Serialize)]
pub struct SourceView {
    #[serde(flatten)]
    report: SourceReport,
    /// Topic names or patterns (`*`: any characters): a CDC source's explicit routes and its
    /// `topic` template with `{database}`, `{schema}` and `{table}` as `*`; an outbox's
    /// `topic_prefix` followed by `*` (the aggregate type).
    topics: Vec<String>,
}

fn source_view(state: &AppState, report: SourceReport) -> SourceView {
    let topics = state
        .sources
        .config(&report.name)
        .map(crate::topic_use::source_topic_patterns)
        .unwrap_or_default();
    SourceView { report, topics }
}

fn unknown_source(e: UnknownSource) -> Problem {
    Problem::not_found("unknown-source", "Unknown source", e.to_string())
}

/// `GET /v1/sources/{source}`.
pub async fn describe_source(
    State(state): Shared,
    ApiPath(source): ApiPath<String>,
) -> Result<Json<SourceView>, Problem> {
    state
        .sources
        .statuses()
        .iter()
        .find(|s| s.name == source)
        .map(|s| Json(source_view(&state, s.report())))
        .ok_or_else(|| unknown_source(UnknownSource(source)))
}

/// `POST /v1/sources/{source}/pause`: the source stops reading after its current batch
/// (audited as `source.pause`).
pub async fn pause_source(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(source): ApiPath<String>,
    _ignored: Body,
) -> Result<Json<SourceReport>, Problem> {
    let result =
        state.sources.set_paused(&source, true).map(|s| Json(s.report())).map_err(unknown_source);
    let resource = format!("source/{source}");
    audit::after(&state, &principal, Action::SourcePause, &resource, StatusCode::OK, result).await
}

/// `POST /v1/sources/{source}/resume` (audited as `source.resume`).
pub async fn resume_source(
    State(state): Shared,
    Extension(principal): Actor,
    ApiPath(source): ApiPath<String>,
    _ignored: Body,
) -> Result<Json<SourceReport>, Problem> {
    let result =
        state.sources.set_paused(&source, false).map(|s| Json(s.report())).map_err(unknown_source);
    let resource = format!("source/{source}");
    audit::after(&state, &principal, Action::SourceResume, &resource, StatusCode::OK, result).await
}
