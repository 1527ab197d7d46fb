//! The driver as `testbed run` calls it, with the test double backend injected: exit codes,
//! what is written where, what is refused, and that no failure hides another.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::tests::{PreparedOutcomes, SteppingClock, fixture, mesh_as, world};
use ambient_scenarios::backend::Artifact;
use ambient_scenarios::catalog::Shard;

/// A scratch folder with scenario files, removed when dropped.
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let root =
            std::env::temp_dir().join(format!("ambient-report-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("catalog")).unwrap();
        Scratch { root }
    }

    fn file(&self, name: &str, text: &str) -> &Self {
        fs::write(self.root.join("catalog").join(name), text).unwrap();
        self
    }

    fn catalog(&self) -> PathBuf {
        self.root.join("catalog")
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    fn request(&self) -> Request {
        Request {
            environment: Vec::new(),
            paths: vec![self.catalog()],
            selection: Selection::default(),
            options: RunOptions::default(),
            out: self.out(),
            backend: "prepared".into(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Runs with `backend` (opened on demand), a 100 ms clock and line progress into a buffer.
fn run_with(
    req: &Request,
    backend: PreparedOutcomes,
) -> (Result<RunReport, RunError>, String, u32) {
    let mut backend = Some(backend);
    let mut opened = 0;
    let mut open = || {
        opened += 1;
        let b = backend.take().ok_or_else(|| BackendError::new("opened twice"))?;
        Ok(Box::new(b) as Box<dyn Backend>)
    };
    let clock = SteppingClock::new(Duration::from_millis(100));
    let mut lines = Vec::new();
    let result = run(req, &mut open, &clock, &mut LineProgress::new(&mut lines));
    (result, String::from_utf8(lines).unwrap(), opened)
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mesh_backend() -> PreparedOutcomes {
    let w = world("mesh.yaml", fixture::MESH);
    PreparedOutcomes::default().outcome(fixture::mesh_outcome_as_expected(&w))
}

#[test]
fn all_held_exits_0_and_writes_every_file() {
    let s = Scratch::new("pass");
    s.file("mesh.yaml", fixture::MESH);
    let pcap = Artifact { name: "sleep.default.pcap".into(), bytes: vec![1, 2, 3] };
    let w = world("mesh.yaml", fixture::MESH);
    let backend = PreparedOutcomes::default()
        .run(Run { outcome: fixture::mesh_outcome_as_expected(&w), artifacts: vec![pcap] });
    let (report, lines, opened) = run_with(&s.request(), backend);
    let report = report.unwrap();
    assert_eq!(report.exit_code(), 0);
    assert_eq!(opened, 1);
    assert_eq!(lines, "[1/1] mesh: pass (0.1s)\n");
    let out = s.out();
    let outcome =
        ambient_scenarios::outcome::Outcome::from_json(&read(&out.join("mesh/outcome.json")))
            .unwrap();
    assert_eq!(outcome, fixture::mesh_outcome_as_expected(&w));
    assert_eq!(fs::read(out.join("mesh/sleep.default.pcap")).unwrap(), [1, 2, 3]);
    assert!(read(&out.join("junit.xml")).contains("<testcase name=\"mesh\""));
    assert!(read(&out.join("summary.md")).contains("| [mesh](#mesh) | pass | 8/8 |  |"));
    assert!(out.join(crate::write::MARKER).is_file());
}

#[test]
fn one_failure_never_hides_the_others_and_backend_errors_exit_3() {
    let s = Scratch::new("mixed");
    s.file("mesh.yaml", fixture::MESH)
        .file("a-failing.yaml", &mesh_as("a-failing"))
        .file("broken.yaml", fixture::BROKEN)
        .file("crashy.yaml", &fixture::SKIPPY.replace("skippy", "crashy"))
        .file("panicky.yaml", &fixture::SKIPPY.replace("skippy", "panicky"))
        .file("skippy.yaml", fixture::SKIPPY);
    let failing = world("a.yaml", &mesh_as("a-failing"));
    let skippy = world("skippy.yaml", fixture::SKIPPY);
    let backend = mesh_backend()
        .outcome(fixture::mesh_outcome_failing(&failing))
        .outcome(fixture::skippy_outcome(&skippy))
        .error("crashy", "no namespaces here")
        .panic_on("panicky");
    let (report, lines, _) = run_with(&s.request(), backend);
    let report = report.unwrap();
    // crashy (an error) and panicky (a panic): the backend produced no Outcome, an
    // infrastructure error; 3 wins over the others' 1.
    assert_eq!((report.infrastructure_errors(), report.exit_code()), (2, 3));
    let ids: Vec<(&str, bool)> =
        report.results.iter().map(|r| (r.id.as_str(), r.passed())).collect();
    assert_eq!(
        ids,
        [
            ("a-failing", false),
            ("broken", false),
            ("crashy", false),
            ("mesh", true),
            ("panicky", false),
            ("skippy", false),
        ]
    );
    let panicky = report.results.iter().find(|r| r.id == "panicky").unwrap();
    assert!(
        panicky
            .first_reason()
            .unwrap()
            .ends_with("the backend panicked: prepared panic for panicky"),
        "{:?}",
        panicky.first_reason()
    );
    assert_eq!(lines.lines().count(), 6, "{lines}");
    assert!(lines.contains("[2/6] broken: FAIL — "), "{lines}");
    // Folders only for scenarios that produced an Outcome.
    let mut dirs: Vec<String> = fs::read_dir(s.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, [".testbed-run", "a-failing", "junit.xml", "mesh", "skippy", "summary.md"]);
    let summary = read(&s.out().join("summary.md"));
    for id in ["a-failing", "broken", "crashy", "mesh", "panicky", "skippy"] {
        assert!(summary.contains(&format!("\n## {id}\n")), "{id} missing from summary");
    }
}

#[test]
fn nothing_selected_and_missing_paths_are_usage_errors_that_touch_nothing() {
    let s = Scratch::new("nothing");
    s.file("mesh.yaml", fixture::MESH);
    let mut req = s.request();
    req.selection.include = vec!["no-such-tag".into()];
    let (r, _, opened) = run_with(&req, mesh_backend());
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::NothingSelected(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "nothing selected: 1 scenario file found, none kept by the selection (include no-such-tag)"
    );
    assert_eq!(opened, 0);
    assert!(!s.out().exists(), "no output folder for a run that did not start");

    let empty = Scratch::new("empty");
    let (r, _, _) = run_with(&empty.request(), mesh_backend());
    assert!(matches!(r.unwrap_err(), RunError::NothingSelected(_)));

    let mut req = s.request();
    req.paths = vec![s.root.join("nope")];
    let (r, _, _) = run_with(&req, mesh_backend());
    assert!(matches!(r.unwrap_err(), RunError::Paths(m) if m.contains("nope")));
}

#[test]
fn a_broken_file_needs_no_backend_and_still_fails_the_run() {
    let s = Scratch::new("broken-only");
    s.file("broken.yaml", fixture::BROKEN);
    let (report, _, opened) = run_with(&s.request(), mesh_backend());
    let report = report.unwrap();
    assert_eq!((report.exit_code(), opened), (1, 0));
    assert!(read(&s.out().join("junit.xml")).contains("type=\"load\""));
}

#[test]
fn a_backend_that_cannot_open_fails_every_scenario_with_its_reason() {
    let s = Scratch::new("no-backend");
    s.file("mesh.yaml", fixture::MESH).file("skippy.yaml", fixture::SKIPPY);
    let mut opened = 0;
    let mut open = || -> Result<Box<dyn Backend>, BackendError> {
        opened += 1;
        Err(BackendError::new("the simulator is not built in"))
    };
    let clock = SteppingClock::new(Duration::from_millis(1));
    let report =
        run(&s.request(), &mut open, &clock, &mut LineProgress::new(std::io::sink())).unwrap();
    assert_eq!((report.failed(), opened), (2, 1), "opened once, not once per scenario");
    for r in &report.results {
        assert!(
            r.first_reason()
                .unwrap()
                .ends_with("backend prepared could not start: the simulator is not built in"),
            "{:?}",
            r.first_reason()
        );
    }
}

#[test]
fn every_run_starts_from_an_empty_folder_of_ours_and_refuses_others() {
    let s = Scratch::new("wipe");
    s.file("mesh.yaml", fixture::MESH);
    // An earlier run of another selection left a scenario folder behind.
    let (r, _, _) = run_with(&s.request(), mesh_backend());
    r.unwrap();
    fs::create_dir_all(s.out().join("old-scenario")).unwrap();
    fs::write(s.out().join("old-scenario/outcome.json"), "{}").unwrap();
    let (r, _, _) = run_with(&s.request(), mesh_backend());
    r.unwrap();
    assert!(!s.out().join("old-scenario").exists(), "stale results are wiped");
    assert!(s.out().join("mesh/outcome.json").exists());

    // A folder that is not ours is left alone.
    let mut req = s.request();
    req.out = s.root.join("precious");
    fs::create_dir_all(&req.out).unwrap();
    fs::write(req.out.join("thesis.tex"), "keep me").unwrap();
    let (r, _, opened) = run_with(&req, mesh_backend());
    let err = r.unwrap_err();
    assert!(matches!(err, RunError::Out(_)), "{err}");
    assert!(err.to_string().contains("refusing to clear"), "{err}");
    assert_eq!(opened, 0, "refused before running anything");
    assert_eq!(read(&req.out.join("thesis.tex")), "keep me");

    // Nor is a file.
    req.out = s.catalog().join("mesh.yaml");
    assert!(matches!(run_with(&req, mesh_backend()).0.unwrap_err(), RunError::Out(_)));
}

#[test]
fn options_reach_the_backend_and_the_outcome_must_match_them() {
    let s = Scratch::new("options");
    s.file("mesh.yaml", fixture::MESH);
    let mut req = s.request();
    req.options = RunOptions { seed: Some(11), pcap: true, trace: true };
    let w = world("mesh.yaml", fixture::MESH);
    let mut outcome = fixture::mesh_outcome_as_expected(&w);
    outcome.seed = 11;
    let backend = PreparedOutcomes::default().outcome(outcome);
    let (report, _, _) = run_with(&req, backend);
    let report = report.unwrap();
    assert_eq!(report.exit_code(), 0, "{:?}", report.results[0].reasons());
    assert_eq!(report.selection, "seed 11 for every scenario · pcap · trace");
    let summary = read(&s.out().join("summary.md"));
    assert!(summary.contains("· seed 11 ·"), "{summary}");

    // The backend ignored the seed: a problem with the run, not hidden.
    let (report, _, _) = run_with(&req, mesh_backend());
    let reasons = report.unwrap().results[0].reasons();
    assert!(
        reasons[0].ends_with("the Outcome's seed is 3, but the run asked for 11"),
        "{reasons:?}"
    );
}

#[test]
fn the_backend_is_called_with_the_options() {
    let w = world("mesh.yaml", fixture::MESH);
    let backend = PreparedOutcomes::default().outcome(fixture::mesh_outcome_as_expected(&w));
    let opts = RunOptions { seed: None, pcap: true, trace: false };
    let status = run_one(&backend, &w, &opts);
    assert!(matches!(status, Status::Ran { ref failures, .. } if failures.is_empty()));
    assert_eq!(*backend.calls.borrow(), [("mesh".to_string(), opts)]);
}

#[test]
fn artifacts_with_unusable_names_are_problems_and_are_not_written() {
    let s = Scratch::new("artifacts");
    s.file("mesh.yaml", fixture::MESH);
    let w = world("mesh.yaml", fixture::MESH);
    let art = |name: &str| Artifact { name: name.into(), bytes: b"x".to_vec() };
    let run = Run {
        outcome: fixture::mesh_outcome_as_expected(&w),
        artifacts: vec![
            art("../escape.pcap"),
            art("outcome.json"),
            art("ok.txt"),
            art("ok.txt"),
            art(""),
        ],
    };
    let (report, _, _) = run_with(&s.request(), PreparedOutcomes::default().run(run));
    let r = &report.unwrap().results[0];
    assert!(!r.passed());
    assert_eq!(r.failure_kind(), Some("run"));
    assert_eq!(r.reasons().len(), 4, "{:?}", r.reasons());
    assert!(!s.root.join("escape.pcap").exists() && !s.out().join("escape.pcap").exists());
    assert_eq!(read(&s.out().join("mesh/ok.txt")), "x");
    assert!(read(&s.out().join("mesh/outcome.json")).starts_with('{'));
}

#[test]
fn shards_split_valid_scenarios_by_id_and_broken_files_by_path() {
    let s = Scratch::new("shards");
    s.file("a.yaml", &mesh_as("a"))
        .file("b.yaml", &mesh_as("b"))
        .file("c.yaml", &mesh_as("c"))
        .file("x-broken.yaml", fixture::BROKEN)
        .file("y-broken.yaml", fixture::BROKEN);
    let mut seen = Vec::new();
    for k in 1..=2 {
        let mut req = s.request();
        req.selection.shard = Some(Shard { index: k, count: 2 });
        let (report, _, _) = run_with(&req, PreparedOutcomes::default());
        seen.push(report.unwrap().results.iter().map(|r| r.id.clone()).collect::<Vec<_>>());
    }
    assert_eq!(seen, [vec!["a", "c", "x-broken"], vec!["b", "y-broken"]]);
    // Tag filters cannot see a broken file's tags: it is always reported.
    let mut req = s.request();
    req.selection.exclude = vec!["fixture".into()];
    let (report, _, _) = run_with(&req, PreparedOutcomes::default());
    let ids: Vec<String> = report.unwrap().results.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, ["x-broken", "y-broken"]);
}
