//! `ambient-sim` — the deterministic backend: a model of a Linux network namespace's packet path
//! (netfilter, conntrack, routing) and a packet loop that runs the real proxy on simulated sockets.

pub mod kernel;
