#!/bin/sh
# Runs one real-kernel scenario and records what the kernel counted: NAME.py runs inside a pod
# network namespace (lo; eth0 10.0.1.5/24, a veth to a peer namespace at 10.0.1.9/24; eth1
# 10.0.2.5/24, a veth to a second peer at 10.0.2.9/24; default route via 10.0.1.1; the in-pod
# fwmark rule and table 100; the reference rules applied with `iptables-restore --noflush`, or
# NAME.rules with `iptables-restore` if it exists). NAME.setup, if present, holds extra commands
# run in the pod namespace (`ip …`, `sysctl -w net.ipv4.ip_forward=1`), applied to the model too. Afterwards the pod's
# `iptables-save -c` goes to NAME.counters and `conntrack -L` (sorted) to NAME.conntrack.
# NAME.wire is what crossed the interfaces (sniff.py, for SNIFF_SECS seconds, default 5). NAME.packets (written by hand from it) lists the same packets in `testbed trace` form; the test
# `kernel_runs` replays them through the model and expects the same counters and entries.
# Needs root. Captured on kernel 6.18, iptables 1.8.9 (nf_tables), conntrack-tools 1.4.7.
set -eu
cd "$(dirname "$0")"
name=$1
pod=ktpod$$
peer=ktpeer$$
peer2=ktpeer2$$
ip netns add $pod
ip netns add $peer
ip netns add $peer2
trap 'ip netns del $pod; ip netns del $peer; ip netns del $peer2' EXIT
ip -n $pod link set lo up
ip -n $peer link set lo up
ip -n $peer2 link set lo up
ip link add eth0 netns $pod type veth peer name eth0 netns $peer
ip link add eth1 netns $pod type veth peer name eth0 netns $peer2
ip -n $pod addr add 10.0.1.5/24 dev eth0
ip -n $pod addr add 10.0.2.5/24 dev eth1
ip -n $pod link set eth0 up
ip -n $pod link set eth1 up
ip -n $peer addr add 10.0.1.9/24 dev eth0
ip -n $peer link set eth0 up
ip -n $peer route add default via 10.0.1.5
ip -n $peer2 addr add 10.0.2.9/24 dev eth0
ip -n $peer2 link set eth0 up
ip -n $peer2 route add default via 10.0.2.5
ip -n $pod route add default via 10.0.1.1 dev eth0
ip -n $pod rule add fwmark 0x111/0xfff pref 32764 lookup 100
ip -n $pod route add local 0.0.0.0/0 dev lo table 100
if [ -f "$name.rules" ]; then
    ip netns exec $pod iptables-restore < "$name.rules"
else
    ip netns exec $pod iptables-restore --noflush < ../../../../scenarios/testdata/istio-inpod.rules
fi
if [ -f "$name.setup" ]; then
    grep -v '^#' "$name.setup" | while read -r cmd; do [ -n "$cmd" ] && ip netns exec $pod $cmd > /dev/null; done
fi
ip netns exec $pod python3 sniff.py "${SNIFF_SECS:-5}" > "$name.wire" &
sleep 0.3
ip netns exec $pod python3 "$name.py" "$peer" "$peer2"
wait
ip netns exec $pod iptables-save -c | grep -v '^#' > "$name.counters"
ip netns exec $pod conntrack -L 2>/dev/null | sort > "$name.conntrack"
