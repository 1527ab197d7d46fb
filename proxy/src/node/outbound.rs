//! Port 15001: connections captured from a local app. Route decision, then HBONE through the
//! pool or passthrough.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::time::{Instant, timeout};

use super::{Flight, Inner};
use crate::copy::{self, CopyError};
use crate::events::{CloseResult, Direction, Path, ProxyEvent};
use crate::inpod::PROXY_MARK;
use crate::net::{Accepted, ConnectOptions, Network};
use crate::pool::{Checkout, Lease, PoolKey};
use crate::route::{HbonePlan, OutboundPlan, plan_outbound};

const DIR: Direction = Direction::Outbound;

/// Who a proxied connection joined: the client, where it went, and this proxy's own socket
/// towards it (absent when it went through a tunnel).
pub(crate) struct Ends {
    pub client: SocketAddr,
    pub destination: SocketAddr,
    pub upstream: Option<SocketAddr>,
}

impl<N: Network> Inner<N> {
    pub(crate) async fn outbound(
        self: Arc<Self>,
        pod_ip: IpAddr,
        netns: N::Netns,
        acc: Accepted<N::Stream>,
    ) {
        let _busy = self.busy();
        let client = acc.peer;
        let Some(original_dst) = acc.original_dst else {
            self.error(
                Some(client),
                DIR,
                "route",
                None,
                "no original destination: the connection was not redirected".into(),
            );
            self.count_conn(DIR, "error");
            return;
        };
        let mesh = self.mesh.load();
        let plan = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            plan_outbound(&mesh, &self.config.node, pod_ip, client.ip(), original_dst, &mut *rng)
        };
        match plan {
            Err(reject) => {
                self.error(Some(client), DIR, "route", None, reject.to_string());
                self.count_conn(DIR, "error");
            }
            Ok(OutboundPlan::Passthrough { dst, service }) => {
                self.emit(ProxyEvent::OutboundRoute {
                    node: self.config.node.clone(),
                    client,
                    original_dst,
                    path: Path::Passthrough,
                    endpoint: dst,
                    service,
                    source_identity: None,
                    destination_identity: None,
                    tunnel_reused: None,
                    tunnel: None,
                });
                self.passthrough(pod_ip, netns, acc.stream, client, dst).await;
            }
            Ok(OutboundPlan::Hbone(plan)) => {
                // The plan checked the client is the pod: its workload is the source.
                let Some(source) = mesh.workload(pod_ip).cloned() else { return };
                self.outbound_hbone(netns, acc.stream, client, original_dst, &plan, &source).await;
            }
        }
    }

    async fn passthrough(
        &self,
        pod_ip: IpAddr,
        netns: N::Netns,
        mut stream: N::Stream,
        client: SocketAddr,
        dst: SocketAddr,
    ) {
        let start = Instant::now();
        let opts =
            ConnectOptions { mark: Some(PROXY_MARK), source: Some(SocketAddr::new(pod_ip, 0)) };
        let upstream =
            timeout(self.config.connect_timeout, self.network.connect(&netns, dst, &opts)).await;
        let mut upstream = match upstream {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return self.refuse(stream, client, "connect", format!("connect to {dst}: {e}"));
            }
            Err(_) => {
                return self.refuse(
                    stream,
                    client,
                    "connect",
                    format!("connect to {dst} timed out"),
                );
            }
        };
        let upstream_local = self.network.local_addr(&upstream).ok();
        let flight = self.flight(DIR, client, dst, start);
        let r = copy::tcp_tcp(
            &mut stream,
            &mut upstream,
            self.config.buffer_size,
            ("client", "upstream"),
            &flight.moved,
            self.config.limits.connection_idle,
        )
        .await;
        let result = match r {
            Ok(()) => CloseResult::Ok,
            Err(e) => {
                let result = CloseResult::from_copy_error(&e);
                self.reset(stream);
                self.reset(upstream);
                result
            }
        };
        let ends = Ends { client, destination: dst, upstream: upstream_local };
        self.closed_in(DIR, ends, flight, start, result);
    }

    /// Refuse a captured connection whose upstream could not be reached: reset, so the app sees
    /// the failure as it would without a proxy.
    fn refuse(&self, stream: N::Stream, client: SocketAddr, stage: &str, message: String) {
        self.error(Some(client), DIR, stage, None, message);
        self.count_conn(DIR, "error");
        self.reset(stream);
    }

    /// A proxied connection ended: count it and log `connection-closed` (unless a drain
    /// deadline already did, as it cut the connection).
    pub(crate) fn closed_in(
        &self,
        direction: Direction,
        ends: Ends,
        flight: Flight,
        start: Instant,
        result: CloseResult,
    ) {
        if !self.land(&flight) {
            return;
        }
        let Ends { client, destination, upstream } = ends;
        let (sent, received) = flight.moved.get();
        let d = direction.as_str();
        self.count(&format!("bytes.{d}.sent"), sent);
        self.count(&format!("bytes.{d}.received"), received);
        self.count_conn(
            direction,
            match &result {
                CloseResult::Ok => "ok",
                CloseResult::Reset { .. } => "reset",
                CloseResult::PolicyRevoked { .. } => "revoked",
                CloseResult::Shutdown => "shutdown",
                CloseResult::IdleTimeout { .. } => "idle",
            },
        );
        self.emit(ProxyEvent::ConnectionClosed {
            node: self.config.node.clone(),
            client,
            direction,
            destination,
            bytes_sent: sent,
            bytes_received: received,
            duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            result,
            upstream,
        });
    }

    /// A stream slot on a tunnel for `plan`: pooled, or freshly dialed (reused = false).
    async fn tunnel(
        self: &Arc<Self>,
        netns: &N::Netns,
        plan: &HbonePlan,
        source_ip: IpAddr,
    ) -> Result<(Lease, bool), (String, String)> {
        #[allow(unused_mut)] // mutated only with a planted bug
        let mut key = PoolKey {
            source_identity: plan.source_identity.clone(),
            destination_identity: plan.destination_identity.clone(),
            gateway: plan.gateway,
            source_ip,
        };
        #[cfg(feature = "planted-bugs")]
        if self.planted(crate::faults::PlantedBug::PoolKeyIgnoresSource) {
            key.source_identity = key.destination_identity.clone();
            key.source_ip = key.gateway.ip();
        }
        match self.pool.checkout(&key).await {
            Ok(Checkout::Reuse(lease)) => Ok((lease, true)),
            Ok(Checkout::Dial(permit)) => match self.dial(netns, plan, source_ip).await {
                Ok((send, h2conn)) => {
                    let lease = permit.succeed(send);
                    self.count("tunnels.opened", 1);
                    self.emit(ProxyEvent::TunnelOpened {
                        source_node: self.config.node.clone(),
                        destination_node: plan.destination_node.clone(),
                        gateway: plan.gateway,
                        source_identity: plan.source_identity.to_string(),
                        destination_identity: plan.destination_identity.to_string(),
                    });
                    self.spawn(self.clone().drive_tunnel(
                        lease.conn.clone(),
                        h2conn,
                        plan.destination_node.clone(),
                    ));
                    Ok((lease, false))
                }
                Err(e) => {
                    permit.fail(&e.message);
                    Err((e.stage.to_string(), e.message))
                }
            },
            Err(e) => Err(("connect".to_string(), e)),
        }
    }

    /// The route decision of an HBONE connection; `reused` is `None` when no tunnel could be had.
    fn hbone_route_event(
        &self,
        client: SocketAddr,
        original_dst: SocketAddr,
        plan: &HbonePlan,
        reused: Option<bool>,
    ) {
        self.emit(ProxyEvent::OutboundRoute {
            node: self.config.node.clone(),
            client,
            original_dst,
            path: Path::Hbone,
            endpoint: plan.authority,
            service: plan.service.clone(),
            source_identity: Some(plan.source_identity.to_string()),
            destination_identity: Some(plan.destination_identity.to_string()),
            tunnel_reused: reused,
            tunnel: Some(format!("{}->{}", self.config.node, plan.destination_node)),
        });
    }

    async fn outbound_hbone(
        self: &Arc<Self>,
        netns: N::Netns,
        mut stream: N::Stream,
        client: SocketAddr,
        original_dst: SocketAddr,
        plan: &HbonePlan,
        source: &crate::mesh::Workload,
    ) {
        let start = Instant::now();
        // A pooled tunnel may have been told to go away (GOAWAY) since it was pooled: one retry.
        let mut attempt = 0;
        let (lease, reused, mut send, response) = loop {
            attempt += 1;
            let (lease, reused) = match self.tunnel(&netns, plan, client.ip()).await {
                Ok(t) => t,
                Err((stage, message)) => {
                    self.hbone_route_event(client, original_dst, plan, None);
                    return self.refuse(stream, client, &stage, message);
                }
            };
            let req = self.connect_request(plan.authority, client, source);
            let sent = async {
                let mut sender = lease.conn.send.clone().ready().await?;
                sender.send_request(req, false)
            }
            .await;
            match sent {
                Ok((response, send)) => break (lease, reused, send, response),
                Err(e) if reused && attempt == 1 => {
                    self.pool.remove(&lease.conn);
                    tracing::debug!(error = %e, "pooled tunnel refused a stream; dialing");
                }
                Err(e) => {
                    return self.refuse(stream, client, "h2", format!("opening a stream: {e}"));
                }
            }
        };
        if reused {
            self.count("tunnels.reused", 1);
        }
        self.hbone_route_event(client, original_dst, plan, Some(reused));
        let response = match timeout(self.config.connect_timeout, response).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return self.refuse(
                    stream,
                    client,
                    "h2",
                    format!("CONNECT {}: {e}", plan.authority),
                );
            }
            Err(_) => {
                return self.refuse(
                    stream,
                    client,
                    "h2",
                    format!("CONNECT {} timed out", plan.authority),
                );
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            self.error(
                Some(client),
                DIR,
                "upstream",
                Some(status),
                format!("CONNECT {} answered {status}", plan.authority),
            );
            if status == 401 {
                // Denied by policy: close the app's connection without data.
                self.count_conn(DIR, "denied");
                drop(stream);
            } else {
                // The destination could not be reached: the app sees a reset, as without a proxy.
                self.count_conn(DIR, "error");
                self.reset(stream);
            }
            return;
        }
        let mut recv = response.into_body();
        let flight = self.flight(DIR, client, plan.authority, start);
        let r = copy::tcp_h2(
            &mut stream,
            &mut send,
            &mut recv,
            self.config.buffer_size,
            "client",
            &flight.moved,
            self.config.limits.connection_idle,
        )
        .await;
        let result = match r {
            Ok(()) => CloseResult::Ok,
            Err(e) => {
                if let CopyError::Tcp { .. } | CopyError::Idle(_) = e {
                    send.send_reset(h2::Reason::CANCEL);
                }
                self.reset(stream);
                CloseResult::from_copy_error(&e)
            }
        };
        drop(lease);
        let ends = Ends { client, destination: plan.authority, upstream: None };
        self.closed_in(DIR, ends, flight, start, result);
    }
}
