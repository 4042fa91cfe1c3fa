"""The Helm chart: its values against values.schema.json, its golden renders, helm.

2. The chart's golden renders, tests/deploy/rendered/*.yaml (`helm template`
   of charts/tokex with values.yaml and each ci/*-values.yaml, and of
   tests/deploy/parent-chart, which includes the sidecar templates): checked
   as in 1 (objects.py), on every run, with or without helm. Together they
   must render an HPA, a ServiceMonitor, a NetworkPolicy and a native tokex
   sidecar.
5. charts/tokex/values.yaml and charts/tokex/ci/*-values.yaml must pass
   values.schema.json (merged over the defaults, as Helm does);
   tests/deploy/bad-values/*.yaml must fail it, at the path their
   `# error at:` comment names. The schema must describe every key of
   values.yaml.
6. Only where `helm` is on PATH: `helm lint` of the chart with each good
   values file and of the parent chart; `helm template` afresh, which must
   give the same objects as the golden render (order and comments aside);
   each bad values file must make `helm template` fail. --write-renders
   rewrites the golden renders from that helm instead.

The tokex configs found (the values' `config`, the renders' ConfigMaps) are
returned to validate.py, which runs `tokex check --offline` on them.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from objects import check_objects, is_tokex, schema_validate
from report import REPO, coalesce, count, fail, load_all, rel

RENDERED = REPO / "tests/deploy/rendered"
REGENERATE = "PATH=<dir with helm>:$PATH python3 tests/deploy/validate.py --tokex target/debug/tokex --write-renders"


# ------------------------------------------------------- chart values


def schema_paths_cover(values, schema: dict, where: str, root: dict) -> None:
    """Every key of values.yaml is described by the schema."""
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    if not isinstance(values, dict) or "properties" not in schema:
        return
    for k, v in values.items():
        if k not in schema["properties"]:
            fail(f"charts/tokex/values.schema.json does not describe values.yaml key {where}{k}")
        else:
            if not schema["properties"][k].get("description") and not schema["properties"][k].get("$ref"):
                fail(f"charts/tokex/values.schema.json: {where}{k} has no description")
            schema_paths_cover(v, schema["properties"][k], f"{where}{k}.", root)


def error_paths(validator, instance) -> list[tuple[str, str]]:
    out = []
    for e in validator.iter_errors(instance):
        for leaf in [e] + [c for c in e.context or []]:
            out.append((".".join(str(p) for p in leaf.absolute_path) or "(root)", leaf.message))
    return out


def check_values(chart: Path) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """Returns the good and bad values files, and the tokex configs found."""
    schema_file = chart / "values.schema.json"
    schema = json.loads(schema_file.read_text())
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        fail(f"{rel(schema_file)}: $schema must be draft-07 (what Helm reads): {schema.get('$schema')}")
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        fail(f"{rel(schema_file)}: not a valid draft-07 schema: {e.message}")
        return [], [], []
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    schema_paths_cover(defaults, schema, "", schema)
    configs = []

    def good(name: str, values: dict) -> None:
        merged = coalesce(defaults, values)
        errs = error_paths(validator, merged)
        if errs:
            fail(f"{name}: rejected by values.schema.json: " + "; ".join(f"{p}: {m}" for p, m in errs[:5]))
        else:
            count("values files passing values.schema.json")
        if isinstance(merged.get("config"), str):
            configs.append((f"{name} (config)", merged["config"]))

    good(rel(chart / "values.yaml"), {})
    goods = sorted((chart / "ci").glob("*-values.yaml"))
    for f in goods:
        good(rel(f), yaml.safe_load(f.read_text()) or {})
    bads = sorted((REPO / "tests/deploy/bad-values").glob("*.yaml"))
    for f in bads:
        text = f.read_text()
        want = re.findall(r"^# error at: (\S+)", text, re.M)
        if not re.search(r"^# wrong: \S", text, re.M) or not want:
            fail(f"{rel(f)}: needs a `# wrong: <what>` and an `# error at: <path>` comment")
            continue
        errs = error_paths(validator, coalesce(defaults, yaml.safe_load(text) or {}))
        if not errs:
            fail(f"{rel(f)}: accepted by values.schema.json, but it is wrong: {want}")
        elif not set(want) & {p for p, _ in errs}:
            fail(f"{rel(f)}: rejected, but not at {want}: " + "; ".join(f"{p}: {m}" for p, m in errs[:5]))
        else:
            count("bad values files rejected by values.schema.json")
    if not goods or not bads:
        fail("no good (charts/tokex/ci/*-values.yaml) or no bad (tests/deploy/bad-values/*.yaml) values files")
    return [chart / "values.yaml"] + goods, bads, configs


# ------------------------------------------------- golden chart renders


PARENT_CHART = REPO / "tests/deploy/parent-chart"


@dataclass
class Render:
    """One `helm template`, kept in tests/deploy/rendered/<name>.yaml."""

    name: str
    release: str
    namespace: str
    chart: Path
    values: Path | None = None

    @property
    def file(self) -> Path:
        return RENDERED / f"{self.name}.yaml"

    @property
    def command(self) -> str:
        values = f" -f {rel(self.values)}" if self.values else ""
        cmd = f"helm template {self.release} {rel(self.chart)}{values} --namespace {self.namespace}"
        if self.chart == PARENT_CHART:
            cmd += "   # with charts/tokex copied into its charts/"
        return cmd


def render_specs(chart: Path, goods: list[Path]) -> list[Render]:
    """values.yaml -> default, ci/<x>-values.yaml -> <x>, and the parent chart."""
    specs = []
    for f in goods:
        if f.name == "values.yaml":
            specs.append(Render("default", "tokex", "tokex-ci", chart))
        else:
            specs.append(Render(f.name.removesuffix("-values.yaml"), "tokex", "tokex-ci", chart, f))
    specs.append(Render("parent-chart", "orders", "shop", PARENT_CHART))
    return specs


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@contextmanager
def assembled_parent(chart: Path):
    """A copy of the parent chart with tokex in its charts/ (as after `helm
    dependency update`)."""
    with tempfile.TemporaryDirectory(prefix="tokex-parent-") as tmp:
        parent = Path(tmp) / "orders"
        shutil.copytree(PARENT_CHART, parent)
        shutil.copytree(chart, parent / "charts" / "tokex")
        yield parent


def helm_template(helm: str, spec: Render, chart: Path) -> subprocess.CompletedProcess:
    if spec.chart != PARENT_CHART:
        cmd = [helm, "template", spec.release, str(spec.chart), "--namespace", spec.namespace]
        return run(cmd + (["-f", str(spec.values)] if spec.values else []))
    with assembled_parent(chart) as parent:
        return run([helm, "template", spec.release, str(parent), "--namespace", spec.namespace])


def render_header(spec: Render, helm_version: str) -> str:
    return (
        f"# Golden render, written by tests/deploy/validate.py --write-renders: do not edit.\n"
        f"#   {spec.command}\n"
        f"# Rendered with helm {helm_version}.\n"
        "# validate.py checks these objects on every run (strict Kubernetes schemas,\n"
        "# the cross-object checks, `tokex check --offline` on the embedded config);\n"
        "# where helm is on PATH it renders afresh and fails when the objects differ.\n"
        "# Regenerate after changing the chart, its ci/ values or the parent chart:\n"
        f"#   {REGENERATE}\n"
    )


def helm_version(helm: str) -> str:
    return run([helm, "version", "--short"]).stdout.strip()


def write_renders(helm: str, specs: list[Render], chart: Path) -> None:
    version = helm_version(helm)
    RENDERED.mkdir(exist_ok=True)
    for spec in specs:
        r = helm_template(helm, spec, chart)
        if r.returncode != 0:
            fail(f"{spec.command}:\n{r.stderr}")
            continue
        spec.file.write_text(render_header(spec, version) + r.stdout.lstrip("\n"))
        print(f"wrote {rel(spec.file)}")


def objects_by_key(docs: list) -> dict[str, str]:
    """Each object as sorted-key YAML, by apiVersion/kind/namespace/name: the
    comparison ignores document order, comments and formatting."""
    out = {}
    for d in docs:
        meta = d.get("metadata") or {}
        key = "/".join(str(x) for x in (d.get("apiVersion"), d.get("kind"), meta.get("namespace", ""), meta.get("name")))
        while key in out:
            key += "+"
        out[key] = yaml.safe_dump(d, sort_keys=True, default_flow_style=False)
    return out


def compare_render(spec: Render, fresh: str) -> None:
    """The fresh `helm template` gives the golden render's objects."""
    golden = objects_by_key(load_all(spec.file.read_text(), rel(spec.file)))
    now = objects_by_key(load_all(fresh, spec.command))
    if golden == now:
        count("golden renders equal to a fresh helm template")
        return
    lines = []
    for key in sorted(set(golden) | set(now)):
        if key not in now:
            lines.append(f"only in {rel(spec.file)}: {key}")
        elif key not in golden:
            lines.append(f"only in the fresh render: {key}")
        elif golden[key] != now[key]:
            diff = difflib.unified_diff(golden[key].splitlines(), now[key].splitlines(), "golden", "fresh", lineterm="", n=2)
            lines += [f"{key} differs:"] + list(diff)[2:40]
    fail(
        f"{rel(spec.file)} is stale: `{spec.command}` now renders other objects. If the change is intended, "
        f"regenerate:\n  {REGENERATE}\n" + "\n".join(lines)
    )


