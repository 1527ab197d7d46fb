//! `iptables-restore` text → commands, canonicalised on the way in.
//!
//! Line syntax as iptables-restore 1.8 reads it: `#` comments, `*table`, `:CHAIN POLICY [p:b]`,
//! commands (`-A/-I/-D/-N/-P/-F/-X`, optionally prefixed by `[p:b]` counters), `COMMIT`. Words
//! split on blanks; `"…"` quotes with `\` escapes inside. Options resolve like getopt_long does
//! for iptables: an exact name or an unambiguous prefix, the most recently loaded module first,
//! and an unknown option after `-p tcp|udp|icmp` loads that protocol's match implicitly at that
//! point (which is why `-p tcp -m mark --mark 1 --dport 80` saves as `… -m mark --mark 0x1 -m tcp
//! --dport 80`). Option syntax and the canonical values are pinned by `tests/data/canonical/`.
//! Any error names the line, the offending word and what was expected; nothing panics.

use std::fmt;
use std::net::Ipv4Addr;

use super::super::addr::{Cidr, IfaceMatch};
use super::{
    AddrMatch, AddrtypeMatch, ChainRef, ConnmarkOp, Counters, IcmpMatch, LogTarget, MarkMatch,
    Match, MultiportDir, MultiportMatch, NatRange, Policy, PortMatch, PortRange, ProtoMatch,
    RejectWith, Rule, SocketMatch, StateMatch, TableKind, Target, TcpFlagsMatch, TcpMatch,
    UdpMatch, addrtype, ctstate,
};

/// Where restore text is wrong, and what was expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number (0 when the error is about the whole input, e.g. a missing COMMIT
    /// at the end).
    pub line: usize,
    /// The word at fault (empty when something is missing at the end of a line).
    pub token: String,
    pub expected: String,
}

impl ParseError {
    pub fn new(line: usize, token: impl Into<String>, expected: impl Into<String>) -> Self {
        ParseError { line, token: token.into(), expected: expected.into() }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.token.is_empty() {
            write!(f, "line {}: expected {}", self.line, self.expected)
        } else {
            write!(f, "line {}: unexpected `{}`: expected {}", self.line, self.token, self.expected)
        }
    }
}

impl std::error::Error for ParseError {}

/// One `*table … COMMIT` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableBlock {
    pub table: TableKind,
    pub line: usize,
    pub commands: Vec<Command>,
}

/// One line of a table block, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `:NAME POLICY [p:b]` (`-` policy for user chains).
    Declare {
        line: usize,
        name: String,
        policy: Option<Policy>,
        counters: Counters,
    },
    Append {
        chain: String,
        rule: Rule,
    },
    /// `-I CHAIN [N]`, 1-based.
    Insert {
        chain: String,
        pos: usize,
        rule: Rule,
    },
    Delete {
        chain: String,
        rule: Rule,
    },
    DeleteNum {
        line: usize,
        chain: String,
        pos: usize,
    },
    NewChain {
        line: usize,
        name: String,
    },
    SetPolicy {
        line: usize,
        chain: String,
        policy: Policy,
    },
    Flush {
        line: usize,
        chain: Option<String>,
    },
    DeleteChain {
        line: usize,
        chain: Option<String>,
    },
}

/// Parses restore text into table blocks without applying anything.
pub fn parse_restore(text: &str) -> Result<Vec<TableBlock>, ParseError> {
    let mut blocks = Vec::new();
    let mut open: Option<TableBlock> = None;
    let mut last_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        last_line = line;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('*') {
            if let Some(b) = &open {
                return Err(ParseError::new(
                    line,
                    trimmed,
                    format!(
                        "COMMIT before a new table (table `{}` opened on line {})",
                        b.table, b.line
                    ),
                ));
            }
            let table = TableKind::from_name(name).ok_or_else(|| {
                ParseError::new(line, name, "a table name: raw, mangle, nat or filter")
            })?;
            open = Some(TableBlock { table, line, commands: Vec::new() });
            continue;
        }
        let Some(block) = open.as_mut() else {
            return Err(ParseError::new(line, first_word(trimmed), "`*table` before any rule"));
        };
        if trimmed == "COMMIT" {
            blocks.push(open.take().expect("open block"));
            continue;
        }
        if let Some(decl) = trimmed.strip_prefix(':') {
            block.commands.push(parse_declaration(line, decl)?);
            continue;
        }
        let words = split_words(line, trimmed)?;
        block.commands.push(parse_command(line, &words)?);
    }
    if let Some(b) = open {
        return Err(ParseError::new(
            last_line,
            "",
            format!("COMMIT to close table `{}` opened on line {}", b.table, b.line),
        ));
    }
    Ok(blocks)
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

/// Splits a line into words the way iptables-restore does: blanks separate, `"…"` quotes (a
/// closing quote ends the word), `\` escapes the next character inside quotes.
fn split_words(line: usize, text: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut have = false;
    for ch in text.chars() {
        if quoted {
            if escaped {
                cur.push(ch);
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                quoted = false;
                words.push(std::mem::take(&mut cur));
                have = false;
            } else {
                cur.push(ch);
            }
            continue;
        }
        match ch {
            '"' => {
                if have {
                    words.push(std::mem::take(&mut cur));
                }
                quoted = true;
                have = true;
            }
            ' ' | '\t' => {
                if have {
                    words.push(std::mem::take(&mut cur));
                    have = false;
                }
            }
            _ => {
                cur.push(ch);
                have = true;
            }
        }
    }
    if quoted {
        return Err(ParseError::new(line, cur, "a closing `\"`"));
    }
    if have {
        words.push(cur);
    }
    Ok(words)
}

fn parse_counters(line: usize, word: &str) -> Result<Counters, ParseError> {
    let bad = || ParseError::new(line, word, "counters as `[packets:bytes]`");
    let inner = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')).ok_or_else(bad)?;
    let (p, b) = inner.split_once(':').ok_or_else(bad)?;
    Ok(Counters { packets: p.parse().map_err(|_| bad())?, bytes: b.parse().map_err(|_| bad())? })
}

fn parse_declaration(line: usize, decl: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let name = *words.first().ok_or_else(|| ParseError::new(line, ":", "a chain name"))?;
    check_chain_name(line, name)?;
    let policy = match words.get(1).copied() {
        None => return Err(ParseError::new(line, "", format!("a policy after `:{name}`"))),
        Some("-") => None,
        Some("ACCEPT") => Some(Policy::Accept),
        Some("DROP") => Some(Policy::Drop),
        Some(other) => {
            return Err(ParseError::new(line, other, "a policy: ACCEPT, DROP or `-`"));
        }
    };
    // iptables-restore ignores malformed chain counters (it reads them only with -c).
    let counters = words.get(2).and_then(|w| parse_counters(line, w).ok()).unwrap_or_default();
    if let Some(extra) = words.get(3) {
        return Err(ParseError::new(line, *extra, "end of line after the counters"));
    }
    Ok(Command::Declare { line, name: name.to_string(), policy, counters })
}

