"""Bring-up checks: the cluster runs what the repo declares, with sidecars and a certificate from the test CA."""

import pytest
import requests
import trustme

from e2e.harness import tls
from e2e.harness.settings import HARNESS_LABEL


def test_every_app_pod_has_its_istio_proxy(harness):
    assert harness.pods_without_sidecar(harness.settings.app_namespace, f"!{HARNESS_LABEL}") == []


def test_every_mesh_client_has_its_istio_proxy(harness):
    for namespace in {harness.settings.app_namespace, harness.settings.gateway.namespace}:
        assert harness.pods_without_sidecar(namespace, f"{HARNESS_LABEL}=true,sidecar.istio.io/inject=true") == []


def test_https_on_the_e2e_host_verifies_against_the_test_ca(harness, ca_file):
    s = harness.settings
    assert tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", ca_file).status_code == 200


def test_a_client_trusting_another_ca_refuses_the_gateway(harness, ca_file, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    s = harness.settings
    # The same request with the right CA is answered, so the refusal below is about trust, not a dead listener.
    assert tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", ca_file).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", str(other_ca))


def test_the_certificate_does_not_cover_another_host(harness, ca_file):
    s = harness.settings
    assert tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", ca_file).status_code == 200
    # No server for that name: the handshake fails, or the certificate does not match it. Both are TLS
    # errors; a refused connection would be a plain ConnectionError and fail this test.
    with pytest.raises(requests.exceptions.SSLError):
        tls.get("https", "127.0.0.1", s.https_node_port, f"other.{s.host}", "/", ca_file)
