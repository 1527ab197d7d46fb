//! The invariants every fuzz run is checked against, each a function of the scenario, the
//! oracle's predictions and what the run produced ([`Evidence`]).
//!
//! | invariant | holds when |
//! | --- | --- |
//! | `oracle` | every connection's outcome, path, accept and authentication are among the oracle's predictions for the endpoint its route names |
//! | `bytes` | every `ok` connection sent all its bytes and read back exactly what its app returns; no connection ends in a clean close with missing or altered bytes (a silent truncation) |
//! | `plaintext` | no segment on the underlay between nodes carries 16 consecutive bytes of the payload of a captured → captured connection |
//! | `preservation` | the server app saw the client's own address; the destination proxy authenticated the client's own identity; the route went to the target (a pod: its address and port; a Service: one of its endpoints, on the target port) |
//! | `quiescence` | after a quiet tail (the last step waits ≥ 20 min): every proxy holds only its listeners (no connection handlers, live connections or pooled tunnels), and conntrack holds nothing — or, after a fault that can lose the packets that close a connection (partition, loss, crash, restart, pod deletion, conntrack flush), only ESTABLISHED entries, whose kernel timeout is five days |
//! | `determinism` | a second run gives a byte-identical Outcome |
//! | `backend` | the simulator produced an Outcome at all |

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use ambient_proxy::Resources;
use ambient_proxy::faults::{FaultPoint, INJECTED};
use ambient_scenarios::outcome::{ConnOutcome, Connection, EventKind, Outcome, PathKind, TcpState};
use ambient_scenarios::traffic::Payload;
use ambient_scenarios::world::{Action, Fault, World};
use ambient_sim::fabric::UnderlayPacket;

use crate::oracle::{Expect, Prediction, Tri};

/// Which invariant broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    Oracle,
    Bytes,
    Plaintext,
    Preservation,
    Quiescence,
    Determinism,
    Backend,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::Oracle => "oracle",
            Invariant::Bytes => "bytes",
            Invariant::Plaintext => "plaintext",
            Invariant::Preservation => "preservation",
            Invariant::Quiescence => "quiescence",
            Invariant::Determinism => "determinism",
            Invariant::Backend => "backend",
        }
    }

    /// What the invariant promises, in a sentence (for reports and regression files).
    pub fn promise(self) -> &'static str {
        match self {
            Invariant::Oracle => "the reference oracle and the simulator agree on every connection",
            Invariant::Bytes => {
                "every ok connection received exactly the expected bytes and no failure is a silent truncation"
            }
            Invariant::Plaintext => {
                "no payload byte of captured-to-captured traffic crosses between nodes in clear"
            }
            Invariant::Preservation => {
                "the original source address, identity and destination are preserved"
            }
            Invariant::Quiescence => {
                "after the traffic is over and time passes, proxies and conntrack hold nothing for it"
            }
            Invariant::Determinism => "the same case run twice gives the same Outcome bytes",
            Invariant::Backend => "the simulator runs the case to an Outcome",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    /// The connection (`id#k`, the k-th of its step) it is about, if one.
    pub connection: Option<String>,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.connection {
            Some(c) => write!(f, "{}: connection {c}: {}", self.invariant, self.message),
            None => write!(f, "{}: {}", self.invariant, self.message),
        }
    }
}

/// What a run produced, as far as the backend can show it.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    pub outcome: &'a Outcome,
    /// The Outcome of a second run of the same case (determinism).
    pub second: Option<&'a Outcome>,
    /// Segments that crossed the underlay between nodes (the simulator's tap).
    pub underlay: Option<&'a [UnderlayPacket]>,
    /// What each running proxy held at the end.
    pub proxies: Option<&'a BTreeMap<String, Resources>>,
}

/// The endpoint a connection's route event names (the CONNECT authority or the passthrough
/// destination).
pub fn routed_endpoint(c: &Connection) -> Option<SocketAddrV4> {
    let route = c.proxy_events.iter().find(|e| e.kind == EventKind::Route)?;
    let mut words = route.detail.split_whitespace();
    match words.next()? {
        "hbone" => {
            let mut rest = words.skip_while(|w| *w != "authority");
            rest.next();
            rest.next()?.parse().ok()
        }
        "passthrough" => words.next()?.parse().ok(),
        _ => None,
    }
}

