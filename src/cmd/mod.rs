//! One module per subcommand; see `main.rs` for the conventions.

pub mod certs;
pub mod check;
pub mod conform;
pub mod fuzz;
pub mod list;
pub mod proxy;
pub mod rules;
pub mod run;
pub mod trace;

use ambient_scenarios::{Selection, Shard};

/// What a kernel run depended on, for its reports: the kernel release and the `iptables` and
/// `conntrack` versions (Linux), then the commit ([`commit`]).
pub fn kernel_environment() -> Vec<(String, String)> {
    #[cfg(target_os = "linux")]
    let mut env = ambient_netns::environment::probe();
    #[cfg(not(target_os = "linux"))]
    let mut env = Vec::new();
    env.push(("commit".into(), commit()));
    env
}

/// `git rev-parse HEAD` of the working directory, `-dirty` appended when tracked files differ
/// from it; `unknown (…)` when the command does not run in a git checkout.
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(head) if !head.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        _ => "unknown (not run in a git checkout)".into(),
    }
}

/// The selection `testbed run`, `testbed conform` and `testbed list` share (flattened into their arguments).
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// Keep scenarios whose id matches any of these globs (`*` any characters, `?` one; a file
    /// that does not load matches by its file stem). A glob that matches no id is an error.
    #[arg(long = "scenario", value_name = "GLOB")]
    scenarios: Vec<String>,
    /// Keep scenarios having any of these tags (files that do not load are always kept).
    #[arg(long, value_name = "TAG")]
    include: Vec<String>,
    /// Drop scenarios having any of these tags.
    #[arg(long, value_name = "TAG")]
    exclude: Vec<String>,
    /// Run shard K of N (1-based), split by scenario id: for spreading the suite over CI machines.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
}

impl SelectArgs {
    pub fn selection(self) -> Selection {
        Selection {
            scenarios: self.scenarios,
            include: self.include,
            exclude: self.exclude,
            shard: self.shard,
        }
    }
}

/// The proxies the netns backend runs on its nodes (flattened into `testbed run` and `testbed
/// conform`).
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The node proxy on the kernel: `ours`, `ztunnel`, or a comma list given to the nodes in
    /// order, cycling (`ours,ztunnel`: ours on the first node, ztunnel on the second, …).
    #[arg(long, value_name = "KINDS", default_value = "ours")]
    proxy: String,
    /// The ztunnel binary (built from istio/ztunnel with features tls-ring,testing); default
    /// $TESTBED_ZTUNNEL.
    #[arg(long, value_name = "PATH")]
    ztunnel_bin: Option<std::path::PathBuf>,
    /// The folder holding ztunnel's test root and key (root-cert.pem, ca-key.pem; ztunnel's
    /// src/tls), for clusters mixing both proxies; default $TESTBED_ZTUNNEL_CA, else the source
    /// tree the binary was built in.
    #[arg(long, value_name = "DIR")]
    ztunnel_ca: Option<std::path::PathBuf>,
}

/// The node proxies as the netns backend takes them (Linux only).
#[cfg(target_os = "linux")]
pub type ProxyPlan = ambient_netns::ProxyPlan;
#[cfg(not(target_os = "linux"))]
pub type ProxyPlan = ();

impl ProxyArgs {
    /// The kinds named by `--proxy`, checked.
    fn kinds(&self) -> Result<Vec<&str>, String> {
        let kinds: Vec<&str> = self.proxy.split(',').map(str::trim).collect();
        for k in &kinds {
            if !matches!(*k, "ours" | "ztunnel") {
                return Err(format!(
                    "--proxy {}: unknown proxy {k:?}; expected ours, ztunnel, or a comma list of them",
                    self.proxy
                ));
            }
        }
        Ok(kinds)
    }

    /// Only our proxy (the default).
    pub fn is_ours(&self) -> bool {
        self.kinds().is_ok_and(|k| k.iter().all(|k| *k == "ours"))
    }

    /// `--proxy` as given.
    pub fn describe(&self) -> &str {
        &self.proxy
    }

    /// The plan, or what is wrong with the options (a usage error: exit 2). ztunnel needs a
    /// binary: `--ztunnel-bin` or `$TESTBED_ZTUNNEL`.
    #[cfg(target_os = "linux")]
    pub fn plan(&self) -> Result<ProxyPlan, String> {
        use ambient_netns::ProxyKind;
        let kinds = self.kinds()?;
        let kinds: Vec<ProxyKind> = kinds
            .iter()
            .map(|k| if *k == "ztunnel" { ProxyKind::Ztunnel } else { ProxyKind::Ours })
            .collect();
        let env_path =
            |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(Into::into);
        let binary = self.ztunnel_bin.clone().or_else(|| env_path("TESTBED_ZTUNNEL"));
        let ca = self.ztunnel_ca.clone().or_else(|| env_path("TESTBED_ZTUNNEL_CA"));
        let ztunnel = if kinds.contains(&ProxyKind::Ztunnel) {
            let binary = binary.ok_or_else(|| {
                format!(
                    "--proxy {}: no ztunnel binary; give it with --ztunnel-bin PATH or \
                     TESTBED_ZTUNNEL=PATH (a ztunnel built from the public istio/ztunnel \
                     repository with features tls-ring,testing)",
                    self.proxy
                )
            })?;
            let setup = ambient_netns::ztunnel::ZtunnelSetup::new(binary, ca)?;
            if kinds.contains(&ProxyKind::Ours) {
                // A mixed cluster shares ztunnel's CA: find it now, not halfway through a run.
                setup.ca_dir()?;
            }
            Some(setup)
        } else {
            None
        };
        Ok(ProxyPlan { kinds, ztunnel })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn plan(&self) -> Result<ProxyPlan, String> {
        self.kinds()?;
        if self.is_ours() {
            Ok(())
        } else {
            Err("ztunnel runs in the netns backend: Linux only".into())
        }
    }
}
