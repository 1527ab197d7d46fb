//! `conntrack -L` output as data, and listing/flushing a namespace's conntrack table.
//!
//! One line per entry, in conntrack-tools' plain format:
//!
//! ```text
//! tcp      6 119 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=36234 dport=80 src=127.0.0.1 dst=127.0.0.1 sport=8080 dport=36234 [ASSURED] mark=0 use=1
//! ```
//!
//! protocol name and number, seconds left, the TCP state (TCP only), the original tuple, flags,
//! the reply tuple, more flags, then `mark=`, optional `secctx=`/`zone=`/`labels=`, `use=`. With
//! accounting on, `packets=`/`bytes=` follow each tuple. The parser accepts exactly that and
//! reports anything else with the line, so a format change fails loudly. The tool's own summary
//! ("N flow entries have been shown") is checked against the number of parsed lines.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::netns::Netns;
use crate::tools::{ToolError, run_tool_in};

/// One direction of a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (TCP/UDP).
    pub sport: Option<u16>,
    /// Destination port (TCP/UDP).
    pub dport: Option<u16>,
    /// ICMP type, code and id (ICMP).
    pub icmp: Option<(u8, u8, u16)>,
    /// Packets seen in this direction (only with `nf_conntrack_acct`).
    pub packets: Option<u64>,
    /// Bytes seen in this direction (only with `nf_conntrack_acct`).
    pub bytes: Option<u64>,
}

/// One conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Protocol name as printed (`tcp`, `udp`, `icmp`, …).
    pub proto: String,
    /// Protocol number.
    pub proto_num: u8,
    /// Seconds until the entry expires.
    pub timeout: u32,
    /// TCP state (`SYN_SENT`, `ESTABLISHED`, `TIME_WAIT`, …); `None` for other protocols.
    pub state: Option<String>,
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction (after NAT: where replies come from).
    pub reply: Tuple,
    /// `[UNREPLIED]`: no packet seen in the reply direction yet.
    pub unreplied: bool,
    /// `[ASSURED]`: the entry will not be evicted early.
    pub assured: bool,
    /// Other bracketed flags (`OFFLOAD`, `HW_OFFLOAD`), sorted.
    pub other_flags: Vec<String>,
    /// Connection mark.
    pub mark: u32,
    /// Conntrack zone (`zone=`, or `zone-orig=`/`zone-reply=` joined as `orig/reply`); `None` = 0.
    pub zone: Option<String>,
    /// Reference count (`use=`).
    pub use_count: u32,
}

/// A line of `conntrack -L` the parser did not expect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conntrack -L output, line {line}: {problem}: {text:?}")]
pub struct ConntrackParseError {
    /// 1-based line number (0 for the summary on stderr).
    pub line: usize,
    /// The line.
    pub text: String,
    /// What was wrong.
    pub problem: String,
}

