//! What must hold of every kernel run on its own, before any model is compared with it. These
//! make the differential suite a real test of the kernel side (generator, executor, readers,
//! normalisation) now, and stay useful once the model lands.
//!
//! 1. The canonical listing is a fixed point: loading it and listing again gives it back.
//! 2. No echo is ever corrupted; a short echo only happens on a stalled flow (its time ran out) or
//!    one the kernel broke with an error such as ECONNRESET (rules can do that: a REJECT
//!    tcp-reset, or NAT applied to a mid-stream packet that conntrack picked up as new) — never at
//!    a clean EOF, since the servers only close after the whole echo.
//! 3. A flow that connected and did not stall was accepted by one of the case's listeners, and
//!    unless the kernel broke it, echoed every byte and closed cleanly; a flow that did not connect
//!    was accepted by nobody.
//! 4. A listener only accepts what maps to it: the accepted socket's local address is one the
//!    listener is bound to (a transparent listener is exempt: TPROXY gives it connections to any
//!    address, keeping their original destination as local address); in the pod (where the rules
//!    are) SO_ORIGINAL_DST is exactly the address the client asked for; in the rule-less peer it
//!    is the local address itself.
//! 5. The kernel's three views of a pod connection agree: its "open" conntrack snapshot has an
//!    `ESTABLISHED` entry whose reply tuple is (listener's local address → peer address the
//!    listener saw) and whose original destination is the SO_ORIGINAL_DST answer.
//!
//! Rulesets with a `CT --zone` rule that can apply to TCP are exempt from 4's SO_ORIGINAL_DST part and from 5: when only
//! some packets of a connection get the zone (say raw PREROUTING but not OUTPUT), the kernel
//! tracks one connection as two entries in two zones, and SO_ORIGINAL_DST (which looks in the
//! default zone only) answers ENOENT or reads the entry the *reply* created — e.g. the client's own
//! address. That is kernel behaviour a model must reproduce, not a harness error.
//! 6. Accepted connections no flow claims only exist alongside stalled flows.

use std::net::Ipv4Addr;

use super::case::{Case, CloseResult, ConnectResult, EchoResult, Endpoint, Port, Side};
use super::kernel::KernelRun;
use super::normalize::zone_may_split_tcp;

