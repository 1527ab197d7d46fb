//! Delaying packets in the kernel with NFQUEUE: the link latency of a kernel without netem.
//!
//! An iptables rule (`-j NFQUEUE --queue-num N`, see [`crate::backend::faults`]) hands packets
//! to queue `N` of its namespace; the kernel holds each one until a program bound to the queue
//! gives its verdict. A [`Delay`] is that program: a task on the namespace's worker thread that
//! binds the queue over a `NETLINK_NETFILTER` socket, notes when each packet arrives and accepts
//! it `add` later, oldest first. The packets themselves never leave the kernel (the queue copies
//! their metadata only), so what is delayed is the real packet on its real path.
//!
//! Layers: [`wire`] encodes and decodes the messages (bytes, no I/O); [`delay`] decides which
//! packets are due (time passed in); this module is the thin shell between them and the socket.
//!
//! No `--queue-bypass`: with no program bound the kernel drops the queue's packets instead of
//! passing them undelayed. A [`Delay`] is bound before its rule is loaded and stopped after the
//! rule is removed, so that window never opens in a run; if the line dies mid-run, packets are
//! lost (visible as a failing connection), never silently sent without their delay.
//!
//! Simplifications: a packet's arrival is when its notice is read, not when the kernel queued
//! it, so each packet waits `add` plus the notice's latency (microseconds) — never less. The task
//! shares the namespace's thread with whatever else runs there (on a node: the node proxy), so a
//! busy thread can postpone a release by its poll latency. No jitter, no rate limit.

pub mod delay;
pub mod wire;

use std::time::{Duration, Instant};

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::sync::{oneshot, watch};

use crate::netns::{JobHandle, Netns};
use delay::DelayLine;
use wire::{Message, Verdict};

/// How many packets a queue may hold at once (`NFQA_CFG_QUEUE_MAXLEN`; the kernel's default is
/// 1024). A 256 KiB transfer is under 200 full-size segments (fewer packets, as GSO packets are
/// queued whole); this leaves room for many such flows at once on one link before the kernel
/// drops.
pub const QUEUE_MAX_LEN: u32 = 8192;
/// The socket's receive buffer (`SO_RCVBUF`, capped by `net.core.rmem_max`): packet notices
/// that do not fit are lost, and so are their packets.
const RECV_BUF: i32 = 4 << 20;
/// On stop, how long to look for notices already sent but not yet read (the rule is gone, so
/// no new ones come).
const STRAGGLERS: Duration = Duration::from_millis(5);

/// Why a delay line could not start or stopped with an error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DelayError {
    /// A socket operation failed.
    #[error("nfqueue {queue}: {what}: {detail}")]
    Io { queue: u16, what: &'static str, detail: String },
    /// The kernel answered a request with an error.
    #[error("nfqueue {queue}: the kernel refused {what}: {}", std::io::Error::from_raw_os_error(*errno))]
    Refused { queue: u16, what: &'static str, errno: i32 },
    /// The kernel sent something we could not decode.
    #[error("nfqueue {queue}: {error}")]
    Wire { queue: u16, error: wire::WireError },
    /// The namespace's worker ended the task (the namespace is gone).
    #[error("nfqueue {queue}: the delay line's task ended: {detail}")]
    Gone { queue: u16, detail: String },
}

/// What a delay line did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    /// Packets held and released.
    pub delayed: u64,
    /// Verdicts the kernel refused (the packet was no longer queued: its device went away).
    pub stale_verdicts: u64,
}

/// A delay line running on one queue of a namespace. Dropping it stops the line (without
/// waiting); [`Delay::stop`] stops it and waits.
#[derive(Debug)]
pub struct Delay {
    queue: u16,
    control: watch::Sender<Option<Duration>>,
    job: JobHandle<Result<DelayStats, DelayError>>,
}

impl Delay {
    /// Binds queue `queue` in `ns` and starts delaying its packets by `add`. Returns once the
    /// kernel has acknowledged the binding: from then on the queue's packets are delayed.
    /// Blocks the calling thread: call it from a plain thread, not from async code.
    pub fn start(ns: &Netns, queue: u16, add: Duration) -> Result<Delay, DelayError> {
        let (control, commands) = watch::channel(Some(add));
        let (ready_tx, ready_rx) = oneshot::channel();
        let job = ns.spawn(move || serve(queue, commands, ready_tx));
        match ready_rx.blocking_recv() {
            Ok(Ok(())) => Ok(Delay { queue, control, job }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DelayError::Gone {
                queue,
                detail: job.wait().map_or_else(|e| e.to_string(), |r| format!("{r:?}")),
            }),
        }
    }

    /// The queue number.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Changes the delay (packets already held included).
    pub fn set_add(&self, add: Duration) {
        let _ = self.control.send(Some(add));
    }

