"""Helpers for the kernel-run scenarios (run inside the pod namespace by run.sh)."""
import socket, struct, subprocess, sys, time

SO_MARK = 36
IP_TRANSPARENT = 19
SO_ORIGINAL_DST = 80
STEP = 0.2  # seconds between steps, so every step's packets have settled


def step():
    time.sleep(STEP)


def listener(addr, port, transparent=False, mark=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if transparent:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    if mark is not None:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    s.bind((addr, port))
    s.listen(8)
    return s


def original_dst(sock):
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack('!2xH4s8x', raw)
    return f'{socket.inet_ntoa(ip)}:{port}'


def in_peer(code, peer=1):
    """Runs python code in the first (10.0.1.9) or second (10.0.2.9) peer namespace, in the
    background."""
    return subprocess.Popen(['ip', 'netns', 'exec', sys.argv[peer], 'python3', '-c', code])
