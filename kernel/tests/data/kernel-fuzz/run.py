#!/usr/bin/env python3
"""Semantic fuzzing of the model against the kernel (run as root): `run.py [--local] FIRST LAST`.

For each seed: a random ruleset (all four tables, the matches and targets the model
implements, built-in and user chains) is loaded into a forwarding namespace ("router": eth0
10.0.1.5/24 to peer A, eth1 10.0.2.5/24 to peer B, routes 10.0.8.0/24 via A and 10.0.9.0/24
via B), and random TCP/UDP/ICMP packets between 10.0.8.0/24 and 10.0.9.0/24 — addresses no
namespace owns, so no stack ever answers — are injected from both peers with raw sockets. NAT
targets only point at such addresses or unroutable ones (REDIRECT and addresses of the router
are left out: the router's own stack would answer). The router's `iptables-save -c` and
`conntrack -L` afterwards go to seed-N.counters / seed-N.conntrack, with seed-N.rules and
seed-N.packets (the traffic in `testbed trace` form) beside them. The test `kernel_fuzz`
replays every case through the model and expects the same counters and connections.

With --local (files local-N.*) the router also sends packets itself (a raw socket with a random
SO_MARK: OUTPUT, loopback, INPUT) and receives packets for its own addresses, and REDIRECT and
DNAT to its own addresses are allowed. Its TCP/UDP/ICMP stack then answers — a reset for any
TCP segment but a reset, port unreachable for UDP, an echo reply for an echo request — and the
test plays that stack for the model.
The router runs with nf_conntrack_tcp_be_liberal=1 (see below).

Kept in the repository: seeds 1-120 (`run.py 1 120`) and 380, 498, 783 (regressions); seeds up
to 1000 were run, all matching but the ones below. Seeds where a source NAT had to move a port
to avoid a clash are not kept (40, 81, 163, 235, 427, 645, 713, 884, 909): the kernel starts
that search at a random offset, the model at the bottom of the range — a documented difference.
Local cases kept: `run.py --local 1 80` and 127, 155, 258, 476, 537 (regressions); 1000 were
run, all matching.
"""
import os, random, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernel-runs"))

