#!/usr/bin/env python3
"""tokex benchmark harness, called by bench/run.sh (which installs the tools and
builds tokex). Starts every server itself on 127.0.0.1, pinned to one core, drives
load from the other core, and writes a Markdown report. See docs/benchmarks.md.

Rows besides the single-worker proxies: "tokex JWT hit, 1 token (log on|off)", a
tokex with `inbound.jwt` whose user token is minted by a `tokex dev-sts` (also the
JWKS; started only when a JWT row is selected, idle on the server core); the harness
checks that token gets 200 and that no token, an unsigned one and a tampered
signature get 401 before measuring. "nginx proxy, 2 workers" and "tokex hit, 1 token,
2 workers (log off)" run on BENCH_WORKERS_CPUS (default: the server and the load
core, i.e. shared with the backend and the load generator on a 2-core machine):
saturation rps and CPU/request only, plus the rps scaling over one worker.
"tokex DPoP hit, ES256|EdDSA (log off)": a hit on a route whose server has `dpop:`
(the fast AS answers `token_type: DPoP` at /token-dpop), so every request carries a DPoP
proof tokex signs for it: the per-request signing cost of issue 17.
"tokex MCP route hit, RFC 9728 (log off)": a hit on a route with `resource_metadata`.
"tokex Txn-Token per request (log off)": `auth: transaction_token`, the fast AS answering a
Txn-Token at /token-txn: one token request (with an ES256 private_key_jwt assertion) per
request, nothing cached (issue 18). That route has no `inbound:` check, so every tokex
server logs one config warning for it at start. "tokex chain miss, new token each (log
off)": `exchange.chain` with both legs at the fast AS, a new subject token per request:
two token requests, then a forward.

Environment (run.sh sets the tool paths):
  BENCH_SECONDS (5)  ROUNDS (3)  BENCH_QUICK (0)  BENCH_RATE (5000)
  BENCH_CONNECTIONS (32)  BENCH_PORT_BASE (27000)  BENCH_SERVER_CPU (0)  BENCH_LOAD_CPU (1)
  BENCH_WORKERS_CPUS ("<server cpu>,<load cpu>": cores of the 2-worker servers)
  BENCH_RSS_FILLS ("100000,1000000"; quick: "100000")  BENCH_STARTS (5; quick: 3)
  BENCH_TARGETS (comma list of substrings of row names, default all; e.g. "JWT,2 workers,nginx proxy,1 token (log":
                the JWT and 2-worker rows and the rows they are compared with)
  BENCH_SKIP (comma list of: h1,fixed,h2,c1,rss,start)
  TOKEX OHA ENVOY WRK H2LOAD NGINX (binaries)  BENCH_WORK (scratch dir)  BENCH_RESULTS (output dir)

The authz rows (tokex answering Envoy ext_authz / nginx auth_request checks, CPU of
both processes counted) are in bench/authz.py; BENCH_TARGETS=authz runs them with the
rows they are compared with.
"""

import base64
import datetime
import http.client
import json
import os
import re
import resource
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import authz

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


QUICK = os.environ.get("BENCH_QUICK", "0") == "1"
SECONDS = float(os.environ.get("BENCH_SECONDS") or (2 if QUICK else 5))
ROUNDS = env_int("ROUNDS", 1 if QUICK else 3)
RATE = env_int("BENCH_RATE", 5000)
CONNS = env_int("BENCH_CONNECTIONS", 32)
PORT_BASE = env_int("BENCH_PORT_BASE", 27000)
SERVER_CPU = env_int("BENCH_SERVER_CPU", 0)
LOAD_CPU = env_int("BENCH_LOAD_CPU", 1)
WORKERS_CPUS = sorted({int(x) for x in (os.environ.get("BENCH_WORKERS_CPUS") or f"{SERVER_CPU},{LOAD_CPU}").split(",")
                       if x.strip()})
RSS_FILLS = [int(x) for x in (os.environ.get("BENCH_RSS_FILLS") or ("100000" if QUICK else "100000,1000000")).split(",") if x.strip()]
STARTS = env_int("BENCH_STARTS", 3 if QUICK else 5)
N_TOKENS = 10000
SKIP = set(x.strip() for x in os.environ.get("BENCH_SKIP", "").split(",") if x.strip())
ONLY = [x.strip() for x in os.environ.get("BENCH_TARGETS", "").split(",") if x.strip()]
WARM_SECONDS = 1

TOKEX = os.environ.get("TOKEX", str(REPO / "target/release/tokex"))
OHA = os.environ.get("OHA", str(HERE / ".tools/bin/oha"))
ENVOY = os.environ.get("ENVOY", "envoy")
WRK = os.environ.get("WRK", "wrk")
H2LOAD = os.environ.get("H2LOAD", "h2load")
NGINX = os.environ.get("NGINX", "nginx")
WORK = Path(os.environ.get("BENCH_WORK") or f"/tmp/tokex-bench-{os.getpid()}")
RESULTS = Path(os.environ.get("BENCH_RESULTS") or HERE / "results")
WRK_LUA = str(HERE / "wrk.lua")

PORTS = {
    "backend": PORT_BASE + 80, "backend_h2": PORT_BASE + 81, "as": PORT_BASE + 90,
    "nginx": PORT_BASE + 100, "nginx_h2": PORT_BASE + 101,
    "envoy": PORT_BASE + 200, "envoy_admin": PORT_BASE + 201,
    "tokex_on": PORT_BASE + 300, "tokex_on_admin": PORT_BASE + 301,
    "tokex_off": PORT_BASE + 310, "tokex_off_admin": PORT_BASE + 311,
    "miss_on": PORT_BASE + 320, "miss_on_admin": PORT_BASE + 321,
    "miss_off": PORT_BASE + 330, "miss_off_admin": PORT_BASE + 331,
    "fresh": PORT_BASE + 340, "fresh_admin": PORT_BASE + 341,
    "sts": PORT_BASE + 400,
    "jwt_on": PORT_BASE + 410, "jwt_on_admin": PORT_BASE + 411,
    "jwt_off": PORT_BASE + 420, "jwt_off_admin": PORT_BASE + 421,
    "nginx2": PORT_BASE + 500,
    "tokex2": PORT_BASE + 510, "tokex2_admin": PORT_BASE + 511,
}
JWT_AUDIENCE = "tokex"
authz.bind(sys.modules[__name__])  # its ports, base+600 … base+642

BACKEND_BODY = "ok tokex-bench backend\\n"
ISSUED_TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9." + "Z" * 180 + ".exchanged-" + "x" * 64
# What the AS answers the RSS-fill instance (at /token-jwt): a JWT-sized
# exchanged token of 800 bytes, the size the memory goal is stated for.
FILL_TOKEN = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9." + "Z" * 600 + ".fill-" + "x" * 153
assert len(FILL_TOKEN) == 800


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tokens

def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()


def jwt_like(sub):
    """A JWT-shaped subject token (unsigned garbage signature: tokex only peeks)."""
    head = b64({"alg": "RS256", "typ": "JWT"})
    body = b64({"iss": "https://as.bench", "sub": sub, "aud": "edge", "scope": "orders profile", "exp": 4102444800})
    sig = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


# --------------------------------------------------------------------------- processes

