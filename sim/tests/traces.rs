//! A readable trace of every catalog scenario, snapshotted: packets with the hooks and rules
//! they hit and their conntrack state, proxy decisions and steps interleaved, in simulated
//! time. A behaviour change of the model, the proxy or the loop shows up as a diff here.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always` and `git diff`).
//!
//! A trace longer than [`MAX_LINES`] (the scale scenarios: `scale-1000-connections` has some
//! 26,000 lines, `pooling-150-parallel` some 4,000) is snapshotted as a bounded excerpt — its
//! first [`HEAD`] and last [`TAIL`] lines — and a summary of the whole: how many lines, packets
//! per namespace, direction and TCP flags, proxy events per node and kind, and a digest of the
//! full text, so any change to the part left out still fails the test, and the summary says
//! roughly where.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ambient_scenarios::backend::RunOptions;
use support::{catalog, world};

/// Traces up to this many lines are snapshotted whole.
const MAX_LINES: usize = 1_000;
/// Lines of a longer trace kept from its start and its end.
const HEAD: usize = 150;
const TAIL: usize = 20;

/// FNV-1a, 64 bits: a stable digest with no dependency.
fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// What one line counts as in the summary, and how many events it stands for (`×N`).
fn kind_of(line: &str) -> (String, u64) {
    let words: Vec<&str> = line.split(' ').collect();
    let times =
        words.last().and_then(|w| w.strip_prefix('×')).and_then(|n| n.parse().ok()).unwrap_or(1);
    let (subject, verb) =
        (words.get(1).copied().unwrap_or(""), words.get(2).copied().unwrap_or(""));
    let kind = match (subject, verb) {
        ("step", _) => "step".to_string(),
        (_, "proxy") => {
            let event = line
                .split_once(r#""event":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("?", |(e, _)| e);
            format!("{subject} proxy {event}")
        }
        // `out tcp A > B FLAGS …`, `in eth0 tcp A > B FLAGS …`
        (_, "out" | "in") => {
            let flags = words.iter().position(|w| *w == ">").and_then(|i| words.get(i + 2));
            let dir = if verb == "in" {
                format!("in {}", words.get(3).unwrap_or(&"?"))
            } else {
                verb.into()
            };
            format!("{subject} {dir} {}", flags.unwrap_or(&"?"))
        }
        (_, "") => subject.to_string(),
        _ => format!("{subject} {verb}"),
    };
    (kind, times)
}

/// The snapshot of a trace: itself, or for a long one an excerpt and a summary.
fn bounded(trace: &str) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    if lines.len() <= MAX_LINES {
        return trace.to_string();
    }
    let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in &lines {
        let (kind, times) = kind_of(l);
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += times;
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} lines ({} bytes, FNV-1a {:016x}); the first {HEAD} and the last {TAIL} follow the summary",
        lines.len(),
        trace.len(),
        fnv1a(trace)
    );
    let _ = writeln!(s, "# summary: kind — lines, events (segments for packet lines)");
    for (kind, (n, times)) in &kinds {
        let _ = writeln!(s, "#   {kind} — {n}, {times}");
    }
    for l in &lines[..HEAD] {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "# … {} lines left out …", lines.len() - HEAD - TAIL);
    for l in &lines[lines.len() - TAIL..] {
        let _ = writeln!(s, "{l}");
    }
    s
}

#[test]
fn catalog_traces() {
    for path in catalog() {
        let w = world(&path);
        let opts = RunOptions { trace: true, ..RunOptions::default() };
        let run = ambient_sim::run(&w, &opts).unwrap_or_else(|e| panic!("{}: {e}", w.id));
        let trace = bounded(&run.trace.expect("a trace was asked for"));
        insta::with_settings!({ snapshot_suffix => w.id.clone(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("trace", trace);
        });
    }
}

#[test]
fn a_long_trace_is_bounded_and_any_change_shows() {
    let long: String = (0..MAX_LINES + 50)
        .map(|i| {
            format!("0.{i:06} client.default out tcp 10.0.1.2:1 > 10.0.1.3:2 PA len=60 | x ×2\n")
        })
        .collect();
    let b = bounded(&long);
    assert_eq!(b.lines().filter(|l| !l.starts_with('#')).count(), HEAD + TAIL, "{b}");
    assert!(b.contains("#   client.default out PA — 1050, 2100"), "{b}");
    // A change in the part left out changes the snapshot.
    let changed = long.replacen("0.000500 client.default", "0.000500 client.other", 1);
    assert_ne!(bounded(&changed), b);
    let short = "0.000000 step 0 connect\n";
    assert_eq!(bounded(short), short);
}
