//! `testbed conform [PATH…]` — every scenario on the simulator and on the kernel, their Outcomes
//! compared field by field, and the conformance matrix.
//!
//! Thin: enters the namespace sandbox (first thing, while the process has one thread), loads the
//! expected-differences file, and hands the rest to `ambient_report::conform` (select, run
//! both backends `--jobs` scenarios at a time, check, compare, write `<out>/<id>/{sim,netns}/
//! outcome.json`, `<out>/<id>/diff.txt`, `junit.xml`, `conformance.md`). Prints the matrix on
//! stdout; progress goes to stderr, one line per finished scenario.
//!
//! Exit status: 0 every selected scenario passed its expectations on both backends and every
//! difference between the two Outcomes is covered by an expected-differences entry; 1 otherwise;
//! 2 bad usage (clap's errors, a path that does not exist, nothing selected, an output folder
//! that is not ours, an expected-differences file that does not load); 3 an infrastructure
//! error: a backend could not produce a scenario's Outcome (the namespace sandbox cannot be
//! entered — then every kernel run fails so — or a run failed in the environment). Every report
//! is still written; 3 wins over 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambient_report::conform::{self, ConformProgress, ConformRequest, ExpectedDifferences};
use ambient_report::driver::Clock;
use ambient_scenarios::{Backend, BackendError, Run, RunOptions, World};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files, or folders searched recursively for `*.yaml`.
    #[arg(default_value = "scenarios/catalog")]
    paths: Vec<PathBuf>,
    /// Run every scenario with this seed instead of its own.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    #[command(flatten)]
    select: super::SelectArgs,
    /// The proxy on the kernel side (`--proxy ztunnel`: real ztunnel against our proxy in the
    /// simulator).
    #[command(flatten)]
    proxies: super::ProxyArgs,
    /// The output folder; emptied first (it must be new, empty, or written by an earlier run).
    #[arg(long, value_name = "DIR", default_value = "reports/latest/conform")]
    out: PathBuf,
    /// Scenarios run at once (each kernel run has its own namespaces; slow ones mostly wait).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// The expected-differences file (default: scenarios/expected-differences.yaml; with
    /// ztunnel on the kernel side, scenarios/ztunnel-expected-differences.yaml).
    #[arg(long, value_name = "FILE")]
    expected: Option<PathBuf>,
    /// Also write conformance.md here (the committed report: `--report reports/conformance.md`).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// Wall time since the run started; only for the stdout matrix, progress and `junit.xml`.
struct WallClock(Instant);

impl Clock for WallClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// One line per finished scenario on stderr.
struct Lines {
    total: usize,
    started: Instant,
}

impl ConformProgress for Lines {
    fn start(&mut self, total: usize) {
        self.total = total;
    }

    fn finished(&mut self, done: usize, r: &conform::ScenarioConformance) {
        let verdict = if r.conforms() {
            "conforms".to_string()
        } else {
            let sides = |name: &str, s: &ambient_report::ScenarioResult| {
                s.first_reason().map(|x| format!("{name} FAIL — {x}"))
            };
            let why = sides("sim", &r.sim)
                .or_else(|| sides("netns", &r.netns))
                .or_else(|| {
                    r.unlisted().first().map(|j| {
                        let d = &j.difference;
                        format!("unlisted difference {}: sim {}, netns {}", d.field, d.sim, d.netns)
                    })
                })
                .unwrap_or_else(|| "not compared".into());
            format!("DOES NOT CONFORM — {why}")
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "[{done}/{}] {}: {verdict} (sim {:.1}s, netns {:.1}s; {:.0}s elapsed)",
            self.total,
            r.id,
            r.sim.wall.as_secs_f64(),
            r.netns.wall.as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }

    fn finish(&mut self) {}
}

/// A backend that could not be opened: every run fails with why.
struct Unavailable(BackendError);

impl Backend for Unavailable {
    fn name(&self) -> &'static str {
        "netns"
    }

    fn run(&self, _: &World, _: &RunOptions) -> Result<Run, BackendError> {
        Err(BackendError::new(format!("backend netns could not start: {}", self.0)))
    }
}

#[cfg(target_os = "linux")]
fn netns_backend(proxies: super::ProxyPlan) -> Box<dyn Backend + Sync> {
    match ambient_netns::sandbox::Sandbox::enter() {
        Ok(sandbox) => {
            let sandbox: &'static _ = Box::leak(Box::new(sandbox));
            Box::new(ambient_netns::NetnsBackend::new(sandbox).with_proxies(proxies))
        }
        Err(e) => Box::new(Unavailable(BackendError::new(e.to_string()))),
    }
}

#[cfg(not(target_os = "linux"))]
fn netns_backend(_: super::ProxyPlan) -> Box<dyn Backend + Sync> {
    Box::new(Unavailable(BackendError::new("the netns backend runs on Linux only")))
}

/// The matrix of a run whose kernel side is not our proxy says so: its title names the
/// proxies, and the command that regenerates it is this run's (the `netns` column is the
/// kernel with those proxies).
fn kernel_side_named(markdown: &str, proxy: &str, report: &std::path::Path) -> String {
    let regenerate = format!(
        "TESTBED_ZTUNNEL=/path/to/ztunnel cargo run --release -- conform --proxy {proxy} --report {}",
        report.display()
    );
    markdown
        .replacen(
            "# Conformance: the simulator against the kernel",
            &format!(
                "# Conformance: our proxy in the simulator against `--proxy {proxy}` on the kernel"
            ),
            1,
        )
        .replacen(conform::render::REGENERATE, &regenerate, 1)
}

/// The committed expected-differences file of each comparison.
pub const EXPECTED_OURS: &str = "scenarios/expected-differences.yaml";
pub const EXPECTED_ZTUNNEL: &str = "scenarios/ztunnel-expected-differences.yaml";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let plan = match args.proxies.plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("testbed conform: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let ours = args.proxies.is_ours();
    let expected_path = args
        .expected
        .clone()
        .unwrap_or_else(|| PathBuf::from(if ours { EXPECTED_OURS } else { EXPECTED_ZTUNNEL }));
    // First thing that starts a thread: the sandbox needs a process with one thread.
    let netns = netns_backend(plan);
    let expected = match ExpectedDifferences::read(&expected_path) {
        Ok(e) => e,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            eprintln!("testbed conform: {} does not load", expected_path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let request = ConformRequest {
        paths: args.paths,
        selection: args.select.selection(),
        options: RunOptions { seed: args.seed, pcap: false, trace: false },
        out: args.out,
        jobs: usize::from(args.jobs),
        expected,
        environment: super::kernel_environment(),
    };
    let clock = WallClock(Instant::now());
    let mut progress = Lines { total: 0, started: Instant::now() };
    let report = match conform::run(
        &request,
        &ambient_sim::SimBackend,
        netns.as_ref(),
        &clock,
        &mut progress,
    ) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("testbed conform: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{}", conform::render::table(&report, &request.out.display().to_string()));
    if let Some(path) = &args.report {
        let mut text = conform::render::markdown(&report);
        if !ours {
            text = kernel_side_named(&text, args.proxies.describe(), path);
        }
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("testbed conform: cannot write {}: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::from(report.exit_code()))
}
