//! The oracle's walk through the steps: the cluster as it stands at each step (pods, policies,
//! proxies up or down, link faults), simulated time as an interval (steps take time the oracle
//! can bound but not know: a connection that times out takes its deadline, one that succeeds
//! a few milliseconds), and background connections that later steps may hit while they hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ambient_proxy::istio::PolicyObject;
use ambient_scenarios::outcome::{ConnOutcome, PathKind};
use ambient_scenarios::world::{Action, App, Connect, Fault, ObjectKey, Pod, Repeat, World};

mod route;

use super::rbac::{self, Conn, Ident, Workload};
use super::{Alt, Expect, Prediction, Tri, Unrouted, unrouted_path};

use ConnOutcome::{Denied, Ok as OkOutcome, Refused, Reset, Timeout};

/// The proxy's own connect timeout (ProxyConfig default, `ambient-facts.md` does not say; the
/// architecture doc does): a dial across a partition fails after it.
const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive notices a dead tunnel within interval + timeout.
const KEEPALIVE_NOTICES: Duration = Duration::from_secs(40);
/// After a heal (or a crash behind a fault), how long a stale pooled tunnel may linger.
const STALE_WINDOW: Duration = Duration::from_secs(90);
/// Slack for what a step takes beyond its waits and holds (handshakes, latency, settling).
const SLACK: Duration = Duration::from_secs(2);
/// How long establishing a connection may take (TLS held back by a fault point included).
const ESTABLISH: Duration = Duration::from_millis(1500);

/// Simulated time since the start, as bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    lo: Duration,
    hi: Duration,
}

#[derive(Debug, Clone, Default)]
struct Link {
    partitioned: bool,
    lossy: bool,
    partitioned_at: Option<Span>,
    /// A crash happened behind this link's fault: a stale tunnel may outlive the heal.
    stale_risk: bool,
    /// HBONE over this link may meet a stale tunnel until then (upper bound of the time).
    disturbed_until: Duration,
}

/// What a live (background) connection touches, per alternative.
#[derive(Debug, Clone, Default)]
struct Touches {
    proxies: BTreeSet<String>,
    links: BTreeSet<(String, String)>,
    netns: BTreeSet<String>,
    /// Destination pod and connection attributes, for re-checking RBAC on a policy change.
    rbac: Option<(ObjectKey, Ipv4Addr, Option<Ident>, Ipv4Addr, u16)>,
    /// With `rbac`: what the connection does if RBAC allows it (a change that lands before
    /// the connection is certainly authorized may let it through).
    allowed: Option<Expect>,
    /// The client's netns label.
    client: String,
    /// The client's node, when the client is a captured pod (its proxy routes it).
    client_proxy: Option<String>,
}

/// What a change does to a live connection it touches.
struct Hit {
    /// Outcomes it may now end with.
    outcomes: Vec<ConnOutcome>,
    /// It also hits connections that may not have reached their app (still connecting, or
    /// ending otherwise): a captured client's connection to its own proxy is open while that
    /// proxy dials, so a proxy crash or a policy change can land on it.
    in_progress: bool,
    /// The change may decide the connection afresh: these expectations join the old ones.
    merge: Option<Expect>,
    /// The Outcome may no longer tie the server app's accept to the connection.
    untie: bool,
}

impl Hit {
    fn open(outcomes: Vec<ConnOutcome>) -> Option<Hit> {
        Some(Hit { outcomes, in_progress: false, merge: None, untie: false })
    }
}

#[derive(Debug, Clone)]
struct Live {
    /// Index of the prediction (one per repetition).
    preds: Vec<usize>,
    touches: Vec<Touches>,
    start: Span,
    hold: Duration,
    deadline: Duration,
    /// The step, to predict it afresh (a heal while it may still be connecting).
    connect: Connect,
}

