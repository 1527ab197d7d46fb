//! Rules by name and position (`table/chain/N`), as scenarios, Outcomes and both backends name
//! them, and which rules only first packets of connections reach.
//!
//! These work on restore or `iptables-save` text as the kernel prints it, not on a loaded
//! [`Ruleset`](super::Ruleset): the real backend has only the text, and both backends must
//! classify a rule the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Table;

/// The longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` − 1 = 28).
const MAX_CHAIN_NAME: usize = 28;

/// A rule by position, `table/chain/N` (N 1-based, as `iptables -L --line-numbers` counts).
///
/// Serialised as that text, so it can key a JSON map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub table: Table,
    pub chain: String,
    pub index: u32,
}

impl FromStr for RuleRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let &[table, chain, index] = parts.as_slice() else {
            return Err(format!(
                "expected `table/chain/N` such as `nat/ISTIO_OUTPUT/6`, found {text:?}"
            ));
        };
        let table = table.parse()?;
        let chain_ok = !chain.is_empty()
            && chain.len() <= MAX_CHAIN_NAME
            && chain.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !chain_ok {
            return Err(format!("{chain:?} is not a chain name"));
        }
        let index = match index.parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("rule position {index:?} must be a number from 1")),
        };
        Ok(RuleRef { table, chain: chain.to_string(), index })
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.table.name(), self.chain, self.index)
    }
}

impl Serialize for RuleRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RuleRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The rules of an `iptables-restore` text, as `table/chain/N` → the rule's `-A` line, in order.
/// Only `-A` lines count (what `iptables-save` prints); an unknown table's rules are skipped.
pub fn rule_positions(restore_text: &str) -> Vec<(RuleRef, String)> {
    let mut out = Vec::new();
    let mut table = None;
    let mut counts: BTreeMap<(Table, String), u32> = BTreeMap::new();
    for line in restore_text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            table = Table::from_name(name);
        } else if let (Some(rest), Some(t)) = (line.strip_prefix("-A "), table) {
            let chain = rest.split_whitespace().next().unwrap_or("").to_string();
            let n = counts.entry((t, chain.clone())).or_default();
            *n += 1;
            out.push((RuleRef { table: t, chain, index: *n }, line.to_string()));
        }
    }
    out
}

/// Whether only first packets of connections reach a rule of `table` whose text (its `-A` line,
/// with or without `-A CHAIN`, as `iptables-save` prints it) is `spec`.
///
/// Such a rule counts one packet per connection, so its packets and bytes are a function of the
/// connections; every other rule also counts ACKs, data segments and FINs, whose number depends
/// on the TCP stack (delayed ACKs, segmentation, timing). First packets only reach:
/// - every rule of the nat table: netfilter runs nat chains once per connection, on its first
///   packet, and later packets take the binding recorded then;
/// - a rule with a positive `--ctstate` (`-m conntrack`) or `--state` (`-m state`, the same
///   test) whose states are all `NEW`. Negated (`! --ctstate NEW`), or with any other state
///   listed (`NEW,ESTABLISHED`), it sees later packets too.
pub fn counts_first_packets_only(table: Table, spec: &str) -> bool {
    if table == Table::Nat {
        return true;
    }
    let words: Vec<&str> = spec.split_whitespace().collect();
    words.windows(2).enumerate().any(|(i, w)| {
        matches!(w[0], "--ctstate" | "--state")
            && (i == 0 || words[i - 1] != "!")
            && w[1].split(',').all(|state| state == "NEW")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_refs_parse_print_and_refuse_what_is_not_one() {
        let r: RuleRef = "nat/ISTIO_OUTPUT/6".parse().unwrap();
        assert_eq!(r, RuleRef { table: Table::Nat, chain: "ISTIO_OUTPUT".into(), index: 6 });
        assert_eq!(r.to_string(), "nat/ISTIO_OUTPUT/6");
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"nat/ISTIO_OUTPUT/6\"");
        assert_eq!(serde_json::from_str::<RuleRef>("\"nat/ISTIO_OUTPUT/6\"").unwrap(), r);
        assert!("nat/ISTIO_OUTPUT/0".parse::<RuleRef>().is_err());
        assert!("nat/ISTIO_OUTPUT".parse::<RuleRef>().is_err());
        assert!("nat/ISTIO OUTPUT/1".parse::<RuleRef>().is_err());
        let err = "natx/ISTIO_OUTPUT/1".parse::<RuleRef>().unwrap_err();
        assert_eq!(err, "unknown table \"natx\"; tables are raw, mangle, nat, filter");
        assert!(serde_json::from_str::<RuleRef>("\"nat/X\"").is_err());
    }

    #[test]
    fn positions_count_per_table_and_chain() {
        let text = "*mangle\n-A OUTPUT -j A\n-A X -j B\n-A OUTPUT -j C\nCOMMIT\n\
                    *nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j D\nCOMMIT\n*bogus\n-A OUTPUT -j E\n";
        let got: Vec<(String, String)> =
            rule_positions(text).into_iter().map(|(r, line)| (r.to_string(), line)).collect();
        let want = [
            ("mangle/OUTPUT/1", "-A OUTPUT -j A"),
            ("mangle/X/1", "-A X -j B"),
            ("mangle/OUTPUT/2", "-A OUTPUT -j C"),
            ("nat/OUTPUT/1", "-A OUTPUT -j D"),
        ];
        assert_eq!(got, want.map(|(r, l)| (r.to_string(), l.to_string())));
    }

    // The cases of both classifiers this one replaces (the differential suite's and the
    // conformance check's), which had drifted: one did not know `--state`.
    #[test]
    fn nat_rules_and_positive_new_only_state_matches_count_first_packets_only() {
        for (table, spec) in [
            (Table::Nat, "-j ACCEPT"),
            (Table::Nat, "-A OUTPUT -j ISTIO_OUTPUT"),
            (Table::Filter, "-p tcp -m conntrack --ctstate NEW -j DROP"),
            (Table::Filter, "-A X -p tcp -m conntrack --ctstate NEW -j ACCEPT"),
            (Table::Mangle, "-A X -m state --state NEW -j MARK"),
        ] {
            assert!(counts_first_packets_only(table, spec), "{table} {spec}");
        }
        for (table, spec) in [
            (Table::Filter, "-m conntrack ! --ctstate NEW -j DROP"),
            (Table::Mangle, "-A X -m conntrack ! --ctstate NEW -j ACCEPT"),
            (Table::Mangle, "-m state ! --state NEW -j ACCEPT"),
            (Table::Mangle, "-m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT"),
            (Table::Mangle, "-j MARK --set-xmark 0x1/0xff"),
            (Table::Mangle, "-A PREROUTING -j ISTIO_PRERT"),
            (
                Table::Mangle,
                "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
            ),
            (Table::Raw, "-j CT --zone 1"),
        ] {
            assert!(!counts_first_packets_only(table, spec), "{table} {spec}");
        }
    }
}
