//! L4 authorization at the destination, in the order of `ambient-facts.md`:
//!
//! 0. PeerAuthentication STRICT for the destination (workload, port) and no peer identity → deny.
//! 1. Any matching DENY policy → deny.
//! 2. No ALLOW policy applies to the workload → allow.
//! 3. Any matching ALLOW policy → allow.
//! 4. Otherwise deny ("allow policies exist, but none allowed").
//!
//! Pure: a function of the compiled policies, the destination workload and the connection.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::{
    Authorization, AuthzAction, AuthzRule, ConditionMatch, IpNet, MtlsMode, PeerAuthn, PolicySet,
    PortMatch, ROOT_NAMESPACE, SourceMatch, StringMatch,
};
use crate::identity::Identity;
use crate::mesh::{Workload, labels_match};

/// What authorization sees of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionAttrs {
    pub source_ip: IpAddr,
    /// The authenticated peer (HBONE); `None` for plaintext (15006).
    pub source_identity: Option<Identity>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// The decision and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: VerdictReason,
    /// The deciding policy as `name.namespace` (none when no policy decided).
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictReason {
    /// PeerAuthentication STRICT and the connection has no identity.
    MtlsRequired,
    DeniedByPolicy,
    NoAllowPolicies,
    AllowedByPolicy,
    /// Allow policies exist, but none allowed.
    NoAllowMatched,
}

impl fmt::Display for VerdictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictReason::MtlsRequired => "peer authentication STRICT requires mTLS",
            VerdictReason::DeniedByPolicy => "denied by a DENY policy",
            VerdictReason::NoAllowPolicies => "no ALLOW policy applies",
            VerdictReason::AllowedByPolicy => "allowed by an ALLOW policy",
            VerdictReason::NoAllowMatched => "allow policies exist, but none allowed",
        })
    }
}

/// Decide whether `conn` may reach `workload`.
pub fn evaluate(set: &PolicySet, workload: &Workload, conn: &ConnectionAttrs) -> Verdict {
    let verdict = |allowed, reason, policy: Option<String>| Verdict { allowed, reason, policy };
    if conn.source_identity.is_none()
        && let Some((MtlsMode::Strict, pa)) = mtls_mode(set, workload, conn.destination_port)
    {
        return verdict(false, VerdictReason::MtlsRequired, pa);
    }
    let applicable: Vec<&Authorization> = set
        .authorizations
        .iter()
        .filter(|p| applies(&p.namespace, &p.selector, workload))
        .collect();
    if let Some(p) =
        applicable.iter().find(|p| p.action == AuthzAction::Deny && policy_matches(p, conn))
    {
        return verdict(false, VerdictReason::DeniedByPolicy, Some(p.qualified_name()));
    }
    let allows: Vec<&&Authorization> =
        applicable.iter().filter(|p| p.action == AuthzAction::Allow).collect();
    if allows.is_empty() {
        return verdict(true, VerdictReason::NoAllowPolicies, None);
    }
    if let Some(p) = allows.iter().find(|p| policy_matches(p, conn)) {
        return verdict(true, VerdictReason::AllowedByPolicy, Some(p.qualified_name()));
    }
    verdict(false, VerdictReason::NoAllowMatched, None)
}

fn applies(
    namespace: &str,
    selector: &Option<std::collections::BTreeMap<String, String>>,
    w: &Workload,
) -> bool {
    (namespace == ROOT_NAMESPACE || namespace == w.namespace)
        && selector.as_ref().is_none_or(|s| labels_match(s, &w.labels))
}

