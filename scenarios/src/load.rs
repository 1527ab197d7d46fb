//! Loading one scenario: text → located YAML tree → decoded document → [`World`].
//!
//! Errors are collected per stage: all syntax, type and unknown-key errors of a file are
//! reported together; reference and semantic errors (unknown node, duplicate address …) are
//! reported together once the document decodes cleanly (checking references in a half-decoded
//! document would only produce echoes of the first errors).

use std::path::Path;

use crate::diag::{At, Diagnostic, Diagnostics, KeyPath};
use crate::world::World;
use crate::{decode, world, yaml};

/// The result of loading one file: its World if it is valid, and every diagnostic, sorted by
/// position (warnings included).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file as named to the loader.
    pub file: String,
    /// `Some` exactly when there is no error among `diagnostics`.
    pub world: Option<World>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn is_valid(&self) -> bool {
        self.world.is_some()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    /// The World, or the errors as one message per line.
    pub fn into_result(self) -> Result<World, Vec<Diagnostic>> {
        match self.world {
            Some(w) => Ok(w),
            None => Err(self.diagnostics.into_iter().filter(Diagnostic::is_error).collect()),
        }
    }
}

/// The largest scenario file read (a hand-written scenario is a few KiB; the bound keeps a
/// wrong path such as `/dev/zero` from growing memory without end).
pub const MAX_SCENARIO_BYTES: u64 = 16 * 1024 * 1024;

/// Loads a scenario from a file. The scenario id defaults to the file stem.
pub fn load_file(path: &Path) -> Loaded {
    let file = path.display().to_string();
    match ambient_proxy::config::read_text(path, MAX_SCENARIO_BYTES) {
        Ok(text) => load_str(&file, &text),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => file_error(&file, e.to_string()),
        Err(e) => file_error(&file, format!("cannot read: {e}")),
    }
}

fn file_error(file: &str, message: String) -> Loaded {
    let mut d = Diagnostics::new(file);
    d.error_at(&At::new(crate::diag::Pos::new(1, 1), KeyPath::root()), message);
    Loaded { file: file.to_string(), world: None, diagnostics: d.into_sorted() }
}

/// Loads a scenario from text; `file` names it in messages and gives the default id (its stem).
pub fn load_str(file: &str, text: &str) -> Loaded {
    let mut d = Diagnostics::new(file);
    let stem = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
    let world = match yaml::parse(text) {
        Err(e) => {
            d.error(e.pos, &KeyPath::root(), e.message);
            None
        }
        Ok(root) => {
            let doc = decode::decode(&root, &mut d);
            // Seam for the proxy's mesh state (wired once the proxy core is merged): after
            // `build`, compile every policy (`World::policies` and each `Fault::Apply`) with the
            // proxy's compile step, and turn each compile error's key path into a diagnostic at
            // `policy.source.locate(path)`, so policy errors are reported before anything runs.
            if d.has_errors() { None } else { world::build(doc, file, &stem, &mut d) }
        }
    };
    let diagnostics = d.into_sorted();
    let world = world.map(|mut w| {
        w.warnings = diagnostics.clone();
        w
    });
    Loaded { file: file.to_string(), world, diagnostics }
}
