"""The first GitOps sync converges: certificates can be issued, Argo CD's health checks reflect real readiness
(run in Lua 5.1 as Argo CD runs them), every automated Application retries, Istio's webhook stays put."""

import copy

import pytest
from conftest import built, find, gateway_api_only, istio_api_only, made_once, the_gateway

from repo_tools import REPO_ROOT, gitops, install, kustomize, layout

pytestmark = pytest.mark.database_independent

TOOL = install.gitops_tool()
argocd_only = pytest.mark.skipif(TOOL != "argocd", reason="this repo syncs with Flux")
ACME_OVERLAYS = [
    name for name in layout.overlays() if any(doc["kind"] == "Issuer" and "acme" in doc["spec"] for doc in built(name))
]
MESH_CONFIG = install.chart("istiod").values.get("meshConfig") or {}


def challenges(docs: list[dict], gateway, resources=None, mesh_config=None) -> list[str]:
    return gitops.acme_http01_challenges_are_served(
        docs,
        install.plain_resources() if resources is None else resources,
        MESH_CONFIG if mesh_config is None else mesh_config,
        gateway,
    )


# --- ACME HTTP-01 through the gateway ------------------------------------------------------------


def test_staging_and_prod_ask_for_certificates_over_acme():
    assert {"staging", "prod"} <= set(ACME_OVERLAYS)


@pytest.mark.parametrize("overlay", ACME_OVERLAYS)
def test_the_acme_challenge_reaches_the_solver_istio_serves(rendered, gateway, overlay):
    assert challenges(rendered(overlay), gateway) == []


@istio_api_only
def test_a_solver_class_nobody_creates_is_caught(rendered, gateway):
    without_class = [doc for doc in install.plain_resources() if doc["kind"] != "IngressClass"]
    problems = challenges(rendered("staging"), gateway, resources=without_class)
    assert len(problems) == 1 and "name IngressClass 'istio', which the install does not create" in problems[0]


@istio_api_only
def test_an_https_redirect_on_the_gateway_swallowing_the_challenge_is_caught(rendered, gateway):
    docs = rendered("staging")
    find(docs, "Gateway", "public-gateway")["spec"]["servers"][0]["tls"] = {"httpsRedirect": True}
    problems = challenges(docs, gateway)
    assert len(problems) == 1 and "the HTTP-01 challenge included" in problems[0]


@istio_api_only
def test_a_specific_route_answering_the_challenge_path_first_is_caught(rendered, gateway):
    docs = rendered("staging")
    routes = find(docs, "VirtualService", "public-routes")["spec"]["http"]
    routes.insert(0, {"name": "well-known", "match": [{"uri": {"prefix": "/.well-known/"}}], **routes[-1]})
    routes[0].pop("name")
    problems = challenges(docs, gateway)
    assert len(problems) == 1 and "matches /.well-known/acme-challenge/token on port 80" in problems[0]


@istio_api_only
def test_istio_serving_ingresses_on_other_pods_is_caught(rendered, gateway):
    problems = challenges(rendered("staging"), gateway, mesh_config={"ingressSelector": "other"})
    assert len(problems) == 1 and "labelled istio=other, not the gateway's" in problems[0]


@gateway_api_only
def test_a_port_80_listener_that_does_not_admit_the_challenge_route_is_caught(rendered, gateway):
    docs = rendered("staging")
    listener = the_gateway(docs)["spec"]["listeners"][0]
    listener["allowedRoutes"] = the_gateway(docs)["spec"]["listeners"][1]["allowedRoutes"]
    problems = challenges(docs, gateway)
    assert len(problems) == 1 and f"the route cert-manager adds in {gateway.namespace} would not answer" in problems[0]
    assert "no HTTPRoute attached to Gateway" in problems[0]


@gateway_api_only
def test_a_solver_attached_to_the_https_listener_is_caught(rendered, gateway):
    docs = rendered("staging")
    issuer = next(doc for doc in docs if doc["kind"] == "Issuer" and "acme" in doc["spec"])
    issuer["spec"]["acme"]["solvers"][0]["http01"]["gatewayHTTPRoute"]["parentRefs"][0]["sectionName"] = "https"
    problems = challenges(docs, gateway)
    assert len(problems) == 1 and "/.well-known/acme-challenge/token: Gateway" in problems[0]


# --- Istio's validating webhook ------------------------------------------------------------------


def test_istios_webhook_failure_policy_is_pinned_to_fail():
    assert install.webhook_failure_policy_is_fixed(install.charts()) == []
    base = install.chart("base")
    unpinned = install.Chart(**{**base.__dict__, "values": {"defaultRevision": "default"}})
    problems = install.webhook_failure_policy_is_fixed([unpinned])
    assert (
        len(problems) == 1 and "infrastructure/istio-base/values.yaml: set base.validationFailurePolicy" in problems[0]
    )


# --- Argo CD: health checks in Lua, retries ------------------------------------------------------


def health(kind: str, obj: dict) -> tuple[str, str]:
    api_version = {
        "Application": "argoproj.io/v1alpha1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "Gateway": "gateway.networking.k8s.io/v1",
    }.get(kind, "v1")
    settings = made_once("argocd settings", gitops.argocd_settings)
    return gitops.lua_health(settings[gitops.health_key(api_version, kind)], obj)


def application(sync: str, health_status: str, phase: str | None) -> dict:
    status: dict = {"sync": {"status": sync}, "health": {"status": health_status}}
    if phase:
        status["operationState"] = {"phase": phase, "message": "..."}
    return {"kind": "Application", "status": status}


