//! The driver's decisions, checked with a backend that only records the effects asked of it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::*;
use crate::load::load_str;
use crate::outcome::State;
use crate::world::{NodeLink, Pod};

fn load(text: &str) -> World {
    load_str("t.yaml", text).into_result().unwrap_or_else(|e| {
        panic!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })
}

/// Records every effect, one line each; `snapshot` returns the default state.
#[derive(Default)]
struct Recorder {
    log: Vec<String>,
    /// Every batch's (first slot, payload keys, query ids).
    batches: Vec<(usize, Vec<u64>, Vec<u16>)>,
    query_ids: Vec<u16>,
}

impl Recorder {
    fn push(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }
}

fn pods(cluster: &ClusterState<'_>) -> String {
    cluster.pods.keys().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn link(l: &NodeLink) -> String {
    format!("{}-{}", l.a, l.b)
}

impl Effects for Recorder {
    type Error = String;

    async fn step_started(&mut self, step: &Step) -> Result<(), String> {
        self.push(format!("[{step}]"));
        Ok(())
    }
    async fn steps_done(&mut self) {
        self.push("steps done");
    }
    async fn start_clients(&mut self, batch: ClientBatch<'_>) -> Result<(), String> {
        let keys = batch.clients.iter().map(|(spec, _)| spec.payload).collect();
        let ids = batch.clients.iter().filter_map(|(_, b)| b.as_ref()).map(|b| b.spec.id).collect();
        let how = if batch.parallel { "parallel" } else { "sequential" };
        self.push(format!("start {} slots {:?} {how}", batch.id, batch.slots()));
        self.batches.push((batch.first_slot, keys, ids));
        Ok(())
    }
    async fn join(&mut self, id: &str) -> Result<(), String> {
        self.push(format!("join {id}"));
        Ok(())
    }
    async fn lookup(
        &mut self,
        id: &str,
        _: &Peer,
        spec: LookupSpec,
        _: LookupCell,
    ) -> Result<(), String> {
        self.query_ids.push(spec.id);
        self.push(format!("lookup {id}"));
        Ok(())
    }
    async fn settle(&mut self) {
        self.push("settle");
    }
    async fn snapshot(&mut self, _: &ClusterState<'_>) -> Result<State, String> {
        self.push("snapshot");
        Ok(State::default())
    }
    async fn wait(&mut self, d: Duration) {
        self.push(format!("wait {d:?}"));
    }
    async fn partition(&mut self, l: &NodeLink) -> Result<(), String> {
        self.push(format!("partition {}", link(l)));
        Ok(())
    }
    async fn latency(&mut self, l: &NodeLink, add: Duration) -> Result<(), String> {
        self.push(format!("latency {} {add:?}", link(l)));
        Ok(())
    }
    async fn loss(&mut self, l: &NodeLink, rate: f64) -> Result<(), String> {
        self.push(format!("loss {} {rate}", link(l)));
        Ok(())
    }
    async fn heal(&mut self, l: Option<&NodeLink>) -> Result<(), String> {
        self.push(format!("heal {}", l.map_or("all".into(), link)));
        Ok(())
    }
    async fn crash_proxy(&mut self, node: &str, _: &ClusterState<'_>) -> Result<(), String> {
        self.push(format!("crash {node}"));
        Ok(())
    }
    async fn start_proxy(&mut self, node: &str, c: &ClusterState<'_>) -> Result<(), String> {
        self.push(format!("start {node} [{}]", pods(c)));
        Ok(())
    }
    async fn flush_conntrack(&mut self, peer: &Peer) -> Result<(), String> {
        self.push(format!("flush {}", peer.label()));
        Ok(())
    }
    async fn update_mesh(&mut self, c: &ClusterState<'_>) -> Result<(), String> {
        self.push(format!("mesh [{}]", pods(c)));
        Ok(())
    }
    async fn kill_pod(&mut self, pod: &Pod) -> Result<(), String> {
        self.push(format!("kill {}", pod.label()));
        Ok(())
    }
    async fn release_pod(&mut self, pod: &Pod) -> Result<(), String> {
        self.push(format!("cni-del {}", pod.label()));
        Ok(())
    }
    async fn unplug_pod(&mut self, pod: &Pod) -> Result<(), String> {
        self.push(format!("unplug {}", pod.label()));
        Ok(())
    }
    async fn plug_pod(&mut self, pod: &Pod, step: usize) -> Result<(), String> {
        self.push(format!("plug {} (step {step})", pod.label()));
        Ok(())
    }
    async fn start_apps(&mut self, pod: &Pod) -> Result<(), String> {
        self.push(format!("apps {}", pod.label()));
        Ok(())
    }
    async fn attach_pod(&mut self, pod: &Pod) -> Result<(), String> {
        self.push(format!("cni-add {}", pod.label()));
        Ok(())
    }
}

fn drive(world: &World) -> (Recorder, Driven) {
    let mut fx = Recorder::default();
    let driven = block_on(StepDriver::new(world, world.seed).run(&mut fx)).expect("driven");
    (fx, driven)
}

/// The lines logged from step `index`'s start to the next step's.
fn step_log(fx: &Recorder, index: usize) -> Vec<&str> {
    let at = |i: usize| fx.log.iter().position(|l| l.starts_with(&format!("[step {i} ")));
    let from = at(index).expect("step logged") + 1;
    let to = at(index + 1).or_else(|| fx.log.iter().position(|l| l == "steps done"));
    fx.log[from..to.unwrap_or(fx.log.len())].iter().map(String::as_str).collect()
}

const CHURN: &str = r#"
description: churn
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, ambient: true}
    - {name: server, node: node-b, ambient: true, serve: [{port: 8080, app: echo}]}
    - {name: legacy, node: node-b, ambient: false, serve: [{port: 8080, app: echo}]}
