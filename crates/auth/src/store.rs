//! The tokens file: every API token's record (never its secret), read by the server and
//! changed by `driftless token create|revoke`, whether or not the server runs.
//!
//! Format: JSON, `{"version": 1, "tokens": [{"id", "name", "scopes", "created_at_ms",
//! "expires_at_ms", "secret_sha256"}]}`; unknown keys and other versions are refused (a newer
//! file is never half-understood).
//!
//! Write path (every change): take the lock (`<file>.lock`, an exclusive `flock`, so two
//! concurrent `token create` never lose one another's token), read the current file, change it,
//! write `<file>.tmp` (created with mode 0600), fsync it, rename it over the file, fsync the
//! directory. A reader therefore sees the old file or the new one, never a mix, and a crash
//! leaves one of the two.
//!
//! Invariants: the file holds hashes only; it is at most [`TOKENS_FILE_BYTES_MAX`] bytes, holds
//! at most [`TOKENS_MAX`] tokens of at most [`SCOPES_PER_TOKEN_MAX`] scopes each, and every
//! record is checked on read (names, scopes, hash, ids unique) — a hand-edited file with a
//! mistake is an error naming the token, not a partial load.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scope::{Grants, ScopeError};
use crate::token::{Entropy, NewToken, RandomError, SecretHash};

/// The file format version this code reads and writes.
pub const TOKENS_FILE_VERSION: u32 = 1;
/// Most tokens in the file.
pub const TOKENS_MAX: usize = 10_000;
/// Largest tokens file read, in bytes.
pub const TOKENS_FILE_BYTES_MAX: u64 = 8 << 20;
/// Most scopes one token (or one mTLS subject) holds.
pub const SCOPES_PER_TOKEN_MAX: usize = 64;
/// Longest principal name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest expiry accepted at creation, in days (ten years).
pub const EXPIRES_IN_DAYS_MAX: u64 = 3_650;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public id (16 hex digits), the middle of the token's text.
    pub id: String,
    /// The principal the token acts as.
    pub name: String,
    /// Its grants, as scope texts.
    pub scopes: Vec<String>,
    /// When it was created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When it stops working, ms since the Unix epoch; never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
}

impl TokenRecord {
    /// Whether the token no longer works at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|e| now_ms >= e)
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// Always [`TOKENS_FILE_VERSION`].
    pub version: u32,
    /// Every token.
    pub tokens: Vec<TokenRecord>,
}

impl Default for TokensFile {
    fn default() -> Self {
        Self { version: TOKENS_FILE_VERSION, tokens: Vec::new() }
    }
}

/// What went wrong with the tokens file or a change to it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading, writing, locking or syncing failed.
    #[error("tokens file {path}: cannot {what}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`TOKENS_FILE_BYTES_MAX`].
    #[error(
        "tokens file {path} is {bytes} bytes; at most {TOKENS_FILE_BYTES_MAX} are read (revoke \
         unused tokens, or restore the file from a backup)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Not valid JSON of the expected shape.
    #[error(
        "tokens file {path} is not a valid tokens file ({reason}); restore it from a backup, or \
         move it away and create tokens again"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the token by id or position; never a secret).
        reason: String,
    },
    /// A name that cannot be a principal.
    #[error(
        "token name {0:?} is not valid: use 1 to {NAME_BYTES_MAX} characters from \
         [A-Za-z0-9._@-], other than `anonymous` (what requests act as without authentication)"
    )]
    Name(String),
    /// A token without scopes, or with too many.
    #[error("a token needs between 1 and {SCOPES_PER_TOKEN_MAX} scopes; {0} were given")]
    ScopeCount(usize),
    /// A scope that does not parse.
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// An expiry out of range.
    #[error("expires in {0} days: use 1 to {EXPIRES_IN_DAYS_MAX} days")]
    Expiry(u64),
    /// The file is full.
    #[error(
        "the tokens file already holds {TOKENS_MAX} tokens, the most it may; revoke unused ones"
    )]
    Full,
    /// Nothing matched a revoke.
    #[error("no token has the id or name {0:?}; `driftless token list` shows them")]
    NoSuchToken(String),
    /// No random bytes.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// The principal every request acts as when authentication is off: no token may take its name,
/// or a topic owned by `anonymous` would accept that token's events as the server's own.
pub const ANONYMOUS: &str = "anonymous";

/// Whether `name` can name a principal: 1 to [`NAME_BYTES_MAX`] bytes of `[A-Za-z0-9._@-]`,
/// and not [`ANONYMOUS`].
pub fn valid_name(name: &str) -> bool {
    name != ANONYMOUS
        && !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Checks every record of a file just read (see the module's invariants).
fn check(file: &TokensFile, path: &Path) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::Invalid { path: path.to_path_buf(), reason };
    if file.version != TOKENS_FILE_VERSION {
        return Err(invalid(format!(
            "version {} where {TOKENS_FILE_VERSION} is expected",
            file.version
        )));
    }
    if file.tokens.len() > TOKENS_MAX {
        return Err(invalid(format!("{} tokens, more than {TOKENS_MAX}", file.tokens.len())));
    }
    let mut ids = std::collections::HashSet::new();
    for (i, t) in file.tokens.iter().enumerate() {
        let at = format!("token {i} (id {:?})", t.id);
        if t.id.len() != 16 || !t.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("{at}: the id is not 16 hex digits")));
        }
        if !ids.insert(t.id.as_str()) {
            return Err(invalid(format!("{at}: the id appears twice")));
        }
        if !valid_name(&t.name) {
            return Err(invalid(format!("{at}: the name is not valid")));
        }
        if t.scopes.is_empty() || t.scopes.len() > SCOPES_PER_TOKEN_MAX {
            return Err(invalid(format!("{at}: {} scopes", t.scopes.len())));
        }
        Grants::parse(&t.scopes).map_err(|e| invalid(format!("{at}: {e}")))?;
        if SecretHash::from_hex(&t.secret_sha256).is_none() {
            return Err(invalid(format!("{at}: secret_sha256 is not 64 lowercase hex digits")));
        }
    }
    Ok(())
}

