//! What a backend does for the driver: the primitive effects ([`Effects`]) and what they are
//! given ([`ClientBatch`]).

use std::net::SocketAddrV4;
use std::time::Duration;

use crate::outcome::State;
use crate::traffic::ClientSpec;
use crate::traffic::dns::{ByName, LookupCell, LookupSpec};
use crate::world::{ClusterState, NodeLink, Peer, Pod, Step};

/// The connections of one connect step, for a backend to start.
#[derive(Debug)]
pub struct ClientBatch<'a> {
    /// The connect step's id: [`Effects::join`] waits for the batch by it.
    pub id: &'a str,
    pub from: &'a Peer,
    pub dst: SocketAddrV4,
    /// `parallel: N` (all at once) rather than `count: N` (one after another).
    pub parallel: bool,
    /// The first connection's slot ([`super::StepDriver::slots`]); connection `k` of
    /// `clients` is slot `first_slot + k`.
    pub first_slot: usize,
    /// One client per connection, in start order, with its lookup when the connect is to a
    /// name (`resolve: true`).
    pub clients: Vec<(ClientSpec, Option<ByName>)>,
}

impl ClientBatch<'_> {
    /// The slots of the batch's connections.
    pub fn slots(&self) -> std::ops::Range<usize> {
        self.first_slot..self.first_slot + self.clients.len()
    }
}

/// The primitive effects a backend performs for [`super::StepDriver`]. The driver decides which
/// ones, in which order, with which slots and keys; a backend only carries each out on its
/// network (the simulator's fabric, or the kernel's namespaces).
///
/// The methods are `async` for the simulator, which runs on simulated time; a backend that
/// blocks (the kernel harness) does its work in the body and drives the driver with
/// [`super::block_on`]. No `Send` bound: both backends drive one run on one thread.
#[allow(async_fn_in_trait)]
pub trait Effects {
    /// What a failed effect says. The driver's own failures ([`super::DriverError`]) convert
    /// into it.
    type Error: From<super::DriverError>;

    /// Step `step` is about to be performed (traces; tests that break a run at a step).
    async fn step_started(&mut self, step: &Step) -> Result<(), Self::Error> {
        let _ = step;
        Ok(())
    }

    /// Step `step` was performed (traces of the state after each step).
    async fn step_done(
        &mut self,
        step: &Step,
        cluster: &ClusterState<'_>,
    ) -> Result<(), Self::Error> {
        let _ = (step, cluster);
        Ok(())
    }

    /// Every step was performed and every connection joined; the end snapshot comes next.
    async fn steps_done(&mut self) {}

    /// Starts `batch`'s clients in `batch.from`'s namespace; returns once they are started.
    async fn start_clients(&mut self, batch: ClientBatch<'_>) -> Result<(), Self::Error>;

    /// Waits for the clients started under connect id `id` to finish, and records their reports
    /// in their slots (a client killed with its pod reports `ClientReport::killed`).
    async fn join(&mut self, id: &str) -> Result<(), Self::Error>;

    /// Runs one lookup from `from`'s namespace to its end; the report goes to `cell`.
    async fn lookup(
        &mut self,
        id: &str,
        from: &Peer,
        spec: LookupSpec,
        cell: LookupCell,
    ) -> Result<(), Self::Error>;

    /// Lets what is in flight reach where it goes before the next step. The simulator runs its
    /// packet loop until nothing moves; on a kernel the network runs by itself (snapshots
    /// settle on their own), so it may do nothing.
    async fn settle(&mut self);

    /// The state of every namespace now (a `check`, and the end).
    async fn snapshot(&mut self, cluster: &ClusterState<'_>) -> Result<State, Self::Error>;

    /// Lets `d` pass.
    async fn wait(&mut self, d: Duration);

    /// Drops everything the two nodes send each other.
    async fn partition(&mut self, link: &NodeLink) -> Result<(), Self::Error>;

    /// Adds `add` of one-way delay between the two nodes (zero removes it).
    async fn latency(&mut self, link: &NodeLink, add: Duration) -> Result<(), Self::Error>;

    /// Drops this fraction of what the two nodes send each other.
    async fn loss(&mut self, link: &NodeLink, rate: f64) -> Result<(), Self::Error>;

    /// Removes the link faults of `link`, or of every link.
    async fn heal(&mut self, link: Option<&NodeLink>) -> Result<(), Self::Error>;

    /// Crashes `node`'s proxy: every task and socket of it gone at once. `cluster` says which
    /// pods it served.
    async fn crash_proxy(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), Self::Error>;

    /// Starts a proxy on `node` with `cluster`'s mesh, serving its captured pods.
    async fn start_proxy(
        &mut self,
        node: &str,
        cluster: &ClusterState<'_>,
    ) -> Result<(), Self::Error>;

    /// Empties the conntrack table of `peer`'s namespace.
    async fn flush_conntrack(&mut self, peer: &Peer) -> Result<(), Self::Error>;

    /// Gives every running proxy `cluster`'s mesh.
    async fn update_mesh(&mut self, cluster: &ClusterState<'_>) -> Result<(), Self::Error>;

    /// The processes of `pod` die (its apps and its own clients): the kernel closes their
    /// sockets while the pod is still plugged in, and the closes reach their peers before this
    /// returns.
    async fn kill_pod(&mut self, pod: &Pod) -> Result<(), Self::Error>;

    /// The CNI plugin's DEL for captured `pod`: its node proxy stops serving it (GOAWAY on its
    /// inbound tunnels); returns once the tunnels to it are closed (bounded).
    async fn release_pod(&mut self, pod: &Pod) -> Result<(), Self::Error>;

    /// `pod`'s network goes (its veth, its namespace).
    async fn unplug_pod(&mut self, pod: &Pod) -> Result<(), Self::Error>;

    /// `pod`'s network comes up (the pod added by step `step`), with its rules if captured.
    async fn plug_pod(&mut self, pod: &Pod, step: usize) -> Result<(), Self::Error>;

    /// `pod`'s apps start listening.
    async fn start_apps(&mut self, pod: &Pod) -> Result<(), Self::Error>;

    /// The CNI plugin's ADD for captured `pod`: its node proxy starts serving it.
    async fn attach_pod(&mut self, pod: &Pod) -> Result<(), Self::Error>;
}
