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
//! # Plugging in the model
//!
//! A model executor is a function `&Case -> Observation` following the sequence documented in
//! [`kernel`]; `compare(&kernel, &model)` must then be empty, or each difference documented.
//!
//! 1. Build the two namespaces from [`case::Topology`] (addresses, routes incl. the local route of
//!    table 100, the fwmark rule, `rp_filter` 0). Only the pod has rules; the peer has none and
//!    so **no conntrack at all** (the kernel tracks in a namespace only once something needs it).
//! 2. Load [`case::Case::ruleset`] with the model's `iptables-restore` (it uses `-N`, `-I CHAIN
//!    [n]`, `-A`, and no `--noflush`).
//! 3. Run every flow: connect → [`case::ConnectResult`] (a drop anywhere, OUTPUT included, is
//!    `timed-out`: the kernel retransmits rather than failing with EPERM); which listener accepts,
//!    its local address (TPROXY keeps the original destination), the peer address it sees (after
//!    SNAT), SO_ORIGINAL_DST (default zone only; `Err("ENOENT")` if no entry); the echo; the close.
//! 4. Snapshot conntrack with the connections open (after every echo) and after every close;
//!    list the rules with counters as `iptables-save -c` text.
//! 5. Build the observation with the same helpers as the kernel side: parse the listing with
//!    [`crate::iptables::Ruleset::parse`], take `canonical_text()` and
//!    [`normalize::rule_observations`]; normalise conntrack entries with a
//!    [`normalize::PortMap`] (insert each flow's ephemeral client port; or emit
//!    [`case::Port::Ephemeral`] directly).
//!
//! In `tests/differential.rs`, for each case: `let kernel = kernel::run_case(..)`,
//! `let model = model_observe(&case)`, `compare(&kernel.observation, &model)`, then drop the
//! differences listed (with a reason each) in the expected-differences file and fail on the rest,
//! printing the seed. The crate would take `ambient-sim` as a dev-dependency for that test only
//! (no library edge between the backends); or these pure modules (`case`, `dice`, `rulegen`,
//! `flowgen`, `normalize`, `compare`, and the parsers they use) move to a model-neutral crate.
//!
//! # What is compared, and what is not (and why)
//!
//! See [`compare`]: canonical rule text; counters only of rules first packets alone reach (nat
//! table, positive `--ctstate NEW`) — a Linux SYN is 60 bytes; flow outcomes and addresses;
//! conntrack entries without timers, `use=` and accounting, ports normalised (ephemeral → owning
//! flow, source-NAT range → the range). Not compared: other counters (ACKs, segments, delayed ACKs
//! are TCP stack details); the close and conntrack entries of flows marked `timing_sensitive`;
//! connmarks when a rule reached by more than first packets writes them; SO_ORIGINAL_DST and all
//! counters when a `CT --zone` rule can split TCP connections across zones.
//!
//! Kernel behaviours the cases exercise that a model has to reproduce (seen in the dumps):
//! a SYN-ACK with no conntrack entry in its zone is INVALID (neither tracked nor NATed), but a
//! later ACK or data segment is picked up mid-stream (`nf_conntrack_tcp_loose`) and does go
//! through nat; REJECT's ICMP errors end a connect with ECONNREFUSED / EHOSTUNREACH /
//! ENETUNREACH; `iptables-save` canonicalises (`-d 10.0.1.7/24` → `10.0.1.0/24`, `/32` added,
//! `-m tcp` inserted, `--set-mark` → `--set-xmark`, CONNMARK masks spelled out); nf_tables accepts
//! `-o` in a user chain reached from PREROUTING (the generator avoids it).

pub mod case;
pub mod compare;
pub mod dice;
pub mod flowgen;
pub mod invariants;
pub mod kernel;
pub mod normalize;
pub mod observe;
pub mod rulegen;
