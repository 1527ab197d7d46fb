//! Simulated sockets: the proxy's socket seam ([`Network`]) and the apps' streams, on
//! turmoil-net hosts, with the kernel's view of every socket kept in the namespace's table.
//!
//! - `listen` binds a substrate listener and records the view listener (mark, transparent) that
//!   the model's socket lookups see.
//! - `accept` returns the view of the accepted socket: local = where the kernel delivered the
//!   SYN (after REDIRECT, `127.0.0.1:15001`), `original_dst` = SO_ORIGINAL_DST from the
//!   namespace's modelled conntrack (present whenever conntrack tracks the connection, as on
//!   Linux).
//! - `connect` picks the view source — the transparent address the caller bound
//!   (IP_TRANSPARENT + IP_FREEBIND), or the namespace's route source for the destination with the
//!   socket's SO_MARK (`127.0.0.1` for the loopback network) — and an ephemeral port, queues
//!   them as a ticket for the SYN, and connects the substrate socket (to the destination, or to
//!   its alias for a loopback one, see `substrate.rs`). SO_MARK becomes the packet mark the
//!   model sees. A connect to `0.0.0.0` goes to `127.0.0.1`, as on Linux.
//! - `reset` aborts: no FIN, the peer gets a RST (SO_LINGER 0).
//! - `bind_udp` gives a UDP socket ([`crate::udp`]).
//! - Errors read as the Linux kernel's (`Connection refused (os error 111)`), so proxy messages
//!   are the same on both backends.
//!
//! turmoil-net sockets carry no host: every poll, address query and drop first makes the
//! socket's host current. Every operation that can produce a segment kicks the packet loop.

use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ambient_proxy::net::{Accepted, ConnectOptions, ListenOptions, Listener, Network, UdpOptions};
use ambient_scenarios::traffic::AppStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use turmoil_net::shim::tokio::net::{TcpListener, TcpStream};

use crate::shared::Shared;
use crate::substrate::{SockKey, Ticket, substrate_addr, view_addr};
use crate::topology::{Host, NetnsId};
use crate::udp::SimDatagram;
use ambient_kernel::SocketInfo;

/// The error Linux reports for what turmoil-net reports as `kind`.
pub(crate) fn linux_error(e: io::Error) -> io::Error {
    let errno = match e.kind() {
        io::ErrorKind::ConnectionRefused => 111,
        io::ErrorKind::ConnectionReset => 104,
        io::ErrorKind::TimedOut => 110,
        io::ErrorKind::BrokenPipe => 32,
        io::ErrorKind::NotConnected => 107,
        io::ErrorKind::AddrInUse => 98,
        io::ErrorKind::AddrNotAvailable => 99,
        _ => return e,
    };
    io::Error::from_raw_os_error(errno)
}

fn unsupported(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what)
}

pub(crate) fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(unsupported(format!("{a}: the simulator is IPv4 only"))),
    }
}

/// Sockets in the simulated namespaces. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SimNetwork {
    shared: Arc<Shared>,
}

impl SimNetwork {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SimNetwork { shared }
    }

    /// The live namespace's host.
    fn host(&self, netns: NetnsId) -> io::Result<Host> {
        let f = self.shared.state();
        let slot = f
            .topo
            .slots
            .get(netns.0 as usize)
            .ok_or_else(|| io::Error::other(format!("{netns}: no such namespace")))?;
        if !slot.alive {
            return Err(io::Error::other(format!("{}: the namespace is gone", slot.label)));
        }
        slot.host
            .ok_or_else(|| io::Error::other(format!("{}: a namespace without sockets", slot.label)))
    }
}

impl Network for SimNetwork {
    type Netns = NetnsId;
    type Listener = SimListener;
    type Stream = SimStream;
    type Datagram = SimDatagram;

