//! The scenario's apps and clients on real sockets: the shared code of
//! [`ambient_scenarios::traffic`] (`serve`, `run_client`) run inside pod and host namespaces.
//! Only the socket calls are this module's: a listener per `serve` entry, and a client connect
//! that remembers its own address even when the connection never completes.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ambient_scenarios::assemble::Accept;
use ambient_scenarios::traffic::dns::{
    ByName, LookupCell, QueryLog, ResolverSockets, connect_by_name, serve_dns_tcp, serve_dns_udp,
};
use ambient_scenarios::traffic::{AppStream, ClientReport, ClientSpec, run_client, serve};
use ambient_scenarios::world::{App, DNS_PORT, DnsZone};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UdpSocket};

use crate::netns::{JobHandle, Netns};
use crate::socket::{self, ListenOptions};

/// A kernel TCP stream as an app holds it.
#[derive(Debug)]
pub struct KernelStream(pub TcpStream);

impl AsyncRead for KernelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for KernelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AppStream for KernelStream {
    fn reset(self) {
        // Linger 0: the close sends a RST.
        let _ = SockRef::from(&self.0).set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

/// One accept, and the first bytes the app read on it ([`FIRST_BYTES`] at most): the client's
/// payload is unique per connection, so they tie the accept to its client when no proxy event
/// names the peer the app saw (ztunnel connects to apps from an ephemeral port it does not log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptRecord {
    pub accept: Accept,
    pub first: Vec<u8>,
}

/// How many leading bytes of each accepted connection are kept.
pub const FIRST_BYTES: usize = 16;

/// Every accept of every app of a run, in the order they happened.
pub type AcceptLog = Arc<Mutex<Vec<AcceptRecord>>>;

/// An app's stream that copies the first [`FIRST_BYTES`] it reads into its accept record.
struct Recorded {
    inner: KernelStream,
    log: AcceptLog,
    index: usize,
    kept: usize,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.kept < FIRST_BYTES {
            let fresh = &buf.filled()[before..];
            let take = fresh.len().min(FIRST_BYTES - self.kept);
            if take > 0 {
                let bytes = fresh[..take].to_vec();
                let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                log[self.index].first.extend_from_slice(&bytes);
                drop(log);
                self.kept += take;
            }
        }
        polled
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AppStream for Recorded {
    fn reset(self) {
        self.inner.reset();
    }
}

/// Starts one listener per `serve` entry in `ns` (`0.0.0.0:<port>`); each accept is served by
/// its app on the namespace's thread and recorded in `log`. The listeners live as long as the
/// namespace.
pub fn start_apps(ns: &Netns, serve_on: &BTreeMap<u16, App>, log: &AcceptLog) -> io::Result<()> {
    for (&port, &app) in serve_on {
        let log = log.clone();
        let bound = ns.run(move || async move {
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            let listener =
                socket::listen(addr, ListenOptions { backlog: 1024, ..ListenOptions::default() })?;
            tokio::task::spawn_local(accept_loop(listener, app, log));
            Ok::<_, io::Error>(())
        });
        match bound {
            Ok(r) => r.map_err(|e| {
                io::Error::new(e.kind(), format!("app {} on port {port}: {e}", app.name()))
            })?,
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
    Ok(())
}

async fn accept_loop(listener: tokio::net::TcpListener, app: App, log: AcceptLog) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let index = {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(AcceptRecord {
                accept: Accept { app, peer, served: None },
                first: Vec::new(),
            });
            log.len() - 1
        };
        let log = log.clone();
        tokio::task::spawn_local(async move {
            let stream = Recorded { inner: KernelStream(stream), log: log.clone(), index, kept: 0 };
            let report = serve(app, stream).await;
            log.lock().unwrap_or_else(|e| e.into_inner())[index].accept.served = Some(report);
        });
    }
}

/// One client connection: what it saw, and its own address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRun {
    pub report: ClientReport,
    /// The client socket's address, known once its SYN left (even if the connect then
    /// never completes); `None` when the kernel refused the connect at once.
    pub local: Option<SocketAddr>,
}

/// What a connect step's clients have done so far, one entry per client in spec order, kept
/// outside their job: a client killed with its pod (its namespace's worker stops, cancelling
/// the job) still has its address, and the clients that finished before it their runs.
#[derive(Debug, Clone)]
pub struct ClientRuns {
    runs: Arc<Mutex<Vec<Option<ClientReport>>>>,
    locals: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

impl ClientRuns {
    pub fn new(n: usize) -> ClientRuns {
        ClientRuns {
            runs: Arc::new(Mutex::new(vec![None; n])),
            locals: Arc::new(Mutex::new(vec![None; n])),
        }
    }

    /// Each client's run; one that never reported is reported killed with its pod
    /// (`ClientReport::killed`, with its address if its SYN had left).
    pub fn take(&self) -> Vec<ClientRun> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let locals = self.locals.lock().unwrap_or_else(|e| e.into_inner()).clone();
        runs.into_iter()
            .zip(locals)
            .map(|(run, local)| ClientRun {
                report: run.unwrap_or_else(ClientReport::killed),
                local,
            })
            .collect()
    }

