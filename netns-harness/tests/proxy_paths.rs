//! The proxy on real kernel interception (the netns tier of `proxy/ARCHITECTURE.md`): the
//! reference rules in a client pod and a server pod on two node namespaces — real REDIRECT,
//! real SO_ORIGINAL_DST, real IP_TRANSPARENT, real SO_MARK — checked directly on what the apps,
//! the proxies and the kernel saw, not through the Outcome:
//!
//! - captured → captured (HBONE): the server app's accept shows the client pod's IP, from the
//!   destination proxy's transparent socket; the source proxy saw the original destination;
//! - uncaptured → captured: arrives through nat PREROUTING's REDIRECT to 15006;
//! - captured → uncaptured: passthrough, the server sees the client pod's IP.
//!
//! The same paths as whole scenarios: `tests/scenarios.rs` (the catalog's
//! `cross-node-hbone-pooling`, `inbound-plaintext`, `passthrough`).
//! `cargo test -p ambient-netns --test proxy_paths`; needs root or user namespaces.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambient_netns::backend::observe::{conntrack_entries, rule_counters, transient};
use ambient_netns::backend::plan::Plan;
use ambient_netns::backend::proxies::Proxies;
use ambient_netns::backend::topology::Topology;
use ambient_netns::backend::traffic::{
    AcceptLog, ClientRun, ClientRuns, start_apps, start_clients,
};
use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::Suite;
use ambient_proxy::events::{Direction, Path, ProxyEvent};
use ambient_scenarios::outcome::{ConntrackEntry, Counter, TcpState};
use ambient_scenarios::traffic::{ClientEnd, ClientSpec};
use ambient_scenarios::world::{ObjectKey, Pod};
use ambient_scenarios::{ClusterState, World, load_str};
use anyhow::{Context as _, bail, ensure};

const CLUSTER: &str = r#"
description: two captured and two uncaptured pods on two nodes
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}            # 10.0.1.2
    - {name: legacy-client, node: node-a}                                            # 10.0.1.3
    - {name: server, node: node-b, serviceAccount: echo, ambient: true, serve: [{port: 8080, app: echo}]}  # 10.0.2.2
    - {name: legacy-server, node: node-b, serve: [{port: 9090, app: echo}]}          # 10.0.2.3
steps:
  - wait: 0s
"#;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const LEGACY_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const LEGACY_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

fn main() -> ExitCode {
    Suite::new("the proxy on real interception")
        .case("proxy::hbone_server_app_sees_the_client_pod_ip", |sb| Ok(hbone(sb)?))
        .case("proxy::uncaptured_client_reaches_a_captured_server_through_15006", |sb| {
            Ok(inbound_plaintext(sb)?)
        })
        .case("proxy::captured_client_reaches_an_uncaptured_server_by_passthrough", |sb| {
            Ok(passthrough(sb)?)
        })
        .run()
}

/// The cluster, built and served: namespaces, rules, apps, one proxy per node.
struct Cluster {
    proxies: Proxies,
    topo: Topology,
    accepts: AcceptLog,
}

impl Cluster {
    fn start(sb: &Sandbox, world: &World) -> anyhow::Result<Cluster> {
        let mut topo = Topology::build(sb, Plan::of(world).map_err(anyhow::Error::msg)?)?;
        let pods: Vec<&Pod> = world.pods.values().collect();
        topo.add_pods(sb, &pods)?;
        let accepts = AcceptLog::default();
        for pod in &pods {
            start_apps(&topo.pods[&pod.key].ns, &pod.serve, &accepts)?;
        }
        let nodes: Vec<String> = world.nodes.iter().map(|n| n.name.clone()).collect();
        let mut proxies = Proxies::new(&nodes, &world.trust_domain, 1)?;
        let mesh = ClusterState::initial(world).mesh_state()?;
        for (i, node) in nodes.iter().enumerate() {
            let captured = pods
                .iter()
                .filter(|p| &p.node == node && p.is_captured())
                .map(|p| (p.ip, topo.pods[&p.key].ns.path().to_path_buf()))
                .collect();
            proxies.start(node, topo.node(i), mesh.clone(), captured)?;
        }
        Ok(Cluster { proxies, topo, accepts })
    }

