//! The loader never panics: random text, random YAML-ish text, and random mutations of the
//! catalog's files all come back as a World or as diagnostics whose positions lie in the file.

use ambient_scenarios::load_str;
use proptest::prelude::*;

const CATALOG: &[&str] = &[
    include_str!("../catalog/same-node-hbone.yaml"),
    include_str!("../catalog/cross-node-hbone-pooling.yaml"),
    include_str!("../catalog/passthrough.yaml"),
    include_str!("../catalog/inbound-plaintext.yaml"),
    include_str!("../catalog/deny-policy.yaml"),
    include_str!("../catalog/partition.yaml"),
    include_str!("../catalog/destination-proxy-restart.yaml"),
    include_str!("data/format-example.yaml"),
];

/// Loads and checks what any input must satisfy.
fn load_checked(text: &str) {
    let loaded = load_str("fuzz.yaml", text);
    let lines = text.lines().count() as u32 + 1;
    for d in &loaded.diagnostics {
        assert!(d.pos.line >= 1 && d.pos.line <= lines, "{d} outside {lines} lines");
        assert!(!d.message.is_empty());
    }
    assert_eq!(loaded.world.is_some(), loaded.errors().next().is_none());
    if let Some(w) = &loaded.world {
        // A valid World is deterministic.
        assert_eq!(Some(w), load_str("fuzz.yaml", text).world.as_ref());
    }
}

/// Pieces that make YAML structure and scenario vocabulary likely.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\n".to_string()),
        Just("  ".to_string()),
        Just("- ".to_string()),
        Just(": ".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("<<: ".to_string()),
        Just("\"".to_string()),
        Just("|\n".to_string()),
        Just("!!str ".to_string()),
        prop::sample::select(vec![
            "description",
            "cluster",
            "nodes",
            "pods",
            "name",
            "node",
            "steps",
            "connect",
            "id",
            "from",
            "to",
            "fault",
            "partition",
            "wait",
            "check",
            "expect",
            "tunnels",
            "conntrack",
            "counters",
            "services",
            "vip",
            "selector",
            "ports",
            "port",
            "targetPort",
            "ambient",
            "node-a",
            "node-b",
            "client",
            "echo:80",
            "10.0.1.2",
            "10.96.0.10",
            "1KiB",
            "30s",
            "true",
            "null",
            "7",
            "-1",
            "99999999999999999999999",
            "node-a->node-b",
            "nat/ISTIO_OUTPUT/6",
            "policies",
            "apiVersion",
            "kind",
            "AuthorizationPolicy",
            "security.istio.io/v1",
            "spec",
        ])
        .prop_map(str::to_string),
        "[a-z0-9.:/*>-]{1,8}",
    ]
}

/// One edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Insert(usize, String),
    DeleteChars(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DeleteLine),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        (any::<usize>(), token()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), 1..6usize).prop_map(|(a, n)| Edit::DeleteChars(a, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let chars: Vec<char> = text.chars().collect();
    let n = lines.len().max(1);
    match e {
        Edit::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        Edit::DuplicateLine(i) if !lines.is_empty() => {
            let l = lines[i % n];
            lines.insert(i % n, l);
        }
        Edit::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
        Edit::Insert(at, t) => {
            let at = at % (chars.len() + 1);
            return chars[..at]
                .iter()
                .chain(t.chars().collect::<Vec<_>>().iter())
                .chain(&chars[at..])
                .collect();
        }
        Edit::DeleteChars(at, len) => {
            let at = at % (chars.len() + 1);
            let end = (at + len).min(chars.len());
            return chars[..at].iter().chain(&chars[end..]).collect();
        }
        Edit::Truncate(at) => return chars[..at % (chars.len() + 1)].iter().collect(),
        _ => {}
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        load_checked(&text);
    }

    #[test]
    fn random_yaml_like_text_never_panics(tokens in prop::collection::vec(token(), 0..60)) {
        load_checked(&tokens.concat());
    }

    #[test]
    fn mutated_catalog_files_never_panic(
        which in 0..CATALOG.len(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let text = edits.iter().fold(CATALOG[which].to_string(), |t, e| apply(&t, e));
        load_checked(&text);
    }
}

#[test]
fn the_unmutated_inputs_are_valid() {
    for text in CATALOG {
        assert!(load_str("x.yaml", text).is_valid());
    }
}
