//! The config file of a standalone node proxy (`testbed proxy --config FILE`), YAML or JSON:
//!
//! ```yaml
//! node: node-a
//! seed: 7                      # endpoint choice and trace ids (default 0)
//! ca: {seed: 1}                # the mesh CA: derived from a seed (as `testbed certs --seed 1`) …
//! # ca: {certFile: ca.pem, keyFile: ca-key.pem}   # … or the PEM files `testbed certs` wrote
//! #                              (or another CA's root and key, e.g. one a ztunnel trusts)
//! keySeed: 3                   # derive workload keys from a seed (default: random)
//! drain: 10s                   # how long Ctrl-C waits for connections to finish
//! pods:
//!   - {ip: 10.0.1.5, netns: /var/run/netns/client}   # netns absent = the current namespace
//! mesh:                        # a MeshSpec: trustDomain, workloads, services, policies
//!   workloads: [{name: client, node: node-a, ip: 10.0.1.5, serviceAccount: sleep}]
//! ```
//!
//! [`ProxyFile::load`] parses and validates it — every problem is reported with its key path —
//! and loads the CA, so a file that passes `--check` does not fail at start for any reason the
//! file decides. What only the kernel can say (is the netns file a network namespace, can the
//! listen address be bound there) is [`LoadedConfig::probe`], which `--check` runs too.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ca::MeshCa;
use crate::error::ValidationErrors;
use crate::identity::valid_name_part;
use crate::mesh::{MeshSpec, MeshState};

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyFile {
    pub node: String,
    #[serde(default)]
    pub seed: u64,
    pub ca: CaSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_seed: Option<u64>,
    #[serde(default = "default_drain", skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    pub pods: Vec<PodEntry>,
    pub mesh: MeshSpec,
    /// The resolver the DNS proxy forwards names outside the mesh to (`ip:port`); without it
    /// they get SERVFAIL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_upstream: Option<std::net::SocketAddr>,
}

fn default_drain() -> Option<String> {
    Some("10s".into())
}

/// Where the mesh CA comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// A captured pod this proxy serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodEntry {
    pub ip: IpAddr,
    /// Path of the pod's netns file; absent = the proxy's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// Where its listeners bind (default 0.0.0.0, right for a pod's own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_ip: Option<IpAddr>,
}

impl PodEntry {
    pub fn listen_ip(&self) -> IpAddr {
        self.listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// A validated file: the mesh compiled, the drain deadline parsed, the CA loaded (when it
/// comes from files; a seeded CA is generated at start).
#[derive(Debug)]
pub struct LoadedConfig {
    pub file: ProxyFile,
    pub mesh: MeshState,
    pub drain: Duration,
    pub ca: Option<MeshCa>,
}

/// Largest config (and CA PEM) file read: far above any real one, and a bound on what a wrong
/// path (`/dev/zero`) can make the proxy allocate.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Read a text file of at most `max` bytes; larger input (or a device that never ends) is an
/// error naming the limit, not an allocation without end.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    read_limited(std::fs::File::open(path)?, max)
}

/// [`read_text`] from any reader (stdin).
pub fn read_limited(reader: impl Read, max: u64) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    reader.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes, the limit for this input"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {errors}")]
    Invalid { path: PathBuf, errors: ValidationErrors },
}

/// `250ms`, `30s`, `5m`, `2h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// The longest drain accepted: a day is already more than any shutdown should wait.
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);

