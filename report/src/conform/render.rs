//! What `testbed conform` writes: `conformance.md` (the matrix), `junit.xml`, the stdout matrix
//! and each scenario's `diff.txt`.
//!
//! `conformance.md` and `diff.txt` hold no wall time; `conformance.md` names no value that
//! varies between identical runs of a conforming catalog on one machine and commit (it shows
//! values only for unlisted differences, which fail the run); its `Environment:` header line
//! names that machine and commit (kernel release, `iptables` version and backend, `conntrack`
//! version, commit), given by the caller. `junit.xml` has one testcase per scenario and side —
//! `<id> [sim]`, `<id> [netns]`, `<id> [agree]` — so a CI system shows which of the three failed
//! at a glance; its `time` attributes are the only wall-clock data.

use std::fmt::Write as _;
use std::time::Duration;

use quick_junit::{
    NonSuccessKind, Property, Report, SerializeError, TestCase, TestCaseStatus, TestSuite,
};

use super::expected::{ExpectedDifferences, LIFECYCLE, Verdict};
use super::{Comparison, ConformReport, Judged, ScenarioConformance};
use crate::ScenarioResult;
use crate::table::{REASON_WIDTH, columns, shorten};

/// The command that regenerates the committed report (README, `.ci/run`).
pub const REGENERATE: &str = "cargo run --release -- conform --report reports/conformance.md";

/// `pass`, or `FAIL` (markdown and stdout).
fn side(r: &ScenarioResult) -> &'static str {
    if r.passed() { "pass" } else { "FAIL" }
}

fn agree(r: &ScenarioConformance) -> &'static str {
    match &r.comparison {
        Comparison::NotCompared(_) => "—",
        Comparison::Compared(_) if r.agrees() => "yes",
        Comparison::Compared(_) => "NO",
    }
}

fn verdict_text(j: &Judged, expected: &ExpectedDifferences) -> String {
    match j.verdict {
        Verdict::Expected(i) => {
            format!("expected ({})", expected.entries.get(i).map_or("?", |e| e.id.as_str()))
        }
        Verdict::Unlisted => "UNLISTED".into(),
        Verdict::ExactOnly => {
            "UNLISTED (conntrack and first-packet counters of a lifecycle scenario are exact)"
                .into()
        }
    }
}

/// A scenario's `diff.txt`: one line per difference, in field order.
pub fn diff_text(r: &ScenarioConformance, expected: &ExpectedDifferences) -> String {
    let mut out = format!("# {}: the simulator's Outcome against the kernel's\n", r.id);
    match &r.comparison {
        Comparison::NotCompared(why) => {
            let _ = writeln!(out, "not compared: {why}");
        }
        Comparison::Compared(d) if d.is_empty() => out.push_str("no differences\n"),
        Comparison::Compared(d) => {
            for j in d {
                let x = &j.difference;
                let _ = writeln!(
                    out,
                    "{}: sim {}, netns {} [{}] — {}",
                    x.field,
                    x.sim,
                    x.netns,
                    x.kind.as_str(),
                    verdict_text(j, expected)
                );
            }
        }
    }
    out
}

