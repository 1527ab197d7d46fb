//! Real ztunnel as a node proxy of the netns backend (`--proxy ztunnel --ztunnel-bin PATH`).
//!
//! The harness plays the CNI node agent and istiod for it: it renders the mesh as ztunnel's
//! local config file, starts one ztunnel per node in the node's network namespace, and serves
//! the ZDS protocol on each node's unix socket, handing ztunnel each captured pod's network
//! namespace. Nothing of ztunnel is in this repository: the binary is built from the public
//! istio/ztunnel repository with features `tls-ring,testing` (plus protobuf-compiler) and given
//! by path at run time.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`zds`] | the ZDS messages as bytes, hand-encoded from the protocol's field numbers (pure) |
//! | [`agent`] | the node agent's end of ZDS: a `SOCK_SEQPACKET` server, adds with the pod's netns fd |
//! | [`config`] | the mesh as ztunnel's `LOCAL_XDS_PATH` file: workloads, services, policies as istiod would send them (pure) |
//! | [`process`] | the ztunnel process: its environment, started in a node namespace, its output kept |
//! | [`access`] | ztunnel's JSON log → the proxy events an Outcome is assembled from (pure) |
//! | [`dns`] | ztunnel's DNS access log → `dns` events, tied to the harness's lookups (pure) |
//!
//! The backend side (one ztunnel per node, faults) is [`crate::backend::ztunnels`].

pub mod access;
pub mod agent;
pub mod config;
pub mod dns;
pub mod process;
pub mod zds;

use std::path::{Path, PathBuf};

use ambient_proxy::ca::MeshCa;

/// The test root ztunnel's `FAKE_CA` signs with, in its source tree (`src/tls/`).
pub const ROOT_CERT: &str = "root-cert.pem";
/// Its private key, beside it.
pub const ROOT_KEY: &str = "ca-key.pem";

/// A ztunnel binary to run, and where its test CA's files are (mixed clusters only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZtunnelSetup {
    pub binary: PathBuf,
    /// A folder with [`ROOT_CERT`] and [`ROOT_KEY`]; when `None`, the source tree the binary was
    /// built in (`<src>/out/rust/release/ztunnel` → `<src>/src/tls`) if it has them.
    pub ca_dir: Option<PathBuf>,
}

impl ZtunnelSetup {
    /// Checks that `binary` is an executable file.
    pub fn new(binary: PathBuf, ca_dir: Option<PathBuf>) -> Result<ZtunnelSetup, String> {
        use std::os::unix::fs::PermissionsExt as _;
        match binary.metadata() {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => return Err(format!("{} is not an executable file", binary.display())),
            Err(e) => return Err(format!("ztunnel binary {}: {e}", binary.display())),
        }
        Ok(ZtunnelSetup { binary, ca_dir })
    }

    /// The folder with ztunnel's test root and key, or why there is none.
    pub fn ca_dir(&self) -> Result<PathBuf, String> {
        let has = |d: &Path| d.join(ROOT_CERT).is_file() && d.join(ROOT_KEY).is_file();
        if let Some(dir) = &self.ca_dir {
            return if has(dir) {
                Ok(dir.clone())
            } else {
                Err(format!(
                    "{} does not hold ztunnel's test root ({ROOT_CERT}) and key ({ROOT_KEY})",
                    dir.display()
                ))
            };
        }
        let derived = self.binary.ancestors().nth(4).map(|src| src.join("src/tls"));
        match derived {
            Some(dir) if has(&dir) => Ok(dir),
            _ => Err(format!(
                "a cluster mixing our proxy and ztunnel needs ztunnel's test root and key \
                 ({ROOT_CERT}, {ROOT_KEY} in ztunnel's src/tls): give the folder with \
                 --ztunnel-ca DIR (or TESTBED_ZTUNNEL_CA); none was found beside {}",
                self.binary.display()
            )),
        }
    }

    /// Our proxies' CA in a mixed cluster: ztunnel's test root and key, read now.
    pub fn shared_ca(&self, trust_domain: &str) -> Result<MeshCa, String> {
        let dir = self.ca_dir()?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        MeshCa::from_foreign_pem(trust_domain, &read(ROOT_CERT)?, &read(ROOT_KEY)?)
            .map_err(|e| format!("ztunnel's test CA in {}: {e}", dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_plain_file_is_not_a_ztunnel_binary() {
        let err = ZtunnelSetup::new("/nonexistent/ztunnel".into(), None).unwrap_err();
        assert!(err.contains("/nonexistent/ztunnel"), "{err}");
        let plain = std::env::temp_dir().join(format!("not-ztunnel-{}", std::process::id()));
        std::fs::write(&plain, "").unwrap();
        let err = ZtunnelSetup::new(plain.clone(), None).unwrap_err();
        let _ = std::fs::remove_file(&plain);
        assert!(err.contains("not an executable"), "{err}");
        let ok = ZtunnelSetup::new("/bin/sh".into(), None).unwrap();
        // /bin/sh has no ztunnel source tree around it: the CA error says what to give.
        assert!(ok.ca_dir().unwrap_err().contains("--ztunnel-ca"));
        let given = ZtunnelSetup::new("/bin/sh".into(), Some("/tmp".into())).unwrap();
        assert!(given.ca_dir().unwrap_err().contains("root-cert.pem"));
    }
}
