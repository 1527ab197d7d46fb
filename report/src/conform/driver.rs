//! The runner behind `testbed conform`: load the files, select (the same tags and shards as
//! `testbed run`), run every selected scenario on both backends, check and compare, write each
//! scenario's folder as it finishes, then `junit.xml` and `conformance.md`.
//!
//! Scenarios run `jobs` at a time (each on its own thread: the simulator, then the kernel — each
//! kernel run builds its own namespaces, so runs do not interfere). Scenarios tagged `slow` start
//! first: they are mostly idle waiting, and overlapping them with the rest keeps the suite short.
//! Results are reported in id order whatever the finishing order. A file that does not load
//! fails on both sides and is reported (with `--shard`, in exactly one shard), as in `testbed run`.
//!
//! Output folder (emptied first, with the marker of [`crate::write`]):
//!
//! ```text
//! <out>/<id>/sim/outcome.json     the simulator's Outcome
//! <out>/<id>/netns/outcome.json   the kernel's Outcome
//! <out>/<id>/diff.txt             every difference, with the entry that covers it or UNLISTED
//! <out>/junit.xml                 a testcase per scenario × {sim, netns, agree}
//! <out>/conformance.md            the matrix and the known differences by entry
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Comparison, ConformReport, Judged, ScenarioConformance, compare, render};
use crate::driver::{Clock, Entry, RunError, check_globs, run_one, select, selection_words, stem};
use crate::{ScenarioResult, Status, write};
use ambient_scenarios::backend::{Backend, RunOptions};
use ambient_scenarios::catalog::{Catalog, Selection};

use super::expected::ExpectedDifferences;

/// What `testbed conform` was asked to do.
#[derive(Debug, Clone)]
pub struct ConformRequest {
    pub paths: Vec<PathBuf>,
    pub selection: Selection,
    /// `seed` only; traces and pcaps are `testbed run`'s business.
    pub options: RunOptions,
    pub out: PathBuf,
    /// Scenarios at once (at least 1).
    pub jobs: usize,
    pub expected: ExpectedDifferences,
    /// See [`ConformReport::environment`].
    pub environment: Vec<(String, String)>,
}

/// Told about the run as it goes (from several threads, one call at a time).
pub trait ConformProgress: Send {
    fn start(&mut self, total: usize);
    /// `done` scenarios have finished, this one last.
    fn finished(&mut self, done: usize, result: &ScenarioConformance);
    fn finish(&mut self);
}

/// The selection in words.
pub fn describe(req: &ConformRequest) -> String {
    let parts = selection_words(&req.selection, req.options.seed);
    if parts.is_empty() { "all scenarios, their own seeds".into() } else { parts.join(" · ") }
}

/// Runs a request (see the module docs) and returns the report; its
/// [`ConformReport::exit_code`] is the command's.
pub fn run(
    req: &ConformRequest,
    sim: &(dyn Backend + Sync),
    netns: &(dyn Backend + Sync),
    clock: &(dyn Clock + Sync),
    progress: &mut dyn ConformProgress,
) -> Result<ConformReport, RunError> {
    let catalog = Catalog::load(&req.paths).map_err(RunError::Paths)?;
    if catalog.files.is_empty() {
        let msg = "nothing selected: no scenario files (*.yaml) under the given paths";
        return Err(RunError::NothingSelected(msg.into()));
    }
    check_globs(&catalog, &req.selection)?;
    let mut entries = select(&catalog, &req.selection);
    if entries.is_empty() {
        return Err(RunError::NothingSelected(format!(
            "nothing selected: {} scenario files found, none kept by the selection ({})",
            catalog.files.len(),
            describe(req)
        )));
    }
    write::prepare(&req.out).map_err(RunError::Out)?;

    // Slow scenarios first, then by id.
    let slow = |e: &Entry| matches!(e, Entry::Valid(w) if w.tags.contains("slow"));
    entries.sort_by_key(|e| (!slow(e), e.id()));

    let total = entries.len();
    progress.start(total);
    let next = AtomicUsize::new(0);
    let shared = Mutex::new((Vec::with_capacity(total), progress, None::<String>));
    let jobs = req.jobs.clamp(1, total);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = entries.get(i) else { break };
                    let result = one(entry, req, sim, netns, clock);
                    let written = write_scenario(&req.out, &result, &req.expected);
                    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
                    let (results, progress, error) = &mut *guard;
                    if let Err(e) = written {
                        error.get_or_insert(e);
                    }
                    results.push(result);
                    progress.finished(results.len(), results.last().expect("just pushed"));
                }
            });
        }
    });
    let (mut results, progress, error) = shared.into_inner().unwrap_or_else(|p| p.into_inner());
    progress.finish();
    if let Some(e) = error {
        return Err(RunError::Out(e));
    }
    results.sort_by(|a: &ScenarioConformance, b| a.id.cmp(&b.id));
    let report = ConformReport {
        selection: describe(req),
        environment: req.environment.clone(),
        expected: req.expected.clone(),
        results,
    };
    write_reports(&req.out, &report).map_err(RunError::Out)?;
    Ok(report)
}