def check_renders(specs: list[Render], versions: list[str]) -> list[tuple[str, str]]:
    """The golden renders, always: exist, are valid, and cover the optional
    objects. Returns their tokex configs."""
    configs = []
    kinds: set[str] = set()
    native_sidecars = 0
    for extra in sorted(set(RENDERED.glob("*.yaml")) - {s.file for s in specs}):
        fail(f"{rel(extra)}: a golden render of no values file (remove it, or regenerate: {REGENERATE})")
    for spec in specs:
        if not spec.file.exists():
            fail(f"{rel(spec.file)} is missing: the golden render of `{spec.command}`. Generate it:\n  {REGENERATE}")
            continue
        origin = rel(spec.file)
        docs = [(d, origin) for d in load_all(spec.file.read_text(), origin)]
        if not docs:
            fail(f"{origin}: no objects")
            continue
        count("golden chart renders checked")
        schema_validate(docs, versions)
        if any(d.get("kind") in ("Deployment", "Service") for d, _ in docs):
            check_objects(docs, origin, examples=False)
        for d, _ in docs:
            kinds.add(d.get("kind"))
            if d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {}):
                configs.append((f"{origin} ConfigMap {d['metadata']['name']}", d["data"]["config.yaml"]))
            pod = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
            native_sidecars += sum(1 for c in pod.get("initContainers") or [] if is_tokex(c) and c.get("restartPolicy") == "Always")
    if not all(s.file.exists() for s in specs):
        return configs
    # What the values files must exercise, so that every template is rendered.
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"):
        if kind not in kinds:
            fail(f"no golden render has a {kind}: enable it in a charts/tokex/ci/*-values.yaml")
    if not native_sidecars:
        fail("no golden render has tokex as a native sidecar (tokex.sidecarContainer): tests/deploy/parent-chart should")
    return configs


