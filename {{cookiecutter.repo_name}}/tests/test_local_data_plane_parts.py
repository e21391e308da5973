"""The local data plane's parts that need neither root nor its programs: what a proxy is started with, what stands
in for an app, how kube-proxy's part passes a refused connection on, and what each mutation of the repo changes."""

import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
import requests
import yaml

from e2e.controlplane import dataplane, mutations
from e2e.controlplane.bringup import without_istio_stats
from e2e.controlplane.cluster import free_port
from e2e.harness import scenarios, traffic
from repo_tools import REPO_ROOT, contract


@pytest.mark.answer_independent
def test_a_proxy_gets_the_environment_and_arguments_the_kubelet_would_give_its_container():
    pod = {
        "metadata": {"name": "backend-1", "namespace": "shop", "labels": {"app": "backend"}},
        "spec": {"serviceAccountName": "backend", "nodeName": "node"},
        "status": {"podIP": "10.244.0.7"},
    }
    container = {
        "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}},
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}},
            {"name": "MEMORY", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1"}}},
            {"name": "DOMAIN", "value": "$(POD_NAMESPACE).svc.cluster.local"},
        ],
    }
    environment = dataplane.container_environment(pod, container)
    assert environment == {
        "POD_NAMESPACE": "shop",
        "INSTANCE_IP": "10.244.0.7",
        "SERVICE_ACCOUNT": "backend",
        "APP": "backend",
        "CPU": "2",  # rounded up to whole cores
        "MEMORY": str(2**30),
        "DOMAIN": "shop.svc.cluster.local",
    }
    assert dataplane.expand("--domain $(POD_NAMESPACE).svc $(UNSET)", environment) == "--domain shop.svc $(UNSET)"


@pytest.mark.answer_independent
def test_the_redirection_is_the_validation_containers_own_arguments_applied_instead_of_checked():
    validation = {
        "name": "istio-validation",
        "args": ["istio-iptables", "-p", "15001", "--run-validation", "--skip-rule-apply"],
    }
    pod = dataplane.Pod("shop", "a", "uid-1", "10.244.0.9", {"initContainers": [validation], "containers": []}, {}, {})
    assert pod.redirection() == ["istio-iptables", "-p", "15001"]
    gateway = dataplane.Pod(
        "istio-system", "gw", "uid-2", "10.244.0.3", {"containers": [{"name": "istio-proxy"}]}, {}, {}
    )
    assert gateway.redirection() is None and gateway.proxy() == {"name": "istio-proxy"}


@pytest.mark.answer_independent
def test_an_image_is_known_by_its_repository_whatever_its_registry_tag_or_digest():
    assert dataplane.repository("docker.io/istio/proxyv2:1.30.4") == "istio/proxyv2"
    assert dataplane.repository("localhost:5000/echo@sha256:abc") == "localhost:5000/echo"
    assert dataplane.repository("jmalloc/echo-server") == "jmalloc/echo-server"


@pytest.mark.answer_independent
def test_the_mesh_config_loses_only_its_default_metrics_provider():
    mesh = {"defaultProviders": {"metrics": ["prometheus"], "accessLogging": ["envoy"]}, "trustDomain": "cluster.local"}
    doc = {"kind": "ConfigMap", "metadata": {"name": "istio"}, "data": {"mesh": yaml.safe_dump(mesh)}}
    changed = yaml.safe_load(without_istio_stats(doc)["data"]["mesh"])
    assert changed == {"defaultProviders": {"accessLogging": ["envoy"]}, "trustDomain": "cluster.local"}
    assert yaml.safe_load(doc["data"]["mesh"]) == mesh
    other = {"kind": "ConfigMap", "metadata": {"name": "istio-sidecar-injector"}, "data": {"config": "x"}}
    assert without_istio_stats(other) is other


@pytest.fixture
def echo():
    port = free_port()
    server = subprocess.Popen([sys.executable, str(dataplane.STANDINS), "echo", str(port), "backend-5d9f7c-x2x4q"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait()


@pytest.mark.answer_independent
def test_the_echo_stand_in_answers_as_the_kind_runs_echo_server_with_its_pod_and_every_header(echo):
    response = requests.get(
        f"{echo}/api/orders?x=1", headers={"x-request-id": "abc", "X-Jwt-Subject": "e2e"}, timeout=5
    )
    assert response.status_code == 200
    assert scenarios.SERVED_BY.search(response.text).group(1) == "backend-5d9f7c-x2x4q"
    assert "GET /api/orders?x=1 HTTP/1.1" in response.text
    assert traffic.served_request_id(response.text) == "abc"
    assert "X-Jwt-Subject: e2e\n" in response.text and "X-Request-Id: abc\n" in response.text


@pytest.mark.answer_independent
def test_a_refused_connection_reaches_the_client_as_a_reset_through_kube_proxys_part():
    """A sidecar refuses plaintext by resetting the connection; a client without one must see exit 56 (reset), as
    through kube-proxy's address rewriting, not 52 (closed)."""
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    refusing.listen()

    def reset_each() -> None:
        connection, _ = refusing.accept()
        connection.recv(100)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    threading.Thread(target=reset_each, daemon=True).start()
    node_port = free_port()
    backend_port = refusing.getsockname()[1]
    # A NodePort on 127.0.0.1, as kind maps it there (a ClusterIP would need an address on the node's bridge).
    service = {
        "metadata": {"name": "frontend", "namespace": "shop"},
        "spec": {"clusterIP": "127.0.0.1", "ports": [{"name": "http", "port": node_port}]},
    }
    piece = {
        "metadata": {"namespace": "shop", "labels": {"kubernetes.io/service-name": "frontend"}},
        "ports": [{"name": "http", "port": backend_port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }
    proxy = dataplane.UserspaceProxy()
    try:
        proxy.follow([service], [piece], {"127.0.0.1"})
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{node_port}/"], capture_output=True, check=False
        )
    finally:
        proxy.stop()
    assert result.returncode == scenarios.CURL_NO_ANSWER, result.stderr


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda mutation: mutation.name)
def test_each_mutation_changes_the_repo_and_names_rows_of_the_contract_it_breaks(mutation, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "apps", copy / "apps")
    before = {path: path.read_text() for path in copy.rglob("*.yaml")}
    mutation.change(copy)
    after = {path: path.read_text() for path in copy.rglob("*.yaml") if path.exists()}
    assert before != after, f"{mutation.name} changed nothing: {mutation.what}"
    broken = [row.name for row in contract.load() if mutation.breaks(row)]
    assert broken, f"no row of contract.yaml guards what {mutation.name} breaks"
    assert mutations.control_row(contract.load()).name not in broken


def test_a_mutated_copy_still_builds(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(".git", ".nox", ".venv", "__pycache__"))
    for mutation in mutations.MUTATIONS:
        mutation.change(copy)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from repo_tools import kustomize; kustomize.render(__import__('pathlib').Path('apps/overlays/e2e'))",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
