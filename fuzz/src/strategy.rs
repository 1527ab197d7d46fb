//! The proptest strategies, all in one place: topologies, policies, traffic and fault schedules,
//! combined into a [`Case`] by [`case`].
//!
//! Topologies and policies are plain proptest values. Steps depend on the state the earlier
//! steps left (which pods exist, which proxies are down, which links are faulted), so the
//! strategy draws *raw* steps — numbers — and [`build_steps`] reads them against that state:
//! every index is taken modulo what exists, so any draw is a valid scenario. Shrinking is not
//! proptest's (its value trees know nothing of that state); `shrink.rs` reduces the case itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ambient_proxy::faults::FaultRates;
use ambient_proxy::istio::PolicyObject;
use ambient_scenarios::world::App;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;

use crate::case::{
    Case, Connect, EXTERNAL_PORT, FaultPoints, Peer, Pod, Repeat, Service, Step, Target,
};

/// How big generated cases may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 1–4.
    pub max_nodes: usize,
    /// 1–10.
    pub max_pods: usize,
    /// Steps drawn before the tail (heal, restart, wait) is added.
    pub max_steps: usize,
    /// Give about half the cases proxy fault points.
    pub fault_points: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_nodes: 4, max_pods: 10, max_steps: 10, fault_points: true }
    }
}

pub const NAMESPACES: [&str; 2] = ["default", "prod"];
pub const SERVICE_ACCOUNTS: [&str; 3] = ["sa0", "sa1", "sa2"];
pub const APPS: [&str; 3] = ["a0", "a1", "a2"];
/// Ports apps listen on (8080, 9090) and one nobody does (7070).
pub const PORTS: [u16; 4] = [8080, 8080, 9090, 7070];
/// The simulated time every case ends with, so that the quiescence invariant can look: longer
/// than the proxy's idle reset of a proxied connection (`Limits::connection_idle`, 1 h), which
/// is what ends a connection whose peer went silent behind a partition that never heals
/// (s33 c233).
pub const TAIL_WAIT_MS: u64 = 70 * 60 * 1000;
/// A connect's deadline; with packet loss anywhere in the case, the lossy one.
pub const DEADLINE_MS: u64 = 5_000;
pub const LOSSY_DEADLINE_MS: u64 = 30_000;

// ---------------------------------------------------------------- topology

/// Nodes, pods, services and whether the external host exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub nodes: usize,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub external: bool,
}

fn app_kind() -> impl Strategy<Value = App> {
    prop_oneof![7 => Just(App::Echo), 1 => Just(App::Sink), 1 => Just(App::Close), 1 => Just(App::Reset)]
}

fn serve() -> impl Strategy<Value = Vec<(u16, App)>> {
    prop_oneof![
        1 => Just(Vec::new()),
        5 => Just(vec![(8080, App::Echo)]),
        2 => app_kind().prop_map(|a| vec![(8080, a)]),
        2 => app_kind().prop_map(|a| vec![(8080, App::Echo), (9090, a)]),
    ]
}

/// One pod's draw: (node, namespace, service account, captured, app label, apps).
type PodDraw = (usize, usize, usize, bool, Option<usize>, Vec<(u16, App)>);

fn pod_draw(nodes: usize) -> impl Strategy<Value = PodDraw> {
    (
        0..nodes,
        prop_oneof![3 => Just(0usize), 1 => Just(1usize)],
        0..SERVICE_ACCOUNTS.len(),
        prop::bool::weighted(0.75),
        prop::option::weighted(0.9, 0..APPS.len()),
        serve(),
    )
}

fn pod_from(name: String, d: &PodDraw, ip: Ipv4Addr) -> Pod {
    Pod {
        name,
        namespace: NAMESPACES[d.1].to_string(),
        node: d.0,
        service_account: SERVICE_ACCOUNTS[d.2].to_string(),
        ambient: d.3,
        app: d.4.map(|a| APPS[a].to_string()),
        ip,
        serve: d.5.clone(),
    }
}

