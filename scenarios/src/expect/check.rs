//! The expectation checker: `World` expectations × `Outcome` → failures. Pure: no I/O, no clock;
//! both backends call it on what they observed.
//!
//! Matching rules:
//! - connections: every expectation on a connect id applies to every repetition of that step;
//!   the Outcome must hold exactly as many connections with that id as the step opened;
//! - tunnels, counters: only the pairs and rules listed are checked (an absent tunnel pair
//!   counts 0);
//! - conntrack: the whole table, in any order: every expected entry must match a different
//!   actual entry and no actual entry may be left over. A `*` port matches any port; fields left
//!   out of an expected entry are not compared. (Matching is a maximum bipartite matching, so
//!   the order of entries in the file never matters.)

use std::collections::BTreeMap;
use std::fmt;

use super::{ConnExpect, ConnField, CtPattern, Expectations};
use crate::diag::At;
use crate::outcome::{Connection, ConntrackEntry, Outcome, State};
use crate::world::{Action, World};

/// One expectation that the Outcome does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub file: String,
    /// Where the expectation is written.
    pub at: At,
    /// What was expected and what was seen, in one sentence.
    pub message: String,
    pub expected: String,
    pub actual: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.at.pos)?;
        if !self.at.path.is_root() {
            write!(f, "{}: ", self.at.path)?;
        }
        f.write_str(&self.message)
    }
}

impl Failure {
    /// "`prefix`expected `expected`, got `actual`", at `at` in `file`.
    pub(crate) fn new(file: &str, at: &At, prefix: &str, expected: String, actual: String) -> Self {
        failure(file, at, prefix, expected, actual)
    }
}

fn failure(file: &str, at: &At, prefix: &str, expected: String, actual: String) -> Failure {
    Failure {
        file: file.to_string(),
        at: at.clone(),
        message: format!("{prefix}expected {expected}, got {actual}"),
        expected,
        actual,
    }
}

/// Checks everything a World expects of an Outcome: each connect step's `expect`, each `check`
/// step against its snapshot, and the top-level `expect` against the end state.
pub fn check_outcome(world: &World, outcome: &Outcome) -> Vec<Failure> {
    let file = world.file.as_str();
    let mut out = Vec::new();
    let counts: BTreeMap<String, u32> =
        world.connects().map(|(_, c)| (c.id.clone(), c.repeat.count())).collect();
    for (step, c) in world.connects() {
        let records: Vec<&Connection> = outcome.connections_with_id(&c.id).collect();
        let skipped = outcome.skipped.iter().find(|s| s.step == step.index);
        if let Some(s) = skipped
            && records.is_empty()
        {
            let actual = format!("the step was skipped: {}", s.reason);
            let expected = format!("{} connection(s)", c.repeat.count());
            out.push(failure(file, &step.at, "", expected, actual));
            continue;
        }
        match &c.expect {
            Some(e) => out.extend(check_connection(file, &c.id, e, &records, c.repeat.count())),
            // Without an expect block the step still declares its connections: a backend
            // that opened fewer (or more) never passes.
            None if records.len() != c.repeat.count() as usize => {
                let expected = format!("{} connection(s) with id {:?}", c.repeat.count(), c.id);
                let actual = format!("{} in the outcome", records.len());
                out.push(failure(file, &step.at, "", expected, actual));
            }
            None => {}
        }
    }
    for (step, r) in world.resolves() {
        let records: Vec<&crate::outcome::Resolution> =
            outcome.resolutions_with_id(&r.id).collect();
        if let Some(s) = outcome.skipped.iter().find(|s| s.step == step.index)
            && records.is_empty()
        {
            let actual = format!("the step was skipped: {}", s.reason);
            out.push(failure(file, &step.at, "", "1 lookup".into(), actual));
            continue;
        }
        match &r.expect {
            Some(e) => out.extend(super::resolve::check_resolutions(file, &r.id, e, &records, 1)),
            None if records.len() != 1 => {
                let expected = format!("1 lookup with id {:?}", r.id);
                out.push(failure(file, &step.at, "", expected, records.len().to_string()));
            }
            None => {}
        }
    }
    for step in &world.steps {
        let Action::Check(check) = &step.action else { continue };
        match outcome.check_at(step.index) {
            Some(snap) => {
                out.extend(check_connections(file, &check.expect, &outcome.connections, &counts));
                out.extend(check_state(file, &check.expect, &snap.state));
            }
            None => {
                let actual = match outcome.skipped.iter().find(|s| s.step == step.index) {
                    Some(s) => format!("none (skipped: {})", s.reason),
                    None => "none".to_string(),
                };
                out.push(failure(file, &step.at, "", "a snapshot at this check".into(), actual));
            }
        }
    }
    out.extend(check_connections(file, &world.expect, &outcome.connections, &counts));
    out.extend(check_state(file, &world.expect, &outcome.end));
    out
}

