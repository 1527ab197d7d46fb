//! The topology of a scenario as data: which namespaces, links, addresses and routes the harness
//! builds for a [`World`]. Pure (no kernel), so the layout is unit-tested and documented in one
//! place; [`super::topology`] carries it out.
//!
//! ```text
//!                                 ┌──────────── wan ────────────┐
//!                                 │ n0 100.127.0.1   h0 (proxy-  │
//!                                 │ n1 100.127.1.1   arp) ─────── eth0 203.0.113.10/32  [host web]
//!                                 └──┬────────────────┬─────────┘
//!                       100.127.0.2 wan           wan 100.127.1.2
//!   ┌──────────── node-a ───────────┴┐            ┌─┴──────────── node-b ────────────┐
//!   │ br0 10.0.1.1/24   n1 100.64.0.1 ──── pair ──── n0 100.64.0.2   br0 10.0.2.1/24   │
//!   │  ├ p0                          │            │                   ├ p1            │
//!   └──┼─────────────────────────────┘            └───────────────────┼───────────────┘
//!     eth0 10.0.1.2/24 [pod client]                                  eth0 10.0.2.2/24 [pod server]
//! ```
//!
//! - A **node** netns per node: a bridge `br0` holding the node's gateway address (`10.0.<i+1>.1/24`)
//!   with every pod's veth enslaved, IP forwarding on. The node's proxy runs on this namespace's
//!   worker thread; its sockets live in the pods' namespaces (in-pod mode).
//! - A **pod** netns per pod: `eth0` with the pod's address in its node's /24, default route via
//!   the gateway. A captured pod also gets the in-pod rules and the fwmark rule / local route.
//! - Every pair of nodes is joined by its own veth pair (`n<j>` in node i, a /30 from
//!   `100.64.0.0/16`) and each node routes the other nodes' pod subnets over it: this is the
//!   **inter-node link** that link faults act on.
//! - A **wan** netns is the outside world: each node has an uplink to it (`100.127.<i>.0/24`, the
//!   node's default route) and each external host hangs off it on its own veth (`h<k>`, proxy ARP,
//!   the host's address as a /32 with a device default route).
//!
//! `100.64.0.0/10` is the harness's own; a scenario whose pods or hosts use it is refused.

use std::net::Ipv4Addr;

use ambient_scenarios::World;

/// The harness's own address space (transit links); scenario addresses must stay out of it.
pub const INFRA_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// The bridge of a node netns.
pub const BRIDGE: &str = "br0";
/// A node's uplink to the wan.
pub const UPLINK: &str = "wan";
/// A pod's or host's interface.
pub const POD_IF: &str = "eth0";

/// A node's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    pub index: usize,
    /// The node's gateway on its pod network (`br0`), a /24.
    pub gateway: Ipv4Addr,
    pub pod_subnet: Ipv4Addr,
    /// The bridge's fixed MAC (a bridge otherwise takes its ports' lowest MAC, which changes as
    /// pods come and go and leaves the pods' ARP entries for the gateway stale).
    pub bridge_mac: [u8; 6],
    /// The node's end of its uplink (`wan` in the node netns).
    pub uplink: Ipv4Addr,
    /// The wan's end of it (`n<i>` in the wan netns): the node's default gateway.
    pub wan_end: Ipv4Addr,
}

/// The inter-node link of two nodes (`a < b` by index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPlan {
    pub a: usize,
    pub b: usize,
    /// Address of node a's end (named `n<b>` in node a), a /30.
    pub a_addr: Ipv4Addr,
    /// Address of node b's end (named `n<a>` in node b).
    pub b_addr: Ipv4Addr,
}

/// An external host's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub name: String,
    pub index: usize,
    pub ip: Ipv4Addr,
}

/// The whole layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
    pub pairs: Vec<PairPlan>,
    pub hosts: Vec<HostPlan>,
}

/// Name of node `j`'s link inside node `i` (and of node `i`'s uplink inside the wan).
pub fn node_link(j: usize) -> String {
    format!("n{j}")
}

/// Name of host `k`'s link inside the wan.
pub fn host_link(k: usize) -> String {
    format!("h{k}")
}

/// Name of a pod's veth end inside its node (`seq` numbers every pod the run creates).
pub fn pod_link(seq: usize) -> String {
    format!("p{seq}")
}

