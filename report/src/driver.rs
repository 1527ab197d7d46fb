//! The runner behind `testbed run`: load the files, select, run each selected scenario on the
//! backend, check it, write its folder, then write `junit.xml` and `summary.md`.
//!
//! Which files run:
//! - valid scenarios: those [`Selection::select`] keeps (tags, then shard, in id order);
//! - files that do not load: always (unless `--scenario` globs leave out their file stem), as
//!   failed results, because a broken file's tags are not known and hiding it would turn a
//!   broken catalog green. With `--shard K/N` the j-th broken file (0-based, in path order)
//!   belongs to shard `j mod N + 1`, so each is reported exactly once across the shards.
//!
//! Results are in id order (a broken file sorts by its file stem). Nothing selected at all is a
//! [`RunError`] (exit 2), as are a `--scenario` glob that matches no scenario id, paths that do
//! not exist and an output folder that is not ours.
//! The backend is opened only when there is a valid scenario to run, and if it cannot be opened
//! every such scenario fails with that reason. A backend that panics fails its scenario and the
//! run goes on.
//!
//! Time comes from the injected [`Clock`] (wall time for `testbed run`, a fixed step in tests);
//! progress goes to an injected [`Progress`].

use std::fmt;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

use super::{RunReport, ScenarioResult, Status, write};
use ambient_scenarios::backend::{Backend, BackendError, Run, RunOptions};
use ambient_scenarios::catalog::{Catalog, Selection};
use ambient_scenarios::expect::check_outcome;
use ambient_scenarios::load::Loaded;
use ambient_scenarios::world::World;

/// What `testbed run` was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// Files or folders (see [`ambient_scenarios::catalog::discover`]).
    pub paths: Vec<PathBuf>,
    pub selection: Selection,
    pub options: RunOptions,
    /// The output folder (`reports/latest` by default); see [`write::prepare`].
    pub out: PathBuf,
    /// The backend's name, as the reports show it.
    pub backend: String,
    /// See [`RunReport::environment`](super::RunReport::environment).
    pub environment: Vec<(String, String)>,
}

/// A monotonic clock: time since an arbitrary origin.
pub trait Clock {
    fn now(&self) -> Duration;
}

/// Told about the run as it goes (a progress bar, log lines, nothing).
pub trait Progress {
    fn start(&mut self, total: usize);
    fn scenario_started(&mut self, index: usize, id: &str);
    fn scenario_done(&mut self, index: usize, result: &ScenarioResult);
    fn finish(&mut self);
}

/// One line per finished scenario (`[2/7] deny-policy: FAIL — reason (1.2s)`), for output that
/// is not a terminal.
#[derive(Debug)]
pub struct LineProgress<W: Write> {
    out: W,
    total: usize,
}

impl<W: Write> LineProgress<W> {
    pub fn new(out: W) -> Self {
        LineProgress { out, total: 0 }
    }
}

impl<W: Write> Progress for LineProgress<W> {
    fn start(&mut self, total: usize) {
        self.total = total;
    }

    fn scenario_started(&mut self, _: usize, _: &str) {}

    fn scenario_done(&mut self, index: usize, r: &ScenarioResult) {
        let verdict = match r.first_reason() {
            None => "pass".to_string(),
            Some(reason) => format!("FAIL — {reason}"),
        };
        let secs = r.wall.as_secs_f64();
        let _ =
            writeln!(self.out, "[{}/{}] {}: {verdict} ({secs:.1}s)", index + 1, self.total, r.id);
    }

    fn finish(&mut self) {
        let _ = self.out.flush();
    }
}

/// Why a run did not start (exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// A path that does not exist or cannot be read.
    Paths(String),
    /// No scenario file, or the selection kept none.
    NothingSelected(String),
    /// The output folder cannot be used.
    Out(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Paths(m) | RunError::NothingSelected(m) | RunError::Out(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RunError {}

/// Opens the backend (once, when first needed).
pub type OpenBackend<'a> = dyn FnMut() -> Result<Box<dyn Backend>, BackendError> + 'a;

/// A selected scenario, or a file that did not load (run as a failure whatever the tags say).
pub(crate) enum Entry<'a> {
    Valid(&'a World),
    Broken(&'a Loaded),
}

impl Entry<'_> {
    /// The scenario's id; a broken file's stem.
    pub(crate) fn id(&self) -> String {
        match self {
            Entry::Valid(w) => w.id.clone(),
            Entry::Broken(l) => stem(&l.file),
        }
    }
}

pub(crate) fn stem(file: &str) -> String {
    ambient_scenarios::catalog::file_stem(file)
}

/// The selected scenarios and, shard by shard, the files that did not load
/// ([`Selection::select_broken`]); by id.
pub(crate) fn select<'a>(catalog: &'a Catalog, selection: &Selection) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry> =
        selection.select(catalog.worlds()).into_iter().map(Entry::Valid).collect();
    entries.extend(selection.select_broken(catalog).into_iter().map(Entry::Broken));
    entries.sort_by_key(Entry::id);
    entries
}

/// `--scenario` globs that match no scenario id of the catalog: a usage error naming them.
pub(crate) fn check_globs(catalog: &Catalog, selection: &Selection) -> Result<(), RunError> {
    let missed = selection.unmatched_globs(catalog);
    if missed.is_empty() {
        return Ok(());
    }
    let n = catalog.files.len();
    Err(RunError::NothingSelected(format!(
        "{} ({n} scenario file{} found)",
        ambient_scenarios::catalog::unmatched_words(&missed),
        if n == 1 { "" } else { "s" }
    )))
}

