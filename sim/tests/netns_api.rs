//! The `Netns` API as the simulator and the differential suite drive it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_kernel::trace::Event;
use ambient_kernel::{
    CtState, Disposition, DropCause, Listeners, Netns, NoSockets, Packet, PacketVerdict, Protocol,
    RestoreOptions, SocketInfo, Table, TcpFlags, Trace,
};
use ambient_scenarios::rules::{InpodRules, PolicyRouting};

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

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

#[test]
fn original_dst_is_what_so_original_dst_returns() {
    let mut n = pod();
    let syn = Packet::tcp(sa("10.0.1.5:40000"), sa("10.96.0.20:80"), TcpFlags::S);
    let o = n.output(syn, None, secs(0), &NoSockets);
    assert_eq!(o.orig_dst, Some(sa("10.96.0.20:80")));
    // The proxy's accepted socket: local 127.0.0.1:15001, peer 10.0.1.5:40000.
    assert_eq!(
        n.original_dst(sa("127.0.0.1:15001"), sa("10.0.1.5:40000"), secs(1)),
        Some(sa("10.96.0.20:80"))
    );
    assert_eq!(n.original_dst(sa("127.0.0.1:15001"), sa("10.0.1.5:40001"), secs(1)), None);
    // Gone once the entry expires (SYN_SENT: 120 s).
    assert_eq!(n.original_dst(sa("127.0.0.1:15001"), sa("10.0.1.5:40000"), secs(120)), None);
    assert_eq!(n.expire(secs(120)), 1);
    assert!(n.conntrack().is_empty());
}

#[test]
fn a_full_table_drops_new_connections_and_keeps_nothing_of_them() {
    let mut n = pod();
    n.conntrack_mut().config.max_entries = 2;
    for port in [1, 2] {
        let o = n.output(
            Packet::tcp(sa(&format!("10.0.1.5:{port}")), sa("10.0.2.7:15008"), TcpFlags::S)
                .with_mark(0x539),
            None,
            secs(0),
            &NoSockets,
        );
        assert!(o.accepted());
    }
    let o = n.output(
        Packet::tcp(sa("10.0.1.5:3"), sa("10.0.2.7:15008"), TcpFlags::S).with_mark(0x539),
        None,
        secs(0),
        &NoSockets,
    );
    assert_eq!(o.verdict, PacketVerdict::Drop(DropCause::ConntrackFull));
    assert_eq!(n.conntrack().len(), 2);
    assert_eq!(n.describe_drop(&DropCause::ConntrackFull), "conntrack: table full");
    // Expired entries make room (purged on demand).
    let o = n.output(
        Packet::tcp(sa("10.0.1.5:3"), sa("10.0.2.7:15008"), TcpFlags::S).with_mark(0x539),
        None,
        secs(120),
        &NoSockets,
    );
    assert!(o.accepted());
    assert_eq!(n.conntrack().len(), 1);
}

#[test]
fn rules_without_conntrack_users_track_nothing() {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.restore(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j ACCEPT\nCOMMIT\n",
        RestoreOptions::default(),
    )
    .unwrap();
    assert!(!n.conntrack_enabled());
    let eth0 = n.interface("eth0").unwrap();
    let o = n.input(
        Packet::tcp(sa("10.0.2.7:1"), sa("10.0.1.5:80"), TcpFlags::S),
        eth0,
        secs(0),
        &NoSockets,
    );
    assert!(o.accepted() && o.is_local());
    assert_eq!(o.ctstate, CtState::Invalid);
    assert!(n.conntrack().is_empty());
    n.restore(
        "*filter\n-A INPUT -m conntrack --ctstate NEW -j ACCEPT\nCOMMIT\n",
        RestoreOptions { noflush: true, counters: false },
    )
    .unwrap();
    assert!(n.conntrack_enabled());
}

#[test]
fn reject_in_output_sends_the_reset_back_to_the_local_socket() {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
    n.restore("*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -m tcp --dport 25 -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset\nCOMMIT\n", RestoreOptions::default()).unwrap();
    let syn = Packet::tcp(sa("10.0.1.5:40000"), sa("10.9.9.9:25"), TcpFlags::S);
    let o = n.output(syn, Some(SocketInfo::default()), secs(0), &NoSockets);
    let PacketVerdict::Reject { by, .. } = o.verdict else { panic!("{:?}", o.verdict) };
    assert_eq!(n.rule_name(by), "filter/OUTPUT/1");
    let reply = o.reply.expect("a reset");
    assert!(reply.is_local(), "{:?}", reply.disposition);
    assert_eq!(reply.packet.src_sock(), sa("10.9.9.9:25"));
    assert_eq!(reply.packet.dst_sock(), sa("10.0.1.5:40000"));
    assert_eq!(reply.packet.tcp_flags, TcpFlags::RA);
    assert_eq!(reply.ctstate, CtState::Related);
    assert!(n.conntrack().is_empty(), "the rejected SYN's entry is discarded");
}