    /// Whether every client reported.
    pub fn complete(&self) -> bool {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).iter().all(Option::is_some)
    }
}

/// Each lookup a run made, with when it started and ended (µs since the Unix epoch, see
/// [`now_us`]): ztunnel's DNS log names no socket, and its lines are tied to lookups by time.
pub type LookupWindows = Arc<Mutex<Vec<(LookupCell, (u64, u64))>>>;

/// The wall clock in µs since the Unix epoch (ztunnel stamps its log lines on this clock).
pub fn now_us() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Runs a connect step's clients in `ns` to `dst`, one per spec, one after another or all at
/// once, recording each in `runs` as it goes. A client with a [`ByName`] looks its name up
/// first and connects to the answer instead; the lookup's window (until the connect to the
/// answer ends: the two are one call) goes to `windows`.
pub fn start_clients(
    ns: &Netns,
    dst: SocketAddrV4,
    specs: Vec<(ClientSpec, Option<ByName>)>,
    parallel: bool,
    runs: &ClientRuns,
    windows: &LookupWindows,
) -> JobHandle<()> {
    let runs = runs.clone();
    let windows = windows.clone();
    ns.spawn(move || async move {
        let one = |k: usize, (spec, by_name): (ClientSpec, Option<ByName>)| {
            let runs = runs.clone();
            let windows = windows.clone();
            async move {
                let dial = |dst| connect(dst, &runs.locals, k);
                let connecting = async {
                    match &by_name {
                        None => dial(dst).await,
                        Some(b) => {
                            let started = now_us();
                            let connected = connect_by_name(&KernelResolver, b, dial).await;
                            let window = (b.cell.clone(), (started, now_us()));
                            windows.lock().unwrap_or_else(|e| e.into_inner()).push(window);
                            connected
                        }
                    }
                };
                let report = run_client(connecting, &spec).await;
                runs.runs.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(report);
            }
        };
        if parallel {
            futures_util::future::join_all(specs.into_iter().enumerate().map(|(k, s)| one(k, s)))
                .await;
        } else {
            for (k, spec) in specs.into_iter().enumerate() {
                one(k, spec).await;
            }
        }
    })
}

/// Connects as an app does (no bind: the kernel picks the source by route, `127.0.0.1` for a
/// loopback destination), and records the socket's address once its SYN has left. A connect
/// the kernel refuses at once (no route: ENETUNREACH) sent nothing and records nothing, as in
/// the simulator. The address goes to `seen[k]`.
async fn connect(
    dst: SocketAddrV4,
    seen: &Mutex<Vec<Option<SocketAddr>>>,
    k: usize,
) -> io::Result<KernelStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SocketAddr::V4(dst).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    seen.lock().unwrap_or_else(|e| e.into_inner())[k] = socket.local_addr()?.as_socket();
    let stream = TcpStream::from_std(socket.into())?;
    stream.writable().await?;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    stream.set_nodelay(true)?;
    Ok(KernelStream(stream))
}

/// The stub resolver's sockets on the kernel, in the namespace of the thread it runs on: a UDP
/// socket on an ephemeral port connected to the nameserver, or a TCP connection.
#[derive(Debug, Clone, Copy)]
pub struct KernelResolver;

impl ResolverSockets for KernelResolver {
    type Udp = UdpSocket;
    type Tcp = TcpStream;

    async fn udp(&self, server: SocketAddr) -> io::Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await?;
        s.connect(server).await?;
        Ok(s)
    }

    async fn tcp(&self, server: SocketAddr) -> io::Result<(TcpStream, SocketAddr)> {
        let s = TcpStream::connect(server).await?;
        let local = s.local_addr()?;
        Ok((s, local))
    }
}

/// Starts the DNS server app in `ns` (the scenario's DNS server host): UDP and TCP on
/// `0.0.0.0:53`, answering from `zone`; what it answers goes to `log`. It lives as long as the
/// namespace.
pub fn start_dns_server(ns: &Netns, zone: &DnsZone, log: &QueryLog) -> io::Result<()> {
    let (zone, log) = (zone.clone(), log.clone());
    let bound = ns.run(move || async move {
        let at = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DNS_PORT);
        let udp = UdpSocket::bind(at).await?;
        let listener =
            socket::listen(at, ListenOptions { backlog: 1024, ..ListenOptions::default() })?;
        tokio::task::spawn_local(serve_dns_udp(udp, zone.clone(), log.clone()));
        tokio::task::spawn_local(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let (zone, log) = (zone.clone(), log.clone());
                tokio::task::spawn_local(async move {
                    serve_dns_tcp(stream, peer, &zone, &log).await;
                });
            }
        });
        Ok::<_, io::Error>(())
    });
    match bound {
        Ok(r) => {
            r.map_err(|e| io::Error::new(e.kind(), format!("DNS server on port {DNS_PORT}: {e}")))
        }
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}
