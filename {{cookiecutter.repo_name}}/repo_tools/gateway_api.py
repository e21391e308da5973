"""The Kubernetes Gateway API as Istio implements it: how a request from the internet is routed, and what
Istio deploys for a Gateway.

Routing follows the Gateway API specification (v1.5) where it is exact and Istio's implementation where the
specification leaves the choice to it (pilot/pkg/config/kube/gateway/conversion.go):
- a listener is picked by port and hostname (the most specific hostname wins); HTTPS listeners are picked by
  SNI, so a host none of them names fails the handshake;
- an HTTPRoute attaches when a parentRef names the Gateway (namespace defaulting to the route's own),
  its sectionName (if any) names the listener, its port (if any) is the listener's, and the listener's
  allowedRoutes admit the route's namespace and kind;
- the route's hostnames must intersect the listener's and match the request;
- across every attached route, the match that wins is the one with an Exact path, else the longest
  PathPrefix (measured without a trailing "/"), else a RegularExpression (Istio's order), then a method, then
  the most header matches (Exact or RegularExpression, names case-insensitive); a tie between two routes would
  be broken by their creation time, which no build knows, so it is Unmodelled, as are query matches, and
  matches from routes written for different hostnames (Istio sorts within one hostname only);
- PathPrefix matches whole path segments ("/api" matches "/api" and "/api/x", never "/apiary");
- filters: RequestRedirect answers, URLRewrite changes the path the backend sees, header modifiers and
  mirrors do not change the answer; backendRefs with weights (weight 0 gets nothing); a backend in another
  namespace needs a ReferenceGrant there, else the answer is 500;
- the rule's timeout and retries as repo_tools.resilience reads them.

Anything else that could change the answer raises Unmodelled, as in repo_tools.mesh.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from repo_tools import load_yaml
from repo_tools.layout import GATEWAY_NAME_LABEL, IngressGateway
from repo_tools.resilience import (
    Destination,
    RoutePolicy,
    http_route_destination,
    http_route_policy,
    http_route_rule_name,
)
from repo_tools.resources import Unmodelled, describe, name_of, namespace_of, of_kind

GROUP = "gateway.networking.k8s.io"
T = TypeVar("T")
GATEWAY_CLASS = "istio"
PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}
CATCH_ALL = (PATH_RANK["PathPrefix"], 1)  # PathPrefix "/", which Istio moves behind every other match
CLASS_DEFAULTS = "gateway.istio.io/defaults-for-class"  # a ConfigMap label: options for every Gateway of a class
FILTERS_THAT_DO_NOT_CHANGE_THE_ANSWER = {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"}


@dataclass(frozen=True)
class Refused:
    """The gateway answers without reaching a workload: a redirect, an error, or no route."""

    outcome: str
    because: str


@dataclass(frozen=True)
class Routed:
    """The request goes on to the rule's Services by weight, with the path the backend sees."""

    destinations: tuple[Destination, ...]
    path: str
    because: str
    policy: RoutePolicy
    route_name: str  # the Envoy route's name

    @property
    def services(self) -> tuple[str, ...]:
        """The Services ("name.namespace") that take a share of the requests."""
        return tuple(f"{d.service}.{d.namespace}" for d in self.destinations if d.weight > 0)


def the_gateway(docs: list[dict], gateway: IngressGateway) -> dict | None:
    """The Gateway resource Istio deploys the ingress gateway for, if the build has it."""
    return next(
        (
            gw
            for gw in of_kind(docs, "Gateway")
            if gw.get("apiVersion", "").startswith(f"{GROUP}/")
            and name_of(gw) == gateway.gateway_name
            and namespace_of(gw) == gateway.namespace
        ),
        None,
    )


