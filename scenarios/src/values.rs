//! The small textual forms of the scenario format and their parsers: sizes (`64KiB`), durations
//! (`250ms`), node pairs (`node-a->node-b`), proxy references (`proxy@node-b`), connection targets
//! (`echo.default:80`, `10.0.2.2:8080`), pod references (`client.default`), conntrack tuple
//! patterns (`10.0.1.5:* -> 10.96.0.10:80`), rule references (`nat/ISTIO_OUTPUT/6`) and names.
//!
//! Each parser takes text and returns the value or a message saying what was expected; the
//! decoder adds the position and key path. The parsed types are shared by the `World`, the
//! `Outcome` and the expectation checker, and print back in the form they are written in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

// ---------------------------------------------------------------- sizes and durations

/// Byte sizes: a plain number of bytes (`1024`) or a number with a binary unit: `B`, `KiB`,
/// `MiB`, `GiB` (`64KiB` = 65,536 bytes). Decimal units (`KB`, `MB`) are rejected on purpose:
/// half the world reads them as 1,024 and half as 1,000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = (&t[..split], t[split..].trim_start());
    let expected = "expected a size such as 1024, 512B, 64KiB or 1MiB";
    if digits.is_empty() {
        return Err(format!("{expected}, found {text:?}"));
    }
    let n: u64 = digits.parse().map_err(|_| format!("size {text:?} is too large"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "K" | "k" | "KB" | "kB" | "Kb" | "kb" | "M" | "MB" | "Mb" | "mb" | "G" | "GB" | "gb" => {
            return Err(format!("unit `{unit}` is ambiguous; use B, KiB (1024 bytes), MiB or GiB"));
        }
        _ => return Err(format!("{expected} (units B, KiB, MiB, GiB), found {text:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {text:?} is too large"))
}

/// Durations: one or more `<integer><unit>` parts with units `ms`, `s`, `m`, `h`
/// (`250ms`, `30s`, `5m`, `2h`, `1m30s`). A bare number is rejected: its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as 250ms, 30s, 5m or 2h";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("{expected}, found an empty string"));
    }
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{expected}; `{t}` has no unit"));
    }
    let mut rest = t;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if split == 0 {
            return Err(format!("{expected}, found {text:?}"));
        }
        let n: u64 = rest[..split].parse().map_err(|_| format!("duration {text:?} is too long"))?;
        rest = &rest[split..];
        if rest.starts_with('.') {
            return Err(format!(
                "{expected}; durations take whole numbers (write 1500ms, not 1.5s)"
            ));
        }
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            unit => {
                return Err(format!("{expected}; unknown unit `{unit}` (units: ms, s, m, h)"));
            }
        };
        rest = &rest[unit_len..];
        total_ms = n
            .checked_mul(ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Prints a duration the way the format writes it (`1m30s`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

// ---------------------------------------------------------------- names

/// A Kubernetes DNS-1123 label: 1–63 characters of `a-z`, `0-9`, `-`, starting and ending
/// alphanumeric. Pod, service, namespace, node and external host names are labels (so `.`
/// separates a name from its namespace and `->` separates node names unambiguously).
pub fn check_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// A DNS-1123 subdomain (labels joined by `.`), as service account names and trust domains are.
pub fn check_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 || name.split('.').any(|l| check_label(l).is_err()) {
        return Err(format!(
            "{name:?} is not a valid DNS name: use lowercase letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

/// A DNS name to look up or to serve (`echo.default.svc.cluster.local`, `Example.COM.`):
/// labels of 1–63 letters, digits, `-` and `_`, at most 253 characters, a trailing dot
/// allowed. Returned without the trailing dot, as written otherwise (DNS compares names
/// case-insensitively).
pub fn parse_dns_name(text: &str) -> Result<String, String> {
    let t = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if t.is_empty() || t.len() > 253 || !t.split('.').all(label_ok) {
        return Err(format!(
            "{text:?} is not a DNS name: use labels of 1-63 letters, digits, '-' and '_' separated by '.'"
        ));
    }
    Ok(t.to_string())
}

/// A scenario id or tag: letters, digits, `-`, `_`, `.`; it names files and filters runs.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} is not a valid id: use letters, digits, '-', '_' and '.'"))
    }
}

// ---------------------------------------------------------------- addresses

/// Parses an IPv4 address a workload, VIP or external host can have: not loopback, link-local,
/// multicast, broadcast, "this network" (0/8) or reserved (240/4, which the simulator keeps for
/// its own substrate addresses).
pub fn parse_host_ip(text: &str) -> Result<Ipv4Addr, String> {
    let ip = parse_ipv4(text)?;
    let o = ip.octets();
    let why = if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local (169.254/16; only an external host may be the kubelet probe address)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved (240/4)")
    } else if o[0] == 0 {
        Some("in 0.0.0.0/8")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("{ip} is {why}; expected a unicast address")),
        None => Ok(ip),
    }
}

/// Parses an external host's address: as [`parse_host_ip`], and also the kubelet probe
/// address (`169.254.7.127`, the only link-local one), so a host there can stand in for the
/// node's kubelet and show that probes are not redirected.
pub fn parse_external_ip(text: &str) -> Result<Ipv4Addr, String> {
    match parse_ipv4(text) {
        Ok(ip) if ip == ambient_proxy::inpod::DEFAULT_PROBE_ADDR => Ok(ip),
        Ok(ip) if ip.is_link_local() => Err(format!(
            "{ip} is link-local; expected a unicast address (of 169.254/16 only the kubelet \
             probe address {} is allowed, for an external host)",
            ambient_proxy::inpod::DEFAULT_PROBE_ADDR
        )),
        _ => parse_host_ip(text),
    }
}

/// Parses an IPv4 address (this data plane model is IPv4 only).
pub fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    match text.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!("{text:?} is an IPv6 address; scenarios are IPv4 only")),
        Err(_) => Err(format!("{text:?} is not an IPv4 address")),
    }
}

