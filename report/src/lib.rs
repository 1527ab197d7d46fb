//! `ambient-report` — running a selection of scenarios on a
//! [`Backend`](ambient_scenarios::Backend) and reporting what happened (what `testbed run` does),
//! and running each scenario on both backends and comparing their Outcomes ([`conform`], what
//! `testbed conform` does): as a library so that every part of it is testable without a real
//! backend.
//!
//! It sits above the backends: it takes them as `dyn Backend` from its caller (the `testbed`
//! command line opens them), and no backend depends on it.
//!
//! ```text
//! Request ──driver::run──▶ ScenarioResult per scenario ──▶ RunReport
//!   (paths, selection,       (loaded? ran? failures,         │
//!    options, out dir)        skipped steps, wall time)      ├─ write: <out>/<id>/outcome.json + artifacts
//!                                                            ├─ summary::render → <out>/summary.md
//!                                                            ├─ junit::render   → <out>/junit.xml
//!                                                            └─ table::render   → stdout
//! ```
//!
//! | module | what it is |
//! | --- | --- |
//! | [`driver`] | load → select → run each scenario → check → write; [`driver::Clock`] and [`driver::Progress`] are injected |
//! | [`verdict`] | per-connection verdicts, the from × to truth table, repetitions collapsed by story (pure) |
//! | [`lifecycle`] | a connection's packet lifecycle as a Mermaid `sequenceDiagram` (pure) |
//! | [`summary`] | `summary.md`: overall table, then per scenario its truth table, failures, diagrams |
//! | [`junit`] | `junit.xml`: one testsuite, one testcase per scenario |
//! | [`table`] | the summary table printed on stdout (with wall time) |
//! | [`write`](mod@write) | the output folder: refusing folders that are not ours, wiping, writing |
//! | [`conform`] | both backends per scenario, Outcomes normalised and compared field by field, the expected-differences file, the conformance matrix |
//!
//! What counts as a pass: the scenario loaded, the backend produced an Outcome, every
//! expectation held, no step was skipped, and the Outcome is consistent with what was asked
//! (scenario id, seed, artifact names). Everything else is a failure with its reasons, and one
//! scenario's failure never stops or hides another's.
//!
//! Determinism: `summary.md` is a function of the Worlds and Outcomes only (no wall time, no
//! paths of the output folder), so two simulator runs with the same seeds give byte-identical
//! files. Wall time (from the injected clock) appears only on stdout, in progress lines and in
//! `junit.xml`'s `time` attributes, where CI systems expect it.

pub mod conform;
pub mod driver;
pub mod junit;
pub mod lifecycle;
pub mod summary;
pub mod table;
pub mod verdict;
pub mod write;

use std::time::Duration;

use ambient_scenarios::backend::{BackendError, Run};
use ambient_scenarios::diag::Diagnostic;
use ambient_scenarios::expect::Failure;
use ambient_scenarios::world::World;

pub use driver::{Clock, Progress, Request, RunError, run};

/// Everything one `testbed run` produced: a result per selected scenario, in run order.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The backend's name (`sim`, `netns`).
    pub backend: String,
    /// What was asked: the selection and the options, in words (for the reports' headers).
    pub selection: String,
    /// `--seed`: the seed every scenario ran with instead of its own.
    pub seed: Option<u64>,
    /// What the run depended on outside the scenarios, `(what, value)` in order (kernel release,
    /// tool versions, commit): for a kernel run; empty for the simulator, whose reports are a
    /// function of the scenarios and seeds only.
    pub environment: Vec<(String, String)>,
    pub results: Vec<ScenarioResult>,
}

impl RunReport {
    /// The seed a scenario ran with (or was to run with).
    pub fn seed_of(&self, result: &ScenarioResult) -> Option<u64> {
        match &result.status {
            Status::Ran { run, .. } => Some(run.outcome.seed),
            _ => result.world().map(|w| self.seed.unwrap_or(w.seed)),
        }
    }

    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Whether any scenario met an infrastructure error (see
    /// [`ScenarioResult::infrastructure_error`]): the run is incomplete.
    pub fn infrastructure_errors(&self) -> usize {
        self.results.iter().filter(|r| r.infrastructure_error()).count()
    }

    /// 0 when every scenario passed; 3 when any scenario met an infrastructure error (the run is
    /// incomplete, whatever the others did); 1 otherwise (a file that did not load, an unmet
    /// expectation, a skipped step, a problem with a run). 2 is for runs that never started:
    /// [`RunError`].
    pub fn exit_code(&self) -> u8 {
        exit_code(self.failed() == 0, self.infrastructure_errors() > 0)
    }
}

/// The exit code of a run from whether everything passed and whether any infrastructure error
/// happened: 3 wins over 1, which wins over 0.
pub fn exit_code(all_passed: bool, infrastructure_error: bool) -> u8 {
    if infrastructure_error {
        3
    } else if all_passed {
        0
    } else {
        1
    }
}

/// One selected scenario file and what became of it.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario id; for a file that did not load, its file stem.
    pub id: String,
    /// The file as named to the loader.
    pub file: String,
    pub status: Status,
    /// Wall time spent on it (loading excluded). Never part of an Outcome or of `summary.md`.
    pub wall: Duration,
}