def route(
    docs: list[dict],
    gateway: IngressGateway,
    scheme: str,
    host: str,
    path: str,
    method: str,
    headers: dict[str, str] | None = None,
    admit: Callable[[int], T | None] | None = None,
) -> Refused | Routed | T:
    """Where the gateway sends the request. `admit`, given the listener's port, answers for the gateway's own
    filters (JWT, RBAC), which run once a listener took the request and before any route."""
    gw = the_gateway(docs, gateway)
    port = 443 if scheme == "https" else 80
    if gw is None or gw["spec"].get("gatewayClassName") != GATEWAY_CLASS:
        return Refused("no-route", f"no Gateway {gateway.namespace}/{gateway.gateway_name} of class {GATEWAY_CLASS}")
    listener = pick_listener(gw, port, host)
    if listener is None:
        # HTTPS listeners are chosen by SNI: a host none of them names fails the handshake.
        outcome = (
            "tls-failure"
            if scheme == "https" and any(other["port"] == port for other in gw["spec"].get("listeners", []))
            else "no-route"
        )
        return Refused(outcome, f"no listener of {describe(gw)} serves {host}:{port}")
    where = f"{describe(gw)} listener {listener['name']}"
    protocol = listener.get("protocol")
    if (scheme == "https") != (protocol == "HTTPS"):
        return Refused("tls-failure" if scheme == "https" else "no-answer", f"{where} speaks {protocol} on {port}")
    if protocol == "HTTPS":
        problem = tls_problem(docs, gw, listener)
        if problem:
            return Refused("tls-failure", f"{where}: {problem}")
    refused = admit(port) if admit else None
    if refused is not None:
        return refused
    candidates = [
        candidate
        for http_route in attached_routes(docs, gw, listener)
        if matched_hostname(http_route, host) is not None
        for candidate in matching_rules(http_route, path, method, {k.lower(): v for k, v in (headers or {}).items()})
    ]
    if not candidates:
        return Refused("no-route", f"no HTTPRoute attached to {where} matches {host}{path}: 404")
    keys = {matched_hostname(c[1], host) or "" for c in candidates if c[0][:2] != CATCH_ALL}
    if len(keys) > 1:
        # Istio sorts matches only among routes written for the same hostname, then appends the groups unsorted.
        raise Unmodelled(f"HTTPRoutes for different hostnames ({', '.join(sorted(keys))}) both match {host}{path}")
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    best_rank, http_route, number, rule, described = candidates[0]
    rivals = [c for c in candidates[1:] if c[0] == best_rank and c[1] is not http_route]
    if rivals:
        raise Unmodelled(
            f"{describe(http_route)} and {describe(rivals[0][1])} match {path} equally well: "
            "the older route wins, and no build knows which is older"
        )
    plain = " serves plain HTTP" if scheme == "http" else ""
    routed = f"{where}{plain}; {describe(http_route)} rule {rule.get('name') or number} ({described})"
    return apply_rule(docs, http_route, rule, number, path, routed)


def pick_listener(gw: dict, port: int, host: str) -> dict | None:
    """The listener on the port whose hostname matches, the most specific one first."""
    listeners = [
        listener
        for listener in gw["spec"].get("listeners", [])
        if listener.get("port") == port and hostname_matches(listener.get("hostname"), host)
    ]
    return max(listeners, key=lambda listener: hostname_specificity(listener.get("hostname")), default=None)


def hostname_matches(pattern: str | None, host: str) -> bool:
    """A listener or route hostname: absent matches every host; "*.a.b" matches any host below a.b."""
    if not pattern:
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return pattern == host


def hostname_specificity(pattern: str | None) -> tuple[int, int]:
    if not pattern:
        return (0, 0)
    return (1 if pattern.startswith("*.") else 2, len(pattern))


