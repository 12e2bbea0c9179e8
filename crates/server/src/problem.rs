//! RFC 9457 problem documents: every error the API answers is one of these, sent as
//! `application/problem+json`.
//!
//! Invariants: a problem always carries `type`, `title`, `status` and `detail`; it names what is
//! at fault where that is known (`field` — the CloudEvents attribute or request field, and
//! `event_index` — the event's position in a produce request, `topic`, `group`, `member`).
//! Broker errors are turned into problems in exactly one place, [`Problem::from_broker`], so the
//! status a client sees for a given failure is decided by one table.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use driftless_broker::{BrokerError, DurableEvent, NotDurableEvent};
use driftless_log::LogError;
use serde::Serialize;

/// Prefix of every problem `type` URI; the suffix is a stable slug such as `unknown-topic`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:driftless:problem:";

/// Media type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `urn:driftless:problem:<slug>`, stable per kind of failure.
    #[serde(rename = "type")]
    pub ty: String,
    /// A short summary of the kind of failure (the same for every instance of a `type`).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this instance, and what to do about it.
    pub detail: String,
    /// Members naming what is at fault, each present only when known.
    #[serde(flatten)]
    pub at: Box<FaultAt>,
}

/// The extension members of a [`Problem`] that name what is at fault (boxed so that
/// `Result<_, Problem>` stays small).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultAt {
    /// The CloudEvents attribute or request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Position of the event at fault in a produce request, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_index: Option<usize>,
    /// The topic involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The consumer group involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group member involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// For malformed JSON: the line of the syntax error, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// For malformed JSON: the column of the syntax error, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The partition involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The server-wide limit that was reached, by its setting name (`topics_max`,
    /// `request_body_bytes_max`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// That limit's value, when it is a size in bytes (`body-too-large`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// For `topic-in-use`: the configured components that use the topic, as `source/<name>`,
    /// `sink/<name>`, `reconciliation/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_by: Option<Vec<String>>,
    /// For a produce that failed part-way: the events that are durable (index, id, partition,
    /// offset, duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable: Option<Vec<DurableEvent>>,
    /// For a produce that failed part-way: the events that are not (index, id, partition,
    /// error); resend them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_durable: Option<Vec<NotDurableEvent>>,
}

impl Problem {
    /// A problem of kind `slug` with the given status, title and detail.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            ty: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            at: Box::default(),
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.at.field = Some(field.into());
        self
    }

    /// Names the event at fault by its index in the request.
    pub fn with_event_index(mut self, index: usize) -> Self {
        self.at.event_index = Some(index);
        self
    }

    /// Names the topic involved.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.at.topic = Some(topic.into());
        self
    }

    /// Names the group involved.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.at.group = Some(group.into());
        self
    }

    /// A request that is malformed in a way not covered by a more specific kind.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    /// A resource that does not exist.
    pub fn not_found(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, slug, title, detail)
    }

    /// A failure inside the server.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error", detail)
    }

    /// A body that is not valid JSON: names the line and column of the syntax error.
    pub fn malformed_json(what: &str, err: &serde_json::Error) -> Self {
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("{what} is not valid JSON: {err}"),
        );
        p.at.line = Some(err.line());
        p.at.column = Some(err.column());
        p
    }

    /// A JSON body that is well-formed but does not have the expected shape. Names the field
    /// when serde's message does (unknown or missing field).
    pub fn invalid_body(what: &str, err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let mut p = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-body",
            "Invalid request body",
            format!("{what}: {msg}"),
        );
        p.at.field = field_in_serde_message(&msg);
        p
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The single table from broker errors to problems (status, type, title and the names of
    /// what is at fault). The error's `Display` becomes `detail`.
    pub fn from_broker(err: &BrokerError) -> Self {
        use StatusCode as S;
        let detail = err.to_string();
        let p = |status: StatusCode, slug: &str, title: &str| {
            Problem::new(status, slug, title, detail.clone())
        };
        match err {
            BrokerError::UnknownTopic(t) => {
                let mut prob = p(S::NOT_FOUND, "unknown-topic", "Unknown topic").with_topic(t);
                // The broker's detail suggests creating it: not for a name that cannot exist.
                if let Some(reason) = driftless_core::TopicName::check(t) {
                    prob.detail = format!(
                        "there is no topic {t:?}, and there cannot be one: it is not a valid \
                         topic name ({reason})"
                    );
                }
                prob
            }
            BrokerError::TopicExists(t) => {
                p(S::CONFLICT, "topic-exists", "Topic already exists").with_topic(t)
            }
            BrokerError::ReservedTopic(t) => {
                p(S::BAD_REQUEST, "reserved-topic", "Reserved topic name")
                    .with_topic(t)
                    .with_field("name")
            }
            BrokerError::InvalidTopicName(e) => {
                p(S::BAD_REQUEST, "invalid-topic-name", "Invalid topic name")
                    .with_topic(&e.name)
                    .with_field("name")
            }
            BrokerError::InvalidEvent { index, source } => {
                p(S::BAD_REQUEST, "invalid-event", "Invalid CloudEvent")
                    .with_field(&source.attribute)
                    .with_event_index(*index)
            }
            BrokerError::EventTooLarge { index, .. } => {
                p(S::PAYLOAD_TOO_LARGE, "event-too-large", "Event too large")
                    .with_event_index(*index)
            }
            BrokerError::BatchTooLarge { partition, .. } => {
                let mut prob = p(S::PAYLOAD_TOO_LARGE, "batch-too-large", "Batch too large");
                prob.at.partition = Some(*partition);
                prob
            }
            BrokerError::PartiallyDurable(partial) => {
                // The status of what failed (503 for a poisoned partition, 500 for an IO
                // error): the request as a whole did not succeed, and a resend is safe.
                let status = Problem::from_broker(&partial.cause).status_code();
                let mut prob = p(status, "partially-durable", "Produce partially durable")
                    .with_topic(&partial.topic);
                prob.at.durable = Some(partial.durable.clone());
                prob.at.not_durable = Some(partial.not_durable.clone());
                prob
            }
            BrokerError::CapacityLimit { limit, .. } => {
                let mut prob = p(S::CONFLICT, "server-limit-reached", "Server-wide limit reached");
                prob.at.limit = Some((*limit).to_string());
                prob
            }
            BrokerError::TooManyEvents { .. } => {
                p(S::PAYLOAD_TOO_LARGE, "too-many-events", "Too many events in one request")
            }
            BrokerError::InvalidSetting { field, .. } => {
                p(S::BAD_REQUEST, "invalid-setting", "Invalid setting").with_field(*field)
            }
            BrokerError::InvalidGroupName(e) => {
                p(S::BAD_REQUEST, "invalid-group-name", "Invalid consumer group name")
                    .with_group(&e.name)
                    .with_field("group")
            }
            BrokerError::DeadLetterNotWritten { group, .. } => p(
                S::SERVICE_UNAVAILABLE,
                "dead-letter-not-written",
                "Dead letter not written; the event stays pending",
            )
            .with_group(group),
            BrokerError::InternalTopicPoisoned { topic, .. } => {
                p(S::SERVICE_UNAVAILABLE, "partition-poisoned", "Partition refuses writes")
                    .with_topic(*topic)
            }
            BrokerError::UnknownGroup(g) => {
                p(S::NOT_FOUND, "unknown-group", "Unknown consumer group").with_group(g)
            }
            BrokerError::GroupInUse { group, .. } => {
                p(S::CONFLICT, "group-in-use", "Consumer group in use").with_group(group)
            }
            BrokerError::UnknownMember { group, member } => {
                let mut prob =
                    p(S::NOT_FOUND, "unknown-member", "Unknown group member").with_group(group);
                prob.at.member = Some(member.clone());
                prob
            }
            BrokerError::UnknownDelivery(_) => {
                p(S::NOT_FOUND, "unknown-delivery", "Delivery not pending")
                    .with_field("delivery_id")
            }
            BrokerError::LimitReached(_) => {
                p(S::TOO_MANY_REQUESTS, "limit-reached", "Limit reached")
            }
            BrokerError::InvalidSeek { topic, .. } => {
                p(S::BAD_REQUEST, "invalid-seek", "Invalid seek").with_topic(topic).with_field("to")
            }
            BrokerError::UnknownDeadLetter(_) => {
                p(S::NOT_FOUND, "unknown-dead-letter", "Unknown dead letter")
            }
            BrokerError::Log(log) => match log {
                LogError::Poisoned { topic, .. } => {
                    p(S::SERVICE_UNAVAILABLE, "partition-poisoned", "Partition refuses writes")
                        .with_topic(topic)
                }
                LogError::Locked { .. } => {
                    p(S::SERVICE_UNAVAILABLE, "data-dir-locked", "Data directory locked")
                }
                LogError::UnknownPartition { topic, .. } => {
                    p(S::BAD_REQUEST, "unknown-partition", "Unknown partition")
                        .with_topic(topic)
                        .with_field("partition")
                }
                LogError::UnknownTopic(t) | LogError::TopicDeleted(t) => {
                    p(S::NOT_FOUND, "unknown-topic", "Unknown topic").with_topic(t)
                }
                LogError::RecordTooLarge { index, .. } => {
                    p(S::PAYLOAD_TOO_LARGE, "event-too-large", "Event too large")
                        .with_event_index(*index)
                }
                LogError::BatchTooLarge { .. } => {
                    p(S::PAYLOAD_TOO_LARGE, "batch-too-large", "Batch too large")
                }
                LogError::OffsetTrimmed { topic, .. } => {
                    p(S::CONFLICT, "offset-trimmed", "Offset removed by retention")
                        .with_topic(topic)
                }
                LogError::InvalidConfig(_) => {
                    p(S::BAD_REQUEST, "invalid-setting", "Invalid setting")
                }
                LogError::InvalidTopicName(e) => {
                    p(S::BAD_REQUEST, "invalid-topic-name", "Invalid topic name")
                        .with_topic(&e.name)
                        .with_field("name")
                }
                LogError::TopicBusy(t) => {
                    p(S::CONFLICT, "topic-busy", "Topic being created or deleted").with_topic(t)
                }
                LogError::DeletionUncertain { topic, .. } => {
                    p(S::INTERNAL_SERVER_ERROR, "deletion-uncertain", "Topic deletion uncertain")
                        .with_topic(topic)
                }
                _ => p(S::INTERNAL_SERVER_ERROR, "log-failure", "Log failure"),
            },
            BrokerError::CorruptState { .. } => {
                p(S::INTERNAL_SERVER_ERROR, "corrupt-state", "Corrupt internal state")
            }
        }
    }
}

