//! Turning raw backend output into comparable [`Observation`](super::case::Observation) parts: ephemeral ports replaced by
//! the flow that owned them (and ports picked at random from a source-NAT range by the range),
//! conntrack entries stripped of timers and reference counts, and each
//! rule marked "first packets only" or not.
//!
//! Which counters are comparable: a rule only first packets of connections reach
//! ([`counts_first_packets_only`], the kernel model's classifier, which conformance uses too:
//! every rule of the nat table, and any rule with a positive `--ctstate`/`--state` match whose
//! states are all `NEW`) counts one packet (the SYN) per connection that reached it, so its packets *and* bytes (a Linux SYN with its options is 60
//! bytes) are a function of the flows. Every other counter also counts ACKs, data segments, FINs,
//! whose number depends on delayed ACKs, segmentation and timing: those are recorded but not
//! compared.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use ambient_kernel::rules::counts_first_packets_only;

use super::case::{Endpoint, NormEntry, NormTuple, PolicyObservation, Port, RuleObservation};
use super::flowgen::{EPHEMERAL_PORTS, EXPLICIT_PORT_BASE};
use super::rulegen::SNAT_PORT_RANGES;
use crate::conntrack::{Entry, Tuple};
use crate::iptables::{Ruleset, Table};

/// Ephemeral client ports of a case, by the flow that owned them.
#[derive(Debug, Clone, Default)]
pub struct PortMap {
    by_port: BTreeMap<u16, u32>,
}

impl PortMap {
    /// Records that flow `id`'s client had ephemeral port `port`.
    pub fn insert(&mut self, port: u16, id: u32) {
        self.by_port.insert(port, id);
    }

    /// The normalised form of `port`.
    pub fn port(&self, port: u16) -> Port {
        if let Some((lo, hi)) = SNAT_PORT_RANGES.iter().find(|(lo, hi)| (*lo..=*hi).contains(&port))
        {
            return Port::SnatRange(*lo, *hi);
        }
        if (EPHEMERAL_PORTS.0..=EPHEMERAL_PORTS.1).contains(&port) {
            self.by_port.get(&port).map_or(Port::UnknownEphemeral, |id| Port::Ephemeral(*id))
        } else {
            Port::Fixed(port)
        }
    }

    /// The normalised form of an address.
    pub fn endpoint(&self, addr: SocketAddrV4) -> Endpoint {
        Endpoint { ip: *addr.ip(), port: self.port(addr.port()) }
    }

    fn tuple(&self, t: &Tuple) -> NormTuple {
        // ICMP has no ports; its id is ephemeral too, and is normalised away.
        let port = |p: Option<u16>| p.map_or(Port::Fixed(0), |p| self.port(p));
        NormTuple {
            src: Endpoint { ip: t.src, port: port(t.sport) },
            dst: Endpoint { ip: t.dst, port: port(t.dport) },
        }
    }

    /// A conntrack entry without timer, `use=` and accounting, ports normalised.
    pub fn entry(&self, e: &Entry) -> NormEntry {
        NormEntry {
            proto: e.proto.clone(),
            state: e.state.clone(),
            orig: self.tuple(&e.orig),
            reply: self.tuple(&e.reply),
            unreplied: e.unreplied,
            assured: e.assured,
            mark: e.mark,
            zone: e.zone.clone(),
        }
    }

    /// Normalised, sorted entries.
    pub fn entries(&self, entries: &[Entry]) -> Vec<NormEntry> {
        let mut out: Vec<NormEntry> = entries.iter().map(|e| self.entry(e)).collect();
        out.sort();
        out
    }
}

/// The flow a normalised conntrack entry belongs to, judged by its client's port: the original
/// source port, or — for an entry picked up mid-stream from a packet of the server
/// (`nf_conntrack_tcp_loose`: its original direction is server → client) — the original
/// destination port.
pub fn entry_flow(entry: &NormEntry) -> Option<u32> {
    let client = |port: &Port| match *port {
        Port::Ephemeral(id) => Some(id),
        Port::Fixed(p) if (EXPLICIT_PORT_BASE..EXPLICIT_PORT_BASE + 1000).contains(&p) => {
            Some(u32::from(p - EXPLICIT_PORT_BASE))
        }
        _ => None,
    };
    client(&entry.orig.src.port).or_else(|| client(&entry.orig.dst.port))
}

/// Whether a listing has a `CT --zone` rule that can apply to TCP (one not limited to `-p udp` or
/// `-p icmp`): then TCP connections may be split across zones, and some fields become
/// timing-dependent (see [`super::compare`] and [`super::invariants`]).
pub fn zone_may_split_tcp(rules_text: &str) -> bool {
    rules_text.lines().any(|line| {
        let not_tcp =
            !line.contains("! -p ") && (line.contains("-p udp") || line.contains("-p icmp"));
        line.contains("-j CT --zone") && !not_tcp
    })
}

