//! Simulator speed, against the same proxy on real loopback sockets in the same run.
//!
//! ```sh
//! cargo bench -p ambient-sim --bench sim            # needs root for the loopback baseline
//! SIM_BENCH_N=4000 cargo bench -p ambient-sim --bench sim
//! ```
//!
//! 1. the whole catalog (`scenarios/catalog`), wall time;
//! 2. pooled HBONE connections (1 KiB echo each, one tunnel) per wall second: simulated, and
//!    through two node proxies on loopback (`LinuxNetwork`, SO_MARK, IP_TRANSPARENT; REDIRECT
//!    stood in for by telling the listener the original destination, as `proxy/tests` do);
//! 3. first connections (TCP + TLS 1.3 + h2 + CONNECT + 1 KiB each, a new tunnel every time)
//!    per wall second, the same two ways.
//!
//! Simulated rates include building the cluster (amortised over the connections). Not a test:
//! nothing is asserted; `reports/performance.md` records the ratios.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::{World, load_file, load_str};

fn catalog() -> Vec<World> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("catalog")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|p| load_file(p).into_result().expect("catalog scenario loads")).collect()
}

const CLUSTER: &str = r#"
cluster:
  nodes: [node-a, node-b]
  pods:
    - name: server
      node: node-b
      serviceAccount: echo
      ambient: true
      labels: {app: echo}
      serve: [{port: 8080, app: echo}]
"#;

/// `n` sequential 1 KiB connections from one client: the first dials, the rest are pooled.
fn pooled_world(n: usize) -> World {
    let text = format!(
        "description: pooled\n{CLUSTER}    - {{name: client, node: node-a, serviceAccount: sleep, ambient: true}}\n\
         steps:\n  - connect: {{id: c, from: client, to: server:8080, count: {n}, expect: {{outcome: ok}}}}\n"
    );
    load_str("pooled.yaml", &text).into_result().expect("pooled scenario")
}

/// `n` clients (distinct pods, so distinct pool keys), one 1 KiB connection each: every one
/// dials its own tunnel.
fn first_world(n: usize) -> World {
    let mut text = format!("description: first\n{CLUSTER}");
    for i in 0..n {
        let ip = format!("10.0.{}.{}", 1, 2 + i);
        text.push_str(&format!(
            "    - {{name: c{i}, node: node-a, serviceAccount: sleep, ambient: true, ip: {ip}}}\n"
        ));
    }
    text = text.replace(
        "    - name: server\n      node: node-b",
        "    - name: server\n      node: node-b\n      ip: 10.0.2.2",
    );
    text.push_str("steps:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - connect: {{id: c{i}, from: c{i}, to: server:8080, expect: {{outcome: ok, reused: false}}}}\n"
        ));
    }
    load_str("first.yaml", &text).into_result().expect("first scenario")
}

fn sim_rate(w: &World, n: usize) -> (f64, u64) {
    let start = Instant::now();
    let run = ambient_sim::run(w, &RunOptions::default()).expect("simulated run");
    let wall = start.elapsed().as_secs_f64();
    let failures = ambient_scenarios::check_outcome(w, &run.outcome);
    assert!(failures.is_empty(), "{}: {:?}", w.id, failures.first().map(ToString::to_string));
    (n as f64 / wall, run.stats.segments)
}

