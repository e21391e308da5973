"""The Gateway API as Istio implements it, one rule at a time, on small hand-written documents
(repo_tools/gateway_api.py). Runs in every repo, whichever ingress API it uses."""

import pytest

from repo_tools import gateway_api
from repo_tools.layout import IngressGateway
from repo_tools.resources import Unmodelled

pytestmark = pytest.mark.bake_independent

GATEWAY = IngressGateway(namespace="edge", service_account="public-istio", gateway_name="public")
HOST = "shop.example.com"


def gateway_doc(**listener_overrides) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "public", "namespace": "edge", "labels": {"team": "shop"}},
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80, "hostname": HOST},
                {
                    "name": "https",
                    "protocol": "HTTPS",
                    "port": 443,
                    "hostname": HOST,
                    "tls": {"certificateRefs": [{"name": "tls"}]},
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
                | listener_overrides,
            ],
        },
    }


def http_route(*rules: dict, namespace: str = "app", name: str = "routes", **parent) -> dict:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": "public", "namespace": "edge", "sectionName": "https"} | parent],
            "hostnames": [HOST],
            "rules": list(rules),
        },
    }


def to(service: str, path_type: str = "PathPrefix", value: str = "/", **extra) -> dict:
    return {
        "matches": [{"path": {"type": path_type, "value": value}}],
        "backendRefs": [{"name": service, "port": 80}],
    } | extra


CERTIFICATE = {"kind": "Certificate", "metadata": {"name": "tls", "namespace": "edge"}, "spec": {"secretName": "tls"}}


def routed(docs: list[dict], path: str, scheme: str = "https", host: str = HOST) -> str:
    answer = gateway_api.route([gateway_doc(), CERTIFICATE, *docs], GATEWAY, scheme, host, path, "GET")
    return ",".join(answer.services) if isinstance(answer, gateway_api.Routed) else answer.outcome


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api", "api.app"), ("/api/", "api.app"), ("/api/orders", "api.app"), ("/apiary", "web.app"), ("/", "web.app")],
)
def test_a_path_prefix_matches_whole_segments_only(path, expected):
    assert routed([http_route(to("web"), to("api", value="/api/"))], path) == expected


def test_the_longest_prefix_wins_whatever_the_order_and_exact_beats_every_prefix():
    route = http_route(to("web"), to("api", value="/api"), to("orders", value="/api/orders"))
    assert routed([route], "/api/orders/7") == "orders.app"
    assert (
        routed([route, http_route(to("exact", "Exact", "/api/orders/7"), name="exact")], "/api/orders/7") == "exact.app"
    )


def test_a_regular_expression_ranks_below_any_prefix_as_istio_sorts_them():
    assert routed([http_route(to("web"), to("api", "RegularExpression", "/api.*"))], "/api/x") == "web.app"


def test_two_routes_matching_a_path_equally_well_are_unmodelled():
    with pytest.raises(Unmodelled, match="no build knows which is older"):
        routed([http_route(to("web"), name="a"), http_route(to("other"), name="b")], "/")


def test_a_route_attaches_only_to_the_listener_its_section_name_names():
    assert routed([http_route(to("web"), sectionName="http")], "/") == "no-route"
    assert routed([http_route(to("web"), sectionName="https", port=8443)], "/") == "no-route"


def test_allowed_routes_decide_which_namespaces_may_attach():
    same = gateway_doc(allowedRoutes={"namespaces": {"from": "Same"}})
    selector = gateway_doc(
        allowedRoutes={
            "namespaces": {"from": "Selector", "selector": {"matchLabels": {"kubernetes.io/metadata.name": "app"}}}
        }
    )
    for gw, expected in ((same, "no-route"), (selector, "web.app")):
        answer = gateway_api.route([gw, CERTIFICATE, http_route(to("web"))], GATEWAY, "https", HOST, "/", "GET")
        assert (",".join(answer.services) if isinstance(answer, gateway_api.Routed) else answer.outcome) == expected


def test_a_host_no_https_listener_names_fails_the_handshake_and_a_route_for_another_host_is_not_served():
    assert routed([http_route(to("web"))], "/", host="other.example.com") == "tls-failure"
    other = http_route(to("web"))
    other["spec"]["hostnames"] = ["other.example.com"]
    assert routed([other], "/") == "no-route"


