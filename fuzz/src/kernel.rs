//! Replaying a scenario on the kernel (the netns backend): what of the fuzz invariants the
//! kernel can show, on the same world the oracle predicts.
//!
//! The kernel has no tap between nodes, no view of the proxies' resources and no proxy fault
//! points, and its waits take real time: a quiet tail (the last step waiting ≥ 20 minutes, for
//! the simulator's `quiescence` check) is cut to [`KERNEL_TAIL`] — long enough for every proxy
//! dial to end (10 s) — and the oracle predicts that shortened world, so both see the same
//! steps. Checked: `oracle`, `bytes`, `preservation`, and that no step was skipped.

use std::time::Duration;

use ambient_scenarios::outcome::Outcome;
use ambient_scenarios::world::{Action, World};

use crate::invariants::{self, Evidence, Invariant, Violation};
use crate::oracle::predict;

/// What a quiet tail becomes on the kernel.
pub const KERNEL_TAIL: Duration = Duration::from_secs(15);

/// A quiet tail: the simulator's quiescence check waits this long at least.
const QUIET: Duration = Duration::from_secs(20 * 60);

/// `world` as the kernel replays it: a quiet tail cut to [`KERNEL_TAIL`].
pub fn for_kernel(world: &World) -> World {
    let mut w = world.clone();
    if let Some(last) = w.steps.last_mut()
        && matches!(last.action, Action::Wait(d) if d >= QUIET)
    {
        last.action = Action::Wait(KERNEL_TAIL);
    }
    w
}

/// The invariants the kernel's `outcome` of `world` (as [`for_kernel`] made it) must hold.
pub fn check(world: &World, outcome: &Outcome) -> Vec<Violation> {
    let preds = predict(world, false);
    let ev = Evidence { outcome, second: None, underlay: None, proxies: None };
    let mut v = invariants::check(world, &preds, ev);
    for s in &outcome.skipped {
        v.push(Violation {
            invariant: Invariant::Backend,
            connection: None,
            message: format!("step {} skipped on the kernel: {}", s.step, s.reason),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_quiet_tail_is_cut() {
        let text = |tail: &str| {
            format!(
                "description: d\ncluster: {{nodes: [a], pods: [{{name: p, node: a}}]}}\nsteps:\n  - {{wait: 1s}}\n  - {{wait: {tail}}}\n"
            )
        };
        let load = |t: &str| ambient_scenarios::load_str("t.yaml", t).into_result().unwrap();
        let w = for_kernel(&load(&text("30m")));
        assert_eq!(w.steps[1].action, Action::Wait(KERNEL_TAIL));
        assert_eq!(w.steps[0].action, Action::Wait(Duration::from_secs(1)));
        let w = for_kernel(&load(&text("5m")));
        assert_eq!(w.steps[1].action, Action::Wait(Duration::from_secs(300)));
    }
}
