//! Finding, loading and selecting scenarios: files or folders (recursively, `*.yaml`, sorted),
//! catalog-wide unique ids, `--scenario GLOB` by id, `--include`/`--exclude` by tag, `--shard K/N`.
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
    /// Keep scenarios whose id matches at least one of these globs (`*`: any run of characters,
    /// `?`: one character; all, if empty). A file that did not load matches by its file stem.
    pub scenarios: Vec<String>,
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

    /// Whether `id` is kept by `--scenario` (every id, without globs).
    pub fn matches_id(&self, id: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|g| glob_matches(g, id))
    }

    /// The `--scenario` globs that match no scenario of the catalog (valid ids, and the file
    /// stems of files that did not load), whatever the other filters: each is a usage error, so
    /// a typo never passes as an empty selection.
    pub fn unmatched_globs(&self, catalog: &Catalog) -> Vec<&str> {
        let ids: Vec<String> = catalog
            .files
            .iter()
            .map(|f| f.world.as_ref().map_or_else(|| file_stem(&f.file), |w| w.id.clone()))
            .collect();
        self.scenarios
            .iter()
            .filter(|g| !ids.iter().any(|id| glob_matches(g, id)))
            .map(String::as_str)
            .collect()
    }

    /// The selected scenarios, sorted by id. Shards split the id- and tag-filtered list by
    /// position in id order (the i-th scenario goes to shard `i mod N + 1`), so shards are
    /// disjoint, cover everything together, and do not depend on file paths.
    pub fn select<'a>(&self, worlds: impl IntoIterator<Item = &'a World>) -> Vec<&'a World> {
        let mut kept: Vec<&World> =
            worlds.into_iter().filter(|w| self.matches_id(&w.id) && self.matches_tags(w)).collect();
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

impl Selection {
    /// The files that did not load which this selection runs (as failures): every one whose
    /// stem `--scenario` keeps, whatever the tags say (a broken file's tags are not known, and
    /// hiding it would turn a broken catalog green). With `--shard K/N` the j-th of them
    /// (0-based, in path order) belongs to shard `j mod N + 1`, so each is in exactly one shard.
    pub fn select_broken<'a>(&self, catalog: &'a Catalog) -> Vec<&'a Loaded> {
        catalog
            .invalid()
            .filter(|l| self.matches_id(&file_stem(&l.file)))
            .enumerate()
            .filter(|(j, _)| match self.shard {
                None => true,
                Some(s) => (*j as u64 % u64::from(s.count)) + 1 == u64::from(s.index),
            })
            .map(|(_, l)| l)
            .collect()
    }
}

/// `--scenario "x*" matches no scenario id` (and the others), for the usage error.
pub fn unmatched_words(globs: &[&str]) -> String {
    let named: Vec<String> = globs.iter().map(|g| format!("--scenario {g:?}")).collect();
    let verb = if globs.len() == 1 { "matches" } else { "match" };
    format!("{} {verb} no scenario id", named.join(", "))
}

/// A file's stem: the id a file that did not load is reported under.
pub fn file_stem(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none) and `?`
/// exactly one; every other character matches itself. Linear backtracking on the last `*`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the `*` take one more character and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
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
    fn globs_match_star_and_question_mark_over_the_whole_id() {
        for (p, t) in [
            ("same-node-hbone", "same-node-hbone"),
            ("*", ""),
            ("*", "anything"),
            ("same-*", "same-node-hbone"),
            ("*-hbone", "same-node-hbone"),
            ("*node*", "same-node-hbone"),
            ("s?me-*-hbone", "same-node-hbone"),
            ("a*b*c", "aXbYbZc"),
            ("a**c", "ac"),
            ("?", "é"),
        ] {
            assert!(glob_matches(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("same", "same-node-hbone"),
            ("node*", "same-node-hbone"),
            ("*hbon", "same-node-hbone"),
            ("?", ""),
            ("??", "a"),
            ("a*b*c", "aXbYcZ"),
            ("", "a"),
        ] {
            assert!(!glob_matches(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn scenario_globs_select_by_id_before_tags_and_shards_and_report_misses() {
        let ws = [world("same-node-hbone", &["hbone"]), world("deny", &[]), world("same-x", &[])];
        let ids = |sel: &Selection| {
            sel.select(ws.iter()).iter().map(|w| w.id.clone()).collect::<Vec<_>>()
        };
        let sel = Selection { scenarios: vec!["same-*".into()], ..Default::default() };
        assert_eq!(ids(&sel), ["same-node-hbone", "same-x"]);
        let sel = Selection {
            scenarios: vec!["same-*".into(), "deny".into()],
            exclude: vec!["hbone".into()],
            ..Default::default()
        };
        assert_eq!(ids(&sel), ["deny", "same-x"]);
        let sel = Selection {
            scenarios: vec!["same-*".into()],
            shard: Some(Shard { index: 2, count: 2 }),
            ..Default::default()
        };
        assert_eq!(ids(&sel), ["same-x"]);
        // Misses are reported against the whole catalog (broken files by stem), not the tags.
        let text = |id: &str| {
            format!(
                "scenario: {id}\ndescription: d\ncluster: {{nodes: [n]}}\nsteps: [{{wait: 1s}}]\n"
            )
        };
        let catalog = Catalog::from_loaded(vec![
            load_str("dir/ok.yaml", &text("ok")),
            load_str("dir/broken-one.yaml", "scenario: [\n"),
        ]);
        let sel = Selection {
            scenarios: vec!["ok".into(), "broken-*".into(), "nope*".into()],
            include: vec!["no-such-tag".into()],
            ..Default::default()
        };
        assert_eq!(sel.unmatched_globs(&catalog), ["nope*"]);
        let broken: Vec<&str> =
            sel.select_broken(&catalog).iter().map(|l| l.file.as_str()).collect();
        assert_eq!(broken, ["dir/broken-one.yaml"]);
        let only_ok = Selection { scenarios: vec!["ok".into()], ..Default::default() };
        assert!(only_ok.select_broken(&catalog).is_empty());
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
