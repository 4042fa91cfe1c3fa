#!/usr/bin/env python3
"""Validates everything tokex ships for Kubernetes, offline.

    python tests/deploy/validate.py --tokex target/debug/tokex
    python tests/deploy/validate.py --tokex target/debug/tokex --write-renders   # needs helm

The entry point; the checks live in the modules beside it (imported from this
file's directory, so run it by path; it is no package):

1. Every manifest under examples/kubernetes/ against the strict Kubernetes
   schemas (custom resources: tests/deploy/schemas/), then the checks a
   schema cannot make (objects.py, crds.py). A directory is one `kubectl
   apply -f DIR/`. Its subdirectories, which that command skips, hold
   variants applied after it (an object of the same kind and name replaces
   the directory's; checked together) or Istio's mesh config (istiod values,
   checked against its schema and with the policies that name it).
2. The chart's golden renders, tests/deploy/rendered/*.yaml, checked as in 1
   on every run, with or without helm (chart.py).
3. tests/deploy/bad-manifests/*.yaml must each be refused with the error
   their comment names (objects.py).
4. Every embedded tokex config (the examples' ConfigMaps, the renders', the
   chart's default `config`, the values files', docs/deployment.md's YAML
   blocks) with `tokex check --offline` (here). docs/deployment.md's other
   YAML blocks are checked as what they are: Kubernetes objects (as in 1) or
   chart values (as in 5).
5. The chart's values against values.schema.json; the bad values files must
   fail it (chart.py).
6. Only where `helm` is on PATH: `helm lint`, a fresh `helm template` equal
   to the golden renders, bad values refused; --write-renders rewrites the
   golden renders from that helm (chart.py).

report.py holds what they share: fail() and count(), and the YAML, duration,
port and values-merge helpers.

Exits 1 listing every failure; prints what it checked.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import jsonschema
    import yaml
    from kubernetes_validate import utils as kv
except ImportError as e:  # pragma: no cover - the message is the point
    sys.exit(
        f"validate.py: missing Python package ({e}). Install the pinned versions that "
        "scripts/test.sh installs:\n  .venv/bin/pip install kubernetes-validate jsonschema PyYAML"
    )

# The sibling modules, imported from this file's directory: it runs by path
# (`python tests/deploy/validate.py`), not as an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chart import RENDERED, check_helm, check_renders, check_values, error_paths, render_specs, write_renders  # noqa: E402
from crds import check_mesh_values, is_mesh_values  # noqa: E402
from objects import check_bad_manifests, check_objects, kube_versions, schema_validate  # noqa: E402
from report import REPO, coalesce, count, counts, fail, failures, load_all, rel  # noqa: E402

# ------------------------------------------------- examples


def manifests(d: Path) -> list[tuple[dict, str]]:
    """The YAML documents of the files directly in `d`, as `kubectl apply -f d/` reads them."""
    docs = []
    for f in sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json")):
        docs += [(doc, rel(f)) for doc in load_all(f.read_text(), rel(f))]
        count("example manifest files")
    return docs


def applied_after(docs: list[tuple[dict, str]], later: list[tuple[dict, str]]) -> list[tuple[dict, str]]:
    """`docs`, then `later` applied over them: same kind and name replaces."""
    key = lambda d: (d.get("kind"), (d.get("metadata") or {}).get("name"))  # noqa: E731
    replaced = {key(d) for d, _ in later}
    return [(d, o) for d, o in docs if key(d) not in replaced] + later


# ----------------------------------------------------- docs


def doc_blocks(md: Path) -> list[tuple[str, str]]:
    """(origin, text) of each ```yaml block."""
    out, lines = [], md.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```yaml":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            out.append((f"{rel(md)}:{start}", "\n".join(lines[start:j]) + "\n"))
            i = j
        i += 1
    return out


def check_doc_blocks(md: Path, versions: list[str]) -> list[tuple[str, str]]:
    """Every YAML block is a tokex config, chart values or Kubernetes objects,
    and is checked as such. Returns the tokex configs."""
    chart = REPO / "charts/tokex"
    schema = jsonschema.Draft7Validator(json.loads((chart / "values.schema.json").read_text()))
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    configs = []
    for origin, text in doc_blocks(md):
        docs = load_all(text, origin)
        if docs and all(isinstance(d, dict) and "kind" in d for d in docs):
            schema_validate([(d, origin) for d in docs], versions)
        elif len(docs) == 1 and isinstance(docs[0], dict) and "routes" in docs[0]:
            configs.append((origin, text))
        elif len(docs) == 1 and isinstance(docs[0], dict) and isinstance(docs[0].get("config"), str):
            errs = error_paths(schema, coalesce(defaults, docs[0]))
            if errs:
                fail(f"{origin}: chart values rejected by values.schema.json: {errs[:5]}")
            configs.append((f"{origin} (config)", docs[0]["config"]))
        else:
            fail(f"{origin}: a YAML block that is neither a tokex config, chart values nor Kubernetes objects")
            continue
        count(f"{rel(md)} YAML blocks checked")
    return configs


