"""Event-to-purge latency of Shared Signals revocation (issue 16).

Two tokex replicas share a redis-server; the development authorization server
(`tokex dev-sts`) signs a CAEP session-revoked SET per subject and pushes it to
replica A. Prints how long the push took to be answered (A purged before its
202) and how long until replica B dropped its local copy (its
tokex_cache_purged_total{source="replica"} moved). Everything on 127.0.0.1,
free ports, a temporary directory.

    python3 bench/revocation_latency.py target/release/tokex
"""
import json, re, socket, subprocess, sys, tempfile, time, urllib.request, statistics
BIN = sys.argv[1]
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
d = tempfile.mkdtemp(prefix="tokex-revocation-")
procs = []
rp = free()
procs.append(subprocess.Popen(["redis-server", "--port", str(rp), "--bind", "127.0.0.1", "--save", ""], stdout=subprocess.DEVNULL))
sp = free()
procs.append(subprocess.Popen([BIN, "dev-sts", "--listen", f"127.0.0.1:{sp}", "--client", "id=gw,secret=s,audiences=*,scopes=*", "--client", "id=cli,secret=c,audiences=*,scopes=*"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
be = free()
procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(be), "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d))
time.sleep(1)
sts = f"http://127.0.0.1:{sp}"
gws = []
for name in "ab":
    lp, ap = free(), free()
    cfg = f"""listen: {{ address: "127.0.0.1:{lp}" }}
admin: {{ address: "127.0.0.1:{ap}" }}
authorization_servers:
  dev: {{ token_endpoint: {sts}/token, client_auth: {{ method: client_secret_basic, client_id: gw, client_secret: s }} }}
cache: {{ shared: {{ url: "redis://127.0.0.1:{rp}/0", key_prefix: "lat:" }} }}
revocation:
  ssf: {{ issuer: {sts}, jwks_uri: {sts}/jwks.json, audience: tokex }}
routes:
  - {{ name: r, match: {{ path_prefix: / }}, upstream: "http://127.0.0.1:{be}", exchange: {{ authorization_server: dev, audience: [api], scope: [read] }} }}
"""
    open(f"{d}/{name}.yaml", "w").write(cfg)
    procs.append(subprocess.Popen([BIN, "-c", f"{d}/{name}.yaml", "--log", "warn"], stderr=open(f"{d}/{name}.log", "w")))
    gws.append((lp, ap))
time.sleep(1.5)
def get(url, token=None, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    if token: req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r: return r.status, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, e.read().decode()
def metric(ap):
    _, text = get(f"http://127.0.0.1:{ap}/metrics")
    m = re.search(r'tokex_cache_purged_total\{source="replica"\} (\d+)', text)
    return int(m.group(1)) if m else 0
local, remote = [], []
for i in range(40):
    sub = f"user-{i}"
    tok = subprocess.run([BIN, "dev-sts", "mint", "--url", sts, "--client-id", "cli", "--client-secret", "c", "--sub", sub, "--aud", "tokex", "--scope", "read"], capture_output=True, text=True).stdout.strip()
    for lp, _ in gws:
        s, _ = get(f"http://127.0.0.1:{lp}/x", tok); assert s in (200, 404), s
        time.sleep(0.05)
    before = metric(gws[1][1])
    push = f"http://127.0.0.1:{gws[0][0]}/.well-known/ssf/push"
    t0 = time.perf_counter()
    st, body = get(f"{sts}/ssf/emit", data=f"sub={sub}&audience=tokex&push={push}".encode(), headers={"Authorization": "Basic Y2xpOmM=", "Content-Type": "application/x-www-form-urlencoded"})
    t1 = time.perf_counter()
    assert st == 200 and json.loads(body)["status"] == 202, body
    while metric(gws[1][1]) == before:
        if time.perf_counter() - t0 > 2: raise SystemExit("B not purged within 2 s")
        time.sleep(0.002)
    t2 = time.perf_counter()
    local.append((t1 - t0) * 1000); remote.append((t2 - t0) * 1000)
    time.sleep(0.05 + (i % 7) * 0.023)  # spread the pushes over the 200 ms poll
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
print(f"push to A answered 202 (signing and push included): median {statistics.median(local):.2f} ms, p95 {q(local, .95):.2f} ms, max {max(local):.2f} ms")
print(f"B's local copy purged: median {statistics.median(remote):.1f} ms, p95 {q(remote, .95):.1f} ms, max {max(remote):.1f} ms (n={len(remote)})")
for p in procs: p.terminate()
