//! The state one run shares between its packet loop, its sockets and its proxies' event sinks.
//!
//! Everything runs on one thread (a current-thread tokio runtime), so the locks are never
//! contended; they exist because the proxy's socket seam requires `Send + Sync`. Lock order:
//! [`Shared::state`] before [`Shared::log`]. Nothing that may lock `state` runs while the
//! packet loop holds it: sockets are dropped and wakers woken only after it lets go, and
//! waking a task only schedules it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ambient_proxy::events::ProxyEvent;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fabric::Fabric;
use crate::net::SimStream;
use crate::substrate::SockKey;

/// What the run logged: proxy events in emission order, and the trace.
#[derive(Debug, Default)]
pub struct Log {
    /// (node, event), in the order the proxies emitted them.
    pub events: Vec<(String, ProxyEvent)>,
    pub trace: Option<crate::trace::TraceLog>,
}

/// Shared by everything in one run.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<Fabric>,
    pub log: Mutex<Log>,
    /// Streams to reset (RST) on the next pass.
    resets: Mutex<Vec<SimStream>>,
    /// Sockets their owner closed gracefully since the last pass (see `Sockets::release`).
    released: Mutex<Vec<SockKey>>,
    /// Orphaned substrate sockets to abort in place (no packet) on the next pass: see
    /// `SimNetwork::listen` (SO_REUSEADDR).
    orphans: Mutex<Vec<(std::net::Ipv4Addr, SockKey)>>,
    /// Sockets their owner read from since the last pass (they may owe a window update), by
    /// the address of their host.
    reads: Mutex<std::collections::BTreeSet<(std::net::Ipv4Addr, SockKey)>>,
    /// Woken whenever a socket is used: the packet loop has something to move.
    kick: Notify,
    kicks: AtomicU64,
    /// The packet loop found nothing to do since the last kick.
    quiet: AtomicBool,
    start: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Must be made inside the runtime (its clock starts now).
    pub fn new(fabric: Fabric, trace: bool) -> Self {
        Shared {
            state: Mutex::new(fabric),
            log: Mutex::new(Log { events: Vec::new(), trace: trace.then(Default::default) }),
            resets: Mutex::new(Vec::new()),
            released: Mutex::new(Vec::new()),
            orphans: Mutex::new(Vec::new()),
            reads: Mutex::new(Default::default()),
            kick: Notify::new(),
            kicks: AtomicU64::new(0),
            quiet: AtomicBool::new(false),
            start: Instant::now(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, Fabric> {
        lock(&self.state)
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }

    /// Simulated time since the run started.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// A socket was used: the packet loop should look.
    pub fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.quiet.store(false, Ordering::Relaxed);
        self.kick.notify_one();
    }

    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    pub fn kicked(&self) -> tokio::sync::futures::Notified<'_> {
        self.kick.notified()
    }

    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
    }

    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Relaxed)
    }

    pub fn queue_reset(&self, stream: SimStream) {
        lock(&self.resets).push(stream);
        self.kick();
    }

    pub fn take_resets(&self) -> Vec<SimStream> {
        std::mem::take(&mut *lock(&self.resets))
    }

    /// Records that the owner of `key` closed it; the next pass tells the socket table (a
    /// stream may drop anywhere, so this takes no lock on the fabric).
    pub fn queue_release(&self, key: SockKey) {
        lock(&self.released).push(key);
        self.kick();
    }

    pub fn take_released(&self) -> Vec<SockKey> {
        std::mem::take(&mut *lock(&self.released))
    }

    /// Aborts the substrate socket `key` of the host at `host` in place on the next pass.
    pub fn queue_orphan_abort(&self, host: std::net::Ipv4Addr, key: SockKey) {
        lock(&self.orphans).push((host, key));
        self.kick();
    }

    pub fn take_orphans(&self) -> Vec<(std::net::Ipv4Addr, SockKey)> {
        std::mem::take(&mut *lock(&self.orphans))
    }

    /// Records that the owner of `key` (on the host at `host`) read from it; the next pass
    /// decides whether it sends a window update (`tcp::window_update`).
    pub fn note_read(&self, host: std::net::Ipv4Addr, key: SockKey) {
        lock(&self.reads).insert((host, key));
    }

    pub fn take_reads(&self) -> Vec<(std::net::Ipv4Addr, SockKey)> {
        std::mem::take(&mut *lock(&self.reads)).into_iter().collect()
    }

    /// Adds a line to the trace, if one is kept.
    pub fn note(&self, text: impl AsRef<str>) {
        let now = self.now();
        if let Some(t) = self.log().trace.as_mut() {
            t.push(now, text);
        }
    }
}
