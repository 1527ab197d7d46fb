//! `ambient-fuzz` — property-based fault injection for the ambient data plane: random worlds
//! (topologies, policies, traffic, fault schedules) generated with proptest, run in the
//! simulator, checked against a reference oracle and a set of invariants, and — when one
//! breaks — shrunk to a minimal scenario file of the public format that anyone can rerun.
//!
//! # Map
//!
//! ```text
//! (seed, index) ──strategy──▶ Case ──case.to_yaml──▶ YAML ──load_str──▶ World
//!                                                                    │
//!        oracle::predict(World) ◀────────────────────────────────────┤
//!        ambient_sim::run_inspected(World) ×2 ◀──────────────────────┘
//!                     │ Outcome, underlay tap, proxy resources
//!                     ▼
//!        invariants::check ──▶ violations ──shrink──▶ regression YAML
//! ```
//!
//! - [`strategy`] — the proptest strategies (topologies, policies, traffic, fault schedules)
//!   and the reading of drawn steps against the state they build.
//! - [`case`] — a case as a value of the public format, rendered to YAML ([`yaml`]).
//! - [`oracle`] — the reference oracle: expected outcome and path per connection, from the
//!   facts, independent of the proxy and the simulator (its own RBAC in [`oracle::rbac`]).
//! - [`invariants`] — oracle agreement, bytes intact, no plaintext between nodes, source and
//!   destination preserved, nothing left behind, determinism.
//! - [`runner`] — one case, and a session of many (deterministic per seed, on worker threads).
//! - [`shrink`] — the reducer; [`regression`] — the found case as a rerunnable file.
//!
//! Why a crate of its own (and not `sim/src/fuzz`): the oracle must stay independent of what
//! it judges, and the fuzzer is a *user* of the simulator like `testbed run` is — so it sits
//! beside the CLI: `proxy ← scenarios ← sim ← fuzz ← testbed`. The simulator only gained a
//! small read-only inspection hook (`ambient_sim::run_inspected`), and the proxy its seeded
//! fault points (`ambient_proxy::faults`).

pub mod case;
pub mod invariants;
pub mod kernel;
pub mod oracle;
pub mod regression;
pub mod runner;
pub mod shrink;
pub mod strategy;
pub mod yaml;

pub use case::Case;
pub use invariants::{Invariant, Violation};
pub use runner::{Session, SessionReport, fuzz, generate, run_case, run_world};
pub use strategy::Limits;
