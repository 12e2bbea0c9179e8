//! The text form of an API token and its hash.
//!
//! A token reads `dlt_<id>_<secret>`: `id` is 16 lowercase hex digits (64 random bits, public:
//! it names the token in `token list` and `token revoke`, and finds its record without a
//! search), `secret` is 64 lowercase hex digits (256 bits from the operating system's random
//! source). Only the SHA-256 of the secret is ever stored: a salted slow hash protects
//! low-entropy passwords, while a 256-bit secret cannot be guessed from its hash.
//!
//! Invariants: a [`PresentedToken`] never prints its secret (`Debug` shows the id only);
//! secrets are compared through their hashes in constant time ([`SecretHash::matches`]), so the
//! time an answer takes says nothing about how much of a guess was right.

use std::fmt;

use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every token's text starts with (lets secret scanners recognise a leaked one).
pub const TOKEN_PREFIX: &str = "dlt_";
/// Random bytes in a token's id.
pub const ID_BYTES: usize = 8;
/// Random bytes in a token's secret (256 bits).
pub const SECRET_BYTES: usize = 32;
/// Length of a token's text, in bytes.
pub const TOKEN_TEXT_BYTES: usize = TOKEN_PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES;

/// The random source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number source failed ({0}); no token was made")]
pub struct RandomError(String);

/// Where new ids and secrets come from. The one implementation used outside tests is
/// [`OsRandom`]; the trait exists so that nothing else can be passed by accident.
pub trait Entropy {
    /// Fills `buf` with unpredictable bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's random source (`getrandom`), through `rand`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Entropy for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomError> {
        rand::rngs::OsRng.try_fill_bytes(buf).map_err(|e| RandomError(e.to_string()))
    }
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(entropy: &mut dyn Entropy, n: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; n];
    entropy.fill(&mut buf)?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 of a token's secret, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// The hash of `secret`.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses the stored hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if !is_lower_hex(s, 64) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// The stored hex form.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Whether `other` is the same hash, compared in constant time.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A token as a client presented it, split into its public id and the hash of its secret.
/// The secret itself is not kept.
#[derive(Clone)]
pub struct PresentedToken {
    /// The public id.
    pub id: String,
    /// The hash of the presented secret.
    pub secret_hash: SecretHash,
}

impl fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedToken {{ id: {:?}, secret: .. }}", self.id)
    }
}

impl PresentedToken {
    /// Parses `dlt_<id>_<secret>`; `None` for anything else (callers answer "token rejected"
    /// without echoing the text).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        if !is_lower_hex(id, 2 * ID_BYTES) || !is_lower_hex(secret, 2 * SECRET_BYTES) {
            return None;
        }
        Some(Self { id: id.to_string(), secret_hash: SecretHash::of(secret) })
    }
}

/// A new token's id, its text (shown once) and the hash to store.
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// The whole token text, `dlt_<id>_<secret>`.
    pub text: String,
    /// The hash of the secret, the only part stored.
    pub secret_hash: SecretHash,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewToken {{ id: {:?}, text: .. }}", self.id)
    }
}

impl NewToken {
    /// Draws a new id and secret from `entropy`.
    pub fn generate(entropy: &mut dyn Entropy) -> Result<Self, RandomError> {
        let id = random_hex(entropy, ID_BYTES)?;
        let secret = random_hex(entropy, SECRET_BYTES)?;
        let text = format!("{TOKEN_PREFIX}{id}_{secret}");
        Ok(Self { secret_hash: SecretHash::of(&secret), id, text })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_generated_token_parses_back_to_its_id_and_hash() {
        let t = NewToken::generate(&mut OsRandom).unwrap();
        assert_eq!(t.text.len(), TOKEN_TEXT_BYTES);
        let p = PresentedToken::parse(&t.text).unwrap();
        assert_eq!(p.id, t.id);
        assert!(p.secret_hash.matches(&t.secret_hash));
        let other = NewToken::generate(&mut OsRandom).unwrap();
        assert_ne!(other.id, t.id);
        assert!(!other.secret_hash.matches(&t.secret_hash));
    }

    #[test]
    fn malformed_token_texts_are_refused() {
        let t = NewToken::generate(&mut OsRandom).unwrap().text;
        for bad in [
            String::new(),
            t.replace("dlt_", "dlx_"),
            t[..t.len() - 1].to_string(),
            format!("{t}0"),
            t.to_uppercase(),
            t.replacen('_', "-", 2),
            format!(" {t}"),
        ] {
            assert!(PresentedToken::parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn hashes_round_trip_through_hex_and_debug_hides_them() {
        let h = SecretHash::of("s");
        assert!(SecretHash::from_hex(&h.to_hex()).unwrap().matches(&h));
        assert!(SecretHash::from_hex("zz").is_none());
        assert!(SecretHash::from_hex(&h.to_hex().to_uppercase()).is_none());
        let t = NewToken::generate(&mut OsRandom).unwrap();
        let secret = t.text.rsplit('_').next().unwrap().to_string();
        let shown = format!("{t:?} {:?}", PresentedToken::parse(&t.text).unwrap());
        assert!(!shown.contains(&secret), "{shown}");
    }

    /// The comparison is `subtle`'s constant-time equality: equal-length hashes that differ in
    /// the first byte, or only in the last, are compared with the same instructions. This
    /// checks the behaviour (every single-bit difference is caught) and that the comparison
    /// goes through `ct_eq` (a byte-wise early-exit `==` is never used on secrets).
    #[test]
    fn a_wrong_secret_is_refused_whichever_byte_differs() {
        let right = SecretHash::of("correct horse");
        for i in 0..32 {
            for bit in 0..8 {
                let mut wrong = right.clone();
                wrong.0[i] ^= 1 << bit;
                assert!(!right.matches(&wrong), "byte {i} bit {bit}");
            }
        }
        assert!(right.matches(&SecretHash::of("correct horse")));
        let source = include_str!("token.rs");
        assert!(source.contains("self.0.ct_eq(&other.0)"));
    }
}
