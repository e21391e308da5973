"""The install as the e2e run stages it, and what the run relies on in the rendered install: the node ports kind
maps, the workloads each stage waits for, and CPU requests a 2-vCPU runner holds. Free of the cluster tooling, so
that python -m repo_tools can check it cheaply."""

from dataclasses import dataclass

from e2e.harness import acme, budget, capacity, scenarios
from e2e.harness.settings import Settings, e2e_build
from repo_tools import contract, install, rendered_install

RELEASE_LABELS = ("app.kubernetes.io/instance", "release")  # Helm charts mark what they render with one of these


@dataclass(frozen=True)
class Stage:
    """One step of the install: the Helm releases it applies and the Deployments and DaemonSets it waits for."""

    name: str
    releases: tuple[str, ...]
    namespace: str
    deployments: tuple[str, ...]
    daemonsets: tuple[str, ...] = ()


def install_stages(settings: Settings) -> list[Stage]:
    """Istio base, its CNI node agent and istiod (then wait for both), the gateway chart (Istio's own API), then
    cert-manager and its webhook. Objects without a chart (the Gateway API's CRDs) go with the first stage.

    Workload names follow each chart: istiod's is `istiod`, the CNI agent's DaemonSet `istio-cni-node`, the gateway's
    is its release name, and cert-manager's are the release name with -webhook and -cainjector (checked against the
    rendered charts).
    """
    base, cni, istiod = install.chart("base"), install.chart("cni"), install.chart("istiod")
    certs = install.chart("cert-manager")
    gateway_stage = (
        []
        if settings.gateway.gateway_api  # istiod deploys it once the apps layer's Gateway exists
        else [Stage("the ingress gateway", (gateway_release(),), settings.gateway.namespace, (gateway_release(),))]
    )
    return [
        Stage(
            "Istio base, its CNI node agent and istiod",
            (base.release, cni.release, istiod.release),
            istiod.namespace,
            ("istiod",),
            ("istio-cni-node",),
        ),
        *gateway_stage,
        Stage(
            "cert-manager and its webhook",
            (certs.release,),
            certs.namespace,
            (certs.release, f"{certs.release}-webhook", f"{certs.release}-cainjector"),
        ),
    ]


def gateway_release() -> str:
    return install.chart("gateway").release


def split_by_stage(docs: list[dict], stages: list[Stage]) -> list[list[dict]]:
    """The rendered install, one list per stage; Namespaces and other unlabelled objects go first."""
    split: list[list[dict]] = [[] for _ in stages]
    for doc in docs:
        labels = doc.get("metadata", {}).get("labels") or {}
        release = next((labels[key] for key in RELEASE_LABELS if key in labels), None)
        index = next((i for i, stage in enumerate(stages) if release in stage.releases), None)
        if release is not None and index is None:
            raise ValueError(
                f"{doc['kind']} {doc['metadata']['name']}: release {release!r} belongs to no install stage"
            )
        split[index or 0].append(doc)
    return split


def e2e_cpu_requests(installed: list[dict], apps: list[dict], settings: Settings) -> tuple[int, dict[str, int], int]:
    """The CPU the e2e run asks of the kind node: the install, the apps layer and every pod of the harness (test
    clients, new workloads, the ACME server); by pod, and the sidecar istiod's default gives a pod."""
    rows = contract.load()
    clients = {client for row in rows if (client := scenarios.client_for(row, settings))}
    harness_pods = scenarios.client_manifests(clients, settings, set()) + scenarios.newcomer_manifests(rows, settings)
    harness_pods += acme.ca_manifests("10.96.0.80")  # the ACME server's pods; its Issuer and Certificate run none
    docs = installed + apps + harness_pods
    proxy = capacity.default_proxy_millis(installed)
    return capacity.total_millis(docs, proxy), capacity.requests_by_pod(docs, proxy), proxy


def rendered_install_problems(installed: list[dict], apps: list[dict], settings: Settings) -> list[str]:
    """What the e2e run relies on in the rendered install: the node ports kind maps, every Deployment the bring-up
    waits for, and CPU requests a 2-vCPU runner holds."""
    mismatch = node_port_mismatch(installed, settings)
    problems = [mismatch] if mismatch else []
    waits = [(stage.namespace, name) for stage in install_stages(settings) for name in stage.deployments]
    if settings.gateway.gateway_api:  # istiod deploys it once the apps layer is applied; the bring-up waits for it
        waits.append((settings.gateway.namespace, settings.gateway.deployment))
    problems += rendered_install.waited_for_deployments_exist(installed, waits)
    daemonsets = [(stage.namespace, name) for stage in install_stages(settings) for name in stage.daemonsets]
    problems += rendered_install.waited_for_deployments_exist(installed, daemonsets, kind="DaemonSet")
    total, by_pod, _ = e2e_cpu_requests(installed, apps, settings)
    if total > capacity.BUDGET_MILLIS:
        problems.append(
            f"the e2e run asks for {total}m CPU, more than the {capacity.BUDGET_MILLIS}m of a 2-vCPU runner it may "
            f"take: {by_pod}"
        )
    return problems


def node_port_mismatch(live: list[dict], settings: Settings) -> str:
    """ "" when the live gateway Service has the node ports kind maps, else what differs and what to fix."""
    mapped = {80: settings.http_node_port, 443: settings.https_node_port}
    problems = rendered_install.the_gateway_is_installed_as_the_apps_layer_expects(live, settings.gateway)
    problems = problems or rendered_install.node_ports_match_the_kind_mappings(live, settings.gateway, mapped)
    if not problems:
        return ""
    return (
        "the gateway Service does not listen on the node ports kind maps to 127.0.0.1, so no request from the "
        "host can reach it: "
        + "; ".join(problems)
        + (
            " (fix apps/components/kind-node-ports/gateway-options.yaml)"
            if settings.gateway.gateway_api
            else " (fix infrastructure/components/kind-node-ports/gateway-nodeports.yaml)"
        )
    )


def install_paths(settings: Settings) -> dict[str, budget.InstallPath]:
    """The two ways the e2e job installs the repo (`overlays`, `gitops`), with the rollouts each waits for."""
    install_rollouts = sum(len(stage.deployments) + len(stage.daemonsets) for stage in install_stages(settings))
    app_deployments = [doc for doc in e2e_build() if doc["kind"] == "Deployment"]
    app_rollouts = len(app_deployments) + 1 + int(settings.gateway.gateway_api)  # + the JWKS server, the gateway
    acme_rollouts = sum(doc["kind"] == "Deployment" for doc in acme.manifests(settings, "192.0.2.1"))
    return {
        "overlays": budget.InstallPath(False, install_rollouts, app_rollouts, acme_rollouts),
        "gitops": budget.InstallPath(True, 0, app_rollouts, acme_rollouts),
    }
