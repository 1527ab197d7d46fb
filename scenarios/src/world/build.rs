//! The decoded document → a [`World`]: names resolved, defaults applied, addresses assigned,
//! everything cross-checked. Problems are collected in the file's diagnostics; a World is
//! returned only when there were none (warnings aside).
//!
//! Steps are walked in order with the state they change (pods deleted and added, proxies
//! crashed and started, policies applied and removed, connection ids seen), so a reference is
//! checked against the world as it is at that step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ambient_proxy::inpod::{
    DNS_CAPTURE_PORT, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT,
};

use super::{Capture, ExternalHost, Node, ObjectKey, Peer, PeerKind, Pod, Service, World};
use crate::decode::ast::{Doc, PodDoc};
use crate::diag::{At, Diagnostics, Located, list};
use crate::rules::{InpodRules, PolicyRouting};
use crate::values::{self, NameRef};

/// Most nodes a scenario may have (one /24 each under 10.0.0.0/16).
const MAX_NODES: usize = 255;
/// Ports the node proxy binds inside every captured pod's netns.
const PROXY_PORTS: [u16; 4] =
    [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT, DNS_CAPTURE_PORT];

/// What a connect id refers to, for checks of later references.
#[derive(Debug, Clone)]
pub(super) struct ConnInfo {
    pub at: At,
    pub background: bool,
}

/// The world as it stands at some step, while building.
pub(super) struct Builder<'d> {
    pub d: &'d mut Diagnostics,
    pub file: String,
    pub trust_domain: String,
    pub nodes: Vec<Node>,
    /// Pods placed on each node so far (for default addresses).
    node_pods: BTreeMap<String, u32>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Pods deleted, with the step that deleted them.
    pub deleted: BTreeMap<ObjectKey, usize>,
    /// Addresses in use, with what uses them.
    addrs: BTreeMap<Ipv4Addr, (String, At)>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub external: BTreeMap<String, ExternalHost>,
    /// Policies in force: key → (kind, where written).
    pub policies: BTreeMap<ObjectKey, (&'static str, At)>,
    /// Policies removed, with the step that removed them.
    pub removed_policies: BTreeMap<ObjectKey, usize>,
    /// Crashed proxies: node → the step that crashed it.
    pub proxies_down: BTreeMap<String, usize>,
    /// Node links with a fault on them (unordered pairs).
    pub faulted_links: BTreeSet<(String, String)>,
    pub conns: BTreeMap<String, ConnInfo>,
    /// Ids of lookups (`resolve` steps), where written.
    pub lookups: BTreeMap<String, At>,
    /// Every connect id of the document with its first step, to explain references to
    /// connections that are opened after the check naming them.
    pub all_conns: BTreeMap<String, usize>,
}

/// Builds the World of a decoded document; `None` if any error was found.
pub(crate) fn build(doc: Doc, file: &str, stem: &str, d: &mut Diagnostics) -> Option<World> {
    let id = match &doc.scenario {
        Some(id) => id.value.clone(),
        None => match values::check_id(stem) {
            Ok(()) => stem.to_string(),
            Err(e) => {
                d.error_at(
                    &doc.at,
                    format!(
                        "the file name is not a usable scenario id ({e}); add `scenario: <id>`"
                    ),
                );
                String::new()
            }
        },
    };
    let mut b = Builder {
        d,
        file: file.to_string(),
        trust_domain: doc.cluster.trust_domain.value.clone(),
        nodes: Vec::new(),
        node_pods: BTreeMap::new(),
        pods: BTreeMap::new(),
        deleted: BTreeMap::new(),
        addrs: BTreeMap::new(),
        services: BTreeMap::new(),
        external: BTreeMap::new(),
        policies: BTreeMap::new(),
        removed_policies: BTreeMap::new(),
        proxies_down: BTreeMap::new(),
        faulted_links: BTreeSet::new(),
        conns: BTreeMap::new(),
        lookups: BTreeMap::new(),
        all_conns: BTreeMap::new(),
    };
    for (i, s) in doc.steps.iter().enumerate() {
        if let crate::decode::ast::StepKind::Connect(c) = &s.kind {
            b.all_conns.entry(c.id.value.clone()).or_insert(i);
        }
    }
    b.nodes(&doc.cluster.nodes);
    for p in &doc.cluster.pods {
        if let Some(pod) = b.pod(p) {
            b.pods.insert(pod.key.clone(), pod);
        }
    }
    b.services(&doc);
    b.external_hosts(&doc);
    let mut policies = Vec::new();
    for p in &doc.policies {
        if let Some(policy) = b.apply_policy(p, false) {
            policies.push(policy);
        }
    }
    let initial_pods = b.pods.clone();
    let steps = b.steps(&doc.steps);
    let expect = match &doc.expect {
        Some(e) => b.expectations(e),
        None => Default::default(),
    };
    if b.d.has_errors() {
        return None;
    }
    let tags = doc.tags.iter().map(|t| t.value.clone()).collect();
    Some(World {
        file: file.to_string(),
        id,
        id_pos: doc.scenario.as_ref().map_or(crate::diag::Pos::new(1, 1), |s| s.at.pos),
        description: doc.description,
        tags,
        seed: doc.seed,
        trust_domain: b.trust_domain,
        nodes: b.nodes,
        pods: initial_pods,
        services: b.services,
        external: b.external,
        policies,
        steps,
        expect,
        warnings: Vec::new(),
    })
}

