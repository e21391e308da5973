"""What the repo promises the cluster, shown by a real API server and a real istiod (the local control plane), and
the repo's models of them held to what these real programs produced."""

import copy
import json
import time

import pytest

from e2e.controlplane import envoy_routes
from e2e.controlplane.bringup import LocalBringup
from e2e.controlplane.compare import disagreements
from e2e.harness import traffic
from e2e.harness.settings import HARNESS_LABEL, RESTRICTED_CONTAINER, RESTRICTED_POD, e2e_build
from repo_tools import (
    ISTIO_VERSION,
    KUBERNETES_VERSION,
    contract,
    edge,
    gateway_api,
    injection,
    layout,
    pod_security,
)
from repo_tools.resources import selects

GATEWAY = layout.ingress_gateway()
gateway_api_only = pytest.mark.skipif(not GATEWAY.gateway_api, reason="about the Gateway API; this repo uses Istio's")
STATUS_SECONDS = 60  # istiod writes status a moment after the objects and their pods exist


def live(bringup: LocalBringup, *args: str) -> list[dict]:
    return json.loads(bringup.plane.kubectl("get", *args, "-o", "json").stdout)["items"]


def dry_run(bringup: LocalBringup, pod: dict) -> tuple[bool, str]:
    """(admitted, the API server's message) for a pod created with dryRun: every admission step, nothing stored."""
    result = bringup.plane.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    return result.returncode == 0, result.stderr.strip()


def probe_pod(namespace: str, spec: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        # Not injected: Pod Security is asked about exactly this spec.
        "metadata": {
            "generateName": "pod-security-probe-",
            "namespace": namespace,
            "labels": {"sidecar.istio.io/inject": "false"},
        },
        "spec": spec,
    }


def test_every_object_of_every_install_stage_and_of_the_e2e_overlay_is_stored_by_the_api_server(bringup):
    for stage, docs in bringup.applied.items():
        result = bringup.plane.kubectl(
            "get",
            "-f",
            "-",
            "-o",
            "name",
            stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": docs}),
            check=False,
        )
        assert result.returncode == 0, f"{stage}: {result.stderr}"
        assert len(result.stdout.split()) == len(docs), stage
    built = e2e_build()
    stored = bringup.plane.kubectl(
        "get", "-f", "-", "-o", "name", stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": built})
    )
    assert len(stored.stdout.split()) == len(built)


