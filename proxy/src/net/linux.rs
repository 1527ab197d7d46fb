//! Real Linux sockets for the seam.
//!
//! A pod's network namespace is named by the path of its netns file (`/var/run/netns/x`,
//! `/proc/<pid>/ns/net`). Sockets are created on a thread that has `setns`ed into that namespace
//! (one cached thread per namespace) and then handed to the caller's tokio runtime: a socket
//! stays in the namespace it was created in, whichever thread uses it later. SO_MARK,
//! IP_TRANSPARENT + IP_FREEBIND and SO_ORIGINAL_DST go through socket2; `setns` through nix.
//! Marks and transparent binds need CAP_NET_ADMIN.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{
    SocketAddr, TcpListener as StdListener, TcpStream as StdStream, UdpSocket as StdUdpSocket,
};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

use super::{Accepted, ConnectOptions, Datagram, ListenOptions, Listener, Network, UdpOptions};

/// A network namespace: `None` is the namespace the process runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetnsPath(pub Option<PathBuf>);

impl NetnsPath {
    pub fn current() -> Self {
        NetnsPath(None)
    }

    pub fn at(path: impl Into<PathBuf>) -> Self {
        NetnsPath(Some(path.into()))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in one network namespace, running socket-creation jobs.
struct NetnsThread {
    jobs: mpsc::Sender<Job>,
}

impl NetnsThread {
    fn spawn(path: &Path) -> io::Result<NetnsThread> {
        let file = std::fs::File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("opening netns {}: {e}", path.display()))
        })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let name = format!("netns:{}", path.display());
        let shown = path.display().to_string();
        std::thread::Builder::new().name(name).spawn(move || {
            let entered = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| setns_error(&shown, e));
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if ok {
                while let Ok(job) = rx.recv() {
                    job();
                }
            }
        })?;
        ready_rx.recv().map_err(|_| io::Error::other("netns thread died"))??;
        Ok(NetnsThread { jobs })
    }
}

/// Why `setns` into `path` failed, in words: only EPERM is about privilege.
fn setns_error(path: &str, e: nix::errno::Errno) -> io::Error {
    use nix::errno::Errno;
    match e {
        Errno::EINVAL => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{path} is not a network namespace (setns: EINVAL): give a netns file such as /var/run/netns/NAME or /proc/PID/ns/net"
            ),
        ),
        Errno::EPERM => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("setns into {path}: EPERM (entering a network namespace needs CAP_SYS_ADMIN)"),
        ),
        e => io::Error::other(format!("setns into {path}: {e}")),
    }
}

/// Raise this process's soft limit on open descriptors to its hard limit: a node proxy holds
/// two per proxied connection, and the usual soft limit (1,024) is far below what one node
/// carries. Returns the (soft, hard) limits in force afterwards.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok((soft, hard))
}

/// Real sockets. Cheap to clone (the netns threads are shared).
#[derive(Clone, Default)]
pub struct LinuxNetwork {
    threads: Arc<Mutex<BTreeMap<PathBuf, NetnsThread>>>,
}

impl fmt::Debug for LinuxNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.threads.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("LinuxNetwork").field("netns_threads", &n).finish()
    }
}

impl LinuxNetwork {
    pub fn new() -> Self {
        LinuxNetwork::default()
    }

    /// Run `f` inside `netns` (on its thread), or right here for the current namespace.
    async fn in_netns<T: Send + 'static>(
        &self,
        netns: &NetnsPath,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let Some(path) = &netns.0 else { return f() };
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
            if !threads.contains_key(path) {
                threads.insert(path.clone(), NetnsThread::spawn(path)?);
            }
            let job: Job = Box::new(move || {
                let _ = tx.send(f());
            });
            if threads[path].jobs.send(job).is_err() {
                threads.remove(path);
                return Err(io::Error::other(format!(
                    "netns thread for {} is gone",
                    path.display()
                )));
            }
        }
        rx.await.map_err(|_| io::Error::other("netns job dropped"))?
    }
}

fn new_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

