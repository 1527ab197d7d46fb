//! IPv4 routing of one network namespace: interfaces and addresses, routing tables (local, main
//! and numbered ones), and policy rules (`ip rule`, fwmark selectors included).
//!
//! Addresses create the routes the kernel creates for them: in the local table `local ADDR`,
//! `broadcast` for the subnet broadcast address and, on loopback, `local NET/LEN` for the whole
//! prefix (127.0.0.0/8 is local); in main a connected route per non-loopback prefix. Lookups walk
//! the policy rules in priority order (`0 local`, then custom rules, `32766 main`,
//! `32767 default`), longest prefix first within a table; `throw` continues with the next rule.
//! [`Routing::ip`] reads `ip route/rule/addr add …` arguments, so the same commands that set up
//! a real namespace set up the model. Simplifications: no metrics/ECMP, no route cache, no
//! reverse-path filter (rp_filter 0, the default in a new namespace), every interface is up.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::addr::{Cidr, IfKey, prefix_mask};
use super::rules::parse_u32;

/// Index of an interface in [`Routing::interfaces`] (lo is always 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IfIndex(pub u16);

impl IfIndex {
    pub const LO: IfIndex = IfIndex(0);
}

/// One interface with its addresses (the first is the primary one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub key: IfKey,
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// Route types, as `ip route` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteType {
    Unicast,
    Local,
    Broadcast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
}

impl RouteType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unicast" => RouteType::Unicast,
            "local" => RouteType::Local,
            "broadcast" => RouteType::Broadcast,
            "blackhole" => RouteType::Blackhole,
            "unreachable" => RouteType::Unreachable,
            "prohibit" => RouteType::Prohibit,
            "throw" => RouteType::Throw,
            _ => return None,
        })
    }
}

/// Table ids with names.
pub const TABLE_LOCAL: u32 = 255;
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_DEFAULT: u32 = 253;

/// One route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub kind: RouteType,
    pub dev: Option<IfIndex>,
    pub via: Option<Ipv4Addr>,
    pub src: Option<Ipv4Addr>,
    /// Created by the kernel for an address (regenerated when addresses change).
    pub from_address: bool,
}

/// What a policy rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Lookup(u32),
    Blackhole,
    Unreachable,
    Prohibit,
}

/// `ip rule`: selectors and an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    pub pref: u32,
    pub from: Cidr,
    pub to: Cidr,
    pub fwmark: Option<(u32, u32)>,
    pub iif: Option<IfKey>,
    pub invert: bool,
    pub action: RuleAction,
}

impl PolicyRule {
    #[inline]
    fn matches(&self, dst: u32, src: u32, mark: u32, iif: IfKey) -> bool {
        let hit = self.from.contains(src)
            && self.to.contains(dst)
            && self.fwmark.is_none_or(|(v, m)| mark & m == v)
            && self.iif.is_none_or(|k| k == iif);
        hit != self.invert
    }
}

/// A successful lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RouteResult {
    /// `Local` and `Broadcast` deliver locally; `Unicast` leaves (or is forwarded).
    pub kind: RouteType,
    /// Output device (`lo` for local delivery of locally generated packets).
    pub dev: IfIndex,
    /// Next hop: the gateway, or the destination itself when on-link.
    pub next_hop: Ipv4Addr,
    /// Preferred source address of the route, if it has one.
    pub prefsrc: Option<Ipv4Addr>,
    pub table: u32,
}

/// Why there is no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteError {
    /// ENETUNREACH: nothing matched.
    NetUnreachable,
    /// A `blackhole` route or rule.
    Blackhole,
    /// An `unreachable` route or rule.
    HostUnreachable,
    /// A `prohibit` route or rule.
    Prohibited,
    /// Input: a martian source or destination, or the source is one of our addresses. Output: a
    /// loopback source leaving through a device other than `lo` (the kernel's EINVAL).
    Martian,
    /// Input only: the destination is not local and forwarding is off.
    NotForwarding,
    /// Output only: EINVAL, a loopback source address on a route through a device other than
    /// `lo` (`route_localnet` is not modelled, it is off by default).
    LoopbackSource,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteError::NetUnreachable => "network unreachable",
            RouteError::Blackhole => "blackhole",
            RouteError::HostUnreachable => "host unreachable",
            RouteError::Prohibited => "prohibited",
            RouteError::Martian => "martian packet",
            RouteError::NotForwarding => "not local and forwarding is disabled",
            RouteError::LoopbackSource => "loopback source on a non-loopback device",
        })
    }
}

