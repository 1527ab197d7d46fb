//! The scenario driver both backends share: [`StepDriver`] walks a [`World`]'s steps and decides
//! what happens — in which order, with which connection slots, payload keys and query ids,
//! when background connections are joined, how each fault breaks down — and a backend carries
//! out the primitive effects it asks for ([`Effects`]).
//!
//! - `connect`: one slot per connection, in start order ([`ConnSlot`]); slot `i`'s payload key is
//!   [`Payload::key`]`(seed, i)`; a connect to a name (`resolve: true`) gets one lookup per
//!   connection, before it. A foreground connect is joined and the network settles; a
//!   background one is joined at a `check` naming it, or at the end.
//! - `resolve`: one lookup ([`LookupSlot`]); lookup `j`'s query id is `query_id(seed, j)`; then
//!   the network settles.
//! - `fault`: link faults and proxy faults map to one effect each (`restart` is a crash, then a
//!   start). `delete-pod` follows a real deletion: the pod's processes die first and their
//!   sockets' closes reach their peers while it is still plugged in; then, for a captured pod,
//!   the CNI DEL tells its node proxy, which stops serving it, and the driver waits for its
//!   tunnels to close; then the proxies get the new mesh; then its network goes. `add-pod`:
//!   its network comes up, the proxies get the new mesh, its apps start, then the CNI ADD.
//!   `apply`/`remove`: the proxies get the new mesh. After every fault the network settles.
//! - `wait`: lets the time pass. `check`: joins the background connections it names, settles,
//!   snapshots.
//!
//! The driver keeps the [`ClusterState`] (what the proxies are told), the slots and the
//! snapshots; each backend keeps what its clients reported, by slot, and assembles the Outcome's
//! connections from [`StepDriver::slots`] with `crate::assemble`.

mod block_on;
mod effects;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};

pub use block_on::block_on;
pub use effects::{ClientBatch, Effects};

use crate::assemble::{ConnLabels, LookupLabels};
use crate::outcome::{DnsTransport, Snapshot};
use crate::traffic::dns::{ByName, LookupCell, LookupReport, LookupSpec, query_id};
use crate::traffic::{ClientSpec, Payload};
use crate::world::{Action, App, Check, ClusterState, Connect, Fault, Peer, Repeat, Resolve};
use crate::world::{ObjectKey, Step, World};

/// A failure of the driver itself (as opposed to an effect's): the World asked for something
/// the cluster cannot do at that step. The loader refuses such scenarios, so this is a bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverError(pub String);

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DriverError {}

impl From<DriverError> for crate::BackendError {
    fn from(e: DriverError) -> Self {
        crate::BackendError::new(e.0)
    }
}

/// For backends whose errors are sentences.
impl From<DriverError> for String {
    fn from(e: DriverError) -> Self {
        e.0
    }
}

/// One connection of the run: what the Outcome says of it besides what its client reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSlot {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The app the cluster said served the target when the connection started.
    pub app: Option<App>,
    /// For a Service target, each endpoint's app (see [`ConnLabels::endpoints`]).
    pub endpoints: Vec<(SocketAddrV4, App)>,
}

impl ConnSlot {
    pub fn labels(&self) -> ConnLabels<'_> {
        ConnLabels {
            id: &self.id,
            from: &self.from,
            to: &self.to,
            app: self.app,
            endpoints: &self.endpoints,
        }
    }
}

/// One DNS lookup of the run (a `resolve` step, or a connect's lookup of its name), with the
/// cell its report goes to.
#[derive(Debug, Clone)]
pub struct LookupSlot {
    pub id: String,
    pub from: String,
    pub name: String,
    pub report: LookupCell,
}

impl LookupSlot {
    pub fn labels(&self) -> LookupLabels<'_> {
        LookupLabels { id: &self.id, from: &self.from, name: &self.name }
    }

    /// Its report; a lookup that never reported died with its client's pod.
    pub fn report(&self) -> LookupReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(LookupReport::killed)
    }
}