steps:
  - connect: {id: c1, from: client, to: server:8080}
  - fault: {delete-pod: server}
  - fault: {delete-pod: legacy}
  - fault:
      add-pod: {name: newcomer, node: node-b, ip: 10.0.2.2, ambient: true, serve: [{port: 8080, app: sink}]}
  - fault: {restart: proxy@node-a}
  - fault: {partition: [node-a, node-b]}
  - fault: {heal: [node-a, node-b]}
  - wait: 1s
"#;

#[test]
fn delete_pod_kills_the_processes_then_cni_del_then_the_mesh_then_the_network() {
    let (fx, _) = drive(&load(CHURN));
    assert_eq!(
        step_log(&fx, 1),
        [
            "kill server.default",
            "cni-del server.default",
            "mesh [client.default,legacy.default]",
            "unplug server.default",
            "settle",
        ]
    );
    // A pod outside the mesh has no CNI DEL: nothing but the mesh is told.
    assert_eq!(
        step_log(&fx, 2),
        ["kill legacy.default", "mesh [client.default]", "unplug legacy.default", "settle"]
    );
}

#[test]
fn add_pod_plugs_the_network_then_the_mesh_then_the_apps_then_cni_add() {
    let (fx, _) = drive(&load(CHURN));
    assert_eq!(
        step_log(&fx, 3),
        [
            "plug newcomer.default (step 3)",
            "mesh [client.default,newcomer.default]",
            "apps newcomer.default",
            "cni-add newcomer.default",
            "settle",
        ]
    );
}

#[test]
fn a_restart_is_a_crash_then_a_start_with_the_cluster_of_that_step() {
    let (fx, _) = drive(&load(CHURN));
    assert_eq!(
        step_log(&fx, 4),
        ["crash node-a", "start node-a [client.default,newcomer.default]", "settle"]
    );
    assert_eq!(step_log(&fx, 5), ["partition node-a-node-b", "settle"]);
    assert_eq!(step_log(&fx, 6), ["heal node-a-node-b", "settle"]);
}

const TRAFFIC: &str = r#"
description: traffic
seed: 11
cluster:
  nodes: [node-a]
  pods:
    - {name: client, node: node-a, ambient: true}
    - {name: server, node: node-a, ambient: true, serve: [{port: 8080, app: echo}]}
  external:
    - {name: dns, ip: 203.0.113.53, dns: {records: {server.example.com: 10.0.1.3}}}
