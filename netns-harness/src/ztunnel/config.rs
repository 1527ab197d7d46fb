//! The mesh as ztunnel's local config file (`LOCAL_XDS_PATH`): workloads, services and
//! authorization policies rendered from the proxy's [`MeshSpec`] — what istiod would send over
//! xDS, written in the YAML form ztunnel's `LocalConfig` reads. Pure: a function of the spec.
//!
//! What istiod does and this renderer does the same way (Istio's ambient controller, read to
//! learn its rules, not copied):
//!
//! - **Workloads**: every pod, `protocol: HBONE` when captured (ambient) and `TCP` otherwise;
//!   `uid` `Kubernetes//v1/Pod/<ns>/<name>`; `node` is the scenario node, which must equal the
//!   owning ztunnel's `NODE_NAME`; `services` lists the Services whose selector picks the pod
//!   (`"<ns>/<hostname>": {port: targetPort}`), which is how ztunnel learns endpoints.
//!   The local format has no defaults for `trustDomain` and `serviceAccount`, so both are
//!   always written.
//! - **Services**: hostname `<name>.<ns>.svc.cluster.local`, `vips: ["/<vip>"]` (network `""`).
//! - **AuthorizationPolicy** → `Authorization`: scope `WorkloadSelector` with a selector,
//!   `Global` without one in the root namespace (`istio-system`), `Namespace` otherwise. A
//!   workload lists (`authorizationPolicies`, sorted) the selector policies of its namespace and
//!   of the root namespace whose labels it has. Each Istio rule is one OR-group of AND-ed clauses:
//!   the `to` operations (ports) as one clause, the `from` sources as one clause, and each `when`
//!   condition as a clause of its own. Principals and namespaces become `Exact`, `Prefix` (`x*`),
//!   `Suffix` (`*x`) or `Presence` (`*`); IP blocks without a length get the full one. An ALLOW
//!   rule naming HTTP attributes (hosts, methods, paths, request principals, remote IP blocks,
//!   non-L4 `when` keys) is dropped; a DENY rule keeps its L4 part.
//! - **PeerAuthentication**: if any exists, the static `istio-system/istio_converted_static_strict`
//!   DENY policy (`notPrincipals: [Presence]`) is sent, and listed by every workload whose
//!   effective mode (mesh, then namespace, then workload policy; the first of each kind in file
//!   order where Istio takes the oldest) is STRICT; a workload policy with `portLevelMtls` is
//!   converted to its own DENY policy with the port exceptions (or port-level STRICT), named
//!   `converted_peer_authentication_<name>`, and listed instead.
//!
//! The text is YAML in flow style where it nests, strings double-quoted (JSON escaping), enum
//! payloads as tags (`!Exact "…"`), which is what ztunnel's `serde_yaml` expects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ambient_proxy::istio::{self, AuthorizationPolicy, MtlsMode, PeerAuthentication, PolicyObject};
use ambient_proxy::mesh::{MeshSpec, Service, Workload};

/// Istio's root namespace (mesh-wide policies).
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The name istiod gives the static STRICT policy.
pub const STATIC_STRICT: &str = "istio_converted_static_strict";
/// ztunnel's default cluster id (`CLUSTER_ID`).
pub const CLUSTER_ID: &str = "Kubernetes";

/// The `uid` of a pod's workload.
pub fn workload_uid(namespace: &str, name: &str) -> String {
    format!("{CLUSTER_ID}//v1/Pod/{namespace}/{name}")
}

/// A Service's hostname.
pub fn hostname(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// One `RbacMatch`: every non-empty field ANDed, values within a field ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Match {
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    service_accounts: Vec<(String, String)>,
    not_service_accounts: Vec<(String, String)>,
    principals: Vec<String>,
    not_principals: Vec<String>,
    source_ips: Vec<String>,
    not_source_ips: Vec<String>,
    destination_ips: Vec<String>,
    not_destination_ips: Vec<String>,
    destination_ports: Vec<u16>,
    not_destination_ports: Vec<u16>,
}

