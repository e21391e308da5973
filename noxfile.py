"""Sessions of the template repo. `nox` alone runs the offline defaults: lint, tests and security."""

import tempfile
from pathlib import Path

import nox

TEMPLATE = Path(__file__).parent
GENERATED = TEMPLATE / "{{cookiecutter.repo_name}}"
PYTHON_TOOLING = ["hooks", "local_extensions", "tests", "e2e", "benchmarks", "noxfile.py"]

nox.options.sessions = ["lint", "tests", "security"]
nox.options.error_on_missing_interpreters = True
# uv installs each session's requirements in seconds; plain virtualenv and pip where uv is missing.
nox.options.default_venv_backend = "uv|virtualenv"


def install_test_requirements(session: nox.Session) -> None:
    session.install("-r", "requirements/tests.txt", "-r", str(GENERATED / "requirements.txt"))
    # kustomize comes from PATH; machines without it get kubectl unpacked into this session's venv.
    session.run("python", str(GENERATED / "repo_tools" / "toolchain.py"), session.bin)


def bake(session: nox.Session, output_dir: str, **answers: object) -> Path:
    context = [f"{name}={value}" for name, value in answers.items()]
    session.run("cookiecutter", "--no-input", "--output-dir", output_dir, str(TEMPLATE), *context)
    return next(Path(output_dir).iterdir())


@nox.session
def tests(session: nox.Session) -> None:
    """Bake the option matrix, refuse every bad answer, and run each generated repo's own tests."""
    install_test_requirements(session)
    # One worker per core; the hostile-answer tests share a worker, in order (the summary test runs last).
    session.run("pytest", "-n", "auto", "--dist", "loadgroup", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint the template's Python and lint and type-check a baked repo's (the template directory itself is skipped)."""
    session.install("ruff", "mypy", "types-PyYAML", "types-requests", "cookiecutter==2.7.1")
    session.install("-r", str(GENERATED / "requirements.txt"))
    session.run("ruff", "check", *PYTHON_TOOLING)
    session.run("ruff", "format", "--check", *PYTHON_TOOLING)
    with tempfile.TemporaryDirectory() as output_dir:
        baked = bake(session, output_dir, include_database="yes")
        session.run("ruff", "check", str(baked))
        session.run("ruff", "format", "--check", str(baked))
        with session.chdir(baked):
            session.run("mypy", "--ignore-missing-imports", "repo_tools", "e2e")


@nox.session
def e2e(session: nox.Session) -> None:
    """Bake the defaults and one non-default answer set, and run each baked repo's e2e suite on kind."""
    install_test_requirements(session)
    session.run("pytest", "-rs", "e2e", *session.posargs)


@nox.session
def security(session: nox.Session) -> None:
    """Bake a repo with every option's files and run its checkov scan: zero findings beyond its waivers."""
    session.install("checkov", "pyyaml", "cookiecutter==2.7.1")
    session.run("python", str(GENERATED / "repo_tools" / "toolchain.py"), session.bin)
    with tempfile.TemporaryDirectory() as output_dir:
        baked = bake(session, output_dir, include_database="yes")
        with session.chdir(baked):
            session.run("python", "-m", "repo_tools.security")


@nox.session
def benchmark(session: nox.Session) -> None:
    """Print how long the default bake's full offline validation takes next to bare kustomize builds."""
    install_test_requirements(session)
    session.run("python", "benchmarks/validation_speed.py", *session.posargs)
