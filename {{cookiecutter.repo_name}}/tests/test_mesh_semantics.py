"""The verifier follows Istio's documented semantics; each case is one sentence of the Istio docs.

Small hand-written meshes keep each case about one rule: a backend "api" with its own identity in
namespace "app", called by "web" or from the internet through the gateway at shop.example.com.
"""

import pytest
import yaml

from repo_tools.layout import IngressGateway
from repo_tools.mesh import Caller, Mesh, Token, Unmodelled, host_matches, istio_string_match, string_match

pytestmark = pytest.mark.bake_independent

GATEWAY = IngressGateway(namespace="istio-system", service_account="istio-ingressgateway", istio_label="ingressgateway")
WEB = Caller("app", "web")
HOST = "shop.example.com"


def workload(name: str, port: int = 8080, tcp: bool = False) -> list[dict]:
    labels = {"app": name}
    return [
        {
            "kind": "Service",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {
                "selector": labels,
                "ports": [
                    {
                        "name": "tcp" if tcp else "http",
                        "port": 80,
                        "targetPort": port,
                        "appProtocol": "tcp" if tcp else "http",
                    }
                ],
            },
        },
        {
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"ports": [{"containerPort": port}]}]},
                }
            },
        },
    ]


def policy(name: str, spec: dict, namespace: str = "app") -> dict:
    return {"kind": "AuthorizationPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def peer_authentication(name: str, spec: dict, namespace: str = "app") -> dict:
    return {"kind": "PeerAuthentication", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def allow(principals: list[str], **operation: list[str]) -> dict:
    rule: dict = {"from": [{"source": {"principals": principals}}]}
    if operation:
        rule["to"] = [{"operation": operation}]
    return {"selector": {"matchLabels": {"app": "api"}}, "action": "ALLOW", "rules": [rule]}


def edge(routes: list[dict], hosts: list[str] | None = None, redirect: bool = True) -> list[dict]:
    plain = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": hosts or [HOST]}
    if redirect:
        plain["tls"] = {"httpsRedirect": True}
    secure = {
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "hosts": hosts or [HOST],
        "tls": {"mode": "SIMPLE", "credentialName": "shop-tls"},
    }
    return [
        {
            "kind": "Gateway",
            "metadata": {"name": "public", "namespace": "app"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [plain, secure]},
        },
        {
            "kind": "VirtualService",
            "metadata": {"name": "routes", "namespace": "app"},
            "spec": {"hosts": [HOST], "gateways": ["public"], "http": routes},
        },
        {
            "kind": "Certificate",
            "metadata": {"name": "shop", "namespace": "istio-system"},
            "spec": {"secretName": "shop-tls"},
        },
    ]


def to(service: str, **extra: object) -> dict:
    return {"route": [{"destination": {"host": service}}], **extra}


def mesh(*parts: list[dict] | dict) -> Mesh:
    docs: list[dict] = []
    for part in parts:
        docs += part if isinstance(part, list) else [part]
    return Mesh(docs, GATEWAY)


# --- string and host matching ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("/api", "/api", True),
        ("/api*", "/apiary", True),
        ("*/health", "/v1/health", True),
        ("*", "", False),
        ("*", "x", True),
        ("/api", "/api/", False),
    ],
)
def test_policy_strings_are_exact_prefix_suffix_or_presence(pattern, value, matches):
    assert istio_string_match(pattern, value) is matches


def test_a_virtualservice_prefix_matches_any_continuation_and_regex_must_match_the_whole_path():
    assert string_match({"prefix": "/api"}, "/apiary")
    assert not string_match({"prefix": "/api/"}, "/apiary")
    assert not string_match({"regex": "/api"}, "/api/orders")
    assert string_match({"regex": "/api(/.*)?"}, "/api/orders")


def test_gateway_hosts_match_exactly_or_by_leading_wildcard():
    assert host_matches("*.example.com", "shop.example.com")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("shop.example.com", "www.shop.example.com")


# --- gateway and routing ----------------------------------------------------------------------


def test_http_is_redirected_when_the_server_sets_https_redirect():
    verdict = mesh(edge([to("api")]), workload("api")).from_internet("http", HOST, "/")
    assert verdict.outcome == "redirect https"


def test_a_host_no_server_binds_gets_no_route():
    verdict = mesh(edge([to("api")]), workload("api")).from_internet("https", "other.example.com", "/")
    assert verdict.outcome == "no-route"


def test_a_tls_secret_outside_the_gateways_namespace_fails_the_handshake():
    docs = edge([to("api")])
    docs[2]["metadata"]["namespace"] = "app"
    verdict = mesh(docs, workload("api")).from_internet("https", HOST, "/")
    assert verdict.outcome == "tls-failure" and "Certificate app/shop" in verdict.because


def test_routes_are_first_match_top_to_bottom():
    routes = [to("web", match=[{"uri": {"prefix": "/"}}]), to("api", match=[{"uri": {"prefix": "/api/"}}])]
    verdict = mesh(edge(routes), workload("web"), workload("api")).from_internet("https", HOST, "/api/orders")
    assert verdict.outcome == "reaches web"


def test_match_conditions_are_ored_and_fields_within_one_are_anded():
    routes = [
        to("api", match=[{"uri": {"exact": "/api"}, "method": {"exact": "POST"}}, {"uri": {"prefix": "/api/"}}]),
        to("web"),
    ]
    m = mesh(edge(routes), workload("web"), workload("api"))
    assert m.from_internet("https", HOST, "/api").outcome == "reaches web"
    assert m.from_internet("https", HOST, "/api", method="POST").outcome == "reaches api"
    assert m.from_internet("https", HOST, "/api/x").outcome == "reaches api"


def test_a_short_destination_host_resolves_in_the_virtualservices_namespace():
    verdict = mesh(edge([to("api")]), workload("api")).from_internet("https", HOST, "/")
    assert verdict.outcome == "reaches api"


def test_a_uri_rewrite_changes_the_path_the_policy_sees():
    routes = [to("api", match=[{"uri": {"prefix": "/public/"}}], rewrite={"uri": "/internal/"})]
    m = mesh(edge(routes), workload("api"), policy("api", allow([GATEWAY.principal], paths=["/internal/*"])))
    assert m.from_internet("https", HOST, "/public/x").outcome == "reaches api"


@pytest.mark.parametrize("construct", [{"fault": {"abort": {"httpStatus": 503}}}, {"mirror": {"host": "web"}}])
def test_a_route_construct_that_changes_the_answer_is_not_guessed(construct):
    with pytest.raises(Unmodelled):
        mesh(edge([to("api", **construct)]), workload("api")).from_internet("https", HOST, "/")


def test_a_header_match_takes_only_requests_with_that_header_whatever_its_case():
    routes = edge([to("api", match=[{"headers": {"x-canary": {"exact": "always"}}}]), to("web")])
    m = mesh(routes, workload("api"), workload("web"))
    assert m.from_internet("https", HOST, "/", headers={"X-Canary": "always"}).outcome == "reaches api"
    assert m.from_internet("https", HOST, "/", headers={"x-canary": "sometimes"}).outcome == "reaches web"
    assert m.from_internet("https", HOST, "/").outcome == "reaches web"


def versions(name: str, *versions_and_replicas: str) -> list[dict]:
    """A Service `name` over every version, one Deployment per version."""
    service, deployment = workload(name)
    docs = [service]
    for version in versions_and_replicas:
        copy = yaml.safe_load(yaml.safe_dump(deployment))
        copy["metadata"]["name"] = f"{name}-{version}"
        copy["spec"]["template"]["metadata"]["labels"] = {"app": name, "version": version}
        docs.append(copy)
    return docs


def destination_rule(host: str, **spec: object) -> dict:
    return {"kind": "DestinationRule", "metadata": {"name": host, "namespace": "app"}, "spec": {"host": host, **spec}}


def split(*weights: tuple[str, int]) -> dict:
    return {"route": [{"destination": {"host": "api", "subset": subset}, "weight": w} for subset, w in weights]}


SUBSETS = [{"name": "stable", "labels": {"version": "stable"}}, {"name": "canary", "labels": {"version": "canary"}}]


def test_a_weighted_split_reaches_each_subset_with_its_share():
    m = mesh(edge([split(("stable", 90), ("canary", 10))]), versions("api", "stable", "canary"))
    m.docs.append(destination_rule("api", subsets=SUBSETS))
    verdict = m.from_internet("https", HOST, "/")
    assert verdict.outcome == "reaches api"
    assert verdict.traffic is not None
    assert [(s.workload, s.version, s.weight) for s in verdict.traffic.shares] == [
        ("api-stable", "stable", 90),
        ("api-canary", "canary", 10),
    ]


