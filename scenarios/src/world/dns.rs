//! DNS in the World: the DNS server host ([`DnsZone`]), the `resolve` step ([`Resolve`]) and
//! connects to a name ([`HostLookup`]).
//!
//! The cluster's DNS server is the one external host with a `dns:` block. It is every pod's
//! nameserver (a pod's resolv.conf names it; its queries to port 53 are what the in-pod rules
//! capture) and every node proxy's upstream resolver. It answers A queries for its records
//! (names compared without case), NXDOMAIN for any other name, and no records for other types
//! of a name it has — over UDP and TCP on port 53. It does not know the cluster's Service
//! names: those are the proxy's to answer (a client outside the mesh asking one gets NXDOMAIN).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ambient_proxy::dns::wire::{Message, Name, Rcode, Record, rtype};
use ambient_proxy::dns::{Decision, decide};
use ambient_proxy::mesh::{self, MeshSpec, MeshState};

use super::build::Builder;
use super::{Dest, Peer, PeerKind, Target};
use crate::decode::ast::{DnsDoc, ResolveDoc};
use crate::diag::{At, Located};
use crate::expect::ResolveExpect;
use crate::outcome::DnsTransport;

/// The port the DNS server answers on, and pods' queries go to.
pub const DNS_PORT: u16 = 53;
/// The TTL of the DNS server's records.
const RECORD_TTL: u32 = 60;
/// The cluster's DNS domain (the proxies' `DnsConfig::domain`).
const CLUSTER_DOMAIN: &str = "cluster.local";

/// A DNS server's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsZone {
    /// Lowercase names without the trailing dot → their addresses, in the order written.
    pub records: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl DnsZone {
    /// The addresses of `name` (any case, a trailing dot allowed).
    pub fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        let key = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.records.get(&key).map(Vec::as_slice)
    }

    /// What the server answers to `query`: a FORMERR for anything but one question of a
    /// standard query; its A records (NOERROR); no records for another type of a name it has;
    /// NXDOMAIN otherwise. Recursion is never available (it is not a resolver).
    pub fn answer(&self, query: &Message) -> Message {
        let [q] = query.questions.as_slice() else {
            return Message::response(query, Rcode::FORMERR, false, Vec::new());
        };
        if query.flags.response || query.flags.opcode != 0 {
            return Message::response(query, Rcode::NOTIMP, false, Vec::new());
        }
        let mut reply = match self.lookup(&q.name.to_string()) {
            None => Message::response(query, Rcode::NXDOMAIN, true, Vec::new()),
            Some(ips) if q.qtype == rtype::A => {
                let records =
                    ips.iter().map(|ip| Record::a(q.name.clone(), RECORD_TTL, *ip)).collect();
                Message::response(query, Rcode::NOERROR, true, records)
            }
            Some(_) => Message::response(query, Rcode::NOERROR, true, Vec::new()),
        };
        reply.flags.recursion_available = false;
        reply
    }
}

/// A `resolve` step: one A query for `name`, as the client's stub resolver sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolve {
    /// `id:`, or `resolve-<step index>`.
    pub id: String,
    pub from: Peer,
    /// As written (no search list is applied: short names are the proxy's to expand).
    pub name: String,
    /// UDP (retried over TCP when the answer is truncated, as a stub resolver does), or TCP.
    pub over: DnsTransport,
    /// The nameserver: the DNS server host, port 53.
    pub server: SocketAddrV4,
    /// No answer within this → `timeout`.
    pub deadline: Duration,
    pub expect: Option<ResolveExpect>,
}

/// A connect's name lookup (`resolve: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLookup {
    pub name: String,
    pub server: SocketAddrV4,
}

