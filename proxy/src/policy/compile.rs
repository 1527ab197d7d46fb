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

/// What checking one object found: the compiled policy or every error that stopped it, and
/// warnings — input that compiles but that an author most likely did not mean (an L7 field the
/// node proxy cannot see, a principal written with `spiffe://`). Paths are relative to the object
/// (`spec.rules[0]…`).
#[derive(Debug, Clone)]
pub struct Checked {
    pub compiled: Result<Compiled, ValidationErrors>,
    pub warnings: ValidationErrors,
}

/// Compile one object. Paths in errors are relative to the object (`spec.rules[0]…`).
pub fn compile_object(obj: &PolicyObject) -> Result<Compiled, ValidationErrors> {
    check_object(obj).compiled
}

/// Compile one object, keeping the warnings too.
pub fn check_object(obj: &PolicyObject) -> Checked {
    let mut warnings = ValidationErrors::default();
    let compiled = compile_with(obj, &mut warnings);
    Checked { compiled, warnings }
}

fn compile_with(
    obj: &PolicyObject,
    warnings: &mut ValidationErrors,
) -> Result<Compiled, ValidationErrors> {
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
            authorization(&meta.name, &namespace, &p.spec, &mut errors, warnings)
                .map(Compiled::Authorization)
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
    warnings: &mut ValidationErrors,
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
        let (rule, has_l7) = compile_rule(r, &at, action, errors, warnings);
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
fn compile_rule(
    r: &istio::Rule,
    at: &str,
    action: AuthzAction,
    errors: &mut ValidationErrors,
    warnings: &mut ValidationErrors,
) -> (AuthzRule, bool) {
    let mut l7_fields = Vec::new();
    let mut rule = AuthzRule::default();
    for (j, f) in r.from.iter().enumerate() {
        let at = format!("{at}.from[{j}].source");
        let s = &f.source;
        let before = l7_fields.len();
        for (field, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
            ("remoteIpBlocks", &s.remote_ip_blocks),
            ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ] {
            if !values.is_empty() {
                l7_fields.push((format!("{at}.{field}"), field.to_string()));
            }
        }
        let l7 = l7_fields.len() > before;
        for (field, values) in [("principals", &s.principals), ("notPrincipals", &s.not_principals)]
        {
            spiffe_prefix_warnings(values, &format!("{at}.{field}"), warnings);
        }
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
        let before = l7_fields.len();
        for (field, values) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !values.is_empty() {
                l7_fields.push((format!("{at}.{field}"), field.to_string()));
            }
        }
        let l7 = l7_fields.len() > before;
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
                l7_fields.push((format!("{at}.key"), k.to_string()));
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
        if c.key == "source.principal" {
            spiffe_prefix_warnings(&c.values, &v, warnings);
            spiffe_prefix_warnings(&c.not_values, &nv, warnings);
        }
        rule.when.extend(m);
    }
    let consequence = match action {
        AuthzAction::Allow => "the proxy drops this ALLOW rule (it never matches)",
        AuthzAction::Deny => "the proxy enforces this DENY rule on its L4 part only",
    };
    for (path, attribute) in &l7_fields {
        warnings.push(
            path.clone(),
            format!("`{attribute}` is an L7 attribute, which needs a waypoint; {consequence}"),
        );
    }
    (rule, !l7_fields.is_empty())
}

/// Principals are matched without the `spiffe://` scheme, so one written with it never matches.
fn spiffe_prefix_warnings(values: &[String], at: &str, warnings: &mut ValidationErrors) {
    for (i, v) in values.iter().enumerate() {
        if v.starts_with("spiffe://") {
            warnings.push(
                format!("{at}[{i}]"),
                format!(
                    "principals are written without `spiffe://` (e.g. cluster.local/ns/default/sa/sleep); {v:?} never matches"
                ),
            );
        }
    }
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
