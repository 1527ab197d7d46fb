//! The Linux socket seam on real sockets: SO_MARK, transparent source bind, reset, half-close,
//! and listening inside another network namespace. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN);
//! without it these tests fail with the reason.
#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::sync::mpsc;

use ambient_proxy::net::linux::{LinuxNetwork, NetnsPath, mark_of};
use ambient_proxy::net::{ConnectOptions, Datagram, ListenOptions, Listener, Network, UdpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn need_root<T>(r: std::io::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}. These tests need root (CAP_NET_ADMIN/CAP_SYS_ADMIN); run them as root."))
}

#[tokio::test]
async fn mark_and_transparent_source_are_applied() {
    let net = LinuxNetwork::new();
    let here = NetnsPath::current();
    let mut l = need_root(
        net.listen(&here, addr("127.0.0.1:0"), &ListenOptions::default()).await,
        "listen",
    );
    let dst = l.local_addr().unwrap();
    let opts = ConnectOptions { mark: Some(0x539), source: Some(addr("127.0.0.9:0")) };
    let client =
        need_root(net.connect(&here, dst, &opts).await, "connect with SO_MARK and IP_TRANSPARENT");
    let acc = l.accept().await.unwrap();
    assert_eq!(acc.peer.ip(), addr("127.0.0.9:0").ip(), "the server sees the spoofed source");
    assert_eq!(acc.local, dst);
    assert_eq!(acc.original_dst, None, "no REDIRECT, so no original destination");
    assert_eq!(mark_of(&client).unwrap(), 0x539);
}

/// UDP on the seam: datagrams both ways with the sender's address; a marked socket connected
/// to a port nobody is bound to gets the kernel's ICMP port unreachable as ECONNREFUSED on its
/// next receive (what makes a dead upstream resolver fail fast).
#[tokio::test]
async fn udp_sockets_carry_datagrams_marks_and_icmp_errors() {
    let net = LinuxNetwork::new();
    let here = NetnsPath::current();
    let server = net.bind_udp(&here, addr("127.0.0.1:0"), &UdpOptions::default()).await.unwrap();
    let at = server.local_addr().unwrap();
    let opts = UdpOptions { mark: Some(0x539), peer: Some(at) };
    let client = need_root(net.bind_udp(&here, addr("127.0.0.1:0"), &opts).await, "SO_MARK");
    assert_eq!(socket2::SockRef::from(&client).mark().unwrap(), 0x539);
    client.send_to(b"query", at).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"query"[..], client.local_addr().unwrap()));
    Datagram::send_to(&server, b"answer", from).await.unwrap();
    let (n, from) = Datagram::recv_from(&client, &mut buf).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"answer"[..], at));
    drop(server);
    Datagram::send_to(&client, b"again", at).await.unwrap();
    let e = Datagram::recv_from(&client, &mut buf).await.unwrap_err();
    assert_eq!(e.raw_os_error(), Some(111), "{e}");
}

#[tokio::test]
async fn reset_and_half_close_propagate() {
    let net = LinuxNetwork::new();
    let here = NetnsPath::current();
    let mut l = net.listen(&here, addr("127.0.0.1:0"), &ListenOptions::default()).await.unwrap();
    let dst = l.local_addr().unwrap();

    // Half-close: the client's FIN is an EOF at the server, which can still answer.
    let mut c = net.connect(&here, dst, &ConnectOptions::default()).await.unwrap();
    let mut s = l.accept().await.unwrap().stream;
    c.write_all(b"hello").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    s.write_all(b"bye").await.unwrap();
    drop(s);
    let mut back = Vec::new();
    c.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"bye");

    // Reset: the peer's read fails with ECONNRESET, not a clean EOF.
    let mut c = net.connect(&here, dst, &ConnectOptions::default()).await.unwrap();
    let s = l.accept().await.unwrap().stream;
    net.reset(s);
    let err = c.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

/// A thread in a fresh network namespace (loopback up), kept alive until dropped.
struct FreshNetns {
    path: String,
    _stop: mpsc::Sender<()>,
}

fn fresh_netns() -> FreshNetns {
    let (path_tx, path_rx) = mpsc::channel();
    let (stop, stop_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let r = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))
            .and_then(|_| {
                // A child process inherits this thread's namespace.
                let st =
                    std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status();
                match st {
                    Ok(s) if s.success() => {
                        Ok(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()))
                    }
                    other => Err(format!("ip link set lo up: {other:?}")),
                }
            });
        path_tx.send(r).unwrap();
        let _ = stop_rx.recv();
    });
    let path = path_rx.recv().unwrap().unwrap_or_else(|e| panic!("{e}: this test needs root"));
    FreshNetns { path, _stop: stop }
}

#[tokio::test]
async fn sockets_live_in_the_namespace_they_were_made_in() {
    let ns = fresh_netns();
    let net = LinuxNetwork::new();
    let pod = NetnsPath::at(&ns.path);
    let mut l = net
        .listen(&pod, addr("127.0.0.1:0"), &ListenOptions { mark: Some(0x539), transparent: false })
        .await
        .unwrap();
    let dst = l.local_addr().unwrap();
    // From inside the namespace it connects …
    let mut c =
        net.connect(&pod, dst, &ConnectOptions { mark: Some(0x539), source: None }).await.unwrap();
    let mut s = l.accept().await.unwrap().stream;
    c.write_all(b"in-pod").await.unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"in-pod");
    // … from the test's own namespace the same address has nobody listening.
    let err =
        net.connect(&NetnsPath::current(), dst, &ConnectOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
