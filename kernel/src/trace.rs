//! Traces of a packet's path, the packet-line format of `testbed trace`, and its JSON records.
//!
//! A [`Trace`] is only built when the caller asks for one (`Netns::output_traced`…); the
//! untraced path never allocates. Line format, one packet per line (`#` comments, blank lines
//! ignored):
//!
//! ```text
//! <out|in> <tcp|udp> <src-ip>:<port> > <dst-ip>:<port> [flags=S|SA|A|PA|FA|F|R|RA] [mark=0x..]
//!          [iif=NAME] [len=N] [payload=N] [t=SECONDS] [nosocket|kernel]
//! <out|in> icmp <src-ip> > <dst-ip> [type=N] [code=N] [id=N]
//!          [inner=<tcp|udp>:<ip>:<port>><ip>:<port>] [mark=…] [iif=…] [len=…] [t=…]
//!          [nosocket|kernel]
//! flush [t=SECONDS]
//! ```
//!
//! `out` = sent by a local socket (its SO_MARK is `mark`); `kernel` = sent by the kernel's
//! control socket (a TCP reset for a closed port, an ICMP error); `nosocket` = no socket at all;
//! `in` = arriving on `iif` (default `eth0`). TCP flags default to `S`; `len` to 60 (TCP), 28
//! (UDP) or 28 plus 40 with `inner` (ICMP); `payload` (bytes of data; conntrack notes TCP data
//! awaiting an ACK) to `len` minus the headers Linux sends — 28 for UDP, 52 for TCP (timestamp
//! option), 60 for a SYN — or 0 without `len`; ICMP `type` to 8 (echo request); `inner` is the
//! header an ICMP error quotes (required for error types). `t` (seconds since the start,
//! fractions allowed, never decreasing) defaults to the previous line's. `flush` empties the
//! conntrack table (`conntrack -F`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;

use super::Netns;
use super::conntrack::{CtInfo, Manip, TcpState};
use super::packet::{Icmp, Packet, Protocol, TcpFlags, Tuple, icmp_type};
use super::path::{Disposition, Fate, PacketVerdict};
use super::rules::{Hook, Policy, Table};

/// One step of a packet's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The packet enters a hook (the tables run in kernel priority order inside it).
    Hook { hook: Hook, iif: Option<String>, oif: Option<String> },
    /// A route lookup and its result.
    Route { dst: Ipv4Addr, mark: String, result: String },
    /// Conntrack's verdict on the packet.
    Conntrack { result: String, ctinfo: Option<CtInfo>, tcp_state: Option<TcpState>, zone: u16 },
    /// A rule matched (position is 1-based) and its target ran.
    Rule { table: Table, chain: String, position: usize, target: String },
    /// The packet fell off a built-in chain and took its policy.
    Policy { table: Table, chain: String, policy: Policy },
    /// NAT rewrote the packet.
    Nat { manip: Manip, packet: String },
    /// The connection entry was confirmed (inserted into the table), or the confirm failed.
    Confirm { ok: bool },
    /// A locally routed packet loops back through `lo`.
    Loopback,
}

/// The recorded path of one packet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub events: Vec<Event>,
}

impl Trace {
    pub fn push(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Every matched rule as `table/chain/position`, in order.
    pub fn rules(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Rule { table, chain, position, .. } => {
                    Some(format!("{table}/{chain}/{position}"))
                }
                _ => None,
            })
            .collect()
    }
}

/// Which way a line's packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a local socket.
    Out,
    /// Arriving on an interface.
    In,
}

/// One parsed packet line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketLine {
    pub direction: Direction,
    pub packet: Packet,
    pub iif: Option<String>,
    pub t: Option<Duration>,
    /// Who sent an `out` packet.
    pub sender: Sender,
}

/// The socket behind an `out` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A local socket whose SO_MARK is the packet's mark.
    App,
    /// The kernel's control socket (`kernel`).
    Kernel,
    /// No socket (`nosocket`).
    None,
}

impl Sender {
    /// The socket to pass to `Netns::output` for a packet with `mark`.
    pub fn socket(self, mark: u32) -> Option<super::sockets::SocketInfo> {
        match self {
            Sender::App => Some(super::sockets::SocketInfo { mark, ..Default::default() }),
            Sender::Kernel => Some(super::sockets::SocketInfo::kernel()),
            Sender::None => None,
        }
    }
}

