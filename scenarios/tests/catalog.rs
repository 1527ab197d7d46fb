//! The scenario catalog (`scenarios/catalog/`) loads cleanly: no errors, no warnings, unique ids,
//! every scenario says what it proves and expects something of the run.

use std::path::PathBuf;

use ambient_scenarios::world::Action;
use ambient_scenarios::{Catalog, ClusterState, Selection};

fn catalog() -> Catalog {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog");
    Catalog::load(&[dir]).unwrap()
}

#[test]
fn every_catalog_scenario_loads_without_errors_or_warnings() {
    let c = catalog();
    assert!(c.files.len() >= 7, "{} files", c.files.len());
    let problems: Vec<String> =
        c.files.iter().flat_map(|f| f.diagnostics.iter().map(ToString::to_string)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_catalog_scenario_gives_the_proxies_a_valid_mesh_after_every_step() {
    for w in catalog().worlds() {
        let mut state = ClusterState::initial(w);
        state.mesh_state().unwrap_or_else(|e| panic!("{}: initial mesh: {e:?}", w.id));
        for step in &w.steps {
            if let Action::Fault(f) = &step.action
                && state.apply(f)
            {
                state
                    .mesh_state()
                    .unwrap_or_else(|e| panic!("{}: step {}: {e:?}", w.id, step.index));
            }
        }
    }
}

#[test]
fn every_catalog_scenario_describes_and_expects_something() {
    for w in catalog().worlds() {
        assert!(w.description.len() > 40, "{}: say what it proves", w.id);
        assert!(!w.tags.is_empty(), "{}: no tags", w.id);
        let checks_something = !w.expect.is_empty()
            || w.connects().any(|(_, c)| c.expect.is_some())
            || w.steps
                .iter()
                .any(|s| matches!(&s.action, Action::Check(c) if !c.expect.is_empty()));
        assert!(checks_something, "{}: expects nothing", w.id);
    }
}

#[test]
fn the_catalog_covers_the_required_cases() {
    let c = catalog();
    let ids: Vec<&str> = c.worlds().map(|w| w.id.as_str()).collect();
    for id in [
        "same-node-hbone",
        "cross-node-hbone-pooling",
        "passthrough",
        "inbound-plaintext",
        "deny-policy",
        "partition",
        "destination-proxy-restart",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let hbone = Selection { include: vec!["hbone".into()], ..Default::default() };
    assert!(hbone.select(c.worlds()).len() >= 5);
}

#[test]
fn the_readme_first_example_loads_with_the_addresses_it_claims() {
    let readme = include_str!("../README.md");
    let start = readme.find("## A first scenario").unwrap();
    let block = &readme[start..];
    let body = &block[block.find("```yaml\n").unwrap() + 8..];
    let text = &body[..body.find("```").unwrap()];
    let w = ambient_scenarios::load_str("first.yaml", text).into_result().unwrap();
    let ips: Vec<String> = w.pods.values().map(|p| format!("{} {}", p.key, p.ip)).collect();
    assert_eq!(ips, ["client.default 10.0.1.2", "server.default 10.0.2.2"]);
}
