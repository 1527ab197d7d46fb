//! Every scenario in `scenarios/regressions/` also passes on the kernel (the netns backend):
//! it runs with its quiet tail cut (`ambient_fuzz::kernel::for_kernel`) and the invariants the
//! kernel can show hold (`ambient_fuzz::kernel::check`: oracle, bytes, preservation, no step
//! skipped), as `testbed fuzz --replay scenarios/regressions --backend netns` checks them.
//!
//! `harness = false` (the sandbox must be entered single-threaded):
//! `cargo test -p ambient-fuzz --test regressions_kernel`. Needs root or unprivileged user
//! namespaces; without them it fails with the reason. The files run [`JOBS`] at a time (each
//! in namespaces of its own; their holds and deadlines take real time): about two minutes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambient_fuzz::kernel;
use ambient_fuzz::runner::load_text;
use ambient_netns::NetnsBackend;
use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::{CaseResult, Suite};
use ambient_scenarios::{Backend, RunOptions};

/// Marks the lines that show what the kernel reported for a failing file (not problems).
const EVIDENCE: &str = "  what the kernel reported: ";

/// Files replayed at once.
const JOBS: usize = 6;

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/regressions")
}

fn main() -> ExitCode {
    Suite::new("ambient-fuzz: the regressions on the kernel")
        .case("every_regression_passes_on_the_kernel", every_regression)
        .run()
}

fn every_regression(sandbox: &Sandbox) -> CaseResult {
    let dir = folder();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    files.sort();
    if files.is_empty() {
        return Err(format!("no regression scenarios in {}", dir.display()).into());
    }
    let backend = NetnsBackend::new(sandbox);
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..JOBS.min(files.len()) {
            s.spawn(|| {
                while let Some(f) = files.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let problems = replay(&backend, f);
                    let name = f.display().to_string();
                    let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
                    failed.extend(problems.into_iter().map(|p| format!("{name}: {p}")));
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    if !failed.is_empty() {
        let count = failed.iter().filter(|l| !l.contains(EVIDENCE)).count();
        let all = failed.join("\n");
        return Err(format!("{count} problem(s) on the kernel:\n{all}").into());
    }
    Ok(())
}

/// What went wrong replaying one file on the kernel (nothing: it passed).
fn replay(backend: &NetnsBackend<'_>, file: &PathBuf) -> Vec<String> {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return vec![format!("reading it: {e}")],
    };
    let world = match load_text(&name, &text) {
        Ok(w) => kernel::for_kernel(&w),
        Err(bug) => return vec![format!("does not load: {:?}", bug.errors)],
    };
    match backend.run(&world, &RunOptions::default()) {
        Ok(run) => {
            let mut problems: Vec<String> =
                kernel::check(&world, &run.outcome).iter().map(ToString::to_string).collect();
            // The evidence for triage: a race on the kernel may not come back on a rerun.
            if !problems.is_empty() {
                for c in &run.outcome.connections {
                    let json = serde_json::to_string(c).unwrap_or_else(|e| e.to_string());
                    problems.push(format!("{EVIDENCE}{json}"));
                }
            }
            problems
        }
        Err(e) => vec![format!("the kernel run failed: {}", e.message)],
    }
}
