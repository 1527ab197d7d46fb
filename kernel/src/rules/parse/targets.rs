//! Targets (`-j`/`-g`) and their options, canonicalised as iptables-save prints them.

use super::*;

/// A target being parsed.
pub(super) enum TargetBuilder {
    Simple(Target),
    Goto(String),
    Jump(String),
    Reject(Option<RejectWith>),
    Log(LogTarget),
    Mark(Option<(u32, u32)>),
    Connmark { op: Option<ConnmarkOp>, nfmask: Option<u32>, ctmask: Option<u32> },
    Ct { zone: Option<u16>, notrack: bool },
    Nat { kind: &'static str, range: NatRange, to_given: bool },
    Tproxy { port: Option<u16>, ip: Ipv4Addr, mark: (u32, u32) },
}

impl TargetBuilder {
    pub(super) fn extension(name: &str) -> Option<TargetBuilder> {
        Some(match name {
            "REJECT" => TargetBuilder::Reject(None),
            "LOG" => TargetBuilder::Log(LogTarget { level: 4, ..LogTarget::default() }),
            "MARK" => TargetBuilder::Mark(None),
            "CONNMARK" => TargetBuilder::Connmark { op: None, nfmask: None, ctmask: None },
            "CT" => TargetBuilder::Ct { zone: None, notrack: false },
            "NOTRACK" => TargetBuilder::Simple(Target::Notrack),
            "REDIRECT" => {
                TargetBuilder::Nat { kind: "REDIRECT", range: NatRange::default(), to_given: false }
            }
            "MASQUERADE" => TargetBuilder::Nat {
                kind: "MASQUERADE",
                range: NatRange::default(),
                to_given: false,
            },
            "DNAT" => {
                TargetBuilder::Nat { kind: "DNAT", range: NatRange::default(), to_given: false }
            }
            "SNAT" => {
                TargetBuilder::Nat { kind: "SNAT", range: NatRange::default(), to_given: false }
            }
            "TPROXY" => {
                TargetBuilder::Tproxy { port: None, ip: Ipv4Addr::UNSPECIFIED, mark: (0, 0) }
            }
            _ => return None,
        })
    }

    pub(super) fn new(w: &Words<'_>, name: &str) -> Result<TargetBuilder, ParseError> {
        Ok(match name {
            "ACCEPT" => TargetBuilder::Simple(Target::Accept),
            "DROP" => TargetBuilder::Simple(Target::Drop),
            "RETURN" => TargetBuilder::Simple(Target::Return),
            "QUEUE" | "NFQUEUE" | "SECMARK" | "CONNSECMARK" | "TEE" | "CLASSIFY" | "DSCP"
            | "TOS" | "TTL" | "NETMAP" | "NFLOG" | "TRACE" | "AUDIT" | "HMARK" | "TCPMSS" => {
                return Err(w.err(name, "a target the model implements (ACCEPT, DROP, RETURN, REJECT, LOG, MARK, CONNMARK, CT, NOTRACK, REDIRECT, MASQUERADE, DNAT, SNAT, TPROXY or a chain)"));
            }
            _ => match TargetBuilder::extension(name) {
                Some(t) => t,
                None => {
                    check_chain_name(w.line, name)?;
                    TargetBuilder::Jump(name.to_string())
                }
            },
        })
    }

