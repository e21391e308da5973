"""The GitOps entry points (clusters/) and the rules for a first sync to converge: what is installed in which
order, what Argo CD will judge healthy and what it retries, and whether a certificate can be issued at all.

Argo CD's health checks for this repo are Lua scripts (clusters/argocd/settings/health/); they run here in
Lua 5.1, the language version of Argo CD's interpreter, against the objects the install really renders.
"""

import fnmatch
from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

from repo_tools import REPO_ROOT, charts, gateway_api, kustomize, load_yaml, read_yaml_documents, read_yaml_file
from repo_tools.layout import IngressGateway, ingress_gateway, overlays
from repo_tools.mesh import host_matches, string_match
from repo_tools.resources import Unmodelled, describe, namespace_of, of_kind

ARGOCD_SETTINGS = REPO_ROOT / "clusters" / "argocd" / "settings"
INFRASTRUCTURE = REPO_ROOT / "infrastructure"


def install_order() -> list[str]:
    """The parts every infrastructure overlay installs, in order: the Gateway API's CRDs first where they are
    used; the gateway chart where Istio's own API is."""
    parts = ["istio-base", "istio-cni", "istiod", "istio-gateway", "cert-manager"]
    if ingress_gateway().gateway_api:
        parts = ["gateway-api", *(part for part in parts if part != "istio-gateway")]
    return [f"../../{part}" for part in parts]


KIND_ONLY = "kind-node-ports"  # the e2e cluster's component
HIGH_AVAILABILITY = "gateway-high-availability"  # staging's and prod's component
SYNC_WAVE = "argocd.argoproj.io/sync-wave"
ISTIO_INGRESS_CONTROLLER = "istio.io/ingress-controller"
# cert-manager's HTTP-01 solver serves one exact path per token; Istio routes it as an exact path match.
CHALLENGE_PATH = "/.well-known/acme-challenge/token"
HEALTH_KEY_PREFIX = "resource.customizations.health."

