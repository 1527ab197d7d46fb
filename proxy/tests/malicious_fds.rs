//! fd exhaustion, end to end: with this process's descriptor limit lowered to 512, ~400 bare
//! connects to 15008 used to take every descriptor (one per accepted socket), so no valid
//! client of any pod on the node got in. Admission resets what is beyond the per-peer bounds
//! at once. In its own test binary: the lowered limit holds for the whole process.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use support::*;
use tokio::net::TcpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_flood_does_not_lock_valid_clients_out() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 512, hard).unwrap();
    let w = world("127.88", WorldOptions::default()).await;
    let _app = App::start(addr("127.88.1.5:8080"), AppMode::Echo).await;
    let target = std::net::SocketAddr::new(w.server, 15008);
    let mut flood = Vec::new();
    let mut attempts = 0;
    for _ in 0..400 {
        attempts += 1;
        let Ok(s) = TcpSocket::new_v4() else { break };
        if s.bind(addr("127.88.0.66:0")).is_err() {
            break;
        }
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), s.connect(target)).await {
            flood.push(c);
        }
    }
    assert_eq!(
        attempts,
        400,
        "descriptors ran out after {attempts} connects ({} held by the flood): the proxy keeps one per connect",
        flood.len()
    );
    // The flood is still open (its sockets held by this process); a valid client is served.
    let mut s = w.connect(addr("127.88.1.5:8080")).await.expect("a valid client connects");
    let r = tokio::time::timeout(Duration::from_secs(5), exchange(&mut s, b"valid")).await;
    assert_eq!(r.expect("served within 5 s").unwrap(), b"valid");
    let overload = w.b.counters().get("connections.inbound-hbone.overload").copied();
    assert!(overload.unwrap_or(0) >= 300, "{overload:?}");
    drop(flood);
}