/// 1–`max_nodes` nodes, 1–`max_pods` pods spread over them (captured or not, in two
/// namespaces), 0–3 services selecting pods by label (so endpoints span nodes), maybe the
/// external host.
pub fn topology(limits: Limits) -> impl Strategy<Value = Topology> {
    let max_nodes = limits.max_nodes.clamp(1, 4);
    let max_pods = limits.max_pods.clamp(1, 10);
    (1..=max_nodes)
        .prop_flat_map(move |n| {
            (
                Just(n),
                vec(pod_draw(n), 1..=max_pods),
                vec((0..NAMESPACES.len(), 0..APPS.len(), prop::bool::weighted(0.3)), 0..=3),
                prop::bool::weighted(0.3),
            )
        })
        .prop_map(|(nodes, draws, services, external)| {
            let mut next = [2u8; 4];
            let pods = draws
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let ip = Ipv4Addr::new(10, 0, d.0 as u8 + 1, next[d.0]);
                    next[d.0] += 1;
                    pod_from(format!("p{i}"), d, ip)
                })
                .collect();
            let services = services
                .iter()
                .enumerate()
                .map(|(i, &(ns, app, two_ports))| Service {
                    name: format!("s{i}"),
                    namespace: NAMESPACES[ns].to_string(),
                    vip: Ipv4Addr::new(10, 96, 0, 10 + i as u8),
                    selector_app: APPS[app].to_string(),
                    ports: if two_ports { vec![(80, 8080), (90, 9090)] } else { vec![(80, 8080)] },
                })
                .collect();
            Topology { nodes, pods, services, external }
        })
}

// ---------------------------------------------------------------- policies

fn principal() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0..NAMESPACES.len(), 0..SERVICE_ACCOUNTS.len()).prop_map(|(n, s)| format!(
            "cluster.local/ns/{}/sa/{}",
            NAMESPACES[n], SERVICE_ACCOUNTS[s]
        )),
        1 => Just("*".to_string()),
        1 => (0..NAMESPACES.len()).prop_map(|n| format!("cluster.local/ns/{}/*", NAMESPACES[n])),
        1 => (0..SERVICE_ACCOUNTS.len()).prop_map(|s| format!("*/sa/{}", SERVICE_ACCOUNTS[s])),
    ]
}

fn namespace_match() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0..NAMESPACES.len()).prop_map(|n| NAMESPACES[n].to_string()),
        1 => Just("*".to_string()),
        1 => Just("pro*".to_string()),
    ]
}

fn ip_block() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.0.1.0/24".to_string()),
        Just("10.0.2.0/24".to_string()),
        Just("10.0.1.2".to_string()),
        Just("10.0.2.2/32".to_string()),
        Just("10.0.0.0/16".to_string()),
        Just("203.0.113.0/24".to_string()),
    ]
}

fn ports() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        Just(vec!["8080".to_string()]),
        Just(vec!["9090".to_string()]),
        Just(vec!["8080".to_string(), "9090".to_string()]),
    ]
}

/// A `source` with one or two of principals, namespaces, ipBlocks and their negations.
fn source() -> impl Strategy<Value = serde_json::Value> {
    let field = |k: usize| -> BoxedStrategy<(&'static str, Vec<String>)> {
        match k {
            0 => vec(principal(), 1..=2).prop_map(|v| ("principals", v)).boxed(),
            1 => vec(principal(), 1..=2).prop_map(|v| ("notPrincipals", v)).boxed(),
            2 => vec(namespace_match(), 1..=2).prop_map(|v| ("namespaces", v)).boxed(),
            3 => vec(namespace_match(), 1..=2).prop_map(|v| ("notNamespaces", v)).boxed(),
            4 => vec(ip_block(), 1..=2).prop_map(|v| ("ipBlocks", v)).boxed(),
            _ => vec(ip_block(), 1..=2).prop_map(|v| ("notIpBlocks", v)).boxed(),
        }
    };
    (0..6usize, prop::option::weighted(0.3, 0..6usize))
        .prop_flat_map(move |(a, b)| {
            let second = match b {
                Some(b) => field(b).prop_map(Some).boxed(),
                None => Just(None).boxed(),
            };
            (field(a), second)
        })
        .prop_map(|(a, b)| {
            let mut m = serde_json::Map::new();
            m.insert(a.0.to_string(), json!(a.1));
            if let Some(b) = b {
                m.insert(b.0.to_string(), json!(b.1));
            }
            serde_json::Value::Object(m)
        })
}

fn operation() -> impl Strategy<Value = serde_json::Value> {
    (ports(), any::<bool>())
        .prop_map(|(p, not)| if not { json!({"notPorts": p}) } else { json!({"ports": p}) })
}

