//! The [`World`]: one scenario, fully resolved and validated, ready for a backend to run.
//!
//! Every reference is resolved (pods, nodes, services, hosts, policies, connection ids), every
//! default applied, every address assigned; a backend never re-checks anything. Collections are
//! ordered (`BTreeMap`, or `Vec` in file order), so walking a World is deterministic.
//!
//! Addressing (see `scenarios/README.md`):
//! - node `i` (0-based, in `cluster.nodes` order) owns the pod subnet `10.0.<i+1>.0/24`; its
//!   gateway is `10.0.<i+1>.1`;
//! - a pod without `ip:` gets `10.0.<i+1>.<k+2>`, where `k` is the pod's position among the pods
//!   placed on that node (0-based, counting every pod on the node in file order, with or without
//!   an explicit `ip:`; pods added later by `add-pod` continue the count in step order);
//! - an explicit pod `ip:` must lie in its node's subnet (`.2`–`.254`).

mod build;
mod dns;
mod mesh;
mod policy;
mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_proxy::istio::PolicyObject;

use crate::diag::{At, Diagnostic, Pos};
use crate::expect::{ConnExpect, Expectations};
use crate::rules::PolicyRouting;
use crate::values::{NodePair, RuleRef, rule_positions};
use crate::yaml;

pub(crate) use build::build;
pub use dns::{DNS_PORT, DnsZone, HostLookup, Resolve};
pub use mesh::ClusterState;

/// One scenario, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// The file as it was named to the loader (used in every message).
    pub file: String,
    /// `scenario:`, or the file stem.
    pub id: String,
    /// Where `scenario:` is written (1:1 when the id is the file stem).
    pub id_pos: Pos,
    pub description: String,
    pub tags: BTreeSet<String>,
    pub seed: u64,
    /// `cluster.trustDomain` (default `cluster.local`).
    pub trust_domain: String,
    /// In `cluster.nodes` order; a node's position is its `index`.
    pub nodes: Vec<Node>,
    /// The pods that exist when the scenario starts.
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    pub external: BTreeMap<String, ExternalHost>,
    /// The policies in force when the scenario starts, in file order.
    pub policies: Vec<Policy>,
    pub steps: Vec<Step>,
    /// Checked when all steps are done.
    pub expect: Expectations,
    /// Warnings found while loading (the scenario still runs).
    pub warnings: Vec<Diagnostic>,
}

/// A node: it runs one proxy, which serves every captured pod placed on it (in-pod mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub index: usize,
    /// `10.0.<index+1>.0`, a /24.
    pub pod_subnet: Ipv4Addr,
    /// `10.0.<index+1>.1`: the node's address on its pod network.
    pub gateway: Ipv4Addr,
}

/// `name` in `namespace`: how pods, services and policies are keyed. Prints as `name.namespace`,
/// the form scenarios use to refer to them. Ordered by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// A pod: a network namespace on a node, with apps listening in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub key: ObjectKey,
    /// The node's name (an entry of `World::nodes`).
    pub node: String,
    pub ip: Ipv4Addr,
    pub service_account: String,
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub identity: String,
    pub labels: BTreeMap<String, String>,
    /// Listening apps by port.
    pub serve: BTreeMap<u16, App>,
    /// `Some` for an ambient (captured) pod: the rules and routing installed in its netns.
    pub capture: Option<Capture>,
    pub at: At,
}

impl Pod {
    pub fn is_captured(&self) -> bool {
        self.capture.is_some()
    }

    /// How the Outcome names this pod's netns: `name.namespace`.
    pub fn label(&self) -> String {
        self.key.to_string()
    }
}

/// What the Istio CNI agent installs in a captured pod's netns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// `iptables-restore --noflush` input (from [`crate::rules::InpodRules`]).
    pub rules: String,
    pub routing: PolicyRouting,
}

impl Capture {
    /// Every rule as `table/chain/N` with its text, in order.
    pub fn rule_positions(&self) -> Vec<(RuleRef, String)> {
        rule_positions(&self.rules)
    }
}

/// What an app listening in a pod or host does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum App {
    /// Returns every byte it reads, then closes when the client half-closes.
    Echo,
    /// Reads everything, returns nothing, closes at EOF.
    Sink,
    /// Accepts, then closes at once.
    Close,
    /// Accepts, then resets (RST).
    Reset,
}

impl App {
    pub const NAMES: &'static [&'static str] = &["echo", "sink", "close", "reset"];

    pub fn parse(s: &str) -> Result<App, String> {
        match s {
            "echo" => Ok(App::Echo),
            "sink" => Ok(App::Sink),
            "close" => Ok(App::Close),
            "reset" => Ok(App::Reset),
            _ => Err(format!("unknown app {s:?}; apps are echo, sink, close, reset")),
        }
    }

    pub fn name(self) -> &'static str {
        App::NAMES[self as usize]
    }

    /// How many bytes a client that sends `sent` bytes should read back intact.
    pub fn expected_reply(self, sent: u64) -> u64 {
        match self {
            App::Echo => sent,
            _ => 0,
        }
    }
}

