"""What the ingress gateway does to a request besides routing it, read from the build: the path every route and
policy sees (Istio's path normalization), the largest headers and body it accepts, and the rate limit of each route
(EnvoyFilters on the gateway). Envoy's semantics, from its API and Istio's:
- DECODE_AND_MERGE_SLASHES: %2F and %5C are decoded, the path normalized as RFC 3986 says (percent-encoded
  unreserved characters decoded, dot segments removed, backslashes made slashes), repeated slashes merged;
- headers over the connection manager's max_request_headers_kb get 431 before anything else runs; a body over the
  buffer filter's max_request_bytes gets 413;
- a route's own local rate limit config gives it a bucket of its own in each gateway pod, holding max_tokens and
  refilled continuously at tokens_per_fill per fill_interval (Envoy's AtomicTokenBucket): a burst past what it
  holds gets 429. An update of the routes from istiod fills the buckets again.

The rules below keep every EnvoyFilter patch valid Envoy configuration (Envoy's protos, strictly), every
route-level patch pointed at a route the build has (Envoy applies one that matches nothing to nothing), and the
routes to a Service limited alike.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from repo_tools import resilience
from repo_tools.layout import IngressGateway
from repo_tools.resources import describe, namespace_of, of_kind, selects

# meshConfig.pathNormalization.normalization in the istiod values: install.path_normalization_problems holds the
# values to it, and the verifier reads every path this way.
NORMALIZATION = "DECODE_AND_MERGE_SLASHES"
UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]")
ENVOY_DEFAULT_HEADERS_KB = 60
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
TYPE_PREFIX = "type.googleapis.com/"
# What Istio reads an EnvoyFilter patch's value as, by applyTo (pilot/pkg/networking/core/envoyfilter, xds.go).
PATCHED_MESSAGES = {
    "LISTENER": "envoy.config.listener.v3.Listener",
    "FILTER_CHAIN": "envoy.config.listener.v3.FilterChain",
    "NETWORK_FILTER": "envoy.config.listener.v3.Filter",
    "HTTP_FILTER": "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
    "ROUTE_CONFIGURATION": "envoy.config.route.v3.RouteConfiguration",
    "VIRTUAL_HOST": "envoy.config.route.v3.VirtualHost",
    "HTTP_ROUTE": "envoy.config.route.v3.Route",
    "CLUSTER": "envoy.config.cluster.v3.Cluster",
}


@dataclass(frozen=True)
class Limit:
    value: int
    window: str  # "" for a size
    where: str

    def describe(self, unit: str) -> str:
        per = f" at once, then {self.value} per {self.window}, per gateway pod" if self.window else ""
        return f"{self.value} {unit}{per} ({self.where})"


def normalized(path: str) -> str:
    """The path as Istio's routes and policies see it under NORMALIZATION; the query is left alone."""
    path, mark, query = path.partition("?")
    path = re.sub("%2f", "/", path, flags=re.IGNORECASE)
    path = re.sub("%5c", "\\\\", path, flags=re.IGNORECASE).replace("\\", "/")
    path = re.sub("%([0-9A-Fa-f]{2})?", canonical_escape, path)
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            kept = kept[:-1]
        elif segment != ".":
            kept.append(segment)
    trailing = "/" if segments and segments[-1] in (".", "..") and kept else ""
    return re.sub("/{2,}", "/", "/" + "/".join(kept) + trailing) + mark + query


def canonical_escape(escape: re.Match) -> str:
    """An escape as Envoy's URL canonicalizer leaves it: an unreserved character decoded, another escape kept as
    written, a "%" that starts none escaped itself."""
    if escape[1] is None:
        return "%25"
    character = chr(int(escape[1], 16))
    return character if UNRESERVED.fullmatch(character) else escape[0]


