//! The reference oracle: from a scenario alone (topology, capture, services and endpoints,
//! policies, faults), what each connection's `outcome` and `path` must be — written from
//! `ambient-facts.md` and the scenario format, independently of the proxy and the simulator
//! (it never calls their code; its RBAC is [`rbac`]).
//!
//! # What it predicts, per connection
//!
//! A set of [`Alt`]ernatives, one per place the connection may be routed to (a Service's
//! endpoints; otherwise one). The run's route event names the endpoint the proxy chose, which
//! must be one of them, and picks the alternative to check. Each has the outcomes and paths
//! allowed, whether the server app must have accepted (`server_peer`) and whether a destination
//! proxy must have authenticated the client (`server_identity`), the tunnel, and the bytes an
//! `ok` reads back.
//!
//! The `path` of a connection no proxy routed ([`unrouted_path`]): `direct` whenever the
//! client's SYN was sent, even if a RST or an ICMP error or a partition ended it; no path only
//! when nothing left the client (the kernel refused the connect at once, or the client's own
//! proxy refused it on 15001 before routing it).
//!
//! A pod calling its own address: over `lo`, which the in-pod rules accept, so `direct` (also
//! when nothing listens: `refused`).
//!
//! Captured client on node *n* (its proxy redirects 15001):
//! - *n*'s proxy down → `refused`, `direct` (REDIRECTed to 15001, where nothing listens).
//! - Service with no endpoint now → `refused`, no path (the proxy refuses before routing).
//! - captured destination pod on node *m* → `hbone`, tunnel *n*→*m*: link partitioned →
//!   `timeout` (a deadline under the proxy's 10 s connect timeout; else any of `timeout`,
//!   `refused`, `reset`); *m*'s proxy down → `refused`; RBAC (with the client's identity)
//!   denies → `denied`; no app on the port → `refused` (503); else the app's outcome.
//! - uncaptured pod or external host → `passthrough`: partitioned → `timeout`; no app →
//!   `refused`; else the app's outcome.
//!
//! Uncaptured client (pod or external host):
//! - captured pod → `inbound-plaintext`: partitioned → `timeout`, `direct`; the pod's proxy
//!   down → `refused`, `direct` (nothing listens on 15006); RBAC without identity denies (STRICT, principals…) → `denied`; no
//!   app → `refused`; else the app's outcome.
//! - uncaptured pod or host → `direct`: partitioned → `timeout`, no app → `refused`; else the
//!   app's outcome.
//!
//! Apps: `echo`, `sink`, `close` → `ok` (echo reads back what it sent, the others nothing);
//! `reset` → `reset`.
//!
//! # Where it says "any of" (every case, and why)
//!
//! - **After a partition shorter than keepalive can notice** (< 40 s), and after a proxy
//!   crash or restart while a link to its node was partitioned or lossy: a pooled tunnel may be
//!   dead without the pool knowing until keepalive (10 s + 20 s) or the first write finds out.
//!   HBONE connections over that link, until 90 s after the heal, may also end `timeout`,
//!   `reset` or `refused`.
//! - **A pod deleted and its address reused** within 60 s: a tunnel to the old pod's 15008 may
//!   still be pooled; HBONE to that address may also end `timeout`, `reset` or `refused`.
//! - **Background connections** hit by a later change while they hold (policy change that now
//!   denies → `denied`; a proxy on the path crashes → `reset`, or `error` for a close that
//!   cut the bytes short (the kernel closes a dead process's sockets with a FIN); a partition
//!   on its link → any of `ok`, `timeout`, `reset`; its client's or server's pod deleted →
//!   `reset`, `timeout`, or `error` for a close that cut the bytes short (the pod's app
//!   processes die, and the kernel closes their sockets with a FIN; a captured server's
//!   proxy also revokes it: `denied`); its conntrack flushed →
//!   any of `ok`, `reset`, `timeout`). Whether the change lands while it holds is decided from
//!   the simulated time the steps take, which the oracle bounds (an interval, see
//!   `timeline.rs`); where the bounds overlap the hold's end, the union.
//! - **Changes racing a live connection's start**: a proxy on its path stopping while it may
//!   still be connecting (a captured client's socket to its own proxy is open while that proxy
//!   dials) → also `refused`, `reset`, `error` (truncation allowed), accept and authentication
//!   unknown; a policy change that lands before the connection is certainly authorized → the
//!   old or the new verdict; deleting the client's own pod → also `error` (its sockets close).
//! - **The client's own proxy stopping while an HBONE connection may wait for its tunnel**
//!   (within the dial's time after the start: the proxy's 10 s connect timeout across a
//!   partition): the proxy logs an HBONE route only once it has a tunnel, so there may be no
//!   route event — an extra unrouted alternative, `direct` (the client reached 15001), no app
//!   reached, `error` with a cut reply or `reset` or `refused`, and `ok` only where nothing
//!   was to come back.
//! - **A heal while a proxy may still be dialing across the partition** (within its 10 s
//!   connect timeout of the start, HBONE or passthrough): the dial completes after the client
//!   gave up and the proxy forwards what it had read — the app may accept and a destination
//!   proxy authenticates the client behind a client that saw `timeout`; if the policies then
//!   in force deny it, `denied` (a policy decision explains everything, `assemble.rs`).
//! - **A connection that may join an earlier dial of its tunnel pending across a partition**
//!   (the pool dials once per key) fails with it at its 10 s connect timeout, before its own
//!   deadline: also `refused` or `reset` — and then no repetition of its step certainly takes
//!   its deadline, so the next step (a heal) may come that much earlier.
//! - **A heal while a background connection across the link may still be connecting** (within
//!   its deadline): it is predicted afresh at the heal and that joins, per endpoint.
//! - **A captured client's passthrough across a partition** with deadline + hold ≥ 10 s: the
//!   proxy's dial gives up first, also `refused` or `reset` (as for HBONE).
//! - **A RST across a lossy link**: where the connection's own TCP crosses a lossy link
//!   outside a tunnel (inbound plaintext and direct calls across nodes, a passthrough proxy's
//!   upstream) and it ends with a RST sent after the handshake (a `reset` app; a proxy that
//!   accepted it, then refuses or denies it), also `timeout`: a lost RST is not retransmitted,
//!   and a client whose bytes and FIN were acknowledged waits for its deadline. A refusal by
//!   a RST to the SYN is not widened (the SYN is retransmitted). A loss that starts while such
//!   a connection to a `reset` app holds widens it the same way.
//! - **Repetitions of a background step** (`count: k`) are not timed individually: once its
//!   client pod is deleted, the later ones are reported unchecked ("unmodelled", with the
//!   reason); once its client's proxy stops, a later one may also be refused with no route.
//! - **Proxy fault points** that fired (their events say `injected fault`): a failed dial →
//!   `refused`; a reset stream → `reset`, or `refused` when h2 hands the source proxy the reset before the 200.
//!
//! What it does not model (the connection is reported unchecked): targets written as `ip:port`
//! that no pod or host owns, the proxies' own ports, clients outside the mesh calling a
//! Service VIP, an external host calling another.

