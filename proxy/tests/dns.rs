//! The DNS proxy on 15053, in process (the in-memory network, paused time): a pod's queries over
//! UDP and TCP answered from the mesh, forwarded to the upstream (from the pod's namespace, with
//! a fresh id, relayed with the client's), and failed with SERVFAIL or FORMERR — each one `dns`
//! event. The kernel's part (REDIRECT to 15053, conntrack zone 1) is the simulator's and the
//! netns harness's to test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::{FIXED_ORIGIN, WallClock};
use ambient_proxy::crypto::deterministic_provider;
use ambient_proxy::dns::wire::{self, Message, Name, RData, Rcode, Record, rtype};
use ambient_proxy::events::{DnsResult, ProxyEvent, RecordingSink};
use ambient_proxy::mesh::{MeshSpec, MeshState, Service, Workload};
use ambient_proxy::net::memory::MemoryNetwork;
use ambient_proxy::net::{ConnectOptions, Datagram, ListenOptions, Listener, Network, UdpOptions};
use ambient_proxy::node::{NodeProxy, PodSpec, ProxyConfig};
use ambient_proxy::tls::TlsContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POD: &str = "10.0.1.5";
const UPSTREAM: &str = "203.0.113.53:53";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// The queries the upstream saw: (from, id, name).
type Seen = Arc<Mutex<Vec<(SocketAddr, u16, String)>>>;

/// An upstream resolver in namespace `dns`: `example.com` is 93.184.216.34, `big.example` has
/// 40 addresses (truncated over UDP, whole over TCP), anything else NXDOMAIN.
async fn upstream(net: &MemoryNetwork, seen: Seen) {
    let ns = "dns".to_string();
    net.add_address("dns", ip("203.0.113.53"));
    let answer = |q: &Message| {
        let name = q.questions[0].name.to_string();
        let ips: Vec<Ipv4Addr> = match name.as_str() {
            "example.com" => vec![Ipv4Addr::new(93, 184, 216, 34)],
            "big.example" => (0..40).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect(),
            _ => vec![],
        };
        let rcode = if ips.is_empty() { Rcode::NXDOMAIN } else { Rcode::NOERROR };
        let records = ips.iter().map(|a| Record::a(q.questions[0].name.clone(), 60, *a)).collect();
        Message::response(q, rcode, false, records)
    };
    let udp = net.bind_udp(&ns, addr(UPSTREAM), &UdpOptions::default()).await.unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            let q = Message::parse(&buf[..len]).unwrap();
            s.lock().unwrap().push((from, q.id, q.questions[0].name.to_string()));
            let _ = udp.send_to(&answer(&q).encode_within(wire::UDP_MAX), from).await;
        }
    });
    let mut tcp = net.listen(&ns, addr(UPSTREAM), &ListenOptions::default()).await.unwrap();
    tokio::spawn(async move {
        while let Ok(acc) = tcp.accept().await {
            let mut st = acc.stream;
            let mut p = [0u8; 2];
            st.read_exact(&mut p).await.unwrap();
            let mut q = vec![0; wire::tcp_frame_len(p)];
            st.read_exact(&mut q).await.unwrap();
            let q = Message::parse(&q).unwrap();
            seen.lock().unwrap().push((acc.peer, q.id, format!("tcp {}", q.questions[0].name)));
            st.write_all(&wire::tcp_frame(&answer(&q).encode()).unwrap()).await.unwrap();
        }
    });
}

struct World {
    net: MemoryNetwork,
    sink: Arc<RecordingSink>,
    seen: Seen,
    _proxy: NodeProxy<MemoryNetwork>,
}

