//! Authentication for Driftless: API tokens, their scopes, the tokens file they live in, and the
//! [`Authenticator`] the server asks on every request.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use driftless_auth::{Authenticator, Kind, Operation, OsRandom, TokenStore};
//! let store = TokenStore::new("driftless-data/tokens.json");
//! let created = store.create("billing", &["produce:topic:billing.*".into()], None, 0, &mut OsRandom)?;
//! let auth = Authenticator::open(store.path())?;
//! let who = auth.authenticate(&created.token.text, 1)?;
//! assert!(who.grants.allows(Operation::Produce, Kind::Topic, "billing.invoices"));
//! # Ok(()) }
//! ```
//!
//! Why a crate of its own: the CLI changes the tokens file while the server reads it, and
//! neither should pull in the other. `driftless-auth` knows nothing about HTTP, the broker or
//! routes: it answers "who is this token" and "may these grants do that"; which operation a
//! request is, and what to answer when it is refused, is the server's business.

mod authenticator;
mod scope;
mod store;
mod token;

pub use authenticator::{Authenticator, Denied, Identity, RELOAD_CHECK_MS};
pub use scope::{
    Grants, Kind, Operation, Pattern, Scope, ScopeError, PATTERN_BYTES_MAX, SCOPE_BYTES_MAX,
};
pub use store::{
    read as read_tokens_file, valid_name, Created, StoreError, TokenRecord, TokenStore, TokensFile,
    ANONYMOUS, DAY_MS, EXPIRES_IN_DAYS_MAX, NAME_BYTES_MAX, SCOPES_PER_TOKEN_MAX,
    TOKENS_FILE_BYTES_MAX, TOKENS_FILE_VERSION, TOKENS_MAX,
};
pub use token::{
    random_hex, Entropy, NewToken, OsRandom, PresentedToken, RandomError, SecretHash, TOKEN_PREFIX,
    TOKEN_TEXT_BYTES,
};
