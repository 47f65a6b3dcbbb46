#!/usr/bin/env bash
# Comparative benchmark: Ferroway vs NGINX vs HAProxy as reverse proxies, one run, interleaved.
# Usage: bench/run.sh [--rounds N] [--duration SECONDS] [--idle-conns N] [--middleware | --h2 | --compress | --cache | --scale | --workers]
# Installs nginx, haproxy and wrk from Debian when missing; builds Ferroway in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q && apt-get install -y -q "${missing[@]}"
fi
cargo build --release --quiet
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # 5 000 idle connections need the headroom
exec python3 bench/run.py "$@"
