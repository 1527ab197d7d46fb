//! The model executor: runs a [`Case`] through the kernel model (`ambient-kernel`) and returns what
//! the model did as an [`Observation`] — the counterpart of `ambient_netns::diff::kernel`, step
//! for step (see that module's sequence).
//!
//! - Topology: two model namespaces, `pod` and `peer`, built from the case's [`NodeSpec`]s with
//!   the model's `ip … add` commands; their `eth0`s are joined by a simulated link (a packet sent
//!   out of one arrives on the other's `eth0`, its mark cleared, provided the next hop is an
//!   address the other side owns and would answer ARP for). The pod gets `case.ruleset` through
//!   the model's `iptables-restore` (no `--noflush`); the peer has no rules and so no conntrack.
//! - Sockets: the model has none, so this plays them — listeners from the topology, clients, and
//!   a TCP endpoint per connection ([`super::tcp`]); it answers the model's socket lookups
//!   (`-m socket`, TPROXY) from that table and delivers locally-delivered packets to the socket
//!   that owns them (TPROXY's assignment first, then an established socket, then a listener), or
//!   answers with the kernel's RST.
//! - Applications: the kernel executor's client and echo server, as state machines with the same
//!   time limits. Time is simulated: every flow starts at 0, each hop takes [`HOP`], timers and
//!   time limits are events.
//! - Snapshots: conntrack "open" once every flow finished its echo (plus the time the listing
//!   takes), then every flow closes, then conntrack "closed" and `iptables-save -c` — parsed with
//!   the kernel side's parsers and assembled by `ambient_netns::diff::observe`, so both sides
//!   are normalised alike.
//!
//! What the executor decides itself (and the kernel does the same way, kernel 6.x):
//! - a connect's source address is the route's (`source_for`); a non-transparent socket whose
//!   route gives a source address that is not local (a `local` route of table 100 picks the
//!   destination itself) fails at once with ENETUNREACH, and a non-transparent socket never sends
//!   from an address that is not local (the kernel's output route lookup refuses it) — nor does
//!   the kernel's RST for a packet no socket took;
//! - a hard ICMP error (destination unreachable) in SYN_SENT fails the connect: port unreachable
//!   → ECONNREFUSED, net unreachable → ENETUNREACH, host unreachable and admin prohibited →
//!   EHOSTUNREACH; in other states ICMP errors are soft and ignored;
//! - SO_MARK marks every packet of a client socket; accepted sockets and the kernel's own RSTs
//!   carry mark 0 (`tcp_fwmark_accept` and `fwmark_reflect` are off);
//! - the echo server accepts a connection from the other namespace only after the client's
//!   first data arrived ([`ACCEPT_WAKEUP`]; until then the connection has no `struct socket`,
//!   which `-m owner` sees), one from its own namespace before the client writes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_kernel::packet::icmp_type;
use ambient_kernel::{
    Disposition, Fate, IfIndex, Netns, Packet, Protocol, RestoreOptions, SocketInfo, SocketLookup,
    TcpFlags,
};
use ambient_netns::conntrack::parse_list;
use ambient_netns::diff::case::{
    Case, CloseOrder, CloseResult, ConnectResult, EchoResult, FlowSpec, NodeSpec, Observation, Side,
};
use ambient_netns::diff::kernel::CLOSE_TIMEOUT;
use ambient_netns::diff::observe::{ServerRecord, is_closing};
use ambient_netns::socket::ConnectErrorKind;

use super::tcp::{AppEvent, Reaction, Seg, State, Tcb};

mod apps;

