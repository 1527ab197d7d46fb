//! Authorization: a table with every rule of `ambient-facts.md`, compile errors with key paths,
//! and a proptest comparing the evaluator with a deliberately simple reference implementation
//! that reads the Istio objects directly.

use std::net::IpAddr;

use ambient_proxy::identity::Identity;
use ambient_proxy::istio::PolicyObject;
use ambient_proxy::mesh::Workload;
use ambient_proxy::policy::{ConnectionAttrs, PolicySet, VerdictReason, evaluate};
use proptest::prelude::*;
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn obj(v: Value) -> PolicyObject {
    serde_json::from_value(v).unwrap()
}

fn ap(name: &str, ns: &str, spec: Value) -> PolicyObject {
    obj(json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn pa(name: &str, ns: &str, spec: Value) -> PolicyObject {
    obj(json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

fn server() -> Workload {
    Workload::new("server", "node-b", ip("10.0.2.5")).service_account("echo").label("app", "echo")
}

fn conn(id: Option<&str>, src: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_ip: ip(src),
        source_identity: id.map(|s| s.parse::<Identity>().unwrap()),
        destination_ip: ip("10.0.2.5"),
        destination_port: port,
    }
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const PROD: &str = "spiffe://cluster.local/ns/prod/sa/api";

type Case =
    (&'static str, Vec<PolicyObject>, ConnectionAttrs, bool, VerdictReason, Option<&'static str>);

fn sleep_8080() -> ConnectionAttrs {
    conn(Some(SLEEP), "10.0.1.5", 8080)
}

fn cases() -> Vec<Case> {
    use VerdictReason::*;
    let allow_sleep = || {
        ap(
            "allow-sleep",
            "default",
            json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]}),
        )
    };
    vec![
        ("no policy → allow", vec![], sleep_8080(), true, NoAllowPolicies, None),
        (
            "matching DENY → deny",
            vec![ap("deny-all", "default", json!({"action": "DENY", "rules": [{}]}))],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("deny-all.default"),
        ),
        (
            "DENY not matching, no ALLOW → allow",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}),
            )],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "matching ALLOW → allow",
            vec![allow_sleep()],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("allow-sleep.default"),
        ),
        (
            "ALLOW exists, none matches → deny",
            vec![allow_sleep()],
            conn(Some(PROD), "10.0.3.1", 8080),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "DENY beats ALLOW",
            vec![
                allow_sleep(),
                ap(
                    "deny-8080",
                    "default",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}),
                ),
            ],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("deny-8080.default"),
        ),
        (
            "allow-nothing (ALLOW without rules) denies all",
            vec![ap("allow-nothing", "default", json!({}))],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "DENY without rules matches nothing",
            vec![ap("d", "default", json!({"action": "DENY"}))],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "root namespace applies mesh-wide",
            vec![ap("deny", "istio-system", json!({"action": "DENY", "rules": [{}]}))],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("deny.istio-system"),
        ),
        (
            "another namespace's policy does not apply",
            vec![ap("deny", "prod", json!({"action": "DENY", "rules": [{}]}))],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "selector matching the labels applies",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "echo"}}, "rules": [{}]}),
            )],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("d.default"),
        ),
        (
            "selector not matching does not apply",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "other"}}, "rules": [{}]}),
            )],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "ALLOW for other workloads does not make this one deny",
            vec![ap("a", "default", json!({"selector": {"matchLabels": {"app": "other"}}}))],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "rules OR",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"to": [{"operation": {"ports": ["1"]}}]}, {"to": [{"operation": {"ports": ["8080"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "from AND to: from matches, to does not",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"namespaces": ["default"]}}], "to": [{"operation": {"ports": ["9090"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "from AND when: when fails",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"namespaces": ["default"]}}], "when": [{"key": "source.ip", "values": ["10.9.0.0/16"]}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "list entries OR",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"namespaces": ["prod"]}}, {"source": {"ipBlocks": ["10.0.1.0/24"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "fields within a source AND",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"namespaces": ["default"], "ipBlocks": ["10.9.0.0/16"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "principal prefix",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/*"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "principal suffix",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"principals": ["*/sa/sleep"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "principal presence",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "principal with spiffe:// never matches",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "notPrincipals excludes",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/default/sa/sleep"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "notNamespaces excludes",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"notNamespaces": ["default"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "notIpBlocks excludes",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"notIpBlocks": ["10.0.1.5"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "serviceAccounts match namespace/name",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"serviceAccounts": ["default/sleep"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "notPorts excludes",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"to": [{"operation": {"notPorts": ["8080"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "when source.namespace",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"when": [{"key": "source.namespace", "values": ["default"]}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "when source.principal notValues",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"when": [{"key": "source.principal", "notValues": ["cluster.local/ns/default/sa/sleep"]}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "when destination.ip",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"when": [{"key": "destination.ip", "values": ["10.0.2.0/24"]}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "when destination.port",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"when": [{"key": "destination.port", "values": ["9090"]}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "plaintext: principal presence never matches",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}),
            )],
            conn(None, "10.0.1.5", 8080),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "plaintext: namespace never matches",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}),
            )],
            conn(None, "10.0.1.5", 8080),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "plaintext: ipBlocks still match",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.1.0/24"]}}]}]}),
            )],
            conn(None, "10.0.1.5", 8080),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "plaintext: DENY on notPrincipals catches the unauthenticated",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"notPrincipals": ["cluster.local/ns/default/sa/sleep"]}}]}]}),
            )],
            conn(None, "10.0.1.5", 8080),
            false,
            DeniedByPolicy,
            Some("d.default"),
        ),
        (
            "ALLOW rule with L7 fields is dropped (fail closed)",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}]}]}),
            )],
            sleep_8080(),
            false,
            NoAllowMatched,
            None,
        ),
        (
            "ALLOW keeps its L4-only rules",
            vec![ap(
                "a",
                "default",
                json!({"rules": [{"to": [{"operation": {"paths": ["/x"]}}]}, {"to": [{"operation": {"ports": ["8080"]}}]}]}),
            )],
            sleep_8080(),
            true,
            AllowedByPolicy,
            Some("a.default"),
        ),
        (
            "DENY with L7 fields enforced on its L4 part",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}]}]}),
            )],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("d.default"),
        ),
        (
            "DENY with L7 when key enforced on its L4 part",
            vec![ap(
                "d",
                "default",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["default"]}}], "when": [{"key": "request.headers[x]", "values": ["y"]}]}]}),
            )],
            sleep_8080(),
            false,
            DeniedByPolicy,
            Some("d.default"),
        ),
        (
            "STRICT denies plaintext",
            vec![pa("strict", "istio-system", json!({"mtls": {"mode": "STRICT"}}))],
            conn(None, "10.0.1.5", 8080),
            false,
            MtlsRequired,
            Some("strict.istio-system"),
        ),
        (
            "STRICT allows mTLS",
            vec![pa("strict", "istio-system", json!({"mtls": {"mode": "STRICT"}}))],
            sleep_8080(),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "namespace PERMISSIVE overrides mesh STRICT",
            vec![
                pa("strict", "istio-system", json!({"mtls": {"mode": "STRICT"}})),
                pa("perm", "default", json!({"mtls": {"mode": "PERMISSIVE"}})),
            ],
            conn(None, "10.0.1.5", 8080),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "port-level PERMISSIVE overrides workload STRICT",
            vec![pa(
                "w",
                "default",
                json!({"selector": {"matchLabels": {"app": "echo"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}),
            )],
            conn(None, "10.0.1.5", 8080),
            true,
            NoAllowPolicies,
            None,
        ),
        (
            "workload STRICT on other ports",
            vec![pa(
                "w",
                "default",
                json!({"selector": {"matchLabels": {"app": "echo"}}, "mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}),
            )],
            conn(None, "10.0.1.5", 9090),
            false,
            MtlsRequired,
            Some("w.default"),
        ),
        (
            "UNSET inherits",
            vec![
                pa("strict", "istio-system", json!({"mtls": {"mode": "STRICT"}})),
                pa("unset", "default", json!({})),
            ],
            conn(None, "10.0.1.5", 8080),
            false,
            MtlsRequired,
            Some("strict.istio-system"),
        ),
    ]
}

#[test]
fn every_rule_of_the_facts() {
    let w = server();
    for (name, objects, c, allowed, reason, policy) in cases() {
        let set = PolicySet::compile(&objects).unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = evaluate(&set, &w, &c);
        assert_eq!((v.allowed, v.reason, v.policy.as_deref()), (allowed, reason, policy), "{name}");
    }
}

#[test]
fn compile_errors_name_their_key_paths_all_at_once() {
    let objects = vec![
        ap("ok", "default", json!({})),
        ap(
            "bad",
            "default",
            json!({"rules": [{
                "from": [{"source": {"ipBlocks": ["10.0.0.0/33", "nope"]}}, {"source": {}}],
                "to": [{"operation": {"ports": ["80", "0", "http"]}}],
                "when": [{"key": "source.ip"}, {"key": "nonsense", "values": ["x"]}]
            }]}),
        ),
        ap("audit", "default", json!({"action": "AUDIT"})),
        ap("waypoint", "default", json!({"targetRefs": [{"kind": "Gateway", "name": "w"}]})),
        obj(json!({"apiVersion": "security.istio.io/v2", "kind": "PeerAuthentication",
                   "metadata": {"name": "p"}, "spec": {"portLevelMtls": {"80": {"mode": "STRICT"}}}})),
        ap("ok", "default", json!({})),
    ];
    let errs = PolicySet::compile(&objects).unwrap_err().prefixed("policies");
    let got: Vec<String> = errs.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        got,
        [
            "policies[1].spec.rules[0].from[0].source.ipBlocks[0]",
            "policies[1].spec.rules[0].from[0].source.ipBlocks[1]",
            "policies[1].spec.rules[0].from[1].source",
            "policies[1].spec.rules[0].to[0].operation.ports[1]",
            "policies[1].spec.rules[0].to[0].operation.ports[2]",
            "policies[1].spec.rules[0].when[0]",
            "policies[1].spec.rules[0].when[1].key",
            "policies[2].spec.action",
            "policies[3].spec.targetRefs",
            "policies[4].apiVersion",
            "policies[4].spec.portLevelMtls",
            "policies[5].metadata.name",
        ]
    );
    let text = errs.to_string();
    assert!(text.contains("policies[1].spec.rules[0].to[0].operation.ports[2]: \"http\" is not a port (expected 1-65535)"), "{text}");
    assert!(text.contains("action AUDIT is not enforced"), "{text}");
}

// ---- the reference implementation: literal reading of the facts over the Istio objects ----

mod reference {
    use super::*;
    use ambient_proxy::istio::{self, Action, AuthorizationPolicy, MtlsMode};

    fn string_match(pattern: &str, v: &str) -> bool {
        if pattern == "*" {
            return !v.is_empty();
        }
        if let Some(p) = pattern.strip_suffix('*') {
            return v.len() >= p.len() && &v[..p.len()] == p;
        }
        if let Some(s) = pattern.strip_prefix('*') {
            return v.len() >= s.len() && &v[v.len() - s.len()..] == s;
        }
        pattern == v
    }

    fn in_cidr(block: &str, ip: IpAddr) -> bool {
        let (a, len) = block.split_once('/').unwrap_or((block, "32"));
        let (IpAddr::V4(a), IpAddr::V4(ip)) = (a.parse::<IpAddr>().unwrap(), ip) else {
            return false;
        };
        let len: u32 = len.parse().unwrap();
        let bits = |x: std::net::Ipv4Addr| format!("{:032b}", u32::from(x));
        bits(a)[..len as usize] == bits(ip)[..len as usize]
    }

    /// `Some(true)`: the field is set and matches; `Some(false)`: set, no match; `None`: unset.
    fn any_of(list: &[String], f: impl Fn(&str) -> bool) -> Option<bool> {
        if list.is_empty() { None } else { Some(list.iter().any(|x| f(x))) }
    }

    fn source(s: &istio::Source, c: &ConnectionAttrs, action: Action) -> bool {
        let l7 = !s.request_principals.is_empty()
            || !s.not_request_principals.is_empty()
            || !s.remote_ip_blocks.is_empty()
            || !s.not_remote_ip_blocks.is_empty();
        if l7 && action == Action::Allow {
            return false;
        }
        let principal = c.source_identity.as_ref().map(|i| i.principal());
        let ns = c.source_identity.as_ref().map(|i| i.namespace.clone());
        let sa =
            c.source_identity.as_ref().map(|i| format!("{}/{}", i.namespace, i.service_account));
        let p = |x: &str| principal.as_deref().is_some_and(|v| string_match(x, v));
        let n = |x: &str| ns.as_deref().is_some_and(|v| string_match(x, v));
        let s_ = |x: &str| sa.as_deref() == Some(x);
        let ipm = |x: &str| in_cidr(x, c.source_ip);
        let checks = [
            any_of(&s.principals, p),
            any_of(&s.not_principals, p).map(|b| !b),
            any_of(&s.namespaces, n),
            any_of(&s.not_namespaces, n).map(|b| !b),
            any_of(&s.service_accounts, s_),
            any_of(&s.not_service_accounts, s_).map(|b| !b),
            any_of(&s.ip_blocks, ipm),
            any_of(&s.not_ip_blocks, ipm).map(|b| !b),
        ];
        checks.iter().all(|c| c.unwrap_or(true))
    }

    fn operation(o: &istio::Operation, c: &ConnectionAttrs, action: Action) -> bool {
        let l7 = !o.hosts.is_empty()
            || !o.not_hosts.is_empty()
            || !o.methods.is_empty()
            || !o.not_methods.is_empty()
            || !o.paths.is_empty()
            || !o.not_paths.is_empty();
        if l7 && action == Action::Allow {
            return false;
        }
        let port = c.destination_port.to_string();
        any_of(&o.ports, |p| p == port).unwrap_or(true)
            && !any_of(&o.not_ports, |p| p == port).unwrap_or(false)
    }

    fn condition(k: &istio::Condition, c: &ConnectionAttrs, action: Action) -> bool {
        let id = c.source_identity.as_ref();
        let f: Box<dyn Fn(&str) -> bool> = match k.key.as_str() {
            "source.ip" => Box::new(|v| in_cidr(v, c.source_ip)),
            "destination.ip" => Box::new(|v| in_cidr(v, c.destination_ip)),
            "destination.port" => Box::new(|v| v == c.destination_port.to_string()),
            "source.namespace" => {
                Box::new(move |v| id.is_some_and(|i| string_match(v, &i.namespace)))
            }
            "source.principal" => {
                Box::new(move |v| id.is_some_and(|i| string_match(v, &i.principal())))
            }
            _ => return action == Action::Deny, // L7: ignored on DENY, fails an ALLOW
        };
        any_of(&k.values, &f).unwrap_or(true) && !any_of(&k.not_values, &f).unwrap_or(false)
    }

    fn rule(r: &istio::Rule, c: &ConnectionAttrs, action: Action) -> bool {
        // An ALLOW rule with an L7 field anywhere is dropped entirely.
        if action == Action::Allow {
            let clean =
                r.from.iter().all(|f| source(&f.source, c, action) || !has_l7_source(&f.source))
                    && r.to
                        .iter()
                        .all(|t| operation(&t.operation, c, action) || !has_l7_op(&t.operation))
                    && r.when.iter().all(|w| condition(w, c, action) || is_l4_key(&w.key));
            if !clean {
                return false;
            }
        }
        (r.from.is_empty() || r.from.iter().any(|f| source(&f.source, c, action)))
            && (r.to.is_empty() || r.to.iter().any(|t| operation(&t.operation, c, action)))
            && r.when.iter().all(|w| condition(w, c, action))
    }

    fn has_l7_source(s: &istio::Source) -> bool {
        !s.request_principals.is_empty() || !s.remote_ip_blocks.is_empty()
    }
    fn has_l7_op(o: &istio::Operation) -> bool {
        !o.methods.is_empty() || !o.paths.is_empty() || !o.hosts.is_empty()
    }
    fn is_l4_key(k: &str) -> bool {
        ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"]
            .contains(&k)
    }

    fn applies(p: &AuthorizationPolicy, w: &Workload) -> bool {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        (ns == "istio-system" || ns == w.namespace)
            && p.spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    }

    pub fn allowed(
        objects: &[PolicyObject],
        w: &Workload,
        c: &ConnectionAttrs,
    ) -> (bool, VerdictReason) {
        // Only namespace/mesh-wide STRICT/PERMISSIVE PeerAuthentications are generated.
        if c.source_identity.is_none() {
            let mode_in = |ns: &str| {
                objects.iter().find_map(|o| match o {
                    PolicyObject::PeerAuthentication(p)
                        if p.metadata.namespace.as_deref() == Some(ns) =>
                    {
                        p.spec.mtls.map(|m| m.mode).filter(|m| *m != MtlsMode::Unset)
                    }
                    _ => None,
                })
            };
            let mode = mode_in(&w.namespace).or_else(|| mode_in("istio-system"));
            if mode == Some(MtlsMode::Strict) {
                return (false, VerdictReason::MtlsRequired);
            }
        }
        let aps: Vec<&AuthorizationPolicy> = objects
            .iter()
            .filter_map(|o| match o {
                PolicyObject::AuthorizationPolicy(p) if applies(p, w) => Some(p),
                _ => None,
            })
            .collect();
        let action = |p: &AuthorizationPolicy| p.spec.action.unwrap_or(Action::Allow);
        for p in &aps {
            if action(p) == Action::Deny && p.spec.rules.iter().any(|r| rule(r, c, Action::Deny)) {
                return (false, VerdictReason::DeniedByPolicy);
            }
        }
        let allows: Vec<_> = aps.iter().filter(|p| action(p) == Action::Allow).collect();
        if allows.is_empty() {
            return (true, VerdictReason::NoAllowPolicies);
        }
        if allows.iter().any(|p| p.spec.rules.iter().any(|r| rule(r, c, Action::Allow))) {
            return (true, VerdictReason::AllowedByPolicy);
        }
        (false, VerdictReason::NoAllowMatched)
    }
}

// ---- generators over a small alphabet, so matches are frequent ----

fn pick<T: Clone + std::fmt::Debug + 'static>(xs: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(xs)
}

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/default/sa/sleep",
    "cluster.local/ns/prod/*",
    "*/sa/api",
    "*",
    "cluster.local/ns/default/sa/other",
];
const NAMESPACES: &[&str] = &["default", "prod", "pro*", "*"];
const BLOCKS: &[&str] = &["10.0.1.0/24", "10.0.1.5", "10.0.0.0/8", "192.168.0.0/16", "10.0.2.5/32"];
const PORTS: &[&str] = &["8080", "9090", "80"];
const SAS: &[&str] = &["default/sleep", "prod/api"];

