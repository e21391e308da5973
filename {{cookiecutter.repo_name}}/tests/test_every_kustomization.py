"""Every kustomization of the apps layer builds, validates, and keeps the repo's promises."""

import pytest
from conftest import KUSTOMIZATIONS, schema_problems

from repo_tools import invariants, layout

pytestmark = pytest.mark.gitops_tool_independent

PROMISES = [
    (kustomization, check)
    for kustomization in sorted(KUSTOMIZATIONS)
    for check in invariants.CHECKS
    # The base is never deployed alone: each overlay adds the Issuer for its environment.
    if kustomization != "base" or check not in invariants.OVERLAY_ONLY
]


def test_it_builds(kustomization, rendered):
    assert rendered(kustomization), "the build rendered no documents"


def test_every_document_matches_its_schema(kustomization, rendered):
    assert schema_problems(rendered(kustomization)) == []


@pytest.mark.parametrize(("overlay", "check"), PROMISES)
def test_promise_holds(overlay, check, rendered, gateway):
    assert invariants.CHECKS[check](rendered(overlay), gateway) == []


def public_hosts(docs: list[dict]) -> dict[str, set[str]]:
    """Each host name the Gateway, the routes and the public Certificate are written for."""
    return {
        "Gateway": {
            host
            for gw in docs
            if gw["kind"] == "Gateway"
            for part in gw["spec"].get("servers", []) + gw["spec"].get("listeners", [])
            for host in part.get("hosts", []) + [part.get("hostname", "")]
            if host
        },
        "routes": {
            host
            for doc in docs
            if doc["kind"] in ("VirtualService", "HTTPRoute")
            for host in doc["spec"].get("hosts", []) + doc["spec"].get("hostnames", [])
        },
        "Certificate": {
            host
            for doc in docs
            if doc["kind"] == "Certificate" and not doc["spec"].get("isCA")
            for host in doc["spec"]["dnsNames"]
        },
    }


@pytest.mark.parametrize("overlay", sorted(layout.overlays()))
def test_the_gateway_the_routes_and_the_certificate_name_the_overlays_own_host(overlay, rendered):
    hosts = public_hosts(rendered(overlay))
    assert len(set(map(frozenset, hosts.values()))) == 1, hosts
    assert len(hosts["Gateway"]) == 1 and "PUBLIC-HOST" not in hosts["Gateway"]


def test_no_two_overlays_share_a_host(rendered):
    hosts = {overlay: public_hosts(rendered(overlay))["Gateway"].pop() for overlay in layout.overlays()}
    assert len(set(hosts.values())) == len(hosts), hosts