/// Parses `conntrack -L` standard output. `summary`, if given, is the tool's stderr, whose
/// "N flow entries have been shown" must agree with the number of entries.
pub fn parse_list(stdout: &str, summary: Option<&str>) -> Result<Vec<Entry>, ConntrackParseError> {
    let mut entries = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = parse_entry(line).map_err(|problem| ConntrackParseError {
            line: i + 1,
            text: line.to_string(),
            problem,
        })?;
        entries.push(entry);
    }
    if let Some(stderr) = summary {
        let shown = stderr.lines().find_map(|l| {
            let (_, tail) = l.split_once("): ")?;
            tail.strip_suffix(" flow entries have been shown.")?.parse::<usize>().ok()
        });
        match shown {
            Some(n) if n == entries.len() => {}
            Some(n) => {
                return Err(ConntrackParseError {
                    line: 0,
                    text: stderr.trim().to_string(),
                    problem: format!(
                        "the tool reports {n} entries but {} lines parsed",
                        entries.len()
                    ),
                });
            }
            None => {
                return Err(ConntrackParseError {
                    line: 0,
                    text: stderr.trim().to_string(),
                    problem: "no \"N flow entries have been shown\" summary on stderr".into(),
                });
            }
        }
    }
    Ok(entries)
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut words = line.split_whitespace().peekable();
    let proto = words.next().ok_or("empty line")?.to_string();
    let proto_num = words
        .next()
        .and_then(|w| w.parse::<u8>().ok())
        .ok_or("expected the protocol number after the protocol name")?;
    let timeout = words
        .next()
        .and_then(|w| w.parse::<u32>().ok())
        .ok_or("expected the timeout (seconds) after the protocol number")?;
    let state = match words.peek() {
        Some(w) if !w.contains('=') && !w.starts_with('[') => {
            Some(words.next().unwrap_or_default().to_string())
        }
        _ => None,
    };
    let mut tuples: Vec<TupleBuilder> = Vec::new();
    let mut entry = Entry {
        proto,
        proto_num,
        timeout,
        state,
        orig: empty_tuple(),
        reply: empty_tuple(),
        unreplied: false,
        assured: false,
        other_flags: Vec::new(),
        mark: 0,
        zone: None,
        use_count: 0,
    };
    let (mut mark_seen, mut use_seen) = (false, false);
    let (mut zone_orig, mut zone_reply) = (None, None);
    for word in words {
        if let Some(flag) = word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            match flag {
                "UNREPLIED" => entry.unreplied = true,
                "ASSURED" => entry.assured = true,
                "OFFLOAD" | "HW_OFFLOAD" => entry.other_flags.push(flag.to_string()),
                other => return Err(format!("unknown flag [{other}]")),
            }
            continue;
        }
        let (key, value) =
            word.split_once('=').ok_or_else(|| format!("unexpected word {word:?}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number in {word:?}"));
        match key {
            "src" => {
                // `src=` opens a tuple: the first is the original direction, the second the reply.
                if tuples.len() == 2 {
                    return Err("a third tuple (src=) in one entry".into());
                }
                let addr = value.parse().map_err(|_| format!("bad IPv4 address in {word:?}"))?;
                tuples.push(TupleBuilder { src: Some(addr), ..TupleBuilder::default() });
            }
            "dst" | "sport" | "dport" | "type" | "code" | "id" | "packets" | "bytes" => {
                let t = tuples.last_mut().ok_or_else(|| format!("{key}= before any src="))?;
                let slot = match key {
                    "dst" => {
                        t.dst = Some(
                            value.parse().map_err(|_| format!("bad IPv4 address in {word:?}"))?,
                        );
                        continue;
                    }
                    "sport" => &mut t.sport,
                    "dport" => &mut t.dport,
                    "type" => &mut t.icmp_type,
                    "code" => &mut t.icmp_code,
                    "id" => &mut t.icmp_id,
                    "packets" => &mut t.packets,
                    _ => &mut t.bytes,
                };
                if slot.replace(num(value)?).is_some() {
                    return Err(format!("{key}= twice in one tuple"));
                }
            }
            "mark" => {
                entry.mark = u32::try_from(num(value)?)
                    .map_err(|_| format!("mark out of range in {word:?}"))?;
                mark_seen = true;
            }
            "use" => {
                entry.use_count = u32::try_from(num(value)?)
                    .map_err(|_| format!("use out of range in {word:?}"))?;
                use_seen = true;
            }
            "zone" => entry.zone = Some(value.to_string()),
            "zone-orig" => zone_orig = Some(value.to_string()),
            "zone-reply" => zone_reply = Some(value.to_string()),
            "secctx" | "labels" | "helper" => {}
            other => return Err(format!("unknown field {other}=")),
        }
    }
    if zone_orig.is_some() || zone_reply.is_some() {
        let z = |z: Option<String>| z.unwrap_or_else(|| "0".into());
        entry.zone = Some(format!("{}/{}", z(zone_orig), z(zone_reply)));
    }
    if tuples.len() != 2 {
        return Err(format!("expected 2 tuples (original and reply), found {}", tuples.len()));
    }
    if !mark_seen || !use_seen {
        return Err("missing mark= or use=".into());
    }
    let mut tuples = tuples.into_iter();
    entry.orig = tuples.next().expect("two").build()?;
    entry.reply = tuples.next().expect("two").build()?;
    entry.other_flags.sort();
    Ok(entry)
}

fn empty_tuple() -> Tuple {
    Tuple {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        sport: None,
        dport: None,
        icmp: None,
        packets: None,
        bytes: None,
    }
}

#[derive(Default)]
struct TupleBuilder {
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    sport: Option<u64>,
    dport: Option<u64>,
    icmp_type: Option<u64>,
    icmp_code: Option<u64>,
    icmp_id: Option<u64>,
    packets: Option<u64>,
    bytes: Option<u64>,
}

impl TupleBuilder {
    fn build(self) -> Result<Tuple, String> {
        let port = |p: Option<u64>| -> Result<Option<u16>, String> {
            p.map(|p| u16::try_from(p).map_err(|_| format!("port {p} out of range"))).transpose()
        };
        let icmp = match (self.icmp_type, self.icmp_code, self.icmp_id) {
            (None, None, None) => None,
            (Some(t), Some(c), Some(id)) => Some((
                u8::try_from(t).map_err(|_| "icmp type out of range")?,
                u8::try_from(c).map_err(|_| "icmp code out of range")?,
                u16::try_from(id).map_err(|_| "icmp id out of range")?,
            )),
            _ => return Err("incomplete icmp type=/code=/id=".into()),
        };
        Ok(Tuple {
            src: self.src.ok_or("tuple without src=")?,
            dst: self.dst.ok_or("tuple without dst=")?,
            sport: port(self.sport)?,
            dport: port(self.dport)?,
            icmp,
            packets: self.packets,
            bytes: self.bytes,
        })
    }
}

