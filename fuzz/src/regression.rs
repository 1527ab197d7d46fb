//! A found (and shrunk) case as a regression scenario: a YAML file anyone can rerun, saying
//! which invariant broke and how it was found, with the oracle's exact predictions written as
//! `expect:` blocks so that `testbed run` fails while the bug is there and passes once it is
//! fixed. Invariants `testbed run` cannot check (plaintext, quiescence, determinism) are
//! rerun with `testbed fuzz --replay FILE`.

use std::path::{Path, PathBuf};

use ambient_proxy::faults::FaultRates;
use ambient_scenarios::outcome::ConnOutcome;

use crate::case::{Case, Expect, FaultPoints, Step};
use crate::invariants::Violation;
use crate::oracle::{Prediction, Tri};

/// How a failure was found, for the file's header.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub seed: u64,
    pub index: u64,
    pub case_seed: u64,
    /// (pods, steps, policies) before shrinking.
    pub original: (usize, usize, usize),
}

/// The exact expectation for a connect step, when every repetition of it has one alternative
/// with a single outcome and path (nothing is written otherwise).
fn exact_expect(preds: &[&Prediction]) -> Option<Expect> {
    let first = preds.first()?;
    if first.unmodelled.is_some() || first.alternatives.len() != 1 {
        return None;
    }
    let e = &first.alternatives[0].expect;
    if !e.is_exact() || preds.iter().any(|p| p.alternatives != first.alternatives) {
        return None;
    }
    let outcome = *e.outcomes.iter().next()?;
    let path = *e.paths.iter().next()?;
    let mut x = Expect { outcome: Some(outcome), path: Some(path), ..Expect::default() };
    if outcome == ConnOutcome::Ok {
        x.received =
            (e.ok_replies().len() == 1).then(|| e.ok_replies().into_iter().next()).flatten();
    }
    if e.accepted == Tri::MustNot {
        x.server_peer = Some(None);
    } else if e.accepted == Tri::Must {
        x.server_peer = Some(Some(first.client_ip));
    }
    Some(x)
}

/// The case with the oracle's exact predictions as `expect:` blocks, its id and description
/// set from the failure.
pub fn annotate(case: &Case, preds: &[Prediction], violation: &Violation, id: &str) -> Case {
    let mut out = case.clone();
    out.id = id.to_string();
    out.description = format!(
        "Found by the fuzzer: the invariant `{}` ({}) broke: {}.",
        violation.invariant,
        violation.invariant.promise(),
        violation.to_string().trim_end_matches('.')
    );
    let mut at = 0;
    for s in &mut out.steps {
        let Step::Connect(c) = s else { continue };
        let n = match c.repeat {
            crate::case::Repeat::Count(n) | crate::case::Repeat::Parallel(n) => n as usize,
        };
        let mine: Vec<&Prediction> = preds.iter().skip(at).take(n).collect();
        at += n;
        c.expect = exact_expect(&mine);
    }
    out
}

/// The file's text: a header comment (provenance, the broken invariant, how to rerun) and the
/// scenario.
pub fn render(case: &Case, path: &Path, violation: &Violation, p: &Provenance) -> String {
    let (pods, steps, policies) = case.size();
    let mut head = String::new();
    head.push_str(&format!(
        "# Found by `testbed fuzz --seed {} --cases {}` (case {}, case seed {:#018x}),\n",
        p.seed,
        p.index + 1,
        p.index,
        p.case_seed
    ));
    head.push_str(&format!(
        "# shrunk from {} pods, {} steps, {} policies to {pods} pods, {steps} steps, {policies} policies.\n",
        p.original.0, p.original.1, p.original.2
    ));
    head.push_str(&format!("# Broken invariant: {violation}\n"));
    if let Some(fp) = case.fault_points {
        let r = fp.rates;
        head.push_str(&format!(
            "# It needs the proxy fault points (seed {}, per mille: dial-fails {}, slow-tls {}, goaway {}, stream-reset {}),\n# which only the fuzzer sets: rerun it with `testbed fuzz --replay {} --fault-seed {} --fault-rates {},{},{},{}`.\n",
            fp.seed,
            r.dial_fails,
            r.slow_tls,
            r.goaway,
            r.stream_reset,
            path.display(),
            fp.seed,
            r.dial_fails,
            r.slow_tls,
            r.goaway,
            r.stream_reset
        ));
    } else {
        head.push_str(&format!(
            "# Rerun: testbed run {}                  (the expect blocks: the oracle's predictions)\n#        testbed fuzz --replay {}        (every invariant)\n#        testbed run --backend netns {}    (on the kernel)\n",
            path.display(),
            path.display(),
            path.display()
        ));
    }
    head.push('\n');
    head + &case.to_yaml()
}

/// Where the regression for `id` goes in `dir`.
pub fn path_for(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.yaml"))
}

/// The proxy fault points a regression file's header names (`--fault-seed S --fault-rates
/// D,T,G,R`, as [`render`] writes it), if any: a file found with fault points replays with
/// them.
pub fn fault_points_in(text: &str) -> Option<FaultPoints> {
    let line =
        text.lines().take_while(|l| l.starts_with('#')).find(|l| l.contains("--fault-seed"))?;
    let mut words = line.split_whitespace();
    let seed = words.clone().skip_while(|w| *w != "--fault-seed").nth(1)?;
    let rates = words.by_ref().skip_while(|w| *w != "--fault-rates").nth(1)?;
    let seed = seed.trim_end_matches(['`', '.', ',']).parse().ok()?;
    let r: Vec<u16> = rates
        .trim_end_matches(['`', '.'])
        .split(',')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let &[dial_fails, slow_tls, goaway, stream_reset] = r.as_slice() else { return None };
    Some(FaultPoints { seed, rates: FaultRates { dial_fails, slow_tls, goaway, stream_reset } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gives_the_fault_points_back() {
        let fp = FaultPoints {
            seed: 67073532573741867,
            rates: FaultRates { dial_fails: 164, slow_tls: 0, goaway: 7, stream_reset: 130 },
        };
        let case = Case {
            fault_points: Some(fp),
            ..crate::runner::generate(crate::Limits::default(), 1, "x")
        };
        let v = Violation {
            invariant: crate::Invariant::Oracle,
            connection: None,
            message: "m".into(),
        };
        let p = Provenance { seed: 1, index: 0, case_seed: 1, original: (1, 1, 1) };
        let text = render(&case, Path::new("scenarios/regressions/x.yaml"), &v, &p);
        assert_eq!(fault_points_in(&text), Some(fp));
        let plain = render(&Case { fault_points: None, ..case }, Path::new("x.yaml"), &v, &p);
        assert_eq!(fault_points_in(&plain), None);
        assert!(crate::runner::load_text("x.yaml", &plain).is_ok(), "the header is a comment");
    }
}
