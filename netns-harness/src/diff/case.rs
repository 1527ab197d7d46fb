//! The model-neutral description of a differential case — ruleset text, topology, flows — and of
//! what running it showed (the [`Observation`]). Both are plain serde data: the kernel executor
//! ([`super::kernel`]) and a model executor produce the same [`Observation`] type from the same
//! [`Case`], and [`super::compare`] says where they differ.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::iptables::{Counters, RuleRef, Table};
use crate::socket::ConnectErrorKind;

/// One namespace of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The captured pod: carries the generated ruleset, `lo` and `eth0`.
    Pod,
    /// The pod's neighbour at the other end of the veth pair; no rules.
    Peer,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Pod => "pod",
            Side::Peer => "peer",
        })
    }
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Interface.
    pub dev: String,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// A route (`ip route add [local] dst/prefix [via gw] [dev dev] [table t]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination.
    pub dst: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Next hop.
    pub via: Option<Ipv4Addr>,
    /// Output device.
    pub dev: Option<String>,
    /// Table (254 = main).
    pub table: u32,
    /// A `local` route.
    pub local: bool,
}

/// A policy rule `fwmark mark/mask pref p lookup table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwmarkRuleSpec {
    /// Mark.
    pub mark: u32,
    /// Mask.
    pub mask: u32,
    /// Priority.
    pub pref: u32,
    /// Table.
    pub table: u32,
}

/// One namespace's network setup. Both ends of the veth pair are called `eth0`; `lo` is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Which namespace.
    pub side: Side,
    /// Addresses (besides `127.0.0.1/8` on `lo`).
    pub addresses: Vec<Address>,
    /// Routes besides the connected ones.
    pub routes: Vec<RouteSpec>,
    /// Policy rules.
    pub rules: Vec<FwmarkRuleSpec>,
    /// Sysctls written (dotted keys), in order.
    pub sysctls: Vec<(String, String)>,
}

/// An echo server: accepts, reads the flow header, echoes, closes as the flow says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSpec {
    /// Name used in observations.
    pub id: String,
    /// Namespace.
    pub side: Side,
    /// Bound address (`0.0.0.0` = any).
    pub addr: SocketAddrV4,
    /// IP_TRANSPARENT.
    pub transparent: bool,
}

/// The fixed two-namespace topology every case runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The pod (rules go here) and the peer.
    pub nodes: Vec<NodeSpec>,
    /// Listeners in either namespace.
    pub listeners: Vec<ListenerSpec>,
}

/// Who closes first after the echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseOrder {
    /// The client half-closes, the server answers with its FIN.
    ClientFirst,
    /// The server half-closes, the client answers with its FIN.
    ServerFirst,
    /// The client aborts with a RST (SO_LINGER 0).
    ClientReset,
}

/// One TCP connection attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowSpec {
    /// Index within the case (also in the header the client sends).
    pub id: u32,
    /// Namespace the client connects from.
    pub from: Side,
    /// Destination as the client asks for it.
    pub dst: SocketAddrV4,
    /// SO_MARK on the client socket.
    pub mark: Option<u32>,
    /// Explicit source port (outside the ephemeral range); `None` = ephemeral.
    pub src_port: Option<u16>,
    /// Payload bytes after the header line `flow <id> <len>\n`.
    pub payload: u32,
    /// Close order after the echo.
    pub close: CloseOrder,
}

impl FlowSpec {
    /// The header line the client sends first.
    pub fn header(&self) -> String {
        format!("flow {} {}\n", self.id, self.payload)
    }

    /// Everything the client sends (header + deterministic payload).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header().into_bytes();
        out.extend(
            (0..self.payload).map(|i| (i.wrapping_mul(31).wrapping_add(self.id * 7) % 251) as u8),
        );
        out
    }
}

/// A complete case: what to load, where, and which connections to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// The seed it was generated from (rerun: `DIFF_SEED=<seed> DIFF_CASES=1`).
    pub seed: u64,
    /// `iptables-restore` input (no `--noflush`) for the pod; uses `-N`, `-A`, `-I`.
    pub ruleset: String,
    /// The topology.
    pub topology: Topology,
    /// The connections, all started at once.
    pub flows: Vec<FlowSpec>,
}

