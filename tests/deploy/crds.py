"""Custom resources of the front proxies tokex answers checks for (SPEC §8):
their committed schemas, and the checks a schema cannot make.

Used by objects.py (schema_validate and check_objects) for the examples
under examples/kubernetes/, the bad manifests, and docs/deployment.md:

1. Istio's AuthorizationPolicy, Envoy Gateway's SecurityPolicy and the
   Gateway API's HTTPRoute against the JSON schemas in tests/deploy/schemas/
   (each file's $comment says where it came from), and their metadata
   against the strict Kubernetes ObjectMeta kubernetes-validate bundles. An
   AuthorizationPolicy also gets the rules Istio's validation webhook adds
   (istio/istio pkg/config/validation/validation.go,
   ValidateAuthorizationPolicy): CUSTOM needs rules and provider.name,
   provider only with CUSTOM, no rule fields CUSTOM does not support.
2. Istio's mesh config (istiod Helm values with meshConfig.extensionProviders,
   in a subdirectory kubectl does not apply) against its schema.
3. What only the objects together show: an AuthorizationPolicy names a
   provider of the mesh config and does not select tokex itself; a
   provider's or SecurityPolicy's service and port are a Service among the
   objects that reaches tokex's HTTP check listener (authz.address) or gRPC
   one (authz.grpc_address), Istio knowing the port's protocol; the check
   path prefix equals tokex's authz.path_prefix; the proxy waits longer than
   tokex's exchange budget; tokex's credential header reaches the backend
   and, for Istio's HTTP provider, the caller's token reaches tokex; every
   path an HTTPRoute protected by tokex forwards is one tokex has a route for.

An object that fails 1 is left out of 3: its errors are already reported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

import jsonschema
from kubernetes_validate import utils as kv

from report import REPO, count, fail, parse_duration, port_of, rel, resolve_port, selects, tokex_listeners

SCHEMAS = REPO / "tests/deploy/schemas"
SCHEMA_FILES = {
    ("security.istio.io/v1", "AuthorizationPolicy"): "istio-authorizationpolicy-v1.schema.json",
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"): "envoy-gateway-securitypolicy-v1alpha1.schema.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway-api-httproute-v1.schema.json",
}
MESH_SCHEMA = "istio-meshconfig-extensionproviders.schema.json"
EG_DEFAULT_TIMEOUT = 10.0  # ExtAuth.timeout: "If not specified, defaults to 10 seconds."
ISTIO_DEFAULT_TIMEOUT = 600.0  # EnvoyExternalAuthorization*Provider.timeout: "default timeout: 600s"


@dataclass
class Tokex:
    """A tokex container among the objects, with its config."""

    labels: dict  # its pod's labels
    container: dict
    cfg: dict
    origin: str  # the ConfigMap's file


# ---------------------------------------------------------------- 1, 2: schemas


def is_custom(doc: dict) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in SCHEMA_FILES


def is_mesh_values(doc) -> bool:
    """istiod Helm values holding Istio's mesh config (no Kubernetes object)."""
    return isinstance(doc, dict) and "kind" not in doc and "meshConfig" in doc


@cache
def validator(name: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((SCHEMAS / name).read_text()))


