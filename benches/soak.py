#!/usr/bin/env python3
"""Soak test: mixed load through waypost while its config is reloaded and a backend flaps.

    python3 benches/soak.py [--minutes 10] [--waypost target/release/waypost]
                            [--backend target/release/examples/soak_backend]

Starts four test backends (examples/soak_backend.rs: the project's own test backend, one
process each), writes a config, starts waypost (release build; built first with `cargo build
--release` when a binary is missing) and runs, all at once, for --minutes:

- keep-alive clients: GET after GET on one connection each;
- new-connection clients: one GET per connection (`Connection: close`);
- uploads: POSTs of 200-500 KB, the backend's reported body size checked;
- WebSocket sessions: upgrade, 20 binary messages echoed and compared, close;
- a reloader: every few seconds a new config (weights, balance policy, a backend added or
  removed: b1 is in every version), then POST /reload, which must answer ok;
- a flapper: every --flap-every seconds backend b3 is killed (SIGKILL) and started again
  --flap-down seconds later.

Every --sample-every seconds it reads waypost's RSS (/proc/PID/status) and open descriptors
(/proc/PID/fd). At the end it prints a table over time and a verdict, and exits 1 if it fails:

- failed idempotent requests (the GETs): must be 0. waypost retries an idempotent request on
  another backend when its backend dies before answering, and b1 is always up and in every
  config version;
- RSS and open descriptors flat: the median of the last samples (up to a minute's) no higher
  than the median of as many samples right after the warm-up, plus a tolerance
  (--rss-tolerance, --fd-tolerance); the trend (least squares) is printed too;
- every reload accepted, and waypost still running;
- no stall of the whole machine (a sample more than three intervals late, as when another
  process takes all memory): failures then say little about waypost, and the run is failed
  with "run again".

Runs shorter than two minutes or so are for trying the script out: waypost's RSS is still
growing from its idle size then, and the RSS check may fail for that alone.

Uploads and WebSocket sessions cut by b3's death are reported with their count, not failed:
a POST whose body was already streamed to a backend that dies cannot be replayed safely, and a
WebSocket tunnel ends with its backend. Any other upload or WebSocket failure is reported as
unexpected. Python standard library only (3.11).
"""
import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--minutes", type=float, default=10.0, help="duration of the load (default 10)")
ap.add_argument("--waypost", default=str(ROOT / "target/release/waypost"))
ap.add_argument("--backend", default=str(ROOT / "target/release/examples/soak_backend"))
ap.add_argument("--workers", type=int, default=2, help="waypost worker_threads (default 2)")
ap.add_argument("--keepalive", type=int, default=4, help="keep-alive GET clients (default 4)")
ap.add_argument("--newconn", type=int, default=2, help="new-connection GET clients (default 2)")
ap.add_argument("--uploads", type=int, default=1, help="upload clients (default 1)")
ap.add_argument("--websockets", type=int, default=2, help="WebSocket clients (default 2)")
ap.add_argument("--reload-every", type=float, default=5.0, help="seconds between reloads (default 5)")
ap.add_argument("--flap-every", type=float, default=15.0, help="seconds between kills of b3 (default 15)")
ap.add_argument("--flap-down", type=float, default=4.0, help="seconds b3 stays dead (default 4)")
ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (default 10)")
ap.add_argument("--warmup", type=float, default=None, help="seconds before the reference sample (default: 60, or a fifth of a shorter run)")
ap.add_argument("--rss-tolerance", type=float, default=10.0, help="percent RSS may grow after warm-up (default 10; at least 4 MiB)")
ap.add_argument("--fd-tolerance", type=int, default=24, help="descriptors the count may grow after warm-up (default 24)")
ap.add_argument("--keep", action="store_true", help="keep the working directory (config, waypost's log) even on success")
args = ap.parse_args()

DURATION = args.minutes * 60
WARMUP = args.warmup if args.warmup is not None else min(60.0, DURATION / 5)
HOST = "127.0.0.1"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- binaries ----------------------------------------------------------------------------------
def ensure_binaries():
    missing = [p for p in (args.waypost, args.backend) if not os.access(p, os.X_OK)]
    if not missing:
        return
    log(f"building (missing {', '.join(missing)}): cargo build --release --bin waypost --example soak_backend")
    subprocess.run(
        ["cargo", "build", "--release", "--bin", "waypost", "--example", "soak_backend"], cwd=ROOT, check=True
    )


