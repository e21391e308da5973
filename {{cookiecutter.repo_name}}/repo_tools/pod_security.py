"""Pod Security Standards, as Kubernetes' pod-security admission evaluates them, offline: the level a pod admits
under, and for a stricter level every field that stops it, naming the container. The checks follow
k8s.io/pod-security-admission (policy/check_*.go) for the "baseline" and "restricted" levels at v1.34; Windows-only
fields are left out (no pod here runs on Windows). Kubernetes versions each check: where a later release changes
one (1.35 runAsNonRoot, runAsUser and procMount; 1.37 sysctls), this follows 1.34, the oldest the repo runs.

Pods are evaluated as they run: in a namespace with sidecar injection, with the containers and volumes Istio's
injection template adds (repo_tools.injection). The rules below hold every namespace to the level it enforces, the
app's namespace to "restricted", and each namespace of the install to the strictest level its charts allow.
"""

from collections.abc import Iterator
from pathlib import Path

from repo_tools import KUBERNETES_VERSION, REPO_ROOT, injection
from repo_tools.layout import IngressGateway
from repo_tools.resources import describe, of_kind

LEVELS = ("restricted", "baseline", "privileged")  # strictest first
ENFORCE = "pod-security.kubernetes.io/enforce"
MODES = ("enforce", "audit", "warn")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
SECCOMP_CONFINED = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"container {container.get('name')}", container


