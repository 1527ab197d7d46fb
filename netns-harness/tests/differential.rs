//! The differential suite: seeded random rulesets and flows run against the real kernel in fresh
//! namespaces and through the simulator's kernel model (`ambient-kernel`; the executor is
//! `differential/model.rs`), compared field by field (`ambient_netns::diff::compare`).
//! A difference is either listed, with its reason, in `differential-expected.yaml`
//! (`differential/expected.rs`) or fails its case with the seed, the case and both values. The
//! kernel runs are also checked against the kernel side's own invariants
//! (`ambient_netns::diff::invariants`), and a subset runs twice and is compared with itself,
//! which proves the compared fields do not depend on timing.
//!
//! Environment:
//! - `DIFF_SEED` — first case seed (default 1); case `k` has seed `DIFF_SEED + k`. `random` picks one
//!   from the clock (printed). Rerun one case: `DIFF_SEED=<case seed> DIFF_CASES=1`.
//! - `DIFF_CASES` — number of cases (default 300).
//! - `DIFF_JOBS` — cases run at once (default 8).
//! - `DIFF_REPEAT_EVERY` — every n-th case is run a second time and compared (default 10; 0 = off).
//! - `DIFF_DUMP` — a directory: each failing case's `Case` and observations are written there as JSON
//!   (every case's with `DIFF_DUMP_ALL=1`), with both `iptables-save -c` listings for a model
//!   disagreement (`case-N.kernel.rules`, `case-N.model.rules`).
//!
//! `harness = false` (the sandbox needs a single-threaded process):
//! `cargo test -p ambient-netns --test differential`.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;
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

#[path = "differential/expected.rs"]
mod expected;
#[path = "differential/model.rs"]
mod model;
#[path = "differential/tcp.rs"]
mod tcp;

/// A case and its kernel run (or why it failed).
type CaseRun = (Case, Result<KernelRun, String>);
/// Every case's kernel run, made once and shared by the checks that need them.
type Runs = Rc<OnceCell<Vec<CaseRun>>>;

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
    let runs: Runs = Rc::default();
    let runs2 = runs.clone();
    Suite::new("differential, kernel vs model")
        .case("differential::same_seed_same_case", move |_| Ok(same_seed_same_case(&c1)?))
        .case("differential::model_executor_basics", |_| Ok(model_executor_basics()?))
        .case("differential::kernel_invariants", move |sb| Ok(kernel_invariants(sb, &c2, &runs)?))
        .case("differential::model_agrees_with_kernel", move |sb| {
            Ok(model_agrees(sb, &c4, &runs2)?)
        })
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
fn run_all(sandbox: &Sandbox, seeds: &[u64], jobs: usize, tag: &str) -> Vec<CaseRun> {
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

/// Writes `case-N.json` and, for each `(name, observation)`, `case-N.<name>.json`.
fn dump(config: &Config, case: &Case, observations: &[(&str, &Observation)]) {
    let Some(dir) = &config.dump else { return };
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(
        dir.join(format!("case-{}.json", case.seed)),
        serde_json::to_string_pretty(case).unwrap_or_default(),
    );
    for (name, o) in observations {
        let path = dir.join(format!("case-{}.{name}.json", case.seed));
        let _ = std::fs::write(path, serde_json::to_string_pretty(o).unwrap_or_default());
    }
}

/// The kernel runs of every case (made on first use).
fn kernel_runs<'r>(
    sandbox: &Sandbox,
    config: &Config,
    runs: &'r Runs,
) -> (&'r [CaseRun], Duration) {
    let started = Instant::now();
    let results = runs.get_or_init(|| run_all(sandbox, &config.seeds(), config.jobs, "k"));
    (results, started.elapsed())
}

