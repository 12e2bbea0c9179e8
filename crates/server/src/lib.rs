//! The Driftless HTTP API over [`driftless_broker::Broker`]: topics, CloudEvents produce (structured,
//! batch and binary mode), consumer groups with long-poll fetch and a credit-based SSE stream,
//! acknowledgements, seeks, the dead-letter queue, Prometheus metrics, health checks and the
//! OpenAPI document.
//!
//! ```no_run
//! # fn main() -> Result<(), driftless_server::ServerError> {
//! let config = driftless_server::ServerConfig::default(); // 127.0.0.1:7070, ./driftless-data
//! driftless_server::run(config) // until SIGTERM or SIGINT
//! # }
//! ```
//!
//! Invariants:
//! - the broker is synchronous (appends wait for fsync), so every broker call runs on tokio's
//!   blocking pool, never on an executor thread;
//! - waiting (long-poll, streaming) holds no thread: it awaits [`Broker::listen`], created
//!   *before* the fetch it follows so no wake-up is lost, or the broker's next retry deadline;
//! - every request passes the authentication layer (`auth.rs`) before its handler: with
//!   `[auth] enabled` it is authenticated and authorized by the (method, route) policy table,
//!   and a route without a row is refused; otherwise it acts as `anonymous`;
//! - every error is an RFC 9457 problem document ([`Problem`]); broker errors get their status
//!   from one table, [`Problem::from_broker`];
//! - everything is bounded: request bodies by `request_body_bytes_max`, long-poll waits by
//!   `fetch_wait_ms_max`, a stream's unsent deliveries by the credit its client granted (at most
//!   `stream_credit_max`);
//! - every connection has a header, body and idle timeout and at most `connections_max` are
//!   open (`conn.rs`); under `[server.tls]` every connection is TLS (`tls.rs`);
//! - every request passes the cross-site and rebinding guard (`guard.rs`) before anything else,
//!   with or without authentication; the open-file limit is raised to the hard limit at start and shared
//!   between the log and the connections (`open_files.rs`);
//! - shutdown stops accepting, ends long-polls and streams, lets in-flight requests finish and
//!   stops every task, all within one `shutdown_grace_ms`, then drops the broker, which flushes
//!   the log.

// The OpenAPI document is one `json!` literal, nested deeper than the default limit allows.
#![recursion_limit = "256"]

mod audit;
mod auth;
mod cloudevents;
mod config;
mod conn;
mod dashboard;
mod error;
mod extract;
mod guard;
mod history;
pub mod metrics;
pub mod open_files;
mod openapi;
mod peer;
mod problem;
mod routes;
mod stream;
mod tls;
mod topic_use;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use driftless_broker::Broker;
use driftless_connect::Sources;
use driftless_reconcile::Reconcilers;
use driftless_sink::Sinks;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{
    AuthSettings, Overrides, ServerConfig, ServerSettings, TlsSettings, DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
};
pub use error::ServerError;
pub use openapi::openapi;
pub use tls::TlsError;

/// Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs, may change at
/// any time): the CloudEvents HTTP binding's decoder of a produce request.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::cloudevents::{parse_request, BATCH, STRUCTURED};
}
pub use problem::{FaultAt, Problem, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX};

/// The authorization policy table's rows as `(METHOD, route template)`, for the acceptance test
/// that checks it against the OpenAPI document (not an API: hidden from the docs).
#[doc(hidden)]
pub fn authorization_policy_routes() -> Vec<(&'static str, &'static str)> {
    auth::policy::POLICIES.iter().map(|p| (p.method, p.route)).collect()
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct AppState {
    pub broker: Arc<Broker>,
    /// The running sources (none in [`router`]).
    pub sources: Arc<Sources>,
    /// The running sinks (none in [`router`]).
    pub sinks: Arc<Sinks>,
    /// The configured reconciliations (none in [`router`]).
    pub reconcilers: Arc<Reconcilers>,
    pub fetch_wait_ms_max: u64,
    pub stream_credit_max: u64,
    /// How long a handler waits for a request's whole body.
    pub body_read_timeout: Duration,
    /// `[server] request_body_bytes_max`, named in the 413 that refuses a longer body.
    pub request_body_bytes_max: usize,
    /// The configured sources, sinks and reconciliations by the topics they use: deleting a
    /// topic in use needs `?force=true`.
    pub topic_users: topic_use::TopicUsers,
    /// Most per-partition series of one `/metrics` family.
    pub metrics_partition_series_max: usize,
    /// Open streams by (group, member), holding their credit.
    pub streams: Mutex<HashMap<(String, String), Arc<stream::Credit>>>,
    /// Becomes `true` when shutdown starts.
    pub shutdown: watch::Sender<bool>,
    /// `[auth] enabled`: requests act as authenticated principals, so topic ownership is
    /// enforced (with it off every request is `anonymous` and ownership is only recorded).
    pub auth_enabled: bool,
    /// Authentication: tokens, sessions, client subjects, refusal counts.
    pub auth: Arc<auth::AuthState>,
    /// The last hour of rates and lags (`history.rs`), filled by the sampler [`serve`] starts.
    pub history: Arc<Mutex<history::History>>,
}

impl AppState {
    /// Whether shutdown has started.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// How often an idle long-poll or stream refreshes its member's session: a third of the
    /// broker's session timeout, between 100 ms and 1 s (a member may have joined with a
    /// shorter timeout than the broker's default, which `Membership` does not tell).
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis((self.broker.config().session_timeout_ms / 3).clamp(100, 1_000))
    }
}

