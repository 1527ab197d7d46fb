//! The seeded random ruleset generator: `iptables-restore` text drawn from the grammar of the
//! kernel model (tables raw, mangle, nat, filter; policies; `-N`/`-A`/`-I`; `!`; the matches and
//! targets listed in `MatchKind` and `TargetKind`).
//!
//! Every ruleset it produces must load: user chains form a DAG (a chain only jumps or goes to
//! chains later in a fixed order, so no loop is possible), and each match and target is only used
//! where the kernel accepts it — in the tables and hooks (`PREROUTING`…) it is valid for, computed
//! per user chain from the built-in chains that can reach it. A ruleset the kernel refuses is a
//! bug here, and the differential suite fails on it.
//!
//! Values come from small pools that overlap the topology ([`super::flowgen`]): its addresses,
//! listener ports, the ambient marks. That way rules actually match the flows.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::dice::Dice;
use crate::iptables::Table;

/// A netfilter hook (what a built-in chain is attached to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hook {
    Pre,
    In,
    Fwd,
    Out,
    Post,
}

fn hook_of(chain: &str) -> Hook {
    match chain {
        "PREROUTING" => Hook::Pre,
        "INPUT" => Hook::In,
        "FORWARD" => Hook::Fwd,
        "OUTPUT" => Hook::Out,
        _ => Hook::Post,
    }
}

/// The hooks a rule can run on: a built-in chain's own, or the union of a user chain's callers'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Hooks(BTreeSet<Hook>);

impl Hooks {
    /// True when every hook the rule can run on is in `allowed`.
    fn within(&self, allowed: &[Hook]) -> bool {
        self.0.iter().all(|h| allowed.contains(h))
    }
}

/// The matches the generator draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    Src,
    Dst,
    InIface,
    OutIface,
    Ports,
    Mark,
    Connmark,
    Ctstate,
    Addrtype,
    Multiport,
    Socket,
    Owner,
    Comment,
}

/// The targets the generator draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Accept,
    Drop,
    Return,
    Jump,
    Goto,
    Log,
    Reject,
    Redirect,
    Dnat,
    Snat,
    Masquerade,
    Tproxy,
    Mark,
    Connmark,
    Ct,
}

const CIDRS: &[&str] = &[
    "10.0.1.2",
    "10.0.1.2/32",
    "10.0.1.1",
    "10.0.1.0/24",
    "10.0.1.7/24",
    "127.0.0.1",
    "127.0.0.0/8",
    "10.96.0.10",
    "10.96.0.0/16",
    "10.0.9.9",
    "10.0.9.0/24",
    "169.254.7.127",
    "0.0.0.0/0",
    "10.0.0.0/8",
];
const IFACES: &[&str] = &["lo", "eth0", "eth+", "veth+", "e+"];
const PORTS: &[&str] = &[
    "80",
    "443",
    "8080",
    "8081",
    "8082",
    "9090",
    "9999",
    "15001",
    "15006",
    "15008",
    "20000:20010",
    "1:1024",
    "8080:8090",
    "32768:60999",
];
const MARKS: &[&str] = &["0x539", "0x111", "0x1", "0x1539", "0x0", "0x2a"];
const MASKS: &[&str] = &["0xfff", "0xffffffff", "0xff", "0x1"];
const CT_STATES: &[&str] = &["NEW", "ESTABLISHED", "RELATED", "INVALID"];
const ADDR_TYPES: &[&str] = &["LOCAL", "UNICAST", "BROADCAST", "MULTICAST"];
const TO_PORTS: &[&str] =
    &["15001", "15006", "15008", "8080", "8081", "8082", "9090", "80", "9999", "8080-8082"];