/// Checks an expect block's `connections` against the connections of an Outcome. `counts` gives
/// how many connections each id should have (a missing id counts 1).
pub fn check_connections(
    file: &str,
    exp: &Expectations,
    connections: &[Connection],
    counts: &BTreeMap<String, u32>,
) -> Vec<Failure> {
    let mut out = Vec::new();
    for (id, e) in &exp.connections {
        let records: Vec<&Connection> = connections.iter().filter(|c| &c.id == id).collect();
        let count = counts.get(id).copied().unwrap_or(1);
        out.extend(check_connection(file, id, e, &records, count));
    }
    out
}

/// Checks one connection expectation against every repetition of its step.
pub fn check_connection(
    file: &str,
    id: &str,
    e: &ConnExpect,
    records: &[&Connection],
    count: u32,
) -> Vec<Failure> {
    let mut out = Vec::new();
    if records.len() != count as usize {
        let expected = format!("{count} connection(s) with id {id:?}");
        out.push(failure(file, &e.at, "", expected, format!("{}", records.len())));
    }
    let n = records.len();
    for f in &e.fields {
        // Group the repetitions that disagree by what they show, so ten identical failures
        // read as one line.
        let mut wrong: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, c) in records.iter().enumerate() {
            if let Some(actual) = mismatch(&f.value, c) {
                wrong.entry(actual).or_default().push(i + 1);
            }
        }
        for (actual, which) in wrong {
            let prefix = if n == 1 {
                String::new()
            } else if which.len() == n {
                format!("all {n} connections: ")
            } else {
                let list: Vec<String> = which.iter().map(ToString::to_string).collect();
                format!(
                    "connection{} {} of {n}: ",
                    if which.len() > 1 { "s" } else { "" },
                    list.join(", ")
                )
            };
            out.push(failure(file, &f.at, &prefix, expected_text(&f.value), actual));
        }
    }
    out
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "null".to_string(),
    }
}

fn expected_text(f: &ConnField) -> String {
    match f {
        ConnField::Outcome(o) => o.to_string(),
        ConnField::Path(p) => opt(p),
        ConnField::Sent(n) | ConnField::Received(n) => format!("{n} bytes"),
        ConnField::Intact(b) | ConnField::Reused(b) => b.to_string(),
        ConnField::ServerPeer(p) => opt(p),
        ConnField::ServerIdentity(s) => opt(s),
        ConnField::Tunnel(t) => opt(t),
    }
}

/// `None` if the connection shows what `f` expects; otherwise what it shows instead.
fn mismatch(f: &ConnField, c: &Connection) -> Option<String> {
    let (ok, actual) = match f {
        ConnField::Outcome(o) => {
            let actual = match (&c.error, c.outcome) {
                (Some(msg), crate::outcome::ConnOutcome::Error) => format!("error ({msg})"),
                _ => c.outcome.to_string(),
            };
            (c.outcome == *o, actual)
        }
        ConnField::Path(p) => (c.path == *p, opt(&c.path)),
        ConnField::Sent(n) => (c.sent == *n, format!("{} bytes", c.sent)),
        ConnField::Received(n) => (c.received == *n, format!("{} bytes", c.received)),
        ConnField::Intact(b) => (c.intact == *b, c.intact.to_string()),
        ConnField::Reused(b) => (c.reused == *b, c.reused.to_string()),
        ConnField::ServerPeer(p) => (c.server_peer == *p, opt(&c.server_peer)),
        ConnField::ServerIdentity(s) => (c.server_identity == *s, opt(&c.server_identity)),
        ConnField::Tunnel(t) => (c.tunnel == *t, opt(&c.tunnel)),
    };
    (!ok).then_some(actual)
}

