//! The proxy on the kernel, in one run: bulk throughput on one connection and connection-setup
//! latency, plain TCP between two pod namespaces (the baseline) against the same through both
//! node proxies over HBONE (REDIRECT → 15001 → mTLS + h2 CONNECT → 15008 → transparent connect).
//!
//! Run: `cargo bench -p ambient-netns --bench proxy` (`-- --mib N` bulk size, default 512;
//! `-- --samples N` latency samples, default 400; first-connection samples are a quarter).
//!
//! Topology: two nodes; on node-a a captured client and an uncaptured one, on node-b a captured
//! server and an uncaptured one, each serving `echo` on 8080 and `sink` on 9000 (the scenario
//! apps). Plain TCP runs between the uncaptured pods over exactly the same links.
//!
//! - throughput: one connection sends N MiB of zeros to the sink, half-closes and waits for the
//!   sink's close (everything read); rate = N / time from connect to that close.
//! - setup latency: connect, send one byte, read its echo: time until that byte is back.
//!   *first*: through a tunnel dialled for this connection (node-a's proxy restarted before
//!   each sample, outside the timing, so the pool is empty: TCP + TLS 1.3 handshake + h2
//!   handshake + CONNECT); *pooled*: on the tunnel the previous connections used (one h2 stream
//!   + CONNECT); *plain*: TCP handshake + one round trip.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ambient_netns::backend::plan::Plan;
use ambient_netns::backend::proxies::{PodRef, Proxies};
use ambient_netns::backend::topology::Topology;
use ambient_netns::backend::traffic::{AcceptLog, start_apps};
use ambient_netns::netns::Netns;
use ambient_netns::sandbox::Sandbox;
use ambient_scenarios::world::{ObjectKey, Pod};
use ambient_scenarios::{ClusterState, World, load_str};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const CLUSTER: &str = r#"
description: proxy bench
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}       # 10.0.1.2
    - {name: plain-client, node: node-a}                                        # 10.0.1.3
    - {name: server, node: node-b, serviceAccount: echo, ambient: true, serve: [{port: 8080, app: echo}, {port: 9000, app: sink}]}  # 10.0.2.2
    - {name: plain-server, node: node-b, serve: [{port: 8080, app: echo}, {port: 9000, app: sink}]}  # 10.0.2.3
steps:
  - wait: 0s
"#;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const PLAIN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = arg(&args, "--mib", 512);
    let samples = arg(&args, "--samples", 400);
    let sandbox = Sandbox::enter().unwrap_or_else(|e| panic!("cannot enter the sandbox: {e}"));
    let world: World = load_str("bench.yaml", CLUSTER).into_result().expect("world");
    let mut topo = Topology::build(&sandbox, Plan::of(&world).expect("plan")).expect("nodes");
    let pods: Vec<&Pod> = world.pods.values().collect();
    topo.add_pods(&sandbox, &pods).expect("pods");
    let accepts = AcceptLog::default();
    for p in &pods {
        start_apps(&topo.pods[&p.key].ns, &p.serve, &accepts).expect("apps");
    }
    let nodes = vec!["node-a".to_string(), "node-b".to_string()];
    let mut proxies = Proxies::new(&nodes, &world.trust_domain, 1).expect("proxies");
    let mesh = ClusterState::initial(&world).mesh_state().expect("mesh");
    let captured = |node: &str| -> Vec<PodRef> {
        pods.iter()
            .filter(|p| p.node == node && p.is_captured())
            .map(|p| (p.ip, topo.pods[&p.key].ns.path().to_path_buf()))
            .collect()
    };
    for (i, n) in nodes.iter().enumerate() {
        proxies.start(n, topo.node(i), mesh.clone(), captured(n)).expect("proxy");
    }
    let ns = |name: &str| &topo.pods[&ObjectKey::new(name, "default")].ns;
    println!("sandbox: {}; bulk {mib} MiB; {samples} latency samples", sandbox.mode());

    let bytes = mib as u64 * 1024 * 1024;
    let plain_rate = bulk(ns("plain-client"), SocketAddrV4::new(PLAIN_SERVER, 9000), bytes);
    let hbone_rate = bulk(ns("client"), SocketAddrV4::new(SERVER, 9000), bytes);
    println!();
    println!("| throughput, one connection | MiB/s | vs. plain TCP |");
    println!("| --- | ---: | ---: |");
    println!("| plain TCP, pod → pod across nodes | {plain_rate:.0} | 1.00× |");
    println!("| HBONE through both proxies | {hbone_rate:.0} | {:.2}× |", hbone_rate / plain_rate);

    let plain = latencies(ns("plain-client"), SocketAddrV4::new(PLAIN_SERVER, 8080), samples);
    let echo = SocketAddrV4::new(SERVER, 8080);
    latencies(ns("client"), echo, 1); // warm the pool
    let pooled = latencies(ns("client"), echo, samples);
    let mut first = Vec::new();
    for _ in 0..(samples / 4).max(10) {
        proxies.crash("node-a");
        proxies.start("node-a", topo.node(0), mesh.clone(), captured("node-a")).expect("restart");
        first.extend(latencies(ns("client"), echo, 1));
    }
    let (p50, p99) = (pct(&first, 50), pct(&first, 99));
    println!();
    println!("| setup latency (connect → 1-byte echo back) | p50 | p99 | p50 vs. first HBONE |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, xs) in [
        ("plain TCP", &plain),
        ("HBONE, first connection (new tunnel: TCP + TLS + h2 + CONNECT)", &first),
        ("HBONE, pooled connection (one more h2 stream + CONNECT)", &pooled),
    ] {
        println!(
            "| {name} | {} | {} | {:.0}% |",
            us(pct(xs, 50)),
            us(pct(xs, 99)),
            100.0 * pct(xs, 50).as_secs_f64() / p50.as_secs_f64()
        );
    }
    let _ = p99;
    proxies.crash_all();
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn pct(xs: &[Duration], p: usize) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v[((v.len() - 1) * p / 100).min(v.len() - 1)]
}

/// MiB/s of one connection sending `bytes` to a sink.
fn bulk(ns: &Netns, dst: SocketAddrV4, bytes: u64) -> f64 {
    let took = ns
        .run(move || async move {
            let started = Instant::now();
            let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
            let chunk = vec![0u8; 256 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = chunk.len().min((bytes - sent) as usize);
                s.write_all(&chunk[..n]).await.expect("write");
                sent += n as u64;
            }
            s.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.expect("read");
            assert!(rest.is_empty(), "the sink returned bytes");
            started.elapsed()
        })
        .expect("bulk job");
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
}

/// `n` sequential connections: time from connect until one echoed byte is back.
fn latencies(ns: &Netns, dst: SocketAddrV4, n: usize) -> Vec<Duration> {
    ns.run(move || async move {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let mut s = tokio::net::TcpStream::connect(dst).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("echo");
            out.push(started.elapsed());
            s.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
        out
    })
    .expect("latency job")
}
