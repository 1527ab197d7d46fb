//! The IPv4 packet path through one network namespace, hook by hook in kernel order.
//!
//! Locally generated (`Netns::output`): route (with the socket's mark) → raw OUTPUT →
//! conntrack → mangle OUTPUT → re-route if mangle changed mark/addresses → nat OUTPUT (first
//! packet only; later ones get the recorded binding) → re-route if NAT changed the destination →
//! filter OUTPUT → mangle POSTROUTING → nat POSTROUTING → confirm. A local route loops the packet
//! back through `lo` with its conntrack entry and mark: raw PREROUTING → (no second conntrack
//! lookup, unless OUTPUT found the packet INVALID: then a fresh one, in the zone raw PREROUTING
//! gives it) → mangle PREROUTING → nat PREROUTING (binding already set) → mangle INPUT → filter
//! INPUT → nat INPUT → deliver; the output route stands (the kernel keeps the dst) unless nat
//! PREROUTING changed the destination, which routes the packet anew as an arrival on `lo`.
//!
//! Arriving (`Netns::input`): raw PREROUTING → conntrack → mangle PREROUTING → nat PREROUTING →
//! route (with the packet mark, so fwmark rules apply) → local: mangle INPUT → filter INPUT →
//! nat INPUT → confirm → deliver; otherwise, with forwarding on: mangle FORWARD → filter FORWARD
//! → mangle POSTROUTING → nat POSTROUTING → confirm → out.
//!
//! A drop before confirm discards the new conntrack entry. REJECT's reply (TCP RST, attached to
//! the connection as RELATED, or an ICMP error) and the ICMP unreachable the kernel sends for a
//! packet it cannot forward are themselves sent through the output path and returned in
//! [`Fate::reply`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::Serialize;

use super::Netns;
use super::addr::IfKey;
use super::conntrack::{CtInfo, Dir, EntryId, Manip, TcpState, Track, status};
use super::icmp_limit;
use super::netfilter::{Env, RuleIndex, Skb, Verdict, run_table};
use super::packet::{Icmp, Packet, Protocol, TcpFlags, icmp_type};
use super::routing::{IfIndex, RouteError, RouteResult, RouteType};
use super::rules::{Hook, RejectWith, Table};
use super::sockets::{SocketInfo, SocketLookup};
use super::trace::{Event, Trace};

/// Why a packet did not get through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropCause {
    /// A DROP rule, a chain policy (position 0), a TPROXY without a socket, a REDIRECT or
    /// MASQUERADE without an address.
    Rule(RuleIndex),
    /// Conntrack table full (`nf_conntrack_max`).
    ConntrackFull,
    /// The new connection's tuple clashed with an existing one at confirm.
    ConntrackClash,
    /// No route, a blackhole/unreachable/prohibit route, a martian, or not forwarding.
    Route(RouteError),
    /// An ICMP error from the kernel (sent with [`SocketInfo::kernel`]) over its per-peer rate
    /// limit ([`super::icmp_limit`]): not sent, no hook saw it.
    IcmpRateLimit,
}

/// The fate of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketVerdict {
    Accept,
    Drop(DropCause),
    /// Dropped by REJECT; the reply it produced is in [`Fate::reply`].
    Reject {
        by: RuleIndex,
        with: RejectWith,
    },
}

/// Where an accepted packet went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered to the local socket layer. `socket` is set when TPROXY assigned one.
    Local { socket: Option<SocketInfo> },
    /// Sent out of `oif` towards `next_hop` (`forwarded` for packets that arrived from outside).
    Sent { oif: IfIndex, next_hop: Ipv4Addr, forwarded: bool },
    /// Not delivered (dropped).
    None,
}

/// A packet's conntrack state as `-m conntrack --ctstate` sees it at the end of its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::Established => "ESTABLISHED",
            CtState::Related => "RELATED",
            CtState::Invalid => "INVALID",
            CtState::Untracked => "UNTRACKED",
        }
    }
}

/// A packet's fate: what the hooks decided (verdict), where it goes next (disposition), what
/// it looked like then and what conntrack made of it. (Not the scenario `Outcome` of a run.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fate {
    pub verdict: PacketVerdict,
    pub disposition: Disposition,
    /// The packet as it left the hooks (after NAT): for local delivery, what the socket layer
    /// sees; for a drop, the packet where it was dropped.
    pub packet: Packet,
    pub ctstate: CtState,
    pub ctinfo: Option<CtInfo>,
    /// The connection (until it is deleted).
    pub conn: Option<EntryId>,
    pub tcp_state: Option<TcpState>,
    pub zone: u16,
    /// The connection's original destination when it has a destination binding (what
    /// SO_ORIGINAL_DST returns).
    pub orig_dst: Option<SocketAddrV4>,
    /// What the kernel sent back: REJECT's reply, or ICMP unreachable for a packet it could not
    /// forward — after its own trip through the output path.
    pub reply: Option<Box<Fate>>,
}