def tls_problem(docs: list[dict], gw: dict, listener: dict) -> str:
    tls = listener.get("tls") or {}
    if tls.get("mode", "Terminate") != "Terminate":
        raise Unmodelled(f"{describe(gw)} listener {listener['name']} TLS mode {tls.get('mode')}")
    refs = tls.get("certificateRefs") or []
    if len(refs) != 1 or refs[0].get("kind", "Secret") != "Secret" or refs[0].get("group", "") != "":
        raise Unmodelled(f"{describe(gw)} listener {listener['name']} certificateRefs {refs}")
    secret, secret_namespace = refs[0]["name"], refs[0].get("namespace", namespace_of(gw))
    if secret_namespace != namespace_of(gw) and not granted(
        docs, "Gateway", namespace_of(gw), "Secret", f"{secret_namespace}/{secret}"
    ):
        return (
            f"Secret {secret_namespace}/{secret} is in another namespace and no ReferenceGrant there admits the Gateway"
        )
    makers = [cert for cert in of_kind(docs, "Certificate") if cert["spec"].get("secretName") == secret]
    if any(namespace_of(cert) == secret_namespace for cert in makers):
        return ""
    elsewhere = ", ".join(describe(cert) for cert in makers) or "nothing"
    return f"Secret {secret_namespace}/{secret} is read from {secret_namespace}, but is made by {elsewhere}: the handshake fails"


def granted(docs: list[dict], source_kind: str, source_namespace: str, target_kind: str, target: str) -> bool:
    """Does a ReferenceGrant in the target's namespace let a Gateway API object (Gateway, HTTPRoute) of that
    namespace refer to the core object (Secret, Service) `target`, written namespace/name?"""
    target_namespace, target_name = target.split("/")
    for grant in of_kind(docs, "ReferenceGrant"):
        spec = grant.get("spec", {})
        admits_source = any(
            entry.get("group") == GROUP
            and entry.get("kind") == source_kind
            and entry.get("namespace") == source_namespace
            for entry in spec.get("from", [])
        )
        admits_target = any(
            entry.get("group") == ""
            and entry.get("kind") == target_kind
            and entry.get("name", target_name) == target_name
            for entry in spec.get("to", [])
        )
        if namespace_of(grant) == target_namespace and admits_source and admits_target:
            return True
    return False


def attached_routes(docs: list[dict], gw: dict, listener: dict) -> list[dict]:
    """HTTPRoutes that name this listener in a parentRef and that its allowedRoutes admit."""
    return [
        http_route
        for http_route in of_kind(docs, "HTTPRoute")
        if any(names_listener(ref, http_route, gw, listener) for ref in http_route["spec"].get("parentRefs", []))
        and admits(docs, gw, listener, http_route)
    ]


def names_listener(ref: dict, http_route: dict, gw: dict, listener: dict) -> bool:
    return (
        ref.get("group", GROUP) == GROUP
        and ref.get("kind", "Gateway") == "Gateway"
        and ref.get("namespace", namespace_of(http_route)) == namespace_of(gw)
        and ref["name"] == name_of(gw)
        and ref.get("sectionName", listener["name"]) == listener["name"]
        and ref.get("port", listener["port"]) == listener["port"]
    )


def admits(docs: list[dict], gw: dict, listener: dict, http_route: dict) -> bool:
    allowed = listener.get("allowedRoutes") or {}
    kinds = allowed.get("kinds")
    if kinds and not any(k.get("group", GROUP) == GROUP and k["kind"] == "HTTPRoute" for k in kinds):
        return False
    namespaces = allowed.get("namespaces") or {}
    source = namespaces.get("from", "Same")
    if source == "All":
        return True
    if source == "Same":
        return namespace_of(http_route) == namespace_of(gw)
    selector = namespaces.get("selector") or {}
    if selector.get("matchExpressions"):
        raise Unmodelled(f"{describe(gw)} listener {listener['name']} selects namespaces by expression")
    labels = namespace_labels(docs, namespace_of(http_route))
    return all(labels.get(key) == value for key, value in (selector.get("matchLabels") or {}).items())


