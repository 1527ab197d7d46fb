//! The fuzzer finds planted bugs. With the proxy's `planted-bugs` feature (a dev-dependency of
//! this crate only), a fault plan can flip one behaviour of every proxy of a run; these tests
//! generate cases as `testbed fuzz` does, find one that breaks an invariant with the bug and
//! holds without it, shrink it (keeping exactly that property), and assert what is left is a
//! scenario of a handful of pods and steps that still shows the bug.

use std::sync::Arc;

use ambient_fuzz::runner::{Planner, case_seed, default_planner, generate, run_case};
use ambient_fuzz::shrink::Shrinker;
use ambient_fuzz::{Case, Invariant, Limits};
use ambient_proxy::faults::{FaultPlan, FaultRates, PlantedBug};

/// Every run gets a plan (fault points as the case says, none otherwise) with `bug` planted.
fn planted(bug: PlantedBug) -> Planner {
    Arc::new(move |fp: Option<ambient_fuzz::case::FaultPoints>| {
        let plan = match fp {
            Some(f) => FaultPlan::new(f.seed, f.rates),
            None => FaultPlan::new(0, FaultRates::default()),
        };
        Some(Arc::new(plan.with_planted(bug)))
    })
}

/// The invariants `case` breaks with `bug` planted and not without it (one run each).
fn caught(case: &Case, bug: &Planner, clean: &Planner) -> Vec<Invariant> {
    let Ok(with) = run_case(case, bug, false) else { return Vec::new() };
    if with.violations.is_empty() {
        return Vec::new();
    }
    let Ok(without) = run_case(case, clean, false) else { return Vec::new() };
    let mut found: Vec<Invariant> =
        with.violations.iter().map(|v| v.invariant).filter(|i| !without.broke(*i)).collect();
    found.dedup();
    found
}

/// Fuzzes seed `seed` until a case catches `bug`, shrinks it, and returns the small case and
/// the invariant it breaks.
fn find_and_shrink(bug: PlantedBug, seed: u64, limits: Limits) -> (u64, Case, Invariant) {
    let (buggy, clean) = (planted(bug), default_planner());
    for i in 0..400 {
        let case = generate(limits, case_seed(seed, i), &format!("planted-{i}"));
        let Some(&inv) = caught(&case, &buggy, &clean).first() else { continue };
        let mut s = Shrinker::new(|c: &Case| caught(c, &buggy, &clean).contains(&inv), 3000);
        let small = s.shrink(case);
        return (i, small, inv);
    }
    panic!("{bug:?}: no case of 400 caught it");
}

fn assert_small(bug: PlantedBug, index: u64, small: &Case, inv: Invariant, max: (usize, usize)) {
    let (pods, steps, policies) = small.size();
    eprintln!(
        "{bug:?}: case {index} broke `{inv}`; shrunk to {pods} pods, {steps} steps, {policies} policies:\n{}",
        small.to_yaml()
    );
    assert!(pods <= max.0 && steps <= max.1, "{bug:?}: not shrunk enough:\n{}", small.to_yaml());
    // What is left still shows the bug, and only with it.
    let found = caught(small, &planted(bug), &default_planner());
    assert!(found.contains(&inv), "{bug:?}: the shrunk case lost the bug");
}

/// DENY evaluated after ALLOW: a connection both an ALLOW and a DENY policy match gets
/// through. The oracle (DENY first) disagrees; the shrunk case has the two policies (initial
/// or applied) and one connection.
#[test]
fn finds_deny_evaluated_after_allow() {
    let limits = Limits { max_nodes: 2, max_pods: 4, max_steps: 6, fault_points: false };
    let (i, small, inv) = find_and_shrink(PlantedBug::DenyAfterAllow, 1, limits);
    assert_eq!(inv, Invariant::Oracle);
    assert_small(PlantedBug::DenyAfterAllow, i, &small, inv, (3, 4));
    let policies = small.policies.len()
        + small.steps.iter().filter(|s| matches!(s, ambient_fuzz::case::Step::Apply(_))).count();
    assert!(policies >= 2, "an ALLOW and a DENY are needed:\n{}", small.to_yaml());
}

/// The pool keyed without the source: two captured pods of one node calling pods of another
/// share a tunnel, and the second is authenticated as the first. The preservation invariant
/// (or the oracle, via RBAC on the wrong identity) catches it; the shrunk case has the two
/// clients, a destination and two connections.
#[test]
fn finds_the_pool_ignoring_the_source_identity() {
    let limits = Limits { max_nodes: 2, max_pods: 5, max_steps: 6, fault_points: false };
    let (i, small, inv) = find_and_shrink(PlantedBug::PoolKeyIgnoresSource, 1, limits);
    assert!(matches!(inv, Invariant::Preservation | Invariant::Oracle), "{inv}");
    assert_small(PlantedBug::PoolKeyIgnoresSource, i, &small, inv, (4, 4));
    assert!(small.connects().count() >= 2, "two clients are needed:\n{}", small.to_yaml());
}
