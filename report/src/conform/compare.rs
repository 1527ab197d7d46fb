//! Two Outcomes of one scenario → their differences, field by field (pure).
//!
//! Field names are JSON paths into the Outcome: `connections[3].outcome`,
//! `connections[0].proxy_events[1].detail`, `checks[0].tunnels["node-a->node-b"]`,
//! `end.netns["server.default"].counters["mangle/PREROUTING/1"].packets`. Conntrack entries are
//! named by protocol and normalised original tuple (see [`super::normalize`]), since a table is a
//! multiset and an index into it would mean nothing:
//! `end.netns["client.default"].conntrack["tcp 10.0.1.2:$a -> 10.96.0.10:80"].state`.
//!
//! What is compared, and how:
//! - `scenario`, `seed`, `skipped` (each skipped step), as they are;
//! - `connections` in order (both backends list them in step order): every field, the proxy
//!   events one by one; a different number of connections is `connections.length`, and the
//!   common prefix is still compared;
//! - `resolutions` (DNS lookups) the same way;
//! - each snapshot (`checks[i]`, `end`): tunnel counts per node pair (a pair one side does not
//!   list counts 0); the namespaces present; per namespace the conntrack table as a multiset of
//!   normalised entries — entries of one original tuple are matched up, equal ones first, and the
//!   rest paired in order: a pair differing in `reply`, `state`, `mark` or `zone` gives one
//!   difference per field, an entry left without a partner gives `…conntrack["…"]` with
//!   `absent` on the other side; every rule counter, packets and bytes (a rule only one side
//!   lists gives `…counters["…"]`), tagged with how the rule counts ([`Counting`]).

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::Serialize;

use super::normalize::{Counting, Ports, RuleBook};
use ambient_scenarios::outcome::{
    Connection, ConntrackEntry, NetnsState, Outcome, ProxyEvent, Resolution, State,
};
use ambient_scenarios::world::World;

/// One field whose values differ.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Difference {
    /// Where, as a JSON path (module docs).
    pub field: String,
    /// The simulator's value, as JSON-like text (`"ok"`, `1024`, `null`, `absent`).
    pub sim: String,
    /// The kernel's value.
    pub netns: String,
    /// What kind of field it is.
    pub kind: FieldKind,
}

/// The kind of a differing field, for the expected-differences conditions and the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldKind {
    /// A field of a connection (`connections[i]…`).
    Connection,
    /// A field of a DNS lookup (`resolutions[i]…`).
    Lookup,
    /// A conntrack entry or one of its fields.
    Conntrack,
    /// A counter of a rule only first packets reach (nat, `--ctstate NEW`).
    FirstPacketCounter,
    /// A counter of a rule every packet may reach.
    EveryPacketCounter,
    /// Anything else: tunnels, namespaces present, checks, skipped steps, id and seed.
    Other,
}

impl FieldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldKind::Connection => "connection",
            FieldKind::Lookup => "lookup",
            FieldKind::Conntrack => "conntrack",
            FieldKind::FirstPacketCounter => "first-packet counter",
            FieldKind::EveryPacketCounter => "every-packet counter",
            FieldKind::Other => "other",
        }
    }
}

/// JSON text of a value (the way `outcome.json` writes it).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("<{e}>"))
}

/// Absent on this side.
pub const ABSENT: &str = "absent";

struct Differ<'a> {
    ports: Ports,
    rules: RuleBook,
    out: Vec<Difference>,
    _world: &'a World,
}

