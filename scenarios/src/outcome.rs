//! What a backend reports after running a `World`: the [`Outcome`].
//!
//! Both backends (the simulator and the netns harness) return this type, and `testbed conform`
//! compares two of them field by field, so it holds only what both can observe and nothing that
//! varies between runs: no timestamps, no durations measured on a clock, maps ordered (`BTreeMap`),
//! lists in a defined order. The JSON form ([`Outcome::to_json`]) is stable: keys appear in the
//! order the fields are declared here.
//!
//! Field meanings are those of `SCENARIO-FORMAT.md` ("Outcome"). One addition: a connection whose
//! outcome is `error` carries its message in `error` (the format says "error (anything else, with
//! a message)"); it is `null` for every other outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::values::{NodePair, RuleRef};

/// Everything one run of one scenario produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The scenario id.
    pub scenario: String,
    pub seed: u64,
    /// One entry per connection opened, in the order they were started (step order; repetitions
    /// of a `count`/`parallel` step in order, all with the step's id).
    pub connections: Vec<Connection>,
    /// One entry per DNS lookup: each `resolve` step, and the lookup before each connection of
    /// a `connect` with `resolve: true` (with the connect's id), in the order they were made.
    /// Left out of the JSON when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<Resolution>,
    /// The state at each `check` step, in step order.
    pub checks: Vec<Snapshot>,
    /// The state when all steps are done and background connections have settled.
    pub end: State,
    /// Steps the backend could not perform faithfully, with why. A scenario with skipped steps
    /// has not passed.
    pub skipped: Vec<Skipped>,
}

/// One connection, as the client app and the proxies saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The `connect` step's id.
    pub id: String,
    /// The client: a pod as `name.namespace`, or an external host's name.
    pub from: String,
    /// The target as the World labels it (`echo.default:80`, `server.default:8080`, `web:443`,
    /// `10.0.2.2:8080`).
    pub to: String,
    pub outcome: ConnOutcome,
    /// The message of an `error` outcome; `null` otherwise.
    pub error: Option<String>,
    /// How the connection travelled; `null` if it never left the client (e.g. refused locally).
    pub path: Option<PathKind>,
    /// Bytes the client app wrote.
    pub sent: u64,
    /// Bytes the client app read back.
    pub received: u64,
    /// The bytes read back are exactly what the server app should have returned.
    pub intact: bool,
    /// The source address the server app saw (is the client IP preserved?); `null` if no server
    /// app accepted the connection.
    pub server_peer: Option<Ipv4Addr>,
    /// The identity the destination proxy authenticated (`spiffe://…`), or `null`.
    pub server_identity: Option<String>,
    /// The node pair of the HBONE tunnel it rode, or `null`.
    pub tunnel: Option<NodePair>,
    /// It rode an h2 connection that already existed (pooled).
    pub reused: bool,
    /// The decisions the proxies logged for it, in order.
    pub proxy_events: Vec<ProxyEvent>,
}

/// How a connection ended, from the client app's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnOutcome {
    /// Connected; all expected bytes back, intact; clean close.
    Ok,
    /// A proxy refused it by policy.
    Denied,
    /// Nothing listening, or no upstream.
    Refused,
    /// Reset after connecting.
    Reset,
    /// No answer within the step's deadline.
    Timeout,
    /// Anything else (see `Connection::error`).
    Error,
}

