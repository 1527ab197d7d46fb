//! The shrinker: reduces a failing case to a small one that still breaks the same invariant.
//!
//! Greedy passes over the case itself, repeated until none makes progress (or the budget of
//! runs is spent): drop the proxy fault points; drop steps (one at a time, then a pod with
//! every step naming it); drop pods, services, policies, the external host; simplify policies
//! (rules, sources, fields); simplify connections (one instead of many, fewer bytes, no hold,
//! foreground); shorten waits; drop unused nodes. A candidate the loader rejects is skipped —
//! removing a pod that a later step names makes one, and that is expected here, unlike in
//! generation. Every candidate keeps the case's seed, so what is left is the same run minus
//! what was removed.

use ambient_proxy::istio::PolicyObject;

use crate::case::{Case, Peer, Repeat, Step, Target};

/// Tries candidates; `fails` says whether one still breaks the invariant.
#[derive(Debug)]
pub struct Shrinker<F: FnMut(&Case) -> bool> {
    fails: F,
    /// Candidate runs left.
    budget: usize,
    /// Candidate runs made.
    pub tried: usize,
}

impl<F: FnMut(&Case) -> bool> Shrinker<F> {
    pub fn new(fails: F, budget: usize) -> Self {
        Shrinker { fails, budget, tried: 0 }
    }

    fn accept(&mut self, candidate: &Case) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        self.tried += 1;
        (self.fails)(candidate)
    }

    /// Tries each candidate `edit(case, i)` for i in 0.. (until it returns `None`), keeping
    /// those that still fail. Returns whether any was kept.
    fn pass(
        &mut self,
        case: &mut Case,
        mut edit: impl FnMut(&Case, usize) -> Option<Option<Case>>,
    ) -> bool {
        let mut progress = false;
        let mut i = 0;
        while let Some(candidate) = edit(case, i) {
            match candidate {
                Some(c) if c != *case && self.accept(&c) => {
                    *case = c;
                    progress = true;
                    // The same index now names the next element: try it again.
                }
                _ => i += 1,
            }
        }
        progress
    }

    /// Shrinks `case` as far as the passes go.
    pub fn shrink(&mut self, mut case: Case) -> Case {
        loop {
            let mut progress = false;
            progress |= self.pass(&mut case, |c, i| {
                (i == 0).then(|| c.fault_points.map(|_| Case { fault_points: None, ..c.clone() }))
            });
            progress |= self.pass(&mut case, |c, i| {
                (i < c.steps.len()).then(|| {
                    let mut n = c.clone();
                    n.steps.remove(c.steps.len() - 1 - i);
                    Some(n)
                })
            });
            progress |= self.pass(&mut case, drop_pod);
            progress |= self.pass(&mut case, |c, i| {
                (i < c.services.len()).then(|| {
                    let mut n = c.clone();
                    n.services.remove(i);
                    Some(n)
                })
            });
            progress |= self.pass(&mut case, |c, i| {
                (i < c.policies.len()).then(|| {
                    let mut n = c.clone();
                    n.policies.remove(i);
                    Some(n)
                })
            });
            progress |= self.pass(&mut case, |c, i| {
                (i == 0).then(|| c.external.then(|| Case { external: false, ..c.clone() }))
            });
            progress |= self.pass(&mut case, simplify_policy);
            progress |= self.pass(&mut case, simplify_step);
            progress |= self.pass(&mut case, |c, i| {
                (i == 0).then(|| {
                    let used = c
                        .pods
                        .iter()
                        .map(|p| p.node)
                        .chain(c.steps.iter().flat_map(step_nodes))
                        .max()
                        .unwrap_or(0);
                    (used + 1 < c.nodes).then(|| Case { nodes: used + 1, ..c.clone() })
                })
            });
            if !progress || self.budget == 0 {
                return case;
            }
        }
    }
}

fn step_nodes(s: &Step) -> Vec<usize> {
    match s {
        Step::Partition(a, b) | Step::Latency(a, b, _) | Step::Loss(a, b, _) => vec![*a, *b],
        Step::Heal(Some((a, b))) => vec![*a, *b],
        Step::Crash(n) | Step::Restart(n) | Step::Start(n) => vec![*n],
        Step::AddPod(p) => vec![p.node],
        _ => Vec::new(),
    }
}