    async fn listen(
        &self,
        netns: &NetnsId,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> io::Result<SimListener> {
        let netns = *netns;
        let addr = v4(addr)?;
        if addr.port() == 0 {
            return Err(unsupported("the simulator binds listeners to fixed ports".into()));
        }
        let host = self.host(netns)?;
        let specific = !addr.ip().is_unspecified();
        if specific && !opts.transparent {
            let f = self.shared.state();
            if !f.topo.slot(netns).model.routing().is_local_address(*addr.ip()) {
                return Err(io::Error::from_raw_os_error(99));
            }
        }
        let bind = if specific { host.addr } else { Ipv4Addr::UNSPECIFIED };
        let at = SocketAddr::new(IpAddr::V4(bind), addr.port());
        turmoil_net::set_current(host.id);
        let mut bound = TcpListener::bind(at).await;
        // SO_REUSEADDR, which the Linux implementation sets on every listener: a port held
        // only by connections whose listener is gone (the orphans of a crashed proxy, still
        // closing) can be listened on again. turmoil-net has no such option, so those orphans
        // are aborted in place first; a peer that writes to one then gets a reset, as a
        // Linux orphan answers.
        if bound.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse) {
            let entries = turmoil_net::netstat(IpAddr::V4(host.addr)).entries;
            let on_port = entries.iter().filter(|e| e.local.port() == addr.port());
            let listening =
                on_port.clone().any(|e| e.state == Some(turmoil_net::NetstatState::Listen));
            if !listening {
                for e in on_port {
                    if let Some(SocketAddr::V4(peer)) = e.peer {
                        self.shared.queue_orphan_abort(host.addr, (netns, addr.port(), peer));
                    }
                }
                for _ in 0..16 {
                    tokio::task::yield_now().await;
                    turmoil_net::set_current(host.id);
                    bound = TcpListener::bind(at).await;
                    if bound.is_ok() {
                        break;
                    }
                }
            }
        }
        let inner = bound.map_err(linux_error)?;
        let info = SocketInfo {
            mark: opts.mark.unwrap_or(0),
            transparent: opts.transparent,
            ..SocketInfo::default()
        };
        self.shared.state().sockets.listen(netns, addr, info);
        Ok(SimListener {
            shared: self.shared.clone(),
            netns,
            host,
            local: addr,
            inner: Some(inner),
        })
    }

    async fn connect(
        &self,
        netns: &NetnsId,
        dst: SocketAddr,
        opts: &ConnectOptions,
    ) -> io::Result<SimStream> {
        self.connect_observed(netns, dst, opts, None).await
    }

    fn reset(&self, stream: SimStream) {
        stream.reset();
    }

    fn local_addr(&self, stream: &SimStream) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(stream.local))
    }

    async fn bind_udp(
        &self,
        netns: &NetnsId,
        addr: SocketAddr,
        opts: &UdpOptions,
    ) -> io::Result<SimDatagram> {
        let host = self.host(*netns)?;
        SimDatagram::bind(self.shared.clone(), host, *netns, v4(addr)?, opts).await
    }
}

/// Where [`SimNetwork::connect_observed`] records the client socket's address.
pub(crate) type SeenAddr = Arc<std::sync::Mutex<Option<SocketAddr>>>;

