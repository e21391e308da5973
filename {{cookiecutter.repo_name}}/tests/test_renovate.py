"""Renovate keeps every pin current: its configuration is valid, and each pinned version is one it can update."""

import json
import re
import shutil
from pathlib import Path

import pytest

from repo_tools import REPO_ROOT, renovate


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    for name in ("renovate.json", "versions.env"):
        shutil.copy(REPO_ROOT / name, tmp_path)
    for name in ("infrastructure", "apps", "e2e"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "charts"))
    return tmp_path


def test_the_renovate_configuration_matches_renovates_published_schema(tmp_path):
    assert renovate.config_errors() == []
    config = json.loads((REPO_ROOT / "renovate.json").read_text())
    config["customManagers"][0]["customType"] = "regexp"
    broken = tmp_path / "renovate.json"
    broken.write_text(json.dumps(config))
    assert renovate.config_errors(broken) == [
        "renovate.json: customManagers.0.customType: 'regexp' is not one of ['jsonata', 'regex']"
    ]


def test_a_misspelt_key_renovate_would_ignore_leaves_its_pins_named(repo_copy):
    """Renovate's schema admits unknown keys, so a misspelt matchStrings only shows as pins no manager matches."""
    config = json.loads((repo_copy / "renovate.json").read_text())
    config["customManagers"][0]["matchString"] = config["customManagers"][0].pop("matchStrings")
    (repo_copy / "renovate.json").write_text(json.dumps(config))
    assert renovate.config_errors(repo_copy / "renovate.json") == []
    assert "versions.env: ISTIO_VERSION" in "\n".join(renovate.unmatched_pins(repo_copy))


def test_every_pinned_version_is_matched_by_a_renovate_manager():
    found = renovate.pins()
    assert {pin.name for pin in found if pin.where == "versions.env"} >= {
        "ISTIO_VERSION",
        "KIND_NODE_IMAGE",
        "HELM_VERSION",
    }
    assert any(pin.where.startswith("infrastructure/istiod/") for pin in found)
    assert any(pin.where.startswith("e2e/harness/") for pin in found)
    assert renovate.unmatched_pins() == []


def test_a_pin_without_its_renovate_line_is_named(repo_copy):
    versions = repo_copy / "versions.env"
    versions.write_text(versions.read_text().replace("# renovate: datasource=github-releases depName=helm/helm\n", ""))
    helm = next(pin for pin in renovate.pins(repo_copy) if pin.name == "HELM_VERSION")
    assert renovate.unmatched_pins(repo_copy) == [
        f"versions.env: HELM_VERSION {helm.version} is matched by no manager in renovate.json"
    ]


def test_an_image_outside_every_managers_files_is_named(repo_copy):
    config = json.loads((repo_copy / "renovate.json").read_text())
    config["kubernetes"]["managerFilePatterns"] = ["/^nowhere/"]
    (repo_copy / "renovate.json").write_text(json.dumps(config))
    problems = renovate.unmatched_pins(repo_copy)
    assert problems and all(problem.startswith("apps/") for problem in problems)


def test_every_action_is_pinned_to_a_commit_with_its_tag_and_renovate_keeps_both_current(repo_copy):
    shutil.copytree(REPO_ROOT / ".github", repo_copy / ".github")
    actions = [pin for pin in renovate.pins(repo_copy) if pin.where == ".github/workflows/ci.yml"]
    assert {pin.name for pin in actions} >= {"actions/checkout", "actions/setup-python", "actions/upload-artifact"}
    assert all(pin.version.startswith("v") for pin in actions), actions
    assert renovate.actions_pinned_by_commit(repo_copy) == [] and renovate.unmatched_pins(repo_copy) == []
    workflow = repo_copy / ".github" / "workflows" / "ci.yml"
    workflow.write_text(re.sub(r"actions/checkout@\S+ # \S+", "actions/checkout@v7", workflow.read_text(), count=1))
    assert renovate.actions_pinned_by_commit(repo_copy) == [
        ".github/workflows/ci.yml: actions/checkout@v7 is not pinned to a commit with its tag in a comment "
        "(uses: owner/action@<40-hex commit> # vX.Y.Z)"
    ]
    config = json.loads((repo_copy / "renovate.json").read_text())
    config["extends"] = ["config:recommended"]  # the github-actions manager alone would not keep the commits pinned
    (repo_copy / "renovate.json").write_text(json.dumps(config))
    unmatched = renovate.unmatched_pins(repo_copy)
    assert unmatched and all(problem.startswith(".github/workflows/ci.yml: ") for problem in unmatched)
