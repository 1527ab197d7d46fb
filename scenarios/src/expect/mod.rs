//! Expectations — what a scenario says the [`Outcome`](crate::outcome::Outcome) must show — and
//! the [`check`] that compares them, a pure function both backends use.
//!
//! Expectations come from three places, all the same shape: a `connect` step's `expect`, a `check`
//! step (any expect block, checked at that point), and the top-level `expect` (checked at the
//! end). A `resolve` step's `expect` is about its lookup ([`resolve`]). Every expectation remembers where it was written ([`At`]), so a failure names its file
//! position and key path.

pub mod check;
pub mod resolve;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::diag::{At, Located};
use crate::outcome::{ConnOutcome, PathKind, Proto, TcpState};
use crate::values::{NodePair, RuleRef, TuplePattern};

pub use check::{Failure, check_connections, check_outcome, check_state};
pub use resolve::{ResolveExpect, ResolveField};

/// One expect block, with references resolved: pods and hosts are named by their canonical
/// label (`client.default`, `web`), as the Outcome names them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    pub at: At,
    /// By connect id; applies to every repetition of that step.
    pub connections: BTreeMap<String, ConnExpect>,
    /// h2 connections opened per node pair so far. Pairs not listed are not checked.
    pub tunnels: BTreeMap<NodePair, Located<u64>>,
    /// A pod's or host's whole conntrack table, in any order (`[]` = empty).
    pub conntrack: BTreeMap<String, Located<Vec<CtPattern>>>,
    /// Packets that matched a rule; rules not listed are not checked.
    pub counters: BTreeMap<String, BTreeMap<RuleRef, Located<u64>>>,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
            && self.tunnels.is_empty()
            && self.conntrack.is_empty()
            && self.counters.is_empty()
    }
}

/// What one connection (every repetition of a connect step) must look like.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnExpect {
    pub at: At,
    pub fields: Vec<Located<ConnField>>,
}

/// One checked field of a connection; `None` values mean "must be null".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnField {
    Outcome(ConnOutcome),
    Path(Option<PathKind>),
    Sent(u64),
    Received(u64),
    Intact(bool),
    ServerPeer(Option<Ipv4Addr>),
    ServerIdentity(Option<String>),
    Tunnel(Option<NodePair>),
    Reused(bool),
}

impl ConnField {
    /// The Outcome field it checks.
    pub fn key(&self) -> &'static str {
        match self {
            ConnField::Outcome(_) => "outcome",
            ConnField::Path(_) => "path",
            ConnField::Sent(_) => "sent",
            ConnField::Received(_) => "received",
            ConnField::Intact(_) => "intact",
            ConnField::ServerPeer(_) => "server_peer",
            ConnField::ServerIdentity(_) => "server_identity",
            ConnField::Tunnel(_) => "tunnel",
            ConnField::Reused(_) => "reused",
        }
    }

    /// Every key a connection expectation may use.
    pub const KEYS: &'static [&'static str] = &[
        "outcome",
        "path",
        "sent",
        "received",
        "intact",
        "server_peer",
        "server_identity",
        "tunnel",
        "reused",
    ];
}

/// One expected conntrack entry. `orig` is required; other fields left out are not checked.
/// Ports written `*` match any port (each `*` on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtPattern {
    pub at: At,
    pub proto: Proto,
    pub orig: TuplePattern,
    pub reply: Option<TuplePattern>,
    pub state: Option<TcpState>,
    pub mark: Option<u32>,
    pub zone: Option<u16>,
}
