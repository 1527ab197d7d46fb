//! What the netns backend costs: building a topology, per pod, and running the catalog.
//!
//! Run: `cargo bench -p ambient-netns --bench topology` (`-- --no-catalog` to skip the catalog,
//! which takes about two minutes of real waits; `-- --rounds N` for more rounds).
//!
//! - **pods, all at once**: `Topology::add_pods` of N captured pods (namespace, veth onto the
//!   node's bridge, address, default route, fwmark rule + local route, the reference rules
//!   through `iptables-restore`) on two nodes, after the nodes and wan are built; per pod =
//!   total / N. Pods are built concurrently, each on its own namespace's thread.
//! - **pods, one by one**: the same, one `add_pods` call per pod (what an `add-pod` fault costs).
//! - **baseline**, measured in the same run: one bare `iptables-restore --noflush` of the same
//!   rules in a fresh namespace — the floor one captured pod cannot go below — and a bare
//!   `Netns::create` (thread + unshare + bind mount + runtime).
//! - **nodes**: `Topology::build` for two nodes (wan, bridges, the inter-node link, uplinks).
//! - **catalog**: each catalog scenario through `NetnsBackend::run`, beside the real time its
//!   own steps demand (`wait`, `hold`, the deadline of a connection expected to time out).
//!
//! Every figure is the median of the rounds (5 by default).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambient_netns::NetnsBackend;
use ambient_netns::backend::plan::Plan;
use ambient_netns::backend::topology::Topology;
use ambient_netns::netns::Netns;
use ambient_netns::sandbox::Sandbox;
use ambient_scenarios::rules::InpodRules;
use ambient_scenarios::world::{Action, Pod};
use ambient_scenarios::{Backend, RunOptions, World, check_outcome, load_file, load_str};

fn world(pods: usize) -> World {
    let mut text = String::from("description: bench\ncluster:\n  nodes: [node-a, node-b]\n  pods:");
    text.push_str(if pods == 0 { " []\n" } else { "\n" });
    for i in 0..pods {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        text.push_str(&format!("    - {{name: p{i}, node: {node}, ambient: true}}\n"));
    }
    text.push_str("steps:\n  - wait: 0s\n");
    load_str("bench.yaml", &text).into_result().expect("bench world")
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(5usize);
    let sandbox = Sandbox::enter().unwrap_or_else(|e| panic!("cannot enter the sandbox: {e}"));
    println!("sandbox: {}; {rounds} rounds, medians", sandbox.mode());

    // Baselines.
    let rules = InpodRules::default().restore_text();
    let mut create = Vec::new();
    let mut restore = Vec::new();
    for i in 0..rounds * 4 {
        let t = Instant::now();
        let ns = Netns::create(&sandbox, &format!("bench-base-{i}")).expect("netns");
        create.push(t.elapsed());
        let t = Instant::now();
        ns.iptables_restore(&rules, true).expect("restore");
        restore.push(t.elapsed());
    }
    let (create, restore) = (median(create), median(restore));
    println!(
        "baseline: Netns::create {}, iptables-restore --noflush (reference rules) {}",
        ms(create),
        ms(restore)
    );

    let mut nodes = Vec::new();
    for _ in 0..rounds {
        let w = world(0);
        let t = Instant::now();
        let topo = Topology::build(&sandbox, Plan::of(&w).expect("plan")).expect("nodes");
        nodes.push(t.elapsed());
        drop(topo);
    }
    println!("nodes: Topology::build, 2 nodes + wan: {}", ms(median(nodes)));

    println!();
    println!(
        "| captured pods | all at once: total | per pod | per pod ÷ one iptables-restore | one by one: per pod |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in [1usize, 4, 16, 32] {
        let w = world(n);
        let pods: Vec<&Pod> = w.pods.values().collect();
        let (mut together, mut single) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut topo = Topology::build(&sandbox, Plan::of(&w).expect("plan")).expect("nodes");
            let t = Instant::now();
            topo.add_pods(&sandbox, &pods).expect("pods");
            together.push(t.elapsed());
            drop(topo);
            let mut topo = Topology::build(&sandbox, Plan::of(&w).expect("plan")).expect("nodes");
            let t = Instant::now();
            for p in &pods {
                topo.add_pods(&sandbox, &[p]).expect("pod");
            }
            single.push(t.elapsed() / n as u32);
            drop(topo);
        }
        let total = median(together);
        let per = total / n as u32;
        println!(
            "| {n} | {} | {} | {:.2}× | {} |",
            ms(total),
            ms(per),
            per.as_secs_f64() / restore.as_secs_f64(),
            ms(median(single))
        );
    }

    if args.iter().any(|a| a == "--no-catalog") {
        return;
    }
    println!();
    println!("| catalog scenario | run | of which the scenario's own waits | result |");
    println!("| --- | ---: | ---: | --- |");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("catalog")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let backend = NetnsBackend::new(&sandbox);
    let mut total = Duration::ZERO;
    for file in files {
        let world = load_file(&file).into_result().expect("catalog file");
        let t = Instant::now();
        let run = backend.run(&world, &RunOptions::default());
        let took = t.elapsed();
        total += took;
        let result = match &run {
            Ok(r)
                if check_outcome(&world, &r.outcome).is_empty() && r.outcome.skipped.is_empty() =>
            {
                "pass".to_string()
            }
            Ok(r) => format!("FAIL ({} failures)", check_outcome(&world, &r.outcome).len()),
            Err(e) => format!("error: {e}"),
        };
        println!(
            "| {} | {:.2} s | {:.2} s | {result} |",
            world.id,
            took.as_secs_f64(),
            waits(&world).as_secs_f64()
        );
    }
    println!("| **all** | {:.2} s | | |", total.as_secs_f64());
}

/// Real time a scenario's own steps demand: waits, holds of foreground connections, the hold of
/// a background connection a check or the end waits for (counted once, from its start), and
/// the deadline of connections expected to time out.
fn waits(world: &World) -> Duration {
    let mut sum = Duration::ZERO;
    for step in &world.steps {
        match &step.action {
            Action::Wait(d) => sum += *d,
            Action::Connect(c) => {
                let times_out = c.expect.as_ref().is_some_and(|e| {
                    e.fields.iter().any(|f| {
                        f.value
                            == ambient_scenarios::expect::ConnField::Outcome(
                                ambient_scenarios::outcome::ConnOutcome::Timeout,
                            )
                    })
                });
                let each = c.hold + if times_out { c.deadline } else { Duration::ZERO };
                sum += if c.background {
                    c.hold.saturating_sub(elapsed_after(world, step.index))
                } else {
                    each * c.repeat.count()
                };
            }
            Action::Check(_) | Action::Fault(_) | Action::Resolve(_) => {}
        }
    }
    sum
}

/// Waits that come after step `index` (they overlap a background connection's hold).
fn elapsed_after(world: &World, index: usize) -> Duration {
    world.steps[index + 1..]
        .iter()
        .map(|s| match &s.action {
            Action::Wait(d) => *d,
            _ => Duration::ZERO,
        })
        .sum()
}
