//! From what a backend observed to the Outcome's entries. Both backends call these functions, so
//! where their Outcomes differ it is because they observed different things, never because they
//! read them differently.
//!
//! A connection is joined to the proxies' events by the client's own `ip:port` (every connection
//! event carries it; the destination proxy learns it from `Forwarded`), and to the server app's
//! accept by the peer address the app saw: the client's own address when nothing was in between,
//! otherwise the `upstream` socket of the last proxy (`connection-closed` names it).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use ambient_proxy::events::{CloseResult, Direction, DnsResult, Path, ProxyEvent as Event};

use crate::outcome::{ConnOutcome, Connection, EventKind, PathKind, ProxyEvent};
use crate::traffic::{ClientEnd, ClientReport, ServeReport};
use crate::world::App;

mod dns;
pub use dns::{LookupLabels, resolution};

/// One accept by a server app, in the order the backend saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    pub app: App,
    /// The peer address the app saw.
    pub peer: SocketAddr,
    /// What the app did (absent if it was still running when the run ended).
    pub served: Option<ServeReport>,
}

/// Every server accept of a run; each is joined to at most one connection.
#[derive(Debug, Clone, Default)]
pub struct Accepts {
    /// Each accept, whether it is joined, and the client it was tied to beforehand, if any.
    accepts: Vec<(Accept, bool, Option<SocketAddr>)>,
}

impl Accepts {
    pub fn push(&mut self, accept: Accept) {
        self.accepts.push((accept, false, None));
    }

    /// An accept the backend already knows is `client`'s (ztunnel's connections, tied by their
    /// payload): it joins that connection only, whatever peer address it shares with others
    /// (two pods' apps can see the same client `ip:port` from two proxies).
    pub fn push_tied(&mut self, accept: Accept, client: SocketAddr) {
        self.accepts.push((accept, false, Some(client)));
    }

    /// The accept tied to `client`, else the first accept neither joined nor tied whose peer is
    /// one of `peers`; marked as joined.
    fn take(&mut self, peers: &[SocketAddr], client: Option<SocketAddr>) -> Option<&Accept> {
        let i = self
            .accepts
            .iter()
            .position(|(_, taken, tied)| !*taken && client.is_some() && *tied == client)
            .or_else(|| {
                self.accepts.iter().position(|(a, taken, tied)| {
                    !*taken && tied.is_none() && peers.contains(&a.peer)
                })
            })?;
        let (accept, taken, _) = &mut self.accepts[i];
        *taken = true;
        Some(accept)
    }
}

/// The events every node proxy logged, by node, each list in the order it was logged.
pub type EventLog = BTreeMap<String, Vec<Event>>;

/// What the Outcome needs to know about one client connection besides what it observed.
#[derive(Debug, Clone, Copy)]
pub struct ConnLabels<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The app the cluster says serves the target ([`crate::ClusterState::app_for`]): what the
    /// client should read back is decided by it, whether or not the connection reached it. The
    /// app that actually accepted, when one did, takes precedence.
    pub app: Option<App>,
    /// For a Service target, the app of each endpoint
    /// ([`crate::ClusterState::endpoint_apps`]): the endpoint the route event names decides
    /// what the client should read back when no accept is tied to the connection, ahead of
    /// `app` (which is `None` when the endpoints disagree).
    pub endpoints: &'a [(SocketAddrV4, App)],
}

