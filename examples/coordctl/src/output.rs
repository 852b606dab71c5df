//! Output: text for people, or JSON for scripts (one document per result; one per line for the
//! commands that follow changes). Errors always go to stderr as text.

use std::io::Write;
use std::time::Duration;

use clap::ValueEnum;
use serde_json::Value;

/// Output formats (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Text for people; etcdctl's layout where etcdctl has the same command.
    Human,
    /// JSON on stdout.
    Json,
}

/// Prints one JSON document on a line of its own, and flushes (scripts read line by line).
pub(crate) fn json(value: &Value) {
    line(&value.to_string());
}

/// Prints a line and flushes, so a reader of a pipe sees it at once.
pub(crate) fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`coordctl … | head -1`) is not an error of the command.
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: the two largest units.
pub(crate) fn short(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Rows as columns padded to their widest cell (the last column is not padded).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    std::iter::once(render(header.to_vec()))
        .chain(
            rows.iter()
                .map(|row| render(row.iter().map(String::as_str).collect())),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        assert_eq!(short(Duration::from_secs(7)), "7s");
        assert_eq!(short(Duration::from_secs(65)), "1m5s");
        assert_eq!(short(Duration::from_secs(3 * 3600 + 4 * 60 + 5)), "3h4m");
        assert_eq!(short(Duration::from_secs(86_400 + 2 * 3600)), "1d2h");
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let rows = vec![vec!["node-1".to_owned(), "5s".to_owned(), "12".to_owned()]];
        assert_eq!(
            table(&["ID", "AGE", "TOKEN"], &rows),
            vec!["ID      AGE  TOKEN", "node-1  5s   12"]
        );
    }
}
