//! A small libtest look-alike for `harness = false` test targets that must enter the [`Sandbox`]
//! before any thread exists (libtest runs every test on a thread of its own, too late for
//! `unshare(CLONE_NEWUSER | CLONE_NEWNS)`).
//!
//! [`Suite::run`] reads libtest's arguments (name filters, `--exact`, `--skip`, `--list`,
//! `--ignored`; other flags are accepted and ignored), enters the sandbox once, runs the selected
//! cases one after another catching panics, and prints libtest's lines — `test NAME ... ok`, the
//! failures, and `test result: ok. N passed; M failed; …` — so `cargo test` output reads as usual.
//! The exit status is non-zero if any case failed.
//!
//! A suite that cannot get its sandbox **fails** every selected case with the reason; it never
//! skips.
//!
//! Also here, for tests of this crate and of crates above it: [`without_rules`] (a World with
//! part of its captured pods' rules removed), [`failure_lines`] (expectation failures in a form
//! two backends can be compared on) and [`referenced_net_namespaces`] (what keeps namespaces
//! alive, for teardown checks).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

use crate::sandbox::Sandbox;

/// What a case returns: `Ok(())`, or any error (its `Display`, with sources, is the failure text).
pub type CaseResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

type Body<C> = Box<dyn FnOnce(&C) -> CaseResult>;

/// A list of named cases, run inside one [`Sandbox`] (`Suite<Sandbox>`, from [`Suite::new`]) or
/// on the host (`Suite<()>`, from [`Suite::on_host`]: for tests that watch a sandboxed child
/// process from the outside).
pub struct Suite<C = Sandbox> {
    name: String,
    cases: Vec<(String, Body<C>)>,
}

impl<C> std::fmt::Debug for Suite<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("name", &self.name)
            .field("cases", &self.cases.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

/// The command-line options a suite understands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    /// Name filters (substring, or whole name with `--exact`).
    pub filters: Vec<String>,
    /// `--skip` filters.
    pub skip: Vec<String>,
    /// `--exact`.
    pub exact: bool,
    /// `--list`.
    pub list: bool,
    /// `--ignored`: run only ignored cases (a suite has none).
    pub ignored: bool,
}

impl Args {
    /// Parses libtest-style arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Args {
        let mut out = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => out.exact = true,
                "--list" => out.list = true,
                "--ignored" => out.ignored = true,
                "--skip" => out.skip.extend(args.next()),
                // Flags that take a value as the next argument.
                "--test-threads" | "--format" | "--color" | "--logfile" | "-Z"
                | "--shuffle-seed" => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        out
    }

    /// Whether a case of this name is selected.
    pub fn selects(&self, name: &str) -> bool {
        let hit = |f: &String| if self.exact { name == f } else { name.contains(f.as_str()) };
        let included = self.filters.is_empty() || self.filters.iter().any(hit);
        included && !self.skip.iter().any(|s| name.contains(s.as_str()))
    }
}

impl Suite<Sandbox> {
    /// An empty suite whose cases run inside the sandbox.
    pub fn new(name: &str) -> Suite<Sandbox> {
        Suite { name: name.to_string(), cases: Vec::new() }
    }

    /// Runs the suite with the process's arguments: enters the sandbox, then runs the cases. Call
    /// first thing in `main`.
    pub fn run(self) -> ExitCode {
        let args = Args::parse(std::env::args().skip(1));
        self.run_with(args, || {
            let sandbox = Sandbox::enter().map_err(|err| {
                format!("cannot enter the namespace sandbox, so this test cannot run: {err}")
            })?;
            println!("sandbox: {}", sandbox.mode());
            Ok(sandbox)
        })
    }
}

impl Suite<()> {
    /// An empty suite whose cases run in the calling process as it is (no sandbox).
    pub fn on_host(name: &str) -> Suite<()> {
        Suite { name: name.to_string(), cases: Vec::new() }
    }

    /// Runs the suite with the process's arguments.
    pub fn run(self) -> ExitCode {
        self.run_with(Args::parse(std::env::args().skip(1)), || Ok(()))
    }
}

impl<C> Suite<C> {
    /// Adds a case.
    pub fn case(mut self, name: &str, body: impl FnOnce(&C) -> CaseResult + 'static) -> Suite<C> {
        self.cases.push((name.to_string(), Box::new(body)));
        self
    }

