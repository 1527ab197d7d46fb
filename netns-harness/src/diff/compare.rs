//! Field-by-field comparison of two [`Observation`]s of the same case — the kernel's and the
//! model's, and the kernel's from two runs (which proves the compared fields do not depend on
//! timing).
//!
//! Compared exactly:
//! - the canonical rule text;
//! - each rule's text, and its counters when it is "first packets only" (nat table, `--ctstate
//!   NEW`), and the nat chains' policy counters; other counters are not compared. Exception: in a
//!   ruleset with a `CT --zone` rule that can apply to TCP, not even those (a zone-split connection is picked up anew
//!   mid-stream by whichever of its packets comes first: a timing matter);
//! - per flow: connect result, client port (normalised), the accepting listener, the addresses it
//!   saw (local, peer, SO_ORIGINAL_DST — not where a `CT --zone` rule can apply to TCP, as it races with
//!   the stack's first ACK); the echo's outcome; the close unless a side marked the flow
//!   `timing_sensitive`;
//! - accepted connections no flow claims;
//! - conntrack, both snapshots, both namespaces, as sorted normalised entries — except entries of
//!   flows either side marked `timing_sensitive` (retransmissions may have moved their state), and
//!   without the connection mark when a rule reached by more than first packets writes it (the
//!   mark is then the last such packet's doing: see [`connmark_follows_packets`]).

use std::collections::BTreeSet;
use std::fmt;

use super::case::{AcceptObservation, NormEntry, Observation};
use super::normalize::{connmark_follows_packets, entry_flow, zone_may_split_tcp};

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// Which field (`flows[3].accepted`, `conntrack_closed.pod`, `rules[nat/OUTPUT/2].counters`).
    pub field: String,
    /// The left observation's value.
    pub left: String,
    /// The right observation's value.
    pub right: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:\n    left:  {}\n    right: {}", self.field, self.left, self.right)
    }
}

fn push<T: fmt::Debug + PartialEq>(out: &mut Vec<Difference>, field: String, left: &T, right: &T) {
    if left != right {
        out.push(Difference { field, left: format!("{left:?}"), right: format!("{right:?}") });
    }
}

/// Every compared field where `left` and `right` differ (empty: they agree).
pub fn compare(left: &Observation, right: &Observation) -> Vec<Difference> {
    let mut out = Vec::new();
    if left.canonical_rules != right.canonical_rules {
        let (l, r) = first_different_line(&left.canonical_rules, &right.canonical_rules);
        out.push(Difference {
            field: "canonical_rules (first differing line)".into(),
            left: l,
            right: r,
        });
    }
    // A connection whose packets are split across conntrack zones (a CT --zone rule on some of
    // them) is picked up anew, mid-stream, in the zone where it has no entry — by whichever of
    // its packets gets there first (a delayed ACK or the first data segment: timing). Then nat and
    // NEW rules count that packet, whatever it is: with a zone rule, no counter is comparable.
    let zoned = zone_may_split_tcp(&left.canonical_rules);
    let first_packets = |first: bool| first && !zoned;
    let rule_keys: BTreeSet<_> =
        left.rules.iter().chain(&right.rules).map(|r| r.key.clone()).collect();
    for key in rule_keys {
        let l = left.rules.iter().find(|r| r.key == key);
        let r = right.rules.iter().find(|r| r.key == key);
        match (l, r) {
            (Some(l), Some(r)) => {
                push(&mut out, format!("rules[{key}].text"), &l.text, &r.text);
                if first_packets(l.first_packets_only || r.first_packets_only) {
                    push(&mut out, format!("rules[{key}].counters"), &l.counters, &r.counters);
                }
            }
            _ => push(&mut out, format!("rules[{key}]"), &l.map(|r| &r.text), &r.map(|r| &r.text)),
        }
    }
    for l in &left.policies {
        let r = right.policies.iter().find(|p| p.table == l.table && p.chain == l.chain);
        let field = format!("policies[{}/{}]", l.table, l.chain);
        match r {
            None => push(&mut out, field, &Some(&l.policy), &None),
            Some(r) => {
                push(&mut out, format!("{field}.policy"), &l.policy, &r.policy);
                if first_packets(l.first_packets_only || r.first_packets_only) {
                    push(&mut out, format!("{field}.counters"), &l.counters, &r.counters);
                }
            }
        }
    }
    let sensitive = timing_sensitive_flows(left, right);
    push(&mut out, "flows (ids)".into(), &ids(left), &ids(right));
    for l in &left.flows {
        let Some(r) = right.flows.iter().find(|f| f.id == l.id) else { continue };
        let field = |name: &str| format!("flows[{}].{name}", l.id);
        push(&mut out, field("connect"), &l.connect, &r.connect);
        push(&mut out, field("client_port"), &l.client_port, &r.client_port);
        if zoned {
            // SO_ORIGINAL_DST of a zone-split connection reads whatever default-zone entry exists
            // at accept time, which races with the stack's first ACK: compare the rest.
            let strip = |a: &Option<AcceptObservation>| {
                a.clone()
                    .map(|a| AcceptObservation { original_dst: Err("not compared".into()), ..a })
            };
            push(&mut out, field("accepted"), &strip(&l.accepted), &strip(&r.accepted));
        } else {
            push(&mut out, field("accepted"), &l.accepted, &r.accepted);
        }
        push(&mut out, field("echo"), &l.echo, &r.echo);
        if !sensitive.contains(&l.id) {
            push(&mut out, field("close"), &l.close, &r.close);
        }
    }
    push(&mut out, "unclaimed_accepts".into(), &left.unclaimed_accepts, &right.unclaimed_accepts);
    for (name, l, r) in [
        ("conntrack_open", &left.conntrack_open, &right.conntrack_open),
        ("conntrack_closed", &left.conntrack_closed, &right.conntrack_closed),
    ] {
        let sides: BTreeSet<_> = l.keys().chain(r.keys()).collect();
        for side in sides {
            let keep = |entries: Option<&Vec<NormEntry>>| {
                comparable_entries(left, &sensitive, entries.map_or(&[], |v| v.as_slice()))
            };
            let (le, re) = (keep(l.get(side)), keep(r.get(side)));
            if le != re {
                let only = |a: &[NormEntry], b: &[NormEntry]| {
                    a.iter()
                        .filter(|e| !b.contains(e))
                        .map(|e| format!("{e:?}"))
                        .collect::<Vec<_>>()
                };
                out.push(Difference {
                    field: format!("{name}.{side}"),
                    left: format!("only here: {:?}", only(&le, &re)),
                    right: format!("only here: {:?}", only(&re, &le)),
                });
            }
        }
    }
    out
}

