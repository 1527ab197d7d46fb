//! Interop with an HTTP/2 implementation we did not write: our node proxy's HBONE client (pool,
//! TLS 1.3 + ALPN h2 + client certificate, h2 CONNECT, bounded copy) tunnels through `nghttpx`
//! (Debian package nghttp2-proxy) acting as the destination's mTLS HTTP/2 CONNECT proxy, with
//! certificates written by `testbed certs`.
//!
//! nghttpx forwards each CONNECT to its backend as an HTTP/1.1 CONNECT, so the backend here is
//! a small CONNECT handler in front of an echo app. nghttpx does not turn our END_STREAM into a
//! half-close towards the backend, so the client stops reading once its bytes are back.
//! Needs root (the proxy's sockets) and nghttpx; without either it fails saying so.
#![cfg(target_os = "linux")]

#[path = "../proxy/tests/support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::WallClock;
use ambient_proxy::crypto::default_provider;
use ambient_proxy::events::RecordingSink;
use ambient_proxy::mesh::{MeshSpec, MeshState, Workload};
use ambient_proxy::net::linux::NetnsPath;
use ambient_proxy::node::{NodeProxy, PodSpec, ProxyConfig};
use ambient_proxy::tls::TlsContext;
use support::{AppMode, Redirect, addr, ip};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.1 forward proxy that only does CONNECT; records each request line.
async fn connect_handler(seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.91.1.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut request = String::new();
                let _ = s.read_line(&mut request).await;
                loop {
                    let mut h = String::new();
                    if s.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().push(request.trim_end().to_string());
                let target = request.split_whitespace().nth(1).unwrap_or_default().to_string();
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = s.get_mut().write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = s.get_mut().write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
            });
        }
    });
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_hbone_client_tunnels_through_nghttpx() {
    let nghttpx = which("nghttpx")
        .expect("nghttpx not found: install the Debian package nghttp2-proxy (.ci/run does)");
    let dir = std::env::temp_dir().join(format!("testbed-interop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // 1. Certificates from `testbed certs`.
    let st = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["certs", "--out"])
        .arg(&dir)
        .args(["--seed", "5", "--identity", "spiffe://cluster.local/ns/default/sa/echo"])
        .status()
        .unwrap();
    assert!(st.success());

    // 2. Echo app behind a CONNECT handler behind nghttpx (the "destination proxy").
    let app = support::App::start(addr("127.91.1.5:8080"), AppMode::Echo).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = connect_handler(seen.clone()).await;
    let log = dir.join("nghttpx.log");
    let child = Command::new(nghttpx)
        .arg("--conf=/dev/null")
        .arg("--http2-proxy")
        .arg("--frontend=127.91.1.5,15008")
        .arg(format!("--backend={},{}", backend.ip(), backend.port()))
        .arg("--verify-client")
        .arg(format!("--verify-client-cacert={}", dir.join("ca.pem").display()))
        .arg("--tls-min-proto-version=TLSv1.3")
        .arg("--workers=1")
        .arg(format!("--errorlog-file={}", log.display()))
        .arg("--accesslog-file=/dev/null")
        .arg(dir.join("default.echo.key.pem"))
        .arg(dir.join("default.echo.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _nghttpx = KillOnDrop(child);
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect("127.91.1.5:15008").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "nghttpx did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());

    // 3. Our node proxy for the client's node, trusting the CA `testbed certs` wrote.
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = MeshCa::from_pem("cluster.local", &read("ca.pem"), &read("ca-key.pem")).unwrap();
    let store =
        CertStore::new(Arc::new(ca), KeySource::Seeded(6), WallClock::system(), default_provider());
    let events = Arc::new(RecordingSink::default());
    let mut cfg = ProxyConfig::new("node-a", TlsContext::new(Arc::new(store), "cluster.local"));
    cfg.sink = events.clone();
    let mesh = MeshState::new(MeshSpec {
        workloads: vec![
            Workload::new("client", "node-a", ip("127.91.0.5")).service_account("sleep"),
            Workload::new("server", "node-b", ip("127.91.1.5")).service_account("echo"),
        ],
        ..MeshSpec::default()
    })
    .unwrap();
    let net = Redirect::default();
    let proxy = NodeProxy::new(net.clone(), mesh, cfg);
    proxy
        .add_pod(PodSpec {
            ip: ip("127.91.0.5"),
            netns: NetnsPath::current(),
            listen_ip: ip("127.91.0.5"),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: run as root"));

    // 4. Three connections from the client app, one after another.
    for i in 0..3u8 {
        let mut s = net
            .app_connect(ip("127.91.0.5"), addr("127.91.1.5:8080"), addr("127.91.0.5:15001"))
            .await
            .unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|x| (x as u8) ^ i).collect();
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no echo; nghttpx log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .unwrap();
        assert_eq!(back, data, "connection {i} intact");
    }
    let c = proxy.counters();
    assert_eq!(c.get("tunnels.opened"), Some(&1), "{c:?}");
    assert_eq!(c.get("tunnels.reused"), Some(&2), "{c:?}");
    assert_eq!(seen.lock().unwrap()[0], "CONNECT 127.91.1.5:8080 HTTP/1.1");
    assert_eq!(app.peers.lock().unwrap().len(), 3);
    proxy.crash();
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
