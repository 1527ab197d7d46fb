//! What the proxy reports: [`ProxyEvent`]s (the access log, and what the testbed attaches to
//! connections as `proxy_events`) and [`Counters`].
//!
//! Every event goes to `tracing` (target `ambient_proxy::access`, controlled by `RUST_LOG`) *and*
//! to an injected [`EventSink`]. Connection events carry `client`: the client's own `ip:port`,
//! which the destination proxy learns from `Forwarded: for=`, so both proxies' events of one
//! connection can be joined. Field order is the declaration order (stable JSON); no event holds
//! a wall-clock timestamp, only durations measured in tokio time.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde::Serialize;

/// Which way a connection goes through this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Captured from a local app (15001).
    Outbound,
    /// Arrived over HBONE (15008).
    InboundHbone,
    /// Arrived in plaintext from outside the mesh (15006).
    InboundPlaintext,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::InboundHbone => "inbound-hbone",
            Direction::InboundPlaintext => "inbound-plaintext",
        }
    }
}

/// The path an outbound connection takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    Hbone,
    Passthrough,
}

/// How a proxied connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseResult {
    /// Both directions finished with a FIN / END_STREAM.
    Ok,
    /// A reset or error on one side, propagated to the other as a reset.
    Reset { side: String, message: String },
    /// Closed because a policy change no longer allows it.
    PolicyRevoked { reason: String },
    /// Closed by a drain deadline or stop.
    Shutdown,
    /// Reset both ways after no byte moved either way for `idle_ms`.
    IdleTimeout { idle_ms: u64 },
}

impl CloseResult {
    /// The result of a copy that failed.
    pub fn from_copy_error(e: &crate::copy::CopyError) -> Self {
        match e {
            crate::copy::CopyError::Idle(d) => CloseResult::IdleTimeout {
                idle_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            },
            e => CloseResult::Reset { side: e.side().to_string(), message: e.to_string() },
        }
    }
}

/// What the DNS proxy did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsResult {
    /// The proxy answered: a mesh Service's name.
    Answered,
    /// The upstream resolver answered; the proxy relayed its response.
    Forwarded,
    /// The proxy answered with an error of its own (SERVFAIL, FORMERR, NOTIMP): an unknown
    /// client, a malformed query, an upstream that did not answer.
    Failed,
}

impl DnsResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsResult::Answered => "answered",
            DnsResult::Forwarded => "forwarded",
            DnsResult::Failed => "failed",
        }
    }
}

/// One access-log event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ProxyEvent {
    /// 15001: the route decision.
    OutboundRoute {
        node: String,
        client: SocketAddr,
        original_dst: SocketAddr,
        path: Path,
        /// Where it goes: the endpoint `ip:port` (the CONNECT authority for HBONE).
        endpoint: SocketAddr,
        service: Option<String>,
        source_identity: Option<String>,
        destination_identity: Option<String>,
        /// HBONE only: rode an existing h2 connection (`true`) or opened one (`false`);
        /// `None` when no tunnel could be had (an `error` event follows).
        tunnel_reused: Option<bool>,
        /// HBONE only: `source-node->destination-node`.
        tunnel: Option<String>,
    },
    /// 15008 / 15006: the authorization verdict.
    InboundVerdict {
        node: String,
        client: SocketAddr,
        direction: Direction,
        destination: SocketAddr,
        source_identity: Option<String>,
        allowed: bool,
        reason: String,
        policy: Option<String>,
    },
    /// Anything refused or failed before data flowed.
    Error {
        node: String,
        client: Option<SocketAddr>,
        direction: Direction,
        /// `route`, `connect`, `tls`, `h2`, `request`, `upstream`.
        stage: String,
        /// The HTTP status the CONNECT got (sent or received), if any.
        status: Option<u16>,
        message: String,
    },
    /// A proxied connection ended.
    ConnectionClosed {
        node: String,
        client: SocketAddr,
        direction: Direction,
        destination: SocketAddr,
        /// Bytes from the client towards the destination.
        bytes_sent: u64,
        /// Bytes from the destination back to the client.
        bytes_received: u64,
        duration_ms: u64,
        result: CloseResult,
        /// This proxy's own connection to the destination, from its local address (for a
        /// transparent connection, the spoofed client address): the peer the destination app
        /// saw. `None` when the destination was reached through a tunnel.
        upstream: Option<SocketAddr>,
    },
    /// 15053: a DNS query from a captured pod and what became of it.
    Dns {
        node: String,
        /// The querying socket (`ip:port`) as the proxy saw it.
        client: SocketAddr,
        /// `udp` or `tcp`.
        transport: String,
        /// The name asked (`?` when the query did not parse).
        name: String,
        /// The type asked: `A`, `AAAA`, or `TYPE<n>`.
        qtype: String,
        result: DnsResult,
        /// The response's code (`NOERROR`, `NXDOMAIN`, `SERVFAIL`, …).
        rcode: String,
        /// The A records the client got, in order.
        answers: Vec<std::net::Ipv4Addr>,
        /// The mesh Service the proxy answered for.
        service: Option<String>,
        /// The resolver a forwarded query went to.
        upstream: Option<SocketAddr>,
        /// Why the proxy failed it.
        message: Option<String>,
    },
    /// An HBONE h2 connection was opened to another node proxy.
    TunnelOpened {
        source_node: String,
        destination_node: String,
        gateway: SocketAddr,
        source_identity: String,
        destination_identity: String,
    },
    TunnelClosed {
        source_node: String,
        destination_node: String,
        gateway: SocketAddr,
        streams: u64,
        reason: String,
    },
}

