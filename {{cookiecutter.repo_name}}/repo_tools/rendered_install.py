"""Rules over the install layer as the charts really render it (repo_tools.charts), beside the apps layer.
With the Gateway API, the gateway's objects are the ones Istio deploys for the apps layer's Gateway
(repo_tools.gateway_api.deployed_gateway), added to the install layer's before these rules run.

Each rule takes the rendered documents of one infrastructure overlay (and, where it compares the two layers,
the matching apps overlay) and returns sentences naming the resource and what to change.
"""

from collections.abc import Iterator
from typing import Any

from repo_tools import load_yaml
from repo_tools.charts import Recordings
from repo_tools.install import Chart
from repo_tools.layout import IngressGateway
from repo_tools.resources import describe, of_kind, pod_labels, selects

# Values that are whole upstream APIs rather than chart keys: istiod passes meshConfig through as Istio's
# MeshConfig, whose fields the chart's defaults list only in part.
FREE_FORM_VALUES = {"istiod": ("meshConfig.", "pilot.meshConfig.")}
# Values the charts' templates read but their values files leave out (Istio release-1.30:
# manifests/charts/base/templates/defaultrevision-validatingwebhookconfiguration.yaml and
# istio-control/istio-discovery/templates/validatingwebhookconfiguration.yaml read base.validationFailurePolicy).
TEMPLATE_ONLY_VALUES = {"base": ("base.validationFailurePolicy",), "istiod": ("base.validationFailurePolicy",)}


def gateway_deployment(infrastructure: list[dict], gateway: IngressGateway) -> dict | None:
    return next(
        (
            doc
            for doc in of_kind(infrastructure, "Deployment")
            if doc["metadata"].get("namespace") == gateway.namespace
            and doc["spec"]["template"]["spec"].get("serviceAccountName") == gateway.service_account
        ),
        None,
    )


def the_gateway_is_installed_as_the_apps_layer_expects(
    infrastructure: list[dict], gateway: IngressGateway
) -> list[str]:
    deployment = gateway_deployment(infrastructure, gateway)
    if deployment is None:
        return [
            f"no Deployment in {gateway.namespace} runs as ServiceAccount {gateway.service_account} "
            "(apps/base/ingress-gateway.env): the gateway chart, or istiod for the Gateway, deploys it elsewhere "
            "or under another name"
        ]
    labels = pod_labels(deployment)
    if not selects(gateway.pod_labels, labels):
        return [f"{describe(deployment)}: its pods carry {labels}, not {gateway.pod_labels}"]
    return []


def selectors_select_the_gateway_pods(
    infrastructure: list[dict], apps: list[dict], gateway: IngressGateway
) -> list[str]:
    """Gateways, the gateway's PDBs and AuthorizationPolicies, and NetworkPolicies admitting it select its real pods."""
    deployment = gateway_deployment(infrastructure, gateway)
    if deployment is None:
        return []
    labels = pod_labels(deployment)
    namespace = deployment["metadata"]["namespace"]
    problems = [
        f"{describe(gw)}: selector {gw['spec'].get('selector')} does not select the gateway pods {labels}"
        for gw in of_kind(apps, "Gateway")
        if gw["apiVersion"].startswith("networking.istio.io/") and not selects(gw["spec"].get("selector", {}), labels)
    ]
    for doc in [
        *of_kind(infrastructure, "PodDisruptionBudget"),
        *of_kind(infrastructure + apps, "AuthorizationPolicy", "RequestAuthentication", "Telemetry"),
    ]:
        selector = doc["spec"].get("selector", {}).get("matchLabels") or {}
        if doc["metadata"].get("namespace") == namespace and selector and not selects(selector, labels):
            problems.append(f"{describe(doc)}: selector {selector} does not select the gateway pods {labels}")
    admitted = {
        peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        for policy in of_kind(apps, "NetworkPolicy")
        for rule in policy["spec"].get("ingress", [])
        for peer in rule.get("from", [])
    }
    if any(of_kind(apps, "NetworkPolicy")) and namespace not in admitted:
        problems.append(f"no NetworkPolicy admits connections from {namespace!r}, where the gateway pods run")
    return problems


def policies_name_ports_the_gateway_listens_on(
    infrastructure: list[dict], apps: list[dict], gateway: IngressGateway
) -> list[str]:
    """An AuthorizationPolicy of the gateway matches `ports` against the port its pods listen on (the Service's
    target port): a rule on a port they do not listen on never matches, and a DENY there protects nothing."""
    deployment = gateway_deployment(infrastructure, gateway)
    if deployment is None:
        return []
    labels, namespace = pod_labels(deployment), deployment["metadata"]["namespace"]
    containers = deployment["spec"]["template"]["spec"].get("containers", [])
    named = {port.get("name"): port["containerPort"] for c in containers for port in c.get("ports", [])}
    listening = {
        str(named.get(port.get("targetPort"), port.get("targetPort", port["port"])))
        for service in of_kind(infrastructure, "Service")
        if service["metadata"].get("namespace") == namespace and selects(service["spec"].get("selector") or {}, labels)
        for port in service["spec"].get("ports", [])
    }
    problems = []
    for policy in of_kind(apps, "AuthorizationPolicy"):
        spec = policy.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        targets_gateway = any(ref.get("kind") == "Gateway" for ref in spec.get("targetRefs") or [])
        if policy["metadata"].get("namespace") != namespace or not (
            targets_gateway or (selector and selects(selector, labels))
        ):
            continue
        for number, rule in enumerate(spec.get("rules") or [], start=1):
            for entry in rule.get("to") or []:
                unknown = sorted(set(entry.get("operation", {}).get("ports") or []) - listening)
                if unknown:
                    problems.append(
                        f"{describe(policy)} rule {number}: the gateway pods listen on {sorted(listening)}, not "
                        f"{unknown}, so the rule never matches there"
                    )
    return problems