# ------------------------------------------------------ tokex configs


def tokex_supports_offline(tokex: Path) -> bool:
    out = subprocess.run([str(tokex), "check", "--help"], capture_output=True, text=True, timeout=60)
    return "--offline" in out.stdout


def tokex_check(tokex: Path, configs: list[tuple[str, str]]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEX_")}
    env["TOKEX_STRICT"] = "1"  # the chart's default, and the examples': no clear-text secret
    env["TOKEX_LOG_FORMAT"] = "text"
    with tempfile.TemporaryDirectory(prefix="tokex-k8s-") as tmp:
        for i, (origin, text) in enumerate(configs):
            f = Path(tmp) / f"config-{i}.yaml"
            f.write_text(text)
            r = subprocess.run([str(tokex), "check", "--offline", "-c", str(f)], capture_output=True, text=True, env=env, timeout=120)
            if r.returncode != 0:
                fail(f"{origin}: `tokex check --offline` exited {r.returncode}:\n{r.stdout}{r.stderr}".rstrip())
            else:
                count("tokex configs passing `tokex check --offline`")


# ------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokex", required=True, type=Path, help="the tokex binary (`check --offline`)")
    ap.add_argument("--write-renders", action="store_true", help=f"rewrite {rel(RENDERED)}/*.yaml with the helm on PATH, then validate")
    args = ap.parse_args()
    tokex = args.tokex.resolve()
    if not os.access(tokex, os.X_OK):
        sys.exit(f"validate.py: {tokex} is not an executable tokex binary")
    helm = shutil.which("helm")
    if args.write_renders and not helm:
        sys.exit("validate.py: --write-renders needs helm on PATH")

    versions = kube_versions()
    print(
        f"kubernetes-validate {importlib.metadata.version('kubernetes-validate')} (schemas bundled for "
        f"Kubernetes {kv.all_versions()[0]}..{kv.all_versions()[-1]}), jsonschema "
        f"{importlib.metadata.version('jsonschema')}, PyYAML {importlib.metadata.version('PyYAML')}; "
        f"validating against Kubernetes {', '.join(versions)}"
    )

    # 1. The examples: one directory is one `kubectl apply -f DIR/`.
    examples = REPO / "examples/kubernetes"
    configs: list[tuple[str, str]] = []
    dirs = sorted(p for p in examples.iterdir() if p.is_dir())
    if not dirs:
        fail("no manifests under examples/kubernetes/")
    for d in dirs:
        docs = manifests(d)
        mesh, variants = [], []
        for sub in sorted(p for p in d.rglob("*") if p.is_dir()):
            objs = [(doc, o) for doc, o in manifests(sub) if not is_mesh_values(doc)]
            mesh += [(doc, o) for doc, o in manifests(sub) if is_mesh_values(doc)]
            variants += [(sub, objs)] if objs else []
        schema_validate(docs + [x for _, objs in variants for x in objs], versions)
        check_mesh_values(mesh)
        check_objects(docs, rel(d), examples=True, mesh=mesh)
        for sub, objs in variants:
            check_objects(applied_after(docs, objs), f"{rel(d)} then {rel(sub)}", examples=True, mesh=mesh)
            count("example variants (a subdirectory applied after its directory) cross-checked")
        for doc, origin in docs + [x for _, objs in variants for x in objs]:
            if doc.get("kind") == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
                configs.append((f"{origin} ConfigMap {doc['metadata']['name']}", doc["data"]["config.yaml"]))

    # 5. The chart's values against its schema (and the configs they hold).
    chart = REPO / "charts/tokex"
    goods, bads, value_configs = check_values(chart)
    configs += value_configs

    # 2. The golden renders of the chart (rewritten first with --write-renders).
    specs = render_specs(chart, goods)
    if args.write_renders:
        write_renders(helm, specs, chart)
    configs += check_renders(specs, versions)

    # 3. Wrong manifests must be refused.
    check_bad_manifests(versions)

    configs += check_doc_blocks(REPO / "docs/deployment.md", versions)

    # 6. helm, where installed.
    if helm:
        check_helm(helm, chart, goods, bads, specs)
    else:
        print(f"helm: not on PATH; the golden renders in {rel(RENDERED)} are checked, but not compared with a fresh helm template")

    # 4. Every tokex config, with the binary.
    if not tokex_supports_offline(tokex):
        fail(f"{tokex}: `tokex check --help` does not list --offline; this check needs a tokex with `check --offline`")
    else:
        tokex_check(tokex, configs)

    print()
    for what, n in sorted(counts.items()):
        print(f"  {n:4d}  {what}")
    if failures:
        print(f"\n{len(failures)} failure(s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("\nKubernetes manifests, chart renders, chart values and tokex configs: all valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
