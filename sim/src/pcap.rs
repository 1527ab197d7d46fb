//! Packets as a network namespace saw them, as pcap files (`--pcap`).
//!
//! The model's packets carry no bytes, so each record is synthesised: an IPv4 header (DF, TTL
//! 64, checksum), a TCP header with the segment's real sequence and acknowledgement numbers,
//! flags and window, options padded to the length the model counted (a SYN's MSS, SACK-permitted,
//! timestamps and window scale; timestamps on other segments, as Linux sends them), and the
//! segment's real payload — TLS records and all. ICMP errors quote the header they are about.
//! Link type `LINKTYPE_RAW` (IPv4 with no link header); timestamps are the fixed wall-clock
//! origin plus simulated time, so files are byte-identical run to run.
//!
//! What a namespace "saw" is what `tcpdump -i any` in it would: a packet it sent once it passed
//! its output hooks (on `lo` for local traffic), a packet it received as it arrived, before
//! its hooks.

use std::collections::BTreeMap;
use std::time::Duration;

use ambient_kernel::packet::Icmp;
use ambient_kernel::{Packet, Protocol, TcpFlags};

/// pcap global header magic (microsecond timestamps) and LINKTYPE_RAW.
const MAGIC: u32 = 0xa1b2_c3d4;
const LINKTYPE_RAW: u32 = 101;

/// The TCP fields the model does not keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpWire<'a> {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub payload: &'a [u8],
}

/// One capture per namespace, by a key the caller chooses.
#[derive(Debug, Default)]
pub struct Captures<K: Ord> {
    files: BTreeMap<K, Vec<u8>>,
    origin: Duration,
}

impl<K: Ord> Captures<K> {
    /// Captures whose timestamps start at `origin` (time since the Unix epoch).
    pub fn new(origin: Duration) -> Self {
        Captures { files: BTreeMap::new(), origin }
    }

    /// Starts an (empty) capture for `key`, so a namespace without traffic still has a file.
    pub fn open(&mut self, key: K) {
        self.files.entry(key).or_insert_with(header);
    }

    /// Appends one packet seen in `key` at simulated time `t`.
    pub fn record(&mut self, key: K, t: Duration, pkt: &Packet, tcp: &TcpWire<'_>) {
        let bytes = ipv4(pkt, tcp);
        let when = self.origin + t;
        let file = self.files.entry(key).or_insert_with(header);
        put32(file, u32::try_from(when.as_secs()).unwrap_or(u32::MAX));
        put32(file, when.subsec_micros());
        put32(file, bytes.len() as u32);
        put32(file, bytes.len() as u32);
        file.extend_from_slice(&bytes);
    }

    /// The files, in key order.
    pub fn into_files(self) -> BTreeMap<K, Vec<u8>> {
        self.files
    }
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn header() -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    put32(&mut h, MAGIC);
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    put32(&mut h, 0); // thiszone
    put32(&mut h, 0); // sigfigs
    put32(&mut h, 262_144); // snaplen
    put32(&mut h, LINKTYPE_RAW);
    h
}

