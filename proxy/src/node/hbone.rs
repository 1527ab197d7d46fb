//! HBONE client side: dialing a tunnel (TCP → TLS → h2), driving it (keepalive, idle close),
//! and building CONNECT requests.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::client::TlsStream;

use super::Inner;
use crate::events::ProxyEvent;
use crate::faults::{FaultPoint, INJECTED};
use crate::inbound::forwarded_for;
use crate::inpod::PROXY_MARK;
use crate::mesh::Workload;
use crate::net::{ConnectOptions, Network};
use crate::pool::Pooled;
use crate::route::HbonePlan;
use crate::tls::{ALPN_H2, describe_error};

pub(crate) type TunnelConn<S> = h2::client::Connection<TlsStream<S>, Bytes>;

/// A failed dial: the stage (`connect`, `tls`, `h2`) and why.
pub(crate) struct DialError {
    pub stage: &'static str,
    pub message: String,
}

impl<N: Network> Inner<N> {
    /// Open a tunnel from `source_ip` (in `netns`) to the plan's gateway.
    pub(crate) async fn dial(
        &self,
        netns: &N::Netns,
        plan: &HbonePlan,
        source_ip: IpAddr,
    ) -> Result<(SendRequest<Bytes>, TunnelConn<N::Stream>), DialError> {
        let cfg = &self.config;
        let err = |stage, message| DialError { stage, message };
        if self.fault(FaultPoint::DialFails) {
            let why =
                format!("connect to {}: {INJECTED} ({})", plan.gateway, FaultPoint::DialFails);
            return Err(err("connect", why));
        }
        // In a pod's own netns the source would be the pod IP anyway; binding it keeps that
        // true when pods share a namespace.
        let opts =
            ConnectOptions { mark: Some(PROXY_MARK), source: Some(SocketAddr::new(source_ip, 0)) };
        let tcp = timeout(cfg.connect_timeout, self.network.connect(netns, plan.gateway, &opts))
            .await
            .map_err(|_| err("connect", format!("connect to {} timed out", plan.gateway)))?
            .map_err(|e| err("connect", format!("connect to {}: {e}", plan.gateway)))?;
        let tls_cfg = cfg
            .tls
            .client_config(&plan.source_identity, &plan.destination_identity)
            .map_err(|e| err("tls", e.to_string()))?;
        let name = ServerName::IpAddress(plan.gateway.ip().into());
        let tls = timeout(
            cfg.connect_timeout,
            tokio_rustls::TlsConnector::from(tls_cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| err("tls", format!("TLS handshake with {} timed out", plan.gateway)))?
        .map_err(|e| err("tls", describe_error(&e)))?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(err("tls", format!("{} did not negotiate ALPN h2", plan.gateway)));
        }
        let window = cfg.h2_window;
        h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window.saturating_mul(4))
            .max_concurrent_streams(0)
            .max_header_list_size(cfg.limits.max_header_list)
            .enable_push(false)
            .handshake(tls)
            .await
            .map_err(|e| err("h2", format!("h2 handshake with {}: {e}", plan.gateway)))
    }

    /// Poll a pooled tunnel until it closes: keepalive pings, idle close, drain.
    pub(crate) async fn drive_tunnel(
        self: Arc<Self>,
        conn: Arc<Pooled>,
        mut h2conn: TunnelConn<N::Stream>,
        destination_node: String,
    ) {
        let pool = self.pool.clone();
        let cfg = pool.config().clone();
        let mut ping = h2conn.ping_pong();
        let mut next_ping = Instant::now() + cfg.keepalive_interval;
        let mut pong_deadline: Option<Instant> = None;
        let draining = self.draining();
        let far = Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
        let reason = loop {
            conn.set_peer_max(h2conn.max_concurrent_send_streams(), cfg.max_streams_per_conn);
            let idle_at = conn.idle_since().map(|t| t + cfg.idle_timeout);
            tokio::select! {
                biased;
                r = &mut h2conn => break match r {
                    Ok(()) => "closed".to_string(),
                    Err(e) => format!("connection error: {e}"),
                },
                _ = conn.wake.notified() => {
                    if draining.get() && pool.retire_if_unused(&conn) {
                        break "drained".to_string();
                    }
                    // Out of the pool (its pod was removed, or it refused a stream): no new
                    // stream will come, so it closes once its last one is over.
                    if conn.is_closed() && conn.active() == 0 {
                        break "out of the pool and unused".to_string();
                    }
                }
                _ = draining.wait_for(|d| *d), if !draining.get() => {
                    if pool.retire_if_unused(&conn) {
                        break "drained".to_string();
                    }
                }
                _ = sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    if pool.retire_if_idle(&conn, Instant::now()) {
                        break format!("idle for {:?}", cfg.idle_timeout);
                    }
                }
                pong = poll_fn(|cx| match ping.as_mut() {
                    Some(p) => p.poll_pong(cx),
                    None => std::task::Poll::Pending,
                }), if pong_deadline.is_some() => {
                    pong_deadline = None;
                    if let Err(e) = pong {
                        break format!("keepalive failed: {e}");
                    }
                    self.count("tunnels.keepalive_pongs", 1);
                }
                _ = sleep_until(pong_deadline.unwrap_or(far)), if pong_deadline.is_some() => {
                    break format!("keepalive: no PING reply within {:?}", cfg.keepalive_timeout);
                }
                _ = sleep_until(next_ping), if pong_deadline.is_none() && ping.is_some() => {
                    if let Some(p) = ping.as_mut()
                        && p.send_ping(h2::Ping::opaque()).is_ok()
                    {
                        pong_deadline = Some(Instant::now() + cfg.keepalive_timeout);
                    }
                    next_ping = Instant::now() + cfg.keepalive_interval;
                }
            }
        };
        pool.remove(&conn);
        self.count("tunnels.closed", 1);
        self.emit(ProxyEvent::TunnelClosed {
            source_node: self.config.node.clone(),
            destination_node,
            gateway: conn.key.gateway,
            streams: conn.streams_total(),
            reason,
        });
    }

    /// The CONNECT request for `authority`, with `Forwarded`, `traceparent` and `baggage`.
    pub(crate) fn connect_request(
        &self,
        authority: SocketAddr,
        client: SocketAddr,
        source: &Workload,
    ) -> http::Request<()> {
        let (trace, span): (u128, u64) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let trace = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            (trace.max(1), rng.next_u64().max(1))
        };
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() =
            http::Uri::builder().authority(authority.to_string()).build().unwrap_or_default();
        let h = req.headers_mut();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        put("forwarded", forwarded_for(client));
        put("traceparent", format!("00-{trace:032x}-{span:016x}-01"));
        put(
            "baggage",
            format!(
                "k8s.namespace.name={},k8s.pod.name={},k8s.node.name={}",
                source.namespace, source.name, source.node
            ),
        );
        req
    }
}
