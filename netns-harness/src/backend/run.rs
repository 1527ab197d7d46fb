//! One scenario on the kernel: the kernel's side of the shared step driver, between a
//! [`World`] and an [`Outcome`].
//!
//! [`StepDriver`] walks the steps and decides what happens; the `Runner` performs the
//! primitive effects it asks for ([`Effects`]) on the namespaces, iptables and proxies. It runs
//! on the caller's thread and only sends work to namespaces' threads and waits for it (its
//! effects block in their bodies, so [`block_on`] runs the driver to its end at its first
//! poll). It keeps what the clients reported by slot, the link faults with their delay lines
//! and the skipped steps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ambient_scenarios::assemble::{self, Accepts};
use ambient_scenarios::outcome::{ConntrackEntry, NetnsState, Outcome, Resolution, Skipped, State};
use ambient_scenarios::step_driver::{
    ClientBatch, ConnSlot, Effects, LookupSlot, StepDriver, block_on,
};
use ambient_scenarios::traffic::dns::{LookupCell, LookupSpec, QueryLog, lookup};
use ambient_scenarios::traffic::{ClientEnd, ClientReport, Payload};
use ambient_scenarios::world::{DNS_PORT, NodeLink, ObjectKey, Peer, PeerKind, Pod, Step};
use ambient_scenarios::{ClusterState, World};

use super::faults::{LinkFaults, LinkState, queue_num};
use super::observe::{self, conntrack_entries, rule_counters};
use super::plan::Plan;
use super::proxies::{NodeProxies, PodInfo, ProxyPlan};
use super::topology::{Topology, TopologyError, Unplug};
use super::traffic::{
    AcceptLog, ClientRun, ClientRuns, FIRST_BYTES, KernelResolver, LookupWindows, now_us,
    start_apps, start_clients, start_dns_server,
};
use crate::netns::{JobHandle, Netns, NetnsError};
use crate::nfqueue::Delay;
use crate::sandbox::Sandbox;

/// How long a snapshot waits for proxies to finish logging closed connections and for
/// conntrack to leave transient states, before it reads what is there.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a deleted pod's dead processes' closes are given to reach their peers before its
/// proxy is told (the simulator settles its network there).
const KILL_SETTLE: Duration = Duration::from_millis(100);
/// How often it looks while settling.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Conntrack tables that have not changed for this long are settled, even with entries in a
/// transient state: a connection held half-closed by a live client (`CLOSE_WAIT` while the
/// client holds) stays that way until the client acts, and waiting for it would wait out the
/// hold and snapshot a later state than the step asked for. Closing handshakes that are under
/// way change the table within a round trip (microseconds here).
const SETTLE_QUIET: Duration = Duration::from_millis(400);

/// A failure that ends the run (as opposed to an expectation that fails).
pub type RunError = String;

/// What a finished run gives: the Outcome, the trace (if asked for) and other artifacts by name
/// (ztunnel's logs, with the trace).
pub type Finished = (Outcome, Option<String>, Vec<(String, Vec<u8>)>);

/// A connect step whose clients have not been joined yet.
struct Pending {
    id: String,
    slots: std::ops::Range<usize>,
    job: JobHandle<()>,
    runs: ClientRuns,
    /// The client's label (its pod may be deleted while it runs).
    from: String,
}

/// Where a test wants the run to break (see [`super::NetnsBackend::inject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Return an error instead of performing the step.
    Error,
    /// Panic instead of performing the step.
    Panic,
}