#[cfg(target_os = "linux")]
mod loopback {
    //! The same proxy on real sockets in the current namespace (root: SO_MARK, IP_TRANSPARENT).
    use super::*;
    use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
    use ambient_proxy::clock::WallClock;
    use ambient_proxy::crypto::default_provider;
    use ambient_proxy::mesh::{MeshSpec, MeshState, Workload};
    use ambient_proxy::net::linux::{LinuxListener, LinuxNetwork, NetnsPath};
    use ambient_proxy::net::{Accepted, ConnectOptions, ListenOptions, Listener, Network};
    use ambient_proxy::pool::PoolConfig;
    use ambient_proxy::tls::TlsContext;
    use ambient_proxy::{NodeProxy, PodSpec, ProxyConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    type Table = Arc<Mutex<BTreeMap<SocketAddr, SocketAddr>>>;

    /// Real sockets; the original destination of app connections comes from a table.
    #[derive(Clone, Debug, Default)]
    struct Redirect {
        inner: LinuxNetwork,
        table: Table,
    }

    #[derive(Debug)]
    struct RedirectListener {
        inner: LinuxListener,
        table: Table,
    }

    impl Listener for RedirectListener {
        type Stream = TcpStream;
        async fn accept(&mut self) -> io::Result<Accepted<TcpStream>> {
            let mut acc = self.inner.accept().await?;
            if acc.original_dst.is_none() {
                acc.original_dst = self.table.lock().unwrap().remove(&acc.peer);
            }
            Ok(acc)
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.inner.local_addr()
        }
    }

    impl Network for Redirect {
        type Netns = NetnsPath;
        type Listener = RedirectListener;
        type Stream = TcpStream;
        type Datagram = tokio::net::UdpSocket;
        async fn listen(
            &self,
            ns: &NetnsPath,
            a: SocketAddr,
            o: &ListenOptions,
        ) -> io::Result<RedirectListener> {
            Ok(RedirectListener {
                inner: self.inner.listen(ns, a, o).await?,
                table: self.table.clone(),
            })
        }
        async fn connect(
            &self,
            ns: &NetnsPath,
            d: SocketAddr,
            o: &ConnectOptions,
        ) -> io::Result<TcpStream> {
            self.inner.connect(ns, d, o).await
        }
        fn reset(&self, s: TcpStream) {
            self.inner.reset(s)
        }
        fn local_addr(&self, s: &TcpStream) -> io::Result<SocketAddr> {
            self.inner.local_addr(s)
        }
        async fn bind_udp(
            &self,
            ns: &NetnsPath,
            a: SocketAddr,
            o: &ambient_proxy::net::UdpOptions,
        ) -> io::Result<tokio::net::UdpSocket> {
            self.inner.bind_udp(ns, a, o).await
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Runs `n` 1 KiB connections through two proxies; with `fresh`, the pool closes idle
    /// tunnels at once so every connection dials (only connection time is counted).
    pub fn rate(n: usize, fresh: bool) -> Result<f64, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let p = "127.88";
            let (client, server) = (ip(&format!("{p}.0.5")), ip(&format!("{p}.1.5")));
            let spec = MeshSpec {
                workloads: vec![
                    Workload::new("client", "node-a", client).service_account("sleep"),
                    Workload::new("server", "node-b", server).service_account("echo"),
                ],
                ..MeshSpec::default()
            };
            let mesh = MeshState::new(spec).unwrap();
            let ca = Arc::new(
                MeshCa::generate("cluster.local", &KeySource::Seeded(1), WallClock::system().now())
                    .unwrap(),
            );
            let net = Redirect::default();
            let tls = |seed| {
                let store = CertStore::new(
                    ca.clone(),
                    KeySource::Seeded(seed),
                    WallClock::system(),
                    default_provider(),
                );
                TlsContext::new(Arc::new(store), "cluster.local")
            };
            let mut cfg_a = ProxyConfig::new("node-a", tls(10));
            if fresh {
                cfg_a.pool =
                    PoolConfig { idle_timeout: Duration::from_millis(1), ..PoolConfig::default() };
            }
            let a = NodeProxy::new(net.clone(), mesh.clone(), cfg_a);
            let b = NodeProxy::new(net.clone(), mesh, ProxyConfig::new("node-b", tls(20)));
            let pod = |ip| PodSpec { ip, netns: NetnsPath::current(), listen_ip: ip };
            a.add_pod(pod(client))
                .await
                .map_err(|e| format!("the loopback baseline needs root: {e}"))?;
            b.add_pod(pod(server)).await.map_err(|e| e.to_string())?;
            let app = tokio::net::TcpListener::bind(SocketAddr::new(server, 8080))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                while let Ok((mut s, _)) = app.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
            });
            let data = vec![7u8; 1024];
            let mut spent = Duration::ZERO;
            for _ in 0..n {
                if fresh {
                    // Let the previous tunnel idle out (not counted).
                    for _ in 0..200 {
                        if a.pooled_tunnels() == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                let start = Instant::now();
                let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
                sock.bind(SocketAddr::new(client, 0)).map_err(|e| e.to_string())?;
                let local = sock.local_addr().map_err(|e| e.to_string())?;
                net.table.lock().unwrap().insert(local, SocketAddr::new(server, 8080));
                let mut s = sock
                    .connect(SocketAddr::new(client, 15001))
                    .await
                    .map_err(|e| e.to_string())?;
                s.write_all(&data).await.map_err(|e| e.to_string())?;
                s.shutdown().await.map_err(|e| e.to_string())?;
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.map_err(|e| e.to_string())?;
                spent += start.elapsed();
                if back != data {
                    return Err("the echo came back wrong".into());
                }
            }
            let opened = a.counters().get("tunnels.opened").copied().unwrap_or(0);
            a.crash();
            b.crash();
            if fresh && opened < n as u64 {
                return Err(format!("only {opened} tunnels for {n} first connections"));
            }
            Ok(n as f64 / spent.as_secs_f64())
        })
    }
}

fn main() {
    let n: usize = std::env::var("SIM_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let first_n = (n / 10).clamp(10, 250);

    let worlds = catalog();
    let start = Instant::now();
    let mut segments = 0;
    for w in &worlds {
        let run = ambient_sim::run(w, &RunOptions::default()).expect("catalog run");
        segments += run.stats.segments;
    }
    let catalog_wall = start.elapsed();
    println!(
        "catalog: {} scenarios in {:.3} s wall ({} simulated segments)",
        worlds.len(),
        catalog_wall.as_secs_f64(),
        segments
    );

    let (sim_pooled, seg) = sim_rate(&pooled_world(n), n);
    println!("sim pooled: {n} connections, {sim_pooled:.0} connections/s ({seg} segments)");
    let (sim_first, seg) = sim_rate(&first_world(first_n), first_n);
    println!("sim first: {first_n} connections, {sim_first:.0} connections/s ({seg} segments)");

    #[cfg(target_os = "linux")]
    {
        match (loopback::rate(n, false), loopback::rate(first_n, true)) {
            (Ok(lo_pooled), Ok(lo_first)) => {
                println!("loopback pooled: {lo_pooled:.0} connections/s");
                println!("loopback first: {lo_first:.0} connections/s");
                println!("ratio pooled sim/loopback: {:.2}", sim_pooled / lo_pooled);
                println!("ratio first sim/loopback: {:.2}", sim_first / lo_first);
            }
            (Err(e), _) | (_, Err(e)) => println!("loopback baseline not measured: {e}"),
        }
    }
}
