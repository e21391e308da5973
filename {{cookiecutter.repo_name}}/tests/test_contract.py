"""The traffic contract holds in every overlay, and breaking a policy, route or mTLS setting breaks its row."""

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import (
    GATEWAY_API,
    NOT_COPIED,
    ROWS,
    app_namespace,
    app_route,
    backend_policy,
    broken_rows,
    contract_outcomes,
    find,
    gateway_api_only,
    istio_api_only,
    row_named,
    run_checks,
    the_gateway,
)

from repo_tools import REPO_ROOT, contract, layout

pytestmark = pytest.mark.gitops_tool_independent

OVERLAYS = sorted(layout.overlays())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_row_holds(overlay, rendered):
    results = contract_outcomes(rendered(overlay), overlay)
    assert [o.line() for o in results.values() if not o.holds] == []
    assert len(results) == len(ROWS)


def test_the_contract_covers_the_promised_rows():
    expected = {row.expected for row in ROWS}
    assert {"redirect https", "denied", "no-answer"} <= expected
    assert sum(row.caller == "internet" for row in ROWS) >= 5


@istio_api_only
def test_an_api_prefix_without_its_slash_sends_lookalike_paths_to_the_backend(rendered):
    docs = rendered("dev")
    api_route = next(
        r for r in find(docs, "VirtualService", "public-routes")["spec"]["http"] if r["name"].endswith("-api")
    )
    api_route["match"] = [{"uri": {"prefix": api_route["match"][0]["uri"]["exact"]}}]
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("ary stays"), row_named("-docs stays")}
    assert f"VirtualService {app_namespace(docs)}/public-routes route" in broken[row_named("ary stays")].line()


def test_a_backend_that_admits_only_the_frontend_answers_the_api_with_403(rendered):
    docs = rendered("dev")
    policy = backend_policy(docs)
    policy["spec"]["rules"] = policy["spec"]["rules"][1:]
    broken = broken_rows(docs, "dev")
    api_row = row_named("/orders reaches the backend")
    assert api_row in broken and broken[api_row].verdict.outcome == "denied"
    assert f"AuthorizationPolicy {app_namespace(docs)}/{policy['metadata']['name']}" in broken[api_row].line()


def test_a_principal_of_sa_default_lets_the_default_pod_in(rendered):
    docs = rendered("dev")
    policy = backend_policy(docs)
    policy["spec"]["rules"][1]["from"][0]["source"]["principals"].append(
        f"cluster.local/ns/{app_namespace(docs)}/sa/default"
    )
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("sa/default")}
    assert "allowed by AuthorizationPolicy" in broken[row_named("sa/default")].line()


def test_a_tls_secret_in_the_app_namespace_fails_every_https_row(rendered):
    docs = rendered("dev")
    certificate = next(doc for doc in docs if doc["kind"] == "Certificate" and not doc["spec"].get("isCA"))
    certificate["metadata"]["namespace"] = app_namespace(docs)
    broken = broken_rows(docs, "dev")
    https_rows = {row.name for row in ROWS if row.caller == "internet" and row.request.scheme == "https"}
    assert set(broken) == https_rows
    assert all(o.verdict.outcome == "tls-failure" for o in broken.values())
    assert f"Certificate {app_namespace(docs)}/" in next(iter(broken.values())).line()


@gateway_api_only
def test_a_regular_expression_for_the_api_catches_lookalike_paths(rendered):
    docs = rendered("dev")
    _canary_rule, api_rule, frontend_rule = app_route(docs)["spec"]["rules"]
    prefix = api_rule["matches"][0]["path"]["value"]
    api_rule["matches"] = [{"path": {"type": "RegularExpression", "value": f"{prefix}.*"}}]
    frontend_rule["matches"] = [{"path": {"type": "RegularExpression", "value": "/.*"}}]
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("ary stays"), row_named("-docs stays")}
    assert (
        f"HTTPRoute {app_namespace(docs)}/public-routes rule {api_rule['name']}"
        in broken[row_named("ary stays")].line()
    )


