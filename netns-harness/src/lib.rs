//! `ambient-netns` — the kernel backend: real network namespaces, real `iptables-restore`, the
//! kernel's conntrack, real sockets and the real proxy.
#![cfg(target_os = "linux")]

pub mod conntrack;
pub mod diff;
pub mod iptables;
pub mod link;
pub mod netns;
pub mod sandbox;
pub mod socket;
pub mod testkit;
pub mod tools;
