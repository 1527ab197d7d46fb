//! The scenario catalog (`scenarios/catalog/`) loads cleanly (no errors, no warnings, unique ids),
//! every scenario says what it proves, uses the documented tags, and the catalog covers every
//! case the conformance suite must cover — each checked against what the scenario actually does
//! (its topology, steps and expectations), not only against its name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use ambient_scenarios::expect::{ConnField, Expectations};
use ambient_scenarios::outcome::{ConnOutcome, PathKind, TcpState};
use ambient_scenarios::world::{Action, Connect, Dest, Fault, PeerKind, Pod, Repeat};
use ambient_scenarios::{Catalog, ClusterState, Selection, World};

fn catalog() -> Catalog {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("catalog");
    Catalog::load(&[dir]).unwrap()
}

const README: &str = include_str!("../README.md");

#[test]
fn every_catalog_scenario_loads_without_errors_or_warnings() {
    let c = catalog();
    assert!(c.files.len() >= 40, "{} files; the catalog needs at least 40", c.files.len());
    let problems: Vec<String> =
        c.files.iter().flat_map(|f| f.diagnostics.iter().map(ToString::to_string)).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(c.worlds().count(), c.files.len(), "every file gives a scenario");
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
        assert!(w.description.len() > 80, "{}: say what it proves", w.id);
        assert!(!w.tags.is_empty(), "{}: no tags", w.id);
        let checks_something = !w.expect.is_empty()
            || w.connects().any(|(_, c)| c.expect.is_some())
            || w.resolves().any(|(_, r)| r.expect.is_some())
            || w.steps
                .iter()
                .any(|s| matches!(&s.action, Action::Check(c) if !c.expect.is_empty()));
        assert!(checks_something, "{}: expects nothing", w.id);
    }
}

/// The tags of the README's tag table (`| `tag` | meaning |` rows under `### Tags`).
fn documented_tags() -> BTreeSet<String> {
    let start = README.find("### Tags").expect("README has a ### Tags section");
    let section = &README[start..];
    let section = &section[..section[3..].find("\n#").map_or(section.len(), |e| e + 3)];
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(tag, _)| tag.to_string()))
        .collect()
}

#[test]
fn catalog_tags_are_the_documented_vocabulary() {
    let documented = documented_tags();
    assert!(documented.len() >= 15, "tag table not found: {documented:?}");
    let mut used = BTreeSet::new();
    for w in catalog().worlds() {
        for t in &w.tags {
            assert!(documented.contains(t), "{}: tag {t:?} is not in the README's tag table", w.id);
            used.insert(t.clone());
        }
    }
    let unused: Vec<&String> = documented.difference(&used).collect();
    assert!(unused.is_empty(), "documented tags no scenario uses: {unused:?}");
}

#[test]
fn the_readme_catalog_table_names_every_scenario() {
    let start = README.find("## The catalog").expect("README has a ## The catalog section");
    let section = &README[start..];
    let section = &section[..section.find("### Tags").unwrap()];
    let named: BTreeSet<&str> = section
        .lines()
        .filter(|l| l.starts_with("| "))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .collect();
    let c = catalog();
    let ids: BTreeSet<&str> = c.worlds().map(|w| w.id.as_str()).collect();
    let unknown: Vec<&&str> = named.difference(&ids).collect();
    let missing: Vec<&&str> = ids.difference(&named).collect();
    assert!(
        unknown.is_empty(),
        "the README's table names scenarios that do not exist: {unknown:?}"
    );
    assert!(missing.is_empty(), "scenarios missing from the README's table: {missing:?}");
}

#[test]
fn tag_selection_finds_each_area() {
    let c = catalog();
    for (tag, at_least) in
        [("hbone", 25), ("authz", 15), ("faults", 8), ("misdirected", 4), ("conntrack", 8)]
    {
        let sel = Selection { include: vec![tag.into()], ..Default::default() };
        let n = sel.select(c.worlds()).len();
        assert!(n >= at_least, "--include {tag} selects {n}, expected at least {at_least}");
    }
}

// ---------------------------------------------------------------------------------------------
// Coverage: each required case names the scenario that covers it and what that scenario must
// contain for the claim to hold.