/// Every invariant the run violates, in words (empty: all hold).
pub fn check(case: &Case, run: &KernelRun) -> Vec<String> {
    let obs = &run.observation;
    let mut bad = Vec::new();
    if run.relisted != obs.canonical_rules {
        bad.push(format!(
            "the canonical listing is not a fixed point of iptables-restore + iptables-save:\n--- listed\n{}--- re-listed\n{}",
            obs.canonical_rules, run.relisted
        ));
    }
    let zoned = zone_may_split_tcp(&obs.canonical_rules);
    let mut stalled = 0usize;
    for (spec, flow) in case.flows.iter().zip(&obs.flows) {
        let id = flow.id;
        if flow.timing_sensitive {
            stalled += 1;
        }
        match &flow.echo {
            Some(EchoResult::Corrupt) => bad.push(format!("flow {id}: echo corrupted")),
            Some(EchoResult::Short { timed_out: false, error: None, got, sent }) => bad.push(format!(
                "flow {id}: echo ended early ({got} of {sent} bytes) at a clean EOF, without stalling"
            )),
            _ => {}
        }
        match (&flow.connect, &flow.accepted) {
            (ConnectResult::Connected, None) if !flow.timing_sensitive => bad
                .push(format!("flow {id}: connected to {} but no listener accepted it", spec.dst)),
            (ConnectResult::Failed(kind), Some(a)) => bad.push(format!(
                "flow {id}: connect failed ({kind:?}) yet listener {} accepted it",
                a.listener
            )),
            _ => {}
        }
        let reset = matches!(&flow.echo, Some(EchoResult::Short { error: Some(_), .. }));
        if flow.connect == ConnectResult::Connected && !flow.timing_sensitive && !reset {
            let sent = spec.bytes().len() as u32;
            if flow.echo != Some(EchoResult::Intact { bytes: sent }) {
                bad.push(format!("flow {id}: echo {:?}, expected {sent} bytes intact", flow.echo));
            }
            if flow.close != Some(CloseResult::Clean) {
                bad.push(format!("flow {id}: close {:?}", flow.close));
            }
        }
        let Some(accepted) = &flow.accepted else { continue };
        let Some(listener) = case.topology.listeners.iter().find(|l| l.id == accepted.listener)
        else {
            bad.push(format!("flow {id}: accepted by unknown listener {}", accepted.listener));
            continue;
        };
        let bound = listener.addr;
        // TPROXY hands a transparent listener connections to any address and port.
        if !listener.transparent && accepted.local.port != Port::Fixed(bound.port())
            || (*bound.ip() != Ipv4Addr::UNSPECIFIED && accepted.local.ip != *bound.ip())
        {
            bad.push(format!(
                "flow {id}: listener {} bound to {bound} accepted a connection to {}",
                listener.id, accepted.local
            ));
        }
        let asked = Endpoint { ip: *spec.dst.ip(), port: Port::Fixed(spec.dst.port()) };
        match (listener.side, &accepted.original_dst) {
            // With a zone on some of a connection's packets, the default-zone entry
            // SO_ORIGINAL_DST finds may be missing or be the one the *reply* created.
            (Side::Pod, _) if zoned => {}
            (Side::Pod, Ok(orig)) if *orig != asked => bad.push(format!(
                "flow {id}: SO_ORIGINAL_DST in the pod is {orig}, the client asked for {asked}"
            )),
            (Side::Pod, Err(errno)) => {
                bad.push(format!("flow {id}: SO_ORIGINAL_DST in the pod failed with {errno}"))
            }
            (Side::Peer, Ok(orig)) if *orig != accepted.local => bad.push(format!(
                "flow {id}: SO_ORIGINAL_DST in the rule-less peer is {orig}, not the local address {}",
                accepted.local
            )),
            _ => {}
        }
        if listener.side == Side::Pod && !flow.timing_sensitive && !zoned {
            let entries = obs.conntrack_open.get(&Side::Pod).map(Vec::as_slice).unwrap_or_default();
            let found = entries.iter().any(|e| {
                e.state.as_deref() == Some("ESTABLISHED")
                    && e.reply.src == accepted.local
                    && e.reply.dst == accepted.peer
                    && accepted.original_dst.as_ref().map_or(true, |orig| e.orig.dst == *orig)
            });
            if !found {
                bad.push(format!(
                    "flow {id}: no ESTABLISHED pod conntrack entry with reply {} -> {} and original destination {:?}",
                    accepted.local, accepted.peer, accepted.original_dst
                ));
            }
        }
    }
    if obs.unclaimed_accepts.len() > stalled {
        bad.push(format!(
            "{} accepted connections no flow claims, with only {stalled} stalled flows: {:?}",
            obs.unclaimed_accepts.len(),
            obs.unclaimed_accepts
        ));
    }
    bad
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::diff::case::{AcceptObservation, sample};

    fn run(observation: super::super::case::Observation) -> KernelRun {
        KernelRun {
            relisted: observation.canonical_rules.clone(),
            observation,
            listing: String::new(),
            raw_conntrack_closed: vec![],
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_consistent_run_passes_and_each_violation_is_caught() {
        let (case, base) = sample();
        assert_eq!(check(&case, &run(base.clone())), Vec::<String>::new());

        let mut bad = run(base.clone());
        bad.relisted.push_str("-A OUTPUT -j ACCEPT\n");
        assert!(check(&case, &bad)[0].contains("fixed point"));

        let mut o = base.clone();
        o.flows[0].echo = Some(EchoResult::Corrupt);
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("corrupted")));

        let mut o = base.clone();
        o.flows[0].accepted = None;
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("no listener accepted")));

        let mut o = base.clone();
        let a = o.flows[0].accepted.as_mut().unwrap();
        a.original_dst = Ok(Endpoint { ip: Ipv4Addr::new(10, 0, 1, 9), port: Port::Fixed(80) });
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("SO_ORIGINAL_DST in the pod")));

        let mut o = base.clone();
        o.flows[0].accepted.as_mut().unwrap().listener = "pod-app".into(); // bound to 10.0.1.2:8080
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("bound to 10.0.1.2:8080")));

        let mut o = base.clone();
        o.conntrack_open.insert(Side::Pod, vec![]);
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("no ESTABLISHED pod conntrack")));

        let mut o = base;
        let stray = o.flows[0]
            .accepted
            .clone()
            .map(|a| AcceptObservation { listener: "hbone".into(), ..a });
        o.unclaimed_accepts.extend(stray);
        assert!(check(&case, &run(o)).iter().any(|v| v.contains("no flow claims")));
    }
}
