"""Each promise check fails on the mistake it exists for, and names the resource to fix."""

import pytest
from conftest import app_namespace, app_route, backend_policy, find, gateway_api_only, istio_api_only, the_gateway

from repo_tools import invariants
from repo_tools.layout import IngressGateway, ingress_gateway

pytestmark = pytest.mark.gitops_tool_independent


def test_the_dev_overlay_keeps_every_promise(rendered):
    assert invariants.violations(rendered("dev"), ingress_gateway()) == []


def test_a_policy_admitting_sa_default_is_refused(rendered):
    docs = rendered("dev")
    policy = backend_policy(docs)
    policy["spec"]["rules"][1]["from"][0]["source"]["principals"] = [
        f"cluster.local/ns/{app_namespace(docs)}/sa/default"
    ]
    problems = invariants.principals_name_real_identities(docs, ingress_gateway())
    assert len(problems) == 1 and "/sa/default admits every pod" in problems[0]
    assert problems[0].startswith(f"AuthorizationPolicy {app_namespace(docs)}/{policy['metadata']['name']} rule 2")


def test_a_principal_without_a_service_account_is_refused(rendered):
    docs = rendered("dev")
    backend_policy(docs)["spec"]["rules"][1]["from"][0]["source"]["principals"] = ["cluster.local/ns/other/sa/ghost"]
    problems = invariants.principals_name_real_identities(docs, ingress_gateway())
    assert problems and "cluster.local/ns/other/sa/ghost is neither a ServiceAccount" in problems[0]


def test_a_gateway_principal_from_another_install_is_refused(rendered):
    moved = IngressGateway(
        namespace="istio-ingress", service_account="istio-ingressgateway", istio_label="ingressgateway"
    )
    problems = invariants.principals_name_real_identities(rendered("dev"), moved)
    assert problems and all("istio-ingress/sa/istio-ingressgateway)" in problem for problem in problems)


def test_a_missing_allow_nothing_policy_is_refused(rendered):
    docs = [doc for doc in rendered("dev") if doc["metadata"]["name"] != "allow-nothing"]
    assert invariants.deny_by_default(docs, ingress_gateway()) == [
        f"Namespace {app_namespace(docs)}: add an allow-nothing AuthorizationPolicy (spec: {{}}) so traffic is denied by default"
    ]


def test_permissive_mtls_is_refused(rendered):
    docs = rendered("dev")
    next(doc for doc in docs if doc["kind"] == "PeerAuthentication")["spec"]["mtls"]["mode"] = "PERMISSIVE"
    problems = invariants.mtls_is_strict(docs, ingress_gateway())
    assert any("add a PeerAuthentication without selector and mtls.mode STRICT" in p for p in problems)
    assert any("mode PERMISSIVE accepts plaintext" in p for p in problems)


def test_a_port_level_mtls_exception_is_refused(rendered):
    docs = rendered("dev")
    next(doc for doc in docs if doc["kind"] == "PeerAuthentication")["spec"]["portLevelMtls"] = {
        "8080": {"mode": "DISABLE"}
    }
    assert any("mode DISABLE accepts plaintext" in p for p in invariants.mtls_is_strict(docs, ingress_gateway()))


def test_a_namespace_without_sidecar_injection_is_refused(rendered):
    docs = rendered("dev")
    next(doc for doc in docs if doc["kind"] == "Namespace")["metadata"]["labels"].pop("istio-injection")
    assert invariants.namespaces_are_injected(docs, ingress_gateway())


def test_a_tls_secret_in_the_app_namespace_is_refused(rendered):
    docs = rendered("dev")
    gateway = ingress_gateway()
    public_certificate = next(doc for doc in docs if doc["kind"] == "Certificate" and not doc["spec"].get("isCA"))
    public_certificate["metadata"]["namespace"] = app_namespace(docs)
    problems = invariants.tls_secrets_live_with_the_gateway(docs, gateway)
    assert len(problems) == 1
    assert f"Certificate {app_namespace(docs)}/" in problems[0]
    if gateway.gateway_api:
        assert f"is read from {gateway.namespace}, but is made by" in problems[0]
    else:
        assert f"must be a secret in {gateway.namespace}, the namespace the gateway pods run in" in problems[0]


