//! The namespace primitives against the real kernel: sandbox, named namespaces and their paths,
//! jobs, rtnetlink links/addresses/routes/rules, tools, readers, sockets, process lifetime, the
//! NFQUEUE delay line.
//!
//! `harness = false`: the sandbox must be entered while the process has one thread. Run with
//! `cargo test -p ambient-netns --test primitives [-- FILTER]`. Needs root or unprivileged user
//! namespaces; without them every case fails with the reason.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambient_netns::iptables::{Counters, RuleRef, Table};
use ambient_netns::link::{LinkError, Route};
use ambient_netns::netns::{Netns, NetnsError};
use ambient_netns::nfqueue::Delay;
use ambient_netns::sandbox::{NamespaceIds, Sandbox, SandboxError, SandboxMode, ns_inode};
use ambient_netns::socket::{self, ConnectErrorKind, ConnectOptions, ListenOptions};
use ambient_netns::testkit::Suite;
use ambient_netns::tools::ToolError;
use ambient_scenarios::rules::{InpodRules, PolicyRouting};
use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const POD: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

fn main() -> ExitCode {
    Suite::new("ambient-netns primitives")
        .case("sandbox::namespaces_are_private", |sb| Ok(namespaces_are_private(sb)?))
        .case("sandbox::refuses_a_threaded_process", |_| Ok(refuses_threads()?))
        .case("netns::create_path_and_drop", |sb| Ok(create_path_and_drop(sb)?))
        .case("netns::job_panic_is_an_error", |sb| Ok(job_panic_is_an_error(sb)?))
        .case("link::veth_addresses_routes_rules", |sb| Ok(veth_addresses_routes_rules(sb)?))
        .case("tools::sysctl_is_per_namespace", |sb| Ok(sysctl_is_per_namespace(sb)?))
        .case("tools::failing_restore_reports_stderr", |sb| Ok(failing_restore(sb)?))
        .case("tools::processes_die_with_their_namespace", |sb| Ok(processes_die(sb)?))
        .case("readers::inpod_rules_redirect_outbound", |sb| Ok(inpod_redirect(sb)?))
        .case("nfqueue::a_delay_line_holds_each_packet_add", |sb| Ok(nfqueue_delay(sb)?))
        .run()
}

fn namespaces_are_private(sb: &Sandbox) -> anyhow::Result<()> {
    let now = NamespaceIds::current()?;
    let origin = sb.origin();
    ensure!(now.net != origin.net, "still in the original network namespace");
    ensure!(now.mnt != origin.mnt, "still in the original mount namespace");
    if sb.mode() != SandboxMode::Root {
        ensure!(now.user != origin.user, "still in the original user namespace");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        mounts.lines().any(|l| l.split(' ').nth(4) == Some("/run") && l.contains(" - tmpfs ")),
        "no private tmpfs on /run:\n{mounts}"
    );
    ensure!(sb.netns_dir().is_dir(), "{} missing", sb.netns_dir().display());
    Ok(())
}

fn refuses_threads() -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || rx.recv());
    let result = Sandbox::enter();
    drop(tx);
    let _ = other.join();
    match result {
        Err(SandboxError::NotSingleThreaded { threads }) if threads >= 2 => Ok(()),
        other => bail!("entering the sandbox from a threaded process gave {other:?}"),
    }
}

