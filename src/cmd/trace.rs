//! `testbed trace` — packets through the kernel model of one network namespace.
//!
//! Loads `--rules` (iptables-restore text) into a fresh model namespace with `--addr`
//! interfaces, runs every packet line (see `ambient_kernel::trace` for the format) with
//! conntrack state carried from line to line, and prints one JSON object per packet. All input
//! is read and checked before anything runs, so a bad line produces an error (line, word,
//! expectation; exit 2) and no output.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ambient_kernel::trace::{Direction, Line, Record, parse_line};
use ambient_kernel::{Listeners, Netns, Protocol, RestoreOptions, SocketInfo, Trace};
use ambient_proxy::config::{read_limited, read_text};
use anyhow::{Context as _, bail};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// iptables-restore text to load.
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// An interface address as ADDR/LEN@IFACE (repeatable). Default: 10.0.1.5/24@eth0; lo always
    /// has 127.0.0.1/8. A default route goes out of the first non-lo interface.
    #[arg(long = "addr", value_name = "ADDR/LEN@IFACE")]
    addrs: Vec<String>,
    /// An extra `ip` command without the `ip`, e.g. "rule add fwmark 0x111/0xfff lookup 100"
    /// or "route add local 0.0.0.0/0 dev lo table 100" (repeatable).
    #[arg(long = "ip", value_name = "COMMAND")]
    ip: Vec<String>,
    /// A listening socket for -m socket / TPROXY: `ADDR:PORT[/udp][,transparent]` (repeatable).
    #[arg(long = "listen", value_name = "SOCKET")]
    listen: Vec<String>,
    /// Turn forwarding on (net.ipv4.ip_forward=1).
    #[arg(long)]
    forward: bool,
    /// Packet lines (default: stdin).
    #[arg(long, value_name = "FILE")]
    packets: Option<PathBuf>,
    /// Write the final ruleset with counters here, in `iptables-save -c` form.
    #[arg(long, value_name = "FILE")]
    save_counters: Option<PathBuf>,
    /// Write the final conntrack table here, in `conntrack -L` form.
    #[arg(long, value_name = "FILE")]
    save_conntrack: Option<PathBuf>,
}

fn listener(spec: &str) -> anyhow::Result<(Protocol, SocketAddrV4, SocketInfo)> {
    let (addr, flags) = spec.split_once(',').unwrap_or((spec, ""));
    let (addr, proto) = match addr.split_once('/') {
        Some((a, "udp")) => (a, Protocol::Udp),
        Some((a, "tcp")) => (a, Protocol::Tcp),
        Some((_, p)) => bail!("--listen {spec}: unexpected `{p}`: expected tcp or udp"),
        None => (addr, Protocol::Tcp),
    };
    let addr: SocketAddrV4 =
        addr.parse().with_context(|| format!("--listen {spec}: expected ADDR:PORT"))?;
    let transparent = match flags {
        "" => false,
        "transparent" => true,
        other => bail!("--listen {spec}: unexpected `{other}`: expected `transparent`"),
    };
    Ok((proto, addr, SocketInfo { transparent, ..SocketInfo::default() }))
}

/// The largest rules or packets input read (a wrong path such as `/dev/zero` must not grow
/// memory without end).
const MAX_INPUT: u64 = 64 * 1024 * 1024;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rules = read_text(&args.rules, MAX_INPUT)
        .with_context(|| format!("reading {}", args.rules.display()))?;
    let mut netns = Netns::new();
    netns
        .restore(&rules, RestoreOptions::default())
        .with_context(|| format!("{}", args.rules.display()))?;
    netns.forwarding = args.forward;
    let addrs =
        if args.addrs.is_empty() { vec!["10.0.1.5/24@eth0".to_string()] } else { args.addrs };
    let mut first_dev = None;
    for spec in &addrs {
        let Some((cidr, dev)) = spec.split_once('@') else {
            bail!("--addr {spec}: expected ADDR/LEN@IFACE");
        };
        if dev == "lo" && cidr == "127.0.0.1/8" {
            continue;
        }
        netns
            .ip(&format!("addr add {cidr} dev {dev}"))
            .map_err(|e| anyhow::anyhow!("--addr {spec}: {e}"))?;
        if dev != "lo" && first_dev.is_none() {
            first_dev = Some(dev.to_string());
        }
    }
    if let Some(dev) = first_dev {
        netns
            .ip(&format!("route add default dev {dev}"))
            .map_err(|e| anyhow::anyhow!("default route: {e}"))?;
    }
    for cmd in &args.ip {
        netns.ip(cmd).map_err(|e| anyhow::anyhow!("--ip {cmd}: {e}"))?;
    }
    let mut sockets = Listeners::default();
    for spec in &args.listen {
        let (proto, addr, info) = listener(spec)?;
        sockets.add(proto, addr, info);
    }

    let (source, text) = match &args.packets {
        Some(p) => (
            p.display().to_string(),
            read_text(p, MAX_INPUT).with_context(|| format!("reading {}", p.display()))?,
        ),
        None => {
            let s =
                read_limited(std::io::stdin(), MAX_INPUT).context("reading packets from stdin")?;
            ("stdin".to_string(), s)
        }
    };
    // Check every line before running any, so bad input never yields partial output.
    let mut lines = Vec::new();
    let mut now = Duration::ZERO;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = parse_line(trimmed).map_err(|e| {
            let token = if e.token.is_empty() {
                String::new()
            } else {
                format!(" unexpected `{}`:", e.token)
            };
            anyhow::anyhow!("{source}: line {}:{token} expected {}", i + 1, e.expected)
        })?;
        let t = match &line {
            Line::Packet(p) => p.t,
            Line::Flush { t } => *t,
        };
        if let Some(t) = t {
            if t < now {
                bail!(
                    "{source}: line {}: t={} goes back in time: expected t >= {}",
                    i + 1,
                    t.as_secs_f64(),
                    now.as_secs_f64()
                );
            }
            now = t;
        }
        let Line::Packet(line) = line else {
            lines.push((i + 1, None, None, now));
            continue;
        };
        let iif = match (&line.direction, &line.iif) {
            (Direction::In, name) => {
                let name = name.as_deref().unwrap_or("eth0");
                Some(netns.interface(name).with_context(|| {
                    format!("{source}: line {}: unexpected `iif={name}`: expected an interface of the namespace", i + 1)
                })?)
            }
            (Direction::Out, _) => None,
        };
        lines.push((i + 1, Some(line), iif, now));
    }

    let end = now;
    let mut out = String::new();
    for (n, line, iif, now) in lines {
        let Some(line) = line else {
            netns.flush_conntrack();
            continue;
        };
        let mut trace = Trace::default();
        let outcome = match iif {
            Some(iif) => netns.input_traced(line.packet, iif, now, &sockets, &mut trace),
            None => {
                let sock = line.sender.socket(line.packet.mark);
                netns.output_traced(line.packet, sock, now, &sockets, &mut trace)
            }
        };
        out.push_str(&Record::new(&netns, n, now, &outcome, &trace).to_json());
        out.push('\n');
    }
    print!("{out}");
    if let Some(p) = &args.save_counters {
        std::fs::write(p, netns.save(true)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.save_conntrack {
        std::fs::write(p, netns.conntrack_dump(end))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
