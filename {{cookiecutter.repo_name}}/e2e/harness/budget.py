"""How long the e2e job may run: the longest each wait of the bring-up may last, summed along each install path,
plus the tests and the runner's setup. The CI workflow's timeout-minutes for each path is exactly this figure
(tests/test_e2e_harness.py keeps the two in step), so a slow but healthy run is never cut short by the job."""

import math
from dataclasses import dataclass

# Each wait the harness passes to kubectl or runs itself, in seconds.
KIND_CREATE = 120  # kind create cluster --wait, per attempt
KIND_ATTEMPTS = 3
ROLLOUT = 300  # kubectl rollout status, per Deployment or DaemonSet
CREATED = 300  # kubectl wait --for=create: istiod deploys the Gateway's Deployment
PODS_READY = 300  # the contract's client pods
CERTIFICATE_READY = 180  # the e2e host's Certificate from the test CA
ACME_CERTIFICATE_READY = 300  # the Certificate from Pebble
ROW_HOLDS = 120  # a contract row's probe holding three times in a row, while istiod's config reaches every proxy
AGENT_DOWNLOAD = 120  # the GitOps agent's release manifests
AGENT_READY = 300  # its Deployments Available
GITOPS_CONVERGENCE = 1500  # the agent syncing clusters/<tool>/e2e
# Not waits, but what the job spends besides them: checkout, Python, kind and the nox venv; and the tests after the
# bring-up (36 contract rows at a few seconds each when they hold, the burst past the rate limit, the traffic tests'
# batches with the bucket refills they wait for, ACME).
RUNNER_SETUP = 300
TESTS = 1200


@dataclass(frozen=True)
class InstallPath:
    gitops: bool
    install_rollouts: int  # Deployments and DaemonSets the install stages wait for (the overlays path only)
    app_rollouts: int  # the app's Deployments, the JWKS server and, with the Gateway API, the gateway
    acme_rollouts: int  # Pebble and its DNS


def bring_up_seconds(path: InstallPath) -> int:
    install = AGENT_DOWNLOAD + AGENT_READY + GITOPS_CONVERGENCE if path.gitops else path.install_rollouts * ROLLOUT
    apps = CREATED + path.app_rollouts * ROLLOUT + PODS_READY + CERTIFICATE_READY
    acme = path.acme_rollouts * ROLLOUT + ACME_CERTIFICATE_READY
    return KIND_CREATE * KIND_ATTEMPTS + install + apps + acme


def job_minutes(path: InstallPath) -> int:
    return math.ceil((RUNNER_SETUP + bring_up_seconds(path) + TESTS) / 60)
