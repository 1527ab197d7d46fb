use ambient_scenarios::ClusterState;

use super::*;

fn mesh(yaml: &str) -> MeshSpec {
    let world = ambient_scenarios::load_str("t.yaml", yaml).into_result().unwrap();
    ClusterState::initial(&world).mesh_spec()
}

const TWO_NODES: &str = r#"
description: d
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: sleep, node: node-a, serviceAccount: sleep, ambient: true, labels: {app: sleep}}
    - {name: server, node: node-b, serviceAccount: echo, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
    - {name: legacy, node: node-b, labels: {app: legacy}}
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-sleep, namespace: default}
    spec:
      selector: {matchLabels: {app: echo}}
      action: ALLOW
      rules:
        - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
          to: [{operation: {ports: ["8080"]}}]
steps:
  - wait: 1s
"#;

#[test]
fn a_small_mesh_renders_to_the_exact_local_config() {
    let text = render(&mesh(TWO_NODES)).unwrap();
    let want = r#"# ztunnel local config (LOCAL_XDS_PATH), rendered by ambient-testbed from the scenario's mesh
workloads:
- uid: "Kubernetes//v1/Pod/default/legacy"
  name: "legacy"
  namespace: "default"
  serviceAccount: "default"
  trustDomain: "cluster.local"
  workloadIps: ["10.0.2.3"]
  node: "node-b"
  network: ""
  clusterId: "Kubernetes"
  protocol: TCP
  status: Healthy
  authorizationPolicies: []
  services: {}
- uid: "Kubernetes//v1/Pod/default/server"
  name: "server"
  namespace: "default"
  serviceAccount: "echo"
  trustDomain: "cluster.local"
  workloadIps: ["10.0.2.2"]
  node: "node-b"
  network: ""
  clusterId: "Kubernetes"
  protocol: HBONE
  status: Healthy
  authorizationPolicies: ["default/allow-sleep"]
  services: {"default/echo.default.svc.cluster.local": {80: 8080}}
- uid: "Kubernetes//v1/Pod/default/sleep"
  name: "sleep"
  namespace: "default"
  serviceAccount: "sleep"
  trustDomain: "cluster.local"
  workloadIps: ["10.0.1.2"]
  node: "node-a"
  network: ""
  clusterId: "Kubernetes"
  protocol: HBONE
  status: Healthy
  authorizationPolicies: []
  services: {}
services:
- name: "echo"
  namespace: "default"
  hostname: "echo.default.svc.cluster.local"
  vips: ["/10.96.0.10"]
  ports: {80: 8080}
policies:
- name: "allow-sleep"
  namespace: "default"
  scope: WorkloadSelector
  action: Allow
  dryRun: false
  rules: [[[{destinationPorts: [8080]}], [{principals: [!Exact "cluster.local/ns/default/sa/sleep"]}]]]
"#;
    assert_eq!(text, want);
}

fn policies_of(yaml_policies: &str) -> String {
    let text = TWO_NODES.replace(
        &TWO_NODES[TWO_NODES.find("policies:").unwrap()..TWO_NODES.find("steps:").unwrap()],
        yaml_policies,
    );
    let out = render(&mesh(&text)).unwrap();
    out[out.find("policies:\n").unwrap()..].to_string()
}

#[test]
fn scopes_follow_the_selector_and_the_root_namespace() {
    let out = policies_of(
        r#"policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: ns-wide, namespace: default}
    spec: {action: DENY, rules: [{from: [{source: {namespaces: ["other"]}}]}]}
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: mesh-wide, namespace: istio-system}
    spec: {action: DENY, rules: [{from: [{source: {ipBlocks: ["203.0.113.0/24", "10.0.1.2"]}}]}]}
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-nothing, namespace: default}
    spec: {selector: {matchLabels: {app: echo}}}
