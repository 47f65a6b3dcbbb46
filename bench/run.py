#!/usr/bin/env python3
"""Runs the proxies side by side and prints the comparison table (see bench/README.md).

The proxy under test is pinned to CPU 0; the backend (NGINX) and the load generator (wrk) to
CPU 1. On a 2-core machine req/s is bounded by the load generator's core, so the figure that
compares proxies is each proxy's own CPU time (utime+stime from /proc) per request served.
"""
import argparse, asyncio, datetime, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERROWAY = os.path.join(ROOT, "target", "release", "ferroway")
TICK = os.sysconf("SC_CLK_TCK")
BACKEND, NGINX, HAPROXY, FERRO, FERRO_BASE = 18081, 18090, 18091, 18092, 18089
PROXIES = [("nginx", NGINX), ("haproxy", HAPROXY), ("ferroway", FERRO)]
# --baseline BIN: a second Ferroway binary (an earlier build) run beside the others, on the
# same config, so a change's before and after come from one interleaved run.
BASELINE = None
# The HTTP/2 scenario's client ports: h2 over TLS (ALPN) and h2c (prior knowledge). Ferroway
# takes h2c on its plain port (it tells HTTP/1 from HTTP/2 by the preface).
H2_TLS = {"nginx": 18093, "haproxy": 18094, "ferroway": 18095}
H2C = {"nginx": 18096, "haproxy": 18097, "ferroway": FERRO}


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_split(pid):
    """User and system CPU seconds of pid and its descendants."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    return user / TICK, system / TICK


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def rss_bytes(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def start_all(d):
    # The backend's files live apart from the proxies' configs and certificates: Ferroway
    # watches the directories of the files its config reads, and inotify wakes that watch for
    # every open of a file there (the backend opens 1m.bin once per request).
    www = os.path.join(d, "www")
    os.mkdir(www)
    with open(os.path.join(www, "1m.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    # 1 MiB of JSON-like text for the compression scenario (compresses about 5:1, like API JSON).
    import random
    rnd = random.Random(7)
    words = ["id", "name", "status", "active", "created_at", "price", "items", "user", "tags", "region"]
    text = []
    while sum(map(len, text)) < (1 << 20):
        text.append('{"%s": %d, "%s": "%s-%x"},\n' % (rnd.choice(words), rnd.randrange(10**6), rnd.choice(words), rnd.choice(words), rnd.getrandbits(32)))
    with open(os.path.join(www, "1m.json"), "w") as f:
        f.write("".join(text)[: 1 << 20])
    # One self-signed ECDSA P-256 certificate for every TLS listener (h2load does not verify).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/tls-key.pem", "-out", f"{d}/tls.pem", "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)
    with open(f"{d}/tls-both.pem", "w") as f:
        f.write(open(f"{d}/tls.pem").read() + open(f"{d}/tls-key.pem").read())
    nginx_common = f"daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384; pid {d}/%s.pid; error_log {d}/%s.err warn;\nevents {{ worker_connections 16000; }}\n"
    backend = write(d, "backend.conf", nginx_common % ("backend", "backend") + f"""
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 300s;
  server {{ listen 127.0.0.1:{BACKEND} reuseport backlog=4096; root {www};
    location = /small {{ default_type text/plain; return 200 "hello world\\n"; }}
    location = /1m {{ try_files /1m.bin =404; }}
    location = /1m.json {{ default_type application/json; try_files /1m.json =404; }} }} }}
""")
    proxy = write(d, "proxy.conf", nginx_common % ("proxy", "proxy") + f"""
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 128; }}
  server {{ listen 127.0.0.1:{NGINX} backlog=4096; listen 127.0.0.1:{H2_TLS["nginx"]} ssl http2; listen 127.0.0.1:{H2C["nginx"]} http2;
    ssl_certificate {d}/tls.pem; ssl_certificate_key {d}/tls-key.pem; http2_max_concurrent_streams 256;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering on; }}
    location /z/ {{ proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection ""; gzip on; gzip_comp_level 5; gzip_types application/json; gzip_proxied any; }} }} }}
""")
    haproxy = write(d, "haproxy.cfg", f"""global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{HAPROXY}
  bind 127.0.0.1:{H2_TLS["haproxy"]} ssl crt {d}/tls-both.pem alpn h2,http/1.1
  bind 127.0.0.1:{H2C["haproxy"]} proto h2
  default_backend be
backend be
  server s1 127.0.0.1:{BACKEND} maxconn 8000