def namespace_labels(docs: list[dict], namespace: str) -> dict[str, str]:
    """A namespace's labels as the API server has them: its own, plus the name label it always sets."""
    declared = next((doc for doc in of_kind(docs, "Namespace") if name_of(doc) == namespace), {})
    return {**(declared.get("metadata", {}).get("labels") or {}), "kubernetes.io/metadata.name": namespace}


def matched_hostname(http_route: dict, host: str) -> str | None:
    """The route hostname the request matches ("*" for a route without hostnames, which takes the listener's), or
    None. The listener already matches the host, so a match lies in the intersection; Istio groups routes by it."""
    hostnames = http_route["spec"].get("hostnames") or []
    if not hostnames:
        return "*"
    return next((name for name in hostnames if hostname_matches(name, host)), None)


def matching_rules(http_route: dict, path: str, method: str, headers: dict[str, str]) -> list[tuple]:
    """(rank, route, rule number, rule, description) for each match that takes the request; the rank orders
    them as Istio does: path type, path length, a method, then the number of header matches."""
    found = []
    for number, rule in enumerate(http_route["spec"].get("rules", []), start=1):
        for match in rule.get("matches") or [{}]:
            unmodelled = sorted(set(match) - {"path", "method", "headers"})  # query parameters
            if unmodelled:
                raise Unmodelled(f"{describe(http_route)} rule {number} matches on {unmodelled}")
            kind = match.get("path", {}).get("type", "PathPrefix")
            value = match.get("path", {}).get("value", "/")
            header_matches = match.get("headers") or []
            if (
                path_matches(kind, value, path)
                and match.get("method", method) == method
                and all(header_matches_request(header, headers) for header in header_matches)
            ):
                # Istio measures a PathPrefix without its trailing "/": "/api/" and "/api" rank the same.
                length = len(value.rstrip("/") or "/") if kind == "PathPrefix" else len(value)
                rank = (PATH_RANK[kind], length, "method" in match, len(header_matches))
                named = "".join(f", header {header['name']}" for header in header_matches)
                found.append((rank, http_route, number, rule, f"{kind} {value}{named}"))
    return found


def header_matches_request(header: dict, headers: dict[str, str]) -> bool:
    value = headers.get(header["name"].lower())
    if value is None:
        return False
    kind = header.get("type", "Exact")
    if kind == "Exact":
        return value == header["value"]
    if kind == "RegularExpression":
        return re.fullmatch(header["value"], value) is not None
    raise Unmodelled(f"header match type {kind}")


def path_matches(kind: str, value: str, path: str) -> bool:
    if kind == "Exact":
        return path == value
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    raise Unmodelled(f"path match type {kind}")


def apply_rule(docs: list[dict], http_route: dict, rule: dict, number: int, path: str, routed: str) -> Refused | Routed:
    for step in rule.get("filters") or []:
        kind = step.get("type")
        if kind == "RequestRedirect":
            redirect = step.get("requestRedirect") or {}
            status = redirect.get("statusCode", 302)
            if redirect.get("scheme") == "https" and set(redirect) <= {"scheme", "statusCode", "port"}:
                return Refused("redirect https", f"{routed} redirects to https ({status})")
            return Refused(f"status {status}", f"{routed} redirects to {redirect}")
        if kind == "URLRewrite":
            path = rewritten(step.get("urlRewrite") or {}, rule, path, http_route)
        elif kind not in FILTERS_THAT_DO_NOT_CHANGE_THE_ANSWER:
            raise Unmodelled(f"{describe(http_route)} filter {kind}")
    backends = rule.get("backendRefs") or []
    if not any(ref.get("weight", 1) > 0 for ref in backends):
        return Refused("status 500", f"{routed} has no backend with weight above 0")
    route_namespace = namespace_of(http_route)
    destinations = []
    for backend in backends:
        if backend.get("group", "") != "" or backend.get("kind", "Service") != "Service" or backend.get("filters"):
            raise Unmodelled(f"{describe(http_route)} backendRef {backend}")
        backend_namespace = backend.get("namespace", route_namespace)
        if backend_namespace != route_namespace and not granted(
            docs, "HTTPRoute", route_namespace, "Service", f"{backend_namespace}/{backend['name']}"
        ):
            return Refused(
                "status 500",
                f"{routed}: Service {backend_namespace}/{backend['name']} is in another namespace "
                "and no ReferenceGrant there admits the route",
            )
        destinations.append(http_route_destination(http_route, backend))
    policy = http_route_policy(http_route, rule, rule.get("name") or str(number))
    return Routed(tuple(destinations), path, routed, policy, http_route_rule_name(http_route, rule, number))


