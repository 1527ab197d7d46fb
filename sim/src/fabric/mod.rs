//! The packet loop: every segment a substrate host emits goes through the kernel model of the
//! namespace that sent it and of every namespace it reaches, exactly where the kernel would run
//! it, and is delivered to the owning host only if the model delivers it locally.
//!
//! ```text
//! host egress ─▶ translate source (socket table) ─▶ sender netns OUTPUT … POSTROUTING
//!     ├─ local (lo, incl. REDIRECT) ─▶ deliver to the namespace's host
//!     └─ sent out <dev> via <next hop> ─▶ segment: who owns the next hop
//!            └─ underlay between two nodes: partition / seeded loss / latency (held)
//!               ─▶ receiver netns PREROUTING … INPUT ─▶ deliver, or FORWARD ─▶ next hop …
//! ```
//!
//! A segment's remote is translated too: the substrate names a loopback address by its alias
//! (`substrate.rs`), so loopback traffic inside a namespace leaves the host and takes the
//! `local (lo)` branch like any other. REJECT replies and the kernel's own ICMP errors travel
//! the same way. A packet the model
//! delivers to a namespace without sockets (a node) gets the kernel's reset; an ICMP error
//! delivered to a socket that is still connecting fails it with the errno Linux maps the error
//! to. Drops are traced with their cause. One [`pass`] moves everything that is ready *now*;
//! the pump (`pump.rs`) decides when time moves.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use turmoil_net::{EnterGuard, Packet as SubPacket, TcpFlags as SubFlags, TcpSegment, Transport};

use crate::net::SimStream;
use crate::pcap::{Captures, TcpWire};
use crate::shared::{Log, Shared};
use crate::substrate::{SockKey, Sockets, view_addr};
use crate::tcp::{self, Expiry, Flights};
use ambient_kernel::conntrack::TcpState;
use ambient_kernel::path::{Disposition, Fate, PacketVerdict};
use ambient_kernel::{IfIndex, Packet, SocketInfo, TcpFlags, Trace};

mod deliver;
mod udp;

pub use udp::udp_icmp_errno;

use crate::topology::{NetnsId, Topology};
use deliver::abort_in_place;

/// Bytes the substrate socket `key` of the host at `host` received that its owner has not
/// read yet (0 when the socket is gone). Called on resets and closes only: it snapshots the
/// host's socket table.
pub(crate) fn unread(host: Ipv4Addr, key: &SockKey) -> usize {
    let peer = std::net::SocketAddr::V4(key.2);
    turmoil_net::netstat(IpAddr::V4(host))
        .entries
        .iter()
        .find(|e| e.local.port() == key.1 && e.peer == Some(peer))
        .map_or(0, |e| e.recv_q)
}

/// Linux errnos the harness reports.
pub mod errno {
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const ENETUNREACH: i32 = 101;
    pub const EHOSTUNREACH: i32 = 113;
}

/// The longest path a packet may take (a routing loop ends here).
const MAX_HOPS: u8 = 16;

/// The TCP fields of a segment the model does not keep.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub payload: Bytes,
}

impl Wire {
    fn tcp(&self) -> TcpWire<'_> {
        TcpWire { seq: self.seq, ack: self.ack, window: self.window, payload: &self.payload }
    }
}

fn to_model_flags(f: SubFlags) -> TcpFlags {
    let mut b = 0;
    for (on, bit) in [
        (f.fin, TcpFlags::FIN),
        (f.syn, TcpFlags::SYN),
        (f.rst, TcpFlags::RST),
        (f.psh, TcpFlags::PSH),
        (f.ack, TcpFlags::ACK),
        (f.urg, TcpFlags::URG),
    ] {
        if on {
            b |= bit;
        }
    }
    TcpFlags(b)
}

fn to_sub_flags(f: TcpFlags) -> SubFlags {
    SubFlags {
        syn: f.has(TcpFlags::SYN),
        ack: f.has(TcpFlags::ACK),
        fin: f.has(TcpFlags::FIN),
        rst: f.has(TcpFlags::RST),
        psh: f.has(TcpFlags::PSH),
        urg: f.has(TcpFlags::URG),
    }
}

