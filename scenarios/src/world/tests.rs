use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_proxy::istio::{Action as PolicyAction, PolicyObject};

use super::*;
use crate::expect::ConnField;
use crate::load::load_str;
use crate::outcome::{ConnOutcome, PathKind};

const EXAMPLE: &str = include_str!("../../tests/data/format-example.yaml");

fn load(text: &str) -> World {
    load_str("t.yaml", text).into_result().unwrap_or_else(|e| {
        panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })
}

fn errors(text: &str) -> Vec<String> {
    load_str("t.yaml", text).errors().map(ToString::to_string).collect()
}

#[test]
fn the_format_documents_example_loads_with_its_defaults() {
    let w = load(EXAMPLE);
    assert_eq!(w.id, "cross-node-hbone");
    assert_eq!(w.seed, 7);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.tags.iter().collect::<Vec<_>>(), ["cross-node", "hbone", "pooling"]);
    assert!(w.description.starts_with("A captured client on node-a"));
    assert_eq!(w.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node-a", "node-b"]);
    assert_eq!(w.nodes[1].pod_subnet, Ipv4Addr::new(10, 0, 2, 0));

    let client = &w.pods[&ObjectKey::new("client", "default")];
    assert_eq!(client.ip, Ipv4Addr::new(10, 0, 1, 5));
    assert_eq!(client.identity, "spiffe://cluster.local/ns/default/sa/sleep");
    assert_eq!(client.node, "node-a");
    let capture = client.capture.as_ref().unwrap();
    assert_eq!(capture.rules, crate::rules::InpodRules::default().restore_text());
    assert_eq!(capture.routing, crate::rules::PolicyRouting::default());

    let server = &w.pods[&ObjectKey::new("server", "default")];
    assert_eq!(server.ip, Ipv4Addr::new(10, 0, 2, 2), "first pod on node-b");
    assert_eq!(server.serve.get(&8080), Some(&App::Echo));

    let echo = &w.services[&ObjectKey::new("echo", "default")];
    assert_eq!(echo.endpoints, std::slice::from_ref(&server.key));
    assert_eq!(echo.port(80), Some(ServicePort { port: 80, target_port: 8080 }));
    assert_eq!(w.external["web"].ip, Ipv4Addr::new(203, 0, 113, 10));

    assert_eq!(w.policies.len(), 1);
    let PolicyObject::AuthorizationPolicy(ap) = &w.policies[0].object else { panic!() };
    assert_eq!(ap.spec.action, Some(PolicyAction::Allow));
    assert_eq!(w.policies[0].key, ObjectKey::new("allow-sleep", "default"));

    let (step, c) = w.connects().next().unwrap();
    assert_eq!(step.index, 0);
    assert_eq!(c.id, "first");
    assert_eq!(c.from.label(), "client.default");
    assert_eq!(c.from.ip, client.ip);
    assert_eq!(c.to.addr, SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80));
    assert_eq!(c.to.label, "echo.default:80");
    assert_eq!(c.send, 1024);
    assert_eq!(c.repeat, Repeat::Sequential(1));
    assert_eq!(
        (c.hold, c.deadline, c.background),
        (Duration::ZERO, Duration::from_secs(10), false)
    );
    let fields: Vec<&ConnField> =
        c.expect.as_ref().unwrap().fields.iter().map(|f| &f.value).collect();
    assert_eq!(
        fields,
        [&ConnField::Outcome(ConnOutcome::Ok), &ConnField::Path(Some(PathKind::Hbone))]
    );

    assert!(
        matches!(&w.steps[1].action, Action::Fault(Fault::Partition(l)) if l.a == "node-a" && l.b == "node-b")
    );
    assert_eq!(w.steps[2].action, Action::Wait(Duration::from_secs(30)));
    let Action::Check(check) = &w.steps[3].action else { panic!() };
    assert_eq!(check.expect.tunnels.len(), 1);
    assert!(check.settles.is_empty());

    assert_eq!(w.expect.connections["first"].fields.len(), 4);
    assert_eq!(w.expect.conntrack["client.default"].value.len(), 1);
    assert_eq!(w.expect.counters["client.default"].len(), 1);
    assert!(w.warnings.is_empty());
}

#[test]
fn loading_is_deterministic() {
    assert_eq!(load(EXAMPLE), load(EXAMPLE));
}

