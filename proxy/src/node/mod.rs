//! The node proxy: one per node, serving every captured pod of the node from listeners inside
//! each pod's network namespace (in-pod mode), over any [`Network`].
//!
//! Lifecycle, for a runtime, a simulator or a harness to drive:
//! [`NodeProxy::new`] → [`add_pod`](NodeProxy::add_pod) / [`remove_pod`](NodeProxy::remove_pod)
//! → [`update_mesh`](NodeProxy::update_mesh) (re-checks live connections) →
//! [`drain`](NodeProxy::drain) (graceful) or [`crash`](NodeProxy::crash) (everything dropped
//! now). Every task is `tokio::spawn`ed on the caller's runtime and tracked, so a crash can drop
//! them all.

pub mod admit;
mod dns;
mod hbone;
mod inbound;
mod outbound;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{Notify, oneshot};
use tokio::task::AbortHandle;

use crate::copy::Transferred;
use crate::events::{CloseResult, Counters, Direction, EventSink, NoopSink, ProxyEvent, emit};
use crate::faults::{FaultPlan, FaultPoint};
use crate::inpod::{INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROXY_MARK};
use crate::mesh::{MeshHandle, MeshState};
use crate::net::{ListenOptions, Listener, Network};
use crate::policy::{ConnectionAttrs, evaluate};
use crate::pool::{Pool, PoolConfig};
use crate::signal::Signal;
use crate::tls::TlsContext;

/// How a node proxy behaves; [`ProxyConfig::new`] gives the defaults of `ambient-facts.md`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node this proxy serves (pods with `node` equal to it are local).
    pub node: String,
    /// Seeds every choice the proxy makes (endpoint selection, trace ids).
    pub seed: u64,
    pub tls: TlsContext,
    pub sink: Arc<dyn EventSink>,
    pub pool: PoolConfig,
    /// Read buffer per direction of a connection.
    pub buffer_size: usize,
    /// h2 stream flow-control window (the connection window is 4×).
    pub h2_window: u32,
    /// Deadline for TCP connects, TLS handshakes and the CONNECT response.
    pub connect_timeout: Duration,
    /// Seeded fault points (`faults.rs`); `None` — the default, and all a config file can
    /// give — disables them.
    pub faults: Option<Arc<FaultPlan>>,
    /// After [`NodeProxy::remove_pod`], how long the pod's connection handlers may run on
    /// before they are closed: its network is going, and a handler whose peer's close can no
    /// longer reach it (lost with a flushed conntrack entry, say) would wait forever.
    pub pod_drain: Duration,
    /// Bounds against misbehaving peers (`reports/security.md`).
    pub limits: Limits,
    /// The DNS proxy on 15053.
    pub dns: DnsConfig,
}

/// The DNS proxy ztunnel runs in every captured pod (TCP and UDP 15053, where the in-pod rules
/// send the pod's DNS): it answers the names of mesh Services and forwards the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Serve 15053 at all (ztunnel's `DNS_CAPTURE`).
    pub enabled: bool,
    /// Where queries for other names go (`ip:53`), from the pod's namespace with the proxy's
    /// mark (so the raw table puts them in conntrack zone 1). `None`: they get SERVFAIL.
    pub upstream: Option<SocketAddr>,
    /// The cluster's DNS domain.
    pub domain: String,
    /// How long the upstream has to answer a forwarded query.
    pub upstream_timeout: Duration,
    /// A DNS-over-TCP client connection with no complete query for this long is closed.
    pub tcp_idle: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            upstream: None,
            domain: "cluster.local".to_string(),
            upstream_timeout: Duration::from_secs(5),
            tcp_idle: Duration::from_secs(5),
        }
    }
}

/// What one peer may make the proxy hold. The defaults leave room for every legitimate load
/// the testbed makes (10,000 parallel connections from one pod need 100 pooled tunnels) and
/// bound what an attacker can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest h2 header list accepted (SETTINGS_MAX_HEADER_LIST_SIZE), as server and client.
    /// h2's default, 16 MiB, let one peer hold ~15 MB per unfinished header block.
    pub max_header_list: u32,
    /// A header block (HEADERS until END_HEADERS) must complete within this; the connection
    /// is closed otherwise.
    pub header_timeout: Duration,
    /// An inbound h2 connection with no open stream for this long is closed (GOAWAY). Longer
    /// than a source proxy's own idle close (5 minutes), so it never races a pooled tunnel.
    pub inbound_idle: Duration,
    /// A proxied connection on which no byte moved either way for this long is reset.
    pub connection_idle: Duration,
    /// TLS handshakes in progress on 15008, all peers together and per peer address.
    pub max_handshakes: usize,
    pub max_handshakes_per_peer: usize,
    /// Connections (handshaking or established) on 15008 per peer address.
    pub max_connections_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_list: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            inbound_idle: Duration::from_secs(10 * 60),
            connection_idle: Duration::from_secs(60 * 60),
            max_handshakes: 1024,
            max_handshakes_per_peer: 16,
            max_connections_per_peer: 256,
        }
    }
}

