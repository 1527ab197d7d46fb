//! `testbed proxy --config FILE` — run one node's proxy on the real kernel: listeners inside
//! each captured pod's network namespace (given by path), until Ctrl-C (or SIGTERM), then drain.
//! Access-log events and diagnostics go to stderr through `tracing` (the subscriber `main`
//! installs: `RUST_LOG`, default `info` for this subcommand); the final counters are printed to stdout as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use ambient_proxy::config::ProxyFile;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's config file (YAML or JSON); see `ambient_proxy::config` for its shape.
    #[arg(long)]
    config: PathBuf,
    /// Only validate the file, then exit.
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = match ProxyFile::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testbed: error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.check {
        // What only the kernel can say (netns files, listen addresses, privileges), asked the
        // way the proxy asks at start.
        let problems = runtime.block_on(probe(&cfg));
        if !problems.is_empty() {
            eprintln!("testbed: error: {}: {problems}", args.config.display());
            return Ok(ExitCode::from(2));
        }
        println!(
            "{}: ok (node {}, {} pods)",
            args.config.display(),
            cfg.file.node,
            cfg.file.pods.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    runtime.block_on(serve(cfg))
}

#[cfg(target_os = "linux")]
async fn probe(
    cfg: &ambient_proxy::config::LoadedConfig,
) -> ambient_proxy::error::ValidationErrors {
    cfg.probe().await
}

#[cfg(not(target_os = "linux"))]
async fn probe(_: &ambient_proxy::config::LoadedConfig) -> ambient_proxy::error::ValidationErrors {
    let mut e = ambient_proxy::error::ValidationErrors::default();
    e.push("pods", "`testbed proxy` runs on Linux only (network namespaces)");
    e
}

#[cfg(not(target_os = "linux"))]
async fn serve(_: ambient_proxy::config::LoadedConfig) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "`testbed proxy` runs on Linux only (network namespaces, SO_ORIGINAL_DST, IP_TRANSPARENT)"
    )
}

#[cfg(target_os = "linux")]
async fn serve(cfg: ambient_proxy::config::LoadedConfig) -> anyhow::Result<ExitCode> {
    use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
    use ambient_proxy::clock::WallClock;
    use ambient_proxy::crypto::default_provider;
    use ambient_proxy::net::linux::{LinuxNetwork, NetnsPath, raise_fd_limit};
    use ambient_proxy::node::{NodeProxy, PodSpec, ProxyConfig};
    use ambient_proxy::tls::TlsContext;

    let file = &cfg.file;
    let td = cfg.mesh.trust_domain().to_string();
    let provider = default_provider();
    let clock = WallClock::system();
    let ca = match (cfg.ca, file.ca.seed) {
        (Some(ca), _) => ca,
        (None, Some(seed)) => MeshCa::generate(&td, &KeySource::Seeded(seed), clock.now())?,
        (None, None) => anyhow::bail!("{}: no CA (validation let it through)", file.node),
    };
    // Two descriptors per proxied connection: the usual soft limit of 1,024 would cap a node
    // at ~500 connections and let a flood of connects lock every pod out.
    match raise_fd_limit() {
        Ok((soft, _)) => eprintln!("testbed proxy: open-descriptor limit {soft}"),
        Err(e) => {
            eprintln!("testbed proxy: warning: could not raise the open-descriptor limit: {e}")
        }
    }
    let keys = match file.key_seed {
        Some(seed) => KeySource::Seeded(seed),
        None => KeySource::Random(provider.clone()),
    };
    let store = CertStore::new(std::sync::Arc::new(ca), keys, clock, provider);
    let mut config = ProxyConfig::new(&file.node, TlsContext::new(std::sync::Arc::new(store), &td));
    config.seed = file.seed;
    config.dns.upstream = file.dns_upstream;
    let proxy = NodeProxy::new(LinuxNetwork::new(), cfg.mesh.clone(), config);
    for (i, pod) in file.pods.iter().enumerate() {
        let spec =
            PodSpec { ip: pod.ip, netns: NetnsPath(pod.netns.clone()), listen_ip: pod.listen_ip() };
        if let Err(e) = proxy.add_pod(spec).await {
            eprintln!("testbed: error: pods[{i}] ({}): {e}", pod.ip);
            proxy.crash();
            return Ok(ExitCode::from(1));
        }
    }
    let pods: Vec<String> = file.pods.iter().map(|p| p.ip.to_string()).collect();
    eprintln!("testbed proxy: node {} ready, serving {}", file.node, pods.join(", "));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        biased;
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("testbed proxy: draining (at most {:?})", cfg.drain);
    let clean = proxy.drain(cfg.drain).await;
    println!("{}", serde_json::to_string_pretty(&proxy.counters())?);
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
