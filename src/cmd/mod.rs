//! One module per subcommand; see `main.rs` for the conventions.

pub mod certs;
pub mod check;
pub mod conform;
pub mod fuzz;
pub mod proxy;
pub mod rules;
pub mod run;
pub mod trace;

use ambient_scenarios::{Selection, Shard};

/// The selection `testbed run` and `testbed conform` share (flattened into their arguments).
#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// Keep scenarios having any of these tags (files that do not load are always kept).
    #[arg(long, value_name = "TAG")]
    include: Vec<String>,
    /// Drop scenarios having any of these tags.
    #[arg(long, value_name = "TAG")]
    exclude: Vec<String>,
    /// Run shard K of N (1-based), split by scenario id: for spreading the suite over CI machines.
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,
}

impl SelectArgs {
    pub fn selection(self) -> Selection {
        Selection { include: self.include, exclude: self.exclude, shard: self.shard }
    }
}
