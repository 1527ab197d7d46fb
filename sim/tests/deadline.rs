//! A connection's deadline holds in the simulator, also while bytes flow: the simulated network
//! moves at most 1 MiB of payload per simulated millisecond (`fabric::WIRE_BUDGET`), so a bulk
//! transfer takes simulated time and the client's deadline fires. Before, a transfer took no
//! simulated time at all and `send: 2^63` ran for hours with its deadline never reached.

mod support;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::outcome::ConnOutcome;
use support::scenario;

const CLUSTER: &str = r#"
description: a bulk send against a short deadline
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, ambient: true}
    - {name: server, node: node-b, ambient: true, serve: [{port: 8080, app: sink}]}
"#;

fn run(send: &str, deadline: &str) -> ambient_scenarios::outcome::Connection {
    let text = format!(
        "{CLUSTER}steps:\n  - connect: {{id: c, from: client, to: server:8080, send: {send}, deadline: {deadline}}}\n"
    );
    let w = scenario("deadline.yaml", &text);
    let r = ambient_sim::run(&w, &RunOptions::default()).unwrap();
    r.outcome.connections.into_iter().next().expect("one connection")
}

#[test]
fn a_bulk_send_times_out_at_its_deadline() {
    let c = run("1GiB", "100ms");
    assert_eq!(c.outcome, ConnOutcome::Timeout, "{c:?}");
    // 100 ms moves 100 MiB of payload on all hops together; a proxied byte crosses about three.
    assert!(c.sent > 16 << 20 && c.sent < 100 << 20, "sent {}", c.sent);
}

#[test]
fn a_transfer_within_the_rate_meets_its_deadline() {
    let c = run("8MiB", "1s");
    assert_eq!(c.outcome, ConnOutcome::Ok, "{c:?}");
    assert_eq!(c.sent, 8 << 20);
}
