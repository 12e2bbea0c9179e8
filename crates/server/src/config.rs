//! The server's configuration: a TOML file with `[server]`, `[auth]` and `[broker]` tables and
//! `[[source]]`, `[[sink]]` and `[[reconcile]]` entries, overridden by
//! command-line flags and `DRIFTLESS_*` environment variables.
//!
//! Invariants: every table denies unknown keys, so a typo is a start-up error naming the key
//! and its line, never a silently ignored setting; every key has a default, so an empty file
//! (or none) is a valid configuration; every limit carries its unit in its name.

use std::path::{Path, PathBuf};

use driftless_broker::BrokerConfig;
use driftless_connect::SourceConfig;
use driftless_reconcile::ReconcileConfig;
use driftless_sink::SinkConfig;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listener and request limits.
    pub server: ServerSettings,
    /// Authentication and authorization.
    pub auth: AuthSettings,
    /// Broker limits and delivery settings.
    pub broker: BrokerConfig,
    /// `[[source]]` entries: databases whose changes or outbox rows flow into topics.
    #[serde(rename = "source", skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
    /// `[[sink]]` entries: projections and webhooks kept in sync from topics.
    #[serde(rename = "sink", skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkConfig>,
    /// `[[reconcile]]` entries: projections compared with their source of truth.
    #[serde(rename = "reconcile", skip_serializing_if = "Vec::is_empty")]
    pub reconciles: Vec<ReconcileConfig>,
}

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on, `host:port`.
    pub listen: String,
    /// Where the broker keeps its log.
    pub data_dir: PathBuf,
    /// Largest accepted request body.
    pub request_body_bytes_max: usize,
    /// Longest a long-poll fetch waits for events, whatever `wait_ms` the client asks for.
    pub fetch_wait_ms_max: u64,
    /// Most credit a streaming consumer can hold (deliveries the server may send unasked).
    pub stream_credit_max: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the server
    /// stops anyway.
    pub shutdown_grace_ms: u64,
    /// Most connections open at once; further ones wait in the listen backlog until one closes.
    pub connections_max: usize,
    /// Longest from a request's first byte to its complete head (slow clients are closed).
    pub header_read_timeout_ms: u64,
    /// Longest a handler waits for a request's whole body once it asks for it (408 after).
    pub body_read_timeout_ms: u64,
    /// Longest a connection may stay open with no request (before its first, between two).
    pub keep_alive_idle_ms: u64,
    /// Longest a response write may make no progress (the client stopped reading) before the
    /// connection is closed.
    pub response_write_timeout_ms: u64,
    /// Most per-partition series in one `/metrics` family; beyond it, consumer-group figures are
    /// per group and end offsets per topic.
    pub metrics_partition_series_max: usize,
    /// Names (without port) a request's `Host` may carry besides the loopback names and the
    /// listen address's own IP: what clients type to reach this server (`driftless.internal`,
    /// a pod IP). Anything else is refused 421, which stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Web origins (`https://console.example:8443`) whose pages may call the API besides the
    /// server's own; a request from any other `Origin` is refused 403.
    pub allowed_origins: Vec<String>,
    /// Start even when listening on a non-loopback address with `[auth]` off. Anyone who can
    /// reach the port can then do anything: only behind a firewall or an authenticating proxy.
    pub insecure_allow_unauthenticated_remote: bool,
    /// `[server.tls]`: serve https only, with this certificate (and optionally mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

/// The `[server.tls]` table: the API's certificate, and optional client certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain (PEM), leaf first. Reloaded when the file changes.
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1). Reloaded with the
    /// certificate.
    pub key_file: PathBuf,
    /// CA certificates (PEM) that sign client certificates: turns on mutual TLS, and a verified
    /// client's subject common name becomes its principal.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: refuse clients without a certificate at the handshake. When
    /// false (the default), they may still connect and authenticate with a token.
    #[serde(default)]
    pub client_cert_required: bool,
}

/// The `[auth]` table: whether requests must authenticate, where the API tokens are, the
/// dashboard's sessions, and what each mutual-TLS client subject may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Whether requests must authenticate (deny by default once on).
    pub enabled: bool,
    /// The tokens file `driftless token` writes; `<data_dir>/tokens.json` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// How long a dashboard session lasts after sign-in (it also ends with its token).
    pub session_ttl_ms: u64,
    /// Most dashboard sessions open at once; a sign-in beyond it is refused (429).
    pub sessions_max: usize,
    /// Scopes of each mutual-TLS client, by its certificate's subject common name (which is
    /// the principal); a verified subject not listed here may do nothing.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub clients: std::collections::BTreeMap<String, Vec<String>>,
}

/// Default `auth.session_ttl_ms`: 12 hours.
pub const SESSION_TTL_MS_DEFAULT: u64 = 43_200_000;
/// Largest accepted `auth.session_ttl_ms`: 7 days.
pub const SESSION_TTL_MS_MAX: u64 = 604_800_000;
/// Largest accepted `auth.sessions_max`.
pub const SESSIONS_MAX_MAX: usize = 1_000_000;
/// Most `[auth.clients]` entries.
pub const AUTH_CLIENTS_MAX: usize = 10_000;
/// Longest client subject accepted in `[auth.clients]`, in bytes.
pub const CLIENT_SUBJECT_BYTES_MAX: usize = 256;

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            tokens_file: None,
            session_ttl_ms: SESSION_TTL_MS_DEFAULT,
            sessions_max: 10_000,
            clients: std::collections::BTreeMap::new(),
        }
    }
}

