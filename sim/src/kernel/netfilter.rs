//! Chain traversal: matches, targets, counters and policies for one table at one hook.
//!
//! Semantics of `ipt_do_table`/`nft_do_chain`: rules in order; a rule whose every match holds
//! counts the packet (packets and IP total length) and runs its target; `-j CHAIN` pushes a
//! return point, `-g CHAIN` does not; RETURN or the end of a user chain pops; RETURN or the end
//! of a built-in chain takes the policy, which is counted too. LOG, MARK, CONNMARK, CT, NOTRACK
//! and rules without a target continue; ACCEPT ends the table, DROP/REJECT end the packet, NAT
//! targets set the connection's binding and accept, TPROXY accepts (assigning a socket) or drops.
//! The jump stack is a fixed array (nesting is limited at load time), so traversal allocates
//! nothing unless a trace is being recorded.

use std::net::Ipv4Addr;

use super::addr::IfKey;
use super::conntrack::{self, CtInfo, Dir, EntryId, Manip, NatRequest};
use super::packet::{Packet, Protocol, TcpFlags};
use super::routing::{IfIndex, Routing};
use super::rules::MAX_JUMP_DEPTH;
use super::rules::{
    AddrtypeMatch, ConnmarkOp, Hook, Match, MultiportDir, Policy, Rule, Table, TableKind, Target,
    ctstate,
};
use super::sockets::{SocketInfo, SocketLookup};
use super::trace::{Event, Trace};

/// A rule by position: table, chain index in the table, 1-based rule number (0 = the policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub table: TableKind,
    pub chain: u16,
    pub position: u16,
}

/// A packet on its way through the hooks, with what netfilter attaches to it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Skb {
    pub pkt: Packet,
    pub hook: Hook,
    pub iif: Option<IfIndex>,
    pub oif: Option<IfIndex>,
    pub iif_key: IfKey,
    pub oif_key: IfKey,
    /// Next hop of the current route (MASQUERADE picks the address facing it).
    pub next_hop: Ipv4Addr,
    pub ct: Option<(EntryId, CtInfo)>,
    /// `CT --notrack` / NOTRACK: conntrack leaves the packet alone (ctstate UNTRACKED).
    pub untracked: bool,
    /// Zone set by `CT --zone` in raw, used by the conntrack lookup that follows.
    pub zone: u16,
    /// The sending socket (`skb->sk`) of a locally generated packet.
    pub socket: Option<SocketInfo>,
    /// The socket TPROXY assigned.
    pub assigned: Option<SocketInfo>,
}

/// How a table's traversal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    Drop(RuleRef),
    Reject(RuleRef, super::rules::RejectWith),
}

/// What traversal may read or change besides the table and the packet.
pub(crate) struct Env<'a> {
    pub conntrack: &'a mut conntrack::Table,
    pub routing: &'a Routing,
    pub sockets: &'a dyn SocketLookup,
    pub trace: Option<&'a mut Trace>,
}

