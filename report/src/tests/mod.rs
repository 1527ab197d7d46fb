//! Report tests: fixtures, the test double backend, and the snapshots of `summary.md` and
//! `junit.xml` for prepared Outcomes (a pass, failed expectations, a file that does not load, a
//! backend error, skipped steps).

pub(crate) mod fixture;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

use super::driver::{Clock, run_one};
use super::{RunReport, ScenarioResult, Status};
use ambient_scenarios::backend::{Artifact, Backend, BackendError, Run, RunOptions};
use ambient_scenarios::load::load_str;
use ambient_scenarios::world::World;

/// A **test double** for the report writer: a [`Backend`] that runs nothing and returns the
/// Outcome (or error) prepared for each scenario id. It exists only in tests; the CLI cannot
/// reach it.
#[derive(Debug, Default)]
pub(crate) struct PreparedOutcomes {
    by_id: BTreeMap<String, Result<Run, BackendError>>,
    /// Scenario ids that panic instead.
    panics: Vec<String>,
    /// Every call: the scenario id and the options it was given.
    pub calls: RefCell<Vec<(String, RunOptions)>>,
}

impl PreparedOutcomes {
    pub(crate) fn outcome(mut self, outcome: ambient_scenarios::outcome::Outcome) -> Self {
        let run = Run { outcome, artifacts: Vec::new() };
        self.by_id.insert(run.outcome.scenario.clone(), Ok(run));
        self
    }

    pub(crate) fn run(mut self, run: Run) -> Self {
        self.by_id.insert(run.outcome.scenario.clone(), Ok(run));
        self
    }

    pub(crate) fn error(mut self, id: &str, message: &str) -> Self {
        self.by_id.insert(id.to_string(), Err(BackendError::new(message)));
        self
    }

    pub(crate) fn panic_on(mut self, id: &str) -> Self {
        self.panics.push(id.to_string());
        self
    }
}

impl Backend for PreparedOutcomes {
    fn name(&self) -> &'static str {
        "prepared"
    }

    fn run(&self, world: &World, opts: &RunOptions) -> Result<Run, BackendError> {
        self.calls.borrow_mut().push((world.id.clone(), opts.clone()));
        if self.panics.contains(&world.id) {
            panic!("prepared panic for {}", world.id);
        }
        self.by_id.get(&world.id).cloned().unwrap_or_else(|| {
            Err(BackendError::new(format!("no Outcome prepared for {}", world.id)))
        })
    }
}

/// A clock that advances by `step` every time it is read.
#[derive(Debug)]
pub(crate) struct SteppingClock {
    pub step: Duration,
    now: Cell<Duration>,
}

impl SteppingClock {
    pub(crate) fn new(step: Duration) -> Self {
        SteppingClock { step, now: Cell::new(Duration::ZERO) }
    }
}

impl Clock for SteppingClock {
    fn now(&self) -> Duration {
        let t = self.now.get() + self.step;
        self.now.set(t);
        t
    }
}

pub(crate) fn world(file: &str, text: &str) -> World {
    load_str(file, text).into_result().unwrap()
}

/// MESH under another id.
pub(crate) fn mesh_as(id: &str) -> String {
    fixture::MESH.replacen("scenario: mesh", &format!("scenario: {id}"), 1)
}