/// `Exact`/`Prefix`/`Suffix`/`Presence` the way Istio reads `*` in principals and namespaces.
fn string_match(v: &str) -> String {
    if v == "*" {
        "!Presence []".into()
    } else if let Some(rest) = v.strip_prefix('*') {
        format!("!Suffix {}", q(rest))
    } else if let Some(rest) = v.strip_suffix('*') {
        format!("!Prefix {}", q(rest))
    } else {
        format!("!Exact {}", q(v))
    }
}

/// CIDRs as ztunnel parses them; what does not parse is dropped, as istiod does.
fn cidrs(values: &[String]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| match v.split_once('/') {
            Some((ip, len)) => {
                let ip: IpAddr = ip.parse().ok()?;
                let len: u8 = len.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                (len <= max).then(|| format!("{ip}/{len}"))
            }
            None => {
                let ip: IpAddr = v.parse().ok()?;
                Some(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
            }
        })
        .collect()
}

fn ports(values: &[String]) -> Vec<u16> {
    values.iter().filter_map(|v| v.parse().ok()).collect()
}

/// `ns/sa` or `sa` (the policy's namespace).
fn service_accounts(values: &[String], ns: &str) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((n, sa)) => (n.to_string(), sa.to_string()),
            None => (ns.to_string(), v.clone()),
        })
        .collect()
}

impl Match {
    fn render(&self) -> String {
        let mut parts = Vec::new();
        let strings = |name: &str, v: &[String], parts: &mut Vec<String>| {
            if !v.is_empty() {
                let items: Vec<String> = v.iter().map(|s| string_match(s)).collect();
                parts.push(format!("{name}: [{}]", items.join(", ")));
            }
        };
        let sas = |name: &str, v: &[(String, String)], parts: &mut Vec<String>| {
            if !v.is_empty() {
                let items: Vec<String> = v
                    .iter()
                    .map(|(n, s)| format!("{{namespace: {}, serviceAccount: {}}}", q(n), q(s)))
                    .collect();
                parts.push(format!("{name}: [{}]", items.join(", ")));
            }
        };
        let ips = |name: &str, v: &[String], parts: &mut Vec<String>| {
            if !v.is_empty() {
                let items: Vec<String> = v.iter().map(|s| q(s)).collect();
                parts.push(format!("{name}: [{}]", items.join(", ")));
            }
        };
        let nums = |name: &str, v: &[u16], parts: &mut Vec<String>| {
            if !v.is_empty() {
                let items: Vec<String> = v.iter().map(u16::to_string).collect();
                parts.push(format!("{name}: [{}]", items.join(", ")));
            }
        };
        strings("namespaces", &self.namespaces, &mut parts);
        strings("notNamespaces", &self.not_namespaces, &mut parts);
        sas("serviceAccounts", &self.service_accounts, &mut parts);
        sas("notServiceAccounts", &self.not_service_accounts, &mut parts);
        strings("principals", &self.principals, &mut parts);
        strings("notPrincipals", &self.not_principals, &mut parts);
        ips("sourceIps", &self.source_ips, &mut parts);
        ips("notSourceIps", &self.not_source_ips, &mut parts);
        ips("destinationIps", &self.destination_ips, &mut parts);
        ips("notDestinationIps", &self.not_destination_ips, &mut parts);
        nums("destinationPorts", &self.destination_ports, &mut parts);
        nums("notDestinationPorts", &self.not_destination_ports, &mut parts);
        format!("{{{}}}", parts.join(", "))
    }
}

/// OR of groups; a group is an AND of clauses; a clause is an OR of matches.
type Rules = Vec<Vec<Vec<Match>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

/// One ztunnel `Authorization`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authorization {
    name: String,
    namespace: String,
    scope: Scope,
    allow: bool,
    rules: Rules,
}

