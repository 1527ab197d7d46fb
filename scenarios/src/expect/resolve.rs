//! What a `resolve` step expects of its lookup, and the check (pure, like the rest of
//! [`crate::expect`]).
//!
//! `expect: {answer: 10.96.0.10}` — the lookup answered (NOERROR) with exactly these A
//! records, in this order (`answer: []`: no records); `nxdomain: true` — the name does not
//! exist (`false`: any other outcome); `forwarded: true` — the client's proxy asked the DNS
//! server (`false`: it did not: answered itself, or the lookup went elsewhere); `outcome` and
//! `path` name the Outcome's fields directly.

use std::net::Ipv4Addr;

use super::check::Failure;
use crate::diag::{At, Located};
use crate::outcome::{Resolution, ResolveOutcome, ResolvePath};

/// The expectations of one lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolveExpect {
    pub at: At,
    pub fields: Vec<Located<ResolveField>>,
}

/// One checked property of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveField {
    Outcome(ResolveOutcome),
    /// Answered with exactly these addresses.
    Answer(Vec<Ipv4Addr>),
    Nxdomain(bool),
    Forwarded(bool),
    Path(Option<ResolvePath>),
}

impl ResolveField {
    /// Every key a resolve expectation may use.
    pub const KEYS: &'static [&'static str] =
        &["answer", "nxdomain", "forwarded", "outcome", "path"];

    fn expected(&self) -> String {
        let ips = |a: &[Ipv4Addr]| {
            let v: Vec<String> = a.iter().map(ToString::to_string).collect();
            format!("[{}]", v.join(", "))
        };
        match self {
            ResolveField::Outcome(o) => o.to_string(),
            ResolveField::Answer(a) => format!("an answer {}", ips(a)),
            ResolveField::Nxdomain(true) => "nxdomain".into(),
            ResolveField::Nxdomain(false) => "not nxdomain".into(),
            ResolveField::Forwarded(true) => "forwarded by the proxy".into(),
            ResolveField::Forwarded(false) => "not forwarded by the proxy".into(),
            ResolveField::Path(p) => p.map_or("path null".into(), |p| format!("path {p}")),
        }
    }

    /// `None` if `r` shows what this expects; otherwise what it shows instead.
    fn mismatch(&self, r: &Resolution) -> Option<String> {
        let outcome = || match (&r.error, r.outcome) {
            (Some(msg), ResolveOutcome::Error) => format!("error ({msg})"),
            _ => r.outcome.to_string(),
        };
        let ips = |a: &[Ipv4Addr]| {
            let v: Vec<String> = a.iter().map(ToString::to_string).collect();
            format!("[{}]", v.join(", "))
        };
        let path = || r.path.map_or("path null".into(), |p| format!("path {p}"));
        let (ok, actual) = match self {
            ResolveField::Outcome(o) => (r.outcome == *o, outcome()),
            ResolveField::Answer(a) => {
                let ok = r.outcome == ResolveOutcome::Answer && r.answers == *a;
                let actual = if r.outcome == ResolveOutcome::Answer {
                    format!("an answer {}", ips(&r.answers))
                } else {
                    outcome()
                };
                (ok, actual)
            }
            ResolveField::Nxdomain(want) => {
                ((r.outcome == ResolveOutcome::Nxdomain) == *want, outcome())
            }
            ResolveField::Forwarded(want) => {
                ((r.path == Some(ResolvePath::Forwarded)) == *want, path())
            }
            ResolveField::Path(p) => (r.path == *p, path()),
        };
        (!ok).then_some(actual)
    }
}

/// Checks the lookups of one step (`expected_count` of them) against its expectations.
pub fn check_resolutions(
    file: &str,
    id: &str,
    e: &ResolveExpect,
    records: &[&Resolution],
    expected_count: usize,
) -> Vec<Failure> {
    let mut out = Vec::new();
    if records.len() != expected_count {
        out.push(Failure::new(
            file,
            &e.at,
            "",
            format!("{expected_count} lookup(s) with id {id:?}"),
            records.len().to_string(),
        ));
    }
    for f in &e.fields {
        for (i, r) in records.iter().enumerate() {
            if let Some(actual) = f.value.mismatch(r) {
                let prefix = if records.len() == 1 {
                    String::new()
                } else {
                    format!("lookup {} of {}: ", i + 1, records.len())
                };
                out.push(Failure::new(file, &f.at, &prefix, f.value.expected(), actual));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Pos;
    use crate::outcome::DnsTransport;

    fn r(outcome: ResolveOutcome, answers: &[&str], path: Option<ResolvePath>) -> Resolution {
        Resolution {
            id: "r".into(),
            from: "client.default".into(),
            name: "echo".into(),
            over: DnsTransport::Udp,
            outcome,
            error: None,
            answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
            path,
            proxy_events: vec![],
        }
    }

    fn e(fields: Vec<ResolveField>) -> ResolveExpect {
        let at = At::new(Pos { line: 3, col: 5 }, crate::diag::KeyPath::root());
        ResolveExpect {
            at: at.clone(),
            fields: fields.into_iter().map(|f| Located::new(f, at.clone())).collect(),
        }
    }

    #[test]
    fn answers_nxdomain_and_forwarding_are_checked() {
        let vip = r(ResolveOutcome::Answer, &["10.96.0.10"], Some(ResolvePath::Proxy));
        let ok = e(vec![
            ResolveField::Answer(vec!["10.96.0.10".parse().unwrap()]),
            ResolveField::Forwarded(false),
            ResolveField::Nxdomain(false),
            ResolveField::Path(Some(ResolvePath::Proxy)),
            ResolveField::Outcome(ResolveOutcome::Answer),
        ]);
        assert!(check_resolutions("f.yaml", "r", &ok, &[&vip], 1).is_empty());
        let nx = r(ResolveOutcome::Nxdomain, &[], Some(ResolvePath::Forwarded));
        let fails = check_resolutions("f.yaml", "r", &ok, &[&nx], 1);
        let msgs: Vec<String> = fails.iter().map(|f| f.message.clone()).collect();
        assert_eq!(
            msgs,
            [
                "expected an answer [10.96.0.10], got nxdomain",
                "expected not forwarded by the proxy, got path forwarded",
                "expected not nxdomain, got nxdomain",
                "expected path proxy, got path forwarded",
                "expected answer, got nxdomain",
            ]
        );
        assert_eq!(
            fails[0].to_string(),
            "f.yaml:3:5: expected an answer [10.96.0.10], got nxdomain"
        );
        let wrong_ip = e(vec![ResolveField::Answer(vec!["10.96.0.11".parse().unwrap()])]);
        let f = check_resolutions("f.yaml", "r", &wrong_ip, &[&vip], 1);
        assert_eq!(f[0].message, "expected an answer [10.96.0.11], got an answer [10.96.0.10]");
        let missing = check_resolutions("f.yaml", "r", &e(vec![]), &[], 1);
        assert_eq!(missing[0].message, "expected 1 lookup(s) with id \"r\", got 0");
        let mut err = r(ResolveOutcome::Error, &[], None);
        err.error = Some("rcode NOTIMP".into());
        let f =
            check_resolutions("f.yaml", "r", &e(vec![ResolveField::Nxdomain(true)]), &[&err], 1);
        assert_eq!(f[0].message, "expected nxdomain, got error (rcode NOTIMP)");
    }
}
