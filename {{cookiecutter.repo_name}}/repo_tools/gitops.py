"""Rules for the first GitOps sync to converge: what Argo CD will judge healthy, and what it retries.

Argo CD's health checks for this repo are Lua scripts (clusters/argocd/settings/health/); they run here in
Lua 5.1, the language version of Argo CD's interpreter, against the objects the install really renders.
"""

from pathlib import Path
from typing import Any

from lupa import lua51

from repo_tools import REPO_ROOT, kustomize
from repo_tools.install import Chart
from repo_tools.invariants import of_kind
from repo_tools.layout import IngressGateway
from repo_tools.mesh import host_matches, string_match
from repo_tools.schemas import describe

ARGOCD_SETTINGS = REPO_ROOT / "clusters" / "argocd" / "settings"
ISTIO_INGRESS_CONTROLLER = "istio.io/ingress-controller"
# cert-manager's HTTP-01 solver serves one exact path per token; Istio routes it as an exact path match.
CHALLENGE_PATH = "/.well-known/acme-challenge/token"
HEALTH_KEY_PREFIX = "resource.customizations.health."

# What the HorizontalPodAutoscaler controller reports where no metrics API is served (kind, bare kubeadm).
WITHOUT_METRICS = {
    "currentReplicas": 1,
    "desiredReplicas": 1,
    "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
        {
            "type": "ScalingActive",
            "status": "False",
            "reason": "FailedGetResourceMetric",
            "message": "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to "
            "get metrics for resource cpu: unable to fetch metrics from resource metrics API: the server could "
            "not find the requested resource (get pods.metrics.k8s.io)",
        },
    ],
}
# A child Application between two sync waves: its resources exist only in part.
BETWEEN_WAVES = {
    "sync": {"status": "OutOfSync"},
    "health": {"status": "Healthy"},
    "operationState": {"phase": "Running", "message": "waiting for completion of hook and 3 more resources"},
}


def argocd_settings(directory: Path = ARGOCD_SETTINGS) -> dict[str, str]:
    """The data of the argocd-cm ConfigMap this repo applies."""
    docs = kustomize.build(directory)
    return next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "argocd-cm")["data"]


def health_key(api_version: str, kind: str) -> str:
    """argocd-cm key of a health check: group_Kind, or Kind alone for the core group."""
    group = api_version.rpartition("/")[0]
    return f"{HEALTH_KEY_PREFIX}{group}_{kind}" if group else f"{HEALTH_KEY_PREFIX}{kind}"


def lua_health(script: str, obj: dict) -> tuple[str, str]:
    """(status, message) of a health script, run as Argo CD runs it: `obj` global, a table returned."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result: Any = runtime.execute(script)
    return str(result["status"]), str(result["message"] or "")


def with_status(doc: dict, status: dict) -> dict:
    return doc | {"status": status}


def automated_applications_retry(docs: list[dict]) -> list[str]:
    """An automated Application without retry stops at the first failed sync of a commit, for good."""
    problems = []
    for app in of_kind(docs, "Application"):
        policy = app["spec"].get("syncPolicy") or {}
        retry = policy.get("retry") or {}
        if "automated" in policy and (int(retry.get("limit", 0)) < 1 or "backoff" not in retry):
            problems.append(
                f"{describe(app)}: syncs automatically but has no syncPolicy.retry with a limit and a backoff; "
                "one failed sync (a webhook not serving yet) would stop it on that commit"
            )
    return problems


def child_applications_wait_for_their_sync(settings: dict[str, str]) -> list[str]:
    script = settings.get(health_key("argoproj.io/v1alpha1", "Application"))
    if script is None:
        return ["argocd-cm has no health check for Applications: the root would not wait for each sync wave"]
    status, _ = lua_health(script, {"kind": "Application", "status": BETWEEN_WAVES})
    if status == "Healthy":
        return ["the Application health check reads Healthy between two sync waves: the next wave would start early"]
    return []


def install_settles_without_metrics_or_load_balancer(settings: dict[str, str], infrastructure: list[dict]) -> list[str]:
    """Every autoscaler and LoadBalancer Service of the install is Healthy on a cluster with neither."""
    problems = []
    waiting = [with_status(doc, WITHOUT_METRICS) for doc in of_kind(infrastructure, "HorizontalPodAutoscaler")]
    waiting += [with_status(doc, {"loadBalancer": {}}) for doc in of_kind(infrastructure, "Service")]
    for doc in waiting:
        script = settings.get(health_key(doc["apiVersion"], doc["kind"]))
        if script is None:
            if doc["kind"] == "HorizontalPodAutoscaler" or doc["spec"].get("type") == "LoadBalancer":
                problems.append(
                    f"{describe(doc)}: argocd-cm has no health check for {doc['kind']}; Argo CD's own reads it "
                    "Degraded without metrics-server or Progressing without a load-balancer provider"
                )
            continue
        status, message = lua_health(script, doc)
        if status != "Healthy":
            problems.append(
                f"{describe(doc)}: reads {status} ({message}) without metrics-server or a load-balancer provider, "
                "and would hold the sync waves back"
            )
    return problems


def webhook_failure_policy_is_fixed(charts: list[Chart]) -> list[str]:
    """Istio's notes for `helm template` with server-side apply: pin the validating webhook to Fail."""
    return [
        f"{chart.values_file.relative_to(chart.directory.parent.parent)}: set base.validationFailurePolicy: Fail; "
        "otherwise every sync sets the webhook back to Ignore and istiod flips it to Fail again"
        for chart in charts
        if chart.name in ("base", "istiod")
        and (chart.values.get("base") or {}).get("validationFailurePolicy") != "Fail"
    ]