@gateway_api_only
def test_a_regular_expression_loses_to_any_path_prefix_so_the_api_goes_to_the_frontend(rendered):
    docs = rendered("dev")
    canary_rule, api_rule, frontend_rule = app_route(docs)["spec"]["rules"]
    api_rule["matches"] = [
        {"path": {"type": "RegularExpression", "value": api_rule["matches"][0]["path"]["value"] + "(/.*)?"}}
    ]
    broken = broken_rows(docs, "dev")
    # Every API row but the canary header's, whose PathPrefix still outranks the frontend's.
    header = canary_rule["matches"][0]["headers"][0]
    pinned = (header["name"].lower(), header["value"])
    backend = f"reaches {api_rule['backendRefs'][0]['name']}"
    api_rows = {
        row.name
        for row in ROWS
        if row.caller == "internet" and row.expected in (backend, "rate-limited") and pinned not in row.request.headers
    }
    assert set(broken) == api_rows
    assert "rule " + frontend_rule["name"] in broken[row_named("/orders reaches")].line()


@gateway_api_only
def test_the_http_listener_serving_the_app_instead_of_redirecting_serves_plain_http(rendered):
    docs = rendered("dev")
    docs = [doc for doc in docs if not (doc["kind"] == "HTTPRoute" and doc["metadata"]["name"] == "https-redirect")]
    app_route(docs)["spec"]["parentRefs"][0].pop("sectionName")
    https_listener = the_gateway(docs)["spec"]["listeners"][1]
    the_gateway(docs)["spec"]["listeners"][0]["allowedRoutes"] = https_listener["allowedRoutes"]
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("plain HTTP")}
    assert "listener http serves plain HTTP" in broken[row_named("plain HTTP")].line()


@gateway_api_only
def test_a_route_attached_to_the_wrong_listener_routes_nothing_over_https(rendered):
    docs = rendered("dev")
    app_route(docs)["spec"]["parentRefs"][0]["sectionName"] = "http"
    broken = broken_rows(docs, "dev")
    assert set(broken) == routed_https_rows()
    assert all(o.verdict.outcome == "no-route" and "listener https" in o.line() for o in broken.values())


@gateway_api_only
def test_a_route_for_another_host_is_not_served(rendered):
    docs = rendered("dev")
    app_route(docs)["spec"]["hostnames"] = ["other.example.org"]
    broken = broken_rows(docs, "dev")
    assert set(broken) == routed_https_rows()


def routed_https_rows() -> set[str]:
    """The HTTPS rows a route must serve (or its rate limit refuse); the gateway refuses the others (a missing or
    bad token, a request too large) before routing."""
    return {
        row.name
        for row in ROWS
        if row.caller == "internet"
        and row.request.scheme == "https"
        and (row.expected.startswith("reaches ") or row.expected == "rate-limited")
    }


def test_without_allow_nothing_a_new_workload_admits_everyone(rendered):
    docs = [doc for doc in rendered("dev") if doc["metadata"]["name"] != "allow-nothing"]
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("new workload")}
    assert "no ALLOW policy selects the workload" in broken[row_named("new workload")].line()


def test_permissive_mtls_lets_plaintext_clients_get_an_answer(rendered):
    docs = rendered("dev")
    peer_authentication = next(doc for doc in docs if doc["kind"] == "PeerAuthentication")
    peer_authentication["spec"]["mtls"]["mode"] = "PERMISSIVE"
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row.name for row in ROWS if row.expected == "no-answer"}
    assert all(
        f"PeerAuthentication {app_namespace(docs)}/default accepts plaintext" in o.line() for o in broken.values()
    )


@istio_api_only
def test_http_without_redirect_serves_plain_http(rendered):
    docs = rendered("dev")
    find(docs, "VirtualService", "public-routes")["spec"]["http"].pop(0)
    broken = broken_rows(docs, "dev")
    assert set(broken) == {row_named("plain HTTP")}
    assert (
        f"Gateway {app_namespace(docs)}/public-gateway server 1 serves plain HTTP"
        in broken[row_named("plain HTTP")].line()
    )


