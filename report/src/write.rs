//! The output folder of `testbed run`:
//!
//! ```text
//! <out>/.testbed-run            marker: this folder is ours, and wiped at the start of each run
//! <out>/<scenario-id>/outcome.json   one folder per scenario that produced an Outcome
//! <out>/<scenario-id>/<artifact>     the backend's files (pcaps, traces), as it named them
//! <out>/junit.xml
//! <out>/summary.md
//! ```
//!
//! Every run starts by emptying the folder, so nothing from an earlier run (of another
//! selection, say) is ever presented as current; `junit.xml` and `summary.md` are written last,
//! so a run that was interrupted has neither. To make wiping safe, [`prepare`] refuses a folder
//! that exists, is not empty and has no marker: it was not written by `testbed run`.

use std::fs;
use std::io;
use std::path::Path;

use super::{RunReport, ScenarioResult, Status, junit, summary};

/// The marker file's name.
pub const MARKER: &str = ".testbed-run";

const MARKER_TEXT: &str = "Written by `testbed run`. Everything in this folder is deleted at the start of the next run that writes here.\n";

/// Makes `out` an empty folder of ours: creates it, or empties it if it holds our marker (or
/// nothing), and writes the marker. Refuses anything else, with a message saying why.
pub fn prepare(out: &Path) -> Result<(), String> {
    let shown = out.display();
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(out).map_err(|e| format!("cannot create {shown}: {e}"))?;
        }
        Err(e) => return Err(format!("cannot use {shown}: {e}")),
        Ok(m) if !m.is_dir() => {
            return Err(format!("cannot use {shown} as the output folder: it is not a folder"));
        }
        Ok(_) => {
            let entries: Vec<_> = fs::read_dir(out)
                .and_then(|d| d.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read {shown}: {e}"))?;
            if !entries.is_empty() && !out.join(MARKER).is_file() {
                return Err(format!(
                    "refusing to clear {shown}: it is not empty and has no {MARKER} file, so it \
                     was not written by `testbed run`; choose an empty or new folder with --out"
                ));
            }
            for e in entries {
                let path = e.path();
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let removed =
                    if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                removed.map_err(|e| format!("cannot clear {}: {e}", path.display()))?;
            }
        }
    }
    fs::write(out.join(MARKER), MARKER_TEXT)
        .map_err(|e| format!("cannot write {}: {e}", out.join(MARKER).display()))
}

/// Scenario ids that cannot name a folder beside the reports.
pub fn reserved_id(id: &str) -> bool {
    matches!(id, "junit.xml" | "summary.md") || id == MARKER
}

/// Why an artifact cannot be written under this name (`seen`: the names before it), or `None`.
pub fn artifact_problem(name: &str, seen: &[&str]) -> Option<String> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name != "outcome.json";
    if !plain {
        return Some(format!(
            "the backend produced an artifact named {name:?}, which is not a plain file name \
             (or is reserved); it was not written"
        ));
    }
    seen.contains(&name).then(|| {
        format!("the backend produced two artifacts named {name:?}; the second was not written")
    })
}

/// Writes a scenario's folder: its Outcome and the artifacts with usable names. Scenarios
/// without an Outcome (not loaded, backend failed) get no folder; the reports say why.
pub fn scenario(out: &Path, result: &ScenarioResult) -> io::Result<()> {
    let Status::Ran { run, .. } = &result.status else { return Ok(()) };
    if reserved_id(&result.id) {
        return Ok(());
    }
    let dir = out.join(&result.id);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("outcome.json"), run.outcome.to_json())?;
    let mut seen = Vec::new();
    for a in &run.artifacts {
        if artifact_problem(&a.name, &seen).is_none() {
            fs::write(dir.join(&a.name), &a.bytes)?;
        }
        seen.push(a.name.as_str());
    }
    Ok(())
}

/// Writes `junit.xml` and `summary.md`.
pub fn reports(out: &Path, report: &RunReport) -> io::Result<()> {
    let xml = junit::render(report).map_err(|e| io::Error::other(e.to_string()))?;
    fs::write(out.join("junit.xml"), xml)?;
    fs::write(out.join("summary.md"), summary::render(report))
}