fn set_transparent(s: &Socket, addr: &SocketAddr) -> io::Result<()> {
    let res = if addr.is_ipv4() {
        s.set_ip_transparent_v4(true).and_then(|_| s.set_freebind_v4(true))
    } else {
        s.set_ip_transparent_v6(true).and_then(|_| s.set_freebind_v6(true))
    };
    res.map_err(|e| {
        io::Error::new(e.kind(), format!("IP_TRANSPARENT/IP_FREEBIND: {e} (needs CAP_NET_ADMIN)"))
    })
}

fn set_mark(s: &Socket, mark: Option<u32>) -> io::Result<()> {
    match mark {
        Some(m) => s.set_mark(m).map_err(|e| {
            io::Error::new(e.kind(), format!("SO_MARK {m:#x}: {e} (needs CAP_NET_ADMIN)"))
        }),
        None => Ok(()),
    }
}

/// Where a redirected connection was going: SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let s = SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let addr = if local.is_ipv4() { s.original_dst_v4() } else { s.original_dst_v6() };
    addr.ok()?.as_socket()
}

/// The SO_MARK of a socket (for tests and diagnostics).
pub fn mark_of(stream: &TcpStream) -> io::Result<u32> {
    SockRef::from(stream).mark()
}

impl Network for LinuxNetwork {
    type Netns = NetnsPath;
    type Listener = LinuxListener;
    type Stream = TcpStream;
    type Datagram = UdpSocket;

    async fn listen(
        &self,
        netns: &NetnsPath,
        addr: SocketAddr,
        opts: &ListenOptions,
    ) -> io::Result<LinuxListener> {
        let opts = opts.clone();
        let std = self
            .in_netns(netns, move || {
                let s = new_socket(&addr)?;
                s.set_reuse_address(true)?;
                set_mark(&s, opts.mark)?;
                if opts.transparent {
                    set_transparent(&s, &addr)?;
                }
                s.bind(&addr.into())
                    .map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
                s.listen(1024)?;
                Ok(StdListener::from(s))
            })
            .await?;
        Ok(LinuxListener { inner: TcpListener::from_std(std)? })
    }

    async fn connect(
        &self,
        netns: &NetnsPath,
        dst: SocketAddr,
        opts: &ConnectOptions,
    ) -> io::Result<TcpStream> {
        let opts = opts.clone();
        let std = self
            .in_netns(netns, move || {
                let s = new_socket(&dst)?;
                set_mark(&s, opts.mark)?;
                if let Some(src) = opts.source {
                    set_transparent(&s, &src)?;
                    s.bind(&src.into())
                        .map_err(|e| io::Error::new(e.kind(), format!("bind source {src}: {e}")))?;
                }
                Ok(StdStream::from(s))
            })
            .await?;
        let stream = TcpSocket::from_std_stream(std).connect(dst).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn reset(&self, stream: TcpStream) {
        // Linger 0: close sends RST and discards unsent data.
        let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    }

    fn local_addr(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        stream.local_addr()
    }

    async fn bind_udp(
        &self,
        netns: &NetnsPath,
        addr: SocketAddr,
        opts: &UdpOptions,
    ) -> io::Result<UdpSocket> {
        let opts = opts.clone();
        let std = self
            .in_netns(netns, move || {
                let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
                s.set_nonblocking(true)?;
                s.set_cloexec(true)?;
                set_mark(&s, opts.mark)?;
                s.bind(&addr.into())
                    .map_err(|e| io::Error::new(e.kind(), format!("bind udp {addr}: {e}")))?;
                if let Some(peer) = opts.peer {
                    s.connect(&peer.into()).map_err(|e| {
                        io::Error::new(e.kind(), format!("connect udp {peer}: {e}"))
                    })?;
                }
                Ok(StdUdpSocket::from(s))
            })
            .await?;
        UdpSocket::from_std(std)
    }
}

impl Datagram for UdpSocket {
    async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        UdpSocket::send_to(self, buf, dst).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        UdpSocket::recv_from(self, buf).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        UdpSocket::local_addr(self)
    }
}

/// A listening socket in some namespace, driven by the tokio runtime.
#[derive(Debug)]
pub struct LinuxListener {
    inner: TcpListener,
}

impl Listener for LinuxListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<Accepted<TcpStream>> {
        let (stream, peer) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let original_dst = original_dst(&stream);
        Ok(Accepted { stream, peer, local, original_dst })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}