/// What the driver gathered over a run, for the backend to assemble the Outcome with.
#[derive(Debug)]
pub struct Driven {
    /// Every connection, in start order (slot `i` is the Outcome's connection `i`).
    pub slots: Vec<ConnSlot>,
    /// Every lookup, in start order.
    pub lookups: Vec<LookupSlot>,
    pub checks: Vec<Snapshot>,
    pub end: crate::outcome::State,
}

/// Walks a World's steps and asks a backend for their effects.
#[derive(Debug)]
pub struct StepDriver<'w> {
    world: &'w World,
    seed: u64,
    state: ClusterState<'w>,
    slots: Vec<ConnSlot>,
    lookups: Vec<LookupSlot>,
    /// Background connect ids not joined yet, in start order.
    pending: Vec<String>,
    checks: Vec<Snapshot>,
}

impl<'w> StepDriver<'w> {
    pub fn new(world: &'w World, seed: u64) -> Self {
        StepDriver {
            world,
            seed,
            state: ClusterState::initial(world),
            slots: Vec::new(),
            lookups: Vec::new(),
            pending: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// The cluster as the steps so far left it.
    pub fn cluster(&self) -> &ClusterState<'w> {
        &self.state
    }

    /// The connections started so far, in start order.
    pub fn slots(&self) -> &[ConnSlot] {
        &self.slots
    }

    /// Performs every step in order, joins what still runs, settles, and snapshots the end.
    pub async fn run<E: Effects>(mut self, fx: &mut E) -> Result<Driven, E::Error> {
        let world = self.world;
        for step in &world.steps {
            fx.step_started(step).await?;
            self.step(step, fx).await?;
            fx.step_done(step, &self.state).await?;
        }
        for id in std::mem::take(&mut self.pending) {
            fx.join(&id).await?;
        }
        fx.settle().await;
        fx.steps_done().await;
        let end = fx.snapshot(&self.state).await?;
        Ok(Driven { slots: self.slots, lookups: self.lookups, checks: self.checks, end })
    }

    /// Performs one step.
    pub async fn step<E: Effects>(&mut self, step: &Step, fx: &mut E) -> Result<(), E::Error> {
        match &step.action {
            Action::Connect(c) => self.connect(c, fx).await,
            Action::Resolve(r) => self.resolve(r, fx).await,
            Action::Fault(f) => {
                self.fault(f, step.index, fx).await?;
                fx.settle().await;
                Ok(())
            }
            Action::Wait(d) => {
                fx.wait(*d).await;
                Ok(())
            }
            Action::Check(check) => self.check(check, step.index, fx).await,
        }
    }

    async fn connect<E: Effects>(&mut self, c: &Connect, fx: &mut E) -> Result<(), E::Error> {
        let app = self.state.app_for(&c.to);
        let endpoints = self.state.endpoint_apps(&c.to);
        let first_slot = self.slots.len();
        let n = c.repeat.count() as usize;
        let mut clients = Vec::with_capacity(n);
        for k in 0..n {
            self.slots.push(ConnSlot {
                id: c.id.clone(),
                from: c.from.label(),
                to: c.to.label.clone(),
                app,
                endpoints: endpoints.clone(),
            });
            let spec = ClientSpec {
                send: c.send,
                hold: c.hold,
                deadline: c.deadline,
                payload: Payload::key(self.seed, (first_slot + k) as u64),
            };
            let by_name = c.resolve.as_ref().map(|h| {
                let spec = self.lookup_spec(&h.name, DnsTransport::Udp, h.server, c.deadline);
                let cell = self.new_lookup(&c.id, &c.from, &h.name);
                ByName { spec, client_ip: c.from.ip, port: c.to.addr.port(), cell }
            });
            clients.push((spec, by_name));
        }
        let parallel = matches!(c.repeat, Repeat::Parallel(_));
        let batch =
            ClientBatch { id: &c.id, from: &c.from, dst: c.to.addr, parallel, first_slot, clients };
        fx.start_clients(batch).await?;
        if c.background {
            self.pending.push(c.id.clone());
            return Ok(());
        }
        fx.join(&c.id).await?;
        fx.settle().await;
        Ok(())
    }

    /// The next lookup's spec: its query id is numbered by the lookups started before it.
    fn lookup_spec(
        &self,
        name: &str,
        over: DnsTransport,
        server: SocketAddrV4,
        deadline: std::time::Duration,
    ) -> LookupSpec {
        LookupSpec {
            name: name.to_string(),
            over,
            server: SocketAddr::V4(server),
            deadline,
            id: query_id(self.seed, self.lookups.len() as u64),
        }
    }

    /// Registers a lookup of `name` by `from` under `id`; its report goes to the cell returned.
    fn new_lookup(&mut self, id: &str, from: &Peer, name: &str) -> LookupCell {
        let report = LookupCell::default();
        let (id, from, name) = (id.to_string(), from.label(), name.to_string());
        self.lookups.push(LookupSlot { id, from, name, report: report.clone() });
        report
    }

    async fn resolve<E: Effects>(&mut self, r: &Resolve, fx: &mut E) -> Result<(), E::Error> {
        let spec = self.lookup_spec(&r.name, r.over, r.server, r.deadline);
        let cell = self.new_lookup(&r.id, &r.from, &r.name);
        fx.lookup(&r.id, &r.from, spec, cell).await?;
        fx.settle().await;
        Ok(())
    }

    async fn check<E: Effects>(
        &mut self,
        check: &Check,
        step: usize,
        fx: &mut E,
    ) -> Result<(), E::Error> {
        let (named, rest): (Vec<String>, Vec<String>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|id| check.settles.contains(id));
        self.pending = rest;
        for id in named {
            fx.join(&id).await?;
        }
        fx.settle().await;
        let state = fx.snapshot(&self.state).await?;
        self.checks.push(Snapshot { step, state });
        Ok(())
    }

    async fn fault<E: Effects>(
        &mut self,
        fault: &Fault,
        step: usize,
        fx: &mut E,
    ) -> Result<(), E::Error> {
        match fault {
            Fault::Partition(link) => fx.partition(link).await,
            Fault::Heal(link) => fx.heal(link.as_ref()).await,
            Fault::Latency { link, add } => fx.latency(link, *add).await,
            Fault::Loss { link, rate } => fx.loss(link, *rate).await,
            Fault::RestartProxy(node) => {
                fx.crash_proxy(node, &self.state).await?;
                fx.start_proxy(node, &self.state).await
            }
            Fault::CrashProxy(node) => fx.crash_proxy(node, &self.state).await,
            Fault::StartProxy(node) => fx.start_proxy(node, &self.state).await,
            Fault::FlushConntrack(peer) => fx.flush_conntrack(peer).await,
            Fault::DeletePod { pod, .. } => self.delete_pod(fault, pod, fx).await,
            Fault::AddPod { pod, .. } => {
                fx.plug_pod(pod, step).await?;
                self.state.apply(fault);
                fx.update_mesh(&self.state).await?;
                fx.start_apps(pod).await?;
                if pod.is_captured() {
                    fx.attach_pod(pod).await?;
                }
                Ok(())
            }
            Fault::Apply(_) | Fault::Remove(_) => {
                self.state.apply(fault);
                fx.update_mesh(&self.state).await
            }
        }
    }

    /// The order of a real pod deletion (see the module doc).
    async fn delete_pod<E: Effects>(
        &mut self,
        fault: &Fault,
        key: &ObjectKey,
        fx: &mut E,
    ) -> Result<(), E::Error> {
        let Some(pod) = self.state.pods.get(key).cloned() else {
            return Err(
                DriverError(format!("delete-pod: {key} does not exist at this step")).into()
            );
        };
        fx.kill_pod(&pod).await?;
        self.state.apply(fault);
        if pod.is_captured() {
            fx.release_pod(&pod).await?;
        }
        fx.update_mesh(&self.state).await?;
        fx.unplug_pod(&pod).await
    }
}
