//! The audit trail: every administrative action taken through the API — creating or deleting a
//! topic, deleting a group, a seek, retrying or discarding a dead letter, pausing or resuming a
//! source or sink, rebuilding a sink, running a reconciliation — is appended to the internal
//! topic `__audit` as one JSON record
//! `{"at","principal","action","resource","outcome","status"}`, and `GET /v1/audit?limit=N`
//! reads the newest ones back, newest first.
//!
//! Invariants:
//! - a record is written *after* its action, with the action's outcome (`ok` for a 2xx answer,
//!   `failed` otherwise) and the HTTP status the client gets; the handler's answer does not
//!   change whatever happens to the record;
//! - writing a record never undoes or fails the action: a failure is logged (without the
//!   record's contents beyond action and resource) and counted
//!   (`driftless_audit_write_failures_total`, from [`Broker::audit_failures`]);
//! - a record is bounded: the principal and resource are cut to [`NAME_BYTES_MAX`] bytes (at a
//!   character boundary), so it always fits the topic's record limit;
//! - the trail is bounded by `__audit`'s retention (30 days or 64 MiB, see
//!   [`driftless_broker::AUDIT_RETENTION_MS`]); clients can neither produce to nor delete it,
//!   like every internal topic;
//! - requests refused before their handler runs (a malformed body, and, once authentication is
//!   on, an unauthenticated or unauthorized request) are not administrative actions and are not
//!   recorded here.
//!
//! [`Broker::audit_failures`]: driftless_broker::Broker::audit_failures

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::extract::ApiQuery;
use crate::peer::Principal;
use crate::problem::Problem;
use crate::AppState;

/// Longest principal or resource kept in a record, in bytes.
pub const NAME_BYTES_MAX: usize = 1_024;
// Both names, every byte escaped to six (`\u00XX`), plus the other fields fit in one record.
const _: () = assert!(2 * 6 * NAME_BYTES_MAX + 1_024 <= driftless_broker::AUDIT_RECORD_BYTES_MAX);
/// Records `GET /v1/audit` returns without `limit`.
pub const AUDIT_LIMIT_DEFAULT: usize = 100;
/// Most records one `GET /v1/audit` returns.
pub const AUDIT_LIMIT_MAX: usize = driftless_broker::AUDIT_READ_RECORDS_MAX;

/// An administrative action, as records name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `POST /v1/topics`.
    TopicCreate,
    /// `DELETE /v1/topics/{topic}`.
    TopicDelete,
    /// `DELETE /v1/groups/{group}`.
    GroupDelete,
    /// `POST /v1/groups/{group}/seek`.
    GroupSeek,
    /// `POST /v1/groups/{group}/dlq/{id}/retry`.
    DeadLetterRetry,
    /// `DELETE /v1/groups/{group}/dlq/{id}`.
    DeadLetterDiscard,
    /// `POST /v1/sources/{source}/pause`.
    SourcePause,
    /// `POST /v1/sources/{source}/resume`.
    SourceResume,
    /// `POST /v1/sinks/{sink}/pause`.
    SinkPause,
    /// `POST /v1/sinks/{sink}/resume`.
    SinkResume,
    /// `POST /v1/sinks/{sink}/rebuild`.
    SinkRebuild,
    /// `POST /v1/reconciliations/{name}/run`.
    ReconciliationRun,
}

impl Action {
    /// The action's name in records: `<kind>.<verb>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopicCreate => "topic.create",
            Self::TopicDelete => "topic.delete",
            Self::GroupDelete => "group.delete",
            Self::GroupSeek => "group.seek",
            Self::DeadLetterRetry => "dead_letter.retry",
            Self::DeadLetterDiscard => "dead_letter.discard",
            Self::SourcePause => "source.pause",
            Self::SourceResume => "source.resume",
            Self::SinkPause => "sink.pause",
            Self::SinkResume => "sink.resume",
            Self::SinkRebuild => "sink.rebuild",
            Self::ReconciliationRun => "reconciliation.run",
        }
    }
}

/// One record of the trail, as stored and as `GET /v1/audit` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the action finished, RFC 3339 in UTC with milliseconds.
    pub at: String,
    /// Who took it.
    pub principal: String,
    /// What it was (see [`Action::as_str`]).
    pub action: String,
    /// What it acted on: `topic/<name>`, `group/<name>`, `group/<name>/topic/<topic>` (a
    /// seek), `group/<name>/dlq/<id>`, `source/<name>`, `sink/<name>`, `reconciliation/<name>`.
    pub resource: String,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The HTTP status of the answer.
    pub status: u16,
}

