//! Deleting a pod, in the order of a real deletion: its processes die first (its own clients
//! too: they report `ClientReport::killed`), their sockets close while its network is up, then
//! its proxy lets it go (its tunnels closed once unused, its handlers closed after the pod
//! drain deadline), then its network goes — and nothing is left behind on any proxy after a
//! quiet tail. Also: an inbound tunnel whose source vanished behind a partition is closed by
//! keepalive. Each scenario here is a case the fuzzer found (`fuzz s<seed> c<case>`).

use ambient_proxy::Resources;
use ambient_scenarios::outcome::{ConnOutcome, Outcome};
use ambient_scenarios::traffic::KILLED_WITH_POD;
use ambient_scenarios::{RunOptions, load_str};
use ambient_sim::{Inspect, run_inspected};

fn run(yaml: &str) -> (Outcome, std::collections::BTreeMap<String, Resources>) {
    let world = load_str("t.yaml", yaml).into_result().unwrap_or_else(|e| panic!("{e:?}"));
    let run = run_inspected(&world, &RunOptions::default(), &Inspect::default())
        .unwrap_or_else(|e| panic!("{}", e.message));
    (run.outcome, run.proxies)
}

/// Every proxy holds only its listeners.
fn quiet(proxies: &std::collections::BTreeMap<String, Resources>) {
    for (node, r) in proxies {
        assert_eq!(
            (r.tasks, r.busy, r.live_connections, r.pooled_tunnels),
            (r.listener_tasks, 0, 0, 0),
            "proxy@{node} holds more than its listeners: {r:?}"
        );
    }
}

const TWO_PODS: &str = "
description: d
cluster:
  nodes: [node-a]
  pods:
    - {name: p0, node: node-a, ip: 10.0.1.2, serviceAccount: sa0, ambient: true, serve: [{port: 8080, app: echo}]}
    - {name: p1, node: node-a, ip: 10.0.1.3, serviceAccount: sa1, ambient: true, serve: [{port: 8080, app: echo}]}
  external: [{name: web, ip: 203.0.113.10, serve: [{port: 443, app: echo}]}]
";

#[test]
fn a_deleted_pods_own_clients_die_with_it() {
    // One connection holding when the pod goes, two repetitions never started.
    let (outcome, proxies) = run(&format!(
        "{TWO_PODS}steps:
  - {{connect: {{id: c0, from: p1, to: p0:8080, send: 1KiB, count: 3, hold: 5s, background: true, deadline: 5s}}}}
  - {{wait: 1s}}
  - {{fault: {{delete-pod: p1}}}}
  - {{wait: 30m}}
"
    ));
    assert_eq!(outcome.connections.len(), 3);
    for c in &outcome.connections {
        assert_eq!(c.outcome, ConnOutcome::Error, "{c:?}");
        assert_eq!(c.error.as_deref(), Some(KILLED_WITH_POD), "{c:?}");
    }
    // Fuzz s3 c33: the client's close reached its proxy before the pod's network went, and its
    // tunnel closed once unused: the destination's inbound tunnel is not orphaned.
    quiet(&proxies);
}

#[test]
fn a_handler_whose_peer_close_was_lost_is_closed_after_the_pod_drain() {
    // Fuzz s10 c335, s12 c58: the pod's conntrack flushed, its client's close no longer reaches
    // its proxy's passthrough handler; once the pod is removed, the drain deadline closes it.
    let (_, proxies) = run(&format!(
        "{TWO_PODS}steps:
  - {{connect: {{id: c1, from: p0, to: web:443, send: 1KiB, hold: 5s, background: true, deadline: 30s}}}}
  - {{wait: 1s}}
  - {{fault: {{flush-conntrack: p0}}}}
  - {{fault: {{delete-pod: p0}}}}
  - {{wait: 30m}}
"
    ));
    quiet(&proxies);
}

#[test]
fn an_inbound_tunnel_whose_source_vanished_behind_a_partition_is_closed_by_keepalive() {
    // Fuzz s12 c157, s13 c213: the source's keepalive gave the tunnel up; the destination's
    // side (with a stream held open on it, or idle) heard nothing and held it forever.
    let (_, proxies) = run("
description: d
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: p1, node: node-b, ip: 10.0.2.2, serviceAccount: sa0, ambient: true, serve: [{port: 8080, app: echo}]}
    - {name: p6, node: node-a, ip: 10.0.1.7, serviceAccount: sa2, ambient: true, serve: [{port: 8080, app: echo}]}
steps:
  - {connect: {id: c0, from: p6, to: p1:8080, send: 32, deadline: 5s}}
  - {connect: {id: c1, from: p6, to: p1:8080, send: 32, hold: 20s, background: true, deadline: 5s}}
  - {wait: 1s}
  - {fault: {partition: [node-a, node-b]}}
  - {wait: 30m}
");
    quiet(&proxies);
}