impl ProxyFile {
    /// Read, parse (YAML, which also reads JSON) and validate.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = read_text(path, MAX_FILE_BYTES)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let file: ProxyFile = serde_saphyr::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.validate(base)
            .map_err(|errors| ConfigError::Invalid { path: path.to_path_buf(), errors })
    }

    /// Check everything; relative CA file paths are resolved against `base`.
    pub fn validate(mut self, base: &Path) -> Result<LoadedConfig, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if !valid_name_part(&self.node) {
            errors.push("node", format!("{:?} is not a valid node name", self.node));
        }
        match (&self.ca.seed, &self.ca.cert_file, &self.ca.key_file) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => errors.push("ca", "give either `seed`, or both `certFile` and `keyFile`"),
        }
        for (field, p) in [("certFile", &mut self.ca.cert_file), ("keyFile", &mut self.ca.key_file)]
        {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
                if !p.is_file() {
                    errors.push(
                        format!("ca.{field}"),
                        format!("{} is not a readable file", p.display()),
                    );
                }
            }
        }
        let drain = match self.drain.as_deref().map(parse_duration) {
            None => Duration::from_secs(10),
            Some(Some(d)) if d <= MAX_DRAIN => d,
            Some(Some(_)) | Some(None) => {
                errors.push(
                    "drain",
                    format!(
                        "{:?}: expected a duration such as 250ms, 10s, 5m, at most 24h",
                        self.drain.as_deref().unwrap_or_default()
                    ),
                );
                Duration::ZERO
            }
        };
        let mesh = match MeshState::new(self.mesh.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                errors.extend_prefixed("mesh", e);
                None
            }
        };
        let ca = match (&mesh, &self.ca.cert_file, &self.ca.key_file) {
            (Some(mesh), Some(cert), Some(key)) if cert.is_file() && key.is_file() => {
                load_ca(mesh.trust_domain(), cert, key, &mut errors)
            }
            _ => None,
        };
        if self.pods.is_empty() {
            errors.push("pods", "no pod to serve");
        }
        let mut spaces: Vec<(usize, NetnsId)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, pod) in self.pods.iter().enumerate() {
            if !seen.insert(pod.ip) {
                errors.push(format!("pods[{i}].ip"), format!("{} is listed twice", pod.ip));
            }
            let is_local = |w: &&crate::mesh::Workload| w.captured && w.node == self.node;
            if !self.mesh.workloads.iter().filter(is_local).any(|w| w.ip == pod.ip) {
                let local: Vec<String> =
                    self.mesh.workloads.iter().filter(is_local).map(|w| w.ip.to_string()).collect();
                errors.push(
                    format!("pods[{i}].ip"),
                    format!(
                        "{} is not a captured workload of node {} in `mesh` (captured there: {})",
                        pod.ip,
                        self.node,
                        if local.is_empty() { "none".to_string() } else { local.join(", ") }
                    ),
                );
            }
            let id = match &pod.netns {
                Some(ns) if !ns.exists() => {
                    let msg = format!("{} does not exist", ns.display());
                    errors.push(format!("pods[{i}].netns"), msg);
                    continue;
                }
                Some(ns) => netns_id(ns),
                None => netns_id(Path::new("/proc/self/ns/net")),
            };
            match id {
                Ok(id) => spaces.push((i, id)),
                Err(e) => errors.push(format!("pods[{i}].netns"), e),
            }
        }
        // Pods may share a namespace (loopback tests) only on distinct, specific listen
        // addresses: otherwise their listeners collide and the second fails at start.
        for (k, &(i, a)) in spaces.iter().enumerate() {
            for &(j, b) in &spaces[..k] {
                let (pi, pj) = (&self.pods[i], &self.pods[j]);
                let (li, lj) = (pi.listen_ip(), pj.listen_ip());
                if a == b && (li.is_unspecified() || lj.is_unspecified() || li == lj) {
                    errors.push(
                        format!("pods[{i}].netns"),
                        format!(
                            "the same network namespace as pods[{j}]: both would listen on \
                             {li}:15001 and {lj}:15001 there; give each pod its own namespace, \
                             or each a distinct `listenIp`"
                        ),
                    );
                }
            }
        }
        match (errors.is_empty(), mesh) {
            (true, Some(mesh)) => Ok(LoadedConfig { file: self, mesh, drain, ca }),
            _ => Err(errors),
        }
    }
}

