//! The model against real-kernel runs. Each `tests/data/kernel-runs/NAME.py` scenario ran with
//! real sockets in a real pod network namespace holding the reference rules (see `run.sh`);
//! the kernel's `iptables-save -c` and `conntrack -L` after the run are in `NAME.counters` and
//! `NAME.conntrack`, the packets that crossed the interfaces in `NAME.wire`. `NAME.packets` is
//! the same traffic in `testbed trace` form (as the sockets sent it). Replaying it through the
//! model must give exactly the kernel's rule and policy counters, and the same connections
//! (states, tuples, flags, marks, zones; remaining timeouts are not compared).

use std::fs;
use std::path::Path;
use std::time::Duration;

use ambient_sim::kernel::trace::{Direction, Line, parse_line};
use ambient_sim::kernel::{Netns, NoSockets, RestoreOptions, SocketInfo};

const REFERENCE: &str = include_str!("../../scenarios/testdata/istio-inpod.rules");

/// The pod namespace of `run.sh`, in the model.
fn pod() -> Netns {
    let mut n = Netns::new();
    for cmd in [
        "addr add 10.0.1.5/24 dev eth0",
        "route add default via 10.0.1.1 dev eth0",
        "rule add fwmark 0x111/0xfff pref 32764 lookup 100",
        "route add local 0.0.0.0/0 dev lo table 100",
    ] {
        n.ip(cmd).unwrap();
    }
    n.restore(REFERENCE, RestoreOptions { noflush: true, counters: false }).unwrap();
    n
}

/// `conntrack -L` lines without the remaining-timeout and `use=` fields.
fn normalise(dump: &str) -> Vec<String> {
    let mut v: Vec<String> = dump
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with("use=")).collect();
            // proto, number, timeout, rest
            let mut out = vec![w[0], w[1]];
            out.extend(&w[3..]);
            out.join(" ")
        })
        .collect();
    v.sort();
    v
}

fn replay(name: &str) -> (String, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel-runs");
    let text = fs::read_to_string(dir.join(format!("{name}.packets"))).unwrap();
    let mut n = pod();
    let eth0 = n.interface("eth0").unwrap();
    let mut now = Duration::ZERO;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        match parse_line(raw).unwrap_or_else(|e| panic!("{name}.packets:{}: {e:?}", i + 1)) {
            Line::Flush { t } => {
                now = t.unwrap_or(now);
                n.flush_conntrack();
            }
            Line::Packet(p) => {
                now = p.t.unwrap_or(now);
                match p.direction {
                    Direction::In => {
                        n.input(p.packet, eth0, now, &NoSockets);
                    }
                    Direction::Out => {
                        let sock = (!p.no_socket)
                            .then(|| SocketInfo { mark: p.packet.mark, ..SocketInfo::default() });
                        n.output(p.packet, sock, now, &NoSockets);
                    }
                }
            }
        }
    }
    (n.save(true), normalise(&n.conntrack_dump(now)))
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel-runs");
    let counters = fs::read_to_string(dir.join(format!("{name}.counters"))).unwrap();
    let conntrack = fs::read_to_string(dir.join(format!("{name}.conntrack"))).unwrap();
    let (got_counters, got_conntrack) = replay(name);
    assert_eq!(got_counters, counters, "{name}: counters differ from the kernel's");
    assert_eq!(got_conntrack, normalise(&conntrack), "{name}: conntrack differs from the kernel's");
}

#[test]
fn redirect_outbound() {
    check("redirect-outbound");
}

#[test]
fn redirect_inbound() {
    check("redirect-inbound");
}

#[test]
fn spoofed_to_app() {
    check("spoofed-to-app");
}

#[test]
fn marked_upstream() {
    check("marked-upstream");
}

#[test]
fn dns() {
    check("dns");
}

#[test]
fn refused() {
    check("refused");
}

#[test]
fn flush_midstream() {
    check("flush-midstream");
}

#[test]
fn flush_proxy_first() {
    check("flush-proxy-first");
}
