//! `ambient-scenarios` — the scenario language (version 1 of `SCENARIO-FORMAT.md`), the
//! [`World`] both backends run, the [`Outcome`] they report, the
//! expectation checker, and the ambient in-pod rule generator.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! text ──yaml::parse──▶ located tree ──decode──▶ document ──world::build──▶ World
//!        (positions)                  (keys, types,        (references, defaults,
//!                                      value syntax)        addresses, semantics)
//! World ──step_driver, with a backend's effects (sim or netns)──▶ Outcome
//! Outcome ──expect::check_outcome──▶ failures
//! ```
//!
//! - [`backend`] — the seam both backends implement: World → [`Outcome`].
//! - [`step_driver`] — one driver of a World's steps for both backends
//!   ([`step_driver::StepDriver`]): step order, connection slots, payload keys and query ids,
//!   background joins, how each fault breaks down (delete-pod's order included); a backend
//!   performs the primitive effects it asks for ([`step_driver::Effects`]).
//! - [`load`] — load one file: [`load::load_file`], [`load::load_str`] → [`load::Loaded`].
//! - [`catalog`] — files and folders, catalog-wide unique ids, tag filters, shards.
//! - [`world`] — the resolved scenario: topology, policies, steps, faults, expectations.
//! - [`outcome`] — what a backend reports (stable JSON).
//! - [`expect`] — expectation types and the pure checker (World × Outcome → failures).
//! - [`diag`] — positions, key paths, diagnostics (`file:line:col: path: message`).
//! - [`values`] — the small text forms: sizes, durations, targets, tuples, rule refs.
//! - [`yaml`] — YAML → located tree, and a serde deserializer over it (for Istio objects).
//! - [`rules`] — a captured pod's redirection rules (`iptables-restore` text) and policy routing.
//! - [`traffic`] — the apps, the connect-step client and its payload: code both backends run.
//! - [`assemble`] — what a backend observed (client reports, proxy events, app accepts) → the
//!   Outcome's connections and tunnel counts, the same way for both backends.
//!
//! Decoding is private (`decode`): its document type is an intermediate the World replaces.
//!
//! Running and reporting a selection (`testbed run`) and comparing both backends (`testbed
//! conform`) sit above the backends, in the crate `ambient-report`.

pub mod assemble;
pub mod backend;
pub mod catalog;
mod decode;
pub mod diag;
pub mod expect;
pub mod load;
pub mod outcome;
pub mod rules;
pub mod step_driver;
pub mod traffic;
pub mod values;
pub mod world;
pub mod yaml;

pub use backend::{Backend, BackendError, Run, RunOptions};
pub use catalog::{Catalog, Selection, Shard};
pub use diag::Diagnostic;
pub use expect::{Failure, check_outcome};
pub use load::{Loaded, load_file, load_str};
pub use outcome::Outcome;
pub use world::{ClusterState, World};
