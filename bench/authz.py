"""The authz rows of bench/bench.py: tokex behind a proxy a team already runs
(SPEC §8), next to that proxy alone and tokex as the proxy.

  envoy + tokex authz HTTP   Envoy with HTTP ext_authz (examples/authz/envoy-http.yaml)
  envoy + tokex authz gRPC   Envoy with gRPC ext_authz (examples/authz/envoy-grpc.yaml)
  nginx + tokex authz        nginx auth_request (examples/authz/nginx.conf, with
                             keepalive upstreams: see nginx_argv)

The front proxies' configs are the examples' files with the ports substituted
(and the admin listener bench.py waits on), so the bench checks the examples too.
tokex answers the checks from a check-only config (`authz:`, no `listen:`, no
`upstream:`) that is otherwise the cache-hit rows' config: same fast AS, same
exchange route, one caller token, cached before measuring (a cache-hit steady
state), access log off (TOKEX_LOG=warn) like Envoy's and nginx's.

CPU per request of these rows is the front proxy's and tokex's CPU together (each
process's utime+stime, nginx master+worker), over the requests completed; the
backend's is not counted, as for every row. The split per process is reported too.

Selecting any authz row (BENCH_TARGETS=authz) also selects the rows they are
compared with: envoy proxy, nginx proxy (with the nginx row) and tokex hit, 1 token
(log off); those rows then also get the c=1 latency measurement (in a full run too).

bench.py calls bind(itself) first; everything else here reads its helpers via B.
"""

from pathlib import Path

B = None  # the bench module (bench.py as __main__)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "authz"

ENVOY_HTTP = "envoy + tokex authz HTTP (log off; CPU of both)"
ENVOY_GRPC = "envoy + tokex authz gRPC (log off; CPU of both)"
NGINX_AR = "nginx + tokex authz auth_request (log off; CPU of both)"
ROWS = (ENVOY_HTTP, ENVOY_GRPC, NGINX_AR)
# Each authz row and the rows it is compared with.
COMPANIONS = {ENVOY_HTTP: ("envoy proxy", "tokex hit, 1 token (log off)"),
              ENVOY_GRPC: ("envoy proxy", "tokex hit, 1 token (log off)"),
              NGINX_AR: ("nginx proxy", "tokex hit, 1 token (log off)")}
SERVERS = ("az_envoy_http", "az_envoy_grpc", "az_nginx", "az_tokex", "az_tokex_nginx")
ECHO = "/x/authz-echo"  # the backend answers the Authorization header it got


def bind(bench):
    global B
    B = bench
    base = bench.PORT_BASE
    bench.PORTS.update({
        "az_envoy_http": base + 600, "az_envoy_http_admin": base + 601,
        "az_envoy_grpc": base + 610, "az_envoy_grpc_admin": base + 611,
        "az_nginx": base + 620, "az_nginx_h2": base + 621,
        "az_tokex": base + 630, "az_tokex_grpc": base + 631, "az_tokex_admin": base + 632,
        "az_tokex_nginx": base + 640, "az_tokex_nginx_admin": base + 642,
    })


def backend_location():
    """The backend's echo of the credential it was given (the sanity check that
    the front proxy forwards tokex's exchanged token, not the caller's)."""
    return f'    location = {ECHO} {{ default_type text/plain; return 200 "$http_authorization"; }}\n'


def _sub(text, pairs, what):
    for old, new in pairs:
        if old not in text:
            raise RuntimeError(f"{what}: {old!r} not found (did the example change?)")
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------- configs

def tokex_argv(name, dialect):
    """The cache-hit rows' tokex config, check-only: `listen:` becomes `authz:` and
    the routes lose their `upstream:`."""
    P = B.PORTS
    if dialect == "envoy":
        port, admin = P["az_tokex"], P["az_tokex_admin"]
        authz = (f"authz:\n  address: 127.0.0.1:{port}\n  dialect: envoy\n  path_prefix: /check\n"
                 f"  grpc_address: 127.0.0.1:{P['az_tokex_grpc']}\n")
    else:
        port, admin = P["az_tokex_nginx"], P["az_tokex_nginx_admin"]
        authz = f"authz:\n  address: 127.0.0.1:{port}\n  dialect: nginx\n"
    argv = B.tokex_conf(name, port, admin)
    path = Path(argv[-1])
    conf = _sub(path.read_text(), [(f"listen:\n  address: 127.0.0.1:{port}\n", authz),
                                   (f"    upstream: http://127.0.0.1:{P['backend']}\n", "")], f"{name} config")
    path.write_text(conf)
    return argv