/// A Kubernetes Service: a VIP whose ports map to target ports of the selected pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ObjectKey,
    pub vip: Ipv4Addr,
    /// Sorted by port.
    pub ports: Vec<ServicePort>,
    /// Pods of the service's namespace whose labels include all of these.
    pub selector: BTreeMap<String, String>,
    /// The pods selected when the scenario starts (sorted). `add-pod`/`delete-pod` faults say
    /// which services they join or leave.
    pub endpoints: Vec<ObjectKey>,
    pub at: At,
}

impl Service {
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.key.namespace == self.key.namespace
            && !self.selector.is_empty()
            && self.selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }

    pub fn port(&self, port: u16) -> Option<ServicePort> {
        self.ports.iter().copied().find(|p| p.port == port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    pub port: u16,
    /// Defaults to `port`.
    pub target_port: u16,
}

/// A host outside the cluster: not captured, no proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalHost {
    pub name: String,
    pub ip: Ipv4Addr,
    pub serve: BTreeMap<u16, App>,
    /// `dns:`: the host is the cluster's DNS server (UDP and TCP 53) with these records.
    pub dns: Option<DnsZone>,
    pub at: At,
}

/// An Istio policy object, decoded and checked (kind, apiVersion, actions, fields), with where
/// it was written so that errors found when compiling it can be placed in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `metadata.name` in `metadata.namespace` (default `default`).
    pub key: ObjectKey,
    pub object: PolicyObject,
    pub source: PolicySource,
}

/// Where a policy object was written.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySource {
    pub file: String,
    /// The object itself (`policies[2]`, or `steps[4].fault.apply`).
    pub at: At,
    /// The object's located YAML tree.
    pub node: yaml::Node,
}

impl PolicySource {
    /// Places a path inside the object (`spec.rules[0].to[0].operation.ports[1]`, as a policy
    /// compiler reports it) in the file: the position of the deepest node of the path that
    /// exists, and the full key path from the document root.
    pub fn locate(&self, path_in_object: &str) -> At {
        At::new(self.node.locate(path_in_object).pos, self.at.path.join(path_in_object))
    }
}

/// One step, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Position in `steps` (0-based); the Outcome's `checks[].step` and `skipped[].step`.
    pub index: usize,
    pub at: At,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Connect(Connect),
    Fault(Fault),
    /// Let this much time pass.
    Wait(Duration),
    /// Check these expectations now.
    Check(Check),
    /// Look a name up through the client's resolver (DNS).
    Resolve(Resolve),
}

/// Open connections from a client to a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub id: String,
    pub from: Peer,
    pub to: Target,
    /// Bytes the client sends before half-closing (default 1KiB).
    pub send: u64,
    pub repeat: Repeat,
    /// Keep the connection open this long after connecting, before sending (default 0s).
    pub hold: Duration,
    /// Start it and go on at once; it settles by the end or at a `check` naming it.
    pub background: bool,
    /// No answer within this → `timeout` (default 10s). It runs from the connection attempt and
    /// does not count `hold`.
    pub deadline: Duration,
    pub expect: Option<ConnExpect>,
    /// `resolve: true`: before each connection the client looks the host of `to` up by DNS
    /// and connects to the first address of the answer (`to` is what the name resolves to
    /// when the scenario is loaded).
    pub resolve: Option<HostLookup>,
}

/// How many connections a connect step opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// `count: N`: one after another (default 1).
    Sequential(u32),
    /// `parallel: N`: all at once.
    Parallel(u32),
}

impl Repeat {
    pub fn count(self) -> u32 {
        match self {
            Repeat::Sequential(n) | Repeat::Parallel(n) => n,
        }
    }
}

/// A connection's client: a pod or an external host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub kind: PeerKind,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerKind {
    Pod(ObjectKey),
    External(String),
}

impl Peer {
    /// `name.namespace` for a pod, the host's name for an external host (as the Outcome says).
    pub fn label(&self) -> String {
        match &self.kind {
            PeerKind::Pod(k) => k.to_string(),
            PeerKind::External(n) => n.clone(),
        }
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address the client app connects to (a VIP, a pod IP, a host IP, or as written).
    pub addr: SocketAddrV4,
    pub dest: Dest,
    /// As the Outcome's `to` names it: `echo.default:80`, `server.default:8080`, `web:443`,
    /// `10.0.2.2:8080`.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A Service port (the proxy maps it to `target_port` of an endpoint).
    Service {
        key: ObjectKey,
        port: ServicePort,
    },
    Pod(ObjectKey),
    External(String),
    /// Written as `ip:port`: whatever owns the address then (maybe nothing).
    Address,
}

/// A change to the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Drop everything between the two nodes, both ways.
    Partition(NodeLink),
    /// Remove link faults (partition, latency, loss) between two nodes, or everywhere (`None`).
    Heal(Option<NodeLink>),
    /// Add this one-way delay to packets between the two nodes (both directions).
    Latency { link: NodeLink, add: Duration },
    /// Drop this fraction (0–1) of packets between the two nodes (both directions).
    Loss { link: NodeLink, rate: f64 },
    /// Stop and start a node's proxy (it loses its connections and pools).
    RestartProxy(String),
    /// Stop a node's proxy.
    CrashProxy(String),
    /// Start a crashed proxy.
    StartProxy(String),
    /// Empty the conntrack table of a pod or host.
    FlushConntrack(Peer),
    /// Remove a pod; `leaves` are the services it was an endpoint of.
    DeletePod { pod: ObjectKey, leaves: Vec<ObjectKey> },
    /// Create a pod; `joins` are the services that now select it.
    AddPod { pod: Box<Pod>, joins: Vec<ObjectKey> },
    /// Create or replace a policy.
    Apply(Box<Policy>),
    /// Delete a policy.
    Remove(ObjectKey),
}