""")
    # The middleware scenario: the same route behind rate limit + JWT (RS256) + CORS + header
    # rules, selected by a request header; the limit is set far above the load so every
    # request pays for a decision and none is refused.
    keypair(d)
    ferro = write(d, "ferroway.yaml", f"""listeners:
  - {{ name: public, address: 127.0.0.1:{FERRO} }}
  - {{ name: tls, address: 127.0.0.1:{H2_TLS["ferroway"]}, tls: {{ certificates: [{{ cert: {d}/tls.pem, key: {d}/tls-key.pem }}] }} }}
access_log: {{ output: off }}
upstreams: {{ backend: {{ targets: [{{ address: 127.0.0.1:{BACKEND} }}], max_idle_per_target: 128 }} }}  # NGINX: keepalive 128
middleware:
{chain_middleware(d)}  auth-nc: {{ jwt: {{ algorithms: [RS256], public_key_file: {d}/pub.pem, forward_claims: {{ x-user-id: sub }}, verify_cache: false }} }}
  zip: {{ compress: {{ algorithms: [br, zstd, gzip] }} }}
  hot: {{ cache: {{ default_ttl: 1h }} }}
routes:
  - {{ name: c, match: {{ path_prefix: /c/ }}, upstream: backend, strip_prefix: true, middleware: [hot] }}
  - {{ name: z, match: {{ path_prefix: /z/ }}, upstream: backend, strip_prefix: true, middleware: [zip] }}
  - {{ name: all, match: {{ path_prefix: / }}, upstream: backend }}
  - {{ name: mw, match: {{ path_prefix: /, headers: {{ x-bench: mw }} }}, upstream: backend, middleware: [{CHAIN}] }}
  - {{ name: mw-nc, match: {{ path_prefix: /, headers: {{ x-bench: mw-nocache }} }}, upstream: backend, middleware: [limit, auth-nc, cors, rules] }}
""")
    for port in (BACKEND, NGINX, HAPROXY, FERRO, *H2_TLS.values(), H2C["nginx"], H2C["haproxy"]):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            raise SystemExit(f"port {port} is already in use (a leftover run?); stop it first")
        except OSError:
            pass
    procs = {}
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs["backend"] = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", backend, "-p", d], **quiet)
    procs["nginx"] = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", proxy, "-p", d], **quiet)
    procs["haproxy"] = subprocess.Popen(["taskset", "-c", "0", "haproxy", "-db", "-f", haproxy], **quiet)
    procs["ferroway"] = subprocess.Popen(["taskset", "-c", "0", FERROWAY, "run", "--config", ferro], **quiet)
    ports = [BACKEND, NGINX, HAPROXY, FERRO]
    if BASELINE:
        # The same config on other ports: only the plain listener matters to the scenarios run.
        base = write(d, "ferroway-base.yaml", open(ferro).read().replace(f"127.0.0.1:{FERRO}", f"127.0.0.1:{FERRO_BASE}")
                     .replace(f"127.0.0.1:{H2_TLS['ferroway']}", "127.0.0.1:0"))
        procs["ferroway-base"] = subprocess.Popen(["taskset", "-c", "0", BASELINE, "run", "--config", base], **quiet)
        ports.append(FERRO_BASE)
    try:
        for port in ports:
            wait_port(port)
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{name} exited at start (code {p.returncode})")
    except BaseException:
        # Nothing started is left running to hold the ports of the next run.
        stop_all(procs, d)
        raise
    return procs


def stop_all(procs, d):
    """SIGTERM every server, wait (SIGKILL after 10 s), and remove the run's files."""
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(d, ignore_errors=True)


# The middleware scenario's chain, also measured by `bench/callgrind.sh --middleware`.
CHAIN = "limit, auth, cors, rules"
ORIGIN = "https://app.example.com"


def keypair(d):
    """The RSA key pair the chain's JWT middleware verifies with (d/key.pem, d/pub.pem)."""
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", f"{d}/key.pem"], check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", f"{d}/key.pem", "-pubout", "-out", f"{d}/pub.pem"], check=True, capture_output=True)


def chain_middleware(d):
    """The `middleware:` entries of CHAIN: rate limit (far above any load, so every request
    pays for a decision and none is refused) + JWT (RS256, one claim forwarded) + CORS +
    header rules."""
    return f"""  limit: {{ rate_limit: {{ rate: 10000000/s, burst: 10000000 }} }}
  auth: {{ jwt: {{ algorithms: [RS256], public_key_file: {d}/pub.pem, forward_claims: {{ x-user-id: sub }} }} }}
  cors: {{ cors: {{ allow_origins: ["{ORIGIN}"], allow_credentials: true }} }}
  rules: {{ headers: {{ request: {{ set: {{ x-gateway: ferroway }} }}, response: {{ remove: [server] }} }} }}
"""


def jwt(d):
    """An RS256 token for the middleware scenario, signed with openssl."""
    import base64, json
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/key.pem"], input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
    return f"{head}.{body}.{b64(sig)}"


