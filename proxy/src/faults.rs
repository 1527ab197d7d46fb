//! Seeded fault points (in the style of FoundationDB's BUGGIFY): named places in the data path
//! where a test can make the proxy fail in ways the simulated network cannot cause on its own.
//!
//! | point | where | what the proxy does when it fires |
//! | --- | --- | --- |
//! | [`FaultPoint::DialFails`] | HBONE dial (`node/hbone.rs`) | the tunnel dial fails at once, as a refused connect would (every caller waiting on that dial shares the error) |
//! | [`FaultPoint::SlowTls`] | 15008 accept (`node/inbound.rs`) | waits [`FaultPlan::tls_delay`] before the TLS handshake: a slow peer |
//! | [`FaultPoint::GoAway`] | 15008, per accepted stream | sends a graceful h2 GOAWAY after accepting the stream: the source must dial anew for later streams |
//! | [`FaultPoint::StreamReset`] | 15008, after the CONNECT is answered 200 | resets the stream and the app connection instead of copying |
//!
//! **How it is switched.** A [`FaultPlan`] is a runtime value in [`ProxyConfig::faults`]
//! (`None` by default). With `None` every point is one `Option` check and nothing else. The
//! plan's seeded rng decides at each point, so a simulated run with a plan is still a pure
//! function of its seed. Every injected failure says so in the proxy's events (the message
//! contains [`INJECTED`]), and the plan counts what fired ([`FaultPlan::fired`]).
//!
//! **Why a runtime plan and not a cargo feature.** Cargo unifies features across everything
//! built together: if the fuzzer (built into the `testbed` binary) enabled a `fault-points`
//! feature of this crate, the same binary's `testbed proxy` would be compiled with it too, so a
//! feature would not keep the points out of "production". What keeps them out is that no
//! production path can construct a plan: `testbed proxy` builds its `ProxyConfig` from a config
//! file whose schema (`config.rs`, unknown keys rejected) has no key for it, and the netns
//! backend never sets it. Only code that calls [`FaultPlan::new`] itself — the simulator when
//! the fuzzer asks — has fault points.
//!
//! **Planted bugs** (feature `planted-bugs`, enabled only as a dev-dependency of the fuzzer's
//! tests): `PlantedBug` flips one behaviour so a test can show the fuzzer finds and shrinks
//! it. Without the feature the type does not exist; with it, a bug is still only active in a
//! plan a test built with `FaultPlan::with_planted`. (Dev-dependency features are unified
//! only into test builds, never into `cargo build --release`.)
//!
//! [`ProxyConfig::faults`]: crate::ProxyConfig::faults

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every message of an injected failure contains this.
pub const INJECTED: &str = "injected fault";

/// A named fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultPoint {
    DialFails,
    SlowTls,
    GoAway,
    StreamReset,
}

impl FaultPoint {
    pub const ALL: [FaultPoint; 4] =
        [FaultPoint::DialFails, FaultPoint::SlowTls, FaultPoint::GoAway, FaultPoint::StreamReset];

    pub fn name(self) -> &'static str {
        match self {
            FaultPoint::DialFails => "dial-fails",
            FaultPoint::SlowTls => "slow-tls",
            FaultPoint::GoAway => "goaway",
            FaultPoint::StreamReset => "stream-reset",
        }
    }
}

impl fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How often each point fires: a probability per opportunity, in per mille (0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    pub dial_fails: u16,
    pub slow_tls: u16,
    pub goaway: u16,
    pub stream_reset: u16,
}

impl FaultRates {
    pub fn get(&self, p: FaultPoint) -> u16 {
        match p {
            FaultPoint::DialFails => self.dial_fails,
            FaultPoint::SlowTls => self.slow_tls,
            FaultPoint::GoAway => self.goaway,
            FaultPoint::StreamReset => self.stream_reset,
        }
    }

    pub fn is_zero(&self) -> bool {
        FaultPoint::ALL.iter().all(|p| self.get(*p) == 0)
    }
}

/// A behaviour a test flips to show the fuzzer finds it (feature `planted-bugs` only).
#[cfg(feature = "planted-bugs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// RBAC: a matching ALLOW policy is consulted before DENY policies (the facts say DENY
    /// first).
    DenyAfterAllow,
    /// Pool: the key leaves out the source (identity and address), so two pods of a node share
    /// a tunnel and the second is authenticated as the first.
    PoolKeyIgnoresSource,
}

