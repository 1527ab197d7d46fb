//! Running cases: one case ([`run_case`]: render, load, simulate twice, predict, check) and a
//! whole fuzz session ([`fuzz`]: cases as a function of (seed, index), spread over worker
//! threads, results taken in index order so the report is the same whatever the timing).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use ambient_proxy::faults::{FaultPlan, FaultPoint};
use ambient_scenarios::outcome::{ConnOutcome, Outcome, PathKind};
use ambient_scenarios::world::World;
use ambient_scenarios::{RunOptions, load_str};
use ambient_sim::{Inspect, run_inspected};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::case::{Case, FaultPoints};
use crate::invariants::{self, Evidence, Invariant, Violation};
use crate::oracle::{Prediction, predict};
use crate::strategy::{self, Limits};

/// Makes the proxies' fault plan for one run of a case (a fresh plan per run: it carries its
/// rng). The default builds it from the case's [`FaultPoints`]; a test may plant a bug here.
pub type Planner = Arc<dyn Fn(Option<FaultPoints>) -> Option<Arc<FaultPlan>> + Send + Sync>;

/// The default planner.
pub fn default_planner() -> Planner {
    Arc::new(|fp: Option<FaultPoints>| fp.map(|f| Arc::new(FaultPlan::new(f.seed, f.rates))))
}

/// The seed of case `index` of a session with `seed` (splitmix64 of both).
pub fn case_seed(seed: u64, index: u64) -> u64 {
    let mut z =
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index.wrapping_add(0x632b_e59b_d9b4_e019);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The case drawn from `case_seed` (a pure function of it and the limits).
pub fn generate(limits: Limits, case_seed: u64, id: &str) -> Case {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&self::case_seed(case_seed, i as u64).to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut case = match strategy::case(limits).new_tree(&mut runner) {
        Ok(tree) => tree.current(),
        Err(e) => panic!("the case strategy rejected its own input: {e}"),
    };
    case.id = id.to_string();
    case
}

/// A generated case the loader rejects: a bug in the generator.
#[derive(Debug, Clone)]
pub struct GeneratorBug {
    pub yaml: String,
    pub errors: Vec<String>,
}

impl std::fmt::Display for GeneratorBug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "the generator produced a scenario the loader rejects:")?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        write!(f, "--- scenario ---\n{}", self.yaml)
    }
}

impl std::error::Error for GeneratorBug {}

/// Loads a case's YAML.
pub fn load(case: &Case) -> Result<World, GeneratorBug> {
    load_text(&format!("{}.yaml", case.id), &case.to_yaml())
}

/// Loads scenario text (a case's, or a regression file's with its header).
pub fn load_text(file: &str, yaml: &str) -> Result<World, GeneratorBug> {
    load_str(file, yaml).into_result().map_err(|errors| GeneratorBug {
        yaml: yaml.to_string(),
        errors: errors.iter().map(|d| d.to_string()).collect(),
    })
}

/// One case's run and verdict.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub outcome: Option<Outcome>,
    pub predictions: Vec<Prediction>,
    pub violations: Vec<Violation>,
    /// Fault points that fired in the first run.
    pub fired: BTreeMap<FaultPoint, u64>,
}

impl CaseReport {
    pub fn broke(&self, inv: Invariant) -> bool {
        self.violations.iter().any(|v| v.invariant == inv)
    }
}

/// Runs a loaded world in the simulator (`twice`: a second time for determinism) and checks
/// every invariant.
pub fn run_world(
    world: &World,
    fault_points: Option<FaultPoints>,
    planner: &Planner,
    twice: bool,
) -> CaseReport {
    let opts = RunOptions::default();
    let plan = planner(fault_points);
    let first = Inspect { faults: plan.clone(), underlay: true };
    let predictions = predict(world, fault_points.is_some());
    let run = match run_inspected(world, &opts, &first) {
        Ok(r) => r,
        Err(e) => {
            return CaseReport {
                outcome: None,
                predictions,
                violations: vec![Violation {
                    invariant: Invariant::Backend,
                    connection: None,
                    message: e.message,
                }],
                fired: BTreeMap::new(),
            };
        }
    };
    let fired = plan.as_ref().map(|p| p.fired()).unwrap_or_default();
    let second = if twice {
        let again = Inspect { faults: planner(fault_points), underlay: false };
        match run_inspected(world, &opts, &again) {
            Ok(r) => Some(r.outcome),
            Err(e) => {
                let v = Violation {
                    invariant: Invariant::Backend,
                    connection: None,
                    message: e.message,
                };
                return CaseReport {
                    outcome: Some(run.outcome),
                    predictions,
                    violations: vec![v],
                    fired,
                };
            }
        }
    } else {
        None
    };
    let ev = Evidence {
        outcome: &run.outcome,
        second: second.as_ref(),
        underlay: Some(&run.underlay),
        proxies: Some(&run.proxies),
    };
    let violations = invariants::check(world, &predictions, ev);
    CaseReport { outcome: Some(run.outcome), predictions, violations, fired }
}

/// Renders, loads and runs one case.
pub fn run_case(case: &Case, planner: &Planner, twice: bool) -> Result<CaseReport, GeneratorBug> {
    let world = load(case)?;
    Ok(run_world(&world, case.fault_points, planner, twice))
}

