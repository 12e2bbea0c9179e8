//! The OpenAPI 3.1 document of the API, served at `/v1/openapi.json`.
//!
//! Invariant: every route the router serves is described here (the HTTP tests compare the two
//! lists), with its request body, parameters and responses; every error response is a
//! [`Problem`](crate::Problem) (`application/problem+json`).

use serde_json::{json, Value};

fn problem() -> Value {
    json!({"$ref": "#/components/responses/Problem"})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string"}})
}

fn errors(mut responses: Value, codes: &[&str]) -> Value {
    if let Value::Object(map) = &mut responses {
        for code in codes {
            map.insert((*code).to_string(), problem());
        }
        map.insert("default".into(), problem());
    }
    responses
}

/// The settings of a topic (`TopicSpec`), as JSON Schema properties.
fn topic_spec_properties() -> Value {
    json!({
      "partitions": {"type": "integer", "minimum": 1, "maximum": driftless_log::PARTITIONS_MAX, "default": 1},
      "retention_ms": {"type": ["integer", "null"], "minimum": 1, "maximum": driftless_log::MS_LIMIT,
        "description": "null keeps events forever"},
      "retention_bytes": {"type": ["integer", "null"], "minimum": 1,
        "maximum": driftless_log::RETENTION_BYTES_LIMIT, "description": "per partition; null: no size limit"},
      "compact": {"type": "boolean", "default": false},
      "dedup_window_ms": {"type": "integer", "minimum": 0,
        "maximum": driftless_broker::DEDUP_WINDOW_MS_MAX, "default": 120000},
      "durability": {"description": "\"always\" (default), \"never\", or {\"interval_ms\": N}",
        "oneOf": [{"type": "string", "enum": ["always", "never"]},
                  {"type": "object", "required": ["interval_ms"], "additionalProperties": false,
                   "properties": {"interval_ms": {"type": "integer", "minimum": 1,
                     "maximum": driftless_log::DURABILITY_INTERVAL_MS_LIMIT}}}]},
      "owner": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$",
        "description": "The principal that owns the topic: with authentication on, only it may produce to it (403 `not-topic-owner` for anyone else, whatever their scopes). With authentication off it is recorded but not enforced. Absent: unowned."}
    })
}

/// The body of `POST /v1/topics`: a topic's settings and its name, in one object. (An `allOf`
/// of `TopicSpec` and `{name}` could never be satisfied: `TopicSpec` allows no other property.)
fn create_topic() -> Value {
    let mut properties = topic_spec_properties();
    if let Value::Object(map) = &mut properties {
        map.insert("name".into(), json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"}));
    }
    json!({"type": "object", "required": ["name"], "additionalProperties": false,
           "properties": properties})
}

/// The OpenAPI document.
pub fn openapi() -> Value {
    let mut doc = document();
    secure(&mut doc);
    doc
}

/// Adds authentication to the document: the three ways to authenticate (`securitySchemes`),
/// and on every operation either `security: []` (public) or the scope it needs
/// (`x-driftless-scope`, from the policy table in `auth/policy.rs`) with its 401 and 403.
/// The schemes apply only when `[auth] enabled = true`; without it every request is allowed.
fn secure(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "dlt_<id>_<secret>",
          "description": "An API token from `driftless token create`"},
        "session": {"type": "apiKey", "in": "cookie", "name": "driftless_session",
          "description": "The dashboard's session, from POST /v1/session"},
        "mtls": {"type": "mutualTLS",
          "description": "A client certificate; its subject CN is the principal, granted the scopes of `[auth.clients]`"}
    });
    doc["security"] = json!([{"bearer": []}, {"session": []}, {"mtls": []}]);
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for (route, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            if method == "parameters" {
                continue;
            }
            match crate::auth::documented_scope(method, route) {
                Some(None) => op["security"] = json!([]),
                Some(Some(scope)) => {
                    op["x-driftless-scope"] = json!(scope);
                    if let Some(responses) = op["responses"].as_object_mut() {
                        responses.insert("401".into(), problem());
                        responses.insert("403".into(), problem());
                    }
                }
                // No policy row: the acceptance test in tests/auth.rs fails on it.
                None => {}
            }
        }
    }
}

