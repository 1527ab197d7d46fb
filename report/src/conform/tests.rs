use super::expected::{ExpectedDifferences, Verdict};
use super::*;
use ambient_scenarios::load::load_str;
use ambient_scenarios::outcome::{ConnOutcome, ConntrackEntry, Counter, Outcome, Proto, TcpState};
use ambient_scenarios::world::World;

const WORLD: &str = r#"scenario: same-node-hbone
description: two captured pods on one node
cluster:
  nodes: [node-a]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}
    - {name: server, node: node-a, ambient: true, serve: [{port: 8080, app: echo}]}
steps:
  - connect: {id: call, from: client, to: server:8080}
  - connect: {id: again, from: client, to: server:8080}
"#;

fn world() -> World {
    load_str("t.yaml", WORLD).into_result().unwrap()
}

fn entry(orig: &str, reply: &str, state: TcpState, mark: u32) -> ConntrackEntry {
    ConntrackEntry {
        proto: Proto::Tcp,
        orig: orig.parse().unwrap(),
        reply: reply.parse().unwrap(),
        state: Some(state),
        mark,
        zone: 0,
    }
}

/// An Outcome as a backend with ephemeral ports starting at `port` would report it.
pub(crate) fn outcome(port: u16) -> Outcome {
    let conn = |id: &str| ambient_scenarios::outcome::Connection {
        id: id.into(),
        from: "client.default".into(),
        to: "server.default:8080".into(),
        outcome: ConnOutcome::Ok,
        error: None,
        path: Some(ambient_scenarios::outcome::PathKind::Hbone),
        sent: 1024,
        received: 1024,
        intact: true,
        server_peer: Some("10.0.1.2".parse().unwrap()),
        server_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
        tunnel: Some("node-a->node-a".parse().unwrap()),
        reused: id != "call",
        proxy_events: Vec::new(),
    };
    let p = |k: u16| port + k;
    let mut conntrack = vec![
        entry(
            &format!("10.0.1.2:{} -> 10.0.1.3:8080", p(0)),
            &format!("127.0.0.1:15001 -> 10.0.1.2:{}", p(0)),
            TcpState::TimeWait,
            0x111,
        ),
        entry(
            &format!("10.0.1.2:{} -> 10.0.1.3:15008", p(1)),
            &format!("10.0.1.3:15008 -> 10.0.1.2:{}", p(1)),
            TcpState::Established,
            0,
        ),
        entry(
            &format!("10.0.1.2:{} -> 10.0.1.3:8080", p(2)),
            &format!("127.0.0.1:15001 -> 10.0.1.2:{}", p(2)),
            TcpState::TimeWait,
            0x111,
        ),
    ];
    conntrack.sort();
    let mut client = ambient_scenarios::outcome::NetnsState { conntrack, ..Default::default() };
    client
        .counters
        .insert("nat/ISTIO_OUTPUT/6".parse().unwrap(), Counter { packets: 2, bytes: 120 });
    client.counters.insert("raw/OUTPUT/1".parse().unwrap(), Counter { packets: 40, bytes: 9000 });
    let mut end = ambient_scenarios::outcome::State::default();
    end.tunnels.insert("node-a->node-a".parse().unwrap(), 1);
    end.netns.insert("client.default".into(), client);
    Outcome {
        scenario: "same-node-hbone".into(),
        seed: 0,
        connections: vec![conn("call"), conn("again")],
        resolutions: Vec::new(),
        checks: Vec::new(),
        end,
        skipped: Vec::new(),
    }
}

fn fields(d: &[Difference]) -> Vec<&str> {
    d.iter().map(|d| d.field.as_str()).collect()
}

#[test]
fn outcomes_that_differ_only_in_ephemeral_ports_and_table_order_are_equal() {
    let w = world();
    // The simulator counts up from 32768; the kernel picks at random (and so sorts differently).
    let sim = outcome(32768);
    let mut kernel = outcome(50000);
    kernel.end.netns.get_mut("client.default").unwrap().conntrack.reverse();
    assert_eq!(compare(&w, &sim, &kernel), Vec::new());
}

