//! The loopback network inside one namespace: a connection to `127.0.0.0/8` goes OUTPUT → lo →
//! PREROUTING → INPUT through the namespace's model like any other, reaches the socket that
//! owns it with the true addresses on both ends, and is refused by the kernel's reset when
//! nothing listens. The substrate's alias of the loopback network (`241.0.0.0/8`) never shows.

mod support;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::check_outcome;
use ambient_sim::SimRun;
use support::scenario;

const CLUSTER: &str = r#"
cluster:
  nodes: [node-a]
  pods:
    - {name: web, node: node-a, serviceAccount: web, ambient: true, serve: [{port: 8080, app: echo}]}
    - {name: plain, node: node-a, serve: [{port: 8080, app: echo}]}
  external:
    - {name: outside, ip: 203.0.113.10, serve: [{port: 443, app: echo}]}
"#;

fn run(name: &str, rest: &str) -> SimRun {
    let text = format!("description: {name}\n{CLUSTER}{rest}");
    let w = scenario(&format!("{name}.yaml"), &text);
    let opts = RunOptions { trace: true, pcap: true, ..RunOptions::default() };
    let r = ambient_sim::run(&w, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let failures = check_outcome(&w, &r.outcome);
    let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
    let trace = r.trace.as_deref().unwrap();
    assert!(failures.is_empty(), "{name}:\n{}\n{trace}", text.join("\n"));
    assert!(!trace.contains("241."), "{name}: the substrate's alias shows:\n{trace}");
    assert!(!trace.contains("substrate:"), "{name}: a segment was lost:\n{trace}");
    r
}

/// The trace lines of packets walked in `netns`.
fn walks<'a>(r: &'a SimRun, netns: &str) -> Vec<&'a str> {
    let prefix = format!("{netns} out ");
    r.trace
        .as_deref()
        .unwrap()
        .lines()
        .filter(|l| l.split_once(' ').unwrap().1.starts_with(&prefix))
        .collect()
}

#[test]
fn an_app_reaches_another_app_of_its_pod_on_loopback() {
    let r = run(
        "loopback-app-to-app",
        r#"
steps:
  - connect: {id: lo, from: web, to: "127.0.0.1:8080", send: 4KiB, expect: {outcome: ok, server_peer: 127.0.0.1, tunnel: null}}
expect:
  tunnels: {node-a->node-a: 0}
  conntrack:
    web: [{proto: tcp, orig: "127.0.0.1:* -> 127.0.0.1:8080", reply: "127.0.0.1:8080 -> 127.0.0.1:*", state: TIME_WAIT}]
  counters:
    web:
      "nat/OUTPUT/1": 1
      "nat/ISTIO_OUTPUT/5": 0
      "nat/ISTIO_OUTPUT/6": 0
      "nat/PREROUTING/1": 0
"#,
    );
    let o = &r.outcome;
    let c = &o.connections[0];
    assert_eq!((c.sent, c.received, c.intact), (4096, 4096, true), "{}", o.to_json());
    assert!(c.proxy_events.is_empty(), "no proxy takes part: {:?}", c.proxy_events);
    // Every segment, both ways, took the loopback path through the model.
    let lines = walks(&r, "web.default");
    assert!(lines.len() >= 8, "{lines:#?}");
    for l in &lines {
        assert!(l.contains("| OUTPUT POSTROUTING lo PREROUTING INPUT |"), "{l}");
        assert!(l.contains("tcp 127.0.0.1:"), "{l}");
    }
    // The app's own end is bound to 127.0.0.1, and the first packet is the one the nat table saw.
    assert!(lines[0].contains("> 127.0.0.1:8080 S "), "{}", lines[0]);
    assert!(lines[0].contains("nat/OUTPUT/1"), "{}", lines[0]);
    assert!(lines[1].contains("127.0.0.1:8080 > 127.0.0.1:") && lines[1].contains(" SA "));
    // Both the loopback walk and the walk through PREROUTING counted: raw sees each twice.
    let w = r.walks["web.default"];
    assert_eq!(w.looped, w.output, "{w:?}");
    assert_eq!(w.input, 0, "nothing crossed eth0: {w:?}");
}

#[test]
fn a_loopback_port_nothing_listens_on_is_refused_by_the_kernel() {
    let r = run(
        "loopback-refused",
        r#"
steps:
  - connect: {id: closed, from: web, to: "127.0.0.1:9090", expect: {outcome: refused, server_peer: null}}
  - connect: {id: closed-plain, from: plain, to: "127.0.0.2:9090", expect: {outcome: refused}}
expect:
  conntrack:
    web: []     # a reset as the only reply kills the entry at once (nf_conntrack_proto_tcp)
    plain: []
  counters:
    web: {"nat/OUTPUT/1": 1}
"#,
    );
    let lines = walks(&r, "web.default");
    assert_eq!(lines.len(), 2, "a SYN and the kernel's reset: {lines:#?}");
    assert!(lines[0].contains("127.0.0.1:9090 S "), "{}", lines[0]);
    assert!(lines[1].contains("tcp 127.0.0.1:9090 > 127.0.0.1:") && lines[1].contains(" RA "));
    // An address of 127/8 other than 127.0.0.1: the source is still 127.0.0.1 (lo's prefsrc).
    let lines = walks(&r, "plain.default");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("tcp 127.0.0.1:") && lines[0].contains("> 127.0.0.2:9090 S "));
}

#[test]
fn an_uncaptured_pod_talks_to_itself_on_loopback_untracked() {
    run(
        "loopback-uncaptured",
        r#"
steps:
  - connect: {id: lo, from: plain, to: "127.0.0.1:8080", count: 3, expect: {outcome: ok, server_peer: 127.0.0.1}}
  - connect: {id: other, from: plain, to: "127.1.2.3:8080", expect: {outcome: ok, server_peer: 127.0.0.1}}
expect:
  conntrack:
    plain: []
"#,
    );
}

#[test]
fn an_external_host_talks_to_itself_on_loopback() {
    let r = run(
        "loopback-external",
        r#"
steps:
  - connect: {id: lo, from: outside, to: "127.0.0.1:443", expect: {outcome: ok, server_peer: 127.0.0.1}}
  - connect: {id: closed, from: outside, to: "127.0.0.1:444", expect: {outcome: refused}}
"#,
    );
    let lines = walks(&r, "outside");
    assert!(lines.iter().all(|l| l.contains("| OUTPUT POSTROUTING lo PREROUTING INPUT |")));
    assert!(lines.iter().any(|l| l.contains("127.0.0.1:444 > 127.0.0.1:") && l.contains(" RA ")));
}

#[test]
fn loopback_runs_are_byte_identical() {
    let go = || {
        run(
            "loopback-determinism",
            r#"
steps:
  - connect: {id: lo, from: web, to: "127.0.0.1:8080", parallel: 5}
  - connect: {id: proxy, from: web, to: "127.0.0.1:15001"}
"#,
        )
    };
    let (a, b) = (go(), go());
    assert_eq!(a.outcome.to_json(), b.outcome.to_json());
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.artifacts, b.artifacts);
}
