//! What the Outcome shows of the simulated kernel: per pod and external host that exists, its
//! conntrack table (from the model, expired entries excluded) and the counters of every rule
//! of its rule set, plus the tunnels the proxies opened (from their events, via `assemble`).

use std::collections::BTreeMap;
use std::time::Duration;

use ambient_kernel::rules::RuleRef;
use ambient_kernel::{Netns, Protocol};
use ambient_scenarios::assemble::{self, EventLog};
use ambient_scenarios::outcome::{ConntrackEntry, Counter, NetnsState, Proto, State, Tuple};

use crate::fabric::Fabric;
use crate::topology::Role;

fn tuple(t: &ambient_kernel::Tuple) -> Tuple {
    Tuple {
        src: std::net::SocketAddrV4::new(t.src, t.sport),
        dst: std::net::SocketAddrV4::new(t.dst, t.dport),
    }
}

/// A namespace's conntrack table, sorted as the Outcome orders it.
pub fn conntrack(model: &Netns, now: Duration) -> Vec<ConntrackEntry> {
    let mut out: Vec<ConntrackEntry> = model
        .conntrack()
        .entries(now)
        .into_iter()
        .filter_map(|e| {
            let proto = match e.original().proto {
                Protocol::Tcp => Proto::Tcp,
                Protocol::Udp => Proto::Udp,
                Protocol::Icmp => return None,
            };
            Some(ConntrackEntry {
                proto,
                orig: tuple(e.original()),
                reply: tuple(e.reply()),
                state: e.tcp_state(),
                mark: e.mark,
                zone: e.zone,
            })
        })
        .collect();
    out.sort();
    out
}

/// Every rule's `[packets:bytes]`, by `table/chain/N`.
pub fn counters(model: &Netns) -> BTreeMap<RuleRef, Counter> {
    let mut out = BTreeMap::new();
    for table in model.ruleset().tables() {
        for chain in &table.chains {
            for (i, rule) in chain.rules.iter().enumerate() {
                let r =
                    RuleRef { table: table.kind, chain: chain.name.clone(), index: i as u32 + 1 };
                out.insert(
                    r,
                    Counter { packets: rule.counters.packets, bytes: rule.counters.bytes },
                );
            }
        }
    }
    out
}

/// The observable state now.
pub fn state(f: &Fabric, log: &EventLog, now: Duration) -> State {
    let mut netns = BTreeMap::new();
    for slot in &f.topo.slots {
        if !slot.alive || matches!(slot.role, Role::Node { .. }) {
            continue;
        }
        netns.insert(
            slot.label.clone(),
            NetnsState { conntrack: conntrack(&slot.model, now), counters: counters(&slot.model) },
        );
    }
    State { tunnels: assemble::tunnels(log), netns }
}