/// The selection and options in words, for the reports' headers.
pub fn describe(req: &Request) -> String {
    let mut parts = selection_words(&req.selection, req.options.seed);
    if req.options.pcap {
        parts.push("pcap".into());
    }
    if req.options.trace {
        parts.push("trace".into());
    }
    if parts.is_empty() { "all scenarios, their own seeds".into() } else { parts.join(" · ") }
}

/// The selection and a seed for every scenario, in words (empty: all, their own seeds).
pub(crate) fn selection_words(selection: &Selection, seed: Option<u64>) -> Vec<String> {
    let mut parts = Vec::new();
    if !selection.scenarios.is_empty() {
        parts.push(format!("scenario {}", selection.scenarios.join(", ")));
    }
    if !selection.include.is_empty() {
        parts.push(format!("include {}", selection.include.join(", ")));
    }
    if !selection.exclude.is_empty() {
        parts.push(format!("exclude {}", selection.exclude.join(", ")));
    }
    if let Some(s) = selection.shard {
        parts.push(format!("shard {s}"));
    }
    if let Some(seed) = seed {
        parts.push(format!("seed {seed} for every scenario"));
    }
    parts
}

/// Runs a request: see the module docs. Writes `<out>/<id>/` as each scenario finishes, then
/// `junit.xml` and `summary.md`, and returns the report (its [`RunReport::exit_code`] is the
/// command's).
pub fn run(
    req: &Request,
    open_backend: &mut OpenBackend<'_>,
    clock: &dyn Clock,
    progress: &mut dyn Progress,
) -> Result<RunReport, RunError> {
    let catalog = Catalog::load(&req.paths).map_err(RunError::Paths)?;
    if catalog.files.is_empty() {
        let msg = "nothing selected: no scenario files (*.yaml) under the given paths";
        return Err(RunError::NothingSelected(msg.into()));
    }
    check_globs(&catalog, &req.selection)?;
    let entries = select(&catalog, &req.selection);
    if entries.is_empty() {
        let msg = format!(
            "nothing selected: {} scenario file{} found, none kept by the selection ({})",
            catalog.files.len(),
            if catalog.files.len() == 1 { "" } else { "s" },
            describe(req)
        );
        return Err(RunError::NothingSelected(msg));
    }
    write::prepare(&req.out).map_err(RunError::Out)?;

    let mut backend: Option<Result<Box<dyn Backend>, BackendError>> = None;
    let mut results = Vec::new();
    progress.start(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        progress.scenario_started(i, &entry.id());
        let start = clock.now();
        let status = match entry {
            Entry::Broken(l) => Status::NotLoaded { errors: l.errors().cloned().collect() },
            Entry::Valid(world) => {
                let b = backend.get_or_insert_with(&mut *open_backend);
                match b {
                    Ok(b) => run_one(b.as_ref(), world, &req.options),
                    Err(e) => Status::BackendFailed {
                        world: Box::new((*world).clone()),
                        error: BackendError::new(format!(
                            "backend {} could not start: {e}",
                            req.backend
                        )),
                    },
                }
            }
        };
        let (file, id) = match entry {
            Entry::Valid(w) => (w.file.clone(), w.id.clone()),
            Entry::Broken(l) => (l.file.clone(), entry.id()),
        };
        let wall = clock.now().saturating_sub(start);
        let result = ScenarioResult { id, file, status, wall };
        write::scenario(&req.out, &result).map_err(|e| RunError::Out(e.to_string()))?;
        progress.scenario_done(i, &result);
        results.push(result);
    }
    progress.finish();
    let report = RunReport {
        backend: req.backend.clone(),
        selection: describe(req),
        seed: req.options.seed,
        environment: req.environment.clone(),
        results,
    };
    write::reports(&req.out, &report).map_err(|e| RunError::Out(e.to_string()))?;
    Ok(report)
}

pub(crate) fn run_one(backend: &dyn Backend, world: &World, opts: &RunOptions) -> Status {
    let ran = catch_unwind(AssertUnwindSafe(|| backend.run(world, opts)));
    let ran = ran.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(BackendError::new(format!("the backend panicked: {msg}")))
    });
    match ran {
        Ok(run) => Status::Ran {
            failures: check_outcome(world, &run.outcome),
            problems: problems(world, opts, &run),
            world: Box::new(world.clone()),
            run: Box::new(run),
        },
        Err(error) => Status::BackendFailed { world: Box::new(world.clone()), error },
    }
}

/// What is wrong with a run besides its expectations: it must be of this scenario, with the
/// seed asked for, and its artifacts must be writable into the scenario's folder.
pub fn problems(world: &World, opts: &RunOptions, run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    if run.outcome.scenario != world.id {
        out.push(format!(
            "the backend returned the Outcome of scenario {:?}, not {:?}",
            run.outcome.scenario, world.id
        ));
    }
    if write::reserved_id(&world.id) {
        out.push(format!(
            "the scenario id {:?} is the name of a report file, so its folder was not written; rename it",
            world.id
        ));
    }
    let seed = opts.seed.unwrap_or(world.seed);
    if run.outcome.seed != seed {
        out.push(format!(
            "the Outcome's seed is {}, but the run asked for {seed}",
            run.outcome.seed
        ));
    }
    let mut seen = Vec::new();
    for a in &run.artifacts {
        if let Some(p) = write::artifact_problem(&a.name, &seen) {
            out.push(p);
        }
        seen.push(a.name.as_str());
    }
    out
}

#[cfg(test)]
mod tests;