def node_ports_match_the_kind_mappings(
    infrastructure: list[dict], gateway: IngressGateway, mapped: dict[int, int]
) -> list[str]:
    """The rendered gateway Service has exactly the node ports kind maps: Service port -> nodePort."""
    deployment = gateway_deployment(infrastructure, gateway)
    if deployment is None:
        return []
    services = [
        svc
        for svc in of_kind(infrastructure, "Service")
        if svc["metadata"].get("namespace") == gateway.namespace
        and selects(svc["spec"].get("selector") or {"": ""}, pod_labels(deployment))
    ]
    if len(services) != 1:
        return [f"expected one Service in front of the gateway pods in {gateway.namespace}, found {len(services)}"]
    service = services[0]
    rendered = {port["port"]: port.get("nodePort") for port in service["spec"].get("ports", [])}
    problems = [] if service["spec"].get("type") == "NodePort" else [f"{describe(service)}: type is not NodePort"]
    problems += [
        f"{describe(service)}: port {port} has nodePort {rendered.get(port)}, but kind maps {node_port} "
        "(with the gateway chart, a patch entry without `protocol: TCP` does not merge with the chart's port)"
        for port, node_port in sorted(mapped.items())
        if rendered.get(port) != node_port
    ]
    return problems


def high_availability_holds(infrastructure: list[dict], gateway: IngressGateway) -> list[str]:
    """At least two gateway pods, and a disruption budget over the real pods that keeps one of them up."""
    deployment = gateway_deployment(infrastructure, gateway)
    if deployment is None:
        return []
    name = deployment["metadata"]["name"]
    autoscalers = [
        hpa
        for hpa in of_kind(infrastructure, "HorizontalPodAutoscaler")
        if hpa["spec"]["scaleTargetRef"]["name"] == name and hpa["metadata"].get("namespace") == gateway.namespace
    ]
    minimum = min(
        (hpa["spec"].get("minReplicas", 1) for hpa in autoscalers), default=deployment["spec"].get("replicas", 1)
    )
    problems = [] if minimum >= 2 else [f"{describe(deployment)}: runs {minimum} pod at minimum, not 2"]
    budgets = [
        pdb
        for pdb in of_kind(infrastructure, "PodDisruptionBudget")
        if pdb["metadata"].get("namespace") == gateway.namespace
        and selects(pdb["spec"].get("selector", {}).get("matchLabels") or {"": ""}, pod_labels(deployment))
    ]
    if not budgets:
        problems.append(f"{describe(deployment)}: no PodDisruptionBudget selects its pods")
    for pdb in budgets:
        if pdb["spec"].get("maxUnavailable", minimum) >= minimum:
            problems.append(f"{describe(pdb)}: maxUnavailable lets a drain take down every gateway pod")
    return problems


def waited_for_deployments_exist(
    infrastructure: list[dict], waits: list[tuple[str, str]], kind: str = "Deployment"
) -> list[str]:
    present = {(doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in of_kind(infrastructure, kind)}
    return [
        f"the e2e bring-up waits for {kind} {namespace}/{name}, which the install does not create"
        for namespace, name in waits
        if (namespace, name) not in present
    ]


def key_paths(values: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from key_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix


def known_in_defaults(path: str, defaults: Any) -> bool:
    """A key path exists in the chart's defaults, or sits below a map or list the defaults leave open."""
    node = defaults
    for key in path.split("."):
        if not isinstance(node, dict) or not node:
            return True  # below an empty map, a list or a scalar default: free-form
        if key not in node:
            return False
        node = node[key]
    return True


def known_in_schema(path: str, schema: dict) -> bool:
    node = schema.get("$defs", {}).get("values", schema)
    for key in path.split("."):
        properties = node.get("properties", {})
        if key not in properties:
            return node.get("additionalProperties") is not False
        node = properties[key]
    return True


def chart_defaults(chart: Chart, recordings: Recordings) -> dict:
    """The chart's default values; Istio's charts keep them under _internal_defaults_do_not_set."""
    values: dict = load_yaml(recordings.default_values(chart.name, chart.version).read_text()) or {}
    defaults: dict = values.get("_internal_defaults_do_not_set", values)
    if chart.name == "istiod":
        # The istiod chart reads `pilot.*` as its top level (zzz_profile.yaml flattens it; the recorded
        # render shows pilot.resources applied), so both spellings are known keys.
        defaults = defaults | {"pilot": defaults}
    return defaults


def values_keys_exist(chart: Chart, recordings: Recordings) -> list[str]:
    """Every key a values file sets exists in the chart's default values or its values schema."""
    defaults_file = recordings.default_values(chart.name, chart.version)
    if not defaults_file.is_file():
        return [f"{chart.where}: no recorded default values for {chart.name} {chart.version} ({defaults_file})"]
    defaults = chart_defaults(chart, recordings)
    schema_file = recordings.values_schema(chart.name, chart.version)
    schema = load_yaml(schema_file.read_text()) if schema_file.is_file() else None
    return [
        f"{chart.values_file.relative_to(chart.directory.parent.parent)}: {path} is not a value of chart "
        f"{chart.name} {chart.version} (a typo is silently ignored by Helm)"
        for path in key_paths(chart.values)
        if not path.startswith(FREE_FORM_VALUES.get(chart.name, ()))
        and path not in TEMPLATE_ONLY_VALUES.get(chart.name, ())
        and not known_in_defaults(path, defaults)
        and not (schema is not None and known_in_schema(path, schema))
    ]