const BUILTIN_TARGETS: [&str; 4] = ["ACCEPT", "DROP", "RETURN", "QUEUE"];

fn check_chain_name(line: usize, name: &str) -> Result<(), ParseError> {
    if name.is_empty()
        || name.len() > 28
        || name.starts_with('-')
        || name.starts_with('!')
        || BUILTIN_TARGETS.contains(&name)
        || name.chars().any(char::is_whitespace)
    {
        return Err(ParseError::new(
            line,
            name,
            "a chain name (1-28 characters, not starting with `-` or `!`, not a built-in target)",
        ));
    }
    Ok(())
}

/// Words of one command line, with the line number for errors.
struct Words<'a> {
    line: usize,
    words: &'a [String],
    pos: usize,
}

impl<'a> Words<'a> {
    fn next(&mut self) -> Option<&'a str> {
        let w = self.words.get(self.pos)?;
        self.pos += 1;
        Some(w)
    }

    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.pos).map(String::as_str)
    }

    /// The option's argument: the next word, whatever it is (`--comment "!"` is a comment).
    fn value(&mut self, option: &str, what: &str) -> Result<&'a str, ParseError> {
        self.next()
            .ok_or_else(|| ParseError::new(self.line, "", format!("{what} after `{option}`")))
    }

    fn err(&self, token: &str, expected: impl Into<String>) -> ParseError {
        ParseError::new(self.line, token, expected)
    }
}

fn parse_command(line: usize, words: &[String]) -> Result<Command, ParseError> {
    let mut w = Words { line, words, pos: 0 };
    let mut counters = None;
    if w.peek().is_some_and(|x| x.starts_with('[')) {
        counters = Some(parse_counters(line, w.next().expect("peeked"))?);
    }
    let cmd = w.next().ok_or_else(|| w.err("", "a command"))?;
    let chain_arg = |w: &mut Words<'_>, cmd: &str| -> Result<String, ParseError> {
        let name = w.value(cmd, "a chain name")?;
        check_chain_name(line, name)?;
        Ok(name.to_string())
    };
    let end = |w: &Words<'_>| match w.peek() {
        Some(x) => Err(w.err(x, "end of line")),
        None => Ok(()),
    };
    match cmd {
        "-A" | "--append" => {
            let chain = chain_arg(&mut w, cmd)?;
            let rule = parse_rule(&mut w, counters)?;
            Ok(Command::Append { chain, rule })
        }
        "-I" | "--insert" => {
            let chain = chain_arg(&mut w, cmd)?;
            let mut pos = 1;
            if let Some(n) = w.peek().filter(|x| x.bytes().all(|b| b.is_ascii_digit())) {
                pos = n
                    .parse()
                    .ok()
                    .filter(|&p| p >= 1)
                    .ok_or_else(|| w.err(n, "a rule number of at least 1"))?;
                w.next();
            }
            let rule = parse_rule(&mut w, counters)?;
            Ok(Command::Insert { chain, pos, rule })
        }
        "-D" | "--delete" => {
            let chain = chain_arg(&mut w, cmd)?;
            if let Some(n) = w.peek().filter(|x| x.bytes().all(|b| b.is_ascii_digit())) {
                let pos = n
                    .parse()
                    .ok()
                    .filter(|&p| p >= 1)
                    .ok_or_else(|| w.err(n, "a rule number of at least 1"))?;
                w.next();
                end(&w)?;
                return Ok(Command::DeleteNum { line, chain, pos });
            }
            let rule = parse_rule(&mut w, counters)?;
            Ok(Command::Delete { chain, rule })
        }
        "-N" | "--new-chain" => {
            let name = chain_arg(&mut w, cmd)?;
            end(&w)?;
            Ok(Command::NewChain { line, name })
        }
        "-P" | "--policy" => {
            let chain = chain_arg(&mut w, cmd)?;
            let policy = match w.value(cmd, "a policy")? {
                "ACCEPT" => Policy::Accept,
                "DROP" => Policy::Drop,
                other => return Err(w.err(other, "a policy: ACCEPT or DROP")),
            };
            end(&w)?;
            Ok(Command::SetPolicy { line, chain, policy })
        }
        "-F" | "--flush" | "-X" | "--delete-chain" => {
            let chain = match w.peek() {
                Some(_) => Some(chain_arg(&mut w, cmd)?),
                None => None,
            };
            end(&w)?;
            Ok(if cmd.contains('F') || cmd == "--flush" {
                Command::Flush { line, chain }
            } else {
                Command::DeleteChain { line, chain }
            })
        }
        other => Err(w.err(other, "a command: -A, -I, -D, -N, -P, -F or -X")),
    }
}

/// Options of the generic IP part and the module loaders (getopt precedence: these first).
const BASE_OPTIONS: [&str; 11] = [
    "--source",
    "--src",
    "--destination",
    "--dst",
    "--protocol",
    "--in-interface",
    "--out-interface",
    "--jump",
    "--goto",
    "--match",
    "--fragment",
];

