//! `testbed fuzz` — property-based fault injection: generate random worlds, run them in the
//! simulator, check the reference oracle and the invariants (`ambient_fuzz::invariants`), and
//! on a failure shrink it to a scenario file in `--out` with the command to rerun it.
//! `--replay FILE…` checks existing scenario files against the same invariants instead.
//!
//! `--keep-going` runs every case and reports failures of cases (one run measures the rate).
//!
//! Exit status: 0 every case held; 1 an invariant broke (each failing case is shrunk and
//! written, with the command to rerun it); 2 bad usage, or the generator produced a scenario
//! the loader rejects (a bug of the generator).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use ambient_fuzz::case::FaultPoints;
use ambient_fuzz::invariants::{Invariant, Violation};
use ambient_fuzz::regression::{self, Provenance};
use ambient_fuzz::runner::{self, Planner, Session, default_planner};
use ambient_fuzz::shrink::Shrinker;
use ambient_fuzz::{Case, Limits};
use ambient_proxy::faults::FaultRates;
use ambient_scenarios::world::World;
use ambient_scenarios::{Backend, RunOptions, load_file};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many cases to generate and run.
    #[arg(long, default_value_t = 100)]
    cases: u64,
    /// The session's seed: case I of seed S is always the same case.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many nodes per case (1-4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    max_nodes: u8,
    /// At most this many pods per case (1-10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=10))]
    max_pods: u8,
    /// At most this many drawn steps per case (a tail of heal/start/wait is added).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=40))]
    max_steps: u8,
    /// Never give the proxies fault points.
    #[arg(long)]
    no_fault_points: bool,
    /// Where a found case is written (as `<id>.yaml`).
    #[arg(long, value_name = "DIR", default_value = "scenarios/regressions")]
    out: PathBuf,
    /// `netns` also replays a found case (or `--replay` files) on the kernel.
    #[arg(long, value_enum, default_value_t = BackendKind::Sim)]
    backend: BackendKind,
    /// Run every case instead of stopping at the first failure: report failures of cases (the
    /// rate), and shrink and write every failing case.
    #[arg(long)]
    keep_going: bool,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Candidate runs the shrinker may make.
    #[arg(long, default_value_t = 4000)]
    shrink_budget: usize,
    /// Print case I of the seed as YAML and exit (what `--cases I+1` would run last).
    #[arg(long, value_name = "I")]
    show_case: Option<u64>,
    /// Check these scenario files (or folders of them) against every invariant instead.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    replay: Vec<PathBuf>,
    /// With `--replay`: print each connection as the run reported it (outcome, path, bytes,
    /// the proxies' events) beside what the oracle allows (triage).
    #[arg(long, requires = "replay")]
    show_outcome: bool,
    /// With `--replay`: the proxy fault points' seed (a regression file's header gives it).
    #[arg(long, requires = "fault_rates")]
    fault_seed: Option<u64>,
    /// With `--replay`: fault point rates in per mille: dial-fails,slow-tls,goaway,stream-reset.
    #[arg(long, value_name = "D,T,G,R", requires = "fault_seed")]
    fault_rates: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendKind {
    Sim,
    Netns,
}

#[cfg(target_os = "linux")]
type Kernel = ambient_netns::NetnsBackend<'static>;
#[cfg(not(target_os = "linux"))]
type Kernel = ();

/// The kernel backend, entered before any thread starts (the sandbox needs a single thread).
#[cfg(target_os = "linux")]
fn kernel(kind: BackendKind) -> anyhow::Result<Option<Kernel>> {
    if kind != BackendKind::Netns {
        return Ok(None);
    }
    let sandbox = ambient_netns::sandbox::Sandbox::enter()
        .map_err(|e| anyhow::anyhow!("--backend netns: {e}"))?;
    let sandbox: &'static _ = Box::leak(Box::new(sandbox));
    Ok(Some(ambient_netns::NetnsBackend::new(sandbox)))
}

#[cfg(not(target_os = "linux"))]
fn kernel(kind: BackendKind) -> anyhow::Result<Option<Kernel>> {
    if kind == BackendKind::Netns {
        anyhow::bail!("--backend netns: the netns backend runs on Linux only");
    }
    Ok(None)
}

