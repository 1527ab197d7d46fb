//! The model's packet: an IPv4 header summary plus the transport fields netfilter looks at.
//!
//! IPv4 only. No payload, options, fragments, TTL or checksums: `len` (the IP total length) is
//! all that is kept of the size, because rule byte counters count it. TCP sequence numbers and
//! windows are not modelled either (see `conntrack::tcp` for what that costs).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::Serialize;

/// Transport protocols the model understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
}

impl Protocol {
    pub fn number(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Icmp => "icmp",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            1 => Some(Protocol::Icmp),
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// TCP header flags, bit values as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const S: TcpFlags = TcpFlags(Self::SYN);
    pub const SA: TcpFlags = TcpFlags(Self::SYN | Self::ACK);
    pub const A: TcpFlags = TcpFlags(Self::ACK);
    pub const PA: TcpFlags = TcpFlags(Self::PSH | Self::ACK);
    pub const FA: TcpFlags = TcpFlags(Self::FIN | Self::ACK);
    pub const R: TcpFlags = TcpFlags(Self::RST);
    pub const RA: TcpFlags = TcpFlags(Self::RST | Self::ACK);

    /// Letters in print order, tcpdump style (`S`, `SA`, `PA`, `FA`, `R`, `RA`).
    const LETTERS: [(u8, char); 8] = [
        (Self::FIN, 'F'),
        (Self::SYN, 'S'),
        (Self::RST, 'R'),
        (Self::PSH, 'P'),
        (Self::URG, 'U'),
        (Self::ACK, 'A'),
        (Self::ECE, 'E'),
        (Self::CWR, 'C'),
    ];

    #[inline]
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    /// Parses letters such as `SA` or `PA` (any order, each at most once).
    pub fn parse(text: &str) -> Option<Self> {
        let mut bits = 0u8;
        for ch in text.chars() {
            let (bit, _) = Self::LETTERS.iter().find(|(_, c)| *c == ch.to_ascii_uppercase())?;
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        (!text.is_empty()).then_some(TcpFlags(bits))
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        for (bit, ch) in Self::LETTERS {
            if self.0 & bit != 0 {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

/// ICMP type numbers the model gives meaning to.
pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACH: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// The DEST_UNREACH code "fragmentation needed" (path MTU discovery).
    pub const FRAG_NEEDED: u8 = 4;
    /// The DEST_UNREACH code "port unreachable" (a UDP datagram no socket took).
    pub const PORT_UNREACH: u8 = 3;

    /// Error messages carry the header of the packet they are about.
    pub fn is_error(t: u8) -> bool {
        matches!(t, DEST_UNREACH | SOURCE_QUENCH | REDIRECT | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }
}

/// An ICMP header: type, code and, for echo, the identifier. Errors also carry the tuple of the
/// packet they report on (as that packet was sent: its source is the error's destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    pub id: u16,
    pub inner: Option<Tuple>,
}

/// One IPv4 packet as netfilter sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub proto: Protocol,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports; for ICMP echo the identifier is in `icmp.id` and both ports are 0.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: TcpFlags,
    pub icmp: Option<Icmp>,
    /// `skb->mark`. On `output` it starts as the sending socket's SO_MARK.
    pub mark: u32,
    /// IP total length in bytes (what rule byte counters add up).
    pub len: u32,
    /// TCP/UDP payload bytes (conntrack notes unacknowledged TCP data).
    pub payload: u32,
}

impl Packet {
    /// Default length of a TCP segment without payload but with Linux's SYN options.
    pub const DEFAULT_TCP_LEN: u32 = 60;
    /// IP + UDP header, no payload.
    pub const DEFAULT_UDP_LEN: u32 = 28;

    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: TcpFlags) -> Self {
        Packet {
            proto: Protocol::Tcp,
            src: *src.ip(),
            dst: *dst.ip(),
            sport: src.port(),
            dport: dst.port(),
            tcp_flags: flags,
            icmp: None,
            mark: 0,
            len: Self::DEFAULT_TCP_LEN,
            payload: 0,
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Packet {
            proto: Protocol::Udp,
            src: *src.ip(),
            dst: *dst.ip(),
            sport: src.port(),
            dport: dst.port(),
            tcp_flags: TcpFlags(0),
            icmp: None,
            mark: 0,
            len: Self::DEFAULT_UDP_LEN,
            payload: 0,
        }
    }

    pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, icmp: Icmp) -> Self {
        Packet {
            proto: Protocol::Icmp,
            src,
            dst,
            sport: 0,
            dport: 0,
            tcp_flags: TcpFlags(0),
            icmp: Some(icmp),
            mark: 0,
            len: 28 + if icmp.inner.is_some() { 28 } else { 0 },
            payload: 0,
        }
    }

    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = mark;
        self
    }

    pub fn with_len(mut self, len: u32) -> Self {
        self.len = len;
        self
    }

    pub fn with_payload(mut self, payload: u32) -> Self {
        self.payload = payload;
        self
    }

    pub fn src_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.src, self.sport)
    }

