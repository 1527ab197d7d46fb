use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::dns::wire::{Flags, Question, RData};
use crate::mesh::{MeshSpec, Service, Workload};

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const CLIENT: &str = "10.0.1.5";

/// A client in `default`, `echo` in `default` (10.96.0.10) and `api` in `shop` (10.96.0.20).
fn mesh() -> MeshState {
    let spec = MeshSpec {
        workloads: vec![
            Workload::new("client", "node-a", ip(CLIENT)),
            Workload::new("cart", "node-a", ip("10.0.1.6")).namespace("shop"),
        ],
        services: vec![
            Service::new("echo", ip("10.96.0.10")).port(80, 8080),
            Service::new("api", ip("10.96.0.20")).namespace("shop").port(80, 8080),
        ],
        ..MeshSpec::default()
    };
    MeshState::new(spec).unwrap()
}

fn ask(name: &str, qtype: u16, from: &str) -> Decision {
    let q = Message::query(1, n(name), qtype);
    decide(&q, ip(from), &mesh(), &n("cluster.local"))
}

fn answered(d: &Decision) -> Vec<(String, String)> {
    let Decision::Answer { records, .. } = d else { panic!("not answered: {d:?}") };
    records
        .iter()
        .map(|r| {
            let data = match &r.data {
                RData::A(a) => a.to_string(),
                RData::Cname(c) => format!("CNAME {c}"),
                RData::Other(_) => "?".into(),
            };
            (r.name.to_string(), data)
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn every_form_of_a_service_name_gets_its_vip() {
    for name in [
        "echo.default.svc.cluster.local",
        "echo.default.svc.cluster.local.",
        "ECHO.Default.SVC.cluster.local",
        "echo.default.svc",
        "echo.default",
        "echo",
    ] {
        let d = ask(name, rtype::A, CLIENT);
        let want = name.strip_suffix('.').unwrap_or(name);
        assert_eq!(answered(&d), pairs(&[(want, "10.96.0.10")]), "{name}");
        assert!(matches!(&d, Decision::Answer { service, .. } if service == "echo.default"));
    }
}

#[test]
fn a_short_name_is_read_in_the_clients_namespace() {
    assert_eq!(answered(&ask("api", rtype::A, "10.0.1.6")), pairs(&[("api", "10.96.0.20")]));
    assert_eq!(ask("api", rtype::A, CLIENT), Decision::Forward, "no api in default");
    assert_eq!(answered(&ask("api.shop", rtype::A, CLIENT)), pairs(&[("api.shop", "10.96.0.20")]));
    assert_eq!(ask("echo", rtype::A, "10.0.1.6"), Decision::Forward, "no echo in shop");
}

#[test]
fn a_name_a_stub_resolver_appended_a_search_domain_to_gets_a_cname() {
    // `echo.default` asked with the first search domain (`default.svc.cluster.local`) appended.
    let d = ask("echo.default.default.svc.cluster.local", rtype::A, CLIENT);
    assert_eq!(
        answered(&d),
        pairs(&[
            ("echo.default.default.svc.cluster.local", "CNAME echo.default"),
            ("echo.default", "10.96.0.10"),
        ])
    );
    // `api.shop` with `svc.cluster.local` appended, from any namespace.
    let d = ask("api.shop.svc.svc.cluster.local", rtype::A, CLIENT);
    assert_eq!(
        answered(&d),
        pairs(&[
            ("api.shop.svc.svc.cluster.local", "CNAME api.shop.svc"),
            ("api.shop.svc", "10.96.0.20")
        ])
    );
    // `echo` with `cluster.local` appended.
    let d = ask("echo.cluster.local", rtype::A, CLIENT);
    assert_eq!(
        answered(&d),
        pairs(&[("echo.cluster.local", "CNAME echo"), ("echo", "10.96.0.10")])
    );
}

#[test]
fn aaaa_for_a_service_is_an_empty_answer_and_other_types_are_forwarded() {
    let d = ask("echo.default.svc.cluster.local", rtype::AAAA, CLIENT);
    assert_eq!(d, Decision::Answer { records: vec![], service: "echo.default".into() });
    assert_eq!(ask("echo.default.svc.cluster.local", 16, CLIENT), Decision::Forward, "TXT");
}

#[test]
fn names_outside_the_mesh_are_forwarded_never_denied() {
    for name in [
        "example.com",
        "www.example.com",
        "nope.default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "default.svc",
        "a.b.c.d.e.f",
    ] {
        assert_eq!(ask(name, rtype::A, CLIENT), Decision::Forward, "{name}");
    }
}

#[test]
fn what_the_proxy_refuses() {
    assert!(matches!(
        ask("echo", rtype::A, "10.0.9.9"),
        Decision::Fail { rcode: Rcode::SERVFAIL, .. }
    ));
    let mut two = Message::query(1, n("echo"), rtype::A);
    two.questions.push(two.questions[0].clone());
    let none = Message { questions: vec![], ..two.clone() };
    let resp = Message {
        flags: Flags { response: true, ..Flags::default() },
        ..Message::query(1, n("echo"), 1)
    };
    let notify = Message {
        flags: Flags { opcode: 4, ..Flags::default() },
        ..Message::query(1, n("echo"), 1)
    };
    let (m, d) = (mesh(), n("cluster.local"));
    for (q, rcode) in [
        (two, Rcode::FORMERR),
        (none, Rcode::FORMERR),
        (resp, Rcode::NOTIMP),
        (notify, Rcode::NOTIMP),
    ] {
        assert!(
            matches!(decide(&q, ip(CLIENT), &m, &d), Decision::Fail { rcode: r, .. } if r == rcode),
            "{q:?}"
        );
    }
    let _ = Question { name: n("x"), qtype: 1, qclass: 1 };
}

#[test]
fn aliases_come_in_order_without_repeats() {
    let names = |name: &str| -> Vec<String> {
        aliases(&n(name), "default", &n("cluster.local"))
            .iter()
            .map(|a| a.name.to_string())
            .collect()
    };
    assert_eq!(names("echo"), ["echo", "echo.default.svc.cluster.local"]);
    assert_eq!(
        names("echo.shop"),
        ["echo.shop", "echo.shop.svc.cluster.local", "echo.shop.default.svc.cluster.local"]
    );
    assert_eq!(names("a.b.svc"), ["a.b.svc", "a.b.svc.cluster.local", "a.b.svc.svc.cluster.local"]);
    assert_eq!(
        names("echo.default.svc.cluster.local"),
        [
            "echo.default.svc.cluster.local",
            "echo",
            "echo.default",
            "echo.default.default.svc.cluster.local",
            "echo.default.svc",
            "echo.default.svc.svc.cluster.local",
        ],
    );
    let a = aliases(&n("echo.cluster.local"), "default", &n("cluster.local"));
    let short = a.iter().find(|x| x.name == n("echo")).unwrap();
    assert_eq!(short.stripped, Some(n("echo")));
    assert_eq!(a[1].name, n("echo.cluster.local.svc.cluster.local"));
    assert_eq!(a[0].stripped, None);
    let _ = Ipv4Addr::LOCALHOST;
}
