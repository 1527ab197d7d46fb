//! The real-ztunnel tier: catalog scenarios on the kernel with real ztunnel as the node proxy,
//! and with our proxy and ztunnel mixed in one cluster (HBONE both ways, one CA). Not part of
//! `cargo test --workspace` (`test = false`: CI cannot build ztunnel); run it explicitly:
//!
//! ```sh
//! TESTBED_ZTUNNEL=/path/to/ztunnel cargo test -p ambient-netns --test ztunnel [-- FILTER]
//! ```
//!
//! The binary is built from the public istio/ztunnel repository with features
//! `tls-ring,testing`. The mixed cases need ztunnel's test root and key (`TESTBED_ZTUNNEL_CA`, or
//! the source tree the binary was built in). Without the binary every case **fails** saying so;
//! nothing passes by skipping. `harness = false`: the sandbox needs a single-threaded process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ambient_netns::sandbox::Sandbox;
use ambient_netns::testkit::Suite;
use ambient_netns::ztunnel::ZtunnelSetup;
use ambient_netns::{NetnsBackend, ProxyKind, ProxyPlan};
use ambient_scenarios::outcome::{EventKind, ResolvePath};
use ambient_scenarios::{Backend, RunOptions, check_outcome, load_file};
use anyhow::{Context as _, bail, ensure};

fn catalog(stem: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/catalog/{stem}.yaml"))
}

fn setup() -> anyhow::Result<ZtunnelSetup> {
    let binary = std::env::var_os("TESTBED_ZTUNNEL").filter(|v| !v.is_empty()).context(
        "TESTBED_ZTUNNEL is not set: this tier needs a ztunnel binary (built from istio/ztunnel \
         with features tls-ring,testing)",
    )?;
    let ca = std::env::var_os("TESTBED_ZTUNNEL_CA").filter(|v| !v.is_empty()).map(PathBuf::from);
    ZtunnelSetup::new(PathBuf::from(binary), ca).map_err(anyhow::Error::msg)
}

/// Scenarios whose own expectations real ztunnel meets (reports/ztunnel-conformance.md).
const ZTUNNEL: &[&str] = &[
    "same-node-hbone",
    "cross-node-hbone-pooling",
    "passthrough",
    "inbound-plaintext",
    "uncaptured-direct",
    "authz-allow-principal",
    "authz-deny-plaintext-notprincipals",
    "peer-authentication-strict",
    "refused-closed-port",
    "source-proxy-restart",
];

/// DNS scenarios real ztunnel meets with its DNS proxy on (the harness gives it the scenario's
/// DNS server through a resolv.conf of its own), its log tied to the lookups.
const DNS: &[&str] = &["dns-service-name", "dns-forward-external", "dns-proxy-down"];

/// Scenarios run in mixed clusters, both ways round.
const MIXED: &[&str] = &[
    "cross-node-hbone-pooling",
    "authz-allow-principal",
    "authz-allow-namespace",
    "cross-node-pod-ip",
    "inbound-plaintext",
];

fn main() -> ExitCode {
    let mut suite = Suite::new("real ztunnel on the kernel");
    for stem in ZTUNNEL {
        suite = suite.case(&format!("ztunnel::{stem}"), move |sb| {
            Ok(passes(sb, stem, &[ProxyKind::Ztunnel])?)
        });
    }
    for stem in MIXED {
        suite = suite
            .case(&format!("mixed::ours_to_ztunnel::{stem}"), move |sb| {
                Ok(passes(sb, stem, &[ProxyKind::Ours, ProxyKind::Ztunnel])?)
            })
            .case(&format!("mixed::ztunnel_to_ours::{stem}"), move |sb| {
                Ok(passes(sb, stem, &[ProxyKind::Ztunnel, ProxyKind::Ours])?)
            });
    }
    for stem in DNS {
        suite = suite
            .case(&format!("dns::{stem}"), move |sb| Ok(passes(sb, stem, &[ProxyKind::Ztunnel])?));
    }
    // The client pods of the DNS scenarios are on the first node: ztunnel answers them only
    // when it comes first.
    suite = suite.case("mixed::ztunnel_to_ours::dns-connect-by-hostname", |sb| {
        Ok(passes(sb, "dns-connect-by-hostname", &[ProxyKind::Ztunnel, ProxyKind::Ours])?)
    });
    suite = suite.case("known::ztunnel_turns_an_upstream_reset_into_a_clean_close", |sb| {
        Ok(swallows_resets(sb)?)
    });
    suite = suite.case("known::ztunnel_answers_a_repeated_name_from_its_cache", |sb| {
        Ok(caches_answers(sb)?)
    });
    suite.run()
}

