"""What istiod sends a proxy, asked over its xDS API as the proxy itself would ask, and Envoy's route selection over it.

`proxy_config` connects to istiod's plaintext xDS port (127.0.0.1 only) with the node identity a pod's
pilot-agent would send (its IP, name, namespace, labels, ServiceAccount) and returns the listeners and route
configurations istiod generates for that pod. `route` then picks, as Envoy's HTTP connection manager does, the
listener by port, the filter chain by SNI, the virtual host by authority and the first route whose path, method and
header matches hold, and says where the request goes: weighted clusters, a redirect, or a direct answer.
"""

import queue
import re
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from repo_tools import resilience

LISTENERS = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HTTP_CONNECTION_MANAGER = "envoy.filters.network.http_connection_manager"
ANSWER_SECONDS = 30.0


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    ip: str
    labels: dict[str, str]
    service_account: str
    workload: str

    def node(self, proxy_type: str, istio_version: str) -> base_pb2.Node:
        metadata = struct_pb2.Struct()
        metadata.update(
            {
                "NAMESPACE": self.namespace,
                "NAME": self.name,
                "LABELS": self.labels,
                "SERVICE_ACCOUNT": self.service_account,
                "WORKLOAD_NAME": self.workload,
                "INSTANCE_IPS": self.ip,
                "ISTIO_VERSION": istio_version,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
            }
        )
        node_id = f"{proxy_type}~{self.ip}~{self.name}.{self.namespace}~{self.namespace}.svc.cluster.local"
        return base_pb2.Node(id=node_id, cluster=f"{self.workload}.{self.namespace}", metadata=metadata)


@dataclass
class ProxyConfig:
    listeners: list[listener_pb2.Listener] = field(default_factory=list)
    routes: dict[str, route_pb2.RouteConfiguration] = field(default_factory=dict)


def _fetch(stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: base_pb2.Node, type_url: str, names: list[str]):
    requests: queue.Queue = queue.Queue()
    requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url, resource_names=names))
    stream = stub.StreamAggregatedResources(iter(requests.get, None), timeout=ANSWER_SECONDS)
    try:
        answer = next(stream)
    finally:
        requests.put(None)
        stream.cancel()
    return answer.resources


def proxy_config(address: str, pod: Pod, proxy_type: str, istio_version: str) -> ProxyConfig:
    """The listeners and the route configurations they name, as istiod generates them for this pod."""
    node = pod.node(proxy_type, istio_version)
    with grpc.insecure_channel(address) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        config = ProxyConfig()
        for resource in _fetch(stub, node, LISTENERS, []):
            listener = listener_pb2.Listener()
            resource.Unpack(listener)
            config.listeners.append(listener)
        names = sorted({manager.rds.route_config_name for manager in connection_managers(config.listeners)} - {""})
        for resource in _fetch(stub, node, ROUTES, names) if names else []:
            route_config = route_pb2.RouteConfiguration()
            resource.Unpack(route_config)
            config.routes[route_config.name] = route_config
    return config


def connection_managers(listeners: list[listener_pb2.Listener]):
    for listener in listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                if network_filter.name == HTTP_CONNECTION_MANAGER:
                    manager = http_connection_manager_pb2.HttpConnectionManager()
                    network_filter.typed_config.Unpack(manager)
                    yield manager


@dataclass(frozen=True)
class Decision:
    """Where Envoy sends a request: {cluster: weight}, or a redirect / direct answer, or no route."""

    kind: str  # "route", "redirect", "direct", "no-route"
    clusters: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    policy: resilience.RoutePolicy | None = None  # a route's timeout and retries, as the verifier states them


def duration(seconds: float | None) -> str | None:
    return f"{seconds:g}s" if seconds else None  # 0s or none: no timeout


def canonical(policy: resilience.RoutePolicy) -> resilience.RoutePolicy:
    """A route policy with its durations in seconds and without the condition Envoy implies by a status code
    (retriable-status-codes), so that the verifier's and Envoy's read alike in RoutePolicy.describe."""
    retries = policy.retries
    return resilience.RoutePolicy(
        duration(resilience.seconds(policy.timeout)) if policy.timeout else None,
        resilience.Retries(
            retries.attempts,
            duration(resilience.seconds(retries.per_try_timeout)) if retries.per_try_timeout else None,
            retries.on - {"retriable-status-codes"} if retries.attempts else frozenset(),
        ),
        "",
    )


def listener_on(config: ProxyConfig, port: int) -> listener_pb2.Listener | None:
    return next((listener for listener in config.listeners if listener.address.socket_address.port_value == port), None)


def route_config_for(config: ProxyConfig, port: int, server_name: str) -> route_pb2.RouteConfiguration | None:
    listener = listener_on(config, port)
    if listener is None:
        return None
    for chain in listener.filter_chains:
        names = list(chain.filter_chain_match.server_names)
        if names and not any(sni_matches(name, server_name) for name in names):
            continue
        for network_filter in chain.filters:
            if network_filter.name == HTTP_CONNECTION_MANAGER:
                manager = http_connection_manager_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(manager)
                if manager.HasField("route_config"):
                    return manager.route_config
                return config.routes.get(manager.rds.route_config_name)
    return None


def sni_matches(pattern: str, name: str) -> bool:
    return pattern == name or (pattern.startswith("*.") and name.endswith(pattern[1:]))