# What Istio reports for a Gateway whose LoadBalancer Service waits for an address (gatewaycommon/conversion.go
# SetProgrammedCondition: reason AddressNotAssigned while every address is usable but pending).
ADDRESS_PENDING = {
    "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted"},
        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"},
        {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned", "message": "address pending"},
    ],
    "listeners": [{"name": "https", "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}]}],
}
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


def entry_point_paths(docs: list[dict]) -> list[tuple[str, str]]:
    """(resource, path in this repo) for every Argo CD Application and Flux Kustomization."""
    paths = []
    for doc in docs:
        if doc["kind"] == "Application":
            sources = doc["spec"].get("sources") or [doc["spec"].get("source", {})]
            paths += [
                (f"Application {doc['metadata']['name']}", source["path"]) for source in sources if "path" in source
            ]
        elif doc["kind"] == "Kustomization" and doc["apiVersion"].startswith("kustomize.toolkit.fluxcd.io/"):
            paths.append((f"Kustomization {doc['metadata']['name']}", doc["spec"]["path"]))
    return paths


def entry_point_problems(docs: list[dict]) -> list[str]:
    return [
        f"{resource}: path {path} is not a kustomization in this repo"
        for resource, path in entry_point_paths(docs)
        if not (REPO_ROOT / path / "kustomization.yaml").is_file()
    ]


def entry_point_documents(directory: Path) -> list[dict]:
    """What an environment's entry point (clusters/<tool>/<env>) applies: its kustomization and the nested one of
    the Applications (Argo CD), or the files Flux reads (Flux itself generates their kustomization.yaml)."""
    if not (directory / "kustomization.yaml").is_file():
        return [doc for path in sorted(directory.glob("*.yaml")) for doc in read_yaml_documents(path) if doc]
    return [doc for kustomization in entry_point_kustomizations(directory) for doc in kustomize.build(kustomization)]


def entry_point_kustomizations(directory: Path) -> list[Path]:
    """The kustomizations an Argo CD entry point builds: its own and the nested one of the Applications."""
    nested = sorted(path.parent for path in directory.glob("*/kustomization.yaml"))
    return [directory, *nested] if (directory / "kustomization.yaml").is_file() else []


def environments(tool: str) -> list[str]:
    """The environments with an entry point for this GitOps tool: every apps overlay that has one."""
    return [name for name in overlays() if (REPO_ROOT / "clusters" / tool / name).is_dir()]


def argocd_entry_points(environment: str) -> list[dict]:
    return entry_point_documents(REPO_ROOT / "clusters" / "argocd" / environment)


def install_order_problems(apps_overlays: list[str]) -> list[str]:
    """Every environment installs the mesh in order, and has both an infrastructure and an apps overlay."""
    overlays_dir = REPO_ROOT / "infrastructure" / "overlays"
    infrastructure = sorted(path.parent.name for path in overlays_dir.glob("*/kustomization.yaml"))
    problems = [
        f"infrastructure/overlays/{name}: there is no apps/overlays/{name}, or the reverse"
        for name in sorted(set(infrastructure) ^ set(apps_overlays))
    ]
    order = install_order()
    for name in infrastructure:
        kustomization = read_yaml_file(overlays_dir / name / "kustomization.yaml")
        if kustomization.get("resources", []) != order:
            problems.append(f"infrastructure/overlays/{name}: resources must be {order}, in this order")
        if name != "e2e" and KIND_ONLY in environment_components(name):
            problems.append(
                f"{name}: {KIND_ONLY} opens the gateway on fixed ports of every node; it is for the e2e cluster only"
            )
    return problems


def argocd_order_problems(docs: list[dict], environment: str) -> list[str]:
    """The root syncs the mesh before the app, from this repo only, in this environment's paths, and retries."""
    problems = entry_point_problems(docs) + automated_applications_retry(docs) + destinations_allowed(docs)
    projects = [doc["metadata"]["name"] for doc in of_kind(docs, "AppProject")]
    sources = {repo for doc in of_kind(docs, "AppProject") for repo in doc["spec"].get("sourceRepos", [])}
    waves = {}
    for app in of_kind(docs, "Application"):
        source = app["spec"].get("source", {})
        waves[source.get("path", "")] = int((app["metadata"].get("annotations") or {}).get(SYNC_WAVE, "0"))
        if app["spec"].get("project") not in projects or source.get("repoURL") not in sources:
            problems.append(f"{describe(app)}: must belong to this repo's AppProject and pull only from its repo")
        if (app["spec"].get("syncPolicy") or {}).get("automated") != {"prune": True, "selfHeal": True}:
            problems.append(f"{describe(app)}: syncPolicy.automated must prune and selfHeal")
    expected = {
        f"clusters/argocd/{environment}/applications",
        *(f"{layer}/overlays/{environment}" for layer in ("infrastructure", "apps")),
    }
    if set(waves) != expected:
        problems.append(
            f"clusters/argocd/{environment}: Applications must sync {sorted(expected)}, not {sorted(waves)}"
        )
    elif waves[f"infrastructure/overlays/{environment}"] >= waves[f"apps/overlays/{environment}"]:
        problems.append(f"clusters/argocd/{environment}: the infrastructure must sync in an earlier wave than the apps")
    return problems


def destinations_allowed(docs: list[dict]) -> list[str]:
    """Argo CD refuses an Application whose own destination its AppProject does not list, and never syncs it."""
    projects = {doc["metadata"]["name"]: doc["spec"].get("destinations", []) for doc in of_kind(docs, "AppProject")}
    problems = []
    for app in of_kind(docs, "Application"):
        destination = app["spec"].get("destination", {})
        server, namespace = destination.get("server", ""), destination.get("namespace", "")
        allowed = projects.get(app["spec"].get("project"), [])
        if not any(
            fnmatch.fnmatchcase(server, entry.get("server", ""))
            and fnmatch.fnmatchcase(namespace, entry.get("namespace", ""))
            for entry in allowed
        ):
            problems.append(
                f"{describe(app)}: destination {server} namespace {namespace!r} is not one its AppProject allows; "
                "Argo CD would refuse it and the root would wait for it for ever"
            )
    return problems


def flux_order_problems(docs: list[dict], environment: str) -> list[str]:
    """Flux installs the mesh, waits for it, then applies this environment's apps overlay."""
    problems = entry_point_problems(docs)
    by_name = {doc["metadata"]["name"]: doc["spec"] for doc in docs if doc["kind"] == "Kustomization"}
    apps, infrastructure = by_name.get("apps", {}), by_name.get("infrastructure", {})
    if apps.get("dependsOn") != [{"name": "infrastructure"}]:
        problems.append(f"clusters/flux/{environment}/apps.yaml: must dependOn infrastructure")
    if not (apps.get("wait") and infrastructure.get("wait")):
        problems.append(f"clusters/flux/{environment}: both Kustomizations must wait for their resources")
    if apps.get("path") != f"./apps/overlays/{environment}":
        problems.append(f"clusters/flux/{environment}/apps.yaml: path must be ./apps/overlays/{environment}")
    return problems


def overlay_components(environment: str) -> list[str]:
    """The components infrastructure/overlays/<env> lists, by name."""
    kustomization = read_yaml_file(INFRASTRUCTURE / "overlays" / environment / "kustomization.yaml")
    return [Path(component).name for component in kustomization.get("components") or []]


def environment_components(environment: str) -> list[str]:
    """The components an environment applies in either layer, by name: the gateway's own are in the install
    layer with Istio's API, and in the apps layer with the Gateway API (they shape the Gateway's options)."""
    apps = REPO_ROOT / "apps" / "overlays" / environment / "kustomization.yaml"
    kustomization = read_yaml_file(apps) if apps.is_file() else {}  # a missing overlay is install_order_problems'
    return overlay_components(environment) + [Path(c).name for c in kustomization.get("components") or []]


def flux_install(components: list[str], infrastructure: Path = INFRASTRUCTURE) -> list[dict]:
    """What Flux's infrastructure Kustomization builds: infrastructure/, with the components it lists applied (less
    the Gateway API's CRDs where they can be had nowhere: these checks read the HelmReleases and the schemas)."""
    with charts.infrastructure_copy(infrastructure.parent, helm_free=True) as copy:
        kustomization = {"resources": ["infrastructure"], "components": [f"infrastructure/{c}" for c in components]}
        (copy.parent / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize.build(copy.parent)


def flux_listed_components(docs: list[dict]) -> list[str]:
    """The components Flux's infrastructure Kustomization of an environment applies, relative to infrastructure/."""
    infrastructure: dict = next(
        (doc["spec"] for doc in docs if doc["kind"] == "Kustomization" and doc["metadata"]["name"] == "infrastructure"),
        {},
    )
    return list(infrastructure.get("components") or [])


def flux_components_problems(docs: list[dict], environment: str) -> list[str]:
    """Flux installs an environment with the same components as infrastructure/overlays/<env>."""
    listed = [Path(component).name for component in flux_listed_components(docs)]
    wanted = overlay_components(environment)
    if listed != wanted:
        return [
            f"clusters/flux/{environment}/infrastructure.yaml: components {listed}, but "
            f"infrastructure/overlays/{environment} lists {wanted}"
        ]
    return [
        f"clusters/flux/{environment}/infrastructure.yaml: component {component} is not in infrastructure/flux/components"
        for component in flux_listed_components(docs)
        if not (INFRASTRUCTURE / component / "kustomization.yaml").is_file()
    ]


def high_availability_settings(infrastructure: Path = INFRASTRUCTURE) -> dict:
    """The gateway's high-availability settings as the kustomize component writes them, in the chart's terms."""
    component = infrastructure / "components" / HIGH_AVAILABILITY
    hpa = next(
        load_yaml(entry["patch"])
        for entry in read_yaml_file(component / "kustomization.yaml").get("patches", [])
        if "HorizontalPodAutoscaler" in entry.get("patch", "")
    )
    budget = read_yaml_file(component / "pod-disruption-budget.yaml")["spec"]
    return {
        "autoscaling": {"minReplicas": hpa["spec"]["minReplicas"]},
        "podDisruptionBudget": {key: value for key, value in budget.items() if key != "selector"},
    }


def patch_documents(component: Path) -> list[dict]:
    """The patches a kustomize component applies from files, as documents."""
    return [
        read_yaml_file(component / entry["path"])
        for entry in read_yaml_file(component / "kustomization.yaml").get("patches", [])
        if "path" in entry
    ]


def flux_twins_problems(gateway: IngressGateway, infrastructure: Path = INFRASTRUCTURE) -> list[str]:
    """Each Flux component makes the gateway's HelmRelease install what its kustomize twin makes of the chart:
    chart values where the chart has them (high availability), else the very patches, applied after rendering."""
    problems = []
    components = infrastructure / "flux" / "components"
    for component in sorted(path.name for path in components.glob("*") if path.is_dir()):
        where = f"infrastructure/flux/components/{component}"
        twin = infrastructure / "components" / component
        if not twin.is_dir():
            problems.append(f"{where}: there is no infrastructure/components/{component} for the kustomize path")
            continue
        if read_yaml_file(components / component / "kustomization.yaml").get("components") == [
            f"../../../components/{component}"
        ]:
            continue  # it applies its twin itself (plain manifests, no chart to patch): nothing to compare
        release = next(
            (
                doc["spec"]
                for doc in flux_install([f"flux/components/{component}"], infrastructure)
                if doc["kind"] == "HelmRelease" and doc["metadata"]["name"] == gateway.service_account
            ),
            None,
        )
        if release is None:
            problems.append(f"{where}: the build has no HelmRelease {gateway.service_account}, the gateway's release")
            continue
        values = release.get("values") or {}
        wanted_values = high_availability_settings(infrastructure) if component == HIGH_AVAILABILITY else {}
        if values != wanted_values:
            problems.append(
                f"{where}: sets the gateway's values {values}; infrastructure/components/{component} means {wanted_values}"
            )
        patches = [
            load_yaml(patch["patch"])
            for renderer in release.get("postRenderers") or []
            for patch in renderer.get("kustomize", {}).get("patches", [])
        ]
        if patches != patch_documents(twin):
            problems.append(
                f"{where}: post-renders {patches}, not the patches of infrastructure/components/{component}"
            )
    return problems


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
    # Argo CD opens only the base, package and table libraries (and a safe os) for health checks.
    runtime.execute("string, io, debug, coroutine, math = nil, nil, nil, nil, nil")
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
    """Every autoscaler, LoadBalancer Service and Gateway (of the install or the apps layer) is Healthy on a
    cluster with neither metrics-server nor a load-balancer provider."""
    problems = []
    waiting = [with_status(doc, WITHOUT_METRICS) for doc in of_kind(infrastructure, "HorizontalPodAutoscaler")]
    waiting += [with_status(doc, {"loadBalancer": {}}) for doc in of_kind(infrastructure, "Service")]
    waiting += [
        with_status(doc, ADDRESS_PENDING)
        for doc in of_kind(infrastructure, "Gateway")
        if doc["apiVersion"].startswith(f"{gateway_api.GROUP}/")
    ]
    for doc in waiting:
        script = settings.get(health_key(doc["apiVersion"], doc["kind"]))
        if script is None:
            if doc["kind"] in ("HorizontalPodAutoscaler", "Gateway") or doc["spec"].get("type") == "LoadBalancer":
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
            route_solver = (solver.get("http01") or {}).get("gatewayHTTPRoute")
            if route_solver is not None:
                problems += [
                    f"{describe(issuer)}: {problem}"
                    for host in issued_hosts(apps, issuer)
                    for problem in challenge_route_problems(apps, issuer, route_solver, host, gateway)
                ]
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


def challenge_route_problems(
    apps: list[dict], issuer: dict, solver: dict, host: str, gateway: IngressGateway
) -> list[str]:
    """The HTTPRoute cert-manager adds for a challenge (pkg/issuer/acme/http/httproute.go: in the Certificate's
    namespace, the solver's parentRefs, an Exact match on the token's path, the solver Service on 8089) must
    win http://<host>/.well-known/acme-challenge/<token> on the gateway."""
    namespace = next(
        (namespace_of(cert) for cert in of_kind(apps, "Certificate") if host in cert["spec"].get("dnsNames", [])),
        namespace_of(issuer),
    )
    challenge = {
        "apiVersion": f"{gateway_api.GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "cm-acme-http-solver", "namespace": namespace},
        "spec": {
            "parentRefs": solver.get("parentRefs") or [],
            "hostnames": [host],
            "rules": [
                {
                    "matches": [{"path": {"type": "Exact", "value": CHALLENGE_PATH}}],
                    "backendRefs": [{"name": "cm-acme-http-solver", "namespace": namespace, "port": 8089}],
                }
            ],
        },
    }
    try:
        answer = gateway_api.route([*apps, challenge], gateway, "http", host, CHALLENGE_PATH, "GET")
    except Unmodelled as unmodelled:
        return [f"cannot tell whether the challenge route answers http://{host}{CHALLENGE_PATH}: {unmodelled}"]
    if isinstance(answer, gateway_api.Routed) and answer.services == (f"cm-acme-http-solver.{namespace}",):
        return []
    return [
        f"the route cert-manager adds in {namespace} would not answer http://{host}{CHALLENGE_PATH}: "
        f"{answer.because}; name the Gateway's port-80 listener in the solver's parentRefs and let that listener "
        f"admit routes from {namespace}"
    ]


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
