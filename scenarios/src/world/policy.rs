//! Policy objects in a scenario: names (Kubernetes naming rules, unique per namespace, the keys
//! `remove:` refers to), then the proxy's own compile step, whose errors and warnings (supported
//! actions, waypoint-only attachment, address blocks, ports, condition keys, L7 fields the node
//! proxy cannot see) are placed at the line and column where the offending key is written. What
//! a policy *means* is decided in one place only: `ambient_proxy::policy`.

use ambient_proxy::istio::PolicyObject;
use ambient_proxy::policy::check_object;

use super::build::Builder;
use super::{ObjectKey, Policy, PolicySource};
use crate::decode::ast::PolicyDoc;
use crate::values;

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
            PolicyObject::AuthorizationPolicy(_) => "AuthorizationPolicy",
            PolicyObject::PeerAuthentication(_) => "PeerAuthentication",
        };
        // One message per key: where the naming rules above already objected, the proxy's
        // (looser) name check has nothing to add.
        let named_badly = self.d.error_count() > before;
        let checked = check_object(&p.object);
        if let Err(errors) = &checked.compiled {
            for e in errors.iter() {
                if named_badly && e.path.starts_with("metadata.") {
                    continue;
                }
                self.d.error_at(&source.locate(&e.path), e.message.clone());
            }
        }
        for w in checked.warnings.iter() {
            self.d.warning_at(&source.locate(&w.path), w.message.clone());
        }
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
}
