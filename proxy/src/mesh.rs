//! Mesh state: what the proxy knows about the cluster — workloads (pods), services, policies and
//! the trust domain. Ztunnel learns this from istiod over xDS; here it is loaded from a YAML/JSON
//! document ([`MeshSpec`]) or built in code, then validated once into a [`MeshState`].
//!
//! A `MeshState` is an immutable snapshot. The running proxy holds the current one behind a
//! [`MeshHandle`]; an update swaps the snapshot and re-checks live connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::ValidationErrors;
use crate::identity::{Identity, valid_name_part};
use crate::istio::PolicyObject;
use crate::policy::PolicySet;

/// The trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}
fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}
fn default_service_account() -> String {
    "default".to_string()
}
fn yes() -> bool {
    true
}

/// The mesh as written in a config file (and as built by a scenario loader).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSpec {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Istio objects exactly as in a cluster; compiled by [`PolicySet::compile`].
    #[serde(default)]
    pub policies: Vec<PolicyObject>,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            trust_domain: default_trust_domain(),
            workloads: Vec::new(),
            services: Vec::new(),
            policies: Vec::new(),
        }
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The node whose proxy serves this pod.
    pub node: String,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// In the mesh (ambient-captured): its traffic goes through the node proxy and it is reached
    /// over HBONE. Out-of-mesh pods are reached by passthrough.
    #[serde(default = "yes")]
    pub captured: bool,
}

impl Workload {
    /// A captured workload in `default` with service account `default`.
    pub fn new(name: impl Into<String>, node: impl Into<String>, ip: IpAddr) -> Self {
        Workload {
            name: name.into(),
            namespace: default_namespace(),
            service_account: default_service_account(),
            node: node.into(),
            ip,
            labels: BTreeMap::new(),
            captured: true,
        }
    }

    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn service_account(mut self, sa: impl Into<String>) -> Self {
        self.service_account = sa.into();
        self
    }

    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn uncaptured(mut self) -> Self {
        self.captured = false;
        self
    }

    /// `name.namespace`, how events and errors name the pod.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(trust_domain, &self.namespace, &self.service_account)
    }
}

/// A Kubernetes Service with a cluster VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePort>,
    /// Pods in the service's namespace whose labels include all of these are its endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    /// Extra endpoint addresses (a service without selector, or endpoints outside the mesh).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<IpAddr>,
}

impl Service {
    pub fn new(name: impl Into<String>, vip: IpAddr) -> Self {
        Service {
            name: name.into(),
            namespace: default_namespace(),
            vip,
            ports: Vec::new(),
            selector: None,
            endpoints: Vec::new(),
        }
    }

    pub fn port(mut self, port: u16, target_port: u16) -> Self {
        self.ports.push(ServicePort { port, target_port });
        self
    }

    pub fn select(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.selector.get_or_insert_with(BTreeMap::new).insert(k.into(), v.into());
        self
    }

    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }

    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.port == port).map(|p| p.target_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

/// A validated, indexed snapshot of the mesh.
#[derive(Debug, Clone)]
pub struct MeshState {
    spec: MeshSpec,
    workloads: BTreeMap<IpAddr, Workload>,
    services: BTreeMap<IpAddr, Service>,
    policies: PolicySet,
}

impl MeshState {
    /// Validate `spec` (every problem reported at once, with its key path) and index it.
    pub fn new(spec: MeshSpec) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if !valid_name_part(&spec.trust_domain) {
            errors.push(
                "trustDomain",
                format!(
                    "{:?} is not a valid trust domain (letters, digits, '-', '.')",
                    spec.trust_domain
                ),
            );
        }
        let mut workloads = BTreeMap::new();
        let mut names = BTreeSet::new();
        for (i, w) in spec.workloads.iter().enumerate() {
            let at = format!("workloads[{i}]");
            for (field, value) in [
                ("name", &w.name),
                ("namespace", &w.namespace),
                ("serviceAccount", &w.service_account),
                ("node", &w.node),
            ] {
                if !valid_name_part(value) {
                    errors.push(format!("{at}.{field}"), format!("{value:?} is not a valid name"));
                }
            }
            if ip_is_unusable(w.ip) {
                errors.push(format!("{at}.ip"), format!("{} cannot be a pod address", w.ip));
            }
            if !names.insert((w.namespace.clone(), w.name.clone())) {
                errors.push(
                    format!("{at}.name"),
                    format!("duplicate workload {}", w.qualified_name()),
                );
            }
            if let Some(prev) = workloads.insert(w.ip, w.clone()) {
                errors.push(
                    format!("{at}.ip"),
                    format!("{} is already the address of {}", w.ip, prev.qualified_name()),
                );
            }
        }
        let mut services = BTreeMap::new();
        for (i, s) in spec.services.iter().enumerate() {
            let at = format!("services[{i}]");
            for (field, value) in [("name", &s.name), ("namespace", &s.namespace)] {
                if !valid_name_part(value) {
                    errors.push(format!("{at}.{field}"), format!("{value:?} is not a valid name"));
                }
            }
            if ip_is_unusable(s.vip) {
                errors.push(format!("{at}.vip"), format!("{} cannot be a service address", s.vip));
            }
            if let Some(w) = workloads.get(&s.vip) {
                errors.push(
                    format!("{at}.vip"),
                    format!("{} is the address of pod {}", s.vip, w.qualified_name()),
                );
            }
            if s.ports.is_empty() {
                errors.push(format!("{at}.ports"), "a service needs at least one port");
            }
            let mut seen = BTreeSet::new();
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 {
                    errors.push(
                        format!("{at}.ports[{j}].port"),
                        "port 0 is not a port (expected 1-65535)",
                    );
                }
                if p.target_port == 0 {
                    errors.push(
                        format!("{at}.ports[{j}].targetPort"),
                        "port 0 is not a port (expected 1-65535)",
                    );
                }
                if !seen.insert(p.port) {
                    errors.push(
                        format!("{at}.ports[{j}].port"),
                        format!("duplicate service port {}", p.port),
                    );
                }
            }
            for (j, ip) in s.endpoints.iter().enumerate() {
                if ip_is_unusable(*ip) {
                    errors.push(
                        format!("{at}.endpoints[{j}]"),
                        format!("{ip} cannot be an endpoint"),
                    );
                }
            }
            if let Some(prev) = services.insert(s.vip, s.clone()) {
                errors.push(
                    format!("{at}.vip"),
                    format!("{} is already the VIP of {}", s.vip, prev.qualified_name()),
                );
            }
        }
        let policies = match PolicySet::compile(&spec.policies) {
            Ok(p) => p,
            Err(e) => {
                errors.extend_prefixed("policies", e);
                PolicySet::default()
            }
        };
        errors.into_result(())?;
        Ok(MeshState { spec, workloads, services, policies })
    }

    /// An empty mesh with the given trust domain.
    pub fn empty(trust_domain: &str) -> Result<Self, ValidationErrors> {
        MeshState::new(MeshSpec { trust_domain: trust_domain.to_string(), ..MeshSpec::default() })
    }

    pub fn spec(&self) -> &MeshSpec {
        &self.spec
    }

    pub fn trust_domain(&self) -> &str {
        &self.spec.trust_domain
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.get(&ip)
    }

    /// Workloads in address order.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn service(&self, vip: IpAddr) -> Option<&Service> {
        self.services.get(&vip)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn identity(&self, w: &Workload) -> Identity {
        w.identity(&self.spec.trust_domain)
    }

    /// A captured pod served by `node`'s proxy.
    pub fn local_captured(&self, node: &str, ip: IpAddr) -> Option<&Workload> {
        self.workload(ip).filter(|w| w.captured && w.node == node)
    }

    /// A service's endpoint addresses, sorted and without duplicates: selected pods of its
    /// namespace, then the explicit ones.
    pub fn endpoints(&self, s: &Service) -> Vec<IpAddr> {
        let mut out = BTreeSet::new();
        if let Some(sel) = &s.selector {
            for w in self.workloads.values() {
                if w.namespace == s.namespace && labels_match(sel, &w.labels) {
                    out.insert(w.ip);
                }
            }
        }
        out.extend(s.endpoints.iter().copied());
        out.into_iter().collect()
    }
}

