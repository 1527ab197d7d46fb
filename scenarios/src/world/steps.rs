//! Resolving steps and expect blocks against the world as it stands at each step.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use super::build::{Builder, ConnInfo};
use super::{Action, Check, Connect, Dest, Fault, NodeLink, ObjectKey, PeerKind, Step, Target};
use crate::decode::ast::{Between, ConnectDoc, ExpectDoc, FaultDoc, StepDoc, StepKind, ToDoc};
use crate::diag::{At, Located, list};
use crate::expect::{ConnExpect, ConnField, Expectations};
use crate::values::{NameRef, NodePair, TargetRef};

impl Builder<'_> {
    pub(super) fn steps(&mut self, docs: &[StepDoc]) -> Vec<Step> {
        let mut out = Vec::new();
        for (index, s) in docs.iter().enumerate() {
            let action = match &s.kind {
                StepKind::Connect(c) => self.connect(c).map(Action::Connect),
                StepKind::Fault(f) => self.fault(f, index).map(Action::Fault),
                StepKind::Wait(d) => Some(Action::Wait(*d)),
                StepKind::Resolve(r) => self.resolve(r, index, &s.at).map(Action::Resolve),
                StepKind::Check(e) => {
                    let expect = self.expectations(e);
                    let settles = expect
                        .connections
                        .keys()
                        .filter(|id| self.conns.get(*id).is_some_and(|c| c.background))
                        .cloned()
                        .collect();
                    Some(Action::Check(Check { expect, settles }))
                }
            };
            if let Some(action) = action {
                out.push(Step { index, at: s.at.clone(), action });
            }
        }
        out
    }

    fn connect(&mut self, c: &ConnectDoc) -> Option<Connect> {
        if let Some(first) = self.conns.get(&c.id.value) {
            let msg =
                format!("duplicate connection id {:?} (first at {})", c.id.value, first.at.pos);
            self.d.error_at(&c.id.at, msg);
        } else if let Some(first) = self.lookups.get(&c.id.value) {
            let msg = format!("duplicate id {:?} (first at {})", c.id.value, first.pos);
            self.d.error_at(&c.id.at, msg);
        } else {
            let info = ConnInfo { at: c.id.at.clone(), background: c.background };
            self.conns.insert(c.id.value.clone(), info);
        }
        let from = self.peer(&c.from);
        let (to, resolve) = match &c.to.value {
            ToDoc::Target(t) => (self.target(&Located::new(t.clone(), c.to.at.clone())), None),
            ToDoc::Host(name, port) => {
                let name = Located::new(name.clone(), c.to.at.clone());
                match from.as_ref().and_then(|f| self.host_target(f, &name, *port)) {
                    Some((t, lookup)) => (Some(t), Some(lookup)),
                    None => (None, None),
                }
            }
        };
        let expect = c.expect.as_ref().map(|e| self.conn_expect(e));
        Some(Connect {
            id: c.id.value.clone(),
            resolve,
            from: from?,
            to: to?,
            send: c.send,
            repeat: c.repeat,
            hold: c.hold,
            background: c.background,
            deadline: c.deadline,
            expect: expect.flatten(),
        })
    }

    /// A service, pod or external host by name (with a port), or an address.
    fn target(&mut self, t: &Located<TargetRef>) -> Option<Target> {
        let (r, port) = match &t.value {
            TargetRef::Ip(ip, port) => {
                let addr = SocketAddrV4::new(*ip, *port);
                return Some(Target { addr, dest: Dest::Address, label: addr.to_string() });
            }
            TargetRef::Name(r, port) => (r, *port),
        };
        let key = ObjectKey::new(&r.name, r.namespace.as_deref().unwrap_or("default"));
        let svc = self.services.get(&key);
        let pod = self.pods.get(&key);
        let host = if r.namespace.is_none() { self.external.get(&r.name) } else { None };
        let found: Vec<String> = [
            svc.map(|s| format!("service {}", s.key)),
            pod.map(|p| format!("pod {}", p.key)),
            host.map(|h| format!("external host {}", h.name)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if found.len() > 1 {
            let msg = format!(
                "{:?} is ambiguous: it names {}; rename one",
                r.to_string(),
                found.join(" and ")
            );
            self.d.error_at(&t.at, msg);
            return None;
        }
        if let Some(s) = svc {
            let Some(sp) = s.port(port) else {
                let ports = list(s.ports.iter().map(|p| p.port.to_string()));
                let msg = format!("service {} has no port {port}; its ports are {ports}", s.key);
                self.d.error_at(&t.at, msg);
                return None;
            };
            let label = format!("{}:{port}", s.key);
            let dest = Dest::Service { key: s.key.clone(), port: sp };
            return Some(Target { addr: SocketAddrV4::new(s.vip, port), dest, label });
        }
        if let Some(p) = pod {
            let label = format!("{}:{port}", p.key);
            return Some(Target {
                addr: SocketAddrV4::new(p.ip, port),
                dest: Dest::Pod(p.key.clone()),
                label,
            });
        }
        if let Some(h) = host {
            let label = format!("{}:{port}", h.name);
            let dest = Dest::External(h.name.clone());
            return Some(Target { addr: SocketAddrV4::new(h.ip, port), dest, label });
        }
        let msg = if self.deleted.contains_key(&key) {
            format!(
                "{}; to connect to its old address, write it as ip:port",
                self.missing_pod(&key)
            )
        } else {
            let services = self.services.keys().map(ToString::to_string);
            format!(
                "unknown target {:?}{}; services are {}; pods and hosts are {}",
                r.to_string(),
                self.namespace_hint(r),
                list(services),
                self.peer_names()
            )
        };
        self.d.error_at(&t.at, msg);
        None
    }

    fn link(&mut self, b: &Between) -> Option<NodeLink> {
        let a = self.known_node(&b.a.value, &b.a.at);
        let c = self.known_node(&b.b.value, &b.b.at);
        Some(NodeLink { a: a?.name, b: c?.name })
    }

    fn unordered(link: &NodeLink) -> (String, String) {
        if link.a <= link.b {
            (link.a.clone(), link.b.clone())
        } else {
            (link.b.clone(), link.a.clone())
        }
    }

    fn fault(&mut self, f: &FaultDoc, step: usize) -> Option<Fault> {
        Some(match f {
            FaultDoc::Partition(b) => {
                let link = self.link(b)?;
                self.faulted_links.insert(Self::unordered(&link));
                Fault::Partition(link)
            }
            FaultDoc::Latency(b, add) => {
                let link = self.link(b)?;
                self.faulted_links.insert(Self::unordered(&link));
                Fault::Latency { link, add: *add }
            }
            FaultDoc::Loss(b, rate) => {
                let link = self.link(b)?;
                self.faulted_links.insert(Self::unordered(&link));
                Fault::Loss { link, rate: *rate }
            }
            FaultDoc::Heal(None) => {
                self.faulted_links.clear();
                Fault::Heal(None)
            }
            FaultDoc::Heal(Some(b)) => {
                let link = self.link(b)?;
                if !self.faulted_links.remove(&Self::unordered(&link)) {
                    let msg = format!(
                        "no fault is in force between {} and {}; nothing to heal",
                        link.a, link.b
                    );
                    self.d.warning_at(&b.at, msg);
                }
                Fault::Heal(Some(link))
            }
            FaultDoc::Restart(n) | FaultDoc::Crash(n) | FaultDoc::Start(n) => {
                let node = self.known_node(&n.value, &n.at)?.name;
                let down = self.proxies_down.get(&node).copied();
                let start = matches!(f, FaultDoc::Start(_));
                match (down, start) {
                    (Some(at), false) => {
                        let msg = format!(
                            "proxy@{node} is not running (it crashed at steps[{at}]); use `start`"
                        );
                        self.d.error_at(&n.at, msg);
                        return None;
                    }
                    (None, true) => {
                        self.d.error_at(&n.at, format!("proxy@{node} is already running"));
                        return None;
                    }
                    _ => {}
                }
                match f {
                    FaultDoc::Restart(_) => Fault::RestartProxy(node),
                    FaultDoc::Crash(_) => {
                        self.proxies_down.insert(node.clone(), step);
                        Fault::CrashProxy(node)
                    }
                    _ => {
                        self.proxies_down.remove(&node);
                        Fault::StartProxy(node)
                    }
                }
            }
            FaultDoc::FlushConntrack(r) => Fault::FlushConntrack(self.peer(r)?),
            FaultDoc::DeletePod(r) => {
                let peer = self.peer(r)?;
                let PeerKind::Pod(key) = peer.kind else {
                    self.d.error_at(
                        &r.at,
                        format!("{:?} is an external host, not a pod", r.value.to_string()),
                    );
                    return None;
                };
                let pod = self.remove_pod(&key, step)?;
                let leaves = self
                    .services
                    .values()
                    .filter(|s| s.selects(&pod))
                    .map(|s| s.key.clone())
                    .collect();
                Fault::DeletePod { pod: key, leaves }
            }
            FaultDoc::AddPod(p) => {
                let pod = self.pod(p)?;
                let joins = self
                    .services
                    .values()
                    .filter(|s| s.selects(&pod))
                    .map(|s| s.key.clone())
                    .collect();
                self.add_pod(pod.clone());
                Fault::AddPod { pod: Box::new(pod), joins }
            }
            FaultDoc::Apply(p) => Fault::Apply(Box::new(self.apply_policy(p, true)?)),
            FaultDoc::Remove(r) => {
                let key = ObjectKey::new(
                    &r.value.name,
                    r.value.namespace.as_deref().unwrap_or("default"),
                );
                if self.policies.remove(&key).is_none() {
                    let msg = match self.removed_policies.get(&key) {
                        Some(at) => format!("policy {key} was already removed at steps[{at}]"),
                        None => {
                            let names = list(self.policies.keys().map(ToString::to_string));
                            format!(
                                "no policy {key} is in force here; policies in force are {names}"
                            )
                        }
                    };
                    self.d.error_at(&r.at, msg);
                    return None;
                }
                self.removed_policies.insert(key.clone(), step);
                Fault::Remove(key)
            }
        })
    }

    fn conn_expect(&mut self, e: &ConnExpect) -> Option<ConnExpect> {
        let before = self.d.error_count();
        for f in &e.fields {
            if let ConnField::Tunnel(Some(pair)) = &f.value {
                self.node_pair(pair, &f.at);
            }
        }
        (self.d.error_count() == before).then(|| e.clone())
    }

    fn node_pair(&mut self, pair: &NodePair, at: &At) -> bool {
        let a = self.known_node(&pair.from, at).is_some();
        let b = self.known_node(&pair.to, at).is_some();
        a && b
    }

    /// A pod's or host's canonical label, for conntrack and counter expectations.
    fn netns_label(&mut self, r: &Located<NameRef>) -> Option<(String, Option<ObjectKey>)> {
        let peer = self.peer(r)?;
        let key = match &peer.kind {
            PeerKind::Pod(k) => Some(k.clone()),
            PeerKind::External(_) => None,
        };
        Some((peer.label(), key))
    }

    /// An expect block, checked at the current point of the walk through the steps.
    pub(super) fn expectations(&mut self, e: &ExpectDoc) -> Expectations {
        let mut out = Expectations { at: e.at.clone(), ..Expectations::default() };
        for (id, ce) in &e.connections {
            if !self.conns.contains_key(&id.value) {
                // Connections are registered as their steps are walked, so an id not seen yet is
                // either opened after this check or does not exist.
                let msg = match self.all_conns.get(&id.value) {
                    Some(later) => format!(
                        "connection {:?} is opened later, at steps[{later}]; a check sees only connections opened before it",
                        id.value
                    ),
                    None => {
                        let ids = list(self.all_conns.keys());
                        format!("unknown connection id {:?}; ids are {ids}", id.value)
                    }
                };
                self.d.error_at(&id.at, msg);
                continue;
            }
            if let Some(ce) = self.conn_expect(ce) {
                out.connections.insert(id.value.clone(), ce);
            }
        }
        for t in &e.tunnels {
            let (pair, n) = &t.value;
            if self.node_pair(pair, &t.at) {
                out.tunnels.insert(pair.clone(), Located::new(*n, t.at.clone()));
            }
        }
        let mut seen: BTreeMap<String, At> = BTreeMap::new();
        let mut dup = |b: &mut Self, label: &str, at: &At, what: &str| {
            if let Some(first) = seen.get(&format!("{what}/{label}")) {
                b.d.error_at(
                    at,
                    format!("{label} is listed twice under {what} (first at {})", first.pos),
                );
                return true;
            }
            seen.insert(format!("{what}/{label}"), at.clone());
            false
        };
        for (r, entries) in &e.conntrack {
            let Some((label, _)) = self.netns_label(r) else { continue };
            if !dup(self, &label, &r.at, "conntrack") {
                out.conntrack.insert(label, entries.clone());
            }
        }
        for (r, rules) in &e.counters {
            let Some((label, key)) = self.netns_label(r) else { continue };
            if dup(self, &label, &r.at, "counters") {
                continue;
            }
            let capture = key.and_then(|k| self.pods.get(&k)).and_then(|p| p.capture.clone());
            let Some(capture) = capture else {
                self.d
                    .error_at(&r.at, format!("{label} is not captured: it has no rules to count"));
                continue;
            };
            let positions = capture.rule_positions();
            let mut checked = BTreeMap::new();
            for rule in rules {
                let (rr, n) = &rule.value;
                if positions.iter().any(|(p, _)| p == rr) {
                    checked.insert(rr.clone(), Located::new(*n, rule.at.clone()));
                    continue;
                }
                let in_chain = positions
                    .iter()
                    .filter(|(p, _)| p.table == rr.table && p.chain == rr.chain)
                    .count();
                let msg = if in_chain == 0 {
                    let chains: std::collections::BTreeSet<&str> = positions
                        .iter()
                        .filter(|(p, _)| p.table == rr.table)
                        .map(|(p, _)| p.chain.as_str())
                        .collect();
                    format!(
                        "{label} has no chain {} in table {}; its chains there are {}",
                        rr.chain,
                        rr.table.name(),
                        list(chains)
                    )
                } else {
                    format!(
                        "{label} has no rule {rr}: {}/{} has {in_chain} rules",
                        rr.table.name(),
                        rr.chain
                    )
                };
                self.d.error_at(&rule.at, msg);
            }
            out.counters.insert(label, checked);
        }
        out
    }
}
