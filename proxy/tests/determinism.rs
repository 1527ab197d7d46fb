//! The whole data path, twice, on a paused current-thread runtime over the in-process network,
//! with the deterministic crypto provider, a fixed wall-clock origin and seeded keys: the same
//! seed gives byte-identical events and counters (routes, endpoints, identities, bytes,
//! durations, tunnel reuse and idle close); another seed chooses other endpoints.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::{FIXED_ORIGIN, WallClock};
use ambient_proxy::crypto::deterministic_provider;
use ambient_proxy::events::{ProxyEvent, RecordingSink};
use ambient_proxy::mesh::{MeshSpec, MeshState, Service, Workload};
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

async fn echo_app(net: &MemoryNetwork, netns: &str, at: SocketAddr) {
    let mut l = net.listen(&netns.to_string(), at, &ListenOptions::default()).await.unwrap();
    tokio::spawn(async move {
        while let Ok(acc) = l.accept().await {
            tokio::spawn(async move {
                let mut s = acc.stream;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                let _ = s.write_all(&buf).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

fn run(seed: u64) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let net = MemoryNetwork::new();
        let mesh = MeshState::new(MeshSpec {
            workloads: vec![
                Workload::new("client", "node-a", ip("10.0.1.5")).service_account("sleep"),
                Workload::new("echo-1", "node-b", ip("10.0.2.5"))
                    .service_account("echo")
                    .label("app", "echo"),
                Workload::new("echo-2", "node-b", ip("10.0.2.6"))
                    .service_account("echo")
                    .label("app", "echo"),
            ],
            services: vec![
                Service::new("echo", ip("10.96.0.10")).port(80, 8080).select("app", "echo"),
            ],
            ..MeshSpec::default()
        })
        .unwrap();
        let keys = KeySource::Seeded(seed);
        let ca = Arc::new(MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap());
        let proxy = |node: &str, n: u64, sink: Arc<RecordingSink>| {
            let store = CertStore::new(
                ca.clone(),
                keys.clone(),
                WallClock::starting_at(FIXED_ORIGIN),
                deterministic_provider(seed * 2 + n),
            );
            let mut cfg = ProxyConfig::new(node, TlsContext::new(Arc::new(store), "cluster.local"));
            cfg.seed = seed;
            cfg.sink = sink;
            NodeProxy::new(net.clone(), mesh.clone(), cfg)
        };
        let (ev_a, ev_b) = (Arc::new(RecordingSink::default()), Arc::new(RecordingSink::default()));
        let a = proxy("node-a", 0, ev_a.clone());
        let b = proxy("node-b", 1, ev_b.clone());
        let any = ip("0.0.0.0");
        for (p, ns, pod) in
            [(&a, "client", "10.0.1.5"), (&b, "echo-1", "10.0.2.5"), (&b, "echo-2", "10.0.2.6")]
        {
            net.add_address(ns, ip(pod));
            p.add_pod(PodSpec { ip: ip(pod), netns: ns.to_string(), listen_ip: any })
                .await
                .unwrap();
        }
        echo_app(&net, "echo-1", addr("10.0.2.5:8080")).await;
        echo_app(&net, "echo-2", addr("10.0.2.6:8080")).await;

        let connect = || {
            net.app_connect("client", ip("10.0.1.5"), addr("10.96.0.10:80"), addr("10.0.1.5:15001"))
        };
        for i in 0..6u8 {
            let mut s = connect().await.unwrap();
            let data = vec![i; 3000 * usize::from(i + 1)];
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut parallel = Vec::new();
        for i in 0..4u8 {
            let mut s = connect().await.unwrap();
            parallel.push(tokio::spawn(async move {
                s.write_all(&[i; 100]).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                back.len()
            }));
        }
        for t in parallel {
            assert_eq!(t.await.unwrap(), 100);
        }
        // Let the pooled tunnels idle out (5 minutes, no wall-clock time spent).
        tokio::time::sleep(Duration::from_secs(301)).await;
        let json = |evs: Vec<ProxyEvent>| {
            evs.iter().map(|e| serde_json::to_string(e).unwrap()).collect::<Vec<_>>()
        };
        let out = serde_json::json!({
            "node-a": json(ev_a.events()),
            "node-b": json(ev_b.events()),
            "counters-a": a.counters(),
            "counters-b": b.counters(),
        });
        a.crash();
        b.crash();
        serde_json::to_string_pretty(&out).unwrap()
    })
}

#[test]
fn same_seed_same_bytes() {
    let first = run(7);
    assert_eq!(first, run(7));
    // It did real work: tunnels opened, reused, idled out; both endpoints served.
    for needle in [
        "\"tunnels.opened\": 2",
        "\"tunnels.reused\": 8",
        "idle for 300s",
        "10.0.2.5:8080",
        "10.0.2.6:8080",
    ] {
        assert!(first.contains(needle), "{needle} missing in\n{first}");
    }
    // Another seed: other endpoint choices.
    let endpoints = |s: &str| {
        s.lines()
            .filter(|l| l.contains("outbound-route"))
            .map(|l| if l.contains("10.0.2.5:8080") { '1' } else { '2' })
            .collect::<String>()
    };
    assert_ne!(endpoints(&first), endpoints(&run(8)));
}
