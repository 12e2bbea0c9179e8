//! Who is on the other end of a request: the connection's facts ([`PeerIdentity`], put into
//! every request's extensions by the accept loop, `conn.rs`) and the authenticated
//! [`Principal`] (put there by the authentication layer before any handler runs).
//!
//! Invariants:
//! - a request served without `conn.rs` (tests that use [`crate::router`] with `axum::serve`)
//!   has no [`PeerIdentity`]: readers treat that as plaintext without a client certificate;
//! - every request that reaches a handler carries a [`Principal`]; with authentication off it
//!   is [`Principal::anonymous`].

use std::sync::Arc;

/// What the accept loop knows about a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's subject common name, under mutual TLS.
    pub client_subject: Option<String>,
}

/// The principal a request acts as: a token's name, a client certificate's subject, or
/// `anonymous` when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The principal's name, as audit records and topic ownership name it.
    pub name: Arc<str>,
}

impl Principal {
    /// The name requests act as when authentication is off.
    pub const ANONYMOUS: &'static str = driftless_auth::ANONYMOUS;

    /// The principal of every request when authentication is off.
    pub fn anonymous() -> Self {
        Self { name: Arc::from(Self::ANONYMOUS) }
    }
}
