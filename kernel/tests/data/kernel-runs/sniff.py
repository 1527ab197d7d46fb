# Prints every IPv4 packet the pod namespace sends or receives (on lo: received only),
# one line each, for `seconds` (argv[1]): what really crossed the interfaces during a run.
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.settimeout(0.5)
end = time.time() + float(sys.argv[1])
names = {}
while time.time() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    ifname, proto, pkttype = addr[0], addr[1], addr[2]
    if proto != 0x0800: continue
    if ifname == 'lo' and pkttype == 4: continue
    ip = data[14:]
    ihl = (ip[0] & 15) * 4
    tot = struct.unpack('!H', ip[2:4])[0]
    p = ip[9]
    src = socket.inet_ntoa(ip[12:16]); dst = socket.inet_ntoa(ip[16:20])
    l4 = ip[ihl:]
    d = 'out' if pkttype == 4 else 'in '
    if p == 6:
        sp, dp = struct.unpack('!HH', l4[:4]); fl = l4[13]
        f = ''.join(c for b, c in [(1,'F'),(2,'S'),(4,'R'),(8,'P'),(0x10,'A')] if fl & b)
        print(f'{ifname:4} {d} tcp {src}:{sp} > {dst}:{dp} flags={f} len={tot}', flush=True)
    elif p == 17:
        sp, dp = struct.unpack('!HH', l4[:4])
        print(f'{ifname:4} {d} udp {src}:{sp} > {dst}:{dp} len={tot}', flush=True)
    else:
        print(f'{ifname:4} {d} proto{p} {src} > {dst} len={tot}', flush=True)