/// The effective PeerAuthentication mode for a workload's port and the policy that set it:
/// port-level of a selecting policy, then a selecting policy, then the namespace's, then the
/// mesh's (root namespace, no selector); PERMISSIVE when none says.
pub fn mtls_mode(set: &PolicySet, w: &Workload, port: u16) -> Option<(MtlsMode, Option<String>)> {
    let in_ns = |p: &&PeerAuthn| p.namespace == w.namespace;
    let selecting: Vec<&PeerAuthn> = set
        .peer_authentications
        .iter()
        .filter(in_ns)
        .filter(|p| p.selector.as_ref().is_some_and(|s| labels_match(s, &w.labels)))
        .collect();
    let named = |p: &PeerAuthn, m: MtlsMode| Some((m, Some(p.qualified_name())));
    for p in &selecting {
        if let Some(m) = p.port_modes.get(&port) {
            return named(p, *m);
        }
    }
    for p in &selecting {
        if let Some(m) = p.mode {
            return named(p, m);
        }
    }
    let scopes = [w.namespace.as_str(), ROOT_NAMESPACE];
    for ns in scopes {
        if let Some(p) = set
            .peer_authentications
            .iter()
            .find(|p| p.namespace == ns && p.selector.is_none() && p.mode.is_some())
        {
            return named(p, p.mode.unwrap_or(MtlsMode::Permissive));
        }
    }
    Some((MtlsMode::Permissive, None))
}

fn policy_matches(p: &Authorization, conn: &ConnectionAttrs) -> bool {
    p.rules.iter().any(|r| rule_matches(r, conn))
}

fn rule_matches(r: &AuthzRule, conn: &ConnectionAttrs) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, conn)))
        && (r.to.is_empty() || r.to.iter().any(|t| port_matches(t, conn.destination_port)))
        && r.when.iter().all(|c| condition_matches(c, conn))
}

/// A positive list: empty or any entry matches. A negative list: empty or no entry matches.
fn pos<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}
fn neg<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    !list.iter().any(f)
}

/// Identity-based matches are false without an identity: a positive list then fails and a
/// negated list passes (as in ztunnel and Envoy's `not_id` of an unauthenticated peer).
fn principal_is(m: &StringMatch, id: Option<&Identity>) -> bool {
    id.is_some_and(|id| m.matches(&id.principal()))
}
fn namespace_is(m: &StringMatch, id: Option<&Identity>) -> bool {
    id.is_some_and(|id| m.matches(&id.namespace))
}
fn service_account_is(sa: &(String, String), id: Option<&Identity>) -> bool {
    id.is_some_and(|id| id.namespace == sa.0 && id.service_account == sa.1)
}
fn net_has(n: &IpNet, ip: IpAddr) -> bool {
    n.contains(ip)
}

fn source_matches(s: &SourceMatch, c: &ConnectionAttrs) -> bool {
    let id = c.source_identity.as_ref();
    pos(&s.principals, |m| principal_is(m, id))
        && neg(&s.not_principals, |m| principal_is(m, id))
        && pos(&s.namespaces, |m| namespace_is(m, id))
        && neg(&s.not_namespaces, |m| namespace_is(m, id))
        && pos(&s.service_accounts, |sa| service_account_is(sa, id))
        && neg(&s.not_service_accounts, |sa| service_account_is(sa, id))
        && pos(&s.ip_blocks, |n| net_has(n, c.source_ip))
        && neg(&s.not_ip_blocks, |n| net_has(n, c.source_ip))
}

fn port_matches(t: &PortMatch, port: u16) -> bool {
    pos(&t.ports, |p| *p == port) && neg(&t.not_ports, |p| *p == port)
}

fn condition_matches(c: &ConditionMatch, conn: &ConnectionAttrs) -> bool {
    let id = conn.source_identity.as_ref();
    match c {
        ConditionMatch::SourceIp { values, not_values } => {
            pos(values, |n| net_has(n, conn.source_ip))
                && neg(not_values, |n| net_has(n, conn.source_ip))
        }
        ConditionMatch::DestinationIp { values, not_values } => {
            pos(values, |n| net_has(n, conn.destination_ip))
                && neg(not_values, |n| net_has(n, conn.destination_ip))
        }
        ConditionMatch::DestinationPort { values, not_values } => {
            pos(values, |p| *p == conn.destination_port)
                && neg(not_values, |p| *p == conn.destination_port)
        }
        ConditionMatch::SourceNamespace { values, not_values } => {
            pos(values, |m| namespace_is(m, id)) && neg(not_values, |m| namespace_is(m, id))
        }
        ConditionMatch::SourcePrincipal { values, not_values } => {
            pos(values, |m| principal_is(m, id)) && neg(not_values, |m| principal_is(m, id))
        }
    }
}
