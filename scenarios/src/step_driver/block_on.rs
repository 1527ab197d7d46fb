//! [`block_on`]: runs a driver future to its end on the calling thread, for a backend whose
//! effects block (the kernel harness) and for tests.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Wakes the thread that polls.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread until it is ready, parking between polls. A future whose effects
/// block in their bodies is ready at its first poll; one that really waits is woken by its
/// waker. Call it outside any async runtime (it would block that runtime's thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        // A wake between the poll and here leaves the token set: `park` returns at once.
        std::thread::park();
    }
}
