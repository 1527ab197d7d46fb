//! Resets as the kernel sends them, over the whole catalog: a socket a reset has closed sends
//! no reset of its own when its owner then closes it abortively (the kernel's socket is in
//! TCP_CLOSE; `tcp_close` sends nothing) — it answers only a segment that still reaches it.

mod support;

use std::collections::BTreeMap;

use ambient_scenarios::backend::RunOptions;
use support::{catalog, world};

/// A packet line's namespace, direction, flags and where it was delivered (`local A > B`).
struct Walk<'a> {
    netns: &'a str,
    out: bool,
    sent: (&'a str, &'a str),
    flags: &'a str,
    delivered: Option<(&'a str, &'a str)>,
}

fn parse(line: &str) -> Option<Walk<'_>> {
    let w: Vec<&str> = line.split(' ').collect();
    let out = *w.get(2)? == "out";
    if !out && *w.get(2)? != "in" {
        return None;
    }
    let at = w.iter().position(|x| *x == "tcp")?;
    let delivered = line.rsplit_once("| local ").map(|(_, rest)| {
        let mut p = rest.split(' ');
        (p.next().unwrap_or(""), p.nth(1).unwrap_or(""))
    });
    Some(Walk {
        netns: w[1],
        out,
        sent: (w.get(at + 1)?, w.get(at + 3)?),
        flags: w.get(at + 4)?,
        delivered,
    })
}

#[test]
fn a_socket_closed_by_a_reset_sends_no_reset_of_its_own() {
    for path in catalog() {
        let w = world(&path);
        let opts = RunOptions { trace: true, ..RunOptions::default() };
        let run = ambient_sim::run(&w, &opts).unwrap();
        let trace = run.trace.unwrap();
        // (netns, local, remote) of sockets a reset reached → whether a segment reached them
        // since (the kernel answers that with a reset).
        let mut closed: BTreeMap<(&str, &str, &str), bool> = BTreeMap::new();
        for line in trace.lines() {
            let Some(p) = parse(line) else { continue };
            if p.out && p.flags.starts_with('R') {
                let key = (p.netns, p.sent.0, p.sent.1);
                if let Some(answering) = closed.get_mut(&key) {
                    assert!(*answering, "{}: a reset from a closed socket:\n{line}", w.id);
                    *answering = false;
                }
            }
            if let Some((from, to)) = p.delivered {
                let key = (p.netns, to, from);
                if p.flags.starts_with('R') {
                    closed.insert(key, false);
                } else if let Some(answering) = closed.get_mut(&key) {
                    *answering = true;
                }
            }
        }
    }
}
