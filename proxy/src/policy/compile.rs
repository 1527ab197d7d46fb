//! Istio objects → the proxy's policy model, with every error located by key path.

use std::collections::BTreeMap;

use super::{
    Authorization, AuthzAction, AuthzRule, Compiled, ConditionMatch, IpNet, MtlsMode, PeerAuthn,
    PortMatch, SourceMatch, StringMatch,
};
use crate::error::ValidationErrors;
use crate::identity::valid_name_part;
use crate::istio::{self, Action, PolicyObject};
use crate::mesh::DEFAULT_NAMESPACE;

/// `when` keys the L4 proxy enforces.
const L4_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// Compile one object. Paths in errors are relative to the object (`spec.rules[0]…`).
pub fn compile_object(obj: &PolicyObject) -> Result<Compiled, ValidationErrors> {
    let mut errors = ValidationErrors::default();
    if !istio::API_VERSIONS.contains(&obj.api_version()) {
        errors.push(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?} (expected one of {})",
                obj.api_version(),
                istio::API_VERSIONS.join(", ")
            ),
        );
    }
    let meta = obj.metadata();
    if !valid_name_part(&meta.name) {
        errors.push("metadata.name", format!("{:?} is not a valid name", meta.name));
    }
    let namespace = meta.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !valid_name_part(&namespace) {
        errors.push("metadata.namespace", format!("{namespace:?} is not a valid namespace"));
    }
    let compiled = match obj {
        PolicyObject::AuthorizationPolicy(p) => {
            authorization(&meta.name, &namespace, &p.spec, &mut errors).map(Compiled::Authorization)
        }
        PolicyObject::PeerAuthentication(p) => {
            Some(Compiled::PeerAuthn(peer_authn(&meta.name, &namespace, &p.spec, &mut errors)))
        }
    };
    match compiled {
        Some(c) => errors.into_result(c),
        None => Err(errors),
    }
}

fn selector(s: &Option<istio::WorkloadSelector>) -> Option<BTreeMap<String, String>> {
    s.as_ref().map(|s| s.match_labels.clone())
}

fn authorization(
    name: &str,
    namespace: &str,
    spec: &istio::AuthorizationPolicySpec,
    errors: &mut ValidationErrors,
) -> Option<Authorization> {
    let action = match spec.action {
        None | Some(Action::Allow) => AuthzAction::Allow,
        Some(Action::Deny) => AuthzAction::Deny,
        Some(a @ (Action::Audit | Action::Custom)) => {
            let a = if a == Action::Audit { "AUDIT" } else { "CUSTOM" };
            errors.push(
                "spec.action",
                format!("action {a} is not enforced by the node proxy (expected ALLOW or DENY)"),
            );
            return None;
        }
    };
    if spec.provider.is_some() {
        errors.push(
            "spec.provider",
            "provider is only meaningful with action CUSTOM, which is not supported",
        );
    }
    if spec.target_ref.is_some() {
        errors.push(
            "spec.targetRef",
            "waypoint attachment is not enforced by the node proxy (use spec.selector)",
        );
    }
    if !spec.target_refs.is_empty() {
        errors.push(
            "spec.targetRefs",
            "waypoint attachment is not enforced by the node proxy (use spec.selector)",
        );
    }
    let mut rules = Vec::new();
    let mut dropped_rules = 0;
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let (rule, has_l7) = compile_rule(r, &at, errors);
        if has_l7 && action == AuthzAction::Allow {
            // Fail closed: an ALLOW the proxy cannot fully check allows nothing.
            dropped_rules += 1;
        } else {
            rules.push(rule);
        }
    }
    Some(Authorization {
        name: name.to_string(),
        namespace: namespace.to_string(),
        selector: selector(&spec.selector),
        action,
        rules,
        dropped_rules,
    })
}