/// The path a connection took through the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Captured, tunnelled over mTLS (HTTP/2 CONNECT).
    Hbone,
    /// Captured, sent plain to an out-of-mesh destination.
    Passthrough,
    /// Uncaptured client into a captured pod, via 15006.
    InboundPlaintext,
    /// Neither side captured.
    Direct,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)*
                    _ => Err(format!(
                        "unknown value {s:?}; expected one of {}",
                        [$($text),*].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(ConnOutcome {
    Ok = "ok", Denied = "denied", Refused = "refused", Reset = "reset", Timeout = "timeout",
    Error = "error",
});
text_enum!(DnsTransport { Udp = "udp", Tcp = "tcp" });
text_enum!(ResolveOutcome {
    Answer = "answer", Nxdomain = "nxdomain", Servfail = "servfail", Refused = "refused",
    Timeout = "timeout", Error = "error",
});
text_enum!(ResolvePath { Proxy = "proxy", Forwarded = "forwarded", Direct = "direct" });
text_enum!(PathKind {
    Hbone = "hbone", Passthrough = "passthrough", InboundPlaintext = "inbound-plaintext",
    Direct = "direct",
});

/// One decision a proxy logged for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyEvent {
    /// The node whose proxy logged it.
    pub proxy: String,
    pub kind: EventKind,
    /// What was decided, in the proxy's words (e.g. `hbone 10.0.2.2:15008 authority
    /// 10.0.2.2:8080`, `deny by default/deny-sleep`).
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Outbound routing: where the proxy sent it and how.
    Route,
    /// Inbound authorization verdict, with the deciding policy.
    Rbac,
    /// Connection pool: dialled a new h2 connection or reused one.
    Pool,
    /// Anything that failed.
    Error,
    /// The DNS proxy: answered, forwarded or failed a query.
    Dns,
}

/// One DNS lookup, as the client's stub resolver and the proxies saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The `resolve` step's id (or the `connect` step's).
    pub id: String,
    /// The client: a pod as `name.namespace`, or an external host's name.
    pub from: String,
    /// The name asked, as written.
    pub name: String,
    /// How the query went: `udp`, or `tcp` (asked so, or retried after a truncated answer).
    pub over: DnsTransport,
    pub outcome: ResolveOutcome,
    /// The message of an `error` outcome; `null` otherwise.
    pub error: Option<String>,
    /// The A records of the answer, in order.
    pub answers: Vec<Ipv4Addr>,
    /// Who answered: `proxy` (the client's node proxy, from the mesh), `forwarded` (its proxy
    /// asked the DNS server), `direct` (an uncaptured client asked the DNS server itself);
    /// `null` when nothing answered.
    pub path: Option<ResolvePath>,
    /// What the proxies logged about it, in order.
    pub proxy_events: Vec<ProxyEvent>,
}

/// How a DNS query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    Udp,
    Tcp,
}

/// How a lookup ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolveOutcome {
    /// NOERROR (with the answers; none for a name without A records).
    Answer,
    /// NXDOMAIN: the name does not exist.
    Nxdomain,
    /// SERVFAIL: the server could not answer (a proxy without an upstream, an upstream that did
    /// not answer).
    Servfail,
    /// Nothing listens where the query went (ICMP port unreachable; a reset over TCP).
    Refused,
    /// No answer within the step's deadline.
    Timeout,
    /// Anything else (see `Resolution::error`).
    Error,
}

/// Who answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvePath {
    Proxy,
    Forwarded,
    Direct,
}

/// The observable state at one point of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// h2 (TLS) connections opened between node proxies so far, per direction.
    pub tunnels: BTreeMap<NodePair, u64>,
    /// Per pod (`name.namespace`) and external host (`name`) that exists at this point.
    pub netns: BTreeMap<String, NetnsState>,
}

/// The state at a `check` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Index of the `check` step in `steps` (0-based).
    pub step: usize,
    #[serde(flatten)]
    pub state: State,
}

/// One network namespace: its conntrack table and rule counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsState {
    /// The whole table, sorted (see [`ConntrackEntry`]'s order).
    pub conntrack: Vec<ConntrackEntry>,
    /// Every rule of the namespace's rule set (captured pods; empty otherwise).
    pub counters: BTreeMap<RuleRef, Counter>,
}

/// A rule's `[packets:bytes]`, as `iptables-save -c` prints them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// One conntrack entry. Ordered by protocol, then original tuple, then the rest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConntrackEntry {
    pub proto: Proto,
    pub orig: Tuple,
    pub reply: Tuple,
    /// TCP state; `null` for other protocols.
    pub state: Option<TcpState>,
    pub mark: u32,
    pub zone: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

text_enum!(Proto { Tcp = "tcp", Udp = "udp" });

/// The TCP states conntrack tracks, spelled as `conntrack -L` prints them: the kernel model's.
pub use ambient_kernel::TcpState;

/// A directed address pair, written `10.0.1.5:40112 -> 10.96.0.10:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

