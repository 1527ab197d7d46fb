//! The node proxies of a run: one real [`NodeProxy`] per node over [`LinuxNetwork`], running on
//! its node namespace's worker thread (a current-thread runtime), with its listeners in each
//! captured pod's namespace, given by path (in-pod mode).
//!
//! One mesh CA per run (Ed25519, random keys, ring's provider: the defaults of a real
//! deployment); each proxy start gets a fresh certificate store, as a restarted proxy would.
//! Each node keeps one [`RecordingSink`] across restarts, so its event log is the node's whole
//! history. A crash aborts every task of the proxy (its sockets close as a dying process's
//! would); a restart is a crash and a new proxy with the node's captured pods re-added.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::WallClock;
use ambient_proxy::crypto::default_provider;
use ambient_proxy::events::RecordingSink;
use ambient_proxy::net::linux::{LinuxNetwork, NetnsPath};
use ambient_proxy::tls::TlsContext;
use ambient_proxy::{MeshState, NodeProxy, PodSpec, ProxyConfig};
use ambient_scenarios::assemble::EventLog;

use crate::netns::Netns;

/// How long a restarted proxy keeps retrying a port its predecessor's listener still holds (the
/// aborted listener task is dropped by the runtime shortly after the crash).
const REBIND: Duration = Duration::from_secs(3);

struct NodeSlot {
    sink: Arc<RecordingSink>,
    proxy: Option<NodeProxy<LinuxNetwork>>,
    /// How many events the node had logged when its proxy last crashed: whatever was open
    /// before that was ended by the crash, which logs nothing.
    crashed_at: usize,
}

/// Every node's proxy.
pub struct Proxies {
    network: LinuxNetwork,
    ca: Arc<MeshCa>,
    trust_domain: String,
    seed: u64,
    nodes: BTreeMap<String, NodeSlot>,
    /// Where the DNS proxies forward names outside the mesh (the scenario's DNS server).
    pub dns_upstream: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Proxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running: Vec<&String> =
            self.nodes.iter().filter(|(_, s)| s.proxy.is_some()).map(|(n, _)| n).collect();
        f.debug_struct("Proxies").field("running", &running).finish()
    }
}

/// A captured pod as a proxy serves it: address and namespace path.
pub type PodRef = (Ipv4Addr, PathBuf);

impl Proxies {
    /// No proxy running yet; the CA is made now.
    pub fn new(nodes: &[String], trust_domain: &str, seed: u64) -> io::Result<Proxies> {
        let provider = default_provider();
        let ca =
            MeshCa::generate(trust_domain, &KeySource::Random(provider), WallClock::system().now())
                .map_err(io::Error::other)?;
        let nodes = nodes
            .iter()
            .map(|n| (n.clone(), NodeSlot { sink: Arc::default(), proxy: None, crashed_at: 0 }))
            .collect();
        Ok(Proxies {
            network: LinuxNetwork::new(),
            ca: Arc::new(ca),
            trust_domain: trust_domain.to_string(),
            seed,
            nodes,
            dns_upstream: None,
        })
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|s| s.proxy.is_some())
    }

    /// Starts `node`'s proxy on `ns`'s thread with `mesh`, serving `pods`.
    pub fn start(
        &mut self,
        node: &str,
        ns: &Netns,
        mesh: MeshState,
        pods: Vec<PodRef>,
    ) -> io::Result<()> {
        let slot =
            self.nodes.get_mut(node).ok_or_else(|| io::Error::other(format!("no node {node}")))?;
        if slot.proxy.is_some() {
            return Err(io::Error::other(format!("the proxy of {node} is already running")));
        }
        let provider = default_provider();
        let store = CertStore::new(
            self.ca.clone(),
            KeySource::Random(provider.clone()),
            WallClock::system(),
            provider,
        );
        let mut config =
            ProxyConfig::new(node, TlsContext::new(Arc::new(store), self.trust_domain.clone()));
        config.seed = self.seed;
        config.sink = slot.sink.clone();
        config.dns.upstream = self.dns_upstream;
        let network = self.network.clone();
        let proxy = ns
            .run(move || async move {
                let proxy = NodeProxy::new(network, mesh, config);
                for (ip, path) in pods {
                    add_pod(&proxy, ip, path).await?;
                }
                Ok::<_, io::Error>(proxy)
            })
            .map_err(|e| io::Error::other(e.to_string()))??;
        slot.proxy = Some(proxy);
        Ok(())
    }

    /// Crashes `node`'s proxy (if running): every task and socket of it is dropped now.
    pub fn crash(&mut self, node: &str) {
        if let Some(slot) = self.nodes.get_mut(node)
            && let Some(proxy) = slot.proxy.take()
        {
            proxy.crash();
            slot.crashed_at = slot.sink.events().len();
        }
    }

    /// Adds a captured pod to `node`'s proxy, if it runs.
    pub fn add_pod(&self, node: &str, ns: &Netns, pod: PodRef) -> io::Result<()> {
        let Some(proxy) = self.nodes.get(node).and_then(|s| s.proxy.clone()) else {
            return Ok(());
        };
        ns.run(move || async move { add_pod(&proxy, pod.0, pod.1).await })
            .map_err(|e| io::Error::other(e.to_string()))?
    }

    /// Stops serving a pod (its listeners close), on the node namespace's runtime `ns` (the
    /// proxy starts the pod's drain timer there).
    pub fn remove_pod(&self, node: &str, ns: &Netns, ip: Ipv4Addr) -> io::Result<()> {
        let Some(proxy) = self.nodes.get(node).and_then(|s| s.proxy.clone()) else {
            return Ok(());
        };
        ns.run(move || async move {
            proxy.remove_pod(IpAddr::V4(ip));
        })
        .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Gives every running proxy the new mesh (live connections are re-checked).
    pub fn update_mesh(&self, mesh: &MeshState) {
        for proxy in self.nodes.values().filter_map(|s| s.proxy.as_ref()) {
            proxy.update_mesh(mesh.clone());
        }
    }

    /// Every node's events so far.
    pub fn log(&self) -> EventLog {
        self.nodes.iter().map(|(n, s)| (n.clone(), s.sink.events())).collect()
    }

    /// Every node's events since its proxy last crashed: the connections a proxy may still be
    /// carrying are among these.
    pub fn log_since_crash(&self) -> EventLog {
        self.nodes
            .iter()
            .map(|(n, s)| (n.clone(), s.sink.events().split_off(s.crashed_at)))
            .collect()
    }

    /// Crashes every proxy (teardown).
    pub fn crash_all(&mut self) {
        for slot in self.nodes.values_mut() {
            if let Some(proxy) = slot.proxy.take() {
                proxy.crash();
            }
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.crash_all();
    }
}

async fn add_pod(proxy: &NodeProxy<LinuxNetwork>, ip: Ipv4Addr, path: PathBuf) -> io::Result<()> {
    let spec = || PodSpec {
        ip: IpAddr::V4(ip),
        netns: NetnsPath::at(path.clone()),
        listen_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let started = tokio::time::Instant::now();
    loop {
        match proxy.add_pod(spec()).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && started.elapsed() < REBIND => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}