impl Limits {
    pub(crate) fn admission(&self) -> admit::Bounds {
        admit::Bounds {
            handshakes: self.max_handshakes,
            handshakes_per_peer: self.max_handshakes_per_peer,
            connections_per_peer: self.max_connections_per_peer,
        }
    }
}

impl ProxyConfig {
    pub fn new(node: impl Into<String>, tls: TlsContext) -> Self {
        ProxyConfig {
            node: node.into(),
            seed: 0,
            tls,
            sink: Arc::new(NoopSink),
            pool: PoolConfig::default(),
            buffer_size: 16 * 1024,
            h2_window: 256 * 1024,
            connect_timeout: Duration::from_secs(10),
            faults: None,
            limits: Limits::default(),
            pod_drain: Duration::from_secs(5),
            dns: DnsConfig::default(),
        }
    }
}

/// What a node proxy holds at one moment ([`NodeProxy::resources`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Captured pods served.
    pub pods: usize,
    /// Of `tasks`, the accept loops of those pods (three each, five with the DNS proxy).
    pub listener_tasks: usize,
    /// Tracked tasks alive: accept loops, connection handlers, inbound tunnels, pool drivers.
    pub tasks: usize,
    /// Authorized inbound connections registered for policy re-checks.
    pub live_connections: usize,
    /// Connection handlers running (what a drain waits for).
    pub busy: usize,
    /// h2 connections in the pool.
    pub pooled_tunnels: usize,
}

/// A captured pod as the proxy serves it.
#[derive(Debug, Clone)]
pub struct PodSpec<Ns> {
    /// The pod's address (a workload of the mesh on this node).
    pub ip: IpAddr,
    /// Its network namespace: listeners and the proxy's sockets for it live there.
    pub netns: Ns,
    /// Where the listeners bind: `0.0.0.0` in a real pod netns; the pod IP when several pods
    /// share one namespace (loopback tests).
    pub listen_ip: IpAddr,
}

/// A proxied connection in progress (registered by [`Inner::flight`]): what a drain deadline
/// counts and logs when it cuts the connection.
struct FlightRecord {
    direction: Direction,
    client: SocketAddr,
    destination: SocketAddr,
    moved: Arc<Transferred>,
    start: tokio::time::Instant,
}

type Flights = Arc<Mutex<BTreeMap<u64, FlightRecord>>>;

/// A handler's handle on its registered connection; [`Inner::closed_in`] lands it, and a
/// handler dropped without landing it (a crash, a pod drain deadline) unregisters it.
pub(crate) struct Flight {
    id: u64,
    pub moved: Arc<Transferred>,
    flights: Flights,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A connection authorized at this proxy that a policy change may revoke.
struct LiveConn {
    workload_ip: IpAddr,
    attrs: ConnectionAttrs,
    revoke: Option<oneshot::Sender<String>>,
}

/// Tasks of one group (a pod's connection handlers) while they run.
type TaskGroup = Arc<Mutex<std::collections::BTreeSet<u64>>>;

/// The live-connection registry, shared with the guards that unregister from it.
type LiveMap = Arc<Mutex<BTreeMap<u64, LiveConn>>>;

struct Pod<Ns> {
    spec: PodSpec<Ns>,
    listener_tasks: Vec<u64>,
    /// The handlers of connections accepted on its listeners (closed after `pod_drain` once
    /// the pod is removed).
    handlers: TaskGroup,
    /// Set when the pod is removed: its inbound tunnels send GOAWAY.
    draining: Arc<Signal<bool>>,
}

/// A pod dropped without being removed (the proxy crashed) counts as removed.
impl<Ns> Drop for Pod<Ns> {
    fn drop(&mut self) {
        self.draining.set(true);
    }
}

pub(crate) struct Inner<N: Network> {
    network: N,
    config: ProxyConfig,
    mesh: MeshHandle,
    counters: Counters,
    rng: Mutex<ChaCha8Rng>,
    pool: Arc<Pool>,
    pods: Mutex<BTreeMap<IpAddr, Pod<N::Netns>>>,
    live: LiveMap,
    flights: Flights,
    admission: Mutex<admit::Table>,
    tasks: Mutex<BTreeMap<u64, AbortHandle>>,
    next_id: AtomicU64,
    busy: AtomicUsize,
    idle: Notify,
    draining: Arc<Signal<bool>>,
    /// Set by [`NodeProxy::crash`] before it aborts anything: from then on the proxy is dead, as
    /// a killed process is — no task logs an event or resets a socket on its way out (aborting
    /// tasks one by one would otherwise let a task see another's death and react to it).
    crashed: AtomicBool,
}

/// A node proxy. Cheap to clone; all clones drive the same proxy.
pub struct NodeProxy<N: Network> {
    inner: Arc<Inner<N>>,
}

impl<N: Network> Clone for NodeProxy<N> {
    fn clone(&self) -> Self {
        NodeProxy { inner: self.inner.clone() }
    }
}

impl<N: Network> std::fmt::Debug for NodeProxy<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProxy").field("node", &self.inner.config.node).finish()
    }
}