/// Resolves a long option the way getopt_long does: an exact name or an unambiguous prefix.
fn resolve(
    name: &str,
    options: &[&'static str],
) -> Result<Option<&'static str>, Vec<&'static str>> {
    if let Some(exact) = options.iter().find(|o| **o == name) {
        return Ok(Some(exact));
    }
    let hits: Vec<&'static str> = options.iter().copied().filter(|o| o.starts_with(name)).collect();
    match hits.len() {
        0 => Ok(None),
        1 => Ok(Some(hits[0])),
        _ => Err(hits),
    }
}

/// A rule being built: which module gets the next option.
struct Builder {
    rule: Rule,
    target: Option<TargetBuilder>,
    /// Whether `-p` was given (modules such as tcp check it).
    proto_seen: bool,
    /// Per match: whether any of its options was given (for "missing option" errors).
    given: Vec<bool>,
}

fn parse_rule(w: &mut Words<'_>, counters: Option<Counters>) -> Result<Rule, ParseError> {
    let mut b = Builder {
        rule: Rule {
            src: None,
            dst: None,
            iif: None,
            oif: None,
            proto: None,
            fragment: None,
            matches: Vec::new(),
            target: Target::None,
            counters: counters.unwrap_or_default(),
            line: w.line,
        },
        target: None,
        proto_seen: false,
        given: Vec::new(),
    };
    let mut negated = false;
    while let Some(word) = w.next() {
        if word == "!" {
            if negated {
                return Err(w.err(word, "an option after `!` (a single `!`)"));
            }
            negated = true;
            continue;
        }
        let neg = std::mem::take(&mut negated);
        let opt = match word {
            "-s" => "--source",
            "-d" => "--destination",
            "-p" => "--protocol",
            "-i" => "--in-interface",
            "-o" => "--out-interface",
            "-j" => "--jump",
            "-g" => "--goto",
            "-m" => "--match",
            "-f" => "--fragment",
            w2 if w2.starts_with("--") => w2,
            other => {
                return Err(w.err(
                    other,
                    "an option (`-s`, `-d`, `-p`, `-i`, `-o`, `-m`, `-j`, `-g` or a `--` option)",
                ));
            }
        };
        if let Some(base) = resolve(opt, &BASE_OPTIONS).map_err(|h| ambiguous(w, opt, &h))? {
            parse_base(w, &mut b, base, neg)?;
            continue;
        }
        parse_module_option(w, &mut b, opt, neg)?;
    }
    if negated {
        return Err(w.err("!", "an option after `!`"));
    }
    finish_rule(w, b)
}

fn ambiguous(w: &Words<'_>, opt: &str, hits: &[&str]) -> ParseError {
    w.err(opt, format!("one option, not a prefix of several ({})", hits.join(", ")))
}

fn parse_base(w: &mut Words<'_>, b: &mut Builder, opt: &str, neg: bool) -> Result<(), ParseError> {
    let r = &mut b.rule;
    match opt {
        "--source" | "--src" | "--destination" | "--dst" => {
            let v = w.value(opt, "an address")?;
            let cidr = Cidr::parse(v).map_err(|e| w.err(v, e))?;
            let slot = if opt.starts_with("--s") { &mut r.src } else { &mut r.dst };
            if slot.is_some() {
                return Err(w.err(opt, "each of -s and -d at most once"));
            }
            // `-s 0.0.0.0/0` matches everything; iptables-save leaves it out (unless negated).
            if cidr != Cidr::ANY || neg {
                *slot = Some(AddrMatch { cidr, negated: neg });
            }
        }
        "--protocol" => {
            let v = w.value(opt, "a protocol")?;
            if b.proto_seen {
                return Err(w.err(opt, "a single -p (multiple -p flags are not allowed)"));
            }
            b.proto_seen = true;
            let number = parse_protocol(v).ok_or_else(|| {
                w.err(v, "a protocol name (tcp, udp, icmp, all, …) or number 0-255")
            })?;
            if number != 0 || neg {
                r.proto = Some(ProtoMatch { number, negated: neg });
            }
        }
        "--in-interface" | "--out-interface" => {
            let v = w.value(opt, "an interface name")?;
            let m = IfaceMatch::parse(v, neg).map_err(|e| w.err(v, e))?;
            let slot = if opt == "--in-interface" { &mut r.iif } else { &mut r.oif };
            if slot.is_some() {
                return Err(w.err(opt, "each of -i and -o at most once"));
            }
            if !m.matches_all() || neg {
                *slot = Some(m);
            }
        }
        "--match" => {
            let v = w.value(opt, "a match name")?;
            if neg {
                return Err(w.err("!", "no `!` before -m"));
            }
            load_match(w, b, v)?;
        }
        "--jump" | "--goto" => {
            let v = w.value(opt, "a target")?;
            if neg {
                return Err(w.err("!", "no `!` before -j/-g"));
            }
            if b.target.is_some() {
                return Err(w.err(opt, "a single -j or -g"));
            }
            b.target = Some(if opt == "--goto" {
                if BUILTIN_TARGETS.contains(&v) || TargetBuilder::extension(v).is_some() {
                    return Err(w.err(v, "a user-defined chain after -g"));
                }
                check_chain_name(w.line, v)?;
                TargetBuilder::Goto(v.to_string())
            } else {
                TargetBuilder::new(w, v)?
            });
        }
        "--fragment" => {
            if r.fragment.is_some() {
                return Err(w.err("-f", "-f at most once"));
            }
            r.fragment = Some(neg);
        }
        _ => unreachable!("base option table"),
    }
    Ok(())
}

fn parse_protocol(v: &str) -> Option<u8> {
    let lower = v.to_ascii_lowercase();
    let named = [
        ("all", 0),
        ("icmp", 1),
        ("igmp", 2),
        ("tcp", 6),
        ("udp", 17),
        ("gre", 47),
        ("esp", 50),
        ("ah", 51),
        ("sctp", 132),
        ("udplite", 136),
        ("dccp", 33),
    ];
    if let Some((_, n)) = named.iter().find(|(name, _)| *name == lower) {
        return Some(*n);
    }
    v.parse::<u8>().ok()
}

/// The protocol `-p` named, if it is one with an implicit match module.
fn proto_module(r: &Rule) -> Option<&'static str> {
    match r.proto {
        Some(ProtoMatch { number: 6, negated: false }) => Some("tcp"),
        Some(ProtoMatch { number: 17, negated: false }) => Some("udp"),
        Some(ProtoMatch { number: 1, negated: false }) => Some("icmp"),
        _ => None,
    }
}

fn load_match(w: &Words<'_>, b: &mut Builder, name: &str) -> Result<(), ParseError> {
    let r = &mut b.rule;
    let needs_proto = |proto: &str| -> Result<(), ParseError> {
        if proto_module(r) != Some(proto) {
            return Err(w.err(name, format!("`-p {proto}` before `-m {proto}`")));
        }
        Ok(())
    };
    let m = match name {
        "tcp" => {
            needs_proto("tcp")?;
            // iptables-nft folds a second tcp match into the first one.
            if let Some(i) = r.matches.iter().position(|m| matches!(m, Match::Tcp(_))) {
                let m = r.matches.remove(i);
                r.matches.push(m);
                let g = b.given.remove(i);
                b.given.push(g);
                return Ok(());
            }
            Match::Tcp(TcpMatch::default())
        }
        "udp" => {
            needs_proto("udp")?;
            if let Some(i) = r.matches.iter().position(|m| matches!(m, Match::Udp(_))) {
                let m = r.matches.remove(i);
                r.matches.push(m);
                let g = b.given.remove(i);
                b.given.push(g);
                return Ok(());
            }
            Match::Udp(UdpMatch::default())
        }
        "icmp" => {
            needs_proto("icmp")?;
            Match::Icmp(IcmpMatch { kind: None, codes: (0, 0xff), negated: false })
        }
        "mark" => Match::Mark(MarkMatch { value: 0, mask: 0, negated: false }),
        "connmark" => Match::Connmark(MarkMatch { value: 0, mask: 0, negated: false }),
        "conntrack" => Match::Conntrack(StateMatch { states: 0, negated: false }),
        "state" => Match::State(StateMatch { states: 0, negated: false }),
        "addrtype" => Match::Addrtype(AddrtypeMatch::default()),
        "multiport" => {
            if !matches!(proto_module(r), Some("tcp" | "udp")) {
                return Err(w.err(name, "`-p tcp` or `-p udp` before `-m multiport`"));
            }
            Match::Multiport(MultiportMatch {
                dir: MultiportDir::Either,
                ports: Vec::new(),
                negated: false,
            })
        }
        "socket" => Match::Socket(SocketMatch::default()),
        "owner" => Match::OwnerSocketExists { negated: false },
        "comment" => Match::Comment(String::new()),
        other => {
            return Err(w.err(
                other,
                "a match the model implements: tcp, udp, icmp, mark, connmark, conntrack, state, addrtype, multiport, socket, owner, comment",
            ));
        }
    };
    r.matches.push(m);
    b.given.push(false);
    Ok(())
}