# --- backends ----------------------------------------------------------------------------------
class Backend:
    def __init__(self, name, port):
        self.name, self.port, self.proc = name, port, None

    def start(self):
        deadline = time.monotonic() + 10
        while True:
            self.proc = subprocess.Popen(
                [args.backend, f"{HOST}:{self.port}", self.name],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
            line = self.proc.stdout.readline()
            if line.startswith("listening on"):
                return
            self.proc.wait()
            if time.monotonic() > deadline:
                sys.exit(f"backend {self.name} does not start on port {self.port}")
            time.sleep(0.2)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


# --- config versions -----------------------------------------------------------------------------
def config(version, port, admin, backends):
    b = {x.name: x.port for x in backends}
    members, balance = {
        0: ([("b1", 1), ("b2", 1), ("b3", 1)], "round_robin"),
        1: ([("b1", 3), ("b2", 1), ("b3", 2), ("b4", 1)], "least_request"),
        2: ([("b1", 1), ("b3", 1), ("b4", 2)], "random"),
    }[version % 3]
    listed = ",\n".join(f'  {{ address = "{HOST}:{b[n]}", weight = {w} }}' for n, w in members)
    return f"""# benches/soak.py, config version {version}
[server]
worker_threads = {args.workers}
graceful_shutdown_timeout = "5s"

[admin]
bind = "{HOST}:{admin}"

[log]
level = "info"
access = "off"

[[listener]]
name = "http"
bind = "{HOST}:{port}"

[[pool]]
name = "web"
balance = "{balance}"
backends = [
{listed},
]
connect_timeout = "1s"
response_timeout = "10s"
retries = 2
slow_start = "2s"
[pool.health]
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
[pool.passive]
consecutive_failures = 3
eject_for = "5s"
max_ejected_percent = 50

[[route]]
name = "all"
pool = "web"
"""


# --- results -------------------------------------------------------------------------------------
class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = collections.Counter()  # kind -> count
        self.failed = collections.Counter()  # kind -> count
        self.reasons = collections.defaultdict(collections.Counter)  # kind -> reason -> count
        self.examples = collections.defaultdict(list)  # kind -> a few (time, reason)
        self.kills = []  # (killed at, restarted at or None), monotonic
        self.reloads_ok = 0
        self.reloads_failed = []

    def good(self, kind):
        with self.lock:
            self.ok[kind] += 1

    def bad(self, kind, reason):
        with self.lock:
            self.failed[kind] += 1
            self.reasons[kind][reason] += 1
            if len(self.examples[kind]) < 10:
                self.examples[kind].append((round(time.monotonic() - T0, 2), reason))

    def b3_died_during(self, start, end):
        with self.lock:
            return any(k <= end + 0.05 and (r is None or r >= start) for k, r in self.kills)


T0 = time.monotonic()
stats = Stats()
stop = threading.Event()
proxy_port = 0


def path_ok(body, path):
    try:
        info = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:60]!r}"
    if info.get("path") != path:
        return f"wrong path {info.get('path')!r}"
    return None


def keepalive_client(i):
    conn, n = None, 0
    while not stop.is_set():
        n += 1
        path = f"/ka/{i}/{n}"
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, proxy_port, timeout=15)
            conn.request("GET", path, headers={"Host": "soak.test"})
            r = conn.getresponse()
            body = r.read()
            wrong = f"status {r.status}: {body[:80]!r}" if r.status != 200 else path_ok(body, path)
            if wrong:
                stats.bad("get-keepalive", wrong)
            else:
                stats.good("get-keepalive")
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:  # noqa: BLE001 - every failure is counted with its type
            stats.bad("get-keepalive", f"{type(e).__name__}: {e}")
            if conn:
                conn.close()
            conn = None


def newconn_client(i):
    n = 0
    while not stop.is_set():
        n += 1
        path = f"/new/{i}/{n}"
        conn = http.client.HTTPConnection(HOST, proxy_port, timeout=15)
        try:
            conn.request("GET", path, headers={"Host": "soak.test", "Connection": "close"})
            r = conn.getresponse()
            body = r.read()
            wrong = f"status {r.status}: {body[:80]!r}" if r.status != 200 else path_ok(body, path)
            if wrong:
                stats.bad("get-new-connection", wrong)
            else:
                stats.good("get-new-connection")
        except Exception as e:  # noqa: BLE001
            stats.bad("get-new-connection", f"{type(e).__name__}: {e}")
        finally:
            conn.close()


BLOB = os.urandom(512 * 1024)


