"""Bake the template, then run each baked repo's own e2e suite on kind (needs Docker, kind, kubectl, helm).

    nox -s e2e [-- --e2e-args=--keep-cluster ...]

Without Docker the baked suites skip themselves, and so does this test, with their reason.
"""

import subprocess
import sys
from typing import Any

import pytest

NON_DEFAULT = {
    "project_name": "Storefront",
    "namespace": "storefront",
    "domain": "shop.acme.test",
    "frontend_name": "web",
    "frontend_port": "8000",
    "backend_name": "orders",
    "backend_port": "8080",
    "api_prefix": "/v2/orders-api",
    "include_database": True,
    "ingress_api": "istio",
}
# Both ingress APIs: the defaults (Gateway API) and Istio's own API with non-default names and a database.
ANSWER_SETS = {"defaults": {}, "non-default": NON_DEFAULT}


def passthrough(request: pytest.FixtureRequest) -> list[str]:
    return request.config.getoption("e2e_args")


@pytest.mark.parametrize("answers", ANSWER_SETS.values(), ids=ANSWER_SETS.keys())
def test_the_baked_repo_passes_its_e2e_suite(cookies: Any, answers: dict, request: pytest.FixtureRequest):
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "e2e", *passthrough(request)],
        cwd=result.project_path,
        capture_output=True,
        text=True,
        check=False,
    )
    print(suite.stdout[-6000:])
    summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else ""
    if suite.returncode == 0 and " passed" not in summary and "skipped" in summary:
        reasons = sorted({line.split(": ", 1)[-1] for line in suite.stdout.splitlines() if line.startswith("SKIPPED")})
        pytest.skip("; ".join(reasons) or summary)
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
