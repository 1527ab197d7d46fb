//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ambient_scenarios::{World, load_file, load_str};

/// The catalog's files, sorted.
pub fn catalog() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/catalog");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    files
}

pub fn world(path: &Path) -> World {
    match load_file(path).into_result() {
        Ok(w) => w,
        Err(d) => panic!("{}: {d:?}", path.display()),
    }
}

/// A scenario written inline.
pub fn scenario(name: &str, text: &str) -> World {
    match load_str(name, text).into_result() {
        Ok(w) => w,
        Err(d) => panic!("{name}: {d:?}"),
    }
}
