//! Match modules: loading (`-m`, implicit `-p` matches) and their options.

use super::*;

pub(super) fn load_match(w: &Words<'_>, b: &mut Builder, name: &str) -> Result<(), ParseError> {
    let r = &mut b.rule;
    let needs_proto = |proto: &str| -> Result<(), ParseError> {
        if proto_module(r) != Some(proto) {
            return Err(w.err(name, format!("`-p {proto}` before `-m {proto}`")));
        }
        Ok(())
    };
    let m = match name {
        "tcp" => {
            needs_proto("tcp")?;
            Match::Tcp(TcpMatch::default())
        }
        "udp" => {
            needs_proto("udp")?;
            Match::Udp(UdpMatch::default())
        }
        "icmp" => {
            needs_proto("icmp")?;
            Match::Icmp(IcmpMatch { kind: None, codes: (0, 0xff), negated: false })
        }
        "mark" => Match::Mark(MarkMatch { value: 0, mask: 0, negated: false }),
        "connmark" => Match::Connmark(MarkMatch { value: 0, mask: 0, negated: false }),
        "conntrack" => Match::Conntrack(StateMatch { states: 0, negated: false }),
        "state" => Match::State(StateMatch { states: 0, negated: false }),
        "addrtype" => Match::Addrtype(AddrtypeMatch::default()),
        "multiport" => {
            if !matches!(proto_module(r), Some("tcp" | "udp")) {
                return Err(w.err(name, "`-p tcp` or `-p udp` before `-m multiport`"));
            }
            Match::Multiport(MultiportMatch {
                dir: MultiportDir::Either,
                ports: Vec::new(),
                negated: false,
            })
        }
        "socket" => Match::Socket(SocketMatch::default()),
        "owner" => Match::OwnerSocketExists { negated: false },
        "comment" => Match::Comment(String::new()),
        other => {
            return Err(w.err(
                other,
                "a match the model implements: tcp, udp, icmp, mark, connmark, conntrack, state, addrtype, multiport, socket, owner, comment",
            ));
        }
    };
    r.matches.push(m);
    b.given.push(Vec::new());
    Ok(())
}

pub(super) fn match_options(m: &Match) -> &'static [&'static str] {
    match m {
        Match::Tcp(_) => &[
            "--source-port",
            "--sport",
            "--destination-port",
            "--dport",
            "--tcp-flags",
            "--syn",
            "--tcp-option",
        ],
        Match::Udp(_) => &["--source-port", "--sport", "--destination-port", "--dport"],
        Match::Icmp(_) => &["--icmp-type"],
        Match::Mark(_) | Match::Connmark(_) => &["--mark"],
        Match::Conntrack(_) => &[
            "--ctstate",
            "--ctproto",
            "--ctorigsrc",
            "--ctorigdst",
            "--ctreplsrc",
            "--ctrepldst",
            "--ctstatus",
            "--ctexpire",
            "--ctdir",
            "--ctorigsrcport",
            "--ctorigdstport",
            "--ctreplsrcport",
            "--ctrepldstport",
        ],
        Match::State(_) => &["--state"],
        Match::Addrtype(_) => {
            &["--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"]
        }
        Match::Multiport(_) => {
            &["--source-ports", "--sports", "--destination-ports", "--dports", "--ports"]
        }
        Match::Socket(_) => &["--transparent", "--nowildcard", "--restore-skmark"],
        Match::OwnerSocketExists { .. } => {
            &["--socket-exists", "--uid-owner", "--gid-owner", "--suppl-groups"]
        }
        Match::Comment(_) => &["--comment"],
    }
}

pub(super) fn parse_port(v: &str) -> Option<u16> {
    if let Ok(n) = v.parse::<u16>() {
        return Some(n);
    }
    let services = [
        ("ftp", 21),
        ("ssh", 22),
        ("telnet", 23),
        ("smtp", 25),
        ("domain", 53),
        ("http", 80),
        ("ntp", 123),
        ("https", 443),
    ];
    services.iter().find(|(n, _)| *n == v).map(|(_, p)| *p)
}

