# ICMP errors to one peer are rate-limited per destination (icmp_ratelimit 1000 ms, a burst of
# six): eight REJECTed datagrams in 70 ms get six port-unreachables, two more at 1.2 s get one.
# ip_error (no route) charges the same peer's bucket once more before icmp_send does, so at 2.5 s
# the first unroutable datagram spends the last tokens without an error being sent, and at 4.5 s
# one gets through. Recorded with `SNIFF_SECS=6.5 sh run.sh icmp-ratelimit`.
from common import *

p = in_peer('''
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("10.0.1.9", 41300))
t0 = time.monotonic()
def at(t):
    time.sleep(max(0, t0 + t - time.monotonic()))
for i in range(8):
    at(i * 0.01); u.sendto(b"x", ("10.0.2.9", 9))
for i in range(2):
    at(1.2 + i * 0.01); u.sendto(b"x", ("10.0.2.9", 9))
for i in range(3):
    at(2.5 + i * 0.01); u.sendto(b"x", ("10.0.5.1", 9))
at(4.5); u.sendto(b"x", ("10.0.5.1", 9))
''')
p.wait()
step()