impl Differ<'_> {
    fn push(&mut self, field: String, sim: String, netns: String, kind: FieldKind) {
        self.out.push(Difference { field, sim, netns, kind });
    }

    fn value<T: Serialize + PartialEq>(&mut self, field: String, a: &T, b: &T, kind: FieldKind) {
        if a != b {
            self.push(field, json(a), json(b), kind);
        }
    }

    fn connection(&mut self, at: &str, a: &Connection, b: &Connection) {
        let k = FieldKind::Connection;
        self.value(format!("{at}.id"), &a.id, &b.id, k);
        self.value(format!("{at}.from"), &a.from, &b.from, k);
        self.value(format!("{at}.to"), &a.to, &b.to, k);
        self.value(format!("{at}.outcome"), &a.outcome, &b.outcome, k);
        self.value(format!("{at}.error"), &a.error, &b.error, k);
        self.value(format!("{at}.path"), &a.path, &b.path, k);
        self.value(format!("{at}.sent"), &a.sent, &b.sent, k);
        self.value(format!("{at}.received"), &a.received, &b.received, k);
        self.value(format!("{at}.intact"), &a.intact, &b.intact, k);
        self.value(format!("{at}.server_peer"), &a.server_peer, &b.server_peer, k);
        self.value(format!("{at}.server_identity"), &a.server_identity, &b.server_identity, k);
        self.value(format!("{at}.tunnel"), &a.tunnel, &b.tunnel, k);
        self.value(format!("{at}.reused"), &a.reused, &b.reused, k);
        self.proxy_events(at, &a.proxy_events, &b.proxy_events, k);
    }

    /// A lookup: every field, the proxy events one by one (a DNS event's detail names no
    /// ephemeral port).
    fn resolution(&mut self, at: &str, a: &Resolution, b: &Resolution) {
        let k = FieldKind::Lookup;
        self.value(format!("{at}.id"), &a.id, &b.id, k);
        self.value(format!("{at}.from"), &a.from, &b.from, k);
        self.value(format!("{at}.name"), &a.name, &b.name, k);
        self.value(format!("{at}.over"), &a.over, &b.over, k);
        self.value(format!("{at}.outcome"), &a.outcome, &b.outcome, k);
        self.value(format!("{at}.error"), &a.error, &b.error, k);
        self.value(format!("{at}.answers"), &a.answers, &b.answers, k);
        self.value(format!("{at}.path"), &a.path, &b.path, k);
        self.proxy_events(at, &a.proxy_events, &b.proxy_events, k);
    }

    /// A connection's or a lookup's proxy events: their count, then each field one by one.
    fn proxy_events(&mut self, at: &str, ea: &[ProxyEvent], eb: &[ProxyEvent], k: FieldKind) {
        self.value(format!("{at}.proxy_events.length"), &ea.len(), &eb.len(), k);
        for (j, (x, y)) in ea.iter().zip(eb).enumerate() {
            let e = format!("{at}.proxy_events[{j}]");
            self.value(format!("{e}.proxy"), &x.proxy, &y.proxy, k);
            self.value(format!("{e}.kind"), &x.kind, &y.kind, k);
            self.value(format!("{e}.detail"), &x.detail, &y.detail, k);
        }
    }

    fn state(&mut self, at: &str, a: &State, b: &State) {
        let pairs: std::collections::BTreeSet<_> =
            a.tunnels.keys().chain(b.tunnels.keys()).collect();
        for pair in pairs {
            let (x, y) = (a.tunnels.get(pair).copied(), b.tunnels.get(pair).copied());
            let field = format!("{at}.tunnels[{}]", json(&pair.to_string()));
            self.value(field, &x.unwrap_or(0), &y.unwrap_or(0), FieldKind::Other);
        }
        let names: std::collections::BTreeSet<&String> =
            a.netns.keys().chain(b.netns.keys()).collect();
        for name in names {
            let field = format!("{at}.netns[{}]", json(name));
            match (a.netns.get(name), b.netns.get(name)) {
                (Some(x), Some(y)) => self.netns(&field, name, x, y),
                (x, y) => {
                    let shown =
                        |s: Option<&NetnsState>| if s.is_some() { "present" } else { ABSENT };
                    self.push(field, shown(x).into(), shown(y).into(), FieldKind::Other);
                }
            }
        }
    }

    fn netns(&mut self, at: &str, name: &str, a: &NetnsState, b: &NetnsState) {
        self.conntrack(at, &a.conntrack, &b.conntrack);
        let rules: std::collections::BTreeSet<_> =
            a.counters.keys().chain(b.counters.keys()).collect();
        for rule in rules {
            let kind = match self.rules.counting(name, rule) {
                Counting::FirstPackets => FieldKind::FirstPacketCounter,
                Counting::EveryPacket => FieldKind::EveryPacketCounter,
            };
            let field = format!("{at}.counters[{}]", json(&rule.to_string()));
            match (a.counters.get(rule), b.counters.get(rule)) {
                (Some(x), Some(y)) => {
                    self.value(format!("{field}.packets"), &x.packets, &y.packets, kind);
                    self.value(format!("{field}.bytes"), &x.bytes, &y.bytes, kind);
                }
                (x, y) => {
                    let shown = |c: Option<&ambient_scenarios::outcome::Counter>| {
                        c.map_or_else(
                            || ABSENT.to_string(),
                            |c| format!("[{}:{}]", c.packets, c.bytes),
                        )
                    };
                    self.push(field, shown(x), shown(y), kind);
                }
            }
        }
    }

    fn conntrack(&mut self, at: &str, a: &[ConntrackEntry], b: &[ConntrackEntry]) {
        let (ga, gb) = (self.group(a), self.group(b));
        let keys: std::collections::BTreeSet<&String> = ga.keys().chain(gb.keys()).collect();
        for key in keys {
            let mut xs = ga.get(key).cloned().unwrap_or_default();
            let mut ys = gb.get(key).cloned().unwrap_or_default();
            // Equal entries match first; the rest pair up in order.
            let mut only_x = Vec::new();
            for x in xs.drain(..) {
                match ys.iter().position(|y| *y == x) {
                    Some(i) => {
                        ys.remove(i);
                    }
                    None => only_x.push(x),
                }
            }
            let field = format!("{at}.conntrack[{}]", json(key));
            let k = FieldKind::Conntrack;
            let mut ys = ys.into_iter();
            for x in only_x {
                match ys.next() {
                    Some(y) => {
                        self.value(format!("{field}.reply"), &x.reply, &y.reply, k);
                        self.value(format!("{field}.state"), &x.state, &y.state, k);
                        self.value(format!("{field}.mark"), &x.mark, &y.mark, k);
                        self.value(format!("{field}.zone"), &x.zone, &y.zone, k);
                    }
                    None => self.push(field.clone(), x.to_string(), ABSENT.into(), k),
                }
            }
            for y in ys {
                self.push(field.clone(), ABSENT.into(), y.to_string(), k);
            }
        }
    }

    /// Normalised entries grouped by `proto orig`, each group sorted.
    fn group(&self, entries: &[ConntrackEntry]) -> BTreeMap<String, Vec<Attrs>> {
        let mut out: BTreeMap<String, Vec<Attrs>> = BTreeMap::new();
        for e in entries {
            let (orig, reply) = self.ports.entry(e);
            let attrs = Attrs {
                reply,
                state: e.state.map(|s| s.name().to_string()),
                mark: e.mark,
                zone: e.zone,
            };
            out.entry(format!("{} {orig}", e.proto)).or_default().push(attrs);
        }
        out.values_mut().for_each(|v| v.sort());
        out
    }
}

