//! The ruleset: tables, chains and rules as `iptables-restore` describes them.
//!
//! The types here serve both directions. [`parse_restore`] turns restore text into commands
//! (already in canonical form: addresses masked, marks as value/mask pairs, implicit `-m tcp`
//! placed where iptables places it); [`Ruleset::restore`] applies them the way
//! `iptables-restore [--noflush] [-c]` does, then [`Ruleset::relink`] resolves jumps to chain
//! indices and checks what the kernel checks on load (loops, nesting, targets and matches only
//! valid in some tables/hooks). [`Ruleset::save`] prints canonical `iptables-save [-c]` text.
//! Evaluation (`netfilter`) reads these same structures; nothing in them needs a string
//! comparison at packet time. Outside the model a rule is named by position, [`RuleRef`]
//! (`table/chain/N`, found in restore text by [`rule_positions`]), and
//! [`counts_first_packets_only`] says whether its counter is a function of the connections.
//!
//! Implemented: tables raw, mangle, nat, filter; commands `-A -I -D -N -P -F -X` and `:CHAIN`
//! lines; `[!] -s/-d/-p/-i/-o` (`+` wildcards), `[!] -f`; matches `tcp` (`--sport --dport`
//! ranges, `--tcp-flags`, `--syn`), `udp`, `icmp --icmp-type`, `mark`, `connmark`,
//! `conntrack --ctstate`, `state --state`, `addrtype` (`--src-type --dst-type
//! --limit-iface-in/out`), `multiport` (`--sports --dports --ports`), `socket` (`--transparent
//! --nowildcard --restore-skmark`), `owner --socket-exists`, `comment`; targets ACCEPT, DROP,
//! RETURN, chain jumps and `-g` gotos, REJECT (all `--reject-with` types), LOG, MARK (all set
//! forms, printed as `--set-xmark`), CONNMARK (`--set-xmark`/`--set-mark`/`--and/or/xor-mark`,
//! `--save-mark`/`--restore-mark` with `--mask`/`--nfmask`/`--ctmask`), CT (`--zone`,
//! `--notrack`), NOTRACK, REDIRECT, DNAT, SNAT, MASQUERADE (with port ranges, `--random`,
//! `--random-fully`, `--persistent`), TPROXY.

mod parse;
mod position;
mod print;
mod ruleset;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::addr::{Cidr, IfaceMatch};

pub(crate) use parse::parse_u32;
pub use parse::{Command, ParseError, TableBlock, parse_restore};
pub use position::{RuleRef, counts_first_packets_only, rule_positions};
pub use print::save_string;
pub use ruleset::{MAX_JUMP_DEPTH, RestoreOptions};

/// The four IPv4 netfilter tables, in the order packets meet them (which is also the order
/// `Ord` sorts them in); `as usize` is the ordinal into [`Ruleset`].
///
/// Serialised (and written in scenarios) as iptables spells them: `raw`, `mangle`, `nat`,
/// `filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Before conntrack: `CT`, notrack.
    Raw = 0,
    /// Packet and connection marks, TPROXY.
    Mangle = 1,
    /// First packets of connections: DNAT/REDIRECT/SNAT/MASQUERADE.
    Nat = 2,
    /// Accept/drop/reject.
    Filter = 3,
}

impl Table {
    /// All tables, in the order packets meet them.
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

    /// The order `iptables-save` (nf_tables backend, 1.8.9) lists tables in, whatever order they
    /// were created in: checked against the real command.
    pub const SAVE_ORDER: [Table; 4] = [Table::Mangle, Table::Raw, Table::Filter, Table::Nat];

    /// The table's name as iptables spells it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// The table named `name` (as iptables spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Built-in chains in the order iptables-save prints them.
    pub fn builtin_hooks(self) -> &'static [Hook] {
        use Hook::*;
        match self {
            Table::Raw => &[Prerouting, Output],
            Table::Mangle => &[Prerouting, Input, Forward, Output, Postrouting],
            Table::Nat => &[Prerouting, Input, Output, Postrouting],
            Table::Filter => &[Input, Forward, Output],
        }
    }
}