impl Authorization {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn render(&self, out: &mut String) {
        let scope = match self.scope {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
        };
        let groups: Vec<String> = self
            .rules
            .iter()
            .map(|g| {
                let clauses: Vec<String> = g
                    .iter()
                    .map(|c| {
                        let ms: Vec<String> = c.iter().map(Match::render).collect();
                        format!("[{}]", ms.join(", "))
                    })
                    .collect();
                format!("[{}]", clauses.join(", "))
            })
            .collect();
        let _ = writeln!(out, "- name: {}", q(&self.name));
        let _ = writeln!(out, "  namespace: {}", q(&self.namespace));
        let _ = writeln!(out, "  scope: {scope}");
        let _ = writeln!(out, "  action: {}", if self.allow { "Allow" } else { "Deny" });
        let _ = writeln!(out, "  dryRun: false");
        let _ = writeln!(out, "  rules: [{}]", groups.join(", "));
    }
}

const L4_WHEN_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// One Istio rule → its clauses, or `None` when an ALLOW rule names HTTP attributes.
fn rule_clauses(allow: bool, rule: &istio::Rule, ns: &str) -> Option<Vec<Vec<Match>>> {
    let mut http = false;
    let mut to = Vec::new();
    for t in &rule.to {
        let op = &t.operation;
        http |= [&op.hosts, &op.not_hosts, &op.methods, &op.not_methods, &op.paths, &op.not_paths]
            .iter()
            .any(|v| !v.is_empty());
        to.push(Match {
            destination_ports: ports(&op.ports),
            not_destination_ports: ports(&op.not_ports),
            ..Match::default()
        });
    }
    let mut from = Vec::new();
    for f in &rule.from {
        let s = &f.source;
        http |= [
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            &s.request_principals,
            &s.not_request_principals,
        ]
        .iter()
        .any(|v| !v.is_empty());
        from.push(Match {
            source_ips: cidrs(&s.ip_blocks),
            not_source_ips: cidrs(&s.not_ip_blocks),
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            service_accounts: service_accounts(&s.service_accounts, ns),
            not_service_accounts: service_accounts(&s.not_service_accounts, ns),
            principals: s.principals.clone(),
            not_principals: s.not_principals.clone(),
            ..Match::default()
        });
    }
    let mut clauses = Vec::new();
    if !to.is_empty() {
        clauses.push(to);
    }
    if !from.is_empty() {
        clauses.push(from);
    }
    for when in &rule.when {
        http |= !L4_WHEN_KEYS.contains(&when.key.as_str());
        let (pos, neg) = (&when.values, &when.not_values);
        let mut m = Match::default();
        match when.key.as_str() {
            "source.namespace" => {
                m.namespaces = pos.clone();
                m.not_namespaces = neg.clone();
            }
            "source.principal" => {
                m.principals = pos.clone();
                m.not_principals = neg.clone();
            }
            "source.ip" => {
                m.source_ips = cidrs(pos);
                m.not_source_ips = cidrs(neg);
            }
            "destination.port" => {
                m.destination_ports = ports(pos);
                m.not_destination_ports = ports(neg);
            }
            "destination.ip" => {
                m.destination_ips = cidrs(pos);
                m.not_destination_ips = cidrs(neg);
            }
            _ => {}
        }
        clauses.push(vec![m]);
    }
    if allow && http { None } else { Some(clauses) }
}

/// An AuthorizationPolicy as istiod converts it; `None` for what ztunnel is not sent
/// (`targetRef` policies, AUDIT and CUSTOM actions).
fn convert_authorization(p: &AuthorizationPolicy) -> Option<Authorization> {
    let spec = &p.spec;
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        return None;
    }
    let ns = namespace_of(&p.metadata);
    let allow = match spec.action {
        None | Some(istio::Action::Allow) => true,
        Some(istio::Action::Deny) => false,
        Some(istio::Action::Audit | istio::Action::Custom) => return None,
    };
    let scope = match (&spec.selector, ns.as_str()) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, ROOT_NAMESPACE) => Scope::Global,
        (None, _) => Scope::Namespace,
    };
    let rules = spec.rules.iter().filter_map(|r| rule_clauses(allow, r, &ns)).collect();
    Some(Authorization { name: p.metadata.name.clone(), namespace: ns, scope, allow, rules })
}

