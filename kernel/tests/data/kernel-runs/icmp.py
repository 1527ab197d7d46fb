# ICMP tracking: the pod pings the peer (echo request NEW, reply ESTABLISHED), the peer pings
# the pod (the kernel answers), and an ICMP error about a tracked UDP flow is RELATED.
from common import *

def ping(sock, dst, ident):
    hdr = struct.pack('!BBHHH', 8, 0, 0, ident, 1)
    csum = 0
    for i in range(0, len(hdr), 2):
        csum += (hdr[i] << 8) + hdr[i + 1]
    csum = (csum >> 16) + (csum & 0xffff); csum = ~csum & 0xffff
    sock.sendto(struct.pack('!BBHHH', 8, 0, csum, ident, 1), (dst, 0))

r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ping(r, '10.0.1.9', 0x1234)
step()
p = in_peer('''
import socket, struct, time
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4321, 1)
c = sum((hdr[i] << 8) + hdr[i + 1] for i in range(0, 8, 2)); c = (c >> 16) + (c & 0xffff)
r.sendto(struct.pack("!BBHHH", 8, 0, ~c & 0xffff, 0x4321, 1), ("10.0.1.5", 0))
time.sleep(0.2)
''')
p.wait()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('10.0.1.5', 45000))
u.sendto(b'x', ('10.0.1.9', 9999))   # nothing listens: the peer answers port unreachable
step()