/// Returns the L4 part of the rule and whether it used L7 fields.
fn compile_rule(r: &istio::Rule, at: &str, errors: &mut ValidationErrors) -> (AuthzRule, bool) {
    let mut has_l7 = false;
    let mut rule = AuthzRule::default();
    for (j, f) in r.from.iter().enumerate() {
        let at = format!("{at}.from[{j}].source");
        let s = &f.source;
        let l7 = !s.request_principals.is_empty()
            || !s.not_request_principals.is_empty()
            || !s.remote_ip_blocks.is_empty()
            || !s.not_remote_ip_blocks.is_empty();
        has_l7 |= l7;
        let m = SourceMatch {
            principals: strings(&s.principals, &format!("{at}.principals"), errors),
            not_principals: strings(&s.not_principals, &format!("{at}.notPrincipals"), errors),
            namespaces: strings(&s.namespaces, &format!("{at}.namespaces"), errors),
            not_namespaces: strings(&s.not_namespaces, &format!("{at}.notNamespaces"), errors),
            service_accounts: service_accounts(
                &s.service_accounts,
                &format!("{at}.serviceAccounts"),
                errors,
            ),
            not_service_accounts: service_accounts(
                &s.not_service_accounts,
                &format!("{at}.notServiceAccounts"),
                errors,
            ),
            ip_blocks: nets(&s.ip_blocks, &format!("{at}.ipBlocks"), errors),
            not_ip_blocks: nets(&s.not_ip_blocks, &format!("{at}.notIpBlocks"), errors),
        };
        let raw_empty = s.principals.is_empty()
            && s.not_principals.is_empty()
            && s.namespaces.is_empty()
            && s.not_namespaces.is_empty()
            && s.service_accounts.is_empty()
            && s.not_service_accounts.is_empty()
            && s.ip_blocks.is_empty()
            && s.not_ip_blocks.is_empty();
        if raw_empty && !l7 {
            errors.push(
                at.clone(),
                "an empty source matches nothing useful; give at least one field",
            );
        }
        let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
        let has_id = !s.principals.is_empty() || !s.namespaces.is_empty();
        if has_sa && has_id {
            errors.push(
                at.clone(),
                "serviceAccounts cannot be combined with principals or namespaces",
            );
        }
        rule.from.push(m);
    }
    for (j, t) in r.to.iter().enumerate() {
        let at = format!("{at}.to[{j}].operation");
        let o = &t.operation;
        let l7 = !(o.hosts.is_empty()
            && o.not_hosts.is_empty()
            && o.methods.is_empty()
            && o.not_methods.is_empty()
            && o.paths.is_empty()
            && o.not_paths.is_empty());
        has_l7 |= l7;
        let m = PortMatch {
            ports: ports(&o.ports, &format!("{at}.ports"), errors),
            not_ports: ports(&o.not_ports, &format!("{at}.notPorts"), errors),
        };
        if o.ports.is_empty() && o.not_ports.is_empty() && !l7 {
            errors.push(
                at.clone(),
                "an empty operation matches nothing useful; give at least one field",
            );
        }
        rule.to.push(m);
    }
    for (j, c) in r.when.iter().enumerate() {
        let at = format!("{at}.when[{j}]");
        if c.values.is_empty() && c.not_values.is_empty() {
            errors.push(at.clone(), "a condition needs values or notValues");
        }
        let v = format!("{at}.values");
        let nv = format!("{at}.notValues");
        let m = match c.key.as_str() {
            "source.ip" => Some(ConditionMatch::SourceIp {
                values: nets(&c.values, &v, errors),
                not_values: nets(&c.not_values, &nv, errors),
            }),
            "source.namespace" => Some(ConditionMatch::SourceNamespace {
                values: strings(&c.values, &v, errors),
                not_values: strings(&c.not_values, &nv, errors),
            }),
            "source.principal" => Some(ConditionMatch::SourcePrincipal {
                values: strings(&c.values, &v, errors),
                not_values: strings(&c.not_values, &nv, errors),
            }),
            "destination.ip" => Some(ConditionMatch::DestinationIp {
                values: nets(&c.values, &v, errors),
                not_values: nets(&c.not_values, &nv, errors),
            }),
            "destination.port" => Some(ConditionMatch::DestinationPort {
                values: ports(&c.values, &v, errors),
                not_values: ports(&c.not_values, &nv, errors),
            }),
            k if is_l7_key(k) => {
                has_l7 = true;
                None
            }
            k => {
                errors.push(
                    format!("{at}.key"),
                    format!("unknown condition key {k:?} (L4 keys: {})", L4_KEYS.join(", ")),
                );
                None
            }
        };
        rule.when.extend(m);
    }
    (rule, has_l7)
}

/// Keys Istio knows that need an L7 proxy (waypoint) to evaluate.
fn is_l7_key(k: &str) -> bool {
    k.starts_with("request.")
        || k.starts_with("experimental.")
        || k == "remote.ip"
        || k == "connection.sni"
}

fn strings(values: &[String], at: &str, errors: &mut ValidationErrors) -> Vec<StringMatch> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            errors.push(
                format!("{at}[{i}]"),
                "empty string (expected a value, `prefix*`, `*suffix` or `*`)",
            );
        } else {
            out.push(StringMatch::parse(v));
        }
    }
    out
}

fn nets(values: &[String], at: &str, errors: &mut ValidationErrors) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match IpNet::parse(v) {
            Ok(n) => out.push(n),
            Err(e) => errors.push(format!("{at}[{i}]"), e),
        }
    }
    out
}

fn ports(values: &[String], at: &str, errors: &mut ValidationErrors) -> Vec<u16> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v.parse::<u16>() {
            Ok(p) if p != 0 => out.push(p),
            _ => {
                errors.push(format!("{at}[{i}]"), format!("{v:?} is not a port (expected 1-65535)"))
            }
        }
    }
    out
}

fn service_accounts(
    values: &[String],
    at: &str,
    errors: &mut ValidationErrors,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v.split_once('/') {
            Some((ns, sa)) if valid_name_part(ns) && valid_name_part(sa) => {
                out.push((ns.to_string(), sa.to_string()))
            }
            _ => errors.push(
                format!("{at}[{i}]"),
                format!("{v:?} is not a service account (expected namespace/name)"),
            ),
        }
    }
    out
}

fn mode(m: istio::MtlsMode) -> Option<MtlsMode> {
    match m {
        istio::MtlsMode::Unset => None,
        istio::MtlsMode::Disable | istio::MtlsMode::Permissive => Some(MtlsMode::Permissive),
        istio::MtlsMode::Strict => Some(MtlsMode::Strict),
    }
}

fn peer_authn(
    name: &str,
    namespace: &str,
    spec: &istio::PeerAuthenticationSpec,
    errors: &mut ValidationErrors,
) -> PeerAuthn {
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        errors.push("spec.portLevelMtls", "portLevelMtls needs a spec.selector (as in Istio)");
    }
    PeerAuthn {
        name: name.to_string(),
        namespace: namespace.to_string(),
        selector: selector(&spec.selector),
        mode: spec.mtls.and_then(|m| mode(m.mode)),
        port_modes: spec
            .port_level_mtls
            .iter()
            .filter_map(|(p, m)| mode(m.mode).map(|m| (p.0, m)))
            .collect(),
    }
}
