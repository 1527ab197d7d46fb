//! `testbed` — the ambient-testbed command line.
//!
//! Thin by design: each subcommand lives in `src/cmd/<name>.rs` as an `Args` struct (clap) and a
//! `run(args) -> anyhow::Result<ExitCode>` that parses input, calls the crates and prints.
//!
//! Exit codes, the same for every subcommand:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | a check or expectation failed (a scenario that did not load, an unmet expectation, an unlisted conformance difference) |
//! | 2 | bad input: clap's usage errors, a path that does not exist, nothing selected, a bad `RUST_LOG` |
//! | 3 | infrastructure error: the environment could not run what was asked (the namespace sandbox cannot be entered, a backend cannot be opened, a backend failed to produce a scenario's Outcome) |
//!
//! 3 wins over 1: a run in which any scenario met an infrastructure error is incomplete, whatever
//! the others did. Every report and result is still written, so one failure hides nothing.
//!
//! Logging: one `tracing` subscriber for every subcommand, installed here before anything else
//! runs: filter from `RUST_LOG` (default `warn`; `info` for `testbed proxy`, which logs its
//! listeners), written to stderr, with ANSI colours only when stderr is a terminal. It starts no
//! thread, so `--backend netns` can still enter its namespace sandbox (one thread required).

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// A deterministic simulator and a Linux network-namespace harness for the Istio Ambient data plane.
#[derive(Debug, Parser)]
#[command(
    name = "testbed",
    version,
    about,
    after_help = "Exit status: 0 success; 1 a check or expectation failed; 2 bad input; \
                  3 infrastructure error (the environment could not run what was asked: \
                  namespace sandbox, backend), which wins over 1."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate scenario files without running them.
    Check(cmd::check::Args),
    /// List the scenarios a selection keeps (id, tags, file; sorted by id), without running them.
    List(cmd::list::Args),
    /// Run scenarios on a backend; write outcome.json per scenario, junit.xml and summary.md.
    #[command(after_help = "Exit status: 0 every selected scenario passed; 1 a scenario failed \
                            (did not load, unmet expectation, skipped step); 2 bad input; 3 \
                            infrastructure error (namespace sandbox not entered, backend not \
                            opened or failed to run a scenario), which wins over 1.")]
    Run(cmd::run::Args),
    /// Run scenarios on both backends, compare their Outcomes field by field, write the
    /// conformance matrix; differences must be listed in scenarios/expected-differences.yaml.
    #[command(after_help = "Exit status: 0 every selected scenario conforms; 1 one does not \
                            (fails on a side, or an unlisted difference); 2 bad input; 3 \
                            infrastructure error (a backend failed to run a scenario, e.g. the \
                            namespace sandbox cannot be entered), which wins over 1.")]
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

/// Installs the one subscriber (see the crate docs). A `RUST_LOG` that does not parse is bad
/// input: the error, not a silently different filter.
fn init_tracing(default: &str) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?} does not parse: {e}"))?
        }
        _ => EnvFilter::new(default),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = if matches!(cli.command, Command::Proxy(_)) { "info" } else { "warn" };
    if let Err(e) = init_tracing(default_filter) {
        eprintln!("testbed: error: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(args),
        Command::List(args) => cmd::list::run(args),
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
