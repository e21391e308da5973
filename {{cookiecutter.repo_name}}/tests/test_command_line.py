"""Every entry point the README names answers --help with its usage, refuses an unknown argument with its usage and
exit 2, and meets a missing tool with one sentence naming it and how to install it."""

import os
import subprocess
import sys

import pytest

from repo_tools import REPO_ROOT

pytestmark = pytest.mark.bake_independent
ENTRY_POINTS = {
    "python -m repo_tools": ["-m", "repo_tools"],
    "python -m repo_tools diff": ["-m", "repo_tools", "diff"],
    "python -m repo_tools.contract": ["-m", "repo_tools.contract"],
    "python -m repo_tools.install": ["-m", "repo_tools.install"],
    "python -m repo_tools.security": ["-m", "repo_tools.security"],
    "python repo_tools/toolchain.py": ["repo_tools/toolchain.py"],
    "python -m e2e.controlplane.binaries": ["-m", "e2e.controlplane.binaries"],
}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_answers_help_with_its_usage(name):
    result = run(*ENTRY_POINTS[name], "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: "), result.stdout + result.stderr
    assert name.removeprefix("python ") in result.stdout.splitlines()[0]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_each_entry_point_refuses_an_unknown_argument_with_its_usage_and_exit_2(name):
    result = run(*ENTRY_POINTS[name], "--no-such-option")
    assert result.returncode == 2 and result.stderr.startswith("usage: "), result.stdout + result.stderr
    assert ": error: " in result.stderr  # the option named, or the argument it still needs


def test_a_word_that_is_no_subcommand_is_refused_instead_of_running_every_check():
    result = run("-m", "repo_tools", "bogus")
    assert result.returncode == 2 and "unrecognized arguments: bogus" in result.stderr
    assert "ok   build" not in result.stdout


def test_the_security_scan_without_checkov_says_how_to_install_it(tmp_path):
    environment = {**os.environ, "PATH": str(tmp_path)}
    result = run("-m", "repo_tools.security", env=environment)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("checkov is not on PATH") and "pip install checkov" in result.stderr


def test_the_checks_without_kustomize_or_kubectl_say_what_to_install(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "KUSTOMIZE"} | {"PATH": str(tmp_path)}
    result = run("-m", "repo_tools", env=environment)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "FAIL build" in result.stdout and "stopped at" not in result.stderr, result.stdout + result.stderr
    assert "Neither kustomize nor kubectl is on PATH: install kustomize v5" in result.stderr


def test_the_e2e_options_are_listed_by_pytests_help():
    result = run("-m", "pytest", "e2e", "--help", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stderr
    for option in ("--gitops", "--reuse-cluster", "--helm-bin", "--diagnostics-dir"):
        assert option in result.stdout, option
