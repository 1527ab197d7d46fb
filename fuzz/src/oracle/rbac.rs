//! The oracle's authorization: Istio L4 semantics as `ambient-facts.md` states them, written
//! from the facts over the Istio objects as written (`ambient_proxy::istio`, the wire format),
//! without the proxy's compiler or evaluator.
//!
//! 0. No identity (plaintext) and PeerAuthentication STRICT for the workload's port → deny.
//!    The mode comes from the most specific policy: a selecting one's port-level mode, then a
//!    selecting one's mode, then the namespace's, then the mesh's (`istio-system`); PERMISSIVE
//!    when none says; UNSET defers to the next level.
//! 1. Any matching DENY → deny. 2. No ALLOW applies → allow. 3. Any matching ALLOW → allow.
//! 4. Otherwise deny.
//!
//! A policy applies when it is in the workload's namespace or in `istio-system`, and its
//! selector's labels are all on the workload. Rules OR; within a rule `from`, `to`, `when` AND;
//! list entries OR; a negated list fails if any entry matches. Identity-based matches
//! (principals, namespaces, service accounts) never match a connection without identity, so
//! their negations pass. L7 fields: an ALLOW rule with any is dropped (matches nothing); a
//! DENY rule keeps its L4 part.

use std::net::Ipv4Addr;

use ambient_proxy::istio::{
    Action, AuthorizationPolicy, MtlsMode, PeerAuthentication, PolicyObject, PortKey, Rule, Source,
};

pub const ROOT_NAMESPACE: &str = "istio-system";

/// A SPIFFE identity's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Ident {
    /// `td/ns/NS/sa/SA`: how principals are written in policies (no `spiffe://`).
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    pub fn uri(&self) -> String {
        format!("spiffe://{}", self.principal())
    }
}

/// The destination workload, as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

/// The connection, as policies see it.
#[derive(Debug, Clone)]
pub struct Conn<'a> {
    pub source_ip: Ipv4Addr,
    pub identity: Option<&'a Ident>,
    pub dest_ip: Ipv4Addr,
    pub dest_port: u16,
}

/// Whether the policies in force let `c` reach `w`, and a word on why.
pub fn decide(policies: &[&PolicyObject], w: Workload<'_>, c: &Conn<'_>) -> (bool, &'static str) {
    if c.identity.is_none() && strict(policies, w, c.dest_port) {
        return (false, "STRICT mTLS and no identity");
    }
    let applicable: Vec<&AuthorizationPolicy> = policies
        .iter()
        .filter_map(|p| match p {
            PolicyObject::AuthorizationPolicy(a) => Some(a),
            PolicyObject::PeerAuthentication(_) => None,
        })
        .filter(|a| applies(a, w))
        .collect();
    let is = |a: &AuthorizationPolicy, act: Action| a.spec.action.unwrap_or(Action::Allow) == act;
    if applicable.iter().any(|a| is(a, Action::Deny) && matches(a, Action::Deny, c)) {
        return (false, "a DENY policy matches");
    }
    let allows: Vec<_> = applicable.iter().filter(|a| is(a, Action::Allow)).collect();
    if allows.is_empty() {
        return (true, "no ALLOW policy applies");
    }
    if allows.iter().any(|a| matches(a, Action::Allow, c)) {
        return (true, "an ALLOW policy matches");
    }
    (false, "ALLOW policies apply and none matches")
}