fn small_list(xs: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(vec![]),
        2 => proptest::collection::vec(pick(xs).prop_map(str::to_string), 1..3),
    ]
}

fn source_value() -> impl Strategy<Value = Value> {
    (
        small_list(PRINCIPALS),
        small_list(PRINCIPALS),
        small_list(NAMESPACES),
        small_list(NAMESPACES),
        small_list(BLOCKS),
        small_list(BLOCKS),
        small_list(SAS),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(p, np, n, nn, b, nb, sa, l7)| {
            let mut s = serde_json::Map::new();
            let mut put = |k: &str, v: Vec<String>| {
                if !v.is_empty() {
                    s.insert(k.into(), json!(v));
                }
            };
            if sa.is_empty() {
                put("principals", p);
                put("namespaces", n);
            } else {
                put("serviceAccounts", sa);
            }
            put("notPrincipals", np);
            put("notNamespaces", nn);
            put("ipBlocks", b);
            put("notIpBlocks", nb);
            if l7 || s.is_empty() {
                s.insert("requestPrincipals".into(), json!(["*"]));
            }
            json!({"source": s})
        })
}

fn operation_value() -> impl Strategy<Value = Value> {
    (small_list(PORTS), small_list(PORTS), proptest::bool::weighted(0.1)).prop_map(|(p, np, l7)| {
        let mut o = serde_json::Map::new();
        if !p.is_empty() {
            o.insert("ports".into(), json!(p));
        }
        if !np.is_empty() {
            o.insert("notPorts".into(), json!(np));
        }
        if l7 || o.is_empty() {
            o.insert("methods".into(), json!(["GET"]));
        }
        json!({"operation": o})
    })
}