fn match_options(m: &Match) -> &'static [&'static str] {
    match m {
        Match::Tcp(_) => &[
            "--source-port",
            "--sport",
            "--destination-port",
            "--dport",
            "--tcp-flags",
            "--syn",
            "--tcp-option",
        ],
        Match::Udp(_) => &["--source-port", "--sport", "--destination-port", "--dport"],
        Match::Icmp(_) => &["--icmp-type"],
        Match::Mark(_) | Match::Connmark(_) => &["--mark"],
        Match::Conntrack(_) => &[
            "--ctstate",
            "--ctproto",
            "--ctorigsrc",
            "--ctorigdst",
            "--ctreplsrc",
            "--ctrepldst",
            "--ctstatus",
            "--ctexpire",
            "--ctdir",
            "--ctorigsrcport",
            "--ctorigdstport",
            "--ctreplsrcport",
            "--ctrepldstport",
        ],
        Match::State(_) => &["--state"],
        Match::Addrtype(_) => {
            &["--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"]
        }
        Match::Multiport(_) => {
            &["--source-ports", "--sports", "--destination-ports", "--dports", "--ports"]
        }
        Match::Socket(_) => &["--transparent", "--nowildcard", "--restore-skmark"],
        Match::OwnerSocketExists { .. } => {
            &["--socket-exists", "--uid-owner", "--gid-owner", "--suppl-groups"]
        }
        Match::Comment(_) => &["--comment"],
    }
}

/// Dispatches a `--option` to the target or a loaded match (newest first), loading the
/// protocol's match implicitly when nothing else takes it.
fn parse_module_option(
    w: &mut Words<'_>,
    b: &mut Builder,
    opt: &str,
    neg: bool,
) -> Result<(), ParseError> {
    if let Some(t) = &mut b.target
        && let Some(name) = resolve(opt, t.options()).map_err(|h| ambiguous(w, opt, &h))?
    {
        return t.option(w, name, neg);
    }
    for i in (0..b.rule.matches.len()).rev() {
        let opts = match_options(&b.rule.matches[i]);
        if let Some(name) = resolve(opt, opts).map_err(|h| ambiguous(w, opt, &h))? {
            let again = std::mem::replace(&mut b.given[i], true);
            return match_option(w, &mut b.rule.matches[i], name, neg, again);
        }
    }
    if let Some(proto) = proto_module(&b.rule) {
        let probe = match proto {
            "tcp" => Match::Tcp(TcpMatch::default()),
            "udp" => Match::Udp(UdpMatch::default()),
            _ => Match::Icmp(IcmpMatch { kind: None, codes: (0, 0xff), negated: false }),
        };
        if resolve(opt, match_options(&probe)).map_err(|h| ambiguous(w, opt, &h))?.is_some() {
            load_match(w, b, proto)?;
            return parse_module_option(w, b, opt, neg);
        }
    }
    Err(w.err(opt, "an option of the rule's matches or target"))
}

fn parse_port(v: &str) -> Option<u16> {
    if let Ok(n) = v.parse::<u16>() {
        return Some(n);
    }
    let services = [
        ("ftp", 21),
        ("ssh", 22),
        ("telnet", 23),
        ("smtp", 25),
        ("domain", 53),
        ("http", 80),
        ("ntp", 123),
        ("https", 443),
    ];
    services.iter().find(|(n, _)| *n == v).map(|(_, p)| *p)
}

