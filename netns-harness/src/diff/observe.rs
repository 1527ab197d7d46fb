//! Assembling an [`Observation`] from what a backend recorded — the same code for the kernel
//! executor ([`super::kernel`]) and a model executor, so both sides are normalised and matched
//! up alike.
//!
//! A backend records, per flow, what its client saw ([`ClientRecord`]) and, per accepted
//! connection, what the server saw ([`ServerRecord`]); it lists conntrack (as parsed `conntrack
//! -L` entries) at the two snapshots and the rules with counters (a parsed `iptables-save -c`).
//! [`observe`] then names ephemeral ports after the flow that owned them, claims each accept for
//! a flow (by the header it received, else by the client's address), and normalises the rest.

use std::net::SocketAddrV4;

use super::case::{
    AcceptObservation, Case, CloseResult, ConnectResult, EchoResult, FlowObservation, Observation,
    Port, Side,
};
use super::normalize::{PortMap, entry_flow, rule_observations};
use crate::conntrack::Entry;
use crate::iptables::Ruleset;

/// One connection a listener accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// The listener's id.
    pub listener: String,
    /// The accepted socket's local address.
    pub local: SocketAddrV4,
    /// The peer address it saw.
    pub peer: SocketAddrV4,
    /// SO_ORIGINAL_DST, or the errno name it failed with.
    pub orig: Result<SocketAddrV4, String>,
    /// The flow named by the header the server read, if it read one.
    pub flow: Option<u32>,
}

/// What one flow's client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// Its local address, once connected.
    pub local: Option<SocketAddrV4>,
    /// Its local port (also known after a failed connect).
    pub local_port: Option<u16>,
    /// Connect result.
    pub connect: ConnectResult,
    /// The echo, if connected.
    pub echo: Option<EchoResult>,
    /// The close, if connected.
    pub close: Option<CloseResult>,
    /// A phase ran into its time limit.
    pub stalled: bool,
}

/// TCP conntrack states of a close in progress.
pub const CLOSING: [&str; 3] = ["FIN_WAIT", "CLOSE_WAIT", "LAST_ACK"];

/// Whether a conntrack entry is in the middle of a close.
pub fn is_closing(e: &Entry) -> bool {
    e.state.as_deref().is_some_and(|s| CLOSING.contains(&s))
}

/// The observation of a case: `clients` in flow order, `accepts` in any order, `ruleset` the pod's
/// `iptables-save -c` after the flows, conntrack of both sides at the two snapshots.
pub fn observe(
    case: &Case,
    clients: &[ClientRecord],
    mut accepts: Vec<ServerRecord>,
    ruleset: &Ruleset,
    open: [(Side, Vec<Entry>); 2],
    closed: [(Side, Vec<Entry>); 2],
) -> Observation {
    let mut ports = PortMap::default();
    for (flow, client) in case.flows.iter().zip(clients) {
        if let (None, Some(port)) = (flow.src_port, client.local_port) {
            ports.insert(port, flow.id);
        }
    }
    let accept_obs = |r: &ServerRecord| AcceptObservation {
        listener: r.listener.clone(),
        local: ports.endpoint(r.local),
        peer: ports.endpoint(r.peer),
        original_dst: r.orig.clone().map(|a| ports.endpoint(a)),
    };
    let mut flows = Vec::new();
    for (flow, client) in case.flows.iter().zip(clients) {
        // Claimed by the header it sent, or else (no data got through) by its address.
        let by_header = accepts.iter().position(|r| r.flow == Some(flow.id));
        let by_addr = || {
            let local = client.local?;
            accepts.iter().position(|r| r.flow.is_none() && r.peer == local)
        };
        let accepted = by_header.or_else(by_addr).map(|i| accepts.remove(i));
        flows.push(FlowObservation {
            id: flow.id,
            // A flow's own ephemeral port is its own, even if the kernel handed the same port
            // to a later flow once this one had closed (the map keeps the later owner).
            client_port: client.local_port.map(|p| match (flow.src_port, ports.port(p)) {
                (None, Port::Ephemeral(_)) => Port::Ephemeral(flow.id),
                (_, port) => port,
            }),
            connect: client.connect.clone(),
            accepted: accepted.as_ref().map(accept_obs),
            echo: client.echo.clone(),
            close: client.close.clone(),
            timing_sensitive: client.stalled,
        });
    }
    let (rules, policies) = rule_observations(ruleset);
    let mut observation = Observation {
        seed: case.seed,
        canonical_rules: ruleset.canonical_text(),
        rules,
        policies,
        flows,
        unclaimed_accepts: accepts.iter().map(accept_obs).collect(),
        conntrack_open: open.iter().map(|(side, e)| (*side, ports.entries(e))).collect(),
        conntrack_closed: closed.iter().map(|(side, e)| (*side, ports.entries(e))).collect(),
    };
    // A close still in progress at the final snapshot (a half-open connection the rules made,
    // say) ends whenever the stack gets to it: that flow's states are timing-dependent.
    let unsettled: Vec<u32> = observation
        .conntrack_closed
        .get(&Side::Pod)
        .into_iter()
        .flatten()
        .filter(|e| e.state.as_deref().is_some_and(|s| CLOSING.contains(&s)))
        .filter_map(entry_flow)
        .collect();
    for flow in observation.flows.iter_mut().filter(|f| unsettled.contains(&f.id)) {
        flow.timing_sensitive = true;
    }
    observation
}