/// One parsed input line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Packet(PacketLine),
    /// `flush`: `conntrack -F`.
    Flush {
        t: Option<Duration>,
    },
}

/// A bad packet line: the word at fault and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub token: String,
    pub expected: String,
}

fn err(token: &str, expected: &str) -> LineError {
    LineError { token: token.to_string(), expected: expected.to_string() }
}

fn sock(word: &str) -> Result<SocketAddrV4, LineError> {
    word.parse().map_err(|_| err(word, "an address as IPv4:PORT"))
}

fn parse_time(w: &str, val: &str) -> Result<Duration, LineError> {
    let secs: f64 = val
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e12)
        .ok_or_else(|| err(w, "a time in seconds (>= 0)"))?;
    Ok(Duration::from_secs_f64(secs))
}

/// `tcp:1.2.3.4:5>6.7.8.9:10`.
fn parse_inner(w: &str, val: &str) -> Result<Tuple, LineError> {
    let bad = || err(w, "inner=<tcp|udp>:IP:PORT>IP:PORT");
    let (proto, rest) = val.split_once(':').ok_or_else(bad)?;
    let proto = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(bad()),
    };
    let (a, b) = rest.split_once('>').ok_or_else(bad)?;
    let (a, b): (SocketAddrV4, SocketAddrV4) =
        (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    Ok(Tuple { proto, src: *a.ip(), dst: *b.ip(), sport: a.port(), dport: b.port() })
}

/// Parses one input line (not a comment or blank line).
pub fn parse_line(line: &str) -> Result<Line, LineError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() == Some(&"flush") {
        let mut t = None;
        for w in &words[1..] {
            match w.split_once('=') {
                Some(("t", v)) => t = Some(parse_time(w, v)?),
                _ => return Err(err(w, "t=SECONDS after `flush`")),
            }
        }
        return Ok(Line::Flush { t });
    }
    let get = |i: usize, what: &str| words.get(i).copied().ok_or_else(|| err("", what));
    let direction = match get(0, "`out`, `in` or `flush`")? {
        "out" => Direction::Out,
        "in" => Direction::In,
        w => return Err(err(w, "`out`, `in` or `flush`")),
    };
    let proto = match get(1, "`tcp`, `udp` or `icmp`")? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        w => return Err(err(w, "`tcp`, `udp` or `icmp`")),
    };
    let mut packet = if proto == Protocol::Icmp {
        let src = get(2, "a source IPv4 address")?;
        let src: Ipv4Addr = src.parse().map_err(|_| err(src, "a source IPv4 address"))?;
        match get(3, "`>`")? {
            ">" => {}
            w => return Err(err(w, "`>` between source and destination")),
        }
        let dst = get(4, "a destination IPv4 address")?;
        let dst: Ipv4Addr = dst.parse().map_err(|_| err(dst, "a destination IPv4 address"))?;
        let icmp = Icmp { kind: icmp_type::ECHO_REQUEST, code: 0, id: 0, inner: None };
        Packet::icmp(src, dst, icmp)
    } else {
        let src = sock(get(2, "a source IPv4:PORT")?)?;
        match get(3, "`>`")? {
            ">" => {}
            w => return Err(err(w, "`>` between source and destination")),
        }
        let dst = sock(get(4, "a destination IPv4:PORT")?)?;
        match proto {
            Protocol::Tcp => Packet::tcp(src, dst, TcpFlags::S),
            _ => Packet::udp(src, dst),
        }
    };
    let (mut iif, mut t, mut sender, mut len_given) = (None, None, Sender::App, false);
    let mut payload_given = false;
    for w in &words[5..] {
        if *w == "nosocket" || *w == "kernel" {
            if direction != Direction::Out {
                return Err(err(w, "`nosocket`/`kernel` only on `out` lines"));
            }
            sender = if *w == "kernel" { Sender::Kernel } else { Sender::None };
            continue;
        }
        let Some((key, val)) = w.split_once('=') else {
            return Err(err(
                w,
                "key=value (flags, mark, iif, len, t, type, code, id, inner), `nosocket` or `kernel`",
            ));
        };
        let icmp = packet.icmp.as_mut();
        match (key, icmp) {
            ("flags", _) if proto == Protocol::Tcp => {
                packet.tcp_flags = TcpFlags::parse(val)
                    .ok_or_else(|| err(w, "TCP flags such as S, SA, A, PA, FA, F, R, RA"))?;
            }
            ("flags", _) => return Err(err(w, "flags only on tcp packets")),
            ("type", Some(i)) => i.kind = val.parse().map_err(|_| err(w, "an ICMP type 0-255"))?,
            ("code", Some(i)) => i.code = val.parse().map_err(|_| err(w, "an ICMP code 0-255"))?,
            ("id", Some(i)) => {
                i.id = val.parse().map_err(|_| err(w, "an ICMP identifier 0-65535"))?
            }
            ("inner", Some(i)) => i.inner = Some(parse_inner(w, val)?),
            ("type" | "code" | "id" | "inner", None) => {
                return Err(err(w, "ICMP fields only on icmp packets"));
            }
            ("mark", _) => {
                packet.mark = super::rules::parse_u32(val)
                    .ok_or_else(|| err(w, "a 32-bit mark (0x.. or decimal)"))?;
            }
            ("iif", _) if direction == Direction::In => {
                if super::addr::IfKey::new(val).is_none() {
                    return Err(err(w, "an interface name"));
                }
                iif = Some(val.to_string());
            }
            ("iif", _) => return Err(err(w, "iif only on `in` lines")),
            ("len", _) => {
                packet.len = val
                    .parse()
                    .ok()
                    .filter(|l| (20..=65535).contains(l))
                    .ok_or_else(|| err(w, "an IP length 20-65535"))?;
                len_given = true;
            }
            ("payload", _) if proto != Protocol::Icmp => {
                packet.payload = val
                    .parse()
                    .ok()
                    .filter(|p| *p <= 65535)
                    .ok_or_else(|| err(w, "a payload length 0-65535"))?;
                payload_given = true;
            }
            ("t", _) => t = Some(parse_time(w, val)?),
            _ => {
                return Err(err(
                    w,
                    "one of flags=, mark=, iif=, len=, payload=, t=, type=, code=, id=, inner=, nosocket, kernel",
                ));
            }
        }
    }
    if len_given && !payload_given {
        let headers = match proto {
            Protocol::Udp => 28,
            _ if packet.tcp_flags.has(TcpFlags::SYN) => 60,
            _ => 52,
        };
        packet.payload = packet.len.saturating_sub(headers);
    }
    if let Some(i) = packet.icmp {
        if icmp_type::is_error(i.kind) && i.inner.is_none() {
            return Err(err(
                line.split_whitespace().nth(1).unwrap_or(""),
                "inner=… on an ICMP error",
            ));
        }
        if !len_given {
            packet.len = 28 + if i.inner.is_some() { 40 } else { 0 };
        }
    }
    Ok(Line::Packet(PacketLine { direction, packet, iif, t, sender }))
}