# ------------------------------------------------------------- helm


def check_helm(helm: str, chart: Path, goods: list[Path], bads: list[Path], specs: list[Render]) -> None:
    """helm lint; a fresh helm template equals each golden render; the bad
    values are refused."""
    print(f"helm: {helm_version(helm)}")
    for f in goods:
        r = run([helm, "lint", str(chart), "-f", str(f)])
        if r.returncode != 0:
            fail(f"helm lint {rel(chart)} -f {rel(f)}:\n{r.stdout}{r.stderr}")
        else:
            count("helm lint runs")
    with assembled_parent(chart) as parent:
        r = run([helm, "lint", str(parent)])
        if r.returncode != 0:
            fail(f"helm lint {rel(PARENT_CHART)}:\n{r.stdout}{r.stderr}")
        else:
            count("helm lint runs")
    for spec in specs:
        r = helm_template(helm, spec, chart)
        if r.returncode != 0:
            fail(f"{spec.command}:\n{r.stderr}")
        elif spec.file.exists():
            compare_render(spec, r.stdout)
    for f in bads:
        r = run([helm, "template", "tokex", str(chart), "-f", str(f)])
        if r.returncode == 0:
            fail(f"helm template -f {rel(f)} succeeded; the schema should refuse it")
        else:
            count("bad values files refused by helm template")