async fn world(with_upstream: bool, seed: u64) -> World {
    let net = MemoryNetwork::new();
    net.add_address("pod", ip(POD));
    let mesh = MeshState::new(MeshSpec {
        workloads: vec![Workload::new("client", "node-a", ip(POD))],
        services: vec![Service::new("echo", ip("10.96.0.10")).port(80, 8080)],
        ..MeshSpec::default()
    })
    .unwrap();
    let keys = KeySource::Seeded(1);
    let ca = Arc::new(MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap());
    let store =
        CertStore::new(ca, keys, WallClock::starting_at(FIXED_ORIGIN), deterministic_provider(1));
    let sink = Arc::new(RecordingSink::default());
    let mut cfg = ProxyConfig::new("node-a", TlsContext::new(Arc::new(store), "cluster.local"));
    cfg.seed = seed;
    cfg.sink = sink.clone();
    cfg.dns.upstream = Some(addr(UPSTREAM));
    let seen = Seen::default();
    if with_upstream {
        upstream(&net, seen.clone()).await;
    }
    let proxy = NodeProxy::new(net.clone(), mesh, cfg);
    let spec = PodSpec { ip: ip(POD), netns: "pod".to_string(), listen_ip: ip("0.0.0.0") };
    proxy.add_pod(spec).await.unwrap();
    World { net, sink, seen, _proxy: proxy }
}

/// One query from the pod's app to 15053 over UDP (what REDIRECT delivers).
async fn ask_udp(w: &World, id: u16, name: &str, qtype: u16) -> Message {
    let sock = w
        .net
        .bind_udp(&"pod".to_string(), addr("10.0.1.5:0"), &UdpOptions::default())
        .await
        .unwrap();
    let q = Message::query(id, n(name), qtype).encode();
    sock.send_to(&q, addr("127.0.0.1:15053")).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, _) = sock.recv_from(&mut buf).await.unwrap();
    Message::parse(&buf[..len]).unwrap()
}

async fn ask_tcp(w: &World, id: u16, name: &str) -> Message {
    let opts = ConnectOptions { mark: None, source: Some(addr("10.0.1.5:0")) };
    let mut s = w.net.connect(&"pod".to_string(), addr("127.0.0.1:15053"), &opts).await.unwrap();
    let q = Message::query(id, n(name), rtype::A).encode();
    s.write_all(&wire::tcp_frame(&q).unwrap()).await.unwrap();
    let mut p = [0u8; 2];
    s.read_exact(&mut p).await.unwrap();
    let mut r = vec![0; wire::tcp_frame_len(p)];
    s.read_exact(&mut r).await.unwrap();
    s.shutdown().await.unwrap();
    Message::parse(&r).unwrap()
}

