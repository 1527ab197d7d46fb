//! `iptables-save -c` output as data — per-rule counters keyed by `table/chain/position` and the
//! canonical rule text — plus loading rules with `iptables-restore` in a namespace.
//!
//! The parser is strict: anything that is not a comment, `*table`, `:CHAIN POLICY [p:b]`,
//! `[p:b] -A CHAIN …` or `COMMIT` in the expected order is an error naming the line. Counters are
//! optional per line so `iptables-save` without `-c` parses too.
//!
//! [`Ruleset::canonical_text`] is the comparison form: tables in the order raw, mangle, nat,
//! filter; built-in chains in their standard order, then user chains sorted by name; rules in
//! position order; no comments; every counter `[0:0]`. It is valid `iptables-restore` input, and
//! the kernel's listing order of user chains and tables (which differs between backends) does not
//! show in it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::netns::Netns;
use crate::tools::{ToolError, run_tool_in};

/// The tables, as the kernel model names them (canonical order: raw, mangle, nat, filter).
pub use ambient_kernel::{RuleRef, Table};

/// Packet and byte counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// A chain declaration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Policy of a built-in chain (`ACCEPT`/`DROP`); `None` for a user chain (`-`).
    pub policy: Option<String>,
    /// The policy's counters (packets that fell off the end of a built-in chain).
    pub counters: Counters,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Its chain.
    pub chain: String,
    /// 1-based position within the chain.
    pub position: u32,
    /// Its counters.
    pub counters: Counters,
    /// Everything after `-A <chain> `, as the kernel's tool printed it.
    pub spec: String,
}

impl Rule {
    /// The rule as an `iptables-restore` line without counters: `-A <chain> <spec>`.
    pub fn text(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }
}

/// One table's chains and rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDump {
    /// Chains in listing order.
    pub chains: Vec<Chain>,
    /// Rules in listing order.
    pub rules: Vec<Rule>,
}

/// A parsed `iptables-save` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// The tables present, keyed in canonical order.
    pub tables: BTreeMap<Table, TableDump>,
}

/// An `iptables-save` line the parser did not expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("iptables-save output, line {line}: {problem}: {text:?}")]
pub struct SaveParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
    /// What was wrong and what was expected.
    pub problem: String,
}