fn rule() -> impl Strategy<Value = serde_json::Value> {
    (vec(source(), 0..=2), vec(operation(), 0..=1)).prop_map(|(from, to)| {
        let mut m = serde_json::Map::new();
        if !from.is_empty() {
            let from: Vec<_> = from.into_iter().map(|s| json!({"source": s})).collect();
            m.insert("from".into(), json!(from));
        }
        if !to.is_empty() {
            let to: Vec<_> = to.into_iter().map(|o| json!({"operation": o})).collect();
            m.insert("to".into(), json!(to));
        }
        serde_json::Value::Object(m)
    })
}

fn object(v: serde_json::Value) -> PolicyObject {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("generator built an invalid policy: {e}"))
}

/// An AuthorizationPolicy: ALLOW or DENY, in a namespace or mesh-wide (`istio-system`), with
/// or without a selector, with 0–2 rules over principals, namespaces, ipBlocks and ports (and
/// their negations).
pub fn authorization_policy() -> impl Strategy<Value = PolicyObject> {
    (
        0..6usize,
        prop_oneof![2 => Just("default"), 1 => Just("prod"), 1 => Just("istio-system")],
        prop::option::weighted(0.5, 0..APPS.len()),
        any::<bool>(),
        vec(rule(), 0..=2),
    )
        .prop_map(|(i, ns, sel, deny, rules)| {
            let mut spec = serde_json::Map::new();
            if let Some(a) = sel {
                spec.insert("selector".into(), json!({"matchLabels": {"app": APPS[a]}}));
            }
            spec.insert("action".into(), json!(if deny { "DENY" } else { "ALLOW" }));
            if !rules.is_empty() {
                spec.insert("rules".into(), json!(rules));
            }
            object(json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": format!("ap{i}"), "namespace": ns},
                "spec": spec,
            }))
        })
}

/// A PeerAuthentication (STRICT or PERMISSIVE) for a namespace, the mesh, or the pods of one
/// `app` label (sometimes with a port-level mode). Its name says its scope, so two never
/// compete for one workload.
pub fn peer_authentication() -> impl Strategy<Value = PolicyObject> {
    let mode = || prop_oneof![Just("STRICT"), Just("PERMISSIVE")];
    (0..4usize, 0..NAMESPACES.len(), 0..APPS.len(), mode(), prop::option::weighted(0.3, mode()))
        .prop_map(|(scope, ns, app, mode, port_mode)| {
            let (name, namespace, selector) = match scope {
                0 | 1 => ("pa-ns".to_string(), NAMESPACES[ns], None),
                2 => ("pa-mesh".to_string(), "istio-system", None),
                _ => (format!("pa-{}", APPS[app]), NAMESPACES[ns], Some(APPS[app])),
            };
            let mut spec = serde_json::Map::new();
            if let Some(a) = selector {
                spec.insert("selector".into(), json!({"matchLabels": {"app": a}}));
                if let Some(pm) = port_mode {
                    spec.insert("portLevelMtls".into(), json!({"8080": {"mode": pm}}));
                }
            }
            spec.insert("mtls".into(), json!({"mode": mode}));
            object(json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }))
        })
}

pub fn policy() -> impl Strategy<Value = PolicyObject> {
    prop_oneof![4 => authorization_policy(), 1 => peer_authentication()]
}

/// 0–4 policies, at most one per namespace and name.
pub fn policies() -> impl Strategy<Value = Vec<PolicyObject>> {
    vec(policy(), 0..=4).prop_map(|ps| {
        let mut seen = BTreeSet::new();
        ps.into_iter().filter(|p| seen.insert(key(p))).collect()
    })
}

/// `(name, namespace)` of a policy object.
pub fn key(p: &PolicyObject) -> (String, String) {
    let m = p.metadata();
    (m.name.clone(), m.namespace.clone().unwrap_or_else(|| "default".into()))
}

// ---------------------------------------------------------------- traffic and faults

/// A step as drawn: numbers that [`build_steps`] reads against the state so far.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // drawn once per step; boxing buys nothing here
pub enum RawStep {
    Connect(RawConnect),
    /// kind (partition, heal, latency, loss), two node draws, an amount.
    Link(u8, u8, u8, u8),
    /// crash / restart (start when the proxy is down), node draw.
    Proxy(u8, u8),
    Flush(u8),
    /// pod draw, then recreate it at the same address (with this draw for the new pod).
    DeletePod(u8, Option<PodDraw>),
    AddPod(PodDraw),
    Apply(PolicyObject),
    Remove(u8),
    Wait(u8),
    /// A background connection, a short wait, and a change that may hit it while it is live.
    Live(RawConnect, Box<RawStep>),
}