/// Time a packet takes from one namespace's output to the next step (the other namespace's input
/// or local delivery).
pub const HOP: Duration = Duration::from_micros(10);
/// Time from a connect completing in the stack to the application looking at it (SO_ERROR):
/// longer than a hop, so an error the handshake's last ACK provokes on the same host is there.
pub const WAKEUP: Duration = Duration::from_micros(50);
/// Time from a connection completing its handshake to the echo server's `accept()` returning
/// it, for a client in the other namespace: longer than the client's wake-up plus a hop, so the
/// client's first data is there before the accept, as on the kernel side, where each namespace
/// runs its tasks on its own thread (the data crosses the veth in the sending thread's softirq,
/// while the accepting thread needs a wake-up: the pod ACKs that data from a connection that has
/// no `struct socket` yet — differential suite seeds 10491 and 10815). A client in the same
/// namespace shares the accepting task's thread, whose runtime turn runs the accept before the
/// client's write: it is accepted at once.
pub const ACCEPT_WAKEUP: Duration = Duration::from_micros(200);
/// Time `conntrack -L` of both namespaces takes on the kernel side (before the close begins).
const SNAPSHOT: Duration = Duration::from_millis(2);
/// Socket ids at and above this are listeners; below, connections.
const LISTENER_ID: u64 = 1 << 40;
/// `-m addrtype` LOCAL (`RTN_LOCAL`).
const RTN_LOCAL: u8 = 2;

/// The model could not run the case.
#[derive(Debug)]
pub enum ModelError {
    /// The model's `iptables-restore` refused the ruleset the kernel accepted.
    RulesetRejected(String),
    /// The topology uses something the executor cannot build.
    Topology(String),
    /// The model's own output did not parse (a printer/parser mismatch).
    Output(String),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::RulesetRejected(e) => {
                write!(f, "the model's iptables-restore refused the ruleset: {e}")
            }
            ModelError::Topology(e) => write!(f, "building the model topology: {e}"),
            ModelError::Output(e) => write!(f, "reading the model's output: {e}"),
        }
    }
}

/// What the model executor returns.
#[derive(Debug, Clone)]
pub struct ModelRun {
    /// The observation.
    pub observation: Observation,
    /// The model's `iptables-save -c` after the flows.
    pub listing: String,
}

/// Runs `case` through the model.
pub fn model_observe(case: &Case) -> Result<ModelRun, ModelError> {
    let mut world = World::new(case)?;
    world.run();
    world.finish()
}

fn index(side: Side) -> usize {
    match side {
        Side::Pod => 0,
        Side::Peer => 1,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::Pod => Side::Peer,
        Side::Peer => Side::Pod,
    }
}

fn is_local(ns: &Netns, ip: Ipv4Addr) -> bool {
    ns.routing().addr_type(ip, None) == RTN_LOCAL
}

/// A listening socket.
#[derive(Debug, Clone)]
struct Listener {
    id: String,
    addr: SocketAddrV4,
    transparent: bool,
}

/// Who uses a connection.
#[derive(Debug, Clone, Copy)]
enum Owner {
    /// Flow `n`'s client.
    Client(usize),
    /// Accepted (or being accepted) by listener `n`.
    Server(usize),
}

#[derive(Debug, Clone)]
struct Conn {
    tcb: Tcb,
    owner: Owner,
    /// The server application of an accepted connection.
    server: Option<usize>,
    /// Timer generations already scheduled.
    timer_scheduled: u64,
    delack_scheduled: u64,
    /// A completed connection in its listener's accept queue: no `struct socket` yet, so
    /// `-m owner` sees none in what it sends ([`SocketInfo::orphan`]).
    queued: bool,
    /// What happened to a queued connection, for its server once it accepts (the flow id the
    /// segment carried with it).
    backlog: Vec<(AppEvent, Option<u32>)>,
}

/// One namespace's sockets; answers the model's lookups.
#[derive(Debug, Default)]
struct Sockets {
    listeners: Vec<Listener>,
    conns: Vec<Conn>,
}

impl Sockets {
    fn info(&self, i: usize) -> SocketInfo {
        let t = &self.conns[i].tcb;
        SocketInfo {
            id: i as u64,
            transparent: t.transparent,
            wildcard: false,
            mark: t.mark,
            time_wait: t.state == State::TimeWait,
            orphan: self.conns[i].queued,
        }
    }

    fn find_conn(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.tcb.is_open() && c.tcb.local == local && c.tcb.remote == remote)
    }

    /// A listener bound to exactly `local`, else one bound to 0.0.0.0 on its port.
    fn find_listener(&self, local: SocketAddrV4) -> Option<usize> {
        let exact = self.listeners.iter().position(|l| l.addr == local);
        exact.or_else(|| {
            self.listeners
                .iter()
                .position(|l| l.addr.ip().is_unspecified() && l.addr.port() == local.port())
        })
    }
}

