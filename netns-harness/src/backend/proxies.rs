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
use ambient_proxy::mesh::MeshSpec;
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
        Ok(Proxies::with_ca(nodes, trust_domain, seed, ca))
    }

    /// No proxy running yet; they will issue their certificates from `ca` (a mixed cluster's
    /// proxies share ztunnel's test root).
    pub fn with_ca(nodes: &[String], trust_domain: &str, seed: u64, ca: MeshCa) -> Proxies {
        let nodes = nodes
            .iter()
            .map(|n| (n.clone(), NodeSlot { sink: Arc::default(), proxy: None, crashed_at: 0 }))
            .collect();
        Proxies {
            network: LinuxNetwork::new(),
            ca: Arc::new(ca),
            trust_domain: trust_domain.to_string(),
            seed,
            nodes,
            dns_upstream: None,
        }
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

/// Which proxy a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// Our `NodeProxy` (crate `ambient-proxy`).
    Ours,
    /// A real ztunnel binary ([`crate::ztunnel`]).
    Ztunnel,
}

impl ProxyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::Ours => "ours",
            ProxyKind::Ztunnel => "ztunnel",
        }
    }
}

/// What the backend runs on its nodes: `kinds` assigned to the nodes in order, cycling
/// (`[Ztunnel]`: ztunnel everywhere; `[Ours, Ztunnel]`: ours on the first node, ztunnel on
/// the second, …).
#[derive(Debug, Clone)]
pub struct ProxyPlan {
    pub kinds: Vec<ProxyKind>,
    /// Required when any kind is [`ProxyKind::Ztunnel`].
    pub ztunnel: Option<crate::ztunnel::ZtunnelSetup>,
}

impl Default for ProxyPlan {
    fn default() -> Self {
        ProxyPlan { kinds: vec![ProxyKind::Ours], ztunnel: None }
    }
}

impl ProxyPlan {
    /// The kind of the node with this index.
    pub fn kind(&self, index: usize) -> ProxyKind {
        if self.kinds.is_empty() { ProxyKind::Ours } else { self.kinds[index % self.kinds.len()] }
    }

    /// In words, for reports (`ours`, `ztunnel`, `ours,ztunnel`).
    pub fn describe(&self) -> String {
        self.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Every node runs our proxy.
    pub fn is_ours_only(&self) -> bool {
        self.kinds.iter().all(|k| *k == ProxyKind::Ours)
    }
}

/// A captured pod as any proxy is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl PodInfo {
    fn ours(&self) -> PodRef {
        (self.ip, self.netns.clone())
    }

    fn ztunnel(&self) -> super::ztunnels::ZPod {
        super::ztunnels::ZPod {
            ip: self.ip,
            netns: self.netns.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            service_account: self.service_account.clone(),
        }
    }
}

/// Every node's proxy, of whichever kind the plan gives it.
pub struct NodeProxies {
    kinds: BTreeMap<String, ProxyKind>,
    ours: Proxies,
    ztunnels: Option<super::ztunnels::Ztunnels>,
}

impl std::fmt::Debug for NodeProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProxies")
            .field("kinds", &self.kinds)
            .field("ours", &self.ours)
            .field("ztunnels", &self.ztunnels)
            .finish()
    }
}

impl NodeProxies {
    /// The DNS server the proxies forward to (the scenario's DNS server host), for proxies
    /// started from now on. ztunnel's DNS proxy is on only with one (it reads the address from
    /// its resolv.conf, which has no port: the DNS server's is 53).
    pub fn set_dns_upstream(&mut self, upstream: Option<std::net::SocketAddr>) -> io::Result<()> {
        self.ours.dns_upstream = upstream;
        if let Some(z) = self.ztunnels.as_mut() {
            let ip = match upstream {
                Some(std::net::SocketAddr::V4(a)) if a.port() == 53 => Some(*a.ip()),
                Some(other) => {
                    return Err(io::Error::other(format!(
                        "ztunnel's upstream resolver is read from a resolv.conf, which names \
                         an IPv4 nameserver on port 53; {other} is not one"
                    )));
                }
                None => None,
            };
            z.set_nameserver(ip)?;
        }
        Ok(())
    }

    /// Nothing runs yet. With ztunnel on a node, `mesh` is written as its config; with both
    /// kinds, our proxies issue certificates from ztunnel's test root and key (one CA).
    pub fn new(
        nodes: &[String],
        trust_domain: &str,
        seed: u64,
        plan: &ProxyPlan,
        mesh: &MeshSpec,
    ) -> io::Result<NodeProxies> {
        let kinds: BTreeMap<String, ProxyKind> =
            nodes.iter().enumerate().map(|(i, n)| (n.clone(), plan.kind(i))).collect();
        let of = |k: ProxyKind| -> Vec<String> {
            kinds.iter().filter(|(_, v)| **v == k).map(|(n, _)| n.clone()).collect()
        };
        let (ours_nodes, zt_nodes) = (of(ProxyKind::Ours), of(ProxyKind::Ztunnel));
        let ztunnels = if zt_nodes.is_empty() {
            None
        } else {
            let setup = plan.ztunnel.as_ref().ok_or_else(|| {
                io::Error::other("ztunnel nodes need a ztunnel binary (--ztunnel-bin)")
            })?;
            let mut z = super::ztunnels::Ztunnels::new(&setup.binary, &zt_nodes, trust_domain)?;
            z.write_config(mesh)?;
            Some(z)
        };
        let ours = if ztunnels.is_some() && !ours_nodes.is_empty() {
            let setup = plan.ztunnel.as_ref().expect("checked above");
            let ca = setup.shared_ca(trust_domain).map_err(io::Error::other)?;
            Proxies::with_ca(&ours_nodes, trust_domain, seed, ca)
        } else {
            Proxies::new(&ours_nodes, trust_domain, seed)?
        };
        Ok(NodeProxies { kinds, ours, ztunnels })
    }