def rewritten(rewrite: dict, rule: dict, path: str, http_route: dict) -> str:
    change = rewrite.get("path")
    if not change:
        return path
    if change.get("type") == "ReplaceFullPath":
        return change["replaceFullPath"]
    prefixes = [m.get("path", {}) for m in rule.get("matches") or [] if m.get("path", {}).get("type") == "PathPrefix"]
    if change.get("type") != "ReplacePrefixMatch" or len(prefixes) != 1:
        raise Unmodelled(f"{describe(http_route)} URLRewrite {change}")
    prefix = prefixes[0].get("value", "/").rstrip("/")
    if not prefix:
        raise Unmodelled(f"{describe(http_route)} URLRewrite of the prefix / (Envoy joins it without a slash)")
    replaced = change["replacePrefixMatch"].rstrip("/") + path[len(prefix) :]
    return replaced if replaced.startswith("/") else "/" + replaced


# --- what Istio deploys for the Gateway ---------------------------------------------------------------


def deployed_gateway(docs: list[dict], gateway: IngressGateway) -> list[dict]:
    """The objects Istio's gateway deployment controller applies for the Gateway, as far as the repo decides them.

    Follows the kube-gateway template of the istiod chart (recorded in the fixtures) and the controller
    (pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go): every object is named <gateway>-<class> and
    carries the Gateway's own labels and annotations; the Service has a status port 15021 and one TCP port per
    distinct listener port, named after the listener, type LoadBalancer unless the Gateway's
    networking.istio.io/service-type annotation says otherwise; the HorizontalPodAutoscaler and
    PodDisruptionBudget exist only when the parametersRef ConfigMap has their keys; each key of that ConfigMap
    is applied as a Kubernetes strategic merge patch. Overrides this model does not follow raise Unmodelled.
    """
    gw = the_gateway(docs, gateway)
    if gw is None:
        return []
    annotations = gw["metadata"].get("annotations") or {}
    overridden = sorted(set(annotations) & {"gateway.istio.io/name-override", "gateway.istio.io/service-account"})
    class_defaults = [
        doc for doc in of_kind(docs, "ConfigMap") if CLASS_DEFAULTS in (doc["metadata"].get("labels") or {})
    ]
    if overridden or class_defaults:
        raise Unmodelled(f"{describe(gw)}: names or defaults set by {overridden or describe(class_defaults[0])}")
    name = deployed_name(gw)
    selector = {GATEWAY_NAME_LABEL: name_of(gw)}
    labels = {
        **(gw["metadata"].get("labels") or {}),
        **selector,
        "gateway.networking.k8s.io/gateway-class-name": GATEWAY_CLASS,
    }
    managed = {**labels, "gateway.istio.io/managed": "istio.io-gateway-controller"}

    def metadata(object_labels: dict) -> dict:
        return {"name": name, "namespace": namespace_of(gw), "labels": object_labels, "annotations": dict(annotations)}

    ports = [{"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"}]
    for listener in gw["spec"].get("listeners", []):
        if all(port["port"] != listener["port"] for port in ports):
            ports.append(
                {
                    "name": listener["name"].replace(".", "-")[:63],
                    "port": listener["port"],
                    "protocol": "TCP",
                    "appProtocol": listener["protocol"].lower(),
                }
            )
    pod_labels = {
        "sidecar.istio.io/inject": "false",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
        **managed,
    }
    generated = {
        "serviceAccount": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(labels)},
        "deployment": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(managed),
            "spec": {
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {"serviceAccountName": name, "containers": [{"name": "istio-proxy"}]},
                },
            },
        },
        "service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(labels),
            "spec": {
                "ipFamilyPolicy": "PreferDualStack",
                "ports": ports,
                "selector": selector,
                "type": annotations.get("networking.istio.io/service-type", "LoadBalancer"),
            },
        },
        "horizontalPodAutoscaler": {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(labels),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, "maxReplicas": 1},
        },
        "podDisruptionBudget": {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(labels),
            "spec": {"selector": {"matchLabels": selector}},
        },
    }
    options = gateway_options(docs, gw)
    unknown = set(options) - set(generated)
    if unknown:
        raise ValueError(f"{describe(gw)}: its options ConfigMap has keys Istio refuses: {sorted(unknown)}")
    result = []
    for key, doc in generated.items():
        if key in ("horizontalPodAutoscaler", "podDisruptionBudget") and key not in options:
            continue
        result.append(strategic_merge(doc, options[key]) if key in options else doc)
    return result