impl SimNetwork {
    /// [`ProxyNetwork::connect`], recording the socket's address in `seen` once its SYN has
    /// left, even if the connect then fails (a reset, an ICMP error, a timeout, or the client
    /// gives up at its deadline) — as a client
    /// on the kernel knows its address after `connect()` returned EINPROGRESS.
    pub(crate) async fn connect_observed(
        &self,
        netns: &NetnsId,
        dst: SocketAddr,
        opts: &ConnectOptions,
        seen: Option<SeenAddr>,
    ) -> io::Result<SimStream> {
        let netns = *netns;
        let mut remote = v4(dst)?;
        let host = self.host(netns)?;
        let mark = opts.mark.unwrap_or(0);
        let source = opts.source.map(v4).transpose()?;
        if remote.ip().is_unspecified() {
            // Linux (`ip_route_connect`): the destination becomes the bound source, or
            // loopback.
            let ip = source.map_or(Ipv4Addr::LOCALHOST, |s| *s.ip());
            remote = SocketAddrV4::new(ip, remote.port());
        }
        let (local, transparent) = {
            let mut f = self.shared.state();
            let (ip, port, transparent) = match source {
                Some(src) => (*src.ip(), src.port(), true),
                None => {
                    let ip = f
                        .topo
                        .slot(netns)
                        .model
                        .source_for(*remote.ip(), mark)
                        .map_err(|_| io::Error::from_raw_os_error(101))?;
                    (ip, 0, false)
                }
            };
            let port = if port == 0 { f.sockets.ephemeral_port() } else { port };
            (SocketAddrV4::new(ip, port), transparent)
        };
        let info = SocketInfo { mark, transparent, ..SocketInfo::default() };
        let sub_remote = substrate_addr(remote);
        let connecting = Connecting {
            shared: self.shared.clone(),
            host,
            netns,
            remote,
            sub_remote,
            local,
            info,
            ticket: None,
            done: false,
            seen,
            inner: Box::pin(TcpStream::connect(SocketAddr::V4(sub_remote))),
        };
        connecting.await
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// A connect in progress: queues its ticket right before the substrate emits the SYN.
struct Connecting {
    shared: Arc<Shared>,
    host: Host,
    netns: NetnsId,
    /// The destination as the kernel sees it, and as the substrate socket names it.
    remote: SocketAddrV4,
    sub_remote: SocketAddrV4,
    local: SocketAddrV4,
    info: SocketInfo,
    ticket: Option<Ticket>,
    done: bool,
    /// Told the local address once the SYN has left (see `SimNetwork::connect_observed`).
    seen: Option<SeenAddr>,
    inner: ConnectFuture,
}

impl Future for Connecting {
    type Output = io::Result<SimStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        if me.ticket.is_none() {
            let t =
                me.shared.state().sockets.push_ticket(me.netns, me.sub_remote, me.local, me.info);
            me.ticket = Some(t);
            me.shared.kick();
        }
        turmoil_net::set_current(me.host.id);
        let r = match me.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        me.done = true;
        let ticket = me.ticket.map_or(0, |t| t.id);
        let mut f = me.shared.state();
        let placed = f.sockets.placed(ticket);
        f.sockets.forget_ticket(ticket);
        if let (Some(seen), Some(_)) = (&me.seen, placed) {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(SocketAddr::V4(me.local));
        }
        Poll::Ready(match r {
            Ok(inner) => {
                drop(f);
                turmoil_net::set_current(me.host.id);
                let port = match inner.local_addr() {
                    Ok(a) => a.port(),
                    Err(e) => return Poll::Ready(Err(linux_error(e))),
                };
                let key = (me.netns, port, me.sub_remote);
                Ok(SimStream::new(me.shared.clone(), me.host, key, me.local, me.remote, inner))
            }
            Err(e) => {
                if placed.is_none() {
                    f.sockets.cancel_ticket(me.netns, me.sub_remote, ticket);
                }
                let decided =
                    placed.and_then(|p| f.sockets.error_of(&(me.netns, p, me.sub_remote)));
                Err(decided.map_or_else(|| linux_error(e), io::Error::from_raw_os_error))
            }
        })
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        // Closing a socket that is still connecting: its SYN is not retransmitted any more.
        if let (Some(t), false) = (self.ticket, self.done) {
            let mut f = self.shared.state();
            // A connect given up (the client's deadline) after its SYN left: its address was
            // known all the same, as after `connect()` returned EINPROGRESS on the kernel.
            if let (Some(seen), Some(_)) = (&self.seen, f.sockets.placed(t.id)) {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(SocketAddr::V4(self.local));
            }
            f.abandon_connect(self.netns, self.sub_remote, t.id);
        }
        turmoil_net::set_current(self.host.id);
    }
}

/// A listening socket in a simulated namespace.
#[derive(Debug)]
pub struct SimListener {
    shared: Arc<Shared>,
    netns: NetnsId,
    host: Host,
    local: SocketAddrV4,
    inner: Option<TcpListener>,
}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&mut self) -> io::Result<Accepted<SimStream>> {
        let host = self.host;
        let Some(inner) = self.inner.as_ref() else {
            return Err(io::Error::from_raw_os_error(22));
        };
        let (stream, peer) = poll_fn(|cx| {
            turmoil_net::set_current(host.id);
            inner.poll_accept(cx)
        })
        .await
        .map_err(linux_error)?;
        let sub_peer = v4(peer)?;
        let peer = view_addr(sub_peer);
        let key = (self.netns, self.local.port(), sub_peer);
        let now = self.shared.now();
        let (local, original_dst) = {
            let f = self.shared.state();
            let local = f.sockets.view(&key).map_or(self.local, |v| v.local);
            let od = f.topo.slot(self.netns).model.original_dst(local, peer, now);
            (local, od)
        };
        let stream = SimStream::new(self.shared.clone(), host, key, local, peer, stream);
        Ok(Accepted {
            stream,
            peer: SocketAddr::V4(peer),
            local: SocketAddr::V4(local),
            original_dst: original_dst.map(SocketAddr::V4),
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.shared.state().sockets.unlisten(self.netns, self.local.port());
            turmoil_net::set_current(self.host.id);
            drop(inner);
            self.shared.kick();
        }
    }
}