/// Every pod the scenario ever has: the initial ones and those `add-pod` creates.
fn all_pods(w: &World) -> Vec<&Pod> {
    let added = w.steps.iter().filter_map(|s| match &s.action {
        Action::Fault(Fault::AddPod { pod, .. }) => Some(pod.as_ref()),
        _ => None,
    });
    w.pods.values().chain(added).collect()
}

fn client<'w>(w: &'w World, c: &Connect) -> Option<&'w Pod> {
    match &c.from.kind {
        PeerKind::Pod(k) => all_pods(w).into_iter().find(|p| &p.key == k),
        PeerKind::External(_) => None,
    }
}

fn target_pod<'w>(w: &'w World, c: &Connect) -> Option<&'w Pod> {
    match &c.to.dest {
        Dest::Pod(k) => all_pods(w).into_iter().rev().find(|p| &p.key == k),
        _ => None,
    }
}

/// Nodes of the pods a connection's Service selects when the scenario starts.
fn service_nodes(w: &World, c: &Connect) -> BTreeSet<String> {
    let Dest::Service { key, .. } = &c.to.dest else { return BTreeSet::new() };
    w.services[key].endpoints.iter().map(|e| w.pods[e].node.clone()).collect()
}

/// Every expect block: the top level and each `check` step.
fn blocks(w: &World) -> Vec<&Expectations> {
    let checks = w.steps.iter().filter_map(|s| match &s.action {
        Action::Check(c) => Some(&c.expect),
        _ => None,
    });
    std::iter::once(&w.expect).chain(checks).collect()
}

/// Everything expected of a connect id, wherever it is written.
fn fields<'w>(w: &'w World, c: &'w Connect) -> Vec<&'w ConnField> {
    let own = c.expect.iter().flat_map(|e| e.fields.iter().map(|f| &f.value));
    let elsewhere = blocks(w)
        .into_iter()
        .filter_map(|b| b.connections.get(&c.id))
        .flat_map(|e| e.fields.iter().map(|f| &f.value));
    own.chain(elsewhere).collect()
}

fn expects(w: &World, c: &Connect, f: &ConnField) -> bool {
    fields(w, c).contains(&f)
}

fn outcome(w: &World, c: &Connect, o: ConnOutcome) -> bool {
    expects(w, c, &ConnField::Outcome(o))
}

fn path(w: &World, c: &Connect, p: PathKind) -> bool {
    expects(w, c, &ConnField::Path(Some(p)))
}

fn connects(w: &World) -> impl Iterator<Item = &Connect> {
    w.connects().map(|(_, c)| c)
}

/// The tunnel count expected for `pair` in any expect block (the last one written).
fn tunnels(w: &World, pair: &str) -> Option<u64> {
    blocks(w)
        .into_iter()
        .filter_map(|b| b.tunnels.iter().find(|(p, _)| p.to_string() == pair))
        .map(|(_, n)| n.value)
        .next()
}

/// The top-level expected value of `rule`'s counter in `pod` (`name.namespace`).
fn counter(w: &World, pod: &str, rule: &str) -> Option<u64> {
    let rules = w.expect.counters.get(pod)?;
    rules.iter().find(|(r, _)| r.to_string() == rule).map(|(_, n)| n.value)
}

fn conntrack_states(e: &Expectations) -> BTreeSet<TcpState> {
    e.conntrack.values().flat_map(|v| v.value.iter().filter_map(|p| p.state)).collect()
}

fn faults(w: &World) -> Vec<&Fault> {
    w.steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Fault(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// The steps as (index, action), to say "this after that".
fn step_index(w: &World, pred: impl Fn(&Action) -> bool) -> Option<usize> {
    w.steps.iter().position(|s| pred(&s.action))
}

/// Every policy object (in force at the start or applied by a step) as JSON.
fn policies(w: &World) -> Vec<serde_json::Value> {
    let applied = faults(w).into_iter().filter_map(|f| match f {
        Fault::Apply(p) => Some(p.as_ref()),
        _ => None,
    });
    w.policies.iter().chain(applied).map(|p| serde_json::to_value(&p.object).unwrap()).collect()
}

/// A policy of `kind` whose JSON has a non-empty array or string at `key`, somewhere.
fn policy_with(w: &World, kind: &str, action: Option<&str>, key: &str) -> bool {
    fn has(v: &serde_json::Value, key: &str) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| {
                (k == key
                    && match v {
                        serde_json::Value::Array(a) => !a.is_empty(),
                        serde_json::Value::String(s) => !s.is_empty(),
                        serde_json::Value::Object(o) => !o.is_empty(),
                        _ => false,
                    })
                    || has(v, key)
            }),
            serde_json::Value::Array(a) => a.iter().any(|v| has(v, key)),
            _ => false,
        }
    }
    policies(w).iter().any(|p| {
        p["kind"] == kind
            && action.is_none_or(|a| p["spec"]["action"] == a)
            && (key.is_empty() || has(&p["spec"], key))
    })
}