fn condition_value() -> impl Strategy<Value = Value> {
    let key_values = prop_oneof![
        Just(("source.ip", BLOCKS)),
        Just(("destination.ip", BLOCKS)),
        Just(("destination.port", PORTS)),
        Just(("source.namespace", NAMESPACES)),
        Just(("source.principal", PRINCIPALS)),
        Just(("request.headers[x-a]", PORTS)),
    ];
    (key_values, any::<bool>(), 0usize..3, 0usize..3).prop_map(|((k, vals), neg_only, a, b)| {
        let values: Vec<&str> = vals.iter().copied().take(a.max(1)).collect();
        let nots: Vec<&str> = vals.iter().copied().skip(1).take(b).collect();
        if neg_only {
            json!({"key": k, "notValues": values})
        } else if nots.is_empty() {
            json!({"key": k, "values": values})
        } else {
            json!({"key": k, "values": values, "notValues": nots})
        }
    })
}

fn rule_value() -> impl Strategy<Value = Value> {
    (
        proptest::collection::vec(source_value(), 0..3),
        proptest::collection::vec(operation_value(), 0..2),
        proptest::collection::vec(condition_value(), 0..2),
    )
        .prop_map(|(f, t, w)| json!({"from": f, "to": t, "when": w}))
}

fn policy_value() -> impl Strategy<Value = (Value, &'static str, Option<&'static str>)> {
    (
        pick(&["ALLOW", "DENY"]),
        pick(&["default", "istio-system", "prod"]),
        pick(&[None, Some("echo"), Some("other")]),
        proptest::collection::vec(rule_value(), 0..3),
    )
        .prop_map(|(action, ns, app, rules)| {
            let mut spec = json!({"action": action, "rules": rules});
            if let Some(app) = app {
                spec["selector"] = json!({"matchLabels": {"app": app}});
            }
            (spec, ns, app)
        })
}

