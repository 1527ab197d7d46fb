//! `--proxy ztunnel` without a ztunnel binary: a usage error (exit 2) that says how to give one,
//! before any namespace is made or any scenario runs, for `testbed run` and `testbed conform`.

mod common;

use common::{out_dir, stderr, testbed};

#[test]
fn ztunnel_without_a_binary_is_a_usage_error_naming_the_option() {
    let out = out_dir("cli-ztunnel", "out");
    for args in [
        &["run", "--backend", "netns", "--proxy", "ztunnel"][..],
        &["run", "--backend", "netns", "--proxy", "ours,ztunnel"],
        &["conform", "--proxy", "ztunnel"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--out", out.to_str().unwrap()]);
        let o = testbed(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("--ztunnel-bin") && e.contains("TESTBED_ZTUNNEL"), "{args:?}: {e}");
        assert!(!out.exists(), "nothing ran");
    }
}

#[test]
fn bad_proxy_options_are_usage_errors() {
    for (args, says) in [
        (&["run", "--backend", "netns", "--proxy", "envoy"][..], "unknown proxy \"envoy\""),
        (&["run", "--proxy", "ztunnel"], "needs --backend netns"),
        (
            &[
                "run",
                "--backend",
                "netns",
                "--proxy",
                "ztunnel",
                "--ztunnel-bin",
                "/nonexistent/zt",
            ],
            "/nonexistent/zt",
        ),
    ] {
        let o = testbed(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