impl SocketLookup for Sockets {
    fn established(
        &self,
        proto: Protocol,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SocketInfo> {
        if proto != Protocol::Tcp {
            return None;
        }
        self.find_conn(local, remote).map(|i| self.info(i))
    }

    fn listener(&self, proto: Protocol, local: SocketAddrV4) -> Option<SocketInfo> {
        if proto != Protocol::Tcp {
            return None;
        }
        self.find_listener(local).map(|i| {
            let l = &self.listeners[i];
            SocketInfo {
                id: LISTENER_ID + i as u64,
                transparent: l.transparent,
                wildcard: l.addr.ip().is_unspecified(),
                mark: 0,
                time_wait: false,
                orphan: false,
            }
        })
    }
}

/// One namespace of the model.
#[derive(Debug)]
struct Host {
    ns: Netns,
    eth0: IfIndex,
    sockets: Sockets,
    ports: (u16, u16),
    next_port: u16,
}

impl Host {
    fn build(node: &NodeSpec, case: &Case) -> Result<Host, ModelError> {
        let mut ns = Netns::new();
        let ip = |ns: &mut Netns, cmd: String| {
            ns.ip(&cmd).map_err(|e| ModelError::Topology(format!("ip {cmd}: {e}")))
        };
        for a in &node.addresses {
            ip(&mut ns, format!("addr add {}/{} dev {}", a.addr, a.prefix, a.dev))?;
        }
        for r in &node.routes {
            let mut cmd = String::from("route add ");
            if r.local {
                cmd += "local ";
            }
            cmd += &if r.prefix == 0 {
                "default".to_string()
            } else {
                format!("{}/{}", r.dst, r.prefix)
            };
            if let Some(via) = r.via {
                cmd += &format!(" via {via}");
            }
            if let Some(dev) = &r.dev {
                cmd += &format!(" dev {dev}");
            }
            cmd += &format!(" table {}", r.table);
            ip(&mut ns, cmd)?;
        }
        for r in &node.rules {
            ip(
                &mut ns,
                format!(
                    "rule add fwmark 0x{:x}/0x{:x} pref {} lookup {}",
                    r.mark, r.mask, r.pref, r.table
                ),
            )?;
        }
        // The kernel's defaults that matter here: ephemeral ports 32768-60999, rp_filter off
        // (the model has none).
        let mut ports = (32768, 60999);
        for (key, value) in &node.sysctls {
            match key.as_str() {
                "net.ipv4.ip_local_port_range" => {
                    let mut words = value.split_whitespace().map(str::parse::<u16>);
                    match (words.next(), words.next()) {
                        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => ports = (lo, hi),
                        _ => {
                            return Err(ModelError::Topology(format!("{key} = {value:?}")));
                        }
                    }
                }
                k if k.ends_with(".rp_filter") && value == "0" => {}
                _ => {
                    return Err(ModelError::Topology(format!(
                        "sysctl {key} = {value} is not modelled"
                    )));
                }
            }
        }
        let eth0 = ns
            .interface("eth0")
            .ok_or_else(|| ModelError::Topology(format!("{} has no eth0", node.side)))?;
        let listeners = case
            .topology
            .listeners
            .iter()
            .filter(|l| l.side == node.side)
            .map(|l| Listener { id: l.id.clone(), addr: l.addr, transparent: l.transparent })
            .collect();
        Ok(Host {
            ns,
            eth0,
            sockets: Sockets { listeners, conns: Vec::new() },
            ports,
            next_port: ports.0,
        })
    }

    fn ephemeral_port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = if port >= self.ports.1 { self.ports.0 } else { port + 1 };
        port
    }
}

