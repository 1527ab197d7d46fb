//! The netns backend: a scenario run on the real kernel, implementing
//! [`ambient_scenarios::Backend`] (name `netns`).
//!
//! # Using it
//!
//! ```no_run
//! use ambient_netns::backend::NetnsBackend;
//! use ambient_netns::sandbox::Sandbox;
//! use ambient_scenarios::{Backend, RunOptions, check_outcome, load_file};
//!
//! // First thing in main, while the process has one thread (before any tokio runtime):
//! let sandbox = Sandbox::enter().expect("namespaces");
//! let backend = NetnsBackend::new(&sandbox);
//! let path = std::path::Path::new("scenarios/catalog/same-node-hbone.yaml");
//! let world = load_file(path).into_result().unwrap();
//! let run = backend.run(&world, &RunOptions::default()).expect("ran");
//! assert!(check_outcome(&world, &run.outcome).is_empty());
//! ```
//!
//! [`Backend::run`] blocks the calling thread until the scenario is done (waits and holds take
//! real time); call it from a plain thread, not from inside an async runtime. Runs may follow
//! one another in one process; each builds and tears down its own namespaces.
//!
//! # What a run does
//!
//! 1. **Topology** ([`plan`], [`topology`]): a namespace per node, per pod, per external host and
//!    one `wan`; veth pairs, a bridge per node, addresses, routes and sysctls through
//!    rtnetlink; each captured pod gets the World's rule text through `iptables-restore` and its
//!    fwmark rule and local route (table 100) through rtnetlink. Each namespace has its own
//!    worker thread with a current-thread runtime.
//! 2. **Proxies** ([`proxies`]): a real `NodeProxy` per node over `LinuxNetwork`, on the node
//!    namespace's thread, with its 15001/15006/15008 listeners inside each captured pod's
//!    namespace; the proxies get `ClusterState::mesh_spec()` at start and after every mesh
//!    fault, and the scenario's DNS server (the external host with `dns:`) as their DNS
//!    upstream. With a [`ProxyPlan`] naming ztunnel ([`NetnsBackend::with_proxies`]), those
//!    nodes run a real ztunnel instead ([`ztunnels`]: the harness is its CNI agent and its
//!    istiod; its DNS proxy forwards to the DNS server host, named in a resolv.conf of its
//!    own); the faults then map as that module says. Apps listen in their pods and hosts ([`traffic`]); the DNS server host
//!    runs the scenario library's DNS server on UDP and TCP 53.
//! 3. **Steps** ([`run`]): the shared `ambient_scenarios::step_driver` walks them and decides
//!    the order of effects, the slots and keys (the same code as the simulator); [`run`]
//!    performs the effects. `connect` runs `traffic::run_client` from the client's namespace
//!    (`count` one after another, `parallel` at once, `background` started and settled at the
//!    `check` naming it or at the end); `resolve` (and a connect with `resolve: true`, before
//!    each connection) runs `traffic::dns::lookup` in the client's namespace: a real query to
//!    the DNS server's address, port 53, which a captured pod's rules REDIRECT to its proxy's
//!    15053; faults as below; `wait` sleeps; `check` snapshots.
//! 4. **Observation** ([`observe`]): at each `check` and at the end, once settled, `conntrack -L`
//!    of every pod and host, `iptables-save -c` of every captured pod, tunnels from the
//!    proxies' events; connections are assembled from client reports, proxy events and app
//!    accepts by `ambient_scenarios::assemble`, the code the simulator uses.
//! 5. **Teardown**: proxies crashed, delay lines dropped (told to stop), then every namespace dropped (links, routes, rules and
//!    conntrack go with them) — on success, on error and on panic (drop order); on Ctrl-C or
//!    SIGKILL the whole sandbox goes with the process (see [`crate::sandbox`]).
//!
//! # Faults on the kernel
//!
//! | fault | how |
//! | --- | --- |
//! | `partition: [a, b]` | both nodes drop everything they forward onto their inter-node link (filter FORWARD in the node namespaces): both directions cut, silently, routes unchanged |
//! | `loss` | the same rule with `-m statistic --mode random --probability p`, each direction |
//! | `latency` | both nodes queue what they forward onto the link (`-j NFQUEUE`, after the drop rules) to a delay line on their namespace's thread ([`crate::nfqueue`]) that accepts each packet `add` after it arrived, in order: the kernel holds the real packet meanwhile. No netem (this project's kernels lack `sch_netem`); no `--queue-bypass` (unbound, the queue drops rather than pass packets undelayed); the line is bound before its rule is loaded |
//! | `heal` | the link's rules removed, then its delay lines stopped (what they hold is released at once); without nodes, every link's |
//! | `crash` / `start` / `restart: proxy@n` | `NodeProxy::crash` (every task and socket dropped now) / a new `NodeProxy` with the node's captured pods re-added |
//! | `flush-conntrack: x` | `conntrack -F` in x's namespace |
//! | `delete-pod` | as a real deletion: its namespace goes first — its apps and its own clients die with it (a client that had not reported reports `ClientReport::killed`, as in the simulator) and the kernel closes their sockets while the pod is still plugged in; then the proxy stops serving it (GOAWAY; its tunnels close once unused), the mesh is updated, and its veth goes |
//! | `add-pod` | the pod is built like the others (namespace, veth, rules), the mesh is updated, its apps start, then it is added to its node's proxy |
//! | `apply` / `remove` | the mesh is updated; the proxies re-check live connections |
//!
//! # Simplifications
//!
//! - No kube-proxy: a Service VIP means something only to a captured client (its proxy resolves
//!   it). An uncaptured client's packets to a VIP go to the wan, which has no route for it.
//! - Conntrack entries keep the kernel's ephemeral ports; comparisons mask them.
//! - No packet capture: a run asked for `pcap` is refused with an error (never a silent run
//!   without them; `testbed run` refuses `--pcap` with `--backend netns` as bad usage);
//!   `trace` gives a `trace.txt` with the state after every step.
//! - Ports and payload are the simulator's; timing is the kernel's: waits and holds take real
//!   time, and snapshots settle (see [`observe`]) rather than read at an instant.

