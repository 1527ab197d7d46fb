//! The simulator's side of a run: it sets the cluster up, lets the shared
//! [`StepDriver`] walk the steps on simulated time, performs the primitive effects the driver
//! asks for ([`Effects`]), and assembles the Outcome.
//!
//! The effects on the simulator:
//! - clients: one task per connection (`traffic::run_client` on a simulated socket in the
//!   client's namespace); `count` runs them one after another in one task, `parallel` all at
//!   once; joining awaits the tasks. A lookup (`traffic::dns::lookup` on simulated UDP/TCP
//!   sockets) asks the DNS server host, port 53 — a captured pod's query is REDIRECTed to its
//!   proxy's 15053 by the in-pod rules. The DNS server host runs `traffic::dns`'s server (UDP
//!   and TCP 53) and is every proxy's DNS upstream.
//! - settling runs the packet loop until nothing moves (`pump::settle`); waits sleep on
//!   simulated time.
//! - link faults change the fabric's link state; proxy faults crash and start the real proxy;
//!   the mesh goes to every running proxy; a pod's processes die by aborting its client tasks
//!   and stopping its apps; the CNI DEL/ADD remove a pod from / add it to its node's proxy; its
//!   network goes or comes with its namespace.
//!
//! The Outcome's connections and lookups are assembled at the end, from every proxy's events
//! and every app's accepts, with `ambient_scenarios::assemble`, as the netns backend does.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proxy::Resources;
use ambient_proxy::faults::FaultPlan;
use ambient_proxy::net::ConnectOptions;
use ambient_scenarios::BackendError;
use ambient_scenarios::ClusterState;
use ambient_scenarios::assemble::{self, EventLog};
use ambient_scenarios::outcome::{Outcome, State};
use ambient_scenarios::step_driver::{ClientBatch, Effects, StepDriver};
use ambient_scenarios::traffic::dns::lookup;
use ambient_scenarios::traffic::dns::{ByName, LookupCell, LookupSpec, QueryLog, connect_by_name};
use ambient_scenarios::traffic::{ClientReport, ClientSpec, run_client};
use ambient_scenarios::world::{DNS_PORT, NodeLink, Peer, PeerKind, Pod, Step, World};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::dns::SimResolver;
use crate::net::SimNetwork;
use crate::observe;
use crate::pump::settle;
use crate::shared::Shared;
use crate::topology::NetnsId;

type ReportCell = Arc<Mutex<Option<(ClientReport, Option<SocketAddr>)>>>;
/// The client socket's address, once its SYN left (kept outside the client's task, so that a
/// client killed with its pod can still be tied to what the proxies logged).
type AddrCell = Arc<Mutex<Option<SocketAddr>>>;