/// The client of a connection, resolved.
#[derive(Debug, Clone)]
struct Client {
    label: String,
    ip: Ipv4Addr,
    /// `None` for an external host.
    node: Option<String>,
    captured: bool,
    identity: Option<Ident>,
}

struct Walk<'w> {
    world: &'w World,
    pods: BTreeMap<ObjectKey, Pod>,
    policies: BTreeMap<ObjectKey, PolicyObject>,
    down: BTreeSet<String>,
    links: BTreeMap<(String, String), Link>,
    /// Deleted pods' addresses: a tunnel to them may linger until then.
    stale_ips: BTreeMap<Ipv4Addr, Duration>,
    now: Span,
    live: Vec<Live>,
    preds: Vec<Prediction>,
    fault_points: bool,
    /// HBONE connections that started across a partition: their client's proxy keeps dialing
    /// (SYN retransmissions) until its connect timeout, whatever the client does meanwhile.
    dials: Vec<Dial>,
}

/// A proxy's dial across a partitioned link, for one alternative of some predictions.
#[derive(Debug, Clone)]
struct Dial {
    preds: Vec<usize>,
    alt: usize,
    link: (String, String),
    start: Span,
    /// The destination pod and connection attributes (`Touches::rbac`).
    rbac: Option<(ObjectKey, Ipv4Addr, Option<Ident>, Ipv4Addr, u16)>,
}

fn link_key(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) }
}

fn app_outcome(app: App) -> ConnOutcome {
    match app {
        App::Echo | App::Sink | App::Close => OkOutcome,
        App::Reset => Reset,
    }
}

/// Predictions for every connection `world` opens, in Outcome order. `fault_points`: the run
/// had proxy fault points (a TLS handshake may be held back).
pub fn predict(world: &World, fault_points: bool) -> Vec<Prediction> {
    let mut w = Walk {
        world,
        pods: world.pods.clone(),
        policies: world.policies.iter().map(|p| (p.key.clone(), p.object.clone())).collect(),
        down: BTreeSet::new(),
        links: BTreeMap::new(),
        stale_ips: BTreeMap::new(),
        now: Span { lo: Duration::ZERO, hi: Duration::ZERO },
        live: Vec::new(),
        preds: Vec::new(),
        fault_points,
        dials: Vec::new(),
    };
    for step in &world.steps {
        match &step.action {
            Action::Connect(c) => w.connect(c),
            Action::Fault(f) => w.fault(f),
            Action::Wait(d) => {
                w.now.lo += *d;
                w.now.hi += *d;
            }
            Action::Check(_) => {
                // Settling named background connections takes at most their hold + deadline.
                let longest = w.live.iter().map(|l| l.hold + l.deadline).max().unwrap_or_default();
                w.now.hi += longest + SLACK;
            }
        }
    }
    w.preds
}

