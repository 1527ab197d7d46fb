//! The proxies on the kernel, in one run: bulk throughput on one connection and
//! connection-setup latency, plain TCP between two pod namespaces (the baseline) against the same
//! through both node proxies over HBONE (REDIRECT → 15001 → mTLS + h2 CONNECT → 15008 →
//! transparent connect) — our proxy, then, when a ztunnel binary is given, real ztunnel on the
//! same namespaces, links and apps.
//!
//! Run: `cargo bench -p ambient-netns --bench proxy` (`-- --mib N` bulk size, default 512;
//! `-- --samples N` latency samples, default 400; first-connection samples are a quarter;
//! `-- --ztunnel PATH` or `TESTBED_ZTUNNEL=PATH` adds ztunnel, a binary built from the public
//! istio/ztunnel repository with features tls-ring,testing).
//!
//! Topology: two nodes; on node-a a captured client and an uncaptured one, on node-b a captured
//! server and an uncaptured one, each serving `echo` on 8080 and `sink` on 9000 (the scenario
//! apps). Plain TCP runs between the uncaptured pods over exactly the same links.
//!
//! - throughput: one connection sends N MiB of zeros to the sink, half-closes and waits for the
//!   sink's close (everything read); rate = N / time from connect to that close.
//! - setup latency: connect, send one byte, read its echo: time until that byte is back.
//!   *first*: through a tunnel dialled for this connection (node-a's proxy restarted before
//!   each sample, then 200 ms left for it to settle, both outside the timing, so the pool is
//!   empty: TCP + TLS 1.3 handshake + h2 handshake + CONNECT); *pooled*: on the tunnel the previous connections used (one h2 stream
//!   + CONNECT); *plain*: TCP handshake + one round trip.
//!
//! The proxies run one after the other (they would share the pods' ports), each with the
//! defaults of a deployment: ours one current-thread runtime per node, ztunnel its default
//! worker threads (two on this machine's size).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ambient_netns::backend::plan::Plan;
use ambient_netns::backend::proxies::{PodRef, Proxies};
use ambient_netns::backend::topology::Topology;
use ambient_netns::backend::traffic::{AcceptLog, start_apps};
use ambient_netns::backend::ztunnels::{ZPod, Ztunnels};
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

