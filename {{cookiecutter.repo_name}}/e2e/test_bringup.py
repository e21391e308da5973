"""Bring-up checks: the cluster runs what the repo declares, with sidecars and a certificate from the test CA, and
the app's namespace admits only pods that meet the "restricted" Pod Security Standard."""

import json

import pytest
import requests
import trustme

from e2e.harness import commands, tls
from e2e.harness.retry import Check
from e2e.harness.settings import CURL_IMAGE, HARNESS_LABEL, RESTRICTED_CONTAINER, RESTRICTED_POD
from repo_tools import KUBERNETES_VERSION


def test_every_app_pod_has_its_istio_proxy(harness):
    assert harness.pods_without_sidecar(harness.settings.app_namespace, f"!{HARNESS_LABEL}") == []


def test_every_mesh_client_has_its_istio_proxy(harness):
    for namespace in {harness.settings.app_namespace, harness.settings.gateway.namespace}:
        assert harness.pods_without_sidecar(namespace, f"{HARNESS_LABEL}=true,sidecar.istio.io/inject=true") == []


def answered_over_https(harness, ca_file: str) -> None:
    """The first contact after the Certificate turned Ready: the gateway may not hold the secret yet, so it retries
    like every other probe of the run."""
    s = harness.settings

    def home_page() -> Check:
        try:
            status = tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", ca_file).status_code
        except requests.RequestException as error:
            return Check(False, f"{type(error).__name__}: {error}")
        return Check(status == 200, f"GET https://{s.host}/: {status}")

    harness.eventually_holds(home_page)


def test_https_on_the_e2e_host_verifies_against_the_test_ca(harness, ca_file):
    answered_over_https(harness, ca_file)


def test_a_client_trusting_another_ca_refuses_the_gateway(harness, ca_file, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    s = harness.settings
    # The same request with the right CA is answered, so the refusal below is about trust, not a dead listener.
    answered_over_https(harness, ca_file)
    with pytest.raises(requests.exceptions.SSLError):
        tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", str(other_ca))


def test_the_certificate_does_not_cover_another_host(harness, ca_file):
    s = harness.settings
    answered_over_https(harness, ca_file)
    certificate, why = tls.presented_certificate("127.0.0.1", s.https_node_port, s.host)
    assert certificate is not None and s.host in tls.dns_names(certificate), why
    other = f"other.{s.host}"
    # Envoy has no filter chain for that name: it resets the connection or closes it mid-handshake, depending on
    # timing. What is promised: no answer, and no certificate that names it.
    with pytest.raises(requests.RequestException):
        tls.get("https", "127.0.0.1", s.https_node_port, other, "/", ca_file)
    certificate, why = tls.presented_certificate("127.0.0.1", s.https_node_port, other)
    assert certificate is None or other not in tls.dns_names(certificate), why


def restricted_probe_pod(namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "e2e-pod-security-probe", "namespace": namespace},
        "spec": {
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "probe",
                    "image": CURL_IMAGE,
                    "command": ["sleep", "1"],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }


def test_the_api_server_refuses_a_pod_that_breaks_the_restricted_profile_after_admitting_one_that_meets_it(harness):
    def dry_run(pod: dict):
        command = commands.kubectl(harness.tools, "apply", "--dry-run=server", "-f", "-")
        return commands.run(command, stdin=json.dumps(pod), timeout=60)

    pod = restricted_probe_pod(harness.settings.app_namespace)
    admitted = dry_run(pod)
    assert admitted.returncode == 0, admitted.stderr
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    refused = dry_run(pod)
    assert refused.returncode != 0
    assert f'violates PodSecurity "restricted:v{KUBERNETES_VERSION}"' in refused.stderr, refused.stderr


def test_app_pods_get_istio_validation_from_the_cni_agent_and_no_privileged_init_container(harness):
    namespace = harness.settings.app_namespace
    pods = json.loads(harness.kubectl("-n", namespace, "get", "pods", "-l", f"!{HARNESS_LABEL}", "-o", "json"))["items"]
    assert pods
    for pod in pods:
        init = [container["name"] for container in pod["spec"].get("initContainers", [])]
        assert "istio-validation" in init and "istio-init" not in init, (pod["metadata"]["name"], init)
