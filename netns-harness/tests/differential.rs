//! The differential suite, kernel side: seeded random rulesets and flows run against the real
//! kernel in fresh namespaces, checked against the kernel side's own invariants
//! (`ambient_netns::diff::invariants`), and — on a subset — run twice and compared with the same
//! comparison a model will face, which proves the compared fields do not depend on timing.
//!
//! Environment:
//! - `DIFF_SEED` — first case seed (default 1); case `k` has seed `DIFF_SEED + k`. `random` picks one
//!   from the clock (printed). Rerun one case: `DIFF_SEED=<case seed> DIFF_CASES=1`.
//! - `DIFF_CASES` — number of cases (default 300).
//! - `DIFF_JOBS` — cases run at once (default 8).
//! - `DIFF_REPEAT_EVERY` — every n-th case is run a second time and compared (default 10; 0 = off).
//! - `DIFF_DUMP` — a directory: each failing case's `Case` and observations are written there as JSON
//!   (every case's with `DIFF_DUMP_ALL=1`).
//!
//! `harness = false` (the sandbox needs a single-threaded process):
//! `cargo test -p ambient-netns --test differential`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ambient_netns::diff::case::{Case, ConnectResult, Observation};
use ambient_netns::diff::compare::compare;
use ambient_netns::diff::flowgen::generate_case;
use ambient_netns::diff::invariants;
use ambient_netns::diff::kernel::{KernelRun, run_case};
use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::Suite;

#[path = "differential/model.rs"]
mod model;
#[path = "differential/tcp.rs"]
mod tcp;

#[derive(Debug, Clone)]
struct Config {
    seed: u64,
    cases: u64,
    jobs: usize,
    repeat_every: u64,
    dump: Option<std::path::PathBuf>,
}

fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| format!("{name}={v:?} is not a number")),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let seed = match std::env::var("DIFF_SEED").as_deref() {
            Ok("random") => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map(|d| d.as_nanos() as u64 % 1_000_000_000).unwrap_or(1)
            }
            _ => env_u64("DIFF_SEED", 1)?,
        };
        Ok(Config {
            seed,
            cases: env_u64("DIFF_CASES", 300)?,
            jobs: env_u64("DIFF_JOBS", 8)?.max(1) as usize,
            repeat_every: env_u64("DIFF_REPEAT_EVERY", 10)?,
            dump: std::env::var_os("DIFF_DUMP").map(Into::into),
        })
    }

    fn seeds(&self) -> Vec<u64> {
        (0..self.cases).map(|k| self.seed.wrapping_add(k)).collect()
    }

    fn rerun(&self, seed: u64) -> String {
        format!("DIFF_SEED={seed} DIFF_CASES=1 cargo test -p ambient-netns --test differential")
    }
}

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("differential: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "differential: seed {} cases {} jobs {} (case k has seed {} + k; rerun one with DIFF_SEED=<seed> DIFF_CASES=1)",
        config.seed, config.cases, config.jobs, config.seed
    );
    let (c1, c2, c3, c4) = (config.clone(), config.clone(), config.clone(), config);
    Suite::new("differential, kernel side")
        .case("differential::same_seed_same_case", move |_| Ok(same_seed_same_case(&c1)?))
        .case("differential::model_agrees_with_kernel", move |sb| Ok(model_agrees(sb, &c4)?))
        .case("differential::kernel_invariants", move |sb| Ok(kernel_invariants(sb, &c2)?))
        .case("differential::kernel_agrees_with_itself", move |sb| Ok(agrees_with_itself(sb, &c3)?))
        .run()
}

fn same_seed_same_case(config: &Config) -> anyhow::Result<()> {
    for seed in config.seeds() {
        let a = serde_json::to_string(&generate_case(seed))?;
        let b = serde_json::to_string(&generate_case(seed))?;
        anyhow::ensure!(
            a == b,
            "seed {seed} generated two different cases (rerun: {})",
            config.rerun(seed)
        );
    }
    Ok(())
}