def test_a_certificate_without_its_issuer_is_refused(rendered):
    docs = [
        doc for doc in rendered("dev") if not (doc["kind"] == "Issuer" and doc["metadata"]["name"] == "public-issuer")
    ]
    problems = invariants.certificates_have_issuers(docs, ingress_gateway())
    assert problems and "issuer Issuer public-issuer is not in this build" in problems[0]


@istio_api_only
def test_a_wildcard_gateway_host_is_refused(rendered):
    docs = rendered("dev")
    find(docs, "Gateway", "public-gateway")["spec"]["servers"][1]["hosts"] = ["*"]
    problems = invariants.hosts_are_exact(docs, ingress_gateway())
    assert len(problems) == 1 and "host '*' is a wildcard" in problems[0]


@istio_api_only
def test_plain_http_without_redirect_is_refused(rendered):
    docs = rendered("dev")
    assert invariants.gateways_serve_https_only(docs, ingress_gateway()) == []
    find(docs, "VirtualService", "public-routes")["spec"]["http"].pop(0)
    problems = invariants.gateways_serve_https_only(docs, ingress_gateway())
    assert len(problems) == 1 and "/ is not redirected to HTTPS" in problems[0]


@istio_api_only
def test_a_route_placed_before_the_redirect_is_refused(rendered):
    docs = rendered("dev")
    routes = find(docs, "VirtualService", "public-routes")["spec"]["http"]
    routes.insert(0, routes.pop(next(i for i, route in enumerate(routes) if route["name"].endswith("-api"))))
    api_prefix = routes[0]["match"][0]["uri"]["exact"]
    problems = invariants.gateways_serve_https_only(docs, ingress_gateway())
    assert len(problems) == 1 and f"{api_prefix} is not redirected to HTTPS" in problems[0]


@istio_api_only
def test_an_api_prefix_that_also_catches_lookalike_paths_is_refused(rendered):
    docs = rendered("dev")
    api_route = next(
        r for r in find(docs, "VirtualService", "public-routes")["spec"]["http"] if r["name"].endswith("-api")
    )
    exact = api_route["match"][0]["uri"]["exact"]
    api_route["match"] = [{"uri": {"prefix": exact}}]
    problems = invariants.path_prefixes_stop_at_a_segment(docs, ingress_gateway())
    assert problems == [
        f"VirtualService {app_namespace(docs)}/public-routes route {api_route['name']}: prefix {exact!r} also matches "
        f"{exact + 'ary'!r}; match exact {exact!r} plus prefix {exact + '/'!r}"
    ]


@gateway_api_only
def test_a_wildcard_listener_or_route_hostname_is_refused(rendered):
    docs = rendered("dev")
    the_gateway(docs)["spec"]["listeners"][1]["hostname"] = "*.example.com"
    the_gateway(docs)["spec"]["listeners"][0].pop("hostname")
    app_route(docs)["spec"]["hostnames"] = ["*.example.com"]
    problems = invariants.hosts_are_exact(docs, ingress_gateway())
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "hostname None is missing, so it serves every host; bind the app's own domain",
        "hostname '*.example.com' is a wildcard; bind the app's own domain",
        "hostname '*.example.com' is a wildcard; route the app's own domain",
    ]


@gateway_api_only
def test_routes_admitted_from_every_namespace_are_refused(rendered):
    docs = rendered("dev")
    assert invariants.listeners_admit_only_the_apps_routes(docs, ingress_gateway()) == []
    the_gateway(docs)["spec"]["listeners"][1]["allowedRoutes"]["namespaces"] = {"from": "All"}
    the_gateway(docs)["spec"]["listeners"][0]["allowedRoutes"].pop("kinds")
    problems = invariants.listeners_admit_only_the_apps_routes(docs, ingress_gateway())
    assert len(problems) == 2
    assert "listener http: allowedRoutes.kinds must be [HTTPRoute]" in problems[0]
    assert "listener https: allowedRoutes admit routes from All" in problems[1]


@gateway_api_only
def test_plain_http_served_by_an_app_route_on_port_80_is_refused(rendered):
    docs = rendered("dev")
    assert invariants.gateways_serve_https_only(docs, ingress_gateway()) == []
    app_route(docs)["spec"]["parentRefs"][0].pop("sectionName")
    the_gateway(docs)["spec"]["listeners"][0]["allowedRoutes"]["namespaces"] = {"from": "All"}
    problems = invariants.gateways_serve_https_only(docs, ingress_gateway())
    # "/" is matched as well by the redirect as by the app's route: the older route wins, which no build knows.
    assert len(problems) == 1 and "http://dev." in problems[0] and "/ is not redirected to HTTPS" in problems[0]
    assert "no build knows which is older" in problems[0]