fn objects() -> impl Strategy<Value = Vec<PolicyObject>> {
    (
        proptest::collection::vec(policy_value(), 0..4),
        pick(&[
            None,
            Some(("istio-system", "STRICT")),
            Some(("default", "STRICT")),
            Some(("default", "PERMISSIVE")),
        ]),
    )
        .prop_map(|(ps, peer)| {
            let mut out: Vec<PolicyObject> = ps
                .into_iter()
                .enumerate()
                .map(|(i, (spec, ns, _))| ap(&format!("p{i}"), ns, spec))
                .collect();
            if let Some((ns, mode)) = peer {
                out.push(pa("peer", ns, json!({"mtls": {"mode": mode}})));
            }
            out
        })
}

fn connection() -> impl Strategy<Value = ConnectionAttrs> {
    (
        pick(&[None, Some(SLEEP), Some(PROD), Some("spiffe://cluster.local/ns/default/sa/other")]),
        pick(&["10.0.1.5", "10.0.1.9", "192.168.3.4", "10.7.0.1"]),
        pick(&[8080u16, 9090, 80, 443]),
    )
        .prop_map(|(id, src, port)| conn(id, src, port))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_agrees_with_the_reference(objects in objects(), c in connection()) {
        let w = server();
        let set = PolicySet::compile(&objects).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let v = evaluate(&set, &w, &c);
        prop_assert_eq!((v.allowed, v.reason), reference::allowed(&objects, &w, &c));
    }
}
