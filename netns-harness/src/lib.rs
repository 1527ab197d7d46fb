//! `ambient-netns` — the kernel backend: real network namespaces, real `iptables-restore`, the
//! kernel's conntrack, real sockets and the real proxy.
//!
//! # Map
//!
//! The backend ([`backend`], [`NetnsBackend`]: `ambient_scenarios::Backend` named `netns`):
//!
//! | module | what it is |
//! | --- | --- |
//! | [`backend::plan`] | a World's topology as data: namespaces, links, addresses, routes (pure) |
//! | [`backend::topology`] | that plan built in the kernel; pods added and removed |
//! | [`backend::proxies`] | the proxy-kind plan (ours, ztunnel, or both in turn); one real `NodeProxy` per node of ours on its node namespace's thread; crash, start, mesh updates, event logs |
//! | [`backend::ztunnels`] | one real ztunnel process per node of that kind: ZDS agent, rendered config, faults as kill/start and ZDS add/delete |
//! | [`backend::traffic`] | the scenario apps and clients (`ambient_scenarios::traffic`) on real sockets |
//! | [`backend::faults`] | link faults (partition, loss, latency, heal) as state and as the node namespaces' rules |
//! | [`backend::observe`] | conntrack and counters in the Outcome's form; the predicates snapshots settle on (pure) |
//! | [`backend::run`] | the kernel's effects for the shared step driver (`ambient_scenarios::step_driver`): World → Outcome |
//!
//! Namespace primitives (what the harness and its tests stand on):
//!
//! | module | what it is |
//! | --- | --- |
//! | [`sandbox`] | [`sandbox::Sandbox::enter`]: user + mount + net namespaces for the whole process, entered first thing in `main`; `/run` is a private tmpfs |
//! | [`netns`] | [`netns::Netns`]: a named namespace at `/run/netns/<name>` with one worker thread running a current-thread tokio runtime inside it; jobs run there |
//! | [`link`] | rtnetlink: veth pairs across namespaces, addresses, up/down, routes (incl. `local … table 100`), fwmark rules — no `ip` process |
//! | [`nfqueue`] | a delay line on an NFQUEUE queue: packets held in the kernel and released `add` after they arrived ([`nfqueue::wire`] the messages as bytes, [`nfqueue::delay`] the pure FIFO) |
//! | [`tools`] | `iptables-restore`/`-save`, `conntrack`, long-running processes and `/proc/sys/net` writes, run from a namespace's thread; children die with it |
//! | [`iptables`] | `iptables-save -c` parsed: per-rule counters keyed `table/chain/position`, canonical rule text |
//! | [`conntrack`] | `conntrack -L` parsed into entries (state, tuples, flags, mark, zone) |
//! | [`socket`] | TCP connect with SO_MARK/bind/timeout, listeners (IP_TRANSPARENT too), SO_ORIGINAL_DST |
//! | [`environment`] | the kernel release and the `iptables`/`conntrack` versions a run depended on, for the reports |
//! | [`testkit`] | a libtest look-alike for `harness = false` test targets that need the sandbox |
//! | [`ztunnel`] | driving real ztunnel: the ZDS protocol as bytes and its node-agent server, the mesh as its local config, the process, its log as proxy events |
//!
//! The differential suite's kernel side, model-neutral ([`diff`]): seeded random rulesets
//! ([`diff::rulegen`]) and flows on a fixed pod/peer topology ([`diff::flowgen`]), the case and
//! observation data types ([`diff::case`]), normalisation ([`diff::normalize`]) and assembly
//! ([`diff::observe`]), the kernel executor ([`diff::kernel`]), the kernel's own invariants
//! ([`diff::invariants`]) and the field-by-field comparison ([`diff::compare`]). The model
//! executor lives in the test target (`tests/differential/`) and drives the kernel model
//! (`ambient-kernel`); the two backends never depend on each other.
//!
//! # Privileges
//!
//! Everything runs inside the sandbox: rootless where the kernel allows unprivileged user
//! namespaces, and as root confined to a user namespace otherwise (root too gets a user namespace,
//! so both paths are the same code; plain root is the fallback when the kernel refuses one). In the
//! user namespace the process holds CAP_SYS_ADMIN and CAP_NET_ADMIN over its own mount and network
//! namespaces only: enough for netns creation, bind mounts, rtnetlink, nf_tables, conntrack
//! netlink, SO_MARK, IP_TRANSPARENT and per-namespace sysctls — and nothing of the host's.
//!
//! # Test tiers
//!
//! - Unit tests (`cargo test -p ambient-netns --lib`): parsers, generators, normalisation; no
//!   privileges.
//! - `tests/primitives.rs`: every primitive against the real kernel.
//! - `tests/differential.rs`: ≥ 300 seeded random cases run on the kernel and through the
//!   simulator's kernel model and compared (`DIFF_SEED`, `DIFF_CASES`, …).
//! - `tests/cleanup.rs`: a sandboxed child fails midway (panic, error, SIGINT, SIGKILL) — by
//!   itself and in the middle of a scenario on the backend; the host side proves no namespace,
//!   link or process of it is left, and the child proves the backend tore down in-process.
//! - `tests/scenarios.rs`: every catalog scenario on the kernel meets its expectations with no
//!   step skipped; a rule set without the 15001 REDIRECT fails the expectations it should.
//! - `tests/proxy_paths.rs`: the proxy on real interception — HBONE (the app sees the client pod
//!   IP), uncaptured → captured through 15006, captured → uncaptured by passthrough.
//! - `tests/ztunnel.rs` (`test = false`: not run by `cargo test`): real ztunnel as the proxy and
//!   mixed with ours; needs `TESTBED_ZTUNNEL`, fails without it
//!   (`cargo test -p ambient-netns --test ztunnel`).
//!
//! Benchmarks (`harness = false`, not tests): `benches/topology.rs` (topology per pod, the
//! catalog), `benches/proxy.rs` (throughput and setup latency, plain TCP vs HBONE through our
//! proxy and, given `TESTBED_ZTUNNEL`, through ztunnel in the same run).
//!
//! The namespaced targets are `harness = false` (the sandbox must be entered single-threaded) and
//! **fail** with the reason when namespaces are unavailable; they never skip.
//!
//! # Simplifications
//!
//! IPv4 only. The differential suite's flows are TCP only (UDP and ICMP appear in rules, and must
//! load, but no flow exercises them). Tool output is parsed for iptables 1.8 (nf_tables backend)
//! and conntrack-tools 1.4; anything else is a parse error, not a guess.
#![cfg(target_os = "linux")]

pub use backend::{NetnsBackend, ProxyKind, ProxyPlan};

pub mod backend;
pub mod conntrack;
pub mod diff;
pub mod environment;
pub mod iptables;
pub mod link;
pub mod netns;
pub mod nfqueue;
pub mod sandbox;
pub mod socket;
pub mod testkit;
pub mod tools;
pub mod ztunnel;
