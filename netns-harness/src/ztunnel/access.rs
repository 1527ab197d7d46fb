//! ztunnel's log (`LOG_FORMAT=json`, one object per line) → the [`ProxyEvent`]s an Outcome is
//! assembled from, in our proxy's vocabulary, so `ambient_scenarios::assemble` reads a ztunnel
//! node exactly as it reads one of ours. Pure: a function of one node's lines and the mesh.
//!
//! What each line becomes:
//!
//! | ztunnel line (scope, message) | event |
//! | --- | --- |
//! | `access` `connection opened`, outbound, with `dst.hbone_addr` | `outbound-route` hbone: endpoint = the CONNECT authority, service, destination identity |
//! | `access` `connection opened`, outbound, without | `outbound-route` passthrough to `dst.addr` |
//! | `ztunnel::proxy::pool` `spawning new pool conn for K` / `re-using connection for K` | the first unlinked hbone route of key K (source IP, gateway) gets `opened` / `reused` and its tunnel `node->node`; a spawn is also a `tunnel-opened` |
//! | `ztunnel::proxy::inbound` `received request` (span `inbound{id, peer}`) | remembered: the client (`Forwarded: for=`), the authority, the peer identity, by span |
//! | `ztunnel::state` RBAC decision (`deny policy match`, `allow policy match`, `no allow policies, allow`, `no allow policies matched`) | `inbound-verdict`: inbound-hbone for the request of its span, inbound-plaintext for the last plaintext connection opened |
//! | `access` `connection complete` | `connection-closed` (ok, or reset), or `error` when nothing flowed (an HTTP status is kept: 401 is a denial) |
//! | `access` `connection failed` (refused before any context: self-calls, no healthy upstream, a bad TLS handshake) | `error` |
//!
//! ztunnel logs the access lines without their connection's span, so a tunnelled connection's
//! inbound lines (which name the tunnel's peer socket, not the client) are tied to the request
//! by peer and authority, oldest first; a pool decision is tied to the route by key, oldest
//! first. With connections one after another that is exact; with connections opened at once
//! on one tunnel the order may pair them differently, which changes only which of them is
//! called `reused`. A failed tunnel dial (connect or TLS) un-does its `opened`: our proxy
//! counts only tunnels it established. The peer address a server app saw is not in ztunnel's
//! log (its upstream socket has an ephemeral port): `connection-closed` carries no `upstream`,
//! and the run driver ties app accepts to connections by their payload instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ambient_proxy::events::{CloseResult, Direction, Path, ProxyEvent};
use ambient_proxy::mesh::MeshSpec;
use ambient_proxy::policy::rbac::VerdictReason;
use serde_json::Value;

/// What the log does not say and the mesh does: which node a pod address lives on, and the
/// `name.namespace` of a Service hostname.
#[derive(Debug, Clone, Default)]
pub struct Context {
    nodes: BTreeMap<IpAddr, String>,
    services: BTreeMap<String, String>,
    vips: BTreeMap<IpAddr, String>,
}

impl Context {
    /// The context of a catalog scenario's initial mesh (`scenarios/catalog/<id>.yaml`), for
    /// the translation tests.
    #[cfg(test)]
    pub(crate) fn of_catalog_scenario(id: &str) -> Context {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../scenarios/catalog/{id}.yaml"));
        let world = ambient_scenarios::load_file(&file).into_result().unwrap();
        let mut c = Context::default();
        c.learn(&ambient_scenarios::ClusterState::initial(&world).mesh_spec());
        c
    }

    /// Learns `mesh` (an address keeps the node it last had).
    pub fn learn(&mut self, mesh: &MeshSpec) {
        for w in &mesh.workloads {
            self.nodes.insert(w.ip, w.node.clone());
        }
        for s in &mesh.services {
            self.services
                .insert(super::config::hostname(&s.name, &s.namespace), s.qualified_name());
            self.vips.insert(s.vip, s.qualified_name());
        }
    }

    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        self.nodes.get(&ip).map(String::as_str)
    }

    /// The `name.namespace` of the Service with this VIP.
    pub fn service_of_vip(&self, ip: IpAddr) -> Option<String> {
        self.vips.get(&ip).cloned()
    }

    fn service(&self, hostname: &str) -> String {
        self.services.get(hostname).cloned().unwrap_or_else(|| hostname.to_string())
    }
}

