//! `testbed run --backend netns` as a binary: the sandbox entered first thing, the catalog's
//! fast scenarios run on the kernel, the reports written. Needs root or unprivileged user
//! namespaces; without them `testbed` exits 2 saying why, and this test fails.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

#[test]
fn the_netns_backend_runs_scenarios_and_writes_their_reports() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-netns");
    let _ = std::fs::remove_dir_all(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["run", "--backend", "netns", "--trace", "--out"])
        .arg(&out)
        .args([
            "scenarios/catalog/inbound-plaintext.yaml",
            "scenarios/catalog/same-node-hbone.yaml",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .expect("run testbed");
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("2 scenarios: 2 passed, 0 failed (backend netns)"), "{stdout}");
    for id in ["inbound-plaintext", "same-node-hbone"] {
        let outcome = std::fs::read_to_string(out.join(id).join("outcome.json")).expect(id);
        assert!(outcome.contains("\"skipped\": []"), "{outcome}");
        let trace = std::fs::read_to_string(out.join(id).join("trace.txt")).expect("trace");
        assert!(trace.starts_with("== step 0 "), "{trace}");
    }
    assert!(out.join("junit.xml").is_file() && out.join("summary.md").is_file());
    // A kernel run records what it ran on: kernel, iptables (with its backend), conntrack, commit.
    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    let env = summary.lines().find(|l| l.starts_with("Environment: ")).expect("environment line");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        env.starts_with(&format!("Environment: kernel `{}` · iptables `", kernel.trim())),
        "{env}"
    );
    assert!(env.contains(" (nf_tables)` · ") || env.contains(" (legacy)` · "), "{env}");
    assert!(env.contains(" · conntrack `") && env.contains(" · commit `"), "{env}");
}
