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
use super::packet::{Packet, Protocol, TcpFlags, icmp_type};
use super::routing::{IfIndex, Routing};
use super::rules::MAX_JUMP_DEPTH;
use super::rules::{
    AddrtypeMatch, ConnmarkOp, Hook, Match, MultiportDir, Policy, PortMatch, Rule, Table,
    TableRules, Target, ctstate,
};
use super::sockets::{SocketInfo, SocketLookup};
use super::trace::{Event, Trace};

/// A rule of the loaded ruleset by index: table, chain index in the table, 1-based rule number
/// (0 = the chain's policy). What a verdict names; [`Netns::rule_name`](crate::Netns::rule_name)
/// spells it out, and [`RuleRef`](crate::rules::RuleRef) is the by-name form for everything
/// outside the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleIndex {
    pub table: Table,
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
    /// A CT/NOTRACK target already attached its template: later ones are ignored (xt_CT).
    pub templated: bool,
    /// The sending socket (`skb->sk`) of a locally generated packet.
    pub socket: Option<SocketInfo>,
    /// The socket TPROXY assigned.
    pub assigned: Option<SocketInfo>,
}

/// How a table's traversal ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    Drop(RuleIndex),
    Reject(RuleIndex, super::rules::RejectWith),
}

/// What traversal may read or change besides the table and the packet.
pub(crate) struct Env<'a> {
    pub conntrack: &'a mut conntrack::Table,
    pub routing: &'a Routing,
    pub sockets: &'a dyn SocketLookup,
    pub trace: Option<&'a mut Trace>,
}

