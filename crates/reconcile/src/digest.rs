//! The digests both sides compute, in SQL, so that rows need not leave the databases.
//!
//! A row is rendered as text: its key's text, then each compared column's text, separated by the
//! unit separator (U+001F), NULL rendered as the record separator (U+001E). From the SHA-256 of the
//! key's text comes its bucket (the first three bytes, big-endian, modulo the bucket count); from
//! the SHA-256 of the row's text come two 32-bit halves (bytes 0..4 and 4..8). A bucket's digest is
//! its row count and the sums of both halves — order-independent, so neither side sorts.
//!
//! Invariant: the Postgres SQL ([`pg_bucket_sql`], [`pg_half_sql`]) and the Rust functions
//! registered in SQLite ([`bucket`], [`halves`]) compute the same numbers from the same text; a
//! test checks them against each other through a real Postgres.

use sha2::{Digest as _, Sha256};

/// Separates key parts and columns in a row's text.
pub const UNIT_SEPARATOR: char = '\u{1f}';
/// Stands for NULL in a row's text.
pub const NULL_MARKER: char = '\u{1e}';
/// Most buckets: bounds the digests each side returns (about 32 bytes each).
pub const BUCKETS_MAX: i64 = 262_144;
/// Fewest buckets.
pub const BUCKETS_MIN: i64 = 16;
/// Rows per bucket aimed at: the rows shipped for one drifted key.
pub const ROWS_PER_BUCKET: i64 = 16;

/// A bucket's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketDigest {
    /// Rows in the bucket.
    pub rows: i64,
    /// Sum of the rows' first halves.
    pub h1: i64,
    /// Sum of the rows' second halves.
    pub h2: i64,
}

/// The bucket count for a table of `rows` rows.
pub fn bucket_count(rows: i64) -> i64 {
    (rows / ROWS_PER_BUCKET).clamp(BUCKETS_MIN, BUCKETS_MAX)
}

/// The bucket of a key's text.
pub fn bucket(key_text: &str, buckets: i64) -> i64 {
    let h = Sha256::digest(key_text.as_bytes());
    (i64::from(h[0]) << 16 | i64::from(h[1]) << 8 | i64::from(h[2])) % buckets.max(1)
}

/// The two 32-bit halves of a row's text.
pub fn halves(row_text: &str) -> (i64, i64) {
    let h = Sha256::digest(row_text.as_bytes());
    let half = |i: usize| i64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    (half(0), half(4))
}

/// Postgres: the bucket of `kh` (a `sha256` bytea) among `$n` buckets.
pub fn pg_bucket_sql(kh: &str, n: &str) -> String {
    format!("((get_byte({kh}, 0) << 16) | (get_byte({kh}, 1) << 8) | get_byte({kh}, 2)) % {n}")
}

/// Postgres: the 32-bit half of `rh` (a `sha256` bytea) starting at byte `at` (0 or 4).
pub fn pg_half_sql(rh: &str, at: usize) -> String {
    format!(
        "((get_byte({rh}, {a})::bigint << 24) | (get_byte({rh}, {b}) << 16) | \
         (get_byte({rh}, {c}) << 8) | get_byte({rh}, {d}))",
        a = at,
        b = at + 1,
        c = at + 2,
        d = at + 3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_halves_are_stable_and_in_range() {
        assert_eq!(bucket("c-42", 1024), bucket("c-42", 1024));
        assert!((0..1024).contains(&bucket("c-42", 1024)));
        let (a, b) = halves("c-42\u{1f}Berlin");
        assert!(a >= 0 && a <= u32::MAX as i64 && b >= 0);
        assert_ne!(halves("a\u{1f}b"), halves("a\u{1f}c"));
        assert_eq!(bucket_count(1_000_000), 62_500);
        assert_eq!(bucket_count(10), BUCKETS_MIN);
        assert_eq!(bucket_count(i64::MAX), BUCKETS_MAX);
    }
}