impl Ruleset {
    /// Parses `iptables-save [-c]` output.
    pub fn parse(text: &str) -> Result<Ruleset, SaveParseError> {
        let mut tables = BTreeMap::new();
        let mut current: Option<(Table, TableDump)> = None;
        for (i, raw) in text.lines().enumerate() {
            let err =
                |problem: String| SaveParseError { line: i + 1, text: raw.to_string(), problem };
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if current.is_some() {
                    return Err(err("a table starts before the previous one's COMMIT".into()));
                }
                let table = Table::from_name(name).ok_or_else(|| {
                    err(format!("unknown table {name:?} (expected raw, mangle, nat or filter)"))
                })?;
                if tables.contains_key(&table) {
                    return Err(err(format!("table {name} appears twice")));
                }
                current = Some((table, TableDump::default()));
                continue;
            }
            let Some((table, dump)) = current.as_mut() else {
                return Err(err("expected a comment or `*table`".into()));
            };
            if line == "COMMIT" {
                let (table, dump) = current.take().expect("checked above");
                tables.insert(table, dump);
            } else if let Some(decl) = line.strip_prefix(':') {
                dump.chains.push(parse_chain(decl).map_err(err)?);
            } else {
                let (counters, rest) = split_counters(line).map_err(err)?;
                let Some(rest) = rest.strip_prefix("-A ") else {
                    return Err(err("expected `:CHAIN`, `[p:b] -A CHAIN …` or COMMIT".into()));
                };
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                if !dump.chains.iter().any(|c| c.name == chain) {
                    return Err(err(format!("rule in undeclared chain {chain} of table {table}")));
                }
                let position = dump.rules.iter().filter(|r| r.chain == chain).count() as u32 + 1;
                dump.rules.push(Rule {
                    chain: chain.to_string(),
                    position,
                    counters,
                    spec: spec.trim().to_string(),
                });
            }
        }
        if let Some((table, _)) = current {
            return Err(SaveParseError {
                line: text.lines().count(),
                text: String::new(),
                problem: format!("table {table} has no COMMIT"),
            });
        }
        Ok(Ruleset { tables })
    }

    /// Every rule with its key, in canonical order.
    pub fn rules(&self) -> Vec<(RuleRef, &Rule)> {
        let mut out = Vec::new();
        for (table, dump) in &self.tables {
            for chain in canonical_chain_order(*table, dump) {
                for rule in dump.rules.iter().filter(|r| r.chain == chain) {
                    let key = RuleRef { table: *table, chain: chain.clone(), index: rule.position };
                    out.push((key, rule));
                }
            }
        }
        out
    }

    /// Per-rule counters keyed by `table/chain/position`.
    pub fn counters(&self) -> BTreeMap<RuleRef, Counters> {
        self.rules().into_iter().map(|(key, rule)| (key, rule.counters)).collect()
    }

    /// The canonical text (see the module docs).
    pub fn canonical_text(&self) -> String {
        let mut out = String::new();
        for (table, dump) in &self.tables {
            let _ = writeln!(out, "*{table}");
            let order = canonical_chain_order(*table, dump);
            for name in &order {
                let chain = dump.chains.iter().find(|c| &c.name == name).expect("listed");
                let _ = writeln!(
                    out,
                    ":{} {} [0:0]",
                    chain.name,
                    chain.policy.as_deref().unwrap_or("-")
                );
            }
            for name in &order {
                for rule in dump.rules.iter().filter(|r| &r.chain == name) {
                    let _ = writeln!(out, "{}", rule.text());
                }
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Built-in chains in standard order, then user chains by name.
fn canonical_chain_order(table: Table, dump: &TableDump) -> Vec<String> {
    let builtins: Vec<&str> = table.builtin_hooks().iter().map(|h| h.name()).collect();
    let mut order: Vec<String> = builtins
        .iter()
        .filter(|b| dump.chains.iter().any(|c| c.name == **b))
        .map(|b| b.to_string())
        .collect();
    let mut user: Vec<String> = dump
        .chains
        .iter()
        .filter(|c| !builtins.contains(&c.name.as_str()))
        .map(|c| c.name.clone())
        .collect();
    user.sort();
    order.extend(user);
    order
}

fn parse_chain(decl: &str) -> Result<Chain, String> {
    let mut parts = decl.split_whitespace();
    let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
        return Err("expected `:CHAIN POLICY [packets:bytes]`".into());
    };
    let counters = match parts.next() {
        Some(c) => parse_counter_pair(c)?,
        None => Counters::default(),
    };
    if parts.next().is_some() {
        return Err("trailing text after the chain's counters".into());
    }
    let policy = match policy {
        "-" => None,
        "ACCEPT" | "DROP" => Some(policy.to_string()),
        other => return Err(format!("unknown chain policy {other:?}")),
    };
    Ok(Chain { name: name.to_string(), policy, counters })
}

fn split_counters(line: &str) -> Result<(Counters, &str), String> {
    if line.starts_with('[') {
        let end = line.find(']').ok_or("unterminated `[packets:bytes]`")?;
        Ok((parse_counter_pair(&line[..=end])?, line[end + 1..].trim_start()))
    } else {
        Ok((Counters::default(), line))
    }
}

fn parse_counter_pair(text: &str) -> Result<Counters, String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("expected `[packets:bytes]`, got {text:?}"))?;
    let (p, b) =
        inner.split_once(':').ok_or_else(|| format!("expected `[packets:bytes]`, got {text:?}"))?;
    let num = |s: &str| s.parse::<u64>().map_err(|_| format!("bad counter {s:?} in {text:?}"));
    Ok(Counters { packets: num(p)?, bytes: num(b)? })
}

/// Loads `text` with `iptables-restore` in the current thread's namespace; `noflush` keeps the
/// tables' existing rules (`--noflush`), otherwise each table present in `text` is replaced.
/// Call from a namespace job.
pub async fn restore_in(text: &str, noflush: bool) -> Result<(), ToolError> {
    let args: &[&str] = if noflush { &["--noflush"] } else { &[] };
    run_tool_in("iptables-restore", args, Some(text.as_bytes())).await.map(drop)
}

/// `iptables-save -c` in the current thread's namespace, parsed. Call from a namespace job.
pub async fn save_in() -> Result<(Ruleset, String), IptablesError> {
    let out = run_tool_in("iptables-save", &["-c"], None).await?;
    let ruleset = Ruleset::parse(&out.stdout)?;
    Ok((ruleset, out.stdout))
}

