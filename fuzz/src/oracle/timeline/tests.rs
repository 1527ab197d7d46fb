//! The oracle's rules for races, one test per rule, each on the shape of the case the fuzzer
//! found it with (`s<seed> c<case>`): the prediction for that connection allows what the
//! simulator did — and no more than the rule says.

use std::collections::BTreeSet;

use ambient_scenarios::load_str;
use ambient_scenarios::outcome::{ConnOutcome, PathKind};

use super::super::{Expect, Prediction, Tri};
use super::predict;

use ConnOutcome::{Denied, Error, Ok, Refused, Reset, Timeout};

/// Two nodes; `a` (captured, node-a, 10.0.1.2), `b` (captured, node-b, 10.0.2.2), `c`
/// (captured, node-a, 10.0.1.3), `u` (not captured, node-a, 10.0.1.9), all serving echo on
/// 8080 and `b` reset on 9090; a Service `s` selecting `app: s`; the external host `web`.
fn world(pods_extra: &str, steps: &str) -> Vec<Prediction> {
    let text = format!(
        "description: d
cluster:
  nodes: [node-a, node-b]
  pods:
    - {{name: a, node: node-a, ip: 10.0.1.2, serviceAccount: sa, ambient: true, serve: [{{port: 8080, app: echo}}]}}
    - {{name: b, node: node-b, ip: 10.0.2.2, serviceAccount: sb, ambient: true, serve: [{{port: 8080, app: echo}}, {{port: 9090, app: reset}}]}}
    - {{name: c, node: node-a, ip: 10.0.1.3, serviceAccount: sc, ambient: true, serve: [{{port: 8080, app: echo}}]}}
    - {{name: u, node: node-a, ip: 10.0.1.9, serviceAccount: su, serve: [{{port: 8080, app: echo}}]}}
{pods_extra}  services:
    - {{name: s, vip: 10.96.0.10, selector: {{app: s}}, ports: [{{port: 80, targetPort: 8080}}]}}
  external: [{{name: web, ip: 203.0.113.10, serve: [{{port: 443, app: echo}}]}}]
steps:
{steps}"
    );
    let w = load_str("t.yaml", &text).into_result().unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    predict(&w, false)
}

/// The alternative of `p` for `endpoint` (`None`: no route event).
fn alt<'a>(p: &'a Prediction, endpoint: Option<&str>) -> &'a Expect {
    let want = endpoint.map(|e| e.parse().unwrap_or_else(|_| panic!("{e}")));
    p.for_endpoint(want).unwrap_or_else(|| panic!("no alternative for {endpoint:?}: {p:#?}"))
}

fn outcomes(e: &Expect) -> BTreeSet<ConnOutcome> {
    e.outcomes.clone()
}

#[test]
fn a_later_repetition_of_a_sequential_step_is_not_certainly_open_when_a_change_lands() {
    // s2 c116: the crash hits the first repetition while it holds; the second starts after the
    // first ended (the proxy is back by then) and may end ok.
    let p = world(
        "",
        "  - {connect: {id: c0, from: c, to: a:8080, send: 1KiB, count: 2, hold: 20s, background: true, deadline: 5s}}
  - {wait: 1s}
  - {fault: {crash: proxy@node-a}}
  - {fault: {start: proxy@node-a}}
",
    );
    let first = alt(&p[0], Some("10.0.1.2:8080"));
    assert!(!first.outcomes.contains(&Ok), "{first:?}");
    let second = alt(&p[1], Some("10.0.1.2:8080"));
    assert!(second.outcomes.contains(&Ok), "{second:?}");
}