def wrk(port, path, conns, duration, close=False, headers=(), cpus="1", threads=1):
    cmd = ["taskset", "-c", cpus, "wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}{path}"]
    if close:
        cmd[6:6] = ["-H", "Connection: close"]
    for h in headers:
        cmd[6:6] = ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)] if m else float("nan")

    return reqs, lat(50), lat(99), (int(errors.group(1)) if errors else 0), (sock_err.group(1) if sock_err else "")


def h2load(url, conns, streams, duration):
    """h2load (nghttp2) on CPU 1: `conns` connections with `streams` concurrent streams each."""
    cmd = ["taskset", "-c", "1", "h2load", "-c", str(conns), "-m", str(streams), "-D", str(duration), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"requests: .* (\d+) succeeded", out).group(1))
    failed = int(re.search(r"(\d+) failed", out).group(1))
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    unit = {"us": 1, "ms": 1e3, "s": 1e6}
    mean = float(m.group(5)) * unit[m.group(6)] if m else float("nan")
    return reqs, mean, failed


def measure_h2(proc, url, conns, streams, duration):
    before = cpu_seconds(proc.pid)
    reqs, mean, failed = h2load(url, conns, streams, duration)
    return {"reqs": reqs, "cpu": cpu_seconds(proc.pid) - before, "mean": mean, "failed": failed}


def measure(proc, port, path, conns, duration, close=False, headers=(), **load):
    user0, sys0 = cpu_split(proc.pid)
    reqs, p50, p99, non2xx, sock = wrk(port, path, conns, duration, close, headers, **load)
    user1, sys1 = cpu_split(proc.pid)
    cpu = (user1 - user0) + (sys1 - sys0)
    return {"reqs": reqs, "cpu": cpu, "user": user1 - user0, "p50": p50, "p99": p99, "non2xx": non2xx, "sock": sock}


async def hold_idle(port, n):
    """Opens n keep-alive connections, makes one request on each, and keeps them open."""
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await r.readexactly(length)
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def idle_rss(proc, port, n):
    before = rss_bytes(proc.pid)
    loop = asyncio.new_event_loop()
    conns = loop.run_until_complete(hold_idle(port, n))
    # Let the proxy settle (RSS is sampled, not a test assertion): Ferroway parks connections
    # idle for keepalive_park_after (1 s) and its allocator hands the freed pages back about a
    # second later. Sampled every 0.5 s until it has not fallen for 2 s (10 s at most).
    time.sleep(1.0)
    after, steady = rss_bytes(proc.pid), 0
    for _ in range(18):
        time.sleep(0.5)
        now = rss_bytes(proc.pid)
        if now < after - (64 << 10):
            after, steady = now, 0
        else:
            steady += 1
        if steady >= 4:
            break
    for w in conns:
        w.close()
    loop.close()
    return (after - before) / n


