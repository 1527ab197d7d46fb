//! TCP flow control across the proxies: a receiver whose window closed tells its sender when a
//! read opens it again (the harness's window update, `tcp::window_update`), so a transfer larger
//! than a window completes even when nothing comes back to carry the window on (a `sink` app).
//!
//! Found by the fuzzer (issue 7, seed 1 case 91): the client's proxy read its client's 64 KiB
//! only after the tunnel was up; by then the client had filled the window and waited with its
//! FIN queued, and the proxy's 16 KiB reads never drained half the buffer at once, which is all
//! turmoil-net answers with a window update. The connection stalled until its deadline.

mod support;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::check_outcome;
use support::scenario;

const CLUSTER: &str = r#"
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: sink, node: node-a, ip: 10.0.1.5, serviceAccount: sink, ambient: true, serve: [{port: 8080, app: sink}]}
    - {name: client, node: node-b, ip: 10.0.2.2, serviceAccount: client, ambient: true}
    - {name: plain, node: node-b, ip: 10.0.2.3}
    - {name: plain-sink, node: node-a, ip: 10.0.1.6, serve: [{port: 8080, app: sink}]}
"#;

fn passes(name: &str, steps: &str) {
    let text = format!("description: {name}\n{CLUSTER}{steps}");
    let w = scenario(&format!("{name}.yaml"), &text);
    let r = ambient_sim::run(&w, &RunOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let failures: Vec<String> =
        check_outcome(&w, &r.outcome).iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

#[test]
fn more_than_a_window_through_hbone_to_a_sink_completes() {
    passes(
        "hbone-sink-64k",
        r#"
steps:
  - connect: {id: one, from: client, to: sink:8080, send: 64KiB, deadline: 5s, expect: {outcome: ok, path: hbone}}
  - connect: {id: two, from: client, to: sink:8080, send: 256KiB, parallel: 2, deadline: 5s, expect: {outcome: ok, path: hbone}}
"#,
    );
}

#[test]
fn more_than_a_window_direct_to_a_sink_completes() {
    passes(
        "direct-sink-256k",
        r#"
steps:
  - connect: {id: one, from: plain, to: plain-sink:8080, send: 256KiB, deadline: 5s, expect: {outcome: ok, path: direct}}
"#,
    );
}