impl From<BrokerError> for Problem {
    fn from(err: BrokerError) -> Self {
        Self::from_broker(&err)
    }
}

/// The field named by serde's "unknown field `x`" / "missing field `x`" messages.
fn field_in_serde_message(msg: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(start) = msg.find(marker).map(|i| i + marker.len()) {
            if let Some(len) = msg[start..].find('`') {
                return Some(msg[start..start + len].to_string());
            }
        }
    }
    None
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(status = self.status, detail = %self.detail, "request failed");
        }
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE))], body)
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            field_in_serde_message("unknown field `colour`, expected one of `a`, `b`").as_deref(),
            Some("colour")
        );
        assert_eq!(
            field_in_serde_message("missing field `topics` at line 1").as_deref(),
            Some("topics")
        );
        assert_eq!(field_in_serde_message("invalid type: string"), None);
    }

    #[test]
    fn broker_errors_map_to_statuses() {
        let cases = [
            (BrokerError::UnknownTopic("t".into()), 404),
            (BrokerError::TopicExists("t".into()), 409),
            (BrokerError::TooManyEvents { events: 3, max: 2 }, 413),
            (BrokerError::LimitReached("x".into()), 429),
            (BrokerError::UnknownDeadLetter("t:0:1".into()), 404),
        ];
        for (err, status) in cases {
            let p = Problem::from_broker(&err);
            assert_eq!(p.status, status, "{err}");
            assert_eq!(p.detail, err.to_string());
        }
        let poisoned = BrokerError::Log(LogError::Poisoned {
            topic: "t".into(),
            partition: 0,
            cause: "EIO".into(),
        });
        assert_eq!(Problem::from_broker(&poisoned).status, 503);
    }

    #[test]
    fn a_partial_produce_lists_what_is_durable_with_the_status_of_its_cause() {
        let partial = BrokerError::PartiallyDurable(Box::new(driftless_broker::PartialProduce {
            topic: "pt".into(),
            durable: vec![DurableEvent {
                index: 0,
                id: "a".into(),
                partition: 0,
                offset: 7,
                duplicate: false,
            }],
            not_durable: vec![NotDurableEvent {
                index: 1,
                id: "b".into(),
                partition: 1,
                error: "EIO".into(),
            }],
            cause: BrokerError::Log(LogError::Poisoned {
                topic: "pt".into(),
                partition: 1,
                cause: "EIO".into(),
            }),
        }));
        let p = Problem::from_broker(&partial);
        assert_eq!((p.status, p.ty.as_str()), (503, "urn:driftless:problem:partially-durable"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["durable"][0]["offset"], 7);
        assert_eq!(json["not_durable"][0]["index"], 1);
        assert_eq!(json["topic"], "pt");
        let limit =
            BrokerError::CapacityLimit { limit: "topics_max", max: 1, in_use: 1, requested: 1 };
        let p = serde_json::to_value(Problem::from_broker(&limit)).unwrap();
        assert_eq!((p["status"].as_u64(), p["limit"].as_str()), (Some(409), Some("topics_max")));
    }
}