fn dns_events(w: &World) -> Vec<(String, DnsResult, String, Option<String>)> {
    w.sink
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ProxyEvent::Dns { name, result, rcode, message, .. } => {
                Some((name, result, rcode, message))
            }
            _ => None,
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

#[test]
fn mesh_names_are_answered_and_the_rest_forwarded_over_udp() {
    rt().block_on(async {
        let w = world(true, 7).await;
        let r = ask_udp(&w, 0x1111, "echo.default.svc.cluster.local", rtype::A).await;
        assert_eq!((r.id, r.flags.rcode, r.flags.authoritative), (0x1111, Rcode::NOERROR, true));
        assert_eq!(r.addresses(), vec![Ipv4Addr::new(10, 96, 0, 10)]);
        let r = ask_udp(&w, 0x2222, "echo", rtype::A).await;
        assert_eq!(r.addresses(), vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert!(w.seen.lock().unwrap().is_empty(), "mesh names never go upstream");

        let r = ask_udp(&w, 0x3333, "example.com", rtype::A).await;
        assert_eq!((r.id, r.flags.rcode), (0x3333, Rcode::NOERROR), "the client's id back");
        assert_eq!(r.addresses(), vec![Ipv4Addr::new(93, 184, 216, 34)]);
        let r = ask_udp(&w, 0x4444, "nope.example", rtype::A).await;
        assert_eq!(r.flags.rcode, Rcode::NXDOMAIN, "the upstream's NXDOMAIN, relayed");
        let seen = w.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        for (from, id, _) in &seen {
            assert_eq!(from.ip(), ip(POD), "asked from the pod's namespace");
            assert!(*id != 0x3333 && *id != 0x4444, "a fresh id upstream");
        }
        assert_eq!(
            dns_events(&w),
            vec![
                (
                    "echo.default.svc.cluster.local".into(),
                    DnsResult::Answered,
                    "NOERROR".into(),
                    None
                ),
                ("echo".into(), DnsResult::Answered, "NOERROR".into(), None),
                ("example.com".into(), DnsResult::Forwarded, "NOERROR".into(), None),
                ("nope.example".into(), DnsResult::Forwarded, "NXDOMAIN".into(), None),
            ]
        );
        let Some(ProxyEvent::Dns { service, answers, upstream, transport, .. }) =
            w.sink.events().into_iter().find(|e| matches!(e, ProxyEvent::Dns { .. }))
        else {
            panic!()
        };
        assert_eq!(service.as_deref(), Some("echo.default"));
        assert_eq!(
            (answers, upstream, transport.as_str()),
            (vec![Ipv4Addr::new(10, 96, 0, 10)], None, "udp")
        );
    });
}

#[test]
fn upstream_ids_come_from_the_seed() {
    let ids = |seed| {
        rt().block_on(async {
            let w = world(true, seed).await;
            ask_udp(&w, 1, "example.com", rtype::A).await;
            ask_udp(&w, 2, "example.com", rtype::A).await;
            w.seen.lock().unwrap().iter().map(|(_, id, _)| *id).collect::<Vec<u16>>()
        })
    };
    assert_eq!(ids(3), ids(3));
    assert_ne!(ids(3), ids(4));
}

#[test]
fn tcp_queries_are_answered_and_a_truncated_upstream_answer_is_asked_again_over_tcp() {
    rt().block_on(async {
        let w = world(true, 1).await;
        let r = ask_tcp(&w, 9, "echo.default").await;
        assert_eq!(r.addresses(), vec![Ipv4Addr::new(10, 96, 0, 10)]);
        let r = ask_tcp(&w, 10, "big.example").await;
        assert!(!r.flags.truncated);
        assert_eq!(r.addresses().len(), 40, "the whole answer, over TCP");
        assert_eq!(r.id, 10);
        let names: Vec<String> = w.seen.lock().unwrap().iter().map(|s| s.2.clone()).collect();
        assert_eq!(names, ["big.example", "tcp big.example"]);
        // A UDP client gets the truncated answer, and retries over TCP itself.
        let r = ask_udp(&w, 11, "big.example", rtype::A).await;
        assert!(r.flags.truncated && r.addresses().len() < 40);
    });
}

#[test]
fn failures_are_servfail_or_formerr_and_logged() {
    rt().block_on(async {
        let w = world(false, 1).await;
        // Nobody upstream: the proxy waits its timeout, then SERVFAIL.
        let start = tokio::time::Instant::now();
        let r = ask_udp(&w, 5, "example.com", rtype::A).await;
        assert_eq!(r.flags.rcode, Rcode::SERVFAIL);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // A malformed query (a header and half a name) gets FORMERR with its id.
        let sock = w
            .net
            .bind_udp(&"pod".to_string(), addr("10.0.1.5:0"), &UdpOptions::default())
            .await
            .unwrap();
        let mut bad = Message::query(0xabcd, n("example.com"), rtype::A).encode();
        bad.truncate(16);
        sock.send_to(&bad, addr("127.0.0.1:15053")).await.unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = sock.recv_from(&mut buf).await.unwrap();
        let r = Message::parse(&buf[..len]).unwrap();
        assert_eq!((r.id, r.flags.response, r.flags.rcode), (0xabcd, true, Rcode::FORMERR));
        let events = dns_events(&w);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].1, DnsResult::Failed);
        assert_eq!(events[0].3.as_deref(), Some("no answer from 203.0.113.53:53 within 5s"));
        assert!(events[1].3.as_deref().unwrap().starts_with("malformed query"), "{events:?}");
        assert_eq!(events[1].0, "?");
        let _ = RData::A(Ipv4Addr::LOCALHOST);
    });
}
