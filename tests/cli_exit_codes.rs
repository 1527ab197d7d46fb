//! Exit status 3, an infrastructure error: the environment could not run what was asked. Here a
//! real one: the node proxy on the kernel is a "ztunnel" that exits at once (`/bin/false`), so
//! the netns backend cannot produce the scenario's Outcome. The run still writes every report
//! and runs the other scenarios; 3 wins over the broken file's 1. Needs root (namespaces).
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

#[test]
fn a_backend_that_cannot_run_a_scenario_exits_3_and_still_reports_everything() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-exit-3");
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["run", "--backend", "netns", "--proxy", "ztunnel", "--ztunnel-bin", "/bin/false"])
        .arg("--out")
        .arg(&out)
        .args([
            "scenarios/catalog/inbound-plaintext.yaml",
            "scenarios/tests/malformed/unknown-node.yaml",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .env_remove("TESTBED_ZTUNNEL_CA")
        .output()
        .expect("run testbed");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("2 scenarios: 0 passed, 2 failed (backend netns)"), "{stdout}");
    // The reason is the environment's, not a panic of the harness.
    assert!(
        stderr.contains(
            "inbound-plaintext: FAIL — scenarios/catalog/inbound-plaintext.yaml: backend error:"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("ztunnel exited"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Both scenarios are in every report: one failure hides nothing.
    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(summary.contains("| FAIL (backend) |"), "{summary}");
    assert!(summary.contains("| FAIL (load) |"), "{summary}");
    let junit = std::fs::read_to_string(out.join("junit.xml")).expect("junit.xml");
    assert!(junit.contains("type=\"backend\"") && junit.contains("type=\"load\""), "{junit}");
}
