//! Real ztunnel as the node proxy of some nodes of a run: one ztunnel process per node, in the
//! node's namespace, with the harness as its CNI node agent ([`crate::ztunnel::agent`]) and the
//! mesh as its local config file ([`crate::ztunnel::config`]).
//!
//! | fault or change | ztunnel |
//! | --- | --- |
//! | start | a new process; the agent accepts its connection and sends the node's captured pods (each with its netns fd), then `SnapshotSent` |
//! | crash | SIGKILL (every socket of it closes, as a crashed process's would), once its output has been quiet for `QUIET` (60 ms): ztunnel writes its log from a thread of its own, so a line about a query or connection it handled just before could otherwise die with it, unwritten |
//! | restart | crash, then start |
//! | add-pod / delete-pod | a ZDS add (with the pod's netns fd) / delete to the pod's node's ztunnel |
//! | a mesh change (add-pod, delete-pod, apply, remove) | ztunnel reads `LOCAL_XDS_PATH` once, at startup: the config is rewritten and every ztunnel restarted. That cuts its live connections and empties its pools, which istiod's xDS push would not do, so the step is reported as skipped with that reason |
//!
//! Files live in the sandbox's private `/run`, one folder per run: the config (`mesh.yaml`),
//! each node agent's socket (`<node>.sock`) and, when the scenario has a DNS server host, the
//! resolv.conf every ztunnel sees as its `/etc/resolv.conf` (`resolv.conf`; see
//! [`crate::ztunnel::process`]).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambient_proxy::events::ProxyEvent;
use ambient_proxy::mesh::MeshSpec;

use crate::netns::Netns;
use crate::ztunnel::access::{self, Context};
use crate::ztunnel::agent::{NodeAgent, PodEntry};
use crate::ztunnel::config;
use crate::ztunnel::process::{self, DnsLaunch, Launch, LogLines, Ztunnel};
use crate::ztunnel::zds::{Request, WorkloadInfo};

/// How long a starting ztunnel may take to connect to its agent and take the snapshot.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one ZDS request may wait for its ack.
const ACK: Duration = Duration::from_secs(15);
/// How long a ztunnel's output must stay unchanged before it is killed (see the module docs).
const QUIET: Duration = Duration::from_millis(60);
/// The longest a kill waits for that.
const QUIET_AT_MOST: Duration = Duration::from_secs(2);
/// Lines of ztunnel's output quoted in an error.
const TAIL: usize = 15;

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A captured pod as ztunnel is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZPod {
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

impl ZPod {
    fn entry(&self) -> PodEntry {
        PodEntry {
            uid: config::workload_uid(&self.namespace, &self.name),
            info: WorkloadInfo {
                name: self.name.clone(),
                namespace: self.namespace.clone(),
                service_account: self.service_account.clone(),
            },
            netns: self.netns.clone(),
        }
    }
}

struct ZNode {
    agent: NodeAgent,
    process: Option<Ztunnel>,
    log: LogLines,
    /// How many lines the node's ztunnels had printed when the last one was killed.
    crashed_at: usize,
}

/// The ztunnels of a run.
pub struct Ztunnels {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    trust_domain: String,
    nodes: BTreeMap<String, ZNode>,
    context: Context,
    /// The DNS proxy's upstream, once written.
    dns: Option<DnsLaunch>,
}

impl std::fmt::Debug for Ztunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running: Vec<&String> =
            self.nodes.iter().filter(|(_, n)| n.process.is_some()).map(|(k, _)| k).collect();
        f.debug_struct("Ztunnels").field("binary", &self.binary).field("running", &running).finish()
    }
}

fn tail(log: &LogLines) -> String {
    let lines = log.lock().unwrap_or_else(|e| e.into_inner());
    let from = lines.len().saturating_sub(TAIL);
    if lines.is_empty() {
        return "(ztunnel printed nothing)".into();
    }
    format!("ztunnel's last lines:\n  {}", lines[from..].join("\n  "))
}

