# The proxy connects to the pod's app with the client's address as source (IP_TRANSPARENT,
# SO_MARK 0x539). mangle PREROUTING turns the mark into connmark 0x111; the app's replies get it
# back as their mark in mangle OUTPUT and the fwmark rule routes them to the local table 100,
# i.e. back to the proxy's transparent socket instead of out of eth0.
from common import *

app = listener('0.0.0.0', 8080)
px = socket.socket()
px.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
px.setsockopt(socket.SOL_SOCKET, SO_MARK, 0x539)
px.bind(('10.0.2.7', 41002))
px.connect(('10.0.1.5', 8080))
a, peer = app.accept()
assert peer == ('10.0.2.7', 41002), peer
step()
px.send(b'req'); assert a.recv(10) == b'req'
step()
a.send(b'resp'); assert px.recv(10) == b'resp'
step()
a.close(); step()
px.close(); step()