fn names_pod(s: &Step, name: &str, ns: &str) -> bool {
    let peer = |p: &Peer| matches!(p, Peer::Pod { name: n, namespace: s } if n == name && s == ns);
    match s {
        Step::Connect(c) => {
            peer(&c.from)
                || matches!(&c.to, Target::Pod { name: n, namespace: s, .. } if n == name && s == ns)
        }
        Step::FlushConntrack(p) => peer(p),
        Step::DeletePod { name: n, namespace: s } => n == name && s == ns,
        Step::AddPod(p) => p.name == name && p.namespace == ns,
        _ => false,
    }
}

/// Candidate `i`: the i-th pod (initial, then added) gone, with every step that names it.
fn drop_pod(c: &Case, i: usize) -> Option<Option<Case>> {
    let added: Vec<(String, String)> = c
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::AddPod(p) => Some(p.key()),
            _ => None,
        })
        .collect();
    let all: Vec<(String, String)> = c.pods.iter().map(|p| p.key()).chain(added).collect();
    let (name, ns) = all.get(i)?.clone();
    let mut n = c.clone();
    n.pods.retain(|p| !(p.name == name && p.namespace == ns));
    if n.pods.is_empty() {
        return Some(None);
    }
    n.steps.retain(|s| !names_pod(s, &name, &ns));
    Some(Some(n))
}

/// Simplifications of one policy object, as JSON edits: drop a rule, a source, a field.
fn policy_edits(p: &PolicyObject) -> Vec<PolicyObject> {
    let Ok(v) = serde_json::to_value(p) else { return Vec::new() };
    let mut out = Vec::new();
    let mut push = |v: serde_json::Value| {
        if let Ok(p) = serde_json::from_value::<PolicyObject>(v) {
            out.push(p);
        }
    };
    let rules = v["spec"]["rules"].as_array().cloned().unwrap_or_default();
    for i in 0..rules.len() {
        let mut n = v.clone();
        if let Some(a) = n["spec"]["rules"].as_array_mut() {
            a.remove(i);
        }
        push(n);
    }
    for (ri, rule) in rules.iter().enumerate() {
        for part in ["from", "to"] {
            let Some(items) = rule[part].as_array() else { continue };
            let mut n = v.clone();
            if let Some(r) = n["spec"]["rules"][ri].as_object_mut() {
                r.remove(part);
            }
            push(n);
            for j in 0..items.len() {
                let mut n = v.clone();
                if let Some(a) = n["spec"]["rules"][ri][part].as_array_mut() {
                    a.remove(j);
                }
                push(n);
                let inner = if part == "from" { "source" } else { "operation" };
                let fields: Vec<String> = items[j][inner]
                    .as_object()
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                for f in fields {
                    let mut n = v.clone();
                    if let Some(o) = n["spec"]["rules"][ri][part][j][inner].as_object_mut() {
                        o.remove(&f);
                    }
                    push(n.clone());
                    if let Some(list) = n["spec"]["rules"][ri][part][j][inner][&f].as_array_mut()
                        && list.len() > 1
                    {
                        let mut m = v.clone();
                        if let Some(l) = m["spec"]["rules"][ri][part][j][inner][&f].as_array_mut() {
                            l.truncate(1);
                        }
                        push(m);
                    }
                }
            }
        }
    }
    if v["spec"].get("selector").is_some() {
        let mut n = v.clone();
        if let Some(s) = n["spec"].as_object_mut() {
            s.remove("selector");
        }
        push(n);
    }
    if v["spec"].get("portLevelMtls").is_some() {
        let mut n = v.clone();
        if let Some(s) = n["spec"].as_object_mut() {
            s.remove("portLevelMtls");
        }
        push(n);
    }
    out
}

/// Candidate `i` over (policy, edit) pairs of the initial policies and `apply` steps.
fn simplify_policy(c: &Case, i: usize) -> Option<Option<Case>> {
    let mut k = i;
    for (pi, p) in c.policies.iter().enumerate() {
        let edits = policy_edits(p);
        if k < edits.len() {
            let mut n = c.clone();
            n.policies[pi] = edits[k].clone();
            return Some(Some(n));
        }
        k -= edits.len();
    }
    for (si, s) in c.steps.iter().enumerate() {
        let Step::Apply(p) = s else { continue };
        let edits = policy_edits(p);
        if k < edits.len() {
            let mut n = c.clone();
            n.steps[si] = Step::Apply(edits[k].clone());
            return Some(Some(n));
        }
        k -= edits.len();
    }
    None
}

