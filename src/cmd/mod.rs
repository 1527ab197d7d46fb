//! One module per subcommand; see `main.rs` for the conventions.

pub mod certs;
pub mod check;
pub mod conform;
pub mod fuzz;
pub mod proxy;
pub mod rules;
pub mod run;
pub mod trace;
