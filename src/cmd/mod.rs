//! One module per subcommand; see `main.rs` for the conventions.

pub mod rules;
pub mod trace;
