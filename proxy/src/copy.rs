//! Moving bytes: TCP ⇄ h2 stream (HBONE) and TCP ⇄ TCP (passthrough, plaintext inbound).
//!
//! Both directions run in one task. Buffers are bounded: one read buffer per direction, and on
//! the h2 side the stream's flow-control window — capacity is reserved before sending
//! (`reserve_capacity`/`poll_capacity`) and released only after the bytes were written to TCP
//! (`release_capacity`), so a slow reader stalls the writer instead of growing a queue.
//!
//! Closing is propagated, never swallowed: EOF (FIN) ⇄ END_STREAM, each direction on its own
//! (half-close); an error or reset on either side ends both — the caller resets the TCP socket
//! and the h2 stream (RST_STREAM), so the far end sees a reset rather than a truncated stream.
//!
//! Idle limit: a copy in which no byte moved either way for `idle` ends with
//! [`CopyError::Idle`] (the caller resets both sides): without it a peer could hold a
//! proxied connection, and two of the proxy's descriptors, forever by sending nothing.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::future::try_join;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes moved so far, per direction (readable while the copy runs, and after it failed), and
/// when the last of them moved.
#[derive(Debug)]
pub struct Transferred {
    /// From the TCP side into the tunnel / the other socket.
    pub up: AtomicU64,
    /// Back towards the TCP side.
    pub down: AtomicU64,
    /// Origin of `last_ns` (tokio time: paused and driven in the simulator).
    origin: Instant,
    /// Nanoseconds after `origin` when bytes last moved either way.
    last_ns: AtomicU64,
}

impl Default for Transferred {
    fn default() -> Self {
        Transferred {
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            origin: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }
}

impl Transferred {
    pub fn get(&self) -> (u64, u64) {
        (self.up.load(Ordering::Relaxed), self.down.load(Ordering::Relaxed))
    }

    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        let ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// When bytes last moved (the start, before any did).
    pub fn last_activity(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    /// Completes once no byte has moved either way for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let at = self.last_activity() + idle;
            tokio::time::sleep_until(at).await;
            if self.last_activity() + idle <= Instant::now() {
                return;
            }
        }
    }
}

/// Why a copy stopped before both directions finished cleanly.
#[derive(Debug)]
pub enum CopyError {
    /// The TCP socket (`side` names it) failed or was reset.
    Tcp { side: &'static str, error: std::io::Error },
    /// The h2 stream was reset by the peer or the connection died.
    H2(h2::Error),
    /// No byte moved either way for this long.
    Idle(Duration),
}

impl CopyError {
    pub fn side(&self) -> &'static str {
        match self {
            CopyError::Tcp { side, .. } => side,
            CopyError::H2(_) => "tunnel",
            CopyError::Idle(_) => "idle",
        }
    }
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Tcp { side, error } => write!(f, "{side} socket: {error}"),
            CopyError::H2(e) => write!(f, "tunnel stream: {e}"),
            CopyError::Idle(d) => write!(f, "no byte either way for {d:?}: idle timeout"),
        }
    }
}

/// Copy between `tcp` and an h2 stream until both directions end (Ok), one fails, or nothing
/// moved for `idle`. `side` names the TCP peer in errors (`client` or `app`).
pub async fn tcp_h2<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    send: &mut SendStream<Bytes>,
    recv: &mut RecvStream,
    buf_size: usize,
    side: &'static str,
    moved: &Transferred,
    idle: Duration,
) -> Result<(), CopyError> {
    let (mut rd, mut wr) = tokio::io::split(tcp);
    let up = async {
        let mut buf = vec![0u8; buf_size];
        loop {
            let n = rd.read(&mut buf).await.map_err(|error| CopyError::Tcp { side, error })?;
            if n == 0 {
                send.send_data(Bytes::new(), true).map_err(CopyError::H2)?;
                return Ok(());
            }
            let mut chunk = Bytes::copy_from_slice(&buf[..n]);
            while !chunk.is_empty() {
                send.reserve_capacity(chunk.len());
                let cap = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(CopyError::H2(e)),
                    None => return Err(CopyError::H2(h2::Error::from(h2::Reason::CANCEL))),
                };
                if cap == 0 {
                    continue;
                }
                let part = chunk.split_to(cap.min(chunk.len()));
                let len = part.len() as u64;
                send.send_data(part, false).map_err(CopyError::H2)?;
                moved.add(&moved.up, len);
            }
        }
    };
    let down = async {
        loop {
            match recv.data().await {
                None => {
                    wr.shutdown().await.map_err(|error| CopyError::Tcp { side, error })?;
                    return Ok(());
                }
                Some(Ok(chunk)) => {
                    wr.write_all(&chunk).await.map_err(|error| CopyError::Tcp { side, error })?;
                    moved.add(&moved.down, chunk.len() as u64);
                    recv.flow_control().release_capacity(chunk.len()).map_err(CopyError::H2)?;
                }
                Some(Err(e)) => return Err(CopyError::H2(e)),
            }
        }
    };
    until_idle(try_join(up, down), moved, idle).await
}

/// Copy between two TCP sockets until both directions end (Ok), one fails, or nothing moved
/// for `idle`.
pub async fn tcp_tcp<A, B>(
    a: &mut A,
    b: &mut B,
    buf_size: usize,
    names: (&'static str, &'static str),
    moved: &Transferred,
    idle: Duration,
) -> Result<(), CopyError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let up = pump(&mut ar, &mut bw, buf_size, names, moved, &moved.up);
    let down = pump(&mut br, &mut aw, buf_size, (names.1, names.0), moved, &moved.down);
    until_idle(try_join(up, down), moved, idle).await
}

async fn until_idle<F, T>(copy: F, moved: &Transferred, idle: Duration) -> Result<(), CopyError>
where
    F: std::future::Future<Output = Result<T, CopyError>>,
{
    tokio::select! {
        biased;
        r = copy => r.map(|_| ()),
        _ = moved.idle_for(idle) => Err(CopyError::Idle(idle)),
    }
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    buf_size: usize,
    (from, to): (&'static str, &'static str),
    moved: &Transferred,
    count: &AtomicU64,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; buf_size];
    loop {
        let n = r.read(&mut buf).await.map_err(|error| CopyError::Tcp { side: from, error })?;
        if n == 0 {
            w.shutdown().await.map_err(|error| CopyError::Tcp { side: to, error })?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await.map_err(|error| CopyError::Tcp { side: to, error })?;
        moved.add(count, n as u64);
    }
}