/// Interfaces, addresses, tables and policy rules of one network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    interfaces: Vec<Interface>,
    /// (table id, routes sorted by prefix length, longest first).
    tables: Vec<(u32, Vec<Route>)>,
    rules: Vec<PolicyRule>,
}

impl Default for Routing {
    fn default() -> Self {
        Self::new()
    }
}

impl Routing {
    /// A fresh namespace: `lo` with 127.0.0.1/8 and the three default policy rules.
    pub fn new() -> Self {
        let lo = Interface { name: "lo".into(), key: IfKey::new("lo").expect("lo"), addrs: vec![] };
        let rule = |pref, table| PolicyRule {
            pref,
            from: Cidr::ANY,
            to: Cidr::ANY,
            fwmark: None,
            iif: None,
            invert: false,
            action: RuleAction::Lookup(table),
        };
        let mut r = Routing {
            interfaces: vec![lo],
            tables: vec![(TABLE_LOCAL, vec![]), (TABLE_MAIN, vec![]), (TABLE_DEFAULT, vec![])],
            rules: vec![rule(0, TABLE_LOCAL), rule(32766, TABLE_MAIN), rule(32767, TABLE_DEFAULT)],
        };
        r.add_address(IfIndex::LO, Ipv4Addr::LOCALHOST, 8).expect("lo address");
        r
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    pub fn interface(&self, i: IfIndex) -> &Interface {
        &self.interfaces[usize::from(i.0)]
    }

    pub fn find_interface(&self, name: &str) -> Option<IfIndex> {
        self.interfaces.iter().position(|i| i.name == name).map(|i| IfIndex(i as u16))
    }

    /// The interface, created if it does not exist.
    pub fn ensure_interface(&mut self, name: &str) -> Result<IfIndex, String> {
        if let Some(i) = self.find_interface(name) {
            return Ok(i);
        }
        let key =
            IfKey::new(name).ok_or_else(|| format!("`{name}` is not a valid interface name"))?;
        if self.interfaces.len() >= usize::from(u16::MAX) {
            return Err("too many interfaces".into());
        }
        self.interfaces.push(Interface { name: name.into(), key, addrs: vec![] });
        Ok(IfIndex(self.interfaces.len() as u16 - 1))
    }

    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    pub fn table(&self, id: u32) -> &[Route] {
        self.tables.iter().find(|(t, _)| *t == id).map_or(&[], |(_, r)| r)
    }

    fn table_mut(&mut self, id: u32) -> &mut Vec<Route> {
        if let Some(i) = self.tables.iter().position(|(t, _)| *t == id) {
            return &mut self.tables[i].1;
        }
        self.tables.push((id, Vec::new()));
        &mut self.tables.last_mut().expect("pushed").1
    }

    /// Adds `addr/len` to an interface, with the routes the kernel derives from it.
    pub fn add_address(&mut self, dev: IfIndex, addr: Ipv4Addr, len: u8) -> Result<(), String> {
        if len > 32 {
            return Err(format!("prefix length {len} is over 32"));
        }
        let iface = &mut self.interfaces[usize::from(dev.0)];
        if iface.addrs.iter().any(|(a, _)| *a == addr) {
            return Err(format!("{addr} is already on {}", iface.name));
        }
        iface.addrs.push((addr, len));
        self.rebuild_address_routes();
        Ok(())
    }

    fn rebuild_address_routes(&mut self) {
        for (_, routes) in &mut self.tables {
            routes.retain(|r| !r.from_address);
        }
        let mut local = Vec::new();
        let mut main = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let dev = Some(IfIndex(i as u16));
            let loopback = i == 0;
            for &(addr, len) in &iface.addrs {
                let route = |dst: Cidr, kind| Route {
                    dst,
                    kind,
                    dev,
                    via: None,
                    src: Some(addr),
                    from_address: true,
                };
                let net = Cidr::new(addr, len).expect("len checked");
                local.push(route(Cidr::host(addr), RouteType::Local));
                if len < 31 {
                    let bcast = Ipv4Addr::from(u32::from(addr) | !prefix_mask(len));
                    local.push(route(Cidr::host(bcast), RouteType::Broadcast));
                }
                if loopback {
                    if len < 32 {
                        local.push(route(net, RouteType::Local));
                    }
                } else if len < 32 {
                    main.push(route(net, RouteType::Unicast));
                }
            }
        }
        for r in local {
            self.insert_route(TABLE_LOCAL, r);
        }
        for r in main {
            self.insert_route(TABLE_MAIN, r);
        }
    }