/// A connect as drawn: client, target kind/index/port, size, repetition, hold.
#[derive(Debug, Clone, Copy)]
pub struct RawConnect {
    pub from: u8,
    pub kind: u8,
    pub target: u8,
    pub port: u8,
    pub size: u8,
    pub repeat: u8,
    pub n: u8,
    pub hold: u8,
}

fn raw_connect() -> impl Strategy<Value = RawConnect> {
    any::<[u8; 8]>().prop_map(|b| RawConnect {
        from: b[0],
        kind: b[1],
        target: b[2],
        port: b[3],
        size: b[4],
        repeat: b[5],
        n: b[6],
        hold: b[7],
    })
}

fn raw_change(max_nodes: usize) -> impl Strategy<Value = RawStep> {
    prop_oneof![
        3 => policy().prop_map(RawStep::Apply),
        1 => any::<u8>().prop_map(RawStep::Remove),
        2 => (0..2u8, any::<u8>()).prop_map(|(k, n)| RawStep::Proxy(k, n)),
        1 => (Just(0u8), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(k, a, b, x)| RawStep::Link(k, a, b, x)),
        1 => any::<u8>().prop_map(RawStep::Flush),
        1 => (any::<u8>(), prop::option::of(pod_draw(max_nodes)))
            .prop_map(|(p, d)| RawStep::DeletePod(p, d)),
    ]
}

/// One drawn step: mostly connections; faults of every kind the format has; waits; and
/// "live" changes (policy, proxy, link, conntrack, pod) while a background connection holds.
pub fn raw_step(max_nodes: usize) -> impl Strategy<Value = RawStep> {
    prop_oneof![
        10 => raw_connect().prop_map(RawStep::Connect),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(k, a, b, x)| RawStep::Link(k, a, b, x)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(k, n)| RawStep::Proxy(k, n)),
        1 => any::<u8>().prop_map(RawStep::Flush),
        2 => (any::<u8>(), prop::option::of(pod_draw(max_nodes)))
            .prop_map(|(p, d)| RawStep::DeletePod(p, d)),
        1 => pod_draw(max_nodes).prop_map(RawStep::AddPod),
        2 => policy().prop_map(RawStep::Apply),
        1 => any::<u8>().prop_map(RawStep::Remove),
        2 => any::<u8>().prop_map(RawStep::Wait),
        3 => (raw_connect(), raw_change(max_nodes))
            .prop_map(|(c, ch)| RawStep::Live(c, Box::new(ch))),
    ]
}

/// Proxy fault points for about half the cases: each point off or at 5–20%.
pub fn fault_points() -> impl Strategy<Value = Option<FaultPoints>> {
    let rate = || prop_oneof![2 => Just(0u16), 1 => 50..=200u16];
    prop::option::weighted(0.5, (any::<u64>(), rate(), rate(), rate(), rate())).prop_map(|o| {
        o.map(|(seed, dial_fails, slow_tls, goaway, stream_reset)| FaultPoints {
            seed,
            rates: FaultRates { dial_fails, slow_tls, goaway, stream_reset },
        })
    })
}

/// The state the steps walk through.
struct Walk<'t> {
    topo: &'t Topology,
    pods: Vec<Pod>,
    policies: BTreeMap<(String, String), ()>,
    down: BTreeSet<usize>,
    links: BTreeSet<(usize, usize)>,
    next_ip: [u8; 4],
    next_pod: usize,
    next_conn: usize,
    steps: Vec<Step>,
}

fn pick<T>(items: &[T], draw: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[draw as usize % items.len()])
}

