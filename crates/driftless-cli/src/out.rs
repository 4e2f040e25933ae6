//! Writing to standard output and standard error: JSON lines, tables, numbers, times.
//!
//! Nothing here uses colour, so nothing is said by colour alone and `NO_COLOR` needs no
//! special case. A closed standard output (`driftless query ... | head -1`) turns into
//! [`CliError::BrokenPipe`], which ends the command quietly with status 0.

use crate::error::CliError;
use serde::Serialize;
use std::io::{self, BufWriter, Stdout, Write};

/// Buffered standard output.
pub struct Out {
    w: BufWriter<Stdout>,
}

fn map_write_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::io("writing to standard output failed", e)
    }
}

impl Out {
    /// Standard output, buffered.
    pub fn new() -> Self {
        Self { w: BufWriter::with_capacity(64 * 1024, io::stdout()) }
    }

    /// Writes one line.
    pub fn line(&mut self, text: impl AsRef<str>) -> Result<(), CliError> {
        let w = &mut self.w;
        w.write_all(text.as_ref().as_bytes()).and_then(|()| w.write_all(b"\n")).map_err(map_write_error)
    }

    /// Writes an empty line.
    pub fn blank(&mut self) -> Result<(), CliError> {
        self.line("")
    }

    /// Writes one value as one line of JSON.
    pub fn json(&mut self, value: &impl Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string(value)
            .map_err(|e| CliError::Failed(format!("a value could not be written as JSON: {e}")))?;
        self.line(text)
    }

    /// Writes the lines of a table.
    pub fn table(&mut self, table: &Table) -> Result<(), CliError> {
        for line in table.render() {
            self.line(line)?;
        }
        Ok(())
    }

    /// Sends everything written so far.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(map_write_error)
    }
}

/// Writes one line to standard error, ignoring failures (there is nowhere left to say
/// them).
pub fn note(text: impl AsRef<str>) {
    let mut e = io::stderr().lock();
    let _ = e.write_all(text.as_ref().as_bytes()).and_then(|()| e.write_all(b"\n"));
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A plain-text table: a header, rows, aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
    indent: usize,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            header: columns.iter().map(|(n, a)| ((*n).to_string(), *a)).collect(),
            rows: Vec::new(),
            indent: 0,
        }
    }

    /// Indents every line by `n` spaces.
    pub fn indent(mut self, n: usize) -> Self {
        self.indent = n;
        self
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines of the table.
    pub fn render(&self) -> Vec<String> {
        let mut widths: Vec<usize> = self.header.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &String>| {
            let mut out = " ".repeat(self.indent);
            for (i, ((cell, (_, align)), width)) in cells.zip(&self.header).zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let pad = width.saturating_sub(cell.chars().count());
                match align {
                    Align::Left => {
                        out.push_str(cell);
                        out.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        out.push_str(&" ".repeat(pad));
                        out.push_str(cell);
                    }
                }
            }
            out.trim_end().to_string()
        };
        let mut lines = Vec::with_capacity(self.rows.len() + 1);
        let header: Vec<String> = self.header.iter().map(|(h, _)| h.clone()).collect();
        lines.push(line(&mut header.iter()));
        for row in &self.rows {
            lines.push(line(&mut row.iter()));
        }
        lines
    }
}

pub use driftless_http::text::count;

/// `1 listing`, `2,500 listings`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", count_usize(n), if n == 1 { one } else { many })
}

/// `count` of a `usize`.
pub fn count_usize(n: usize) -> String {
    count(u64::try_from(n).unwrap_or(u64::MAX))
}

pub use driftless_http::text::{age, utc};

/// A yes/no cell.
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftless::Timestamp;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(Timestamp(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(Timestamp(1_700_000_000_000)), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(Timestamp(951_782_400_000)), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(0.42), "0.4 s");
        assert_eq!(age(61.0), "1 min 1 s");
        assert_eq!(age(90_000.0), "1 d 1 h");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&[("name", Align::Left), ("n", Align::Right)]);
        t.row(vec!["a".into(), "10".into()]);
        t.row(vec!["long".into(), "2".into()]);
        assert_eq!(t.render(), ["name   n", "a     10", "long   2"]);
    }
}