class Procs:
    """Every server this run starts; pids also go to WORK/pids for run.sh's trap."""

    def __init__(self):
        self.running = {}

    def start(self, name, argv, env=None, cpu=SERVER_CPU):
        """cpu: one core (int) or a set of cores the server may run on."""
        logf = open(WORK / f"{name}.log", "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        cpus = set(cpu) if isinstance(cpu, (set, frozenset, list, tuple)) else {cpu}
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=full_env,
                             preexec_fn=lambda: os.sched_setaffinity(0, cpus), start_new_session=True)
        logf.close()
        self.running[name] = p
        with open(WORK / "pids", "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop(self, name):
        p = self.running.pop(name, None)
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # nginx workers leave with their master; this group is gone: forget it.
        try:
            os.killpg(p.pid, 0)
        except OSError:
            pids = WORK / "pids"
            keep = [x for x in pids.read_text().split() if x != str(p.pid)]
            pids.write_text("".join(f"{x}\n" for x in keep))

    def stop_all(self):
        for name in list(self.running):
            try:
                self.stop(name)
            except Exception as e:  # keep cleaning up
                log(f"stopping {name}: {e}")


PROCS = Procs()


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def tree(pid):
    """pid and its direct children (nginx master + workers)."""
    pids = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                if int(rest[1]) == pid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            total += ticks(p)
        except OSError:
            pass
    return total / CLK


def core_stat(cpu):
    """(user+nice+system, steal) jiffies of one core from /proc/stat (irq and
    softirq time, e.g. loopback packet processing, left out: it is charged to no task)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[0] + v[1] + v[2], (v[7] if len(v) > 7 else 0)
    return 0, 0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http_get(port, path, timeout=1.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_http(port, path, name, proc, timeout=20.0, want=200):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {WORK}/{name}.log")
        try:
            if http_get(port, path, 0.5)[0] == want:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{name} not ready on :{port}{path} after {timeout}s; see {WORK}/{name}.log")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def metric(port, name):
    _, body = http_get(port, "/metrics", 30)
    total = 0.0
    found = False
    for line in body.decode().splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


# --------------------------------------------------------------------------- configs

def nginx_conf(name, servers, upstream="", workers=1):
    d = WORK / name
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    conf = f"""worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
{upstream}
{servers}
}}
"""
    path = d / "nginx.conf"
    path.write_text(conf)
    return [NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(path)]


def backend_argv():
    return nginx_conf("backend", f"""  server {{
    listen 127.0.0.1:{PORTS['backend']} backlog=4096;
    listen 127.0.0.1:{PORTS['backend_h2']} http2 backlog=4096;
    location / {{ default_type text/plain; return 200 "{BACKEND_BODY}"; }}
{authz.backend_location()}  }}""")


def as_argv():
    def answer(token):
        return json.dumps({
            "access_token": token,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 3600,
        })
    return nginx_conf("as", f"""  server {{
    listen 127.0.0.1:{PORTS['as']} backlog=4096;
    location = /token {{
      if ($request_method != POST) {{ return 405; }}
      default_type application/json;
      return 200 '{answer(ISSUED_TOKEN)}';
    }}
    location = /token-dpop {{
      if ($request_method != POST) {{ return 405; }}
      default_type application/json;
      return 200 '{answer(ISSUED_TOKEN).replace('"Bearer"', '"DPoP"')}';
    }}
    location = /token-txn {{
      if ($request_method != POST) {{ return 405; }}
      default_type application/json;
      return 200 '{answer(ISSUED_TOKEN).replace("token-type:access_token", "token-type:txn_token").replace('"Bearer"', '"N_A"')}';
    }}
    location = /token-jwt {{
      if ($request_method != POST) {{ return 405; }}
      default_type application/json;
      return 200 '{answer(FILL_TOKEN)}';
    }}
  }}""")


def nginx_proxy_argv(name, port, h2port=None, workers=1):
    h2 = f"\n    listen 127.0.0.1:{h2port} http2 backlog=4096;" if h2port else ""
    upstream = f"""  upstream backend {{
    server 127.0.0.1:{PORTS['backend']};
    keepalive 256;   # idle upstream connections kept: more than the 128 h2 streams in flight
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}"""
    return nginx_conf(name, f"""  server {{
    listen 127.0.0.1:{port} backlog=4096;{h2}
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}""", upstream, workers)


def envoy_argv():
    d = WORK / "envoy"
    d.mkdir(parents=True, exist_ok=True)
    conf = f"""admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PORTS['envoy_admin']} }} }}
static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PORTS['envoy']} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO            # HTTP/1.1 and h2c (prior knowledge) on one port
          use_remote_address: true    # append X-Forwarded-For, as nginx and tokex do
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PORTS['backend']} }} }} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options: {{}}   # HTTP/1.1 upstream, pooled connections
"""
    path = d / "envoy.yaml"
    path.write_text(conf)
    return [ENVOY, "-c", str(path), "--concurrency", "1", "--log-level", "warn",
            "--disable-hot-restart", "--use-dynamic-base-id"]


def txn_client_key():
    """tokex's private_key_jwt key at the Txn-Token service (EC P-256, made once)."""
    path = WORK / "txn-client.pem"
    if not path.exists():
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", str(path)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def tokex_conf(name, port, admin, max_entries=200000, token_path="/token"):
    conf = f"""runtime:
  workers: 1
  shutdown_grace: 2s
listen:
  address: 127.0.0.1:{port}
admin:
  address: 127.0.0.1:{admin}
authorization_servers:
  fast:
    token_endpoint: http://127.0.0.1:{PORTS['as']}{token_path}
    client_auth: {{ method: none, client_id: bench }}
    timeout: 2s
    retries: 0
  dpop_es256:
    token_endpoint: http://127.0.0.1:{PORTS['as']}/token-dpop
    client_auth: {{ method: none, client_id: bench }}
    dpop: {{ algorithm: ES256 }}
  dpop_eddsa:
    token_endpoint: http://127.0.0.1:{PORTS['as']}/token-dpop
    client_auth: {{ method: none, client_id: bench }}
    dpop: {{ algorithm: EdDSA }}
  partner:
    token_endpoint: http://127.0.0.1:{PORTS['as']}/token
    client_auth: {{ method: none, client_id: bench }}
  txn:
    token_endpoint: http://127.0.0.1:{PORTS['as']}/token-txn
    client_auth: {{ method: private_key_jwt, client_id: bench, private_key_file: {txn_client_key()} }}
cache:
  max_entries: {max_entries}
routes:
  - name: none
    match: {{ path_prefix: /none }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    auth: none
  - name: exchange
    match: {{ path_prefix: /x }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    auth: exchange
    exchange:
      authorization_server: fast
      audience: [bench-api]
      scope: [read]
      max_ttl: 1h
  - name: dpop-es256
    match: {{ path_prefix: /dpop-es256 }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    exchange: {{ authorization_server: dpop_es256, audience: [bench-api], max_ttl: 1h }}
  - name: dpop-eddsa
    match: {{ path_prefix: /dpop-eddsa }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    exchange: {{ authorization_server: dpop_eddsa, audience: [bench-api], max_ttl: 1h }}
  - name: mcp
    match: {{ path_prefix: /mcp }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    resource_metadata: {{ resource: "https://127.0.0.1:{port}/mcp", authorization_servers: ["http://127.0.0.1:{PORTS['as']}"] }}
    exchange: {{ authorization_server: fast, audience: [bench-api], scope: [read], max_ttl: 1h }}
  - name: chain
    match: {{ path_prefix: /chain }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    exchange: {{ authorization_server: fast, scope: [read], max_ttl: 1h, chain: {{ authorization_server: partner, scope: [read] }} }}
  - name: txn
    match: {{ path_prefix: /txn }}
    upstream: http://127.0.0.1:{PORTS['backend']}
    auth: transaction_token
    transaction_token: {{ authorization_server: txn, audience: bench.internal, scope: [read] }}
"""
    path = WORK / f"{name}.yaml"
    path.write_text(conf)
    return [TOKEX, "run", "-c", str(path)]


def tokex_conf_variant(name, port, admin, workers=1, inbound=""):
    """tokex_conf's config with `runtime.workers` set and an `inbound:` YAML section
    (or "") added, verified on every exchange route."""
    argv = tokex_conf(name, port, admin)
    path = Path(argv[-1])
    conf = path.read_text()
    for old, new in (("runtime:\n  workers: 1\n", f"runtime:\n  workers: {workers}\n"),
                     ("\ncache:\n", f"\n{inbound}cache:\n")):
        if old not in conf:
            raise RuntimeError(f"tokex_conf_variant: {old!r} not in {path}")
        conf = conf.replace(old, new, 1)
    path.write_text(conf)
    return argv