def envoy_argv(name, kind):
    """examples/authz/envoy-{kind}.yaml with the bench's ports, 127.0.0.1 and an
    admin listener; run like the plain Envoy row (one worker, log level warn)."""
    P = B.PORTS
    src = (EXAMPLES / f"envoy-{kind}.yaml").read_text()
    tokex_port = P["az_tokex"] if kind == "http" else P["az_tokex_grpc"]
    conf = _sub(src, [("address: 0.0.0.0, port_value: 10000", f"address: 127.0.0.1, port_value: {P[name]}"),
                      ("port_value: 8081", f"port_value: {P['backend']}"),
                      (f"port_value: {9191 if kind == 'http' else 9192}", f"port_value: {tokex_port}")]
                + ([("http://127.0.0.1:9191", f"http://127.0.0.1:{tokex_port}")] if kind == "http" else [])
                + [("static_resources:", f"admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, "
                                         f"port_value: {P[name + '_admin']} }} }}\nstatic_resources:")],
                f"examples/authz/envoy-{kind}.yaml")
    d = B.WORK / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "envoy.yaml").write_text(conf)
    return [B.ENVOY, "-c", str(d / "envoy.yaml"), "--concurrency", "1", "--log-level", "warn",
            "--disable-hot-restart", "--use-dynamic-base-id"]


def nginx_argv(name):
    """examples/authz/nginx.conf's server block with the bench's ports, in the bench's
    nginx http {} (1 worker, no access log), its upstreams' idle keepalive connections
    raised to the plain nginx row's."""
    P = B.PORTS
    keep = "keepalive 256;\n    keepalive_requests 1000000;\n    keepalive_timeout 300s;"
    server = _sub((EXAMPLES / "nginx.conf").read_text(),
                  [("listen 10000;", f"listen 127.0.0.1:{P['az_nginx']} backlog=4096;\n"
                                     f"    listen 127.0.0.1:{P['az_nginx_h2']} http2 backlog=4096;"),
                   ("server 127.0.0.1:8081;", f"server 127.0.0.1:{P['backend']};"),
                   ("server 127.0.0.1:9191;", f"server 127.0.0.1:{P['az_tokex_nginx']};"),
                   ("keepalive 32;", keep)],
                  "examples/authz/nginx.conf")
    upstream = ""
    return B.nginx_conf(name, server, upstream)


# --------------------------------------------------------------------------- rows

def targets(add):
    """The authz rows, through bench.targets()'s add(); pids: the processes whose CPU is counted."""
    P = B.PORTS
    add(ENVOY_HTTP, "authz", P["az_envoy_http"], "/x/bench", ("az_envoy_http", "az_tokex"),
        h2port=P["az_envoy_http"], c1=True, log="az_tokex")
    add(ENVOY_GRPC, "authz", P["az_envoy_grpc"], "/x/bench", ("az_envoy_grpc", "az_tokex"),
        h2port=P["az_envoy_grpc"], c1=True, log="az_tokex")
    add(NGINX_AR, "authz", P["az_nginx"], "/x/bench", ("az_nginx", "az_tokex_nginx"),
        h2port=P["az_nginx_h2"], c1=True, log="az_tokex_nginx")


def select(ts, chosen):
    """chosen: the rows BENCH_TARGETS picked (all of ts without it); adds the rows the
    picked authz rows are compared with (and measures their c=1 latency). Keeps ts's order."""
    names = {t["name"] for t in chosen}
    extra = {c for n in names if n in COMPANIONS for c in COMPANIONS[n]}
    for t in ts:
        if t["name"] in extra:
            t["c1"] = True
    return [t for t in ts if t["name"] in names or t["name"] in extra]


def servers(wanted):
    """(name, argv, env, ready, cpu) of the servers the selected rows need."""
    P, off = B.PORTS, B.tokex_env(False)
    out = []
    if wanted & {"az_envoy_http", "az_envoy_grpc"}:
        out.append(("az_tokex", tokex_argv("az_tokex", "envoy"), off, (P["az_tokex_admin"], "/readyz")))
    if "az_nginx" in wanted:
        out.append(("az_tokex_nginx", tokex_argv("az_tokex_nginx", "nginx"), off,
                    (P["az_tokex_nginx_admin"], "/readyz")))
    for kind in ("http", "grpc"):
        name = f"az_envoy_{kind}"
        if name in wanted:
            out.append((name, envoy_argv(name, kind), None, (P[name + "_admin"], "/ready")))
    if "az_nginx" in wanted:
        out.append(("az_nginx", nginx_argv("az_nginx"), None, None))
    return out


def check(pidmap, token, get):
    """Before measuring: through each front proxy, the backend gets tokex's exchanged
    token (not the caller's); no token is refused 401 (the check is in the path);
    the token is then cached. get(port, path, auth) -> (status, www, body)."""
    P = B.PORTS
    for front, name in (("az_envoy_http", ENVOY_HTTP), ("az_envoy_grpc", ENVOY_GRPC), ("az_nginx", NGINX_AR)):
        if front not in pidmap:
            continue
        B.wait_http(P[front], "/none/bench", front, B.PROCS.running[front])
        st, _, body = get(P[front], ECHO, f"Bearer {token}")
        if st != 200 or body.decode(errors="replace") != f"Bearer {B.ISSUED_TOKEN}":
            raise RuntimeError(f"{name}: the backend got {body[:120]!r} ({st}), not tokex's exchanged token")
        st, www, body = get(P[front], "/x/bench", None)
        if st != 401:
            raise RuntimeError(f"{name}: no token answered {st} ({www!r}), not 401: the check is not in the path")
        st, _, body = get(P[front], "/x/bench", f"Bearer {token}")
        if st != 200 or b"ok" not in body:
            raise RuntimeError(f"{name}: answered {st}: {body[:200]!r}")
        B.log(f"{front}: exchanged token forwarded to the backend; no token 401")


