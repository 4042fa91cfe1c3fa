#!/usr/bin/env python3
"""Fleet run of the tokex benchmark (`bash bench/run.sh --fleet`): three tokex
replicas with and without `cache.shared`, one real redis-server, a counting fast
AS and an nginx backend, all on 127.0.0.1 (free ports, servers pinned to one core,
load from the other). Measures how many exchanges reach the AS for 10,000 distinct
subjects each sent to all three replicas, and the per-request latency of a local
hit, a shared-store hit and an exchange. Prints a Markdown report and writes it to
bench/results/<date>-fleet.md. See docs/benchmarks.md, "Fleet run (cache.shared)".

Environment (run.sh sets the tool paths):
  FLEET_SUBJECTS (10000)  FLEET_CONCURRENCY (16: subjects in flight in the count runs)
  FLEET_ROUNDS (3: rounds of the latency passes, new subjects each)
  FLEET_STORE_TIMEOUT (50ms: cache.shared.timeout)  BENCH_SERVER_CPU (0)  BENCH_LOAD_CPU (1)
  TOKEX WRK NGINX REDIS_SERVER REDIS_CLI (binaries)  BENCH_WORK (scratch dir)  BENCH_RESULTS (output dir)

The counting AS is bench/fleet_as.py (started by the run).
"""

import asyncio
import datetime
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ in the tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the harness: process handling, tokens, nginx configs, wrk)
from bench import PROCS, WORK, log  # noqa: E402

N = bench.env_int("FLEET_SUBJECTS", 10000)
CONC = bench.env_int("FLEET_CONCURRENCY", 16)
ROUNDS = bench.env_int("FLEET_ROUNDS", 3)
STORE_TIMEOUT = os.environ.get("FLEET_STORE_TIMEOUT") or "50ms"
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("REDIS_CLI", "redis-cli")
REPLICAS = 3
PATH = "/x/fleet"


# --------------------------------------------------------------------------- helpers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def as_stats(port):
    return json.loads(bench.http_get(port, "/stats", 30)[1])


def metrics(port, name):
    """{frozenset(labels): value} of one metric family from a tokex admin listener."""
    _, body = bench.http_get(port, "/metrics", 30)
    out = {}
    for line in body.decode().splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in (" ", "{"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', rest.split("}")[0])) if rest.startswith("{") else frozenset()
        out[labels] = out.get(labels, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def fleet_metrics(admins, name):
    """One family summed over the replicas."""
    total = {}
    for a in admins:
        for k, v in metrics(a, name).items():
            total[k] = total.get(k, 0.0) + v
    return total


def delta(after, before):
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def total(d, **want):
    return sum(v for k, v in d.items() if all((lk, lv) in k for lk, lv in want.items()))


def tokens(tag, n):
    return [bench.jwt_like(f"fleet-{tag}-{i}") for i in range(n)]


def cpu(pid):
    return bench.cpu_seconds(bench.tree(pid))


# --------------------------------------------------------------------------- servers

def start_backend_and_as(ports):
    argv = bench.nginx_conf("fleet-backend", f"""  server {{
    listen 127.0.0.1:{ports['backend']} backlog=4096;
    location / {{ default_type text/plain; return 200 "{bench.BACKEND_BODY}"; }}
  }}""")
    p = PROCS.start("fleet-backend", argv)
    bench.wait_http(ports["backend"], "/", "fleet-backend", p)
    p = PROCS.start("fleet-as", [sys.executable, str(Path(__file__).resolve().parent / "fleet_as.py"), str(ports["as"])])
    bench.wait_http(ports["as"], "/stats", "fleet-as", p)


def start_redis(port):
    argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", str(WORK), "--logfile", ""]
    p = PROCS.start("fleet-redis", argv)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"redis-server exited with {p.returncode}; see {WORK}/fleet-redis.log")
        r = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), "PING"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
        if r.stdout.strip() == "PONG":
            return p
        time.sleep(0.05)
    raise RuntimeError("redis-server not ready")


def redis_cmd(port, *args):
    return subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port)] + list(args), stdout=subprocess.PIPE,
                          text=True, timeout=30).stdout.strip()