impl Fate {
    pub fn accepted(&self) -> bool {
        self.verdict == PacketVerdict::Accept
    }

    pub fn is_local(&self) -> bool {
        matches!(self.disposition, Disposition::Local { .. })
    }
}

/// Per-call context.
pub(crate) struct Ctx<'a> {
    pub now: Duration,
    pub sockets: &'a dyn SocketLookup,
    pub trace: Option<&'a mut Trace>,
}

impl Ctx<'_> {
    fn event(&mut self, e: impl FnOnce() -> Event) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.push(e());
        }
    }
}

/// Per-packet state besides the skb.
struct Walk {
    skb: Skb,
    /// The conntrack entry this packet created (discarded if it is dropped unconfirmed).
    created: Option<EntryId>,
    route: Option<RouteResult>,
}

/// Stops the walk with the packet's fate unless the verdict is ACCEPT.
macro_rules! pass {
    ($self:ident, $w:ident, $cx:ident, $v:expr) => {
        match $v {
            Verdict::Accept => {}
            Verdict::Drop(r) => {
                return $self.finish($w, PacketVerdict::Drop(DropCause::Rule(r)), $cx)
            }
            Verdict::Reject(r, with) => return $self.reject($w, r, with, $cx),
        }
    };
}

/// The conntrack attachment of a reply the kernel makes about a packet (nf_ct_attach): the
/// packet's connection, RELATED in the other direction.
fn related_to(ct: Option<(EntryId, CtInfo)>) -> Option<(EntryId, CtInfo)> {
    ct.map(|(id, info)| {
        let info = if info.dir() == Dir::Original { CtInfo::RelatedReply } else { CtInfo::Related };
        (id, info)
    })
}

fn route_text(r: &Result<RouteResult, RouteError>, n: &Netns) -> String {
    match r {
        Ok(r) => {
            let kind = match r.kind {
                RouteType::Local => "local",
                RouteType::Broadcast => "broadcast",
                _ => "unicast",
            };
            format!(
                "{kind} dev {} via {} table {}",
                n.routing.interface(r.dev).name,
                r.next_hop,
                r.table
            )
        }
        Err(e) => format!("error: {e}"),
    }
}

impl Netns {
    #[inline]
    fn table(&mut self, kind: Table, skb: &mut Skb, cx: &mut Ctx<'_>) -> Verdict {
        let Some(table) = self.rules.table_mut(kind) else { return Verdict::Accept };
        let mut env = Env {
            conntrack: &mut self.conntrack,
            routing: &self.routing,
            sockets: cx.sockets,
            trace: cx.trace.as_deref_mut(),
        };
        run_table(table, skb, &mut env)
    }

    #[inline]
    fn enter(&self, skb: &mut Skb, hook: Hook, cx: &mut Ctx<'_>) {
        skb.hook = hook;
        let name = |i: Option<IfIndex>| i.map(|i| self.routing.interface(i).name.clone());
        cx.event(|| Event::Hook { hook, iif: name(skb.iif), oif: name(skb.oif) });
    }

    #[inline]
    fn set_route(&self, w: &mut Walk, r: RouteResult) {
        w.skb.oif = Some(r.dev);
        w.skb.oif_key = self.routing.interface(r.dev).key;
        w.skb.next_hop = r.next_hop;
        w.route = Some(r);
    }

    #[inline]
    fn route_output(&self, w: &mut Walk, cx: &mut Ctx<'_>) -> Result<(), RouteError> {
        let p = &w.skb.pkt;
        let r = self.routing.output(p.dst, p.src, p.mark);
        cx.event(|| Event::Route {
            dst: p.dst,
            mark: format!("0x{:x}", p.mark),
            result: route_text(&r, self),
        });
        self.set_route(w, r?);
        Ok(())
    }

