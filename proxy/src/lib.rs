//! `ambient-proxy` — the data plane under test: a ztunnel-like node proxy in in-pod mode.
//!
//! The proxy knows nothing of the simulator or of network namespaces as a testbed builds them:
//! it talks to the network only through its socket seam ([`Network`]), so the same code runs on
//! real Linux sockets and on simulated ones. Time is `tokio::time` plus an injected wall-clock
//! origin, every choice comes from a seeded rng, and the rustls crypto provider is passed in: a
//! simulated run is a pure function of its inputs. `ARCHITECTURE.md` beside this crate has the
//! ports, the connection lifecycle, the seams and the test tiers.
//!
//! # Map
//!
//! Wire formats and configuration:
//! - [`inpod`] — ports, marks and routing constants of in-pod capture.
//! - [`istio`] — Istio policy objects (AuthorizationPolicy, PeerAuthentication) as written in a cluster.
//! - [`mesh`] — the mesh state: workloads, services, policies, trust domain ([`MeshSpec`] →
//!   [`MeshState`]).
//! - [`config`] — the config file of a standalone node proxy (`testbed proxy`).
//! - [`error`] — validation errors with key paths, reported all at once.
//! - [`faults`] — seeded fault points for tests (a runtime plan production code never builds).
//!
//! Pure decisions (no runtime, no I/O):
//! - [`policy`] — Istio objects compiled into L4 matchers; the RBAC evaluator ([`policy::evaluate`]).
//! - [`route`] — the outbound route decision ([`route::plan_outbound`]).
//! - [`inbound`] — CONNECT validation → status code, self-calls, `Forwarded`.
//! - [`pool`] — which pooled connection serves a stream, or dial, or wait ([`pool::choose`]).
//! - [`node::admit`] — admission on 15008: handshakes and connections per peer ([`node::Limits`]).
//!
//! Identity and TLS:
//! - [`identity`] — SPIFFE workload identities.
//! - [`ca`] — the mesh CA (Ed25519, rcgen, seedable keys), workload certificates, rotation.
//! - [`tls`] — HBONE's TLS 1.3 configs and SPIFFE verifiers; [`x509`] reads URI SANs.
//! - [`crypto`] — the injected rustls crypto provider, and a deterministic one for simulation.
//! - [`clock`] — wall-clock time derived from tokio time (certificate validity, TLS).
//!
//! The I/O shell:
//! - [`net`] — the socket seam, its Linux implementation (`net::linux`, Linux only) and an
//!   in-process one ([`net::memory`]).
//! - [`node`] — the node proxy ([`NodeProxy`]): listeners per captured pod, outbound (15001),
//!   inbound HBONE (15008) and plaintext (15006), live-connection re-checks, drain and crash.
//! - [`copy`] — bounded bidirectional copy TCP ⇄ h2 / TCP ⇄ TCP; closes and resets propagated,
//!   idle connections reset.
//! - [`frames`] — h2 frame boundaries of a peer's bytes: whether a header block is left open
//!   (the 15008 header-read timeout).
//! - [`signal`] — a value tasks wait on, woken in FIFO order (`tokio::sync::watch` wakes in a
//!   random order, which would make simulated runs differ).
//! - [`events`] — access-log events ([`events::ProxyEvent`]), the injected sink, counters.
//! - [`client`] — a standalone HBONE client (tools and tests).
//!
//! # Simplifications (stated, not hidden)
//!
//! - The mesh state is given (file or code), not learned from istiod over xDS; the CA is in
//!   process, not reached by CSR.
//! - L4 only: no waypoints, no L7 policy (ALLOW rules with L7 fields fail closed, DENY rules
//!   keep their L4 part), no DNS proxy on 15053, no admin/metrics/readiness ports.
//! - IPv4 is what the tests exercise; the types carry IPv6 addresses but nothing checks them.

pub mod ca;
pub mod client;
pub mod clock;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod dns;
pub mod error;
pub mod events;
pub mod faults;
pub mod frames;
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
pub mod signal;
pub mod tls;
pub mod x509;

pub use mesh::{MeshHandle, MeshSpec, MeshState};
pub use net::{Accepted, ConnectOptions, ListenOptions, Listener, Network};
pub use node::{DnsConfig, NodeProxy, PodSpec, ProxyConfig, Resources};