fn namespace_of(meta: &istio::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| ambient_proxy::mesh::DEFAULT_NAMESPACE.to_string())
}

fn mode(m: &Option<istio::MutualTls>) -> MtlsMode {
    m.map(|m| m.mode).unwrap_or_default()
}

fn labels_match(selector: &Option<istio::WorkloadSelector>, w: &Workload) -> bool {
    selector
        .as_ref()
        .is_some_and(|s| s.match_labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
}

fn presence_deny() -> Vec<Match> {
    vec![Match { not_principals: vec!["*".into()], ..Match::default() }]
}

fn converted_name(pa: &PeerAuthentication) -> String {
    format!("converted_peer_authentication_{}", pa.metadata.name)
}

/// The mesh-wide and namespace-wide PeerAuthentications that apply in `ns` (the first of each
/// in file order).
fn parent_peer_auths<'a>(
    pas: &[&'a PeerAuthentication],
    ns: &str,
) -> (Option<&'a PeerAuthentication>, Option<&'a PeerAuthentication>) {
    let no_selector = |p: &&&PeerAuthentication| {
        p.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty())
    };
    let mesh = pas.iter().filter(no_selector).find(|p| namespace_of(&p.metadata) == ROOT_NAMESPACE);
    let nsp = pas
        .iter()
        .filter(no_selector)
        .find(|p| namespace_of(&p.metadata) == ns && ns != ROOT_NAMESPACE);
    (mesh.copied(), nsp.copied())
}

/// A workload PeerAuthentication with port-level modes as its own DENY policy (istiod's
/// conversion); `None` when the static policy says it all or nothing is denied.
fn convert_peer_auth(
    pa: &PeerAuthentication,
    ns_pa: Option<&PeerAuthentication>,
    root_pa: Option<&PeerAuthentication>,
) -> Option<Authorization> {
    let ns = namespace_of(&pa.metadata);
    if ns == ROOT_NAMESPACE || pa.spec.selector.is_none() || pa.spec.port_level_mtls.is_empty() {
        return None;
    }
    let top = mode(&pa.spec.mtls);
    let ns_mode = ns_pa.map(|p| mode(&p.spec.mtls));
    let root_mode = root_pa.map(|p| mode(&p.spec.mtls));
    let mut clauses: Vec<Vec<Match>> = Vec::new();
    let mut groups: Rules = Vec::new();
    if top == MtlsMode::Strict {
        clauses.push(presence_deny());
    }
    let mut non_strict_port = false;
    for (port, m) in &pa.spec.port_level_mtls {
        match m.mode {
            MtlsMode::Strict => {
                let parent_strict = top == MtlsMode::Strict
                    || (top == MtlsMode::Unset && ns_mode == Some(MtlsMode::Strict))
                    || ((ns_mode.is_none() || ns_mode == Some(MtlsMode::Unset))
                        && root_mode == Some(MtlsMode::Strict));
                if parent_strict {
                    continue;
                }
                groups.push(vec![vec![Match {
                    not_principals: vec!["*".into()],
                    destination_ports: vec![port.0],
                    ..Match::default()
                }]]);
            }
            MtlsMode::Permissive | MtlsMode::Disable => {
                if matches!(top, MtlsMode::Permissive | MtlsMode::Disable) {
                    continue;
                }
                let inherits_non_strict = top == MtlsMode::Unset
                    && (ns_mode.is_some_and(|m| m != MtlsMode::Strict)
                        || (ns_mode.is_none() && root_mode.is_some_and(|m| m != MtlsMode::Strict))
                        || (ns_mode.is_none() && root_mode.is_none()));
                if inherits_non_strict {
                    continue;
                }
                non_strict_port = true;
                clauses
                    .push(vec![Match { not_destination_ports: vec![port.0], ..Match::default() }]);
            }
            MtlsMode::Unset => {}
        }
    }
    if top == MtlsMode::Strict && !non_strict_port {
        return None;
    }
    if clauses.is_empty() && groups.is_empty() {
        return None;
    }
    let merge_strict = (root_mode == Some(MtlsMode::Strict)
        && ns_mode.is_none_or(|m| matches!(m, MtlsMode::Unset | MtlsMode::Strict)))
        || ns_mode == Some(MtlsMode::Strict);
    if merge_strict && non_strict_port {
        clauses.push(presence_deny());
    }
    if !clauses.is_empty() {
        groups.push(clauses);
    }
    Some(Authorization {
        name: converted_name(pa),
        namespace: ns,
        scope: Scope::WorkloadSelector,
        allow: false,
        rules: groups,
    })
}