def test_a_subset_no_pod_carries_or_no_rule_defines_answers_503_for_its_share():
    m = mesh(edge([split(("stable", 90), ("nightly", 10))]), versions("api", "stable", "canary"))
    m.docs.append(destination_rule("api", subsets=SUBSETS + [{"name": "nightly", "labels": {"version": "nightly"}}]))
    verdict = m.from_internet("https", HOST, "/")
    assert verdict.outcome == "split reaches api 90%, status 503 10%"
    assert "selects no workload" in verdict.because
    m.docs[-1] = destination_rule("api", subsets=SUBSETS[:1])
    assert "defines no subset nightly" in m.from_internet("https", HOST, "/").because


def test_a_destination_rule_that_replaces_mutual_tls_fails_the_call_to_a_strict_workload():
    strict = peer_authentication("default", {"mtls": {"mode": "STRICT"}})
    for mode in ("DISABLE", "SIMPLE"):
        tls_off = destination_rule("api.app.svc.cluster.local", trafficPolicy={"tls": {"mode": mode}})
        assert mesh(edge([to("api")]), workload("api"), strict, tls_off).from_internet("https", HOST, "/").outcome == (
            "status 503"
        )
        assert mesh(workload("api"), strict, tls_off).from_pod(WEB, "api.app").outcome == "status 503"
    istio_mutual = destination_rule("api", trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}})
    assert mesh(workload("api"), strict, istio_mutual).from_pod(WEB, "api.app").outcome == "reaches api"


def test_a_circuit_breaker_needs_a_connection_pool_limit_and_outlier_detection():
    pool = {"connectionPool": {"tcp": {"maxConnections": 10}}}
    outliers = {"outlierDetection": {"consecutive5xxErrors": 5}}
    for policy, expected in (({}, False), (pool, False), (outliers, False), (pool | outliers, True)):
        m = mesh(workload("api"), destination_rule("api", trafficPolicy=policy))
        traffic = m.from_pod(WEB, "api.app").traffic
        assert traffic is not None and [share.circuit_breaking for share in traffic.shares] == [expected]


def test_a_route_without_retries_takes_istios_default_and_numbers_are_status_codes():
    bare = mesh(edge([to("api", timeout="3s")]), workload("api")).from_internet("https", HOST, "/").traffic
    assert bare is not None and bare.policy is not None
    assert (bare.policy.timeout, bare.policy.retries.attempts) == ("3s", 2)
    assert bare.policy.retries.on == {"connect-failure", "refused-stream", "unavailable", "cancelled"}
    retried = to("api", retries={"attempts": 3, "perTryTimeout": "1s", "retryOn": "reset,503"})
    policy = mesh(edge([retried]), workload("api")).from_internet("https", HOST, "/").traffic.policy  # type: ignore[union-attr]
    assert policy is not None and (policy.retries.attempts, policy.retries.on) == (3, {"reset", "503"})


# --- authorization ----------------------------------------------------------------------------


def test_a_workload_without_allow_policies_allows_everything():
    assert mesh(workload("api")).from_pod(WEB, "api.app").outcome == "reaches api"


def test_allow_nothing_in_the_namespace_denies_everything():
    assert mesh(workload("api"), policy("allow-nothing", {})).from_pod(WEB, "api.app").outcome == "denied"


def test_once_an_allow_policy_selects_a_workload_a_request_must_match_one_of_its_rules():
    m = mesh(workload("api"), policy("api", allow(["cluster.local/ns/app/sa/web"])))
    assert m.from_pod(WEB, "api.app").outcome == "reaches api"
    assert m.from_pod(Caller("app", "other"), "api.app").outcome == "denied"


def test_deny_is_evaluated_before_allow():
    deny = {
        "selector": {"matchLabels": {"app": "api"}},
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}],
    }
    m = mesh(workload("api"), policy("api", allow(["cluster.local/ns/app/sa/web"])), policy("no-admin", deny))
    assert m.from_pod(WEB, "api.app", "/admin/users").outcome == "denied"
    assert "no-admin rule 1" in m.from_pod(WEB, "api.app", "/admin/users").because
    assert m.from_pod(WEB, "api.app", "/orders").outcome == "reaches api"


