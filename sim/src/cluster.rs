//! What runs in the simulated cluster: one real node proxy per node (on [`SimNetwork`]), the
//! apps a scenario's `serve` lists, and the proxies' event log.
//!
//! A proxy gets the simulator's deterministic inputs: keys derived from the seed
//! (`KeySource::Seeded`), a CA generated at the fixed origin, `deterministic_provider` (a seed
//! per node and start, so a restarted proxy draws fresh but reproducible randomness), and a
//! wall clock at the fixed origin plus simulated time. Its events go to a sink that keeps them
//! in emission order (and in the trace).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::{FIXED_ORIGIN, WallClock};
use ambient_proxy::crypto::deterministic_provider;
use ambient_proxy::events::{EventSink, ProxyEvent};
use ambient_proxy::faults::FaultPlan;
use ambient_proxy::net::{ListenOptions, Listener, Network};
use ambient_proxy::tls::TlsContext;
use ambient_proxy::{MeshState, NodeProxy, PodSpec, ProxyConfig, Resources};
use ambient_scenarios::BackendError;
use ambient_scenarios::ClusterState;
use ambient_scenarios::assemble::{Accept, Accepts, EventLog};
use ambient_scenarios::traffic::serve;
use ambient_scenarios::world::App;
use tokio::task::AbortHandle;

use crate::net::SimNetwork;
use crate::shared::Shared;
use crate::topology::NetnsId;

/// Hands a proxy's events to the run's log.
#[derive(Debug)]
struct Sink {
    node: String,
    shared: Arc<Shared>,
}

impl EventSink for Sink {
    fn emit(&self, event: &ProxyEvent) {
        let now = self.shared.now();
        let mut log = self.shared.log();
        if let Some(t) = log.trace.as_mut() {
            let json = serde_json::to_string(event).unwrap_or_default();
            t.push(now, format!("{} proxy {json}", self.node));
        }
        log.events.push((self.node.clone(), event.clone()));
    }
}

