//! One module per subcommand; see `main.rs` for the conventions.

pub mod check;
pub mod rules;
