//! The outbound route decision (port 15001): where a captured app's connection goes.
//!
//! Pure: a function of (the pod whose namespace the listener is in, the connection's source
//! address, original destination, mesh state, node, rng). The rng chooses among a service's
//! endpoints, so the choice is deterministic for a seeded rng.
//!
//! The source identity is the identity of the *pod whose namespace captured the connection*,
//! never of the packet's source address: an app can add any address to its own `lo` and bind
//! it, but it cannot leave its namespace. A source address that is not that pod's is refused.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use rand::{Rng, RngExt};
use serde::Serialize;

use crate::identity::Identity;
use crate::inpod::{INBOUND_HBONE_PORT, SELF_CALL_PORTS};
use crate::mesh::MeshState;

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "path")]
pub enum OutboundPlan {
    /// Over mTLS + HTTP/2 CONNECT to the destination pod's node proxy.
    Hbone(Box<HbonePlan>),
    /// Plain TCP to an out-of-mesh destination.
    Passthrough {
        /// Where to connect (the original destination, or a chosen endpoint of a service).
        dst: SocketAddr,
        /// `name.namespace` when the destination was a service VIP.
        service: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HbonePlan {
    pub source_identity: Identity,
    pub destination_identity: Identity,
    /// The destination pod as `name.namespace`.
    pub destination_workload: String,
    pub destination_node: String,
    /// `endpointIP:15008`.
    pub gateway: SocketAddr,
    /// `endpointIP:targetPort`, the CONNECT authority.
    pub authority: SocketAddr,
    /// `name.namespace` when the destination was a service VIP.
    pub service: Option<String>,
}

/// Why an outbound connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum OutboundReject {
    /// The connection's source is not a captured pod of this node.
    UnknownSource { source: IpAddr },
    /// The source address is not the address of the pod whose namespace the listener is in:
    /// the app bound an address that is not its own (identity spoofing).
    SpoofedSource { source: IpAddr, pod: IpAddr },
    /// It targets the proxy's own listeners.
    SelfCall { dst: SocketAddr },
    /// A service VIP with no endpoint.
    NoEndpoint { service: String },
}

impl fmt::Display for OutboundReject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundReject::UnknownSource { source } => {
                write!(f, "unknown source {source}: not a captured pod of this node")
            }
            OutboundReject::SpoofedSource { source, pod } => write!(
                f,
                "source {source} is not the address of pod {pod}, whose network namespace \
                 captured the connection: refused"
            ),
            OutboundReject::SelfCall { dst } => {
                write!(f, "self-call to the proxy's own port {dst}")
            }
            OutboundReject::NoEndpoint { service } => {
                write!(f, "service {service} has no endpoint")
            }
        }
    }
}

/// True when `dst` is one of this proxy's own listeners: a self-call port on loopback or on a
/// captured pod of this node (the proxy listens in every captured pod's netns).
pub fn is_self_call(mesh: &MeshState, node: &str, dst: SocketAddr) -> bool {
    SELF_CALL_PORTS.contains(&dst.port())
        && (dst.ip().is_loopback()
            || dst.ip().is_unspecified()
            || mesh.local_captured(node, dst.ip()).is_some())
}

