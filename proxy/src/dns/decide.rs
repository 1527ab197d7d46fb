//! What the DNS proxy does with one query: a pure function of (query, the client pod, the
//! mesh), as ztunnel's DNS proxy decides it.
//!
//! - Not a standard query (a response, an opcode other than QUERY) → NOTIMP; not exactly one
//!   question → FORMERR.
//! - The client is not a workload of the mesh → SERVFAIL (the proxy serves only its pods).
//! - Anything but A or AAAA → forwarded upstream.
//! - The name, or one of its aliases from the client's point of view, is a Service's hostname
//!   `<name>.<namespace>.svc.<domain>` → the proxy answers, authoritative, TTL 30 s: A records
//!   with the Service's VIP; AAAA → no records (NOERROR: the name exists, the Services are IPv4
//!   only). An alias found by removing a search domain is answered with a CNAME from the name
//!   asked to the short name, and the A record under the short name (what ztunnel answers).
//! - Otherwise → forwarded upstream: the proxy never answers NXDOMAIN itself.
//!
//! Aliases, in order (the first that is a Service's hostname wins), for a client in namespace
//! `ns` and the search domains `ns.svc.<domain>`, `svc.<domain>`, `<domain>` a pod's
//! resolv.conf has:
//! 1. the name as asked;
//! 2. its Kubernetes expansions by label count: `a` → `a.ns.svc.<domain>`; `a.b` →
//!    `a.b.svc.<domain>`, `a.b.ns.svc.<domain>`; `a.b.svc` → `a.b.svc.<domain>`; `a.b.c` →
//!    `a.b.c.svc.<domain>`; `a.b.c.svc` → `a.b.c.svc.<domain>`;
//! 3. for each search domain the name is below: the name without it, and that name's
//!    expansions (a stub resolver that appended a search domain to a short name asks
//!    `echo.default.default.svc.cluster.local` for `echo.default`).
//!
//! Not modelled: wildcard hostnames and ServiceEntries (the mesh has Services only), headless
//! Services, pod hostnames, visibility (`exportTo`), IPv6 VIPs.

use std::net::{IpAddr, Ipv4Addr};

use super::wire::{Message, Name, Rcode, Record, rtype};
use crate::mesh::MeshState;

/// The TTL of the records the proxy answers with (ztunnel's).
pub const ANSWER_TTL: u32 = 30;

/// The proxy's decision about one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The proxy answers, authoritative (NOERROR).
    Answer {
        /// CNAME (when a search domain was removed), then A records; none for AAAA.
        records: Vec<Record>,
        /// The Service found, as `name.namespace`.
        service: String,
    },
    /// Not a mesh name (or not an address query): the upstream resolver answers.
    Forward,
    /// The proxy answers with this error.
    Fail { rcode: Rcode, reason: &'static str },
}

/// Decides `query` from a client pod at `client` (its address), with `domain` the cluster's
/// DNS domain (`cluster.local`).
pub fn decide(query: &Message, client: IpAddr, mesh: &MeshState, domain: &Name) -> Decision {
    if query.flags.response || query.flags.opcode != 0 {
        return Decision::Fail { rcode: Rcode::NOTIMP, reason: "not a standard query" };
    }
    let [question] = query.questions.as_slice() else {
        return Decision::Fail { rcode: Rcode::FORMERR, reason: "not exactly one question" };
    };
    let Some(workload) = mesh.workload(client) else {
        return Decision::Fail { rcode: Rcode::SERVFAIL, reason: "unknown client" };
    };
    if !matches!(question.qtype, rtype::A | rtype::AAAA) {
        return Decision::Forward;
    }
    for alias in aliases(&question.name, &workload.namespace, domain) {
        let Some((service, vip)) = service_named(mesh, &alias.name, domain) else { continue };
        let mut records = Vec::new();
        if question.qtype == rtype::A {
            let owner = match alias.stripped {
                Some(short) => {
                    records.push(Record::cname(question.name.clone(), ANSWER_TTL, short.clone()));
                    short
                }
                None => question.name.clone(),
            };
            records.push(Record::a(owner, ANSWER_TTL, vip));
        }
        return Decision::Answer { records, service };
    }
    Decision::Forward
}

/// A name the query may mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub name: Name,
    /// The name asked without a search domain, when this alias came from one.
    pub stripped: Option<Name>,
}

/// Every alias of `name` for a client in `namespace`, in the order they are tried, without
/// repeats.
pub fn aliases(name: &Name, namespace: &str, domain: &Name) -> Vec<Alias> {
    let mut out: Vec<Alias> = Vec::new();
    let mut add = |a: Alias| {
        if !out.iter().any(|o| o.name == a.name) {
            out.push(a);
        }
    };
    let svc = Name::parse("svc").ok().and_then(|s| s.join(domain));
    let ns_svc = Name::parse(namespace).ok().zip(svc.clone()).and_then(|(n, s)| n.join(&s));
    let (Some(svc), Some(ns_svc)) = (svc, ns_svc) else {
        return vec![Alias { name: name.clone(), stripped: None }];
    };
    add(Alias { name: name.clone(), stripped: None });
    for e in expansions(name, &ns_svc, &svc, domain) {
        add(Alias { name: e, stripped: None });
    }
    for search in [&ns_svc, &svc, domain] {
        let Some(short) = name.strip(search) else { continue };
        add(Alias { name: short.clone(), stripped: Some(short.clone()) });
        for e in expansions(&short, &ns_svc, &svc, domain) {
            add(Alias { name: e, stripped: Some(short.clone()) });
        }
    }
    out
}

/// The Kubernetes hostnames a short name can stand for (see the module docs).
fn expansions(name: &Name, ns_svc: &Name, svc: &Name, domain: &Name) -> Vec<Name> {
    let to = |suffix: &Name| name.join(suffix);
    let found = match name.label_count() {
        1 => vec![to(ns_svc)],
        2 => vec![to(svc), to(ns_svc)],
        3 if name.ends_with_label("svc") => vec![to(domain), to(svc)],
        3 => vec![to(svc)],
        4 if name.ends_with_label("svc") => vec![to(domain)],
        _ => vec![],
    };
    found.into_iter().flatten().collect()
}

/// The Service whose hostname is `name` (`<service>.<namespace>.svc.<domain>`), with its VIP
/// (IPv4 only).
fn service_named(mesh: &MeshState, name: &Name, domain: &Name) -> Option<(String, Ipv4Addr)> {
    let svc = Name::parse("svc").ok()?.join(domain)?;
    let short = name.strip(&svc)?;
    let labels: Vec<&[u8]> = short.labels().collect();
    let [service, namespace] = labels.as_slice() else { return None };
    mesh.services().find_map(|s| {
        let matches = s.name.as_bytes().eq_ignore_ascii_case(service)
            && s.namespace.as_bytes().eq_ignore_ascii_case(namespace);
        match (matches, s.vip) {
            (true, IpAddr::V4(vip)) => Some((s.qualified_name(), vip)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests;