/// `conntrack -L -f ipv4` in the current thread's namespace, parsed. Call from a namespace job.
pub async fn list_in() -> Result<Vec<Entry>, ConntrackError> {
    let out = run_tool_in("conntrack", &["-L", "-f", "ipv4"], None).await?;
    Ok(parse_list(&out.stdout, Some(&out.stderr))?)
}

/// `conntrack -F` in the current thread's namespace. Call from a namespace job.
pub async fn flush_in() -> Result<(), ToolError> {
    run_tool_in("conntrack", &["-F"], None).await.map(drop)
}

/// Listing conntrack failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Its output did not parse.
    #[error(transparent)]
    Parse(#[from] ConntrackParseError),
}

impl From<crate::netns::NetnsError> for ConntrackError {
    fn from(e: crate::netns::NetnsError) -> Self {
        ConntrackError::Tool(ToolError::Netns(e))
    }
}

impl Netns {
    /// `conntrack -L -f ipv4` in this namespace.
    pub fn conntrack_list(&self) -> Result<Vec<Entry>, ConntrackError> {
        self.run(|| async { list_in().await })?
    }

    /// `conntrack -F` in this namespace.
    pub fn conntrack_flush(&self) -> Result<(), ToolError> {
        self.run(|| async { flush_in().await })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "\
tcp      6 299 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=45460 dport=81 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=81 dport=45460 mark=0 use=1
tcp      6 119 SYN_SENT src=127.0.0.1 dst=127.0.0.1 sport=45460 dport=81 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=81 dport=45460 mark=0 zone=1 use=1
tcp      6 119 TIME_WAIT src=10.0.1.2 dst=10.96.0.10 sport=36234 dport=80 src=10.0.1.1 dst=10.0.1.2 sport=9090 dport=36234 [ASSURED] mark=273 use=1
icmp     1 29 src=10.0.1.2 dst=10.0.1.1 type=8 code=0 id=7 packets=1 bytes=84 src=10.0.1.1 dst=10.0.1.2 type=0 code=0 id=7 packets=1 bytes=84 mark=0 use=1
";

    #[test]
    fn parses_states_tuples_flags_mark_zone() {
        let summary = "conntrack v1.4.7 (conntrack-tools): 4 flow entries have been shown.\n";
        let e = parse_list(LISTED, Some(summary)).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0].state.as_deref(), Some("ESTABLISHED"));
        assert!(e[0].unreplied && !e[0].assured && e[0].zone.is_none());
        assert_eq!(e[1].zone.as_deref(), Some("1"));
        let nat = &e[2];
        assert_eq!((nat.orig.dst, nat.orig.dport), (Ipv4Addr::new(10, 96, 0, 10), Some(80)));
        assert_eq!((nat.reply.src, nat.reply.sport), (Ipv4Addr::new(10, 0, 1, 1), Some(9090)));
        assert!(nat.assured && !nat.unreplied);
        assert_eq!(nat.mark, 0x111);
        let icmp = &e[3];
        assert_eq!(icmp.state, None);
        assert_eq!(icmp.orig.icmp, Some((8, 0, 7)));
        assert_eq!(icmp.reply.icmp, Some((0, 0, 7)));
        assert_eq!(icmp.orig.packets, Some(1));
    }

    #[test]
    fn rejects_unknown_fields_and_count_mismatch() {
        let err = parse_list("tcp 6 1 CLOSE src=1.1.1.1 dst=1.1.1.1 sport=1 dport=2 src=1.1.1.1 dst=1.1.1.1 sport=2 dport=1 frob=1 mark=0 use=1\n", None)
            .unwrap_err();
        assert!(err.problem.contains("unknown field frob="), "{err}");
        let err = parse_list(
            "tcp 6 1 CLOSE src=1.1.1.1 dst=1.1.1.1 sport=1 dport=2 mark=0 use=1\n",
            None,
        )
        .unwrap_err();
        assert!(err.problem.contains("expected 2 tuples"), "{err}");
        let err = parse_list(
            LISTED,
            Some("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"),
        )
        .unwrap_err();
        assert!(err.problem.contains("reports 3 entries"), "{err}");
        assert!(
            parse_list(
                "",
                Some("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n")
            )
            .unwrap()
            .is_empty()
        );
    }
}