impl Builder<'_> {
    fn nodes(&mut self, names: &[Located<String>]) {
        for n in names {
            if let Some(first) = self.nodes.iter().position(|x| x.name == n.value) {
                let msg =
                    format!("duplicate node {:?} (first at {})", n.value, names[first].at.pos);
                self.d.error_at(&n.at, msg);
                continue;
            }
            if self.nodes.len() == MAX_NODES {
                self.d.error_at(&n.at, format!("a scenario has at most {MAX_NODES} nodes"));
                break;
            }
            let index = self.nodes.len();
            let third = (index + 1) as u8;
            self.nodes.push(Node {
                name: n.value.clone(),
                index,
                pod_subnet: Ipv4Addr::new(10, 0, third, 0),
                gateway: Ipv4Addr::new(10, 0, third, 1),
            });
        }
    }

    pub(super) fn node_names(&self) -> String {
        list(self.nodes.iter().map(|n| n.name.as_str()))
    }

    /// Checks a node name; reports "unknown node" at `at` otherwise.
    pub(super) fn known_node(&mut self, name: &str, at: &At) -> Option<Node> {
        let node = self.nodes.iter().find(|n| n.name == name).cloned();
        if node.is_none() {
            let msg = format!("unknown node {name:?}; nodes are {}", self.node_names());
            self.d.error_at(at, msg);
        }
        node
    }

    /// Claims an address for `what`; reports a clash with whatever holds it already.
    fn claim(&mut self, ip: Ipv4Addr, what: String, at: &At) -> bool {
        if let Some((other, other_at)) = self.addrs.get(&ip) {
            let msg = format!("address {ip} is already used by {other} (at {})", other_at.pos);
            self.d.error_at(at, msg);
            return false;
        }
        self.addrs.insert(ip, (what, at.clone()));
        true
    }

    fn release(&mut self, ip: Ipv4Addr) {
        self.addrs.remove(&ip);
    }

    /// The node whose pod subnet holds `ip`, if any.
    fn subnet_owner(&self, ip: Ipv4Addr) -> Option<&Node> {
        let o = ip.octets();
        self.nodes.iter().find(|n| n.pod_subnet.octets()[..3] == o[..3])
    }

    /// Resolves a pod (from `cluster.pods` or `add-pod`): node, key, address, capture.
    pub(super) fn pod(&mut self, p: &PodDoc) -> Option<Pod> {
        let node = self.known_node(&p.node.value, &p.node.at)?;
        let key = ObjectKey::new(&p.name.value, &p.namespace.value);
        if let Some(existing) = self.pods.get(&key) {
            let msg = format!("duplicate pod {key} (first at {})", existing.at.pos);
            self.d.error_at(&p.name.at, msg);
            return None;
        }
        let slot = self.node_pods.entry(node.name.clone()).or_default();
        let k = *slot;
        *slot += 1;
        let ip = match &p.ip {
            Some(ip) => {
                let o = ip.value.octets();
                if node.pod_subnet.octets()[..3] != o[..3] || !(2..=254).contains(&o[3]) {
                    let msg = format!(
                        "{} is outside {}'s pod addresses {}.2-254",
                        ip.value,
                        node.name,
                        &node.pod_subnet.to_string().trim_end_matches(".0")
                    );
                    self.d.error_at(&ip.at, msg);
                    return None;
                }
                ip.value
            }
            None if k + 2 > 254 => {
                let msg = format!(
                    "too many pods on {} for default addresses; give this pod an `ip:`",
                    node.name
                );
                self.d.error_at(&p.at, msg);
                return None;
            }
            None => {
                let o = node.pod_subnet.octets();
                Ipv4Addr::new(o[0], o[1], o[2], (k + 2) as u8)
            }
        };
        let at_ip = p.ip.as_ref().map_or(p.at.clone(), |ip| ip.at.clone());
        if !self.claim(ip, format!("pod {key}"), &at_ip) {
            return None;
        }
        let mut ok = true;
        if p.ambient {
            for s in &p.serve {
                if PROXY_PORTS.contains(&s.value.0) {
                    let msg = format!(
                        "port {} is taken by the node proxy in a captured pod (it binds {})",
                        s.value.0,
                        list(PROXY_PORTS.iter().map(u16::to_string))
                    );
                    self.d.error_at(&s.at, msg);
                    ok = false;
                }
            }
        }
        if !ok {
            self.release(ip);
            return None;
        }
        let sa = p.service_account.value.clone();
        let capture = p.ambient.then(|| Capture {
            rules: InpodRules::default().restore_text(),
            routing: PolicyRouting::default(),
        });
        Some(Pod {
            identity: format!("spiffe://{}/ns/{}/sa/{sa}", self.trust_domain, key.namespace),
            key,
            node: node.name,
            ip,
            service_account: sa,
            labels: p.labels.clone(),
            serve: p.serve.iter().map(|s| s.value).collect(),
            capture,
            at: p.at.clone(),
        })
    }

    /// Frees a deleted pod's address (an added pod may take it).
    pub(super) fn remove_pod(&mut self, key: &ObjectKey, step: usize) -> Option<Pod> {
        let pod = self.pods.remove(key)?;
        self.release(pod.ip);
        self.deleted.insert(key.clone(), step);
        Some(pod)
    }

    pub(super) fn add_pod(&mut self, pod: Pod) {
        self.deleted.remove(&pod.key);
        self.pods.insert(pod.key.clone(), pod);
    }

    fn external_hosts(&mut self, doc: &Doc) {
        for h in &doc.cluster.external {
            if let Some(first) = self.external.get(&h.name.value) {
                let msg = format!(
                    "duplicate external host {:?} (first at {})",
                    h.name.value, first.at.pos
                );
                self.d.error_at(&h.name.at, msg);
                continue;
            }
            if let Some(node) = self.subnet_owner(h.ip.value) {
                let msg = format!(
                    "{} lies in {}'s pod subnet; external hosts are outside the cluster",
                    h.ip.value, node.name
                );
                self.d.error_at(&h.ip.at, msg);
                continue;
            }
            if !self.claim(h.ip.value, format!("external host {}", h.name.value), &h.ip.at) {
                continue;
            }
            let serve = h.serve.iter().map(|s| s.value).collect();
            let dns = match &h.dns {
                Some(doc) => match self.dns_zone(&h.name.value, &serve, doc) {
                    Some(z) => Some(z),
                    None => continue,
                },
                None => None,
            };
            let host = ExternalHost {
                name: h.name.value.clone(),
                ip: h.ip.value,
                serve,
                dns,
                at: h.at.clone(),
            };
            self.external.insert(host.name.clone(), host);
        }
    }

    fn services(&mut self, doc: &Doc) {
        // Pods that will ever exist, for the "selects nothing" warning.
        let later: Vec<&PodDoc> = doc
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                crate::decode::ast::StepKind::Fault(crate::decode::ast::FaultDoc::AddPod(p)) => {
                    Some(&**p)
                }
                _ => None,
            })
            .collect();
        for s in &doc.cluster.services {
            let key = ObjectKey::new(&s.name.value, &s.namespace.value);
            if let Some(first) = self.services.get(&key) {
                let msg = format!("duplicate service {key} (first at {})", first.at.pos);
                self.d.error_at(&s.name.at, msg);
                continue;
            }
            if let Some(node) = self.subnet_owner(s.vip.value) {
                let msg = format!(
                    "VIP {} lies in {}'s pod subnet; use a service range such as 10.96.0.0/16",
                    s.vip.value, node.name
                );
                self.d.error_at(&s.vip.at, msg);
                continue;
            }
            if !self.claim(s.vip.value, format!("service {key}"), &s.vip.at) {
                continue;
            }
            let mut ports: Vec<_> = s.ports.iter().map(|p| p.value).collect();
            ports.sort();
            let mut service = Service {
                key: key.clone(),
                vip: s.vip.value,
                ports,
                selector: s.selector.value.clone(),
                endpoints: Vec::new(),
                at: s.at.clone(),
            };
            service.endpoints =
                self.pods.values().filter(|p| service.selects(p)).map(|p| p.key.clone()).collect();
            if service.selector.is_empty() {
                self.d.warning_at(
                    &s.selector.at,
                    "an empty selector selects no pods: the service has no endpoints",
                );
            } else if service.endpoints.is_empty() {
                let matches_later = later.iter().any(|p| {
                    p.namespace.value == key.namespace
                        && service.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                });
                if !matches_later {
                    let sel: Vec<String> =
                        service.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let msg = format!(
                        "selector {} matches no pod in namespace {}: the service has no endpoints",
                        sel.join(","),
                        key.namespace
                    );
                    self.d.warning_at(&s.selector.at, msg);
                }
            }
            self.services.insert(key, service);
        }
    }

    /// The pods and hosts a name may refer to, for "unknown" messages.
    pub(super) fn peer_names(&self) -> String {
        let pods = self.pods.keys().map(ToString::to_string);
        let hosts = self.external.keys().cloned();
        list(pods.chain(hosts))
    }

    /// Explains why `r` names no live pod (deleted, or unknown).
    pub(super) fn missing_pod(&self, key: &ObjectKey) -> String {
        match self.deleted.get(key) {
            Some(step) => format!("pod {key} was deleted at steps[{step}]"),
            None => format!("unknown pod {key}; pods and hosts are {}", self.peer_names()),
        }
    }

    /// " (did you mean server.apps?)" when a name without namespace exists in another namespace.
    pub(super) fn namespace_hint(&self, r: &NameRef) -> String {
        if r.namespace.is_some() {
            return String::new();
        }
        let pods = self.pods.keys().filter(|k| k.name == r.name).map(ToString::to_string);
        let svcs = self.services.keys().filter(|k| k.name == r.name).map(ToString::to_string);
        let mut candidates: Vec<String> = pods.chain(svcs).collect();
        candidates.sort();
        candidates.dedup();
        match candidates.len() {
            0 => String::new(),
            _ => format!(" (did you mean {}?)", candidates.join(" or ")),
        }
    }

    /// A pod (`name` = `name.default`, or `name.namespace`) or external host (`name`).
    pub(super) fn peer(&mut self, r: &Located<NameRef>) -> Option<Peer> {
        let key = ObjectKey::new(&r.value.name, r.value.namespace.as_deref().unwrap_or("default"));
        let pod = self.pods.get(&key);
        let host =
            if r.value.namespace.is_none() { self.external.get(&r.value.name) } else { None };
        match (pod, host) {
            (Some(p), None) => Some(Peer { kind: PeerKind::Pod(p.key.clone()), ip: p.ip }),
            (None, Some(h)) => Some(Peer { kind: PeerKind::External(h.name.clone()), ip: h.ip }),
            (Some(_), Some(_)) => {
                let msg = format!(
                    "{:?} names both pod {key} and external host {}; rename one",
                    r.value.name, r.value.name
                );
                self.d.error_at(&r.at, msg);
                None
            }
            (None, None) => {
                let msg = match self.deleted.get(&key) {
                    Some(_) => self.missing_pod(&key),
                    None => format!(
                        "unknown pod or host \"{}\"{}; pods and hosts are {}",
                        r.value,
                        self.namespace_hint(&r.value),
                        self.peer_names()
                    ),
                };
                self.d.error_at(&r.at, msg);
                None
            }
        }
    }
}
