//! The client of a `connect` step: connect, hold, send, half-close, read until EOF — and say how
//! it went, in terms the Outcome classifies.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout_at};

use super::{AppStream, Payload};

/// What one connection of a `connect` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSpec {
    /// Bytes to send before half-closing.
    pub send: u64,
    /// Time to keep the connection open after connecting, before sending.
    pub hold: Duration,
    /// No answer within this → timeout. Runs from the connection attempt; `hold` is not counted.
    pub deadline: Duration,
    /// Key of the payload stream ([`Payload::key`]).
    pub payload: u64,
}

/// How a connection ended, from the client app's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEnd {
    /// Connected, sent everything, half-closed, then read until a clean EOF.
    Closed,
    /// The connect itself was refused (a RST answered the SYN).
    Refused,
    /// The connection was reset after it was established.
    Reset,
    /// The deadline passed: while connecting (`connected` false) or later.
    Timeout,
    /// Any other failure, with the error's text.
    Error(String),
}

/// Everything the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientReport {
    /// The connect completed.
    pub connected: bool,
    /// Bytes written.
    pub sent: u64,
    /// Bytes read back.
    pub received: u64,
    /// Every byte read back equals the byte sent at the same offset (what an echo returns).
    pub echoed: bool,
    pub end: ClientEnd,
}

/// The error of a client that died with its pod ([`ClientReport::killed`]).
pub const KILLED_WITH_POD: &str = "the client died with its pod (delete-pod)";

impl ClientReport {
    /// A client whose pod was deleted while it ran: its process died with the pod, and the
    /// kernel closed its socket; it never reported. Both backends report it so (`error`), with
    /// nothing counted (what it had done by then died with it).
    pub fn killed() -> ClientReport {
        ClientReport {
            connected: false,
            sent: 0,
            received: 0,
            echoed: true,
            end: ClientEnd::Error(KILLED_WITH_POD.to_string()),
        }
    }

    /// Whether the bytes read back are exactly what a server that returns `expected` of the
    /// `sent` bytes (all for echo, none otherwise) should have produced.
    pub fn intact(&self, expected: u64) -> bool {
        self.received == expected && self.echoed
    }
}

fn classify(e: &io::Error) -> ClientEnd {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ClientEnd::Reset,
        io::ErrorKind::BrokenPipe => ClientEnd::Reset,
        io::ErrorKind::TimedOut => ClientEnd::Timeout,
        _ => ClientEnd::Error(e.to_string()),
    }
}

/// Runs one connection: `connect` opens it (the backend's socket call), then the client holds,
/// sends `spec.send` bytes of its payload while reading whatever comes back, half-closes, and reads
/// until EOF. Reading and writing run together, so an echo of any size never deadlocks.
pub async fn run_client<S, F>(connect: F, spec: &ClientSpec) -> ClientReport
where
    S: AppStream,
    F: Future<Output = io::Result<S>>,
{
    let mut report = ClientReport {
        connected: false,
        sent: 0,
        received: 0,
        echoed: true,
        end: ClientEnd::Closed,
    };
    let started = Instant::now();
    let stream = match timeout_at(started + spec.deadline, connect).await {
        Err(_) => {
            report.end = ClientEnd::Timeout;
            return report;
        }
        Ok(Err(e)) => {
            report.end = match e.kind() {
                io::ErrorKind::ConnectionRefused => ClientEnd::Refused,
                _ => classify(&e),
            };
            return report;
        }
        Ok(Ok(s)) => s,
    };
    report.connected = true;
    if !spec.hold.is_zero() {
        sleep(spec.hold).await;
    }
    // The deadline does not count the hold.
    let deadline = started + spec.deadline + spec.hold;
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Shared with the two halves so that a timeout still reports how far it got.
    let sent = AtomicU64::new(0);
    let received = AtomicU64::new(0);
    let echoed = AtomicBool::new(true);
    let writer = async {
        let mut payload = Payload::new(spec.payload);
        let mut buf = vec![0u8; 16 * 1024];
        let mut done = 0u64;
        while done < spec.send {
            let n = buf.len().min(usize::try_from(spec.send - done).unwrap_or(usize::MAX));
            payload.fill(&mut buf[..n]);
            wr.write_all(&buf[..n]).await?;
            done += n as u64;
            sent.store(done, Ordering::Relaxed);
        }
        wr.shutdown().await
    };
    let reader = async {
        let mut expected = Payload::new(spec.payload);
        let mut buf = vec![0u8; 16 * 1024];
        let mut want = vec![0u8; 16 * 1024];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            expected.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                echoed.store(false, Ordering::Relaxed);
            }
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let ended = timeout_at(deadline, async { tokio::join!(writer, reader) }).await;
    report.sent = sent.load(Ordering::Relaxed);
    report.received = received.load(Ordering::Relaxed);
    report.echoed = echoed.load(Ordering::Relaxed);
    report.end = match ended {
        Err(_) => ClientEnd::Timeout,
        // A read error says more than the write error it usually causes.
        Ok((_, Err(e))) | Ok((Err(e), Ok(()))) => classify(&e),
        Ok((Ok(()), Ok(()))) => ClientEnd::Closed,
    };
    // Dropping both halves closes the stream; after a clean end the FIN is sent and EOF read, so
    // nothing turns into a reset.
    drop(rd.unsplit(wr));
    report
}
