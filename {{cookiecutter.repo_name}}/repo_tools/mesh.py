"""What Istio would do with one request, worked out from rendered documents.

Follows Istio's documented semantics for the constructs this repo uses: the Kubernetes Gateway API at the
edge (repo_tools.gateway_api); Istio's Gateway server and host matching, httpsRedirect and redirect routes,
VirtualService first-match routing (exact, prefix, regex); destination host resolution, PeerAuthentication
precedence (workload > namespace > mesh, port-level modes), and AuthorizationPolicy selection and evaluation
(CUSTOM, then DENY, then ALLOW; allow-nothing; principals, namespaces, paths, methods, ports, hosts and their
wildcard forms).

Anything else that could change the answer (a `when` condition, JWT principals, IP blocks,
CUSTOM policies, fault injection, ...) raises Unmodelled: the verdict is "unknown", never a guess.

NetworkPolicies sit below all this and are not modelled: the repo's own admit the app's namespace,
meshed namespaces and the gateway's (invariants.network_policies_fence_the_namespace keeps them so),
which every row's caller is in; the e2e suite exercises them for real.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from repo_tools import gateway_api
from repo_tools.layout import IngressGateway
from repo_tools.resources import Unmodelled, describe, principal, selects, service_fqdn

ROOT_NAMESPACE = "istio-system"
HTTP_ONLY_OPERATION_FIELDS = {"paths", "notPaths", "methods", "notMethods", "hosts", "notHosts"}
ROUTE_FIELDS_THAT_DO_NOT_CHANGE_THE_ANSWER = {"name", "match", "route", "timeout", "retries", "headers", "corsPolicy"}
MATCH_FIELDS = {"uri", "method", "port", "name", "ignoreUriCase"}


@dataclass(frozen=True)
class Caller:
    """Who sends the request: a pod identity, the gateway, or (namespace "") the internet."""

    namespace: str
    service_account: str
    sidecar: bool = True

    @property
    def principal(self) -> str:
        return principal(self.namespace, self.service_account)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "reaches <workload>", "redirect https", "denied", "no-answer", "no-route", "tls-failure"
    because: str


@dataclass
class Workload:
    name: str
    namespace: str
    labels: dict[str, str]
    protocol: str = "http"


class Mesh:
    def __init__(self, docs: list[dict], gateway: IngressGateway) -> None:
        self.docs = docs
        self.gateway = gateway

    @property
    def gateway_caller(self) -> Caller:
        return Caller(self.gateway.namespace, self.gateway.service_account)

    def of_kind(self, kind: str) -> Iterator[dict]:
        return (doc for doc in self.docs if doc.get("kind") == kind)

    # --- from the internet, through the ingress gateway ---------------------------------------

    def from_internet(self, scheme: str, host: str, path: str, method: str = "GET") -> Verdict:
        if self.gateway.gateway_api:
            return self.through_gateway_api(scheme, host, path, method)
        port = 443 if scheme == "https" else 80
        server_match = self.gateway_server(host, port)
        if server_match is None:
            return Verdict("no-route", f"no Gateway server selects the ingress gateway for {host}:{port}")
        gw, index, server = server_match
        where = f"{describe(gw)} server {index + 1}"
        tls = server.get("tls") or {}
        if scheme == "http" and tls.get("httpsRedirect"):
            return Verdict("redirect https", f"{where} sets httpsRedirect")
        if scheme == "https":
            problem = self.tls_problem(tls)
            if problem:
                return Verdict("tls-failure", f"{where}: {problem}")
        route = self.route(gw, host, path, method, port)
        if isinstance(route, Verdict):
            return route
        vs, rule_name, destination, path_at_destination = route
        self.refuse_destination_rules(destination["host"], vs["metadata"].get("namespace", ""))
        routed = f"routed by {describe(vs)} route {rule_name}"
        if scheme == "http":
            routed = f"{where} serves plain HTTP (no httpsRedirect); {routed}"
        workload, target_port = self.workload_for(destination["host"], destination.get("port", {}).get("number"), vs)
        verdict = self.call(self.gateway_caller, workload, target_port, path_at_destination, method, host)
        return Verdict(verdict.outcome, f"{routed}; {verdict.because}")

    def through_gateway_api(self, scheme: str, host: str, path: str, method: str) -> Verdict:
        routed = gateway_api.route(self.docs, self.gateway, scheme, host, path, method)
        if isinstance(routed, gateway_api.Refused):
            return Verdict(routed.outcome, routed.because)
        name, namespace = routed.service.split(".")
        self.refuse_destination_rules(name, namespace)
        workload, target_port = self.workload_for(name, routed.port, None, namespace)
        verdict = self.call(self.gateway_caller, workload, target_port, routed.path, method, host)
        return Verdict(verdict.outcome, f"{routed.because}; {verdict.because}")

    def gateway_server(self, host: str, port: int) -> tuple[dict, int, dict] | None:
        for gw in self.of_kind("Gateway"):
            if gw.get("spec", {}).get("selector") != {"istio": self.gateway.istio_label}:
                continue
            for index, server in enumerate(gw["spec"].get("servers", [])):
                if server["port"]["number"] == port and any(
                    host_matches(h.split("/")[-1], host) for h in server.get("hosts", [])
                ):
                    return gw, index, server
        return None

    def tls_problem(self, tls: dict) -> str:
        if tls.get("mode") not in ("SIMPLE", "MUTUAL"):
            raise Unmodelled(f"Gateway TLS mode {tls.get('mode')!r}")
        secret = tls.get("credentialName")
        certificates = [cert for cert in self.of_kind("Certificate") if cert["spec"].get("secretName") == secret]
        if any(cert["metadata"].get("namespace") == self.gateway.namespace for cert in certificates):
            return ""
        elsewhere = ", ".join(describe(cert) for cert in certificates) or "nothing"
        return (
            f"credentialName {secret} is read from {self.gateway.namespace} only, but is made by {elsewhere}: "
            "the handshake fails"
        )

    def route(self, gw: dict, host: str, path: str, method: str, port: int) -> tuple[dict, str, dict, str] | Verdict:
        gw_ref = f"{gw['metadata'].get('namespace')}/{gw['metadata']['name']}"
        for vs in self.of_kind("VirtualService"):
            spec = vs.get("spec", {})
            bound = {g if "/" in g else f"{vs['metadata'].get('namespace')}/{g}" for g in spec.get("gateways", [])}
            if gw_ref not in bound or not any(host_matches(h, host) for h in spec.get("hosts", [])):
                continue
            for index, rule in enumerate(spec.get("http", [])):
                unknown = (
                    set(rule) - ROUTE_FIELDS_THAT_DO_NOT_CHANGE_THE_ANSWER - {"rewrite", "redirect", "directResponse"}
                )
                if unknown:
                    raise Unmodelled(f"{describe(vs)} route {index + 1} uses {', '.join(sorted(unknown))}")
                matched = self.first_matching_condition(vs, rule.get("match"), path, method, port)
                if matched is None:
                    continue
                condition, described = matched
                name = rule.get("name") or str(index + 1)
                if rule.get("redirect", {}).get("scheme") == "https" and set(rule["redirect"]) <= {
                    "scheme",
                    "redirectCode",
                }:
                    return Verdict("redirect https", f"{describe(vs)} route {name} redirects to https")
                if "redirect" in rule or "directResponse" in rule:
                    status = rule.get("directResponse", {}).get("status") or rule.get("redirect", {}).get(
                        "redirectCode", 301
                    )
                    return Verdict(f"status {status}", f"answered by {describe(vs)} route {name}")
                destinations = rule.get("route", [])
                if len(destinations) != 1:
                    raise Unmodelled(
                        f"{describe(vs)} route {name} splits traffic over {len(destinations)} destinations"
                    )
                return vs, f"{name} ({described})", destinations[0]["destination"], rewritten(rule, path, condition)
        return Verdict("no-route", f"no VirtualService bound to {describe(gw)} routes {host}{path}: 404")

    def first_matching_condition(
        self, vs: dict, conditions: list | None, path: str, method: str, port: int
    ) -> tuple[dict, str] | None:
        if not conditions:
            return {}, "no match conditions: every request"
        for number, condition in enumerate(conditions, start=1):
            unknown = set(condition) - MATCH_FIELDS
            if unknown:
                raise Unmodelled(f"{describe(vs)} match on {', '.join(sorted(unknown))}")
            uri = condition.get("uri", {})
            checks = [
                string_match(uri, path, condition.get("ignoreUriCase", False)) if uri else True,
                string_match(condition["method"], method) if "method" in condition else True,
                condition.get("port", port) == port,
            ]
            if all(checks):
                kind, value = next(iter(uri.items())) if uri else ("any", "path")
                return condition, f"match {number}: {kind} {value}"
        return None

    # --- inside the mesh ------------------------------------------------------------------------

    def from_pod(self, caller: Caller, to: str | dict, path: str = "/", port: int | None = None) -> Verdict:
        if isinstance(to, dict):
            labels = to.get("labels", {})
            workload = Workload(
                name="/".join(f"{k}={v}" for k, v in labels.items()),
                namespace=to.get("namespace", caller.namespace),
                labels=labels,
            )
            target = port or 80
        else:
            self.refuse_mesh_traffic_rules(to, caller.namespace)
            workload, target = self.workload_for(to, port, None, caller.namespace)
        return self.call(caller, workload, target, path, "GET", to if isinstance(to, str) else workload.name)

    def refuse_mesh_traffic_rules(self, to: str, namespace: str) -> None:
        """Sidecar-to-sidecar routing is not modelled: a mesh VirtualService for the target makes the row unknown."""
        for vs in self.of_kind("VirtualService"):
            gateways = vs.get("spec", {}).get("gateways") or ["mesh"]
            vs_namespace = vs["metadata"].get("namespace", "")
            if "mesh" in gateways and any(
                same_service(h, vs_namespace, to, namespace) for h in vs["spec"].get("hosts", [])
            ):
                raise Unmodelled(f"{describe(vs)} routes mesh traffic to {to}")
        self.refuse_destination_rules(to, namespace)

    def refuse_destination_rules(self, to: str, namespace: str) -> None:
        """Client-side traffic policy (TLS mode, subsets, ...) is not modelled either."""
        for rule in self.of_kind("DestinationRule"):
            if same_service(rule.get("spec", {}).get("host", ""), rule["metadata"].get("namespace", ""), to, namespace):
                raise Unmodelled(f"{describe(rule)} sets traffic policy for {to}")

    def call(self, caller: Caller, workload: Workload, port: int, path: str, method: str, host: str) -> Verdict:
        mode, decided_by = self.mtls_mode(workload, port)
        if caller.sidecar:
            return self.authorize(caller, workload, port, path, method, host)
        if mode == "STRICT":
            return Verdict("no-answer", f"{decided_by} requires mutual TLS and the caller sends plaintext")
        verdict = self.authorize(Caller("", "", sidecar=False), workload, port, path, method, host)
        return Verdict(verdict.outcome, f"{decided_by} accepts plaintext ({mode}); {verdict.because}")

    def mtls_mode(self, workload: Workload, port: int) -> tuple[str, str]:
        by_precedence = [
            [pa for pa in self.peer_authentications(workload.namespace) if self.selects(pa, workload)],
            [pa for pa in self.peer_authentications(workload.namespace) if not pa.get("spec", {}).get("selector")],
            [pa for pa in self.peer_authentications(ROOT_NAMESPACE) if not pa.get("spec", {}).get("selector")],
        ]
        for level in by_precedence:
            if len(level) > 1:
                raise Unmodelled(
                    f"{len(level)} PeerAuthentications apply at one level: {', '.join(map(describe, level))}"
                )
            if level:
                pa = level[0]
                port_mode = (pa["spec"].get("portLevelMtls") or {}).get(str(port), {}).get("mode")
                if port_mode and port_mode != "UNSET":
                    return port_mode, f"{describe(pa)} port {port}"
                mode = pa["spec"].get("mtls", {}).get("mode", "UNSET")
                if mode != "UNSET":
                    return mode, describe(pa)
        return "PERMISSIVE", "the mesh default (PERMISSIVE)"

    def peer_authentications(self, namespace: str) -> list[dict]:
        return [pa for pa in self.of_kind("PeerAuthentication") if pa["metadata"].get("namespace") == namespace]

    def selects(self, resource: dict, workload: Workload) -> bool:
        spec = resource.get("spec") or {}
        if "targetRef" in spec or "targetRefs" in spec:
            raise Unmodelled(f"{describe(resource)} uses targetRef")
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        return bool(selector) and selects(selector, workload.labels)

    def authorize(self, caller: Caller, workload: Workload, port: int, path: str, method: str, host: str) -> Verdict:
        applicable = [
            policy
            for policy in self.of_kind("AuthorizationPolicy")
            if policy["metadata"].get("namespace") in (workload.namespace, ROOT_NAMESPACE)
            and (not (policy.get("spec") or {}).get("selector") or self.selects(policy, workload))
        ]
        request = {
            "principal": caller.principal if caller.namespace else "",
            "namespace": caller.namespace,
            "path": path,
            "method": method,
            "port": str(port),
            "host": host,
        }
        for policy in applicable:
            if (policy.get("spec") or {}).get("action") == "CUSTOM":
                raise Unmodelled(f"{describe(policy)} delegates to an external authorizer (CUSTOM)")
        for policy in applicable:
            if (policy.get("spec") or {}).get("action") == "DENY":
                rule = matching_rule(policy, request, workload.protocol, deny=True)
                if rule:
                    return Verdict("denied", f"denied by {describe(policy)} rule {rule}")
        allow = [p for p in applicable if (p.get("spec") or {}).get("action", "ALLOW") == "ALLOW"]
        for policy in allow:
            rule = matching_rule(policy, request, workload.protocol, deny=False)
            if rule:
                return Verdict(f"reaches {workload.name}", f"allowed by {describe(policy)} rule {rule}")
        if allow:
            considered = ", ".join(describe(p) for p in allow)
            return Verdict(
                "denied",
                f"no ALLOW rule matches {caller.principal or 'a plaintext caller'} {method} {path} (considered {considered})",
            )
        return Verdict(f"reaches {workload.name}", "no ALLOW policy selects the workload, so everything is allowed")

    # --- services and workloads ----------------------------------------------------------------

    def workload_for(self, host: str, port: int | None, vs: dict | None, namespace: str = "") -> tuple[Workload, int]:
        namespace = namespace or (vs["metadata"].get("namespace", "") if vs else "")
        name, service_namespace = service_fqdn(host, namespace).split(".")[:2]
        service = next(
            (
                svc
                for svc in self.of_kind("Service")
                if svc["metadata"]["name"] == name and svc["metadata"].get("namespace") == service_namespace
            ),
            None,
        )
        if service is None:
            raise Unmodelled(f"no Service {name} in namespace {service_namespace} for host {host}")
        ports = service["spec"].get("ports", [])
        service_port = next((p for p in ports if port is None or p["port"] == port), None)
        if service_port is None:
            raise Unmodelled(f"{describe(service)} has no port {port}")
        selector = service["spec"].get("selector", {})
        for kind in ("Deployment", "StatefulSet"):
            for doc in self.of_kind(kind):
                template = doc["spec"]["template"]
                labels = template.get("metadata", {}).get("labels", {})
                if doc["metadata"].get("namespace") == service_namespace and all(
                    labels.get(k) == v for k, v in selector.items()
                ):
                    target = container_port(template["spec"], service_port.get("targetPort", service_port["port"]))
                    protocol = (
                        "tcp"
                        if service_port.get("appProtocol", "") == "tcp"
                        or service_port.get("name", "").startswith("tcp")
                        else "http"
                    )
                    return Workload(doc["metadata"]["name"], service_namespace, labels, protocol=protocol), target
        raise Unmodelled(f"{describe(service)} selects no workload in this build")


def same_service(host: str, host_namespace: str, other: str, other_namespace: str) -> bool:
    """Do two service host names (short, name.namespace or FQDN, each read in its own namespace) agree?"""
    return service_fqdn(host, host_namespace) == service_fqdn(other, other_namespace)


def container_port(pod_spec: dict, target: int | str) -> int:
    if isinstance(target, int):
        return target
    for container in pod_spec.get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == target:
                return port["containerPort"]
    raise Unmodelled(f"no container port named {target}")


def host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def string_match(spec: dict, value: str, ignore_case: bool = False) -> bool:
    if ignore_case:
        value = value.lower()
        spec = {k: v.lower() if k != "regex" else v for k, v in spec.items()}
    if "exact" in spec:
        return value == spec["exact"]
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    if "regex" in spec:
        return re.fullmatch(spec["regex"], value) is not None
    raise Unmodelled(f"string match {spec}")


def rewritten(rule: dict, path: str, condition: dict) -> str:
    """The path the destination sees: a uri rewrite replaces the matched prefix, or the whole path."""
    rewrite = rule.get("rewrite", {}).get("uri")
    if rewrite is None:
        return path
    prefix = condition.get("uri", {}).get("prefix")
    return rewrite + path[len(prefix) :] if prefix else rewrite


def istio_string_match(pattern: str, value: str) -> bool:
    """Istio's string form in policies: exact, prefix "abc*", suffix "*abc", or presence "*"."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def matches_any(patterns: list[str] | None, value: str) -> bool:
    return any(istio_string_match(pattern, value) for pattern in patterns or [])