impl ProxyEvent {
    /// The client address of the TCP connection the event is about, for correlation. `None`
    /// for DNS events: a query's UDP port may be a TCP connection's port too
    /// ([`ProxyEvent::dns_client`]).
    pub fn client(&self) -> Option<SocketAddr> {
        match self {
            ProxyEvent::OutboundRoute { client, .. }
            | ProxyEvent::InboundVerdict { client, .. }
            | ProxyEvent::ConnectionClosed { client, .. } => Some(*client),
            ProxyEvent::Error { client, .. } => *client,
            ProxyEvent::Dns { .. }
            | ProxyEvent::TunnelOpened { .. }
            | ProxyEvent::TunnelClosed { .. } => None,
        }
    }

    /// The querying socket of a DNS event, with its transport (`udp`, `tcp`).
    pub fn dns_client(&self) -> Option<(SocketAddr, &str)> {
        match self {
            ProxyEvent::Dns { client, transport, .. } => Some((*client, transport.as_str())),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ProxyEvent::OutboundRoute { .. } => "outbound-route",
            ProxyEvent::InboundVerdict { .. } => "inbound-verdict",
            ProxyEvent::Error { .. } => "error",
            ProxyEvent::ConnectionClosed { .. } => "connection-closed",
            ProxyEvent::Dns { .. } => "dns",
            ProxyEvent::TunnelOpened { .. } => "tunnel-opened",
            ProxyEvent::TunnelClosed { .. } => "tunnel-closed",
        }
    }
}

/// Where events go besides `tracing`.
pub trait EventSink: Send + Sync + fmt::Debug {
    fn emit(&self, event: &ProxyEvent);
}

/// Drops events (tracing still logs them).
#[derive(Debug, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn emit(&self, _: &ProxyEvent) {}
}

/// Keeps every event in order (tests, the simulator).
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<ProxyEvent>>,
}

impl RecordingSink {
    pub fn events(&self) -> Vec<ProxyEvent> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Events about one client connection.
    pub fn for_client(&self, client: SocketAddr) -> Vec<ProxyEvent> {
        self.events().into_iter().filter(|e| e.client() == Some(client)).collect()
    }
}

impl EventSink for RecordingSink {
    fn emit(&self, event: &ProxyEvent) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(event.clone());
    }
}

/// Log to tracing and hand to the sink.
pub(crate) fn emit(sink: &dyn EventSink, event: ProxyEvent) {
    if tracing::enabled!(target: "ambient_proxy::access", tracing::Level::INFO) {
        let json = serde_json::to_string(&event).unwrap_or_default();
        tracing::info!(target: "ambient_proxy::access", kind = event.kind(), client = ?event.client(), "{json}");
    }
    sink.emit(&event);
}

/// Monotonic counters, named `family.label.label`; snapshots are sorted.
///
/// - `connections.<direction>.<result>` — result: `ok`, `denied`, `error`, `reset`, `revoked`
/// - `bytes.<direction>.sent` / `.received`
/// - `tunnels.opened`, `tunnels.reused`, `tunnels.closed`, `tunnels.keepalive_pongs`
/// - `dns.answered`, `dns.forwarded`, `dns.failed`
#[derive(Debug, Default)]
pub struct Counters {
    values: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn add(&self, name: &str, n: u64) {
        let mut v = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *v.entry(name.to_string()).or_insert(0) += n;
    }

    pub fn get(&self, name: &str) -> u64 {
        self.values.lock().unwrap_or_else(|e| e.into_inner()).get(name).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.values.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_stable_shape() {
        let e = ProxyEvent::InboundVerdict {
            node: "node-b".into(),
            client: "10.0.1.5:40000".parse().unwrap(),
            direction: Direction::InboundHbone,
            destination: "10.0.2.5:8080".parse().unwrap(),
            source_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
            allowed: false,
            reason: "denied by a DENY policy".into(),
            policy: Some("deny-all.default".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"inbound-verdict","node":"node-b","client":"10.0.1.5:40000","direction":"inbound-hbone","destination":"10.0.2.5:8080","source_identity":"spiffe://cluster.local/ns/default/sa/sleep","allowed":false,"reason":"denied by a DENY policy","policy":"deny-all.default"}"#
        );
    }
}
