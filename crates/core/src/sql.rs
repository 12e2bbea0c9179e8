//! Quoting names and literals for SQL text, the one place the connectors, sinks and
//! reconciliation take it from.
//!
//! Invariant: every identifier is double-quoted with inner quotes doubled and every literal
//! single-quoted the same way, so a name from configuration can never end the quoted token —
//! the same rules in Postgres and SQLite.

/// "cannot open SQLite database at PATH: CAUSE": the cause read from the file system (a missing
/// directory, a missing file when it is not created, a directory where the file should be,
/// no permission), else SQLite's own words. SQLite says only "unable to open database file".
pub fn sqlite_open_failure(path: &std::path::Path, error: &dyn std::fmt::Display) -> String {
    let cause = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => format!("no such directory {}", dir.display()),
        _ => match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => "it is a directory, not a database file".to_string(),
            Ok(m) if m.permissions().readonly() => {
                format!("{error} (the file is read-only)")
            }
            Ok(_) => error.to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "no such file (it is not created here: check the path)".to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                "permission denied (check the file's and its directory's permissions)".to_string()
            }
            Err(_) => error.to_string(),
        },
    };
    format!("cannot open SQLite database at {}: {cause}", path.display())
}

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