def jwt_inbound():
    """tokex's `inbound.jwt` against the dev-sts (ES256 keys from its JWKS)."""
    issuer = f"http://127.0.0.1:{PORTS['sts']}"
    return f"""inbound:
  jwt:
    issuer: {issuer}
    jwks_uri: {issuer}/jwks.json
    audiences: [{JWT_AUDIENCE}]
    algorithms: [ES256]
"""


def sts_argv(secret):
    """`tokex dev-sts`: the issuer of the JWT rows' user tokens and their JWKS (the
    exchange itself stays on the fast nginx AS)."""
    return [TOKEX, "dev-sts", "--listen", f"127.0.0.1:{PORTS['sts']}",
            "--client", f"id=bench,secret={secret},audiences=*,scopes=*", "--expires-in", "1h"]


def mint_jwt(secret, sub):
    """A user token signed by the dev-sts, valid 24 h (a full run is far shorter)."""
    argv = [TOKEX, "dev-sts", "mint", "--url", f"http://127.0.0.1:{PORTS['sts']}", "--client-id", "bench",
            "--sub", sub, "--aud", JWT_AUDIENCE, "--scope", "orders profile", "--expires-in", "24h"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30,
                       env=dict(os.environ, TOKEX_DEV_CLIENT_SECRET=secret))
    tok = r.stdout.strip()
    if r.returncode != 0 or tok.count(".") != 2:
        raise RuntimeError(f"tokex dev-sts mint failed ({r.returncode}): {r.stderr.strip()[:500]}")
    return tok


def tokex_env(log_on):
    return {"TOKEX_LOG": "info" if log_on else "warn", "TOKEX_LOG_FORMAT": "text"}


# --------------------------------------------------------------------------- load generators

def load(argv, timeout):
    full = ["taskset", "-c", str(LOAD_CPU)] + argv
    r = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return r.returncode, r.stdout


