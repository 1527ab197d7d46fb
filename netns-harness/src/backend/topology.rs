//! Building [`super::plan::Plan`] in the kernel: namespaces, veth pairs, bridges, addresses,
//! routes and sysctls through rtnetlink and `/proc/sys`, the in-pod rules with
//! `iptables-restore`, the fwmark rule and local route with rtnetlink — and taking pods away.
//!
//! Each namespace's part runs on that namespace's own worker thread, and pods are set up
//! concurrently (every pod's work is a job on its own thread), so building a pod costs roughly
//! one `iptables-restore` plus a few netlink round trips, not their sum over all pods.
//!
//! Sysctls: IP forwarding on in the node and wan namespaces; `rp_filter` 0 (`all` and
//! `default`, so every link created later inherits it) in every namespace — the ambient path
//! delivers packets whose source is another host's address (the proxy's transparent socket to
//! the app, the app's replies routed back by fwmark) and must never be dropped by a
//! reverse-path check; proxy ARP, answering without delay, on the wan's host links.
//!
//! Dropping a [`Topology`] drops every namespace it made (their links, routes, rules and
//! conntrack tables go with them; see [`crate::netns`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambient_scenarios::world::{ObjectKey, Pod};

use super::plan::{BRIDGE, POD_IF, Plan, UPLINK, host_link, node_link, pod_link};
use crate::link::{LinkError, Route, Rtnl};
use crate::netns::{JobHandle, Netns};
use crate::sandbox::Sandbox;
use crate::tools::{ToolError, sysctl_write_in};

/// How long a link may take to become operational.
const LINK_UP: Duration = Duration::from_secs(5);

/// Distinguishes the namespaces of successive runs in one process.
static RUNS: AtomicU64 = AtomicU64::new(1);

/// A pod's namespace and where it is attached.
#[derive(Debug)]
pub struct PodNs {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    /// Index of its node.
    pub node: usize,
    /// Its veth end in the node namespace.
    pub link: String,
}

/// A killed pod's veth, to unplug ([`Topology::kill_pod`]).
#[derive(Debug)]
pub struct Unplug {
    node: usize,
    link: String,
}

/// Everything the harness built for one run.
#[derive(Debug)]
pub struct Topology {
    pub plan: Plan,
    run: u64,
    /// Pods first, so they go before the nodes their veths hang off.
    pub pods: BTreeMap<ObjectKey, PodNs>,
    pub hosts: BTreeMap<String, Netns>,
    pub nodes: Vec<Netns>,
    pub wan: Netns,
    next_pod: usize,
}

/// Why a piece of the topology could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{what}: {source}")]
    Link { what: String, source: LinkError },
    #[error("{what}: {source}")]
    Tool { what: String, source: ToolError },
    #[error("{what}: {source}")]
    Netns { what: String, source: crate::netns::NetnsError },
    #[error("{0}")]
    Plan(String),
}

fn link_err(what: impl Into<String>) -> impl FnOnce(LinkError) -> TopologyError {
    let what = what.into();
    move |source| TopologyError::Link { what, source }
}

/// A namespace name: `tb<run>-<role>`, trimmed to what `/run/netns` accepts.
fn ns_name(run: u64, role: &str) -> String {
    let clean: String = role
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    let mut name = format!("tb{run}-{clean}");
    name.truncate(64);
    name
}

fn create(sandbox: &Sandbox, name: String) -> Result<Netns, TopologyError> {
    Netns::create(sandbox, &name).map_err(|source| TopologyError::Netns {
        what: format!("creating namespace {name}"),
        source,
    })
}

/// Set to 0 in every namespace: no reverse-path filter (module docs), and no IGMP reports for
/// link-local groups — a report (40 bytes, to 224.0.0.22) a namespace sends when its link comes
/// up is flooded over the node's bridge into every pod, where conntrack tracks it as a new
/// connection and nat PREROUTING counts it: noise outside the model, which would make a nat
/// counter depend on when a pod's neighbours were built.
const QUIET_SYSCTLS: [&str; 3] = [
    "net/ipv4/conf/all/rp_filter",
    "net/ipv4/conf/default/rp_filter",
    "net/ipv4/igmp_link_local_mcast_reports",
];

/// The sysctls of a namespace (see the module docs), written from its worker thread.
fn base_sysctls(ns: &Netns, forwarding: bool) -> JobHandle<Result<(), ToolError>> {
    ns.spawn(move || async move {
        for key in QUIET_SYSCTLS {
            sysctl_write_in(key, "0")?;
        }
        if forwarding {
            sysctl_write_in("net/ipv4/ip_forward", "1")?;
        }
        Ok(())
    })
}

