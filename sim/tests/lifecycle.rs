//! The packet lifecycle of DESIGN.md through the reference rules, snapshotted (insta): an app's
//! SYN is redirected to the proxy's 15001, its later packets skip the nat table, the proxy's
//! own marked connections pass untouched, inbound plaintext is redirected to 15006, and a
//! proxied connection to the app with a spoofed source gets its replies routed back to the
//! proxy by connmark and the fwmark rule. The rules and routing come from the generator in
//! `ambient-scenarios`, exactly as a scenario's pod gets them.

use std::time::Duration;

use ambient_kernel::trace::{Direction, Line, Record, parse_line};
use ambient_kernel::{Netns, NoSockets, RestoreOptions, SocketInfo, Trace};
use ambient_scenarios::rules::{InpodRules, PolicyRouting};

const LIFECYCLE: &str = "
# 1. the app opens a connection to a remote service: the SYN goes to the proxy's 15001
out tcp 10.0.1.5:40000 > 10.96.0.20:80 flags=S t=0
# 2. the proxy's accepted socket answers; the reply is un-NATed back to the service address
out tcp 127.0.0.1:15001 > 10.0.1.5:40000 flags=SA t=0.001
# 3. every later app packet is rewritten from conntrack without the nat table
out tcp 10.0.1.5:40000 > 10.96.0.20:80 flags=A t=0.002
out tcp 10.0.1.5:40000 > 10.96.0.20:80 flags=PA len=300 t=0.003
# 4. the proxy's own upstream connection (SO_MARK 0x539) passes untouched, out of eth0
out tcp 10.0.1.5:50000 > 10.0.2.7:15008 flags=S mark=0x539 t=0.004
in tcp 10.0.2.7:15008 > 10.0.1.5:50000 flags=SA t=0.005
out tcp 10.0.1.5:50000 > 10.0.2.7:15008 flags=A mark=0x539 t=0.006
# 5. HBONE from another node's proxy reaches 15008 unchanged
in tcp 10.0.3.3:43000 > 10.0.1.5:15008 flags=S t=0.01
# 6. plaintext from outside the mesh is redirected to 15006
in tcp 10.0.3.4:43001 > 10.0.1.5:8080 flags=S t=0.02
# 7. the proxy connects to the app with the client's address (transparent, marked) ...
out tcp 10.0.3.3:43002 > 10.0.1.5:8080 flags=S mark=0x539 t=0.03
# ... and the app's answer is routed back to the proxy (connmark 0x111 -> fwmark table 100)
out tcp 10.0.1.5:8080 > 10.0.3.3:43002 flags=SA t=0.031
out tcp 10.0.3.3:43002 > 10.0.1.5:8080 flags=A mark=0x539 t=0.032
# 8. kubelet probes are never redirected
in tcp 169.254.7.127:45000 > 10.0.1.5:8080 flags=S t=0.04
# 9. DNS: the app's query is captured, the proxy's upstream query uses zone 1
out udp 10.0.1.5:33333 > 10.96.0.10:53 t=0.05
out udp 10.0.1.5:44444 > 10.0.2.53:53 mark=0x539 t=0.051
in udp 10.0.2.53:53 > 10.0.1.5:44444 t=0.052
";

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
fn ambient_lifecycle_trace() {
    let mut n = pod();
    let eth0 = n.interface("eth0").unwrap();
    let mut records = Vec::new();
    let mut now = Duration::ZERO;
    for (i, raw) in LIFECYCLE.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let Line::Packet(p) = parse_line(raw).unwrap() else { unreachable!("no flush lines") };
        now = p.t.unwrap_or(now);
        let mut trace = Trace::default();
        let outcome = match p.direction {
            Direction::In => n.input_traced(p.packet, eth0, now, &NoSockets, &mut trace),
            Direction::Out => {
                let sock = SocketInfo { mark: p.packet.mark, ..SocketInfo::default() };
                n.output_traced(p.packet, Some(sock), now, &NoSockets, &mut trace)
            }
        };
        records.push(Record::new(&n, i, now, &outcome, &trace));
    }
    // The facts the lifecycle is about, asserted before the snapshot pins the details.
    let (syn, synack, ack) = (&records[0], &records[1], &records[2]);
    assert_eq!(syn.packet.dst, "127.0.0.1:15001");
    assert_eq!(syn.orig_dst.as_deref(), Some("10.96.0.20:80"));
    assert!(syn.rules.contains(&"nat/ISTIO_OUTPUT/6".to_string()));
    assert_eq!(synack.packet.src, "10.96.0.20:80");
    assert!(ack.rules.iter().all(|r| !r.starts_with("nat/")), "later packets skip nat");
    assert_eq!(ack.packet.dst, "127.0.0.1:15001");
    assert!(!records[4].local && records[4].packet.dst == "10.0.2.7:15008");
    assert_eq!(records[7].packet.dst, "10.0.1.5:15008");
    assert_eq!(records[8].packet.dst, "10.0.1.5:15006");
    assert!(records[10].local, "the app's reply is routed back to the proxy");
    assert_eq!(records[12].packet.dst, "10.0.1.5:8080");
    insta::assert_json_snapshot!("lifecycle_records", records);
    insta::assert_snapshot!("lifecycle_counters", n.save(true));
    insta::assert_snapshot!("lifecycle_conntrack", n.conntrack_dump(now));
}
