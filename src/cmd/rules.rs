//! `testbed rules` — print a captured pod's in-pod redirection rules and policy routing.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use ambient_scenarios::rules::{InpodRules, PolicyRouting};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Leave DNS capture out (no 15053 redirects, no raw-table conntrack zones).
    #[arg(long)]
    no_dns_capture: bool,
    /// Source address of kubelet probes, never redirected.
    #[arg(long, default_value_t = ambient_proxy::inpod::DEFAULT_PROBE_ADDR)]
    probe_addr: Ipv4Addr,
    /// Also print the policy routing as `ip` commands (as `#` comments, so the output stays
    /// valid `iptables-restore` input).
    #[arg(long)]
    routing: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rules = InpodRules { dns_capture: !args.no_dns_capture, probe_addr: args.probe_addr };
    if args.routing {
        for line in PolicyRouting::default().ip_commands() {
            println!("# {line}");
        }
    }
    print!("{}", rules.restore_text());
    Ok(ExitCode::SUCCESS)
}