/// The ones' complement sum of 16-bit words.
fn sum16(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ip_header(pkt: &Packet, proto: u8, total: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&pkt.src.octets());
    h[16..20].copy_from_slice(&pkt.dst.octets());
    let c = fold(sum16(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// TCP options filling `len` bytes, the way Linux lays them out.
fn options(flags: TcpFlags, len: usize, tsval: u32) -> Vec<u8> {
    let mut o = Vec::with_capacity(len);
    let ts = |o: &mut Vec<u8>| {
        o.extend_from_slice(&[8, 10]);
        o.extend_from_slice(&tsval.to_be_bytes());
        o.extend_from_slice(&0u32.to_be_bytes());
    };
    if flags.has(TcpFlags::SYN) && len >= 20 {
        o.extend_from_slice(&[2, 4, 0x05, 0xb4, 4, 2]); // MSS 1460, SACK permitted
        ts(&mut o);
        o.extend_from_slice(&[1, 3, 3, 7]); // NOP, window scale 7
    } else if len >= 12 {
        o.extend_from_slice(&[1, 1]);
        ts(&mut o);
    }
    o.resize(len, 1);
    o
}

fn ipv4(pkt: &Packet, tcp: &TcpWire<'_>) -> Vec<u8> {
    match (pkt.proto, pkt.icmp) {
        (Protocol::Icmp, Some(icmp)) => icmp_bytes(pkt, &icmp),
        (Protocol::Udp, _) => udp_bytes(pkt, tcp.payload),
        _ => tcp_bytes(pkt, tcp),
    }
}

fn udp_bytes(pkt: &Packet, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&pkt.sport.to_be_bytes());
    u.extend_from_slice(&pkt.dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&pkt.src.octets());
    pseudo.extend_from_slice(&pkt.dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    // A computed zero is sent as all ones (RFC 768).
    let c = match fold(sum16(sum16(0, &pseudo), &u)) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    let mut out = ip_header(pkt, 17, 20 + len).to_vec();
    out.extend_from_slice(&u);
    out
}

fn tcp_bytes(pkt: &Packet, w: &TcpWire<'_>) -> Vec<u8> {
    let claimed = (pkt.len as usize).saturating_sub(20 + w.payload.len());
    let hdr = claimed.clamp(20, 60) & !3;
    let tsval = w.seq.rotate_left(7); // any stable value: nothing reads it
    let opts = options(pkt.tcp_flags, hdr - 20, tsval);
    let total = 20 + hdr + w.payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&ip_header(pkt, 6, total));
    let mut t = Vec::with_capacity(hdr + w.payload.len());
    t.extend_from_slice(&pkt.sport.to_be_bytes());
    t.extend_from_slice(&pkt.dport.to_be_bytes());
    t.extend_from_slice(&w.seq.to_be_bytes());
    t.extend_from_slice(&w.ack.to_be_bytes());
    t.push(((hdr / 4) as u8) << 4);
    t.push(pkt.tcp_flags.0);
    t.extend_from_slice(&w.window.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    t.extend_from_slice(&opts);
    t.extend_from_slice(w.payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&pkt.src.octets());
    pseudo.extend_from_slice(&pkt.dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    let c = fold(sum16(sum16(0, &pseudo), &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&t);
    out
}

fn icmp_bytes(pkt: &Packet, icmp: &Icmp) -> Vec<u8> {
    let mut body = vec![icmp.kind, icmp.code, 0, 0];
    body.extend_from_slice(&icmp.id.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    if let Some(inner) = icmp.inner {
        let quoted = Packet::tcp(
            std::net::SocketAddrV4::new(inner.src, inner.sport),
            std::net::SocketAddrV4::new(inner.dst, inner.dport),
            TcpFlags::S,
        );
        let proto = inner.proto.number();
        body.extend_from_slice(&ip_header(&Packet { proto: inner.proto, ..quoted }, proto, 60));
        body.extend_from_slice(&inner.sport.to_be_bytes());
        body.extend_from_slice(&inner.dport.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
    }
    let c = fold(sum16(0, &body));
    body[2..4].copy_from_slice(&c.to_be_bytes());
    let mut out = ip_header(pkt, 1, 20 + body.len()).to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_well_formed_and_checksums_verify() {
        let mut c = Captures::new(Duration::from_secs(1_767_225_600));
        let syn = Packet::tcp(
            "10.0.1.2:40000".parse().unwrap(),
            "10.0.1.3:80".parse().unwrap(),
            TcpFlags::S,
        );
        c.record("a", Duration::from_millis(1500), &syn, &TcpWire { seq: 1, ..TcpWire::default() });
        let data = Packet::tcp(
            "10.0.1.2:40000".parse().unwrap(),
            "10.0.1.3:80".parse().unwrap(),
            TcpFlags::PA,
        )
        .with_len(52 + 5)
        .with_payload(5);
        c.record(
            "a",
            Duration::from_secs(2),
            &data,
            &TcpWire { seq: 2, ack: 9, window: 100, payload: b"hello" },
        );
        let f = c.into_files().remove("a").unwrap();
        assert_eq!(&f[..4], &MAGIC.to_le_bytes());
        let first = &f[24..];
        let len = u32::from_le_bytes(first[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, 60, "a SYN is 60 bytes with its options");
        let ip = &first[16..16 + len];
        assert_eq!(fold(sum16(0, &ip[..20])), 0, "IP checksum verifies");
        let second = &first[16 + len..];
        let len2 = u32::from_le_bytes(second[8..12].try_into().unwrap()) as usize;
        assert_eq!(len2, 57);
        let ip2 = &second[16..16 + len2];
        assert_eq!(&ip2[52..], b"hello");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip2[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((len2 - 20) as u16).to_be_bytes());
        assert_eq!(fold(sum16(sum16(0, &pseudo), &ip2[20..])), 0, "TCP checksum verifies");
    }

    #[test]
    fn udp_records_carry_their_payload_and_checksums_verify() {
        let mut c = Captures::new(Duration::from_secs(1_767_225_600));
        let q = Packet::udp("10.0.1.2:40000".parse().unwrap(), "10.0.1.3:53".parse().unwrap())
            .with_len(28 + 5)
            .with_payload(5);
        c.record(
            "a",
            Duration::from_secs(1),
            &q,
            &TcpWire { payload: b"query", ..TcpWire::default() },
        );
        let f = c.into_files().remove("a").unwrap();
        let rec = &f[24..];
        let len = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
        assert_eq!(len, 33);
        let ip = &rec[16..16 + len];
        assert_eq!((ip[9], &ip[28..]), (17, &b"query"[..]));
        assert_eq!(fold(sum16(0, &ip[..20])), 0, "IP checksum verifies");
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&13u16.to_be_bytes());
        assert_eq!(fold(sum16(sum16(0, &pseudo), &ip[20..])), 0, "UDP checksum verifies");
    }
}
