//! Istio API objects exactly as they are written in a cluster (`kubectl get -o yaml`), limited to
//! the kinds the L4 data plane enforces: `AuthorizationPolicy` and `PeerAuthentication`
//! (`security.istio.io/v1` and `v1beta1`).
//!
//! These are the wire format only: field names, shapes and enum spellings of the Istio CRDs, with
//! unknown fields rejected. What the fields *mean* for the proxy (which are L4, which make a rule
//! fail closed, which are unsupported) is decided where they are compiled into the proxy's own
//! policy model, not here. Kubernetes bookkeeping that `kubectl` prints (uid, resourceVersion,
//! status …) is accepted and ignored, so a policy can be pasted from a live cluster unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `metadata` of a Kubernetes object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    /// Absent means the namespace the object is applied in (`default` in a scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    // Bookkeeping a cluster adds; accepted so that pasted objects load, never interpreted.
    #[serde(default, skip_serializing)]
    pub uid: Option<String>,
    #[serde(default, skip_serializing)]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing)]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: Option<String>,
}

/// Any object of a supported kind, discriminated by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum PolicyObject {
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
}

impl PolicyObject {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            PolicyObject::AuthorizationPolicy(p) => &p.metadata,
            PolicyObject::PeerAuthentication(p) => &p.metadata,
        }
    }

    pub fn api_version(&self) -> &str {
        match self {
            PolicyObject::AuthorizationPolicy(p) => &p.api_version,
            PolicyObject::PeerAuthentication(p) => &p.api_version,
        }
    }
}

/// The API versions these kinds are served at.
pub const API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// `security.istio.io/v1 AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub api_version: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Written by the cluster; ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Waypoint / gateway attachment; not an L4 (ztunnel) concept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Absent means ALLOW.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Only with action CUSTOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    pub name: String,
}

/// One rule: every present part must match (`from` AND `to` AND `when`); within each list, any entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Operation,
}

/// `Source`. L4 fields: principals, namespaces, ipBlocks, serviceAccounts and their negations.
/// L7 fields (request principals, remote IP blocks) need a waypoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`. L4 fields: ports, notPorts. L7 fields: hosts, methods, paths and their negations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// `Condition` (`when`): `key` is an attribute such as `source.ip` or `destination.port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// `security.istio.io/v1 PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub api_version: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Keyed by port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<PortKey, MutualTls>,
}

/// A port number used as a map key: YAML writes it as an integer, JSON as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey(pub u16);

impl Serialize for PortKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(PortKey(p)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (namespace, then mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authorization_policy_as_pasted_from_a_cluster_loads() {
        let json = serde_json::json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "allow-sleep", "namespace": "default", "uid": "abc",
                         "resourceVersion": "12", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "selector": {"matchLabels": {"app": "echo"}},
                "action": "ALLOW",
                "rules": [{
                    "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                    "to": [{"operation": {"ports": ["8080"]}}],
                    "when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]
                }]
            },
            "status": {"conditions": []}
        });
        let obj: PolicyObject = serde_json::from_value(json).unwrap();
        let PolicyObject::AuthorizationPolicy(p) = obj else { panic!("wrong kind") };
        assert_eq!(p.metadata.name, "allow-sleep");
        assert_eq!(p.spec.action, Some(Action::Allow));
        assert_eq!(p.spec.rules[0].to[0].operation.ports, ["8080"]);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "x"}, "spec": {"rules": [{"from": [{"source": {"principal": ["a"]}}]}]}
        });
        let err = serde_json::from_value::<PolicyObject>(json).unwrap_err().to_string();
        assert!(err.contains("unknown field `principal`"), "{err}");
    }

    #[test]
    fn peer_authentication_modes() {
        let json = serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "strict", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}
        });
        let PolicyObject::PeerAuthentication(p) = serde_json::from_value(json).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(p.spec.mtls.unwrap().mode, MtlsMode::Strict);
        assert_eq!(p.spec.port_level_mtls[&PortKey(8080)].mode, MtlsMode::Permissive);
    }
}