/// Candidate `i` over (step, simplification) pairs: fewer connections, fewer bytes, no hold,
/// foreground, shorter waits.
fn simplify_step(c: &Case, i: usize) -> Option<Option<Case>> {
    const EDITS: usize = 6;
    let (si, e) = (i / EDITS, i % EDITS);
    c.steps.get(si)?;
    let mut n = c.clone();
    let changed = match (&mut n.steps[si], e) {
        (Step::Connect(x), 0) if x.repeat != Repeat::Count(1) => {
            x.repeat = Repeat::Count(1);
            true
        }
        (Step::Connect(x), 1) => match x.repeat {
            Repeat::Parallel(k) if k > 2 => {
                x.repeat = Repeat::Parallel(k / 2);
                true
            }
            Repeat::Count(k) if k > 1 => {
                x.repeat = Repeat::Count(k / 2);
                true
            }
            _ => false,
        },
        (Step::Connect(x), 2) if x.send > 1024 => {
            x.send = 1024;
            true
        }
        (Step::Connect(x), 3) if x.hold_ms > 0 && !x.background => {
            x.hold_ms = 0;
            true
        }
        (Step::Connect(x), 4) if x.background => {
            x.background = false;
            x.hold_ms = 0;
            true
        }
        (Step::WaitMs(ms), 5) if *ms > 1_000 => {
            *ms /= 2;
            true
        }
        _ => false,
    };
    Some(changed.then_some(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Connect;
    use crate::runner::{case_seed, generate, load};
    use crate::strategy::Limits;

    /// A connect of at least 1 KiB between two different pods on different nodes.
    fn culprit(c: &Connect, case: &Case) -> bool {
        let (Peer::Pod { name: a, namespace: na }, Target::Pod { name: b, namespace: nb, .. }) =
            (&c.from, &c.to)
        else {
            return false;
        };
        let (Some(a), Some(b)) = (case.find_pod(a, na), case.find_pod(b, nb)) else {
            return false;
        };
        c.send >= 1024 && a.node != b.node
    }

    /// With a synthetic property ("some cross-node pod-to-pod connect of ≥ 1 KiB"), the
    /// shrinker reduces big generated cases to the two pods and the one step the property
    /// needs, and never keeps a case the loader rejects.
    #[test]
    fn shrinks_to_what_the_property_needs() {
        let mut shrunk = 0;
        for i in 0..200 {
            let case = generate(Limits::default(), case_seed(5, i), "shrink");
            let fails = |c: &Case| load(c).is_ok() && c.connects().any(|x| culprit(x, c));
            if !fails(&case) || case.size().0 < 4 || case.steps.len() < 6 {
                continue;
            }
            let mut s = Shrinker::new(fails, 10_000);
            let small = s.shrink(case.clone());
            assert!(fails(&small), "case {i}: the shrunk case lost the property");
            let (pods, steps, policies) = small.size();
            // The connect, and the add-pod of a pod it names if that pod was added by a step.
            let added = small.steps.iter().filter(|s| matches!(s, Step::AddPod(_))).count();
            assert_eq!(
                (pods, steps - added, policies),
                (2, 1, 0),
                "case {i}:\n{}",
                small.to_yaml()
            );
            assert!(small.services.is_empty() && !small.external && small.fault_points.is_none());
            let c = small.connects().next().map(|c| (c.send, c.repeat, c.hold_ms, c.background));
            assert_eq!(c, Some((1024, Repeat::Count(1), 0, false)), "case {i}");
            let used =
                small.pods.iter().map(|p| p.node).chain(small.steps.iter().flat_map(step_nodes));
            let used = used.max().unwrap_or(0);
            assert_eq!(small.nodes, used + 1, "case {i}: unused nodes are dropped");
            shrunk += 1;
        }
        assert!(shrunk >= 10, "only {shrunk} of 200 cases had the property");
    }

    /// The budget bounds the runs, and a shrink that cannot remove anything returns the case.
    #[test]
    fn respects_the_budget() {
        let case = generate(Limits::default(), case_seed(5, 1), "budget");
        let mut s = Shrinker::new(|_: &Case| true, 7);
        let _ = s.shrink(case.clone());
        assert_eq!(s.tried, 7);
        let mut s = Shrinker::new(|_: &Case| false, 10_000);
        assert_eq!(s.shrink(case.clone()), case);
    }
}
