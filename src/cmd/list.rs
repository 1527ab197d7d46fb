//! `testbed list [PATH…]` — the scenarios a selection keeps, without running them: what `testbed
//! run` and `testbed conform` with the same paths and selection options would run.
//!
//! One line per selected scenario, sorted by id, tab-separated: id, tags (comma-separated, `-`
//! for none), file. A file that does not load is listed under its file stem (as the runs report
//! it) with `-` for tags and a fourth column: `does not load: <first error>`.
//!
//! Exit status: 0 every listed file loads; 1 a listed file does not load; 2 bad usage (a path
//! that does not exist, no scenario files, nothing selected, a `--scenario` glob that matches no
//! scenario id).

use std::path::PathBuf;
use std::process::ExitCode;

use ambient_scenarios::catalog::file_stem;
use ambient_scenarios::{Catalog, Loaded, World};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario files, or folders searched recursively for `*.yaml`.
    #[arg(default_value = "scenarios/catalog")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    select: super::SelectArgs,
}

/// A listed line: a valid scenario, or a file that does not load.
enum Line<'a> {
    Valid(&'a World),
    Broken(&'a Loaded),
}

impl Line<'_> {
    fn id(&self) -> String {
        match self {
            Line::Valid(w) => w.id.clone(),
            Line::Broken(l) => file_stem(&l.file),
        }
    }

    fn render(&self) -> String {
        match self {
            Line::Valid(w) => {
                let tags: Vec<&str> = w.tags.iter().map(String::as_str).collect();
                let tags = if tags.is_empty() { "-".to_string() } else { tags.join(",") };
                format!("{}\t{tags}\t{}", w.id, w.file)
            }
            Line::Broken(l) => {
                let mut errors = l.errors();
                let first =
                    errors.next().map_or_else(|| "no error given".into(), |d| d.to_string());
                let more = errors.count();
                let more = if more == 0 { String::new() } else { format!(" (and {more} more)") };
                format!("{}\t-\t{}\tdoes not load: {first}{more}", self.id(), l.file)
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let catalog = match Catalog::load(&args.paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testbed list: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if catalog.files.is_empty() {
        eprintln!("testbed list: no scenario files (*.yaml) under the given paths");
        return Ok(ExitCode::from(2));
    }
    let selection = args.select.selection();
    let missed = selection.unmatched_globs(&catalog);
    if !missed.is_empty() {
        eprintln!(
            "testbed list: {} ({} scenario files found)",
            ambient_scenarios::catalog::unmatched_words(&missed),
            catalog.files.len()
        );
        return Ok(ExitCode::from(2));
    }
    let mut lines: Vec<Line> =
        selection.select(catalog.worlds()).into_iter().map(Line::Valid).collect();
    lines.extend(selection.select_broken(&catalog).into_iter().map(Line::Broken));
    lines.sort_by_key(Line::id);
    if lines.is_empty() {
        eprintln!(
            "testbed list: nothing selected: {} scenario files found, none kept by the selection",
            catalog.files.len()
        );
        return Ok(ExitCode::from(2));
    }
    let mut out = String::new();
    for line in &lines {
        out.push_str(&line.render());
        out.push('\n');
    }
    print!("{out}");
    let broken = lines.iter().filter(|l| matches!(l, Line::Broken(_))).count();
    Ok(if broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
