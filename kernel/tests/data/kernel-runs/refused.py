# Connections that are refused by the kernel (RST from no socket): one redirected to a 15001
# nobody listens on, one to a closed loopback port. A RST as the only reply deletes the entry.
from common import *

for dst in [('10.9.9.9', 80), ('127.0.0.1', 9)]:
    c = socket.socket()
    c.bind(('10.0.1.5' if dst[0] != '127.0.0.1' else '127.0.0.1', 40001))
    try:
        c.connect(dst)
        raise SystemExit('connected?')
    except ConnectionRefusedError:
        pass
    c.close()
    step()
