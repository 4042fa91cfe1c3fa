#!/usr/bin/env python3
"""Validates everything tokex ships for Kubernetes, offline.

    python tests/deploy/validate.py --tokex target/debug/tokex

1. Every manifest under examples/kubernetes/ against the Kubernetes OpenAPI
   schemas bundled in the `kubernetes-validate` package, strict (unknown
   fields are errors), for the oldest bundled Kubernetes >= 1.29 (native
   sidecars) and the newest bundled one; then the checks a schema cannot
   make: selectors that select, Service ports that exist, tokex's config
   agreeing with its container (ports, admin on 0.0.0.0, probes, mounted
   files, shutdown timers), the security context.
2. Every embedded tokex config (the examples' ConfigMaps, the chart's
   default `config`, the values files', docs/deployment.md's YAML blocks)
   with `tokex check --offline`.
3. charts/tokex/values.yaml and charts/tokex/ci/*-values.yaml must pass
   values.schema.json (merged over the defaults, as Helm does);
   tests/deploy/bad-values/*.yaml must fail it, at the path their
   `# error at:` comment names. The schema must describe every key of
   values.yaml.
4. Only where `helm` is on PATH: `helm lint` and `helm template` of the chart
   with each good values file and of tests/deploy/parent-chart (a chart that
   includes tokex's sidecar template), the rendered objects checked as in 1;
   each bad values file must make `helm template` fail.

Exits 1 listing every failure; prints what it checked.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import re
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

REPO = Path(__file__).resolve().parents[2]
MIN_K8S = (1, 29)  # native sidecars (initContainers[].restartPolicy: Always)
TOKEX_UID = 65532
# Custom resources: no schema in kubernetes-validate; checked by hand below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

failures: list[str] = []
counts: dict[str, int] = {}


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL {msg}")


def count(what: str, n: int = 1) -> None:
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


# ------------------------------------------------- Kubernetes schemas


def kube_versions() -> list[str]:
    bundled = kv.all_versions()
    eligible = [v for v in bundled if tuple(int(x) for x in v.split(".")[:2]) >= MIN_K8S]
    if not eligible:
        sys.exit(f"kubernetes-validate bundles no Kubernetes >= {MIN_K8S}: {bundled}")
    return sorted({eligible[0], eligible[-1]}, key=lambda v: tuple(int(x) for x in v.split(".")))


def check_service_monitor(doc: dict, origin: str) -> None:
    spec = doc.get("spec") or {}
    eps = spec.get("endpoints")
    if not isinstance(eps, list) or not eps or not all(isinstance(e, dict) and e.get("port") for e in eps):
        fail(f"{origin}: ServiceMonitor needs spec.endpoints[].port")
    if not isinstance(spec.get("selector"), dict):
        fail(f"{origin}: ServiceMonitor needs spec.selector")


def schema_validate(docs: list[tuple[dict, str]], versions: list[str]) -> None:
    """kubernetes-validate --strict, for each version."""
    for doc, origin in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            fail(f"{origin}: not a Kubernetes object (no apiVersion/kind)")
            continue
        name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            check_service_monitor(doc, f"{origin} {name}")
            count("custom resources checked by hand (no bundled schema)")
            continue
        for v in versions:
            try:
                kv.validate(doc, v, strict=True)
                count(f"objects valid against Kubernetes {v} (strict)")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{origin} {name}: invalid for Kubernetes {v}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                fail(f"{origin} {name}: {e.message}")


# ------------------------------------------- checks a schema cannot make


def selects(selector: dict | None, labels: dict | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def is_tokex(container: dict) -> bool:
    image = str(container.get("image", ""))
    repo = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return repo == "tokex" or container.get("name") == "tokex"


def container_ports(pod: dict) -> dict:
    ports = {}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for p in c.get("ports") or []:
            ports[p["containerPort"]] = c
            if p.get("name"):
                ports[p["name"]] = c
    return ports


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def under(path: str, mount: str) -> bool:
    return path == mount or path.startswith(mount.rstrip("/") + "/")


def file_refs(node, where: str = ""):
    """(yaml path, value) of every `*_file` setting in a tokex config."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{where}.{k}" if where else str(k)
            if str(k).endswith("_file") and isinstance(v, str):
                yield p, v
            else:
                yield from file_refs(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from file_refs(v, f"{where}[{i}]")


def check_objects(docs: list[tuple[dict, str]], group: str, examples: bool) -> None:
    """Cross-object checks over one set of objects applied together."""
    objs = [(d, o) for d, o in docs if isinstance(d, dict) and "kind" in d]
    by_kind: dict[str, dict[str, tuple[dict, str]]] = {}
    for d, o in objs:
        by_kind.setdefault(d["kind"], {})[(d.get("metadata") or {}).get("name")] = (d, o)
        if examples and "namespace" in (d.get("metadata") or {}):
            fail(f"{o}: {d['kind']} sets metadata.namespace; the examples are namespace-agnostic")
    workloads = [(d, o) for d, o in objs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    pods = []
    for d, o in workloads:
        spec = d.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels")
        if not selects(sel, labels):
            fail(f"{o}: {d['kind']} {d['metadata']['name']}: spec.selector.matchLabels {sel} does not select its pod labels {labels}")
        pods.append((d, o, tmpl.get("spec") or {}, labels))
        count("workloads cross-checked")
    for kind, key in (("Service", None), ("PodDisruptionBudget", "matchLabels")):
        for name, (d, o) in (by_kind.get(kind) or {}).items():
            sel = (d.get("spec") or {}).get("selector") or {}
            if key:
                sel = sel.get(key)
            matched = [p for p in pods if selects(sel, p[3])]
            if not matched:
                fail(f"{o}: {kind} {name}: selector {sel} selects no pod of {group}")
                continue
            if kind == "Service":
                for port in d["spec"].get("ports") or []:
                    target = port.get("targetPort", port.get("port"))
                    for _, po, pspec, _ in matched:
                        if target not in container_ports(pspec):
                            fail(f"{o}: Service {name} port {port.get('name')}: targetPort {target!r} is no container port of the pod in {po}")
    for hpa_name, (d, o) in (by_kind.get("HorizontalPodAutoscaler") or {}).items():
        ref = (d.get("spec") or {}).get("scaleTargetRef") or {}
        target = (by_kind.get(ref.get("kind")) or {}).get(ref.get("name"))
        if not target:
            fail(f"{o}: HorizontalPodAutoscaler {hpa_name} scales {ref}, which is not among {group}")
        elif "replicas" in target[0].get("spec", {}):
            fail(f"{target[1]}: {ref.get('kind')} {ref.get('name')} sets spec.replicas although an HPA scales it")
    for name, (d, o) in (by_kind.get("ServiceMonitor") or {}).items():
        sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        svcs = [s for s in (by_kind.get("Service") or {}).values() if selects(sel, (s[0].get("metadata") or {}).get("labels"))]
        if len(svcs) != 1:
            fail(f"{o}: ServiceMonitor {name} selects {len(svcs)} Services (want exactly the admin Service)")
        else:
            names = [p.get("name") for p in svcs[0][0]["spec"].get("ports") or []]
            for ep in d["spec"].get("endpoints") or []:
                if ep.get("port") not in names:
                    fail(f"{o}: ServiceMonitor {name} scrapes port {ep.get('port')!r}; the Service has {names}")
    for d, o, pspec, labels in pods:
        check_pod(d, o, pspec, by_kind, examples)


def check_pod(d: dict, o: str, pod: dict, by_kind: dict, examples: bool) -> None:
    name = d["metadata"]["name"]
    where = f"{o}: {d['kind']} {name}"
    tokex = [(c, "initContainers") for c in pod.get("initContainers") or [] if is_tokex(c)]
    tokex += [(c, "containers") for c in pod.get("containers") or [] if is_tokex(c)]
    if len(tokex) != 1:
        fail(f"{where}: expected one tokex container, found {len(tokex)}")
        return
    c, section = tokex[0]
    if section == "initContainers" and c.get("restartPolicy") != "Always":
        fail(f"{where}: tokex under initContainers needs restartPolicy: Always (a native sidecar)")
    sa = pod.get("serviceAccountName")
    if sa and sa != "default" and sa not in (by_kind.get("ServiceAccount") or {}):
        fail(f"{where}: serviceAccountName {sa} is not among the objects applied with it")

    # Security context: tokex's, merged over the pod's.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    eff = {**{k: v for k, v in psc.items() if k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")}, **csc}
    for key, want in (("runAsNonRoot", True), ("runAsUser", TOKEX_UID), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
        if eff.get(key) != want:
            fail(f"{where}: tokex securityContext.{key} is {eff.get(key)!r}, want {want!r}")
    if "ALL" not in ((eff.get("capabilities") or {}).get("drop") or []):
        fail(f"{where}: tokex securityContext.capabilities.drop lacks ALL")
    if (eff.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{where}: tokex seccompProfile is not RuntimeDefault")

    # The config: a ConfigMap mounted as a directory.
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = c.get("volumeMounts") or []
    cfg_mounts = [m for m in mounts if "configMap" in volumes.get(m["name"], {})]
    args = c.get("args") or []
    cfg_path = args[args.index("-c") + 1] if "-c" in args else "/etc/tokex/config.yaml"
    for e in c.get("env") or []:
        if e.get("name") == "TOKEX_CONFIG" and "-c" not in args:
            cfg_path = e.get("value")
    holder = [m for m in cfg_mounts if under(cfg_path, m["mountPath"])]
    if not holder:
        fail(f"{where}: no ConfigMap volume is mounted where tokex reads {cfg_path}")
        return
    m = holder[0]
    if m.get("subPath") or m.get("subPathExpr"):
        fail(f"{where}: the config is mounted with subPath; the kubelet never updates it, so hot reload cannot work")
    cm_name = volumes[m["name"]]["configMap"]["name"]
    key = m.get("subPath") or cfg_path[len(m["mountPath"].rstrip("/")) + 1:]
    cm = (by_kind.get("ConfigMap") or {}).get(cm_name)
    if not cm:
        fail(f"{where}: ConfigMap {cm_name} is not among the objects applied with it")
        return
    text = (cm[0].get("data") or {}).get(key)
    if not isinstance(text, str):
        fail(f"{cm[1]}: ConfigMap {cm_name} has no data.{key}")
        return
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        fail(f"{cm[1]}: ConfigMap {cm_name} data.{key} is not YAML: {e}")
        return
    count("tokex containers cross-checked with their config")

    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    listen = port_of(cfg["listen"]["address"])
    if listen not in ports.values():
        fail(f"{where}: config listen.address port {listen} is not a container port of tokex {ports}")
    admin = (cfg.get("admin") or {}).get("address")
    if not admin:
        fail(f"{cm[1]}: config has no admin.address; the probes need /healthz and /readyz")
    else:
        host = admin.rsplit(":", 1)[0]
        if host not in ("0.0.0.0", "[::]"):
            fail(f"{cm[1]}: admin.address {admin} must bind 0.0.0.0 in a pod (the kubelet probes over the pod IP)")
        if port_of(admin) not in ports.values():
            fail(f"{where}: config admin.address port {port_of(admin)} is not a container port of tokex {ports}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = (c.get(probe) or {}).get("httpGet")
            if not get:
                fail(f"{where}: tokex has no {probe}")
            elif get.get("path") != path or resolve_port(c, get.get("port")) != port_of(admin):
                fail(f"{where}: tokex {probe} is {get}, want {path} on the admin port {port_of(admin)}")

    runtime = cfg.get("runtime") or {}
    delay = parse_duration(runtime.get("shutdown_delay"), 0)
    grace = parse_duration(runtime.get("shutdown_grace"), 30)
    sleep = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")) or {}).get("seconds", 0)
    tgp = pod.get("terminationGracePeriodSeconds", 30)
    if not tgp > delay + grace + sleep:
        fail(f"{where}: terminationGracePeriodSeconds {tgp} must exceed shutdown_delay {delay:g}s + shutdown_grace {grace:g}s + preStop sleep {sleep}s")

    # Every file the config names lies in a volume mounted into tokex.
    for at, path in file_refs(cfg):
        hit = [mm for mm in mounts if under(path, mm["mountPath"])]
        if not hit:
            fail(f"{cm[1]}: {at} = {path} is under no volume mounted into tokex")
            continue
        mm = max(hit, key=lambda x: len(x["mountPath"]))
        if mm.get("subPath"):
            fail(f"{where}: {mm['mountPath']} holds {at} but is mounted with subPath (never updated)")
        vol = volumes.get(mm["name"], {})
        inner = path[len(mm["mountPath"].rstrip("/")) + 1:]
        if at.endswith("actor.token_file"):
            sources = (vol.get("projected") or {}).get("sources") or []
            tok = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s and s["serviceAccountToken"].get("path") == inner]
            if not tok:
                fail(f"{where}: {at} = {path} is no projected serviceAccountToken")
            elif not tok[0].get("audience") or tok[0].get("expirationSeconds", 3600) < 600:
                fail(f"{where}: the projected actor token needs an audience and expirationSeconds >= 600")
            else:
                count("actor tokens checked (projected, with an audience)")
        elif "secret" in vol:
            items = vol["secret"].get("items")
            if items and inner not in [i["path"] for i in items]:
                fail(f"{where}: {at} = {path}: Secret volume {mm['name']} has no item at {inner}")
            if examples:
                docs_text = (REPO / "examples/kubernetes/README.md").read_text()
                if f"create secret generic {vol['secret']['secretName']}" not in docs_text:
                    fail(f"{where}: Secret {vol['secret']['secretName']} is not created by a documented command in examples/kubernetes/README.md")
            count("secret files checked (mounted Secret)")
        if ("secret" in vol or "projected" in vol) and (pod.get("securityContext") or {}).get("fsGroup") != TOKEX_UID:
            fail(f"{where}: set the pod's fsGroup: {TOKEX_UID} so tokex can read {path}")


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


# ------------------------------------------------------- chart values


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


# ----------------------------------------------------- docs and helm


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


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def check_helm(helm: str, chart: Path, goods: list[Path], bads: list[Path], versions: list[str]) -> list[tuple[str, str]]:
    configs = []
    print(f"helm: {run([helm, 'version', '--short']).stdout.strip()}")
    for f in goods:
        r = run([helm, "lint", str(chart), "-f", str(f)])
        if r.returncode != 0:
            fail(f"helm lint {rel(chart)} -f {rel(f)}:\n{r.stdout}{r.stderr}")
            continue
        r = run([helm, "template", "tokex", str(chart), "-f", str(f), "--namespace", "tokex-ci"])
        if r.returncode != 0:
            fail(f"helm template -f {rel(f)}:\n{r.stderr}")
            continue
        count("helm lint + template runs")
        origin = f"helm template -f {rel(f)}"
        docs = [(d, origin) for d in load_all(r.stdout, origin)]
        schema_validate(docs, versions)
        if any(d.get("kind") == "Deployment" for d, _ in docs):
            check_objects(docs, origin, examples=False)
    for f in bads:
        r = run([helm, "template", "tokex", str(chart), "-f", str(f)])
        if r.returncode == 0:
            fail(f"helm template -f {rel(f)} succeeded; the schema should refuse it")
        else:
            count("bad values files refused by helm template")
    # A parent chart that includes the sidecar template (tokex as a dependency).
    parent_src = REPO / "tests/deploy/parent-chart"
    with tempfile.TemporaryDirectory(prefix="tokex-parent-") as tmp:
        parent = Path(tmp) / "orders"
        shutil.copytree(parent_src, parent)
        shutil.copytree(chart, parent / "charts" / "tokex")
        origin = f"helm template {rel(parent_src)}"
        r = run([helm, "lint", str(parent)])
        if r.returncode != 0:
            fail(f"helm lint {rel(parent_src)}:\n{r.stdout}{r.stderr}")
        r = run([helm, "template", "orders", str(parent), "--namespace", "shop"])
        if r.returncode != 0:
            fail(f"{origin}:\n{r.stderr}")
        else:
            docs = [(d, origin) for d in load_all(r.stdout, origin)]
            schema_validate(docs, versions)
            check_objects(docs, origin, examples=False)
            for d, _ in docs:
                if d.get("kind") == "ConfigMap" and "config.yaml" in (d.get("data") or {}):
                    configs.append((f"{origin} ConfigMap {d['metadata']['name']}", d["data"]["config.yaml"]))
            count("parent charts rendered with the sidecar template")
    return configs


# ------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokex", required=True, type=Path, help="the tokex binary (`check --offline`)")
    args = ap.parse_args()
    tokex = args.tokex.resolve()
    if not os.access(tokex, os.X_OK):
        sys.exit(f"validate.py: {tokex} is not an executable tokex binary")

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
    dirs = sorted({p.parent for p in examples.rglob("*") if p.suffix in (".yaml", ".yml", ".json")})
    if not dirs:
        fail("no manifests under examples/kubernetes/")
    for d in dirs:
        docs = []
        for f in sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json")):
            docs += [(doc, rel(f)) for doc in load_all(f.read_text(), rel(f))]
            count("example manifest files")
        schema_validate(docs, versions)
        check_objects(docs, rel(d), examples=True)
        for doc, origin in docs:
            if doc.get("kind") == "ConfigMap" and "config.yaml" in (doc.get("data") or {}):
                configs.append((f"{origin} ConfigMap {doc['metadata']['name']}", doc["data"]["config.yaml"]))

    # 3. The chart's values against its schema (and the configs they hold).
    chart = REPO / "charts/tokex"
    goods, bads, value_configs = check_values(chart)
    configs += value_configs

    # docs/deployment.md: every YAML block is a tokex config, chart values or
    # Kubernetes objects, and is checked as such.
    schema = jsonschema.Draft7Validator(json.loads((chart / "values.schema.json").read_text()))
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    for origin, text in doc_blocks(REPO / "docs/deployment.md"):
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
        count("docs/deployment.md YAML blocks checked")

    # 4. helm, where installed.
    helm = shutil.which("helm")
    if helm:
        configs += check_helm(helm, chart, goods, bads, versions)
    else:
        print("helm: not on PATH; helm lint / helm template not run")

    # 2. Every tokex config, with the binary.
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
    print("\nKubernetes manifests, chart values and tokex configs: all valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