fn backend<'s>(sandbox: &'s Sandbox, kinds: &[ProxyKind]) -> anyhow::Result<NetnsBackend<'s>> {
    let plan = ProxyPlan { kinds: kinds.to_vec(), ztunnel: Some(setup()?) };
    Ok(NetnsBackend::new(sandbox).with_proxies(plan))
}

/// A catalog scenario meets its own expectations, no step skipped.
fn passes(sandbox: &Sandbox, stem: &str, kinds: &[ProxyKind]) -> anyhow::Result<()> {
    let world = load_file(&catalog(stem)).into_result().map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let run = backend(sandbox, kinds)?.run(&world, &RunOptions::default())?;
    let failures = check_outcome(&world, &run.outcome);
    if !failures.is_empty() || !run.outcome.skipped.is_empty() {
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        bail!(
            "{} expectation(s) failed, skipped {:?}:\n{}\n\nOutcome:\n{}",
            failures.len(),
            run.outcome.skipped,
            lines.join("\n"),
            run.outcome.to_json()
        );
    }
    ensure!(
        !run.outcome.connections.is_empty() || !run.outcome.resolutions.is_empty(),
        "no connection or lookup ran"
    );
    // A lookup ztunnel handled has its event (its log line tied to the lookup), whatever the
    // scenario expects of it.
    for r in &run.outcome.resolutions {
        let handled = matches!(r.path, Some(ResolvePath::Proxy | ResolvePath::Forwarded));
        ensure!(
            !handled || r.proxy_events.iter().any(|e| e.kind == EventKind::Dns),
            "lookup {} ({}) has no dns event: {}",
            r.id,
            r.name,
            run.outcome.to_json()
        );
    }
    Ok(())
}

/// Pins ztunnel's forwarding cache (the `ztunnel-caches-forwarded-answers` difference): in
/// dns-forward-external four lookups are forwarded, one of them (`over-tcp`) a name asked
/// before, and only three queries leave the client pod for the nameserver (zone-1 conntrack
/// entries). When ztunnel stops caching this fails, and the entry is out of date.
fn caches_answers(sandbox: &Sandbox) -> anyhow::Result<()> {
    let world = load_file(&catalog("dns-forward-external"))
        .into_result()
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let run = backend(sandbox, &[ProxyKind::Ztunnel])?.run(&world, &RunOptions::default())?;
    let forwarded: Vec<&str> = run
        .outcome
        .resolutions
        .iter()
        .filter(|r| r.path == Some(ResolvePath::Forwarded))
        .map(|r| r.id.as_str())
        .collect();
    ensure!(forwarded == ["external", "two-records", "missing", "over-tcp"], "{forwarded:?}");
    let client = run.outcome.end.netns.get("client.default").context("no client.default")?;
    let upstream: Vec<String> = client
        .conntrack
        .iter()
        .filter(|e| e.zone == 1 && e.orig.dst.to_string() == "203.0.113.53:53")
        .map(|e| format!("{} -> {}", e.orig.src, e.orig.dst))
        .collect();
    ensure!(
        upstream.len() == 3,
        "expected three queries to the nameserver (example.com answered from the cache the \
         second time), got {upstream:?} (has ztunnel stopped caching?)"
    );
    Ok(())
}

/// Pins a ztunnel behaviour the catalog disagrees with (istio/ztunnel#1483): an app's reset
/// reaches the client as a clean close. When ztunnel starts forwarding resets this fails, and
/// the triage in reports/ztunnel-conformance.md is out of date.
fn swallows_resets(sandbox: &Sandbox) -> anyhow::Result<()> {
    let world = load_file(&catalog("reset-propagates"))
        .into_result()
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let run = backend(sandbox, &[ProxyKind::Ztunnel])?.run(&world, &RunOptions::default())?;
    use ambient_scenarios::outcome::{ConnOutcome, PathKind};
    let outcomes: Vec<String> =
        run.outcome.connections.iter().map(|c| format!("{}:{}", c.id, c.outcome)).collect();
    // Through ztunnel (hbone, passthrough, inbound plaintext): a clean close; with no proxy in
    // between (direct) the kernel delivers the reset, as it must.
    let through: Vec<_> =
        run.outcome.connections.iter().filter(|c| c.path != Some(PathKind::Direct)).collect();
    ensure!(through.len() == 3, "expected three proxied connections: {outcomes:?}");
    ensure!(
        through.iter().all(|c| c.outcome == ConnOutcome::Ok),
        "the resets reached the clients: {outcomes:?} (has ztunnel started forwarding RST?)"
    );
    let direct = run.outcome.connections.iter().find(|c| c.path == Some(PathKind::Direct));
    ensure!(direct.is_some_and(|c| c.outcome == ConnOutcome::Reset), "{outcomes:?}");
    Ok(())
}
