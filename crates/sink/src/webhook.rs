//! The HTTP webhook target: each event is POSTed as a CloudEvent (structured or binary mode),
//! signed in the Standard Webhooks convention, with the event id as idempotency key.
//!
//! Invariants:
//! - a retried request carries the same `webhook-id` (the event id), so a receiver can drop the
//!   duplicate; the signature covers `{id}.{timestamp}.{body}` with HMAC-SHA256;
//! - at most one request per key is in flight (the broker hands out one event per key at a
//!   time) and at most `requests_inflight_max` in all;
//! - the outcome of a request decides the delivery: 2xx acknowledges; a 4xx other than 408/429
//!   is the event's fault (dead letter, or retry if configured); a 5xx, 408, 429 or timeout is
//!   retried with backoff and jitter and counts an attempt; a refused connection counts no
//!   attempt (the target is down, not the event) and feeds the circuit breaker;
//! - `https://` endpoints are verified (chain and host name, rustls with ring) against Mozilla's
//!   roots, or only against the CAs of `ca_file` when it is set; a failed verification is a
//!   failure like a refused connection, never a delivery;
//! - the URL may carry a token: it is sent only in the request, and every text this module
//!   returns (the outcomes' messages) is redacted with `driftless_core::redact`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use driftless_core::redact;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

use crate::config::{OnClientError, WebhookConfig, WebhookMode};

/// Largest `ca_file` read.
pub const CA_FILE_BYTES_MAX: u64 = 4 << 20;

/// The certificates of a PEM file, for `ca_file`.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<Certificate<'static>>, String> {
    let bad = |reason: String| format!("cannot use ca_file {}: {reason}", path.display());
    let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
    if len > CA_FILE_BYTES_MAX {
        return Err(bad(format!("{len} bytes, more than {CA_FILE_BYTES_MAX}")));
    }
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| bad(format!("not PEM ({e})")))? {
            ureq::tls::PemItem::Certificate(c) => certs.push(c),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block in the file; give the CA's PEM certificate".into()));
    }
    Ok(certs)
}

/// A transport error in words an operator searches for: a rejected certificate says
/// `certificate verification failed`.
fn describe_error(e: &ureq::Error) -> String {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("invalid peer certificate") || lower.contains("certificate") {
        format!("certificate verification failed: {text}")
    } else {
        text
    }
}

/// Largest response body read from a webhook (only its start is kept, for the error history).
pub const RESPONSE_BYTES_MAX: u64 = 64 << 10;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// The receiver refused the event; retrying will not help.
    Refused(String),
    /// Worth retrying later; counts an attempt.
    Failed(String),
    /// The target could not be reached; counts no attempt.
    Unreachable(String),
}

/// Signs a webhook body: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(tag))
}