#[test]
fn default_addresses_count_pods_per_node_in_file_order() {
    let w = load(
        "description: d\ncluster:\n  nodes: [a, b]\n  pods:\n    - {name: p1, node: a}\n    - {name: q1, node: b}\n    - {name: p2, node: a, ip: 10.0.1.9}\n    - {name: p3, node: a}\nsteps:\n  - fault: {add-pod: {name: p4, node: a}}\n  - fault: {delete-pod: p1}\n  - fault: {add-pod: {name: p5, node: a, ip: 10.0.1.2}}\n",
    );
    let ip = |n: &str| w.pods[&ObjectKey::new(n, "default")].ip.to_string();
    assert_eq!(
        [ip("p1"), ip("q1"), ip("p2"), ip("p3")],
        ["10.0.1.2", "10.0.2.2", "10.0.1.9", "10.0.1.4"]
    );
    let Action::Fault(Fault::AddPod { pod, .. }) = &w.steps[0].action else { panic!() };
    assert_eq!(pod.ip, Ipv4Addr::new(10, 0, 1, 5), "add-pod continues the node's count");
    let Action::Fault(Fault::AddPod { pod, .. }) = &w.steps[2].action else { panic!() };
    assert_eq!(pod.ip, Ipv4Addr::new(10, 0, 1, 2), "a deleted pod's address may be reused");
    assert!(
        !w.pods.contains_key(&ObjectKey::new("p4", "default")),
        "World::pods holds the initial pods"
    );
}

#[test]
fn pods_joining_and_leaving_services_are_named_by_the_faults() {
    let w = load(
        "description: d\ncluster:\n  nodes: [a]\n  pods:\n    - {name: s1, node: a, labels: {app: echo}}\n    - {name: other, node: a, namespace: ns2, labels: {app: echo}}\n  services:\n    - {name: echo, vip: 10.96.0.1, selector: {app: echo}, ports: [{port: 80}]}\nsteps:\n  - fault: {delete-pod: s1}\n  - fault: {add-pod: {name: s2, node: a, labels: {app: echo, v: '2'}}}\n  - connect: {id: c, from: s2, to: echo:80}\n",
    );
    let echo = ObjectKey::new("echo", "default");
    assert_eq!(
        w.services[&echo].endpoints,
        [ObjectKey::new("s1", "default")],
        "other namespace not selected"
    );
    assert_eq!(w.services[&echo].port(80).unwrap().target_port, 80, "targetPort defaults to port");
    assert!(
        matches!(&w.steps[0].action, Action::Fault(Fault::DeletePod { leaves, .. }) if leaves == std::slice::from_ref(&echo))
    );
    assert!(
        matches!(&w.steps[1].action, Action::Fault(Fault::AddPod { joins, .. }) if joins == std::slice::from_ref(&echo))
    );
    let Action::Connect(c) = &w.steps[2].action else { panic!() };
    assert_eq!(c.from.label(), "s2.default");
}

#[test]
fn other_defaults_and_forms() {
    let w = load(
        "description: d\ncluster:\n  trustDomain: example.org\n  nodes: [a, b]\n  pods:\n    - {name: c, node: a, namespace: apps}\n  external: [{name: web, ip: 192.0.2.1, serve: [{port: 443, app: sink}]}]\nsteps:\n  - connect: {id: x, from: c.apps, to: web:443, send: 64KiB, parallel: 5, hold: 1m30s, background: true, deadline: 250ms}\n  - connect: {id: y, from: web, to: '10.0.1.2:8080', count: 2, send: 0}\n  - fault: heal\n  - fault: {latency: {between: [a, b], add: 50ms}}\n  - fault: {loss: {between: [b, a], rate: 0.1}}\n  - fault: {crash: proxy@b}\n  - fault: {start: proxy@b}\n  - fault: {restart: proxy@a}\n  - fault: {flush-conntrack: web}\n  - check: {connections: {x: {outcome: reset}}}\n",
    );
    let c = &w.pods[&ObjectKey::new("c", "apps")];
    assert_eq!((c.service_account.as_str(), c.is_captured()), ("default", false));
    assert_eq!(c.identity, "spiffe://example.org/ns/apps/sa/default");
    let Action::Connect(x) = &w.steps[0].action else { panic!() };
    assert_eq!(
        (x.send, x.repeat, x.hold, x.deadline),
        (65536, Repeat::Parallel(5), Duration::from_secs(90), Duration::from_millis(250))
    );
    assert_eq!((x.to.label.as_str(), x.to.dest.clone()), ("web:443", Dest::External("web".into())));
    let Action::Connect(y) = &w.steps[1].action else { panic!() };
    assert_eq!(
        (y.from.label(), y.to.label.as_str(), y.to.dest.clone()),
        ("web".to_string(), "10.0.1.2:8080", Dest::Address)
    );
    assert_eq!((y.send, y.repeat), (0, Repeat::Sequential(2)));
    assert_eq!(w.steps[2].action, Action::Fault(Fault::Heal(None)));
    assert!(
        matches!(&w.steps[4].action, Action::Fault(Fault::Loss { link, rate }) if link.a == "b" && *rate == 0.1)
    );
    assert_eq!(w.steps[5].action, Action::Fault(Fault::CrashProxy("b".into())));
    let Action::Check(check) = &w.steps[9].action else { panic!() };
    assert_eq!(check.settles, ["x"]);
    assert_eq!(w.app_at(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 443)), Some(App::Sink));
}