def json_errors(name: str, doc) -> list[str]:
    out = []
    for e in sorted(validator(name).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        out.append(f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message} (schema {rel(SCHEMAS / name)})")
    return out


def schema_errors(doc: dict, version: str) -> list[str]:
    """Why a custom resource is invalid: its schema, its metadata, Istio's rules."""
    errs = json_errors(SCHEMA_FILES[(doc["apiVersion"], doc["kind"])], doc)
    try:  # metadata, as the strict ObjectMeta of a core object
        kv.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata")}, version, strict=True)
    except kv.ValidationError as e:
        errs.append(f"{'.'.join(str(p) for p in e.path)}: {e.message} (ObjectMeta, Kubernetes {version}, strict)")
    if doc["kind"] == "AuthorizationPolicy" and not errs:
        errs += [f"refused by Istio's validation: {m}" for m in istio_policy_errors(doc.get("spec") or {})]
    return errs


def istio_policy_errors(spec: dict) -> list[str]:
    """The part of Istio's ValidateAuthorizationPolicy that concerns these examples."""
    out, action, rules = [], spec.get("action") or "ALLOW", spec.get("rules")
    if action == "CUSTOM":
        if rules is None:
            out.append(
                "CUSTOM action without `rules` is meaningless as it will never be triggered, "
                "add an empty rule `{}` if you want it be triggered for every request"
            )
        elif not (spec.get("provider") or {}).get("name"):
            out.append("`provider.name` must not be empty")
        for rule in rules or []:
            for src in (f.get("source") or {} for f in rule.get("from") or []):
                for key in ("namespaces", "notNamespaces", "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals"):
                    if src.get(key):
                        out.append(f"From.{key[0].upper()}{key[1:]} is currently not supported with CUSTOM action")
            for when in rule.get("when") or []:
                key = when.get("key") or ""
                if key in ("source.namespace", "source.serviceAccount", "source.principal") or key.startswith("request.auth."):
                    out.append(f"{key} is currently not supported with CUSTOM action")
    elif spec.get("provider") is not None:
        out.append(f"`provider` must not be with non CUSTOM action, found {action}")
    for i, rule in enumerate(rules or []):
        for part, inner in (("from", "source"), ("to", "operation")):
            if rule.get(part) is not None and not rule[part]:
                out.append(f"`{part}` must not be empty, found at rule {i}")
            for item in rule.get(part) or []:
                if not item.get(inner):
                    out.append(f"`{part}.{inner}` must not be {'nil' if inner not in item else 'empty'}, found at rule {i}")
    return out


def check_mesh_values(mesh: list[tuple[dict, str]]) -> None:
    for doc, origin in mesh:
        errs = json_errors(MESH_SCHEMA, doc)
        for e in errs:
            fail(f"{origin}: Istio mesh config: {e}")
        if not errs:
            count("Istio mesh configs valid against tests/deploy/schemas")


# ------------------------------------------------------- 3: objects together


def check_front_proxies(by_kind: dict, tokex: list[Tokex], mesh: list[tuple[dict, str]], version: str) -> None:
    """The front proxies' objects agree with the tokex they call."""

    def valid(kind):
        return [(d, o) for d, o in (by_kind.get(kind) or {}).values() if is_custom(d) and not schema_errors(d, version)]

    providers = {}
    for doc, origin in mesh:
        if json_errors(MESH_SCHEMA, doc):
            continue
        for p in doc["meshConfig"]["extensionProviders"]:
            providers[p["name"]] = (p, origin)
            if "envoyExtAuthzHttp" in p or "envoyExtAuthzGrpc" in p:
                check_istio_provider(p, origin, by_kind, tokex)
    for doc, origin in valid("AuthorizationPolicy"):
        check_istio_policy(doc, origin, providers, mesh, tokex)
    routes = {d["metadata"]["name"]: (d, o) for d, o in valid("HTTPRoute")}
    for doc, origin in valid("SecurityPolicy"):
        check_security_policy(doc, origin, by_kind, tokex, routes, set(by_kind.get("HTTPRoute") or {}))


def check_istio_policy(doc: dict, origin: str, providers: dict, mesh: list, tokex: list[Tokex]) -> None:
    spec, where = doc["spec"], f"{origin}: AuthorizationPolicy {doc['metadata']['name']}"
    if spec.get("action") != "CUSTOM":
        return
    name = spec["provider"]["name"]
    if name not in providers:
        files = ", ".join(o for _, o in mesh) or "no mesh config among the example's files (istiod values with meshConfig)"
        fail(f"{where}: provider.name {name!r} is no extension provider of the mesh config ({files}: {sorted(providers)})")
    labels = (spec.get("selector") or {}).get("matchLabels")
    if not labels:
        fail(f"{where}: no selector: a CUSTOM policy then applies to every workload of its namespace, tokex's own pods included")
    elif any(selects(labels, t.labels) for t in tokex):
        fail(f"{where}: its selector {labels} selects tokex's own pods: tokex's checks would wait for tokex")
    else:
        count("AuthorizationPolicies cross-checked with the mesh config and tokex")


def check_istio_provider(p: dict, origin: str, by_kind: dict, tokex: list[Tokex]) -> None:
    kind = "envoyExtAuthzHttp" if "envoyExtAuthzHttp" in p else "envoyExtAuthzGrpc"
    conf, where = p[kind], f"{origin}: extension provider {p['name']} ({kind})"
    host = conf["service"].split("/", 1)[-1]
    m = re.fullmatch(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc(\.cluster\.local)?", host)
    if not m:
        fail(f"{where}: service {conf['service']!r} is not <service>.<namespace>.svc.cluster.local")
        return
    want = "authz.address" if kind == "envoyExtAuthzHttp" else "authz.grpc_address"
    found = backend(where, by_kind, tokex, m.group(1), int(conf["port"]), want)
    if not found:
        return
    t, svc_port = found
    proto = (svc_port.get("appProtocol") or svc_port.get("name", "").split("-", 1)[0]).lower()
    if kind == "envoyExtAuthzGrpc" and proto != "grpc":
        fail(f"{where}: Service port {svc_port.get('name')} is not declared gRPC (appProtocol: grpc or a grpc- name), and Istio takes a port's protocol from these")
    if kind == "envoyExtAuthzHttp" and proto not in ("http", "http2"):
        fail(f"{where}: Service port {svc_port.get('name')} is not declared HTTP (appProtocol: http or an http- name), and Istio takes a port's protocol from these")
    longer_than_budget(where, "timeout", parse_duration(conf.get("timeout"), ISTIO_DEFAULT_TIMEOUT), t)
    if kind == "envoyExtAuthzHttp":  # a gRPC check carries the original path, with no prefix
        same_prefix(where, "pathPrefix", conf.get("pathPrefix"), t)
        sent = conf.get("includeRequestHeadersInCheck") or []
        if exchanges(t.cfg) and not any(istio_match(pat, "authorization") for pat in sent):
            fail(f"{where}: includeRequestHeadersInCheck lacks authorization: tokex would never see the caller's token")
        missing = [h for h in forward_headers(t.cfg) if not any(istio_match(pat, h) for pat in conf.get("headersToUpstreamOnAllow") or [])]
        if missing:
            fail(f"{where}: headersToUpstreamOnAllow lacks {missing}: tokex's credential would not reach the workload")
    count("Istio extension providers cross-checked with tokex's Service and config")


def check_security_policy(doc: dict, origin: str, by_kind: dict, tokex: list[Tokex], routes: dict, present: set) -> None:
    """`routes`: the valid HTTPRoutes by name; `present`: the names of all of them."""
    spec, where = doc["spec"], f"{origin}: SecurityPolicy {doc['metadata']['name']}"
    ext = spec.get("extAuth")
    if not ext:
        return
    kind = "http" if "http" in ext else "grpc"
    svc = ext[kind]
    refs = svc.get("backendRefs") or [svc["backendRef"]]
    want = "authz.address" if kind == "http" else "authz.grpc_address"
    reached = []
    for ref in refs:
        if (ref.get("kind") or "Service") != "Service" or ref.get("group") not in (None, ""):
            fail(f"{where}: extAuth.{kind} backend {ref.get('kind')} {ref['name']} is no Service; tokex is reached through one")
        elif "port" not in ref:
            fail(f"{where}: extAuth.{kind} backend {ref['name']} has no port")
        else:
            found = backend(where, by_kind, tokex, ref["name"], ref["port"], want)
            reached += [found[0]] if found else []
    for t in reached:
        longer_than_budget(where, "extAuth.timeout", parse_duration(ext.get("timeout"), EG_DEFAULT_TIMEOUT), t)
        if kind == "http":  # a gRPC check carries the original path, with no prefix
            same_prefix(where, "extAuth.http.path", svc.get("path"), t)
            missing = [h for h in forward_headers(t.cfg) if h not in [x.lower() for x in svc.get("headersToBackend") or []]]
            if missing:
                fail(f"{where}: extAuth.http.headersToBackend lacks {missing}: tokex's credential would not reach the backend")
        sent = [h.lower() for h in ext.get("headersToExtAuth") or []]
        if kind == "grpc" and sent and exchanges(t.cfg) and "authorization" not in sent:
            fail(f"{where}: extAuth.headersToExtAuth lacks authorization: tokex would never see the caller's token")
    targets = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
    for ref in targets:
        if ref["kind"] != "HTTPRoute":
            continue  # a Gateway: its routes are not among the objects
        if ref["name"] not in present:
            fail(f"{where}: targets HTTPRoute {ref['name']}, which is not among the objects")
        for t in reached if ref["name"] in routes else []:
            check_route_coverage(*routes[ref["name"]], t)
    count("SecurityPolicies cross-checked with tokex's Service, config and routes")


def check_route_coverage(route: dict, origin: str, t: Tokex) -> None:
    """Every path the HTTPRoute forwards has a tokex route; tokex answers 404 otherwise."""
    for rule in route["spec"].get("rules") or []:
        for match in rule.get("matches") or [{}]:
            path = match.get("path") or {}
            typ, value = path.get("type", "PathPrefix"), path.get("value", "/")
            if typ == "RegularExpression":
                continue
            if not any(tokex_route_covers(r, typ, value) for r in t.cfg.get("routes") or []):
                fail(
                    f"{origin}: HTTPRoute {route['metadata']['name']} forwards {typ} {value}, which no tokex route "
                    f"({t.origin}) matches: tokex would refuse every such request with 404"
                )


# ------------------------------------------------------------------ helpers


def backend(where: str, by_kind: dict, tokex: list[Tokex], name: str, port: int, want: str):
    """(tokex, Service port) when Service `name` port `port` reaches tokex's `want` listener; else fails."""
    svc = (by_kind.get("Service") or {}).get(name)
    if not svc:
        fail(f"{where}: names Service {name}, which is not among the objects")
        return None
    sp = [p for p in svc[0]["spec"].get("ports") or [] if p.get("port") == port]
    if not sp:
        fail(f"{where}: Service {name} has no port {port} ({[p.get('port') for p in svc[0]['spec'].get('ports') or []]})")
        return None
    behind = [t for t in tokex if selects(svc[0]["spec"].get("selector"), t.labels)]
    if not behind:
        fail(f"{where}: Service {name} selects no tokex pod")
        return None
    t = behind[0]
    number = resolve_port(t.container, sp[0].get("targetPort", port))
    listeners = {setting: port_of(a) for setting, a in tokex_listeners(t.cfg).items()}
    got = [s for s, n in listeners.items() if n == number]
    if want not in got:
        fail(f"{where}: Service {name} port {port} reaches tokex's port {number} ({', '.join(got) or 'no listener'}), not {want} {listeners.get(want)}")
        return None
    return t, sp[0]


def same_prefix(where: str, field: str, prefix: str | None, t: Tokex) -> None:
    theirs = ((t.cfg.get("authz") or {}).get("path_prefix"))
    if (prefix or None) != theirs:
        fail(f"{where}: {field} {prefix!r} is not tokex's authz.path_prefix {theirs!r} ({t.origin}): tokex would route the checks by the wrong path")


def longer_than_budget(where: str, field: str, seconds: float, t: Tokex) -> None:
    budget = max((parse_duration(a.get("timeout"), 0) for a in (t.cfg.get("authorization_servers") or {}).values()), default=0)
    if seconds <= budget:
        fail(f"{where}: {field} {seconds:g}s is not above tokex's exchange budget {budget:g}s ({t.origin}): the proxy would give up before tokex answers")


def exchanges(cfg: dict) -> bool:
    """Some route needs the caller's token."""
    return any((r.get("auth") or "exchange") == "exchange" for r in cfg.get("routes") or [])


def forward_headers(cfg: dict) -> list[str]:
    """The headers tokex puts a credential in (auth: none forwards none)."""
    out = {((r.get("forward") or {}).get("header") or "authorization").lower() for r in cfg.get("routes") or [] if (r.get("auth") or "exchange") != "none"}
    return sorted(out)


def istio_match(pattern: str, header: str) -> bool:
    """Istio's header list syntax: exact, "prefix*" or "*suffix"."""
    pattern, header = pattern.lower(), header.lower()
    if pattern.endswith("*"):
        return header.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return header.endswith(pattern[1:])
    return pattern == header


def tokex_route_covers(route: dict, typ: str, value: str) -> bool:
    """A tokex route matches every request with this path (by path only)."""
    m = route.get("match") or {}
    if "path" in m:
        return typ == "Exact" and value == m["path"]
    prefix = (m.get("path_prefix") or "/").rstrip("/")
    return prefix == "" or value == prefix or value.startswith(prefix + "/")