def tokex_conf(name, port, admin, ports, shared):
    store = ""
    if shared:
        store = (f'  shared: {{ url: "redis://127.0.0.1:{ports["redis"]}/0", timeout: {STORE_TIMEOUT}, '
                 f'key_prefix: "tokex-bench:" }}\n')
    conf = f"""runtime:
  workers: 1
  shutdown_grace: 2s
listen:
  address: 127.0.0.1:{port}
  max_connections: 4096   # the default (20000) warns when `ulimit -n` is lower
admin:
  address: 127.0.0.1:{admin}
authorization_servers:
  fast:
    token_endpoint: http://127.0.0.1:{ports['as']}/token
    client_auth: {{ method: none, client_id: bench }}
    timeout: 2s
    retries: 0
cache:
  max_entries: 200000
{store}routes:
  - name: exchange
    match: {{ path_prefix: /x }}
    upstream: http://127.0.0.1:{ports['backend']}
    auth: exchange
    exchange:
      authorization_server: fast
      audience: [bench-api]
      scope: [read]
      max_ttl: 1h
"""
    path = WORK / f"{name}.yaml"
    path.write_text(conf)
    return [bench.TOKEX, "run", "-c", str(path)]


def start_replicas(ports, shared):
    tag = "shared" if shared else "local"
    reps = []
    for r in range(REPLICAS):
        name = f"fleet-{tag}-{r + 1}"
        port, admin = free_port(), free_port()
        p = PROCS.start(name, tokex_conf(name, port, admin, ports, shared), env=bench.tokex_env(True))
        bench.wait_http(admin, "/readyz", name, p)
        reps.append({"name": name, "port": port, "admin": admin, "pid": p.pid})
    # One exchange through each, so connection set-up is not in the figures
    # (these warm-up subjects are counted nowhere: the AS stats are reset after).
    for r in reps:
        st, body = get(r["port"], bench.jwt_like(f"warm-{r['name']}"))
        if st != 200:
            raise RuntimeError(f"{r['name']} answered {st}: {body[:300]!r}")
    return reps


def get(port, token):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def warn_lines(reps):
    """WARN/ERROR lines in the replicas' logs (then emptied)."""
    found = []
    for r in reps:
        path = WORK / f"{r['name']}.log"
        try:
            for line in path.read_text(errors="replace").splitlines():
                if re.search(r" (WARN|ERROR) ", line):
                    found.append(f"{r['name']}: {line[:300]}")
            os.truncate(path, 0)
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------- load: every subject to every replica

async def http_req(conn, port, token):
    reader, writer = conn
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    length, chunked = 0, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def drive(reps, toks, concurrent):
    """Every token to all replicas: in turn (r, r+1, r+2 for subject r, each after the
    previous answered) or all three at the same moment. CONC subjects in flight, each
    worker with one keep-alive connection per replica."""
    ports = [r["port"] for r in reps]
    statuses, lat = Counter(), []
    it = iter(enumerate(toks))

    async def one(conns, k, tok):
        t0 = time.perf_counter()
        try:
            st = await http_req(conns[k], ports[k], tok)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            st = f"error: {type(e).__name__}"
            conns[k] = await asyncio.open_connection("127.0.0.1", ports[k])
        lat.append(time.perf_counter() - t0)
        statuses[st] += 1

    async def worker():
        conns = [await asyncio.open_connection("127.0.0.1", p) for p in ports]
        for i, tok in it:
            order = [(i + k) % len(ports) for k in range(len(ports))]
            if concurrent:
                await asyncio.gather(*(one(conns, k, tok) for k in order))
            else:
                for k in order:
                    await one(conns, k, tok)
        for _, w in conns:
            w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONC)))
    return statuses, lat, time.perf_counter() - t0


