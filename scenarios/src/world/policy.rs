//! Checks of Istio policy objects that need no proxy model: supported kinds and actions,
//! waypoint-only attachment, address blocks, ports, condition keys, and warnings for fields the
//! L4 proxy cannot see (L7). What a policy *means* is decided where the proxy compiles it.

use ambient_proxy::istio::{Action, AuthorizationPolicy, PeerAuthentication, PolicyObject};

use super::build::Builder;
use super::{ObjectKey, Policy, PolicySource};
use crate::decode::ast::PolicyDoc;
use crate::diag::list;
use crate::values;

/// `when` keys the L4 proxy evaluates.
pub const L4_CONDITION_KEYS: &[&str] =
    &["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];
/// `when` keys Istio knows that need L7 (a waypoint); prefixes end in `[` or `.`.
const L7_CONDITION_KEYS: &[&str] = &[
    "request.headers[",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[",
    "remote.ip",
    "connection.sni",
    "experimental.envoy.filters.",
];

impl Builder<'_> {
    /// Checks a policy object and puts it in force. `replace` (an `apply` step) lets it replace
    /// an object of the same kind and key; in `policies:` a second object with a key is an error.
    pub(super) fn apply_policy(&mut self, p: &PolicyDoc, replace: bool) -> Option<Policy> {
        let source =
            PolicySource { file: self.file.clone(), at: p.at.clone(), node: p.node.clone() };
        let before = self.d.error_count();
        let meta = p.object.metadata();
        if let Err(e) = values::check_subdomain(&meta.name) {
            self.d.error_at(&source.locate("metadata.name"), e);
        }
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_string());
        if let Err(e) = values::check_label(&namespace) {
            self.d.error_at(&source.locate("metadata.namespace"), e);
        }
        let key = ObjectKey::new(&meta.name, &namespace);
        let kind = match &p.object {
            PolicyObject::AuthorizationPolicy(ap) => {
                self.check_authz(ap, &source);
                "AuthorizationPolicy"
            }
            PolicyObject::PeerAuthentication(pa) => {
                self.check_peer_authn(pa, &source);
                "PeerAuthentication"
            }
        };
        if let Some((other_kind, other_at)) = self.policies.get(&key)
            && (!replace || *other_kind != kind)
        {
            let msg = format!(
                "a policy named {key} already exists ({other_kind} at {}); policy names are unique per namespace",
                other_at.pos
            );
            self.d.error_at(&source.locate("metadata.name"), msg);
        }
        if self.d.error_count() > before {
            return None;
        }
        self.policies.insert(key.clone(), (kind, p.at.clone()));
        Some(Policy { key, object: p.object.clone(), source })
    }

    fn check_authz(&mut self, ap: &AuthorizationPolicy, src: &PolicySource) {
        let spec = &ap.spec;
        match spec.action {
            Some(Action::Audit) => self.d.error_at(
                &src.locate("spec.action"),
                "action AUDIT is not supported: the L4 proxy enforces ALLOW and DENY only",
            ),
            Some(Action::Custom) => self.d.error_at(
                &src.locate("spec.action"),
                "action CUSTOM (an external authorizer) is not supported: the L4 proxy enforces ALLOW and DENY only",
            ),
            _ => {}
        }
        if spec.provider.is_some() && !matches!(spec.action, Some(Action::Custom)) {
            self.d.error_at(
                &src.locate("spec.provider"),
                "`provider` goes with action CUSTOM, which is not supported",
            );
        }
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            let field =
                if spec.target_ref.is_some() { "spec.targetRef" } else { "spec.targetRefs" };
            self.d.error_at(
                &src.locate(field),
                "targetRef attaches a policy to a waypoint or gateway; the L4 proxy enforces policies that use `selector` (or none)",
            );
        }
        let deny = matches!(spec.action, Some(Action::Deny));
        for (i, rule) in spec.rules.iter().enumerate() {
            let rp = format!("spec.rules[{i}]");
            for (j, from) in rule.from.iter().enumerate() {
                let s = &from.source;
                let fp = format!("{rp}.from[{j}].source");
                for (field, items) in
                    [("principals", &s.principals), ("notPrincipals", &s.not_principals)]
                {
                    for (k, v) in items.iter().enumerate() {
                        if v.starts_with("spiffe://") {
                            let msg = format!(
                                "principals are written without `spiffe://` (e.g. cluster.local/ns/default/sa/sleep); {v:?} never matches"
                            );
                            self.d.warning_at(&src.locate(&format!("{fp}.{field}[{k}]")), msg);
                        }
                    }
                }
                for (field, items) in
                    [("ipBlocks", &s.ip_blocks), ("notIpBlocks", &s.not_ip_blocks)]
                {
                    for (k, v) in items.iter().enumerate() {
                        if let Err(e) = values::check_cidr(v) {
                            self.d.error_at(&src.locate(&format!("{fp}.{field}[{k}]")), e);
                        }
                    }
                }
                let l7 = [
                    ("requestPrincipals", s.request_principals.is_empty()),
                    ("notRequestPrincipals", s.not_request_principals.is_empty()),
                    ("remoteIpBlocks", s.remote_ip_blocks.is_empty()),
                    ("notRemoteIpBlocks", s.not_remote_ip_blocks.is_empty()),
                ];
                self.l7_warnings(src, &fp, &l7, deny);
            }
            for (j, to) in rule.to.iter().enumerate() {
                let o = &to.operation;
                let op = format!("{rp}.to[{j}].operation");
                for (field, items) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                    for (k, v) in items.iter().enumerate() {
                        if let Err(e) = values::parse_port(v) {
                            self.d.error_at(&src.locate(&format!("{op}.{field}[{k}]")), e);
                        }
                    }
                }
                let l7 = [
                    ("hosts", o.hosts.is_empty()),
                    ("notHosts", o.not_hosts.is_empty()),
                    ("methods", o.methods.is_empty()),
                    ("notMethods", o.not_methods.is_empty()),
                    ("paths", o.paths.is_empty()),
                    ("notPaths", o.not_paths.is_empty()),
                ];
                self.l7_warnings(src, &op, &l7, deny);
            }
            for (j, cond) in rule.when.iter().enumerate() {
                let cp = format!("{rp}.when[{j}]");
                let key = cond.key.as_str();
                if L7_CONDITION_KEYS
                    .iter()
                    .any(|k| key == *k || (k.ends_with(['[', '.']) && key.starts_with(k)))
                {
                    self.l7_warnings(src, &format!("{cp}.key"), &[(key, false)], deny);
                } else if !L4_CONDITION_KEYS.contains(&key) {
                    let msg = format!(
                        "unknown condition key {key:?}; the L4 keys are {}",
                        list(L4_CONDITION_KEYS)
                    );
                    self.d.error_at(&src.locate(&format!("{cp}.key")), msg);
                }
                if cond.values.is_empty() && cond.not_values.is_empty() {
                    self.d.error_at(&src.locate(&cp), "a condition needs `values` or `notValues`");
                }
                for (field, items) in [("values", &cond.values), ("notValues", &cond.not_values)] {
                    for (k, v) in items.iter().enumerate() {
                        let check = match key {
                            "source.ip" | "destination.ip" => values::check_cidr(v),
                            "destination.port" => values::parse_port(v).map(|_| ()),
                            _ => Ok(()),
                        };
                        if let Err(e) = check {
                            self.d.error_at(&src.locate(&format!("{cp}.{field}[{k}]")), e);
                        }
                    }
                }
            }
        }
    }

    /// Warns about L7 fields: an ALLOW rule with them never matches (fail closed); a DENY rule is
    /// enforced on its L4 part only.
    fn l7_warnings(&mut self, src: &PolicySource, at: &str, fields: &[(&str, bool)], deny: bool) {
        for (field, empty) in fields {
            if *empty {
                continue;
            }
            let consequence = if deny {
                "the proxy enforces this DENY rule on its L4 part only"
            } else {
                "the proxy drops this ALLOW rule (it never matches)"
            };
            let path = if at.ends_with(".key") { at.to_string() } else { format!("{at}.{field}") };
            let msg =
                format!("`{field}` is an L7 attribute, which needs a waypoint; {consequence}");
            self.d.warning_at(&src.locate(&path), msg);
        }
    }

    fn check_peer_authn(&mut self, pa: &PeerAuthentication, src: &PolicySource) {
        if !pa.spec.port_level_mtls.is_empty() && pa.spec.selector.is_none() {
            self.d.error_at(
                &src.locate("spec.portLevelMtls"),
                "portLevelMtls needs a `selector` (Istio rejects it on a namespace- or mesh-wide policy)",
            );
        }
    }
}