/// `a`, `a:b`, `a:` or `:b` (tcp/udp/multiport syntax).
fn parse_port_range(w: &Words<'_>, v: &str) -> Result<PortRange, ParseError> {
    let bad = || w.err(v, "a port or port range (`N`, `N:M`, `N:`, `:M`) with N <= M");
    let (lo, hi) = match v.split_once(':') {
        None => {
            let p = parse_port(v).ok_or_else(bad)?;
            (p, p)
        }
        Some((a, b)) => (
            if a.is_empty() { 0 } else { parse_port(a).ok_or_else(bad)? },
            if b.is_empty() { 65535 } else { parse_port(b).ok_or_else(bad)? },
        ),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

/// strtoul with base 0: `0x` hex, leading `0` octal, else decimal.
pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// `VALUE[/MASK]`; the mask defaults to all ones.
fn parse_mark(w: &Words<'_>, v: &str) -> Result<(u32, u32), ParseError> {
    let bad = || w.err(v, "a mark `VALUE[/MASK]` (decimal, 0x hex or 0 octal, 32 bits)");
    match v.split_once('/') {
        None => Ok((parse_u32(v).ok_or_else(bad)?, u32::MAX)),
        Some((a, m)) => Ok((parse_u32(a).ok_or_else(bad)?, parse_u32(m).ok_or_else(bad)?)),
    }
}

fn set_port(
    w: &Words<'_>,
    slot: &mut Option<PortMatch>,
    opt: &str,
    v: &str,
    neg: bool,
) -> Result<(), ParseError> {
    if slot.is_some() {
        return Err(w.err(opt, format!("`{opt}` at most once")));
    }
    let range = parse_port_range(w, v)?;
    // The full range matches everything; iptables-nft drops it (unless negated).
    if range != PortRange::ALL || neg {
        *slot = Some(PortMatch { range, negated: neg });
    }
    Ok(())
}

const TCP_FLAG_NAMES: [(&str, u8); 8] = [
    ("FIN", 0x01),
    ("SYN", 0x02),
    ("RST", 0x04),
    ("PSH", 0x08),
    ("ACK", 0x10),
    ("URG", 0x20),
    ("ALL", 0x3f),
    ("NONE", 0),
];

fn parse_tcp_flag_list(w: &Words<'_>, v: &str) -> Result<u8, ParseError> {
    let mut bits = 0;
    for name in v.split(',') {
        let (_, b) = TCP_FLAG_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| w.err(v, "TCP flags: FIN,SYN,RST,PSH,ACK,URG,ALL,NONE"))?;
        bits |= b;
    }
    Ok(bits)
}

fn match_option(
    w: &mut Words<'_>,
    m: &mut Match,
    opt: &str,
    neg: bool,
    again: bool,
) -> Result<(), ParseError> {
    let no_neg = |w: &Words<'_>| -> Result<(), ParseError> {
        if neg { Err(w.err(opt, format!("no `!` before `{opt}`"))) } else { Ok(()) }
    };
    match m {
        Match::Tcp(t) => match opt {
            "--source-port" | "--sport" => {
                let v = w.value(opt, "a port")?;
                set_port(w, &mut t.sport, "--sport", v, neg)?;
            }
            "--destination-port" | "--dport" => {
                let v = w.value(opt, "a port")?;
                set_port(w, &mut t.dport, "--dport", v, neg)?;
            }
            "--tcp-flags" | "--syn" => {
                if t.flags.is_some() {
                    return Err(w.err(opt, "one of --tcp-flags and --syn, once"));
                }
                let (mask, comp) = if opt == "--syn" {
                    (0x17, 0x02)
                } else {
                    let mask = w.value(opt, "a flag mask")?;
                    let mask = parse_tcp_flag_list(w, mask)?;
                    let comp = w.value(opt, "the flags that must be set")?;
                    (mask, parse_tcp_flag_list(w, comp)?)
                };
                t.flags = Some(TcpFlagsMatch { mask, comp, negated: neg });
            }
            _ => {
                return Err(w.err(
                    opt,
                    "a tcp option the model implements (--sport, --dport, --tcp-flags, --syn)",
                ));
            }
        },
        Match::Udp(u) => {
            let v = w.value(opt, "a port")?;
            if opt.contains("source") || opt == "--sport" {
                set_port(w, &mut u.sport, "--sport", v, neg)?;
            } else {
                set_port(w, &mut u.dport, "--dport", v, neg)?;
            }
        }
        Match::Icmp(i) => {
            let v = w.value(opt, "an ICMP type")?;
            if i.kind.is_some() {
                return Err(w.err(opt, "--icmp-type at most once"));
            }
            let (kind, codes) = parse_icmp_type(v).ok_or_else(|| {
                w.err(v, "an ICMP type: a name (echo-request, …), `any`, TYPE or TYPE/CODE")
            })?;
            *i = IcmpMatch { kind, codes, negated: neg };
        }
        Match::Mark(mm) | Match::Connmark(mm) => {
            let v = w.value(opt, "a mark")?;
            if again {
                return Err(w.err(opt, "--mark at most once per match"));
            }
            let (value, mask) = parse_mark(w, v)?;
            // The kernel compares (mark & mask) == value, value kept as given (so 0x1ff/0xf0
            // can never match, and iptables-save prints it back unchanged).
            *mm = MarkMatch { value, mask, negated: neg };
        }
        Match::Conntrack(s) | Match::State(s) => {
            if !matches!(opt, "--ctstate" | "--state") {
                return Err(
                    w.err(opt, "--ctstate (the only conntrack option the model implements)")
                );
            }
            let v = w.value(opt, "a state list")?;
            if again {
                return Err(w.err(opt, format!("`{opt}` at most once")));
            }
            let mut bits = 0;
            for name in v.split(',') {
                let (b, _) = ctstate::NAMES
                    .iter()
                    .find(|(_, n)| n.eq_ignore_ascii_case(name))
                    .filter(|(b, _)| opt == "--ctstate" || *b & (ctstate::SNAT | ctstate::DNAT) == 0)
                    .ok_or_else(|| {
                        w.err(v, "states from INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED (and SNAT,DNAT for --ctstate)")
                    })?;
                bits |= b;
            }
            *s = StateMatch { states: bits, negated: neg };
        }
        Match::Addrtype(a) => match opt {
            "--src-type" | "--dst-type" => {
                let v = w.value(opt, "address types")?;
                let mut bits = 0u16;
                for name in v.split(',') {
                    let i = addrtype::NAMES
                        .iter()
                        .position(|n| n.eq_ignore_ascii_case(name))
                        .ok_or_else(|| {
                            w.err(v, format!("address types from {}", addrtype::NAMES.join(",")))
                        })?;
                    bits |= 1 << i;
                }
                let slot = if opt == "--src-type" { &mut a.src } else { &mut a.dst };
                if slot.is_some() {
                    return Err(w.err(opt, format!("`{opt}` at most once")));
                }
                *slot = Some((bits, neg));
            }
            "--limit-iface-in" => {
                no_neg(w)?;
                a.limit_iface_in = true;
            }
            _ => {
                no_neg(w)?;
                a.limit_iface_out = true;
            }
        },
        Match::Multiport(mp) => {
            let v = w.value(opt, "a port list")?;
            if !mp.ports.is_empty() {
                return Err(w.err(opt, "one port list per multiport match"));
            }
            mp.dir = match opt {
                "--source-ports" | "--sports" => MultiportDir::Source,
                "--destination-ports" | "--dports" => MultiportDir::Destination,
                _ => MultiportDir::Either,
            };
            let mut slots = 0;
            for part in v.split(',') {
                let range = parse_port_range(w, part)?;
                slots += if range.lo == range.hi { 1 } else { 2 };
                mp.ports.push(range);
            }
            if slots > 15 {
                return Err(w.err(v, "at most 15 ports (a range counts as two)"));
            }
            mp.negated = neg;
        }
        Match::Socket(s) => {
            no_neg(w)?;
            match opt {
                "--transparent" => s.transparent = true,
                "--nowildcard" => s.nowildcard = true,
                _ => s.restore_skmark = true,
            }
        }
        Match::OwnerSocketExists { negated } => {
            if opt != "--socket-exists" {
                return Err(
                    w.err(opt, "--socket-exists (the only owner option the model implements)")
                );
            }
            *negated = neg;
        }
        Match::Comment(c) => {
            no_neg(w)?;
            let v = w.value(opt, "a comment")?;
            if v.len() > 255 {
                return Err(w.err(v, "a comment of at most 255 characters"));
            }
            *c = v.to_string();
        }
    }
    Ok(())
}

/// ICMP type names as iptables knows them → (type, code range); `any` → `None`.
#[allow(clippy::type_complexity)]
fn parse_icmp_type(v: &str) -> Option<(Option<u8>, (u8, u8))> {
    const NAMES: [(&str, u8, Option<u8>); 36] = [
        ("echo-reply", 0, None),
        ("pong", 0, None),
        ("destination-unreachable", 3, None),
        ("network-unreachable", 3, Some(0)),
        ("host-unreachable", 3, Some(1)),
        ("protocol-unreachable", 3, Some(2)),
        ("port-unreachable", 3, Some(3)),
        ("fragmentation-needed", 3, Some(4)),
        ("source-route-failed", 3, Some(5)),
        ("network-unknown", 3, Some(6)),
        ("host-unknown", 3, Some(7)),
        ("network-prohibited", 3, Some(9)),
        ("host-prohibited", 3, Some(10)),
        ("TOS-network-unreachable", 3, Some(11)),
        ("TOS-host-unreachable", 3, Some(12)),
        ("communication-prohibited", 3, Some(13)),
        ("host-precedence-violation", 3, Some(14)),
        ("precedence-cutoff", 3, Some(15)),
        ("source-quench", 4, None),
        ("redirect", 5, None),
        ("network-redirect", 5, Some(0)),
        ("host-redirect", 5, Some(1)),
        ("TOS-network-redirect", 5, Some(2)),
        ("TOS-host-redirect", 5, Some(3)),
        ("echo-request", 8, None),
        ("ping", 8, None),
        ("router-advertisement", 9, None),
        ("router-solicitation", 10, None),
        ("time-exceeded", 11, None),
        ("ttl-zero-during-transit", 11, Some(0)),
        ("ttl-zero-during-reassembly", 11, Some(1)),
        ("parameter-problem", 12, None),
        ("ip-header-bad", 12, Some(0)),
        ("required-option-missing", 12, Some(1)),
        ("timestamp-request", 13, None),
        ("timestamp-reply", 14, None),
    ];
    if v.eq_ignore_ascii_case("any") {
        return Some((None, (0, 0xff)));
    }
    if let Some((_, t, c)) = NAMES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(v)) {
        return Some((Some(*t), c.map_or((0, 0xff), |c| (c, c))));
    }
    match v.split_once('/') {
        None => Some((Some(v.parse().ok()?), (0, 0xff))),
        Some((t, c)) => {
            let c: u8 = c.parse().ok()?;
            Some((Some(t.parse().ok()?), (c, c)))
        }
    }
}

