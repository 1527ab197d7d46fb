//! UDP in the simulator: the proxy's [`Datagram`] seam (and the apps' DNS sockets) on
//! turmoil-net's UDP sockets, with the kernel's view of every bound socket in a per-namespace
//! table the packet loop reads.
//!
//! A UDP socket is one turmoil-net UDP socket on its namespace's host, bound to the host's
//! private address (or its wildcard) on the *view* port: one host per namespace means one UDP
//! port space per namespace, so the substrate port is the port the kernel sees, and ephemeral
//! ports come from the run's one counter (`Sockets::ephemeral_port`). The table says what the
//! kernel knows of each socket: the address it is bound to (`127.0.0.1:15053` for the DNS
//! proxy), its SO_MARK, the peer a connected socket takes datagrams from, and an error an ICMP
//! message left for its owner.
//!
//! - A datagram a socket sends leaves from its bound address, or — bound to the wildcard —
//!   from the source the namespace's routing picks for the destination with the socket's mark
//!   (`fabric::udp`), as `udp_sendmsg` does per datagram.
//! - A datagram the kernel delivers goes to the socket bound to its destination port and
//!   address (or the wildcard), unless that socket is connected to another peer; none takes
//!   it: the kernel answers ICMP port unreachable (`__udp4_lib_rcv`).
//! - An ICMP error about a datagram a *connected* socket sent becomes that socket's pending
//!   error (ECONNREFUSED for port unreachable), reported by its next receive or send and then
//!   cleared (`sk_err`); unconnected sockets ignore ICMP errors (no IP_RECVERR), as on Linux.
//!
//! Stated simplifications: one socket per port and namespace (no SO_REUSEADDR/SO_REUSEPORT
//! sharing, no two sockets on one port with different addresses), IPv4 only, no fragments
//! (turmoil-net refuses a datagram above its MTU with EMSGSIZE), no broadcast.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::task::{Poll, Waker};

use ambient_proxy::net::{Datagram, UdpOptions};
use turmoil_net::shim::tokio::net::UdpSocket;

use crate::net::{linux_error, v4};
use crate::shared::Shared;
use crate::substrate::{substrate_addr, view_addr};
use crate::topology::{Host, NetnsId};
use ambient_kernel::SocketInfo;

/// Errnos of the UDP path.
pub mod errno {
    pub const EBADF: i32 = 9;
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
}

/// The kernel's view of one bound UDP socket.
#[derive(Debug, Clone)]
pub struct UdpView {
    /// The bound address (`0.0.0.0` for the wildcard).
    pub bound: SocketAddrV4,
    pub info: SocketInfo,
    /// The peer of a connected socket.
    pub peer: Option<SocketAddrV4>,
    /// An error an ICMP message left (errno), reported once.
    error: Option<i32>,
    /// The task waiting in `recv_from`, to wake when an error arrives.
    waker: Option<Waker>,
}

/// Every namespace's bound UDP sockets, by (namespace, port).
#[derive(Debug, Default)]
pub struct UdpSockets {
    by_port: BTreeMap<(NetnsId, u16), UdpView>,
}

impl UdpSockets {
    /// Records a socket bound to `bound` (a port already chosen); EADDRINUSE if the port is
    /// taken in that namespace.
    pub fn bind(
        &mut self,
        netns: NetnsId,
        bound: SocketAddrV4,
        info: SocketInfo,
        peer: Option<SocketAddrV4>,
    ) -> Result<(), i32> {
        let key = (netns, bound.port());
        if self.by_port.contains_key(&key) {
            return Err(errno::EADDRINUSE);
        }
        let info = SocketInfo { wildcard: bound.ip().is_unspecified(), ..info };
        self.by_port.insert(key, UdpView { bound, info, peer, error: None, waker: None });
        Ok(())
    }

    pub fn unbind(&mut self, netns: NetnsId, port: u16) {
        self.by_port.remove(&(netns, port));
    }

    pub fn is_bound(&self, netns: NetnsId, port: u16) -> bool {
        self.by_port.contains_key(&(netns, port))
    }

    pub fn view(&self, netns: NetnsId, port: u16) -> Option<&UdpView> {
        self.by_port.get(&(netns, port))
    }