def exchanges(pidmap):
    """tokex_exchanges_total of the authz tokex instances (1 each in a cache-hit run)."""
    out = {}
    for k, admin in (("az_tokex", "az_tokex_admin"), ("az_tokex_nginx", "az_tokex_nginx_admin")):
        if k in pidmap:
            out[k] = B.metric(B.PORTS[admin], "tokex_exchanges_total")
    return out


# --------------------------------------------------------------------------- report

def report(m, order, fmt, rate, exch):
    """The "tokex behind your existing proxy" section; m(name, key) is the median."""
    if not any(n in order for n in ROWS):
        return []
    rows = [("a", "Envoy alone (plain proxy)", "envoy proxy", "Envoy"),
            ("b", "Envoy + tokex, HTTP ext_authz", ENVOY_HTTP, "Envoy + tokex"),
            ("c", "Envoy + tokex, gRPC ext_authz", ENVOY_GRPC, "Envoy + tokex"),
            ("d", "tokex as the proxy (cache hit, log off)", "tokex hit, 1 token (log off)", "tokex"),
            ("", "nginx alone (plain proxy)", "nginx proxy", "nginx"),
            ("e", "nginx + tokex, auth_request", NGINX_AR, "nginx + tokex")]
    rows = [r for r in rows if r[2] in order]
    fronts = {ENVOY_HTTP: ("az_envoy_http", "az_tokex"), ENVOY_GRPC: ("az_envoy_grpc", "az_tokex"),
              NGINX_AR: ("az_nginx", "az_tokex_nginx")}
    L = ["## tokex behind your existing proxy (authz)", "",
         "The front proxy asks tokex (`authz:` listener, check-only config) before each request and forwards to the "
         "backend with tokex's `authorization: Bearer <exchanged>`; tokex answers from its cache (one caller token, "
         "exchanged once before measuring). **CPU µs/req of the + rows counts both processes** (front proxy + tokex, "
         "split in the next two columns); the backend's CPU is never counted. Each + row is two hops per request "
         "(front → tokex check, front → backend) where rows a and d are one. c=1: `wrk -c1` closed loop.", "",
         f"| mode | CPU µs/req | front proxy | tokex | rps | p50 ms @{rate} | p99 ms @{rate} | c=1 p50 ms | "
         f"c=1 p99 ms | h2 rps | h2 CPU µs/req |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for letter, label, name, _ in rows:
        split = fronts.get(name)
        a, b = (m(name, f"cpu_us:{split[0]}"), m(name, f"cpu_us:{split[1]}")) if split else (None, None)
        L.append(f"| {letter + '. ' if letter else ''}{label} | {fmt(m(name, 'cpu_us'))} | {fmt(a)} | {fmt(b)} | "
                 f"{fmt(m(name, 'rps'), 0)} | {fmt(m(name, 'p50_ms'), 3)} | {fmt(m(name, 'p99_ms'), 3)} | "
                 f"{fmt(m(name, 'c1_p50_ms'), 3)} | {fmt(m(name, 'c1_p99_ms'), 3)} | {fmt(m(name, 'h2_rps'), 0)} | "
                 f"{fmt(m(name, 'h2_cpu_us'))} |")
    L.append("")
    cmp = []
    for name, alone in ((ENVOY_HTTP, "envoy proxy"), (ENVOY_GRPC, "envoy proxy"), (NGINX_AR, "nginx proxy")):
        c, base, tk = m(name, "cpu_us"), m(alone, "cpu_us"), m("tokex hit, 1 token (log off)", "cpu_us")
        if c and base:
            s = f"| {name.split(' (')[0]} | {c - base:+.1f} | {c / base:.2f}× |"
            s += f" {c / tk:.2f}× |" if tk else " – |"
            cmp.append(s)
    if cmp:
        L.append("| combined row | CPU µs/req added to the proxy alone | ÷ proxy alone | ÷ tokex as the proxy |")
        L.append("|---|---:|---:|---:|")
        L.extend(cmp)
        L.append("")
    if exch:
        L.append("Exchanges at the AS by the authz tokex instances over the whole run (1 each = every check a cache "
                 "hit): " + ", ".join(f"{k} {v:.0f}" if v is not None else f"{k} ?" for k, v in exch.items()) + ".")
        L.append("")
    return L
