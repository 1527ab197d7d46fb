//! Bounded buffers end to end: when the app stops reading, the client's writes stall after a
//! bounded number of bytes (pipes + one read buffer per hop + the h2 flow-control windows), and
//! nothing is lost when the app reads again. Runs on the in-process network, paused time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::{FIXED_ORIGIN, WallClock};
use ambient_proxy::crypto::deterministic_provider;
use ambient_proxy::mesh::{MeshSpec, MeshState, Workload};
use ambient_proxy::net::memory::MemoryNetwork;
use ambient_proxy::net::{ListenOptions, Listener, Network};
use ambient_proxy::node::{NodeProxy, PodSpec, ProxyConfig};
use ambient_proxy::tls::TlsContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stalled_reader_stalls_the_writer_and_loses_nothing() {
    let net = MemoryNetwork::new();
    let mesh = MeshState::new(MeshSpec {
        workloads: vec![
            Workload::new("client", "node-a", ip("10.0.1.5")).service_account("sleep"),
            Workload::new("server", "node-b", ip("10.0.2.5")).service_account("echo"),
        ],
        ..MeshSpec::default()
    })
    .unwrap();
    let keys = KeySource::Seeded(1);
    let ca = Arc::new(MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap());
    let proxy = |node: &str| {
        let store = CertStore::new(
            ca.clone(),
            keys.clone(),
            WallClock::starting_at(FIXED_ORIGIN),
            deterministic_provider(3),
        );
        let cfg = ProxyConfig::new(node, TlsContext::new(Arc::new(store), "cluster.local"));
        NodeProxy::new(net.clone(), mesh.clone(), cfg)
    };
    let (a, b) = (proxy("node-a"), proxy("node-b"));
    for (p, ns, pod) in [(&a, "client", "10.0.1.5"), (&b, "server", "10.0.2.5")] {
        net.add_address(ns, ip(pod));
        p.add_pod(PodSpec { ip: ip(pod), netns: ns.to_string(), listen_ip: ip("0.0.0.0") })
            .await
            .unwrap();
    }
    // The app accepts, then does not read until told to.
    let mut l = net
        .listen(&"server".to_string(), addr("10.0.2.5:8080"), &ListenOptions::default())
        .await
        .unwrap();
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(async move {
        let mut s = l.accept().await.unwrap().stream;
        wait.await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all
    });

    let mut s = net
        .app_connect("client", ip("10.0.1.5"), addr("10.0.2.5:8080"), addr("10.0.1.5:15001"))
        .await
        .unwrap();
    // Byte i of the stream is i % 251, so order and completeness can be checked at the end.
    let pattern =
        |from: usize, len: usize| (from..from + len).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
    let mut accepted = 0usize;
    loop {
        let buf = pattern(accepted, 64 * 1024);
        match tokio::time::timeout(Duration::from_secs(5), s.write(&buf)).await {
            Ok(r) => accepted += r.unwrap(),
            Err(_) => break, // stalled
        }
        assert!(
            accepted <= 8 << 20,
            "8 MiB accepted while the app reads nothing: a buffer is unbounded"
        );
    }
    // Pipes (64 KiB per hop), 16 KiB per copy direction and the h2 windows (256 KiB stream,
    // 1 MiB connection): a few hundred KiB, nowhere near the limit above.
    assert!(accepted >= 256 * 1024, "flow control let only {accepted} bytes through");
    assert!(accepted <= 2 << 20, "{accepted} bytes buffered");

    // The app reads again: everything arrives, in order, nothing lost or duplicated.
    go.send(()).unwrap();
    s.write_all(&pattern(accepted, 100_000)).await.unwrap();
    s.shutdown().await.unwrap();
    let got = app.await.unwrap();
    assert_eq!(got.len(), accepted + 100_000);
    assert!(got == pattern(0, got.len()), "bytes lost, duplicated or reordered");
}
