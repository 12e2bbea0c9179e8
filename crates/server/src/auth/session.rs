//! Dashboard sessions: `POST /v1/session {"token": ".."}` trades a valid token for a cookie,
//! `DELETE /v1/session` ends it.
//!
//! The cookie `driftless_session` holds 256 random bits (hex) and is `HttpOnly` (no script
//! reads it), `SameSite=Strict` (no other site's page sends it), `Path=/`, and `Secure` when
//! the connection is TLS. The table keeps the SHA-256 of each cookie value, never the value, and
//! looks sessions up by that hash.
//!
//! Invariants: at most `auth.sessions_max` sessions exist (expired ones are dropped first, then
//! a sign-in is refused 429 rather than ending someone else's session); a session lasts
//! `auth.session_ttl_ms` from sign-in or until its token expires, whichever is first; on every
//! request it is checked against its token's current record, so revoking or expiring the
//! token ends it within the authenticator's reload interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use driftless_auth::{random_hex, OsRandom, SecretHash};

/// The cookie's name.
pub(crate) const COOKIE: &str = "driftless_session";
/// Random bytes in a session cookie (256 bits).
const COOKIE_RANDOM_BYTES: usize = 32;

#[derive(Debug, Clone)]
struct Session {
    token_id: Arc<str>,
    expires_at_ms: i64,
}

/// The open sessions, keyed by the hash of their cookie value.
#[derive(Debug)]
pub(crate) struct Sessions {
    sessions_max: usize,
    ttl_ms: i64,
    table: Mutex<HashMap<String, Session>>,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// `sessions_max` sessions are open.
    #[error(
        "{0} sessions are open, the most auth.sessions_max allows; sign out of another, or \
         raise it"
    )]
    Full(usize),
    /// No random bytes.
    #[error(transparent)]
    Random(#[from] driftless_auth::RandomError),
}

fn key(cookie: &str) -> String {
    SecretHash::of(cookie).to_hex()
}

impl Sessions {
    pub(crate) fn new(sessions_max: usize, ttl_ms: u64) -> Self {
        Self {
            sessions_max,
            ttl_ms: i64::try_from(ttl_ms).unwrap_or(i64::MAX),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Every change is one insert or remove: a panic elsewhere cannot leave it half-done.
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `token_id` (which expires at `token_expires_at_ms`, if ever) at
    /// `now_ms`; returns the cookie value and when the session ends.
    pub(crate) fn open(
        &self,
        token_id: Arc<str>,
        token_expires_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<(String, i64), OpenError> {
        let cookie = random_hex(&mut OsRandom, COOKIE_RANDOM_BYTES)?;
        let mut expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        if let Some(t) = token_expires_at_ms {
            expires_at_ms = expires_at_ms.min(t);
        }
        let mut table = self.table();
        if table.len() >= self.sessions_max {
            table.retain(|_, s| s.expires_at_ms > now_ms);
        }
        if table.len() >= self.sessions_max {
            return Err(OpenError::Full(table.len()));
        }
        table.insert(key(&cookie), Session { token_id, expires_at_ms });
        Ok((cookie, expires_at_ms))
    }

    /// The token id of the live session with this cookie value; an expired one is dropped.
    pub(crate) fn token_of(&self, cookie: &str, now_ms: i64) -> Option<Arc<str>> {
        let k = key(cookie);
        let mut table = self.table();
        let session = table.get(&k)?;
        if session.expires_at_ms <= now_ms {
            table.remove(&k);
            return None;
        }
        Some(Arc::clone(&session.token_id))
    }

    /// Ends the session with this cookie value, if any.
    pub(crate) fn close(&self, cookie: &str) {
        self.table().remove(&key(cookie));
    }

    /// Open sessions (for tests and the log).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table().len()
    }
}

/// The value of the `driftless_session` cookie in a request's `Cookie` headers, if any.
pub(crate) fn cookie_value(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

/// The `Set-Cookie` value opening a session.
pub(crate) fn set_cookie(value: &str, ttl_ms: i64, secure: bool) -> String {
    let max_age_s = (ttl_ms / 1000).max(1);
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}")
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub(crate) fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_end_with_their_token() {
        let s = Sessions::new(2, 1_000);
        let (a, until) = s.open(Arc::from("t1"), None, 0).unwrap();
        assert_eq!(until, 1_000);
        assert_eq!(a.len(), 64);
        let (b, until) = s.open(Arc::from("t2"), Some(500), 0).unwrap();
        assert_eq!(until, 500, "a session ends no later than its token");
        assert!(matches!(s.open(Arc::from("t3"), None, 10), Err(OpenError::Full(2))));
        assert_eq!(s.token_of(&a, 999).as_deref(), Some("t1"));
        assert_eq!(s.token_of(&b, 500), None);
        assert_eq!(s.len(), 1, "the expired session was dropped");
        // Once a's session has expired, a new sign-in finds room.
        s.open(Arc::from("t3"), None, 1_000).unwrap();
        s.open(Arc::from("t4"), None, 1_000).unwrap();
        s.close("not-a-session");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_carries_its_attributes() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; driftless_session=abc ; b=2".parse().unwrap());
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        let c = set_cookie("v", 43_200_000, true);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure", "Max-Age=43200"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!set_cookie("v", 1, false).contains("Secure"));
    }
}