/// The API's routes over `broker`, configured by `config`'s `[server]` limits. Serve it with
/// `axum::serve` on any listener (tests bind `127.0.0.1:0`); [`serve`] adds the connection
/// timeouts and bound.
/// Sources and sinks are not started here; [`serve`] starts them.
/// With `[auth] enabled`, a tokens file that cannot be opened is logged and every token is
/// refused ([`serve`] refuses to start instead).
pub fn router(broker: Arc<Broker>, config: &ServerConfig) -> Router {
    let none = (Arc::new(Sources::none()), Arc::new(Sinks::none()), Arc::new(Reconcilers::none()));
    let clock: Arc<dyn driftless_core::Clock> = Arc::new(driftless_core::SystemClock);
    let auth = auth::AuthState::new(config, Arc::clone(&clock)).unwrap_or_else(|e| {
        tracing::error!("authentication cannot use its tokens file ({e}); refusing every token");
        auth::AuthState::refusing_tokens(config, clock)
    });
    build(broker, config, none, Arc::new(auth)).0
}

fn build(
    broker: Arc<Broker>,
    config: &ServerConfig,
    (sources, sinks, reconcilers): (Arc<Sources>, Arc<Sinks>, Arc<Reconcilers>),
    auth: Arc<auth::AuthState>,
) -> (Router, Arc<AppState>) {
    let s = &config.server;
    let state = Arc::new(AppState {
        broker,
        sources,
        sinks,
        reconcilers,
        fetch_wait_ms_max: s.fetch_wait_ms_max,
        stream_credit_max: s.stream_credit_max,
        body_read_timeout: Duration::from_millis(s.body_read_timeout_ms),
        request_body_bytes_max: s.request_body_bytes_max,
        topic_users: topic_use::TopicUsers::from_config(
            &config.sources,
            &config.sinks,
            &config.reconciles,
        ),
        metrics_partition_series_max: s.metrics_partition_series_max,
        streams: Mutex::new(HashMap::new()),
        shutdown: watch::channel(false).0,
        auth_enabled: config.auth.enabled,
        auth: Arc::clone(&auth),
        history: Arc::new(Mutex::new(history::History::new(routes::now_ms()))),
    });
    let member = "/v1/groups/{group}/members/{member}";
    let app = Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{asset}", get(dashboard::asset))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/v1/session", get(auth::who_am_i).post(auth::sign_in).delete(auth::sign_out))
        .route("/v1/openapi.json", get(routes::openapi_doc))
        .route("/v1/topics", get(routes::list_topics).post(routes::create_topic))
        .route("/v1/topics/{topic}", get(routes::describe_topic).delete(routes::delete_topic))
        .route("/v1/topics/{topic}/events", post(routes::produce))
        .route("/v1/groups", get(routes::list_groups))
        .route("/v1/groups/{group}", get(routes::describe_group).delete(routes::delete_group))
        .route("/v1/groups/{group}/members", post(routes::join))
        .route(member, axum::routing::delete(routes::leave))
        .route(&format!("{member}/heartbeat"), post(routes::heartbeat))
        .route(&format!("{member}/events"), get(routes::fetch))
        .route(&format!("{member}/stream"), get(stream::open))
        .route(&format!("{member}/credit"), post(stream::add_credit))
        .route("/v1/groups/{group}/ack", post(routes::ack))
        .route("/v1/groups/{group}/nack", post(routes::nack))
        .route("/v1/groups/{group}/seek", post(routes::seek))
        .route("/v1/groups/{group}/dlq", get(routes::list_dead_letters))
        .route(
            "/v1/groups/{group}/dlq/{id}",
            get(routes::dead_letter).delete(routes::discard_dead_letter),
        )
        .route("/v1/groups/{group}/dlq/{id}/retry", post(routes::retry_dead_letter))
        .route("/v1/sources", get(routes::list_sources))
        .route("/v1/sources/{source}", get(routes::describe_source))
        .route("/v1/sources/{source}/pause", post(routes::pause_source))
        .route("/v1/sources/{source}/resume", post(routes::resume_source))
        .route("/v1/sinks", get(routes::list_sinks))
        .route("/v1/sinks/{sink}", get(routes::describe_sink))
        .route("/v1/sinks/{sink}/pause", post(routes::pause_sink))
        .route("/v1/sinks/{sink}/resume", post(routes::resume_sink))
        .route("/v1/sinks/{sink}/rebuild", post(routes::rebuild_sink))
        .route("/v1/reconciliations", get(routes::list_reconciliations))
        .route("/v1/reconciliations/{name}", get(routes::describe_reconciliation))
        .route("/v1/reconciliations/{name}/run", post(routes::run_reconciliation))
        .route("/v1/audit", get(audit::list))
        .route("/v1/history", get(history::get))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(s.request_body_bytes_max))
        // Authentication and authorization by the policy table (`auth.rs`); with `[auth]`
        // off, every request is `anonymous` and allowed. `Router::layer` wraps only the routes
        // added before it: every route goes above this line, with a row in `auth/policy.rs`.
        .layer(axum::middleware::from_fn_with_state(auth, auth::layer))
        // Outermost: cross-site and rebinding refusals come before authentication.
        .layer(axum::middleware::from_fn_with_state(Arc::new(guard::Guard::new(s)), guard::check))
        .with_state(Arc::clone(&state));
    (app, state)
}

