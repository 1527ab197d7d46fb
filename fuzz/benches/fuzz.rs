//! Fuzz speed: cases per wall second, against the same worlds run through the plain simulator
//! in the same process (the baseline).
//!
//! ```sh
//! cargo bench -p ambient-fuzz --bench fuzz
//! FUZZ_BENCH_N=1000 cargo bench -p ambient-fuzz --bench fuzz
//! ```
//!
//! The cases are those of `testbed fuzz --seed 1` (default limits, fault points in about half).
//! Measured, each on one thread, in this order:
//!
//! 1. **generate**: draw the case and render it to YAML (the strategies and the writer);
//! 2. **baseline**: load the YAML and run the world once with `ambient_sim::run` — what any
//!    `testbed run` of the case costs, with no oracle, tap, or second run;
//! 3. **fuzz**: what `testbed fuzz` does per case — render, load, predict, run with the
//!    underlay tap and resource inspection, run again for determinism, check every invariant.
//!
//! The ratio fuzz / baseline is the price of the invariants (about 2 for the second run alone).
//! Not a test: nothing is asserted; `reports/performance.md` records the numbers.

use std::time::{Duration, Instant};

use ambient_fuzz::runner::{case_seed, default_planner, generate, load, run_case};
use ambient_fuzz::{Case, Limits};
use ambient_scenarios::RunOptions;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn main() {
    let n: usize = std::env::var("FUZZ_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let limits = Limits::default();

    let t = Instant::now();
    let cases: Vec<Case> =
        (0..n as u64).map(|i| generate(limits, case_seed(1, i), &format!("bench-{i}"))).collect();
    let yaml: usize = cases.iter().map(|c| c.to_yaml().len()).sum();
    let generate_time = t.elapsed();

    let t = Instant::now();
    let mut connections = 0;
    for c in &cases {
        let world = load(c).expect("a generated case loads");
        let run = ambient_sim::run(&world, &RunOptions::default()).expect("the simulator runs it");
        connections += run.outcome.connections.len();
    }
    let baseline = t.elapsed();

    let planner = default_planner();
    let t = Instant::now();
    let mut failing = 0;
    for c in &cases {
        let r = run_case(c, &planner, true).expect("a generated case loads");
        failing += usize::from(!r.violations.is_empty());
    }
    let fuzz = t.elapsed();

    println!("fuzz bench: {n} cases of seed 1 ({connections} connections, {yaml} bytes of YAML)");
    println!(
        "  generate + render:        {:>8.1} cases/s  ({:.2?})",
        rate(n, generate_time),
        generate_time
    );
    println!("  baseline (ambient_sim):   {:>8.1} cases/s  ({:.2?})", rate(n, baseline), baseline);
    println!("  fuzz (run x2 + checks):   {:>8.1} cases/s  ({:.2?})", rate(n, fuzz), fuzz);
    println!(
        "  ratio fuzz/baseline time: {:.2}x  ({failing} of {n} cases broke an invariant)",
        fuzz.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
    );
}