@gateway_api_only
def test_a_gateway_the_settings_do_not_name_is_refused(rendered):
    docs = rendered("dev")
    the_gateway(docs)["metadata"]["name"] = "another-gateway"
    problems = invariants.gateways_select_the_installed_gateway(docs, ingress_gateway())
    assert len(problems) == 1 and "the policies admit only its identity" in problems[0]


def test_routing_the_api_to_a_backend_that_admits_only_the_frontend_is_refused(rendered):
    docs = rendered("dev")
    policy = backend_policy(docs)
    policy["spec"]["rules"] = policy["spec"]["rules"][1:]
    problems = invariants.gateway_routes_reach_admitting_workloads(docs, ingress_gateway())
    # Every API route names it, for the stable and the canary version alike.
    assert problems and all("so routed requests get 403" in problem for problem in problems)
    assert any(f"Service {app_namespace(docs)}/{policy['metadata']['name']}-canary" in p for p in problems)


def test_a_workload_on_the_default_service_account_is_refused(rendered):
    docs = rendered("dev")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"].pop("serviceAccountName")
    problems = invariants.workloads_have_own_identity(docs, ingress_gateway())
    assert problems == [
        f"Deployment {app_namespace(docs)}/{deployment['metadata']['name']}: set serviceAccountName to a ServiceAccount of its own"
    ]


def test_a_writable_root_filesystem_is_refused(rendered):
    docs = rendered("dev")
    container = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container.pop("livenessProbe")
    problems = invariants.workloads_are_hardened(docs, ingress_gateway())
    assert [p.split(": ", 1)[1] for p in problems] == ["set readOnlyRootFilesystem", "add a livenessProbe"]


def test_replicas_without_a_disruption_budget_are_refused(rendered):
    docs = rendered("dev")
    next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["replicas"] = 2
    assert (
        "2 replicas and no PodDisruptionBudget"
        in invariants.disruption_budgets_fit_replicas(docs, ingress_gateway())[0]
    )


def test_a_disruption_budget_on_a_single_replica_is_refused(rendered):
    docs = rendered("prod")
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = 1
    problems = invariants.disruption_budgets_fit_replicas(docs, ingress_gateway())
    assert problems and all("blocks node drains" in problem for problem in problems)


def test_a_service_port_without_protocol_is_refused(rendered):
    docs = rendered("dev")
    next(doc for doc in docs if doc["kind"] == "Service")["spec"]["ports"][0].pop("appProtocol")
    assert invariants.service_ports_declare_protocol(docs, ingress_gateway())


def test_a_service_whose_target_port_no_container_declares_is_refused(rendered):
    docs = rendered("dev")
    service = next(doc for doc in docs if doc["kind"] == "Service")
    service["spec"]["ports"][0]["targetPort"] = "metrics"
    problems = invariants.service_ports_reach_container_ports(docs, ingress_gateway())
    assert problems == [
        f"Service {app_namespace(docs)}/{service['metadata']['name']} port {service['spec']['ports'][0]['port']}: "
        "targetPort metrics is not a container port"
    ]


def test_a_namespace_without_default_deny_network_policy_is_refused(rendered):
    docs = [doc for doc in rendered("dev") if doc["metadata"]["name"] != "default-deny"]
    assert invariants.network_policies_fence_the_namespace(docs, ingress_gateway()) == [
        f"Namespace {app_namespace(docs)}: add a default-deny NetworkPolicy for Ingress and Egress"
    ]


def test_network_policies_that_cut_off_istiod_are_refused(rendered):
    docs = rendered("dev")
    egress = next(doc for doc in docs if doc["kind"] == "NetworkPolicy" and doc["spec"].get("egress"))
    egress["spec"]["egress"] = egress["spec"]["egress"][:2]
    problems = invariants.network_policies_fence_the_namespace(docs, ingress_gateway())
    assert problems == [f"Namespace {app_namespace(docs)}: no NetworkPolicy lets pods reach istiod (TCP 15012)"]