/// Runs `seeds` on `jobs` threads; `tag` keeps namespace names apart between runs.
fn run_all(
    sandbox: &Sandbox,
    seeds: &[u64],
    jobs: usize,
    tag: &str,
) -> Vec<(Case, Result<KernelRun, String>)> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(seeds.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(i) else { break };
                    let case = generate_case(seed);
                    let run = run_case(sandbox, &case, &format!("{tag}{seed}"))
                        .map_err(|e| e.to_string());
                    results.lock().expect("results").push((case, run));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(case, _)| case.seed);
    results
}

fn dump(config: &Config, case: &Case, observations: &[&Observation]) {
    let Some(dir) = &config.dump else { return };
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(
        dir.join(format!("case-{}.json", case.seed)),
        serde_json::to_string_pretty(case).unwrap_or_default(),
    );
    for (i, o) in observations.iter().enumerate() {
        let path = dir.join(format!("case-{}.kernel{}.json", case.seed, i + 1));
        let _ = std::fs::write(path, serde_json::to_string_pretty(o).unwrap_or_default());
    }
}

fn kernel_invariants(sandbox: &Sandbox, config: &Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let results = run_all(sandbox, &config.seeds(), config.jobs, "k");
    let elapsed = started.elapsed();
    let mut failures = Vec::new();
    let mut stats = Stats::default();
    for (case, run) in &results {
        match run {
            Err(e) => failures.push(format!(
                "case seed {}: {e}\n  rerun: {}",
                case.seed,
                config.rerun(case.seed)
            )),
            Ok(run) => {
                stats.add(run);
                let bad = invariants::check(case, run);
                if std::env::var_os("DIFF_DUMP_ALL").is_some() {
                    dump(config, case, &[&run.observation]);
                }
                if !bad.is_empty() {
                    dump(config, case, &[&run.observation]);
                    failures.push(format!(
                        "case seed {}: {} violation(s):\n  - {}\n  rerun: {}\n  ruleset:\n{}",
                        case.seed,
                        bad.len(),
                        bad.join("\n  - "),
                        config.rerun(case.seed),
                        indent(&case.ruleset)
                    ));
                }
            }
        }
    }
    println!("{}", stats.summary(results.len(), elapsed));
    if failures.is_empty() {
        return Ok(());
    }
    let shown = failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n\n");
    anyhow::bail!(
        "{} of {} cases failed (first seed {}; seeds: {:?}):\n\n{shown}",
        failures.len(),
        results.len(),
        config.seed,
        failures.iter().filter_map(|f| f.split(':').next()).collect::<Vec<_>>()
    )
}

fn agrees_with_itself(sandbox: &Sandbox, config: &Config) -> anyhow::Result<()> {
    if config.repeat_every == 0 {
        println!("kernel_agrees_with_itself: DIFF_REPEAT_EVERY=0, comparing nothing");
        return Ok(());
    }
    let seeds: Vec<u64> =
        config.seeds().into_iter().step_by(config.repeat_every as usize).collect();
    let first = run_all(sandbox, &seeds, config.jobs, "a");
    let second = run_all(sandbox, &seeds, config.jobs, "b");
    let mut failures = Vec::new();
    for ((case, a), (_, b)) in first.iter().zip(&second) {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                let diffs = compare(&a.observation, &b.observation);
                if !diffs.is_empty() {
                    dump(config, case, &[&a.observation, &b.observation]);
                    let text: Vec<String> = diffs.iter().map(|d| d.to_string()).collect();
                    failures.push(format!(
                        "case seed {}: two kernel runs differ in {} field(s):\n  {}\n  rerun: {}",
                        case.seed,
                        diffs.len(),
                        text.join("\n  "),
                        config.rerun(case.seed)
                    ));
                }
            }
            (a, b) => failures.push(format!(
                "case seed {}: a run failed: {:?} / {:?}",
                case.seed,
                a.as_ref().err(),
                b.as_ref().err()
            )),
        }
    }
    println!(
        "kernel_agrees_with_itself: {} cases run twice, {} differ",
        seeds.len(),
        failures.len()
    );
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// What the cases exercised, so a weak generator shows.
#[derive(Debug, Default)]
struct Stats {
    flows: usize,
    outcomes: BTreeMap<String, usize>,
    accepted_by: BTreeMap<String, usize>,
    stalled: usize,
    rules: usize,
    first_packet_rules_hit: usize,
    conntrack_entries: usize,
    slowest: Duration,
    total: Duration,
}

