"""What the modules of tests/deploy/validate.py share.

fail() records a failure (once): printed at once as `FAIL ...`, listed again
at the end, and validate.py then exits 1. Within collected_failures() failures go to
a list instead (a bad manifest's expected errors); count() tallies what was
checked for the summary, except there. rel() names a file relative to the
repository. Also the helpers the checks parse with: YAML documents, Go-style
durations (`1m30s`), the port of an address, tokex's listeners, Helm's
merge of values, and the two Kubernetes lookups every module needs (a label
selector, a container port by name or number).
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

failures: list[str] = []
counts: dict[str, int] = {}
_collecting: list[list[str]] = []  # while non-empty, fail() records into the innermost list


def fail(msg: str) -> None:
    if _collecting:
        _collecting[-1].append(msg)
        return
    if msg in failures:  # an example's variant repeats its directory's checks
        return
    failures.append(msg)
    print(f"FAIL {msg}")


@contextmanager
def collected_failures():
    """Within the block, failures go to the yielded list instead (bad cases)."""
    sink: list[str] = []
    _collecting.append(sink)
    try:
        yield sink
    finally:
        _collecting.pop()


def count(what: str, n: int = 1) -> None:
    if not _collecting:  # a bad case's checks count nothing
        counts[what] = counts.get(what, 0) + n


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------- YAML


def load_all(text: str, origin: str) -> list:
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{origin}: not YAML: {e}")
        return []


def parse_duration(text: str | None, default: float) -> float:
    """`250ms`, `30s`, `5m`, `1h`, `1m30s` -> seconds."""
    if text is None:
        return default
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text).strip():
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def port_of(address: str) -> int:
    return int(str(address).rsplit(":", 1)[1])


def tokex_listeners(cfg: dict) -> dict[str, str]:
    """tokex's serving listeners, setting -> address: the proxy's
    (`listen:`, optional in a check-only deployment) and the check ones."""
    out = {}
    if (cfg.get("listen") or {}).get("address"):
        out["listen.address"] = str(cfg["listen"]["address"])
    for key in ("address", "grpc_address"):
        if (cfg.get("authz") or {}).get(key):
            out[f"authz.{key}"] = str(cfg["authz"][key])
    return out


# ------------------------------------------------------------ Kubernetes


def selects(selector: dict | None, labels: dict | None) -> bool:
    """A matchLabels selector selects these labels (an empty one selects nothing here)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_port(container: dict, port) -> int | None:
    """A container port by number or by name."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


# ----------------------------------------------------- Helm's values merge


def coalesce(base, over):
    """Helm's merge of user values over the chart's: maps merge, null deletes."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = coalesce(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
