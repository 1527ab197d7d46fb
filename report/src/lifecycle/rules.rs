//! Finding rules in a captured pod's rule set by what they do, to name them by position
//! (`ISTIO_OUTPUT rule 6`) the way `iptables-save -c` counters and scenario `counters` do.

use ambient_scenarios::values::Table;
use ambient_scenarios::world::Capture;

/// `nat OUTPUT rule 1 → ISTIO_OUTPUT rule 6: REDIRECT → 127.0.0.1:15001`, from the pod's rules.
pub(super) fn redirect(capture: &Capture, builtin: &str, chain: &str, port: u16) -> Option<String> {
    let rules = capture.rule_positions();
    let jump = rules.iter().find(|(r, text)| {
        r.table == Table::Nat && r.chain == builtin && text.ends_with(&format!("-j {chain}"))
    })?;
    let target = rules.iter().find(|(r, text)| {
        r.table == Table::Nat
            && r.chain == chain
            && text.contains(&format!("-j REDIRECT --to-ports {port}"))
            && !text.contains("--dport 53")
    })?;
    let to = if builtin == "OUTPUT" { format!("127.0.0.1:{port}") } else { format!("port {port}") };
    Some(format!(
        "nat {builtin} rule {} → {chain} rule {}: REDIRECT → {to}",
        jump.0.index, target.0.index
    ))
}

/// `ISTIO_PRERT rule 1`: the first rule of `table`/`chain` whose text contains `needle`.
pub(super) fn find(capture: &Capture, table: Table, chain: &str, needle: &str) -> Option<String> {
    capture
        .rule_positions()
        .into_iter()
        .find(|(r, text)| r.table == table && r.chain == chain && text.contains(needle))
        .map(|(r, _)| format!("{} rule {}", r.chain, r.index))
}
