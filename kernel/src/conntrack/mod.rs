//! Connection tracking: the table of connections of one network namespace.
//!
//! An [`Entry`] holds the original and reply tuples (NAT rewrites the reply tuple), a zone,
//! status bits, the connmark, an absolute expiry time and per-protocol state. Packets are
//! looked up by (zone, tuple) in a hash map keyed by the packed tuple with a small deterministic
//! hasher; the map is never iterated for output (dumps walk the slab and sort). A new entry is
//! unconfirmed until the packet that created it reaches the end of its path
//! ([`Table::confirm`]); if the packet is dropped first the entry is discarded.
//!
//! Protocols: TCP ([`tcp`]), UDP (30 s unreplied, 120 s and ASSURED once replied to and more
//! than 2 s old), ICMP echo/timestamp/info/mask (30 s; errors are RELATED to the connection
//! their embedded header belongs to, INVALID otherwise). Other protocols are untracked.
//! Table limit: when `max_entries` are in use a packet needing a new entry is dropped after
//! expired entries are purged — the kernel's early drop of unassured entries is not modelled.
//! No expectations/helpers (FTP, SIP…), no accounting counters, no labels.

mod nat;
pub mod tcp;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use serde::Serialize;

use super::packet::{Packet, Protocol, Tuple, icmp_type};
use super::rules::ctstate;
pub use nat::{Manip, NatRequest};
pub use tcp::{TcpConn, TcpState, TcpVerdict};

/// Direction of a packet relative to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Original = 0,
    Reply = 1,
}

/// The packet's relation to its connection (`enum ip_conntrack_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CtInfo {
    New,
    Established,
    Related,
    EstablishedReply,
    RelatedReply,
}

impl CtInfo {
    pub fn dir(self) -> Dir {
        match self {
            CtInfo::EstablishedReply | CtInfo::RelatedReply => Dir::Reply,
            _ => Dir::Original,
        }
    }

    /// The `--ctstate` bit.
    pub fn state_bit(self) -> u8 {
        match self {
            CtInfo::New => ctstate::NEW,
            CtInfo::Established | CtInfo::EstablishedReply => ctstate::ESTABLISHED,
            CtInfo::Related | CtInfo::RelatedReply => ctstate::RELATED,
        }
    }
}

/// Status bits (`IPS_*`, same bit numbers as the kernel).
pub mod status {
    pub const SEEN_REPLY: u16 = 1 << 1;
    pub const ASSURED: u16 = 1 << 2;
    pub const CONFIRMED: u16 = 1 << 3;
    pub const SRC_NAT: u16 = 1 << 4;
    pub const DST_NAT: u16 = 1 << 5;
    pub const SRC_NAT_DONE: u16 = 1 << 7;
    pub const DST_NAT_DONE: u16 = 1 << 8;
}

/// UDP timeouts (`nf_conntrack_udp_timeout`, `…_stream`).
pub const UDP_TIMEOUT: Duration = Duration::from_secs(30);
pub const UDP_STREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// ICMP timeout.
pub const ICMP_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-protocol state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoState {
    Tcp(TcpConn),
    /// When a replied flow counts as a stream (creation + 2 s).
    Udp {
        stream_after: Duration,
    },
    Icmp,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `[original, reply]`; NAT changes the reply tuple.
    pub tuples: [Tuple; 2],
    pub zone: u16,
    pub status: u16,
    /// The connmark.
    pub mark: u32,
    /// Absolute expiry time (the entry is gone when `now >= expires`).
    pub expires: Duration,
    pub proto: ProtoState,
    /// Creation order, for stable output.
    pub serial: u64,
}

impl Entry {
    pub fn has(&self, bit: u16) -> bool {
        self.status & bit != 0
    }

    pub fn original(&self) -> &Tuple {
        &self.tuples[0]
    }

    pub fn reply(&self) -> &Tuple {
        &self.tuples[1]
    }

    pub fn tcp_state(&self) -> Option<TcpState> {
        match self.proto {
            ProtoState::Tcp(c) => Some(c.state),
            _ => None,
        }
    }

