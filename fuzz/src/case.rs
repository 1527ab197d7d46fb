//! A fuzz case: a scenario of the public format (`SCENARIO-FORMAT.md`) as a plain value the
//! strategies generate and the shrinker edits, rendered to YAML text with [`Case::to_yaml`].
//! The text is then loaded with `ambient_scenarios::load_str` like any hand-written file: the
//! loader stays the single source of truth, and a generated case it rejects is a generator bug.
//!
//! The vocabulary is a subset of the format: nodes `node-a`…`node-d`; pods with explicit
//! addresses, one `app` label and apps on ports 8080/9090; services with one selector label;
//! one external host `web`; Istio policies as `ambient_proxy::istio` objects (the wire format);
//! steps `connect`, the faults, `wait`.

use std::net::Ipv4Addr;

use ambient_proxy::istio::PolicyObject;
use ambient_scenarios::outcome::{ConnOutcome, PathKind};
use ambient_scenarios::values::format_duration;
use ambient_scenarios::world::App;

use crate::yaml::{self, Y};

/// Node names by index.
pub const NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-d"];
/// The external host every case may have.
pub const EXTERNAL: &str = "web";
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const EXTERNAL_PORT: u16 = 443;

/// One generated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub description: String,
    /// The scenario's `seed:`.
    pub seed: u64,
    pub nodes: usize,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Whether the external host `web` (serving echo on 443) exists.
    pub external: bool,
    pub policies: Vec<PolicyObject>,
    pub steps: Vec<Step>,
    /// Proxy fault points for the run (not part of the scenario file; see `faults.rs` in the
    /// proxy). `None`: no fault points.
    pub fault_points: Option<FaultPoints>,
}

/// Per-mille rates of the proxy's fault points, and the plan's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPoints {
    pub seed: u64,
    pub rates: ambient_proxy::faults::FaultRates,
}