def upload_client(i):
    rng = random.Random(i)
    n = 0
    while not stop.is_set():
        n += 1
        size = rng.randint(200_000, 500_000)
        path = f"/upload/{i}/{n}"
        start = time.monotonic()
        conn = http.client.HTTPConnection(HOST, proxy_port, timeout=30)
        try:
            conn.request("POST", path, body=BLOB[:size], headers={"Host": "soak.test", "Content-Type": "application/octet-stream"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                wrong = f"status {r.status}: {body[:60]!r}"
            else:
                wrong = path_ok(body, path)
                if not wrong and json.loads(body).get("body_bytes") != size:
                    wrong = f"backend got {json.loads(body).get('body_bytes')} of {size} bytes"
        except Exception as e:  # noqa: BLE001
            wrong = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        if not wrong:
            stats.good("upload")
        elif stats.b3_died_during(start, time.monotonic()):
            stats.bad("upload-b3-killed", wrong)
        else:
            stats.bad("upload", wrong)


def ws_send(sock, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    sock.sendall(head + mask + masked)


def ws_recv(f):
    h = f.read(2)
    if len(h) < 2:
        raise EOFError("connection closed mid-session")
    opcode, n = h[0] & 0x0F, h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", f.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", f.read(8))[0]
    if h[1] & 0x80:
        f.read(4)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("connection closed mid-frame")
    return opcode, data


def ws_client(i):
    rng = random.Random(1000 + i)
    while not stop.is_set():
        start = time.monotonic()
        backend = "?"
        try:
            with socket.create_connection((HOST, proxy_port), timeout=15) as s:
                f = s.makefile("rb")
                key = base64.b64encode(os.urandom(16)).decode()
                s.sendall(
                    (f"GET /ws/{i} HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
                )
                status = f.readline().decode("latin-1").strip()
                headers = {}
                while (line := f.readline().decode("latin-1").strip()):
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                backend = headers.get("x-backend", "?")
                want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
                if not status.startswith("HTTP/1.1 101"):
                    raise RuntimeError(f"no upgrade: {status}")
                if headers.get("sec-websocket-accept") != want:
                    raise RuntimeError("wrong Sec-WebSocket-Accept")
                for _ in range(20):
                    msg = os.urandom(rng.randint(1, 8000))
                    ws_send(s, 0x2, msg)
                    op, data = ws_recv(f)
                    if op != 0x2 or data != msg:
                        raise RuntimeError(f"echo differs (opcode {op}, {len(data)} of {len(msg)} bytes)")
                    if stop.wait(0.05):
                        break
                ws_send(s, 0x8, struct.pack(">H", 1000))
                op, _ = ws_recv(f)
                if op != 0x8:
                    raise RuntimeError(f"close answered with opcode {op}")
            stats.good("websocket")
        except Exception as e:  # noqa: BLE001
            reason = f"{type(e).__name__}: {e}"
            if backend == "b3" and stats.b3_died_during(start, time.monotonic()):
                stats.bad("websocket-b3-killed", reason)
            else:
                stats.bad("websocket", f"{reason} (backend {backend})")


# --- the proxy ------------------------------------------------------------------------------------
def admin_get(admin, path):
    with urllib.request.urlopen(f"http://{HOST}:{admin}{path}", timeout=5) as r:
        return r.read().decode()


def reloader(cfg_path, port, admin, backends):
    version = 0
    while not stop.wait(args.reload_every):
        version += 1
        tmp = cfg_path.with_suffix(".tmp")
        tmp.write_text(config(version, port, admin, backends))
        os.replace(tmp, cfg_path)
        try:
            req = urllib.request.Request(f"http://{HOST}:{admin}/reload", method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
            if answer.get("ok"):
                stats.reloads_ok += 1
            else:
                stats.reloads_failed.append(answer)
        except Exception as e:  # noqa: BLE001
            stats.reloads_failed.append(f"{type(e).__name__}: {e}")


def flapper(b3):
    while not stop.wait(args.flap_every):
        killed = time.monotonic()
        b3.kill()
        with stats.lock:
            stats.kills.append((killed, None))
        stop.wait(args.flap_down)
        b3.start()
        with stats.lock:
            stats.kills[-1] = (killed, time.monotonic())


def proc_sample(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def metric_sums(text, names):
    sums = {n: 0.0 for n in names}
    for line in text.splitlines():
        for n in names:
            if line.startswith(n + "{") or line.startswith(n + " "):
                sums[n] += float(line.rsplit(" ", 1)[1])
    return sums


def main():
    global proxy_port, T0
    ensure_binaries()
    for p in (args.waypost, args.backend):
        if not os.access(p, os.X_OK):
            sys.exit(f"missing {p}")
    work = Path(tempfile.mkdtemp(prefix="waypost-soak-"))
    backends = [Backend(f"b{i}", free_port()) for i in range(1, 5)]
    proxy_port, admin = free_port(), free_port()
    cfg_path = work / "waypost.toml"
    cfg_path.write_text(config(0, proxy_port, admin, backends))
    proc = None
    threads = []
    samples = []  # (t, rss KiB, fds, threads, counters snapshot)
    passed = False
    try:
        for b in backends:
            b.start()
        waypost_log = open(work / "waypost.log", "w")
        proc = subprocess.Popen(
            [args.waypost, "--config", str(cfg_path)], stdout=subprocess.DEVNULL, stderr=waypost_log,
        )
        for _ in range(200):
            try:
                if admin_get(admin, "/readyz").startswith("ready"):
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"waypost exited with {proc.returncode}; log: {work / 'waypost.log'}")
            time.sleep(0.05)
        else:
            sys.exit("waypost did not become ready")
        rss0, fds0, thr0 = proc_sample(proc.pid)
        log(f"waypost pid {proc.pid} ready on {HOST}:{proxy_port} (admin {admin}); "
            f"idle: RSS {rss0 / 1024:.1f} MiB, {fds0} fds; load for {args.minutes:g} min, warm-up {WARMUP:g} s")
        T0 = time.monotonic()
        workers = (
            [(keepalive_client, i) for i in range(args.keepalive)]
            + [(newconn_client, i) for i in range(args.newconn)]
            + [(upload_client, i) for i in range(args.uploads)]
            + [(ws_client, i) for i in range(args.websockets)]
        )
        for fn, i in workers:
            threads.append(threading.Thread(target=fn, args=(i,), daemon=True))
        threads.append(threading.Thread(target=reloader, args=(cfg_path, proxy_port, admin, backends), daemon=True))
        threads.append(threading.Thread(target=flapper, args=(backends[2],), daemon=True))
        for t in threads:
            t.start()

        next_sample = T0 + args.sample_every
        end = T0 + DURATION
        while True:
            now = time.monotonic()
            if now >= end:
                break
            time.sleep(max(0.0, min(next_sample, end) - now))
            if time.monotonic() >= next_sample:
                if proc.poll() is not None:
                    log(f"waypost exited with {proc.returncode}")
                    break
                rss, fds, thr = proc_sample(proc.pid)
                with stats.lock:
                    snap = (collections.Counter(stats.ok), collections.Counter(stats.failed), stats.reloads_ok, len(stats.kills))
                samples.append((time.monotonic() - T0, rss, fds, thr, snap))
                s_ok, s_bad = snap[0], snap[1]
                log(f"t={samples[-1][0]:5.0f}s RSS {rss / 1024:6.1f} MiB fds {fds:4d} | GET ok {s_ok['get-keepalive'] + s_ok['get-new-connection']} "
                    f"failed {s_bad['get-keepalive'] + s_bad['get-new-connection']} | uploads {s_ok['upload']} | ws {s_ok['websocket']} | "
                    f"reloads {snap[2]} | b3 kills {snap[3]}")
                next_sample += args.sample_every
        stop.set()
        for t in threads:
            t.join(timeout=40)
        alive = proc.poll() is None
        metrics = {}
        if alive:
            try:
                metrics = metric_sums(admin_get(admin, "/metrics"), [
                    "waypost_retries_total", "waypost_retry_budget_exhausted_total",
                    "waypost_backend_ejections_total", "waypost_config_reloads_total",
                ])
            except OSError as e:
                log(f"cannot read metrics: {e}")
            time.sleep(5)  # in-flight work done, client connections closed
            rss_q, fds_q, _ = proc_sample(proc.pid)
        passed = report(samples, alive, metrics, (rss0, fds0), (rss_q, fds_q) if alive else None, work)
    finally:
        stop.set()
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for b in backends:
            b.kill()
        if passed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"working directory kept: {work} (config, waypost.log)")
    sys.exit(0 if passed else 1)


def slope(points):
    """Least-squares slope of (x, y) points: y per unit of x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def report(samples, alive, metrics, idle, quiet, work):
    print()
    print("| time (s) | RSS (MiB) | open fds | threads | GETs ok | GETs failed | uploads ok | WebSocket sessions ok | reloads | b3 kills |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, rss, fds, thr, (ok, bad, reloads, kills) in samples:
        gets = ok["get-keepalive"] + ok["get-new-connection"]
        gets_bad = bad["get-keepalive"] + bad["get-new-connection"]
        print(f"| {t:.0f} | {rss / 1024:.1f} | {fds} | {thr} | {gets} | {gets_bad} | {ok['upload']} | {ok['websocket']} | {reloads} | {kills} |")
    print()
    ok, failed = stats.ok, stats.failed
    total = sum(ok.values()) + sum(failed.values())
    print(f"Requests and sessions: {total} in {DURATION / 60:g} min")
    for kind in ["get-keepalive", "get-new-connection", "upload", "upload-b3-killed", "websocket", "websocket-b3-killed"]:
        if ok[kind] or failed[kind]:
            print(f"  {kind:22s} ok {ok[kind]:8d}   failed {failed[kind]:6d}")
        for reason, n in stats.reasons[kind].most_common(5):
            print(f"      {n:6d} x {reason}")
    print(f"Reloads: {stats.reloads_ok} ok, {len(stats.reloads_failed)} failed {stats.reloads_failed[:3] or ''}")
    print(f"b3 kills: {len(stats.kills)}")
    if metrics:
        print("waypost metrics at the end: " + ", ".join(f"{k.removeprefix('waypost_')} {v:g}" for k, v in metrics.items()))
    print(f"idle before the load: RSS {idle[0] / 1024:.1f} MiB, {idle[1]} fds; "
          + (f"5 s after it: RSS {quiet[0] / 1024:.1f} MiB, {quiet[1]} fds" if quiet else "waypost gone"))

    verdict = []
    gets_failed = failed["get-keepalive"] + failed["get-new-connection"]
    verdict.append((gets_failed == 0, f"failed idempotent requests: {gets_failed} (must be 0)"))
    after = [s for s in samples if s[0] >= WARMUP]
    if len(after) >= 2:
        # One sample is noisy (upload buffers come and go): compare the median of the first
        # samples after the warm-up with the median of as many last samples (up to a minute's).
        w = max(1, min(6, len(after) // 3))
        first, last = after[:w], after[-w:]
        span = f"at {last[0][0]:.0f}-{last[-1][0]:.0f} s vs at {first[0][0]:.0f}-{first[-1][0]:.0f} s"
        rss_ref, rss_end = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
        rss_limit = rss_ref + max(rss_ref * args.rss_tolerance / 100, 4096)
        verdict.append((rss_end <= rss_limit,
                        f"RSS flat: median {rss_end / 1024:.1f} MiB vs {rss_ref / 1024:.1f} MiB ({span}; limit "
                        f"{rss_limit / 1024:.1f} MiB: +{args.rss_tolerance:g}%, at least 4 MiB); after warm-up "
                        f"{min(s[1] for s in after) / 1024:.1f}-{max(s[1] for s in after) / 1024:.1f} MiB, "
                        f"trend {slope([(s[0], s[1] / 1024) for s in after]) * 60:+.2f} MiB/min"))
        fd_ref, fd_end = statistics.median(s[2] for s in first), statistics.median(s[2] for s in last)
        fd_limit = fd_ref + args.fd_tolerance
        verdict.append((fd_end <= fd_limit,
                        f"open fds flat: median {fd_end:g} vs {fd_ref:g} ({span}; limit {fd_limit:g}: "
                        f"+{args.fd_tolerance}); after warm-up {min(s[2] for s in after)}-{max(s[2] for s in after)}, "
                        f"trend {slope([(s[0], s[2]) for s in after]) * 60:+.2f} fds/min"))
    else:
        verdict.append((False, "too few samples after the warm-up to judge RSS and fds (run longer)"))
    verdict.append((not stats.reloads_failed and stats.reloads_ok > 0, f"reloads accepted: {stats.reloads_ok}, refused or failed: {len(stats.reloads_failed)}"))
    verdict.append((alive, "waypost still running at the end" if alive else "waypost died"))
    # A sampler much later than planned means the whole machine stalled (CPU or memory taken by
    # something else): what failed then says little about waypost.
    gaps = [(b[0], b[0] - a[0]) for a, b in zip([(0.0,)] + samples, samples)]
    stalls = [(t, g) for t, g in gaps if g > 3 * args.sample_every]
    if stalls:
        verdict.append((False, "the machine stalled: samples late at " + ", ".join(
            f"{t:.0f} s ({g:.0f} s after the one before)" for t, g in stalls) + "; run again"))
    unexpected = failed["upload"] + failed["websocket"]
    print()
    print("Verdict:")
    for good, text in verdict:
        print(f"  [{'PASS' if good else 'FAIL'}] {text}")
    print(f"  [info] uploads and WebSocket sessions cut by b3's death: {failed['upload-b3-killed']} and "
          f"{failed['websocket-b3-killed']} (expected: see the header of this script); other failures: {unexpected}")
    passed = all(g for g, _ in verdict)
    print(f"\nSOAK {'PASSED' if passed else 'FAILED'}")
    return passed


if __name__ == "__main__":
    main()