/// Whether a listing may leave a connection's mark depending on which packets the TCP stack
/// happened to send: some rule that writes the connmark (`CONNMARK --set-xmark` / `--save-mark`,
/// as `iptables-save` prints them) is reached by more than first packets, so the mark the entry
/// ends with is the last such packet's doing — a delayed ACK or a data segment, a timing matter.
pub fn connmark_follows_packets(rules_text: &str) -> bool {
    let mut table = None;
    rules_text.lines().any(|line| {
        if let Some(name) = line.strip_prefix('*') {
            table = Table::from_name(name);
        }
        let writes = line.contains("-j CONNMARK")
            && (line.contains("--set-xmark") || line.contains("--save-mark"));
        writes && table.is_some_and(|t| !counts_first_packets_only(t, line))
    })
}

/// Rules and policies of a listing, with counters and the comparability flag.
pub fn rule_observations(ruleset: &Ruleset) -> (Vec<RuleObservation>, Vec<PolicyObservation>) {
    let rules = ruleset
        .rules()
        .into_iter()
        .map(|(key, rule)| RuleObservation {
            first_packets_only: counts_first_packets_only(key.table, &rule.spec),
            key,
            text: rule.text(),
            counters: rule.counters,
        })
        .collect();
    let mut policies = Vec::new();
    for (table, dump) in &ruleset.tables {
        for hook in table.builtin_hooks() {
            if let Some(chain) = dump.chains.iter().find(|c| c.name == hook.name()) {
                policies.push(PolicyObservation {
                    table: *table,
                    chain: chain.name.clone(),
                    policy: chain.policy.clone().unwrap_or_default(),
                    counters: chain.counters,
                    first_packets_only: *table == Table::Nat,
                });
            }
        }
    }
    (rules, policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_normalise_by_range_and_owner() {
        let mut map = PortMap::default();
        map.insert(40000, 3);
        assert_eq!(map.port(40000), Port::Ephemeral(3));
        assert_eq!(map.port(40001), Port::UnknownEphemeral);
        assert_eq!(map.port(8080), Port::Fixed(8080));
        assert_eq!(map.port(20003), Port::Fixed(20003));
        assert_eq!(map.port(20555), Port::SnatRange(20500, 20600));
        let json = serde_json::to_string(&Port::SnatRange(20500, 20600)).unwrap();
        assert_eq!(serde_json::from_str::<Port>(&json).unwrap(), Port::SnatRange(20500, 20600));
        let json =
            serde_json::to_string(&[Port::Ephemeral(3), Port::UnknownEphemeral, Port::Fixed(80)])
                .unwrap();
        assert_eq!(json, r#"["eph:3","eph:?","80"]"#);
        let back: Vec<Port> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [Port::Ephemeral(3), Port::UnknownEphemeral, Port::Fixed(80)]);
    }

    #[test]
    fn entries_belong_to_the_flow_of_their_client_port() {
        let ep = |ip: [u8; 4], port| Endpoint { ip: ip.into(), port };
        let entry = |src, dst| NormEntry {
            proto: "tcp".into(),
            state: Some("ESTABLISHED".into()),
            orig: NormTuple { src, dst },
            reply: NormTuple { src: dst, dst: src },
            unreplied: true,
            assured: false,
            mark: 0,
            zone: None,
        };
        let client = ep([10, 0, 1, 2], Port::Ephemeral(3));
        let server = ep([10, 0, 1, 1], Port::Fixed(80));
        assert_eq!(entry_flow(&entry(client, server)), Some(3));
        // Picked up mid-stream from the server's packet (seeds 11599, 11809).
        assert_eq!(entry_flow(&entry(server, client)), Some(3));
        let explicit = ep([10, 0, 1, 2], Port::Fixed(20007));
        assert_eq!(entry_flow(&entry(server, explicit)), Some(7));
        assert_eq!(entry_flow(&entry(server, ep([10, 0, 1, 2], Port::Fixed(8080)))), None);
    }

    #[test]
    fn connmark_writers_outside_first_packets_make_marks_incomparable() {
        let nat = "*nat\n-A OUTPUT -j CONNMARK --set-xmark 0x1/0xff\nCOMMIT\n";
        assert!(!connmark_follows_packets(nat));
        let mangle =
            "*mangle\n-A OUTPUT -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff\nCOMMIT\n";
        assert!(connmark_follows_packets(mangle));
        let restore =
            "*mangle\n-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff\nCOMMIT\n";
        assert!(!connmark_follows_packets(restore));
        let new_only = "*mangle\n-A OUTPUT -m conntrack --ctstate NEW -j CONNMARK --set-xmark 0x1/0x1\nCOMMIT\n";
        assert!(!connmark_follows_packets(new_only));
    }

    #[test]
    fn only_zone_rules_that_can_reach_tcp_split_it() {
        assert!(zone_may_split_tcp("-A PREROUTING -p tcp -j CT --zone 1\n"));
        assert!(zone_may_split_tcp("-A OUTPUT -j CT --zone 2\n"));
        assert!(!zone_may_split_tcp("-A OUTPUT -p udp -m udp --dport 53 -j CT --zone 1\n"));
        assert!(!zone_may_split_tcp("-A OUTPUT -p tcp -j ACCEPT\n"));
        assert!(zone_may_split_tcp("-A OUTPUT ! -p udp -j CT --zone 1\n"));
    }
}
