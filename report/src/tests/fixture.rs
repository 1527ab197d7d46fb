//! Scenarios and prepared Outcomes for the report tests. The Outcomes' connections are built by
//! [`ambient_scenarios::assemble::connection`] from real proxy events, exactly as both backends build theirs,
//! so the reports are tested against the wording the backends will produce.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ambient_proxy::events::{CloseResult, Direction, Path, ProxyEvent as Event};

use ambient_scenarios::assemble::{self, Accept, Accepts, ConnLabels, EventLog};
use ambient_scenarios::outcome::{Connection, Counter, NetnsState, Outcome, State};
use ambient_scenarios::traffic::{ClientEnd, ClientReport};
use ambient_scenarios::world::{App, World};

/// Every path kind, a pooled tunnel, a policy applied mid-run and a denied connection.
/// Addresses: sleep 10.0.1.2 (captured), legacy 10.0.1.3 (not captured), server 10.0.2.2.
pub(crate) const MESH: &str = r#"scenario: mesh
description: Every path kind, a pooled tunnel, and a deny policy applied mid-run.
tags: [fixture, hbone]
seed: 3
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: sleep, node: node-a, serviceAccount: sleep, ambient: true, labels: {app: sleep}}
    - {name: legacy, node: node-a}
    - name: server
      node: node-b
      serviceAccount: echo
      ambient: true
      labels: {app: echo}
      serve: [{port: 8080, app: echo}]
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
  external:
    - {name: web, ip: 203.0.113.10, serve: [{port: 443, app: echo}]}
steps:
  - connect:
      id: first
      from: sleep
      to: echo:80
      expect: {outcome: ok, path: hbone, reused: false, tunnel: node-a->node-b}
  - connect:
      id: pooled
      from: sleep
      to: echo:80
      count: 3
      expect: {outcome: ok, path: hbone, reused: true}
  - fault:
      apply:
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-sleep}
        spec:
          selector: {matchLabels: {app: echo}}
          action: DENY
          rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
  - connect:
      id: denied
      from: sleep
      to: echo:80
      expect: {outcome: denied, path: hbone, server_peer: null}
  - connect: {id: web, from: sleep, to: web:443, expect: {path: passthrough}}
  - connect:
      id: plain
      from: legacy
      to: server:8080
      expect: {outcome: ok, path: inbound-plaintext, server_identity: null}
  - connect: {id: direct, from: legacy, to: web:443, expect: {outcome: ok, path: direct}}
expect:
  connections:
    first: {server_peer: 10.0.1.2, server_identity: "spiffe://cluster.local/ns/default/sa/sleep"}
  tunnels: {node-a->node-b: 1}
"#;

/// A scenario whose `latency` fault the backend will skip, and a connection after it.
pub(crate) const SKIPPY: &str = r#"scenario: skippy
description: A latency fault the backend cannot apply, then a connection across it.
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, ambient: true}
    - {name: server, node: node-b, ambient: true, serve: [{port: 8080, app: echo}]}
steps:
  - fault: {latency: {between: [node-a, node-b], add: 50ms}}
  - connect: {id: slow, from: client, to: server:8080, expect: {outcome: ok, path: hbone}}
"#;

/// Unknown node: fails to load.
pub(crate) const BROKEN: &str = r#"description: A pod on a node that does not exist.
cluster:
  nodes: [node-a]
  pods:
    - {name: client, node: node-c}
steps: [{wait: 1s}]
"#;

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ok(n: u64) -> ClientReport {
    ClientReport { connected: true, sent: n, received: n, echoed: true, end: ClientEnd::Closed }
}

fn hbone_route(client: SocketAddr, reused: bool) -> Event {
    Event::OutboundRoute {
        node: "node-a".into(),
        client,
        original_dst: a("10.96.0.10:80"),
        path: Path::Hbone,
        endpoint: a("10.0.2.2:8080"),
        service: Some("echo.default".into()),
        source_identity: Some(SLEEP.into()),
        destination_identity: Some(ECHO.into()),
        tunnel_reused: Some(reused),
        tunnel: Some("node-a->node-b".into()),
    }
}

