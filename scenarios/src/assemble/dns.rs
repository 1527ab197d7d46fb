//! A lookup's entry in the Outcome ([`Resolution`]), from what the stub resolver saw, the DNS
//! events the proxies logged about its sockets, and the queries the DNS server answered.

use ambient_proxy::dns::wire::Rcode;
use ambient_proxy::events::{DnsResult, ProxyEvent as Event};

use super::{EventLog, describe};
use crate::outcome::{DnsTransport, Resolution, ResolveOutcome, ResolvePath};
use crate::traffic::dns::{LookupEnd, LookupReport, ServedQuery};

/// What the Outcome says of a lookup besides what was observed.
#[derive(Debug, Clone, Copy)]
pub struct LookupLabels<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub name: &'a str,
}

fn transport_name(t: DnsTransport) -> &'static str {
    match t {
        DnsTransport::Udp => "udp",
        DnsTransport::Tcp => "tcp",
    }
}

/// Builds the Outcome's entry for one lookup.
///
/// Its proxy events are the `dns` events about its sockets (by address and transport, each
/// node's in order, nodes by name). The path: the last of those events — the proxy answered
/// or refused it (`proxy`), or asked the DNS server (`forwarded`, also when that failed);
/// without any, `direct` when the DNS server answered one of its sockets itself, else `null`.
pub fn resolution(
    labels: LookupLabels<'_>,
    report: &LookupReport,
    log: &EventLog,
    served: &[ServedQuery],
) -> Resolution {
    let mine = |e: &Event| {
        e.dns_client().is_some_and(|(c, t)| {
            report.clients.iter().any(|(a, tr)| *a == c && transport_name(*tr) == t)
        })
    };
    let events: Vec<(&String, &Event)> = log
        .iter()
        .flat_map(|(n, evs)| evs.iter().filter(|e| mine(e)).map(move |e| (n, e)))
        .collect();
    let last = events.iter().rev().find_map(|(_, e)| match e {
        Event::Dns { result, upstream, .. } => Some((*result, upstream.is_some())),
        _ => None,
    });
    let asked_directly =
        served.iter().any(|q| report.clients.iter().any(|(a, t)| *a == q.peer && *t == q.over));
    let path = match last {
        Some((DnsResult::Answered, _)) | Some((DnsResult::Failed, false)) => {
            Some(ResolvePath::Proxy)
        }
        Some((DnsResult::Forwarded, _)) | Some((DnsResult::Failed, true)) => {
            Some(ResolvePath::Forwarded)
        }
        None if asked_directly => Some(ResolvePath::Direct),
        None => None,
    };
    let (outcome, error, answers) = match &report.end {
        LookupEnd::Answer { rcode, addresses } => match *rcode {
            Rcode::NOERROR => (ResolveOutcome::Answer, None, addresses.clone()),
            Rcode::NXDOMAIN => (ResolveOutcome::Nxdomain, None, Vec::new()),
            Rcode::SERVFAIL => (ResolveOutcome::Servfail, None, Vec::new()),
            other => (ResolveOutcome::Error, Some(format!("rcode {other}")), Vec::new()),
        },
        LookupEnd::Refused => (ResolveOutcome::Refused, None, Vec::new()),
        LookupEnd::Timeout => (ResolveOutcome::Timeout, None, Vec::new()),
        LookupEnd::Error(e) => (ResolveOutcome::Error, Some(e.clone()), Vec::new()),
    };
    Resolution {
        id: labels.id.to_string(),
        from: labels.from.to_string(),
        name: labels.name.to_string(),
        over: report.over,
        outcome,
        error,
        answers,
        path,
        proxy_events: events.iter().flat_map(|(n, e)| describe(n, e)).collect(),
    }
}
