//! Wall-clock time for certificates, derived from tokio time.
//!
//! The proxy never reads the system clock on its data path: time is `tokio::time` (which the
//! simulator pauses and drives) plus a wall-clock *origin* injected at start. Certificate validity
//! and rustls's [`TimeProvider`] both read [`WallClock::now`] = origin + tokio time elapsed since
//! the clock was made. Make the clock inside the runtime that drives it, so a paused runtime
//! gives the same times on every run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;

/// Origin + elapsed tokio time.
#[derive(Debug, Clone)]
pub struct WallClock {
    origin: Duration,
    start: tokio::time::Instant,
}

impl WallClock {
    /// The system's wall clock at this moment as origin (real runs).
    pub fn system() -> Self {
        let origin = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        WallClock::starting_at(origin)
    }

    /// A fixed origin, as seconds since the Unix epoch (simulated and reproducible runs).
    pub fn starting_at(origin: Duration) -> Self {
        WallClock { origin, start: tokio::time::Instant::now() }
    }

    /// Time since the Unix epoch.
    pub fn now(&self) -> Duration {
        self.origin + self.start.elapsed()
    }
}

impl TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(self.now()))
    }
}

/// 2026-01-01T00:00:00Z, a convenient fixed origin for tests and simulations.
pub const FIXED_ORIGIN: Duration = Duration::from_secs(1_767_225_600);
