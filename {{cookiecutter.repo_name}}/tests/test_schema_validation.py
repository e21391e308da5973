"""The schema checks catch what a real API server or Istio would reject, and never skip a kind."""

import json
import os

import pytest
from conftest import app_route, gateway_api_only, istio_api_only, needs_every_schema, schema_problems, the_gateway

from repo_tools import CACHE_UNUSED_SECONDS, charts, schemas
from repo_tools.schemas import installed_crd_schemas, schema_errors

pytestmark = pytest.mark.gitops_tool_independent


def test_a_rendered_overlay_passes(rendered):
    assert schema_problems(rendered("dev")) == []


def test_an_unknown_field_in_a_built_in_kind_fails(rendered):
    deployment = next(doc for doc in rendered("dev") if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors = schema_errors(deployment)
    assert len(errors) == 1 and "imagePullPolicyy" in errors[0] and errors[0].startswith("Deployment ")


def test_a_wrong_type_in_a_built_in_kind_fails(rendered):
    service = next(doc for doc in rendered("dev") if doc["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eighty"
    assert any("spec.ports.0.port" in error for error in schema_errors(service))


def test_a_bad_enum_in_an_istio_kind_fails(rendered):
    peer_authentication = next(doc for doc in rendered("dev") if doc["kind"] == "PeerAuthentication")
    peer_authentication["spec"]["mtls"]["mode"] = "STRCT"
    errors = schema_errors(peer_authentication)
    assert errors and "spec.mtls.mode" in errors[0]


@istio_api_only
def test_a_bad_enum_in_an_istio_gateway_fails(rendered):
    gateway = the_gateway(rendered("dev"))
    gateway["spec"]["servers"][1]["tls"]["mode"] = "SIMPL"
    errors = schema_errors(gateway)
    assert errors and "spec.servers.1.tls.mode" in errors[0]


@gateway_api_only
@needs_every_schema
def test_gateway_api_kinds_are_checked_strictly_against_the_pinned_crds(rendered):
    docs = rendered("dev")
    gateway, route = the_gateway(docs), app_route(docs)
    assert schema_errors(gateway) == schema_errors(route) == []
    gateway["spec"]["listeners"][1]["tls"]["mode"] = "Terminat"
    route["spec"]["rules"][0]["backendRef"] = route["spec"]["rules"][0].pop("backendRefs")
    assert any("spec.listeners.1.tls.mode" in error for error in schema_errors(gateway))
    assert schema_errors(route) == [
        f"HTTPRoute {route['metadata']['namespace']}/public-routes: spec.rules.0.backendRef: unknown field"
    ]


def test_an_unknown_field_in_an_istio_kind_fails(rendered):
    peer_authentication = next(doc for doc in rendered("dev") if doc["kind"] == "PeerAuthentication")
    peer_authentication["spec"]["mtls"]["strict"] = True
    assert schema_errors(peer_authentication) == [
        f"PeerAuthentication {peer_authentication['metadata']['namespace']}/default: spec.mtls.strict: unknown field"
    ]


def test_a_bad_enum_in_a_cert_manager_kind_fails(rendered):
    certificate = next(doc for doc in rendered("dev") if doc["kind"] == "Certificate")
    certificate["spec"]["privateKey"]["algorithm"] = "DSA"
    assert any("spec.privateKey.algorithm" in error for error in schema_errors(certificate))


def test_an_unknown_field_in_a_cert_manager_kind_fails(rendered):
    certificate = next(doc for doc in rendered("dev") if doc["kind"] == "Certificate")
    certificate["spec"]["dnsName"] = certificate["spec"].pop("dnsNames")
    assert any(error.endswith("spec.dnsName: unknown field") for error in schema_errors(certificate))


@gateway_api_only
def test_the_crds_cel_rules_refuse_what_the_api_server_would(rendered):
    if not installed_crd_schemas():
        pytest.skip(f"no recorded CRDs: set {charts.RECORDED_FIXTURES} to validate against the installed versions")
    docs = rendered("dev")
    gateway, route = the_gateway(docs), app_route(docs)
    route["spec"]["rules"][0]["filters"] = [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]
    route["spec"]["rules"][1]["matches"][0]["path"]["value"] = "home"
    gateway["spec"]["listeners"][1]["name"] = gateway["spec"]["listeners"][0]["name"]
    assert [error.split(": ", 1)[1] for error in schema_errors(route)] == [
        "spec.rules.0: RequestRedirect filter must not be used together with backendRefs",
        "spec.rules.1.matches.0.path: value must be an absolute path and start with '/' when type one of "
        "['Exact', 'PathPrefix']",
    ]
    assert [error.split(": ", 1)[1] for error in schema_errors(gateway)] == [
        "spec.listeners: Listener name must be unique within the Gateway"
    ]


@pytest.mark.bake_independent
def test_a_kind_without_a_schema_fails_instead_of_being_skipped():
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert schema_errors(doc) == [
        "Widget w: no schema for apiVersion 'example.com/v1' kind 'Widget'; add its model to "
        "repo_tools/schemas.py CUSTOM_RESOURCE_MODELS"
    ]


@pytest.mark.bake_independent
def test_an_unknown_kind_in_a_known_istio_group_fails():
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "Gatewey", "metadata": {"name": "g"}}
    assert "no schema" in schema_errors(doc)[0]


def test_with_recorded_crds_every_custom_resource_is_checked_against_the_installed_version(rendered):
    crds = installed_crd_schemas()
    if not crds:
        pytest.skip(f"no recorded CRDs: set {charts.RECORDED_FIXTURES} to validate against the installed versions")
    custom = [
        doc
        for name in ("e2e", "prod")
        for doc in rendered(name)
        if doc["apiVersion"].split("/")[0].endswith(("istio.io", "cert-manager.io"))
    ]
    assert custom and all((doc["apiVersion"], doc["kind"]) in crds for doc in custom)
    certificate = next(doc for doc in custom if doc["kind"] == "Certificate")
    certificate["spec"]["dnsName"] = certificate["spec"].pop("dnsNames")
    assert schema_errors(certificate) == [
        f"Certificate {certificate['metadata']['namespace']}/{certificate['metadata']['name']}: "
        "spec.dnsName: unknown field"
    ]


def test_python_m_repo_tools_keeps_results_per_document_content_and_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(schemas, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(schemas, "_disk", None)  # the session's kept verdicts come back after this test
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"prots": []}}
    schemas.use_disk_cache()
    first = schemas.schema_errors(service)
    assert len(first) == 1 and "prots" in first[0]
    schemas.save_disk_cache()
    saved = json.loads(schemas.cache_file().read_text())
    assert list(saved.values()) == [[error.removeprefix("Service s: ") for error in first]]
    service["spec"] = {"ports": [{"port": 80}]}
    assert schemas.schema_errors(service) == []  # new content, new key: validated, not looked up
    fingerprint = schemas.fingerprint()
    monkeypatch.setattr(schemas, "KUBERNETES_VERSION", "1.0")
    assert schemas.fingerprint() != fingerprint


def test_runs_sharing_a_cache_keep_each_others_results_and_another_kubernetes_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(schemas, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(schemas, "_disk", None)  # the session's kept verdicts come back after this test
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
    other_version = tmp_path / "schema-results-another-kubernetes.json"
    other_version.write_text("{}")
    schemas.use_disk_cache()
    assert schemas.schema_errors(service) == []
    schemas.cache_file().write_text(json.dumps({"saved-by-another-run": []}))  # while this run validated
    schemas.save_disk_cache()
    assert len(json.loads(schemas.cache_file().read_text())) == 2
    assert other_version.is_file()
    long_ago = other_version.stat().st_mtime - CACHE_UNUSED_SECONDS - 1
    os.utime(other_version, (long_ago, long_ago))
    schemas.save_disk_cache()
    assert not other_version.exists()  # unused for a day: results of code or versions no longer in use