impl FaultPoints {
    /// The command that replays `path` with these fault points (the only way to set them).
    pub fn replay_command(&self, path: &std::path::Path) -> String {
        let r = self.rates;
        format!(
            "testbed fuzz --replay {} --fault-seed {} --fault-rates {},{},{},{}",
            path.display(),
            self.seed,
            r.dial_fails,
            r.slow_tls,
            r.goaway,
            r.stream_reset
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub service_account: String,
    pub ambient: bool,
    /// The value of the `app` label, if any.
    pub app: Option<String>,
    pub ip: Ipv4Addr,
    pub serve: Vec<(u16, App)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub vip: Ipv4Addr,
    /// Selects pods with `app: <this>` in the service's namespace.
    pub selector_app: String,
    /// (port, targetPort).
    pub ports: Vec<(u16, u16)>,
}

/// A connection's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Pod { name: String, namespace: String },
    External,
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Pod { name: String, namespace: String, port: u16 },
    Service { name: String, namespace: String, port: u16 },
    External { port: u16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    Count(u32),
    Parallel(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub id: String,
    pub from: Peer,
    pub to: Target,
    pub send: u64,
    pub repeat: Repeat,
    pub hold_ms: u64,
    pub background: bool,
    pub deadline_ms: u64,
    /// Written as `expect:` (regression files carry the oracle's exact predictions).
    pub expect: Option<Expect>,
}

/// An `expect:` block of a connect step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    pub outcome: Option<ConnOutcome>,
    /// `Some(None)` writes `path: null`.
    pub path: Option<Option<PathKind>>,
    pub received: Option<u64>,
    /// `Some(None)` writes `server_peer: null`.
    pub server_peer: Option<Option<Ipv4Addr>>,
    pub server_identity: Option<Option<String>>,
}

impl Expect {
    pub fn is_empty(&self) -> bool {
        *self == Expect::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a handful per case; boxing would only clutter the shrinker
pub enum Step {
    Connect(Connect),
    Partition(usize, usize),
    /// `None`: heal every link.
    Heal(Option<(usize, usize)>),
    Latency(usize, usize, u64),
    /// Loss in percent.
    Loss(usize, usize, u32),
    Crash(usize),
    Restart(usize),
    Start(usize),
    FlushConntrack(Peer),
    DeletePod {
        name: String,
        namespace: String,
    },
    AddPod(Pod),
    Apply(PolicyObject),
    Remove {
        name: String,
        namespace: String,
    },
    WaitMs(u64),
}

impl Step {
    /// The step as the format writes it.
    pub fn to_y(&self) -> Y {
        let pair = |a: usize, b: usize| Y::Seq(vec![Y::str(NODES[a]), Y::str(NODES[b])]);
        let fault = |k: &str, v: Y| Y::map([("fault", Y::map([(k, v)]))]);
        match self {
            Step::Connect(c) => Y::map([("connect", c.to_y())]),
            Step::Partition(a, b) => fault("partition", pair(*a, *b)),
            Step::Heal(None) => Y::map([("fault", Y::str("heal"))]),
            Step::Heal(Some((a, b))) => fault("heal", pair(*a, *b)),
            Step::Latency(a, b, ms) => fault(
                "latency",
                Y::map([("between", pair(*a, *b)), ("add", Y::raw(format!("{ms}ms")))]),
            ),
            Step::Loss(a, b, pct) => fault(
                "loss",
                Y::map([
                    ("between", pair(*a, *b)),
                    ("rate", Y::raw(format!("{:.2}", *pct as f64 / 100.0))),
                ]),
            ),
            Step::Crash(n) => fault("crash", Y::str(format!("proxy@{}", NODES[*n]))),
            Step::Restart(n) => fault("restart", Y::str(format!("proxy@{}", NODES[*n]))),
            Step::Start(n) => fault("start", Y::str(format!("proxy@{}", NODES[*n]))),
            Step::FlushConntrack(p) => fault("flush-conntrack", Y::str(p.reference())),
            Step::DeletePod { name, namespace } => {
                fault("delete-pod", Y::str(reference(name, namespace)))
            }
            Step::AddPod(p) => fault("add-pod", p.to_y()),
            Step::Apply(p) => fault("apply", policy_y(p)),
            Step::Remove { name, namespace } => {
                fault("remove", Y::str(format!("{name}.{namespace}")))
            }
            Step::WaitMs(ms) => {
                Y::map([("wait", Y::raw(format_duration(std::time::Duration::from_millis(*ms))))])
            }
        }
    }

    /// Whether this step is a fault that may leave a connection's state behind in conntrack
    /// (a packet that would have closed it never arrives).
    pub fn is_disruptive(&self) -> bool {
        matches!(
            self,
            Step::Partition(..)
                | Step::Loss(..)
                | Step::Crash(_)
                | Step::Restart(_)
                | Step::FlushConntrack(_)
                | Step::DeletePod { .. }
        )
    }
}

/// `name` for the default namespace, else `name.namespace`.
fn reference(name: &str, namespace: &str) -> String {
    if namespace == "default" { name.to_string() } else { format!("{name}.{namespace}") }
}

impl Peer {
    pub fn reference(&self) -> String {
        match self {
            Peer::Pod { name, namespace } => reference(name, namespace),
            Peer::External => EXTERNAL.to_string(),
        }
    }
}

impl Target {
    pub fn reference(&self) -> String {
        match self {
            Target::Pod { name, namespace, port } | Target::Service { name, namespace, port } => {
                format!("{}:{port}", reference(name, namespace))
            }
            Target::External { port } => format!("{EXTERNAL}:{port}"),
        }
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

impl Connect {
    fn to_y(&self) -> Y {
        let mut m = vec![
            ("id".to_string(), Y::str(&self.id)),
            ("from".to_string(), Y::str(self.from.reference())),
            ("to".to_string(), Y::str(self.to.reference())),
            ("send".to_string(), Y::raw(size(self.send))),
        ];
        match self.repeat {
            Repeat::Count(1) => {}
            Repeat::Count(n) => m.push(("count".into(), Y::raw(n))),
            Repeat::Parallel(n) => m.push(("parallel".into(), Y::raw(n))),
        }
        if self.hold_ms > 0 {
            let d = std::time::Duration::from_millis(self.hold_ms);
            m.push(("hold".into(), Y::raw(format_duration(d))));
        }
        if self.background {
            m.push(("background".into(), Y::raw(true)));
        }
        let d = std::time::Duration::from_millis(self.deadline_ms);
        m.push(("deadline".into(), Y::raw(format_duration(d))));
        if let Some(e) = self.expect.as_ref().filter(|e| !e.is_empty()) {
            m.push(("expect".into(), e.to_y()));
        }
        Y::Map(m)
    }
}

impl Expect {
    fn to_y(&self) -> Y {
        let mut m = Vec::new();
        let null = || Y::raw("null");
        if let Some(o) = self.outcome {
            m.push(("outcome".to_string(), Y::str(o.as_str())));
        }
        if let Some(p) = self.path {
            m.push(("path".into(), p.map_or_else(null, |p| Y::str(p.as_str()))));
        }
        if let Some(r) = self.received {
            m.push(("received".into(), Y::raw(size(r))));
        }
        if let Some(p) = self.server_peer {
            m.push(("server_peer".into(), p.map_or_else(null, Y::raw)));
        }
        if let Some(i) = &self.server_identity {
            m.push(("server_identity".into(), i.as_ref().map_or_else(null, |i| Y::str(i.clone()))));
        }
        Y::Map(m)
    }
}

impl Pod {
    pub fn key(&self) -> (String, String) {
        (self.name.clone(), self.namespace.clone())
    }

    pub fn to_y(&self) -> Y {
        let mut m = vec![("name".to_string(), Y::str(&self.name))];
        if self.namespace != "default" {
            m.push(("namespace".into(), Y::str(&self.namespace)));
        }
        m.push(("node".into(), Y::str(NODES[self.node])));
        m.push(("ip".into(), Y::raw(self.ip)));
        if self.service_account != "default" {
            m.push(("serviceAccount".into(), Y::str(&self.service_account)));
        }
        if self.ambient {
            m.push(("ambient".into(), Y::raw(true)));
        }
        if let Some(app) = &self.app {
            m.push(("labels".into(), Y::map([("app", Y::str(app))])));
        }
        if !self.serve.is_empty() {
            let serve = self
                .serve
                .iter()
                .map(|(port, app)| Y::map([("port", Y::raw(port)), ("app", Y::str(app.name()))]))
                .collect();
            m.push(("serve".into(), Y::Seq(serve)));
        }
        Y::Map(m)
    }
}

impl Service {
    fn to_y(&self) -> Y {
        let mut m = vec![("name".to_string(), Y::str(&self.name))];
        if self.namespace != "default" {
            m.push(("namespace".into(), Y::str(&self.namespace)));
        }
        m.push(("vip".into(), Y::raw(self.vip)));
        m.push(("selector".into(), Y::map([("app", Y::str(&self.selector_app))])));
        let ports = self
            .ports
            .iter()
            .map(|(p, t)| Y::map([("port", Y::raw(p)), ("targetPort", Y::raw(t))]))
            .collect();
        m.push(("ports".into(), Y::Seq(ports)));
        Y::Map(m)
    }
}

/// An Istio object as YAML (its serde form: the wire format, unknown fields left out).
pub fn policy_y(p: &PolicyObject) -> Y {
    match serde_json::to_value(p) {
        Ok(v) => Y::from_json(&v),
        Err(e) => Y::str(format!("unserializable policy: {e}")),
    }
}

impl Case {
    /// Looks a pod up among the initial pods and the pods added by steps.
    pub fn find_pod(&self, name: &str, namespace: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .chain(self.steps.iter().filter_map(|s| match s {
                Step::AddPod(p) => Some(p),
                _ => None,
            }))
            .find(|p| p.name == name && p.namespace == namespace)
    }

    /// Every connect step.
    pub fn connects(&self) -> impl Iterator<Item = &Connect> {
        self.steps.iter().filter_map(|s| match s {
            Step::Connect(c) => Some(c),
            _ => None,
        })
    }

    /// Pods, steps and policies: how big the case is, for reports and the shrinker.
    pub fn size(&self) -> (usize, usize, usize) {
        let added = self.steps.iter().filter(|s| matches!(s, Step::AddPod(_))).count();
        (self.pods.len() + added, self.steps.len(), self.policies.len())
    }

    /// The scenario file.
    pub fn to_yaml(&self) -> String {
        let mut root = vec![
            ("scenario".to_string(), Y::str(&self.id)),
            ("description".to_string(), Y::str(&self.description)),
            ("tags".to_string(), Y::Seq(vec![Y::str("fuzz")])),
            ("seed".to_string(), Y::raw(self.seed)),
        ];
        let mut cluster = vec![(
            "nodes".to_string(),
            Y::Seq(NODES[..self.nodes].iter().map(|n| Y::str(*n)).collect()),
        )];
        cluster.push(("pods".into(), Y::Seq(self.pods.iter().map(Pod::to_y).collect())));
        if !self.services.is_empty() {
            cluster.push((
                "services".into(),
                Y::Seq(self.services.iter().map(Service::to_y).collect()),
            ));
        }
        if self.external {
            let host = Y::map([
                ("name", Y::str(EXTERNAL)),
                ("ip", Y::raw(EXTERNAL_IP)),
                (
                    "serve",
                    Y::Seq(vec![Y::map([
                        ("port", Y::raw(EXTERNAL_PORT)),
                        ("app", Y::str("echo")),
                    ])]),
                ),
            ]);
            cluster.push(("external".into(), Y::Seq(vec![host])));
        }
        root.push(("cluster".into(), Y::Map(cluster)));
        if !self.policies.is_empty() {
            root.push(("policies".into(), Y::Seq(self.policies.iter().map(policy_y).collect())));
        }
        root.push(("steps".into(), Y::Seq(self.steps.iter().map(Step::to_y).collect())));
        let mut text = yaml::document(&Y::Map(root));
        // The description is one long line; fold it as the catalog does.
        text = fold_description(&text, &self.description);
        text
    }
}

/// Rewrites the `description:` line as a folded block (`>`), wrapped at about 96 columns.
fn fold_description(text: &str, description: &str) -> String {
    let line = format!("description: {}\n", yaml::scalar(description));
    if !text.contains(&line) || description.contains('\n') {
        return text.to_string();
    }
    let mut block = String::from("description: >\n");
    let mut current = String::new();
    for word in description.split_whitespace() {
        if !current.is_empty() && current.len() + 1 + word.len() > 94 {
            block.push_str(&format!("  {current}\n"));
            current.clear();
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        block.push_str(&format!("  {current}\n"));
    }
    text.replacen(&line, &block, 1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ambient_scenarios::world::{Action, ObjectKey};

    use crate::runner::{case_seed, generate, load};
    use crate::strategy::Limits;

    use super::*;

    /// Every generated case renders to YAML the loader accepts, and the loaded world is the
    /// case: same nodes, pods (address, node, capture), services, policies and steps.
    #[test]
    fn generated_cases_round_trip_through_the_loader() {
        for i in 0..300 {
            let case = generate(Limits::default(), case_seed(11, i), &format!("rt-{i}"));
            assert_eq!(case, generate(Limits::default(), case_seed(11, i), &format!("rt-{i}")));
            let world = match load(&case) {
                Ok(w) => w,
                Err(bug) => panic!("case {i}: {bug}"),
            };
            assert_eq!(world.id, case.id);
            assert_eq!(world.seed, case.seed);
            assert_eq!(world.nodes.len(), case.nodes, "case {i}");
            assert_eq!(world.pods.len(), case.pods.len(), "case {i}");
            for p in &case.pods {
                let key = ObjectKey { name: p.name.clone(), namespace: p.namespace.clone() };
                let w = &world.pods[&key];
                assert_eq!((w.ip, w.node.as_str()), (p.ip, NODES[p.node]), "case {i} pod {key}");
                assert_eq!(w.is_captured(), p.ambient, "case {i} pod {key}");
                assert_eq!(w.service_account, p.service_account, "case {i} pod {key}");
                assert_eq!(w.serve.len(), p.serve.len(), "case {i} pod {key}");
            }
            assert_eq!(world.services.len(), case.services.len(), "case {i}");
            assert_eq!(world.external.len(), usize::from(case.external), "case {i}");
            let objects: Vec<&PolicyObject> = world.policies.iter().map(|p| &p.object).collect();
            assert_eq!(objects, case.policies.iter().collect::<Vec<_>>(), "case {i}");
            assert_eq!(world.steps.len(), case.steps.len(), "case {i}");
            for (w, c) in world.steps.iter().zip(&case.steps) {
                let same_kind = matches!(
                    (&w.action, c),
                    (Action::Connect(_), Step::Connect(_))
                        | (Action::Wait(_), Step::WaitMs(_))
                        | (Action::Fault(_), _)
                );
                assert!(same_kind, "case {i}: {:?} loaded as {:?}", c, w.action);
                if let (Action::Connect(w), Step::Connect(c)) = (&w.action, c) {
                    assert_eq!(
                        (w.id.as_str(), w.send, w.background),
                        (c.id.as_str(), c.send, c.background)
                    );
                }
            }
        }
    }

    /// Over a few hundred cases the strategies reach every kind of step, every policy field
    /// (with its negation) and both kinds of policy.
    #[test]
    fn strategies_cover_the_vocabulary() {
        let mut kinds = BTreeSet::new();
        let mut text = String::new();
        let (mut parallel, mut services, mut external, mut four_nodes) =
            (false, false, false, false);
        for i in 0..300 {
            let case = generate(Limits::default(), case_seed(3, i), "cov");
            kinds.extend(case.steps.iter().map(crate::runner::step_kind));
            text.push_str(&case.to_yaml());
            parallel |= case.connects().any(|c| matches!(c.repeat, Repeat::Parallel(_)));
            services |= case.connects().any(|c| matches!(c.to, Target::Service { .. }));
            external |= case.connects().any(|c| c.from == Peer::External);
            four_nodes |= case.nodes == 4;
        }
        let all = [
            "connect",
            "connect (background)",
            "partition",
            "heal",
            "latency",
            "loss",
            "crash",
            "restart",
            "start",
            "flush-conntrack",
            "delete-pod",
            "add-pod",
            "apply",
            "remove",
            "wait",
        ];
        for k in all {
            assert!(kinds.contains(k), "no {k} step in 300 cases");
        }
        for field in [
            "principals:",
            "notPrincipals:",
            "namespaces:",
            "notNamespaces:",
            "ipBlocks:",
            "notIpBlocks:",
            "ports:",
            "notPorts:",
            "action: DENY",
            "action: ALLOW",
            "kind: PeerAuthentication",
            "mode: STRICT",
            "portLevelMtls:",
        ] {
            assert!(text.contains(field), "no {field} in 300 cases");
        }
        assert!(parallel && services && external && four_nodes);
    }
}
