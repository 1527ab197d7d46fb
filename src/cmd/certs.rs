//! `testbed certs` — write a mesh CA and workload certificates as PEM, so tools outside the
//! project (nghttpx, curl, openssl) can speak HBONE to the proxy or serve it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambient_proxy::ca::{KeySource, MeshCa, write_bundle};
use ambient_proxy::identity::Identity;
use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write `ca.pem`, `ca-key.pem` and `<namespace>.<sa>.pem` / `.key.pem` into.
    #[arg(long)]
    out: PathBuf,
    /// A workload identity to issue, e.g. spiffe://cluster.local/ns/default/sa/sleep (repeatable).
    #[arg(long = "identity", value_name = "SPIFFE_ID")]
    identities: Vec<String>,
    /// Trust domain of the CA; defaults to the identities' (they must agree), else cluster.local.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Derive every key from this seed (same seed ⇒ same keys; `testbed proxy` accepts the seed
    /// too). Without it, keys are random.
    #[arg(long)]
    seed: Option<u64>,
    /// Validity of the workload certificates, in days.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut ids = Vec::new();
    for s in &args.identities {
        ids.push(s.parse::<Identity>().with_context(|| "--identity".to_string())?);
    }
    let td = match (&args.trust_domain, ids.first()) {
        (Some(td), _) => td.clone(),
        (None, Some(id)) => id.trust_domain.clone(),
        (None, None) => "cluster.local".to_string(),
    };
    if let Some(id) = ids.iter().find(|id| id.trust_domain != td) {
        bail!("--identity {id} is not in trust domain {td}; one CA serves one trust domain");
    }
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let keys = match args.seed {
        Some(seed) => KeySource::Seeded(seed),
        None => KeySource::Random(ambient_proxy::crypto::default_provider()),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?;
    let ca = MeshCa::generate(&td, &keys, now)?;
    let lifetime = Duration::from_secs(args.days * 24 * 3600);
    let mut certs = Vec::new();
    for id in &ids {
        certs.push(ca.issue(id, &keys.key_seed(&format!("{id}#0"))?, now, lifetime)?);
    }
    for path in write_bundle(&args.out, &ca, &certs)? {
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
