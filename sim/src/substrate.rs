//! The substrate under the model: turmoil-net's per-host TCP stacks, and the per-namespace
//! socket tables that translate between a substrate socket and the kernel's view of it.
//!
//! Every namespace that has sockets (a pod, an external host) is one turmoil-net host with a
//! private address in 240.0.0.0/4 that the model never sees; nodes have no sockets and no host.
//! A substrate socket is bound to its host's private address; its *remote* is a view address
//! (what the app connected to, or the peer the kernel delivered; a loopback one by its alias,
//! below), so apps and proxies see true peers. The table here supplies the other half, the view of the local end:
//!
//! - a connecting socket gets its view source when its SYN leaves the host: the [`Ticket`]
//!   its `connect` queued (source chosen by the namespace's routing, or the transparent address
//!   the caller bound; an ephemeral port from one counter for the whole run, so ports never
//!   collide between namespaces — the kernel picks random ones, which conformance normalises);
//! - an accepted socket's view is the destination of the SYN the kernel delivered (after
//!   REDIRECT: `127.0.0.1:15001`), recorded at delivery.
//!
//! One turmoil host per namespace means one port space per namespace, like the kernel; a
//! listener's substrate port is its view port, an ephemeral socket's substrate port is
//! whatever turmoil-net allocated and is translated.
//!
//! The loopback network is the one view address a substrate socket can not name: turmoil-net
//! delivers `127.0.0.0/8` inside the host, where the model would never see it. So a view
//! address `127.a.b.c` is `241.a.b.c` ([`LOOPBACK_ALIAS`]) to the substrate, in every
//! namespace: a connect to `127.0.0.1:p` connects the substrate socket to `241.0.0.1:p`, which
//! leaves the host like any remote and is translated back before the model sees it, and a
//! packet the model delivers from `127.0.0.1` reaches the host from `241.0.0.1`. A [`SockKey`]'s
//! remote is the substrate's ([`substrate_addr`]); everything the model and the apps see is the
//! view ([`view_addr`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddrV4;

use crate::topology::NetnsId;
use ambient_kernel::{Protocol, SocketInfo, SocketLookup};

/// A substrate socket: (namespace, substrate local port, remote as the substrate socket sees
/// it — the view remote, or its alias for a loopback one).
pub type SockKey = (NetnsId, u16, SocketAddrV4);

/// The first octet of the substrate's alias of `127.0.0.0/8` (`241.0.0.0/8`, inside the
/// substrate's private `240.0.0.0/4` and above every host's address, see `topology.rs`).
pub const LOOPBACK_ALIAS: u8 = 241;

/// The address a substrate socket uses for the view address `view`: its alias in
/// `241.0.0.0/8` for a loopback address, otherwise itself.
pub fn substrate_addr(view: SocketAddrV4) -> SocketAddrV4 {
    let [a, b, c, d] = view.ip().octets();
    if a == 127 { SocketAddrV4::new([LOOPBACK_ALIAS, b, c, d].into(), view.port()) } else { view }
}

/// The view address of a substrate socket's remote `sub` (the inverse of [`substrate_addr`]).
pub fn view_addr(sub: SocketAddrV4) -> SocketAddrV4 {
    let [a, b, c, d] = sub.ip().octets();
    if a == LOOPBACK_ALIAS { SocketAddrV4::new([127, b, c, d].into(), sub.port()) } else { sub }
}

/// The kernel's view of one substrate socket, and what the harness learned from its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockView {
    /// The local end as the kernel sees it.
    pub local: SocketAddrV4,
    pub info: SocketInfo,
    /// The next sequence number it will send (from its segments).
    pub snd_nxt: u32,
    /// The last acknowledgement number it sent, once it has sent one.
    pub rcv_ack: Option<u32>,
    pub window: u16,
}

impl SockView {
    fn new(local: SocketAddrV4, info: SocketInfo) -> Self {
        SockView { local, info, snd_nxt: 0, rcv_ack: None, window: 0 }
    }
}

