//! The differential suite's building blocks: seeded random cases, the kernel executor, and the
//! model-neutral observation and comparison both executors feed.
//!
//! - [`dice`] — the seeded random source (ChaCha8, own sampling: stable across `rand` releases).
//! - [`rulegen`] — random `iptables-restore` rulesets from the model's grammar, always loadable.
//! - [`flowgen`] — the fixed pod/peer topology and random flows; [`flowgen::generate_case`].
//! - [`case`] — [`case::Case`] (ruleset + topology + flows) and [`case::Observation`], serde data.
//! - [`normalize`] — ephemeral ports → owning flow, conntrack entries without timers, which rule
//!   counters are comparable ("first packets only").
//! - [`observe`] — records of clients and accepted connections + listings → the observation; the
//!   same code for both sides.
//! - [`kernel`] — runs a case in fresh namespaces, returns the kernel's observation.
//! - [`invariants`] — what every kernel run must satisfy on its own.
//! - [`compare`] — field-by-field differences between two observations of one case.
//!
//! # The two sides
//!
//! **Kernel** ([`kernel::run_case`]): two fresh namespaces joined by a veth pair, the ruleset
//! loaded with the real `iptables-restore`, real listeners and clients (tokio sockets, SO_MARK,
//! IP_TRANSPARENT, SO_ORIGINAL_DST); conntrack listed with `conntrack -L` with the connections
//! open and after they closed, the rules with `iptables-save -c`.
//!
//! **Model** (`tests/differential/model.rs`, the test target's own module, on the kernel model
//! crate `ambient-kernel`, never on the simulator backend): two
//! `ambient_kernel::Netns` built from the same [`case::Topology`] with the model's `ip …
//! add` commands and joined by a simulated link; the ruleset loaded with the model's
//! `iptables-restore`. The model has no sockets, so the executor plays them: a TCP endpoint per
//! connection (`tests/differential/tcp.rs`: handshake, one segment per write — veth and lo take
//! GSO packets —, immediate ACKs, the delayed ACK after a FIN, RST on abort, retransmission) and
//! the kernel executor's client and echo server as state machines with the same time limits
//! (`tests/differential/apps.rs`), in simulated time. It answers the model's socket lookups
//! (`-m socket`, TPROXY), delivers what the model delivers locally to the socket that owns it
//! (TPROXY's choice, else an established socket, else a listener, else the kernel's RST), and
//! sends every packet with Linux's sizes (SYN and SYN-ACK 60 bytes, pure ACK 52, data 52 +
//! payload, the kernel's RST 40). Conntrack is listed at the same two points, the rules with the
//! model's `iptables-save -c`; both are read with this crate's parsers and assembled by
//! [`observe::observe`].
//!
//! Linux behaviours the executor reproduces because they decide outcomes (each found by this
//! suite, each documented where it is implemented): a connect whose route gives a source address
//! that is not local (a `local` route of table 100 picks the destination itself) fails at once
//! with ENETUNREACH, and no non-transparent socket — nor the kernel's RST — sends from a
//! foreign address; a hard ICMP error fails a connect only if it quotes the SYN (errors come
//! back while `tcp_connect` is still sending it); an ICMP error that arrives between the
//! handshake and the application's wake-up is what SO_ERROR reports, so the connect fails; a
//! connection from the other namespace is accepted after its first data arrived (each namespace
//! runs its tasks on its own thread), so the pod ACKs that data from a connection with no
//! `struct socket` yet, which `-m owner --socket-exists` does not match.
//!
//! # The comparison, the normalisations and the exemptions
//!
//! [`compare::compare`] compares: the canonical rule text; counters of rules only first packets
//! reach (nat table, positive `--ctstate NEW`), packets *and* bytes, and the nat chains' policy
//! counters; per flow the connect result, client port, accepting listener, the addresses it saw
//! (local, peer, SO_ORIGINAL_DST), the echo and the close; accepted connections no flow claims;
//! both conntrack snapshots of both namespaces.
//!
//! Normalisations ([`normalize`]): ephemeral client ports → `eph:N` (the flow that owned them;
//! the two namespaces allocate from disjoint halves of the range), ports the kernel picked at
//! random from a source-NAT range → `snat:LO-HI`; conntrack entries lose their timer, `use=` and
//! accounting.
//!
//! Exemptions, each with its reason:
//! - counters of rules reached by more than first packets (ACKs, segments, delayed ACKs are TCP
//!   stack details: the model's endpoint is not Linux's segment for segment);
//! - the close and the conntrack entries of a flow either side marked `timing_sensitive` (a
//!   phase hit its time limit, retransmissions may have moved its state; or its pod entry was
//!   still closing at the last look);
//! - connection marks when a rule reached by more than first packets writes them (the mark is
//!   then the last such packet's doing: see [`normalize::connmark_follows_packets`]);
//! - SO_ORIGINAL_DST and all counters when a `CT --zone` rule can split TCP connections across
//!   zones (a zone-split connection is picked up mid-stream by whichever packet comes first).
//!
//! Differences beyond these are either listed in `tests/differential-expected.yaml` — each entry
//! with its reason and a matcher (the field, and conditions on the case and both observations
//! that must all hold; see `tests/differential/expected.rs`) — or fail the case. The one entry
//! today: a zone-split connection's SYN_SENT entry that the kernel keeps after the client's RST
//! (out of the window the entry knows) and the model, which tracks no sequence numbers, deletes.
//!
//! Kernel behaviours the cases exercise that a model has to reproduce (seen in the dumps):
//! a SYN-ACK with no conntrack entry in its zone is INVALID (neither tracked nor NATed), but a
//! later ACK or data segment is picked up mid-stream (`nf_conntrack_tcp_loose`) and does go
//! through nat; REJECT's ICMP errors end a connect with ECONNREFUSED / EHOSTUNREACH /
//! ENETUNREACH, and carry the (even unconfirmed) connection so NAT is undone in the quoted
//! header; `-o` in every OUTPUT chain is the device of the route the packet started with, even
//! after nat re-routed it; MASQUERADE out of `lo` takes a universe-scope address (never
//! 127.0.0.1); a 127.x source may not leave through eth0; `iptables-save` canonicalises
//! (`-d 10.0.1.7/24` → `10.0.1.0/24`, `/32` added, `-m tcp` inserted, `--set-mark` →
//! `--set-xmark`, CONNMARK masks spelled out); nf_tables accepts `-o` in a user chain reached
//! from PREROUTING (the generator avoids it).

pub mod case;
pub mod compare;
pub mod dice;
pub mod flowgen;
pub mod invariants;
pub mod kernel;
pub mod normalize;
pub mod observe;
pub mod rulegen;
