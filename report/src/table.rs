//! The summary table `testbed run` prints on stdout: scenario, result (pass, or FAIL and the first
//! reason, shortened), connections as expected / opened, wall time; then a totals line.

use std::fmt::Write as _;

use super::RunReport;

/// Reasons longer than this are cut (with `…`); `summary.md` has them whole.
pub const REASON_WIDTH: usize = 110;

/// `text` cut to `width` characters, the last one `…` when it was longer.
pub fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The table, aligned in columns, and a totals line naming where the reports are.
pub fn render(report: &RunReport, out_dir: &str) -> String {
    let rows: Vec<[String; 4]> = report
        .results
        .iter()
        .map(|r| {
            let result = match r.first_reason() {
                None => "pass".to_string(),
                Some(reason) => format!("FAIL {}", shorten(&reason, REASON_WIDTH)),
            };
            let conns = r.connections().map_or_else(|| "-".into(), |(ok, n)| format!("{ok}/{n}"));
            [r.id.clone(), result, conns, format!("{:.1}s", r.wall.as_secs_f64())]
        })
        .collect();
    let header = ["scenario", "result", "connections", "time"].map(String::from);
    let mut out = columns(&header, &rows);
    let n = report.results.len();
    let _ = writeln!(
        out,
        "\n{n} scenario{}: {} passed, {} failed (backend {}); reports in {out_dir} (summary.md, junit.xml)",
        if n == 1 { "" } else { "s" },
        report.passed(),
        report.failed(),
        report.backend,
    );
    out
}

/// `header` and `rows` aligned in columns two spaces apart, every column left-aligned but the
/// last (a time), which is right-aligned; trailing spaces trimmed.
pub fn columns<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in std::iter::once(header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