impl FromStr for Table {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Table::from_name(s)
            .ok_or_else(|| format!("unknown table {s:?}; tables are raw, mangle, nat, filter"))
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The five netfilter hooks of the IPv4 path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

impl Hook {
    pub const ALL: [Hook; 5] =
        [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Bit for hook masks.
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packet and byte counters, as `[packets:bytes]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl Counters {
    #[inline]
    pub fn add(&mut self, bytes: u32) {
        self.packets += 1;
        self.bytes += u64::from(bytes);
    }
}

/// A built-in chain's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Policy {
    Accept,
    Drop,
}

/// All tables of one network namespace. A table exists once restore text has named it (as with
/// the nf_tables backend, `iptables-save` lists only existing tables).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    tables: [Option<TableRules>; 4],
}

impl Ruleset {
    pub fn table(&self, kind: Table) -> Option<&TableRules> {
        self.tables[kind as usize].as_ref()
    }

    pub fn table_mut(&mut self, kind: Table) -> Option<&mut TableRules> {
        self.tables[kind as usize].as_mut()
    }

    /// The table, created with its built-in chains (ACCEPT policies) if it does not exist yet.
    pub fn ensure_table(&mut self, kind: Table) -> &mut TableRules {
        self.tables[kind as usize].get_or_insert_with(|| TableRules::new(kind))
    }

    /// Existing tables in `iptables-save` order.
    pub fn tables(&self) -> impl Iterator<Item = &TableRules> {
        Table::SAVE_ORDER.into_iter().filter_map(|k| self.table(k))
    }

    /// Resets every rule and policy counter to zero (`iptables -Z`).
    pub fn zero_counters(&mut self) {
        for table in self.tables.iter_mut().flatten() {
            for chain in &mut table.chains {
                chain.policy_counters = Counters::default();
                for rule in &mut chain.rules {
                    rule.counters = Counters::default();
                }
            }
        }
    }

    /// Whether any rule needs connection tracking. The kernel only tracks connections in a
    /// network namespace once a rule that uses conntrack is loaded (conntrack/state/connmark
    /// matches, CONNMARK/CT/NOTRACK and NAT targets); an empty nat table is not enough. Checked
    /// against kernel 6.18.
    pub fn needs_conntrack(&self) -> bool {
        self.tables.iter().flatten().flat_map(|t| &t.chains).flat_map(|c| &c.rules).any(|r| {
            r.target.needs_conntrack()
                || r.matches.iter().any(|m| {
                    matches!(m, Match::Conntrack(_) | Match::State(_) | Match::Connmark(_))
                })
        })
    }
}

/// One table: built-in chains first, in kernel order, then user chains sorted by name (the
/// order iptables-save prints them in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableRules {
    pub kind: Table,
    pub chains: Vec<Chain>,
}

impl TableRules {
    pub fn new(kind: Table) -> Self {
        let chains = kind.builtin_hooks().iter().map(|&h| Chain::builtin(h)).collect();
        TableRules { kind, chains }
    }

    /// Built-ins by scan (at most five), user chains by binary search (they are sorted).
    pub fn chain_index(&self, name: &str) -> Option<usize> {
        let builtins = self.kind.builtin_hooks().len().min(self.chains.len());
        if let Some(i) = self.chains[..builtins].iter().position(|c| c.name == name) {
            return Some(i);
        }
        let users = &self.chains[builtins..];
        users
            .binary_search_by(|c| c.name.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| builtins + i)
    }

    /// Index of a hook's built-in chain; `None` when the table has no such hook.
    pub fn hook_chain(&self, hook: Hook) -> Option<usize> {
        self.kind.builtin_hooks().iter().position(|&h| h == hook)
    }
}

/// A chain with its rules; built-in chains have a policy and policy counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub builtin: Option<Hook>,
    pub policy: Policy,
    /// Packets that reached the end of a built-in chain and took its policy.
    pub policy_counters: Counters,
    /// Whether the policy counts. iptables-nft gives a built-in chain a policy counter only
    /// when a `:CHAIN` line or `-P` creates it; a chain created on demand by `-A`/`-I` (or
    /// never created) shows `[0:0]` whatever passes (checked on kernel 6.18).
    pub policy_counted: bool,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn builtin(hook: Hook) -> Self {
        Chain {
            name: hook.name().to_string(),
            builtin: Some(hook),
            policy: Policy::Accept,
            policy_counters: Counters::default(),
            policy_counted: false,
            rules: Vec::new(),
        }
    }

    pub fn user(name: &str) -> Self {
        Chain {
            name: name.to_string(),
            builtin: None,
            policy: Policy::Accept,
            policy_counters: Counters::default(),
            policy_counted: false,
            rules: Vec::new(),
        }
    }
}

/// `[!] -s/-d ADDR[/MASK]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrMatch {
    pub cidr: Cidr,
    pub negated: bool,
}

/// `[!] -p PROTO` (by number; 0 = all, which iptables-save omits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoMatch {
    pub number: u8,
    pub negated: bool,
}

/// One rule: the generic IP part, the `-m` matches in order, and a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub src: Option<AddrMatch>,
    pub dst: Option<AddrMatch>,
    pub iif: Option<IfaceMatch>,
    pub oif: Option<IfaceMatch>,
    pub proto: Option<ProtoMatch>,
    /// `[!] -f`: second and later fragments. The model has no fragments, so `-f` never matches
    /// and `! -f` always does; it is kept for printing.
    pub fragment: Option<bool>,
    pub matches: Vec<Match>,
    pub target: Target,
    pub counters: Counters,
    /// Line of the restore text the rule came from (for error messages; 0 if unknown).
    pub line: usize,
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: 65535 };

    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// `[!] --sport/--dport RANGE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMatch {
    pub range: PortRange,
    pub negated: bool,
}

