//! The scenario driver: sets the cluster up, runs the steps in order on simulated time, and
//! assembles the Outcome.
//!
//! - `connect`: one client task per connection (`traffic::run_client` on a simulated socket in
//!   the client's namespace); `count` runs them one after another in one task, `parallel` all
//!   at once. A foreground step waits for its connections, then for the network to settle; a
//!   background one goes on at once and settles at a `check` naming it, or at the end.
//! - `fault`: link faults go to the packet loop; proxy faults crash and start the real proxy;
//!   cluster changes (`add-pod`, `delete-pod`, `apply`, `remove`) go through `ClusterState`, and
//!   every running proxy gets the new mesh.
//! - `resolve`: the client's stub resolver (`traffic::dns::lookup` on simulated UDP/TCP sockets
//!   in its namespace) asks the DNS server host, port 53 — a captured pod's query is REDIRECTed
//!   to its proxy's 15053 by the in-pod rules — then the network settles. A connect with
//!   `resolve: true` makes the same lookup before each connection and connects to the answer.
//!   The DNS server host runs `traffic::dns`'s server (UDP and TCP 53) and is every proxy's
//!   DNS upstream.
//! - `wait`: sleeps (simulated). `check`: settles the named connections and the network, then
//!   snapshots the state.
//!
//! The Outcome's connections and lookups are assembled at the end, from every proxy's events and every
//! app's accepts, with `ambient_scenarios::assemble`, as the netns backend does.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use ambient_proxy::Resources;
use ambient_proxy::faults::FaultPlan;
use ambient_proxy::net::ConnectOptions;
use ambient_scenarios::BackendError;
use ambient_scenarios::ClusterState;
use ambient_scenarios::assemble::{self, ConnLabels, EventLog};
use ambient_scenarios::outcome::{Outcome, Snapshot};
use ambient_scenarios::traffic::dns::{
    ByName, LookupCell, LookupSpec, QueryLog, connect_by_name, lookup, query_id,
};
use ambient_scenarios::traffic::{ClientReport, ClientSpec, Payload, run_client};
use ambient_scenarios::world::{
    Action, App, Connect, Fault, NodeLink, Peer, PeerKind, Repeat, Resolve, World,
};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::dns::{Lookup, SimResolver};
use crate::net::SimNetwork;
use crate::observe;
use crate::pump::settle;
use crate::shared::Shared;
use crate::topology::NetnsId;
use ambient_scenarios::world::DNS_PORT;

type ReportCell = Arc<Mutex<Option<(ClientReport, Option<SocketAddr>)>>>;
/// The client socket's address, once its SYN left (kept outside the client's task, so that a
/// client killed with its pod can still be tied to what the proxies logged).
type AddrCell = Arc<Mutex<Option<SocketAddr>>>;

/// One connection the run opened.
#[derive(Debug)]
struct Conn {
    id: String,
    from: String,
    to: String,
    app: Option<App>,
    endpoints: Vec<(SocketAddrV4, App)>,
    result: ReportCell,
    /// The client's namespace.
    netns: NetnsId,
    client: AddrCell,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drives one run.
#[derive(Debug)]
pub struct Driver<'w> {
    world: &'w World,
    seed: u64,
    shared: Arc<Shared>,
    cluster: Cluster,
    state: ClusterState<'w>,
    conns: Vec<Conn>,
    /// Running client tasks, by connect id, with the client's namespace.
    running: Vec<(String, NetnsId, JoinHandle<()>)>,
    checks: Vec<Snapshot>,
    /// Every DNS lookup started, in order (`resolve` steps and connects to a name).
    lookups: Vec<Lookup>,
    /// The queries the DNS server host answered.
    served: QueryLog,
}