/// The PeerAuthentication policy keys a workload lists (istiod's effective-mode resolution).
fn peer_auth_keys(pas: &[&PeerAuthentication], w: &Workload) -> Vec<String> {
    let (mesh, nsp) = parent_peer_auths(pas, &w.namespace);
    let workload = pas.iter().copied().find(|p| {
        namespace_of(&p.metadata) == w.namespace
            && w.namespace != ROOT_NAMESPACE
            && p.spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
            && labels_match(&p.spec.selector, w)
    });
    let mut strict = mesh.is_some_and(|p| mode(&p.spec.mtls) == MtlsMode::Strict);
    if let Some(p) = nsp
        && mode(&p.spec.mtls) != MtlsMode::Unset
    {
        strict = mode(&p.spec.mtls) == MtlsMode::Strict;
    }
    let mut port_key = None;
    if let Some(p) = workload {
        let top = mode(&p.spec.mtls);
        match top {
            MtlsMode::Strict => strict = true,
            MtlsMode::Permissive | MtlsMode::Disable => strict = false,
            MtlsMode::Unset => {}
        }
        let levels: Vec<MtlsMode> = p.spec.port_level_mtls.values().map(|m| m.mode).collect();
        let key = format!("{}/{}", w.namespace, converted_name(p));
        if !levels.is_empty() {
            match top {
                MtlsMode::Strict => {
                    if levels.iter().any(|m| matches!(m, MtlsMode::Permissive | MtlsMode::Disable))
                    {
                        port_key = Some(key);
                        strict = false;
                    }
                }
                MtlsMode::Permissive | MtlsMode::Disable => {
                    if levels.contains(&MtlsMode::Strict) {
                        port_key = Some(key);
                    }
                }
                MtlsMode::Unset if strict => {
                    if levels.contains(&MtlsMode::Permissive) {
                        port_key = Some(key);
                        strict = false;
                    }
                }
                MtlsMode::Unset => {
                    if levels.contains(&MtlsMode::Strict) {
                        port_key = Some(key);
                    }
                }
            }
        }
    }
    let mut keys = BTreeSet::new();
    if strict {
        keys.insert(format!("{ROOT_NAMESPACE}/{STATIC_STRICT}"));
    }
    keys.extend(port_key);
    keys.into_iter().collect()
}

/// Why a mesh cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rendering ztunnel's config: {0}")]
pub struct RenderError(pub String);

fn selects(s: &Service, w: &Workload) -> bool {
    s.namespace == w.namespace
        && s.selector.as_ref().is_some_and(|sel| {
            !sel.is_empty() && sel.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        })
}