def deployed_name(gw: dict) -> str:
    """What Istio names the Deployment, Service and ServiceAccount of a Gateway (gateway_utils.go GetDefaultName)."""
    return f"{name_of(gw)}-{gw['spec'].get('gatewayClassName')}"


def gateway_options(docs: list[dict], gw: dict) -> dict[str, dict]:
    """The parametersRef ConfigMap's keys, each parsed as the patch Istio applies."""
    ref = (gw["spec"].get("infrastructure") or {}).get("parametersRef")
    if not ref:
        return {}
    if ref.get("group") != "" or ref.get("kind") != "ConfigMap":
        raise ValueError(f'{describe(gw)}: parametersRef must be a ConfigMap (group ""), Istio refuses {ref}')
    config_map = next(
        (
            doc
            for doc in of_kind(docs, "ConfigMap")
            if name_of(doc) == ref["name"] and namespace_of(doc) == namespace_of(gw)
        ),
        None,
    )
    if config_map is None:
        raise ValueError(
            f"{describe(gw)}: parametersRef names ConfigMap {namespace_of(gw)}/{ref['name']}, which the build does not "
            "have: Istio deploys no gateway for it"
        )
    return {key: load_yaml(value) or {} for key, value in (config_map.get("data") or {}).items()}


# Merge keys of the lists an options patch may touch, as Kubernetes' Go types declare them (patchMergeKey);
# a container's own "ports" merge on containerPort, a Service's on port.
MERGE_KEYS = {"ports": "port", "containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
CONTAINER_MERGE_KEYS = MERGE_KEYS | {"ports": "containerPort", "volumeMounts": "mountPath"}


def strategic_merge(original: dict, patch: dict, merge_keys: dict[str, str] = MERGE_KEYS) -> dict:
    """A Kubernetes strategic merge patch over the lists above: maps merge, lists with a merge key merge item by
    item on that key, other lists are replaced, null removes a key."""
    merged = dict(original)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = strategic_merge(merged[key], value, merge_keys)
        elif isinstance(value, list) and key in merge_keys and isinstance(merged.get(key), list):
            merge_key = merge_keys[key]
            inner = CONTAINER_MERGE_KEYS if key in ("containers", "initContainers") else MERGE_KEYS
            items = [dict(item) for item in merged[key]]
            for item in value:
                existing = next((i for i, old in enumerate(items) if old.get(merge_key) == item.get(merge_key)), None)
                if existing is None:
                    items.append(item)
                else:
                    items[existing] = strategic_merge(items[existing], item, inner)
            merged[key] = items
        else:
            merged[key] = value
    return merged
