//! `summary.md`: what a run showed, for people, rendered by GitHub.
//!
//! Layout: a header (backend, selection, totals); the overall table (scenario, result,
//! connections as expected / opened, first reason); the truth-table legend; then per scenario
//! its result, description, truth table ([`verdict`]), every reason it failed, load warnings, and
//! per connect step its connections' lifecycles as Mermaid diagrams ([`lifecycle`]; repetitions
//! that tell the same story are drawn once).
//!
//! A function of the Worlds and Outcomes only: no wall time, no output path, so equal runs give
//! byte-identical files. Text from scenarios and Outcomes is escaped for Markdown ([`md`]);
//! reasons are shown verbatim in fenced blocks.

use std::fmt::Write as _;

use super::lifecycle;
use super::verdict::{self, LEGEND, Mark, TruthTable, collapse, ranges};
use super::{RunReport, ScenarioResult, Status};
use ambient_scenarios::outcome::Connection;

/// Escapes text for inline Markdown (table cells, paragraphs): punctuation Markdown or HTML
/// would act on is backslash-escaped, line breaks become spaces.
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `code` as an inline code span (ids, labels: they never hold backticks; any that slip in
/// are dropped rather than break the span).
fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "").replace('|', "\\|"))
}

/// The anchor GitHub gives a heading made of `text`.
fn anchor(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Lines in a fenced block whose fence is longer than any backtick run inside.
fn fenced(out: &mut String, lang: &str, text: &str) {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(out, "{fence}{lang}");
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "{fence}");
}

fn result_word(r: &ScenarioResult) -> String {
    match r.failure_kind() {
        None => "pass".into(),
        Some(kind) => format!("FAIL ({kind})"),
    }
}

fn connections_text(r: &ScenarioResult) -> String {
    r.connections().map_or_else(|| "–".into(), |(ok, n)| format!("{ok}/{n}"))
}

pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    let n = report.results.len();
    let _ = writeln!(out, "# testbed run — backend `{}`\n", report.backend);
    let _ = writeln!(
        out,
        "Selection: {}. {n} scenario{}: {} passed, {} failed.\n",
        md(&report.selection),
        if n == 1 { "" } else { "s" },
        report.passed(),
        report.failed()
    );
    if !report.environment.is_empty() {
        let _ = writeln!(out, "Environment: {}.\n", environment_words(&report.environment));
    }
    out.push_str("| scenario | result | connections | first reason |\n| --- | --- | --- | --- |\n");
    for r in &report.results {
        let reason = r.first_reason().map(|s| md(&s)).unwrap_or_default();
        let _ = writeln!(
            out,
            "| [{}](#{}) | {} | {} | {reason} |",
            md(&r.id),
            anchor(&r.id),
            result_word(r),
            connections_text(r)
        );
    }
    out.push_str(
        "\n*connections*: connections that met their expectations / connections the scenario opens.\n\n",
    );
    legend(&mut out);
    for r in &report.results {
        scenario(&mut out, report, r);
    }
    out
}

/// ``kernel `6.1` · iptables `1.8.9 (nf_tables)` · …``: a report's environment in one markdown
/// line, values as code (no escaping needed; backticks and line breaks in a value dropped).
pub fn environment_words(environment: &[(String, String)]) -> String {
    let code = |v: &str| v.replace('`', "").replace(['\n', '\r'], " ");
    let parts: Vec<String> =
        environment.iter().map(|(k, v)| format!("{k} `{}`", code(v))).collect();
    parts.join(" · ")
}

/// The truth tables' legend.
pub fn legend(out: &mut String) {
    out.push_str(
        "Truth tables: one row per client (`from`), one column per target (`to`); a cell holds the \
         worst mark of the connections between them (blank: none).\n\n",
    );
    out.push_str("| mark | meaning |\n| :-: | --- |\n");
    for (symbol, meaning) in LEGEND {
        let _ = writeln!(out, "| `{symbol}` | {} |", md(meaning));
    }
    out.push('\n');
}

