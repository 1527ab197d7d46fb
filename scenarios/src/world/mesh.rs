//! The cluster as it stands at one point of a run, and the proxy's view of it.
//!
//! Both backends keep a [`ClusterState`], apply the world-changing faults to it in step order
//! (`add-pod`, `delete-pod`, `apply`, `remove`) and give every node proxy [`ClusterState::mesh_spec`]
//! after each change, so the simulator and the kernel harness hand their proxies the same mesh.

use std::collections::BTreeMap;

use ambient_proxy::mesh::{self, MeshSpec};
use ambient_proxy::{MeshState, istio::PolicyObject};

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{App, Dest, Fault, ObjectKey, Pod, Policy, Target, World};

/// The pods that exist and the policies in force.
#[derive(Debug, Clone)]
pub struct ClusterState<'w> {
    world: &'w World,
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Keyed like `remove:` names them; an `apply` of an existing key replaces it.
    pub policies: BTreeMap<ObjectKey, Policy>,
}

impl<'w> ClusterState<'w> {
    /// The cluster when the scenario starts.
    pub fn initial(world: &'w World) -> Self {
        ClusterState {
            world,
            pods: world.pods.clone(),
            policies: world.policies.iter().map(|p| (p.key.clone(), p.clone())).collect(),
        }
    }

    /// Applies `fault` if it changes the mesh; returns whether it did. Link and proxy faults
    /// are the backends' business and leave the state as it is.
    pub fn apply(&mut self, fault: &Fault) -> bool {
        match fault {
            Fault::AddPod { pod, .. } => {
                self.pods.insert(pod.key.clone(), (**pod).clone());
            }
            Fault::DeletePod { pod, .. } => {
                self.pods.remove(pod);
            }
            Fault::Apply(policy) => {
                self.policies.insert(policy.key.clone(), (**policy).clone());
            }
            Fault::Remove(key) => {
                self.policies.remove(key);
            }
            Fault::Partition(_)
            | Fault::Heal(_)
            | Fault::Latency { .. }
            | Fault::Loss { .. }
            | Fault::RestartProxy(_)
            | Fault::CrashProxy(_)
            | Fault::StartProxy(_)
            | Fault::FlushConntrack(_) => return false,
        }
        true
    }

