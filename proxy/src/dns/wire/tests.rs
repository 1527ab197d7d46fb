use super::*;

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// `dig example.com A` as it goes on the wire (id 0x1234, RD).
const QUERY: &[u8] = &[
    0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
    0x00, 0x01, 0x00, 0x01,
];

/// Its answer from a recursive server: the answer's name is a pointer to the question's
/// (offset 12), one A record 93.184.216.34, TTL 300.
const ANSWER: &[u8] = &[
    0x12, 0x34, 0x81, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, //
    7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, //
    0x00, 0x01, 0x00, 0x01, //
    0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x04, 93, 184, 216, 34,
];

#[test]
fn parses_a_query_and_builds_it_byte_for_byte() {
    let q = Message::parse(QUERY).unwrap();
    assert_eq!(q.id, 0x1234);
    assert!(q.flags.recursion_desired && !q.flags.response);
    assert_eq!(q.questions, vec![Question { name: n("example.com"), qtype: 1, qclass: 1 }]);
    assert_eq!(Message::query(0x1234, n("example.com"), rtype::A).encode(), QUERY);
}

#[test]
fn follows_compression_pointers() {
    let a = Message::parse(ANSWER).unwrap();
    assert!(a.flags.response && a.flags.recursion_available);
    assert_eq!(a.flags.rcode, Rcode::NOERROR);
    assert_eq!(a.answers[0].name, n("EXAMPLE.com"), "names compare case-insensitively");
    assert_eq!(a.answers[0].ttl, 300);
    assert_eq!(a.addresses(), vec![Ipv4Addr::new(93, 184, 216, 34)]);
    // Built again without compression, it parses to the same message.
    assert_eq!(Message::parse(&a.encode()).unwrap(), a);
    assert_eq!(a.encode().len(), ANSWER.len() + 11, "the pointer spelled out");
}

#[test]
fn a_response_keeps_the_query_id_question_and_rd_and_cnames_round_trip() {
    let q = Message::parse(QUERY).unwrap();
    let r = Message::response(
        &q,
        Rcode::NOERROR,
        true,
        vec![
            Record::cname(n("example.com"), 30, n("web.example.net")),
            Record::a(n("web.example.net"), 30, Ipv4Addr::new(203, 0, 113, 10)),
        ],
    );
    assert_eq!((r.id, r.flags.recursion_desired, r.flags.authoritative), (0x1234, true, true));
    let back = Message::parse(&r.encode()).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.answers[0].data, RData::Cname(n("web.example.net")));
    assert_eq!(back.addresses(), vec![Ipv4Addr::new(203, 0, 113, 10)]);
    let nx = Message::response(&q, Rcode::NXDOMAIN, false, vec![]);
    assert_eq!(Message::parse(&nx.encode()).unwrap().flags.rcode, Rcode::NXDOMAIN);
    assert_eq!(nx.encode()[3] & 0x0f, 3);
}