/// The state of one run. Field order is teardown order: proxies first (their sockets and
/// per-namespace threads reference the pods' namespaces), the delay lines (tasks on the node
/// namespaces' threads), then the namespaces.
pub(super) struct Runner<'w> {
    proxies: NodeProxies,
    /// The latency faults' delay lines, keyed `(node, other node)`: node's queue for what it
    /// forwards to the other.
    delays: BTreeMap<(usize, usize), Delay>,
    topo: Topology,
    world: &'w World,
    sandbox: &'w Sandbox,
    seed: u64,
    accepts: AcceptLog,
    /// What each connection's client reported, by the driver's slot.
    runs: Vec<Option<ClientRun>>,
    pending: Vec<Pending>,
    faults: LinkFaults,
    skipped: Vec<Skipped>,
    trace: Option<String>,
    inject: Option<(usize, Injected)>,
    /// The step being performed, if one is (for error messages and skipped-step reports).
    step_at: Option<usize>,
    /// Pods deleted so far, by label: their clients died with them.
    deleted: BTreeSet<String>,
    /// Pods whose processes died and whose network has not gone yet: what is left to unplug,
    /// and their namespace's path (the CNI DEL names it).
    dying: BTreeMap<ObjectKey, (Unplug, PathBuf)>,
    /// The queries the DNS server host answered.
    served: QueryLog,
    /// Each lookup made, with when it started and ended.
    lookup_windows: LookupWindows,
}

fn topo_err(e: TopologyError) -> RunError {
    e.to_string()
}