fn create_path_and_drop(sb: &Sandbox) -> anyhow::Result<()> {
    let a = Netns::create(sb, "prim-a")?;
    let b = Netns::create(sb, "prim-b")?;
    let (ia, ib) = (ns_inode(a.path())?, ns_inode(b.path())?);
    ensure!(ia != ib, "two namespaces share inode {ia}");
    ensure!(ia != NamespaceIds::current()?.net, "namespace a is the sandbox's own");
    let seen = a.run_blocking(|| NamespaceIds::current().map(|ids| ids.net))??;
    ensure!(seen == ia, "worker thread is in {seen}, path points to {ia}");
    // The path is usable as a token: a fresh thread can setns into it.
    let path = b.path().to_path_buf();
    let entered = std::thread::spawn(move || -> anyhow::Result<u64> {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(NamespaceIds::current()?.net)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("setns thread panicked"))??;
    ensure!(entered == ib, "setns into {} landed in {entered}", b.path().display());
    match Netns::create(sb, "prim-a") {
        Err(NetnsError::Exists { .. }) => {}
        other => bail!("creating prim-a twice: {other:?}"),
    }
    match Netns::create(sb, "../escape") {
        Err(NetnsError::InvalidName { .. }) => {}
        other => bail!("a name with a slash: {other:?}"),
    }
    let a_path = a.path().to_path_buf();
    drop(a);
    ensure!(!a_path.exists(), "{} still exists after drop", a_path.display());
    ensure!(b.run_blocking(|| 7)? == 7, "namespace b stopped working after a was dropped");
    Ok(())
}

fn job_panic_is_an_error(sb: &Sandbox) -> anyhow::Result<()> {
    let ns = Netns::create(sb, "prim-panic")?;
    // The panic is deliberate: keep its message and backtrace out of the test log.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = ns.run(|| async { panic!("boom in a job") });
    std::panic::set_hook(hook);
    match result {
        Err(NetnsError::JobPanicked { message, .. }) if message.contains("boom") => {}
        other => bail!("a panicking job returned {other:?}"),
    }
    ensure!(ns.run(|| async { 1 + 1 })? == 2, "namespace unusable after a job panicked");
    Ok(())
}

/// Builds pod <-> peer over a veth pair, all through rtnetlink.
fn pod_and_peer(sb: &Sandbox, tag: &str) -> anyhow::Result<(Netns, Netns)> {
    let pod = Netns::create(sb, &format!("{tag}-pod"))?;
    let peer = Netns::create(sb, &format!("{tag}-peer"))?;
    let peer_path = peer.path().to_path_buf();
    pod.rtnl(move |rt| async move {
        rt.add_veth("eth0", "eth0", &peer_path).await?;
        rt.add_address("eth0", POD, 24).await?;
        rt.set_up("lo", true).await?;
        rt.set_up("eth0", true).await?;
        rt.add_route(&Route::via(Ipv4Addr::UNSPECIFIED, 0, PEER)).await
    })
    .context("pod side")?;
    peer.rtnl(|rt| async move {
        rt.add_address("eth0", PEER, 24).await?;
        rt.set_up("lo", true).await?;
        rt.set_up("eth0", true).await?;
        rt.add_route(&Route::via(Ipv4Addr::new(10, 0, 9, 0), 24, POD)).await
    })
    .context("peer side")?;
    for ns in [&pod, &peer] {
        ns.rtnl(|rt| async move { rt.wait_running("eth0", Duration::from_secs(5)).await })?;
        for key in ["all", "default", "lo", "eth0"] {
            ns.sysctl_write(&format!("net/ipv4/conf/{key}/rp_filter"), "0")?;
        }
    }
    Ok((pod, peer))
}

/// Accepts one connection on `listener`, echoes until EOF, returns (local, peer, original dst).
async fn echo_once(
    listener: tokio::net::TcpListener,
) -> std::io::Result<(SocketAddrV4, SocketAddrV4, std::io::Result<SocketAddrV4>)> {
    let (mut stream, peer) = listener.accept().await?;
    let local = socket::v4(stream.local_addr()?)?;
    let orig = socket::original_dst(&stream);
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    stream.write_all(&buf).await?;
    Ok((local, socket::v4(peer)?, orig))
}

async fn send_and_echo(
    dst: SocketAddrV4,
    opts: ConnectOptions,
    payload: &[u8],
) -> anyhow::Result<SocketAddrV4> {
    let (mut stream, local) = socket::connect(dst, &opts).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await?;
    ensure!(back == payload, "echo differs: sent {} bytes, got {}", payload.len(), back.len());
    Ok(local)
}

fn veth_addresses_routes_rules(sb: &Sandbox) -> anyhow::Result<()> {
    let (pod, peer) = pod_and_peer(sb, "prim-link")?;
    let links = pod.rtnl(|rt| async move { rt.links().await })?;
    let names: Vec<(&str, bool)> = links.iter().map(|l| (l.name.as_str(), l.up)).collect();
    ensure!(names == [("lo", true), ("eth0", true)], "pod links: {names:?}");
    match pod.rtnl(|rt| async move { rt.set_up("nope0", true).await }) {
        Err(LinkError::NoSuchLink(name)) if name == "nope0" => {}
        other => bail!("setting a missing link up: {other:?}"),
    }

    // Plain TCP across the veth pair, peer -> pod.
    let listener = pod.run_blocking(|| {
        socket::listen(SocketAddrV4::new(POD, 8080), ListenOptions::default())
    })??;
    let accepted = pod.spawn(move || echo_once(listener));
    let local = peer.run(|| {
        send_and_echo(SocketAddrV4::new(POD, 8080), ConnectOptions::default(), b"hello")
    })??;
    let (server_local, server_peer, _) = accepted.wait()??;
    ensure!(
        server_local == SocketAddrV4::new(POD, 8080) && server_peer == local,
        "{server_local} {server_peer} {local}"
    );

    // A non-local destination reaches a transparent listener only through the fwmark rule and the
    // local route of table 100: first without them (the pod does not forward: time out) ...
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 9), 15008);
    let opts = ConnectOptions { timeout: Duration::from_millis(300), ..ConnectOptions::default() };
    let transparent = ListenOptions { transparent: true, ..ListenOptions::default() };
    let listener = pod.run_blocking(move || {
        socket::listen(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15008), transparent)
    })??;
    pod.iptables_restore(
        "*mangle\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.0.9.9/32 -j MARK --set-xmark 0x111/0xfff\nCOMMIT\n",
        false,
    )?;
    let o = opts.clone();
    match peer.run(move || async move { socket::connect(vip, &o).await.map(drop) })? {
        Err(f) if f.kind == ConnectErrorKind::TimedOut => {}
        other => bail!("without policy routing the non-local connect gave {other:?}"),
    }
    // ... then with them: delivered locally, accepted with the non-local address as local address.
    pod.rtnl(|rt| async move { rt.add_policy_routing(&PolicyRouting::default()).await })?;
    let accepted = pod.spawn(move || echo_once(listener));
    peer.run(move || send_and_echo(vip, opts, b"through table 100"))??;
    let (server_local, _, _) = accepted.wait()??;
    ensure!(server_local == vip, "transparent listener saw local address {server_local}");
    Ok(())
}

