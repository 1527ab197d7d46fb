//! NAT bindings on conntrack entries (`nf_nat_setup_info`, `nf_nat_packet`).
//!
//! The first packet of a connection sets one binding per manipulation type when it passes a nat
//! hook (DNAT/REDIRECT at PREROUTING/OUTPUT, SNAT/MASQUERADE at POSTROUTING/INPUT, or a null
//! binding when no rule matched); the binding rewrites the entry's reply tuple. Every later
//! packet, in both directions, is rewritten from the entry alone. Tuple choice follows
//! `get_unique_tuple`: keep what is already in range and unused, else the first address of the
//! range and the first free port. The kernel hashes the address choice over a range and starts
//! the port search for source NAT at a random offset; the model always starts at the bottom of
//! the range (deterministic, and equal whenever the range has one address and the port is free).

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{Dir, EntryId, Table, status};
use crate::packet::{Packet, Protocol, Tuple};

/// Which end of the tuple a binding rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manip {
    Src,
    Dst,
}

impl Manip {
    fn done_bit(self) -> u16 {
        match self {
            Manip::Src => status::SRC_NAT_DONE,
            Manip::Dst => status::DST_NAT_DONE,
        }
    }

    fn nat_bit(self) -> u16 {
        match self {
            Manip::Src => status::SRC_NAT,
            Manip::Dst => status::DST_NAT,
        }
    }
}

/// A resolved NAT target: an address range and/or a port range (ICMP: identifier range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatRequest {
    pub addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    pub ports: Option<(u16, u16)>,
}

fn side(t: &Tuple, m: Manip) -> (Ipv4Addr, u16) {
    match m {
        Manip::Src => (t.src, t.sport),
        // ICMP's identifier sits in the source slot: a destination binding never changes it.
        Manip::Dst => (t.dst, if t.proto == Protocol::Icmp { 0 } else { t.dport }),
    }
}

fn set_addr(t: &mut Tuple, m: Manip, a: Ipv4Addr) {
    match m {
        Manip::Src => t.src = a,
        Manip::Dst => t.dst = a,
    }
}

fn set_port(t: &mut Tuple, m: Manip, p: u16) {
    match (m, t.proto) {
        (Manip::Src, _) => t.sport = p,
        (Manip::Dst, Protocol::Icmp) => {}
        (Manip::Dst, _) => t.dport = p,
    }
}

impl Table {
    /// Whether the connection already has its binding of this type.
    pub fn nat_initialized(&self, id: EntryId, manip: Manip) -> bool {
        self.entry(id).has(manip.done_bit())
    }

    /// Whether another connection's reply tuple is the inverse of `t` (`nf_nat_used_tuple`).
    fn used(&self, t: &Tuple, zone: u16, me: EntryId) -> bool {
        self.map.get(&t.invert().key(zone)).is_some_and(|v| v >> 1 != me.0)
    }

    /// Sets the binding of type `manip` (`None`: a null binding that keeps the tuple unless it
    /// clashes, which for source bindings moves the port).
    pub fn setup_nat(&mut self, id: EntryId, manip: Manip, req: Option<NatRequest>) {
        let e = self.entry(id);
        let zone = e.zone;
        let curr = e.tuples[1].invert();
        let (addr, port) = side(&curr, manip);
        let in_range = req.is_none_or(|r| {
            r.addrs.is_none_or(|(lo, hi)| lo <= addr && addr <= hi)
                && r.ports.is_none_or(|(lo, hi)| lo <= port && port <= hi)
        });
        let mut new = curr;
        let keep = manip == Manip::Src && in_range && !self.used(&curr, zone, id);
        if !keep {
            if let Some((lo, _)) = req.and_then(|r| r.addrs) {
                set_addr(&mut new, manip, lo);
            }
            let ports = req.and_then(|r| r.ports);
            let port = side(&new, manip).1;
            let settled = match ports {
                Some((lo, hi)) => {
                    (lo <= port && port <= hi) && (lo == hi || !self.used(&new, zone, id))
                }
                None => !self.used(&new, zone, id),
            };
            if !settled {
                self.unique_port(&mut new, manip, ports, zone, id);
            }
        }
        let e = self.entry_mut(id);
        if new != curr {
            e.tuples[1] = new.invert();
            e.status |= manip.nat_bit();
        }
        e.status |= manip.done_bit();
    }

    /// `nf_nat_l4proto_unique_tuple`: the first free port of the range (or of the kernel's
    /// default source-port class). A destination without a port range keeps its port.
    fn unique_port(
        &self,
        t: &mut Tuple,
        manip: Manip,
        ports: Option<(u16, u16)>,
        zone: u16,
        me: EntryId,
    ) {
        let (lo, hi) = match ports {
            Some(r) => r,
            None if t.proto == Protocol::Icmp => (0, u16::MAX),
            None if manip == Manip::Dst => return,
            None => match side(t, manip).1 {
                p if p < 512 => (1, 511),
                p if p < 1024 => (600, 1023),
                _ => (1024, u16::MAX),
            },
        };
        if t.proto == Protocol::Icmp && manip == Manip::Dst {
            return;
        }
        for p in lo..=hi {
            set_port(t, manip, p);
            if !self.used(t, zone, me) {
                return;
            }
        }
    }

