# The pod namespace as a router: a client (peer, 10.0.1.9) connects to 10.0.1.5:8080, which
# nat PREROUTING sends to a server in the second peer (10.0.2.9:80); MASQUERADE gives it the
# router's eth1 address as source. filter FORWARD accepts NEW/DNAT and RELATED/ESTABLISHED,
# rejects forwarded UDP with ICMP port unreachable (sent by the router) and has a DROP policy:
# a packet to an address nothing forwards to is dropped by it.
from common import *

srv = in_peer('''
import socket, time
l = socket.socket(); l.bind(("10.0.2.9", 80)); l.listen(1)
a, peer = l.accept(); assert peer[0] == "10.0.2.5", peer
assert a.recv(10) == b"up"; a.send(b"down")
time.sleep(0.6); a.close(); time.sleep(0.4)
''', peer=2)
step()
cli = in_peer('''
import socket, time
c = socket.socket(); c.bind(("10.0.1.9", 41020)); c.connect(("10.0.1.5", 8080))
c.send(b"up"); assert c.recv(10) == b"down"
time.sleep(0.3); c.close(); time.sleep(0.2)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.1.9", 41021))
u.sendto(b"q", ("10.0.2.9", 53)); time.sleep(0.2)
t = socket.socket(); t.bind(("10.0.1.9", 41022)); t.settimeout(0.3)
try:
    t.connect(("10.0.2.9", 22))
except OSError:
    pass
''')
cli.wait(); srv.wait()
step()