/// Whether fault point `point` fired for this connection (its events name it).
fn injected(c: &Connection, point: FaultPoint) -> bool {
    let name = format!("({point})");
    // A reset close is described by its side only ("inbound-hbone reset by injected fault",
    // `assemble.rs`): the one fault point that closes a stream with a reset is stream-reset.
    let reset_by = format!("reset by {INJECTED}");
    c.proxy_events.iter().any(|e| {
        e.detail.contains(INJECTED)
            && (e.detail.contains(&name)
                || (point == FaultPoint::StreamReset && e.detail.ends_with(&reset_by)))
    })
}

/// What the oracle expects once the fault points that fired are taken into account. Where
/// the proxy's dial may have completed after the client gave up (`late_dial`), the client's
/// own outcome stays possible beside the fault's.
fn with_injected(mut e: Expect, c: &Connection) -> Expect {
    let by_fault = if injected(c, FaultPoint::DialFails) {
        e.accepted = Tri::MustNot;
        e.identity = Tri::MustNot;
        e.notes.push("fault point dial-fails fired".into());
        [ConnOutcome::Refused].into()
    } else if injected(c, FaultPoint::StreamReset) {
        // The RST_STREAM follows the 200 at once; h2 may hand the source proxy the reset
        // before the response, and then it answers its client as for a refused CONNECT.
        e.accepted = Tri::Either;
        e.identity = Tri::Must;
        e.notes.push("fault point stream-reset fired".into());
        [ConnOutcome::Reset, ConnOutcome::Refused].into()
    } else {
        return e;
    };
    if e.late_dial {
        e.outcomes.extend(by_fault);
    } else {
        e.outcomes = by_fault;
    }
    e
}

fn set<T: fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    format!("{{{}}}", v.join(", "))
}

fn fmt_path(p: Option<PathKind>) -> String {
    p.map_or("null".into(), |p| p.to_string())
}

/// Checks every invariant; violations in a stable order.
pub fn check(world: &World, preds: &[Prediction], ev: Evidence<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let conns = &ev.outcome.connections;
    if conns.len() != preds.len() {
        out.push(Violation {
            invariant: Invariant::Oracle,
            connection: None,
            message: format!(
                "the run reports {} connections, the scenario opens {}",
                conns.len(),
                preds.len()
            ),
        });
        return out;
    }
    let mut ordinal: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, p) in conns.iter().zip(preds) {
        let k = ordinal.entry(&c.id).or_insert(0);
        let name = format!("{}#{k}", c.id);
        *k += 1;
        connection(c, p, &name, &mut out);
    }
    plaintext(world, preds, ev, &mut out);
    quiescence(world, ev, &mut out);
    if let Some(second) = ev.second
        && second.to_json() != ev.outcome.to_json()
    {
        out.push(Violation {
            invariant: Invariant::Determinism,
            connection: None,
            message: first_difference(&ev.outcome.to_json(), &second.to_json()),
        });
    }
    out
}

fn first_difference(a: &str, b: &str) -> String {
    let line = a.lines().zip(b.lines()).position(|(x, y)| x != y).unwrap_or(0);
    let get = |t: &str| t.lines().nth(line).unwrap_or("").trim().to_string();
    format!("the second run's Outcome differs at line {}: {:?} vs {:?}", line + 1, get(a), get(b))
}