"#,
    );
    assert!(
        out.contains(
            "- name: \"ns-wide\"\n  namespace: \"default\"\n  scope: Namespace\n  action: Deny"
        ),
        "{out}"
    );
    assert!(out.contains("  scope: Global\n"), "{out}");
    assert!(out.contains("sourceIps: [\"203.0.113.0/24\", \"10.0.1.2/32\"]"), "{out}");
    // No rules: an ALLOW that matches nothing.
    assert!(out.contains("- name: \"allow-nothing\"\n  namespace: \"default\"\n  scope: WorkloadSelector\n  action: Allow\n  dryRun: false\n  rules: []\n"), "{out}");
}

#[test]
fn wildcards_when_conditions_and_http_attributes_convert_as_istiod_does() {
    let out = policies_of(
        r#"policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow, namespace: default}
    spec:
      selector: {matchLabels: {app: echo}}
      rules:
        - from: [{source: {principals: ["*", "cluster.local/*", "*/sa/sleep"], notNamespaces: ["x"]}}]
          when: [{key: destination.port, values: ["8080"], notValues: ["9"]}]
        - to: [{operation: {methods: ["GET"]}}]
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny, namespace: default}
    spec:
      selector: {matchLabels: {app: echo}}
      action: DENY
      rules:
        - to: [{operation: {ports: ["9090"], paths: ["/admin"]}}]
"#,
    );
    // The ALLOW's second rule names an HTTP method: dropped, the first stays.
    assert!(out.contains(
        "  rules: [[[{notNamespaces: [!Exact \"x\"], principals: [!Presence [], !Prefix \"cluster.local/\", !Suffix \"/sa/sleep\"]}], [{destinationPorts: [8080], notDestinationPorts: [9]}]]]\n"
    ), "{out}");
    // The DENY keeps its L4 part.
    assert!(
        out.contains(
            "  action: Deny\n  dryRun: false\n  rules: [[[{destinationPorts: [9090]}]]]\n"
        ),
        "{out}"
    );
}

const PEER_AUTH: &str = r#"policies:
  - apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: mesh, namespace: istio-system}
    spec: {mtls: {mode: STRICT}}
  - apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: echo-ports, namespace: default}
    spec:
      selector: {matchLabels: {app: echo}}
      portLevelMtls: {8080: {mode: PERMISSIVE}}
"#;

#[test]
fn strict_peer_authentication_is_the_static_deny_and_port_exceptions_a_merged_policy() {
    let text = TWO_NODES.replace(
        &TWO_NODES[TWO_NODES.find("policies:").unwrap()..TWO_NODES.find("steps:").unwrap()],
        PEER_AUTH,
    );
    let out = render(&mesh(&text)).unwrap();
    // sleep is STRICT by the mesh policy: the static policy.
    let sleep = &out[out.find("name: \"sleep\"").unwrap()..];
    assert!(
        sleep.contains("authorizationPolicies: [\"istio-system/istio_converted_static_strict\"]"),
        "{out}"
    );
    // server has a port exception: its converted policy instead of the static one.
    let server = &out[out.find("name: \"server\"").unwrap()..out.find("name: \"sleep\"").unwrap()];
    assert!(
        server.contains(
            "authorizationPolicies: [\"default/converted_peer_authentication_echo-ports\"]"
        ),
        "{out}"
    );
    assert!(out.contains(
        "- name: \"converted_peer_authentication_echo-ports\"\n  namespace: \"default\"\n  scope: WorkloadSelector\n  action: Deny\n  dryRun: false\n  rules: [[[{notDestinationPorts: [8080]}], [{notPrincipals: [!Presence []]}]]]\n"
    ), "{out}");
    assert!(out.contains(
        "- name: \"istio_converted_static_strict\"\n  namespace: \"istio-system\"\n  scope: WorkloadSelector\n  action: Deny\n  dryRun: false\n  rules: [[[{notPrincipals: [!Presence []]}]]]\n"
    ), "{out}");
}

#[test]
fn every_catalog_scenario_renders() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let world = ambient_scenarios::load_file(&path).into_result().unwrap();
            render(&ClusterState::initial(&world).mesh_spec())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n > 40, "{n} scenarios");
}
