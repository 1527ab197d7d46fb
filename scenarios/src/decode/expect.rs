//! Expect blocks: top-level `expect`, `check` steps and a connect step's `expect`.

use super::ast::ExpectDoc;
use super::{Dec, Field};
use crate::diag::Located;
use crate::expect::{ConnExpect, ConnField, CtPattern};
use crate::outcome::{ConnOutcome, PathKind, Proto, TcpState};
use crate::values::{self, NameRef, NodePair, RuleRef, TuplePattern};

const EXPECT_KEYS: &[&str] = &["connections", "tunnels", "conntrack", "counters"];

/// Largest count an expectation may name (tunnels, packets).
const MAX_COUNT: u64 = u32::MAX as u64;

pub(super) fn expect_block(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ExpectDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, EXPECT_KEYS)?;
    let mut out = ExpectDoc { at: f.at.clone(), ..ExpectDoc::default() };
    if let Some(cf) = m.get("connections") {
        for (id, value) in d.pairs(&cf).unwrap_or_default() {
            if let Err(e) = values::check_id(&id.value) {
                d.err(&id.at, e);
                continue;
            }
            if let Some(ce) = conn_expect(d, &value) {
                out.connections.push((id, ce));
            }
        }
    }
    if let Some(tf) = m.get("tunnels") {
        for (key, value) in d.pairs(&tf).unwrap_or_default() {
            let pair = match key.value.parse::<NodePair>() {
                Ok(p) => Some(p),
                Err(e) => {
                    d.err(&key.at, e);
                    None
                }
            };
            let n = d.uint(&value, 0, MAX_COUNT);
            if let (Some(pair), Some(n)) = (pair, n) {
                out.tunnels.push(Located::new((pair, n), key.at));
            }
        }
    }
    if let Some(cf) = m.get("conntrack") {
        for (key, value) in d.pairs(&cf).unwrap_or_default() {
            let who = name_ref(d, &key);
            let entries = d
                .list(&value)
                .map(|items| items.iter().filter_map(|i| ct_pattern(d, i)).collect::<Vec<_>>());
            if let (Some(who), Some(entries)) = (who, entries) {
                out.conntrack.push((who, Located::new(entries, value.at)));
            }
        }
    }
    if let Some(cf) = m.get("counters") {
        for (key, value) in d.pairs(&cf).unwrap_or_default() {
            let who = name_ref(d, &key);
            let mut rules = Vec::new();
            for (rule, n) in d.pairs(&value).unwrap_or_default() {
                let parsed = rule.value.parse::<RuleRef>().map_err(|e| d.err(&rule.at, e)).ok();
                let n = d.uint(&n, 0, MAX_COUNT);
                if let (Some(r), Some(n)) = (parsed, n) {
                    rules.push(Located::new((r, n), rule.at));
                }
            }
            if let Some(who) = who {
                out.counters.push((who, rules));
            }
        }
    }
    (d.diags.error_count() == before).then_some(out)
}

fn name_ref(d: &mut Dec<'_>, key: &Located<String>) -> Option<Located<NameRef>> {
    match key.value.parse::<NameRef>() {
        Ok(r) => Some(Located::new(r, key.at.clone())),
        Err(e) => {
            d.err(&key.at, format!("expected a pod or host name; {e}"));
            None
        }
    }
}

/// `{outcome: ok, path: hbone, server_peer: 10.0.1.5, …}`.
pub(super) fn conn_expect(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ConnExpect> {
    let before = d.diags.error_count();
    let pairs = d.pairs(f)?;
    let mut fields = Vec::new();
    for (key, v) in pairs {
        let null = v.node.is_null();
        let field = match key.value.as_str() {
            "outcome" => d.parse(&v, |t| t.parse::<ConnOutcome>()).map(ConnField::Outcome),
            "path" if null => Some(ConnField::Path(None)),
            "path" => d.parse(&v, |t| t.parse::<PathKind>()).map(|p| ConnField::Path(Some(p))),
            "sent" => d.size(&v).map(ConnField::Sent),
            "received" => d.size(&v).map(ConnField::Received),
            "intact" => d.boolean(&v).map(ConnField::Intact),
            "reused" => d.boolean(&v).map(ConnField::Reused),
            "server_peer" if null => Some(ConnField::ServerPeer(None)),
            "server_peer" => {
                d.parse(&v, values::parse_ipv4).map(|ip| ConnField::ServerPeer(Some(ip)))
            }
            "server_identity" if null => Some(ConnField::ServerIdentity(None)),
            "server_identity" => d.text(&v).map(|s| ConnField::ServerIdentity(Some(s))),
            "tunnel" if null => Some(ConnField::Tunnel(None)),
            "tunnel" => d.parse(&v, |t| t.parse::<NodePair>()).map(|p| ConnField::Tunnel(Some(p))),
            other => {
                let msg = format!(
                    "unknown key `{other}`; allowed keys are {}",
                    crate::diag::list(ConnField::KEYS)
                );
                d.err(&key.at, msg);
                None
            }
        };
        if let Some(field) = field {
            fields.push(Located::new(field, v.at));
        }
    }
    (d.diags.error_count() == before).then(|| ConnExpect { at: f.at.clone(), fields })
}

const CT_KEYS: &[&str] = &["proto", "orig", "reply", "state", "mark", "zone"];

/// `{proto: tcp, orig: "10.0.1.5:* -> 10.96.0.10:80", reply: "…", state: TIME_WAIT}`.
fn ct_pattern(d: &mut Dec<'_>, f: &Field<'_>) -> Option<CtPattern> {
    let before = d.diags.error_count();
    let m = d.map(f, CT_KEYS)?;
    let proto = m.get("proto").map_or(Some(Proto::Tcp), |f| d.parse(&f, |t| t.parse::<Proto>()));
    let orig = d.req(&m, "orig").and_then(|f| d.parse(&f, |t| t.parse::<TuplePattern>()));
    let reply = m.get("reply").map(|f| d.parse(&f, |t| t.parse::<TuplePattern>()));
    let state = m.get("state").map(|f| d.parse(&f, |t| t.parse::<TcpState>()));
    if let (Some(Proto::Udp), Some(sf)) = (proto, m.get("state")) {
        d.err(&sf.at, "`state` is a TCP state; a udp entry has none");
    }
    let mark = m.get("mark").map(|f| d.uint(&f, 0, u64::from(u32::MAX)));
    let zone = m.get("zone").map(|f| d.uint(&f, 0, u64::from(u16::MAX)));
    if d.diags.error_count() > before {
        return None;
    }
    Some(CtPattern {
        at: f.at.clone(),
        proto: proto?,
        orig: orig?,
        reply: reply.flatten(),
        state: state.flatten(),
        mark: mark.flatten().map(|m| m as u32),
        zone: zone.flatten().map(|z| z as u16),
    })
}
