//! `ambient-kernel` — a model of one Linux network namespace's IPv4 packet path: netfilter (raw,
//! mangle, nat, filter), conntrack with NAT, and routing — driven by the same `iptables-restore`
//! text and `ip` commands as a real namespace, printing the same `iptables-save -c` and
//! `conntrack -L`.
//!
//! It is the simulator's kernel (`ambient-sim` runs one [`Netns`] per pod, node and external
//! host) and the vocabulary both backends and the scenario format share: the netfilter
//! [`Table`]s, rules by name and position ([`RuleRef`], `nat/ISTIO_OUTPUT/6`), conntrack's
//! [`TcpState`]s, and which rules only first packets of connections reach
//! ([`rules::counts_first_packets_only`], what decides whether two backends' counters must
//! agree). It knows nothing of scenarios, proxies or sockets.
//!
//! # Map
//!
//! | module | what |
//! | --- | --- |
//! | [`addr`] | prefixes and interface-name keys, compared the way the kernel does |
//! | [`packet`] | the model's packet (IPv4 only) and conntrack tuples |
//! | [`rules`] | ruleset AST, `iptables-restore` parser, canonical `iptables-save` printer; rules by position |
//! | [`netfilter`] | chain traversal: matches, targets, counters, policies |
//! | [`conntrack`] | connection table, TCP state machine, NAT bindings, `conntrack -L` |
//! | [`icmp_limit`] | the per-peer rate limit on the ICMP errors the kernel sends |
//! | [`routing`] | interfaces, addresses, tables, fwmark policy rules, `ip … add` commands |
//! | [`sockets`] | what the caller tells the model about local sockets |
//! | [`path`] | the hooks in kernel order for sent, received, looped-back and forwarded packets |
//! | [`trace`] | opt-in path traces and the `testbed trace` line/JSON formats |
//!
//! [`Netns`] ties them together: [`Netns::output`] and [`Netns::input`] take one packet through
//! the hooks and return its [`Fate`] (verdict, where it goes next, the packet after NAT, what
//! conntrack made of it, and any reply the kernel sent). Time is always passed in (a [`Duration`] since an arbitrary
//! start); nothing reads a clock. Everything that is printed is sorted, so output is
//! deterministic.
//!
//! # Stated simplifications
//!
//! Checked against kernel 6.18 with iptables 1.8.9 (nf_tables): the canonical printer against a
//! captured corpus (`tests/data/canonical`), packet semantics against sixteen real-socket runs
//! whose per-rule counters and conntrack entries the model reproduces exactly, the TCP
//! conntrack state machine against 23 raw-segment sequences, state, flags and timeout after
//! every segment (`tests/data/kernel-runs`), and both against random rulesets and packets
//! (`tests/data/kernel-fuzz`). It follows what that kernel actually runs, quirks included: e.g.
//! iptables-nft compiles `! --sport A ! --dport B` (single ports) into one compare of the pair,
//! so the rule matches unless both ports are equal. Where it differs from the kernel, on purpose:
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
//! - The kernel's ICMP errors are rate-limited per destination as the kernel does it (see
//!   [`icmp_limit`]), but not by the namespace-wide limit (a burst of 50 whose credit
//!   the kernel consumes at random).
//! - Routing: no metrics/multipath, no rp_filter (0, a new namespace's default), every
//!   interface is up; no neighbour resolution (an unanswered ARP, and the ICMP error it causes,
//!   is the caller's to model).
//! - The model has no sockets: the caller answers socket lookups (`-m socket`, TPROXY) and says
//!   which socket sent a packet (`-m owner`), see [`sockets`].
//! - Matches and targets: the set listed in [`rules`]; anything else is refused with an
//!   error naming line, word and what was expected. An unterminated `"` is an error (the real
//!   iptables-restore lets the quote run to the end of the line).

