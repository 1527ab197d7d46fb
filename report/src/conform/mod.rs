//! Conformance: every scenario on both backends, their Outcomes compared field by field — what
//! `testbed conform` does, as a library.
//!
//! ```text
//! World ─┬─ sim backend ───▶ Outcome ─┬─ check_outcome ─▶ sim failures
//!        └─ netns backend ─▶ Outcome ─┼─ check_outcome ─▶ netns failures
//!                                     └─ compare ─▶ differences ─ expected-differences file ─▶
//!                                          expected (by entry) | unlisted (fails)
//! ```
//!
//! | module | what it is |
//! | --- | --- |
//! | [`normalize`] | ephemeral ports → placeholders; which rules count first packets only (pure) |
//! | [`compare`](mod@compare) | two Outcomes → [`Difference`]s with JSON-path fields (pure) |
//! | [`expected`] | `scenarios/expected-differences.yaml`: loading (every entry needs a reason) and matching |
//! | [`driver`] | load → select → both backends per scenario (the kernel side `--jobs` at once) → compare → write |
//! | [`render`] | `conformance.md` (the matrix), `junit.xml`, the stdout matrix, per-scenario `diff.txt` |
//!
//! A scenario *conforms* when it passes its own expectations on both backends and every
//! difference between the two Outcomes is covered by an expected-differences entry. Exit status
//! of the run: 0 only if every selected scenario conforms; 3 if a backend failed to produce an
//! Outcome anywhere (see [`ConformReport::exit_code`]); 1 otherwise.

pub mod compare;
pub mod driver;
pub mod expected;
pub mod normalize;
pub mod render;

use std::collections::BTreeMap;

pub use compare::{Difference, FieldKind, compare};
pub use driver::{ConformProgress, ConformRequest, run};
pub use expected::{ExpectedDifferences, Verdict};

use crate::ScenarioResult;

/// One difference and how it was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub difference: Difference,
    pub verdict: Verdict,
}

/// Whether the Outcomes could be compared.
#[derive(Debug, Clone)]
pub enum Comparison {
    /// A side has no Outcome (the file did not load, or a backend failed): why.
    NotCompared(String),
    /// Every difference, in field order, judged.
    Compared(Vec<Judged>),
}

/// One scenario on both backends.
#[derive(Debug, Clone)]
pub struct ScenarioConformance {
    pub id: String,
    pub file: String,
    /// `slow` or not, and the other tags (for the report's grouping).
    pub tags: Vec<String>,
    pub sim: ScenarioResult,
    pub netns: ScenarioResult,
    pub comparison: Comparison,
}

impl ScenarioConformance {
    /// Compared, and every difference is covered by an entry.
    pub fn agrees(&self) -> bool {
        match &self.comparison {
            Comparison::NotCompared(_) => false,
            Comparison::Compared(d) => d.iter().all(|j| matches!(j.verdict, Verdict::Expected(_))),
        }
    }

    /// Passes on both backends and agrees.
    pub fn conforms(&self) -> bool {
        self.sim.passed() && self.netns.passed() && self.agrees()
    }

    /// The differences no entry covers, in field order.
    pub fn unlisted(&self) -> Vec<&Judged> {
        match &self.comparison {
            Comparison::NotCompared(_) => Vec::new(),
            Comparison::Compared(d) => {
                d.iter().filter(|j| !matches!(j.verdict, Verdict::Expected(_))).collect()
            }
        }
    }

    /// Differences covered, per entry index.
    pub fn expected_by_entry(&self) -> BTreeMap<usize, usize> {
        let mut out = BTreeMap::new();
        if let Comparison::Compared(d) = &self.comparison {
            for j in d {
                if let Verdict::Expected(i) = j.verdict {
                    *out.entry(i).or_default() += 1;
                }
            }
        }
        out
    }
}

/// Everything one `testbed conform` produced.
#[derive(Debug, Clone)]
pub struct ConformReport {
    /// The selection in words (for headers).
    pub selection: String,
    /// What the run depended on outside the scenarios (kernel release, tool versions, commit),
    /// `(what, value)` in order, for the header.
    pub environment: Vec<(String, String)>,
    pub expected: ExpectedDifferences,
    /// In scenario id order.
    pub results: Vec<ScenarioConformance>,
}

impl ConformReport {
    pub fn conforming(&self) -> usize {
        self.results.iter().filter(|r| r.conforms()).count()
    }

    /// 0 when every scenario conforms; 3 when a backend failed to produce an Outcome on either
    /// side of any scenario (an infrastructure error: the comparison is incomplete); 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        let infrastructure = self
            .results
            .iter()
            .any(|r| r.sim.infrastructure_error() || r.netns.infrastructure_error());
        crate::exit_code(self.conforming() == self.results.len(), infrastructure)
    }

    /// Per entry (by index): the scenarios it covered differences of, with how many.
    pub fn entry_usage(&self) -> Vec<BTreeMap<&str, usize>> {
        let mut out = vec![BTreeMap::new(); self.expected.entries.len()];
        for r in &self.results {
            for (i, n) in r.expected_by_entry() {
                if let Some(m) = out.get_mut(i) {
                    m.insert(r.id.as_str(), n);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