/// `a`, `a:b`, `a:` or `:b` (tcp/udp/multiport syntax).
pub(super) fn parse_port_range(w: &Words<'_>, v: &str) -> Result<PortRange, ParseError> {
    let bad = || w.err(v, "a port or port range (`N`, `N:M`, `N:`, `:M`) with N <= M");
    let (lo, hi) = match v.split_once(':') {
        None => {
            let p = parse_port(v).ok_or_else(bad)?;
            (p, p)
        }
        Some((a, b)) => (
            if a.is_empty() { 0 } else { parse_port(a).ok_or_else(bad)? },
            if b.is_empty() { 65535 } else { parse_port(b).ok_or_else(bad)? },
        ),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

/// strtoul with base 0: `0x` hex, leading `0` octal, else decimal.
pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// `VALUE[/MASK]`; the mask defaults to all ones.
pub(super) fn parse_mark(w: &Words<'_>, v: &str) -> Result<(u32, u32), ParseError> {
    let bad = || w.err(v, "a mark `VALUE[/MASK]` (decimal, 0x hex or 0 octal, 32 bits)");
    match v.split_once('/') {
        None => Ok((parse_u32(v).ok_or_else(bad)?, u32::MAX)),
        Some((a, m)) => Ok((parse_u32(a).ok_or_else(bad)?, parse_u32(m).ok_or_else(bad)?)),
    }
}

/// A `--sport`/`--dport` of tcp or udp, stored the way the kernel keeps it: a full range
/// (negated or not) is dropped, `! 0:N` becomes `N+1:65535`. Returns whether the option left
/// the instance at its defaults (see `TcpMatch::marker`).
pub(super) fn set_port(
    w: &Words<'_>,
    slot: &mut Option<PortMatch>,
    v: &str,
    neg: bool,
) -> Result<bool, ParseError> {
    let range = parse_port_range(w, v)?;
    *slot = match range {
        PortRange::ALL => None,
        PortRange { lo: 0, hi } if neg && hi > 0 => {
            Some(PortMatch { range: PortRange { lo: hi + 1, hi: 65535 }, negated: false })
        }
        range => Some(PortMatch { range, negated: neg }),
    };
    Ok(range == PortRange::ALL && !neg)
}

const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("FIN", 0x01),
    ("SYN", 0x02),
    ("RST", 0x04),
    ("PSH", 0x08),
    ("ACK", 0x10),
    ("URG", 0x20),
    ("ALL", 0x3f),
    ("NONE", 0),
];

pub(super) fn parse_tcp_flag_list(w: &Words<'_>, v: &str) -> Result<u8, ParseError> {
    let mut bits = 0;
    for name in v.split(',') {
        let (_, b) = TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| w.err(v, "TCP flags: FIN,SYN,RST,PSH,ACK,URG,ALL,NONE"))?;
        bits |= b;
    }
    Ok(bits)
}

fn once(w: &Words<'_>, again: bool, opt: &str) -> Result<(), ParseError> {
    if again { Err(w.err(opt, format!("`{opt}` at most once per match"))) } else { Ok(()) }
}