def baseline_problems(spec: dict, annotations: dict[str, str]) -> list[str]:
    pod_context = spec.get("securityContext") or {}
    problems = [f"spec.{field} is true" for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    problems += [
        f"volume {volume.get('name')}: hostPath volumes are not allowed"
        for volume in spec.get("volumes") or []
        if "hostPath" in volume
    ]
    problems += [
        f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl"
        for sysctl in pod_context.get("sysctls") or []
        if sysctl.get("name") not in SAFE_SYSCTLS
    ]
    problems += context_problems("spec.securityContext", pod_context)
    problems += [
        f"annotation {key}: AppArmor profile {value} is not allowed"
        for key, value in annotations.items()
        if key.startswith(APPARMOR_ANNOTATION)
        and value
        and value != "runtime/default"
        and not value.startswith("localhost/")
    ]
    for where, container in containers(spec):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{where}: securityContext.privileged is true")
        added = set((context.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        problems += [f"{where}: securityContext.capabilities.add {name} is not allowed" for name in sorted(added)]
        problems += [
            f"{where}: ports hostPort {port['hostPort']} is not allowed"
            for port in container.get("ports") or []
            if port.get("hostPort")
        ]
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: securityContext.procMount is {context['procMount']}")
        problems += context_problems(f"{where}: securityContext", context)
        problems += [f"{where}: {handler} sets a host, which is not allowed" for handler in host_handlers(container)]
    return problems


def host_handlers(container: dict) -> list[str]:
    """Probes and lifecycle hooks that would connect to another host than the pod (baseline from v1.34)."""
    handlers = [(probe, container.get(probe) or {}) for probe in PROBES] + [
        (f"lifecycle.{hook}", (container.get("lifecycle") or {}).get(hook) or {}) for hook in ("postStart", "preStop")
    ]
    return [
        f"{where}.{action}.host"
        for where, handler in handlers
        for action in ("httpGet", "tcpSocket")
        if (handler.get(action) or {}).get("host")
    ]


def context_problems(where: str, context: dict) -> list[str]:
    """The checks a pod's and a container's securityContext share: seccomp, AppArmor and SELinux options."""
    problems = []
    if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.seccompProfile.type is Unconfined")
    if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append(f"{where}.appArmorProfile.type is Unconfined")
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        problems.append(f"{where}.seLinuxOptions sets a user, role or type that is not allowed")
    return problems


def restricted_problems(spec: dict, annotations: dict[str, str]) -> list[str]:
    problems = baseline_problems(spec, annotations)
    pod_context = spec.get("securityContext") or {}
    problems += [
        f"volume {volume.get('name')}: {kind} volumes are not allowed"
        for volume in spec.get("volumes") or []
        for kind in sorted(set(volume) - {"name"} - RESTRICTED_VOLUMES)
    ]
    if pod_context.get("runAsUser") == 0:
        problems.append("spec.securityContext.runAsUser is 0")
    if pod_context.get("runAsNonRoot") is False:
        problems.append("spec.securityContext.runAsNonRoot is false")
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type") in SECCOMP_CONFINED
    for where, container in containers(spec):
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
        if context.get("runAsNonRoot") is False or not (pod_non_root or context.get("runAsNonRoot") is True):
            problems.append(f"{where}: securityContext.runAsNonRoot must be true (here or for the pod)")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: securityContext.runAsUser is 0")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if not (seccomp in SECCOMP_CONFINED or (seccomp is None and pod_seccomp)):
            problems.append(f"{where}: securityContext.seccompProfile.type must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{where}: securityContext.capabilities.drop must include ALL")
        problems += [  # the others are refused by baseline already
            f"{where}: securityContext.capabilities.add {name} is not allowed (only NET_BIND_SERVICE)"
            for name in sorted((set(capabilities.get("add") or []) & BASELINE_CAPABILITIES) - {"NET_BIND_SERVICE"})
        ]
    return sorted(set(problems), key=problems.index)


def problems_at(level: str, spec: dict, annotations: dict[str, str]) -> list[str]:
    if level == "restricted":
        return restricted_problems(spec, annotations)
    if level == "baseline":
        return baseline_problems(spec, annotations)
    return []


def strictest_level(spec: dict, annotations: dict[str, str]) -> str:
    return next(level for level in LEVELS if not problems_at(level, spec, annotations))


def pod_templates(docs: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(workload, pod template) for every workload of the build."""
    for doc in docs:
        if doc.get("kind") not in WORKLOAD_KINDS:
            continue
        if doc["kind"] == "Pod":
            yield doc, doc
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            yield doc, doc["spec"]["template"]


def running_pods(docs: list[dict], root: Path = REPO_ROOT) -> Iterator[tuple[dict, str, dict, dict]]:
    """(workload, namespace, pod spec, annotations) as each pod runs: injected where the namespace injects."""
    injected = injection.injected_namespaces(docs)
    mesh = injection.mesh_values(root)
    for workload, template in pod_templates(docs):
        namespace = workload["metadata"].get("namespace", "")
        metadata = template.get("metadata") or {}
        spec = template["spec"]
        if namespace in injected and injection.is_injected(metadata):
            spec = injection.injected_spec(spec, mesh)
        yield workload, namespace, spec, metadata.get("annotations") or {}


def enforced(namespace: dict) -> str:
    return ((namespace.get("metadata") or {}).get("labels") or {}).get(ENFORCE, "privileged")


# --- rules -------------------------------------------------------------------------------------------------------


def pods_admit_under_their_namespaces_level(
    docs: list[dict], gateway: IngressGateway, root: Path = REPO_ROOT
) -> list[str]:
    """Every pod, as Istio injects it, meets the Pod Security level its namespace enforces: the API server would
    refuse it, and its Deployment would never get a pod."""
    levels = {namespace["metadata"]["name"]: enforced(namespace) for namespace in of_kind(docs, "Namespace")}
    return [
        f"{describe(workload)} {problem}, which {levels[namespace]} (enforced on namespace {namespace}) refuses"
        for workload, namespace, spec, annotations in running_pods(docs, root)
        if namespace in levels
        for problem in problems_at(levels[namespace], spec, annotations)
    ]


def the_apps_namespace_is_restricted(docs: list[dict], gateway: IngressGateway) -> list[str]:
    """The app's namespace enforces, audits and warns "restricted", at the Kubernetes version the repo runs."""
    return [problem for namespace in of_kind(docs, "Namespace") for problem in label_problems(namespace, "restricted")]


def label_problems(namespace: dict, level: str) -> list[str]:
    """The namespace enforces, audits and warns `level`, each pinned to the Kubernetes version the repo runs
    (KUBERNETES_VERSION), so that a new Kubernetes release does not change what is admitted unannounced."""
    version = f"v{KUBERNETES_VERSION}"
    expected = {f"pod-security.kubernetes.io/{mode}": level for mode in MODES} | {
        f"pod-security.kubernetes.io/{mode}-version": version for mode in MODES
    }
    labels = namespace["metadata"].get("labels") or {}
    return [
        f"{describe(namespace)}: label {key} is {labels.get(key)!r}, not {value!r}"
        for key, value in expected.items()
        if labels.get(key) != value
    ]


def install_namespace_problems(docs: list[dict]) -> list[str]:
    """Each namespace of the install is labelled with exactly the strictest level all its pods admit under: no
    stricter (its pods would be refused), no looser (it would allow more than its charts need)."""
    needed: dict[str, tuple[str, str]] = {}
    for workload, namespace_name, spec, annotations in running_pods(docs):
        level = strictest_level(spec, annotations)
        if LEVELS.index(level) > LEVELS.index(needed.get(namespace_name, ("restricted", ""))[0]):
            reasons = "; ".join(problems_at(LEVELS[LEVELS.index(level) - 1], spec, annotations))
            needed[namespace_name] = (level, f"{describe(workload)}: {reasons}")
    problems = []
    for namespace in of_kind(docs, "Namespace"):
        level, because = needed.get(namespace["metadata"]["name"], ("restricted", "no pod needs more"))
        found = label_problems(namespace, level)
        if found:
            problems.append(f"{'; '.join(found)} (its pods admit under {level} at most: {because})")
    return problems
