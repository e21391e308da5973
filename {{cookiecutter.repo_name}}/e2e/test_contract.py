"""contract.yaml over real traffic: one test per row, each retried until it holds three times in a row."""

import json

import pytest

from e2e.harness import bringup, scenarios, tokens, traffic
from repo_tools import contract

# Rows past a limit of the gateway need a burst or an oversized request: e2e/test_edge_limits.py sends those.
ROWS = [row for row in contract.load() if not row.request.exceeds]


@pytest.fixture(scope="session")
def services(harness) -> dict[str, dict]:
    """Every Service in the cluster by "name.namespace", the way rows name their targets."""
    items = json.loads(harness.kubectl("get", "services", "-A", "-o", "json"))["items"]
    return {f"{item['metadata']['name']}.{item['metadata']['namespace']}": item for item in items}


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_row(row, harness, services, ca_file):
    subject_header = tokens.overlay_token_settings().subject_header if row.request.token == "valid" else ""
    probe = scenarios.probe_for(row, harness.settings, services, traffic.offline_verdict(row), subject_header)
    if row.expected == "no-answer":
        harness.eventually_holds(lambda: bringup.positive_control(harness, probe.client))
    harness.eventually_holds(lambda: bringup.probe_once(harness, probe, ca_file))