    pub fn kind(&self, node: &str) -> ProxyKind {
        self.kinds.get(node).copied().unwrap_or(ProxyKind::Ours)
    }

    /// Any node runs ztunnel.
    pub fn has_ztunnel(&self) -> bool {
        self.ztunnels.is_some()
    }

    fn zt(&mut self) -> io::Result<&mut super::ztunnels::Ztunnels> {
        self.ztunnels.as_mut().ok_or_else(|| io::Error::other("no ztunnel in this run"))
    }

    pub fn is_running(&self, node: &str) -> bool {
        match self.kind(node) {
            ProxyKind::Ours => self.ours.is_running(node),
            ProxyKind::Ztunnel => self.ztunnels.as_ref().is_some_and(|z| z.is_running(node)),
        }
    }

    /// Starts `node`'s proxy on `ns` with `mesh`, serving `pods`.
    pub fn start(
        &mut self,
        node: &str,
        ns: &Netns,
        mesh: &MeshSpec,
        pods: &[PodInfo],
    ) -> io::Result<()> {
        match self.kind(node) {
            ProxyKind::Ours => {
                let state = MeshState::new(mesh.clone()).map_err(io::Error::other)?;
                self.ours.start(node, ns, state, pods.iter().map(PodInfo::ours).collect())
            }
            ProxyKind::Ztunnel => {
                let pods: Vec<_> = pods.iter().map(PodInfo::ztunnel).collect();
                self.zt()?.start(node, ns, &pods)
            }
        }
    }

    /// Crashes `node`'s proxy (if running).
    pub fn crash(&mut self, node: &str) {
        match self.kind(node) {
            ProxyKind::Ours => self.ours.crash(node),
            ProxyKind::Ztunnel => {
                if let Some(z) = self.ztunnels.as_mut() {
                    z.crash(node);
                }
            }
        }
    }

    /// Adds a captured pod to `node`'s proxy, if it runs.
    pub fn add_pod(&mut self, node: &str, ns: &Netns, pod: &PodInfo) -> io::Result<()> {
        match self.kind(node) {
            ProxyKind::Ours => self.ours.add_pod(node, ns, pod.ours()),
            ProxyKind::Ztunnel => self.zt()?.add_pod(node, &pod.ztunnel()),
        }
    }

    /// Stops serving a pod (ours on the node namespace's runtime `ns`, where it starts the
    /// pod's drain timer; ztunnel by a ZDS delete).
    pub fn remove_pod(&mut self, node: &str, ns: &Netns, pod: &PodInfo) -> io::Result<()> {
        match self.kind(node) {
            ProxyKind::Ours => self.ours.remove_pod(node, ns, pod.ip),
            ProxyKind::Ztunnel => self.zt()?.remove_pod(node, &pod.ztunnel()),
        }
    }

    /// Gives the proxies the new mesh: ours at once (live connections re-checked); ztunnel's
    /// config is rewritten, and the nodes whose ztunnel runs are returned: each must be
    /// restarted to read it.
    pub fn update_mesh(&mut self, mesh: &MeshSpec) -> io::Result<Vec<String>> {
        let state = MeshState::new(mesh.clone()).map_err(io::Error::other)?;
        self.ours.update_mesh(&state);
        match self.ztunnels.as_mut() {
            Some(z) => {
                z.write_config(mesh)?;
                Ok(z.running())
            }
            None => Ok(Vec::new()),
        }
    }

    fn merged(&self, ours: EventLog, since_crash: bool) -> EventLog {
        let mut log = ours;
        if let Some(z) = &self.ztunnels {
            for (node, kind) in &self.kinds {
                if *kind == ProxyKind::Ztunnel {
                    let events =
                        if since_crash { z.events_since_crash(node) } else { z.events(node) };
                    log.insert(node.clone(), events);
                }
            }
        }
        log
    }

    /// Every node's events so far.
    pub fn log(&self) -> EventLog {
        self.merged(self.ours.log(), false)
    }

    /// Every node's events since its proxy last crashed.
    pub fn log_since_crash(&self) -> EventLog {
        self.merged(self.ours.log_since_crash(), true)
    }

    /// Adds the ztunnel nodes' `dns` events to `log`: ztunnel's DNS log names no socket, so
    /// its lines are tied to the lookups made (`asked`); our proxies' events are in `log`.
    pub fn tie_lookups(&self, log: &mut EventLog, asked: &[crate::ztunnel::dns::Asked<'_>]) {
        if let Some(z) = self.ztunnels.as_ref() {
            z.tie_lookups(log, asked);
        }
    }

    /// ztunnel's output per node, as artifacts (`ztunnel-<node>.log`).
    pub fn artifacts(&self) -> Vec<(String, Vec<u8>)> {
        self.ztunnels
            .iter()
            .flat_map(|z| z.logs())
            .map(|(node, text)| (format!("ztunnel-{node}.log"), text.into_bytes()))
            .collect()
    }

    /// Crashes every proxy (teardown).
    pub fn crash_all(&mut self) {
        self.ours.crash_all();
        if let Some(z) = self.ztunnels.as_mut() {
            z.crash_all();
        }
    }
}
