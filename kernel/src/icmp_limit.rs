//! The kernel's per-peer rate limit on the ICMP errors it sends (`icmpv4_xrlim_allow`, and
//! `ip_error`'s own charge on the same bucket).
//!
//! Each destination address has a token bucket counted in time: it refills at one second per
//! second, holds at most six seconds (`XRLIM_BURST_FACTOR` × `icmp_ratelimit` 1000 ms), and a
//! message costs one second. A new peer starts full. `ip_error` (no route for a forwarded
//! packet) first charges the same bucket with a cap of five seconds, then `icmp_send` charges
//! it again, so unroutable packets get at most one error per two seconds after a burst of two.
//! Only the types in `icmp_ratemask` (default: destination unreachable except
//! fragmentation-needed, source quench, time exceeded, parameter problem) are limited, and
//! never when the error leaves through `lo`. Checked against the kernel in
//! `tests/data/kernel-runs/icmp-ratelimit`.
//!
//! Not modelled: the namespace-wide limit (`icmp_msgs_per_sec` 1000, burst 50), whose credit
//! the kernel consumes by a random 0–2 per message; the kernel's jiffy granularity (4 ms at
//! HZ=250) — the model counts nanoseconds.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::packet::icmp_type;

/// `net.ipv4.icmp_ratelimit`: the cost of one message.
const COST: Duration = Duration::from_millis(1000);
/// `XRLIM_BURST_FACTOR` × cost: what `icmp_send` lets a bucket hold.
const SEND_CAP: Duration = Duration::from_millis(6000);
/// `ip_rt_error_burst`: what `ip_error` lets a bucket hold.
const ERROR_CAP: Duration = Duration::from_millis(5000);
/// `net.ipv4.icmp_ratemask` default (0x1818).
const RATEMASK: u32 = 0x1818;

/// Token buckets per destination address.
#[derive(Clone, Debug, Default)]
pub struct IcmpLimiter {
    peers: BTreeMap<Ipv4Addr, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: Duration,
    last: Duration,
}

/// Whether `icmp_send` rate-limits this type and code at all.
pub fn limited(kind: u8, code: u8) -> bool {
    kind < 32
        && RATEMASK & (1 << kind) != 0
        && !(kind == icmp_type::DEST_UNREACH && code == icmp_type::FRAG_NEEDED)
}

impl IcmpLimiter {
    /// `icmpv4_xrlim_allow` for an error to `peer` sent at `now`.
    pub fn send_allowed(&mut self, peer: Ipv4Addr, now: Duration) -> bool {
        self.take(peer, now, SEND_CAP)
    }

    /// `ip_error`'s own charge before it calls `icmp_send`.
    pub fn route_error_allowed(&mut self, peer: Ipv4Addr, now: Duration) -> bool {
        self.take(peer, now, ERROR_CAP)
    }

    fn take(&mut self, peer: Ipv4Addr, now: Duration, cap: Duration) -> bool {
        // A new peer's last use is set a minute back, so its first charge sees a full bucket.
        let b =
            self.peers.entry(peer).or_insert(Bucket { tokens: Duration::from_secs(60), last: now });
        let mut tokens = (b.tokens + now.saturating_sub(b.last)).min(cap);
        let ok = tokens >= COST;
        if ok {
            tokens -= COST;
        }
        *b = Bucket { tokens, last: now };
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_of_six_then_one_per_second() {
        let mut l = IcmpLimiter::default();
        let peer = Ipv4Addr::new(10, 0, 1, 9);
        let sent: Vec<bool> = (0..8).map(|i| l.send_allowed(peer, ms(i * 10))).collect();
        assert_eq!(sent, [true, true, true, true, true, true, false, false]);
        assert!(l.send_allowed(peer, ms(1200)));
        assert!(!l.send_allowed(peer, ms(1210)));
        assert!(l.send_allowed(Ipv4Addr::new(10, 0, 1, 10), ms(1210)), "per peer");
    }

    #[test]
    fn route_errors_charge_twice() {
        let mut l = IcmpLimiter::default();
        let peer = Ipv4Addr::new(10, 0, 1, 9);
        let mut sent = 0;
        for i in 0..4 {
            if l.route_error_allowed(peer, ms(i)) && l.send_allowed(peer, ms(i)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 2);
    }

    #[test]
    fn which_types_are_limited() {
        assert!(limited(icmp_type::DEST_UNREACH, 3));
        assert!(!limited(icmp_type::DEST_UNREACH, icmp_type::FRAG_NEEDED));
        assert!(limited(11, 0));
        assert!(!limited(icmp_type::ECHO_REPLY, 0));
        assert!(!limited(icmp_type::ECHO_REQUEST, 0));
    }
}