/// Reads and checks the file at `path`; a missing file is an empty one.
pub fn read(path: &Path) -> Result<TokensFile, StoreError> {
    let io = |what| move |source| StoreError::Io { path: path.to_path_buf(), what, source };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TokensFile::default()),
        Err(e) => return Err(io("open it")(e)),
    };
    let mut text = Vec::new();
    file.take(TOKENS_FILE_BYTES_MAX + 1).read_to_end(&mut text).map_err(io("read it"))?;
    let bytes = text.len() as u64;
    if bytes > TOKENS_FILE_BYTES_MAX {
        return Err(StoreError::TooLarge { path: path.to_path_buf(), bytes });
    }
    let parsed: TokensFile = serde_json::from_slice(&text)
        .map_err(|e| StoreError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
    check(&parsed, path)?;
    Ok(parsed)
}

/// A token just created: its record and its text, which exists nowhere else.
#[derive(Debug)]
pub struct Created {
    /// The stored record.
    pub record: TokenRecord,
    /// The token, `dlt_<id>_<secret>`, to hand to the client once.
    pub token: NewToken,
}

/// The tokens file at one path, for changes (the CLI) and reads.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    /// The store whose file is `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token record.
    pub fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(read(&self.path)?.tokens)
    }

    /// Creates a token for principal `name` with `scopes`, expiring `expires_in_days` after
    /// `now_ms` if given.
    pub fn create(
        &self,
        name: &str,
        scopes: &[String],
        expires_in_days: Option<u64>,
        now_ms: i64,
        entropy: &mut dyn Entropy,
    ) -> Result<Created, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Name(name.to_string()));
        }
        if scopes.is_empty() || scopes.len() > SCOPES_PER_TOKEN_MAX {
            return Err(StoreError::ScopeCount(scopes.len()));
        }
        Grants::parse(scopes)?;
        let expires_at_ms = match expires_in_days {
            None => None,
            Some(d) if (1..=EXPIRES_IN_DAYS_MAX).contains(&d) => {
                // At most 3650 days: the product fits an i64 many times over.
                Some(now_ms.saturating_add(i64::try_from(d).unwrap_or(0) * DAY_MS))
            }
            Some(d) => return Err(StoreError::Expiry(d)),
        };
        self.change(|file| {
            if file.tokens.len() >= TOKENS_MAX {
                return Err(StoreError::Full);
            }
            // A collision of 64 random bits is not expected; drawing again costs nothing.
            let token = loop {
                let t = NewToken::generate(entropy)?;
                if !file.tokens.iter().any(|r| r.id == t.id) {
                    break t;
                }
            };
            let record = TokenRecord {
                id: token.id.clone(),
                name: name.to_string(),
                scopes: scopes.to_vec(),
                created_at_ms: now_ms,
                expires_at_ms,
                secret_sha256: token.secret_hash.to_hex(),
            };
            file.tokens.push(record.clone());
            Ok(Created { record, token })
        })
    }

    /// Revokes the token with id `id_or_name`, or else every token named `id_or_name`; returns
    /// the revoked records.
    pub fn revoke(&self, id_or_name: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.change(|file| {
            let by_id = file.tokens.iter().any(|t| t.id == id_or_name);
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut file.tokens)
                .into_iter()
                .partition(|t| if by_id { t.id == id_or_name } else { t.name == id_or_name });
            file.tokens = kept;
            if gone.is_empty() {
                return Err(StoreError::NoSuchToken(id_or_name.to_string()));
            }
            Ok(gone)
        })
    }

    /// Read, change and write the file under the lock. The file is written only when `f`
    /// succeeds.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut TokensFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let io = |path: &Path, what| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, what, source }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir, "create its directory"))?;
        let lock_path = with_suffix(&self.path, ".lock");
        let lock = open_private(&lock_path, false).map_err(io(&lock_path, "open its lock file"))?;
        lock.lock().map_err(io(&lock_path, "lock it"))?;
        let mut file = read(&self.path)?;
        let out = f(&mut file)?;
        let text = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Invalid {
            path: self.path.clone(),
            reason: format!("cannot encode it: {e}"),
        })?;
        let tmp = with_suffix(&self.path, ".tmp");
        let mut w = open_private(&tmp, true).map_err(io(&tmp, "create its temporary file"))?;
        w.write_all(&text).map_err(io(&tmp, "write its temporary file"))?;
        w.write_all(b"\n").map_err(io(&tmp, "write its temporary file"))?;
        w.sync_all().map_err(io(&tmp, "fsync its temporary file"))?;
        drop(w);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path, "rename the new file over it"))?;
        // IMPORTANT: the rename is durable only once the directory is fsynced.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir, "fsync its directory"))?;
        drop(lock);
        Ok(out)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens (creating with mode 0600) `path` for writing; `truncate` empties it.
fn open_private(path: &Path, truncate: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    // A temporary file left by an earlier run under another umask keeps its mode: set it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}
