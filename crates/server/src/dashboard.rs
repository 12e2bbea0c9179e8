//! The dashboard: a single page at `GET /` with its stylesheet and script at `GET /ui/{asset}`
//! (`dashboard.css`, `dashboard.js`), hand-written HTML, CSS and JavaScript from
//! `crates/server/assets/`. The page polls the public JSON API (`/v1/topics`, `/v1/groups`,
//! `/v1/sources`, `/v1/sinks`, `/v1/reconciliations`, `/v1/history`, `/v1/audit` and the
//! dead-letter routes) every 2 s. It opens with the question that matters — does each projection
//! match its source right now? — one row per sink: the last reconciliation verdict and its age,
//! freshness, lag and dead letters; then the flow (which sources write which topics, by the
//! topic patterns `/v1/sources` lists, which sinks read them, which reconciliations check them), the plots, topics with their produce rates (a count that
//! includes reconciliation corrections says so), consumer groups, sources, dead letters
//! (inspect, retry, discard), reconciliation runs and the audit trail (the newest administrative
//! actions: when, who, what, outcome).
//!
//! The plots draw the server's own history (`history.rs`: one sample a second, the last hour),
//! fetched whole for the plots' window when the page opens and then a few seconds at a time, so
//! a page opened after a burst shows it. A sink's counters start with the server process: the
//! page labels them "since restart at HH:MM:SS" and says how fresh the tables are from the
//! group's committed position (durable), never "nothing applied" for a sink that is caught up.
//!
//! Sign-in: when any API call answers 401, the page hides its figures and shows a sign-in form;
//! the token typed there is sent once as `{"token": ...}` (JSON, same origin) to
//! `POST /v1/session`, which sets the HttpOnly session cookie, and the field is cleared — the
//! token is never kept in storage, a cookie the script can read, or a URL. "Sign out" sends
//! `DELETE /v1/session`. On load the page asks `GET /v1/session` who it acts as, and shows the
//! principal and the sign-out button when the answer is `{"principal": name}`.
//!
//! Invariants:
//! - the assets are compiled into the binary (`include_str!`), so the page works offline and
//!   from any working directory, and nothing is fetched from another origin: the
//!   `content-security-policy` header allows only this server (`default-src 'self'`);
//! - every answer has its exact content type, `cache-control: no-cache` (the browser revalidates,
//!   so a page never runs against a server of another version) and
//!   `x-content-type-options: nosniff`;
//! - the script puts API strings into the DOM with `textContent` and attributes only, never as
//!   HTML (the server's dashboard test rejects `innerHTML` and the other HTML-parsing calls);
//! - the dashboard is not part of the `/v1` API: it is absent from the OpenAPI document and adds
//!   no route under `/v1`.
//!
//! Stable `data-testid` attributes for tests: `panel-{projections,flow,throughput,lag,sources,
//! topics,groups,dlq,reconciliations}`, per sink `projection-row-<sink>`,
//! `projection-{verdict,fresh,lag,dead}-<sink>` (the verdict cell's `data-verdict` is `in-sync`,
//! `drift`, `failed` or `unknown`), `projections-empty`, `flow-topic-<topic>`, `flow-sources`,
//! `flow-empty`, `topic-explain-<topic>` (how its count is made up), `panel-applied`,
//! `chart-throughput`, `chart-lag`, `chart-applied` (each line a `polyline` with `data-series`,
//! `data-peak`, `data-peak-ms`, `data-last`), `updated`, `error-banner`,
//! `action-status`, `topic-row-<topic>`, `topic-rate-<topic>`, `topic-events-<topic>`,
//! `topic-owner-<topic>` (an owned topic's owner),
//! `group-row-<group>`, `group-lag-<group>`, `group-dead-<group>`, `group-sink-<group>`,
//! `group-partition-<group>-<topic>-<partition>`, `source-row-<source>`,
//! `reconciliation-row-<name>`, `panel-audit`, `audit-empty`, per audit record by its place
//! newest first (`<n>` from 0; they move as actions arrive) `audit-row-<n>`,
//! `audit-principal-<n>`, `audit-action-<n>`, `audit-resource-<n>`, `audit-outcome-<n>`; for
//! signing in `login` (the section), `login-form`, `login-token`, `login-submit`, `login-error`,
//! and in the header `principal` and `logout`; `dlq-group-<group>`, and per dead letter (its id is
//! `topic:partition:offset`, unique only within its group, hence the group in the name)
//! `dlq-row-<group>/<id>`, `dlq-state-<group>/<id>`, `dlq-inspect-<group>/<id>`,
//! `dlq-retry-<group>/<id>`, `dlq-discard-<group>/<id>`; the inspect dialog is `dlq-detail`
//! with `dlq-detail-errors`, `dlq-detail-event`, `dlq-detail-retry`, `dlq-detail-discard`,
//! `dlq-detail-close`; an empty panel shows `<panel>-empty`.

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::extract::ApiPath;
use crate::problem::Problem;

/// The page.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// What the browser may load: only this server's own files and API (the favicon is an empty
/// `data:` URL, so the browser does not ask for `/favicon.ico`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A file under `/ui/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file under `/ui/`; the page refers to each of them.
const ASSETS: &[Asset] = &[
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/dashboard.css"),
    },
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/dashboard.js"),
    },
];

fn respond(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard page.
pub async fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/{asset}`: one of the page's files, or a 404 problem.
pub async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a.content_type, a.body),
        None => Problem::not_found(
            "no-such-asset",
            "No such dashboard file",
            format!("the dashboard has no file {name:?}; see /"),
        )
        .into_response(),
    }
}
