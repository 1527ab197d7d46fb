//! Time: the pump that drives the packet loop on a paused tokio runtime, and `settle`.
//!
//! There is no clock. All tasks (apps, clients, proxies) run on one current-thread runtime
//! whose clock is paused; tokio moves it forward only when every task is idle, straight to the
//! next timer. The pump runs a [`pass`](crate::fabric::pass) and yields, so the tasks its
//! deliveries woke run at the same simulated instant; when a pass moved nothing and no socket
//! was used meanwhile, it sleeps until a socket is used (every simulated socket operation kicks
//! it) or the packet loop's own next deadline (a packet held on a link, a retransmission). An
//! idle hour therefore costs a handful of wake-ups, not an hour of ticks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::sleep_until;
use turmoil_net::EnterGuard;

use crate::fabric;
use crate::shared::Shared;

/// The longest the pump sleeps without a reason (it never parks forever).
const HORIZON: Duration = Duration::from_secs(600);
/// `settle` gives up after this much simulated time (a link that never stops moving).
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// Runs the packet loop forever (the caller stops polling it).
pub async fn pump(shared: Arc<Shared>, guard: &EnterGuard) {
    loop {
        let resumes = shared.state().wire_resumes(shared.now());
        if let Some(at) = resumes {
            // The network moved its quantum's worth: time passes before it moves more.
            shared.set_quiet(false);
            sleep_until(shared.start() + at).await;
            continue;
        }
        if fabric::pass(&shared, guard) {
            shared.set_quiet(false);
            tokio::task::yield_now().await;
            continue;
        }
        let seen = shared.kicks();
        tokio::task::yield_now().await;
        if shared.kicks() != seen {
            continue;
        }
        let (deadline, held) = {
            let f = shared.state();
            (f.next_deadline(), f.in_flight())
        };
        let kicked = shared.kicked();
        shared.set_quiet(!held);
        let now = shared.now();
        let wake = deadline.unwrap_or(now + HORIZON).min(now + HORIZON);
        tokio::select! {
            biased;
            _ = kicked => {}
            _ = sleep_until(shared.start() + wake) => {}
        }
    }
}

/// Waits until the network is quiet: nothing moved, no socket used, nothing held on a link —
/// seen twice in a row. Pending timers (retransmissions, apps' sleeps) are not waited for.
pub async fn settle(shared: &Shared) {
    let cap = shared.now() + SETTLE_MAX;
    let mut quiet_seen = 0;
    loop {
        tokio::task::yield_now().await;
        if shared.is_quiet() {
            quiet_seen += 1;
            if quiet_seen >= 2 {
                return;
            }
            continue;
        }
        quiet_seen = 0;
        if shared.now() >= cap {
            return;
        }
        let (release, wire) = {
            let f = shared.state();
            (f.next_release(), f.wire_resumes(shared.now()))
        };
        let wake = match (release, wire) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(t) = wake {
            sleep_until(shared.start() + t).await;
        }
    }
}
