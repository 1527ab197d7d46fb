//! Malicious clients against the proxy on real Linux sockets (the proxy tier, like ztunnel's
//! malicious-calls tests): each case is an attack from `reports/security.md`, and each fails
//! against the proxy as it was before the attack was fixed. Needs root, as the e2e tests do.
#![cfg(target_os = "linux")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::events::{CloseResult, ProxyEvent};
use ambient_proxy::identity::Identity;
use ambient_proxy::mesh::{MeshState, Workload};
use ambient_proxy::node::Limits;
use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Node-b with short limits, so each attack shows within a test's time.
fn short_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        inbound_idle: Duration::from_millis(300),
        connection_idle: Duration::from_millis(300),
        max_handshakes_per_peer: 4,
        max_connections_per_peer: 6,
        ..Limits::default()
    }
}

async fn world_with(prefix: &str, limits: Limits) -> World {
    world(prefix, WorldOptions { limits_b: Some(limits), ..WorldOptions::default() }).await
}

/// A TCP connection from `src` to `dst`.
async fn tcp_from(src: std::net::IpAddr, dst: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(std::net::SocketAddr::new(src, 0))?;
    s.connect(dst).await
}

/// An mTLS connection to node-b's 15008 as `sleep` (a valid mesh identity), ALPN h2.
async fn tls_to_b(w: &World, src: std::net::IpAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let ctx = tls(w.ca.clone(), 77);
    let me = Identity::new("cluster.local", "default", "sleep");
    let server = Identity::new("cluster.local", "default", "echo");
    let cfg = ctx.client_config(&me, &server).unwrap();
    let tcp = tcp_from(src, std::net::SocketAddr::new(w.server, 15008)).await.unwrap();
    let name = ServerName::IpAddress(w.server.into());
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.unwrap()
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut v = vec![len[1], len[2], len[3], kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Read until the peer closes (EOF or reset); `None` if it is still open after `within`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> Option<usize> {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()
}

/// HIGH: a pod that adds another mesh workload's address to its `lo` and binds it used to get
/// that workload's certificate presented (the identity came from the source address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_source_address_gets_no_identity() {
    let w = world("127.81", WorldOptions::default()).await;
    let app = App::start(addr("127.81.1.5:8080"), AppMode::Echo).await;
    // `admin` is a real captured pod of node-a, in a namespace of its own.
    let admin = ip("127.81.0.6");
    let mut spec = w.mesh.clone();
    spec.workloads.push(Workload::new("admin", "node-a", admin).service_account("admin"));
    w.a.update_mesh(MeshState::new(spec).unwrap());

    // The attacker in the client pod's namespace binds admin's address.
    let dst = addr("127.81.1.5:8080");
    let mut s = w.net.app_connect(admin, dst, w.outbound_listener()).await.unwrap();
    let back = exchange(&mut s, b"who am i").await.unwrap_or_default();
    assert!(back.is_empty(), "the borrowed address got through: {back:?}");
    eventually("the refusal", || {
        w.events_a.events().iter().any(|e| {
            matches!(e, ProxyEvent::Error { stage, message, .. }
            if stage == "route" && message.contains("is not the address of pod 127.81.0.5"))
        })
    })
    .await;
    assert!(!w.events_a.events().iter().any(|e| matches!(e, ProxyEvent::TunnelOpened { .. })));
    assert!(app.peers.lock().unwrap().is_empty(), "the app was reached");
    // The pod's own address still works, as the pod.
    let mut s = w.connect(dst).await.unwrap();
    assert_eq!(exchange(&mut s, b"hello").await.unwrap(), b"hello");
}

/// 15008 memory: an authenticated peer sending header blocks it never finishes (HEADERS
/// without END_HEADERS, then CONTINUATION frames) held ~15 MB per block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_unfinished_header_block_is_refused_early() {
    let w = world_with("127.82", short_limits()).await;
    let mut s = tls_to_b(&w, w.client).await;
    s.write_all(ambient_proxy::frames::CLIENT_PREFACE).await.unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    // One literal header whose value never ends: 4 MiB in 16 KiB frames.
    let mut block = vec![0x00, 0x01, b'x', 0x7f, 0xff, 0xff, 0xff, 0x7f];
    block.resize(16 * 1024, b'a');
    let mut sent = 0usize;
    let mut refused = false;
    for i in 0..256 {
        let kind = if i == 0 { 0x1 } else { 0x9 };
        if s.write_all(&frame(kind, 0, 1, &block)).await.is_err() {
            refused = true;
            break;
        }
        sent += block.len();
    }
    let closed = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        refused || closed.is_some(),
        "15008 took {sent} bytes of one header block and kept going"
    );
    assert!(sent <= 1024 * 1024 || refused || closed.is_some());
}

