//! The expected-differences file (`tests/differential-expected.yaml`): differences between the
//! kernel and the model that are understood, each with a reason a reader can check and a precise
//! matcher — which field (a pattern over [`Difference::field`]) and every condition that must
//! hold of the case and both observations. A difference that no entry matches fails its case;
//! nothing is dropped silently, and the suite prints how many differences each entry covered.
//!
//! ```yaml
//! - id: zone-split-reset-out-of-window
//!   reason: "…"
//!   field: "conntrack_closed.pod"          # `*` matches any run of characters
//!   when: [ruleset-may-split-tcp-across-zones, only-kernel-has-syn-sent-entries-of-reset-flows]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use ambient_netns::diff::case::{Case, CloseOrder, ConnectResult, NormEntry, Observation, Side};
use ambient_netns::diff::compare::{Difference, comparable_entries, timing_sensitive_flows};
use ambient_netns::diff::normalize::{entry_flow, zone_may_split_tcp};
use ambient_netns::socket::ConnectErrorKind;
use serde::Deserialize;

/// One understood difference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    /// Short name, printed in the summary.
    pub id: String,
    /// Why the kernel and the model differ here (kernel behaviour the model does not have, or
    /// timing), in words a reader can check.
    pub reason: String,
    /// The differing field (`flows[3].connect`, `conntrack_closed.pod`); `*` matches any run of
    /// characters.
    pub field: String,
    /// Conditions that must all hold (at least one).
    pub when: Vec<Condition>,
}

/// A condition on the case and the two observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Condition {
    /// The kernel's canonical listing has a `CT --zone` rule that can apply to TCP
    /// (`normalize::zone_may_split_tcp`).
    RulesetMaySplitTcpAcrossZones,
    /// For a conntrack field (`conntrack_open.SIDE` / `conntrack_closed.SIDE`): the model has no
    /// entry the kernel lacks, and every entry only the kernel has is an unreplied `SYN_SENT`
    /// entry of a flow that closed with a reset (`client-reset`).
    OnlyKernelHasSynSentEntriesOfResetFlows,
    /// For a `conntrack_closed` field: the entries only one side has pair up as the same
    /// connection, of a flow whose connect timed out on both sides, `CLOSE` in the kernel where
    /// the model still has it `SYN_RECV` (a reply was seen: the server's SYN-ACK came and was
    /// dropped before the client).
    ResetBySynAckRetransmissionAfterConnectTimedOut,
}

impl Condition {
    fn holds(self, case: &Case, kernel: &Observation, model: &Observation, field: &str) -> bool {
        match self {
            Condition::RulesetMaySplitTcpAcrossZones => zone_may_split_tcp(&kernel.canonical_rules),
            Condition::OnlyKernelHasSynSentEntriesOfResetFlows => {
                let Some((kernel_only, model_only)) = conntrack_sides(kernel, model, field) else {
                    return false;
                };
                let reset_flows: BTreeSet<u32> = case
                    .flows
                    .iter()
                    .filter(|f| f.close == CloseOrder::ClientReset)
                    .map(|f| f.id)
                    .collect();
                model_only.is_empty()
                    && !kernel_only.is_empty()
                    && kernel_only.iter().all(|e| {
                        e.state.as_deref() == Some("SYN_SENT")
                            && e.unreplied
                            && entry_flow(e).is_some_and(|id| reset_flows.contains(&id))
                    })
            }
            Condition::ResetBySynAckRetransmissionAfterConnectTimedOut => {
                reset_by_syn_ack_retransmission(case, kernel, model, field)
            }
        }
    }
}

fn reset_by_syn_ack_retransmission(
    case: &Case,
    kernel: &Observation,
    model: &Observation,
    field: &str,
) -> bool {
    if !field.starts_with("conntrack_closed.") {
        return false;
    }
    let Some((kernel_only, model_only)) = conntrack_sides(kernel, model, field) else {
        return false;
    };
    let timed_out = |o: &Observation, id: u32| {
        o.flows
            .iter()
            .any(|f| f.id == id && f.connect == ConnectResult::Failed(ConnectErrorKind::TimedOut))
    };
    let gave_up = |e: &NormEntry| {
        entry_flow(e).is_some_and(|id| {
            case.flows.iter().any(|f| f.id == id) && timed_out(kernel, id) && timed_out(model, id)
        })
    };
    let same_connection = |a: &NormEntry, b: &NormEntry| {
        (&a.proto, &a.orig, &a.reply, &a.zone) == (&b.proto, &b.orig, &b.reply, &b.zone)
    };
    let state = |e: &NormEntry, s: &str| e.state.as_deref() == Some(s) && !e.unreplied;
    let twins = |k: &NormEntry, m: &NormEntry| {
        same_connection(k, m) && state(k, "CLOSE") && state(m, "SYN_RECV") && gave_up(k)
    };
    kernel_only.len() == model_only.len()
        && !kernel_only.is_empty()
        && kernel_only.iter().all(|k| model_only.iter().any(|m| twins(k, m)))
        && model_only.iter().all(|m| kernel_only.iter().any(|k| twins(k, m)))
}

