# DNS capture: an app's query to a cluster DNS address is redirected to the proxy's UDP 15053;
# the proxy (SO_MARK 0x539) asks an upstream server in the peer namespace in conntrack zone 1
# (raw-table CT --zone rules), and the answer comes back in zone 1. The upstream flow gets a
# second exchange after 2.5 s, which makes it a stream (ASSURED, 120 s).
from common import *

p = in_peer('''
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.0.1.9", 53))
for _ in range(2):
    q, a = s.recvfrom(100); s.sendto(b"A:" + q, a)
''')
px = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
px.bind(('127.0.0.1', 15053))  # replies must come from the redirect address to be un-NATed
app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
app.bind(('10.0.1.5', 33333))
step()
app.sendto(b'q1', ('10.96.0.10', 53))
q, frm = px.recvfrom(100)
assert frm == ('10.0.1.5', 33333), frm
up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
up.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x539)
up.bind(('10.0.1.5', 44444))
up.sendto(q, ('10.0.1.9', 53))
ans, _ = up.recvfrom(100)
px.sendto(ans, frm)
got, src = app.recvfrom(100)
assert src == ('10.96.0.10', 53) and got == b'A:q1', (src, got)
time.sleep(2.5)
up.sendto(b'q2', ('10.0.1.9', 53))
assert up.recvfrom(100)[0] == b'A:q2'
p.wait()
step()
