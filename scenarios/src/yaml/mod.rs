//! YAML text → a tree whose every node knows where it was written.
//!
//! The parser is `granit-parser` (the event parser `serde-saphyr` is built on); this module turns
//! its events into a [`Node`] tree so that the scenario decoder and the serde [`de`]coder can both
//! report `line:column` and a key path for any value. We build our own tree rather than
//! deserializing straight from text because errors must be collected across the whole file and
//! policy objects must stay locatable after decoding (to place the proxy's compile errors).
//!
//! What is supported, and how:
//! - YAML 1.2 core schema for plain scalars: `null`/`~`/empty, `true`/`false`, integers (decimal,
//!   `0x`, `0o`), floats (`1.5`, `1e3`, `.inf`, `.nan`); anything else plain is a string. Quoted
//!   and block (`|`, `>`) scalars are always strings.
//! - Anchors and aliases (`&a` / `*a`): an alias is a copy of the anchored node, keeping the
//!   positions of the definition. Expansion is capped at [`MAX_NODES`] nodes (no alias bombs).
//! - Merge keys (`<<: *a`, `<<: [*a, *b]`): keys written in the mapping win, then earlier merges.
//! - Core tags (`!!str`, `!!int`, …); any other tag is an error.
//! - One document per file; nesting is capped at [`MAX_DEPTH`] levels.
//!
//! Duplicate keys are kept in the tree; the decoders report them with their key path.

pub mod de;

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::diag::Pos;

/// Deepest nesting of sequences and mappings accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold after alias expansion.
pub const MAX_NODES: usize = 200_000;

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// The source text of a plain (unquoted) scalar, so that `8080`, `1.0` or `true` can still be
    /// read as a string where one is expected. `None` for quoted and block scalars and collections.
    pub plain: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in the order written (merged entries after them); duplicates are kept.
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn new(pos: Pos, value: Value) -> Self {
        Node { pos, value, plain: None }
    }

    /// What kind of value this is, for messages ("expected a list, found a string").
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The node read as text: a string, or the source text of a plain number or boolean.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => self.plain.as_deref(),
            _ => None,
        }
    }

    /// A short rendering of a scalar for messages (`"node-c"`, `8080`); `a list` etc. otherwise.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Str(s) => format!("{s:?}"),
            Value::Null => "null".to_string(),
            _ => match &self.plain {
                Some(p) => p.clone(),
                None => self.kind().to_string(),
            },
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping (the first one, if duplicated).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => {
                entries.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Follows a path written like `spec.rules[0].to[0].operation.ports[1]` as far as it goes;
    /// returns the deepest node reached (so a path into a missing key still lands nearby).
    pub fn locate(&self, path: &str) -> &Node {
        let mut node = self;
        for seg in split_path(path) {
            let next = match seg {
                Seg::Key(k) => node.get(k),
                Seg::Index(i) => match &node.value {
                    Value::Seq(items) => items.get(i),
                    _ => None,
                },
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries.iter().map(|(k, v)| k.count() + v.count()).sum::<usize>()
            }
            _ => 1,
        }
    }
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    out
}

/// A file that is not YAML (or not YAML we accept), with where the parser stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
}

fn pos_of(span: &Span) -> Pos {
    let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
    let col = u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX);
    Pos::new(line.max(1), col)
}

enum Frame {
    Seq { pos: Pos, anchor: usize, items: Vec<Node> },
    Map { pos: Pos, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

/// Parses one YAML document into a located tree.
pub fn parse(text: &str) -> Result<Node, ParseError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;

    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            let m = e.marker();
            let line = u32::try_from(m.line()).unwrap_or(u32::MAX).max(1);
            let col = u32::try_from(m.col() + 1).unwrap_or(u32::MAX);
            ParseError { pos: Pos::new(line, col), message: format!("invalid YAML: {}", e.info()) }
        })?;
        let pos = pos_of(&span);
        let done = match event {
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => None,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(ParseError {
                        pos,
                        message: "a scenario file holds one YAML document; this is a second one"
                            .to_string(),
                    });
                }
                None
            }
            Event::UnresolvedAlias(name) => {
                return Err(ParseError { pos, message: format!("unknown alias `*{name}`") });
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    nodes += node.count();
                    if nodes > MAX_NODES {
                        return Err(too_many(pos));
                    }
                    Some(node.clone())
                }
                None => return Err(ParseError { pos, message: "unknown alias".to_string() }),
            },
            Event::Scalar(text, style, anchor, tag) => {
                nodes += 1;
                let node = scalar(pos, &text, style, tag.as_deref())?;
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_tag(pos, tag.as_deref(), "seq")?;
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Seq { pos, anchor, items: Vec::new() });
                None
            }
            Event::MappingStart(_, anchor, tag) => {
                check_tag(pos, tag.as_deref(), "map")?;
                if stack.len() >= MAX_DEPTH {
                    return Err(too_deep(pos));
                }
                stack.push(Frame::Map { pos, anchor, entries: Vec::new(), key: None });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { pos, anchor, items }) => {
                    nodes += 1;
                    let node = Node::new(pos, Value::Seq(items));
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                _ => return Err(ParseError { pos, message: "unbalanced sequence".to_string() }),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { pos, anchor, entries, .. }) => {
                    nodes += 1;
                    let node = Node::new(pos, Value::Map(merge(entries)?));
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                _ => return Err(ParseError { pos, message: "unbalanced mapping".to_string() }),
            },
            // Comments (with granit-parser's `comments` feature, which another crate may turn
            // on) and anchor metadata are presentation only.
            _ => None,
        };
        if nodes > MAX_NODES {
            return Err(too_many(pos));
        }
        let Some(node) = done else { continue };
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    if matches!(node.value, Value::Seq(_) | Value::Map(_)) {
                        return Err(ParseError {
                            pos: node.pos,
                            message: "a mapping key must be a scalar".to_string(),
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => entries.push((k, node)),
            },
        }
    }
    root.ok_or(ParseError {
        pos: Pos::new(1, 1),
        message: "the file holds no YAML document; expected a scenario mapping".to_string(),
    })
}