impl Ztunnels {
    /// Nothing runs yet: the run's folder and each node's agent socket are made now.
    pub fn new(binary: &Path, nodes: &[String], trust_domain: &str) -> io::Result<Ztunnels> {
        let dir =
            Path::new("/run/ztunnel").join(format!("run-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let mut map = BTreeMap::new();
        for node in nodes {
            let agent = NodeAgent::listen(&dir.join(format!("{node}.sock")))
                .map_err(|e| io::Error::other(e.to_string()))?;
            map.insert(
                node.clone(),
                ZNode { agent, process: None, log: LogLines::default(), crashed_at: 0 },
            );
        }
        Ok(Ztunnels {
            binary: binary.to_path_buf(),
            config: dir.join("mesh.yaml"),
            dir,
            trust_domain: trust_domain.to_string(),
            nodes: map,
            context: Context::default(),
            dns: None,
        })
    }

    /// Turns the DNS proxy of ztunnels started from now on on, forwarding to `nameserver` (the
    /// scenario's DNS server host), or off.
    pub fn set_nameserver(&mut self, nameserver: Option<Ipv4Addr>) -> io::Result<()> {
        let Some(ip) = nameserver else {
            self.dns = None;
            return Ok(());
        };
        let path = self.dir.join("resolv.conf");
        std::fs::write(&path, process::resolv_conf(ip))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        self.dns = Some(DnsLaunch { nameserver: ip, resolv_conf: path });
        Ok(())
    }

    /// The DNS proxy's upstream, when it is on.
    pub fn nameserver(&self) -> Option<Ipv4Addr> {
        self.dns.as_ref().map(|d| d.nameserver)
    }

    /// Writes the config for `mesh` (read by ztunnels started from now on).
    pub fn write_config(&mut self, mesh: &MeshSpec) -> io::Result<()> {
        let text = config::render(mesh).map_err(|e| io::Error::other(e.to_string()))?;
        self.context.learn(mesh);
        std::fs::write(&self.config, text)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.config.display())))
    }

    pub fn is_running(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.process.is_some())
    }

    fn node(&mut self, node: &str) -> io::Result<&mut ZNode> {
        self.nodes.get_mut(node).ok_or_else(|| io::Error::other(format!("no ztunnel node {node}")))
    }

    /// Starts `node`'s ztunnel in `ns` and hands it `pods` (the config must be written).
    pub fn start(&mut self, node: &str, ns: &Netns, pods: &[ZPod]) -> io::Result<()> {
        let launch = Launch {
            node: node.to_string(),
            uds: self.dir.join(format!("{node}.sock")),
            config: self.config.clone(),
            trust_domain: self.trust_domain.clone(),
            worker_threads: None,
            dns: self.dns.clone(),
        };
        let binary = self.binary.clone();
        let slot = self.node(node)?;
        if slot.process.is_some() {
            return Err(io::Error::other(format!("the ztunnel of {node} is already running")));
        }
        let process = Ztunnel::start(ns, &binary, &launch, slot.log.clone())?;
        slot.process = Some(process);
        let entries: Vec<PodEntry> = pods.iter().map(ZPod::entry).collect();
        if let Err(e) = slot.agent.snapshot(&entries, STARTUP) {
            let exited = slot.process.as_mut().and_then(Ztunnel::exited);
            if let Some(p) = slot.process.take() {
                let _ = p.kill();
            }
            let how = exited.map(|s| format!(" (ztunnel exited: {s})")).unwrap_or_default();
            return Err(io::Error::other(format!("ztunnel@{node}: {e}{how}\n{}", tail(&slot.log))));
        }
        Ok(())
    }

    /// Kills `node`'s ztunnel (if running), once its output is quiet.
    pub fn crash(&mut self, node: &str) {
        if let Some(slot) = self.nodes.get_mut(node)
            && let Some(p) = slot.process.take()
        {
            wait_quiet(&slot.log);
            let _ = p.kill();
            slot.agent.disconnect();
            slot.crashed_at = slot.log.lock().unwrap_or_else(|e| e.into_inner()).len();
        }
    }

    /// Tells `node`'s ztunnel (if running) about a new pod.
    pub fn add_pod(&mut self, node: &str, pod: &ZPod) -> io::Result<()> {
        let slot = self.node(node)?;
        if slot.process.is_none() {
            return Ok(());
        }
        let entry = pod.entry();
        slot.agent
            .send(&entry.add(), Some(&entry.netns), ACK)
            .map_err(|e| io::Error::other(format!("ztunnel@{node}: {e}\n{}", tail(&slot.log))))
    }

    /// Tells `node`'s ztunnel (if running) a pod is gone.
    pub fn remove_pod(&mut self, node: &str, pod: &ZPod) -> io::Result<()> {
        let slot = self.node(node)?;
        if slot.process.is_none() {
            return Ok(());
        }
        let uid = config::workload_uid(&pod.namespace, &pod.name);
        slot.agent
            .send(&Request::Del { uid }, None, ACK)
            .map_err(|e| io::Error::other(format!("ztunnel@{node}: {e}\n{}", tail(&slot.log))))
    }

    /// Nodes whose ztunnel runs.
    pub fn running(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| n.process.is_some()).map(|(k, _)| k.clone()).collect()
    }

    fn events_from(&self, node: &str, from: impl Fn(&ZNode) -> usize) -> Vec<ProxyEvent> {
        let Some(slot) = self.nodes.get(node) else { return Vec::new() };
        let lines = slot.log.lock().unwrap_or_else(|e| e.into_inner());
        access::events(node, &lines[from(slot).min(lines.len())..], &self.context)
    }

    /// `node`'s events, from every ztunnel it ran.
    pub fn events(&self, node: &str) -> Vec<ProxyEvent> {
        self.events_from(node, |_| 0)
    }

    /// `node`'s events since its ztunnel was last killed.
    pub fn events_since_crash(&self, node: &str) -> Vec<ProxyEvent> {
        self.events_from(node, |n| n.crashed_at)
    }

    /// Adds to `log` each ztunnel node's `dns` events, from its DNS access log tied to the
    /// lookups `asked` (see [`crate::ztunnel::dns`]).
    pub fn tie_lookups(
        &self,
        log: &mut ambient_scenarios::assemble::EventLog,
        asked: &[crate::ztunnel::dns::Asked<'_>],
    ) {
        let upstream = self
            .nameserver()
            .map(|ip| std::net::SocketAddr::from((ip, ambient_scenarios::world::DNS_PORT)));
        for (node, slot) in &self.nodes {
            let lines = slot.log.lock().unwrap_or_else(|e| e.into_inner());
            let events =
                crate::ztunnel::dns::tie_lookups(node, &lines, asked, upstream, &self.context);
            log.entry(node.clone()).or_default().extend(events);
        }
    }

    /// Every node's raw output (for the run's artifacts).
    pub fn logs(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|(k, n)| {
                let lines = n.log.lock().unwrap_or_else(|e| e.into_inner());
                (k.clone(), lines.join("\n") + "\n")
            })
            .collect()
    }

    /// Kills every ztunnel (teardown).
    pub fn crash_all(&mut self) {
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for n in nodes {
            self.crash(&n);
        }
    }

    /// The address a pod IP's events call the node.
    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        self.context.node_of(ip)
    }
}

