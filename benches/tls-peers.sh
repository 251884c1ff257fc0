#!/usr/bin/env bash
# TLS side by side: waypost, nginx and HAProxy, each with one worker pinned to one core, the
# load generator and the backend on the other core. Three loads, all TLS 1.3 (ECDSA P-256):
#   keep-alive   wrk over https, 64 kept-alive connections: TLS record cost per request
#   handshakes   wrk with "Connection: close": a new connection, a full handshake (wrk does
#                not resume sessions), per request
#   re-encrypt   keep-alive as above, and TLS again from the proxy to the backend (waypost:
#                pool tls = true verified against ca_file; nginx proxy_ssl_verify; HAProxy
#                ssl verify required). The backend offers http/1.1 only, so all three speak
#                HTTP/1.1 upstream.
#   h2 upstream  as re-encrypt, to a backend that offers h2: waypost and HAProxy (alpn h2) use
#                HTTP/2 to it; nginx cannot, and speaks HTTP/1.1 over TLS (marked h1).
# Prints each round, then medians and waypost's ratios (higher is better). The machine may be
# shared and noisy: compare within one run, not across runs.
#
#   benches/tls-peers.sh [--duration 5] [--connections 64] [--rounds 2] [--waypost PATH]
#
# Needs nginx, haproxy, wrk, openssl, curl (Debian packages; missing ones are installed).
# The waypost config below follows the current schema; keep it in step with the config contract.
set -euo pipefail
DUR=5; CONNS=64; ROUNDS=2; WAYPOST=${WAYPOST:-target/release/waypost}
while [ $# -gt 0 ]; do case $1 in
  --duration) DUR=$2; shift 2;; --connections) CONNS=$2; shift 2;;
  --rounds) ROUNDS=$2; shift 2;; --waypost) WAYPOST=$2; shift 2;;
  *) echo "unknown option $1" >&2; exit 2;; esac; done
need=(); for b in nginx haproxy wrk openssl curl; do command -v $b >/dev/null || need+=($b); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
NGINX=$(command -v nginx); HAPROXY=$(command -v haproxy)
W=$(mktemp -d); chmod 755 "$W"; PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
LOAD_CPU=0; PROXY_CPU=1; [ "$(nproc)" -lt 2 ] && PROXY_CPU=0

# A CA and one leaf (localhost, 127.0.0.1) it signs: the proxies' certificate and the backend's.
ec() { echo "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"; }
openssl req -x509 $(ec) -keyout $W/ca.key -out $W/ca.pem -days 2 -subj /CN=waypost-bench-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req $(ec) -keyout $W/key.pem -out $W/leaf.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > $W/leaf.ext
openssl x509 -req -in $W/leaf.csr -CA $W/ca.pem -CAkey $W/ca.key -CAcreateserial -days 2 \
  -extfile $W/leaf.ext -out $W/cert.pem 2>/dev/null
cat $W/cert.pem $W/key.pem > $W/combined.pem

# Backend (core 0): plain on 19301, TLS 1.3 with http/1.1 on 19302, TLS 1.3 with h2 on 19303.
cat > $W/backend.conf <<CONF
worker_processes 1; daemon off; pid $W/backend.pid; error_log $W/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19301; location / { return 200 "hello\n"; } }
  server { listen 127.0.0.1:19302 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.3; location / { return 200 "hello\n"; } }
  server { listen 127.0.0.1:19303 ssl http2; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.3; location / { return 200 "hello\n"; } } }
CONF
cat > $W/nginx.conf <<CONF
worker_processes 1; daemon off; pid $W/nginx.pid; error_log $W/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream be { server 127.0.0.1:19301; keepalive 128; keepalive_requests 1000000; }
  upstream be_tls { server 127.0.0.1:19302; keepalive 128; keepalive_requests 1000000; }
  upstream be_h2 { server 127.0.0.1:19303; keepalive 128; keepalive_requests 1000000; }
  server { listen 127.0.0.1:18344 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.3; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /re/ { proxy_pass https://be_tls; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $W/ca.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; }
    location /h2/ { proxy_pass https://be_h2; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_verify on; proxy_ssl_trusted_certificate $W/ca.pem; proxy_ssl_name localhost;
      proxy_ssl_server_name on; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; } } }
CONF
cat > $W/haproxy.cfg <<CONF
global
  nbthread 1
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:18343 ssl crt $W/combined.pem alpn http/1.1
  use_backend be_tls if { path_beg /re/ }
  use_backend be_h2 if { path_beg /h2/ }
  default_backend be
backend be
  http-reuse always
  server b1 127.0.0.1:19301
backend be_tls
  http-reuse always
  server b1 127.0.0.1:19302 ssl verify required ca-file $W/ca.pem sni str(localhost) verifyhost localhost alpn http/1.1
backend be_h2
  http-reuse always
  server b1 127.0.0.1:19303 ssl verify required ca-file $W/ca.pem sni str(localhost) verifyhost localhost alpn h2
CONF
cat > $W/waypost.toml <<CONF
[server]
worker_threads = 1

[admin]
bind = "127.0.0.1:19309"

[log]
access = "off"

[[listener]]
name = "tls"
bind = "127.0.0.1:18340"

[listener.tls]
certificates = [{ cert = "$W/cert.pem", key = "$W/key.pem" }]
min_version = "1.3"
alpn = ["http/1.1"]

[[pool]]
name = "be"
backends = [{ address = "127.0.0.1:19301" }]

