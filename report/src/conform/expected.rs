//! The expected-differences file (`scenarios/expected-differences.yaml`): differences between the
//! simulator and the kernel that are understood, each with a precise matcher and a reason a
//! reader can check. A difference no entry matches fails `testbed conform`; the report lists what
//! each entry matched, and entries that matched nothing, so stale ones get noticed.
//!
//! ```yaml
//! - id: every-packet-counters          # unique; names the entry in reports
//!   reason: >-                         # required, not empty: why the backends differ here
//!     Rules every packet traverses count ACKs and segments …
//!   scenarios: "*"                     # "*", or a list of scenario ids (`*` globs allowed)
//!   field: '*.netns[*].counters[*]'   # a pattern (or a list) over the difference's field; `*` matches
//!                                      # any run of characters, everything else is literal;
//!                                      # it must match the whole field or a prefix ending
//!                                      # before `.` or `[`
//!   when: [every-packet-counter]       # optional; conditions that must all hold
//! ```
//!
//! **What no entry can cover.** In the lifecycle scenarios ([`LIFECYCLE`]) conntrack entries and
//! counters of first-packet rules (nat, `--ctstate NEW`) must be equal: a difference there is
//! reported as unlisted whatever the file says. This is the proof that the kernel's nat counters
//! and conntrack entries equal the simulator's for those scenarios.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::compare::{Difference, FieldKind};
use ambient_scenarios::diag::{Diagnostic, KeyPath, Pos, Severity};
use ambient_scenarios::outcome::{ConnOutcome, Outcome};
use ambient_scenarios::yaml;

/// The lifecycle scenarios: the packet lifecycle of DESIGN.md on every path (captured →
/// captured on one node and across nodes, by pod IP and by Service, pooled; passthrough; inbound
/// plaintext; no proxy at all; policy denial; the fast path; connmark; teardown in conntrack).
/// Their conntrack entries and first-packet counters are compared exactly, with no exception.
pub const LIFECYCLE: &[&str] = &[
    "connmark-proxied-connections",
    "conntrack-close-wait-expiry",
    "conntrack-time-wait-expiry",
    "cross-node-hbone-pooling",
    "cross-node-pod-ip",
    "deny-policy",
    "external-to-captured",
    "fast-path-1mib",
    "half-close-server-first",
    "inbound-plaintext",
    "inbound-plaintext-same-node",
    "passthrough",
    "passthrough-service",
    "same-node-hbone",
    "same-node-service",
    "service-endpoints-two-nodes",
    "uncaptured-direct",
];

/// Whether a difference of this kind in this scenario must not be covered by any entry.
pub fn exact_only(scenario: &str, kind: FieldKind) -> bool {
    matches!(kind, FieldKind::Conntrack | FieldKind::FirstPacketCounter)
        && LIFECYCLE.contains(&scenario)
}

/// One understood difference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub id: String,
    pub reason: String,
    pub scenarios: Patterns,
    /// One pattern or several (any may match).
    pub field: Patterns,
    #[serde(default)]
    pub when: Vec<Condition>,
    /// Where the entry is written in the file (filled in after decoding).
    #[serde(skip)]
    pub pos: Pos,
}

/// One glob or a list of globs: which scenarios an entry applies to, which fields it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patterns {
    /// `"*"` (every scenario), or one id or glob.
    One(String),
    /// Ids or globs.
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Patterns;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a pattern or a list of patterns (`*` matches any run of characters)")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Patterns, E> {
                Ok(Patterns::One(v.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Patterns, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Patterns::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Patterns {
    pub fn matches(&self, id: &str) -> bool {
        self.iter().any(|p| glob(p, id))
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        match self {
            Patterns::One(p) => std::slice::from_ref(p).iter(),
            Patterns::List(ps) => ps.iter(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Patterns::One(s) => s.trim().is_empty(),
            Patterns::List(v) => v.is_empty() || v.iter().any(|s| s.trim().is_empty()),
        }
    }

    /// As written, for reports.
    pub fn describe(&self) -> String {
        match self {
            Patterns::One(p) => p.clone(),
            Patterns::List(ps) => ps.join(", "),
        }
    }
}

/// A condition on the difference and the two Outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The field is a counter of a rule that every packet of a connection may traverse (not
    /// nat, not `--ctstate NEW`): its count depends on the TCP stack.
    EveryPacketCounter,
    /// The field belongs to connection N (`connections[N]…`), and on both backends connection N
    /// ended `denied`, `refused` or `reset` with nothing received: the far end (a proxy refusing
    /// it, or an app) reset it before answering anything, so whether the client's write got into
    /// its socket before the RST arrived is a race between the two ends' TCP stacks.
    RefusedBeforeReply,
}

impl Condition {
    pub const ALL: &'static [Condition] =
        &[Condition::EveryPacketCounter, Condition::RefusedBeforeReply];

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::EveryPacketCounter => "every-packet-counter",
            Condition::RefusedBeforeReply => "refused-before-reply",
        }
    }

    pub fn holds(self, d: &Difference, sim: &Outcome, netns: &Outcome) -> bool {
        match self {
            Condition::EveryPacketCounter => d.kind == FieldKind::EveryPacketCounter,
            Condition::RefusedBeforeReply => {
                let Some(i) = connection_index(&d.field) else { return false };
                let refused = |o: &Outcome| {
                    o.connections.get(i).is_some_and(|c| {
                        matches!(
                            c.outcome,
                            ConnOutcome::Denied | ConnOutcome::Refused | ConnOutcome::Reset
                        ) && c.received == 0
                    })
                };
                refused(sim) && refused(netns)
            }
        }
    }
}