fn sysctl_is_per_namespace(sb: &Sandbox) -> anyhow::Result<()> {
    let a = Netns::create(sb, "prim-sysctl-a")?;
    let b = Netns::create(sb, "prim-sysctl-b")?;
    a.sysctl_write("net.ipv4.conf.all.rp_filter", "2")?;
    b.sysctl_write("net.ipv4.conf.all.rp_filter", "0")?;
    ensure!(a.sysctl_read("net.ipv4.conf.all.rp_filter")? == "2");
    ensure!(b.sysctl_read("net.ipv4.conf.all.rp_filter")? == "0");
    match a.sysctl_write("net.ipv4.no_such_key", "1") {
        Err(ToolError::Sysctl { key, .. }) if key == "net.ipv4.no_such_key" => Ok(()),
        other => bail!("writing a missing sysctl: {other:?}"),
    }
}

fn failing_restore(sb: &Sandbox) -> anyhow::Result<()> {
    let ns = Netns::create(sb, "prim-fail")?;
    match ns.iptables_restore("*nat\n:OUTPUT ACCEPT [0:0]\n-A NOPE -j ACCEPT\nCOMMIT\n", false) {
        Err(ToolError::Failed { command, stderr, .. }) => {
            ensure!(command == "iptables-restore", "{command}");
            ensure!(!stderr.is_empty(), "no stderr captured");
            Ok(())
        }
        other => bail!("a bad ruleset loaded: {other:?}"),
    }
}

