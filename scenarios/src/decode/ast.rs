//! The document as written: shapes, types and value syntax checked, references not yet resolved.
//! Only the decoder builds it and only `world::build` reads it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ambient_proxy::istio::PolicyObject;

use crate::diag::{At, Located};
use crate::expect::{ConnExpect, CtPattern, ResolveExpect};
use crate::outcome::DnsTransport;
use crate::values::{NameRef, NodePair, RuleRef, TargetRef};
use crate::world::{App, Repeat, ServicePort};
use crate::yaml::Node;

#[derive(Debug, Default)]
pub(crate) struct Doc {
    pub at: At,
    pub scenario: Option<Located<String>>,
    pub description: String,
    pub tags: Vec<Located<String>>,
    pub seed: u64,
    pub cluster: Cluster,
    pub policies: Vec<PolicyDoc>,
    pub steps: Vec<StepDoc>,
    pub expect: Option<ExpectDoc>,
}

#[derive(Debug, Default)]
pub(crate) struct Cluster {
    pub trust_domain: Located<String>,
    pub nodes: Vec<Located<String>>,
    pub pods: Vec<PodDoc>,
    pub services: Vec<ServiceDoc>,
    pub external: Vec<ExternalDoc>,
}

#[derive(Debug, Clone)]
pub(crate) struct PodDoc {
    pub at: At,
    pub name: Located<String>,
    pub namespace: Located<String>,
    pub node: Located<String>,
    pub service_account: Located<String>,
    pub ambient: bool,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Located<Ipv4Addr>>,
    pub serve: Vec<Located<(u16, App)>>,
}

#[derive(Debug)]
pub(crate) struct ServiceDoc {
    pub at: At,
    pub name: Located<String>,
    pub namespace: Located<String>,
    pub vip: Located<Ipv4Addr>,
    pub selector: Located<BTreeMap<String, String>>,
    pub ports: Vec<Located<ServicePort>>,
}

#[derive(Debug)]
pub(crate) struct ExternalDoc {
    pub at: At,
    pub name: Located<String>,
    pub ip: Located<Ipv4Addr>,
    pub serve: Vec<Located<(u16, App)>>,
    pub dns: Option<DnsDoc>,
}

/// `dns: {records: {name: ip | [ip, …]}}` as written.
#[derive(Debug)]
pub(crate) struct DnsDoc {
    pub at: At,
    /// Names (without a trailing dot) and their addresses, in file order.
    pub records: Vec<Located<(String, Vec<Ipv4Addr>)>>,
}

#[derive(Debug, Clone)]
pub(crate) struct PolicyDoc {
    pub at: At,
    pub node: Node,
    pub object: PolicyObject,
}

#[derive(Debug)]
pub(crate) struct StepDoc {
    pub at: At,
    pub kind: StepKind,
}

#[derive(Debug)]
pub(crate) enum StepKind {
    Connect(Box<ConnectDoc>),
    Fault(FaultDoc),
    Wait(Duration),
    Check(ExpectDoc),
    Resolve(ResolveDoc),
}

#[derive(Debug)]
pub(crate) struct ResolveDoc {
    pub id: Option<Located<String>>,
    pub from: Located<NameRef>,
    /// As written, without a trailing dot.
    pub name: Located<String>,
    pub over: DnsTransport,
    pub deadline: Duration,
    pub expect: Option<ResolveExpect>,
}

/// A connect step's `to`: a target, or — with `resolve: true` — a DNS name and a port.
#[derive(Debug)]
pub(crate) enum ToDoc {
    Target(TargetRef),
    Host(String, u16),
}

#[derive(Debug)]
pub(crate) struct ConnectDoc {
    pub id: Located<String>,
    pub from: Located<NameRef>,
    pub to: Located<ToDoc>,
    pub send: u64,
    pub repeat: Repeat,
    pub hold: Duration,
    pub background: bool,
    pub deadline: Duration,
    pub expect: Option<ConnExpect>,
}

/// Two node names as written (`[node-a, node-b]`).
#[derive(Debug)]
pub(crate) struct Between {
    pub at: At,
    pub a: Located<String>,
    pub b: Located<String>,
}

#[derive(Debug)]
pub(crate) enum FaultDoc {
    Partition(Between),
    Heal(Option<Between>),
    Latency(Between, Duration),
    Loss(Between, f64),
    Restart(Located<String>),
    Crash(Located<String>),
    Start(Located<String>),
    FlushConntrack(Located<NameRef>),
    DeletePod(Located<NameRef>),
    AddPod(Box<PodDoc>),
    Apply(Box<PolicyDoc>),
    Remove(Located<NameRef>),
}

/// `{"nat/ISTIO_OUTPUT/6": 10}` as written.
pub(crate) type RuleCounts = Vec<Located<(RuleRef, u64)>>;

#[derive(Debug, Default)]
pub(crate) struct ExpectDoc {
    pub at: At,
    pub connections: Vec<(Located<String>, ConnExpect)>,
    pub tunnels: Vec<Located<(NodePair, u64)>>,
    pub conntrack: Vec<(Located<NameRef>, Located<Vec<CtPattern>>)>,
    pub counters: Vec<(Located<NameRef>, RuleCounts)>,
}
