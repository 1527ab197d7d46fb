//! The DNS wire format (RFC 1035), as much as a forwarding proxy and its tests need: parse any
//! message (names with compression pointers, every section, unknown record types kept as raw
//! bytes), build queries and responses with A and CNAME records, and the two-byte length prefix
//! of DNS over TCP. Pure: bytes in, values out; nothing here touches a socket.
//!
//! Names are kept as their labels' bytes and compared ASCII-case-insensitively (RFC 4343).
//! What a built message leaves out: name compression (the messages the proxy builds are small),
//! EDNS (a query's OPT record is not echoed), and every record type but A and CNAME.

use std::fmt;
use std::net::Ipv4Addr;

/// Record types the proxy looks at.
pub mod rtype {
    pub const A: u16 = 1;
    pub const CNAME: u16 = 5;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
}

/// The Internet class.
pub const CLASS_IN: u16 = 1;

/// The largest message over UDP without EDNS (RFC 1035 §2.3.4).
pub const UDP_MAX: usize = 512;

/// The longest name on the wire, length octets and the root included (RFC 1035 §2.3.4).
const NAME_MAX: usize = 255;
const LABEL_MAX: usize = 63;
/// Compression pointers a name may follow: more means a loop.
const POINTERS_MAX: usize = 64;

/// A response code (the header's RCODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rcode(pub u8);

impl Rcode {
    pub const NOERROR: Rcode = Rcode(0);
    pub const FORMERR: Rcode = Rcode(1);
    pub const SERVFAIL: Rcode = Rcode(2);
    pub const NXDOMAIN: Rcode = Rcode(3);
    pub const NOTIMP: Rcode = Rcode(4);
    pub const REFUSED: Rcode = Rcode(5);
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("NOERROR"),
            1 => f.write_str("FORMERR"),
            2 => f.write_str("SERVFAIL"),
            3 => f.write_str("NXDOMAIN"),
            4 => f.write_str("NOTIMP"),
            5 => f.write_str("REFUSED"),
            n => write!(f, "RCODE{n}"),
        }
    }
}

