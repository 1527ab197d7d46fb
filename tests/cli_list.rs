//! `testbed list` and `--scenario GLOB`: what a selection keeps, sorted by id; a file that does
//! not load is listed with its error (exit 1); a glob that matches nothing is a usage error
//! naming it (exit 2) for list, run and conform.

mod common;

use common::{catalog_files, out_dir, testbed, text};

const BIN: &str = "cli-list";

#[test]
fn list_prints_every_catalog_scenario_sorted_by_id_with_tags_and_file() {
    let o = testbed(&["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    let files = catalog_files();
    assert_eq!(lines.len(), files, "{stdout}");
    assert!(lines.iter().all(|l| l.len() == 3), "{stdout}");
    let ids: Vec<&str> = lines.iter().map(|l| l[0]).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let hbone = lines.iter().find(|l| l[0] == "same-node-hbone").expect("same-node-hbone");
    assert_eq!(hbone[2], "scenarios/catalog/same-node-hbone.yaml");
    assert!(hbone[1].split(',').any(|t| t == "hbone"), "{hbone:?}");
}

#[test]
fn scenario_globs_select_by_id_and_combine_with_tags() {
    let o = testbed(&["list", "--scenario", "same-node-*", "--scenario", "inbound-plai?text"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let ids: Vec<String> =
        text(&o.stdout).lines().map(|l| l.split('\t').next().unwrap().to_string()).collect();
    assert!(ids.contains(&"inbound-plaintext".to_string()), "{ids:?}");
    assert!(ids.contains(&"same-node-hbone".to_string()), "{ids:?}");
    assert!(ids.iter().all(|i| i.starts_with("same-node-") || i == "inbound-plaintext"), "{ids:?}");
}

#[test]
fn a_file_that_does_not_load_is_listed_with_its_error_and_exits_1() {
    let o = testbed(&[
        "list",
        "scenarios/tests/malformed/unknown-node.yaml",
        "scenarios/catalog/inbound-plaintext.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("inbound-plaintext\t"), "{stdout}");
    assert_eq!(
        lines[1],
        "unknown-node\t-\tscenarios/tests/malformed/unknown-node.yaml\tdoes not load: \
         scenarios/tests/malformed/unknown-node.yaml:7:13: cluster.pods[1].node: unknown node \
         \"node-c\"; nodes are node-a, node-b"
    );
    // A glob that leaves the broken file out lists only what loads.
    let o = testbed(&[
        "list",
        "--scenario",
        "inbound-*",
        "scenarios/tests/malformed/unknown-node.yaml",
        "scenarios/catalog/inbound-plaintext.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 1);
}

#[test]
fn a_glob_that_matches_nothing_is_a_usage_error_naming_it() {
    let o = testbed(&["list", "--scenario", "same-node-*", "--scenario", "no-such-*"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--scenario \"no-such-*\" matches no scenario id"),
        "{}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    for cmd in ["run", "conform"] {
        let out = out_dir(BIN, cmd);
        let o = testbed(&[cmd, "--scenario", "no-such-*", "--out", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("--scenario \"no-such-*\" matches no scenario id"),
            "{cmd}: {}",
            text(&o.stderr)
        );
        assert!(!out.exists(), "{cmd}: nothing ran");
    }
}

#[test]
fn run_runs_only_what_the_glob_selects() {
    let out = out_dir(BIN, "run-one");
    let o = testbed(&["run", "--scenario", "same-node-hbone", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\n1 scenario: 1 passed, 0 failed (backend sim)"));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("Selection: scenario same-node-hbone."), "{summary}");
}
