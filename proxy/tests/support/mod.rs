//! Shared scaffolding of the loopback tests: two node proxies on real Linux sockets in the
//! current network namespace, pods as 127.x.y.z addresses, and a stand-in for REDIRECT.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::WallClock;
use ambient_proxy::crypto::default_provider;
use ambient_proxy::events::RecordingSink;
use ambient_proxy::mesh::{MeshSpec, MeshState, Workload};
use ambient_proxy::net::linux::{LinuxListener, LinuxNetwork, NetnsPath};
use ambient_proxy::net::{Accepted, ConnectOptions, ListenOptions, Listener, Network, UdpOptions};
use ambient_proxy::node::{NodeProxy, PodSpec, ProxyConfig};
use ambient_proxy::tls::TlsContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Real sockets, plus the original destination of connections made with [`Redirect::app_connect`]
/// — what the in-pod REDIRECT rules and SO_ORIGINAL_DST provide in a real pod (the netns
/// harness tests that part).
#[derive(Clone, Debug, Default)]
pub struct Redirect {
    inner: LinuxNetwork,
    table: Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>>,
}

#[derive(Debug)]
pub struct RedirectListener {
    inner: LinuxListener,
    table: Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>>,
}

impl Listener for RedirectListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<Accepted<TcpStream>> {
        let mut acc = self.inner.accept().await?;
        if acc.original_dst.is_none() {
            acc.original_dst = self.table.lock().unwrap().get(&acc.peer).copied();
        }
        Ok(acc)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Network for Redirect {
    type Netns = NetnsPath;
    type Listener = RedirectListener;
    type Stream = TcpStream;
    type Datagram = UdpSocket;

    async fn listen(
        &self,
        netns: &NetnsPath,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> io::Result<RedirectListener> {
        Ok(RedirectListener {
            inner: self.inner.listen(netns, addr, opts).await?,
            table: self.table.clone(),
        })
    }

    async fn connect(
        &self,
        netns: &NetnsPath,
        dst: SocketAddr,
        opts: &ConnectOptions,
    ) -> io::Result<TcpStream> {
        self.inner.connect(netns, dst, opts).await
    }

    fn reset(&self, stream: TcpStream) {
        self.inner.reset(stream)
    }

    fn local_addr(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        self.inner.local_addr(stream)
    }

    async fn bind_udp(
        &self,
        netns: &NetnsPath,
        addr: SocketAddr,
        opts: &UdpOptions,
    ) -> io::Result<UdpSocket> {
        self.inner.bind_udp(netns, addr, opts).await
    }
}

impl Redirect {
    /// An app in pod `src` connecting to `original_dst`, "redirected" to `proxy` (a 15001 or
    /// 15006 listener).
    pub async fn app_connect(
        &self,
        src: IpAddr,
        original_dst: SocketAddr,
        proxy: SocketAddr,
    ) -> io::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(src, 0))?;
        let local = sock.local_addr()?;
        self.table.lock().unwrap().insert(local, original_dst);
        sock.connect(proxy).await
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What a test app does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppMode {
    /// Return every byte, then close after the client's EOF.
    Echo,
    /// Read one byte, then reset.
    Reset,
}

/// A listening app; records the peer address of every connection it accepted.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl App {
    pub async fn start(at: SocketAddr, mode: AppMode) -> App {
        let l = tokio::net::TcpListener::bind(at)
            .await
            .unwrap_or_else(|e| panic!("app bind {at}: {e}"));
        let app = App::default();
        let peers = app.peers.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, peer)) = l.accept().await else { return };
                peers.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    match mode {
                        AppMode::Echo => {
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                        AppMode::Reset => {
                            let _ = s.read(&mut [0u8; 1]).await;
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                            drop(s);
                        }
                    }
                });
            }
        });
        app
    }
}

