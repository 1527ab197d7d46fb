//! One scenario on the kernel, step by step: the driver between a [`World`] and an [`Outcome`].
//!
//! The driver runs on the caller's thread and only sends work to namespaces' threads and waits
//! for it; it keeps the [`ClusterState`] (what the proxies are told after each mesh fault), the
//! connections in start order, the link faults with their delay lines, the snapshots and the
//! skipped steps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ambient_scenarios::assemble::LookupLabels;
use ambient_scenarios::assemble::{self, Accepts, ConnLabels};
use ambient_scenarios::outcome::{ConntrackEntry, NetnsState, Outcome, Skipped, Snapshot, State};
use ambient_scenarios::outcome::{DnsTransport, Resolution};
use ambient_scenarios::traffic::dns::{
    ByName, LookupCell, LookupReport, LookupSpec, QueryLog, lookup, query_id,
};
use ambient_scenarios::traffic::{ClientEnd, ClientReport, ClientSpec, Payload};
use ambient_scenarios::world::{
    Action, App, Connect, DNS_PORT, Fault, NodeLink, ObjectKey, Peer, PeerKind, Pod, Repeat,
    Resolve, Step,
};
use ambient_scenarios::{ClusterState, World};

use super::faults::{LinkFaults, LinkState, queue_num};
use super::observe::{self, conntrack_entries, rule_counters};
use super::plan::Plan;
use super::proxies::{NodeProxies, PodInfo, ProxyPlan};
use super::topology::{Topology, TopologyError};
use super::traffic::{
    AcceptLog, ClientRun, ClientRuns, FIRST_BYTES, KernelResolver, start_apps, start_clients,
    start_dns_server,
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

/// A connection of the Outcome, filled when its client finished.
#[derive(Debug)]
struct Slot {
    id: String,
    from: String,
    to: String,
    app: Option<App>,
    /// For a Service target, each endpoint's app (see `ConnLabels::endpoints`).
    endpoints: Vec<(SocketAddrV4, App)>,
    run: Option<ClientRun>,
}

/// One DNS lookup of the run (a `resolve` step, or a connect's lookup of its name).
#[derive(Debug)]
struct LookupSlot {
    id: String,
    from: String,
    name: String,
    report: LookupCell,
}

/// A background connect step still running.
struct Pending {
    id: String,
    slots: Vec<usize>,
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
    state: ClusterState<'w>,
    accepts: AcceptLog,
    slots: Vec<Slot>,
    pending: Vec<Pending>,
    faults: LinkFaults,
    checks: Vec<Snapshot>,
    skipped: Vec<Skipped>,
    trace: Option<String>,
    inject: Option<(usize, Injected)>,
    /// The step being performed (for skipped-step reports).
    step_at: usize,
    /// Pods deleted so far, by label: their clients died with them.
    deleted: BTreeSet<String>,
    /// Every DNS lookup started, in order.
    lookups: Vec<LookupSlot>,
    /// The queries the DNS server host answered.
    served: QueryLog,
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
        let initial = ClusterState::initial(world).mesh_spec();
        let mut proxies = NodeProxies::new(&nodes, &world.trust_domain, seed, proxy_plan, &initial)
            .map_err(|e| format!("preparing the node proxies ({}): {e}", proxy_plan.describe()))?;
        proxies.set_dns_upstream(
            world.nameserver().map(|h| SocketAddr::V4(SocketAddrV4::new(h.ip, DNS_PORT))),
        );
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
            state: ClusterState::initial(world),
            accepts,
            slots: Vec::new(),
            pending: Vec::new(),
            faults: LinkFaults::default(),
            checks: Vec::new(),
            skipped: Vec::new(),
            trace: trace.then(String::new),
            inject,
            step_at: 0,
            deleted: BTreeSet::new(),
            lookups: Vec::new(),
            served,
        };
        for node in &world.nodes {
            runner.start_proxy(&node.name)?;
        }
        Ok(runner)
    }

    /// Runs every step, settles, and returns the Outcome.
    pub fn run(mut self) -> Result<Finished, RunError> {
        for step in &self.world.steps {
            self.step_at = step.index;
            if let Some((at, what)) = self.inject
                && at == step.index
            {
                match what {
                    Injected::Error => return Err(format!("step {at}: injected failure")),
                    Injected::Panic => panic!("step {at}: injected panic"),
                }
            }
            self.step(step).map_err(|e| format!("step {} ({}): {e}", step.index, step.at.path))?;
            if self.trace.is_some() {
                let state = self.snapshot()?;
                self.trace_step(step, &state);
            }
        }
        let names: Vec<String> = self.pending.iter().map(|p| p.id.clone()).collect();
        self.settle_background(&names)?;
        let end = self.snapshot()?;
        let connections = self.connections();
        let resolutions = self.resolutions();
        let outcome = Outcome {
            scenario: self.world.id.clone(),
            seed: self.seed,
            connections,
            resolutions,
            checks: std::mem::take(&mut self.checks),
            end,
            skipped: std::mem::take(&mut self.skipped),
        };
        let artifacts = if self.trace.is_some() { self.proxies.artifacts() } else { Vec::new() };
        Ok((outcome, self.trace.take(), artifacts))
    }

    fn step(&mut self, step: &Step) -> Result<(), RunError> {
        match &step.action {
            Action::Connect(c) => self.connect(c),
            Action::Fault(f) => self.fault(f),
            Action::Wait(d) => {
                std::thread::sleep(*d);
                Ok(())
            }
            Action::Resolve(r) => self.resolve(r),
            Action::Check(check) => {
                self.settle_background(&check.settles)?;
                let state = self.snapshot()?;
                self.checks.push(Snapshot { step: step.index, state });
                Ok(())
            }
        }
    }

    fn peer_ns(&self, peer: &Peer) -> Result<&Netns, RunError> {
        match &peer.kind {
            PeerKind::Pod(key) => self.topo.pods.get(key).map(|p| &p.ns),
            PeerKind::External(name) => self.topo.hosts.get(name),
        }
        .ok_or_else(|| format!("{} does not exist at this step", peer.label()))
    }

    fn connect(&mut self, c: &Connect) -> Result<(), RunError> {
        let app = self.state.app_for(&c.to);
        let endpoints = self.state.endpoint_apps(&c.to);
        let first = self.slots.len();
        let count = c.repeat.count() as usize;
        let mut specs = Vec::with_capacity(count);
        for k in 0..count {
            let spec = ClientSpec {
                send: c.send,
                hold: c.hold,
                deadline: c.deadline,
                payload: Payload::key(self.seed, (first + k) as u64),
            };
            let by_name = c.resolve.as_ref().map(|h| {
                let spec = LookupSpec {
                    name: h.name.clone(),
                    over: DnsTransport::Udp,
                    server: SocketAddr::V4(h.server),
                    deadline: c.deadline,
                    id: query_id(self.seed, self.lookups.len() as u64),
                };
                let cell = self.new_lookup(&c.id, &c.from, &h.name);
                ByName { spec, client_ip: c.from.ip, port: c.to.addr.port(), cell }
            });
            specs.push((spec, by_name));
        }
        for _ in 0..count {
            self.slots.push(Slot {
                id: c.id.clone(),
                from: c.from.label(),
                to: c.to.label.clone(),
                app,
                endpoints: endpoints.clone(),
                run: None,
            });
        }
        let parallel = matches!(c.repeat, Repeat::Parallel(_));
        let runs = ClientRuns::new(count);
        let job = start_clients(self.peer_ns(&c.from)?, c.to.addr, specs, parallel, &runs);
        let slots: Vec<usize> = (first..first + count).collect();
        if c.background {
            let (id, from) = (c.id.clone(), c.from.label());
            self.pending.push(Pending { id, slots, job, runs, from });
            return Ok(());
        }
        job.wait().map_err(|e| format!("the clients of {}: {e}", c.id))?;
        self.fill(&slots, runs.take());
        Ok(())
    }

    /// Registers a lookup of `name` by `from` under `id`; its report goes to the cell returned.
    fn new_lookup(&mut self, id: &str, from: &Peer, name: &str) -> LookupCell {
        let report = LookupCell::default();
        let (id, from, name) = (id.to_string(), from.label(), name.to_string());
        self.lookups.push(LookupSlot { id, from, name, report: report.clone() });
        report
    }

    /// A `resolve` step: the client's stub resolver asks its nameserver from the client's
    /// namespace (a captured pod's query is REDIRECTed to its proxy's 15053 by the in-pod rules).
    fn resolve(&mut self, r: &Resolve) -> Result<(), RunError> {
        let spec = LookupSpec {
            name: r.name.clone(),
            over: r.over,
            server: SocketAddr::V4(r.server),
            deadline: r.deadline,
            id: query_id(self.seed, self.lookups.len() as u64),
        };
        let cell = self.new_lookup(&r.id, &r.from, &r.name);
        let client_ip = r.from.ip;
        let report = self
            .peer_ns(&r.from)?
            .run(move || async move { lookup(&KernelResolver, &spec, client_ip).await })
            .map_err(|e| format!("the lookup {}: {e}", r.id))?;
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        Ok(())
    }

    /// The Outcome's lookups, in start order.
    fn resolutions(&self) -> Vec<Resolution> {
        let log = self.proxies.log();
        let served = self.served.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.lookups
            .iter()
            .map(|l| {
                let report = l
                    .report
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(LookupReport::killed);
                let labels = LookupLabels { id: &l.id, from: &l.from, name: &l.name };
                assemble::resolution(labels, &report, &log, &served)
            })
            .collect()
    }

    fn fill(&mut self, slots: &[usize], runs: Vec<ClientRun>) {
        for (i, run) in slots.iter().zip(runs) {
            self.slots[*i].run = Some(run);
        }
    }

    /// Waits for the named background connections to finish (their hold and deadline bound it).
    fn settle_background(&mut self, ids: &[String]) -> Result<(), RunError> {
        let (done, keep): (Vec<Pending>, Vec<Pending>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| ids.contains(&p.id));
        self.pending = keep;
        for p in done {
            match p.job.wait() {
                Ok(()) => {}
                // Cancelled as its pod's namespace went: the clients that had not reported
                // died with the pod (`ClientRuns::take` reports them killed).
                Err(NetnsError::Cancelled { .. }) if self.deleted.contains(&p.from) => {}
                Err(e) => return Err(format!("the clients of {}: {e}", p.id)),
            }
            self.fill(&p.slots, p.runs.take());
        }
        Ok(())
    }

    fn start_proxy(&mut self, node: &str) -> Result<(), RunError> {
        let index = self.node_index(node)?;
        let mesh = self.state.mesh_spec();
        let pods = self.captured_on(node);
        let ns = &self.topo.nodes[index];
        self.proxies
            .start(node, ns, &mesh, &pods)
            .map_err(|e| format!("starting proxy@{node}: {e}"))
    }

    /// Crashes a proxy and waits (bounded by [`SETTLE`]) until its listeners are closed in every
    /// pod it served: the abort is asynchronous, and a SYN reaching a dying listener would be
    /// accepted and then reset instead of refused. Probed by binding the ports (no packet sent,
    /// nothing in conntrack or the counters).
    fn crash_proxy(&mut self, node: &str) -> Result<(), RunError> {
        self.proxies.crash(node);
        let deadline = Instant::now() + SETTLE;
        for PodInfo { ip, .. } in self.captured_on(node) {
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

    /// The captured pods of `node` that exist now, with their namespaces.
    fn captured_on(&self, node: &str) -> Vec<PodInfo> {
        self.state
            .pods
            .values()
            .filter(|p| p.node == node && p.is_captured())
            .filter_map(|p| self.topo.pods.get(&p.key).map(|ns| pod_info(p, ns.ns.path())))
            .collect()
    }

    /// Gives the proxies the mesh as it is now. Our proxies take it live; a ztunnel reads its
    /// config only at startup, so each running one is restarted, and the step is reported as
    /// skipped: a restart cuts live connections and empties the pools, which an xDS push would
    /// not do.
    fn mesh_changed(&mut self) -> Result<(), RunError> {
        let mesh = self.state.mesh_spec();
        let restart = self
            .proxies
            .update_mesh(&mesh)
            .map_err(|e| format!("giving the proxies the new mesh: {e}"))?;
        if restart.is_empty() {
            return Ok(());
        }
        for node in &restart {
            self.crash_proxy(node)?;
            self.start_proxy(node)?;
        }
        self.skipped.push(Skipped {
            step: self.step_at,
            reason: format!(
                "ztunnel reads its config (LOCAL_XDS_PATH) only at startup: the mesh change was \
                 applied by restarting the ztunnel of {}, which cuts their live connections and \
                 empties their connection pools (istiod's xDS push would do neither)",
                restart.join(", ")
            ),
        });
        Ok(())
    }

    fn fault(&mut self, fault: &Fault) -> Result<(), RunError> {
        match fault {
            Fault::Partition(link) => self.link_fault(link, |s| s.partitioned = true),
            Fault::Loss { link, rate } => {
                let rate = *rate;
                self.link_fault(link, |s| s.loss = Some(rate))
            }
            Fault::Latency { link, add } => self.latency(link, *add),
            Fault::Heal(link) => self.heal(link.as_ref()),
            Fault::RestartProxy(node) => {
                self.crash_proxy(node)?;
                self.start_proxy(node)
            }
            Fault::CrashProxy(node) => self.crash_proxy(node),
            Fault::StartProxy(node) => self.start_proxy(node),
            Fault::FlushConntrack(peer) => self
                .peer_ns(peer)?
                .conntrack_flush()
                .map_err(|e| format!("flushing conntrack of {}: {e}", peer.label())),
            Fault::DeletePod { pod, .. } => self.delete_pod(fault, pod),
            Fault::AddPod { pod, .. } => self.add_pod(fault, pod),
            Fault::Apply(_) | Fault::Remove(_) => {
                self.state.apply(fault);
                self.mesh_changed()
            }
        }
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

    /// Latency on a link: a delay line per direction, bound to its queue *before* the rule that
    /// feeds it is loaded (unbound, the queue would drop); a new delay on a delayed link only
    /// retunes the lines. A zero delay removes the fault.
    fn latency(&mut self, link: &NodeLink, add: Duration) -> Result<(), RunError> {
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

    fn heal(&mut self, link: Option<&NodeLink>) -> Result<(), RunError> {
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

    /// The order of a real pod deletion, as in the simulator: the pod's processes die first —
    /// its namespace's worker stops, ending its apps and its own clients, and the kernel closes
    /// their sockets while the pod is still plugged in; then the node proxy is told (the CNI
    /// plugin's DEL) and sends GOAWAY on the pod's tunnels; once their source proxies have
    /// closed them (bounded by [`SETTLE`]), the pod's veth goes.
    fn delete_pod(&mut self, fault: &Fault, key: &ObjectKey) -> Result<(), RunError> {
        let pod = self.state.pods.get(key).cloned();
        let path = self.topo.pods.get(key).map(|p| p.ns.path().to_path_buf()).unwrap_or_default();
        let killed = self.topo.kill_pod(key);
        self.deleted.insert(key.to_string());
        // The closes of its sockets reach their peers (and the proxies log them).
        std::thread::sleep(KILL_SETTLE);
        self.state.apply(fault);
        if let Some(pod) = &pod
            && pod.is_captured()
        {
            let info = pod_info(pod, &path);
            let ns = &self.topo.nodes[self.node_index(&pod.node)?];
            self.proxies.remove_pod(&pod.node, ns, &info).map_err(|e| {
                format!("removing pod {} from proxy@{}: {e}", pod.label(), pod.node)
            })?;
            let gateway = SocketAddr::new(pod.ip.into(), ambient_proxy::inpod::INBOUND_HBONE_PORT);
            let deadline = Instant::now() + SETTLE;
            while observe::open_tunnels_to(&self.proxies.log_since_crash(), gateway) > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(SETTLE_POLL);
            }
        }
        self.mesh_changed()?;
        match killed {
            Some(gone) => self.topo.unplug(key, gone).map_err(topo_err),
            None => Ok(()),
        }
    }

    fn add_pod(&mut self, fault: &Fault, pod: &Pod) -> Result<(), RunError> {
        self.state.apply(fault);
        self.topo.add_pods(self.sandbox, &[pod]).map_err(topo_err)?;
        self.mesh_changed()?;
        let ns = &self.topo.pods[&pod.key].ns;
        start_apps(ns, &pod.serve, &self.accepts)
            .map_err(|e| format!("pod {}: {e}", pod.label()))?;
        if pod.is_captured() {
            let info = pod_info(pod, ns.path());
            self.proxies
                .add_pod(&pod.node, ns, &info)
                .map_err(|e| format!("adding pod {} to proxy@{}: {e}", pod.label(), pod.node))?;
        }
        Ok(())
    }

    /// The clients whose connections have finished (their addresses).
    fn finished_clients(&self) -> BTreeSet<SocketAddr> {
        self.slots.iter().filter_map(|s| s.run.as_ref()?.local).collect()
    }

    /// The state now: once the proxies have logged the end of every finished connection and
    /// conntrack holds no connection half-way through opening or closing, or has not changed
    /// for [`SETTLE_QUIET`] (together bounded by [`SETTLE`]), every existing pod's and host's conntrack table, every captured pod's rule
    /// counters, and the tunnels opened so far.
    fn snapshot(&self) -> Result<State, RunError> {
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
            let tables = self.read_conntrack()?;
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
        let counters = self.read_counters()?;
        let mut netns = BTreeMap::new();
        for (label, entries) in conntrack {
            let counters = counters.get(&label).cloned().unwrap_or_default();
            netns.insert(label, NetnsState { conntrack: entries, counters });
        }
        Ok(State { tunnels: assemble::tunnels(&self.proxies.log()), netns })
    }

    /// Every pod and host namespace, by its Outcome label.
    fn labelled(&self) -> Vec<(String, &Netns, bool)> {
        let pods = self.topo.pods.iter().map(|(key, p)| {
            let captured = self.state.pods.get(key).is_some_and(Pod::is_captured);
            (key.to_string(), &p.ns, captured)
        });
        let hosts = self.topo.hosts.iter().map(|(name, ns)| (name.clone(), ns, false));
        pods.chain(hosts).collect()
    }

    fn read_conntrack(
        &self,
    ) -> Result<BTreeMap<String, Vec<ambient_scenarios::outcome::ConntrackEntry>>, RunError> {
        let jobs: Vec<(String, JobHandle<_>)> = self
            .labelled()
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
    ) -> Result<
        BTreeMap<
            String,
            BTreeMap<ambient_scenarios::values::RuleRef, ambient_scenarios::outcome::Counter>,
        >,
        RunError,
    > {
        let jobs: Vec<(String, JobHandle<_>)> = self
            .labelled()
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
    fn connections(&self) -> Vec<ambient_scenarios::outcome::Connection> {
        let mut log = self.proxies.log();
        let records = self.accepts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut ties = BTreeMap::new();
        if self.proxies.has_ztunnel() {
            let clients: Vec<(SocketAddr, Vec<u8>)> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let run = s.run.as_ref()?;
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
        self.slots
            .iter()
            .map(|s| {
                let run = s.run.as_ref().unwrap_or(&unfinished);
                let labels = ConnLabels {
                    id: &s.id,
                    from: &s.from,
                    to: &s.to,
                    app: s.app,
                    endpoints: &s.endpoints,
                };
                assemble::connection(labels, &run.report, run.local, &log, &mut accepts)
            })
            .collect()
    }

    fn trace_step(&mut self, step: &Step, state: &State) {
        let Some(trace) = self.trace.as_mut() else { return };
        let json = serde_json::to_string_pretty(state).unwrap_or_default();
        trace.push_str(&format!(
            "== step {} ({}): {}\n{json}\n",
            step.index,
            step.at.path,
            describe(&step.action)
        ));
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

/// A step in a few words, for the trace.
fn describe(action: &Action) -> String {
    match action {
        Action::Connect(c) => format!("connect {} from {} to {}", c.id, c.from.label(), c.to.label),
        Action::Fault(f) => f.to_string(),
        Action::Wait(d) => format!("wait {d:?}"),
        Action::Check(_) => "check".into(),
        Action::Resolve(r) => {
            format!("resolve {} from {} {} over {}", r.id, r.from.label(), r.name, r.over)
        }
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