/// Waits for several jobs; the first error wins, naming `what`.
fn wait_all<T, E>(
    what: &str,
    jobs: Vec<JobHandle<Result<T, E>>>,
    wrap: impl Fn(String, E) -> TopologyError,
) -> Result<Vec<T>, TopologyError> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut first_err = None;
    for job in jobs {
        match job.wait() {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert_with(|| wrap(what.to_string(), e));
            }
            Err(source) => {
                first_err.get_or_insert(TopologyError::Netns { what: what.to_string(), source });
            }
        }
    }
    first_err.map_or(Ok(out), Err)
}

fn as_link(what: String, source: LinkError) -> TopologyError {
    TopologyError::Link { what, source }
}

fn as_tool(what: String, source: ToolError) -> TopologyError {
    TopologyError::Tool { what, source }
}

impl Topology {
    /// Builds the nodes, the wan, the inter-node links and the external hosts (pods come with
    /// [`Topology::add_pods`]).
    pub fn build(sandbox: &Sandbox, plan: Plan) -> Result<Topology, TopologyError> {
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let wan = create(sandbox, ns_name(run, "wan"))?;
        let mut nodes = Vec::new();
        for n in &plan.nodes {
            nodes.push(create(sandbox, ns_name(run, &format!("n{}-{}", n.index, n.name)))?);
        }
        let mut hosts = BTreeMap::new();
        for h in &plan.hosts {
            let ns = create(sandbox, ns_name(run, &format!("h{}-{}", h.index, h.name)))?;
            hosts.insert(h.name.clone(), ns);
        }
        let topo = Topology { plan, run, pods: BTreeMap::new(), hosts, nodes, wan, next_pod: 0 };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&self) -> Result<(), TopologyError> {
        let plan = &self.plan;
        let mut sysctls = vec![base_sysctls(&self.wan, true)];
        sysctls.extend(self.nodes.iter().map(|n| base_sysctls(n, true)));
        sysctls.extend(self.hosts.values().map(|h| base_sysctls(h, false)));
        wait_all("setting sysctls", sysctls, as_tool)?;

        // Node bridges, and every link's creation from the side that owns it.
        let mut jobs = Vec::new();
        for (n, ns) in plan.nodes.iter().zip(&self.nodes) {
            let (mac, gw) = (n.bridge_mac, n.gateway);
            let pairs: Vec<(String, String, PathBuf)> = plan
                .pairs
                .iter()
                .filter(|p| p.a == n.index)
                .map(|p| (node_link(p.b), node_link(p.a), self.nodes[p.b].path().to_path_buf()))
                .collect();
            jobs.push(spawn_rtnl(ns, move |rt| async move {
                rt.set_up("lo", true).await?;
                rt.add_bridge(BRIDGE, mac).await?;
                rt.add_address(BRIDGE, gw, 24).await?;
                for (here, there, peer_ns) in pairs {
                    rt.add_veth_up(&here, &there, &peer_ns, None).await?;
                }
                Ok(())
            }));
        }
        let uplinks: Vec<(String, PathBuf)> = plan
            .nodes
            .iter()
            .map(|n| (node_link(n.index), self.nodes[n.index].path().to_path_buf()))
            .collect();
        let host_links: Vec<(String, PathBuf)> = plan
            .hosts
            .iter()
            .map(|h| (host_link(h.index), self.hosts[&h.name].path().to_path_buf()))
            .collect();
        jobs.push(spawn_rtnl(&self.wan, move |rt| async move {
            rt.set_up("lo", true).await?;
            for (here, node_ns) in uplinks {
                rt.add_veth_up(&here, UPLINK, &node_ns, None).await?;
            }
            for (here, host_ns) in host_links {
                rt.add_veth_up(&here, POD_IF, &host_ns, None).await?;
            }
            Ok(())
        }));
        wait_all("creating links", jobs, as_link)?;

        // Addresses and routes, each namespace on its own thread.
        let mut jobs = Vec::new();
        for (n, ns) in plan.nodes.iter().zip(&self.nodes) {
            let mut addrs: Vec<(String, Ipv4Addr, u8)> = vec![(UPLINK.into(), n.uplink, 24)];
            for p in plan.pairs.iter().filter(|p| p.a == n.index || p.b == n.index) {
                let (dev, addr) = if p.a == n.index {
                    (node_link(p.b), p.a_addr)
                } else {
                    (node_link(p.a), p.b_addr)
                };
                addrs.push((dev, addr, 30));
            }
            let routes = plan.node_routes(n.index);
            jobs.push(spawn_rtnl(ns, move |rt| async move {
                for (dev, addr, prefix) in &addrs {
                    rt.set_up(dev, true).await?;
                    rt.add_address(dev, *addr, *prefix).await?;
                }
                for (dev, _, _) in &addrs {
                    rt.wait_running(dev, LINK_UP).await?;
                }
                for (dst, prefix, via) in routes {
                    rt.add_route(&Route::via(dst, prefix, via)).await?;
                }
                Ok(())
            }));
        }
        let wan_addrs: Vec<(String, Ipv4Addr, Ipv4Addr, Ipv4Addr)> = plan
            .nodes
            .iter()
            .map(|n| (node_link(n.index), n.wan_end, n.uplink, n.pod_subnet))
            .collect();
        let wan_hosts: Vec<(String, Ipv4Addr)> =
            plan.hosts.iter().map(|h| (host_link(h.index), h.ip)).collect();
        jobs.push(spawn_rtnl(&self.wan, move |rt| async move {
            for (dev, addr, _, _) in &wan_addrs {
                rt.add_address(dev, *addr, 24).await?;
                rt.wait_running(dev, LINK_UP).await?;
            }
            for (_, _, node_addr, subnet) in &wan_addrs {
                rt.add_route(&Route::via(*subnet, 24, *node_addr)).await?;
            }
            for (dev, ip) in &wan_hosts {
                rt.wait_running(dev, LINK_UP).await?;
                rt.add_route(&dev_route(*ip, 32, dev)).await?;
            }
            Ok(())
        }));
        for h in &plan.hosts {
            let ip = h.ip;
            jobs.push(spawn_rtnl(&self.hosts[&h.name], move |rt| async move {
                rt.set_up("lo", true).await?;
                rt.set_up(POD_IF, true).await?;
                rt.add_address(POD_IF, ip, 32).await?;
                rt.wait_running(POD_IF, LINK_UP).await?;
                rt.add_route(&dev_route(Ipv4Addr::UNSPECIFIED, 0, POD_IF)).await
            }));
        }
        wait_all("addresses and routes", jobs, as_link)?;
        // Proxy ARP on the host links: a host with a device route ARPs for everyone.
        // Answer at once: proxy ARP replies are otherwise delayed up to `proxy_delay` (0.8 s).
        let keys: Vec<(String, &str)> = plan
            .hosts
            .iter()
            .flat_map(|h| {
                let dev = host_link(h.index);
                [
                    (format!("net/ipv4/conf/{dev}/proxy_arp"), "1"),
                    (format!("net/ipv4/neigh/{dev}/proxy_delay"), "0"),
                ]
            })
            .collect();
        self.wan
            .run_blocking(move || keys.iter().try_for_each(|(k, v)| sysctl_write_in(k, v)))
            .map_err(|source| TopologyError::Netns { what: "proxy ARP".into(), source })?
            .map_err(|source| TopologyError::Tool { what: "proxy ARP".into(), source })?;
        Ok(())
    }

