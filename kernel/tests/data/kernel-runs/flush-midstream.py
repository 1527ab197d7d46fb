# `conntrack -F` in the middle of a redirected connection. The app speaks first afterwards: its
# segment is picked up as a new connection (nf_conntrack_tcp_loose) and, being NEW, goes
# through nat OUTPUT again - which redirects it to 15001 again, so the connection survives.
from common import *

l = listener('0.0.0.0', 15001)
c = socket.socket()
c.bind(('10.0.1.5', 40002))
c.connect(('10.9.9.9', 80))
a, peer = l.accept()
step()
c.send(b'one'); assert a.recv(10) == b'one'
step()
subprocess.run(['conntrack', '-F'], check=True, capture_output=True)
step()
c.send(b'two'); assert a.recv(10) == b'two'
step()
a.send(b'three'); assert c.recv(10) == b'three'
step()
c.close(); step()
a.close(); step()