def test_every_app_pod_is_made_by_the_controllers_injected_by_istiod_and_admitted_as_restricted(bringup):
    namespace = bringup.settings.app_namespace
    labels = json.loads(bringup.plane.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
    assert labels.get(pod_security.ENFORCE) == "restricted"
    # The repo's own: the harness's clients and echo servers beside them carry its label.
    workloads = [
        workload
        for workload in live(bringup, "-n", namespace, "deployments,statefulsets")
        if HARNESS_LABEL not in workload["spec"]["template"]["metadata"].get("labels", {})
    ]
    pods = live(bringup, "-n", namespace, "pods", "-l", f"!{HARNESS_LABEL}")
    assert len(pods) == sum(workload["spec"].get("replicas", 1) for workload in workloads) > 0
    for pod in pods:
        names = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
        assert "istio-proxy" in names and "istio-validation" in names and "istio-init" not in names, names
        assert pod["metadata"]["ownerReferences"][0]["kind"] in ("ReplicaSet", "StatefulSet")
        assert pod["status"]["phase"] == "Running" and pod["status"].get("podIP")


def test_the_api_server_refuses_a_privileged_pod_in_the_apps_namespace_after_admitting_a_restricted_one(bringup):
    namespace = bringup.settings.app_namespace
    spec = {
        "securityContext": RESTRICTED_POD,
        "containers": [{"name": "probe", "image": "busybox", "securityContext": RESTRICTED_CONTAINER}],
    }
    admitted, message = dry_run(bringup, probe_pod(namespace, spec))
    assert admitted, message
    spec["containers"][0]["securityContext"] = {"privileged": True}
    admitted, message = dry_run(bringup, probe_pod(namespace, spec))
    assert not admitted
    assert f'violates PodSecurity "restricted:v{KUBERNETES_VERSION}"' in message and "privileged" in message, message


# Changes to a pod that Pod Security judges; each is asked of the real API server and of the model.
MUTATIONS = {
    "privileged": lambda spec: spec["containers"][0]["securityContext"].update(privileged=True),
    "runs as root": lambda spec: spec["containers"][0]["securityContext"].update(runAsUser=0),
    "adds NET_ADMIN": lambda spec: spec["containers"][0]["securityContext"].update(
        capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}
    ),
    "may escalate": lambda spec: spec["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    "no seccomp profile": lambda spec: (
        spec["securityContext"].pop("seccompProfile", None)
        and spec["containers"][0]["securityContext"].pop("seccompProfile", None)
    ),
    "host network": lambda spec: spec.update(hostNetwork=True),
    "hostPath volume": lambda spec: spec.update(volumes=[{"name": "host", "hostPath": {"path": "/"}}]),
    "NET_BIND_SERVICE only": lambda spec: spec["containers"][0]["securityContext"].update(
        capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    ),
    "adds CHOWN": lambda spec: spec["containers"][0]["securityContext"].update(
        capabilities={"drop": ["ALL"], "add": ["CHOWN"]}
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_pod_security_model_refuses_exactly_what_the_api_server_refuses(bringup, mutation):
    namespace = bringup.settings.app_namespace
    pod = live(bringup, "-n", namespace, "pods")[0]
    spec = {
        key: copy.deepcopy(value)
        for key, value in pod["spec"].items()
        if key in ("securityContext", "containers", "initContainers", "volumes")
    }
    spec["containers"][0].setdefault("securityContext", {})
    spec.setdefault("securityContext", {})
    as_is = (
        pod_security.problems_at("restricted", spec, {}),
        dry_run(bringup, probe_pod(namespace, copy.deepcopy(spec))),
    )
    assert as_is[0] == [] and as_is[1][0], f"the running pod itself: model {as_is[0]}, API server {as_is[1][1]}"
    MUTATIONS[mutation](spec)
    model = pod_security.problems_at("restricted", spec, {})
    admitted, message = dry_run(bringup, probe_pod(namespace, spec))
    assert bool(model) == (not admitted), (
        f"{mutation}: the model says {model or 'admitted'}, the API server {message or 'admitted'}"
    )


def test_the_injection_model_matches_the_pods_istiod_injected(bringup):
    namespace = bringup.settings.app_namespace
    mesh = injection.mesh_values()
    problems = []
    for deployment in [
        doc
        for doc in e2e_build()
        if doc["kind"] == "Deployment" and injection.is_injected(doc["spec"]["template"].get("metadata") or {})
    ]:
        modelled = injection.injected_spec(deployment["spec"]["template"]["spec"], mesh)
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        real = live(bringup, "-n", namespace, "pods", "-l", selector)[0]["spec"]
        # The model keeps a native sidecar among the containers (Pod Security checks both alike).
        real = {
            **real,
            "containers": real["containers"]
            + [c for c in real.get("initContainers", []) if c.get("restartPolicy") == "Always"],
            "initContainers": [c for c in real.get("initContainers", []) if c.get("restartPolicy") != "Always"],
        }
        added = {
            "initContainers": [c for c in modelled["initContainers"] if c["name"].startswith("istio-")],
            "containers": [c for c in modelled["containers"] if c["name"] == "istio-proxy"],
            "volumes": modelled["volumes"],
        }
        problems += [f"{deployment['metadata']['name']}: {p}" for p in disagreements(added, real)]
    assert problems == []


@gateway_api_only
def test_istiod_deploys_the_gateways_deployment_service_and_service_account_as_the_model_says(bringup):
    modelled = gateway_api.deployed_gateway(e2e_build(), GATEWAY)
    assert {doc["kind"] for doc in modelled} >= {"Deployment", "Service", "ServiceAccount"}
    problems = []
    for doc in modelled:
        result = bringup.plane.kubectl(
            "-n", GATEWAY.namespace, "get", doc["kind"].lower(), doc["metadata"]["name"], "-o", "json", check=False
        )
        if result.returncode != 0:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: istiod did not create it")
            continue
        real = json.loads(result.stdout)
        problems += [f"{doc['kind']} {doc['metadata']['name']}: {p}" for p in disagreements(doc, real)]
    assert problems == []


def condition(conditions: list[dict], kind: str) -> str:
    found = next((c for c in conditions if c["type"] == kind), None)
    return (
        f"{kind}={found['status']} ({found.get('reason')}: {found.get('message', '')[:200]})"
        if found
        else f"{kind} missing"
    )


@gateway_api_only
def test_the_gateway_and_every_httproute_reach_the_conditions_the_kind_run_waits_for(bringup):
    def states() -> list[str]:
        gateways = live(bringup, "-A", "gateways.gateway.networking.k8s.io")
        routes = live(bringup, "-A", "httproutes.gateway.networking.k8s.io")
        found = [
            f"Gateway {gw['metadata']['name']}: {condition(gw.get('status', {}).get('conditions', []), kind)}"
            for gw in gateways
            for kind in ("Accepted", "Programmed")
        ]
        found += [
            f"HTTPRoute {r['metadata']['namespace']}/{r['metadata']['name']} parent {p['parentRef']['name']}: {condition(p.get('conditions', []), kind)}"
            for r in routes
            for p in r.get("status", {}).get("parents", []) or [{"parentRef": {"name": "none"}, "conditions": []}]
            for kind in ("Accepted", "ResolvedRefs")
        ]
        return found

    deadline = time.monotonic() + STATUS_SECONDS
    found = states()
    while any("=True" not in state for state in found) and time.monotonic() < deadline:
        time.sleep(2)
        found = states()
    assert [state for state in found if "=True" not in state] == [], "\n".join(found)


ISTIO_KINDS = (
    "gateways.networking.istio.io",
    "virtualservices.networking.istio.io",
    "destinationrules.networking.istio.io",
    "envoyfilters.networking.istio.io",
    "peerauthentications.security.istio.io",
    "requestauthentications.security.istio.io",
    "authorizationpolicies.security.istio.io",
    "telemetries.telemetry.istio.io",
)


# What istiod's analyzers report that the repo accepts, and why.
ACCEPTED_FINDINGS = {
    # Istio's validation warns on every EnvoyFilter that it exposes Envoy's internals; Istio has no other API for
    # Envoy's local rate limit and size limits (apps/base/edge-limits).
    "IST0133 WARNING": "EnvoyFilter",
}


def test_istiods_analyzers_find_nothing_wrong_with_the_repos_istio_resources(bringup):
    """istiod's validating webhook admitted every resource (the bring-up applied them); its analyzers, which write to
    each resource's status, report nothing either. The control: the analyzers do report a VirtualService that
    routes to a Service that does not exist (IST0101)."""
    namespace = bringup.settings.app_namespace
    control = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "analysis-control", "namespace": namespace},
        "spec": {"hosts": ["analysis-control"], "http": [{"route": [{"destination": {"host": "no-such-service"}}]}]},
    }
    bringup.apply([control])

    def messages() -> list[str]:
        return [
            f"{doc['kind']} {doc['metadata']['namespace']}/{doc['metadata']['name']}: {m.get('type', {}).get('code')} "
            f"{m.get('level')} {json.dumps({k: v for k, v in m.items() if k not in ('type', 'level')})}"
            for doc in live(bringup, "-A", ",".join(ISTIO_KINDS))
            for m in (doc.get("status") or {}).get("validationMessages") or []
        ]

    deadline = time.monotonic() + STATUS_SECONDS
    found = messages()
    while not any("analysis-control" in message for message in found) and time.monotonic() < deadline:
        time.sleep(2)
        found = messages()
    bringup.plane.kubectl("-n", namespace, "delete", "virtualservice", "analysis-control")
    assert any("analysis-control" in message and "IST0101" in message for message in found), found
    problems = [
        message
        for message in found
        if "analysis-control" not in message
        and not any(message.startswith(kind) and code in message for code, kind in ACCEPTED_FINDINGS.items())
    ]
    assert problems == [], "\n".join(problems)