    fn insert_route(&mut self, table: u32, route: Route) {
        let routes = self.table_mut(table);
        let at = routes.partition_point(|r| r.dst.prefix_len() >= route.dst.prefix_len());
        routes.insert(at, route);
    }

    /// Adds a route to a table (`ip route add … table N`).
    pub fn add_route(&mut self, table: u32, route: Route) -> Result<(), String> {
        if self.table(table).iter().any(|r| r.dst == route.dst) {
            return Err(format!("a route to {} already exists in table {table}", route.dst));
        }
        self.insert_route(table, route);
        Ok(())
    }

    /// Adds a policy rule, kept sorted by priority (stable for equal priorities).
    pub fn add_rule(&mut self, rule: PolicyRule) {
        let at = self.rules.partition_point(|r| r.pref <= rule.pref);
        self.rules.insert(at, rule);
    }

    /// The priority `ip rule add` picks when none is given: one below the first rule after 0.
    fn default_pref(&self) -> u32 {
        self.rules.iter().map(|r| r.pref).find(|&p| p > 0).map_or(0, |p| p - 1)
    }

    /// Route lookup through the policy rules. `iif` is the input interface (`lo` for locally
    /// generated packets, as in the kernel's output lookups).
    pub fn lookup(
        &self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        mark: u32,
        iif: IfIndex,
    ) -> Result<RouteResult, RouteError> {
        let (d, s) = (u32::from(dst), u32::from(src));
        let iif_key = self.interface(iif).key;
        for rule in &self.rules {
            if !rule.matches(d, s, mark, iif_key) {
                continue;
            }
            let table = match rule.action {
                RuleAction::Lookup(t) => t,
                RuleAction::Blackhole => return Err(RouteError::Blackhole),
                RuleAction::Unreachable => return Err(RouteError::HostUnreachable),
                RuleAction::Prohibit => return Err(RouteError::Prohibited),
            };
            let Some(route) = self.table(table).iter().find(|r| r.dst.contains(d)) else {
                continue;
            };
            let dev = route.dev.unwrap_or(IfIndex::LO);
            return match route.kind {
                RouteType::Throw => continue,
                RouteType::Blackhole => Err(RouteError::Blackhole),
                RouteType::Unreachable => Err(RouteError::HostUnreachable),
                RouteType::Prohibit => Err(RouteError::Prohibited),
                kind => Ok(RouteResult {
                    kind,
                    dev,
                    next_hop: route.via.unwrap_or(dst),
                    prefsrc: route.src,
                    table,
                }),
            };
        }
        Err(RouteError::NetUnreachable)
    }

    /// Output route of a locally generated packet: local destinations leave through `lo`; a
    /// 127/8 source may only leave through `lo` (`__mkroute_output`).
    pub fn output(
        &self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        mark: u32,
    ) -> Result<RouteResult, RouteError> {
        let mut r = self.lookup(dst, src, mark, IfIndex::LO)?;
        if matches!(r.kind, RouteType::Local | RouteType::Broadcast) {
            r.dev = IfIndex::LO;
        }
        if src.is_loopback() && r.dev != IfIndex::LO {
            return Err(RouteError::LoopbackSource);
        }
        Ok(r)
    }

