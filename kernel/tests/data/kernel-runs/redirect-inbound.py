# A client outside the mesh (peer namespace, 10.0.1.9) connects to the app's port 8080;
# nat PREROUTING redirects it to the proxy's 15006 listener. Data both ways, then close.
from common import *

l = listener('0.0.0.0', 15006)
p = in_peer('''
import socket, time
c = socket.socket(); c.bind(("10.0.1.9", 41001)); c.connect(("10.0.1.5", 8080))
time.sleep(0.2); c.send(b"ping"); assert c.recv(10) == b"pong"
time.sleep(0.4); c.close(); time.sleep(0.4)
''')
a, peer = l.accept()
assert original_dst(a) == '10.0.1.5:8080', original_dst(a)
assert a.recv(10) == b'ping'
step()
a.send(b'pong')
time.sleep(0.4)  # the client closes
step()
a.close()
p.wait()
step()