/// A field of a log object as text.
fn text<'a>(j: &'a Value, key: &str) -> Option<&'a str> {
    j.get(key).and_then(Value::as_str)
}

fn addr(j: &Value, key: &str) -> Option<SocketAddr> {
    text(j, key)?.parse().ok()
}

fn number(j: &Value, key: &str) -> u64 {
    match j.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A span's field (`{"inbound": {"id": …, "peer": …}}`).
fn span<'a>(j: &'a Value, name: &str, field: &str) -> Option<&'a str> {
    j.get(name)?.get(field)?.as_str()
}

/// `ns/name` (ztunnel's policy key) → `name.ns` (ours).
fn policy_name(key: &str) -> String {
    match key.split_once('/') {
        Some((ns, name)) => format!("{name}.{ns}"),
        None => key.to_string(),
    }
}

/// The RBAC decision of one of ztunnel's policy log lines: (allowed, reason, policy).
fn decision(message: &str, policy: Option<&str>) -> Option<(bool, VerdictReason, Option<String>)> {
    let policy = policy.map(policy_name);
    Some(match message {
        "deny policy match" => (false, VerdictReason::DeniedByPolicy, policy),
        "allow policy match" => (true, VerdictReason::AllowedByPolicy, policy),
        "no allow policies, allow" => (true, VerdictReason::NoAllowPolicies, None),
        "no allow policies matched" => (false, VerdictReason::NoAllowMatched, None),
        _ => return None,
    })
}

/// A pool key as ztunnel prints it: `src_ip(src_id)->dst_ip:port[ids…]` → (source IP, gateway,
/// source identity, destination identities).
fn pool_key(s: &str) -> Option<(IpAddr, SocketAddr, String, String)> {
    let (src, rest) = s.split_once('(')?;
    let (src_id, rest) = rest.split_once(")->")?;
    let (dst, ids) = rest.split_once('[')?;
    Some((
        src.parse().ok()?,
        dst.parse().ok()?,
        src_id.to_string(),
        ids.trim_end_matches(']').into(),
    ))
}

