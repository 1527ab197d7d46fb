//! The translation against lines a real ztunnel printed (`testdata/`, filtered to the scopes the
//! translation reads, from `testbed run --backend netns --proxy ztunnel --trace` runs of the
//! catalog scenarios named in the file names).

use super::*;

fn lines(text: &str) -> Vec<String> {
    text.lines().map(String::from).collect()
}

fn ctx() -> Context {
    let mut c = Context::of_catalog_scenario("deny-policy");
    // The second server of refused-closed-port and service-no-endpoints.
    c.nodes.insert("10.0.2.3".parse().unwrap(), "node-b".into());
    c
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The Outcome's words for a node's events (what `assemble` would show), for compact asserts.
fn words(events: &[ProxyEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            ProxyEvent::OutboundRoute { client, path, endpoint, service, tunnel_reused, tunnel, .. } => {
                format!("route {client} {path:?} {endpoint} {service:?} reused={tunnel_reused:?} {tunnel:?}")
            }
            ProxyEvent::InboundVerdict { client, direction, allowed, reason, policy, source_identity, .. } => {
                format!("verdict {client} {} {allowed} {reason} {policy:?} {source_identity:?}", direction.as_str())
            }
            ProxyEvent::Error { client, direction, stage, status, .. } => {
                format!("error {client:?} {} {stage} {status:?}", direction.as_str())
            }
            ProxyEvent::ConnectionClosed { client, direction, result, bytes_sent, .. } => {
                format!("closed {client} {} {result:?} {bytes_sent}", direction.as_str())
            }
            ProxyEvent::TunnelOpened { source_node, destination_node, gateway, .. } => {
                format!("tunnel {source_node}->{destination_node} {gateway}")
            }
            ProxyEvent::TunnelClosed { .. } => "tunnel closed".into(),
            ProxyEvent::Dns { name, .. } => format!("dns {name}"),
        })
        .collect()
}

#[test]
fn the_source_side_routes_dials_and_reports_a_401_as_a_denial() {
    let ev = events("node-a", &lines(include_str!("testdata/deny-policy-node-a.jsonl")), &ctx());
    assert_eq!(
        words(&ev),
        [
            "route 10.0.1.2:53538 Hbone 10.0.2.2:8080 Some(\"echo.default\") reused=Some(false) Some(\"node-a->node-b\")",
            "tunnel node-a->node-b 10.0.2.2:15008",
            "error Some(10.0.1.2:53538) outbound upstream Some(401)",
            "route 10.0.1.3:49514 Hbone 10.0.2.2:8080 Some(\"echo.default\") reused=Some(false) Some(\"node-a->node-b\")",
            "tunnel node-a->node-b 10.0.2.2:15008",
            "closed 10.0.1.3:49514 outbound Ok 1024",
            "route 10.0.1.2:53546 Hbone 10.0.2.2:8080 Some(\"echo.default\") reused=Some(false) Some(\"node-a->node-b\")",
            "tunnel node-a->node-b 10.0.2.2:15008",
            "closed 10.0.1.2:53546 outbound Ok 1024",
        ]
    );
    let ProxyEvent::OutboundRoute { destination_identity, .. } = &ev[0] else { panic!() };
    assert_eq!(destination_identity.as_deref(), Some("spiffe://cluster.local/ns/default/sa/echo"));
}

#[test]
fn the_destination_side_ties_each_tunnelled_request_to_its_client_and_verdict() {
    let ev = events("node-b", &lines(include_str!("testdata/deny-policy-node-b.jsonl")), &ctx());
    assert_eq!(
        words(&ev),
        [
            "verdict 10.0.1.2:53538 inbound-hbone false denied by a DENY policy Some(\"deny-sleep.default\") Some(\"spiffe://cluster.local/ns/default/sa/sleep\")",
            "verdict 10.0.1.3:49514 inbound-hbone true no ALLOW policy applies None Some(\"spiffe://cluster.local/ns/default/sa/other\")",
            "closed 10.0.1.3:49514 inbound-hbone Ok 1024",
            "verdict 10.0.1.2:53546 inbound-hbone true no ALLOW policy applies None Some(\"spiffe://cluster.local/ns/default/sa/sleep\")",
            "closed 10.0.1.2:53546 inbound-hbone Ok 1024",
        ]
    );
}

