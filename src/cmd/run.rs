//! `testbed run [PATH…]` — run scenarios on a backend and write their reports.
//!
//! Thin: parses arguments, opens the backend ([`open_backend`], the one place backends are
//! registered), and hands everything else to `ambient_report` (load, select, run,
//! check, write `<out>/<id>/outcome.json`, `junit.xml`, `summary.md`). Prints the summary table
//! on stdout; progress goes to stderr (a bar on a terminal, one line per scenario otherwise).
//!
//! Exit status: 0 every expectation of every selected scenario held; 1 any scenario failed (did
//! not load, unmet expectation, skipped step, a problem with the run); 2 bad usage (clap's
//! errors, a path that does not exist, nothing selected, an output folder that is not ours,
//! `--pcap` with `--backend netns`, which captures nothing); 3
//! an infrastructure error: the namespace sandbox cannot be entered (nothing runs), or the
//! backend could not be opened or failed to produce a scenario's Outcome (that scenario fails
//! as `backend` in the reports, the others still run and every report is written). 3 wins over
//! 1.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambient_report::driver::{Clock, LineProgress, Progress, Request};
use ambient_report::{self as report, ScenarioResult};
use ambient_scenarios::{Backend, BackendError, RunOptions};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files, or folders searched recursively for `*.yaml`.
    #[arg(default_value = "scenarios/catalog")]
    paths: Vec<PathBuf>,
    /// Where to run them.
    #[arg(long, value_enum, default_value_t = BackendKind::Sim)]
    backend: BackendKind,
    /// Run every scenario with this seed instead of its own.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    #[command(flatten)]
    select: super::SelectArgs,
    #[command(flatten)]
    proxies: super::ProxyArgs,
    /// The output folder; emptied first (it must be new, empty, or written by an earlier run).
    #[arg(long, value_name = "DIR", default_value = "reports/latest")]
    out: PathBuf,
    /// Ask the backend for the packets each network namespace saw, as pcap files (the simulator
    /// only: refused with `--backend netns`, which does not capture).
    #[arg(long)]
    pcap: bool,
    /// Ask the backend for a readable trace of each run.
    #[arg(long)]
    trace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    /// The deterministic simulator (crate ambient-sim).
    Sim,
    /// The Linux network-namespace harness (crate ambient-netns).
    Netns,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Sim => "sim",
            BackendKind::Netns => "netns",
        }
    }
}

/// The one place the real backends are registered: `--backend` → a [`Backend`].
///
/// Called at most once per run, only when a valid scenario is selected. The netns harness runs
/// inside the namespace sandbox, which [`run`] enters first thing when `--backend netns` is
/// chosen (it needs a process with one thread) and passes in here.
fn open_backend(
    kind: BackendKind,
    sandbox: Option<&'static NetnsSandbox>,
    proxies: &super::ProxyPlan,
) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Sim => Ok(Box::new(ambient_sim::SimBackend)),
        BackendKind::Netns => netns_backend(sandbox, proxies),
    }
}

#[cfg(target_os = "linux")]
type NetnsSandbox = ambient_netns::sandbox::Sandbox;
#[cfg(not(target_os = "linux"))]
type NetnsSandbox = ();

#[cfg(target_os = "linux")]
fn netns_backend(
    sandbox: Option<&'static NetnsSandbox>,
    proxies: &super::ProxyPlan,
) -> Result<Box<dyn Backend>, BackendError> {
    let sandbox =
        sandbox.ok_or_else(|| BackendError::new("the namespace sandbox was not entered"))?;
    Ok(Box::new(ambient_netns::NetnsBackend::new(sandbox).with_proxies(proxies.clone())))
}

#[cfg(not(target_os = "linux"))]
fn netns_backend(
    _: Option<&'static NetnsSandbox>,
    _: &super::ProxyPlan,
) -> Result<Box<dyn Backend>, BackendError> {
    Err(BackendError::new("the netns backend runs on Linux only"))
}

/// Enters the namespace sandbox for `--backend netns` (the process must still have one thread:
/// nothing before this may start one). It lives as long as the process. An error is an
/// infrastructure error (exit 3).
#[cfg(target_os = "linux")]
fn enter_sandbox(kind: BackendKind) -> Result<Option<&'static NetnsSandbox>, String> {
    if kind != BackendKind::Netns {
        return Ok(None);
    }
    let sandbox =
        ambient_netns::sandbox::Sandbox::enter().map_err(|e| format!("--backend netns: {e}"))?;
    Ok(Some(Box::leak(Box::new(sandbox))))
}

#[cfg(not(target_os = "linux"))]
fn enter_sandbox(_: BackendKind) -> Result<Option<&'static NetnsSandbox>, String> {
    Ok(None)
}

/// Wall time since the run started; only for the stdout table, progress and `junit.xml`.
struct WallClock(Instant);

impl Clock for WallClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A progress bar on stderr (a terminal); failures are printed above it as they happen.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: usize) {
        self.0.set_length(total as u64);
    }

    fn scenario_started(&mut self, _: usize, id: &str) {
        self.0.set_message(id.to_string());
    }

    fn scenario_done(&mut self, _: usize, r: &ScenarioResult) {
        if let Some(reason) = r.first_reason() {
            self.0.println(format!("FAIL {}: {reason}", r.id));
        }
        self.0.inc(1);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

fn progress() -> Box<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Box::new(LineProgress::new(std::io::stderr()));
    }
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    Box::new(Bar(ProgressBar::new(0).with_style(style)))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Options first (no thread yet): a bad --proxy is a usage error before anything runs.
    if args.backend != BackendKind::Netns && !args.proxies.is_ours() {
        eprintln!(
            "testbed run: --proxy {} needs --backend netns (the simulator runs our proxy)",
            args.proxies.describe()
        );
        return Ok(ExitCode::from(2));
    }
    if args.backend == BackendKind::Netns && args.pcap {
        eprintln!(
            "testbed run: --pcap is not supported with --backend netns (the kernel runs capture no \
             packets); for pcaps use --backend sim --pcap"
        );
        return Ok(ExitCode::from(2));
    }
    let plan = match args.proxies.plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("testbed run: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let sandbox = match enter_sandbox(args.backend) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            eprintln!("testbed run: infrastructure error: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    let request = Request {
        paths: args.paths,
        selection: args.select.selection(),
        options: RunOptions { seed: args.seed, pcap: args.pcap, trace: args.trace },
        out: args.out,
        backend: args.backend.name().to_string(),
        // The kernel's and tools' versions matter to a kernel run; a simulator run's reports
        // stay a function of the scenarios and seeds (byte-identical across machines).
        environment: match args.backend {
            BackendKind::Netns => super::kernel_environment(),
            BackendKind::Sim => Vec::new(),
        },
    };
    let kind = args.backend;
    let mut open = || open_backend(kind, sandbox, &plan);
    let clock = WallClock(Instant::now());
    let mut progress = progress();
    match report::run(&request, &mut open, &clock, progress.as_mut()) {
        Ok(report) => {
            print!("{}", report::table::render(&report, &request.out.display().to_string()));
            Ok(ExitCode::from(report.exit_code()))
        }
        Err(e) => {
            eprintln!("testbed run: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