impl Walk<'_> {
    fn connect(&mut self, connect: &Connect) {
        let n = connect.repeat.count() as usize;
        let first = self.preds.len();
        let (pred, touches) = match self.alternatives(connect) {
            Ok((client, alts)) => {
                let encrypted = client.captured
                    && !alts.is_empty()
                    && alts.iter().all(|(a, _)| {
                        a.expect.paths.iter().all(|p| *p == Some(PathKind::Hbone))
                            && a.expect.tunnel.as_ref().is_some_and(|t| t.from != t.to)
                    });
                let (alts, mut touches): (Vec<Alt>, Vec<Touches>) = alts.into_iter().unzip();
                for t in &mut touches {
                    t.client = client.label.clone();
                    t.client_proxy = client.node.clone().filter(|_| client.captured);
                }
                let pred = Prediction {
                    id: connect.id.clone(),
                    client_ip: client.ip,
                    client_identity: client.identity.as_ref().map(Ident::uri),
                    send: connect.send,
                    encrypted_between_nodes: encrypted,
                    alternatives: alts,
                    unmodelled: None,
                };
                (pred, touches)
            }
            Err(why) => {
                let pred = Prediction {
                    id: connect.id.clone(),
                    client_ip: connect.from.ip,
                    client_identity: None,
                    send: connect.send,
                    encrypted_between_nodes: false,
                    alternatives: Vec::new(),
                    unmodelled: Some(why),
                };
                (pred, Vec::new())
            }
        };
        let may_time_out = pred.alternatives.iter().any(|a| a.expect.outcomes.contains(&Timeout));
        let all_time_out = !pred.alternatives.is_empty()
            && pred.alternatives.iter().all(|a| a.expect.outcomes == [Timeout].into());
        let lossy = touches.iter().any(|t| t.links.iter().any(|(a, b)| self.lossy(a, b)));
        for (i, (alt, t)) in pred.alternatives.iter().zip(&touches).enumerate() {
            let proxied = [Some(PathKind::Hbone), Some(PathKind::Passthrough)];
            if !proxied.iter().any(|p| alt.expect.paths.contains(p)) {
                continue;
            }
            for (a, b) in &t.links {
                if self.partitioned(a, b) {
                    self.dials.push(Dial {
                        preds: (first..first + n).collect(),
                        alt: i,
                        link: (a.clone(), b.clone()),
                        start: self.now,
                        rbac: t.rbac.clone(),
                    });
                }
            }
        }
        for _ in 0..n {
            self.preds.push(pred.clone());
        }
        if connect.background {
            let live = Live {
                preds: (first..first + n).collect(),
                touches,
                start: self.now,
                hold: connect.hold,
                deadline: connect.deadline,
                connect: connect.clone(),
            };
            self.live.push(live);
            return;
        }
        // A foreground step: its connections end before the next step starts.
        let one_hi = if may_time_out || lossy || pred.unmodelled.is_some() {
            connect.hold + connect.deadline + SLACK
        } else {
            connect.hold + SLACK
        };
        let one_lo = if all_time_out { connect.deadline } else { Duration::ZERO };
        let times = match connect.repeat {
            Repeat::Sequential(k) => k,
            Repeat::Parallel(_) => 1,
        };
        self.now.lo += one_lo * times;
        self.now.hi += one_hi * times;
    }

    /// Applies a change to the live background connections it may hit: `hit` gives, per
    /// alternative's touches, the outcomes the change forces (or `None` if it does not touch it).
    fn hit_live(&mut self, what: &str, hit: impl Fn(&Self, &Touches) -> Option<Hit>) {
        let at = self.now;
        let mut changes = Vec::new();
        for live in &self.live {
            // Certainly over: past its hold and deadline (with slack).
            if at.lo > live.start.hi + live.hold + live.deadline + SLACK {
                continue;
            }
            // Certainly established and still holding.
            let establish = if self.fault_points { ESTABLISH } else { SLACK / 4 };
            let certain =
                at.lo >= live.start.hi + establish && at.hi + SLACK < live.start.lo + live.hold;
            for (i, t) in live.touches.iter().enumerate() {
                if let Some(h) = hit(self, t) {
                    for &p in &live.preds {
                        changes.push((
                            p,
                            i,
                            h.outcomes.clone(),
                            h.in_progress,
                            h.merge.clone(),
                            h.untie,
                            certain,
                        ));
                    }
                }
            }
        }
        for (p, i, outcomes, in_progress, merge, untie, certain) in changes {
            let Some(alt) = self.preds[p].alternatives.get_mut(i) else { continue };
            let e = &mut alt.expect;
            // A change that lands before the connection is certainly authorized may decide it
            // afresh (and then it is all that is known).
            if let Some(m) = merge.filter(|_| !certain) {
                e.outcomes.extend(m.outcomes.iter().copied());
                e.paths.extend(m.paths.iter().copied());
                e.accepted = e.accepted.join(m.accepted);
                e.identity = e.identity.join(m.identity);
                e.reply = m.reply;
                e.notes.push(format!("{what} before it is certainly authorized"));
                continue;
            }
            if outcomes.is_empty() {
                continue;
            }
            if untie {
                e.accepted = e.accepted.join(Tri::MustNot);
            }
            // Otherwise only a connection that reached its app is still open to be hit — or,
            // for `in_progress` changes, one that may still be connecting.
            let open = e.outcomes.contains(&OkOutcome);
            let connecting = in_progress && (!certain || e.outcomes.contains(&Timeout));
            if !open && !connecting {
                continue;
            }
            if connecting {
                // Whether it got as far as the app or the destination proxy is not known.
                e.accepted = e.accepted.join(Tri::MustNot).join(Tri::Must);
                e.identity = e.identity.join(Tri::MustNot).join(Tri::Must);
            }
            let why = format!("{what} while it may be open");
            if outcomes.contains(&ConnOutcome::Error) {
                // (A deleted client's own close, too.)
                // A crashed proxy: the kernel closed its sockets (a FIN may cut the bytes),
                // and it logged no close event, so the Outcome cannot tie the app's accept to
                // the connection (`server_peer` may be null).
                e.truncation = true;
                e.accepted = e.accepted.join(Tri::MustNot);
            }
            if certain {
                e.outcomes.remove(&OkOutcome);
                e.outcomes.extend(outcomes.iter().copied());
                e.notes.push(format!("{what} while it is open"));
            } else {
                e.outcomes.extend(outcomes.iter().copied());
                e.notes.push(why);
            }
        }
    }

    fn fault(&mut self, f: &Fault) {
        // Settling after a fault may wait for packets held on a link.
        self.now.hi += Duration::from_millis(500);
        match f {
            Fault::Partition(l) => {
                let k = link_key(&l.a, &l.b);
                let now = self.now;
                let link = self.links.entry(k.clone()).or_default();
                if !link.partitioned {
                    link.partitioned = true;
                    link.partitioned_at = Some(now);
                }
                self.hit_live("a partition on its link", |_, t| {
                    if t.links.contains(&k) {
                        Hit::open(vec![OkOutcome, Timeout, Reset])
                    } else {
                        None
                    }
                });
            }
            Fault::Heal(which) => {
                let now = self.now;
                let keys: Vec<(String, String)> = match which {
                    Some(l) => vec![link_key(&l.a, &l.b)],
                    None => self.links.keys().cloned().collect(),
                };
                self.heal_dials(&keys);
                let keys_healed = keys.clone();
                for k in keys {
                    let Some(link) = self.links.get_mut(&k) else { continue };
                    if link.partitioned {
                        let long =
                            link.partitioned_at.is_some_and(|p| now.lo >= p.hi + KEEPALIVE_NOTICES);
                        if !long || link.stale_risk {
                            link.disturbed_until = link.disturbed_until.max(now.hi + STALE_WINDOW);
                        }
                    }
                    if link.lossy && link.stale_risk {
                        link.disturbed_until = link.disturbed_until.max(now.hi + STALE_WINDOW);
                    }
                    link.partitioned = false;
                    link.lossy = false;
                    link.partitioned_at = None;
                    link.stale_risk = false;
                }
                self.heal_live(&keys_healed);
            }
            Fault::Latency { .. } => {}
            Fault::Loss { link, rate } => {
                let l = self.links.entry(link_key(&link.a, &link.b)).or_default();
                l.lossy = *rate > 0.0;
            }
            Fault::RestartProxy(node) | Fault::CrashProxy(node) => {
                let now = self.now;
                for ((a, b), link) in self.links.iter_mut() {
                    if (a == node || b == node) && (link.partitioned || link.lossy) {
                        link.stale_risk = true;
                        link.disturbed_until = link.disturbed_until.max(now.hi + STALE_WINDOW);
                    }
                }
                if matches!(f, Fault::CrashProxy(_)) {
                    self.down.insert(node.clone());
                }
                // A repetition of a live background step that starts while its client's own
                // proxy is down is refused before any route: an extra alternative, unrouted.
                let at = self.now;
                let extra: Vec<usize> = self
                    .live
                    .iter()
                    .filter(|l| l.preds.len() > 1)
                    .filter(|l| at.lo <= l.start.hi + (l.hold + l.deadline) * l.preds.len() as u32)
                    .filter(|l| {
                        l.touches.first().is_some_and(|t| t.client_proxy.as_ref() == Some(node))
                    })
                    .flat_map(|l| l.preds.iter().skip(1).copied())
                    .collect();
                for i in extra {
                    // REDIRECTed to the dead 15001: a RST.
                    let path = unrouted_path(Unrouted::SynLeft);
                    let mut e = Expect::one(Refused, path, Tri::MustNot, Tri::MustNot);
                    e.notes.push(format!("started while proxy@{node} was down"));
                    add_unrouted(&mut self.preds[i].alternatives, e);
                }
                self.crash_while_dialing(node);
                let node = node.clone();
                // A connection that starts while it is down (a later repetition of a
                // background step) is refused.
                self.hit_live(&format!("proxy@{node} stopping"), |_, t| {
                    t.proxies.contains(&node).then(|| Hit {
                        outcomes: vec![Reset, ConnOutcome::Error, Refused],
                        in_progress: true,
                        merge: None,
                        untie: true,
                    })
                });
            }
            Fault::StartProxy(node) => {
                self.down.remove(node);
            }
            Fault::FlushConntrack(peer) => {
                let label = peer.label();
                self.hit_live(&format!("flushing {label}'s conntrack"), |_, t| {
                    if t.netns.contains(&label) {
                        Hit::open(vec![OkOutcome, Reset, Timeout])
                    } else {
                        None
                    }
                });
            }
            Fault::DeletePod { pod, .. } => {
                if let Some(p) = self.pods.remove(pod) {
                    self.stale_ips.insert(p.ip, self.now.hi + STALE_WINDOW);
                    let label = p.label();
                    // Its sockets go with it: its apps' processes die and the kernel closes
                    // their sockets with a FIN. A client in it may see its connection closed
                    // (the Outcome then reports what it read so far); a client of a server
                    // app in it reads a clean close that may cut the reply short (`error`,
                    // which it cannot tell from the app's own close). A server app's accept
                    // can no longer be tied to the connection.
                    let key = pod.clone();
                    self.hit_live(&format!("deleting {label}"), |_, t| {
                        let mut outcomes = vec![Reset, Timeout, ConnOutcome::Error];
                        // A captured destination leaving the mesh: its proxy revokes the
                        // connections it authorized (`connection-closed` policy-revoked).
                        if t.rbac.as_ref().is_some_and(|(k, ..)| *k == key) {
                            outcomes.push(Denied);
                        }
                        let hit = Hit { outcomes, in_progress: false, merge: None, untie: true };
                        t.netns.contains(&label).then_some(hit)
                    });
                    // Later repetitions of a background step whose client is gone: whether
                    // each started before the deletion is not known (no route event after).
                    let gone: Vec<usize> = self
                        .live
                        .iter()
                        .filter(|l| l.touches.first().is_some_and(|t| t.client == label))
                        .flat_map(|l| l.preds.iter().skip(1).copied())
                        .collect();
                    for i in gone {
                        self.preds[i].unmodelled =
                            Some(format!("a later repetition whose client {label} was deleted"));
                    }
                }
            }
            Fault::AddPod { pod, .. } => {
                self.pods.insert(pod.key.clone(), (**pod).clone());
            }
            Fault::Apply(_) | Fault::Remove(_) => {
                let before = self.clone_policies();
                match f {
                    Fault::Apply(p) => {
                        self.policies.insert(p.key.clone(), p.object.clone());
                    }
                    Fault::Remove(k) => {
                        self.policies.remove(k);
                    }
                    _ => {}
                }
                let what = match f {
                    Fault::Apply(p) => format!("applying {}", p.key),
                    Fault::Remove(k) => format!("removing {k}"),
                    _ => String::new(),
                };
                self.hit_live(&format!("{what} (changes its verdict)"), |w, t| {
                    let (key, src, id, dst_ip, port) = t.rbac.as_ref()?;
                    let dst = w.pods.get(key)?;
                    let was = {
                        let wl = Workload { namespace: &dst.key.namespace, labels: &dst.labels };
                        let c = Conn {
                            source_ip: *src,
                            identity: id.as_ref(),
                            dest_ip: *dst_ip,
                            dest_port: *port,
                        };
                        let ps: Vec<&PolicyObject> = before.iter().collect();
                        rbac::decide(&ps, wl, &c).0
                    };
                    let now = w.allowed(dst, *src, id.as_ref(), *port);
                    if was == now {
                        return None;
                    }
                    // Before the connection is certainly authorized, the new verdict may be
                    // the one it gets; after, only a revocation ends it.
                    let merge = if now {
                        t.allowed.clone()
                    } else {
                        let mut d = t.allowed.clone()?;
                        d.outcomes = [Denied].into();
                        d.accepted = Tri::MustNot;
                        Some(d)
                    };
                    let outcomes = if now { Vec::new() } else { vec![Denied] };
                    Some(Hit { outcomes, in_progress: false, merge, untie: false })
                });
            }
        }
    }

    /// The client's own proxy at `node` dies while an HBONE connection may still be waiting
    /// for its tunnel: the proxy logs an HBONE route only once it has a tunnel, so there may
    /// be no route event at all. The client, connected to 15001 (`direct`, no proxy events),
    /// reads the dead proxy's FIN — a cut reply, `ok` only where nothing was to come back —
    /// or a reset on its write; no app was reached.
    /// A heal of `links` lands while a proxy may still be dialing across one of them (within
    /// its connect timeout): the dial may then complete after the client gave up — the proxy
    /// forwards what it had read, so the destination proxy authenticates the client and, if
    /// the policies in force then allow it, the app may accept, behind a client that already
    /// saw its `timeout`; if they deny it, the Outcome reports `denied` (a policy decision
    /// explains everything, `assemble.rs`).
    fn heal_dials(&mut self, links: &[(String, String)]) {
        let at = self.now;
        let (now, gone): (Vec<Dial>, Vec<Dial>) =
            std::mem::take(&mut self.dials).into_iter().partition(|d| links.contains(&d.link));
        self.dials = gone;
        for d in now {
            if at.lo > d.start.hi + PROXY_CONNECT_TIMEOUT + SLACK {
                continue;
            }
            let denied = d.rbac.as_ref().is_some_and(|(key, src, id, _, port)| {
                self.pods.get(key).is_some_and(|dst| !self.allowed(dst, *src, id.as_ref(), *port))
            });
            for &p in &d.preds {
                let Some(alt) = self.preds[p].alternatives.get_mut(d.alt) else { continue };
                let e = &mut alt.expect;
                if denied {
                    e.outcomes.insert(Denied);
                } else {
                    e.accepted = e.accepted.join(Tri::Must);
                }
                if e.paths.contains(&Some(PathKind::Hbone)) {
                    e.identity = e.identity.join(Tri::Must);
                }
                e.notes.push("a heal while its proxy may still be dialing".into());
            }
        }
    }

    /// A heal of `links` lands while a background connection across one of them may still be
    /// connecting (its client's SYN retransmissions, or its proxy's dial, within its deadline):
    /// it may then end as it would have without the partition. What it would do is predicted
    /// afresh, now, and joins what was expected (per alternative, by endpoint).
    fn heal_live(&mut self, links: &[(String, String)]) {
        let at = self.now;
        let mut changes: Vec<(usize, Alt)> = Vec::new();
        for live in &self.live {
            if at.lo > live.start.hi + live.deadline + SLACK {
                continue;
            }
            if !live.touches.iter().any(|t| t.links.iter().any(|l| links.contains(l))) {
                continue;
            }
            let Ok((_, alts)) = self.alternatives(&live.connect) else { continue };
            for &p in &live.preds {
                changes.extend(alts.iter().map(|(a, _)| (p, a.clone())));
            }
        }
        for (p, new) in changes {
            let Some(alt) =
                self.preds[p].alternatives.iter_mut().find(|a| a.endpoint == new.endpoint)
            else {
                continue;
            };
            let (e, n) = (&mut alt.expect, new.expect);
            e.outcomes.extend(n.outcomes.iter().copied());
            e.paths.extend(n.paths.iter().copied());
            e.accepted = e.accepted.join(n.accepted);
            e.identity = e.identity.join(n.identity);
            e.truncation |= n.truncation;
            if e.tunnel.is_none() {
                e.tunnel = n.tunnel;
            }
            e.notes.push("a heal while it may still be connecting".into());
        }
    }

    fn crash_while_dialing(&mut self, node: &str) {
        let at = self.now;
        let establish = if self.fault_points { ESTABLISH } else { SLACK / 4 };
        let mut unrouted = Vec::new();
        for l in &self.live {
            let Some(first) = l.touches.first() else { continue };
            if first.client_proxy.as_deref() != Some(node) {
                continue;
            }
            let Some(p) = l.preds.first().map(|&i| &self.preds[i]) else { continue };
            let hbone: Vec<&Alt> =
                p.alternatives.iter().filter(|a| a.expect.tunnel.is_some()).collect();
            if hbone.is_empty() {
                continue;
            }
            // A dial across a partition hangs until the proxy's connect timeout.
            let dial = if hbone.iter().any(|a| a.expect.outcomes.contains(&Timeout)) {
                PROXY_CONNECT_TIMEOUT
            } else {
                establish
            };
            // Sequential repetitions start one after another.
            let last_start = l.start.hi + (l.hold + l.deadline + SLACK) * (l.preds.len() as u32);
            if at.lo > last_start + dial + SLACK {
                continue;
            }
            let nothing_back =
                l.touches.iter().all(|t| t.allowed.as_ref().is_none_or(|a| a.reply == 0))
                    && hbone.iter().all(|a| a.expect.reply == 0);
            unrouted.extend(l.preds.iter().map(|&i| (i, nothing_back)));
        }
        for (i, nothing_back) in unrouted {
            let path = unrouted_path(Unrouted::SynLeft);
            let mut e = Expect::one(ConnOutcome::Error, path, Tri::MustNot, Tri::MustNot);
            e.outcomes.extend([Reset, Refused]);
            if nothing_back {
                e.outcomes.insert(OkOutcome);
            }
            e.truncation = true;
            e.notes.push(format!("proxy@{node} stopping while it may wait for its tunnel"));
            add_unrouted(&mut self.preds[i].alternatives, e);
        }
    }

    fn clone_policies(&self) -> Vec<PolicyObject> {
        self.policies.values().cloned().collect()
    }
}

/// Adds `e` as the alternative without a route event, or joins it to the one there is.
fn add_unrouted(alts: &mut Vec<Alt>, e: Expect) {
    match alts.iter_mut().find(|a| a.endpoint.is_none()) {
        Some(a) => {
            let x = &mut a.expect;
            x.outcomes.extend(e.outcomes);
            x.paths.extend(e.paths);
            x.accepted = x.accepted.join(e.accepted);
            x.identity = x.identity.join(e.identity);
            x.truncation |= e.truncation;
            x.notes.extend(e.notes);
        }
        None => alts.push(Alt { endpoint: None, expect: e }),
    }
}
