//! `ambient-proxy` — the data plane under test: a ztunnel-like node proxy in in-pod mode.
//!
//! The proxy knows nothing of the simulator or of network namespaces as a testbed builds them:
//! it talks to the network only through its socket seam, so the same code runs on real Linux
//! sockets and on simulated ones.
//!
//! - [`inpod`] — ports, marks and routing constants of in-pod capture.
//! - [`istio`] — Istio policy objects (AuthorizationPolicy, PeerAuthentication) as written in a cluster.

pub mod inpod;
pub mod istio;
