//! `junit.xml` (via `quick-junit`): one testsuite for the run, one testcase per scenario.
//!
//! A scenario that did not pass is a `<failure>` whose message is its first reason, whose
//! `type` says what kind of failure it is (`load`, `backend`, `run`, `skipped`, `expectation`),
//! and whose text lists every reason. Skipped steps are failure text, never JUnit `<skipped>`:
//! a scenario with a skipped step did not pass. Test cases carry the scenario's wall time (the
//! only wall-clock data in the file; tests inject the clock).

use std::time::Duration;

use quick_junit::{
    NonSuccessKind, Property, Report, SerializeError, TestCase, TestCaseStatus, TestSuite,
};

use super::RunReport;

/// The testsuite's name for a run on `backend`.
pub fn suite_name(backend: &str) -> String {
    format!("testbed run ({backend})")
}

pub fn render(report: &RunReport) -> Result<String, SerializeError> {
    let mut suite = TestSuite::new(suite_name(&report.backend));
    suite.add_property(Property::new("backend", report.backend.as_str()));
    suite.add_property(Property::new("selection", report.selection.as_str()));
    let mut total = Duration::ZERO;
    for r in &report.results {
        total += r.wall;
        let status = match r.failure_kind() {
            None => TestCaseStatus::success(),
            Some(kind) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let reasons = r.reasons();
                s.set_type(kind);
                s.set_message(reasons.first().cloned().unwrap_or_default());
                s.set_description(reasons.join("\n"));
                s
            }
        };
        let mut case = TestCase::new(r.id.as_str(), status);
        case.set_classname(r.file.as_str());
        case.set_time(r.wall);
        if let Some((ok, expected)) = r.connections() {
            case.add_property(Property::new("connections", format!("{ok}/{expected}")));
        }
        if let Some(seed) = report.seed_of(r) {
            case.add_property(Property::new("seed", seed.to_string()));
        }
        suite.add_test_case(case);
    }
    suite.set_time(total);
    let mut junit = Report::new("testbed run");
    junit.set_time(total);
    junit.add_test_suite(suite);
    junit.to_string()
}
