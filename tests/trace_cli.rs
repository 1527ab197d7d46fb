//! `testbed trace` end to end: JSON lines out, counters saved, and bad input refused with the
//! line, the word and what was expected (exit 2, nothing on stdout).

use std::io::Write as _;
use std::process::{Command, Stdio};

const RULES: &str = include_str!("../scenarios/testdata/istio-inpod.rules");

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .arg("trace")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("testbed runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn temp(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("testbed-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn redirect_lifecycle_as_json_lines_and_counters() {
    let rules = temp("ok.rules", RULES);
    let counters = temp("counters.out", "");
    let packets = "out tcp 10.0.1.5:40000 > 10.96.0.20:80 flags=S\n\
                   # the proxy answers\n\
                   out tcp 127.0.0.1:15001 > 10.0.1.5:40000 flags=SA\n\
                   flush t=1\n\
                   in tcp 10.0.3.3:1 > 10.0.1.5:8080 flags=S t=2\n";
    let (code, out, err) = run(&["--rules", &rules, "--save-counters", &counters], packets);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with(
            r#"{"line":1,"t":0.0,"verdict":"ACCEPT","ctstate":"NEW","tcp_state":"SYN_SENT""#
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(r#""dst":"127.0.0.1:15001""#)
            && lines[0].contains(r#""orig_dst":"10.96.0.20:80""#)
    );
    assert!(lines[0].contains(r#""nat/ISTIO_OUTPUT/6""#) && lines[0].contains(r#""local":true"#));
    assert!(lines[1].contains(r#""src":"10.96.0.20:80""#), "{}", lines[1]);
    assert!(lines[2].contains(r#""line":5"#) && lines[2].contains(r#""dst":"10.0.1.5:15006""#));
    let saved = std::fs::read_to_string(&counters).unwrap();
    assert!(saved.contains("[1:60] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"), "{saved}");
}

#[test]
fn bad_packet_line_is_refused_before_any_output() {
    let rules = temp("ok2.rules", RULES);
    let (code, out, err) = run(
        &["--rules", &rules],
        "out tcp 10.0.1.5:1 > 10.0.0.1:2\nout tcp 10.0.1.5:1 > 10.0.0.1 flags=S\n",
    );
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.contains("line 2") && err.contains("`10.0.0.1`") && err.contains("expected"),
        "{err}"
    );
    let (code, out, err) = run(
        &["--rules", &rules],
        "in tcp 1.1.1.1:1 > 2.2.2.2:2 t=5\nin tcp 1.1.1.1:1 > 2.2.2.2:2 t=4\n",
    );
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("line 2") && err.contains("back in time"), "{err}");
}

#[test]
fn bad_rules_are_refused_with_line_and_word() {
    let rules = temp(
        "bad.rules",
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\n-A OUTPUT -m bogus -j ACCEPT\nCOMMIT\n",
    );
    let (code, out, err) = run(&["--rules", &rules], "");
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("line 4") && err.contains("`bogus`"), "{err}");
}