def test_custom_policies_are_not_guessed():
    with pytest.raises(Unmodelled, match="CUSTOM"):
        mesh(workload("api"), policy("ext", {"action": "CUSTOM", "provider": {"name": "opa"}})).from_pod(WEB, "api.app")


def test_a_when_condition_is_not_guessed():
    spec = allow(["cluster.local/ns/app/sa/web"])
    spec["rules"][0]["when"] = [{"key": "request.auth.claims[iss]", "values": ["x"]}]
    with pytest.raises(Unmodelled, match="'when' condition"):
        mesh(workload("api"), policy("api", spec)).from_pod(WEB, "api.app")


def test_a_request_principal_comes_only_from_a_token_the_gateway_validated():
    spec = {
        "selector": {"matchLabels": {"app": "api"}},
        "rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}],
    }
    assert mesh(workload("api"), policy("api", spec)).from_pod(WEB, "api.app").outcome == "denied"


GATEWAY_POD = {"istio": "ingressgateway"}


def edge_authentication(issuer: str, jwks_uri: str) -> dict:
    rule = {"issuer": issuer, "jwksUri": jwks_uri}
    spec = {"selector": {"matchLabels": GATEWAY_POD}, "jwtRules": [rule]}
    return {"kind": "RequestAuthentication", "metadata": {"name": "tokens", "namespace": "istio-system"}, "spec": spec}


def token_required_on(path: str) -> dict:
    rule = {"from": [{"source": {"notRequestPrincipals": ["*"]}}], "to": [{"operation": {"paths": [path]}}]}
    spec = {"selector": {"matchLabels": GATEWAY_POD}, "action": "DENY", "rules": [rule]}
    return policy("tokens", spec, namespace="istio-system")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "denied"),
        (Token("https://issuer", "https://issuer/jwks", "client"), "reaches api"),
        (Token("https://issuer", "https://issuer/jwks", "client", expired=True), "unauthenticated"),
        (Token("https://issuer", "a key no JWKS holds", "client"), "unauthenticated"),
        (Token("https://elsewhere", "https://issuer/jwks", "client"), "unauthenticated"),
    ],
)
def test_the_gateway_checks_a_token_then_its_policies_before_any_route(token, expected):
    m = mesh(
        edge([to("api")]),
        workload("api"),
        edge_authentication("https://issuer", "https://issuer/jwks"),
        token_required_on("/*"),
    )
    assert m.from_internet("https", HOST, "/orders", token=token).outcome == expected


def test_a_policy_in_the_root_namespace_applies_to_every_namespace():
    assert (
        mesh(workload("api"), policy("mesh-wide", {}, namespace="istio-system")).from_pod(WEB, "api.app").outcome
        == "denied"
    )


def test_a_policy_whose_selector_does_not_match_does_not_apply():
    other = allow(["cluster.local/ns/app/sa/nobody"]) | {"selector": {"matchLabels": {"app": "other"}}}
    assert mesh(workload("api"), policy("other", other)).from_pod(WEB, "api.app").outcome == "reaches api"


def test_paths_methods_ports_and_their_negations_narrow_a_rule():
    spec = allow(
        ["cluster.local/ns/app/sa/web"], paths=["/api/*"], notPaths=["/api/admin"], methods=["GET"], ports=["8080"]
    )
    m = mesh(workload("api"), policy("api", spec))
    assert m.from_pod(WEB, "api.app", "/api/orders").outcome == "reaches api"
    assert m.from_pod(WEB, "api.app", "/api/admin").outcome == "denied"
    assert m.from_pod(WEB, "api.app", "/other").outcome == "denied"


def test_a_port_rule_names_the_container_port_not_the_service_port():
    spec = allow(["cluster.local/ns/app/sa/web"], ports=["80"])
    assert mesh(workload("api"), policy("api", spec)).from_pod(WEB, "api.app").outcome == "denied"


def test_namespaces_and_principal_wildcards_match_as_documented():
    spec = {
        "selector": {"matchLabels": {"app": "api"}},
        "rules": [{"from": [{"source": {"namespaces": ["app"], "notPrincipals": ["*/sa/default"]}}]}],
    }
    m = mesh(workload("api"), policy("api", spec))
    assert m.from_pod(WEB, "api.app").outcome == "reaches api"
    assert m.from_pod(Caller("app", "default"), "api.app").outcome == "denied"
    assert m.from_pod(Caller("elsewhere", "web"), "api.app").outcome == "denied"


