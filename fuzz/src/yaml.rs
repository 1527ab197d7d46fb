//! A small YAML writer: block style for the document, flow style (`{a: b}`, `[x, y]`) for small
//! mappings and lists of scalars, so a generated scenario reads like the hand-written catalog.
//! Strings are written plain when that cannot be misread and double-quoted otherwise.

/// A YAML value, keys in the order they are to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Y {
    /// A string; quoted when a plain scalar could be misread.
    Str(String),
    /// Written as is: numbers, booleans, addresses, sizes, durations.
    Raw(String),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
}

impl Y {
    pub fn str(s: impl Into<String>) -> Y {
        Y::Str(s.into())
    }

    pub fn raw(s: impl ToString) -> Y {
        Y::Raw(s.to_string())
    }

    /// A mapping from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Y)>) -> Y {
        Y::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Converts JSON (e.g. a serialized Istio object); object keys keep serde_json's order.
    pub fn from_json(v: &serde_json::Value) -> Y {
        match v {
            serde_json::Value::Null => Y::raw("null"),
            serde_json::Value::Bool(b) => Y::raw(b),
            serde_json::Value::Number(n) => Y::raw(n),
            serde_json::Value::String(s) => Y::str(s.clone()),
            serde_json::Value::Array(a) => Y::Seq(a.iter().map(Y::from_json).collect()),
            serde_json::Value::Object(o) => {
                Y::Map(o.iter().map(|(k, v)| (k.clone(), Y::from_json(v))).collect())
            }
        }
    }

    fn is_scalar(&self) -> bool {
        matches!(self, Y::Str(_) | Y::Raw(_))
    }

    /// Flow form if it is short and holds only scalars (one level of nesting allowed).
    fn flow(&self, budget: usize) -> Option<String> {
        let text = match self {
            Y::Str(s) => scalar(s),
            Y::Raw(s) => s.clone(),
            Y::Seq(items) => {
                let parts: Option<Vec<String>> = items.iter().map(|i| i.flow(budget)).collect();
                format!("[{}]", parts?.join(", "))
            }
            Y::Map(entries) => {
                let parts: Option<Vec<String>> = entries
                    .iter()
                    .map(|(k, v)| v.flow(budget).map(|v| format!("{}: {v}", scalar(k))))
                    .collect();
                format!("{{{}}}", parts?.join(", "))
            }
        };
        (text.len() <= budget || self.is_scalar()).then_some(text)
    }
}

/// A string as a scalar: plain when safe, else double-quoted (JSON escapes are valid YAML).
pub fn scalar(s: &str) -> String {
    let reserved = ["true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"];
    let plain = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./@>:".contains(c))
        && !s.ends_with(':')
        && !s.contains(": ")
        && !reserved.contains(&s.to_ascii_lowercase().as_str());
    if plain { s.to_string() } else { serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()) }
}

const WIDTH: usize = 100;

/// Writes a document whose root is a mapping.
pub fn document(root: &Y) -> String {
    let mut out = String::new();
    match root {
        Y::Map(entries) => map_block(&mut out, entries, 0),
        other => {
            out.push_str(&other.flow(usize::MAX).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn map_block(out: &mut String, entries: &[(String, Y)], indent: usize) {
    for (k, v) in entries {
        pad(out, indent);
        entry(out, k, v, indent);
    }
}

/// `key: value` at the current position (indentation already written). Top-level sections
/// are always blocks; deeper values flow when they fit on the line.
fn entry(out: &mut String, key: &str, v: &Y, indent: usize) {
    let key = scalar(key);
    let budget = WIDTH.saturating_sub(indent + key.len() + 2);
    let scalars_only = match v {
        Y::Seq(items) => items.iter().all(Y::is_scalar),
        Y::Map(_) => false,
        _ => true,
    };
    if let Some(f) = v.flow(budget).filter(|_| indent > 0 || scalars_only) {
        out.push_str(&format!("{key}: {f}\n"));
        return;
    }
    out.push_str(&format!("{key}:\n"));
    match v {
        Y::Map(entries) => map_block(out, entries, indent + 2),
        Y::Seq(items) => seq_block(out, items, indent + 2),
        _ => unreachable!("scalars always have a flow form"),
    }
}

fn seq_block(out: &mut String, items: &[Y], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push_str("- ");
        if let Some(f) = item.flow(WIDTH.saturating_sub(indent + 2)) {
            out.push_str(&f);
            out.push('\n');
            continue;
        }
        match item {
            Y::Map(entries) => {
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        pad(out, indent + 2);
                    }
                    entry(out, k, v, indent + 2);
                }
            }
            Y::Seq(inner) => {
                out.push('\n');
                seq_block(out, inner, indent + 2);
            }
            _ => unreachable!("scalars always have a flow form"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_when_safe_quoted_otherwise() {
        assert_eq!(scalar("node-a"), "node-a");
        assert_eq!(scalar("echo.default:80"), "echo.default:80");
        assert_eq!(scalar("cluster.local/ns/default/sa/sa0"), "cluster.local/ns/default/sa/sa0");
        assert_eq!(scalar("*"), "\"*\"");
        assert_eq!(scalar("8080"), "\"8080\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar(""), "\"\"");
    }

    #[test]
    fn small_things_flow_big_things_block() {
        let doc = Y::map([
            ("description", Y::str("two pods")),
            (
                "cluster",
                Y::map([
                    ("nodes", Y::Seq(vec![Y::str("node-a"), Y::str("node-b")])),
                    (
                        "pods",
                        Y::Seq(vec![Y::map([
                            ("name", Y::str("p0")),
                            ("node", Y::str("node-a")),
                            ("ip", Y::raw("10.0.1.2")),
                        ])]),
                    ),
                ]),
            ),
        ]);
        let text = document(&doc);
        assert_eq!(
            text,
            "description: \"two pods\"\ncluster:\n  nodes: [node-a, node-b]\n  pods: [{name: p0, node: node-a, ip: 10.0.1.2}]\n"
        );
    }
}
