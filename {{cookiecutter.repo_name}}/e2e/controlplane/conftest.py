"""The local control plane's own checks (what the API server and istiod make of the repo), on the same local run as
the contract's tests: `pytest -rs e2e --local-control-plane` (or `nox -s controlplane`) runs both.

    python -m e2e.controlplane.binaries build    # once: etcd, Kubernetes, kwok, istiod and Envoy
"""

import pytest

from e2e.controlplane.bringup import LocalBringup


@pytest.fixture(scope="session")
def bringup(harness) -> LocalBringup:
    assert harness.local is not None, "e2e/controlplane runs on the local control plane only"
    return harness.local