/// Waits until `log` has not grown for [`QUIET`] (at most [`QUIET_AT_MOST`]).
fn wait_quiet(log: &LogLines) {
    let len = || log.lock().unwrap_or_else(|e| e.into_inner()).len();
    let give_up = std::time::Instant::now() + QUIET_AT_MOST;
    let mut last = len();
    while std::time::Instant::now() < give_up {
        std::thread::sleep(QUIET);
        let now = len();
        if now == last {
            return;
        }
        last = now;
    }
}

impl Drop for Ztunnels {
    fn drop(&mut self) {
        self.crash_all();
        let _ = std::fs::remove_file(&self.config);
        if let Some(d) = &self.dns {
            let _ = std::fs::remove_file(&d.resolv_conf);
        }
        self.nodes.clear();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Ties app accepts to client connections by payload, for connections a ztunnel carried: its
/// log does not name the socket it connected to the app from, so no event says which accept
/// was the client's. `clients` are each client connection's address and the first bytes it
/// sent; `accepts` each accept's peer and the first bytes the app read (in accept order).
/// For a client with no event naming an upstream, the first accept not yet tied whose bytes
/// equal the client's gets a `connection-closed` (result ok: it adds nothing to the Outcome's
/// words) naming that peer as the upstream, logged by the node that last logged the client's
/// connection inbound (else outbound). The payload is per connection, so the tie is exact.
/// Returns the ties made, as (accept index, client): the peer address alone is not enough to
/// join them (in a mixed cluster two pods' apps can see the same `ip:port`, one from each kind
/// of proxy), so the caller pre-ties those accepts (`Accepts::push_tied`).
pub fn tie_accepts(
    log: &mut ambient_scenarios::assemble::EventLog,
    clients: &[(std::net::SocketAddr, Vec<u8>)],
    accepts: &[(std::net::SocketAddr, Vec<u8>)],
) -> Vec<(usize, std::net::SocketAddr)> {
    use ambient_proxy::events::{CloseResult, Direction};
    let mut ties = Vec::new();
    // Tied by payload here.
    let mut paired = vec![false; accepts.len()];
    // Accepts a proxy event may name (by peer; several may share one): not candidates for a
    // partial match. A full match is unique to its client and needs no such guard.
    let mut named = vec![false; accepts.len()];
    for events in log.values() {
        for e in events {
            if let ProxyEvent::ConnectionClosed { upstream: Some(u), .. } = e {
                for (i, (p, _)) in accepts.iter().enumerate() {
                    if p == u {
                        named[i] = true;
                    }
                }
            }
        }
    }
    for (client, first) in clients {
        if first.is_empty() {
            continue;
        }
        let mine = |e: &ProxyEvent| e.client() == Some(*client);
        let tied = log.values().flatten().any(|e| {
            mine(e) && matches!(e, ProxyEvent::ConnectionClosed { upstream: Some(_), .. })
        });
        if tied || accepts.iter().any(|(p, _)| p == client) {
            continue;
        }
        // An app may read fewer bytes than were sent before it acts (`reset` reads one): its
        // bytes must then begin the client's. Full matches are preferred.
        let full = (0..accepts.len()).find(|&i| !paired[i] && accepts[i].1 == *first);
        let partial = || {
            (0..accepts.len()).find(|&i| {
                let seen = &accepts[i].1;
                !paired[i] && !named[i] && !seen.is_empty() && first.starts_with(seen)
            })
        };
        let Some(i) = full.or_else(partial) else { continue };
        let direction_of = |e: &ProxyEvent| match e {
            ProxyEvent::InboundVerdict { direction, .. }
            | ProxyEvent::ConnectionClosed { direction, .. }
            | ProxyEvent::Error { direction, .. } => Some(*direction),
            ProxyEvent::OutboundRoute { .. } => Some(Direction::Outbound),
            _ => None,
        };
        let mut best: Option<(String, Direction)> = None;
        for (node, events) in log.iter() {
            for e in events.iter().filter(|e| mine(e)) {
                if let Some(d) = direction_of(e)
                    && (d != Direction::Outbound
                        || best.as_ref().is_none_or(|(_, b)| *b == Direction::Outbound))
                {
                    best = Some((node.clone(), d));
                }
            }
        }
        let Some((node, direction)) = best else { continue };
        paired[i] = true;
        ties.push((i, *client));
        let peer = accepts[i].0;
        log.entry(node.clone()).or_default().push(ProxyEvent::ConnectionClosed {
            node,
            client: *client,
            direction,
            destination: peer,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: 0,
            result: CloseResult::Ok,
            upstream: Some(peer),
        });
    }
    ties
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use ambient_proxy::events::{CloseResult, Direction, ProxyEvent};
    use ambient_scenarios::assemble::EventLog;

    use super::tie_accepts;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn verdict(client: &str) -> ProxyEvent {
        ProxyEvent::InboundVerdict {
            node: "node-b".into(),
            client: sa(client),
            direction: Direction::InboundHbone,
            destination: sa("10.0.2.2:8080"),
            source_identity: None,
            allowed: true,
            reason: "r".into(),
            policy: None,
        }
    }

    #[test]
    fn accepts_are_tied_to_the_client_whose_bytes_they_read() {
        let mut log = EventLog::new();
        log.insert("node-b".into(), vec![verdict("10.0.1.2:1000"), verdict("10.0.1.2:1001")]);
        // The app saw the client IP with ztunnel's own ports, in the other order.
        let accepts =
            [(sa("10.0.1.2:5001"), b"second".to_vec()), (sa("10.0.1.2:5000"), b"first".to_vec())];
        let clients = [
            (sa("10.0.1.2:1000"), b"first".to_vec()),
            (sa("10.0.1.2:1001"), b"second".to_vec()),
            (sa("10.0.1.2:1002"), Vec::new()), // sent nothing: not tied
        ];
        let made = tie_accepts(&mut log, &clients, &accepts);
        assert_eq!(made, [(1, sa("10.0.1.2:1000")), (0, sa("10.0.1.2:1001"))]);
        let ties: Vec<(SocketAddr, Option<SocketAddr>, Direction)> = log["node-b"]
            .iter()
            .filter_map(|e| match e {
                ProxyEvent::ConnectionClosed { client, upstream, direction, result, .. } => {
                    assert_eq!(*result, CloseResult::Ok);
                    Some((*client, *upstream, *direction))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            ties,
            [
                (sa("10.0.1.2:1000"), Some(sa("10.0.1.2:5000")), Direction::InboundHbone),
                (sa("10.0.1.2:1001"), Some(sa("10.0.1.2:5001")), Direction::InboundHbone),
            ]
        );
        // An app that read one byte (`reset`) is tied by that byte.
        let mut short = EventLog::new();
        short.insert("node-b".into(), vec![verdict("10.0.1.2:1000")]);
        tie_accepts(&mut short, &clients[..1], &[(sa("10.0.1.2:5009"), b"f".to_vec())]);
        assert!(matches!(
            short["node-b"].last(),
            Some(ProxyEvent::ConnectionClosed { upstream: Some(u), .. }) if *u == sa("10.0.1.2:5009")
        ));
        // Idempotent: already tied clients are left alone.
        let before = log.clone();
        assert!(tie_accepts(&mut log, &clients, &accepts).is_empty());
        assert_eq!(log, before);
    }

    #[test]
    fn a_full_payload_match_ties_even_an_accept_whose_peer_a_proxy_event_names() {
        // Our proxy on one node connected to its app from 10.0.1.2:5000; ztunnel on another
        // connected to its app from the same ip:port. Both accepts share the peer.
        let mut log = EventLog::new();
        log.insert(
            "node-b".into(),
            vec![ProxyEvent::ConnectionClosed {
                node: "node-b".into(),
                client: sa("10.0.1.2:1000"),
                direction: Direction::InboundHbone,
                destination: sa("10.0.2.2:8080"),
                bytes_sent: 5,
                bytes_received: 5,
                duration_ms: 1,
                result: CloseResult::Ok,
                upstream: Some(sa("10.0.1.2:5000")),
            }],
        );
        log.insert("node-c".into(), vec![verdict("10.0.1.2:1001")]);
        let accepts =
            [(sa("10.0.1.2:5000"), b"ztunnel's".to_vec()), (sa("10.0.1.2:5000"), b"ours".to_vec())];
        let clients =
            [(sa("10.0.1.2:1000"), b"ours".to_vec()), (sa("10.0.1.2:1001"), b"ztunnel's".to_vec())];
        assert_eq!(tie_accepts(&mut log, &clients, &accepts), [(0, sa("10.0.1.2:1001"))]);
    }
}
