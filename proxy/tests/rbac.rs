//! Authorization: a table with every rule of `ambient-facts.md`, and compile errors with key
//! paths (all at once). The proptest against a reference implementation is in `rbac_reference.rs`.

mod policy_support;

use ambient_proxy::istio::PolicyObject;
use ambient_proxy::policy::{ConnectionAttrs, PolicySet, VerdictReason, evaluate};
use policy_support::*;
use serde_json::json;

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
