//! Admission on 15008: how many connections a node proxy holds per peer address, and how many
//! are still in their TLS handshake.
//!
//! Every accepted socket costs a descriptor, and a handshake costs CPU and buffers before the
//! peer proved anything. Without bounds, ~20k bare connects exhaust the process's descriptors
//! and no valid client of any pod on the node gets in. [`Table::admit`] decides (pure); the
//! caller resets a refused socket at once, so it never holds a descriptor. Per-peer bounds are
//! below the global one, so one address cannot take every handshake slot from the others.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The bounds (from [`super::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// TLS handshakes in progress, all peers together.
    pub handshakes: usize,
    /// TLS handshakes in progress from one peer address.
    pub handshakes_per_peer: usize,
    /// Connections (handshaking or established) from one peer address.
    pub connections_per_peer: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Handshakes { limit: usize },
    PeerHandshakes { limit: usize },
    PeerConnections { limit: usize },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Handshakes { limit } => {
                write!(f, "{limit} TLS handshakes already in progress on this node: refused")
            }
            Refusal::PeerHandshakes { limit } => {
                write!(f, "{limit} TLS handshakes already in progress from this peer: refused")
            }
            Refusal::PeerConnections { limit } => {
                write!(f, "{limit} connections already open from this peer: refused")
            }
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Peer {
    handshaking: usize,
    established: usize,
}

/// Connections held on 15008, by peer address.
#[derive(Debug, Default)]
pub struct Table {
    handshaking: usize,
    peers: BTreeMap<IpAddr, Peer>,
}

impl Table {
    /// Admit a new connection from `peer` (it starts handshaking), or say why not.
    pub fn admit(&mut self, peer: IpAddr, bounds: Bounds) -> Result<(), Refusal> {
        let p = self.peers.get(&peer).copied().unwrap_or_default();
        if p.handshaking + p.established >= bounds.connections_per_peer {
            return Err(Refusal::PeerConnections { limit: bounds.connections_per_peer });
        }
        if p.handshaking >= bounds.handshakes_per_peer {
            return Err(Refusal::PeerHandshakes { limit: bounds.handshakes_per_peer });
        }
        if self.handshaking >= bounds.handshakes {
            return Err(Refusal::Handshakes { limit: bounds.handshakes });
        }
        self.handshaking += 1;
        self.peers.entry(peer).or_default().handshaking += 1;
        Ok(())
    }

    /// A connection of `peer` finished its handshake.
    pub fn established(&mut self, peer: IpAddr) {
        if let Some(p) = self.peers.get_mut(&peer)
            && p.handshaking > 0
        {
            p.handshaking -= 1;
            p.established += 1;
            self.handshaking -= 1;
        }
    }

    /// A connection of `peer` ended (`established`: after its handshake).
    pub fn release(&mut self, peer: IpAddr, established: bool) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if established {
            p.established = p.established.saturating_sub(1);
        } else if p.handshaking > 0 {
            p.handshaking -= 1;
            self.handshaking -= 1;
        }
        if *p == Peer::default() {
            self.peers.remove(&peer);
        }
    }

    /// (handshakes in progress, peers with a connection).
    pub fn load(&self) -> (usize, usize) {
        (self.handshaking, self.peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds { handshakes: 4, handshakes_per_peer: 2, connections_per_peer: 3 };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_peer_cannot_take_every_handshake_slot() {
        let mut t = Table::default();
        assert_eq!(t.admit(ip(1), B), Ok(()));
        assert_eq!(t.admit(ip(1), B), Ok(()));
        assert_eq!(t.admit(ip(1), B), Err(Refusal::PeerHandshakes { limit: 2 }));
        // Others still get in, up to the global bound.
        assert_eq!(t.admit(ip(2), B), Ok(()));
        assert_eq!(t.admit(ip(3), B), Ok(()));
        assert_eq!(t.admit(ip(4), B), Err(Refusal::Handshakes { limit: 4 }));
        t.release(ip(3), false);
        assert_eq!(t.admit(ip(4), B), Ok(()));
    }

    #[test]
    fn established_connections_count_against_the_peer_not_the_handshakes() {
        let mut t = Table::default();
        for _ in 0..2 {
            t.admit(ip(1), B).unwrap();
            t.established(ip(1));
        }
        assert_eq!(t.load(), (0, 1));
        t.admit(ip(1), B).unwrap();
        assert_eq!(t.admit(ip(1), B), Err(Refusal::PeerConnections { limit: 3 }));
        t.release(ip(1), true);
        assert_eq!(t.admit(ip(1), B), Ok(()));
    }

    #[test]
    fn releasing_everything_forgets_the_peer() {
        let mut t = Table::default();
        t.admit(ip(1), B).unwrap();
        t.admit(ip(1), B).unwrap();
        t.established(ip(1));
        t.release(ip(1), true);
        t.release(ip(1), false);
        assert_eq!(t.load(), (0, 0));
        // A stray release changes nothing.
        t.release(ip(1), true);
        assert_eq!(t.load(), (0, 0));
    }
}