/// Starts the configured sources and sinks, serves the API on `listener` until `signal` completes, then
/// shuts down gracefully within `shutdown_grace_ms`: stops accepting, ends long-polls and
/// streams, lets in-flight requests finish, and stops reconciliations, sinks and sources (what
/// they had not made durable is read again on the next start) — all at once, so the whole
/// shutdown takes at most the grace period. The broker is not dropped here (the caller owns
/// it). With `[server.tls]`, the listener speaks https only, and the certificate is reloaded
/// when its files change.
pub async fn serve<F>(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: &ServerConfig,
    signal: F,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Before anything starts: a bad certificate stops the start-up with nothing to undo.
    let tls = load_tls(config)?;
    serve_with(listener, broker, config, tls, signal).await
}

/// `[server.tls]` loaded, if configured.
fn load_tls(config: &ServerConfig) -> Result<Option<tls::TlsServer>, ServerError> {
    match &config.server.tls {
        Some(settings) => Ok(Some(tls::TlsServer::load(settings).map_err(ServerError::Tls)?)),
        None => Ok(None),
    }
}

/// [`serve`] with `[server.tls]` already loaded.
async fn serve_with<F>(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: &ServerConfig,
    tls: Option<tls::TlsServer>,
    signal: F,
) -> Result<(), ServerError>
where
    F: Future<Output = ()> + Send + 'static,
{
    // Authentication first: a tokens file it cannot use stops the start before any task runs.
    let clock: Arc<dyn driftless_core::Clock> = Arc::new(driftless_core::SystemClock);
    let auth = auth::AuthState::new(config, clock)
        .map(Arc::new)
        .map_err(|e| ServerError::InvalidConfig(format!("[auth] {e}")))?;
    let sources = Arc::new(
        Sources::start(config.sources.clone(), Arc::clone(&broker)).map_err(ServerError::Source)?,
    );
    let sinks = match Sinks::start(config.sinks.clone(), Arc::clone(&broker)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            sources.shutdown().await;
            return Err(ServerError::Sink(e));
        }
    };
    let reconcilers =
        match Reconcilers::start(config.reconciles.clone(), &config.sinks, Arc::clone(&broker)) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                sinks.shutdown().await;
                sources.shutdown().await;
                return Err(ServerError::Reconcile(e));
            }
        };
    let parts = (Arc::clone(&sources), Arc::clone(&sinks), Arc::clone(&reconcilers));
    let (app, state) = build(broker, config, parts, auth);
    let s = &config.server;
    let limits = conn::Limits {
        connections_max: s.connections_max,
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
        keep_alive_idle: Duration::from_millis(s.keep_alive_idle_ms),
        response_write_stall: Duration::from_millis(s.response_write_timeout_ms),
    };
    let acceptor = tls.map(|t| {
        tokio::spawn(tls::watch(Arc::clone(&t.cert), state.shutdown.subscribe()));
        t.acceptor
    });
    tokio::spawn(history::run(
        Arc::clone(&state.broker),
        Arc::clone(&sinks),
        Arc::clone(&state.history),
        Arc::new(driftless_core::SystemClock),
        state.shutdown.subscribe(),
    ));
    let server = conn::serve(listener, app, limits, acceptor, state.shutdown.subscribe());
    let mut server = std::pin::pin!(server);
    let mut server_done = false;
    tokio::select! {
        () = &mut server => server_done = true,
        () = signal => {}
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests and tasks");
    // Everything stops at once and within one grace period: the HTTP side (no new connections,
    // long-polls and streams end, in-flight requests finish) and every task (reconciliations,
    // then sinks — a sink's unacknowledged batch is simply delivered again after restart —
    // then sources, whose unacknowledged reads are read again). A task that does not end in
    // time is left behind, and the process exits anyway.
    state.shutdown.send_replace(true);
    let http = async {
        if !server_done {
            (&mut server).await;
        }
    };
    let tasks = async {
        reconcilers.shutdown().await;
        sinks.shutdown().await;
        sources.shutdown().await;
    };
    let grace = Duration::from_millis(s.shutdown_grace_ms);
    if tokio::time::timeout(grace, async { tokio::join!(http, tasks) }).await.is_err() {
        tracing::warn!(
            shutdown_grace_ms = s.shutdown_grace_ms,
            "requests or tasks still running after the shutdown grace period; stopping anyway"
        );
    }
    Ok(())
}

