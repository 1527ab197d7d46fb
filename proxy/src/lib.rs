//! `ambient-proxy` — the data plane under test: a ztunnel-like node proxy in in-pod mode.
//!
//! The proxy knows nothing of the simulator or of network namespaces as a testbed builds them:
//! it talks to the network only through its socket seam, so the same code runs on real Linux
//! sockets and on simulated ones.
//!
//! - [`inpod`] — ports, marks and routing constants of in-pod capture.
//! - [`istio`] — Istio policy objects (AuthorizationPolicy, PeerAuthentication) as written in a cluster.
//! - [`error`] — validation errors with key paths.
//! - [`identity`] — SPIFFE workload identities.
//! - [`mesh`] — the mesh state: workloads, services, policies, trust domain.
//! - [`policy`] — policies compiled into L4 matchers, and the RBAC evaluator.
//! - [`clock`] — wall-clock time derived from tokio time (certificate validity, TLS).
//! - [`crypto`] — the injected rustls crypto provider, and a deterministic one for simulation.
//! - [`ca`] — the mesh CA (Ed25519, rcgen), workload certificates and their rotation.
//! - [`tls`] — HBONE's TLS configs and SPIFFE verifiers; [`x509`] reads URI SANs.
//! - [`net`] — the socket seam ([`net::Network`]) and its Linux implementation.
//! - [`pool`] — the HBONE connection pool (pure choice + bookkeeping).
//! - [`copy`] — bounded bidirectional copy TCP ⇄ h2 / TCP ⇄ TCP, closes and resets propagated.
//! - [`events`] — access-log events, the injected sink, counters.
//! - [`node`] — the node proxy: listeners per captured pod, outbound, inbound, lifecycle.
//! - [`client`] — a standalone HBONE client (tools and tests).
//! - [`config`] — the config file of a standalone node proxy (`testbed proxy`).
//! - [`route`] — the outbound route decision (pure).
//! - [`inbound`] — CONNECT validation → status code, self-calls, `Forwarded` (pure).

pub mod ca;
pub mod client;
pub mod clock;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod events;
pub mod identity;
pub mod inbound;
pub mod inpod;
pub mod istio;
pub mod mesh;
pub mod net;
pub mod node;
pub mod policy;
pub mod pool;
pub mod route;
pub mod tls;
pub mod x509;

pub use mesh::{MeshHandle, MeshSpec, MeshState};
pub use net::{Accepted, ConnectOptions, ListenOptions, Listener, Network};
pub use node::{NodeProxy, PodSpec, ProxyConfig};
