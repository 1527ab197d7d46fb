//! Properties of the kernel model (proptest):
//! - parse ∘ print is the identity on canonical `iptables-save` text, for generated rulesets
//!   covering every match and target the model implements;
//! - NAT is reversible per connection: through a NATing router (DNAT in PREROUTING,
//!   SNAT/MASQUERADE in POSTROUTING) and through local REDIRECT, the reply to a translated
//!   packet comes back to its sender as the exact reverse of what it sent.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_kernel::{Netns, NoSockets, Packet, RestoreOptions, Ruleset, TcpFlags};
use proptest::prelude::*;

fn hex() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(0x539), Just(0x111), Just(0xfff), Just(u32::MAX), any::<u32>()]
}

fn cidr() -> impl Strategy<Value = String> {
    (any::<[u8; 4]>(), 1u8..=32).prop_map(|(a, l)| format!("{}/{l}", Ipv4Addr::from(a)))
}

fn neg() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(""), Just("! ")]
}

fn iface() -> impl Strategy<Value = String> {
    prop_oneof![Just("lo"), Just("eth0"), Just("eth+"), Just("veth1234abcd"), Just("a.b-c_d")]
        .prop_map(String::from)
}

fn port_range() -> impl Strategy<Value = String> {
    (0u16..=65535, 0u16..=200).prop_map(|(a, d)| {
        let b = a.saturating_add(d);
        if d == 0 || a == b { a.to_string() } else { format!("{a}:{b}") }
    })
}

/// Matches valid without a protocol.
fn generic_match() -> BoxedStrategy<String> {
    prop_oneof![
        (neg(), hex(), hex()).prop_map(|(n, v, m)| format!("-m mark {n}--mark 0x{v:x}/0x{m:x}")),
        (neg(), hex()).prop_map(|(n, v)| format!("-m connmark {n}--mark 0x{v:x}")),
        (neg(), 1u8..128).prop_map(|(n, s)| {
            let names = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT"];
            let list: Vec<&str> = (0..7).filter(|i| s & (1 << i) != 0).map(|i| names[i]).collect();
            format!("-m conntrack {n}--ctstate {}", list.join(","))
        }),
        (neg(), 1u8..32).prop_map(|(n, s)| {
            let names = ["INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED"];
            let list: Vec<&str> = (0..5).filter(|i| s & (1 << i) != 0).map(|i| names[i]).collect();
            format!("-m state {n}--state {}", list.join(","))
        }),
        (neg(), neg(), 0u8..3).prop_map(|(a, b, k)| match k {
            0 => format!("-m addrtype {a}--src-type LOCAL"),
            1 => format!("-m addrtype {a}--dst-type UNICAST,BROADCAST"),
            _ => format!("-m addrtype {a}--src-type LOCAL {b}--dst-type MULTICAST"),
        }),
        "[ -~]{0,30}".prop_map(|c| {
            let mut s = String::from("-m comment --comment \"");
            for ch in c.chars() {
                if matches!(ch, '"' | '\\' | '\'') {
                    s.push('\\');
                }
                s.push(ch);
            }
            s.push('"');
            s
        }),
    ]
    .boxed()
}

