"""Sessions of the template repo. `nox` alone runs the offline defaults: lint, tests and security."""

import os
import shutil
import tempfile
from pathlib import Path

import nox

TEMPLATE = Path(__file__).parent
GENERATED = TEMPLATE / "{{cookiecutter.repo_name}}"
# Real upstream output the machines cannot download (../shared/fixtures/README.md): chart sources and renders.
FIXTURES = TEMPLATE.parent / "shared" / "fixtures"
PYTHON_TOOLING = ["hooks", "local_extensions", "tests", "e2e", "benchmarks", "noxfile.py"]

nox.options.sessions = ["lint", "tests", "security", "controlplane"]
# lint and security run beside the tests: much of each is installing and single-threaded, and the tests' last bake
# leaves a core idle. The local control plane (allow_parallel unset) runs alone, after them. Each session's output is
# printed when it ends, with its duration.
nox.options.parallel = "auto"
nox.options.error_on_missing_interpreters = True
# uv installs each session's requirements in seconds; plain virtualenv and pip where uv is missing.
nox.options.default_venv_backend = "uv|virtualenv"


def install_test_requirements(session: nox.Session) -> None:
    # uv leaves the bytecode out (pip compiles it). Each of the hundreds of Python processes of these sessions would
    # then compile the libraries it imports anew wherever PYTHONDONTWRITEBYTECODE is set: a minute of the tests
    # session, where compiling at install takes seconds.
    compiled = {"UV_COMPILE_BYTECODE": os.environ.get("UV_COMPILE_BYTECODE", "1")}
    session.install("-r", "requirements/tests.txt", "-r", str(GENERATED / "requirements.txt"), env=compiled)
    # kustomize comes from PATH; machines without it get kubectl unpacked into this session's venv.
    session.run("python", str(GENERATED / "repo_tools" / "toolchain.py"), session.bin)


def bake(session: nox.Session, output_dir: str, **answers: object) -> Path:
    context = [f"{name}={value}" for name, value in answers.items()]
    session.run("cookiecutter", "--no-input", "--output-dir", output_dir, str(TEMPLATE), *context)
    return next(Path(output_dir).iterdir())


@nox.session(allow_parallel=True)
def tests(session: nox.Session) -> None:
    """Bake the option matrix, refuse every bad answer, and run each generated repo's own tests."""
    install_test_requirements(session)
    # One worker per core; the hostile-answer tests share a worker, in order (the summary test runs last). Bytecode is
    # written even where PYTHONDONTWRITEBYTECODE is set: a bake's tooling tests start its checks dozens of times.
    pytest = ["pytest", "-n", "auto", "--dist", "loadgroup", "--durations=15", *session.posargs]
    session.run(*pytest, env={"PYTHONDONTWRITEBYTECODE": ""})


@nox.session(allow_parallel=True)
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


# The bakes the local control plane runs: the default, and the other ingress API, GitOps tool and the database; and
# the mutations each shows failing at its row (every one on the default bake; the routes' on the Istio API's too).
CONTROL_PLANE_BAKES = {
    "defaults": {},
    "istio-api-flux-database": {"ingress_api": "istio", "gitops_tool": "flux", "include_database": "yes"},
}
MUTATIONS = {"defaults": [], "istio-api-flux-database": ["api-to-frontend"]}


@nox.session
def controlplane(session: nox.Session) -> None:
    """Bake the defaults and the Istio API + Flux + database answers, and run each baked repo's e2e suite on a local
    control plane (etcd, kube-apiserver, controllers, kwok and istiod as processes; no Docker). Builds the programs
    once from the Go module proxy into a cache outside the repository; skips, saying why, where they cannot be had,
    unless REQUIRE_CONTROLPLANE is set."""
    if not os.environ.get("REQUIRE_CONTROLPLANE"):
        if shutil.which("go") is None:
            session.skip("the local control plane's programs are built with Go, which is not on PATH")
        if not (FIXTURES / "charts" / "src").is_dir():
            session.skip(f"the local control plane renders the charts from their sources in {FIXTURES}/charts/src")
    install_test_requirements(session)
    environment = {"RECORDED_FIXTURES": str(FIXTURES)}
    with tempfile.TemporaryDirectory() as output_dir:
        for name, answers in CONTROL_PLANE_BAKES.items():
            baked = bake(session, str(Path(output_dir) / name), **answers)
            with session.chdir(baked):
                session.run("python", "-m", "e2e.controlplane.binaries", "build")
                session.run(
                    "pytest",
                    "-rs",
                    "-s",
                    "-p",
                    "no:cacheprovider",
                    "e2e",
                    "--local-control-plane",
                    *session.posargs,
                    env=environment,
                )
                session.run("python", "-m", "e2e.controlplane.mutations", *MUTATIONS[name], env=environment)


@nox.session(allow_parallel=True)
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
