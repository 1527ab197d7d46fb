//! IPv4 prefixes and interface names in the forms the kernel compares them.
//!
//! A [`Cidr`] keeps its mask precomputed and its address canonical (host bits cleared, as
//! `iptables-save` prints `10.0.0.1/8` back as `10.0.0.0/8`). Interface names are compared the way
//! `ip_tables` does it: the name packed into a 16-byte key and compared under a byte mask, so
//! `-i eth+` (a prefix) and `-i eth0` (exact, terminating NUL included) cost one XOR-and-mask.

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 prefix, `addr/len`, with the host bits of `addr` cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: u32,
    mask: u32,
    len: u8,
}

impl Cidr {
    /// `0.0.0.0/0`.
    pub const ANY: Cidr = Cidr { addr: 0, mask: 0, len: 0 };

    /// A prefix from an address and a length (0..=32); host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        let mask = prefix_mask(len);
        Some(Cidr { addr: u32::from(addr) & mask, mask, len })
    }

    /// A single host, `addr/32`.
    pub fn host(addr: Ipv4Addr) -> Self {
        Cidr { addr: u32::from(addr), mask: u32::MAX, len: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// Whether `ip` lies inside the prefix.
    #[inline]
    pub fn contains(&self, ip: u32) -> bool {
        ip & self.mask == self.addr
    }

    /// Parses `a.b.c.d`, `a.b.c.d/len` or `a.b.c.d/m.m.m.m` (a contiguous netmask), as iptables
    /// accepts them. A bare address is a /32.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = match text.split_once('/') {
            None => (text, None),
            Some((a, l)) => (a, Some(l)),
        };
        let ip: Ipv4Addr = addr.parse().map_err(|_| format!("an IPv4 address, not `{addr}`"))?;
        let len = match len {
            None => 32,
            Some(l) if l.contains('.') => {
                let m: Ipv4Addr =
                    l.parse().map_err(|_| format!("a prefix length or netmask, not `{l}`"))?;
                let m = u32::from(m);
                if m.leading_ones() + m.trailing_zeros() != 32 {
                    return Err(format!("a contiguous netmask, not `{l}`"));
                }
                m.leading_ones() as u8
            }
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= 32 => n,
                _ => return Err(format!("a prefix length 0..32, not `{l}`")),
            },
        };
        Ok(Cidr::new(ip, len).expect("length checked"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

/// The network mask of a prefix length.
#[inline]
pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// An interface name packed into 16 bytes (NUL padded), so names compare as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IfKey(pub u128);

impl IfKey {
    /// The key of "no interface" (e.g. the input interface of a locally generated packet).
    pub const NONE: IfKey = IfKey(0);

    /// Packs a name; `None` when it is empty, too long or contains bytes the kernel refuses.
    pub fn new(name: &str) -> Option<Self> {
        valid_ifname(name).then(|| IfKey(pack(name.as_bytes())))
    }
}

fn pack(bytes: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    u128::from_le_bytes(buf)
}

/// Whether the kernel would accept `name` as an interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// `-i NAME` / `-o NAME`: an exact name, or a prefix when it ends in `+`; possibly negated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceMatch {
    /// The name as written, `+` included (`eth+`).
    pub name: String,
    pub negated: bool,
    key: u128,
    mask: u128,
}

impl IfaceMatch {
    /// Parses a name as iptables does. `+` alone matches every interface (and iptables-save
    /// then omits the option: see [`IfaceMatch::matches_all`]).
    pub fn parse(name: &str, negated: bool) -> Result<Self, String> {
        if name.len() > IFNAME_MAX {
            return Err(format!("an interface name of at most {IFNAME_MAX} characters"));
        }
        let (body, wildcard) = match name.strip_suffix('+') {
            Some(b) => (b, true),
            None => (name, false),
        };
        if body.bytes().any(|b| b.is_ascii_whitespace() || b == 0) {
            return Err("an interface name without spaces".into());
        }
        if !wildcard && body.is_empty() {
            return Err("an interface name".into());
        }
        // An exact name also compares the terminating NUL, so `eth0` does not match `eth00`.
        let covered = if wildcard { body.len() } else { body.len() + 1 };
        let mask = if covered >= 16 { u128::MAX } else { (1u128 << (covered * 8)) - 1 };
        Ok(IfaceMatch { name: name.to_string(), negated, key: pack(body.as_bytes()), mask })
    }

    /// `+`: every interface, the option is a no-op.
    pub fn matches_all(&self) -> bool {
        self.mask == 0
    }

    #[inline]
    pub fn matches(&self, iface: IfKey) -> bool {
        ((iface.0 ^ self.key) & self.mask == 0) != self.negated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_canonicalises_host_bits_and_netmasks() {
        assert_eq!(Cidr::parse("10.0.0.1/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("10.1.2.3/255.255.0.0").unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::parse("1.2.3.4/0").unwrap(), Cidr::ANY);
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        assert!(Cidr::parse("1.2.3.4/255.0.255.0").is_err());
        assert!(Cidr::parse("1.2.3/8").is_err());
        let c = Cidr::parse("192.168.1.0/24").unwrap();
        assert!(c.contains(u32::from(Ipv4Addr::new(192, 168, 1, 77))));
        assert!(!c.contains(u32::from(Ipv4Addr::new(192, 168, 2, 1))));
    }

    #[test]
    fn interface_names_match_exactly_or_by_prefix() {
        let eth0 = IfKey::new("eth0").unwrap();
        let eth00 = IfKey::new("eth00").unwrap();
        let lo = IfKey::new("lo").unwrap();
        let exact = IfaceMatch::parse("eth0", false).unwrap();
        assert!(exact.matches(eth0));
        assert!(!exact.matches(eth00));
        assert!(!exact.matches(IfKey::NONE));
        let prefix = IfaceMatch::parse("eth+", false).unwrap();
        assert!(prefix.matches(eth0) && prefix.matches(eth00) && !prefix.matches(lo));
        let not_lo = IfaceMatch::parse("lo", true).unwrap();
        assert!(not_lo.matches(eth0) && !not_lo.matches(lo) && not_lo.matches(IfKey::NONE));
        assert!(IfaceMatch::parse("+", false).unwrap().matches_all());
        let long = IfaceMatch::parse("abcdefghijklmno", false).unwrap();
        assert!(long.matches(IfKey::new("abcdefghijklmno").unwrap()));
        assert!(IfaceMatch::parse("abcdefghijklmnop", false).is_err());
    }
}