const DNAT_TO: &[&str] = &[
    "10.0.1.2:8080",
    "10.0.1.2:8081",
    "10.0.1.1:9090",
    "10.0.1.1:80",
    "127.0.0.1:8082",
    "10.96.0.10:80",
    "10.0.1.2",
    "10.0.1.1",
];
const SNAT_TO: &[&str] = &["10.0.1.2", "10.0.9.9", "10.0.1.2:20500-20600", "127.0.0.1"];
/// Source-NAT port ranges the generator uses (`SNAT --to-source ip:lo-hi`, `MASQUERADE
/// --to-ports lo-hi`). The kernel starts source-port allocation in a range at a random offset, so
/// a port it picked from one of these is normalised to the range.
pub const SNAT_PORT_RANGES: [(u16, u16); 2] = [(20500, 20600), (20700, 20800)];
const USER_CHAINS: &[&str] =
    &["ISTIO_OUTPUT", "ISTIO_PRERT", "KUBE-SVC-A", "KUBE-SEP-B", "custom_chain", "Z9"];
const COMMENTS: &[&str] = &["ambient", "kube svc", "x-1", "redirect to proxy"];

/// A chain while its rules are generated.
#[derive(Debug)]
struct ChainState {
    name: String,
    builtin: bool,
    hooks: Hooks,
    rules: usize,
}

/// Generates one ruleset (`iptables-restore` input for all four tables, no `--noflush`).
pub fn generate_ruleset(dice: &mut Dice) -> String {
    let mut out = String::new();
    for table in Table::ALL {
        generate_table(dice, table, &mut out);
    }
    out
}

fn generate_table(dice: &mut Dice, table: Table, out: &mut String) {
    let mut chains: Vec<ChainState> = table
        .builtin_hooks()
        .iter()
        .map(|hook| ChainState {
            name: hook.name().to_string(),
            builtin: true,
            hooks: Hooks([hook_of(hook.name())].into_iter().collect()),
            rules: 0,
        })
        .collect();
    let user_count = *dice.weighted(&[(30, 0usize), (30, 1), (25, 2), (15, 3)]);
    let mut pool: Vec<&str> = USER_CHAINS.to_vec();
    for _ in 0..user_count {
        let name = pool.remove(dice.below(pool.len() as u64) as usize);
        chains.push(ChainState {
            name: name.to_string(),
            builtin: false,
            hooks: Hooks::default(),
            rules: 0,
        });
    }
    let _ = writeln!(out, "*{table}");
    let mut new_lines = Vec::new();
    for chain in &chains {
        if chain.builtin {
            let policy = if table != Table::Nat && dice.chance(2) { "DROP" } else { "ACCEPT" };
            let _ = writeln!(out, ":{} {policy} [0:0]", chain.name);
        } else if dice.chance(30) {
            new_lines.push(format!("-N {}", chain.name));
        } else {
            let _ = writeln!(out, ":{} - [0:0]", chain.name);
        }
    }
    for line in new_lines {
        let _ = writeln!(out, "{line}");
    }
    for index in 0..chains.len() {
        let count = if chains[index].builtin {
            *dice.weighted(&[(25, 0usize), (25, 1), (25, 2), (15, 3), (10, 4)])
        } else {
            *dice.weighted(&[(10, 0usize), (35, 1), (35, 2), (20, 3)])
        };
        // An unreferenced user chain never runs, but the kernel may still check its rules against
        // every hook of the table: only use what is valid everywhere there.
        if chains[index].hooks.0.is_empty() {
            let all = table.builtin_hooks().iter().map(|h| hook_of(h.name())).collect();
            chains[index].hooks = Hooks(all);
        }
        for _ in 0..count {
            let targets: Vec<usize> =
                (index + 1..chains.len()).filter(|j| !chains[*j].builtin).collect();
            let (spec, jumped) =
                generate_rule(dice, table, &chains[index].hooks, &chains, &targets);
            if let Some(j) = jumped {
                let hooks = chains[index].hooks.0.clone();
                chains[j].hooks.0.extend(hooks);
            }
            let chain = &mut chains[index];
            let line = if chain.rules > 0 && dice.chance(20) {
                if dice.chance(50) {
                    format!("-I {} {}", chain.name, spec)
                } else {
                    let pos = dice.range(1, chain.rules as u64 + 1);
                    format!("-I {} {pos} {}", chain.name, spec)
                }
            } else {
                format!("-A {} {}", chain.name, spec)
            };
            chain.rules += 1;
            let _ = writeln!(out, "{line}");
        }
    }
    out.push_str("COMMIT\n");
}

