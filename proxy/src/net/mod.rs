//! The socket seam: the only way the proxy touches the network.
//!
//! The proxy is generic over one [`Network`]: listen inside a given pod's network namespace,
//! accept with the original destination (SO_ORIGINAL_DST), connect with a socket mark and an
//! optional transparent (spoofed) source, reset a stream, and bind a UDP socket ([`Datagram`],
//! for the DNS proxy on 15053 and its upstream queries). Half-close is the stream's own
//! `AsyncWrite::poll_shutdown` (a FIN). Two implementations exist: real Linux sockets
//! ([`linux::LinuxNetwork`], `cfg(target_os = "linux")`) and the simulator's (in `ambient-sim`);
//! [`memory::MemoryNetwork`] is an in-process stand-in for tests that need no OS networking.
//! Nothing else in the crate names a `tokio::net` type.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

#[cfg(target_os = "linux")]
pub mod linux;
pub mod memory;

/// Sockets for the proxy, in any network namespace.
pub trait Network: Clone + Send + Sync + 'static {
    /// Names a network namespace (a pod's; or the current one).
    type Netns: Clone + Debug + Send + Sync + 'static;
    type Listener: Listener<Stream = Self::Stream>;
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Datagram: Datagram;

    /// A TCP listener on `addr` inside `netns`.
    fn listen(
        &self,
        netns: &Self::Netns,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// A TCP connection to `dst` from inside `netns`.
    fn connect(
        &self,
        netns: &Self::Netns,
        dst: SocketAddr,
        opts: &ConnectOptions,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Close `stream` abortively (RST, linger 0): how the proxy propagates a reset.
    fn reset(&self, stream: Self::Stream);

    /// The stream's own address (getsockname): for a transparent connection, the spoofed
    /// source — the peer address the other end sees.
    fn local_addr(&self, stream: &Self::Stream) -> io::Result<SocketAddr>;

    /// A UDP socket bound to `addr` inside `netns` (port 0: an ephemeral port).
    fn bind_udp(
        &self,
        netns: &Self::Netns,
        addr: SocketAddr,
        opts: &UdpOptions,
    ) -> impl Future<Output = io::Result<Self::Datagram>> + Send;
}

/// A bound UDP socket. An implementation must give: one datagram per `recv_from` (truncated to
/// the buffer), the sender's address as the kernel delivered it, and — on a socket connected to
/// a peer ([`UdpOptions::peer`]) — datagrams from that peer only, and an ICMP error about what
/// it sent (port unreachable: ECONNREFUSED) as the error of its next `recv_from` or `send_to`.
pub trait Datagram: Send + Sync + 'static {
    fn send_to(
        &self,
        buf: &[u8],
        dst: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;

    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Options of a UDP socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpOptions {
    /// SO_MARK (the proxy's 0x539: the DNS capture rules leave its queries alone and put them
    /// in conntrack zone 1).
    pub mark: Option<u32>,
    /// connect(2) to this peer: the socket then takes datagrams from it only, and ICMP errors
    /// about it are reported (a dead upstream fails fast instead of timing out).
    pub peer: Option<SocketAddr>,
}

/// A listening socket.
pub trait Listener: Send + 'static {
    type Stream;

    fn accept(&mut self) -> impl Future<Output = io::Result<Accepted<Self::Stream>>> + Send;

    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// An accepted connection.
#[derive(Debug)]
pub struct Accepted<S> {
    pub stream: S,
    /// The remote end.
    pub peer: SocketAddr,
    /// Our end (the listener's port; the address the peer reached).
    pub local: SocketAddr,
    /// Where the peer meant to go before a REDIRECT (SO_ORIGINAL_DST); `None` if not redirected.
    pub original_dst: Option<SocketAddr>,
}

/// Options of a listening socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// SO_MARK (accepted sockets inherit it).
    pub mark: Option<u32>,
    /// IP_TRANSPARENT: accept connections to non-local addresses (TPROXY).
    pub transparent: bool,
}

/// Options of an outgoing connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// SO_MARK on the socket (the proxy's 0x539, so the capture rules leave it alone).
    pub mark: Option<u32>,
    /// Bind to this source first, transparently (IP_TRANSPARENT + IP_FREEBIND): the address may
    /// be another host's, e.g. the original client's when connecting to a local app. Port 0 = any.
    pub source: Option<SocketAddr>,
}