impl FromStr for Tuple {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected `ip:port -> ip:port`, found {s:?}");
        let (a, b) = s.split_once("->").ok_or_else(bad)?;
        Ok(Tuple {
            src: a.trim().parse().map_err(|_| bad())?,
            dst: b.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for Tuple {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Deserializes a value written as text through its `FromStr`.
fn from_text<'de, D: Deserializer<'de>, T: FromStr<Err = String>>(d: D) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for Tuple {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

impl<'de> Deserialize<'de> for NodePair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// A step the backend did not perform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Index of the step in `steps` (0-based).
    pub step: usize,
    pub reason: String,
}

impl Outcome {
    /// The stable JSON form: pretty-printed, keys in declaration order, maps sorted, ending in a
    /// newline. Equal outcomes give byte-identical text.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            // Serializing these types cannot fail (no non-string map keys, no NaN floats).
            format!("{{\"error\": \"outcome not serializable: {e}\"}}")
        });
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> Result<Outcome, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The connections a `connect` step produced (all its repetitions, in order).
    pub fn connections_with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Connection> {
        self.connections.iter().filter(move |c| c.id == id)
    }

    /// The lookups with this id.
    pub fn resolutions_with_id<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Resolution> {
        self.resolutions.iter().filter(move |r| r.id == id)
    }

    /// The snapshot taken at check step `step`.
    pub fn check_at(&self, step: usize) -> Option<&Snapshot> {
        self.checks.iter().find(|c| c.step == step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Outcome {
        let pair = NodePair { from: "node-a".into(), to: "node-b".into() };
        let mut netns = BTreeMap::new();
        netns.insert(
            "client.default".to_string(),
            NetnsState {
                conntrack: vec![ConntrackEntry {
                    proto: Proto::Tcp,
                    orig: "10.0.1.5:40000 -> 10.96.0.10:80".parse().unwrap(),
                    reply: "127.0.0.1:15001 -> 10.0.1.5:40000".parse().unwrap(),
                    state: Some(TcpState::TimeWait),
                    mark: 0,
                    zone: 0,
                }],
                counters: [(
                    "nat/ISTIO_OUTPUT/6".parse().unwrap(),
                    Counter { packets: 1, bytes: 60 },
                )]
                .into_iter()
                .collect(),
            },
        );
        let state = State { tunnels: [(pair.clone(), 1)].into_iter().collect(), netns };
        Outcome {
            scenario: "x".into(),
            seed: 7,
            connections: vec![Connection {
                id: "first".into(),
                from: "client.default".into(),
                to: "echo.default:80".into(),
                outcome: ConnOutcome::Ok,
                error: None,
                path: Some(PathKind::Hbone),
                sent: 1024,
                received: 1024,
                intact: true,
                server_peer: Some(Ipv4Addr::new(10, 0, 1, 5)),
                server_identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
                tunnel: Some(pair),
                reused: false,
                proxy_events: vec![ProxyEvent {
                    proxy: "node-a".into(),
                    kind: EventKind::Route,
                    detail: "hbone 10.0.2.2:15008".into(),
                }],
            }],
            resolutions: Vec::new(),
            checks: vec![Snapshot { step: 1, state: state.clone() }],
            end: state,
            skipped: vec![Skipped { step: 2, reason: "netns cannot add latency".into() }],
        }
    }

    #[test]
    fn json_is_stable_and_round_trips() {
        let o = sample();
        let json = o.to_json();
        assert_eq!(json, sample().to_json());
        assert_eq!(Outcome::from_json(&json).unwrap(), o);
        // Keys in declaration order, the fields the format lists.
        let keys = [
            "\"id\"",
            "\"from\"",
            "\"to\"",
            "\"outcome\"",
            "\"error\"",
            "\"path\"",
            "\"sent\"",
            "\"received\"",
            "\"intact\"",
            "\"server_peer\"",
            "\"server_identity\"",
            "\"tunnel\"",
            "\"reused\"",
            "\"proxy_events\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(json.contains("\"orig\": \"10.0.1.5:40000 -> 10.96.0.10:80\""));
        assert!(json.contains("\"state\": \"TIME_WAIT\""));
        assert!(json.contains("\"node-a->node-b\": 1"));
        assert!(json.contains("\"nat/ISTIO_OUTPUT/6\""));
        assert!(json.contains("\"path\": \"hbone\""));
        assert!(json.ends_with("}\n"));
    }

    #[test]
    fn text_enums_parse_their_spelling() {
        assert_eq!("inbound-plaintext".parse::<PathKind>(), Ok(PathKind::InboundPlaintext));
        assert_eq!("TIME_WAIT".parse::<TcpState>(), Ok(TcpState::TimeWait));
        assert_eq!(
            "okay".parse::<ConnOutcome>().unwrap_err(),
            "unknown value \"okay\"; expected one of ok, denied, refused, reset, timeout, error"
        );
        for o in ConnOutcome::ALL {
            assert_eq!(serde_json::to_string(o).unwrap(), format!("\"{o}\""));
        }
        for s in TcpState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
