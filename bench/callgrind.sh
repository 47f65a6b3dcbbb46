#!/usr/bin/env bash
# Instructions per small keep-alive request, under callgrind: Ferroway and NGINX as the proxy
# in front of the same NGINX backend. Unlike CPU time on a shared machine, an instruction count
# repeats within about 2% run to run (±1k instructions), so it shows changes that timing hides.
#
# Usage: bench/callgrind.sh [--ferroway BIN] [--connections N] [--middleware] [--new-connections] [--keep DIR]
#
# --middleware measures, instead, Ferroway's route behind rate limit + JWT (RS256, one claim
# forwarded) + CORS + header rules, the chain of `bench/run.py --middleware`, with a bearer
# token and an Origin on every request (compare with the plain run's ferroway row).
#
# Each proxy serves 2 000 and then 12 000 requests (h2load, HTTP/1.1, N connections, default
# 16) in two runs under valgrind; the difference over 10 000 requests leaves out start-up and
# shutdown. --new-connections makes each request on a connection of its own instead (ApacheBench,
# HTTP/1.0 without keep-alive, N at once), for what accepting and setting up a connection
# costs. --keep DIR copies callgrind's output files there (NAME-2000.out, NAME-12000.out) to
# compare functions with callgrind_annotate. `memcpy` is shown apart: valgrind counts `rep movsb` once per byte, so its share of
# the instructions is far above its share of the time.
set -euo pipefail
cd "$(dirname "$0")/.."
ferroway=target/release/ferroway
conns=16
middleware=0
close=0
keep=
while [ $# -gt 0 ]; do
  case "$1" in
    --ferroway) ferroway=$2; shift 2 ;;
    --connections) conns=$2; shift 2 ;;
    --middleware) middleware=1; shift ;;
    --new-connections) close=1; shift ;;
    --keep) keep=$2; shift 2 ;;
    *) echo "usage: bench/callgrind.sh [--ferroway BIN] [--connections N] [--middleware] [--new-connections] [--keep DIR]" >&2; exit 2 ;;
  esac
done
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v ab >/dev/null || missing+=(apache2-utils)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi
if [ "$ferroway" = target/release/ferroway ]; then
  cargo build --release --quiet
fi