def count_run(reps, ports, tag, concurrent):
    admins = [r["admin"] for r in reps]
    toks = tokens(tag, N)
    as_stats(ports["as"])  # reset
    ex0 = fleet_metrics(admins, "tokex_exchanges_total")
    sh0 = fleet_metrics(admins, "tokex_shared_cache_operations_total")
    lk0 = fleet_metrics(admins, "tokex_cache_lookups_total")
    statuses, lat, wall = asyncio.run(drive(reps, toks, concurrent))
    time.sleep(0.5)  # background writes to the store
    ex = delta(fleet_metrics(admins, "tokex_exchanges_total"), ex0)
    sh = delta(fleet_metrics(admins, "tokex_shared_cache_operations_total"), sh0)
    lk = delta(fleet_metrics(admins, "tokex_cache_lookups_total"), lk0)
    st = as_stats(ports["as"])
    lat.sort()
    res = {"tag": tag, "concurrent": concurrent, "requests": sum(statuses.values()),
           "non200": sum(v for k, v in statuses.items() if k != 200), "statuses": {str(k): v for k, v in statuses.items()},
           "as_calls": st["calls"], "as_distinct": st["distinct"], "as_per_subject": st["per_subject"],
           "exchanges": {"/".join(f"{a}={b}" for a, b in sorted(k)): v for k, v in ex.items()},
           "exchanges_total": sum(ex.values()), "store_ops": {"/".join(f"{a}={b}" for a, b in sorted(k)): v for k, v in sh.items()},
           "local_hits": total(lk, result="hit"), "local_misses": total(lk, result="miss"),
           "wall_s": wall, "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}
    log(f"  {tag}: {res['requests']} requests ({res['non200']} not 200), AS calls {res['as_calls']} "
        f"({res['as_distinct']} subjects, per subject {res['as_per_subject']}), tokex exchanges {res['exchanges_total']:.0f}, "
        f"{wall:.1f}s")
    return res


# --------------------------------------------------------------------------- latency: wrk, one connection

def wrk_pass(rep, tokens_file, n, others):
    """wrk -t1 -c1, each token of the file once in order (Lua tokens-seq); stopped once
    the replica has answered them all. CPU of the replica and of `others` (pids) too."""
    target = {"url": f"http://127.0.0.1:{rep['port']}{PATH}", "header": None}
    argv = ["taskset", "-c", str(bench.LOAD_CPU)] + bench.wrk_args(target["url"], target, ["tokens-seq", tokens_file], 1, 3600)
    lk0 = metrics(rep["admin"], "tokex_cache_lookups_total")
    sh0 = metrics(rep["admin"], "tokex_shared_cache_operations_total")
    du0 = metrics(rep["admin"], "tokex_shared_cache_duration_seconds_sum")
    dc0 = metrics(rep["admin"], "tokex_shared_cache_duration_seconds_count")
    req0 = sum(metrics(rep["admin"], "tokex_requests_total").values())
    c0 = {p: cpu(p) for p in [rep["pid"]] + others}
    w = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        last, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.2)
            done = sum(metrics(rep["admin"], "tokex_requests_total").values()) - req0
            if done >= n:
                break
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > 10:
                log(f"  wrk stalled at {done:.0f} of {n}")
                break
        time.sleep(0.3)  # the last answer reaches wrk
        c1 = {p: cpu(p) for p in c0}
        w.send_signal(signal.SIGINT)
        out, _ = w.communicate(timeout=30)
    finally:
        if w.poll() is None:  # interrupted or failed: wrk goes too
            w.kill()
            w.wait()
    d = bench.parse_wrk(out)
    lk = delta(metrics(rep["admin"], "tokex_cache_lookups_total"), lk0)
    sh = delta(metrics(rep["admin"], "tokex_shared_cache_operations_total"), sh0)
    du = delta(metrics(rep["admin"], "tokex_shared_cache_duration_seconds_sum"), du0)
    dc = delta(metrics(rep["admin"], "tokex_shared_cache_duration_seconds_count"), dc0)
    reqs = max(d["requests"], 1)
    return {"requests": d["requests"], "errors": d["errors"], "p50_ms": d["p50_us"] / 1000, "p90_ms": d["p90_us"] / 1000,
            "p99_ms": d["p99_us"] / 1000, "mean_ms": d["mean_us"] / 1000, "max_ms": d["max_us"] / 1000,
            "local_hits": total(lk, result="hit"), "local_misses": total(lk, result="miss"),
            "store_ops": {"/".join(f"{a}={b}" for a, b in sorted(k)): v for k, v in sh.items()},
            "store_mean_ms": {dict(k).get("op"): du[k] / dc[k] * 1000 for k in du if dc.get(k)},
            "cpu_us": (c1[rep["pid"]] - c0[rep["pid"]]) / reqs * 1e6,
            "others_cpu_us": {p: (c1[p] - c0[p]) / reqs * 1e6 for p in others}}


