//! Every fault of the format, and `wait`, in the simulator: each scenario states what the fault
//! must do, and the test checks it against the Outcome (and, for time, the trace).

mod support;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::check_outcome;
use ambient_scenarios::outcome::Outcome;
use ambient_sim::SimRun;
use support::scenario;

const CLUSTER: &str = r#"
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true, labels: {app: sleep}}
    - name: server
      node: node-b
      serviceAccount: echo
      ambient: true
      labels: {app: echo}
      serve: [{port: 8080, app: echo}]
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"#;

fn run(name: &str, rest: &str) -> SimRun {
    let text = format!("description: {name}\n{CLUSTER}{rest}");
    let w = scenario(&format!("{name}.yaml"), &text);
    let opts = RunOptions { trace: true, ..RunOptions::default() };
    let r = ambient_sim::run(&w, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let failures = check_outcome(&w, &r.outcome);
    let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{name}:\n{}\n{}", text.join("\n"), r.outcome.to_json());
    r
}

/// Simulated time of the first trace line containing `what`.
fn time_of(r: &SimRun, what: &str) -> f64 {
    let trace = r.trace.as_deref().unwrap();
    let line = trace
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in the trace"));
    line.split(' ').next().unwrap().parse().unwrap()
}

/// Simulated time when the steps were done.
fn end_time(r: &SimRun) -> f64 {
    let trace = r.trace.as_deref().unwrap();
    let line = trace.lines().rev().find(|l| l.ends_with(" end")).unwrap();
    line.split(' ').next().unwrap().parse().unwrap()
}

fn events(o: &Outcome, id: &str) -> String {
    o.connections_with_id(id)
        .flat_map(|c| c.proxy_events.iter().map(|e| e.detail.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn latency_delays_every_crossing_of_the_link() {
    let r = run(
        "latency",
        r#"
steps:
  - fault: {latency: {between: [node-a, node-b], add: 50ms}}
  - connect: {id: slow, from: client, to: echo:80, expect: {outcome: ok, path: hbone}}
  - fault: {heal: [node-a, node-b]}
  - connect: {id: fast, from: client, to: echo:80, expect: {outcome: ok, reused: true}}
"#,
    );
    // TCP handshake, TLS, h2 and the CONNECT exchange take several round trips of 100 ms.
    let slow = time_of(&r, "step 2 fault heal") - time_of(&r, "step 1 connect slow");
    assert!(slow >= 0.3, "the first connection took only {slow}s");
    let fast = end_time(&r) - time_of(&r, "step 3 connect fast");
    assert!(fast < slow / 2.0, "a pooled connection without latency took {fast}s");
}

#[test]
fn loss_is_repaired_by_retransmission() {
    let r = run(
        "loss",
        r#"
seed: 3
steps:
  - fault: {loss: {between: [node-a, node-b], rate: 0.2}}
  - connect: {id: lossy, from: client, to: echo:80, send: 64KiB, count: 4, deadline: 60s, expect: {outcome: ok, intact: true, received: 64KiB}}
"#,
    );
    assert!(r.stats.drops > 0 && r.stats.retransmissions > 0, "{:?}", r.stats);
    assert!(r.trace.unwrap().contains(": loss"));
}

#[test]
fn a_partition_times_out_and_heal_restores() {
    let r = run(
        "partition",
        r#"
steps:
  - fault: {partition: [node-b, node-a]}
  # The client gives up after 3 s (a timeout, whatever happens later); the proxy's dial of a
  # tunnel gives up at its 10 s connect timeout and logs that.
  - connect: {id: cut, from: client, to: echo:80, deadline: 3s, expect: {outcome: timeout, server_peer: null}}
  - wait: 15s
  - fault: heal
  - connect: {id: healed, from: client, to: echo:80, expect: {outcome: ok, server_peer: 10.0.1.2}}
"#,
    );
    // The proxy's dial of a tunnel through the partition gives up after its connect timeout.
    let cut = events(&r.outcome, "cut");
    assert!(cut.contains("connect to 10.0.2.2:15008 timed out"), "{cut}");
}

#[test]
fn a_crashed_proxy_refuses_until_started() {
    let r = run(
        "crash",
        r#"
steps:
  - fault: {crash: proxy@node-b}
  - connect: {id: down, from: client, to: echo:80, expect: {outcome: refused, server_peer: null}}
  - fault: {start: proxy@node-b}
  - connect: {id: up, from: client, to: echo:80, expect: {outcome: ok, path: hbone, reused: false}}
expect:
  tunnels: {node-a->node-b: 1}
"#,
    );
    let down = events(&r.outcome, "down");
    assert!(down.contains("Connection refused (os error 111)"), "{down}");
}

#[test]
fn a_crashed_source_proxy_leaves_its_pods_refused() {
    run(
        "crash-source",
        r#"
steps:
  - fault: {crash: proxy@node-a}
  # The SYN left (REDIRECTed to 15001, where nothing listens): no proxy took it, so `direct`.
  - connect: {id: down, from: client, to: echo:80, expect: {outcome: refused, path: direct}}
  - fault: {restart: proxy@node-b}
  - fault: {start: proxy@node-a}
  - connect: {id: up, from: client, to: echo:80, expect: {outcome: ok}}
"#,
    );
}

#[test]
fn flush_conntrack_empties_the_table() {
    run(
        "flush",
        r#"
steps:
  - connect: {id: one, from: client, to: echo:80, expect: {outcome: ok}}
  - check:
      conntrack:
        client:
          - {orig: "10.0.1.2:* -> 10.96.0.10:80", reply: "127.0.0.1:15001 -> 10.0.1.2:*", state: TIME_WAIT}
          - {orig: "10.0.1.2:* -> 10.0.2.2:15008", state: ESTABLISHED}
  - fault: {flush-conntrack: client}
  - check: {conntrack: {client: []}}
  - connect: {id: two, from: client, to: echo:80, expect: {outcome: ok, reused: true}}
  - check:
      counters: {client: {"nat/ISTIO_OUTPUT/6": 2}}
"#,
    );
}

#[test]
fn deleting_and_adding_pods_changes_endpoints() {
    let r = run(
        "pods",
        r#"
steps:
  - connect: {id: before, from: client, to: echo:80, expect: {outcome: ok, server_peer: 10.0.1.2}}
  - fault: {delete-pod: server}
  - connect: {id: gone, from: client, to: echo:80, expect: {outcome: refused, server_peer: null}}
  - fault: {add-pod: {name: server2, node: node-b, serviceAccount: echo, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}}
  - connect: {id: back, from: client, to: echo:80, expect: {outcome: ok, server_peer: 10.0.1.2}}
expect:
  connections:
    back: {server_identity: "spiffe://cluster.local/ns/default/sa/sleep"}
"#,
    );
    let end = &r.outcome.end.netns;
    assert!(
        !end.contains_key("server.default") && end.contains_key("server2.default"),
        "{:?}",
        end.keys()
    );
    assert!(events(&r.outcome, "gone").contains("route"), "{}", events(&r.outcome, "gone"));
}

#[test]
fn a_policy_applied_revokes_live_connections_and_removing_it_restores() {
    let r = run(
        "policy",
        r#"
steps:
  - connect: {id: live, from: client, to: echo:80, hold: 10s, background: true}
  - wait: 1s
  - fault:
      apply:
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-all, namespace: default}
        spec: {selector: {matchLabels: {app: echo}}, action: DENY, rules: [{}]}
  - check: {connections: {live: {outcome: denied}}}
  - connect: {id: blocked, from: client, to: echo:80, expect: {outcome: denied, server_peer: null}}
  - fault: {remove: deny-all}
  - connect: {id: open, from: client, to: echo:80, expect: {outcome: ok}}
"#,
    );
    assert!(events(&r.outcome, "live").contains("revoked"), "{}", events(&r.outcome, "live"));
}

#[test]
fn waiting_moves_simulated_time_conntrack_expires_and_idle_tunnels_close() {
    let r = run(
        "wait",
        r#"
steps:
  - connect: {id: one, from: client, to: echo:80, expect: {outcome: ok}}
  - wait: 2h
  - check:
      tunnels: {node-a->node-b: 1}
      conntrack: {client: [], server: []}
  - connect: {id: two, from: client, to: echo:80, expect: {outcome: ok, reused: false}}
expect:
  tunnels: {node-a->node-b: 2}
"#,
    );
    assert!(end_time(&r) >= 7200.0, "{}", end_time(&r));
    assert!(r.trace.unwrap().contains("idle for 300s"));
}
