//! `ambient-sim` — the deterministic backend: a model of a Linux network namespace's packet path
//! (netfilter, conntrack, routing) and a packet loop that runs the real proxy on simulated sockets.
//!
//! # Map
//!
//! The backend ([`SimBackend`], [`run`]): a scenario's `World` becomes a simulated cluster —
//! every pod, node and external host a namespace with the kernel model, apps and clients of the
//! scenario (`ambient_scenarios::traffic`) and one real `ambient_proxy::NodeProxy` per node on
//! simulated sockets — driven on simulated time into an `Outcome`.
//!
//! - [`backend`] — `SimBackend` and `run`: one run, its Outcome and artifacts (trace, pcaps);
//!   `run_inspected` adds the fuzzer's read-only hooks (underlay tap, proxy resources at the end)
//!   and its seeded proxy fault points.
//! - [`topology`] — namespaces (pods, nodes, external hosts), addresses, routes, segments.
//! - [`substrate`] — turmoil-net hosts under the namespaces; per-namespace socket tables that
//!   translate a substrate socket to the kernel's view of it.
//! - [`fabric`] — the packet loop: egress → sender's model → link (faults) → receiver's model →
//!   delivery; REJECT/ICMP replies; drops.
//! - [`tcp`] — retransmission on Linux's timers (the substrate's own is count-based, off).
//! - [`pump`] — simulated time: the paused runtime, the pump, `settle`.
//! - [`net`] — the proxy's socket seam (`Network`) and the apps' streams on simulated sockets.
//! - [`udp`] — UDP sockets (the seam's `Datagram`) and the kernel's view of them; the packet
//!   loop carries datagrams through the model like segments, answers one no socket takes with
//!   ICMP port unreachable, and fails a connected socket with the ICMP error it gets.
//! - [`cluster`] — the proxies (deterministic keys, crypto, clock) and the apps.
//! - [`driver`] — the simulator's effects for the shared step driver
//!   (`ambient_scenarios::step_driver`): clients, lookups, link and proxy faults, pods coming and
//!   going, settling, snapshots; the Outcome via `ambient_scenarios::assemble`.
//! - [`observe`] — conntrack and counters per namespace as the Outcome reports them.
//! - [`trace`] — the readable trace; [`pcap`] — packets per namespace as pcap files.
//!
//! Each namespace's packet path is the kernel model, [`ambient_kernel::Netns`] (its own crate:
//! what it models and what it simplifies are in its crate docs).
//!
//! # The simulator's stated simplifications
//!
//! Where it can not be the kernel, it says so here; `testbed conform` lists what that changes
//! in `scenarios/expected-differences.yaml`.
//!
//! - **Topology** (`topology.rs`): a node is a namespace that forwards between its pods'
//!   segment (bridge-like: same-node pods reach each other without crossing the node) and the
//!   underlay; nodes load no rules, so they track no connections, and there is no kube-proxy:
//!   a service VIP means something only to a captured client, whose proxy resolves it. A next
//!   hop nobody answers for drops the packet (no ARP, so no EHOSTUNREACH after its timeout).
//!   A packet that crosses namespaces loses its mark, as in the kernel.
//! - **TCP is turmoil-net's**: every segment is acknowledged at once (no delayed ACKs, no
//!   Nagle), the MSS is 1,460 on every path (Linux's `lo` uses about 65,000), the window is at
//!   most 64 KiB (no scaling), sockets have no TIME_WAIT of their own (conntrack has its own),
//!   no SACK or fast retransmit. So packet counts — and the counters of rules *every* packet
//!   traverses — differ from the kernel's; counters of first packets (nat, ctstate NEW) and
//!   conntrack entries and states do not. Segment lengths the model counts are Linux's: 60 for
//!   a SYN (options), 52 + data otherwise (timestamps), 40 for a reset.
//! - **Retransmission** is the harness's (`tcp.rs`), on Linux's timers (1 s for SYN/SYN-ACK,
//!   200 ms for data, doubling to 120 s; 6/5/15 retries, then ETIMEDOUT), go-back-N, with a
//!   duplicate ACK for a segment already acknowledged.
//! - **Window updates** after a read are the harness's too (`tcp.rs`), on Linux's rule
//!   (`tcp_cleanup_rbuf`); turmoil-net sends one only when a read drains half the buffer.
//! - **Ports**: ephemeral ports come from one counter for the whole run (32768 upwards), so they
//!   never collide across namespaces; the kernel randomises them (conformance normalises).
//! - **ICMP errors** reach sockets only while they connect: the errno Linux maps the error to
//!   (ENETUNREACH, EHOSTUNREACH, ECONNREFUSED); established sockets ignore them (soft errors).
//! - **UDP** (`udp.rs`): one socket per port and namespace (no port sharing between
//!   addresses, no SO_REUSEPORT), no broadcast, no fragments; a datagram that reaches a
//!   socket is never lost to a full receive buffer.
//! - **Loopback** (`127.0.0.0/8`) is simulated like any other traffic (OUTPUT → `lo` →
//!   PREROUTING → INPUT), but its substrate sockets name it by an alias (`241.0.0.0/8`, see
//!   [`substrate`]), so its MSS is 1,460 as elsewhere. A listener is bound to one address or
//!   the wildcard per port: two listeners on one port with different addresses are refused
//!   (EADDRINUSE) where the kernel would take both.
//! - **Faults**: `restart` is `crash` then `start` (the proxy loses connections and pools); a
//!   deleted pod's apps stop and its namespace leaves the network at once (client tasks from it
//!   go on and fail); link faults act on the underlay between two nodes, both directions.
//! - **Rate**: the whole simulated network moves at most 1 MiB of TCP payload per simulated
//!   millisecond (`fabric::WIRE_BUDGET`, ~8.4 Gbit/s, every hop counted: a proxied byte crosses
//!   about three). Below that a transfer takes no simulated time; a bulk transfer takes time,
//!   so a client's deadline holds (a `send: 1GiB` with `deadline: 100ms` times out). Links have
//!   no bandwidth of their own, and there is no queueing delay.
//! - **Settling**: "a step starts when the previous one has settled" means the network is quiet
//!   — no packet moving, no socket used, nothing held on a link — at the current simulated
//!   instant; timers (retransmissions, keepalives, apps' holds) are not waited for.

pub mod backend;
pub mod cluster;
pub mod dns;
pub mod driver;
pub mod fabric;
pub mod net;
pub mod observe;
pub mod pcap;
pub mod pump;
pub mod shared;
pub mod substrate;
pub mod tcp;
pub mod topology;
pub mod trace;
pub mod udp;

pub use backend::{Inspect, SimBackend, SimRun, run, run_inspected};