/// Pause after a restart, outside the timing: a first connection then measures the tunnel's
/// setup, not the restarted proxy's first certificate (ztunnel fetches it in the background at
/// startup; its FAKE_CA signs with RSA-2048).
const SETTLE: Duration = Duration::from_millis(200);

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const PLAIN_SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// One proxy's figures.
struct Figures {
    rate: f64,
    first: Vec<Duration>,
    pooled: Vec<Duration>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib = arg(&args, "--mib", 512);
    let samples = arg(&args, "--samples", 400);
    let ztunnel = args
        .iter()
        .position(|a| a == "--ztunnel")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("TESTBED_ZTUNNEL").ok().filter(|v| !v.is_empty()));
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
    let state = ClusterState::initial(&world);
    let mesh = state.mesh_state().expect("mesh");
    let captured = |node: &str| -> Vec<&Pod> {
        pods.iter().copied().filter(|p| p.node == node && p.is_captured()).collect()
    };
    let ours_pods = |node: &str| -> Vec<PodRef> {
        captured(node).iter().map(|p| (p.ip, topo.pods[&p.key].ns.path().to_path_buf())).collect()
    };
    let z_pods = |node: &str| -> Vec<ZPod> {
        captured(node)
            .iter()
            .map(|p| ZPod {
                ip: p.ip,
                netns: topo.pods[&p.key].ns.path().to_path_buf(),
                name: p.key.name.clone(),
                namespace: p.key.namespace.clone(),
                service_account: p.service_account.clone(),
            })
            .collect()
    };
    let ns = |name: &str| &topo.pods[&ObjectKey::new(name, "default")].ns;
    println!(
        "sandbox: {}; bulk {mib} MiB; {samples} latency samples; ztunnel: {}",
        sandbox.mode(),
        ztunnel.as_deref().unwrap_or("not given (TESTBED_ZTUNNEL or --ztunnel PATH)")
    );

    let bytes = mib as u64 * 1024 * 1024;
    let plain_rate = bulk(ns("plain-client"), SocketAddrV4::new(PLAIN_SERVER, 9000), bytes);
    let plain = latencies(ns("plain-client"), SocketAddrV4::new(PLAIN_SERVER, 8080), samples);
    let echo = SocketAddrV4::new(SERVER, 8080);
    let sink = SocketAddrV4::new(SERVER, 9000);
    let firsts = (samples / 4).max(10);

    // ztunnel first, on the same namespaces: its listeners bind without SO_REUSEADDR, so the
    // TIME_WAIT sockets our proxy's tunnels leave on 15008 would make its bind fail
    // (EADDRINUSE); ours binds with it, so it can follow ztunnel.
    let theirs = ztunnel.map(|binary| {
        let binary = std::path::PathBuf::from(binary);
        let mut z = Ztunnels::new(&binary, &nodes, &world.trust_domain).expect("ztunnel setup");
        z.write_config(&state.mesh_spec()).expect("ztunnel config");
        for (i, n) in nodes.iter().enumerate() {
            z.start(n, topo.node(i), &z_pods(n)).unwrap_or_else(|e| panic!("ztunnel@{n}: {e}"));
        }
        let rate = bulk(ns("client"), sink, bytes);
        latencies(ns("client"), echo, 1);
        let pooled = latencies(ns("client"), echo, samples);
        let mut first = Vec::new();
        for _ in 0..firsts {
            z.crash("node-a");
            z.start("node-a", topo.node(0), &z_pods("node-a")).expect("ztunnel restart");
            std::thread::sleep(SETTLE);
            first.extend(latencies(ns("client"), echo, 1));
        }
        z.crash_all();
        // Its listeners close with the process; wait until the pods' proxy ports are free.
        wait_ports_free(&[ns("client"), ns("server")]);
        Figures { rate, first, pooled }
    });

    // Our proxy.
    let mut proxies = Proxies::new(&nodes, &world.trust_domain, 1).expect("proxies");
    for (i, n) in nodes.iter().enumerate() {
        proxies.start(n, topo.node(i), mesh.clone(), ours_pods(n)).expect("proxy");
    }
    let rate = bulk(ns("client"), sink, bytes);
    latencies(ns("client"), echo, 1); // warm the pool
    let pooled = latencies(ns("client"), echo, samples);
    let mut first = Vec::new();
    for _ in 0..firsts {
        proxies.crash("node-a");
        proxies.start("node-a", topo.node(0), mesh.clone(), ours_pods("node-a")).expect("restart");
        std::thread::sleep(SETTLE);
        first.extend(latencies(ns("client"), echo, 1));
    }
    proxies.crash_all();
    let ours = Figures { rate, first, pooled };

    println!();
    println!("| throughput, one connection | MiB/s | vs. plain TCP | vs. our proxy |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| plain TCP, pod → pod across nodes | {plain_rate:.0} | 1.00× | |");
    println!(
        "| HBONE, our proxy on both nodes | {:.0} | {:.2}× | 1.00× |",
        ours.rate,
        ours.rate / plain_rate
    );
    if let Some(z) = &theirs {
        println!(
            "| HBONE, ztunnel on both nodes | {:.0} | {:.2}× | {:.2}× |",
            z.rate,
            z.rate / plain_rate,
            z.rate / ours.rate
        );
    }
    let base = pct(&plain, 50).as_secs_f64();
    println!();
    println!(
        "| setup latency (connect → 1-byte echo back) | p50 | p99 | p50 ÷ plain TCP | p50 ÷ our proxy's |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| plain TCP | {} | {} | 1.0× | |", us(pct(&plain, 50)), us(pct(&plain, 99)));
    let rows: Vec<(&str, &[Duration], &[Duration])> = {
        let mut r: Vec<(&str, &[Duration], &[Duration])> = vec![
            (
                "our proxy, first connection (new tunnel: TCP + TLS + h2 + CONNECT)",
                &ours.first,
                &ours.first,
            ),
            (
                "our proxy, pooled connection (one more h2 stream + CONNECT)",
                &ours.pooled,
                &ours.pooled,
            ),
        ];
        if let Some(z) = &theirs {
            r.push(("ztunnel, first connection", &z.first, &ours.first));
            r.push(("ztunnel, pooled connection", &z.pooled, &ours.pooled));
        }
        r
    };
    for (name, xs, vs) in rows {
        let p50 = pct(xs, 50).as_secs_f64();
        println!(
            "| {name} | {} | {} | {:.1}× | {:.2}× |",
            us(pct(xs, 50)),
            us(pct(xs, 99)),
            p50 / base,
            p50 / pct(vs, 50).as_secs_f64()
        );
    }
    for (name, f) in
        std::iter::once(("our proxy", &ours)).chain(theirs.iter().map(|z| ("ztunnel", z)))
    {
        println!(
            "pooled p50 ÷ first p50, {name}: {:.0}%",
            100.0 * pct(&f.pooled, 50).as_secs_f64() / pct(&f.first, 50).as_secs_f64()
        );
    }
}

/// Whether no listener holds the in-pod proxy ports (15001, 15006, 15008) in this namespace.
fn ports_free() -> bool {
    [15001u16, 15006, 15008].into_iter().all(|port| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        socket.is_ok_and(|s| {
            let at = std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            s.set_reuse_address(true).is_ok() && s.bind(&at.into()).is_ok()
        })
    })
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

/// Waits (at most 5 s per namespace) until nothing listens on the proxy ports in these pods.
fn wait_ports_free(pods: &[&Netns]) {
    for ns in pods {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ns.run_blocking(ports_free).expect("probe") {
            assert!(Instant::now() < deadline, "the proxy ports are still taken after 5 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
