use super::*;

fn p(text: &str) -> Node {
    parse(text).unwrap_or_else(|e| panic!("{}: {}", e.pos, e.message))
}

#[test]
fn scalars_resolve_by_the_core_schema() {
    let n = p(
        "a: 8080\nb: \"8080\"\nc: 1.5\nd: true\ne:\nf: ~\ng: 10.0.1.5\nh: 1KiB\ni: 0x1f\nj: -3\n",
    );
    let v = |k: &str| n.get(k).unwrap().value.clone();
    assert_eq!(v("a"), Value::Int(8080));
    assert_eq!(v("b"), Value::Str("8080".into()));
    assert_eq!(v("c"), Value::Float(1.5));
    assert_eq!(v("d"), Value::Bool(true));
    assert_eq!(v("e"), Value::Null);
    assert_eq!(v("f"), Value::Null);
    assert_eq!(v("g"), Value::Str("10.0.1.5".into()));
    assert_eq!(v("h"), Value::Str("1KiB".into()));
    assert_eq!(v("i"), Value::Int(31));
    assert_eq!(v("j"), Value::Int(-3));
    assert_eq!(n.get("a").unwrap().as_text(), Some("8080"));
}

#[test]
fn positions_are_one_based_lines_and_columns() {
    let n = p("top:\n  list:\n    - name: x\n      node: node-c\n");
    let item = n.locate("top.list[0]");
    let node = item.get("node").unwrap();
    assert_eq!(node.pos, Pos::new(4, 13));
    assert_eq!(item.pos.line, 3);
    let flow = p("a: {b: [1, 22]}\n");
    assert_eq!(flow.locate("a.b[1]").pos, Pos::new(1, 12));
}

#[test]
fn block_scalars_and_anchors() {
    let n = p("d: >\n  one\n  two\nl: |\n  x\n  y\nbase: &b {app: echo, v: 1}\nuse: *b\n");
    assert_eq!(n.get("d").unwrap().value, Value::Str("one two\n".into()));
    assert_eq!(n.get("l").unwrap().value, Value::Str("x\ny\n".into()));
    assert_eq!(n.get("use").unwrap().value, n.get("base").unwrap().value);
}

#[test]
fn merge_keys_let_written_keys_win() {
    let n = p("base: &b {a: 1, b: 2}\nm:\n  <<: *b\n  b: 3\n");
    let m = n.get("m").unwrap();
    assert_eq!(m.get("a").unwrap().value, Value::Int(1));
    assert_eq!(m.get("b").unwrap().value, Value::Int(3));
    let Value::Map(entries) = &m.value else { panic!() };
    assert_eq!(entries.len(), 2);
    // A quoted "<<" is an ordinary key.
    let q = p("\"<<\": {a: 1}\n");
    assert!(q.get("<<").is_some());
}

#[test]
fn duplicate_keys_are_kept_for_the_decoder() {
    let n = p("a: 1\na: 2\n");
    let Value::Map(entries) = &n.value else { panic!() };
    assert_eq!(entries.len(), 2);
}

#[test]
fn bad_input_is_an_error_with_a_position() {
    let e = parse("a: [1, 2\n").unwrap_err();
    assert!(e.message.starts_with("invalid YAML"), "{e:?}");
    assert!(e.pos.line >= 1);
    let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
    assert_eq!(e.pos.line, 2);
    assert!(parse("").is_err());
    assert!(parse("# only a comment\n").is_err());
    let e = parse("a: !foo 1\n").unwrap_err();
    assert!(e.message.contains("unsupported tag"), "{e:?}");
    assert_eq!(p("a: !!str 80\n").get("a").unwrap().value, Value::Str("80".into()));
    assert!(parse("a: !!int x\n").is_err());
}

#[test]
fn nesting_and_alias_expansion_are_bounded() {
    let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
    assert!(parse(&deep).unwrap_err().message.contains("nesting"));
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    assert!(parse(&bomb).unwrap_err().message.contains("expands"));
}

#[test]
fn locate_follows_written_paths_as_far_as_they_go() {
    let n = p("spec:\n  rules:\n  - to:\n    - operation: {ports: [\"80\", \"x\"]}\n");
    assert_eq!(n.locate("spec.rules[0].to[0].operation.ports[1]").pos, Pos::new(4, 33));
    assert_eq!(n.locate("spec.rules[0].nope[3]").pos, n.locate("spec.rules[0]").pos);
}