fn connection(c: &Connection, p: &Prediction, name: &str, out: &mut Vec<Violation>) {
    let v =
        |inv, message: String| Violation { invariant: inv, connection: Some(name.into()), message };
    // Preservation holds whatever the oracle models.
    if let Some(peer) = c.server_peer
        && peer != p.client_ip
    {
        out.push(v(
            Invariant::Preservation,
            format!("the server app saw {peer} as its peer; the client is {}", p.client_ip),
        ));
    }
    if let Some(id) = &c.server_identity
        && Some(id) != p.client_identity.as_ref()
    {
        let want = p.client_identity.as_deref().unwrap_or("no identity (an uncaptured client)");
        out.push(v(
            Invariant::Preservation,
            format!("the destination proxy authenticated {id}; the client is {want}"),
        ));
    }
    let truncation_allowed = p.for_endpoint(routed_endpoint(c)).is_some_and(|e| e.truncation);
    let err = c.error.as_deref().unwrap_or("");
    let altered = err.contains("differ");
    let truncated = err.starts_with("read back");
    if c.outcome == ConnOutcome::Error && (altered || (truncated && !truncation_allowed)) {
        out.push(v(
            Invariant::Bytes,
            format!(
                "a clean close with wrong bytes (a silent truncation or alteration): {}",
                c.error.as_deref().unwrap_or("")
            ),
        ));
    }
    if p.unmodelled.is_some() {
        if c.outcome == ConnOutcome::Ok && (!c.intact || c.sent != p.send) {
            out.push(v(
                Invariant::Bytes,
                format!("ok, but sent {} of {} bytes, intact {}", c.sent, p.send, c.intact),
            ));
        }
        return;
    }
    let endpoint = routed_endpoint(c);
    let Some(expect) = p.for_endpoint(endpoint) else {
        let want: Vec<String> = p
            .alternatives
            .iter()
            .map(|a| a.endpoint.map_or("no route event".into(), |e| e.to_string()))
            .collect();
        let got = endpoint.map_or("no route event".into(), |e| e.to_string());
        out.push(v(
            Invariant::Preservation,
            format!("routed to {got}; the target is {}", want.join(" or ")),
        ));
        return;
    };
    let e = with_injected(expect.clone(), c);
    let notes =
        if e.notes.is_empty() { String::new() } else { format!(" ({})", e.notes.join("; ")) };
    if !e.outcomes.contains(&c.outcome) {
        out.push(v(
            Invariant::Oracle,
            format!("outcome {}, the oracle expects {}{notes}", c.outcome, set(&e.outcomes)),
        ));
    }
    if !e.paths.contains(&c.path) {
        let want: Vec<String> = e.paths.iter().map(|p| fmt_path(*p)).collect();
        out.push(v(
            Invariant::Oracle,
            format!("path {}, the oracle expects {{{}}}{notes}", fmt_path(c.path), want.join(", ")),
        ));
    }
    if !e.accepted.allows(c.server_peer.is_some()) {
        let what = if c.server_peer.is_some() { "reached" } else { "did not reach" };
        out.push(v(
            Invariant::Oracle,
            format!(
                "it {what} the server app (outcome {}); the oracle says {:?}{notes}",
                c.outcome, e.accepted
            ),
        ));
    }
    if !e.identity.allows(c.server_identity.is_some()) {
        let what = if c.server_identity.is_some() { "authenticated" } else { "not authenticated" };
        out.push(v(
            Invariant::Oracle,
            format!(
                "it was {what} by a destination proxy; the oracle says {:?}{notes}",
                e.identity
            ),
        ));
    }
    if c.path == Some(PathKind::Hbone)
        && let Some(t) = &e.tunnel
        && c.tunnel.as_ref() != Some(t)
    {
        let got = c.tunnel.as_ref().map_or("none".into(), |t| t.to_string());
        out.push(v(Invariant::Oracle, format!("tunnel {got}, expected {t}")));
    }
    let replies = e.ok_replies();
    if c.outcome == ConnOutcome::Ok
        && (c.sent != p.send || !replies.contains(&c.received) || !c.intact)
    {
        out.push(v(
            Invariant::Bytes,
            format!(
                "ok, but sent {}/{} and read back {}/{} bytes (intact {})",
                c.sent,
                p.send,
                c.received,
                replies.iter().map(u64::to_string).collect::<Vec<_>>().join(" or "),
                c.intact
            ),
        ));
    }
}

const WINDOW: usize = 16;

fn plaintext(world: &World, preds: &[Prediction], ev: Evidence<'_>, out: &mut Vec<Violation>) {
    let Some(underlay) = ev.underlay else { return };
    let mut windows: HashSet<[u8; WINDOW]> = HashSet::new();
    let mut owner: Vec<(usize, String)> = Vec::new();
    let mut ordinal: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (c, p)) in ev.outcome.connections.iter().zip(preds).enumerate() {
        let k = ordinal.entry(&c.id).or_insert(0);
        let name = format!("{}#{k}", c.id);
        *k += 1;
        if !p.encrypted_between_nodes || c.sent < WINDOW as u64 {
            continue;
        }
        let mut bytes = vec![0u8; c.sent as usize];
        Payload::new(Payload::key(world.seed, i as u64)).fill(&mut bytes);
        for w in bytes.windows(WINDOW) {
            windows.insert(w.try_into().unwrap_or([0; WINDOW]));
        }
        owner.push((i, name));
    }
    if windows.is_empty() {
        return;
    }
    for pkt in underlay {
        if let Some(w) = pkt.payload.windows(WINDOW).find(|w| windows.contains(*w)) {
            let whose = owner
                .iter()
                .find(|(i, _)| {
                    let c = &ev.outcome.connections[*i];
                    let mut bytes = vec![0u8; c.sent as usize];
                    Payload::new(Payload::key(world.seed, *i as u64)).fill(&mut bytes);
                    bytes.windows(WINDOW).any(|x| x == w)
                })
                .map(|(_, n)| n.clone());
            out.push(Violation {
                invariant: Invariant::Plaintext,
                connection: whose,
                message: format!(
                    "a segment {} -> {} on the underlay {}->{} at {:?} carries the payload in clear",
                    pkt.src, pkt.dst, pkt.from, pkt.to, pkt.at
                ),
            });
            return;
        }
    }
}

