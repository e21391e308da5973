"""The template repository's own CI files are valid where they can be checked offline."""

import subprocess
import sys

from conftest import TEMPLATE


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