/// Runs `world` on the kernel and checks what the kernel can show (`ambient_fuzz::kernel`:
/// the quiet tail cut, no tap, no proxy resources, one run); returns the violations.
#[cfg(target_os = "linux")]
fn on_kernel(k: &Kernel, world: &World) -> Vec<Violation> {
    let world = ambient_fuzz::kernel::for_kernel(world);
    match k.run(&world, &RunOptions::default()) {
        Ok(run) => ambient_fuzz::kernel::check(&world, &run.outcome),
        Err(e) => {
            vec![Violation { invariant: Invariant::Backend, connection: None, message: e.message }]
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn on_kernel(_: &Kernel, _: &World) -> Vec<Violation> {
    Vec::new()
}

fn parse_rates(text: &str) -> anyhow::Result<FaultRates> {
    let v: Vec<u16> =
        text.split(',').map(|p| p.trim().parse::<u16>()).collect::<Result<_, _>>().map_err(
            |_| anyhow::anyhow!("--fault-rates: expected four numbers 0-1000, found {text:?}"),
        )?;
    let &[dial_fails, slow_tls, goaway, stream_reset] = v.as_slice() else {
        anyhow::bail!(
            "--fault-rates: expected four numbers (dial-fails,slow-tls,goaway,stream-reset), found {}",
            v.len()
        );
    };
    if v.iter().any(|r| *r > 1000) {
        anyhow::bail!("--fault-rates: rates are per mille, 0-1000");
    }
    Ok(FaultRates { dial_fails, slow_tls, goaway, stream_reset })
}

/// `*.yaml` files under the given paths, sorted.
fn scenario_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if p.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(p)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.path());
            for e in entries {
                walk(&e.path(), out)?;
            }
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    for p in paths {
        if !p.exists() {
            anyhow::bail!("{}: no such file or folder", p.display());
        }
        walk(p, &mut out).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(out)
}

fn replay(args: &Args, kernel: Option<&Kernel>) -> anyhow::Result<ExitCode> {
    let files = scenario_files(&args.replay)?;
    let given = match (args.fault_seed, &args.fault_rates) {
        (Some(seed), Some(r)) => Some(FaultPoints { seed, rates: parse_rates(r)? }),
        _ => None,
    };
    let planner = default_planner();
    let mut failed = 0;
    for f in &files {
        // Fault points: given on the command line, else those the file's header names.
        let text = ambient_proxy::config::read_text(f, ambient_scenarios::load::MAX_SCENARIO_BYTES)
            .unwrap_or_default();
        let fault_points = given.or_else(|| regression::fault_points_in(&text));
        let loaded = load_file(f);
        let world = match loaded.into_result() {
            Ok(w) => w,
            Err(errors) => {
                failed += 1;
                println!("FAIL {}: does not load", f.display());
                for e in errors {
                    println!("  {e}");
                }
                continue;
            }
        };
        let report = runner::run_world(&world, fault_points, &planner, true);
        if args.show_outcome {
            show_outcome(&report);
        }
        let mut violations = report.violations;
        if let Some(k) = kernel {
            violations.extend(on_kernel(k, &world).into_iter().map(|mut v| {
                v.message = format!("on the kernel: {}", v.message);
                v
            }));
        }
        let unchecked = report.predictions.iter().filter(|p| p.unmodelled.is_some()).count();
        let note = if unchecked > 0 {
            format!(" ({unchecked} of {} connections not modelled)", report.predictions.len())
        } else {
            String::new()
        };
        if violations.is_empty() {
            println!("pass {}{note}", f.display());
        } else {
            failed += 1;
            println!("FAIL {}{note}", f.display());
            for v in &violations {
                println!("  {v}");
            }
        }
    }
    println!("{} files: {} passed, {failed} failed", files.len(), files.len() - failed);
    Ok(ExitCode::from(u8::from(failed > 0)))
}

/// Each connection of a replayed run beside the oracle's alternatives.
fn show_outcome(report: &runner::CaseReport) {
    let Some(outcome) = &report.outcome else { return };
    for (c, p) in outcome.connections.iter().zip(&report.predictions) {
        let path = c.path.map_or("null".to_string(), |p| p.to_string());
        println!(
            "  {} {} -> {}: {} {path}, sent {} read {}, server_peer {:?}, identity {:?}{}",
            c.id,
            c.from,
            c.to,
            c.outcome,
            c.sent,
            c.received,
            c.server_peer,
            c.server_identity,
            c.error.as_deref().map(|e| format!(", error {e:?}")).unwrap_or_default()
        );
        for e in &c.proxy_events {
            println!("      {} {:?}: {}", e.proxy, e.kind, e.detail);
        }
        if let Some(why) = &p.unmodelled {
            println!("    oracle: not modelled ({why})");
        }
        for a in &p.alternatives {
            let at = a.endpoint.map_or("no route event".to_string(), |e| e.to_string());
            let x = &a.expect;
            let paths: Vec<String> =
                x.paths.iter().map(|p| p.map_or("null".into(), |p| p.to_string())).collect();
            println!(
                "    oracle, {at}: outcomes {:?}, paths {{{}}}, accepted {:?}, identity {:?}, replies {:?}",
                x.outcomes,
                paths.join(", "),
                x.accepted,
                x.identity,
                x.ok_replies()
            );
            for n in &x.notes {
                println!("      ({n})");
            }
        }
    }
}

fn print_tally(t: &runner::Tally) {
    let list = |items: Vec<(String, u64)>| {
        items.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    };
    println!("cases: {} ({} pods, {} policies in all)", t.cases, t.pods, t.policies);
    println!(
        "connections: {} ({} predicted exactly, {} with alternatives, {} not modelled)",
        t.connections,
        t.exact,
        t.connections - t.exact - t.unmodelled,
        t.unmodelled
    );
    println!("  outcomes: {}", list(t.outcomes.iter().map(|(k, v)| (k.to_string(), *v)).collect()));
    println!("  paths: {}", list(t.paths.iter().map(|(k, v)| (k.clone(), *v)).collect()));
    println!("steps: {}", list(t.steps.iter().map(|(k, v)| (k.to_string(), *v)).collect()));
    let fired: Vec<(String, u64)> = t.fired.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    println!("fault points fired: {}", if fired.is_empty() { "none".into() } else { list(fired) });
}

fn shrink_failure(
    f: &runner::Failure,
    planner: &Planner,
    budget: usize,
) -> (Case, Violation, usize) {
    let target = f.report.violations[0].invariant;
    let twice = target == Invariant::Determinism;
    let fails = |c: &Case| runner::run_case(c, planner, twice).is_ok_and(|r| r.broke(target));
    let mut shrinker = Shrinker::new(fails, budget);
    let small = shrinker.shrink(f.case.clone());
    let violation = runner::run_case(&small, planner, twice)
        .ok()
        .and_then(|r| r.violations.into_iter().find(|v| v.invariant == target))
        .unwrap_or_else(|| f.report.violations[0].clone());
    (small, violation, shrinker.tried)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kernel = kernel(args.backend)?;
    if !args.replay.is_empty() {
        return replay(&args, kernel.as_ref());
    }
    let limits = Limits {
        max_nodes: args.max_nodes.into(),
        max_pods: args.max_pods.into(),
        max_steps: args.max_steps.into(),
        fault_points: !args.no_fault_points,
    };
    if let Some(i) = args.show_case {
        let case = runner::generate(
            limits,
            runner::case_seed(args.seed, i),
            &runner::case_id(args.seed, i),
        );
        print!("{}", case.to_yaml());
        if let Some(fp) = case.fault_points {
            let r = fp.rates;
            println!(
                "# proxy fault points: --fault-seed {} --fault-rates {},{},{},{}",
                fp.seed, r.dial_fails, r.slow_tls, r.goaway, r.stream_reset
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let planner = default_planner();
    let session = Session {
        seed: args.seed,
        cases: args.cases,
        limits,
        jobs,
        planner: planner.clone(),
        keep_going: args.keep_going,
    };
    eprintln!(
        "testbed fuzz: {} cases, seed {}, up to {} nodes, {} pods, {} steps, fault points {}, {jobs} jobs",
        args.cases,
        args.seed,
        limits.max_nodes,
        limits.max_pods,
        limits.max_steps,
        if limits.fault_points { "on" } else { "off" }
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let style = ProgressBar::new(args.cases).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} cases {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Arc::new(style)
    });
    let step = (args.cases / 10).max(1);
    let report = runner::fuzz(&session, |p| match &bar {
        Some(b) => b.set_position(p.done),
        None if p.done % step == 0 || p.done == p.total || p.failed => {
            eprintln!("[{}/{}] cases{}", p.done, p.total, if p.failed { ": FAIL" } else { "" });
        }
        None => {}
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = report.elapsed.as_secs_f64();
    print_tally(&report.tally);
    println!("time: {secs:.1}s, {:.1} cases/s", report.tally.cases as f64 / secs.max(1e-9));
    if let Some((index, bug)) = &report.generator_bug {
        eprintln!("testbed fuzz: case {index} (seed {}): {bug}", args.seed);
        return Ok(ExitCode::from(2));
    }
    let failed = report.failures.len() as u64;
    let ran = report.tally.cases;
    // The rate is only a rate when every case ran (`--keep-going`); else it is the first one.
    if args.keep_going {
        println!(
            "failures: {failed} of {ran} cases ({:.1}%)",
            100.0 * failed as f64 / ran.max(1) as f64
        );
        for f in &report.failures {
            println!("  case {}: {}", f.index, f.report.violations[0]);
        }
    }
    if report.failures.is_empty() {
        println!("fuzz: {ran} cases passed every invariant");
        return Ok(ExitCode::SUCCESS);
    }
    let found = shrink_all(&report.failures, &planner, args.shrink_budget, jobs);
    for (failure, found) in report.failures.iter().zip(found) {
        println!(
            "FAIL case {} (case seed {:#018x}): {} violation(s), first: {}",
            failure.index,
            failure.case_seed,
            failure.report.violations.len(),
            failure.report.violations[0]
        );
        for v in failure.report.violations.iter().skip(1).take(5) {
            println!("  also: {v}");
        }
        write_found(&args, failure, found, kernel.as_ref())?;
    }
    Ok(ExitCode::from(1))
}

/// What shrinking one failure left.
struct Shrunk {
    case: Case,
    violation: Violation,
    tried: usize,
}

/// Shrinks every failure, `jobs` at a time (results in the failures' order).
fn shrink_all(
    failures: &[runner::Failure],
    planner: &Planner,
    budget: usize,
    jobs: usize,
) -> Vec<Shrunk> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Shrunk>>> =
        failures.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, failures.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(f) = failures.get(i) else { break };
                    let (case, violation, tried) = shrink_failure(f, planner, budget);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Shrunk { case, violation, tried });
                }
            });
        }
    });
    slots
        .into_iter()
        .zip(failures)
        .map(|(slot, f)| {
            slot.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| Shrunk {
                case: f.case.clone(),
                violation: f.report.violations[0].clone(),
                tried: 0,
            })
        })
        .collect()
}

