//! What the kernel shows, in the Outcome's terms — small pure functions, so the simulator can
//! produce exactly the same shape from its model and `testbed conform` compares like with like.
//!
//! Conversion rules (the simulator follows the same ones):
//!
//! - **conntrack** ([`conntrack_entries`]): one [`ConntrackEntry`] per `conntrack -L` line of
//!   protocol `tcp` or `udp` (nothing else is in the Outcome; the scenarios open no other
//!   flows); both tuples with the ports *as the kernel listed them* (ephemeral ports are not
//!   rewritten here: a comparison masks them, as the checker's `*` does); the TCP state as
//!   printed; `mark=` as a number; `zone=` as a number, 0 when absent. Timers, `use=`, flags
//!   (`[ASSURED]`, `[UNREPLIED]`) and accounting are dropped: they depend on timing. Entries are
//!   sorted (protocol, original tuple, then the rest).
//! - **counters** ([`rule_counters`]): every rule `iptables-save -c` lists, keyed
//!   `table/chain/N` (N = 1-based position in its chain, as listed), with its packets and bytes.
//!
//! And the predicates the runner settles on ([`transient`], [`open_clients`],
//! [`open_tunnels_to`]):
//! a snapshot is taken once no connection is half-way through closing, so the states and
//! first-packet counters the catalog asserts do not depend on when the harness looked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};

use ambient_proxy::events::{Direction, ProxyEvent};
use ambient_scenarios::assemble::EventLog;
use ambient_scenarios::outcome::{ConntrackEntry, Counter, Proto, TcpState, Tuple};
use ambient_scenarios::values::RuleRef;

use crate::conntrack::{self, Entry};
use crate::iptables::Ruleset;

/// A conntrack listing in the Outcome's form (see the module docs). An entry the Outcome cannot
/// hold faithfully (an unknown TCP state, a zone split by direction) is an error naming it.
pub fn conntrack_entries(entries: &[Entry]) -> Result<Vec<ConntrackEntry>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if let Some(entry) = conntrack_entry(e)? {
            out.push(entry);
        }
    }
    out.sort();
    Ok(out)
}

/// One entry; `None` for protocols other than TCP and UDP.
pub fn conntrack_entry(e: &Entry) -> Result<Option<ConntrackEntry>, String> {
    let proto = match e.proto.as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Ok(None),
    };
    let tuple = |t: &conntrack::Tuple| Tuple {
        src: SocketAddrV4::new(t.src, t.sport.unwrap_or(0)),
        dst: SocketAddrV4::new(t.dst, t.dport.unwrap_or(0)),
    };
    let state = match (&e.state, proto) {
        (Some(s), Proto::Tcp) => {
            Some(s.parse::<TcpState>().map_err(|err| format!("conntrack entry {e:?}: {err}"))?)
        }
        _ => None,
    };
    let zone = match e.zone.as_deref() {
        None => 0,
        Some(z) => z.parse::<u16>().map_err(|_| {
            format!("conntrack entry {e:?}: zone {z:?} (split by direction) has no Outcome form")
        })?,
    };
    Ok(Some(ConntrackEntry {
        proto,
        orig: tuple(&e.orig),
        reply: tuple(&e.reply),
        state,
        mark: e.mark,
        zone,
    }))
}

/// Every rule's counters, keyed as scenarios name rules.
pub fn rule_counters(rules: &Ruleset) -> BTreeMap<RuleRef, Counter> {
    rules
        .rules()
        .into_iter()
        .map(|(key, rule)| {
            (key, Counter { packets: rule.counters.packets, bytes: rule.counters.bytes })
        })
        .collect()
}

/// Whether an entry is a TCP connection half-way through opening or closing: its state will
/// change within milliseconds without anyone sending anything new.
pub fn transient(e: &ConntrackEntry) -> bool {
    matches!(
        e.state,
        Some(
            TcpState::SynSent
                | TcpState::SynRecv
                | TcpState::FinWait
                | TcpState::CloseWait
                | TcpState::LastAck
                | TcpState::SynSent2
        )
    )
}

/// The clients (of `clients`) some proxy is still carrying a connection for: per node and
/// direction it logged more starts (`outbound-route`; an allowing `inbound-verdict`) than ends
/// (`connection-closed`, `error`).
pub fn open_clients(log: &EventLog, clients: &BTreeSet<SocketAddr>) -> BTreeSet<SocketAddr> {
    let mut balance: BTreeMap<(SocketAddr, &str, Direction), i64> = BTreeMap::new();
    for (node, events) in log {
        for e in events {
            let (client, direction, delta) = match e {
                ProxyEvent::OutboundRoute { client, .. } => (*client, Direction::Outbound, 1),
                ProxyEvent::InboundVerdict { client, direction, allowed: true, .. } => {
                    (*client, *direction, 1)
                }
                ProxyEvent::ConnectionClosed { client, direction, .. } => (*client, *direction, -1),
                ProxyEvent::Error { client: Some(client), direction, .. } => {
                    (*client, *direction, -1)
                }
                _ => continue,
            };
            if clients.contains(&client) {
                *balance.entry((client, node.as_str(), direction)).or_default() += delta;
            }
        }
    }
    balance.into_iter().filter(|(_, n)| *n > 0).map(|((c, _, _), _)| c).collect()
}