fn verdict(client: SocketAddr, direction: Direction, identity: Option<&str>, deny: bool) -> Event {
    Event::InboundVerdict {
        node: "node-b".into(),
        client,
        direction,
        destination: a("10.0.2.2:8080"),
        source_identity: identity.map(Into::into),
        allowed: !deny,
        reason: if deny { "a DENY policy matches" } else { "no ALLOW policy applies" }.into(),
        policy: deny.then(|| "deny-sleep.default".into()),
    }
}

fn closed(node: &str, client: SocketAddr, direction: Direction, upstream: Option<&str>) -> Event {
    Event::ConnectionClosed {
        node: node.into(),
        client,
        direction,
        destination: a("10.0.2.2:8080"),
        bytes_sent: 1024,
        bytes_received: 1024,
        duration_ms: 1,
        result: CloseResult::Ok,
        upstream: upstream.map(a),
    }
}

/// One connection as a backend would assemble it: the proxies' events (per node), what the
/// client saw, and the server app's accept (the peer it saw), if any.
fn conn(
    (id, from, to): (&str, &str, &str),
    report: ClientReport,
    client: SocketAddr,
    events: Vec<(&str, Event)>,
    accepted_from: Option<&str>,
) -> Connection {
    let mut log = EventLog::new();
    for (node, e) in events {
        log.entry(node.to_string()).or_default().push(e);
    }
    let mut accepts = Accepts::default();
    if let Some(peer) = accepted_from {
        accepts.push(Accept { app: App::Echo, peer: a(peer), served: None });
    }
    let labels = ConnLabels { id, from, to, app: Some(App::Echo), endpoints: &[] };
    assemble::connection(labels, &report, Some(client), &log, &mut accepts)
}

/// An allowed HBONE connection from sleep to echo:80; `port` is the client's ephemeral port.
pub(crate) fn hbone_ok(id: &str, port: u16, reused: bool) -> Connection {
    let client = a(&format!("10.0.1.2:{port}"));
    let upstream = format!("10.0.1.2:{}", port + 10_000);
    let events = vec![
        ("node-a", hbone_route(client, reused)),
        ("node-a", closed("node-a", client, Direction::Outbound, None)),
        ("node-b", verdict(client, Direction::InboundHbone, Some(SLEEP), false)),
        ("node-b", closed("node-b", client, Direction::InboundHbone, Some(&upstream))),
    ];
    conn((id, "sleep.default", "echo.default:80"), ok(1024), client, events, Some(&upstream))
}

/// Allowed, but the server app resets it after accepting.
pub(crate) fn hbone_reset(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.2:{port}"));
    let upstream = format!("10.0.1.2:{}", port + 10_000);
    let mut closed_b = closed("node-b", client, Direction::InboundHbone, Some(&upstream));
    if let Event::ConnectionClosed { result, .. } = &mut closed_b {
        *result =
            CloseResult::Reset { side: "upstream".into(), message: "connection reset".into() };
    }
    let events = vec![
        ("node-a", hbone_route(client, true)),
        ("node-b", verdict(client, Direction::InboundHbone, Some(SLEEP), false)),
        ("node-b", closed_b),
    ];
    let report = ClientReport { received: 0, end: ClientEnd::Reset, ..ok(1024) };
    conn((id, "sleep.default", "echo.default:80"), report, client, events, Some(&upstream))
}

pub(crate) fn hbone_denied(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.2:{port}"));
    let events = vec![
        ("node-a", hbone_route(client, true)),
        ("node-b", verdict(client, Direction::InboundHbone, Some(SLEEP), true)),
    ];
    let report = ClientReport { received: 0, ..ok(1024) };
    conn((id, "sleep.default", "echo.default:80"), report, client, events, None)
}

pub(crate) fn passthrough(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.2:{port}"));
    let route = Event::OutboundRoute {
        node: "node-a".into(),
        client,
        original_dst: a("203.0.113.10:443"),
        path: Path::Passthrough,
        endpoint: a("203.0.113.10:443"),
        service: None,
        source_identity: Some(SLEEP.into()),
        destination_identity: None,
        tunnel_reused: None,
        tunnel: None,
    };
    let upstream = format!("10.0.1.2:{}", port + 10_000);
    let closed = closed("node-a", client, Direction::Outbound, Some(&upstream));
    let events = vec![("node-a", route), ("node-a", closed)];
    conn((id, "sleep.default", "web:443"), ok(1024), client, events, Some(&upstream))
}