def latency_runs(reps, ports, shared, redis_pid):
    """ROUNDS rounds, new subjects each: exchange at replica r (local and store miss); with
    the store, the same subjects at the next replica (store hits), then there again (local
    hits). Per class: the passes of every round."""
    out = {"exchange": [], "shared hit": [], "local hit": []}
    as_pid = PROCS.running["fleet-as"].pid
    others = [as_pid] + ([redis_pid] if redis_pid else [])
    for rnd in range(ROUNDS):
        tag = f"lat-{'shared' if shared else 'local'}-{rnd + 1}"
        f = WORK / f"{tag}.txt"
        f.write_text("\n".join(tokens(tag, N)) + "\n")
        ex, rd = reps[rnd % len(reps)], reps[(rnd + 1) % len(reps)]
        as_stats(ports["as"])
        put0 = total(metrics(ex["admin"], "tokex_shared_cache_operations_total"), op="put")
        passes = [("exchange", ex)] + ([("shared hit", rd), ("local hit", rd)] if shared else [])
        for name, rep in passes:
            if name == "shared hit":
                # replica `ex` writes to the store in the background: wait for all N
                deadline = time.monotonic() + 30
                while (total(metrics(ex["admin"], "tokex_shared_cache_operations_total"), op="put") - put0 < N
                       and time.monotonic() < deadline):
                    time.sleep(0.1)
            r = wrk_pass(rep, str(f), N, others)
            r["as_calls"] = as_stats(ports["as"])["calls"]
            r["replica"] = rep["name"]
            out[name].append(r)
            log(f"  {tag} {name} at {rep['name']}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
                f"AS calls {r['as_calls']}")
    return {k: v for k, v in out.items() if v}


