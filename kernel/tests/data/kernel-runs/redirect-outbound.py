# An app connects to a remote address; nat OUTPUT redirects the SYN to the proxy's 15001
# listener in the same namespace. Data one way, then both sides close.
from common import *

l = listener('0.0.0.0', 15001)
c = socket.socket()
c.bind(('10.0.1.5', 40000))
c.connect(('10.9.9.9', 80))
a, peer = l.accept()
assert original_dst(a) == '10.9.9.9:80', original_dst(a)
step()
c.send(b'hello'); assert a.recv(10) == b'hello'
step()
c.close(); step()
a.close(); step()