def med(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--idle-conns", type=int, default=5000)
    ap.add_argument("--middleware", action="store_true", help="only Ferroway: a bare route against rate limit + JWT + CORS + headers")
    ap.add_argument("--h2", action="store_true", help="HTTP/2 from the client (h2load): h2 over TLS and h2c, upstream HTTP/1.1")
    ap.add_argument("--compress", action="store_true", help="CPU per MiB compressed, per algorithm (Ferroway; NGINX gzip for reference)")
    ap.add_argument("--cache", action="store_true", help="only Ferroway: a cache hit against proxying the same small response")
    ap.add_argument("--scale", action="store_true", help="only Ferroway: 10 000 routes and 1 000 targets against 1 route and 1 target")
    ap.add_argument("--workers", action="store_true", help="one worker against two, nothing pinned (Ferroway; NGINX for reference)")
    ap.add_argument("--small", action="store_true", help="only the small keep-alive scenario, every proxy; per-round ratios to NGINX (many short rounds read best)")
    ap.add_argument("--close", action="store_true", help="like --small, but a new connection for each request (16 at once)")
    ap.add_argument("--ferroway", help="the Ferroway binary under test (default: target/release/ferroway)")
    ap.add_argument("--baseline", help="an earlier Ferroway binary, measured beside the others as ferroway-base")
    args = ap.parse_args()
    global FERROWAY, BASELINE
    FERROWAY = os.path.abspath(args.ferroway) if args.ferroway else FERROWAY
    if args.baseline:
        BASELINE = os.path.abspath(args.baseline)
        PROXIES.append(("ferroway-base", FERRO_BASE))
    d = tempfile.mkdtemp(prefix="ferroway-bench-")
    procs = start_all(d)
    results = {}
    if args.h2:
        return h2_main(args, d, procs)
    if args.compress:
        return compress_main(args, d, procs)
    if args.cache:
        return cache_main(args, d, procs)
    if args.scale:
        return scale_main(args, d, procs)
    if args.workers:
        return workers_main(args, d, procs)
    if args.small or args.close:
        return small_main(args, d, procs, close=args.close)
    if args.middleware:
        token = jwt(d)
        auth = (f"authorization: Bearer {token}", f"origin: {ORIGIN}")
        # The bare route twice: as the other scenarios send it, and with the chain's request
        # (token, Origin), which a client of that route would send through either route, so
        # that the chain's own cost shows apart from the cost of reading a larger request.
        cases = [("bare", "/small", ()), ("bare, the chain's request", "/small", ("x-bench: bare", *auth)),
                 ("middleware", "/small", ("x-bench: mw", *auth)),
                 ("middleware, no JWT cache", "/small", ("x-bench: mw-nocache", *auth))]
        cpu, _ = ferroway_ab(args, d, procs, "Ferroway middleware cost", cases)
        same = cpu["bare, the chain's request"] / cpu["middleware"] * 100
        print(f"\nThe chain against the bare route with the same request: {same:.0f}% of its throughput per core.")
        return
    try:
        for _ in range(2):  # warm pools and caches
            for name, port in PROXIES:
                wrk(port, "/small", 64, 1)
        scenarios = [
            ("small", "/small", 64, False),
            ("1m", "/1m", 8, False),
            ("close", "/small", 16, True),
        ]
        for r in range(args.rounds):
            for scen, path, conns, close in scenarios:
                targets = PROXIES + ([("direct", BACKEND)] if scen == "1m" else [])
                for name, port in targets:
                    proc = procs["backend" if name == "direct" else name]
                    m = measure(proc, port, path, conns, args.duration, close)
                    results.setdefault((scen, name), []).append(m)
                    print(f"round {r + 1} {scen:5} {name:8} reqs={m['reqs']:>8} cpu={m['cpu']:.2f}s p50={m['p50']:.0f}us p99={m['p99']:.0f}us non2xx={m['non2xx']} {m['sock']}", file=sys.stderr)
        idle = {name: idle_rss(procs[name], port, args.idle_conns) for name, port in PROXIES}
    finally:
        stop_all(procs, d)

    def per(scen, name, unit):
        xs = [m["cpu"] / m["reqs"] * unit for m in results[(scen, name)]]
        return med(xs), min(xs), max(xs)

    print(f"# Ferroway bench, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; medians, min–max)\n")
    print("| figure | " + " | ".join(n for n, _ in PROXIES) + " |")
    print("|---|" + "---|" * len(PROXIES))
    base = per("small", "nginx", 1e6)[0]
    row = [f"{m:.1f} µs ({lo:.1f}–{hi:.1f}; {m / base:.2f}×)" for m, lo, hi in (per("small", n, 1e6) for n, _ in PROXIES)]
    print("| CPU per small keep-alive request (64 conns) | " + " | ".join(row) + " |")
    row = [f"{med([m['p50'] for m in results[('small', n)]]):.0f} / {med([m['p99'] for m in results[('small', n)]]):.0f} µs" for n, _ in PROXIES]
    print("| latency p50 / p99, small, 64 conns | " + " | ".join(row) + " |")
    row = [f"{m:.0f} µs ({lo:.0f}–{hi:.0f})" for m, lo, hi in (per("1m", n, 1e6) for n, _ in PROXIES)]
    print("| CPU per MiB of response body (1 MiB responses) | " + " | ".join(row) + " |")
    base = per("close", "nginx", 1e6)[0]
    row = [f"{m:.1f} µs ({m / base:.2f}×)" for m, lo, hi in (per("close", n, 1e6) for n, _ in PROXIES)]
    print("| CPU per request, new connection each | " + " | ".join(row) + " |")
    row = [f"{idle[n] / 1024:.2f} KiB" for n, _ in PROXIES]
    print(f"| memory per idle keep-alive client connection ({args.idle_conns} open) | " + " | ".join(row) + " |")
    dm, dlo, dhi = per("1m", "direct", 1e6)
    print(f"\nBackend alone (sendfile) per MiB: {dm:.0f} µs ({dlo:.0f}–{dhi:.0f}).")
    report_errors(results)


def h2_main(args, d, procs):
    """Small responses to h2 clients: 8 connections x 32 concurrent streams, over TLS and h2c."""
    results = {}
    # The baseline has the plain listener only, so it runs in the h2c scenario alone.
    h2c = dict(H2C, **({"ferroway-base": FERRO_BASE} if BASELINE else {}))
    scenarios = [("h2 (TLS)", "https", H2_TLS), ("h2c", "http", h2c)]
    try:
        for _, scheme, ports in scenarios:
            for name in ports:
                h2load(f"{scheme}://127.0.0.1:{ports[name]}/small", 8, 32, 1)
        for r in range(args.rounds):
            for scen, scheme, ports in scenarios:
                for name in ports:
                    m = measure_h2(procs[name], f"{scheme}://127.0.0.1:{ports[name]}/small", 8, 32, args.duration)
                    results.setdefault((scen, name), []).append(m)
                    print(f"round {r + 1} {scen:8} {name:8} reqs={m['reqs']:>8} cpu={m['cpu']:.2f}s mean={m['mean']:.0f}us failed={m['failed']}", file=sys.stderr)
    finally:
        stop_all(procs, d)
    print(f"# Ferroway HTTP/2 bench, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; h2load -c8 -m32; medians, min–max)\n")
    names = [n for n, _ in PROXIES]
    print("| figure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for scen, _, ports in scenarios:
        per = {n: [m["cpu"] / m["reqs"] * 1e6 for m in results[(scen, n)]] for n in ports}
        base = med(per["nginx"])
        row = [f"{med(per[n]):.1f} µs ({min(per[n]):.1f}–{max(per[n]):.1f}; {med(per[n]) / base:.2f}×)" if n in per else "–" for n in names]
        print(f"| CPU per small request, {scen} | " + " | ".join(row) + " |")
        row = [f"{med([m['mean'] for m in results[(scen, n)]]) / 1000:.2f} ms" if n in ports else "–" for n in names]
        print(f"| mean time per request, {scen} | " + " | ".join(row) + " |")
    failed = {k: sum(m["failed"] for m in v) for k, v in results.items() if any(m["failed"] for m in v)}
    if failed:
        print(f"\nFailed requests: {failed}")


def cache_main(args, d, procs):
    """The small response proxied, and answered from the cache."""
    ferroway_ab(args, d, procs, "Ferroway cache bench", [("proxied", "/small", ()), ("cache hit", "/c/small", ())])


SCALE_TARGETS, SCALE_ROUTES = 1000, 10000
WIDE_BASE = 20000  # the wide backend's first port
NGINX_SCALE = (18101, 18102)
FLOOR_SCALE = (18110, 18111)  # bench/floor.c in front of 1 and of 1 000 targets
SCALE_PORTS = {(1, 1): FERRO, (SCALE_ROUTES, 1): 18098, (1, SCALE_TARGETS): 18099, (SCALE_ROUTES, SCALE_TARGETS): 18100}
# With --baseline: the earlier build on the 1-route cases, in the same rounds.
SCALE_BASE_PORTS = {(1, 1): 18108, (1, SCALE_TARGETS): 18109}


def scale_main(args, d, procs):
    """Cost in configuration size: Ferroway with 1 or 10 000 routes, and an upstream of 1 or
    1 000 targets (one NGINX listening on 1 000 ports; round robin, so consecutive requests go
    to different targets and pools), one process per combination, the same request path."""
    listens = "".join(f"listen 127.0.0.1:{WIDE_BASE + i} backlog=4096; " for i in range(SCALE_TARGETS))
    wide = write(d, "wide.conf", f"""daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384; pid {d}/wide.pid; error_log {d}/wide.err warn;
events {{ worker_connections 16000; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  server {{ {listens} location = /small {{ default_type text/plain; return 200 "hello world\\n"; }} }} }}
""")
    # This scenario's own servers replace the shared Ferroway.
    procs["ferroway"].send_signal(signal.SIGTERM)
    procs["ferroway"].wait(timeout=10)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs["wide"] = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", wide, "-p", d], **quiet)
    middle = SCALE_ROUTES // 2
    cases = []
    for (nroutes, ntargets), port in SCALE_PORTS.items():
        targets = ", ".join(f"{{ address: 127.0.0.1:{WIDE_BASE + i} }}" for i in range(ntargets))
        # The requested route sits in the middle of the table.
        ids = range(nroutes) if nroutes > 1 else [middle]
        routes = "".join(f"  - {{ name: r{i}, match: {{ path_prefix: /r{i} }}, upstream: wide, strip_prefix: true }}\n" for i in ids)
        name = f"{nroutes} route{'s' if nroutes > 1 else ''}, {ntargets} target{'s' if ntargets > 1 else ''}"
        config = write(d, f"scale-{nroutes}-{ntargets}.yaml", f"""listeners: [{{ name: public, address: 127.0.0.1:{port} }}]
access_log: {{ output: off }}
upstreams: {{ wide: {{ targets: [{targets}], max_idle_per_target: 128 }} }}
routes:
{routes}""")
        procs[name] = subprocess.Popen(["taskset", "-c", "0", FERROWAY, "run", "--config", config], **quiet)
        cases.append((name, f"/r{middle}/small", (), name, port))
        if BASELINE and (nroutes, ntargets) in SCALE_BASE_PORTS:
            base_port = SCALE_BASE_PORTS[(nroutes, ntargets)]
            base_config = write(d, f"scale-base-{nroutes}-{ntargets}.yaml",
                                open(config).read().replace(f"127.0.0.1:{port} }}]", f"127.0.0.1:{base_port} }}]", 1))
            base_name = f"ferroway-base, {name}"
            procs[base_name] = subprocess.Popen(["taskset", "-c", "0", BASELINE, "run", "--config", base_config], **quiet)
            cases.append((base_name, f"/r{middle}/small", (), base_name, base_port))
    # NGINX as the proxy in front of the same 1 or 1 000 targets, for what the width itself
    # costs any proxy (NGINX's keepalive is per worker, not per server: room for all 1 000).
    for ntargets, port in ((1, NGINX_SCALE[0]), (SCALE_TARGETS, NGINX_SCALE[1])):
        servers = "".join(f"server 127.0.0.1:{WIDE_BASE + i}; " for i in range(ntargets))
        name = f"nginx, {ntargets} target{'s' if ntargets > 1 else ''}"
        conf = write(d, f"nginx-scale-{ntargets}.conf", f"""daemon off; master_process off; worker_processes 1; worker_rlimit_nofile 16384; pid {d}/ns{ntargets}.pid; error_log {d}/ns{ntargets}.err warn;
events {{ worker_connections 16000; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream wide {{ {servers} keepalive {max(128, 2 * ntargets)}; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://wide; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        procs[name] = subprocess.Popen(["taskset", "-c", "0", "nginx", "-c", conf, "-p", d], **quiet)
        cases.append((name, "/small", (), name, port))
    # The floor (bench/floor.c): the four system calls per request and nothing else, in front of
    # the same 1 or 1 000 targets; what the width costs it is the kernel's share, which any
    # proxy pays.
    floor = os.path.join(d, "floor")
    subprocess.run(["cc", "-O2", "-o", floor, os.path.join(ROOT, "bench", "floor.c")], check=True)
    for ntargets, port in ((1, FLOOR_SCALE[0]), (SCALE_TARGETS, FLOOR_SCALE[1])):
        name = f"floor, {ntargets} target{'s' if ntargets > 1 else ''}"
        procs[name] = subprocess.Popen(["taskset", "-c", "0", floor, str(port), str(WIDE_BASE), str(ntargets)], **quiet)
        cases.append((name, "/small", (), name, port))
    base_ports = SCALE_BASE_PORTS.values() if BASELINE else ()
    for port in (WIDE_BASE, WIDE_BASE + SCALE_TARGETS - 1, *SCALE_PORTS.values(), *base_ports, *NGINX_SCALE, *FLOOR_SCALE):
        wait_port(port, timeout=60)
    # Memory per idle pooled upstream connection: one client connection's requests go round
    # robin over the 1 000 targets, so each target ends with one pooled connection; RSS grown
    # over sockets opened (counted in /proc/PID/fd).
    wide_proc = procs[f"1 route, {SCALE_TARGETS} targets"]
    fds = lambda: len(os.listdir(f"/proc/{wide_proc.pid}/fd"))
    rss0, fds0 = rss_bytes(wide_proc.pid), fds()
    wrk(SCALE_PORTS[(1, SCALE_TARGETS)], f"/r{middle}/small", 1, 2)
    time.sleep(1.0)
    rss1, fds1 = rss_bytes(wide_proc.pid), fds()
    upstream_idle = (rss1 - rss0) / max(fds1 - fds0, 1)
    _, results = ferroway_ab(args, d, procs, "Ferroway cost in configuration size", cases)
    width_report(results)
    print(f"\nMemory per idle pooled upstream connection: {upstream_idle / 1024:.2f} KiB ({fds1 - fds0} connections opened, RSS +{(rss1 - rss0) / 1024:.0f} KiB).")


def width_report(results):
    """What 1 000 targets add per request over 1, for each proxy in the scale run, paired by
    round (each round's 1 000-target figure against the same round's 1-target figure: the
    machine's drift between rounds cancels), and Ferroway's part of it beyond the floor's."""
    wide = f"{SCALE_TARGETS} targets"
    pairs = [("ferroway", "1 route, 1 target", f"1 route, {wide}"),
             ("ferroway-base", "ferroway-base, 1 route, 1 target", f"ferroway-base, 1 route, {wide}"),
             ("nginx", "nginx, 1 target", f"nginx, {wide}"), ("floor", "floor, 1 target", f"floor, {wide}")]
    per = lambda label, key: [m[key] / m["reqs"] * 1e6 for m in results[label]]
    added = {}
    print(f"\n## What {SCALE_TARGETS} targets add per request (paired by round; medians, min–max)\n")
    print("| proxy | CPU per request, 1 target | added by the width | ratio | user space added |")
    print("|---|---|---|---|---|")
    for name, one, many in pairs:
        if one not in results or many not in results:
            continue
        a, b = per(one, "cpu"), per(many, "cpu")
        deltas = [y - x for x, y in zip(a, b)]
        ratios = [y / x for x, y in zip(a, b)]
        users = [y - x for x, y in zip(per(one, "user"), per(many, "user"))]
        added[name] = deltas
        print(f"| {name} | {med(a):.2f} µs | {med(deltas):+.2f} µs ({min(deltas):+.2f}–{max(deltas):+.2f}) | {med(ratios):.3f}× ({min(ratios):.3f}–{max(ratios):.3f}) | {med(users):+.2f} µs |")
    if "ferroway" in added and "floor" in added:
        beyond = [f - k for f, k in zip(added["ferroway"], added["floor"])]
        share = [x / c for x, c in zip(beyond, per("1 route, 1 target", "cpu"))]
        print(f"\nFerroway's width cost beyond the floor's (the kernel's share, which any proxy pays): {med(beyond):+.2f} µs "
              f"per request ({min(beyond):+.2f}–{max(beyond):+.2f}), {med(share) * 100:+.1f}% of its 1-target CPU per request.")


WORKER_PORTS = {"ferroway, 1 worker": 18103, "ferroway, 2 workers": 18104, "ferroway-base, 2 workers": 18105,
                "nginx, 1 worker": 18106, "nginx, 2 workers": 18107}


def workers_main(args, d, procs):
    """Capacity with one worker and with two: each proxy unpinned, wrk with two threads over
    128 connections on both cores, the backend on CPU 1 as always. Requests per second show
    what the second worker adds on this machine (the load generator takes a share of both
    cores); CPU per request shows what the workers cost each other, which is what decides how
    they scale on a machine with cores to spare."""
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = open(f"{d}/ferroway.yaml").read().replace(f"127.0.0.1:{H2_TLS['ferroway']}", "127.0.0.1:0")
    runs = [("ferroway, 1 worker", FERROWAY, 1), ("ferroway, 2 workers", FERROWAY, 2)]
    if BASELINE:
        runs.append(("ferroway-base, 2 workers", BASELINE, 2))
    for name, binary, n in runs:
        port = WORKER_PORTS[name]
        path = write(d, f"workers-{port}.yaml", f"workers: {n}\n" + config.replace(f"127.0.0.1:{FERRO}", f"127.0.0.1:{port}"))
        procs[name] = subprocess.Popen([binary, "run", "--config", path], **quiet)
    for n in (1, 2):
        name = f"nginx, {n} worker{'s' if n > 1 else ''}"
        port = WORKER_PORTS[name]
        conf = write(d, f"nginx-workers-{n}.conf", f"""daemon off; worker_processes {n}; worker_rlimit_nofile 16384; pid {d}/nw{n}.pid; error_log {d}/nw{n}.err warn;
events {{ worker_connections 16000; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        procs[name] = subprocess.Popen(["nginx", "-c", conf, "-p", d], **quiet)
    names = [n for n in WORKER_PORTS if n in procs]
    try:
        for name in names:
            wait_port(WORKER_PORTS[name])
    except BaseException:
        stop_all(procs, d)
        raise
    cases = [(name, "/small", (), name, WORKER_PORTS[name]) for name in names]
    results = interleaved(args, d, procs, cases, 128, cpus="0,1", threads=2)
    print(f"# Workers, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; small response, 128 conns, wrk -t2 and the proxy unpinned; medians)\n")
    print("| case | requests per second | CPU per request | p50 / p99 |")
    print("|---|---|---|---|")
    for name in names:
        rps = med([m["reqs"] / args.duration for m in results[name]])
        cpu = med([m["cpu"] / m["reqs"] * 1e6 for m in results[name]])
        p50 = med([m["p50"] for m in results[name]])
        p99 = med([m["p99"] for m in results[name]])
        rps = f"{rps:,.0f}".replace(",", " ")
        print(f"| {name} | {rps} | {cpu:.1f} µs | {p50:.0f} / {p99:.0f} µs |")
    report_errors(results)


def report_errors(results):
    """Lists the cases where a round saw non-2xx answers or socket errors."""
    bad = {k: sum(m["non2xx"] for m in v) for k, v in results.items() if any(m["non2xx"] or m["sock"] for m in v)}
    if bad:
        print(f"\nErrors seen (non-2xx counts): {bad}")


def interleaved(args, d, procs, cases, conns, **load):
    """Each (label, path, headers, process, port) case over `conns` keep-alive connections:
    a second's warm-up each, then `args.rounds` interleaved rounds; the measurements by label.
    Stops every server at the end."""
    results = {}
    try:
        for _, path, headers, _, port in cases:
            wrk(port, path, conns, 1, headers=headers, **load)
        for r in range(args.rounds):
            for label, path, headers, name, port in cases:
                m = measure(procs[name], port, path, conns, args.duration, headers=headers, **load)
                results.setdefault(label, []).append(m)
                print(f"round {r + 1} {label:24} reqs={m['reqs']:>8} cpu={m['cpu']:.2f}s p50={m['p50']:.0f}us p99={m['p99']:.0f}us non2xx={m['non2xx']} {m['sock']}", file=sys.stderr)
    finally:
        stop_all(procs, d)
    return results


def small_main(args, d, procs, close=False):
    """Small responses over 64 keep-alive connections (with `close`: a new connection for each
    request, 16 at once), every proxy, in interleaved rounds. Besides the medians, each proxy's
    CPU per request is divided by NGINX's of the same round: on a machine whose speed drifts
    from round to round, the per-round ratio moves far less than the figures it is made of."""
    cases = [(name, "/small", (), name, port) for name, port in PROXIES]
    conns = 16 if close else 64
    results = interleaved(args, d, procs, cases, conns, close=close)
    per = {n: [m["cpu"] / m["reqs"] * 1e6 for m in v] for n, v in results.items()}
    what = "Small requests, a new connection each" if close else "Small keep-alive requests"
    print(f"# {what}, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; {conns} conns; medians, min–max)\n")
    print("| proxy | CPU per request | ratio to NGINX's, per round | p50 / p99 |")
    print("|---|---|---|---|")
    for name, _ in PROXIES:
        ratios = [x / n for x, n in zip(per[name], per["nginx"])]
        p50 = med([m["p50"] for m in results[name]])
        p99 = med([m["p99"] for m in results[name]])
        print(f"| {name} | {med(per[name]):.1f} µs ({min(per[name]):.1f}–{max(per[name]):.1f}) | {med(ratios):.3f}× ({min(ratios):.3f}–{max(ratios):.3f}) | {p50:.0f} / {p99:.0f} µs |")
    report_errors(results)


def ferroway_ab(args, d, procs, title, cases):
    """Ferroway alone: each (label, path, headers[, process, port]) case over 64 keep-alive
    connections, rounds interleaved; CPU per request against the first case."""
    cases = [c if len(c) == 5 else (*c, "ferroway", FERRO) for c in cases]
    results = interleaved(args, d, procs, cases, 64)
    cpu = {n: med([m["cpu"] / m["reqs"] * 1e6 for m in v]) for n, v in results.items()}
    base = cases[0][0]
    print(f"# {title}, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; small response, 64 conns; medians)\n")
    # User space apart: the proxy's own code, where the kernel's part also grows with what the
    # load touches (1 000 upstream sockets taking turns, say).
    user = {n: med([m["user"] / m["reqs"] * 1e6 for m in v]) for n, v in results.items()}
    print(f"| case | CPU per request | CPU vs {base} | user space per request (vs {base}) | throughput per core vs {base} | p50 / p99 |")
    print("|---|---|---|---|---|---|")
    for label, *_ in cases:
        p50 = med([m["p50"] for m in results[label]])
        p99 = med([m["p99"] for m in results[label]])
        print(f"| {label} | {cpu[label]:.1f} µs | {cpu[label] / cpu[base]:.2f}× | {user[label]:.2f} µs ({user[label] / user[base]:.2f}×) | {cpu[base] / cpu[label] * 100:.0f}% | {p50:.0f} / {p99:.0f} µs |")
    report_errors(results)
    return cpu, results


def compress_main(args, d, procs):
    """1 MiB JSON responses over 8 keep-alive connections, compressed per algorithm."""
    codings = [("identity (no compression)", "ferroway", FERRO, "identity"), ("gzip", "ferroway", FERRO, "gzip"),
               ("zstd", "ferroway", FERRO, "zstd"), ("br", "ferroway", FERRO, "br"), ("gzip (NGINX, level 5)", "nginx", NGINX, "gzip")]
    cases = [(label, "/z/1m.json", (f"accept-encoding: {enc}",), name, port) for label, name, port, enc in codings]
    results = interleaved(args, d, procs, cases, 8)
    print(f"# Ferroway compression bench, {datetime.date.today()} ({args.rounds} interleaved rounds of {args.duration}s; 1 MiB JSON, 8 conns; medians, min–max)\n")
    print("| coding | proxy CPU per MiB of plain body |")
    print("|---|---|")
    for label, *_ in cases:
        xs = [m["cpu"] / m["reqs"] * 1e6 for m in results[label]]
        print(f"| {label} | {med(xs):.0f} µs ({min(xs):.0f}–{max(xs):.0f}) |")


if __name__ == "__main__":
    main()
