//! `steps:` — connect, fault, wait, check.

use std::time::Duration;

use super::ast::{Between, ConnectDoc, FaultDoc, StepDoc, StepKind, ToDoc};
use super::{Dec, Field, expect, found};
use crate::diag::{Located, list};
use crate::values::{self, NameRef, TargetRef};
use crate::world::Repeat;
use crate::yaml::Value;

const STEP_KEYS: &[&str] = &["connect", "fault", "wait", "check", "resolve"];

/// Default bytes a connect step sends.
pub(crate) const DEFAULT_SEND: u64 = 1024;
/// Default deadline of a connect step.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Upper bounds that keep a scenario runnable (and a typo from asking for a billion connections).
pub(crate) const MAX_COUNT: u64 = 100_000;
pub(crate) const MAX_PARALLEL: u64 = 10_000;
/// The most one connection sends: a simulated GiB costs seconds, and more is a typo.
pub(crate) const MAX_SEND: u64 = 1 << 30;
/// Connections a whole scenario opens, all steps together (each costs memory for its record
/// in the Outcome, whichever step opens it).
pub(crate) const MAX_CONNECTIONS: u64 = 100_000;

pub(super) fn steps(d: &mut Dec<'_>, f: &Field<'_>) -> Vec<StepDoc> {
    let Some(items) = d.list(f) else { return Vec::new() };
    if items.is_empty() {
        d.err(&f.at, "a scenario needs at least one step");
    }
    let steps: Vec<StepDoc> = items.iter().filter_map(|item| step(d, item)).collect();
    let mut total: u64 = 0;
    for s in &steps {
        if let StepKind::Connect(c) = &s.kind {
            total += u64::from(c.repeat.count());
            if total > MAX_CONNECTIONS {
                let msg = format!(
                    "this step brings the scenario to {total} connections; a scenario opens at most {MAX_CONNECTIONS} (all steps together)"
                );
                d.err(&s.at, msg);
                break;
            }
        }
    }
    steps
}

fn step(d: &mut Dec<'_>, f: &Field<'_>) -> Option<StepDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, STEP_KEYS)?;
    let keys = m.keys();
    if keys.is_empty() && d.diags.error_count() > before {
        return None; // the unknown key was reported; "needs one of" would repeat it
    }
    if keys.len() != 1 {
        let msg = if keys.is_empty() {
            format!("a step needs one of {}", list(STEP_KEYS))
        } else {
            format!("a step holds exactly one of {}; found {}", list(STEP_KEYS), list(&keys))
        };
        d.err(&f.at, msg);
        return None;
    }
    let key = keys[0];
    let v = m.get(key)?;
    let kind = match key {
        "connect" => StepKind::Connect(Box::new(connect(d, &v)?)),
        "fault" => StepKind::Fault(fault(d, &v)?),
        "wait" => StepKind::Wait(d.duration(&v)?),
        "resolve" => StepKind::Resolve(super::dns::resolve(d, &v)?),
        _ => StepKind::Check(expect::expect_block(d, &v)?),
    };
    Some(StepDoc { at: f.at.clone(), kind })
}

const CONNECT_KEYS: &[&str] = &[
    "id",
    "from",
    "to",
    "resolve",
    "send",
    "count",
    "parallel",
    "hold",
    "background",
    "deadline",
    "expect",
];

fn connect(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ConnectDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, CONNECT_KEYS)?;
    let id = d.req(&m, "id").and_then(|f| {
        d.parse(&f, |t| values::check_id(t).map(|()| t.to_string())).map(|v| Located::new(v, f.at))
    });
    let from = d.req(&m, "from").and_then(|f| {
        d.parse(&f, |t| {
            t.parse::<NameRef>().map_err(|e| format!("expected a pod or host name; {e}"))
        })
        .map(|v| Located::new(v, f.at))
    });
    let resolve = m.get("resolve").map_or(Some(false), |f| d.boolean(&f));
    let to = d.req(&m, "to").and_then(|f| {
        let to = if resolve == Some(true) {
            d.parse(&f, host_port)
        } else {
            d.parse(&f, |t| t.parse::<TargetRef>().map(ToDoc::Target))
        };
        to.map(|v| Located::new(v, f.at))
    });
    let send = m.get("send").map_or(Some(DEFAULT_SEND), |f| {
        let n = d.size(&f)?;
        if n > MAX_SEND {
            d.err(&f.at, format!("send {n} is more than one connection may send (at most 1GiB)"));
            return None;
        }
        Some(n)
    });
    let count = m.get("count").map(|f| d.uint(&f, 1, MAX_COUNT));
    let parallel = m.get("parallel").map(|f| d.uint(&f, 1, MAX_PARALLEL));
    let repeat = match (count, parallel) {
        (Some(_), Some(_)) => {
            let at = m.get("parallel").map(|f| f.at)?;
            d.err(&at, "`count` and `parallel` cannot be combined: `count` opens connections one after another, `parallel` all at once");
            None
        }
        (Some(n), None) => n.map(|n| Repeat::Sequential(n as u32)),
        (None, Some(n)) => n.map(|n| Repeat::Parallel(n as u32)),
        (None, None) => Some(Repeat::Sequential(1)),
    };
    let hold = m.get("hold").map_or(Some(Duration::ZERO), |f| d.duration(&f));
    let background = m.get("background").map_or(Some(false), |f| d.boolean(&f));
    let deadline = m.get("deadline").map_or(Some(DEFAULT_DEADLINE), |f| d.duration(&f));
    if deadline == Some(Duration::ZERO) {
        d.err(&m.get("deadline")?.at, "a deadline of 0s would time out every connection");
    }
    let expect = m.get("expect").map(|f| expect::conn_expect(d, &f));
    if d.diags.error_count() > before {
        return None;
    }
    Some(ConnectDoc {
        id: id?,
        from: from?,
        to: to?,
        send: send?,
        repeat: repeat?,
        hold: hold?,
        background: background?,
        deadline: deadline?,
        expect: expect.flatten(),
    })
}

