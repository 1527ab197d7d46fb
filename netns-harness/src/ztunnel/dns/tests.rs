use std::net::{Ipv4Addr, SocketAddr};

use ambient_proxy::dns::wire::Rcode;
use ambient_proxy::events::{DnsResult, ProxyEvent};
use ambient_scenarios::outcome::DnsTransport;
use ambient_scenarios::traffic::dns::{LookupEnd, LookupReport};

use super::*;

/// ztunnel's output in dns-service-name then dns-forward-external (times removed), after a
/// line of its DNS server that is no access-log line.
const LINES: &str = include_str!("testdata/dns-lines.jsonl");

fn lines() -> Vec<String> {
    LINES.lines().map(str::to_string).collect()
}

fn ctx() -> Context {
    Context::of_catalog_scenario("dns-service-name")
}

fn answer(port: u16, over: DnsTransport, rcode: Rcode, ips: &[[u8; 4]]) -> LookupReport {
    LookupReport {
        over,
        clients: vec![(SocketAddr::from(([10, 0, 1, 2], port)), over)],
        end: LookupEnd::Answer {
            rcode,
            addresses: ips.iter().map(|o| Ipv4Addr::from(*o)).collect(),
        },
    }
}

const NS: &str = "203.0.113.53:53";

/// A window every line of the test data lies in (the times are not what those tests are about).
const ALWAYS: (u64, u64) = (0, u64::MAX);

