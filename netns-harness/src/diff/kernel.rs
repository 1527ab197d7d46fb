//! The kernel executor: runs a [`Case`] in fresh namespaces of the [`Sandbox`] and returns what the
//! kernel did as an [`Observation`].
//!
//! Sequence (the model side must follow the same one):
//!
//! 1. Build the topology (rtnetlink, sysctls) in two fresh namespaces; load the ruleset into the
//!    pod with `iptables-restore` (no `--noflush`). A refusal is a generator bug.
//! 2. Start every listener; start every flow at once. A flow connects (150 ms limit), sends
//!    `flow <id> <len>\n` + payload, reads the echo back (500 ms limit).
//! 3. When every flow has finished that phase, with the connections still open: **conntrack
//!    snapshot "open"** of both namespaces (established connections are `ESTABLISHED`).
//! 4. Every flow closes in its stated order; when both ends are done: **conntrack snapshot
//!    "closed"** (`TIME_WAIT`, `CLOSE`, or what failed connects left, e.g. `SYN_SENT`) and
//!    **`iptables-save -c`** of the pod.
//! 5. Fixed point: the canonical listing is loaded again (no `--noflush`) and listed again; the
//!    two listings must be equal (checked by [`super::invariants`]).
//!
//! Time limits stay below the kernel's first SYN retransmission (1 s) so no retransmitted SYN
//! reaches a rule; a flow whose echo or close hit its limit, or whose pod conntrack entry is still
//! closing (`FIN_WAIT`, `CLOSE_WAIT`, `LAST_ACK`) after a short grace period, is marked
//! `timing_sensitive`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::case::{
    Case, CloseOrder, CloseResult, ConnectResult, EchoResult, FlowSpec, NodeSpec, Observation, Side,
};
use super::observe::{ClientRecord, ServerRecord, is_closing, observe};
use crate::conntrack::Entry;
use crate::link::{FwmarkRule, Route};
use crate::netns::Netns;
use crate::sandbox::Sandbox;
use crate::socket::{self, ConnectOptions, ListenOptions};

/// Connect time limit (below the 1 s initial SYN retransmission timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(150);
/// Echo time limit.
pub const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
/// Close time limit, per side.
pub const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

/// The executor could not run the case.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `iptables-restore` refused the generated ruleset: a bug in the generator.
    #[error("iptables-restore refused the generated ruleset (a generator bug): {0}")]
    RulesetRejected(String),
    /// Any other step.
    #[error("{step}: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The error.
        detail: String,
    },
}

fn step<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> ExecError {
    move |e| ExecError::Step { step, detail: e.to_string() }
}

/// What the kernel executor returns.
#[derive(Debug, Clone)]
pub struct KernelRun {
    /// The observation (what a model must reproduce).
    pub observation: Observation,
    /// `iptables-save -c` as printed, after the flows.
    pub listing: String,
    /// The canonical listing after re-loading the canonical listing (the fixed-point check).
    pub relisted: String,
    /// Raw conntrack entries of the pod after the close (for diagnostics).
    pub raw_conntrack_closed: Vec<Entry>,
    /// Wall time of the whole case.
    pub elapsed: Duration,
}

/// State shared by a case's listeners and flows (across both namespaces' threads).
#[derive(Debug)]
struct Shared {
    closes: BTreeMap<u32, CloseOrder>,
    close_now: watch::Receiver<bool>,
    accepts: Mutex<Vec<ServerRecord>>,
    active: AtomicUsize,
}