pub mod addr;
pub mod conntrack;
pub mod icmp_limit;
pub mod netfilter;
pub mod packet;
pub mod path;
pub mod routing;
pub mod rules;
pub mod sockets;
pub mod trace;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub use conntrack::TcpState;
pub use netfilter::RuleIndex;
pub use packet::{Packet, Protocol, TcpFlags, Tuple};
pub use path::{CtState, Disposition, DropCause, Fate, PacketVerdict};
pub use routing::{IfIndex, RouteError};
pub use rules::{ParseError, RestoreOptions, RuleRef, Ruleset, Table};
pub use sockets::{Listeners, NoSockets, SocketInfo, SocketLookup};
pub use trace::Trace;

use path::Ctx;

/// One network namespace: ruleset (with counters), conntrack table and routing.
#[derive(Clone, Debug)]
pub struct Netns {
    rules: Ruleset,
    conntrack: conntrack::Table,
    routing: routing::Routing,
    /// `net.ipv4.ip_forward` (off in a new namespace).
    pub forwarding: bool,
    /// Whether a loaded rule makes the kernel track connections.
    ct_enabled: bool,
    /// Token buckets of the ICMP errors sent per destination.
    icmp_limit: icmp_limit::IcmpLimiter,
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Netns {
    /// A fresh namespace: `lo` (127.0.0.1/8), no rules, empty conntrack table.
    pub fn new() -> Self {
        Netns {
            rules: Ruleset::default(),
            conntrack: conntrack::Table::new(conntrack::Config::default()),
            routing: routing::Routing::new(),
            forwarding: false,
            ct_enabled: false,
            icmp_limit: icmp_limit::IcmpLimiter::default(),
        }
    }

    /// Loads restore text as `iptables-restore [--noflush] [-c]` would. On error nothing
    /// changes.
    pub fn restore(&mut self, text: &str, opts: RestoreOptions) -> Result<(), ParseError> {
        self.rules.restore(text, opts)?;
        self.ct_enabled = self.rules.needs_conntrack();
        Ok(())
    }

    /// Replaces the ruleset wholesale (for callers that built one themselves).
    pub fn set_ruleset(&mut self, rules: Ruleset) {
        self.ct_enabled = rules.needs_conntrack();
        self.rules = rules;
    }

    pub fn ruleset(&self) -> &Ruleset {
        &self.rules
    }

    /// `iptables-save` (`counters`: `iptables-save -c`).
    pub fn save(&self, counters: bool) -> String {
        self.rules.save(counters)
    }

    /// `iptables -Z` for every table.
    pub fn zero_counters(&mut self) {
        self.rules.zero_counters();
    }

    pub fn routing(&self) -> &routing::Routing {
        &self.routing
    }

    pub fn routing_mut(&mut self) -> &mut routing::Routing {
        &mut self.routing
    }

    /// Applies an `ip addr/route/rule add …` command (see [`routing::Routing::ip`]).
    pub fn ip(&mut self, command: &str) -> Result<(), String> {
        self.routing.ip(command)
    }

    pub fn interface(&self, name: &str) -> Option<IfIndex> {
        self.routing.find_interface(name)
    }

    /// The source address a new connection to `dst` with SO_MARK `mark` would get.
    pub fn source_for(&self, dst: Ipv4Addr, mark: u32) -> Result<Ipv4Addr, RouteError> {
        self.routing.source_for(dst, mark)
    }

    pub fn conntrack(&self) -> &conntrack::Table {
        &self.conntrack
    }

    pub fn conntrack_mut(&mut self) -> &mut conntrack::Table {
        &mut self.conntrack
    }

    /// Whether the kernel would be tracking connections with the current rules.
    pub fn conntrack_enabled(&self) -> bool {
        self.ct_enabled
    }

    /// `conntrack -L` (sorted by original tuple).
    pub fn conntrack_dump(&self, now: Duration) -> String {
        self.conntrack.dump(now)
    }

    /// `conntrack -F`.
    pub fn flush_conntrack(&mut self) {
        self.conntrack.flush();
    }

    /// Drops expired conntrack entries.
    pub fn expire(&mut self, now: Duration) -> usize {
        self.conntrack.expire(now)
    }

    /// SO_ORIGINAL_DST of an accepted TCP socket: the connection whose tuple is
    /// (`local` → `peer`) in zone 0, in either direction; its original destination.
    pub fn original_dst(
        &self,
        local: SocketAddrV4,
        peer: SocketAddrV4,
        now: Duration,
    ) -> Option<SocketAddrV4> {
        let t = Tuple {
            proto: Protocol::Tcp,
            src: *local.ip(),
            dst: *peer.ip(),
            sport: local.port(),
            dport: peer.port(),
        };
        let (id, _) = self.conntrack.get(&t, 0, now)?;
        let o = self.conntrack.entry(id).original();
        Some(SocketAddrV4::new(o.dst, o.dport))
    }

    /// A packet sent by a local socket (`socket`: its properties; `None` for packets the
    /// kernel generates). The packet's `mark` is the socket's SO_MARK.
    pub fn output(
        &mut self,
        pkt: Packet,
        socket: Option<SocketInfo>,
        now: Duration,
        sockets: &dyn SocketLookup,
    ) -> Fate {
        let mut cx = Ctx { now, sockets, trace: None };
        let o = self.output_walk(pkt, socket, None, &mut cx);
        self.conntrack.finish_packet();
        o
    }

    /// [`Netns::output`], recording the path into `trace`.
    pub fn output_traced(
        &mut self,
        pkt: Packet,
        socket: Option<SocketInfo>,
        now: Duration,
        sockets: &dyn SocketLookup,
        trace: &mut Trace,
    ) -> Fate {
        let mut cx = Ctx { now, sockets, trace: Some(trace) };
        let o = self.output_walk(pkt, socket, None, &mut cx);
        self.conntrack.finish_packet();
        o
    }

    /// A packet arriving on interface `iif` (a packet from another namespace arrives with
    /// mark 0: the kernel clears it when a packet crosses namespaces).
    pub fn input(
        &mut self,
        pkt: Packet,
        iif: IfIndex,
        now: Duration,
        sockets: &dyn SocketLookup,
    ) -> Fate {
        let mut cx = Ctx { now, sockets, trace: None };
        let o = self.input_walk(pkt, iif, &mut cx);
        self.conntrack.finish_packet();
        o
    }

    /// [`Netns::input`], recording the path into `trace`.
    pub fn input_traced(
        &mut self,
        pkt: Packet,
        iif: IfIndex,
        now: Duration,
        sockets: &dyn SocketLookup,
        trace: &mut Trace,
    ) -> Fate {
        let mut cx = Ctx { now, sockets, trace: Some(trace) };
        let o = self.input_walk(pkt, iif, &mut cx);
        self.conntrack.finish_packet();
        o
    }

    /// `table/chain/position` of a rule (`…/policy` for a chain policy).
    pub fn rule_name(&self, r: RuleIndex) -> String {
        let chain = self
            .rules
            .table(r.table)
            .and_then(|t| t.chains.get(usize::from(r.chain)))
            .map_or("?", |c| c.name.as_str());
        if r.position == 0 {
            format!("{}/{chain}/policy", r.table)
        } else {
            format!("{}/{chain}/{}", r.table, r.position)
        }
    }

    /// A readable reason for a drop.
    pub fn describe_drop(&self, cause: &DropCause) -> String {
        match cause {
            DropCause::Rule(r) => self.rule_name(*r),
            DropCause::ConntrackFull => "conntrack: table full".into(),
            DropCause::ConntrackClash => "conntrack: tuple clash at confirm".into(),
            DropCause::IcmpRateLimit => "icmp: per-peer rate limit".into(),
            DropCause::Route(e) => format!("routing: {e}"),
        }
    }
}