#[test]
fn a_proxy_stopping_while_a_connection_may_still_be_connecting_meets_it_down() {
    // s2 c199: an uncaptured client's SYN reaches the destination's 15006 after the crash: a
    // RST, no proxy event — `direct`, refused.
    let p = world(
        "",
        "  - {connect: {id: c1, from: u, to: a:8080, send: 1KiB, hold: 2s, background: true, deadline: 5s}}\n  - {fault: {crash: proxy@node-a}}\n",
    );
    let e = alt(&p[0], None);
    assert!(e.paths.contains(&Some(PathKind::InboundPlaintext)), "{e:?}");
    assert!(e.paths.contains(&Some(PathKind::Direct)), "{e:?}");
    assert!(e.outcomes.contains(&Refused), "{e:?}");
    // s8 c229: a restart too — a SYN may arrive between the crash and the start.
    let p = world(
        "",
        "  - {connect: {id: c1, from: u, to: a:8080, send: 1KiB, hold: 2s, background: true, deadline: 5s}}\n  - {fault: {restart: proxy@node-a}}\n",
    );
    assert!(alt(&p[0], None).paths.contains(&Some(PathKind::Direct)));
    // Long after the start, it was certainly established: no such alternative.
    let p = world(
        "",
        "  - {connect: {id: c1, from: u, to: a:8080, send: 1KiB, hold: 20s, background: true, deadline: 5s}}\n  - {wait: 5s}\n  - {fault: {crash: proxy@node-a}}\n",
    );
    assert!(!alt(&p[0], None).paths.contains(&Some(PathKind::Direct)));
}

#[test]
fn a_dial_still_pending_at_the_end_of_the_run_may_log_no_route() {
    // s2 c469: across a partition the proxy logs the HBONE route only when its dial ends (10 s);
    // the run ended first.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 1KiB, deadline: 5s}}\n",
    );
    let unrouted = alt(&p[0], None);
    assert_eq!(outcomes(unrouted), [Timeout].into());
    assert_eq!(unrouted.paths, [Some(PathKind::Direct)].into());
    assert_eq!((unrouted.accepted, unrouted.identity), (Tri::MustNot, Tri::MustNot));
    // With time for the dial to end, the route is logged: no such alternative.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 1KiB, deadline: 5s}}\n  - {wait: 1m}\n",
    );
    assert!(p[0].for_endpoint(None).is_none(), "{:?}", p[0]);
}

#[test]
fn a_reset_app_holds_its_connection_open_and_a_fin_that_cuts_nothing_reads_ok() {
    // s15 c113: the app resets only after the client's first bytes; a proxy restart while the
    // client holds closes the client's side with a FIN, and with nothing to come back that is
    // a clean close: `ok`.
    let p = world(
        "",
        "  - {connect: {id: c1, from: c, to: a:9090, send: 1KiB, hold: 5s, background: true, deadline: 5s}}\n  - {wait: 1s}\n  - {fault: {restart: proxy@node-a}}\n",
    );
    // No app on a:9090: refused whatever lands (not open, so not hit).
    assert!(!alt(&p[0], Some("10.0.1.2:9090")).outcomes.contains(&Ok));
    let p = world(
        "",
        "  - {connect: {id: c1, from: a, to: b:9090, send: 1KiB, hold: 5s, background: true, deadline: 5s}}\n  - {wait: 1s}\n  - {fault: {restart: proxy@node-b}}\n",
    );
    let e = alt(&p[0], Some("10.0.2.2:9090"));
    assert!(e.outcomes.contains(&Reset) && e.outcomes.contains(&Ok), "{e:?}");
    assert_eq!(e.ok_replies(), [0].into());
    // s2 c199 on the kernel: no app at all, the destination's proxy crashing while it may
    // still be handling the connection: its FIN cuts nothing either.
    let p = world(
        "",
        "  - {connect: {id: c1, from: u, to: a:9090, send: 1KiB, hold: 2s, background: true, deadline: 5s}}\n  - {fault: {crash: proxy@node-a}}\n",
    );
    let e = alt(&p[0], None);
    assert!(e.outcomes.contains(&Ok) && e.ok_replies() == [0].into(), "{e:?}");
    // An echo's reply is cut by that FIN: an `ok` still reads it all back, never nothing.
    let p = world(
        "",
        "  - {connect: {id: c1, from: u, to: a:8080, send: 1KiB, hold: 2s, background: true, deadline: 5s}}\n  - {fault: {crash: proxy@node-a}}\n",
    );
    assert_eq!(alt(&p[0], None).ok_replies(), [1024].into());
}