pub mod faults;
pub mod observe;
pub mod plan;
pub mod proxies;
pub mod run;
pub mod topology;
pub mod traffic;
pub mod ztunnels;

use ambient_scenarios::backend::Artifact;
use ambient_scenarios::{Backend, BackendError, Run, RunOptions, World};

pub use proxies::{ProxyKind, ProxyPlan};
pub use run::Injected;

use crate::sandbox::Sandbox;

/// Runs scenarios in network namespaces on this machine's kernel. Needs an entered [`Sandbox`].
#[derive(Debug)]
pub struct NetnsBackend<'s> {
    sandbox: &'s Sandbox,
    inject: Option<(usize, Injected)>,
    plan: ProxyPlan,
}

impl<'s> NetnsBackend<'s> {
    /// A backend that builds its namespaces inside `sandbox`.
    pub fn new(sandbox: &'s Sandbox) -> NetnsBackend<'s> {
        NetnsBackend { sandbox, inject: None, plan: ProxyPlan::default() }
    }

    /// Runs these proxies on the nodes instead of ours everywhere (see [`ProxyPlan`]).
    pub fn with_proxies(mut self, plan: ProxyPlan) -> NetnsBackend<'s> {
        self.plan = plan;
        self
    }

    /// What runs on the nodes.
    pub fn proxies(&self) -> &ProxyPlan {
        &self.plan
    }

    /// For tests that prove teardown: instead of performing step `step` (0-based), fail the run
    /// the given way. Production code never calls this.
    pub fn inject(mut self, step: usize, what: Injected) -> NetnsBackend<'s> {
        self.inject = Some((step, what));
        self
    }
}

impl Backend for NetnsBackend<'_> {
    fn name(&self) -> &'static str {
        "netns"
    }

    fn run(&self, world: &World, opts: &RunOptions) -> Result<Run, BackendError> {
        if opts.pcap {
            return Err(BackendError::new(
                "the netns backend does not capture packets (pcap); the simulator does",
            ));
        }
        let seed = opts.seed.unwrap_or(world.seed);
        let runner =
            run::Runner::start(self.sandbox, world, seed, opts.trace, self.inject, &self.plan)
                .map_err(|e| BackendError::new(format!("{}: setting up: {e}", world.file)))?;
        let (outcome, trace, logs) =
            runner.run().map_err(|e| BackendError::new(format!("{}: {e}", world.file)))?;
        let artifacts = trace
            .map(|t| Artifact { name: "trace.txt".into(), bytes: t.into_bytes() })
            .into_iter()
            .chain(logs.into_iter().map(|(name, bytes)| Artifact { name, bytes }))
            .collect();
        Ok(Run { outcome, artifacts })
    }
}