/// Decides at each fault point, from a seeded rng. Shared by every proxy of a run (a restarted
/// proxy keeps drawing from the same stream), so a run stays a function of its seed.
#[derive(Debug)]
pub struct FaultPlan {
    rates: FaultRates,
    tls_delay: Duration,
    rng: Mutex<ChaCha8Rng>,
    fired: Mutex<BTreeMap<FaultPoint, u64>>,
    #[cfg(feature = "planted-bugs")]
    planted: Option<PlantedBug>,
}

impl FaultPlan {
    /// A plan drawing from `seed`; a point fires with probability `rates.get(point)` / 1000.
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        FaultPlan {
            rates,
            tls_delay: Duration::from_millis(1500),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0xb0661f7)),
            fired: Mutex::new(BTreeMap::new()),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// The same plan with one behaviour flipped (tests of the fuzzer only).
    #[cfg(feature = "planted-bugs")]
    pub fn with_planted(mut self, bug: PlantedBug) -> Self {
        self.planted = Some(bug);
        self
    }

    /// Whether `bug` is planted in this plan.
    #[cfg(feature = "planted-bugs")]
    pub fn planted(&self, bug: PlantedBug) -> bool {
        self.planted == Some(bug)
    }

    pub fn rates(&self) -> FaultRates {
        self.rates
    }

    /// How long [`FaultPoint::SlowTls`] holds the handshake back.
    pub fn tls_delay(&self) -> Duration {
        self.tls_delay
    }

    /// Decides whether `point` fires now (one draw from the plan's rng when its rate is not 0).
    pub fn fires(&self, point: FaultPoint) -> bool {
        let rate = self.rates.get(point);
        if rate == 0 {
            return false;
        }
        let draw = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random_range(0..1000u16);
        let fire = draw < rate;
        if fire {
            *self.fired.lock().unwrap_or_else(|e| e.into_inner()).entry(point).or_insert(0) += 1;
            tracing::debug!(point = %point, "{INJECTED}");
        }
        fire
    }

    /// How often each point fired so far.
    pub fn fired(&self) -> BTreeMap<FaultPoint, u64> {
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// [`PlantedBug::DenyAfterAllow`]: a matching ALLOW decides before any DENY is looked at.
#[cfg(feature = "planted-bugs")]
pub(crate) fn deny_after_allow(
    set: &crate::policy::PolicySet,
    w: &crate::mesh::Workload,
    attrs: &crate::policy::ConnectionAttrs,
) -> crate::policy::Verdict {
    use crate::policy::{AuthzAction, PolicySet, VerdictReason, evaluate};
    let allows = PolicySet {
        authorizations: set
            .authorizations
            .iter()
            .filter(|a| a.action == AuthzAction::Allow)
            .cloned()
            .collect(),
        peer_authentications: set.peer_authentications.clone(),
    };
    let v = evaluate(&allows, w, attrs);
    if v.allowed && v.reason == VerdictReason::AllowedByPolicy {
        return v;
    }
    evaluate(set, w, attrs)
}

/// `Some(plan)` fires `point`: the one check every fault point makes.
pub(crate) fn fires(plan: Option<&std::sync::Arc<FaultPlan>>, point: FaultPoint) -> bool {
    plan.is_some_and(|p| p.fires(point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        let rates = FaultRates { dial_fails: 300, slow_tls: 0, goaway: 500, stream_reset: 1000 };
        let draws = |seed| {
            let p = FaultPlan::new(seed, rates);
            let v: Vec<bool> =
                (0..64).flat_map(|_| FaultPoint::ALL.map(|pt| p.fires(pt))).collect();
            (v, p.fired())
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7).0, draws(8).0);
        let (_, fired) = draws(7);
        assert!(!fired.contains_key(&FaultPoint::SlowTls), "rate 0 never fires");
        assert_eq!(fired[&FaultPoint::StreamReset], 64, "rate 1000 always fires");
        let dial = fired[&FaultPoint::DialFails];
        assert!((5..=40).contains(&dial), "about 30% of 64: {dial}");
    }

    #[test]
    fn no_plan_never_fires() {
        for p in FaultPoint::ALL {
            assert!(!fires(None, p));
        }
    }
}