/// What the protocol part of a rule allows after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Any,
    /// `-p tcp` or `-p udp`, not negated: port matches and port-taking targets allowed.
    Ported(&'static str),
    /// Some other or negated protocol.
    Other,
}

/// One rule's text after `-A CHAIN `, and the user chain it jumps/goes to, if any.
fn generate_rule(
    dice: &mut Dice,
    table: Table,
    hooks: &Hooks,
    chains: &[ChainState],
    jump_targets: &[usize],
) -> (String, Option<usize>) {
    let mut parts: Vec<String> = Vec::new();
    let proto = match *dice.weighted(&[(45, 0u8), (40, 1), (5, 2), (5, 3), (5, 4)]) {
        1 => Proto::Ported("tcp"),
        2 => Proto::Ported("udp"),
        3 => Proto::Other,
        4 => Proto::Other,
        _ => Proto::Any,
    };
    let mut proto_text = match proto {
        Proto::Ported(p) => Some(format!("-p {p}")),
        Proto::Other if dice.chance(50) => Some("-p icmp".to_string()),
        Proto::Other => Some(format!("! -p {}", dice.pick(&["tcp", "udp"]))),
        Proto::Any => None,
    };
    let mut kinds = vec![
        MatchKind::Src,
        MatchKind::Dst,
        MatchKind::Mark,
        MatchKind::Connmark,
        MatchKind::Ctstate,
        MatchKind::Addrtype,
        MatchKind::Comment,
    ];
    if hooks.within(&[Hook::Pre, Hook::In, Hook::Fwd]) {
        kinds.push(MatchKind::InIface);
    }
    if hooks.within(&[Hook::Out, Hook::Fwd, Hook::Post]) {
        kinds.push(MatchKind::OutIface);
    }
    if matches!(proto, Proto::Ported(_)) {
        kinds.extend([MatchKind::Ports, MatchKind::Ports, MatchKind::Multiport]);
    }
    if matches!(table, Table::Mangle | Table::Filter) && hooks.within(&[Hook::Pre, Hook::In]) {
        kinds.push(MatchKind::Socket);
    }
    if hooks.within(&[Hook::Out, Hook::Post]) {
        kinds.push(MatchKind::Owner);
    }
    let wanted = *dice.weighted(&[(20, 0usize), (35, 1), (30, 2), (15, 3)]);
    let mut used: Vec<MatchKind> = Vec::new();
    for _ in 0..wanted {
        let kind = *dice.pick(&kinds);
        if used.contains(&kind) {
            continue;
        }
        used.push(kind);
        // `-p` must come before the matches that need it; put it in front of the first one.
        if matches!(kind, MatchKind::Ports | MatchKind::Multiport)
            && let Some(p) = proto_text.take()
        {
            parts.push(p);
        }
        let after_multiport = used[..used.len() - 1].contains(&MatchKind::Multiport);
        parts.push(generate_match(dice, kind, proto, after_multiport));
    }
    if let Some(p) = proto_text.take() {
        // Anywhere before the target (and before port matches, handled above).
        let at = dice.below(parts.len() as u64 + 1) as usize;
        parts.insert(at, p);
    }
    // A rule that drops everything makes most flows time out and teaches little: filtering rules
    // get at least one match.
    let filtering_allowed = !parts.is_empty();
    let (target, jumped) =
        generate_target(dice, table, hooks, proto, chains, jump_targets, filtering_allowed);
    parts.push(target);
    (parts.join(" "), jumped)
}