steps:
  - connect: {id: first, from: client, to: server:8080, count: 2}
  - connect: {id: bg, from: client, to: server:8080, parallel: 3, hold: 5s, background: true}
  - connect: {id: late, from: client, to: server:8080, hold: 5s, background: true}
  - resolve: {id: r1, from: client, name: server.example.com}
  - connect: {id: named, from: client, to: "server.example.com:8080", resolve: true, count: 2}
  - check:
      connections:
        bg: {outcome: ok}
  - wait: 2s
"#;

#[test]
fn slots_follow_start_order_and_key_the_payloads() {
    let w = load(TRAFFIC);
    let (fx, driven) = drive(&w);
    let ids: Vec<&str> = driven.slots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["first", "first", "bg", "bg", "bg", "late", "named", "named"]);
    assert!(driven.slots.iter().all(|s| s.from == "client.default"));
    let keys = |first: usize, n: usize| (first..first + n).map(|i| Payload::key(11, i as u64));
    let firsts: Vec<usize> = fx.batches.iter().map(|b| b.0).collect();
    assert_eq!(firsts, [0, 2, 5, 6]);
    for (first, got, _) in &fx.batches {
        assert_eq!(got, &keys(*first, got.len()).collect::<Vec<_>>());
    }
    // The lookups are numbered in start order: the resolve step's, then one per connection to
    // the name.
    let lookups: Vec<&str> = driven.lookups.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(lookups, ["r1", "named", "named"]);
    assert_eq!(fx.query_ids, [query_id(11, 0)]);
    assert_eq!(fx.batches[3].2, [query_id(11, 1), query_id(11, 2)]);
    assert!(fx.batches[..3].iter().all(|b| b.2.is_empty()));
}

#[test]
fn background_connections_join_at_the_check_naming_them_or_at_the_end() {
    let (fx, driven) = drive(&load(TRAFFIC));
    assert_eq!(step_log(&fx, 0), ["start first slots 0..2 sequential", "join first", "settle"]);
    assert_eq!(step_log(&fx, 1), ["start bg slots 2..5 parallel"]);
    assert_eq!(step_log(&fx, 2), ["start late slots 5..6 sequential"]);
    assert_eq!(step_log(&fx, 3), ["lookup r1", "settle"]);
    assert_eq!(step_log(&fx, 5), ["join bg", "settle", "snapshot"]);
    let end = fx.log.iter().position(|l| l == "[step 6 wait 2s]").expect("the wait");
    assert_eq!(
        fx.log[end..],
        ["[step 6 wait 2s]", "wait 2s", "join late", "settle", "steps done", "snapshot"]
    );
    assert_eq!(driven.checks.iter().map(|c| c.step).collect::<Vec<_>>(), [5]);
}

#[test]
fn a_step_displays_as_its_trace_line() {
    let w = load(TRAFFIC);
    let lines: Vec<String> = w.steps.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "step 0 connect first client.default -> server.default:8080 (10.0.1.3:8080) count 2",
            "step 1 connect bg client.default -> server.default:8080 (10.0.1.3:8080) parallel 3 \
             background",
            "step 2 connect late client.default -> server.default:8080 (10.0.1.3:8080) background",
            "step 3 resolve r1 client.default server.example.com over udp (203.0.113.53:53)",
            "step 4 connect named client.default -> server.example.com:8080 (10.0.1.3:8080) count 2",
            "step 5 check",
            "step 6 wait 2s",
        ]
    );
    let churn = load(CHURN);
    assert_eq!(churn.steps[1].to_string(), "step 1 fault delete-pod server.default");
}

/// A future that is not ready at its first poll and wakes itself, as one waiting on another
/// thread would.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = u8;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
        if self.0 {
            return Poll::Ready(7);
        }
        self.0 = true;
        let waker = cx.waker().clone();
        std::thread::spawn(move || waker.wake());
        Poll::Pending
    }
}

#[test]
fn block_on_waits_for_a_future_woken_from_another_thread() {
    assert_eq!(block_on(YieldOnce(false)), 7);
}
