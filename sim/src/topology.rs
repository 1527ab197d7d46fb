//! The simulated cluster's network namespaces and the links between them, built from a
//! [`World`].
//!
//! Every pod, every node and every external host is one [`kernel::Netns`] (a "slot"). How they
//! are wired (a stated simplification of a CNI; the kernel harness may wire differently, which
//! the Outcome never shows because nodes are not part of it):
//!
//! ```text
//!   pod 10.0.1.2/24 ─eth0─┐                               ┌─eth0─ pod 10.0.2.2/24
//!   pod 10.0.1.3/24 ─eth0─┤ cni@node-a        cni@node-b  ├─eth0─ …
//!                  node-a cni0 10.0.1.1/24   node-b cni0 10.0.2.1/24
//!                  node-a eth0 172.18.0.2 ─┬─ underlay ─┬─ node-b eth0 172.18.0.3
//!                                          └── external host eth0 203.0.113.10/32
//! ```
//!
//! - A pod has `eth0` with its address in the node's /24 and a default route via the node's
//!   gateway; a captured pod also gets the in-pod rules and policy routing of its `Capture`.
//!   Pods of one node share a bridge-like segment (`cni@node`), so same-node traffic goes
//!   pod to pod without crossing the node's namespace, as on a bridge without
//!   `bridge-nf-call-iptables`.
//! - A node forwards (`ip_forward` 1) between its pods' segment and the underlay
//!   (`172.18.0.0/16`, node *i* at `172.18.0.<i+2>`), with a route per other node's pod subnet
//!   and per external host. Nodes load no rules, so their conntrack is off (the kernel tracks
//!   only where a rule needs it) and there is no kube-proxy: service VIPs mean something only to
//!   captured clients, whose proxy resolves them.
//! - An external host has its address as a /32 on `eth0`, the underlay on-link and a route per
//!   pod subnet via its node.
//!
//! Pods created later by `add-pod` faults get their slot (and substrate host) when the topology
//! is built — turmoil-net cannot add hosts once running — and come alive at their step.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ambient_scenarios::BackendError;
use ambient_scenarios::world::{Action, Fault, ObjectKey, Pod, World};
use turmoil_net::{HostId, Net};

use ambient_kernel::{self as kernel, IfIndex, RestoreOptions};

/// The underlay network the nodes (and external hosts) share.
pub const UNDERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 18, 0, 0), 16);

/// The substrate's private addresses (turmoil-net hosts); the model never sees them. Hosts
/// take `240.0.0.1` upwards; `241.0.0.0/8` is the loopback alias (`substrate.rs`), so there is
/// room for [`MAX_NAMESPACES`].
const SUBSTRATE_BASE: u32 = u32::from_be_bytes([240, 0, 0, 1]);

/// Namespaces whose host address stays below the loopback alias.
const MAX_NAMESPACES: usize = (1 << 24) - 1;

/// Index of a network namespace in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsId(pub u32);

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns#{}", self.0)
    }
}

/// What a namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Pod { key: ObjectKey, node: usize, captured: bool },
    Node { index: usize },
    External { name: String },
}

/// The turmoil-net host that owns a namespace's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    pub id: HostId,
    /// Its private substrate address (240.0.0.0/4).
    pub addr: Ipv4Addr,
}

/// Index of a segment (an L2 domain) in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u32);

/// An L2 domain: who answers for which address on it.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub name: String,
    /// Address on this segment → the namespace and interface that own it.
    pub members: BTreeMap<Ipv4Addr, (NetnsId, IfIndex)>,
}

/// One network namespace.
#[derive(Debug)]
pub struct Slot {
    /// How the Outcome, traces and pcaps name it: `client.default`, `node-a`, `web`.
    pub label: String,
    pub role: Role,
    pub model: kernel::Netns,
    /// Pods and external hosts have sockets; nodes have none.
    pub host: Option<Host>,
    /// False before its `add-pod` step and after `delete-pod`.
    pub alive: bool,
    /// Interfaces attached to segments.
    pub links: Vec<(IfIndex, SegmentId)>,
    /// The address it answers for on its segment (pods and hosts).
    pub addr: Option<Ipv4Addr>,
}

/// Every namespace and segment of a run.
#[derive(Debug)]
pub struct Topology {
    pub slots: Vec<Slot>,
    pub segments: Vec<Segment>,
    /// Node namespaces by node index.
    pub nodes: Vec<NetnsId>,
    /// The pods that exist now.
    pub pods: BTreeMap<ObjectKey, NetnsId>,
    /// The namespace each `add-pod` step (by step index) brings to life.
    pub added: BTreeMap<usize, NetnsId>,
    pub externals: BTreeMap<String, NetnsId>,
    /// Substrate address → namespace.
    pub by_host_addr: BTreeMap<Ipv4Addr, NetnsId>,
    underlay: SegmentId,
}

