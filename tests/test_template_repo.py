"""The template repository's own CI files are valid where they can be checked offline."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE, bake, run_generated_tests


def test_the_template_workflow_matches_the_github_workflow_schema():
    workflow = TEMPLATE / ".github" / "workflows" / "ci.yml"
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme_command = next(
        line
        for line in (TEMPLATE / "README.md").read_text().splitlines()
        if line.startswith("python3 -m venv") and "nox" in line
    )
    assert readme_command in (TEMPLATE / ".ci" / "run").read_text().splitlines()


def test_a_generated_test_that_fails_is_shown_again_with_the_values_its_assertion_compared(tmp_path: Path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\naddopts = "-p no:cloudcoil"\n')
    (tmp_path / "tests" / "test_sums.py").write_text(
        "def test_passes():\n    assert 1 + 1 == 2\n\n\ndef test_fails():\n    total = 2 + 2\n    assert total == 5\n"
    )
    result = run_generated_tests(tmp_path)
    assert result.returncode == 1
    first, again = result.stdout.split("tests/test_sums.py::test_fails once more, with pytest's assertion details:")
    assert "1 failed, 1 passed" in first and "assert 4 == 5" not in first  # the fast run: no assertion details
    assert "assert 4 == 5" in again and "1 failed in" in again


# actionlint, GitHub Actions' linter: a release from the Go module proxy (listed there on 2026-12-07), built once
# into the same cache as the local control plane's programs.
ACTIONLINT = ("github.com/rhysd/actionlint/cmd/actionlint", "v1.7.12")
CACHE = Path(os.environ.get("CONTROLPLANE_CACHE", Path.home() / ".cache" / "istio-gitops-controlplane"))


@pytest.fixture(scope="module")
def actionlint() -> str:
    module, version = ACTIONLINT
    binary = CACHE / f"actionlint-{version}" / "actionlint"
    if binary.is_file():
        return str(binary)
    reason = "actionlint is built with Go, which is not on PATH"
    if shutil.which("go") is not None:
        environment = {**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0"}
        built = subprocess.run(
            ["go", "install", f"{module}@{version}"], env=environment, capture_output=True, text=True
        )
        if built.returncode == 0:
            return str(binary)
        reason = f"go install {module}@{version} failed (is the Go module proxy out of reach?): {built.stderr[-500:]}"
    if os.environ.get("REQUIRE_CONTROLPLANE"):  # .ci/run: Go and its module proxy are there
        pytest.fail(reason)
    pytest.skip(reason)


def test_actionlint_finds_nothing_in_the_template_workflow_nor_in_a_baked_repos_of_either_gitops_tool(
    actionlint, cookies
):
    workflows = [TEMPLATE / ".github" / "workflows" / "ci.yml"]
    for tool in ("argocd", "flux"):
        result = bake(cookies, gitops_tool=tool)
        assert result.exit_code == 0, result.exception
        workflows.append(result.project_path / ".github" / "workflows" / "ci.yml")
    linted = subprocess.run([actionlint, *map(str, workflows)], capture_output=True, text=True, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_actionlint_refuses_a_workflow_with_an_undefined_job_and_a_bad_expression(actionlint, tmp_path):
    broken = tmp_path / "ci.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    needs: build\n    steps:\n"
        "      - run: echo ${{ github.event.nope( }}\n"
    )
    linted = subprocess.run([actionlint, str(broken)], capture_output=True, text=True, check=False)
    assert linted.returncode == 1
    assert 'job "test" needs job "build" which does not exist' in linted.stdout, linted.stdout
    assert "[expression]" in linted.stdout, linted.stdout