def gateway_filters(docs: list[dict], gateway: IngressGateway) -> Iterator[dict]:
    """The EnvoyFilters that apply to the ingress gateway's pods: by targetRefs to its Gateway, or by labels."""
    for envoy_filter in of_kind(docs, "EnvoyFilter"):
        spec = envoy_filter.get("spec") or {}
        if namespace_of(envoy_filter) != gateway.namespace:
            continue
        refs = spec.get("targetRefs") or []
        labels = (spec.get("workloadSelector") or {}).get("labels") or {}
        if any(ref.get("kind") == "Gateway" and ref.get("name") == gateway.gateway_name for ref in refs) or (
            labels and selects(labels, gateway.pod_labels)
        ):
            yield envoy_filter


def patches(docs: list[dict], gateway: IngressGateway, apply_to: str) -> Iterator[tuple[dict, int, dict]]:
    for envoy_filter in gateway_filters(docs, gateway):
        for number, patch in enumerate(envoy_filter["spec"].get("configPatches") or [], start=1):
            if patch.get("applyTo") == apply_to and (patch.get("match") or {}).get("context") == "GATEWAY":
                yield envoy_filter, number, patch


def typed(value: object, message: str) -> dict:
    return value if isinstance(value, dict) and value.get("@type") == TYPE_PREFIX + message else {}


def rate_limits(docs: list[dict], gateway: IngressGateway) -> dict[str, Limit]:
    """The local rate limit of each route of the gateway that has one, by Envoy route name."""
    found = {}
    for envoy_filter, number, patch in patches(docs, gateway, "HTTP_ROUTE"):
        route = ((patch["match"].get("routeConfiguration") or {}).get("vhost") or {}).get("route") or {}
        config = typed(
            ((patch.get("patch") or {}).get("value") or {}).get("typed_per_filter_config", {}).get(RATE_LIMIT_FILTER),
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        )
        bucket = config.get("token_bucket") or {}
        enforced = all(
            (config.get(key) or {}).get("default_value", {}).get("numerator") == 100
            for key in ("filter_enabled", "filter_enforced")
        )
        if route.get("name") and bucket and enforced:
            found[route["name"]] = Limit(
                int(bucket.get("max_tokens", 1)),
                str(bucket.get("fill_interval")),
                f"{describe(envoy_filter)} patch {number}",
            )
    return found


def patched_setting(docs: list[dict], gateway: IngressGateway, apply_to: str, message: str, field: str) -> Limit | None:
    """A size an EnvoyFilter patch on the gateway sets in the typed config of an Envoy `message`."""
    for envoy_filter, number, patch in patches(docs, gateway, apply_to):
        config = typed(((patch.get("patch") or {}).get("value") or {}).get("typed_config"), message)
        if field in config:
            return Limit(int(config[field]), "", f"{describe(envoy_filter)} patch {number}")
    return None


def body_limit(docs: list[dict], gateway: IngressGateway) -> Limit | None:
    buffer = "envoy.extensions.filters.http.buffer.v3.Buffer"
    return patched_setting(docs, gateway, "HTTP_FILTER", buffer, "max_request_bytes")


def header_limit(docs: list[dict], gateway: IngressGateway) -> Limit:
    """The largest request headers in KiB: the connection manager's, else Envoy's default."""
    manager = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    found = patched_setting(docs, gateway, "NETWORK_FILTER", manager, "max_request_headers_kb")
    return found or Limit(ENVOY_DEFAULT_HEADERS_KB, "", "Envoy's default")


# Request headers that carry credentials; a log that prints one hands out the credential.
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie", "x-api-key"}
LOG_COMMAND = re.compile(r"%(REQ|RESP|TRAILER|REQ_WITHOUT_QUERY)\(([^)]*)\)(?::\d+)?%")