pub mod rbac;
mod timeline;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use ambient_scenarios::outcome::{ConnOutcome, PathKind};
use ambient_scenarios::values::NodePair;

pub use timeline::predict;

/// Must, must not, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    Must,
    MustNot,
    Either,
}

impl Tri {
    pub fn join(self, other: Tri) -> Tri {
        if self == other { self } else { Tri::Either }
    }

    pub fn allows(self, present: bool) -> bool {
        match self {
            Tri::Must => present,
            Tri::MustNot => !present,
            Tri::Either => true,
        }
    }
}

/// What one alternative allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub outcomes: BTreeSet<ConnOutcome>,
    /// `None` inside: no path (the connection never left the client).
    pub paths: BTreeSet<Option<PathKind>>,
    /// The server app accepted it (`server_peer` is set).
    pub accepted: Tri,
    /// A destination proxy authenticated the client (`server_identity` is set).
    pub identity: Tri,
    /// For `hbone`: the tunnel it must ride.
    pub tunnel: Option<NodePair>,
    /// Bytes an `ok` may read back: one value per app it may meet (an address reused by a pod
    /// serving another app gives two). Empty: an `ok` reads nothing back.
    pub replies: BTreeSet<u64>,
    /// A clean close that cuts the bytes short is allowed (then the outcome is `error`): a
    /// proxy on its path crashed while it was open, and the kernel closes a dead process's
    /// sockets with a FIN, which the app cannot tell from the server's own close.
    pub truncation: bool,
    /// Its proxy's dial may complete after the client gave up (a heal while it was dialing):
    /// what a fault point does to the stream then comes after the client's own outcome.
    pub late_dial: bool,
    /// Why the sets hold more than one value.
    pub notes: Vec<String>,
}

