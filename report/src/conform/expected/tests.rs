use super::*;
use crate::conform::compare::{Difference, FieldKind};

fn errors(text: &str) -> Vec<String> {
    ExpectedDifferences::load("x.yaml", text).unwrap_err().iter().map(ToString::to_string).collect()
}

#[test]
fn an_entry_without_a_reason_is_rejected_where_it_is_written() {
    let e = errors("- id: a\n  scenarios: \"*\"\n  field: 'x'\n");
    assert_eq!(e, ["x.yaml:1:3: [0]: missing key `reason`"]);
    let e = errors("- id: a\n  reason: \"  \"\n  scenarios: \"*\"\n  field: 'x'\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("x.yaml:2:11: [0].reason: every entry needs a reason"), "{e:?}");
}

#[test]
fn bad_entries_are_all_reported() {
    let text = r#"
- id: a
  reason: r
  scenarios: []
  field: ''
- id: a
  reason: r
  scenarios: "*"
  field: x
  when: [sometimes]
- id: b
  reason: r
  scenarios: "*"
  field: x
  colour: blue
"#;
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].contains("[0].field: the field pattern is empty"), "{e:?}");
    assert!(e[1].contains("[0].scenarios: name the scenarios"), "{e:?}");
    assert!(e[2].contains("[1].when[0]: unknown value `sometimes`"), "{e:?}");
    assert!(e[3].contains("unknown key `colour`"), "{e:?}");
    let dup = "- {id: a, reason: r, scenarios: '*', field: x}\n- {id: a, reason: r, scenarios: '*', field: y}\n";
    let e = errors(dup);
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("[1].id: id \"a\" is already used by entry [0]"), "{e:?}");
    assert!(errors("{a: 1}")[0].contains("expected a list of entries"));
    assert!(ExpectedDifferences::load("x.yaml", "").unwrap().entries.is_empty());
}

#[test]
fn globs_and_field_prefixes() {
    assert!(glob("*", "anything"));
    assert!(glob("end.netns[*].counters[*]", r#"end.netns["a.b"].counters["raw/OUTPUT/1"]"#));
    assert!(!glob("end.netns[*].counters[*]", r#"checks[0].netns["a"].counters["x"]"#));
    assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXcYb") && !glob("ab", "abc"));
    // A pattern covers the field or a prefix of it ending before a sub-field.
    let f = r#"end.netns["c"].counters["raw/OUTPUT/1"].packets"#;
    assert!(field_matches(r#"end.netns[*].counters[*]"#, f));
    assert!(field_matches("connections[2]", "connections[2].sent"));
    assert!(!field_matches("connections[2]", "connections[23].sent"));
    assert!(!field_matches("connections[2].se", "connections[2].sent"));
}

#[test]
fn conditions_look_at_both_outcomes() {
    let d = |field: &str, kind| Difference {
        field: field.into(),
        sim: "1".into(),
        netns: "2".into(),
        kind,
    };
    let o = crate::conform::tests::outcome(32768);
    assert!(Condition::EveryPacketCounter.holds(&d("x", FieldKind::EveryPacketCounter), &o, &o));
    assert!(!Condition::EveryPacketCounter.holds(&d("x", FieldKind::FirstPacketCounter), &o, &o));
    let sent = d("connections[0].sent", FieldKind::Connection);
    assert!(!Condition::RefusedBeforeReply.holds(&sent, &o, &o), "connection 0 is ok");
    let mut refused = o.clone();
    refused.connections[0].outcome = ambient_scenarios::outcome::ConnOutcome::Denied;
    refused.connections[0].received = 0;
    assert!(Condition::RefusedBeforeReply.holds(&sent, &refused, &refused));
    assert!(!Condition::RefusedBeforeReply.holds(&sent, &refused, &o), "both sides must agree");
    assert_eq!(connection_index("connections[12].sent"), Some(12));
    assert_eq!(connection_index("end.tunnels"), None);
    for c in Condition::ALL {
        let back: Condition = serde_json::from_value(serde_json::json!(c.as_str())).unwrap();
        assert_eq!(back, *c);
    }
}
