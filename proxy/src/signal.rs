//! [`Signal`]: a value tasks can wait on — the part of `tokio::sync::watch` the proxy needs, with
//! waiters woken in the order they began to wait.
//!
//! Why not `watch`: it files each waiter under one of eight wait lists picked at random (to spread
//! contention), so the order in which a change wakes its waiters varies from run to run. Under the
//! simulator that order *is* the schedule — which of 150 parallel connections waits for the
//! second tunnel, say — and the schedule must repeat for a seed to give the same bytes.
//! `tokio::sync::Notify` wakes in FIFO order and draws no random numbers.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Signal<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T: Clone> Signal<T> {
    pub fn new(value: T) -> Self {
        Signal { value: Mutex::new(value), changed: Notify::new() }
    }

    /// The current value.
    pub fn get(&self) -> T {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the value and wake every waiter, oldest first.
    pub fn set(&self, value: T) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
        self.changed.notify_waiters();
    }

    /// Wait until `pred` holds for the value, and return that value.
    pub async fn wait_for(&self, pred: impl Fn(&T) -> bool) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `set` between the check and the await still
            // wakes us.
            notified.as_mut().enable();
            {
                let v = self.value.lock().unwrap_or_else(|e| e.into_inner());
                if pred(&v) {
                    return v.clone();
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiters_see_the_change_and_wake_in_the_order_they_waited() {
        let s = Arc::new(Signal::new(0u32));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let v = s.wait_for(|v| *v > 0).await;
                order.lock().unwrap().push((i, v));
            }));
            tokio::task::yield_now().await;
        }
        s.set(7);
        for t in tasks {
            t.await.unwrap();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(got, (0..8).map(|i| (i, 7)).collect::<Vec<_>>());
        // Already true: no wait.
        assert_eq!(s.wait_for(|v| *v == 7).await, 7);
    }
}