#[test]
fn tproxy_assigns_the_transparent_listener() {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.ip("rule add fwmark 0x111/0xfff lookup 100").unwrap();
    n.ip("route add local 0.0.0.0/0 dev lo table 100").unwrap();
    n.restore("*mangle\n-A PREROUTING -p tcp -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x111/0xfff\nCOMMIT\n", RestoreOptions::default()).unwrap();
    let mut sockets = Listeners::default();
    sockets.add(
        Protocol::Tcp,
        sa("127.0.0.1:15001"),
        SocketInfo { id: 7, transparent: true, ..SocketInfo::default() },
    );
    let eth0 = n.interface("eth0").unwrap();
    let syn = Packet::tcp(sa("10.0.2.7:1"), sa("10.0.3.3:80"), TcpFlags::S);
    let o = n.input(syn, eth0, secs(0), &sockets);
    let Disposition::Local { socket: Some(s) } = o.disposition else {
        panic!("{:?}", o.disposition)
    };
    assert_eq!(s.id, 7);
    assert_eq!(o.packet.mark, 0x111);
    // Without a transparent socket TPROXY drops.
    let o = n.input(syn, eth0, secs(0), &NoSockets);
    assert_eq!(
        o.verdict,
        PacketVerdict::Drop(DropCause::Rule(ambient_kernel::RuleIndex {
            table: Table::Mangle,
            chain: 0,
            position: 1
        }))
    );
}

#[test]
fn noflush_restore_flushes_redeclared_user_chains_and_appends_to_builtins() {
    let mut n = pod();
    let before = n.save(false);
    n.restore(
        &InpodRules::default().restore_text(),
        RestoreOptions { noflush: true, counters: false },
    )
    .unwrap();
    let after = n.save(false);
    assert_eq!(
        after.matches("-A OUTPUT -j ISTIO_OUTPUT").count(),
        2 * before.matches("-A OUTPUT -j ISTIO_OUTPUT").count()
    );
    assert_eq!(after.matches("REDIRECT --to-ports 15001").count(), 1);
    // A failed restore changes nothing.
    assert!(
        n.restore(
            "*nat\n-A OUTPUT -j NOPE\nCOMMIT\n",
            RestoreOptions { noflush: true, counters: false }
        )
        .is_err()
    );
    assert_eq!(n.save(false), after);
}

#[test]
fn traces_list_hooks_in_kernel_order() {
    let mut n = pod();
    let mut t = Trace::default();
    let syn = Packet::tcp(sa("10.0.1.5:40000"), sa("10.96.0.20:80"), TcpFlags::S);
    n.output_traced(syn, None, secs(0), &NoSockets, &mut t);
    let hooks: Vec<String> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Hook { hook, .. } => Some(hook.to_string()),
            Event::Loopback => Some("lo".into()),
            _ => None,
        })
        .collect();
    assert_eq!(hooks, ["OUTPUT", "POSTROUTING", "lo", "PREROUTING", "INPUT"]);
    assert!(t.events.iter().any(|e| matches!(e, Event::Nat { .. })));
    assert!(t.events.iter().any(|e| matches!(e, Event::Confirm { ok: true })));
    // Counters: the SYN counted once on each chain it crossed; zeroing clears them.
    assert!(n.save(true).contains("[1:60] -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"));
    n.zero_counters();
    assert!(!n.save(true).contains("[1:60]"));
}

#[test]
fn addresses_and_sources() {
    let n = pod();
    assert_eq!(n.source_for(Ipv4Addr::new(10, 9, 9, 9), 0), Ok(Ipv4Addr::new(10, 0, 1, 5)));
    assert_eq!(n.source_for(Ipv4Addr::LOCALHOST, 0), Ok(Ipv4Addr::LOCALHOST));
    // Marked 0x111: routed to table 100 (local), the destination itself is the source.
    assert_eq!(n.source_for(Ipv4Addr::new(10, 9, 9, 9), 0x111), Ok(Ipv4Addr::new(10, 9, 9, 9)));
}

#[test]
fn icmp_errors_about_nated_flows_are_translated_inside_and_out() {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.ip("addr add 10.0.2.5/24 dev eth1").unwrap();
    n.forwarding = true;
    n.restore(
        "*nat\n-A PREROUTING -d 10.0.1.5/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.0.2.9:5354\n-A POSTROUTING -o eth1 -p udp -j MASQUERADE --to-ports 20000\nCOMMIT\n",
        RestoreOptions::default(),
    )
    .unwrap();
    let (eth0, eth1) = (n.interface("eth0").unwrap(), n.interface("eth1").unwrap());
    let q = Packet::udp(sa("10.0.1.9:41200"), sa("10.0.1.5:5353"));
    let out = n.input(q, eth0, secs(0), &NoSockets);
    assert_eq!(
        (out.packet.src_sock(), out.packet.dst_sock()),
        (sa("10.0.2.5:20000"), sa("10.0.2.9:5354"))
    );
    let icmp =
        ambient_kernel::packet::Icmp { kind: 3, code: 3, id: 0, inner: Some(out.packet.tuple()) };
    let err =
        Packet::icmp(Ipv4Addr::new(10, 0, 2, 9), Ipv4Addr::new(10, 0, 2, 5), icmp).with_len(57);
    let back = n.input(err, eth1, secs(0), &NoSockets);
    assert_eq!(back.ctstate, CtState::Related);
    assert_eq!(
        (back.packet.src, back.packet.dst),
        (Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 9))
    );
    // The embedded header is the client's own packet again.
    assert_eq!(back.packet.icmp.unwrap().inner, Some(q.tuple()));
}