fn policy_in_namespace(w: &World, ns: &str) -> bool {
    policies(w).iter().any(|p| p["metadata"]["namespace"] == ns)
}

fn captured(p: Option<&Pod>) -> Option<bool> {
    p.map(Pod::is_captured)
}

fn same_node(w: &World, c: &Connect) -> Option<bool> {
    Some(client(w, c)?.node == target_pod(w, c)?.node)
}

fn waits_at_least(w: &World, from: usize, to: usize, d: Duration) -> bool {
    let total: Duration = w.steps[from..to]
        .iter()
        .filter_map(|s| match s.action {
            Action::Wait(d) => Some(d),
            _ => None,
        })
        .sum();
    total >= d
}

/// A check with conntrack entries in `state`, a later one expecting an empty table for the
/// same pod, and at least `gap` of waiting between them.
fn expires(w: &World, state: TcpState, gap: Duration) -> bool {
    let checks: Vec<(usize, &Expectations)> = w
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.action {
            Action::Check(c) => Some((i, &c.expect)),
            _ => None,
        })
        .collect();
    checks.iter().any(|(i, before)| {
        conntrack_states(before).contains(&state)
            && checks.iter().any(|(j, after)| {
                j > i
                    && waits_at_least(w, *i, *j, gap)
                    && before
                        .conntrack
                        .keys()
                        .any(|pod| after.conntrack.get(pod).is_some_and(|t| t.value.is_empty()))
            })
    })
}

type Holds = fn(&World) -> bool;

