#!/usr/bin/env python3
"""TCP conntrack state machine against the kernel, segment by segment (run as root).

A forwarding pod namespace sits between a peer (route 10.0.9.0/24 via the pod) and a second
peer (route 10.0.8.0/24 via the pod). Raw TCP segments between 10.0.8.1 and 10.0.9.1 - addresses
no namespace owns, so no TCP stack ever answers - are injected from the peers and forwarded by
the pod. After every segment the pod's ctstate (which FORWARD rule counted it) and its conntrack
entry are recorded. Each sequence starts from an empty table and uses its own ports. Sequence
numbers are kept consistent per side (a SYN carries the ISN - a new one after the side has closed -, SYN and FIN count one, payload 10
bytes with PSH; acknowledgements acknowledge everything the other side sent), so the kernel's
window checks pass as the model assumes; nf_conntrack_tcp_be_liberal stays 0.

Output: tcp-states.out, one line per segment:
`SEQ: DIR FLAGS -> CTSTATE | REMAINING-TIMEOUT | ENTRY` (the entry without timeout and use=).
"""
import os, struct, subprocess, sys, time

SEQUENCES = [
    ("handshake and close", "o:S r:SA o:A o:PA r:A o:FA r:A r:FA o:A"),
    ("syn retransmit", "o:S o:S r:SA o:A"),
    ("refused with rst", "o:S r:R"),
    ("refused with rst-ack", "o:S r:RA"),
    ("client abort", "o:S r:SA o:A o:R"),
    ("pick up mid-stream", "o:A r:A o:PA r:PA"),
    ("pick up from a reply-side segment", "r:PA o:A r:A"),
    ("simultaneous open", "o:S r:S o:SA r:SA o:A"),
    ("fin without ack first", "o:F"),
    ("fin-ack first", "o:FA"),
    ("rst first", "o:R"),
    ("syn-ack first", "o:SA"),
    ("syn plus fin", "o:SF"),
    ("reopen from time-wait", "o:S r:SA o:A o:FA r:FA o:A o:S r:SA o:A"),
    ("syn on an established connection", "o:S r:SA o:A o:S r:A"),
    ("retransmitted syn-ack", "o:S r:SA r:SA o:A"),
    ("ack before syn-ack", "o:S o:A r:SA o:A"),
    ("server closes first", "o:S r:SA o:A r:FA o:A o:FA r:A"),
    ("reset during close", "o:S r:SA o:A o:FA r:R"),
    ("half close with data", "o:S r:SA o:A o:FA r:A r:PA o:A r:FA o:A"),
    ("rst after data", "o:S r:SA o:A r:PA o:R"),
    ("reply syn on syn-sent", "o:S r:S"),
    ("data before handshake ends", "o:S r:SA o:PA r:A"),
]

FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10}
CLIENT, SERVER = "10.0.8.1", "10.0.9.1"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


INJECTOR = r'''
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
for line in sys.stdin:
    src, dst, sport, dport, seq, ack, flags, plen = line.split()
    sport, dport, seq, ack, flags, plen = map(int, (sport, dport, seq, ack, flags, plen))
    payload = b"x" * plen
    sa, da = socket.inet_aton(src), socket.inet_aton(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + payload
    c = csum(sa + da + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, sa, da)
    s.sendto(ip + tcp, (dst, 0))
    print("ok", flush=True)
'''

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate INVALID -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT
-A FORWARD -m conntrack --ctstate RELATED -j ACCEPT
-A FORWARD -m conntrack --ctstate UNTRACKED -j ACCEPT
COMMIT
"""
STATES = ["INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED"]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    pid = os.getpid()
    pod, p1, p2 = f"tspod{pid}", f"tsp1{pid}", f"tsp2{pid}"
    for n in (pod, p1, p2):
        sh("ip", "netns", "add", n)
    try:
        for n in (pod, p1, p2):
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", p1)
        sh("ip", "link", "add", "eth1", "netns", pod, "type", "veth", "peer", "name", "eth0", "netns", p2)
        for n, dev, addr in [(pod, "eth0", "10.0.1.5/24"), (pod, "eth1", "10.0.2.5/24"),
                             (p1, "eth0", "10.0.1.9/24"), (p2, "eth0", "10.0.2.9/24")]:
            sh("ip", "-n", n, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", pod, "route", "add", "10.0.8.0/24", "via", "10.0.1.9")
        sh("ip", "-n", pod, "route", "add", "10.0.9.0/24", "via", "10.0.2.9")
        sh("ip", "-n", p1, "route", "add", "10.0.9.0/24", "via", "10.0.1.5")
        sh("ip", "-n", p2, "route", "add", "10.0.8.0/24", "via", "10.0.2.5")
        sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", pod, "iptables-restore", input=RULES)
        inj = {d: subprocess.Popen(["ip", "netns", "exec", n, "python3", "-c", INJECTOR],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for d, n in (("o", p1), ("r", p2))}
        out = []
        prev = [0] * len(STATES)
        for i, (name, seq) in enumerate(SEQUENCES):
            sh("ip", "netns", "exec", pod, "conntrack", "-F")
            cport, sport = 30000 + i, 80
            isn = {"o": 1000, "r": 5000}
            nxt = dict(isn)
            closed = {"o": False, "r": False}
            out.append(f"# {i}: {name}")
            for step in seq.split():
                d, fl = step.split(":")
                bits = sum(FLAGS[c] for c in fl)
                plen = 10 if "P" in fl else 0
                other = "r" if d == "o" else "o"
                ack = nxt[other] if bits & 0x10 else 0
                src, dst, sp, dp = (CLIENT, SERVER, cport, sport) if d == "o" else (SERVER, CLIENT, sport, cport)
                # A SYN (or SYN/ACK) always carries the side's ISN: sending it again is a
                # retransmission, not new sequence space.
                if bits & 0x02 and closed[d]:
                    # A SYN after this side closed opens a new connection: a new, higher ISN.
                    isn[d] = nxt[d] + 100000
                    closed[d] = False
                seq = isn[d] if bits & 0x02 else nxt[d]
                closed[d] |= bool(bits & 0x01)
                inj[d].stdin.write(f"{src} {dst} {sp} {dp} {seq} {ack} {bits} {plen}\n")
                inj[d].stdin.flush()
                inj[d].stdout.readline()
                nxt[d] = max(nxt[d], seq + plen + (1 if bits & 0x03 else 0))
                time.sleep(0.05)
                counters = sh("ip", "netns", "exec", pod, "iptables-save", "-c", "-t", "filter")
                now = [int(l.split(":")[0][1:]) for l in counters.splitlines() if "--ctstate" in l]
                hit = [STATES[k] for k in range(len(STATES)) if now[k] != prev[k]]
                prev = now
                ct = sh("ip", "netns", "exec", pod, "conntrack", "-L").strip() or "-"
                entry = " ".join(w for w in ct.split() if not w.startswith("use="))
                words = entry.split()
                timeout = "-"
                if len(words) > 3:
                    timeout = words[2]
                    entry = " ".join(words[:2] + words[3:])
                out.append(f"{i}: {d} {fl} -> {','.join(hit) or 'DROPPED'} | {timeout} | {entry}")
        for p in inj.values():
            p.stdin.close()
            p.wait()
        with open(os.path.join(here, "tcp-states.out"), "w") as f:
            f.write("\n".join(out) + "\n")
    finally:
        for n in (pod, p1, p2):
            subprocess.run(["ip", "netns", "del", n])


if __name__ == "__main__":
    main()