/// The IP total length Linux would put on this segment: 60 for a SYN (MSS, SACK-permitted,
/// timestamps, window scale), 40 for a reset, 52 + data otherwise (timestamps).
fn linux_len(flags: SubFlags, payload: usize) -> u32 {
    if flags.syn {
        60
    } else if flags.rst {
        40
    } else {
        52 + payload as u32
    }
}

/// Faults on the underlay between two nodes (both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkFault {
    pub partitioned: bool,
    pub latency: Duration,
    pub loss: f64,
}

/// A TCP segment put on the underlay between two nodes, as the fabric's tap recorded it
/// (see [`Fabric::tap_underlay`]). Read-only: recording changes nothing about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayPacket {
    /// Simulated time since the run started.
    pub at: Duration,
    /// The sending and the receiving node (their labels).
    pub from: String,
    pub to: String,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The segment's payload, byte for byte as it crossed the link.
    pub payload: Bytes,
}

/// A packet held on a link.
#[derive(Debug)]
struct Held {
    to: NetnsId,
    iif: IfIndex,
    pkt: Packet,
    wire: Wire,
    hops: u8,
}

/// Counts for the bench and the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Segments hosts emitted (retransmissions included).
    pub segments: u64,
    /// Walks through a namespace's model.
    pub walks: u64,
    pub drops: u64,
    pub retransmissions: u64,
}

/// Packets one namespace's model saw (to check rule counters against).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walks {
    /// Packets sent by its sockets or its kernel (the output path, raw OUTPUT first).
    pub output: u64,
    /// Of those, delivered locally through `lo` (they traverse PREROUTING too).
    pub looped: u64,
    /// Packets that arrived on an interface.
    pub input: u64,
}

/// The packet loop's state: namespaces, sockets, in-flight packets, faults.
#[derive(Debug)]
pub struct Fabric {
    pub topo: Topology,
    pub sockets: Sockets,
    flights: Flights,
    links: BTreeMap<(usize, usize), LinkFault>,
    held: BTreeMap<(Duration, u64), Held>,
    next_held: u64,
    rng: ChaCha8Rng,
    tracing: bool,
    pub captures: Option<Captures<NetnsId>>,
    pub stats: Stats,
    pub walks: BTreeMap<NetnsId, Walks>,
    egress: Vec<SubPacket>,
    /// Resets held back from substrate sockets that still have unread data (see
    /// [`Fabric::deliver_deferred_resets`]), by socket, with the host they go to.
    deferred_resets: BTreeMap<SockKey, (Ipv4Addr, SubPacket)>,
    /// Segments with payload that left one node for another on the underlay, when tapped.
    pub underlay: Option<Vec<UnderlayPacket>>,
    /// Payload bytes sent in the current [`WIRE_QUANTUM`] (see [`Fabric::wire_spent`]).
    wire: (u64, u64),
}

/// The simulated network moves at most [`WIRE_BUDGET`] payload bytes per `WIRE_QUANTUM` of
/// simulated time, all namespaces together (1 MiB per ms, ~8.4 Gbit/s). Below it transfers
/// take no simulated time, as before; above it a bulk transfer takes simulated time, so the
/// timers that watch it (a client's deadline) fire as they would on a real link. No catalog
/// scenario comes near it.
pub const WIRE_QUANTUM: Duration = Duration::from_millis(1);
pub const WIRE_BUDGET: u64 = 1 << 20;

/// The index of the wire quantum `t` falls in.
pub fn quantum_of(t: Duration) -> u64 {
    u64::try_from(t.as_nanos() / WIRE_QUANTUM.as_nanos()).unwrap_or(u64::MAX)
}

/// Per-pass context.
struct Cx<'a> {
    guard: &'a EnterGuard,
    now: Duration,
    log: &'a std::sync::Mutex<Log>,
}

impl Cx<'_> {
    fn note(&self, text: impl AsRef<str>) {
        if let Some(t) = self.log.lock().unwrap_or_else(|e| e.into_inner()).trace.as_mut() {
            t.push(self.now, text);
        }
    }
}

