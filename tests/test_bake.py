"""Every chosen combination of answers bakes a repo that builds, validates and passes its own tests."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BAKE,
    DEFAULT_ANSWERS,
    FIXTURES,
    bake,
    build_overlays,
    fixtures_environment,
    run_generated_tests,
    unparsable_yaml_files,
    unrendered_files,
)

NON_DEFAULT = {
    "project_name": "Storefront",
    "namespace": "storefront",
    "domain": "shop.acme.test",
    "frontend_name": "web",
    "frontend_image": "registry.acme.test:5000/team/web:2.1.0",
    "frontend_port": "8000",
    "frontend_health_path": "/ready",
    "backend_name": "orders",
    "backend_image": "ghcr.io/acme/orders@sha256:" + "a" * 64,
    "backend_port": "8080",
    "backend_health_path": "/internal/health",
    "api_prefix": "/v2/orders-api",
    "api_timeout_seconds": "7",
    "api_retry_attempts": "3",
    "jwt_issuer": "https://login.acme.test:8443/realms/storefront",
    "jwks_uri": "https://login.acme.test:8443/realms/storefront/protocol/openid-connect/certs",
    "acme_email": "certs@acme.test",
}
LONG = "x" * 53 + "-long-name"  # 63 characters, the most a label may have
UNUSUAL = {
    "project_name": "Ünïcode Café & Co",
    "namespace": "42" + "n" * 61,
    "domain": ".".join(["d" * 63, "e" * 63, "f" * 63, "example"]),
    "frontend_name": LONG,
    "backend_name": LONG[:56],  # its canary's Service adds "-canary"
    "frontend_port": "1",
    "backend_port": "65535",
    "api_prefix": "/api.v2",
    "api_timeout_seconds": "300",
    "api_retry_attempts": "0",
    "include_database": True,
    "database_name": "pg-17",
    "database_port": "6543",
    "kubernetes_version": "1.36",
}
ISTIO_API = {"ingress_api": "istio"}
COMBINATIONS = {  # ingress_api x gitops_tool x include_database, then unusual answers
    "defaults": {},
    "flux": {"gitops_tool": "flux"},
    "database": {"include_database": True},
    "database-with-flux": {"include_database": True, "gitops_tool": "flux"},
    "istio-api": ISTIO_API,
    "istio-api-flux": ISTIO_API | {"gitops_tool": "flux"},
    "istio-api-database": ISTIO_API | {"include_database": True},
    "istio-api-database-with-flux": ISTIO_API | {"include_database": True, "gitops_tool": "flux"},
    "non-default-names-ports-prefix": NON_DEFAULT,
    "non-default-with-database-istio-api": NON_DEFAULT
    | ISTIO_API
    | {"include_database": True, "database_name": "ledger"},
    "unusual-but-valid": UNUSUAL,
}
# Between them: both ingress APIs, both GitOps tools, with and without the database. They run the generated tests
# marked answer_independent (the tooling's code, whatever the answers), which the other bakes leave out.
EVERY_CODE_PATH = {"defaults", "istio-api-database-with-flux"}
# The one bake that runs the tests marked bake_independent: the tooling on inputs of its own, by code no answer
# chooses.
ONE_BAKE = "defaults"
# The markers of the tooling's tests, which the bakes above run apart from the rest of their suite.
TOOLING_MARKERS = ("answer_independent", "bake_independent")
# Generated tests whose outcome one answer does not change, by their marker: a bake leaves them to an earlier bake
# (in ORDER) whose answers differ from its own in that answer alone.
INDEPENDENT_OF = {"gitops_tool": "gitops_tool_independent", "include_database": "database_independent"}
# The order those earlier bakes are found in, and the order the workers take the bakes in: the bakes that run every
# generated test first (they take longest, and the workers should finish together), then each single answer changed.
ORDER = [
    "defaults",
    "istio-api-database-with-flux",
    "istio-api",
    "non-default-names-ports-prefix",
    "non-default-with-database-istio-api",
    "unusual-but-valid",
    "flux",
    "database",
    "database-with-flux",
    "istio-api-flux",
    "istio-api-database",
]
_baked: dict[str, Any] = {}


def answers_of(combination: str) -> dict[str, Any]:
    return DEFAULT_ANSWERS | COMBINATIONS[combination]


def left_to_earlier_bakes(combination: str) -> list[str]:
    """The markers of INDEPENDENT_OF whose tests this bake leaves out: those where an earlier bake differs from this
    one in that answer alone."""
    answers = answers_of(combination)
    left = []
    for answer, marker in INDEPENDENT_OF.items():
        earlier = [answers_of(other) for other in ORDER[: ORDER.index(combination)]]
        if any({key for key in answers if answers[key] != other[key]} == {answer} for other in earlier):
            left.append(marker)
    return left


def baked_once(cookies_session: Any, combination: str) -> Any:
    if combination not in _baked:
        _baked[combination] = bake(cookies_session, **COMBINATIONS[combination])
    result = _baked[combination]
    assert result.exception is None, result.exception
    assert result.exit_code == 0
    return result


# The summary adds up each bake's test durations, whichever worker ran them (each worker bakes once what it tests).
@pytest.fixture(params=ORDER)
def baked_result(request: pytest.FixtureRequest, cookies_session: Any, record_property: Any) -> Any:
    record_property(BAKE, request.param)
    return baked_once(cookies_session, request.param)


@pytest.fixture
def baked(baked_result: Any) -> Path:
    return baked_result.project_path


# pytest-xdist hands the tests out in this file's order, one at a time to whichever worker is free: the generated
# suites first, the longest first, so that both workers end together.


@pytest.mark.parametrize("combination", sorted(EVERY_CODE_PATH))
def test_the_generated_repos_tests_of_its_tooling_pass(cookies_session: Any, combination: str, record_property: Any):
    """The generated tests marked answer_independent (and on ONE_BAKE bake_independent), run apart from the rest of
    the suite: on a second worker."""
    record_property(BAKE, combination)
    markers = " or ".join(TOOLING_MARKERS) if combination == ONE_BAKE else "answer_independent"
    result = run_generated_tests(baked_once(cookies_session, combination).project_path, markers)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_generated_repos_own_tests_pass(baked_result: Any, request: pytest.FixtureRequest):
    combination = request.node.callspec.params["baked_result"]
    baked = baked_result.project_path
    # The tests of the tooling (answer_ and bake_independent) run in
    # test_the_generated_repos_tests_of_its_tooling_pass; each bake runs the rest that its answers can change
    # (left_to_earlier_bakes), and test_the_generated_repos_own_checks_pass every rule.
    left_out = [*TOOLING_MARKERS, *left_to_earlier_bakes(combination)]
    result = run_generated_tests(baked, " and ".join(f"not {marker}" for marker in left_out))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    if "RECORDED_FIXTURES" not in fixtures_environment():
        pytest.skip(f"passed without the install layer's tests: no recorded renders in {FIXTURES}")
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    # Only tests of the other GitOps tool or ingress API may skip there; none for want of the charts.
    reasons = ("this repo syncs with", "this repo uses")
    assert not [
        line for line in skipped if "test_rendered_install.py" in line and not any(r in line for r in reasons)
    ], skipped


def test_the_bake_succeeds(baked: Path):
    assert (baked / "apps" / "base" / "kustomization.yaml").is_file()


def test_no_template_tag_is_left_unrendered(baked: Path):
    assert unrendered_files(baked) == []


def test_every_yaml_file_parses(baked: Path):
    assert unparsable_yaml_files(baked) == []


def test_a_gateway_moved_to_another_namespace_and_release_is_followed_by_every_layer(cookies):
    """The gateway chart's release (Istio's own API); with the Gateway API, istiod names the gateway after the
    Gateway, which every layer reads from apps/base/ingress-gateway.env (the generated repo's own tests move it)."""
    default = cookies.bake(extra_context=ISTIO_API)
    assert files_naming(default.project_path, "istio-ingressgateway")  # the check below can see the name
    moved = cookies.bake(extra_context=MOVED_GATEWAY | ISTIO_API)
    assert moved.exit_code == 0, moved.exception
    project = moved.project_path
    assert files_naming(project, "istio-ingressgateway") == []
    assert (project / "apps" / "base" / "ingress-gateway.env").read_text().splitlines() == [
        "namespace=edge",
        "serviceAccount=edge-gateway",
        "istioLabel=edge-gateway",
    ]
    # The recorded chart renders are of the default release only, so this bake's tests run without them; the tests
    # no answer changes run on the bakes of EVERY_CODE_PATH and ONE_BAKE.
    environment = {key: value for key, value in fixtures_environment().items() if key != "RECORDED_FIXTURES"}
    without_tooling = " and ".join(f"not {marker}" for marker in TOOLING_MARKERS)
    result = run_generated_tests(project, without_tooling, environment=environment)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_the_generated_repos_own_checks_pass(baked: Path):
    result = subprocess.run(
        [sys.executable, "-m", "repo_tools"], cwd=baked, capture_output=True, text=True, env=fixtures_environment()
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    if "RECORDED_FIXTURES" not in fixtures_environment():
        pytest.skip(f"passed without the install layer's rendered checks: no recorded renders in {FIXTURES}")
    assert "ok   rendered" in result.stdout and "skip rendered" not in result.stdout
    assert "ok   values" in result.stdout


def test_the_database_is_there_only_when_asked_for(baked_result: Any):
    project = baked_result.project_path
    asked = baked_result.context["include_database"]
    assert (project / "apps" / "components" / "database").is_dir() == asked
    assert ("components/database" in (project / "apps" / "base" / "kustomization.yaml").read_text()) == asked


def scalars(node: Any, key: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in scalars(v, k)]
    if isinstance(node, list):
        return [pair for item in node for pair in scalars(item, key)]
    return [(key, node)]


def test_non_default_answers_leave_no_trace_of_the_defaults(cookies_session: Any):
    result = baked_once(cookies_session, "non-default-names-ports-prefix")
    defaults = {
        "shop",
        "shop.example.com",
        "frontend",
        "backend",
        "/api",
        "/api/*",
        "myorg/frontend:v1",
        "myorg/backend:v1",
        3000,
        "3000",
        "/healthz",
    }
    traces = [
        f"{overlay}: {doc['kind']}/{doc['metadata']['name']} {key}={value!r}"
        for overlay, docs in build_overlays(result.project_path).items()
        for doc in docs
        for key, value in scalars(doc)
        if key != "app.kubernetes.io/component"
        and (value in defaults or (isinstance(value, str) and set(value.split("/")) & {"shop", "frontend", "backend"}))
    ]
    assert traces == []


def text_files(project: Path) -> dict[str, str]:
    return {str(path.relative_to(project)): path.read_text() for path in sorted(project.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("tool", ["argocd", "flux"])
def test_another_istio_version_changes_every_chart_version_and_nothing_else(cookies_session: Any, tool: str):
    default = bake(cookies_session, gitops_tool=tool)
    older = bake(cookies_session, gitops_tool=tool, istio_version="1.29.3")
    pinned = default.context["istio_version"]
    default_files, older_files = text_files(default.project_path), text_files(older.project_path)
    assert default_files.keys() == older_files.keys()
    changed = {name for name in default_files if default_files[name] != older_files[name]}
    assert all(default_files[name].replace(pinned, "1.29.3") == older_files[name] for name in changed)
    charts = {
        "infrastructure/istio-base/kustomization.yaml",
        "infrastructure/istiod/kustomization.yaml",
        "versions.env",
    }
    assert charts <= changed
    assert "infrastructure/gateway-api/kustomization.yaml" not in changed  # the Gateway API has its own pin
    if tool == "flux":
        assert "infrastructure/flux/releases.yaml" in changed


# The gateway's namespace and Helm release, template settings rather than answers; moved here to show that every
# layer (apps, install, GitOps entry points, harness settings) takes them from the one place.
MOVED_GATEWAY = {"_gateway_namespace": "edge", "_gateway_release": "edge-gateway"}


def files_naming(project: Path, text: str) -> list[str]:
    suffixes = {".yaml", ".yml", ".env", ".md", ".lua"}
    return [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.suffix in suffixes and path.is_file() and text in path.read_text()
    ]


def test_the_bakes_that_run_every_test_cover_each_ingress_api_gitops_tool_and_database_answer():
    answers = [answers_of(name) for name in EVERY_CODE_PATH]
    assert {a["ingress_api"] for a in answers} == {"gateway-api", "istio"}
    assert {a["gitops_tool"] for a in answers} == {"argocd", "flux"}
    assert {bool(a["include_database"]) for a in answers} == {True, False}
    assert ONE_BAKE in EVERY_CODE_PATH


def test_each_generated_test_a_bake_leaves_out_runs_on_a_bake_with_the_same_answers_but_the_one_it_does_not_read():
    assert sorted(ORDER) == sorted(COMBINATIONS)
    for combination in ORDER:
        answers = answers_of(combination)
        for answer, marker in INDEPENDENT_OF.items():
            if marker not in left_to_earlier_bakes(combination):
                continue
            runs_them = [
                other for other in COMBINATIONS if other != combination and marker not in left_to_earlier_bakes(other)
            ]
            same_but_that_answer = [
                other
                for other in runs_them
                if {key for key in answers if answers[key] != answers_of(other)[key]} <= {answer}
            ]
            assert same_but_that_answer, f"{combination} leaves out the tests marked {marker}, and no bake runs them"