/// Runs `table`'s chain for `skb.hook`. A table without that hook accepts.
pub(crate) fn run_table(table: &mut TableRules, skb: &mut Skb, env: &mut Env<'_>) -> Verdict {
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
        let here = RuleIndex { table: kind, chain: chain as u16, position: pos as u16 + 1 };
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
                // Only the first CT/NOTRACK of a packet counts, and none once it has a
                // connection (a looped-back packet).
                if skb.ct.is_none() && !std::mem::replace(&mut skb.templated, true) {
                    skb.untracked = *notrack;
                    skb.zone = zone.unwrap_or(0);
                }
                pos += 1;
            }
            Target::Notrack => {
                if skb.ct.is_none() && !std::mem::replace(&mut skb.templated, true) {
                    skb.untracked = true;
                }
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
                        match skb.oif.and_then(|o| env.routing.select_address(o, skb.next_hop)) {
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

fn policy(table: &mut TableRules, chain: usize, skb: &Skb, env: &mut Env<'_>) -> Verdict {
    let c = &mut table.chains[chain];
    if c.policy_counted {
        c.policy_counters.add(skb.pkt.len);
    }
    if let Some(t) = env.trace.as_deref_mut() {
        t.push(Event::Policy { table: table.kind, chain: c.name.clone(), policy: c.policy });
    }
    match c.policy {
        Policy::Accept => Verdict::Accept,
        Policy::Drop => {
            Verdict::Drop(RuleIndex { table: table.kind, chain: chain as u16, position: 0 })
        }
    }
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
        // A CT template (raw table, before conntrack) is a connection in state NEW.
        None if skb.templated => ctstate::NEW,
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

/// `--sport`/`--dport` of one `-m tcp`/`-m udp` instance.
///
/// iptables-nft 1.8.9 compiles a single source port together with a single destination port
/// into one 4-byte compare; with both negated that compare is `!=` on the pair, so the rule
/// matches unless *both* ports are equal (an OR of the two negations, not the AND that
/// `iptables -m tcp` documents). The kernel runs that expression, so the model does too
/// (seen in `nft --debug=netlink list ruleset`; kernel-fuzz case local-258).
#[inline]
fn ports_match(sport: Option<PortMatch>, dport: Option<PortMatch>, p: &Packet) -> bool {
    match (sport, dport) {
        (Some(s), Some(d))
            if s.negated && d.negated && s.range.lo == s.range.hi && d.range.lo == d.range.hi =>
        {
            !(p.sport == s.range.lo && p.dport == d.range.lo)
        }
        _ => sport.is_none_or(|r| r.matches(p.sport)) && dport.is_none_or(|r| r.matches(p.dport)),
    }
}

#[inline]
fn match_one(m: &Match, skb: &mut Skb, env: &Env<'_>) -> bool {
    let p = &skb.pkt;
    match m {
        Match::Tcp(t) => {
            p.proto == Protocol::Tcp
                && ports_match(t.sport, t.dport, p)
                && t.flags.is_none_or(|f| (p.tcp_flags.0 & f.mask == f.comp) != f.negated)
        }
        Match::Udp(u) => p.proto == Protocol::Udp && ports_match(u.sport, u.dport, p),
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
        Match::OwnerSocketExists { negated } => skb.socket.is_some_and(|s| !s.orphan) != *negated,
        Match::Comment(_) => true,
    }
}

/// `-m socket`: is there a local socket this packet belongs to? Replies of connections with a
/// source binding are looked up by their original source (as xt_socket does); sockets bound to
/// 0.0.0.0 do not count unless `--nowildcard`; `--transparent` wants IP_TRANSPARENT ones.
fn socket_match(s: super::rules::SocketMatch, skb: &mut Skb, env: &Env<'_>) -> bool {
    let p = skb.pkt;
    // An ICMP error is matched against the socket of the TCP/UDP packet it quotes, that
    // packet's source being the local end (extract_icmp4_fields).
    if let (Protocol::Icmp, Some(icmp)) = (p.proto, p.icmp) {
        let inner = match icmp.inner {
            Some(t) if icmp_type::is_error(icmp.kind) && t.proto != Protocol::Icmp => t,
            _ => return false,
        };
        let local = std::net::SocketAddrV4::new(inner.src, inner.sport);
        let remote = std::net::SocketAddrV4::new(inner.dst, inner.dport);
        let sk = env
            .sockets
            .established(inner.proto, local, remote)
            .or_else(|| env.sockets.listener(inner.proto, local));
        let Some(sk) = sk else { return false };
        let wildcard = !s.nowildcard && sk.wildcard && !sk.time_wait;
        return !wildcard && (!s.transparent || sk.transparent);
    }
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
    // The packet's own socket first (`skb->sk`: what TPROXY assigned), a lookup only without
    // one (kernel 6.18, differential suite seed 21587: a SYN TPROXY gave a wildcard listener
    // does not match, though a listener bound to its destination exists).
    let sk = skb.assigned.or_else(|| {
        env.sockets
            .established(p.proto, local, p.src_sock())
            .or_else(|| env.sockets.listener(p.proto, local))
    });
    let Some(sk) = sk else { return false };
    let wildcard = !s.nowildcard && sk.wildcard && !sk.time_wait;
    let transparent = !s.transparent || sk.transparent;
    if s.restore_skmark && !wildcard && transparent && !sk.time_wait {
        skb.pkt.mark = sk.mark;
    }
    !wildcard && transparent
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;
    use std::time::Duration;

    use crate::{Disposition, Netns, NoSockets, Packet, RestoreOptions, TcpFlags};

    /// Kernel 6.18, differential suite seed 12: MASQUERADE of a connection over `lo` takes the
    /// pod's eth0 address, never 127.0.0.1 (host scope, not eligible for RT_SCOPE_UNIVERSE).
    #[test]
    fn masquerade_out_of_lo_takes_a_universe_scope_address() {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        let rules = "*nat\n-A POSTROUTING -p tcp -j MASQUERADE\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        for (src, dst) in
            [("10.0.1.2:40000", "10.0.1.2:8080"), ("127.0.0.1:40001", "127.0.0.1:8082")]
        {
            let (src, dst): (SocketAddrV4, SocketAddrV4) =
                (src.parse().unwrap(), dst.parse().unwrap());
            let o = n.output(Packet::tcp(src, dst, TcpFlags::S), None, Duration::ZERO, &NoSockets);
            assert!(matches!(o.disposition, Disposition::Local { .. }), "{o:?}");
            assert_eq!(o.packet.src, std::net::Ipv4Addr::new(10, 0, 1, 2), "{src} -> {dst}");
        }
    }

    /// Kernel 6.18, differential suite seed 40: DNAT of a 127.0.0.1-sourced SYN to a remote
    /// address fails the re-route after nat OUTPUT (a loopback source may not leave through
    /// eth0): the SYN is dropped there, never reaches POSTROUTING, and leaves no connection.
    #[test]
    fn dnat_of_a_loopback_source_to_a_remote_address_is_dropped_at_reroute() {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        let rules = "*nat\n-A OUTPUT -p tcp -j DNAT --to-destination 10.0.1.1:80\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (src, dst) = ("127.0.0.1:20004".parse().unwrap(), "127.0.0.1:8082".parse().unwrap());
        let o = n.output(Packet::tcp(src, dst, TcpFlags::S), None, Duration::ZERO, &NoSockets);
        assert!(!o.accepted(), "{o:?}");
        assert_eq!(n.conntrack_dump(Duration::ZERO), "");
        assert!(n.save(true).contains(":POSTROUTING ACCEPT [0:0]"), "{}", n.save(true));
    }

    /// Kernel 6.18 (differential suite seed 10132): `-m socket` on an ICMP error looks up the
    /// socket of the packet it quotes. REJECT of a looped-back SYN to a listener answers with an
    /// ICMP error that the same `-m socket … -j REJECT` rule catches on its way in (the quoted
    /// SYN belongs to the connecting socket): the error is dropped, the connect times out.
    #[test]
    fn socket_match_on_an_icmp_error_finds_the_socket_of_the_quoted_packet() {
        use crate::{Protocol, SocketInfo, SocketLookup};
        struct Client;
        impl SocketLookup for Client {
            fn established(
                &self,
                p: Protocol,
                l: SocketAddrV4,
                r: SocketAddrV4,
            ) -> Option<SocketInfo> {
                let mine = p == Protocol::Tcp
                    && l == "127.0.0.1:40000".parse().unwrap()
                    && r == "127.0.0.1:8082".parse().unwrap();
                mine.then_some(SocketInfo { id: 1, ..SocketInfo::default() })
            }
            fn listener(&self, _: Protocol, l: SocketAddrV4) -> Option<SocketInfo> {
                (l == "127.0.0.1:8082".parse().unwrap())
                    .then_some(SocketInfo { id: 2, ..SocketInfo::default() })
            }
        }
        let mut n = Netns::new();
        let rules =
            "*filter\n-A INPUT -m socket -j REJECT --reject-with icmp-net-unreachable\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (src, dst) = ("127.0.0.1:40000".parse().unwrap(), "127.0.0.1:8082".parse().unwrap());
        let o = n.output(
            Packet::tcp(src, dst, TcpFlags::S),
            Some(SocketInfo::default()),
            Duration::ZERO,
            &Client,
        );
        let reply = o.reply.expect("REJECT's ICMP error");
        assert!(!reply.accepted(), "the error must be rejected in turn: {reply:?}");
        assert!(n.save(true).contains("[2:"), "{}", n.save(true));
    }
    /// Kernel 6.18 (differential suite seeds 10491, 10815; reproduced by hand with counters on
    /// `-m owner ! --socket-exists`): what a connection still in the accept queue sends — the
    /// ACK of data that came before `accept()` — has no `struct socket`, so `--socket-exists`
    /// does not match it; the same connection's packets after `accept()` match.
    #[test]
    fn socket_exists_does_not_match_a_connection_not_yet_accepted() {
        use crate::SocketInfo;
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        let rules = "*raw\n-A OUTPUT -p tcp -m owner --socket-exists\n\
                     -A OUTPUT -p tcp -m owner ! --socket-exists\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (src, dst) = ("10.0.1.2:8080".parse().unwrap(), "10.0.1.1:40000".parse().unwrap());
        let ack = || Packet::tcp(src, dst, TcpFlags::A).with_len(52);
        let queued = SocketInfo { id: 3, orphan: true, ..SocketInfo::default() };
        n.output(ack(), Some(queued), Duration::ZERO, &NoSockets);
        let accepted = SocketInfo { orphan: false, ..queued };
        n.output(ack(), Some(accepted), Duration::ZERO, &NoSockets);
        n.output(ack(), Some(accepted), Duration::ZERO, &NoSockets);
        let save = n.save(true);
        assert!(save.contains("[2:104] -A OUTPUT -p tcp -m owner --socket-exists"), "{save}");
        assert!(save.contains("[1:52] -A OUTPUT -p tcp -m owner ! --socket-exists"), "{save}");
    }
    /// Kernel 6.18 (differential suite seed 21587, reproduced by hand): `-m socket` looks at the
    /// socket TPROXY assigned to the packet before looking one up. A looped-back SYN to
    /// 10.0.1.2:8080 that TPROXY gave the transparent listener on 0.0.0.0:15001 does not match
    /// `-m socket` (a wildcard listener) — though 10.0.1.2:8080 has a listener of its own —
    /// and matches `--nowildcard`.
    #[test]
    fn socket_match_prefers_the_socket_tproxy_assigned() {
        use crate::{Protocol, SocketInfo, SocketLookup};
        struct Listeners;
        impl SocketLookup for Listeners {
            fn established(
                &self,
                _: Protocol,
                _: SocketAddrV4,
                _: SocketAddrV4,
            ) -> Option<SocketInfo> {
                None
            }
            fn listener(&self, _: Protocol, l: SocketAddrV4) -> Option<SocketInfo> {
                match l.port() {
                    8080 => Some(SocketInfo { id: 1, ..SocketInfo::default() }),
                    15001 => Some(SocketInfo {
                        id: 2,
                        transparent: true,
                        wildcard: true,
                        ..SocketInfo::default()
                    }),
                    _ => None,
                }
            }
        }
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        let rules = "*mangle\n-A PREROUTING -p tcp -j TPROXY --on-port 15001\n\
                     -A INPUT -p tcp -m socket\n-A INPUT -p tcp -m socket --nowildcard\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (src, dst) = ("10.0.1.2:40000".parse().unwrap(), "10.0.1.2:8080".parse().unwrap());
        let o = n.output(Packet::tcp(src, dst, TcpFlags::S), None, Duration::ZERO, &Listeners);
        assert_eq!(
            o.disposition,
            Disposition::Local {
                socket: Listeners.listener(Protocol::Tcp, "0.0.0.0:15001".parse().unwrap())
            }
        );
        let save = n.save(true);
        assert!(save.contains("[0:0] -A INPUT -p tcp -m socket\n"), "{save}");
        assert!(save.contains("[1:60] -A INPUT -p tcp -m socket --nowildcard"), "{save}");
    }
}
