//! The netns backend against the catalog: every `scenarios/catalog/*.yaml` runs on the real
//! kernel and must meet its own expectations with no step skipped; and a deliberately broken
//! rule set fails the expectations it should.
//!
//! `harness = false` (the sandbox must be entered single-threaded):
//! `cargo test -p ambient-netns --test scenarios [-- FILTER]`. Needs root or unprivileged user
//! namespaces; without them every case fails with the reason. Waits and holds take real time:
//! `partition` about 70 s, `destination-proxy-restart` about 35 s.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ambient_netns::NetnsBackend;
use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::{Suite, failure_lines, without_rules};
use ambient_scenarios::{Backend, RunOptions, World, check_outcome, load_file};
use anyhow::{bail, ensure};

fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog")
}

fn load(name: &str) -> anyhow::Result<World> {
    let path = catalog_dir().join(name);
    load_file(&path).into_result().map_err(|d| anyhow::anyhow!("{}: {d:?}", path.display()))
}

fn main() -> ExitCode {
    let mut files: Vec<PathBuf> = std::fs::read_dir(catalog_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut suite = Suite::new("netns backend: the catalog on the kernel")
        .case("catalog::is_not_empty", {
            let n = files.len();
            move |_| {
                if n >= 7 { Ok(()) } else { Err(format!("only {n} catalog files found").into()) }
            }
        })
        .case("broken_rules::without_the_15001_redirect_a_passthrough_becomes_direct", |sb| {
            Ok(broken_passthrough(sb)?)
        })
        .case("broken_rules::without_the_15001_redirect_hbone_becomes_inbound_plaintext", |sb| {
            Ok(broken_same_node(sb)?)
        });
    for file in files {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        suite = suite.case(&format!("catalog::{stem}"), move |sb| Ok(catalog_case(sb, &file)?));
    }
    suite.run()
}

/// One catalog scenario: no expectation fails, no step is skipped.
fn catalog_case(sandbox: &Sandbox, file: &Path) -> anyhow::Result<()> {
    let world = load_file(file).into_result().map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let run = NetnsBackend::new(sandbox).run(&world, &RunOptions::default())?;
    let failures = check_outcome(&world, &run.outcome);
    if !failures.is_empty() || !run.outcome.skipped.is_empty() {
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        bail!(
            "{} expectation(s) failed, {} step(s) skipped {:?}:\n{}\n\nOutcome:\n{}",
            failures.len(),
            run.outcome.skipped.len(),
            run.outcome.skipped,
            lines.join("\n"),
            run.outcome.to_json()
        );
    }
    ensure!(!run.outcome.connections.is_empty() || world.connects().next().is_none());
    Ok(())
}

/// The expectation failures of `world` with the outbound REDIRECT (`--to-ports 15001`) removed
/// from every captured pod, on `backend`. The simulator's half of this test is the same call
/// with its backend, compared with [`failure_lines`] equality (it lives where both backends are
/// visible, the `testbed` crate's tests).
fn failures_without_outbound_redirect(
    backend: &dyn Backend,
    world: &World,
) -> anyhow::Result<Vec<String>> {
    let broken = without_rules(world, "--to-ports 15001");
    ensure!(broken != *world, "the rule set had no 15001 REDIRECT to remove");
    let run = backend.run(&broken, &RunOptions::default())?;
    ensure!(run.outcome.skipped.is_empty(), "skipped: {:?}", run.outcome.skipped);
    Ok(failure_lines(&check_outcome(&broken, &run.outcome)))
}

/// A captured client calling out of the mesh, without its REDIRECT: the connections still work,
/// but they go direct, and the rule the counters name no longer exists.
fn broken_passthrough(sandbox: &Sandbox) -> anyhow::Result<()> {
    let world = load("passthrough.yaml")?;
    let intact = NetnsBackend::new(sandbox).run(&world, &RunOptions::default())?;
    ensure!(check_outcome(&world, &intact.outcome).is_empty(), "the intact scenario fails");
    let kernel = failures_without_outbound_redirect(&NetnsBackend::new(sandbox), &world)?;
    let expected = [
        "expect.connections.to-legacy.path: expected passthrough, got direct",
        "expect.connections.to-web.path: expected passthrough, got direct",
        "expect.counters.client[\"nat/ISTIO_OUTPUT/6\"]: expected 2 packets, got no counter for \
         nat/ISTIO_OUTPUT/6 of client.default in the outcome",
    ];
    ensure!(kernel == expected, "expected exactly {expected:#?}\ngot {kernel:#?}");
    Ok(())
}

/// Two captured pods on one node, without the client's REDIRECT: the server's own capture still
/// catches the connection on 15006 — it arrives as plaintext, with no identity and no tunnel.
fn broken_same_node(sandbox: &Sandbox) -> anyhow::Result<()> {
    let world = load("same-node-hbone.yaml")?;
    let kernel = failures_without_outbound_redirect(&NetnsBackend::new(sandbox), &world)?;
    // Conntrack lines name ephemeral ports; compare those by what they are about.
    let (conntrack, rest): (Vec<&String>, Vec<&String>) =
        kernel.iter().partition(|l| l.starts_with("expect.conntrack."));
    let expected = [
        "expect.counters.client[\"nat/ISTIO_OUTPUT/6\"]: expected 1 packets, got no counter for \
         nat/ISTIO_OUTPUT/6 of client.default in the outcome",
        "expect.counters.server[\"nat/ISTIO_PRERT/2\"]: expected 0 packets, got 1 packets",
        "expect.tunnels[\"node-a->node-a\"]: expected 1, got 0",
        "steps[0].connect.expect.path: expected hbone, got inbound-plaintext",
        "steps[0].connect.expect.server_identity: expected spiffe://cluster.local/ns/default/sa/sleep, got null",
        "steps[0].connect.expect.tunnel: expected node-a->node-a, got null",
    ];
    ensure!(rest == expected, "expected {expected:#?}\ngot {rest:#?}");
    // The server's table shows the REDIRECT to 15006 where the tunnel was expected.
    ensure!(
        conntrack.len() == 2
            && conntrack[0].starts_with("expect.conntrack.client:")
            && conntrack[1].starts_with("expect.conntrack.server:")
            && conntrack[1].contains("reply 10.0.1.3:15006 -> 10.0.1.2:"),
        "{conntrack:#?}"
    );
    Ok(())
}
