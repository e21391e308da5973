"""What happens to a request on its way to a workload, beyond who may reach it: the route's timeout and retry
policy, the share of a weighted split each version gets, and the client-side traffic policy (circuit breaking,
TLS) a DestinationRule sets. Istio's semantics, from its source:
- a VirtualService route without `retries` takes the mesh's default retry policy, which this repo leaves at
  Istio's built-in one: 2 attempts on connect-failure, refused-stream, unavailable, cancelled (pilot
  route/retry/retry.go); numbers in `retryOn` are status codes; attempts 0 turns retries off;
- an HTTPRoute's `timeouts.request` is the route's timeout; without a `retry` stanza (not in the standard
  channel) `timeouts.backendRequest` replaces it, and the mesh default retry policy applies (pilot
  config/kube/gateway/conversion.go);
- weight 0 destinations get nothing; a DestinationRule's subset takes the Service's pods that also carry the
  subset's labels, and its traffic policy overrides the top-level one field by field.

The rules below keep retries from repeating a change, per-try timeouts inside the route's timeout, weighted
splits adding up to 100, a circuit breaker in front of every Service a route reaches, and mutual TLS intact.
"""

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from repo_tools.layout import IngressGateway
from repo_tools.resources import (
    Unmodelled,
    describe,
    name_of,
    namespace_of,
    of_kind,
    pod_labels,
    service_fqdn,
    string_match,
)

# Methods that may repeat without repeating a change (RFC 9110 safe methods).
IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS")
METHODS = IDEMPOTENT_METHODS + ("POST", "PUT", "PATCH", "DELETE")
# Conditions that fire only when the request never reached the application (or, for the gRPC statuses, which an
# HTTP backend never sends, when the server says so): retrying them cannot repeat a change.
NEVER_REACHED_THE_APP = {"connect-failure", "refused-stream", "reset-before-request", "unavailable", "cancelled"}
ISTIO_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
DESTINATION_RULE_FIELDS = {"host", "trafficPolicy", "subsets", "exportTo"}
TRAFFIC_POLICY_FIELDS = {"tls", "connectionPool", "outlierDetection", "loadBalancer"}
MESH_TLS_MODES = (None, "ISTIO_MUTUAL")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True)
class Retries:
    attempts: int
    per_try_timeout: str | None
    on: frozenset[str]  # Envoy's conditions and status codes; "retriable-status-codes" is implied by a code

    def describe(self) -> str:
        if not self.attempts:
            return "no retries"
        per_try = f", {self.per_try_timeout} per try" if self.per_try_timeout else ""
        return f"{self.attempts} retries on {','.join(sorted(self.on))}{per_try}"


@dataclass(frozen=True)
class RoutePolicy:
    timeout: str | None  # None: no timeout (Istio's default)
    retries: Retries
    where: str

    def describe(self) -> str:
        return f"timeout {self.timeout or 'none'}, {self.retries.describe()}"


@dataclass(frozen=True)
class Destination:
    """One weighted destination of a route: a Service port, optionally a DestinationRule subset."""

    service: str  # a host as the route writes it: short, name.namespace or FQDN
    namespace: str  # the namespace the host is read in
    port: int | None
    weight: int
    subset: str | None = None

    @property
    def fqdn(self) -> str:
        return service_fqdn(self.service, self.namespace)


def virtual_service_destinations(vs: dict, rule: dict) -> tuple[Destination, ...]:
    return tuple(
        Destination(
            entry["destination"]["host"],
            namespace_of(vs),
            entry["destination"].get("port", {}).get("number"),
            entry.get("weight", 100),
            entry["destination"].get("subset"),
        )
        for entry in rule.get("route", [])
    )


def http_route_destination(http_route: dict, ref: dict) -> Destination:
    return Destination(
        ref["name"], ref.get("namespace", namespace_of(http_route)), ref.get("port"), ref.get("weight", 1)
    )


@dataclass(frozen=True)
class Share:
    """Where one weighted destination of a route takes its part of the requests."""

    workload: str  # the Deployment or StatefulSet
    app: str  # its pods' app label
    version: str  # its pods' version label
    weight: int
    circuit_breaking: bool