impl Stats {
    fn add(&mut self, run: &KernelRun) {
        let o = &run.observation;
        for f in &o.flows {
            self.flows += 1;
            let outcome = match &f.connect {
                ConnectResult::Connected => "connected".to_string(),
                ConnectResult::Failed(kind) => format!("{kind:?}"),
            };
            *self.outcomes.entry(outcome).or_default() += 1;
            if let Some(a) = &f.accepted {
                *self.accepted_by.entry(a.listener.clone()).or_default() += 1;
            }
            self.stalled += usize::from(f.timing_sensitive);
        }
        self.rules += o.rules.len();
        self.first_packet_rules_hit +=
            o.rules.iter().filter(|r| r.first_packets_only && r.counters.packets > 0).count();
        self.conntrack_entries += o.conntrack_closed.values().map(Vec::len).sum::<usize>();
        self.slowest = self.slowest.max(run.elapsed);
        self.total += run.elapsed;
    }

    fn summary(&self, cases: usize, elapsed: Duration) -> String {
        format!(
            "kernel_invariants: {cases} cases in {:.1}s (mean {:.0} ms, slowest {:.0} ms per case); {} flows: {:?}; \
             stalled {}; accepted by {:?}; {} rules, {} first-packet rules hit; {} conntrack entries",
            elapsed.as_secs_f64(),
            self.total.as_secs_f64() * 1000.0 / cases.max(1) as f64,
            self.slowest.as_secs_f64() * 1000.0,
            self.flows,
            self.outcomes,
            self.stalled,
            self.accepted_by,
            self.rules,
            self.first_packet_rules_hit,
            self.conntrack_entries
        )
    }
}

fn model_agrees(sandbox: &Sandbox, config: &Config) -> anyhow::Result<()> {
    let results = run_all(sandbox, &config.seeds(), config.jobs, "m");
    let mut by_field: BTreeMap<String, usize> = BTreeMap::new();
    let mut agree = 0;
    let mut shown = 0;
    for (case, run) in &results {
        let Ok(run) = run else { continue };
        match model::model_observe(case) {
            Err(e) => {
                *by_field.entry(format!("model error: {e}")).or_default() += 1;
            }
            Ok(m) => {
                let diffs = compare(&run.observation, &m.observation);
                if diffs.is_empty() {
                    agree += 1;
                }
                for d in &diffs {
                    let key = d.field.split('[').next().unwrap_or("").to_string()
                        + d.field.split(']').nth(1).unwrap_or("");
                    *by_field.entry(key).or_default() += 1;
                }
                if !diffs.is_empty() && shown < 6 {
                    shown += 1;
                    if let Some(dir) = &config.dump {
                        let _ = std::fs::write(dir.join(format!("case-{}.kernel.rules", case.seed)), &run.listing);
                        let _ = std::fs::write(dir.join(format!("case-{}.model.rules", case.seed)), &m.listing);
                    }
                    dump(config, case, &[&run.observation, &m.observation]);
                    println!("case seed {}:", case.seed);
                    for d in &diffs {
                        println!("  {d}");
                    }
                }
            }
        }
    }
    println!("model: {agree} of {} agree; {by_field:#?}", results.len());
    Ok(())
}
