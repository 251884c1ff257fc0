#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: stable on a noisy machine, so a
# before/after comparison of a hot-path change needs no quiet box. Plain HTTP/1.1 keep-alive
# through one listener to a round-robin pool of two nginx backends, one worker thread.
#
#   benches/callgrind.sh [--waypost PATH] [--duration 20] [--connections 8] [--keep FILE]
#
# --keep copies the callgrind dump to FILE, for callgrind_annotate (per-function counts).
#
# Counts start after a warm-up (callgrind_control --zero) and end at a dump, so start-up and
# shutdown are not in the figure; the figure includes every thread of the process.
# Needs: valgrind, wrk, nginx (Debian packages; installed when missing).
set -euo pipefail
WAYPOST=target/release/waypost; DUR=20; CONNS=8; KEEP=
while [ $# -gt 0 ]; do case $1 in
  --waypost) WAYPOST=$2; shift 2;; --duration) DUR=$2; shift 2;;
  --connections) CONNS=$2; shift 2;; --keep) KEEP=$2; shift 2;;
  *) echo "unknown option $1" >&2; exit 2;; esac; done
need=(); for b in valgrind wrk nginx; do command -v $b >/dev/null || need+=($b); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
W=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

cat > $W/backend.conf <<CONF
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19401; location / { return 200 "hello from b1\n"; } }
  server { listen 127.0.0.1:19402; location / { return 200 "hello from b2\n"; } } }
CONF
cat > $W/waypost.toml <<CONF
[server]
worker_threads = 1

[admin]
bind = "127.0.0.1:19451"

[log]
access = "off"

[[listener]]
name = "bench"
bind = "127.0.0.1:19480"

[[pool]]
name = "be"
balance = "round_robin"
backends = [{ address = "127.0.0.1:19401" }, { address = "127.0.0.1:19402" }]

[[route]]
name = "all"
path_prefix = "/"
pool = "be"
CONF
nginx -c $W/backend.conf & PIDS+=($!)
valgrind --tool=callgrind --callgrind-out-file=$W/cg.out "$WAYPOST" --config $W/waypost.toml \
  > $W/waypost.log 2>&1 & PIDS+=($!); VG=$!
for i in $(seq 300); do curl -sf -o /dev/null http://127.0.0.1:19480/ && break; sleep 0.2; done
curl -sf -o /dev/null http://127.0.0.1:19480/ || { cat $W/waypost.log >&2; exit 1; }
wrk -t1 -c$CONNS -d3s http://127.0.0.1:19480/ > /dev/null  # warm-up: idle connections, caches
callgrind_control --zero $VG > /dev/null 2>&1
out=$(wrk -t1 -c$CONNS -d${DUR}s http://127.0.0.1:19480/)
callgrind_control --dump $VG > /dev/null 2>&1
sleep 1
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
dump=$(ls $W/cg.out.* | tail -1)
[ -n "$KEEP" ] && cp "$dump" "$KEEP"
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
printf 'requests %s  instructions %s  per request %.0f  %s\n' "$reqs" "$ir" "$(awk -v a=$ir -v b=$reqs 'BEGIN{print a/b}')" "$errs"