    /// One echo connection from pod `from` to `dst`.
    fn call(&self, from: &str, dst: SocketAddrV4) -> anyhow::Result<ClientRun> {
        let ns = &self.topo.pods[&ObjectKey::new(from, "default")].ns;
        let spec = ClientSpec {
            send: 3000,
            hold: Duration::ZERO,
            deadline: Duration::from_secs(10),
            payload: 7,
        };
        let runs = ClientRuns::new(1);
        start_clients(ns, dst, vec![(spec, None)], false, &runs, &Default::default()).wait()?;
        let run = runs.take().pop().context("no client report")?;
        ensure!(
            run.report.end == ClientEnd::Closed && run.report.intact(3000),
            "the echo did not come back intact: {:?}",
            run.report
        );
        Ok(run)
    }

    /// Waits until `node`'s proxy logged `connection-closed` for `client`, and returns its events
    /// about it.
    fn closed(&self, node: &str, client: SocketAddr) -> anyhow::Result<Vec<ProxyEvent>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events: Vec<ProxyEvent> = self
                .proxies
                .log()
                .remove(node)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.client() == Some(client))
                .collect();
            if events.iter().any(|e| matches!(e, ProxyEvent::ConnectionClosed { .. })) {
                return Ok(events);
            }
            ensure!(
                Instant::now() < deadline,
                "{node} never logged the close of {client}: {events:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The peers the apps saw, in order.
    fn app_peers(&self) -> Vec<SocketAddr> {
        self.accepts.lock().map(|a| a.iter().map(|a| a.accept.peer).collect()).unwrap_or_default()
    }

    /// A pod's conntrack table once no entry is half-way through closing (bounded).
    fn conntrack(&self, pod: &str) -> anyhow::Result<Vec<ConntrackEntry>> {
        let ns = &self.topo.pods[&ObjectKey::new(pod, "default")].ns;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let entries = conntrack_entries(&ns.conntrack_list()?).map_err(anyhow::Error::msg)?;
            if !entries.iter().any(transient) || Instant::now() > deadline {
                return Ok(entries);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn counter(&self, pod: &str, rule: &str) -> anyhow::Result<Counter> {
        let ns = &self.topo.pods[&ObjectKey::new(pod, "default")].ns;
        let (rules, _) = ns.iptables_save()?;
        rule_counters(&rules)
            .get(&rule.parse().map_err(anyhow::Error::msg)?)
            .copied()
            .with_context(|| format!("no rule {rule} in {pod}"))
    }
}

fn world() -> anyhow::Result<World> {
    load_str("paths.yaml", CLUSTER).into_result().map_err(|d| anyhow::anyhow!("{d:?}"))
}

fn upstream_of(events: &[ProxyEvent]) -> Option<SocketAddr> {
    events.iter().find_map(|e| match e {
        ProxyEvent::ConnectionClosed { upstream, .. } => *upstream,
        _ => None,
    })
}

fn hbone(sb: &Sandbox) -> anyhow::Result<()> {
    let world = world()?;
    let c = Cluster::start(sb, &world)?;
    let dst = SocketAddrV4::new(SERVER, 8080);
    let run = c.call("client", dst)?;
    let client = run.local.context("no client address")?;
    // The source proxy got the connection through REDIRECT and read the original destination.
    let a = c.closed("node-a", client)?;
    match a.first() {
        Some(ProxyEvent::OutboundRoute { original_dst, path: Path::Hbone, .. }) => {
            ensure!(*original_dst == SocketAddr::V4(dst), "SO_ORIGINAL_DST gave {original_dst}")
        }
        other => bail!("node-a's first event: {other:?}"),
    }
    // The destination proxy authenticated the client and connected to the app as the client.
    let b = c.closed("node-b", client)?;
    match b.first() {
        Some(ProxyEvent::InboundVerdict {
            direction: Direction::InboundHbone,
            source_identity,
            allowed: true,
            ..
        }) => {
            ensure!(
                source_identity.as_deref() == Some("spiffe://cluster.local/ns/default/sa/sleep")
            );
        }
        other => bail!("node-b's first event: {other:?}"),
    }
    let upstream = upstream_of(&b).context("no upstream socket in node-b's close")?;
    let peers = c.app_peers();
    ensure!(
        peers == [upstream],
        "the app saw {peers:?}; node-b's transparent socket was {upstream}"
    );
    ensure!(upstream.ip() == IpAddr::V4(CLIENT), "the app saw {upstream}, not the client pod's IP");
    // The kernel's view: the app's SYN was REDIRECTed to 15001 in the client pod; in the server
    // pod the proxy's connection to the app carries the connmark its SO_MARK 0x539 earned.
    let ct = c.conntrack("client")?;
    ensure!(
        ct.iter().any(|e| SocketAddr::V4(e.orig.src) == client
            && e.orig.dst == dst
            && e.reply.src == SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001)),
        "no REDIRECT entry for {client} in the client pod: {ct:#?}"
    );
    let ct = c.conntrack("server")?;
    ensure!(
        ct.iter().any(|e| SocketAddr::V4(e.orig.src) == upstream
            && e.orig.dst == dst
            && e.mark == 0x111
            && e.state == Some(TcpState::TimeWait)),
        "no connmarked entry for the proxy's connection to the app: {ct:#?}"
    );
    ensure!(c.counter("client", "nat/ISTIO_OUTPUT/6")?.packets == 1);
    ensure!(c.counter("server", "nat/ISTIO_PRERT/2")?.packets == 0, "HBONE went to 15006");
    Ok(())
}

fn inbound_plaintext(sb: &Sandbox) -> anyhow::Result<()> {
    let world = world()?;
    let c = Cluster::start(sb, &world)?;
    let dst = SocketAddrV4::new(SERVER, 8080);
    let run = c.call("legacy-client", dst)?;
    let client = run.local.context("no client address")?;
    ensure!(c.proxies.log()["node-a"].is_empty(), "node-a's proxy saw an uncaptured pod's call");
    let b = c.closed("node-b", client)?;
    match b.first() {
        Some(ProxyEvent::InboundVerdict {
            direction: Direction::InboundPlaintext,
            source_identity: None,
            destination,
            allowed: true,
            ..
        }) => ensure!(*destination == SocketAddr::V4(dst), "destination {destination}"),
        other => bail!("node-b's first event: {other:?}"),
    }
    let upstream = upstream_of(&b).context("no upstream socket in node-b's close")?;
    ensure!(c.app_peers() == [upstream], "{:?} vs {upstream}", c.app_peers());
    ensure!(upstream.ip() == IpAddr::V4(LEGACY_CLIENT), "the app saw {upstream}");
    ensure!(c.counter("server", "nat/ISTIO_PRERT/2")?.packets == 1, "not REDIRECTed to 15006");
    let ct = c.conntrack("server")?;
    ensure!(
        ct.iter().any(|e| SocketAddr::V4(e.orig.src) == client
            && e.reply.src == SocketAddrV4::new(SERVER, 15006)),
        "no REDIRECT-to-15006 entry for {client}: {ct:#?}"
    );
    Ok(())
}

fn passthrough(sb: &Sandbox) -> anyhow::Result<()> {
    let world = world()?;
    let c = Cluster::start(sb, &world)?;
    let dst = SocketAddrV4::new(LEGACY_SERVER, 9090);
    let run = c.call("client", dst)?;
    let client = run.local.context("no client address")?;
    let a = c.closed("node-a", client)?;
    match a.first() {
        Some(ProxyEvent::OutboundRoute {
            path: Path::Passthrough, original_dst, endpoint, ..
        }) => {
            ensure!(*original_dst == SocketAddr::V4(dst) && endpoint == original_dst);
        }
        other => bail!("node-a's first event: {other:?}"),
    }
    ensure!(c.proxies.log()["node-b"].is_empty(), "node-b's proxy saw a passthrough");
    let upstream = upstream_of(&a).context("no upstream socket in node-a's close")?;
    ensure!(c.app_peers() == [upstream], "{:?} vs {upstream}", c.app_peers());
    ensure!(upstream.ip() == IpAddr::V4(CLIENT), "the uncaptured server saw {upstream}");
    ensure!(c.counter("client", "nat/ISTIO_OUTPUT/6")?.packets == 1);
    Ok(())
}
