//! Socket helpers for tests: a TCP connect with SO_MARK, an optional bind and a timeout; listeners,
//! IP_TRANSPARENT ones included; SO_ORIGINAL_DST of an accepted socket.
//!
//! All of them create sockets, so they run inside a namespace job (the socket lands in the
//! namespace of the creating thread) on that namespace's runtime. Options go through socket2 and
//! nix; nothing here needs `unsafe`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How to open a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// SO_MARK on the socket (needs CAP_NET_ADMIN in the namespace's owner).
    pub mark: Option<u32>,
    /// Local address to bind before connecting. Without it the socket is bound to `0.0.0.0:0`
    /// first, so its ephemeral port is known even when the connect fails.
    pub bind: Option<SocketAddrV4>,
    /// IP_TRANSPARENT (to bind a non-local source address).
    pub transparent: bool,
    /// How long the connect may take before it counts as timed out.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            mark: None,
            bind: None,
            transparent: false,
            timeout: Duration::from_secs(1),
        }
    }
}

/// Why a connect failed, classified the way a test compares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectErrorKind {
    /// ECONNREFUSED: a RST (no listener, REJECT tcp-reset) or an ICMP port unreachable.
    Refused,
    /// No answer within the timeout (SYN or SYN-ACK dropped — also a drop on the way out: the
    /// kernel then retransmits rather than failing the connect).
    TimedOut,
    /// ECONNRESET: reset after the handshake started (e.g. a RST answering the final ACK).
    Reset,
    /// EHOSTUNREACH: ICMP host unreachable / admin prohibited, or no neighbour.
    HostUnreachable,
    /// ENETUNREACH: no route, or ICMP net unreachable.
    NetUnreachable,
    /// EPERM / EACCES: dropped on the way out of this host.
    PermissionDenied,
    /// Anything else, by errno name.
    Other(String),
}

impl ConnectErrorKind {
    /// Classifies an I/O error from connect.
    pub fn of(err: &io::Error) -> ConnectErrorKind {
        match err.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ECONNREFUSED) => ConnectErrorKind::Refused,
            Some(Errno::ETIMEDOUT) => ConnectErrorKind::TimedOut,
            Some(Errno::ECONNRESET) => ConnectErrorKind::Reset,
            Some(Errno::EHOSTUNREACH) => ConnectErrorKind::HostUnreachable,
            Some(Errno::ENETUNREACH) => ConnectErrorKind::NetUnreachable,
            Some(Errno::EPERM | Errno::EACCES) => ConnectErrorKind::PermissionDenied,
            Some(errno) => ConnectErrorKind::Other(format!("{errno:?}")),
            None => ConnectErrorKind::Other(err.kind().to_string()),
        }
    }
}

/// A failed connect: what kind of failure, the local port the socket had, and the error.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The classification.
    pub kind: ConnectErrorKind,
    /// The local port bound before the connect, if binding got that far.
    pub local_port: Option<u16>,
    /// The underlying error.
    pub error: io::Error,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connect failed ({:?}): {}", self.kind, self.error)
    }
}

impl std::error::Error for ConnectFailure {}

/// Connects to `dst` from the current thread's namespace. Call from a namespace job.
pub async fn connect(
    dst: SocketAddrV4,
    opts: &ConnectOptions,
) -> Result<(TcpStream, SocketAddrV4), ConnectFailure> {
    let fail = |error: io::Error, local_port| ConnectFailure {
        kind: ConnectErrorKind::of(&error),
        local_port,
        error,
    };
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(|e| fail(e, None))?;
    socket.set_nonblocking(true).map_err(|e| fail(e, None))?;
    if let Some(mark) = opts.mark {
        socket.set_mark(mark).map_err(|e| fail(e, None))?;
    }
    if opts.transparent {
        socket.set_ip_transparent_v4(true).map_err(|e| fail(e, None))?;
    }
    let bind = opts.bind.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    socket.bind(&SocketAddr::V4(bind).into()).map_err(|e| fail(e, None))?;
    let local_port = socket.local_addr().ok().and_then(|a| a.as_socket_ipv4()).map(|a| a.port());
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let stream = match tokio::time::timeout(opts.timeout, socket.connect(SocketAddr::V4(dst))).await
    {
        Err(_) => {
            return Err(fail(io::Error::from_raw_os_error(nix::libc::ETIMEDOUT), local_port));
        }
        Ok(Err(e)) => return Err(fail(e, local_port)),
        Ok(Ok(stream)) => stream,
    };
    let local = match stream.local_addr().map_err(|e| fail(e, local_port))? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => {
            return Err(fail(io::Error::other(format!("IPv6 local address {a}")), local_port));
        }
    };
    Ok((stream, local))
}

/// How to open a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// IP_TRANSPARENT: may bind a non-local address, and `-m socket --transparent` matches it.
    pub transparent: bool,
    /// SO_MARK on the listener (inherited by accepted sockets).
    pub mark: Option<u32>,
    /// Listen backlog.
    pub backlog: i32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { transparent: false, mark: None, backlog: 128 }
    }
}

/// Opens a TCP listener on `addr` in the current thread's namespace (SO_REUSEADDR set). Call from
/// a namespace job.
pub fn listen(addr: SocketAddrV4, opts: ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    if opts.transparent {
        socket.set_ip_transparent_v4(true)?;
    }
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.listen(opts.backlog)?;
    TcpListener::from_std(socket.into())
}

/// SO_ORIGINAL_DST of a socket: the destination of the connection's original direction, as the
/// namespace's conntrack (default zone only — the kernel looks nowhere else) recorded it before
/// any DNAT/REDIRECT. Fails with ENOENT when conntrack has no such entry.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let sin = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// Makes the next close of `stream` send a RST instead of a FIN (SO_LINGER with zero timeout).
pub fn set_reset_on_close(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

/// The IPv4 address of a socket address, or an error naming it.
pub fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(io::Error::other(format!("unexpected IPv6 address {a}"))),
    }
}
