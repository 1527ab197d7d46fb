//! In-pod mode constants: the ports the node proxy listens on inside every captured pod's network
//! namespace, the packet marks that keep its own traffic out of the redirection rules, and the
//! policy-routing table that returns replies to its transparent sockets.
//!
//! Source: `docs/ambient-facts.md` and `scenarios/testdata/istio-inpod.rules`. The rule generator in
//! `ambient-scenarios` and the proxy both read these, so the two cannot drift apart.

use std::net::Ipv4Addr;

/// Outbound capture: nat OUTPUT REDIRECTs an app's TCP connections here.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture: nat PREROUTING REDIRECTs uncaptured clients' connections here.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE: mTLS + HTTP/2 CONNECT from other node proxies.
pub const INBOUND_HBONE_PORT: u16 = 15008;
/// DNS capture (TCP and UDP).
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The ports a connection may not target on the proxy itself (self-calls are rejected).
pub const SELF_CALL_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, INBOUND_HBONE_PORT];

/// SO_MARK on every socket the proxy opens (1337).
pub const PROXY_MARK: u32 = 0x539;
/// Connmark of connections the proxy opened towards a local app with a spoofed source.
pub const CONNMARK: u32 = 0x111;
/// Mask the rules apply to both marks.
pub const MARK_MASK: u32 = 0xfff;

/// kubelet probes come from this address and are never redirected.
pub const DEFAULT_PROBE_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);

/// Routing table holding `local 0.0.0.0/0 dev lo`, selected by `fwmark CONNMARK/MARK_MASK`.
pub const ROUTE_TABLE: u32 = 100;
/// Priority of the fwmark policy rule.
pub const ROUTE_RULE_PREF: u32 = 32764;
/// Conntrack zone that keeps DNS flows redirected to the proxy apart from its own upstream queries.
pub const DNS_CT_ZONE: u16 = 1;
