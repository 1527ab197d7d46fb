//! The HBONE connection pool.
//!
//! Keyed as in ztunnel: (source identity, destination identity, destination `ip:15008`, source
//! IP). A key holds any number of h2 connections; a stream is placed on the oldest connection
//! that has room (streams < min(100, peer's MAX_CONCURRENT_STREAMS)); when none has room one
//! caller dials — and only one: concurrent callers for the key wait for that dial and share its
//! outcome. Idle connections are closed after [`PoolConfig::idle_timeout`].
//!
//! [`choose`] is the pure decision; [`Pool`] is the bookkeeping around it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::identity::Identity;
use crate::signal::Signal;

/// What identifies interchangeable tunnels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolKey {
    pub source_identity: Identity,
    pub destination_identity: Identity,
    pub gateway: SocketAddr,
    pub source_ip: IpAddr,
}

/// Pool and keepalive settings (defaults from `ambient-facts.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Our cap on streams per h2 connection (the peer's MAX_CONCURRENT_STREAMS may lower it).
    pub max_streams_per_conn: usize,
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_conn: 100,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// A connection's load, as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLoad {
    pub active: usize,
    pub max: usize,
    pub usable: bool,
}

/// The decision for one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Open a stream on connection `i` (oldest first).
    Reuse(usize),
    /// Dial a new connection.
    Dial,
    /// Another caller is dialing this key: wait for it.
    Wait,
}

/// Pure: which connection serves the next stream, or whether to dial or wait.
pub fn choose(conns: &[ConnLoad], dial_in_flight: bool) -> Choice {
    match conns.iter().position(|c| c.usable && c.active < c.max) {
        Some(i) => Choice::Reuse(i),
        None if dial_in_flight => Choice::Wait,
        None => Choice::Dial,
    }
}

/// One pooled h2 connection.
#[derive(Debug)]
pub struct Pooled {
    pub id: u64,
    pub key: PoolKey,
    pub send: SendRequest<Bytes>,
    active: AtomicUsize,
    max: AtomicUsize,
    closed: AtomicBool,
    streams_total: AtomicU64,
    idle_since: Mutex<Option<Instant>>,
    /// Woken when the pool wants the connection's driver to look at its state again.
    pub wake: Notify,
}

impl Pooled {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn streams_total(&self) -> u64 {
        self.streams_total.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// When the last stream ended, if none is active.
    pub fn idle_since(&self) -> Option<Instant> {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Update the stream cap from the peer's MAX_CONCURRENT_STREAMS.
    pub fn set_peer_max(&self, peer_max: usize, our_max: usize) {
        self.max.store(peer_max.min(our_max).max(1), Ordering::SeqCst);
    }
}

#[derive(Debug, Clone)]
enum DialState {
    Pending,
    Done(Result<(), Arc<str>>),
    /// The dialer gave up (its task ended) without an answer.
    Abandoned,
}

#[derive(Debug, Default)]
struct Entry {
    conns: Vec<Arc<Pooled>>,
    dial: Option<(u64, Arc<Signal<DialState>>)>,
}

/// All tunnels of one node proxy.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    entries: Mutex<BTreeMap<PoolKey, Entry>>,
    next_id: AtomicU64,
}

/// A reserved stream slot on a pooled connection; released on drop.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    pub conn: Arc<Pooled>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _guard = self.pool.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.conn.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.conn.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            self.conn.wake.notify_one();
        }
    }
}

/// The right to dial for a key; dropping it unfinished lets the next caller dial.
#[derive(Debug)]
pub struct DialPermit {
    pool: Arc<Pool>,
    key: PoolKey,
    dial_id: u64,
    tx: Option<Arc<Signal<DialState>>>,
}

/// What [`Pool::checkout`] hands out.
#[derive(Debug)]
pub enum Checkout {
    Reuse(Lease),
    Dial(Box<DialPermit>),
}

