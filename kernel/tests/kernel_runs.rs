//! The model against real-kernel runs. Each `tests/data/kernel-runs/NAME.py` scenario ran with
//! real sockets in a real pod network namespace holding the reference rules (see `run.sh`);
//! the kernel's `iptables-save -c` and `conntrack -L` after the run are in `NAME.counters` and
//! `NAME.conntrack`, the packets that crossed the interfaces in `NAME.wire`. `NAME.packets` is
//! the same traffic in `testbed trace` form (as the sockets sent it), plus `socket …` lines that
//! tell the model which local sockets exist (for `-m socket` and TPROXY). Replaying it through
//! the model must give exactly the kernel's rule and policy counters, and the same connections
//! (states, tuples, flags, marks, zones; remaining timeouts are not compared). Scenarios with
//! their own `NAME.rules` and `NAME.setup` get those instead of the reference rules.

use std::fs;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambient_kernel::trace::{Direction, Line, parse_line};
use ambient_kernel::{Netns, Protocol, RestoreOptions, SocketInfo, SocketLookup};

const REFERENCE: &str = include_str!("../../scenarios/testdata/istio-inpod.rules");

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel-runs")
}

/// The pod namespace of `run.sh`, in the model.
fn pod(name: &str) -> Netns {
    let mut n = Netns::new();
    let setup = fs::read_to_string(dir().join(format!("{name}.setup"))).unwrap_or_default();
    for cmd in [
        "addr add 10.0.1.5/24 dev eth0",
        "addr add 10.0.2.5/24 dev eth1",
        "route add default via 10.0.1.1 dev eth0",
        "rule add fwmark 0x111/0xfff pref 32764 lookup 100",
        "route add local 0.0.0.0/0 dev lo table 100",
    ] {
        // `ip route del default` in a setup file means: never add it.
        if cmd.contains("default") && setup.contains("ip route del default") {
            continue;
        }
        n.ip(cmd).unwrap();
    }
    match fs::read_to_string(dir().join(format!("{name}.rules"))) {
        Ok(rules) => n.restore(&rules, RestoreOptions::default()).unwrap(),
        Err(_) => n.restore(REFERENCE, RestoreOptions { noflush: true, counters: false }).unwrap(),
    }
    if let Ok(setup) = fs::read_to_string(dir().join(format!("{name}.setup"))) {
        for cmd in setup.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            match cmd {
                "sysctl -w net.ipv4.ip_forward=1" => n.forwarding = true,
                "ip route del default" => {}
                ip => n.ip(ip).unwrap_or_else(|e| panic!("{name}.setup: {e}")),
            }
        }
    }
    n
}

/// The sockets a scenario declares with `socket listen|connected …` lines.
#[derive(Default)]
struct Sockets {
    listening: Vec<(Protocol, SocketAddrV4, SocketInfo)>,
    connected: Vec<(Protocol, SocketAddrV4, SocketAddrV4, SocketInfo)>,
}

impl Sockets {
    /// `socket listen tcp ADDR:PORT [transparent]` or
    /// `socket connected tcp LOCAL:PORT REMOTE:PORT [transparent]`.
    fn declare(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let proto = if w[2] == "udp" { Protocol::Udp } else { Protocol::Tcp };
        let info = |rest: &[&str]| SocketInfo {
            transparent: rest.contains(&"transparent"),
            ..SocketInfo::default()
        };
        match w[1] {
            "listen" => {
                let a: SocketAddrV4 = w[3].parse().unwrap();
                let mut i = info(&w[4..]);
                i.wildcard = a.ip().is_unspecified();
                self.listening.push((proto, a, i));
            }
            "connected" => self.connected.push((
                proto,
                w[3].parse().unwrap(),
                w[4].parse().unwrap(),
                info(&w[5..]),
            )),
            other => panic!("socket {other}?"),
        }
    }
}

impl SocketLookup for Sockets {
    fn established(
        &self,
        proto: Protocol,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<SocketInfo> {
        self.connected
            .iter()
            .find(|(p, l, r, _)| *p == proto && *l == local && *r == remote)
            .map(|x| x.3)
    }

    fn listener(&self, proto: Protocol, local: SocketAddrV4) -> Option<SocketInfo> {
        let exact = self.listening.iter().find(|(p, a, _)| *p == proto && *a == local);
        let wild = || {
            self.listening.iter().find(|(p, a, _)| {
                *p == proto && a.ip().is_unspecified() && a.port() == local.port()
            })
        };
        exact.or_else(wild).map(|x| x.2)
    }
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
    let text = fs::read_to_string(dir().join(format!("{name}.packets"))).unwrap();
    let mut n = pod(name);
    let eth0 = n.interface("eth0").unwrap();
    let mut sockets = Sockets::default();
    let mut now = Duration::ZERO;
    for (i, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if raw.starts_with("socket ") {
            sockets.declare(raw);
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
                        let iif = p.iif.as_deref().map_or(eth0, |i| n.interface(i).unwrap());
                        n.input(p.packet, iif, now, &sockets);
                    }
                    Direction::Out => {
                        let sock = p.sender.socket(p.packet.mark);
                        n.output(p.packet, sock, now, &sockets);
                    }
                }
            }
        }
    }
    (n.save(true), normalise(&n.conntrack_dump(now)))
}