    pub(super) fn options(&self) -> &'static [&'static str] {
        match self {
            TargetBuilder::Simple(_) | TargetBuilder::Goto(_) | TargetBuilder::Jump(_) => &[],
            TargetBuilder::Reject(_) => &["--reject-with"],
            TargetBuilder::Log(_) => &[
                "--log-level",
                "--log-prefix",
                "--log-tcp-sequence",
                "--log-tcp-options",
                "--log-ip-options",
                "--log-uid",
                "--log-macdecode",
            ],
            TargetBuilder::Mark(_) => {
                &["--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"]
            }
            TargetBuilder::Connmark { .. } => &[
                "--set-xmark",
                "--set-mark",
                "--and-mark",
                "--or-mark",
                "--xor-mark",
                "--save-mark",
                "--restore-mark",
                "--mask",
                "--nfmask",
                "--ctmask",
            ],
            TargetBuilder::Ct { .. } => &[
                "--notrack",
                "--zone",
                "--helper",
                "--ctevents",
                "--expevents",
                "--timeout",
                "--zone-orig",
                "--zone-reply",
            ],
            TargetBuilder::Nat { kind: "DNAT", .. } => {
                &["--to-destination", "--random", "--persistent"]
            }
            TargetBuilder::Nat { kind: "SNAT", .. } => {
                &["--to-source", "--random", "--random-fully", "--persistent"]
            }
            TargetBuilder::Nat { kind: "MASQUERADE", .. } => {
                &["--to-ports", "--random", "--random-fully"]
            }
            TargetBuilder::Nat { .. } => &["--to-ports", "--random"],
            TargetBuilder::Tproxy { .. } => &["--on-port", "--on-ip", "--tproxy-mark"],
        }
    }

    pub(super) fn option(
        &mut self,
        w: &mut Words<'_>,
        opt: &str,
        neg: bool,
    ) -> Result<(), ParseError> {
        if neg {
            return Err(w.err(opt, format!("no `!` before target option `{opt}`")));
        }
        match self {
            TargetBuilder::Simple(_) | TargetBuilder::Goto(_) | TargetBuilder::Jump(_) => {
                unreachable!("no options")
            }
            TargetBuilder::Reject(with) => {
                let v = w.value(opt, "a reject type")?;
                let aliases = [
                    ("net-unreach", RejectWith::IcmpNetUnreachable),
                    ("host-unreach", RejectWith::IcmpHostUnreachable),
                    ("port-unreach", RejectWith::IcmpPortUnreachable),
                    ("proto-unreach", RejectWith::IcmpProtoUnreachable),
                    ("net-prohib", RejectWith::IcmpNetProhibited),
                    ("host-prohib", RejectWith::IcmpHostProhibited),
                    ("admin-prohib", RejectWith::IcmpAdminProhibited),
                    ("tcp-rst", RejectWith::TcpReset),
                ];
                let r = RejectWith::ALL
                    .iter()
                    .map(|(r, n)| (*n, *r))
                    .chain(aliases)
                    .find(|(n, _)| *n == v)
                    .map(|(_, r)| r)
                    .ok_or_else(|| w.err(v, "a reject type: icmp-port-unreachable, tcp-reset, icmp-host-prohibited, …"))?;
                *with = Some(r);
            }
            TargetBuilder::Log(l) => match opt {
                "--log-level" => {
                    let v = w.value(opt, "a log level")?;
                    let names =
                        ["emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"];
                    l.level = match v.parse::<u8>() {
                        Ok(n) if n <= 7 => n,
                        _ => names
                            .iter()
                            .position(|n| *n == v)
                            .or(match v {
                                "err" => Some(3),
                                "warn" => Some(4),
                                "panic" => Some(0),
                                _ => None,
                            })
                            .ok_or_else(|| w.err(v, "a log level 0-7 or a syslog level name"))?
                            as u8,
                    };
                }
                "--log-prefix" => {
                    let v = w.value(opt, "a prefix")?;
                    if v.len() > 29 {
                        return Err(w.err(v, "a log prefix of at most 29 characters"));
                    }
                    l.prefix = (!v.is_empty()).then(|| v.to_string());
                }
                other => {
                    let bit = match other {
                        "--log-tcp-sequence" => 0,
                        "--log-tcp-options" => 1,
                        "--log-ip-options" => 2,
                        "--log-uid" => 3,
                        _ => 4,
                    };
                    l.flags |= 1 << bit;
                }
            },
            TargetBuilder::Mark(m) => {
                if m.is_some() {
                    return Err(w.err(opt, "a single MARK operation"));
                }
                let v = w.value(opt, "a mark")?;
                *m = Some(mark_op(w, opt, v)?);
            }
            TargetBuilder::Connmark { op, nfmask, ctmask } => match opt {
                "--save-mark" | "--restore-mark" => {
                    if op.is_some() {
                        return Err(w.err(opt, "a single CONNMARK operation"));
                    }
                    *op = Some(if opt == "--save-mark" {
                        ConnmarkOp::Save { nfmask: 0, ctmask: 0 }
                    } else {
                        ConnmarkOp::Restore { nfmask: 0, ctmask: 0 }
                    });
                }
                "--mask" | "--nfmask" | "--ctmask" => {
                    let v = w.value(opt, "a mask")?;
                    let m = parse_u32(v).ok_or_else(|| w.err(v, "a 32-bit mask"))?;
                    if opt != "--ctmask" {
                        *nfmask = Some(m);
                    }
                    if opt != "--nfmask" {
                        *ctmask = Some(m);
                    }
                }
                _ => {
                    if op.is_some() {
                        return Err(w.err(opt, "a single CONNMARK operation"));
                    }
                    let v = w.value(opt, "a mark")?;
                    let (value, mask) = mark_op(w, opt, v)?;
                    *op = Some(ConnmarkOp::SetXmark { value, mask });
                }
            },
            TargetBuilder::Ct { zone, notrack } => match opt {
                "--notrack" => *notrack = true,
                "--zone" => {
                    let v = w.value(opt, "a zone number")?;
                    *zone = Some(v.parse().map_err(|_| w.err(v, "a zone number 0-65535"))?);
                }
                other => {
                    return Err(
                        w.err(other, "a CT option the model implements (--zone, --notrack)")
                    );
                }
            },
            TargetBuilder::Nat { kind, range, to_given } => match opt {
                "--random" => range.random = true,
                "--random-fully" => range.random_fully = true,
                "--persistent" => range.persistent = true,
                "--to-ports" => {
                    let v = w.value(opt, "a port or port range")?;
                    range.ports = Some(parse_dash_ports(w, v)?);
                    *to_given = true;
                }
                _ => {
                    let v = w.value(opt, "an address[:port] range")?;
                    if *to_given {
                        return Err(w.err(opt, format!("one `{opt}` per {kind} rule")));
                    }
                    let parsed = parse_nat_to(w, v)?;
                    range.addrs = parsed.addrs;
                    range.ports = parsed.ports;
                    *to_given = true;
                }
            },
            TargetBuilder::Tproxy { port, ip, mark } => match opt {
                "--on-port" => {
                    let v = w.value(opt, "a port")?;
                    *port = Some(parse_port(v).ok_or_else(|| w.err(v, "a port 0-65535"))?);
                }
                "--on-ip" => {
                    let v = w.value(opt, "an address")?;
                    *ip = v.parse().map_err(|_| w.err(v, "an IPv4 address"))?;
                }
                _ => {
                    let v = w.value(opt, "a mark")?;
                    *mark = parse_mark(w, v)?;
                }
            },
        }
        Ok(())
    }

