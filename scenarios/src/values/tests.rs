use super::*;

#[test]
fn sizes() {
    assert_eq!(parse_size("1024"), Ok(1024));
    assert_eq!(parse_size("64KiB"), Ok(65536));
    assert_eq!(parse_size("1MiB"), Ok(1 << 20));
    assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("7B"), Ok(7));
    assert_eq!(
        parse_size("1KB").unwrap_err(),
        "unit `KB` is ambiguous; use B, KiB (1024 bytes), MiB or GiB"
    );
    assert!(parse_size("1.5KiB").is_err());
    assert!(parse_size("-1").is_err());
    assert!(parse_size("KiB").is_err());
    assert!(parse_size("99999999999999999999").unwrap_err().contains("too large"));
    assert!(parse_size("17179869184GiB").unwrap_err().contains("too large"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(
        parse_duration("30").unwrap_err(),
        "expected a duration such as 250ms, 30s, 5m or 2h; `30` has no unit"
    );
    assert!(parse_duration("5d").unwrap_err().contains("unknown unit `d`"));
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("99999999999999999h").unwrap_err().contains("too long"));
    for s in ["1h2m3s4ms", "250ms", "0s", "10s"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
}

#[test]
fn names() {
    assert!(check_label("node-a").is_ok());
    assert!(check_label("Node").is_err());
    assert!(check_label("-a").is_err());
    assert!(check_label("a.b").is_err());
    assert!(check_label(&"a".repeat(64)).is_err());
    assert!(check_subdomain("cluster.local").is_ok());
    assert!(check_subdomain("cluster..local").is_err());
    assert!(check_id("cross-node_hbone.v2").is_ok());
    assert!(check_id("a b").is_err());
}

#[test]
fn addresses() {
    assert_eq!(parse_host_ip("10.0.1.5"), Ok(Ipv4Addr::new(10, 0, 1, 5)));
    assert!(parse_host_ip("127.0.0.1").unwrap_err().contains("loopback"));
    assert!(parse_host_ip("169.254.7.127").unwrap_err().contains("link-local"));
    assert!(parse_host_ip("240.0.0.1").unwrap_err().contains("reserved"));
    assert!(parse_host_ip("10.0.1").unwrap_err().contains("not an IPv4"));
    assert!(parse_host_ip("::1").unwrap_err().contains("IPv6"));
    assert_eq!(parse_port("8080"), Ok(8080));
    assert_eq!(parse_port("0").unwrap_err(), "port 0 is out of range 1-65535");
    assert_eq!(parse_port("70000").unwrap_err(), "port 70000 is out of range 1-65535");
}

#[test]
fn references() {
    let r: NameRef = "client.default".parse().unwrap();
    assert_eq!((r.name.as_str(), r.namespace.as_deref()), ("client", Some("default")));
    assert_eq!(r.to_string(), "client.default");
    assert!("a.b.c".parse::<NameRef>().is_err());
    assert_eq!(
        "echo.default:80".parse::<TargetRef>(),
        Ok(TargetRef::Name("echo.default".parse().unwrap(), 80))
    );
    assert_eq!(
        "10.0.2.2:8080".parse::<TargetRef>(),
        Ok(TargetRef::Ip(Ipv4Addr::new(10, 0, 2, 2), 8080))
    );
    assert!("echo".parse::<TargetRef>().unwrap_err().contains("has no port"));
    assert!("echo:0".parse::<TargetRef>().is_err());
    let p: NodePair = "node-a -> node-b".parse().unwrap();
    assert_eq!(p.to_string(), "node-a->node-b");
    assert!("node-a-node-b".parse::<NodePair>().is_err());
    assert_eq!(parse_proxy_ref("proxy@node-b"), Ok("node-b".to_string()));
    assert!(parse_proxy_ref("ztunnel@node-b").is_err());
}

#[test]
fn tuples_and_rules() {
    let t: TuplePattern = "10.0.1.5:* -> 10.96.0.10:80".parse().unwrap();
    assert!(t.src.matches(Ipv4Addr::new(10, 0, 1, 5), 41234));
    assert!(!t.dst.matches(Ipv4Addr::new(10, 96, 0, 10), 81));
    assert_eq!(t.to_string(), "10.0.1.5:* -> 10.96.0.10:80");
    assert!("10.0.1.5 -> 10.96.0.10:80".parse::<TuplePattern>().is_err());
    let r: RuleRef = "nat/ISTIO_OUTPUT/6".parse().unwrap();
    assert_eq!(r.to_string(), "nat/ISTIO_OUTPUT/6");
    assert!("nat/ISTIO_OUTPUT/0".parse::<RuleRef>().is_err());
    assert!("natx/ISTIO_OUTPUT/1".parse::<RuleRef>().is_err());
    assert!("nat/ISTIO_OUTPUT".parse::<RuleRef>().is_err());
}

#[test]
fn rule_positions_count_per_chain_in_the_generated_rules() {
    let text = crate::rules::InpodRules::default().restore_text();
    let rules = rule_positions(&text);
    let find = |r: &str| rules.iter().find(|(k, _)| k.to_string() == r).map(|(_, t)| t.clone());
    assert!(find("nat/ISTIO_OUTPUT/6").unwrap().contains("--to-ports 15001"));
    assert!(find("nat/ISTIO_PRERT/2").unwrap().contains("--to-ports 15006"));
    assert!(find("nat/ISTIO_OUTPUT/7").is_none());
    assert!(find("nat/OUTPUT/1").unwrap().contains("-j ISTIO_OUTPUT"));
}