/// Builds the Outcome's entry for one connection. `client` is the client socket's own address,
/// when it got one (a refused or timed-out connect may not report it).
pub fn connection(
    labels: ConnLabels<'_>,
    report: &ClientReport,
    client: Option<SocketAddr>,
    log: &EventLog,
    accepts: &mut Accepts,
) -> Connection {
    let events = client.map(|c| events_of(log, c)).unwrap_or_default();
    let route = events.iter().find_map(|(_, e)| match e {
        Event::OutboundRoute { path, tunnel, tunnel_reused, .. } => {
            Some((*path, tunnel.clone(), *tunnel_reused))
        }
        _ => None,
    });
    let verdict = events.iter().find_map(|(_, e)| match e {
        Event::InboundVerdict { direction, allowed, source_identity, .. } => {
            Some((*direction, *allowed, source_identity.clone()))
        }
        _ => None,
    });
    // A connection some proxy took in on 15006 came in plaintext, even if it was refused there.
    let via_15006 = events.iter().any(|(_, e)| direction(e) == Some(Direction::InboundPlaintext));
    // The client's own proxy took it in on 15001 and refused it before routing it (no endpoint,
    // a self-call, an unknown source): it was captured, and it never left the client.
    let refused_at_15001 = events.iter().any(|(_, e)| direction(e) == Some(Direction::Outbound));
    let path = match &route {
        Some((Path::Hbone, ..)) => Some(PathKind::Hbone),
        Some((Path::Passthrough, ..)) => Some(PathKind::Passthrough),
        None if via_15006 => Some(PathKind::InboundPlaintext),
        None if refused_at_15001 => None,
        None if client.is_some() || report.connected => Some(PathKind::Direct),
        None => None,
    };

    // The app's accept: whoever the app saw as its peer.
    let mut peers: Vec<SocketAddr> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ConnectionClosed { upstream: Some(u), .. } => Some(*u),
            _ => None,
        })
        .collect();
    peers.extend(client);
    let accept = accepts.take(&peers, client).cloned();
    // Without an accept (a crashed proxy logged no close), the routed endpoint's app: a
    // Service whose endpoints run different apps must not count a cut stream as complete.
    let routed_app = events.iter().find_map(|(_, e)| match e {
        Event::OutboundRoute { endpoint: SocketAddr::V4(ep), .. } => {
            labels.endpoints.iter().find(|(a, _)| a == ep).map(|(_, app)| *app)
        }
        _ => None,
    });
    let app = accept.as_ref().map(|a| a.app).or(routed_app).or(labels.app);
    let expected = app.map_or(0, |a| a.expected_reply(report.sent));
    let intact = report.intact(expected);

    let denied = matches!(verdict, Some((_, false, _)))
        || events.iter().any(|(_, e)| {
            matches!(
                e,
                Event::Error { status: Some(401), .. }
                    | Event::ConnectionClosed { result: CloseResult::PolicyRevoked { .. }, .. }
            )
        });
    // A proxy logs an `error` event only for a connection it refused or could not carry before
    // any data flowed (no route, no upstream, a self-call, a failed TLS or CONNECT): to the client
    // that is a refusal, however the socket was closed.
    let no_upstream = events.iter().any(|(_, e)| matches!(e, Event::Error { .. }));
    // Precedence: a policy decision explains everything after it; a client that gave up at its
    // deadline timed out, whatever a proxy logged later; a proxy's refusal explains a client that
    // got nothing back from an app, however its socket was closed (what it may have read came
    // from the proxy itself: the TLS alert 15008 answers plain text with).
    let (outcome, error) = if denied {
        (ConnOutcome::Denied, None)
    } else if report.end == ClientEnd::Timeout {
        (ConnOutcome::Timeout, None)
    } else if no_upstream && (report.received == 0 || accept.is_none()) {
        (ConnOutcome::Refused, None)
    } else {
        match &report.end {
            ClientEnd::Refused => (ConnOutcome::Refused, None),
            ClientEnd::Timeout => (ConnOutcome::Timeout, None),
            ClientEnd::Reset => (ConnOutcome::Reset, None),
            ClientEnd::Error(e) => (ConnOutcome::Error, Some(e.clone())),
            ClientEnd::Closed if intact => (ConnOutcome::Ok, None),
            ClientEnd::Closed if !report.echoed => (
                ConnOutcome::Error,
                Some("the bytes read back differ from the bytes the server returns".into()),
            ),
            ClientEnd::Closed => (
                ConnOutcome::Error,
                Some(format!(
                    "read back {} bytes of the {expected} the server returns",
                    report.received
                )),
            ),
        }
    };

    Connection {
        id: labels.id.to_string(),
        from: labels.from.to_string(),
        to: labels.to.to_string(),
        outcome,
        error,
        path,
        sent: report.sent,
        received: report.received,
        intact,
        server_peer: accept.as_ref().and_then(|a| match a.peer.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }),
        server_identity: verdict.and_then(|(_, _, id)| id),
        tunnel: route.as_ref().and_then(|(_, t, _)| t.as_deref()?.parse().ok()),
        reused: matches!(route, Some((_, _, Some(true)))),
        proxy_events: events.iter().flat_map(|(node, e)| describe(node, e)).collect(),
    }
}

/// The direction an event's proxy handled the connection in, where the event says.
fn direction(e: &Event) -> Option<Direction> {
    match e {
        Event::InboundVerdict { direction, .. }
        | Event::Error { direction, .. }
        | Event::ConnectionClosed { direction, .. } => Some(*direction),
        Event::OutboundRoute { .. } => Some(Direction::Outbound),
        Event::Dns { .. } | Event::TunnelOpened { .. } | Event::TunnelClosed { .. } => None,
    }
}

/// The events about `client`, the source proxy's first (the node that routed it outbound), then
/// the others by node name; each node's in the order it logged them.
fn events_of(log: &EventLog, client: SocketAddr) -> Vec<(String, Event)> {
    let mine = |evs: &Vec<Event>| evs.iter().filter(|e| e.client() == Some(client)).count();
    let source = log
        .iter()
        .find(|(_, evs)| {
            evs.iter().any(|e| matches!(e, Event::OutboundRoute { client: c, .. } if *c == client))
        })
        .map(|(n, _)| n.clone());
    let mut nodes: Vec<&String> = log.keys().filter(|n| mine(&log[*n]) > 0).collect();
    nodes.sort_by_key(|n| (Some(*n) != source.as_ref(), *n));
    nodes
        .into_iter()
        .flat_map(|n| {
            log[n].iter().filter(|e| e.client() == Some(client)).map(|e| (n.clone(), e.clone()))
        })
        .collect()
}

