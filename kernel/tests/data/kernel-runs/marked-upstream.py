# The proxy's own connection out of the pod (SO_MARK 0x539) to a server in the peer namespace
# is left alone by the redirection rules.
from common import *

p = in_peer('''
import socket, time
l = socket.socket(); l.bind(("10.0.1.9", 15008)); l.listen(1)
a, _ = l.accept(); assert a.recv(10) == b"hi"; a.send(b"yo")
time.sleep(0.8); a.close(); time.sleep(0.4)
''')
step()
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x539)
c.bind(('10.0.1.5', 50000))
c.connect(('10.0.1.9', 15008))
step()
c.send(b'hi'); assert c.recv(10) == b'yo'
step(); step()
c.close()  # before the server does
p.wait()
step()
