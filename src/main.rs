//! `testbed` — the ambient-testbed command line.
//!
//! Thin by design: each subcommand lives in `src/cmd/<name>.rs` as an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<ExitCode>` that parses input, calls the crates and prints. Exit
//! codes: 0 success, 1 a check or expectation failed, 2 bad input (clap's own usage errors too).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// A deterministic simulator and a Linux network-namespace harness for the Istio Ambient data plane.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate scenario files without running them.
    Check(cmd::check::Args),
    /// Run scenarios on a backend; write outcome.json per scenario, junit.xml and summary.md.
    Run(cmd::run::Args),
    /// Run scenarios on both backends, compare their Outcomes field by field, write the
    /// conformance matrix; differences must be listed in scenarios/expected-differences.yaml.
    Conform(cmd::conform::Args),
    /// Print the in-pod redirection rules the CNI agent installs in a captured pod.
    Rules(cmd::rules::Args),
    /// Write a mesh CA and workload certificates (PEM) for tools outside the project.
    Certs(cmd::certs::Args),
    /// Run one node's proxy on the real kernel (pods' netns by path) until Ctrl-C, then drain.
    Proxy(cmd::proxy::Args),
    /// Run packets through the kernel model of one network namespace (netfilter, conntrack,
    /// routing) and print one JSON line per packet.
    Trace(cmd::trace::Args),
    /// Generate random worlds, run them in the simulator, check the oracle and invariants;
    /// shrink a failure to a scenario file.
    Fuzz(cmd::fuzz::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Conform(args) => cmd::conform::run(args),
        Command::Rules(args) => cmd::rules::run(args),
        Command::Certs(args) => cmd::certs::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Trace(args) => cmd::trace::run(args),
        Command::Fuzz(args) => cmd::fuzz::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("testbed: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
