//! `testbed` — the ambient-testbed command line. Thin: it parses arguments and calls the crates.

use clap::Parser;

/// A deterministic simulator and a Linux network-namespace harness for the Istio Ambient data plane.
#[derive(Debug, Parser)]
#[command(name = "testbed", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
