//! The differential suite's building blocks: seeded random cases, the kernel executor, and the
//! model-neutral observation and comparison a model executor plugs into.
//!
//! - [`dice`] — the seeded random source (ChaCha8, own sampling: stable across `rand` releases).
//! - [`rulegen`] — random `iptables-restore` rulesets from the model's grammar, always loadable.
//! - [`flowgen`] — the fixed pod/peer topology and random flows; [`flowgen::generate_case`].
//! - [`case`] — [`case::Case`] (ruleset + topology + flows) and [`case::Observation`], serde data.
//! - [`normalize`] — ephemeral ports → owning flow, conntrack entries without timers, which rule
//!   counters are comparable ("first packets only").
//! - [`kernel`] — runs a case in fresh namespaces, returns the kernel's observation.
//! - [`invariants`] — what every kernel run must satisfy on its own.
//! - [`compare`] — field-by-field differences between two observations of one case.
//!
//! A model executor is a function `&Case -> Observation` following the sequence documented in
//! [`kernel`]; `compare(&kernel, &model)` must then be empty, or each difference documented.

pub mod case;
pub mod compare;
pub mod dice;
pub mod flowgen;
pub mod invariants;
pub mod kernel;
pub mod normalize;
pub mod rulegen;
