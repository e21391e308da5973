"""A user edits or deletes files of this repo: `python -m repo_tools` answers with findings that name the file or the
rule, or passes when the change is harmless; never with a traceback. Shown on a copy of the repo, one change at a
time: a YAML file emptied, deleted, cut in half or short of one document."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NOT_COPIED, run_checks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repo_tools import REPO_ROOT

pytestmark = pytest.mark.answer_independent
YAML_FILES = sorted(
    str(path.relative_to(REPO_ROOT))
    for path in REPO_ROOT.rglob("*.yaml")
    if not set(NOT_COPIED) & set(path.relative_to(REPO_ROOT).parts)
)
CHANGES = ("empty", "delete", "truncate", "drop a document")


def changed(text: str, change: str) -> str | None:
    """The file's new text; None deletes it."""
    if change == "delete":
        return None
    if change == "truncate":
        return text[: len(text) // 2]
    if change == "drop a document":
        documents = text.split("\n---\n")
        return "\n---\n".join(documents[1:]) if len(documents) > 1 else ""
    return ""


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    destination = tmp_path_factory.mktemp("edited") / REPO_ROOT.name
    shutil.copytree(REPO_ROOT, destination, ignore=shutil.ignore_patterns(*NOT_COPIED))
    yield destination


def check_changed(repo: Path, file: str, change: str) -> subprocess.CompletedProcess[str]:
    """The checker's answer with one file changed; the file is put back afterwards."""
    path = repo / file
    original = path.read_text()
    new = changed(original, change)
    if new is None:
        path.unlink()
    else:
        path.write_text(new)
    try:
        return run_checks(repo)
    finally:
        path.write_text(original)


def test_the_unedited_copy_passes(copy):
    result = run_checks(copy)
    assert result.returncode == 0, result.stdout + result.stderr


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(YAML_FILES), change=st.sampled_from(CHANGES))
def test_an_edited_or_deleted_file_gets_findings_never_a_traceback(copy, file, change):
    result = check_changed(copy, file, change)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, f"{change} {file}:\n{output[-3000:]}"
    assert result.returncode in (0, 1), f"{change} {file}: exit {result.returncode}\n{output[-3000:]}"
    if result.returncode == 1:
        findings = [line for line in result.stderr.splitlines() if line.startswith("  ")]
        assert findings, f"{change} {file}: exit 1 without a finding\n{output[-3000:]}"


@pytest.mark.parametrize(
    ("file", "change", "named"),
    [
        ("apps/base/edge-auth/request-authentication.yaml", "empty", "apps/base/edge-auth/request-authentication.yaml"),
        (
            "apps/base/edge-auth/request-authentication.yaml",
            "delete",
            "apps/base/edge-auth/request-authentication.yaml",
        ),
        ("contract.yaml", "truncate", "contract.yaml"),
        ("apps/base/ingress-gateway.env", "delete", "apps/base/ingress-gateway.env"),
    ],
)
def test_the_finding_names_the_file_a_user_broke(copy, file, change, named):
    result = check_changed(copy, file, change)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert named in result.stderr, result.stderr[-3000:]
