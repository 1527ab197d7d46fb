//! What a kernel run depended on, for the reports' headers: the kernel release, the `iptables`
//! version and backend (`nf_tables` or `legacy`: the rules go through it), the `conntrack` tool's
//! version. Probed once per command; a tool that cannot be asked is recorded as such, never
//! left out. Parsing is pure ([`iptables_version`], [`conntrack_version`]).

use std::process::Command;

use crate::tools::find_tool;

/// `(what, value)` pairs in a fixed order: `kernel`, `iptables`, `conntrack`.
pub fn probe() -> Vec<(String, String)> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown (/proc/sys/kernel/osrelease: {e})"));
    vec![
        ("kernel".into(), kernel),
        ("iptables".into(), version_of("iptables", iptables_version)),
        ("conntrack".into(), version_of("conntrack", conntrack_version)),
    ]
}

/// `program --version` through `parse`, or why it could not be asked.
fn version_of(program: &str, parse: fn(&str) -> Option<String>) -> String {
    let path = match find_tool(program) {
        Ok(p) => p,
        Err(e) => return format!("unknown ({e})"),
    };
    match Command::new(&path).arg("--version").output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            parse(&text).unwrap_or_else(|| {
                format!("unknown ({} --version said {:?})", path.display(), text.trim())
            })
        }
        Err(e) => format!("unknown ({}: {e})", path.display()),
    }
}

/// `iptables v1.8.9 (nf_tables)` → `1.8.9 (nf_tables)`; a version without a backend (iptables
/// before 1.8) is the legacy one: `1.6.1 (legacy)`.
pub fn iptables_version(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.trim_start().starts_with("iptables"))?;
    let version = version_token(line)?;
    let backend = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or("legacy", |(b, _)| b.trim());
    Some(format!("{version} ({backend})"))
}

/// `conntrack v1.4.7 (conntrack-tools)` → `1.4.7`.
pub fn conntrack_version(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.trim_start().starts_with("conntrack"))?;
    version_token(line)
}

/// The first word `v<digit>…`, without the `v`.
fn version_token(line: &str) -> Option<String> {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix('v'))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_the_iptables_backend_are_read_from_the_tools_own_words() {
        assert_eq!(
            iptables_version("iptables v1.8.9 (nf_tables)\n").as_deref(),
            Some("1.8.9 (nf_tables)")
        );
        assert_eq!(
            iptables_version("iptables v1.8.7 (legacy)\n").as_deref(),
            Some("1.8.7 (legacy)")
        );
        assert_eq!(iptables_version("iptables v1.6.1\n").as_deref(), Some("1.6.1 (legacy)"));
        assert_eq!(iptables_version("command not found"), None);
        assert_eq!(
            conntrack_version("conntrack v1.4.7 (conntrack-tools)\n").as_deref(),
            Some("1.4.7")
        );
        assert_eq!(conntrack_version("conntrack vX"), None);
    }

    #[test]
    fn this_machine_is_probed_in_order() {
        let env = probe();
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["kernel", "iptables", "conntrack"]);
        // The harness's tests need both tools: here they must answer.
        assert!(!env[0].1.starts_with("unknown"), "{env:?}");
        assert!(env[1].1.contains("(nf_tables)") || env[1].1.contains("(legacy)"), "{env:?}");
        assert!(env[2].1.starts_with(|c: char| c.is_ascii_digit()), "{env:?}");
    }
}