/// Stable 64-bit mixing (FNV-1a), for per-node seeds.
fn mix(seed: u64, text: &str, n: u64) -> u64 {
    text.bytes()
        .chain(n.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// One accept by an app: what the Outcome joins connections to.
#[derive(Debug, Clone)]
struct AcceptRecord {
    app: App,
    peer: SocketAddr,
    served: Option<ambient_scenarios::traffic::ServeReport>,
}

/// The proxies and apps of a run.
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    pub net: SimNetwork,
    seed: u64,
    trust_domain: String,
    ca: Arc<MeshCa>,
    proxies: BTreeMap<String, NodeProxy<SimNetwork>>,
    starts: u64,
    apps: BTreeMap<NetnsId, Arc<Mutex<Vec<AbortHandle>>>>,
    accepts: Arc<Mutex<Vec<AcceptRecord>>>,
    /// Fault points every proxy of the run gets (the fuzzer's; `None` otherwise).
    pub faults: Option<Arc<FaultPlan>>,
    /// Where every proxy's DNS proxy forwards names outside the mesh (the scenario's DNS
    /// server, port 53).
    pub dns_upstream: Option<SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cluster {
    pub fn new(shared: Arc<Shared>, seed: u64, trust_domain: &str) -> Result<Self, BackendError> {
        let ca = MeshCa::generate(trust_domain, &KeySource::Seeded(seed), FIXED_ORIGIN)
            .map_err(|e| BackendError::new(format!("mesh CA: {e}")))?;
        Ok(Cluster {
            net: SimNetwork::new(shared.clone()),
            shared,
            seed,
            trust_domain: trust_domain.to_string(),
            ca: Arc::new(ca),
            proxies: BTreeMap::new(),
            starts: 0,
            apps: BTreeMap::new(),
            accepts: Arc::new(Mutex::new(Vec::new())),
            faults: None,
            dns_upstream: None,
        })
    }

    pub fn mesh(cluster: &ClusterState<'_>) -> Result<MeshState, BackendError> {
        MeshState::new(cluster.mesh_spec()).map_err(|e| {
            BackendError::new(format!("the mesh the proxies would get is invalid: {e}"))
        })
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.proxies.contains_key(node)
    }

    /// Starts `node`'s proxy serving `pods` (captured pods of that node: IP and namespace).
    pub async fn start_proxy(
        &mut self,
        node: &str,
        mesh: MeshState,
        pods: &[(Ipv4Addr, NetnsId)],
    ) -> Result<(), BackendError> {
        self.starts += 1;
        let clock = WallClock::starting_at(FIXED_ORIGIN + self.shared.now());
        let provider = deterministic_provider(mix(self.seed, node, self.starts));
        let store = CertStore::new(self.ca.clone(), KeySource::Seeded(self.seed), clock, provider);
        let mut cfg = ProxyConfig::new(node, TlsContext::new(Arc::new(store), &self.trust_domain));
        cfg.seed = self.seed;
        cfg.sink = Arc::new(Sink { node: node.to_string(), shared: self.shared.clone() });
        cfg.faults = self.faults.clone();
        cfg.dns.upstream = self.dns_upstream;
        let proxy = NodeProxy::new(self.net.clone(), mesh, cfg);
        self.shared.note(format!("proxy@{node} starts"));
        for &(ip, netns) in pods {
            let spec =
                PodSpec { ip: IpAddr::V4(ip), netns, listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
            proxy
                .add_pod(spec)
                .await
                .map_err(|e| BackendError::new(format!("proxy@{node}: adding pod {ip}: {e}")))?;
        }
        self.proxies.insert(node.to_string(), proxy);
        Ok(())
    }

    /// Crashes `node`'s proxy: every task and socket of it dropped now.
    pub async fn crash_proxy(&mut self, node: &str) {
        if let Some(p) = self.proxies.remove(node) {
            self.shared.note(format!("proxy@{node} crashes"));
            p.crash();
            drop(p);
            // Aborted tasks drop their sockets when the runtime next runs them.
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }
    }

    pub fn update_mesh(&self, mesh: &MeshState) {
        for p in self.proxies.values() {
            p.update_mesh(mesh.clone());
        }
    }

    pub async fn add_pod(
        &self,
        node: &str,
        ip: Ipv4Addr,
        netns: NetnsId,
    ) -> Result<(), BackendError> {
        let Some(p) = self.proxies.get(node) else { return Ok(()) };
        let spec =
            PodSpec { ip: IpAddr::V4(ip), netns, listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        p.add_pod(spec)
            .await
            .map_err(|e| BackendError::new(format!("proxy@{node}: adding pod {ip}: {e}")))
    }

    pub fn remove_pod(&self, node: &str, ip: Ipv4Addr) {
        if let Some(p) = self.proxies.get(node) {
            p.remove_pod(IpAddr::V4(ip));
        }
    }

    /// Starts the apps of a pod or host.
    pub async fn start_apps(
        &mut self,
        netns: NetnsId,
        label: &str,
        serve_on: &BTreeMap<u16, App>,
    ) -> Result<(), BackendError> {
        let tasks = self.apps.entry(netns).or_default().clone();
        for (&port, &app) in serve_on {
            let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            let mut listener =
                self.net.listen(&netns, at, &ListenOptions::default()).await.map_err(|e| {
                    BackendError::new(format!("{label}: app {} on port {port}: {e}", app.name()))
                })?;
            let accepts = self.accepts.clone();
            let served = tasks.clone();
            let handle = tokio::spawn(async move {
                while let Ok(acc) = listener.accept().await {
                    let index = {
                        let mut a = lock(&accepts);
                        a.push(AcceptRecord { app, peer: acc.peer, served: None });
                        a.len() - 1
                    };
                    let accepts = accepts.clone();
                    let h = tokio::spawn(async move {
                        let report = serve(app, acc.stream).await;
                        lock(&accepts)[index].served = Some(report);
                    });
                    lock(&served).push(h.abort_handle());
                }
            });
            lock(&tasks).push(handle.abort_handle());
        }
        Ok(())
    }

    /// Starts the DNS server app of the scenario's DNS server host (UDP and TCP 53); the queries
    /// it answers go to `log`.
    pub async fn start_dns_server(
        &mut self,
        netns: NetnsId,
        label: &str,
        zone: &ambient_scenarios::world::DnsZone,
        log: &ambient_scenarios::traffic::dns::QueryLog,
    ) -> Result<(), BackendError> {
        let tasks = self.apps.entry(netns).or_default().clone();
        crate::dns::start_server(&self.net, netns, label, zone, log, &tasks).await
    }

    /// Stops every app of a namespace (its pod is deleted).
    pub async fn stop_apps(&mut self, netns: NetnsId) {
        if let Some(tasks) = self.apps.remove(&netns) {
            for h in lock(&tasks).drain(..) {
                h.abort();
            }
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Every proxy's events so far, by node, each in emission order.
    pub fn event_log(&self) -> EventLog {
        let mut log = EventLog::new();
        for (node, e) in &self.shared.log().events {
            log.entry(node.clone()).or_default().push(e.clone());
        }
        log
    }

    /// Every proxy's events about each client address, by node, each in emission order: the
    /// part of [`Cluster::event_log`] that `assemble::connection` reads for one connection,
    /// split once so that assembling n connections costs O(events), not O(n × events).
    pub fn event_logs_by_client(&self) -> BTreeMap<SocketAddr, EventLog> {
        let mut out: BTreeMap<SocketAddr, EventLog> = BTreeMap::new();
        for (node, e) in &self.shared.log().events {
            if let Some(client) = e.client() {
                out.entry(client).or_default().entry(node.clone()).or_default().push(e.clone());
            }
        }
        out
    }

    /// Every app accept so far, in order.
    pub fn accepts(&self) -> Accepts {
        let mut out = Accepts::default();
        for a in lock(&self.accepts).iter() {
            out.push(Accept { app: a.app, peer: a.peer, served: a.served });
        }
        out
    }

    /// Counters of every running proxy (for reports and the bench).
    pub fn proxy_counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.proxies.iter().map(|(n, p)| (n.clone(), p.counters())).collect()
    }

    /// What every running proxy holds now, by node.
    pub fn proxy_resources(&self) -> BTreeMap<String, Resources> {
        self.proxies.iter().map(|(n, p)| (n.clone(), p.resources())).collect()
    }

    /// Stops everything (the end of a run).
    pub fn shutdown(&mut self) {
        for p in self.proxies.values() {
            p.crash();
        }
        self.proxies.clear();
        for tasks in self.apps.values() {
            for h in lock(tasks).drain(..) {
                h.abort();
            }
        }
    }
}
