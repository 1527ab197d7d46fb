//! The kernel model (in progress).
pub mod addr;
pub mod packet;
pub mod rules;
