//! What the model needs to know about local sockets, supplied by the caller.
//!
//! The model has no sockets of its own. `-m socket` and TPROXY ask the caller, through
//! [`SocketLookup`], whether a local socket would take a packet; `-m owner --socket-exists`
//! looks at the sending socket the caller passes with a locally generated packet.
//!
//! Packets the kernel makes itself are not all socketless (checked on kernel 6.18): the TCP
//! stack's resets for closed ports and every ICMP error (REJECT's included) leave through the
//! kernel's per-namespace control sockets, so `--socket-exists` matches them — pass
//! [`SocketInfo::kernel`]. Only REJECT's TCP reset has no socket at all (`None`). What a
//! connection not yet `accept()`ed sends has a socket without a `struct socket`
//! ([`SocketInfo::orphan`]), which `--socket-exists` does not match either.

use std::net::SocketAddrV4;

use serde::Serialize;

use super::packet::Protocol;

/// The properties of a local socket netfilter looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct SocketInfo {
    /// The caller's handle; returned when TPROXY assigns this socket to a packet.
    pub id: u64,
    /// IP_TRANSPARENT is set.
    pub transparent: bool,
    /// Bound to 0.0.0.0 (`-m socket` ignores such sockets unless `--nowildcard`).
    pub wildcard: bool,
    /// SO_MARK.
    pub mark: u32,
    /// A TCP socket in TIME_WAIT (not a full socket).
    pub time_wait: bool,
    /// A full socket with no `struct socket` (`sk_socket` is NULL): a connection still in its
    /// listener's accept queue (`sock_graft` attaches one at `accept()`). `-m owner` sees no
    /// socket in what it sends (xt_owner tests `sk->sk_socket`; kernel 6.18, differential suite
    /// seeds 10491 and 10815).
    pub orphan: bool,
}

impl SocketInfo {
    /// The kernel's control socket (TCP resets for closed ports, ICMP errors).
    pub fn kernel() -> Self {
        SocketInfo { id: u64::MAX, ..SocketInfo::default() }
    }

    /// Whether this is [`SocketInfo::kernel`].
    pub fn is_kernel(&self) -> bool {
        self.id == u64::MAX
    }
}

/// Socket lookups the way the kernel's early demux does them.
pub trait SocketLookup {
    /// A connected socket whose local and remote ends are these.
    fn established(
        &self,
        proto: Protocol,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SocketInfo>;
    /// A listening (TCP) or bound (UDP) socket that would accept a packet to `local`: a socket
    /// bound to exactly that address first, then one bound to 0.0.0.0 on the port.
    fn listener(&self, proto: Protocol, local: SocketAddrV4) -> Option<SocketInfo>;
}

/// No local sockets at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSockets;

impl SocketLookup for NoSockets {
    fn established(&self, _: Protocol, _: SocketAddrV4, _: SocketAddrV4) -> Option<SocketInfo> {
        None
    }

    fn listener(&self, _: Protocol, _: SocketAddrV4) -> Option<SocketInfo> {
        None
    }
}

/// A fixed set of listening sockets (for the CLI and tests); no connected sockets.
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    entries: Vec<(Protocol, SocketAddrV4, SocketInfo)>,
}

impl Listeners {
    /// Adds a listener on `addr` (0.0.0.0 makes it a wildcard listener).
    pub fn add(&mut self, proto: Protocol, addr: SocketAddrV4, mut info: SocketInfo) {
        info.wildcard = addr.ip().is_unspecified();
        self.entries.push((proto, addr, info));
    }
}

impl SocketLookup for Listeners {
    fn established(&self, _: Protocol, _: SocketAddrV4, _: SocketAddrV4) -> Option<SocketInfo> {
        None
    }

    fn listener(&self, proto: Protocol, local: SocketAddrV4) -> Option<SocketInfo> {
        let hit = |exact: bool| {
            self.entries.iter().find(|(p, a, _)| {
                *p == proto
                    && a.port() == local.port()
                    && if exact { a.ip() == local.ip() } else { a.ip().is_unspecified() }
            })
        };
        hit(true).or_else(|| hit(false)).map(|(_, _, i)| *i)
    }
}
