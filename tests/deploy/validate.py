#!/usr/bin/env python3
"""Validates everything tokex ships for Kubernetes, offline.

    python tests/deploy/validate.py --tokex target/debug/tokex
    python tests/deploy/validate.py --tokex target/debug/tokex --write-renders   # needs helm

1. Every manifest under examples/kubernetes/ against the Kubernetes OpenAPI
   schemas bundled in the `kubernetes-validate` package, strict (unknown
   fields are errors), for the oldest bundled Kubernetes >= 1.29 (native
   sidecars) and the newest bundled one; then the checks a schema cannot
   make: selectors that select, Service and NetworkPolicy ports that exist
   (a port *name* only on a native sidecar is refused: before Kubernetes 1.32
   a Service resolves names on regular containers only), tokex's config
   agreeing with its container (ports, admin on 0.0.0.0, probes, mounted
   files, shutdown timers), the security context (tokex's own; in a pod with
   other containers the pod-level one must not set the user).
2. The chart's golden renders, tests/deploy/rendered/*.yaml (`helm template`
   of charts/tokex with values.yaml and each ci/*-values.yaml, and of
   tests/deploy/parent-chart, which includes the sidecar templates): checked
   as in 1, on every run, with or without helm. Together they must render an
   HPA, a ServiceMonitor, a NetworkPolicy and a native tokex sidecar.
3. tests/deploy/bad-manifests/*.yaml (a good set of objects with one patch)
   must each fail the checks of 1 with the error their comment names, and
   with no other.
4. Every embedded tokex config (the examples' ConfigMaps, the renders', the
   chart's default `config`, the values files', docs/deployment.md's YAML
   blocks) with `tokex check --offline`.
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

Exits 1 listing every failure; prints what it checked.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
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
RENDERED = REPO / "tests/deploy/rendered"
BAD_MANIFESTS = REPO / "tests/deploy/bad-manifests"
REGENERATE = "PATH=<dir with helm>:$PATH python3 tests/deploy/validate.py --tokex target/debug/tokex --write-renders"

failures: list[str] = []
counts: dict[str, int] = {}
_collecting: list[list[str]] = []  # while non-empty, fail() records into the innermost list


def fail(msg: str) -> None:
    if _collecting:
        _collecting[-1].append(msg)
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


# ------------------------------------------------- Kubernetes schemas


def kube_versions() -> list[str]:
    bundled = kv.all_versions()
    eligible = [v for v in bundled if tuple(int(x) for x in v.split(".")[:2]) >= MIN_K8S]
    if not eligible:
        sys.exit(f"kubernetes-validate bundles no Kubernetes >= {MIN_K8S}: {bundled}")
    return sorted({eligible[0], eligible[-1]}, key=lambda v: tuple(int(x) for x in v.split(".")))


def check_service_monitor_shape(doc: dict, origin: str) -> None:
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
            check_service_monitor_shape(doc, f"{origin} {name}")
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


def declared_ports(containers: list[dict]) -> dict:
    """Port number and port name -> the container that declares it."""
    ports = {}
    for c in containers or []:
        for p in c.get("ports") or []:
            ports[p["containerPort"]] = c
            if p.get("name"):
                ports[p["name"]] = c
    return ports


def port_problem(pod: dict, target) -> str | None:
    """Why a Service targetPort / NetworkPolicy port does not reach the pod, or None.

    A number must be declared by some container. A name must be declared by a
    regular container: before Kubernetes 1.32 the endpoints controller
    resolves names on regular containers only, so a name that only a native
    sidecar (an init container) declares selects no endpoints
    (kubernetes/kubernetes#127958, fixed by #127976), and `kubectl
    port-forward svc/...` fails on it before 1.31 (#125444)."""
    regular = declared_ports(pod.get("containers"))
    init = declared_ports(pod.get("initContainers"))
    if target in regular or (isinstance(target, int) and target in init):
        return None
    if target in init:
        return (
            f"port name {target!r} is declared only on init container {init[target]['name']!r} (a native sidecar): "
            "before Kubernetes 1.32 a Service resolves port names on regular containers only and selects no endpoints "
            "(kubernetes/kubernetes#127958), and `kubectl port-forward svc/` fails on it before 1.31 (#125444); "
            f"use the number ({resolve_port(init[target], target)})"
        )
    return f"{target!r} is no container port of the pod"


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


@dataclass
class Pod:
    """A workload's pod template."""

    workload: dict
    origin: str
    spec: dict
    labels: dict


def check_objects(docs: list[tuple[dict, str]], group: str, examples: bool) -> None:
    """Cross-object checks over one set of objects applied together."""
    objs = [(d, o) for d, o in docs if isinstance(d, dict) and "kind" in d]
    by_kind: dict[str, dict[str, tuple[dict, str]]] = {}
    for d, o in objs:
        by_kind.setdefault(d["kind"], {})[(d.get("metadata") or {}).get("name")] = (d, o)
        if examples and "namespace" in (d.get("metadata") or {}):
            fail(f"{o}: {d['kind']} sets metadata.namespace; the examples are namespace-agnostic")
    pods = workload_pods(objs)
    check_services_and_pdbs(by_kind, pods, group)
    check_network_policies(by_kind, pods, group)
    check_autoscalers(by_kind, group)
    check_service_monitors(by_kind)
    for pod in pods:
        check_pod(pod, by_kind, examples)


def workload_pods(objs: list[tuple[dict, str]]) -> list[Pod]:
    pods = []
    for d, o in objs:
        if d["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        spec = d.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels")
        if not selects(sel, labels):
            fail(f"{o}: {d['kind']} {d['metadata']['name']}: spec.selector.matchLabels {sel} does not select its pod labels {labels}")
        pods.append(Pod(d, o, tmpl.get("spec") or {}, labels))
        count("workloads cross-checked")
    return pods


def check_services_and_pdbs(by_kind: dict, pods: list[Pod], group: str) -> None:
    """Their selectors select pods; each Service targetPort reaches them."""
    for kind, key in (("Service", None), ("PodDisruptionBudget", "matchLabels")):
        for name, (d, o) in (by_kind.get(kind) or {}).items():
            sel = (d.get("spec") or {}).get("selector") or {}
            if key:
                sel = sel.get(key)
            matched = [p for p in pods if selects(sel, p.labels)]
            if not matched:
                fail(f"{o}: {kind} {name}: selector {sel} selects no pod of {group}")
                continue
            if kind != "Service":
                continue
            for port in d["spec"].get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for pod in matched:
                    problem = port_problem(pod.spec, target)
                    if problem:
                        fail(f"{o}: Service {name} port {port.get('name')}: targetPort {problem} (pod of {pod.origin})")


def check_network_policies(by_kind: dict, pods: list[Pod], group: str) -> None:
    """A NetworkPolicy selects pods, and its ingress ports are theirs."""
    for name, (d, o) in (by_kind.get("NetworkPolicy") or {}).items():
        spec = d.get("spec") or {}
        sel = (spec.get("podSelector") or {}).get("matchLabels")
        matched = [p for p in pods if selects(sel, p.labels)]
        if not matched:
            fail(f"{o}: NetworkPolicy {name}: podSelector {sel} selects no pod of {group}")
            continue
        for rule in spec.get("ingress") or []:
            for port in rule.get("ports") or []:
                for pod in matched:
                    problem = port_problem(pod.spec, port.get("port"))
                    if problem:
                        fail(f"{o}: NetworkPolicy {name}: ingress port {problem} (pod of {pod.origin})")
        count("NetworkPolicies cross-checked")


def check_autoscalers(by_kind: dict, group: str) -> None:
    """An HPA scales a workload among the objects, which leaves spec.replicas to it."""
    for hpa_name, (d, o) in (by_kind.get("HorizontalPodAutoscaler") or {}).items():
        ref = (d.get("spec") or {}).get("scaleTargetRef") or {}
        target = (by_kind.get(ref.get("kind")) or {}).get(ref.get("name"))
        if not target:
            fail(f"{o}: HorizontalPodAutoscaler {hpa_name} scales {ref}, which is not among {group}")
        elif "replicas" in target[0].get("spec", {}):
            fail(f"{target[1]}: {ref.get('kind')} {ref.get('name')} sets spec.replicas although an HPA scales it")
        else:
            count("HorizontalPodAutoscalers cross-checked")


def check_service_monitors(by_kind: dict) -> None:
    """A ServiceMonitor selects exactly one Service and scrapes a port it names."""
    for name, (d, o) in (by_kind.get("ServiceMonitor") or {}).items():
        sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        svcs = [s for s in (by_kind.get("Service") or {}).values() if selects(sel, (s[0].get("metadata") or {}).get("labels"))]
        if len(svcs) != 1:
            fail(f"{o}: ServiceMonitor {name} selects {len(svcs)} Services (want exactly the admin Service)")
            continue
        names = [p.get("name") for p in svcs[0][0]["spec"].get("ports") or []]
        for ep in d["spec"].get("endpoints") or []:
            if ep.get("port") not in names:
                fail(f"{o}: ServiceMonitor {name} scrapes port {ep.get('port')!r}; the Service has {names}")


def check_pod(pod: Pod, by_kind: dict, examples: bool) -> None:
    d, o, spec = pod.workload, pod.origin, pod.spec
    where = f"{o}: {d['kind']} {d['metadata']['name']}"
    tokex = [(c, "initContainers") for c in spec.get("initContainers") or [] if is_tokex(c)]
    tokex += [(c, "containers") for c in spec.get("containers") or [] if is_tokex(c)]
    if len(tokex) != 1:
        fail(f"{where}: expected one tokex container, found {len(tokex)}")
        return
    c, section = tokex[0]
    if section == "initContainers":
        if c.get("restartPolicy") != "Always":
            fail(f"{where}: tokex under initContainers needs restartPolicy: Always (a native sidecar)")
        else:
            count("native tokex sidecars checked")
    sa = spec.get("serviceAccountName")
    if sa and sa != "default" and sa not in (by_kind.get("ServiceAccount") or {}):
        fail(f"{where}: serviceAccountName {sa} is not among the objects applied with it")
    check_security_context(where, spec, c)
    cfg, cm_origin = mounted_config(where, spec, c, by_kind)
    if cfg is None:
        return
    count("tokex containers cross-checked with their config")
    check_ports_and_probes(where, cm_origin, c, cfg)
    check_shutdown_timers(where, spec, c, cfg)
    check_config_files(where, cm_origin, spec, c, cfg, examples)


IDENTITY = ("runAsNonRoot", "runAsUser", "runAsGroup")


def check_security_context(where: str, pod: dict, c: dict) -> None:
    """tokex runs restricted. Alone in its pod it may inherit the user from the
    pod's securityContext; next to other containers it must set its own, and
    the pod's must not set one (it would apply to the application too: an
    application image running as root fails with CreateContainerConfigError)."""
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    others = [x for x in (pod.get("containers") or []) + (pod.get("initContainers") or []) if x is not c]
    inherited = ("seccompProfile",) if others else IDENTITY + ("seccompProfile",)
    if others and any(k in psc for k in IDENTITY):
        fail(
            f"{where}: the pod-level securityContext sets {', '.join(k for k in IDENTITY if k in psc)}, which applies to "
            f"the application's containers ({', '.join(x.get('name', '?') for x in others)}) too; set the user on the "
            "tokex container only (an application image running as root would fail with CreateContainerConfigError)"
        )
    eff = {**{k: v for k, v in psc.items() if k in inherited}, **csc}
    want = {"runAsNonRoot": True, "runAsUser": TOKEX_UID, "runAsGroup": TOKEX_UID, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
    for key, value in want.items():
        if eff.get(key) != value:
            fail(f"{where}: tokex securityContext.{key} is {eff.get(key)!r}, want {value!r}")
    if "ALL" not in ((eff.get("capabilities") or {}).get("drop") or []):
        fail(f"{where}: tokex securityContext.capabilities.drop lacks ALL")
    if (eff.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{where}: tokex seccompProfile is not RuntimeDefault")


def mounted_config(where: str, pod: dict, c: dict, by_kind: dict) -> tuple[dict | None, str]:
    """The tokex config of a ConfigMap mounted as a directory where tokex reads it."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    cfg_mounts = [m for m in c.get("volumeMounts") or [] if "configMap" in volumes.get(m["name"], {})]
    args = c.get("args") or []
    cfg_path = args[args.index("-c") + 1] if "-c" in args else "/etc/tokex/config.yaml"
    for e in c.get("env") or []:
        if e.get("name") == "TOKEX_CONFIG" and "-c" not in args:
            cfg_path = e.get("value")
    holder = [m for m in cfg_mounts if under(cfg_path, m["mountPath"])]
    if not holder:
        fail(f"{where}: no ConfigMap volume is mounted where tokex reads {cfg_path}")
        return None, ""
    m = holder[0]
    if m.get("subPath") or m.get("subPathExpr"):
        fail(f"{where}: the config is mounted with subPath; the kubelet never updates it, so hot reload cannot work")
    cm_name = volumes[m["name"]]["configMap"]["name"]
    key = m.get("subPath") or cfg_path[len(m["mountPath"].rstrip("/")) + 1:]
    cm = (by_kind.get("ConfigMap") or {}).get(cm_name)
    if not cm:
        fail(f"{where}: ConfigMap {cm_name} is not among the objects applied with it")
        return None, ""
    text = (cm[0].get("data") or {}).get(key)
    if not isinstance(text, str):
        fail(f"{cm[1]}: ConfigMap {cm_name} has no data.{key}")
        return None, ""
    try:
        return yaml.safe_load(text), cm[1]
    except yaml.YAMLError as e:
        fail(f"{cm[1]}: ConfigMap {cm_name} data.{key} is not YAML: {e}")
        return None, ""


def check_ports_and_probes(where: str, cm_origin: str, c: dict, cfg: dict) -> None:
    """listen and admin are container ports; admin binds 0.0.0.0; the probes hit it."""
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    listen = port_of(cfg["listen"]["address"])
    if listen not in ports.values():
        fail(f"{where}: config listen.address port {listen} is not a container port of tokex {ports}")
    admin = (cfg.get("admin") or {}).get("address")
    if not admin:
        fail(f"{cm_origin}: config has no admin.address; the probes need /healthz and /readyz")
        return
    host = admin.rsplit(":", 1)[0]
    if host not in ("0.0.0.0", "[::]"):
        fail(f"{cm_origin}: admin.address {admin} must bind 0.0.0.0 in a pod (the kubelet probes over the pod IP)")
    if port_of(admin) not in ports.values():
        fail(f"{where}: config admin.address port {port_of(admin)} is not a container port of tokex {ports}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            fail(f"{where}: tokex has no {probe}")
        elif get.get("path") != path or resolve_port(c, get.get("port")) != port_of(admin):
            fail(f"{where}: tokex {probe} is {get}, want {path} on the admin port {port_of(admin)}")


def check_shutdown_timers(where: str, pod: dict, c: dict, cfg: dict) -> None:
    """terminationGracePeriodSeconds > shutdown_delay + shutdown_grace + preStop sleep."""
    runtime = cfg.get("runtime") or {}
    delay = parse_duration(runtime.get("shutdown_delay"), 0)
    grace = parse_duration(runtime.get("shutdown_grace"), 30)
    sleep = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")) or {}).get("seconds", 0)
    tgp = pod.get("terminationGracePeriodSeconds", 30)
    if not tgp > delay + grace + sleep:
        fail(f"{where}: terminationGracePeriodSeconds {tgp} must exceed shutdown_delay {delay:g}s + shutdown_grace {grace:g}s + preStop sleep {sleep}s")


def check_config_files(where: str, cm_origin: str, pod: dict, c: dict, cfg: dict, examples: bool) -> None:
    """Every file the config names lies in a volume mounted into tokex."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = c.get("volumeMounts") or []
    for at, path in file_refs(cfg):
        hit = [mm for mm in mounts if under(path, mm["mountPath"])]
        if not hit:
            fail(f"{cm_origin}: {at} = {path} is under no volume mounted into tokex")
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


# ------------------------------------------------------ bad manifests


def check_bad_manifests(versions: list[str]) -> None:
    """Each tests/deploy/bad-manifests/*.yaml patches a good set of objects
    (`base:`, a directory or file of the repository) so that it is wrong in
    one way; the checks above must report that (`# error:` names a part of
    the message) and nothing else. `patch:` maps `Kind/name` to a merge
    patch of that object (maps merge, lists are replaced, null deletes)."""
    cases = sorted(BAD_MANIFESTS.glob("*.yaml"))
    if not cases:
        fail(f"no bad manifests under {rel(BAD_MANIFESTS)}")
    for f in cases:
        text = f.read_text()
        want = re.findall(r"^# error: (.+)$", text, re.M)
        case = yaml.safe_load(text) or {}
        if not re.search(r"^# wrong: \S", text, re.M) or len(want) != 1 or not case.get("base") or not case.get("patch"):
            fail(f"{rel(f)}: needs `# wrong: <what>` and `# error: <part of the message>` comments, `base:` and `patch:`")
            continue
        base = REPO / case["base"]
        files = sorted(p for p in base.iterdir() if p.suffix == ".yaml") if base.is_dir() else [base]
        docs = [d for p in files for d in load_all(p.read_text(), rel(p))]
        unpatched = dict(case["patch"])
        for i, d in enumerate(docs):
            key = f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if key in unpatched:
                docs[i] = coalesce(d, unpatched.pop(key))
        if unpatched:
            fail(f"{rel(f)}: patch names objects not in {case['base']}: {sorted(unpatched)}")
            continue
        with collected_failures() as got:
            tagged = [(d, rel(f)) for d in docs]
            schema_validate(tagged, versions)
            check_objects(tagged, rel(f), examples=case["base"].startswith("examples/"))
        expected = [g for g in got if want[0] in g]
        if not expected:
            fail(f"{rel(f)}: not refused with {want[0]!r}; the checks said: {got or 'nothing'}")
        elif len(expected) != len(got):
            fail(f"{rel(f)}: refused, but also for other reasons: {[g for g in got if want[0] not in g]}")
        else:
            count("bad manifests refused")


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