impl PortMatch {
    #[inline]
    pub fn matches(&self, port: u16) -> bool {
        self.range.contains(port) != self.negated
    }
}

/// `-m tcp`: ports and `--tcp-flags MASK COMP` (`--syn` is `FIN,SYN,RST,ACK SYN`).
///
/// Each `-m tcp` of a rule (explicit or implied by `-p tcp`) is its own instance, evaluated
/// like the kernel's separate expressions; the printer merges them the way iptables-nft does.
/// Options the kernel drops (a full port range, negated or not; a flag mask of NONE) are not
/// kept; `marker` says whether the instance was given only default values, in which case
/// iptables-nft still prints a bare `-m tcp` for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpMatch {
    pub sport: Option<PortMatch>,
    pub dport: Option<PortMatch>,
    pub flags: Option<TcpFlagsMatch>,
    pub marker: bool,
}

impl Default for TcpMatch {
    fn default() -> Self {
        TcpMatch { sport: None, dport: None, flags: None, marker: true }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlagsMatch {
    pub mask: u8,
    pub comp: u8,
    pub negated: bool,
}

/// `-m udp`: ports (instances and `marker` as for [`TcpMatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpMatch {
    pub sport: Option<PortMatch>,
    pub dport: Option<PortMatch>,
    pub marker: bool,
}

impl Default for UdpMatch {
    fn default() -> Self {
        UdpMatch { sport: None, dport: None, marker: true }
    }
}

/// `-m icmp [!] --icmp-type TYPE[/CODE]` (`any` = every type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpMatch {
    pub kind: Option<u8>,
    pub codes: (u8, u8),
    pub negated: bool,
}

/// `-m mark` / `-m connmark`: `[!] --mark VALUE[/MASK]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkMatch {
    pub value: u32,
    pub mask: u32,
    pub negated: bool,
}

impl MarkMatch {
    #[inline]
    pub fn matches(&self, mark: u32) -> bool {
        (mark & self.mask == self.value) != self.negated
    }
}

