//! The netns backend on the real kernel: a quick set of catalog scenarios (one per path and
//! mechanism) must meet their own expectations with no step skipped; faults the kernel must
//! agree with the facts on; and a deliberately broken rule set fails the expectations it
//! should. The whole catalog on the kernel is `testbed conform` (run by `.ci/run`).
//!
//! `harness = false` (the sandbox must be entered single-threaded):
//! `cargo test -p ambient-netns --test scenarios [-- FILTER]`. Needs root or unprivileged user
//! namespaces; without them every case fails with the reason. The fault cases take real time
//! (timeouts and waits): about a minute in all.

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

/// The catalog scenarios this test runs on the kernel: one per path and mechanism, each a few
/// seconds. The whole catalog runs on the kernel in `testbed conform` (a step of `.ci/run`),
/// which also compares it with the simulator; running it here too would double CI's longest step.
const QUICK: &[&str] = &[
    "same-node-hbone",
    "cross-node-hbone-pooling",
    "service-endpoints-two-nodes",
    "passthrough",
    "inbound-plaintext",
    "uncaptured-direct",
    "deny-policy",
    "plaintext-to-proxy-ports",
    "probe-address-not-redirected",
    "unknown-source-loopback",
];

fn main() -> ExitCode {
    let mut suite = Suite::new("netns backend: scenarios on the kernel")
        .case("broken_rules::without_the_15001_redirect_a_passthrough_becomes_direct", |sb| {
            Ok(broken_passthrough(sb)?)
        })
        .case("broken_rules::without_the_15001_redirect_hbone_becomes_inbound_plaintext", |sb| {
            Ok(broken_same_node(sb)?)
        })
        .case("faults::pods_and_proxies_come_and_go", |sb| Ok(passes(sb, COME_AND_GO)?))
        .case("faults::a_policy_change_revokes_a_live_connection", |sb| Ok(passes(sb, REVOKE)?))
        .case("faults::total_loss_times_out_and_heal_restores", |sb| Ok(passes(sb, LOSS)?))
        .case("faults::latency_delays_real_packets_until_healed", |sb| Ok(passes(sb, LATENCY)?));
    for stem in QUICK {
        // A missing file fails its case (load reports the path), never drops it silently.
        let file = catalog_dir().join(format!("{stem}.yaml"));
        suite = suite.case(&format!("catalog::{stem}"), move |sb| Ok(catalog_case(sb, &file)?));
    }
    suite.run()
}

/// Pods deleted and added (a deleted pod's address reused), a proxy crashed and started, a
/// conntrack table flushed: the kernel must agree with what the facts say of each.
const COME_AND_GO: &str = r#"
description: pods and proxies come and go
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}
    - {name: server, node: node-b, serviceAccount: echo, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
steps:
  - connect: {id: before, from: client, to: echo:80, expect: {outcome: ok, path: hbone, server_peer: 10.0.1.2}}
  - fault: {delete-pod: server}
  # The service has no endpoint left: the proxy refuses the connection.
  - connect: {id: no-endpoint, from: client, to: echo:80, expect: {outcome: refused, server_peer: null}}
  - fault: {add-pod: {name: server2, node: node-b, serviceAccount: echo, ambient: true, ip: 10.0.2.2, labels: {app: echo}, serve: [{port: 8080, app: echo}]}}
  - connect: {id: new-endpoint, from: client, to: echo:80, expect: {outcome: ok, path: hbone, server_peer: 10.0.1.2}}
  - fault: {crash: proxy@node-a}
  # Captured, with nothing on 15001: the REDIRECTed SYN is answered with a reset.
  - connect: {id: no-proxy, from: client, to: echo:80, expect: {outcome: refused}}
  - fault: {start: proxy@node-a}
  - connect: {id: proxy-back, from: client, to: echo:80, expect: {outcome: ok, path: hbone, reused: false}}
  - fault: {flush-conntrack: client}
  - connect: {id: after-flush, from: client, to: echo:80, expect: {outcome: ok, path: hbone}}
expect:
  tunnels: {node-a->node-b: 3}
"#;

/// A DENY policy applied while a connection is open closes it; a new one is denied.
const REVOKE: &str = r#"
description: a policy change revokes a live connection
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true}
    - {name: server, node: node-b, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
steps:
  - connect: {id: live, from: client, to: server:8080, hold: 2s, background: true}
  - wait: 500ms
  - fault:
      apply:
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-sleep, namespace: default}
        spec:
          selector: {matchLabels: {app: echo}}
          action: DENY
          rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
  - check: {connections: {live: {outcome: denied}}}
  - connect: {id: new, from: client, to: server:8080, expect: {outcome: denied, server_peer: null}}
  - fault: {remove: deny-sleep.default}
  - connect: {id: allowed, from: client, to: server:8080, expect: {outcome: ok}}