    pub(super) fn finish(self, w: &Words<'_>, rule: &Rule) -> Result<Target, ParseError> {
        let proto = proto_module(rule);
        Ok(match self {
            TargetBuilder::Simple(t) => t,
            TargetBuilder::Goto(name) => Target::Goto(ChainRef { name, index: usize::MAX }),
            TargetBuilder::Jump(name) => Target::Jump(ChainRef { name, index: usize::MAX }),
            TargetBuilder::Reject(with) => {
                let with = with.unwrap_or(RejectWith::IcmpPortUnreachable);
                if with == RejectWith::TcpReset && proto != Some("tcp") {
                    return Err(w.err("tcp-reset", "`-p tcp` for REJECT --reject-with tcp-reset"));
                }
                Target::Reject(with)
            }
            TargetBuilder::Log(l) => Target::Log(l),
            TargetBuilder::Mark(m) => {
                let (value, mask) = m.ok_or_else(|| {
                    w.err(
                        "MARK",
                        "one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark",
                    )
                })?;
                Target::Mark { value, mask }
            }
            TargetBuilder::Connmark { op, nfmask, ctmask } => {
                let op = op.ok_or_else(|| {
                    w.err(
                        "CONNMARK",
                        "one of --set-xmark, --set-mark, --save-mark, --restore-mark, …",
                    )
                })?;
                let nf = nfmask.unwrap_or(u32::MAX);
                let ct = ctmask.unwrap_or(u32::MAX);
                Target::Connmark(match op {
                    ConnmarkOp::Save { .. } => ConnmarkOp::Save { nfmask: nf, ctmask: ct },
                    ConnmarkOp::Restore { .. } => ConnmarkOp::Restore { nfmask: nf, ctmask: ct },
                    set => {
                        if nfmask.is_some() || ctmask.is_some() {
                            return Err(
                                w.err("--mask", "masks only with --save-mark or --restore-mark")
                            );
                        }
                        set
                    }
                })
            }
            TargetBuilder::Ct { zone, notrack } => {
                Target::Ct { zone: zone.filter(|z| *z != 0), notrack }
            }
            TargetBuilder::Nat { kind, range, to_given } => {
                if range.ports.is_some() && !matches!(proto, Some("tcp" | "udp")) {
                    return Err(w.err(kind, format!("`-p tcp` or `-p udp` for {kind} with ports")));
                }
                match kind {
                    "REDIRECT" => Target::Redirect(range),
                    "MASQUERADE" => Target::Masquerade(range),
                    "DNAT" | "SNAT" => {
                        if !to_given {
                            let opt =
                                if kind == "DNAT" { "--to-destination" } else { "--to-source" };
                            return Err(w.err(kind, format!("`{opt}` for {kind}")));
                        }
                        if kind == "DNAT" { Target::Dnat(range) } else { Target::Snat(range) }
                    }
                    _ => unreachable!("nat kinds"),
                }
            }
            TargetBuilder::Tproxy { port, ip, mark } => {
                if !matches!(proto, Some("tcp" | "udp")) {
                    return Err(w.err("TPROXY", "`-p tcp` or `-p udp` for TPROXY"));
                }
                let port = port.ok_or_else(|| w.err("TPROXY", "`--on-port` for TPROXY"))?;
                Target::Tproxy { port, ip, mark: mark.0, mask: mark.1 }
            }
        })
    }
}

