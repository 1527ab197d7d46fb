//! A connection's packet lifecycle as a Mermaid `sequenceDiagram`, derived from the [`World`]
//! (who is captured, on which node, the pods' rule sets) and the Outcome's [`Connection`] (its
//! path, the proxies' decisions, what the server app saw, how it ended).
//!
//! Participants, as the path needs them: the client app → the client pod's netns (its hooks) →
//! the source proxy (its in-pod sockets) → the HBONE tunnel → the destination proxy → the server
//! pod's netns → the server app. The first packet's story names the rules it meets, by position
//! in the pod's own rule set (`Capture::rule_positions`), e.g. `nat OUTPUT rule 1 → ISTIO_OUTPUT
//! rule 6: REDIRECT → 127.0.0.1:15001`; later packets skip the nat table (conntrack ESTABLISHED).
//! A denied, refused or reset connection stops where the Outcome says it stopped.
//!
//! What the diagram shows is what the rules and the proxy's design say happens to such a
//! connection, annotated with what the Outcome observed (decisions, identities, the peer the app
//! saw, bytes); it is not a packet trace (that is `--pcap` / `--trace`).
//!
//! Simplifications: the destination pod is found by address (the route decision's authority or
//! passthrough endpoint, else the target), among the pods at the start and those `add-pod`
//! creates; an address that `add-pod` reuses is attributed to the first pod that had it.
//!
//! Every piece of text goes through [`escape`]: Mermaid ends a statement at `;` and reads `#`
//! as the start of an entity code, and GitHub's renderer strips what looks like HTML.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use ambient_proxy::inpod::{
    CONNMARK, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_PORT, PROXY_MARK,
    ROUTE_TABLE,
};

use ambient_scenarios::outcome::{ConnOutcome, Connection, EventKind, PathKind, ProxyEvent};
use ambient_scenarios::values::Table;
use ambient_scenarios::world::{Action, Connect, Dest, Fault, Pod, World};
use rules::{find, redirect};

mod rules;

/// The participants, in the order they are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum P {
    ClientApp,
    ClientNetns,
    SourceProxy,
    Tunnel,
    DestProxy,
    ServerNetns,
    ServerApp,
}

impl P {
    const ALL: [P; 7] = [
        P::ClientApp,
        P::ClientNetns,
        P::SourceProxy,
        P::Tunnel,
        P::DestProxy,
        P::ServerNetns,
        P::ServerApp,
    ];

    fn id(self) -> &'static str {
        match self {
            P::ClientApp => "capp",
            P::ClientNetns => "cnet",
            P::SourceProxy => "sproxy",
            P::Tunnel => "tunnel",
            P::DestProxy => "dproxy",
            P::ServerNetns => "snet",
            P::ServerApp => "sapp",
        }
    }
}

/// Makes text safe inside a Mermaid sequence diagram statement (message, note, alias): the
/// characters Mermaid or GitHub's sanitiser would act on become entity codes, line breaks spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ';' => out.push_str("#59;"),
            '#' => out.push_str("#35;"),
            '%' => out.push_str("#37;"),
            '&' => out.push_str("#38;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '{' => out.push_str("#123;"),
            '}' => out.push_str("#125;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A message or note: escaped, each ` · `-separated part on a line of its own (Mermaid does not
/// wrap; `<br/>` is its line break).
fn label(text: &str) -> String {
    escape(text).replace(" · ", "<br/>")
}

/// Which of a connection's proxy events: the source proxy's (route, pool, outbound errors), the
/// destination proxy's (verdicts, inbound errors), or a part of the latter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Events {
    Source,
    Destination,
    Verdicts,
    DestinationErrors,
}

/// Where a connection went, as far as the World and the route decision tell.
#[derive(Debug, Clone)]
struct Destination<'a> {
    /// The address the server app listens on (after Service port mapping).
    addr: Option<SocketAddrV4>,
    /// `server.default`, `web`, or the bare address.
    label: String,
    pod: Option<&'a Pod>,
}

/// The diagram of one connection of a connect step.
pub fn diagram(world: &World, connect: &Connect, conn: &Connection) -> String {
    let mut d = Diagram::new(world, connect, conn);
    match conn.path {
        Some(PathKind::Hbone) => d.hbone(),
        Some(PathKind::Passthrough) => d.passthrough(),
        Some(PathKind::InboundPlaintext) => d.inbound_plaintext(),
        Some(PathKind::Direct) | None => d.unproxied(),
    }
    d.finish()
}

