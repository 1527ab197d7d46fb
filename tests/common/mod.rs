//! What the CLI tests share: the `testbed` binary run from the repository root, its output as
//! text, and a fresh output folder per test. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `testbed` binary, to run from the repository root, without the ztunnel variables of the
/// caller's environment (a test that wants ztunnel passes `--ztunnel-bin`).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testbed"));
    cmd.current_dir(repo()).env_remove("TESTBED_ZTUNNEL").env_remove("TESTBED_ZTUNNEL_CA");
    cmd
}

/// `testbed ARGS`, run to its end.
pub fn testbed(args: &[&str]) -> Output {
    command().args(args).output().expect("run testbed")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// The number of scenario files in the catalog (it grows; the tests must not pin it).
pub fn catalog_files() -> usize {
    std::fs::read_dir(repo().join("scenarios/catalog"))
        .expect("scenarios/catalog")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml")))
        .count()
}

/// A fresh output folder path (not created), `<test binary>-<name>` under cargo's tmp folder.
pub fn out_dir(binary: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{binary}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
