//! What makes two Outcomes of one scenario comparable although they came from different TCP
//! stacks: ephemeral ports masked, and each rule counter classified as counting first packets
//! only (compared exactly) or every packet (compared, differences matched against the
//! expected-differences file).
//!
//! **Ephemeral ports.** The simulator hands out ephemeral ports from one counter starting at
//! 32768; the kernel picks them at random from `ip_local_port_range` (32768–60999); a DNS
//! resolver that randomises its query's source port itself (RFC 5452; ztunnel's, hickory, binds
//! a random port in 1024–65535) picks from the whole unprivileged range. So a port is
//! *ephemeral* when it is ≥ 1024 and is none of the scenario's fixed ports (a port an app
//! serves, a Service port or target port, a port a `connect` step names, the DNS port, the
//! proxy's ports): a port nobody in the scenario chose.
//! Within one conntrack entry, ephemeral ports are replaced by placeholders in order of
//! appearance (original source, original destination, reply source, reply destination): the
//! first distinct one becomes `$a`, the second `$b`. The shape of the entry survives — a NAT
//! that rewrote the port shows as `$b` where `$a` was, an un-NATed reply has `$a` at both ends —
//! but the values, which nobody chose, are gone. Placeholders do **not** link entries to one
//! another, within a namespace or across namespaces: the kernel may give one source port to two
//! connections with different destinations at once, where the simulator never does, so a link
//! across entries would be a difference of port allocators, not of behaviour. A table is then
//! compared as a multiset of normalised entries.
//!
//! **Counters.** A rule only first packets reach — every rule of the nat table (netfilter runs
//! nat chains once per connection, on its first packet) and a rule with a positive
//! `--ctstate`/`--state` match of `NEW` only — counts one packet per connection: its packets and
//! bytes are a function of the connections. Every other rule also counts ACKs, data segments and
//! FINs, whose number depends on delayed ACKs, segmentation and timing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;

use ambient_kernel::rules::counts_first_packets_only;

use ambient_scenarios::outcome::ConntrackEntry;
use ambient_scenarios::values::{RuleRef, Table, rule_positions};
use ambient_scenarios::world::{Action, Dest, Fault, World};

/// The lowest ephemeral port of the kernel's allocator (Linux's default `ip_local_port_range`
/// starts here, and so does the simulator's counter).
pub const EPHEMERAL_FROM: u16 = 32768;

/// The lowest port an allocator may hand out: the kernel's, or a program's own (a resolver
/// randomising its source port); below are the privileged ports, which only a choice binds.
pub const ALLOCATED_FROM: u16 = 1024;

/// The proxy's fixed ports (outbound, inbound plaintext, HBONE, DNS; admin, metrics, readiness).
const PROXY_PORTS: [u16; 7] = [15001, 15006, 15008, 15053, 15000, 15020, 15021];

/// The scenario's fixed ports, to tell ephemeral ports from chosen ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports {
    fixed: BTreeSet<u16>,
}

impl Ports {
    /// Every port the World names: served, Service ports and target ports, connect targets,
    /// the proxy's.
    pub fn of(world: &World) -> Ports {
        let mut fixed: BTreeSet<u16> = PROXY_PORTS.into_iter().collect();
        fixed.insert(ambient_scenarios::world::DNS_PORT);
        for pod in world.pods.values() {
            fixed.extend(pod.serve.keys());
        }
        for host in world.external.values() {
            fixed.extend(host.serve.keys());
        }
        for svc in world.services.values() {
            for p in &svc.ports {
                fixed.insert(p.port);
                fixed.insert(p.target_port);
            }
        }
        for step in &world.steps {
            match &step.action {
                Action::Connect(c) => {
                    fixed.insert(c.to.addr.port());
                    if let Dest::Service { port, .. } = &c.to.dest {
                        fixed.insert(port.target_port);
                    }
                }
                Action::Fault(Fault::AddPod { pod, .. }) => fixed.extend(pod.serve.keys()),
                _ => {}
            }
        }
        Ports { fixed }
    }

    pub fn is_ephemeral(&self, port: u16) -> bool {
        port >= ALLOCATED_FROM && !self.fixed.contains(&port)
    }

    /// A conntrack entry with its ephemeral ports replaced by `$a`, `$b`, … (see the module
    /// docs): `(original, reply)` as text.
    pub fn entry(&self, e: &ConntrackEntry) -> (String, String) {
        let mut seen: Vec<u16> = Vec::new();
        let mut addr = |a: SocketAddrV4| -> String {
            if !self.is_ephemeral(a.port()) {
                return a.to_string();
            }
            let i = seen.iter().position(|p| *p == a.port()).unwrap_or_else(|| {
                seen.push(a.port());
                seen.len() - 1
            });
            format!("{}:${}", a.ip(), placeholder(i))
        };
        let orig = format!("{} -> {}", addr(e.orig.src), addr(e.orig.dst));
        let reply = format!("{} -> {}", addr(e.reply.src), addr(e.reply.dst));
        (orig, reply)
    }
}

