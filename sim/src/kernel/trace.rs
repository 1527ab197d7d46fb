//! Traces of a packet's path, the packet-line format of `testbed trace`, and its JSON records.
//!
//! A [`Trace`] is only built when the caller asks for one (`Netns::output_traced`…); the
//! untraced path never allocates. Line format, one packet per line (`#` comments, blank lines
//! ignored):
//!
//! ```text
//! <out|in> <tcp|udp> <src-ip>:<port> > <dst-ip>:<port> [flags=S|SA|A|PA|FA|F|R|RA] [mark=0x..]
//!          [iif=NAME] [len=N] [t=SECONDS] [nosocket]
//! ```
//!
//! `out` = sent by a local socket (its SO_MARK is `mark`; `nosocket` makes it kernel-generated),
//! `in` = arriving on `iif` (default `eth0`). TCP flags default to `S`; `len` to 60 (TCP) or 28
//! (UDP); `t` (seconds since the start, fractions allowed, never decreasing) to the previous
//! line's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;

use super::Netns;
use super::conntrack::{CtInfo, Manip, TcpState};
use super::packet::{Packet, Protocol, TcpFlags};
use super::path::{Disposition, Outcome, PacketVerdict};
use super::rules::{Hook, Policy, TableKind};

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
    Rule { table: TableKind, chain: String, position: usize, target: String },
    /// The packet fell off a built-in chain and took its policy.
    Policy { table: TableKind, chain: String, policy: Policy },
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
    /// `out` without a sending socket (kernel-generated).
    pub no_socket: bool,
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

/// Parses one packet line (not a comment or blank line).
pub fn parse_line(line: &str) -> Result<PacketLine, LineError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let get = |i: usize, what: &str| words.get(i).copied().ok_or_else(|| err("", what));
    let direction = match get(0, "`out` or `in`")? {
        "out" => Direction::Out,
        "in" => Direction::In,
        w => return Err(err(w, "`out` or `in`")),
    };
    let proto = match get(1, "`tcp` or `udp`")? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        w => return Err(err(w, "`tcp` or `udp`")),
    };
    let src = sock(get(2, "a source IPv4:PORT")?)?;
    match get(3, "`>`")? {
        ">" => {}
        w => return Err(err(w, "`>` between source and destination")),
    }
    let dst = sock(get(4, "a destination IPv4:PORT")?)?;
    let mut packet = match proto {
        Protocol::Tcp => Packet::tcp(src, dst, TcpFlags::S),
        _ => Packet::udp(src, dst),
    };
    let (mut iif, mut t, mut no_socket) = (None, None, false);
    for w in &words[5..] {
        if *w == "nosocket" {
            if direction != Direction::Out {
                return Err(err(w, "`nosocket` only on `out` lines"));
            }
            no_socket = true;
            continue;
        }
        let Some((key, val)) = w.split_once('=') else {
            return Err(err(w, "key=value (flags, mark, iif, len, t) or `nosocket`"));
        };
        match key {
            "flags" if proto == Protocol::Tcp => {
                packet.tcp_flags = TcpFlags::parse(val)
                    .ok_or_else(|| err(w, "TCP flags such as S, SA, A, PA, FA, F, R, RA"))?;
            }
            "flags" => return Err(err(w, "no flags on a udp packet")),
            "mark" => {
                packet.mark = super::rules::parse_u32(val)
                    .ok_or_else(|| err(w, "a 32-bit mark (0x.. or decimal)"))?;
            }
            "iif" if direction == Direction::In => {
                if super::addr::IfKey::new(val).is_none() {
                    return Err(err(w, "an interface name"));
                }
                iif = Some(val.to_string());
            }
            "iif" => return Err(err(w, "iif only on `in` lines")),
            "len" => {
                packet.len = val
                    .parse()
                    .ok()
                    .filter(|l| (20..=65535).contains(l))
                    .ok_or_else(|| err(w, "an IP length 20-65535"))?;
            }
            "t" => {
                let secs: f64 = val
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e12)
                    .ok_or_else(|| err(w, "a time in seconds (>= 0)"))?;
                t = Some(Duration::from_secs_f64(secs));
            }
            _ => return Err(err(w, "one of flags=, mark=, iif=, len=, t=, nosocket")),
        }
    }
    Ok(PacketLine { direction, packet, iif, t, no_socket })
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
}

impl From<&Packet> for PacketView {
    fn from(p: &Packet) -> Self {
        PacketView {
            proto: p.proto,
            src: p.src_sock().to_string(),
            dst: p.dst_sock().to_string(),
            mark: format!("0x{:x}", p.mark),
            flags: (p.proto == Protocol::Tcp).then(|| p.tcp_flags.to_string()),
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
    /// Builds the record of an outcome (with the trace recorded for it).
    pub fn new(
        netns: &Netns,
        line: usize,
        now: Duration,
        outcome: &Outcome,
        trace: &Trace,
    ) -> Self {
        let (verdict, dropped_by, rejected_with) = match &outcome.verdict {
            PacketVerdict::Accept => ("ACCEPT", None, None),
            PacketVerdict::Drop(cause) => ("DROP", Some(netns.describe_drop(cause)), None),
            PacketVerdict::Reject { by, with } => {
                ("DROP", Some(netns.rule_name(*by)), Some(with.name().to_string()))
            }
        };
        let (local, oif, next_hop) = match outcome.disposition {
            Disposition::Local { .. } => (true, None, None),
            Disposition::Sent { oif, next_hop, .. } => (
                false,
                Some(netns.routing().interface(oif).name.clone()),
                Some(next_hop.to_string()),
            ),
            Disposition::None => (false, None, None),
        };
        let reply = outcome
            .reply
            .as_ref()
            .map(|r| Box::new(Record::new(netns, line, now, r, &Trace::default())));
        Record {
            line,
            t: now.as_secs_f64(),
            verdict,
            dropped_by,
            rejected_with,
            ctstate: outcome.ctstate.name(),
            tcp_state: outcome.tcp_state,
            packet: PacketView::from(&outcome.packet),
            local,
            oif,
            next_hop,
            rules: trace.rules(),
            orig_dst: outcome.orig_dst.map(|a| a.to_string()),
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
        let l = parse_line("out tcp 10.0.1.5:40000 > 10.9.9.9:80").unwrap();
        assert_eq!(l.direction, Direction::Out);
        assert_eq!(l.packet.tcp_flags, TcpFlags::S);
        assert_eq!(l.packet.len, 60);
        assert_eq!(l.t, None);
        let l = parse_line("in udp 10.0.2.7:53 > 10.0.1.5:5353 mark=0x539 iif=eth1 len=100 t=1.5")
            .unwrap();
        assert_eq!((l.packet.mark, l.packet.len), (0x539, 100));
        assert_eq!(l.iif.as_deref(), Some("eth1"));
        assert_eq!(l.t, Some(Duration::from_millis(1500)));
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
        ];
        for (line, token) in cases {
            let e = parse_line(line).unwrap_err();
            assert_eq!(e.token, token, "{line}");
        }
    }
}