    /// Input route of a packet arriving on `iif`, with the kernel's martian checks
    /// (`forwarding` is `net.ipv4.ip_forward`).
    pub fn input(
        &self,
        dst: Ipv4Addr,
        src: Ipv4Addr,
        mark: u32,
        iif: IfIndex,
        forwarding: bool,
    ) -> Result<RouteResult, RouteError> {
        let lo = iif == IfIndex::LO;
        if src.is_multicast() || src.is_broadcast() || src.octets()[0] == 0 {
            return Err(RouteError::Martian);
        }
        // 127/8 is martian on every device, `lo` included (`route_localnet` is off): a looped
        // packet whose route nat PREROUTING dropped is routed here like any other (kernel 6.18,
        // differential suite seed 10299: REDIRECT of a looped packet to 127.0.0.1 drops it).
        if src.is_loopback() || dst.is_loopback() {
            return Err(RouteError::Martian);
        }
        if dst.is_broadcast() {
            return Ok(RouteResult {
                kind: RouteType::Broadcast,
                dev: iif,
                next_hop: dst,
                prefsrc: None,
                table: TABLE_LOCAL,
            });
        }
        if dst.octets()[0] == 0 {
            return Err(RouteError::Martian);
        }
        let r = self.lookup(dst, src, mark, iif)?;
        match r.kind {
            RouteType::Local | RouteType::Broadcast => {
                // A packet from outside claiming one of our addresses is a martian
                // (accept_local 0).
                if !lo && self.is_local_address(src) {
                    return Err(RouteError::Martian);
                }
                Ok(r)
            }
            _ if !forwarding => Err(RouteError::NotForwarding),
            _ => Ok(r),
        }
    }

    /// Whether `addr` is assigned to an interface of this namespace.
    pub fn is_local_address(&self, addr: Ipv4Addr) -> bool {
        self.interfaces.iter().any(|i| i.addrs.iter().any(|(a, _)| *a == addr))
    }

    /// The primary (first) address of an interface.
    pub fn primary_address(&self, dev: IfIndex) -> Option<Ipv4Addr> {
        self.interface(dev).addrs.first().map(|(a, _)| *a)
    }

    /// `inet_select_addr(dev, dst, RT_SCOPE_UNIVERSE)`: a primary address of `dev` that is not
    /// a loopback (host-scope) address, preferring one whose subnet holds `dst`; failing that,
    /// the first such address of any interface in interface order (lo first). MASQUERADE picks
    /// its source this way — out of `lo` that is another interface's address.
    pub fn select_address(&self, dev: IfIndex, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let eligible = |iface: &Interface| -> Vec<(Ipv4Addr, u8)> {
            let mut primaries: Vec<(Ipv4Addr, u8)> = Vec::new();
            for &(a, l) in &iface.addrs {
                // An address inside the subnet of an earlier one is a secondary address.
                let secondary = primaries
                    .iter()
                    .any(|(p, pl)| Cidr::new(*p, *pl).is_some_and(|c| c.contains(u32::from(a))));
                if !secondary {
                    primaries.push((a, l));
                }
            }
            primaries.retain(|(a, _)| !a.is_loopback());
            primaries
        };
        let here = eligible(self.interface(dev));
        let d = u32::from(dst);
        if let Some((a, _)) = here
            .iter()
            .find(|(a, l)| Cidr::new(*a, *l).is_some_and(|c| c.contains(d)))
            .or(here.first())
        {
            return Some(*a);
        }
        self.interfaces.iter().find_map(|i| eligible(i).first().map(|(a, _)| *a))
    }

    /// The source address the kernel would pick for a new connection to `dst` with `mark`
    /// (route's preferred source, else an address of the output device on the next hop's
    /// subnet, else its primary address; local destinations use the destination itself).
    pub fn source_for(&self, dst: Ipv4Addr, mark: u32) -> Result<Ipv4Addr, RouteError> {
        let r = self.output(dst, Ipv4Addr::UNSPECIFIED, mark)?;
        if let Some(src) = r.prefsrc {
            return Ok(src);
        }
        if r.kind == RouteType::Local {
            return Ok(dst);
        }
        let iface = self.interface(r.dev);
        let hop = u32::from(r.next_hop);
        let on_subnet =
            iface.addrs.iter().find(|(a, l)| Cidr::new(*a, *l).is_some_and(|c| c.contains(hop)));
        on_subnet.or(iface.addrs.first()).map(|(a, _)| *a).ok_or(RouteError::NetUnreachable)
    }