/// Moves everything that is ready now: held packets and retransmissions that are due, every
/// host's egress, then queued resets. Returns whether anything moved.
///
/// Egress comes before resets because a host answers what it receives (ACKs) when the
/// segment arrives, as the kernel does, but turmoil-net only hands those answers over at the
/// next egress: a socket reset since then must not be seen to send them after its RST.
pub fn pass(shared: &Shared, guard: &EnterGuard) -> bool {
    let now = shared.now();
    let cx = Cx { guard, now, log: &shared.log };
    let mut moved = {
        let mut f = shared.state();
        for key in shared.take_released() {
            f.sockets.release(key);
        }
        let mut moved = f.due(&cx);
        let mut out = std::mem::take(&mut f.egress);
        guard.egress_all(&mut out);
        moved |= !out.is_empty();
        for p in out.drain(..) {
            f.egressed(&cx, p, false);
        }
        f.egress = out;
        // After the egress: a window update turmoil-net sent itself is already counted.
        for (host, key) in shared.take_reads() {
            moved |= f.window_update(&cx, host, key);
        }
        moved
    };
    moved |= shared.state().deliver_deferred_resets(guard);
    let resets = shared.take_resets();
    moved |= !resets.is_empty();
    for stream in resets {
        reset(shared, &cx, stream);
    }
    let orphans = shared.take_orphans();
    if !orphans.is_empty() {
        moved = true;
        let mut f = shared.state();
        for (host, key) in orphans {
            f.flights.forget(&key);
            abort_in_place(guard, host, key.1, key.2);
        }
    }
    moved
}

/// A stream closed abortively: the socket is aborted in place (no packet), closed, and the
/// RST its kernel would send goes out through the model — unless the kernel had already
/// closed it (a reset received, an error): then, as `tcp_close` in TCP_CLOSE, nothing is sent.
fn reset(shared: &Shared, cx: &Cx<'_>, mut stream: SimStream) {
    let Some((host, key, inner)) = stream.take_for_reset() else { return };
    let (_, port, remote) = key;
    let rst = {
        let mut f = shared.state();
        f.flights.forget(&key);
        f.forget_deferred_reset(&key);
        let view = f.sockets.view(&key).copied().filter(|_| !f.sockets.is_closed(&key));
        view.map(|v| SubPacket {
            src: IpAddr::V4(host.addr),
            dst: IpAddr::V4(*remote.ip()),
            ttl: 64,
            payload: Transport::Tcp(TcpSegment {
                src_port: port,
                dst_port: remote.port(),
                seq: v.snd_nxt,
                ack: v.rcv_ack.unwrap_or(0),
                flags: SubFlags { rst: true, ack: true, ..SubFlags::default() },
                window: 0,
                payload: Bytes::new(),
            }),
        })
    };
    abort_in_place(cx.guard, host.addr, port, remote);
    turmoil_net::set_current(host.id);
    drop(inner);
    drop(stream);
    let mut f = shared.state();
    if let Some(rst) = rst {
        f.egressed(cx, rst, true);
    }
    f.sockets.close(key);
}