impl<N: Network> NodeProxy<N> {
    /// A proxy for `config.node` with no pods yet.
    pub fn new(network: N, mesh: MeshState, config: ProxyConfig) -> Self {
        let seed = config.seed ^ fnv(config.node.as_bytes());
        let pool = Pool::new(config.pool.clone());
        NodeProxy {
            inner: Arc::new(Inner {
                network,
                mesh: MeshHandle::new(mesh),
                counters: Counters::default(),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
                pool,
                pods: Mutex::new(BTreeMap::new()),
                live: LiveMap::default(),
                flights: Flights::default(),
                admission: Mutex::new(admit::Table::default()),
                tasks: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                busy: AtomicUsize::new(0),
                idle: Notify::new(),
                draining: Arc::new(Signal::new(false)),
                crashed: AtomicBool::new(false),
                config,
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.config.node
    }

    /// Start serving a captured pod: bind 15001, 15006 and 15008 in its namespace, and the DNS
    /// proxy's 15053 (UDP and TCP, on `127.0.0.1`: where REDIRECT sends the pod's queries, and
    /// the address its answers must leave from to be un-NATed) when it is enabled.
    pub async fn add_pod(&self, pod: PodSpec<N::Netns>) -> io::Result<()> {
        let inner = &self.inner;
        let mesh = inner.mesh.load();
        let w = mesh.local_captured(&inner.config.node, pod.ip).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a captured pod of node {}", pod.ip, inner.config.node),
            )
        })?;
        let server_tls =
            inner.config.tls.server_config(&mesh.identity(w)).map_err(io::Error::other)?;
        if inner.pods.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&pod.ip) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("pod {} already added", pod.ip),
            ));
        }
        let opts = ListenOptions { mark: Some(PROXY_MARK), transparent: false };
        let at = |port| SocketAddr::new(pod.listen_ip, port);
        let net = &inner.network;
        let outbound = net.listen(&pod.netns, at(OUTBOUND_PORT), &opts).await?;
        let plaintext = net.listen(&pod.netns, at(INBOUND_PLAINTEXT_PORT), &opts).await?;
        let hbone = net.listen(&pod.netns, at(INBOUND_HBONE_PORT), &opts).await?;
        let dns = match inner.config.dns.enabled {
            true => Some(dns::bind(inner, &pod).await?),
            false => None,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls);
        let draining = Arc::new(Signal::new(false));
        let pod_draining = draining.clone();
        let (ip, ns) = (pod.ip, pod.netns.clone());
        let handlers = TaskGroup::default();
        let (h1, h2, h3) = (handlers.clone(), handlers.clone(), handlers.clone());
        let mut tasks = vec![
            inner.spawn(accept_loop(inner.clone(), outbound, move |i, a| {
                i.spawn_in(&h1, i.clone().outbound(ip, ns.clone(), a));
            })),
            inner.spawn(accept_loop(inner.clone(), plaintext, move |i, a| {
                i.spawn_in(&h2, i.clone().inbound_plaintext(ip, a));
            })),
            inner.spawn(accept_loop(inner.clone(), hbone, move |i, a| {
                // Admitted before any task or buffer exists; a refusal resets the socket now.
                match i.admit(a.peer.ip()) {
                    Ok(admitted) => {
                        let (acceptor, draining) = (acceptor.clone(), pod_draining.clone());
                        let tunnel = i.clone().inbound_hbone(acceptor, a, draining, admitted);
                        i.spawn_in(&h3, tunnel);
                    }
                    Err(refusal) => i.refuse_admission(a, refusal),
                }
            })),
        ];
        if let Some(bound) = dns {
            tasks.extend(dns::serve(inner, bound, pod.ip, pod.netns.clone(), &handlers));
        }
        inner
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pod.ip, Pod { spec: pod, listener_tasks: tasks, draining, handlers });
        Ok(())
    }

    /// Stop serving a pod: its listeners close, its inbound tunnels send GOAWAY (as a node
    /// drain does, for this pod only) so source proxies stop opening streams on them and dial
    /// anew, and the tunnels it dialled leave the pool — the pod is going away, and its
    /// address may come back as another pod — and close once their streams are over.
    /// Connections running go on until they end, for at most `pod_drain`: then its handlers
    /// still running are dropped (their sockets closed; an inbound tunnel's streams end with
    /// it). Call it on the runtime the proxy's tasks run on (it starts the drain timer there).
    pub fn remove_pod(&self, ip: IpAddr) -> bool {
        let pod = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
        match pod {
            Some(pod) => {
                pod.draining.set(true);
                for conn in self.inner.pool.connections() {
                    if conn.key.source_ip == ip {
                        self.inner.pool.remove(&conn);
                        // Its driver closes it once its streams are over (now, if none is
                        // left), while the pod's network can still carry the close.
                        conn.wake.notify_one();
                    }
                }
                for &id in &pod.listener_tasks {
                    self.inner.abort(id);
                }
                let (me, handlers) = (Arc::downgrade(&self.inner), pod.handlers.clone());
                let deadline = self.inner.config.pod_drain;
                self.inner.spawn(async move {
                    tokio::time::sleep(deadline).await;
                    let Some(inner) = me.upgrade() else { return };
                    let left =
                        std::mem::take(&mut *handlers.lock().unwrap_or_else(|e| e.into_inner()));
                    for id in left {
                        inner.abort(id);
                    }
                });
                true
            }
            None => false,
        }
    }

    /// The pods served, in address order.
    pub fn pods(&self) -> Vec<PodSpec<N::Netns>> {
        self.inner
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| p.spec.clone())
            .collect()
    }

    pub fn mesh(&self) -> Arc<MeshState> {
        self.inner.mesh.load()
    }

    /// Swap in a new mesh state and re-check every live inbound connection against it; those no
    /// longer allowed are closed (reset both ways) with the reason logged. Returns how many.
    pub fn update_mesh(&self, mesh: MeshState) -> usize {
        let inner = &self.inner;
        inner.mesh.store(mesh);
        let mesh = inner.mesh.load();
        let mut closed = 0;
        let mut live = inner.live.lock().unwrap_or_else(|e| e.into_inner());
        for conn in live.values_mut() {
            let reason = match mesh.workload(conn.workload_ip) {
                None => Some("destination workload left the mesh".to_string()),
                Some(w) => {
                    let v = inner.authorize(mesh.policies(), w, &conn.attrs);
                    (!v.allowed).then(|| match v.policy {
                        Some(p) => format!("{} ({p})", v.reason),
                        None => v.reason.to_string(),
                    })
                }
            };
            // Take the sender only from a connection that is revoked: dropping it closes the
            // connection just the same.
            if let Some(reason) = reason
                && let Some(tx) = conn.revoke.take()
            {
                let _ = tx.send(reason);
                closed += 1;
            }
        }
        closed
    }

    /// Counters, sorted by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.inner.counters.snapshot()
    }

    /// Live h2 connections in the pool.
    pub fn pooled_tunnels(&self) -> usize {
        self.inner.pool.connections().len()
    }

    /// What the proxy holds now (read-only; the fuzzer checks nothing is left behind once the
    /// traffic is over).
    pub fn resources(&self) -> Resources {
        let inner = &self.inner;
        fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
        let (pods, listener_tasks) = {
            let pods = lock(&inner.pods);
            (pods.len(), pods.values().map(|p| p.listener_tasks.len()).sum())
        };
        Resources {
            pods,
            listener_tasks,
            tasks: lock(&inner.tasks).len(),
            live_connections: lock(&inner.live).len(),
            busy: inner.busy.load(Ordering::SeqCst),
            pooled_tunnels: inner.pool.connections().len(),
        }
    }

    /// Graceful stop: close the listeners, send GOAWAY on inbound tunnels, close idle pooled
    /// tunnels, let running connections finish — for at most `deadline`, then drop the rest.
    /// Returns true if everything finished in time.
    pub async fn drain(&self, deadline: Duration) -> bool {
        let inner = &self.inner;
        inner.draining.set(true);
        let pods: Vec<IpAddr> =
            inner.pods.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        for ip in pods {
            self.remove_pod(ip);
        }
        for conn in inner.pool.connections() {
            conn.wake.notify_one();
        }
        let wait = async {
            loop {
                let idle = inner.idle.notified();
                if inner.busy.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let clean = tokio::time::timeout(deadline, wait).await.is_ok();
        if !clean {
            inner.cut_flights();
        }
        self.crash();
        clean
    }

    /// Abrupt stop, as a crash: every task and socket of the proxy is dropped now.
    pub fn crash(&self) {
        let inner = &self.inner;
        inner.crashed.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in tasks.into_values() {
            handle.abort();
        }
        inner.pods.lock().unwrap_or_else(|e| e.into_inner()).clear();
        inner.live.lock().unwrap_or_else(|e| e.into_inner()).clear();
        inner.flights.lock().unwrap_or_else(|e| e.into_inner()).clear();
        for conn in inner.pool.connections() {
            inner.pool.remove(&conn);
        }
    }
}

async fn accept_loop<N: Network>(
    inner: Arc<Inner<N>>,
    mut listener: N::Listener,
    on_accept: impl Fn(&Arc<Inner<N>>, crate::net::Accepted<N::Stream>) + Send + 'static,
) {
    loop {
        match listener.accept().await {
            Ok(acc) => on_accept(&inner, acc),
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(node = %inner.config.node, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A registered live connection; dropping it unregisters it.
pub(crate) struct LiveGuard {
    live: LiveMap,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Marks the proxy busy while alive (drain waits for none).
pub(crate) struct Busy<N: Network>(Arc<Inner<N>>);

impl<N: Network> Drop for Busy<N> {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl<N: Network> Inner<N> {
    /// Spawn a tracked task (a crash aborts it).
    pub(crate) fn spawn(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.spawn_as(id, fut);
        id
    }

    /// Spawn a tracked task that belongs to `group` while it runs.
    fn spawn_in(
        self: &Arc<Self>,
        group: &TaskGroup,
        fut: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        group.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        let g = group.clone();
        self.spawn_as(id, async move {
            fut.await;
            g.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }

    fn spawn_as(self: &Arc<Self>, id: u64, fut: impl Future<Output = ()> + Send + 'static) {
        let me = Arc::downgrade(self);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tokio::spawn(async move {
            fut.await;
            if let Some(me) = me.upgrade() {
                me.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
        });
        tasks.insert(id, handle.abort_handle());
    }

    fn abort(&self, id: u64) {
        if let Some(h) = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            h.abort();
        }
    }

    pub(crate) fn busy(self: &Arc<Self>) -> Busy<N> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether fault point `point` fires now (never without a plan).
    pub(crate) fn fault(&self, point: FaultPoint) -> bool {
        crate::faults::fires(self.config.faults.as_ref(), point)
    }

    /// Whether a test planted `bug` in this proxy's fault plan.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn planted(&self, bug: crate::faults::PlantedBug) -> bool {
        self.config.faults.as_ref().is_some_and(|f| f.planted(bug))
    }

    /// The RBAC verdict for a connection (`policy::evaluate`, unless a test planted a bug).
    pub(crate) fn authorize(
        &self,
        set: &crate::policy::PolicySet,
        w: &crate::mesh::Workload,
        attrs: &ConnectionAttrs,
    ) -> crate::policy::Verdict {
        #[cfg(feature = "planted-bugs")]
        if self.planted(crate::faults::PlantedBug::DenyAfterAllow) {
            return crate::faults::deny_after_allow(set, w, attrs);
        }
        evaluate(set, w, attrs)
    }

    pub(crate) fn emit(&self, event: ProxyEvent) {
        if self.crashed.load(Ordering::SeqCst) {
            return;
        }
        emit(self.config.sink.as_ref(), event);
    }

    /// Closes `stream` abortively (RST) — unless the proxy has crashed: a dead process resets
    /// nothing on purpose; its sockets are closed as the kernel closes them (dropped here).
    pub(crate) fn reset(&self, stream: N::Stream) {
        if self.crashed.load(Ordering::SeqCst) {
            drop(stream);
        } else {
            self.network.reset(stream);
        }
    }

    pub(crate) fn count(&self, name: &str, n: u64) {
        self.counters.add(name, n);
    }

    pub(crate) fn count_conn(&self, direction: Direction, result: &str) {
        self.counters.add(&format!("connections.{}.{result}", direction.as_str()), 1);
    }

    pub(crate) fn error(
        &self,
        client: Option<SocketAddr>,
        direction: Direction,
        stage: &str,
        status: Option<u16>,
        message: String,
    ) {
        self.emit(ProxyEvent::Error {
            node: self.config.node.clone(),
            client,
            direction,
            stage: stage.to_string(),
            status,
            message,
        });
    }

    pub(crate) fn netns_of(&self, ip: IpAddr) -> Option<N::Netns> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).get(&ip).map(|p| p.spec.netns.clone())
    }

    /// Register an authorized inbound connection; the receiver fires if a policy change revokes
    /// it. It stays registered until the guard drops (also when its handler is dropped).
    pub(crate) fn register_live(
        &self,
        workload_ip: IpAddr,
        attrs: ConnectionAttrs,
    ) -> (LiveGuard, oneshot::Receiver<String>) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, LiveConn { workload_ip, attrs, revoke: Some(tx) });
        (LiveGuard { live: self.live.clone(), id }, rx)
    }

    pub(crate) fn unregister_live(&self, guard: LiveGuard) {
        drop(guard);
    }

    pub(crate) fn draining(&self) -> Arc<Signal<bool>> {
        self.draining.clone()
    }

    /// Register a proxied connection from `client` to `destination` that is about to move bytes.
    pub(crate) fn flight(
        &self,
        direction: Direction,
        client: SocketAddr,
        destination: SocketAddr,
        start: tokio::time::Instant,
    ) -> Flight {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let moved = Arc::new(Transferred::default());
        let record = FlightRecord { direction, client, destination, moved: moved.clone(), start };
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record);
        Flight { id, moved, flights: self.flights.clone() }
    }

    /// Unregister a flight; false when a drain deadline already counted it as cut.
    pub(crate) fn land(&self, flight: &Flight) -> bool {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).remove(&flight.id).is_some()
    }

    /// A drain deadline passed with connections still moving bytes: count what they moved and
    /// log them closed by the shutdown, as their handlers are about to be dropped.
    fn cut_flights(&self) {
        let cut = std::mem::take(&mut *self.flights.lock().unwrap_or_else(|e| e.into_inner()));
        for record in cut.into_values() {
            let (sent, received) = record.moved.get();
            let d = record.direction.as_str();
            self.count(&format!("bytes.{d}.sent"), sent);
            self.count(&format!("bytes.{d}.received"), received);
            self.count_conn(record.direction, "shutdown");
            self.emit(ProxyEvent::ConnectionClosed {
                node: self.config.node.clone(),
                client: record.client,
                direction: record.direction,
                destination: record.destination,
                bytes_sent: sent,
                bytes_received: received,
                duration_ms: u64::try_from(record.start.elapsed().as_millis()).unwrap_or(u64::MAX),
                result: CloseResult::Shutdown,
                upstream: None,
            });
        }
    }

    /// Admit a connection accepted on 15008 from `peer` (see [`admit`]).
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted<N>, admit::Refusal> {
        let bounds = self.config.limits.admission();
        self.admission.lock().unwrap_or_else(|e| e.into_inner()).admit(peer, bounds)?;
        Ok(Admitted { inner: self.clone(), peer, established: false })
    }

    fn refuse_admission(&self, acc: crate::net::Accepted<N::Stream>, refusal: admit::Refusal) {
        self.count("connections.inbound-hbone.overload", 1);
        // Logged at debug only: a flood would otherwise turn into a flood of log lines.
        tracing::debug!(node = %self.config.node, peer = %acc.peer, %refusal, "15008");
        self.reset(acc.stream);
    }
}

/// A connection admitted on 15008; releases its place in the table when dropped.
pub(crate) struct Admitted<N: Network> {
    inner: Arc<Inner<N>>,
    peer: IpAddr,
    established: bool,
}

impl<N: Network> Admitted<N> {
    /// The TLS handshake is done: the connection stops counting as a handshake.
    pub(crate) fn established(&mut self) {
        if !self.established {
            self.established = true;
            self.inner.admission.lock().unwrap_or_else(|e| e.into_inner()).established(self.peer);
        }
    }
}

impl<N: Network> Drop for Admitted<N> {
    fn drop(&mut self) {
        let mut table = self.inner.admission.lock().unwrap_or_else(|e| e.into_inner());
        table.release(self.peer, self.established);
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}