def agg(passes):
    """The passes of one class over the rounds: medians, the p99 range, summed checks."""
    if not passes:
        return None
    med = lambda key: statistics.median(p[key] for p in passes)  # noqa: E731
    ops = Counter()
    for p in passes:
        ops.update(p["store_ops"])
    pids = set().union(*(p["others_cpu_us"] for p in passes))
    get_ms = [p["store_mean_ms"]["get"] for p in passes if p["store_mean_ms"].get("get") is not None]
    return {"rounds": len(passes), "requests": sum(p["requests"] for p in passes),
            "errors": sum(p["errors"] for p in passes),
            **{k: med(k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_us")},
            "p99_min": min(p["p99_ms"] for p in passes), "p99_max": max(p["p99_ms"] for p in passes),
            "local_hits": sum(p["local_hits"] for p in passes), "local_misses": sum(p["local_misses"] for p in passes),
            "as_calls": sum(p["as_calls"] for p in passes), "store_ops": dict(ops),
            "store_get_ms": statistics.median(get_ms) if get_ms else None,
            "others_cpu_us": {pid: statistics.median(p["others_cpu_us"].get(pid, 0.0) for p in passes) for pid in pids}}


def as_direct(ports, seconds=3):
    target = {"url": f"http://127.0.0.1:{ports['as']}/token", "header": None}
    rc, out = bench.load(bench.wrk_args(target["url"], target, ["as"], 1, seconds), seconds + 60)
    d = bench.parse_wrk(out)
    as_stats(ports["as"])
    return {"requests": d["requests"], "p50_ms": d["p50_us"] / 1000, "p90_ms": d["p90_us"] / 1000,
            "p99_ms": d["p99_us"] / 1000, "mean_ms": d["mean_us"] / 1000, "errors": d["errors"]}


# --------------------------------------------------------------------------- report

def n0(v):
    return "–" if v is None else f"{v:,.0f}"


def ms(v):
    return "–" if v is None else f"{v:.3f}"


def report(counts, lat, asd, info, t0, t1, load0, load1, anomalies):
    date = datetime.datetime.fromtimestamp(t0).strftime("%Y-%m-%d %H:%M")
    L = [f"# tokex fleet run (cache.shared) — {date}", ""]
    L.append(f"Reproduce: `bash bench/run.sh --fleet` (from the repository root). {N:,} subjects per run, "
             f"{CONC} subjects in flight in the count runs, `cache.shared.timeout: {STORE_TIMEOUT}`. "
             f"Wall time {(t1 - t0) / 60:.1f} min.")
    L.append("")
    L.append(f"Machine: {info['nproc']} cores, {info['cpu']}, Linux {info['kernel']}. Load average before/after: "
             f"{load0} / {load1}. Tools: tokex {info['tokex']}; {info['redis']}; nginx {info['nginx']}; {info['wrk']}; "
             f"Python {info['python']}.")
    L.append("")
    L.append(f"Three tokex replicas (`runtime.workers: 1`, access log on), one `redis-server` (`--save \"\" "
             f"--appendonly no`, a free port), the counting AS (Python asyncio, one fixed token JSON, counts calls per "
             f"subject token) and the backend (nginx, `return 200`) all run on 127.0.0.1, pinned to core "
             f"{bench.SERVER_CPU}; the load generators run on core {bench.LOAD_CPU}. Each run uses {N:,} new subjects "
             f"(JWT-shaped tokens, a distinct `sub` each).")
    L.append("")
    L.append("## AS calls: every subject sent to all 3 replicas")
    L.append("")
    L.append(f"Python asyncio client, {CONC} subjects in flight, one keep-alive connection per replica per worker. "
             f"*In turn*: subject i goes to replica i mod 3, then the next, then the next, each request sent when the "
             f"previous one answered. *At once*: the three requests of a subject are sent at the same moment. AS calls "
             f"are counted by the AS; `tokex_exchanges_total` is summed over the 3 replicas (all outcomes).")
    L.append("")
    L.append("| cache.shared | traffic | requests (not 200) | **AS calls** | tokex_exchanges_total | subjects seen by the AS | subjects by AS calls (calls: subjects) | AS calls ÷ subject | local hits | client p50 / p99 ms | wall s |")
    L.append("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for c in counts:
        per = ", ".join(f"{k}: {v:,}" for k, v in sorted(c["as_per_subject"].items(), key=lambda kv: int(kv[0])))
        L.append(f"| {'on' if c['shared'] else 'off'} | {'at once' if c['concurrent'] else 'in turn'} | "
                 f"{c['requests']:,} ({c['non200']}) | **{c['as_calls']:,}** | {n0(c['exchanges_total'])} | "
                 f"{c['as_distinct']:,} | {per} | {c['as_calls'] / N:.3f} | {n0(c['local_hits'])} | "
                 f"{ms(c['p50_ms'])} / {ms(c['p99_ms'])} | {c['wall_s']:.1f} |")
    L.append("")
    L.append("Store operations in the `cache.shared` runs (`tokex_shared_cache_operations_total`, sum over the replicas):")
    L.append("")
    L.append("| traffic | operations (op/result: count) |")
    L.append("|---|---|")
    for c in counts:
        if c["shared"]:
            ops = ", ".join(f"{k.replace('op=', '').replace('/result=', '/')}: {v:,.0f}" for k, v in sorted(c["store_ops"].items()))
            L.append(f"| {'at once' if c['concurrent'] else 'in turn'} | {ops} |")
    L.append("")
    for c in counts:
        if c["shared"] and c["as_calls"] > c["as_distinct"]:
            extra = c["as_calls"] - c["as_distinct"]
            L.append(f"*{'At once' if c['concurrent'] else 'In turn'}*: {extra:,} extra exchange{'s' if extra != 1 else ''} "
                     "(subjects exchanged by more than one replica; see the store operations above).")
            L.append("")
    L.append("## Latency: local hit, shared-store hit, exchange")
    L.append("")
    L.append(f"`wrk -t1 -c1` (closed loop, one keep-alive connection, wrk's own per-request latency record), each of "
             f"{N:,} new subject tokens once, in order (`bench/wrk.lua` mode `tokens-seq`); {ROUNDS} rounds, new subjects "
             f"and the next pair of replicas each round (replica r exchanges, replica r+1 reads the store, then its own "
             f"cache). Values are medians over the rounds (p99 range = min–max). Every request is also forwarded to the "
             f"backend, so the differences between rows are what the cache layers add. CPU µs/req: the replica's "
             f"utime+stime over a pass divided by its requests; AS and redis CPU likewise (their own processes). "
             f"*check*: summed over the rounds, from the replica's metrics and the AS's count.")
    L.append("")
    L.append("| path | what the request does | requests | p50 ms | p90 ms | p99 ms | p99 range | mean ms | replica CPU µs/req | AS CPU µs/req | redis CPU µs/req | check |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    sh = {k: agg(v) for k, v in lat.get("shared", {}).items()}
    lo = {k: agg(v) for k, v in lat.get("local", {}).items()}
    as_pid = lat.get("as_pid")
    redis_pid = lat.get("redis_pid")

    def row(label, what, r):
        if not r:
            return
        oc = r["others_cpu_us"]
        ops = ", ".join(f"{k.replace('op=', '').replace('/result=', ' ')} {v:,.0f}" for k, v in sorted(r["store_ops"].items()))
        check = (f"local hit {r['local_hits']:,.0f} / miss {r['local_misses']:,.0f}; AS calls {r['as_calls']:,}"
                 + (f"; store: {ops}" if ops else "") + (f"; {r['errors']} failed" if r["errors"] else ""))
        L.append(f"| {label} | {what} | {r['requests']:,} | {ms(r['p50_ms'])} | {ms(r['p90_ms'])} | {ms(r['p99_ms'])} | "
                 f"{ms(r['p99_min'])}–{ms(r['p99_max'])} | {ms(r['mean_ms'])} | {r['cpu_us']:.1f} | {oc.get(as_pid, 0):.1f} | "
                 f"{(f'{oc[redis_pid]:.1f}') if redis_pid in oc else '–'} | {check} |")
    row("(a) local hit", "replica r+1, second pass: its own cache", sh.get("local hit"))
    row("(b) shared hit", "replica r+1, first pass, after replica r exchanged: local miss, store `GET` hit, unseal",
        sh.get("shared hit"))
    row("(c) exchange, cache.shared on", "replica r, new subject: local miss, store `GET` miss, `SET NX PX` lease, AS "
        "(then, in the background, `SET` of the sealed value and the lease cut to 250 ms)", sh.get("exchange"))
    row("(c′) exchange, no cache.shared", "replica r of the fleet without the store, new subject: local miss, AS",
        lo.get("exchange"))
    if asd:
        L.append(f"| AS direct | `POST /token` to the counting AS (`wrk -c1 -d3s`, mode `as`), once | {asd['requests']:,} | "
                 f"{ms(asd['p50_ms'])} | {ms(asd['p90_ms'])} | {ms(asd['p99_ms'])} | – | {ms(asd['mean_ms'])} | – | – | – | |")
    L.append("")

    def diff(a, b, label):
        if a and b:
            L.append(f"| {label} | {a['p50_ms'] - b['p50_ms']:+.3f} | {a['p99_ms'] - b['p99_ms']:+.3f} | "
                     f"{a['mean_ms'] - b['mean_ms']:+.3f} | {a['cpu_us'] - b['cpu_us']:+.1f} |")
    L.append("| difference (medians) | p50 ms | p99 ms | mean ms | replica CPU µs/req |")
    L.append("|---|---:|---:|---:|---:|")
    diff(sh.get("shared hit"), sh.get("local hit"), "**shared hit − local hit** (what a store hit adds)")
    diff(sh.get("exchange"), sh.get("shared hit"), "exchange (store on) − shared hit (a fleet-wide miss over a store hit)")
    diff(sh.get("exchange"), lo.get("exchange"), "exchange with the store − without (store `GET` miss + lease on a miss)")
    L.append("")
    if sh.get("shared hit"):
        L.append(f"Store `GET` time seen by the reading replica during (b) (`tokex_shared_cache_duration_seconds`, "
                 f"sum ÷ count, median over rounds): {ms(sh['shared hit']['store_get_ms'])} ms.")
        L.append("")
    L.append("## Anomalies")
    L.append("")
    L.extend(f"- {a}" for a in anomalies) if anomalies else L.append("- none recorded (no failed or non-200 requests, no WARN/ERROR lines in the replicas' logs)")
    L.append("")
    return "\n".join(L) + "\n"


def info_():
    def first(argv, pattern):
        return bench.version(argv, pattern)
    git = first(["git", "-C", str(bench.REPO), "rev-parse", "--short", "HEAD"], None)
    dirty = subprocess.run(["git", "-C", str(bench.REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                           stdout=subprocess.PIPE, text=True).stdout.strip()
    cpu_model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": cpu_model, "kernel": os.uname().release,
            "tokex": first([bench.TOKEX, "--version"], r"tokex (\S+)") + f" (git {git}{', src modified' if dirty else ''}"
            + (", built by this run)" if os.environ.get("BENCH_BUILT") == "1" else ", binary as found: --no-build)"),
            "redis": first([REDIS_SERVER, "--version"], r"(Redis server v=\S+)"),
            "nginx": first([bench.NGINX, "-v"], r"nginx/(\S+)"), "wrk": first([bench.WRK, "-v"], r"(wrk \S+)"),
            "python": sys.version.split()[0]}


# --------------------------------------------------------------------------- main

def main():
    os.sched_setaffinity(0, {bench.LOAD_CPU})
    WORK.mkdir(parents=True, exist_ok=True)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    load0 = " ".join(open("/proc/loadavg").read().split()[:3])
    info = info_()
    log(f"fleet run: {REPLICAS} replicas, {N} subjects per run; work dir {WORK}")
    ports = {"backend": free_port(), "as": free_port(), "redis": free_port()}
    start_backend_and_as(ports)
    counts, lat, anomalies = [], {"as_pid": PROCS.running["fleet-as"].pid}, []

    for shared in (False, True):
        redis_pid = None
        if shared:
            redis_pid = start_redis(ports["redis"]).pid
            lat["redis_pid"] = redis_pid
        log(f"3 replicas, cache.shared {'on' if shared else 'off'}")
        reps = start_replicas(ports, shared)
        as_stats(ports["as"])
        for concurrent in (False, True):
            tag = f"{'shared' if shared else 'local'}-{'once' if concurrent else 'turn'}"
            res = count_run(reps, ports, tag, concurrent)
            res["shared"] = shared
            counts.append(res)
            if res["non200"]:
                anomalies.append(f"{tag}: {res['non200']} requests not answered 200: {res['statuses']}")
        lat["shared" if shared else "local"] = latency_runs(reps, ports, shared, redis_pid)
        anomalies += warn_lines(reps)[:20]
        for r in reps:
            if PROCS.running[r["name"]].poll() is not None:
                anomalies.append(f"{r['name']} exited during the run")
            PROCS.stop(r["name"])
    log("AS direct")
    asd = as_direct(ports)
    PROCS.stop_all()
    t1 = time.time()
    load1 = " ".join(open("/proc/loadavg").read().split()[:3])
    md = report(counts, lat, asd, info, t0, t1, load0, load1, anomalies)
    stamp = datetime.datetime.fromtimestamp(t0).strftime("%Y-%m-%d-%H%M%S") + "-fleet"
    out = bench.RESULTS / f"{stamp}.md"
    out.write_text(md)
    (bench.RESULTS / f"{stamp}.raw.json").write_text(json.dumps(
        {"counts": counts, "latency": lat, "as_direct": asd, "info": info, "anomalies": anomalies,
         "subjects": N, "concurrency": CONC, "store_timeout": STORE_TIMEOUT}, indent=1, default=str))
    print(md)
    log(f"written {out}")


if __name__ == "__main__":
    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    finally:
        PROCS.stop_all()
