"""The gateway's limits: a rate limit on every API route, the largest headers and body, and the path every route
and policy sees. Each mistake a change could make is caught by the contract row or the rule it breaks."""

import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROWS, broken_rows, find, schema_problems

from repo_tools import REPO_ROOT, contract, edge, install, invariants, kustomize, layout
from repo_tools.layout import ingress_gateway

pytestmark = pytest.mark.gitops_tool_independent

RATE_ROWS = {row.name for row in ROWS if row.request.exceeds == "rate-limit" and row.expected == "rate-limited"}


def rate_limit(docs: list[dict]) -> dict:
    return find(docs, "EnvoyFilter", "api-rate-limit")


def route_patches(docs: list[dict]) -> list[dict]:
    return [patch for patch in rate_limit(docs)["spec"]["configPatches"] if patch["applyTo"] == "HTTP_ROUTE"]


def bucket_config(patch: dict) -> dict:
    return patch["patch"]["value"]["typed_per_filter_config"][edge.RATE_LIMIT_FILTER]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """What install.mesh_config_problems reads: the istiod values and the apps layer's Telemetry and token rule."""
    for part in ("infrastructure/istiod", "apps/base/observability", "apps/base/edge-auth"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part)
    return tmp_path


def rule_problems(rule, docs: list[dict]) -> list[str]:
    return rule(docs, ingress_gateway())


@pytest.mark.parametrize("overlay", sorted(layout.overlays()))
def test_every_api_route_has_the_environments_rate_limit(rendered, overlay):
    limits = edge.rate_limits(rendered(overlay), ingress_gateway())
    requests = int(layout.setting(layout.overlays()[overlay], "api-rate-limit", "requests"))
    window = layout.setting(layout.overlays()[overlay], "api-rate-limit", "window")
    assert limits and {(limit.value, limit.window) for limit in limits.values()} == {(requests, window)}


def test_the_limit_removed_in_prod_is_caught_by_the_burst_rows(rendered):
    docs = [doc for doc in rendered("prod") if doc.get("metadata", {}).get("name") != "api-rate-limit"]
    broken = broken_rows(docs, "prod")
    assert set(broken) == RATE_ROWS
    assert all("expected rate-limited, got reaches" in outcome.line() for outcome in broken.values())


def test_a_limit_envoy_would_not_enforce_is_no_limit(rendered):
    # Envoy enforces a local rate limit for 0% of requests unless filter_enforced says otherwise.
    docs = rendered("prod")
    for patch in route_patches(docs):
        bucket_config(patch).pop("filter_enforced")
    assert set(broken_rows(docs, "prod")) == RATE_ROWS


def test_a_renamed_route_loses_its_limit_and_both_rules_say_so(rendered):
    docs = rendered("prod")
    route = next(
        patch["match"]["routeConfiguration"]["vhost"]["route"]
        for patch in route_patches(docs)
        if patch["match"]["routeConfiguration"]["vhost"]["route"]["name"].endswith("-api")
    )
    renamed = route["name"] = route["name"] + "-v2"
    misnamed = rule_problems(edge.rate_limits_name_routes_of_the_build, docs)
    assert len(misnamed) == 1 and f"limits route {renamed}, which no route at the gateway is called" in misnamed[0]
    unlimited = rule_problems(edge.routes_to_a_service_are_limited_alike, docs)
    assert len(unlimited) == 1 and "with a rate limit, but has none" in unlimited[0]
    assert "a POST burst on" in " ".join(broken_rows(docs, "prod"))


def test_a_misspelt_envoy_field_is_refused_as_envoy_would(rendered):
    docs = rendered("prod")
    assert rule_problems(edge.envoy_patches_are_envoy_config, docs) == []
    bucket = bucket_config(route_patches(docs)[0])["token_bucket"]
    bucket["max_token"] = bucket.pop("max_tokens")
    problems = rule_problems(edge.envoy_patches_are_envoy_config, docs)
    assert len(problems) == 1 and "not a valid Route" in problems[0] and "max_token" in problems[0]


def test_a_body_limit_removed_lets_the_oversized_body_through(rendered):
    docs = rendered("prod")
    filters = find(docs, "EnvoyFilter", "request-limits")["spec"]["configPatches"]
    filters[:] = [patch for patch in filters if patch["applyTo"] != "HTTP_FILTER"]
    assert set(broken_rows(docs, "prod")) == {next(row.name for row in ROWS if row.request.exceeds == "body-limit")}