/// Flows either side marked `timing_sensitive`: their close and conntrack entries are not
/// compared.
pub fn timing_sensitive_flows(left: &Observation, right: &Observation) -> BTreeSet<u32> {
    left.flows.iter().chain(&right.flows).filter(|f| f.timing_sensitive).map(|f| f.id).collect()
}

/// The part of a conntrack snapshot the comparison compares, sorted: entries of flows not in
/// `sensitive`, without the mark when `left`'s rules make marks follow packets.
pub fn comparable_entries(
    left: &Observation,
    sensitive: &BTreeSet<u32>,
    entries: &[NormEntry],
) -> Vec<NormEntry> {
    let marks_comparable = !connmark_follows_packets(&left.canonical_rules);
    let mut v: Vec<NormEntry> = entries
        .iter()
        .filter(|e| entry_flow(e).is_none_or(|id| !sensitive.contains(&id)))
        .map(|e| NormEntry { mark: if marks_comparable { e.mark } else { 0 }, ..e.clone() })
        .collect();
    v.sort();
    v
}

fn ids(o: &Observation) -> Vec<u32> {
    o.flows.iter().map(|f| f.id).collect()
}

fn first_different_line(a: &str, b: &str) -> (String, String) {
    let (mut la, mut lb) = (a.lines(), b.lines());
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => {
                return (
                    x.unwrap_or("(end of text)").to_string(),
                    y.unwrap_or("(end of text)").to_string(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::case::{ConnectResult, sample};

    #[test]
    fn equal_observations_agree_and_each_compared_field_is_seen() {
        let (_, base) = sample();
        assert!(compare(&base, &base).is_empty());

        let mut other = base.clone();
        other.rules[0].counters.packets = 2; // a first-packets-only rule
        let diffs = compare(&base, &other);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert_eq!(diffs[0].field, "rules[nat/OUTPUT/1].counters");

        let mut other = base.clone();
        other.rules[1].counters.packets = 12; // every-packet rule: not compared
        assert!(compare(&base, &other).is_empty());

        let mut other = base.clone();
        other.flows[0].connect = ConnectResult::Failed(crate::socket::ConnectErrorKind::TimedOut);
        assert!(compare(&base, &other).iter().any(|d| d.field == "flows[0].connect"));

        let mut other = base.clone();
        other.conntrack_closed.get_mut(&crate::diff::case::Side::Pod).unwrap()[0].state =
            Some("CLOSE".into());
        assert!(compare(&base, &other).iter().any(|d| d.field == "conntrack_closed.pod"));

        let mut other = base.clone();
        other.canonical_rules = other.canonical_rules.replace("15001", "15006");
        assert!(compare(&base, &other).iter().any(|d| d.field.starts_with("canonical_rules")));
    }

    #[test]
    fn comparable_entries_are_what_compare_compares() {
        let (_, base) = sample();
        let entries = base.conntrack_closed[&crate::diff::case::Side::Pod].clone();
        let none = BTreeSet::new();
        assert_eq!(comparable_entries(&base, &none, &entries), entries);
        // A timing-sensitive flow's entries drop out (seed 11235: the expected-differences
        // conditions must see the same entries as the comparison).
        assert!(comparable_entries(&base, &BTreeSet::from([0]), &entries).is_empty());
        let mut marked = entries.clone();
        marked[0].mark = 0x539;
        assert_eq!(comparable_entries(&base, &none, &marked)[0].mark, 0x539);
        let mut follows = base.clone();
        follows.canonical_rules =
            "*mangle\n-A OUTPUT -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff\nCOMMIT\n"
                .into();
        assert_eq!(comparable_entries(&follows, &none, &marked)[0].mark, 0);
    }

    #[test]
    fn timing_sensitive_flows_keep_outcome_but_not_close_or_conntrack() {
        let (_, base) = sample();
        let mut other = base.clone();
        other.flows[0].timing_sensitive = true;
        other.flows[0].close = Some(crate::diff::case::CloseResult::TimedOut);
        other.conntrack_closed.get_mut(&crate::diff::case::Side::Pod).unwrap()[0].state =
            Some("FIN_WAIT".into());
        assert!(compare(&base, &other).is_empty());
        other.flows[0].accepted = None;
        assert!(compare(&base, &other).iter().any(|d| d.field == "flows[0].accepted"));
    }
}
