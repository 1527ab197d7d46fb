//! A proptest comparing the RBAC evaluator (compiled policies) with a deliberately simple
//! reference implementation that reads the Istio objects directly, over random policies and
//! connections drawn from a small alphabet so that matches are frequent.

mod policy_support;

use std::net::IpAddr;

use ambient_proxy::istio::PolicyObject;
use ambient_proxy::mesh::Workload;
use ambient_proxy::policy::{ConnectionAttrs, PolicySet, VerdictReason, evaluate};
use policy_support::*;
use proptest::prelude::*;
use serde_json::{Value, json};

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