/// A header block left open (never finished, never grown) is timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_header_block_times_out() {
    let w = world_with("127.83", short_limits()).await;
    let mut s = tls_to_b(&w, w.client).await;
    s.write_all(ambient_proxy::frames::CLIENT_PREFACE).await.unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    s.write_all(&frame(0x1, 0, 1, &[0x82, 0x86])).await.unwrap();
    s.flush().await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await.is_some(),
        "an unfinished header block kept the connection open"
    );
    eventually("the header timeout counted", || {
        w.b.counters().get("connections.inbound-hbone.header-timeout") == Some(&1)
    })
    .await;
}

/// An authenticated h2 connection that never opens a stream is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed() {
    let w = world_with("127.84", short_limits()).await;
    let s = tls_to_b(&w, w.client).await;
    let (_send, conn): (h2::client::SendRequest<bytes::Bytes>, _) =
        h2::client::handshake(s).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "an h2 connection without streams stayed open");
}

/// fd exhaustion (mechanism): bare connects beyond the per-peer bounds are reset at once, and a
/// valid client from another address is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connects_beyond_the_bounds_are_reset_and_valid_clients_still_served() {
    let w = world_with("127.85", short_limits()).await;
    let _app = App::start(addr("127.85.1.5:8080"), AppMode::Echo).await;
    let attacker = ip("127.85.0.66");
    let mut held = Vec::new();
    let mut reset_at_once = 0;
    for _ in 0..12 {
        // The reset may beat connect() back: that counts as reset at once too.
        match tcp_from(attacker, std::net::SocketAddr::new(w.server, 15008)).await {
            Ok(s) => held.push(s),
            Err(_) => reset_at_once += 1,
        }
    }
    for s in &mut held {
        if closed_within(s, Duration::from_millis(200)).await.is_some() {
            reset_at_once += 1;
        }
    }
    assert_eq!(reset_at_once, 12 - 4, "beyond 4 handshakes per peer, every connect is reset");
    eventually("overload counted", || {
        w.b.counters().get("connections.inbound-hbone.overload") == Some(&8)
    })
    .await;
    let mut s = w.connect(addr("127.85.1.5:8080")).await.unwrap();
    assert_eq!(exchange(&mut s, b"still served").await.unwrap(), b"still served");
}

/// Idle plaintext connections via 15006 never timed out: each held two descriptors forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_plaintext_connection_is_reset() {
    let w = world_with("127.86", short_limits()).await;
    let app = App::start(addr("127.86.1.5:8080"), AppMode::Echo).await;
    let outsider = ip("127.86.0.9");
    let inbound = std::net::SocketAddr::new(w.server, 15006);
    let mut s = w.net.app_connect(outsider, addr("127.86.1.5:8080"), inbound).await.unwrap();
    eventually("the app reached", || !app.peers.lock().unwrap().is_empty()).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await.is_some(),
        "an idle plaintext connection stayed open"
    );
    eventually("the idle close logged", || {
        w.events_b.events().iter().any(|e| {
            matches!(
                e,
                ProxyEvent::ConnectionClosed { result: CloseResult::IdleTimeout { .. }, .. }
            )
        })
    })
    .await;
}

/// A transfer cut at the drain deadline left the counters `{}`: what moved is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_counts_what_moved() {
    let w = world("127.87", WorldOptions::default()).await;
    let _app = App::start(addr("127.87.1.5:8080"), AppMode::Echo).await;
    let mut s = w.connect(addr("127.87.1.5:8080")).await.unwrap();
    s.write_all(&[5u8; 3000]).await.unwrap();
    let mut back = vec![0u8; 3000];
    s.read_exact(&mut back).await.unwrap();
    let b = w.b.clone();
    assert!(!b.drain(Duration::from_millis(200)).await, "the open connection outlived the drain");
    let c = w.b.counters();
    assert_eq!(c.get("connections.inbound-hbone.shutdown"), Some(&1), "{c:?}");
    assert_eq!(c.get("bytes.inbound-hbone.sent"), Some(&3000), "{c:?}");
    assert_eq!(c.get("bytes.inbound-hbone.received"), Some(&3000), "{c:?}");
    let shutdown = Arc::new(w.events_b.events());
    assert!(shutdown.iter().any(|e| matches!(
        e,
        ProxyEvent::ConnectionClosed { result: CloseResult::Shutdown, bytes_sent: 3000, .. }
    )));
}
