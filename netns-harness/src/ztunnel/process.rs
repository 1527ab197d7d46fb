//! One ztunnel process: its environment (what it reads at startup), started in a node's network
//! namespace from that namespace's worker thread, its stdout and stderr kept line by line.
//!
//! ztunnel has no `INPOD_ENABLED`: in-pod mode is `PROXY_MODE=shared` (its default, set here
//! anyway), with the node agent's socket at `INPOD_UDS`. `FAKE_CA=true` makes it issue its own
//! certificates from the test root compiled into it (the binary must be built with the `testing`
//! feature); `XDS_ADDRESS` set to the empty string turns xDS off (otherwise it dials
//! `localhost:15012` and never starts its in-pod proxies) and `LOCAL_XDS_PATH` gives it the
//! mesh ([`super::config`]). Its admin (15000), stats (15020) and readiness (15021) listeners
//! bind in the node namespace, one ztunnel per node; its in-pod listeners bind in each pod's
//! namespace when the agent adds the pod.
//!
//! DNS: ztunnel's DNS proxy (15053 in each pod's namespace, `ISTIO_META_DNS_CAPTURE=true`)
//! forwards names it does not know to the nameservers of `/etc/resolv.conf`, a path it reads
//! (through hickory's system config) and cannot be given. When the scenario has a DNS server
//! host, each ztunnel therefore starts in a mount namespace of its own with a resolv.conf the
//! harness wrote ([`resolv_conf`]) bind-mounted over `/etc/resolv.conf`; the harness's own
//! mounts are untouched. Without a DNS server host the proxy stays off, as before: a query
//! from a captured pod is then refused (nothing on 15053), where a proxy forwarding to the
//! machine's own resolver would make the run depend on the host.
//!
//! The child gets `PR_SET_PDEATHSIG(SIGKILL)` towards the node namespace's worker thread and
//! `kill_on_drop`, like every tool the harness starts: it dies with the run, the sandbox, or a
//! SIGKILL of the harness.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::netns::{JobHandle, Netns};

/// Everything ztunnel prints, one entry per line, across restarts of one node's ztunnel.
pub type LogLines = Arc<Mutex<Vec<String>>>;

/// The log filter: connection-level access logs (`access`, including `connection opened` at
/// debug), the DNS proxy's access log (target `dns`, debug only), the inbound HBONE request
/// (its `Forwarded` header ties a tunnelled stream to the client) and the pool's dial
/// decisions, at debug; the rest at info.
pub const LOG_FILTER: &str =
    "info,access=debug,dns=debug,ztunnel::proxy::inbound=debug,ztunnel::proxy::pool=debug";

/// ztunnel's DNS proxy, when the scenario has a DNS server host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLaunch {
    /// The DNS server host (its port is 53: resolv.conf cannot say another).
    pub nameserver: Ipv4Addr,
    /// The file [`resolv_conf`] was written to, mounted over `/etc/resolv.conf` for ztunnel.
    pub resolv_conf: PathBuf,
}

/// The resolv.conf ztunnel reads its upstream from: the nameserver alone. No `search` line:
/// ztunnel takes search domains from resolv.conf only in its dedicated (sidecar) mode; in
/// shared (in-pod) mode it derives them from the client's namespace, and its forwarder drops
/// them before asking the upstream. No `options`: hickory's defaults (5 s, two attempts) are ztunnel's in a cluster.
pub fn resolv_conf(nameserver: Ipv4Addr) -> String {
    format!(
        "# ztunnel's upstream in an ambient-testbed run: the scenario's DNS server host\n\
         nameserver {nameserver}\n"
    )
}

/// What ztunnel is told at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub node: String,
    /// `INPOD_UDS`: the node agent's socket.
    pub uds: PathBuf,
    /// `LOCAL_XDS_PATH`.
    pub config: PathBuf,
    /// `TRUST_DOMAIN` (ztunnel's own identity; workloads carry theirs in the config).
    pub trust_domain: String,
    /// `ZTUNNEL_WORKER_THREADS`, when set.
    pub worker_threads: Option<usize>,
    /// The DNS proxy is on with this upstream; off when `None`.
    pub dns: Option<DnsLaunch>,
}

impl Launch {
    /// The whole environment (ztunnel starts with nothing else: no inherited variable can
    /// change its behaviour from run to run).
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("PROXY_MODE", "shared"),
            ("FAKE_CA", "true"),
            ("XDS_ADDRESS", ""),
            ("NETWORK", ""),
            // The pods have no IPv6: bind 0.0.0.0 rather than [::].
            ("IPV6_ENABLED", "false"),
            // The in-pod rules route replies to spoofed sources back (connmark 0x111, table
            // 100), so original-source preservation must work; fail rather than fall back.
            ("ENABLE_ORIG_SRC", "true"),
            // RBAC decisions at info level, with the deciding policy.
            ("AUTHZ_POLICY_INFO_LOGGING", "true"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", LOG_FILTER),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.push(("NODE_NAME".into(), self.node.clone()));
        env.push(("INPOD_UDS".into(), self.uds.display().to_string()));
        env.push(("LOCAL_XDS_PATH".into(), self.config.display().to_string()));
        env.push(("TRUST_DOMAIN".into(), self.trust_domain.clone()));
        // The in-pod rules REDIRECT every captured query to 15053; the proxy answers there only
        // when it has the scenario's nameserver to forward to (see the module docs).
        let capture = if self.dns.is_some() { "true" } else { "false" };
        env.push(("ISTIO_META_DNS_CAPTURE".into(), capture.into()));
        if let Some(n) = self.worker_threads {
            env.push(("ZTUNNEL_WORKER_THREADS".into(), n.to_string()));
        }
        env
    }
}