/// Writes a shrunk failure to `--out` with its rerun command (and replays it on the kernel
/// with `--backend netns`).
fn write_found(
    args: &Args,
    failure: &runner::Failure,
    found: Shrunk,
    kernel: Option<&Kernel>,
) -> anyhow::Result<()> {
    let Shrunk { case: small, violation, tried } = found;
    let id = format!("{}-{}", runner::case_id(args.seed, failure.index), violation.invariant);
    let preds = runner::load(&small)
        .map(|w| ambient_fuzz::oracle::predict(&w, small.fault_points.is_some()))
        .unwrap_or_default();
    let annotated = regression::annotate(&small, &preds, &violation, &id);
    let path = regression::path_for(&args.out, &id);
    let provenance = Provenance {
        seed: args.seed,
        index: failure.index,
        case_seed: failure.case_seed,
        original: failure.case.size(),
    };
    let text = regression::render(&annotated, &path, &violation, &provenance);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(&path, &text)?;
    let (pods, steps, policies) = small.size();
    println!(
        "  shrunk in {tried} runs to {pods} pods, {steps} steps, {policies} policies: {}",
        path.display()
    );
    println!("  broken: {violation}");
    match small.fault_points {
        Some(fp) => {
            let r = fp.rates;
            println!(
                "  rerun: testbed fuzz --replay {} --fault-seed {} --fault-rates {},{},{},{}",
                path.display(),
                fp.seed,
                r.dial_fails,
                r.slow_tls,
                r.goaway,
                r.stream_reset
            );
        }
        None => {
            println!("  rerun: testbed fuzz --replay {}", path.display());
            println!("         testbed run {}", path.display());
        }
    }
    println!(
        "  found by: testbed fuzz --seed {} --cases {} (case {})",
        args.seed,
        failure.index + 1,
        failure.index
    );
    if let Some(k) = kernel {
        match runner::load(&annotated) {
            Ok(world) => {
                let v = on_kernel(k, &world);
                if v.is_empty() {
                    println!(
                        "  on the kernel (netns): every invariant held (the failure is the simulator's or needs its faults)"
                    );
                } else {
                    println!("  on the kernel (netns): {} violation(s)", v.len());
                    for v in v {
                        println!("    {v}");
                    }
                }
            }
            Err(e) => println!("  on the kernel: the shrunk case does not load: {e}"),
        }
    }
    Ok(())
}