/// What one connection's client reported, by slot.
#[derive(Debug)]
struct ClientCells {
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
    /// One per connection slot of the driver, in slot order.
    clients: Vec<ClientCells>,
    /// Running client tasks, by connect id, with the client's namespace.
    running: Vec<(String, NetnsId, JoinHandle<()>)>,
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
            clients: Vec::new(),
            running: Vec::new(),
            served: QueryLog::default(),
        })
    }

    fn node_index(&self, name: &str) -> Result<usize, BackendError> {
        self.world
            .node(name)
            .map(|n| n.index)
            .ok_or_else(|| internal(format!("unknown node {name}")))
    }

    fn link(&self, l: &NodeLink) -> Result<(usize, usize), BackendError> {
        Ok((self.node_index(&l.a)?, self.node_index(&l.b)?))
    }

    fn netns_of(&self, peer: &Peer) -> Result<NetnsId, BackendError> {
        let f = self.shared.state();
        let id = match &peer.kind {
            PeerKind::Pod(key) => f.topo.pods.get(key).copied(),
            PeerKind::External(name) => f.topo.externals.get(name).copied(),
        };
        id.ok_or_else(|| internal(format!("{} has no namespace now", peer.label())))
    }

    fn pod_netns(&self, pod: &Pod) -> Result<NetnsId, BackendError> {
        let netns = self.shared.state().topo.pods.get(&pod.key).copied();
        netns.ok_or_else(|| internal(format!("pod {} has no namespace now", pod.label())))
    }

    /// The captured pods of `node` in `cluster` now: (IP, namespace).
    fn captured_on(
        &self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Vec<(std::net::Ipv4Addr, NetnsId)> {
        let f = self.shared.state();
        cluster
            .pods
            .values()
            .filter(|p| p.node == node && p.is_captured())
            .filter_map(|p| f.topo.pods.get(&p.key).map(|&id| (p.ip, id)))
            .collect()
    }

    async fn start_proxy_for(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), BackendError> {
        let mesh = Cluster::mesh(cluster)?;
        let pods = self.captured_on(node, cluster);
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
        let initial = ClusterState::initial(world);
        for node in &world.nodes {
            self.start_proxy_for(&node.name, &initial).await?;
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
        let driven = StepDriver::new(world, self.seed).run(&mut self).await?;
        let logs = self.cluster.event_logs_by_client();
        let none = EventLog::new();
        let mut accepts = self.cluster.accepts();
        let mut connections = Vec::with_capacity(driven.slots.len());
        for (slot, cells) in driven.slots.iter().zip(&self.clients) {
            let Some((report, client)) = lock(&cells.result).clone() else {
                return Err(internal(format!("connection {} never reported", slot.id)));
            };
            let log = client.and_then(|a| logs.get(&a)).unwrap_or(&none);
            connections.push(assemble::connection(
                slot.labels(),
                &report,
                client,
                log,
                &mut accepts,
            ));
        }
        let resolutions =
            crate::dns::resolutions(&driven.lookups, &self.cluster.event_log(), &self.served);
        let resources = self.cluster.proxy_resources();
        self.cluster.shutdown();
        let outcome = Outcome {
            scenario: world.id.clone(),
            seed: self.seed,
            connections,
            resolutions,
            checks: driven.checks,
            end: driven.end,
            skipped: Vec::new(),
        };
        Ok((outcome, resources))
    }

    /// Waits for the client tasks of connect `id` (every one if `None`).
    async fn join_tasks(&mut self, id: Option<&str>) -> Result<(), BackendError> {
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
        for c in self.clients.iter().filter(|c| c.netns == netns) {
            let mut result = lock(&c.result);
            if result.is_none() {
                *result = Some((ClientReport::killed(), *lock(&c.client)));
            }
        }
    }
}

impl Effects for Driver<'_> {
    type Error = BackendError;

    async fn step_started(&mut self, step: &Step) -> Result<(), BackendError> {
        self.shared.note(step.to_string());
        Ok(())
    }

    async fn steps_done(&mut self) {
        self.shared.note("end");
    }

    async fn start_clients(&mut self, batch: ClientBatch<'_>) -> Result<(), BackendError> {
        let netns = self.netns_of(batch.from)?;
        if batch.first_slot != self.clients.len() {
            return Err(internal(format!(
                "connect {}: slot {} started after {} slots",
                batch.id,
                batch.first_slot,
                self.clients.len()
            )));
        }
        let mut cells = Vec::with_capacity(batch.clients.len());
        for (spec, by_name) in batch.clients {
            let result: ReportCell = Arc::new(Mutex::new(None));
            let client: AddrCell = Arc::new(Mutex::new(None));
            self.clients.push(ClientCells {
                result: result.clone(),
                netns,
                client: client.clone(),
            });
            cells.push((result, spec, client, by_name));
        }
        let net = self.cluster.net.clone();
        let dst = batch.dst;
        let handles: Vec<JoinHandle<()>> = if batch.parallel {
            cells
                .into_iter()
                .map(|(cell, spec, client, by_name)| {
                    let net = net.clone();
                    tokio::spawn(async move {
                        let r = one_connection(net, netns, dst, spec, client, by_name).await;
                        *lock(&cell) = Some(r);
                    })
                })
                .collect()
        } else {
            vec![tokio::spawn(async move {
                for (cell, spec, client, by_name) in cells {
                    let r = one_connection(net.clone(), netns, dst, spec, client, by_name).await;
                    *lock(&cell) = Some(r);
                }
            })]
        };
        self.running.extend(handles.into_iter().map(|h| (batch.id.to_string(), netns, h)));
        Ok(())
    }

    async fn join(&mut self, id: &str) -> Result<(), BackendError> {
        self.join_tasks(Some(id)).await
    }

    async fn lookup(
        &mut self,
        id: &str,
        from: &Peer,
        spec: LookupSpec,
        cell: LookupCell,
    ) -> Result<(), BackendError> {
        let netns = self.netns_of(from)?;
        let sockets = SimResolver { net: self.cluster.net.clone(), netns };
        let client_ip = from.ip;
        let h = tokio::spawn(async move {
            let report = lookup(&sockets, &spec, client_ip).await;
            *lock(&cell) = Some(report);
        });
        self.running.push((id.to_string(), netns, h));
        self.join_tasks(Some(id)).await
    }

    async fn settle(&mut self) {
        settle(&self.shared).await;
    }

    async fn snapshot(&mut self, _: &ClusterState<'_>) -> Result<State, BackendError> {
        let log = self.cluster.event_log();
        let now = self.shared.now();
        Ok(observe::state(&self.shared.state(), &log, now))
    }

    async fn wait(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    async fn partition(&mut self, link: &NodeLink) -> Result<(), BackendError> {
        let (a, b) = self.link(link)?;
        self.shared.state().link_fault(a, b).partitioned = true;
        Ok(())
    }

    async fn latency(&mut self, link: &NodeLink, add: Duration) -> Result<(), BackendError> {
        let (a, b) = self.link(link)?;
        self.shared.state().link_fault(a, b).latency = add;
        Ok(())
    }

    async fn loss(&mut self, link: &NodeLink, rate: f64) -> Result<(), BackendError> {
        let (a, b) = self.link(link)?;
        self.shared.state().link_fault(a, b).loss = rate;
        Ok(())
    }

    async fn heal(&mut self, link: Option<&NodeLink>) -> Result<(), BackendError> {
        let link = link.map(|l| self.link(l)).transpose()?;
        self.shared.state().heal(link);
        Ok(())
    }

    async fn crash_proxy(&mut self, node: &str, _: &ClusterState<'_>) -> Result<(), BackendError> {
        self.cluster.crash_proxy(node).await;
        Ok(())
    }

    async fn start_proxy(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), BackendError> {
        self.start_proxy_for(node, cluster).await
    }

    async fn flush_conntrack(&mut self, peer: &Peer) -> Result<(), BackendError> {
        let netns = self.netns_of(peer)?;
        self.shared.state().topo.slot_mut(netns).model.flush_conntrack();
        Ok(())
    }

    async fn update_mesh(&mut self, cluster: &ClusterState<'_>) -> Result<(), BackendError> {
        self.cluster.update_mesh(&Cluster::mesh(cluster)?);
        Ok(())
    }

    /// Its client tasks are aborted and its apps stopped; the network settles, so the closes
    /// reach their peers while the pod is still plugged in.
    async fn kill_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let netns = self.pod_netns(pod)?;
        self.kill_clients(netns).await;
        self.cluster.stop_apps(netns).await;
        settle(&self.shared).await;
        Ok(())
    }

    /// The proxy drops the pod; the network settles, so its tunnels close.
    async fn release_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        self.cluster.remove_pod(&pod.node, pod.ip);
        settle(&self.shared).await;
        Ok(())
    }

    async fn unplug_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let netns = self.pod_netns(pod)?;
        let mut f = self.shared.state();
        f.topo.pods.remove(&pod.key);
        f.topo.tear_down(netns);
        Ok(())
    }

    /// The pod's namespace was built with the topology (keyed by the step that adds it) and
    /// is down until now.
    async fn plug_pod(&mut self, pod: &Pod, step: usize) -> Result<(), BackendError> {
        let mut f = self.shared.state();
        let Some(&netns) = f.topo.added.get(&step) else {
            return Err(internal(format!("add-pod at step {step} has no namespace")));
        };
        f.topo.bring_up(netns);
        f.topo.pods.insert(pod.key.clone(), netns);
        Ok(())
    }

    async fn start_apps(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let netns = self.pod_netns(pod)?;
        self.cluster.start_apps(netns, &pod.label(), &pod.serve).await
    }

    async fn attach_pod(&mut self, pod: &Pod) -> Result<(), BackendError> {
        let netns = self.pod_netns(pod)?;
        self.cluster.add_pod(&pod.node, pod.ip, netns).await
    }
}
