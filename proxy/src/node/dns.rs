//! 15053: the DNS proxy in a captured pod's namespace — the socket shell around
//! [`crate::dns::decide`].
//!
//! Per pod: a UDP socket and a TCP listener on `127.0.0.1:15053` (where the in-pod rules
//! REDIRECT the pod's DNS, and the address an answer must leave from so conntrack un-NATs it
//! back to the server the app asked), both with the proxy's mark. Per query (its own task, in
//! the pod's handler group): parse it, decide, and answer — from the mesh, or by forwarding it
//! to the upstream resolver: over UDP from a fresh socket in the pod's namespace, connected to
//! the upstream and marked 0x539 (so the raw table puts the flow in conntrack zone 1 both ways),
//! with a query id from the proxy's seeded rng; an answer the upstream truncated is asked again
//! over TCP when the client came over TCP (a UDP client gets it truncated and retries over TCP
//! itself). The upstream's response is relayed byte for byte with the client's id; no answer
//! within `upstream_timeout`, or an ICMP error, is SERVFAIL. A query too short to carry an id
//! gets no answer; any other that does not parse gets FORMERR. Each query is one `dns` event.
//!
//! Not done (ztunnel's resolver does): retries, several upstreams, caching, EDNS.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::{Inner, PodSpec, TaskGroup, accept_loop};
use crate::dns::wire::{self, Flags, Message, Name, Rcode, rtype};
use crate::dns::{Decision, decide};
use crate::events::{DnsResult, ProxyEvent};
use crate::inpod::{DNS_CAPTURE_PORT, PROXY_MARK};
use crate::net::{ConnectOptions, Datagram, ListenOptions, Network, UdpOptions};

/// The largest message the proxy reads (DNS over TCP's limit).
const MESSAGE_MAX: usize = 65_535;

/// How a query reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A pod's two DNS sockets, bound.
pub(super) struct Bound<N: Network> {
    udp: Arc<N::Datagram>,
    tcp: N::Listener,
}

/// Binds 15053 (UDP and TCP) in `pod`'s namespace: on `127.0.0.1` in a pod of its own, on the
/// pod's listen address where pods share a namespace (loopback tests).
pub(super) async fn bind<N: Network>(
    inner: &Arc<Inner<N>>,
    pod: &PodSpec<N::Netns>,
) -> io::Result<Bound<N>> {
    let ip = match pod.listen_ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let at = SocketAddr::new(ip, DNS_CAPTURE_PORT);
    let udp_opts = UdpOptions { mark: Some(PROXY_MARK), peer: None };
    let udp = inner.network.bind_udp(&pod.netns, at, &udp_opts).await?;
    let tcp_opts = ListenOptions { mark: Some(PROXY_MARK), transparent: false };
    let tcp = inner.network.listen(&pod.netns, at, &tcp_opts).await?;
    Ok(Bound { udp: Arc::new(udp), tcp })
}

/// Starts serving the bound sockets; returns the two listener tasks.
pub(super) fn serve<N: Network>(
    inner: &Arc<Inner<N>>,
    bound: Bound<N>,
    pod_ip: IpAddr,
    netns: N::Netns,
    handlers: &TaskGroup,
) -> [u64; 2] {
    let udp =
        inner.spawn(udp_loop(inner.clone(), bound.udp, pod_ip, netns.clone(), handlers.clone()));
    let group = handlers.clone();
    let tcp = inner.spawn(accept_loop(inner.clone(), bound.tcp, move |i, a| {
        i.spawn_in(&group, tcp_client(i.clone(), a, pod_ip, netns.clone()));
    }));
    [udp, tcp]
}