#[test]
fn negated_port_pair_matches_unless_both_ports_are_equal() {
    // iptables-nft 1.8.9 turns `! --sport A ! --dport B` into `sport . dport != A . B`.
    let mut n = Netns::new();
    n.restore(
        "*filter\n-A OUTPUT -p tcp ! --sport 1 ! --dport 2 -j DROP\nCOMMIT\n",
        RestoreOptions::default(),
    )
    .unwrap();
    let send = |n: &mut Netns, from: &str, to: &str| {
        n.output(Packet::tcp(sa(from), sa(to), TcpFlags::S), None, secs(0), &NoSockets).accepted()
    };
    assert!(send(&mut n, "127.0.0.1:1", "127.0.0.1:2"));
    assert!(!send(&mut n, "127.0.0.1:1", "127.0.0.1:3"), "sport equal, dport not: matches");
    assert!(!send(&mut n, "127.0.0.1:5", "127.0.0.1:2"), "dport equal, sport not: matches");
    assert!(!send(&mut n, "127.0.0.1:5", "127.0.0.1:6"));
}

#[test]
fn a_loopback_source_cannot_leave_through_another_device() {
    let mut n = pod();
    let o =
        n.output(Packet::udp(sa("127.0.0.1:5000"), sa("10.0.1.9:53")), None, secs(0), &NoSockets);
    assert_eq!(
        o.verdict,
        PacketVerdict::Drop(DropCause::Route(ambient_kernel::RouteError::LoopbackSource))
    );
}

/// Kernel 6.18, measured in a namespace with the in-pod rules and nothing on 15053: an app's
/// DNS query redirected to `127.0.0.1:15053` gets ICMP port unreachable, RELATED to the
/// query's connection, whose NAT is undone on it (the error comes from the address the app
/// asked, about the datagram as the app sent it), so the app's connected socket fails with
/// ECONNREFUSED. The error is not a reply: the entry stays UNREPLIED (30 s). Counters
/// `[2:94]` on raw/mangle OUTPUT and PREROUTING (33-byte query, 61-byte error), nat OUTPUT
/// `[1:33]`: nat sees only the query.
#[test]
fn a_dns_query_nobody_takes_is_refused_with_the_nat_undone() {
    let mut n = pod();
    let (app, asked) = (sa("10.0.1.5:45745"), sa("10.96.0.10:53"));
    let q = Packet::udp(app, asked).with_len(33).with_payload(5);
    let o = n.output(q, Some(SocketInfo::default()), secs(0), &NoSockets);
    assert!(o.accepted() && o.is_local(), "{o:?}");
    assert_eq!(o.packet.dst_sock(), sa("127.0.0.1:15053"));
    let icmp = n.port_unreachable(&o.packet).expect("an ICMP error");
    assert_eq!((icmp.src, icmp.dst, icmp.len), (Ipv4Addr::LOCALHOST, *app.ip(), 61));
    let e = n.output(icmp, Some(SocketInfo::kernel()), secs(0), &NoSockets);
    assert!(e.accepted() && e.is_local(), "{e:?}");
    assert_eq!(e.ctstate, CtState::Related);
    assert_eq!(e.packet.src, *asked.ip(), "the error comes from the address asked");
    let inner = e.packet.icmp.and_then(|i| i.inner).expect("a quoted header");
    assert_eq!(
        (inner.src, inner.sport, inner.dst, inner.dport),
        (*app.ip(), 45745, *asked.ip(), 53)
    );
    assert_eq!(
        n.conntrack_dump(secs(1)),
        "udp      17 29 src=10.0.1.5 dst=10.96.0.10 sport=45745 dport=53 [UNREPLIED] \
         src=127.0.0.1 dst=10.0.1.5 sport=15053 dport=45745 mark=0 use=1\n"
    );
    let save = n.save(true);
    for line in [
        ":OUTPUT ACCEPT [2:94]",
        "[2:94] -A PREROUTING -j ISTIO_PRERT",
        "[1:33] -A OUTPUT -j ISTIO_OUTPUT",
        "[1:33] -A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053",
    ] {
        assert!(save.contains(line), "{line} in\n{save}");
    }
    assert!(n.port_unreachable(&Packet::tcp(app, asked, TcpFlags::S)).is_none());
}
