"""Staging's and prod's way to a certificate, for real: ACME HTTP-01 answered through the ingress gateway.

Runs last (conftest.py orders it so): it switches the Gateway to the ACME certificate for a moment.
"""

import base64
from pathlib import Path

import pytest
import requests
from cryptography import x509

from e2e.harness import acme, tls
from e2e.harness.retry import Check, eventually


@pytest.fixture(scope="module")
def pebble_root(harness, tmp_path_factory) -> str:
    harness.issue_acme_certificate()
    return harness.pebble_root(tmp_path_factory.mktemp("pebble"))


def https_status(harness, ca_file: str) -> Check:
    s = harness.settings
    try:
        return Check(tls.get("https", "127.0.0.1", s.https_node_port, s.host, "/", ca_file).status_code == 200, "200")
    except requests.exceptions.RequestException as error:
        return Check(False, f"{type(error).__name__}: {error}")


def test_the_http01_challenge_passes_through_the_gateway_and_a_certificate_for_the_host_is_issued(harness, pebble_root):
    encoded = harness.kubectl(
        "-n", harness.settings.gateway.namespace, "get", "secret", acme.SECRET, "-o", "jsonpath={.data.tls\\.crt}"
    )
    leaf, *chain = x509.load_pem_x509_certificates(base64.b64decode(encoded))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == [harness.settings.host]
    assert chain and leaf.issuer == chain[0].subject  # issued by Pebble's intermediate, which cert-manager stored
    root = x509.load_pem_x509_certificate(Path(pebble_root).read_bytes())
    assert chain[-1].issuer == root.subject


def test_https_serves_the_acme_certificate_to_a_client_trusting_only_pebble(harness, pebble_root, ca_file):
    if harness.agent:
        pytest.skip(f"{harness.agent} owns the Gateway and would undo the switch; the run without --gitops shows it")
    # While the gateway serves the test CA's certificate, trusting only Pebble's root fails, and the test CA's
    # succeeds: the listener is up, and the switch below is what makes the Pebble client succeed.
    assert https_status(harness, ca_file).holds
    assert not https_status(harness, pebble_root).holds
    with harness.gateway_serving(acme.SECRET):
        eventually(lambda: https_status(harness, pebble_root), timeout=120, consecutive=3)
    eventually(lambda: https_status(harness, ca_file), timeout=120, consecutive=3)