/// Send `data`, half-close, read until EOF.
pub async fn exchange(s: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

/// Two nodes: `node-a` with the client pod, `node-b` with the server pods.
pub struct World {
    pub net: Redirect,
    pub a: NodeProxy<Redirect>,
    pub b: NodeProxy<Redirect>,
    pub events_a: Arc<RecordingSink>,
    pub events_b: Arc<RecordingSink>,
    pub client: IpAddr,
    pub server: IpAddr,
    pub ca: Arc<MeshCa>,
    pub mesh: MeshSpec,
}

#[derive(Default)]
pub struct WorldOptions {
    pub policies: Vec<ambient_proxy::istio::PolicyObject>,
    /// Give node-b a CA of its own (so node-a's tunnels fail).
    pub foreign_ca_on_b: bool,
    /// Pool settings of node-a.
    pub pool: Option<ambient_proxy::pool::PoolConfig>,
    /// Limits of node-b (the destination side).
    pub limits_b: Option<ambient_proxy::node::Limits>,
}

pub fn mesh_spec(prefix: &str, policies: Vec<ambient_proxy::istio::PolicyObject>) -> MeshSpec {
    MeshSpec {
        workloads: vec![
            Workload::new("client", "node-a", ip(&format!("{prefix}.0.5")))
                .service_account("sleep"),
            Workload::new("outsider", "node-a", ip(&format!("{prefix}.0.9"))).uncaptured(),
            Workload::new("server", "node-b", ip(&format!("{prefix}.1.5")))
                .service_account("echo")
                .label("app", "echo"),
            Workload::new("legacy", "node-b", ip(&format!("{prefix}.1.7"))).uncaptured(),
        ],
        policies,
        ..MeshSpec::default()
    }
}

pub fn tls(ca: Arc<MeshCa>, seed: u64) -> TlsContext {
    let provider = default_provider();
    let store = CertStore::new(ca, KeySource::Seeded(seed), WallClock::system(), provider);
    TlsContext::new(Arc::new(store), "cluster.local")
}

pub fn now() -> Duration {
    WallClock::system().now()
}

/// Build and start the two proxies; `prefix` is a unique `127.N` per test.
pub async fn world(prefix: &str, opts: WorldOptions) -> World {
    let net = Redirect::default();
    let spec = mesh_spec(prefix, opts.policies);
    let mesh = MeshState::new(spec.clone()).unwrap();
    let ca = Arc::new(MeshCa::generate("cluster.local", &KeySource::Seeded(1), now()).unwrap());
    let ca_b = if opts.foreign_ca_on_b {
        Arc::new(MeshCa::generate("cluster.local", &KeySource::Seeded(99), now()).unwrap())
    } else {
        ca.clone()
    };
    let events_a = Arc::new(RecordingSink::default());
    let events_b = Arc::new(RecordingSink::default());
    let mut cfg_a = ProxyConfig::new("node-a", tls(ca.clone(), 10));
    cfg_a.sink = events_a.clone();
    if let Some(pool) = opts.pool {
        cfg_a.pool = pool;
    }
    let mut cfg_b = ProxyConfig::new("node-b", tls(ca_b, 20));
    cfg_b.sink = events_b.clone();
    if let Some(limits) = opts.limits_b {
        cfg_b.limits = limits;
    }
    let a = NodeProxy::new(net.clone(), mesh.clone(), cfg_a);
    let b = NodeProxy::new(net.clone(), mesh, cfg_b);
    let client = ip(&format!("{prefix}.0.5"));
    let server = ip(&format!("{prefix}.1.5"));
    let pod = |ip| PodSpec { ip, netns: NetnsPath::current(), listen_ip: ip };
    a.add_pod(pod(client)).await.unwrap_or_else(|e| {
        panic!("add_pod: {e} (the proxy's sockets need CAP_NET_ADMIN: run the tests as root)")
    });
    b.add_pod(pod(server)).await.unwrap();
    World { net, a, b, events_a, events_b, client, server, ca, mesh: spec }
}

impl World {
    pub fn outbound_listener(&self) -> SocketAddr {
        SocketAddr::new(self.client, 15001)
    }

    /// The client app connecting to `dst` (captured by node-a's 15001).
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        self.net.app_connect(self.client, dst, self.outbound_listener()).await
    }
}

/// Wait (bounded) until `cond` holds; the proxies count a connection just after its last byte.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}