    #[inline]
    fn conntrack_in(&mut self, w: &mut Walk, cx: &mut Ctx<'_>) -> Result<(), DropCause> {
        if w.skb.ct.is_some() || w.skb.untracked || !self.ct_enabled {
            return Ok(());
        }
        // The lookup consumes a CT template: from here on the packet has a connection or is
        // INVALID.
        w.skb.templated = false;
        let t = self.conntrack.track(&w.skb.pkt, w.skb.zone, cx.now);
        let result = match t {
            Track::Tracked { id, info, created, dir } => {
                w.skb.ct = Some((id, info));
                if created {
                    w.created = Some(id);
                }
                if created {
                    "new"
                } else if dir == Dir::Original {
                    "found original"
                } else {
                    "found reply"
                }
            }
            Track::Invalid => "invalid",
            Track::TableFull => "table full",
        };
        if cx.trace.is_some() {
            let (ctinfo, tcp_state) = match w.skb.ct {
                Some((id, info)) => (Some(info), self.conntrack.entry(id).tcp_state()),
                None => (None, None),
            };
            let zone = w.skb.zone;
            cx.event(|| Event::Conntrack { result: result.into(), ctinfo, tcp_state, zone });
        }
        match t {
            Track::TableFull => Err(DropCause::ConntrackFull),
            _ => Ok(()),
        }
    }

    /// `nf_nat_inet_fn`: the nat chain for the first packet of a connection (then a null
    /// binding if no rule set one), the connection's bindings for every packet.
    #[inline]
    fn nat_hook(&mut self, skb: &mut Skb, manip: Manip, cx: &mut Ctx<'_>) -> Verdict {
        if self.rules.table(Table::Nat).is_none() {
            return Verdict::Accept;
        }
        let Some((id, info)) = skb.ct else { return Verdict::Accept };
        let related = matches!(info, CtInfo::Related | CtInfo::RelatedReply);
        let icmp_error = skb.pkt.icmp.is_some_and(|i| icmp_type::is_error(i.kind));
        let before = skb.pkt;
        if related && icmp_error {
            self.conntrack.apply_nat(id, info.dir(), manip, true, &mut skb.pkt);
        } else {
            if (info == CtInfo::New || related) && !self.conntrack.nat_initialized(id, manip) {
                let v = self.table(Table::Nat, skb, cx);
                if v != Verdict::Accept {
                    return v;
                }
                if !self.conntrack.nat_initialized(id, manip) {
                    self.conntrack.setup_nat(id, manip, None);
                }
            }
            self.conntrack.apply_nat(id, info.dir(), manip, false, &mut skb.pkt);
        }
        if skb.pkt != before {
            let p = skb.pkt;
            cx.event(|| Event::Nat { manip, packet: p.to_string() });
        }
        Verdict::Accept
    }

    #[inline]
    fn confirm(&mut self, w: &mut Walk, cx: &mut Ctx<'_>) -> Result<(), DropCause> {
        let Some((id, info)) = w.skb.ct else { return Ok(()) };
        if info.dir() != Dir::Original || self.conntrack.entry(id).has(status::CONFIRMED) {
            return Ok(());
        }
        let ok = self.conntrack.confirm(id);
        cx.event(|| Event::Confirm { ok });
        if ok {
            Ok(())
        } else {
            w.created = None;
            w.skb.ct = None;
            Err(DropCause::ConntrackClash)
        }
    }

    #[inline]
    fn finish(&mut self, w: Walk, verdict: PacketVerdict, cx: &mut Ctx<'_>) -> Fate {
        self.finish_with(w, verdict, Disposition::None, None, cx)
    }

    #[inline]
    fn finish_with(
        &mut self,
        w: Walk,
        verdict: PacketVerdict,
        disposition: Disposition,
        reply: Option<Box<Fate>>,
        _cx: &mut Ctx<'_>,
    ) -> Fate {
        let skb = &w.skb;
        let (ctstate, tcp_state, orig_dst) = match skb.ct {
            Some((id, info)) => {
                let e = self.conntrack.entry(id);
                let st = match info {
                    CtInfo::New => CtState::New,
                    CtInfo::Established | CtInfo::EstablishedReply => CtState::Established,
                    CtInfo::Related | CtInfo::RelatedReply => CtState::Related,
                };
                let od = e.has(status::DST_NAT).then(|| {
                    let o = e.original();
                    SocketAddrV4::new(o.dst, o.dport)
                });
                (st, e.tcp_state(), od)
            }
            None if skb.untracked => (CtState::Untracked, None, None),
            None => (CtState::Invalid, None, None),
        };
        if verdict != PacketVerdict::Accept
            && let Some(id) = w.created
        {
            self.conntrack.discard_unconfirmed(id);
        }
        let conn = skb.ct.map(|(id, _)| id).filter(|id| self.conntrack.is_live(*id));
        Fate {
            verdict,
            disposition,
            packet: skb.pkt,
            ctstate,
            ctinfo: skb.ct.map(|(_, i)| i),
            conn,
            tcp_state,
            zone: skb.zone,
            orig_dst,
            reply,
        }
    }