/// (case of the conformance suite, scenario id, what the scenario must contain).
const CASES: &[(&str, &str, Holds)] = &[
    ("same-node captured → captured by pod IP", "same-node-hbone", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(true)
                && captured(target_pod(w, c)) == Some(true)
                && same_node(w, c) == Some(true)
                && path(w, c, PathKind::Hbone)
        })
    }),
    ("cross-node captured → captured by pod IP", "cross-node-pod-ip", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(true)
                && captured(target_pod(w, c)) == Some(true)
                && same_node(w, c) == Some(false)
                && path(w, c, PathKind::Hbone)
        })
    }),
    ("same-node captured → captured by Service VIP", "same-node-service", |w| {
        connects(w).any(|c| {
            let nodes = service_nodes(w, c);
            client(w, c).is_some_and(|p| nodes.len() == 1 && nodes.contains(&p.node))
                && path(w, c, PathKind::Hbone)
        })
    }),
    ("cross-node captured → captured by Service VIP", "cross-node-hbone-pooling", |w| {
        connects(w).any(|c| {
            let nodes = service_nodes(w, c);
            client(w, c).is_some_and(|p| !nodes.is_empty() && !nodes.contains(&p.node))
                && path(w, c, PathKind::Hbone)
        })
    }),
    ("Service VIP load-balanced over endpoints on two nodes", "service-endpoints-two-nodes", |w| {
        connects(w).any(|c| {
            let nodes = service_nodes(w, c);
            let from = client(w, c).map(|p| p.node.clone()).unwrap_or_default();
            nodes.len() >= 2
                && c.repeat.count() >= 10
                && nodes.iter().all(|n| tunnels(w, &format!("{from}->{n}")) == Some(1))
        })
    }),
    ("captured → uncaptured pod (passthrough)", "passthrough", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(true)
                && captured(target_pod(w, c)) == Some(false)
                && path(w, c, PathKind::Passthrough)
        })
    }),
    ("captured → external host (passthrough)", "passthrough", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(true)
                && matches!(c.to.dest, Dest::External(_))
                && path(w, c, PathKind::Passthrough)
        })
    }),
    ("uncaptured → captured (15006)", "inbound-plaintext", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(false)
                && captured(target_pod(w, c)) == Some(true)
                && path(w, c, PathKind::InboundPlaintext)
        }) && w.pods.values().any(|p| counter(w, &p.label(), "nat/ISTIO_PRERT/2").is_some())
    }),
    ("uncaptured → uncaptured, no proxy involved", "uncaptured-direct", |w| {
        connects(w).any(|c| {
            captured(client(w, c)) == Some(false)
                && captured(target_pod(w, c)) == Some(false)
                && path(w, c, PathKind::Direct)
                && expects(w, c, &ConnField::Tunnel(None))
        })
    }),
    ("pooling: 10 sequential calls → 1 tunnel", "cross-node-hbone-pooling", |w| {
        connects(w).map(|c| c.repeat.count()).sum::<u32>() == 10
            && connects(w).all(|c| matches!(c.repeat, Repeat::Sequential(_)))
            && tunnels(w, "node-a->node-b") == Some(1)
    }),
    ("pooling: 150 parallel → 2 tunnels (100-stream cap)", "pooling-150-parallel", |w| {
        connects(w).any(|c| c.repeat == Repeat::Parallel(150))
            && tunnels(w, "node-a->node-b") == Some(2)
    }),
    ("pooling: tunnels per direction", "pooling-per-direction", |w| {
        tunnels(w, "node-a->node-b") == Some(1) && tunnels(w, "node-b->node-a") == Some(1)
    }),
    ("fast path: a 1 MiB transfer, nat counter 1", "fast-path-1mib", |w| {
        connects(w).any(|c| c.send >= 1 << 20)
            && w.pods.values().any(|p| counter(w, &p.label(), "nat/ISTIO_OUTPUT/6") == Some(1))
    }),
    ("authorization: ALLOW by principal", "authz-allow-principal", |w| {
        policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "principals")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Ok))
    }),
    ("authorization: ALLOW by namespace", "authz-allow-namespace", |w| {
        policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "namespaces")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
    }),
    ("authorization: ALLOW by port", "authz-allow-port", |w| {
        policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "ports")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
    }),
    ("authorization: ALLOW by ipBlocks", "authz-allow-ipblocks", |w| {
        policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "ipBlocks")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
    }),
    ("authorization: DENY takes precedence over ALLOW", "authz-deny-precedence", |w| {
        policy_with(w, "AuthorizationPolicy", Some("DENY"), "")
            && policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Ok))
    }),
    ("authorization: allow policies exist but none match", "authz-allow-none-match", |w| {
        policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "")
            && !policy_with(w, "AuthorizationPolicy", Some("DENY"), "")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
    }),
    (
        "authorization: plaintext never matches principal rules",
        "authz-plaintext-principal-rules",
        |w| {
            policy_with(w, "AuthorizationPolicy", Some("ALLOW"), "principals")
                && connects(w).any(|c| {
                    path(w, c, PathKind::InboundPlaintext) && outcome(w, c, ConnOutcome::Denied)
                })
                && connects(w)
                    .any(|c| path(w, c, PathKind::Hbone) && outcome(w, c, ConnOutcome::Ok))
        },
    ),
    ("authorization: PeerAuthentication STRICT", "peer-authentication-strict", |w| {
        policies(w)
            .iter()
            .any(|p| p["kind"] == "PeerAuthentication" && p["spec"]["mtls"]["mode"] == "STRICT")
            && connects(w).any(|c| {
                path(w, c, PathKind::InboundPlaintext) && outcome(w, c, ConnOutcome::Denied)
            })
    }),
    ("authorization: mesh-wide policy in istio-system", "authz-mesh-wide", |w| {
        policy_in_namespace(w, "istio-system")
            && connects(w).any(|c| outcome(w, c, ConnOutcome::Denied))
    }),
    (
        "a policy applied mid-connection closes the live connection",
        "policy-revokes-live-connection",
        |w| {
            let applied = step_index(w, |a| matches!(a, Action::Fault(Fault::Apply(_))));
            connects(w).any(|c| {
                c.background
                    && outcome(w, c, ConnOutcome::Denied)
                    && applied.is_some_and(|a| {
                        step_index(w, |s| matches!(s, Action::Connect(x) if x.id == c.id)) < Some(a)
                    })
            })
        },
    ),
    ("misdirected: to 15001, 15006, 15008 directly (own pod)", "self-call-proxy-ports", |w| {
        [15001, 15006, 15008].iter().all(|port| {
            connects(w).any(|c| {
                c.to.addr.port() == *port
                    && client(w, c).is_some_and(|p| p.ip == *c.to.addr.ip())
                    && outcome(w, c, ConnOutcome::Refused)
            })
        })
    }),
    (
        "misdirected: to 15001, 15006, 15008 of a pod on another node",
        "misdirected-remote-proxy-ports",
        |w| {
            [15001, 15006, 15008].iter().all(|port| {
                connects(w).any(|c| {
                    c.to.addr.port() == *port
                        && same_node(w, c) == Some(false)
                        && outcome(w, c, ConnOutcome::Refused)
                })
            })
        },
    ),
    ("misdirected: to 15001, 15006, 15008 in plain text", "plaintext-to-proxy-ports", |w| {
        [15001, 15006, 15008].iter().all(|port| {
            connects(w).any(|c| {
                c.to.addr.port() == *port
                    && captured(client(w, c)) == Some(false)
                    && outcome(w, c, ConnOutcome::Refused)
            })
        })
    }),
    ("misdirected: unknown source workload", "unknown-source-loopback", |w| {
        connects(w).any(|c| {
            c.to.addr.ip().is_loopback()
                && c.to.addr.port() == 15001
                && outcome(w, c, ConnOutcome::Refused)
        })
    }),
    ("a Service with no endpoints", "service-no-endpoints", |w| {
        let gone = step_index(
            w,
            |a| matches!(a, Action::Fault(Fault::DeletePod { leaves, .. }) if !leaves.is_empty()),
        );
        gone.is_some_and(|g| {
            w.steps[g..].iter().any(|s| match &s.action {
                Action::Connect(c) => {
                    matches!(c.to.dest, Dest::Service { .. }) && outcome(w, c, ConnOutcome::Refused)
                }
                _ => false,
            })
        })
    }),
    (
        "host-probe address 169.254.7.127 not redirected (outbound half)",
        "probe-address-not-redirected",
        |w| {
            connects(w).any(|c| c.to.addr.ip().octets() == [169, 254, 7, 127])
                && w.pods.values().any(|p| {
                    counter(w, &p.label(), "nat/ISTIO_OUTPUT/1") == Some(1)
                        && counter(w, &p.label(), "nat/ISTIO_OUTPUT/6") == Some(0)
                })
        },
    ),
    (
        "host-probe traffic from 169.254.7.127 not redirected (inbound half)",
        "probe-source-not-redirected",
        |w| {
            connects(w).any(|c| {
                c.from.ip.octets() == [169, 254, 7, 127]
                    && outcome(w, c, ConnOutcome::Ok)
                    && path(w, c, PathKind::Direct)
            }) && w.pods.values().any(|p| counter(w, &p.label(), "nat/ISTIO_PRERT/1") == Some(1))
        },
    ),
    ("conntrack: TIME_WAIT entries expire after 120 s", "conntrack-time-wait-expiry", |w| {
        expires(w, TcpState::TimeWait, Duration::from_secs(120))
    }),
    ("conntrack: half-close, CLOSE_WAIT expires after 60 s", "conntrack-close-wait-expiry", |w| {
        expires(w, TcpState::CloseWait, Duration::from_secs(60))
    }),
    ("conntrack: half-close through a tunnel", "half-close-server-first", |w| {
        blocks(w).iter().any(|b| conntrack_states(b).contains(&TcpState::CloseWait))
            && connects(w).any(|c| path(w, c, PathKind::Hbone) && outcome(w, c, ConnOutcome::Ok))
    }),
    ("partition mid-transfer and recovery after heal", "partition-mid-transfer", |w| {
        let cut = step_index(w, |a| matches!(a, Action::Fault(Fault::Partition(_))));
        let healed = step_index(w, |a| matches!(a, Action::Fault(Fault::Heal(_))));
        let (Some(cut), Some(healed)) = (cut, healed) else { return false };
        w.steps[..cut].iter().any(|s| matches!(&s.action, Action::Connect(c) if c.background))
            && w.steps[healed..]
                .iter()
                .any(|s| matches!(&s.action, Action::Connect(c) if outcome(w, c, ConnOutcome::Ok)))
    }),
    (
        "destination proxy crash and start (live reset, new ones succeed)",
        "destination-proxy-crash",
        |w| {
            let down = step_index(w, |a| matches!(a, Action::Fault(Fault::CrashProxy(_))));
            let up = step_index(w, |a| matches!(a, Action::Fault(Fault::StartProxy(_))));
            down.is_some()
                && up.is_some()
                && connects(w).any(|c| c.background && outcome(w, c, ConnOutcome::Reset))
                && w.steps[up.unwrap()..].iter().any(
                    |s| matches!(&s.action, Action::Connect(c) if outcome(w, c, ConnOutcome::Ok)),
                )
        },
    ),
    (
        "destination proxy restart (live reset, new ones succeed)",
        "destination-proxy-restart",
        |w| {
            let restart = step_index(w, |a| matches!(a, Action::Fault(Fault::RestartProxy(_))));
            restart.is_some_and(|r| {
                w.steps[r..].iter().any(
                    |s| matches!(&s.action, Action::Connect(c) if outcome(w, c, ConnOutcome::Ok)),
                )
            }) && connects(w).any(|c| c.background && outcome(w, c, ConnOutcome::Reset))
        },
    ),
    ("conntrack flush in the client pod mid-connection", "conntrack-flush-mid-connection", |w| {
        let flush = faults(w).into_iter().find_map(|f| match f {
            Fault::FlushConntrack(p) => Some(p.clone()),
            _ => None,
        });
        flush.is_some_and(|p| connects(w).any(|c| c.background && c.from == p))
    }),
    ("pod deleted, same IP reused by another identity", "pod-ip-reused-new-identity", |w| {
        let deleted: Vec<&Pod> = faults(w)
            .into_iter()
            .filter_map(|f| match f {
                Fault::DeletePod { pod, .. } => w.pods.get(pod),
                _ => None,
            })
            .collect();
        let added = faults(w).into_iter().find_map(|f| match f {
            Fault::AddPod { pod, .. } => Some(pod.as_ref()),
            _ => None,
        });
        added.is_some_and(|new| {
            deleted.iter().any(|old| old.ip == new.ip && old.identity != new.identity)
                && connects(w)
                    .any(|c| c.to.addr.ip() == &new.ip && expects(w, c, &ConnField::Reused(false)))
        })
    }),
    ("1,000 connections across 4 nodes", "scale-1000-connections", |w| {
        let from_nodes: BTreeSet<String> =
            connects(w).filter_map(|c| client(w, c).map(|p| p.node.clone())).collect();
        w.nodes.len() == 4
            && from_nodes.len() == 4
            && connects(w).map(|c| c.repeat.count()).sum::<u32>() >= 1000
    }),
];

#[test]
fn the_catalog_covers_every_required_case() {
    let c = catalog();
    let by_id: BTreeMap<&str, &World> = c.worlds().map(|w| (w.id.as_str(), w)).collect();
    let mut failures = Vec::new();
    for (case, id, holds) in CASES {
        match by_id.get(id) {
            None => failures.push(format!("{case}: scenario {id} is missing")),
            Some(w) if !holds(w) => {
                failures.push(format!("{case}: scenario {id} no longer shows it"))
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_readme_first_example_loads_with_the_addresses_it_claims() {
    let start = README.find("## A first scenario").unwrap();
    let block = &README[start..];
    let body = &block[block.find("```yaml\n").unwrap() + 8..];
    let text = &body[..body.find("```").unwrap()];
    let w = ambient_scenarios::load_str("first.yaml", text).into_result().unwrap();
    let ips: Vec<String> = w.pods.values().map(|p| format!("{} {}", p.key, p.ip)).collect();
    assert_eq!(ips, ["client.default 10.0.1.2", "server.default 10.0.2.2"]);
}
