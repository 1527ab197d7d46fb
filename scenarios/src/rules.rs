//! The in-pod redirection rules the Istio CNI agent installs in every captured pod's network
//! namespace, as `iptables-restore` text, plus the policy routing that goes with them.
//!
//! The simulator's kernel model and the netns harness load the same text, so a scenario's pod is
//! captured identically by both. With [`InpodRules::default`] the output is the reference rule set
//! (`scenarios/testdata/istio-inpod.rules`, Istio >= 1.24, REDIRECT mode, IPv4); the tests hold it to
//! that, rule for rule and in order.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ambient_proxy::inpod::{
    CONNMARK, DEFAULT_PROBE_ADDR, DNS_CAPTURE_PORT, DNS_CT_ZONE, INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT, MARK_MASK, OUTBOUND_PORT, PROXY_MARK, ROUTE_RULE_PREF, ROUTE_TABLE,
};

/// What varies between captured pods' rule sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InpodRules {
    /// Redirect DNS (UDP and TCP port 53) to the proxy's DNS capture port, with conntrack zone
    /// separation for UDP. Istio's default is on.
    pub dns_capture: bool,
    /// Source of kubelet health probes; traffic from and to it is never redirected.
    pub probe_addr: Ipv4Addr,
}

impl Default for InpodRules {
    fn default() -> Self {
        Self { dns_capture: true, probe_addr: DEFAULT_PROBE_ADDR }
    }
}

impl InpodRules {
    /// The rule set as `iptables-restore --noflush` input: tables mangle, nat, raw, in that order.
    pub fn restore_text(&self) -> String {
        let m = format!("0x{PROXY_MARK:x}/0x{MARK_MASK:x}");
        let c = format!("0x{CONNMARK:x}/0x{MARK_MASK:x}");
        let probe = self.probe_addr;
        let mut out = String::new();

        table(&mut out, "mangle", &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]);
        let _ = writeln!(out, "-A PREROUTING -j ISTIO_PRERT");
        let _ = writeln!(out, "-A OUTPUT -j ISTIO_OUTPUT");
        let _ = writeln!(
            out,
            "-A ISTIO_OUTPUT -m connmark --mark {c} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"
        );
        let _ = writeln!(out, "-A ISTIO_PRERT -m mark --mark {m} -j CONNMARK --set-xmark {c}");
        out.push_str("COMMIT\n");