/// Checks an expect block's tunnels, conntrack and counters against a State.
pub fn check_state(file: &str, exp: &Expectations, state: &State) -> Vec<Failure> {
    let mut out = Vec::new();
    for (pair, n) in &exp.tunnels {
        let actual = state.tunnels.get(pair).copied().unwrap_or(0);
        if actual != n.value {
            out.push(failure(file, &n.at, "", n.value.to_string(), actual.to_string()));
        }
    }
    for (label, patterns) in &exp.conntrack {
        let Some(ns) = state.netns.get(label) else {
            out.push(failure(
                file,
                &patterns.at,
                "",
                format!("a conntrack table for {label}"),
                "none in the outcome".into(),
            ));
            continue;
        };
        let m = match_conntrack(&patterns.value, &ns.conntrack);
        if m.missing.is_empty() && m.unexpected.is_empty() {
            continue;
        }
        let expected = if m.missing.is_empty() {
            "no other entries".to_string()
        } else {
            m.missing.iter().map(|p| describe_pattern(p)).collect::<Vec<_>>().join("; ")
        };
        let actual = if m.unexpected.is_empty() {
            "no such entry".to_string()
        } else {
            m.unexpected.iter().map(|e| describe_entry(e)).collect::<Vec<_>>().join("; ")
        };
        let message = format!(
            "conntrack of {label}: {} expected entr{} not found [{expected}]; {} entr{} not expected [{actual}] ({} entries in the table)",
            m.missing.len(),
            if m.missing.len() == 1 { "y" } else { "ies" },
            m.unexpected.len(),
            if m.unexpected.len() == 1 { "y" } else { "ies" },
            ns.conntrack.len(),
        );
        out.push(Failure {
            file: file.to_string(),
            at: patterns.at.clone(),
            message,
            expected,
            actual,
        });
    }
    for (label, rules) in &exp.counters {
        let ns = state.netns.get(label);
        for (rule, n) in rules {
            let actual = ns.and_then(|ns| ns.counters.get(rule)).map(|c| c.packets);
            match actual {
                Some(a) if a == n.value => {}
                Some(a) => out.push(failure(
                    file,
                    &n.at,
                    "",
                    format!("{} packets", n.value),
                    format!("{a} packets"),
                )),
                None => out.push(failure(
                    file,
                    &n.at,
                    "",
                    format!("{} packets", n.value),
                    format!("no counter for {rule} of {label} in the outcome"),
                )),
            }
        }
    }
    out
}

/// The result of matching expected conntrack entries to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtMatch<'a> {
    /// Expected entries no actual entry was left to match.
    pub missing: Vec<&'a CtPattern>,
    /// Actual entries no expected entry matched.
    pub unexpected: Vec<&'a ConntrackEntry>,
}

/// Does an actual entry satisfy an expected one?
pub fn pattern_matches(p: &CtPattern, e: &ConntrackEntry) -> bool {
    let tuple = |t: &crate::values::TuplePattern, a: &crate::outcome::Tuple| {
        t.src.matches(*a.src.ip(), a.src.port()) && t.dst.matches(*a.dst.ip(), a.dst.port())
    };
    p.proto == e.proto
        && tuple(&p.orig, &e.orig)
        && p.reply.as_ref().is_none_or(|r| tuple(r, &e.reply))
        && p.state.is_none_or(|s| e.state == Some(s))
        && p.mark.is_none_or(|m| m == e.mark)
        && p.zone.is_none_or(|z| z == e.zone)
}

/// Maximum matching of expected entries to actual ones (Kuhn's augmenting paths; tables are
/// small), so that which `*` pattern claims which entry never depends on order.
pub fn match_conntrack<'a>(
    patterns: &'a [CtPattern],
    entries: &'a [ConntrackEntry],
) -> CtMatch<'a> {
    let edges: Vec<Vec<usize>> = patterns
        .iter()
        .map(|p| {
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| pattern_matches(p, e))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    let mut owner: Vec<Option<usize>> = vec![None; entries.len()];
    fn augment(
        i: usize,
        edges: &[Vec<usize>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for &j in &edges[i] {
            if seen[j] {
                continue;
            }
            seen[j] = true;
            if owner[j].is_none_or(|k| augment(k, edges, seen, owner)) {
                owner[j] = Some(i);
                return true;
            }
        }
        false
    }
    let matched: Vec<bool> = (0..patterns.len())
        .map(|i| augment(i, &edges, &mut vec![false; entries.len()], &mut owner))
        .collect();
    CtMatch {
        missing: patterns.iter().zip(&matched).filter(|(_, m)| !**m).map(|(p, _)| p).collect(),
        unexpected: entries
            .iter()
            .zip(&owner)
            .filter(|(_, o)| o.is_none())
            .map(|(e, _)| e)
            .collect(),
    }
}

fn describe_pattern(p: &CtPattern) -> String {
    let mut s = format!("{} {}", p.proto, p.orig);
    if let Some(r) = &p.reply {
        s.push_str(&format!(" reply {r}"));
    }
    if let Some(st) = p.state {
        s.push_str(&format!(" {st}"));
    }
    if let Some(m) = p.mark {
        s.push_str(&format!(" mark {m:#x}"));
    }
    if let Some(z) = p.zone {
        s.push_str(&format!(" zone {z}"));
    }
    s
}

fn describe_entry(e: &ConntrackEntry) -> String {
    let mut s = format!("{} {} reply {}", e.proto, e.orig, e.reply);
    if let Some(st) = e.state {
        s.push_str(&format!(" {st}"));
    }
    if e.mark != 0 {
        s.push_str(&format!(" mark {:#x}", e.mark));
    }
    if e.zone != 0 {
        s.push_str(&format!(" zone {}", e.zone));
    }
    s
}

#[cfg(test)]
mod tests;