#[test]
fn plaintext_inbound_verdicts_follow_the_connection_they_were_made_for() {
    let ev =
        events("node-b", &lines(include_str!("testdata/inbound-plaintext-node-b.jsonl")), &ctx());
    let w = words(&ev);
    assert_eq!(w.len(), 6, "{w:#?}");
    assert_eq!(
        w[0],
        "verdict 10.0.1.2:59304 inbound-plaintext true no ALLOW policy applies None None"
    );
    assert_eq!(w[1], "closed 10.0.1.2:59304 inbound-plaintext Ok 1024");
}

#[test]
fn failures_before_data_are_errors_the_assembler_calls_refusals() {
    let a =
        events("node-a", &lines(include_str!("testdata/refused-closed-port-node-a.jsonl")), &ctx());
    let w = words(&a);
    assert_eq!(w[2], "error Some(10.0.1.2:50406) outbound upstream Some(503)", "{w:#?}");
    assert_eq!(w[4], "error Some(10.0.1.2:54402) outbound connect None", "{w:#?}");
    let b =
        events("node-b", &lines(include_str!("testdata/refused-closed-port-node-b.jsonl")), &ctx());
    let w = words(&b);
    assert!(
        w.contains(&"error Some(10.0.1.2:50406) inbound-hbone upstream Some(503)".to_string()),
        "{w:#?}"
    );
    assert!(
        w.contains(&"error Some(10.0.1.3:34926) inbound-plaintext upstream None".to_string()),
        "{w:#?}"
    );
    // A VIP with no endpoint left: refused before any route.
    let n = events(
        "node-a",
        &lines(include_str!("testdata/service-no-endpoints-node-a.jsonl")),
        &ctx(),
    );
    assert!(
        words(&n).contains(&"error Some(10.0.1.2:53560) outbound route None".to_string()),
        "{:#?}",
        words(&n)
    );
}

#[test]
fn self_calls_through_a_tunnel_are_refused_for_the_tunnelled_client() {
    let ev = events(
        "node-a",
        &lines(include_str!("testdata/self-call-proxy-ports-node-a.jsonl")),
        &ctx(),
    );
    let w = words(&ev);
    assert!(
        w.contains(&"error Some(10.0.1.2:33594) inbound-hbone request Some(503)".to_string()),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|l| l.starts_with("error Some(10.0.1.2:57290) inbound-plaintext")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|l| l.starts_with("error Some(10.0.1.2:60420) inbound-hbone tls")),
        "{w:#?}"
    );
}

#[test]
fn a_failed_dial_is_no_tunnel_and_reuse_is_read_from_the_pool() {
    let text = r#"{"scope":"access","message":"connection opened","src.addr":"10.0.1.2:1000","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound"}
{"scope":"ztunnel::proxy::pool","message":"spawning new pool conn for 10.0.1.2(spiffe://cluster.local/ns/default/sa/sleep)->10.0.2.2:15008[spiffe://cluster.local/ns/default/sa/echo]","outbound":{"id":"s1"}}
{"scope":"access","message":"connection complete","src.addr":"10.0.1.2:1000","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound","bytes_sent":0,"bytes_recv":0,"error":"io error: Connection refused (os error 111)"}
{"scope":"access","message":"connection opened","src.addr":"10.0.1.2:1001","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound"}
{"scope":"ztunnel::proxy::pool","message":"spawning new pool conn for 10.0.1.2(spiffe://cluster.local/ns/default/sa/sleep)->10.0.2.2:15008[spiffe://cluster.local/ns/default/sa/echo]","outbound":{"id":"s2"}}
not json at all
{"scope":"access","message":"connection opened","src.addr":"10.0.1.2:1002","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound"}
{"scope":"ztunnel::proxy::pool","message":"re-using connection for 10.0.1.2(spiffe://cluster.local/ns/default/sa/sleep)->10.0.2.2:15008[spiffe://cluster.local/ns/default/sa/echo]","outbound":{"id":"s3"}}
{"scope":"ztunnel::proxy::pool","message":"initial attempt - found existing conn, done","outbound":{"id":"s3"}}
"#;
    let ev = events("node-a", &lines(text), &ctx());
    assert_eq!(
        words(&ev),
        [
            "route 10.0.1.2:1000 Hbone 10.0.2.2:8080 None reused=None Some(\"node-a->node-b\")",
            "error Some(10.0.1.2:1000) outbound connect None",
            "route 10.0.1.2:1001 Hbone 10.0.2.2:8080 None reused=Some(false) Some(\"node-a->node-b\")",
            "tunnel node-a->node-b 10.0.2.2:15008",
            "route 10.0.1.2:1002 Hbone 10.0.2.2:8080 None reused=Some(true) Some(\"node-a->node-b\")",
        ]
    );
}

