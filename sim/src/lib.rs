//! `ambient-sim` — the deterministic backend: a model of a Linux network namespace's packet path
//! (netfilter, conntrack, routing) and a packet loop that runs the real proxy on simulated sockets.
//!
//! # Map
//!
//! - [`kernel`] — one network namespace as the kernel sees it: [`kernel::Netns`] loads the same
//!   `iptables-restore` text and `ip … add` commands as a real namespace, runs packets through
//!   the hooks in kernel order (raw → conntrack → mangle → nat → filter, routing and re-routing,
//!   loopback, forwarding), keeps per-rule counters and a conntrack table with NAT, and prints
//!   `iptables-save -c` and `conntrack -L`. `testbed trace` is its command-line face.
//!
//! # The kernel model's stated simplifications
//!
//! Checked against kernel 6.18 with iptables 1.8.9 (nf_tables): the canonical printer against a
//! captured corpus (`tests/data/canonical`), packet semantics against fourteen real-socket runs
//! whose per-rule counters and conntrack entries the model reproduces exactly, and the TCP
//! conntrack state machine against 23 raw-segment sequences, state, flags and timeout after
//! every segment (`tests/data/kernel-runs`). Where it differs from the kernel, on purpose:
//!
//! - IPv4 only; no IP options, fragments (`-f` is parsed and never matches), TTL or checksums.
//! - TCP conntrack has no sequence/window tracking: every segment is in window, an ACK
//!   acknowledges everything the other side sent (so the 5-minute cap while data is
//!   unacknowledged lifts on the next ACK), where the kernel compares an acknowledgement number
//!   with a recorded one the model assumes they agree, and retransmissions are not counted.
//! - No conntrack helpers or expectations (RELATED comes only from ICMP errors and REJECT's
//!   reset), no accounting, no labels; when the table is full a new connection's packet is
//!   dropped after expired entries are purged (the kernel's early drop of unassured entries is
//!   not modelled).
//! - NAT chooses the lowest address of a range and, when a port must change, the lowest free
//!   port (the kernel hashes the address choice and randomises the port search for SNAT).
//! - Routing: no metrics/multipath, no rp_filter (0, a new namespace's default), every
//!   interface is up; no neighbour resolution (an unanswered ARP, and the ICMP error it causes,
//!   is the caller's to model).
//! - The model has no sockets: the caller answers socket lookups (`-m socket`, TPROXY) and says
//!   which socket sent a packet (`-m owner`), see [`kernel::sockets`].
//! - Matches and targets: the set listed in [`kernel::rules`]; anything else is refused with an
//!   error naming line, word and what was expected. An unterminated `"` is an error (the real
//!   iptables-restore lets the quote run to the end of the line).

pub mod kernel;