def test_a_gateway_bound_to_another_host_serves_no_internet_row(rendered):
    docs = rendered("dev")
    spec = the_gateway(docs)["spec"]
    for part in spec.get("listeners", []):
        part["hostname"] = "other.example.org"
    for part in spec.get("servers", []):
        part["hosts"] = ["other.example.org"]
    broken = broken_rows(docs, "dev")
    # Gateway API: HTTPS listeners are picked by SNI, so the handshake itself fails; plain HTTP finds no listener.
    # Istio's API: no server takes the host, so nothing routes.
    assert {name: o.verdict.outcome for name, o in broken.items()} == {
        row.name: "tls-failure" if GATEWAY_API and row.request.scheme == "https" else "no-route"
        for row in ROWS
        if row.caller == "internet"
    }


def test_an_unmodelled_condition_makes_the_row_unknown_and_fail(rendered):
    docs = rendered("dev")
    backend_policy(docs)["spec"]["rules"][1]["when"] = [{"key": "request.headers[x-team]", "values": ["a"]}]
    broken = broken_rows(docs, "dev")
    frontend_row = row_named("the frontend may call the backend")
    assert broken[frontend_row].verdict.outcome == "unknown"
    assert "has a 'when' condition" in broken[frontend_row].line()


def test_the_command_prints_every_row_and_fails_on_a_mismatch(capsys, tmp_path):
    assert contract.main(["dev"]) == 0
    assert capsys.readouterr().out.count("HOLDS  dev") == len(ROWS)
    rows = yaml.safe_load(contract.CONTRACT.read_text())["rows"]
    frontend_to_backend = next(row for row in rows if row["name"] == row_named("the frontend may call the backend"))
    wrong = tmp_path / "contract.yaml"
    wrong.write_text(yaml.safe_dump({"rows": [frontend_to_backend | {"expect": "denied"}]}))
    assert contract.main(["dev"], wrong) == 1
    name = row_named("the frontend may call the backend")
    assert f"FAILS  dev      {name}: expected denied, got reaches" in capsys.readouterr().out


@pytest.mark.bake_independent
def test_an_unknown_overlay_is_named_with_the_usage(capsys):
    with pytest.raises(SystemExit) as refused:
        contract.main(["nowhere"])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "no such overlay: nowhere (have dev, e2e, prod, staging)" in err and err.startswith("usage: ")


@pytest.mark.bake_independent
def test_a_misspelt_key_or_an_outcome_no_check_can_observe_is_refused_by_row_and_key():
    document = yaml.safe_load((REPO_ROOT / "contract.yaml").read_text())
    assert contract.parse(document) == ROWS
    document["rows"][0]["request"]["schme"] = document["rows"][0]["request"].pop("scheme")
    document["rows"][1]["expect"] = {"reaches": document["rows"][1]["expect"]["reaches"], "within": "1s"}
    document["rows"][2]["expect"] = "allowed"
    with pytest.raises(contract.ContractError) as refused:
        contract.parse(document)
    lines = str(refused.value).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"row 1 ({ROWS[0].name!r}) request: unknown key 'schme'")
    assert lines[1].startswith(f"row 2 ({ROWS[1].name!r}) expect: unknown key 'within'")
    assert lines[2].endswith("not 'allowed'")


@pytest.mark.bake_independent
def test_python_m_repo_tools_names_the_row_and_the_key_of_a_misspelt_contract(tmp_path):
    shutil.copytree(REPO_ROOT, tmp_path / "repo", ignore=shutil.ignore_patterns(*NOT_COPIED))
    contract_file = tmp_path / "repo" / "contract.yaml"
    contract_file.write_text(
        contract_file.read_text().replace("request: {scheme: https, path: /}", "request: {schme: https, path: /}", 1)
    )
    result = run_checks(tmp_path / "repo")
    assert result.returncode == 1
    assert "FAIL contract" in result.stdout
    assert f"contract: contract.yaml: row 1 ({ROWS[0].name!r}) request: unknown key 'schme'" in result.stderr


@pytest.mark.bake_independent
def test_the_mesh_model_loads_no_schema_tooling():
    probe = "import sys, repo_tools.mesh, repo_tools.contract, repo_tools.invariants; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    modules = set(loaded.stdout.strip().strip("[]").replace("'", "").split(", "))
    assert "repo_tools.mesh" in modules
    assert not {m for m in modules if m.split(".")[0] in ("jsonschema", "kubernetes_validate", "cloudcoil", "pydantic")}
