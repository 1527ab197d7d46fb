//! Every catalog scenario passes its expectations in the simulator, and runs twice to
//! byte-identical Outcomes.

use std::path::PathBuf;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::{World, check_outcome, load_file};

fn catalog() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn world(path: &std::path::Path) -> World {
    match load_file(path).into_result() {
        Ok(w) => w,
        Err(d) => panic!("{}: {d:?}", path.display()),
    }
}

#[test]
fn every_catalog_scenario_passes() {
    let mut failed = Vec::new();
    for path in catalog() {
        let w = world(&path);
        let run = ambient_sim::run(&w, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", w.id));
        let failures = check_outcome(&w, &run.outcome);
        if !failures.is_empty() {
            let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
            failed.push(format!("{}:\n  {}\n{}", w.id, text.join("\n  "), run.outcome.to_json()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn show() {
    let Ok(which) = std::env::var("SHOW") else { return };
    let path = catalog().into_iter().find(|p| p.to_string_lossy().contains(&which)).unwrap();
    let w = world(&path);
    let opts = RunOptions { trace: true, ..RunOptions::default() };
    let run = ambient_sim::run(&w, &opts).unwrap();
    println!("{}", run.outcome.to_json());
    println!("{}", run.trace.unwrap_or_default());
    println!("{:?}", run.stats);
}