def test_a_backend_in_another_namespace_needs_a_reference_grant_there():
    route = http_route(to("web"))
    route["spec"]["rules"][0]["backendRefs"][0]["namespace"] = "shared"
    assert routed([route], "/") == "status 500"
    grant = {
        "kind": "ReferenceGrant",
        "metadata": {"name": "routes", "namespace": "shared"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "app"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    assert routed([route, grant], "/") == "web.shared"


def test_weight_zero_gets_nothing_and_a_split_reaches_every_weighted_backend():
    rule = to("web")
    rule["backendRefs"] = [{"name": "web", "port": 80, "weight": 0}, {"name": "canary", "port": 80}]
    assert routed([http_route(rule)], "/") == "canary.app"
    rule["backendRefs"][0]["weight"] = 10
    assert routed([http_route(rule)], "/") == "web.app,canary.app"


def test_a_header_match_outranks_the_same_path_without_one():
    pinned = to("canary", headers=[{"name": "X-Canary", "value": "always"}])
    pinned["matches"][0]["headers"] = pinned.pop("headers")
    routes = [http_route(to("web"), pinned)]
    docs = [gateway_doc(), CERTIFICATE, *routes]
    pinned_answer = gateway_api.route(docs, GATEWAY, "https", HOST, "/x", "GET", {"x-canary": "always"})
    assert isinstance(pinned_answer, gateway_api.Routed) and pinned_answer.services == ("canary.app",)
    assert routed(routes, "/x") == "web.app"


def test_without_a_retry_stanza_backend_request_becomes_the_routes_timeout():
    rule = to("web", timeouts={"request": "15s"})
    answer = gateway_api.route([gateway_doc(), CERTIFICATE, http_route(rule)], GATEWAY, "https", HOST, "/", "GET")
    assert isinstance(answer, gateway_api.Routed) and answer.policy.timeout == "15s"
    assert answer.policy.retries.attempts == 2 and "503" not in answer.policy.retries.on
    rule["timeouts"]["backendRequest"] = "2s"
    answer = gateway_api.route([gateway_doc(), CERTIFICATE, http_route(rule)], GATEWAY, "https", HOST, "/", "GET")
    assert isinstance(answer, gateway_api.Routed) and answer.policy.timeout == "2s"


def test_a_redirect_answers_with_its_status_and_a_rewrite_changes_the_path_the_backend_sees():
    redirect = {"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]}
    assert routed([http_route(redirect, sectionName="http", namespace="edge")], "/x", scheme="http") == "redirect https"
    rewrite = to(
        "api",
        value="/v2",
        filters=[
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}
        ],
    )
    answer = gateway_api.route(
        [gateway_doc(), CERTIFICATE, http_route(rewrite)], GATEWAY, "https", HOST, "/v2/orders", "GET"
    )
    assert isinstance(answer, gateway_api.Routed) and answer.path == "/orders"


def test_a_certificate_in_another_namespace_needs_a_reference_grant_there():
    gw = gateway_doc(tls={"certificateRefs": [{"name": "tls", "namespace": "certs"}]})
    certificate = CERTIFICATE | {"metadata": {"name": "tls", "namespace": "certs"}}
    docs = [gw, certificate, http_route(to("web"))]
    answer = gateway_api.route(docs, GATEWAY, "https", HOST, "/", "GET")
    assert answer.outcome == "tls-failure" and "no ReferenceGrant there admits the Gateway" in answer.because
    grant = {
        "kind": "ReferenceGrant",
        "metadata": {"name": "gateway", "namespace": "certs"},
        "spec": {
            "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "edge"}],
            "to": [{"group": "", "kind": "Secret", "name": "tls"}],
        },
    }
    assert isinstance(gateway_api.route([*docs, grant], GATEWAY, "https", HOST, "/", "GET"), gateway_api.Routed)


def test_a_certificate_ref_to_a_secret_nobody_makes_fails_every_https_request():
    answer = gateway_api.route([gateway_doc(), http_route(to("web"))], GATEWAY, "https", HOST, "/", "GET")
    assert answer.outcome == "tls-failure" and "made by nothing" in answer.because


def test_istio_deploys_the_gateway_under_the_gateways_name_with_its_labels_and_options():
    options = {
        "kind": "ConfigMap",
        "metadata": {"name": "public-options", "namespace": "edge"},
        "data": {
            "service": "spec:\n  type: NodePort\n  ports:\n    - port: 443\n      nodePort: 30443\n",
            "podDisruptionBudget": "spec:\n  maxUnavailable: 1\n",
        },
    }
    gw = gateway_doc()
    gw["spec"]["infrastructure"] = {"parametersRef": {"group": "", "kind": "ConfigMap", "name": "public-options"}}
    deployed = {doc["kind"]: doc for doc in gateway_api.deployed_gateway([gw, options], GATEWAY)}
    assert set(deployed) == {"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget"}
    assert {doc["metadata"]["name"] for doc in deployed.values()} == {"public-istio"}
    service = deployed["Service"]["spec"]
    assert service["type"] == "NodePort"
    assert [(p["name"], p["port"], p.get("nodePort")) for p in service["ports"]] == [
        ("status-port", 15021, None),
        ("http", 80, None),
        ("https", 443, 30443),
    ]
    assert deployed["Deployment"]["spec"]["template"]["metadata"]["labels"]["team"] == "shop"
    options["data"]["hpa"] = "spec: {}"
    with pytest.raises(ValueError, match=r"keys Istio refuses: \['hpa'\]"):
        gateway_api.deployed_gateway([gw, options], GATEWAY)