fn node_underlay_ip(index: usize) -> Ipv4Addr {
    let base = u32::from(UNDERLAY.0);
    Ipv4Addr::from(base + 2 + index as u32)
}

fn err(e: impl fmt::Display) -> BackendError {
    BackendError::new(e.to_string())
}

impl Topology {
    /// Builds every namespace the run will need and registers a substrate host for each one
    /// that has sockets.
    pub fn build(world: &World, net: &mut Net) -> Result<Topology, BackendError> {
        let mut t = Topology {
            slots: Vec::new(),
            segments: vec![Segment { name: "underlay".into(), members: BTreeMap::new() }],
            nodes: Vec::new(),
            pods: BTreeMap::new(),
            added: BTreeMap::new(),
            externals: BTreeMap::new(),
            by_host_addr: BTreeMap::new(),
            underlay: SegmentId(0),
        };
        if world.nodes.len() > 200 {
            return Err(err("the simulator supports at most 200 nodes"));
        }
        let added = world
            .steps
            .iter()
            .filter(|s| matches!(s.action, Action::Fault(Fault::AddPod { .. })))
            .count();
        let namespaces = world.nodes.len() + world.external.len() + world.pods.len() + added;
        if namespaces > MAX_NAMESPACES {
            return Err(err(format!(
                "{namespaces} namespaces: the simulator supports at most {MAX_NAMESPACES}"
            )));
        }
        for node in &world.nodes {
            let cni = t.add_segment(format!("cni@{}", node.name));
            let mut model = kernel::Netns::new();
            model.forwarding = true;
            let cmds = [
                format!("addr add {}/24 dev cni0", node.gateway),
                format!("addr add {}/{} dev eth0", node_underlay_ip(node.index), UNDERLAY.1),
            ];
            for c in &cmds {
                model.ip(c).map_err(|e| err(format!("node {}: ip {c}: {e}", node.name)))?;
            }
            for other in world.nodes.iter().filter(|o| o.index != node.index) {
                let c = format!(
                    "route add {}/24 via {} dev eth0",
                    other.pod_subnet,
                    node_underlay_ip(other.index)
                );
                model.ip(&c).map_err(|e| err(format!("node {}: ip {c}: {e}", node.name)))?;
            }
            for host in world.external.values() {
                let c = format!("route add {}/32 dev eth0", host.ip);
                model.ip(&c).map_err(|e| err(format!("node {}: ip {c}: {e}", node.name)))?;
            }
            let id = t.push(node.name.clone(), Role::Node { index: node.index }, model, None);
            t.attach(id, "cni0", cni, Some(node.gateway))?;
            t.attach(id, "eth0", t.underlay, Some(node_underlay_ip(node.index)))?;
            t.nodes.push(id);
        }
        for host in world.external.values() {
            let (net_addr, len) = UNDERLAY;
            let mask = u32::MAX << (32 - u32::from(len));
            if u32::from(host.ip) & mask == u32::from(net_addr) {
                return Err(err(format!(
                    "external host {} has {}, inside the simulator's node network {net_addr}/{len}",
                    host.name, host.ip
                )));
            }
            let mut model = kernel::Netns::new();
            let mut cmds = vec![
                format!("addr add {}/32 dev eth0", host.ip),
                format!("route add {net_addr}/{len} dev eth0"),
            ];
            for node in &world.nodes {
                cmds.push(format!(
                    "route add {}/24 via {} dev eth0",
                    node.pod_subnet,
                    node_underlay_ip(node.index)
                ));
            }
            for c in &cmds {
                model.ip(c).map_err(|e| err(format!("host {}: ip {c}: {e}", host.name)))?;
            }
            let role = Role::External { name: host.name.clone() };
            let id = t.push(host.name.clone(), role, model, Some(net));
            t.slots[id.0 as usize].addr = Some(host.ip);
            t.attach(id, "eth0", t.underlay, Some(host.ip))?;
            t.externals.insert(host.name.clone(), id);
        }
        for pod in world.pods.values() {
            let id = t.add_pod(world, pod, net)?;
            t.bring_up(id);
            t.pods.insert(pod.key.clone(), id);
        }
        for step in &world.steps {
            if let Action::Fault(Fault::AddPod { pod, .. }) = &step.action {
                let id = t.add_pod(world, pod, net)?;
                t.added.insert(step.index, id);
            }
        }
        Ok(t)
    }

    fn add_segment(&mut self, name: String) -> SegmentId {
        self.segments.push(Segment { name, members: BTreeMap::new() });
        SegmentId(self.segments.len() as u32 - 1)
    }