/// `ip:port` and mark of a packet as printed in records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PacketView {
    pub proto: Protocol,
    pub src: String,
    pub dst: String,
    pub mark: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// ICMP: `type=T code=C [id=N] [inner=proto:src>dst]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<String>,
}

impl From<&Packet> for PacketView {
    fn from(p: &Packet) -> Self {
        let icmp = p.proto == Protocol::Icmp;
        PacketView {
            proto: p.proto,
            src: if icmp { p.src.to_string() } else { p.src_sock().to_string() },
            dst: if icmp { p.dst.to_string() } else { p.dst_sock().to_string() },
            mark: format!("0x{:x}", p.mark),
            flags: (p.proto == Protocol::Tcp).then(|| p.tcp_flags.to_string()),
            icmp: p.icmp.filter(|_| icmp).map(|i| {
                let mut s = format!("type={} code={}", i.kind, i.code);
                if i.id != 0 {
                    s += &format!(" id={}", i.id);
                }
                if let Some(t) = i.inner {
                    s += &format!(" inner={}:{}:{}>{}:{}", t.proto, t.src, t.sport, t.dst, t.dport);
                }
                s
            }),
        }
    }
}

/// The JSON record `testbed trace` prints for one packet (field order is stable).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub line: usize,
    pub t: f64,
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_with: Option<String>,
    pub ctstate: &'static str,
    pub tcp_state: Option<TcpState>,
    pub packet: PacketView,
    pub local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    pub rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orig_dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<Record>>,
}

