"""Kubernetes objects: schemas, the checks a schema cannot make, wrong manifests.

Used by validate.py (step 1, the examples under examples/kubernetes/, one
directory being one `kubectl apply -f DIR/`) and by chart.py (step 2, the
golden renders):

1. Every manifest against the Kubernetes OpenAPI schemas bundled in the
   `kubernetes-validate` package, strict (unknown fields are errors), for the
   oldest bundled Kubernetes >= 1.29 (native sidecars) and the newest bundled
   one; then the checks a schema cannot make: selectors that select, Service
   and NetworkPolicy ports that exist (a port *name* only on a native sidecar
   is refused: before Kubernetes 1.32 a Service resolves names on regular
   containers only), tokex's config agreeing with its container (ports,
   admin on 0.0.0.0, probes, mounted files, shutdown timers), the security
   context (tokex's own; in a pod with other containers the pod-level one
   must not set the user). tokex's listeners are `listen.address` and, in
   a check-only deployment, `authz.address` / `authz.grpc_address`; a
   Service never reaches one that binds loopback. The front proxies' custom
   resources (Istio, Envoy Gateway, Gateway API) are checked by crds.py:
   their committed schemas, then their agreement with the tokex they call.
3. tests/deploy/bad-manifests/*.yaml (a good set of objects with one patch)
   must each fail the checks of 1 with the error their comment names, and
   with no other.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import yaml
from kubernetes_validate import utils as kv

import crds
from crds import Tokex
from report import REPO, coalesce, collected_failures, count, fail, load_all, parse_duration, port_of, rel, resolve_port, selects, tokex_listeners

MIN_K8S = (1, 29)  # native sidecars (initContainers[].restartPolicy: Always)
TOKEX_UID = 65532
# Custom resources: no schema in kubernetes-validate. These are checked by
# hand below; crds.SCHEMA_FILES against the schemas in tests/deploy/schemas/.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
BAD_MANIFESTS = REPO / "tests/deploy/bad-manifests"


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
    """kubernetes-validate --strict, for each version; custom resources
    against their committed schemas (crds.py)."""
    for doc, origin in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            fail(f"{origin}: not a Kubernetes object (no apiVersion/kind)")
            continue
        name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            check_service_monitor_shape(doc, f"{origin} {name}")
            count("custom resources checked by hand (no bundled schema)")
            continue
        if crds.is_custom(doc):
            errs = crds.schema_errors(doc, versions[-1])
            for e in errs:
                fail(f"{origin} {name}: invalid: {e}")
            if not errs:
                count("custom resources valid against tests/deploy/schemas (and a strict ObjectMeta)")
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


def check_objects(docs: list[tuple[dict, str]], group: str, examples: bool, mesh: list[tuple[dict, str]] = ()) -> None:
    """Cross-object checks over one set of objects applied together (and
    the Istio mesh config, istiod values, their policies name)."""
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
    tokex = [t for t in (check_pod(pod, by_kind, examples) for pod in pods) if t]
    check_service_listeners(by_kind, tokex)
    crds.check_front_proxies(by_kind, tokex, list(mesh), kube_versions()[-1])


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


def check_pod(pod: Pod, by_kind: dict, examples: bool) -> Tokex | None:
    """The pod's tokex container and its config; None when there is none to check."""
    d, o, spec = pod.workload, pod.origin, pod.spec
    where = f"{o}: {d['kind']} {d['metadata']['name']}"
    tokex = [(c, "initContainers") for c in spec.get("initContainers") or [] if is_tokex(c)]
    tokex += [(c, "containers") for c in spec.get("containers") or [] if is_tokex(c)]
    if len(tokex) != 1:
        fail(f"{where}: expected one tokex container, found {len(tokex)}")
        return None
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
    if not isinstance(cfg, dict):
        return None
    count("tokex containers cross-checked with their config")
    check_ports_and_probes(where, cm_origin, c, cfg)
    check_shutdown_timers(where, spec, c, cfg)
    check_config_files(where, cm_origin, spec, c, cfg, examples)
    return Tokex(pod.labels, c, cfg, cm_origin)


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
    """The listeners and admin are container ports; admin binds 0.0.0.0; the probes hit it."""
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    listeners = tokex_listeners(cfg)
    if not listeners:
        fail(f"{cm_origin}: config has no listen.address and no authz address: tokex serves nothing")
    for setting, address in listeners.items():
        if port_of(address) not in ports.values():
            fail(f"{where}: config {setting} port {port_of(address)} is not a container port of tokex {ports}")
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


def check_service_listeners(by_kind: dict, tokex: list[Tokex]) -> None:
    """A Service port that reaches a tokex listener reaches one bound to the pod IP, not loopback."""
    for name, (d, o) in (by_kind.get("Service") or {}).items():
        for t in (t for t in tokex if selects((d.get("spec") or {}).get("selector"), t.labels)):
            bound = {port_of(a): (s, a) for s, a in tokex_listeners(t.cfg).items()}
            for port in d["spec"].get("ports") or []:
                setting, address = bound.get(resolve_port(t.container, port.get("targetPort", port.get("port"))), (None, ""))
                if address.startswith(("127.", "[::1]", "localhost")):
                    fail(f"{o}: Service {name} port {port.get('name')} reaches tokex's {setting} {address}, bound to loopback: unreachable through the Service")


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
    (`base:`, a directory or file of the repository; a directory's Istio
    mesh config in a subdirectory comes along) so that it is wrong in one way; the checks above must report that (`# error:` names a part of
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
        mesh = [(d, rel(p)) for p in (sorted(base.glob("*/*.yaml")) if base.is_dir() else []) for d in load_all(p.read_text(), rel(p)) if crds.is_mesh_values(d)]
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
            check_objects(tagged, rel(f), examples=case["base"].startswith("examples/"), mesh=mesh)
        expected = [g for g in got if want[0] in g]
        if not expected:
            fail(f"{rel(f)}: not refused with {want[0]!r}; the checks said: {got or 'nothing'}")
        elif len(expected) != len(got):
            fail(f"{rel(f)}: refused, but also for other reasons: {[g for g in got if want[0] not in g]}")
        else:
            count("bad manifests refused")