@argocd_only
@pytest.mark.parametrize(
    ("sync", "health_status", "phase", "expected"),
    [
        ("Synced", "Healthy", "Succeeded", "Healthy"),
        ("Synced", "Healthy", None, "Healthy"),
        ("OutOfSync", "Healthy", "Running", "Progressing"),  # between two waves
        ("OutOfSync", "Healthy", None, "Progressing"),  # resources not created yet count as Healthy since 3.4
        ("Synced", "Progressing", "Succeeded", "Progressing"),
        ("Synced", "Degraded", "Succeeded", "Degraded"),
        ("OutOfSync", "Missing", "Failed", "Degraded"),
    ],
)
def test_a_child_application_is_healthy_only_once_synced_and_its_sync_succeeded(sync, health_status, phase, expected):
    assert health("Application", application(sync, health_status, phase))[0] == expected


@argocd_only
def test_an_application_with_no_status_yet_is_progressing():
    assert health("Application", {"kind": "Application"}) == ("Progressing", "waiting for the first sync")


@argocd_only
def test_a_health_check_reading_only_status_health_is_caught():
    health_only = 'hs = {status = "Progressing"}\nif obj.status ~= nil and obj.status.health ~= nil then\n'
    health_only += "  hs.status = obj.status.health.status\nend\nreturn hs\n"
    key = gitops.health_key("argoproj.io/v1alpha1", "Application")
    assert gitops.child_applications_wait_for_their_sync(gitops.argocd_settings()) == []
    problems = gitops.child_applications_wait_for_their_sync({key: health_only})
    assert problems == [
        "the Application health check reads Healthy between two sync waves: the next wave would start early"
    ]


@argocd_only
def test_an_autoscaler_without_metrics_server_is_healthy_and_says_why():
    autoscaler = {"kind": "HorizontalPodAutoscaler", "status": gitops.WITHOUT_METRICS}
    status, message = health("HorizontalPodAutoscaler", autoscaler)
    assert status == "Healthy" and "FailedGetResourceMetric" in message and "metrics-server" in message


@argocd_only
def test_an_autoscaler_that_cannot_reach_its_target_is_degraded():
    conditions = [{"type": "AbleToScale", "status": "False", "reason": "FailedGetScale", "message": "not found"}]
    status, message = health("HorizontalPodAutoscaler", {"status": {"conditions": conditions}})
    assert (status, message) == ("Degraded", "FailedGetScale: not found")
    assert health("HorizontalPodAutoscaler", {"status": {}})[0] == "Progressing"


@argocd_only
def test_only_a_load_balancer_marked_optional_is_healthy_without_an_address():
    annotation = next(
        line.split('"')[1]
        for line in gitops.argocd_settings()["resource.customizations.health.Service"].splitlines()
        if "load-balancer-address" in line and "annotations[" in line
    )
    service = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}
    assert health("Service", service)[0] == "Progressing"
    assert health("Service", {**service, "metadata": {"annotations": {annotation: "optional"}}})[0] == "Healthy"
    assert (
        health("Service", {**service, "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}})[0] == "Healthy"
    )
    assert health("Service", {"spec": {"type": "ClusterIP"}}) == ("Healthy", "")


@argocd_only
@gateway_api_only
def test_a_gateway_is_healthy_once_accepted_resolved_and_programmed_or_only_its_optional_address_is_missing(rendered):
    gateway = the_gateway(rendered("dev"))
    key = "Gateway"
    assert health(key, gateway)[0] == "Progressing"  # no status yet
    assert health(key, gitops.with_status(gateway, gitops.ADDRESS_PENDING)) == (
        "Healthy",
        "accepted, references resolved, programmed",
    )
    not_optional = copy.deepcopy(gateway)
    not_optional["metadata"].pop("annotations")
    assert health(key, gitops.with_status(not_optional, gitops.ADDRESS_PENDING)) == ("Progressing", "address pending")
    secret_missing = copy.deepcopy(gitops.ADDRESS_PENDING)
    secret_missing["listeners"][0]["conditions"].append(
        {"type": "ResolvedRefs", "status": "False", "reason": "InvalidCertificateRef", "message": "secret not found"}
    )
    assert health(key, gitops.with_status(gateway, secret_missing)) == (
        "Progressing",
        "listener https: waiting for the TLS secret: secret not found",
    )
    secret_missing["listeners"][0]["conditions"][-1]["reason"] = "RefNotPermitted"
    assert health(key, gitops.with_status(gateway, secret_missing)) == ("Degraded", "listener https: secret not found")


@argocd_only
@gateway_api_only
def test_an_apps_gateway_without_the_optional_address_would_never_read_healthy(rendered):
    settings = gitops.argocd_settings()
    docs = rendered("dev")
    assert gitops.install_settles_without_metrics_or_load_balancer(settings, docs) == []
    the_gateway(docs)["metadata"].pop("annotations")
    problems = gitops.install_settles_without_metrics_or_load_balancer(settings, docs)
    assert len(problems) == 1 and problems[0].startswith(f"Gateway {the_gateway(docs)['metadata']['namespace']}/")


@argocd_only
def test_an_automated_application_without_retry_is_caught():
    root = kustomize.build(REPO_ROOT / "clusters" / "argocd" / "dev")
    assert gitops.automated_applications_retry(root) == []
    broken = copy.deepcopy(root)
    next(doc for doc in broken if doc["kind"] == "Application")["spec"]["syncPolicy"].pop("retry")
    problems = gitops.automated_applications_retry(broken)
    assert len(problems) == 1 and "has no syncPolicy.retry with a limit and a backoff" in problems[0]