def log_leaks(command: str) -> list[str]:
    """What an access-log format command would write that must never be logged: a credential header, or a path
    with its query string (where ?access_token= and API keys travel)."""
    leaks = []
    for kind, argument in LOG_COMMAND.findall(command):
        headers = {name.strip().lower() for name in argument.split("?")}
        leaks += [f"{kind}({argument}) writes the {name} header" for name in sorted(headers & CREDENTIAL_HEADERS)]
        if kind == "REQ" and headers & {":path", "x-envoy-original-path"}:
            leaks.append(f"REQ({argument}) writes the query string; use REQ_WITHOUT_QUERY({argument})")
    if re.search(r"%(PATH|DYNAMIC_METADATA\(envoy\.filters\.http\.jwt_authn)", command):
        leaks.append(f"{command} may write the query string or the token's claims")
    return leaks


def gateway_log_commands(subject_header: str) -> dict[str, str]:
    """What the gateway's access log must carry, and the format command that writes it."""
    return {
        "the request id": "%REQ(X-REQUEST-ID)%",
        "the route": "%ROUTE_NAME%",
        "the token's subject": f"%REQ({subject_header.upper()})%",
    }


# --- rules -------------------------------------------------------------------------------------------------------


def envoy_patches_are_envoy_config(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """Every EnvoyFilter patch reads as the Envoy message Istio makes of it, unknown fields refused: istiod would
    reject the patch, and Envoy never see it, for a misspelt field."""
    envoy_filters = list(of_kind(docs, "EnvoyFilter"))
    if not envoy_filters:
        return []
    from google.protobuf import json_format, symbol_database

    import_envoy_messages()
    problems = []
    for envoy_filter in envoy_filters:
        for number, patch in enumerate(envoy_filter.get("spec", {}).get("configPatches") or [], start=1):
            where = f"{describe(envoy_filter)} patch {number}"
            message = PATCHED_MESSAGES.get(str(patch.get("applyTo")))
            if message is None:
                problems.append(f"{where}: applyTo {patch.get('applyTo')} is not one this check reads")
                continue
            try:
                json_format.ParseDict(
                    (patch.get("patch") or {}).get("value") or {},
                    symbol_database.Default().GetSymbol(message)(),
                )
            except (json_format.ParseError, KeyError, TypeError) as error:
                problems.append(f"{where}: not a valid {message.rsplit('.', 1)[-1]}: {error}")
    return problems


def import_envoy_messages() -> None:
    """Registers the Envoy messages a patch may name (xds-protos, Envoy's API as published on PyPI)."""
    import envoy.config.cluster.v3.cluster_pb2  # noqa: F401
    import envoy.config.listener.v3.listener_pb2  # noqa: F401
    import envoy.config.route.v3.route_pb2  # noqa: F401
    import envoy.extensions.filters.http.buffer.v3.buffer_pb2  # noqa: F401
    import envoy.extensions.filters.http.local_ratelimit.v3.local_rate_limit_pb2  # noqa: F401
    import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401


def gateway_route_names(docs: list[dict]) -> dict[str, resilience.RouteRule]:
    return {rule.name: rule for rule in resilience.route_rules(docs) if rule.at_the_gateway and rule.name}


def rate_limits_name_routes_of_the_build(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """A route-level patch names a route the gateway has: Envoy applies one that matches no route to nothing."""
    routes = gateway_route_names(docs)
    return [
        f"{limit.where} limits route {name}, which no route at the gateway is called (routes: "
        f"{', '.join(sorted(routes)) or 'none'}): the limit applies to nothing"
        for name, limit in rate_limits(docs, gateway).items()
        if name not in routes
    ]


def routes_to_a_service_are_limited_alike(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """If one route of the gateway to a Service is rate limited, every route of the gateway to it is: a route
    added beside a limited one must not open a way round the limit."""
    limits, routes = rate_limits(docs, gateway), gateway_route_names(docs)
    limited = {d.service for name, rule in routes.items() if name in limits for d in rule.destinations}
    return [
        f"{rule.policy.where} reaches {', '.join(sorted(d.service for d in rule.destinations))}, which other "
        "routes reach with a rate limit, but has none"
        for name, rule in routes.items()
        if name not in limits and limited & {d.service for d in rule.destinations}
    ]