struct Diagram<'a> {
    conn: &'a Connection,
    target: SocketAddrV4,
    client_label: String,
    client_ip: Ipv4Addr,
    client_pod: Option<&'a Pod>,
    dest: Destination<'a>,
    /// The route decision's text, if the source proxy logged one.
    route: Option<&'a ProxyEvent>,
    lines: Vec<String>,
    used: Vec<P>,
    /// Participants are drawn in this order (the server's hooks come before its proxy when the
    /// client's packets are redirected there, after it when they arrive through the tunnel).
    order: [P; 7],
}

/// Every pod the World knows: those at the start and those `add-pod` creates.
fn pods(world: &World) -> impl Iterator<Item = &Pod> {
    let added = world.steps.iter().filter_map(|s| match &s.action {
        Action::Fault(Fault::AddPod { pod, .. }) => Some(&**pod),
        _ => None,
    });
    world.pods.values().chain(added)
}

/// The `ip:port` after `word ` in an event's detail (`authority 10.0.2.2:8080`).
fn addr_after(detail: &str, word: &str) -> Option<SocketAddrV4> {
    let rest = &detail[detail.find(word)? + word.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

impl<'a> Diagram<'a> {
    fn new(world: &'a World, connect: &'a Connect, conn: &'a Connection) -> Self {
        let client_pod = match &connect.from.kind {
            ambient_scenarios::world::PeerKind::Pod(key) => pods(world).find(|p| p.key == *key),
            ambient_scenarios::world::PeerKind::External(_) => None,
        };
        let route = conn.proxy_events.iter().find(|e| e.kind == EventKind::Route);
        let routed = route.and_then(|e| {
            addr_after(&e.detail, "authority ").or_else(|| addr_after(&e.detail, "passthrough "))
        });
        let addr = routed.or(match &connect.to.dest {
            Dest::Service { key, port } => world
                .services
                .get(key)
                .filter(|s| s.endpoints.len() == 1)
                .and_then(|s| pods(world).find(|p| p.key == s.endpoints[0]))
                .map(|p| SocketAddrV4::new(p.ip, port.target_port)),
            _ => Some(connect.to.addr),
        });
        let pod = addr.and_then(|a| pods(world).find(|p| p.ip == *a.ip()));
        let host = addr.and_then(|a| world.external.values().find(|h| h.ip == *a.ip()));
        let label = match (pod, host, addr) {
            (Some(p), _, _) => p.label(),
            (None, Some(h), _) => h.name.clone(),
            (None, None, Some(a)) => a.ip().to_string(),
            (None, None, None) => connect.to.label.clone(),
        };
        Diagram {
            conn,
            target: connect.to.addr,
            client_label: connect.from.label(),
            client_ip: connect.from.ip,
            client_pod,
            dest: Destination { addr, label, pod },
            route,
            lines: Vec::new(),
            used: Vec::new(),
            order: P::ALL,
        }
    }

    fn alias(&self, p: P) -> String {
        let node = |pod: Option<&Pod>| pod.map_or_else(|| "?".to_string(), |p| p.node.clone());
        match p {
            P::ClientApp => format!("{} app", self.client_label),
            P::ClientNetns => format!("{} netns {} (hooks)", self.client_label, self.client_ip),
            P::SourceProxy => {
                format!("proxy@{} (in {})", node(self.client_pod), self.client_label)
            }
            P::Tunnel => match &self.conn.tunnel {
                Some(t) => format!("HBONE tunnel {t}"),
                None => "HBONE tunnel".to_string(),
            },
            P::DestProxy => format!("proxy@{} (in {})", node(self.dest.pod), self.dest.label),
            P::ServerNetns => match self.dest.pod {
                Some(pod) => format!("{} netns {} (hooks)", pod.label(), pod.ip),
                None => format!("{} netns (hooks)", self.dest.label),
            },
            P::ServerApp => match self.dest.addr {
                Some(a) => format!("{} app :{}", self.dest.label, a.port()),
                None => format!("{} app", self.dest.label),
            },
        }
    }

    fn touch(&mut self, p: P) {
        if !self.used.contains(&p) {
            self.used.push(p);
        }
    }

    fn msg(&mut self, from: P, arrow: &str, to: P, text: &str) {
        self.touch(from);
        self.touch(to);
        self.lines.push(format!("    {}{arrow}{}: {}", from.id(), to.id(), label(text)));
    }

    fn note(&mut self, over: &[P], text: &str) {
        for p in over {
            self.touch(*p);
        }
        let ids: Vec<&str> = over.iter().map(|p| p.id()).collect();
        self.lines.push(format!("    Note over {}: {}", ids.join(","), label(text)));
    }

    fn finish(self) -> String {
        let mut out = String::from("sequenceDiagram\n");
        for p in self.order.iter().filter(|p| self.used.contains(p)) {
            let _ = writeln!(out, "    participant {} as {}", p.id(), escape(&self.alias(*p)));
        }
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    fn app_addr(&self) -> String {
        self.dest.addr.map_or_else(|| self.target.to_string(), |a| a.to_string())
    }

    fn proxy_events(&self, which: Events) -> Vec<&'a ProxyEvent> {
        self.conn
            .proxy_events
            .iter()
            .filter(|e| {
                let source = matches!(e.kind, EventKind::Route | EventKind::Pool)
                    || (e.kind == EventKind::Error && e.detail.starts_with("outbound"));
                match which {
                    Events::Source => source,
                    Events::Destination => !source,
                    Events::Verdicts => e.kind == EventKind::Rbac,
                    Events::DestinationErrors => !source && e.kind != EventKind::Rbac,
                }
            })
            .collect()
    }

    fn event_notes(&mut self, over: P, which: Events) -> usize {
        let events = self.proxy_events(which);
        for e in &events {
            let text = format!("proxy@{} {} · {}", e.proxy, kind_word(e.kind), e.detail);
            self.note(&[over], &text);
        }
        events.len()
    }

    /// The destination proxy allowed it (its RBAC verdict says `allow`).
    fn allowed(&self) -> Option<bool> {
        let verdict = self.proxy_events(Events::Verdicts).into_iter().next_back();
        verdict.map(|e| e.detail.starts_with("allow"))
    }

    fn connected(&self) -> bool {
        !matches!(self.conn.outcome, ConnOutcome::Refused | ConnOutcome::Timeout)
    }

    /// The client app's first packet, through its captured netns to the outbound listener.
    fn captured_first_packet(&mut self) {
        let syn = format!("SYN {}:* → {} (first packet)", self.client_ip, self.target);
        self.msg(P::ClientApp, "->>", P::ClientNetns, &syn);
        let capture = self.client_pod.and_then(|p| p.capture.as_ref());
        let redirect = capture
            .and_then(|c| redirect(c, "OUTPUT", "ISTIO_OUTPUT", OUTBOUND_PORT))
            .unwrap_or_else(|| format!("redirected to 127.0.0.1:{OUTBOUND_PORT}"));
        self.note(
            &[P::ClientNetns],
            &format!("{redirect} · conntrack NEW, the NAT is recorded in the entry"),
        );
        let accepted =
            format!("accepted on 127.0.0.1:{OUTBOUND_PORT} · SO_ORIGINAL_DST = {}", self.target);
        self.msg(P::ClientNetns, "->>", P::SourceProxy, &accepted);
    }

    fn later_packets(&mut self, over: &[P]) {
        if self.connected() {
            self.note(
                over,
                "later packets: conntrack ESTABLISHED, nat skipped (the recorded NAT is applied)",
            );
        }
    }

    /// How the client app saw the end, from the participant next to it.
    fn ending(&mut self, from: P) {
        let c = self.conn;
        let (arrow, text) = match c.outcome {
            ConnOutcome::Ok => {
                let intact = if c.intact { "intact" } else { "NOT intact" };
                ("-->>", format!("{} B back ({intact}), clean close · outcome ok", c.received))
            }
            ConnOutcome::Denied => {
                ("--x", format!("closed, {} B back · outcome denied", c.received))
            }
            ConnOutcome::Refused => ("--x", "connection refused · outcome refused".to_string()),
            ConnOutcome::Reset => {
                ("--x", format!("reset after connecting, {} B back · outcome reset", c.received))
            }
            ConnOutcome::Timeout => {
                ("--x", "no answer before the deadline · outcome timeout".into())
            }
            ConnOutcome::Error => {
                ("--x", format!("outcome error: {}", c.error.as_deref().unwrap_or("no message")))
            }
        };
        self.msg(from, arrow, P::ClientApp, &text);
    }

    /// From the destination proxy's verdict to the app and back (hbone: through the tunnel;
    /// inbound-plaintext: straight back to the client). The destination's errors are noted
    /// where it learnt of them: after the verdict, the failed connect, or the app's end.
    fn destination_side(&mut self, back: P) {
        self.event_notes(P::DestProxy, Events::Verdicts);
        if self.allowed() == Some(false) {
            self.event_notes(P::DestProxy, Events::DestinationErrors);
            if back == P::Tunnel {
                self.msg(P::DestProxy, "--x", P::Tunnel, "401 Unauthorized (RBAC denied)");
                self.msg(P::Tunnel, "--x", P::SourceProxy, "401: the stream is refused");
            }
            return;
        }
        if self.allowed().is_none() && self.conn.server_peer.is_none() {
            self.event_notes(P::DestProxy, Events::DestinationErrors);
            return;
        }
        let src_ip = self.conn.server_peer.unwrap_or(self.client_ip);
        let syn = format!(
            "SYN {src_ip}:* → {} · IP_TRANSPARENT (the client's IP as source), SO_MARK 0x{PROXY_MARK:x}",
            self.app_addr()
        );
        self.msg(P::DestProxy, "->>", P::ServerNetns, &syn);
        let capture = self.dest.pod.and_then(|p| p.capture.as_ref());
        if let Some(rule) =
            capture.and_then(|c| find(c, Table::Mangle, "ISTIO_PRERT", "--set-xmark"))
        {
            self.note(
                &[P::ServerNetns],
                &format!(
                    "mangle PREROUTING → {rule}: mark 0x{PROXY_MARK:x} → connmark 0x{CONNMARK:x}"
                ),
            );
        }
        let Some(peer) = self.conn.server_peer else {
            self.note(&[P::ServerNetns], "no server app accepted it");
            self.event_notes(P::DestProxy, Events::DestinationErrors);
            return;
        };
        self.msg(P::ServerNetns, "->>", P::ServerApp, &format!("accepted · peer {peer}"));
        if self.conn.outcome != ConnOutcome::Ok && self.conn.received == 0 {
            let text = format!("no reply: the connection ends ({})", self.conn.outcome);
            self.msg(P::ServerApp, "--x", P::DestProxy, &text);
            self.event_notes(P::DestProxy, Events::DestinationErrors);
            if back == P::Tunnel {
                self.msg(P::DestProxy, "--x", P::Tunnel, "the CONNECT stream ends");
                self.msg(P::Tunnel, "--x", P::SourceProxy, "the stream ends");
            }
            return;
        }
        let restore = capture
            .and_then(|c| find(c, Table::Mangle, "ISTIO_OUTPUT", "--restore-mark"))
            .map(|r| format!("mangle OUTPUT → {r} restores mark 0x{CONNMARK:x}"))
            .unwrap_or_else(|| format!("connmark 0x{CONNMARK:x} restored as the packet mark"));
        let reply = format!(
            "replies: {restore} · ip rule fwmark 0x{CONNMARK:x}/0x{MARK_MASK:x} → table {ROUTE_TABLE} (local) → the proxy's transparent socket"
        );
        self.msg(P::ServerApp, "-->>", P::DestProxy, &reply);
        self.event_notes(P::DestProxy, Events::DestinationErrors);
        if back == P::Tunnel {
            let text = format!("{} B back on the CONNECT stream", self.conn.received);
            self.msg(P::DestProxy, "-->>", P::Tunnel, &text);
            self.msg(P::Tunnel, "-->>", P::SourceProxy, "bytes back");
        }
    }

    fn hbone(&mut self) {
        self.captured_first_packet();
        self.event_notes(P::SourceProxy, Events::Source);
        if self.route.is_some() {
            let gateway = self.dest.pod.map(|p| p.ip).or(self.dest.addr.map(|a| *a.ip()));
            let gateway =
                gateway.map_or_else(String::new, |g| format!(" to {g}:{INBOUND_HBONE_PORT}"));
            if self.conn.reused {
                self.msg(
                    P::SourceProxy,
                    "->>",
                    P::Tunnel,
                    "a new CONNECT stream on the pooled h2 connection (no handshake)",
                );
            } else {
                let text = format!(
                    "new h2 connection{gateway}: TLS 1.3 mTLS, ALPN h2 · SO_MARK 0x{PROXY_MARK:x}, so the pod's rules let it out"
                );
                self.msg(P::SourceProxy, "->>", P::Tunnel, &text);
            }
            let reached = !self.proxy_events(Events::Destination).is_empty()
                || self.conn.server_peer.is_some();
            if reached {
                let authority = self.app_addr();
                let who = self.conn.server_identity.as_deref().unwrap_or("no verified identity");
                let exempt = self
                    .dest
                    .pod
                    .and_then(|p| p.capture.as_ref())
                    .and_then(|c| {
                        find(
                            c,
                            Table::Nat,
                            "ISTIO_PRERT",
                            &format!("! --dport {INBOUND_HBONE_PORT}"),
                        )
                    })
                    .map(|r| {
                        format!(" · port {INBOUND_HBONE_PORT} is not redirected ({r} excludes it)")
                    })
                    .unwrap_or_default();
                let text = format!("CONNECT {authority} from {who}{exempt}");
                self.msg(P::Tunnel, "->>", P::DestProxy, &text);
                self.destination_side(P::Tunnel);
            } else {
                self.note(&[P::Tunnel], "no event from the destination proxy for this connection");
            }
        }
        self.ending(P::SourceProxy);
        self.later_packets(&[P::ClientApp, P::ClientNetns]);
    }

    fn passthrough(&mut self) {
        self.captured_first_packet();
        self.event_notes(P::SourceProxy, Events::Source);
        if self.route.is_some() {
            let text = format!(
                "plain TCP {}:* → {} · source not spoofed, SO_MARK 0x{PROXY_MARK:x} (not redirected again)",
                self.client_ip,
                self.app_addr()
            );
            self.msg(P::SourceProxy, "->>", P::ServerApp, &text);
            if let Some(peer) = self.conn.server_peer {
                self.msg(
                    P::ServerApp,
                    "-->>",
                    P::SourceProxy,
                    &format!("accepted (peer {peer}), replies"),
                );
            }
        }
        self.ending(P::SourceProxy);
        self.later_packets(&[P::ClientApp, P::ClientNetns]);
    }

    /// The first packet of an uncaptured client, into a captured destination pod.
    fn plaintext_first_packet(&mut self) {
        self.order = [
            P::ClientApp,
            P::ClientNetns,
            P::SourceProxy,
            P::Tunnel,
            P::ServerNetns,
            P::DestProxy,
            P::ServerApp,
        ];
        let syn = format!(
            "SYN {}:* → {} (plain text: the client is not captured)",
            self.client_ip, self.target
        );
        self.msg(P::ClientApp, "->>", P::ServerNetns, &syn);
        let capture = self.dest.pod.and_then(|p| p.capture.as_ref());
        let redirect = capture
            .and_then(|c| redirect(c, "PREROUTING", "ISTIO_PRERT", INBOUND_PLAINTEXT_PORT))
            .unwrap_or_else(|| format!("redirected to port {INBOUND_PLAINTEXT_PORT}"));
        self.note(
            &[P::ServerNetns],
            &format!("{redirect} · conntrack NEW, the NAT is recorded in the entry"),
        );
        let accepted = format!(
            "accepted on port {INBOUND_PLAINTEXT_PORT} · original destination {}",
            self.target
        );
        self.msg(P::ServerNetns, "->>", P::DestProxy, &accepted);
    }

    fn inbound_plaintext(&mut self) {
        self.plaintext_first_packet();
        self.destination_side(P::ClientApp);
        self.ending(P::DestProxy);
        self.later_packets(&[P::ClientApp, P::ServerNetns]);
    }

    /// `direct`, or no path at all: nobody proxied it. If one side is captured anyway, its
    /// proxy should have seen it: say so.
    fn unproxied(&mut self) {
        let node = |p: &Pod| p.node.clone();
        if let Some(pod) = self.client_pod.filter(|p| p.is_captured()) {
            let n = node(pod);
            self.captured_first_packet();
            if self.event_notes(P::SourceProxy, Events::Source) == 0 {
                let text = format!("no event from proxy@{n} for this connection");
                self.note(&[P::SourceProxy], &text);
            }
            self.ending(P::SourceProxy);
        } else if let Some(pod) = self.dest.pod.filter(|p| p.is_captured()) {
            let n = node(pod);
            self.plaintext_first_packet();
            if self.event_notes(P::DestProxy, Events::Destination) == 0 {
                let text = format!("no event from proxy@{n} for this connection");
                self.note(&[P::DestProxy], &text);
            }
            self.ending(P::DestProxy);
        } else {
            let text = format!(
                "SYN {}:* → {} · neither side is captured: no redirect, no proxy",
                self.client_ip, self.target
            );
            self.msg(P::ClientApp, "->>", P::ServerApp, &text);
            if let Some(peer) = self.conn.server_peer {
                self.note(&[P::ServerApp], &format!("accepted · peer {peer}"));
            }
            self.ending(P::ServerApp);
        }
    }
}

fn kind_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Route => "route",
        EventKind::Rbac => "rbac",
        EventKind::Pool => "pool",
        EventKind::Error => "error",
        EventKind::Dns => "dns",
    }
}

#[cfg(test)]
mod tests;