    fn reject(&mut self, w: Walk, by: RuleIndex, with: RejectWith, cx: &mut Ctx<'_>) -> Fate {
        if let (RejectWith::TcpReset, Some((id, _))) = (with, w.skb.ct) {
            // nf_send_reset closes a confirmed connection (nf_ct_set_closing).
            self.conntrack.set_closing(id, cx.now);
        }
        let local =
            w.route.is_some_and(|r| matches!(r.kind, RouteType::Local | RouteType::Broadcast));
        // An ICMP packet the kernel's ICMP socket is sending (an echo reply) is rejected while
        // that socket's transmit lock is held, so icmp_send's trylock fails: no error.
        let sending_icmp = w.skb.pkt.proto == Protocol::Icmp
            && w.skb.socket.is_some_and(|s| s.is_kernel())
            && with != RejectWith::TcpReset;
        let reply =
            self.reject_reply(&w.skb.pkt, with, local).filter(|_| !sending_icmp).map(|pkt| {
                // The reset leaves with no socket, an ICMP error through the kernel's ICMP socket;
                // both carry the offending packet's connection as RELATED (nf_ct_attach), even an
                // unconfirmed one, so NAT is undone in the quoted header.
                let socket = (with != RejectWith::TcpReset).then(SocketInfo::kernel);
                let attached = related_to(w.skb.ct);
                let mut sub = Ctx { now: cx.now, sockets: cx.sockets, trace: None };
                Box::new(self.output_walk(pkt, socket, attached, &mut sub))
            });
        self.finish_with(w, PacketVerdict::Reject { by, with }, Disposition::None, reply, cx)
    }

    /// The packet REJECT sends back (nf_send_reset / nf_send_unreach); none for a RST or an
    /// ICMP error. `local`: the packet's route delivers it locally.
    fn reject_reply(&self, p: &Packet, with: RejectWith, local: bool) -> Option<Packet> {
        match with.icmp_code() {
            None => {
                if p.proto != Protocol::Tcp || p.tcp_flags.has(TcpFlags::RST) {
                    return None;
                }
                let flags = if p.tcp_flags.has(TcpFlags::ACK) { TcpFlags::R } else { TcpFlags::RA };
                Some(Packet::tcp(p.dst_sock(), p.src_sock(), flags).with_len(40))
            }
            Some(code) => self.unreachable(p, code, local),
        }
    }

    /// The ICMP port unreachable the kernel sends for a UDP datagram it delivered locally that
    /// no socket took (`__udp4_lib_rcv` → `icmp_send`), quoting `delivered` as the socket
    /// layer saw it (after NAT): from its destination, to its sender. Send it through
    /// [`Netns::output`] with [`SocketInfo::kernel`]: conntrack finds the datagram's
    /// connection from the quoted header (RELATED) and undoes its NAT on the error (outer
    /// source and quoted destination), as `nf_nat_icmp_reply_translation` does. `None` for
    /// anything but UDP.
    pub fn port_unreachable(&self, delivered: &Packet) -> Option<Packet> {
        if delivered.proto != Protocol::Udp {
            return None;
        }
        self.unreachable(delivered, icmp_type::PORT_UNREACH, true)
    }

    /// ICMP destination unreachable about `p` (`icmp_send`), quoting `p`'s header. A packet
    /// routed locally (`local`) is answered from its destination — and not at all when that is
    /// not a local address (a `local` route of another table delivered it: the ICMP's output
    /// route refuses the foreign source); any other from the address facing `p`'s source. None
    /// for an error about an error.
    fn unreachable(&self, p: &Packet, code: u8, local: bool) -> Option<Packet> {
        if p.icmp.is_some_and(|i| icmp_type::is_error(i.kind)) {
            return None;
        }
        const RTN_LOCAL: u8 = 2;
        let src = if local {
            (self.routing.addr_type(p.dst, None) == RTN_LOCAL).then_some(p.dst)?
        } else {
            self.routing.source_for(p.src, 0).ok()?
        };
        let icmp = Icmp { kind: icmp_type::DEST_UNREACH, code, id: 0, inner: Some(p.tuple()) };
        Some(Packet::icmp(src, p.src, icmp).with_len(28 + p.len.min(548)))
    }