/// The one protocol match a canonical rule can have after `-p <proto>` (iptables-nft folds
/// several into one), plus multiport for tcp/udp.
fn proto_match(proto: Option<&'static str>) -> BoxedStrategy<Option<String>> {
    let m: BoxedStrategy<String> = match proto {
        Some("tcp") => prop_oneof![
            (neg(), port_range(), neg(), port_range())
                .prop_map(|(a, s, b, d)| format!("-m tcp {a}--sport {s} {b}--dport {d}")),
            Just("-m tcp --tcp-flags FIN,SYN,RST,ACK SYN".to_string()),
            Just("-m tcp ! --tcp-flags SYN,ACK SYN".to_string()),
            Just("-m tcp".to_string()),
        ]
        .boxed(),
        Some("udp") => {
            (neg(), port_range()).prop_map(|(a, d)| format!("-m udp {a}--dport {d}")).boxed()
        }
        Some("icmp") => prop_oneof![
            (neg(), 0u8..20).prop_map(|(n, t)| format!("-m icmp {n}--icmp-type {t}")),
            Just("-m icmp --icmp-type 3/3".to_string()),
        ]
        .boxed(),
        _ => return Just(None).boxed(),
    };
    let multiport =
        (neg(), prop::collection::vec(port_range(), 1..5), 0u8..3).prop_map(|(n, ports, k)| {
            let opt = ["--sports", "--dports", "--ports"][usize::from(k)];
            format!("-m multiport {n}{opt} {}", ports.join(","))
        });
    if matches!(proto, Some("tcp" | "udp")) {
        prop_oneof![Just(None), m.prop_map(Some), multiport.prop_map(Some)].boxed()
    } else {
        prop_oneof![Just(None), m.prop_map(Some)].boxed()
    }
}

/// Generic matches with the protocol match (if any) at some position among them.
fn matches_for(proto: Option<&'static str>) -> BoxedStrategy<Vec<String>> {
    (prop::collection::vec(generic_match(), 0..3), proto_match(proto), any::<usize>())
        .prop_map(|(mut v, p, at)| {
            if let Some(p) = p {
                let at = at % (v.len() + 1);
                v.insert(at, p);
            }
            v
        })
        .boxed()
}

fn target_for(table: &'static str, proto: Option<&'static str>) -> BoxedStrategy<String> {
    let mut t: Vec<BoxedStrategy<String>> = vec![
        Just("-j ACCEPT".to_string()).boxed(),
        Just(if table == "nat" { "-j ACCEPT" } else { "-j DROP" }.to_string()).boxed(),
        Just("-j RETURN".to_string()).boxed(),
        Just("-j OTHER".to_string()).boxed(),
        Just("-g OTHER".to_string()).boxed(),
        Just(String::new()).boxed(),
        (hex(), hex()).prop_map(|(v, m)| format!("-j MARK --set-xmark 0x{v:x}/0x{m:x}")).boxed(),
        (hex(), hex(), 0u8..3)
            .prop_map(|(v, m, k)| match k {
                0 => format!("-j CONNMARK --set-xmark 0x{v:x}/0x{m:x}"),
                1 => format!("-j CONNMARK --save-mark --nfmask 0x{v:x} --ctmask 0x{m:x}"),
                _ => format!("-j CONNMARK --restore-mark --nfmask 0x{v:x} --ctmask 0x{m:x}"),
            })
            .boxed(),
        ("[a-z: ]{1,20}", 0u8..8)
            .prop_map(|(p, l)| {
                let level = if l == 4 { String::new() } else { format!(" --log-level {l}") };
                format!("-j LOG --log-prefix \"{p}\"{level}")
            })
            .boxed(),
    ];
    let ports = matches!(proto, Some("tcp" | "udp"));
    match table {
        "nat" => {
            t.push(
                (any::<[u8; 4]>())
                    .prop_map(|a| format!("-j DNAT --to-destination {}", Ipv4Addr::from(a)))
                    .boxed(),
            );
            t.push(
                (any::<[u8; 4]>())
                    .prop_map(|a| format!("-j SNAT --to-source {}", Ipv4Addr::from(a)))
                    .boxed(),
            );
            t.push(Just("-j MASQUERADE".to_string()).boxed());
            t.push(Just("-j REDIRECT".to_string()).boxed());
            if ports {
                t.push((1u16..65535).prop_map(|p| format!("-j REDIRECT --to-ports {p}")).boxed());
                t.push(
                    (any::<[u8; 4]>(), 1u16..1000)
                        .prop_map(|(a, p)| {
                            format!("-j DNAT --to-destination {}:{p}-{}", Ipv4Addr::from(a), p + 10)
                        })
                        .boxed(),
                );
                t.push(
                    (1u16..65535)
                        .prop_map(|p| format!("-j MASQUERADE --to-ports {p} --random"))
                        .boxed(),
                );
            }
        }
        "mangle" if ports => {
            t.push((1u16..65535, hex(), hex()).prop_map(|(p, v, m)| format!("-j TPROXY --on-port {p} --on-ip 127.0.0.1 --tproxy-mark 0x{v:x}/0x{m:x}")).boxed());
        }
        "raw" => {
            t.push((1u16..=65535).prop_map(|z| format!("-j CT --zone {z}")).boxed());
            t.push(Just("-j CT --notrack".to_string()).boxed());
            t.push(Just("-j NOTRACK".to_string()).boxed());
        }
        "filter" => {
            t.push(Just("-j REJECT --reject-with icmp-port-unreachable".to_string()).boxed());
            t.push(Just("-j REJECT --reject-with icmp-host-prohibited".to_string()).boxed());
            if proto == Some("tcp") {
                t.push(Just("-j REJECT --reject-with tcp-reset".to_string()).boxed());
            }
        }
        _ => {}
    }
    prop::strategy::Union::new(t).boxed()
}