    /// What the node proxies know: every pod as a workload (captured or not), every service with
    /// its selector (the proxy resolves endpoints from the workloads' labels), the policies.
    pub fn mesh_spec(&self) -> MeshSpec {
        let workloads = self
            .pods
            .values()
            .map(|p| mesh::Workload {
                name: p.key.name.clone(),
                namespace: p.key.namespace.clone(),
                service_account: p.service_account.clone(),
                node: p.node.clone(),
                ip: p.ip.into(),
                labels: p.labels.clone(),
                captured: p.is_captured(),
            })
            .collect();
        let services = self
            .world
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
                selector: Some(s.selector.clone()),
                endpoints: Vec::new(),
            })
            .collect();
        let policies: Vec<PolicyObject> =
            self.policies.values().map(|p| p.object.clone()).collect();
        MeshSpec { trust_domain: self.world.trust_domain.clone(), workloads, services, policies }
    }

    /// The app serving `target` now: the pod's or host's app on that port; for a service, the
    /// app on the target port if every current endpoint runs the same one. `None` when nothing
    /// serves it (or endpoints disagree).
    pub fn app_for(&self, target: &Target) -> Option<App> {
        let pod_app = |ip: Ipv4Addr, port: u16| {
            self.pods.values().find(|p| p.ip == ip).and_then(|p| p.serve.get(&port)).copied()
        };
        match &target.dest {
            Dest::Service { key, port } => {
                let svc = self.world.services.get(key)?;
                let mut apps = self
                    .pods
                    .values()
                    .filter(|p| svc.selects(p))
                    .map(|p| p.serve.get(&port.target_port).copied());
                let first = apps.next()??;
                apps.all(|a| a == Some(first)).then_some(first)
            }
            Dest::Pod(_) | Dest::Address => {
                pod_app(*target.addr.ip(), target.addr.port()).or_else(|| self.host_app(target))
            }
            Dest::External(_) => self.host_app(target),
        }
    }

    /// For a Service target: the app each current endpoint runs on the target port (an
    /// endpoint serving nothing there is left out). The route event names the endpoint the
    /// proxy chose, so what the client should read back is known even when the endpoints
    /// disagree and the app's accept cannot be tied to the connection (a crashed proxy logs no
    /// close). Empty for any other target.
    pub fn endpoint_apps(&self, target: &Target) -> Vec<(SocketAddrV4, App)> {
        let Dest::Service { key, port } = &target.dest else { return Vec::new() };
        let Some(svc) = self.world.services.get(key) else { return Vec::new() };
        self.pods
            .values()
            .filter(|p| svc.selects(p))
            .filter_map(|p| {
                let app = p.serve.get(&port.target_port)?;
                Some((SocketAddrV4::new(p.ip, port.target_port), *app))
            })
            .collect()
    }

    fn host_app(&self, target: &Target) -> Option<App> {
        self.world
            .external
            .values()
            .find(|h| h.ip == *target.addr.ip())
            .and_then(|h| h.serve.get(&target.addr.port()))
            .copied()
    }

    /// [`Self::mesh_spec`], validated. A loaded World always validates (the loader compiled its
    /// policies and checked its names and addresses), so an error here is a loader bug; it is
    /// returned rather than hidden.
    pub fn mesh_state(&self) -> Result<MeshState, ambient_proxy::error::ValidationErrors> {
        MeshState::new(self.mesh_spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const TWO_PODS: &str = r#"
description: two pods and a service
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, serviceAccount: sleep, ambient: true, labels: {app: sleep}}
    - {name: server, node: node-b, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
    - {name: legacy, node: node-b, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
  services:
    - {name: echo, vip: 10.96.0.10, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
policies:
  - apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-all, namespace: default}
    spec: {action: DENY, rules: [{from: [{source: {namespaces: ["other"]}}]}]}
steps:
  - connect: {id: c, from: client, to: echo:80}
  - fault: {delete-pod: legacy}
  - fault: {remove: deny-all}
"#;

    #[test]
    fn every_pod_becomes_a_workload_and_the_mesh_validates() {
        let world = load_str("two.yaml", TWO_PODS).into_result().unwrap();
        let state = ClusterState::initial(&world);
        let spec = state.mesh_spec();
        let names: Vec<_> = spec.workloads.iter().map(|w| (w.name.as_str(), w.captured)).collect();
        assert_eq!(names, [("client", true), ("legacy", false), ("server", true)]);
        assert_eq!(spec.services[0].selector.as_ref().unwrap()["app"], "echo");
        assert_eq!(spec.policies.len(), 1);
        state.mesh_state().expect("a loaded world validates");
    }

    #[test]
    fn mesh_faults_change_the_state_and_others_do_not() {
        let world = load_str("two.yaml", TWO_PODS).into_result().unwrap();
        let mut state = ClusterState::initial(&world);
        let faults: Vec<&Fault> = world
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                crate::world::Action::Fault(f) => Some(f),
                _ => None,
            })
            .collect();
        assert!(state.apply(faults[0]));
        assert!(!state.pods.keys().any(|k| k.name == "legacy"));
        assert!(state.apply(faults[1]));
        assert!(state.mesh_spec().policies.is_empty());
        assert!(!state.apply(&Fault::Heal(None)));
    }

    #[test]
    fn the_app_behind_a_target_follows_the_current_endpoints() {
        let world = load_str("two.yaml", TWO_PODS).into_result().unwrap();
        let (_, connect) = world.connects().next().unwrap();
        let mut state = ClusterState::initial(&world);
        // Both endpoints of `echo` (server and legacy) run an echo on the target port.
        assert_eq!(state.app_for(&connect.to), Some(App::Echo));
        state.pods.retain(|k, _| k.name == "client");
        assert_eq!(state.app_for(&connect.to), None, "no endpoint left");
    }
}
