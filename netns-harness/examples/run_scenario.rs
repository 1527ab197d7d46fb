//! Runs scenario files on the kernel and prints each Outcome and its failures (a development aid;
//! `testbed run --backend netns` is the real command). `cargo run -p ambient-netns --example run_scenario -- FILE…`
use std::process::ExitCode;

use ambient_netns::NetnsBackend;
use ambient_netns::sandbox::Sandbox;
use ambient_scenarios::{Backend, RunOptions, check_outcome, load_file};

fn main() -> ExitCode {
    let sandbox = match Sandbox::enter() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let backend = NetnsBackend::new(&sandbox);
    let mut failed = false;
    let trace = std::env::var_os("TRACE").is_some();
    for path in std::env::args().skip(1) {
        let world = match load_file(std::path::Path::new(&path)).into_result() {
            Ok(w) => w,
            Err(d) => {
                for d in d {
                    eprintln!("{d}");
                }
                failed = true;
                continue;
            }
        };
        let started = std::time::Instant::now();
        match backend.run(&world, &RunOptions { trace, ..RunOptions::default() }) {
            Ok(run) => {
                if std::env::var_os("QUIET").is_none() {
                    print!("{}", run.outcome.to_json());
                }
                for a in &run.artifacts {
                    println!("--- {}\n{}", a.name, String::from_utf8_lossy(&a.bytes));
                }
                let failures = check_outcome(&world, &run.outcome);
                for f in &failures {
                    println!("FAIL {f}");
                }
                failed |= !failures.is_empty() || !run.outcome.skipped.is_empty();
                println!(
                    "{path}: {} failures, {} skipped, {:.2?}",
                    failures.len(),
                    run.outcome.skipped.len(),
                    started.elapsed()
                );
            }
            Err(e) => {
                println!("{path}: error: {e}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