/// Conntrack states as `xt_conntrack` numbers them (also the print order).
pub mod ctstate {
    pub const INVALID: u8 = 1 << 0;
    pub const NEW: u8 = 1 << 1;
    pub const RELATED: u8 = 1 << 2;
    pub const ESTABLISHED: u8 = 1 << 3;
    pub const UNTRACKED: u8 = 1 << 4;
    pub const SNAT: u8 = 1 << 5;
    pub const DNAT: u8 = 1 << 6;
    pub const NAMES: [(u8, &str); 7] = [
        (INVALID, "INVALID"),
        (NEW, "NEW"),
        (RELATED, "RELATED"),
        (ESTABLISHED, "ESTABLISHED"),
        (UNTRACKED, "UNTRACKED"),
        (SNAT, "SNAT"),
        (DNAT, "DNAT"),
    ];
}

/// `-m conntrack [!] --ctstate LIST` / `-m state [!] --state LIST` (bits from [`ctstate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateMatch {
    pub states: u8,
    pub negated: bool,
}

/// Address types as `-m addrtype` names them (bit = 1 << RTN_* value).
pub mod addrtype {
    pub const NAMES: [&str; 12] = [
        "UNSPEC",
        "UNICAST",
        "LOCAL",
        "BROADCAST",
        "ANYCAST",
        "MULTICAST",
        "BLACKHOLE",
        "UNREACHABLE",
        "PROHIBIT",
        "THROW",
        "NAT",
        "XRESOLVE",
    ];
    pub const UNICAST: u16 = 1 << 1;
    pub const LOCAL: u16 = 1 << 2;
    pub const BROADCAST: u16 = 1 << 3;
    pub const MULTICAST: u16 = 1 << 5;
}

/// `-m addrtype [[!] --src-type T,..] [[!] --dst-type T,..] [--limit-iface-in|out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AddrtypeMatch {
    pub src: Option<(u16, bool)>,
    pub dst: Option<(u16, bool)>,
    pub limit_iface_in: bool,
    pub limit_iface_out: bool,
}

/// Which ports `-m multiport` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiportDir {
    Source,
    Destination,
    Either,
}

/// `-m multiport [!] --sports|--dports|--ports LIST` (up to 15 entries, ranges count twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiportMatch {
    pub dir: MultiportDir,
    pub ports: Vec<PortRange>,
    pub negated: bool,
}

/// `-m socket [--transparent] [--nowildcard] [--restore-skmark]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SocketMatch {
    pub transparent: bool,
    pub nowildcard: bool,
    pub restore_skmark: bool,
}

/// One `-m` match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    Tcp(TcpMatch),
    Udp(UdpMatch),
    Icmp(IcmpMatch),
    Mark(MarkMatch),
    Connmark(MarkMatch),
    Conntrack(StateMatch),
    State(StateMatch),
    Addrtype(AddrtypeMatch),
    Multiport(MultiportMatch),
    Socket(SocketMatch),
    /// `-m owner [!] --socket-exists`; the flag is the negation.
    OwnerSocketExists {
        negated: bool,
    },
    Comment(String),
}

/// A NAT mapping: an optional address range and an optional port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatRange {
    pub addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    pub ports: Option<PortRange>,
    pub random: bool,
    pub random_fully: bool,
    pub persistent: bool,
}

/// `--reject-with` types (ICMP code, or a TCP reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectWith {
    IcmpNetUnreachable,
    IcmpHostUnreachable,
    IcmpPortUnreachable,
    IcmpProtoUnreachable,
    IcmpNetProhibited,
    IcmpHostProhibited,
    IcmpAdminProhibited,
    TcpReset,
}

