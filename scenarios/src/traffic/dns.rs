//! DNS traffic both backends run: the stub resolver of a `resolve` step (and of a connect to a
//! name), and the app of the DNS server host. Only the sockets are the backends'
//! ([`ResolverSockets`]; the server gets a bound socket or an accepted stream).
//!
//! The stub resolver sends one A query for the name as written, from a fresh UDP socket
//! connected to the nameserver (as glibc does: an ICMP port unreachable then fails it at once),
//! and takes the first response with its id; a truncated response is asked again over TCP, as
//! a stub resolver does. Over TCP: one connection, one framed query, one framed response. No
//! retries, no search list.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proxy::dns::wire::{self, Message, Name, Rcode, rtype};
use ambient_proxy::net::Datagram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::outcome::DnsTransport;
use crate::world::DnsZone;

/// One lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSpec {
    pub name: String,
    pub over: DnsTransport,
    /// The nameserver.
    pub server: SocketAddr,
    pub deadline: Duration,
    /// The query's id (seeded by the caller).
    pub id: u16,
}

/// How a lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupEnd {
    /// A response: its code and A records.
    Answer {
        rcode: Rcode,
        addresses: Vec<Ipv4Addr>,
    },
    /// Nothing listens where the query went (ECONNREFUSED).
    Refused,
    Timeout,
    Error(String),
}

/// What the stub resolver saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupReport {
    /// The transport of the last query it sent.
    pub over: DnsTransport,
    /// Its sockets' own addresses, with their transport (two when a truncated answer was asked
    /// again over TCP).
    pub clients: Vec<(SocketAddr, DnsTransport)>,
    pub end: LookupEnd,
}

/// The sockets a lookup needs, in the client's namespace.
pub trait ResolverSockets {
    type Udp: Datagram;
    type Tcp: AsyncRead + AsyncWrite + Unpin + Send;

    /// A UDP socket bound to an ephemeral port and connected to `server`.
    fn udp(&self, server: SocketAddr) -> impl Future<Output = io::Result<Self::Udp>> + Send;

    /// A TCP connection to `server`, with its own address.
    fn tcp(
        &self,
        server: SocketAddr,
    ) -> impl Future<Output = io::Result<(Self::Tcp, SocketAddr)>> + Send;
}

fn answer_of(bytes: &[u8]) -> LookupEnd {
    match Message::parse(bytes) {
        Ok(m) => LookupEnd::Answer { rcode: m.flags.rcode, addresses: m.addresses() },
        Err(e) => LookupEnd::Error(format!("an answer that does not parse: {e}")),
    }
}

fn io_end(e: &io::Error) -> LookupEnd {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => LookupEnd::Refused,
        io::ErrorKind::TimedOut => LookupEnd::Timeout,
        _ => LookupEnd::Error(e.to_string()),
    }
}

/// Looks `spec.name` up from a client whose address is `client_ip`.
pub async fn lookup<R: ResolverSockets>(
    sockets: &R,
    spec: &LookupSpec,
    client_ip: Ipv4Addr,
) -> LookupReport {
    let deadline = Instant::now() + spec.deadline;
    let mut report = LookupReport { over: spec.over, clients: Vec::new(), end: LookupEnd::Timeout };
    let query = match Name::parse(&spec.name) {
        Ok(name) => Message::query(spec.id, name, rtype::A).encode(),
        Err(e) => {
            report.end = LookupEnd::Error(e.to_string());
            return report;
        }
    };
    if spec.over == DnsTransport::Udp {
        match timeout_at(deadline, over_udp(sockets, spec, &query, client_ip, &mut report)).await {
            Err(_) => return report,
            Ok(Err(end)) => {
                report.end = end;
                return report;
            }
            Ok(Ok(bytes)) if bytes.get(2).is_some_and(|b| b & 0x02 == 0) => {
                report.end = answer_of(&bytes);
                return report;
            }
            Ok(Ok(_)) => report.over = DnsTransport::Tcp, // truncated: again over TCP
        }
    }
    report.end = match timeout_at(deadline, over_tcp(sockets, spec, &query, &mut report)).await {
        Err(_) => LookupEnd::Timeout,
        Ok(Err(end)) => end,
        Ok(Ok(bytes)) => answer_of(&bytes),
    };
    report
}

async fn over_udp<R: ResolverSockets>(
    sockets: &R,
    spec: &LookupSpec,
    query: &[u8],
    client_ip: Ipv4Addr,
    report: &mut LookupReport,
) -> Result<Vec<u8>, LookupEnd> {
    let sock = sockets.udp(spec.server).await.map_err(|e| io_end(&e))?;
    let port = sock.local_addr().map_err(|e| io_end(&e))?.port();
    report.clients.push((SocketAddr::new(client_ip.into(), port), DnsTransport::Udp));
    sock.send_to(query, spec.server).await.map_err(|e| io_end(&e))?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await.map_err(|e| io_end(&e))?;
        if from == spec.server && n >= 12 && Message::peek_id(&buf[..n]) == Some(spec.id) {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn over_tcp<R: ResolverSockets>(
    sockets: &R,
    spec: &LookupSpec,
    query: &[u8],
    report: &mut LookupReport,
) -> Result<Vec<u8>, LookupEnd> {
    let (mut s, local) = sockets.tcp(spec.server).await.map_err(|e| io_end(&e))?;
    report.clients.push((local, DnsTransport::Tcp));
    let framed = wire::tcp_frame(query).ok_or_else(|| LookupEnd::Error("query too long".into()))?;
    s.write_all(&framed).await.map_err(|e| io_end(&e))?;
    let mut prefix = [0u8; 2];
    let closed = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            LookupEnd::Error("the connection closed before an answer".into())
        }
        _ => io_end(&e),
    };
    s.read_exact(&mut prefix).await.map_err(closed)?;
    let mut reply = vec![0u8; wire::tcp_frame_len(prefix)];
    s.read_exact(&mut reply).await.map_err(closed)?;
    let _ = s.shutdown().await;
    // Read the server's close, so the connection ends the same way on every backend.
    let mut rest = [0u8; 1];
    let _ = s.read(&mut rest).await;
    if Message::peek_id(&reply) != Some(spec.id) {
        return Err(LookupEnd::Error("an answer to another query".into()));
    }
    Ok(reply)
}