fn proc_state(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("State:")).map(|s| s.trim().to_string())
}

fn gone_or_zombie(pid: u32) -> bool {
    proc_state(pid).is_none_or(|s| s.starts_with('Z'))
}

fn processes_die(sb: &Sandbox) -> anyhow::Result<()> {
    let ns = Netns::create(sb, "prim-proc")?;
    let killed = ns.start_process("sleep", &["600"])?;
    let orphaned = ns.start_process("sleep", &["601"])?;
    let (pid1, pid2) = (killed.pid(), orphaned.pid());
    ensure!(!gone_or_zombie(pid1) && !gone_or_zombie(pid2), "sleep did not start");
    ensure!(
        ns_inode(format!("/proc/{pid1}/ns/net"))? == ns_inode(ns.path())?,
        "the process is not in the namespace"
    );
    let status = killed.kill()?;
    ensure!(!status.success(), "killed sleep exited with {status}");
    ensure!(gone_or_zombie(pid1), "pid {pid1} still running after kill");
    // Dropping the namespace while its process runs: the process dies with the worker thread.
    std::mem::forget(orphaned); // not even the handle's kill: only the namespace's end
    drop(ns);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone_or_zombie(pid2) {
        ensure!(
            Instant::now() < deadline,
            "pid {pid2} outlived its namespace: {:?}",
            proc_state(pid2)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn inpod_redirect(sb: &Sandbox) -> anyhow::Result<()> {
    let (pod, _peer) = pod_and_peer(sb, "prim-inpod")?;
    pod.iptables_restore(&InpodRules::default().restore_text(), true)?;
    pod.rtnl(|rt| async move { rt.add_policy_routing(&PolicyRouting::default()).await })?;
    let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 15001);
    let transparent = ListenOptions { transparent: true, ..ListenOptions::default() };
    let listener = pod.run_blocking(move || socket::listen(listen, transparent))??;
    let accepted = pod.spawn(move || echo_once(listener));
    // An app connects to the peer on a port nobody serves: captured, it reaches 15001.
    let target = SocketAddrV4::new(PEER, 80);
    let local =
        pod.run(move || send_and_echo(target, ConnectOptions::default(), b"captured"))??;
    let (server_local, server_peer, orig) = accepted.wait()??;
    ensure!(orig? == target, "SO_ORIGINAL_DST is not the app's destination");
    ensure!(server_local == SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15001), "{server_local}");
    ensure!(server_peer == local, "server saw {server_peer}, client was {local}");
    // The proxy's own (marked) socket is not captured: the peer refuses it.
    let marked = ConnectOptions { mark: Some(0x539), ..ConnectOptions::default() };
    match pod.run(move || async move { socket::connect(target, &marked).await.map(drop) })? {
        Err(f) if f.kind == ConnectErrorKind::Refused => {}
        other => bail!("a marked connect gave {other:?}"),
    }

    // Readers: the REDIRECT rule counted exactly the first packet (a 60-byte SYN) of the one
    // captured connection, and conntrack shows the NAT.
    let (rules, raw) = pod.iptables_save()?;
    let redirect = RuleRef { table: Table::Nat, chain: "ISTIO_OUTPUT".into(), index: 6 };
    let rule = rules.rules().into_iter().find(|(k, _)| *k == redirect).map(|(_, r)| r.clone());
    let rule = rule.with_context(|| format!("no rule {redirect} in:\n{raw}"))?;
    ensure!(rule.spec.ends_with("-j REDIRECT --to-ports 15001"), "{redirect} is {}", rule.text());
    ensure!(rule.counters == Counters { packets: 1, bytes: 60 }, "{redirect}: {:?}", rule.counters);
    let entries = pod.conntrack_list()?;
    let entry = entries
        .iter()
        .find(|e| {
            e.orig.dst == PEER && e.orig.dport == Some(80) && e.orig.sport == Some(local.port())
        })
        .with_context(|| format!("no conntrack entry for the captured connection: {entries:#?}"))?;
    ensure!(
        entry.reply.src == Ipv4Addr::LOCALHOST && entry.reply.sport == Some(15001),
        "{entry:?}"
    );
    ensure!(entry.state.as_deref() == Some("TIME_WAIT") && entry.assured, "{entry:?}");
    Ok(())
}

/// How long a TCP handshake from `ns` to `dst` takes, measured; `None` if it does not complete
/// within `limit`.
fn handshake(ns: &Netns, dst: SocketAddrV4, limit: Duration) -> anyhow::Result<Option<Duration>> {
    ns.run(move || async move {
        let started = Instant::now();
        let connect = tokio::net::TcpStream::connect(dst);
        match tokio::time::timeout(limit, connect).await {
            Ok(Ok(_stream)) => Ok(Some(started.elapsed())),
            Ok(Err(e)) => Err(anyhow::anyhow!("connect to {dst}: {e}")),
            Err(_) => Ok(None),
        }
    })?
}

/// Each side's output queued and released `add` later: a handshake (SYN one way, SYN-ACK the
/// other) takes at least 2 × `add` of real time, measured, yet well under the 1 s SYN
/// retransmission (the packets are delayed, not dropped and resent). Without the rules it is
/// fast again; with a rule but no delay line bound the queue drops (no bypass).
fn nfqueue_delay(sb: &Sandbox) -> anyhow::Result<()> {
    const ADD: Duration = Duration::from_millis(100);
    let (pod, peer) = pod_and_peer(sb, "prim-nfq")?;
    let dst = SocketAddrV4::new(PEER, 7000);
    // A listener completes handshakes without accepting; it stays in the peer's namespace.
    let _listener = peer.run_blocking(move || std::net::TcpListener::bind(dst))??;
    let queued = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                  -A OUTPUT -o eth0 -p tcp -j NFQUEUE --queue-num 5\nCOMMIT\n";
    let clear =
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";

    let before = handshake(&pod, dst, Duration::from_secs(2))?.context("no handshake")?;
    ensure!(before < ADD, "without a delay the handshake took {before:?}");

    let lines = [Delay::start(&pod, 5, ADD)?, Delay::start(&peer, 5, ADD)?];
    for ns in [&pod, &peer] {
        ns.iptables_restore(queued, false)?;
    }
    let delayed = handshake(&pod, dst, Duration::from_secs(3))?.context("no delayed handshake")?;
    ensure!(
        delayed >= 2 * ADD && delayed < Duration::from_millis(900),
        "with {ADD:?} each way the handshake took {delayed:?}"
    );

    for ns in [&pod, &peer] {
        ns.iptables_restore(clear, false)?;
    }
    for line in lines {
        let stats = line.stop()?;
        ensure!(stats.delayed >= 1, "a delay line delayed nothing: {stats:?}");
    }
    let after = handshake(&pod, dst, Duration::from_secs(2))?.context("no handshake after")?;
    ensure!(after < ADD, "after the lines stopped the handshake took {after:?}");

    // A rule with nobody bound: the kernel drops, it does not pass packets undelayed.
    pod.iptables_restore(queued, false)?;
    let unbound = handshake(&pod, dst, Duration::from_millis(500))?;
    ensure!(unbound.is_none(), "an unbound queue let a handshake through in {unbound:?}");
    Ok(())
}