/// A listening socket as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenView {
    /// The bound address (`0.0.0.0` for a wildcard listener).
    pub addr: SocketAddrV4,
    pub info: SocketInfo,
}

/// What a `connect` queued for its SYN: the view of its local end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub id: u64,
    pub local: SocketAddrV4,
    pub info: SocketInfo,
}

/// Ephemeral view ports: `net.ipv4.ip_local_port_range`'s default range.
const EPHEMERAL: (u16, u16) = (32768, 60999);

/// Every namespace's socket table.
#[derive(Debug)]
pub struct Sockets {
    by_sub: BTreeMap<SockKey, SockView>,
    /// (namespace, view local, view remote) → substrate local port.
    by_view: BTreeMap<(NetnsId, SocketAddrV4, SocketAddrV4), u16>,
    listeners: BTreeMap<(NetnsId, u16), ListenView>,
    /// By (namespace, substrate remote).
    tickets: BTreeMap<(NetnsId, SocketAddrV4), VecDeque<Ticket>>,
    /// Ticket id → the substrate port its SYN left from.
    placed: BTreeMap<u64, u16>,
    /// Errors the harness decided for a socket (ETIMEDOUT, an ICMP error), as errno.
    errors: BTreeMap<SockKey, i32>,
    /// Sockets whose handshake is not complete (an ICMP error aborts those).
    handshaking: BTreeSet<SockKey>,
    /// Sockets the kernel has closed under their owner (a reset received, an error decided):
    /// in TCP_CLOSE, closing them sends nothing.
    closed: BTreeSet<SockKey>,
    /// Sockets their owner has closed (`close()`, not a reset): the kernel no longer reads
    /// for them (RCV_SHUTDOWN), so new data arriving aborts them.
    released: BTreeSet<SockKey>,
    /// Tickets whose connect was given up before its SYN left.
    abandoned: BTreeSet<u64>,
    next_port: u16,
    next_ticket: u64,
    /// Bound UDP sockets ([`crate::udp`]).
    pub udp: crate::udp::UdpSockets,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets {
            by_sub: BTreeMap::new(),
            by_view: BTreeMap::new(),
            listeners: BTreeMap::new(),
            tickets: BTreeMap::new(),
            placed: BTreeMap::new(),
            errors: BTreeMap::new(),
            handshaking: BTreeSet::new(),
            closed: BTreeSet::new(),
            released: BTreeSet::new(),
            abandoned: BTreeSet::new(),
            next_port: EPHEMERAL.0,
            next_ticket: 1,
            udp: crate::udp::UdpSockets::default(),
        }
    }
}

