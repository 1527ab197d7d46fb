//! A deliberately broken rule set fails the same expectations on both backends: the outbound
//! REDIRECT to 15001 removed from every captured pod's rules, the same broken World run in the
//! simulator and on the kernel, and their expectation failures compared line by line (ephemeral
//! ports masked, since the kernel picks them at random).
//!
//! `harness = false`: the namespace sandbox must be entered while the process has one thread.
//! Needs root or unprivileged user namespaces; without them every case fails with the reason.

use std::path::Path;
use std::process::ExitCode;

use ambient_netns::NetnsBackend;
use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::{Suite, failure_lines, without_rules};
use ambient_report::conform::normalize::EPHEMERAL_FROM;
use ambient_scenarios::{Backend, RunOptions, World, check_outcome, load_file};
use anyhow::{anyhow, ensure};

fn main() -> ExitCode {
    Suite::new("broken rules: both backends fail alike")
        .case("mask_ports_masks_only_ephemeral_ports", |_| {
            Ok(ports_are_masked_only_where_ephemeral()?)
        })
        .case("without_the_15001_redirect_passthrough_fails_alike", |sb| {
            Ok(both_fail_alike(sb, "passthrough.yaml", 3)?)
        })
        .case("without_the_15001_redirect_same_node_hbone_fails_alike", |sb| {
            Ok(both_fail_alike(sb, "same-node-hbone.yaml", 8)?)
        })
        .case("without_the_15001_redirect_cross_node_pooling_fails_alike", |sb| {
            Ok(both_fail_alike(sb, "cross-node-hbone-pooling.yaml", 1)?)
        })
        .run()
}

fn load(name: &str) -> anyhow::Result<World> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/catalog").join(name);
    load_file(&path).into_result().map_err(|d| anyhow!("{}: {d:?}", path.display()))
}

/// `:NNNNN` ephemeral ports (≥ 32768) of a failure line as `:*`.
fn mask_ports(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(':') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        match rest[..digits].parse::<u32>() {
            Ok(p) if digits == 5 && p >= u32::from(EPHEMERAL_FROM) => out.push('*'),
            _ => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The scenario passes intact on both backends; without its 15001 REDIRECT it fails at least
/// `at_least` expectations, and the failure lines of the two backends are equal.
fn both_fail_alike(sandbox: &Sandbox, file: &str, at_least: usize) -> anyhow::Result<()> {
    let world = load(file)?;
    let kernel = NetnsBackend::new(sandbox);
    let backends: [&dyn Backend; 2] = [&ambient_sim::SimBackend, &kernel];
    for b in backends {
        let run = b.run(&world, &RunOptions::default())?;
        let failures = check_outcome(&world, &run.outcome);
        ensure!(failures.is_empty(), "{file} fails intact on {}: {failures:?}", b.name());
    }
    let broken = without_rules(&world, "--to-ports 15001");
    ensure!(broken != world, "{file}: the rule set had no 15001 REDIRECT to remove");
    let mut lines = Vec::new();
    for b in backends {
        let run = b.run(&broken, &RunOptions::default())?;
        ensure!(run.outcome.skipped.is_empty(), "{}: skipped {:?}", b.name(), run.outcome.skipped);
        let failed: Vec<String> = failure_lines(&check_outcome(&broken, &run.outcome))
            .iter()
            .map(|l| mask_ports(l))
            .collect();
        lines.push(failed);
    }
    let (sim, netns) = (&lines[0], &lines[1]);
    ensure!(
        sim.len() >= at_least,
        "{file}: the broken rules should fail at least {at_least} expectations, the simulator failed {sim:#?}"
    );
    ensure!(
        sim == netns,
        "{file}: the backends fail differently\nsim:   {sim:#?}\nnetns: {netns:#?}"
    );
    Ok(())
}

fn ports_are_masked_only_where_ephemeral() -> anyhow::Result<()> {
    let masked =
        mask_ports("orig 10.0.1.2:45123 -> 10.0.1.3:8080, 127.0.0.1:15001 -> 10.0.1.2:32768");
    ensure!(
        masked == "orig 10.0.1.2:* -> 10.0.1.3:8080, 127.0.0.1:15001 -> 10.0.1.2:*",
        "{masked}"
    );
    Ok(())
}