/// Runs `case` in two fresh namespaces named `<tag>-pod` and `<tag>-peer`.
pub fn run_case(sandbox: &Sandbox, case: &Case, tag: &str) -> Result<KernelRun, ExecError> {
    let started = Instant::now();
    let pod =
        Netns::create(sandbox, &format!("{tag}-pod")).map_err(step("creating the pod netns"))?;
    let peer =
        Netns::create(sandbox, &format!("{tag}-peer")).map_err(step("creating the peer netns"))?;
    let peer_path = peer.path().to_path_buf();
    pod.rtnl(move |rt| async move { rt.add_veth("eth0", "eth0", &peer_path).await })
        .map_err(step("creating the veth pair"))?;
    let ns_of = |side: Side| if side == Side::Pod { &pod } else { &peer };
    for node in &case.topology.nodes {
        build_node(ns_of(node.side), node)?;
    }
    for ns in [&pod, &peer] {
        ns.rtnl(|rt| async move { rt.wait_running("eth0", Duration::from_secs(5)).await })
            .map_err(step("waiting for eth0"))?;
    }
    pod.iptables_restore(&case.ruleset, false).map_err(|e| {
        ExecError::RulesetRejected(quote_failing_line(&e.to_string(), &case.ruleset))
    })?;

    let (close_tx, close_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        closes: case.flows.iter().map(|f| (f.id, f.close)).collect(),
        close_now: close_rx,
        accepts: Mutex::new(Vec::new()),
        active: AtomicUsize::new(0),
    });
    for spec in &case.topology.listeners {
        let (addr, transparent) = (spec.addr, spec.transparent);
        let opts = ListenOptions { transparent, ..ListenOptions::default() };
        let listener = ns_of(spec.side)
            .run_blocking(move || socket::listen(addr, opts))
            .map_err(step("starting a listener"))?
            .map_err(step("binding a listener"))?;
        let (id, shared) = (spec.id.clone(), shared.clone());
        drop(ns_of(spec.side).spawn(move || serve(listener, id, shared)));
    }

    let mut phase1 = Vec::new();
    let mut finals = Vec::new();
    for flow in &case.flows {
        let (tx, rx) = oneshot::channel();
        let (flow, shared) = (flow.clone(), shared.clone());
        finals.push(ns_of(flow.from).spawn(move || run_flow(flow, shared, tx)));
        phase1.push(rx);
    }
    for rx in phase1 {
        // An error means the flow task ended early; its final handle reports why.
        let _ = rx.blocking_recv();
    }
    let open_pod = pod.conntrack_list().map_err(step("conntrack -L (open) in the pod"))?;
    let open_peer = peer.conntrack_list().map_err(step("conntrack -L (open) in the peer"))?;
    let _ = close_tx.send(true);
    let mut clients = Vec::new();
    for handle in finals {
        clients.push(handle.wait().map_err(step("running a flow"))?);
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT * 2;
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let closed_pod = settled_conntrack(&pod)?;
    let closed_peer = peer.conntrack_list().map_err(step("conntrack -L (closed) in the peer"))?;
    let (ruleset, listing) = pod.iptables_save().map_err(step("iptables-save -c in the pod"))?;

    let canonical = ruleset.canonical_text();
    pod.iptables_restore(&canonical, false).map_err(step("re-loading the canonical listing"))?;
    let (again, _) = pod.iptables_save().map_err(step("iptables-save after re-loading"))?;
    let relisted = again.canonical_text();

    let accepts = shared.accepts.lock().map_err(step("reading the accept records"))?.clone();
    let observation = observe(
        case,
        &clients,
        accepts,
        &ruleset,
        [(Side::Pod, open_pod), (Side::Peer, open_peer)],
        [(Side::Pod, closed_pod.clone()), (Side::Peer, closed_peer)],
    );
    Ok(KernelRun {
        observation,
        listing,
        relisted,
        raw_conntrack_closed: closed_pod,
        elapsed: started.elapsed(),
    })
}