impl Sockets {
    /// The next ephemeral view port.
    pub fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= EPHEMERAL.1 { EPHEMERAL.0 } else { p + 1 };
        p
    }

    /// Queues the view of a connect's local end for its SYN (to the substrate address `remote`,
    /// from `netns`).
    pub fn push_ticket(
        &mut self,
        netns: NetnsId,
        remote: SocketAddrV4,
        local: SocketAddrV4,
        info: SocketInfo,
    ) -> Ticket {
        let id = self.next_ticket;
        self.next_ticket += 1;
        let t = Ticket { id, local, info: SocketInfo { id, ..info } };
        self.tickets.entry((netns, remote)).or_default().push_back(t);
        t
    }

    /// Withdraws a ticket whose SYN was never sent.
    pub fn cancel_ticket(&mut self, netns: NetnsId, remote: SocketAddrV4, id: u64) {
        if let Some(q) = self.tickets.get_mut(&(netns, remote)) {
            q.retain(|t| t.id != id);
            if q.is_empty() {
                self.tickets.remove(&(netns, remote));
            }
        }
    }

    /// The substrate port a ticket's SYN left from, once it has.
    pub fn placed(&self, ticket: u64) -> Option<u16> {
        self.placed.get(&ticket).copied()
    }

    /// Forgets a finished connect's ticket.
    pub fn forget_ticket(&mut self, ticket: u64) {
        self.placed.remove(&ticket);
    }

    /// The connect of a ticket was given up (its future dropped): the port its SYN left from,
    /// if it has left; otherwise its SYN, when it leaves, starts no retransmission timer.
    pub fn abandon(&mut self, id: u64) -> Option<u16> {
        let placed = self.placed.remove(&id);
        if placed.is_none() {
            self.abandoned.insert(id);
        }
        placed
    }

    /// A fresh SYN left `key`'s host: the oldest ticket for its remote names its view. Also
    /// says whether that connect was already abandoned.
    pub fn place_syn(&mut self, key: SockKey) -> Option<(SockView, bool)> {
        let (netns, port, remote) = key;
        let q = self.tickets.get_mut(&(netns, remote))?;
        let t = q.pop_front()?;
        if q.is_empty() {
            self.tickets.remove(&(netns, remote));
        }
        let abandoned = self.abandoned.remove(&t.id);
        if !abandoned {
            self.placed.insert(t.id, port);
        }
        let view = SockView::new(t.local, t.info);
        self.insert(key, view);
        self.handshaking.insert(key);
        Some((view, abandoned))
    }

    fn insert(&mut self, key: SockKey, view: SockView) {
        let (netns, port, remote) = key;
        self.closed.remove(&key);
        self.released.remove(&key);
        self.by_sub.insert(key, view);
        self.by_view.insert((netns, view.local, view_addr(remote)), port);
    }

    /// The view of a substrate socket.
    pub fn view(&self, key: &SockKey) -> Option<&SockView> {
        self.by_sub.get(key)
    }

    pub fn view_mut(&mut self, key: &SockKey) -> Option<&mut SockView> {
        self.by_sub.get_mut(key)
    }

    /// The socket a packet the kernel delivers locally in `netns` goes to: the live substrate
    /// socket whose view is (`local`, `remote`), else, for a SYN (`syn`: SYN without ACK), a
    /// new one on the port of the listener that takes it, whose view it records so the host's
    /// answers translate. `None`: no socket takes it, the kernel answers with a reset.
    pub fn deliver_to(
        &mut self,
        netns: NetnsId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        syn: bool,
    ) -> Option<SockKey> {
        let live = self.by_view(netns, local, remote).filter(|k| !self.closed.contains(k));
        if live.is_some() || !syn || !self.listening(netns, local) {
            return live;
        }
        let key = (netns, local.port(), substrate_addr(remote));
        let info = self.listeners.get(&(netns, local.port())).map(|l| l.info).unwrap_or_default();
        self.insert(key, SockView::new(local, SocketInfo { wildcard: false, ..info }));
        Some(key)
    }

    /// Whether a listening socket of `netns` takes a SYN to `local` (bound to its port, and
    /// to its address or the wildcard).
    pub fn listening(&self, netns: NetnsId, local: SocketAddrV4) -> bool {
        self.listeners
            .get(&(netns, local.port()))
            .is_some_and(|l| l.addr.ip().is_unspecified() || l.addr.ip() == local.ip())
    }

    pub fn listen(&mut self, netns: NetnsId, addr: SocketAddrV4, info: SocketInfo) {
        let info = SocketInfo { wildcard: addr.ip().is_unspecified(), ..info };
        self.listeners.insert((netns, addr.port()), ListenView { addr, info });
    }

    pub fn unlisten(&mut self, netns: NetnsId, port: u16) {
        self.listeners.remove(&(netns, port));
    }

    /// The handshake of `key` completed (a SYN-ACK reached it).
    pub fn established(&mut self, key: &SockKey) {
        self.handshaking.remove(key);
    }

    pub fn is_handshaking(&self, key: &SockKey) -> bool {
        self.handshaking.contains(key)
    }

    /// Records an error the socket must report (errno); the kernel has closed it.
    pub fn set_error(&mut self, key: SockKey, errno: i32) {
        self.errors.insert(key, errno);
        self.handshaking.remove(&key);
        self.closed.insert(key);
    }

    /// The kernel has closed the socket under its owner (a reset received or sent): it takes
    /// no more packets.
    pub fn close(&mut self, key: SockKey) {
        self.handshaking.remove(&key);
        self.closed.insert(key);
    }

    /// The owner closed the socket (a graceful `close()`).
    pub fn release(&mut self, key: SockKey) {
        self.released.insert(key);
    }

    /// Whether the owner closed the socket and the kernel still has it (FIN_WAIT and after):
    /// new data for it aborts it with a reset (tcp_rcv_state_process, TCPAbortOnData).
    pub fn is_released(&self, key: &SockKey) -> bool {
        self.released.contains(key) && !self.closed.contains(key)
    }

    /// Whether the kernel has closed the socket under its owner (nothing to reset).
    pub fn is_closed(&self, key: &SockKey) -> bool {
        self.closed.contains(key)
    }

    /// The error the harness decided for a socket, if any.
    pub fn error_of(&self, key: &SockKey) -> Option<i32> {
        self.errors.get(key).copied()
    }

    /// The substrate socket of `netns` whose view is (`local`, `remote`).
    pub fn by_view(
        &self,
        netns: NetnsId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SockKey> {
        self.by_view.get(&(netns, local, remote)).map(|&p| (netns, p, substrate_addr(remote)))
    }

    /// Socket lookups for the model of one namespace.
    pub fn lookup(&self, netns: NetnsId) -> NetnsSockets<'_> {
        NetnsSockets { sockets: self, netns }
    }
}

