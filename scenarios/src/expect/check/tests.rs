use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::load::load_str;
use crate::outcome::{
    ConnOutcome, ConntrackEntry, Counter, NetnsState, PathKind, Proto, Skipped, Snapshot, TcpState,
};
use crate::values::NodePair;

const SCENARIO: &str = r#"
description: checker fixture
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}
    - {name: server, node: node-b, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
steps:
  - connect:
      id: first
      from: client
      to: echo:80
      expect: {outcome: ok, path: hbone, reused: false, tunnel: node-a->node-b}
  - connect: {id: more, from: client, to: echo:80, count: 3, expect: {outcome: ok, reused: true}}
  - check:
      tunnels: {node-a->node-b: 1}
  - wait: 1s
expect:
  connections:
    first: {server_peer: 10.0.1.2, server_identity: "spiffe://cluster.local/ns/default/sa/sleep", sent: 1KiB, received: 1KiB, intact: true}
  tunnels: {node-a->node-b: 1, node-b->node-a: 0}
  conntrack:
    client:
      - {orig: "10.0.1.2:* -> 10.96.0.10:80", reply: "127.0.0.1:15001 -> 10.0.1.2:*", state: TIME_WAIT}
      - {orig: "10.0.1.2:* -> 10.96.0.10:80", reply: "127.0.0.1:15001 -> 10.0.1.2:*", state: TIME_WAIT}
      - {orig: "10.0.1.2:* -> 10.0.2.2:15008", state: ESTABLISHED}
  counters:
    client: {"nat/ISTIO_OUTPUT/6": 4}
"#;

fn world() -> World {
    load_str("fixture.yaml", SCENARIO).into_result().unwrap_or_else(|e| panic!("{e:?}"))
}

fn pair() -> NodePair {
    NodePair { from: "node-a".into(), to: "node-b".into() }
}

fn conn(id: &str, reused: bool) -> Connection {
    Connection {
        id: id.into(),
        from: "client.default".into(),
        to: "echo.default:80".into(),
        outcome: ConnOutcome::Ok,
        error: None,
        path: Some(PathKind::Hbone),
        sent: 1024,
        received: 1024,
        intact: true,
        server_peer: Some(Ipv4Addr::new(10, 0, 1, 2)),
        server_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        tunnel: Some(pair()),
        reused,
        proxy_events: vec![],
    }
}

fn ct(orig: &str, reply: &str, state: TcpState) -> ConntrackEntry {
    ConntrackEntry {
        proto: Proto::Tcp,
        orig: orig.parse().unwrap(),
        reply: reply.parse().unwrap(),
        state: Some(state),
        mark: 0,
        zone: 0,
    }
}

/// An Outcome that meets every expectation of the fixture.
fn passing() -> Outcome {
    // Listed in an order unlike the expectations: order must not matter.
    let conntrack = vec![
        ct(
            "10.0.1.2:40001 -> 10.0.2.2:15008",
            "10.0.2.2:15008 -> 10.0.1.2:40001",
            TcpState::Established,
        ),
        ct(
            "10.0.1.2:40002 -> 10.96.0.10:80",
            "127.0.0.1:15001 -> 10.0.1.2:40002",
            TcpState::TimeWait,
        ),
        ct(
            "10.0.1.2:40000 -> 10.96.0.10:80",
            "127.0.0.1:15001 -> 10.0.1.2:40000",
            TcpState::TimeWait,
        ),
    ];
    let counters = [("nat/ISTIO_OUTPUT/6".parse().unwrap(), Counter { packets: 4, bytes: 240 })];
    let client = NetnsState { conntrack, counters: counters.into() };
    let mut end = State::default();
    end.tunnels.insert(pair(), 1);
    end.netns.insert("client.default".into(), client);
    Outcome {
        scenario: "fixture".into(),
        seed: 0,
        connections: vec![
            conn("first", false),
            conn("more", true),
            conn("more", true),
            conn("more", true),
        ],
        resolutions: Vec::new(),
        checks: vec![Snapshot {
            step: 2,
            state: State { tunnels: [(pair(), 1)].into(), netns: BTreeMap::new() },
        }],
        end,
        skipped: vec![],
    }
}

fn messages(f: &[Failure]) -> Vec<String> {
    f.iter().map(ToString::to_string).collect()
}

#[test]
fn a_matching_outcome_has_no_failures() {
    assert_eq!(messages(&check_outcome(&world(), &passing())), Vec::<String>::new());
}

#[test]
fn a_wrong_field_names_the_expectation_its_position_and_both_values() {
    let mut o = passing();
    o.connections[0].outcome = ConnOutcome::Reset;
    o.connections[0].server_peer = Some(Ipv4Addr::new(10, 0, 2, 1));
    let f = check_outcome(&world(), &o);
    assert_eq!(
        messages(&f),
        [
            "fixture.yaml:15:25: steps[0].connect.expect.outcome: expected ok, got reset",
            "fixture.yaml:22:26: expect.connections.first.server_peer: expected 10.0.1.2, got 10.0.2.1",
        ]
    );
    assert_eq!((f[0].expected.as_str(), f[0].actual.as_str()), ("ok", "reset"));
}

#[test]
fn error_outcomes_show_their_message() {
    let mut o = passing();
    o.connections[0].outcome = ConnOutcome::Error;
    o.connections[0].error = Some("tls handshake failed".into());
    let f = check_outcome(&world(), &o);
    assert_eq!(f[0].actual, "error (tls handshake failed)");
}

#[test]
fn repetitions_that_fail_alike_are_reported_once() {
    let mut o = passing();
    for c in o.connections.iter_mut().filter(|c| c.id == "more") {
        c.reused = false;
    }
    o.connections[2].outcome = ConnOutcome::Timeout;
    assert_eq!(
        messages(&check_outcome(&world(), &o)),
        [
            "fixture.yaml:16:80: steps[1].connect.expect.outcome: connection 2 of 3: expected ok, got timeout",
            "fixture.yaml:16:92: steps[1].connect.expect.reused: all 3 connections: expected true, got false",
        ]
    );
}

#[test]
fn a_missing_repetition_is_a_failure() {
    let mut o = passing();
    o.connections.pop();
    let f = check_outcome(&world(), &o);
    assert_eq!(
        messages(&f),
        [
            "fixture.yaml:16:70: steps[1].connect.expect: expected 3 connection(s) with id \"more\", got 2"
        ]
    );
}

#[test]
fn tunnels_count_absent_pairs_as_zero() {
    let mut o = passing();
    o.end.tunnels.insert(NodePair { from: "node-b".into(), to: "node-a".into() }, 2);
    o.checks[0].state.tunnels.clear();
    assert_eq!(
        messages(&check_outcome(&world(), &o)),
        [
            "fixture.yaml:18:17: steps[2].check.tunnels[\"node-a->node-b\"]: expected 1, got 0",
            "fixture.yaml:23:32: expect.tunnels[\"node-b->node-a\"]: expected 0, got 2",
        ]
    );
}

#[test]
fn conntrack_reports_missing_and_unexpected_entries() {
    let mut o = passing();
    let table = &mut o.end.netns.get_mut("client.default").unwrap().conntrack;
    table[1].state = Some(TcpState::Close);
    let f = check_outcome(&world(), &o);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].to_string(),
        "fixture.yaml:26:7: expect.conntrack.client: conntrack of client.default: 1 expected entry not found \
         [tcp 10.0.1.2:* -> 10.96.0.10:80 reply 127.0.0.1:15001 -> 10.0.1.2:* TIME_WAIT]; 1 entry not expected \
         [tcp 10.0.1.2:40002 -> 10.96.0.10:80 reply 127.0.0.1:15001 -> 10.0.1.2:40002 CLOSE] (3 entries in the table)"
    );
    // An extra entry alone.
    let mut o = passing();
    let table = &mut o.end.netns.get_mut("client.default").unwrap().conntrack;
    table.push(ct(
        "10.0.1.2:40003 -> 10.0.2.2:15008",
        "10.0.2.2:15008 -> 10.0.1.2:40003",
        TcpState::SynSent,
    ));
    let f = check_outcome(&world(), &o);
    assert_eq!(f[0].expected, "no other entries");
    assert!(f[0].actual.contains("SYN_SENT"), "{}", f[0].actual);
    // A table missing from the outcome.
    let mut o = passing();
    o.end.netns.clear();
    let f = check_outcome(&world(), &o);
    assert!(messages(&f).iter().any(|m| {
        m.ends_with("expected a conntrack table for client.default, got none in the outcome")
    }));
}

