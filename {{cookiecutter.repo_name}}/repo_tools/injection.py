"""What Istio's sidecar injection adds to a pod, for the checks that need the pod as it runs (Pod Security).

A model of the "sidecar" template in istiod's istio-sidecar-injector ConfigMap for this repo's mesh values
(infrastructure/istiod/values.yaml): the traffic-redirection init container (istio-init, which needs NET_ADMIN and
NET_RAW and runs as root, or, with Istio's CNI agent, istio-validation, which needs neither), the istio-proxy
container and the sidecar's volumes. The template is Go text, which nothing here executes: TEMPLATE_FACTS are the
lines of it this model follows, and `template_problems` holds them to the rendered istiod chart, so that an Istio
release that changes them fails the check instead of the model going stale. Where every kubelet is 1.33 or newer,
Istio runs istio-proxy as a native sidecar (an init container with restartPolicy Always, ENABLE_NATIVE_SIDECARS
"auto"); Pod Security checks init containers alike, so the model keeps it among the containers. It leaves out the
istio-ca-crl ConfigMap volume, which changes nothing Pod Security checks.
"""

import copy
from pathlib import Path

from repo_tools import REPO_ROOT, load_yaml, read_yaml_file
from repo_tools.resources import of_kind

INJECTOR_CONFIGMAP = "istio-sidecar-injector"
PROXY_UID = 1337
# Lines of the sidecar template (istiod chart, files/injection-template.yaml) that this model follows.
TEMPLATE_FACTS = {
    "with the CNI agent the init container only validates the redirection": (
        "{{ if .Values.pilot.cni.enabled -}}\n  - name: istio-validation\n  {{ else -}}\n  - name: istio-init"
    ),
    "without it, it adds NET_ADMIN and NET_RAW": (
        "capabilities:\n    {{- if not .Values.pilot.cni.enabled }}\n        add:\n        - NET_ADMIN\n        - NET_RAW"
    ),
    "and runs as root": "readOnlyRootFilesystem: false\n      runAsGroup: 0\n      runAsNonRoot: false\n      runAsUser: 0",
    "with it, as the proxy's user": (
        'readOnlyRootFilesystem: true\n      runAsGroup: {{ if $tproxy }} 1337 {{ else }} {{ .ProxyGID | default "1337" }}'
    ),
    "the proxy drops every capability and runs as its own user": (
        'runAsNonRoot: true\n      runAsUser: {{ .ProxyUID | default "1337" }}'
    ),
    "privilege escalation follows global.proxy.privileged": (
        "allowPrivilegeEscalation: {{ .Values.global.proxy.privileged }}"
    ),
    "a seccomp profile only where global.proxy.seccompProfile sets one": (
        "{{- if .Values.global.proxy.seccompProfile }}\n      seccompProfile:"
    ),
}
SIDECAR_VOLUMES = [
    {"name": "workload-socket", "emptyDir": {}},
    {"name": "credential-socket", "emptyDir": {}},
    {"name": "workload-certs", "emptyDir": {}},
    {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
    {"name": "istio-data", "emptyDir": {}},
    {"name": "istio-podinfo", "downwardAPI": {"items": []}},
    {"name": "istio-token", "projected": {"sources": []}},
    {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
]


def injected_namespaces(docs: list[dict]) -> set[str]:
    return {
        doc["metadata"]["name"]
        for doc in of_kind(docs, "Namespace")
        if (doc["metadata"].get("labels") or {}).get("istio-injection") == "enabled"
    }


def is_injected(pod_metadata: dict) -> bool:
    annotations = pod_metadata.get("annotations") or {}
    labels = pod_metadata.get("labels") or {}
    return "false" not in (annotations.get("sidecar.istio.io/inject"), labels.get("sidecar.istio.io/inject"))


def mesh_values(root: Path = REPO_ROOT) -> dict:
    """The istiod values the injection template reads, with the chart's defaults where the repo sets none."""
    values = read_yaml_file(root / "infrastructure" / "istiod" / "values.yaml")
    proxy = (values.get("global") or {}).get("proxy") or {}
    return {
        "cni": bool(((values.get("pilot") or {}).get("cni") or {}).get("enabled", False)),
        "privileged": bool(proxy.get("privileged", False)),
        "seccompProfile": proxy.get("seccompProfile") or {},
    }


def security_context(mesh: dict, as_root: bool, added: tuple[str, ...] = ()) -> dict:
    context: dict = {
        "allowPrivilegeEscalation": mesh["privileged"],
        "privileged": mesh["privileged"],
        "capabilities": {"drop": ["ALL"], **({"add": list(added)} if added else {})},
        "readOnlyRootFilesystem": not as_root,
        "runAsGroup": 0 if as_root else PROXY_UID,
        "runAsNonRoot": not as_root,
        "runAsUser": 0 if as_root else PROXY_UID,
    }
    if mesh["seccompProfile"]:
        context["seccompProfile"] = mesh["seccompProfile"]
    return context


def injected_spec(spec: dict, mesh: dict) -> dict:
    """The pod spec after injection: the init container, istio-proxy and the sidecar's volumes added."""
    injected = copy.deepcopy(spec)
    if mesh["cni"]:
        init = {"name": "istio-validation", "securityContext": security_context(mesh, as_root=False)}
    else:
        init = {"name": "istio-init", "securityContext": security_context(mesh, True, ("NET_ADMIN", "NET_RAW"))}
    proxy = {
        "name": "istio-proxy",
        "ports": [{"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"}],
        "securityContext": security_context(mesh, as_root=False),
    }
    injected["initContainers"] = [init, *(injected.get("initContainers") or [])]
    injected["containers"] = [*(injected.get("containers") or []), proxy]
    injected["volumes"] = [*(injected.get("volumes") or []), *copy.deepcopy(SIDECAR_VOLUMES)]
    return injected


def template_problems(istiod: list[dict]) -> list[str]:
    """The rendered istiod chart's sidecar template still says what the model follows."""
    configmaps = [doc for doc in of_kind(istiod, "ConfigMap") if doc["metadata"]["name"] == INJECTOR_CONFIGMAP]
    if not configmaps:
        return []
    template = (load_yaml(configmaps[0]["data"]["config"]).get("templates") or {}).get("sidecar", "")
    return [
        f"ConfigMap {INJECTOR_CONFIGMAP}: the sidecar template no longer says that {fact}; repo_tools/injection.py "
        "models injection from it and must follow"
        for fact, text in TEMPLATE_FACTS.items()
        if text not in template
    ]