/// After [`serve`] returns, how long blocking calls still running may take before the process
/// exits without them.
const RUNTIME_STOP_MS: u64 = 1_000;

/// Opens the broker, serves until SIGTERM or SIGINT, shuts down gracefully and drops the broker
/// (flushing the log). Prints `listening on http://ADDR` (`https://` under TLS) to stderr once
/// bound. Refuses a non-loopback listen address without authentication
/// ([`ServerConfig::check_exposure`]).
pub fn run(mut config: ServerConfig) -> Result<(), ServerError> {
    config.validate()?;
    config.check_exposure()?;
    let budget = open_files_budget(&mut config)?;
    let dir = config.server.data_dir.clone();
    // The log keeps at most its share of descriptors open (idle partitions hold none), so the
    // number of partitions is not capped by the open-file limit.
    let log_options = driftless_log::LogOptions {
        open_files_max: budget.log_open_files_max,
        ..driftless_log::LogOptions::new(&dir)
    };
    let broker = Arc::new(
        Broker::open_with(
            log_options,
            Arc::new(driftless_core::SystemClock),
            config.broker.clone(),
        )
        .map_err(|source| ServerError::OpenBroker { dir: dir.clone(), source })?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("driftless-http")
        .build()
        .map_err(ServerError::Runtime)?;
    let result = runtime.block_on(async {
        // Loaded before binding, so `listening on https://…` is announced only when it is true.
        let tls = load_tls(&config)?;
        let addr = &config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
        let scheme = if config.server.tls.is_some() { "https" } else { "http" };
        eprintln!("listening on {scheme}://{local}");
        tracing::info!(%local, data_dir = %dir.display(), "driftless server started");
        serve_with(listener, Arc::clone(&broker), &config, tls, shutdown_signal()).await
    });
    // `serve` already spent the grace period; blocking broker calls still running (an fsync)
    // get a moment more, so the broker can usually be dropped (flushed) cleanly.
    runtime.shutdown_timeout(Duration::from_millis(RUNTIME_STOP_MS));
    match Arc::try_unwrap(broker) {
        Ok(broker) => drop(broker),
        Err(_) => tracing::warn!("a broker call outlived the shutdown grace period"),
    }
    tracing::info!("stopped");
    result
}

/// Raises the open-file limit to the hard limit, logs it, and shares it between the log and the
/// connections: `config.server.connections_max` is lowered to what the limit allows.
fn open_files_budget(config: &mut ServerConfig) -> Result<open_files::FileBudget, ServerError> {
    let limit = open_files::raise_open_files_limit();
    let configured = config.server.connections_max;
    let budget = open_files::open_file_budget(limit.soft, limit.hard, configured)?;
    tracing::info!(
        soft_before = limit.before,
        soft = limit.soft,
        hard = limit.hard,
        log_open_files_max = budget.log_open_files_max,
        connections_max = budget.connections_max,
        "open-file limit"
    );
    if budget.connections_max < configured {
        tracing::warn!(
            "server.connections_max lowered from {configured} to {} so that the log keeps half \
             of the open-file limit ({}); raise the limit (`ulimit -n`, systemd `LimitNOFILE=`) \
             to allow more",
            budget.connections_max,
            limit.soft
        );
    }
    config.server.connections_max = budget.connections_max;
    Ok(budget)
}

/// `driftless serve`: resolves the configuration from the file and the overrides, then [`run`]s.
pub fn run_with_overrides(overrides: &Overrides) -> Result<(), ServerError> {
    run(overrides.resolve()?)
}

/// Completes on SIGINT or SIGTERM. If a handler cannot be installed it is logged and that
/// signal is not waited for.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