    /// The `-m addrtype` type of an address (an `RTN_*` number): broadcast and multicast by
    /// class, otherwise the type of its route in the local table, otherwise unicast. With `dev`
    /// (`--limit-iface-in/out`), a local-table route on another device does not count.
    pub fn addr_type(&self, addr: Ipv4Addr, dev: Option<IfIndex>) -> u8 {
        const UNICAST: u8 = 1;
        const LOCAL: u8 = 2;
        const BROADCAST: u8 = 3;
        const MULTICAST: u8 = 5;
        if addr.octets()[0] == 0 || addr.is_broadcast() {
            return BROADCAST;
        }
        if addr.is_multicast() {
            return MULTICAST;
        }
        let a = u32::from(addr);
        match self.table(TABLE_LOCAL).iter().find(|r| r.dst.contains(a)) {
            Some(r) if dev.is_none_or(|d| r.dev == Some(d)) => match r.kind {
                RouteType::Local => LOCAL,
                RouteType::Broadcast => BROADCAST,
                _ => UNICAST,
            },
            _ => UNICAST,
        }
    }

    /// Applies one `ip` command (without the leading `ip`): `addr add A/L dev D`,
    /// `route add [TYPE] PREFIX|default [via G] [dev D] [src S] [table T]`,
    /// `rule add [not] [from P] [to P] [fwmark V[/M]] [iif D] [pref N] lookup T|blackhole|…`.
    /// Errors name the word at fault.
    pub fn ip(&mut self, command: &str) -> Result<(), String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let words = match words.first() {
            Some(&"ip") => &words[1..],
            _ => &words[..],
        };
        match words {
            [obj, "add", rest @ ..] if "address".starts_with(obj) && !obj.is_empty() => {
                self.ip_addr(rest)
            }
            [obj, "add", rest @ ..] if "route".starts_with(obj) && !obj.is_empty() => {
                self.ip_route(rest)
            }
            [obj, "add", rest @ ..] if "rule".starts_with(obj) && obj.len() >= 2 => {
                self.ip_rule(rest)
            }
            _ => Err(format!("`{command}`: expected `addr add …`, `route add …` or `rule add …`")),
        }
    }

    fn ip_addr(&mut self, words: &[&str]) -> Result<(), String> {
        let [cidr, "dev", dev] = words else {
            return Err(format!("`{}`: expected `ADDR/LEN dev NAME`", words.join(" ")));
        };
        let (a, l) = cidr.split_once('/').unwrap_or((cidr, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("`{a}`: expected an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or(format!("`{l}`: expected a prefix length 0-32"))?;
        let dev = self.ensure_interface(dev)?;
        self.add_address(dev, addr, len)
    }

    fn ip_route(&mut self, words: &[&str]) -> Result<(), String> {
        let mut it = words.iter().copied().peekable();
        let mut kind = RouteType::Unicast;
        if let Some(t) = it.peek().and_then(|w| RouteType::parse(w)) {
            kind = t;
            it.next();
        }
        let dst = match it.next() {
            Some("default") => Cidr::ANY,
            Some(p) => Cidr::parse(p).map_err(|e| format!("`{p}`: expected {e}"))?,
            None => return Err("expected a destination prefix".into()),
        };
        let (mut via, mut dev, mut src, mut table) = (None, None, None, TABLE_MAIN);
        while let Some(key) = it.next() {
            let val = it.next().ok_or(format!("`{key}`: expected a value after it"))?;
            match key {
                "via" => {
                    via = Some(
                        val.parse().map_err(|_| format!("`{val}`: expected a gateway address"))?,
                    )
                }
                "dev" => dev = Some(self.ensure_interface(val)?),
                "src" => {
                    src = Some(
                        val.parse().map_err(|_| format!("`{val}`: expected a source address"))?,
                    )
                }
                "table" => table = parse_table(val)?,
                "metric" | "proto" | "scope" | "onlink" => {}
                other => return Err(format!("`{other}`: expected via, dev, src or table")),
            }
        }
        if kind == RouteType::Unicast && dev.is_none() && via.is_none() {
            return Err("a unicast route needs `dev` or `via`".into());
        }
        if dev.is_none()
            && let Some(gw) = via
        {
            let g = u32::from(gw);
            let hop = self.table(TABLE_MAIN).iter().find(|r| r.dst.contains(g) && r.dev.is_some());
            dev = Some(
                hop.and_then(|r| r.dev)
                    .ok_or(format!("`{gw}`: gateway is not on a connected network"))?,
            );
        }
        self.add_route(table, Route { dst, kind, dev, via, src, from_address: false })
    }

    fn ip_rule(&mut self, words: &[&str]) -> Result<(), String> {
        let mut rule = PolicyRule {
            pref: self.default_pref(),
            from: Cidr::ANY,
            to: Cidr::ANY,
            fwmark: None,
            iif: None,
            invert: false,
            action: RuleAction::Lookup(TABLE_MAIN),
        };
        let mut it = words.iter().copied();
        let mut have_action = false;
        while let Some(key) = it.next() {
            let mut val = || it.next().ok_or(format!("`{key}`: expected a value after it"));
            match key {
                "not" => rule.invert = true,
                "from" | "to" => {
                    let v = val()?;
                    let c = if v == "all" {
                        Cidr::ANY
                    } else {
                        Cidr::parse(v).map_err(|e| format!("`{v}`: expected {e}"))?
                    };
                    if key == "from" { rule.from = c } else { rule.to = c }
                }
                "fwmark" => {
                    let v = val()?;
                    let (m, mask) = v.split_once('/').unwrap_or((v, "0xffffffff"));
                    let bad = || format!("`{v}`: expected a mark VALUE[/MASK]");
                    rule.fwmark =
                        Some((parse_u32(m).ok_or_else(bad)?, parse_u32(mask).ok_or_else(bad)?));
                }
                "iif" => {
                    let v = val()?;
                    rule.iif =
                        Some(IfKey::new(v).ok_or(format!("`{v}`: expected an interface name"))?);
                }
                "pref" | "priority" | "order" => {
                    let v = val()?;
                    rule.pref =
                        v.parse().map_err(|_| format!("`{v}`: expected a priority number"))?;
                }
                "lookup" | "table" => {
                    rule.action = RuleAction::Lookup(parse_table(val()?)?);
                    have_action = true;
                }
                "blackhole" | "unreachable" | "prohibit" => {
                    rule.action = match key {
                        "blackhole" => RuleAction::Blackhole,
                        "unreachable" => RuleAction::Unreachable,
                        _ => RuleAction::Prohibit,
                    };
                    have_action = true;
                }
                other => {
                    return Err(format!(
                        "`{other}`: expected from, to, fwmark, iif, pref or lookup"
                    ));
                }
            }
        }
        if !have_action {
            return Err("expected `lookup TABLE` (or blackhole/unreachable/prohibit)".into());
        }
        self.add_rule(rule);
        Ok(())
    }
}

fn parse_table(v: &str) -> Result<u32, String> {
    match v {
        "local" => Ok(TABLE_LOCAL),
        "main" => Ok(TABLE_MAIN),
        "default" => Ok(TABLE_DEFAULT),
        n => n.parse().map_err(|_| format!("`{n}`: expected a table number or local/main/default")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Routing {
        let mut r = Routing::new();
        r.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
        r.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        r.ip("rule add fwmark 0x111/0xfff pref 32764 lookup 100").unwrap();
        r.ip("route add local 0.0.0.0/0 dev lo table 100").unwrap();
        r
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn local_table_matches_what_the_kernel_creates() {
        let r = pod();
        let local: Vec<String> = r
            .table(TABLE_LOCAL)
            .iter()
            .map(|x| format!("{:?} {} {}", x.kind, x.dst, r.interface(x.dev.unwrap()).name))
            .collect();
        assert_eq!(
            local,
            [
                "Local 127.0.0.1/32 lo",
                "Broadcast 127.255.255.255/32 lo",
                "Local 10.0.1.5/32 eth0",
                "Broadcast 10.0.1.255/32 eth0",
                "Local 127.0.0.0/8 lo",
            ]
        );
    }

    #[test]
    fn output_routes_local_destinations_through_lo_and_honours_fwmark_rules() {
        let r = pod();
        let any = Ipv4Addr::UNSPECIFIED;
        let remote = r.output(ip("10.9.9.9"), any, 0).unwrap();
        assert_eq!(
            (remote.kind, remote.dev, remote.next_hop),
            (RouteType::Unicast, IfIndex(1), ip("10.0.1.1"))
        );
        let own = r.output(ip("10.0.1.5"), any, 0).unwrap();
        assert_eq!((own.kind, own.dev), (RouteType::Local, IfIndex::LO));
        let marked = r.output(ip("10.9.9.9"), any, 0x1111).unwrap();
        assert_eq!((marked.kind, marked.dev, marked.table), (RouteType::Local, IfIndex::LO, 100));
        assert_eq!(r.output(ip("127.3.4.5"), any, 0).unwrap().kind, RouteType::Local);
        assert_eq!(r.source_for(ip("10.9.9.9"), 0).unwrap(), ip("10.0.1.5"));
        assert_eq!(r.source_for(ip("127.0.0.1"), 0).unwrap(), ip("127.0.0.1"));
        let bare = Routing::new();
        assert_eq!(bare.output(ip("8.8.8.8"), any, 0), Err(RouteError::NetUnreachable));
    }

    /// Kernel 6.18 (`__mkroute_output`): a 127.x source may not leave through eth0.
    #[test]
    fn a_loopback_source_leaves_through_lo_only() {
        let r = pod();
        let lo = ip("127.0.0.1");
        assert_eq!(r.output(ip("10.0.1.1"), lo, 0), Err(RouteError::LoopbackSource));
        assert_eq!(r.output(lo, lo, 0).unwrap().dev, IfIndex::LO);
        assert_eq!(r.output(ip("10.9.9.9"), lo, 0x111).unwrap().dev, IfIndex::LO);
    }

    #[test]
    fn input_drops_martians_and_forwards_only_when_enabled() {
        let r = pod();
        let eth0 = r.find_interface("eth0").unwrap();
        let peer = ip("10.0.2.7");
        assert_eq!(r.input(ip("10.0.1.5"), peer, 0, eth0, false).unwrap().kind, RouteType::Local);
        assert_eq!(r.input(ip("127.0.0.1"), peer, 0, eth0, false), Err(RouteError::Martian));
        assert_eq!(
            r.input(ip("10.0.1.5"), ip("10.0.1.5"), 0, eth0, false),
            Err(RouteError::Martian)
        );
        assert_eq!(r.input(ip("10.9.9.9"), peer, 0, eth0, false), Err(RouteError::NotForwarding));
        let local = ip("10.0.1.5");
        assert_eq!(
            r.input(ip("127.0.0.1"), local, 0, IfIndex::LO, false),
            Err(RouteError::Martian)
        );
        assert_eq!(
            r.input(local, ip("127.0.0.1"), 0, IfIndex::LO, false),
            Err(RouteError::Martian)
        );
        assert_eq!(r.input(local, local, 0, IfIndex::LO, false).unwrap().kind, RouteType::Local);
        assert_eq!(r.input(ip("10.9.9.9"), peer, 0, eth0, true).unwrap().kind, RouteType::Unicast);
        assert_eq!(
            r.input(ip("10.9.9.9"), peer, 0x111, eth0, false).unwrap().kind,
            RouteType::Local
        );
    }

    #[test]
    fn addrtype_uses_the_local_table() {
        let r = pod();
        assert_eq!(r.addr_type(ip("10.0.1.5"), None), 2);
        assert_eq!(r.addr_type(ip("127.9.9.9"), None), 2);
        assert_eq!(r.addr_type(ip("10.0.1.255"), None), 3);
        assert_eq!(r.addr_type(ip("10.9.9.9"), None), 1);
        assert_eq!(r.addr_type(ip("224.0.0.1"), None), 5);
        assert_eq!(r.addr_type(ip("10.0.1.5"), Some(IfIndex::LO)), 1);
    }

    #[test]
    fn ip_commands_report_the_bad_word() {
        let mut r = Routing::new();
        assert!(r.ip("route add 10.0.0.0/33 dev eth0").unwrap_err().contains("10.0.0.0/33"));
        assert!(r.ip("rule add fwmark zz lookup 1").unwrap_err().contains("zz"));
        assert!(r.ip("rule add fwmark 1").unwrap_err().contains("lookup"));
        assert!(r.ip("link add x").is_err());
        r.ip("rule add fwmark 1 lookup 7").unwrap();
        assert_eq!(r.rules().iter().map(|x| x.pref).collect::<Vec<_>>(), [0, 32765, 32766, 32767]);
    }
}
