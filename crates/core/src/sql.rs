//! Quoting names and literals for SQL text, the one place the connectors, sinks and
//! reconciliation take it from.
//!
//! Invariant: every identifier is double-quoted with inner quotes doubled and every literal
//! single-quoted the same way, so a name from configuration can never end the quoted token —
//! the same rules in Postgres and SQLite.

/// Quotes an identifier (`a"b` → `"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `table` or `schema.table` (split on the first dot), each part as an identifier.
pub fn quote_table(qualified: &str) -> String {
    match qualified.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(qualified),
    }
}

/// Quotes a string literal (`it's` → `'it''s'`).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_literals_cannot_escape_their_quotes() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_table("app.outbox"), "\"app\".\"outbox\"");
        assert_eq!(quote_table("outbox"), "\"outbox\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