impl Plan {
    /// The layout for `world`, or why the harness cannot build it.
    pub fn of(world: &World) -> Result<Plan, String> {
        let nodes: Vec<NodePlan> = world
            .nodes
            .iter()
            .map(|n| {
                let i = u8::try_from(n.index).unwrap_or(u8::MAX);
                NodePlan {
                    name: n.name.clone(),
                    index: n.index,
                    gateway: n.gateway,
                    pod_subnet: n.pod_subnet,
                    bridge_mac: [0x02, 0x00, 0x0a, 0x00, i, 0x01],
                    uplink: Ipv4Addr::new(100, 127, i, 2),
                    wan_end: Ipv4Addr::new(100, 127, i, 1),
                }
            })
            .collect();
        if nodes.len() > 250 {
            return Err(format!("{} nodes; the harness builds at most 250", nodes.len()));
        }
        let mut pairs = Vec::new();
        for a in 0..nodes.len() {
            for b in a + 1..nodes.len() {
                let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + 4 * pairs.len() as u32;
                pairs.push(PairPlan {
                    a,
                    b,
                    a_addr: Ipv4Addr::from(base + 1),
                    b_addr: Ipv4Addr::from(base + 2),
                });
            }
        }
        let hosts: Vec<HostPlan> = world
            .external
            .values()
            .enumerate()
            .map(|(index, h)| HostPlan { name: h.name.clone(), index, ip: h.ip })
            .collect();
        let plan = Plan { nodes, pairs, hosts };
        for pod in world.pods.values() {
            plan.check_pod_ip(&pod.label(), pod.ip)?;
        }
        for h in &plan.hosts {
            if in_net(h.ip, INFRA_NET) || h.ip.is_loopback() || h.ip.is_unspecified() {
                return Err(format!(
                    "external host {} has address {}, which the harness cannot route \
                     ({}/{} is its own transit space; loopback and 0.0.0.0 are not hosts)",
                    h.name, h.ip, INFRA_NET.0, INFRA_NET.1
                ));
            }
            if let Some(n) = plan.nodes.iter().find(|n| in_net(h.ip, (n.pod_subnet, 24))) {
                return Err(format!(
                    "external host {} has address {} inside node {}'s pod subnet {}/24",
                    h.name, h.ip, n.name, n.pod_subnet
                ));
            }
        }
        Ok(plan)
    }

    /// A pod's address must lie in a node's pod subnet and outside the harness's transit space
    /// (the World guarantees the first; checked again because pods added by faults come later).
    pub fn check_pod_ip(&self, label: &str, ip: Ipv4Addr) -> Result<(), String> {
        if in_net(ip, INFRA_NET) || !self.nodes.iter().any(|n| in_net(ip, (n.pod_subnet, 24))) {
            return Err(format!("pod {label} has address {ip}, outside every node's pod subnet"));
        }
        Ok(())
    }

    /// The link joining nodes `i` and `j`, if both exist and differ.
    pub fn pair(&self, i: usize, j: usize) -> Option<&PairPlan> {
        let (a, b) = (i.min(j), i.max(j));
        self.pairs.iter().find(|p| p.a == a && p.b == b)
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Routes of node `i` besides its connected networks: every other node's pod subnet over
    /// their pair link, and a default route over the uplink.
    pub fn node_routes(&self, i: usize) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
        let mut out = Vec::new();
        for other in self.nodes.iter().filter(|n| n.index != i) {
            if let Some(p) = self.pair(i, other.index) {
                let via = if p.a == i { p.b_addr } else { p.a_addr };
                out.push((other.pod_subnet, 24, via));
            }
        }
        out.push((Ipv4Addr::UNSPECIFIED, 0, self.nodes[i].wan_end));
        out
    }
}

/// Whether `ip` lies in `net/prefix`.
pub fn in_net(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
description: three nodes and a host
cluster:
  nodes: [a, b, c]
  pods:
    - {name: x, node: a}
    - {name: y, node: c}
  external:
    - {name: web, ip: 203.0.113.10}
steps:
  - wait: 1s
"#;

    fn world(text: &str) -> World {
        ambient_scenarios::load_str("t.yaml", text).into_result().unwrap()
    }

    #[test]
    fn every_pair_of_nodes_gets_its_own_slash_30_and_routes_use_it() {
        let plan = Plan::of(&world(THREE)).unwrap();
        assert_eq!(plan.pairs.len(), 3);
        let ac = plan.pair(2, 0).unwrap();
        assert_eq!((ac.a, ac.b), (0, 2));
        assert_eq!(
            (ac.a_addr, ac.b_addr),
            (Ipv4Addr::new(100, 64, 0, 5), "100.64.0.6".parse().unwrap())
        );
        let routes = plan.node_routes(0);
        assert_eq!(
            routes,
            vec![
                (Ipv4Addr::new(10, 0, 2, 0), 24, Ipv4Addr::new(100, 64, 0, 2)),
                (Ipv4Addr::new(10, 0, 3, 0), 24, Ipv4Addr::new(100, 64, 0, 6)),
                (Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(100, 127, 0, 1)),
            ]
        );
        assert_eq!(plan.nodes[2].uplink, Ipv4Addr::new(100, 127, 2, 2));
        assert_eq!(plan.hosts[0].ip, Ipv4Addr::new(203, 0, 113, 10));
        assert!(plan.nodes.iter().all(|n| n.bridge_mac[0] & 0x03 == 0x02), "locally administered");
    }

    #[test]
    fn hosts_in_the_transit_space_or_a_pod_subnet_are_refused() {
        let clash = THREE.replace("203.0.113.10", "100.64.0.1");
        assert!(Plan::of(&world(&clash)).unwrap_err().contains("transit space"));
        // The loader refuses this one too; the plan does not rely on it.
        let mut w = world(THREE);
        w.external.values_mut().for_each(|h| h.ip = Ipv4Addr::new(10, 0, 2, 77));
        assert!(Plan::of(&w).unwrap_err().contains("pod subnet"));
    }

    #[test]
    fn in_net_masks_by_prefix() {
        assert!(in_net(Ipv4Addr::new(100, 100, 1, 1), INFRA_NET));
        assert!(!in_net(Ipv4Addr::new(100, 128, 0, 0), INFRA_NET));
        assert!(in_net(Ipv4Addr::new(1, 2, 3, 4), (Ipv4Addr::UNSPECIFIED, 0)));
    }
}