@dataclass(frozen=True)
class Traffic:
    shares: tuple[Share, ...]
    policy: RoutePolicy | None  # None: a call inside the mesh, where no route of this repo applies

    def describe(self) -> str:
        parts = [f"{share.workload} ({share.version or 'no version'}) {share.weight}%" for share in self.shares]
        reached = (
            f"split {', '.join(parts)}"
            if len(parts) > 1
            else " ".join(f"to {part.rsplit(' ', 1)[0]}" for part in parts)
        )
        breakers = "" if all(share.circuit_breaking for share in self.shares) else ", no circuit breaker"
        policy = f"; {self.policy.describe()}" if self.policy else ""
        return f"{reached}{breakers}{policy}" if self.shares else policy.removeprefix("; ")


def parse_retry_on(text: str) -> frozenset[str]:
    conditions = {part.strip() for part in text.split(",") if part.strip()}
    # With codes it only says to retry them (Istio adds it for codes); without one it retries nothing.
    conditions.discard("retriable-status-codes")
    return frozenset(conditions)


ISTIO_DEFAULT_RETRIES = Retries(2, None, parse_retry_on(ISTIO_DEFAULT_RETRY_ON))
# What Istio retries on for an HTTPRoute's retry stanza, besides its codes (conversion.go).
RETRY_STANZA_CONDITIONS = frozenset({"connect-failure", "refused-stream", "unavailable", "cancelled"})


def retries_of(stanza: dict | None) -> Retries:
    """A VirtualService route's `retries`, or the mesh default when it has none."""
    if stanza is None:
        return ISTIO_DEFAULT_RETRIES
    attempts = int(stanza.get("attempts", 0))
    if attempts <= 0:
        return Retries(0, None, frozenset())
    on = parse_retry_on(stanza["retryOn"]) if stanza.get("retryOn") else ISTIO_DEFAULT_RETRIES.on
    return Retries(attempts, stanza.get("perTryTimeout"), on)


def virtual_service_policy(vs: dict, rule: dict, name: str) -> RoutePolicy:
    return RoutePolicy(rule.get("timeout"), retries_of(rule.get("retries")), f"{describe(vs)} route {name}")


def http_route_policy(http_route: dict, rule: dict, name: str) -> RoutePolicy:
    where = f"{describe(http_route)} rule {name}"
    timeouts = rule.get("timeouts") or {}
    retry = rule.get("retry")
    if retry is None:
        return RoutePolicy(timeouts.get("backendRequest") or timeouts.get("request"), ISTIO_DEFAULT_RETRIES, where)
    codes = {str(code) for code in retry.get("codes") or []}
    attempts = int(retry.get("attempts", 2))
    retries = (
        Retries(attempts, timeouts.get("backendRequest"), RETRY_STANZA_CONDITIONS | codes)
        if attempts
        else Retries(0, None, frozenset())
    )
    return RoutePolicy(timeouts.get("request"), retries, where)


# Envoy retries a try that ran out its per-try timeout only on these conditions (router.cc, onPerTryTimeout);
# otherwise that try's timeout ends the request with 504.
RETRIED_AFTER_A_PER_TRY_TIMEOUT = frozenset({"reset", "5xx", "gateway-error"})


def gives_up_after(policy: RoutePolicy) -> float:
    """Seconds until the gateway answers 504 for a backend that never answers: the route's timeout, or sooner
    when every try times out first, or when a per-try timeout is not a condition the route retries on."""
    timeout = seconds(policy.timeout) if policy.timeout else math.inf
    retries = policy.retries
    if not (retries.attempts and retries.per_try_timeout):
        return timeout
    tries = retries.attempts + 1 if retries.on & RETRIED_AFTER_A_PER_TRY_TIMEOUT else 1
    return min(timeout, tries * seconds(retries.per_try_timeout))


