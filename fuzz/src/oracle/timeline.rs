//! The oracle's walk through the steps: the cluster as it stands at each step (pods, policies,
//! proxies up or down, link faults), simulated time as an interval (steps take time the oracle
//! can bound but not know: a connection that times out takes its deadline, one that succeeds
//! a few milliseconds), and background connections that later steps may hit while they hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
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
/// The longest a TCP retransmission waits (Linux's TCP_RTO_MAX): a close lost in a partition
/// is sent again within it after the heal.
const MAX_RTO: Duration = Duration::from_secs(120);
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
    /// The links the connection's own TCP crosses outside a tunnel (inbound plaintext and
    /// direct calls, a passthrough proxy's upstream): a RST ending it there may be lost.
    bare_links: BTreeSet<(String, String)>,
    /// The client's netns label.
    client: String,
    /// The client's node, when the client is a captured pod (its proxy routes it).
    client_proxy: Option<String>,
    /// The app at the destination when the connection started (the alternative's endpoint,
    /// else the target address), if one serves the port.
    app: Option<App>,
    /// The endpoint of the alternative it belongs to (`Alt::endpoint`).
    endpoint: Option<SocketAddrV4>,
    /// How long its client waits at most (hold and deadline).
    patience: Duration,
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

/// A change that lands on one alternative of one live connection.
struct Landed {
    pred: usize,
    alt: usize,
    hit: Hit,
    /// The connection is certainly established and holding when it lands.
    certain: bool,
    /// The app at its destination, and the bytes the client sends it.
    app: Option<App>,
    send: u64,
}