pub(super) fn match_option(
    w: &mut Words<'_>,
    m: &mut Match,
    opt: &str,
    neg: bool,
    again: bool,
) -> Result<(), ParseError> {
    let no_neg = |w: &Words<'_>| -> Result<(), ParseError> {
        if neg { Err(w.err(opt, format!("no `!` before `{opt}`"))) } else { Ok(()) }
    };
    match m {
        Match::Tcp(t) => match opt {
            "--source-port" | "--sport" => {
                let v = w.value(opt, "a port")?;
                once(w, again, "--sport")?;
                t.marker &= set_port(w, &mut t.sport, v, neg)?;
            }
            "--destination-port" | "--dport" => {
                let v = w.value(opt, "a port")?;
                once(w, again, "--dport")?;
                t.marker &= set_port(w, &mut t.dport, v, neg)?;
            }
            "--tcp-flags" | "--syn" => {
                once(w, again, "--tcp-flags")?;
                let (mask, comp) = if opt == "--syn" {
                    (0x17, 0x02)
                } else {
                    let mask = w.value(opt, "a flag mask")?;
                    let mask = parse_tcp_flag_list(w, mask)?;
                    let comp = w.value(opt, "the flags that must be set")?;
                    (mask, parse_tcp_flag_list(w, comp)?)
                };
                // A NONE mask tests nothing: the kernel drops it.
                t.flags = (mask != 0).then_some(TcpFlagsMatch { mask, comp, negated: neg });
                t.marker &= mask == 0 && comp == 0 && !neg;
            }
            _ => {
                return Err(w.err(
                    opt,
                    "a tcp option the model implements (--sport, --dport, --tcp-flags, --syn)",
                ));
            }
        },
        Match::Udp(u) => {
            let v = w.value(opt, "a port")?;
            let src = opt.contains("source") || opt == "--sport";
            once(w, again, if src { "--sport" } else { "--dport" })?;
            let slot = if src { &mut u.sport } else { &mut u.dport };
            u.marker &= set_port(w, slot, v, neg)?;
        }
        Match::Icmp(i) => {
            let v = w.value(opt, "an ICMP type")?;
            if i.kind.is_some() {
                return Err(w.err(opt, "--icmp-type at most once"));
            }
            let (kind, codes) = parse_icmp_type(v).ok_or_else(|| {
                w.err(v, "an ICMP type: a name (echo-request, …), `any`, TYPE or TYPE/CODE")
            })?;
            *i = IcmpMatch { kind, codes, negated: neg };
        }
        Match::Mark(mm) | Match::Connmark(mm) => {
            let v = w.value(opt, "a mark")?;
            if again {
                return Err(w.err(opt, "--mark at most once per match"));
            }
            let (value, mask) = parse_mark(w, v)?;
            // The kernel compares (mark & mask) == value, value kept as given (so 0x1ff/0xf0
            // can never match, and iptables-save prints it back unchanged).
            *mm = MarkMatch { value, mask, negated: neg };
        }
        Match::Conntrack(s) | Match::State(s) => {
            if !matches!(opt, "--ctstate" | "--state") {
                return Err(
                    w.err(opt, "--ctstate (the only conntrack option the model implements)")
                );
            }
            let v = w.value(opt, "a state list")?;
            if again {
                return Err(w.err(opt, format!("`{opt}` at most once")));
            }
            let mut bits = 0;
            for name in v.split(',') {
                let (b, _) = ctstate::NAMES
                    .iter()
                    .find(|(_, n)| n.eq_ignore_ascii_case(name))
                    .filter(|(b, _)| opt == "--ctstate" || *b & (ctstate::SNAT | ctstate::DNAT) == 0)
                    .ok_or_else(|| {
                        w.err(v, "states from INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED (and SNAT,DNAT for --ctstate)")
                    })?;
                bits |= b;
            }
            *s = StateMatch { states: bits, negated: neg };
        }
        Match::Addrtype(a) => match opt {
            "--src-type" | "--dst-type" => {
                let v = w.value(opt, "address types")?;
                let mut bits = 0u16;
                for name in v.split(',') {
                    let i = addrtype::NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(name))
                        .ok_or_else(|| {
                            w.err(v, format!("address types from {}", addrtype::NAMES.join(",")))
                        })?;
                    bits |= 1 << i;
                }
                let slot = if opt == "--src-type" { &mut a.src } else { &mut a.dst };
                if slot.is_some() {
                    return Err(w.err(opt, format!("`{opt}` at most once")));
                }
                *slot = Some((bits, neg));
            }
            "--limit-iface-in" => {
                no_neg(w)?;
                a.limit_iface_in = true;
            }
            _ => {
                no_neg(w)?;
                a.limit_iface_out = true;
            }
        },
        Match::Multiport(mp) => {
            let v = w.value(opt, "a port list")?;
            if !mp.ports.is_empty() {
                return Err(w.err(opt, "one port list per multiport match"));
            }
            mp.dir = match opt {
                "--source-ports" | "--sports" => MultiportDir::Source,
                "--destination-ports" | "--dports" => MultiportDir::Destination,
                _ => MultiportDir::Either,
            };
            let mut slots = 0;
            for part in v.split(',') {
                let range = parse_port_range(w, part)?;
                slots += if range.lo == range.hi { 1 } else { 2 };
                mp.ports.push(range);
            }
            if slots > 15 {
                return Err(w.err(v, "at most 15 ports (a range counts as two)"));
            }
            mp.negated = neg;
        }
        Match::Socket(s) => {
            no_neg(w)?;
            match opt {
                "--transparent" => s.transparent = true,
                "--nowildcard" => s.nowildcard = true,
                _ => s.restore_skmark = true,
            }
        }
        Match::OwnerSocketExists { negated } => {
            if opt != "--socket-exists" {
                return Err(
                    w.err(opt, "--socket-exists (the only owner option the model implements)")
                );
            }
            *negated = neg;
        }
        Match::Comment(c) => {
            no_neg(w)?;
            let v = w.value(opt, "a comment")?;
            if v.len() > 255 {
                return Err(w.err(v, "a comment of at most 255 characters"));
            }
            *c = v.to_string();
        }
    }
    Ok(())
}