fn check(name: &str) {
    let counters = fs::read_to_string(dir().join(format!("{name}.counters"))).unwrap();
    let conntrack = fs::read_to_string(dir().join(format!("{name}.conntrack"))).unwrap();
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

#[test]
fn reject() {
    check("reject");
}

#[test]
fn tproxy() {
    check("tproxy");
}

#[test]
fn forward_nat() {
    check("forward-nat");
}

#[test]
fn chains() {
    check("chains");
}

#[test]
fn icmp() {
    check("icmp");
}

#[test]
fn forward_icmp() {
    check("forward-icmp");
}

/// `tcp-states.out` (from `tcp-states.py`): raw TCP segments forwarded through a pod namespace,
/// with the kernel's ctstate and conntrack entry after every one. The model must agree on both,
/// segment by segment.
#[test]
fn tcp_state_machine_segment_by_segment() {
    use ambient_kernel::{Packet, TcpFlags};
    let text = fs::read_to_string(dir().join("tcp-states.out")).unwrap();
    let mut n = Netns::new();
    for cmd in [
        "addr add 10.0.1.5/24 dev eth0",
        "addr add 10.0.2.5/24 dev eth1",
        "route add 10.0.8.0/24 via 10.0.1.9",
        "route add 10.0.9.0/24 via 10.0.2.9",
    ] {
        n.ip(cmd).unwrap();
    }
    n.forwarding = true;
    n.restore(
        "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate INVALID -j ACCEPT\n-A FORWARD -m conntrack --ctstate NEW -j ACCEPT\n-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\n-A FORWARD -m conntrack --ctstate RELATED -j ACCEPT\n-A FORWARD -m conntrack --ctstate UNTRACKED -j ACCEPT\nCOMMIT\n",
        RestoreOptions::default(),
    )
    .unwrap();
    let (eth0, eth1) = (n.interface("eth0").unwrap(), n.interface("eth1").unwrap());
    let mut now = Duration::ZERO;
    let mut mismatches = Vec::new();
    let mut segments = 0;
    for line in text.lines() {
        if line.starts_with('#') {
            n.flush_conntrack();
            continue;
        }
        let mut parts = line.split(" | ");
        let (head, timeout, entry) =
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let (seq, rest) = head.split_once(": ").unwrap();
        let w: Vec<&str> = rest.split_whitespace().collect();
        let (dir, flags, state) = (w[0], w[1], w[3]);
        let cport = 30000 + seq.parse::<u16>().unwrap();
        let (client, server) =
            (SocketAddrV4::new([10, 0, 8, 1].into(), cport), "10.0.9.1:80".parse().unwrap());
        let flags = TcpFlags::parse(flags).unwrap();
        let (pkt, iif) = match dir {
            "o" => (Packet::tcp(client, server, flags), eth0),
            _ => (Packet::tcp(server, client, flags), eth1),
        };
        let pkt = pkt.with_payload(if flags.has(TcpFlags::PSH) { 10 } else { 0 });
        now += Duration::from_millis(50);
        let o = n.input(pkt, iif, now, &Sockets::default());
        let got_state = if o.accepted() { o.ctstate.name() } else { "DROPPED" };
        let raw = n.conntrack_dump(now);
        let got_timeout = raw.split_whitespace().nth(2).unwrap_or("-").to_string();
        let dump = normalise(&raw);
        let got_entry = dump.first().cloned().unwrap_or_else(|| "-".to_string());
        // The kernel shows whole seconds left a moment after the segment: one less, at most.
        let timeout_ok = match (timeout.parse::<u64>(), got_timeout.parse::<u64>()) {
            (Ok(k), Ok(m)) => k == m || k + 1 == m,
            _ => timeout == got_timeout,
        };
        if got_state != state || got_entry != entry || !timeout_ok {
            mismatches.push(format!("{line}\n   model: {got_state} | {got_timeout} | {got_entry}"));
        }
        segments += 1;
    }
    assert!(segments >= 90, "{segments} segments");
    assert!(
        mismatches.is_empty(),
        "{} of {segments} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn no_route() {
    check("no-route");
}

#[test]
fn icmp_ratelimit() {
    check("icmp-ratelimit");
}

/// `tests/data/kernel-fuzz/seed-N.*` (from `run.py`): random rulesets and random packets
/// forwarded through a namespace, the kernel's counters and connections afterwards. The model
/// must reproduce both for every seed.
#[test]
fn kernel_fuzz() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel-fuzz");
    let mut seeds: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    assert!(seeds.iter().any(|p| p.to_str().unwrap().contains("local-")), "no local-* cases");
    seeds.sort();
    assert!(seeds.len() >= 100, "{} fuzz cases", seeds.len());
    let mut failures = Vec::new();
    for rules_path in &seeds {
        let name = rules_path.file_stem().unwrap().to_str().unwrap().to_string();
        let mut n = Netns::new();
        for cmd in [
            "addr add 10.0.1.5/24 dev eth0",
            "addr add 10.0.2.5/24 dev eth1",
            "route add 10.0.8.0/24 via 10.0.1.9",
            "route add 10.0.9.0/24 via 10.0.2.9",
        ] {
            n.ip(cmd).unwrap();
        }
        n.forwarding = true;
        n.restore(&fs::read_to_string(rules_path).unwrap(), RestoreOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let packets = fs::read_to_string(rules_path.with_extension("packets")).unwrap();
        let mut now = Duration::ZERO;
        let sockets = Sockets::default();
        for line in packets.lines() {
            let Line::Packet(p) = parse_line(line).unwrap() else { panic!("{name}: {line}") };
            now = p.t.unwrap_or(now);
            let outcome = match p.direction {
                Direction::In => {
                    let iif = n.interface(p.iif.as_deref().unwrap()).unwrap();
                    n.input(p.packet, iif, now, &sockets)
                }
                Direction::Out => n.output(p.packet, p.sender.socket(p.packet.mark), now, &sockets),
            };
            answer_as_the_stack(&mut n, &outcome, now, 0);
        }
        let counters = fs::read_to_string(rules_path.with_extension("counters")).unwrap();
        let conntrack = fs::read_to_string(rules_path.with_extension("conntrack")).unwrap();
        if n.save(true) != counters {
            failures.push(format!(
                "{name}: counters\n--- kernel\n{counters}--- model\n{}",
                n.save(true)
            ));
        }
        if normalise(&n.conntrack_dump(now)) != normalise(&conntrack) {
            failures.push(format!(
                "{name}: conntrack\n--- kernel\n{conntrack}--- model\n{}",
                n.conntrack_dump(now)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

/// What the router's own stack sends when a packet is delivered to it and no socket wants it
/// (no socket exists in the fuzz cases): a reset for a TCP segment that is not one, port
/// unreachable for UDP, an echo reply for an echo request — all from the kernel's control
/// sockets, each run through the model in turn.
fn answer_as_the_stack(n: &mut Netns, o: &ambient_kernel::Fate, now: Duration, depth: u8) {
    use ambient_kernel::packet::{Icmp, icmp_type};
    use ambient_kernel::{Packet, TcpFlags};
    if !o.accepted() || !o.is_local() || depth > 3 {
        return;
    }
    let p = o.packet;
    let reply = match p.proto {
        Protocol::Tcp if !p.tcp_flags.has(TcpFlags::RST) => {
            let flags = if p.tcp_flags.has(TcpFlags::ACK) { TcpFlags::R } else { TcpFlags::RA };
            Some(Packet::tcp(p.dst_sock(), p.src_sock(), flags).with_len(40))
        }
        Protocol::Udp => {
            let icmp =
                Icmp { kind: icmp_type::DEST_UNREACH, code: 3, id: 0, inner: Some(p.tuple()) };
            Some(Packet::icmp(p.dst, p.src, icmp).with_len(28 + p.len.min(548)))
        }
        Protocol::Icmp => p.icmp.filter(|i| i.kind == icmp_type::ECHO_REQUEST).map(|i| {
            let echo = Icmp { kind: icmp_type::ECHO_REPLY, ..i };
            Packet::icmp(p.dst, p.src, echo).with_len(p.len)
        }),
        _ => None,
    };
    if let Some(r) = reply {
        let o = n.output(r, Some(SocketInfo::kernel()), now, &Sockets::default());
        answer_as_the_stack(n, &o, now, depth + 1);
    }
}
