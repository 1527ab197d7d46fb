//! Placeholder; the simulator benchmark lands with the bench commit.
fn main() {}