fn namespace_of(meta: &ambient_proxy::istio::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn selects(
    selector: &Option<ambient_proxy::istio::WorkloadSelector>,
    w: Workload<'_>,
) -> Option<bool> {
    selector.as_ref().map(|s| s.match_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
}

fn applies(a: &AuthorizationPolicy, w: Workload<'_>) -> bool {
    let ns = namespace_of(&a.metadata);
    (ns == w.namespace || ns == ROOT_NAMESPACE) && selects(&a.spec.selector, w).unwrap_or(true)
}

/// The effective PeerAuthentication mode is STRICT.
fn strict(policies: &[&PolicyObject], w: Workload<'_>, port: u16) -> bool {
    let pas: Vec<&PeerAuthentication> = policies
        .iter()
        .filter_map(|p| match p {
            PolicyObject::PeerAuthentication(pa) => Some(pa),
            PolicyObject::AuthorizationPolicy(_) => None,
        })
        .collect();
    let set = |m: MtlsMode| (m != MtlsMode::Unset).then_some(m);
    let selecting: Vec<&&PeerAuthentication> = pas
        .iter()
        .filter(|p| namespace_of(&p.metadata) == w.namespace)
        .filter(|p| selects(&p.spec.selector, w) == Some(true))
        .collect();
    let port_mode = selecting
        .iter()
        .find_map(|p| p.spec.port_level_mtls.get(&PortKey(port)).and_then(|m| set(m.mode)));
    let workload_mode = || selecting.iter().find_map(|p| p.spec.mtls.and_then(|m| set(m.mode)));
    let scope_mode = |ns: &str| {
        pas.iter()
            .filter(|p| namespace_of(&p.metadata) == ns && p.spec.selector.is_none())
            .find_map(|p| p.spec.mtls.and_then(|m| set(m.mode)))
    };
    let mode = port_mode
        .or_else(workload_mode)
        .or_else(|| scope_mode(w.namespace))
        .or_else(|| scope_mode(ROOT_NAMESPACE));
    mode == Some(MtlsMode::Strict)
}

fn matches(a: &AuthorizationPolicy, action: Action, c: &Conn<'_>) -> bool {
    a.spec.rules.iter().any(|r| rule_matches(r, action, c))
}

fn has_l7(r: &Rule) -> bool {
    let src = |s: &Source| {
        !s.request_principals.is_empty()
            || !s.not_request_principals.is_empty()
            || !s.remote_ip_blocks.is_empty()
            || !s.not_remote_ip_blocks.is_empty()
    };
    let op = |o: &ambient_proxy::istio::Operation| {
        !(o.hosts.is_empty()
            && o.not_hosts.is_empty()
            && o.methods.is_empty()
            && o.not_methods.is_empty()
            && o.paths.is_empty()
            && o.not_paths.is_empty())
    };
    let when_l7 = |k: &str| {
        !matches!(
            k,
            "source.ip"
                | "source.namespace"
                | "source.principal"
                | "destination.ip"
                | "destination.port"
        )
    };
    r.from.iter().any(|f| src(&f.source))
        || r.to.iter().any(|t| op(&t.operation))
        || r.when.iter().any(|w| when_l7(&w.key))
}

fn rule_matches(r: &Rule, action: Action, c: &Conn<'_>) -> bool {
    if action == Action::Allow && has_l7(r) {
        return false;
    }
    let from = r.from.is_empty() || r.from.iter().any(|f| source_matches(&f.source, c));
    let to = r.to.is_empty()
        || r.to.iter().any(|t| {
            let o = &t.operation;
            any_or_empty(&o.ports, |p| port_is(p, c.dest_port))
                && none_of(&o.not_ports, |p| port_is(p, c.dest_port))
        });
    let when = r.when.iter().all(|cond| {
        let test = |v: &String| match cond.key.as_str() {
            "source.ip" => ip_in(v, c.source_ip),
            "destination.ip" => ip_in(v, c.dest_ip),
            "destination.port" => port_is(v, c.dest_port),
            "source.namespace" => c.identity.is_some_and(|i| string_match(v, &i.namespace)),
            "source.principal" => c.identity.is_some_and(|i| string_match(v, &i.principal())),
            _ => true, // L7 keys: a DENY keeps its L4 part (ALLOW rules were dropped above)
        };
        any_or_empty(&cond.values, test) && none_of(&cond.not_values, test)
    });
    from && to && when
}

fn any_or_empty(list: &[String], f: impl Fn(&String) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

fn none_of(list: &[String], f: impl Fn(&String) -> bool) -> bool {
    !list.iter().any(f)
}

fn source_matches(s: &Source, c: &Conn<'_>) -> bool {
    let id = c.identity;
    let principal = |v: &String| id.is_some_and(|i| string_match(v, &i.principal()));
    let namespace = |v: &String| id.is_some_and(|i| string_match(v, &i.namespace));
    let account =
        |v: &String| id.is_some_and(|i| format!("{}/{}", i.namespace, i.service_account) == *v);
    let ip = |v: &String| ip_in(v, c.source_ip);
    any_or_empty(&s.principals, principal)
        && none_of(&s.not_principals, principal)
        && any_or_empty(&s.namespaces, namespace)
        && none_of(&s.not_namespaces, namespace)
        && any_or_empty(&s.service_accounts, account)
        && none_of(&s.not_service_accounts, account)
        && any_or_empty(&s.ip_blocks, ip)
        && none_of(&s.not_ip_blocks, ip)
}

/// Istio string matching: exact, `prefix*`, `*suffix`, or `*` (any value present).
pub fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

fn port_is(p: &str, port: u16) -> bool {
    p.parse::<u16>() == Ok(port)
}

/// `a.b.c.d` or `a.b.c.d/len`.
pub fn ip_in(block: &str, ip: Ipv4Addr) -> bool {
    let (addr, len) = match block.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (block, Some(32)),
    };
    let (Ok(addr), Some(len)) = (addr.parse::<Ipv4Addr>(), len) else { return false };
    if len > 32 {
        return false;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & mask == u32::from(ip) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_and_ip_matching() {
        assert!(string_match("*", "x"));
        assert!(string_match("cluster.local/ns/prod/*", "cluster.local/ns/prod/sa/a"));
        assert!(string_match("*/sa/a", "cluster.local/ns/prod/sa/a"));
        assert!(!string_match("pro*", "default"));
        assert!(ip_in("10.0.1.0/24", Ipv4Addr::new(10, 0, 1, 9)));
        assert!(ip_in("10.0.1.2", Ipv4Addr::new(10, 0, 1, 2)));
        assert!(!ip_in("10.0.2.2/32", Ipv4Addr::new(10, 0, 2, 3)));
        assert!(ip_in("0.0.0.0/0", Ipv4Addr::new(1, 2, 3, 4)));
    }

    fn policy(v: serde_json::Value) -> PolicyObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_plaintext_has_no_principal() {
        let allow = policy(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["*"]}}]}]}
        }));
        let deny = policy(serde_json::json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "d", "namespace": "istio-system"},
            "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}
        }));
        let labels = Default::default();
        let w = Workload { namespace: "default", labels: &labels };
        let id = Ident {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service_account: "sa0".into(),
        };
        let conn = |identity, port| Conn {
            source_ip: Ipv4Addr::new(10, 0, 1, 2),
            identity,
            dest_ip: Ipv4Addr::new(10, 0, 2, 2),
            dest_port: port,
        };
        let ps = [&allow, &deny];
        assert!(decide(&ps, w, &conn(Some(&id), 8080)).0);
        assert!(!decide(&ps, w, &conn(Some(&id), 9090)).0, "DENY first");
        assert!(!decide(&ps, w, &conn(None, 8080)).0, "no identity: the principal never matches");
        assert!(decide(&[], w, &conn(None, 8080)).0, "no policy: allow");
    }
}