#[test]
fn each_differing_field_is_named_by_its_path_with_both_values() {
    let w = world();
    let sim = outcome(32768);
    let mut kernel = outcome(40000);
    kernel.connections[1].outcome = ConnOutcome::Reset;
    kernel.connections[1].server_peer = None;
    let ns = kernel.end.netns.get_mut("client.default").unwrap();
    ns.counters.get_mut(&"raw/OUTPUT/1".parse().unwrap()).unwrap().packets = 38;
    ns.counters.get_mut(&"nat/ISTIO_OUTPUT/6".parse().unwrap()).unwrap().packets = 3;
    kernel.end.tunnels.insert("node-a->node-a".parse().unwrap(), 2);
    let d = compare(&w, &sim, &kernel);
    assert_eq!(
        fields(&d),
        [
            "connections[1].outcome",
            "connections[1].server_peer",
            r#"end.tunnels["node-a->node-a"]"#,
            r#"end.netns["client.default"].counters["raw/OUTPUT/1"].packets"#,
            r#"end.netns["client.default"].counters["nat/ISTIO_OUTPUT/6"].packets"#,
        ]
    );
    assert_eq!((d[0].sim.as_str(), d[0].netns.as_str()), (r#""ok""#, r#""reset""#));
    assert_eq!((d[1].sim.as_str(), d[1].netns.as_str()), (r#""10.0.1.2""#, "null"));
    assert_eq!(d[0].kind, FieldKind::Connection);
    // Counters in table order (raw before nat); raw counts every packet, nat first packets only.
    assert_eq!(d[3].kind, FieldKind::EveryPacketCounter);
    assert_eq!((d[3].sim.as_str(), d[3].netns.as_str()), ("40", "38"));
    assert_eq!(d[4].kind, FieldKind::FirstPacketCounter);
}

#[test]
fn conntrack_tables_compare_as_multisets_and_pair_entries_by_original_tuple() {
    let w = world();
    let sim = outcome(32768);
    // One of the two redirected entries is CLOSE on the kernel: one state difference, named by
    // the entry's normalised original tuple.
    let mut kernel = outcome(41000);
    let ns = kernel.end.netns.get_mut("client.default").unwrap();
    ns.conntrack[2].state = Some(TcpState::Close);
    let d = compare(&w, &sim, &kernel);
    assert_eq!(
        fields(&d),
        [r#"end.netns["client.default"].conntrack["tcp 10.0.1.2:$a -> 10.0.1.3:8080"].state"#]
    );
    assert_eq!((d[0].sim.as_str(), d[0].netns.as_str()), (r#""TIME_WAIT""#, r#""CLOSE""#));
    assert_eq!(d[0].kind, FieldKind::Conntrack);
    // An entry only one side has: reported with `absent` on the other side.
    let mut short = outcome(41000);
    short.end.netns.get_mut("client.default").unwrap().conntrack.remove(0);
    let d = compare(&w, &sim, &short);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].netns, "absent");
    assert!(d[0].sim.contains("TIME_WAIT") && d[0].sim.contains("mark 0x111"), "{}", d[0].sim);
}

#[test]
fn a_missing_connection_a_missing_namespace_and_skipped_steps_are_differences() {
    let w = world();
    let sim = outcome(32768);
    let mut kernel = outcome(32768);
    kernel.connections.pop();
    kernel.end.netns.clear();
    kernel.skipped.push(ambient_scenarios::outcome::Skipped { step: 0, reason: "no netem".into() });
    let d = compare(&w, &sim, &kernel);
    assert_eq!(
        fields(&d),
        ["connections.length", r#"end.netns["client.default"]"#, "skipped.length"]
    );
    assert_eq!((d[1].sim.as_str(), d[1].netns.as_str()), ("present", "absent"));
}

const FILE: &str = r#"
- id: every-packet
  reason: segments depend on the TCP stack
  scenarios: "*"
  field: '*.netns[*].counters[*]'
  when: [every-packet-counter]
- id: nat-anyway
  reason: a too-broad entry that would cover a nat counter
  scenarios: [same-node-*]
  field: 'end.netns[*].counters["nat/*"]'
- id: stale
  reason: matches nothing
  scenarios: [gone]
  field: 'connections[*].sent'
"#;

#[test]
fn differences_are_judged_by_entry_and_nat_counters_of_lifecycle_scenarios_stay_exact() {
    let w = world();
    let expected = ExpectedDifferences::load("x.yaml", FILE).unwrap();
    let sim = outcome(32768);
    let mut kernel = outcome(40000);
    let ns = kernel.end.netns.get_mut("client.default").unwrap();
    ns.counters.get_mut(&"raw/OUTPUT/1".parse().unwrap()).unwrap().bytes = 9100;
    ns.counters.get_mut(&"nat/ISTIO_OUTPUT/6".parse().unwrap()).unwrap().packets = 3;
    let d = compare(&w, &sim, &kernel);
    let verdicts: Vec<Verdict> =
        d.iter().map(|x| expected.judge(&w.id, x, &sim, &kernel)).collect();
    // nat: an entry matches, but same-node-hbone is a lifecycle scenario: exact regardless.
    assert_eq!(verdicts, [Verdict::Expected(0), Verdict::ExactOnly]);
    // In another scenario the same entry would cover it.
    assert_eq!(expected.judge("other", &d[1], &sim, &kernel), Verdict::Unlisted);
    assert_eq!(expected.judge("same-node-x", &d[1], &sim, &kernel), Verdict::Expected(1));
    let ids = ["same-node-hbone"].into_iter().collect();
    assert_eq!(expected.out_of_scope(&ids), ["stale"]);
}

#[test]
fn a_report_counts_conforming_scenarios_and_entry_usage() {
    use crate::{ScenarioResult, Status};
    let w = world();
    let expected = ExpectedDifferences::load("x.yaml", FILE).unwrap();
    let sim = outcome(32768);
    let mut kernel = outcome(40000);
    let ns = kernel.end.netns.get_mut("client.default").unwrap();
    ns.counters.get_mut(&"raw/OUTPUT/1".parse().unwrap()).unwrap().packets = 41;
    let judged: Vec<Judged> = compare(&w, &sim, &kernel)
        .into_iter()
        .map(|d| Judged { verdict: expected.judge(&w.id, &d, &sim, &kernel), difference: d })
        .collect();
    let ran = |o: &Outcome| ScenarioResult {
        id: w.id.clone(),
        file: w.file.clone(),
        status: Status::Ran {
            world: Box::new(w.clone()),
            run: Box::new(ambient_scenarios::backend::Run {
                outcome: o.clone(),
                artifacts: Vec::new(),
            }),
            failures: Vec::new(),
            problems: Vec::new(),
        },
        wall: std::time::Duration::from_millis(5),
    };
    let r = ScenarioConformance {
        id: w.id.clone(),
        file: w.file.clone(),
        tags: Vec::new(),
        sim: ran(&sim),
        netns: ran(&kernel),
        comparison: Comparison::Compared(judged),
    };
    assert!(r.agrees() && r.conforms());
    let report = ConformReport {
        selection: "all".into(),
        environment: vec![("kernel".into(), "6.1.0".into()), ("commit".into(), "abc".into())],
        expected,
        results: vec![r],
    };
    assert_eq!(report.exit_code(), 0);
    let usage = report.entry_usage();
    assert_eq!(usage[0].get("same-node-hbone"), Some(&1));
    assert!(usage[1].is_empty() && usage[2].is_empty());
    let md = render::markdown(&report);
    assert!(md.contains("| `same-node-hbone` | pass | pass | yes |"), "{md}");
    assert!(md.contains("Matched in 1 scenario: `same-node-hbone`."), "{md}");
    assert!(md.contains("\nEnvironment: kernel `6.1.0` · commit `abc`.\n"), "{md}");
    assert!(md.contains("Matched nothing in this run"), "{md}");
    assert!(!md.contains("5ms") && !md.contains("0.0"), "no wall time in the report: {md}");
    let xml = render::junit(&report).unwrap();
    for case in ["same-node-hbone [sim]", "same-node-hbone [netns]", "same-node-hbone [agree]"] {
        assert!(xml.contains(case), "{xml}");
    }
    // One unlisted difference: the scenario does not conform, and the matrix names it.
    let mut bad = report.clone();
    if let Comparison::Compared(d) = &mut bad.results[0].comparison {
        d[0].verdict = Verdict::Unlisted;
    }
    assert_eq!(bad.exit_code(), 1);
    let md = render::markdown(&bad);
    assert!(md.contains(r#"| `same-node-hbone` | pass | pass | NO | `end.netns["client.default"].counters["raw/OUTPUT/1"].packets` | 40 | 41 |"#), "{md}");
    // The kernel side could not run it: an infrastructure error, exit 3 over the 1 above.
    let mut infra = bad.clone();
    infra.results.push(ScenarioConformance {
        netns: ScenarioResult {
            status: Status::BackendFailed {
                world: Box::new(w.clone()),
                error: ambient_scenarios::BackendError::new("cannot create network namespace"),
            },
            ..infra.results[0].netns.clone()
        },
        comparison: Comparison::NotCompared("netns: backend error".into()),
        ..infra.results[0].clone()
    });
    assert_eq!(infra.exit_code(), 3);
}

#[test]
fn dns_lookups_are_compared_field_by_field() {
    use ambient_scenarios::outcome::{
        DnsTransport, ProxyEvent, Resolution, ResolveOutcome, ResolvePath,
    };
    let w = world();
    let lookup = Resolution {
        id: "r".into(),
        from: "client.default".into(),
        name: "example.com".into(),
        over: DnsTransport::Udp,
        outcome: ResolveOutcome::Answer,
        error: None,
        answers: vec!["203.0.113.10".parse().unwrap()],
        path: Some(ResolvePath::Forwarded),
        proxy_events: vec![ProxyEvent {
            proxy: "node-a".into(),
            kind: ambient_scenarios::outcome::EventKind::Dns,
            detail: "forwarded example.com A to 203.0.113.53:53: NOERROR 203.0.113.10".into(),
        }],
    };
    let mut sim = outcome(32768);
    sim.resolutions = vec![lookup.clone(), lookup.clone()];
    let mut kernel = outcome(32768);
    kernel.resolutions = vec![lookup.clone(), lookup];
    assert_eq!(compare(&w, &sim, &kernel), Vec::new());
    kernel.resolutions[1].outcome = ResolveOutcome::Refused;
    kernel.resolutions[1].answers.clear();
    kernel.resolutions[1].path = None;
    kernel.resolutions[1].proxy_events.clear();
    let d = compare(&w, &sim, &kernel);
    assert_eq!(
        fields(&d),
        [
            "resolutions[1].outcome",
            "resolutions[1].answers",
            "resolutions[1].path",
            "resolutions[1].proxy_events.length",
        ]
    );
    assert_eq!((d[0].sim.as_str(), d[0].netns.as_str()), (r#""answer""#, r#""refused""#));
    assert!(d.iter().all(|x| x.kind == FieldKind::Lookup));
    kernel.resolutions.pop();
    assert_eq!(fields(&compare(&w, &sim, &kernel)), ["resolutions.length"]);
}