#[test]
fn ztunnels_words_become_ours_where_they_say_the_same_thing() {
    let c = ctx();
    let t = sa("10.0.2.2:7070");
    assert_eq!(our_words(SELF_CALL, t, &c), "self-call to the proxy's own port 10.0.2.2:7070");
    assert_eq!(
        our_words("connection failed: Connection refused (os error 111)", t, &c),
        "connect to 10.0.2.2:7070: Connection refused (os error 111)"
    );
    assert_eq!(
        our_words("no healthy upstream: 10.96.0.10:80", t, &c),
        "service echo.default has no endpoint"
    );
    assert_eq!(
        our_words(
            "tls handshake error: Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }",
            t,
            &c
        ),
        "received corrupt message of type InvalidContentType"
    );
    // Anything else stays ztunnel's, so a different reason shows as a difference.
    assert_eq!(our_words("unknown source", t, &c), "unknown source");
    let ev = events("node-a", &lines(include_str!("testdata/deny-policy-node-a.jsonl")), &c);
    let ProxyEvent::Error { message, .. } = &ev[2] else { panic!("{ev:?}") };
    assert_eq!(message, "CONNECT 10.0.2.2:8080 answered 401");
    // A stream that fails on a tunnel that was up is a reset, and the tunnel stays.
    let text = r#"{"scope":"access","message":"connection opened","src.addr":"10.0.1.2:1000","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound"}
{"scope":"ztunnel::proxy::pool","message":"re-using connection for 10.0.1.2(spiffe://a)->10.0.2.2:15008[spiffe://b]","outbound":{"id":"s1"}}
{"scope":"access","message":"connection complete","src.addr":"10.0.1.2:1000","dst.addr":"10.0.2.2:15008","dst.hbone_addr":"10.0.2.2:8080","direction":"outbound","bytes_sent":0,"bytes_recv":0,"error":"h2 failed: stream closed because of a broken pipe"}
"#;
    let w = words(&events("node-a", &lines(text), &c));
    assert_eq!(
        w[0],
        "route 10.0.1.2:1000 Hbone 10.0.2.2:8080 None reused=Some(true) Some(\"node-a->node-b\")"
    );
    assert!(w[1].starts_with("closed 10.0.1.2:1000 outbound Reset { side: \"tunnel\""), "{w:?}");
}

#[test]
fn small_parsers() {
    assert_eq!(
        policy_name("istio-system/istio_converted_static_strict"),
        "istio_converted_static_strict.istio-system"
    );
    assert_eq!(http_status("http status: 401 Unauthorized"), Some(401));
    assert_eq!(http_status("io error"), None);
    assert_eq!(
        forwarded_for(r#"headers: {"forwarded": "for=\"10.0.1.2:53538\";host=x"}"#),
        Some(sa("10.0.1.2:53538"))
    );
    assert_eq!(conn_identity("10.0.1.2:1(None)->10.0.2.2:15008"), None);
    let (src, gw, sid, did) = pool_key("10.0.1.2(spiffe://a)->10.0.2.2:15008[spiffe://b]").unwrap();
    assert_eq!(
        (src, gw, sid.as_str(), did.as_str()),
        ("10.0.1.2".parse().unwrap(), sa("10.0.2.2:15008"), "spiffe://a", "spiffe://b")
    );
}