/// One rule (in canonical option order) for a user chain of `table`.
fn rule(table: &'static str) -> impl Strategy<Value = String> {
    let proto = prop_oneof![Just(None), Just(Some("tcp")), Just(Some("udp")), Just(Some("icmp"))];
    (
        proto,
        prop::option::of((neg(), cidr())),
        prop::option::of((neg(), cidr())),
        prop::option::of((neg(), iface())),
        prop::option::of((neg(), iface())),
        any::<bool>(),
    )
        .prop_flat_map(move |(p, s, d, i, o, pneg)| {
            let matches = matches_for(if pneg { None } else { p });
            (Just((p, s, d, i, o, pneg)), matches, target_for(table, if pneg { None } else { p }))
        })
        .prop_map(|((p, s, d, i, o, pneg), matches, target)| {
            let mut r = String::from("-A GEN");
            if let Some((n, c)) = s {
                r += &format!(" {n}-s {c}");
            }
            if let Some((n, c)) = d {
                r += &format!(" {n}-d {c}");
            }
            if let Some((n, c)) = i {
                r += &format!(" {n}-i {c}");
            }
            if let Some((n, c)) = o {
                r += &format!(" {n}-o {c}");
            }
            if let Some(p) = p {
                r += &format!(" {}-p {p}", if pneg { "! " } else { "" });
            }
            for m in matches {
                r += &format!(" {m}");
            }
            if !target.is_empty() {
                r += &format!(" {target}");
            }
            r
        })
}

