//! `ambient-scenarios` — the scenario language (version 1 of `SCENARIO-FORMAT.md`), the `World`
//! both backends run, the `Outcome` they report, and the ambient in-pod rule generator.
//!
//! - [`rules`] — a captured pod's redirection rules (`iptables-restore` text) and policy routing.

pub mod diag;
pub mod outcome;
pub mod rules;
pub mod values;
pub mod yaml;