/// The entries only the kernel has and only the model has, for a conntrack field.
fn conntrack_sides(
    kernel: &Observation,
    model: &Observation,
    field: &str,
) -> Option<(Vec<NormEntry>, Vec<NormEntry>)> {
    let (snapshot, side) = field.split_once('.')?;
    let side = match side {
        "pod" => Side::Pod,
        "peer" => Side::Peer,
        _ => return None,
    };
    let pick = |o: &Observation| match snapshot {
        "conntrack_open" => o.conntrack_open.get(&side).cloned(),
        "conntrack_closed" => o.conntrack_closed.get(&side).cloned(),
        _ => None,
    };
    // The entries the comparison compares (compare::comparable_entries), not the raw snapshot.
    let sensitive = timing_sensitive_flows(kernel, model);
    let compared =
        |o: &Observation| comparable_entries(kernel, &sensitive, &pick(o).unwrap_or_default());
    let (k, m) = (compared(kernel), compared(model));
    let only = |a: &[NormEntry], b: &[NormEntry]| {
        a.iter().filter(|e| !b.contains(e)).cloned().collect::<Vec<_>>()
    };
    Some((only(&k, &m), only(&m, &k)))
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// Reads and checks the file: every entry has an id, a reason, a field and conditions.
pub fn load(path: &Path) -> Result<Vec<Known>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let known: Vec<Known> =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut ids = BTreeSet::new();
    for k in &known {
        let problem = if k.id.trim().is_empty() {
            Some("an empty id")
        } else if k.reason.trim().len() < 40 {
            Some("no reason (or one too short to check)")
        } else if k.field.trim().is_empty() {
            Some("no field")
        } else if k.when.is_empty() {
            Some("no condition (an entry must say exactly when it applies)")
        } else if !ids.insert(k.id.clone()) {
            Some("a duplicate id")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("{}: entry {:?} has {problem}", path.display(), k.id));
        }
    }
    Ok(known)
}

/// The entry that explains `diff`, if any.
pub fn explain<'k>(
    known: &'k [Known],
    case: &Case,
    kernel: &Observation,
    model: &Observation,
    diff: &Difference,
) -> Option<&'k Known> {
    known.iter().find(|k| {
        glob(&k.field, &diff.field)
            && k.when.iter().all(|c| c.holds(case, kernel, model, &diff.field))
    })
}

/// Checks of the matcher itself, run as a case of the suite (the target has no libtest).
pub fn self_check() -> Result<(), String> {
    let cases = [
        ("conntrack_closed.pod", "conntrack_closed.pod", true),
        ("conntrack_*.pod", "conntrack_open.pod", true),
        ("conntrack_*.pod", "conntrack_open.peer", false),
        ("flows[*].connect", "flows[3].connect", true),
        ("flows[*].connect", "flows[3].echo", false),
        ("*", "anything", true),
    ];
    for (pattern, text, want) in cases {
        if glob(pattern, text) != want {
            return Err(format!("glob({pattern:?}, {text:?}) is not {want}"));
        }
    }
    retransmission_check()
}

/// The SYN-ACK-retransmission condition on observations like seed 20841's under load.
fn retransmission_check() -> Result<(), String> {
    use ambient_netns::diff::case::{FlowSpec, Topology};
    let flow = FlowSpec {
        id: 3,
        from: Side::Pod,
        dst: "10.96.0.10:80".parse().map_err(|e| format!("{e}"))?,
        mark: None,
        src_port: None,
        payload: 1,
        close: CloseOrder::ClientFirst,
    };
    let case =
        Case { seed: 0, ruleset: String::new(), topology: Topology::standard(), flows: vec![flow] };
    let observation = |state: &str, connect: serde_json::Value| {
        let entry = serde_json::json!({
            "proto": "tcp", "state": state,
            "orig": {"src": {"ip": "10.0.1.2", "port": "eph:3"}, "dst": {"ip": "10.96.0.10", "port": "80"}},
            "reply": {"src": {"ip": "10.96.0.10", "port": "80"}, "dst": {"ip": "10.0.1.2", "port": "eph:3"}},
            "unreplied": false, "assured": false, "mark": 0, "zone": null
        });
        serde_json::from_value::<Observation>(serde_json::json!({
            "seed": 0, "canonical_rules": "", "rules": [], "policies": [],
            "flows": [{"id": 3, "client_port": "eph:3", "connect": connect, "accepted": null,
                       "echo": null, "close": null, "timing_sensitive": false}],
            "unclaimed_accepts": [],
            "conntrack_open": {"pod": [], "peer": []},
            "conntrack_closed": {"pod": [entry], "peer": []}
        }))
        .map_err(|e| format!("a test observation: {e}"))
    };
    let timed_out = serde_json::json!({"failed": "timed-out"});
    let kernel = observation("CLOSE", timed_out.clone())?;
    let model = observation("SYN_RECV", timed_out)?;
    let cond = Condition::ResetBySynAckRetransmissionAfterConnectTimedOut;
    if !cond.holds(&case, &kernel, &model, "conntrack_closed.pod") {
        return Err("the SYN-ACK retransmission condition misses seed 20841's shape".into());
    }
    let field = "conntrack_open.pod";
    let refused = serde_json::json!({"failed": "refused"});
    let other = observation("SYN_RECV", refused)?;
    if cond.holds(&case, &kernel, &model, field)
        || cond.holds(&case, &kernel, &other, "conntrack_closed.pod")
    {
        return Err("the SYN-ACK retransmission condition holds beyond timed-out connects in the closed snapshot".into());
    }
    Ok(())
}