impl Builder<'_> {
    /// The records of an external host's `dns:` block, checked against the rest of the host.
    pub(super) fn dns_zone(
        &mut self,
        host: &str,
        serve: &BTreeMap<u16, super::App>,
        doc: &DnsDoc,
    ) -> Option<DnsZone> {
        if serve.contains_key(&DNS_PORT) {
            let msg = format!(
                "{host} serves port {DNS_PORT} with `dns:`, the DNS server's port; serve another port"
            );
            self.d.error_at(&doc.at, msg);
            return None;
        }
        if let Some(first) = self.external.values().find(|h| h.dns.is_some()) {
            let msg = format!(
                "external host {} is already the DNS server (at {}); a scenario has at most one",
                first.name, first.at.pos
            );
            self.d.error_at(&doc.at, msg);
            return None;
        }
        let records = doc
            .records
            .iter()
            .map(|r| (r.value.0.to_ascii_lowercase(), r.value.1.clone()))
            .collect();
        Some(DnsZone { records })
    }

    /// The DNS server host, or an error at `at` saying one is needed for `what`.
    fn nameserver(&mut self, at: &At, what: &str) -> Option<SocketAddrV4> {
        let server = self.external.values().find(|h| h.dns.is_some()).map(|h| h.ip);
        if server.is_none() {
            let msg = format!(
                "{what} needs a DNS server: give one external host a `dns: {{records: …}}` block"
            );
            self.d.error_at(at, msg);
        }
        server.map(|ip| SocketAddrV4::new(ip, DNS_PORT))
    }

    /// Registers a lookup id; connects and lookups share one namespace of ids.
    fn lookup_id(&mut self, id: &str, at: &At) {
        let first =
            self.conns.get(id).map(|c| c.at.clone()).or_else(|| self.lookups.get(id).cloned());
        match first {
            Some(first) => {
                let msg = format!("duplicate id {id:?} (first at {})", first.pos);
                self.d.error_at(at, msg);
            }
            None => {
                self.lookups.insert(id.to_string(), at.clone());
            }
        }
    }

    pub(super) fn resolve(&mut self, r: &ResolveDoc, step: usize, step_at: &At) -> Option<Resolve> {
        let (id, id_at) = match &r.id {
            Some(id) => (id.value.clone(), id.at.clone()),
            None => (format!("resolve-{step}"), step_at.clone()),
        };
        self.lookup_id(&id, &id_at);
        let from = self.peer(&r.from);
        let server = self.nameserver(step_at, "a resolve step");
        Some(Resolve {
            id,
            from: from?,
            name: r.name.value.clone(),
            over: r.over,
            server: server?,
            deadline: r.deadline,
            expect: r.expect.clone(),
        })
    }

    /// The target a connect with `resolve: true` reaches: what `name` resolves to from
    /// `client` now (the proxy's answer for a captured pod, the DNS server's otherwise).
    pub(super) fn host_target(
        &mut self,
        client: &Peer,
        name: &Located<String>,
        port: u16,
    ) -> Option<(Target, HostLookup)> {
        let server = self.nameserver(&name.at, "a connect with `resolve: true`")?;
        let ip = match self.predict(client, &name.value) {
            Ok(ip) => ip,
            Err(why) => {
                let msg = format!(
                    "{:?} does not resolve for {}: {why}; a connect with `resolve: true` needs a name that resolves (a `resolve` step tests lookups that fail)",
                    name.value,
                    client.label()
                );
                self.d.error_at(&name.at, msg);
                return None;
            }
        };
        let addr = SocketAddrV4::new(ip, port);
        let label = format!("{}:{port}", name.value);
        let dest = if let Some(s) = self.services.values().find(|s| s.vip == ip) {
            let Some(sp) = s.port(port) else {
                let msg = format!(
                    "{} resolves to service {}, which has no port {port}",
                    name.value, s.key
                );
                self.d.error_at(&name.at, msg);
                return None;
            };
            Dest::Service { key: s.key.clone(), port: sp }
        } else if let Some(p) = self.pods.values().find(|p| p.ip == ip) {
            Dest::Pod(p.key.clone())
        } else if let Some(h) = self.external.values().find(|h| h.ip == ip) {
            Dest::External(h.name.clone())
        } else {
            Dest::Address
        };
        Some((Target { addr, dest, label }, HostLookup { name: name.value.clone(), server }))
    }

    /// The first address `name` resolves to from `client`, or why it does not.
    fn predict(&self, client: &Peer, name: &str) -> Result<Ipv4Addr, String> {
        let zone = self.external.values().find_map(|h| h.dns.as_ref());
        let from_zone = || {
            zone.and_then(|z| z.lookup(name))
                .and_then(|ips| ips.first().copied())
                .ok_or_else(|| "the DNS server has no record for it".to_string())
        };
        let pod = match &client.kind {
            PeerKind::Pod(key) => self.pods.get(key).filter(|p| p.is_captured()),
            PeerKind::External(_) => None,
        };
        let Some(pod) = pod else { return from_zone() };
        let services = self
            .services
            .values()
            .map(|s| mesh::Service {
                name: s.key.name.clone(),
                namespace: s.key.namespace.clone(),
                vip: s.vip.into(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| mesh::ServicePort { port: p.port, target_port: p.target_port })
                    .collect(),
                selector: None,
                endpoints: Vec::new(),
            })
            .collect();
        let client_workload = mesh::Workload::new(&pod.key.name, &pod.node, pod.ip.into())
            .namespace(&pod.key.namespace);
        let spec = MeshSpec {
            trust_domain: self.trust_domain.clone(),
            workloads: vec![client_workload],
            services,
            policies: Vec::new(),
        };
        let mesh = MeshState::new(spec).map_err(|e| format!("the mesh is invalid: {e}"))?;
        let qname = Name::parse(name).map_err(|e| e.to_string())?;
        let domain = Name::parse(CLUSTER_DOMAIN).map_err(|e| e.to_string())?;
        let query = Message::query(0, qname, rtype::A);
        match decide(&query, IpAddr::V4(pod.ip), &mesh, &domain) {
            Decision::Answer { records, .. } => {
                let reply = Message::response(&query, Rcode::NOERROR, true, records);
                reply.addresses().first().copied().ok_or_else(|| "no address".to_string())
            }
            Decision::Forward => from_zone(),
            Decision::Fail { rcode, reason } => {
                Err(format!("the proxy answers {rcode} ({reason})"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> DnsZone {
        let mut records = BTreeMap::new();
        records.insert("example.com".to_string(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        records.insert(
            "multi.example".to_string(),
            vec![Ipv4Addr::new(203, 0, 113, 11), Ipv4Addr::new(203, 0, 113, 12)],
        );
        DnsZone { records }
    }

    #[test]
    fn the_dns_server_answers_its_records_and_nxdomain_otherwise() {
        let z = zone();
        let q = |name: &str, t: u16| Message::query(9, Name::parse(name).unwrap(), t);
        let a = z.answer(&q("Example.COM.", rtype::A));
        assert_eq!((a.id, a.flags.rcode, a.flags.authoritative), (9, Rcode::NOERROR, true));
        assert!(!a.flags.recursion_available);
        assert_eq!(a.addresses(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
        assert_eq!(z.answer(&q("multi.example", rtype::A)).addresses().len(), 2);
        let aaaa = z.answer(&q("example.com", rtype::AAAA));
        assert_eq!((aaaa.flags.rcode, aaaa.answers.len()), (Rcode::NOERROR, 0));
        assert_eq!(
            z.answer(&q("echo.default.svc.cluster.local", rtype::A)).flags.rcode,
            Rcode::NXDOMAIN
        );
        let mut two = q("example.com", rtype::A);
        two.questions.push(two.questions[0].clone());
        assert_eq!(z.answer(&two).flags.rcode, Rcode::FORMERR);
        assert_eq!(z.lookup("MULTI.example.").map(|a| a.len()), Some(2));
    }
}
