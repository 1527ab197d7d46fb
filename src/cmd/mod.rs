//! One module per subcommand; see `main.rs` for the conventions.

pub mod certs;
pub mod proxy;
pub mod rules;