#[test]
fn counters_compare_packets() {
    let mut o = passing();
    o.end
        .netns
        .get_mut("client.default")
        .unwrap()
        .counters
        .values_mut()
        .for_each(|c| c.packets = 5);
    assert_eq!(
        messages(&check_outcome(&world(), &o)),
        [
            "fixture.yaml:30:14: expect.counters.client[\"nat/ISTIO_OUTPUT/6\"]: expected 4 packets, got 5 packets"
        ]
    );
    o.end.netns.get_mut("client.default").unwrap().counters.clear();
    let f = check_outcome(&world(), &o);
    assert!(f[0].actual.starts_with("no counter for nat/ISTIO_OUTPUT/6"), "{}", f[0].actual);
}

#[test]
fn skipped_steps_never_pass() {
    let mut o = passing();
    o.checks.clear();
    o.skipped.push(Skipped { step: 2, reason: "cannot snapshot".into() });
    assert_eq!(
        messages(&check_outcome(&world(), &o)),
        [
            "fixture.yaml:17:5: steps[2]: expected a snapshot at this check, got none (skipped: cannot snapshot)"
        ]
    );
    let mut o = passing();
    o.connections.retain(|c| c.id != "more");
    o.skipped.push(Skipped { step: 1, reason: "no parallel sockets".into() });
    assert_eq!(
        messages(&check_outcome(&world(), &o)),
        [
            "fixture.yaml:16:5: steps[1]: expected 3 connection(s), got the step was skipped: no parallel sockets"
        ]
    );
}