# --- what istiod sends the gateway, against the offline verifier --------------------------------------------------

ROUTING_OUTCOMES = ("reaches ", "redirect https", "no-route")


def gateway_pod(bringup: LocalBringup) -> envoy_routes.Pod:
    pod = live(bringup, "-n", GATEWAY.namespace, "pods", "-l", GATEWAY.selector)[0]
    return envoy_routes.Pod(
        pod["metadata"]["name"],
        GATEWAY.namespace,
        pod["status"]["podIP"],
        pod["metadata"].get("labels") or {},
        pod["spec"].get("serviceAccountName", "default"),
        GATEWAY.deployment,
    )


def listener_ports(bringup: LocalBringup) -> dict[int, int]:
    """The gateway Service's ports -> the container ports its listeners bind (80 -> 80 with the Gateway API,
    80 -> 80 or 8080 with the gateway chart)."""
    services = live(bringup, "-n", GATEWAY.namespace, "services")
    pod = live(bringup, "-n", GATEWAY.namespace, "pods", "-l", GATEWAY.selector)[0]
    service = next(
        s for s in services if s["spec"].get("selector") and selects(s["spec"]["selector"], pod["metadata"]["labels"])
    )
    named = {
        p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or [] if "name" in p
    }
    return {
        p["port"]: named.get(p["targetPort"], p["targetPort"])
        if isinstance(p.get("targetPort"), str)
        else p.get("targetPort", p["port"])
        for p in service["spec"]["ports"]
    }