/// The sockets of one namespace, as the kernel model asks about them.
#[derive(Debug, Clone, Copy)]
pub struct NetnsSockets<'a> {
    sockets: &'a Sockets,
    netns: NetnsId,
}

impl SocketLookup for NetnsSockets<'_> {
    fn established(
        &self,
        proto: Protocol,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SocketInfo> {
        match proto {
            Protocol::Tcp => {}
            Protocol::Udp => return self.sockets.udp.established(self.netns, local, remote),
            Protocol::Icmp => return None,
        }
        let key = self.sockets.by_view(self.netns, local, remote)?;
        self.sockets.by_sub.get(&key).map(|v| v.info)
    }

    fn listener(&self, proto: Protocol, local: SocketAddrV4) -> Option<SocketInfo> {
        match proto {
            Protocol::Tcp => {}
            Protocol::Udp => return self.sockets.udp.listener(self.netns, local),
            Protocol::Icmp => return None,
        }
        let l = self.sockets.listeners.get(&(self.netns, local.port()))?;
        (l.addr.ip().is_unspecified() || l.addr.ip() == local.ip()).then_some(l.info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_syn_takes_the_oldest_ticket_for_its_remote_and_translates_both_ways() {
        let mut s = Sockets::default();
        let n = NetnsId(3);
        let remote = a("10.96.0.10:80");
        let p1 = s.ephemeral_port();
        let p2 = s.ephemeral_port();
        assert_ne!(p1, p2);
        let t1 = s.push_ticket(
            n,
            remote,
            SocketAddrV4::new([10, 0, 1, 2].into(), p1),
            SocketInfo::default(),
        );
        let t2 = s.push_ticket(
            n,
            remote,
            SocketAddrV4::new([10, 0, 1, 2].into(), p2),
            SocketInfo { mark: 0x539, ..SocketInfo::default() },
        );
        let (v, _) = s.place_syn((n, 49152, remote)).unwrap();
        assert_eq!(v.local.port(), p1);
        assert_eq!(s.placed(t1.id), Some(49152));
        let (v, abandoned) = s.place_syn((n, 49153, remote)).unwrap();
        assert_eq!((v.local.port(), v.info.mark, v.info.id, abandoned), (p2, 0x539, t2.id, false));
        assert!(s.place_syn((n, 49154, remote)).is_none(), "no ticket left");
        assert_eq!(s.by_view(n, v.local, remote), Some((n, 49153, remote)));
        assert_eq!(s.deliver_to(n, v.local, remote, false), Some((n, 49153, remote)));
        s.close((n, 49153, remote));
        assert_eq!(s.deliver_to(n, v.local, remote, false), None, "closed");
    }

    #[test]
    fn a_delivered_syn_names_the_accepted_socket_and_listeners_answer_lookups() {
        let mut s = Sockets::default();
        let n = NetnsId(1);
        s.listen(n, a("0.0.0.0:15001"), SocketInfo { mark: 0x539, ..SocketInfo::default() });
        let local = a("127.0.0.1:15001");
        let peer = a("10.0.1.2:32768");
        assert_eq!(s.deliver_to(n, local, peer, true), Some((n, 15001, peer)));
        assert_eq!(s.deliver_to(n, local, peer, false), Some((n, 15001, peer)));
        assert_eq!(s.deliver_to(n, a("127.0.0.1:15002"), peer, true), None, "no listener");
        assert_eq!(s.deliver_to(n, local, a("10.0.1.2:32769"), false), None, "no socket");
        assert_eq!(s.view(&(n, 15001, peer)).unwrap().local, local);
        let l = s.lookup(n);
        assert_eq!(l.listener(Protocol::Tcp, a("10.0.1.2:15001")).unwrap().mark, 0x539);
        assert!(l.listener(Protocol::Tcp, a("10.0.1.2:15002")).is_none());
        assert_eq!(l.established(Protocol::Tcp, local, peer).unwrap().mark, 0x539);
        s.cancel_ticket(n, peer, 99);
    }

    #[test]
    fn loopback_addresses_have_a_substrate_alias_and_translate_both_ways() {
        let mut s = Sockets::default();
        let n = NetnsId(2);
        let server = a("127.0.0.1:8080");
        let sub = substrate_addr(server);
        assert_eq!(sub, a("241.0.0.1:8080"));
        assert_eq!(view_addr(sub), server);
        assert_eq!(substrate_addr(a("127.9.8.7:1")), a("241.9.8.7:1"));
        assert_eq!(substrate_addr(a("10.0.1.2:80")), a("10.0.1.2:80"));
        assert_eq!(view_addr(a("10.0.1.2:80")), a("10.0.1.2:80"));
        s.listen(n, a("0.0.0.0:8080"), SocketInfo::default());
        s.push_ticket(n, sub, a("127.0.0.1:32768"), SocketInfo::default());
        let (client, _) = s.place_syn((n, 49152, sub)).unwrap();
        assert_eq!(client.local, a("127.0.0.1:32768"));
        // The SYN reaches the listener from the client's alias …
        let accepted = s.deliver_to(n, server, client.local, true).unwrap();
        assert_eq!(accepted, (n, 8080, a("241.0.0.1:32768")));
        assert_eq!(s.view(&accepted).unwrap().local, server);
        // … and the answer reaches the client's substrate socket from the server's.
        assert_eq!(s.deliver_to(n, client.local, server, false), Some((n, 49152, sub)));
        assert_eq!(s.by_view(n, server, client.local), Some(accepted));
        let l = s.lookup(n);
        assert!(l.established(Protocol::Tcp, client.local, server).is_some());
    }

    #[test]
    fn a_listener_takes_syns_to_its_address_or_any_with_the_wildcard() {
        let mut s = Sockets::default();
        let n = NetnsId(1);
        s.listen(n, a("0.0.0.0:15001"), SocketInfo::default());
        s.listen(n, a("127.0.0.1:8080"), SocketInfo::default());
        assert!(s.listening(n, a("127.0.0.1:15001")));
        assert!(s.listening(n, a("10.0.1.2:15001")));
        assert!(s.listening(n, a("127.0.0.1:8080")));
        assert!(!s.listening(n, a("10.0.1.2:8080")), "bound to loopback only");
        assert!(!s.listening(n, a("127.0.0.1:9090")));
        assert!(!s.listening(NetnsId(2), a("127.0.0.1:15001")), "another namespace");
    }
}