async fn one_connection(
    net: SimNetwork,
    netns: NetnsId,
    dst: SocketAddrV4,
    spec: ClientSpec,
    client: AddrCell,
    by_name: Option<ByName>,
) -> (ClientReport, Option<SocketAddr>) {
    let seen = client.clone();
    let connect = async move {
        let opts = ConnectOptions::default();
        let sockets = SimResolver { net: net.clone(), netns };
        let dial = |dst: SocketAddrV4| async move {
            net.connect_observed(&netns, SocketAddr::V4(dst), &opts, Some(seen)).await
        };
        match by_name {
            None => dial(dst).await,
            Some(b) => connect_by_name(&sockets, &b, dial).await,
        }
    };
    let report = run_client(connect, &spec).await;
    let addr = *lock(&client);
    (report, addr)
}

fn internal(e: impl std::fmt::Display) -> BackendError {
    BackendError::new(format!("simulator: {e}"))
}

impl<'w> Driver<'w> {
    pub fn new(world: &'w World, seed: u64, shared: Arc<Shared>) -> Result<Self, BackendError> {
        let cluster = Cluster::new(shared.clone(), seed, &world.trust_domain)?;
        Ok(Driver {
            world,
            seed,
            shared,
            cluster,
            state: ClusterState::initial(world),
            conns: Vec::new(),
            running: Vec::new(),
            checks: Vec::new(),
            lookups: Vec::new(),
            served: QueryLog::default(),
        })
    }

    fn node_index(&self, name: &str) -> Result<usize, BackendError> {
        self.world
            .node(name)
            .map(|n| n.index)
            .ok_or_else(|| internal(format!("unknown node {name}")))
    }

    fn netns_of(&self, peer: &Peer) -> Result<NetnsId, BackendError> {
        let f = self.shared.state();
        let id = match &peer.kind {
            PeerKind::Pod(key) => f.topo.pods.get(key).copied(),
            PeerKind::External(name) => f.topo.externals.get(name).copied(),
        };
        id.ok_or_else(|| internal(format!("{} has no namespace now", peer.label())))
    }

    /// The captured pods of `node` now: (IP, namespace).
    fn captured_on(&self, node: &str) -> Vec<(std::net::Ipv4Addr, NetnsId)> {
        let f = self.shared.state();
        self.state
            .pods
            .values()
            .filter(|p| p.node == node && p.is_captured())
            .filter_map(|p| f.topo.pods.get(&p.key).map(|&id| (p.ip, id)))
            .collect()
    }

    async fn start_proxy(&mut self, node: &str) -> Result<(), BackendError> {
        let mesh = Cluster::mesh(&self.state)?;
        let pods = self.captured_on(node);
        self.cluster.start_proxy(node, mesh, &pods).await
    }

    /// Gives every proxy of the run these fault points.
    pub fn with_faults(mut self, plan: Option<Arc<FaultPlan>>) -> Self {
        self.cluster.faults = plan;
        self
    }

    /// Sets the cluster up, runs every step, and returns the Outcome.
    pub async fn run(self) -> Result<Outcome, BackendError> {
        Ok(self.run_inspected().await?.0)
    }