def workloads_behind(cluster: str, docs: list[dict]) -> list[str]:
    """The workloads an outbound cluster reaches: the Service's selector, narrowed by the DestinationRule subset."""
    host, subset = envoy_routes.cluster_host(cluster)
    name, namespace = host.split(".")[:2]
    service = next(
        (
            d
            for d in docs
            if d["kind"] == "Service" and d["metadata"]["name"] == name and d["metadata"].get("namespace") == namespace
        ),
        None,
    )
    if service is None:
        return [host]
    labels = dict(service["spec"].get("selector") or {})
    for rule in (d for d in docs if d["kind"] == "DestinationRule" and d["spec"]["host"].split(".")[0] == name):
        labels |= next((s.get("labels") or {} for s in rule["spec"].get("subsets") or [] if s["name"] == subset), {})
    return sorted(
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        and d["metadata"].get("namespace") == namespace
        and selects(labels, d["spec"]["template"]["metadata"].get("labels") or {})
    )


def real_answer(decision: envoy_routes.Decision, docs: list[dict]) -> str:
    if decision.kind == "route":
        shares: dict[str, int] = {}
        for cluster, weight in decision.clusters.items():
            for workload in workloads_behind(cluster, docs):
                shares[workload] = shares.get(workload, 0) + weight
        total = sum(decision.clusters.values()) or 1
        split = ", ".join(f"{w} {round(100 * s / total)}%" for w, s in sorted(shares.items()))
        policy = envoy_routes.canonical(decision.policy).describe() if decision.policy else "no policy"
        return f"{split}; {policy}"
    if decision.kind == "redirect":
        return "redirect https" if decision.detail.endswith("redirect https") else decision.detail
    return "no-route" if decision.kind == "no-route" or decision.detail.endswith(": 404") else decision.detail


def verifier_answer(verdict) -> str:
    if verdict.outcome.startswith("reaches ") and verdict.traffic is not None and verdict.traffic.shares:
        shares = sorted((s for s in verdict.traffic.shares if s.weight), key=lambda s: s.workload)
        total = sum(s.weight for s in shares)
        split = ", ".join(f"{s.workload} {round(100 * s.weight / total)}%" for s in shares)
        policy = verdict.traffic.policy
        if policy is None:
            return split
        return f"{split}; {envoy_routes.canonical(policy).describe()}"
    return verdict.outcome


def test_istiods_routes_for_the_gateway_agree_with_the_verifier_on_every_row_routing_decides(bringup):
    """The listeners and routes istiod generates for the gateway pod, walked as Envoy walks them (listener by port,
    filter chain by SNI, virtual host by authority, first matching route), give each internet row of contract.yaml
    the same destination, split or redirect as repo_tools.contract predicts for the e2e overlay."""
    pod = gateway_pod(bringup)
    config = envoy_routes.proxy_config(
        f"{bringup.plane.xds_host}:{bringup.plane.ports['istiod-grpc']}", pod, "router", ISTIO_VERSION
    )
    managers = list(envoy_routes.connection_managers(config.listeners))
    assert managers, f"istiod sent the gateway no HTTP listener: {[listener.name for listener in config.listeners]}"
    # The verifier reads each path as meshConfig.pathNormalization says; so does every listener istiod built.
    for manager in managers:
        assert manager.normalize_path.value and manager.merge_slashes, manager.stat_prefix
    ports, docs = listener_ports(bringup), e2e_build()
    rows = [row for row in contract.load() if row.caller == "internet" and not row.request.exceeds]
    table, disagreeing = [], []
    for row in rows:
        if not row.expected.startswith(ROUTING_OUTCOMES):  # what the contract says routing decides
            continue
        verdict = traffic.offline_verdict(row)
        port = ports[443 if row.request.scheme == "https" else 80]
        decision = envoy_routes.route(
            config,
            port,
            bringup.settings.host,
            edge.normalized(row.request.path),
            row.request.method,
            dict(row.request.headers),
        )
        expected, real = verifier_answer(verdict), real_answer(decision, docs)
        table.append((row.name, expected, f"{real} ({decision.detail})", expected == real))
        if expected != real:
            disagreeing.append(row.name)
    width = max(len(name) for name, *_ in table)
    print(f"\n{'row':<{width}}  overlay  verifier  |  istiod's routes  |  agree")
    for name, expected, real, agree in table:
        print(f"{name:<{width}}  e2e  {expected}  |  {real}  |  {'yes' if agree else 'NO'}")
    assert len(table) >= 5, f"only {len(table)} rows are decided by routing"
    assert disagreeing == [], "\n".join(f"{n}: verifier {e}, istiod {r}" for n, e, r, a in table if not a)