/// The Outcome's words for one proxy event: decisions only, nothing that varies between runs or
/// backends (no ephemeral ports, no durations).
fn describe(node: &str, e: &Event) -> Vec<ProxyEvent> {
    let ev = |kind, detail: String| ProxyEvent { proxy: node.to_string(), kind, detail };
    match e {
        Event::OutboundRoute {
            path: Path::Hbone,
            endpoint,
            service,
            destination_identity,
            tunnel_reused,
            tunnel,
            ..
        } => {
            let mut detail = format!(
                "hbone {}:{} authority {endpoint}",
                endpoint.ip(),
                ambient_proxy::inpod::INBOUND_HBONE_PORT
            );
            if let Some(s) = service {
                detail.push_str(&format!(" service {s}"));
            }
            if let Some(id) = destination_identity {
                detail.push_str(&format!(" as {id}"));
            }
            let mut out = vec![ev(EventKind::Route, detail)];
            if let (Some(reused), Some(t)) = (tunnel_reused, tunnel) {
                let verb = if *reused { "reused" } else { "opened" };
                out.push(ev(EventKind::Pool, format!("{verb} tunnel {t}")));
            }
            out
        }
        Event::OutboundRoute { path: Path::Passthrough, endpoint, service, .. } => {
            let mut detail = format!("passthrough {endpoint}");
            if let Some(s) = service {
                detail.push_str(&format!(" service {s}"));
            }
            vec![ev(EventKind::Route, detail)]
        }
        Event::InboundVerdict { direction, allowed, reason, policy, source_identity, .. } => {
            let verb = if *allowed { "allow" } else { "deny" };
            let from = source_identity.as_deref().unwrap_or("no identity");
            let mut detail = format!("{verb} {} from {from}: {reason}", direction.as_str());
            if let Some(p) = policy {
                detail.push_str(&format!(" ({p})"));
            }
            vec![ev(EventKind::Rbac, detail)]
        }
        Event::Error { stage, status, message, direction, .. } => {
            let status = status.map(|s| format!(" {s}")).unwrap_or_default();
            vec![ev(EventKind::Error, format!("{} {stage}{status}: {message}", direction.as_str()))]
        }
        Event::ConnectionClosed { result, direction, .. } => match result {
            CloseResult::Ok => Vec::new(),
            CloseResult::Reset { side, .. } => {
                vec![ev(EventKind::Error, format!("{} reset by {side}", direction.as_str()))]
            }
            CloseResult::PolicyRevoked { reason } => {
                vec![ev(EventKind::Rbac, format!("revoked {}: {reason}", direction.as_str()))]
            }
            CloseResult::Shutdown => {
                vec![ev(
                    EventKind::Error,
                    format!("{} closed by proxy shutdown", direction.as_str()),
                )]
            }
            CloseResult::IdleTimeout { idle_ms } => {
                vec![ev(
                    EventKind::Error,
                    format!("{} reset after {idle_ms} ms idle", direction.as_str()),
                )]
            }
        },
        Event::Dns { name, qtype, result, rcode, answers, service, upstream, message, .. } => {
            let list = |a: &[std::net::Ipv4Addr]| {
                a.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
            };
            let detail = match result {
                DnsResult::Answered => format!(
                    "answered {name} {qtype} for service {}: {}",
                    service.as_deref().unwrap_or("?"),
                    if answers.is_empty() { "no records".to_string() } else { list(answers) }
                ),
                DnsResult::Forwarded => {
                    let to = upstream.map(|u| u.to_string()).unwrap_or_default();
                    let got = if answers.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", list(answers))
                    };
                    format!("forwarded {name} {qtype} to {to}: {rcode}{got}")
                }
                DnsResult::Failed => format!(
                    "failed {name} {qtype}: {rcode} ({})",
                    message.as_deref().unwrap_or("no reason")
                ),
            };
            vec![ev(EventKind::Dns, detail)]
        }
        Event::TunnelOpened { .. } | Event::TunnelClosed { .. } => Vec::new(),
    }
}

/// h2 connections opened between node proxies, per direction, from every node's log.
pub fn tunnels(log: &EventLog) -> BTreeMap<crate::values::NodePair, u64> {
    let mut out = BTreeMap::new();
    for e in log.values().flatten() {
        if let Event::TunnelOpened { source_node, destination_node, .. } = e {
            let pair =
                crate::values::NodePair { from: source_node.clone(), to: destination_node.clone() };
            *out.entry(pair).or_insert(0) += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