/// Reading the rules back failed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Its output did not parse.
    #[error(transparent)]
    Parse(#[from] SaveParseError),
}

impl From<crate::netns::NetnsError> for IptablesError {
    fn from(e: crate::netns::NetnsError) -> Self {
        IptablesError::Tool(ToolError::Netns(e))
    }
}

impl Netns {
    /// `iptables-restore [--noflush]` in this namespace.
    pub fn iptables_restore(&self, text: &str, noflush: bool) -> Result<(), ToolError> {
        let text = text.to_string();
        self.run(move || async move { restore_in(&text, noflush).await })?
    }

    /// `iptables-save -c` in this namespace: the parsed rules and the raw text.
    pub fn iptables_save(&self) -> Result<(Ruleset, String), IptablesError> {
        self.run(|| async { save_in().await })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 05:43:03 2026
*mangle
:PREROUTING ACCEPT [5:300]
:INPUT ACCEPT [5:300]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [5:300]
:POSTROUTING ACCEPT [5:300]
:ZED - [0:0]
:ALPHA - [0:0]
[2:120] -A OUTPUT -m owner --socket-exists -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
[1:60] -A OUTPUT -p tcp -m tcp --dport 80 -j ZED
[0:0] -A ZED -m comment --comment \"hi there\" -j RETURN
[3:180] -A ALPHA -j RETURN
COMMIT
# Completed on Thu Nov 26 05:43:03 2026
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
";

    #[test]
    fn parses_counters_keys_and_text() {
        let rs = Ruleset::parse(SAVED).unwrap();
        let counters = rs.counters();
        let key = |c: &str, p| RuleRef { table: Table::Mangle, chain: c.into(), index: p };
        assert_eq!(counters[&key("OUTPUT", 1)], Counters { packets: 2, bytes: 120 });
        assert_eq!(counters[&key("OUTPUT", 2)], Counters { packets: 1, bytes: 60 });
        assert_eq!(counters[&key("ZED", 1)], Counters::default());
        assert_eq!(key("ZED", 1).to_string(), "mangle/ZED/1");
        let mangle = &rs.tables[&Table::Mangle];
        assert_eq!(mangle.chains[0].counters, Counters { packets: 5, bytes: 300 });
        assert_eq!(mangle.rules[2].spec, "-m comment --comment \"hi there\" -j RETURN");
    }

    #[test]
    fn canonical_text_orders_tables_and_user_chains_and_drops_counters() {
        let rs = Ruleset::parse(SAVED).unwrap();
        let text = rs.canonical_text();
        assert!(text.starts_with(
            "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*mangle\n"
        ));
        let alpha = text.find(":ALPHA - [0:0]").unwrap();
        let zed = text.find(":ZED - [0:0]").unwrap();
        assert!(alpha < zed);
        assert!(text.find("-A ALPHA -j RETURN").unwrap() < text.find("-A ZED").unwrap());
        assert!(!text.contains("[2:120]") && !text.contains('#'));
        // The canonical text is a fixed point of parse + canonicalise.
        assert_eq!(Ruleset::parse(&text).unwrap().canonical_text(), text);
    }

    #[test]
    fn rejects_unexpected_lines_with_their_number() {
        let bad = "*filter\n:INPUT ACCEPT [0:0]\n-I INPUT 1 -j ACCEPT\nCOMMIT\n";
        let err = Ruleset::parse(bad).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().contains("expected"), "{err}");
        let err = Ruleset::parse("*security\nCOMMIT\n").unwrap_err();
        assert!(err.problem.contains("unknown table"), "{err}");
        let err = Ruleset::parse("*filter\n:INPUT ACCEPT [0:0]\n").unwrap_err();
        assert!(err.problem.contains("no COMMIT"), "{err}");
        let err = Ruleset::parse("*nat\n[1:2] -A NOPE -j ACCEPT\nCOMMIT\n").unwrap_err();
        assert!(err.problem.contains("undeclared chain"), "{err}");
        let err = Ruleset::parse("*nat\n:OUTPUT ACCEPT [x:2]\nCOMMIT\n").unwrap_err();
        assert!(err.problem.contains("bad counter"), "{err}");
    }
}