/// Decide the route of a connection from `source` (the app's address) to `original_dst`
/// (SO_ORIGINAL_DST), captured by `node`'s proxy in the namespace of pod `pod`.
pub fn plan_outbound(
    mesh: &MeshState,
    node: &str,
    pod: IpAddr,
    source: IpAddr,
    original_dst: SocketAddr,
    rng: &mut impl Rng,
) -> Result<OutboundPlan, OutboundReject> {
    if source != pod {
        return Err(OutboundReject::SpoofedSource { source, pod });
    }
    let src = mesh.local_captured(node, pod).ok_or(OutboundReject::UnknownSource { source })?;
    if is_self_call(mesh, node, original_dst) {
        return Err(OutboundReject::SelfCall { dst: original_dst });
    }
    let (target, service) = match mesh.service(original_dst.ip()) {
        Some(svc) => match svc.target_port(original_dst.port()) {
            Some(target_port) => {
                let endpoints = mesh.endpoints(svc);
                if endpoints.is_empty() {
                    return Err(OutboundReject::NoEndpoint { service: svc.qualified_name() });
                }
                let pick = endpoints[rng.random_range(0..endpoints.len())];
                (SocketAddr::new(pick, target_port), Some(svc.qualified_name()))
            }
            // A VIP on a port the service does not expose goes nowhere useful; send it on as is.
            None => (original_dst, Some(svc.qualified_name())),
        },
        None => (original_dst, None),
    };
    match mesh.workload(target.ip()).filter(|w| w.captured) {
        Some(dst) => Ok(OutboundPlan::Hbone(Box::new(HbonePlan {
            source_identity: mesh.identity(src),
            destination_identity: mesh.identity(dst),
            destination_workload: dst.qualified_name(),
            destination_node: dst.node.clone(),
            gateway: SocketAddr::new(target.ip(), INBOUND_HBONE_PORT),
            authority: target,
            service,
        }))),
        None => Ok(OutboundPlan::Passthrough { dst: target, service }),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::mesh::{MeshSpec, Service, Workload};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn mesh() -> MeshState {
        MeshState::new(MeshSpec {
            workloads: vec![
                Workload::new("client", "node-a", ip("10.0.1.5")).service_account("sleep"),
                Workload::new("client-out", "node-a", ip("10.0.1.6")).uncaptured(),
                Workload::new("echo-1", "node-b", ip("10.0.2.5"))
                    .service_account("echo")
                    .label("app", "echo"),
                Workload::new("echo-2", "node-b", ip("10.0.2.6"))
                    .service_account("echo")
                    .label("app", "echo"),
                Workload::new("legacy", "node-b", ip("10.0.2.7"))
                    .uncaptured()
                    .label("app", "legacy"),
                Workload::new("other-ns", "node-b", ip("10.0.2.8"))
                    .namespace("prod")
                    .label("app", "echo"),
            ],
            services: vec![
                Service::new("echo", ip("10.96.0.10")).port(80, 8080).select("app", "echo"),
                Service::new("legacy", ip("10.96.0.11")).port(80, 9090).select("app", "legacy"),
                Service::new("empty", ip("10.96.0.12")).port(80, 8080).select("app", "nothing"),
                Service::new("ext", ip("10.96.0.13")).port(443, 443),
            ],
            ..MeshSpec::default()
        })
        .unwrap()
    }

    /// A connection from `src` captured in `src`'s own namespace.
    fn plan(src: &str, dst: &str) -> Result<OutboundPlan, OutboundReject> {
        plan_in(src, src, dst)
    }

    /// A connection from `src` captured in pod `pod`'s namespace.
    fn plan_in(pod: &str, src: &str, dst: &str) -> Result<OutboundPlan, OutboundReject> {
        plan_outbound(
            &mesh(),
            "node-a",
            ip(pod),
            ip(src),
            sa(dst),
            &mut ChaCha8Rng::seed_from_u64(1),
        )
    }

    fn hbone(p: Result<OutboundPlan, OutboundReject>) -> HbonePlan {
        match p {
            Ok(OutboundPlan::Hbone(h)) => *h,
            other => panic!("expected hbone, got {other:?}"),
        }
    }

    #[test]
    fn table() {
        // (case, source, original destination, expected)
        let passthrough = |dst: &str, svc: Option<&str>| {
            Ok(OutboundPlan::Passthrough { dst: sa(dst), service: svc.map(str::to_string) })
        };
        let cases: Vec<(&str, &str, &str, Result<OutboundPlan, OutboundReject>)> = vec![
            (
                "out-of-mesh pod → passthrough",
                "10.0.1.5",
                "10.0.2.7:9090",
                passthrough("10.0.2.7:9090", None),
            ),
            (
                "unknown address → passthrough",
                "10.0.1.5",
                "203.0.113.10:443",
                passthrough("203.0.113.10:443", None),
            ),
            (
                "service of out-of-mesh pods → passthrough to endpoint:targetPort",
                "10.0.1.5",
                "10.96.0.11:80",
                passthrough("10.0.2.7:9090", Some("legacy.default")),
            ),
            (
                "service without selector or endpoints → no endpoint",
                "10.0.1.5",
                "10.96.0.13:443",
                Err(OutboundReject::NoEndpoint { service: "ext.default".into() }),
            ),
            (
                "service whose selector matches nothing → no endpoint",
                "10.0.1.5",
                "10.96.0.12:80",
                Err(OutboundReject::NoEndpoint { service: "empty.default".into() }),
            ),
            (
                "VIP on a port the service lacks → passthrough unchanged",
                "10.0.1.5",
                "10.96.0.10:81",
                passthrough("10.96.0.10:81", Some("echo.default")),
            ),
            (
                "unknown source → reject",
                "10.0.9.9",
                "10.0.2.5:8080",
                Err(OutboundReject::UnknownSource { source: ip("10.0.9.9") }),
            ),
            (
                "uncaptured source → reject",
                "10.0.1.6",
                "10.0.2.5:8080",
                Err(OutboundReject::UnknownSource { source: ip("10.0.1.6") }),
            ),
            (
                "source of another node → reject",
                "10.0.2.5",
                "10.0.2.6:8080",
                Err(OutboundReject::UnknownSource { source: ip("10.0.2.5") }),
            ),
            (
                "self-call 15001 on own pod",
                "10.0.1.5",
                "10.0.1.5:15001",
                Err(OutboundReject::SelfCall { dst: sa("10.0.1.5:15001") }),
            ),
            (
                "self-call 15006 on loopback",
                "10.0.1.5",
                "127.0.0.1:15006",
                Err(OutboundReject::SelfCall { dst: sa("127.0.0.1:15006") }),
            ),
            (
                "self-call 15008 on own pod",
                "10.0.1.5",
                "10.0.1.5:15008",
                Err(OutboundReject::SelfCall { dst: sa("10.0.1.5:15008") }),
            ),
        ];
        for (case, src, dst, want) in cases {
            assert_eq!(plan(src, dst), want, "{case}");
        }
    }

    /// An app that binds another captured workload's address (added to its own `lo`) is
    /// refused: the identity is its namespace's pod's, and the address is not that pod's.
    #[test]
    fn a_borrowed_source_address_is_refused() {
        let mut mesh = mesh();
        let mut spec = mesh.spec().clone();
        spec.workloads
            .push(Workload::new("admin", "node-a", ip("10.0.1.9")).service_account("admin"));
        mesh = MeshState::new(spec).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (pod, admin) = (ip("10.0.1.5"), ip("10.0.1.9"));
        for dst in ["10.0.2.5:8080", "10.96.0.10:80", "203.0.113.10:443"] {
            assert_eq!(
                plan_outbound(&mesh, "node-a", pod, admin, sa(dst), &mut rng),
                Err(OutboundReject::SpoofedSource { source: admin, pod }),
                "to {dst}"
            );
        }
        // Also an address that is no workload's at all, and another node's pod.
        assert_eq!(
            plan_in("10.0.1.5", "10.0.2.5", "10.0.2.6:8080"),
            Err(OutboundReject::SpoofedSource { source: ip("10.0.2.5"), pod })
        );
        // The same connection from the pod's own address goes through as the pod.
        let h = hbone(plan_outbound(&mesh, "node-a", admin, admin, sa("10.0.2.5:8080"), &mut rng));
        assert_eq!(h.source_identity.to_string(), "spiffe://cluster.local/ns/default/sa/admin");
    }

    #[test]
    fn pod_ip_in_mesh_goes_hbone_to_its_15008() {
        let h = hbone(plan("10.0.1.5", "10.0.2.5:8080"));
        assert_eq!(h.gateway, sa("10.0.2.5:15008"));
        assert_eq!(h.authority, sa("10.0.2.5:8080"));
        assert_eq!(h.source_identity.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(h.destination_identity.to_string(), "spiffe://cluster.local/ns/default/sa/echo");
        assert_eq!(h.destination_node, "node-b");
        assert_eq!(h.service, None);
        // Port 15008 of a *remote* pod is not a self-call (it is HBONE-in-HBONE, not ours to refuse).
        assert!(matches!(plan("10.0.1.5", "10.0.2.5:15008"), Ok(OutboundPlan::Hbone(_))));
    }

    #[test]
    fn service_vip_picks_a_selected_endpoint_and_maps_the_port() {
        let mesh = mesh();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        let mut picks = Vec::new();
        for _ in 0..64 {
            let p = plan_outbound(
                &mesh,
                "node-a",
                ip("10.0.1.5"),
                ip("10.0.1.5"),
                sa("10.96.0.10:80"),
                &mut rng,
            );
            let h = hbone(p);
            assert_eq!(h.authority.port(), 8080);
            assert_eq!(h.gateway, SocketAddr::new(h.authority.ip(), 15008));
            assert_eq!(h.service.as_deref(), Some("echo.default"));
            seen.insert(h.authority.ip());
            picks.push(h.authority.ip());
        }
        // Only the namespace's selected pods, and both of them over 64 picks.
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [ip("10.0.2.5"), ip("10.0.2.6")]);
        // Deterministic from the seed.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let again: Vec<_> = (0..64)
            .map(|_| {
                let (pod, dst) = (ip("10.0.1.5"), sa("10.96.0.10:80"));
                hbone(plan_outbound(&mesh, "node-a", pod, pod, dst, &mut rng)).authority.ip()
            })
            .collect();
        assert_eq!(picks, again);
    }
}