#[test]
fn deleting_the_destination_while_a_connection_may_still_be_connecting() {
    // s5 c359 (uncaptured client: refused, direct), s18 c182 (captured client: the pod left
    // the mesh, the proxy routes it passthrough and is refused).
    let p = world(
        "",
        "  - {connect: {id: c0, from: web, to: a:8080, send: 1KiB, hold: 5s, background: true, deadline: 5s}}\n  - {fault: {delete-pod: a}}\n",
    );
    let e = alt(&p[0], None);
    assert!(e.outcomes.contains(&Refused) && e.paths.contains(&Some(PathKind::Direct)), "{e:?}");
    let p = world(
        "",
        "  - {connect: {id: c0, from: c, to: a:8080, send: 1KiB, hold: 20s, background: true, deadline: 5s}}\n  - {fault: {delete-pod: a}}\n",
    );
    let e = alt(&p[0], Some("10.0.1.2:8080"));
    assert!(e.outcomes.contains(&Refused), "{e:?}");
    assert!(e.paths.contains(&Some(PathKind::Passthrough)), "{e:?}");
}

#[test]
fn a_deleted_pods_own_client_dies_with_it() {
    // s3 c226: the client's pod deleted while its connection runs — or before a later
    // repetition started: the killed client's `error`, with or without a route event.
    let p = world(
        "",
        "  - {connect: {id: c1, from: c, to: a:8080, send: 1KiB, count: 2, hold: 20s, background: true, deadline: 30s}}\n  - {wait: 1s}\n  - {fault: {delete-pod: c}}\n",
    );
    for pred in &p {
        assert!(pred.unmodelled.is_none());
        assert!(alt(pred, Some("10.0.1.2:8080")).outcomes.contains(&Error));
        let none = alt(pred, None);
        assert_eq!(outcomes(none), [Error].into());
        assert!(none.paths.contains(&None));
    }
    // Deleted after it certainly ended: untouched.
    let p = world(
        "",
        "  - {connect: {id: c1, from: c, to: a:8080, send: 1KiB, background: true, deadline: 5s}}\n  - {wait: 1m}\n  - {fault: {delete-pod: c}}\n",
    );
    assert_eq!(outcomes(alt(&p[0], Some("10.0.1.2:8080"))), [Ok].into());
}

#[test]
fn a_connection_that_joins_a_pending_dial_of_its_tunnel_fails_with_it() {
    // s15 c112, s11 c208: the second repetition starts 5.5 s in and joins the first one's
    // dial (one dial per key), which gives up at 10 s — before the second's own deadline.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 1KiB, count: 2, hold: 500ms, deadline: 5s}}\n",
    );
    assert!(!alt(&p[0], Some("10.0.2.2:8080")).outcomes.contains(&Refused));
    assert!(alt(&p[1], Some("10.0.2.2:8080")).outcomes.contains(&Refused));
}

#[test]
fn a_heal_lands_on_the_dial_of_a_later_repetition() {
    // s9 c86: the third repetition dials anew at ~10 s; the heal at ~15 s lets that dial
    // complete after its client gave up: the app accepts behind a `timeout`.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 1KiB, count: 3, deadline: 5s}}\n  - {fault: heal}\n  - {wait: 3s}\n",
    );
    let third = alt(&p[2], Some("10.0.2.2:8080"));
    assert_eq!(third.accepted, Tri::Either, "{third:?}");
    assert_eq!(third.identity, Tri::Either, "{third:?}");
}

#[test]
fn a_repetition_refused_by_a_failing_dial_ends_the_step_early() {
    // s9 c86 on the kernel: the later repetitions may join the first one's dial and be
    // refused when it fails (~10 s) instead of timing out at their deadlines: the heal may
    // then land within the first dial's 10 s, which completes behind its client's `timeout`.
    let steps = |count: u32| {
        format!(
            "  - {{fault: {{partition: [node-a, node-b]}}}}\n  - {{connect: {{id: c0, from: a, to: b:8080, send: 1KiB, count: {count}, deadline: 5s}}}}\n  - {{fault: heal}}\n  - {{wait: 3s}}\n"
        )
    };
    let p = world("", &steps(3));
    let first = alt(&p[0], Some("10.0.2.2:8080"));
    assert_eq!(first.outcomes, [Timeout].into(), "{first:?}");
    assert_eq!(first.accepted, Tri::Either, "{first:?}");
    assert_eq!(first.identity, Tri::Either, "{first:?}");
    // With no repetition to join the dial, the step takes its deadlines: the heal comes after
    // 15 s, when the first dial has certainly given up.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 1KiB, deadline: 5s}}\n  - {connect: {id: c1, from: c, to: b:8080, send: 1KiB, deadline: 5s}}\n  - {wait: 10s}\n  - {fault: heal}\n",
    );
    let first = alt(&p[0], Some("10.0.2.2:8080"));
    assert_eq!(first.accepted, Tri::MustNot, "{first:?}");
}