        table(&mut out, "nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]);
        let _ = writeln!(out, "-A OUTPUT -j ISTIO_OUTPUT");
        let _ = writeln!(out, "-A PREROUTING -j ISTIO_PRERT");
        let _ = writeln!(out, "-A ISTIO_OUTPUT -d {probe}/32 -p tcp -m tcp -j ACCEPT");
        if self.dns_capture {
            let _ = writeln!(
                out,
                "-A ISTIO_OUTPUT ! -o lo -p udp -m mark ! --mark {m} -m udp --dport 53 -j REDIRECT --to-ports {DNS_CAPTURE_PORT}"
            );
            let _ = writeln!(
                out,
                "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m mark ! --mark {m} -j REDIRECT --to-ports {DNS_CAPTURE_PORT}"
            );
        }
        let _ = writeln!(out, "-A ISTIO_OUTPUT -p tcp -m mark --mark {c} -j ACCEPT");
        let _ = writeln!(out, "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT");
        let _ = writeln!(
            out,
            "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {m} -j REDIRECT --to-ports {OUTBOUND_PORT}"
        );
        let _ = writeln!(out, "-A ISTIO_PRERT -s {probe}/32 -p tcp -m tcp -j ACCEPT");
        let _ = writeln!(
            out,
            "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport {INBOUND_HBONE_PORT} -m mark ! --mark {m} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"
        );
        out.push_str("COMMIT\n");

        if self.dns_capture {
            table(&mut out, "raw", &["PREROUTING", "OUTPUT"]);
            let _ = writeln!(out, "-A PREROUTING -j ISTIO_PRERT");
            let _ = writeln!(out, "-A OUTPUT -j ISTIO_OUTPUT");
            let _ = writeln!(
                out,
                "-A ISTIO_OUTPUT -p udp -m mark --mark {m} -m udp --dport 53 -j CT --zone {DNS_CT_ZONE}"
            );
            let _ = writeln!(
                out,
                "-A ISTIO_PRERT -p udp -m mark ! --mark {m} -m udp --sport 53 -j CT --zone {DNS_CT_ZONE}"
            );
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// Opens a table: its built-in chains with ACCEPT policies, then the two Istio chains.
fn table(out: &mut String, name: &str, builtin: &[&str]) {
    let _ = writeln!(out, "*{name}");
    for chain in builtin {
        let _ = writeln!(out, ":{chain} ACCEPT [0:0]");
    }
    out.push_str(":ISTIO_OUTPUT - [0:0]\n:ISTIO_PRERT - [0:0]\n");
}

/// The policy routing a captured pod needs beside its rules: packets carrying the connmark the
/// proxy's spoofed connections get are routed to the local table, so an app's replies to a
/// foreign client address reach the proxy's transparent socket instead of leaving the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRouting {
    /// `ip rule add fwmark <mark>/<mask> pref <pref> lookup <table>`.
    pub fwmark: u32,
    pub mask: u32,
    pub pref: u32,
    pub table: u32,
}

impl Default for PolicyRouting {
    fn default() -> Self {
        Self { fwmark: CONNMARK, mask: MARK_MASK, pref: ROUTE_RULE_PREF, table: ROUTE_TABLE }
    }
}

impl PolicyRouting {
    /// The same routing as `ip` commands, for documentation and for users replaying a scenario by
    /// hand (the harness itself programs it through rtnetlink).
    pub fn ip_commands(&self) -> [String; 2] {
        [
            format!(
                "ip rule add fwmark 0x{:x}/0x{:x} pref {} lookup {}",
                self.fwmark, self.mask, self.pref, self.table
            ),
            format!("ip route add local 0.0.0.0/0 dev lo table {}", self.table),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../testdata/istio-inpod.rules");

    /// The reference file without its comments and blank lines.
    fn reference_lines() -> Vec<&'static str> {
        REFERENCE.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
    }

    #[test]
    fn defaults_reproduce_the_reference_rules_line_for_line() {
        let generated = InpodRules::default().restore_text();
        let generated: Vec<&str> = generated.lines().collect();
        assert_eq!(generated, reference_lines());
    }

    #[test]
    fn defaults_reproduce_the_reference_routing() {
        let [rule, route] = PolicyRouting::default().ip_commands();
        assert!(REFERENCE.contains(&format!("#   {rule}")), "{rule}");
        assert!(REFERENCE.contains(&format!("#   {route}")), "{route}");
    }

    #[test]
    fn dns_capture_off_drops_the_dns_rules_and_the_raw_table() {
        let text = InpodRules { dns_capture: false, ..Default::default() }.restore_text();
        assert!(!text.contains("15053"), "{text}");
        assert!(!text.contains("*raw"), "{text}");
        assert!(!text.contains("--zone"), "{text}");
        // Everything else of the reference is still there, in order.
        let expected: Vec<&str> = reference_lines()
            .into_iter()
            .take_while(|l| *l != "*raw")
            .filter(|l| !l.contains("15053"))
            .collect();
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn probe_address_is_substituted_in_both_directions() {
        let text = InpodRules { probe_addr: Ipv4Addr::new(169, 254, 1, 1), ..Default::default() }
            .restore_text();
        assert!(text.contains("-A ISTIO_OUTPUT -d 169.254.1.1/32 -p tcp -m tcp -j ACCEPT"));
        assert!(text.contains("-A ISTIO_PRERT -s 169.254.1.1/32 -p tcp -m tcp -j ACCEPT"));
        assert!(!text.contains("169.254.7.127"));
    }
}
