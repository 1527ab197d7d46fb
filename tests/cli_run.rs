//! `testbed run` as a binary: usage errors, nothing selected, a malformed file, a foreign output
//! folder. These need no backend (a file that does not load never reaches one); the runner
//! itself is tested with a test double backend in `ambient_report`.

mod common;

use common::{catalog_files, command, out_dir, testbed, text};

const BIN: &str = "cli-run";

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["run", "--shard", "0/2"][..],
        &["run", "--backend", "kubernetes"],
        &["run", "--seed", "minus-one"],
        &["run", "--no-such-flag"],
    ] {
        let o = testbed(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
    }
}

#[test]
fn a_missing_path_exits_2() {
    let out = out_dir(BIN, "missing");
    let o = testbed(&["run", "scenarios/no-such-folder", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("scenarios/no-such-folder"), "{}", text(&o.stderr));
    assert!(!out.exists());
}

#[test]
fn nothing_selected_exits_2_and_writes_nothing() {
    let out = out_dir(BIN, "nothing");
    let o = testbed(&["run", "--include", "no-such-tag", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let n = catalog_files();
    assert_eq!(
        text(&o.stderr),
        format!(
            "testbed run: nothing selected: {n} scenario files found, none kept by the selection \
             (include no-such-tag)\n"
        )
    );
    assert!(o.stdout.is_empty());
    assert!(!out.exists());
}

#[test]
fn a_malformed_file_is_a_failed_scenario_with_its_reason_in_every_report() {
    let out = out_dir(BIN, "malformed");
    let o = testbed(&[
        "run",
        "scenarios/tests/malformed/unknown-node.yaml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let reason = "scenarios/tests/malformed/unknown-node.yaml:7:13: cluster.pods[1].node: unknown node \"node-c\"; nodes are node-a, node-b";
    // Not a terminal: one progress line per scenario on stderr.
    assert_eq!(text(&o.stderr), format!("[1/1] unknown-node: FAIL — {reason} (0.0s)\n"));
    let stdout = text(&o.stdout);
    assert!(stdout.starts_with("scenario      result"), "{stdout}");
    assert!(stdout.contains("unknown-node  FAIL scenarios/tests/malformed/unknown-node.yaml:7:13"));
    assert!(
        stdout.contains("\n1 scenario: 0 passed, 1 failed (backend sim); reports in"),
        "{stdout}"
    );
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("<testcase name=\"unknown-node\""), "{junit}");
    assert!(junit.contains("type=\"load\""), "{junit}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| [unknown-node](#unknown-node) | FAIL (load) | – |"), "{summary}");
    assert!(summary.contains(reason), "{summary}");
    // A simulator run's report names no machine: no environment line.
    assert!(!summary.contains("Environment:"), "{summary}");
}

#[test]
fn a_folder_that_is_not_ours_is_refused_and_left_alone() {
    let out = out_dir(BIN, "foreign");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let o = testbed(&[
        "run",
        "scenarios/tests/malformed/unknown-node.yaml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("refusing to clear"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
}

#[test]
fn rust_log_reaches_the_one_subscriber_without_colours_off_a_terminal() {
    let run = |rust_log: Option<&str>, name: &str| {
        let out = out_dir(BIN, name);
        let mut cmd = command();
        cmd.args(["run", "scenarios/catalog/same-node-hbone.yaml", "--out"])
            .arg(&out)
            .env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        cmd.output().expect("run testbed")
    };
    // The proxies in the simulator log their access events at info: shown when asked for.
    let o = run(Some("ambient_proxy::access=info"), "log-info");
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(e.contains("INFO ambient_proxy::access"), "{e}");
    assert!(!e.contains('\u{1b}'), "no ANSI escapes when stderr is not a terminal: {e}");
    // The default (warn) keeps them out: only the progress line.
    let o = run(None, "log-default");
    let e = text(&o.stderr);
    assert!(e.starts_with("[1/1] same-node-hbone: pass (") && e.lines().count() == 1, "{e}");
    // A filter that does not parse is bad input, before anything runs.
    let o = run(Some("ambient_proxy=loud"), "log-bad");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("RUST_LOG=\"ambient_proxy=loud\" does not parse"));
    assert!(!out_dir(BIN, "log-bad").exists());
}

#[test]
fn pcap_on_the_netns_backend_is_refused_naming_the_alternative() {
    let out = out_dir(BIN, "netns-pcap");
    let o = testbed(&["run", "--backend", "netns", "--pcap", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(e.contains("--pcap is not supported with --backend netns"), "{e}");
    assert!(e.contains("--backend sim --pcap"), "{e}");
    assert!(o.stdout.is_empty());
    assert!(!out.exists(), "nothing ran");
}