/// ICMP type names as iptables knows them → (type, code range); `any` → `None`.
#[allow(clippy::type_complexity)]
pub(super) fn parse_icmp_type(v: &str) -> Option<(Option<u8>, (u8, u8))> {
    const NAMES: [(&str, u8, Option<u8>); 36] = [
        ("echo-reply", 0, None),
        ("pong", 0, None),
        ("destination-unreachable", 3, None),
        ("network-unreachable", 3, Some(0)),
        ("host-unreachable", 3, Some(1)),
        ("protocol-unreachable", 3, Some(2)),
        ("port-unreachable", 3, Some(3)),
        ("fragmentation-needed", 3, Some(4)),
        ("source-route-failed", 3, Some(5)),
        ("network-unknown", 3, Some(6)),
        ("host-unknown", 3, Some(7)),
        ("network-prohibited", 3, Some(9)),
        ("host-prohibited", 3, Some(10)),
        ("TOS-network-unreachable", 3, Some(11)),
        ("TOS-host-unreachable", 3, Some(12)),
        ("communication-prohibited", 3, Some(13)),
        ("host-precedence-violation", 3, Some(14)),
        ("precedence-cutoff", 3, Some(15)),
        ("source-quench", 4, None),
        ("redirect", 5, None),
        ("network-redirect", 5, Some(0)),
        ("host-redirect", 5, Some(1)),
        ("TOS-network-redirect", 5, Some(2)),
        ("TOS-host-redirect", 5, Some(3)),
        ("echo-request", 8, None),
        ("ping", 8, None),
        ("router-advertisement", 9, None),
        ("router-solicitation", 10, None),
        ("time-exceeded", 11, None),
        ("ttl-zero-during-transit", 11, Some(0)),
        ("ttl-zero-during-reassembly", 11, Some(1)),
        ("parameter-problem", 12, None),
        ("ip-header-bad", 12, Some(0)),
        ("required-option-missing", 12, Some(1)),
        ("timestamp-request", 13, None),
        ("timestamp-reply", 14, None),
    ];
    if v.eq_ignore_ascii_case("any") {
        return Some((None, (0, 0xff)));
    }
    if let Some((_, t, c)) = NAMES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(v)) {
        return Some((Some(*t), c.map_or((0, 0xff), |c| (c, c))));
    }
    match v.split_once('/') {
        None => Some((Some(v.parse().ok()?), (0, 0xff))),
        Some((t, c)) => {
            let c: u8 = c.parse().ok()?;
            Some((Some(t.parse().ok()?), (c, c)))
        }
    }
}