fn document() -> Value {
    let create_topic = create_topic();
    let topic = path_param("topic", "Topic name");
    let group = json!({"name": "group", "in": "path", "required": true,
        "description": "Consumer group name: 1 to 249 characters from [A-Za-z0-9._-], not . or ..",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$", "maxLength": 249}});
    let member = path_param("member", "Member id returned by join");
    let dlq_id = path_param("id", "Dead-letter id, `topic:partition:offset`");
    let source = path_param("source", "Source name, as in the server's `[[source]]` table");
    let sink = path_param("sink", "Sink name, as in the server's `[[sink]]` table");
    let reconcile =
        path_param("name", "Reconciliation name, as in the server's `[[reconcile]]` table");
    json!({
      "openapi": "3.1.0",
      "info": {
        "title": "Driftless API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Topics, CloudEvents produce, consumer groups (long-poll and SSE with credit), acknowledgements, replay and the dead-letter queue. Errors are RFC 9457 problem documents naming the field (`field`) and event (`event_index`) at fault."
      },
      "paths": {
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "`ok`", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/readyz": {"get": {"summary": "Readiness: the broker is open, no partition refuses writes (503 `partition-poisoned` names them; a restart recovers) and the server is not shutting down",
          "responses": {"200": {"description": "`ready`", "content": {"text/plain": {"schema": {"type": "string"}}}}, "503": problem()}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text format 0.0.4)",
          "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/session": {
          "get": {"summary": "Who this request acts as: the principal of the session cookie, token or client certificate presented (`null` when none, or not valid), and whether the server authenticates at all",
            "responses": {"200": {"description": "who", "content": {"application/json": {"schema": {"type": "object", "required": ["auth_enabled", "principal"], "properties": {"auth_enabled": {"type": "boolean"}, "principal": {"type": ["string", "null"]}}}}}}}},
          "post": {"summary": "Sign in (the dashboard): trade an API token for a session cookie `driftless_session` (HttpOnly, SameSite=Strict, Secure under TLS). 409 `auth-disabled` when the server does not authenticate; 429 `sessions-full` at auth.sessions_max",
            "requestBody": body(json!({"type": "object", "required": ["token"], "additionalProperties": false, "properties": {"token": {"type": "string"}}})),
            "responses": errors(json!({"200": {"description": "signed in", "headers": {"Set-Cookie": {"schema": {"type": "string"}, "description": "driftless_session=<random>; HttpOnly; SameSite=Strict; Path=/; Max-Age=<s>[; Secure]"}},
              "content": {"application/json": {"schema": {"type": "object", "properties": {"principal": {"type": "string"}, "expires_at_ms": {"type": "integer"}}}}}}}), &["400", "401", "409", "415", "429"])},
          "delete": {"summary": "Sign out: end the session and clear its cookie",
            "responses": {"204": {"description": "signed out", "headers": {"Set-Cookie": {"schema": {"type": "string"}, "description": "driftless_session=; Max-Age=0"}}}}}
        },
        "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok("OpenAPI 3.1", json!({"type": "object"}))}}},
        "/v1/topics": {
          "get": {"summary": "List topics", "responses": errors(json!({"200": ok("topics", json!({"type": "array", "items": schema("TopicDescription")}))}), &[])},
          "post": {"summary": "Create a topic (recorded in the audit trail as `topic.create`)", "description": "409 `topic-exists`, or `server-limit-reached` naming the limit (`topics_max`, `partitions_total_max`) in `limit`. An out-of-range number is a 400 `invalid-setting` naming the field, the value and the allowed range.", "requestBody": body(schema("CreateTopic")),
            "responses": errors(json!({"201": ok("created", schema("TopicDescription"))}), &["400", "409"])}
        },
        "/v1/topics/{topic}": {
          "parameters": [topic],
          "get": {"summary": "Describe a topic", "responses": errors(json!({"200": ok("topic", schema("TopicDescription"))}), &["404"])},
          "delete": {"summary": "Delete a topic and its events (audited: `topic.delete`)", "description": "A topic that the server's configured sources, sinks or reconciliations use is refused with 409 `topic-in-use` naming them in `used_by`, unless `force=true`.",
            "parameters": [{"name": "force", "in": "query", "required": false, "schema": {"type": "boolean", "default": false}, "description": "Delete even when configured sources, sinks or reconciliations use the topic"}],
            "responses": errors(json!({"204": {"description": "deleted"}}), &["404", "409"])}
        },
        "/v1/topics/{topic}/events": {
          "parameters": [topic],
          "post": {
            "summary": "Produce CloudEvents (acknowledged when durable; re-sent ids return the original position with duplicate=true)",
            "description": "Structured mode (`application/cloudevents+json`, one event), batch mode (`application/cloudevents-batch+json`, an array), or binary mode (any other Content-Type with `ce-specversion`, `ce-id`, `ce-source`, `ce-type` headers; other `ce-*` headers are attributes; the body is `data`, or `data_base64` when the Content-Type is not JSON). Batches are all-or-nothing where that can be known in advance: nothing is appended if any event is invalid or any limit is broken (`event-too-large` 413 names the event's index in the request; `batch-too-large` 413 names the partition whose share is over the topic's batch_bytes_max; a poisoned partition 503). An IO failure or a full disk on one partition after others were written answers `partially-durable` (500, or 503 when a partition is poisoned) with `durable` and `not_durable` lists by event index: resend the events not durable.",
            "parameters": [
              {"name": "ce-specversion", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Binary mode: `1.0`"},
              {"name": "ce-id", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Binary mode: event id"},
              {"name": "ce-source", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Binary mode: event source"},
              {"name": "ce-type", "in": "header", "required": false, "schema": {"type": "string"}, "description": "Binary mode: event type"}
            ],
            "requestBody": {"required": true, "content": {
              "application/cloudevents+json": {"schema": schema("CloudEvent")},
              "application/cloudevents-batch+json": {"schema": {"type": "array", "items": schema("CloudEvent")}},
              "*/*": {"schema": {"description": "binary mode: the event's data"}}
            }},
            "responses": errors(json!({"200": ok("one result per event, in order", schema("ProduceResult"))}), &["400", "403", "404", "413", "415", "500", "503"])
          }
        },
        "/v1/groups": {"get": {"summary": "List consumer groups", "responses": errors(json!({"200": ok("group names", json!({"type": "array", "items": {"type": "string"}}))}), &[])}},
        "/v1/groups/{group}": {
          "parameters": [group],
          "get": {"summary": "Describe a group: members, partitions, lag, dead letters", "responses": errors(json!({"200": ok("group", schema("GroupDescription"))}), &["404"])},
          "delete": {"summary": "Delete a group that has no members, with its committed offsets and dead letters (audited: `group.delete`)", "responses": errors(json!({"204": {"description": "deleted"}}), &["404", "409"])}
        },
        "/v1/groups/{group}/members": {
          "parameters": [group],
          "post": {"summary": "Join the group (it rebalances)", "requestBody": body(schema("Join")),
            "responses": errors(json!({"201": ok("membership", schema("Membership"))}), &["400", "404", "429"])}
        },
        "/v1/groups/{group}/members/{member}": {
          "parameters": [group, member],
          "delete": {"summary": "Leave the group", "responses": errors(json!({"204": {"description": "left"}}), &["404"])}
        },
        "/v1/groups/{group}/members/{member}/heartbeat": {
          "parameters": [group, member],
          "post": {"summary": "Keep the member alive; returns its assignment", "responses": errors(json!({"200": ok("membership", schema("Membership"))}), &["404"])}
        },
        "/v1/groups/{group}/members/{member}/events": {
          "parameters": [group, member,
            {"name": "max", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 100}, "description": "Most deliveries to return"},
            {"name": "wait_ms", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 86400000, "default": 0}, "description": "Long-poll: wait up to this long (capped by fetch_wait_ms_max) when nothing is ready"}],
          "get": {"summary": "Fetch deliveries (long-poll)", "responses": errors(json!({"200": ok("deliveries", schema("Fetched"))}), &["400", "404"])}
        },
        "/v1/groups/{group}/members/{member}/stream": {
          "parameters": [group, member,
            {"name": "credit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 18446744073709551615u64, "default": 0}, "description": "Initial credit: deliveries the server may send (capped by stream_credit_max)"}],
          "get": {"summary": "Stream deliveries as server-sent events (`event: delivery`, data: Delivery JSON); never more than the credit granted",
            "responses": errors(json!({"200": {"description": "SSE stream; a broker error ends it with `event: error` holding a problem document", "content": {"text/event-stream": {"schema": {"description": "one message (OpenAPI 3.1: the schema of each event): `event: delivery` with a Delivery, or `event: error` with a problem document, as JSON in `data`", "type": "object", "required": ["data"], "properties": {"event": {"type": "string", "enum": ["delivery", "error"]}, "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}}}}}), &["404", "409"])}
        },
        "/v1/groups/{group}/members/{member}/credit": {
          "parameters": [group, member],
          "post": {"summary": "Grant an open stream more credit", "requestBody": body(json!({"type": "object", "required": ["credit"], "additionalProperties": false, "properties": {"credit": {"type": "integer", "minimum": 0, "maximum": 18446744073709551615u64}}})),
            "responses": errors(json!({"200": ok("outstanding credit", json!({"type": "object", "properties": {"credit": {"type": "integer"}}}))}), &["400", "404"])}
        },
        "/v1/groups/{group}/ack": {
          "parameters": [group],
          "post": {"summary": "Acknowledge deliveries (committed durably before the answer)",
            "requestBody": body(json!({"type": "object", "required": ["delivery_ids"], "additionalProperties": false, "properties": {"delivery_ids": {"type": "array", "items": {"type": "string"}}}})),
            "responses": errors(json!({"200": ok("ids that were not pending", json!({"type": "object", "properties": {"unknown": {"type": "array", "items": {"type": "string"}}}}))}), &["400", "404"])}
        },
        "/v1/groups/{group}/nack": {
          "parameters": [group],
          "post": {"summary": "Reject a delivery: retried after backoff (its key waits), dead-lettered after max_attempts",
            "requestBody": body(json!({"type": "object", "required": ["delivery_id"], "additionalProperties": false, "properties": {"delivery_id": {"type": "string"}, "error": {"type": "string"}}})),
            "responses": errors(json!({"204": {"description": "rejected"}}), &["400", "404"])}
        },
        "/v1/groups/{group}/seek": {
          "parameters": [group],
          "post": {"summary": "Move the group's position on a topic (replay; audited: `group.seek`)", "requestBody": body(schema("Seek")),
            "responses": errors(json!({"200": ok("new positions", json!({"type": "object", "properties": {"moved": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"}, "description": "[partition, offset]"}}}}))}), &["400", "404"])}
        },
        "/v1/groups/{group}/dlq": {
          "parameters": [group],
          "get": {"summary": "List dead letters", "responses": errors(json!({"200": ok("dead letters", json!({"type": "array", "items": schema("DeadLetter")}))}), &["404"])}
        },
        "/v1/groups/{group}/dlq/{id}": {
          "parameters": [group, dlq_id],
          "get": {"summary": "Inspect a dead letter", "responses": errors(json!({"200": ok("dead letter", schema("DeadLetter"))}), &["404"])},
          "delete": {"summary": "Discard a dead letter (audited: `dead_letter.discard`)", "responses": errors(json!({"204": {"description": "discarded"}}), &["404"])}
        },
        "/v1/groups/{group}/dlq/{id}/retry": {
          "parameters": [group, dlq_id],
          "post": {"summary": "Deliver a dead letter again with a fresh attempt budget (audited: `dead_letter.retry`)", "responses": errors(json!({"200": ok("dead letter, now retrying", schema("DeadLetter"))}), &["404"])}
        },
        "/v1/sources": {
          "get": {"summary": "Every configured source: state, error, events, slot lag, outbox backlog, snapshot progress", "responses": errors(json!({"200": ok("sources", json!({"type": "array", "items": schema("Source")}))}), &[])}
        },
        "/v1/sources/{source}": {
          "parameters": [source.clone()],
          "get": {"summary": "One source's state and figures", "responses": errors(json!({"200": ok("source", schema("Source"))}), &["404"])}
        },
        "/v1/sources/{source}/pause": {
          "parameters": [source.clone()],
          "post": {"summary": "Stop reading after the current batch (audited: `source.pause`)", "responses": errors(json!({"200": ok("source", schema("Source"))}), &["404"])}
        },
        "/v1/sources/{source}/resume": {
          "parameters": [source],
          "post": {"summary": "Resume a paused source (audited: `source.resume`)", "responses": errors(json!({"200": ok("source", schema("Source"))}), &["404"])}
        },
        "/v1/sinks": {
          "get": {"summary": "Every configured sink: state, error, applied, skipped and rejected events, freshness", "responses": errors(json!({"200": ok("sinks", json!({"type": "array", "items": schema("Sink")}))}), &[])}
        },
        "/v1/sinks/{sink}": {
          "parameters": [sink.clone()],
          "get": {"summary": "One sink's state and figures", "responses": errors(json!({"200": ok("sink", schema("Sink"))}), &["404"])}
        },
        "/v1/sinks/{sink}/pause": {
          "parameters": [sink.clone()],
          "post": {"summary": "Stop applying after the current batch (audited: `sink.pause`)", "responses": errors(json!({"200": ok("sink", schema("Sink"))}), &["404"])}
        },
        "/v1/sinks/{sink}/rebuild": {
          "parameters": [sink.clone()],
          "post": {"summary": "Replay the sink's topics into shadow tables and swap them in atomically (progress in the sink's `rebuild` field; audited: `sink.rebuild`)", "responses": errors(json!({"202": ok("sink, rebuild started", schema("Sink"))}), &["404", "409"])}
        },
        "/v1/reconciliations": {
          "get": {"summary": "Every configured reconciliation with its latest run", "responses": errors(json!({"200": ok("reconciliations", json!({"type": "array", "items": schema("Reconciliation")}))}), &[])}
        },
        "/v1/reconciliations/{name}": {
          "parameters": [reconcile.clone()],
          "get": {"summary": "One reconciliation with its history of runs", "responses": errors(json!({"200": ok("reconciliation", schema("Reconciliation"))}), &["404"])}
        },
        "/v1/reconciliations/{name}/run": {
          "parameters": [reconcile],
          "post": {"summary": "Run now (body optional: {\"repair\": true|false, \"wait_ms\": 0..60000}, default the configured policy and repair_wait_ms); answers when the run is done — with repair, after the sinks applied the corrections (or the wait ended) and the corrected keys were re-checked (audited: `reconciliation.run`)", "responses": errors(json!({"200": ok("the run's report", schema("ReconcileRun"))}), &["400", "404", "409", "502"])}
        },
        "/v1/audit": {
          "get": {"summary": "The newest administrative actions, newest first",
            "description": "The audit trail kept in the internal topic `__audit`: one record per administrative action taken through the API (topic create/delete, group delete, seek, dead-letter retry/discard, source and sink pause/resume, sink rebuild, reconciliation run), written after the action with its outcome. Kept 30 days or 64 MiB, whichever comes first. Clients cannot write or delete it.",
            "parameters": [{"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": crate::audit::AUDIT_LIMIT_MAX, "default": crate::audit::AUDIT_LIMIT_DEFAULT}, "description": "Most records to return"}],
            "responses": errors(json!({"200": ok("audit records, newest first", json!({"type": "array", "items": schema("AuditRecord")}))}), &["400"])}
        },
        "/v1/history": {
          "get": {"summary": "The server's recent figures, one sample a second for the last hour at most: produce rate per topic, lag and dead letters per group, applied rate per sink",
            "description": "Kept in memory by the server (it starts again after a restart; `started_ms` says when). Every series has one value per entry of `times_ms` (`null`: no value then). At most `series_max` names per kind; further names are summed into the series `(other)`, and `merged_into_other` says how many were.",
            "parameters": [{"name": "seconds", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": crate::history::HISTORY_SECONDS_MAX, "default": crate::history::HISTORY_SECONDS_DEFAULT}, "description": "The last this many seconds"}],
            "responses": errors(json!({"200": ok("samples", schema("History"))}), &["400"])}
        },
        "/v1/sinks/{sink}/resume": {
          "parameters": [sink],
          "post": {"summary": "Resume a paused sink (audited: `sink.resume`)", "responses": errors(json!({"200": ok("sink", schema("Sink"))}), &["404"])}
        }
      },
      "components": {
        "responses": {
          "Problem": {"description": "RFC 9457 problem", "content": {"application/problem+json": {"schema": schema("Problem")}}}
        },
        "schemas": {
          "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
            "type": {"type": "string", "description": "urn:driftless:problem:<slug>"},
            "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
            "field": {"type": "string", "description": "CloudEvents attribute or request field at fault"},
            "event_index": {"type": "integer", "description": "index of the event at fault in the request"},
            "topic": {"type": "string"}, "group": {"type": "string"}, "member": {"type": "string"},
            "line": {"type": "integer"}, "column": {"type": "integer"},
            "partition": {"type": "integer", "description": "partition involved (batch-too-large)"},
            "limit": {"type": "string", "description": "server-limit-reached: the setting that was reached (`topics_max`, `partitions_total_max`); raise it in the server's `[broker]` table. body-too-large: `request_body_bytes_max`"},
            "limit_bytes": {"type": "integer", "description": "body-too-large: the limit in bytes; split requests to fit"},
            "used_by": {"type": "array", "items": {"type": "string"}, "description": "topic-in-use: the configured components using the topic (`source/<name>`, `sink/<name>`, `reconciliation/<name>`)"},
            "durable": {"type": "array", "items": schema("DurableEvent"), "description": "partially-durable: the events of the request that are durable"},
            "not_durable": {"type": "array", "items": schema("NotDurableEvent"), "description": "partially-durable: the events that are not; resend them (a resend of one that did survive is answered as a duplicate)"}}},
          "DurableEvent": {"type": "object", "required": ["index", "id", "partition", "offset", "duplicate"], "properties": {
            "index": {"type": "integer", "description": "position in the request, from 0"}, "id": {"type": "string"},
            "partition": {"type": "integer"}, "offset": {"type": "integer"}, "duplicate": {"type": "boolean"}}},
          "NotDurableEvent": {"type": "object", "required": ["index", "id", "partition", "error"], "properties": {
            "index": {"type": "integer", "description": "position in the request, from 0"}, "id": {"type": "string"},
            "partition": {"type": "integer"}, "error": {"type": "string", "description": "why its partition's append failed"}}},
          "CloudEvent": {"type": "object", "required": ["specversion", "id", "source", "type"], "properties": {
            "specversion": {"const": "1.0"}, "id": {"type": "string", "minLength": 1}, "source": {"type": "string", "minLength": 1},
            "type": {"type": "string", "minLength": 1}, "subject": {"type": "string"}, "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string"}, "dataschema": {"type": "string"}, "data": {}, "data_base64": {"type": "string"},
            "partitionkey": {"type": "string"}, "sequence": {"type": ["string", "integer"]}, "traceparent": {"type": "string"}},
            "additionalProperties": {"type": ["string", "number", "boolean"]}},
          "Produced": {"type": "object", "properties": {"id": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}, "duplicate": {"type": "boolean"}}},
          "ProduceResult": {"type": "object", "properties": {"results": {"type": "array", "items": schema("Produced")}}},
          "TopicSpec": {"type": "object", "additionalProperties": false, "properties": topic_spec_properties()},
          "CreateTopic": create_topic,
          "PartitionStats": {"type": "object", "properties": {
            "records_appended": {"type": "integer"}, "bytes_appended": {"type": "integer"}, "appends": {"type": "integer"},
            "syncs": {"type": "integer"}, "sync_micros_total": {"type": "integer"}, "sync_micros_max": {"type": "integer"},
            "size_bytes": {"type": "integer"}, "segments": {"type": "integer"}, "start_offset": {"type": "integer"}, "end_offset": {"type": "integer"}}},
          "TopicDescription": {"type": "object", "properties": {"name": {"type": "string"}, "spec": schema("TopicSpec"), "partitions": {"type": "array", "items": schema("PartitionStats")}}},
          "Join": {"type": "object", "required": ["topics"], "additionalProperties": false, "properties": {"topics": {"type": "array", "items": {"type": "string"}, "minItems": 1}, "session_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86400000}}},
          "Membership": {"type": "object", "properties": {"member_id": {"type": "string"}, "generation": {"type": "integer"},
            "assignments": {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": ["string", "integer"]}, "description": "[topic, partition]"}}}},
          "Delivery": {"type": "object", "properties": {"delivery_id": {"type": "string", "description": "topic:partition:offset:attempt"},
            "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}, "attempt": {"type": "integer"},
            "event": schema("CloudEvent"), "dead_letter_id": {"type": "string"}}},
          "Fetched": {"type": "object", "properties": {"deliveries": {"type": "array", "items": schema("Delivery")}, "generation": {"type": "integer"},
            "next_due_ms": {"type": ["integer", "null"], "description": "when a backed-off or in-flight event becomes deliverable (ms since the epoch)"}}},
          "GroupPartition": {"type": "object", "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"}, "member": {"type": ["string", "null"]},
            "committed": {"type": "integer"}, "end_offset": {"type": "integer"}, "lag_events": {"type": "integer"}, "lag_ms": {"type": "integer"},
            "inflight": {"type": "integer"}, "parked_keys": {"type": "integer"}}},
          "GroupDescription": {"type": "object", "properties": {"group": {"type": "string"}, "generation": {"type": "integer"},
            "members": {"type": "array", "items": schema("Membership")}, "partitions": {"type": "array", "items": schema("GroupPartition")}, "dead_letters": {"type": "integer"}}},
          "Seek": {"type": "object", "required": ["topic", "to"], "additionalProperties": false, "properties": {
            "topic": {"type": "string"}, "partition": {"type": "integer"},
            "to": {"oneOf": [{"enum": ["earliest", "latest"]},
                             {"type": "object", "required": ["offset"], "properties": {"offset": {"type": "integer"}}},
                             {"type": "object", "required": ["time_ms"], "properties": {"time_ms": {"type": "integer"}}}]}}},
          "Source": {"type": "object", "properties": {
            "name": {"type": "string"}, "kind": {"type": "string", "enum": ["postgres_cdc", "postgres_outbox", "sqlite_outbox"]},
            "state": {"type": "string", "enum": ["starting", "running", "snapshotting", "paused", "retrying", "failed", "stopped"]},
            "error": {"type": ["string", "null"]}, "events_total": {"type": "integer"}, "rows_total": {"type": "integer"},
            "restarts_total": {"type": "integer"}, "last_event_ms": {"type": "integer"},
            "slot_lag_bytes": {"type": "integer", "description": "-1 when unknown or not CDC"},
            "outbox_backlog_rows": {"type": "integer", "description": "-1 when unknown or not an outbox"},
            "snapshot_rows_done": {"type": "integer"}, "snapshot_rows_total": {"type": "integer"},
            "topics": {"type": "array", "items": {"type": "string"}, "description": "in GET /v1/sources and /v1/sources/{source}: the topics it writes, as names or patterns where `*` is any characters (a CDC source's routes and topic template, an outbox's topic_prefix followed by the aggregate type)"}}},
          "Sink": {"type": "object", "properties": {
            "name": {"type": "string"}, "kind": {"type": "string", "enum": ["postgres", "sqlite", "webhook"]},
            "group": {"type": "string"},
            "topics": {"type": "array", "items": {"type": "string"}, "description": "the topics it reads"},
            "started_ms": {"type": "integer", "description": "when this server process started the sink: the *_total figures and newest_event_ms count from then (the group's committed position is durable)"},
            "state": {"type": "string", "enum": ["starting", "running", "paused", "retrying", "failed", "stopped"]},
            "error": {"type": ["string", "null"]}, "events_applied_total": {"type": "integer"},
            "events_skipped_total": {"type": "integer"}, "events_rejected_total": {"type": "integer"},
            "batches_total": {"type": "integer"},
            "newest_event_ms": {"type": "integer", "description": "time of the newest applied event; 0 = none"},
            "last_applied_ms": {"type": "integer"},
            "rebuild": {"type": ["object", "null"], "properties": {
              "phase": {"enum": ["replaying", "swapping", "done", "failed"]},
              "events_replayed": {"type": "integer"}, "started_ms": {"type": "integer"},
              "finished_ms": {"type": "integer"}, "error": {"type": ["string", "null"]}}}}},
          "ReconcileRun": {"type": "object", "properties": {
            "name": {"type": "string"}, "repair": {"type": "boolean"}, "started_ms": {"type": "integer"},
            "duration_ms": {"type": "integer"}, "detect_ms": {"type": "integer"},
            "rows_source": {"type": "integer"}, "rows_projection": {"type": "integer"},
            "buckets": {"type": "integer"}, "buckets_differing": {"type": "integer"},
            "rows_shipped": {"type": "integer"}, "settled_in_flight": {"type": "integer"},
            "missing": {"type": "integer"}, "extra": {"type": "integer"}, "stale": {"type": "integer"},
            "keys": {"type": "object", "description": "up to keys_reported_max keys per kind (missing, extra, stale)"},
            "stale_columns": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}, "description": "for each reported stale key, the compared columns whose values differ"},
            "differences": {"type": "array", "description": "the first 10 stale keys, each differing column with the source's and the projection's values (text, cut to 200 bytes; null = NULL)", "items": {"type": "object", "properties": {"key": {"type": "string"}, "columns": {"type": "array", "items": {"type": "object", "properties": {"column": {"type": "string"}, "source": {"type": ["string", "null"]}, "projection": {"type": ["string", "null"]}}}}}}},
            "repair_refused": {"type": "string", "description": "why the repair appended nothing (a correction would have been dead-lettered or written a value the source does not hold)"},
            "corrections": {"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}, "kind": {"enum": ["missing", "extra", "stale"]}, "id": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}, "state": {"enum": ["applied", "pending", "dead_lettered", "ineffective"]}, "error": {"type": "string"}}}},
            "applied": {"type": "integer"}, "pending": {"type": "integer"}, "dead_lettered": {"type": "integer"}, "ineffective": {"type": "integer"},
            "drift_remaining": {"type": "integer", "description": "keys still drifted after the repair's re-check (without repair: the drift found)"},
            "keys_remaining": {"type": "array", "items": {"type": "string"}},
            "clean": {"type": "boolean", "description": "no drift is left (the CLI's --repair exits 0 only then)"},
            "repaired": {"type": "integer"}, "truncated": {"type": "boolean", "description": "more keys drifted than drifted_keys_max: counts are lower bounds"},
            "not_compared": {"type": "array", "items": {"type": "string"}}}},
          "Reconciliation": {"type": "object", "properties": {
            "name": {"type": "string"}, "sink": {"type": "string"}, "state": {"enum": ["idle", "running"]},
            "policy": {"enum": ["report", "repair"]}, "interval_ms": {"type": "integer"},
            "runs_total": {"type": "integer"}, "last_run": {"type": ["object", "null"]},
            "history": {"type": "array", "items": {"type": "object"}}}},
          "HistoryFamily": {"type": "object", "required": ["series", "merged_into_other"], "properties": {
            "series": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": ["number", "null"]}}, "description": "name → one value per sample time"},
            "merged_into_other": {"type": "integer", "description": "names beyond series_max summed into `(other)` at the latest sample"}}},
          "History": {"type": "object", "required": ["started_ms", "interval_ms", "seconds_max", "series_max", "times_ms", "produce_rate", "lag_events", "dead_letters", "applied_rate"], "properties": {
            "started_ms": {"type": "integer", "description": "when the server started keeping history"},
            "interval_ms": {"type": "integer"}, "seconds_max": {"type": "integer"}, "series_max": {"type": "integer"},
            "times_ms": {"type": "array", "items": {"type": "integer"}, "description": "sample times, oldest first"},
            "produce_rate": schema("HistoryFamily"), "lag_events": schema("HistoryFamily"),
            "dead_letters": schema("HistoryFamily"), "applied_rate": schema("HistoryFamily")}},
          "AuditRecord": {"type": "object", "required": ["at", "principal", "action", "resource", "outcome", "status"], "properties": {
            "at": {"type": "string", "format": "date-time", "description": "when the action finished, RFC 3339 UTC"},
            "principal": {"type": "string", "description": "who took it (`anonymous` with authentication off)"},
            "action": {"type": "string", "enum": ["topic.create", "topic.delete", "group.delete", "group.seek", "dead_letter.retry", "dead_letter.discard", "source.pause", "source.resume", "sink.pause", "sink.resume", "sink.rebuild", "reconciliation.run"]},
            "resource": {"type": "string", "description": "`topic/<name>`, `group/<name>`, `group/<name>/topic/<topic>` (seek), `group/<name>/dlq/<id>`, `source/<name>`, `sink/<name>` or `reconciliation/<name>`"},
            "outcome": {"type": "string", "enum": ["ok", "failed"]},
            "status": {"type": "integer", "description": "the HTTP status the action was answered with"}}},
          "DeadLetter": {"type": "object", "properties": {"id": {"type": "string"}, "group": {"type": "string"}, "topic": {"type": "string"},
            "partition": {"type": "integer"}, "offset": {"type": "integer"}, "event": schema("CloudEvent"), "attempts": {"type": "integer"},
            "errors": {"type": "array", "items": {"type": "string"}}, "dead_at_ms": {"type": "integer"}, "state": {"enum": ["dead", "retrying"]}}}
        }
      }
    })
}
