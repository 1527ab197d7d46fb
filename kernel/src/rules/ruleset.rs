//! Applying restore commands to a ruleset (`iptables-restore [--noflush] [-c]` semantics) and
//! the load-time checks the kernel makes.
//!
//! Without `--noflush` every table named in the input is replaced; with it, a `:CHAIN` line
//! flushes an existing user chain, a built-in chain line only sets the policy, and rules are
//! appended to what is there (both checked against iptables 1.8.9). Counters in the text are
//! kept only with `counters` (`-c`). The whole input applies atomically: on any error the
//! ruleset is unchanged.

use std::collections::BTreeMap;

use super::parse::{Command, ParseError, TableBlock, parse_restore};
use super::{Chain, Counters, Hook, Match, Policy, Rule, Ruleset, Table, TableRules, Target};

/// Options of `iptables-restore`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// `--noflush`: add to the existing tables instead of replacing them.
    pub noflush: bool,
    /// `-c`: take chain and rule counters from the text.
    pub counters: bool,
}

/// Deepest chain nesting the model evaluates (the nf_tables jump stack holds 16).
pub const MAX_JUMP_DEPTH: usize = 16;

impl Ruleset {
    /// Applies restore text. On error nothing changes.
    pub fn restore(&mut self, text: &str, opts: RestoreOptions) -> Result<(), ParseError> {
        let blocks = parse_restore(text)?;
        let mut next = self.clone();
        for block in blocks {
            next.apply_block(block, opts)?;
        }
        next.relink()?;
        *self = next;
        Ok(())
    }

    /// A ruleset from restore text (as loaded into a fresh network namespace).
    pub fn from_restore(text: &str) -> Result<Self, ParseError> {
        let mut r = Ruleset::default();
        r.restore(text, RestoreOptions::default())?;
        Ok(r)
    }

    fn apply_block(&mut self, block: TableBlock, opts: RestoreOptions) -> Result<(), ParseError> {
        let kind = block.table;
        if !opts.noflush {
            self.tables[kind as usize] = Some(TableRules::new(kind));
        }
        let table = self.ensure_table(kind);
        for cmd in block.commands {
            table.apply(cmd, opts)?;
        }
        Ok(())
    }

    /// Resolves jump targets to chain indices and checks loops, nesting depth and where
    /// targets and matches may be used. Called after every change.
    pub fn relink(&mut self) -> Result<(), ParseError> {
        for table in self.tables.iter_mut().flatten() {
            table.relink()?;
        }
        Ok(())
    }
}

impl TableRules {
    fn chain_or_err(&self, line: usize, name: &str) -> Result<usize, ParseError> {
        self.chain_index(name).ok_or_else(|| {
            ParseError::new(line, name, format!("an existing chain of table `{}`", self.kind))
        })
    }

    /// Inserts a user chain at its sorted place (after the built-ins).
    fn add_user_chain(&mut self, name: &str) -> usize {
        let builtins = self.kind.builtin_hooks().len();
        let pos = builtins
            + self.chains[builtins..].partition_point(|c| c.name.as_bytes() < name.as_bytes());
        self.chains.insert(pos, Chain::user(name));
        pos
    }

    /// iptables refuses `-o` on chains named PREROUTING/INPUT and `-i` on OUTPUT/POSTROUTING
    /// (by name, whatever the table; user chains are not checked).
    fn check_direction(chain: &str, rule: &Rule) -> Result<(), ParseError> {
        let (bad, opt) = match chain {
            "PREROUTING" | "INPUT" => (rule.oif.is_some(), "-o"),
            "OUTPUT" | "POSTROUTING" => (rule.iif.is_some(), "-i"),
            _ => (false, ""),
        };
        if bad {
            return Err(ParseError::new(rule.line, opt, format!("no `{opt}` in chain {chain}")));
        }
        Ok(())
    }

