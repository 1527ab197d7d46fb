//! `ambient-netns` — the kernel backend: real network namespaces, real `iptables-restore`, the
//! kernel's conntrack, real sockets and the real proxy.