/// N of a `connections[N]…` field.
fn connection_index(field: &str) -> Option<usize> {
    let rest = field.strip_prefix("connections[")?;
    rest[..rest.find(']')?].parse().ok()
}

/// `*` matches any run of characters; everything else is literal; the whole text must match.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `pattern` matches `field` whole, or a prefix of it that ends where a sub-field starts
/// (`connections[2]` covers `connections[2].sent`).
pub fn field_matches(pattern: &str, field: &str) -> bool {
    if glob(pattern, field) {
        return true;
    }
    field
        .char_indices()
        .filter(|(_, c)| *c == '.' || *c == '[')
        .any(|(i, _)| i > 0 && glob(pattern, &field[..i]))
}

impl Entry {
    /// Whether this entry covers `d` (of scenario `scenario`).
    pub fn covers(&self, scenario: &str, d: &Difference, sim: &Outcome, netns: &Outcome) -> bool {
        self.scenarios.matches(scenario)
            && self.field.iter().any(|f| field_matches(f, &d.field))
            && self.when.iter().all(|c| c.holds(d, sim, netns))
    }
}

/// The file, loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedDifferences {
    /// The file as named to the loader.
    pub file: String,
    pub entries: Vec<Entry>,
}

/// How one difference was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Covered by the entry at this index.
    Expected(usize),
    /// No entry covers it.
    Unlisted,
    /// An entry would cover it, but its kind is exact in this scenario ([`exact_only`]).
    ExactOnly,
}

impl ExpectedDifferences {
    /// Loads and checks a file: every entry has an id (unique), a reason (not empty), a field
    /// pattern (not empty) and scenarios; unknown keys and conditions are errors. All problems
    /// are returned, each placed in the file.
    pub fn load(file: &str, text: &str) -> Result<ExpectedDifferences, Vec<Diagnostic>> {
        let err = |pos: Pos, path: KeyPath, message: String| Diagnostic {
            file: file.to_string(),
            pos,
            severity: Severity::Error,
            path,
            message,
        };
        let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
        if text.lines().all(blank) {
            return Ok(ExpectedDifferences { file: file.to_string(), entries: Vec::new() });
        }
        let root = yaml::parse(text).map_err(|e| vec![err(e.pos, KeyPath::root(), e.message)])?;
        let items = match &root.value {
            yaml::Value::Seq(items) => items.as_slice(),
            yaml::Value::Null => &[],
            _ => {
                let m = format!("expected a list of entries, found {}", root.kind());
                return Err(vec![err(root.pos, KeyPath::root(), m)]);
            }
        };
        let mut errors = Vec::new();
        let mut entries = Vec::new();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for (i, node) in items.iter().enumerate() {
            let path = KeyPath::root().index(i);
            let mut entry: Entry = match yaml::de::from_node(node, &path) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(err(e.pos.unwrap_or(node.pos), e.path.unwrap_or(path), e.message));
                    continue;
                }
            };
            entry.pos = node.pos;
            let at = |key: &str| node.get(key).map_or(node.pos, |n| n.pos);
            if entry.reason.trim().is_empty() {
                errors.push(err(
                    at("reason"),
                    path.key("reason"),
                    "every entry needs a reason: why the backends differ here, in words a reader can check".into(),
                ));
            }
            if entry.field.is_empty() {
                errors.push(err(
                    at("field"),
                    path.key("field"),
                    "the field pattern is empty".into(),
                ));
            }
            if entry.scenarios.is_empty() {
                errors.push(err(
                    at("scenarios"),
                    path.key("scenarios"),
                    "name the scenarios (ids or globs), or \"*\" for all".into(),
                ));
            }
            if let Some(first) = ids.insert(entry.id.clone(), i) {
                errors.push(err(
                    at("id"),
                    path.key("id"),
                    format!("id {:?} is already used by entry [{first}]", entry.id),
                ));
            }
            entries.push(entry);
        }
        if errors.is_empty() {
            Ok(ExpectedDifferences { file: file.to_string(), entries })
        } else {
            Err(errors)
        }
    }

    /// Reads and loads a file.
    pub fn read(path: &std::path::Path) -> Result<ExpectedDifferences, Vec<Diagnostic>> {
        let file = path.display().to_string();
        let text =
            ambient_proxy::config::read_text(path, ambient_scenarios::load::MAX_SCENARIO_BYTES)
                .map_err(|e| {
                    vec![Diagnostic {
                        file: file.clone(),
                        pos: Pos::new(1, 1),
                        severity: Severity::Error,
                        path: KeyPath::root(),
                        message: format!("cannot read: {e}"),
                    }]
                })?;
        ExpectedDifferences::load(&file, &text)
    }

    /// Judges one difference of `scenario`: the first entry that covers it, if the difference
    /// may be covered at all.
    pub fn judge(&self, scenario: &str, d: &Difference, sim: &Outcome, netns: &Outcome) -> Verdict {
        match self.entries.iter().position(|e| e.covers(scenario, d, sim, netns)) {
            Some(_) if exact_only(scenario, d.kind) => Verdict::ExactOnly,
            Some(i) => Verdict::Expected(i),
            None => Verdict::Unlisted,
        }
    }

    /// Ids of entries whose scenario matcher names no scenario of `ids` (for reports: an entry
    /// for a scenario that no longer exists is stale too).
    pub fn out_of_scope<'a>(&'a self, ids: &BTreeSet<&str>) -> Vec<&'a str> {
        self.entries
            .iter()
            .filter(|e| !ids.iter().any(|id| e.scenarios.matches(id)))
            .map(|e| e.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests;
