//! The backend seam: a backend turns a [`World`] into an [`Outcome`]. The simulator and the netns
//! harness both implement [`Backend`]; `testbed run` and `testbed conform` drive them through it
//! and never look inside.

use std::fmt;

use crate::outcome::Outcome;
use crate::world::World;

/// What a run may produce besides the Outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Run with this seed instead of the scenario's own.
    pub seed: Option<u64>,
    /// Write the packets each network namespace saw as pcap files (where the backend can).
    pub pcap: bool,
    /// Record a readable trace of the run (where the backend can).
    pub trace: bool,
}

/// One finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub outcome: Outcome,
    /// Files the backend produced for this scenario (traces, pcaps), written by the caller into
    /// the scenario's output folder under these names.
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// A plain file name (no directories), e.g. `trace.txt` or `client.default.pcap`.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A run that could not produce an Outcome at all (as opposed to one whose expectations failed,
/// which is an Outcome plus failures): the backend says why, in a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    pub message: String,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        BackendError { message: message.into() }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

/// A way to run scenarios.
pub trait Backend {
    /// `sim` or `netns`, as `--backend` and the reports name it.
    fn name(&self) -> &'static str;

    /// Runs one scenario to the end. Never panics on a scenario's account: a step it cannot
    /// perform faithfully goes into `Outcome::skipped`, a failure to run at all is an error.
    fn run(&self, world: &World, opts: &RunOptions) -> Result<Run, BackendError>;
}
