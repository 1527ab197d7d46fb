# An ICMP error about a NATed forwarded flow: the client's UDP to 10.0.1.5:5353 is DNATed to
# 10.0.2.9:5354 and MASQUERADEd to 10.0.2.5:20000 (one port: the kernel picks
# randomly within a range, the model takes the lowest); nothing listens there, so the server's
# kernel answers port unreachable, which is RELATED and translated back (outer destination,
# embedded header) on its way to the client.
from common import *

cli = in_peer('''
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.1.9", 41200))
u.connect(("10.0.1.5", 5353)); u.send(b"q"); time.sleep(0.3)
try:
    u.recv(10)
except ConnectionRefusedError:
    print("refused")
''')
cli.wait()
step()
