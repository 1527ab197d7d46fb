//! The readable trace of a run: one line per packet per namespace it crosses, proxy decisions
//! and steps interleaved, in simulated time. Deterministic, so it is snapshotted per catalog
//! scenario (`tests/traces.rs`) and a behaviour change shows up as a diff.
//!
//! ```text
//! 0.000000 client.default out tcp 10.0.1.2:32768 > 10.0.1.3:8080 S len=60 mark=0x0
//!     | OUTPUT POSTROUTING lo PREROUTING INPUT | nat/OUTPUT/1 nat/ISTIO_OUTPUT/6 | ct NEW none>SYN_SENT
//!     | local 10.0.1.2:32768 > 127.0.0.1:15001
//! 0.000000 node-a proxy outbound-route {"client":"10.0.1.2:32768",…}
//! 1.000000 step 2 fault {partition: [node-a, node-b]}
//! ```
//!
//! (One line each; wrapped here.) A packet line: time, namespace, `out` (sent by a local
//! socket) or `in <interface>`, the packet as it entered, the hooks it went through, the rules
//! that matched (`table/chain/N`), conntrack (ctstate and the TCP state before>after) and where
//! it went: `local <packet as delivered>`, `sent <dev> via <next hop>`, `forward <dev> via …`,
//! or `DROP <why>`. Link events (partition, loss, latency) and harness decisions (a
//! retransmission, a socket failed by ICMP or retransmission timeout) are lines of their own.

use std::fmt::Write as _;
use std::time::Duration;

use crate::kernel::conntrack::TcpState;
use crate::kernel::path::{Disposition, Outcome, PacketVerdict};
use crate::kernel::trace::Event;
use crate::kernel::{Netns, Packet, Protocol, Trace};

/// The lines of a run.
#[derive(Debug, Default, Clone)]
pub struct TraceLog {
    lines: Vec<String>,
}

/// `12.345678`: seconds with microseconds.
pub fn stamp(t: Duration) -> String {
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

fn packet_text(p: &Packet) -> String {
    match p.proto {
        Protocol::Tcp => format!(
            "tcp {} > {} {} len={} mark=0x{:x}",
            p.src_sock(),
            p.dst_sock(),
            p.tcp_flags,
            p.len,
            p.mark
        ),
        _ => p.to_string(),
    }
}

impl TraceLog {
    pub fn push(&mut self, t: Duration, text: impl AsRef<str>) {
        self.lines.push(format!("{} {}", stamp(t), text.as_ref()));
    }

    /// One packet's walk through one namespace.
    #[allow(clippy::too_many_arguments)]
    pub fn packet(
        &mut self,
        t: Duration,
        label: &str,
        model: &Netns,
        arrived: Option<&str>,
        input: &Packet,
        outcome: &Outcome,
        trace: &Trace,
        before: Option<TcpState>,
    ) {
        let mut s = format!("{} {label} ", stamp(t));
        match arrived {
            Some(iif) => {
                let _ = write!(s, "in {iif} ");
            }
            None => s.push_str("out "),
        }
        s.push_str(&packet_text(input));
        s.push_str(" |");
        for e in &trace.events {
            match e {
                Event::Hook { hook, .. } => {
                    let _ = write!(s, " {hook}");
                }
                Event::Loopback => s.push_str(" lo"),
                _ => {}
            }
        }
        let rules = trace.rules();
        if !rules.is_empty() {
            let _ = write!(s, " | {}", rules.join(" "));
        }
        let _ = write!(s, " | ct {}", outcome.ctstate.name());
        let after = outcome.tcp_state;
        if before.is_some() || after.is_some() {
            let name = |st: Option<TcpState>| st.map_or("none", |x| x.name());
            if before == after {
                let _ = write!(s, " {}", name(after));
            } else {
                let _ = write!(s, " {}>{}", name(before), name(after));
            }
        }
        s.push_str(" | ");
        match (&outcome.verdict, &outcome.disposition) {
            (PacketVerdict::Accept, Disposition::Local { .. }) => {
                let _ = write!(
                    s,
                    "local {} > {}",
                    outcome.packet.src_sock(),
                    outcome.packet.dst_sock()
                );
            }
            (PacketVerdict::Accept, Disposition::Sent { oif, next_hop, forwarded }) => {
                let verb = if *forwarded { "forward" } else { "sent" };
                let dev = &model.routing().interface(*oif).name;
                let _ = write!(s, "{verb} {dev} via {next_hop}");
                if outcome.packet != *input {
                    let _ = write!(
                        s,
                        " as {} > {}",
                        outcome.packet.src_sock(),
                        outcome.packet.dst_sock()
                    );
                }
            }
            (PacketVerdict::Drop(cause), _) => {
                let _ = write!(s, "DROP {}", model.describe_drop(cause));
            }
            (PacketVerdict::Reject { by, with }, _) => {
                let _ = write!(s, "REJECT {} with {}", model.rule_name(*by), with.name());
            }
            (PacketVerdict::Accept, Disposition::None) => s.push_str("ACCEPT (nowhere)"),
        }
        self.lines.push(s);
    }

    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}
