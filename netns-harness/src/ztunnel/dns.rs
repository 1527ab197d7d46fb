//! ztunnel's DNS access log → our proxy's `dns` events, tied to the lookups the harness made.
//! Pure: a function of one node's lines, the lookups and the mesh.
//!
//! ztunnel logs one line per query its DNS proxy handled (target `dns`, debug, no message):
//! the client workload (`src.workload`, `src.namespace`), the type (`query`), the name as a
//! lower-case FQDN (`domain`) and what it did (`result`). It does not log the querying socket,
//! the transport, the response code, the addresses, the Service it answered for, nor the
//! upstream. So a line cannot be joined to a lookup by socket, as our proxy's events are: each
//! lookup from a pod (in start order) takes the first line not yet taken with the same pod and
//! the same name (compared as DNS names: case and the final dot do not count) whose time lies
//! within the lookup's: ztunnel stamps the line (wall clock, µs) after the query reached it and
//! before it answers, and the harness takes the lookup's times (the same clock) before its
//! query and after its response. Without the times, a lookup ztunnel never saw (its proxy was
//! down) would take the line of a later one. Lookups one after another are tied exactly;
//! lookups of one name made at once from one pod could swap, which matters only if ztunnel
//! treated them differently.
//!
//! What the event is made of:
//!
//! | field | from |
//! | --- | --- |
//! | `client`, `transport` | the lookup's socket (the one that got the response) |
//! | `name` | the lookup's name as it spelled it (the query carried that spelling; ztunnel's log folds it to lower case) |
//! | `qtype` | `query` |
//! | `result` | `result`: `success` and `no records` → answered; `forwarded` → forwarded; `forwarding failed (…no records found…)` → forwarded (the upstream answered, with no records: hickory makes an NXDOMAIN or an empty answer an error, ztunnel relays it); any other `forwarding failed (e)` → failed, message `e` |
//! | `upstream` | forwarded or failed after forwarding: the nameserver of the resolv.conf the harness gave ztunnel, its only one |
//! | `rcode`, `answers` | the response the lookup got from ztunnel (what those fields are: the code and A records the client got) |
//! | `service` | answered: the Service whose VIP the answer holds (VIPs are unique in a mesh); none when the answer is empty |

use std::net::{Ipv4Addr, SocketAddr};

use ambient_proxy::events::{DnsResult, ProxyEvent};
use ambient_scenarios::outcome::DnsTransport;
use ambient_scenarios::traffic::dns::{LookupEnd, LookupReport};
use serde_json::Value;

use super::access::Context;

/// What ztunnel's DNS proxy did with a query, as its `result` field says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// `success`: a Service's name, answered from the mesh.
    Answered,
    /// `no records` / `service does not support this record type`: a Service's name, answered
    /// with no records.
    AnsweredEmpty,
    /// `forwarded`: the upstream's answer (or ztunnel's cache of it) relayed.
    Forwarded,
    /// `forwarding failed` because the upstream had no records for the name.
    ForwardedNoRecords,
    /// `forwarding failed` for another reason: the error.
    ForwardFailed(String),
}

/// One line of ztunnel's DNS access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsLine {
    pub workload: String,
    pub namespace: String,
    pub qtype: String,
    /// As logged: a lower-case FQDN (`example.com.`).
    pub domain: String,
    pub handling: Handling,
    /// When ztunnel logged it: µs since the Unix epoch.
    pub at_us: u64,
}

/// ztunnel's log time (`2026-12-06T00:01:52.605336Z`, UTC, RFC 3339 as its JSON log writes
/// it) → µs since the Unix epoch.
pub fn log_time_us(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The fraction to 6 digits (µs), whatever precision was printed.
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    // Days from the civil date (proleptic Gregorian; Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + micros)
}