#[test]
fn log_times_are_microseconds_since_the_epoch() {
    assert_eq!(log_time_us("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(log_time_us("2026-12-06T00:01:52.605336Z"), Some(1_796_515_312_605_336));
    // A leap day, a short fraction.
    assert_eq!(log_time_us("2000-02-29T23:59:59.5Z"), Some(951_868_799_500_000));
    for bad in ["2026-12-06 00:01:52Z", "2026-13-06T00:01:52Z", "2026-12-06T00:01:52", "x"] {
        assert_eq!(log_time_us(bad), None, "{bad}");
    }
}

#[test]
fn a_lookup_ztunnel_never_saw_does_not_take_a_later_line() {
    // dns-proxy-down: `before` answered, ztunnel killed, `down-udp` refused by the kernel
    // (nothing logged), ztunnel restarted, `after` answered. Both lines are example.com.
    let lines: Vec<String> =
        include_str!("testdata/dns-proxy-down.jsonl").lines().map(str::to_string).collect();
    let udp = DnsTransport::Udp;
    let ok = |port| answer(port, udp, Rcode::NOERROR, &[[203, 0, 113, 10]]);
    let (before, after) = (ok(43000), ok(43002));
    let down = LookupReport {
        over: udp,
        clients: vec![(SocketAddr::from(([10, 0, 1, 2], 43001)), udp)],
        end: LookupEnd::Refused,
    };
    let at = |s: &str| log_time_us(&format!("2026-12-06T00:04:{s}Z")).unwrap();
    let ask = |report, window_us| Asked {
        pod: "client",
        namespace: "default",
        name: "example.com",
        report,
        window_us,
    };
    let asked = [
        ask(&before, (at("49.600000"), at("49.630000"))),
        ask(&down, (at("49.700000"), at("49.700500"))),
        ask(&after, (at("49.800000"), at("49.830000"))),
    ];
    let events = tie_lookups("node-a", &lines, &asked, Some(NS.parse().unwrap()), &ctx());
    let ports: Vec<u16> =
        events.iter().filter_map(|e| e.dns_client()).map(|(c, _)| c.port()).collect();
    assert_eq!(ports, [43000, 43002]);
    // Without the times the refused lookup would have taken the restarted ztunnel's line.
    let timeless: Vec<Asked<'_>> =
        asked.iter().map(|a| Asked { window_us: ALWAYS, ..*a }).collect();
    let events = tie_lookups("node-a", &lines, &timeless, None, &ctx());
    let ports: Vec<u16> =
        events.iter().filter_map(|e| e.dns_client()).map(|(c, _)| c.port()).collect();
    assert_eq!(ports, [43000, 43001]);
}

#[test]
fn the_access_log_lines_parse_and_nothing_else_does() {
    let parsed: Vec<DnsLine> = lines().iter().filter_map(|l| parse(l)).collect();
    assert_eq!(parsed.len(), 10, "the DNS server's own line is not an access-log line");
    let handled: Vec<(&str, &Handling)> =
        parsed.iter().map(|l| (l.domain.as_str(), &l.handling)).collect();
    assert_eq!(handled[0], ("echo.", &Handling::Answered));
    assert_eq!(handled[5], ("cart.", &Handling::ForwardedNoRecords));
    assert_eq!(handled[6], ("example.com.", &Handling::Forwarded));
    assert_eq!(handled[7], ("multi.example.com.", &Handling::Forwarded), "logged lower-case");
    assert!(parsed.iter().all(|l| l.workload == "client" && l.namespace == "default"));
    assert!(parsed.iter().all(|l| l.qtype == "A"));
    // Another forwarding error is a failure, with ztunnel's words.
    let failed = r#"{"time":"2026-12-06T00:01:52.605336Z","scope":"dns","src.workload":"client","src.namespace":"default","query":"A","domain":"x.","result":"forwarding failed (request timed out)","endpoints":0}"#;
    assert_eq!(
        parse(failed).unwrap().handling,
        Handling::ForwardFailed("request timed out".into())
    );
    assert_eq!(parse(r#"{"scope":"access","message":"connection opened"}"#), None);
    assert_eq!(parse("not json"), None);
}

/// A dns event's port, transport, name, result, rcode, service and upstream.
type Row<'a> = (u16, &'a str, &'a str, DnsResult, &'a str, Option<&'a str>, Option<SocketAddr>);

#[test]
fn lookups_take_the_first_line_of_their_pod_and_name_in_order() {
    let udp = DnsTransport::Udp;
    let short = answer(40001, udp, Rcode::NOERROR, &[[10, 96, 0, 10]]);
    let fqdn_tcp = answer(40002, DnsTransport::Tcp, Rcode::NOERROR, &[[10, 96, 0, 10]]);
    let fqdn = answer(40003, udp, Rcode::NOERROR, &[[10, 96, 0, 10]]);
    let elsewhere = answer(40004, udp, Rcode::NXDOMAIN, &[]);
    let multi = answer(40005, udp, Rcode::NOERROR, &[[203, 0, 113, 11], [203, 0, 113, 12]]);
    let other_pod = answer(40006, udp, Rcode::NOERROR, &[[10, 96, 0, 10]]);
    let ask = |name, report| Asked {
        pod: "client",
        namespace: "default",
        name,
        report,
        window_us: ALWAYS,
    };
    let asked = [
        ask("echo", &short),
        ask("echo.default.svc.cluster.local.", &fqdn),
        ask("echo.default.svc.cluster.local", &fqdn_tcp),
        ask("cart", &elsewhere),
        ask("Multi.Example.COM", &multi),
        Asked {
            pod: "legacy",
            namespace: "default",
            name: "echo",
            report: &other_pod,
            window_us: ALWAYS,
        },
    ];
    let events = tie_lookups("node-a", &lines(), &asked, Some(NS.parse().unwrap()), &ctx());
    let got: Vec<Row<'_>> = events
        .iter()
        .map(|e| match e {
            ProxyEvent::Dns {
                client, transport, name, result, rcode, service, upstream, ..
            } => (
                client.port(),
                transport.as_str(),
                name.as_str(),
                *result,
                rcode.as_str(),
                service.as_deref(),
                *upstream,
            ),
            other => panic!("not a dns event: {other:?}"),
        })
        .collect();
    let ns = Some(NS.parse().unwrap());
    assert_eq!(
        got,
        [
            (40001, "udp", "echo", DnsResult::Answered, "NOERROR", Some("echo.default"), None),
            // The two FQDN lines, in order: the UDP lookup started first.
            (
                40003,
                "udp",
                "echo.default.svc.cluster.local",
                DnsResult::Answered,
                "NOERROR",
                Some("echo.default"),
                None
            ),
            (
                40002,
                "tcp",
                "echo.default.svc.cluster.local",
                DnsResult::Answered,
                "NOERROR",
                Some("echo.default"),
                None
            ),
            // "no records found" from the upstream is a relayed NXDOMAIN, not a failure.
            (40004, "udp", "cart", DnsResult::Forwarded, "NXDOMAIN", None, ns),
            // Matched whatever the case; named as the lookup spelled it.
            (40005, "udp", "Multi.Example.COM", DnsResult::Forwarded, "NOERROR", None, ns),
        ],
        "no line is about the legacy pod"
    );
    let ProxyEvent::Dns { answers, .. } = &events[4] else { unreachable!() };
    assert_eq!(answers, &[Ipv4Addr::new(203, 0, 113, 11), Ipv4Addr::new(203, 0, 113, 12)]);
}

#[test]
fn a_line_is_taken_once_and_a_lookup_without_a_line_gets_no_event() {
    let udp = DnsTransport::Udp;
    let reports: Vec<LookupReport> =
        (0..4).map(|i| answer(41000 + i, udp, Rcode::NOERROR, &[[203, 0, 113, 10]])).collect();
    // example.com. is logged twice: the third lookup of it has no line (a lookup ztunnel did
    // not log must not borrow another's).
    let asked: Vec<Asked<'_>> = reports[..3]
        .iter()
        .map(|r| Asked {
            pod: "client",
            namespace: "default",
            name: "example.com",
            report: r,
            window_us: ALWAYS,
        })
        .collect();
    let events = tie_lookups("node-a", &lines(), &asked, None, &ctx());
    let ports: Vec<u16> =
        events.iter().filter_map(|e| e.dns_client()).map(|(c, _)| c.port()).collect();
    assert_eq!(ports, [41000, 41001]);
    // A killed lookup (no socket) is not tied.
    let killed = LookupReport::killed();
    let none = [Asked {
        pod: "client",
        namespace: "default",
        name: "echo",
        report: &killed,
        window_us: ALWAYS,
    }];
    assert!(tie_lookups("node-a", &lines(), &none, None, &ctx()).is_empty());
    // A client that got no response: no response code is invented.
    let timed_out = LookupReport {
        over: udp,
        clients: vec![(SocketAddr::from(([10, 0, 1, 2], 42000)), udp)],
        end: LookupEnd::Timeout,
    };
    let asked = [Asked {
        pod: "client",
        namespace: "default",
        name: "echo",
        report: &timed_out,
        window_us: ALWAYS,
    }];
    let events = tie_lookups("node-a", &lines(), &asked, None, &ctx());
    assert!(matches!(&events[..], [ProxyEvent::Dns { rcode, answers, .. }]
        if rcode == "no response" && answers.is_empty()));
}