/// Why bytes are not a DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside `what`.
    Truncated { what: &'static str },
    /// A label longer than 63 bytes, a name longer than 255, a label type other than 0 or 3.
    BadName(String),
    /// Compression pointers that loop, or point forward.
    PointerLoop,
    /// A record whose data does not fit its type (an A record that is not 4 bytes).
    BadRecord(String),
    /// Bytes after the last record the header counts.
    Trailing(usize),
    /// A name given as text that is not one.
    BadText(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { what } => write!(f, "message truncated in {what}"),
            WireError::BadName(why) => write!(f, "bad name: {why}"),
            WireError::PointerLoop => f.write_str("compression pointers loop or point forward"),
            WireError::BadRecord(why) => write!(f, "bad record: {why}"),
            WireError::Trailing(n) => write!(f, "{n} bytes after the last record"),
            WireError::BadText(why) => write!(f, "not a domain name: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

/// A domain name: its labels, without the root. `Name::root()` has none.
#[derive(Clone, Default)]
pub struct Name {
    labels: Vec<Vec<u8>>,
}

impl Name {
    pub fn root() -> Name {
        Name::default()
    }

    /// A name from its dotted text (`echo.default.svc.cluster.local`, a trailing dot allowed).
    /// Labels are 1–63 bytes of printable ASCII other than `.`; the name at most 253 characters.
    pub fn parse(text: &str) -> Result<Name, WireError> {
        let t = text.strip_suffix('.').unwrap_or(text);
        if t.is_empty() {
            return Ok(Name::root());
        }
        let mut labels = Vec::new();
        for l in t.split('.') {
            if l.is_empty() {
                return Err(WireError::BadText(format!("{text:?} has an empty label")));
            }
            if l.len() > LABEL_MAX {
                return Err(WireError::BadText(format!("a label of {text:?} is over 63 bytes")));
            }
            if !l.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(WireError::BadText(format!(
                    "{text:?} has a character that is not printable ASCII"
                )));
            }
            labels.push(l.as_bytes().to_vec());
        }
        let name = Name { labels };
        if name.wire_len() > NAME_MAX {
            return Err(WireError::BadText(format!("{text:?} is over 253 characters")));
        }
        Ok(name)
    }

    pub fn labels(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.labels.iter().map(Vec::as_slice)
    }

    pub fn label_count(&self) -> usize {
        self.labels.len()
    }

    /// Bytes on the wire, uncompressed: each label with its length octet, and the root.
    pub fn wire_len(&self) -> usize {
        self.labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1
    }

    /// This name followed by `suffix` (`echo` + `default.svc.cluster.local`); `None` when the
    /// result would be longer than a name may be.
    pub fn join(&self, suffix: &Name) -> Option<Name> {
        let mut labels = self.labels.clone();
        labels.extend(suffix.labels.iter().cloned());
        let name = Name { labels };
        (name.wire_len() <= NAME_MAX).then_some(name)
    }

    /// Whether this name ends with `suffix` and has at least one label before it.
    pub fn is_below(&self, suffix: &Name) -> bool {
        self.labels.len() > suffix.labels.len()
            && self.labels[self.labels.len() - suffix.labels.len()..]
                .iter()
                .zip(&suffix.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The labels before `suffix` (`echo.default` of `echo.default.svc.cluster.local` below
    /// `svc.cluster.local`), if this name is below it.
    pub fn strip(&self, suffix: &Name) -> Option<Name> {
        self.is_below(suffix).then(|| Name {
            labels: self.labels[..self.labels.len() - suffix.labels.len()].to_vec(),
        })
    }

    /// Whether the last label is `label` (ASCII case-insensitively).
    pub fn ends_with_label(&self, label: &str) -> bool {
        self.labels.last().is_some_and(|l| l.eq_ignore_ascii_case(label.as_bytes()))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.labels.len() == other.labels.len()
            && self.labels.iter().zip(&other.labels).all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

impl Eq for Name {}

/// Dotted text without the trailing dot (`.` for the root); bytes that are not printable ASCII,
/// and dots inside a label, as `\DDD`.
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.labels.is_empty() {
            return f.write_str(".");
        }
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for &b in l {
                if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                    write!(f, "{}", b as char)?;
                } else {
                    write!(f, "\\{b:03}")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// The header's flag bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// A response (QR).
    pub response: bool,
    pub opcode: u8,
    /// Authoritative answer (AA).
    pub authoritative: bool,
    /// Truncated (TC): the answer did not fit; ask again over TCP.
    pub truncated: bool,
    /// Recursion desired (RD), copied from query to response.
    pub recursion_desired: bool,
    /// Recursion available (RA).
    pub recursion_available: bool,
    pub rcode: Rcode,
}

impl Default for Rcode {
    fn default() -> Self {
        Rcode::NOERROR
    }
}

impl Flags {
    fn to_bits(self) -> u16 {
        (u16::from(self.response) << 15)
            | (u16::from(self.opcode & 0xf) << 11)
            | (u16::from(self.authoritative) << 10)
            | (u16::from(self.truncated) << 9)
            | (u16::from(self.recursion_desired) << 8)
            | (u16::from(self.recursion_available) << 7)
            | u16::from(self.rcode.0 & 0xf)
    }

    fn from_bits(b: u16) -> Flags {
        Flags {
            response: b & 0x8000 != 0,
            opcode: ((b >> 11) & 0xf) as u8,
            authoritative: b & 0x0400 != 0,
            truncated: b & 0x0200 != 0,
            recursion_desired: b & 0x0100 != 0,
            recursion_available: b & 0x0080 != 0,
            rcode: Rcode((b & 0xf) as u8),
        }
    }
}

/// A question: which records of which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// A resource record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Cname(Name),
    /// Any other type, as the bytes on the wire (names inside stay as they were, compression
    /// pointers included: such data is only ever relayed, never rebuilt).
    Other(Vec<u8>),
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RData,
}

impl Record {
    pub fn a(name: Name, ttl: u32, ip: Ipv4Addr) -> Record {
        Record { name, rtype: rtype::A, class: CLASS_IN, ttl, data: RData::A(ip) }
    }

    pub fn cname(name: Name, ttl: u32, target: Name) -> Record {
        Record { name, rtype: rtype::CNAME, class: CLASS_IN, ttl, data: RData::Cname(target) }
    }
}

/// A DNS message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: Flags,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Message {
    /// A standard query for `name`'s `qtype` records, recursion desired (what a stub resolver
    /// sends).
    pub fn query(id: u16, name: Name, qtype: u16) -> Message {
        Message {
            id,
            flags: Flags { recursion_desired: true, ..Flags::default() },
            questions: vec![Question { name, qtype, qclass: CLASS_IN }],
            ..Message::default()
        }
    }

    /// The response to `query` with `rcode` and `answers`: its id, opcode, RD and questions;
    /// recursion available.
    pub fn response(
        query: &Message,
        rcode: Rcode,
        authoritative: bool,
        answers: Vec<Record>,
    ) -> Message {
        Message {
            id: query.id,
            flags: Flags {
                response: true,
                opcode: query.flags.opcode,
                authoritative,
                truncated: false,
                recursion_desired: query.flags.recursion_desired,
                recursion_available: true,
                rcode,
            },
            questions: query.questions.clone(),
            answers,
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    /// The A records' addresses, in order.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(ip) => Some(ip),
                _ => None,
            })
            .collect()
    }

    /// The message on the wire, uncompressed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.flags.to_bits().to_be_bytes());
        for n in
            [self.questions.len(), self.answers.len(), self.authority.len(), self.additional.len()]
        {
            out.extend_from_slice(&(n.min(usize::from(u16::MAX)) as u16).to_be_bytes());
        }
        for q in &self.questions {
            put_name(&mut out, &q.name);
            out.extend_from_slice(&q.qtype.to_be_bytes());
            out.extend_from_slice(&q.qclass.to_be_bytes());
        }
        for r in self.answers.iter().chain(&self.authority).chain(&self.additional) {
            put_name(&mut out, &r.name);
            out.extend_from_slice(&r.rtype.to_be_bytes());
            out.extend_from_slice(&r.class.to_be_bytes());
            out.extend_from_slice(&r.ttl.to_be_bytes());
            let data = match &r.data {
                RData::A(ip) => ip.octets().to_vec(),
                RData::Cname(n) => {
                    let mut d = Vec::new();
                    put_name(&mut d, n);
                    d
                }
                RData::Other(b) => b.clone(),
            };
            out.extend_from_slice(&(data.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    /// [`Message::encode`] for a UDP reply of at most `max` bytes: records that do not fit
    /// are left out and the message says so (TC), so the client asks again over TCP.
    pub fn encode_within(&self, max: usize) -> Vec<u8> {
        let full = self.encode();
        if full.len() <= max {
            return full;
        }
        let mut cut = Message {
            flags: Flags { truncated: true, ..self.flags },
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
            ..self.clone()
        };
        for r in &self.answers {
            cut.answers.push(r.clone());
            if cut.encode().len() > max {
                cut.answers.pop();
                break;
            }
        }
        cut.encode()
    }

    /// Parses a whole message.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { bytes, at: 0 };
        let id = r.u16("header")?;
        let flags = Flags::from_bits(r.u16("header")?);
        let counts = [r.u16("header")?, r.u16("header")?, r.u16("header")?, r.u16("header")?];
        let mut m = Message { id, flags, ..Message::default() };
        for _ in 0..counts[0] {
            let name = r.name()?;
            let qtype = r.u16("question")?;
            let qclass = r.u16("question")?;
            m.questions.push(Question { name, qtype, qclass });
        }
        for (section, &n) in counts[1..].iter().enumerate() {
            for _ in 0..n {
                let rec = r.record()?;
                match section {
                    0 => m.answers.push(rec),
                    1 => m.authority.push(rec),
                    _ => m.additional.push(rec),
                }
            }
        }
        if r.at != bytes.len() {
            return Err(WireError::Trailing(bytes.len() - r.at));
        }
        Ok(m)
    }

    /// The id of a message too broken to parse, if its header is there (to answer FORMERR).
    pub fn peek_id(bytes: &[u8]) -> Option<u16> {
        Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
    }
}

/// The same message with another id (what a forwarder changes in a relayed reply). Returns
/// `None` for fewer than 12 bytes (no header).
pub fn with_id(bytes: &[u8], id: u16) -> Option<Vec<u8>> {
    if bytes.len() < 12 {
        return None;
    }
    let mut out = bytes.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    Some(out)
}

fn put_name(out: &mut Vec<u8>, name: &Name) {
    for l in &name.labels {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(WireError::Truncated { what })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name at the current position, following compression pointers (each must point
    /// backwards, at most [`POINTERS_MAX`] of them).
    fn name(&mut self) -> Result<Name, WireError> {
        let (name, end) = read_name(self.bytes, self.at)?;
        self.at = end;
        Ok(name)
    }

    fn record(&mut self) -> Result<Record, WireError> {
        let name = self.name()?;
        let rtype = self.u16("record")?;
        let class = self.u16("record")?;
        let ttl = self.u32("record")?;
        let len = usize::from(self.u16("record")?);
        let start = self.at;
        let data = self.take(len, "record data")?;
        let data = match rtype {
            rtype::A => {
                let b: [u8; 4] = data.try_into().map_err(|_| {
                    WireError::BadRecord(format!("an A record of {} bytes", data.len()))
                })?;
                RData::A(Ipv4Addr::from(b))
            }
            rtype::CNAME => {
                let (target, end) = read_name(self.bytes, start)?;
                if end != start + len {
                    return Err(WireError::BadRecord(
                        "a CNAME's name does not fill its data".into(),
                    ));
                }
                RData::Cname(target)
            }
            _ => RData::Other(data.to_vec()),
        };
        Ok(Record { name, rtype, class, ttl, data })
    }
}

/// The name at `at` in `bytes`, and where the bytes after it (not after any pointer target)
/// begin.
fn read_name(bytes: &[u8], mut at: usize) -> Result<(Name, usize), WireError> {
    let mut labels = Vec::new();
    let mut wire = 1;
    let mut end = None;
    let mut pointers = 0;
    loop {
        let &len = bytes.get(at).ok_or(WireError::Truncated { what: "name" })?;
        match len >> 6 {
            0 => {
                if len == 0 {
                    let end = end.unwrap_or(at + 1);
                    return Ok((Name { labels }, end));
                }
                let l = usize::from(len);
                let label =
                    bytes.get(at + 1..at + 1 + l).ok_or(WireError::Truncated { what: "name" })?;
                wire += l + 1;
                if wire > NAME_MAX {
                    return Err(WireError::BadName("longer than 255 bytes".into()));
                }
                labels.push(label.to_vec());
                at += 1 + l;
            }
            3 => {
                let &low = bytes.get(at + 1).ok_or(WireError::Truncated { what: "name" })?;
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                pointers += 1;
                if target >= at || pointers > POINTERS_MAX {
                    return Err(WireError::PointerLoop);
                }
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(WireError::BadName(format!("label type {:#04x}", len & 0xc0))),
        }
    }
}

/// A message with the two-byte length prefix of DNS over TCP (RFC 1035 §4.2.2). `None` when
/// it is longer than 65,535 bytes.
pub fn tcp_frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut out = Vec::with_capacity(message.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Some(out)
}

/// The length a TCP frame's prefix announces.
pub fn tcp_frame_len(prefix: [u8; 2]) -> usize {
    usize::from(u16::from_be_bytes(prefix))
}

#[cfg(test)]
mod tests;
