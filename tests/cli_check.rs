//! `testbed check`: what it prints and its exit status (0 valid, 1 invalid, 2 usage).

use std::path::Path;
use std::process::{Command, Output};

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("check")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("run testbed")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_catalog_is_valid() {
    let o = check(&["scenarios/catalog"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).ends_with("checked 7 files: 7 valid, 0 invalid, 0 warnings\n"),
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
    let o = check(&["scenarios/catalog", "--list", "--include", "fault", "--exclude", "partition"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).starts_with(
            "destination-proxy-restart\tscenarios/catalog/destination-proxy-restart.yaml\nchecked"
        ),
        "{}",
        stdout(&o)
    );
    let o = check(&["scenarios/catalog", "--list", "--shard", "3/3"]);
    let listed = stdout(&o).lines().filter(|l| l.contains('\t')).count();
    assert_eq!(listed, 2, "{}", stdout(&o));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(check(&["no/such/path.yaml"]).status.code(), Some(2));
    assert_eq!(check(&["scenarios/catalog", "--shard", "4/3"]).status.code(), Some(2));
    assert_eq!(check(&[]).status.code(), Some(2));
    assert_eq!(check(&["scenarios/src"]).status.code(), Some(2), "no *.yaml there");
}