/// A running ztunnel.
#[derive(Debug)]
pub struct Ztunnel {
    pid: u32,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    exit: JobHandle<io::Result<ExitStatus>>,
}

impl Ztunnel {
    /// Starts `binary` in `ns` with `launch`'s environment; every line it prints is appended
    /// to `log`.
    pub fn start(ns: &Netns, binary: &Path, launch: &Launch, log: LogLines) -> io::Result<Ztunnel> {
        let binary = binary.to_path_buf();
        let env = launch.environment();
        let resolv = launch.dns.as_ref().map(|d| d.resolv_conf.clone());
        let (pid_tx, pid_rx) = std::sync::mpsc::channel::<io::Result<u32>>();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let exit = ns.spawn(move || async move {
            let mut command = tokio::process::Command::new(&binary);
            command
                .env_clear()
                .envs(env)
                // ztunnel reads ./etc/istio/config/mesh if it exists: start it where none does.
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            crate::tools::die_with_spawning_thread(&mut command);
            if let Some(file) = &resolv
                && let Err(e) =
                    crate::tools::bind_in_own_mount_ns(&mut command, file, c"/etc/resolv.conf")
            {
                let _ = pid_tx.send(Err(e));
                return Err(io::Error::other("not started"));
            }
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let msg = format!("starting {}: {e}", binary.display());
                    let _ = pid_tx.send(Err(io::Error::new(e.kind(), msg)));
                    return Err(io::Error::other("not started"));
                }
            };
            let _ = pid_tx.send(Ok(child.id().unwrap_or(0)));
            let readers = [
                child.stdout.take().map(|s| tokio::task::spawn_local(keep_lines(s, log.clone()))),
                child.stderr.take().map(|s| tokio::task::spawn_local(keep_lines(s, log.clone()))),
            ];
            let status = tokio::select! {
                biased;
                status = child.wait() => status,
                _ = kill_rx => {
                    child.start_kill()?;
                    child.wait().await
                }
            };
            // The pipes close with the process: read what is left.
            for reader in readers.into_iter().flatten() {
                let _ = reader.await;
            }
            status
        });
        let pid = pid_rx.recv().map_err(|_| io::Error::other("the node namespace shut down"))??;
        Ok(Ztunnel { pid, kill: Some(kill_tx), exit })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it (SIGKILL: a crash) and waits until it is reaped and its output read.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        drop(self.kill.take());
        let exit = std::mem::replace(&mut self.exit, JobHandle::detached());
        exit.wait().map_err(|e| io::Error::other(e.to_string()))?
    }

    /// Whether it has exited by itself (`Some(status)`), without waiting.
    pub fn exited(&mut self) -> Option<String> {
        // The job finishes only when the process is gone.
        match self.exit.try_take() {
            Some(Ok(Ok(status))) => Some(status.to_string()),
            Some(Ok(Err(e))) => Some(e.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            None => None,
        }
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        drop(self.kill.take());
    }
}

async fn keep_lines(stream: impl tokio::io::AsyncRead + Unpin, log: LogLines) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_complete_and_says_what_ztunnel_reads() {
        let launch = Launch {
            node: "node-a".into(),
            uds: "/run/z/node-a.sock".into(),
            config: "/run/z/mesh.yaml".into(),
            trust_domain: "cluster.local".into(),
            worker_threads: None,
            dns: None,
        };
        let env = launch.environment();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PROXY_MODE"), Some("shared"), "in-pod mode; there is no INPOD_ENABLED");
        assert_eq!(get("INPOD_ENABLED"), None);
        assert_eq!(get("XDS_ADDRESS"), Some(""), "empty turns xDS off");
        assert_eq!(get("FAKE_CA"), Some("true"));
        assert_eq!(get("INPOD_UDS"), Some("/run/z/node-a.sock"));
        assert_eq!(get("LOCAL_XDS_PATH"), Some("/run/z/mesh.yaml"));
        assert_eq!(get("NODE_NAME"), Some("node-a"));
        assert_eq!(get("LOG_FORMAT"), Some("json"));
        assert_eq!(get("ZTUNNEL_WORKER_THREADS"), None);
        // Never the three variables that would add a listener in ztunnel's own namespace.
        assert!(["POD_NAME", "POD_NAMESPACE", "SERVICE_ACCOUNT"].iter().all(|k| get(k).is_none()));
        let names: std::collections::BTreeSet<_> = env.iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), env.len(), "no variable twice");
        assert_eq!(get("ISTIO_META_DNS_CAPTURE"), Some("false"), "no DNS server host: off");
        assert!(get("RUST_LOG").is_some_and(|f| f.split(',').any(|d| d == "dns=debug")));
    }

    #[test]
    fn with_a_dns_server_host_the_dns_proxy_is_on_and_reads_only_that_nameserver() {
        let launch = Launch {
            node: "node-a".into(),
            uds: "/run/z/node-a.sock".into(),
            config: "/run/z/mesh.yaml".into(),
            trust_domain: "cluster.local".into(),
            worker_threads: None,
            dns: Some(DnsLaunch {
                nameserver: Ipv4Addr::new(203, 0, 113, 53),
                resolv_conf: "/run/z/resolv.conf".into(),
            }),
        };
        let env = launch.environment();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ISTIO_META_DNS_CAPTURE"), Some("true"));
        // The upstream is the file, not a variable: ztunnel has none for it.
        assert!(env.iter().all(|(_, v)| !v.contains("203.0.113.53")));
        let text = resolv_conf(Ipv4Addr::new(203, 0, 113, 53));
        let directives: Vec<&str> =
            text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
        assert_eq!(directives, ["nameserver 203.0.113.53"]);
        assert!(text.ends_with('\n'));
    }
}