const FAULT_KEYS: &[&str] = &[
    "partition",
    "heal",
    "latency",
    "loss",
    "restart",
    "crash",
    "start",
    "flush-conntrack",
    "delete-pod",
    "add-pod",
    "apply",
    "remove",
];

fn fault(d: &mut Dec<'_>, f: &Field<'_>) -> Option<FaultDoc> {
    if f.node.as_text() == Some("heal") {
        return Some(FaultDoc::Heal(None));
    }
    if !matches!(f.node.value, Value::Map(_)) {
        let msg = format!(
            "expected `heal` or a mapping with one of {}, found {}",
            list(FAULT_KEYS),
            found(f.node)
        );
        d.err(&f.at, msg);
        return None;
    }
    let before = d.diags.error_count();
    let m = d.map(f, FAULT_KEYS)?;
    let keys = m.keys();
    if keys.is_empty() && d.diags.error_count() > before {
        return None;
    }
    if keys.len() != 1 {
        let msg = if keys.is_empty() {
            format!("a fault needs one of {}", list(FAULT_KEYS))
        } else {
            format!("a fault holds exactly one of {}; found {}", list(FAULT_KEYS), list(&keys))
        };
        d.err(&f.at, msg);
        return None;
    }
    let key = keys[0];
    let v = m.get(key)?;
    let proxy = |d: &mut Dec<'_>| {
        d.parse(&v, values::parse_proxy_ref).map(|n| Located::new(n, v.at.clone()))
    };
    let name_ref = |d: &mut Dec<'_>| {
        d.parse(&v, |t| t.parse::<NameRef>()).map(|n| Located::new(n, v.at.clone()))
    };
    Some(match key {
        "partition" => FaultDoc::Partition(between(d, &v)?),
        "heal" if v.node.is_null() => FaultDoc::Heal(None),
        "heal" => FaultDoc::Heal(Some(between(d, &v)?)),
        "latency" => {
            let lm = d.map(&v, &["between", "add"])?;
            let link = d.req(&lm, "between").and_then(|f| between(d, &f));
            let add = d.req(&lm, "add").and_then(|f| d.duration(&f));
            FaultDoc::Latency(link?, add?)
        }
        "loss" => {
            let lm = d.map(&v, &["between", "rate"])?;
            let link = d.req(&lm, "between").and_then(|f| between(d, &f));
            let rate = d.req(&lm, "rate").and_then(|f| rate(d, &f));
            FaultDoc::Loss(link?, rate?)
        }
        "restart" => FaultDoc::Restart(proxy(d)?),
        "crash" => FaultDoc::Crash(proxy(d)?),
        "start" => FaultDoc::Start(proxy(d)?),
        "flush-conntrack" => FaultDoc::FlushConntrack(name_ref(d)?),
        "delete-pod" => FaultDoc::DeletePod(name_ref(d)?),
        "remove" => FaultDoc::Remove(name_ref(d)?),
        "add-pod" => FaultDoc::AddPod(Box::new(super::pod(d, &v)?)),
        _ => FaultDoc::Apply(Box::new(super::policy(d, &v)?)),
    })
}

/// `name:port` of a connect with `resolve: true`: any DNS name.
fn host_port(text: &str) -> Result<ToDoc, String> {
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "expected `dns-name:port` (the name is looked up, `resolve: true`); {text:?} has no port"
        ));
    };
    let port = values::parse_port(port)?;
    let name = values::parse_dns_name(host)?;
    Ok(ToDoc::Host(name, port))
}

/// `[node-a, node-b]`: two different node names.
fn between(d: &mut Dec<'_>, f: &Field<'_>) -> Option<Between> {
    let items = d.list(f)?;
    if items.len() != 2 {
        let n = items.len();
        d.err(
            &f.at,
            format!("expected two node names, found {n} item{}", if n == 1 { "" } else { "s" }),
        );
        return None;
    }
    let a = d.name(&items[0]);
    let b = d.name(&items[1]);
    let (a, b) = (a?, b?);
    if a.value == b.value {
        d.err(&items[1].at, format!("a link joins two different nodes; both are {:?}", a.value));
        return None;
    }
    Some(Between { at: f.at.clone(), a, b })
}

/// A fraction from 0 to 1.
fn rate(d: &mut Dec<'_>, f: &Field<'_>) -> Option<f64> {
    let r = match f.node.value {
        Value::Float(r) => r,
        Value::Int(i) => i as f64,
        _ => {
            d.err(&f.at, format!("expected a fraction from 0 to 1, found {}", found(f.node)));
            return None;
        }
    };
    if (0.0..=1.0).contains(&r) {
        Some(r)
    } else {
        d.err(&f.at, format!("loss rate {} is outside 0-1", f.node.describe()));
        None
    }
}