pub(crate) fn plaintext(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.3:{port}"));
    let upstream = format!("10.0.1.3:{}", port + 10_000);
    let events = vec![
        ("node-b", verdict(client, Direction::InboundPlaintext, None, false)),
        ("node-b", closed("node-b", client, Direction::InboundPlaintext, Some(&upstream))),
    ];
    conn((id, "legacy.default", "server.default:8080"), ok(1024), client, events, Some(&upstream))
}

pub(crate) fn direct(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.3:{port}"));
    let peer = client.to_string();
    conn((id, "legacy.default", "web:443"), ok(1024), client, Vec::new(), Some(&peer))
}

/// A connection whose client's own proxy refused it: no endpoint for the service.
pub(crate) fn no_endpoint(id: &str, port: u16) -> Connection {
    let client = a(&format!("10.0.1.2:{port}"));
    let error = Event::Error {
        node: "node-a".into(),
        client: Some(client),
        direction: Direction::Outbound,
        stage: "route".into(),
        status: None,
        message: "service echo.default has no endpoint".into(),
    };
    let report = ClientReport { received: 0, end: ClientEnd::Reset, ..ok(1024) };
    conn((id, "sleep.default", "echo.default:80"), report, client, vec![("node-a", error)], None)
}

fn end_state() -> State {
    let mut netns = BTreeMap::new();
    let counters = [("nat/ISTIO_OUTPUT/6".parse().unwrap(), Counter { packets: 6, bytes: 360 })];
    netns.insert(
        "sleep.default".to_string(),
        NetnsState { conntrack: Vec::new(), counters: counters.into_iter().collect() },
    );
    let pair = "node-a->node-b".parse().unwrap();
    State { tunnels: [(pair, 1)].into_iter().collect(), netns }
}

/// The Outcome MESH expects: everything as written.
pub(crate) fn mesh_outcome_as_expected(world: &World) -> Outcome {
    Outcome {
        scenario: world.id.clone(),
        seed: world.seed,
        connections: vec![
            hbone_ok("first", 40000, false),
            hbone_ok("pooled", 40001, true),
            hbone_ok("pooled", 40002, true),
            hbone_ok("pooled", 40003, true),
            hbone_denied("denied", 40004),
            passthrough("web", 40005),
            plaintext("plain", 40006),
            direct("direct", 40007),
        ],
        resolutions: Vec::new(),
        checks: Vec::new(),
        end: end_state(),
        skipped: Vec::new(),
    }
}

/// MESH gone wrong: the second pooled connection was reset, the server saw the wrong peer on
/// `first`, and a second tunnel was opened.
pub(crate) fn mesh_outcome_failing(world: &World) -> Outcome {
    let mut o = mesh_outcome_as_expected(world);
    o.connections[2] = hbone_ok("pooled", 40002, true);
    o.connections[2].outcome = ambient_scenarios::outcome::ConnOutcome::Reset;
    o.connections[2].received = 512;
    o.connections[2].intact = false;
    o.connections[0].server_peer = Some("10.0.1.1".parse().unwrap());
    o.end.tunnels.insert("node-a->node-b".parse().unwrap(), 2);
    o
}

/// SKIPPY as a backend that cannot add latency reports it: the fault and, because the
/// connection was meant to run across it, the connection too.
pub(crate) fn skippy_outcome(world: &World) -> Outcome {
    Outcome {
        scenario: world.id.clone(),
        seed: world.seed,
        connections: Vec::new(),
        resolutions: Vec::new(),
        checks: Vec::new(),
        end: State::default(),
        skipped: vec![
            ambient_scenarios::outcome::Skipped {
                step: 0,
                reason: "netns cannot add latency yet".into(),
            },
            ambient_scenarios::outcome::Skipped {
                step: 1,
                reason: "runs across a skipped latency fault".into(),
            },
        ],
    }
}
