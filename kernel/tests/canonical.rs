//! The canonical printer against the real kernel: every `tests/data/canonical/NAME.in` was loaded
//! with `iptables-restore -c` into a fresh network namespace and read back with `iptables-save -c`
//! (iptables 1.8.9 nf_tables, kernel 6.18) into `NAME.out` by `capture.sh`. The model must print
//! exactly that, and printing its own output must be a fixed point. Every file in
//! `tests/data/invalid/` was refused by that iptables-restore; the model must refuse it too.

use std::fs;
use std::path::Path;

use ambient_kernel::rules::{RestoreOptions, Ruleset};

fn data(dir: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(dir)
}

fn cases(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(data(dir))
        .expect("corpus directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} files in {dir}");
    v
}

#[test]
fn model_prints_what_the_kernel_prints() {
    let mut failures = Vec::new();
    for input in cases("canonical", "in") {
        let text = fs::read_to_string(&input).unwrap();
        let expected = fs::read_to_string(input.with_extension("out")).unwrap();
        let mut rs = Ruleset::default();
        match rs.restore(&text, RestoreOptions { noflush: false, counters: true }) {
            Err(e) => failures.push(format!("{}: model refused: {e}", input.display())),
            Ok(()) => {
                let got = rs.save(true);
                if got != expected {
                    failures.push(format!(
                        "{}:\n--- kernel\n{expected}--- model\n{got}",
                        input.display()
                    ));
                }
                // Canonical text is a fixed point: parse ∘ print = identity.
                let again = Ruleset::from_restore_with_counters(&got);
                assert_eq!(again.save(true), got, "{} is not a fixed point", input.display());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn model_refuses_what_the_kernel_refuses() {
    let mut accepted = Vec::new();
    for input in cases("invalid", "rules") {
        let text = fs::read_to_string(&input).unwrap();
        let mut rs = Ruleset::default();
        match rs.restore(&text, RestoreOptions::default()) {
            Ok(()) => accepted.push(input.display().to_string()),
            Err(e) => {
                // The error names a line of the input.
                assert!(e.line >= 1, "{}: {e}", input.display());
            }
        }
    }
    assert!(accepted.is_empty(), "the model accepted input the kernel refused: {accepted:?}");
}

trait WithCounters {
    fn from_restore_with_counters(text: &str) -> Ruleset;
}

impl WithCounters for Ruleset {
    fn from_restore_with_counters(text: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        rs.restore(text, RestoreOptions { noflush: false, counters: true }).expect("reparse");
        rs
    }
}