    /// One `conntrack -L` line (without the newline), `now` giving the remaining timeout.
    pub fn dump_line(&self, now: Duration) -> String {
        let o = &self.tuples[0];
        let mut s = format!(
            "{:<8} {} {} ",
            o.proto.name(),
            o.proto.number(),
            self.expires.saturating_sub(now).as_secs()
        );
        if let Some(st) = self.tcp_state() {
            let _ = write!(s, "{} ", st.name());
        }
        let _ = write!(s, "{o} ");
        if !self.has(status::SEEN_REPLY) {
            s.push_str("[UNREPLIED] ");
        }
        let _ = write!(s, "{} ", self.tuples[1]);
        if self.has(status::ASSURED) {
            s.push_str("[ASSURED] ");
        }
        let _ = write!(s, "mark={} ", self.mark);
        if self.zone != 0 {
            let _ = write!(s, "zone={} ", self.zone);
        }
        s.push_str("use=1");
        s
    }
}

/// Index of an entry in the table (valid until the entry is deleted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct EntryId(pub u32);

/// Sysctls that shape tracking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `nf_conntrack_max`.
    pub max_entries: usize,
    /// `nf_conntrack_tcp_loose`: pick up mid-stream TCP connections.
    pub tcp_loose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_entries: 262_144, tcp_loose: true }
    }
}

/// Result of conntrack's look at a packet (`nf_conntrack_in`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    Tracked {
        id: EntryId,
        dir: Dir,
        info: CtInfo,
        created: bool,
    },
    /// No connection (ctstate INVALID): bad flags, a packet that cannot start one, an ICMP
    /// error about nothing we track.
    Invalid,
    /// Dropped: the table is full.
    TableFull,
}

/// Multiply-xorshift hasher for packed tuple keys: deterministic and cheap.
#[derive(Debug, Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    #[inline]
    fn write_u128(&mut self, k: u128) {
        // Mix the halves one after the other (XOR-ing them first would let address and port
        // bits cancel out), then fold the high bits down: hashbrown indexes with the low bits.
        let a = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let b = ((k >> 64) as u64 ^ a.rotate_left(32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        self.0 = b ^ (b >> 32);
    }
}

type KeyMap = HashMap<u128, u32, BuildHasherDefault<KeyHasher>>;

/// The conntrack table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    map: KeyMap,
    live: usize,
    serial: u64,
    /// An entry killed while its packet is still on its way (freed by [`Table::finish_packet`]).
    dying: Option<u32>,
    pub config: Config,
}

impl Table {
    pub fn new(config: Config) -> Self {
        Table { config, ..Table::default() }
    }

    /// Entries in use (unconfirmed ones included).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether `id` names an entry that still exists (and is not being deleted).
    pub fn is_live(&self, id: EntryId) -> bool {
        self.slots.get(id.0 as usize).is_some_and(Option::is_some) && self.dying != Some(id.0)
    }

    pub fn entry(&self, id: EntryId) -> &Entry {
        self.slots[id.0 as usize].as_ref().expect("live conntrack entry")
    }

    pub fn entry_mut(&mut self, id: EntryId) -> &mut Entry {
        self.slots[id.0 as usize].as_mut().expect("live conntrack entry")
    }