impl<'w> Runner<'w> {
    /// Builds the topology, the pods with their rules and apps, and starts the proxies.
    pub fn start(
        sandbox: &'w Sandbox,
        world: &'w World,
        seed: u64,
        trace: bool,
        inject: Option<(usize, Injected)>,
        proxy_plan: &ProxyPlan,
    ) -> Result<Runner<'w>, RunError> {
        let plan = Plan::of(world)?;
        let mut topo = Topology::build(sandbox, plan).map_err(topo_err)?;
        let nodes: Vec<String> = world.nodes.iter().map(|n| n.name.clone()).collect();
        let initial = ClusterState::initial(world);
        let mut proxies = NodeProxies::new(
            &nodes,
            &world.trust_domain,
            seed,
            proxy_plan,
            &initial.mesh_spec(),
        )
        .map_err(|e| format!("preparing the node proxies ({}): {e}", proxy_plan.describe()))?;
        proxies
            .set_dns_upstream(
                world.nameserver().map(|h| SocketAddr::V4(SocketAddrV4::new(h.ip, DNS_PORT))),
            )
            .map_err(|e| format!("the node proxies' DNS upstream: {e}"))?;
        let pods: Vec<&Pod> = world.pods.values().collect();
        topo.add_pods(sandbox, &pods).map_err(topo_err)?;
        let accepts = AcceptLog::default();
        for pod in world.pods.values() {
            start_apps(&topo.pods[&pod.key].ns, &pod.serve, &accepts)
                .map_err(|e| format!("pod {}: {e}", pod.label()))?;
        }
        for h in world.external.values() {
            start_apps(&topo.hosts[&h.name], &h.serve, &accepts)
                .map_err(|e| format!("host {}: {e}", h.name))?;
        }
        let served = QueryLog::default();
        if let Some(h) = world.nameserver()
            && let Some(zone) = &h.dns
        {
            start_dns_server(&topo.hosts[&h.name], zone, &served)
                .map_err(|e| format!("host {}: {e}", h.name))?;
        }
        let mut runner = Runner {
            proxies,
            delays: BTreeMap::new(),
            topo,
            world,
            sandbox,
            seed,
            accepts,
            runs: Vec::new(),
            pending: Vec::new(),
            faults: LinkFaults::default(),
            skipped: Vec::new(),
            trace: trace.then(String::new),
            inject,
            step_at: None,
            deleted: BTreeSet::new(),
            dying: BTreeMap::new(),
            served,
            lookup_windows: LookupWindows::default(),
        };
        for node in &world.nodes {
            runner.start_proxy_now(&node.name, &initial)?;
        }
        Ok(runner)
    }

    /// Runs every step (the shared driver deciding, this runner performing), and returns the
    /// Outcome.
    pub fn run(mut self) -> Result<Finished, RunError> {
        let world = self.world;
        let driven = block_on(StepDriver::new(world, self.seed).run(&mut self)).map_err(|e| {
            match self.step_at.and_then(|i| world.steps.get(i)) {
                Some(step) => format!("step {} ({}): {e}", step.index, step.at.path),
                None => e,
            }
        })?;
        let connections = self.connections(&driven.slots);
        let resolutions = self.resolutions(&driven.lookups);
        let outcome = Outcome {
            scenario: world.id.clone(),
            seed: self.seed,
            connections,
            resolutions,
            checks: driven.checks,
            end: driven.end,
            skipped: std::mem::take(&mut self.skipped),
        };
        let artifacts = if self.trace.is_some() { self.proxies.artifacts() } else { Vec::new() };
        Ok((outcome, self.trace.take(), artifacts))
    }

    fn peer_ns(&self, peer: &Peer) -> Result<&Netns, RunError> {
        match &peer.kind {
            PeerKind::Pod(key) => self.topo.pods.get(key).map(|p| &p.ns),
            PeerKind::External(name) => self.topo.hosts.get(name),
        }
        .ok_or_else(|| format!("{} does not exist at this step", peer.label()))
    }

    fn peer_ns_of_pod(&self, pod: &Pod) -> Result<&Netns, RunError> {
        let pod_ns = self.topo.pods.get(&pod.key).map(|p| &p.ns);
        pod_ns.ok_or_else(|| format!("pod {} does not exist at this step", pod.label()))
    }

    /// The Outcome's lookups, in start order.
    fn resolutions(&self, lookups: &[LookupSlot]) -> Vec<Resolution> {
        let mut log = self.proxies.log();
        let reports: Vec<_> = lookups.iter().map(|l| l.report()).collect();
        let windows = self.lookup_windows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let asked: Vec<crate::ztunnel::dns::Asked<'_>> = lookups
            .iter()
            .zip(&reports)
            .filter_map(|(l, report)| {
                let pod = self.world.pods.values().find(|p| p.label() == l.from)?;
                let (_, window_us) =
                    windows.iter().find(|(c, _)| std::sync::Arc::ptr_eq(c, &l.report))?;
                Some(crate::ztunnel::dns::Asked {
                    pod: &pod.key.name,
                    namespace: &pod.key.namespace,
                    name: &l.name,
                    report,
                    window_us: *window_us,
                })
            })
            .collect();
        self.proxies.tie_lookups(&mut log, &asked);
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner()).clone();
        lookups
            .iter()
            .zip(&reports)
            .map(|(l, report)| assemble::resolution(l.labels(), report, &log, &served))
            .collect()
    }

    fn start_proxy_now(&mut self, node: &str, cluster: &ClusterState<'_>) -> Result<(), RunError> {
        let index = self.node_index(node)?;
        let mesh = cluster.mesh_spec();
        let pods = self.captured_on(node, cluster);
        let ns = &self.topo.nodes[index];
        self.proxies
            .start(node, ns, &mesh, &pods)
            .map_err(|e| format!("starting proxy@{node}: {e}"))
    }

    /// Crashes a proxy and waits (bounded by [`SETTLE`]) until its listeners are closed in every
    /// pod it served: the abort is asynchronous, and a SYN reaching a dying listener would be
    /// accepted and then reset instead of refused. Probed by binding the ports (no packet sent,
    /// nothing in conntrack or the counters).
    fn crash_proxy_now(&mut self, node: &str, cluster: &ClusterState<'_>) -> Result<(), RunError> {
        self.proxies.crash(node);
        let deadline = Instant::now() + SETTLE;
        for PodInfo { ip, .. } in self.captured_on(node, cluster) {
            let Some(pod) = self.topo.pods.values().find(|p| p.ip == ip) else { continue };
            loop {
                let free = pod
                    .ns
                    .run_blocking(ports_free)
                    .map_err(|e| format!("probing the proxy's ports in {ip}: {e}"))?;
                if free || Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(SETTLE_POLL);
            }
        }
        Ok(())
    }

    fn node_index(&self, node: &str) -> Result<usize, RunError> {
        self.topo.plan.node(node).map(|n| n.index).ok_or_else(|| format!("no node {node}"))
    }

    /// The captured pods of `node` in `cluster` that exist now, with their namespaces.
    fn captured_on(&self, node: &str, cluster: &ClusterState<'_>) -> Vec<PodInfo> {
        cluster
            .pods
            .values()
            .filter(|p| p.node == node && p.is_captured())
            .filter_map(|p| self.topo.pods.get(&p.key).map(|ns| pod_info(p, ns.ns.path())))
            .collect()
    }

    fn link_indices(&self, link: &NodeLink) -> Result<(usize, usize), RunError> {
        Ok((self.node_index(&link.a)?, self.node_index(&link.b)?))
    }

    fn link_fault(
        &mut self,
        link: &NodeLink,
        change: impl FnOnce(&mut LinkState),
    ) -> Result<(), RunError> {
        let (a, b) = self.link_indices(link)?;
        self.faults.update(a, b, change);
        self.load_filters(&[a, b])
    }

    /// Loads the filter table of each node in `nodes` from the fault state.
    fn load_filters(&self, nodes: &[usize]) -> Result<(), RunError> {
        for &i in nodes {
            let text = self.faults.filter_table(&self.topo.plan, i);
            self.topo.nodes[i].iptables_restore(&text, false).map_err(|e| {
                format!("loading node {}'s link-fault rules: {e}", self.world.nodes[i].name)
            })?;
        }
        Ok(())
    }

    /// Stops the delay lines of link `(a, b)`, once their rules are gone: what they hold is
    /// released at once.
    fn stop_delays(&mut self, a: usize, b: usize) -> Result<(), RunError> {
        for key in [(a, b), (b, a)] {
            if let Some(line) = self.delays.remove(&key) {
                line.stop().map_err(|e| {
                    format!("stopping node {}'s delay line: {e}", self.world.nodes[key.0].name)
                })?;
            }
        }
        Ok(())
    }

    /// The clients whose connections have finished (their addresses).
    fn finished_clients(&self) -> BTreeSet<SocketAddr> {
        self.runs.iter().filter_map(|r| r.as_ref()?.local).collect()
    }

    /// The state now: once the proxies have logged the end of every finished connection and
    /// conntrack holds no connection half-way through opening or closing, or has not changed
    /// for [`SETTLE_QUIET`] (together bounded by [`SETTLE`]), every existing pod's and host's conntrack table, every captured pod's rule
    /// counters, and the tunnels opened so far.
    fn snapshot_now(&self, cluster: &ClusterState<'_>) -> Result<State, RunError> {
        let clients = self.finished_clients();
        let deadline = Instant::now() + SETTLE;
        while !observe::open_clients(&self.proxies.log_since_crash(), &clients).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(SETTLE_POLL);
        }
        // One bound for both: what keeps a proxy busy usually keeps conntrack busy too.
        let mut last: Option<(BTreeMap<String, Vec<ConntrackEntry>>, Instant)> = None;
        let conntrack = loop {
            let tables = self.read_conntrack(cluster)?;
            let busy = tables.values().flatten().any(observe::transient);
            let now = Instant::now();
            let quiet = match &last {
                Some((prev, since)) if *prev == tables => {
                    now.duration_since(*since) >= SETTLE_QUIET
                }
                _ => false,
            };
            if !busy || quiet || now >= deadline {
                break tables;
            }
            if last.as_ref().is_none_or(|(prev, _)| *prev != tables) {
                last = Some((tables, now));
            }
            std::thread::sleep(SETTLE_POLL);
        };
        let counters = self.read_counters(cluster)?;
        let mut netns = BTreeMap::new();
        for (label, entries) in conntrack {
            let counters = counters.get(&label).cloned().unwrap_or_default();
            netns.insert(label, NetnsState { conntrack: entries, counters });
        }
        Ok(State { tunnels: assemble::tunnels(&self.proxies.log()), netns })
    }

    /// Every pod and host namespace, by its Outcome label.
    fn labelled(&self, cluster: &ClusterState<'_>) -> Vec<(String, &Netns, bool)> {
        let pods = self.topo.pods.iter().map(|(key, p)| {
            let captured = cluster.pods.get(key).is_some_and(Pod::is_captured);
            (key.to_string(), &p.ns, captured)
        });
        let hosts = self.topo.hosts.iter().map(|(name, ns)| (name.clone(), ns, false));
        pods.chain(hosts).collect()
    }

    fn read_conntrack(
        &self,
        cluster: &ClusterState<'_>,
    ) -> Result<BTreeMap<String, Vec<ambient_scenarios::outcome::ConntrackEntry>>, RunError> {
        let jobs: Vec<(String, JobHandle<_>)> = self
            .labelled(cluster)
            .into_iter()
            .map(|(label, ns, _)| (label, ns.spawn(|| async { crate::conntrack::list_in().await })))
            .collect();
        let mut out = BTreeMap::new();
        for (label, job) in jobs {
            let entries = job
                .wait()
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("conntrack -L in {label}: {e}"))?;
            let entries = conntrack_entries(&entries).map_err(|e| format!("{label}: {e}"))?;
            out.insert(label, entries);
        }
        Ok(out)
    }

    fn read_counters(
        &self,
        cluster: &ClusterState<'_>,
    ) -> Result<
        BTreeMap<
            String,
            BTreeMap<ambient_scenarios::values::RuleRef, ambient_scenarios::outcome::Counter>,
        >,
        RunError,
    > {
        let jobs: Vec<(String, JobHandle<_>)> = self
            .labelled(cluster)
            .into_iter()
            .filter(|(_, _, captured)| *captured)
            .map(|(label, ns, _)| (label, ns.spawn(|| async { crate::iptables::save_in().await })))
            .collect();
        let mut out = BTreeMap::new();
        for (label, job) in jobs {
            let (rules, _) = job
                .wait()
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| format!("iptables-save -c in {label}: {e}"))?;
            out.insert(label, rule_counters(&rules));
        }
        Ok(out)
    }

    /// The Outcome's connections, in start order.
    fn connections(&self, slots: &[ConnSlot]) -> Vec<ambient_scenarios::outcome::Connection> {
        let mut log = self.proxies.log();
        let records = self.accepts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut ties = BTreeMap::new();
        if self.proxies.has_ztunnel() {
            let clients: Vec<(SocketAddr, Vec<u8>)> = self
                .runs
                .iter()
                .enumerate()
                .filter_map(|(i, run)| {
                    let run = run.as_ref()?;
                    let mut first = vec![0u8; (run.report.sent as usize).min(FIRST_BYTES)];
                    Payload::new(Payload::key(self.seed, i as u64)).fill(&mut first);
                    Some((run.local?, first))
                })
                .collect();
            let seen: Vec<(SocketAddr, Vec<u8>)> =
                records.iter().map(|r| (r.accept.peer, r.first.clone())).collect();
            ties = super::ztunnels::tie_accepts(&mut log, &clients, &seen).into_iter().collect();
        }
        let mut accepts = Accepts::default();
        for (i, r) in records.into_iter().enumerate() {
            match ties.get(&i) {
                Some(client) => accepts.push_tied(r.accept, *client),
                None => accepts.push(r.accept),
            }
        }
        let unfinished = ClientRun {
            report: ClientReport {
                connected: false,
                sent: 0,
                received: 0,
                echoed: true,
                end: ClientEnd::Error("the client never reported (harness bug)".into()),
            },
            local: None,
        };
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let run = self.runs.get(i).and_then(Option::as_ref).unwrap_or(&unfinished);
                assemble::connection(s.labels(), &run.report, run.local, &log, &mut accepts)
            })
            .collect()
    }

    fn trace_step(&mut self, step: &Step, state: &State) {
        let Some(trace) = self.trace.as_mut() else { return };
        let json = serde_json::to_string_pretty(state).unwrap_or_default();
        trace.push_str(&format!(
            "== step {} ({}): {}\n{json}\n",
            step.index, step.at.path, step.action
        ));
    }
}

