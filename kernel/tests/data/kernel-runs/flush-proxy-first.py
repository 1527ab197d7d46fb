# `conntrack -F` in the middle of a redirected connection, and this time the proxy speaks
# first: its segment (127.0.0.1:15001 -> app) is picked up as a NEW connection of its own and
# nat OUTPUT redirects it to 127.0.0.1:15001 - the app never sees it.
from common import *

l = listener('0.0.0.0', 15001)
c = socket.socket()
c.bind(('10.0.1.5', 40003))
c.connect(('10.9.9.9', 80))
a, peer = l.accept()
step()
subprocess.run(['conntrack', '-F'], check=True, capture_output=True)
step()
a.send(b'hello')
c.settimeout(0.5)
try:
    c.recv(10)
    raise SystemExit('the app got data after the flush?')
except (socket.timeout, ConnectionResetError):
    pass
a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
a.close(); c.close()
step()