/// Runs `table`'s chain for `skb.hook`. A table without that hook accepts.
pub(crate) fn run_table(table: &mut Table, skb: &mut Skb, env: &mut Env<'_>) -> Verdict {
    let Some(start) = table.hook_chain(skb.hook) else { return Verdict::Accept };
    if table.chains[start].rules.is_empty() {
        return policy(table, start, skb, env);
    }
    let kind = table.kind;
    // Return points of -j: (chain, next rule). Nesting is bounded at load time.
    let mut stack = [(0u32, 0u32); MAX_JUMP_DEPTH + 1];
    let mut depth = 0usize;
    let (mut chain, mut pos) = (start, 0usize);
    loop {
        let rules_len = table.chains[chain].rules.len();
        if pos >= rules_len {
            // End of chain: pop, or take the built-in chain's policy.
            if depth > 0 {
                depth -= 1;
                (chain, pos) = (stack[depth].0 as usize, stack[depth].1 as usize);
                continue;
            }
            return policy(table, start, skb, env);
        }
        let rule = &table.chains[chain].rules[pos];
        if !rule_matches(rule, skb, env) {
            pos += 1;
            continue;
        }
        let rule = &mut table.chains[chain].rules[pos];
        rule.counters.add(skb.pkt.len);
        let here = RuleRef { table: kind, chain: chain as u16, position: pos as u16 + 1 };
        if let Some(t) = env.trace.as_deref_mut() {
            t.push(Event::Rule {
                table: kind,
                chain: table.chains[chain].name.clone(),
                position: pos + 1,
                target: table.chains[chain].rules[pos].target.name().to_string(),
            });
        }
        let rule = &table.chains[chain].rules[pos];
        match &rule.target {
            Target::None | Target::Log(_) => pos += 1,
            Target::Accept => return Verdict::Accept,
            Target::Drop => return Verdict::Drop(here),
            Target::Reject(with) => return Verdict::Reject(here, *with),
            Target::Return => {
                if depth == 0 {
                    return policy(table, start, skb, env);
                }
                depth -= 1;
                (chain, pos) = (stack[depth].0 as usize, stack[depth].1 as usize);
            }
            Target::Jump(c) => {
                stack[depth] = (chain as u32, pos as u32 + 1);
                depth += 1;
                (chain, pos) = (c.index, 0);
            }
            Target::Goto(c) => (chain, pos) = (c.index, 0),
            Target::Mark { value, mask } => {
                skb.pkt.mark = (skb.pkt.mark & !mask) ^ value;
                pos += 1;
            }
            Target::Connmark(op) => {
                connmark(*op, skb, env);
                pos += 1;
            }
            Target::Ct { zone, notrack } => {
                if *notrack {
                    skb.untracked = true;
                }
                if let Some(z) = zone {
                    skb.zone = *z;
                }
                pos += 1;
            }
            Target::Notrack => {
                skb.untracked = true;
                pos += 1;
            }
            Target::Redirect(r) | Target::Dnat(r) | Target::Snat(r) | Target::Masquerade(r) => {
                let manip = if matches!(rule.target, Target::Dnat(_) | Target::Redirect(_)) {
                    Manip::Dst
                } else {
                    Manip::Src
                };
                let addrs = match &rule.target {
                    Target::Redirect(_) => match skb.hook {
                        Hook::Output => Some((Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST)),
                        _ => match skb.iif.and_then(|i| env.routing.primary_address(i)) {
                            Some(a) => Some((a, a)),
                            None => return Verdict::Drop(here),
                        },
                    },
                    Target::Masquerade(_) => {
                        match skb.oif.and_then(|o| masquerade_addr(env.routing, o, skb.next_hop)) {
                            Some(a) => Some((a, a)),
                            None => return Verdict::Drop(here),
                        }
                    }
                    _ => r.addrs,
                };
                let req = NatRequest { addrs, ports: r.ports.map(|p| (p.lo, p.hi)) };
                if let Some((id, _)) = skb.ct {
                    env.conntrack.setup_nat(id, manip, Some(req));
                }
                return Verdict::Accept;
            }
            Target::Tproxy { port, ip, mark, mask } => {
                return match tproxy(skb, env, *port, *ip) {
                    Some(sock) => {
                        skb.pkt.mark = (skb.pkt.mark & !mask) ^ mark;
                        skb.assigned = Some(sock);
                        Verdict::Accept
                    }
                    None => Verdict::Drop(here),
                };
            }
        }
    }
}

fn policy(table: &mut Table, chain: usize, skb: &Skb, env: &mut Env<'_>) -> Verdict {
    let c = &mut table.chains[chain];
    c.policy_counters.add(skb.pkt.len);
    if let Some(t) = env.trace.as_deref_mut() {
        t.push(Event::Policy { table: table.kind, chain: c.name.clone(), policy: c.policy });
    }
    match c.policy {
        Policy::Accept => Verdict::Accept,
        Policy::Drop => {
            Verdict::Drop(RuleRef { table: table.kind, chain: chain as u16, position: 0 })
        }
    }
}

