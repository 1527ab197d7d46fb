# TPROXY: the peer (default route via the pod) connects to 10.0.3.3:80, an address the pod does
# not have. mangle PREROUTING hands the SYN to a transparent listener on 127.0.0.1:15001 and
# marks it 0x111, which the fwmark rule routes locally; later segments find the accepted
# (transparent) socket with -m socket --transparent. No rule uses conntrack, so the kernel
# tracks nothing.
from common import *

l = listener('127.0.0.1', 15001, transparent=True)
p = in_peer('''
import socket, time
c = socket.socket(); c.bind(("10.0.1.9", 41010)); c.connect(("10.0.3.3", 80))
c.send(b"get"); assert c.recv(10) == b"got"
time.sleep(0.4); c.close(); time.sleep(0.4)
''')
a, peer = l.accept()
assert a.getsockname() == ('10.0.3.3', 80), a.getsockname()
assert a.recv(10) == b'get'
step()
a.send(b'got')
time.sleep(0.4)
step()
a.close()
p.wait()
step()
