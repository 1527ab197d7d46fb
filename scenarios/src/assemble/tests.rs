use std::net::SocketAddr;

use ambient_proxy::events::{CloseResult, Direction, Path, ProxyEvent as Event};

use super::*;
use crate::traffic::{ClientEnd, ClientReport};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The target runs an echo; the app that accepted, when there is one, overrides it.
const LABELS: ConnLabels<'static> = ConnLabels {
    id: "c",
    from: "client.default",
    to: "server.default:8080",
    app: Some(App::Echo),
    endpoints: &[],
};

fn ok_report(n: u64) -> ClientReport {
    ClientReport { connected: true, sent: n, received: n, echoed: true, end: ClientEnd::Closed }
}

fn closed(node: &str, client: &str, dir: Direction, upstream: Option<&str>) -> Event {
    Event::ConnectionClosed {
        node: node.into(),
        client: addr(client),
        direction: dir,
        destination: addr("10.0.2.2:8080"),
        bytes_sent: 100,
        bytes_received: 100,
        duration_ms: 3,
        result: CloseResult::Ok,
        upstream: upstream.map(addr),
    }
}

fn hbone_log(allowed: bool) -> EventLog {
    let client = addr("10.0.1.2:40000");
    let mut log = EventLog::new();
    log.insert(
        "node-a".into(),
        vec![
            Event::OutboundRoute {
                node: "node-a".into(),
                client,
                original_dst: addr("10.96.0.10:80"),
                path: Path::Hbone,
                endpoint: addr("10.0.2.2:8080"),
                service: Some("echo.default".into()),
                source_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
                destination_identity: Some("spiffe://cluster.local/ns/default/sa/echo".into()),
                tunnel_reused: Some(false),
                tunnel: Some("node-a->node-b".into()),
            },
            Event::TunnelOpened {
                source_node: "node-a".into(),
                destination_node: "node-b".into(),
                gateway: addr("10.0.2.2:15008"),
                source_identity: "spiffe://cluster.local/ns/default/sa/sleep".into(),
                destination_identity: "spiffe://cluster.local/ns/default/sa/echo".into(),
            },
            closed("node-a", "10.0.1.2:40000", Direction::Outbound, None),
        ],
    );
    let mut b = vec![Event::InboundVerdict {
        node: "node-b".into(),
        client,
        direction: Direction::InboundHbone,
        destination: addr("10.0.2.2:8080"),
        source_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        allowed,
        reason: if allowed { "no ALLOW policy applies".into() } else { "denied".into() },
        policy: (!allowed).then(|| "deny-sleep.default".into()),
    }];
    if allowed {
        b.push(closed("node-b", "10.0.1.2:40000", Direction::InboundHbone, Some("10.0.1.2:51000")));
    }
    log.insert("node-b".into(), b);
    log
}