    /// Creates pods (namespace, veth on the node's bridge, address, default route; for a
    /// captured pod the fwmark rule, the local route and its rules), all concurrently.
    pub fn add_pods(&mut self, sandbox: &Sandbox, pods: &[&Pod]) -> Result<(), TopologyError> {
        let mut made = Vec::new();
        for pod in pods {
            self.plan.check_pod_ip(&pod.label(), pod.ip).map_err(TopologyError::Plan)?;
            let node = self
                .plan
                .node(&pod.node)
                .ok_or_else(|| {
                    TopologyError::Plan(format!("pod {} on unknown node {}", pod.label(), pod.node))
                })?
                .index;
            let seq = self.next_pod;
            self.next_pod += 1;
            let ns = create(sandbox, ns_name(self.run, &format!("p{seq}-{}", pod.label())))?;
            made.push((*pod, PodNs { ns, ip: pod.ip, node, link: pod_link(seq) }));
        }
        // Each pod's sysctls and rules first: `iptables-restore` is the slow part (its netlink
        // sockets' release waits for the kernel's nf_tables cleanup, tens of ms of idle time),
        // and needs no link, so it runs while the links are made.
        let rules: Vec<JobHandle<Result<(), (String, String)>>> = made
            .iter()
            .map(|(pod, p)| {
                let (ip, capture) = (pod.ip, pod.capture.clone());
                p.ns.spawn(move || async move {
                    for key in QUIET_SYSCTLS {
                        sysctl_write_in(key, "0")
                            .map_err(|e| (format!("{ip}: sysctl"), e.to_string()))?;
                    }
                    if let Some(c) = &capture {
                        crate::iptables::restore_in(&c.rules, true).await.map_err(|e| {
                            (format!("{ip}: loading the in-pod rules"), e.to_string())
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        // The node ends of the veths (one job per pod, concurrently).
        let veths = made
            .iter()
            .map(|(_, p)| {
                let (link, peer_ns) = (p.link.clone(), p.ns.path().to_path_buf());
                spawn_rtnl(&self.nodes[p.node], move |rt| async move {
                    rt.add_veth_up(&link, POD_IF, &peer_ns, Some(BRIDGE)).await
                })
            })
            .collect();
        let veths = wait_all("pod veths", veths, as_link);
        let mut setups = rules;
        if veths.is_ok() {
            setups.extend(made.iter().map(|(pod, p)| {
                let (ip, gw) = (pod.ip, self.plan.nodes[p.node].gateway);
                let routing = pod.capture.as_ref().map(|c| c.routing);
                p.ns.spawn(move || async move {
                    let net = async {
                        let rt = Rtnl::open()?;
                        rt.set_up("lo", true).await?;
                        rt.set_up(POD_IF, true).await?;
                        rt.add_address(POD_IF, ip, 24).await?;
                        rt.add_route(&Route::via(Ipv4Addr::UNSPECIFIED, 0, gw)).await?;
                        if let Some(routing) = &routing {
                            rt.add_policy_routing(routing).await?;
                        }
                        rt.wait_running(POD_IF, LINK_UP).await
                    };
                    net.await.map_err(|e: LinkError| {
                        (format!("{ip}: addresses and routes"), e.to_string())
                    })
                })
            }));
        }
        let mut first_err = None;
        for job in setups {
            let r = job.wait().map_err(|e| ("pod setup".to_string(), e.to_string()));
            if let Err((what, why)) | Ok(Err((what, why))) = r {
                first_err.get_or_insert(TopologyError::Plan(format!("{what}: {why}")));
            }
        }
        for (pod, p) in made {
            self.pods.insert(pod.key.clone(), p);
        }
        veths?;
        first_err.map_or(Ok(()), Err)
    }

    /// Removes a pod: its veth goes first (so nothing that still holds the namespace keeps the
    /// pod's address on the bridge), then the namespace.
    pub fn remove_pod(&mut self, key: &ObjectKey) -> Result<(), TopologyError> {
        match self.kill_pod(key) {
            Some(gone) => self.unplug(key, gone),
            None => Ok(()),
        }
    }

    /// The first half of a deletion: the pod's namespace is dropped — its worker stops, which
    /// ends every process of the pod (apps and clients), and the kernel closes their sockets
    /// while the pod is still plugged in (its veth and addresses stay as long as the namespace
    /// lives, which the proxy's in-pod sockets may keep it doing). [`Topology::unplug`] ends it.
    pub fn kill_pod(&mut self, key: &ObjectKey) -> Option<Unplug> {
        let pod = self.pods.remove(key)?;
        let gone = Unplug { node: pod.node, link: pod.link.clone() };
        drop(pod);
        Some(gone)
    }

    /// The second half: the pod's veth goes (if its namespace has not taken it along already).
    pub fn unplug(&mut self, key: &ObjectKey, gone: Unplug) -> Result<(), TopologyError> {
        let link = gone.link;
        let deleted = self.nodes[gone.node].rtnl(move |rt| async move {
            match rt.del_link(&link).await {
                Err(LinkError::NoSuchLink(_)) => Ok(()),
                r => r,
            }
        });
        deleted.map_err(link_err(format!("deleting pod {key}'s veth")))
    }

    /// Node `i`'s namespace.
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }
}

/// `ip route add <dst>/<prefix> dev <dev>` (scope link).
fn dev_route(dst: Ipv4Addr, prefix: u8, dev: &str) -> Route {
    Route {
        dst,
        prefix,
        gateway: None,
        dev: Some(dev.to_string()),
        table: crate::link::MAIN_TABLE,
        local: false,
    }
}

/// Like [`Netns::rtnl`], but returns at once with a handle.
fn spawn_rtnl<F, Fut>(ns: &Netns, f: F) -> JobHandle<Result<(), LinkError>>
where
    F: FnOnce(Rtnl) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), LinkError>> + 'static,
{
    ns.spawn(move || async move { f(Rtnl::open()?).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_valid_and_bounded() {
        assert_eq!(ns_name(3, "p0-client.default"), "tb3-p0-client.default");
        assert_eq!(ns_name(1, "n0-node a/b"), "tb1-n0-node_a_b");
        assert!(ns_name(1, &"x".repeat(200)).len() <= 64);
    }
}
