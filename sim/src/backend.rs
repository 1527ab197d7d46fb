//! [`SimBackend`]: the simulator behind the `Backend` seam, and [`run`], one run with its
//! artifacts.
//!
//! A run owns everything it uses: a turmoil-net `Net` installed on the calling thread, a
//! current-thread tokio runtime with a paused clock, the topology, the proxies. Nothing outlives
//! it and nothing is global; two runs on two threads are independent. A run is a pure function
//! of (World, seed): the same inputs give a byte-identical Outcome, trace and pcaps.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use ambient_proxy::Resources;
use ambient_proxy::clock::FIXED_ORIGIN;
use ambient_proxy::faults::FaultPlan;
use ambient_scenarios::backend::{Artifact, Backend, BackendError, Run, RunOptions};
use ambient_scenarios::outcome::Outcome;
use ambient_scenarios::world::World;
use turmoil_net::{KernelConfig, Net};

use crate::driver::Driver;
use crate::fabric::{Fabric, Stats, UnderlayPacket, Walks};
use crate::pump::pump;
use crate::shared::Shared;
use crate::topology::Topology;

/// The deterministic simulator (`--backend sim`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimBackend;

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn run(&self, world: &World, opts: &RunOptions) -> Result<Run, BackendError> {
        let r = run(world, opts)?;
        Ok(Run { outcome: r.outcome, artifacts: r.artifacts })
    }
}

/// Everything one run produced.
#[derive(Debug)]
pub struct SimRun {
    pub outcome: Outcome,
    /// `trace.txt` (with `opts.trace`) and one `<namespace>.pcap` per namespace (with
    /// `opts.pcap`).
    pub artifacts: Vec<Artifact>,
    /// The readable trace, when asked for.
    pub trace: Option<String>,
    pub stats: Stats,
    /// What each namespace's model saw, by the Outcome's label (nodes included).
    pub walks: BTreeMap<String, Walks>,
    /// Segments with payload that crossed the underlay between nodes (with
    /// [`Inspect::underlay`]; empty otherwise).
    pub underlay: Vec<UnderlayPacket>,
    /// What each running proxy held when the steps were done, by node.
    pub proxies: BTreeMap<String, Resources>,
}

/// What a caller may ask of a run beyond [`RunOptions`] — the fuzzer's hooks. Nothing here
/// changes what the scenario does unless `faults` is given, and `testbed run` never gives it.
#[derive(Debug, Clone, Default)]
pub struct Inspect {
    /// Seeded fault points for every proxy of the run (`ambient_proxy::faults`). Make a fresh
    /// plan per run: it carries its rng.
    pub faults: Option<Arc<FaultPlan>>,
    /// Record the segments that cross the underlay between nodes ([`SimRun::underlay`]).
    pub underlay: bool,
}

/// The substrate's TCP settings: its own count-based retransmission off (the harness
/// retransmits on Linux's timers, `tcp.rs`); a backlog large enough for any burst; the receive
/// buffer the harness's window updates assume (`tcp::RECV_BUF`).
fn kernel_config() -> KernelConfig {
    KernelConfig::default()
        .retx_threshold(u32::MAX)
        .default_backlog(65_536)
        .recv_buf_cap(crate::tcp::RECV_BUF)
}

/// Runs `world` once (with `opts.seed`, else the scenario's seed).
pub fn run(world: &World, opts: &RunOptions) -> Result<SimRun, BackendError> {
    run_inspected(world, opts, &Inspect::default())
}

/// [`run`], with the fuzzer's hooks ([`Inspect`]).
pub fn run_inspected(
    world: &World,
    opts: &RunOptions,
    inspect: &Inspect,
) -> Result<SimRun, BackendError> {
    // An internal bug must not take the caller down with it: it becomes an error naming the
    // scenario (the scenario itself can never cause one; bad input is refused with a message).
    match catch_unwind(AssertUnwindSafe(|| run_inner(world, opts, inspect))) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(BackendError::new(format!("simulator internal error in {}: {what}", world.id)))
        }
    }
}

fn run_inner(world: &World, opts: &RunOptions, inspect: &Inspect) -> Result<SimRun, BackendError> {
    let seed = opts.seed.unwrap_or(world.seed);
    let mut net = Net::with_config(kernel_config());
    let topo = Topology::build(world, &mut net)?;
    let guard = net.enter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| BackendError::new(format!("simulator: cannot build a runtime: {e}")))?;
    let result = rt.block_on(async {
        let pcap = opts.pcap.then_some(FIXED_ORIGIN);
        let mut fabric = Fabric::new(topo, seed, opts.trace, pcap);
        if inspect.underlay {
            fabric.tap_underlay();
        }
        let shared = Arc::new(Shared::new(fabric, opts.trace));
        let driver = Driver::new(world, seed, shared.clone())?.with_faults(inspect.faults.clone());
        let (outcome, proxies) = tokio::select! {
            biased;
            r = driver.run_inspected() => r?,
            () = pump(shared.clone(), &guard) => return Err(BackendError::new("simulator: the packet loop stopped")),
        };
        // Streams still queued for a reset hold the shared state; let them go while the
        // substrate is installed.
        drop(shared.take_resets());
        let mut f = shared.state();
        let stats = f.stats;
        let walks = f.walks.iter().map(|(id, w)| (f.topo.slot(*id).label.clone(), *w)).collect();
        let mut artifacts = Vec::new();
        let trace = shared.log().trace.take().map(|t| t.text());
        if let Some(t) = &trace {
            artifacts.push(Artifact { name: "trace.txt".into(), bytes: t.clone().into_bytes() });
        }
        if let Some(c) = f.captures.take() {
            for (id, bytes) in c.into_files() {
                let name = format!("{}.pcap", f.topo.slot(id).label);
                artifacts.push(Artifact { name, bytes });
            }
        }
        let underlay = f.underlay.take().unwrap_or_default();
        Ok(SimRun { outcome, artifacts, trace, stats, walks, underlay, proxies })
    });
    // Tasks still alive drop their sockets with the runtime, which needs the substrate.
    drop(rt);
    drop(guard);
    result
}
