#!/bin/sh
# Runs one real-kernel scenario and records what the kernel counted: NAME.py runs inside a pod
# network namespace (lo, eth0 10.0.1.5/24 as one end of a veth whose other end, 10.0.1.9/24, is
# in a peer namespace; default route via 10.0.1.1; the in-pod fwmark rule and table 100; the
# reference rules applied with `iptables-restore --noflush`). Afterwards the pod's
# `iptables-save -c` goes to NAME.counters and `conntrack -L` (sorted) to NAME.conntrack.
# NAME.wire is what crossed the interfaces (sniff.py). NAME.packets (written by hand from it) lists the same packets in `testbed trace` form; the test
# `kernel_runs` replays them through the model and expects the same counters and entries.
# Needs root. Captured on kernel 6.18, iptables 1.8.9 (nf_tables), conntrack-tools 1.4.7.
set -eu
cd "$(dirname "$0")"
name=$1
pod=ktpod$$
peer=ktpeer$$
ip netns add $pod
ip netns add $peer
trap 'ip netns del $pod; ip netns del $peer' EXIT
ip -n $pod link set lo up
ip -n $peer link set lo up
ip link add eth0 netns $pod type veth peer name eth0 netns $peer
ip -n $pod addr add 10.0.1.5/24 dev eth0
ip -n $pod link set eth0 up
ip -n $peer addr add 10.0.1.9/24 dev eth0
ip -n $peer link set eth0 up
ip -n $pod route add default via 10.0.1.1 dev eth0
ip -n $pod rule add fwmark 0x111/0xfff pref 32764 lookup 100
ip -n $pod route add local 0.0.0.0/0 dev lo table 100
ip netns exec $pod iptables-restore --noflush < ../../../../scenarios/testdata/istio-inpod.rules
ip netns exec $pod python3 sniff.py 5 > "$name.wire" &
sleep 0.3
ip netns exec $pod python3 "$name.py" "$peer"
wait
ip netns exec $pod iptables-save -c | grep -v '^#' > "$name.counters"
ip netns exec $pod conntrack -L 2>/dev/null | sort > "$name.conntrack"
