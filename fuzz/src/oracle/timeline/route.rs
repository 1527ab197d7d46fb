//! Where one connection may go and what it may end with, from the cluster as it stands when
//! it starts: the client, the destination (a pod, a Service's endpoints, a host), the proxies
//! and links on the way, and the policies that judge it. The per-connection half of the
//! oracle's walk; the walk itself (steps, time, changes that hit live connections) is the
//! parent module.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use ambient_proxy::istio::PolicyObject;
use ambient_scenarios::outcome::PathKind;
use ambient_scenarios::values::NodePair;
use ambient_scenarios::world::{App, Connect, Dest, Peer, PeerKind, Pod};

use super::super::rbac::{self, Conn, Ident, Workload};
use super::super::{Alt, Expect, Tri, Unrouted, unrouted_path};
use super::{
    Client, PROXY_CONNECT_TIMEOUT, Refused, Reset, Timeout, Touches, Walk, app_outcome, link_key,
};
use ambient_scenarios::outcome::ConnOutcome::Denied;

impl Walk<'_> {
    pub(super) fn client(&self, peer: &Peer) -> Result<Client, String> {
        match &peer.kind {
            PeerKind::Pod(key) => {
                let p = self.pods.get(key).ok_or_else(|| format!("client {key} does not exist"))?;
                Ok(Client {
                    label: p.label(),
                    ip: p.ip,
                    node: Some(p.node.clone()),
                    captured: p.is_captured(),
                    identity: p.is_captured().then(|| self.ident(p)),
                })
            }
            PeerKind::External(name) => Ok(Client {
                label: name.clone(),
                ip: peer.ip,
                node: None,
                captured: false,
                identity: None,
            }),
        }
    }

    pub(super) fn ident(&self, p: &Pod) -> Ident {
        Ident {
            trust_domain: self.world.trust_domain.clone(),
            namespace: p.key.namespace.clone(),
            service_account: p.service_account.clone(),
        }
    }

    pub(super) fn policies(&self) -> Vec<&PolicyObject> {
        self.policies.values().collect()
    }

    pub(super) fn allowed(
        &self,
        dst: &Pod,
        source_ip: Ipv4Addr,
        identity: Option<&Ident>,
        port: u16,
    ) -> bool {
        let w = Workload { namespace: &dst.key.namespace, labels: &dst.labels };
        let c = Conn { source_ip, identity, dest_ip: dst.ip, dest_port: port };
        rbac::decide(&self.policies(), w, &c).0
    }

    pub(super) fn partitioned(&self, a: &str, b: &str) -> bool {
        a != b && self.links.get(&link_key(a, b)).is_some_and(|l| l.partitioned)
    }

    pub(super) fn lossy(&self, a: &str, b: &str) -> bool {
        a != b && self.links.get(&link_key(a, b)).is_some_and(|l| l.lossy)
    }

    /// Why HBONE from `a` to `b` (address `ip`) may meet a stale pooled tunnel now.
    pub(super) fn disturbed(&self, a: &str, b: &str, ip: Ipv4Addr) -> Option<String> {
        if let Some(l) = self.links.get(&link_key(a, b))
            && self.now.lo < l.disturbed_until
        {
            return Some(format!(
                "a pooled tunnel {a}<->{b} may be stale after a fault (until {:?})",
                l.disturbed_until
            ));
        }
        match self.stale_ips.get(&ip) {
            Some(until) if self.now.lo < *until => {
                Some(format!("a tunnel to the deleted pod that had {ip} may still be pooled"))
            }
            _ => None,
        }
    }

    pub(super) fn app_at(&self, ip: Ipv4Addr, port: u16) -> Option<App> {
        let pod = self.pods.values().find(|p| p.ip == ip).and_then(|p| p.serve.get(&port));
        let host =
            self.world.external.values().find(|h| h.ip == ip).and_then(|h| h.serve.get(&port));
        pod.or(host).copied()
    }

    pub(super) fn app_expect(
        &self,
        ip: Ipv4Addr,
        port: u16,
        send: u64,
        path: PathKind,
        identity: Tri,
    ) -> Expect {
        match self.app_at(ip, port) {
            None => Expect::one(Refused, Some(path), Tri::MustNot, identity),
            Some(app) => {
                let mut e = Expect::one(app_outcome(app), Some(path), Tri::Must, identity);
                e.replies = [app.expected_reply(send)].into();
                e
            }
        }
    }

    /// A captured client's connection to pod `dst` (an endpoint) on `port`.
    pub(super) fn captured_to_pod(
        &self,
        c: &Client,
        dst: &Pod,
        port: u16,
        connect: &Connect,
    ) -> (Expect, Touches) {
        let n = c.node.clone().unwrap_or_default();
        let m = dst.node.clone();
        let mut t = Touches {
            proxies: [n.clone()].into(),
            links: if n != m { [link_key(&n, &m)].into() } else { BTreeSet::new() },
            netns: [c.label.clone(), dst.label()].into(),
            ..Touches::default()
        };
        if !dst.is_captured() {
            if self.partitioned(&n, &m) {
                let mut e =
                    Expect::one(Timeout, Some(PathKind::Passthrough), Tri::MustNot, Tri::MustNot);
                // As for HBONE below: the proxy's passthrough dial gives up after 10 s too.
                if connect.deadline + connect.hold >= PROXY_CONNECT_TIMEOUT {
                    e.widen(&[Refused, Reset], "the proxy's own 10s timeouts end it first".into());
                }
                return (e, t);
            }
            let mut e =
                self.app_expect(dst.ip, port, connect.send, PathKind::Passthrough, Tri::MustNot);
            if n != m {
                let link = link_key(&n, &m);
                // The proxy's upstream: a reset app's RST to it may be lost.
                if self.lossy(&n, &m) && self.app_at(dst.ip, port) == Some(App::Reset) {
                    e.allow_lost_rst(&link);
                }
                t.bare_links.insert(link);
            }
            return (e, t);
        }
        t.proxies.insert(m.clone());
        t.rbac = Some((dst.key.clone(), c.ip, c.identity.clone(), dst.ip, port));
        let mut allowed = self.app_expect(dst.ip, port, connect.send, PathKind::Hbone, Tri::Must);
        allowed.tunnel = Some(NodePair { from: n.clone(), to: m.clone() });
        t.allowed = Some(allowed);
        let tunnel = Some(NodePair { from: n.clone(), to: m.clone() });
        let hbone = Some(PathKind::Hbone);
        let mut e = if self.partitioned(&n, &m) {
            let mut e = Expect::one(Timeout, hbone, Tri::MustNot, Tri::MustNot);
            // A captured client is connected to its own proxy at once; it waits its hold and
            // deadline, and the proxy gives up its dial after 10 s.
            if connect.deadline + connect.hold >= PROXY_CONNECT_TIMEOUT {
                e.widen(&[Refused, Reset], "the proxy's own 10s timeouts end it first".into());
            }
            e
        } else if self.down.contains(&m) {
            Expect::one(Refused, hbone, Tri::MustNot, Tri::MustNot)
        } else if !self.allowed(dst, c.ip, c.identity.as_ref(), port) {
            Expect::one(Denied, hbone, Tri::MustNot, Tri::Must)
        } else {
            self.app_expect(dst.ip, port, connect.send, PathKind::Hbone, Tri::Must)
        };
        if !self.partitioned(&n, &m)
            && let Some(why) = self.disturbed(&n, &m, dst.ip)
        {
            e.widen(&[Timeout, Reset, Refused], why);
        }
        e.tunnel = tunnel;
        (e, t)
    }

    /// All alternatives for one connection, or why it is not modelled.
    pub(super) fn alternatives(
        &self,
        connect: &Connect,
    ) -> Result<(Client, Vec<(Alt, Touches)>), String> {
        let c = self.client(&connect.from)?;
        let port = connect.to.addr.port();
        if [15001, 15006, 15008].contains(&port) {
            return Err("a proxy port".into());
        }
        let one = |e: Expect, t: Touches| vec![(Alt { endpoint: None, expect: e }, t)];
        // The destination as a pod or host that exists now.
        let pod_at = |ip: Ipv4Addr| self.pods.values().find(|p| p.ip == ip);
        let host_at = |ip: Ipv4Addr| self.world.external.values().find(|h| h.ip == ip);
        // A pod calling its own address goes over `lo`, which the in-pod rules accept
        // (`! -d 127.0.0.1/32 -o lo -j ACCEPT`): no proxy, the app answers directly.
        if matches!(connect.from.kind, PeerKind::Pod(_))
            && !matches!(connect.to.dest, Dest::Service { .. })
            && *connect.to.addr.ip() == c.ip
        {
            // Refused by a RST over `lo`: the SYN was sent, so `direct` all the same.
            let e = self.app_expect(c.ip, port, connect.send, PathKind::Direct, Tri::MustNot);
            let t = Touches { netns: [c.label.clone()].into(), ..Touches::default() };
            return Ok((c, one(e, t)));
        }
        if c.captured {
            let n = c.node.clone().unwrap_or_default();
            if self.down.contains(&n) {
                // The SYN is REDIRECTed to 15001, where nothing listens: a RST.
                let path = unrouted_path(Unrouted::SynLeft);
                let e = Expect::one(Refused, path, Tri::MustNot, Tri::MustNot);
                let t = Touches {
                    proxies: [n].into(),
                    netns: [c.label.clone()].into(),
                    ..Touches::default()
                };
                return Ok((c, one(e, t)));
            }
            let (endpoints, target_port): (Vec<&Pod>, u16) = match &connect.to.dest {
                Dest::Service { key, port: sp } => {
                    let svc = self.world.services.get(key).ok_or("unknown service")?;
                    let eps = self
                        .pods
                        .values()
                        .filter(|p| {
                            p.key.namespace == svc.key.namespace
                                && !svc.selector.is_empty()
                                && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                        })
                        .collect();
                    (eps, sp.target_port)
                }
                Dest::Pod(_) | Dest::Address => match pod_at(*connect.to.addr.ip()) {
                    Some(p) => (vec![p], port),
                    None => (Vec::new(), port),
                },
                Dest::External(_) => (Vec::new(), port),
            };
            if matches!(connect.to.dest, Dest::Service { .. }) && endpoints.is_empty() {
                let path = unrouted_path(Unrouted::RefusedByOwnProxy);
                let e = Expect::one(Refused, path, Tri::MustNot, Tri::MustNot);
                let t = Touches {
                    proxies: [n].into(),
                    netns: [c.label.clone()].into(),
                    ..Touches::default()
                };
                return Ok((c, one(e, t)));
            }
            if endpoints.is_empty() {
                let ip = *connect.to.addr.ip();
                let Some(h) = host_at(ip) else { return Err(format!("nothing owns {ip}")) };
                let e =
                    self.app_expect(h.ip, port, connect.send, PathKind::Passthrough, Tri::MustNot);
                let t = Touches {
                    proxies: [n].into(),
                    netns: [c.label.clone(), h.name.clone()].into(),
                    ..Touches::default()
                };
                let endpoint = Some(SocketAddrV4::new(h.ip, port));
                return Ok((c, vec![(Alt { endpoint, expect: e }, t)]));
            }
            let alts = endpoints
                .into_iter()
                .map(|p| {
                    let (e, t) = self.captured_to_pod(&c, p, target_port, connect);
                    let endpoint = Some(SocketAddrV4::new(p.ip, target_port));
                    (Alt { endpoint, expect: e }, t)
                })
                .collect();
            return Ok((c, alts));
        }
        // An uncaptured client: no proxy of its own, no Service VIPs.
        if matches!(connect.to.dest, Dest::Service { .. }) {
            return Err("a client outside the mesh calling a Service VIP".into());
        }
        let ip = *connect.to.addr.ip();
        if let Some(dst) = pod_at(ip) {
            let m = dst.node.clone();
            let crosses = c.node.as_ref().filter(|n| **n != m);
            let links: BTreeSet<_> = crosses.map(|n| [link_key(n, &m)].into()).unwrap_or_default();
            let mut t = Touches {
                links: links.clone(),
                bare_links: links.clone(),
                netns: [c.label.clone(), dst.label()].into(),
                ..Touches::default()
            };
            let lossy = crosses.is_some_and(|n| self.lossy(n, &m));
            // Every way this ends without a proxy in between, the SYN was sent.
            let sent = unrouted_path(Unrouted::SynLeft);
            if crosses.is_some_and(|n| self.partitioned(n, &m)) {
                return Ok((c, one(Expect::one(Timeout, sent, Tri::MustNot, Tri::MustNot), t)));
            }
            if !dst.is_captured() {
                let mut e = self.app_expect(ip, port, connect.send, PathKind::Direct, Tri::MustNot);
                // Only a reset app's RST comes after the handshake (a closed port answers the
                // SYN, which is retransmitted).
                if lossy && self.app_at(ip, port) == Some(App::Reset) {
                    links.iter().for_each(|l| e.allow_lost_rst(l));
                }
                return Ok((c, one(e, t)));
            }
            t.proxies.insert(m.clone());
            if self.down.contains(&m) {
                // REDIRECTed to 15006 in the destination, where nothing listens: a RST.
                return Ok((c, one(Expect::one(Refused, sent, Tri::MustNot, Tri::MustNot), t)));
            }
            t.rbac = Some((dst.key.clone(), c.ip, None, ip, port));
            t.allowed = Some(self.app_expect(
                ip,
                port,
                connect.send,
                PathKind::InboundPlaintext,
                Tri::MustNot,
            ));
            let plain = Some(PathKind::InboundPlaintext);
            let mut e = if !self.allowed(dst, c.ip, None, port) {
                Expect::one(Denied, plain, Tri::MustNot, Tri::MustNot)
            } else {
                self.app_expect(ip, port, connect.send, PathKind::InboundPlaintext, Tri::MustNot)
            };
            // The proxy accepted it on 15006: a denial, a closed port behind it or a reset
            // app all end it with a RST from across the link.
            if lossy {
                links.iter().for_each(|l| e.allow_lost_rst(l));
            }
            return Ok((c, one(e, t)));
        }
        if c.node.is_none() {
            return Err("an external host calling another".into());
        }
        let Some(h) = host_at(ip) else { return Err(format!("nothing owns {ip}")) };
        let e = self.app_expect(h.ip, port, connect.send, PathKind::Direct, Tri::MustNot);
        let t = Touches { netns: [c.label.clone(), h.name.clone()].into(), ..Touches::default() };
        Ok((c, one(e, t)))
    }
}
