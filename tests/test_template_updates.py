"""A baked repo records its answers, and cruft can keep it up to date with a newer template."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cruft
import pytest
from conftest import ANSWER_NAMES, TEMPLATE, bake

ANSWERS_FILE = ".cookiecutter-answers.json"


def git(directory: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=directory,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """The template as a Git repository of its own, the way cruft fetches templates."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=shutil.ignore_patterns(".git", ".nox", ".venv", "__pycache__", ".*_cache"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "template v1")
    return repo


def test_the_answers_are_recorded_without_local_paths(cookies: Any):
    result = bake(cookies, namespace="storefront")
    answers = json.loads((result.project_path / ANSWERS_FILE).read_text())
    assert set(answers) == ANSWER_NAMES
    assert answers["namespace"] == "storefront"
    assert str(result.project_path.parent) not in json.dumps(answers)


def test_a_baked_repo_is_updated_by_a_newer_template(template_repo: Path, tmp_path: Path):
    project = cruft.create(str(template_repo), output_dir=tmp_path / "out", extra_context={"namespace": "storefront"})
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "baked")
    assert cruft.check(project)

    readme = template_repo / "{{cookiecutter.repo_name}}" / "README.md"
    readme.write_text(readme.read_text() + "\nImproved in template v2 for {{ cookiecutter.namespace }}.\n")
    git(template_repo, "commit", "-q", "-am", "template v2")
    assert not cruft.check(project)

    assert cruft.update(project, skip_apply_ask=True)
    assert "Improved in template v2 for storefront." in (project / "README.md").read_text()
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "update")
    assert cruft.check(project)


def test_cruft_create_can_take_the_recorded_answers(template_repo: Path, cookies: Any, tmp_path: Path):
    baked = bake(cookies, namespace="storefront", frontend_name="web").project_path
    recreated = cruft.create(
        str(template_repo), output_dir=tmp_path / "recreated", extra_context_file=baked / ANSWERS_FILE
    )
    for relative in ("apps/base/kustomization.yaml", "contract.yaml", "versions.env"):
        assert (recreated / relative).read_text() == (baked / relative).read_text()