fn too_deep(pos: Pos) -> ParseError {
    ParseError { pos, message: format!("nesting deeper than {MAX_DEPTH} levels") }
}

fn too_many(pos: Pos) -> ParseError {
    ParseError {
        pos,
        message: format!("the document expands to more than {MAX_NODES} nodes (aliases?)"),
    }
}

fn check_tag(pos: Pos, tag: Option<&Tag>, want: &str) -> Result<(), ParseError> {
    match tag {
        None => Ok(()),
        Some(t) if t.is_yaml_core_schema_tag(want) => Ok(()),
        Some(t) => Err(ParseError {
            pos,
            message: format!("unsupported tag `{}{}` here", t.original_handle(), t.suffix()),
        }),
    }
}

fn scalar(pos: Pos, text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Node, ParseError> {
    let string = || Node::new(pos, Value::Str(text.to_string()));
    if let Some(tag) = tag {
        let bad =
            || ParseError { pos, message: format!("`{text}` is not a valid `!!{}`", tag.suffix()) };
        for (suffix, plain) in [("str", false), ("int", true), ("float", true), ("bool", true)] {
            if tag.is_yaml_core_schema_tag(suffix) {
                if !plain {
                    return Ok(string());
                }
                let node = resolve_plain(pos, text);
                let ok = matches!(
                    (suffix, &node.value),
                    ("int", Value::Int(_)) | ("bool", Value::Bool(_)) | ("float", Value::Float(_))
                ) || (suffix == "float" && matches!(node.value, Value::Int(_)));
                return if ok { Ok(node) } else { Err(bad()) };
            }
        }
        if tag.is_yaml_core_schema_tag("null") {
            return Ok(Node::new(pos, Value::Null));
        }
        return Err(ParseError {
            pos,
            message: format!("unsupported tag `{}{}`", tag.original_handle(), tag.suffix()),
        });
    }
    Ok(match style {
        ScalarStyle::Plain => resolve_plain(pos, text),
        _ => string(),
    })
}

/// The YAML 1.2 core schema for a plain scalar.
fn resolve_plain(pos: Pos, text: &str) -> Node {
    let typed = |value| Node { pos, value, plain: Some(text.to_string()) };
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Node::new(pos, Value::Null),
        "true" | "True" | "TRUE" => return typed(Value::Bool(true)),
        "false" | "False" | "FALSE" => return typed(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return typed(Value::Float(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return typed(Value::Float(f64::NEG_INFINITY)),
        ".nan" | ".NaN" | ".NAN" => return typed(Value::Float(f64::NAN)),
        _ => {}
    }
    if let Some(i) = parse_int(text) {
        return typed(Value::Int(i));
    }
    if let Some(f) = is_float(text).then(|| text.parse::<f64>().ok()).flatten() {
        return typed(Value::Float(f));
    }
    typed(Value::Str(text.to_string()))
}

fn parse_int(text: &str) -> Option<i128> {
    if let Some(hex) = text.strip_prefix("0x") {
        return non_empty_digits(hex, 16).and_then(|h| i128::from_str_radix(h, 16).ok());
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return non_empty_digits(oct, 8).and_then(|o| i128::from_str_radix(o, 8).ok());
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    non_empty_digits(digits, 10)?;
    text.parse().ok()
}

fn non_empty_digits(s: &str, radix: u32) -> Option<&str> {
    (!s.is_empty() && s.chars().all(|c| c.is_digit(radix))).then_some(s)
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            int.chars().all(|c| c.is_ascii_digit())
                && frac.chars().all(|c| c.is_ascii_digit())
                && !(int.is_empty() && frac.is_empty())
        }
        None => non_empty_digits(mantissa, 10).is_some(),
    };
    let exp_ok = match exp {
        None => true,
        Some(e) => non_empty_digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10).is_some(),
    };
    mantissa_ok && exp_ok
}

/// Applies merge keys (the plain `<<`; a quoted "<<" is an ordinary key): entries written in the mapping first, then merged ones whose key
/// is not already present (earlier merge sources win over later ones).
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, ParseError> {
    let is_merge = |k: &Node| k.plain.as_deref() == Some("<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut sources = Vec::new();
    for (k, v) in entries {
        if is_merge(&k) {
            match v.value {
                Value::Map(m) => sources.push(m),
                Value::Seq(items) => {
                    for item in items {
                        match item.value {
                            Value::Map(m) => sources.push(m),
                            _ => return Err(bad_merge(item.pos)),
                        }
                    }
                }
                _ => return Err(bad_merge(v.pos)),
            }
        } else {
            own.push((k, v));
        }
    }
    for source in sources {
        for (k, v) in source {
            let present = own.iter().any(|(o, _)| o.as_text() == k.as_text());
            if !present {
                own.push((k, v));
            }
        }
    }
    Ok(own)
}

fn bad_merge(pos: Pos) -> ParseError {
    ParseError { pos, message: "a merge key `<<` takes a mapping or a list of mappings".into() }
}

#[cfg(test)]
mod tests;