fn masquerade_addr(routing: &Routing, oif: IfIndex, next_hop: Ipv4Addr) -> Option<Ipv4Addr> {
    let iface = routing.interface(oif);
    let hop = u32::from(next_hop);
    iface
        .addrs
        .iter()
        .find(|(a, l)| super::addr::Cidr::new(*a, *l).is_some_and(|c| c.contains(hop)))
        .or(iface.addrs.first())
        .map(|(a, _)| *a)
}

fn connmark(op: ConnmarkOp, skb: &mut Skb, env: &mut Env<'_>) {
    let Some((id, _)) = skb.ct else { return };
    let e = env.conntrack.entry_mut(id);
    match op {
        ConnmarkOp::SetXmark { value, mask } => e.mark = (e.mark & !mask) ^ value,
        ConnmarkOp::Save { nfmask, ctmask } => {
            e.mark = (e.mark & !ctmask) ^ (skb.pkt.mark & nfmask)
        }
        ConnmarkOp::Restore { nfmask, ctmask } => {
            skb.pkt.mark = (skb.pkt.mark & !nfmask) ^ (e.mark & ctmask);
        }
    }
}

/// TPROXY's socket: an established one for the packet's addresses (a TIME_WAIT one gives way
/// to a listener for a new SYN), else a listener on (on-ip or the input interface's address,
/// on-port or the packet's port). Only transparent sockets qualify.
fn tproxy(skb: &Skb, env: &Env<'_>, port: u16, ip: Ipv4Addr) -> Option<SocketInfo> {
    let p = &skb.pkt;
    let laddr = if ip.is_unspecified() {
        skb.iif.and_then(|i| env.routing.primary_address(i)).unwrap_or(p.dst)
    } else {
        ip
    };
    let lport = if port == 0 { p.dport } else { port };
    let mut sk = env.sockets.established(p.proto, p.dst_sock(), p.src_sock());
    if let Some(s) = sk
        && s.time_wait
    {
        let syn = p.tcp_flags.0 & (TcpFlags::SYN | TcpFlags::RST | TcpFlags::ACK | TcpFlags::FIN)
            == TcpFlags::SYN;
        if syn
            && let Some(l) =
                env.sockets.listener(p.proto, std::net::SocketAddrV4::new(laddr, lport))
        {
            sk = Some(l);
        }
    }
    if sk.is_none() {
        sk = env.sockets.listener(p.proto, std::net::SocketAddrV4::new(laddr, lport));
    }
    sk.filter(|s| s.transparent)
}

#[inline]
fn rule_matches(rule: &Rule, skb: &mut Skb, env: &Env<'_>) -> bool {
    let p = &skb.pkt;
    if let Some(s) = rule.src
        && s.cidr.contains(u32::from(p.src)) == s.negated
    {
        return false;
    }
    if let Some(d) = rule.dst
        && d.cidr.contains(u32::from(p.dst)) == d.negated
    {
        return false;
    }
    if let Some(i) = &rule.iif
        && !i.matches(skb.iif_key)
    {
        return false;
    }
    if let Some(o) = &rule.oif
        && !o.matches(skb.oif_key)
    {
        return false;
    }
    if let Some(pm) = rule.proto
        && (pm.number == p.proto.number()) == pm.negated
    {
        return false;
    }
    if rule.fragment == Some(false) {
        return false;
    }
    rule.matches.iter().all(|m| match_one(m, skb, env))
}

fn ct_statebits(skb: &Skb, env: &Env<'_>, nat_bits: bool) -> u8 {
    match skb.ct {
        Some((id, info)) => {
            let mut bits = info.state_bit();
            if nat_bits {
                let e = env.conntrack.entry(id);
                if e.has(conntrack::status::SRC_NAT) {
                    bits |= ctstate::SNAT;
                }
                if e.has(conntrack::status::DST_NAT) {
                    bits |= ctstate::DNAT;
                }
            }
            bits
        }
        None if skb.untracked => ctstate::UNTRACKED,
        None => ctstate::INVALID,
    }
}

