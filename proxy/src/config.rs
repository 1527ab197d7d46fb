//! The config file of a standalone node proxy (`testbed proxy --config FILE`), YAML or JSON:
//!
//! ```yaml
//! node: node-a
//! seed: 7                      # endpoint choice and trace ids (default 0)
//! ca: {seed: 1}                # the mesh CA: derived from a seed (as `testbed certs --seed 1`) …
//! # ca: {certFile: ca.pem, keyFile: ca-key.pem}   # … or the PEM files `testbed certs` wrote
//! keySeed: 3                   # derive workload keys from a seed (default: random)
//! drain: 10s                   # how long Ctrl-C waits for connections to finish
//! pods:
//!   - {ip: 10.0.1.5, netns: /var/run/netns/client}   # netns absent = the current namespace
//! mesh:                        # a MeshSpec: trustDomain, workloads, services, policies
//!   workloads: [{name: client, node: node-a, ip: 10.0.1.5, serviceAccount: sleep}]
//! ```
//!
//! [`ProxyFile::load`] parses and validates it; every problem is reported with its key path.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// A validated file: the mesh compiled, the drain deadline parsed.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub file: ProxyFile,
    pub mesh: MeshState,
    pub drain: Duration,
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
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

impl ProxyFile {
    /// Read, parse (YAML, which also reads JSON) and validate.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
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
            Some(Some(d)) => d,
            Some(None) => {
                errors.push("drain", "expected a duration such as 250ms, 10s, 5m");
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
        if self.pods.is_empty() {
            errors.push("pods", "no pod to serve");
        }
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
            if let Some(ns) = &pod.netns
                && !ns.exists()
            {
                errors.push(format!("pods[{i}].netns"), format!("{} does not exist", ns.display()));
            }
        }
        match (errors.is_empty(), mesh) {
            (true, Some(mesh)) => Ok(LoadedConfig { file: self, mesh, drain }),
            _ => Err(errors),
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
                "pods[2].ip"
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
    }
}
