"""What Istio would do with one request, worked out from rendered documents.

Follows Istio's documented semantics for the constructs this repo uses: the Kubernetes Gateway API at the
edge (repo_tools.gateway_api); Istio's Gateway server and host matching, httpsRedirect and redirect routes,
VirtualService first-match routing (uri exact, prefix, regex; method; headers; port) with weighted
destinations and DestinationRule subsets; the route's timeout and retries and the destination's traffic policy
(repo_tools.resilience: circuit breaking, and a TLS mode that replaces mutual TLS fails the connection);
destination host resolution, PeerAuthentication precedence (workload > namespace > mesh, port-level modes), and
AuthorizationPolicy selection and evaluation (CUSTOM, then DENY, then ALLOW; allow-nothing; principals,
namespaces, request principals, paths, methods, ports, hosts and their wildcard forms), at the workload and, for
requests from the internet, at the gateway itself after its RequestAuthentications checked the request's JWT
(issuer, signing key, expiry: a bad token is 401, none gives no request principal).

A request reaches an app (its pods' `app` label); a weighted split reports each version's share. Anything else
that could change the answer (a `when` condition, JWT principals, IP blocks, CUSTOM policies, fault
injection, ...) raises Unmodelled: the verdict is "unknown", never a guess.

NetworkPolicies sit below all this and are not modelled: the repo's own admit the app's namespace,
meshed namespaces and the gateway's (invariants.network_policies_fence_the_namespace keeps them so),
which every row's caller is in; the e2e suite exercises them for real.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from repo_tools import edge, gateway_api
from repo_tools.layout import IngressGateway
from repo_tools.resilience import (
    MESH_TLS_MODES,
    Destination,
    RoutePolicy,
    Share,
    Traffic,
    destination_rule,
    has_circuit_breaker,
    traffic_policy,
    virtual_service_destinations,
    virtual_service_policy,
)
from repo_tools.resources import Unmodelled, describe, principal, selects, service_fqdn, string_match

ROOT_NAMESPACE = "istio-system"
HTTP_ONLY_OPERATION_FIELDS = {"paths", "notPaths", "methods", "notMethods", "hosts", "notHosts"}
ROUTE_FIELDS_THAT_DO_NOT_CHANGE_THE_ANSWER = {"name", "match", "route", "timeout", "retries", "headers", "corsPolicy"}
MATCH_FIELDS = {"uri", "method", "headers", "port", "name", "ignoreUriCase"}


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
class Token:
    """A JWT as the gateway sees it: who issued it, which key set holds the key that signed it (a JWKS URI; any
    other string for a key no JWKS holds), whether it has expired, and its subject."""

    issuer: str
    signed_with_key_of: str
    subject: str
    expired: bool = False


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "reaches <app>", "redirect https", "denied", "unauthenticated", "rate-limited", "too-large",
    # "headers-too-large", "no-answer", "no-route", "tls-failure", "status <n>"
    because: str
    traffic: Traffic | None = None  # where the request went and under which policy, when it reached workloads


@dataclass
class Workload:
    name: str
    namespace: str
    labels: dict[str, str]
    protocol: str = "http"

    @property
    def app(self) -> str:
        return self.labels.get("app", self.name)


class NoEndpoints(Unmodelled):
    """A Service (or subset) that no pod of the build backs: Istio answers 503, no healthy upstream."""


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

    def from_internet(
        self,
        scheme: str,
        host: str,
        path: str,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        token: Token | None = None,
        exceeds: str = "",
    ) -> Verdict:
        """`exceeds` names a limit of the gateway the request goes past: "header-limit", "body-limit", or
        "rate-limit" (one request more than the route's bucket holds)."""
        headers = {name.lower(): value for name, value in (headers or {}).items()}
        path = edge.normalized(path)

        def admit(port: int) -> Verdict | None:
            if exceeds == "header-limit":  # the connection manager's codec, before any filter
                headers_kb = edge.header_limit(self.docs, self.gateway)
                return Verdict("headers-too-large", f"headers over {headers_kb.describe('KiB')}: 431")
            refused = self.gateway_admits(token, port, path, method, host)
            body = edge.body_limit(self.docs, self.gateway) if exceeds == "body-limit" else None
            if refused or body is None:
                return refused
            return Verdict("too-large", f"a body over {body.describe('bytes')}: the buffer filter answers 413")

        if self.gateway.gateway_api:
            return self.through_gateway_api(scheme, host, path, method, headers, admit, exceeds)
        port = 443 if scheme == "https" else 80
        server_match = self.gateway_server(host, port)
        if server_match is None:
            return Verdict("no-route", f"no Gateway server selects the ingress gateway for {host}:{port}")
        gw, index, server = server_match
        where = f"{describe(gw)} server {index + 1}"
        tls = server.get("tls") or {}
        if scheme == "https":
            problem = self.tls_problem(tls)
            if problem:
                return Verdict("tls-failure", f"{where}: {problem}")
        refused = admit(port)  # the gateway's JWT and RBAC filters run before any route or redirect
        if refused:
            return refused
        if scheme == "http" and tls.get("httpsRedirect"):
            return Verdict("redirect https", f"{where} sets httpsRedirect")
        route = self.route(gw, host, path, method, port, headers)
        if isinstance(route, Verdict):
            return route
        vs, rule, described, path_at_destination = route
        routed = f"routed by {describe(vs)} route {described}"
        limited = self.rate_limited(exceeds, rule.get("name", ""), routed)
        if limited:
            return limited
        if scheme == "http":
            routed = f"{where} serves plain HTTP (no httpsRedirect); {routed}"
        policy = virtual_service_policy(vs, rule, rule.get("name") or described)
        return self.deliver(virtual_service_destinations(vs, rule), path_at_destination, method, host, routed, policy)

    def through_gateway_api(
        self,
        scheme: str,
        host: str,
        path: str,
        method: str,
        headers: dict[str, str],
        admit: Callable[[int], Verdict | None],
        exceeds: str,
    ) -> Verdict:
        routed = gateway_api.route(self.docs, self.gateway, scheme, host, path, method, headers, admit)
        if isinstance(routed, Verdict):
            return routed
        if isinstance(routed, gateway_api.Refused):
            return Verdict(routed.outcome, routed.because)
        limited = self.rate_limited(exceeds, routed.route_name, routed.because)
        if limited:
            return limited
        return self.deliver(routed.destinations, routed.path, method, host, routed.because, routed.policy)

    def rate_limited(self, exceeds: str, route_name: str, routed: str) -> Verdict | None:
        limit = edge.rate_limits(self.docs, self.gateway).get(route_name) if exceeds == "rate-limit" else None
        if limit is None:
            return None
        return Verdict("rate-limited", f"{routed}; route {route_name} admits {limit.describe('requests')}: 429")

    def deliver(
        self,
        destinations: tuple[Destination, ...],
        path: str,
        method: str,
        host: str,
        routed: str,
        policy: RoutePolicy | None,
        caller: Caller | None = None,
    ) -> Verdict:
        """The gateway (or `caller`) sends the request to each destination by weight; one answer when every
        share gets the same, else each share's answer with its weight."""
        delivered = [self.deliver_one(caller or self.gateway_caller, d, path, method, host) for d in destinations]
        shares = tuple(share for _, share in delivered if share is not None)
        taken = [
            (d.weight, verdict, share)
            for d, (verdict, share) in zip(destinations, delivered, strict=True)
            if d.weight > 0
        ]
        outcomes = {verdict.outcome for _, verdict, _ in taken}
        traffic = Traffic(shares, policy)
        if len(taken) == 1:
            verdict = taken[0][1]
            return Verdict(verdict.outcome, f"{routed}; {verdict.because}", traffic)
        total = sum(weight for weight, _, _ in taken)
        parts = [
            f"{share.workload if share else '?'} {round(100 * weight / total)}%: {verdict.because}"
            for weight, verdict, share in taken
        ]
        outcome = (
            outcomes.pop()
            if len(outcomes) == 1
            else "split " + ", ".join(f"{v.outcome} {round(100 * w / total)}%" for w, v, _ in taken)
        )
        return Verdict(outcome, f"{routed}; {'; '.join(parts)}", traffic)

    def deliver_one(
        self, caller: Caller, destination: Destination, path: str, method: str, host: str
    ) -> tuple[Verdict, Share | None]:
        rule = destination_rule(self.docs, destination.service, destination.namespace)
        resolved = traffic_policy(rule, destination.subset)
        if resolved is None:
            where = describe(rule) if rule else "no DestinationRule"
            return Verdict("status 503", f"{where} defines no subset {destination.subset}: Istio answers 503"), None
        subset_labels, policy = resolved
        try:
            workload, port = self.workload_for(
                destination.service, destination.port, destination.namespace, subset_labels
            )
        except NoEndpoints as missing:
            return Verdict("status 503", f"{missing}: no healthy upstream, Istio answers 503"), None
        share = Share(
            workload.name,
            workload.app,
            workload.labels.get("version", ""),
            destination.weight,
            has_circuit_breaker(policy),
        )
        tls_mode = (policy.get("tls") or {}).get("mode")
        if tls_mode in MESH_TLS_MODES:
            return self.call(caller, workload, port, path, method, host), share
        server_mode, decided_by = self.mtls_mode(workload, port)
        if tls_mode == "DISABLE" and server_mode != "STRICT":
            verdict = self.authorize(Caller("", "", sidecar=False), workload, port, path, method, host)
            return Verdict(verdict.outcome, f"{describe(rule or {})} sends plaintext; {verdict.because}"), share
        return Verdict(
            "status 503",
            f"{describe(rule or {})} sets tls mode {tls_mode} where {decided_by} expects Istio's mutual TLS "
            f"({server_mode}): the connection fails and the caller's proxy answers 503",
        ), share

    def gateway_admits(self, token: Token | None, port: int, path: str, method: str, host: str) -> Verdict | None:
        """None when the gateway's RequestAuthentications and AuthorizationPolicies let the request on, else their
        answer: 401 for a token that fails validation, 403 for a request a policy denies."""
        gateway = Workload(self.gateway.deployment, self.gateway.namespace, self.gateway.pod_labels)
        rules = [
            (ra, rule)
            for ra in self.of_kind("RequestAuthentication")
            if self.applies(ra, gateway)
            for rule in (ra.get("spec") or {}).get("jwtRules") or []
        ]
        for ra, rule in rules:
            unmodelled = set(rule) & {"jwks", "fromParams", "fromCookies", "audiences"}
            if unmodelled:
                raise Unmodelled(f"{describe(ra)} jwtRules set {', '.join(sorted(unmodelled))}")
        # A row's token travels as "Authorization: Bearer <token>"; a rule reading other places never sees it.
        rules = [(ra, rule) for ra, rule in rules if reads_the_bearer_header(rule)]
        request_principal = ""
        if token is not None and rules:  # without a RequestAuthentication, no filter reads the token at all
            trusting = [(ra, rule) for ra, rule in rules if rule.get("issuer") == token.issuer]
            if not trusting:
                trusted = ", ".join(sorted({str(rule.get("issuer")) for _, rule in rules}))
                return Verdict(
                    "unauthenticated", f"the gateway trusts no issuer {token.issuer} (trusts {trusted}): 401"
                )
            if token.expired:
                return Verdict("unauthenticated", f"{describe(trusting[0][0])}: the token has expired: 401")
            if not any(rule.get("jwksUri") == token.signed_with_key_of for _, rule in trusting):
                read_from = ", ".join(str(rule.get("jwksUri")) for _, rule in trusting)
                return Verdict(
                    "unauthenticated",
                    f"the gateway reads {token.issuer}'s keys from {read_from}, which holds no key that signed the "
                    "token: 401",
                )
            request_principal = f"{token.issuer}/{token.subject}"
        verdict = self.authorize(Caller("", "", sidecar=False), gateway, port, path, method, host, request_principal)
        return verdict if verdict.outcome == "denied" else None

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

    def route(
        self, gw: dict, host: str, path: str, method: str, port: int, headers: dict[str, str]
    ) -> tuple[dict, dict, str, str] | Verdict:
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
                matched = self.first_matching_condition(vs, rule.get("match"), path, method, port, headers)
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
                if not any(entry.get("weight", 100) > 0 for entry in rule.get("route", [])):
                    raise Unmodelled(f"{describe(vs)} route {name} has no destination with weight above 0")
                return vs, rule, f"{name} ({described})", rewritten(rule, path, condition)
        return Verdict("no-route", f"no VirtualService bound to {describe(gw)} routes {host}{path}: 404")

    def first_matching_condition(
        self, vs: dict, conditions: list | None, path: str, method: str, port: int, headers: dict[str, str]
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
                all(
                    name.lower() in headers and string_match(spec, headers[name.lower()])
                    for name, spec in (condition.get("headers") or {}).items()
                ),
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
            return self.call(caller, workload, port or 80, path, "GET", workload.name)
        self.refuse_mesh_routes(to, caller.namespace)
        return self.deliver(
            (Destination(to, caller.namespace, port, 100),), path, "GET", to, f"calls {to}", None, caller
        )

    def refuse_mesh_routes(self, to: str, namespace: str) -> None:
        """Sidecar-to-sidecar routing is not modelled: a mesh VirtualService for the target makes the row unknown."""
        for vs in self.of_kind("VirtualService"):
            gateways = vs.get("spec", {}).get("gateways") or ["mesh"]
            vs_namespace = vs["metadata"].get("namespace", "")
            if "mesh" in gateways and any(
                same_service(h, vs_namespace, to, namespace) for h in vs["spec"].get("hosts", [])
            ):
                raise Unmodelled(f"{describe(vs)} routes mesh traffic to {to}")

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
        """Does the resource name this workload: by selector, or by targetRefs to the Gateway it runs for?"""
        spec = resource.get("spec") or {}
        refs = spec.get("targetRefs") or ([spec["targetRef"]] if "targetRef" in spec else [])
        if refs:
            if any(ref.get("kind") != "Gateway" or ref.get("group") != gateway_api.GROUP for ref in refs):
                raise Unmodelled(f"{describe(resource)} targets {refs}")
            return (
                resource["metadata"].get("namespace") == self.gateway.namespace
                and any(ref.get("name") == self.gateway.gateway_name for ref in refs)
                and workload.labels == self.gateway.pod_labels
            )
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        return bool(selector) and selects(selector, workload.labels)

    def applies(self, resource: dict, workload: Workload) -> bool:
        """A policy in the workload's namespace (or the root namespace) without a target, or one that selects it."""
        spec = resource.get("spec") or {}
        targeted = spec.get("selector") or spec.get("targetRef") or spec.get("targetRefs")
        namespace = resource["metadata"].get("namespace")
        return namespace in (workload.namespace, ROOT_NAMESPACE) and (not targeted or self.selects(resource, workload))

    def authorize(
        self,
        caller: Caller,
        workload: Workload,
        port: int,
        path: str,
        method: str,
        host: str,
        request_principal: str = "",
    ) -> Verdict:
        applicable = [policy for policy in self.of_kind("AuthorizationPolicy") if self.applies(policy, workload)]
        request = {
            "request_principal": request_principal,
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
                return Verdict(f"reaches {workload.app}", f"allowed by {describe(policy)} rule {rule}")
        if allow:
            considered = ", ".join(describe(p) for p in allow)
            return Verdict(
                "denied",
                f"no ALLOW rule matches {caller.principal or 'a plaintext caller'} {method} {path} (considered {considered})",
            )
        return Verdict(f"reaches {workload.app}", "no ALLOW policy selects the workload, so everything is allowed")

    # --- services and workloads ----------------------------------------------------------------

    def workload_for(
        self, host: str, port: int | None, namespace: str, subset_labels: dict | None = None
    ) -> tuple[Workload, int]:
        """The workload behind a Service host (read in `namespace`), and the container port the Service port targets."""
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
        selector = service["spec"].get("selector", {}) | (subset_labels or {})
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
        subset = f" with the subset's labels {subset_labels}" if subset_labels else ""
        raise NoEndpoints(f"{describe(service)}{subset} selects no workload in this build")


def reads_the_bearer_header(jwt_rule: dict) -> bool:
    locations = jwt_rule.get("fromHeaders")
    if locations is None:
        return True  # Istio's default: the Authorization header (and the access_token parameter)
    return any(
        str(location.get("name", "")).lower() == "authorization" and location.get("prefix", "") == "Bearer "
        for location in locations
    )


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
        ("requestPrincipals" not in source) or matches_any(source["requestPrincipals"], request["request_principal"]),
        not matches_any(source.get("notRequestPrincipals"), request["request_principal"]),
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