/// One result of each kind, as the driver makes them, with fixed wall times.
fn report() -> RunReport {
    let opts = RunOptions::default();
    let pass = world("catalog/mesh.yaml", fixture::MESH);
    let failing = world("catalog/mesh-failing.yaml", &mesh_as("mesh-failing"));
    let skippy = world("catalog/skippy.yaml", fixture::SKIPPY);
    let crashy = world("catalog/crashy.yaml", &fixture::SKIPPY.replace("skippy", "crashy"));
    let pcap = Artifact { name: "sleep.default.pcap".into(), bytes: vec![0xd4, 0xc3, 0xb2, 0xa1] };
    let backend = PreparedOutcomes::default()
        .run(Run { outcome: fixture::mesh_outcome_as_expected(&pass), artifacts: vec![pcap] })
        .outcome(fixture::mesh_outcome_failing(&failing))
        .outcome(fixture::skippy_outcome(&skippy))
        .error("crashy", "cannot create network namespace: operation not permitted");
    let broken = load_str("catalog/broken.yaml", fixture::BROKEN);
    let mut results: Vec<ScenarioResult> = [&broken.world]
        .into_iter()
        .map(|_| ScenarioResult {
            id: "broken".into(),
            file: broken.file.clone(),
            status: Status::NotLoaded { errors: broken.errors().cloned().collect() },
            wall: Duration::ZERO,
        })
        .collect();
    for (i, w) in [&crashy, &pass, &failing, &skippy].into_iter().enumerate() {
        results.push(ScenarioResult {
            id: w.id.clone(),
            file: w.file.clone(),
            status: run_one(&backend, w, &opts),
            wall: Duration::from_millis(250 * (i as u64 + 1)),
        });
    }
    RunReport {
        backend: "sim".into(),
        selection: "all scenarios, their own seeds".into(),
        seed: None,
        environment: Vec::new(),
        results,
    }
}

#[test]
fn summary_md_snapshot() {
    let md = super::summary::render(&report());
    insta::assert_snapshot!("summary_md", md);
}

#[test]
fn junit_xml_snapshot() {
    let xml = super::junit::render(&report()).unwrap();
    insta::assert_snapshot!("junit_xml", xml);
}

#[test]
fn stdout_table_snapshot() {
    insta::assert_snapshot!("stdout_table", super::table::render(&report(), "reports/latest"));
}

#[test]
fn every_kind_of_failure_is_a_failure_with_its_reason() {
    let r = report();
    let kinds: Vec<(&str, Option<&str>)> =
        r.results.iter().map(|x| (x.id.as_str(), x.failure_kind())).collect();
    assert_eq!(
        kinds,
        [
            ("broken", Some("load")),
            ("crashy", Some("backend")),
            ("mesh", None),
            ("mesh-failing", Some("expectation")),
            ("skippy", Some("skipped")),
        ]
    );
    // The backend error is an infrastructure error: exit 3, over the other failures' 1.
    assert_eq!((r.passed(), r.failed(), r.exit_code()), (1, 4, 3));
    assert_eq!(r.infrastructure_errors(), 1);
    let mut without = r.clone();
    without.results.retain(|x| x.id != "crashy");
    assert_eq!((without.failed(), without.exit_code()), (3, 1));
    without.results.retain(|x| x.passed());
    assert_eq!(without.exit_code(), 0);
    let first = |id: &str| r.results.iter().find(|x| x.id == id).unwrap().first_reason().unwrap();
    assert!(first("broken").starts_with("catalog/broken.yaml:5:"), "{}", first("broken"));
    assert!(first("broken").contains("unknown node \"node-c\""), "{}", first("broken"));
    assert!(first("crashy").contains("operation not permitted"));
    assert!(
        first("skippy")
            .contains("steps[0]: step skipped by the backend: netns cannot add latency yet"),
        "{}",
        first("skippy")
    );
    // A skipped step is a failure even when no expectation is about it.
    let skippy = r.results.iter().find(|x| x.id == "skippy").unwrap();
    assert!(skippy.reasons().len() >= 2, "{:?}", skippy.reasons());
    // junit shows skipped steps as failures, never as <skipped>.
    let xml = super::junit::render(&r).unwrap();
    assert!(!xml.contains("<skipped"), "{xml}");
    assert_eq!(xml.matches("<failure").count(), 4, "{xml}");
}

#[test]
fn the_summary_is_a_function_of_worlds_and_outcomes_only() {
    let mut a = report();
    let b = report();
    for r in &mut a.results {
        r.wall = Duration::from_secs(99);
    }
    assert_eq!(super::summary::render(&a), super::summary::render(&b));
    assert_ne!(super::junit::render(&a).unwrap(), super::junit::render(&b).unwrap());
}
