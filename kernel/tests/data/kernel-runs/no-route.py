# The pod forwards, but has no route to 10.0.5.1 (no default route), an unreachable route for
# 10.0.7.0/24 and a blackhole for 10.0.6.0/24. The kernel answers the first two with ICMP
# destination unreachable (net, host) sent from the pod; the blackhole drops silently.
from common import *

p = in_peer('''
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.1.9", 41300))
for dst in ["10.0.5.1", "10.0.7.1", "10.0.6.1"]:
    u.sendto(b"x", (dst, 9)); time.sleep(0.2)
''')
p.wait()
step()
