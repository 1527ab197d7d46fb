//! Ports 15008 (HBONE: TLS, h2, CONNECT) and 15006 (plaintext): validate, authorize, connect to
//! the app with the client's address as source, copy; live connections are registered so a
//! policy change can revoke them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use tokio::time::{Instant, timeout};

use super::outbound::Ends;
use super::{Admitted, Inner};
use crate::copy::{self, CopyError};
use crate::events::{CloseResult, Direction, ProxyEvent};
use crate::faults::{FaultPoint, INJECTED};
use crate::frames::{BlockClock, HeaderBlocks, Watched};
use crate::identity::Identity;
use crate::inbound::{ConnectRequest, check_connect, check_plaintext, parse_forwarded_for};
use crate::inpod::PROXY_MARK;
use crate::net::{Accepted, ConnectOptions, Network};
use crate::policy::{ConnectionAttrs, Verdict};
use crate::signal::Signal;
use crate::tls::{describe_error, peer_identity};

fn respond_status(respond: &mut SendResponse<Bytes>, status: u16) {
    let mut resp = http::Response::new(());
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    let _ = respond.send_response(resp, true);
}

impl<N: Network> Inner<N> {
    fn verdict_event(
        &self,
        client: SocketAddr,
        direction: Direction,
        destination: SocketAddr,
        id: Option<&Identity>,
        v: &Verdict,
    ) {
        self.emit(ProxyEvent::InboundVerdict {
            node: self.config.node.clone(),
            client,
            direction,
            destination,
            source_identity: id.map(|i| i.to_string()),
            allowed: v.allowed,
            reason: v.reason.to_string(),
            policy: v.policy.clone(),
        });
    }