def parse_wrk(out):
    m = re.search(r"BENCHJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk produced no result:\n{out[-2000:]}")
    d = json.loads(m.group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    d["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    d["errors"] = d["connect"] + d["read"] + d["write"] + d["timeout"] + d["non2xx"]
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6)
    return d


def wrk_args(url, target, mode, conns, seconds, extra=()):
    argv = [WRK, "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", WRK_LUA]
    if target.get("header"):
        argv += ["-H", target["header"]]
    argv += [url, "--"] + list(mode) + list(extra)
    return argv


def run_wrk(target, conns, seconds, mode=None):
    mode = list(mode or target["mode"])
    if mode and mode[0] == "miss":
        mode = ["miss", "m" + secrets.token_hex(6)]
    rc, out = load(wrk_args(target["url"], target, mode, conns, seconds), seconds + 60)
    return parse_wrk(out)


def run_oha(target, seconds):
    argv = [OHA, "-z", f"{seconds}s", "-q", str(RATE), "-c", str(CONNS), "--latency-correction",
            "--no-tui", "--output-format", "json"]
    if target.get("header"):
        argv += ["-H", target["header"]]
    argv.append(target["url"])
    rc, out = load(argv, seconds + 60)
    start = out.find("{")
    try:
        d = json.loads(out[start:])
    except ValueError:
        raise RuntimeError(f"oha produced no JSON:\n{out[-2000:]}")
    pct = d.get("latencyPercentiles") or {}
    codes = d.get("statusCodeDistribution") or {}
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    total = sum(codes.values())
    # Requests cut off by the end of -z are not failures.
    errs = sum(v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k)
    return {"p50_ms": pct["p50"] * 1000, "p99_ms": pct["p99"] * 1000, "requests": total,
            "errors": (total - ok) + errs, "rps": d["summary"].get("requestsPerSec")}


def parse_h2load(out):
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    f = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (m and f and s):
        raise RuntimeError(f"h2load output not understood:\n{out[-2000:]}")
    done = int(m.group(3))
    failed = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    non2xx = int(s.group(2)) + int(s.group(3)) + int(s.group(4))
    return {"requests": done, "rps": float(f.group(3)), "errors": failed + non2xx}


def run_h2load(target, seconds=None, n=None):
    argv = [H2LOAD, "-t1", "-c8", "-m16"]
    argv += ["-n", str(n)] if n else ["-D", str(int(seconds))]
    if target.get("header"):
        argv += ["-H", target["header"]]
    argv.append(target["h2url"])
    rc, out = load(argv, (seconds or 30) + 60)
    return parse_h2load(out)


# --------------------------------------------------------------------------- targets

def targets(token, tokens_file, jwt_token="pending"):
    """Every target; jwt_token is the dev-sts user token of the JWT rows (a placeholder
    when only the names are wanted, before the dev-sts runs)."""
    auth = f"Authorization: Bearer {token}"
    jwt_auth = f"Authorization: Bearer {jwt_token}"
    base = "http://127.0.0.1:{}{}"
    t = []

    def add(name, group, port, path, pids, mode=("plain",), header=auth, h2port=None, fixed=True,
            c1=False, log=None, admin=None, cores=None):
        t.append({"name": name, "group": group, "url": base.format(port, path), "mode": mode, "header": header,
                  "pids": pids, "h2url": base.format(h2port, path) if h2port else None, "fixed": fixed,
                  "c1": c1, "log": log, "admin": admin, "cores": cores or [SERVER_CPU]})

    add("backend direct", "direct", PORTS["backend"], "/bench", "backend", h2port=PORTS["backend_h2"], c1=True)
    add("nginx proxy", "nginx", PORTS["nginx"], "/bench", "nginx", h2port=PORTS["nginx_h2"])
    add("envoy proxy", "envoy", PORTS["envoy"], "/bench", "envoy", h2port=PORTS["envoy"])
    for log_on in (True, False):
        sfx = " (log on)" if log_on else " (log off)"
        tk, mk = ("tokex_on", "miss_on") if log_on else ("tokex_off", "miss_off")
        add("tokex auth:none" + sfx, "tokex-none", PORTS[tk], "/none/bench", tk, h2port=PORTS[tk], log=tk)
        add("tokex hit, 1 token" + sfx, "tokex-hit", PORTS[tk], "/x/bench", tk, h2port=PORTS[tk], c1=log_on, log=tk)
        jk = "jwt_on" if log_on else "jwt_off"
        add("tokex JWT hit, 1 token" + sfx, "tokex-jwt", PORTS[jk], "/x/bench", jk, header=jwt_auth,
            h2port=PORTS[jk], log=jk)
        if not log_on:
            # A DPoP-bound token: one proof signed per request (issue 17).
            for alg in ("ES256", "EdDSA"):
                add(f"tokex DPoP hit, {alg}" + sfx, "tokex-dpop", PORTS[tk], f"/dpop-{alg.lower()}/bench", tk,
                    h2port=PORTS[tk], log=tk)
            # Issue 18: a hit on a route with RFC 9728 metadata (same path as any hit), and
            # a Txn-Token route (one token request, with a private_key_jwt assertion, per request).
            add("tokex MCP route hit, RFC 9728" + sfx, "tokex-mcp", PORTS[tk], "/mcp/bench", tk,
                h2port=PORTS[tk], log=tk)
            add("tokex Txn-Token per request" + sfx, "tokex-txn", PORTS[tk], "/txn/bench", tk, fixed=False,
                c1=True, log=tk)
        add("tokex hit, 10k tokens" + sfx, "tokex-10k", PORTS[tk], "/x/bench", tk, mode=("tokens", tokens_file),
            header=None, fixed=False, log=tk)
        add("tokex miss, new token each" + sfx, "tokex-miss", PORTS[mk], "/x/bench", mk, mode=("miss",),
            header=None, fixed=False, c1=log_on, log=mk, admin=PORTS[mk + "_admin"])
        if not log_on:
            # Identity chaining (issue 18): two token requests per new subject token.
            add("tokex chain miss, new token each" + sfx, "tokex-chain-miss", PORTS[mk], "/chain/bench", mk,
                mode=("miss",), header=None, fixed=False, c1=True, log=mk, admin=PORTS[mk + "_admin"])
    # Two workers, allowed on WORKERS_CPUS (default: both cores, shared with the load
    # generator and the backend): saturation rps and CPU/request only.
    add("nginx proxy, 2 workers", "nginx-2w", PORTS["nginx2"], "/bench", "nginx2", fixed=False, cores=WORKERS_CPUS)
    add("tokex hit, 1 token, 2 workers (log off)", "tokex-2w", PORTS["tokex2"], "/x/bench", "tokex2", fixed=False,
        log="tokex2", cores=WORKERS_CPUS)
    authz.targets(add)  # front proxy + tokex: pids is the two servers whose CPU is counted
    for x in t:
        x["log_on"] = "(log on)" in x["name"]
    return t


def measure(target, pidmap, rnd):
    """One target, one round: saturation (wrk), fixed rate (oha), h2c (h2load), c=1 latency.
    target["pids"]: the server whose CPU is counted, or a tuple of servers (all counted,
    and each one's share reported as cpu_us:<server>)."""
    names = target["pids"] if isinstance(target["pids"], tuple) else (target["pids"],)
    groups = {n: tree(pidmap[n]) for n in names}
    pids = [p for g in groups.values() for p in g]

    def split(key, before, n):  # each server's CPU µs/req, when more than one is counted
        if len(groups) > 1:
            res.update({f"{key}:{k}": (cpu_seconds(g) - before[k]) / max(n, 1) * 1e6 for k, g in groups.items()})

    def parts():
        return {k: cpu_seconds(g) for k, g in groups.items()}
    ours = [p for pid in pidmap.values() for p in tree(pid)]
    res = {}
    run_wrk(target, CONNS, WARM_SECONDS)  # warm pools and caches
    if "h1" not in SKIP:
        cores = target["cores"]

        def busy():
            return sum(core_stat(c)[0] for c in cores)

        def load_cpu():  # the load generator's CPU (wrk, a waited-for child)
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime
        c0, all0, busy0, steal0, l0, t0 = (cpu_seconds(pids), cpu_seconds(ours), busy(), core_stat(SERVER_CPU)[1],
                                           load_cpu(), time.monotonic())
        p0 = parts()
        w = run_wrk(target, CONNS, int(SECONDS))
        split("cpu_us", p0, w["requests"])
        c1, all1, busy1, steal1, l1, t1 = (cpu_seconds(pids), cpu_seconds(ours), busy(), core_stat(SERVER_CPU)[1],
                                           load_cpu(), time.monotonic())
        # Noise indicator: user+system time on the server core(s) not charged to
        # any bench server (nor to the load generator, when the cores include its
        # own: the 2-worker rows), i.e. other work on the machine, as a share of
        # those cores; and hypervisor steal.
        gen = (l1 - l0) if LOAD_CPU in cores else 0.0
        other = max(0.0, (busy1 - busy0) / CLK - (all1 - all0) - gen) / (t1 - t0) / len(cores) * 100
        res.update(rps=w["rps"], cpu_us=(c1 - c0) / max(w["requests"], 1) * 1e6, h1_errors=w["errors"],
                   h1_requests=w["requests"], other_pct=other, steal_pct=(steal1 - steal0) / CLK / (t1 - t0) * 100)
    if target["fixed"] and "fixed" not in SKIP:
        c0, p0 = cpu_seconds(pids), parts()
        o = run_oha(target, int(SECONDS))
        split("fixed_cpu_us", p0, o["requests"])
        c1 = cpu_seconds(pids)
        res.update(p50_ms=o["p50_ms"], p99_ms=o["p99_ms"], fixed_errors=o["errors"], fixed_rps=o["rps"],
                   fixed_cpu_us=(c1 - c0) / max(o["requests"], 1) * 1e6)
    if target["h2url"] and "h2" not in SKIP:
        run_h2load(target, n=5000)
        c0 = cpu_seconds(pids)
        h = run_h2load(target, seconds=SECONDS)
        c1 = cpu_seconds(pids)
        res.update(h2_rps=h["rps"], h2_cpu_us=(c1 - c0) / max(h["requests"], 1) * 1e6, h2_errors=h["errors"])
    if target["c1"] and "c1" not in SKIP:
        w = run_wrk(target, 1, int(SECONDS))
        res.update(c1_p50_ms=w["p50_us"] / 1000, c1_p99_ms=w["p99_us"] / 1000, c1_errors=w["errors"])
    return res


def check_log(target):
    """Counts warnings/errors in a tokex log, then empties it (access logs grow fast)."""
    if not target.get("log"):
        return 0
    path = WORK / f"{target['log']}.log"
    n = 0
    try:
        r = subprocess.run(["grep", "-c", "-E", r" (WARN|ERROR) ", str(path)], stdout=subprocess.PIPE, text=True)
        n = int(r.stdout.strip() or 0)
        if n:
            subprocess.run(["grep", "-m", "3", "-E", r" (WARN|ERROR) ", str(path)])
        os.truncate(path, 0)
    except (OSError, ValueError):
        pass
    return n


# --------------------------------------------------------------------------- tokex-only measurements

def start_to_ready():
    """exec to the first 200 from /readyz, polled every 1 ms; then idle RSS."""
    argv = tokex_conf("fresh", PORTS["fresh"], PORTS["fresh_admin"])
    times, rss = [], []
    for i in range(STARTS):
        t0 = time.perf_counter()
        p = PROCS.start("fresh", argv, env=tokex_env(True))
        ready = None
        while time.perf_counter() - t0 < 10:
            try:
                if http_get(PORTS["fresh_admin"], "/readyz", 0.2)[0] == 200:
                    ready = time.perf_counter() - t0
                    break
            except OSError:
                pass
            if p.poll() is not None:
                raise RuntimeError(f"tokex exited during start; see {WORK}/fresh.log")
            time.sleep(0.001)
        if ready is None:
            raise RuntimeError("tokex not ready within 10 s")
        times.append(ready * 1000)
        time.sleep(0.5)
        rss.append(rss_kib(p.pid))
        PROCS.stop("fresh")
    return times, rss


def rss_fill():
    """RSS with N cached tokens, filled by a miss-path run with distinct subjects."""
    out = []
    if not RSS_FILLS:
        return out
    argv = tokex_conf("fill", PORTS["fresh"], PORTS["fresh_admin"], max_entries=max(RSS_FILLS) * 2,
                      token_path="/token-jwt")
    p = PROCS.start("fill", argv, env=tokex_env(False))
    wait_http(PORTS["fresh_admin"], "/readyz", "fill", p)
    time.sleep(0.5)
    out.append((0, 0, rss_kib(p.pid)))
    have = 0
    prefix = "f" + secrets.token_hex(6)
    target = {"url": f"http://127.0.0.1:{PORTS['fresh']}/x/fill", "header": None}
    for n in sorted(RSS_FILLS):
        need = n - have
        argv = ["taskset", "-c", str(LOAD_CPU)] + wrk_args(target["url"], target, ["miss", f"{prefix}s{n}", str(need)],
                                                           CONNS, 3600)
        t0 = time.monotonic()
        w = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        last, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.5)
            done = metric(PORTS["fresh_admin"], "tokex_cache_entries") or 0
            if done >= n or (done == last and time.monotonic() - last_change > 5):
                break
            if done != last:
                last, last_change = done, time.monotonic()
        w.send_signal(signal.SIGINT)
        w.communicate(timeout=30)
        entries = metric(PORTS["fresh_admin"], "tokex_cache_entries") or 0
        time.sleep(0.5)
        kib = rss_kib(p.pid)
        log(f"fill {n}: {entries:.0f} entries in {time.monotonic() - t0:.0f}s, RSS {kib / 1024:.1f} MiB")
        out.append((n, int(entries), kib))
        have = int(done)
    PROCS.stop("fill")
    return out