HOSTS_A = ["10.0.8.1", "10.0.8.2"]
HOSTS_B = ["10.0.9.1", "10.0.9.2"]
PORTS = [53, 80, 443, 8080, 15001, 15006, 15008, 30000, 40000]
TABLES = {"raw": ["PREROUTING", "OUTPUT"], "mangle": ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
          "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], "filter": ["INPUT", "FORWARD", "OUTPUT"]}


def gen_rules(R, local=False):
    def neg():
        return "! " if R.random() < 0.25 else ""

    def addr():
        return R.choice(HOSTS_A + HOSTS_B + ["10.0.8.0/24", "10.0.9.0/24", "10.0.8.0/23", "10.0.1.0/24"])

    def mark():
        return R.choice(["0x1", "0x2/0x3", "0x10/0xf0", "0x539/0xfff", "0x111/0xfff", "0x0/0xff"])

    def rule(table, chain, proto_hint):
        parts = []
        proto = None
        if R.random() < 0.3:
            parts.append(f"{neg()}-s {addr()}")
        if R.random() < 0.3:
            parts.append(f"{neg()}-d {addr()}")
        if chain not in ("OUTPUT", "POSTROUTING") and R.random() < 0.2:
            parts.append(f"{neg()}-i {R.choice(['eth0', 'eth1', 'eth+', 'lo'])}")
        if chain not in ("PREROUTING", "INPUT") and R.random() < 0.2:
            parts.append(f"{neg()}-o {R.choice(['eth0', 'eth1', 'eth+'])}")
        if R.random() < 0.6:
            proto = R.choice(["tcp", "udp", "icmp"])
            parts.append(f"-p {proto}")
        ms = []
        if proto in ("tcp", "udp") and R.random() < 0.6:
            opts = []
            if R.random() < 0.7:
                opts.append(f"{neg()}--dport {R.choice([str(R.choice(PORTS)), '1:1024', '15000:15010', '30000:'])}")
            if R.random() < 0.3:
                opts.append(f"{neg()}--sport {R.choice(PORTS)}")
            if proto == "tcp" and R.random() < 0.3:
                opts.append(R.choice(["--syn", "! --syn", "--tcp-flags SYN,ACK ACK", "--tcp-flags RST RST", "--tcp-flags FIN,SYN,RST,ACK ACK"]))
            ms.append(" ".join(opts))
        if proto in ("tcp", "udp") and R.random() < 0.2:
            ms.append(f"-m multiport {neg()}{R.choice(['--dports', '--sports', '--ports'])} {','.join(str(p) for p in R.sample(PORTS, 3))}")
        if proto == "icmp" and R.random() < 0.4:
            ms.append(f"-m icmp {neg()}--icmp-type {R.choice(['8', '0', '3', '3/1', 'any'])}")
        if R.random() < 0.25:
            ms.append(f"-m mark {neg()}--mark {mark()}")
        if R.random() < 0.2:
            ms.append(f"-m connmark {neg()}--mark {mark()}")
        if R.random() < 0.35:
            sts = R.sample(["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"], R.randrange(1, 3))
            ms.append(f"-m conntrack {neg()}--ctstate {','.join(sts)}")
        if R.random() < 0.1:
            ms.append(f"-m addrtype {neg()}--{R.choice(['src', 'dst'])}-type {R.choice(['LOCAL', 'UNICAST', 'BROADCAST'])}")
        if chain in ("PREROUTING", "INPUT") and R.random() < 0.05:
            ms.append("-m socket")
        if chain in ("OUTPUT", "POSTROUTING") and R.random() < 0.1:
            ms.append(f"-m owner {neg()}--socket-exists")
        if R.random() < 0.05:
            ms.append('-m comment --comment "fuzz"')
        parts += ms
        targets = ["-j ACCEPT", "-j RETURN", "-j USER1", "-g USER1", "", "-j LOG",
                   f"-j MARK --set-xmark {mark()}", f"-j MARK --or-mark 0x{R.choice([1, 2, 0x10, 0x111]):x}",
                   f"-j CONNMARK --set-xmark {mark()}", "-j CONNMARK --save-mark", "-j CONNMARK --restore-mark",
                   "-j CONNMARK --save-mark --nfmask 0xff --ctmask 0xf"]
        if table != "nat":
            targets.append("-j DROP")
        if table == "filter" and chain in ("INPUT", "FORWARD", "OUTPUT"):
            targets += ["-j REJECT", "-j REJECT --reject-with icmp-host-prohibited"] + (["-j REJECT --reject-with tcp-reset"] if proto == "tcp" else [])
        if table == "nat" and chain in ("PREROUTING", "OUTPUT"):
            dst = R.choice(HOSTS_B + HOSTS_A + ["10.0.5.1"] + (["10.0.1.5", "127.0.0.1"] if local else []))
            if local:
                targets.append("-j REDIRECT" + (f" --to-ports {R.choice(PORTS)}" if proto in ("tcp", "udp") else ""))
            targets.append(f"-j DNAT --to-destination {dst}" + (f":{R.choice(PORTS)}" if proto in ("tcp", "udp") and R.random() < 0.5 else ""))
        if table == "nat" and chain in ("POSTROUTING", "INPUT"):
            src = R.choice(HOSTS_A + HOSTS_B)
            targets.append(f"-j SNAT --to-source {src}" + (f":{R.randrange(1000, 2000)}" if proto in ("tcp", "udp") and R.random() < 0.5 else ""))
            if chain == "POSTROUTING":
                targets.append("-j MASQUERADE")
        if table == "raw":
            targets += [f"-j CT --zone {R.choice([1, 2])}", "-j CT --notrack"]
        if table == "mangle" and chain == "PREROUTING" and proto in ("tcp", "udp"):
            targets.append("-j TPROXY --on-port 15001 --tproxy-mark 0x1/0x1")
        t = R.choice(targets)
        if chain == "USER1" and t in ("-j USER1", "-g USER1"):
            t = "-j RETURN"
        return " ".join(p for p in parts + [t] if p)

    out = []
    for table in TABLES:
        if R.random() < 0.2:
            continue
        out.append(f"*{table}")
        for c in TABLES[table]:
            if table != "nat" and R.random() < 0.15:
                out.append(f":{c} DROP [0:0]")
        out.append(":USER1 - [0:0]")
        for _ in range(R.randrange(2, 10)):
            c = R.choice(TABLES[table] + ["USER1"])
            out.append(f"-A {c} {rule(table, c, None)}")
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def gen_packets(R, n):
    lines = []
    flows = []
    for _ in range(n):
        if flows and R.random() < 0.6:
            proto, a, ap, b, bp = R.choice(flows)
            fwd = R.random() < 0.5
        else:
            proto = R.choice(["tcp", "tcp", "udp", "icmp"])
            a, b = R.choice(HOSTS_A), R.choice(HOSTS_B)
            ap, bp = R.choice([40001, 40002, 40003]), R.choice(PORTS)
            if R.random() < 0.3:
                a, b, ap, bp = b, a, bp, ap
            flows.append((proto, a, ap, b, bp))
            fwd = True
        src, sp, dst, dp = (a, ap, b, bp) if fwd else (b, bp, a, ap)
        side = "eth0" if src.startswith("10.0.8.") else "eth1"
        if proto == "icmp":
            kind = 8 if fwd else 0
            lines.append(f"in icmp {src} > {dst} type={kind} id={ap} len=28 iif={side}")
        elif proto == "udp":
            lines.append(f"in udp {src}:{sp} > {dst}:{dp} len=30 payload=2 iif={side}")
        else:
            fl = R.choice(["S", "S", "SA", "A", "A", "PA", "FA", "R", "RA"])
            plen = 10 if "P" in fl else 0
            lines.append(f"in tcp {src}:{sp} > {dst}:{dp} flags={fl} len={40 + plen} payload={plen} iif={side}")
    return lines


LOCAL_ADDRS = ["10.0.1.5", "10.0.2.5", "127.0.0.1"]
MARKS = [0, 0x1, 0x10, 0x111, 0x539]


def gen_packets_local(R, n):
    """Traffic that also starts or ends in the router itself: `out` lines are sent by a raw
    socket in the router (with a random SO_MARK), `in` lines may be addressed to the router.
    At most 4 UDP packets go to the router (its port-unreachable replies are rate-limited per
    destination after a burst of 6)."""
    lines = []
    udp_local = 0
    for _ in range(n):
        proto = R.choice(["tcp", "tcp", "udp", "icmp"])
        kind = R.random()
        if kind < 0.35:
            src = R.choice(LOCAL_ADDRS[:2] if R.random() < 0.8 else ["127.0.0.1"])
            dst = R.choice(HOSTS_A + HOSTS_B) if src != "127.0.0.1" else "127.0.0.1"
            if src != "127.0.0.1" and R.random() < 0.3:
                dst = R.choice(["10.0.1.5", "10.0.2.5"])
            head, tail = "out", f"mark=0x{R.choice(MARKS):x}"
        else:
            src = R.choice(HOSTS_A + HOSTS_B)
            dst = R.choice(["10.0.1.5", "10.0.2.5"] + HOSTS_A + HOSTS_B)
            head, tail = "in", "iif=" + ("eth0" if src.startswith("10.0.8.") else "eth1")
        local_dst = dst in LOCAL_ADDRS
        if proto == "udp" and local_dst:
            if udp_local >= 4:
                proto = "tcp"
            else:
                udp_local += 1
        sp, dp = R.choice([40001, 40002, 40003]), R.choice(PORTS)
        if proto == "icmp":
            lines.append(f"{head} icmp {src} > {dst} type={R.choice([8, 8, 0])} id={sp} len=28 {tail}")
        elif proto == "udp":
            lines.append(f"{head} udp {src}:{sp} > {dst}:{dp} len=30 payload=2 {tail}")
        else:
            fl = R.choice(["S", "S", "SA", "A", "PA", "FA", "R", "RA"])
            plen = 10 if "P" in fl else 0
            lines.append(f"{head} tcp {src}:{sp} > {dst}:{dp} flags={fl} len={40 + plen} payload={plen} {tail}")
    return lines


INJECTOR = r'''
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
F = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16}
seqs = {}
for line in sys.stdin:
    w = line.split()
    proto, src, dst = w[1], w[2], w[4]
    kv = dict(x.split("=", 1) for x in w[5:] if "=" in x)
    sa, da = socket.inet_aton(src.rsplit(":", 1)[0]), socket.inet_aton(dst.rsplit(":", 1)[0])
    if proto == "icmp":
        l4 = struct.pack("!BBHHH", int(kv["type"]), 0, 0, int(kv["id"]), 1)
        l4 = l4[:2] + struct.pack("!H", csum(l4)) + l4[4:]
        pn = 1
    else:
        sp, dp = int(src.rsplit(":", 1)[1]), int(dst.rsplit(":", 1)[1])
        payload = b"x" * int(kv.get("payload", 0))
        if proto == "udp":
            l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
            pn = 17
        else:
            bits = sum(F[c] for c in kv["flags"])
            # SYNs at 1000, everything else at 1001 acknowledging 1001: acknowledgements and
            # resets line up with what conntrack recorded, as the model assumes.
            seq = 1000 if bits & 2 else 1001
            l4 = struct.pack("!HHIIBBHHH", sp, dp, seq, 1001 if bits & 16 else 0, 5 << 4, bits, 64240, 0, 0) + payload
            pn = 6
        c = csum(sa + da + struct.pack("!BBH", 0, pn, len(l4)) + l4)
        off = 6 if pn == 17 else 16
        l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, pn, 0, sa, da)
    s.setsockopt(socket.SOL_SOCKET, 36, int(kv.get("mark", "0"), 16) if "mark" in kv else 0)
    try:
        s.sendto(ip + l4, (socket.inet_ntoa(da), 0))
    except OSError:
        pass  # dropped by the router's own OUTPUT rules (EPERM) or no route
    print("ok", flush=True)
'''


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def run_case(seed, here, local=False):
    R = random.Random(seed)
    rules = gen_rules(R, local)
    packets = gen_packets_local(R, R.randrange(6, 16)) if local else gen_packets(R, R.randrange(8, 24))
    pid = os.getpid()
    pod, pa, pb = f"kfr{pid}", f"kfa{pid}", f"kfb{pid}"
    for n in (pod, pa, pb):
        sh("ip", "netns", "add", n)
    try:
        for n in (pod, pa, pb):
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", pa)
        sh("ip", "link", "add", "eth1", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", pb)
        for n, dev, a in [(pod, "eth0", "10.0.1.5/24"), (pod, "eth1", "10.0.2.5/24"), (pa, "eth0", "10.0.1.9/24"), (pb, "eth0", "10.0.2.9/24")]:
            sh("ip", "-n", n, "addr", "add", a, "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", pod, "route", "add", "10.0.8.0/24", "via", "10.0.1.9")
        sh("ip", "-n", pod, "route", "add", "10.0.9.0/24", "via", "10.0.2.9")
        sh("ip", "-n", pa, "route", "add", "default", "via", "10.0.1.5")
        sh("ip", "-n", pb, "route", "add", "default", "via", "10.0.2.5")
        sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The injected segments do not carry a real TCP conversation's windows; liberal
        # tracking makes the kernel's window checks accept them, as the model (which has no
        # window tracking) does.
        sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
        r = subprocess.run(["ip", "netns", "exec", pod, "iptables-restore"], input=rules, capture_output=True, text=True)
        if r.returncode != 0:
            return f"seed {seed}: kernel refused the rules: {r.stderr.strip()}"
        inj = {side: subprocess.Popen(["ip", "netns", "exec", n, "python3", "-c", INJECTOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for side, n in (("eth0", pa), ("eth1", pb), ("out", pod))}
        for line in packets:
            side = line.split("iif=")[1] if "iif=" in line else "out"
            inj[side].stdin.write(line + "\n")
            inj[side].stdin.flush()
            inj[side].stdout.readline()
            time.sleep(0.02)
        for p in inj.values():
            p.stdin.close()
            p.wait()
        time.sleep(0.1)
        counters = sh("ip", "netns", "exec", pod, "iptables-save", "-c")
        conntrack = sh("ip", "netns", "exec", pod, "conntrack", "-L")
    finally:
        for n in (pod, pa, pb):
            subprocess.run(["ip", "netns", "del", n])
    base = os.path.join(here, f"{'local' if local else 'seed'}-{seed}")
    with open(base + ".rules", "w") as f:
        f.write(rules)
    with open(base + ".packets", "w") as f:
        f.write("".join(f"{l} t={i * 0.02:.2f}\n" for i, l in enumerate(packets)))
    with open(base + ".counters", "w") as f:
        f.write("".join(l + "\n" for l in counters.splitlines() if not l.startswith("#")))
    with open(base + ".conntrack", "w") as f:
        f.write("".join(sorted(l + "\n" for l in conntrack.splitlines() if l.strip())))
    return None


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    local = "--local" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--local"]
    first, last = int(args[0]), int(args[1])
    for seed in range(first, last + 1):
        err = run_case(seed, here, local)
        if err:
            print(err)


if __name__ == "__main__":
    main()