/// A normalised entry's fields besides its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Attrs {
    reply: String,
    state: Option<String>,
    mark: u32,
    zone: u16,
}

impl Display for Attrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reply {}", self.reply)?;
        if let Some(s) = &self.state {
            write!(f, " {s}")?;
        }
        write!(f, " mark {:#x}", self.mark)?;
        if self.zone != 0 {
            write!(f, " zone {}", self.zone)?;
        }
        Ok(())
    }
}

/// Every difference between the simulator's Outcome `sim` and the kernel's `netns` of `world`,
/// in the order of the Outcome's fields.
pub fn compare(world: &World, sim: &Outcome, netns: &Outcome) -> Vec<Difference> {
    let mut d = Differ {
        ports: Ports::of(world),
        rules: RuleBook::of(world),
        out: Vec::new(),
        _world: world,
    };
    d.value("scenario".into(), &sim.scenario, &netns.scenario, FieldKind::Other);
    d.value("seed".into(), &sim.seed, &netns.seed, FieldKind::Other);
    let (ca, cb) = (&sim.connections, &netns.connections);
    d.value("connections.length".into(), &ca.len(), &cb.len(), FieldKind::Connection);
    for (i, (a, b)) in ca.iter().zip(cb).enumerate() {
        d.connection(&format!("connections[{i}]"), a, b);
    }
    let (ra, rb) = (&sim.resolutions, &netns.resolutions);
    d.value("resolutions.length".into(), &ra.len(), &rb.len(), FieldKind::Lookup);
    for (i, (a, b)) in ra.iter().zip(rb).enumerate() {
        d.resolution(&format!("resolutions[{i}]"), a, b);
    }
    d.value("checks.length".into(), &sim.checks.len(), &netns.checks.len(), FieldKind::Other);
    for (i, (a, b)) in sim.checks.iter().zip(&netns.checks).enumerate() {
        let at = format!("checks[{i}]");
        d.value(format!("{at}.step"), &a.step, &b.step, FieldKind::Other);
        d.state(&at, &a.state, &b.state);
    }
    d.state("end", &sim.end, &netns.end);
    let (sa, sb) = (&sim.skipped, &netns.skipped);
    d.value("skipped.length".into(), &sa.len(), &sb.len(), FieldKind::Other);
    for (i, (a, b)) in sa.iter().zip(sb).enumerate() {
        d.value(format!("skipped[{i}].step"), &a.step, &b.step, FieldKind::Other);
        d.value(format!("skipped[{i}].reason"), &a.reason, &b.reason, FieldKind::Other);
    }
    d.out
}