def warm_tokens(tokens_file, port, admin, n):
    target = {"url": f"http://127.0.0.1:{port}/x/bench", "header": None}
    argv = ["taskset", "-c", str(LOAD_CPU)] + wrk_args(target["url"], target, ["tokens-seq", tokens_file], 8, 3600)
    w = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < 5:
        time.sleep(0.3)
        have = metric(admin, "tokex_cache_entries") or 0
        if have >= n:
            break
        if have != last:
            last, last_change = have, time.monotonic()
    w.send_signal(signal.SIGINT)
    w.communicate(timeout=30)
    entries = metric(admin, "tokex_cache_entries") or 0
    if entries < n:
        log(f"WARNING: only {entries:.0f} of {n} tokens cached on :{port}")
    return entries


# --------------------------------------------------------------------------- report

def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000 and nd <= 1:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def version(argv, pattern=None):
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20)
        out = r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"? ({e})"
    if pattern:
        m = re.search(pattern, out)
        return m.group(1) if m else out.splitlines()[0] if out else "?"
    return out.splitlines()[0] if out else "?"


def machine_info():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    git = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(), "cpu": model, "kernel": os.uname().release, "mem": mem,
        "tokex": version([TOKEX, "--version"], r"tokex (\S+)") + f" (git {git}{', src modified' if dirty else ''}"
                 + (", built by this run)" if os.environ.get("BENCH_BUILT") == "1" else ", binary as found: --no-build)"),
        "nginx": version([NGINX, "-v"], r"nginx/(\S+)"),
        "envoy": version([ENVOY, "--version"], r"version: \S+?/([\d.]+)"),
        "wrk": version([WRK, "-v"], r"(wrk \S+)"),
        "h2load": version([H2LOAD, "--version"], r"(nghttp2/\S+)"),
        "oha": version([OHA, "--version"]),
        "rustc": version(["rustc", "--version"]),
    }


def met(ok):
    return "**met**" if ok else "**missed**"