def test_headers_over_the_limit_get_431_even_at_envoys_default(rendered):
    docs = rendered("prod")
    assert edge.header_limit(docs, ingress_gateway()).value == int(
        layout.setting(layout.overlays()["prod"], "request-limits", "maxHeadersKb")
    )
    docs = [doc for doc in docs if doc.get("metadata", {}).get("name") != "request-limits"]
    assert edge.header_limit(docs, ingress_gateway()).describe("KiB") == "60 KiB (Envoy's default)"


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        ("/api/orders", "/api/orders"),
        ("//api//orders/", "/api/orders/"),
        ("/api%2Forders", "/api/orders"),
        ("/api%5corders", "/api/orders"),
        ("/api/./orders/.", "/api/orders/"),
        ("/api/../admin", "/admin"),
        ("/../../admin", "/admin"),
        ("/%61pi/orders?next=/x/../y", "/api/orders?next=/x/../y"),
        ("/api/%3f", "/api/%3f"),
        ("/%%32%46", "/%252F"),
    ],
)
def test_paths_are_read_as_the_gateway_normalizes_them(sent, seen):
    assert edge.normalized(sent) == seen


def test_the_mesh_normalizes_paths_as_the_contract_reads_them(repo_copy):
    assert install.mesh_config_problems() == []
    values_file = repo_copy / "infrastructure" / "istiod" / "values.yaml"
    values = yaml.safe_load(values_file.read_text())
    values["meshConfig"]["pathNormalization"]["normalization"] = "BASE"
    values_file.write_text(yaml.safe_dump(values))
    assert install.mesh_config_problems(repo_copy) == [
        "infrastructure/istiod/values.yaml: meshConfig.pathNormalization.normalization is BASE; the traffic "
        f"contract and the gateway's policies are read with {edge.NORMALIZATION} (repo_tools/edge.py)"
    ]


def test_the_gateway_logs_request_id_route_and_subject_and_never_a_token(repo_copy):
    assert install.mesh_config_problems(repo_copy) == []
    values_file = repo_copy / "infrastructure" / "istiod" / "values.yaml"
    values = yaml.safe_load(values_file.read_text())
    labels = values["meshConfig"]["extensionProviders"][0]["envoyFileAccessLog"]["logFormat"]["labels"]
    del labels["route"]
    labels["path"] = "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
    labels["credentials"] = "%REQ(Authorization)%"
    values_file.write_text(yaml.safe_dump(values))
    problems = install.mesh_config_problems(repo_copy)
    assert len(problems) == 3, problems
    said = "\n".join(problems)
    assert "field path: REQ(X-ENVOY-ORIGINAL-PATH?:PATH) writes the query string" in said
    assert "field credentials: REQ(Authorization) writes the authorization header" in said
    assert "has no field for the route (%ROUTE_NAME%)" in said


def test_the_web_application_firewall_sits_on_the_gateway_with_its_rules_pinned(tmp_path):
    shutil.copytree(REPO_ROOT / "apps", tmp_path / "apps")
    overlay = tmp_path / "apps" / "overlays" / "dev"
    kustomization = (overlay / "kustomization.yaml").read_text()
    placed = "  - ../../components/ingress-gateway\n"
    assert placed in kustomization
    (overlay / "kustomization.yaml").write_text(
        kustomization.replace(placed, "  - ../../components/web-application-firewall\n" + placed, 1)
    )
    docs = kustomize.build(overlay)
    gateway = ingress_gateway()
    firewall = find(docs, "WasmPlugin", "web-application-firewall")
    spec = firewall["spec"]
    assert firewall["metadata"]["namespace"] == gateway.namespace
    assert (
        [ref["name"] for ref in spec.get("targetRefs", [])] == [gateway.gateway_name]
        if gateway.gateway_api
        else (spec["selector"]["matchLabels"].items() <= gateway.pod_labels.items())
    )
    # The image's release pins the rule set it embeds: a version tag, never "latest".
    assert re.fullmatch(r"oci://ghcr\.io/corazawaf/coraza-proxy-wasm:\d+\.\d+\.\d+", spec["url"])
    assert spec["failStrategy"] == "FAIL_CLOSE"
    assert schema_problems(docs) == []
    assert invariants.violations(docs, gateway) == []
    path = layout.overlays()["dev"]
    outcomes = contract.check("dev", docs, ROWS, gateway, layout.public_host(path), layout.api_tokens(path))
    assert [outcome.line() for outcome in outcomes if not outcome.holds] == []
