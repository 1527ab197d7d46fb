//! Finding, loading and selecting scenarios: files or folders (recursively, `*.yaml`, sorted),
//! catalog-wide unique ids, `--include`/`--exclude` by tag, `--shard K/N`.
//!
//! Every file is loaded on its own: a broken file is reported and never hides another's result.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::diag::{Diagnostic, Severity};
use crate::load::{Loaded, load_file};
use crate::world::World;

/// The scenario files named by `paths`: files as given (any extension), folders searched
/// recursively for `*.yaml` (hidden entries skipped). Sorted and de-duplicated.
/// Errors: a path that does not exist.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_dir() {
            walk(p, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Every scenario named by a set of paths, each loaded on its own.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// One per file, in path order.
    pub files: Vec<Loaded>,
}

impl Catalog {
    /// Loads every file of `paths` (see [`discover`]) and checks that scenario ids are unique
    /// across them: a repeated id is an error in every file after the first that uses it.
    pub fn load(paths: &[PathBuf]) -> Result<Catalog, String> {
        let files = discover(paths)?;
        Ok(Catalog::from_loaded(files.iter().map(|f| load_file(f)).collect()))
    }

    /// Builds a catalog from already loaded files (checks ids across them).
    pub fn from_loaded(mut files: Vec<Loaded>) -> Catalog {
        let mut first: BTreeMap<String, String> = BTreeMap::new();
        for loaded in &mut files {
            let Some(w) = &loaded.world else { continue };
            match first.get(&w.id) {
                Some(other) => {
                    loaded.diagnostics.push(Diagnostic {
                        file: loaded.file.clone(),
                        pos: w.id_pos,
                        severity: Severity::Error,
                        path: crate::diag::KeyPath::root().key("scenario"),
                        message: format!("scenario id {:?} is already used by {other}; ids are unique in a catalog", w.id),
                    });
                    loaded.diagnostics.sort_by_key(|d| d.pos);
                    loaded.world = None;
                }
                None => {
                    first.insert(w.id.clone(), loaded.file.clone());
                }
            }
        }
        Catalog { files }
    }

    pub fn worlds(&self) -> impl Iterator<Item = &World> {
        self.files.iter().filter_map(|f| f.world.as_ref())
    }

    pub fn invalid(&self) -> impl Iterator<Item = &Loaded> {
        self.files.iter().filter(|f| !f.is_valid())
    }

    pub fn is_valid(&self) -> bool {
        self.files.iter().all(Loaded::is_valid)
    }
}

/// `K/N`: run the K-th (1-based) of N shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a shard as K/N with 1 <= K <= N (e.g. 2/4), found {s:?}");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) =
            (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which scenarios to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Keep scenarios with at least one of these tags (all, if empty).
    pub include: Vec<String>,
    /// Then drop scenarios with any of these tags.
    pub exclude: Vec<String>,
    /// Then keep one shard of what is left.
    pub shard: Option<Shard>,
}

impl Selection {
    pub fn matches_tags(&self, w: &World) -> bool {
        let included = self.include.is_empty() || self.include.iter().any(|t| w.tags.contains(t));
        included && !self.exclude.iter().any(|t| w.tags.contains(t))
    }

    /// The selected scenarios, sorted by id. Shards split the tag-filtered list by position in
    /// id order (the i-th scenario goes to shard `i mod N + 1`), so shards are disjoint, cover
    /// everything together, and do not depend on file paths.
    pub fn select<'a>(&self, worlds: impl IntoIterator<Item = &'a World>) -> Vec<&'a World> {
        let mut kept: Vec<&World> = worlds.into_iter().filter(|w| self.matches_tags(w)).collect();
        kept.sort_by(|a, b| a.id.cmp(&b.id));
        match self.shard {
            None => kept,
            Some(s) => kept
                .into_iter()
                .enumerate()
                .filter(|(i, _)| (*i as u64 % u64::from(s.count)) + 1 == u64::from(s.index))
                .map(|(_, w)| w)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    fn world(id: &str, tags: &[&str]) -> World {
        let text = format!(
            "scenario: {id}\ndescription: d\ntags: [{}]\ncluster: {{nodes: [n]}}\nsteps: [{{wait: 1s}}]\n",
            tags.join(", ")
        );
        load_str(&format!("{id}.yaml"), &text).into_result().unwrap()
    }

    #[test]
    fn shards_parse_and_reject_nonsense() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "1/0", "x/2", "3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn selection_filters_by_tag_then_shards_by_id() {
        let ws = [
            world("c", &["hbone"]),
            world("a", &["hbone", "slow"]),
            world("b", &[]),
            world("d", &["hbone"]),
        ];
        let ids = |sel: &Selection| {
            sel.select(ws.iter()).iter().map(|w| w.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&Selection::default()), ["a", "b", "c", "d"]);
        let inc = Selection { include: vec!["hbone".into()], ..Default::default() };
        assert_eq!(ids(&inc), ["a", "c", "d"]);
        let exc = Selection {
            include: vec!["hbone".into()],
            exclude: vec!["slow".into()],
            ..Default::default()
        };
        assert_eq!(ids(&exc), ["c", "d"]);
        let mut all = Vec::new();
        for k in 1..=3 {
            let s = Selection { shard: Some(Shard { index: k, count: 3 }), ..Default::default() };
            all.extend(ids(&s));
        }
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d"]);
        let s1 = Selection { shard: Some(Shard { index: 1, count: 3 }), ..Default::default() };
        assert_eq!(ids(&s1), ["a", "d"]);
    }

    #[test]
    fn repeated_ids_are_errors_after_the_first_file() {
        let text = "scenario: same\ndescription: d\ncluster: {nodes: [n]}\nsteps: [{wait: 1s}]\n";
        let c = Catalog::from_loaded(vec![load_str("a.yaml", text), load_str("b.yaml", text)]);
        assert!(c.files[0].is_valid());
        assert!(!c.files[1].is_valid());
        let msg = c.files[1].diagnostics[0].to_string();
        assert_eq!(
            msg,
            "b.yaml:1:11: scenario: scenario id \"same\" is already used by a.yaml; ids are unique in a catalog"
        );
    }
}
