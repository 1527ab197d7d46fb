//! Every scenario in `scenarios/regressions/` (cases the fuzzer found and shrank) passes in the
//! simulator: it loads, its `expect:` blocks hold, and every invariant of `ambient_fuzz` holds
//! (run twice, with the proxy fault points its header names). This is how found cases become
//! part of CI: `cargo test -p ambient-fuzz`.

use std::path::PathBuf;

use ambient_fuzz::regression::fault_points_in;
use ambient_fuzz::runner::{default_planner, load_text, run_world};
use ambient_scenarios::check_outcome;

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/regressions")
}

#[test]
fn every_regression_passes_in_the_simulator() {
    let dir = folder();
    assert!(dir.join("README.md").is_file(), "{} has no README.md", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()).unwrap_or_else(|e| panic!("{}: {e}", dir.display())))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no regression scenarios in {}", dir.display());
    let planner = default_planner();
    let mut failed = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{name}: {e}"));
        let world = match load_text(&name, &text) {
            Ok(w) => w,
            Err(bug) => {
                failed.push(format!("{name}: does not load: {:?}", bug.errors));
                continue;
            }
        };
        let report = run_world(&world, fault_points_in(&text), &planner, true);
        for v in &report.violations {
            failed.push(format!("{name}: {v}"));
        }
        match &report.outcome {
            Some(o) => {
                for x in check_outcome(&world, o) {
                    failed.push(format!("{name}: expectation: {}", x.message));
                }
            }
            None => failed.push(format!("{name}: no Outcome")),
        }
    }
    assert!(failed.is_empty(), "{} regression(s) failed:\n{}", failed.len(), failed.join("\n"));
}