/// What the simulation does next.
#[derive(Debug, Clone)]
enum Event {
    /// A packet arrives on `to`'s `eth0`.
    Wire { to: Side, pkt: Packet, seg: Seg },
    /// A packet the model delivered locally reaches the socket layer of `at`.
    Deliver { at: Side, pkt: Packet, seg: Seg, assigned: Option<SocketInfo> },
    /// A connection's retransmission timer.
    Retransmit { side: Side, conn: usize, generation: u64 },
    /// A connection's delayed-ACK timer.
    DelayedAck { side: Side, conn: usize, generation: u64 },
    /// A client's application wakes up to a completed connect.
    ClientWake { flow: usize },
    /// A listener's application accepts a queued connection.
    Accept { side: Side, conn: usize, listener: usize },
    /// A client's time limit for the phase it was in when the limit was set.
    ClientLimit { flow: usize, phase: ClientPhase },
    /// A server's time limit.
    ServerLimit { server: usize, phase: ServerPhase },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ClientPhase {
    Connecting,
    Echoing,
    /// Echo over (or connect failed: `Done`), waiting for the close signal.
    Waiting,
    Closing,
    Done,
}

#[derive(Debug)]
struct Client {
    flow: FlowSpec,
    conn: Option<usize>,
    local: Option<SocketAddrV4>,
    local_port: Option<u16>,
    phase: ClientPhase,
    connect: Option<ConnectResult>,
    echo: Option<EchoResult>,
    close: Option<CloseResult>,
    stalled: bool,
    sent: u32,
    /// A reset not yet reported by a read.
    pending_reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerPhase {
    Header,
    Echo,
    Waiting,
    Closing,
    Done,
}

#[derive(Debug)]
struct Server {
    side: Side,
    conn: usize,
    record: usize,
    order: CloseOrder,
    need: u32,
    phase: ServerPhase,
    peer_done: bool,
}

struct World<'c> {
    case: &'c Case,
    hosts: [Host; 2],
    queue: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    now: Duration,
    clients: Vec<Client>,
    servers: Vec<Server>,
    accepts: Vec<ServerRecord>,
    close_now: bool,
    /// `conntrack -L` of pod and peer at the "open" snapshot.
    open: Option<[String; 2]>,
}

impl<'c> World<'c> {
    fn new(case: &'c Case) -> Result<World<'c>, ModelError> {
        let node = |side: Side| {
            case.topology
                .nodes
                .iter()
                .find(|n| n.side == side)
                .ok_or_else(|| ModelError::Topology(format!("no {side} node")))
        };
        let mut pod = Host::build(node(Side::Pod)?, case)?;
        let peer = Host::build(node(Side::Peer)?, case)?;
        pod.ns
            .restore(&case.ruleset, RestoreOptions::default())
            .map_err(|e| ModelError::RulesetRejected(e.to_string()))?;
        let clients = case
            .flows
            .iter()
            .map(|f| Client {
                flow: f.clone(),
                conn: None,
                local: None,
                local_port: None,
                phase: ClientPhase::Connecting,
                connect: None,
                echo: None,
                close: None,
                stalled: false,
                sent: f.bytes().len() as u32,
                pending_reset: false,
            })
            .collect();
        Ok(World {
            case,
            hosts: [pod, peer],
            queue: BTreeMap::new(),
            seq: 0,
            now: Duration::ZERO,
            clients,
            servers: Vec::new(),
            accepts: Vec::new(),
            close_now: false,
            open: None,
        })
    }

    fn host(&mut self, side: Side) -> &mut Host {
        &mut self.hosts[index(side)]
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    /// Processes events in time order until `done` holds or the next event is after `limit`;
    /// the clock then stands at the last event (or at `limit` when it ran out).
    fn run_until(&mut self, done: impl Fn(&World<'_>) -> bool, limit: Duration) {
        while !done(self) {
            let Some(entry) = self.queue.first_entry() else { break };
            if entry.key().0 > limit {
                self.now = self.now.max(limit);
                return;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = self.now.max(at);
            self.handle(event);
        }
    }

    /// The whole case: flows, "open" snapshot, close, "closed" snapshot.
    fn run(&mut self) {
        for flow in 0..self.clients.len() {
            self.start_client(flow);
        }
        let never = Duration::MAX;
        self.run_until(|w| w.clients.iter().all(|c| c.phase >= ClientPhase::Waiting), never);
        let snapshot_end = self.now + SNAPSHOT;
        self.run_until(|_| false, snapshot_end);
        self.now = snapshot_end;
        self.open = Some(self.snapshot());
        self.close_now = true;
        for flow in 0..self.clients.len() {
            self.client_close(flow);
        }
        for server in 0..self.servers.len() {
            if self.servers[server].phase == ServerPhase::Waiting {
                self.server_close(server);
            }
        }
        self.run_until(|w| w.clients.iter().all(|c| c.phase == ClientPhase::Done), never);
        let servers_limit = self.now + CLOSE_TIMEOUT * 2;
        self.run_until(|w| w.servers.iter().all(|s| s.phase == ServerPhase::Done), servers_limit);
        // The kernel side gives a close in progress up to six 5 ms looks to settle.
        for _ in 0..6 {
            let pod = &self.hosts[0];
            let dump = pod.ns.conntrack_dump(self.now);
            let settled = parse_list(&dump, None)
                .map(|entries| !entries.iter().any(is_closing))
                .unwrap_or(true);
            if settled {
                break;
            }
            let until = self.now + Duration::from_millis(5);
            self.run_until(|_| false, until);
            self.now = until;
        }
    }
}

/// The network: sending, the link, delivery to sockets.
impl World<'_> {
    fn snapshot(&self) -> [String; 2] {
        [self.hosts[0].ns.conntrack_dump(self.now), self.hosts[1].ns.conntrack_dump(self.now)]
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Wire { to, pkt, seg } => {
                let now = self.now;
                let host = self.host(to);
                let out = host.ns.input(pkt, host.eth0, now, &host.sockets);
                self.route(to, out, seg);
            }
            Event::Deliver { at, pkt, seg, assigned } => match pkt.proto {
                Protocol::Tcp => self.tcp_in(at, &pkt, &seg, assigned),
                Protocol::Icmp => self.icmp_in(at, &pkt, &seg),
                Protocol::Udp => {}
            },
            Event::Retransmit { side, conn, generation } => {
                let now = self.now;
                let seg = self.host(side).sockets.conns[conn].tcb.timer_fired(generation, now);
                if let Some(seg) = seg {
                    self.emit(side, conn, seg);
                }
                self.sync_timers(side, conn);
            }
            Event::DelayedAck { side, conn, generation } => {
                let seg = self.host(side).sockets.conns[conn].tcb.delack_fired(generation);
                if let Some(seg) = seg {
                    self.emit(side, conn, seg);
                }
            }
            Event::ClientWake { flow } => self.client_wake(flow),
            Event::Accept { side, conn, listener } => self.accept(side, conn, listener),
            Event::ClientLimit { flow, phase } => self.client_limit(flow, phase),
            Event::ServerLimit { server, phase } => self.server_limit(server, phase),
        }
    }

    /// Schedules the connection's timers that are not scheduled yet.
    fn sync_timers(&mut self, side: Side, conn: usize) {
        let c = &mut self.hosts[index(side)].sockets.conns[conn];
        let mut events = Vec::new();
        if let Some((at, generation)) = c.tcb.timer
            && generation > c.timer_scheduled
        {
            c.timer_scheduled = generation;
            events.push((at, Event::Retransmit { side, conn, generation }));
        }
        if let Some((at, generation)) = c.tcb.delack
            && generation > c.delack_scheduled
        {
            c.delack_scheduled = generation;
            events.push((at, Event::DelayedAck { side, conn, generation }));
        }
        for (at, e) in events {
            self.schedule(at, e);
        }
    }

    /// Sends a segment of connection `conn`.
    fn emit(&mut self, side: Side, conn: usize, seg: Seg) {
        let host = &self.hosts[index(side)];
        let t = &host.sockets.conns[conn].tcb;
        // The output route lookup refuses a source address that is not local, unless the socket
        // is transparent (FLOWI_FLAG_ANYSRC).
        if !t.transparent && !is_local(&host.ns, *t.local.ip()) {
            return;
        }
        let pkt = Packet::tcp(t.local, t.remote, seg.flags)
            .with_mark(t.mark)
            .with_len(seg.wire_len())
            .with_payload(seg.len);
        let info = if t.state == State::TimeWait {
            // A TIME_WAIT socket answers through the kernel's control socket.
            SocketInfo::kernel()
        } else {
            host.sockets.info(conn)
        };
        self.send(side, pkt, seg, Some(info));
    }

    /// The kernel's RST for a segment no socket took (`tcp_v4_send_reset`); `transparent` when
    /// it answers for a transparent listener.
    fn kernel_reset(&mut self, side: Side, pkt: &Packet, seg: &Seg, transparent: bool) {
        let Some(rst) = Seg::reset_for(seg) else { return };
        if !transparent && !is_local(&self.hosts[index(side)].ns, pkt.dst) {
            return;
        }
        let reply = Packet::tcp(pkt.dst_sock(), pkt.src_sock(), rst.flags).with_len(rst.wire_len());
        self.send(side, reply, rst, Some(SocketInfo::kernel()));
    }

    fn send(&mut self, side: Side, pkt: Packet, seg: Seg, socket: Option<SocketInfo>) {
        let now = self.now;
        let host = self.host(side);
        let out = host.ns.output(pkt, socket, now, &host.sockets);
        self.route(side, out, seg);
    }

    /// Follows a packet's outcome in namespace `side`: REJECT's reply, local delivery, the link.
    fn route(&mut self, side: Side, mut out: Fate, seg: Seg) {
        if let Some(reply) = out.reply.take() {
            // A reset answers the segment; an ICMP error quotes it (its sequence number).
            let rseg = match reply.packet.proto {
                Protocol::Tcp => Seg::reset_for(&seg).unwrap_or_default(),
                _ => seg,
            };
            self.route(side, *reply, rseg);
        }
        if !out.accepted() {
            return;
        }
        let at = self.now + HOP;
        match out.disposition {
            Disposition::Local { socket } => self
                .schedule(at, Event::Deliver { at: side, pkt: out.packet, seg, assigned: socket }),
            Disposition::Sent { next_hop, .. } => {
                let to = other(side);
                // Only an address the other end owns answers the neighbour solicitation.
                let ns = &self.hosts[index(to)].ns;
                if next_hop.is_loopback() || !ns.routing().is_local_address(next_hop) {
                    return;
                }
                let mut pkt = out.packet;
                pkt.mark = 0;
                self.schedule(at, Event::Wire { to, pkt, seg });
            }
            Disposition::None => {}
        }
    }

    /// A TCP segment reaches the socket layer of `side`.
    fn tcp_in(&mut self, side: Side, pkt: &Packet, seg: &Seg, assigned: Option<SocketInfo>) {
        let (local, remote) = (pkt.dst_sock(), pkt.src_sock());
        let sockets = &self.hosts[index(side)].sockets;
        let (conn, listener) = match assigned {
            Some(s) if s.id >= LISTENER_ID => (None, Some((s.id - LISTENER_ID) as usize)),
            Some(s) => (Some(s.id as usize), None),
            None => match sockets.find_conn(local, remote) {
                Some(c) => (Some(c), None),
                None => (None, sockets.find_listener(local)),
            },
        };
        if let Some(conn) = conn {
            let now = self.now;
            let r = self.host(side).sockets.conns[conn].tcb.segment(seg, now);
            self.react(side, conn, r, seg);
            return;
        }
        let Some(l) = listener else {
            self.kernel_reset(side, pkt, seg, false);
            return;
        };
        let transparent = sockets.listeners[l].transparent;
        let f = seg.flags;
        if f.has(TcpFlags::RST) {
        } else if f.has(TcpFlags::ACK) {
            self.kernel_reset(side, pkt, seg, transparent);
        } else if f.has(TcpFlags::SYN) {
            // The SYN-ACK's route lookup refuses a foreign source for a plain listener.
            if !transparent && !is_local(&self.hosts[index(side)].ns, *local.ip()) {
                return;
            }
            let now = self.now;
            let (tcb, synack) = Tcb::request(local, remote, transparent, seg, now);
            let host = self.host(side);
            host.sockets.conns.push(Conn {
                tcb,
                owner: Owner::Server(l),
                server: None,
                timer_scheduled: 0,
                delack_scheduled: 0,
                queued: false,
                backlog: Vec::new(),
            });
            let conn = host.sockets.conns.len() - 1;
            self.emit(side, conn, synack);
            self.sync_timers(side, conn);
        }
    }

    /// An ICMP error quoting `quoted` reaches `side`: a hard error for a connecting socket, a
    /// soft one (for SO_ERROR) otherwise.
    fn icmp_in(&mut self, side: Side, pkt: &Packet, quoted: &Seg) {
        let Some(icmp) = pkt.icmp else { return };
        let Some(inner) = icmp.inner else { return };
        if icmp.kind != icmp_type::DEST_UNREACH || inner.proto != Protocol::Tcp {
            return;
        }
        let local = SocketAddrV4::new(inner.src, inner.sport);
        let remote = SocketAddrV4::new(inner.dst, inner.dport);
        let host = self.host(side);
        let Some(conn) = host.sockets.find_conn(local, remote) else { return };
        let c = &mut host.sockets.conns[conn];
        if !c.tcb.icmp_in_window(quoted.seq) {
            return;
        }
        if c.tcb.state != State::SynSent {
            // A soft error: kept for SO_ERROR.
            c.tcb.soft_error = Some(icmp.code);
            return;
        }
        c.tcb.discard();
        if let Owner::Client(flow) = c.owner {
            self.client_failed(flow, icmp_error_kind(icmp.code));
        }
    }

    /// Sends what a connection's reaction calls for, then tells its application. A connection
    /// that completed its handshake waits in the accept queue for [`ACCEPT_WAKEUP`]; what
    /// happens to it meanwhile waits for the server.
    fn react(&mut self, side: Side, conn: usize, r: Reaction, seg: &Seg) {
        let owner = self.hosts[index(side)].sockets.conns[conn].owner;
        if let Owner::Server(listener) = owner
            && r.events.contains(&AppEvent::Accepted)
            && !self.client_on_same_side(side, conn)
        {
            self.hosts[index(side)].sockets.conns[conn].queued = true;
            self.schedule(self.now + ACCEPT_WAKEUP, Event::Accept { side, conn, listener });
        }
        for s in r.send {
            self.emit(side, conn, s);
        }
        self.sync_timers(side, conn);
        for event in r.events {
            match owner {
                Owner::Client(flow) => self.client_event(flow, event),
                Owner::Server(_)
                    if event == AppEvent::Accepted
                        && self.hosts[index(side)].sockets.conns[conn].queued => {}
                Owner::Server(_) if self.hosts[index(side)].sockets.conns[conn].queued => {
                    self.hosts[index(side)].sockets.conns[conn].backlog.push((event, seg.flow));
                }
                Owner::Server(listener) => self.server_event(side, conn, listener, event, seg.flow),
            }
        }
    }

    /// Whether the client of server connection `conn` is a flow of the same namespace (its
    /// source port is one of this side's clients': the sides allocate disjoint ports, explicit
    /// ports are one per flow).
    fn client_on_same_side(&self, side: Side, conn: usize) -> bool {
        let sockets = &self.hosts[index(side)].sockets;
        let port = sockets.conns[conn].tcb.remote.port();
        sockets
            .conns
            .iter()
            .any(|c| matches!(c.owner, Owner::Client(_)) && c.tcb.local.port() == port)
    }

    /// The echo server's `accept()` returns a queued connection: it gets its socket, and its
    /// server sees what arrived meanwhile — the data as one read.
    fn accept(&mut self, side: Side, conn: usize, listener: usize) {
        let c = &mut self.hosts[index(side)].sockets.conns[conn];
        c.queued = false;
        let backlog = std::mem::take(&mut c.backlog);
        self.server_event(side, conn, listener, AppEvent::Accepted, None);
        let mut events: Vec<(AppEvent, Option<u32>)> = Vec::new();
        for (event, flow) in backlog {
            match (events.last_mut(), event) {
                (Some((AppEvent::Data(n), first)), AppEvent::Data(m)) => {
                    *n += m;
                    *first = first.or(flow);
                }
                _ => events.push((event, flow)),
            }
        }
        for (event, flow) in events {
            self.server_event(side, conn, listener, event, flow);
        }
    }
}

/// The connect error an ICMP destination-unreachable code becomes (`icmp_err_convert`).
fn icmp_error_kind(code: u8) -> ConnectErrorKind {
    match code {
        0 | 6 | 11 => ConnectErrorKind::NetUnreachable,
        1 | 12 | 13 => ConnectErrorKind::HostUnreachable,
        3 => ConnectErrorKind::Refused,
        9 | 10 => ConnectErrorKind::PermissionDenied,
        2 => ConnectErrorKind::Other("ENOPROTOOPT".into()),
        7 => ConnectErrorKind::Other("EHOSTDOWN".into()),
        8 => ConnectErrorKind::Other("ENONET".into()),
        _ => ConnectErrorKind::Other("EOPNOTSUPP".into()),
    }
}