/// The case ends with a quiet tail long enough for every timeout but ESTABLISHED's.
fn quiet_tail(world: &World) -> bool {
    matches!(world.steps.last().map(|s| &s.action), Some(Action::Wait(d)) if *d >= Duration::from_secs(20 * 60))
}

/// Whether a fault may lose the packets that would close a connection.
fn disruptive(world: &World) -> bool {
    world.steps.iter().any(|s| {
        matches!(
            &s.action,
            Action::Fault(
                Fault::Partition(_)
                    | Fault::Loss { .. }
                    | Fault::CrashProxy(_)
                    | Fault::RestartProxy(_)
                    | Fault::DeletePod { .. }
                    | Fault::FlushConntrack(_)
            )
        )
    })
}

fn quiescence(world: &World, ev: Evidence<'_>, out: &mut Vec<Violation>) {
    if !quiet_tail(world) {
        return;
    }
    let v =
        |message: String| Violation { invariant: Invariant::Quiescence, connection: None, message };
    if let Some(proxies) = ev.proxies {
        for (node, r) in proxies {
            let held = r.tasks != r.listener_tasks
                || r.busy != 0
                || r.live_connections != 0
                || r.pooled_tunnels != 0;
            if held {
                out.push(v(format!(
                    "proxy@{node} still holds {} tasks beyond its {} listeners, {} live connections, {} busy handlers, {} pooled tunnels",
                    r.tasks.saturating_sub(r.listener_tasks),
                    r.listener_tasks,
                    r.live_connections,
                    r.busy,
                    r.pooled_tunnels
                )));
            }
        }
    }
    let lossy = disruptive(world);
    for (netns, state) in &ev.outcome.end.netns {
        let left: Vec<String> = state
            .conntrack
            .iter()
            .filter(|e| !(lossy && e.state == Some(TcpState::Established)))
            .map(|e| {
                let st = e.state.map_or("-".into(), |s| s.to_string());
                format!("{} {st}", e.orig)
            })
            .collect();
        if !left.is_empty() {
            let why = if lossy { "beyond ESTABLISHED" } else { "after a run without lossy faults" };
            out.push(v(format!(
                "{netns}'s conntrack holds {} entries {why}: {}",
                left.len(),
                left.join("; ")
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_scenarios::outcome::ProxyEvent;

    fn reset_by_fault() -> Connection {
        Connection {
            id: "c1".into(),
            from: "p0.default".into(),
            to: "p3.default:8080".into(),
            outcome: ConnOutcome::Timeout,
            error: None,
            path: Some(PathKind::Hbone),
            sent: 1024,
            received: 0,
            intact: false,
            server_peer: None,
            server_identity: None,
            tunnel: None,
            reused: false,
            proxy_events: vec![ProxyEvent {
                proxy: "node-b".into(),
                kind: EventKind::Error,
                detail: format!("inbound-hbone reset by {INJECTED}"),
            }],
        }
    }

    fn timeout() -> Expect {
        Expect {
            outcomes: [ConnOutcome::Timeout].into(),
            paths: [Some(PathKind::Hbone)].into(),
            accepted: Tri::Either,
            identity: Tri::Either,
            tunnel: None,
            replies: Default::default(),
            truncation: false,
            late_dial: false,
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_fault_point_decides_the_outcome_unless_the_dial_completed_after_the_client_gave_up() {
        let e = with_injected(timeout(), &reset_by_fault());
        assert_eq!(e.outcomes, [ConnOutcome::Reset, ConnOutcome::Refused].into());
        // s39 c132: a heal let the proxy's dial complete after its client's timeout; the
        // stream reset came later.
        let late = with_injected(Expect { late_dial: true, ..timeout() }, &reset_by_fault());
        assert_eq!(
            late.outcomes,
            [ConnOutcome::Reset, ConnOutcome::Refused, ConnOutcome::Timeout].into()
        );
        assert_eq!(late.identity, Tri::Must);
    }
}