/// The line, if it is a DNS access-log line (scope `dns`); `None` for anything else.
pub fn parse(line: &str) -> Option<DnsLine> {
    let j: Value = serde_json::from_str(line).ok()?;
    if j.get("scope")?.as_str()? != "dns" {
        return None;
    }
    let text = |k: &str| j.get(k).and_then(Value::as_str).map(str::to_string);
    let result = text("result")?;
    let handling = match result.as_str() {
        "success" => Handling::Answered,
        "no records" | "service does not support this record type" => Handling::AnsweredEmpty,
        "forwarded" => Handling::Forwarded,
        r => {
            let error = r.strip_prefix("forwarding failed (")?.strip_suffix(')')?;
            if error.contains("no records found") {
                Handling::ForwardedNoRecords
            } else {
                Handling::ForwardFailed(error.to_string())
            }
        }
    };
    Some(DnsLine {
        workload: text("src.workload")?,
        namespace: text("src.namespace")?,
        qtype: text("query")?,
        domain: text("domain")?,
        handling,
        at_us: log_time_us(&text("time")?)?,
    })
}

/// A lookup the harness made from a pod.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    /// The name as the lookup spelled it.
    pub name: &'a str,
    pub report: &'a LookupReport,
    /// When the lookup started (before its query) and ended (after its response or its
    /// failure): µs since the Unix epoch, by the wall clock ztunnel stamps its log with.
    pub window_us: (u64, u64),
}

/// Whether two names are the same DNS name.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// The `dns` events of one ztunnel node: each of `asked` (in start order) that a line of
/// `lines` is about gets one. `nameserver` is the upstream ztunnel was given.
pub fn tie_lookups(
    node: &str,
    lines: &[String],
    asked: &[Asked<'_>],
    nameserver: Option<SocketAddr>,
    ctx: &Context,
) -> Vec<ProxyEvent> {
    let parsed: Vec<DnsLine> = lines.iter().filter_map(|l| parse(l)).collect();
    let mut taken = vec![false; parsed.len()];
    let mut out = Vec::new();
    for a in asked {
        // The socket that got the response: the last one (a truncated answer asked again
        // over TCP has two, and the proxy saw both; only the last is the one relayed).
        let Some(&(client, over)) = a.report.clients.last() else { continue };
        let found = (0..parsed.len()).find(|&i| {
            let l = &parsed[i];
            let (from, to) = a.window_us;
            !taken[i]
                && l.workload == a.pod
                && l.namespace == a.namespace
                && same_name(&l.domain, a.name)
                && (from..=to).contains(&l.at_us)
        });
        let Some(i) = found else { continue };
        taken[i] = true;
        out.push(event(node, &parsed[i], a, client, over, nameserver, ctx));
    }
    out
}

fn event(
    node: &str,
    line: &DnsLine,
    asked: &Asked<'_>,
    client: SocketAddr,
    over: DnsTransport,
    nameserver: Option<SocketAddr>,
    ctx: &Context,
) -> ProxyEvent {
    let (rcode, answers): (String, Vec<Ipv4Addr>) = match &asked.report.end {
        LookupEnd::Answer { rcode, addresses } => (rcode.to_string(), addresses.clone()),
        // ztunnel handled it, but the client saw no response (it gave up first): no code to
        // report, and none is made up.
        _ => ("no response".to_string(), Vec::new()),
    };
    let (result, upstream, message) = match &line.handling {
        Handling::Answered | Handling::AnsweredEmpty => (DnsResult::Answered, None, None),
        Handling::Forwarded | Handling::ForwardedNoRecords => {
            (DnsResult::Forwarded, nameserver, None)
        }
        Handling::ForwardFailed(e) => (DnsResult::Failed, nameserver, Some(e.clone())),
    };
    let service = match result {
        DnsResult::Answered => answers.first().and_then(|ip| ctx.service_of_vip((*ip).into())),
        _ => None,
    };
    ProxyEvent::Dns {
        node: node.to_string(),
        client,
        transport: match over {
            DnsTransport::Udp => "udp",
            DnsTransport::Tcp => "tcp",
        }
        .to_string(),
        name: asked.name.trim_end_matches('.').to_string(),
        qtype: line.qtype.clone(),
        result,
        rcode,
        answers,
        service,
        upstream,
        message,
    }
}

#[cfg(test)]
mod tests;