fn ruleset() -> impl Strategy<Value = String> {
    let tables = ["raw", "mangle", "nat", "filter"];
    tables.map(|t| prop::collection::vec(rule(t), 0..6).prop_map(move |rules| (t, rules))).prop_map(
        |blocks| {
            let mut text = String::new();
            for (t, rules) in blocks {
                text += &format!("*{t}\n:GEN - [0:0]\n:OTHER - [0:0]\n");
                for r in rules {
                    text += &r;
                    text.push('\n');
                }
                text += "COMMIT\n";
            }
            text
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_print_is_identity_on_canonical_text(text in ruleset()) {
        let first = Ruleset::from_restore(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let canonical = first.save(true);
        let second = Ruleset::from_restore(&canonical).map_err(|e| TestCaseError::fail(format!("{e}\n{canonical}")))?;
        prop_assert_eq!(second.save(true), canonical.clone());
        // And the canonical text of generated rules is what was generated, modulo masks.
        let third = Ruleset::from_restore(&second.save(false)).unwrap();
        prop_assert_eq!(third, second);
    }
}

const ROUTER_RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.2.20:8080
-A PREROUTING -d 10.96.0.11/32 -p udp -j DNAT --to-destination 10.0.2.21
-A PREROUTING -d 10.96.0.12/32 -p tcp -j DNAT --to-destination 10.0.2.22:9000-9003
-A POSTROUTING -s 10.0.1.0/28 -o eth1 -j MASQUERADE
-A POSTROUTING -s 10.0.1.16/28 -o eth1 -p tcp -j SNAT --to-source 10.0.2.100:2000-2003
-A POSTROUTING -s 10.0.1.16/28 -o eth1 -p udp -j SNAT --to-source 10.0.2.101
COMMIT
";

fn router() -> Netns {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.1/24 dev eth0").unwrap();
    n.ip("addr add 10.0.2.1/24 dev eth1").unwrap();
    n.forwarding = true;
    n.restore(ROUTER_RULES, RestoreOptions::default()).unwrap();
    n
}

fn reversed(p: &Packet) -> Packet {
    let mut r = *p;
    std::mem::swap(&mut r.src, &mut r.dst);
    std::mem::swap(&mut r.sport, &mut r.dport);
    r.mark = 0;
    r
}

fn flow() -> impl Strategy<Value = (bool, u8, u16, u8, u16)> {
    // (tcp?, client host, client port, destination choice, destination port)
    (any::<bool>(), 2u8..32, 1u16..=65535, 0u8..5, 1u16..=65535)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nat_is_reversible_per_connection(flows in prop::collection::vec(flow(), 1..40)) {
        let mut n = router();
        let eth0 = n.interface("eth0").unwrap();
        let eth1 = n.interface("eth1").unwrap();
        let now = Duration::from_secs(1);
        for (tcp, host, sport, d, dport) in flows {
            let src = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, host), sport);
            let dst = match d {
                0 => SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80),
                1 => SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), dport),
                2 => SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 12), dport),
                _ => SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 50), dport),
            };
            let out = if tcp { Packet::tcp(src, dst, TcpFlags::S) } else { Packet::udp(src, dst) };
            let there = n.input(out, eth0, now, &NoSockets);
            if !there.accepted() {
                // A tuple clash with an earlier flow (same client tuple translated alike).
                continue;
            }
            let mut back = reversed(&there.packet);
            if tcp {
                back.tcp_flags = TcpFlags::SA;
            }
            let home = n.input(back, eth1, now, &NoSockets);
            prop_assert!(home.accepted(), "reply dropped: {:?}", home.verdict);
            let mut expect = reversed(&out);
            expect.tcp_flags = back.tcp_flags;
            prop_assert_eq!(home.packet, expect);
        }
    }

    #[test]
    fn local_redirect_is_reversible(ports in prop::collection::vec((1u16..=65535, 1u16..=65535, any::<[u8; 4]>()), 1..40)) {
        let mut n = Netns::new();
        n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
        n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
        n.restore(&ambient_scenarios::rules::InpodRules::default().restore_text(), RestoreOptions { noflush: true, counters: false }).unwrap();
        let now = Duration::from_secs(1);
        for (sport, dport, dst) in ports {
            let dst = Ipv4Addr::from(dst);
            if dst.is_loopback() || dst.is_multicast() || dst.is_broadcast() || dst.octets()[0] == 0 || dst == Ipv4Addr::new(169, 254, 7, 127) {
                continue;
            }
            let syn = Packet::tcp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), sport), SocketAddrV4::new(dst, dport), TcpFlags::S);
            let there = n.output(syn, None, now, &NoSockets);
            if !there.accepted() || !there.is_local() {
                continue;
            }
            let mut back = reversed(&there.packet);
            back.tcp_flags = TcpFlags::SA;
            let home = n.output(back, None, now, &NoSockets);
            prop_assert!(home.accepted() && home.is_local());
            let mut expect = reversed(&syn);
            expect.tcp_flags = TcpFlags::SA;
            prop_assert_eq!(home.packet, expect);
        }
    }
}