#[test]
fn an_hbone_connection_joins_both_proxies_and_the_apps_accept() {
    let log = hbone_log(true);
    let mut accepts = Accepts::default();
    accepts.push(Accept { app: App::Echo, peer: addr("10.0.1.2:51000"), served: None });
    let c = connection(LABELS, &ok_report(100), Some(addr("10.0.1.2:40000")), &log, &mut accepts);
    assert_eq!(c.outcome, ConnOutcome::Ok);
    assert_eq!(c.path, Some(PathKind::Hbone));
    assert!(c.intact);
    assert_eq!(c.server_peer, Some("10.0.1.2".parse().unwrap()));
    assert_eq!(c.server_identity.as_deref(), Some("spiffe://cluster.local/ns/default/sa/sleep"));
    assert_eq!(c.tunnel.unwrap().to_string(), "node-a->node-b");
    assert!(!c.reused);
    let kinds: Vec<_> = c.proxy_events.iter().map(|e| (e.proxy.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        [("node-a", EventKind::Route), ("node-a", EventKind::Pool), ("node-b", EventKind::Rbac)]
    );
    assert_eq!(
        c.proxy_events[0].detail,
        "hbone 10.0.2.2:15008 authority 10.0.2.2:8080 service echo.default as spiffe://cluster.local/ns/default/sa/echo"
    );
    assert_eq!(c.proxy_events[1].detail, "opened tunnel node-a->node-b");
    // The accept is used up: a second connection cannot claim it.
    let again =
        connection(LABELS, &ok_report(100), Some(addr("10.0.1.2:40000")), &log, &mut accepts);
    assert_eq!(again.server_peer, None);
    assert_eq!(tunnels(&log).len(), 1);
}

#[test]
fn an_accept_tied_to_a_client_is_joined_to_that_client_only() {
    // Two apps saw the same peer `ip:port` (one connected from each kind of proxy in a mixed
    // cluster). The first accept was tied beforehand to another client (by payload); the
    // connection whose proxy names that peer as its upstream gets the other one.
    let log = hbone_log(true);
    let other = addr("10.0.1.2:40001");
    let mut accepts = Accepts::default();
    accepts.push_tied(Accept { app: App::Sink, peer: addr("10.0.1.2:51000"), served: None }, other);
    accepts.push(Accept { app: App::Echo, peer: addr("10.0.1.2:51000"), served: None });
    let c = connection(LABELS, &ok_report(100), Some(addr("10.0.1.2:40000")), &log, &mut accepts);
    assert_eq!(c.server_peer, Some("10.0.1.2".parse().unwrap()));
    assert!(c.intact, "joined to the echo's accept, not the sink's");
    // The tied one goes to its own client, with no event naming it.
    let report = ClientReport { received: 0, ..ok_report(100) };
    let mine = connection(LABELS, &report, Some(other), &EventLog::new(), &mut accepts);
    assert_eq!(mine.server_peer, Some("10.0.1.2".parse().unwrap()));
    assert!(mine.intact, "a sink returns nothing");
}

#[test]
fn a_deny_verdict_makes_the_connection_denied_whatever_the_client_saw() {
    let log = hbone_log(false);
    let report = ClientReport { received: 0, ..ok_report(100) };
    let c =
        connection(LABELS, &report, Some(addr("10.0.1.2:40000")), &log, &mut Accepts::default());
    assert_eq!(c.outcome, ConnOutcome::Denied);
    assert!(!c.intact, "nothing came back from an echo");
    assert_eq!(c.server_peer, None);
    assert!(c.proxy_events.iter().any(|e| e.kind == EventKind::Rbac
        && e.detail.starts_with("deny inbound-hbone")
        && e.detail.ends_with("(deny-sleep.default)")));
}

#[test]
fn without_proxy_events_the_path_is_direct_and_the_app_saw_the_client() {
    let mut accepts = Accepts::default();
    accepts.push(Accept { app: App::Sink, peer: addr("10.0.1.9:40001"), served: None });
    let report = ClientReport { received: 0, ..ok_report(64) };
    let c =
        connection(LABELS, &report, Some(addr("10.0.1.9:40001")), &EventLog::new(), &mut accepts);
    assert_eq!((c.outcome, c.path), (ConnOutcome::Ok, Some(PathKind::Direct)));
    assert_eq!(c.server_peer, Some("10.0.1.9".parse().unwrap()));
    assert!(c.intact, "a sink returns nothing, and nothing came back");
}

#[test]
fn a_proxy_that_found_no_upstream_makes_the_connection_refused() {
    let client = addr("10.0.1.2:40002");
    let mut log = EventLog::new();
    log.insert(
        "node-a".into(),
        vec![Event::Error {
            node: "node-a".into(),
            client: Some(client),
            direction: Direction::Outbound,
            stage: "route".into(),
            status: None,
            message: "service echo.default has no endpoint".into(),
        }],
    );
    let report = ClientReport { received: 0, ..ok_report(10) };
    let c = connection(LABELS, &report, Some(client), &log, &mut Accepts::default());
    assert_eq!(c.outcome, ConnOutcome::Refused);
    // Captured, refused by its own proxy before routing: it never left the client (not
    // `direct`, which says neither side was captured).
    assert_eq!(c.path, None);
    assert_eq!(c.proxy_events[0].detail, "outbound route: service echo.default has no endpoint");
}

#[test]
fn short_or_altered_replies_are_errors_with_a_reason() {
    let mut accepts = Accepts::default();
    accepts.push(Accept { app: App::Echo, peer: addr("10.0.1.9:40003"), served: None });
    let report = ClientReport { received: 10, ..ok_report(100) };
    let c =
        connection(LABELS, &report, Some(addr("10.0.1.9:40003")), &EventLog::new(), &mut accepts);
    assert_eq!(c.outcome, ConnOutcome::Error);
    assert_eq!(c.error.as_deref(), Some("read back 10 bytes of the 100 the server returns"));
}

#[test]
fn a_client_that_gave_up_timed_out_whatever_a_proxy_logged_later() {
    let client = addr("10.0.1.2:40004");
    let mut log = EventLog::new();
    log.insert(
        "node-a".into(),
        vec![Event::Error {
            node: "node-a".into(),
            client: Some(client),
            direction: Direction::Outbound,
            stage: "h2".into(),
            status: None,
            message: "CONNECT 10.0.2.2:8080 timed out".into(),
        }],
    );
    let report = ClientReport { received: 0, end: ClientEnd::Timeout, ..ok_report(10) };
    let c = connection(LABELS, &report, Some(client), &log, &mut Accepts::default());
    assert_eq!(c.outcome, ConnOutcome::Timeout);
}

#[test]
fn a_refusal_on_15006_is_refused_and_came_in_plaintext() {
    let client = addr("10.0.1.2:40005");
    let mut log = EventLog::new();
    log.insert(
        "node-b".into(),
        vec![Event::Error {
            node: "node-b".into(),
            client: Some(client),
            direction: Direction::InboundPlaintext,
            stage: "request".into(),
            status: None,
            message: "self-call to the proxy's own port 10.0.2.2:15001".into(),
        }],
    );
    let report = ClientReport { received: 0, end: ClientEnd::Reset, ..ok_report(10) };
    let c = connection(LABELS, &report, Some(client), &log, &mut Accepts::default());
    assert_eq!((c.outcome, c.path), (ConnOutcome::Refused, Some(PathKind::InboundPlaintext)));
}

/// A Service whose endpoints run different apps (`app` is `None`), and a proxy that crashed
/// while the connection held: no close event, so no accept is tied to it. The route event's
/// endpoint runs an echo, so a clean close with nothing read back is a truncation, not `ok`
/// (fuzz seed 1 case 351 reported such a stream as `ok`).
#[test]
fn without_an_accept_the_routed_endpoints_app_decides_what_should_come_back() {
    let client = addr("10.0.1.2:40000");
    let mut log = hbone_log(true);
    // The crash: neither proxy logged the connection's close.
    for events in log.values_mut() {
        events.retain(|e| !matches!(e, Event::ConnectionClosed { .. }));
    }
    let cut = ClientReport { received: 0, ..ok_report(100) };
    let endpoints = [
        ("10.0.2.2:8080".parse().unwrap(), App::Echo),
        ("10.0.2.3:8080".parse().unwrap(), App::Sink),
    ];
    let labels = ConnLabels { app: None, endpoints: &endpoints, ..LABELS };
    let c = connection(labels, &cut, Some(client), &log, &mut Accepts::default());
    assert_eq!(c.outcome, ConnOutcome::Error);
    assert_eq!(c.error.as_deref(), Some("read back 0 bytes of the 100 the server returns"));
    // Routed to the sink endpoint instead, nothing comes back: `ok`.
    let sink = [(endpoints[0].0, App::Sink), (endpoints[1].0, App::Echo)];
    let labels = ConnLabels { app: None, endpoints: &sink, ..LABELS };
    let c = connection(labels, &cut, Some(client), &log, &mut Accepts::default());
    assert_eq!(c.outcome, ConnOutcome::Ok);
}