#[test]
fn a_revocation_reaches_the_far_end_a_partition_left_behind() {
    // s9 c305: the client timed out behind the partition; its close never reached the
    // destination proxy, which revokes the connection when its pod is deleted: `denied`.
    let p = world(
        "",
        "  - {connect: {id: c0, from: u, to: b:8080, send: 1KiB, hold: 5s, background: true, deadline: 5s}}\n  - {wait: 1s}\n  - {fault: {partition: [node-a, node-b]}}\n  - {wait: 15s}\n  - {fault: {delete-pod: b}}\n",
    );
    assert!(alt(&p[0], None).outcomes.contains(&Denied));
    // Without the partition the close got through: no revocation to see.
    let p = world(
        "",
        "  - {connect: {id: c0, from: u, to: b:8080, send: 1KiB, hold: 5s, background: true, deadline: 5s}}\n  - {wait: 16s}\n  - {fault: {delete-pod: b}}\n",
    );
    assert!(!alt(&p[0], None).outcomes.contains(&Denied));
}

#[test]
fn an_ok_may_read_back_what_either_app_returns() {
    // s4 c475: the destination's address is reused by a pod serving `close` while a later
    // repetition may not have started: it reads back 1 KiB (echo) or nothing (close).
    let p = world(
        "",
        "  - {connect: {id: c1, from: c, to: u:8080, send: 1KiB, count: 2, hold: 5s, background: true, deadline: 5s}}\n  - {fault: {delete-pod: u}}\n  - {fault: {add-pod: {name: u2, node: node-a, ip: 10.0.1.9, serviceAccount: su, serve: [{port: 8080, app: close}]}}}\n",
    );
    assert_eq!(alt(&p[1], Some("10.0.1.9:8080")).ok_replies(), [0, 1024].into());
    // s15 c47: a heal lets a connection that could only time out read its echo back.
    let p = world(
        "",
        "  - {fault: {partition: [node-a, node-b]}}\n  - {connect: {id: c0, from: a, to: b:8080, send: 32, hold: 20s, background: true, deadline: 5s}}\n  - {fault: heal}\n",
    );
    let e = alt(&p[0], Some("10.0.2.2:8080"));
    assert!(e.outcomes.contains(&Ok) && e.ok_replies().contains(&32), "{e:?}");
}

#[test]
fn a_service_endpoint_added_while_a_connection_may_still_be_connecting() {
    // s18 c438: no endpoint when it started (refused, no route); one added in the same instant
    // may take it.
    let p = world(
        "",
        "  - {connect: {id: c0, from: a, to: s:80, send: 32, hold: 20s, background: true, deadline: 5s}}\n  - {fault: {add-pod: {name: e1, node: node-b, ip: 10.0.2.5, serviceAccount: se, ambient: true, labels: {app: s}, serve: [{port: 8080, app: echo}]}}}\n",
    );
    assert_eq!(outcomes(alt(&p[0], None)), [Refused].into());
    let e = alt(&p[0], Some("10.0.2.5:8080"));
    assert!(e.outcomes.contains(&Ok), "{e:?}");
    assert_eq!(e.paths, [Some(PathKind::Hbone)].into());
}

#[test]
fn a_change_may_route_a_connection_outside_the_mesh_so_no_encryption_is_promised() {
    // s31 c220: the destination deleted, its address added back as a pod outside the mesh; a
    // later repetition may go there `passthrough`, in clear.
    let steps = |extra: &str| {
        format!(
            "  - {{connect: {{id: c0, from: a, to: b:8080, send: 1KiB, count: 2, hold: 2s, background: true, deadline: 5s}}}}\n{extra}"
        )
    };
    let p = world("", &steps(""));
    assert!(p[1].encrypted_between_nodes);
    let p = world(
        "",
        &steps(
            "  - {fault: {delete-pod: b}}\n  - {fault: {add-pod: {name: b2, node: node-b, ip: 10.0.2.2, serviceAccount: sb, serve: [{port: 8080, app: echo}]}}}\n",
        ),
    );
    assert!(alt(&p[1], Some("10.0.2.2:8080")).paths.contains(&Some(PathKind::Passthrough)));
    assert!(!p[1].encrypted_between_nodes);
}