/// A target being parsed.
enum TargetBuilder {
    Simple(Target),
    Goto(String),
    Jump(String),
    Reject(Option<RejectWith>),
    Log(LogTarget),
    Mark(Option<(u32, u32)>),
    Connmark { op: Option<ConnmarkOp>, nfmask: Option<u32>, ctmask: Option<u32> },
    Ct { zone: Option<u16>, notrack: bool },
    Nat { kind: &'static str, range: NatRange, to_given: bool },
    Tproxy { port: Option<u16>, ip: Ipv4Addr, mark: (u32, u32) },
}

impl TargetBuilder {
    fn extension(name: &str) -> Option<TargetBuilder> {
        Some(match name {
            "REJECT" => TargetBuilder::Reject(None),
            "LOG" => TargetBuilder::Log(LogTarget { level: 4, ..LogTarget::default() }),
            "MARK" => TargetBuilder::Mark(None),
            "CONNMARK" => TargetBuilder::Connmark { op: None, nfmask: None, ctmask: None },
            "CT" => TargetBuilder::Ct { zone: None, notrack: false },
            "NOTRACK" => TargetBuilder::Simple(Target::Notrack),
            "REDIRECT" => {
                TargetBuilder::Nat { kind: "REDIRECT", range: NatRange::default(), to_given: false }
            }
            "MASQUERADE" => TargetBuilder::Nat {
                kind: "MASQUERADE",
                range: NatRange::default(),
                to_given: false,
            },
            "DNAT" => {
                TargetBuilder::Nat { kind: "DNAT", range: NatRange::default(), to_given: false }
            }
            "SNAT" => {
                TargetBuilder::Nat { kind: "SNAT", range: NatRange::default(), to_given: false }
            }
            "TPROXY" => {
                TargetBuilder::Tproxy { port: None, ip: Ipv4Addr::UNSPECIFIED, mark: (0, 0) }
            }
            _ => return None,
        })
    }

    fn new(w: &Words<'_>, name: &str) -> Result<TargetBuilder, ParseError> {
        Ok(match name {
            "ACCEPT" => TargetBuilder::Simple(Target::Accept),
            "DROP" => TargetBuilder::Simple(Target::Drop),
            "RETURN" => TargetBuilder::Simple(Target::Return),
            "QUEUE" | "NFQUEUE" | "SECMARK" | "CONNSECMARK" | "TEE" | "CLASSIFY" | "DSCP"
            | "TOS" | "TTL" | "NETMAP" | "NFLOG" | "TRACE" | "AUDIT" | "HMARK" | "TCPMSS" => {
                return Err(w.err(name, "a target the model implements (ACCEPT, DROP, RETURN, REJECT, LOG, MARK, CONNMARK, CT, NOTRACK, REDIRECT, MASQUERADE, DNAT, SNAT, TPROXY or a chain)"));
            }
            _ => match TargetBuilder::extension(name) {
                Some(t) => t,
                None => {
                    check_chain_name(w.line, name)?;
                    TargetBuilder::Jump(name.to_string())
                }
            },
        })
    }

    fn options(&self) -> &'static [&'static str] {
        match self {
            TargetBuilder::Simple(_) | TargetBuilder::Goto(_) | TargetBuilder::Jump(_) => &[],
            TargetBuilder::Reject(_) => &["--reject-with"],
            TargetBuilder::Log(_) => &[
                "--log-level",
                "--log-prefix",
                "--log-tcp-sequence",
                "--log-tcp-options",
                "--log-ip-options",
                "--log-uid",
                "--log-macdecode",
            ],
            TargetBuilder::Mark(_) => {
                &["--set-xmark", "--set-mark", "--and-mark", "--or-mark", "--xor-mark"]
            }
            TargetBuilder::Connmark { .. } => &[
                "--set-xmark",
                "--set-mark",
                "--and-mark",
                "--or-mark",
                "--xor-mark",
                "--save-mark",
                "--restore-mark",
                "--mask",
                "--nfmask",
                "--ctmask",
            ],
            TargetBuilder::Ct { .. } => &[
                "--notrack",
                "--zone",
                "--helper",
                "--ctevents",
                "--expevents",
                "--timeout",
                "--zone-orig",
                "--zone-reply",
            ],
            TargetBuilder::Nat { kind: "DNAT", .. } => {
                &["--to-destination", "--random", "--persistent"]
            }
            TargetBuilder::Nat { kind: "SNAT", .. } => {
                &["--to-source", "--random", "--random-fully", "--persistent"]
            }
            TargetBuilder::Nat { kind: "MASQUERADE", .. } => {
                &["--to-ports", "--random", "--random-fully"]
            }
            TargetBuilder::Nat { .. } => &["--to-ports", "--random"],
            TargetBuilder::Tproxy { .. } => &["--on-port", "--on-ip", "--tproxy-mark"],
        }
    }

