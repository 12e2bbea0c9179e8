//! The authenticator the server holds: checks a presented token against the tokens file and
//! answers who it is and what it may do.
//!
//! Reloading: before answering, the authenticator looks at the file's metadata (device, inode,
//! size, modification time) at most every [`RELOAD_CHECK_MS`], and reloads it when any of them
//! changed. `driftless token` replaces the file by a rename (a new inode), so a revocation made
//! by another process takes effect within `RELOAD_CHECK_MS` (250 ms) of the next request, well
//! inside the one second promised. Only one request at a time does the check (a `try_lock`);
//! the others use the table they find, so the check never queues requests. A token whose id is
//! not in the table makes its request check the file at once, whatever the interval: a token
//! just made by `driftless token create` works on its first request (the throttle would refuse
//! it as unknown for up to `RELOAD_CHECK_MS` after any other request), and what an unknown id
//! costs is one `stat` of the file.
//!
//! Invariants: a token is accepted only if its id is in the current table, its secret's hash
//! matches in constant time, and it has not expired at the `now_ms` the caller gives; a tokens
//! file that cannot be read or is invalid empties the table (fail closed: every token is refused
//! and the error is logged once per change of the file), and a missing file is an empty table;
//! no answer or log line carries a presented token or any part of its secret.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::scope::{Grants, Kind, Operation};
use crate::store::{self, StoreError};
use crate::token::{PresentedToken, SecretHash};

/// Longest a change of the tokens file can go unnoticed, in ms (plus the request's own time).
pub const RELOAD_CHECK_MS: u64 = 250;

/// Who a token is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's id (public).
    pub token_id: Arc<str>,
    /// The principal: the token's name.
    pub name: Arc<str>,
    /// Its scopes.
    pub grants: Arc<Grants>,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_at_ms: Option<i64>,
}

/// Why a token was refused. Carries no part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not of the form `dlt_<id>_<secret>`.
    #[error("token rejected: it is not a Driftless API token")]
    Malformed,
    /// No such token, or the secret is wrong (revoked tokens are unknown).
    #[error("token rejected: unknown or revoked")]
    Unknown,
    /// The token's expiry has passed.
    #[error("token rejected: expired")]
    Expired,
    /// The tokens file cannot be read or is invalid, so no token can be checked.
    #[error("token rejected: the server cannot read its tokens file (see its log)")]
    Unavailable,
}

impl Denied {
    /// A short label for metrics (`driftless_auth_denied_total{reason}`).
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    hash: SecretHash,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<String, Entry>,
    /// Set when the file could not be loaded: every token is refused.
    broken: bool,
}

