//! The malformed-file corpus: every `tests/malformed/*.yaml` must fail to load with exactly the
//! diagnostics (position, key path, message — warnings included) written in the `.err` file
//! beside it. Regenerate the `.err` files after an intended message change with
//! `BLESS=1 cargo test -p ambient-scenarios --test malformed`, then review the diff.

use std::path::Path;

use ambient_scenarios::load_str;

#[test]
fn every_malformed_file_reports_exactly_its_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let bless = std::env::var_os("BLESS").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut mismatches = Vec::new();
    for path in &files {
        let name = format!("tests/malformed/{}", path.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(path).unwrap();
        let loaded = load_str(&name, &text);
        assert!(!loaded.is_valid(), "{name} loaded without errors");
        let got: String = loaded.diagnostics.iter().map(|d| format!("{d}\n")).collect();
        let expected_path = path.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!("{} is missing (run with BLESS=1)", expected_path.display())
        });
        if got != expected {
            mismatches.push(format!("--- {name}\nexpected:\n{expected}got:\n{got}"));
        }
    }
    assert!(files.len() >= 25, "the corpus has only {} files", files.len());
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