    fn option(&mut self, w: &mut Words<'_>, opt: &str, neg: bool) -> Result<(), ParseError> {
        if neg {
            return Err(w.err(opt, format!("no `!` before target option `{opt}`")));
        }
        match self {
            TargetBuilder::Simple(_) | TargetBuilder::Goto(_) | TargetBuilder::Jump(_) => {
                unreachable!("no options")
            }
            TargetBuilder::Reject(with) => {
                let v = w.value(opt, "a reject type")?;
                let aliases = [
                    ("net-unreach", RejectWith::IcmpNetUnreachable),
                    ("host-unreach", RejectWith::IcmpHostUnreachable),
                    ("port-unreach", RejectWith::IcmpPortUnreachable),
                    ("proto-unreach", RejectWith::IcmpProtoUnreachable),
                    ("net-prohib", RejectWith::IcmpNetProhibited),
                    ("host-prohib", RejectWith::IcmpHostProhibited),
                    ("admin-prohib", RejectWith::IcmpAdminProhibited),
                    ("tcp-rst", RejectWith::TcpReset),
                ];
                let r = RejectWith::ALL
                    .iter()
                    .map(|(r, n)| (*n, *r))
                    .chain(aliases)
                    .find(|(n, _)| *n == v)
                    .map(|(_, r)| r)
                    .ok_or_else(|| w.err(v, "a reject type: icmp-port-unreachable, tcp-reset, icmp-host-prohibited, …"))?;
                *with = Some(r);
            }
            TargetBuilder::Log(l) => match opt {
                "--log-level" => {
                    let v = w.value(opt, "a log level")?;
                    let names =
                        ["emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"];
                    l.level = match v.parse::<u8>() {
                        Ok(n) if n <= 7 => n,
                        _ => names
                            .iter()
                            .position(|n| *n == v)
                            .or(match v {
                                "err" => Some(3),
                                "warn" => Some(4),
                                "panic" => Some(0),
                                _ => None,
                            })
                            .ok_or_else(|| w.err(v, "a log level 0-7 or a syslog level name"))?
                            as u8,
                    };
                }
                "--log-prefix" => {
                    let v = w.value(opt, "a prefix")?;
                    if v.len() > 29 {
                        return Err(w.err(v, "a log prefix of at most 29 characters"));
                    }
                    l.prefix = (!v.is_empty()).then(|| v.to_string());
                }
                other => {
                    let bit = match other {
                        "--log-tcp-sequence" => 0,
                        "--log-tcp-options" => 1,
                        "--log-ip-options" => 2,
                        "--log-uid" => 3,
                        _ => 4,
                    };
                    l.flags |= 1 << bit;
                }
            },
            TargetBuilder::Mark(m) => {
                if m.is_some() {
                    return Err(w.err(opt, "a single MARK operation"));
                }
                let v = w.value(opt, "a mark")?;
                *m = Some(mark_op(w, opt, v)?);
            }
            TargetBuilder::Connmark { op, nfmask, ctmask } => match opt {
                "--save-mark" | "--restore-mark" => {
                    if op.is_some() {
                        return Err(w.err(opt, "a single CONNMARK operation"));
                    }
                    *op = Some(if opt == "--save-mark" {
                        ConnmarkOp::Save { nfmask: 0, ctmask: 0 }
                    } else {
                        ConnmarkOp::Restore { nfmask: 0, ctmask: 0 }
                    });
                }
                "--mask" | "--nfmask" | "--ctmask" => {
                    let v = w.value(opt, "a mask")?;
                    let m = parse_u32(v).ok_or_else(|| w.err(v, "a 32-bit mask"))?;
                    if opt != "--ctmask" {
                        *nfmask = Some(m);
                    }
                    if opt != "--nfmask" {
                        *ctmask = Some(m);
                    }
                }
                _ => {
                    if op.is_some() {
                        return Err(w.err(opt, "a single CONNMARK operation"));
                    }
                    let v = w.value(opt, "a mark")?;
                    let (value, mask) = mark_op(w, opt, v)?;
                    *op = Some(ConnmarkOp::SetXmark { value, mask });
                }
            },
            TargetBuilder::Ct { zone, notrack } => match opt {
                "--notrack" => *notrack = true,
                "--zone" => {
                    let v = w.value(opt, "a zone number")?;
                    *zone = Some(v.parse().map_err(|_| w.err(v, "a zone number 0-65535"))?);
                }
                other => {
                    return Err(
                        w.err(other, "a CT option the model implements (--zone, --notrack)")
                    );
                }
            },
            TargetBuilder::Nat { kind, range, to_given } => match opt {
                "--random" => range.random = true,
                "--random-fully" => range.random_fully = true,
                "--persistent" => range.persistent = true,
                "--to-ports" => {
                    let v = w.value(opt, "a port or port range")?;
                    range.ports = Some(parse_dash_ports(w, v)?);
                    *to_given = true;
                }
                _ => {
                    let v = w.value(opt, "an address[:port] range")?;
                    if *to_given {
                        return Err(w.err(opt, format!("one `{opt}` per {kind} rule")));
                    }
                    let parsed = parse_nat_to(w, v)?;
                    range.addrs = parsed.addrs;
                    range.ports = parsed.ports;
                    *to_given = true;
                }
            },
            TargetBuilder::Tproxy { port, ip, mark } => match opt {
                "--on-port" => {
                    let v = w.value(opt, "a port")?;
                    *port = Some(parse_port(v).ok_or_else(|| w.err(v, "a port 0-65535"))?);
                }
                "--on-ip" => {
                    let v = w.value(opt, "an address")?;
                    *ip = v.parse().map_err(|_| w.err(v, "an IPv4 address"))?;
                }
                _ => {
                    let v = w.value(opt, "a mark")?;
                    *mark = parse_mark(w, v)?;
                }
            },
        }
        Ok(())
    }

    fn finish(self, w: &Words<'_>, rule: &Rule) -> Result<Target, ParseError> {
        let proto = proto_module(rule);
        Ok(match self {
            TargetBuilder::Simple(t) => t,
            TargetBuilder::Goto(name) => Target::Goto(ChainRef { name, index: usize::MAX }),
            TargetBuilder::Jump(name) => Target::Jump(ChainRef { name, index: usize::MAX }),
            TargetBuilder::Reject(with) => {
                let with = with.unwrap_or(RejectWith::IcmpPortUnreachable);
                if with == RejectWith::TcpReset && proto != Some("tcp") {
                    return Err(w.err("tcp-reset", "`-p tcp` for REJECT --reject-with tcp-reset"));
                }
                Target::Reject(with)
            }
            TargetBuilder::Log(l) => Target::Log(l),
            TargetBuilder::Mark(m) => {
                let (value, mask) = m.ok_or_else(|| {
                    w.err(
                        "MARK",
                        "one of --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark",
                    )
                })?;
                Target::Mark { value, mask }
            }
            TargetBuilder::Connmark { op, nfmask, ctmask } => {
                let op = op.ok_or_else(|| {
                    w.err(
                        "CONNMARK",
                        "one of --set-xmark, --set-mark, --save-mark, --restore-mark, …",
                    )
                })?;
                let nf = nfmask.unwrap_or(u32::MAX);
                let ct = ctmask.unwrap_or(u32::MAX);
                Target::Connmark(match op {
                    ConnmarkOp::Save { .. } => ConnmarkOp::Save { nfmask: nf, ctmask: ct },
                    ConnmarkOp::Restore { .. } => ConnmarkOp::Restore { nfmask: nf, ctmask: ct },
                    set => {
                        if nfmask.is_some() || ctmask.is_some() {
                            return Err(
                                w.err("--mask", "masks only with --save-mark or --restore-mark")
                            );
                        }
                        set
                    }
                })
            }
            TargetBuilder::Ct { zone, notrack } => {
                Target::Ct { zone: zone.filter(|z| *z != 0), notrack }
            }
            TargetBuilder::Nat { kind, range, to_given } => {
                if range.ports.is_some() && !matches!(proto, Some("tcp" | "udp")) {
                    return Err(w.err(kind, format!("`-p tcp` or `-p udp` for {kind} with ports")));
                }
                match kind {
                    "REDIRECT" => Target::Redirect(range),
                    "MASQUERADE" => Target::Masquerade(range),
                    "DNAT" | "SNAT" => {
                        if !to_given {
                            let opt =
                                if kind == "DNAT" { "--to-destination" } else { "--to-source" };
                            return Err(w.err(kind, format!("`{opt}` for {kind}")));
                        }
                        if kind == "DNAT" { Target::Dnat(range) } else { Target::Snat(range) }
                    }
                    _ => unreachable!("nat kinds"),
                }
            }
            TargetBuilder::Tproxy { port, ip, mark } => {
                if !matches!(proto, Some("tcp" | "udp")) {
                    return Err(w.err("TPROXY", "`-p tcp` or `-p udp` for TPROXY"));
                }
                let port = port.ok_or_else(|| w.err("TPROXY", "`--on-port` for TPROXY"))?;
                Target::Tproxy { port, ip, mark: mark.0, mask: mark.1 }
            }
        })
    }
}

