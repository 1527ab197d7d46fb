//! Packets per second through the kernel model with the reference in-pod rules, beside a bare
//! 5-tuple hash-map lookup measured in the same run (the floor).
//!
//! Run: `cargo bench -p ambient-sim --bench kernel` (optionally `-- --secs 2` per measurement).
//! - first packet: an app's SYN to a new destination — full traversal: route, raw, conntrack
//!   entry creation, mangle, nat OUTPUT (REDIRECT to 15001, binding set up), re-route, filter,
//!   POSTROUTING with the null source binding, confirm, loop back through PREROUTING and INPUT;
//! - established packet: an app's ACK on one of 1,024 redirected connections — the conntrack
//!   fast path (lookup, TCP state, recorded NAT, re-route, the raw/mangle rules every packet
//!   still traverses, loopback);
//! - established inbound: an ACK arriving on eth0 for one of 1,024 connections (no NAT);
//! - conntrack only: for the same redirected ACKs, just the conntrack part of the fast path
//!   (`conntrack::Table::track` + applying the recorded NAT), no hooks or rules;
//! - floor: `HashMap<(u32, u32, u16, u16, u8), u32>` (std hasher) lookups of the same number of
//!   5-tuples, round robin.
//!
//! Each figure is the best of five timed rounds.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ambient_kernel::conntrack::{Manip, Track};
use ambient_kernel::{Netns, NoSockets, Packet, RestoreOptions, TcpFlags};
use ambient_scenarios::rules::{InpodRules, PolicyRouting};

const CONNS: usize = 1024;

fn pod() -> Netns {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
    for cmd in PolicyRouting::default().ip_commands() {
        n.ip(&cmd).unwrap();
    }
    n.restore(
        &InpodRules::default().restore_text(),
        RestoreOptions { noflush: true, counters: false },
    )
    .unwrap();
    n
}

fn app(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), 1024 + (i % 60_000) as u16)
}

fn remote(i: usize) -> SocketAddrV4 {
    let i = i as u32;
    SocketAddrV4::new(Ipv4Addr::from(0x0a40_0000 | (i / 60_000) << 8 | (i % 251)), 80)
}

/// Runs `f` for about `secs` seconds, five times; returns the best rate in operations/s.
fn rate(secs: f64, mut f: impl FnMut(usize) -> usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut ops = 0usize;
        let mut i = 0usize;
        while start.elapsed().as_secs_f64() < secs {
            ops += f(i);
            i += 1;
        }
        best = best.max(ops as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let now = Duration::from_secs(1);
    const BATCH: usize = 4096;

    // First packets: new connections, the table flushed every 60,000.
    let mut n = pod();
    let mut seq = 0usize;
    let first = if !run("first") {
        f64::NAN
    } else {
        rate(secs, |_| {
            for _ in 0..BATCH {
                if seq.is_multiple_of(60_000) {
                    n.flush_conntrack();
                }
                let syn = Packet::tcp(app(seq), remote(seq), TcpFlags::S);
                let o = n.output(black_box(syn), None, now, &NoSockets);
                debug_assert!(o.is_local());
                black_box(o);
                seq += 1;
            }
            BATCH
        })
    };

    // Established: 1,024 redirected connections, ACKs round robin.
    let mut n = pod();
    let mut acks = Vec::new();
    for i in 0..CONNS {
        let syn = Packet::tcp(app(i), remote(i), TcpFlags::S);
        let o = n.output(syn, None, now, &NoSockets);
        let synack = Packet::tcp(o.packet.dst_sock(), o.packet.src_sock(), TcpFlags::SA);
        n.output(synack, None, now, &NoSockets);
        let ack = Packet::tcp(app(i), remote(i), TcpFlags::A).with_len(52);
        assert!(n.output(ack, None, now, &NoSockets).is_local());
        acks.push(ack);
    }
    let established = if !run("established") {
        f64::NAN
    } else {
        rate(secs, |r| {
            for i in 0..BATCH {
                let o = n.output(black_box(acks[(r * BATCH + i) % CONNS]), None, now, &NoSockets);
                black_box(o);
            }
            BATCH
        })
    };

    // The conntrack part alone, on the same connections.
    let conntrack_only = if !run("conntrack") {
        f64::NAN
    } else {
        rate(secs, |r| {
            let ct = n.conntrack_mut();
            for i in 0..BATCH {
                let mut p = black_box(acks[(r * BATCH + i) % CONNS]);
                if let Track::Tracked { id, dir, .. } = ct.track(&p, 0, now) {
                    ct.apply_nat(id, dir, Manip::Dst, false, &mut p);
                    ct.apply_nat(id, dir, Manip::Src, false, &mut p);
                }
                black_box(p);
            }
            BATCH
        })
    };

    // Established inbound: connections from outside to the proxy's 15008 (not redirected).
    let mut n = pod();
    let eth0 = n.interface("eth0").unwrap();
    let mut inbound = Vec::new();
    for i in 0..CONNS {
        let peer =
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, (i % 250) as u8 + 1), 30_000 + i as u16);
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), 15008);
        n.input(Packet::tcp(peer, local, TcpFlags::S), eth0, now, &NoSockets);
        n.output(Packet::tcp(local, peer, TcpFlags::SA), None, now, &NoSockets);
        let ack = Packet::tcp(peer, local, TcpFlags::A).with_len(52);
        assert!(n.input(ack, eth0, now, &NoSockets).is_local());
        inbound.push(ack);
    }
    let established_in = if !run("inbound") {
        f64::NAN
    } else {
        rate(secs, |r| {
            for i in 0..BATCH {
                let o = n.input(black_box(inbound[(r * BATCH + i) % CONNS]), eth0, now, &NoSockets);
                black_box(o);
            }
            BATCH
        })
    };

    // Floor: a bare 5-tuple hash-map lookup.
    let mut map: HashMap<(u32, u32, u16, u16, u8), u32> = HashMap::new();
    let keys: Vec<(u32, u32, u16, u16, u8)> = (0..CONNS)
        .map(|i| (u32::from(*app(i).ip()), u32::from(*remote(i).ip()), app(i).port(), 80, 6))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        map.insert(*k, i as u32);
    }
    let floor = rate(secs, |r| {
        let mut sum = 0u32;
        for i in 0..BATCH {
            sum = sum.wrapping_add(*map.get(black_box(&keys[(r * BATCH + i) % CONNS])).unwrap());
        }
        black_box(sum);
        BATCH
    });

    let m = |x: f64| x / 1e6;
    println!("kernel model, reference in-pod rules ({CONNS} connections, best of 5 x {secs} s)");
    println!("  floor: HashMap 5-tuple lookup      {:>8.2} M/s", m(floor));
    println!(
        "  first packet (SYN, full path)      {:>8.2} M packets/s  ({:.1}x the floor's time)",
        m(first),
        floor / first
    );
    println!(
        "  established (app ACK, redirected)  {:>8.2} M packets/s  ({:.1}x the floor's time)",
        m(established),
        floor / established
    );
    println!(
        "  established inbound (ACK on eth0)  {:>8.2} M packets/s  ({:.1}x the floor's time)",
        m(established_in),
        floor / established_in
    );
    println!(
        "  conntrack only (lookup+state+NAT)  {:>8.2} M packets/s  ({:.1}x the floor's time)",
        m(conntrack_only),
        floor / conntrack_only
    );
}