    /// One TLS + h2 connection on 15008; each CONNECT stream gets its own task. It goes away
    /// (GOAWAY) when the node drains or its pod is removed (`pod_draining`), and is closed when
    /// a header block stays unfinished past `limits.header_timeout` or no stream is open for
    /// `limits.inbound_idle`. `admitted` holds its place in the admission table. Keepalive as
    /// on the source side (a PING every interval, closed without a reply within the timeout): a
    /// tunnel whose source vanished without a close reaching here (a partition that never
    /// heals, a deleted pod behind one) is closed with its streams instead of held forever.
    pub(crate) async fn inbound_hbone(
        self: Arc<Self>,
        acceptor: tokio_rustls::TlsAcceptor,
        acc: Accepted<N::Stream>,
        pod_draining: Arc<Signal<bool>>,
        mut admitted: Admitted<N>,
    ) {
        const DIR: Direction = Direction::InboundHbone;
        let _busy = self.busy();
        let peer = acc.peer;
        if self.fault(FaultPoint::SlowTls) {
            let delay = self.config.faults.as_ref().map(|f| f.tls_delay()).unwrap_or_default();
            tokio::time::sleep(delay).await;
        }
        // Refusals reset the connection rather than dropping it: a dropped socket sends a FIN or
        // a RST depending on whether the client's bytes had arrived, and that race should not
        // decide what the client sees.
        let handshake = acceptor.accept(acc.stream).into_fallible();
        let tls = match timeout(self.config.connect_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err((e, stream))) => {
                self.error(Some(peer), DIR, "tls", None, describe_error(&e));
                self.reset(stream);
                return self.count_conn(DIR, "error");
            }
            Err(_) => {
                self.error(Some(peer), DIR, "tls", None, "TLS handshake timed out".into());
                return self.count_conn(DIR, "error");
            }
        };
        let Some(peer_id) = peer_identity(tls.get_ref().1) else {
            self.error(Some(peer), DIR, "tls", None, "client presented no SPIFFE identity".into());
            self.reset(tls.into_inner().0);
            return self.count_conn(DIR, "error");
        };
        admitted.established();
        let limits = self.config.limits.clone();
        let blocks = Arc::new(BlockClock::default());
        let tls = Watched::new(tls, HeaderBlocks::server(), blocks.clone());
        let window = self.config.h2_window;
        let handshake = h2::server::Builder::new()
            .max_concurrent_streams(200)
            .max_header_list_size(limits.max_header_list)
            .initial_window_size(window)
            .initial_connection_window_size(window.saturating_mul(4))
            .handshake::<_, Bytes>(tls);
        let mut conn = match timeout(self.config.connect_timeout, handshake).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                self.error(Some(peer), DIR, "h2", None, format!("h2 handshake: {e}"));
                return self.count_conn(DIR, "error");
            }
            Err(_) => {
                self.error(Some(peer), DIR, "h2", None, "h2 handshake timed out".into());
                return self.count_conn(DIR, "error");
            }
        };
        let draining = self.draining();
        let streams = Arc::new(OpenStreams::default());
        let mut going_away = false;
        let (interval, wait) =
            (self.config.pool.keepalive_interval, self.config.pool.keepalive_timeout);
        let mut ping = conn.ping_pong();
        let mut next_ping = Instant::now() + interval;
        let mut pong_deadline: Option<Instant> = None;
        let far = Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);
        loop {
            if !going_away && (draining.get() || pod_draining.get()) {
                conn.graceful_shutdown();
                going_away = true;
            }
            let header_deadline = blocks.open_since().map(|t| t + limits.header_timeout);
            let idle_deadline = streams.idle_since().map(|t| t + limits.inbound_idle);
            tokio::select! {
                biased;
                _ = draining.wait_for(|d| *d), if !going_away => {}
                _ = pod_draining.wait_for(|d| *d), if !going_away => {}
                _ = blocks.changed.notified() => {}
                _ = streams.changed.notified() => {}
                _ = tokio::time::sleep_until(header_deadline.unwrap_or(far)), if header_deadline.is_some() => {
                    if blocks.open_since().is_some_and(|t| t + limits.header_timeout <= Instant::now()) {
                        let why = format!("header block not finished within {:?}: connection closed", limits.header_timeout);
                        self.error(Some(peer), DIR, "h2", None, why);
                        self.count("connections.inbound-hbone.header-timeout", 1);
                        break;
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline.unwrap_or(far)), if idle_deadline.is_some() && !going_away => {
                    if streams.idle_since().is_some_and(|t| t + limits.inbound_idle <= Instant::now()) {
                        tracing::debug!(node = %self.config.node, %peer, "inbound tunnel idle: GOAWAY");
                        conn.graceful_shutdown();
                        going_away = true;
                    }
                }
                pong = std::future::poll_fn(|cx| match ping.as_mut() {
                    Some(p) => p.poll_pong(cx),
                    None => std::task::Poll::Pending,
                }), if pong_deadline.is_some() => {
                    pong_deadline = None;
                    if let Err(e) = pong {
                        tracing::debug!(node = %self.config.node, %peer, error = %e, "inbound tunnel keepalive failed");
                        break;
                    }
                }
                _ = tokio::time::sleep_until(pong_deadline.unwrap_or(far)), if pong_deadline.is_some() => {
                    tracing::debug!(node = %self.config.node, %peer, "inbound tunnel: no PING reply within {wait:?}");
                    break;
                }
                _ = tokio::time::sleep_until(next_ping), if pong_deadline.is_none() && ping.is_some() => {
                    if let Some(p) = ping.as_mut()
                        && p.send_ping(h2::Ping::opaque()).is_ok()
                    {
                        pong_deadline = Some(Instant::now() + wait);
                    }
                    next_ping = Instant::now() + interval;
                }
                r = conn.accept() => match r {
                    Some(Ok((req, respond))) => {
                        let me = self.clone();
                        let (open, id) = (streams.open(), peer_id.clone());
                        self.spawn(async move {
                            me.inbound_stream(req, respond, id, peer).await;
                            drop(open);
                        });
                        if !going_away && self.fault(FaultPoint::GoAway) {
                            conn.graceful_shutdown();
                            going_away = true;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(node = %self.config.node, %peer, error = %e, "inbound tunnel ended");
                        break;
                    }
                    None => break,
                },
            }
        }
    }

    async fn inbound_stream(
        self: Arc<Self>,
        req: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        peer_id: Identity,
        peer: SocketAddr,
    ) {
        const DIR: Direction = Direction::InboundHbone;
        let _busy = self.busy();
        let start = Instant::now();
        let client = req
            .headers()
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_forwarded_for)
            .unwrap_or(peer);
        let mesh = self.mesh.load();
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        let checked = check_connect(
            &mesh,
            &self.config.node,
            ConnectRequest { method: req.method().as_str(), authority: authority.as_deref() },
        );
        let (target, workload) = match checked {
            Ok(t) => t,
            Err(rej) => {
                respond_status(&mut respond, rej.status);
                self.error(Some(client), DIR, "request", Some(rej.status), rej.reason);
                return self.count_conn(DIR, "error");
            }
        };
        let attrs = ConnectionAttrs {
            source_ip: peer.ip(),
            source_identity: Some(peer_id),
            destination_ip: target.ip(),
            destination_port: target.port(),
        };
        let verdict = self.authorize(mesh.policies(), workload, &attrs);
        self.verdict_event(client, DIR, target, attrs.source_identity.as_ref(), &verdict);
        if !verdict.allowed {
            respond_status(&mut respond, 401);
            return self.count_conn(DIR, "denied");
        }
        let workload_ip = workload.ip;
        drop(mesh);
        let Some(netns) = self.netns_of(target.ip()) else {
            respond_status(&mut respond, 503);
            self.error(
                Some(client),
                DIR,
                "upstream",
                Some(503),
                format!("pod {} is not served by this proxy", target.ip()),
            );
            return self.count_conn(DIR, "error");
        };
        let mut app = match self.connect_app(&netns, target, peer.ip()).await {
            Ok(s) => s,
            Err(message) => {
                respond_status(&mut respond, 503);
                self.error(Some(client), DIR, "upstream", Some(503), message);
                return self.count_conn(DIR, "error");
            }
        };
        let app_local = self.network.local_addr(&app).ok();
        let mut resp = http::Response::new(());
        *resp.status_mut() = http::StatusCode::OK;
        let mut send = match respond.send_response(resp, false) {
            Ok(s) => s,
            Err(e) => {
                self.reset(app);
                self.error(Some(client), DIR, "h2", None, format!("responding: {e}"));
                return self.count_conn(DIR, "error");
            }
        };
        let mut recv = req.into_body();
        if self.fault(FaultPoint::StreamReset) {
            send.send_reset(h2::Reason::CANCEL);
            self.network.reset(app);
            let result = CloseResult::Reset {
                side: INJECTED.to_string(),
                message: format!("{INJECTED} ({})", FaultPoint::StreamReset),
            };
            let ends = Ends { client, destination: target, upstream: app_local };
            let flight = self.flight(DIR, client, target, start);
            return self.closed_in(DIR, ends, flight, start, result);
        }
        let (live, revoked) = self.register_live(workload_ip, attrs);
        let flight = self.flight(DIR, client, target, start);
        let (buf, idle) = (self.config.buffer_size, self.config.limits.connection_idle);
        let outcome = tokio::select! {
            biased;
            reason = revoked => Err(reason.ok()),
            r = copy::tcp_h2(&mut app, &mut send, &mut recv, buf, "app", &flight.moved, idle) => Ok(r),
        };
        self.unregister_live(live);
        let result = match outcome {
            Ok(Ok(())) => CloseResult::Ok,
            Ok(Err(e)) => {
                if let CopyError::Tcp { .. } | CopyError::Idle(_) = e {
                    send.send_reset(h2::Reason::CANCEL);
                }
                self.reset(app);
                CloseResult::from_copy_error(&e)
            }
            Err(reason) => {
                send.send_reset(h2::Reason::CANCEL);
                self.reset(app);
                let reason = reason.unwrap_or_else(|| "revoked".into());
                tracing::info!(node = %self.config.node, %client, %reason, "closing a connection no longer allowed");
                CloseResult::PolicyRevoked { reason }
            }
        };
        let ends = Ends { client, destination: target, upstream: app_local };
        self.closed_in(DIR, ends, flight, start, result);
    }

    /// Connect to a local app as `client_ip` (transparent), marked so replies come back to us.
    async fn connect_app(
        &self,
        netns: &N::Netns,
        target: SocketAddr,
        client_ip: IpAddr,
    ) -> Result<N::Stream, String> {
        let opts =
            ConnectOptions { mark: Some(PROXY_MARK), source: Some(SocketAddr::new(client_ip, 0)) };
        match timeout(self.config.connect_timeout, self.network.connect(netns, target, &opts)).await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("connect to {target}: {e}")),
            Err(_) => Err(format!("connect to {target} timed out")),
        }
    }

    /// 15006: a plaintext connection from outside the mesh.
    pub(crate) async fn inbound_plaintext(
        self: Arc<Self>,
        pod_ip: IpAddr,
        acc: Accepted<N::Stream>,
    ) {
        const DIR: Direction = Direction::InboundPlaintext;
        let _busy = self.busy();
        let start = Instant::now();
        let client = acc.peer;
        let mut stream = acc.stream;
        let dst = acc.original_dst.unwrap_or(acc.local);
        let mesh = self.mesh.load();
        let workload = match check_plaintext(&mesh, &self.config.node, dst) {
            Ok(w) => w,
            Err(rej) => {
                self.error(Some(client), DIR, "request", None, rej.reason);
                self.reset(stream);
                return self.count_conn(DIR, "error");
            }
        };
        let attrs = ConnectionAttrs {
            source_ip: client.ip(),
            source_identity: None,
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        };
        let verdict = self.authorize(mesh.policies(), workload, &attrs);
        self.verdict_event(client, DIR, dst, None, &verdict);
        if !verdict.allowed {
            self.reset(stream);
            return self.count_conn(DIR, "denied");
        }
        let workload_ip = workload.ip;
        drop(mesh);
        let Some(netns) = self.netns_of(dst.ip()).or_else(|| self.netns_of(pod_ip)) else {
            let message = format!("pod {} is not served by this proxy", dst.ip());
            self.error(Some(client), DIR, "upstream", None, message);
            self.reset(stream);
            return self.count_conn(DIR, "error");
        };
        let mut app = match self.connect_app(&netns, dst, client.ip()).await {
            Ok(s) => s,
            Err(message) => {
                self.error(Some(client), DIR, "upstream", None, message);
                self.reset(stream);
                return self.count_conn(DIR, "error");
            }
        };
        let app_local = self.network.local_addr(&app).ok();
        let (live, revoked) = self.register_live(workload_ip, attrs);
        let flight = self.flight(DIR, client, dst, start);
        let (buf, idle) = (self.config.buffer_size, self.config.limits.connection_idle);
        let names = ("client", "app");
        let outcome = tokio::select! {
            biased;
            reason = revoked => Err(reason.ok()),
            r = copy::tcp_tcp(&mut stream, &mut app, buf, names, &flight.moved, idle) => Ok(r),
        };
        self.unregister_live(live);
        let result = match outcome {
            Ok(Ok(())) => CloseResult::Ok,
            Ok(Err(e)) => {
                self.reset(stream);
                self.reset(app);
                CloseResult::from_copy_error(&e)
            }
            Err(reason) => {
                self.reset(stream);
                self.reset(app);
                CloseResult::PolicyRevoked { reason: reason.unwrap_or_else(|| "revoked".into()) }
            }
        };
        let ends = Ends { client, destination: dst, upstream: app_local };
        self.closed_in(DIR, ends, flight, start, result);
    }
}

/// The CONNECT streams open on one inbound h2 connection, and since when none is.
#[derive(Debug)]
struct OpenStreams {
    state: std::sync::Mutex<(usize, Option<Instant>)>,
    changed: tokio::sync::Notify,
}

impl Default for OpenStreams {
    fn default() -> Self {
        OpenStreams {
            state: std::sync::Mutex::new((0, Some(Instant::now()))),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl OpenStreams {
    fn open(self: &Arc<Self>) -> OpenStream {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *s = (s.0 + 1, None);
        OpenStream(self.clone())
    }

    fn idle_since(&self) -> Option<Instant> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// One open stream; dropping it may make the connection idle.
struct OpenStream(Arc<OpenStreams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = s.0.saturating_sub(1);
        if s.0 == 0 {
            s.1 = Some(Instant::now());
            self.0.changed.notify_one();
        }
    }
}