    /// [`Driver::run`], also returning what each running proxy held at the end.
    pub async fn run_inspected(
        mut self,
    ) -> Result<(Outcome, BTreeMap<String, Resources>), BackendError> {
        let world = self.world;
        self.cluster.dns_upstream =
            world.nameserver().map(|h| SocketAddr::V4(SocketAddrV4::new(h.ip, DNS_PORT)));
        for node in &world.nodes {
            self.start_proxy(&node.name).await?;
        }
        let apps: Vec<(NetnsId, String, _)> = {
            let f = self.shared.state();
            let pods = world
                .pods
                .values()
                .filter_map(|p| Some((*f.topo.pods.get(&p.key)?, p.label(), p.serve.clone())));
            let hosts = world.external.values().filter_map(|h| {
                Some((*f.topo.externals.get(&h.name)?, h.name.clone(), h.serve.clone()))
            });
            pods.chain(hosts).collect()
        };
        for (netns, label, serve) in apps {
            self.cluster.start_apps(netns, &label, &serve).await?;
        }
        if let Some(h) = world.nameserver()
            && let Some(zone) = &h.dns
        {
            let netns =
                self.netns_of(&Peer { kind: PeerKind::External(h.name.clone()), ip: h.ip })?;
            self.cluster.start_dns_server(netns, &h.name, zone, &self.served).await?;
        }
        settle(&self.shared).await;
        for step in &world.steps {
            self.shared.note(format!("step {} {}", step.index, describe(&step.action)));
            match &step.action {
                Action::Connect(c) => self.connect(c).await?,
                Action::Fault(f) => {
                    self.fault(f, step.index).await?;
                    settle(&self.shared).await;
                }
                Action::Wait(d) => tokio::time::sleep(*d).await,
                Action::Resolve(r) => self.resolve(r).await?,
                Action::Check(check) => {
                    for id in &check.settles {
                        self.join(Some(id)).await?;
                    }
                    settle(&self.shared).await;
                    let state = self.snapshot();
                    self.checks.push(Snapshot { step: step.index, state });
                }
            }
        }
        self.join(None).await?;
        settle(&self.shared).await;
        self.shared.note("end");
        let end = self.snapshot();
        let logs = self.cluster.event_logs_by_client();
        let none = EventLog::new();
        let mut accepts = self.cluster.accepts();
        let mut connections = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            let Some((report, client)) = lock(&c.result).clone() else {
                return Err(internal(format!("connection {} never reported", c.id)));
            };
            let labels = ConnLabels {
                id: &c.id,
                from: &c.from,
                to: &c.to,
                app: c.app,
                endpoints: &c.endpoints,
            };
            let log = client.and_then(|a| logs.get(&a)).unwrap_or(&none);
            connections.push(assemble::connection(labels, &report, client, log, &mut accepts));
        }
        let resolutions =
            crate::dns::resolutions(&self.lookups, &self.cluster.event_log(), &self.served);
        let resources = self.cluster.proxy_resources();
        self.cluster.shutdown();
        let outcome = Outcome {
            scenario: world.id.clone(),
            seed: self.seed,
            connections,
            resolutions,
            checks: std::mem::take(&mut self.checks),
            end,
            skipped: Vec::new(),
        };
        Ok((outcome, resources))
    }

    fn snapshot(&self) -> ambient_scenarios::outcome::State {
        let log = self.cluster.event_log();
        let now = self.shared.now();
        observe::state(&self.shared.state(), &log, now)
    }

    /// Waits for the client tasks of connect `id` (every one if `None`).
    async fn join(&mut self, id: Option<&str>) -> Result<(), BackendError> {
        let (wait, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|(i, _, _)| id.is_none_or(|id| id == i));
        self.running = keep;
        for (i, _, h) in wait {
            h.await
                .map_err(|e| internal(format!("connection {i}: the client task failed: {e}")))?;
        }
        Ok(())
    }

    /// The client processes of namespace `netns` die (their pod is deleted): their tasks are
    /// aborted, which closes their sockets as the kernel closes a dead process's, and every
    /// connection of theirs that had not reported — running, or not yet started — reports
    /// [`ClientReport::killed`].
    async fn kill_clients(&mut self, netns: NetnsId) {
        let (dead, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.running).into_iter().partition(|(_, n, _)| *n == netns);
        self.running = keep;
        for (_, _, h) in &dead {
            h.abort();
        }
        for (_, _, h) in dead {
            let _ = h.await;
        }
        for c in self.conns.iter().filter(|c| c.netns == netns) {
            let mut result = lock(&c.result);
            if result.is_none() {
                *result = Some((ClientReport::killed(), *lock(&c.client)));
            }
        }
    }

    async fn connect(&mut self, c: &Connect) -> Result<(), BackendError> {
        let netns = self.netns_of(&c.from)?;
        let app = self.state.app_for(&c.to);
        let endpoints = self.state.endpoint_apps(&c.to);
        let n = c.repeat.count();
        let mut cells = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let ordinal = self.conns.len() as u64;
            let result: ReportCell = Arc::new(Mutex::new(None));
            let client: AddrCell = Arc::new(Mutex::new(None));
            self.conns.push(Conn {
                id: c.id.clone(),
                from: c.from.label(),
                to: c.to.label.clone(),
                app,
                endpoints: endpoints.clone(),
                result: result.clone(),
                netns,
                client: client.clone(),
            });
            let spec = ClientSpec {
                send: c.send,
                hold: c.hold,
                deadline: c.deadline,
                payload: Payload::key(self.seed, ordinal),
            };
            let by_name = c.resolve.as_ref().map(|h| {
                let spec = LookupSpec {
                    name: h.name.clone(),
                    over: ambient_scenarios::outcome::DnsTransport::Udp,
                    server: SocketAddr::V4(h.server),
                    deadline: c.deadline,
                    id: query_id(self.seed, self.lookups.len() as u64),
                };
                let cell = self.new_lookup(&c.id, &c.from, &h.name, netns);
                ByName { spec, client_ip: c.from.ip, port: c.to.addr.port(), cell }
            });
            cells.push((result, spec, client, by_name));
        }
        let net = self.cluster.net.clone();
        let dst = c.to.addr;
        let handles: Vec<JoinHandle<()>> = match c.repeat {
            Repeat::Sequential(_) => vec![tokio::spawn(async move {
                for (cell, spec, client, by_name) in cells {
                    let r = one_connection(net.clone(), netns, dst, spec, client, by_name).await;
                    *lock(&cell) = Some(r);
                }
            })],
            Repeat::Parallel(_) => cells
                .into_iter()
                .map(|(cell, spec, client, by_name)| {
                    let net = net.clone();
                    tokio::spawn(async move {
                        let r = one_connection(net, netns, dst, spec, client, by_name).await;
                        *lock(&cell) = Some(r);
                    })
                })
                .collect(),
        };
        self.running.extend(handles.into_iter().map(|h| (c.id.clone(), netns, h)));
        if !c.background {
            self.join(Some(&c.id)).await?;
            settle(&self.shared).await;
        }
        Ok(())
    }

    /// Registers a lookup of `name` by `from` (in `netns`) under `id`; its report goes to the
    /// cell returned.
    fn new_lookup(&mut self, id: &str, from: &Peer, name: &str, netns: NetnsId) -> LookupCell {
        let report = LookupCell::default();
        self.lookups.push(Lookup {
            id: id.to_string(),
            from: from.label(),
            name: name.to_string(),
            netns,
            report: report.clone(),
        });
        report
    }

    /// A `resolve` step: the client's stub resolver asks its nameserver, then the network
    /// settles.
    async fn resolve(&mut self, r: &Resolve) -> Result<(), BackendError> {
        let netns = self.netns_of(&r.from)?;
        let spec = LookupSpec {
            name: r.name.clone(),
            over: r.over,
            server: SocketAddr::V4(r.server),
            deadline: r.deadline,
            id: query_id(self.seed, self.lookups.len() as u64),
        };
        let cell = self.new_lookup(&r.id, &r.from, &r.name, netns);
        let sockets = SimResolver { net: self.cluster.net.clone(), netns };
        let client_ip = r.from.ip;
        let h = tokio::spawn(async move {
            let report = lookup(&sockets, &spec, client_ip).await;
            *lock(&cell) = Some(report);
        });
        self.running.push((r.id.clone(), netns, h));
        self.join(Some(&r.id)).await?;
        settle(&self.shared).await;
        Ok(())
    }

    fn link(&self, l: &NodeLink) -> Result<(usize, usize), BackendError> {
        Ok((self.node_index(&l.a)?, self.node_index(&l.b)?))
    }

    async fn fault(&mut self, fault: &Fault, step: usize) -> Result<(), BackendError> {
        match fault {
            Fault::Partition(l) => {
                let (a, b) = self.link(l)?;
                self.shared.state().link_fault(a, b).partitioned = true;
            }
            Fault::Heal(l) => {
                let link = l.as_ref().map(|l| self.link(l)).transpose()?;
                self.shared.state().heal(link);
            }
            Fault::Latency { link, add } => {
                let (a, b) = self.link(link)?;
                self.shared.state().link_fault(a, b).latency = *add;
            }
            Fault::Loss { link, rate } => {
                let (a, b) = self.link(link)?;
                self.shared.state().link_fault(a, b).loss = *rate;
            }
            Fault::RestartProxy(node) => {
                self.cluster.crash_proxy(node).await;
                self.start_proxy(node).await?;
            }
            Fault::CrashProxy(node) => self.cluster.crash_proxy(node).await,
            Fault::StartProxy(node) => self.start_proxy(node).await?,
            Fault::FlushConntrack(peer) => {
                let netns = self.netns_of(peer)?;
                self.shared.state().topo.slot_mut(netns).model.flush_conntrack();
            }
            Fault::DeletePod { pod, .. } => {
                let (netns, p) = {
                    let f = self.shared.state();
                    let netns = f.topo.pods.get(pod).copied();
                    (netns, self.state.pods.get(pod).cloned())
                };
                let (Some(netns), Some(p)) = (netns, p) else {
                    return Err(internal(format!("delete-pod: {pod} does not exist")));
                };
                // The order of a real deletion: the pod's containers stop first — its apps and
                // its own clients die, and the kernel closes their sockets (a FIN, or a RST over
                // unread bytes) while its network is still up; then the CNI DEL tells the node
                // proxy, which stops serving it (GOAWAY on its inbound tunnels, its own tunnels
                // closed once unused); then its network goes.
                self.kill_clients(netns).await;
                self.cluster.stop_apps(netns).await;
                settle(&self.shared).await;
                self.state.apply(fault);
                self.cluster.update_mesh(&Cluster::mesh(&self.state)?);
                if p.is_captured() {
                    self.cluster.remove_pod(&p.node, p.ip);
                }
                settle(&self.shared).await;
                let mut f = self.shared.state();
                f.topo.pods.remove(pod);
                f.topo.tear_down(netns);
            }
            Fault::AddPod { pod, .. } => {
                let netns = {
                    let mut f = self.shared.state();
                    let Some(&netns) = f.topo.added.get(&step) else {
                        return Err(internal(format!("add-pod at step {step} has no namespace")));
                    };
                    f.topo.bring_up(netns);
                    f.topo.pods.insert(pod.key.clone(), netns);
                    netns
                };
                self.state.apply(fault);
                self.cluster.update_mesh(&Cluster::mesh(&self.state)?);
                self.cluster.start_apps(netns, &pod.label(), &pod.serve).await?;
                if pod.is_captured() {
                    self.cluster.add_pod(&pod.node, pod.ip, netns).await?;
                }
            }
            Fault::Apply(_) | Fault::Remove(_) => {
                self.state.apply(fault);
                self.cluster.update_mesh(&Cluster::mesh(&self.state)?);
            }
        }
        Ok(())
    }
}

/// A step, in a few words, for the trace.
fn describe(a: &Action) -> String {
    match a {
        Action::Connect(c) => {
            let n = match c.repeat {
                Repeat::Sequential(1) => String::new(),
                Repeat::Sequential(n) => format!(" count {n}"),
                Repeat::Parallel(n) => format!(" parallel {n}"),
            };
            let bg = if c.background { " background" } else { "" };
            format!("connect {} {} -> {} ({}){n}{bg}", c.id, c.from.label(), c.to.label, c.to.addr)
        }
        Action::Fault(f) => format!("fault {f}"),
        Action::Wait(d) => format!("wait {}", ambient_scenarios::values::format_duration(*d)),
        Action::Check(_) => "check".into(),
        Action::Resolve(r) => {
            format!("resolve {} {} {} over {} ({})", r.id, r.from.label(), r.name, r.over, r.server)
        }
    }
}
