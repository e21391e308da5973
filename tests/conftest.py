import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

TEMPLATE = Path(__file__).resolve().parent.parent
# Real upstream output these machines cannot download (see its README): the charts' renders, values and CRDs.
FIXTURES = TEMPLATE.parent / "shared" / "fixtures"
# .ci/run sets this: there the fixtures must be present, so the tests that need them always run.
REQUIRE_FIXTURES = "REQUIRE_RECORDED_FIXTURES"
ANSWER_NAMES = {name for name in json.loads((TEMPLATE / "cookiecutter.json").read_text()) if not name.startswith("_")}
# Each answer's default as cookiecutter.json gives it (the first of a list of choices).
DEFAULT_ANSWERS = {
    name: value[0] if isinstance(value, list) else value
    for name, value in json.loads((TEMPLATE / "cookiecutter.json").read_text()).items()
    if name in ANSWER_NAMES
}
UNRENDERED = re.compile(r"{{-?\s*cookiecutter\.|{%-?\s*(if|for|set)\b")


def bake(cookies: Any, **answers: Any) -> Any:
    """Bake with these answers; a name missing from cookiecutter.json is an error, not a silent default."""
    unknown = set(answers) - ANSWER_NAMES
    assert not unknown, f"not answers of this template: {sorted(unknown)}"
    return cookies.bake(extra_context=answers)


def unrendered_files(project: Path) -> list[str]:
    return [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and UNRENDERED.search(path.read_text(errors="replace"))
    ]


def unparsable_yaml_files(project: Path) -> list[str]:
    broken = []
    for path in [*project.rglob("*.yaml"), *project.rglob("*.yml")]:
        try:
            list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            broken.append(f"{path.relative_to(project)}: {error}")
    return broken


def pytest_configure(config: Any) -> None:
    if os.environ.get(REQUIRE_FIXTURES) and not (FIXTURES / "charts" / "rendered").is_dir():
        raise pytest.UsageError(
            f"{REQUIRE_FIXTURES} is set but {FIXTURES} holds no recorded renders: the install-layer tests cannot run"
        )


def fixtures_environment() -> dict[str, str]:
    """The environment a baked repo's tests run in: the recorded upstream output when it is beside the template."""
    environment = dict(os.environ)
    if (FIXTURES / "charts" / "rendered").is_dir():
        environment["RECORDED_FIXTURES"] = str(FIXTURES)
    return environment


def run_generated_tests(
    project: Path, markers: str = "", environment: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A baked repo's own suite, or the tests of it that the `markers` expression (pytest -m) selects. It runs
    without pytest's assertion rewriting, which costs seconds in every fresh bake; a test that fails runs once more
    with it, so that the output ends with the values its assertion compared."""
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    selection = ["-m", markers] if markers else []
    run = functools.partial(
        subprocess.run,
        cwd=project,
        capture_output=True,
        text=True,
        env=fixtures_environment() if environment is None else environment,
        check=False,
    )
    result = run([*pytest_command, "-x", "--assert=plain", *selection])
    lines = result.stdout.splitlines()
    failed = [line.removeprefix("FAILED ").split(" - ")[0] for line in lines if line.startswith("FAILED ")]
    if failed:
        again = run([*pytest_command, failed[0]])
        result.stdout += f"\n{failed[0]} once more, with pytest's assertion details:\n{again.stdout}"
    return result


def build_overlays(project: Path) -> dict[str, list[dict]]:
    """Every apps kustomization of a baked repo, rendered by that repo's own repo_tools."""
    script = (
        "import json; from repo_tools import kustomize, layout; "
        "print(json.dumps({name: kustomize.build(path) for name, path in layout.app_kustomizations().items()}))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=project, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


HOSTILE_OUTCOMES = "hostile answer outcomes"


@pytest.fixture(scope="session", autouse=True)
def shared_schema_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The many bakes of a run validate mostly the same documents and render the same install layers: the checks
    and tests of each share one cache of results and renders, across the xdist workers too (each keys what it keeps
    by everything it depends on, and writes atomically)."""
    run_directory = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_directory = run_directory.parent  # the run's directory, above each worker's own
    shared = run_directory / "repo-tools-cache"
    shared.mkdir(exist_ok=True)
    os.environ["REPO_TOOLS_CACHE_DIR"] = str(shared)
    yield
    os.environ.pop("REPO_TOOLS_CACHE_DIR", None)


BAKE = "bake"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how many hostile answers the property test tried, and how each ended (from whichever worker ran it); then
    how long each bake of the matrix took, and in what, so that a slow bake shows in any CI log."""
    reports = [
        report for outcome in ("passed", "failed", "skipped") for report in terminalreporter.stats.get(outcome, [])
    ]
    for report in reports:
        counts = dict(report.user_properties).get(HOSTILE_OUTCOMES)
        if counts and report.when == "call":
            outcomes = ", ".join(f"{count} {outcome}" for outcome, count in counts.items())
            terminalreporter.write_line(f"hostile answers tried: {sum(counts.values())} ({outcomes})")
    per_bake: dict[str, dict[str, float]] = {}
    for report in reports:
        bake_name = dict(report.user_properties).get(BAKE)
        if bake_name:
            test = report.nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
            phases = per_bake.setdefault(bake_name, {})
            phases[test] = phases.get(test, 0.0) + report.duration
    if per_bake:
        terminalreporter.write_sep("-", "seconds per bake (its tests, slowest first)")
        for bake_name, phases in sorted(per_bake.items(), key=lambda item: -sum(item[1].values())):
            slowest = sorted(phases.items(), key=lambda item: -item[1])[:3]
            detail = ", ".join(f"{test} {seconds:.1f}" for test, seconds in slowest)
            terminalreporter.write_line(f"{sum(phases.values()):6.1f}  {bake_name:<38} {detail}")