def matching_rule(policy: dict, request: dict, protocol: str, deny: bool) -> int | None:
    """The 1-based number of the first rule that matches, or None."""
    for number, rule in enumerate((policy.get("spec") or {}).get("rules") or [], start=1):
        if "when" in rule:
            raise Unmodelled(f"{describe(policy)} rule {number} has a 'when' condition")
        if rule_matches(policy, number, rule, request, protocol, deny):
            return number
    return None


def rule_matches(policy: dict, number: int, rule: dict, request: dict, protocol: str, deny: bool) -> bool:
    sources = [entry.get("source", {}) for entry in rule.get("from") or []]
    operations = [entry.get("operation", {}) for entry in rule.get("to") or []]
    for source in sources:
        unmodelled = set(source) & {
            "requestPrincipals",
            "notRequestPrincipals",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
        }
        if unmodelled:
            raise Unmodelled(f"{describe(policy)} rule {number} matches on {', '.join(sorted(unmodelled))}")
    if sources and not any(source_matches(source, request) for source in sources):
        return False
    if not operations:
        return True
    return any(operation_matches(operation, request, protocol, deny) for operation in operations)


def source_matches(source: dict, request: dict) -> bool:
    checks = [
        ("principals" not in source) or matches_any(source["principals"], request["principal"]),
        not matches_any(source.get("notPrincipals"), request["principal"]),
        ("namespaces" not in source) or matches_any(source["namespaces"], request["namespace"]),
        not matches_any(source.get("notNamespaces"), request["namespace"]),
    ]
    return all(checks)


def operation_matches(operation: dict, request: dict, protocol: str, deny: bool) -> bool:
    if protocol == "tcp" and set(operation) & HTTP_ONLY_OPERATION_FIELDS:
        # Istio: on TCP, an ALLOW rule with HTTP-only fields never matches; a DENY rule ignores those fields.
        if not deny:
            return False
        operation = {k: v for k, v in operation.items() if k not in HTTP_ONLY_OPERATION_FIELDS}
    positive = {"paths": "path", "methods": "method", "ports": "port", "hosts": "host"}
    for field_name, attribute in positive.items():
        if field_name in operation and not matches_any(operation[field_name], request[attribute]):
            return False
        negative = "not" + field_name[0].upper() + field_name[1:]
        if matches_any(operation.get(negative), request[attribute]):
            return False
    return True