impl AuthSettings {
    /// The tokens file: `tokens_file`, else `<data_dir>/tokens.json`.
    pub fn tokens_path(&self, data_dir: &Path) -> PathBuf {
        self.tokens_file.clone().unwrap_or_else(|| data_dir.join(TOKENS_FILE_NAME))
    }

    /// Checks the table's ranges, subjects and scopes.
    fn validate(&self) -> Result<(), Invalid> {
        let auth = |key: &str| KeyPath::root().key("auth").key(key);
        let bad = |key: KeyPath, reason: String| Err(Invalid { key, reason });
        if self.session_ttl_ms == 0 || self.session_ttl_ms > SESSION_TTL_MS_MAX {
            return bad(
                auth("session_ttl_ms"),
                format!(
                    "must be 1 to {SESSION_TTL_MS_MAX} ms (7 days), got {}",
                    self.session_ttl_ms
                ),
            );
        }
        if self.sessions_max == 0 || self.sessions_max > SESSIONS_MAX_MAX {
            return bad(
                auth("sessions_max"),
                format!("must be 1 to {SESSIONS_MAX_MAX}, got {}", self.sessions_max),
            );
        }
        if self.clients.len() > AUTH_CLIENTS_MAX {
            return bad(
                auth("clients"),
                format!(
                    "has {} entries; at most {AUTH_CLIENTS_MAX} are accepted",
                    self.clients.len()
                ),
            );
        }
        for (subject, scopes) in &self.clients {
            let at = auth("clients").key(subject);
            if subject.is_empty() || subject.len() > CLIENT_SUBJECT_BYTES_MAX {
                return bad(
                    at,
                    format!(
                        "the subject must be 1 to {CLIENT_SUBJECT_BYTES_MAX} bytes (a client \
                         certificate's subject common name)"
                    ),
                );
            }
            if scopes.len() > driftless_auth::SCOPES_PER_TOKEN_MAX {
                return bad(
                    at,
                    format!(
                        "has {} scopes; at most {} are accepted",
                        scopes.len(),
                        driftless_auth::SCOPES_PER_TOKEN_MAX
                    ),
                );
            }
            if let Err(e) = driftless_auth::Grants::parse(scopes) {
                return bad(at, e.to_string());
            }
        }
        Ok(())
    }
}

/// The tokens file's name in the data directory (unless `auth.tokens_file` says otherwise).
pub const TOKENS_FILE_NAME: &str = "tokens.json";