fn pattern(text: &str) -> CtPattern {
    CtPattern {
        at: At::default(),
        proto: Proto::Tcp,
        orig: text.parse().unwrap(),
        reply: None,
        state: None,
        mark: None,
        zone: None,
    }
}

#[test]
fn matching_is_maximal_whatever_the_order() {
    // The first pattern matches both entries, the second only the first entry: a greedy match
    // taking entry 0 for pattern 0 would leave pattern 1 unmatched.
    let patterns = [pattern("10.0.1.2:* -> 10.0.2.2:*"), pattern("10.0.1.2:* -> 10.0.2.2:8080")];
    let entries = [
        ct(
            "10.0.1.2:1000 -> 10.0.2.2:8080",
            "10.0.2.2:8080 -> 10.0.1.2:1000",
            TcpState::Established,
        ),
        ct(
            "10.0.1.2:1001 -> 10.0.2.2:9090",
            "10.0.2.2:9090 -> 10.0.1.2:1001",
            TcpState::Established,
        ),
    ];
    let m = match_conntrack(&patterns, &entries);
    assert!(m.missing.is_empty() && m.unexpected.is_empty(), "{m:?}");
    let reversed: Vec<_> = entries.iter().rev().cloned().collect();
    let m = match_conntrack(&patterns, &reversed);
    assert!(m.missing.is_empty() && m.unexpected.is_empty(), "{m:?}");
    // Two identical patterns need two entries.
    let twice = [pattern("10.0.1.2:* -> 10.0.2.2:8080"), pattern("10.0.1.2:* -> 10.0.2.2:8080")];
    let m = match_conntrack(&twice, &entries);
    assert_eq!((m.missing.len(), m.unexpected.len()), (1, 1));
    // `[]` expects an empty table.
    let m = match_conntrack(&[], &entries);
    assert_eq!(m.unexpected.len(), 2);
}

#[test]
fn patterns_compare_only_what_they_state() {
    let e = ConntrackEntry {
        mark: 0x111,
        zone: 1,
        ..ct("10.0.1.2:5 -> 10.0.1.3:8080", "10.0.1.3:8080 -> 10.0.1.2:5", TcpState::TimeWait)
    };
    let mut p = pattern("10.0.1.2:* -> 10.0.1.3:8080");
    assert!(pattern_matches(&p, &e));
    p.mark = Some(0x111);
    p.zone = Some(1);
    p.state = Some(TcpState::TimeWait);
    p.reply = Some("10.0.1.3:8080 -> 10.0.1.2:*".parse().unwrap());
    assert!(pattern_matches(&p, &e));
    p.mark = Some(0);
    assert!(!pattern_matches(&p, &e));
    p.mark = None;
    p.proto = Proto::Udp;
    assert!(!pattern_matches(&p, &e));
    p.proto = Proto::Tcp;
    p.reply = Some("127.0.0.1:15001 -> 10.0.1.2:*".parse().unwrap());
    assert!(!pattern_matches(&p, &e));
}

/// A connect step without an expect block still declares its connections: an outcome with
/// none of them (a step a backend dropped) never passes.
#[test]
fn a_step_without_expectations_still_needs_its_connections() {
    let text = "description: d\ncluster:\n  nodes: [node-a]\n  pods:\n    - {name: client, node: node-a}\n    - {name: server, node: node-a, serve: [{port: 8080, app: echo}]}\nsteps:\n  - connect: {id: c, from: client, to: server:8080, count: 2}\n";
    let world = load_str("bare.yaml", text).into_result().unwrap_or_else(|e| panic!("{e:?}"));
    let mut out = passing();
    out.connections.clear();
    out.checks.clear();
    let m = messages(&check_outcome(&world, &out));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("2 connection(s) with id \"c\"") && m[0].contains("0 in the outcome"),
        "{m:?}"
    );
    out.connections = vec![conn("c", false), conn("c", false)];
    assert_eq!(messages(&check_outcome(&world, &out)), Vec::<String>::new());
}