/// Every `selector` label is present in `labels` with the same value (an empty selector selects all).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn ip_is_unusable(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_multicast()
}

/// The proxy's current mesh snapshot, shared by all its tasks. Swapping it is how a policy or
/// topology change reaches the proxy.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    current: Arc<RwLock<Arc<MeshState>>>,
}

impl MeshHandle {
    pub fn new(state: MeshState) -> Self {
        MeshHandle { current: Arc::new(RwLock::new(Arc::new(state))) }
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn load(&self) -> Arc<MeshState> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the snapshot. Prefer `NodeProxy::update_mesh`, which also re-checks live connections.
    pub fn store(&self, state: MeshState) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loads_from_yaml_with_defaults() {
        let yaml = r#"
trustDomain: example.org
workloads:
  - {name: client, node: node-a, ip: 10.0.1.5, serviceAccount: sleep}
  - {name: server, node: node-b, ip: 10.0.2.5, labels: {app: echo}}
  - {name: legacy, node: node-b, ip: 10.0.2.6, labels: {app: echo}, captured: false}
services:
  - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
"#;
        let spec: MeshSpec = serde_saphyr::from_str(yaml).unwrap();
        let mesh = MeshState::new(spec).unwrap();
        let client = mesh.workload(ip("10.0.1.5")).unwrap();
        assert_eq!(mesh.identity(client).to_string(), "spiffe://example.org/ns/default/sa/sleep");
        let svc = mesh.service(ip("10.96.0.10")).unwrap();
        assert_eq!(mesh.endpoints(svc), [ip("10.0.2.5"), ip("10.0.2.6")]);
        assert_eq!(svc.target_port(80), Some(8080));
        assert!(mesh.local_captured("node-b", ip("10.0.2.5")).is_some());
        assert!(mesh.local_captured("node-b", ip("10.0.2.6")).is_none());
        assert!(mesh.local_captured("node-a", ip("10.0.2.5")).is_none());
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let spec = MeshSpec {
            trust_domain: "bad domain".into(),
            workloads: vec![
                Workload::new("a", "n", ip("10.0.0.1")),
                Workload::new("a", "n", ip("10.0.0.1")),
                Workload::new("c", "", ip("0.0.0.0")),
            ],
            services: vec![Service::new("s", ip("10.0.0.1")).port(0, 80).port(0, 0)],
            policies: vec![],
        };
        let errs = MeshState::new(spec).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "trustDomain",
                "workloads[1].name",
                "workloads[1].ip",
                "workloads[2].node",
                "workloads[2].ip",
                "services[0].vip",
                "services[0].ports[0].port",
                "services[0].ports[1].port",
                "services[0].ports[1].targetPort",
                "services[0].ports[1].port",
            ]
        );
        assert!(
            errs.to_string()
                .contains("workloads[1].ip: 10.0.0.1 is already the address of a.default")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_saphyr::from_str::<MeshSpec>(
            "workloads: [{name: a, node: n, ip: 10.0.0.1, sa: x}]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