#[cfg(target_os = "linux")]
impl LoadedConfig {
    /// What only the kernel can say about the pods, asked as the proxy will ask at start:
    /// enter each pod's namespace and bind its listen address (port 0, marked). A path that is
    /// no network namespace, an address the namespace does not have, or missing privileges
    /// each come back as an error on that pod.
    pub async fn probe(&self) -> ValidationErrors {
        use crate::inpod::PROXY_MARK;
        use crate::net::linux::{LinuxNetwork, NetnsPath};
        use crate::net::{ListenOptions, Network};
        let net = LinuxNetwork::new();
        let opts = ListenOptions { mark: Some(PROXY_MARK), transparent: false };
        let mut errors = ValidationErrors::default();
        for (i, pod) in self.file.pods.iter().enumerate() {
            let ns = NetnsPath(pod.netns.clone());
            let at = std::net::SocketAddr::new(pod.listen_ip(), 0);
            if let Err(e) = net.listen(&ns, at, &opts).await {
                use std::io::ErrorKind;
                let setns_failed = e.to_string().contains("setns");
                let (path, msg) = match e.kind() {
                    ErrorKind::AddrNotAvailable => (
                        format!("pods[{i}].listenIp"),
                        format!(
                            "{} is not an address of the pod's network namespace ({e})",
                            pod.listen_ip()
                        ),
                    ),
                    ErrorKind::PermissionDenied if !setns_failed => (
                        format!("pods[{i}]"),
                        format!("{e} (SO_MARK needs CAP_NET_ADMIN: run as root)"),
                    ),
                    _ if setns_failed || e.to_string().contains("opening netns") => {
                        (format!("pods[{i}].netns"), e.to_string())
                    }
                    _ => (format!("pods[{i}]"), e.to_string()),
                };
                errors.push(path, msg);
            }
        }
        errors
    }
}

/// A namespace file's identity: two paths name the same namespace when these are equal.
type NetnsId = (u64, u64);

fn netns_id(path: &Path) -> Result<NetnsId, String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        Err(format!("{}: network namespaces exist on Linux only", path.display()))
    }
}

