//! How client commands print their results: `--output table` (for people: aligned columns,
//! sentences) or `--output json` (for scripts: JSON lines), chosen once per run.
//!
//! Invariants: without `--output`, a terminal on stdout gets tables and anything else (a pipe, a
//! file, a test) gets JSON, so scripts keep reading JSON lines without asking for them; a table
//! cell is one line of at most [`CELL_CHARS_MAX`] characters (control characters become spaces,
//! longer text is cut with `…`), so a name or an error message can never break the columns;
//! an empty list prints no table: the command says "no …" instead.

use std::io::Write;

use anyhow::Context;
use serde_json::Value;

/// The `--output` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns and sentences, for people.
    Table,
    /// JSON lines, for scripts.
    Json,
}

impl Output {
    /// The format when `--output` is not given: tables on a terminal, JSON otherwise.
    pub fn default_for(stdout_is_terminal: bool) -> Self {
        if stdout_is_terminal {
            Output::Table
        } else {
            Output::Json
        }
    }

    /// Whether results are printed as JSON.
    pub fn is_json(self) -> bool {
        self == Output::Json
    }
}

/// Longest table cell, in characters.
pub const CELL_CHARS_MAX: usize = 60;

/// A table being built: a header and rows of cells.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&'static str]) -> Self {
        Self { header: header.to_vec(), rows: Vec::new() }
    }

    /// Adds a row (cells beyond the header are dropped, missing ones are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().take(self.header.len()).map(cell).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// Writes the header and the rows, columns separated by two spaces, and flushes.
    pub fn write<W: Write>(&self, out: &mut W) -> anyhow::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c); // no trailing spaces
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            writeln!(out, "{}", line.trim_end()).context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")
    }
}

/// `text` as one table cell: control characters as spaces, at most [`CELL_CHARS_MAX`]
/// characters.
pub fn cell(text: String) -> String {
    let one_line: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>();
    if one_line.chars().count() <= CELL_CHARS_MAX {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(CELL_CHARS_MAX - 1).collect();
    cut.push('…');
    cut
}

/// A JSON member as a cell: strings without quotes, `null`/absent as `-`, other values as JSON.
pub fn field(value: &Value, key: &str) -> String {
    match value.get(key) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) if s.is_empty() => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC (`-` for 0 or less: never).
pub fn time_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = driftless_core::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_gets_tables_and_anything_else_json() {
        assert_eq!(Output::default_for(true), Output::Table);
        assert_eq!(Output::default_for(false), Output::Json);
    }

    #[test]
    fn columns_are_aligned_and_cells_stay_on_one_line() {
        let mut t = Table::new(&["NAME", "STATE", "ERROR"]);
        t.row(vec!["orders".into(), "running".into(), "-".into()]);
        t.row(vec!["a\nb".into(), "failed".into(), "x".repeat(100)]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "NAME    STATE    ERROR");
        assert_eq!(lines[1], "orders  running  -");
        assert!(lines[2].starts_with("a b     failed   xxx"), "{text}");
        assert!(lines[2].ends_with('…') && lines[2].chars().count() == 17 + CELL_CHARS_MAX);
    }

    #[test]
    fn fields_and_times_read_as_text() {
        let v = serde_json::json!({"s":"x","n":3,"z":null,"e":""});
        assert_eq!(field(&v, "s"), "x");
        assert_eq!(field(&v, "n"), "3");
        assert_eq!(field(&v, "z"), "-");
        assert_eq!(field(&v, "e"), "-");
        assert_eq!(field(&v, "missing"), "-");
        assert_eq!(time_ms(0), "-");
        assert_eq!(time_ms(1_714_566_600_000), "2024-05-01 12:30:00");
    }
}