BACKEND=18281 NGINX=18282 FERRO=18283 NGINX_HEADERS=18284
d=$(mktemp -d)
trap 'kill $(cat "$d"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$d"' EXIT
common="daemon off; master_process off; worker_processes 1; error_log $d/%s.err warn; pid $d/%s.pid;
events { worker_connections 1024; }"
printf "$common\n%s\n" backend backend "http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location = /small { return 200 \"hello world\n\"; } } }" > "$d/backend.conf"
printf "$common\n%s\n" proxy proxy "http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } } }" > "$d/proxy.conf"
# NGINX doing the header work Ferroway does by default: X-Forwarded-For/-Proto/-Host,
# Forwarded, Via and a request id on the way up; Via and the request id on the way back (no
# traceparent: NGINX has no W3C trace context of its own). The id is the connection's number
# and its request count, cheap like Ferroway's counter; NGINX's own $request_id draws 16 bytes
# from OpenSSL's RAND_bytes, which alone cost it 7.8k instructions per request.
printf "$common\n%s\n" proxy-headers proxy-headers "http { access_log off; keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 128; }
  server { listen 127.0.0.1:$NGINX_HEADERS;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header Forwarded \"for=\$remote_addr;proto=\$scheme;host=\\\"\$host\\\"\";
      proxy_set_header Via \"1.1 nginx\"; proxy_set_header X-Request-Id \$connection-\$connection_requests;
      add_header Via \"1.1 nginx\"; add_header X-Request-Id \$connection-\$connection_requests; } } }" > "$d/proxy-headers.conf"
# In a directory of its own: the file watch wakes for every change in its config's directory.
mkdir "$d/ferroway"
cat > "$d/ferroway/ferroway.yaml" <<EOF
# One worker, a current-thread runtime, as in bench/run.sh (whose proxy is pinned to one core).
workers: 1
listeners: [{ name: public, address: 127.0.0.1:$FERRO }]
access_log: { output: off }
upstreams: { backend: { targets: [{ address: 127.0.0.1:$BACKEND }], max_idle_per_target: 128 } }
routes: [{ name: all, match: { path_prefix: / }, upstream: backend }]
EOF
if [ $middleware = 1 ]; then
  # bench/run.py's chain, key pair and token, for the same route and request as its scenario.
  python3 - "$d" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run", "bench/run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
d = sys.argv[1]
run.keypair(d)
with open(f"{d}/ferroway/ferroway.yaml") as f:
    config = f.read()
config = config.replace("upstream: backend }]", f"upstream: backend, middleware: [{run.CHAIN}] }}]")
with open(f"{d}/ferroway/ferroway.yaml", "w") as f:
    f.write(config + "middleware:\n" + run.chain_middleware(d))
with open(f"{d}/token", "w") as f:
    f.write(run.jwt(d))
with open(f"{d}/origin", "w") as f:
    f.write(run.ORIGIN)
PY
  token=$(cat "$d/token") origin=$(cat "$d/origin")
fi

wait_port() {
  for _ in $(seq 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

nginx -c "$d/backend.conf" -p "$d" >/dev/null 2>&1 &
echo $! > "$d/backend.pid"
wait_port $BACKEND

# total NAME PORT REQUESTS -- COMMAND...: the program's instruction total for REQUESTS requests
total() {
  local name=$1 port=$2 n=$3
  shift 4
  valgrind --tool=callgrind --callgrind-out-file="$d/$name-$n.out" "$@" >/dev/null 2>&1 &
  local pid=$!
  wait_port "$port"
  if [ $close = 1 ]; then
    ab -q -n "$n" -c "$conns" "${headers[@]}" "http://127.0.0.1:$port/small" | grep -qE "^(Failed requests|Non-2xx responses): +[1-9]" \
      && { echo "$name: not every request succeeded" >&2; exit 1; }
  else
    h2load --h1 -n "$n" -c "$conns" "${headers[@]}" "http://127.0.0.1:$port/small" | grep -q "$n succeeded" \
      || { echo "$name: not every request succeeded" >&2; exit 1; }
  fi
  kill -TERM $pid
  wait $pid || true
  callgrind_annotate "$d/$name-$n.out" 2>/dev/null | python3 -c '
import re, sys
out = sys.stdin.read()
total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", out).group(1).replace(",", ""))
memcpy = sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) \([^)]*\)\s+\S*mem(?:move|cpy)\S*", out, re.M))
print(total, memcpy)'
}

printf "| proxy | instructions per request | of it memcpy | without memcpy |\n|---|---|---|---|\n"
names=(nginx nginx-headers ferroway)
[ $middleware = 1 ] && names=(ferroway-middleware)
for name in "${names[@]}"; do
  headers=()
  if [ $name = ferroway-middleware ]; then
    cmd=("$ferroway" run --config "$d/ferroway/ferroway.yaml") port=$FERRO
    headers=(-H "origin: $origin" -H "authorization: Bearer $token")
  elif [ $name = nginx ]; then
    cmd=(nginx -c "$d/proxy.conf" -p "$d") port=$NGINX
  elif [ $name = nginx-headers ]; then
    cmd=(nginx -c "$d/proxy-headers.conf" -p "$d") port=$NGINX_HEADERS
  else
    cmd=("$ferroway" run --config "$d/ferroway/ferroway.yaml") port=$FERRO
  fi
  read -r a am < <(total $name $port 2000 -- "${cmd[@]}")
  read -r b bm < <(total $name $port 12000 -- "${cmd[@]}")
  [ -n "$keep" ] && mkdir -p "$keep" && cp "$d/$name-2000.out" "$d/$name-12000.out" "$keep/"
  python3 -c "n=10000; t=($b-$a)/n; m=($bm-$am)/n; print(f'| $name | {t:.0f} | {m:.0f} | {t-m:.0f} |')"
done
