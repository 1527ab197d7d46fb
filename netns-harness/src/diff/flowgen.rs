//! The fixed topology of the differential suite and the seeded random flow generator.
//!
//! ```text
//!   pod netns (rules go here)                       peer netns (no rules)
//!   lo 127.0.0.1/8                                  lo 127.0.0.1/8, 10.96.0.10/32 (the "VIP")
//!   eth0 10.0.1.2/24  <-------- veth -------->      eth0 10.0.1.1/24
//!   default via 10.0.1.1                            10.0.9.0/24 via 10.0.1.2
//!   fwmark 0x111/0xfff pref 32764 lookup 100
//!   table 100: local 0.0.0.0/0 dev lo
//! ```
//!
//! Listeners — pod: `pod-app` 10.0.1.2:8080, `pod-any` *:8081, `pod-lo` 127.0.0.1:8082, and the
//! proxy-like transparent ones `capture-out` *:15001, `capture-in` *:15006, `hbone` *:15008;
//! peer: `peer-web` 10.0.1.1:80, `vip-web` 10.96.0.10:80, `peer-any` *:9090. Port 9999 and
//! 10.96.0.10:443 have no listener (refused unless a rule sends them elsewhere); 10.0.9.9 is
//! nobody's address (reachable only through the pod's fwmark route or NAT).
//!
//! Flows: outbound from the pod (to itself, 127.0.0.1, the peer, the VIP), some with SO_MARK
//! (0x539 the proxy's mark, 0x111 the connmark value…), some from an explicit source port; inbound
//! from the peer into the pod (the PREROUTING path), including to 10.0.9.9.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::case::{
    Address, Case, CloseOrder, FlowSpec, FwmarkRuleSpec, ListenerSpec, NodeSpec, RouteSpec, Side,
    Topology,
};
use super::dice::Dice;
use super::rulegen::generate_ruleset;

/// The pod's address.
pub const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// The peer's address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
/// A service-like address the peer owns (on its `lo`).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// An address nobody owns, routed by the peer towards the pod.
pub const FOREIGN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);
/// First explicit source port; flow `n` uses `EXPLICIT_PORT_BASE + n` (below the ephemeral range).
pub const EXPLICIT_PORT_BASE: u16 = 20000;
/// The kernel's default ephemeral port range; ports in it are normalised away.
pub const EPHEMERAL_PORTS: (u16, u16) = (32768, 60999);
/// The pod's share of it (`net.ipv4.ip_local_port_range`). The two namespaces allocate
/// independently, so they get disjoint halves: a normalised port then names one flow.
pub const POD_EPHEMERAL_PORTS: (u16, u16) = (32768, 44999);
/// The peer's share.
pub const PEER_EPHEMERAL_PORTS: (u16, u16) = (45000, 60999);

fn a(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn sysctls(ports: (u16, u16)) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = ["all", "default", "lo", "eth0"]
        .iter()
        .map(|dev| (format!("net.ipv4.conf.{dev}.rp_filter"), "0".to_string()))
        .collect();
    out.push(("net.ipv4.ip_local_port_range".into(), format!("{} {}", ports.0, ports.1)));
    out
}

impl Topology {
    /// The suite's fixed topology (see the module docs).
    pub fn standard() -> Topology {
        let any = Ipv4Addr::UNSPECIFIED;
        let listener = |id: &str, side, addr, transparent| ListenerSpec {
            id: id.to_string(),
            side,
            addr,
            transparent,
        };
        Topology {
            nodes: vec![
                NodeSpec {
                    side: Side::Pod,
                    addresses: vec![Address { dev: "eth0".into(), addr: POD_IP, prefix: 24 }],
                    routes: vec![
                        RouteSpec {
                            dst: any,
                            prefix: 0,
                            via: Some(PEER_IP),
                            dev: None,
                            table: 254,
                            local: false,
                        },
                        RouteSpec {
                            dst: any,
                            prefix: 0,
                            via: None,
                            dev: Some("lo".into()),
                            table: 100,
                            local: true,
                        },
                    ],
                    rules: vec![FwmarkRuleSpec {
                        mark: 0x111,
                        mask: 0xfff,
                        pref: 32764,
                        table: 100,
                    }],
                    sysctls: sysctls(POD_EPHEMERAL_PORTS),
                },
                NodeSpec {
                    side: Side::Peer,
                    addresses: vec![
                        Address { dev: "eth0".into(), addr: PEER_IP, prefix: 24 },
                        Address { dev: "lo".into(), addr: VIP, prefix: 32 },
                    ],
                    routes: vec![RouteSpec {
                        dst: Ipv4Addr::new(10, 0, 9, 0),
                        prefix: 24,
                        via: Some(POD_IP),
                        dev: None,
                        table: 254,
                        local: false,
                    }],
                    rules: vec![],
                    sysctls: sysctls(PEER_EPHEMERAL_PORTS),
                },
            ],
            listeners: vec![
                listener("pod-app", Side::Pod, a(POD_IP, 8080), false),
                listener("pod-any", Side::Pod, a(any, 8081), false),
                listener("pod-lo", Side::Pod, a(Ipv4Addr::LOCALHOST, 8082), false),
                listener("capture-out", Side::Pod, a(any, 15001), true),
                listener("capture-in", Side::Pod, a(any, 15006), true),
                listener("hbone", Side::Pod, a(any, 15008), true),
                listener("peer-web", Side::Peer, a(PEER_IP, 80), false),
                listener("vip-web", Side::Peer, a(VIP, 80), false),
                listener("peer-any", Side::Peer, a(any, 9090), false),
            ],
        }
    }
}

