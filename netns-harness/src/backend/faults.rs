//! Link faults between nodes, as state and as the rules that carry them out.
//!
//! A fault acts on the inter-node link of two nodes (see [`super::plan`]), both directions:
//!
//! - **partition** — every packet a node would forward onto the link is dropped
//!   (`filter FORWARD -o n<j> -j DROP` in both nodes' namespaces): a silent black hole, no ICMP,
//!   routes unchanged, exactly as a cut cable between statically routed nodes;
//! - **loss** — each such packet is dropped with the given probability
//!   (`-m statistic --mode random --probability p -j DROP`, once per direction);
//! - **latency** — every packet a node forwards onto the link is handed to an NFQUEUE queue
//!   (`-j NFQUEUE --queue-num <other node's index>`, see [`queue_num`]) whose delay line
//!   ([`crate::nfqueue::Delay`], run by [`super::run`] on the node namespace's thread) releases
//!   it `add` after it arrived; both nodes do so, so each direction gets `add`. No netem: the
//!   kernels we run on may lack `sch_netem`, and one mechanism everywhere keeps runs comparable;
//! - **heal** — all of those removed from the link (or from every link).
//!
//! Rule order within a node: partition, then loss, then the queue — a packet that is dropped is
//! dropped before it is delayed (it never occupies the delay line), which is also netem's order
//! (the filter hook runs before the egress qdisc). Packets that survive loss are delayed.
//!
//! The rules live in the *node* namespaces' filter tables, which nothing else uses: the pods'
//! rules and counters are untouched. [`LinkFaults::filter_table`] renders a node's whole filter
//! table, loaded with `iptables-restore` (which replaces the table), so state and kernel cannot
//! drift apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::plan::{Plan, node_link};

/// The faults on one inter-node link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkState {
    pub partitioned: bool,
    /// Fraction of packets dropped, each direction.
    pub loss: Option<f64>,
    /// Delay added each direction (a zero delay is no fault: no rule, no delay line).
    pub latency: Option<Duration>,
}

impl LinkState {
    pub fn is_clear(&self) -> bool {
        *self == LinkState::default()
    }
}

/// Faults by link, keyed `(a, b)` node indices with `a < b`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkFaults {
    links: BTreeMap<(usize, usize), LinkState>,
}

/// The NFQUEUE queue number that delays what a node forwards to node `other`. Queues are per
/// network namespace, so the other node's index is unique within each node.
pub fn queue_num(other: usize) -> u16 {
    u16::try_from(other).unwrap_or(u16::MAX)
}

fn key(i: usize, j: usize) -> (usize, usize) {
    (i.min(j), i.max(j))
}

impl LinkFaults {
    pub fn get(&self, i: usize, j: usize) -> LinkState {
        self.links.get(&key(i, j)).copied().unwrap_or_default()
    }

    /// Changes one link's state.
    pub fn update(&mut self, i: usize, j: usize, change: impl FnOnce(&mut LinkState)) {
        let state = self.links.entry(key(i, j)).or_default();
        change(state);
        if state.is_clear() {
            self.links.remove(&key(i, j));
        }
    }

    /// Links with any fault, `(a, b)` with `a < b`.
    pub fn faulted(&self) -> Vec<(usize, usize)> {
        self.links.keys().copied().collect()
    }

    /// Node `i`'s filter table (`iptables-restore` input, replacing the table): one rule per
    /// faulted link of `i` and fault, dropping what `i` forwards onto that link.
    pub fn filter_table(&self, plan: &Plan, i: usize) -> String {
        let mut out = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for (&(a, b), state) in &self.links {
            let other = match i {
                _ if i == a => b,
                _ if i == b => a,
                _ => continue,
            };
            if plan.pair(a, b).is_none() {
                continue;
            }
            let dev = node_link(other);
            if state.partitioned {
                let _ = writeln!(out, "-A FORWARD -o {dev} -j DROP");
            }
            if let Some(rate) = state.loss.filter(|r| *r > 0.0) {
                let _ = writeln!(
                    out,
                    "-A FORWARD -o {dev} -m statistic --mode random --probability {rate:.6} -j DROP"
                );
            }
            if state.latency.is_some_and(|d| !d.is_zero()) {
                // No --queue-bypass: without a reader the kernel drops rather than pass undelayed.
                let _ = writeln!(
                    out,
                    "-A FORWARD -o {dev} -j NFQUEUE --queue-num {}",
                    queue_num(other)
                );
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let text = "description: d\ncluster: {nodes: [a, b, c]}\nsteps: [{wait: 1s}]\n";
        let world = ambient_scenarios::load_str("t.yaml", text).into_result().unwrap();
        Plan::of(&world).unwrap()
    }

    #[test]
    fn a_partition_drops_both_directions_on_that_link_only() {
        let plan = plan();
        let mut f = LinkFaults::default();
        f.update(1, 0, |s| s.partitioned = true);
        assert!(f.filter_table(&plan, 0).contains("-A FORWARD -o n1 -j DROP\n"));
        assert!(f.filter_table(&plan, 1).contains("-A FORWARD -o n0 -j DROP\n"));
        assert!(!f.filter_table(&plan, 2).contains("-A FORWARD"));
        f.update(0, 1, |s| s.loss = Some(0.25));
        assert!(f.filter_table(&plan, 1).contains(
            "-A FORWARD -o n0 -m statistic --mode random --probability 0.250000 -j DROP\n"
        ));
        // Latency queues after the drops, on the queue named by the other node.
        f.update(0, 1, |s| s.latency = Some(Duration::from_millis(50)));
        let rules: Vec<String> = f
            .filter_table(&plan, 1)
            .lines()
            .filter(|l| l.starts_with("-A"))
            .map(String::from)
            .collect();
        assert_eq!(
            rules.last().map(String::as_str),
            Some("-A FORWARD -o n0 -j NFQUEUE --queue-num 0")
        );
        assert_eq!(rules.len(), 3);
        assert!(f.filter_table(&plan, 0).contains("-A FORWARD -o n1 -j NFQUEUE --queue-num 1\n"));
        f.update(0, 1, |s| s.latency = Some(Duration::ZERO));
        assert!(!f.filter_table(&plan, 0).contains("NFQUEUE"));
        // Healing the link clears it entirely.
        f.update(0, 1, |s| *s = LinkState::default());
        assert!(f.faulted().is_empty());
        assert_eq!(
            f.filter_table(&plan, 0),
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        );
    }
}