/// MARK/CONNMARK set operations → (value, mask) in `--set-xmark` form.
fn mark_op(w: &Words<'_>, opt: &str, v: &str) -> Result<(u32, u32), ParseError> {
    let single = |w: &Words<'_>| parse_u32(v).ok_or_else(|| w.err(v, "a 32-bit value"));
    Ok(match opt {
        "--set-xmark" => parse_mark(w, v)?,
        "--set-mark" => {
            let (value, mask) = parse_mark(w, v)?;
            (value, mask | value)
        }
        "--and-mark" => (0, !single(w)?),
        "--or-mark" => {
            let x = single(w)?;
            (x, x)
        }
        _ => (single(w)?, 0),
    })
}

/// `P` or `P-Q`.
fn parse_dash_ports(w: &Words<'_>, v: &str) -> Result<PortRange, ParseError> {
    let bad = || w.err(v, "a port or range `P-Q` with P <= Q");
    let (lo, hi) = match v.split_once('-') {
        None => {
            let p = parse_port(v).ok_or_else(bad)?;
            (p, p)
        }
        Some((a, b)) => (parse_port(a).ok_or_else(bad)?, parse_port(b).ok_or_else(bad)?),
    };
    if lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

/// `[A[-B]][:P[-Q]]` of --to-destination / --to-source.
fn parse_nat_to(w: &Words<'_>, v: &str) -> Result<NatRange, ParseError> {
    let (addrs, ports) = match v.split_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let mut range = NatRange::default();
    if !addrs.is_empty() {
        let bad = || w.err(v, "an address or range `A[-B]` (optionally `:P[-Q]`)");
        let (a, b) = match addrs.split_once('-') {
            None => {
                let a: Ipv4Addr = addrs.parse().map_err(|_| bad())?;
                (a, a)
            }
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        };
        if u32::from(a) > u32::from(b) {
            return Err(bad());
        }
        range.addrs = Some((a, b));
    }
    if let Some(p) = ports {
        range.ports = Some(parse_dash_ports(w, p)?);
    }
    if range.addrs.is_none() && range.ports.is_none() {
        return Err(w.err(v, "an address and/or `:port`"));
    }
    Ok(range)
}

fn finish_rule(w: &Words<'_>, mut b: Builder) -> Result<Rule, ParseError> {
    for (m, given) in b.rule.matches.iter().zip(&b.given) {
        let required = match m {
            Match::Mark(_) => Some(("mark", "--mark")),
            Match::Connmark(_) => Some(("connmark", "--mark")),
            Match::Conntrack(_) => Some(("conntrack", "--ctstate")),
            Match::State(_) => Some(("state", "--state")),
            Match::Addrtype(_) => Some(("addrtype", "--src-type or --dst-type")),
            Match::Multiport(_) => Some(("multiport", "--sports, --dports or --ports")),
            Match::OwnerSocketExists { .. } => Some(("owner", "--socket-exists")),
            Match::Comment(_) => Some(("comment", "--comment")),
            _ => None,
        };
        if let (Some((name, opt)), false) = (required, *given) {
            return Err(w.err(name, format!("`{opt}` for `-m {name}`")));
        }
    }
    if let Some(t) = b.target.take() {
        b.rule.target = t.finish(w, &b.rule)?;
    }
    Ok(b.rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_words(1, s).unwrap()
    }

    #[test]
    fn words_split_like_iptables_restore() {
        assert_eq!(
            words(r#"-m comment --comment "a \"b\" c" -j X"#),
            ["-m", "comment", "--comment", "a \"b\" c", "-j", "X"]
        );
        assert_eq!(words(r#"--comment """#), ["--comment", ""]);
        assert_eq!(words("a\t b"), ["a", "b"]);
        assert!(split_words(3, r#"--comment "open"#).is_err());
    }

    #[test]
    fn errors_name_line_token_and_expectation() {
        let e =
            parse_restore("*filter\n-A INPUT -p tcp --dprt 80 -j ACCEPT\nCOMMIT\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.token, "--dprt");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_restore("*filter\n-A INPUT -j ACCEPT\n").unwrap_err();
        assert!(e.expected.contains("COMMIT"), "{e}");
        let e = parse_restore("*bogus\nCOMMIT\n").unwrap_err();
        assert_eq!((e.line, e.token.as_str()), (1, "bogus"));
        let e = parse_restore("-A INPUT -j ACCEPT\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse_restore("*nat\n-A OUTPUT -j REDIRECT --to-ports 1\nCOMMIT\n").unwrap_err();
        assert!(e.expected.contains("-p tcp"), "{e}");
        let e =
            parse_restore("*filter\n-A INPUT -m tcp --dport 1 -j ACCEPT\nCOMMIT\n").unwrap_err();
        assert_eq!(e.token, "tcp");
        let e =
            parse_restore("*filter\n-A INPUT -p tcp --dport 9:1 -j ACCEPT\nCOMMIT\n").unwrap_err();
        assert_eq!(e.token, "9:1");
        let e = parse_restore("*mangle\n-A OUTPUT -j MARK\nCOMMIT\n").unwrap_err();
        assert_eq!(e.token, "MARK");
    }

    #[test]
    fn numbers_follow_strtoul_base_zero() {
        assert_eq!(parse_u32("0x539"), Some(0x539));
        assert_eq!(parse_u32("010"), Some(8));
        assert_eq!(parse_u32("1337"), Some(1337));
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("0x1ffffffff"), None);
    }

    #[test]
    fn option_prefixes_resolve_when_unambiguous() {
        let b = parse_restore(
            "*nat\n-A PREROUTING -p tcp --dport 82 -j DNAT --to 10.0.0.2:8080-8090\n-A PREROUTING -p tcp -j REDIRECT --to-port 15006\nCOMMIT\n",
        )
        .unwrap();
        assert_eq!(b[0].commands.len(), 2);
    }
}