/// What change `c` (described by `what`) leaves `e` allowing.
fn land(e: &mut Expect, what: &str, c: Landed) {
    let Landed { hit, certain, app, send, .. } = c;
    // A change that lands before the connection is certainly authorized may decide it afresh
    // (and then it is all that is known).
    if let Some(m) = hit.merge.filter(|_| !certain) {
        e.outcomes.extend(m.outcomes.iter().copied());
        e.paths.extend(m.paths.iter().copied());
        e.accepted = e.accepted.join(m.accepted);
        e.identity = e.identity.join(m.identity);
        e.replies.extend(m.replies.iter().copied());
        e.notes.push(format!("{what} before it is certainly authorized"));
        return;
    }
    if hit.outcomes.is_empty() {
        return;
    }
    // Otherwise only a connection that reached its app is still open to be hit — a `reset`
    // app's too, which holds it until the client's first bytes — or, for `in_progress`
    // changes, one that may still be connecting.
    let had_ok = e.outcomes.contains(&OkOutcome);
    let open = had_ok || (app == Some(App::Reset) && e.outcomes.contains(&Reset));
    if hit.untie {
        e.accepted = e.accepted.join(Tri::MustNot);
    }
    let connecting = hit.in_progress && (!certain || e.outcomes.contains(&Timeout));
    if !open && !connecting {
        return;
    }
    if connecting {
        // Whether it got as far as the app or the destination proxy is not known.
        e.accepted = e.accepted.join(Tri::MustNot).join(Tri::Must);
        e.identity = e.identity.join(Tri::MustNot).join(Tri::Must);
    }
    // A connection that could not end `ok` does not by surviving the change.
    let outcomes: Vec<ConnOutcome> =
        hit.outcomes.iter().copied().filter(|o| *o != OkOutcome || had_ok).collect();
    let fin = outcomes.contains(&ConnOutcome::Error);
    if fin {
        // (A deleted client's own close, too.)
        // A crashed proxy: the kernel closed its sockets (a FIN may cut the bytes), and it
        // logged no close event, so the Outcome cannot tie the app's accept to the connection
        // (`server_peer` may be null).
        e.truncation = true;
        e.accepted = e.accepted.join(Tri::MustNot);
    }
    if certain {
        e.outcomes.remove(&OkOutcome);
        e.outcomes.extend(outcomes);
        e.notes.push(format!("{what} while it is open"));
    } else {
        e.outcomes.extend(outcomes);
        e.notes.push(format!("{what} while it may be open"));
    }
    if fin && app.is_none_or(|a| a.expected_reply(send) == 0) {
        // That FIN cuts nothing where nothing was to come back (an app that returns nothing,
        // or none at all): the client reads a clean close after its bytes, which is `ok` (0
        // read back).
        e.outcomes.insert(OkOutcome);
        e.replies.insert(0);
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

impl Live {
    /// When repetition `k` may start: at once for a parallel step; for a sequential one, once
    /// the earlier repetitions ended — anywhere from at once (each cut short) to after each
    /// one's hold and deadline.
    fn start_of(&self, k: usize) -> Span {
        match self.connect.repeat {
            Repeat::Parallel(_) => self.start,
            Repeat::Sequential(_) => Span {
                lo: self.start.lo,
                hi: self.start.hi + (self.hold + self.deadline + SLACK) * k as u32,
            },
        }
    }
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
    /// Connections a partition cut while they may have been open: see [`Linger`].
    lingering: Vec<Linger>,
}

/// A connection a partition cut while it may have been open: its client may give up (its
/// close lost in the partition) while the destination proxy still holds its side — until the
/// heal lets a retransmitted close through (`until`; `None` while the partition lasts). A
/// revocation meanwhile (its destination pod deleted, a policy that now denies it) is logged,
/// and the Outcome reports `denied` (a policy decision explains everything, `assemble.rs`).
#[derive(Debug, Clone)]
struct Linger {
    pred: usize,
    alt: usize,
    link: (String, String),
    /// The destination pod and connection attributes (`Touches::rbac`).
    rbac: (ObjectKey, Ipv4Addr, Option<Ident>, Ipv4Addr, u16),
    until: Option<Duration>,
}

/// A proxy's dial across a partitioned link, for one alternative of some predictions.
#[derive(Debug, Clone)]
struct Dial {
    preds: Vec<usize>,
    alt: usize,
    link: (String, String),
    start: Span,
    /// The node of the proxy that dials (the client's).
    node: Option<String>,
    /// For HBONE, the tunnel's key as far as it matters here: the client and the endpoint.
    key: Option<(String, Ipv4Addr)>,
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
        lingering: Vec::new(),
    };
    for step in &world.steps {
        match &step.action {
            Action::Connect(c) => w.connect(c),
            Action::Fault(f) => w.fault(f),
            Action::Wait(d) => {
                w.now.lo += *d;
                w.now.hi += *d;
            }
            // A lookup takes at most its deadline (the fuzzer generates none; a hand-written
            // world may have them).
            Action::Resolve(r) => w.now.hi += r.deadline + SLACK,
            Action::Check(_) => {
                // Settling named background connections takes at most their hold + deadline.
                let longest = w.live.iter().map(|l| l.hold + l.deadline).max().unwrap_or_default();
                w.now.hi += longest + SLACK;
            }
        }
    }
    // The run ends while these dials may still be pending: their routes may never be logged.
    w.unlogged_dials("the run ending", |_| true);
    // Encryption is promised only while every routed alternative left is HBONE between nodes:
    // a change may have routed a connection elsewhere (its destination's address reused by a
    // pod outside the mesh: `passthrough`, in clear). (A captured client's connection without
    // a route event never left its node.)
    for p in &mut w.preds {
        p.encrypted_between_nodes &=
            p.alternatives.iter().filter(|a| a.endpoint.is_some()).all(|a| {
                a.expect.paths.iter().all(|p| *p == Some(PathKind::Hbone))
                    && a.expect.tunnel.as_ref().is_some_and(|t| t.from != t.to)
            });
    }
    w.preds
}

impl Walk<'_> {
    /// Fills in what `alternatives` leaves out of an alternative's touches.
    fn complete(&self, t: &mut Touches, a: &Alt, client: &Client, connect: &Connect) {
        t.client = client.label.clone();
        t.client_proxy = client.node.clone().filter(|_| client.captured);
        let at = a.endpoint.unwrap_or(connect.to.addr);
        t.app = self.app_at(*at.ip(), at.port());
        t.endpoint = a.endpoint;
        t.patience = connect.hold + connect.deadline;
    }

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
                for (t, a) in touches.iter_mut().zip(&alts) {
                    self.complete(t, a, &client, connect);
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
        // How long one connection of a foreground step may take.
        let one_hi = if may_time_out || lossy || pred.unmodelled.is_some() {
            connect.hold + connect.deadline + SLACK
        } else {
            connect.hold + SLACK
        };
        let all_lo = if all_time_out { connect.deadline } else { Duration::ZERO };
        // The dials across a partition this step's connections make, and which of them may
        // join an earlier failing dial of their tunnel (those may end before their deadline).
        let dials_from = |one_lo: Duration| {
            // When repetition k may start (sequential ones once the earlier ones ended).
            let each = if connect.background {
                (Duration::ZERO, connect.hold + connect.deadline + SLACK)
            } else {
                (one_lo, one_hi)
            };
            let now = self.now;
            let start_of = |k: usize| match connect.repeat {
                Repeat::Parallel(_) => now,
                Repeat::Sequential(_) => {
                    Span { lo: now.lo + each.0 * k as u32, hi: now.hi + each.1 * k as u32 }
                }
            };
            let mut dials = Vec::new();
            let mut shared = Vec::new();
            for k in 0..n {
                for (i, (alt, t)) in pred.alternatives.iter().zip(&touches).enumerate() {
                    let proxied = [Some(PathKind::Hbone), Some(PathKind::Passthrough)];
                    if !proxied.iter().any(|p| alt.expect.paths.contains(p)) {
                        continue;
                    }
                    let key = alt
                        .expect
                        .paths
                        .contains(&Some(PathKind::Hbone))
                        .then(|| alt.endpoint.map(|e| (t.client.clone(), *e.ip())))
                        .flatten();
                    let start = start_of(k);
                    for (a, b) in &t.links {
                        if !self.partitioned(a, b) {
                            continue;
                        }
                        let earlier = self.dials.iter().chain(&dials);
                        if joins_failing_dial(earlier, key.as_ref(), start, connect) {
                            shared.push((first + k, i));
                        }
                        dials.push(Dial {
                            preds: vec![first + k],
                            alt: i,
                            link: (a.clone(), b.clone()),
                            start,
                            node: t.client_proxy.clone(),
                            key: key.clone(),
                            rbac: t.rbac.clone(),
                        });
                    }
                }
            }
            (dials, shared)
        };
        // A repetition that may join a failing dial may be refused when it fails, before its
        // own deadline: then no repetition certainly takes its deadline, and later ones may
        // start (and the next step come) that much earlier.
        let (mut one_lo, (mut dials, mut shared)) = (all_lo, dials_from(all_lo));
        if !shared.is_empty() && !one_lo.is_zero() {
            one_lo = Duration::ZERO;
            (dials, shared) = dials_from(one_lo);
        }
        self.dials.append(&mut dials);
        for _ in 0..n {
            self.preds.push(pred.clone());
        }
        for (p, i) in shared {
            if let Some(alt) = self.preds[p].alternatives.get_mut(i) {
                let why =
                    "an earlier dial of its tunnel, pending across the partition, fails first";
                alt.expect.widen(&[Refused, Reset], why.into());
            }
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
        let establish = self.establish();
        for live in &self.live {
            for (k, &p) in live.preds.iter().enumerate() {
                let start = live.start_of(k);
                // Certainly over: past its hold and deadline (with slack).
                if at.lo > start.hi + live.hold + live.deadline + SLACK {
                    continue;
                }
                // Certainly established and still holding.
                let certain = at.lo >= start.hi + establish && at.hi + SLACK < start.lo + live.hold;
                for t in &live.touches {
                    let Some(i) = self.alt_index(p, t.endpoint) else { continue };
                    if let Some(hit) = hit(self, t) {
                        let send = self.preds[p].send;
                        changes.push(Landed { pred: p, alt: i, hit, certain, app: t.app, send });
                    }
                }
            }
        }
        for c in changes {
            let Some(alt) = self.preds[c.pred].alternatives.get_mut(c.alt) else { continue };
            land(&mut alt.expect, what, c);
        }
    }

    fn fault(&mut self, f: &Fault) {
        // Settling after a fault may wait for packets held on a link.
        self.now.hi += Duration::from_millis(500);
        self.change(f);
        // A live connection that may still be connecting (or a later repetition that may
        // not have started) may meet the cluster as the change left it.
        self.afresh(&f.to_string(), |_| true);
    }

    /// The cluster after `f`, and what `f` does to the live connections it hits.
    fn change(&mut self, f: &Fault) {
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
                self.linger(&k);
            }
            Fault::Heal(which) => {
                let now = self.now;
                let keys: Vec<(String, String)> = match which {
                    Some(l) => vec![link_key(&l.a, &l.b)],
                    None => self.links.keys().cloned().collect(),
                };
                self.heal_dials(&keys);
                for l in &mut self.lingering {
                    if l.until.is_none() && keys.contains(&l.link) {
                        l.until = Some(now.hi + MAX_RTO + SLACK);
                    }
                }
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
            }
            Fault::Latency { .. } => {}
            Fault::Loss { link, rate } => {
                let k = link_key(&link.a, &link.b);
                let l = self.links.entry(k.clone()).or_default();
                l.lossy = *rate > 0.0;
                if *rate > 0.0 {
                    // A `reset` app holding a connection across the link resets it later: that
                    // RST may be lost (`Expect::allow_lost_rst`).
                    self.hit_live("loss on its link", |_, t| {
                        (t.bare_links.contains(&k) && t.app == Some(App::Reset))
                            .then(|| Hit::open(vec![Timeout]))
                            .flatten()
                    });
                }
            }
            Fault::RestartProxy(node) | Fault::CrashProxy(node) => {
                let now = self.now;
                for ((a, b), link) in self.links.iter_mut() {
                    if (a == node || b == node) && (link.partitioned || link.lossy) {
                        link.stale_risk = true;
                        link.disturbed_until = link.disturbed_until.max(now.hi + STALE_WINDOW);
                    }
                }
                let crash = matches!(f, Fault::CrashProxy(_));
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
                self.unlogged_dials(&format!("proxy@{node} stopping"), |d| {
                    d.node.as_deref() == Some(node.as_str())
                });
                self.down.insert(node.clone());
                if !crash {
                    // A SYN may arrive between the crash and the start.
                    self.afresh(&format!("proxy@{node} restarting"), |t| t.proxies.contains(node));
                    self.down.remove(node);
                }
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
                    if !t.netns.contains(&label) {
                        return None;
                    }
                    // Also while it may still be connecting: a proxy's dial from the flushed
                    // namespace (a TLS handshake held back) may stall until its connect
                    // timeout, and the client, still waiting, is refused.
                    let mut outcomes = vec![OkOutcome, Reset, Timeout];
                    if t.client_proxy.is_some() && t.patience >= PROXY_CONNECT_TIMEOUT {
                        outcomes.push(Refused);
                    }
                    Some(Hit { outcomes, in_progress: true, merge: None, untie: false })
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
                        (t.netns.contains(&label) && t.client != label).then_some(hit)
                    });
                    self.deleted_while_connecting(&label);
                    let key = pod.clone();
                    self.revoke_lingering(&format!("deleting {label}"), |_, (k, ..)| *k == key);
                    self.killed_with_pod(&label);
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
                self.revoke_lingering(
                    &format!("{what} (denies it)"),
                    |w, (key, src, id, _, port)| {
                        w.pods.get(key).is_some_and(|dst| !w.allowed(dst, *src, id.as_ref(), *port))
                    },
                );
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
                e.late_dial = true;
                e.notes.push("a heal while its proxy may still be dialing".into());
            }
        }
    }

    /// A change lands while a live (background) connection it touches may still be
    /// connecting — within its establishment, or its deadline where it may time out (its
    /// client's SYN retransmissions, or its proxy's dial): it may then meet the cluster as the
    /// change leaves it (a heal: as if there had been no partition; a proxy stopping: as if it
    /// had been down when it started). What it would do is predicted afresh, now, and joins
    /// what was expected, per alternative by endpoint (a fresh one without a route event is
    /// added as such).
    fn afresh(&mut self, what: &str, touched: impl Fn(&Touches) -> bool) {
        let mut changes: Vec<(usize, usize, Alt, Touches)> = Vec::new();
        for (li, live) in self.live.iter().enumerate() {
            if !live.touches.iter().any(&touched) {
                continue;
            }
            let Ok((client, alts)) = self.alternatives(&live.connect) else { continue };
            for (k, &p) in live.preds.iter().enumerate() {
                if !self.may_be_connecting(live, k) {
                    continue;
                }
                for (a, mut t) in alts.iter().cloned() {
                    self.complete(&mut t, &a, &client, &live.connect);
                    changes.push((li, p, a, t));
                }
            }
        }
        for (li, p, new, t) in changes {
            let alts = &mut self.preds[p].alternatives;
            let mut n = new.expect;
            n.notes.push(format!("{what} while it may still be connecting"));
            match alts.iter_mut().find(|a| a.endpoint == new.endpoint) {
                Some(alt) => join(&mut alt.expect, n),
                None if new.endpoint.is_none() => add_unrouted(alts, n),
                // A new endpoint (a Service's pod added): routed there, it is a new
                // alternative, and what later changes do to it goes by its touches.
                None => {
                    alts.push(Alt { endpoint: new.endpoint, expect: n });
                    let live = &mut self.live[li];
                    if !live.touches.iter().any(|x| x.endpoint == t.endpoint) {
                        live.touches.push(t);
                    }
                }
            }
        }
    }

    /// The index of prediction `p`'s alternative for `endpoint`.
    fn alt_index(&self, p: usize, endpoint: Option<SocketAddrV4>) -> Option<usize> {
        self.preds[p].alternatives.iter().position(|a| a.endpoint == endpoint)
    }

    /// Whether repetition `k` of `live` may still be connecting now: within its establishment,
    /// or within its deadline where it may time out.
    fn may_be_connecting(&self, live: &Live, k: usize) -> bool {
        let Some(p) = live.preds.get(k).map(|&i| &self.preds[i]) else { return false };
        let may_time_out = p.alternatives.iter().any(|a| a.expect.outcomes.contains(&Timeout));
        let connecting = if may_time_out { live.deadline + SLACK } else { self.establish() };
        self.now.lo <= live.start_of(k).hi + connecting
    }

    /// The live connections a partition of `link` cuts while they may be open (not certainly
    /// over), and whose destination proxy authorizes them, linger (see [`Linger`]).
    fn linger(&mut self, link: &(String, String)) {
        let at = self.now;
        let mut cut = Vec::new();
        for live in &self.live {
            for (k, &p) in live.preds.iter().enumerate() {
                if at.lo > live.start_of(k).hi + live.hold + live.deadline + SLACK {
                    continue;
                }
                for t in &live.touches {
                    let Some(rbac) = t.rbac.clone().filter(|_| t.links.contains(link)) else {
                        continue;
                    };
                    let Some(alt) = self.alt_index(p, t.endpoint) else { continue };
                    cut.push(Linger { pred: p, alt, link: link.clone(), rbac, until: None });
                }
            }
        }
        self.lingering.extend(cut);
    }

    /// A revocation lands: the lingering connections it revokes (`revokes`, given the
    /// destination and connection attributes) may be reported `denied`.
    fn revoke_lingering(
        &mut self,
        what: &str,
        revokes: impl Fn(&Self, &(ObjectKey, Ipv4Addr, Option<Ident>, Ipv4Addr, u16)) -> bool,
    ) {
        let at = self.now;
        let hit: Vec<(usize, usize)> = self
            .lingering
            .iter()
            .filter(|l| l.until.is_none_or(|u| at.lo <= u) && revokes(self, &l.rbac))
            .map(|l| (l.pred, l.alt))
            .collect();
        for (p, i) in hit {
            let Some(alt) = self.preds[p].alternatives.get_mut(i) else { continue };
            alt.expect.outcomes.insert(Denied);
            alt.expect.notes.push(format!("{what} while its far end may linger after a partition"));
        }
    }

    /// Pod `label` is deleted while a live connection to it may still be connecting: the
    /// connection may meet the deletion. The pod has left the mesh (a captured client's proxy
    /// now routes its address `passthrough`, or finds the HBONE dial refused), and nothing in
    /// it accepts any more: `refused` (its listeners close before its network goes, a RST) or
    /// `timeout` (once it is gone, nothing answers). Nothing was accepted or authenticated.
    fn deleted_while_connecting(&mut self, label: &str) {
        let mut changes: Vec<(usize, Option<SocketAddrV4>, Option<PathKind>)> = Vec::new();
        for live in &self.live {
            for t in &live.touches {
                if !t.netns.contains(label) || t.client == label {
                    continue;
                }
                let path = if t.client_proxy.is_some() {
                    Some(PathKind::Passthrough)
                } else {
                    unrouted_path(Unrouted::SynLeft)
                };
                for (k, &p) in live.preds.iter().enumerate() {
                    if self.may_be_connecting(live, k) {
                        changes.push((p, t.endpoint, path));
                    }
                }
            }
        }
        for (p, endpoint, path) in changes {
            let Some(i) = self.alt_index(p, endpoint) else { continue };
            let alt = &mut self.preds[p].alternatives[i];
            let mut n = Expect::one(Refused, path, Tri::MustNot, Tri::MustNot);
            n.outcomes.insert(Timeout);
            n.notes.push(format!("deleting {label} while it may still be connecting"));
            join(&mut alt.expect, n);
        }
    }

    /// Pod `label` is deleted: its own clients die with it (the pod's containers stop before
    /// its network goes). A connection of theirs that may still run — or, a later repetition,
    /// not have started — reports the killed client (`error`, `ClientReport::killed`): nothing
    /// counted, whatever path its address ties it to (none if it never connected), the app
    /// and the destination proxy reached or not.
    fn killed_with_pod(&mut self, label: &str) {
        let at = self.now;
        let mut killed = Vec::new();
        for live in &self.live {
            if live.touches.first().is_none_or(|t| t.client != label) {
                continue;
            }
            for (k, &p) in live.preds.iter().enumerate() {
                if at.lo <= live.start_of(k).hi + live.hold + live.deadline + SLACK {
                    killed.push(p);
                }
            }
        }
        for p in killed {
            let note = format!("its client died with {label}");
            for alt in &mut self.preds[p].alternatives {
                let e = &mut alt.expect;
                e.outcomes.insert(ConnOutcome::Error);
                e.paths.insert(unrouted_path(Unrouted::SynLeft));
                e.accepted = e.accepted.join(Tri::MustNot).join(Tri::Must);
                e.identity = e.identity.join(Tri::MustNot).join(Tri::Must);
                e.notes.push(note.clone());
            }
            let mut e = Expect::one(ConnOutcome::Error, None, Tri::Either, Tri::Either);
            e.paths.insert(unrouted_path(Unrouted::SynLeft));
            e.notes.push(note);
            add_unrouted(&mut self.preds[p].alternatives, e);
        }
    }

    /// HBONE dials chosen by `which` that may still be pending at a proxy's stop or at the end
    /// of the run: the proxy logs an HBONE route only once its dial ends, so there may be no
    /// route event — an unrouted alternative, `direct` (the client reached 15001), no app or
    /// destination proxy reached, with the outcomes the client may see meanwhile. Dials of a
    /// stopped proxy end with it.
    fn unlogged_dials(&mut self, what: &str, which: impl Fn(&Dial) -> bool) {
        let at = self.now;
        let (cut, keep): (Vec<Dial>, Vec<Dial>) =
            std::mem::take(&mut self.dials).into_iter().partition(|d| which(d));
        self.dials = keep;
        for d in cut {
            if at.lo > d.start.hi + PROXY_CONNECT_TIMEOUT + SLACK {
                continue;
            }
            for &p in &d.preds {
                let Some(alt) = self.preds[p].alternatives.get(d.alt) else { continue };
                if !alt.expect.paths.contains(&Some(PathKind::Hbone)) {
                    continue;
                }
                let mut e = alt.expect.clone();
                e.paths = [unrouted_path(Unrouted::SynLeft)].into();
                e.accepted = Tri::MustNot;
                e.identity = Tri::MustNot;
                e.tunnel = None;
                e.notes.push(format!("{what} while its proxy may still be dialing"));
                add_unrouted(&mut self.preds[p].alternatives, e);
            }
        }
    }

    fn crash_while_dialing(&mut self, node: &str) {
        let at = self.now;
        let establish = self.establish();
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
            let nothing_back = l
                .touches
                .iter()
                .all(|t| t.allowed.as_ref().is_none_or(|a| a.ok_replies() == [0].into()))
                && hbone.iter().all(|a| a.expect.ok_replies() == [0].into());
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

    /// How long establishing a connection may take.
    fn establish(&self) -> Duration {
        if self.fault_points { ESTABLISH } else { SLACK / 4 }
    }

    fn clone_policies(&self) -> Vec<PolicyObject> {
        self.policies.values().cloned().collect()
    }
}