    /// Runs the selected cases after `enter` produced their context (called only if a case is
    /// selected; its error fails every selected case).
    pub fn run_with(self, args: Args, enter: impl FnOnce() -> Result<C, String>) -> ExitCode {
        let total = self.cases.len();
        let selected: Vec<(String, Body<C>)> = if args.ignored {
            Vec::new()
        } else {
            self.cases.into_iter().filter(|(name, _)| args.selects(name)).collect()
        };
        let filtered_out = total - selected.len();
        if args.list {
            for (name, _) in &selected {
                println!("{name}: test");
            }
            return ExitCode::SUCCESS;
        }
        let started = Instant::now();
        println!();
        println!("running {} tests ({})", selected.len(), self.name);
        let mut failures: Vec<(String, String)> = Vec::new();
        let mut passed = 0usize;
        if !selected.is_empty() {
            match enter() {
                Err(reason) => {
                    for (name, _) in selected {
                        println!("test {name} ... FAILED");
                        failures.push((name, reason.clone()));
                    }
                }
                Ok(context) => {
                    for (name, body) in selected {
                        let outcome = catch_unwind(AssertUnwindSafe(|| body(&context)));
                        let failure = match outcome {
                            Ok(Ok(())) => None,
                            Ok(Err(err)) => Some(error_chain(&*err)),
                            Err(payload) => Some(format!("panicked: {}", panic_text(&*payload))),
                        };
                        match failure {
                            None => {
                                println!("test {name} ... ok");
                                passed += 1;
                            }
                            Some(text) => {
                                println!("test {name} ... FAILED");
                                failures.push((name, text));
                            }
                        }
                    }
                }
            }
        }
        if !failures.is_empty() {
            println!("\nfailures:\n");
            for (name, text) in &failures {
                println!("---- {name} ----\n{text}\n");
            }
            println!("failures:");
            for (name, _) in &failures {
                println!("    {name}");
            }
        }
        println!(
            "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
            if failures.is_empty() { "ok" } else { "FAILED" },
            failures.len(),
            started.elapsed().as_secs_f64()
        );
        if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(101) }
    }
}

/// An error and its sources, one per line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    text
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// `world` with every captured pod's rule text stripped of the rules whose line contains
/// `needle` (pods present at the start and pods added by `add-pod` faults), for tests that show
/// what a broken rule set does. Backend-agnostic, so one broken World can be run on the kernel
/// and in the simulator and their expectation failures compared ([`failure_lines`]).
pub fn without_rules(world: &ambient_scenarios::World, needle: &str) -> ambient_scenarios::World {
    use ambient_scenarios::world::{Action, Fault, Pod};
    let strip = |pod: &mut Pod| {
        if let Some(capture) = pod.capture.as_mut() {
            capture.rules = capture
                .rules
                .lines()
                .filter(|l| !(l.starts_with("-A ") && l.contains(needle)))
                .map(|l| format!("{l}\n"))
                .collect();
        }
    };
    let mut broken = world.clone();
    broken.pods.values_mut().for_each(strip);
    for step in &mut broken.steps {
        if let Action::Fault(Fault::AddPod { pod, .. }) = &mut step.action {
            strip(pod);
        }
    }
    broken
}

/// Expectation failures as comparable lines (`key.path: expected X, got Y`), without file
/// positions, sorted: what two backends must agree on when both fail a scenario.
pub fn failure_lines(failures: &[ambient_scenarios::Failure]) -> Vec<String> {
    let mut out: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: expected {}, got {}", f.at.path, f.expected, f.actual))
        .collect();
    out.sort();
    out
}

/// Every network namespace some process of this machine refers to: a thread's `ns/net`, an
/// open namespace file (`net:[…]`, or a namespace file opened through its bind mount), an
/// `nsfs` mount in its mount table — everything by which user space keeps a network namespace
/// alive. A namespace not in this set is gone, with its links. (Open files of other namespace
/// types on nsfs are included too; callers intersect with the namespaces they care about.)
pub fn referenced_net_namespaces() -> std::collections::BTreeSet<u64> {
    fn net_inode(link: &str) -> Option<u64> {
        link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
    }
    use std::os::unix::fs::MetadataExt as _;
    let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
    let mut seen = std::collections::BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return seen };
    for entry in procs.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(tasks) = std::fs::read_dir(path.join("task")) {
            for task in tasks.flatten() {
                if let Ok(link) = std::fs::read_link(task.path().join("ns/net")) {
                    seen.extend(net_inode(&link.to_string_lossy()));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(path.join("fd")) {
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else { continue };
                match net_inode(&link.to_string_lossy()) {
                    Some(ino) => {
                        seen.insert(ino);
                    }
                    // A namespace opened through a bind mount reads as that path: look at the
                    // file itself.
                    None => seen.extend(
                        std::fs::metadata(fd.path())
                            .ok()
                            .filter(|m| Some(m.dev()) == nsfs)
                            .map(|m| m.ino()),
                    ),
                }
            }
        }
        if let Ok(mounts) = std::fs::read_to_string(path.join("mountinfo")) {
            seen.extend(mounts.lines().filter_map(|l| l.split(' ').nth(3)).filter_map(net_inode));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Args {
        Args::parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn filters_like_libtest() {
        let a = args(&["--test-threads", "1", "veth", "--nocapture"]);
        assert_eq!(a.filters, vec!["veth".to_string()]);
        assert!(a.selects("links::veth_pair") && !a.selects("sysctl"));
        let a = args(&["--exact", "sysctl"]);
        assert!(a.selects("sysctl") && !a.selects("sysctl_per_ns"));
        let a = args(&["--skip", "slow"]);
        assert!(a.selects("fast") && !a.selects("slow_one"));
        assert!(args(&["--list"]).list);
    }
}