    /// `ip_error`: a packet the kernel would forward but cannot route gets ICMP net/host
    /// unreachable (or communication prohibited) back, when forwarding is on, rate-limited per
    /// sender twice over ([`super::icmp_limit`]).
    fn no_route(&mut self, w: Walk, e: RouteError, cx: &mut Ctx<'_>) -> Fate {
        let code = match e {
            RouteError::NetUnreachable => Some(0),
            RouteError::HostUnreachable => Some(1),
            RouteError::Prohibited => Some(13),
            _ => None,
        };
        let reply = code
            .filter(|_| self.forwarding)
            .filter(|_| self.icmp_limit.route_error_allowed(w.skb.pkt.src, cx.now))
            .and_then(|c| self.unreachable(&w.skb.pkt, c, false));
        let reply = reply.map(|pkt| {
            let mut sub = Ctx { now: cx.now, sockets: cx.sockets, trace: None };
            let attached = related_to(w.skb.ct);
            Box::new(self.output_walk(pkt, Some(SocketInfo::kernel()), attached, &mut sub))
        });
        let verdict = PacketVerdict::Drop(DropCause::Route(e));
        self.finish_with(w, verdict, Disposition::None, reply, cx)
    }

    /// A packet from a local socket (`socket`; `None` for kernel-generated packets).
    pub(crate) fn output_walk(
        &mut self,
        pkt: Packet,
        socket: Option<SocketInfo>,
        attached: Option<(EntryId, CtInfo)>,
        cx: &mut Ctx<'_>,
    ) -> Fate {
        let skb = Skb {
            pkt,
            hook: Hook::Output,
            iif: None,
            oif: None,
            iif_key: IfKey::NONE,
            oif_key: IfKey::NONE,
            next_hop: pkt.dst,
            ct: attached,
            untracked: false,
            zone: 0,
            templated: false,
            socket,
            assigned: None,
        };
        let mut w = Walk { skb, created: None, route: None };
        if let Err(e) = self.route_output(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(DropCause::Route(e)), cx);
        }
        // icmp_send's per-peer limit, after its route lookup (errors through lo are exempt).
        if socket.is_some_and(|s| s.is_kernel())
            && pkt.icmp.is_some_and(|i| icmp_limit::limited(i.kind, i.code))
            && w.route.is_some_and(|r| r.dev != IfIndex::LO)
            && !self.icmp_limit.send_allowed(pkt.dst, cx.now)
        {
            return self.finish(w, PacketVerdict::Drop(DropCause::IcmpRateLimit), cx);
        }
        self.enter(&mut w.skb, Hook::Output, cx);
        // Every table of the OUTPUT hook sees the out interface of the route the packet started
        // with (`__ip_local_out` builds the hook state once); a re-route after mangle or nat
        // takes effect from POSTROUTING on.
        let hook_oif = (w.skb.oif, w.skb.oif_key);
        pass!(self, w, cx, self.table(Table::Raw, &mut w.skb, cx));
        if let Err(c) = self.conntrack_in(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        let before = (w.skb.pkt.mark, w.skb.pkt.src, w.skb.pkt.dst);
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        if (w.skb.pkt.mark, w.skb.pkt.src, w.skb.pkt.dst) != before
            && let Err(e) = self.route_output(&mut w, cx)
        {
            return self.finish(w, PacketVerdict::Drop(DropCause::Route(e)), cx);
        }
        (w.skb.oif, w.skb.oif_key) = hook_oif;
        let dst = w.skb.pkt.dst;
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Dst, cx));
        if w.skb.pkt.dst != dst
            && let Err(e) = self.route_output(&mut w, cx)
        {
            return self.finish(w, PacketVerdict::Drop(DropCause::Route(e)), cx);
        }
        let route = w.route.expect("routed");
        (w.skb.oif, w.skb.oif_key) = hook_oif;
        pass!(self, w, cx, self.table(Table::Filter, &mut w.skb, cx));
        w.skb.oif = Some(route.dev);
        w.skb.oif_key = self.routing.interface(route.dev).key;
        self.enter(&mut w.skb, Hook::Postrouting, cx);
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Src, cx));
        if let Err(c) = self.confirm(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        if matches!(route.kind, RouteType::Local | RouteType::Broadcast) {
            return self.loopback(w, cx);
        }
        let d = Disposition::Sent { oif: route.dev, next_hop: route.next_hop, forwarded: false };
        self.finish_with(w, PacketVerdict::Accept, d, None, cx)
    }

    /// The second half of a locally routed packet: back in through `lo`.
    #[inline]
    fn loopback(&mut self, mut w: Walk, cx: &mut Ctx<'_>) -> Fate {
        cx.event(|| Event::Loopback);
        w.skb.iif = Some(IfIndex::LO);
        w.skb.iif_key = self.routing.interface(IfIndex::LO).key;
        w.skb.oif = None;
        w.skb.oif_key = IfKey::NONE;
        w.skb.socket = None;
        if w.skb.ct.is_none() && !w.skb.untracked {
            // OUTPUT's lookup consumed the CT template and found the packet INVALID: it comes
            // back with no conntrack attached, so PREROUTING looks it up afresh — in the zone
            // a raw PREROUTING rule gives it, else zone 0 (kernel 6.18, differential suite
            // seed 11460).
            w.skb.zone = 0;
        }
        self.enter(&mut w.skb, Hook::Prerouting, cx);
        pass!(self, w, cx, self.table(Table::Raw, &mut w.skb, cx));
        // The entry travels with the packet: no second lookup unless it had none.
        if let Err(c) = self.conntrack_in(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        let dst = w.skb.pkt.dst;
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Dst, cx));
        if w.skb.pkt.dst != dst {
            // nat PREROUTING drops the route of a packet whose destination it changed
            // (nf_nat_ipv4_pre_routing): the input route decides anew, as for any arrival.
            return self.route_in(w, IfIndex::LO, cx);
        }
        self.local_in(w, cx)
    }

    /// INPUT hook and delivery.
    #[inline]
    fn local_in(&mut self, mut w: Walk, cx: &mut Ctx<'_>) -> Fate {
        self.enter(&mut w.skb, Hook::Input, cx);
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        pass!(self, w, cx, self.table(Table::Filter, &mut w.skb, cx));
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Src, cx));
        if let Err(c) = self.confirm(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        let d = Disposition::Local { socket: w.skb.assigned };
        self.finish_with(w, PacketVerdict::Accept, d, None, cx)
    }

    /// A packet arriving on `iif`.
    pub(crate) fn input_walk(&mut self, pkt: Packet, iif: IfIndex, cx: &mut Ctx<'_>) -> Fate {
        let skb = Skb {
            pkt,
            hook: Hook::Prerouting,
            iif: Some(iif),
            oif: None,
            iif_key: self.routing.interface(iif).key,
            oif_key: IfKey::NONE,
            next_hop: pkt.dst,
            ct: None,
            untracked: false,
            zone: 0,
            templated: false,
            socket: None,
            assigned: None,
        };
        let mut w = Walk { skb, created: None, route: None };
        self.enter(&mut w.skb, Hook::Prerouting, cx);
        pass!(self, w, cx, self.table(Table::Raw, &mut w.skb, cx));
        if let Err(c) = self.conntrack_in(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Dst, cx));
        self.route_in(w, iif, cx)
    }

    /// The input route of an arriving packet after PREROUTING, then local delivery or the
    /// forward path.
    fn route_in(&mut self, mut w: Walk, iif: IfIndex, cx: &mut Ctx<'_>) -> Fate {
        let p = w.skb.pkt;
        let r = self.routing.input(p.dst, p.src, p.mark, iif, self.forwarding);
        cx.event(|| Event::Route {
            dst: p.dst,
            mark: format!("0x{:x}", p.mark),
            result: route_text(&r, self),
        });
        let r = match r {
            Ok(r) => r,
            Err(e) => return self.no_route(w, e, cx),
        };
        if matches!(r.kind, RouteType::Local | RouteType::Broadcast) {
            w.route = Some(r);
            return self.local_in(w, cx);
        }
        self.set_route(&mut w, r);
        self.enter(&mut w.skb, Hook::Forward, cx);
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        pass!(self, w, cx, self.table(Table::Filter, &mut w.skb, cx));
        self.enter(&mut w.skb, Hook::Postrouting, cx);
        pass!(self, w, cx, self.table(Table::Mangle, &mut w.skb, cx));
        pass!(self, w, cx, self.nat_hook(&mut w.skb, Manip::Src, cx));
        if let Err(c) = self.confirm(&mut w, cx) {
            return self.finish(w, PacketVerdict::Drop(c), cx);
        }
        let d = Disposition::Sent { oif: r.dev, next_hop: r.next_hop, forwarded: true };
        self.finish_with(w, PacketVerdict::Accept, d, None, cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Disposition, Netns, NoSockets, Packet, RestoreOptions, TcpFlags};

    /// Kernel 6.18 (differential suite seed 137, reproduced by hand): REJECT in INPUT of a SYN
    /// that nat PREROUTING redirected answers with an ICMP error quoting the SYN as the client
    /// sent it — the error carries the still unconfirmed connection (icmp_glue_bits'
    /// nf_ct_attach), so NAT is undone in the quoted header, and the client's connect fails
    /// with ENETUNREACH. No nat chain sees the error, and no connection is left behind.
    #[test]
    fn reject_icmp_quotes_the_packet_before_nat_of_an_unconfirmed_connection() {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        let rules = "*nat\n-A PREROUTING -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n\
                     *filter\n-A INPUT ! -i lo -p tcp -j REJECT --reject-with icmp-net-unreachable\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let eth0 = n.interface("eth0").unwrap();
        let (client, asked) =
            ("10.0.1.1:40000".parse().unwrap(), "10.0.1.2:15008".parse().unwrap());
        let o = n.input(Packet::tcp(client, asked, TcpFlags::S), eth0, Duration::ZERO, &NoSockets);
        let reply = o.reply.expect("an ICMP error");
        assert!(matches!(reply.disposition, Disposition::Sent { .. }), "{reply:?}");
        let inner = reply.packet.icmp.and_then(|i| i.inner).expect("a quoted header");
        assert_eq!(
            (inner.src, inner.sport, inner.dst, inner.dport),
            (*client.ip(), 40000, *asked.ip(), 15008)
        );
        assert_eq!(n.conntrack_dump(Duration::ZERO), "");
        let save = n.save(true);
        assert!(save.contains(":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]"), "{save}");
    }

    /// Kernel 6.18 (differential suite seeds 249 and 299): a rule of filter OUTPUT matches `-o`
    /// against the route the packet started with, even after nat OUTPUT sent it elsewhere; the
    /// new route's device shows from POSTROUTING on.
    #[test]
    fn output_chains_see_the_first_routes_device_after_a_nat_reroute() {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        let rules = "*nat\n-A OUTPUT -p tcp -j DNAT --to-destination 127.0.0.1:8082\n\
                     -A POSTROUTING -o lo -j ACCEPT\nCOMMIT\n\
                     *filter\n-A OUTPUT -o eth0 -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (src, dst) = ("10.0.1.2:20003".parse().unwrap(), "10.96.0.10:80".parse().unwrap());
        let o = n.output(Packet::tcp(src, dst, TcpFlags::S), None, Duration::ZERO, &NoSockets);
        assert!(matches!(o.disposition, Disposition::Local { .. }), "{o:?}");
        let save = n.save(true);
        assert!(save.contains("[1:60] -A OUTPUT -o eth0 -j ACCEPT"), "{save}");
        assert!(save.contains("[0:0] -A OUTPUT -o lo -j ACCEPT"), "{save}");
        assert!(save.contains("[1:60] -A POSTROUTING -o lo -j ACCEPT"), "{save}");
    }

    /// Kernel 6.18 (differential suite seed 1262): REJECT in INPUT of a packet that a `local`
    /// route of table 100 delivered to an address the pod does not own answers from that
    /// address, which the ICMP's output route refuses: no ICMP error leaves, and the client
    /// times out instead of failing with EHOSTUNREACH.
    #[test]
    fn reject_sends_nothing_for_a_foreign_destination_delivered_by_a_local_route() {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("rule add fwmark 0x111/0xfff pref 32764 lookup 100").unwrap();
        n.ip("route add local 0.0.0.0/0 dev lo table 100").unwrap();
        let rules = "*mangle\n-A PREROUTING -j MARK --set-mark 0x111\nCOMMIT\n\
                     *filter\n-A INPUT -i eth0 -j REJECT --reject-with icmp-admin-prohibited\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let eth0 = n.interface("eth0").unwrap();
        let client = "10.0.1.1:40000".parse().unwrap();
        for (dst, answered) in [("10.0.9.9:8080", false), ("10.0.1.2:8080", true)] {
            let pkt = Packet::tcp(client, dst.parse().unwrap(), TcpFlags::S);
            let o = n.input(pkt, eth0, Duration::ZERO, &NoSockets);
            assert!(!o.accepted());
            assert_eq!(o.reply.is_some(), answered, "{dst}: {o:?}");
        }
    }
    /// Kernel 6.18 (differential suite seed 11460, reproduced by hand): nat INPUT SNATs a peer's
    /// SYN to 127.0.0.1, so the SYN-ACK is routed through `lo`; raw OUTPUT puts it in zone 1
    /// (`--ctstate INVALID` matches every packet before the lookup), where it has no entry and
    /// is INVALID, so nat OUTPUT does not undo the SNAT. Back through `lo` it carries no
    /// conntrack: PREROUTING looks it up in zone 0, finds the connection (SYN_RECV, replied),
    /// undoes the SNAT (destination 10.0.1.1), and the new input route — forwarding is off —
    /// drops it. The client never connects.
    #[test]
    fn an_invalid_looped_back_packet_is_looked_up_again_in_zone_0_and_rerouted_after_nat() {
        use crate::path::DropCause;
        use crate::{PacketVerdict, RouteError};
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        let rules = "*raw\n-A OUTPUT -m conntrack --ctstate INVALID -j CT --zone 1\nCOMMIT\n\
                     *nat\n-A INPUT -p tcp -j SNAT --to-source 127.0.0.1\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let eth0 = n.interface("eth0").unwrap();
        let (client, server) =
            ("10.0.1.1:20003".parse().unwrap(), "10.0.1.2:8080".parse().unwrap());
        let now = Duration::ZERO;
        let syn = n.input(Packet::tcp(client, server, TcpFlags::S), eth0, now, &NoSockets);
        assert!(matches!(syn.disposition, Disposition::Local { .. }), "{syn:?}");
        let seen = syn.packet.src_sock();
        assert_eq!(seen, "127.0.0.1:20003".parse().unwrap());
        let synack = n.output(Packet::tcp(server, seen, TcpFlags::SA), None, now, &NoSockets);
        assert_eq!(
            synack.verdict,
            PacketVerdict::Drop(DropCause::Route(RouteError::NotForwarding)),
            "{synack:?}"
        );
        assert_eq!(*synack.packet.dst_sock().ip(), std::net::Ipv4Addr::new(10, 0, 1, 1));
        let dump = n.conntrack_dump(now);
        assert!(dump.contains("SYN_RECV") && !dump.contains("UNREPLIED"), "{dump}");
        assert_eq!(dump.lines().count(), 1, "no zone-1 entry: {dump}");
    }
    /// Kernel 6.18 (differential suite seed 10299, reproduced by hand): a pod connects to its
    /// own 10.0.1.2:15001; raw OUTPUT puts the client's packets in zone 1, so its ACK (an ACK
    /// of the original direction to a SYN_SENT entry) is INVALID there. Back through `lo` it is
    /// picked up in zone 0 as a new connection, which nat PREROUTING REDIRECTs to 127.0.0.1;
    /// the route nat dropped is looked up again, and 127.0.0.1 arriving on `lo` is a martian
    /// (`route_localnet` off): the ACK, and every data segment after it, never arrives — each
    /// one REDIRECTed anew, its unconfirmed entry discarded.
    #[test]
    fn a_looped_back_packet_redirected_to_127_0_0_1_is_a_martian() {
        use crate::path::DropCause;
        use crate::{PacketVerdict, RouteError};
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.2/24 dev eth0").unwrap();
        let rules = "*raw\n-A OUTPUT -p tcp --dport 15001 -j CT --zone 1\nCOMMIT\n\
                     *nat\n-A PREROUTING -j REDIRECT\nCOMMIT\n";
        n.restore(rules, RestoreOptions::default()).unwrap();
        let (client, server) =
            ("10.0.1.2:40000".parse().unwrap(), "10.0.1.2:15001".parse().unwrap());
        let now = Duration::ZERO;
        let mut send = |src, dst, flags: TcpFlags| {
            let len = if flags.has(TcpFlags::SYN) { 60 } else { 52 };
            n.output(Packet::tcp(src, dst, flags).with_len(len), None, now, &NoSockets)
        };
        assert!(send(client, server, TcpFlags::S).is_local());
        assert!(send(server, client, TcpFlags::SA).is_local());
        for _ in 0..2 {
            let ack = send(client, server, TcpFlags::A);
            assert_eq!(
                ack.verdict,
                PacketVerdict::Drop(DropCause::Route(RouteError::Martian)),
                "{ack:?}"
            );
        }
        assert!(n.save(true).contains("[2:104] -A PREROUTING -j REDIRECT"), "{}", n.save(true));
        let dump = n.conntrack_dump(now);
        assert!(dump.contains("SYN_SENT") && dump.contains("zone=1"), "{dump}");
        assert_eq!(dump.lines().count(), 1, "{dump}");
    }
}
