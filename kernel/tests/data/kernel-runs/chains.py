# Chain control flow with UDP probes from the peer to ports 9000-9008 (no listeners, so every
# accepted probe makes the UDP stack send ICMP port unreachable back): -j/-g/RETURN, user
# chains falling off their end, the INPUT DROP policy, LOG continuing, MARK/CONNMARK with
# masks, NOTRACK (UNTRACKED), multiport + addrtype.
from common import *

p = in_peer('''
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.1.9", 41100))
for port in range(9000, 9009):
    u.sendto(b"p", ("10.0.1.5", port)); time.sleep(0.1)
''')
p.wait()
step()