    /// The socket a datagram to `local` from `remote` goes to: its port's socket, bound to
    /// `local`'s address or the wildcard, and — when connected — to `remote`.
    pub fn deliver_to(
        &self,
        netns: NetnsId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<&UdpView> {
        self.by_port.get(&(netns, local.port())).filter(|v| {
            (v.bound.ip().is_unspecified() || v.bound.ip() == local.ip())
                && v.peer.is_none_or(|p| p == remote)
        })
    }

    /// An ICMP error about a datagram `local` sent to `remote`: the connected socket that sent
    /// it gets `errno` as its pending error. `None` when no such socket exists; otherwise the
    /// waker of its owner, if it waits.
    pub fn icmp_error(
        &mut self,
        netns: NetnsId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
        errno: i32,
    ) -> Option<Option<Waker>> {
        let v = self.by_port.get_mut(&(netns, local.port()))?;
        let bound_ok = v.bound.ip().is_unspecified() || v.bound.ip() == local.ip();
        if !bound_ok || v.peer != Some(remote) {
            return None;
        }
        v.error = Some(errno);
        Some(v.waker.take())
    }

    /// Takes the socket's pending error; otherwise remembers `waker` to be woken by one.
    fn take_error(&mut self, netns: NetnsId, port: u16, waker: Option<&Waker>) -> Option<i32> {
        let v = self.by_port.get_mut(&(netns, port))?;
        if let Some(e) = v.error.take() {
            return Some(e);
        }
        if let Some(w) = waker {
            v.waker = Some(w.clone());
        }
        None
    }

    /// The lookups of `-m socket` and TPROXY for UDP in one namespace.
    pub(crate) fn established(
        &self,
        netns: NetnsId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SocketInfo> {
        let v = self.by_port.get(&(netns, local.port()))?;
        (v.peer == Some(remote) && (v.bound.ip() == local.ip() || v.bound.ip().is_unspecified()))
            .then_some(v.info)
    }

    pub(crate) fn listener(&self, netns: NetnsId, local: SocketAddrV4) -> Option<SocketInfo> {
        let v = self.by_port.get(&(netns, local.port()))?;
        (v.peer.is_none() && (v.bound.ip() == local.ip() || v.bound.ip().is_unspecified()))
            .then_some(v.info)
    }
}

/// A bound UDP socket in a simulated namespace.
#[derive(Debug)]
pub struct SimDatagram {
    shared: Arc<Shared>,
    host: Host,
    netns: NetnsId,
    /// The bound address as the kernel sees it.
    bound: SocketAddrV4,
    mark: u32,
    inner: Option<UdpSocket>,
}

impl SimDatagram {
    /// Binds a UDP socket in `netns` (see the module docs).
    pub(crate) async fn bind(
        shared: Arc<Shared>,
        host: Host,
        netns: NetnsId,
        addr: SocketAddrV4,
        opts: &UdpOptions,
    ) -> io::Result<SimDatagram> {
        let peer = opts.peer.map(v4).transpose()?;
        let mark = opts.mark.unwrap_or(0);
        let info = SocketInfo { mark, ..SocketInfo::default() };
        let bound = {
            let mut f = shared.state();
            let ip = *addr.ip();
            if !ip.is_unspecified() && !f.topo.slot(netns).model.routing().is_local_address(ip) {
                return Err(io::Error::from_raw_os_error(errno::EADDRNOTAVAIL));
            }
            let port = match addr.port() {
                0 => loop {
                    let p = f.sockets.ephemeral_port();
                    if !f.sockets.udp.is_bound(netns, p) {
                        break p;
                    }
                },
                p => p,
            };
            let bound = SocketAddrV4::new(ip, port);
            f.sockets.udp.bind(netns, bound, info, peer).map_err(io::Error::from_raw_os_error)?;
            bound
        };
        let bind_ip = if bound.ip().is_unspecified() { Ipv4Addr::UNSPECIFIED } else { host.addr };
        turmoil_net::set_current(host.id);
        match UdpSocket::bind(SocketAddr::new(IpAddr::V4(bind_ip), bound.port())).await {
            Ok(inner) => Ok(SimDatagram { shared, host, netns, bound, mark, inner: Some(inner) }),
            Err(e) => {
                shared.state().sockets.udp.unbind(netns, bound.port());
                Err(linux_error(e))
            }
        }
    }

    fn pending_error(&self, waker: Option<&Waker>) -> Option<io::Error> {
        let mut f = self.shared.state();
        f.sockets
            .udp
            .take_error(self.netns, self.bound.port(), waker)
            .map(io::Error::from_raw_os_error)
    }
}

impl Datagram for SimDatagram {
    async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let Some(inner) = self.inner.as_ref() else {
            return Err(io::Error::from_raw_os_error(errno::EBADF));
        };
        let mut dst = v4(dst)?;
        if dst.ip().is_unspecified() {
            dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, dst.port());
        }
        if let Some(e) = self.pending_error(None) {
            return Err(e);
        }
        if self.bound.ip().is_unspecified() {
            // The route is looked up per datagram; none: ENETUNREACH now, as udp_sendmsg says.
            let f = self.shared.state();
            f.topo
                .slot(self.netns)
                .model
                .source_for(*dst.ip(), self.mark)
                .map_err(|_| io::Error::from_raw_os_error(errno::ENETUNREACH))?;
        }
        turmoil_net::set_current(self.host.id);
        let n =
            inner.send_to(buf, SocketAddr::V4(substrate_addr(dst))).await.map_err(linux_error)?;
        self.shared.kick();
        Ok(n)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let Some(inner) = self.inner.as_ref() else {
            return Err(io::Error::from_raw_os_error(errno::EBADF));
        };
        let host = self.host.id;
        turmoil_net::set_current(host);
        let mut recv = std::pin::pin!(inner.recv_from(buf));
        let (n, from) = poll_fn(|cx| {
            if let Some(e) = self.pending_error(Some(cx.waker())) {
                return Poll::Ready(Err(e));
            }
            turmoil_net::set_current(host);
            recv.as_mut().poll(cx).map_err(linux_error)
        })
        .await?;
        let from = match from {
            SocketAddr::V4(a) => SocketAddr::V4(view_addr(a)),
            other => other,
        };
        Ok((n, from))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.bound))
    }
}