fn kernel_invariants(sandbox: &Sandbox, config: &Config, runs: &Runs) -> anyhow::Result<()> {
    let (results, elapsed) = kernel_runs(sandbox, config, runs);
    let mut failures = Vec::new();
    let mut stats = Stats::default();
    for (case, run) in results {
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
                    dump(config, case, &[("kernel", &run.observation)]);
                }
                if !bad.is_empty() {
                    dump(config, case, &[("kernel", &run.observation)]);
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
                    dump(config, case, &[("kernel1", &a.observation), ("kernel2", &b.observation)]);
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

/// The expected-differences file next to this target.
fn expected_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential-expected.yaml")
}

/// Kernel against model, case by case: every difference is explained by the expected-differences
/// file or fails the case.
fn model_agrees(sandbox: &Sandbox, config: &Config, runs: &Runs) -> anyhow::Result<()> {
    let known = expected::load(&expected_path()).map_err(anyhow::Error::msg)?;
    let (results, _) = kernel_runs(sandbox, config, runs);
    let started = Instant::now();
    let (mut exact, mut explained_only, mut compared) = (0usize, 0usize, 0usize);
    let mut by_reason: BTreeMap<&str, (usize, BTreeMap<u64, ()>)> =
        known.iter().map(|k| (k.id.as_str(), (0, BTreeMap::new()))).collect();
    let mut failures = Vec::new();
    for (case, run) in results {
        // A kernel run that failed is reported by kernel_invariants.
        let Ok(run) = run else { continue };
        compared += 1;
        let model = match model::model_observe(case) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!(
                    "case seed {}: the model could not run it: {e}\n  rerun: {}\n  ruleset:\n{}",
                    case.seed,
                    config.rerun(case.seed),
                    indent(&case.ruleset)
                ));
                continue;
            }
        };
        let diffs = compare(&run.observation, &model.observation);
        let mut unexplained = Vec::new();
        for d in &diffs {
            match expected::explain(&known, case, &run.observation, &model.observation, d) {
                Some(k) => {
                    let entry = by_reason.entry(k.id.as_str()).or_default();
                    entry.0 += 1;
                    entry.1.insert(case.seed, ());
                }
                None => unexplained.push(d),
            }
        }
        match (diffs.is_empty(), unexplained.is_empty()) {
            (true, _) => exact += 1,
            (false, true) => explained_only += 1,
            (false, false) => {
                dump(config, case, &[("kernel", &run.observation), ("model", &model.observation)]);
                if let Some(dir) = &config.dump {
                    let _ = std::fs::write(
                        dir.join(format!("case-{}.kernel.rules", case.seed)),
                        &run.listing,
                    );
                    let _ = std::fs::write(
                        dir.join(format!("case-{}.model.rules", case.seed)),
                        &model.listing,
                    );
                }
                let text: Vec<String> = unexplained
                    .iter()
                    .map(|d| {
                        format!("{}:\n    kernel: {}\n    model:  {}", d.field, d.left, d.right)
                    })
                    .collect();
                failures.push(format!(
                    "case seed {}: the model disagrees with the kernel in {} field(s) no entry of {} explains:\n  {}\n  rerun: {}\n  the case (flows in order; JSON with DIFF_DUMP=<dir>):\n{}{}",
                    case.seed,
                    unexplained.len(),
                    expected_path().display(),
                    text.join("\n  "),
                    config.rerun(case.seed),
                    indent(&case.ruleset),
                    case.flows.iter().map(|f| format!("    flow {f:?}\n")).collect::<String>(),
                ));
            }
        }
    }
    println!(
        "model_agrees_with_kernel: {compared} cases compared in {:.1}s of model time: {exact} agree exactly, {explained_only} differ only as expected, {} disagree",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    for k in &known {
        let (count, seeds) = &by_reason[k.id.as_str()];
        let seeds: Vec<&u64> = seeds.keys().collect();
        println!(
            "  known difference {:?}: {count} field(s) in {} case(s) {seeds:?}",
            k.id,
            seeds.len()
        );
    }
    if failures.is_empty() {
        return Ok(());
    }
    let shown = failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n\n");
    anyhow::bail!(
        "{} of {compared} cases disagree (first seed {}; seeds: {:?}):\n\n{shown}",
        failures.len(),
        config.seed,
        failures.iter().filter_map(|f| f.split(':').next()).collect::<Vec<_>>()
    )
}