    fn check_jump(&self, rule: &Rule) -> Result<(), ParseError> {
        if let Target::Jump(c) | Target::Goto(c) = &rule.target {
            match self.chain_index(&c.name) {
                Some(i) if self.chains[i].builtin.is_none() => {}
                _ => {
                    return Err(ParseError::new(
                        rule.line,
                        &c.name,
                        format!("a user-defined chain of table `{}` to jump to", self.kind),
                    ));
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, cmd: Command, opts: RestoreOptions) -> Result<(), ParseError> {
        let clean = |mut rule: Rule| {
            if !opts.counters {
                rule.counters = Counters::default();
            }
            rule
        };
        match cmd {
            Command::Declare { line, name, policy, counters } => {
                match (self.chain_index(&name), policy) {
                    (Some(i), Some(p)) if self.chains[i].builtin.is_some() => {
                        self.chains[i].policy = p;
                        self.chains[i].policy_counted = true;
                        if opts.counters {
                            self.chains[i].policy_counters = counters;
                        }
                    }
                    // A policy on a user chain is ignored, as iptables-restore does.
                    (Some(i), _) if self.chains[i].builtin.is_none() => {
                        self.chains[i].rules.clear();
                    }
                    (None, _) => {
                        self.add_user_chain(&name);
                    }
                    (Some(i), _) => {
                        return Err(ParseError::new(
                            line,
                            "-",
                            format!(
                                "a policy (ACCEPT or DROP) for built-in chain {}",
                                self.chains[i].name
                            ),
                        ));
                    }
                }
            }
            Command::NewChain { line, name } => {
                if self.chain_index(&name).is_some() {
                    return Err(ParseError::new(
                        line,
                        &name,
                        "a chain name not in use (chain already exists)",
                    ));
                }
                self.add_user_chain(&name);
            }
            Command::Append { chain, rule } => {
                let i = self.chain_or_err(rule.line, &chain)?;
                Self::check_direction(&chain, &rule)?;
                self.check_jump(&rule)?;
                self.chains[i].rules.push(clean(rule));
            }
            Command::Insert { chain, pos, rule } => {
                let i = self.chain_or_err(rule.line, &chain)?;
                Self::check_direction(&chain, &rule)?;
                self.check_jump(&rule)?;
                let len = self.chains[i].rules.len();
                if pos > len + 1 {
                    return Err(ParseError::new(
                        rule.line,
                        pos.to_string(),
                        format!("a rule number from 1 to {} (index of insertion too big)", len + 1),
                    ));
                }
                self.chains[i].rules.insert(pos - 1, clean(rule));
            }
            Command::Delete { chain, rule } => {
                let i = self.chain_or_err(rule.line, &chain)?;
                let found = self.chains[i].rules.iter().position(|r| same_rule(r, &rule));
                let at = found.ok_or_else(|| {
                    ParseError::new(rule.line, "-D", format!("a rule that exists in chain {chain}"))
                })?;
                self.chains[i].rules.remove(at);
            }
            Command::DeleteNum { line, chain, pos } => {
                let i = self.chain_or_err(line, &chain)?;
                if pos > self.chains[i].rules.len() {
                    return Err(ParseError::new(
                        line,
                        pos.to_string(),
                        format!("a rule number that exists in chain {chain}"),
                    ));
                }
                self.chains[i].rules.remove(pos - 1);
            }
            Command::SetPolicy { line, chain, policy } => {
                let i = self.chain_or_err(line, &chain)?;
                if self.chains[i].builtin.is_none() {
                    return Err(ParseError::new(
                        line,
                        &chain,
                        "a built-in chain (user chains have no policy)",
                    ));
                }
                if self.kind == Table::Nat && policy == Policy::Drop {
                    return Err(ParseError::new(
                        line,
                        "DROP",
                        "ACCEPT (iptables refuses a DROP policy set with -P in the nat table)",
                    ));
                }
                self.chains[i].policy = policy;
                self.chains[i].policy_counted = true;
            }
            Command::Flush { line, chain } => match chain {
                Some(name) => {
                    let i = self.chain_or_err(line, &name)?;
                    self.chains[i].rules.clear();
                }
                None => self.chains.iter_mut().for_each(|c| c.rules.clear()),
            },
            Command::DeleteChain { line, chain } => {
                let victims: Vec<String> = match chain {
                    Some(name) => {
                        let i = self.chain_or_err(line, &name)?;
                        if self.chains[i].builtin.is_some() {
                            return Err(ParseError::new(
                                line,
                                &name,
                                "a user-defined chain to delete",
                            ));
                        }
                        if !self.chains[i].rules.is_empty() {
                            return Err(ParseError::new(
                                line,
                                &name,
                                "an empty chain (flush it before deleting)",
                            ));
                        }
                        vec![name]
                    }
                    None => self
                        .chains
                        .iter()
                        .filter(|c| c.builtin.is_none() && c.rules.is_empty())
                        .map(|c| c.name.clone())
                        .collect(),
                };
                for name in victims {
                    let referenced = self.chains.iter().flat_map(|c| &c.rules).any(
                        |r| matches!(&r.target, Target::Jump(c) | Target::Goto(c) if c.name == name),
                    );
                    if referenced {
                        return Err(ParseError::new(
                            line,
                            &name,
                            "a chain no rule jumps to (it is still referenced)",
                        ));
                    }
                    self.chains.retain(|c| c.name != name);
                }
            }
        }
        Ok(())
    }

    fn relink(&mut self) -> Result<(), ParseError> {
        let names: BTreeMap<String, usize> =
            self.chains.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        for chain in &mut self.chains {
            for rule in &mut chain.rules {
                if let Target::Jump(c) | Target::Goto(c) = &mut rule.target {
                    c.index = *names.get(&c.name).ok_or_else(|| {
                        ParseError::new(
                            rule.line,
                            &c.name,
                            format!("an existing chain of table `{}`", self.kind),
                        )
                    })?;
                }
            }
        }
        // Loops and nesting deeper than the jump stack are errors; then the hooks each chain
        // is reachable from. Linear in rules: heights are memoized and hooks spread once per
        // (chain, hook) — a DAG of diamonds must not cost one walk per path.
        let n = self.chains.len();
        let mut heights = vec![None; n];
        let mut on_path = vec![false; n];
        for (i, c) in self.chains.iter().enumerate() {
            if c.builtin.is_some() {
                self.nesting(i, 1, &mut heights, &mut on_path)?;
            }
        }
        let mut hooks = vec![0u8; n];
        for (i, c) in self.chains.iter().enumerate() {
            let Some(h) = c.builtin else { continue };
            let mut todo = vec![i];
            while let Some(chain) = todo.pop() {
                if hooks[chain] & h.bit() != 0 {
                    continue;
                }
                hooks[chain] |= h.bit();
                for rule in &self.chains[chain].rules {
                    if let Target::Jump(c) | Target::Goto(c) = &rule.target {
                        todo.push(c.index);
                    }
                }
            }
        }
        for (i, chain) in self.chains.iter().enumerate() {
            for rule in &chain.rules {
                check_placement(self.kind, hooks[i], rule)?;
            }
        }
        Ok(())
    }

    /// The height of `chain` (most jumps on a path from it), entered at `depth` (1 for a
    /// built-in chain): an error at the first rule, in rule order, that loops back into a
    /// calling chain or jumps from depth [`MAX_JUMP_DEPTH`]. Recursion stops at that depth.
    fn nesting(
        &self,
        chain: usize,
        depth: usize,
        heights: &mut [Option<usize>],
        on_path: &mut [bool],
    ) -> Result<usize, ParseError> {
        if let Some(h) = heights[chain] {
            if depth + h > MAX_JUMP_DEPTH {
                return Err(self.too_deep(chain, depth, heights));
            }
            return Ok(h);
        }
        on_path[chain] = true;
        let mut height = 0;
        for rule in &self.chains[chain].rules {
            if let Target::Jump(c) | Target::Goto(c) = &rule.target {
                if on_path[c.index] {
                    return Err(ParseError::new(
                        rule.line,
                        &c.name,
                        "a jump that does not loop back into a calling chain",
                    ));
                }
                if depth >= MAX_JUMP_DEPTH {
                    return Err(deep_error(rule, &c.name));
                }
                height = height.max(1 + self.nesting(c.index, depth + 1, heights, on_path)?);
            }
        }
        on_path[chain] = false;
        heights[chain] = Some(height);
        Ok(height)
    }

    /// The rule that jumps too deep below `chain` entered at `depth`, all heights below known.
    fn too_deep(&self, chain: usize, depth: usize, heights: &[Option<usize>]) -> ParseError {
        for rule in &self.chains[chain].rules {
            if let Target::Jump(c) | Target::Goto(c) = &rule.target {
                if depth >= MAX_JUMP_DEPTH {
                    return deep_error(rule, &c.name);
                }
                if depth + heights[c.index].unwrap_or(0) >= MAX_JUMP_DEPTH {
                    return self.too_deep(c.index, depth + 1, heights);
                }
            }
        }
        ParseError::new(
            0,
            &self.chains[chain].name,
            format!("chains nested at most {MAX_JUMP_DEPTH} deep"),
        )
    }
}

fn deep_error(rule: &Rule, target: &str) -> ParseError {
    ParseError::new(rule.line, target, format!("chains nested at most {MAX_JUMP_DEPTH} deep"))
}

fn same_rule(a: &Rule, b: &Rule) -> bool {
    a.src == b.src
        && a.dst == b.dst
        && a.iif == b.iif
        && a.oif == b.oif
        && a.proto == b.proto
        && a.fragment == b.fragment
        && a.matches == b.matches
        && a.target == b.target
}

fn hook_mask(hooks: &[Hook]) -> u8 {
    hooks.iter().fold(0, |m, h| m | h.bit())
}

/// Rejects targets and matches used outside the tables and hooks the kernel allows them in.
fn check_placement(table: Table, reach: u8, rule: &Rule) -> Result<(), ParseError> {
    use Hook::*;
    let (tables, hooks): (&[Table], &[Hook]) = match &rule.target {
        Target::Dnat(_) | Target::Redirect(_) => (&[Table::Nat], &[Prerouting, Output]),
        Target::Snat(_) => (&[Table::Nat], &[Postrouting, Input]),
        Target::Masquerade(_) => (&[Table::Nat], &[Postrouting]),
        Target::Tproxy { .. } => (&[Table::Mangle], &[Prerouting]),
        Target::Ct { .. } | Target::Notrack => (&[Table::Raw], &Hook::ALL),
        Target::Reject(_) => (&[Table::Filter], &[Input, Forward, Output]),
        _ => (&Table::ALL, &Hook::ALL),
    };
    let name = rule.target.name();
    if table == Table::Nat && rule.target == Target::Drop {
        return Err(ParseError::new(
            rule.line,
            "DROP",
            "a target other than DROP (iptables refuses DROP in the nat table: it is not for filtering)",
        ));
    }
    if !tables.contains(&table) {
        let list: Vec<&str> = tables.iter().map(|t| t.name()).collect();
        return Err(ParseError::new(
            rule.line,
            name,
            format!("{name} only in table {}", list.join("/")),
        ));
    }
    let allowed = hook_mask(hooks);
    if reach & !allowed != 0 {
        let list: Vec<&str> = hooks.iter().map(|h| h.name()).collect();
        return Err(ParseError::new(
            rule.line,
            name,
            format!("{name} only in chains reached from {}", list.join("/")),
        ));
    }
    for m in &rule.matches {
        let (what, hooks): (&str, &[Hook]) = match m {
            Match::Socket(_) => ("-m socket", &[Prerouting, Input]),
            Match::OwnerSocketExists { .. } => ("-m owner", &[Output, Postrouting]),
            Match::Addrtype(a) if a.limit_iface_in => {
                ("--limit-iface-in", &[Prerouting, Input, Forward])
            }
            Match::Addrtype(a) if a.limit_iface_out => {
                ("--limit-iface-out", &[Output, Forward, Postrouting])
            }
            _ => continue,
        };
        if reach & !hook_mask(hooks) != 0 {
            let list: Vec<&str> = hooks.iter().map(|h| h.name()).collect();
            return Err(ParseError::new(
                rule.line,
                what,
                format!("{what} only in chains reached from {}", list.join("/")),
            ));
        }
    }
    Ok(())
}