/// `a`, `b`, … `z`, then `a1`, `b1`, … (an entry has at most four ports, so this is plenty).
fn placeholder(i: usize) -> String {
    let letter = char::from(b'a' + (i % 26) as u8);
    if i < 26 { letter.to_string() } else { format!("{letter}{}", i / 26) }
}

/// How a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counting {
    /// Only first packets of connections reach it: compared exactly.
    FirstPackets,
    /// Every packet of a connection may reach it: the count depends on the TCP stack.
    EveryPacket,
}

/// How a rule whose `-A` line is `spec` in `table` counts: the kernel model's classifier
/// ([`counts_first_packets_only`]), which the differential suite uses too.
pub fn counting(table: Table, spec: &str) -> Counting {
    if counts_first_packets_only(table, spec) {
        Counting::FirstPackets
    } else {
        Counting::EveryPacket
    }
}

/// Every captured namespace's rules, by the Outcome's namespace label: the pods of the World and
/// those `add-pod` faults bring (a later pod of the same name replaces the earlier).
#[derive(Debug, Clone, Default)]
pub struct RuleBook {
    by_netns: BTreeMap<String, BTreeMap<RuleRef, Counting>>,
}

impl RuleBook {
    pub fn of(world: &World) -> RuleBook {
        let mut by_netns = BTreeMap::new();
        let mut add = |label: String, rules: &str| {
            let counted = rule_positions(rules)
                .into_iter()
                .map(|(r, spec)| (r.clone(), counting(r.table, &spec)));
            by_netns.insert(label, counted.collect());
        };
        for pod in world.pods.values() {
            if let Some(c) = &pod.capture {
                add(pod.label(), &c.rules);
            }
        }
        for step in &world.steps {
            if let Action::Fault(Fault::AddPod { pod, .. }) = &step.action
                && let Some(c) = &pod.capture
            {
                add(pod.label(), &c.rules);
            }
        }
        RuleBook { by_netns }
    }

    /// How `rule` of `netns` counts; a rule the World does not know (which a backend should never
    /// report) is compared exactly.
    pub fn counting(&self, netns: &str, rule: &RuleRef) -> Counting {
        self.by_netns
            .get(netns)
            .and_then(|rules| rules.get(rule))
            .copied()
            .unwrap_or(Counting::FirstPackets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_scenarios::outcome::{Proto, TcpState};

    fn entry(orig: &str, reply: &str) -> ConntrackEntry {
        ConntrackEntry {
            proto: Proto::Tcp,
            orig: orig.parse().unwrap(),
            reply: reply.parse().unwrap(),
            state: Some(TcpState::TimeWait),
            mark: 0x111,
            zone: 0,
        }
    }

    #[test]
    fn ephemeral_ports_become_placeholders_by_order_within_the_entry() {
        let ports = Ports { fixed: [8080, 15001, 40000].into_iter().collect() };
        // The simulator's first port and a kernel's random one read the same.
        let sim = ports
            .entry(&entry("10.0.1.2:32768 -> 10.96.0.10:80", "127.0.0.1:15001 -> 10.0.1.2:32768"));
        let kernel = ports
            .entry(&entry("10.0.1.2:51234 -> 10.96.0.10:80", "127.0.0.1:15001 -> 10.0.1.2:51234"));
        assert_eq!(sim, kernel);
        assert_eq!(sim.0, "10.0.1.2:$a -> 10.96.0.10:80");
        assert_eq!(sim.1, "127.0.0.1:15001 -> 10.0.1.2:$a");
        // A source NAT that changed the port keeps its shape.
        let natted = ports
            .entry(&entry("10.0.1.2:33000 -> 10.0.2.2:8080", "10.0.2.2:8080 -> 10.0.9.9:45000"));
        assert_eq!(natted.1, "10.0.2.2:8080 -> 10.0.9.9:$b");
        // A fixed port in the ephemeral range stays as it is; privileged ports are never
        // ephemeral.
        let fixed = ports
            .entry(&entry("10.0.1.2:40000 -> 10.0.2.2:1000", "10.0.2.2:1000 -> 10.0.1.2:40000"));
        assert_eq!(fixed.0, "10.0.1.2:40000 -> 10.0.2.2:1000");
        assert!(
            !ports.is_ephemeral(1023) && ports.is_ephemeral(60999) && ports.is_ephemeral(65535)
        );
        // A resolver's own random source port (ztunnel's forwarded query) is below the
        // kernel's range and masked all the same.
        let forwarded = ports.entry(&entry(
            "10.0.1.2:29392 -> 203.0.113.53:53",
            "203.0.113.53:53 -> 10.0.1.2:29392",
        ));
        assert_eq!(forwarded.0, "10.0.1.2:$a -> 203.0.113.53:53");
        assert_eq!(placeholder(27), "b1");
    }
}