/// The signing key of a secret: `whsec_<base64>` decodes; anything else is used as raw bytes.
pub fn secret_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// A webhook client. Its `Debug` shows the URL redacted and never the signing key.
#[derive(Clone)]
pub struct Webhook {
    config: WebhookConfig,
    key: Option<Vec<u8>>,
    agent: Agent,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.config.url)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// A client for `config`; fails (naming the file) when `ca_file` is unusable.
    pub fn new(config: &WebhookConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
        if let Some(path) = &config.ca_file {
            tls = tls.root_certs(RootCerts::new_with_certs(&load_ca_file(path)?));
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .build()
            .into();
        let key = config.secret.as_ref().map(|s| secret_key(s.expose()));
        Ok(Self { key, config: config.clone(), agent })
    }

    /// The request for one event: headers and body.
    pub fn request(&self, event: &Value, now_s: i64) -> (Vec<(String, String)>, Vec<u8>) {
        let id = event.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut headers = Vec::new();
        let body = match self.config.mode {
            WebhookMode::Structured => {
                headers.push(("content-type".into(), "application/cloudevents+json".into()));
                event.to_string().into_bytes()
            }
            WebhookMode::Binary => {
                let mut body = Vec::new();
                if let Value::Object(map) = event {
                    for (k, v) in map {
                        match k.as_str() {
                            "data" => {
                                body = match v {
                                    Value::String(s) => s.clone().into_bytes(),
                                    other => other.to_string().into_bytes(),
                                }
                            }
                            "data_base64" => {
                                body = v
                                    .as_str()
                                    .and_then(|s| {
                                        base64::engine::general_purpose::STANDARD.decode(s).ok()
                                    })
                                    .unwrap_or_default()
                            }
                            "datacontenttype" => headers.push((
                                "content-type".into(),
                                v.as_str().unwrap_or("application/json").into(),
                            )),
                            _ => headers.push((
                                format!("ce-{k}"),
                                match v {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                },
                            )),
                        }
                    }
                }
                if !headers.iter().any(|(k, _)| k == "content-type") {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                body
            }
        };
        headers.push(("webhook-id".into(), id.clone()));
        headers.push(("webhook-timestamp".into(), now_s.to_string()));
        headers.push(("idempotency-key".into(), id.clone()));
        if let Some(key) = &self.key {
            headers.push(("webhook-signature".into(), sign(key, &id, now_s, &body)));
        }
        (headers, body)
    }

    /// Sends one event (blocking; run it on the blocking pool).
    pub fn send(&self, event: &Value) -> Outcome {
        let now_s = driftless_core::Clock::now_ms(&driftless_core::SystemClock) / 1000;
        let (headers, body) = self.request(event, now_s);
        let mut req = self.agent.post(self.config.url.expose());
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let started = Instant::now();
        match req.send(&body[..]) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Outcome::Delivered;
                }
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(RESPONSE_BYTES_MAX)
                    .read_to_string()
                    .unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                // `url` displays redacted; the body may echo the token, so all of it is redacted.
                let what = redact(&format!("{} answered {status}: {text}", self.config.url));
                let client_error = (400..500).contains(&status) && status != 408 && status != 429;
                if client_error && self.config.on_client_error == OnClientError::DeadLetter {
                    Outcome::Refused(what)
                } else {
                    Outcome::Failed(what)
                }
            }
            Err(e) => {
                let unreachable = match &e {
                    ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
                    ureq::Error::Io(io) => {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                        ) && started.elapsed() < Duration::from_millis(self.config.timeout_ms / 2)
                    }
                    _ => false,
                };
                let what = redact(&format!("{}: {}", self.config.url, describe_error(&e)));
                if unreachable {
                    Outcome::Unreachable(what)
                } else {
                    Outcome::Failed(what)
                }
            }
        }
    }
}

/// A circuit breaker: opens after `failures_max` consecutive failures, stays open for
/// `open_ms` (doubling while trials keep failing, up to 60 s), then lets one trial through.
#[derive(Debug)]
pub struct Breaker {
    failures_max: u32,
    open_ms: u64,
    failures: u32,
    open_until: Option<Instant>,
    current_open_ms: u64,
}

/// Longest time the breaker stays open between trials.
pub const BREAKER_OPEN_MS_MAX: u64 = 60_000;

impl Breaker {
    /// A closed breaker.
    pub fn new(failures_max: u32, open_ms: u64) -> Self {
        Self { failures_max, open_ms, failures: 0, open_until: None, current_open_ms: open_ms }
    }

    /// How many requests may go now: `None` = any (closed), `Some(0)` = wait, `Some(1)` = one
    /// trial (half-open).
    pub fn allowance(&self, now: Instant) -> Option<usize> {
        match self.open_until {
            None => None,
            Some(t) if now >= t => Some(1),
            Some(_) => Some(0),
        }
    }

    /// When the open breaker allows a trial.
    pub fn reopens_at(&self) -> Option<Instant> {
        self.open_until
    }

    /// Whether the breaker is open (or half-open).
    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    /// Records a success: the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.current_open_ms = self.open_ms;
    }

    /// Records a failure; returns `true` if this opened (or re-opened) the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures += 1;
        if self.open_until.is_some() {
            // A failed trial: stay open, longer.
            self.current_open_ms = (self.current_open_ms * 2).min(BREAKER_OPEN_MS_MAX);
            self.open_until = Some(now + Duration::from_millis(self.current_open_ms));
            return true;
        }
        if self.failures >= self.failures_max {
            self.open_until = Some(now + Duration::from_millis(self.current_open_ms));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_lets_one_trial_through() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, 100);
        assert_eq!(b.allowance(t0), None);
        assert!(!b.failure(t0) && !b.failure(t0));
        assert!(b.failure(t0), "the third failure opens it");
        assert_eq!(b.allowance(t0), Some(0));
        let later = t0 + Duration::from_millis(150);
        assert_eq!(b.allowance(later), Some(1), "half-open: one trial");
        assert!(b.failure(later), "a failed trial re-opens it for longer");
        assert_eq!(b.allowance(later + Duration::from_millis(150)), Some(0));
        b.success();
        assert_eq!(b.allowance(later), None);
    }
}