impl Runner<'_> {
    /// Gives the proxies the mesh of `cluster`. Our proxies take it live; a ztunnel reads its
    /// config only at startup, so each running one is restarted, and the step is reported as
    /// skipped: a restart cuts live connections and empties the pools, which an xDS push would
    /// not do.
    fn mesh_changed(&mut self, cluster: &ClusterState<'_>) -> Result<(), RunError> {
        let mesh = cluster.mesh_spec();
        let restart = self
            .proxies
            .update_mesh(&mesh)
            .map_err(|e| format!("giving the proxies the new mesh: {e}"))?;
        if restart.is_empty() {
            return Ok(());
        }
        for node in &restart {
            self.crash_proxy_now(node, cluster)?;
            self.start_proxy_now(node, cluster)?;
        }
        self.skipped.push(Skipped {
            step: self.step_at.unwrap_or_default(),
            reason: format!(
                "ztunnel reads its config (LOCAL_XDS_PATH) only at startup: the mesh change was \
                 applied by restarting the ztunnel of {}, which cuts their live connections and \
                 empties their connection pools (istiod's xDS push would do neither)",
                restart.join(", ")
            ),
        });
        Ok(())
    }
}

impl Effects for Runner<'_> {
    type Error = RunError;

    async fn step_started(&mut self, step: &Step) -> Result<(), RunError> {
        self.step_at = Some(step.index);
        match self.inject {
            Some((at, Injected::Error)) if at == step.index => Err("injected failure".into()),
            Some((at, Injected::Panic)) if at == step.index => panic!("step {at}: injected panic"),
            _ => Ok(()),
        }
    }

    async fn step_done(&mut self, step: &Step, cluster: &ClusterState<'_>) -> Result<(), RunError> {
        if self.trace.is_some() {
            let state = self.snapshot_now(cluster)?;
            self.trace_step(step, &state);
        }
        self.step_at = None;
        Ok(())
    }

    async fn start_clients(&mut self, batch: ClientBatch<'_>) -> Result<(), RunError> {
        let slots = batch.slots();
        if slots.start != self.runs.len() {
            return Err(format!(
                "connect {}: slot {} started after {} slots (harness bug)",
                batch.id,
                slots.start,
                self.runs.len()
            ));
        }
        self.runs.resize_with(slots.end, || None);
        let runs = ClientRuns::new(slots.len());
        let ns = self.peer_ns(batch.from)?;
        let windows = &self.lookup_windows;
        let job = start_clients(ns, batch.dst, batch.clients, batch.parallel, &runs, windows);
        let (id, from) = (batch.id.to_string(), batch.from.label());
        self.pending.push(Pending { id, slots, job, runs, from });
        Ok(())
    }

    /// Waits for the connections (their hold and deadline bound it).
    async fn join(&mut self, id: &str) -> Result<(), RunError> {
        let (done, keep): (Vec<Pending>, Vec<Pending>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| p.id == id);
        self.pending = keep;
        for p in done {
            match p.job.wait() {
                Ok(()) => {}
                // Cancelled as its pod's namespace went: the clients that had not reported
                // died with the pod (`ClientRuns::take` reports them killed).
                Err(NetnsError::Cancelled { .. }) if self.deleted.contains(&p.from) => {}
                Err(e) => return Err(format!("the clients of {}: {e}", p.id)),
            }
            for (i, run) in p.slots.zip(p.runs.take()) {
                self.runs[i] = Some(run);
            }
        }
        Ok(())
    }

    /// The client's stub resolver asks its nameserver from the client's namespace (a captured
    /// pod's query is REDIRECTed to its proxy's 15053 by the in-pod rules).
    async fn lookup(
        &mut self,
        id: &str,
        from: &Peer,
        spec: LookupSpec,
        cell: LookupCell,
    ) -> Result<(), RunError> {
        let client_ip = from.ip;
        let started = now_us();
        let report = self
            .peer_ns(from)?
            .run(move || async move { lookup(&KernelResolver, &spec, client_ip).await })
            .map_err(|e| format!("the lookup {id}: {e}"))?;
        let window = (cell.clone(), (started, now_us()));
        self.lookup_windows.lock().unwrap_or_else(|e| e.into_inner()).push(window);
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        Ok(())
    }

    /// The kernel runs by itself: snapshots settle on their own.
    async fn settle(&mut self) {}

    async fn snapshot(&mut self, cluster: &ClusterState<'_>) -> Result<State, RunError> {
        self.snapshot_now(cluster)
    }

    async fn wait(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    async fn partition(&mut self, link: &NodeLink) -> Result<(), RunError> {
        self.link_fault(link, |s| s.partitioned = true)
    }

    /// A delay line per direction, bound to its queue *before* the rule that feeds it is
    /// loaded (unbound, the queue would drop); a new delay on a delayed link only retunes the
    /// lines. A zero delay removes the fault.
    async fn latency(&mut self, link: &NodeLink, add: Duration) -> Result<(), RunError> {
        let (a, b) = self.link_indices(link)?;
        if add.is_zero() {
            self.faults.update(a, b, |s| s.latency = None);
            self.load_filters(&[a, b])?;
            return self.stop_delays(a, b);
        }
        for (here, there) in [(a, b), (b, a)] {
            if let Some(line) = self.delays.get(&(here, there)) {
                line.set_add(add);
                continue;
            }
            let line =
                Delay::start(&self.topo.nodes[here], queue_num(there), add).map_err(|e| {
                    format!("starting node {}'s delay line: {e}", self.world.nodes[here].name)
                })?;
            self.delays.insert((here, there), line);
        }
        self.faults.update(a, b, |s| s.latency = Some(add));
        self.load_filters(&[a, b])
    }

    async fn loss(&mut self, link: &NodeLink, rate: f64) -> Result<(), RunError> {
        self.link_fault(link, |s| s.loss = Some(rate))
    }

    async fn heal(&mut self, link: Option<&NodeLink>) -> Result<(), RunError> {
        let links = match link {
            Some(l) => vec![self.link_indices(l)?],
            None => self.faults.faulted(),
        };
        let mut nodes = BTreeSet::new();
        for &(a, b) in &links {
            self.faults.update(a, b, |s| *s = LinkState::default());
            nodes.extend([a, b]);
        }
        self.load_filters(&nodes.into_iter().collect::<Vec<_>>())?;
        for (a, b) in links {
            self.stop_delays(a, b)?;
        }
        Ok(())
    }

    async fn crash_proxy(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), RunError> {
        self.crash_proxy_now(node, cluster)
    }

    async fn start_proxy(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), RunError> {
        self.start_proxy_now(node, cluster)
    }

    async fn flush_conntrack(&mut self, peer: &Peer) -> Result<(), RunError> {
        self.peer_ns(peer)?
            .conntrack_flush()
            .map_err(|e| format!("flushing conntrack of {}: {e}", peer.label()))
    }

    async fn update_mesh(&mut self, cluster: &ClusterState<'_>) -> Result<(), RunError> {
        self.mesh_changed(cluster)
    }

    /// Its namespace goes: its worker stops, ending its apps and its own clients, and the
    /// kernel closes their sockets while the pod is still plugged in; the closes are given
    /// [`KILL_SETTLE`] to reach their peers (and the proxies to log them).
    async fn kill_pod(&mut self, pod: &Pod) -> Result<(), RunError> {
        let path = self.topo.pods.get(&pod.key).map(|p| p.ns.path().to_path_buf());
        let (Some(path), Some(gone)) = (path, self.topo.kill_pod(&pod.key)) else {
            return Err(format!("delete-pod: {} has no namespace", pod.label()));
        };
        self.dying.insert(pod.key.clone(), (gone, path));
        self.deleted.insert(pod.label());
        std::thread::sleep(KILL_SETTLE);
        Ok(())
    }

    /// The node proxy stops serving the pod and sends GOAWAY on its tunnels; returns once their
    /// source proxies have closed them (bounded by [`SETTLE`]).
    async fn release_pod(&mut self, pod: &Pod) -> Result<(), RunError> {
        let path = self.dying.get(&pod.key).map(|(_, path)| path.clone()).unwrap_or_default();
        let info = pod_info(pod, &path);
        let ns = &self.topo.nodes[self.node_index(&pod.node)?];
        self.proxies
            .remove_pod(&pod.node, ns, &info)
            .map_err(|e| format!("removing pod {} from proxy@{}: {e}", pod.label(), pod.node))?;
        let gateway = SocketAddr::new(pod.ip.into(), ambient_proxy::inpod::INBOUND_HBONE_PORT);
        let deadline = Instant::now() + SETTLE;
        while observe::open_tunnels_to(&self.proxies.log_since_crash(), gateway) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(SETTLE_POLL);
        }
        Ok(())
    }

    async fn unplug_pod(&mut self, pod: &Pod) -> Result<(), RunError> {
        match self.dying.remove(&pod.key) {
            Some((gone, _)) => self.topo.unplug(&pod.key, gone).map_err(topo_err),
            None => Ok(()),
        }
    }

    /// Built like the initial pods: namespace, veth, addresses, routes, and a captured pod's
    /// rules and policy routing.
    async fn plug_pod(&mut self, pod: &Pod, _: usize) -> Result<(), RunError> {
        self.topo.add_pods(self.sandbox, &[pod]).map_err(topo_err)
    }

    async fn start_apps(&mut self, pod: &Pod) -> Result<(), RunError> {
        let ns = self.peer_ns_of_pod(pod)?;
        start_apps(ns, &pod.serve, &self.accepts).map_err(|e| format!("pod {}: {e}", pod.label()))
    }

    async fn attach_pod(&mut self, pod: &Pod) -> Result<(), RunError> {
        // The pod's namespace and the proxies are borrowed apart (fields, not `self`).
        let Some(ns) = self.topo.pods.get(&pod.key).map(|p| &p.ns) else {
            return Err(format!("pod {} does not exist at this step", pod.label()));
        };
        let info = pod_info(pod, ns.path());
        self.proxies
            .add_pod(&pod.node, ns, &info)
            .map_err(|e| format!("adding pod {} to proxy@{}: {e}", pod.label(), pod.node))
    }
}