impl AuditRecord {
    /// The record of `action` on `resource` by `principal`, answered with `status` at `at_ms`.
    pub fn new(
        at_ms: i64,
        principal: &str,
        action: Action,
        resource: &str,
        status: StatusCode,
    ) -> Self {
        Self {
            at: rfc3339_utc(at_ms),
            principal: cut(principal).to_string(),
            action: action.as_str().to_string(),
            resource: cut(resource).to_string(),
            outcome: if status.is_success() { "ok" } else { "failed" }.to_string(),
            status: status.as_u16(),
        }
    }
}

/// Records `action` on `resource` with the outcome of `result` (its status when it failed, `ok`
/// otherwise), then hands `result` back unchanged. A record that cannot be written is logged
/// and counted, never turned into an error.
pub(crate) async fn after<T>(
    state: &AppState,
    principal: &Principal,
    action: Action,
    resource: &str,
    ok: StatusCode,
    result: Result<T, Problem>,
) -> Result<T, Problem> {
    let status = match &result {
        Ok(_) => ok,
        Err(p) => p.status_code(),
    };
    write(state, principal, action, resource, status).await;
    result
}

/// Appends one record on the blocking pool (the append waits for fsync).
pub(crate) async fn write(
    state: &AppState,
    principal: &Principal,
    action: Action,
    resource: &str,
    status: StatusCode,
) {
    let record =
        AuditRecord::new(crate::routes::now_ms(), &principal.name, action, resource, status);
    // Serialising a struct of strings and a number cannot fail.
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    let broker = Arc::clone(&state.broker);
    let written = tokio::task::spawn_blocking(move || broker.append_audit(&bytes)).await;
    let error = match written {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the audit write did not complete: {e}"),
    };
    tracing::error!(
        action = record.action,
        resource = record.resource,
        outcome = record.outcome,
        error,
        "could not write an audit record to __audit; the action itself stands. Check the data \
         directory's disk (see /readyz)"
    );
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most records to return, newest first (default 100, at most 1000).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    AUDIT_LIMIT_DEFAULT
}

/// `GET /v1/audit?limit=N`: the newest `N` records of the trail, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, Problem> {
    if q.limit == 0 || q.limit > AUDIT_LIMIT_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query string",
            format!("limit is {}; it must be between 1 and {AUDIT_LIMIT_MAX}", q.limit),
        )
        .with_field("limit"));
    }
    let raw = crate::routes::blocking(&state, move |b| b.audit_newest(q.limit)).await?;
    let mut records = Vec::with_capacity(raw.len());
    for bytes in raw {
        match serde_json::from_slice::<AuditRecord>(&bytes) {
            Ok(r) => records.push(r),
            // Only this module writes `__audit`; an unreadable record is a bug or a damaged
            // file, and the rest of the trail is still worth showing.
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable __audit record"),
        }
    }
    Ok(Json(records))
}

/// `s` cut to at most [`NAME_BYTES_MAX`] bytes, at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= NAME_BYTES_MAX {
        return s;
    }
    let mut end = NAME_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds, `2026-12-07T20:43:28.123Z`.
/// Times before the epoch are written as the epoch (the clock never goes there).
pub fn rfc3339_utc(ms: i64) -> String {
    let ms = ms.max(0);
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = driftless_core::civil_from_days(days);
    let (h, m, s, milli) =
        (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_796_676_208_123), "2026-12-07T20:43:28.123Z");
        assert_eq!(rfc3339_utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339_utc(-5), "1970-01-01T00:00:00.000Z");
        assert!(driftless_core::is_rfc3339(&rfc3339_utc(1_796_676_208_123)));
    }

    #[test]
    fn a_record_says_failed_for_any_non_success_status_and_cuts_long_names() {
        let long = "é".repeat(NAME_BYTES_MAX);
        let r = AuditRecord::new(0, &long, Action::TopicDelete, "topic/t", StatusCode::NOT_FOUND);
        assert_eq!((r.outcome.as_str(), r.status), ("failed", 404));
        assert!(r.principal.len() <= NAME_BYTES_MAX && r.principal.starts_with('é'));
        let r = AuditRecord::new(0, "a", Action::SinkRebuild, "sink/s", StatusCode::ACCEPTED);
        assert_eq!((r.outcome.as_str(), r.action.as_str()), ("ok", "sink.rebuild"));
        // The largest record: both names at the cut, of control characters (six bytes each
        // once escaped as `\u00XX`), still fits the topic's record limit.
        let escaped = "\u{1}".repeat(2 * NAME_BYTES_MAX);
        let longest = AuditRecord::new(
            i64::MAX,
            &escaped,
            Action::ReconciliationRun,
            &escaped,
            StatusCode::NETWORK_AUTHENTICATION_REQUIRED,
        );
        let bytes = serde_json::to_vec(&longest).unwrap();
        assert!(bytes.len() > 12 * NAME_BYTES_MAX, "{}", bytes.len());
        assert!(bytes.len() <= driftless_broker::AUDIT_RECORD_BYTES_MAX, "{}", bytes.len());
    }
}