/// What identifies one version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
    match std::fs::metadata(path) {
        Ok(m) => {
            #[cfg(unix)]
            let (dev, ino) = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            };
            #[cfg(not(unix))]
            let (dev, ino) = (0, 0);
            Ok(Some(Stamp { dev, ino, len: m.len(), modified: m.modified().ok() }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
struct Watch {
    /// The file's stamp when last loaded (`None`: missing). `Err` holds the error text of the
    /// last failed stat, so it is logged once.
    stamp: Result<Option<Stamp>, String>,
    checked: Instant,
}

/// Checks tokens against the tokens file, reloading it when it changes.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    check_every: Duration,
    table: RwLock<Arc<Table>>,
    watch: Mutex<Watch>,
}

impl Authenticator {
    /// Loads the tokens file at `path`. A missing file is no tokens (they may be created while
    /// the server runs); an unreadable or invalid one is an error, so the server does not start
    /// on a file it cannot use.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let before = stamp(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            what: "read its metadata",
            source,
        })?;
        let table = build(store::read(&path)?);
        Ok(Self {
            path,
            check_every: Duration::from_millis(RELOAD_CHECK_MS),
            table: RwLock::new(Arc::new(table)),
            watch: Mutex::new(Watch { stamp: Ok(before), checked: Instant::now() }),
        })
    }

    /// The tokens file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the presented token text at `now_ms`.
    pub fn authenticate(&self, presented: &str, now_ms: i64) -> Result<Identity, Denied> {
        let token = PresentedToken::parse(presented).ok_or(Denied::Malformed)?;
        let mut table = self.current();
        if !table.broken && !table.by_id.contains_key(&token.id) {
            // Perhaps created since the last check: look at the file now.
            table = self.current_checked();
        }
        if table.broken {
            return Err(Denied::Unavailable);
        }
        let entry = table.by_id.get(&token.id).ok_or(Denied::Unknown)?;
        if !entry.hash.matches(&token.secret_hash) {
            return Err(Denied::Unknown);
        }
        live(entry, now_ms)
    }

    /// The token with id `token_id`, if it still exists and has not expired at `now_ms` (a
    /// session checks its token this way on every request).
    pub fn by_id(&self, token_id: &str, now_ms: i64) -> Result<Identity, Denied> {
        let table = self.current();
        if table.broken {
            return Err(Denied::Unavailable);
        }
        live(table.by_id.get(token_id).ok_or(Denied::Unknown)?, now_ms)
    }

    /// Whether `grants` allow `operation` on the `kind` resource `name`.
    pub fn allows(grants: &Grants, operation: Operation, kind: Kind, name: &str) -> bool {
        grants.allows(operation, kind, name)
    }

    /// The table, reloaded first if the file changed and the last check is old enough.
    fn current(&self) -> Arc<Table> {
        self.maybe_reload();
        match self.table.read() {
            Ok(t) => Arc::clone(&t),
            // A panic while swapping the table cannot leave it half-written (it is one store
            // of an `Arc`): the value inside is still whole.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The table, after checking the file whatever the interval (waiting for a check in
    /// progress rather than skipping it).
    fn current_checked(&self) -> Arc<Table> {
        self.reload(true);
        match self.table.read() {
            Ok(t) => Arc::clone(&t),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn maybe_reload(&self) {
        self.reload(false);
    }

    /// Reloads the table if the file changed: when the last check is old enough, or always
    /// when `now`.
    fn reload(&self, now: bool) {
        let mut watch = if now {
            // A panic while checking leaves the watch as whole as before it (plain values).
            match self.watch.lock() {
                Ok(w) => w,
                Err(poisoned) => poisoned.into_inner(),
            }
        } else {
            // One checker at a time; the others go on with the table they have.
            let Ok(w) = self.watch.try_lock() else { return };
            if w.checked.elapsed() < self.check_every {
                return;
            }
            w
        };
        watch.checked = Instant::now();
        let now = stamp(&self.path).map_err(|e| e.to_string());
        if now == watch.stamp {
            return;
        }
        let table = match &now {
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    "cannot read the tokens file's metadata ({e}); refusing every token until \
                     it is readable"
                );
                Table { broken: true, ..Table::default() }
            }
            Ok(_) => match store::read(&self.path) {
                Ok(file) => {
                    tracing::info!(
                        path = %self.path.display(),
                        tokens = file.tokens.len(),
                        "tokens file reloaded"
                    );
                    build(file)
                }
                Err(e) => {
                    tracing::error!(
                        "{e}; refusing every token until the file is fixed (the server \
                         reloads it when it changes)"
                    );
                    Table { broken: true, ..Table::default() }
                }
            },
        };
        watch.stamp = now;
        match self.table.write() {
            Ok(mut t) => *t = Arc::new(table),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(table),
        }
    }
}

fn live(entry: &Entry, now_ms: i64) -> Result<Identity, Denied> {
    if entry.identity.expires_at_ms.is_some_and(|e| now_ms >= e) {
        return Err(Denied::Expired);
    }
    Ok(entry.identity.clone())
}

/// The lookup table of a file that `store::read` checked (so scopes and hashes parse).
fn build(file: store::TokensFile) -> Table {
    let mut by_id = HashMap::with_capacity(file.tokens.len());
    for t in file.tokens {
        let (Ok(grants), Some(hash)) =
            (Grants::parse(&t.scopes), SecretHash::from_hex(&t.secret_sha256))
        else {
            // Unreachable after `store::read`'s checks; skipping denies the token.
            continue;
        };
        let identity = Identity {
            token_id: Arc::from(t.id.as_str()),
            name: Arc::from(t.name.as_str()),
            grants: Arc::new(grants),
            expires_at_ms: t.expires_at_ms,
        };
        by_id.insert(t.id, Entry { identity, hash });
    }
    Table { by_id, broken: false }
}