impl Expect {
    fn one(outcome: ConnOutcome, path: Option<PathKind>, accepted: Tri, identity: Tri) -> Self {
        Expect {
            outcomes: [outcome].into(),
            paths: [path].into(),
            accepted,
            identity,
            tunnel: None,
            replies: BTreeSet::new(),
            truncation: false,
            late_dial: false,
            notes: Vec::new(),
        }
    }

    /// What an `ok` may read back (nothing, when no app's reply is known).
    pub fn ok_replies(&self) -> BTreeSet<u64> {
        if self.replies.is_empty() { [0].into() } else { self.replies.clone() }
    }

    /// Exactly one outcome and one path.
    pub fn is_exact(&self) -> bool {
        self.outcomes.len() == 1
            && self.paths.len() == 1
            && self.accepted != Tri::Either
            && self.identity != Tri::Either
    }

    /// The connection's own TCP crosses a lossy link outside any tunnel, and `ends_by_rst`:
    /// it ends with a RST its client's peer sends after the handshake (an app's reset, or a
    /// proxy that accepted it and then refuses or denies it). A RST is never retransmitted:
    /// lost, it leaves a client whose bytes and FIN were all acknowledged waiting for its
    /// deadline, so also `timeout` (nothing else changes: who was reached stays as it was).
    pub(crate) fn allow_lost_rst(&mut self, link: &(String, String)) {
        use ConnOutcome::{Denied, Refused, Reset, Timeout};
        if self.outcomes.iter().any(|o| matches!(o, Refused | Denied | Reset)) {
            self.outcomes.insert(Timeout);
            self.notes.push(format!(
                "its ending RST may be lost on the lossy link {}<->{}",
                link.0, link.1
            ));
        }
    }

    /// Also allow `outcomes`, for `why`; the app may or may not have been reached.
    pub(crate) fn widen(&mut self, outcomes: &[ConnOutcome], why: String) {
        self.outcomes.extend(outcomes.iter().copied());
        self.accepted = self.accepted.join(Tri::MustNot).join(Tri::Must);
        self.identity = self.identity.join(Tri::MustNot).join(Tri::Must);
        self.notes.push(why);
    }
}

/// How a connection that no proxy routed (no route event) ended, as far as its `path` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// The kernel refused the connect at once (no route): no packet was sent.
    NoRoute,
    /// The client's own proxy took it in on 15001 and refused it before routing (a Service
    /// with no endpoint): it never left the client.
    RefusedByOwnProxy,
    /// The client's SYN was sent, whatever came of it: answered by the app, refused by a RST
    /// (a closed port, or REDIRECTed to a 15001/15006 where no proxy listens), failed by an
    /// ICMP error, or lost in a partition.
    SynLeft,
}

/// The `path` of a connection no proxy routed: `direct` once the client's SYN left, none
/// when nothing left the client.
pub fn unrouted_path(how: Unrouted) -> Option<PathKind> {
    match how {
        Unrouted::NoRoute | Unrouted::RefusedByOwnProxy => None,
        Unrouted::SynLeft => Some(PathKind::Direct),
    }
}

/// One place a connection may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alt {
    /// The endpoint the source proxy's route event names (`None`: no route event).
    pub endpoint: Option<SocketAddrV4>,
    pub expect: Expect,
}

/// The oracle's word on one connection of the Outcome (same order).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: String,
    pub client_ip: std::net::Ipv4Addr,
    /// The client's SPIFFE identity, when it is a captured pod.
    pub client_identity: Option<String>,
    /// Bytes the client sends.
    pub send: u64,
    /// Client and every possible destination are captured pods on different nodes: no byte
    /// of its payload may cross the underlay in clear.
    pub encrypted_between_nodes: bool,
    pub alternatives: Vec<Alt>,
    /// Set when the oracle does not model the connection (then nothing is checked).
    pub unmodelled: Option<String>,
}

impl Prediction {
    /// The alternatives whose endpoint is `endpoint`.
    pub fn for_endpoint(&self, endpoint: Option<SocketAddrV4>) -> Option<&Expect> {
        self.alternatives.iter().find(|a| a.endpoint == endpoint).map(|a| &a.expect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrouted_path_is_direct_once_the_syn_left() {
        assert_eq!(unrouted_path(Unrouted::SynLeft), Some(PathKind::Direct));
        assert_eq!(unrouted_path(Unrouted::NoRoute), None);
        assert_eq!(unrouted_path(Unrouted::RefusedByOwnProxy), None);
    }
}