fn pod_info(p: &Pod, netns: &std::path::Path) -> PodInfo {
    PodInfo {
        ip: p.ip,
        netns: netns.to_path_buf(),
        name: p.key.name.clone(),
        namespace: p.key.namespace.clone(),
        service_account: p.service_account.clone(),
    }
}

/// Whether no socket of the proxy holds its in-pod ports in the current thread's namespace:
/// the three TCP listeners, and the DNS proxy's UDP socket and TCP listener on 15053 (a query
/// reaching a dying DNS socket would be answered or dropped instead of refused).
fn ports_free() -> bool {
    use ambient_proxy::inpod::{
        DNS_CAPTURE_PORT, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT,
    };
    use socket2::{Domain, Socket, Type};
    let any = std::net::Ipv4Addr::UNSPECIFIED;
    let tcp_free = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT, DNS_CAPTURE_PORT]
        .into_iter()
        .all(|port| {
            Socket::new(Domain::IPV4, Type::STREAM, None).is_ok_and(|s| {
                let at = std::net::SocketAddr::from((any, port));
                s.set_reuse_address(true).is_ok() && s.bind(&at.into()).is_ok()
            })
        });
    let udp_free = Socket::new(Domain::IPV4, Type::DGRAM, None)
        .is_ok_and(|s| s.bind(&std::net::SocketAddr::from((any, DNS_CAPTURE_PORT)).into()).is_ok());
    tcp_free && udp_free
}
