//! Links, addresses, routes and policy rules through rtnetlink — no `ip` process.
//!
//! An rtnetlink socket, like any socket, belongs to the namespace of the thread that opens it, so
//! [`Rtnl::open`] runs inside a namespace job and everything done through it applies to that
//! namespace. [`Netns::rtnl`] wraps the common case: open, do a few things, close.
//!
//! What it covers is what the harness builds: veth pairs whose peer end is created directly in
//! another namespace (`IFLA_NET_NS_FD`), IPv4 addresses, link up/down, unicast and local routes in
//! any table (`local 0.0.0.0/0 dev lo table 100`), and fwmark policy rules
//! (`fwmark 0x111/0xfff pref 32764 lookup 100`).

use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures_util::TryStreamExt as _;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, State};
use netlink_packet_route::route::{RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netns::{Netns, NetnsError};

/// An rtnetlink request that failed; says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening the netlink socket failed.
    #[error("opening an rtnetlink socket: {0}")]
    Open(std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Request {
        /// The request, in `ip` words (`ip link add veth0 type veth …`).
        what: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A link did not become operational in time.
    #[error("link {name} did not come up (operstate {state}) within {waited:?}")]
    NotRunning {
        /// The link.
        name: String,
        /// Its last operstate.
        state: String,
        /// How long it was given.
        waited: std::time::Duration,
    },
    /// No link of that name in this namespace.
    #[error("no link named {0:?} in this namespace")]
    NoSuchLink(String),
    /// Opening the peer namespace's path failed.
    #[error("opening namespace path {path}: {source}")]
    NetnsPath {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The job did not complete in the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// A route to add. `gateway` and `dev` are optional as with `ip route add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output device, if any.
    pub dev: Option<String>,
    /// Routing table (254 = main).
    pub table: u32,
    /// `local` (deliver locally) instead of unicast.
    pub local: bool,
}

impl Route {
    /// `ip route add <dst>/<prefix> via <gw>` in the main table.
    pub fn via(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Route {
        Route { dst, prefix, gateway: Some(gateway), dev: None, table: MAIN_TABLE, local: false }
    }

    /// `ip route add local <dst>/<prefix> dev <dev> table <table>`.
    pub fn local(dst: Ipv4Addr, prefix: u8, dev: &str, table: u32) -> Route {
        Route { dst, prefix, gateway: None, dev: Some(dev.to_string()), table, local: true }
    }
}

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// `ip rule add fwmark <mark>/<mask> pref <pref> lookup <table>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwmarkRule {
    /// Mark value.
    pub mark: u32,
    /// Mark mask.
    pub mask: u32,
    /// Rule priority.
    pub pref: u32,
    /// Table to look up.
    pub table: u32,
}

/// An open rtnetlink connection in the current thread's namespace.
#[derive(Debug, Clone)]
pub struct Rtnl {
    handle: Handle,
}

/// One link as listed by [`Rtnl::links`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
}

impl Rtnl {
    /// Opens a connection in the current thread's namespace; its I/O task runs on the current
    /// (namespace's) runtime. Call from a namespace job.
    pub fn open() -> Result<Rtnl, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Open)?;
        tokio::task::spawn_local(connection);
        Ok(Rtnl { handle })
    }

    /// Index of the link called `name`.
    pub async fn index(&self, name: &str) -> Result<u32, LinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) => Err(LinkError::NoSuchLink(name.to_string())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {
                Err(LinkError::NoSuchLink(name.to_string()))
            }
            Err(source) => Err(LinkError::Request { what: format!("ip link show {name}"), source }),
        }
    }

    /// All links of this namespace, by index.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Request { what: "ip link show".into(), source })?;
        let mut out: Vec<LinkInfo> = msgs
            .into_iter()
            .map(|msg| LinkInfo {
                index: msg.header.index,
                name: msg
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
                up: msg.header.flags.contains(LinkFlags::Up),
            })
            .collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    /// Creates a veth pair: `name` here, `peer_name` directly in the namespace at `peer_netns`.
    /// Both ends start down.
    pub async fn add_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_netns: &Path,
    ) -> Result<(), LinkError> {
        let (peer_ns, builder) = veth(name, peer_name, peer_netns)?;
        let msg = builder.build();
        let result = self.handle.link().add(msg).execute().await;
        drop(peer_ns); // the kernel took its own reference during the request
        result.map_err(|source| LinkError::Request {
            what: format!(
                "ip link add {name} type veth peer name {peer_name} netns {}",
                peer_netns.display()
            ),
            source,
        })
    }

    /// Creates a veth pair in one request: `name` here, up (and enslaved to the bridge
    /// `controller` if given), `peer_name` directly in the namespace at `peer_netns`, still down
    /// — the kernel cannot open a veth end before its peer is linked to it (ENOTCONN), so the
    /// peer's side brings it up, with its addresses, from inside its namespace.
    pub async fn add_veth_up(
        &self,
        name: &str,
        peer_name: &str,
        peer_netns: &Path,
        controller: Option<&str>,
    ) -> Result<(), LinkError> {
        let (peer_ns, builder) = veth(name, peer_name, peer_netns)?;
        let mut builder = builder.up();
        if let Some(bridge) = controller {
            builder = builder.controller(self.index(bridge).await?);
        }
        let result = self.handle.link().add(builder.build()).execute().await;
        drop(peer_ns);
        result.map_err(|source| LinkError::Request {
            what: format!(
                "ip link add {name}{} up type veth peer name {peer_name} netns {}",
                controller.map(|c| format!(" master {c}")).unwrap_or_default(),
                peer_netns.display()
            ),
            source,
        })
    }

    /// Creates a bridge with a fixed MAC address, up.
    pub async fn add_bridge(&self, name: &str, mac: [u8; 6]) -> Result<(), LinkError> {
        let msg = LinkBridge::new(name).address(mac.to_vec()).build();
        self.handle.link().add(msg).execute().await.map_err(|source| LinkError::Request {
            what: format!("ip link add {name} address {} type bridge", format_mac(mac)),
            source,
        })
    }

    /// Deletes a link (for a veth, both ends go).
    pub async fn del_link(&self, name: &str) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|source| LinkError::Request { what: format!("ip link del {name}"), source })
    }

    /// Sets a link administratively up or down.
    pub async fn set_up(&self, name: &str, up: bool) -> Result<(), LinkError> {
        let index = self.index(name).await?;
        let builder = LinkUnspec::new_with_index(index);
        let msg = if up { builder.up() } else { builder.down() }.build();
        self.handle.link().set(msg).execute().await.map_err(|source| LinkError::Request {
            what: format!("ip link set {name} {}", if up { "up" } else { "down" }),
            source,
        })
    }

    /// Waits until a link is operationally up. A veth end set up is not yet usable: until the
    /// kernel's link-watch work has run (asynchronously, later under load) it has no queueing
    /// discipline and drops what is sent — a lost SYN costs a 1 s retransmission. Use after
    /// bringing both ends of a pair up.
    pub async fn wait_running(
        &self,
        name: &str,
        limit: std::time::Duration,
    ) -> Result<(), LinkError> {
        let started = tokio::time::Instant::now();
        loop {
            let mut links = self.handle.link().get().match_name(name.to_string()).execute();
            let msg = links
                .try_next()
                .await
                .map_err(|source| LinkError::Request {
                    what: format!("ip link show {name}"),
                    source,
                })?
                .ok_or_else(|| LinkError::NoSuchLink(name.to_string()))?;
            let state = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::OperState(s) => Some(*s),
                _ => None,
            });
            if state == Some(State::Up) {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(LinkError::NotRunning {
                    name: name.to_string(),
                    state: format!("{state:?}"),
                    waited: limit,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Adds an IPv4 address to a link.
    pub async fn add_address(
        &self,
        dev: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), LinkError> {
        let index = self.index(dev).await?;
        self.handle.address().add(index, addr.into(), prefix).execute().await.map_err(|source| {
            LinkError::Request { what: format!("ip addr add {addr}/{prefix} dev {dev}"), source }
        })
    }

    /// Adds a route.
    pub async fn add_route(&self, route: &Route) -> Result<(), LinkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst, route.prefix)
            .table_id(route.table);
        if let Some(gw) = route.gateway {
            builder = builder.gateway(gw);
        }
        if let Some(dev) = &route.dev {
            builder = builder.output_interface(self.index(dev).await?);
        }
        if route.local {
            builder = builder.kind(RouteType::Local).scope(RouteScope::Host);
        } else if route.gateway.is_none() {
            builder = builder.scope(RouteScope::Link);
        }
        self.handle
            .route()
            .add(builder.build())
            .execute()
            .await
            .map_err(|source| LinkError::Request { what: describe_route(route), source })
    }

    /// Adds an fwmark policy rule.
    pub async fn add_fwmark_rule(&self, rule: FwmarkRule) -> Result<(), LinkError> {
        let mut request = self
            .handle
            .rule()
            .add()
            .v4()
            .fw_mark(rule.mark)
            .priority(rule.pref)
            .table_id(rule.table)
            .action(RuleAction::ToTable);
        request.message_mut().attributes.push(RuleAttribute::FwMask(rule.mask));
        request.execute().await.map_err(|source| LinkError::Request {
            what: format!(
                "ip rule add fwmark {:#x}/{:#x} pref {} lookup {}",
                rule.mark, rule.mask, rule.pref, rule.table
            ),
            source,
        })
    }

    /// The policy routing a captured pod needs (`ip rule add fwmark …/… pref … lookup T` and
    /// `ip route add local 0.0.0.0/0 dev lo table T`), as `ambient-scenarios` describes it.
    pub async fn add_policy_routing(
        &self,
        routing: &ambient_scenarios::rules::PolicyRouting,
    ) -> Result<(), LinkError> {
        self.add_route(&Route::local(Ipv4Addr::UNSPECIFIED, 0, "lo", routing.table)).await?;
        self.add_fwmark_rule(FwmarkRule {
            mark: routing.fwmark,
            mask: routing.mask,
            pref: routing.pref,
            table: routing.table,
        })
        .await
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn describe_route(route: &Route) -> String {
    let mut s = format!(
        "ip route add {}{}/{}",
        if route.local { "local " } else { "" },
        route.dst,
        route.prefix
    );
    if let Some(gw) = route.gateway {
        s += &format!(" via {gw}");
    }
    if let Some(dev) = &route.dev {
        s += &format!(" dev {dev}");
    }
    if route.table != MAIN_TABLE {
        s += &format!(" table {}", route.table);
    }
    s
}

const fn libc_enodev() -> i32 {
    nix::libc::ENODEV
}

impl Netns {
    /// Opens rtnetlink in this namespace, runs `f` with it, and waits for the result.
    pub fn rtnl<F, Fut, T>(&self, f: F) -> Result<T, LinkError>
    where
        F: FnOnce(Rtnl) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, LinkError>> + 'static,
        T: Send + 'static,
    {
        self.run(move || async move { f(Rtnl::open()?).await })?
    }
}

/// A veth request: `name` here, `peer_name` in the namespace at `peer_netns`; with the open
/// namespace file, which must stay open until the request is executed.
fn veth(
    name: &str,
    peer_name: &str,
    peer_netns: &Path,
) -> Result<(File, LinkMessageBuilder<LinkVeth>), LinkError> {
    let peer_ns = File::open(peer_netns).map_err(|source| LinkError::NetnsPath {
        path: peer_netns.display().to_string(),
        source,
    })?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer_name.to_string())
        .setns_by_fd(peer_ns.as_raw_fd())
        .build();
    let builder = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)));
    Ok((peer_ns, builder))
}