/// The first unlisted difference as `(field, sim, netns)`, or why the scenario was not compared.
fn first_unlisted(r: &ScenarioConformance) -> Option<(String, String, String)> {
    match &r.comparison {
        Comparison::NotCompared(why) => Some((why.clone(), String::new(), String::new())),
        Comparison::Compared(_) => r.unlisted().first().map(|j| {
            let d = &j.difference;
            (d.field.clone(), d.sim.clone(), d.netns.clone())
        }),
    }
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `conformance.md`.
pub fn markdown(report: &ConformReport) -> String {
    let mut out = String::new();
    let n = report.results.len();
    let _ = writeln!(out, "# Conformance: the simulator against the kernel\n");
    let _ = writeln!(
        out,
        "Every scenario runs on both backends (`sim`: the deterministic simulator; `netns`: real \
         network namespaces on this machine's kernel); each must pass its own expectations, and \
         their Outcomes are compared field by field (ephemeral ports normalised). A difference \
         must be covered by an entry of `{}`, each with its reason; any other fails the run.\n",
        report.expected.file
    );
    let _ = writeln!(out, "Regenerate: `{REGENERATE}`\n");
    let _ = writeln!(out, "Selection: {}.\n", report.selection);
    if !report.environment.is_empty() {
        let words = crate::summary::environment_words(&report.environment);
        let _ = writeln!(out, "Environment: {words}.\n");
    }
    let _ = writeln!(
        out,
        "**{} of {n} scenario{} conform** (pass on both backends, every difference listed).\n",
        report.conforming(),
        if n == 1 { "" } else { "s" }
    );

    let _ = writeln!(out, "## Matrix\n");
    let _ = writeln!(
        out,
        "`agree`: `yes` when every difference is covered by an entry (see below), `NO` with the \
         first unlisted field and both values, `—` when a side produced no Outcome.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | sim | netns | agree | first unlisted difference | sim value | netns value |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for r in &report.results {
        let (field, a, b) = first_unlisted(r).unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            r.id,
            side(&r.sim),
            side(&r.netns),
            agree(r),
            if field.is_empty() { String::new() } else { format!("`{}`", md_cell(&field)) },
            md_cell(&a),
            md_cell(&b)
        );
    }

    let _ = writeln!(out, "\n## Exact in the lifecycle scenarios\n");
    let _ = writeln!(
        out,
        "In these scenarios no entry may cover a conntrack entry or a counter of a first-packet \
         rule (the nat table, `--ctstate NEW`): a difference there fails whatever the file says. \
         So where `agree` is `yes` below, the kernel's nat counters and conntrack tables (every \
         namespace, every `check` and the end) equal the simulator's.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | agree | first-packet counters compared | conntrack entries compared |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for r in report.results.iter().filter(|r| LIFECYCLE.contains(&r.id.as_str())) {
        let (counters, entries) = exact_sizes(r);
        let _ = writeln!(out, "| `{}` | {} | {counters} | {entries} |", r.id, agree(r));
    }

    let _ = writeln!(out, "\n## Known differences by entry\n");
    let usage = report.entry_usage();
    for (e, used) in report.expected.entries.iter().zip(&usage) {
        let _ = writeln!(out, "### `{}`\n", e.id);
        let _ = writeln!(out, "{}\n", e.reason.trim());
        let when: Vec<&str> = e.when.iter().map(|c| c.as_str()).collect();
        let _ = writeln!(
            out,
            "Matcher: scenarios `{}`, field `{}`{}.\n",
            e.scenarios.describe(),
            e.field.describe(),
            if when.is_empty() { String::new() } else { format!(", when {}", when.join(", ")) }
        );
        if used.is_empty() {
            let _ = writeln!(out, "Matched nothing in this run (stale?).\n");
        } else {
            let names: Vec<String> = used.keys().map(|id| format!("`{id}`")).collect();
            let _ = writeln!(
                out,
                "Matched in {} scenario{}: {}.\n",
                used.len(),
                if used.len() == 1 { "" } else { "s" },
                names.join(", ")
            );
        }
    }
    if report.expected.entries.is_empty() {
        let _ = writeln!(out, "No entries.\n");
    }

    let failing: Vec<&ScenarioConformance> =
        report.results.iter().filter(|r| !r.conforms()).collect();
    if !failing.is_empty() {
        let _ = writeln!(out, "## Failures\n");
        for r in failing {
            let _ = writeln!(out, "### `{}`\n", r.id);
            for (name, s) in [("sim", &r.sim), ("netns", &r.netns)] {
                for reason in s.reasons() {
                    let _ = writeln!(out, "- {name}: {}", md_cell(&reason));
                }
            }
            for j in r.unlisted() {
                let d = &j.difference;
                let _ = writeln!(
                    out,
                    "- unlisted: `{}`: sim {}, netns {}",
                    md_cell(&d.field),
                    md_cell(&d.sim),
                    md_cell(&d.netns)
                );
            }
            if let Comparison::NotCompared(why) = &r.comparison {
                let _ = writeln!(out, "- not compared: {why}");
            }
            out.push('\n');
        }
    }
    out
}

/// How many first-packet counters and conntrack entries the simulator's Outcome has over all
/// snapshots (what the exact comparison covered), as text.
fn exact_sizes(r: &ScenarioConformance) -> (String, String) {
    let crate::Status::Ran { world, run, .. } = &r.sim.status else {
        return ("—".into(), "—".into());
    };
    let rules = super::normalize::RuleBook::of(world);
    let states = run.outcome.checks.iter().map(|c| &c.state).chain([&run.outcome.end]);
    let (mut counters, mut entries) = (0usize, 0usize);
    for s in states {
        for (ns, st) in &s.netns {
            entries += st.conntrack.len();
            counters += st
                .counters
                .keys()
                .filter(|k| rules.counting(ns, k) == super::normalize::Counting::FirstPackets)
                .count();
        }
    }
    (counters.to_string(), entries.to_string())
}

