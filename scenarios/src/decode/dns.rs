//! DNS in the document: an external host's `dns:` block, the `resolve` step and its `expect`.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::ast::{DnsDoc, ResolveDoc};
use super::{Dec, Field};
use crate::diag::{Located, list};
use crate::expect::{ResolveExpect, ResolveField};
use crate::outcome::{DnsTransport, ResolveOutcome, ResolvePath};
use crate::values::{self, NameRef};

/// Default deadline of a lookup (longer than the proxy's 5 s upstream timeout, so a lookup the
/// proxy fails is seen failed, not timed out).
pub(crate) const DEFAULT_RESOLVE_DEADLINE: Duration = Duration::from_secs(10);
/// Records one DNS server may hold, and addresses one name may have.
const MAX_RECORDS: usize = 1000;
const MAX_ADDRESSES: usize = 32;

/// `dns: {records: {name: ip | [ip, …]}}`.
pub(super) fn dns_block(d: &mut Dec<'_>, f: &Field<'_>) -> Option<DnsDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, &["records"])?;
    let rf = d.req(&m, "records")?;
    let mut records: Vec<Located<(String, Vec<Ipv4Addr>)>> = Vec::new();
    for (key, value) in d.pairs(&rf).unwrap_or_default() {
        let name = match values::parse_dns_name(&key.value) {
            Ok(n) => n,
            Err(e) => {
                d.err(&key.at, e);
                continue;
            }
        };
        if let Some(first) = records.iter().find(|r| r.value.0.eq_ignore_ascii_case(&name)) {
            let msg = format!(
                "{name:?} has records twice (first at {}; names are compared without case)",
                first.at.pos
            );
            d.err(&key.at, msg);
            continue;
        }
        let items = match value.node.as_text() {
            Some(_) => vec![value.clone()],
            None => d.list(&value).unwrap_or_default(),
        };
        if items.is_empty() {
            d.err(&value.at, "a name needs at least one address");
            continue;
        }
        if items.len() > MAX_ADDRESSES {
            d.err(
                &value.at,
                format!("{} addresses; a name has at most {MAX_ADDRESSES}", items.len()),
            );
            continue;
        }
        let ips: Vec<Ipv4Addr> =
            items.iter().filter_map(|i| d.parse(i, values::parse_ipv4)).collect();
        if ips.len() == items.len() {
            records.push(Located::new((name, ips), key.at));
        }
    }
    if records.len() > MAX_RECORDS {
        d.err(
            &rf.at,
            format!("{} records; a DNS server holds at most {MAX_RECORDS}", records.len()),
        );
    }
    (d.diags.error_count() == before).then(|| DnsDoc { at: f.at.clone(), records })
}

const RESOLVE_KEYS: &[&str] = &["id", "from", "name", "over", "deadline", "expect"];

/// `resolve: {id, from, name, over: udp|tcp, deadline, expect}`.
pub(super) fn resolve(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ResolveDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, RESOLVE_KEYS)?;
    let id = m.get("id").map(|f| {
        d.parse(&f, |t| values::check_id(t).map(|()| t.to_string()))
            .map(|v| Located::new(v, f.at.clone()))
    });
    let from = d.req(&m, "from").and_then(|f| {
        d.parse(&f, |t| {
            t.parse::<NameRef>().map_err(|e| format!("expected a pod or host name; {e}"))
        })
        .map(|v| Located::new(v, f.at))
    });
    let name = d
        .req(&m, "name")
        .and_then(|f| d.parse(&f, values::parse_dns_name).map(|v| Located::new(v, f.at)));
    let over = m
        .get("over")
        .map_or(Some(DnsTransport::Udp), |f| d.parse(&f, |t| t.parse::<DnsTransport>()));
    let deadline = m.get("deadline").map_or(Some(DEFAULT_RESOLVE_DEADLINE), |f| d.duration(&f));
    if deadline == Some(Duration::ZERO) {
        d.err(&m.get("deadline")?.at, "a deadline of 0s would time out every lookup");
    }
    let expect = m.get("expect").map(|f| resolve_expect(d, &f));
    if d.diags.error_count() > before {
        return None;
    }
    Some(ResolveDoc {
        id: id.flatten(),
        from: from?,
        name: name?,
        over: over?,
        deadline: deadline?,
        expect: expect.flatten(),
    })
}

/// `{answer: ip | [ip, …], nxdomain: bool, forwarded: bool, outcome: …, path: …}`.
fn resolve_expect(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ResolveExpect> {
    let before = d.diags.error_count();
    let pairs = d.pairs(f)?;
    let mut fields = Vec::new();
    for (key, v) in pairs {
        let field = match key.value.as_str() {
            "answer" => {
                let items = match v.node.as_text() {
                    Some(_) => Some(vec![v.clone()]),
                    None => d.list(&v),
                };
                items.and_then(|items| {
                    let ips: Vec<Ipv4Addr> =
                        items.iter().filter_map(|i| d.parse(i, values::parse_ipv4)).collect();
                    (ips.len() == items.len()).then_some(ResolveField::Answer(ips))
                })
            }
            "nxdomain" => d.boolean(&v).map(ResolveField::Nxdomain),
            "forwarded" => d.boolean(&v).map(ResolveField::Forwarded),
            "outcome" => d.parse(&v, |t| t.parse::<ResolveOutcome>()).map(ResolveField::Outcome),
            "path" if v.node.is_null() => Some(ResolveField::Path(None)),
            "path" => {
                d.parse(&v, |t| t.parse::<ResolvePath>()).map(|p| ResolveField::Path(Some(p)))
            }
            other => {
                let msg =
                    format!("unknown key `{other}`; allowed keys are {}", list(ResolveField::KEYS));
                d.err(&key.at, msg);
                None
            }
        };
        if let Some(field) = field {
            fields.push(Located::new(field, v.at));
        }
    }
    (d.diags.error_count() == before).then(|| ResolveExpect { at: f.at.clone(), fields })
}