    fn push(
        &mut self,
        label: String,
        role: Role,
        model: kernel::Netns,
        net: Option<&mut Net>,
    ) -> NetnsId {
        let id = NetnsId(self.slots.len() as u32);
        let host = net.map(|net| {
            let addr = Ipv4Addr::from(SUBSTRATE_BASE + id.0);
            let hid = net.add_host(IpAddr::V4(addr));
            self.by_host_addr.insert(addr, id);
            Host { id: hid, addr }
        });
        let alive = matches!(role, Role::Node { .. } | Role::External { .. });
        self.slots.push(Slot { label, role, model, host, alive, links: Vec::new(), addr: None });
        id
    }

    /// Attaches `iface` of `id` to a segment; a live namespace's address joins it now.
    fn attach(
        &mut self,
        id: NetnsId,
        iface: &str,
        seg: SegmentId,
        addr: Option<Ipv4Addr>,
    ) -> Result<(), BackendError> {
        let slot = &mut self.slots[id.0 as usize];
        let ifindex = slot
            .model
            .interface(iface)
            .ok_or_else(|| err(format!("{}: no interface {iface}", slot.label)))?;
        slot.links.push((ifindex, seg));
        if slot.alive
            && let Some(a) = addr
        {
            self.segments[seg.0 as usize].members.insert(a, (id, ifindex));
        }
        Ok(())
    }

    fn add_pod(
        &mut self,
        world: &World,
        pod: &Pod,
        net: &mut Net,
    ) -> Result<NetnsId, BackendError> {
        let node = world
            .node(&pod.node)
            .ok_or_else(|| err(format!("pod {}: unknown node {}", pod.key, pod.node)))?;
        let mut model = kernel::Netns::new();
        let at = |e: String| err(format!("pod {}: {e}", pod.key));
        model.ip(&format!("addr add {}/24 dev eth0", pod.ip)).map_err(at)?;
        model.ip(&format!("route add default via {} dev eth0", node.gateway)).map_err(at)?;
        if let Some(capture) = &pod.capture {
            model
                .restore(&capture.rules, RestoreOptions { noflush: true, counters: false })
                .map_err(|e| at(format!("in-pod rules: {e}")))?;
            for c in capture.routing.ip_commands() {
                let c = c.strip_prefix("ip ").unwrap_or(&c).to_string();
                model.ip(&c).map_err(|e| at(format!("ip {c}: {e}")))?;
            }
        }
        let role =
            Role::Pod { key: pod.key.clone(), node: node.index, captured: pod.is_captured() };
        let id = self.push(pod.label(), role, model, Some(net));
        self.slots[id.0 as usize].addr = Some(pod.ip);
        let cni = self.cni_segment(node.index);
        self.attach(id, "eth0", cni, Some(pod.ip))?;
        Ok(id)
    }

    fn cni_segment(&self, node: usize) -> SegmentId {
        SegmentId(node as u32 + 1)
    }

    pub fn slot(&self, id: NetnsId) -> &Slot {
        &self.slots[id.0 as usize]
    }

    pub fn slot_mut(&mut self, id: NetnsId) -> &mut Slot {
        &mut self.slots[id.0 as usize]
    }

    /// A pod comes alive: its address answers on its segment.
    pub fn bring_up(&mut self, id: NetnsId) {
        let slot = &mut self.slots[id.0 as usize];
        slot.alive = true;
        if let (Some(addr), Some(&(ifindex, seg))) = (slot.addr, slot.links.first()) {
            self.segments[seg.0 as usize].members.insert(addr, (id, ifindex));
        }
    }

    /// A pod is deleted: it leaves its segment (its veth is gone) and nothing reaches it.
    pub fn tear_down(&mut self, id: NetnsId) {
        let slot = &mut self.slots[id.0 as usize];
        slot.alive = false;
        for (_, seg) in &slot.links {
            self.segments[seg.0 as usize].members.retain(|_, (n, _)| *n != id);
        }
    }

    /// The segment an interface of `id` is attached to.
    pub fn segment_of(&self, id: NetnsId, ifindex: IfIndex) -> Option<SegmentId> {
        self.slot(id).links.iter().find(|(i, _)| *i == ifindex).map(|(_, s)| *s)
    }

    /// Who answers for `next_hop` on a segment.
    pub fn neighbour(&self, seg: SegmentId, next_hop: Ipv4Addr) -> Option<(NetnsId, IfIndex)> {
        self.segments[seg.0 as usize].members.get(&next_hop).copied()
    }

    pub fn is_underlay(&self, seg: SegmentId) -> bool {
        seg == self.underlay
    }

    /// The node a namespace belongs to (pods: their node; nodes: themselves).
    pub fn node_of(&self, id: NetnsId) -> Option<usize> {
        match self.slot(id).role {
            Role::Pod { node, .. } | Role::Node { index: node } => Some(node),
            Role::External { .. } => None,
        }
    }
}