/// The whole config file for `mesh`: the same text for every node (each ztunnel serves the
/// workloads whose `node` is its `NODE_NAME`).
pub fn render(mesh: &MeshSpec) -> Result<String, RenderError> {
    for s in &mesh.services {
        if !s.endpoints.is_empty() {
            return Err(RenderError(format!(
                "service {} lists endpoint addresses; only selector endpoints are rendered",
                s.qualified_name()
            )));
        }
    }
    let aps: Vec<(&AuthorizationPolicy, Authorization)> = mesh
        .policies
        .iter()
        .filter_map(|p| match p {
            PolicyObject::AuthorizationPolicy(ap) => convert_authorization(ap).map(|a| (ap, a)),
            PolicyObject::PeerAuthentication(_) => None,
        })
        .collect();
    let pas: Vec<&PeerAuthentication> = mesh
        .policies
        .iter()
        .filter_map(|p| match p {
            PolicyObject::PeerAuthentication(pa) => Some(pa),
            PolicyObject::AuthorizationPolicy(_) => None,
        })
        .collect();

    let mut out = String::from(
        "# ztunnel local config (LOCAL_XDS_PATH), rendered by ambient-testbed from the scenario's mesh\n",
    );
    out.push_str("workloads:\n");
    for w in &mesh.workloads {
        let selected: BTreeSet<String> = aps
            .iter()
            .filter(|(ap, a)| {
                a.scope == Scope::WorkloadSelector
                    && (a.namespace == w.namespace || a.namespace == ROOT_NAMESPACE)
                    && labels_match(&ap.spec.selector, w)
            })
            .map(|(_, a)| a.key())
            .collect();
        let mut policies: Vec<String> = selected.into_iter().collect();
        policies.extend(peer_auth_keys(&pas, w));
        let services: Vec<String> = mesh
            .services
            .iter()
            .filter(|s| selects(s, w))
            .map(|s| {
                let ports: Vec<String> =
                    s.ports.iter().map(|p| format!("{}: {}", p.port, p.target_port)).collect();
                format!(
                    "{}: {{{}}}",
                    q(&format!("{}/{}", s.namespace, hostname(&s.name, &s.namespace))),
                    ports.join(", ")
                )
            })
            .collect();
        let quoted: Vec<String> = policies.iter().map(|p| q(p)).collect();
        let _ = writeln!(out, "- uid: {}", q(&workload_uid(&w.namespace, &w.name)));
        let _ = writeln!(out, "  name: {}", q(&w.name));
        let _ = writeln!(out, "  namespace: {}", q(&w.namespace));
        let _ = writeln!(out, "  serviceAccount: {}", q(&w.service_account));
        let _ = writeln!(out, "  trustDomain: {}", q(&mesh.trust_domain));
        let _ = writeln!(out, "  workloadIps: [{}]", q(&w.ip.to_string()));
        let _ = writeln!(out, "  node: {}", q(&w.node));
        let _ = writeln!(out, "  network: \"\"");
        let _ = writeln!(out, "  clusterId: {}", q(CLUSTER_ID));
        let _ = writeln!(out, "  protocol: {}", if w.captured { "HBONE" } else { "TCP" });
        let _ = writeln!(out, "  status: Healthy");
        let _ = writeln!(out, "  authorizationPolicies: [{}]", quoted.join(", "));
        let _ = writeln!(out, "  services: {{{}}}", services.join(", "));
    }
    out.push_str("services:\n");
    for s in &mesh.services {
        let ports: Vec<String> =
            s.ports.iter().map(|p| format!("{}: {}", p.port, p.target_port)).collect();
        let _ = writeln!(out, "- name: {}", q(&s.name));
        let _ = writeln!(out, "  namespace: {}", q(&s.namespace));
        let _ = writeln!(out, "  hostname: {}", q(&hostname(&s.name, &s.namespace)));
        let _ = writeln!(out, "  vips: [{}]", q(&format!("/{}", s.vip)));
        let _ = writeln!(out, "  ports: {{{}}}", ports.join(", "));
    }
    out.push_str("policies:\n");
    let mut all: BTreeMap<String, Authorization> = BTreeMap::new();
    for (_, a) in aps {
        all.insert(a.key(), a);
    }
    if !pas.is_empty() {
        let strict = Authorization {
            name: STATIC_STRICT.into(),
            namespace: ROOT_NAMESPACE.into(),
            scope: Scope::WorkloadSelector,
            allow: false,
            rules: vec![vec![presence_deny()]],
        };
        all.insert(strict.key(), strict);
        for pa in &pas {
            let (root, nsp) = parent_peer_auths(&pas, &namespace_of(&pa.metadata));
            if let Some(a) = convert_peer_auth(pa, nsp, root) {
                all.insert(a.key(), a);
            }
        }
    }
    for a in all.values() {
        a.render(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