def test_on_tcp_an_allow_rule_with_http_fields_never_matches_and_a_deny_rule_ignores_them():
    m = mesh(workload("api", tcp=True), policy("api", allow(["cluster.local/ns/app/sa/web"], paths=["/x"])))
    assert m.from_pod(WEB, "api.app").outcome == "denied"
    deny = {
        "selector": {"matchLabels": {"app": "api"}},
        "action": "DENY",
        "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}],
    }
    assert mesh(workload("api", tcp=True), policy("deny", deny)).from_pod(WEB, "api.app").outcome == "denied"


# --- mutual TLS -------------------------------------------------------------------------------


PLAINTEXT = Caller("app", "web", sidecar=False)


def test_without_peer_authentication_the_mesh_accepts_plaintext():
    assert mesh(workload("api")).from_pod(PLAINTEXT, "api.app").outcome == "reaches api"


def test_strict_in_the_root_namespace_applies_mesh_wide():
    m = mesh(workload("api"), peer_authentication("default", {"mtls": {"mode": "STRICT"}}, namespace="istio-system"))
    assert m.from_pod(PLAINTEXT, "api.app").outcome == "no-answer"


def test_the_namespace_setting_overrides_the_mesh_and_the_workload_setting_overrides_both():
    mesh_strict = peer_authentication("default", {"mtls": {"mode": "STRICT"}}, namespace="istio-system")
    namespace_permissive = peer_authentication("default", {"mtls": {"mode": "PERMISSIVE"}})
    workload_strict = peer_authentication(
        "api", {"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "STRICT"}}
    )
    assert (
        mesh(workload("api"), mesh_strict, namespace_permissive).from_pod(PLAINTEXT, "api.app").outcome == "reaches api"
    )
    assert (
        mesh(workload("api"), mesh_strict, namespace_permissive, workload_strict).from_pod(PLAINTEXT, "api.app").outcome
        == "no-answer"
    )


def test_a_port_level_mode_applies_to_that_container_port_only():
    spec = {
        "selector": {"matchLabels": {"app": "api"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {"8080": {"mode": "DISABLE"}},
    }
    assert (
        mesh(workload("api"), peer_authentication("api", spec)).from_pod(PLAINTEXT, "api.app").outcome == "reaches api"
    )
    assert (
        mesh(workload("api", port=9090), peer_authentication("api", spec)).from_pod(PLAINTEXT, "api.app").outcome
        == "no-answer"
    )


def test_principals_need_mutual_tls_so_plaintext_callers_never_match_them():
    m = mesh(workload("api"), policy("api", allow(["cluster.local/ns/app/sa/web"])))
    assert m.from_pod(WEB, "api.app").outcome == "reaches api"
    assert m.from_pod(PLAINTEXT, "api.app").outcome == "denied"


def test_two_peer_authentications_at_one_level_are_not_guessed():
    docs = [
        peer_authentication("a", {"mtls": {"mode": "STRICT"}}),
        peer_authentication("b", {"mtls": {"mode": "DISABLE"}}),
    ]
    with pytest.raises(Unmodelled, match="2 PeerAuthentications"):
        mesh(workload("api"), docs).from_pod(PLAINTEXT, "api.app")


def test_mesh_routing_and_per_port_traffic_policy_for_the_target_are_not_guessed():
    mesh_route = {
        "kind": "VirtualService",
        "metadata": {"name": "api", "namespace": "app"},
        "spec": {"hosts": ["api"], "http": [to("api")]},
    }
    with pytest.raises(Unmodelled, match="routes mesh traffic"):
        mesh(workload("api"), mesh_route).from_pod(WEB, "api.app")
    port_level = destination_rule("api", trafficPolicy={"portLevelSettings": [{"port": {"number": 80}}]})
    with pytest.raises(Unmodelled, match="sets portLevelSettings"):
        mesh(workload("api"), port_level).from_pod(WEB, "api.app")


def test_a_virtualservice_bound_only_to_the_gateway_leaves_mesh_traffic_alone():
    assert mesh(edge([to("api")]), workload("api")).from_pod(WEB, "api.app").outcome == "reaches api"
