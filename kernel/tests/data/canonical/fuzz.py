"""Random iptables-restore input (seed = argv[1]), with non-canonical spellings, for fuzzing the
canonical printer against the real iptables: `python3 fuzz.py N > fuzz-N.in`, then `capture.sh`
(inputs iptables-restore refuses go to ../invalid/ instead). fuzz-*.in here came from seeds 1-80."""
import random, sys
R = random.Random(int(sys.argv[1]))
def ip(): return ".".join(str(R.randrange(256)) for _ in range(4))
def cidr():
    c = R.random()
    if c < 0.3: return ip()
    if c < 0.6: return f"{ip()}/{R.randrange(1,33)}"
    return f"{ip()}/{R.choice(['255.255.255.0','255.255.0.0','255.0.0.0','255.255.255.255','255.255.255.128'])}"
def neg(): return "! " if R.random() < 0.3 else ""
def port():
    a = R.randrange(65536)
    c = R.random()
    if c < 0.5: return str(a)
    if c < 0.7: return f"{a}:"
    if c < 0.8: return f":{a}"
    b = min(65535, a + R.randrange(1000)); return f"{a}:{b}"
def mark(): return R.choice(["0x539", "1337", "0x111/0xfff", "0/0xfff", "0x1", "010", "0xffffffff", f"0x{R.randrange(1<<32):x}/0x{R.randrange(1<<32):x}", str(R.randrange(1<<32))])
IFACES = ["eth0", "eth+", "lo", "veth12345678", "cali+", "a.b_c-d"]
def rule(table, chain):
    parts = []
    proto = None
    if R.random() < 0.3: parts.append(f"{neg()}-s {cidr()}")
    if R.random() < 0.3: parts.append(f"{neg()}--destination {cidr()}" if R.random()<0.2 else f"{neg()}-d {cidr()}")
    if chain not in ("OUTPUT", "POSTROUTING") and R.random() < 0.25: parts.append(f"{neg()}-i {R.choice(IFACES)}")
    if chain not in ("PREROUTING", "INPUT") and R.random() < 0.25: parts.append(f"{neg()}-o {R.choice(IFACES)}")
    if R.random() < 0.6:
        proto = R.choice(["tcp", "udp", "icmp", "TCP", "6", "17", "1"])
        pn = {"TCP":"tcp","6":"tcp","17":"udp","1":"icmp"}.get(proto, proto)
        pneg = R.random() < 0.1
        parts.append(f"{'! ' if pneg else ''}-p {proto}")
        proto = None if pneg else pn
    ms = []
    if proto in ("tcp", "udp"):
        if R.random() < 0.5:
            explicit = R.random() < 0.5
            opts = []
            if R.random() < 0.6: opts.append(f"{neg()}--dport {port()}")
            if R.random() < 0.4: opts.append(f"{neg()}--sport {port()}")
            if proto == "tcp" and R.random() < 0.2: opts.append(R.choice(["--syn", "! --syn", "--tcp-flags SYN,ACK SYN", "--tcp-flags ALL NONE", "--tcp-flags FIN,RST RST"]))
            R.shuffle(opts)
            ms.append((f"-m {proto} " if explicit else "") + " ".join(opts))
        if R.random() < 0.3:
            n = R.randrange(1, 5)
            ps = ",".join(R.choice([str(R.randrange(65536)), f"{R.randrange(30000)}:{R.randrange(30000,65536)}"]) for _ in range(n))
            ms.append(f"-m multiport {neg()}{R.choice(['--dports','--sports','--ports','--destination-ports'])} {ps}")
    if proto == "icmp" and R.random() < 0.5:
        ms.append(f"-m icmp {neg()}--icmp-type {R.choice(['echo-request','8','3/3','port-unreachable','0','any','11'])}")
    if R.random() < 0.3: ms.append(f"-m mark {neg()}--mark {mark()}")
    if R.random() < 0.2: ms.append(f"-m connmark {neg()}--mark {mark()}")
    if R.random() < 0.3:
        sts = R.sample(["NEW","ESTABLISHED","RELATED","INVALID","UNTRACKED","SNAT","DNAT","new","established"], R.randrange(1,4))
        if len(set(s.upper() for s in sts)) == len(sts):
            ms.append(f"-m conntrack {neg()}--ctstate {','.join(sts)}")
    if R.random() < 0.15:
        sts = R.sample(["NEW","ESTABLISHED","RELATED","INVALID"], R.randrange(1,3))
        ms.append(f"-m state {neg()}--state {','.join(sts)}")
    if R.random() < 0.15:
        t = R.choice(["LOCAL", "UNICAST", "BROADCAST", "MULTICAST", "LOCAL,BROADCAST", "BLACKHOLE"])
        ms.append(f"-m addrtype {neg()}--{R.choice(['src','dst'])}-type {t}")
    if R.random() < 0.15:
        c = R.choice(["hello", "hello world", "a \\\"q\\\" b", "x:y", "istio-cni", "", "it's", "back\\\\slash", "!"])
        ms.append(f'-m comment --comment "{c}"')
    if chain in ("PREROUTING", "INPUT") and R.random() < 0.1:
        ms.append("-m socket" + R.choice(["", " --transparent", " --nowildcard", " --transparent --restore-skmark"]))
    if chain in ("OUTPUT", "POSTROUTING") and R.random() < 0.1:
        ms.append(f"-m owner {neg()}--socket-exists")
    R.shuffle(ms)
    parts += [m for m in ms if m]
    # target
    t = R.random()
    targets = ["-j ACCEPT", "-j DROP", "-j RETURN", "-j LOG", f"-j LOG --log-prefix \"p{R.randrange(99)}: \" --log-level {R.randrange(8)}", "-j USER1", "-g USER1", ""]
    targets += [f"-j MARK --set-mark {mark()}", f"-j MARK --set-xmark {mark()}", f"-j MARK --{R.choice(['and','or','xor'])}-mark 0x{R.randrange(1<<32):x}"]
    targets += [f"-j CONNMARK --set-mark {mark()}", "-j CONNMARK --save-mark", "-j CONNMARK --restore-mark", f"-j CONNMARK --restore-mark --nfmask 0x{R.randrange(1<<32):x} --ctmask 0xfff", f"-j CONNMARK --save-mark --mask 0x{R.randrange(1<<32):x}"]
    if table == "filter" and chain in ("INPUT","FORWARD","OUTPUT"):
        targets += ["-j REJECT", "-j REJECT --reject-with icmp-host-prohibited"] + (["-j REJECT --reject-with tcp-reset"] if proto == "tcp" else [])
    if table == "nat":
        if chain in ("PREROUTING", "OUTPUT"):
            targets += [f"-j DNAT --to-destination {ip()}", "-j REDIRECT"] + ([f"-j REDIRECT --to-ports {R.randrange(1,65536)}", f"-j DNAT --to {ip()}:{R.randrange(1,60000)}"] if proto in ("tcp","udp") else [])
        if chain in ("POSTROUTING", "INPUT"):
            targets += [f"-j SNAT --to-source {ip()}"] + ([f"-j SNAT --to-source {ip()}:{R.randrange(1,1000)}-{R.randrange(1000,2000)}"] if proto in ("tcp","udp") else [])
        if chain == "POSTROUTING":
            targets += ["-j MASQUERADE", "-j MASQUERADE --random"] + ([f"-j MASQUERADE --to-ports {R.randrange(1,65536)}"] if proto in ("tcp","udp") else [])
    if table == "raw":
        targets += [f"-j CT --zone {R.randrange(0,65536)}", "-j CT --notrack", "-j NOTRACK"]
    if table == "mangle" and chain == "PREROUTING" and proto in ("tcp","udp"):
        targets += [f"-j TPROXY --on-port {R.randrange(1,65536)} --tproxy-mark {mark()}", f"-j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x111/0xfff"]
    tgt = R.choice(targets)
    parts.append(tgt)
    return " ".join(p for p in parts if p)
TABLES = {"raw": ["PREROUTING","OUTPUT"], "mangle": ["PREROUTING","INPUT","FORWARD","OUTPUT","POSTROUTING"], "nat": ["PREROUTING","INPUT","OUTPUT","POSTROUTING"], "filter": ["INPUT","FORWARD","OUTPUT"]}
out = []
for table in R.sample(list(TABLES), R.randrange(1, 5)):
    out.append(f"*{table}")
    for c in TABLES[table]:
        if R.random() < 0.5: out.append(f":{c} {R.choice(['ACCEPT','DROP']) if table=='filter' else 'ACCEPT'} [{R.randrange(100)}:{R.randrange(10000)}]")
    out.append(":USER1 - [0:0]")
    for _ in range(R.randrange(1, 12)):
        c = R.choice(TABLES[table])
        cmd = R.choice(["-A", "-A", "-A", "-I"])
        out.append(f"{cmd} {c} {rule(table, c)}")
    out.append("COMMIT")
print("\n".join(out))