impl Walk<'_> {
    fn peer_of(p: &Pod) -> Peer {
        Peer::Pod { name: p.name.clone(), namespace: p.namespace.clone() }
    }

    fn connect(&mut self, r: RawConnect, background: bool) {
        let clients: Vec<Option<&Pod>> =
            self.pods.iter().map(Some).chain(self.topo.external.then_some(None)).collect();
        let Some(&client) = pick(&clients, r.from) else { return };
        let captured = client.is_some_and(|c| c.ambient);
        let port = PORTS[r.port as usize % PORTS.len()];
        let pod_target = |draw: u8| {
            pick(&self.pods, draw).map(|p| Target::Pod {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                port,
            })
        };
        let to = match r.kind % 4 {
            2 if captured && !self.topo.services.is_empty() => {
                let s = &self.topo.services[r.target as usize % self.topo.services.len()];
                let (p, _) = s.ports[r.port as usize % s.ports.len()];
                Some(Target::Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    port: p,
                })
            }
            3 if self.topo.external && client.is_some() => {
                Some(Target::External { port: EXTERNAL_PORT })
            }
            _ => pod_target(r.target),
        };
        let Some(to) = to else { return };
        let from = client.map_or(Peer::External, Self::peer_of);
        let send = [32, 1024, 1024, 16 * 1024, 64 * 1024][r.size as usize % 5];
        let repeat = match r.repeat % 10 {
            0..=6 => Repeat::Count(1),
            7 | 8 => Repeat::Count(2 + u32::from(r.n % 3)),
            _ => Repeat::Parallel(2 + u32::from(r.n % 19)),
        };
        let hold_ms = if background {
            [2_000, 5_000, 20_000][r.hold as usize % 3]
        } else if r.hold.is_multiple_of(10) {
            500
        } else {
            0
        };
        let id = format!("c{}", self.next_conn);
        self.next_conn += 1;
        self.steps.push(Step::Connect(Connect {
            id,
            from,
            to,
            send,
            repeat,
            hold_ms,
            background,
            deadline_ms: DEADLINE_MS,
            expect: None,
        }));
    }

    fn link(&mut self, kind: u8, a: u8, b: u8, x: u8) {
        let n = self.topo.nodes;
        if n < 2 {
            return;
        }
        let a = a as usize % n;
        let b = (a + 1 + b as usize % (n - 1)) % n;
        let l = (a.min(b), a.max(b));
        match kind % 4 {
            0 => {
                self.links.insert(l);
                self.steps.push(Step::Partition(l.0, l.1));
            }
            1 => {
                if self.links.remove(&l) {
                    self.steps.push(Step::Heal(Some(l)));
                } else if !self.links.is_empty() {
                    self.links.clear();
                    self.steps.push(Step::Heal(None));
                }
            }
            2 => {
                self.links.insert(l);
                self.steps.push(Step::Latency(l.0, l.1, [10, 50, 100][x as usize % 3]));
            }
            _ => {
                self.links.insert(l);
                self.steps.push(Step::Loss(l.0, l.1, [1, 5][x as usize % 2]));
            }
        }
    }

    fn proxy(&mut self, kind: u8, node: u8) {
        let n = node as usize % self.topo.nodes;
        if self.down.remove(&n) {
            self.steps.push(Step::Start(n));
        } else if kind.is_multiple_of(2) {
            self.down.insert(n);
            self.steps.push(Step::Crash(n));
        } else {
            self.steps.push(Step::Restart(n));
        }
    }

    /// Adds a pod on node `d.0` (taken modulo the nodes there are), at `ip` or the node's next
    /// free address.
    fn add_pod(&mut self, d: &PodDraw, name: String, ip: Option<Ipv4Addr>) {
        let mut d = d.clone();
        d.0 %= self.topo.nodes;
        let node = d.0;
        let ip = ip.unwrap_or_else(|| {
            let host = self.next_ip[node];
            self.next_ip[node] += 1;
            Ipv4Addr::new(10, 0, node as u8 + 1, host)
        });
        let pod = pod_from(name, &d, ip);
        self.pods.push(pod.clone());
        self.steps.push(Step::AddPod(pod));
    }

    fn step(&mut self, raw: &RawStep) {
        match raw {
            RawStep::Connect(c) => self.connect(*c, false),
            RawStep::Link(k, a, b, x) => self.link(*k, *a, *b, *x),
            RawStep::Proxy(k, n) => self.proxy(*k, *n),
            RawStep::Flush(draw) => {
                let mut peers: Vec<Peer> = self.pods.iter().map(Self::peer_of).collect();
                if self.topo.external {
                    peers.push(Peer::External);
                }
                if let Some(p) = pick(&peers, *draw) {
                    self.steps.push(Step::FlushConntrack(p.clone()));
                }
            }
            RawStep::DeletePod(draw, recreate) => {
                if self.pods.is_empty() {
                    return;
                }
                let gone = self.pods.remove(*draw as usize % self.pods.len());
                self.steps.push(Step::DeletePod {
                    name: gone.name.clone(),
                    namespace: gone.namespace.clone(),
                });
                if let Some(d) = recreate {
                    let mut d = d.clone();
                    d.0 = gone.node;
                    self.add_pod(&d, format!("{}r{}", gone.name, self.next_pod), Some(gone.ip));
                    self.next_pod += 1;
                }
            }
            RawStep::AddPod(d) => {
                if self.next_ip[d.0 % self.topo.nodes] > 60 {
                    return;
                }
                let name = format!("p{}", self.next_pod);
                self.next_pod += 1;
                self.add_pod(d, name, None);
            }
            RawStep::Apply(p) => {
                self.policies.insert(key(p), ());
                self.steps.push(Step::Apply(p.clone()));
            }
            RawStep::Remove(draw) => {
                let keys: Vec<_> = self.policies.keys().cloned().collect();
                if let Some((name, namespace)) = pick(&keys, *draw).cloned() {
                    self.policies.remove(&(name.clone(), namespace.clone()));
                    self.steps.push(Step::Remove { name, namespace });
                }
            }
            RawStep::Wait(w) => {
                let ms = [1_000, 5_000, 30_000, 45_000, 120_000][*w as usize % 5];
                self.steps.push(Step::WaitMs(ms));
            }
            RawStep::Live(c, change) => {
                self.connect(*c, true);
                self.steps.push(Step::WaitMs(1_000));
                self.step(change);
            }
        }
    }
}