#[test]
fn a_conntrack_flush_while_a_proxy_may_still_be_dialing() {
    // s48 c482: the client's proxy dials from the client's namespace; flushed mid-handshake,
    // the dial may stall until the proxy's 10 s connect timeout: refused, if the client still
    // waits then.
    let steps = |hold: &str| {
        format!(
            "  - {{connect: {{id: c3, from: a, to: c:8080, send: 1KiB, hold: {hold}, background: true, deadline: 5s}}}}\n  - {{fault: {{flush-conntrack: a}}}}\n"
        )
    };
    let p = world("", &steps("20s"));
    assert!(alt(&p[0], Some("10.0.1.3:8080")).outcomes.contains(&Refused));
    let p = world("", &steps("1s"));
    assert!(!alt(&p[0], Some("10.0.1.3:8080")).outcomes.contains(&Refused));
}

#[test]
fn a_rst_across_a_lossy_link_may_be_lost() {
    // s43 c313: an uncaptured client on node-b calls a captured pod on node-a at a closed port
    // across a lossy link; the proxy accepted it on 15006 and its RST was lost, so the client,
    // its bytes and FIN acknowledged, waited for its deadline.
    let v = "    - {name: v, node: node-b, ip: 10.0.2.9, serviceAccount: sv, serve: [{port: 9090, app: reset}]}\n";
    let loss = "  - {fault: {loss: {between: [node-a, node-b], rate: 0.05}}}\n";
    let calls = "  - {connect: {id: plain-closed, from: v, to: a:7070, send: 1KiB, deadline: 30s}}
  - {connect: {id: plain-reset, from: u, to: b:9090, send: 1KiB, deadline: 30s}}
  - {connect: {id: direct-reset, from: u, to: v:9090, send: 1KiB, deadline: 30s}}
  - {connect: {id: direct-closed, from: u, to: v:7070, send: 1KiB, deadline: 30s}}
  - {connect: {id: passthrough-reset, from: a, to: v:9090, send: 1KiB, deadline: 30s}}
  - {connect: {id: hbone-reset, from: a, to: b:9090, send: 1KiB, deadline: 30s}}
";
    let lossy = world(v, &format!("{loss}{calls}"));
    let clean = world(v, calls);
    let expected: [(&str, &[ConnOutcome]); 6] = [
        // A RST after the handshake, across the link: it may be lost.
        ("plain-closed", &[Refused, Timeout]),
        ("plain-reset", &[Reset, Timeout]),
        ("direct-reset", &[Reset, Timeout]),
        ("passthrough-reset", &[Reset, Timeout]),
        // A RST to the SYN: the SYN is retransmitted until one comes back.
        ("direct-closed", &[Refused]),
        // The app's reset crosses the link inside the tunnel, which is reliable.
        ("hbone-reset", &[Reset]),
    ];
    for (id, want) in expected {
        let find = |ps: &[Prediction]| {
            let p = ps.iter().find(|p| p.id == id).unwrap_or_else(|| panic!("{id}"));
            p.alternatives.iter().flat_map(|a| a.expect.outcomes.iter().copied()).collect()
        };
        let got: BTreeSet<ConnOutcome> = find(&lossy);
        assert_eq!(got, want.iter().copied().collect(), "{id} across the lossy link");
        let got: BTreeSet<ConnOutcome> = find(&clean);
        let first = want[0];
        assert_eq!(got, [first].into(), "{id} without loss");
    }
    // The same for a connection to a reset app already holding when the loss starts.
    let p = world(
        v,
        &format!(
            "  - {{connect: {{id: held, from: u, to: b:9090, send: 1KiB, hold: 20s, background: true, deadline: 30s}}}}\n  - {{wait: 1s}}\n{loss}"
        ),
    );
    let e = alt(&p[0], None);
    assert_eq!(outcomes(e), [Reset, Timeout].into(), "{e:?}");
}
