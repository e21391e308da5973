"""Sessions of this repo. `nox` alone runs the offline checks; nothing here needs a cluster."""

import nox

nox.options.sessions = ["validate"]


def install(session: nox.Session) -> None:
    session.install("-r", "requirements.txt")
    # kustomize comes from PATH or $KUSTOMIZE; machines without either get kubectl in this venv.
    session.run("python", "repo_tools/toolchain.py", session.bin)


@nox.session
def validate(session: nox.Session) -> None:
    """Build every overlay, validate it against its schemas, check its promises, then run the tests."""
    install(session)
    session.run("python", "-m", "repo_tools")
    session.run("pytest", *session.posargs)


@nox.session
def contract(session: nox.Session) -> None:
    """Print every row of contract.yaml per overlay with the rule that decides it; fail on a mismatch."""
    install(session)
    session.run("python", "-m", "repo_tools.contract", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """Check the install layer as Helm renders it, then create a kind cluster, install it and the e2e overlay,
    and run the contract over real traffic."""
    install(session)
    session.run("pytest", "-rs", "tests/test_rendered_install.py")
    session.run("pytest", "-rs", "--log-cli-level=INFO", "e2e", *session.posargs)


@nox.session
def controlplane(session: nox.Session) -> None:
    """Build etcd, Kubernetes, kwok and istiod once from the Go module proxy (cached outside the repo), start them as
    processes, install the repo onto them as on kind, check what the real API server and istiod make of it, and run
    the e2e suite over real Envoy proxies in network namespaces. Needs Go, root and the charts' sources
    ($RECORDED_FIXTURES); see README.md."""
    install(session)
    session.run("python", "-m", "e2e.controlplane.binaries", "build")
    # -s: the bring-up's phases, the route table and the burst figures as they happen.
    session.run("pytest", "-rs", "-s", "e2e", "--local-control-plane", *session.posargs)


@nox.session
def mutations(session: nox.Session) -> None:
    """Break the repo on purpose, one rule at a time (in a copy), and show the local run failing at the row that rule
    guards: `nox -s mutations -- permissive` runs one. Needs what `controlplane` needs."""
    install(session)
    session.run("python", "-m", "e2e.controlplane.binaries", "build")
    session.run("python", "-m", "e2e.controlplane.mutations", *session.posargs)


@nox.session
def security(session: nox.Session) -> None:
    """Scan every rendered overlay with checkov, offline; fail on findings not waived in security/."""
    # checkov pins its own dependencies, so it gets this session's venv to itself.
    session.install("checkov", "pyyaml")
    session.run("python", "repo_tools/toolchain.py", session.bin)
    session.run("python", "-m", "repo_tools.security", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint, format-check and type-check the repo's Python."""
    session.install("ruff", "mypy", "types-PyYAML", "types-requests", "-r", "requirements.txt")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--ignore-missing-imports", "repo_tools", "e2e")