"#;

/// Loss of every packet on the inter-node link: a connection gets no answer; heal restores.
const LOSS: &str = r#"
description: total loss, then heal
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: legacy, node: node-a}
    - {name: server, node: node-b, ambient: true, serve: [{port: 8080, app: echo}]}
steps:
  - fault: {loss: {between: [node-a, node-b], rate: 1.0}}
  - connect: {id: lost, from: legacy, to: server:8080, deadline: 1s, expect: {outcome: timeout, server_peer: null}}
  - fault: {heal: [node-a, node-b]}
  - connect: {id: healed, from: legacy, to: server:8080, expect: {outcome: ok, path: inbound-plaintext}}
"#;

/// Latency, measured by the clients' own timers: with 150 ms added each way a TCP handshake
/// across the link takes at least one round trip, 300 ms, so a 250 ms deadline times out; a
/// 900 ms one is met (handshake and one echo, two round trips: the packets are delayed, not
/// dropped, which would cost a 1 s SYN retransmission); 64 KiB cross intact, in order. A
/// smaller delay on the same link retunes it; after heal the 250 ms deadline is met again.
/// The client is uncaptured, so only the handshake and the echo stand before its deadline.
const LATENCY: &str = r#"
description: latency between two nodes, retuned, healed
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: legacy, node: node-a}
    - {name: server, node: node-b, ambient: true, serve: [{port: 8080, app: echo}]}
steps:
  - connect: {id: before, from: legacy, to: server:8080, deadline: 250ms, expect: {outcome: ok, path: inbound-plaintext}}
  - fault: {latency: {between: [node-a, node-b], add: 150ms}}
  - connect: {id: too-slow, from: legacy, to: server:8080, deadline: 250ms, expect: {outcome: timeout, server_peer: null}}
  - connect: {id: in-time, from: legacy, to: server:8080, deadline: 900ms, expect: {outcome: ok, path: inbound-plaintext}}
  - connect: {id: bulk, from: legacy, to: server:8080, deadline: 10s, send: 64KiB, expect: {outcome: ok, path: inbound-plaintext, received: 64KiB, intact: true}}
  - fault: {latency: {between: [node-a, node-b], add: 10ms}}
  - connect: {id: retuned, from: legacy, to: server:8080, deadline: 250ms, expect: {outcome: ok, path: inbound-plaintext}}
  - fault: {latency: {between: [node-a, node-b], add: 150ms}}
  - fault: {heal: [node-a, node-b]}
  - connect: {id: healed, from: legacy, to: server:8080, deadline: 250ms, expect: {outcome: ok, path: inbound-plaintext}}
"#;

/// An inline scenario passes on the kernel.
fn passes(sandbox: &Sandbox, text: &str) -> anyhow::Result<()> {
    let world = ambient_scenarios::load_str("inline.yaml", text)
        .into_result()
        .map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let run = NetnsBackend::new(sandbox).run(&world, &RunOptions::default())?;
    let failures = check_outcome(&world, &run.outcome);
    if !failures.is_empty() || !run.outcome.skipped.is_empty() {
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        bail!(
            "{}\nskipped: {:?}\n\nOutcome:\n{}",
            lines.join("\n"),
            run.outcome.skipped,
            run.outcome.to_json()
        );
    }
    Ok(())
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
        "expect.conntrack.client: expected tcp 10.0.1.2:* -> 10.0.2.2:9090 reply 127.0.0.1:15001 -> \
         10.0.1.2:* TIME_WAIT; tcp 10.0.1.2:* -> 203.0.113.10:443 reply 127.0.0.1:15001 -> \
         10.0.1.2:* TIME_WAIT, got no such entry",
        "expect.counters.client[\"nat/ISTIO_OUTPUT/6\"]: expected 2 packets, got no counter for \
         nat/ISTIO_OUTPUT/6 of client.default in the outcome",
        // Two app connections and no proxy's: the proxy's own dials went through nat OUTPUT too.
        "expect.counters.client[\"nat/OUTPUT/1\"]: expected 4 packets, got 2 packets",
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
