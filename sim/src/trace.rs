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
//!
//! Bulk data would bury the rest: a plain segment (an ACK or data of an established connection
//! whose conntrack state does not change, accepted) is printed the first time its *shape* —
//! namespace, addresses, flags, hooks, rules, verdict; not its length or time — appears in a
//! flow since the flow's last other line, and the line then ends with `×N`, how many segments
//! of that shape it stands for. Any change of path, rules or count still shows in a diff.

use std::fmt::Write as _;
use std::time::Duration;

use ambient_kernel::conntrack::TcpState;
use ambient_kernel::path::{Disposition, Fate, PacketVerdict};
use ambient_kernel::trace::Event;
use ambient_kernel::{Netns, Packet, Protocol, Trace};

/// One line, and for a plain segment its flow and shape.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    plain: Option<(String, String)>,
}

/// The lines of a run.
#[derive(Debug, Default, Clone)]
pub struct TraceLog {
    lines: Vec<Line>,
}

/// `12.345678`: seconds with microseconds.
pub fn stamp(t: Duration) -> String {
    format!("{}.{:06}", t.as_secs(), t.subsec_micros())
}

/// The flow key of a packet line (`<netns> <lower addr> <higher addr>`).
fn flow_of(text: &str) -> Option<String> {
    let mut w = text.split(' ');
    let _time = w.next()?;
    let label = w.next()?;
    let rest: Vec<&str> = w.collect();
    let at = rest.iter().position(|x| *x == "tcp")?;
    let a: std::net::SocketAddrV4 = rest.get(at + 1)?.parse().ok()?;
    let b: std::net::SocketAddrV4 = rest.get(at + 3)?.parse().ok()?;
    Some(format!("{label} {} {}", a.min(b), a.max(b)))
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
        self.lines.push(Line { text: format!("{} {}", stamp(t), text.as_ref()), plain: None });
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
        fate: &Fate,
        trace: &Trace,
        before: Option<TcpState>,
    ) {
        let stamp = stamp(t);
        let mut s = format!("{stamp} {label} ");
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
        let tracked = model.conntrack_enabled();
        if tracked {
            let _ = write!(s, " | ct {}", fate.ctstate.name());
        } else {
            s.push_str(" | ct off");
        }
        let after = fate.tcp_state;
        if tracked && (before.is_some() || after.is_some()) {
            let name = |st: Option<TcpState>| st.map_or("none", |x| x.name());
            if before == after {
                let _ = write!(s, " {}", name(after));
            } else {
                let _ = write!(s, " {}>{}", name(before), name(after));
            }
        }
        s.push_str(" | ");
        match (&fate.verdict, &fate.disposition) {
            (PacketVerdict::Accept, Disposition::Local { .. }) => {
                let _ = write!(s, "local {} > {}", fate.packet.src_sock(), fate.packet.dst_sock());
            }
            (PacketVerdict::Accept, Disposition::Sent { oif, next_hop, forwarded }) => {
                let verb = if *forwarded { "forward" } else { "sent" };
                let dev = &model.routing().interface(*oif).name;
                let _ = write!(s, "{verb} {dev} via {next_hop}");
                if fate.packet != *input {
                    let _ =
                        write!(s, " as {} > {}", fate.packet.src_sock(), fate.packet.dst_sock());
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
        let f = input.tcp_flags;
        let plain = fate.accepted()
            && input.proto == Protocol::Tcp
            && (f == ambient_kernel::TcpFlags::A || f == ambient_kernel::TcpFlags::PA)
            && (!tracked
                || (before.is_some()
                    && before == after
                    && fate.ctstate == ambient_kernel::CtState::Established));
        let plain = plain.then(|| {
            let (a, b) = (input.src_sock(), input.dst_sock());
            let flow = format!("{label} {} {}", a.min(b), a.max(b));
            let shape = s[stamp.len()..].replace(&format!(" len={} ", input.len), " ");
            let shape = match &fate.disposition {
                Disposition::Local { .. } => shape,
                _ => shape.replace(&format!(" len={}", fate.packet.len), ""),
            };
            (flow, shape)
        });
        self.lines.push(Line { text: s, plain });
    }

    /// The trace text, plain segments collapsed (see the module docs).
    pub fn text(&self) -> String {
        use std::collections::BTreeMap;
        let mut out: Vec<(String, u64)> = Vec::with_capacity(self.lines.len());
        // (flow, shape) -> index in `out` of the line standing for it, in the current epoch.
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for line in &self.lines {
            match &line.plain {
                Some(key) => {
                    if let Some(&i) = seen.get(key) {
                        out[i].1 += 1;
                    } else {
                        seen.insert(key.clone(), out.len());
                        out.push((line.text.clone(), 1));
                    }
                }
                None => {
                    // A line of its own ends the epoch of the flows it belongs to.
                    if let Some(f) = flow_of(&line.text) {
                        seen.retain(|(flow, _), _| *flow != f);
                    }
                    out.push((line.text.clone(), 0));
                }
            }
        }
        let mut s = String::new();
        for (text, n) in out {
            s.push_str(&text);
            if n > 1 {
                let _ = write!(s, " ×{n}");
            }
            s.push('\n');
        }
        s
    }

    /// Lines recorded (before collapsing).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}
