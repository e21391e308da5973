"""What the e2e run asks the scheduler for: the CPU requests of every pod on the single kind node.

A private GitHub repo's runner has 2 vCPUs, and kind's node offers them all as allocatable CPU. Pods whose
requests do not fit stay Pending and the run times out, so the sum is computed from the rendered manifests
(install, apps overlay, the harness's own pods) plus the Istio sidecar each injected pod gets.
"""

import json

from e2e.harness.settings import PROXY_CPU_ANNOTATION
from repo_tools import injection

RUNNER_CPU_MILLIS = 2000
# Leave a quarter of the node for the kubelet, the container runtime and bursts during bring-up.
BUDGET_MILLIS = RUNNER_CPU_MILLIS * 3 // 4
# Pods a single-node kind cluster runs before anything is applied, with their CPU requests:
# kubeadm's static pods (cmd/kubeadm/app/phases/controlplane/manifests.go, etcd/local.go), CoreDNS
# (cmd/kubeadm/app/phases/addons/dns: 2 replicas of 100m) and kindnet (kind pkg/build/nodeimage/const_cni.go).
# local-path-provisioner requests nothing.
KIND_CONTROL_PLANE_MILLIS = {
    "kube-apiserver": 250,
    "kube-controller-manager": 200,
    "kube-scheduler": 100,
    "etcd": 100,
    "coredns (2 replicas)": 200,
    "kindnet": 100,
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def millis(quantity: str | int | float) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


def container_millis(containers: list[dict]) -> int:
    return sum(millis(c.get("resources", {}).get("requests", {}).get("cpu", 0)) for c in containers)


def default_proxy_millis(install: list[dict]) -> int:
    """The sidecar's CPU request istiod injects, from the rendered injector's values."""
    injector = next(
        doc for doc in install if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "istio-sidecar-injector"
    )
    return millis(json.loads(injector["data"]["values"])["global"]["proxy"]["resources"]["requests"]["cpu"])


def replicas(workload: dict, docs: list[dict]) -> int:
    if workload["kind"] == "DaemonSet":
        return 1  # one node
    autoscaled = [
        doc["spec"].get("minReplicas", 1)
        for doc in docs
        if doc["kind"] == "HorizontalPodAutoscaler"
        and doc["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        and doc["metadata"].get("namespace") == workload["metadata"].get("namespace")
    ]
    return max(autoscaled) if autoscaled else workload["spec"].get("replicas", 1)


def pod_millis(template: dict, namespace: str, injected: set[str], proxy_millis: int) -> int:
    """One pod's request: its containers, plus the sidecar istiod adds when the pod is injected."""
    metadata, spec = template.get("metadata") or {}, template["spec"]
    containers = spec.get("containers", [])
    own = container_millis(containers) + container_millis(
        [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    )
    inject = (metadata.get("labels") or {}).get("sidecar.istio.io/inject")
    has_proxy = any(c["name"] == "istio-proxy" for c in containers)
    if has_proxy or inject == "false" or (inject != "true" and namespace not in injected):
        return own
    annotated = (metadata.get("annotations") or {}).get(PROXY_CPU_ANNOTATION)
    return own + (millis(annotated) if annotated else proxy_millis)


def requests_by_pod(docs: list[dict], proxy_millis: int) -> dict[str, int]:
    """ "kind namespace/name" -> millicores requested, for every workload and bare Pod in docs."""
    injected = injection.injected_namespaces(docs)
    found = {}
    for doc in docs:
        namespace = doc["metadata"].get("namespace", "default")
        where = f"{doc['kind']} {namespace}/{doc['metadata']['name']}"
        if doc["kind"] in WORKLOAD_KINDS:
            found[where] = replicas(doc, docs) * pod_millis(doc["spec"]["template"], namespace, injected, proxy_millis)
        elif doc["kind"] == "Pod":
            found[where] = pod_millis(doc, namespace, injected, proxy_millis)
    return found


def total_millis(docs: list[dict], proxy_millis: int) -> int:
    return sum(KIND_CONTROL_PLANE_MILLIS.values()) + sum(requests_by_pod(docs, proxy_millis).values())
