#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Installs what the tests need on a fresh machine, then runs formatting,
# lints and every test. The authgent end-to-end test fails, never skips,
# when authgent-server is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

AUTHGENT_VERSION=0.3.4
VENV=.venv
if ! "$VENV/bin/authgent-server" --help >/dev/null 2>&1 \
   || [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("authgent-server"))' 2>/dev/null)" != "$AUTHGENT_VERSION" ]; then
  echo "==> installing authgent-server $AUTHGENT_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "authgent-server==$AUTHGENT_VERSION"
fi
export AUTHGENT_BIN="$PWD/$VENV/bin/authgent-server"

# tests/kubernetes.rs runs tests/deploy/validate.py with these (pinned: the
# bundled Kubernetes schemas change with kubernetes-validate's version).
K8S_PACKAGES="kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3"
if ! "$VENV/bin/python" - $K8S_PACKAGES >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (s.split("==") for s in sys.argv[1:])))
EOF
then
  echo "==> installing $K8S_PACKAGES into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $K8S_PACKAGES
fi
export TOKEX_PYTHON="$PWD/$VENV/bin/python"

# tests/shared_cache.rs starts its own redis-server on a free port.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server (Debian package)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# The package may start a system service; the tests never use it.
export REDIS_SERVER="$(command -v redis-server)"

echo "==> cargo fetch"
cargo fetch --locked 2>/dev/null || cargo fetch
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets
