//! An in-process [`Network`]: listeners in per-namespace address tables, streams as tokio duplex
//! pipes. No packets, no kernel model — it exists so the proxy can run with no OS networking
//! at all (deterministic tests on a paused runtime, examples, non-Linux machines) and as a
//! small reference for implementing the seam. The simulator's socket layer is the real model.
//!
//! What it keeps of TCP: addresses (ephemeral ports are numbered from 40000 in connect order),
//! connection refused when nobody listens, half-close (shutdown → EOF at the peer), and reset
//! ([`Network::reset`] → the peer's next read or write fails with `ConnectionReset`).
//! Routing is by address ownership ([`MemoryNetwork::add_address`]); redirection is explicit: [`MemoryNetwork::redirect`] records the original destination a
//! connection from a given source address will report on accept.
//!
//! UDP: a datagram goes to the socket bound to its destination (or the wildcard) in the
//! namespace that owns the address; one nobody takes is dropped (no ICMP error), and a socket
//! connected to a peer takes datagrams from that peer only.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use super::{Accepted, ConnectOptions, Datagram, ListenOptions, Listener, Network, UdpOptions};

/// Pipe capacity per direction.
const PIPE_BYTES: usize = 64 * 1024;

/// A bound UDP socket: where its datagrams go, and the peer it is connected to.
type UdpEntry = (mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>, Option<SocketAddr>);

#[derive(Debug, Default)]
struct State {
    listeners: BTreeMap<(String, SocketAddr), mpsc::UnboundedSender<Accepted<MemoryStream>>>,
    redirects: BTreeMap<(String, SocketAddr), SocketAddr>,
    /// Which namespace owns an address (where connections to it from elsewhere arrive).
    addresses: BTreeMap<IpAddr, String>,
    /// Bound UDP sockets: where their datagrams go, and the peer a connected one takes.
    udp: BTreeMap<(String, SocketAddr), UdpEntry>,
    next_port: u16,
}

/// The whole in-process network. Namespaces are names (`""` is the default one).
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        MemoryNetwork::default()
    }

    /// Give `netns` the address `ip`: connections to it from any namespace arrive there
    /// (loopback addresses always stay in the caller's namespace).
    pub fn add_address(&self, netns: &str, ip: IpAddr) {
        self.lock().addresses.insert(ip, netns.to_string());
    }

    /// The next connection from `source` in `netns` reports `original_dst` when accepted —
    /// what a REDIRECT rule and SO_ORIGINAL_DST give in a real pod.
    pub fn redirect(&self, netns: &str, source: SocketAddr, original_dst: SocketAddr) {
        self.lock().redirects.insert((netns.to_string(), source), original_dst);
    }

    /// An app's connection: from `source_ip` (a fresh port) in `netns` to `via` (a proxy
    /// listener), reporting `original_dst` on accept.
    pub async fn app_connect(
        &self,
        netns: &str,
        source_ip: IpAddr,
        original_dst: SocketAddr,
        via: SocketAddr,
    ) -> io::Result<MemoryStream> {
        let source = SocketAddr::new(source_ip, self.next_port());
        self.redirect(netns, source, original_dst);
        self.connect(&netns.to_string(), via, &ConnectOptions { mark: None, source: Some(source) })
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_port(&self) -> u16 {
        Self::port_in(&mut self.lock())
    }

    fn port_in(s: &mut State) -> u16 {
        s.next_port =
            if s.next_port < 40000 { 40000 } else { s.next_port.wrapping_add(1).max(40000) };
        s.next_port
    }
}

impl Network for MemoryNetwork {
    type Netns = String;
    type Listener = MemoryListener;
    type Stream = MemoryStream;
    type Datagram = MemoryDatagram;

    async fn listen(
        &self,
        netns: &String,
        addr: SocketAddr,
        _: &ListenOptions,
    ) -> io::Result<MemoryListener> {
        let mut s = self.lock();
        let key = (netns.clone(), addr);
        if s.listeners.get(&key).is_some_and(|tx| !tx.is_closed()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} in use in netns {netns:?}"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.listeners.insert(key, tx);
        Ok(MemoryListener { rx, local: addr })
    }