/// Both backends on one scenario, and the comparison.
fn one(
    entry: &Entry,
    req: &ConformRequest,
    sim: &(dyn Backend + Sync),
    netns: &(dyn Backend + Sync),
    clock: &(dyn Clock + Sync),
) -> ScenarioConformance {
    let (world, file, id) = match entry {
        Entry::Valid(w) => (Some(*w), w.file.clone(), w.id.clone()),
        Entry::Broken(l) => (None, l.file.clone(), stem(&l.file)),
    };
    let Some(world) = world else {
        let errors: Vec<_> = match entry {
            Entry::Broken(l) => l.errors().cloned().collect(),
            Entry::Valid(_) => Vec::new(),
        };
        let failed = ScenarioResult {
            id: id.clone(),
            file: file.clone(),
            status: Status::NotLoaded { errors },
            wall: Default::default(),
        };
        return ScenarioConformance {
            id,
            file,
            tags: Vec::new(),
            sim: failed.clone(),
            netns: failed,
            comparison: Comparison::NotCompared("the file did not load".into()),
        };
    };
    let opts = RunOptions { seed: req.options.seed, pcap: false, trace: false };
    let timed = |backend: &dyn Backend| {
        let start = clock.now();
        let status = run_one(backend, world, &opts);
        let wall = clock.now().saturating_sub(start);
        ScenarioResult { id: id.clone(), file: file.clone(), status, wall }
    };
    let sim_result = timed(sim);
    let netns_result = timed(netns);
    let comparison = match (&sim_result.status, &netns_result.status) {
        (Status::Ran { run: a, .. }, Status::Ran { run: b, .. }) => Comparison::Compared(
            compare(world, &a.outcome, &b.outcome)
                .into_iter()
                .map(|d| {
                    let verdict = req.expected.judge(&world.id, &d, &a.outcome, &b.outcome);
                    Judged { difference: d, verdict }
                })
                .collect(),
        ),
        (a, b) => {
            let side = |s: &Status, name: &str| match s {
                Status::Ran { .. } => None,
                _ => Some(name.to_string()),
            };
            let missing: Vec<String> = side(a, "sim").into_iter().chain(side(b, "netns")).collect();
            Comparison::NotCompared(format!("no Outcome from {}", missing.join(" and ")))
        }
    };
    ScenarioConformance {
        id,
        file,
        tags: world.tags.iter().cloned().collect(),
        sim: sim_result,
        netns: netns_result,
        comparison,
    }
}

fn write_scenario(
    out: &Path,
    r: &ScenarioConformance,
    expected: &ExpectedDifferences,
) -> Result<(), String> {
    if write::reserved_id(&r.id) || matches!(r.id.as_str(), "conformance.md") {
        return Ok(());
    }
    let dir = out.join(&r.id);
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    for (name, result) in [("sim", &r.sim), ("netns", &r.netns)] {
        if let Status::Ran { run, .. } = &result.status {
            fs::create_dir_all(dir.join(name)).map_err(io)?;
            fs::write(dir.join(name).join("outcome.json"), run.outcome.to_json()).map_err(io)?;
        }
    }
    if let Comparison::Compared(_) = &r.comparison {
        fs::create_dir_all(&dir).map_err(io)?;
        fs::write(dir.join("diff.txt"), render::diff_text(r, expected)).map_err(io)?;
    }
    Ok(())
}

fn write_reports(out: &Path, report: &ConformReport) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    let xml = render::junit(report).map_err(|e| e.to_string())?;
    fs::write(out.join("junit.xml"), xml).map_err(io)?;
    fs::write(out.join("conformance.md"), render::markdown(report)).map_err(io)
}
