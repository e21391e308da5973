"""The e2e suite's second way to run: on a local control plane (cluster.py) instead of kind, without Docker.

    python -m e2e.controlplane.binaries build    # once: etcd, Kubernetes, kwok and istiod from the Go module proxy
    pytest -rs e2e/controlplane                  # or: nox -s controlplane

Without the programs the suite skips and says why; where $REQUIRE_CONTROLPLANE is set (CI), that is a failure.
"""

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.controlplane import binaries
from e2e.controlplane.bringup import LocalBringup
from e2e.controlplane.cluster import ComponentFailed, ControlPlane
from e2e.harness import settings
from repo_tools import charts

REQUIRE = "REQUIRE_CONTROLPLANE"


def unavailable() -> str:
    """Why the local control plane cannot run here, or ""."""
    missing = binaries.missing_programs()
    if missing:
        return (
            f"the local control plane needs {', '.join(missing)}: run `python -m e2e.controlplane.binaries build` "
            "(Go 1.24+ and the Go module proxy), or set CONTROLPLANE_BIN_DIR to a directory that holds them"
        )
    if shutil.which("kubectl") is None or charts.real_helm() is None:
        return "the local control plane needs kubectl and helm on PATH: run `python repo_tools/toolchain.py BIN_DIR`"
    if charts.recordings() is None:
        return f"the local control plane renders the charts from their recorded sources: set {charts.RECORDED_FIXTURES}"
    return ""


@pytest.fixture(scope="session")
def bringup() -> Iterator[LocalBringup]:
    reason = unavailable()
    if reason:
        if os.environ.get(REQUIRE):
            pytest.fail(f"{reason} ({REQUIRE} is set, so this run must not be skipped)", pytrace=False)
        pytest.skip(reason)
    programs = {program: directory / program for program, directory in binaries.program_dirs().items()}
    workdir = Path(tempfile.mkdtemp(prefix="local-control-plane-"))
    plane = ControlPlane(programs, workdir, str(shutil.which("kubectl")), binaries.kubernetes_minor())
    started = time.monotonic()
    run = LocalBringup(plane, settings.load("local-control-plane"))
    try:
        with run.phase("start etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok"):
            plane.start()
        run.install()
        run.install_apps()
    except ComponentFailed as failed:
        plane.stop()
        pytest.fail(str(failed), pytrace=False)
    except Exception:
        print(plane.log_tails())
        plane.stop()
        raise
    print(f"  local control plane up in {time.monotonic() - started:.1f}s", flush=True)
    yield run
    plane.stop()