/// Largest `server.fetch_wait_ms_max`: one hour (a long poll longer than that is a mistake).
pub const FETCH_WAIT_MS_MAX_LIMIT: u64 = 3_600_000;
/// Largest accepted value of any `…_ms` setting of the `[server]` table: one day. Durations are
/// added to clock readings, and an unbounded one overflows them.
pub const SERVER_MS_MAX: u64 = 86_400_000;
/// Largest accepted `stream_credit_max` (credit is summed with what a client grants).
pub const STREAM_CREDIT_MAX_MAX: u64 = 1 << 32;
/// Largest accepted `connections_max` (each connection needs a file descriptor).
pub const CONNECTIONS_MAX_MAX: usize = 1 << 20;
/// Most entries of `allowed_hosts` and of `allowed_origins` (each request is compared with
/// them in turn).
pub const ALLOWED_ENTRIES_MAX: usize = 256;
/// Longest accepted entry of `allowed_hosts` or `allowed_origins`, in bytes (a DNS name is at
/// most 253; an origin adds a scheme and a port).
pub const ALLOWED_ENTRY_BYTES_MAX: usize = 300;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./driftless-data";

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_string(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            request_body_bytes_max: 8 << 20,
            fetch_wait_ms_max: 30_000,
            stream_credit_max: 10_000,
            shutdown_grace_ms: 10_000,
            connections_max: 4_096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 60_000,
            keep_alive_idle_ms: 60_000,
            response_write_timeout_ms: 60_000,
            metrics_partition_series_max: 10_000,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            insecure_allow_unauthenticated_remote: false,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    ///
    /// Every error is a [`ServerError::Setting`]: the file, the line and column of the key at
    /// fault (or of its table when the key is not written), the key path
    /// (`source[1].heartbeat_interval_ms`) and what is expected.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ServerError> {
        let root = toml::de::DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Document::syntax_error(text, origin, span, e.message())
        })?;
        let doc = Document { text, origin, root };
        doc.check_sources()?;
        let config = Self::deserialize(toml::de::Deserializer::from(doc.root.clone()))
            .map_err(|e| doc.serde_error(&e))?;
        config.check().map_err(|invalid| doc.at(&invalid.key, &invalid.reason))?;
        Ok(config)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ServerError::ReadConfig { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, path)
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), ServerError> {
        self.check().map_err(|invalid| {
            ServerError::InvalidConfig(format!("{}: {}", invalid.key, invalid.reason))
        })
    }

    /// [`ServerConfig::validate`], naming the key path of the setting at fault.
    fn check(&self) -> Result<(), Invalid> {
        let s = &self.server;
        let server = |key: &str| KeyPath::root().key("server").key(key);
        let bad = |key: KeyPath, reason: String| Err(Invalid { key, reason });
        for (name, value, max) in [
            ("request_body_bytes_max", s.request_body_bytes_max as u64, REQUEST_BODY_BYTES_MAX_MAX),
            ("stream_credit_max", s.stream_credit_max, STREAM_CREDIT_MAX_MAX),
            ("connections_max", s.connections_max as u64, CONNECTIONS_MAX_MAX as u64),
            (
                "metrics_partition_series_max",
                s.metrics_partition_series_max as u64,
                METRICS_PARTITION_SERIES_MAX_MAX,
            ),
        ] {
            if value == 0 || value > max {
                return bad(server(name), format!("must be 1 to {max}, got {value}"));
            }
        }
        for (name, value) in [
            ("fetch_wait_ms_max", s.fetch_wait_ms_max),
            ("shutdown_grace_ms", s.shutdown_grace_ms),
            ("header_read_timeout_ms", s.header_read_timeout_ms),
            ("body_read_timeout_ms", s.body_read_timeout_ms),
            ("keep_alive_idle_ms", s.keep_alive_idle_ms),
            ("response_write_timeout_ms", s.response_write_timeout_ms),
        ] {
            let (min, max, max_words) = match name {
                "fetch_wait_ms_max" => (0, FETCH_WAIT_MS_MAX_LIMIT, "one hour"),
                "shutdown_grace_ms" => (0, SERVER_MS_MAX, "one day"),
                _ => (1, SERVER_MS_MAX, "one day"),
            };
            if value < min || value > max {
                return bad(
                    server(name),
                    format!("must be {min} to {max} ms ({max_words}), got {value}"),
                );
            }
        }
        let b = &self.broker;
        for (name, value) in [
            ("topics_max", b.topics_max),
            ("partitions_total_max", b.partitions_total_max),
            ("produce_events_max", b.produce_events_max),
        ] {
            if value == 0 {
                return bad(
                    KeyPath::root().key("broker").key(name),
                    "must be at least 1, got 0 (nothing could be created or produced)".into(),
                );
            }
        }
        if s.listen.trim().is_empty() {
            return bad(server("listen"), "must not be empty (give host:port)".into());
        }
        for (key, entries) in
            [("allowed_hosts", &s.allowed_hosts), ("allowed_origins", &s.allowed_origins)]
        {
            if entries.len() > ALLOWED_ENTRIES_MAX {
                return bad(
                    server(key),
                    format!(
                        "has {} entries; at most {ALLOWED_ENTRIES_MAX} are accepted",
                        entries.len()
                    ),
                );
            }
            for (i, entry) in entries.iter().enumerate() {
                let checked = if key == "allowed_hosts" {
                    crate::guard::normalize_allowed_host(entry)
                } else {
                    crate::guard::normalize_origin(entry)
                };
                if let Err(reason) = checked {
                    return bad(server(key).index(i), format!("{entry:?}: {reason}"));
                }
            }
        }
        if let Some(tls) = &s.tls {
            if tls.client_cert_required && tls.client_ca_file.is_none() {
                return bad(
                    server("tls").key("client_cert_required"),
                    "= true needs server.tls.client_ca_file (the CA that signs client \
                     certificates)"
                        .into(),
                );
            }
        }
        let mut sink_names = std::collections::BTreeSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let at = |field: &str| KeyPath::root().key("sink").index(i).join(field);
            let from_sink = |e: driftless_sink::SinkError| match e {
                driftless_sink::SinkError::Config { field, reason, .. } => {
                    Invalid { key: at(&field), reason }
                }
                other => Invalid { key: at(""), reason: other.to_string() },
            };
            sink.validate().map_err(from_sink)?;
            driftless_sink::mapping::Mapper::compile(&sink.name, &sink.mappings)
                .map_err(from_sink)?;
            if !sink_names.insert(&sink.name) {
                return bad(
                    at("name"),
                    format!(
                        "two [[sink]] entries are called `{}`; names must be unique",
                        sink.name
                    ),
                );
            }
        }
        // ---- consumer groups: the broker's group settings and every sink's group name ----
        self.broker.check_group_settings().map_err(|e| match e {
            driftless_broker::BrokerError::InvalidSetting { field, reason } => {
                Invalid { key: KeyPath::root().key("broker").key(field), reason }
            }
            other => Invalid { key: KeyPath::root().key("broker"), reason: other.to_string() },
        })?;
        for (i, sink) in self.sinks.iter().enumerate() {
            // A rebuild consumes with the group `<group>-rebuild`: both must be valid names.
            for group in [sink.group(), format!("{}-rebuild", sink.group())] {
                if let Err(e) = driftless_broker::GroupName::new(group) {
                    let field = if sink.group.is_some() { "group" } else { "name" };
                    return bad(
                        KeyPath::root().key("sink").index(i).key(field),
                        format!("{e} (set `group`, or rename the sink)"),
                    );
                }
            }
        }
        // ---- end of consumer groups ----
        self.auth.validate()?;
        // Client certificates map to principals only when one can be verified: without a CA
        // every entry would be dead configuration that looks like access control.
        let client_ca = self.server.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some());
        if let (Some(subject), false) = (self.auth.clients.keys().next(), client_ca) {
            return bad(
                KeyPath::root().key("auth").key("clients").key(subject),
                "grants scopes to a client certificate subject, but no client certificate is \
                 verified without server.tls.client_ca_file (the CA that signs client \
                 certificates): set it, or remove [auth.clients]"
                    .into(),
            );
        }
        let mut reconcile_names = std::collections::BTreeSet::new();
        for (i, r) in self.reconciles.iter().enumerate() {
            let at = |field: &str| KeyPath::root().key("reconcile").index(i).join(field);
            let from_reconcile = |e: driftless_reconcile::ReconcileError| match e {
                driftless_reconcile::ReconcileError::Config { field, reason, .. } => {
                    Invalid { key: at(&field), reason }
                }
                other => Invalid { key: at(""), reason: other.to_string() },
            };
            r.check_limits().map_err(from_reconcile)?;
            driftless_reconcile::runtime::validate(r, &self.sinks).map_err(from_reconcile)?;
            if !reconcile_names.insert(&r.name) {
                return bad(
                    at("name"),
                    format!(
                        "two [[reconcile]] entries are called `{}`; names must be unique",
                        r.name
                    ),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = |field: &str| KeyPath::root().key("source").index(i).join(field);
            source.validate().map_err(|e| match e {
                driftless_connect::ConnectError::Config { field, reason, .. } => {
                    Invalid { key: at(&field), reason }
                }
                other => Invalid { key: at(""), reason: other.to_string() },
            })?;
            if !names.insert(&source.name) {
                return bad(
                    at("name"),
                    format!(
                        "two [[source]] entries are called `{}`; names must be unique",
                        source.name
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Largest accepted `server.request_body_bytes_max`: 1 GiB (a body is held in memory).
pub const REQUEST_BODY_BYTES_MAX_MAX: u64 = 1 << 30;
/// Largest accepted `server.metrics_partition_series_max`.
pub const METRICS_PARTITION_SERIES_MAX_MAX: u64 = 10_000_000;

// ---- where a setting is: key paths, and their lines in the file ----

/// One step of a key path: a table's key, or an entry of an array (`[[source]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A key path as an operator reads it: `source[1].heartbeat_interval_ms`, `server.listen`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyPath(Vec<Step>);

impl KeyPath {
    fn root() -> Self {
        Self::default()
    }

    fn key(mut self, key: &str) -> Self {
        self.0.push(Step::Key(key.to_string()));
        self
    }

    fn index(mut self, index: usize) -> Self {
        self.0.push(Step::Index(index));
        self
    }

    /// Appends a relative path as the crates write their fields (`mapping[0].columns.city`,
    /// `target.url`). Dots split keys, so a key containing a dot is taken as two; the path is
    /// then shorter than the real one and still leads to the right table.
    fn join(mut self, relative: &str) -> Self {
        for part in relative.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
            if !name.is_empty() {
                self.0.push(Step::Key(name.to_string()));
            }
            while let Some((index, after)) = rest.split_once(']') {
                match index.parse() {
                    Ok(i) => self.0.push(Step::Index(i)),
                    Err(_) => self.0.push(Step::Key(index.to_string())),
                }
                rest = after.trim_start_matches('[');
            }
        }
        self
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, step) in self.0.iter().enumerate() {
            match step {
                Step::Index(i) => write!(f, "[{i}]")?,
                Step::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A setting that is out of range, and where: the key path and what is expected.
#[derive(Debug)]
struct Invalid {
    key: KeyPath,
    reason: String,
}

type Span = std::ops::Range<usize>;

/// serde's message in the words of the configuration file: keys, not fields; numbers, not
/// Rust types.
fn plain_words(message: &str) -> String {
    let mut text = message.trim().replace("unknown field", "unknown key");
    for (rust, words) in [
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 to 4294967295)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(at) = text.find(rust) {
            // Only a whole word: `expected u64` but not `expected u64s`.
            let end = at + rust.len();
            if !text[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                text.replace_range(at..end, words);
            }
        }
    }
    text
}

/// Most keys of one table probed to find which one a positionless error is about.
const CULPRIT_PROBES_MAX: usize = 64;

/// The configuration file as parsed, with the position of every key and value, to say where a
/// setting is.
struct Document<'a> {
    text: &'a str,
    origin: &'a Path,
    root: toml::Spanned<toml::de::DeTable<'a>>,
}

impl Document<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    fn line_column(text: &str, offset: usize) -> (usize, usize) {
        let before = text.get(..offset.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn error_at(text: &str, origin: &Path, span: Span, key: &KeyPath, what: &str) -> ServerError {
        let (line, column) = Self::line_column(text, span.start);
        // Redacted: a message may quote a value, and a value may be a credential.
        let what = driftless_core::redact(what);
        let reason = if key.0.is_empty() { what } else { format!("`{key}`: {what}") };
        ServerError::Setting {
            file: origin.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            reason,
        }
    }

    fn syntax_error(text: &str, origin: &Path, span: Span, message: &str) -> ServerError {
        Self::error_at(text, origin, span, &KeyPath::root(), message.trim())
    }

    /// An error at `key`: at the key as written, or at the nearest table that holds it when it
    /// is not written (a default, or a setting that depends on another).
    fn at(&self, key: &KeyPath, what: &str) -> ServerError {
        Self::error_at(self.text, self.origin, self.span_of(key), key, what)
    }

    fn span_of(&self, path: &KeyPath) -> Span {
        let mut best = self.root.span();
        let mut value: &toml::de::DeValue<'_> = &toml::de::DeValue::Boolean(false);
        let mut table = Some(self.root.get_ref());
        for step in &path.0 {
            match step {
                Step::Key(k) => {
                    let Some(t) = table else { break };
                    let Some((key, v)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)
                    else {
                        break;
                    };
                    best = key.span();
                    value = v.get_ref();
                }
                Step::Index(i) => {
                    let Some(item) = value.as_array().and_then(|a| a.get(*i)) else { break };
                    best = item.span();
                    value = item.get_ref();
                }
            }
            table = value.as_table();
        }
        best
    }

    /// The key path of the most specific key or value whose span holds `span`'s start.
    fn path_at(&self, span: &Span) -> KeyPath {
        fn walk(
            value: &toml::de::DeValue<'_>,
            path: &KeyPath,
            offset: usize,
            best: &mut Option<(usize, KeyPath)>,
        ) {
            fn consider(s: Span, p: &KeyPath, offset: usize, best: &mut Option<(usize, KeyPath)>) {
                if s.contains(&offset) || s.start == offset {
                    let len = s.end.saturating_sub(s.start);
                    if best.as_ref().is_none_or(|(l, _)| len <= *l) {
                        *best = Some((len, p.clone()));
                    }
                }
            }
            if let Some(table) = value.as_table() {
                for (k, v) in table.iter() {
                    let p = path.clone().key(k.get_ref());
                    consider(k.span(), &p, offset, best);
                    consider(v.span(), &p, offset, best);
                    walk(v.get_ref(), &p, offset, best);
                }
            } else if let Some(array) = value.as_array() {
                for (i, item) in array.iter().enumerate() {
                    let p = path.clone().index(i);
                    consider(item.span(), &p, offset, best);
                    walk(item.get_ref(), &p, offset, best);
                }
            }
        }
        let mut best = None;
        let root = toml::de::DeValue::Table(self.root.get_ref().clone());
        walk(&root, &KeyPath::root(), span.start, &mut best);
        best.map(|(_, p)| p).unwrap_or_default()
    }

    /// A deserialization error (unknown key, wrong type, missing key), at its key.
    fn serde_error(&self, e: &toml::de::Error) -> ServerError {
        let span = e.span().unwrap_or(0..0);
        let mut key = self.path_at(&span);
        let mut at = span.clone();
        if let Some((culprit, culprit_span)) = self.culprit(&key, e) {
            key = culprit;
            at = culprit_span;
        }
        Self::error_at(self.text, self.origin, at, &key, &plain_words(e.message()))
    }

    /// The key inside table `table` that causes `error`, when the error points at the whole
    /// table: serde buffers an internally tagged enum (`target = { kind = "webhook", … }`) or a
    /// flattened struct before reading it, and the buffer has no positions. Found by probing:
    /// the table is cut down to `kind` and one key at a time; serde reports a wrong type or an
    /// unknown key before any missing one, so only the culprit reproduces the same error.
    fn culprit(&self, table: &KeyPath, error: &toml::de::Error) -> Option<(KeyPath, Span)> {
        // An unknown key is shown at the key, a wrong type at the value.
        let unknown = error.message().starts_with("unknown field");
        let keys: Vec<(String, Span)> = {
            let value = self.value_at(table)?;
            value
                .as_table()?
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), if unknown { k.span() } else { v.span() }))
                .filter(|(k, _)| k != "kind")
                .collect()
        };
        // Most configs have a few keys per table; a huge inline table is not worth probing.
        if keys.len() > CULPRIT_PROBES_MAX {
            return None;
        }
        for (key, span) in keys {
            let mut probe = self.root.clone();
            let Some(toml::de::DeValue::Table(t)) = Self::value_mut(&mut probe, table) else {
                return None;
            };
            let others: Vec<String> = t
                .keys()
                .map(|k| k.get_ref().to_string())
                .filter(|k| k != "kind" && *k != key)
                .collect();
            for other in others {
                t.remove(other.as_str());
            }
            let result = ServerConfig::deserialize(toml::de::Deserializer::from(probe));
            if let Err(e) = result {
                if e.message() == error.message() && e.span() == error.span() {
                    return Some((table.clone().key(&key), span));
                }
            }
        }
        None
    }

    fn value_at(&self, path: &KeyPath) -> Option<&toml::de::DeValue<'_>> {
        let mut value = None::<&toml::de::DeValue<'_>>;
        for step in &path.0 {
            let next = match (step, value) {
                (Step::Key(k), None) => self.root.get_ref().get(k.as_str())?,
                (Step::Key(k), Some(v)) => v.as_table()?.get(k.as_str())?,
                (Step::Index(i), Some(v)) => v.as_array()?.get(*i)?,
                (Step::Index(_), None) => return None,
            };
            value = Some(next.get_ref());
        }
        value
    }

    fn value_mut<'v, 'a>(
        root: &'v mut toml::Spanned<toml::de::DeTable<'a>>,
        path: &KeyPath,
    ) -> Option<&'v mut toml::de::DeValue<'a>> {
        let mut steps = path.0.iter();
        let Some(Step::Key(first)) = steps.next() else { return None };
        let mut value = root.get_mut().get_mut(first.as_str())?.get_mut();
        for step in steps {
            value = match (step, value) {
                (Step::Key(k), toml::de::DeValue::Table(t)) => t.get_mut(k.as_str())?.get_mut(),
                (Step::Index(i), toml::de::DeValue::Array(a)) => a.get_mut(*i)?.get_mut(),
                _ => return None,
            };
        }
        Some(value)
    }

    /// `[[source]]` entries flatten their kind's settings, and serde can neither refuse unknown
    /// keys through `flatten` nor say where a wrongly typed value is: check them key by key
    /// here, with every value's position.
    fn check_sources(&self) -> Result<(), ServerError> {
        let Some((_, sources)) =
            self.root.get_ref().iter().find(|(k, _)| k.get_ref().as_ref() == "source")
        else {
            return Ok(());
        };
        let Some(entries) = sources.get_ref().as_array() else {
            return Ok(()); // not an array: the deserializer says so, at the key
        };
        for (i, entry) in entries.iter().enumerate() {
            let here = KeyPath::root().key("source").index(i);
            let Some(table) = entry.get_ref().as_table() else { continue };
            let kind = table.iter().find(|(k, _)| k.get_ref().as_ref() == "kind");
            let known = match kind {
                None => {
                    return Err(self.at(
                        &here,
                        &format!(
                            "missing key `kind`: say what to read, one of {}",
                            driftless_connect::config::KINDS.join(", ")
                        ),
                    ))
                }
                Some((_, v)) => {
                    let name = v.get_ref().as_str().unwrap_or_default();
                    match driftless_connect::config::keys(name) {
                        Some(keys) => keys,
                        None => {
                            return Err(Self::error_at(
                                self.text,
                                self.origin,
                                v.span(),
                                &here.clone().key("kind"),
                                &format!(
                                    "unknown kind {}; expected one of {}",
                                    v.get_ref().as_str().map_or_else(
                                        || "(not a string)".into(),
                                        |s| format!("{s:?}")
                                    ),
                                    driftless_connect::config::KINDS.join(", ")
                                ),
                            ))
                        }
                    }
                }
            };
            for (key, value) in table.iter() {
                let name = key.get_ref().as_ref();
                let path = here.clone().key(name);
                if !known.contains(&name) {
                    let kind = kind.and_then(|(_, v)| v.get_ref().as_str()).unwrap_or_default();
                    return Err(Self::error_at(
                        self.text,
                        self.origin,
                        key.span(),
                        &path,
                        &format!(
                            "unknown key; a `{kind}` source takes {}",
                            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                let de = toml::de::ValueDeserializer::from(value.clone());
                if let Err(e) = driftless_connect::config::check_setting(name, de) {
                    let span = e.span().unwrap_or_else(|| value.span());
                    let what = plain_words(e.message());
                    return Err(Self::error_at(self.text, self.origin, span, &path, &what));
                }
            }
        }
        Ok(())
    }
}

impl ServerConfig {
    /// Refuses to serve a non-loopback address without authentication, unless
    /// `insecure_allow_unauthenticated_remote` says so: anyone who can reach such a port could
    /// produce, delete topics and move consumer groups. A `listen` that names a host is resolved
    /// here; it counts as loopback only if every address it resolves to is.
    pub fn check_exposure(&self) -> Result<(), ServerError> {
        let s = &self.server;
        if self.auth.enabled || s.insecure_allow_unauthenticated_remote {
            return Ok(());
        }
        let loopback = match s.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip().is_loopback(),
            Err(_) => match std::net::ToSocketAddrs::to_socket_addrs(s.listen.as_str()) {
                Ok(addrs) => {
                    let addrs: Vec<_> = addrs.collect();
                    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
                }
                // Not resolvable: binding will fail and say so.
                Err(_) => true,
            },
        };
        if loopback {
            Ok(())
        } else {
            Err(ServerError::UnauthenticatedRemote { addr: s.listen.clone() })
        }
    }
}

/// What `driftless serve` was given on its command line (or through `DRIFTLESS_CONFIG`,
/// `DRIFTLESS_LISTEN`, `DRIFTLESS_DATA_DIR`, `DRIFTLESS_TOPICS_MAX`,
/// `DRIFTLESS_PARTITIONS_TOTAL_MAX`); each present value overrides the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The configuration file; without one, every setting has its default.
    pub config: Option<PathBuf>,
    /// Overrides `[server] listen`.
    pub listen: Option<String>,
    /// Overrides `[server] data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Overrides `[broker] topics_max`.
    pub topics_max: Option<usize>,
    /// Overrides `[broker] partitions_total_max`.
    pub partitions_total_max: Option<usize>,
    /// With `tls_key`: sets `[server.tls] cert_file` (keeping the file's other TLS settings).
    pub tls_cert: Option<PathBuf>,
    /// With `tls_cert`: sets `[server.tls] key_file`.
    pub tls_key: Option<PathBuf>,
    /// Sets `[server] insecure_allow_unauthenticated_remote = true` when true.
    pub insecure_allow_unauthenticated_remote: bool,
}

impl Overrides {
    /// Loads the file (if any) and applies the overrides.
    pub fn resolve(&self) -> Result<ServerConfig, ServerError> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::load(path)?,
            None => ServerConfig::default(),
        };
        if let Some(listen) = &self.listen {
            config.server.listen.clone_from(listen);
        }
        if let Some(dir) = &self.data_dir {
            config.server.data_dir.clone_from(dir);
        }
        if let Some(n) = self.topics_max {
            config.broker.topics_max = n;
        }
        if let Some(n) = self.partitions_total_max {
            config.broker.partitions_total_max = n;
        }
        match (&self.tls_cert, &self.tls_key, &mut config.server.tls) {
            (None, None, _) => {}
            (Some(cert), Some(key), Some(tls)) => {
                tls.cert_file.clone_from(cert);
                tls.key_file.clone_from(key);
            }
            (Some(cert), Some(key), tls @ None) => {
                *tls = Some(TlsSettings {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    client_ca_file: None,
                    client_cert_required: false,
                });
            }
            _ => {
                return Err(ServerError::InvalidConfig(
                    "--tls-cert and --tls-key go together: give both (the certificate and its \
                     private key, PEM)"
                        .into(),
                ))
            }
        }
        if self.insecure_allow_unauthenticated_remote {
            config.server.insecure_allow_unauthenticated_remote = true;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The example in the repository documents the defaults; it must parse and stay true.
    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/driftless.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = ServerConfig::from_toml(&text, &path).unwrap();
        assert_eq!(config, ServerConfig::default());
    }

    #[test]
    fn the_readme_sink_examples_parse_and_compile() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let blocks: Vec<&str> = readme
            .split("```toml")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.contains("[[sink]]"))
            .collect();
        // Sinks (Postgres, webhook, credentials) and reconciliation (CDC, outbox).
        assert_eq!(blocks.len(), 5, "the README's sink examples");
        for block in blocks {
            let config = ServerConfig::from_toml(block, &path).unwrap();
            assert!(!config.sinks.is_empty());
        }
    }

    #[test]
    fn sinks_parse_with_their_mappings_and_typos_are_refused() {
        let text = r#"
            [[sink]]
            name = "billing"
            topics = ["customers"]
            target = { kind = "postgres", url = "postgres://u@127.0.0.1/billing" }
            [[sink.mapping]]
            types = ["customer.*"]
            table = "invoice_contacts"
            key = ["customer_id"]
            columns = { customer_id = ".subject" }
        "#;
        let config = ServerConfig::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.sinks[0].mappings[0].table.as_deref(), Some("invoice_contacts"));
        let typo = text.replace("columns =", "colums =");
        let err = ServerConfig::from_toml(&typo, Path::new("t.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("colums") || format!("{:?}", err).contains("colums"));
    }

    #[test]
    fn sources_parse_with_defaults_and_typos_are_refused() {
        let text = r#"
            [[source]]
            name = "app"
            kind = "postgres_cdc"
            url = "postgres://u@127.0.0.1:5432/app"
            tables = ["public.customers"]

            [[source]]
            name = "customers"
            kind = "sqlite_outbox"
            path = "customers.db"
            topic_prefix = "customers."
        "#;
        let config = ServerConfig::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(config.sources.len(), 2);
        assert_eq!(config.sources[0].kind_name(), "postgres_cdc");
        assert_eq!(config.sources[0].partitions, 4);
        match &config.sources[1].kind {
            driftless_connect::SourceKind::SqliteOutbox(o) => {
                assert_eq!(o.outbox.topic_prefix, "customers.");
                assert_eq!(o.outbox.table, "outbox");
                assert_eq!(o.poll_interval_ms, 100);
            }
            other => panic!("{other:?}"),
        }
        let typo = text.replace("topic_prefix", "topic_prefx");
        let err = ServerConfig::from_toml(&typo, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("t.toml:12:13: `source[1].topic_prefx`: unknown key"), "{err}");
        let dup = text.replace("name = \"customers\"", "name = \"app\"");
        let err = ServerConfig::from_toml(&dup, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("`app`"), "{err}");
    }

    #[test]
    fn out_of_range_server_limits_are_refused_naming_the_key() {
        for (line, key) in [
            ("connections_max = 0", "connections_max"),
            ("connections_max = 2000000", "connections_max"),
            ("header_read_timeout_ms = 0", "header_read_timeout_ms"),
            ("body_read_timeout_ms = 0", "body_read_timeout_ms"),
            ("keep_alive_idle_ms = 86400001", "keep_alive_idle_ms"),
            ("fetch_wait_ms_max = 18446744073709551615", "fetch_wait_ms_max"),
            ("shutdown_grace_ms = 18446744073709551615", "shutdown_grace_ms"),
            ("stream_credit_max = 18446744073709551615", "stream_credit_max"),
        ] {
            let text = format!("[server]\n{line}\n");
            let err = ServerConfig::from_toml(&text, Path::new("l.toml")).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        let ok = "[server]\nconnections_max = 1\nkeep_alive_idle_ms = 86400000\n";
        ServerConfig::from_toml(ok, Path::new("l.toml")).unwrap();
    }

    #[test]
    fn the_auth_table_parses_and_bad_values_are_refused_naming_them() {
        let c = ServerConfig::from_toml(
            "[server.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_ca_file = \"ca.pem\"\n\
             [auth]\nenabled = true\nsession_ttl_ms = 60000\n[auth.clients]\n\"billing-svc\" = \
             [\"produce:topic:billing.*\"]\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert!(c.auth.enabled);
        assert_eq!(c.auth.session_ttl_ms, 60_000);
        assert_eq!(c.auth.clients["billing-svc"], ["produce:topic:billing.*"]);
        assert_eq!(c.auth.tokens_path(Path::new("/d")), PathBuf::from("/d/tokens.json"));
        for (text, needle) in [
            ("[auth]\nsession_ttl_ms = 0\n", "auth.session_ttl_ms"),
            ("[auth]\nsession_ttl_ms = 604800001\n", "auth.session_ttl_ms"),
            ("[auth]\nsessions_max = 0\n", "auth.sessions_max"),
            ("[auth.clients]\nsvc = [\"write:topic:*\"]\n", "unknown operation"),
            ("[auth.clients]\nsvc = [\"read:topic:*\"]\n", "server.tls.client_ca_file"),
            ("[auth]\nenable = true\n", "enable"),
        ] {
            let err = ServerConfig::from_toml(text, Path::new("a.toml")).unwrap_err();
            let all = format!(
                "{err} {}",
                std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
            );
            assert!(all.contains(needle), "{text}: {all}");
        }
    }

    /// `dedup_ids_max = 0` turns the broker's deduplication off (the CDC crash test relies on
    /// it): the range checks must not refuse it.
    #[test]
    fn deduplication_can_still_be_switched_off() {
        let c = ServerConfig::from_toml("[broker]\ndedup_ids_max = 0\n", Path::new("x.toml"));
        assert_eq!(c.unwrap().broker.dedup_ids_max, 0);
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = ServerConfig::from_toml("", Path::new("x.toml")).unwrap();
        assert_eq!(c, ServerConfig::default());
        assert_eq!(c.server.listen, "127.0.0.1:7070");
    }

    #[test]
    fn both_tables_parse() {
        let c = ServerConfig::from_toml(
            "[server]\nlisten = \"0.0.0.0:9000\"\nstream_credit_max = 5\n[broker]\nmax_attempts = 3\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.server.stream_credit_max, 5);
        assert_eq!(c.broker.max_attempts, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        for (text, key) in [
            ("[server]\nlisten_addr = \"x\"\n", "listen_addr"),
            ("[broker]\nmax_attempt = 3\n", "max_attempt"),
            ("[srv]\n", "srv"),
        ] {
            // The reason is in the message itself (redacted), not in a source error that
            // would quote the line as written.
            let err = ServerConfig::from_toml(text, Path::new("d.toml")).unwrap_err().to_string();
            assert!(err.contains("d.toml") && err.contains(key), "{err}");
        }
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/a\"\n").unwrap();
        let o = Overrides {
            config: Some(path),
            listen: Some("127.0.0.1:2".into()),
            partitions_total_max: Some(20_000),
            ..Overrides::default()
        };
        let c = o.resolve().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.server.data_dir, PathBuf::from("/a"));
        assert_eq!(c.broker.partitions_total_max, 20_000);
        assert_eq!(c.broker.topics_max, driftless_broker::TOPICS_MAX_DEFAULT);
    }

    #[test]
    fn the_global_topic_limits_parse_and_zero_is_refused_by_name() {
        let c = ServerConfig::from_toml(
            "[broker]\ntopics_max = 5\npartitions_total_max = 50\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!((c.broker.topics_max, c.broker.partitions_total_max), (5, 50));
        let err = ServerConfig::from_toml("[broker]\ntopics_max = 0\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.toml:2:1: `broker.topics_max`: must be at least 1"), "{err}");
        let o = Overrides { topics_max: Some(0), ..Overrides::default() };
        assert!(o.resolve().unwrap_err().to_string().contains("topics_max"));
    }

    #[test]
    fn listening_beyond_loopback_without_auth_is_refused_unless_explicitly_insecure() {
        let mut c = ServerConfig::default();
        for loopback in ["127.0.0.1:7070", "[::1]:7070", "localhost:7070", "127.0.0.9:1"] {
            c.server.listen = loopback.into();
            c.check_exposure().unwrap();
        }
        for remote in ["0.0.0.0:7070", "[::]:7070", "10.1.2.3:7070"] {
            c.server.listen = remote.into();
            let err = c.check_exposure().unwrap_err().to_string();
            assert!(err.contains(remote), "{err}");
            assert!(err.contains("[auth] enabled = true"), "{err}");
            assert!(err.contains("--insecure-allow-unauthenticated-remote"), "{err}");
        }
        c.server.insecure_allow_unauthenticated_remote = true;
        c.check_exposure().unwrap();
        c.server.insecure_allow_unauthenticated_remote = false;
        c.auth.enabled = true;
        c.check_exposure().unwrap();
        let o = Overrides {
            listen: Some("0.0.0.0:7070".into()),
            insecure_allow_unauthenticated_remote: true,
            ..Overrides::default()
        };
        o.resolve().unwrap().check_exposure().unwrap();
    }

    #[test]
    fn the_tls_table_and_the_allow_lists_parse_and_bad_entries_are_named() {
        let text = r#"
            [server]
            allowed_hosts = ["driftless.internal", "10.0.0.7"]
            allowed_origins = ["https://console.example"]
            [server.tls]
            cert_file = "/etc/driftless/tls.crt"
            key_file = "/etc/driftless/tls.key"
            client_ca_file = "/etc/driftless/clients.pem"
        "#;
        let c = ServerConfig::from_toml(text, Path::new("t.toml")).unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.key_file, PathBuf::from("/etc/driftless/tls.key"));
        assert!(!tls.client_cert_required);
        for (bad, key) in [
            ("[server]\nallowed_hosts = [\"http://x\"]\n", "allowed_hosts"),
            ("[server]\nallowed_hosts = [\"x:80\"]\n", "allowed_hosts"),
            ("[server]\nallowed_origins = [\"console.example\"]\n", "allowed_origins"),
            (
                "[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_cert_required = true\n",
                "client_ca_file",
            ),
            ("[server.tls]\ncert_file = \"c\"\n", "key_file"),
        ] {
            let err = ServerConfig::from_toml(bad, Path::new("t.toml")).unwrap_err();
            let chain = format!(
                "{err} {}",
                std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default()
            );
            assert!(chain.contains(key), "{bad}: {chain}");
        }
        let half = Overrides { tls_cert: Some("c.pem".into()), ..Overrides::default() };
        assert!(half.resolve().unwrap_err().to_string().contains("--tls-key"));
    }
}
