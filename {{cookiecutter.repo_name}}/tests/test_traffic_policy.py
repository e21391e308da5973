"""Canary, timeouts, retries and circuit breaking: each mistake a change could make is caught, with the
contract row it breaks and the rule that names the resource to fix."""

import shutil
from pathlib import Path

import pytest
from conftest import (
    GATEWAY_API,
    ROWS,
    app_namespace,
    app_route,
    broken_rows,
    contract_outcomes,
    find,
    gateway_api_only,
    istio_api_only,
    row_named,
)

from repo_tools import REPO_ROOT, contract, kustomize, layout, resilience
from repo_tools.layout import ingress_gateway

pytestmark = pytest.mark.gitops_tool_independent


def api_rules(docs: list[dict]) -> list[dict]:
    """The routing rules that send the API to the backend (not the canary header's)."""
    if GATEWAY_API:
        return [rule for rule in app_route(docs)["spec"]["rules"] if rule["name"].endswith("-api")]
    return [r for r in find(docs, "VirtualService", "public-routes")["spec"]["http"] if "-api" in r["name"]]


def canary_rule(docs: list[dict]) -> dict:
    rules = (
        app_route(docs)["spec"]["rules"]
        if GATEWAY_API
        else find(docs, "VirtualService", "public-routes")["spec"]["http"]
    )
    return next(rule for rule in rules if rule["name"].endswith("-canary"))


def test_every_environment_splits_the_api_by_its_own_weights(rendered):
    weights = {}
    for overlay in layout.overlays():
        outcome = next(
            o
            for o in contract_outcomes(rendered(overlay), overlay).values()
            if o.row.name == row_named("shared between the stable and canary")
        )
        assert outcome.verdict.traffic is not None
        weights[overlay] = tuple(share.weight for share in outcome.verdict.traffic.shares)
    assert weights == {"dev": (50, 50), "e2e": (75, 25), "prod": (100, 0), "staging": (90, 10)}


def test_post_retried_on_every_5xx_is_caught_by_rule_and_row(rendered):
    docs = rendered("staging")
    for rule in api_rules(docs):
        if GATEWAY_API:
            rule["retry"] = {"attempts": 2, "codes": [500, 502, 503, 504]}
        else:
            rule["retries"]["retryOn"] = "5xx"
    problems = resilience.retries_never_repeat_a_change(docs, ingress_gateway())
    assert problems and all("POST" in problem and "may repeat a request" in problem for problem in problems)
    assert row_named("a POST to") in broken_rows(docs, "staging")


def test_a_per_try_timeout_above_the_routes_timeout_is_caught_by_rule_and_row(rendered):
    docs = rendered("staging")
    for rule in api_rules(docs):
        timeout = rule["timeouts"]["request"] if GATEWAY_API else rule["timeout"]
        too_long = f"{int(resilience.seconds(timeout)) * 2}s"
        if GATEWAY_API:
            rule["retry"] = {"attempts": 2}
            rule["timeouts"]["backendRequest"] = too_long
        else:
            rule["retries"] = {"attempts": 2, "perTryTimeout": too_long, "retryOn": "connect-failure"}
    problems = resilience.retries_fit_the_timeout(docs, ingress_gateway())
    assert problems and all(f"per-try timeout {too_long} is not below" in problem for problem in problems)
    assert row_named("a GET to") in broken_rows(docs, "staging")


def test_a_destination_rule_that_turns_mutual_tls_off_is_caught_by_rule_and_row(rendered):
    for mode in ("DISABLE", "SIMPLE"):
        docs = rendered("staging")
        backend = api_rules(docs)[0]
        name = (
            backend["backendRefs"][0]["name"]
            if GATEWAY_API
            else backend["route"][0]["destination"]["host"].split(".")[0]
        )
        find(docs, "DestinationRule", name)["spec"]["trafficPolicy"]["tls"]["mode"] = mode
        problems = resilience.services_have_circuit_breakers(docs, ingress_gateway())
        assert problems == [
            f"DestinationRule {app_namespace(docs)}/{name}: tls mode {mode} replaces the mesh's mutual TLS towards a "
            "meshed Service; use ISTIO_MUTUAL"
        ]
        broken = broken_rows(docs, "staging")
        assert row_named("the frontend may call the backend") in broken
        assert "status 503" in broken[row_named("/orders reaches the backend")].line()