/// The client address in a request's `Forwarded: for="ip:port"` (as the request's Debug form
/// prints it, quotes escaped).
fn forwarded_for(req: &str) -> Option<SocketAddr> {
    let at = req.find("for=")? + 4;
    let rest = req[at..].trim_start_matches(['\\', '"']);
    let end = rest.find(['\\', '"', ';']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The authority of a CONNECT request's Debug form (`uri: 10.0.2.2:8080,`).
fn request_uri(req: &str) -> Option<SocketAddr> {
    let at = req.find("uri: ")? + 5;
    let rest = &req[at..];
    rest[..rest.find(',')?].parse().ok()
}

/// `ip:port(identity)->dst` → the identity (`None` prints as `None`).
fn conn_identity(conn: &str) -> Option<String> {
    let (_, rest) = conn.split_once('(')?;
    let (id, _) = rest.split_once(")->")?;
    (id.starts_with("spiffe://")).then(|| id.to_string())
}

/// An HTTP status in an error (`http status: 401 Unauthorized`).
fn http_status(error: &str) -> Option<u16> {
    let rest = error.strip_prefix("http status: ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// ztunnel's words for a refusal or failure → ours, where they state the same fact (the
/// decision, stage and status are never changed, only the phrasing; anything else is kept as
/// ztunnel wrote it, so a real difference stays visible). `target` is the address the words
/// are about.
fn our_words(error: &str, target: SocketAddr, ctx: &Context) -> String {
    if error == SELF_CALL {
        return format!("self-call to the proxy's own port {target}");
    }
    if let Some(rest) = error.strip_prefix("no healthy upstream: ")
        && let Ok(vip) = rest.parse::<SocketAddr>()
        && let Some(name) = ctx.vips.get(&vip.ip())
    {
        return format!("service {name} has no endpoint");
    }
    // rustls's error in its Debug form (ztunnel) and its Display form (ours).
    if let Some(at) = error.find("InvalidMessage(") {
        let rest = &error[at + "InvalidMessage(".len()..];
        if let Some(end) = rest.find(')') {
            return format!("received corrupt message of type {}", &rest[..end]);
        }
    }
    for prefix in ["io error: ", "connection failed: "] {
        if let Some(rest) = error.strip_prefix(prefix) {
            return format!("connect to {target}: {rest}");
        }
    }
    error.to_string()
}

/// ztunnel's refusal of a connection to its own ports.
const SELF_CALL: &str = "attempted recursive call to ourselves";

/// Whether an outbound error happened while establishing the connection (connect, TLS, the
/// CONNECT's answer) rather than on a connection that was up.
fn establishing(error: &str) -> bool {
    http_status(error).is_some()
        || ["Connection refused", "timed out", "tls", "No route to host", "unreachable"]
            .iter()
            .any(|m| error.contains(m))
}

struct Route {
    event: usize,
    client: SocketAddr,
    hbone: bool,
    gateway: SocketAddr,
    linked: bool,
    tunnel_event: Option<usize>,
}

struct InboundRequest {
    client: SocketAddr,
    peer: SocketAddr,
    authority: SocketAddr,
    identity: Option<String>,
    verdict: Option<bool>,
    done: bool,
}

struct Plaintext {
    client: SocketAddr,
    destination: SocketAddr,
    verdict: Option<bool>,
    done: bool,
}

#[derive(Default)]
struct Reader<'c> {
    node: String,
    ctx: Option<&'c Context>,
    out: Vec<Option<ProxyEvent>>,
    routes: Vec<Route>,
    linked_spans: BTreeSet<String>,
    requests: Vec<(String, InboundRequest)>,
    plaintext: Vec<Plaintext>,
}

impl Reader<'_> {
    fn emit(&mut self, e: ProxyEvent) -> usize {
        self.out.push(Some(e));
        self.out.len() - 1
    }

    fn ctx(&self) -> &Context {
        self.ctx.expect("set")
    }

    /// The node an address lives on (the address itself when the mesh does not say).
    fn node_name(&self, gateway: SocketAddr) -> String {
        self.ctx().node_of(gateway.ip()).map_or_else(|| gateway.ip().to_string(), String::from)
    }

    /// `this-node->gateway's-node`.
    fn tunnel_name(&self, gateway: SocketAddr) -> String {
        format!("{}->{}", self.node, self.node_name(gateway))
    }

    fn line(&mut self, j: &Value) {
        let scope = text(j, "scope").unwrap_or_default();
        let message = text(j, "message").unwrap_or_default();
        match (scope, message) {
            ("access", "connection opened") => self.opened(j),
            ("access", "connection complete") => self.complete(j),
            ("access", "connection failed") => self.failed(j),
            ("ztunnel::proxy::inbound", "received request") => self.request(j),
            ("ztunnel::proxy::pool", m) => self.pool(j, m),
            (_, m) => {
                if let Some(d) = decision(m, text(j, "policy")) {
                    self.verdict(j, d);
                }
            }
        }
    }

    fn opened(&mut self, j: &Value) {
        let (Some(src), Some(dst)) = (addr(j, "src.addr"), addr(j, "dst.addr")) else { return };
        let hbone = addr(j, "dst.hbone_addr");
        match text(j, "direction") {
            Some("outbound") => {
                let service = text(j, "dst.service").map(|h| self.ctx().service(h));
                let event = self.emit(ProxyEvent::OutboundRoute {
                    node: self.node.clone(),
                    client: src,
                    original_dst: dst,
                    path: if hbone.is_some() { Path::Hbone } else { Path::Passthrough },
                    endpoint: hbone.unwrap_or(dst),
                    service,
                    source_identity: text(j, "src.identity").map(String::from),
                    destination_identity: text(j, "dst.identity").map(String::from),
                    tunnel_reused: None,
                    // As ours: an HBONE route names its node pair whether or not a tunnel
                    // could be had (`tunnel_reused` says that).
                    tunnel: hbone.map(|_| self.tunnel_name(dst)),
                });
                self.routes.push(Route {
                    event,
                    client: src,
                    hbone: hbone.is_some(),
                    gateway: dst,
                    linked: false,
                    tunnel_event: None,
                });
            }
            Some("inbound") if hbone.is_none() => self.plaintext.push(Plaintext {
                client: src,
                destination: dst,
                verdict: None,
                done: false,
            }),
            _ => {}
        }
    }

    fn request(&mut self, j: &Value) {
        let (Some(id), Some(peer)) = (span(j, "inbound", "id"), span(j, "inbound", "peer")) else {
            return;
        };
        let Ok(peer) = peer.parse::<SocketAddr>() else { return };
        let req = text(j, "req").unwrap_or_default();
        let Some(authority) = request_uri(req) else { return };
        let request = InboundRequest {
            client: forwarded_for(req).unwrap_or(peer),
            peer,
            authority,
            identity: text(j, "conn").and_then(conn_identity),
            verdict: None,
            done: false,
        };
        self.requests.push((id.to_string(), request));
    }

    fn verdict(
        &mut self,
        j: &Value,
        (allowed, reason, policy): (bool, VerdictReason, Option<String>),
    ) {
        let node = self.node.clone();
        let event = if let Some(id) = span(j, "inbound", "id") {
            let Some((_, r)) =
                self.requests.iter_mut().rev().find(|(s, r)| s == id && r.verdict.is_none())
            else {
                return;
            };
            r.verdict = Some(allowed);
            ProxyEvent::InboundVerdict {
                node,
                client: r.client,
                direction: Direction::InboundHbone,
                destination: r.authority,
                source_identity: r.identity.clone(),
                allowed,
                reason: reason.to_string(),
                policy,
            }
        } else {
            let Some(p) = self.plaintext.iter_mut().rev().find(|p| p.verdict.is_none()) else {
                return;
            };
            p.verdict = Some(allowed);
            ProxyEvent::InboundVerdict {
                node,
                client: p.client,
                direction: Direction::InboundPlaintext,
                destination: p.destination,
                source_identity: None,
                allowed,
                reason: reason.to_string(),
                policy,
            }
        };
        self.emit(event);
    }

    fn pool(&mut self, j: &Value, message: &str) {
        let Some(id) = span(j, "outbound", "id") else { return };
        if self.linked_spans.contains(id) {
            return;
        }
        let (spawned, key) = if let Some(k) = message.strip_prefix("spawning new pool conn for ") {
            (true, pool_key(k))
        } else if let Some(k) = message.strip_prefix("re-using connection for ") {
            (false, pool_key(k))
        } else if message == "found existing conn after waiting" {
            (false, None)
        } else {
            return;
        };
        let matches = |r: &Route| {
            r.hbone
                && !r.linked
                && key
                    .as_ref()
                    .is_none_or(|(src, gw, _, _)| r.client.ip() == *src && r.gateway == *gw)
        };
        let Some(at) = self.routes.iter().position(matches) else { return };
        self.linked_spans.insert(id.to_string());
        let gateway = self.routes[at].gateway;
        let dst_node = self.node_name(gateway);
        let tunnel = self.tunnel_name(gateway);
        self.routes[at].linked = true;
        if let Some(Some(ProxyEvent::OutboundRoute { tunnel_reused, tunnel: t, .. })) =
            self.out.get_mut(self.routes[at].event)
        {
            *tunnel_reused = Some(!spawned);
            *t = Some(tunnel);
        }
        if spawned {
            let (source_identity, destination_identity) =
                key.map(|(_, _, s, d)| (s, d)).unwrap_or_default();
            let e = self.emit(ProxyEvent::TunnelOpened {
                source_node: self.node.clone(),
                destination_node: dst_node,
                gateway,
                source_identity,
                destination_identity,
            });
            self.routes[at].tunnel_event = Some(e);
        }
    }

    fn complete(&mut self, j: &Value) {
        let Some(src) = addr(j, "src.addr") else { return };
        let error = text(j, "error");
        let (sent, received) = (number(j, "bytes_sent"), number(j, "bytes_recv"));
        let nothing_moved = sent == 0 && received == 0;
        match text(j, "direction") {
            Some("outbound") => self.outbound_end(j, src, error, (sent, received), nothing_moved),
            Some("inbound") => {
                let node = self.node.clone();
                let (client, direction, destination) = if let Some(authority) =
                    addr(j, "dst.hbone_addr")
                {
                    let Some((_, r)) = self.requests.iter_mut().find(|(_, r)| {
                        !r.done && r.peer == src && r.authority == authority && r.verdict.is_some()
                    }) else {
                        return;
                    };
                    r.done = true;
                    if r.verdict != Some(true) {
                        return;
                    }
                    (r.client, Direction::InboundHbone, authority)
                } else {
                    let Some(p) = self.plaintext.iter_mut().find(|p| !p.done && p.client == src)
                    else {
                        return;
                    };
                    p.done = true;
                    if p.verdict != Some(true) {
                        return;
                    }
                    (p.client, Direction::InboundPlaintext, p.destination)
                };
                let error = error.map(|e| our_words(e, destination, self.ctx()));
                let end = Ends { client, direction, destination, sent, received };
                let event = inbound_end(node, end, error.as_deref());
                self.emit(event);
            }
            _ => {}
        }
    }

    fn outbound_end(
        &mut self,
        j: &Value,
        src: SocketAddr,
        error: Option<&str>,
        (sent, received): (u64, u64),
        nothing_moved: bool,
    ) {
        let Some(at) = self.routes.iter().rposition(|r| r.client == src) else { return };
        let destination = addr(j, "dst.hbone_addr").or(addr(j, "dst.addr")).unwrap_or(src);
        let (hbone, gateway) = (self.routes[at].hbone, self.routes[at].gateway);
        let node = self.node.clone();
        let end = Ends { client: src, direction: Direction::Outbound, destination, sent, received };
        let event = match error {
            None => closed(node, end, CloseResult::Ok),
            Some(e) if http_status(e).is_some() => {
                let status = http_status(e);
                let words =
                    format!("CONNECT {destination} answered {}", status.unwrap_or_default());
                error_event(node, src, Direction::Outbound, "upstream", status, &words)
            }
            Some(e) if nothing_moved && establishing(e) => {
                // The tunnel (or the passthrough connection) could not be had: the dial this
                // connection made opened nothing.
                if self.routes[at].tunnel_event.is_some() {
                    self.undo_tunnel(at);
                }
                let stage = if e.contains("tls") { "tls" } else { "connect" };
                let target = if hbone { gateway } else { destination };
                let words = our_words(e, target, self.ctx());
                error_event(node, src, Direction::Outbound, stage, None, &words)
            }
            Some(e) => closed(node, end, reset(if hbone { "tunnel" } else { "upstream" }, e)),
        };
        self.emit(event);
    }

    fn undo_tunnel(&mut self, at: usize) {
        let route = &mut self.routes[at];
        if let Some(Some(ProxyEvent::OutboundRoute { tunnel_reused, .. })) =
            self.out.get_mut(route.event)
        {
            *tunnel_reused = None;
        }
        if let Some(e) = route.tunnel_event.take() {
            self.out[e] = None;
        }
    }

    fn failed(&mut self, j: &Value) {
        let (Some(src), Some(dst)) = (addr(j, "src.addr"), addr(j, "dst.addr")) else { return };
        let raw = text(j, "error").unwrap_or("connection failed");
        let node = self.node.clone();
        let event = match text(j, "direction") {
            Some("outbound") => {
                let words = our_words(raw, dst, self.ctx());
                error_event(node, src, Direction::Outbound, "route", None, &words)
            }
            Some("inbound") => {
                // A tunnelled request refused before RBAC names the tunnel's peer: its request.
                let request = self
                    .requests
                    .iter_mut()
                    .rev()
                    .find(|(_, r)| !r.done && r.verdict.is_none() && r.peer == src);
                if let Some((_, r)) = request {
                    r.done = true;
                    let (client, authority) = (r.client, r.authority);
                    // The status ztunnel answers the CONNECT with: a self-call is found while
                    // resolving the upstream (503); anything else about the request is a 400.
                    let status = if raw == SELF_CALL { 503 } else { 400 };
                    let words = our_words(raw, authority, self.ctx());
                    error_event(
                        node,
                        client,
                        Direction::InboundHbone,
                        "request",
                        Some(status),
                        &words,
                    )
                } else if dst.port() == ambient_proxy::inpod::INBOUND_HBONE_PORT {
                    let words = our_words(raw, dst, self.ctx());
                    let words = words.strip_prefix("tls handshake error: ").unwrap_or(&words);
                    error_event(node, src, Direction::InboundHbone, "tls", None, words)
                } else {
                    let words = our_words(raw, dst, self.ctx());
                    error_event(node, src, Direction::InboundPlaintext, "request", None, &words)
                }
            }
            _ => return,
        };
        self.emit(event);
    }
}

/// Both ends of a proxied connection and what moved.
struct Ends {
    client: SocketAddr,
    direction: Direction,
    destination: SocketAddr,
    sent: u64,
    received: u64,
}

fn closed(node: String, end: Ends, result: CloseResult) -> ProxyEvent {
    ProxyEvent::ConnectionClosed {
        node,
        client: end.client,
        direction: end.direction,
        destination: end.destination,
        bytes_sent: end.sent,
        bytes_received: end.received,
        duration_ms: 0,
        result,
        upstream: None,
    }
}

fn error_event(
    node: String,
    client: SocketAddr,
    direction: Direction,
    stage: &str,
    status: Option<u16>,
    message: &str,
) -> ProxyEvent {
    ProxyEvent::Error {
        node,
        client: Some(client),
        direction,
        stage: stage.to_string(),
        status,
        message: message.to_string(),
    }
}

/// A connection that was up and ended in an error, on `side` (`tunnel` or `upstream`).
fn reset(side: &str, message: &str) -> CloseResult {
    if message.contains("policy rejection") || message.contains("no longer allowed") {
        CloseResult::PolicyRevoked { reason: message.to_string() }
    } else {
        CloseResult::Reset { side: side.into(), message: message.to_string() }
    }
}

/// The end of an allowed inbound connection: closed, or an upstream that could not be reached
/// (ztunnel's `connection failed: …`, in our words `connect to …`; answered 503 on HBONE).
fn inbound_end(node: String, end: Ends, error: Option<&str>) -> ProxyEvent {
    match error {
        None => closed(node, end, CloseResult::Ok),
        Some(e) if e.starts_with("connect to ") && end.sent == 0 && end.received == 0 => {
            let status = (end.direction == Direction::InboundHbone).then_some(503);
            error_event(node, end.client, end.direction, "upstream", status, e)
        }
        Some(e) => closed(node, end, reset("upstream", e)),
    }
}

/// The events of one node's ztunnel, from its output lines in order (lines that are not JSON
/// objects, or that no rule above names, are skipped).
pub fn events(node: &str, lines: &[String], ctx: &Context) -> Vec<ProxyEvent> {
    let mut reader = Reader { node: node.to_string(), ctx: Some(ctx), ..Reader::default() };
    for line in lines {
        if let Ok(j) = serde_json::from_str::<Value>(line)
            && j.is_object()
        {
            reader.line(&j);
        }
    }
    reader.out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
