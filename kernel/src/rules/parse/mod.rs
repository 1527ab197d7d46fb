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
    RejectWith, Rule, SocketMatch, StateMatch, Table, Target, TcpFlagsMatch, TcpMatch, UdpMatch,
    addrtype, ctstate,
};

mod matches;
mod targets;

pub(crate) use matches::parse_u32;
use matches::{load_match, match_option, match_options, parse_mark, parse_port};
use targets::TargetBuilder;

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
    pub table: Table,
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
            let table = Table::from_name(name).ok_or_else(|| {
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
    /// Per match: the options given so far (for "at most once" and "missing option" errors).
    given: Vec<Vec<&'static str>>,
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

/// Options that are spellings of the same one.
fn option_key(name: &'static str) -> &'static str {
    match name {
        "--source-port" => "--sport",
        "--destination-port" => "--dport",
        "--syn" => "--tcp-flags",
        "--source-ports" | "--sports" | "--destination-ports" | "--dports" | "--ports" => "ports",
        other => other,
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
            let key = option_key(name);
            let again = b.given[i].contains(&key);
            b.given[i].push(key);
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

fn finish_rule(w: &Words<'_>, mut b: Builder) -> Result<Rule, ParseError> {
    for (m, given) in b.rule.matches.iter().zip(b.given.iter().map(|g| !g.is_empty())) {
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
        if let (Some((name, opt)), false) = (required, given) {
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
