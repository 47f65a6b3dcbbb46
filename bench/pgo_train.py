#!/usr/bin/env python3
"""The training run of a profile-guided build (scripts/build-pgo): an instrumented Ferroway
in front of bench/run.py's NGINX backend, with bench/run.py's config, through a mix of what a
gateway serves, so that the profile is not the small-request benchmark alone:

- small responses over 64 keep-alive HTTP/1.1 connections, and over a new connection each;
- 1 MiB responses (spliced) and 1 MiB of JSON compressed (gzip, br, zstd);
- the middleware chain (rate limit + JWT + CORS + header rules), with and without its JWT cache;
- cache hits;
- HTTP/2 over TLS and h2c, 8 connections x 32 streams;
- requests that fail: a bad token, and a head the gateway refuses.

Usage: bench/pgo_train.py INSTRUMENTED_BINARY (its profile is written when it exits, into the
directory its build was told).
"""
import os, socket, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (bench/run.py: the backend, the config, the load generators)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: bench/pgo_train.py INSTRUMENTED_BINARY")
    R.FERROWAY = sys.argv[1]
    R.BASELINE = None
    d = tempfile.mkdtemp()
    procs = R.start_all(d)
    try:
        token = R.jwt(d)
        auth = (f"authorization: Bearer {token}", f"origin: {R.ORIGIN}")
        port = R.FERRO
        loads = [
            ("small, keep-alive", lambda: R.wrk(port, "/small", 64, 4)),
            ("small, new connection each", lambda: R.wrk(port, "/small", 16, 2, close=True)),
            ("1 MiB", lambda: R.wrk(port, "/1m", 8, 2)),
            ("middleware chain", lambda: R.wrk(port, "/small", 64, 2, headers=("x-bench: mw", *auth))),
            ("middleware, no JWT cache", lambda: R.wrk(port, "/small", 16, 1, headers=("x-bench: mw-nocache", *auth))),
            ("cache hits", lambda: R.wrk(port, "/c/small", 32, 1)),
            ("refused by the JWT check", lambda: R.wrk(port, "/small", 16, 1, headers=("x-bench: mw", "authorization: Bearer x"))),
        ]
        for coding in ("gzip", "br", "zstd"):
            loads.append((f"compress {coding}", lambda c=coding: R.wrk(port, "/z/1m.json", 4, 1, headers=(f"accept-encoding: {c}",))))
        for name, load in loads:
            reqs = load()[0]
            print(f"{name}: {reqs} requests", file=sys.stderr)
        for name, url in (("h2 over TLS", f"https://127.0.0.1:{R.H2_TLS['ferroway']}/small"),
                          ("h2c", f"http://127.0.0.1:{R.H2C['ferroway']}/small")):
            reqs = R.h2load(url, 8, 32, 2)[0]
            print(f"{name}: {reqs} requests", file=sys.stderr)
        # A head the gateway refuses, a few hundred times.
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /small HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
                s.recv(4096)
    finally:
        # SIGTERM: the gateway drains and exits, which writes the profile.
        R.stop_all(procs, d)


if __name__ == "__main__":
    main()