/// A port: 1–65535.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is out of range 1-65535")),
        Err(_) => Err(format!("{text:?} is not a port number (1-65535)")),
    }
}

// ---------------------------------------------------------------- references

/// `name` or `name.namespace`: how steps and expectations name a pod, service or host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameRef {
    pub name: String,
    pub namespace: Option<String>,
}

impl FromStr for NameRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, namespace) = match text.split_once('.') {
            Some((n, ns)) => (n, Some(ns)),
            None => (text, None),
        };
        check_label(name)?;
        if let Some(ns) = namespace {
            if ns.contains('.') {
                return Err(format!(
                    "{text:?} has more than one dot; write `name` or `name.namespace`"
                ));
            }
            check_label(ns)?;
        }
        Ok(NameRef { name: name.to_string(), namespace: namespace.map(str::to_string) })
    }
}

impl fmt::Display for NameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}.{ns}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where a `connect` goes, as written: `ip:port` or `name[.ns]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    Ip(Ipv4Addr, u16),
    Name(NameRef, u16),
}

impl FromStr for TargetRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = "expected `name[.namespace]:port` or `ip:port`";
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{expected}; {text:?} has no port"));
        };
        let port = parse_port(port)?;
        if host.chars().next().is_some_and(|c| c.is_ascii_digit()) && host.parse::<IpAddr>().is_ok()
        {
            return Ok(TargetRef::Ip(parse_ipv4(host)?, port));
        }
        if host.contains(':') {
            return Err(format!("{text:?}: IPv6 targets are not supported"));
        }
        let name = host.parse::<NameRef>().map_err(|e| format!("{expected}; {e}"))?;
        Ok(TargetRef::Name(name, port))
    }
}

/// A directed pair of nodes: `node-a->node-b` (spaces around `->` are allowed when writing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodePair {
    pub from: String,
    pub to: String,
}

impl FromStr for NodePair {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((a, b)) = text.split_once("->") else {
            return Err(format!("expected a node pair such as `node-a->node-b`, found {text:?}"));
        };
        let (a, b) = (a.trim(), b.trim());
        check_label(a)?;
        check_label(b)?;
        Ok(NodePair { from: a.to_string(), to: b.to_string() })
    }
}

impl fmt::Display for NodePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from, self.to)
    }
}

impl Serialize for NodePair {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `proxy@node-b`: the node proxy of a node (the fault forms restart/crash/start take it).
pub fn parse_proxy_ref(text: &str) -> Result<String, String> {
    match text.split_once('@') {
        Some(("proxy", node)) => {
            check_label(node)?;
            Ok(node.to_string())
        }
        _ => Err(format!("expected `proxy@<node>`, found {text:?}")),
    }
}

// ---------------------------------------------------------------- conntrack and counters

/// One side of a conntrack tuple pattern: an address and a port, or `*` for any port (the
/// ephemeral ports a test cannot know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrPattern {
    pub ip: Ipv4Addr,
    /// `None` = `*`.
    pub port: Option<u16>,
}

impl AddrPattern {
    pub fn matches(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.ip == ip && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.ip),
            None => write!(f, "{}:*", self.ip),
        }
    }
}

/// `src:port -> dst:port` with `*` allowed for ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TuplePattern {
    pub src: AddrPattern,
    pub dst: AddrPattern,
}

impl FromStr for TuplePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = "expected `ip:port -> ip:port` (a port may be `*`)";
        let Some((a, b)) = text.split_once("->") else {
            return Err(format!("{expected}, found {text:?}"));
        };
        let side = |s: &str| -> Result<AddrPattern, String> {
            let s = s.trim();
            let Some((ip, port)) = s.rsplit_once(':') else {
                return Err(format!("{expected}; {s:?} has no port"));
            };
            let ip = parse_ipv4(ip)?;
            let port = if port == "*" { None } else { Some(parse_port(port)?) };
            Ok(AddrPattern { ip, port })
        };
        Ok(TuplePattern { src: side(a)?, dst: side(b)? })
    }
}

impl fmt::Display for TuplePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

// ---------------------------------------------------------------- rules

/// Tables and rules by position are the kernel model's vocabulary (`ambient_kernel::rules`),
/// shared with both backends; the scenario format writes them as that crate parses and prints
/// them.
pub use ambient_kernel::rules::{RuleRef, Table, rule_positions};

#[cfg(test)]
mod tests;