def domain_matches(domain: str, authority: str) -> bool:
    if domain == "*" or domain == authority:
        return True
    if domain.startswith("*"):
        return authority.endswith(domain[1:])
    return domain.endswith("*") and authority.startswith(domain[:-1])


def route(config: ProxyConfig, port: int, host: str, path: str, method: str, headers: dict[str, str]) -> Decision:
    route_config = route_config_for(config, port, host)
    if route_config is None:
        return Decision("no-route", detail=f"no listener or filter chain on port {port} for {host}")
    virtual_host = next(
        (vh for vh in route_config.virtual_hosts if any(domain_matches(d, host) for d in vh.domains)), None
    ) or next(
        (vh for vh in route_config.virtual_hosts if any(domain_matches(d, f"{host}:{port}") for d in vh.domains)),
        None,
    )
    if virtual_host is None:
        return Decision("no-route", detail=f"route configuration {route_config.name} has no virtual host for {host}")
    request_headers = {name.lower(): value for name, value in headers.items()} | {":method": method}
    for candidate in virtual_host.routes:
        if path_matches(candidate.match, path) and all(
            header_matches(matcher, request_headers) for matcher in candidate.match.headers
        ):
            return decision(candidate, f"{route_config.name} / {virtual_host.name} / {candidate.name or '(unnamed)'}")
    return Decision("no-route", detail=f"no route of {virtual_host.name} matches {method} {path}")


def decision(candidate: route_components_pb2.Route, where: str) -> Decision:
    if candidate.HasField("redirect"):
        redirect = candidate.redirect
        target = "https" if redirect.https_redirect or redirect.scheme_redirect == "https" else redirect.scheme_redirect
        return Decision("redirect", detail=f"{where}: redirect {target}")
    if candidate.HasField("direct_response"):
        return Decision("direct", detail=f"{where}: {candidate.direct_response.status}")
    action = candidate.route
    if action.HasField("weighted_clusters"):
        clusters = {cluster.name: cluster.weight.value for cluster in action.weighted_clusters.clusters}
    else:
        clusters = {action.cluster: 100}
    retry = action.retry_policy if action.HasField("retry_policy") else None
    retries = resilience.Retries(0, None, frozenset())
    if retry is not None:
        retries = resilience.Retries(
            retry.num_retries.value if retry.HasField("num_retries") else 1,  # Envoy's default: 1
            duration(retry.per_try_timeout.ToTimedelta().total_seconds())
            if retry.HasField("per_try_timeout")
            else None,
            frozenset(filter(None, retry.retry_on.split(","))) | {str(code) for code in retry.retriable_status_codes},
        )
    timeout = duration(action.timeout.ToTimedelta().total_seconds()) if action.HasField("timeout") else None
    routed = {name: weight for name, weight in clusters.items() if weight}
    return Decision("route", routed, where, resilience.RoutePolicy(timeout, retries, where))


def path_matches(match: route_components_pb2.RouteMatch, path: str) -> bool:
    path = path.split("?", 1)[0]
    sensitive = not match.HasField("case_sensitive") or match.case_sensitive.value
    given = path if sensitive else path.lower()

    def cased(text: str) -> str:
        return text if sensitive else text.lower()

    specifier = match.WhichOneof("path_specifier")
    if specifier == "prefix":
        return given.startswith(cased(match.prefix))
    if specifier == "path":
        return given == cased(match.path)
    if specifier == "path_separated_prefix":
        prefix = cased(match.path_separated_prefix)
        return given == prefix or given.startswith(prefix + "/")
    if specifier == "safe_regex":
        return re.fullmatch(match.safe_regex.regex, path) is not None
    raise ValueError(f"route match {specifier} is not evaluated here")


def header_matches(matcher, headers: dict[str, str]) -> bool:
    value = headers.get(matcher.name.lower())
    specifier = matcher.WhichOneof("header_match_specifier")
    if specifier == "present_match":
        held = (value is not None) == matcher.present_match
    elif value is None:
        held = False
    elif specifier == "string_match":
        held = string_matches(matcher.string_match, value)
    elif specifier == "exact_match":
        held = value == matcher.exact_match
    elif specifier == "prefix_match":
        held = value.startswith(matcher.prefix_match)
    elif specifier == "safe_regex_match":
        held = re.fullmatch(matcher.safe_regex_match.regex, value) is not None
    else:
        raise ValueError(f"header match {specifier} is not evaluated here")
    return held != matcher.invert_match


def string_matches(matcher, value: str) -> bool:
    if matcher.ignore_case:
        value = value.lower()
    kind = matcher.WhichOneof("match_pattern")
    expected = getattr(matcher, kind)
    if kind == "safe_regex":
        return re.fullmatch(expected.regex, value) is not None
    expected = expected.lower() if matcher.ignore_case else expected
    return {
        "exact": value == expected,
        "prefix": value.startswith(expected),
        "suffix": value.endswith(expected),
        "contains": expected in value,
    }[kind]


def cluster_host(cluster: str) -> tuple[str, str]:
    """(Service FQDN, subset) of an outbound cluster name: outbound|<port>|<subset>|<host>."""
    parts = cluster.split("|")
    return (parts[3], parts[2]) if len(parts) == 4 else (cluster, "")
