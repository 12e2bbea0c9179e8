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
    fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::InvalidConfig(m));
        if self.session_ttl_ms == 0 || self.session_ttl_ms > SESSION_TTL_MS_MAX {
            return bad(format!(
                "auth.session_ttl_ms is {}; it must be between 1 and {SESSION_TTL_MS_MAX} (7 days)",
                self.session_ttl_ms
            ));
        }
        if self.sessions_max == 0 || self.sessions_max > SESSIONS_MAX_MAX {
            return bad(format!(
                "auth.sessions_max is {}; it must be between 1 and {SESSIONS_MAX_MAX}",
                self.sessions_max
            ));
        }
        if self.clients.len() > AUTH_CLIENTS_MAX {
            return bad(format!(
                "[auth.clients] has {} entries; at most {AUTH_CLIENTS_MAX} are accepted",
                self.clients.len()
            ));
        }
        for (subject, scopes) in &self.clients {
            if subject.is_empty() || subject.len() > CLIENT_SUBJECT_BYTES_MAX {
                return bad(format!(
                    "[auth.clients] subject {subject:?} must be 1 to {CLIENT_SUBJECT_BYTES_MAX} \
                     bytes (a client certificate's subject common name)"
                ));
            }
            if scopes.len() > driftless_auth::SCOPES_PER_TOKEN_MAX {
                return bad(format!(
                    "[auth.clients] `{subject}` has {} scopes; at most {} are accepted",
                    scopes.len(),
                    driftless_auth::SCOPES_PER_TOKEN_MAX
                ));
            }
            driftless_auth::Grants::parse(scopes).map_err(|e| {
                ServerError::InvalidConfig(format!("[auth.clients] `{subject}`: {e}"))
            })?;
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
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ServerError> {
        let config: Self = toml::from_str(text).map_err(|e| ServerError::ParseConfig {
            path: origin.to_path_buf(),
            reason: driftless_core::redact(&e.to_string()),
        })?;
        // `[[source]]` tables flatten their kind's settings, which serde cannot check for
        // unknown keys: do it here, so a typo is an error rather than a default.
        if let Ok(raw) = toml::from_str::<toml::Table>(text) {
            let entries = raw.get("source").and_then(|s| s.as_array()).cloned().unwrap_or_default();
            for entry in entries.iter().filter_map(|e| e.as_table()) {
                let kind = entry.get("kind").and_then(|k| k.as_str()).unwrap_or("");
                let unknown =
                    driftless_connect::config::unknown_keys(kind, entry.keys().map(String::as_str));
                if let Some(key) = unknown.first() {
                    let name = entry.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                    return Err(ServerError::InvalidConfig(format!(
                        "{}: [[source]] `{name}` (kind = \"{kind}\") has an unknown key `{key}`",
                        origin.display()
                    )));
                }
            }
        }
        config.validate()?;
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
        let s = &self.server;
        if s.request_body_bytes_max == 0 {
            return Err(ServerError::InvalidConfig(
                "server.request_body_bytes_max must be at least 1".into(),
            ));
        }
        if s.stream_credit_max == 0 {
            return Err(ServerError::InvalidConfig(
                "server.stream_credit_max must be at least 1".into(),
            ));
        }
        for (name, value) in [
            ("fetch_wait_ms_max", s.fetch_wait_ms_max),
            ("shutdown_grace_ms", s.shutdown_grace_ms),
            ("header_read_timeout_ms", s.header_read_timeout_ms),
            ("body_read_timeout_ms", s.body_read_timeout_ms),
            ("keep_alive_idle_ms", s.keep_alive_idle_ms),
            ("response_write_timeout_ms", s.response_write_timeout_ms),
        ] {
            if value > SERVER_MS_MAX {
                return Err(ServerError::InvalidConfig(format!(
                    "server.{name} is {value}; at most {SERVER_MS_MAX} (one day) is accepted"
                )));
            }
            let zero_ok = matches!(name, "fetch_wait_ms_max" | "shutdown_grace_ms");
            if value == 0 && !zero_ok {
                return Err(ServerError::InvalidConfig(format!(
                    "server.{name} must be at least 1"
                )));
            }
        }
        if s.connections_max == 0 || s.connections_max > CONNECTIONS_MAX_MAX {
            return Err(ServerError::InvalidConfig(format!(
                "server.connections_max is {}; it must be between 1 and {CONNECTIONS_MAX_MAX}",
                s.connections_max
            )));
        }
        if s.stream_credit_max > STREAM_CREDIT_MAX_MAX {
            return Err(ServerError::InvalidConfig(format!(
                "server.stream_credit_max is {}; at most {STREAM_CREDIT_MAX_MAX} is accepted",
                s.stream_credit_max
            )));
        }
        let b = &self.broker;
        if b.topics_max == 0 || b.partitions_total_max == 0 {
            return Err(ServerError::InvalidConfig(format!(
                "broker.topics_max = {} and broker.partitions_total_max = {} must both be at \
                 least 1 (no topic could be created)",
                b.topics_max, b.partitions_total_max
            )));
        }
        if s.listen.trim().is_empty() {
            return Err(ServerError::InvalidConfig("server.listen must not be empty".into()));
        }
        for (key, entries) in
            [("allowed_hosts", &s.allowed_hosts), ("allowed_origins", &s.allowed_origins)]
        {
            if entries.len() > ALLOWED_ENTRIES_MAX {
                return Err(ServerError::InvalidConfig(format!(
                    "server.{key} has {} entries; at most {ALLOWED_ENTRIES_MAX} are accepted",
                    entries.len()
                )));
            }
            for entry in entries {
                let checked = if key == "allowed_hosts" {
                    crate::guard::normalize_allowed_host(entry)
                } else {
                    crate::guard::normalize_origin(entry)
                };
                if let Err(reason) = checked {
                    return Err(ServerError::InvalidConfig(format!(
                        "server.{key} entry {entry:?}: {reason}"
                    )));
                }
            }
        }
        if let Some(tls) = &s.tls {
            if tls.client_cert_required && tls.client_ca_file.is_none() {
                return Err(ServerError::InvalidConfig(
                    "server.tls.client_cert_required = true needs server.tls.client_ca_file (the \
                     CA that signs client certificates)"
                        .into(),
                ));
            }
        }
        let mut sink_names = std::collections::BTreeSet::new();
        for sink in &self.sinks {
            sink.validate().map_err(|e| ServerError::InvalidConfig(e.to_string()))?;
            driftless_sink::mapping::Mapper::compile(&sink.name, &sink.mappings)
                .map_err(|e| ServerError::InvalidConfig(e.to_string()))?;
            if !sink_names.insert(&sink.name) {
                return Err(ServerError::InvalidConfig(format!(
                    "two [[sink]] entries are called `{}`; names must be unique",
                    sink.name
                )));
            }
        }
        // ---- consumer groups: the broker's group settings and every sink's group name ----
        self.broker
            .check_group_settings()
            .map_err(|e| ServerError::InvalidConfig(format!("[broker] {e}")))?;
        if s.fetch_wait_ms_max > FETCH_WAIT_MS_MAX_LIMIT {
            return Err(ServerError::InvalidConfig(format!(
                "server.fetch_wait_ms_max = {} must be at most {FETCH_WAIT_MS_MAX_LIMIT} (one hour)",
                s.fetch_wait_ms_max
            )));
        }
        for sink in &self.sinks {
            // A rebuild consumes with the group `<group>-rebuild`: both must be valid names.
            for group in [sink.group(), format!("{}-rebuild", sink.group())] {
                if let Err(e) = driftless_broker::GroupName::new(group) {
                    return Err(ServerError::InvalidConfig(format!(
                        "[[sink]] `{}`: {e} (set `group`, or rename the sink)",
                        sink.name
                    )));
                }
            }
        }
        // ---- end of consumer groups ----
        self.auth.validate()?;
        let mut reconcile_names = std::collections::BTreeSet::new();
        for r in &self.reconciles {
            driftless_reconcile::runtime::validate(r, &self.sinks)
                .map_err(|e| ServerError::InvalidConfig(e.to_string()))?;
            if !reconcile_names.insert(&r.name) {
                return Err(ServerError::InvalidConfig(format!(
                    "two [[reconcile]] entries are called `{}`; names must be unique",
                    r.name
                )));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for source in &self.sources {
            source.validate().map_err(|e| ServerError::InvalidConfig(e.to_string()))?;
            if !names.insert(&source.name) {
                return Err(ServerError::InvalidConfig(format!(
                    "two [[source]] entries are called `{}`; names must be unique",
                    source.name
                )));
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
        assert_eq!(blocks.len(), 3, "the README's sink examples");
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
        assert!(err.contains("topic_prefx") && err.contains("customers"), "{err}");
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
            "[auth]\nenabled = true\nsession_ttl_ms = 60000\n[auth.clients]\n\"billing-svc\" = \
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
        assert!(err.contains("topics_max = 0"), "{err}");
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
