//! Validation errors shared by everything that reads configuration: the mesh state, the compiled
//! policies and the `testbed proxy` config file.
//!
//! Every error names *where* (a key path such as `spec.rules[0].to[0].operation.ports[1]`) and
//! *what* (a sentence saying what was found and what was expected). Loaders collect all errors
//! they can find before failing, and callers prefix the path with their own context
//! (`policies[3].`) with [`ValidationErrors::prefixed`].

use std::fmt;

/// One problem in an input, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Key path from the root of the object that was validated, e.g. `workloads[2].ip`.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ValidationError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All problems found in one input (never empty when returned as an error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError::new(path, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }

    /// Prefix every path with `prefix` (joined with `.` unless the path starts with `[`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        for e in &mut self.0 {
            e.path = join_path(prefix, &e.path);
        }
        self
    }

    /// Move the errors of `other` into `self`, prefixing their paths.
    pub fn extend_prefixed(&mut self, prefix: &str, other: ValidationErrors) {
        self.0.extend(other.prefixed(prefix).0);
    }

    /// `Ok(value)` when no error was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_string()
    } else if path.is_empty() {
        prefix.to_string()
    } else if path.starts_with('[') {
        format!("{prefix}{path}")
    } else {
        format!("{prefix}.{path}")
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.len() {
            0 => f.write_str("no errors"),
            1 => write!(f, "{}", self.0[0]),
            n => {
                write!(f, "{n} errors:")?;
                for e in &self.0 {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ValidationErrors {}

impl From<ValidationError> for ValidationErrors {
    fn from(e: ValidationError) -> Self {
        ValidationErrors(vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_join_paths_and_indexes() {
        let mut e = ValidationErrors::default();
        e.push("spec.rules[0]", "bad");
        e.push("[2]", "worse");
        e.push("", "root");
        let e = e.prefixed("policies[3]");
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["policies[3].spec.rules[0]", "policies[3][2]", "policies[3]"]);
        assert!(e.to_string().starts_with("3 errors:\n  - policies[3].spec.rules[0]: bad"));
    }
}