    /// Stops the line: every held packet is released at once, the queue unbound. Call it after
    /// the queue's rule is gone, or new packets find no reader and are dropped.
    pub fn stop(self) -> Result<DelayStats, DelayError> {
        let queue = self.queue;
        let _ = self.control.send(None);
        self.job.wait().map_err(|e| DelayError::Gone { queue, detail: e.to_string() })?
    }
}

fn io(queue: u16, what: &'static str) -> impl FnOnce(std::io::Error) -> DelayError {
    move |e| DelayError::Io { queue, what, detail: e.to_string() }
}

/// The line's socket and its next sequence number.
struct Queue {
    queue: u16,
    socket: TokioSocket,
    seq: u32,
    buf: Vec<u8>,
}

impl Queue {
    async fn open(queue: u16) -> Result<Queue, DelayError> {
        let mut socket = TokioSocket::new(NETLINK_NETFILTER).map_err(io(queue, "socket"))?;
        socket.socket_mut().bind_auto().map_err(io(queue, "bind"))?;
        socket.socket_ref().set_rx_buf_sz(RECV_BUF).map_err(io(queue, "SO_RCVBUF"))?;
        // A full buffer then loses notices (and with them packets) instead of failing recv.
        socket.socket_ref().set_no_enobufs(true).map_err(io(queue, "NETLINK_NO_ENOBUFS"))?;
        Ok(Queue { queue, socket, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    async fn send(&mut self, encode: impl FnOnce(u32) -> Vec<u8>) -> Result<u32, DelayError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = encode(self.seq);
        self.socket.send(&bytes).await.map_err(io(self.queue, "send"))?;
        Ok(self.seq)
    }

    async fn recv(&mut self) -> Result<Vec<Message>, DelayError> {
        self.buf.clear();
        self.socket.recv(&mut self.buf).await.map_err(io(self.queue, "recv"))?;
        wire::decode(&self.buf).map_err(|error| DelayError::Wire { queue: self.queue, error })
    }

    /// Sends a config request and waits for its acknowledgement; packets noticed meanwhile are
    /// returned (with their arrival time) for the caller to hold.
    async fn request(
        &mut self,
        what: &'static str,
        encode: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Vec<(u32, Instant)>, DelayError> {
        let seq = self.send(encode).await?;
        let mut early = Vec::new();
        loop {
            let messages = self.recv().await?;
            let now = Instant::now();
            for m in messages {
                match m {
                    Message::Error { seq: s, errno } if s == seq => {
                        return if errno == 0 {
                            Ok(early)
                        } else {
                            Err(DelayError::Refused { queue: self.queue, what, errno })
                        };
                    }
                    Message::Packet { id, .. } => early.push((id, now)),
                    _ => {}
                }
            }
        }
    }

    async fn accept(&mut self, id: u32) -> Result<(), DelayError> {
        let queue = self.queue;
        self.send(|seq| wire::verdict(seq, queue, id, Verdict::Accept)).await.map(|_| ())
    }
}

/// The task: bind, report readiness, then hold and release until told to stop.
async fn serve(
    queue: u16,
    mut commands: watch::Receiver<Option<Duration>>,
    ready: oneshot::Sender<Result<(), DelayError>>,
) -> Result<DelayStats, DelayError> {
    let bound = async {
        let mut q = Queue::open(queue).await?;
        let early =
            q.request("binding the queue", |seq| wire::bind(seq, queue, QUEUE_MAX_LEN)).await?;
        Ok::<_, DelayError>((q, early))
    }
    .await;
    let (mut q, early) = match bound {
        Ok(bound) => {
            let _ = ready.send(Ok(()));
            bound
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    let add = (*commands.borrow_and_update()).unwrap_or_default();
    let mut line = DelayLine::new(add);
    let mut stats = DelayStats::default();
    for (id, at) in early {
        line.arrive(id, at);
    }
    loop {
        let wake =
            line.next_release().unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = commands.changed() => {
                // A dropped sender (the run is over) is a stop too.
                match changed.ok().and(*commands.borrow_and_update()) {
                    Some(add) => line.set_add(add),
                    None => break,
                }
            }
            messages = q.recv() => {
                let now = Instant::now();
                for m in messages? {
                    match m {
                        Message::Packet { id, .. } => line.arrive(id, now),
                        // A verdict on a packet the kernel no longer holds.
                        Message::Error { errno, .. } if errno != 0 => stats.stale_verdicts += 1,
                        _ => {}
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        for id in line.release(Instant::now()) {
            q.accept(id).await?;
            stats.delayed += 1;
        }
    }
    // Stopped: the rule is gone (or the run is over). Release what is held now, and what was
    // queued but not yet read, then unbind (the kernel would drop anything still queued).
    while let Ok(messages) = tokio::time::timeout(STRAGGLERS, q.recv()).await {
        for m in messages? {
            if let Message::Packet { id, .. } = m {
                line.arrive(id, Instant::now());
            }
        }
    }
    for id in line.drain() {
        q.accept(id).await?;
        stats.delayed += 1;
    }
    q.request("unbinding the queue", |seq| wire::unbind(seq, queue)).await?;
    Ok(stats)
}