def ingress_gateway_label(mesh_config: dict) -> str:
    """The `istio` label of the pods istiod sends Ingress traffic through (pilot/pkg/config/kube/ingress)."""
    service = mesh_config.get("ingressService", "istio-ingressgateway")
    if mesh_config.get("ingressSelector"):
        return str(mesh_config["ingressSelector"])
    return service if service not in ("", "istio-ingressgateway") else "ingressgateway"


def acme_http01_challenges_are_served(
    apps: list[dict], install_resources: list[dict], mesh_config: dict, gateway: IngressGateway
) -> list[str]:
    """Every ACME HTTP-01 solver Ingress is one istiod serves, through the gateway, on plain HTTP, unshadowed."""
    problems = []
    classes = {
        doc["metadata"]["name"]: doc["spec"].get("controller") for doc in of_kind(install_resources, "IngressClass")
    }
    for issuer in of_kind(apps, "Issuer", "ClusterIssuer"):
        for solver in (issuer["spec"].get("acme") or {}).get("solvers", []):
            ingress = (solver.get("http01") or {}).get("ingress")
            if ingress is None:
                continue
            if "ingressClassName" in ingress and classes.get(ingress["ingressClassName"]) != ISTIO_INGRESS_CONTROLLER:
                problems.append(
                    f"{describe(issuer)}: its solver Ingresses name IngressClass {ingress['ingressClassName']!r}, which "
                    f"the install does not create with controller {ISTIO_INGRESS_CONTROLLER}: istiod ignores them"
                )
            if "class" in ingress and ingress["class"] != mesh_config.get("ingressClass", "istio"):
                problems.append(f"{describe(issuer)}: solver class {ingress['class']!r} is not istiod's ingressClass")
            if ingress_gateway_label(mesh_config) != gateway.istio_label:
                problems.append(
                    f"{describe(issuer)}: istiod serves Ingresses on the pods labelled "
                    f"istio={ingress_gateway_label(mesh_config)}, not the gateway's istio={gateway.istio_label}; "
                    "set meshConfig.ingressSelector in infrastructure/istiod/values.yaml"
                )
            for host in issued_hosts(apps, issuer):
                problems += [f"{describe(issuer)}: {problem}" for problem in challenge_path_problems(apps, host)]
    return problems


def issued_hosts(apps: list[dict], issuer: dict) -> list[str]:
    return [
        host
        for certificate in of_kind(apps, "Certificate")
        if certificate["spec"].get("issuerRef", {}).get("name") == issuer["metadata"]["name"]
        and certificate["spec"].get("issuerRef", {}).get("kind", "Issuer") == issuer["kind"]
        for host in certificate["spec"].get("dnsNames", [])
    ]


def challenge_path_problems(apps: list[dict], host: str) -> list[str]:
    """Istio merges every port-80 route for a host into one virtual host: a redirect there, or a specific route
    matching the challenge path, answers the CA before the solver does (catch-all routes are sorted last)."""
    problems = []
    for gw in of_kind(apps, "Gateway"):
        for server in gw["spec"].get("servers", []):
            if (
                server["port"]["number"] == 80
                and (server.get("tls") or {}).get("httpsRedirect")
                and any(host_matches(pattern.split("/")[-1], host) for pattern in server.get("hosts", []))
            ):
                problems.append(
                    f"{describe(gw)} redirects all of http://{host} to HTTPS (tls.httpsRedirect), the HTTP-01 "
                    "challenge included: redirect in a VirtualService route matching only the port instead"
                )
    for vs in of_kind(apps, "VirtualService"):
        if not any(host_matches(pattern, host) for pattern in vs["spec"].get("hosts", [])):
            continue
        for index, rule in enumerate(vs["spec"].get("http", [])):
            for condition in rule.get("match") or []:
                uri = condition.get("uri") or {}
                catch_all = set(condition) <= {"port", "name"} or (
                    set(condition) <= {"port", "name", "uri"} and uri == {"prefix": "/"}
                )
                if condition.get("port", 80) == 80 and not catch_all and string_match(uri, CHALLENGE_PATH):
                    problems.append(
                        f"{describe(vs)} route {rule.get('name') or index + 1} matches {CHALLENGE_PATH} on port 80 "
                        "and may answer before the ACME solver"
                    )
    return problems