/// Tunnels to `gateway` (a pod's `ip:15008`) some proxy opened and has not yet closed.
pub fn open_tunnels_to(log: &EventLog, gateway: SocketAddr) -> i64 {
    log.values()
        .flatten()
        .map(|e| match e {
            ProxyEvent::TunnelOpened { gateway: g, .. } if *g == gateway => 1,
            ProxyEvent::TunnelClosed { gateway: g, .. } if *g == gateway => -1,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "\
tcp      6 119 TIME_WAIT src=10.0.1.2 dst=10.0.1.3 sport=40000 dport=8080 src=127.0.0.1 dst=10.0.1.2 sport=15001 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.0.1.2 dst=10.0.1.3 sport=41000 dport=15008 src=10.0.1.3 dst=10.0.1.2 sport=15008 dport=41000 [ASSURED] mark=0 use=1
udp      17 29 src=10.0.1.2 dst=10.96.0.53 sport=5353 dport=53 [UNREPLIED] src=10.96.0.53 dst=10.0.1.2 sport=53 dport=5353 mark=0 zone=1 use=1
icmp     1 29 src=10.0.1.2 dst=10.0.1.1 type=8 code=0 id=7 src=10.0.1.1 dst=10.0.1.2 type=0 code=0 id=7 mark=0 use=1
";

    #[test]
    fn conntrack_lines_become_sorted_outcome_entries_without_timers_or_flags() {
        let parsed = conntrack::parse_list(LISTED, None).unwrap();
        let out = conntrack_entries(&parsed).unwrap();
        assert_eq!(out.len(), 3, "icmp is not carried");
        assert_eq!(out[0].orig.to_string(), "10.0.1.2:40000 -> 10.0.1.3:8080");
        assert_eq!(out[0].reply.to_string(), "127.0.0.1:15001 -> 10.0.1.2:40000");
        assert_eq!(out[0].state, Some(TcpState::TimeWait));
        assert_eq!(out[1].state, Some(TcpState::Established));
        assert_eq!((out[2].proto, out[2].state, out[2].zone), (Proto::Udp, None, 1));
        assert!(!out.iter().any(transient));
        let split = parsed[0].clone();
        let split = Entry { zone: Some("1/0".into()), ..split };
        assert!(conntrack_entry(&split).unwrap_err().contains("split by direction"));
        let odd = Entry { state: Some("WEIRD".into()), ..parsed[0].clone() };
        assert!(conntrack_entry(&odd).is_err());
    }

    #[test]
    fn counters_are_keyed_by_table_chain_and_position() {
        let saved = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n[3:180] -A OUTPUT -j ISTIO_OUTPUT\n[0:0] -A ISTIO_OUTPUT -o lo -j ACCEPT\n[3:180] -A ISTIO_OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
        let counters = rule_counters(&Ruleset::parse(saved).unwrap());
        let at = |s: &str| s.parse::<RuleRef>().unwrap();
        assert_eq!(counters[&at("nat/ISTIO_OUTPUT/2")], Counter { packets: 3, bytes: 180 });
        assert_eq!(counters[&at("nat/ISTIO_OUTPUT/1")], Counter::default());
        assert_eq!(counters.len(), 3);
    }

    #[test]
    fn a_client_is_open_until_every_proxy_that_started_it_ended_it() {
        use ambient_proxy::events::{CloseResult, Path};
        let c: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let route = ProxyEvent::OutboundRoute {
            node: "a".into(),
            client: c,
            original_dst: "10.0.2.2:8080".parse().unwrap(),
            path: Path::Passthrough,
            endpoint: "10.0.2.2:8080".parse().unwrap(),
            service: None,
            source_identity: None,
            destination_identity: None,
            tunnel_reused: None,
            tunnel: None,
        };
        let closed = ProxyEvent::ConnectionClosed {
            node: "a".into(),
            client: c,
            direction: Direction::Outbound,
            destination: "10.0.2.2:8080".parse().unwrap(),
            bytes_sent: 1,
            bytes_received: 1,
            duration_ms: 0,
            result: CloseResult::Ok,
            upstream: None,
        };
        let clients: BTreeSet<SocketAddr> = [c].into();
        let mut log = EventLog::new();
        log.insert("a".into(), vec![route.clone()]);
        assert_eq!(open_clients(&log, &clients), clients);
        log.insert("a".into(), vec![route, closed]);
        assert!(open_clients(&log, &clients).is_empty());
    }

    #[test]
    fn a_tunnel_is_open_until_its_source_logs_it_closed() {
        let gw: SocketAddr = "10.0.2.2:15008".parse().unwrap();
        let opened = ProxyEvent::TunnelOpened {
            source_node: "a".into(),
            destination_node: "b".into(),
            gateway: gw,
            source_identity: "x".into(),
            destination_identity: "y".into(),
        };
        let closed = ProxyEvent::TunnelClosed {
            source_node: "a".into(),
            destination_node: "b".into(),
            gateway: gw,
            streams: 1,
            reason: "closed".into(),
        };
        let mut log = EventLog::new();
        log.insert("a".into(), vec![opened.clone(), opened]);
        assert_eq!(open_tunnels_to(&log, gw), 2);
        assert_eq!(open_tunnels_to(&log, "10.0.2.3:15008".parse().unwrap()), 0);
        log.get_mut("a").unwrap().push(closed);
        assert_eq!(open_tunnels_to(&log, gw), 1);
    }
}