    /// Confirmed, unexpired entries sorted by (original tuple, zone).
    pub fn entries(&self, now: Duration) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self
            .slots
            .iter()
            .flatten()
            .filter(|e| e.has(status::CONFIRMED) && e.expires > now)
            .collect();
        v.sort_by_key(|e| (e.tuples[0], e.zone, e.serial));
        v
    }

    /// `conntrack -L` text (sorted; the kernel lists in hash order).
    pub fn dump(&self, now: Duration) -> String {
        let mut s = String::new();
        for e in self.entries(now) {
            s.push_str(&e.dump_line(now));
            s.push('\n');
        }
        s
    }

    /// `conntrack -F` (keeps the allocated capacity, like the kernel's preallocated hash).
    pub fn flush(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.map.clear();
        self.live = 0;
        self.dying = None;
    }

    /// Removes expired entries; returns how many.
    pub fn expire(&mut self, now: Duration) -> usize {
        let dead: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.as_ref().is_some_and(|e| e.has(status::CONFIRMED) && e.expires <= now)
            })
            .map(|(i, _)| i as u32)
            .collect();
        for &i in &dead {
            self.delete(EntryId(i));
        }
        dead.len()
    }

    /// Finds a live connection by tuple without changing anything.
    pub fn get(&self, tuple: &Tuple, zone: u16, now: Duration) -> Option<(EntryId, Dir)> {
        let v = *self.map.get(&tuple.key(zone))?;
        let id = EntryId(v >> 1);
        (self.entry(id).expires > now)
            .then_some((id, if v & 1 == 0 { Dir::Original } else { Dir::Reply }))
    }

    /// Finds a connection, deleting it if it has expired.
    fn find(&mut self, tuple: &Tuple, zone: u16, now: Duration) -> Option<(EntryId, Dir)> {
        let v = *self.map.get(&tuple.key(zone))?;
        let id = EntryId(v >> 1);
        if self.entry(id).expires <= now {
            self.delete(id);
            return None;
        }
        Some((id, if v & 1 == 0 { Dir::Original } else { Dir::Reply }))
    }

    fn delete(&mut self, id: EntryId) {
        if let Some(e) = self.slots[id.0 as usize].take() {
            if e.has(status::CONFIRMED) {
                self.map.remove(&e.tuples[0].key(e.zone));
                self.map.remove(&e.tuples[1].key(e.zone));
            }
            self.free.push(id.0);
            self.live -= 1;
        }
    }

    /// Deletes an entry (`conntrack -D`).
    pub fn remove(&mut self, id: EntryId) {
        self.delete(id);
    }

    fn alloc(&mut self, entry: Entry) -> EntryId {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(entry);
                EntryId(i)
            }
            None => {
                self.slots.push(Some(entry));
                EntryId(self.slots.len() as u32 - 1)
            }
        }
    }

    /// `nf_conntrack_in`: finds or creates the packet's connection and runs its protocol
    /// tracker at time `now`.
    pub fn track(&mut self, pkt: &Packet, zone: u16, now: Duration) -> Track {
        if let (Protocol::Icmp, Some(icmp)) = (pkt.proto, pkt.icmp)
            && icmp_type::is_error(icmp.kind)
        {
            // An error is RELATED to the connection of the header it carries.
            let Some(inner) = icmp.inner else { return Track::Invalid };
            return match self.find(&inner.invert(), zone, now) {
                Some((id, dir)) => {
                    let info =
                        if dir == Dir::Reply { CtInfo::RelatedReply } else { CtInfo::Related };
                    Track::Tracked { id, dir, info, created: false }
                }
                None => Track::Invalid,
            };
        }
        let tuple = pkt.tuple();
        loop {
            let (id, dir, created) = match self.find(&tuple, zone, now) {
                Some((id, dir)) => (id, dir, false),
                None => {
                    if self.live >= self.config.max_entries {
                        self.expire(now);
                        if self.live >= self.config.max_entries {
                            return Track::TableFull;
                        }
                    }
                    let proto = match pkt.proto {
                        Protocol::Tcp => match TcpConn::new(pkt.tcp_flags.0, self.config.tcp_loose)
                        {
                            Some(c) if tcp::valid_flags(pkt.tcp_flags.0) => ProtoState::Tcp(c),
                            _ => return Track::Invalid,
                        },
                        Protocol::Udp => {
                            ProtoState::Udp { stream_after: now + Duration::from_secs(2) }
                        }
                        Protocol::Icmp => {
                            let kind = pkt.icmp.map_or(255, |i| i.kind);
                            if !matches!(kind, 8 | 13 | 15 | 17) {
                                return Track::Invalid;
                            }
                            ProtoState::Icmp
                        }
                    };
                    self.serial += 1;
                    let id = self.alloc(Entry {
                        tuples: [tuple, tuple.invert()],
                        zone,
                        status: 0,
                        mark: 0,
                        expires: now,
                        proto,
                        serial: self.serial,
                    });
                    (id, Dir::Original, true)
                }
            };
            let e = self.entry_mut(id);
            let seen_reply = e.has(status::SEEN_REPLY);
            let info = match (dir, seen_reply) {
                (Dir::Reply, _) => CtInfo::EstablishedReply,
                (Dir::Original, true) => CtInfo::Established,
                (Dir::Original, false) => CtInfo::New,
            };
            let confirmed = e.has(status::CONFIRMED);
            match &mut e.proto {
                ProtoState::Tcp(c) => {
                    match c.packet(
                        dir as u8,
                        pkt.tcp_flags.0,
                        pkt.payload,
                        seen_reply,
                        e.status & status::ASSURED != 0,
                    ) {
                        TcpVerdict::Accept { timeout, assured } => {
                            if let Some(t) = timeout {
                                e.expires = now + t;
                            }
                            if assured {
                                e.status |= status::ASSURED;
                            }
                        }
                        TcpVerdict::Invalid => {
                            if created {
                                self.delete(id);
                            }
                            return Track::Invalid;
                        }
                        TcpVerdict::Reopen => {
                            self.delete(id);
                            continue;
                        }
                        TcpVerdict::Kill => {
                            // The packet still carries the connection (its NAT applies) but
                            // nothing finds it any more.
                            let e = self.entry_mut(id);
                            e.status &= !status::CONFIRMED;
                            let keys = [e.tuples[0].key(e.zone), e.tuples[1].key(e.zone)];
                            for k in keys {
                                self.map.remove(&k);
                            }
                            self.finish_packet();
                            self.dying = Some(id.0);
                            return Track::Tracked { id, dir, info, created: false };
                        }
                    }
                }
                ProtoState::Udp { stream_after } => {
                    if !confirmed {
                        *stream_after = now + Duration::from_secs(2);
                    }
                    if seen_reply {
                        if now > *stream_after {
                            e.expires = now + UDP_STREAM_TIMEOUT;
                            e.status |= status::ASSURED;
                        } else {
                            e.expires = now + UDP_TIMEOUT;
                        }
                    } else {
                        e.expires = now + UDP_TIMEOUT;
                    }
                }
                ProtoState::Icmp => e.expires = now + ICMP_TIMEOUT,
            }
            if dir == Dir::Reply {
                e.status |= status::SEEN_REPLY;
            }
            return Track::Tracked { id, dir, info, created };
        }
    }

    /// `nf_conntrack_confirm`: puts a new entry into the hash. Returns false (the packet is
    /// to be dropped; the entry is discarded) when either tuple is already taken by another
    /// connection.
    pub fn confirm(&mut self, id: EntryId) -> bool {
        let e = self.entry(id);
        if e.has(status::CONFIRMED) || self.dying == Some(id.0) {
            return true;
        }
        let (k0, k1) = (e.tuples[0].key(e.zone), e.tuples[1].key(e.zone));
        if self.map.contains_key(&k0) || self.map.contains_key(&k1) {
            self.delete(id);
            return false;
        }
        self.map.insert(k0, id.0 << 1);
        self.map.insert(k1, id.0 << 1 | 1);
        self.entry_mut(id).status |= status::CONFIRMED;
        true
    }

    /// `nf_conntrack_tcp_set_closing` (REJECT's TCP reset): a confirmed TCP connection goes to
    /// CLOSE with the CLOSE timeout.
    pub fn set_closing(&mut self, id: EntryId, now: Duration) {
        let e = self.entry_mut(id);
        if !e.has(status::CONFIRMED) {
            return;
        }
        if let ProtoState::Tcp(c) = &mut e.proto
            && c.state != TcpState::Close
        {
            c.state = TcpState::Close;
            e.expires = now + TcpState::Close.timeout();
        }
    }

    /// Discards an unconfirmed entry whose packet was dropped.
    pub fn discard_unconfirmed(&mut self, id: EntryId) {
        if self.slots[id.0 as usize].as_ref().is_some_and(|e| !e.has(status::CONFIRMED))
            && self.dying != Some(id.0)
        {
            self.delete(id);
        }
    }

    /// Frees an entry killed during the packet just processed.
    pub fn finish_packet(&mut self) {
        if let Some(i) = self.dying.take()
            && self.slots[i as usize].is_some()
        {
            self.slots[i as usize] = None;
            self.free.push(i);
            self.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TcpFlags;

    fn syn(src: &str, dst: &str, flags: TcpFlags) -> Packet {
        Packet::tcp(src.parse().unwrap(), dst.parse().unwrap(), flags)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn handshake_tracks_directions_and_states() {
        let mut t = Table::new(Config::default());
        let a = "10.0.0.1:1000";
        let b = "10.0.0.2:80";
        let Track::Tracked { id, info, created, .. } = t.track(&syn(a, b, TcpFlags::S), 0, secs(0))
        else {
            panic!()
        };
        assert!(created);
        assert_eq!(info, CtInfo::New);
        assert!(t.confirm(id));
        let Track::Tracked { info, dir, .. } = t.track(&syn(b, a, TcpFlags::SA), 0, secs(1)) else {
            panic!()
        };
        assert_eq!((info, dir), (CtInfo::EstablishedReply, Dir::Reply));
        let Track::Tracked { info, .. } = t.track(&syn(a, b, TcpFlags::A), 0, secs(1)) else {
            panic!()
        };
        assert_eq!(info, CtInfo::Established);
        let e = t.entry(id);
        assert_eq!(e.tcp_state(), Some(TcpState::Established));
        assert!(e.has(status::ASSURED));
        assert_eq!(
            t.dump(secs(1)),
            "tcp      6 432000 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1000 [ASSURED] mark=0 use=1\n"
        );
        // Zones separate identical tuples.
        assert!(matches!(
            t.track(&syn(a, b, TcpFlags::S), 1, secs(1)),
            Track::Tracked { created: true, .. }
        ));
    }

    #[test]
    fn expiry_limit_and_invalid_packets() {
        let mut t = Table::new(Config { max_entries: 1, tcp_loose: true });
        let p = Packet::udp("1.1.1.1:5".parse().unwrap(), "2.2.2.2:53".parse().unwrap());
        let Track::Tracked { id, .. } = t.track(&p, 0, secs(0)) else { panic!() };
        assert!(t.confirm(id));
        assert!(t.dump(secs(0)).contains("[UNREPLIED]"));
        let q = Packet::udp("1.1.1.1:6".parse().unwrap(), "2.2.2.2:53".parse().unwrap());
        assert_eq!(t.track(&q, 0, secs(29)), Track::TableFull);
        assert!(matches!(t.track(&q, 0, secs(30)), Track::Tracked { created: true, .. }));
        assert_eq!(t.len(), 1);
        let mut t = Table::new(Config::default());
        assert_eq!(
            t.track(&syn("1.1.1.1:1", "2.2.2.2:2", TcpFlags::R), 0, secs(0)),
            Track::Invalid
        );
        assert_eq!(
            t.track(&syn("1.1.1.1:1", "2.2.2.2:2", TcpFlags::FA), 0, secs(0)),
            Track::Invalid
        );
        assert!(t.is_empty());
    }

    #[test]
    fn udp_becomes_a_stream_after_two_seconds() {
        let mut t = Table::new(Config::default());
        let out = Packet::udp("1.1.1.1:5".parse().unwrap(), "2.2.2.2:53".parse().unwrap());
        let back = Packet::udp("2.2.2.2:53".parse().unwrap(), "1.1.1.1:5".parse().unwrap());
        let Track::Tracked { id, .. } = t.track(&out, 0, secs(0)) else { panic!() };
        assert!(t.confirm(id));
        t.track(&back, 0, secs(1));
        t.track(&out, 0, secs(1));
        assert!(!t.entry(id).has(status::ASSURED));
        assert_eq!(t.entry(id).expires, secs(31));
        t.track(&out, 0, secs(3));
        assert!(t.entry(id).has(status::ASSURED));
        assert_eq!(t.entry(id).expires, secs(123));
    }

    /// A DNS query and its answer in zone 1 (the proxy's upstream query, `CT --zone 1`) are
    /// one entry apart from the same tuple in zone 0: `zone=1` in the dump, 30 s once answered
    /// (not yet a stream), gone after that.
    #[test]
    fn udp_in_zone_1_is_its_own_entry_and_expires_after_30_s() {
        let mut t = Table::new(Config::default());
        let q = Packet::udp("10.0.1.2:40000".parse().unwrap(), "203.0.113.53:53".parse().unwrap());
        let a = Packet::udp("203.0.113.53:53".parse().unwrap(), "10.0.1.2:40000".parse().unwrap());
        let Track::Tracked { id: z1, created: true, .. } = t.track(&q, 1, secs(0)) else {
            panic!()
        };
        assert!(t.confirm(z1));
        assert!(t.dump(secs(0)).contains("[UNREPLIED]"));
        assert!(matches!(t.track(&a, 1, secs(0)), Track::Tracked { created: false, .. }));
        let Track::Tracked { id: z0, created: true, .. } = t.track(&q, 0, secs(0)) else {
            panic!("zone 0 must not find the zone-1 entry")
        };
        assert!(t.confirm(z0));
        assert_ne!(z0, z1);
        let dump = t.dump(secs(0));
        assert_eq!(dump.lines().filter(|l| l.contains("zone=1")).count(), 1, "{dump}");
        assert_eq!(t.entry(z1).expires, secs(30));
        assert!(!t.entry(z1).has(status::ASSURED));
        assert!(t.get(&q.tuple(), 1, secs(29)).is_some());
        assert!(t.get(&q.tuple(), 1, secs(30)).is_none());
    }
}