fn addrtype(a: &AddrtypeMatch, skb: &Skb, env: &Env<'_>) -> bool {
    let dev = if a.limit_iface_in {
        skb.iif
    } else if a.limit_iface_out {
        skb.oif
    } else {
        None
    };
    let check = |spec: Option<(u16, bool)>, addr: Ipv4Addr| {
        spec.is_none_or(|(mask, neg)| {
            let t = env.routing.addr_type(addr, dev);
            (mask & (1 << t) != 0) != neg
        })
    };
    check(a.src, skb.pkt.src) && check(a.dst, skb.pkt.dst)
}

#[inline]
fn match_one(m: &Match, skb: &mut Skb, env: &Env<'_>) -> bool {
    let p = &skb.pkt;
    match m {
        Match::Tcp(t) => {
            p.proto == Protocol::Tcp
                && t.sport.is_none_or(|r| r.matches(p.sport))
                && t.dport.is_none_or(|r| r.matches(p.dport))
                && t.flags.is_none_or(|f| (p.tcp_flags.0 & f.mask == f.comp) != f.negated)
        }
        Match::Udp(u) => {
            p.proto == Protocol::Udp
                && u.sport.is_none_or(|r| r.matches(p.sport))
                && u.dport.is_none_or(|r| r.matches(p.dport))
        }
        Match::Icmp(i) => {
            let Some(h) = p.icmp.filter(|_| p.proto == Protocol::Icmp) else { return false };
            match i.kind {
                None => !i.negated,
                Some(k) => (h.kind == k && i.codes.0 <= h.code && h.code <= i.codes.1) != i.negated,
            }
        }
        Match::Mark(mm) => mm.matches(p.mark),
        Match::Connmark(mm) => match skb.ct {
            Some((id, _)) => mm.matches(env.conntrack.entry(id).mark),
            None => false,
        },
        Match::Conntrack(s) => (ct_statebits(skb, env, true) & s.states != 0) != s.negated,
        Match::State(s) => (ct_statebits(skb, env, false) & s.states != 0) != s.negated,
        Match::Addrtype(a) => addrtype(a, skb, env),
        Match::Multiport(mp) => {
            if !matches!(p.proto, Protocol::Tcp | Protocol::Udp) {
                return false;
            }
            let hit = mp.ports.iter().any(|r| match mp.dir {
                MultiportDir::Source => r.contains(p.sport),
                MultiportDir::Destination => r.contains(p.dport),
                MultiportDir::Either => r.contains(p.sport) || r.contains(p.dport),
            });
            hit != mp.negated
        }
        Match::Socket(s) => socket_match(*s, skb, env),
        Match::OwnerSocketExists { negated } => skb.socket.is_some() != *negated,
        Match::Comment(_) => true,
    }
}

/// `-m socket`: is there a local socket this packet belongs to? Replies of connections with a
/// source binding are looked up by their original source (as xt_socket does); sockets bound to
/// 0.0.0.0 do not count unless `--nowildcard`; `--transparent` wants IP_TRANSPARENT ones.
fn socket_match(s: super::rules::SocketMatch, skb: &mut Skb, env: &Env<'_>) -> bool {
    let p = skb.pkt;
    if !matches!(p.proto, Protocol::Tcp | Protocol::Udp) {
        return false;
    }
    let (mut daddr, mut dport) = (p.dst, p.dport);
    if let Some((id, CtInfo::EstablishedReply)) = skb.ct {
        let e = env.conntrack.entry(id);
        if e.has(conntrack::status::SRC_NAT_DONE) {
            let o = e.tuples[Dir::Original as usize];
            (daddr, dport) = (o.src, o.sport);
        }
    }
    let local = std::net::SocketAddrV4::new(daddr, dport);
    let sk = env
        .sockets
        .established(p.proto, local, p.src_sock())
        .or_else(|| env.sockets.listener(p.proto, local));
    let Some(sk) = sk else { return false };
    let wildcard = !s.nowildcard && sk.wildcard && !sk.time_wait;
    let transparent = !s.transparent || sk.transparent;
    if s.restore_skmark && !wildcard && transparent && !sk.time_wait {
        skb.pkt.mark = sk.mark;
    }
    !wildcard && transparent
}