/// What became of a scenario.
#[derive(Debug, Clone)]
pub enum Status {
    /// The file did not load: its errors (never run).
    NotLoaded { errors: Vec<Diagnostic> },
    /// The backend could not produce an Outcome.
    BackendFailed { world: Box<World>, error: BackendError },
    /// The backend produced an Outcome.
    Ran {
        world: Box<World>,
        /// Boxed like the World: an Outcome is large.
        run: Box<Run>,
        /// Expectations the Outcome does not meet.
        failures: Vec<Failure>,
        /// What is wrong with the run itself (an Outcome for another scenario or seed, an
        /// artifact name that is not a plain file name …): backend bugs, never hidden.
        problems: Vec<String>,
    },
}

impl ScenarioResult {
    pub fn world(&self) -> Option<&World> {
        match &self.status {
            Status::NotLoaded { .. } => None,
            Status::BackendFailed { world, .. } | Status::Ran { world, .. } => Some(world),
        }
    }

    /// The backend could not produce an Outcome (it could not be opened, its environment failed,
    /// it panicked): the environment could not run the scenario, which says nothing about the
    /// scenario's expectations. Exit 3.
    pub fn infrastructure_error(&self) -> bool {
        matches!(self.status, Status::BackendFailed { .. })
    }

    pub fn passed(&self) -> bool {
        match &self.status {
            Status::Ran { run, failures, problems, .. } => {
                failures.is_empty() && problems.is_empty() && run.outcome.skipped.is_empty()
            }
            _ => false,
        }
    }

    /// Why it did not pass, one line each, most fundamental first: load errors; the backend's
    /// error; problems with the run; skipped steps; unmet expectations. Empty for a pass.
    pub fn reasons(&self) -> Vec<String> {
        match &self.status {
            Status::NotLoaded { errors } => {
                let mut out: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if out.is_empty() {
                    out.push(format!("{}: did not load", self.file));
                }
                out
            }
            Status::BackendFailed { error, .. } => {
                vec![format!("{}: backend error: {error}", self.file)]
            }
            Status::Ran { world, run, failures, problems } => {
                let mut out: Vec<String> =
                    problems.iter().map(|p| format!("{}: {p}", self.file)).collect();
                for s in &run.outcome.skipped {
                    out.push(skipped_line(world, s));
                }
                out.extend(failures.iter().map(ToString::to_string));
                out
            }
        }
    }

    /// The first reason, or `None` for a pass.
    pub fn first_reason(&self) -> Option<String> {
        self.reasons().into_iter().next()
    }

    /// A short word for the kind of failure: `load`, `backend`, `run`, `skipped`,
    /// `expectation`; `None` for a pass.
    pub fn failure_kind(&self) -> Option<&'static str> {
        match &self.status {
            _ if self.passed() => None,
            Status::NotLoaded { .. } => Some("load"),
            Status::BackendFailed { .. } => Some("backend"),
            Status::Ran { problems, .. } if !problems.is_empty() => Some("run"),
            Status::Ran { run, .. } if !run.outcome.skipped.is_empty() => Some("skipped"),
            Status::Ran { .. } => Some("expectation"),
        }
    }

    /// Connections that met their expectations, out of those the scenario's connect steps open
    /// (see [`verdict`]); `None` for a file that did not load.
    pub fn connections(&self) -> Option<(u64, u64)> {
        match &self.status {
            Status::NotLoaded { .. } => None,
            Status::BackendFailed { world, .. } => Some((0, verdict::expected_connections(world))),
            Status::Ran { world, run, .. } => {
                let table = verdict::TruthTable::build(world, &run.outcome);
                Some((table.as_expected, table.expected))
            }
        }
    }
}

/// `file:line:col: steps[i]: skipped by the backend: reason`.
fn skipped_line(world: &World, s: &ambient_scenarios::outcome::Skipped) -> String {
    match world.steps.iter().find(|st| st.index == s.step) {
        Some(step) => format!(
            "{}:{}: {}: step skipped by the backend: {}",
            world.file, step.at.pos, step.at.path, s.reason
        ),
        None => {
            format!("{}: steps[{}]: step skipped by the backend: {}", world.file, s.step, s.reason)
        }
    }
}

#[cfg(test)]
mod tests;