/// A connected TCP stream in a simulated namespace.
#[derive(Debug)]
pub struct SimStream {
    shared: Arc<Shared>,
    host: Host,
    key: SockKey,
    local: SocketAddrV4,
    peer: SocketAddrV4,
    inner: Option<TcpStream>,
}

impl SimStream {
    fn new(
        shared: Arc<Shared>,
        host: Host,
        key: SockKey,
        local: SocketAddrV4,
        peer: SocketAddrV4,
        inner: TcpStream,
    ) -> Self {
        SimStream { shared, host, key, local, peer, inner: Some(inner) }
    }

    /// The local end as the kernel sees it.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    pub fn peer(&self) -> SocketAddrV4 {
        self.peer
    }

    /// Close abortively (the packet loop sends the RST).
    pub fn reset(self) {
        let shared = self.shared.clone();
        shared.queue_reset(self);
    }

    pub(crate) fn take_for_reset(&mut self) -> Option<(Host, SockKey, TcpStream)> {
        self.inner.take().map(|s| (self.host, self.key, s))
    }

    /// A reset arrived but is held back behind unread data (the fabric delivers it once that
    /// is read): to writes the socket is already reset, as in the kernel.
    fn reset_pending(&self) -> bool {
        self.inner.is_some() && self.shared.state().reset_pending(&self.key)
    }

    fn error(&self, e: io::Error) -> io::Error {
        match self.shared.state().sockets.error_of(&self.key) {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => linux_error(e),
        }
    }

    fn poll_inner<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(io::Error::from_raw_os_error(9)));
        };
        turmoil_net::set_current(self.host.id);
        match op(Pin::new(inner), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(v)) => {
                self.shared.kick();
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.error(e))),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.poll_inner(cx, |s, cx| s.poll_read(cx, buf));
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.shared.note_read(self.host.addr, self.key);
        }
        r
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.reset_pending() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(104)));
        }
        self.poll_inner(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset_pending() {
            // ENOTCONN, which tokio's shutdown turns into Ok; no FIN after a reset.
            return Poll::Ready(Ok(()));
        }
        self.poll_inner(cx, |s, cx| s.poll_shutdown(cx))
    }
}

impl AppStream for SimStream {
    fn reset(self) {
        SimStream::reset(self);
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if self.inner.is_some() && crate::fabric::unread(self.host.addr, &self.key) > 0 {
            // Closing a socket with received data unread aborts it (tcp_close sends a RST,
            // RFC 2525 2.17), as the kernel does.
            let stream = SimStream {
                shared: self.shared.clone(),
                host: self.host,
                key: self.key,
                local: self.local,
                peer: self.peer,
                inner: self.inner.take(),
            };
            self.shared.queue_reset(stream);
            return;
        }
        if self.inner.is_some() {
            self.shared.queue_release(self.key);
            // The substrate socket closes when `inner` drops, right after this.
            turmoil_net::set_current(self.host.id);
            self.shared.kick();
        }
    }
}
