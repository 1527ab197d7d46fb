//! `testbed proxy` as a user runs it: a config file, the real kernel, Ctrl-C to drain. An HBONE
//! client with a certificate from the same CA seed talks to the running binary. Needs root.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::client::HboneClient;
use ambient_proxy::clock::WallClock;
use ambient_proxy::crypto::default_provider;
use ambient_proxy::identity::Identity;
use ambient_proxy::tls::TlsContext;
use tokio::io::AsyncWriteExt;

const CONFIG: &str = r#"
node: node-b
ca: {seed: 42}
drain: 3s
pods: [{ip: 127.81.1.5, listenIp: 127.81.1.5}]
mesh:
  workloads:
    - {name: server, node: node-b, ip: 127.81.1.5, serviceAccount: echo}
    - {name: client, node: node-a, ip: 127.81.0.5, serviceAccount: sleep}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_hbone_until_ctrl_c_then_drains() {
    let dir = std::env::temp_dir().join(format!("testbed-cli-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("proxy.yaml");
    std::fs::write(&cfg, CONFIG).unwrap();

    // An echo app in the served pod.
    let app = tokio::net::TcpListener::bind("127.81.1.5:8080").await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });

    let mut child = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["proxy", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "testbed proxy exited before it was ready (needs root)"
        );
        if line.contains("ready") {
            break;
        }
    }
    let errs = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });

    // Our own client: same CA seed, the client pod's identity.
    let ca = Arc::new(
        MeshCa::generate("cluster.local", &KeySource::Seeded(42), WallClock::system().now())
            .unwrap(),
    );
    let store = CertStore::new(ca, KeySource::Seeded(7), WallClock::system(), default_provider());
    let tls = TlsContext::new(Arc::new(store), "cluster.local");
    let me: Identity = "spiffe://cluster.local/ns/default/sa/sleep".parse().unwrap();
    let server: Identity = "spiffe://cluster.local/ns/default/sa/echo".parse().unwrap();
    let tcp = tokio::net::TcpStream::connect("127.81.1.5:15008").await.unwrap();
    let client =
        HboneClient::connect(tcp, &tls, &me, &server, "127.81.1.5".parse().unwrap()).await.unwrap();
    let (status, stream) = client.open("127.81.1.5:8080".parse().unwrap(), None).await.unwrap();
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    stream.send(b"through the binary", true).await.unwrap();
    assert_eq!(stream.recv(usize::MAX).await.unwrap(), b"through the binary");
    // A CONNECT to a port nothing listens on: 503.
    let (status, _) = client.open("127.81.1.5:8081".parse().unwrap(), None).await.unwrap();
    assert_eq!(status, 503);
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let log = errs.join().unwrap();
    assert!(out.status.success(), "exit {:?}\n{log}", out.status);
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("inbound-verdict"), "access log on stderr: {log}");
    let counters: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counters["connections.inbound-hbone.ok"], 1, "{counters}");
    assert_eq!(counters["connections.inbound-hbone.error"], 1, "{counters}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_config_is_refused_with_every_problem_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("testbed-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.yaml");
    std::fs::write(&cfg, "node: n\nca: {}\npods: [{ip: 10.9.9.9}]\nmesh: {workloads: [{name: a, node: n, ip: 10.0.0.1}]}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["proxy", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ca: give either `seed`, or both `certFile` and `keyFile`"), "{err}");
    assert!(err.contains("pods[0].ip: 10.9.9.9 is not a captured workload of node n"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--check` asks the kernel what only it knows, the way the proxy asks at start: a netns path
/// that is a plain file, and a listen address the namespace does not have, fail the check
/// (they used to pass it and then fail at start), with no claim about CAP_SYS_ADMIN.
#[test]
fn check_finds_what_would_fail_at_start() {
    let dir = std::env::temp_dir().join(format!("testbed-cli-proxy-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_a_netns = dir.join("plain-file");
    std::fs::write(&not_a_netns, "not a namespace").unwrap();
    let cfg = dir.join("proxy.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
node: node-b
ca: {{seed: 42}}
pods:
  - {{ip: 127.82.1.5, netns: {}}}
  - {{ip: 127.82.1.6, listenIp: 198.51.100.77}}
mesh:
  workloads:
    - {{name: a, node: node-b, ip: 127.82.1.5}}
    - {{name: b, node: node-b, ip: 127.82.1.6}}
"#,
            not_a_netns.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args(["proxy", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pods[0].netns") && err.contains("is not a network namespace"), "{err}");
    assert!(!err.contains("CAP_SYS_ADMIN"), "{err}");
    assert!(
        err.contains(
            "pods[1].listenIp: 198.51.100.77 is not an address of the pod's network namespace"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