/// Where pod-side flows go.
fn outbound_targets() -> Vec<SocketAddrV4> {
    let lo = Ipv4Addr::LOCALHOST;
    vec![
        a(POD_IP, 8080),
        a(POD_IP, 8081),
        a(POD_IP, 9999),
        a(POD_IP, 15001),
        a(lo, 8081),
        a(lo, 8082),
        a(lo, 9999),
        a(PEER_IP, 80),
        a(PEER_IP, 9090),
        a(PEER_IP, 9999),
        a(VIP, 80),
        a(VIP, 80),
        a(VIP, 443),
    ]
}

/// Where peer-side flows go.
fn inbound_targets() -> Vec<SocketAddrV4> {
    vec![
        a(POD_IP, 8080),
        a(POD_IP, 8081),
        a(POD_IP, 8082),
        a(POD_IP, 15006),
        a(POD_IP, 15008),
        a(POD_IP, 9999),
        a(FOREIGN_IP, 15008),
        a(FOREIGN_IP, 8080),
    ]
}

/// Generates the flows of a case.
pub fn generate_flows(dice: &mut Dice) -> Vec<FlowSpec> {
    let count = dice.range(4, 10) as u32;
    let (outbound, inbound) = (outbound_targets(), inbound_targets());
    (0..count)
        .map(|id| {
            let from = if dice.chance(60) { Side::Pod } else { Side::Peer };
            let dst = *dice.pick(if from == Side::Pod { &outbound } else { &inbound });
            let mark = (from == Side::Pod && dice.chance(40))
                .then(|| *dice.pick(&[0x539u32, 0x539, 0x111, 0x1539, 0x1, 0x2a]));
            let src_port = dice.chance(25).then(|| EXPLICIT_PORT_BASE + id as u16);
            let payload = *dice.pick(&[0u32, 1, 64, 1000, 3000]);
            let close = *dice.weighted(&[
                (45, CloseOrder::ClientFirst),
                (35, CloseOrder::ServerFirst),
                (20, CloseOrder::ClientReset),
            ]);
            FlowSpec { id, from, dst, mark, src_port, payload, close }
        })
        .collect()
}

/// Generates the whole case for `seed`: ruleset, then flows, from one [`Dice`].
pub fn generate_case(seed: u64) -> Case {
    let mut dice = Dice::new(seed);
    let ruleset = generate_ruleset(&mut dice);
    let flows = generate_flows(&mut dice);
    Case { seed, ruleset, topology: Topology::standard(), flows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_a_function_of_the_seed() {
        let text = |seed| serde_json::to_string(&generate_case(seed)).unwrap();
        assert_eq!(text(77), text(77));
        assert_ne!(text(77), text(78));
    }

    #[test]
    fn flows_are_well_formed() {
        for seed in 0..200 {
            let case = generate_case(seed);
            assert!((4..=10).contains(&case.flows.len()));
            for f in &case.flows {
                if let Some(p) = f.src_port {
                    assert!(p < EPHEMERAL_PORTS.0);
                }
                assert!(f.from == Side::Pod || f.mark.is_none());
                assert_eq!(f.bytes().len(), f.header().len() + f.payload as usize);
            }
        }
    }
}
