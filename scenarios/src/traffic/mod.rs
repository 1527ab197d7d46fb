//! The traffic of a scenario, as code both backends run unchanged: the apps listening in pods and
//! hosts ([`serve`]), the client of a `connect` step ([`run_client`]) and the bytes it sends
//! ([`Payload`]). Generic over the stream type, so the simulator runs them on simulated sockets
//! and the netns harness on real ones; only accepting, connecting and resetting differ, and those
//! are the backends' ([`AppStream`]). DNS — the stub resolver and the DNS server app — is in
//! [`dns`].
//!
//! Time is `tokio::time` (paused and driven by the simulator; real in the harness).

mod client;
pub mod dns;
mod payload;
mod server;

pub use client::{ClientEnd, ClientReport, ClientSpec, KILLED_WITH_POD, run_client};
pub use payload::Payload;
pub use server::{ServeReport, serve};

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected TCP stream as an app holds it.
pub trait AppStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Close abortively: the peer sees a reset (SO_LINGER 0 on a real socket).
    fn reset(self);
}

#[cfg(test)]
mod tests;
