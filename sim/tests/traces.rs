//! A readable trace of every catalog scenario, snapshotted: packets with the hooks and rules
//! they hit and their conntrack state, proxy decisions and steps interleaved, in simulated
//! time. A behaviour change of the model, the proxy or the loop shows up as a diff here.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always` and `git diff`).

mod support;

use ambient_scenarios::backend::RunOptions;
use support::{catalog, world};

#[test]
fn catalog_traces() {
    for path in catalog() {
        let w = world(&path);
        let opts = RunOptions { trace: true, ..RunOptions::default() };
        let run = ambient_sim::run(&w, &opts).unwrap_or_else(|e| panic!("{}: {e}", w.id));
        let trace = run.trace.expect("a trace was asked for");
        insta::with_settings!({ snapshot_suffix => w.id.clone(), prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!("trace", trace);
        });
    }
}
