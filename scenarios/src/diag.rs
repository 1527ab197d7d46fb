//! Where something is in a scenario file and what is wrong with it.
//!
//! Every error and warning the loader reports is a [`Diagnostic`]: the file, a [`Pos`]
//! (1-based line and column, in characters), the [`KeyPath`] of the key in question
//! (`cluster.pods[1].node`) and a message that says what was expected. Printed, it reads
//! `scenarios/catalog/x.yaml:14:9: cluster.pods[1].node: unknown node "node-c"; nodes are node-a, node-b`.

use std::fmt;

use serde::Serialize;

/// A position in a source file: 1-based line and column (columns count characters, not bytes).
/// `0:0` means "no position" (a value that was not written in the file, such as a default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos { line: 0, col: 0 };

    pub fn new(line: u32, col: u32) -> Self {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The path of a key in a scenario document, as users write it in messages:
/// `cluster.pods[1].node`, `expect.tunnels["node-a->node-b"]`. The root is the empty path.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyPath(String);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(String::new())
    }

    /// The path of `key` inside this mapping. Keys that are not plain words are quoted.
    pub fn key(&self, key: &str) -> Self {
        let plain = !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let mut s = self.0.clone();
        if plain {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(key);
        } else {
            s.push_str(&format!("[{key:?}]"));
        }
        KeyPath(s)
    }

    /// The path of item `index` (0-based) of this list.
    pub fn index(&self, index: usize) -> Self {
        KeyPath(format!("{}[{index}]", self.0))
    }

    /// Appends a path written relative to this one (`spec.rules[0]` after `policies[2]`).
    pub fn join(&self, rest: &str) -> Self {
        if rest.is_empty() {
            return self.clone();
        }
        if self.0.is_empty() || rest.starts_with('[') {
            return KeyPath(format!("{}{rest}", self.0));
        }
        KeyPath(format!("{}.{rest}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a value was written: its position and key path.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct At {
    pub pos: Pos,
    pub path: KeyPath,
}

impl At {
    pub fn new(pos: Pos, path: KeyPath) -> Self {
        At { pos, path }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.pos)
    }
}

/// A value with where it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Located<T> {
    pub value: T,
    pub at: At,
}

impl<T> Located<T> {
    pub fn new(value: T, at: At) -> Self {
        Located { value, at }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Located<U> {
        Located { value: f(self.value), at: self.at }
    }
}

/// Errors stop a scenario from running; warnings are printed and do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Diagnostic {
    /// The file as it was named to the loader.
    pub file: String,
    pub pos: Pos,
    pub severity: Severity,
    /// Empty for problems of the file as a whole.
    pub path: KeyPath,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.pos)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects the diagnostics of one file, in the order they were found.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    file: String,
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: impl Into<String>) -> Self {
        Diagnostics { file: file.into(), items: Vec::new() }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// An error about the value written at `at`.
    pub fn error_at(&mut self, at: &At, message: impl Into<String>) {
        self.push(Severity::Error, at.pos, &at.path, message.into());
    }

    /// A warning about the value written at `at`.
    pub fn warning_at(&mut self, at: &At, message: impl Into<String>) {
        self.push(Severity::Warning, at.pos, &at.path, message.into());
    }

    pub fn error(&mut self, pos: Pos, path: &KeyPath, message: impl Into<String>) {
        self.push(Severity::Error, pos, path, message.into());
    }

    pub fn warning(&mut self, pos: Pos, path: &KeyPath, message: impl Into<String>) {
        self.push(Severity::Warning, pos, path, message.into());
    }

    fn push(&mut self, severity: Severity, pos: Pos, path: &KeyPath, message: String) {
        self.items.push(Diagnostic {
            file: self.file.clone(),
            pos,
            severity,
            path: path.clone(),
            message,
        });
    }

    /// Adds diagnostics found elsewhere (they keep their own file name).
    pub fn extend(&mut self, items: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(items);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    /// All diagnostics, sorted by position (then by the order they were found), so that a file's
    /// report reads top to bottom.
    pub fn into_sorted(self) -> Vec<Diagnostic> {
        let mut items = self.items;
        items.sort_by_key(|d| d.pos);
        items
    }
}

/// Lists names for a message: `node-a, node-b` (or `none` for an empty list).
pub fn list<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let v: Vec<String> = names.into_iter().map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() { "none".to_string() } else { v.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_the_document() {
        let p = KeyPath::root().key("cluster").key("pods").index(1).key("node");
        assert_eq!(p.as_str(), "cluster.pods[1].node");
        let t = KeyPath::root().key("expect").key("tunnels").key("node-a->node-b");
        assert_eq!(t.as_str(), r#"expect.tunnels["node-a->node-b"]"#);
        assert_eq!(KeyPath::root().index(0).as_str(), "[0]");
        let j = KeyPath::root().key("policies").index(2).join("spec.rules[0]");
        assert_eq!(j.as_str(), "policies[2].spec.rules[0]");
    }

    #[test]
    fn diagnostics_print_file_position_path_message() {
        let mut d = Diagnostics::new("x.yaml");
        d.warning(Pos::new(3, 5), &KeyPath::root().key("a"), "w");
        d.error(Pos::new(1, 1), &KeyPath::root(), "e");
        assert!(d.has_errors());
        let v: Vec<String> = d.into_sorted().iter().map(ToString::to_string).collect();
        assert_eq!(v, ["x.yaml:1:1: e", "x.yaml:3:5: warning: a: w"]);
    }
}