/// Appends the input line `iptables-restore` complained about ("line N" / "at line: N").
fn quote_failing_line(error: &str, input: &str) -> String {
    let number = ["line ", "at line: "].iter().find_map(|marker| {
        let at = error.find(marker)? + marker.len();
        let digits: String = error[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().ok()
    });
    match number.and_then(|n| input.lines().nth(n.checked_sub(1)?)) {
        Some(line) => format!("{error}\n  the line: {line}"),
        None => error.to_string(),
    }
}

fn build_node(ns: &Netns, node: &NodeSpec) -> Result<(), ExecError> {
    let node = node.clone();
    ns.rtnl(move |rt| async move {
        for a in &node.addresses {
            rt.add_address(&a.dev, a.addr, a.prefix).await?;
        }
        rt.set_up("lo", true).await?;
        rt.set_up("eth0", true).await?;
        for r in &node.routes {
            let route = Route {
                dst: r.dst,
                prefix: r.prefix,
                gateway: r.via,
                dev: r.dev.clone(),
                table: r.table,
                local: r.local,
            };
            rt.add_route(&route).await?;
        }
        for r in &node.rules {
            let rule = FwmarkRule { mark: r.mark, mask: r.mask, pref: r.pref, table: r.table };
            rt.add_fwmark_rule(rule).await?;
        }
        Ok(())
    })
    .map_err(step("building the topology"))?;
    for (key, value) in &node.sysctls {
        ns.sysctl_write(key, value).map_err(step("writing a sysctl"))?;
    }
    Ok(())
}

/// The pod's conntrack after the close. A final ACK may still be on its way through the stack when
/// the last socket is dropped; entries in a transitional state get a short grace period.
fn settled_conntrack(pod: &Netns) -> Result<Vec<Entry>, ExecError> {
    let mut entries = pod.conntrack_list().map_err(step("conntrack -L (closed) in the pod"))?;
    for _ in 0..6 {
        if !entries.iter().any(is_closing) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        entries = pod.conntrack_list().map_err(step("conntrack -L (closed) in the pod"))?;
    }
    Ok(entries)
}

/// Reads until EOF.
async fn drain(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

fn errno_name(err: &std::io::Error) -> String {
    err.raw_os_error()
        .map_or_else(|| err.kind().to_string(), |n| format!("{:?}", Errno::from_raw(n)))
}

/// Accept loop of one listener.
async fn serve(listener: TcpListener, id: String, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        shared.active.fetch_add(1, Ordering::SeqCst);
        let (id, shared) = (id.clone(), shared.clone());
        tokio::task::spawn_local(async move {
            let _ = handle_connection(stream, peer, id, &shared).await;
            shared.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    listener: String,
    shared: &Shared,
) -> std::io::Result<()> {
    // Record the accept before anything can fail: a connection the kernel already reset still
    // comes out of accept(), but getpeername() on it fails (ENOTCONN).
    let local = socket::v4(stream.local_addr()?)?;
    let peer = socket::v4(peer)?;
    let orig = socket::original_dst(&stream).map_err(|e| errno_name(&e));
    let index = {
        let mut accepts = shared.accepts.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        accepts.push(ServerRecord { listener, local, peer, orig, flow: None });
        accepts.len() - 1
    };
    // The header: `flow <id> <len>\n`; whatever came with it is payload and is echoed too.
    let mut buf = Vec::new();
    // Longer than the client's echo limit, so a stalled flow is the client's verdict, not ours.
    let header_end = tokio::time::timeout(ECHO_TIMEOUT * 2, async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.iter().position(|b| *b == b'\n') {
                return Ok::<_, std::io::Error>(Some(end + 1));
            }
            if buf.len() > 64 {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    let Some(header_end) = header_end else { return Ok(()) };
    let header = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut words = header.split_whitespace().skip(1).map(|w| w.parse::<u32>().ok());
    let (Some(Some(flow)), Some(Some(len))) = (words.next(), words.next()) else { return Ok(()) };
    if let Ok(mut accepts) = shared.accepts.lock() {
        accepts[index].flow = Some(flow);
    }
    stream.write_all(&buf).await?;
    let mut remaining = (len as usize).saturating_sub(buf.len() - header_end);
    let echoed = tokio::time::timeout(ECHO_TIMEOUT * 2, async {
        let mut chunk = [0u8; 4096];
        while remaining > 0 {
            let n = stream.read(&mut chunk[..remaining.min(4096)]).await?;
            if n == 0 {
                break;
            }
            stream.write_all(&chunk[..n]).await?;
            remaining -= n;
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(echoed, Ok(Ok(()))) {
        return Ok(());
    }
    let order = shared.closes.get(&flow).copied().unwrap_or(CloseOrder::ClientFirst);
    // Nothing closes before the "open" snapshot; the time limit starts after it.
    let mut close_now = shared.close_now.clone();
    let _ = close_now.wait_for(|now| *now).await;
    if order == CloseOrder::ServerFirst {
        stream.shutdown().await?;
    }
    // Wait for the client's FIN (or RST), then close our side.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
    if order == CloseOrder::ClientFirst {
        let _ = stream.shutdown().await;
    }
    Ok(())
}

/// One flow's client.
async fn run_flow(
    flow: FlowSpec,
    shared: Arc<Shared>,
    phase1: oneshot::Sender<()>,
) -> ClientRecord {
    let opts = ConnectOptions {
        mark: flow.mark,
        bind: flow.src_port.map(|p| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p)),
        transparent: false,
        timeout: CONNECT_TIMEOUT,
    };
    let (mut stream, local) = match socket::connect(flow.dst, &opts).await {
        Ok(connected) => connected,
        Err(failure) => {
            let _ = phase1.send(());
            return ClientRecord {
                local: None,
                local_port: failure.local_port,
                connect: ConnectResult::Failed(failure.kind),
                echo: None,
                close: None,
                stalled: false,
            };
        }
    };
    let sent = flow.bytes();
    let mut back = Vec::with_capacity(sent.len());
    let echo = tokio::time::timeout(ECHO_TIMEOUT, async {
        stream.write_all(&sent).await?;
        let mut chunk = [0u8; 4096];
        while back.len() < sent.len() {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            back.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let timed_out = echo.is_err();
    let error = match &echo {
        Ok(Err(e)) => Some(errno_name(e)),
        _ => None,
    };
    let echo = if back == sent {
        EchoResult::Intact { bytes: sent.len() as u32 }
    } else if sent.starts_with(&back) {
        EchoResult::Short { got: back.len() as u32, sent: sent.len() as u32, timed_out, error }
    } else {
        EchoResult::Corrupt
    };
    let _ = phase1.send(());
    let mut close_now = shared.close_now.clone();
    let _ = close_now.wait_for(|now| *now).await;
    let close = close_client(&mut stream, flow.close).await;
    let stalled = timed_out || close == CloseResult::TimedOut;
    ClientRecord {
        local: Some(local),
        local_port: Some(local.port()),
        connect: ConnectResult::Connected,
        echo: Some(echo),
        close: Some(close),
        stalled,
    }
}

async fn close_client(stream: &mut TcpStream, order: CloseOrder) -> CloseResult {
    let result = match order {
        CloseOrder::ClientReset => {
            return match socket::set_reset_on_close(stream) {
                Ok(()) => CloseResult::Clean,
                Err(e) => CloseResult::Error(errno_name(&e)),
            };
        }
        CloseOrder::ClientFirst => {
            tokio::time::timeout(CLOSE_TIMEOUT, async {
                stream.shutdown().await?;
                drain(stream).await
            })
            .await
        }
        CloseOrder::ServerFirst => {
            tokio::time::timeout(CLOSE_TIMEOUT, async {
                drain(stream).await?;
                stream.shutdown().await
            })
            .await
        }
    };
    match result {
        Err(_) => CloseResult::TimedOut,
        Ok(Err(e)) => CloseResult::Error(errno_name(&e)),
        Ok(Ok(())) => CloseResult::Clean,
    }
}

#[cfg(test)]
mod tests {
    use super::quote_failing_line;

    #[test]
    fn refusals_quote_the_line() {
        let input = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j NOPE\nCOMMIT\n";
        let nft =
            "iptables-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid argument)";
        assert!(quote_failing_line(nft, input).ends_with("the line: -A OUTPUT -j NOPE"));
        let usage =
            "multiport needs `-p tcp'\nError occurred at line: 2\nTry `iptables-restore -h'";
        assert!(quote_failing_line(usage, input).ends_with("the line: :OUTPUT ACCEPT [0:0]"));
        assert_eq!(quote_failing_line("no number here", input), "no number here");
    }
}