async fn udp_loop<N: Network>(
    inner: Arc<Inner<N>>,
    sock: Arc<N::Datagram>,
    pod_ip: IpAddr,
    netns: N::Netns,
    handlers: TaskGroup,
) {
    let mut buf = vec![0u8; MESSAGE_MAX];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, client)) => {
                let query = buf[..n].to_vec();
                let (i, s, ns) = (inner.clone(), sock.clone(), netns.clone());
                inner.spawn_in(&handlers, async move {
                    let _busy = i.busy();
                    let Some(reply) = i.resolve(pod_ip, &ns, &query, client, Transport::Udp).await
                    else {
                        return;
                    };
                    if let Err(e) = s.send_to(&reply, client).await {
                        tracing::debug!(node = %i.config.node, %client, error = %e, "dns reply");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(node = %inner.config.node, error = %e, "dns receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One DNS-over-TCP client: queries one after another until it closes or idles.
async fn tcp_client<N: Network>(
    inner: Arc<Inner<N>>,
    acc: crate::net::Accepted<N::Stream>,
    pod_ip: IpAddr,
    netns: N::Netns,
) {
    let mut stream = acc.stream;
    let idle = inner.config.dns.tcp_idle;
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(timeout(idle, stream.read_exact(&mut prefix)).await, Ok(Ok(_))) {
            break;
        }
        let mut query = vec![0u8; wire::tcp_frame_len(prefix)];
        if !matches!(timeout(idle, stream.read_exact(&mut query)).await, Ok(Ok(_))) {
            break;
        }
        let _busy = inner.busy();
        let Some(reply) = inner.resolve(pod_ip, &netns, &query, acc.peer, Transport::Tcp).await
        else {
            continue;
        };
        let Some(framed) = wire::tcp_frame(&reply) else { break };
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

fn qtype_name(t: u16) -> String {
    match t {
        rtype::A => "A".into(),
        rtype::AAAA => "AAAA".into(),
        rtype::CNAME => "CNAME".into(),
        n => format!("TYPE{n}"),
    }
}

/// What one `dns` event says besides the query.
struct Logged {
    result: DnsResult,
    rcode: Rcode,
    answers: Vec<Ipv4Addr>,
    service: Option<String>,
    upstream: Option<SocketAddr>,
    message: Option<String>,
}

impl<N: Network> Inner<N> {
    /// The reply to one query from `client` of the pod at `pod_ip` (`None`: no reply at all).
    async fn resolve(
        self: &Arc<Self>,
        pod_ip: IpAddr,
        netns: &N::Netns,
        query: &[u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let fit = |m: &Message| match transport {
            Transport::Udp => m.encode_within(wire::UDP_MAX),
            Transport::Tcp => m.encode(),
        };
        let msg = match Message::parse(query) {
            Ok(m) => m,
            Err(e) => {
                let id = Message::peek_id(query)?;
                let flags = Flags { response: true, rcode: Rcode::FORMERR, ..Flags::default() };
                let reply = Message { id, flags, ..Message::default() };
                let logged = Logged::failed(Rcode::FORMERR, None, format!("malformed query: {e}"));
                self.log_dns(client, transport, None, logged);
                return Some(reply.encode());
            }
        };
        let mesh = self.mesh.load();
        let domain = Name::parse(&self.config.dns.domain).unwrap_or_default();
        let (reply, logged) = match decide(&msg, pod_ip, &mesh, &domain) {
            Decision::Answer { records, service } => {
                let reply = Message::response(&msg, Rcode::NOERROR, true, records);
                let logged = Logged {
                    result: DnsResult::Answered,
                    rcode: Rcode::NOERROR,
                    answers: reply.addresses(),
                    service: Some(service),
                    upstream: None,
                    message: None,
                };
                (fit(&reply), logged)
            }
            Decision::Fail { rcode, reason } => {
                let reply = Message::response(&msg, rcode, false, Vec::new());
                (fit(&reply), Logged::failed(rcode, None, reason.to_string()))
            }
            Decision::Forward => match self.forward(netns, &msg, query, transport).await {
                Ok((bytes, upstream)) => {
                    let parsed = Message::parse(&bytes).ok();
                    let logged = Logged {
                        result: DnsResult::Forwarded,
                        rcode: parsed.as_ref().map_or(Rcode(0xff), |m| m.flags.rcode),
                        answers: parsed.map(|m| m.addresses()).unwrap_or_default(),
                        service: None,
                        upstream: Some(upstream),
                        message: None,
                    };
                    (bytes, logged)
                }
                Err((why, upstream)) => {
                    let reply = Message::response(&msg, Rcode::SERVFAIL, false, Vec::new());
                    (fit(&reply), Logged::failed(Rcode::SERVFAIL, upstream, why))
                }
            },
        };
        self.log_dns(client, transport, msg.questions.first(), logged);
        Some(reply)
    }

    fn log_dns(
        &self,
        client: SocketAddr,
        transport: Transport,
        question: Option<&wire::Question>,
        logged: Logged,
    ) {
        self.count(&format!("dns.{}", logged.result.as_str()), 1);
        self.emit(ProxyEvent::Dns {
            node: self.config.node.clone(),
            client,
            transport: transport.as_str().to_string(),
            name: question.map_or_else(|| "?".to_string(), |q| q.name.to_string()),
            qtype: question.map_or_else(|| "?".to_string(), |q| qtype_name(q.qtype)),
            result: logged.result,
            rcode: logged.rcode.to_string(),
            answers: logged.answers,
            service: logged.service,
            upstream: logged.upstream,
            message: logged.message,
        });
    }

    /// Asks the upstream resolver; its response with the client's id, or why not (and the
    /// upstream, when there is one).
    async fn forward(
        self: &Arc<Self>,
        netns: &N::Netns,
        msg: &Message,
        query: &[u8],
        transport: Transport,
    ) -> Result<(Vec<u8>, SocketAddr), (String, Option<SocketAddr>)> {
        let Some(upstream) = self.config.dns.upstream else {
            return Err(("no upstream resolver configured".to_string(), None));
        };
        let fail = |why: String| (why, Some(upstream));
        let id = (self.rng.lock().unwrap_or_else(|e| e.into_inner()).next_u32() & 0xffff) as u16;
        let out =
            wire::with_id(query, id).ok_or_else(|| fail("query shorter than a header".into()))?;
        let wait = self.config.dns.upstream_timeout;
        let deadline = Instant::now() + wait;
        let any: IpAddr = match upstream {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let opts = UdpOptions { mark: Some(PROXY_MARK), peer: Some(upstream) };
        let sock = self
            .network
            .bind_udp(netns, SocketAddr::new(any, 0), &opts)
            .await
            .map_err(|e| fail(format!("upstream socket: {e}")))?;
        sock.send_to(&out, upstream).await.map_err(|e| fail(format!("{upstream}: {e}")))?;
        let mut buf = vec![0u8; MESSAGE_MAX];
        let reply = loop {
            let got = timeout_at(deadline, sock.recv_from(&mut buf))
                .await
                .map_err(|_| fail(format!("no answer from {upstream} within {wait:?}")))?;
            let (n, from) = got.map_err(|e| fail(format!("{upstream}: {e}")))?;
            if from == upstream && Message::peek_id(&buf[..n]) == Some(id) && n >= 12 {
                break buf[..n].to_vec();
            }
        };
        drop(sock);
        let truncated = reply[2] & 0x02 != 0;
        let reply = if truncated && transport == Transport::Tcp {
            self.forward_tcp(netns, upstream, &out, id, deadline)
                .await
                .map_err(|e| fail(format!("{upstream} over tcp: {e}")))?
        } else {
            reply
        };
        let reply = wire::with_id(&reply, msg.id).ok_or_else(|| fail("short answer".into()))?;
        Ok((reply, upstream))
    }

    /// The same query over TCP (the UDP answer was truncated).
    async fn forward_tcp(
        &self,
        netns: &N::Netns,
        upstream: SocketAddr,
        query: &[u8],
        id: u16,
        deadline: Instant,
    ) -> io::Result<Vec<u8>> {
        let exchange = async {
            let opts = ConnectOptions { mark: Some(PROXY_MARK), source: None };
            let mut s = self.network.connect(netns, upstream, &opts).await?;
            let framed =
                wire::tcp_frame(query).ok_or_else(|| io::Error::other("query too long"))?;
            s.write_all(&framed).await?;
            let mut prefix = [0u8; 2];
            s.read_exact(&mut prefix).await?;
            let mut reply = vec![0u8; wire::tcp_frame_len(prefix)];
            s.read_exact(&mut reply).await?;
            let _ = s.shutdown().await;
            if reply.len() < 12 || Message::peek_id(&reply) != Some(id) {
                return Err(io::Error::other("an answer to another query"));
            }
            Ok(reply)
        };
        timeout_at(deadline, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }
}

impl Logged {
    fn failed(rcode: Rcode, upstream: Option<SocketAddr>, message: String) -> Logged {
        Logged {
            result: DnsResult::Failed,
            rcode,
            answers: Vec::new(),
            service: None,
            upstream,
            message: Some(message),
        }
    }
}