/// Reads raw steps against the state they build, then adds the tail: heal every link fault,
/// start every crashed proxy, and let [`TAIL_WAIT_MS`] pass with no traffic. With packet loss
/// anywhere, every connect gets the lossy deadline.
pub fn build_steps(topo: &Topology, policies: &[PolicyObject], raw: &[RawStep]) -> Vec<Step> {
    let mut next_ip = [2u8; 4];
    for p in &topo.pods {
        next_ip[p.node] = next_ip[p.node].max(p.ip.octets()[3] + 1);
    }
    let mut w = Walk {
        topo,
        pods: topo.pods.clone(),
        policies: policies.iter().map(|p| (key(p), ())).collect(),
        down: BTreeSet::new(),
        links: BTreeSet::new(),
        next_ip,
        next_pod: topo.pods.len(),
        next_conn: 0,
        steps: Vec::new(),
    };
    for r in raw {
        w.step(r);
    }
    if w.steps.iter().all(|s| !matches!(s, Step::Connect(_))) {
        // A case without traffic checks little; open one connection from the first pod.
        let c =
            RawConnect { from: 0, kind: 0, target: 0, port: 0, size: 1, repeat: 0, n: 0, hold: 1 };
        w.connect(c, false);
    }
    if !w.links.is_empty() {
        w.steps.push(Step::Heal(None));
    }
    for n in std::mem::take(&mut w.down) {
        w.steps.push(Step::Start(n));
    }
    w.steps.push(Step::WaitMs(TAIL_WAIT_MS));
    let mut steps = w.steps;
    if steps.iter().any(|s| matches!(s, Step::Loss(..))) {
        for s in &mut steps {
            if let Step::Connect(c) = s {
                c.deadline_ms = LOSSY_DEADLINE_MS;
            }
        }
    }
    steps
}

/// A whole case: topology, policies, steps (traffic and fault schedule) and proxy fault points.
pub fn case(limits: Limits) -> impl Strategy<Value = Case> {
    let max_nodes = limits.max_nodes.clamp(1, 4);
    (
        topology(limits),
        policies(),
        vec(raw_step(max_nodes), 1..=limits.max_steps.max(1)),
        fault_points(),
        any::<u16>(),
    )
        .prop_map(move |(topo, policies, raw, fp, seed)| {
            let steps = build_steps(&topo, &policies, &raw);
            Case {
                id: "fuzz".into(),
                description: "A generated case.".into(),
                seed: u64::from(seed),
                nodes: topo.nodes,
                pods: topo.pods,
                services: topo.services,
                external: topo.external,
                policies,
                steps,
                fault_points: if limits.fault_points { fp } else { None },
            }
        })
}