impl RejectWith {
    pub const ALL: [(RejectWith, &'static str); 8] = [
        (RejectWith::IcmpNetUnreachable, "icmp-net-unreachable"),
        (RejectWith::IcmpHostUnreachable, "icmp-host-unreachable"),
        (RejectWith::IcmpPortUnreachable, "icmp-port-unreachable"),
        (RejectWith::IcmpProtoUnreachable, "icmp-proto-unreachable"),
        (RejectWith::IcmpNetProhibited, "icmp-net-prohibited"),
        (RejectWith::IcmpHostProhibited, "icmp-host-prohibited"),
        (RejectWith::IcmpAdminProhibited, "icmp-admin-prohibited"),
        (RejectWith::TcpReset, "tcp-reset"),
    ];

    pub fn name(self) -> &'static str {
        RejectWith::ALL.iter().find(|(r, _)| *r == self).map(|(_, n)| *n).unwrap_or("?")
    }

    /// The ICMP destination-unreachable code sent (None for a TCP reset).
    pub fn icmp_code(self) -> Option<u8> {
        match self {
            RejectWith::IcmpNetUnreachable => Some(0),
            RejectWith::IcmpHostUnreachable => Some(1),
            RejectWith::IcmpProtoUnreachable => Some(2),
            RejectWith::IcmpPortUnreachable => Some(3),
            RejectWith::IcmpNetProhibited => Some(9),
            RejectWith::IcmpHostProhibited => Some(10),
            RejectWith::IcmpAdminProhibited => Some(13),
            RejectWith::TcpReset => None,
        }
    }
}

/// What CONNMARK does: `(ctmark & !ctmask) ^ value`, or save/restore between marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnmarkOp {
    SetXmark { value: u32, mask: u32 },
    Save { nfmask: u32, ctmask: u32 },
    Restore { nfmask: u32, ctmask: u32 },
}

/// `-j LOG` options (logging itself has no effect in the model).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LogTarget {
    pub prefix: Option<String>,
    /// syslog level; 4 (warning) is the default and is not printed.
    pub level: u8,
    /// `--log-tcp-sequence`, `--log-tcp-options`, `--log-ip-options`, `--log-uid`,
    /// `--log-macdecode` as bits 0..5.
    pub flags: u8,
}

/// A jump destination by name, resolved to a chain index by [`Ruleset::relink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRef {
    pub name: String,
    pub index: usize,
}

/// What a matching rule does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// No `-j`: the rule only counts.
    None,
    Accept,
    Drop,
    Return,
    Jump(ChainRef),
    Goto(ChainRef),
    Reject(RejectWith),
    Log(LogTarget),
    /// MARK `--set-xmark value/mask`: `mark = (mark & !mask) ^ value`.
    Mark {
        value: u32,
        mask: u32,
    },
    Connmark(ConnmarkOp),
    /// CT `--zone N` / `--notrack`.
    Ct {
        zone: Option<u16>,
        notrack: bool,
    },
    Notrack,
    Redirect(NatRange),
    Masquerade(NatRange),
    Dnat(NatRange),
    Snat(NatRange),
    /// TPROXY `--on-port P --on-ip A --tproxy-mark V/M`.
    Tproxy {
        port: u16,
        ip: Ipv4Addr,
        mark: u32,
        mask: u32,
    },
}

impl Target {
    /// The `-j` name.
    pub fn name(&self) -> &str {
        match self {
            Target::None => "",
            Target::Accept => "ACCEPT",
            Target::Drop => "DROP",
            Target::Return => "RETURN",
            Target::Jump(c) | Target::Goto(c) => &c.name,
            Target::Reject(_) => "REJECT",
            Target::Log(_) => "LOG",
            Target::Mark { .. } => "MARK",
            Target::Connmark(_) => "CONNMARK",
            Target::Ct { .. } => "CT",
            Target::Notrack => "NOTRACK",
            Target::Redirect(_) => "REDIRECT",
            Target::Masquerade(_) => "MASQUERADE",
            Target::Dnat(_) => "DNAT",
            Target::Snat(_) => "SNAT",
            Target::Tproxy { .. } => "TPROXY",
        }
    }

    fn needs_conntrack(&self) -> bool {
        matches!(
            self,
            Target::Connmark(_)
                | Target::Ct { .. }
                | Target::Notrack
                | Target::Redirect(_)
                | Target::Masquerade(_)
                | Target::Dnat(_)
                | Target::Snat(_)
        )
    }
}