impl Drop for SimDatagram {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            self.shared.state().sockets.udp.unbind(self.netns, self.bound.port());
            turmoil_net::set_current(self.host.id);
            drop(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_datagram_goes_to_its_ports_socket_by_address_and_peer() {
        let mut t = UdpSockets::default();
        let n = NetnsId(1);
        t.bind(n, a("127.0.0.1:15053"), SocketInfo::default(), None).unwrap();
        t.bind(n, a("0.0.0.0:40000"), SocketInfo::default(), Some(a("203.0.113.53:53"))).unwrap();
        assert_eq!(t.bind(n, a("0.0.0.0:15053"), SocketInfo::default(), None), Err(98));
        assert!(t.bind(NetnsId(2), a("0.0.0.0:15053"), SocketInfo::default(), None).is_ok());
        let client = a("10.0.1.5:33333");
        assert!(t.deliver_to(n, a("127.0.0.1:15053"), client).is_some());
        assert!(t.deliver_to(n, a("10.0.1.5:15053"), client).is_none(), "bound to loopback");
        assert!(t.deliver_to(n, a("10.0.1.5:40000"), a("203.0.113.53:53")).is_some());
        assert!(t.deliver_to(n, a("10.0.1.5:40000"), a("203.0.113.54:53")).is_none(), "peer");
        assert!(t.deliver_to(n, a("10.0.1.5:40001"), client).is_none(), "no socket");
        t.unbind(n, 15053);
        assert!(t.deliver_to(n, a("127.0.0.1:15053"), client).is_none());
    }

    #[test]
    fn icmp_errors_reach_connected_sockets_once() {
        let mut t = UdpSockets::default();
        let n = NetnsId(1);
        let upstream = a("203.0.113.53:53");
        t.bind(n, a("0.0.0.0:40000"), SocketInfo::default(), Some(upstream)).unwrap();
        t.bind(n, a("0.0.0.0:40001"), SocketInfo::default(), None).unwrap();
        let waker = Waker::noop().clone();
        assert_eq!(t.take_error(n, 40000, Some(&waker)), None);
        let woken = t.icmp_error(n, a("10.0.1.5:40000"), upstream, 111);
        assert!(woken.is_some_and(|w| w.is_some()), "a waiting owner");
        assert!(t.icmp_error(n, a("10.0.1.5:40001"), upstream, 111).is_none(), "unconnected");
        assert_eq!(t.take_error(n, 40001, None), None);
        assert_eq!(t.take_error(n, 40000, None), Some(111));
        assert_eq!(t.take_error(n, 40000, None), None, "reported once");
        assert!(t.icmp_error(n, a("10.0.1.5:40000"), a("203.0.113.54:53"), 111).is_none());
    }

    #[test]
    fn socket_lookups_see_bound_and_connected_sockets() {
        let mut t = UdpSockets::default();
        let n = NetnsId(1);
        let info = SocketInfo { mark: 0x539, ..SocketInfo::default() };
        t.bind(n, a("127.0.0.1:15053"), info, None).unwrap();
        t.bind(n, a("0.0.0.0:40000"), info, Some(a("203.0.113.53:53"))).unwrap();
        assert_eq!(t.listener(n, a("127.0.0.1:15053")).map(|i| i.mark), Some(0x539));
        assert!(t.listener(n, a("10.0.1.5:15053")).is_none());
        assert!(t.listener(n, a("10.0.1.5:40000")).is_none(), "connected");
        let e = t.established(n, a("10.0.1.5:40000"), a("203.0.113.53:53")).unwrap();
        assert!(e.wildcard);
    }
}