/// A fuzz session's settings.
#[derive(Clone)]
pub struct Session {
    pub seed: u64,
    pub cases: u64,
    pub limits: Limits,
    pub jobs: usize,
    pub planner: Planner,
    /// Run every case instead of stopping at the first failure (triage: how many fail, how).
    pub keep_going: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("seed", &self.seed)
            .field("cases", &self.cases)
            .field("limits", &self.limits)
            .field("jobs", &self.jobs)
            .finish()
    }
}

/// Counts over the cases that ran (deterministic: no timing in here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub cases: u64,
    pub connections: u64,
    pub unmodelled: u64,
    /// Connections whose prediction was a single outcome and path.
    pub exact: u64,
    pub outcomes: BTreeMap<ConnOutcome, u64>,
    pub paths: BTreeMap<String, u64>,
    pub fired: BTreeMap<FaultPoint, u64>,
    /// Steps by kind (`connect`, `partition`, …).
    pub steps: BTreeMap<&'static str, u64>,
    pub pods: u64,
    pub policies: u64,
}

impl Tally {
    fn add(&mut self, case: &Case, r: &CaseReport) {
        self.cases += 1;
        self.pods += case.size().0 as u64;
        self.policies += case.policies.len() as u64;
        for s in &case.steps {
            *self.steps.entry(step_kind(s)).or_default() += 1;
        }
        for p in &r.predictions {
            self.connections += 1;
            if p.unmodelled.is_some() {
                self.unmodelled += 1;
            } else if p.alternatives.iter().all(|a| a.expect.is_exact()) {
                self.exact += 1;
            }
        }
        if let Some(o) = &r.outcome {
            for c in &o.connections {
                *self.outcomes.entry(c.outcome).or_default() += 1;
                let p = c.path.map_or("null".to_string(), |p: PathKind| p.to_string());
                *self.paths.entry(p).or_default() += 1;
            }
        }
        for (p, n) in &r.fired {
            *self.fired.entry(*p).or_default() += n;
        }
    }
}

pub fn step_kind(s: &crate::case::Step) -> &'static str {
    use crate::case::Step::*;
    match s {
        Connect(c) if c.background => "connect (background)",
        Connect(_) => "connect",
        Partition(..) => "partition",
        Heal(_) => "heal",
        Latency(..) => "latency",
        Loss(..) => "loss",
        Crash(_) => "crash",
        Restart(_) => "restart",
        Start(_) => "start",
        FlushConntrack(_) => "flush-conntrack",
        DeletePod { .. } => "delete-pod",
        AddPod(_) => "add-pod",
        Apply(_) => "apply",
        Remove { .. } => "remove",
        WaitMs(_) => "wait",
    }
}

/// A failing case of a session.
#[derive(Debug, Clone)]
pub struct Failure {
    pub index: u64,
    pub case_seed: u64,
    pub case: Case,
    pub report: CaseReport,
}

/// How a session ended.
#[derive(Debug)]
pub struct SessionReport {
    pub tally: Tally,
    /// The failing cases in index order: the first one only, unless `keep_going`.
    pub failures: Vec<Failure>,
    pub generator_bug: Option<(u64, GeneratorBug)>,
    pub elapsed: std::time::Duration,
}

/// Progress, as cases finish (in index order).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub failed: bool,
}

/// The id of case `index` of a session.
pub fn case_id(seed: u64, index: u64) -> String {
    format!("fuzz-s{seed}-c{index}")
}

/// Runs cases `0..cases` of `seed` on `jobs` threads until the first failure (the lowest
/// failing index wins, so the result does not depend on the timing), or — with `keep_going` —
/// every case, keeping every failure (then `failures.len()` of `tally.cases` is the rate).
pub fn fuzz(s: &Session, mut progress: impl FnMut(Progress)) -> SessionReport {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    type Slot = Option<(Case, Result<CaseReport, GeneratorBug>)>;
    let slots: Vec<std::sync::Mutex<Slot>> =
        (0..s.cases).map(|_| std::sync::Mutex::new(None)).collect();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut generator_bug = None;
    std::thread::scope(|scope| {
        for _ in 0..s.jobs.max(1) {
            let tx = tx.clone();
            let (next, stop, slots) = (&next, &stop, &slots);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i as u64 >= s.cases || stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let seed = case_seed(s.seed, i as u64);
                    let case = generate(s.limits, seed, &case_id(s.seed, i as u64));
                    let r = run_case(&case, &s.planner, true);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some((case, r));
                    if tx.send(i).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Take results in index order.
        let mut done = 0usize;
        let mut ready = std::collections::BTreeSet::new();
        for i in rx.iter() {
            ready.insert(i);
            while ready.remove(&done) {
                let (case, r) = match slots[done].lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(x) => x,
                    None => break,
                };
                let failed = match r {
                    Err(bug) => {
                        generator_bug = Some((done as u64, bug));
                        true
                    }
                    Ok(report) => {
                        tally.add(&case, &report);
                        if report.violations.is_empty() {
                            false
                        } else {
                            failures.push(Failure {
                                index: done as u64,
                                case_seed: case_seed(s.seed, done as u64),
                                case,
                                report,
                            });
                            !s.keep_going
                        }
                    }
                };
                done += 1;
                progress(Progress { done: done as u64, total: s.cases, failed });
                if failed {
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
    });
    SessionReport { tally, failures, generator_bug, elapsed: start.elapsed() }
}