/// Load the CA files, saying precisely what is wrong with them: a key that is not the
/// certificate's, a certificate that is no CA, a CA of another trust domain. Only a CA that
/// `testbed certs` wrote names a trust domain (its subject is `CN=<td> mesh CA`); any other root
/// (ztunnel's test root, `O=cluster.local`, in a mixed cluster) is loaded as a foreign CA and
/// its leaves take the mesh's trust domain.
fn load_ca(td: &str, cert: &Path, key: &Path, errors: &mut ValidationErrors) -> Option<MeshCa> {
    let read =
        |p: &Path, field: &str, errors: &mut ValidationErrors| match read_text(p, MAX_FILE_BYTES) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(format!("ca.{field}"), format!("{}: {e}", p.display()));
                None
            }
        };
    let (cert_pem, key_pem) = (read(cert, "certFile", errors)?, read(key, "keyFile", errors)?);
    let before = errors.len();
    let der = match crate::ca::pem_certs(&cert_pem) {
        Ok(certs) if !certs.is_empty() => certs[0].clone(),
        Ok(_) => {
            errors.push("ca.certFile", format!("{}: no CERTIFICATE block", cert.display()));
            return None;
        }
        Err(e) => {
            errors.push("ca.certFile", format!("{}: {e}", cert.display()));
            return None;
        }
    };
    if crate::x509::is_ca(&der) == Some(false) {
        errors.push(
            "ca.certFile",
            format!(
                "{} is not a CA certificate (no basicConstraints CA:TRUE): a workload \
                 certificate cannot sign others; give the `ca.pem` that `testbed certs` wrote",
                cert.display()
            ),
        );
    }
    let testbed_td = crate::x509::subject_common_name(&der)
        .and_then(|cn| cn.strip_suffix(" mesh CA").map(str::to_string));
    if let Some(other) = &testbed_td
        && other != td
    {
        errors.push(
            "ca.certFile",
            format!(
                "{} is the CA of trust domain {other:?}; mesh.trustDomain is {td:?}",
                cert.display()
            ),
        );
    }
    match rcgen::KeyPair::from_pem(&key_pem) {
        Ok(k) => {
            if crate::x509::public_key(&der).is_some_and(|pk| pk != k.public_key_raw()) {
                errors.push(
                    "ca.keyFile",
                    format!(
                        "{} is not the key of {} (their public keys differ)",
                        key.display(),
                        cert.display()
                    ),
                );
            }
        }
        Err(e) => errors.push("ca.keyFile", format!("{}: not a private key: {e}", key.display())),
    }
    if errors.len() > before {
        return None;
    }
    let loaded = if testbed_td.is_some() {
        MeshCa::from_pem(td, &cert_pem, &key_pem)
    } else {
        MeshCa::from_foreign_pem(td, &cert_pem, &key_pem)
    };
    match loaded {
        Ok(ca) => Some(ca),
        Err(e) => {
            errors.push("ca", e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_loads() {
        let yaml = r#"
node: node-a
ca: {seed: 1}
pods: [{ip: 10.0.1.5}]
mesh:
  workloads: [{name: client, node: node-a, ip: 10.0.1.5}]
"#;
        let f: ProxyFile = serde_saphyr::from_str(yaml).unwrap();
        let c = f.validate(Path::new(".")).unwrap();
        assert_eq!(c.drain, Duration::from_secs(10));
        assert_eq!(c.file.pods[0].listen_ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = r#"
node: node-a
ca: {seed: 1, keyFile: k.pem}
drain: soon
pods: [{ip: 10.0.1.5}, {ip: 10.0.2.5, netns: /nonexistent/netns}, {ip: 10.0.1.5}]
mesh:
  workloads:
    - {name: client, node: node-a, ip: 10.0.1.5}
    - {name: server, node: node-b, ip: 10.0.2.5}
  services: [{name: s, vip: 10.96.0.1, ports: [{port: 0, targetPort: 80}]}]
"#;
        let f: ProxyFile = serde_saphyr::from_str(yaml).unwrap();
        let errs = f.validate(Path::new("/tmp")).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "ca",
                "ca.keyFile",
                "drain",
                "mesh.services[0].ports[0].port",
                "pods[1].ip",
                "pods[1].netns",
                "pods[2].ip",
                "pods[2].netns"
            ]
        );
        assert!(errs.to_string().contains("10.0.2.5 is not a captured workload of node node-a in `mesh` (captured there: 10.0.1.5)"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("xs"), None);
        // Overflow is no duration (it used to wrap to a short one).
        assert_eq!(parse_duration("307445734561825861m"), None);
        assert_eq!(parse_duration("5124095576030432h"), None);
    }

    /// A scratch folder, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("ambient-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, text: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_ca(
        cert: &str,
        key: &str,
        trust_domain: &str,
    ) -> Result<LoadedConfig, ValidationErrors> {
        let yaml = format!(
            "node: node-a\nca: {{certFile: {cert}, keyFile: {key}}}\npods: [{{ip: 10.0.1.5}}]\n\
             mesh:\n  trustDomain: {trust_domain}\n  workloads: [{{name: client, node: node-a, ip: 10.0.1.5}}]\n"
        );
        let f: ProxyFile = serde_saphyr::from_str(&yaml).unwrap();
        f.validate(Path::new("."))
    }

    fn messages(r: Result<LoadedConfig, ValidationErrors>) -> Vec<String> {
        match r {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// Every CA problem that used to pass `--check` and then fail at start.
    #[test]
    fn ca_files_are_loaded_and_checked_at_validation() {
        use crate::ca::KeySource;
        use crate::identity::Identity;
        let dir = Scratch::new("ca");
        let t = Duration::from_secs(1_800_000_000);
        let ca = MeshCa::generate("cluster.local", &KeySource::Seeded(1), t).unwrap();
        let other = MeshCa::generate("cluster.local", &KeySource::Seeded(2), t).unwrap();
        let foreign = MeshCa::generate("example.org", &KeySource::Seeded(1), t).unwrap();
        let leaf =
            ca.issue(&Identity::new("cluster.local", "default", "sleep"), &[3; 32], t, t).unwrap();
        let cert = dir.write("ca.pem", &ca.root_pem());
        let key = dir.write("ca-key.pem", &ca.key_pem());
        let other_key = dir.write("other-key.pem", &other.key_pem());
        let foreign_cert = dir.write("foreign.pem", &foreign.root_pem());
        let leaf_cert = dir.write("leaf.pem", &leaf.cert_pem());
        let leaf_key = dir.write("leaf-key.pem", &leaf.key_pem());

        let ok = with_ca(&cert, &key, "cluster.local").unwrap();
        assert!(ok.ca.is_some(), "the loaded CA travels with the config");

        let m = messages(with_ca(&cert, &other_key, "cluster.local"));
        assert!(
            m.len() == 1 && m[0].starts_with("ca.keyFile:") && m[0].contains("public keys differ"),
            "{m:?}"
        );

        let m = messages(with_ca(&leaf_cert, &leaf_key, "cluster.local"));
        assert!(
            m.iter().any(|m| m.starts_with("ca.certFile:") && m.contains("not a CA certificate")),
            "{m:?}"
        );

        let m = messages(with_ca(&foreign_cert, &key, "cluster.local"));
        assert!(
            m.iter().any(|m| m.contains(
                "the CA of trust domain \"example.org\"; mesh.trustDomain is \"cluster.local\""
            )),
            "{m:?}"
        );
        let m = messages(with_ca(&cert, &key, "example.org"));
        assert!(m.iter().any(|m| m.contains("trust domain \"cluster.local\"")), "{m:?}");
    }

    /// A root made elsewhere (RSA, no `<td> mesh CA` subject, as ztunnel's test root) names no
    /// trust domain: it loads for any mesh trust domain, and its key is still checked.
    #[test]
    fn a_foreign_root_loads_whatever_the_trust_domain() {
        let dir = Scratch::new("foreign");
        let cert = dir.write("root.pem", include_str!("testdata/foreign-ca.pem"));
        let key = dir.write("root-key.pem", include_str!("testdata/foreign-ca-key.pem"));
        for td in ["cluster.local", "example.org"] {
            match with_ca(&cert, &key, td) {
                Ok(loaded) => assert_eq!(loaded.ca.unwrap().trust_domain(), td),
                Err(e) => panic!("{td}: {:?}", messages(Err(e))),
            }
        }
        let t = Duration::from_secs(1_800_000_000);
        let other = MeshCa::generate("cluster.local", &crate::ca::KeySource::Seeded(2), t).unwrap();
        let other_key = dir.write("other-key.pem", &other.key_pem());
        let m = messages(with_ca(&cert, &other_key, "cluster.local"));
        assert!(
            m.len() == 1 && m[0].starts_with("ca.keyFile:") && m[0].contains("public keys differ"),
            "{m:?}"
        );
    }

    #[test]
    fn a_drain_that_overflows_or_exceeds_a_day_is_an_error() {
        for drain in ["307445734561825861m", "25h", "soon"] {
            let yaml = format!(
                "node: node-a\nca: {{seed: 1}}\ndrain: {drain}\npods: [{{ip: 10.0.1.5}}]\n\
                 mesh:\n  workloads: [{{name: client, node: node-a, ip: 10.0.1.5}}]\n"
            );
            let f: ProxyFile = serde_saphyr::from_str(&yaml).unwrap();
            let m = messages(f.validate(Path::new(".")));
            assert!(
                m.len() == 1 && m[0].starts_with("drain:") && m[0].contains("at most 24h"),
                "{drain}: {m:?}"
            );
        }
    }

    #[test]
    fn pods_share_a_namespace_only_on_distinct_listen_addresses() {
        let yaml = |a: &str, b: &str| {
            format!(
                "node: node-a\nca: {{seed: 1}}\npods: [{{ip: 10.0.1.5{a}}}, {{ip: 10.0.1.6{b}}}]\n\
                 mesh:\n  workloads: [{{name: a, node: node-a, ip: 10.0.1.5}}, {{name: b, node: node-a, ip: 10.0.1.6}}]\n"
            )
        };
        let check = |a: &str, b: &str| {
            let f: ProxyFile = serde_saphyr::from_str(&yaml(a, b)).unwrap();
            messages(f.validate(Path::new(".")))
        };
        assert_eq!(check(", listenIp: 127.0.0.5", ", listenIp: 127.0.0.6"), Vec::<String>::new());
        let m = check("", "");
        assert!(
            m.len() == 1
                && m[0].starts_with("pods[1].netns: the same network namespace as pods[0]"),
            "{m:?}"
        );
        assert_eq!(check(", listenIp: 127.0.0.5", ", listenIp: 127.0.0.5").len(), 1);
        assert_eq!(check("", ", listenIp: 127.0.0.6").len(), 1);
    }

    #[test]
    fn input_is_read_up_to_a_limit() {
        let dir = Scratch::new("limit");
        let p = dir.write("big.yaml", &"#".repeat(100));
        assert_eq!(read_text(Path::new(&p), 100).unwrap().len(), 100);
        let e = read_text(Path::new(&p), 99).unwrap_err();
        assert!(e.to_string().contains("larger than 99 bytes"), "{e}");
        // A device that never ends stops at the limit instead of filling memory.
        let e = read_text(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }
}