impl Fabric {
    pub fn new(topo: Topology, seed: u64, trace: bool, pcap: Option<Duration>) -> Self {
        let mut captures = pcap.map(Captures::new);
        if let Some(c) = captures.as_mut() {
            for i in 0..topo.slots.len() {
                c.open(NetnsId(i as u32));
            }
        }
        Fabric {
            topo,
            sockets: Sockets::default(),
            flights: Flights::default(),
            links: BTreeMap::new(),
            held: BTreeMap::new(),
            next_held: 0,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f00d_1055),
            tracing: trace,
            captures,
            stats: Stats::default(),
            walks: BTreeMap::new(),
            egress: Vec::new(),
            wire: (0, 0),
            deferred_resets: BTreeMap::new(),
            underlay: None,
        }
    }

    /// Records every TCP segment with payload that goes onto the underlay from one node to
    /// another (before link faults: a partitioned link still saw it leave). The fuzzer's
    /// "no plaintext between nodes" invariant reads it.
    pub fn tap_underlay(&mut self) {
        self.underlay.get_or_insert_with(Vec::new);
    }

    /// Hands each held-back reset to its substrate socket once the socket's owner has read
    /// everything that arrived before it (or the socket is gone). Returns whether any went.
    ///
    /// Linux queues a reset's error behind the data already received: `recv` returns that
    /// data first and only then ECONNRESET (a client reads a TLS alert, then the reset).
    /// turmoil-net empties the receive buffer when a reset arrives, so the model holds the
    /// reset back instead; the kernel's view (conntrack, the socket table) saw it on time.
    fn deliver_deferred_resets(&mut self, guard: &EnterGuard) -> bool {
        if self.deferred_resets.is_empty() {
            return false;
        }
        let ready: Vec<SockKey> = self
            .deferred_resets
            .iter()
            .filter(|(key, (host, _))| unread(*host, key) == 0)
            .map(|(key, _)| *key)
            .collect();
        for key in &ready {
            if let Some((_, rst)) = self.deferred_resets.remove(key) {
                guard.deliver(rst);
            }
        }
        !ready.is_empty()
    }

    /// Whether a reset for `key` arrived and is held back behind unread data: the socket is
    /// reset as far as writes go.
    pub(crate) fn reset_pending(&self, key: &SockKey) -> bool {
        self.deferred_resets.contains_key(key)
    }

    /// Forgets a held-back reset (its socket was reset or closed by its owner).
    pub(crate) fn forget_deferred_reset(&mut self, key: &SockKey) {
        self.deferred_resets.remove(key);
    }

    /// When the loop next has something to do without a socket being used.
    pub fn next_deadline(&self) -> Option<Duration> {
        let held = self.held.keys().next().map(|(t, _)| *t);
        match (held, self.flights.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A connect was given up before it completed: its SYN is not retransmitted any more.
    pub fn abandon_connect(&mut self, netns: NetnsId, remote: SocketAddrV4, ticket: u64) {
        if let Some(port) = self.sockets.abandon(ticket) {
            self.flights.forget(&(netns, port, remote));
        }
    }

    /// Whether this quantum's payload budget is spent: the pump then waits for the next one.
    pub fn wire_spent(&self, now: Duration) -> bool {
        self.wire.0 == quantum_of(now) && self.wire.1 >= WIRE_BUDGET
    }

    /// When the pump may move payload again, if this quantum's budget is spent.
    pub fn wire_resumes(&self, now: Duration) -> Option<Duration> {
        self.wire_spent(now).then(|| {
            let q = quantum_of(now).saturating_add(1);
            let nanos = u64::try_from(WIRE_QUANTUM.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(q.saturating_mul(nanos))
        })
    }

    fn spend_wire(&mut self, now: Duration, bytes: usize) {
        let q = quantum_of(now);
        if self.wire.0 != q {
            self.wire = (q, 0);
        }
        self.wire.1 = self.wire.1.saturating_add(bytes as u64);
    }

    /// Packets held on a link (latency).
    pub fn in_flight(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn next_release(&self) -> Option<Duration> {
        self.held.keys().next().map(|(t, _)| *t)
    }

    fn link_key(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    pub fn link_fault(&mut self, a: usize, b: usize) -> &mut LinkFault {
        self.links.entry(Self::link_key(a, b)).or_default()
    }

    /// Removes faults between `a` and `b`, or everywhere.
    pub fn heal(&mut self, link: Option<(usize, usize)>) {
        match link {
            Some((a, b)) => {
                self.links.remove(&Self::link_key(a, b));
            }
            None => self.links.clear(),
        }
    }

    fn due(&mut self, cx: &Cx<'_>) -> bool {
        let mut moved = false;
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > cx.now {
                break;
            }
            let h = entry.remove();
            moved = true;
            self.input(cx, h.to, h.iif, h.pkt, h.wire, h.hops);
        }
        for e in self.flights.expire(cx.now) {
            moved = true;
            match e {
                Expiry::Resend(key, segs) => {
                    let Some(host) = self.topo.slot(key.0).host else { continue };
                    let (ack, window) =
                        self.sockets.view(&key).map_or((None, 0), |v| (v.rcv_ack, v.window));
                    for mut seg in segs {
                        if let (Some(a), true) = (ack, seg.flags.ack) {
                            seg.ack = a;
                            seg.window = window;
                        }
                        self.stats.retransmissions += 1;
                        if self.tracing {
                            cx.note(format!(
                                "{} retransmit {} > {} seq={}",
                                self.topo.slot(key.0).label,
                                self.sockets
                                    .view(&key)
                                    .map_or(String::from("?"), |v| v.local.to_string()),
                                view_addr(key.2),
                                seg.seq
                            ));
                        }
                        let p = SubPacket {
                            src: IpAddr::V4(host.addr),
                            dst: IpAddr::V4(*key.2.ip()),
                            ttl: 64,
                            payload: Transport::Tcp(seg),
                        };
                        self.egressed(cx, p, true);
                    }
                }
                Expiry::GiveUp(key) => {
                    self.fail(cx, key, errno::ETIMEDOUT, "retransmission timeout")
                }
            }
        }
        moved
    }

    /// After its owner read from `key`: sends the window update Linux would
    /// ([`tcp::window_update`]), as a pure ACK from the socket. Returns whether it sent one.
    fn window_update(&mut self, cx: &Cx<'_>, host: Ipv4Addr, key: SockKey) -> bool {
        if self.sockets.is_closed(&key) {
            return false;
        }
        let Some(v) = self.sockets.view(&key).copied() else { return false };
        let Some(ack) = v.rcv_ack else { return false };
        let Some(window) = tcp::window_update(v.window, || unread(host, &key)) else {
            return false;
        };
        let p = SubPacket {
            src: IpAddr::V4(host),
            dst: IpAddr::V4(*key.2.ip()),
            ttl: 64,
            payload: Transport::Tcp(TcpSegment {
                src_port: key.1,
                dst_port: key.2.port(),
                seq: v.snd_nxt,
                ack,
                flags: SubFlags { ack: true, ..SubFlags::default() },
                window,
                payload: Bytes::new(),
            }),
        };
        self.egressed(cx, p, false);
        true
    }

    /// The harness fails a socket: it reports `errno` and is aborted in place.
    fn fail(&mut self, cx: &Cx<'_>, key: SockKey, err: i32, why: &str) {
        self.flights.forget(&key);
        self.sockets.set_error(key, err);
        let Some(host) = self.topo.slot(key.0).host else { return };
        if self.tracing {
            let local = self.sockets.view(&key).map(|v| v.local.to_string()).unwrap_or_default();
            cx.note(format!(
                "{} socket {local} > {} fails: {why} (errno {err})",
                self.topo.slot(key.0).label,
                view_addr(key.2)
            ));
        }
        abort_in_place(cx.guard, host.addr, key.1, key.2);
    }

    /// A segment a host emitted (`retransmit`: one the harness resends).
    fn egressed(&mut self, cx: &Cx<'_>, p: SubPacket, retransmit: bool) {
        self.stats.segments += 1;
        match &p.payload {
            Transport::Tcp(seg) => self.spend_wire(cx.now, seg.payload.len()),
            Transport::Udp(d) => self.spend_wire(cx.now, d.payload.len()),
        }
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (p.src, p.dst) else {
            self.stats.drops += 1;
            cx.note("substrate: an IPv6 packet was dropped (not modelled)");
            return;
        };
        let seg = match p.payload {
            Transport::Tcp(seg) => seg,
            Transport::Udp(d) => return self.egressed_udp(cx, src, dst, d),
        };
        let Some(&netns) = self.topo.by_host_addr.get(&src) else { return };
        let sub_remote = SocketAddrV4::new(dst, seg.dst_port);
        let key = (netns, seg.src_port, sub_remote);
        let remote = view_addr(sub_remote);
        let fresh_syn = seg.flags.syn && !seg.flags.ack && !retransmit;
        let (view, abandoned) = if fresh_syn {
            self.sockets.place_syn(key).map_or((None, false), |(v, a)| (Some(v), a))
        } else {
            (self.sockets.view(&key).copied(), false)
        };
        let Some(view) = view else {
            self.stats.drops += 1;
            cx.note(format!(
                "{} substrate: no socket view for port {} > {remote}; segment dropped",
                self.topo.slot(netns).label,
                seg.src_port
            ));
            return;
        };
        if !fresh_syn && self.sockets.is_closed(&key) {
            // The kernel closed this socket (a reset received, an error decided): in TCP_CLOSE
            // it sends nothing more. The substrate may still emit what its owner queued after
            // the reset (a FIN from a `shutdown` in the same instant), which would otherwise
            // be retransmitted for a socket that no longer exists.
            self.stats.drops += 1;
            cx.note(format!(
                "{} socket {} > {remote} is closed (reset): segment not sent",
                self.topo.slot(netns).label,
                view.local
            ));
            return;
        }
        if let Some(v) = self.sockets.view_mut(&key) {
            let end = seg.seq.wrapping_add(tcp::seq_len(&seg));
            if !tcp::seq_le(end, v.snd_nxt) || v.snd_nxt == 0 {
                v.snd_nxt = end;
            }
            if seg.flags.ack {
                v.rcv_ack = Some(seg.ack);
                v.window = seg.window;
            }
        }
        if !retransmit && !abandoned {
            self.flights.sent(key, &seg, cx.now);
        }
        let flags = to_model_flags(seg.flags);
        let pkt = Packet::tcp(view.local, remote, flags)
            .with_len(linux_len(seg.flags, seg.payload.len()))
            .with_payload(seg.payload.len() as u32);
        let pkt = Packet { mark: view.info.mark, ..pkt };
        let wire = Wire { seq: seg.seq, ack: seg.ack, window: seg.window, payload: seg.payload };
        self.output(cx, netns, pkt, Some(view.info), wire);
    }

    fn ct_before(&self, netns: NetnsId, pkt: &Packet, now: Duration) -> Option<TcpState> {
        let ct = self.topo.slot(netns).model.conntrack();
        let (id, _) = ct.get(&pkt.tuple(), 0, now)?;
        ct.entry(id).tcp_state()
    }

    fn output(
        &mut self,
        cx: &Cx<'_>,
        netns: NetnsId,
        pkt: Packet,
        socket: Option<SocketInfo>,
        wire: Wire,
    ) {
        if !self.topo.slot(netns).alive {
            self.stats.drops += 1;
            return;
        }
        self.stats.walks += 1;
        let fate = if self.tracing {
            let before = self.ct_before(netns, &pkt, cx.now);
            let mut trace = Trace::default();
            let lookup = self.sockets.lookup(netns);
            let slot = &mut self.topo.slots[netns.0 as usize];
            let o = slot.model.output_traced(pkt, socket, cx.now, &lookup, &mut trace);
            self.trace_walk(cx, netns, None, &pkt, &o, &trace, before);
            o
        } else {
            let lookup = self.sockets.lookup(netns);
            self.topo.slots[netns.0 as usize].model.output(pkt, socket, cx.now, &lookup)
        };
        if let (Some(c), true) = (self.captures.as_mut(), fate.accepted()) {
            c.record(netns, cx.now, &fate.packet, &wire.tcp());
        }
        let w = self.walks.entry(netns).or_default();
        w.output += 1;
        w.looped += u64::from(fate.accepted() && fate.is_local());
        self.dispose(cx, netns, fate, wire, 0);
    }

    fn input(
        &mut self,
        cx: &Cx<'_>,
        netns: NetnsId,
        iif: IfIndex,
        pkt: Packet,
        wire: Wire,
        hops: u8,
    ) {
        if !self.topo.slot(netns).alive {
            self.stats.drops += 1;
            return;
        }
        self.stats.walks += 1;
        self.walks.entry(netns).or_default().input += 1;
        if let Some(c) = self.captures.as_mut() {
            c.record(netns, cx.now, &pkt, &wire.tcp());
        }
        let fate = if self.tracing {
            let before = self.ct_before(netns, &pkt, cx.now);
            let mut trace = Trace::default();
            let lookup = self.sockets.lookup(netns);
            let slot = &mut self.topo.slots[netns.0 as usize];
            let o = slot.model.input_traced(pkt, iif, cx.now, &lookup, &mut trace);
            let name = slot.model.routing().interface(iif).name.clone();
            self.trace_walk(cx, netns, Some(&name), &pkt, &o, &trace, before);
            o
        } else {
            let lookup = self.sockets.lookup(netns);
            self.topo.slots[netns.0 as usize].model.input(pkt, iif, cx.now, &lookup)
        };
        self.dispose(cx, netns, fate, wire, hops);
    }

    #[allow(clippy::too_many_arguments)]
    fn trace_walk(
        &self,
        cx: &Cx<'_>,
        netns: NetnsId,
        iif: Option<&str>,
        pkt: &Packet,
        o: &Fate,
        trace: &Trace,
        before: Option<TcpState>,
    ) {
        let slot = self.topo.slot(netns);
        if let Some(t) = cx.log.lock().unwrap_or_else(|e| e.into_inner()).trace.as_mut() {
            t.packet(cx.now, &slot.label, &slot.model, iif, pkt, o, trace, before);
        }
    }

    /// Where the packet goes next, by its fate.
    fn dispose(&mut self, cx: &Cx<'_>, netns: NetnsId, mut o: Fate, wire: Wire, hops: u8) {
        if let Some(reply) = o.reply.take() {
            // REJECT's reply or the kernel's ICMP error: it has been through the output path.
            let rw = Wire { seq: wire.ack, ack: wire.seq.wrapping_add(1), ..Wire::default() };
            if self.tracing {
                cx.note(format!("{} kernel reply {}", self.topo.slot(netns).label, reply.packet));
            }
            if let Some(c) = self.captures.as_mut() {
                c.record(netns, cx.now, &reply.packet, &rw.tcp());
            }
            self.dispose(cx, netns, *reply, rw, hops);
        }
        match (o.verdict, o.disposition) {
            (PacketVerdict::Accept, Disposition::Local { .. }) => {
                self.local(cx, netns, o.packet, wire)
            }
            (PacketVerdict::Accept, Disposition::Sent { oif, next_hop, .. }) => {
                self.link(cx, netns, oif, next_hop, o.packet, wire, hops)
            }
            _ => self.stats.drops += 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn link(
        &mut self,
        cx: &Cx<'_>,
        from: NetnsId,
        oif: IfIndex,
        next_hop: Ipv4Addr,
        mut pkt: Packet,
        wire: Wire,
        hops: u8,
    ) {
        let label = |f: &Self| f.topo.slot(from).label.clone();
        if hops >= MAX_HOPS {
            self.stats.drops += 1;
            cx.note(format!("{} DROP {pkt}: more than {MAX_HOPS} hops", label(self)));
            return;
        }
        let neighbour = self
            .topo
            .segment_of(from, oif)
            .and_then(|seg| Some((seg, self.topo.neighbour(seg, next_hop)?)));
        let Some((seg, (to, iif))) = neighbour else {
            self.stats.drops += 1;
            if self.tracing {
                cx.note(format!("{} DROP {pkt}: no neighbour answers for {next_hop}", label(self)));
            }
            return;
        };
        // A packet that leaves a namespace leaves its mark behind.
        pkt.mark = 0;
        if let Some(tap) = self.underlay.as_mut()
            && !wire.payload.is_empty()
            && self.topo.is_underlay(seg)
            && matches!(self.topo.slot(from).role, crate::topology::Role::Node { .. })
            && matches!(self.topo.slot(to).role, crate::topology::Role::Node { .. })
        {
            tap.push(UnderlayPacket {
                at: cx.now,
                from: self.topo.slot(from).label.clone(),
                to: self.topo.slot(to).label.clone(),
                src: SocketAddrV4::new(pkt.src, pkt.sport),
                dst: SocketAddrV4::new(pkt.dst, pkt.dport),
                payload: wire.payload.clone(),
            });
        }
        if self.topo.is_underlay(seg)
            && let (Some(a), Some(b)) = (self.topo.node_of(from), self.topo.node_of(to))
            && let Some(fault) = self.links.get(&Self::link_key(a, b)).copied()
        {
            let between = format!("{}->{}", label(self), self.topo.slot(to).label);
            if fault.partitioned {
                self.stats.drops += 1;
                if self.tracing {
                    cx.note(format!("link {between} DROP {pkt}: partition"));
                }
                return;
            }
            if fault.loss > 0.0 {
                let draw = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                if draw < fault.loss {
                    self.stats.drops += 1;
                    if self.tracing {
                        cx.note(format!("link {between} DROP {pkt}: loss"));
                    }
                    return;
                }
            }
            if !fault.latency.is_zero() {
                let at = cx.now + fault.latency;
                self.next_held += 1;
                self.held.insert((at, self.next_held), Held { to, iif, pkt, wire, hops: hops + 1 });
                return;
            }
        }
        self.input(cx, to, iif, pkt, wire, hops + 1);
    }
}
