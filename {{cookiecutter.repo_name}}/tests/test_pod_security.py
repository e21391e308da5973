"""The app's namespace enforces the "restricted" Pod Security Standard, and every pod of every overlay, as Istio
injects it, admits under it: each way of breaking a pod is refused, naming the pod, the container and the field."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from repo_tools import REPO_ROOT, layout, pod_security
from repo_tools.layout import ingress_gateway


def refused(docs: list[dict], root: Path = REPO_ROOT) -> list[str]:
    return pod_security.pods_admit_under_their_namespaces_level(docs, ingress_gateway(), root)


def app_deployment(docs: list[dict]) -> dict:
    return next(doc for doc in docs if doc["kind"] == "Deployment")


@pytest.mark.parametrize("overlay", sorted(layout.overlays()))
def test_every_pod_as_istio_injects_it_admits_under_restricted(rendered, overlay):
    docs = rendered(overlay)
    assert pod_security.the_apps_namespace_is_restricted(docs, ingress_gateway()) == []
    assert refused(docs) == []
    injected = [spec for _, _, spec, _ in pod_security.running_pods(docs)]
    assert injected and all("istio-validation" in [c["name"] for c in spec["initContainers"]] for spec in injected)


def test_a_capability_added_to_a_container_is_refused_naming_pod_container_and_field(rendered):
    docs = rendered("prod")
    deployment = app_deployment(docs)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]
    name = deployment["metadata"]["name"]
    assert refused(docs) == [
        f"Deployment {deployment['metadata']['namespace']}/{name} container {container['name']}: "
        "securityContext.capabilities.add NET_ADMIN is not allowed, which restricted (enforced on namespace "
        f"{deployment['metadata']['namespace']}) refuses"
    ]


def test_a_pod_that_may_run_as_root_is_refused(rendered):
    docs = rendered("prod")
    del app_deployment(docs)["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    problems = refused(docs)
    assert len(problems) == 1 and "securityContext.runAsNonRoot must be true" in problems[0]


def test_without_istios_cni_agent_the_injected_init_container_needs_net_admin_and_root(rendered, tmp_path):
    values_file = tmp_path / "infrastructure" / "istiod" / "values.yaml"
    shutil.copytree(REPO_ROOT / "infrastructure" / "istiod", values_file.parent)
    values = yaml.safe_load(values_file.read_text())
    values["pilot"]["cni"]["enabled"] = False
    values_file.write_text(yaml.safe_dump(values))
    docs = rendered("dev")
    problems = refused(docs, tmp_path)
    workloads = {doc["metadata"]["name"] for doc in docs if doc["kind"] in pod_security.WORKLOAD_KINDS}
    assert {problem.split(" container ")[0].split("/")[-1] for problem in problems} == workloads
    said = "\n".join(problems)
    assert "container istio-init: securityContext.capabilities.add NET_ADMIN is not allowed" in said
    assert "container istio-init: securityContext.capabilities.add NET_RAW is not allowed" in said
    assert "container istio-init: securityContext.runAsNonRoot must be true" in said


def test_a_namespace_that_stops_enforcing_or_pins_another_version_is_caught(rendered):
    docs = rendered("dev")
    namespace = next(doc for doc in docs if doc["kind"] == "Namespace")
    labels = namespace["metadata"]["labels"]
    labels[pod_security.ENFORCE] = "baseline"
    labels["pod-security.kubernetes.io/warn-version"] = "latest"
    problems = pod_security.the_apps_namespace_is_restricted(docs, ingress_gateway())
    assert len(problems) == 2
    assert f"label {pod_security.ENFORCE} is 'baseline', not 'restricted'" in problems[0]
    assert "warn-version is 'latest'" in problems[1]


def pod(**spec: object) -> dict:
    return {"containers": [{"name": "app", "securityContext": {}}], **spec}


@pytest.mark.parametrize(
    ("spec", "level", "problem"),
    [
        (pod(hostNetwork=True), "privileged", "spec.hostNetwork is true"),
        (
            {"containers": [{"name": "app", "securityContext": {"privileged": True}}]},
            "privileged",
            "container app: securityContext.privileged is true",
        ),
        (pod(volumes=[{"name": "node", "hostPath": {"path": "/"}}]), "privileged", "hostPath volumes"),
        (
            pod(securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}),
            "privileged",
            "kernel.msgmax is not a safe sysctl",
        ),
        (
            pod(securityContext={"seccompProfile": {"type": "Unconfined"}}),
            "privileged",
            "seccompProfile.type is Unconfined",
        ),
        (pod(), "baseline", "allowPrivilegeEscalation must be false"),
        (
            {"containers": [{"name": "app", "readinessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}}]},
            "privileged",
            "readinessProbe.httpGet.host",
        ),
        (
            pod(securityContext={"runAsNonRoot": False}),
            "baseline",
            "spec.securityContext.runAsNonRoot is false",
        ),
    ],
)
def test_each_pod_security_check_refuses_what_the_standard_refuses(spec, level, problem):
    assert pod_security.strictest_level(spec, {}) == level
    stricter = pod_security.LEVELS[pod_security.LEVELS.index(level) - 1]
    assert any(problem in found for found in pod_security.problems_at(stricter, spec, {}))


def test_a_hardened_pod_admits_under_restricted_and_a_safe_sysctl_is_allowed():
    hardened = {
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [
            {
                "name": "app",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    assert pod_security.strictest_level(hardened, {}) == "restricted"
    broken = copy.deepcopy(hardened)
    broken["containers"][0]["securityContext"]["capabilities"]["add"] = ["CHOWN"]
    assert pod_security.strictest_level(broken, {}) == "baseline"


def test_the_database_pod_admits_under_restricted_too(rendered):
    docs = rendered("dev")
    statefulsets = [doc for doc in docs if doc["kind"] == "StatefulSet"]
    if not statefulsets:
        pytest.skip("this repo has no database")
    assert refused(docs) == []
    statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert any("securityContext.privileged is true" in problem for problem in refused(docs))