/// Whether an HBONE connection starting at `start` whose tunnel key is `key` (its client and
/// endpoint) across a partition may join a dial of that key already pending among `dials` (the
/// pool dials once per key), which fails at its own 10 s connect timeout — before this
/// connection gives up: then it ends `refused` (503) or `reset` too.
fn joins_failing_dial<'a>(
    dials: impl IntoIterator<Item = &'a Dial>,
    key: Option<&(String, Ipv4Addr)>,
    start: Span,
    connect: &Connect,
) -> bool {
    let Some(key) = key else { return false };
    dials.into_iter().any(|d| {
        d.key.as_ref() == Some(key)
            && d.start.hi + PROXY_CONNECT_TIMEOUT + SLACK >= start.lo
            && d.start.lo + PROXY_CONNECT_TIMEOUT <= start.hi + connect.hold + connect.deadline
    })
}

/// Adds `e` as the alternative without a route event, or joins it to the one there is.
fn add_unrouted(alts: &mut Vec<Alt>, e: Expect) {
    match alts.iter_mut().find(|a| a.endpoint.is_none()) {
        Some(a) => join(&mut a.expect, e),
        None => alts.push(Alt { endpoint: None, expect: e }),
    }
}

/// `e` also allows what `n` allows (replies too: an `ok` may read back what either app
/// returns — after a heal, the echo a connection that could only time out would not have
/// read; after an address is reused, the new pod's app's).
fn join(e: &mut Expect, n: Expect) {
    e.replies.extend(n.replies);
    e.outcomes.extend(n.outcomes);
    e.paths.extend(n.paths);
    e.accepted = e.accepted.join(n.accepted);
    e.identity = e.identity.join(n.identity);
    e.truncation |= n.truncation;
    e.late_dial |= n.late_dial;
    if e.tunnel.is_none() {
        e.tunnel = n.tunnel;
    }
    e.notes.extend(n.notes);
}

#[cfg(test)]
mod tests;
