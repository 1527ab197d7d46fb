//! `testbed check`: what it prints and its exit status (0 valid, 1 invalid, 2 usage).

mod common;

use std::process::Output;

use common::{catalog_files, stdout, testbed};

fn check(args: &[&str]) -> Output {
    testbed(&[&["check"], args].concat())
}

#[test]
fn the_catalog_is_valid() {
    let o = check(&["scenarios/catalog"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let n = catalog_files();
    assert!(n >= 40, "the catalog has {n} files");
    assert!(
        stdout(&o).ends_with(&format!("checked {n} files: {n} valid, 0 invalid, 0 warnings\n")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn an_invalid_file_prints_its_errors_and_fails_without_hiding_the_others() {
    let o = check(&[
        "scenarios/tests/malformed/unknown-node.yaml",
        "scenarios/catalog/passthrough.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "scenarios/tests/malformed/unknown-node.yaml:7:13: cluster.pods[1].node: unknown node \"node-c\"; nodes are node-a, node-b\n\
         checked 2 files: 1 valid, 1 invalid, 0 warnings\n"
    );
}

#[test]
fn list_selects_by_tag_and_shard() {
    let o = check(&[
        "scenarios/catalog",
        "--list",
        "--include",
        "probe",
        "--exclude",
        "inbound-plaintext",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with(
            "probe-address-not-redirected\tscenarios/catalog/probe-address-not-redirected.yaml\nchecked"
        ),
        "{}",
        stdout(&o)
    );
    // Three shards: disjoint, none empty, together the whole catalog.
    let mut all = Vec::new();
    for k in 1..=3 {
        let o = check(&["scenarios/catalog", "--list", "--shard", &format!("{k}/3")]);
        let listed: Vec<String> =
            stdout(&o).lines().filter(|l| l.contains('\t')).map(str::to_string).collect();
        assert!(!listed.is_empty(), "shard {k}/3 is empty");
        all.extend(listed);
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!((all.len(), n), (catalog_files(), catalog_files()));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(check(&["no/such/path.yaml"]).status.code(), Some(2));
    assert_eq!(check(&["scenarios/catalog", "--shard", "4/3"]).status.code(), Some(2));
    assert_eq!(check(&[]).status.code(), Some(2));
    assert_eq!(check(&["scenarios/src"]).status.code(), Some(2), "no *.yaml there");
}