def seconds(duration: str) -> float:
    match = DURATION.fullmatch(duration)
    if not match:
        raise Unmodelled(f"duration {duration!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


# --- DestinationRules --------------------------------------------------------------------------------


def destination_rule(docs: list[dict], host: str, namespace: str) -> dict | None:
    """The one DestinationRule for a Service host (read in `namespace`), if any."""
    fqdn = service_fqdn(host, namespace)
    rules = [
        dr for dr in of_kind(docs, "DestinationRule") if service_fqdn(dr["spec"]["host"], namespace_of(dr)) == fqdn
    ]
    if len(rules) > 1:
        raise Unmodelled(f"{len(rules)} DestinationRules for {fqdn}: {', '.join(map(describe, rules))}")
    if not rules:
        return None
    rule = rules[0]
    unknown = set(rule["spec"]) - DESTINATION_RULE_FIELDS
    unknown |= set(rule["spec"].get("trafficPolicy") or {}) - TRAFFIC_POLICY_FIELDS
    if unknown:
        raise Unmodelled(f"{describe(rule)} sets {', '.join(sorted(unknown))}")
    return rule


def traffic_policy(rule: dict | None, subset: str | None) -> tuple[dict, dict] | None:
    """(subset labels, traffic policy) of a destination; None when the subset is not defined."""
    top = dict((rule or {}).get("spec", {}).get("trafficPolicy") or {})
    if subset is None:
        return {}, top
    for entry in (rule or {}).get("spec", {}).get("subsets") or []:
        if entry.get("name") == subset:
            return entry.get("labels") or {}, top | (entry.get("trafficPolicy") or {})
    return None


def has_circuit_breaker(policy: dict) -> bool:
    pool = policy.get("connectionPool") or {}
    outliers = policy.get("outlierDetection") or {}
    limited = bool((pool.get("tcp") or {}).get("maxConnections") or (pool.get("http") or {}))
    ejects = any(outliers.get(field) for field in ("consecutive5xxErrors", "consecutiveGatewayErrors"))
    return limited and ejects


# --- the rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteRule:
    """One routing rule of the build: its policy, the methods it can match, where it sends them, and whether the
    ingress gateway serves it (an HTTPRoute, or a VirtualService bound to a gateway)."""

    policy: RoutePolicy
    methods: set[str]
    destinations: tuple[Destination, ...]
    at_the_gateway: bool
    name: str  # the Envoy route's name, which EnvoyFilters match on ("" for an unnamed VirtualService route)


def http_route_rule_name(http_route: dict, rule: dict, number: int) -> str:
    """The Envoy route an HTTPRoute rule becomes: its name, else "<namespace>.<route>.<index from 0>" (pilot
    config/kube/gateway/conversion.go)."""
    return rule.get("name") or f"{namespace_of(http_route)}.{name_of(http_route)}.{number - 1}"


def route_rules(docs: list[dict]) -> Iterator[RouteRule]:
    """Every VirtualService route and HTTPRoute rule that sends requests on to Services."""
    for vs in of_kind(docs, "VirtualService"):
        for number, rule in enumerate(vs.get("spec", {}).get("http", []), start=1):
            if "route" not in rule:
                continue
            methods = {
                method
                for condition in rule.get("match") or [{}]
                for method in METHODS
                if "method" not in condition or string_match(condition["method"], method)
            }
            policy = virtual_service_policy(vs, rule, rule.get("name") or str(number))
            destinations = virtual_service_destinations(vs, rule)
            yield RouteRule(policy, methods, destinations, bool(vs["spec"].get("gateways")), rule.get("name", ""))
    for http_route in of_kind(docs, "HTTPRoute"):
        for number, rule in enumerate(http_route["spec"].get("rules", []), start=1):
            if not rule.get("backendRefs"):
                continue
            methods = {
                method
                for match in rule.get("matches") or [{}]
                for method in METHODS
                if match.get("method", method) == method
            }
            policy = http_route_policy(http_route, rule, rule.get("name") or str(number))
            destinations = tuple(http_route_destination(http_route, ref) for ref in rule["backendRefs"])
            yield RouteRule(policy, methods, destinations, True, http_route_rule_name(http_route, rule, number))


def retries_never_repeat_a_change(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """A method that is not idempotent is retried only when the request never reached the application."""
    problems = []
    for rule in route_rules(docs):
        policy = rule.policy
        changing = sorted(rule.methods - set(IDEMPOTENT_METHODS), key=METHODS.index)
        risky = sorted(policy.retries.on - NEVER_REACHED_THE_APP) if policy.retries.attempts else []
        if changing and risky:
            problems.append(
                f"{policy.where}: retries {', '.join(changing)} on {', '.join(risky)}, which may repeat a request "
                f"the backend already acted on; retry them only on {', '.join(sorted(NEVER_REACHED_THE_APP))}, "
                "or match GET and HEAD in a rule of their own"
            )
    return problems


def retries_fit_the_timeout(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """Bounded retries, each shorter than the route's timeout (when it has one), so a slow backend meets the
    timeout, not N times it."""
    problems = []
    for policy in (rule.policy for rule in route_rules(docs)):
        retries = policy.retries
        if retries.attempts > 5:
            problems.append(f"{policy.where}: {retries.attempts} retries multiply an outage; use at most 5")
        if (
            retries.attempts
            and retries.per_try_timeout
            and seconds(retries.per_try_timeout) >= seconds(policy.timeout or "0s")
        ):
            problems.append(
                f"{policy.where}: the per-try timeout {retries.per_try_timeout} is not below the route's timeout "
                f"{policy.timeout}, so no retry ever happens in time; make it at most timeout / (retries + 1)"
            )
    return problems


def splits_add_up(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """A weighted split is stated in percent: the weights add up to 100."""
    return [
        f"{rule.policy.where}: the weights add up to {total}, not 100 "
        f"({', '.join(f'{d.service} {d.weight}' for d in rule.destinations)})"
        for rule in route_rules(docs)
        if len(rule.destinations) > 1 and (total := sum(d.weight for d in rule.destinations)) != 100
    ]


def versions_run_alike(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """The versions of one app (stable, canary) get the same settings: the same environment variable names in
    each container, so that a request the split sends to either finds what it needs."""
    problems = []
    first_of_app: dict[tuple[str, str], dict] = {}
    for workload in of_kind(docs, "Deployment"):
        app = (namespace_of(workload), pod_labels(workload).get("app", name_of(workload)))
        first = first_of_app.setdefault(app, workload)
        if first is not workload and env_names(first) != env_names(workload):
            problems.append(
                f"{describe(workload)}: environment {env_names(workload)} differs from {describe(first)}'s "
                f"{env_names(first)}; a patch that targets one version by name misses the other"
            )
    return problems


def env_names(workload: dict) -> list[list[str]]:
    containers = workload["spec"]["template"]["spec"].get("containers", [])
    return [sorted(entry["name"] for entry in container.get("env") or []) for container in containers]


def services_have_circuit_breakers(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """Every Service of the app has a DestinationRule with a connection pool limit and outlier detection, and
    none of them sets a TLS mode other than ISTIO_MUTUAL."""
    problems = []
    for service in of_kind(docs, "Service"):
        rule = destination_rule(docs, name_of(service), namespace_of(service))
        if rule is None:
            problems.append(f"{describe(service)}: add a DestinationRule with connectionPool and outlierDetection")
            continue
        policy = (rule["spec"].get("trafficPolicy")) or {}
        if not has_circuit_breaker(policy):
            problems.append(f"{describe(rule)}: set connectionPool limits and outlierDetection (consecutive5xxErrors)")
    for rule in of_kind(docs, "DestinationRule"):
        policies = [rule["spec"].get("trafficPolicy") or {}] + [
            entry.get("trafficPolicy") or {} for entry in rule["spec"].get("subsets") or []
        ]
        for policy in policies:
            mode = (policy.get("tls") or {}).get("mode")
            if mode not in MESH_TLS_MODES:
                problems.append(
                    f"{describe(rule)}: tls mode {mode} replaces the mesh's mutual TLS towards a meshed Service; "
                    "use ISTIO_MUTUAL"
                )
    return problems