    /// `nf_nat_packet`: rewrites a packet of direction `dir` at a hook of type `manip` from the
    /// connection's bindings. ICMP errors (RELATED) also get their embedded header rewritten.
    pub fn apply_nat(&self, id: EntryId, dir: Dir, manip: Manip, related: bool, pkt: &mut Packet) {
        let e = self.entry(id);
        let mut bit = manip.nat_bit();
        if dir == Dir::Reply {
            bit ^= status::SRC_NAT | status::DST_NAT;
        }
        if e.status & bit == 0 {
            return;
        }
        let target = e.tuples[1 - dir as usize].invert();
        if related {
            if let Some(icmp) = pkt.icmp.as_mut()
                && let Some(inner) = icmp.inner.as_mut()
            {
                match manip {
                    Manip::Src => {
                        inner.dst = target.src;
                        inner.dport = target.sport;
                    }
                    Manip::Dst => {
                        inner.src = target.dst;
                        inner.sport = target.dport;
                    }
                }
            }
            match manip {
                Manip::Src => pkt.src = target.src,
                Manip::Dst => pkt.dst = target.dst,
            }
            return;
        }
        match (manip, pkt.proto) {
            (Manip::Src, Protocol::Icmp) => {
                pkt.src = target.src;
                if let Some(i) = pkt.icmp.as_mut() {
                    i.id = target.sport;
                }
            }
            (Manip::Dst, Protocol::Icmp) => pkt.dst = target.dst,
            (Manip::Src, _) => {
                pkt.src = target.src;
                pkt.sport = target.sport;
            }
            (Manip::Dst, _) => {
                pkt.dst = target.dst;
                pkt.dport = target.dport;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Track};
    use super::*;
    use crate::packet::TcpFlags;
    use std::time::Duration;

    #[test]
    fn redirect_binding_rewrites_both_directions() {
        let mut t = Table::new(Config::default());
        let now = Duration::ZERO;
        let mut syn = Packet::tcp(
            "10.0.1.5:40000".parse().unwrap(),
            "10.9.9.9:80".parse().unwrap(),
            TcpFlags::S,
        );
        let Track::Tracked { id, .. } = t.track(&syn, 0, now) else { panic!() };
        let lo = Ipv4Addr::LOCALHOST;
        t.setup_nat(
            id,
            Manip::Dst,
            Some(NatRequest { addrs: Some((lo, lo)), ports: Some((15001, 15001)) }),
        );
        t.apply_nat(id, Dir::Original, Manip::Dst, false, &mut syn);
        assert_eq!(syn.dst_sock(), "127.0.0.1:15001".parse().unwrap());
        t.setup_nat(id, Manip::Src, None);
        assert!(t.nat_initialized(id, Manip::Src) && t.nat_initialized(id, Manip::Dst));
        assert!(t.confirm(id));
        let e = t.entry(id);
        assert_eq!(e.reply().to_string(), "src=127.0.0.1 dst=10.0.1.5 sport=15001 dport=40000");
        assert!(e.has(status::DST_NAT) && !e.has(status::SRC_NAT));
        let mut reply = Packet::tcp(
            "127.0.0.1:15001".parse().unwrap(),
            "10.0.1.5:40000".parse().unwrap(),
            TcpFlags::SA,
        );
        let Track::Tracked { dir, .. } = t.track(&reply, 0, now) else { panic!() };
        assert_eq!(dir, Dir::Reply);
        t.apply_nat(id, dir, Manip::Dst, false, &mut reply);
        assert_eq!(reply.src_sock(), "127.0.0.1:15001".parse().unwrap());
        t.apply_nat(id, dir, Manip::Src, false, &mut reply);
        assert_eq!(reply.src_sock(), "10.9.9.9:80".parse().unwrap());
    }

    #[test]
    fn clashing_source_binding_moves_the_port() {
        let mut t = Table::new(Config::default());
        let now = Duration::ZERO;
        let lo = Ipv4Addr::LOCALHOST;
        let redirect = NatRequest { addrs: Some((lo, lo)), ports: Some((15001, 15001)) };
        let mut ids = vec![];
        for dst in ["10.9.9.9:80", "10.8.8.8:80"] {
            let syn =
                Packet::tcp("10.0.1.5:40000".parse().unwrap(), dst.parse().unwrap(), TcpFlags::S);
            let Track::Tracked { id, .. } = t.track(&syn, 0, now) else { panic!() };
            t.setup_nat(id, Manip::Dst, Some(redirect));
            t.setup_nat(id, Manip::Src, None);
            assert!(t.confirm(id));
            ids.push(id);
        }
        assert_eq!(t.entry(ids[0]).reply().dport, 40000);
        assert_eq!(t.entry(ids[1]).reply().dport, 1024);
        assert!(t.entry(ids[1]).has(status::SRC_NAT));
    }
}
