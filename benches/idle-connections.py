#!/usr/bin/env python3
"""Memory of idle keep-alive connections: start waypost (release build) on loopback, open N
client connections, send one request on each (answered by waypost itself: it matches no route,
so no backend is involved) and keep them open, then read waypost's RSS. Prints RSS before and
after and the cost per connection. With --silent the connections send nothing (measured
within header_read_timeout, which would close them).

    python3 benches/idle-connections.py [--connections 10000] [--waypost target/release/waypost] [--silent]
"""
import argparse, os, re, resource, socket, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--connections", type=int, default=10000)
ap.add_argument("--waypost", default="target/release/waypost")
ap.add_argument("--silent", action="store_true", help="open connections without sending a request")
args = ap.parse_args()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < args.connections + 100:
    sys.exit(f"the open-files limit ({hard}) is below {args.connections}")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

port, admin = free_port(), free_port()
cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
cfg.write(f"""
[server]
worker_threads = 1
[admin]
bind = "127.0.0.1:{admin}"
[log]
access = "off"
[[listener]]
name = "http"
bind = "127.0.0.1:{port}"
[[pool]]
name = "b"
backends = [{{ address = "127.0.0.1:9" }}]
[[route]]
name = "elsewhere"
host = "unused.invalid"
pool = "b"
""")
cfg.close()
proc = subprocess.Popen([args.waypost, "--config", cfg.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def rss_kib():
    with open(f"/proc/{proc.pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close(); break
        except OSError:
            time.sleep(0.05)
    # Warm up the allocator with a few requests.
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"); s.recv(4096); s.close()
    time.sleep(0.5)
    before = rss_kib()
    conns = []
    for i in range(args.connections):
        s = socket.create_connection(("127.0.0.1", port))
        if not args.silent:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(s)
        if len(conns) % 500 == 0 and not args.silent:
            for c in conns[-500:]:
                c.recv(4096)
    for c in (conns[-(len(conns) % 500):] if len(conns) % 500 else []) if not args.silent else []:
        c.recv(4096)
    time.sleep(1.0)
    after = rss_kib()
    active = len(conns)
    kind = "silent" if args.silent else "idle keep-alive"
    print(f"waypost RSS before: {before} KiB; with {active} {kind} connections: {after} KiB")
    print(f"per connection: {(after - before) * 1024 / active:.0f} bytes")
finally:
    proc.terminate(); proc.wait(timeout=30)
    os.unlink(cfg.name)