/// MARK/CONNMARK set operations → (value, mask) in `--set-xmark` form.
pub(super) fn mark_op(w: &Words<'_>, opt: &str, v: &str) -> Result<(u32, u32), ParseError> {
    let single = |w: &Words<'_>| parse_u32(v).ok_or_else(|| w.err(v, "a 32-bit value"));
    Ok(match opt {
        "--set-xmark" => parse_mark(w, v)?,
        "--set-mark" => {
            let (value, mask) = parse_mark(w, v)?;
            (value, mask | value)
        }
        "--and-mark" => (0, !single(w)?),
        "--or-mark" => {
            let x = single(w)?;
            (x, x)
        }
        _ => (single(w)?, 0),
    })
}

/// `P` or `P-Q`.
pub(super) fn parse_dash_ports(w: &Words<'_>, v: &str) -> Result<PortRange, ParseError> {
    let bad = || w.err(v, "a port or range `P-Q` with P <= Q");
    let (lo, hi) = match v.split_once('-') {
        None => {
            let p = parse_port(v).ok_or_else(bad)?;
            (p, p)
        }
        Some((a, b)) => (parse_port(a).ok_or_else(bad)?, parse_port(b).ok_or_else(bad)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

/// `[A[-B]][:P[-Q]]` of --to-destination / --to-source.
pub(super) fn parse_nat_to(w: &Words<'_>, v: &str) -> Result<NatRange, ParseError> {
    let (addrs, ports) = match v.split_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let mut range = NatRange::default();
    if !addrs.is_empty() {
        let bad = || w.err(v, "an address or range `A[-B]` (optionally `:P[-Q]`)");
        let (a, b) = match addrs.split_once('-') {
            None => {
                let a: Ipv4Addr = addrs.parse().map_err(|_| bad())?;
                (a, a)
            }
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        };
        if u32::from(a) > u32::from(b) {
            return Err(bad());
        }
        range.addrs = Some((a, b));
    }
    if let Some(p) = ports {
        range.ports = Some(parse_dash_ports(w, p)?);
    }
    if range.addrs.is_none() && range.ports.is_none() {
        return Err(w.err(v, "an address and/or `:port`"));
    }
    Ok(range)
}