impl Pool {
    pub fn new(config: PoolConfig) -> Arc<Pool> {
        Arc::new(Pool { config, entries: Mutex::new(BTreeMap::new()), next_id: AtomicU64::new(1) })
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A stream slot for `key`: on a pooled connection, or the permit to dial one. If another
    /// caller's dial for this key fails while we wait, its error is ours.
    pub async fn checkout(self: &Arc<Self>, key: &PoolKey) -> Result<Checkout, String> {
        loop {
            let rx = {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                let entry = entries.entry(key.clone()).or_default();
                entry.conns.retain(|c| !c.is_closed());
                let loads: Vec<ConnLoad> = entry
                    .conns
                    .iter()
                    .map(|c| ConnLoad {
                        active: c.active(),
                        max: c.max.load(Ordering::SeqCst),
                        usable: !c.is_closed(),
                    })
                    .collect();
                match choose(&loads, entry.dial.is_some()) {
                    Choice::Reuse(i) => {
                        let conn = entry.conns[i].clone();
                        self.reserve(&conn);
                        return Ok(Checkout::Reuse(Lease { pool: self.clone(), conn }));
                    }
                    Choice::Dial => {
                        let dial_id = self.next_id.fetch_add(1, Ordering::SeqCst);
                        let tx = Arc::new(Signal::new(DialState::Pending));
                        entry.dial = Some((dial_id, tx.clone()));
                        return Ok(Checkout::Dial(Box::new(DialPermit {
                            pool: self.clone(),
                            key: key.clone(),
                            dial_id,
                            tx: Some(tx),
                        })));
                    }
                    Choice::Wait => match &entry.dial {
                        Some((_, rx)) => rx.clone(),
                        None => continue,
                    },
                }
            };
            match rx.wait_for(|s| !matches!(s, DialState::Pending)).await {
                DialState::Done(Err(e)) => return Err(e.to_string()),
                // Dialed: look again (the new connection is pooled). Abandoned: try again,
                // possibly dialing ourselves.
                DialState::Done(Ok(())) | DialState::Abandoned | DialState::Pending => continue,
            }
        }
    }

    fn reserve(&self, conn: &Pooled) {
        conn.active.fetch_add(1, Ordering::SeqCst);
        conn.streams_total.fetch_add(1, Ordering::SeqCst);
        *conn.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Retire `conn` if it has been idle for the idle timeout (true: the caller closes it).
    pub fn retire_if_idle(&self, conn: &Pooled, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let idle = conn.active() == 0
            && conn
                .idle_since()
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.idle_timeout);
        if idle {
            Self::remove_locked(&mut entries, conn);
        }
        idle
    }

    /// Retire `conn` now if it has no stream (drain); true if retired.
    pub fn retire_if_unused(&self, conn: &Pooled) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let unused = conn.active() == 0;
        if unused {
            Self::remove_locked(&mut entries, conn);
        }
        unused
    }

    /// The connection is gone (closed by the peer, failed, or retired).
    pub fn remove(&self, conn: &Pooled) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        Self::remove_locked(&mut entries, conn);
    }

    fn remove_locked(entries: &mut BTreeMap<PoolKey, Entry>, conn: &Pooled) {
        conn.closed.store(true, Ordering::SeqCst);
        if let Some(e) = entries.get_mut(&conn.key) {
            e.conns.retain(|c| c.id != conn.id);
            if e.conns.is_empty() && e.dial.is_none() {
                entries.remove(&conn.key);
            }
        }
    }

    /// Every live pooled connection, in key order (for drain and diagnostics).
    pub fn connections(&self) -> Vec<Arc<Pooled>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.values().flat_map(|e| e.conns.iter().cloned()).collect()
    }
}

impl DialPermit {
    /// The dial worked: pool the connection and take its first stream slot.
    pub fn succeed(mut self, send: SendRequest<Bytes>) -> Lease {
        let pool = self.pool.clone();
        let conn = Arc::new(Pooled {
            id: self.dial_id,
            key: self.key.clone(),
            send,
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(pool.config.max_streams_per_conn),
            closed: AtomicBool::new(false),
            streams_total: AtomicU64::new(0),
            idle_since: Mutex::new(None),
            wake: Notify::new(),
        });
        {
            let mut entries = pool.entries.lock().unwrap_or_else(|e| e.into_inner());
            let entry = entries.entry(self.key.clone()).or_default();
            if entry.dial.as_ref().is_some_and(|(id, _)| *id == self.dial_id) {
                entry.dial = None;
            }
            pool.reserve(&conn);
            entry.conns.push(conn.clone());
        }
        if let Some(tx) = self.tx.take() {
            tx.set(DialState::Done(Ok(())));
        }
        Lease { pool, conn }
    }

    /// The dial failed: waiters get the same error.
    pub fn fail(mut self, error: &str) {
        self.clear();
        if let Some(tx) = self.tx.take() {
            tx.set(DialState::Done(Err(Arc::from(error))));
        }
    }

    fn clear(&self) {
        let mut entries = self.pool.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.get_mut(&self.key) {
            if entry.dial.as_ref().is_some_and(|(id, _)| *id == self.dial_id) {
                entry.dial = None;
            }
            if entry.conns.is_empty() && entry.dial.is_none() {
                entries.remove(&self.key);
            }
        }
    }
}

impl Drop for DialPermit {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.clear();
            tx.set(DialState::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(active: usize, max: usize) -> ConnLoad {
        ConnLoad { active, max, usable: true }
    }

    #[test]
    fn choose_table() {
        assert_eq!(choose(&[], false), Choice::Dial);
        assert_eq!(choose(&[], true), Choice::Wait);
        assert_eq!(choose(&[load(0, 100)], false), Choice::Reuse(0));
        assert_eq!(choose(&[load(99, 100)], true), Choice::Reuse(0));
        // At its cap a connection is not reused: the next caller dials another …
        assert_eq!(choose(&[load(100, 100)], false), Choice::Dial);
        // … unless a dial is already under way.
        assert_eq!(choose(&[load(100, 100)], true), Choice::Wait);
        // The peer's lower limit counts.
        assert_eq!(choose(&[load(50, 50), load(3, 100)], false), Choice::Reuse(1));
        // Oldest first, unusable skipped.
        let dead = ConnLoad { active: 0, max: 100, usable: false };
        assert_eq!(choose(&[dead, load(10, 100), load(0, 100)], false), Choice::Reuse(1));
    }
}