fn case(
    name: String,
    file: &str,
    wall: Duration,
    failure: Option<(&str, String, String)>,
) -> TestCase {
    let status = match failure {
        None => TestCaseStatus::success(),
        Some((kind, message, text)) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type(kind);
            s.set_message(message);
            s.set_description(text);
            s
        }
    };
    let mut c = TestCase::new(name, status);
    c.set_classname(file);
    c.set_time(wall);
    c
}

fn side_failure(r: &ScenarioResult) -> Option<(&'static str, String, String)> {
    let kind = r.failure_kind()?;
    let reasons = r.reasons();
    Some((kind, reasons.first().cloned().unwrap_or_default(), reasons.join("\n")))
}

/// `junit.xml`: one testsuite, a testcase per scenario × {sim, netns, agree}.
pub fn junit(report: &ConformReport) -> Result<String, SerializeError> {
    let mut suite = TestSuite::new("testbed conform");
    suite.add_property(Property::new("selection", report.selection.as_str()));
    suite.add_property(Property::new("expected-differences", report.expected.file.as_str()));
    let mut total = Duration::ZERO;
    for r in &report.results {
        total += r.sim.wall + r.netns.wall;
        suite.add_test_case(case(
            format!("{} [sim]", r.id),
            &r.file,
            r.sim.wall,
            side_failure(&r.sim),
        ));
        suite.add_test_case(case(
            format!("{} [netns]", r.id),
            &r.file,
            r.netns.wall,
            side_failure(&r.netns),
        ));
        let failure = if r.agrees() {
            None
        } else {
            let lines: Vec<String> = match &r.comparison {
                Comparison::NotCompared(why) => vec![format!("not compared: {why}")],
                Comparison::Compared(_) => r
                    .unlisted()
                    .iter()
                    .map(|j| {
                        let d = &j.difference;
                        format!("{}: sim {}, netns {}", d.field, d.sim, d.netns)
                    })
                    .collect(),
            };
            Some(("difference", lines.first().cloned().unwrap_or_default(), lines.join("\n")))
        };
        suite.add_test_case(case(format!("{} [agree]", r.id), &r.file, Duration::ZERO, failure));
    }
    suite.set_time(total);
    let mut junit = Report::new("testbed conform");
    junit.set_time(total);
    junit.add_test_suite(suite);
    junit.to_string()
}

/// The matrix printed on stdout: scenario, sim, netns, agree (with the first unlisted
/// difference or first failure), wall time of both runs; then a totals line.
pub fn table(report: &ConformReport, out_dir: &str) -> String {
    let rows: Vec<[String; 5]> = report
        .results
        .iter()
        .map(|r| {
            let detail = if !r.sim.passed() {
                r.sim.first_reason().map(|x| format!("sim: {x}"))
            } else if !r.netns.passed() {
                r.netns.first_reason().map(|x| format!("netns: {x}"))
            } else {
                None
            };
            let detail = detail.or_else(|| {
                first_unlisted(r).map(|(f, a, b)| {
                    if a.is_empty() && b.is_empty() {
                        f
                    } else {
                        format!("{f}: sim {a}, netns {b}")
                    }
                })
            });
            let agree = match detail {
                Some(d) => format!("{} {}", agree(r), shorten(&d, REASON_WIDTH)),
                None => agree(r).to_string(),
            };
            let wall = r.sim.wall + r.netns.wall;
            [
                r.id.clone(),
                side(&r.sim).into(),
                side(&r.netns).into(),
                agree,
                format!("{:.1}s", wall.as_secs_f64()),
            ]
        })
        .collect();
    let header = ["scenario", "sim", "netns", "agree", "time"].map(String::from);
    let mut out = columns(&header, &rows);
    let n = report.results.len();
    let _ = writeln!(
        out,
        "\n{n} scenario{}: {} conform, {} do not; reports in {out_dir} (conformance.md, junit.xml, <id>/diff.txt)",
        if n == 1 { "" } else { "s" },
        report.conforming(),
        n - report.conforming(),
    );
    out
}