    pub fn dst_sock(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.dst, self.dport)
    }

    /// The conntrack tuple of this packet (ICMP: identifier and type/code in the port slots).
    pub fn tuple(&self) -> Tuple {
        match (self.proto, self.icmp) {
            (Protocol::Icmp, Some(i)) => Tuple {
                proto: Protocol::Icmp,
                src: self.src,
                dst: self.dst,
                sport: i.id,
                dport: u16::from(i.kind) << 8 | u16::from(i.code),
            },
            _ => Tuple {
                proto: self.proto,
                src: self.src,
                dst: self.dst,
                sport: self.sport,
                dport: self.dport,
            },
        }
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.proto, self.icmp) {
            (Protocol::Icmp, Some(i)) => {
                write!(f, "icmp {} > {} type={} code={}", self.src, self.dst, i.kind, i.code)?
            }
            _ => write!(f, "{} {} > {}", self.proto, self.src_sock(), self.dst_sock())?,
        }
        if self.proto == Protocol::Tcp {
            write!(f, " flags={}", self.tcp_flags)?;
        }
        write!(f, " mark=0x{:x} len={}", self.mark, self.len)
    }
}

/// A conntrack tuple: protocol, addresses and ports (ICMP: id in `sport`, type<<8|code in `dport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub proto: Protocol,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// The tuple of a packet flowing the other way. ICMP echo requests invert to replies.
    pub fn invert(&self) -> Tuple {
        match self.proto {
            Protocol::Icmp => {
                let kind = (self.dport >> 8) as u8;
                let inv = match kind {
                    icmp_type::ECHO_REQUEST => icmp_type::ECHO_REPLY,
                    icmp_type::ECHO_REPLY => icmp_type::ECHO_REQUEST,
                    13 => 14,
                    14 => 13,
                    15 => 16,
                    16 => 15,
                    17 => 18,
                    18 => 17,
                    other => other,
                };
                Tuple {
                    proto: self.proto,
                    src: self.dst,
                    dst: self.src,
                    sport: self.sport,
                    dport: u16::from(inv) << 8 | (self.dport & 0xff),
                }
            }
            _ => Tuple {
                proto: self.proto,
                src: self.dst,
                dst: self.src,
                sport: self.dport,
                dport: self.sport,
            },
        }
    }

    /// Packs the tuple and a zone into one integer: the conntrack hash key.
    #[inline]
    pub fn key(&self, zone: u16) -> u128 {
        u128::from(u32::from(self.src))
            | u128::from(u32::from(self.dst)) << 32
            | u128::from(self.sport) << 64
            | u128::from(self.dport) << 80
            | u128::from(self.proto.number()) << 96
            | u128::from(zone) << 104
    }
}

impl fmt::Display for Tuple {
    /// The `conntrack -L` form: `src=… dst=… sport=… dport=…` (ICMP: `type=… code=… id=…`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Protocol::Icmp => write!(
                f,
                "src={} dst={} type={} code={} id={}",
                self.src,
                self.dst,
                self.dport >> 8,
                self.dport & 0xff,
                self.sport
            ),
            _ => write!(
                f,
                "src={} dst={} sport={} dport={}",
                self.src, self.dst, self.sport, self.dport
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_print_in_tcpdump_order() {
        for s in ["S", "SA", "A", "PA", "FA", "F", "R", "RA", "FPA"] {
            assert_eq!(TcpFlags::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(TcpFlags::parse("AS").unwrap(), TcpFlags::SA);
        assert!(TcpFlags::parse("SS").is_none());
        assert!(TcpFlags::parse("X").is_none());
        assert!(TcpFlags::parse("").is_none());
    }

    #[test]
    fn tuples_invert_and_pack_distinctly() {
        let p = Packet::tcp(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            TcpFlags::S,
        );
        let t = p.tuple();
        assert_eq!(t.invert().invert(), t);
        assert_ne!(t.key(0), t.invert().key(0));
        assert_ne!(t.key(0), t.key(1));
        let echo = Packet::icmp(
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(2, 2, 2, 2),
            Icmp { kind: icmp_type::ECHO_REQUEST, code: 0, id: 7, inner: None },
        );
        assert_eq!(echo.tuple().invert().dport >> 8, u16::from(icmp_type::ECHO_REPLY));
    }
}