impl Record {
    /// Builds the record of a packet's fate (with the trace recorded for it).
    pub fn new(netns: &Netns, line: usize, now: Duration, fate: &Fate, trace: &Trace) -> Self {
        let (verdict, dropped_by, rejected_with) = match &fate.verdict {
            PacketVerdict::Accept => ("ACCEPT", None, None),
            PacketVerdict::Drop(cause) => ("DROP", Some(netns.describe_drop(cause)), None),
            PacketVerdict::Reject { by, with } => {
                ("DROP", Some(netns.rule_name(*by)), Some(with.name().to_string()))
            }
        };
        let (local, oif, next_hop) = match fate.disposition {
            Disposition::Local { .. } => (true, None, None),
            Disposition::Sent { oif, next_hop, .. } => (
                false,
                Some(netns.routing().interface(oif).name.clone()),
                Some(next_hop.to_string()),
            ),
            Disposition::None => (false, None, None),
        };
        let reply = fate
            .reply
            .as_ref()
            .map(|r| Box::new(Record::new(netns, line, now, r, &Trace::default())));
        Record {
            line,
            t: now.as_secs_f64(),
            verdict,
            dropped_by,
            rejected_with,
            ctstate: fate.ctstate.name(),
            tcp_state: fate.tcp_state,
            packet: PacketView::from(&fate.packet),
            local,
            oif,
            next_hop,
            rules: trace.rules(),
            orig_dst: fate.orig_dst.map(|a| a.to_string()),
            reply,
        }
    }

    /// One JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("records serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_defaults() {
        let Line::Packet(l) = parse_line("out tcp 10.0.1.5:40000 > 10.9.9.9:80").unwrap() else {
            panic!()
        };
        assert_eq!(l.direction, Direction::Out);
        assert_eq!(l.packet.tcp_flags, TcpFlags::S);
        assert_eq!(l.packet.len, 60);
        assert_eq!(l.t, None);
        let Line::Packet(l) =
            parse_line("in udp 10.0.2.7:53 > 10.0.1.5:5353 mark=0x539 iif=eth1 len=100 t=1.5")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((l.packet.mark, l.packet.len, l.packet.payload), (0x539, 100, 72));
        assert_eq!(l.iif.as_deref(), Some("eth1"));
        assert_eq!(l.t, Some(Duration::from_millis(1500)));
        let Line::Packet(l) = parse_line(
            "in icmp 10.0.1.1 > 10.0.1.5 type=3 code=1 inner=tcp:10.0.1.5:1>10.9.9.9:80",
        )
        .unwrap() else {
            panic!()
        };
        let i = l.packet.icmp.unwrap();
        assert_eq!((i.kind, i.code, l.packet.len), (3, 1, 68));
        assert_eq!(i.inner.unwrap().dport, 80);
        assert_eq!(
            parse_line("flush t=2").unwrap(),
            Line::Flush { t: Some(Duration::from_secs(2)) }
        );
    }

    #[test]
    fn bad_lines_name_the_word() {
        let cases = [
            ("sideways tcp 1.1.1.1:1 > 2.2.2.2:2", "sideways"),
            ("out sctp 1.1.1.1:1 > 2.2.2.2:2", "sctp"),
            ("out tcp 1.1.1.1 > 2.2.2.2:2", "1.1.1.1"),
            ("out tcp 1.1.1.1:1 < 2.2.2.2:2", "<"),
            ("out tcp 1.1.1.1:1 > 2.2.2.2:2 flags=XYZ", "flags=XYZ"),
            ("out udp 1.1.1.1:1 > 2.2.2.2:2 flags=S", "flags=S"),
            ("out tcp 1.1.1.1:1 > 2.2.2.2:2 iif=eth0", "iif=eth0"),
            ("in tcp 1.1.1.1:1 > 2.2.2.2:2 t=-1", "t=-1"),
            ("in tcp 1.1.1.1:1 > 2.2.2.2:2 bogus", "bogus"),
            ("in tcp 1.1.1.1:1 >", ""),
            ("in icmp 1.1.1.1 > 2.2.2.2 type=3", "icmp"),
            (
                "in icmp 1.1.1.1 > 2.2.2.2 inner=sctp:1.1.1.1:1>2.2.2.2:2",
                "inner=sctp:1.1.1.1:1>2.2.2.2:2",
            ),
            ("in tcp 1.1.1.1:1 > 2.2.2.2:2 type=3", "type=3"),
            ("flush now", "now"),
        ];
        for (line, token) in cases {
            let e = parse_line(line).unwrap_err();
            assert_eq!(e.token, token, "{line}");
        }
    }
}