/// A query the DNS server app answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedQuery {
    /// Who asked (the address the server saw).
    pub peer: SocketAddr,
    pub over: DnsTransport,
    /// The name asked (`?` for a query that did not parse).
    pub name: String,
}

/// Every query a run's DNS server answered, in order.
pub type QueryLog = Arc<Mutex<Vec<ServedQuery>>>;

fn record(log: &QueryLog, peer: SocketAddr, over: DnsTransport, query: &Message) {
    let name = query.questions.first().map_or_else(|| "?".to_string(), |q| q.name.to_string());
    log.lock().unwrap_or_else(|e| e.into_inner()).push(ServedQuery { peer, over, name });
}

/// The DNS server app on its UDP socket: answers every query until the socket fails.
pub async fn serve_dns_udp<D: Datagram>(sock: D, zone: DnsZone, log: QueryLog) {
    let mut buf = vec![0u8; 65_535];
    while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
        let Ok(query) = Message::parse(&buf[..n]) else { continue };
        record(&log, peer, DnsTransport::Udp, &query);
        let reply = zone.answer(&query).encode_within(wire::UDP_MAX);
        let _ = sock.send_to(&reply, peer).await;
    }
}

/// The DNS server app on one accepted TCP connection: answers framed queries until the client
/// closes, then closes.
pub async fn serve_dns_tcp<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    zone: &DnsZone,
    log: &QueryLog,
) {
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let mut q = vec![0u8; wire::tcp_frame_len(prefix)];
        if stream.read_exact(&mut q).await.is_err() {
            break;
        }
        let Ok(query) = Message::parse(&q) else { break };
        record(log, peer, DnsTransport::Tcp, &query);
        let Some(framed) = wire::tcp_frame(&zone.answer(&query).encode()) else { break };
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.shutdown().await;
}

impl LookupReport {
    /// A lookup whose client died with its pod before it reported (as
    /// [`super::ClientReport::killed`]).
    pub fn killed() -> LookupReport {
        LookupReport {
            over: DnsTransport::Udp,
            clients: Vec::new(),
            end: LookupEnd::Error(super::KILLED_WITH_POD.to_string()),
        }
    }
}

/// What a lookup reports once it is done, kept outside the task that runs it (a lookup killed
/// with its pod then reports [`LookupReport::killed`]).
pub type LookupCell = Arc<Mutex<Option<LookupReport>>>;

/// Where a connection to `name:port` goes after the lookup `report`: the first address of the
/// answer; otherwise an error saying how the lookup ended (the connection's outcome is then
/// `error`, never `refused`: nothing was connected to).
pub fn resolved_addr(report: &LookupReport, name: &str, port: u16) -> io::Result<SocketAddrV4> {
    let why = match &report.end {
        LookupEnd::Answer { rcode: Rcode::NOERROR, addresses } => match addresses.first() {
            Some(ip) => return Ok(SocketAddrV4::new(*ip, port)),
            None => "an answer without addresses".to_string(),
        },
        LookupEnd::Answer { rcode, .. } => format!("rcode {rcode}"),
        LookupEnd::Refused => "refused".to_string(),
        LookupEnd::Timeout => "timeout".to_string(),
        LookupEnd::Error(e) => e.clone(),
    };
    Err(io::Error::other(format!("looking up {name}: {why}")))
}

/// A connect's lookup of its name (`resolve: true`), made before it connects.
#[derive(Debug, Clone)]
pub struct ByName {
    pub spec: LookupSpec,
    /// The client's address (its stub resolver's sockets are bound to any address).
    pub client_ip: Ipv4Addr,
    /// The port to connect to.
    pub port: u16,
    /// Where the lookup reports.
    pub cell: LookupCell,
}

/// A connect to a name, as an app does it: look the name up (the report goes to `by.cell`),
/// then `connect` to the first address of the answer.
pub async fn connect_by_name<R, S, F, Fut>(sockets: &R, by: &ByName, connect: F) -> io::Result<S>
where
    R: ResolverSockets,
    F: FnOnce(SocketAddrV4) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let report = lookup(sockets, &by.spec, by.client_ip).await;
    let addr = resolved_addr(&report, &by.spec.name, by.port);
    *by.cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    connect(addr?).await
}

/// The query id of the `ordinal`-th lookup of a run (any id would do; seeded, so a simulated
/// run repeats byte for byte).
pub fn query_id(seed: u64, ordinal: u64) -> u16 {
    let h = (seed ^ 0xd15c_0f00d).wrapping_add(ordinal).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as u16
}