def report(rounds, order, startup, fills, info, t_start, t_end, load0, load1, anomalies, exch=None):
    by = {}
    for rnd in rounds:
        for name, res in rnd.items():
            by.setdefault(name, []).append(res)

    def m(name, key):
        return med([r.get(key) for r in by.get(name, [])])

    def rng(name, key):
        vals = [r.get(key) for r in by.get(name, []) if r.get(key) is not None]
        return (min(vals), max(vals)) if len(vals) > 1 else None

    date = datetime.datetime.fromtimestamp(t_start).strftime("%Y-%m-%d %H:%M")
    cmd = "bash bench/run.sh" + (" --quick" if QUICK else "")
    envs = f"BENCH_SECONDS={SECONDS:g} ROUNDS={ROUNDS}"
    if ONLY:
        envs += f" BENCH_TARGETS={shlex.quote(','.join(ONLY))}"
    if SKIP:
        envs += f" BENCH_SKIP={','.join(sorted(SKIP))}"
    L = []
    L.append(f"# tokex benchmark — {date}")
    L.append("")
    L.append(f"Reproduce: `{envs} {cmd}` (from the repository root). "
             f"{ROUNDS} round(s), {SECONDS:g} s per measurement, target order rotated each round; "
             f"values are medians over rounds (CPU range = min–max over rounds). Wall time {(t_end - t_start) / 60:.1f} min.")
    L.append("")
    L.append(f"Machine: {info['nproc']} cores, {info['cpu']}, {info['mem']}, Linux {info['kernel']}. "
             f"Load average before/after: {load0} / {load1}.")
    L.append(f"Tools: tokex {info['tokex']}; nginx {info['nginx']}; Envoy {info['envoy']}; {info['wrk']}; "
             f"h2load {info['h2load']}; {info['oha']}; {info['rustc']}.")
    L.append("")
    L.append(f"Every server is single-threaded (nginx `worker_processes 1`, Envoy `--concurrency 1`, tokex "
             f"`runtime.workers: 1`) and pinned to core {SERVER_CPU} — backend nginx and the fast AS too; the load "
             f"generators run on core {LOAD_CPU}. CPU/request is the proxy's own utime+stime from /proc/PID/stat "
             f"(all threads; nginx master+worker) over the run, divided by requests completed; the backend's CPU is "
             f"not included. nginx and Envoy run with no access log; tokex with its default `info` access log "
             f"written to a file (log on) and with `TOKEX_LOG=warn` (log off).")
    L.append("")
    cores = ",".join(map(str, WORKERS_CPUS))
    extra = []
    if any("JWT" in n for n in order):
        extra.append(f"The *JWT* rows' tokex has `inbound.jwt` (ES256 keys from the JWKS of a `tokex dev-sts` on core "
                     f"{SERVER_CPU}, fetched at start): every request's user token, minted by that dev-sts, is verified "
                     f"(signature, `exp`, `iss`, `aud`) before the cache lookup; the exchange itself is at the fast AS as "
                     f"for the other rows. Checked before measuring: that token gets 200, no token, an unsigned token "
                     f"and a tampered signature get 401.")
    if any("2 workers" in n for n in order):
        extra.append(f"The *2 workers* rows (nginx `worker_processes 2`, tokex `runtime.workers: 2`) may run on cores "
                     f"{cores} (`taskset -c {cores}`); the backend stays on core {SERVER_CPU} and the load generator on "
                     f"core {LOAD_CPU}" + (f": on this {info['nproc']}-core machine they share the cores with the load "
                                           f"generator and the backend, so these rows measure CPU per request and rps "
                                           f"under sharing, not ideal scaling." if LOAD_CPU in WORKERS_CPUS or
                                           SERVER_CPU in WORKERS_CPUS else "."))
    if any(n in order for n in authz.ROWS):
        extra.append("The *authz* rows (`… + tokex authz …`) are a front proxy asking tokex before each request: "
                     "their CPU/request counts **both** processes, the front proxy's and tokex's "
                     "([below](#tokex-behind-your-existing-proxy-authz)).")
    if extra:
        L.append(" ".join(extra))
        L.append("")
    L.append(f"## HTTP/1.1")
    L.append("")
    L.append(f"rps: `wrk -t1 -c{CONNS} -d{SECONDS:g}s` (saturation; core {SERVER_CPU} is shared by proxy and backend). "
             f"p50/p99: `oha -q {RATE} --latency-correction -c {CONNS} -z {SECONDS:g}s` (fixed rate, open model).")
    L.append("")
    L.append("| target | rps | CPU µs/req | CPU range | p50 ms @" + f"{RATE}" + " | p99 ms @" + f"{RATE}" + " | CPU µs/req @" + f"{RATE}" + " | other % |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in order:
        r = rng(name, "cpu_us")
        L.append(f"| {name} | {fmt(m(name, 'rps'), 0)} | {fmt(m(name, 'cpu_us'))} | "
                 f"{(fmt(r[0]) + '–' + fmt(r[1])) if r else '–'} | {fmt(m(name, 'p50_ms'), 3)} | "
                 f"{fmt(m(name, 'p99_ms'), 3)} | {fmt(m(name, 'fixed_cpu_us'))} | {fmt(m(name, 'other_pct'), 0)} |")
    L.append("")
    L.append(f"*other %*: share of core {SERVER_CPU}'s user+system time during the saturation run not charged to "
             f"any bench server, i.e. other work on the machine: a noise indicator. "
             f"Hypervisor steal on that core, median over all runs: "
             f"{fmt(med([r.get('steal_pct') for rnd in rounds for r in rnd.values()]), 1)} %.")
    L.append("")
    h2names = [n for n in order if m(n, "h2_rps") is not None]
    if h2names:
        L.append("## HTTP/2 (h2c prior knowledge, upstream HTTP/1.1)")
        L.append("")
        L.append(f"`h2load -t1 -c8 -m16 -D {SECONDS:g}` (saturation).")
        L.append("")
        L.append("| target | rps | CPU µs/req |")
        L.append("|---|---:|---:|")
        for name in h2names:
            L.append(f"| {name} | {fmt(m(name, 'h2_rps'), 0)} | {fmt(m(name, 'h2_cpu_us'))} |")
        L.append("")

    L.extend(authz.report(m, order, fmt, RATE, exch))

    # targets
    ng, ev = "nginx proxy", "envoy proxy"
    ng2, tk1, tk2 = "nginx proxy, 2 workers", "tokex hit, 1 token (log off)", "tokex hit, 1 token, 2 workers (log off)"
    L.append("## Targets (reported, not asserted)")
    L.append("")
    L.append("| target | measured | goal | result |")
    L.append("|---|---:|---:|---|")
    for sfx, goal in ((" (log on)", 1.35), (" (log off)", 1.2)):
        hit = "tokex hit, 1 token" + sfx
        if m(hit, "cpu_us") and m(ng, "cpu_us"):
            x = m(hit, "cpu_us") / m(ng, "cpu_us")
            L.append(f"| cache-hit CPU/req ÷ nginx{sfx} | {x:.2f}× | ≤ {goal:.2f}× | {met(x <= goal)} |")
        if m(hit, "cpu_us") and m(ev, "cpu_us"):
            x = m(hit, "cpu_us") / m(ev, "cpu_us")
            L.append(f"| cache-hit CPU/req ÷ Envoy{sfx} | {x:.2f}× | ≤ 0.25× | {met(x <= 0.25)} |")
        if m(hit, "p99_ms") is not None and m(ng, "p99_ms") is not None:
            d = m(hit, "p99_ms") - m(ng, "p99_ms")
            L.append(f"| cache-hit p99 @{RATE} − nginx p99{sfx} | {d:+.3f} ms | ≤ +0.300 ms | {met(d <= 0.3)} |")
    for sfx in (" (log off)", " (log on)"):
        jh = "tokex JWT hit, 1 token" + sfx
        if m(jh, "cpu_us") and m(ng, "cpu_us"):
            x = m(jh, "cpu_us") / m(ng, "cpu_us")
            if sfx == " (log off)":
                L.append(f"| JWT-validated hit CPU/req ÷ nginx{sfx} | {x:.2f}× | ≤ 1.40× | {met(x <= 1.4)} |")
            else:
                L.append(f"| JWT-validated hit CPU/req ÷ nginx{sfx} | {x:.2f}× | (goal is for log off) | reported |")
    big = [(n, entries, kib) for n, entries, kib in fills if n >= 1000000]
    if big:
        n, entries, kib = big[0]
        if entries >= 1000000:
            L.append(f"| RSS with 1M cached tokens | {kib / 1024:.0f} MiB | ≤ 1024 MiB | {met(kib <= 1024 * 1024)} |")
        else:
            L.append(f"| RSS with 1M cached tokens | fill reached {entries:,} ({kib / 1024:.0f} MiB) | ≤ 1024 MiB | "
                     f"not measured (fill short of 1M) |")
    elif fills:
        L.append(f"| RSS with 1M cached tokens | – | ≤ 1024 MiB | not measured (no 1,000,000 in BENCH_RSS_FILLS"
                 f"{', a --quick run' if QUICK else ''}) |")
    idle = None
    if startup:
        times, rss = startup
        idle = med(rss) / 1024
        L.append(f"| idle RSS | {idle:.1f} MiB | ≤ 15 MiB | {met(idle <= 15)} |")
        st = med(times)
        L.append(f"| start-to-ready | {st:.1f} ms | ≤ 100 ms | {met(st <= 100)} |")
    if m(tk2, "rps") and m(tk1, "rps"):
        x = m(tk2, "rps") / m(tk1, "rps")
        nx = f"; nginx {m(ng2, 'rps') / m(ng, 'rps'):.2f}×" if m(ng2, "rps") and m(ng, "rps") else ""
        shared = LOAD_CPU in WORKERS_CPUS or SERVER_CPU in WORKERS_CPUS
        where = f"on {info['nproc']} cores" if info["nproc"] <= 2 else f"with BENCH_WORKERS_CPUS={cores}"
        verdict = (f"not measurable {where} (the 2 workers share cores {cores} with the load generator and the "
                   f"backend)" if shared else met(x >= 1.8))
        L.append(f"| 2-worker scaling, rps(2 workers) ÷ rps(1 worker), log off | {x:.2f}×{nx} | ≥ 1.80× | {verdict} |")
    L.append("")
    L.append("Ratios (tokex ÷ nginx, tokex ÷ Envoy; CPU/request and saturation rps):")
    L.append("")
    L.append("| tokex target | CPU ÷ nginx | CPU ÷ Envoy | rps ÷ nginx | rps ÷ Envoy | h2 CPU ÷ nginx | h2 CPU ÷ Envoy |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "–"
    for name in order:
        if name.startswith("tokex"):
            # The 2-worker tokex row is compared with the 2-worker nginx (no 2-worker Envoy).
            two = "2 workers" in name
            rn, re_ = (ng2, None) if two else (ng, ev)
            label = f"{name} (÷ nginx, 2 workers)" if two else name
            L.append(f"| {label} | {ratio(m(name, 'cpu_us'), m(rn, 'cpu_us'))} | {ratio(m(name, 'cpu_us'), m(re_, 'cpu_us'))} | "
                     f"{ratio(m(name, 'rps'), m(rn, 'rps'))} | {ratio(m(name, 'rps'), m(re_, 'rps'))} | "
                     f"{ratio(m(name, 'h2_cpu_us'), m(rn, 'h2_cpu_us'))} | {ratio(m(name, 'h2_cpu_us'), m(re_, 'h2_cpu_us'))} |")
    L.append("")

    jrows = [(sfx, "tokex JWT hit, 1 token" + sfx, "tokex hit, 1 token" + sfx) for sfx in (" (log off)", " (log on)")]
    jrows = [r for r in jrows if m(r[1], "cpu_us")]
    if jrows:
        L.append("## JWT-validated route")
        L.append("")
        L.append("What verifying the caller's JWT adds to a cache hit (JWT hit − plain hit, same access-log setting; "
                 "– when the plain hit row was not run):")
        L.append("")
        L.append(f"| access log | CPU µs/req JWT hit | + over hit | rps ÷ hit | p50 ms @{RATE} + over hit | "
                 f"p99 ms @{RATE} + over hit |")
        L.append("|---|---:|---:|---:|---:|---:|")

        def delta(a, b, nd):
            return f"{a - b:+.{nd}f}" if a is not None and b is not None else "–"
        for sfx, jh, hit in jrows:
            L.append(f"| {sfx.strip(' ()')} | {fmt(m(jh, 'cpu_us'))} | {delta(m(jh, 'cpu_us'), m(hit, 'cpu_us'), 1)} | "
                     f"{ratio(m(jh, 'rps'), m(hit, 'rps'))} | {delta(m(jh, 'p50_ms'), m(hit, 'p50_ms'), 3)} | "
                     f"{delta(m(jh, 'p99_ms'), m(hit, 'p99_ms'), 3)} |")
        L.append("")

    wrows = [(n1, n2) for n1, n2 in ((ng, ng2), (tk1, tk2)) if m(n2, "rps")]
    if wrows:
        L.append("## Two workers")
        L.append("")
        shared = LOAD_CPU in WORKERS_CPUS or SERVER_CPU in WORKERS_CPUS
        L.append(f"nginx `worker_processes 2` and tokex `runtime.workers: 2` (log off) on cores {cores}; the backend "
                 f"on core {SERVER_CPU}, wrk on core {LOAD_CPU}"
                 + (f". On this {info['nproc']}-core machine the load generator and the backend share those cores with "
                    f"the two workers, so this measures CPU per request and rps under sharing, not ideal scaling."
                    if shared else "."))
        L.append("")
        L.append("| server | rps, 1 worker | rps, 2 workers | scaling (2 ÷ 1) | CPU µs/req, 1 worker | "
                 "CPU µs/req, 2 workers | other %, 2 workers |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for n1, n2 in wrows:
            L.append(f"| {'nginx proxy' if n1 == ng else 'tokex hit, 1 token (log off)'} | {fmt(m(n1, 'rps'), 0)} | {fmt(m(n2, 'rps'), 0)} | "
                     f"{ratio(m(n2, 'rps'), m(n1, 'rps'))}{'×' if m(n1, 'rps') else ''} | {fmt(m(n1, 'cpu_us'))} | "
                     f"{fmt(m(n2, 'cpu_us'))} | {fmt(m(n2, 'other_pct'), 0)} |")
        L.append("")
        t1, t2, n1r, n2r = m(tk1, "rps"), m(tk2, "rps"), m(ng, "rps"), m(ng2, "rps")
        if t1 and t2:
            L.append(f"Scaling: tokex rps(2 workers) ÷ rps(1 worker) = **{t2 / t1:.2f}×**"
                     + (f", nginx the same ratio = **{n2r / n1r:.2f}×**" if n1r and n2r else "")
                     + " (goal ≥ 1.80× for tokex"
                     + ("; not measurable with these cores shared)." if shared else ")."))
            L.append("")
        L.append(f"*other %* for these rows: the share of cores {cores}' user+system time not charged to a bench "
                 f"server nor to the load generator.")
        L.append("")

    L.append("## Memory and start-up (tokex)")
    L.append("")
    L.append("| measure | value |")
    L.append("|---|---:|")
    if startup:
        times, rss = startup
        L.append(f"| start-to-ready (exec → first 200 from admin `/readyz`, 1 ms polling), median of {len(times)} | "
                 f"{med(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}) |")
        L.append(f"| idle RSS 0.5 s after ready, median of {len(rss)} | {med(rss) / 1024:.1f} MiB |")
    base_kib = None
    for n, entries, kib in fills:
        if n == 0:
            base_kib = kib
            L.append(f"| RSS of the fill instance before filling | {kib / 1024:.1f} MiB |")
        else:
            per = f", ≈ {(kib - base_kib) * 1024 / entries:.0f} B/entry" if base_kib and entries else ""
            L.append(f"| RSS with {n:,} distinct tokens requested ({entries:,} cached, exchanged token "
                     f"{len(FILL_TOKEN)} B) | {kib / 1024:.1f} MiB{per} |")
    L.append("")

    L.append("## Exchange-miss added latency")
    L.append("")
    L.append(f"Closed loop, one connection (`wrk -t1 -c1 -d{SECONDS:g}s`), medians over rounds. The fast AS is a "
             f"second nginx (1 worker, core {SERVER_CPU}) answering `POST /token` with a fixed token JSON (`return 200`).")
    L.append("")
    L.append("| path | p50 ms | p99 ms |")
    L.append("|---|---:|---:|")
    rows = [("AS direct (POST /token)", "AS direct"), ("backend direct", "backend direct"),
            ("tokex hit, 1 token (log on)", "tokex hit, 1 token (log on)"),
            ("tokex miss, new token each (log on)", "tokex miss, new token each (log on)")]
    for label, name in rows:
        L.append(f"| {label} | {fmt(m(name, 'c1_p50_ms'), 3)} | {fmt(m(name, 'c1_p99_ms'), 3)} |")
    miss, asd = "tokex miss, new token each (log on)", "AS direct"
    hit = "tokex hit, 1 token (log on)"
    if m(miss, "c1_p50_ms") is not None and m(asd, "c1_p50_ms") is not None:
        L.append(f"| **miss − AS direct** (added by tokex on a miss, incl. forwarding to the backend) | "
                 f"**{m(miss, 'c1_p50_ms') - m(asd, 'c1_p50_ms'):.3f}** | **{m(miss, 'c1_p99_ms') - m(asd, 'c1_p99_ms'):.3f}** |")
    if m(miss, "c1_p50_ms") is not None and m(hit, "c1_p50_ms") is not None:
        L.append(f"| miss − hit (what the exchange costs the caller, AS time included) | "
                 f"{m(miss, 'c1_p50_ms') - m(hit, 'c1_p50_ms'):.3f} | {m(miss, 'c1_p99_ms') - m(hit, 'c1_p99_ms'):.3f} |")
    L.append("")
    L.append("## Anomalies")
    L.append("")
    L.extend(f"- {a}" for a in anomalies) if anomalies else L.append("- none recorded (no errors, no non-2xx, no tokex warnings)")
    L.append("")
    L.append("Per-round raw numbers: the `.raw.json` file next to this report (bench/results/).")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- main

def main():
    os.sched_setaffinity(0, {LOAD_CPU})
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    busy = [f"{k}:{v}" for k, v in PORTS.items() if not port_free(v)]
    if busy:
        raise SystemExit(f"ports in use: {busy}; set BENCH_PORT_BASE to another base")
    t_start = time.time()
    load0 = open("/proc/loadavg").read().split()[:3]
    info = machine_info()
    log(f"machine: {info['nproc']} cores, {info['cpu']}; {ROUNDS} round(s) of {SECONDS:g}s; work dir {WORK}")

    token = jwt_like("user-hit")
    tokens_file = WORK / "tokens.txt"
    tokens_file.write_text("\n".join(jwt_like(f"user-{i}") for i in range(N_TOKENS)) + "\n")

    startup = None
    if "start" not in SKIP:
        log("start-to-ready and idle RSS")
        startup = start_to_ready()

    def selected(ts):
        return authz.select(ts, [t for t in ts if any(o in t["name"] for o in ONLY)] if ONLY else ts)
    # The servers only the new rows use start only when one of their rows is selected.
    wanted = {p for t in selected(targets(token, str(tokens_file)))
              for p in (t["pids"] if isinstance(t["pids"], tuple) else (t["pids"],))}
    sts_secret = secrets.token_hex(16)

    log("starting servers")
    pidmap = {}
    servers = [
        ("backend", backend_argv(), None, (PORTS["backend"], "/")),
        ("as", as_argv(), None, None),
        ("nginx", nginx_proxy_argv("nginx", PORTS["nginx"], PORTS["nginx_h2"]), None, (PORTS["nginx"], "/")),
        ("envoy", envoy_argv(), None, (PORTS["envoy_admin"], "/ready")),
        ("tokex_on", tokex_conf("tokex_on", PORTS["tokex_on"], PORTS["tokex_on_admin"]), tokex_env(True),
         (PORTS["tokex_on_admin"], "/readyz")),
        ("tokex_off", tokex_conf("tokex_off", PORTS["tokex_off"], PORTS["tokex_off_admin"]), tokex_env(False),
         (PORTS["tokex_off_admin"], "/readyz")),
        ("miss_on", tokex_conf("miss_on", PORTS["miss_on"], PORTS["miss_on_admin"], 2000000), tokex_env(True),
         (PORTS["miss_on_admin"], "/readyz")),
        ("miss_off", tokex_conf("miss_off", PORTS["miss_off"], PORTS["miss_off_admin"], 2000000), tokex_env(False),
         (PORTS["miss_off_admin"], "/readyz")),
    ]
    if wanted & {"jwt_on", "jwt_off"}:
        # dev-sts first: the JWT instances are ready once they hold its JWKS. It
        # stays up (idle) so the background JWKS refresh keeps succeeding.
        servers.append(("sts", sts_argv(sts_secret), None, (PORTS["sts"], "/jwks.json")))
        for k, log_on in (("jwt_on", True), ("jwt_off", False)):
            if k in wanted:
                servers.append((k, tokex_conf_variant(k, PORTS[k], PORTS[k + "_admin"], inbound=jwt_inbound()),
                                tokex_env(log_on), (PORTS[k + "_admin"], "/readyz")))
    if "nginx2" in wanted:
        servers.append(("nginx2", nginx_proxy_argv("nginx2", PORTS["nginx2"], workers=2), None,
                        (PORTS["nginx2"], "/"), WORKERS_CPUS))
    if "tokex2" in wanted:
        servers.append(("tokex2", tokex_conf_variant("tokex2", PORTS["tokex2"], PORTS["tokex2_admin"], workers=2),
                        tokex_env(False), (PORTS["tokex2_admin"], "/readyz"), WORKERS_CPUS))
    servers += authz.servers(wanted)
    for name, argv, env, ready, *cpus in servers:
        p = PROCS.start(name, argv, env=env, cpu=cpus[0] if cpus else SERVER_CPU)
        pidmap[name] = p.pid
        if ready:
            wait_http(ready[0], ready[1], name, p)
    p = PROCS.running["as"]
    deadline = time.monotonic() + 20
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORTS["as"], timeout=1)
            c.request("POST", "/token", body="grant_type=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError(f"AS not ready; see {WORK}/as.log")
        time.sleep(0.01)

    # Sanity: each proxy answers 200 through to the backend, tokex exchanges.
    for name, port, path in (("nginx", PORTS["nginx"], "/bench"), ("envoy", PORTS["envoy"], "/bench"),
                             ("tokex", PORTS["tokex_on"], "/none/bench")):
        st, body = http_get(port, path)
        if st != 200 or b"ok" not in body:
            raise RuntimeError(f"{name} did not proxy: {st} {body[:200]!r}")
    def get(port, path, auth=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            c.request("GET", path, headers={"Authorization": auth} if auth else {})
            r = c.getresponse()
            return r.status, r.getheader("WWW-Authenticate") or "", r.read()
        finally:
            c.close()
    st, _, body = get(PORTS["tokex_on"], "/x/bench", f"Bearer {token}")
    if st != 200:
        raise RuntimeError(f"tokex exchange route answered {st}: {body[:300]!r}")
    if "nginx2" in wanted:
        st, _, body = get(PORTS["nginx2"], "/bench")
        if st != 200 or b"ok" not in body:
            raise RuntimeError(f"nginx (2 workers) did not proxy: {st} {body[:200]!r}")
    if "tokex2" in wanted:
        st, _, body = get(PORTS["tokex2"], "/x/bench", f"Bearer {token}")
        if st != 200 or b"ok" not in body:
            raise RuntimeError(f"tokex (2 workers) exchange route answered {st}: {body[:300]!r}")
    authz.check(pidmap, token, get)
    jwt_token = "pending"
    if "sts" in pidmap:
        jwt_token = mint_jwt(sts_secret, "user-jwt")
        head, payload, sig = jwt_token.split(".")
        tampered = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
        for k in ("jwt_on", "jwt_off"):
            if k not in pidmap:
                continue
            # The row must really validate: the dev-sts token passes (200 through to
            # the backend); no token, the plain rows' token (not signed by the
            # dev-sts) and the token with its signature altered are refused 401.
            st, _, body = get(PORTS[k], "/x/bench", f"Bearer {jwt_token}")
            if st != 200 or b"ok" not in body:
                raise RuntimeError(f"tokex JWT route ({k}) answered {st} to a dev-sts token: {body[:300]!r}")
            for what, auth, want in (("no token", None, ""), ("an unsigned token", f"Bearer {token}", "invalid_token"),
                                     ("a tampered signature", f"Bearer {tampered}", "invalid_token")):
                st, www, body = get(PORTS[k], "/x/bench", auth)
                if st != 401 or want not in www:
                    raise RuntimeError(f"tokex JWT route ({k}) answered {st} ({www!r}) to {what}, not 401: "
                                       f"inbound validation is not on")
            rejected = metric(PORTS[k + "_admin"], "tokex_inbound_rejections_total") or 0
            if rejected < 2:
                raise RuntimeError(f"tokex JWT route ({k}): tokex_inbound_rejections_total is {rejected}, not 2")
            log(f"{k}: dev-sts token 200; no token, unsigned and tampered tokens 401")

    all_targets = targets(token, str(tokens_file), jwt_token)
    all_targets.append({"name": "AS direct", "group": "as", "url": f"http://127.0.0.1:{PORTS['as']}/token",
                        "mode": ("as",), "header": None, "pids": "as", "h2url": None, "fixed": False,
                        "c1": True, "log": None, "admin": None, "only_c1": True})
    all_targets = selected(all_targets)
    order = [t["name"] for t in all_targets if not t.get("only_c1")]

    if any(t["group"] == "tokex-10k" for t in all_targets):
        for k in ("tokex_on", "tokex_off"):
            log(f"warming {N_TOKENS} tokens on {k}")
            warm_tokens(str(tokens_file), PORTS[k], PORTS[k + "_admin"], N_TOKENS)

    anomalies = []
    rounds = []
    for rnd in range(ROUNDS):
        shift = (rnd * len(all_targets)) // max(ROUNDS, 1)
        seq = all_targets[shift:] + all_targets[:shift]
        log(f"round {rnd + 1}/{ROUNDS}: {', '.join(t['name'] for t in seq)}")
        results = {}
        for t in seq:
            if t.get("only_c1"):
                if "c1" in SKIP:
                    continue
                w = run_wrk(t, 1, int(SECONDS))
                res = {"c1_p50_ms": w["p50_us"] / 1000, "c1_p99_ms": w["p99_us"] / 1000, "c1_errors": w["errors"]}
            else:
                res = measure(t, pidmap, rnd)
            for k, v in res.items():
                if k.endswith("errors") and v:
                    anomalies.append(f"round {rnd + 1}, {t['name']}: {v} failed/non-2xx responses ({k})")
            if res.get("fixed_rps") and res["fixed_rps"] < 0.97 * RATE:
                anomalies.append(f"round {rnd + 1}, {t['name']}: fixed-rate run reached only "
                                 f"{res['fixed_rps']:.0f} of {RATE} rps (saturated: its p50/p99 are queueing)")
            nwarn = check_log(t)
            if nwarn:
                anomalies.append(f"round {rnd + 1}, {t['name']}: {nwarn} WARN/ERROR lines in tokex's log")
            results[t["name"]] = res
            log(f"  {t['name']}: " + ", ".join(f"{k}={v:.3g}" for k, v in res.items() if isinstance(v, float)))
        rounds.append(results)

    exch = authz.exchanges(pidmap)
    for name, pid in pidmap.items():
        if PROCS.running.get(name) and PROCS.running[name].poll() is not None:
            anomalies.append(f"{name} exited during the run (code {PROCS.running[name].returncode})")
    for name in ("nginx", "envoy", "tokex_on", "tokex_off", "miss_on", "miss_off", "jwt_on", "jwt_off", "nginx2",
                 "tokex2", "sts") + authz.SERVERS:
        PROCS.stop(name)

    fills = []
    if "rss" not in SKIP:
        log(f"RSS fill: {RSS_FILLS}")
        fills = rss_fill()  # needs the backend and the AS
    PROCS.stop_all()

    t_end = time.time()
    load1 = open("/proc/loadavg").read().split()[:3]
    md = report(rounds, order, startup, fills, info, t_start, t_end, " ".join(load0), " ".join(load1), anomalies, exch)
    stamp = datetime.datetime.fromtimestamp(t_start).strftime("%Y-%m-%d-%H%M%S") + ("-quick" if QUICK else "")
    out = RESULTS / f"{stamp}.md"
    out.write_text(md)
    (RESULTS / f"{stamp}.raw.json").write_text(json.dumps(
        {"rounds": rounds, "startup": startup, "fills": fills, "info": info, "anomalies": anomalies, "exchanges": exch,
         "seconds": SECONDS, "rounds_n": ROUNDS, "rate": RATE, "connections": CONNS}, indent=1))
    print(md)
    log(f"written {out}")


if __name__ == "__main__":
    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started in the background (SIGINT ignored)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    finally:
        PROCS.stop_all()