/// A port after normalisation: ephemeral ports depend on the stack's allocator, so they are
/// replaced by the flow that owned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// A port the case chose (listener, explicit source port, NAT target).
    Fixed(u16),
    /// The ephemeral source port of flow `n`.
    Ephemeral(u32),
    /// An ephemeral-range port no flow owned (e.g. remapped by SNAT on a clash).
    UnknownEphemeral,
    /// A port the kernel picked at random from a source-NAT range `lo-hi` of the ruleset.
    SnatRange(u16, u16),
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Fixed(p) => write!(f, "{p}"),
            Port::Ephemeral(n) => write!(f, "eph:{n}"),
            Port::UnknownEphemeral => f.write_str("eph:?"),
            Port::SnatRange(lo, hi) => write!(f, "snat:{lo}-{hi}"),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(range) = text.strip_prefix("snat:") {
            let parsed = range
                .split_once('-')
                .and_then(|(lo, hi)| Some((lo.parse().ok()?, hi.parse().ok()?)));
            return parsed
                .map(|(lo, hi)| Port::SnatRange(lo, hi))
                .ok_or_else(|| serde::de::Error::custom(format!("bad port range {text:?}")));
        }
        match text.strip_prefix("eph:") {
            Some("?") => Ok(Port::UnknownEphemeral),
            Some(n) => n.parse().map(Port::Ephemeral).map_err(serde::de::Error::custom),
            None => text.parse().map(Port::Fixed).map_err(serde::de::Error::custom),
        }
    }
}

/// An address and a normalised port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: Port,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// How the connect went.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectResult {
    /// The handshake completed.
    Connected,
    /// It failed.
    Failed(ConnectErrorKind),
}

/// How the echo went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EchoResult {
    /// Every byte came back unchanged.
    Intact {
        /// Bytes echoed (header + payload).
        bytes: u32,
    },
    /// Fewer bytes came back before the peer closed or the time ran out.
    Short {
        /// Bytes received.
        got: u32,
        /// Bytes sent.
        sent: u32,
        /// Whether the time ran out (a stalled connection: see `timing_sensitive`).
        timed_out: bool,
        /// The read or write error that ended it (errno name, e.g. `ECONNRESET`), if any.
        error: Option<String>,
    },
    /// Bytes came back, but different ones.
    Corrupt,
}

/// How the close went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloseResult {
    /// Both sides saw the other's FIN (or, for a reset, the client sent its RST).
    Clean,
    /// The time ran out waiting for the peer.
    TimedOut,
    /// An error (by errno name).
    Error(String),
}

/// What the server side saw of one accepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptObservation {
    /// Which listener accepted it.
    pub listener: String,
    /// Its local address (after DNAT/REDIRECT).
    pub local: Endpoint,
    /// The client address it saw (after SNAT).
    pub peer: Endpoint,
    /// SO_ORIGINAL_DST, or the errno name it failed with (`ENOENT`: no default-zone entry).
    pub original_dst: Result<Endpoint, String>,
}

/// What happened to one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowObservation {
    /// The flow's id.
    pub id: u32,
    /// The client's source port, normalised.
    pub client_port: Option<Port>,
    /// Connect result.
    pub connect: ConnectResult,
    /// The server side, if a listener accepted it (matched by the flow header, or by address).
    pub accepted: Option<AcceptObservation>,
    /// The echo, if connected.
    pub echo: Option<EchoResult>,
    /// The close, if connected.
    pub close: Option<CloseResult>,
    /// A phase of this flow ran into its time limit after connecting (TCP retransmissions may have
    /// happened), or its conntrack entry was still closing at the final snapshot: per-packet counts
    /// and conntrack states of this flow are timing-dependent.
    pub timing_sensitive: bool,
}

/// A conntrack tuple, normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NormTuple {
    /// Source.
    pub src: Endpoint,
    /// Destination.
    pub dst: Endpoint,
}

/// A conntrack entry without its timer, reference count and accounting, ports normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NormEntry {
    /// Protocol name.
    pub proto: String,
    /// TCP state.
    pub state: Option<String>,
    /// Original direction.
    pub orig: NormTuple,
    /// Reply direction.
    pub reply: NormTuple,
    /// `[UNREPLIED]`.
    pub unreplied: bool,
    /// `[ASSURED]`.
    pub assured: bool,
    /// Connection mark.
    pub mark: u32,
    /// Zone (None = 0).
    pub zone: Option<String>,
}