fn neg(dice: &mut Dice, percent: u64) -> &'static str {
    if dice.chance(percent) { "! " } else { "" }
}

fn mark_value(dice: &mut Dice) -> String {
    let value = dice.pick(MARKS);
    if dice.chance(60) { format!("{value}/{}", dice.pick(MASKS)) } else { value.to_string() }
}

fn generate_match(dice: &mut Dice, kind: MatchKind, proto: Proto, after_multiport: bool) -> String {
    match kind {
        MatchKind::Src | MatchKind::Dst => {
            let flag = if kind == MatchKind::Src { "-s" } else { "-d" };
            let cidr = *dice.pick(CIDRS);
            // The kernel refuses a negated match-everything prefix.
            let not = if cidr == "0.0.0.0/0" { "" } else { neg(dice, 20) };
            format!("{not}{flag} {cidr}")
        }
        MatchKind::InIface => format!("{}-i {}", neg(dice, 25), dice.pick(IFACES)),
        MatchKind::OutIface => format!("{}-o {}", neg(dice, 25), dice.pick(IFACES)),
        MatchKind::Ports => {
            let p = match proto {
                Proto::Ported(p) => p,
                _ => unreachable!("ports only follow -p tcp/udp"),
            };
            // After `-m multiport`, a bare `--dport` would be taken as multiport's `--dports`.
            let module =
                if after_multiport || dice.chance(50) { format!("-m {p} ") } else { String::new() };
            let dir = if dice.chance(75) { "--dport" } else { "--sport" };
            format!("{module}{}{dir} {}", neg(dice, 20), dice.pick(PORTS))
        }
        MatchKind::Mark => format!("-m mark {}--mark {}", neg(dice, 30), mark_value(dice)),
        MatchKind::Connmark => format!("-m connmark {}--mark {}", neg(dice, 30), mark_value(dice)),
        MatchKind::Ctstate => {
            let mut states: Vec<&str> = vec![*dice.pick(CT_STATES)];
            if dice.chance(30) {
                let second = *dice.pick(CT_STATES);
                if !states.contains(&second) {
                    states.push(second);
                }
            }
            format!("-m conntrack {}--ctstate {}", neg(dice, 20), states.join(","))
        }
        MatchKind::Addrtype => {
            let dir = if dice.chance(60) { "--dst-type" } else { "--src-type" };
            format!("-m addrtype {}{dir} {}", neg(dice, 25), dice.pick(ADDR_TYPES))
        }
        MatchKind::Multiport => {
            let dir = dice.pick(&["--dports", "--sports", "--ports"]);
            let list = dice.pick(&[
                "80,443",
                "8080,8081,8082",
                "15001,15006,15008",
                "1:1024,9090",
                "9999",
            ]);
            format!("-m multiport {}{dir} {list}", neg(dice, 20))
        }
        MatchKind::Socket => {
            if dice.chance(50) {
                "-m socket --transparent".into()
            } else {
                "-m socket".into()
            }
        }
        MatchKind::Owner => format!("-m owner {}--socket-exists", neg(dice, 30)),
        MatchKind::Comment => format!("-m comment --comment \"{}\"", dice.pick(COMMENTS)),
    }
}