    async fn connect(
        &self,
        netns: &String,
        dst: SocketAddr,
        opts: &ConnectOptions,
    ) -> io::Result<MemoryStream> {
        let source = match opts.source {
            Some(s) if s.port() != 0 => s,
            Some(s) => SocketAddr::new(s.ip(), self.next_port()),
            None => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), self.next_port()),
        };
        let mut s = self.lock();
        let owner = match s.addresses.get(&dst.ip()) {
            Some(ns) if !dst.ip().is_loopback() => ns.clone(),
            _ => netns.clone(),
        };
        let wildcard = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), dst.port());
        let tx = [dst, wildcard]
            .iter()
            .find_map(|a| {
                s.listeners.get(&(owner.clone(), *a)).filter(|tx| !tx.is_closed()).cloned()
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens on {dst}"),
                )
            })?;
        let original_dst = s.redirects.remove(&(netns.clone(), source));
        drop(s);
        let (a, b) = tokio::io::duplex(PIPE_BYTES);
        let (a_reset, b_reset) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let client =
            MemoryStream { io: a, local: source, mine: a_reset.clone(), peers: b_reset.clone() };
        let server = MemoryStream { io: b, local: dst, mine: b_reset, peers: a_reset };
        tx.send(Accepted { stream: server, peer: source, local: dst, original_dst }).map_err(
            |_| {
                io::Error::new(io::ErrorKind::ConnectionRefused, format!("{dst} stopped listening"))
            },
        )?;
        Ok(client)
    }

    fn reset(&self, stream: MemoryStream) {
        stream.mine.store(true, Ordering::SeqCst);
    }

    fn local_addr(&self, stream: &MemoryStream) -> io::Result<SocketAddr> {
        Ok(stream.local)
    }

    async fn bind_udp(
        &self,
        netns: &String,
        addr: SocketAddr,
        opts: &UdpOptions,
    ) -> io::Result<MemoryDatagram> {
        let mut s = self.lock();
        let addr = match addr.port() {
            0 => SocketAddr::new(addr.ip(), Self::port_in(&mut s)),
            _ => addr,
        };
        let key = (netns.clone(), addr);
        if s.udp.get(&key).is_some_and(|(tx, _)| !tx.is_closed()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("udp {addr} in use in netns {netns:?}"),
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        s.udp.insert(key, (tx, opts.peer));
        Ok(MemoryDatagram {
            network: self.clone(),
            netns: netns.clone(),
            local: addr,
            rx: tokio::sync::Mutex::new(rx),
        })
    }
}

/// A bound UDP socket.
#[derive(Debug)]
pub struct MemoryDatagram {
    network: MemoryNetwork,
    netns: String,
    local: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>>,
}

impl Datagram for MemoryDatagram {
    async fn send_to(&self, buf: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let s = self.network.lock();
        let owner = match s.addresses.get(&dst.ip()) {
            Some(ns) if !dst.ip().is_loopback() => ns.clone(),
            _ => self.netns.clone(),
        };
        let from = if self.local.ip().is_unspecified() {
            // The source a wildcard socket gets: the address its namespace owns, if any.
            let own = s.addresses.iter().find(|(_, ns)| **ns == self.netns).map(|(ip, _)| *ip);
            SocketAddr::new(own.unwrap_or(IpAddr::from([127, 0, 0, 1])), self.local.port())
        } else {
            self.local
        };
        let wildcard = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), dst.port());
        let taker = [dst, wildcard].iter().find_map(|a| {
            s.udp
                .get(&(owner.clone(), *a))
                .filter(|(tx, peer)| !tx.is_closed() && peer.is_none_or(|p| p == from))
        });
        if let Some((tx, _)) = taker {
            let _ = tx.send((from, buf.to_vec()));
        }
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (from, data) =
            self.rx.lock().await.recv().await.ok_or_else(|| io::Error::other("socket closed"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A listening address.
#[derive(Debug)]
pub struct MemoryListener {
    rx: mpsc::UnboundedReceiver<Accepted<MemoryStream>>,
    local: SocketAddr,
}

impl Listener for MemoryListener {
    type Stream = MemoryStream;

    async fn accept(&mut self) -> io::Result<Accepted<MemoryStream>> {
        self.rx.recv().await.ok_or_else(|| io::Error::other("listener closed"))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// One end of an in-process connection.
#[derive(Debug)]
pub struct MemoryStream {
    io: DuplexStream,
    /// This end's address.
    local: SocketAddr,
    /// Set when this end was reset.
    mine: Arc<AtomicBool>,
    /// Set when the other end was reset.
    peers: Arc<AtomicBool>,
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer")
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.peers.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            // EOF after a reset is the reset.
            Poll::Ready(Ok(()))
                if buf.filled().len() == before && self.peers.load(Ordering::SeqCst) =>
            {
                Poll::Ready(Err(reset_error()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.peers.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