/// The model executor on hand-made cases whose outcome is known, and the matcher of the
/// expected-differences file: checks of the test's own machinery (the target has no libtest).
fn model_executor_basics() -> anyhow::Result<()> {
    use ambient_netns::diff::case::{
        CloseOrder, CloseResult, EchoResult, FlowSpec, Port, Side, Topology,
    };
    use ambient_netns::socket::ConnectErrorKind;
    use std::net::SocketAddrV4;

    expected::self_check().map_err(anyhow::Error::msg)?;
    expected::load(&expected_path()).map_err(anyhow::Error::msg)?;
    let flow = |id, from, dst: &str, close| FlowSpec {
        id,
        from,
        dst: dst.parse().expect("address"),
        mark: None,
        src_port: None,
        payload: 64,
        close,
    };
    let ruleset = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A OUTPUT -p tcp -d 10.0.1.1 -j REDIRECT --to-ports 15001\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 8081 -j REJECT --reject-with icmp-host-unreachable\n-A INPUT -p tcp --sport 20004:20005 --tcp-flags PSH PSH -j REJECT --reject-with tcp-reset\nCOMMIT\n";
    let case = Case {
        seed: 0,
        ruleset: ruleset.into(),
        topology: Topology::standard(),
        flows: vec![
            flow(0, Side::Pod, "10.0.1.1:80", CloseOrder::ClientFirst),
            flow(1, Side::Peer, "10.0.1.2:8080", CloseOrder::ServerFirst),
            flow(2, Side::Peer, "10.0.1.2:8081", CloseOrder::ClientFirst),
            flow(3, Side::Peer, "10.0.1.2:9999", CloseOrder::ClientReset),
            // Accepted, then the data is answered with a RST: the echo fails, and the close —
            // tokio's shutdown() on a reset socket succeeds — is clean in either order.
            FlowSpec {
                src_port: Some(20004),
                ..flow(4, Side::Peer, "10.0.1.2:8080", CloseOrder::ClientFirst)
            },
            FlowSpec {
                src_port: Some(20005),
                ..flow(5, Side::Peer, "10.0.1.2:8080", CloseOrder::ServerFirst)
            },
        ],
    };
    let run = model::model_observe(&case).map_err(|e| anyhow::anyhow!("{e}"))?;
    let o = &run.observation;
    let sent = case.flows[0].bytes().len() as u32;
    let f = &o.flows;
    let accepted = f[0].accepted.as_ref().ok_or_else(|| anyhow::anyhow!("flow 0: {:?}", f[0]))?;
    anyhow::ensure!(accepted.listener == "capture-out", "flow 0 accepted by {}", accepted.listener);
    let asked = "10.0.1.1:80".parse::<SocketAddrV4>()?;
    anyhow::ensure!(
        accepted.original_dst.as_ref().ok().map(|e| (e.ip, e.port))
            == Some((*asked.ip(), Port::Fixed(80))),
        "flow 0 SO_ORIGINAL_DST {:?}",
        accepted.original_dst
    );
    anyhow::ensure!(
        f[0].echo == Some(EchoResult::Intact { bytes: sent }),
        "flow 0 echo {:?}",
        f[0].echo
    );
    anyhow::ensure!(
        f[1].accepted.as_ref().is_some_and(|a| a.listener == "pod-app"),
        "flow 1 {:?}",
        f[1]
    );
    anyhow::ensure!(
        f[2].connect == ConnectResult::Failed(ConnectErrorKind::HostUnreachable),
        "flow 2 {:?}",
        f[2].connect
    );
    anyhow::ensure!(
        f[3].connect == ConnectResult::Failed(ConnectErrorKind::Refused),
        "flow 3 {:?}",
        f[3].connect
    );
    for f in &f[4..6] {
        let reset =
            matches!(&f.echo, Some(EchoResult::Short { error: Some(e), .. }) if e == "ECONNRESET");
        anyhow::ensure!(
            reset && f.close == Some(CloseResult::Clean),
            "flow {}: echo {:?}, close {:?} (ECONNRESET, then a clean close expected)",
            f.id,
            f.echo,
            f.close
        );
    }
    let pod = &o.conntrack_closed[&Side::Pod];
    // Flows 0 and 1 (flows 4 and 5 use fixed ports 20004-20005).
    let closed_flows =
        pod.iter().filter(|e| !matches!(e.orig.src.port, Port::Fixed(20004 | 20005)));
    let states: Vec<_> = closed_flows.map(|e| e.state.clone().unwrap_or_default()).collect();
    anyhow::ensure!(states == ["TIME_WAIT", "TIME_WAIT"], "pod conntrack after the close: {pod:?}");
    anyhow::ensure!(
        o.conntrack_closed[&Side::Peer].is_empty(),
        "the rule-less peer tracks nothing"
    );
    let redirect = o.rules.iter().find(|r| r.text.contains("REDIRECT")).expect("the rule");
    anyhow::ensure!(
        (redirect.counters.packets, redirect.counters.bytes) == (1, 60),
        "REDIRECT counted {:?} (one 60-byte SYN expected)",
        redirect.counters
    );
    // Deterministic: the same case gives the same observation.
    let again = model::model_observe(&case).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        serde_json::to_string(&again.observation)? == serde_json::to_string(o)?,
        "two model runs of one case differ"
    );

    // The peer's data comes before the pod's accept(): the pod ACKs it from a connection with no
    // `struct socket` yet, which `--socket-exists` does not match; a client in the pod itself is
    // accepted before its first write (seeds 10491, 10815).
    let ruleset = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp -m owner ! --socket-exists\nCOMMIT\n";
    let case = Case {
        seed: 0,
        ruleset: ruleset.into(),
        topology: Topology::standard(),
        flows: vec![
            flow(0, Side::Peer, "10.0.1.2:8080", CloseOrder::ClientFirst),
            flow(1, Side::Pod, "10.0.1.2:8081", CloseOrder::ClientFirst),
        ],
    };
    let run = model::model_observe(&case).map_err(|e| anyhow::anyhow!("{e}"))?;
    let socketless = run.listing.lines().find(|l| l.contains("socket-exists")).unwrap_or_default();
    anyhow::ensure!(
        socketless.starts_with("[1:52] "),
        "one socketless packet (the pod's ACK of flow 0's data) expected: {socketless}"
    );
    Ok(())
}
