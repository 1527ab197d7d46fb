//! `--pcap`: the packets each namespace saw, as pcap files that tshark reads back with the
//! addresses, ports, flags and TLS records the simulation produced. Needs `tshark` (Debian
//! package `tshark`, which `.ci/run` installs); without it the test fails saying so.

mod support;

use std::process::Command;

use ambient_scenarios::backend::RunOptions;
use support::{catalog, world};

fn tshark(file: &std::path::Path, fields: &[&str], filter: &str) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    if !filter.is_empty() {
        cmd.args(["-Y", filter]);
    }
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("tshark is needed to read the pcaps back (apt-get install tshark): {e}")
    });
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tshark_reads_the_simulated_packets_of_every_namespace() {
    let path = catalog().into_iter().find(|p| p.ends_with("same-node-hbone.yaml")).unwrap();
    let w = world(&path);
    let run = ambient_sim::run(&w, &RunOptions { pcap: true, ..RunOptions::default() }).unwrap();
    let names: Vec<&str> = run.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(
        names.contains(&"client.default.pcap") && names.contains(&"server.default.pcap"),
        "{names:?}"
    );
    assert!(names.contains(&"node-a.pcap"), "{names:?}");
    let dir = std::env::temp_dir().join(format!("ambient-sim-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for a in &run.artifacts {
        std::fs::write(dir.join(&a.name), &a.bytes).unwrap();
    }
    let client = dir.join("client.default.pcap");
    // The app's SYN, as the client's namespace saw it on lo after REDIRECT.
    let syns =
        tshark(&client, &["ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"], "tcp.flags == 0x002");
    assert!(
        syns.lines().any(|l| l.starts_with("10.0.1.2\t") && l.ends_with("\t127.0.0.1\t15001")),
        "{syns}"
    );
    // The proxy's HBONE connection leaves eth0 for the server's 15008, and carries TLS.
    assert!(syns.lines().any(|l| l.ends_with("\t10.0.1.3\t15008")), "{syns}");
    let tls =
        tshark(&client, &["tls.handshake.type"], "tls.handshake.type == 1 && tcp.dstport == 15008");
    assert_eq!(tls.lines().count(), 1, "one ClientHello: {tls}");
    // Checksums synthesised correctly.
    let bad = tshark(
        &client,
        &["frame.number"],
        "ip.checksum.status == \"Bad\" || tcp.checksum.status == \"Bad\"",
    );
    assert!(bad.trim().is_empty(), "bad checksums in frames {bad}");
    let opts = Command::new("tshark")
        .arg("-o")
        .arg("tcp.check_checksum:TRUE")
        .arg("-o")
        .arg("ip.check_checksum:TRUE")
        .arg("-r")
        .arg(&client)
        .args(["-Y", "ip.checksum.status == \"Bad\" || tcp.checksum.status == \"Bad\""])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&opts.stdout).trim().is_empty(), "checksums fail validation");
    // The server saw the proxy's transparent connection to its app, from the client's IP.
    let server = dir.join("server.default.pcap");
    let app = tshark(
        &server,
        &["ip.src", "ip.dst", "tcp.dstport"],
        "tcp.flags == 0x002 && tcp.dstport == 8080",
    );
    assert_eq!(app.trim(), "10.0.1.2\t10.0.1.3\t8080");
    std::fs::remove_dir_all(&dir).ok();
}