#[test]
fn policies_apply_replace_and_remove() {
    let w = load(
        "description: d\ncluster: {nodes: [a]}\npolicies:\n  - apiVersion: security.istio.io/v1\n    kind: AuthorizationPolicy\n    metadata: {name: p}\n    spec: {action: DENY}\nsteps:\n  - fault:\n      apply:\n        apiVersion: security.istio.io/v1beta1\n        kind: AuthorizationPolicy\n        metadata: {name: p, namespace: default, uid: abc, resourceVersion: '3'}\n        spec: {rules: [{to: [{operation: {ports: ['80']}}]}]}\n        status: {conditions: []}\n  - fault: {remove: p}\n  - fault:\n      apply: {apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: p, namespace: istio-system}, spec: {mtls: {mode: STRICT}}}\n",
    );
    let Action::Fault(Fault::Apply(p)) = &w.steps[0].action else { panic!() };
    assert_eq!(p.key, ObjectKey::new("p", "default"));
    assert_eq!(p.source.at.path.as_str(), "steps[0].fault.apply");
    let at = p.source.locate("spec.rules[0].to[0].operation.ports[0]");
    assert_eq!(at.path.as_str(), "steps[0].fault.apply.spec.rules[0].to[0].operation.ports[0]");
    assert_eq!(at.pos, crate::diag::Pos::new(14, 51));
    assert_eq!(w.steps[1].action, Action::Fault(Fault::Remove(ObjectKey::new("p", "default"))));
    assert!(
        matches!(&w.steps[2].action, Action::Fault(Fault::Apply(p)) if p.key.namespace == "istio-system")
    );
}

#[test]
fn l7_fields_and_spiffe_principals_are_warnings() {
    let loaded = load_str(
        "t.yaml",
        "description: d\ncluster: {nodes: [a]}\npolicies:\n  - apiVersion: security.istio.io/v1\n    kind: AuthorizationPolicy\n    metadata: {name: p}\n    spec:\n      action: DENY\n      rules: [{to: [{operation: {paths: [/admin]}}], from: [{source: {requestPrincipals: ['*']}}]}]\nsteps: [{wait: 1s}]\n",
    );
    let w = loaded.world.as_ref().expect("warnings do not fail");
    let msgs: Vec<String> = w.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        msgs,
        [
            "t.yaml:9:41: warning: policies[0].spec.rules[0].to[0].operation.paths: `paths` is an L7 attribute, which needs a waypoint; the proxy enforces this DENY rule on its L4 part only",
            "t.yaml:9:90: warning: policies[0].spec.rules[0].from[0].source.requestPrincipals: `requestPrincipals` is an L7 attribute, which needs a waypoint; the proxy enforces this DENY rule on its L4 part only",
        ]
    );
}

#[test]
fn errors_of_a_stage_are_all_reported_together() {
    let e = errors(
        "description: d\ncluster:\n  nodes: [a]\n  pods:\n    - {name: x, node: b}\n    - {name: y, node: c}\nsteps:\n  - connect: {id: q, from: z, to: 'w:1'}\n",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
}

#[test]
fn yaml_anchors_merge_keys_and_block_strings_work_in_scenarios() {
    let w = load(
        "description: |\n  Line one.\n  Line two.\ncluster:\n  nodes: [a, b]\n  pods:\n    - &captured {name: c1, node: a, ambient: true, serviceAccount: sleep}\n    - <<: *captured\n      name: c2\n      node: b\nsteps: [{wait: 1s}]\n",
    );
    assert_eq!(w.description, "Line one.\nLine two.");
    let c2 = &w.pods[&ObjectKey::new("c2", "default")];
    assert!(c2.is_captured());
    assert_eq!((c2.node.as_str(), c2.service_account.as_str()), ("b", "sleep"));
}