fn scenario(out: &mut String, report: &RunReport, r: &ScenarioResult) {
    let _ = writeln!(out, "## {}\n", md(&r.id));
    let mut facts = vec![format!("**{}**", result_word(r)), code(&r.file)];
    if let Some(seed) = report.seed_of(r) {
        facts.push(format!("seed {seed}"));
    }
    facts.push(format!("connections {}", connections_text(r)));
    let _ = writeln!(out, "{}\n", facts.join(" · "));
    if let Some(w) = r.world() {
        let _ = writeln!(out, "> {}\n", md(w.description.trim()));
    }
    if let Status::Ran { world, run, .. } = &r.status {
        truth_table(out, &TruthTable::build(world, &run.outcome));
    }
    let reasons = r.reasons();
    if reasons.is_empty() {
        out.push_str("Every expectation held.\n\n");
    } else {
        let what = match &r.status {
            Status::NotLoaded { .. } => "The file did not load:",
            Status::BackendFailed { .. } => "The backend produced no Outcome:",
            Status::Ran { .. } => "Why it did not pass:",
        };
        let _ = writeln!(out, "{what}\n");
        fenced(out, "text", &reasons.join("\n"));
        out.push('\n');
    }
    if let Some(w) = r.world()
        && !w.warnings.is_empty()
    {
        out.push_str("Warnings from loading:\n\n");
        let lines: Vec<String> = w.warnings.iter().map(ToString::to_string).collect();
        fenced(out, "text", &lines.join("\n"));
        out.push('\n');
    }
    if let Status::Ran { world, run, .. } = &r.status {
        for v in verdict::steps(world, &run.outcome) {
            connections(out, world, &v);
        }
    }
}

fn truth_table(out: &mut String, t: &TruthTable) {
    if t.rows.is_empty() {
        out.push_str("No connections.\n\n");
        return;
    }
    out.push_str("| from ↓ to → |");
    for c in &t.columns {
        let _ = write!(out, " {} |", code(c));
    }
    out.push_str("\n| --- |");
    for _ in &t.columns {
        out.push_str(" :-: |");
    }
    out.push('\n');
    for (row, cells) in t.rows.iter().zip(&t.cells) {
        let _ = write!(out, "| {} |", code(row));
        for cell in cells {
            match cell {
                Some(m) => {
                    let _ = write!(out, " `{}` |", m.symbol());
                }
                None => out.push_str("  |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

fn connections(
    out: &mut String,
    world: &ambient_scenarios::world::World,
    v: &verdict::StepVerdict<'_>,
) {
    let c = v.connect;
    let _ =
        writeln!(out, "### {} — {} → {}\n", code(&c.id), code(&c.from.label()), code(&c.to.label));
    let count = c.repeat.count();
    if v.missing > 0 {
        let _ = writeln!(
            out,
            "`!` {} of the {count} connection{} this step opens {} not in the Outcome.\n",
            v.missing,
            if count == 1 { "" } else { "s" },
            if v.missing == 1 { "is" } else { "are" }
        );
    }
    let records: Vec<&Connection> = v.records.iter().map(|(c, _)| *c).collect();
    for (which, conn) in collapse(&records) {
        let mark = v.records[which[0] - 1].1;
        let _ = writeln!(out, "{}\n", describe(conn, &which, count, mark));
        fenced(out, "mermaid", &lifecycle::diagram(world, c, conn));
        out.push('\n');
    }
}

/// `Connection 1 of 1: ok, hbone, tunnel node-a->node-b (opened) · mark .`
fn describe(c: &Connection, which: &[usize], count: u32, mark: Mark) -> String {
    let noun = if which.len() == 1 { "Connection" } else { "Connections" };
    let mut parts = vec![c.outcome.to_string()];
    parts.push(c.path.map_or_else(|| "no path".into(), |p| p.to_string()));
    if let Some(t) = &c.tunnel {
        parts.push(format!("tunnel {t} ({})", if c.reused { "pooled" } else { "opened" }));
    }
    if let Some(id) = &c.server_identity {
        parts.push(format!("peer identity {id}"));
    }
    if let Some(peer) = c.server_peer {
        parts.push(format!("server saw {peer}"));
    }
    parts.push(format!("{} B sent, {} B back", c.sent, c.received));
    if let Some(e) = &c.error {
        parts.push(format!("error: {e}"));
    }
    format!(
        "{noun} {} of {count}: {} · mark `{}`",
        ranges(which),
        md(&parts.join(", ")),
        mark.symbol()
    )
}
