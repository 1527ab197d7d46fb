//! End to end over loopback: two node proxies on real Linux sockets (SO_MARK, IP_TRANSPARENT,
//! TLS 1.3 + h2 CONNECT), apps as 127.x addresses in the current namespace. Needs root; without
//! it the tests fail saying so.
#![cfg(target_os = "linux")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource};
use ambient_proxy::clock::WallClock;
use ambient_proxy::crypto::default_provider;
use ambient_proxy::events::{CloseResult, Direction, Path, ProxyEvent};
use ambient_proxy::identity::Identity;
use ambient_proxy::mesh::MeshState;
use ambient_proxy::tls::TlsContext;
use rustls_pki_types::ServerName;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn deny_sleep() -> ambient_proxy::istio::PolicyObject {
    serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-sleep", "namespace": "default"},
        "spec": {"action": "DENY", "selector": {"matchLabels": {"app": "echo"}},
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}]}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sequential_connections_ride_one_tunnel() {
    let w = world("127.61", WorldOptions::default()).await;
    let app = App::start(addr("127.61.1.5:8080"), AppMode::Echo).await;
    let mut clients = Vec::new();
    for i in 0..10u8 {
        let mut s = w.connect(addr("127.61.1.5:8080")).await.unwrap();
        clients.push(s.local_addr().unwrap());
        let data = vec![i; 10_000 + usize::from(i)];
        assert_eq!(exchange(&mut s, &data).await.unwrap(), data, "connection {i} intact");
    }
    let a = w.a.counters();
    assert_eq!(a["tunnels.opened"], 1, "{a:?}");
    assert_eq!(a["tunnels.reused"], 9, "{a:?}");
    assert_eq!(w.a.pooled_tunnels(), 1);
    // The app saw the client's own address (transparent source on the destination side).
    let peers = app.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 10);
    assert!(peers.iter().all(|p| p.ip() == w.client), "{peers:?}");

    // Both proxies' events of one connection join on the client's ip:port.
    let first = clients[0];
    let has_close =
        |evs: Vec<ProxyEvent>| evs.iter().any(|e| matches!(e, ProxyEvent::ConnectionClosed { .. }));
    eventually("closed events", || {
        has_close(w.events_a.for_client(first))
            && has_close(w.events_b.for_client(first))
            && has_close(w.events_a.for_client(clients[9]))
    })
    .await;
    let a_ev = w.events_a.for_client(first);
    let b_ev = w.events_b.for_client(first);
    match &a_ev[0] {
        ProxyEvent::OutboundRoute { path, tunnel_reused, tunnel, destination_identity, .. } => {
            assert_eq!(*path, Path::Hbone);
            assert_eq!(*tunnel_reused, Some(false));
            assert_eq!(tunnel.as_deref(), Some("node-a->node-b"));
            assert_eq!(
                destination_identity.as_deref(),
                Some("spiffe://cluster.local/ns/default/sa/echo")
            );
        }
        other => panic!("{other:?}"),
    }
    match &b_ev[0] {
        ProxyEvent::InboundVerdict { allowed, source_identity, direction, .. } => {
            assert!(allowed);
            assert_eq!(*direction, Direction::InboundHbone);
            assert_eq!(
                source_identity.as_deref(),
                Some("spiffe://cluster.local/ns/default/sa/sleep")
            );
        }
        other => panic!("{other:?}"),
    }
    let closed = |evs: &[ProxyEvent]| {
        evs.iter()
            .find_map(|e| match e {
                ProxyEvent::ConnectionClosed { bytes_sent, bytes_received, result, .. } => {
                    Some((*bytes_sent, *bytes_received, result.clone()))
                }
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(closed(&a_ev), (10_000, 10_000, CloseResult::Ok));
    assert_eq!(closed(&b_ev), (10_000, 10_000, CloseResult::Ok));
    // The destination proxy says which of the app's accepts was this connection: its upstream
    // socket's (spoofed) address is the peer the app saw. The source proxy reached the app
    // through a tunnel, so it has no upstream socket of its own.
    let upstream = |evs: &[ProxyEvent]| {
        evs.iter().find_map(|e| match e {
            ProxyEvent::ConnectionClosed { upstream, .. } => Some(*upstream),
            _ => None,
        })
    };
    assert_eq!(upstream(&a_ev), Some(None));
    let b_upstream = upstream(&b_ev).flatten().expect("inbound close names its upstream");
    assert_eq!(b_upstream.ip(), w.client);
    assert!(peers.contains(&b_upstream), "{b_upstream} not among {peers:?}");
    assert_eq!(w.events_a.for_client(clients[9]).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_and_fifty_parallel_connections_open_two_tunnels() {
    let w = Arc::new(world("127.62", WorldOptions::default()).await);
    let _app = App::start(addr("127.62.1.5:8080"), AppMode::Echo).await;
    let n = 150;
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (w, barrier) = (w.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = w.connect(addr("127.62.1.5:8080")).await.unwrap();
            // One round trip: the stream is up; then hold it until all 150 are.
            s.write_all(&[i as u8]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            barrier.wait().await;
            let rest = exchange(&mut s, b"rest").await.unwrap();
            assert_eq!(rest, b"rest");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually("150 closed", || w.a.counters().get("connections.outbound.ok") == Some(&150)).await;
    let a = w.a.counters();
    assert_eq!(a["tunnels.opened"], 2, "{a:?}");
    assert_eq!(a["tunnels.reused"], 148, "{a:?}");
    assert_eq!(a["connections.outbound.ok"], 150, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_by_policy_gets_401_and_the_client_closes_with_no_data() {
    let w =
        world("127.63", WorldOptions { policies: vec![deny_sleep()], ..Default::default() }).await;
    let app = App::start(addr("127.63.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.63.1.5:8080")).await.unwrap();
    let client = s.local_addr().unwrap();
    let mut got = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "no data, a clean close");
    assert!(app.peers.lock().unwrap().is_empty(), "the app was never reached");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_ev = w.events_b.for_client(client);
    assert!(
        matches!(&b_ev[0], ProxyEvent::InboundVerdict { allowed: false, policy: Some(p), reason, .. }
            if p == "deny-sleep.default" && reason == "denied by a DENY policy"),
        "{b_ev:?}"
    );
    let a_ev = w.events_a.for_client(client);
    assert!(
        a_ev.iter().any(|e| matches!(e, ProxyEvent::Error { status: Some(401), .. })),
        "{a_ev:?}"
    );
    eventually("denied counted", || w.a.counters().get("connections.outbound.denied") == Some(&1))
        .await;
    assert_eq!(w.b.counters()["connections.inbound-hbone.denied"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_is_rejected() {
    let w = world("127.64", WorldOptions { foreign_ca_on_b: true, ..Default::default() }).await;
    let _app = App::start(addr("127.64.1.5:8080"), AppMode::Echo).await;
    // The proxy accepts, fails the handshake and resets the app's connection: possibly before
    // the app's connect() has even returned.
    if let Ok(mut s) = w.connect(addr("127.64.1.5:8080")).await {
        let r = exchange(&mut s, b"hello").await;
        assert!(r.is_err() || r.as_ref().unwrap().is_empty(), "no data through: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a_ev = w.events_a.events();
    assert!(
        a_ev.iter().any(|e| matches!(
            e,
            ProxyEvent::OutboundRoute { tunnel_reused: None, path: Path::Hbone, .. }
        )),
        "the route decision is logged even though no tunnel could be had: {a_ev:?}"
    );
    assert!(
        a_ev.iter().any(|e| matches!(e, ProxyEvent::Error { stage, message, .. }
            if stage == "tls" && message.starts_with("invalid peer certificate"))),
        "{a_ev:?}"
    );
    assert_eq!(w.a.counters().get("tunnels.opened"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_trust_domain_is_rejected_by_15008() {
    let w = world("127.65", WorldOptions::default()).await;
    // Same CA, but the client identity is in evil.local.
    let store =
        CertStore::new(w.ca.clone(), KeySource::Seeded(5), WallClock::system(), default_provider());
    let ctx = TlsContext::new(Arc::new(store), "cluster.local");
    let me: Identity = "spiffe://evil.local/ns/default/sa/sleep".parse().unwrap();
    let them: Identity = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr("127.65.1.5:15008")).await.unwrap();
    let peer = tcp.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(ctx.client_config(&me, &them).unwrap());
    let name = ServerName::IpAddress(ip("127.65.1.5").into());
    let mut tls = connector.connect(name, tcp).await.expect("the server's identity is fine for us");
    // TLS 1.3: the server judges our certificate after our Finished; its verdict arrives next.
    let mut buf = [0u8; 1];
    let r = tls.read(&mut buf).await;
    assert!(!matches!(r, Ok(1)), "{r:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_ev = w.events_b.for_client(peer);
    assert!(
        b_ev.iter().any(|e| matches!(e, ProxyEvent::Error { stage, message, .. }
            if stage == "tls" && message.contains("is not in trust domain cluster.local"))),
        "{b_ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_15008_is_rejected() {
    let w = world("127.66", WorldOptions::default()).await;
    let _app = App::start(addr("127.66.1.5:8080"), AppMode::Echo).await;
    let mut s = tokio::net::TcpStream::connect(addr("127.66.1.5:15008")).await.unwrap();
    let peer = s.local_addr().unwrap();
    s.write_all(b"CONNECT 127.66.1.5:8080 HTTP/1.1\r\nHost: 127.66.1.5:8080\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b_ev = w.events_b.for_client(peer);
    assert!(
        b_ev.iter().any(|e| matches!(e, ProxyEvent::Error { stage, .. } if stage == "tls")),
        "{b_ev:?}"
    );
    assert_eq!(w.b.counters()["connections.inbound-hbone.error"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_live_connections_no_longer_allowed() {
    let w = world("127.67", WorldOptions::default()).await;
    let _app = App::start(addr("127.67.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.67.1.5:8080")).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    // A change that still allows the connection leaves it alone.
    assert_eq!(w.b.update_mesh(MeshState::new(w.mesh.clone()).unwrap()), 0);
    s.write_all(b"pong").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong", "still open after a change that allows it");
    let mut spec = w.mesh.clone();
    spec.policies.push(deny_sleep());
    let mesh = MeshState::new(spec).unwrap();
    assert_eq!(w.a.update_mesh(mesh.clone()), 0, "node-a has no inbound connection");
    assert_eq!(w.b.update_mesh(mesh), 1);
    let err = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap();
    assert_eq!(
        err.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset,
        "the client sees a reset"
    );
    let revoked = |e: &ProxyEvent| {
        matches!(e, ProxyEvent::ConnectionClosed { result: CloseResult::PolicyRevoked { .. }, .. })
    };
    eventually("revocation logged", || w.events_b.for_client(client).iter().any(revoked)).await;
    let b_ev = w.events_b.for_client(client);
    assert!(
        b_ev.iter().any(|e| matches!(e, ProxyEvent::ConnectionClosed { result: CloseResult::PolicyRevoked { reason }, .. }
            if reason.contains("deny-sleep.default"))),
        "{b_ev:?}"
    );
    // New connections are refused under the new policy.
    let mut s = w.connect(addr("127.67.1.5:8080")).await.unwrap();
    assert_eq!(s.read(&mut b).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reset_reaches_the_client_as_a_reset() {
    let w = world("127.68", WorldOptions::default()).await;
    let _app = App::start(addr("127.68.1.5:8080"), AppMode::Reset).await;
    let mut s = w.connect(addr("127.68.1.5:8080")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionReset);
    eventually("reset counted", || {
        w.b.counters().get("connections.inbound-hbone.reset") == Some(&1)
    })
    .await;
    eventually("reset counted", || w.a.counters().get("connections.outbound.reset") == Some(&1))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_and_inbound_plaintext() {
    let w = world("127.69", WorldOptions::default()).await;
    // Client → out-of-mesh pod: passthrough, no tunnel.
    let legacy = App::start(addr("127.69.1.7:9090"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.69.1.7:9090")).await.unwrap();
    assert_eq!(exchange(&mut s, b"plain").await.unwrap(), b"plain");
    assert_eq!(legacy.peers.lock().unwrap()[0].ip(), w.client);
    assert_eq!(w.a.counters().get("tunnels.opened"), None);
    eventually("passthrough counted", || w.a.counters().get("connections.outbound.ok") == Some(&1))
        .await;
    let me = s.local_addr().unwrap();
    let upstream = w.events_a.for_client(me).iter().find_map(|e| match e {
        ProxyEvent::ConnectionClosed { upstream, .. } => *upstream,
        _ => None,
    });
    assert_eq!(upstream, Some(legacy.peers.lock().unwrap()[0]), "passthrough names its socket");
    // Outsider (not captured) → server pod: arrives on 15006, authorized without identity.
    let server = App::start(addr("127.69.1.5:8080"), AppMode::Echo).await;
    let outsider = ip("127.69.0.9");
    let mut s = w
        .net
        .app_connect(outsider, addr("127.69.1.5:8080"), addr("127.69.1.5:15006"))
        .await
        .unwrap();
    assert_eq!(exchange(&mut s, b"from outside").await.unwrap(), b"from outside");
    assert_eq!(server.peers.lock().unwrap()[0].ip(), outsider);
    let me = s.local_addr().unwrap();
    eventually("verdict logged", || !w.events_b.for_client(me).is_empty()).await;
    let ev = w.events_b.for_client(me);
    assert!(
        matches!(
            &ev[0],
            ProxyEvent::InboundVerdict {
                direction: Direction::InboundPlaintext,
                source_identity: None,
                allowed: true,
                ..
            }
        ),
        "{ev:?}"
    );
    // A self-call on 15006 itself is refused with a reset (which may already have arrived when
    // the connect completes), never with data.
    let refused =
        w.net.app_connect(outsider, addr("127.69.1.5:15008"), addr("127.69.1.5:15006")).await;
    let err = match refused {
        Err(e) => e,
        Ok(mut s) => s.read(&mut [0u8; 4]).await.expect_err("a reset, not data or a clean EOF"),
    };
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_tunnels_and_crash_drops_connections() {
    let w = world("127.70", WorldOptions::default()).await;
    let _app = App::start(addr("127.70.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.70.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"x").await.unwrap(), b"x");
    assert_eq!(w.a.pooled_tunnels(), 1);
    // node-b drains: GOAWAY on its inbound tunnel; node-a's pooled tunnel closes.
    assert!(w.b.drain(Duration::from_secs(5)).await, "drained in time");
    eventually("node-a's tunnel closed", || w.a.pooled_tunnels() == 0).await;
    assert!(w.events_a.events().iter().any(|e| matches!(e, ProxyEvent::TunnelClosed { .. })));
    // node-b's listeners are gone (their accept tasks are aborted; on a multi-thread runtime
    // the socket is dropped a moment after the abort, so wait for it, bounded).
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr("127.70.1.5:15008")).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "15008 still accepts 2 s after the drain");
    // A crash of node-a drops a live client connection.
    let w2 = world("127.71", WorldOptions::default()).await;
    let _app = App::start(addr("127.71.1.5:8080"), AppMode::Echo).await;
    let mut s = w2.connect(addr("127.71.1.5:8080")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    w2.a.crash();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_proxy_logs_nothing_and_resets_nothing_on_its_way_out() {
    let w = world("127.72", WorldOptions::default()).await;
    let _app = App::start(addr("127.72.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.72.1.5:8080")).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    // The destination proxy dies with a live inbound stream: like a killed process, it must not
    // see its own tunnel go and log (or reset) the stream on the way out.
    let before = w.events_b.events().len();
    w.b.crash();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = w.events_b.events();
    assert_eq!(after.len(), before, "events after the crash: {:?}", &after[before..]);
}

/// Adds a removed pod back, once the aborted listener tasks have let go of its ports.
async fn readd<N>(proxy: &ambient_proxy::NodeProxy<N>, ip: std::net::IpAddr)
where
    N: ambient_proxy::Network<Netns = ambient_proxy::net::linux::NetnsPath>,
{
    let pod = ambient_proxy::PodSpec {
        ip,
        netns: ambient_proxy::net::linux::NetnsPath::current(),
        listen_ip: ip,
    };
    for _ in 0..500 {
        match proxy.add_pod(pod.clone()).await {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("adding {ip} back: {e}"),
        }
    }
    panic!("adding {ip} back: its ports stayed in use for 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_sends_goaway_on_its_inbound_tunnels_and_drops_its_pooled_ones() {
    let w = world("127.74", WorldOptions::default()).await;
    let _app = App::start(addr("127.74.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.74.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"x").await.unwrap(), b"x");
    assert_eq!(w.a.pooled_tunnels(), 1);
    // The pod goes: node-a's pooled tunnel to it is told to go away and closes.
    assert!(w.b.remove_pod(w.server));
    eventually("node-a's tunnel closed", || w.a.pooled_tunnels() == 0).await;
    assert!(w.events_a.events().iter().any(|e| matches!(e, ProxyEvent::TunnelClosed { .. })));
    // Back (as a new pod with the same address): a fresh tunnel, not the old one.
    readd(&w.b, w.server).await;
    let mut s = w.connect(addr("127.74.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"y").await.unwrap(), b"y");
    assert_eq!(w.a.counters()["tunnels.opened"], 2);
    // Node-b's other connections were not touched: it still serves, and never drained.
    assert_eq!(w.b.pods().len(), 1);
    // The client pod goes: the tunnel it dialled leaves node-a's pool; back, it dials anew.
    assert_eq!(w.a.pooled_tunnels(), 1);
    assert!(w.a.remove_pod(w.client));
    assert_eq!(w.a.pooled_tunnels(), 0);
    readd(&w.a, w.client).await;
    let mut s = w.connect(addr("127.74.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"z").await.unwrap(), b"z");
    assert_eq!(w.a.counters()["tunnels.opened"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout_and_keepalive_keeps_a_busy_one() {
    let pool = ambient_proxy::pool::PoolConfig {
        idle_timeout: Duration::from_millis(400),
        keepalive_interval: Duration::from_millis(50),
        keepalive_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let w = world("127.75", WorldOptions { pool: Some(pool), ..Default::default() }).await;
    let _app = App::start(addr("127.75.1.5:8080"), AppMode::Echo).await;
    // A connection held open for longer than the idle timeout: pings flow, the tunnel stays.
    let mut s = w.connect(addr("127.75.1.5:8080")).await.unwrap();
    s.write_all(b"a").await.unwrap();
    s.read_exact(&mut [0u8; 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(w.a.pooled_tunnels(), 1, "a tunnel with a live stream is not idle");
    let pongs = w.a.counters()["tunnels.keepalive_pongs"];
    assert!((5..=20).contains(&pongs), "a PING every 50 ms, each answered: {pongs}");
    assert_eq!(exchange(&mut s, b"b").await.unwrap(), b"b");
    // Then idle: closed after the timeout, with the reason logged.
    eventually("idle tunnel closed", || w.a.pooled_tunnels() == 0).await;
    let closed: Vec<String> = w
        .events_a
        .events()
        .into_iter()
        .filter_map(|e| match e {
            ProxyEvent::TunnelClosed { reason, streams, .. } => Some(format!("{reason}/{streams}")),
            _ => None,
        })
        .collect();
    assert_eq!(closed, ["idle for 400ms/1"]);
    // The next connection dials a fresh tunnel.
    let mut s = w.connect(addr("127.75.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"c").await.unwrap(), b"c");
    assert_eq!(w.a.counters()["tunnels.opened"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_a_running_connection_finish() {
    let w = world("127.73", WorldOptions::default()).await;
    let _app = App::start(addr("127.73.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.73.1.5:8080")).await.unwrap();
    s.write_all(b"first half ").await.unwrap();
    let mut b = [0u8; 11];
    s.read_exact(&mut b).await.unwrap();
    // node-b drains while the connection is open: no new connections, this one goes on.
    let b_proxy = w.b.clone();
    let drain = tokio::spawn(async move { b_proxy.drain(Duration::from_secs(10)).await });
    eventually("listeners closed", || w.b.pods().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!drain.is_finished(), "drain waits for the running connection");
    assert_eq!(exchange(&mut s, b"second half").await.unwrap(), b"second half");
    assert!(drain.await.unwrap(), "drain finished cleanly once the connection ended");
    eventually("closed ok", || w.b.counters().get("connections.inbound-hbone.ok") == Some(&1))
        .await;
}