#[test]
fn unknown_records_are_kept_as_bytes() {
    // An answer with one TXT record ("hi") and an OPT record in the additional section.
    let mut m = ANSWER[..ANSWER.len() - 16].to_vec();
    m[7] = 1; // ANCOUNT 1
    m[11] = 1; // ARCOUNT 1
    m.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x10, 0x00, 0x01, 0, 0, 0, 5, 0, 3, 2, b'h', b'i']);
    m.extend_from_slice(&[0, 0x00, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let p = Message::parse(&m).unwrap();
    assert_eq!(p.answers[0].data, RData::Other(vec![2, b'h', b'i']));
    assert_eq!((p.additional[0].rtype, p.additional[0].name.label_count()), (rtype::OPT, 0));
    assert!(p.addresses().is_empty());
}

#[test]
fn broken_messages_are_errors_not_panics() {
    assert_eq!(Message::parse(&QUERY[..5]), Err(WireError::Truncated { what: "header" }));
    assert_eq!(Message::parse(&QUERY[..20]), Err(WireError::Truncated { what: "name" }));
    assert_eq!(
        Message::parse(&QUERY[..QUERY.len() - 1]),
        Err(WireError::Truncated { what: "question" })
    );
    assert_eq!(
        Message::parse(&ANSWER[..ANSWER.len() - 2]),
        Err(WireError::Truncated { what: "record data" })
    );
    let mut trailing = QUERY.to_vec();
    trailing.push(0);
    assert_eq!(Message::parse(&trailing), Err(WireError::Trailing(1)));
    // A pointer to itself, and one forward.
    let mut looped = QUERY[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(Message::parse(&looped), Err(WireError::PointerLoop));
    let mut forward = QUERY[..12].to_vec();
    forward.extend_from_slice(&[0xc0, 14, 0, 0, 1, 0, 1]);
    assert_eq!(Message::parse(&forward), Err(WireError::PointerLoop));
    // A label pointing back at itself through a pointer: bounded by the name length.
    let mut cycle = QUERY[..12].to_vec();
    cycle.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
    assert!(Message::parse(&cycle).is_err());
    // Label types 01 and 10 are not names.
    let mut ext = QUERY[..12].to_vec();
    ext.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
    assert!(matches!(Message::parse(&ext), Err(WireError::BadName(_))));
    // An A record of 3 bytes.
    let mut short_a = ANSWER[..ANSWER.len() - 6].to_vec();
    short_a.extend_from_slice(&[0, 3, 1, 2, 3]);
    assert!(matches!(Message::parse(&short_a), Err(WireError::BadRecord(_))));
    assert_eq!(Message::peek_id(&QUERY[..5]), Some(0x1234));
    assert_eq!(Message::peek_id(&QUERY[..1]), None);
}

#[test]
fn names_parse_join_strip_and_print() {
    let fqdn = n("echo.default.svc.cluster.local.");
    assert_eq!(fqdn.to_string(), "echo.default.svc.cluster.local");
    assert_eq!(fqdn.label_count(), 5);
    let svc = n("svc.cluster.local");
    assert!(fqdn.is_below(&svc) && !svc.is_below(&svc));
    assert_eq!(fqdn.strip(&svc), Some(n("echo.default")));
    assert_eq!(svc.strip(&svc), None, "nothing would be left");
    assert_eq!(
        n("echo").join(&n("default.svc.cluster.local")),
        Some(n("echo.default.svc.cluster.local"))
    );
    assert!(n("Echo.SVC").ends_with_label("svc"));
    assert_eq!(Name::parse(".").unwrap(), Name::root());
    assert_eq!(Name::root().to_string(), ".");
    for bad in ["a..b", "a b.c", &"x".repeat(64), &format!("{}.x", "abc.".repeat(63))] {
        assert!(Name::parse(bad).is_err(), "{bad:?}");
    }
    let long = vec!["a".repeat(63); 4].join(".");
    assert!(Name::parse(&long).is_err(), "255 + 2 bytes on the wire");
    assert!(Name::parse(&long[..long.len() - 2]).is_ok());
    assert_eq!(n(&long[..long.len() - 2]).join(&n("x")), None);
    // Bytes a name may carry on the wire but not in text are escaped when printed.
    let odd = Name { labels: vec![b"a.b".to_vec(), vec![0]] };
    assert_eq!(odd.to_string(), "a\\046b.\\000");
}

#[test]
fn udp_replies_that_do_not_fit_are_truncated() {
    let q = Message::query(7, n("many.example"), rtype::A);
    let answers: Vec<Record> =
        (0..40).map(|i| Record::a(n("many.example"), 30, Ipv4Addr::new(10, 0, 0, i))).collect();
    let r = Message::response(&q, Rcode::NOERROR, true, answers);
    let full = r.encode();
    assert!(full.len() > UDP_MAX);
    let cut = Message::parse(&r.encode_within(UDP_MAX)).unwrap();
    assert!(cut.flags.truncated);
    assert!(!cut.answers.is_empty() && cut.answers.len() < 40);
    assert!(cut.encode().len() <= UDP_MAX);
    assert_eq!(r.encode_within(full.len()), full, "fits: unchanged");
}

#[test]
fn tcp_frames_carry_a_length_prefix_and_ids_can_be_rewritten() {
    let f = tcp_frame(QUERY).unwrap();
    assert_eq!(tcp_frame_len([f[0], f[1]]), QUERY.len());
    assert_eq!(&f[2..], QUERY);
    assert!(tcp_frame(&vec![0; 70_000]).is_none());
    let re = with_id(ANSWER, 0xbeef).unwrap();
    assert_eq!(Message::parse(&re).unwrap().id, 0xbeef);
    assert_eq!(&re[2..], &ANSWER[2..]);
    assert!(with_id(&ANSWER[..11], 1).is_none());
}