def test_a_missing_circuit_breaker_is_caught_by_rule_and_row(rendered):
    docs = rendered("staging")
    frontend = next(row for row in ROWS if row.name == "the home page reaches the frontend")
    name = frontend.expected.removeprefix("reaches ")
    find(docs, "DestinationRule", name)["spec"]["trafficPolicy"].pop("outlierDetection")
    assert resilience.services_have_circuit_breakers(docs, ingress_gateway()) == [
        f"DestinationRule {app_namespace(docs)}/{name}: set connectionPool limits and outlierDetection "
        "(consecutive5xxErrors)"
    ]
    assert "circuit breaking expected" in broken_rows(docs, "staging")[frontend.name].line()


def test_weights_that_do_not_add_up_are_caught_by_rule_and_row(rendered):
    docs = rendered("staging")
    for rule in api_rules(docs):
        destinations = rule["backendRefs"] if GATEWAY_API else rule["route"]
        destinations[1]["weight"] = 20
    problems = resilience.splits_add_up(docs, ingress_gateway())
    assert problems and all("the weights add up to 110, not 100" in problem for problem in problems)
    assert (
        "adding up to 100 expected"
        in broken_rows(docs, "staging")[row_named("shared between the stable and canary")].line()
    )


def test_a_split_onto_a_version_no_pod_carries_answers_503_for_that_share(rendered):
    docs = rendered("staging")
    canary_name = canary_rule(docs)["name"]
    if GATEWAY_API:
        find(docs, "Service", canary_name)["spec"]["selector"]["version"] = "nightly"
    else:
        for rule in api_rules(docs):
            rule["route"][1]["destination"]["subset"] = "nightly"
    line = broken_rows(docs, "staging")[row_named("shared between the stable and canary")].line()
    assert "expected reaches" in line and "status 503 10%" in line


@istio_api_only
def test_a_subset_the_destination_rule_defines_but_no_pod_carries_is_caught(rendered):
    docs = rendered("staging")
    canary_name = canary_rule(docs)["name"]
    find(docs, "DestinationRule", canary_name)["spec"]["subsets"] = [
        {"name": "nightly", "labels": {"version": "nightly"}}
    ]
    for rule in api_rules(docs):
        rule["route"][1]["destination"]["subset"] = "nightly"
    assert (
        "selects no workload" in broken_rows(docs, "staging")[row_named("shared between the stable and canary")].line()
    )


def test_a_canary_header_that_reaches_the_stable_version_is_caught(rendered):
    docs = rendered("staging")
    rule = canary_rule(docs)
    stable = api_rules(docs)[0]
    if GATEWAY_API:
        rule["backendRefs"] = [dict(stable["backendRefs"][0], weight=1)]
    else:
        rule["route"] = [dict(stable["route"][0], weight=100)]
    line = broken_rows(docs, "staging")[row_named("header takes")].line()
    assert "version canary expected, reached" in line and "(stable)" in line


@gateway_api_only
def test_a_backend_request_timeout_without_retries_is_the_routes_timeout(rendered):
    docs = rendered("staging")
    for rule in api_rules(docs):
        rule["timeouts"]["backendRequest"] = "2s"
    assert (
        "expected, HTTPRoute" in (line := broken_rows(docs, "staging")[row_named("a GET to")].line())
        and "gives up after 2s" in line
    )


def test_promoting_the_canary_is_one_line_in_the_overlay(tmp_path: Path):
    shutil.copytree(REPO_ROOT / "apps", tmp_path / "apps")
    overlay = tmp_path / "apps" / "overlays" / "prod" / "kustomization.yaml"
    text = overlay.read_text()
    assert text.count("weights=100/0") == 1
    overlay.write_text(text.replace("weights=100/0", "weights=0/100"))
    docs = kustomize.build(overlay.parent)
    outcome = next(
        o
        for o in contract.check(
            "prod", docs, ROWS, ingress_gateway(), layout.public_host(overlay.parent), layout.api_tokens(overlay.parent)
        )
        if o.row.name == row_named("shared between the stable and canary")
    )
    assert outcome.holds and outcome.verdict.traffic is not None
    assert [(share.version, share.weight) for share in outcome.verdict.traffic.shares] == [
        ("stable", 0),
        ("canary", 100),
    ]


def test_a_setting_given_to_one_version_only_is_caught(rendered):
    docs = rendered("staging")
    stable = next(
        doc
        for doc in docs
        if doc["kind"] == "Deployment" and doc["spec"]["template"]["metadata"]["labels"].get("version") == "stable"
    )
    stable["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "FEATURE_FLAGS", "value": "on"}]
    problems = resilience.versions_run_alike(docs, ingress_gateway())
    assert len(problems) == 1 and "a patch that targets one version by name misses the other" in problems[0]
