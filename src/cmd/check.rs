//! `testbed check PATH…` — validate scenario files without running them.
//!
//! Prints every error and warning as `file:line:col: path: message`, then a summary line.
//! Exit status: 0 if every file is valid, 1 if any is invalid, 2 on usage errors (a path that
//! does not exist, no scenario files found, a malformed `--shard`).

use std::path::PathBuf;
use std::process::ExitCode;

use ambient_scenarios::{Catalog, Selection, Shard};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files, or folders searched recursively for `*.yaml`.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// With --list: keep scenarios having any of these tags.
    #[arg(long, value_name = "TAG")]
    include: Vec<String>,
    /// With --list: drop scenarios having any of these tags.
    #[arg(long, value_name = "TAG")]
    exclude: Vec<String>,
    /// With --list: keep shard K of N (1-based), split by scenario id.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
    /// Also print the id and file of every valid scenario the filters select.
    #[arg(long)]
    list: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let catalog = match Catalog::load(&args.paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testbed check: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if catalog.files.is_empty() {
        eprintln!("testbed check: no scenario files (*.yaml) under the given paths");
        return Ok(ExitCode::from(2));
    }
    let mut warnings = 0;
    for file in &catalog.files {
        for d in &file.diagnostics {
            println!("{d}");
            warnings += usize::from(!d.is_error());
        }
    }
    if args.list {
        let selection = Selection {
            include: args.include,
            exclude: args.exclude,
            shard: args.shard,
            ..Selection::default()
        };
        for w in selection.select(catalog.worlds()) {
            println!("{}\t{}", w.id, w.file);
        }
    }
    let total = catalog.files.len();
    let invalid = catalog.invalid().count();
    println!(
        "checked {total} file{}: {} valid, {invalid} invalid, {warnings} warning{}",
        if total == 1 { "" } else { "s" },
        total - invalid,
        if warnings == 1 { "" } else { "s" },
    );
    Ok(if invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