/// The fault in a few words, named as in a scenario file (`delete-pod server.default`): for
/// traces and progress lines.
impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(l) => write!(f, "partition {} {}", l.a, l.b),
            Fault::Heal(Some(l)) => write!(f, "heal {} {}", l.a, l.b),
            Fault::Heal(None) => f.write_str("heal everything"),
            Fault::Latency { link, add } => write!(f, "latency {} {} +{add:?}", link.a, link.b),
            Fault::Loss { link, rate } => write!(f, "loss {} {} {rate}", link.a, link.b),
            Fault::RestartProxy(n) => write!(f, "restart proxy@{n}"),
            Fault::CrashProxy(n) => write!(f, "crash proxy@{n}"),
            Fault::StartProxy(n) => write!(f, "start proxy@{n}"),
            Fault::FlushConntrack(p) => write!(f, "flush-conntrack {}", p.label()),
            Fault::DeletePod { pod, .. } => write!(f, "delete-pod {pod}"),
            Fault::AddPod { pod, .. } => write!(f, "add-pod {} ({})", pod.key, pod.ip),
            Fault::Apply(p) => write!(f, "apply {}", p.key),
            Fault::Remove(k) => write!(f, "remove {k}"),
        }
    }
}

/// `step <index> <action>`: how traces and progress lines name a step.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} {}", self.index, self.action)
    }
}

/// The step's action in a few words, with what tells it apart in a trace (`connect c1 client.default
/// -> server.default:8080 (10.0.2.2:8080) count 3 background`).
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Connect(c) => {
                write!(f, "connect {} {} -> {} ({})", c.id, c.from.label(), c.to.label, c.to.addr)?;
                match c.repeat {
                    Repeat::Sequential(1) => {}
                    Repeat::Sequential(n) => write!(f, " count {n}")?,
                    Repeat::Parallel(n) => write!(f, " parallel {n}")?,
                }
                if c.background {
                    f.write_str(" background")?;
                }
                Ok(())
            }
            Action::Fault(fault) => write!(f, "fault {fault}"),
            Action::Wait(d) => write!(f, "wait {}", crate::values::format_duration(*d)),
            Action::Check(_) => f.write_str("check"),
            Action::Resolve(r) => {
                let (id, from, name) = (&r.id, r.from.label(), &r.name);
                write!(f, "resolve {id} {from} {name} over {} ({})", r.over, r.server)
            }
        }
    }
}

/// Two distinct nodes; link faults apply in both directions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeLink {
    pub a: String,
    pub b: String,
}

impl NodeLink {
    pub fn directions(&self) -> [NodePair; 2] {
        [
            NodePair { from: self.a.clone(), to: self.b.clone() },
            NodePair { from: self.b.clone(), to: self.a.clone() },
        ]
    }
}

/// A `check` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub expect: Expectations,
    /// Background connections this check names: wait for them to settle before checking.
    pub settles: Vec<String>,
}

impl World {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The cluster's DNS server (the external host with `dns:`): every pod's nameserver and
    /// the proxies' upstream resolver.
    pub fn nameserver(&self) -> Option<&ExternalHost> {
        self.external.values().find(|h| h.dns.is_some())
    }

    /// The resolve steps, in order.
    pub fn resolves(&self) -> impl Iterator<Item = (&Step, &Resolve)> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Resolve(r) => Some((s, r)),
            _ => None,
        })
    }

    /// The connect steps, in order.
    pub fn connects(&self) -> impl Iterator<Item = (&Step, &Connect)> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Connect(c) => Some((s, c)),
            _ => None,
        })
    }

    /// What the app at `addr` does, given the pods and hosts that exist when the scenario
    /// starts (a helper for backends and tests; faults may change it later).
    pub fn app_at(&self, addr: SocketAddrV4) -> Option<App> {
        let pod =
            self.pods.values().find(|p| p.ip == *addr.ip()).and_then(|p| p.serve.get(&addr.port()));
        let host = self
            .external
            .values()
            .find(|h| h.ip == *addr.ip())
            .and_then(|h| h.serve.get(&addr.port()));
        pod.or(host).copied()
    }
}

#[cfg(test)]
mod tests;