fn generate_target(
    dice: &mut Dice,
    table: Table,
    hooks: &Hooks,
    proto: Proto,
    chains: &[ChainState],
    jump_targets: &[usize],
    filtering_allowed: bool,
) -> (String, Option<usize>) {
    use TargetKind as T;
    let mut options: Vec<(u64, TargetKind)> = vec![(10, T::Accept), (8, T::Return), (4, T::Log)];
    if table != Table::Nat && filtering_allowed {
        options.push((3, T::Drop));
    }
    if !jump_targets.is_empty() {
        options.extend([(14, T::Jump), (6, T::Goto)]);
    }
    match table {
        // A zone on some packets of a TCP connection splits it into two conntrack entries (legal,
        // and a hard case for a model, but timing-dependent in places: see `compare`). Most CT
        // rules therefore go on UDP, as in the ambient rules (DNS), and few on anything else.
        Table::Raw => {
            let ct = if proto == Proto::Ported("udp") { 20 } else { 1 };
            options.extend([(8, T::Mark), (ct, T::Ct)]);
        }
        Table::Mangle => {
            options.extend([(10, T::Mark), (10, T::Connmark)]);
            if hooks.within(&[Hook::Pre]) && matches!(proto, Proto::Ported(_)) {
                options.push((6, T::Tproxy));
            }
        }
        Table::Nat => {
            options.push((3, T::Connmark));
            if hooks.within(&[Hook::Pre, Hook::Out]) {
                options.extend([(20, T::Redirect), (14, T::Dnat)]);
            }
            if hooks.within(&[Hook::Post, Hook::In]) {
                options.push((6, T::Snat));
            }
            if hooks.within(&[Hook::Post]) {
                options.push((5, T::Masquerade));
            }
        }
        Table::Filter => {
            if filtering_allowed {
                options.push((8, T::Reject));
            }
            options.extend([(3, T::Mark), (3, T::Connmark)]);
        }
    }
    let ported = matches!(proto, Proto::Ported(_));
    let kind = *dice.weighted(&options);
    let text = match kind {
        T::Accept => "-j ACCEPT".to_string(),
        T::Drop => "-j DROP".to_string(),
        T::Return => "-j RETURN".to_string(),
        T::Jump | T::Goto => {
            let j = *dice.pick(jump_targets);
            let flag = if kind == T::Jump { "-j" } else { "-g" };
            return (format!("{flag} {}", chains[j].name), Some(j));
        }
        T::Log => {
            let mut s = "-j LOG".to_string();
            if dice.chance(50) {
                s += " --log-prefix \"diff: \"";
            }
            if dice.chance(30) {
                s += " --log-level 6";
            }
            s
        }
        T::Reject => {
            let mut with = vec![
                "icmp-port-unreachable",
                "icmp-host-unreachable",
                "icmp-net-unreachable",
                "icmp-admin-prohibited",
            ];
            if proto == Proto::Ported("tcp") {
                with.extend(["tcp-reset", "tcp-reset"]);
            }
            if dice.chance(30) {
                "-j REJECT".to_string()
            } else {
                format!("-j REJECT --reject-with {}", dice.pick(&with))
            }
        }
        T::Redirect => {
            if ported && dice.chance(85) {
                format!("-j REDIRECT --to-ports {}", dice.pick(TO_PORTS))
            } else {
                "-j REDIRECT".to_string()
            }
        }
        T::Dnat => {
            let to = if ported {
                *dice.pick(DNAT_TO)
            } else {
                *dice.pick(&["10.0.1.2", "10.0.1.1", "127.0.0.1"])
            };
            format!("-j DNAT --to-destination {to}")
        }
        T::Snat => {
            let to =
                if ported { *dice.pick(SNAT_TO) } else { *dice.pick(&["10.0.1.2", "10.0.9.9"]) };
            format!("-j SNAT --to-source {to}")
        }
        T::Masquerade => {
            if ported && dice.chance(30) {
                "-j MASQUERADE --to-ports 20700-20800".to_string()
            } else {
                "-j MASQUERADE".to_string()
            }
        }
        T::Tproxy => {
            let mut s =
                format!("-j TPROXY --on-port {}", dice.pick(&["15001", "15006", "15008", "8081"]));
            if dice.chance(50) {
                s += &format!(" --on-ip {}", dice.pick(&["0.0.0.0", "127.0.0.1", "10.0.1.2"]));
            }
            if dice.chance(60) {
                s += &format!(" --tproxy-mark {}", dice.pick(&["0x111/0xfff", "0x1/0x1", "0x539"]));
            }
            s
        }
        T::Mark => match dice.below(5) {
            0 => format!("-j MARK --set-xmark {}/{}", dice.pick(MARKS), dice.pick(MASKS)),
            1 => format!("-j MARK --set-mark {}", mark_value(dice)),
            2 => format!("-j MARK --and-mark {}", dice.pick(MASKS)),
            3 => format!("-j MARK --or-mark {}", dice.pick(MARKS)),
            _ => format!("-j MARK --xor-mark {}", dice.pick(MARKS)),
        },
        T::Connmark => {
            let masks = |dice: &mut Dice| {
                if dice.chance(50) {
                    format!(" --nfmask {} --ctmask {}", dice.pick(MASKS), dice.pick(MASKS))
                } else {
                    String::new()
                }
            };
            match dice.below(4) {
                0 => format!("-j CONNMARK --set-xmark {}/{}", dice.pick(MARKS), dice.pick(MASKS)),
                1 => format!("-j CONNMARK --set-mark {}", mark_value(dice)),
                2 => format!("-j CONNMARK --save-mark{}", masks(dice)),
                _ => format!("-j CONNMARK --restore-mark{}", masks(dice)),
            }
        }
        T::Ct => format!("-j CT --zone {}", dice.pick(&["1", "2"])),
    };
    (text, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::dice::Dice;

    #[test]
    fn same_seed_same_text_and_different_seeds_differ() {
        let a = generate_ruleset(&mut Dice::new(9));
        assert_eq!(a, generate_ruleset(&mut Dice::new(9)));
        assert_ne!(a, generate_ruleset(&mut Dice::new(10)));
    }

    #[test]
    fn hook_restricted_items_stay_in_their_hooks() {
        for seed in 0..500 {
            let text = generate_ruleset(&mut Dice::new(seed));
            let mut table = "";
            for line in text.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    table = t;
                }
                let chain = line.split_whitespace().nth(1).unwrap_or("");
                if line.contains("-j REDIRECT") || line.contains("-j DNAT") {
                    assert_eq!(table, "nat", "{line}");
                    assert!(!["INPUT", "POSTROUTING"].contains(&chain), "seed {seed}: {line}");
                }
                if line.contains("-j TPROXY") {
                    assert!(
                        table == "mangle"
                            && !["INPUT", "OUTPUT", "FORWARD", "POSTROUTING"].contains(&chain),
                        "seed {seed}: {line}"
                    );
                }
                if line.contains("-j DROP") {
                    assert_ne!(table, "nat", "seed {seed}: {line}");
                }
                if line.contains("--dport") || line.contains("-m multiport") {
                    let p = line.find("-p ").expect("port match without -p");
                    assert!(
                        p < line.find("--dport").or(line.find("-m multiport")).unwrap(),
                        "seed {seed}: {line}"
                    );
                }
            }
        }
    }

    #[test]
    fn user_chains_form_a_dag() {
        for seed in 0..300 {
            let text = generate_ruleset(&mut Dice::new(seed));
            for block in text.split("COMMIT\n").filter(|b| !b.is_empty()) {
                let mut edges: Vec<(&str, &str)> = Vec::new();
                for line in block.lines().filter(|l| l.starts_with("-A ") || l.starts_with("-I ")) {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if let Some(w) = words.windows(2).find(|w| w[0] == "-j" || w[0] == "-g")
                        && USER_CHAINS.contains(&w[1])
                    {
                        edges.push((words[1], w[1]));
                    }
                }
                // Repeatedly remove chains nobody jumps to; a loop would leave edges behind.
                let mut left = edges.clone();
                while let Some(pos) =
                    left.iter().position(|(from, _)| !left.iter().any(|(_, to)| to == from))
                {
                    let from = left[pos].0;
                    left.retain(|(f, _)| *f != from);
                }
                assert!(left.is_empty(), "seed {seed}: loop among {left:?}");
            }
        }
    }
}