/// One rule of the kernel's canonical listing with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleObservation {
    /// Where it is.
    pub key: RuleRef,
    /// `-A CHAIN spec`.
    pub text: String,
    /// Its counters.
    pub counters: Counters,
    /// Only first packets of connections reach it (nat table, or a `--ctstate NEW` match): its
    /// counters do not depend on TCP stack details and are compared exactly.
    pub first_packets_only: bool,
}

/// A built-in chain's policy and the counters of packets that fell through to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyObservation {
    /// Table.
    pub table: Table,
    /// Chain.
    pub chain: String,
    /// `ACCEPT` or `DROP`.
    pub policy: String,
    /// Counters.
    pub counters: Counters,
    /// Nat chains see first packets only.
    pub first_packets_only: bool,
}

/// What a case showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The case's seed.
    pub seed: u64,
    /// The pod's rules as the backend lists them, canonical (see [`crate::iptables::Ruleset`]).
    pub canonical_rules: String,
    /// Rules with counters, after all flows closed.
    pub rules: Vec<RuleObservation>,
    /// Built-in chain policies with counters.
    pub policies: Vec<PolicyObservation>,
    /// Every flow, by id.
    pub flows: Vec<FlowObservation>,
    /// Connections a listener accepted that no flow claims (should stay empty).
    pub unclaimed_accepts: Vec<AcceptObservation>,
    /// Conntrack per namespace with the connections held open after the echo (ESTABLISHED).
    pub conntrack_open: BTreeMap<Side, Vec<NormEntry>>,
    /// Conntrack per namespace after every flow closed (TIME_WAIT / CLOSE).
    pub conntrack_closed: BTreeMap<Side, Vec<NormEntry>>,
}

/// A small, valid case and the kernel observation of it, for the comparison and invariant tests.
#[cfg(test)]
pub(crate) fn sample() -> (Case, Observation) {
    use crate::iptables::{Counters, RuleRef, Table};
    let pod = Ipv4Addr::new(10, 0, 1, 2);
    let flow = FlowSpec {
        id: 0,
        from: Side::Pod,
        dst: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 80),
        mark: None,
        src_port: None,
        payload: 5,
        close: CloseOrder::ClientFirst,
    };
    let sent = flow.bytes().len() as u32;
    let ruleset =
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n";
    let case = Case {
        seed: 7,
        ruleset: ruleset.into(),
        topology: Topology::standard(),
        flows: vec![flow],
    };
    let ep = |ip: Ipv4Addr, port| Endpoint { ip, port };
    let local = ep(Ipv4Addr::LOCALHOST, Port::Fixed(15001));
    let client = ep(pod, Port::Ephemeral(0));
    let asked = ep(Ipv4Addr::new(10, 0, 1, 1), Port::Fixed(80));
    let entry = |state: &str| NormEntry {
        proto: "tcp".into(),
        state: Some(state.into()),
        orig: NormTuple { src: client, dst: asked },
        reply: NormTuple { src: local, dst: client },
        unreplied: false,
        assured: true,
        mark: 0,
        zone: None,
    };
    let observation = Observation {
        seed: 7,
        canonical_rules: "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A OUTPUT -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n".into(),
        rules: vec![
            RuleObservation {
                key: RuleRef { table: Table::Nat, chain: "OUTPUT".into(), index: 1 },
                text: "-A OUTPUT -p tcp -j REDIRECT --to-ports 15001".into(),
                counters: Counters { packets: 1, bytes: 60 },
                first_packets_only: true,
            },
            RuleObservation {
                key: RuleRef { table: Table::Filter, chain: "OUTPUT".into(), index: 1 },
                text: "-A OUTPUT -j ACCEPT".into(),
                counters: Counters { packets: 9, bytes: 700 },
                first_packets_only: false,
            },
        ],
        policies: vec![],
        flows: vec![FlowObservation {
            id: 0,
            client_port: Some(Port::Ephemeral(0)),
            connect: ConnectResult::Connected,
            accepted: Some(AcceptObservation {
                listener: "capture-out".into(),
                local,
                peer: client,
                original_dst: Ok(asked),
            }),
            echo: Some(EchoResult::Intact { bytes: sent }),
            close: Some(CloseResult::Clean),
            timing_sensitive: false,
        }],
        unclaimed_accepts: vec![],
        conntrack_open: [(Side::Pod, vec![entry("ESTABLISHED")]), (Side::Peer, vec![])].into(),
        conntrack_closed: [(Side::Pod, vec![entry("TIME_WAIT")]), (Side::Peer, vec![])].into(),
    };
    (case, observation)
}
