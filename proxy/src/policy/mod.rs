//! The proxy's own policy model: Istio `AuthorizationPolicy` and `PeerAuthentication` objects
//! ([`crate::istio`], the wire format) compiled into L4 matchers ([`compile_object`], [`PolicySet::compile`]) and evaluated per
//! connection ([`rbac`]).
//!
//! Compilation is where the meaning of the Istio fields is decided (see `ambient-facts.md`):
//! L4 fields become matchers; an ALLOW rule that uses L7 fields is dropped (the policy still
//! applies, so it fails closed); a DENY rule with L7 fields keeps only its L4 part; AUDIT and
//! CUSTOM actions and waypoint `targetRef`s are rejected with an error.

mod compile;
pub mod rbac;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

pub use compile::{Checked, check_object, compile_object};
pub use rbac::{ConnectionAttrs, Verdict, VerdictReason, evaluate};

use crate::error::ValidationErrors;
use crate::istio::PolicyObject;

/// Policies here apply to workloads of every namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// All compiled policies of a mesh, in a stable order (namespace, then name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicySet {
    pub authorizations: Vec<Authorization>,
    pub peer_authentications: Vec<PeerAuthn>,
}

/// One compiled object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Compiled {
    Authorization(Authorization),
    PeerAuthn(PeerAuthn),
}

impl PolicySet {
    /// Compile every object; errors carry paths like `[2].spec.rules[0].to[0].operation.ports[1]`
    /// (prefix them with the list's own key). Duplicate `namespace/name` of one kind is an error.
    pub fn compile(objects: &[PolicyObject]) -> Result<PolicySet, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut set = PolicySet::default();
        for (i, obj) in objects.iter().enumerate() {
            match compile_object(obj) {
                Ok(c) => set.insert_at(c, &format!("[{i}]"), &mut errors),
                Err(e) => errors.extend_prefixed(&format!("[{i}]"), e),
            }
        }
        errors.into_result(set)
    }

    /// Add (or replace, by kind + namespace + name) one compiled object.
    pub fn upsert(&mut self, c: Compiled) {
        match c {
            Compiled::Authorization(a) => {
                self.authorizations.retain(|p| p.key() != a.key());
                self.authorizations.push(a);
                self.authorizations.sort_by(|x, y| x.key().cmp(&y.key()));
            }
            Compiled::PeerAuthn(a) => {
                self.peer_authentications.retain(|p| p.key() != a.key());
                self.peer_authentications.push(a);
                self.peer_authentications.sort_by(|x, y| x.key().cmp(&y.key()));
            }
        }
    }

    /// Remove every object named `namespace/name`; true if one was there.
    pub fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let before = self.authorizations.len() + self.peer_authentications.len();
        self.authorizations.retain(|p| p.key() != (namespace, name));
        self.peer_authentications.retain(|p| p.key() != (namespace, name));
        before != self.authorizations.len() + self.peer_authentications.len()
    }

    fn insert_at(&mut self, c: Compiled, at: &str, errors: &mut ValidationErrors) {
        let dup = match &c {
            Compiled::Authorization(a) => self.authorizations.iter().any(|p| p.key() == a.key()),
            Compiled::PeerAuthn(a) => self.peer_authentications.iter().any(|p| p.key() == a.key()),
        };
        if dup {
            let (ns, name) = match &c {
                Compiled::Authorization(a) => a.key(),
                Compiled::PeerAuthn(a) => a.key(),
            };
            errors.push(
                format!("{at}.metadata.name"),
                format!("duplicate policy {name}.{ns} of this kind"),
            );
        } else {
            self.upsert(c);
        }
    }
}

/// A compiled `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    /// `None`: every workload of the namespace (of every namespace in [`ROOT_NAMESPACE`]).
    pub selector: Option<BTreeMap<String, String>>,
    pub action: AuthzAction,
    /// Rules that survived compilation (ALLOW rules with L7 fields are dropped).
    pub rules: Vec<AuthzRule>,
    /// How many rules were dropped for using L7 fields.
    pub dropped_rules: usize,
}

impl Authorization {
    pub fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    /// `name.namespace`, how verdicts name the deciding policy.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AuthzAction {
    Allow,
    Deny,
}

/// One rule: `from` AND `to` AND `when`; an empty list is no constraint; within a list, any entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthzRule {
    pub from: Vec<SourceMatch>,
    pub to: Vec<PortMatch>,
    pub when: Vec<ConditionMatch>,
}

/// A `from[].source` entry: every non-empty field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SourceMatch {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    /// `namespace/serviceAccount` pairs.
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
}

/// A `to[].operation` entry reduced to its L4 part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortMatch {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// A `when` condition on an L4 attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConditionMatch {
    SourceIp { values: Vec<IpNet>, not_values: Vec<IpNet> },
    SourceNamespace { values: Vec<StringMatch>, not_values: Vec<StringMatch> },
    SourcePrincipal { values: Vec<StringMatch>, not_values: Vec<StringMatch> },
    DestinationIp { values: Vec<IpNet>, not_values: Vec<IpNet> },
    DestinationPort { values: Vec<u16>, not_values: Vec<u16> },
}

/// Istio's string match: exact, prefix `x*`, suffix `*x`, or presence `*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    pub fn parse(s: &str) -> StringMatch {
        if s == "*" {
            StringMatch::Presence
        } else if let Some(p) = s.strip_suffix('*') {
            StringMatch::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            StringMatch::Suffix(p.to_string())
        } else {
            StringMatch::Exact(s.to_string())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(x) => v == x,
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

/// An address block: `10.0.0.0/8`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("{s:?} has an invalid prefix length (expected 0-{max})")),
            },
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A compiled `PeerAuthentication`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAuthn {
    pub name: String,
    pub namespace: String,
    pub selector: Option<BTreeMap<String, String>>,
    /// `None`: inherit from the enclosing scope.
    pub mode: Option<MtlsMode>,
    /// Per destination (target) port; only with a selector, as in Istio.
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

impl PeerAuthn {
    pub fn key(&self) -> (&str, &str) {
        (&self.namespace, &self.name)
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// What a PeerAuthentication asks of inbound connections. DISABLE is treated as PERMISSIVE: the
/// node proxy never turns HBONE off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    Permissive,
    Strict,
}
