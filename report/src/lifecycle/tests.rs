use super::*;
use crate::tests::fixture;
use crate::verdict::{collapse, ranges};
use ambient_scenarios::load::load_str;
use ambient_scenarios::outcome::Connection;
use ambient_scenarios::world::World;

fn mesh() -> World {
    load_str("t.yaml", fixture::MESH).into_result().unwrap()
}

fn connect<'a>(world: &'a World, id: &str) -> &'a Connect {
    world.connects().map(|(_, c)| c).find(|c| c.id == id).unwrap()
}

fn draw(id: &str, conn: &Connection) -> String {
    let world = mesh();
    diagram(&world, connect(&world, id), conn)
}

/// The text with Mermaid's entity codes (`#59;`, `#gt;`) and arrows taken out.
fn without_entity_codes(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('#') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let code_len =
            after.find(';').filter(|n| *n > 0 && after[..*n].chars().all(char::is_alphanumeric));
        match code_len {
            Some(n) => rest = &after[n + 1..],
            None => {
                out.push('#');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("-->>", "").replace("->>", "").replace("--x", "")
}

/// Every line after the header is a participant, a message or a note, and every message and
/// note names declared participants only: what Mermaid needs to parse it.
fn assert_well_formed(text: &str) {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sequenceDiagram"));
    let mut declared: Vec<&str> = Vec::new();
    for line in lines {
        let l = line.trim_start();
        let bare = without_entity_codes(&l.replace("<br/>", " "));
        assert!(!bare.contains([';', '"', '#', '<', '>', '{', '}']), "unescaped text: {l}");
        if let Some(rest) = l.strip_prefix("participant ") {
            declared.push(rest.split(" as ").next().unwrap());
        } else if let Some(rest) = l.strip_prefix("Note over ") {
            let (who, _) = rest.split_once(": ").unwrap();
            assert!(who.split(',').all(|p| declared.contains(&p)), "{l}");
        } else {
            let (head, _) = l.split_once(": ").unwrap_or_else(|| panic!("not a message: {l}"));
            let arrow = ["-->>", "->>", "--x"].iter().find(|a| head.contains(**a)).unwrap();
            let (from, to) = head.split_once(arrow).unwrap();
            assert!(declared.contains(&from) && declared.contains(&to), "{l}");
        }
    }
}

#[test]
fn escape_makes_statement_breakers_entity_codes() {
    assert_eq!(
        escape("a;b #1 <x> \"q\" 50% {y} & z\nw"),
        "a#59;b #35;1 #lt;x#gt; #quot;q#quot; 50#37; #123;y#125; #38; z w"
    );
    assert_eq!(escape("node-a->node-b: ok"), "node-a->node-b: ok".replace('>', "#gt;"));
}

#[test]
fn hbone_first_connection_opens_the_tunnel_and_names_the_rules() {
    let d = draw("first", &fixture::hbone_ok("first", 40000, false));
    assert_well_formed(&d);
    insta::assert_snapshot!("hbone_new_tunnel", d);
    assert!(
        d.contains("nat OUTPUT rule 1 → ISTIO_OUTPUT rule 6: REDIRECT → 127.0.0.1:15001"),
        "{d}"
    );
    assert!(d.contains("ISTIO_PRERT rule 2 excludes it"), "{d}");
    assert!(d.contains("later packets: conntrack ESTABLISHED, nat skipped"), "{d}");
}

#[test]
fn hbone_pooled_connection_is_a_new_stream_without_handshake() {
    let d = draw("pooled", &fixture::hbone_ok("pooled", 40001, true));
    assert_well_formed(&d);
    assert!(d.contains("a new CONNECT stream on the pooled h2 connection (no handshake)"), "{d}");
    assert!(!d.contains("TLS 1.3"), "{d}");
}

#[test]
fn hbone_denied_stops_at_the_destination_proxy() {
    let d = draw("denied", &fixture::hbone_denied("denied", 40004));
    assert_well_formed(&d);
    insta::assert_snapshot!("hbone_denied", d);
    assert!(d.contains("401 Unauthorized"), "{d}");
    assert!(!d.contains("participant sapp"), "the app never sees it: {d}");
}

#[test]
fn hbone_reset_by_the_app_shows_no_reply() {
    let d = draw("pooled", &fixture::hbone_reset("pooled", 40009));
    assert_well_formed(&d);
    insta::assert_snapshot!("hbone_reset", d);
    assert!(d.contains("proxy@node-b error<br/>inbound-hbone reset by upstream"), "{d}");
    assert!(d.contains("sapp--xdproxy: no reply: the connection ends (reset)"), "{d}");
    assert!(!d.contains("replies:"), "{d}");
}

#[test]
fn passthrough_goes_plain_from_the_source_proxy() {
    let d = draw("web", &fixture::passthrough("web", 40005));
    assert_well_formed(&d);
    insta::assert_snapshot!("passthrough", d);
    assert!(!d.contains("participant tunnel") && !d.contains("participant dproxy"), "{d}");
}

#[test]
fn inbound_plaintext_is_redirected_to_15006_in_the_server_pod() {
    let d = draw("plain", &fixture::plaintext("plain", 40006));
    assert_well_formed(&d);
    insta::assert_snapshot!("inbound_plaintext", d);
    assert!(d.contains("nat PREROUTING rule 1 → ISTIO_PRERT rule 2: REDIRECT → port 15006"), "{d}");
    assert!(!d.contains("participant cnet") && !d.contains("participant sproxy"), "{d}");
}

#[test]
fn direct_has_no_hooks_and_no_proxy() {
    let d = draw("direct", &fixture::direct("direct", 40007));
    assert_well_formed(&d);
    insta::assert_snapshot!("direct", d);
    assert!(d.contains("neither side is captured"), "{d}");
}

#[test]
fn a_connection_its_own_proxy_refused_stops_there() {
    let d = draw("first", &fixture::no_endpoint("first", 40008));
    assert_well_formed(&d);
    insta::assert_snapshot!("refused_no_endpoint", d);
    assert!(
        d.contains("proxy@node-a error<br/>outbound route: service echo.default has no endpoint"),
        "{d}"
    );
    assert!(!d.contains("participant tunnel"), "{d}");
}

#[test]
fn repetitions_collapse_by_story() {
    let a = fixture::hbone_ok("pooled", 40001, false);
    let b = fixture::hbone_ok("pooled", 40002, true);
    let conns = [&a, &b, &b, &b, &a];
    let groups = collapse(&conns);
    let which: Vec<String> = groups.iter().map(|(w, _)| ranges(w)).collect();
    assert_eq!(which, ["1, 5", "2–4"]);
    assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), "1–3, 5, 7–8");
}