[[pool]]
name = "be_tls"
backends = [{ address = "127.0.0.1:19302" }]
tls = true
ca_file = "$W/ca.pem"

[[pool]]
name = "be_h2"
backends = [{ address = "127.0.0.1:19303" }]
tls = true
ca_file = "$W/ca.pem"

[[route]]
name = "h2"
path_prefix = "/h2/"
pool = "be_h2"

[[route]]
name = "reencrypt"
path_prefix = "/re/"
pool = "be_tls"

[[route]]
name = "all"
path_prefix = "/"
pool = "be"
CONF

declare -A PID_OF
taskset -c $LOAD_CPU $NGINX -c $W/backend.conf & PIDS+=($!)
taskset -c $PROXY_CPU $NGINX -c $W/nginx.conf & PIDS+=($!); PID_OF[nginx]=$!
taskset -c $PROXY_CPU $HAPROXY -f $W/haproxy.cfg & PIDS+=($!); PID_OF[haproxy]=$!
TARGETS="nginx:18344 haproxy:18343"
if [ -x "$WAYPOST" ]; then
  taskset -c $PROXY_CPU "$WAYPOST" --config $W/waypost.toml > $W/waypost.log 2>&1 & PIDS+=($!); PID_OF[waypost]=$!
  TARGETS="$TARGETS waypost:18340"
else
  echo "note: no waypost binary at $WAYPOST (cargo build --release first); peers only" >&2
fi
ok=0
for i in $(seq 50); do ok=1
  for t in $TARGETS; do for path in / /re/ /h2/; do
    curl -sf --cacert $W/ca.pem -o /dev/null https://localhost:${t##*:}$path || ok=0; done; done
  [ $ok = 1 ] && break; sleep 0.2; done
[ $ok = 1 ] || { echo "a target never answered; logs in $W" >&2; cat $W/*.log $W/*.err 2>/dev/null >&2; trap - EXIT; exit 1; }

ticks() { local t=0 p; for p in $1 $(pgrep -P $1); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
HZ=$(getconf CLK_TCK)
# One wrk run against a target: prints "req/s cpu-us/req".
run() { # name port path extra-wrk-args...
  local n=$1 p=$2 path=$3; shift 3
  local pid=${PID_OF[$n]} t0 t1 out rps reqs
  t0=$(ticks $pid)
  out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DUR}s "$@" https://127.0.0.1:$p$path 2>&1)
  t1=$(ticks $pid)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr -s ' \n' ' ')
  [ -n "$bad" ] && echo "  $n $path: $bad" >&2
  awk -v r="$rps" -v d=$((t1 - t0)) -v hz=$HZ -v n="${reqs:-0}" 'BEGIN{printf "%s %.1f\n", r, (n>0 ? d/hz*1e6/n : 0)}'
}
for t in $TARGETS; do taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d2s https://127.0.0.1:${t##*:}/ >/dev/null 2>&1; done  # warm-up
declare -A KA HS RE H2
echo "TLS 1.3, one core per proxy, wrk -c$CONNS -d${DUR}s; $(nproc) cores, shared: expect noise"
for r in $(seq $ROUNDS); do
  for t in $TARGETS; do
    n=${t%%:*}; p=${t##*:}
    read -r ka kac < <(run $n $p /)
    read -r hs hsc < <(run $n $p / -H "Connection: close")
    read -r re rec < <(run $n $p /re/)
    read -r h2 h2c < <(run $n $p /h2/)
    printf '%-8s round %d  keep-alive %9s req/s (%5s us cpu)  handshakes %8s /s (%6s us cpu)  re-encrypt %9s req/s (%5s us cpu)  h2 upstream%s %9s req/s (%5s us cpu)\n' \
      $n $r "$ka" "$kac" "$hs" "$hsc" "$re" "$rec" "$([ $n = nginx ] && echo ' (h1)')" "$h2" "$h2c"
    KA[$n]="${KA[$n]:-} $ka"; HS[$n]="${HS[$n]:-} $hs"; RE[$n]="${RE[$n]:-} $re"; H2[$n]="${H2[$n]:-} $h2"
  done
done
med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for n in nginx haproxy waypost; do
  [ -n "${KA[$n]:-}" ] || continue
  printf 'median %-8s keep-alive %9.0f req/s  handshakes %8.0f /s  re-encrypt %9.0f req/s  h2 upstream %9.0f req/s\n' $n \
    "$(med <<<"${KA[$n]}")" "$(med <<<"${HS[$n]}")" "$(med <<<"${RE[$n]}")" "$(med <<<"${H2[$n]}")"
done
if [ -n "${KA[waypost]:-}" ]; then
  for n in nginx haproxy; do
    printf 'ratio waypost/%-8s keep-alive %.3f  handshakes %.3f  re-encrypt %.3f  h2 upstream %.3f\n' $n \
      "$(awk -v a="$(med <<<"${KA[waypost]}")" -v b="$(med <<<"${KA[$n]}")" 'BEGIN{print a/b}')" \
      "$(awk -v a="$(med <<<"${HS[waypost]}")" -v b="$(med <<<"${HS[$n]}")" 'BEGIN{print a/b}')" \
      "$(awk -v a="$(med <<<"${RE[waypost]}")" -v b="$(med <<<"${RE[$n]}")" 'BEGIN{print a/b}')" \
      "$(awk -v a="$(med <<<"${H2[waypost]}")" -v b="$(med <<<"${H2[$n]}")" 'BEGIN{print a/b}')"
  done
fi
